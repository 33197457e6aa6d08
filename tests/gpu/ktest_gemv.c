/* ktest_gemv — kernel tests of templates/gemv.cuh (see ktest.h) against a CPU reference.
 *
 * Inputs are drawn in float and rounded through the storage type (bf16, or f16 in one case), so
 * the reference (double accumulation) sees exactly the kernel's inputs. x ~ U[-1, 1),
 * w ~ U[-1, 1) * 2/sqrt(K), bias ~ U[-0.5, 0.5): every output has an rms of about 0.67, a
 * useful range for the activations of the gated cases.
 *
 * Tolerances (relative L2 over the whole output):
 *   - stored in bf16: 1e-2. One rounding of the output is a relative error of at most 2^-9
 *     (rms about 2^-9/sqrt(3) = 1.1e-3); the float accumulation adds ~1e-7. 1e-2 is ~9x the
 *     expected error and far below what an indexing bug gives (~1).
 *   - stored in f16: the same 1e-2 (f16 rounding is 8x finer).
 *   - stored in float (OUT_F32, the logits): 1e-5. The products of two bf16 values are exact in
 *     float (8 + 8 significant bits), so the only error is the float summation: each lane sums
 *     K/256 chunks of 8 with fmaf, then a 5-level butterfly; a length-L chain of float sums has a
 *     relative error ~ u*sqrt(L) with u = 6e-8, i.e. ~3e-7 for K = 4096. Simulating exactly this
 *     order on the CPU gives rel L2 of 4e-8 (K = 64) to 1.4e-7 (K = 14336). 1e-5 leaves a 70x
 *     margin and still catches a dropped chunk (~1e-2) or a bf16-rounded output (~1e-3). The
 *     gated f32 case adds the fast-math silu (__expf and a fast division: a few ulp, ~1e-6).
 * Each case also checks that the rows of y past M (a buffer sized for MMAX rows) are untouched.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ktest.h"
#include "util.h"
#include "../../kernels/kiln_step.h"


typedef struct gcase {
    int N, K, M, mmax;
    int bias, gated, act, f32;
    int threads;
    int f16; /* storage type f16 instead of bf16 */
} gcase;

/* Rounds through the storage type and returns the 16-bit copy to upload. */
static uint16_t *to_dt(float *x, size_t n, int f16)
{
    uint16_t *o = xmalloc(sizeof(uint16_t) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) {
        o[i] = f16 ? util_f32_to_f16(x[i]) : util_f32_to_bf16(x[i]);
        x[i] = f16 ? util_f16_to_f32(o[i]) : util_bf16_to_f32(o[i]);
    }
    return o;
}

static void gemv_case(kt *t, const gcase *c)
{
    const int N = c->N, K = c->K, M = c->M, MMAX = c->mmax, TH = c->threads;
    const int NOUT = c->gated ? N / 2 : N, OPW = c->gated ? 2 : 4;
    const int RPB = TH / 32 * OPW;
    const char *dt = c->f16 ? "kiln::f16" : "kiln::bf16";
    char name[160], src[1024];
    int at = snprintf(name, sizeof name, "gemv/N=%d K=%d M=%d", N, K, M);
    if (MMAX != 8)
        at += snprintf(name + at, sizeof name - at, " MMAX=%d", MMAX);
    if (c->gated)
        at += snprintf(name + at, sizeof name - at, " gated %s", kt_act_name(c->act));
    if (c->bias)
        at += snprintf(name + at, sizeof name - at, " bias");
    if (c->f32)
        at += snprintf(name + at, sizeof name - at, " f32");
    if (c->f16)
        at += snprintf(name + at, sizeof name - at, " f16");
    if (TH != 256)
        snprintf(name + at, sizeof name - at, " threads=%d", TH);
    if (!kt_want(t, name))
        return;

    snprintf(src, sizeof src,
             "#include \"gemv.cuh\"\n"
             "extern \"C\" __global__ void __launch_bounds__(%d)\n"
             "k_gemv(const kiln_step st, const %s *x, const %s *w, const %s *bias, void *y, int M)\n"
             "{\n"
             "    kiln::gemv<%s, %d, %d, %d, %s, %s, %d, %s, %d>(st, x, w, bias, y, M);\n"
             "}\n",
             TH, dt, dt, dt, dt, N, K, MMAX, c->bias ? "true" : "false",
             c->gated ? "true" : "false", c->act, c->f32 ? "true" : "false", TH);
    CUmodule mod = kt_module(t, name, src);
    if (!mod && !t->compile_only)
        return; /* the compile failure is recorded with its log */
    CUfunction f = kt_func(t, mod, "k_gemv");

    float *x = xmalloc(sizeof(float) * (size_t)M * K);
    float *w = xmalloc(sizeof(float) * (size_t)N * K);
    float *b = xmalloc(sizeof(float) * (size_t)N);
    kt_fill(t, x, (size_t)M * K, 1.0f);
    kt_fill(t, w, (size_t)N * K, 2.0f / sqrtf((float)K));
    kt_fill(t, b, (size_t)N, 0.5f);
    uint16_t *x16 = to_dt(x, (size_t)M * K, c->f16);
    uint16_t *w16 = to_dt(w, (size_t)N * K, c->f16);
    uint16_t *b16 = to_dt(b, (size_t)N, c->f16);

    /* y is sized for MMAX rows so that a write to a row >= M shows (it stays poisoned). */
    const size_t esz = c->f32 ? 4 : 2;
    const size_t ybytes = (size_t)MMAX * NOUT * esz, used = (size_t)M * NOUT * esz;
    CUdeviceptr dx = kt_upload(t, x16, sizeof(uint16_t) * (size_t)M * K);
    CUdeviceptr dw = kt_upload(t, w16, sizeof(uint16_t) * (size_t)N * K);
    CUdeviceptr db = c->bias ? kt_upload(t, b16, sizeof(uint16_t) * (size_t)N) : 0;
    CUdeviceptr dy = kt_alloc(t, ybytes);
    kiln_step st;
    memset(&st, 0, sizeof st);
    st.T = M;
    st.n_seqs = M;
    int m_arg = M;
    void *args[] = {&st, &dx, &dw, &db, &dy, &m_arg};
    kt_launch(t, f, name, (unsigned)((NOUT + RPB - 1) / RPB), 1, 1, (unsigned)TH, 0, args);
    unsigned char *ybuf = xmalloc(ybytes);
    kt_download(t, ybuf, dy, ybytes);

    float *got = xmalloc(sizeof(float) * (size_t)M * NOUT);
    for (size_t i = 0; i < (size_t)M * NOUT; i++) {
        if (c->f32) {
            memcpy(&got[i], ybuf + 4 * i, 4);
        } else {
            uint16_t h;
            memcpy(&h, ybuf + 2 * i, 2);
            got[i] = c->f16 ? util_f16_to_f32(h) : util_bf16_to_f32(h);
        }
    }

    float *want = xmalloc(sizeof(float) * (size_t)M * NOUT);
    for (int m = 0; m < M; m++) {
        const float *xm = x + (size_t)m * K;
        for (int o = 0; o < NOUT; o++) {
            double acc[2] = {0, 0};
            int nrow = c->gated ? 2 : 1;
            for (int r = 0; r < nrow; r++) {
                const int n = o + r * NOUT;
                const float *wn = w + (size_t)n * K;
                double s = 0;
                for (int k = 0; k < K; k++)
                    s += (double)xm[k] * wn[k];
                acc[r] = s + (c->bias ? b[n] : 0.0);
            }
            want[(size_t)m * NOUT + o] =
                (float)(c->gated ? kt_act(c->act, acc[0]) * acc[1] : acc[0]);
        }
    }

    /* rows M..MMAX-1 of y must still hold the poison (all bytes 0xFF) */
    size_t touched = 0, first = 0;
    for (size_t i = used; i < ybytes && !t->compile_only; i++)
        if (ybuf[i] != 0xFF && touched++ == 0)
            first = i;
    if (touched) {
        char d[200];
        snprintf(d, sizeof d, "wrote %zu bytes past row M=%d (first at output row %zu, col %zu)",
                 touched, M, first / esz / NOUT, first / esz % NOUT);
        kt_result(t, name, 0, d);
    } else {
        kt_check(t, name, got, want, (size_t)M * NOUT, c->f32 ? 1e-5 : 1e-2);
    }

    kt_free(t, dx);
    kt_free(t, dw);
    if (db)
        kt_free(t, db);
    kt_free(t, dy);
    free(x);
    free(w);
    free(b);
    free(x16);
    free(w16);
    free(b16);
    free(ybuf);
    free(got);
    free(want);
}

void ktest_gemv(kt *t)
{
    static const int shapes[][2] = {{64, 64}, {96, 24 * 8}, {4096, 4096}, {1000, 512}};
    static const int ms[] = {1, 3, 8};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
            gcase c = {.N = shapes[s][0], .K = shapes[s][1], .M = ms[i], .mmax = 8, .threads = 256};
            gemv_case(t, &c);
        }
    static const gcase more[] = {
        /* tails: N not a multiple of the 32 outputs per block, fewer outputs than one warp's */
        {.N = 1001, .K = 64, .M = 3, .mmax = 8, .bias = 1, .threads = 256},
        {.N = 3, .K = 64, .M = 2, .mmax = 8, .threads = 256},
        {.N = 1000, .K = 512, .M = 5, .mmax = 8, .bias = 1, .threads = 256},
        {.N = 1000, .K = 512, .M = 3, .mmax = 8, .threads = 128},
        {.N = 96, .K = 192, .M = 4, .mmax = 4, .threads = 256},
        /* gated: w = [gate; up], N/2 outputs */
        {.N = 4096, .K = 4096, .M = 3, .mmax = 8, .gated = 1, .act = ACT_SILU, .threads = 256},
        {.N = 1998, .K = 512, .M = 8, .mmax = 8, .bias = 1, .gated = 1, .act = ACT_GELU_TANH, .threads = 256},
        {.N = 128, .K = 64, .M = 1, .mmax = 8, .gated = 1, .act = ACT_SILU, .threads = 256},
        {.N = 256, .K = 128, .M = 3, .mmax = 8, .gated = 1, .act = ACT_GELU, .threads = 128},
        {.N = 512, .K = 256, .M = 2, .mmax = 8, .gated = 1, .act = ACT_SILU, .f32 = 1, .threads = 256},
        /* f16 storage */
        {.N = 1000, .K = 512, .M = 3, .mmax = 8, .bias = 1, .threads = 256, .f16 = 1},
        {.N = 1998, .K = 512, .M = 3, .mmax = 8, .gated = 1, .act = ACT_RELU, .threads = 256, .f16 = 1},
        /* logits: float output, large N */
        {.N = 32000, .K = 2048, .M = 1, .mmax = 8, .f32 = 1, .threads = 256},
        {.N = 32000, .K = 1024, .M = 8, .mmax = 8, .f32 = 1, .threads = 256},
        {.N = 151936, .K = 512, .M = 1, .mmax = 1, .f32 = 1, .threads = 256},
        {.N = 151936, .K = 512, .M = 3, .mmax = 4, .f32 = 1, .threads = 128},
    };
    for (size_t i = 0; i < sizeof more / sizeof more[0]; i++)
        gemv_case(t, &more[i]);
}
