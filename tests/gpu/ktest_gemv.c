/* ktest_gemv — kernel tests of templates/gemv.cuh (see ktest.h) against a CPU reference, and
 * `kiln-ktest --bench gemv`: the weight bandwidth of the GEMV on the Llama-3 8B and 1B shapes.
 *
 * Inputs are drawn in float and rounded through the storage type (bf16, or f16 in some cases), so
 * the reference (double accumulation) sees exactly the kernel's inputs. x ~ U[-1, 1),
 * w ~ U[-1, 1) * 2/sqrt(K), bias ~ U[-0.5, 0.5): every output has an rms of about 0.67, a
 * useful range for the activations of the gated cases. Every case launches the grid of the
 * template's launch rule with the block size lower.c picks (lower_gemv_threads) unless it names
 * one: the cases cover every M of 1..8 (and 9..16 with MMAX = 16), gated and not, bias, float
 * output, N that is not a multiple of the 16-row tile, K shorter than one 128-element step, K
 * not a multiple of it, K = 14336, and split-K over 1 to 16 warps.
 *
 * Tolerances (relative L2 over the whole output):
 *   - stored in bf16: 1e-2. One rounding of the output is a relative error of at most 2^-9
 *     (rms about 2^-9/sqrt(3) = 1.1e-3); the float accumulation adds ~1e-7. 1e-2 is ~9x the
 *     expected error and far below what an indexing bug gives (~1).
 *   - stored in f16: the same 1e-2 (f16 rounding is 8x finer).
 *   - stored in float (OUT_F32, the logits): 1e-5. The products of two 16-bit values are exact
 *     in float (8 + 8 or 11 + 11 significant bits), so the error is the summation's: inside one
 *     128-element step the tensor cores add with truncation (at most 8 chained mma, each a
 *     relative error of ~2^-23 of that step's partial sum), then the steps and the warps'
 *     partials are added in float with rounding. The steps' partial sums have independent signs,
 *     so their truncation errors do not add up in one direction: ~1e-7 relative for K = 4096,
 *     as with the float FMAs the kernel had before. 1e-5 leaves a wide margin and still catches
 *     a dropped group of 32 (~1e-2) or a bf16-rounded output (~1e-3). The gated f32 case adds
 *     the fast-math silu (__expf and a fast division: a few ulp, ~1e-6).
 * Each case also checks that the rows of y past M (a buffer sized for MMAX rows) are untouched.
 * gemv_invariance checks batch invariance: row 0 of a launch with M rows equals, bit for bit,
 * a launch with that row alone (the split-K order depends on N, K and the block, never on M).
 * gemv_groups checks the row groups (M > MMAX, kilnc --batch-invariant's decode GEMV): at M = 1,
 * 7, 8, 9, 17, 64 and 200 every row equals, bit for bit, the same row launched alone (M = 1 on
 * that row's x and y), nothing past row M is written, and the rows match the reference.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ktest.h"
#include "util.h"
#include "lower.h"
#include "../../kernels/kiln_step.h"


typedef struct gcase {
    int N, K, mmax;
    int ms[17]; /* the rows M to run (one kernel for all), 0-terminated */
    int bias, gated, act, f32;
    int threads; /* 0: lower.c's block size for the shape */
    int f16;     /* storage type f16 instead of bf16 */
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

/* The case's kernel: an extern "C" wrapper k_gemv of one gemv instance (prefix: source put
 * before it, or NULL). */
static CUmodule gemv_module(kt *t, const char *name, const char *prefix, const char *fn,
                            const char *dt, int N, int K, int mmax, int bias, int gated, int act,
                            int f32, int threads)
{
    char src[1024];
    snprintf(src, sizeof src,
             "#include \"gemv.cuh\"\n"
             "extern \"C\" __global__ void __launch_bounds__(%d)\n"
             "k_gemv(const kiln_step st, const %s *x, const %s *w, const %s *bias, void *y, int M)\n"
             "{\n"
             "    kiln::%s<%s, %d, %d, %d, %s, %s, %d, %s, %d>(st, x, w, bias, y, M);\n"
             "}\n",
             threads, dt, dt, dt, fn, dt, N, K, mmax, bias ? "true" : "false",
             gated ? "true" : "false", act, f32 ? "true" : "false", threads);
    if (!prefix)
        return kt_module(t, name, src);
    char *all = xasprintf("%s\n%s", prefix, src);
    CUmodule m = kt_module(t, name, all);
    free(all);
    return m;
}

/* Tiles of the launch rule (templates/gemv.cuh): one block per 16-row tile (grid y) and row
 * group (grid x: gemv_groups). */
static unsigned gemv_blocks(int N, int gated)
{
    return gated ? (unsigned)((N / 2 + 7) / 8) : (unsigned)((N + 15) / 16);
}

static unsigned gemv_groups(int M, int mmax) { return (unsigned)((M + mmax - 1) / mmax); }

/* One launch of a case's kernel f with M rows, checked against the reference. */
static void gemv_check(kt *t, const gcase *c, CUfunction f, int TH, int M, const char *name)
{
    const int N = c->N, K = c->K, MMAX = c->mmax;
    const int NOUT = c->gated ? N / 2 : N;
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
    kt_launch(t, f, name, gemv_groups(M, MMAX), gemv_blocks(N, c->gated), 1, (unsigned)TH, 0,
              args);
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

/* A case: its kernel compiled once, run for each M of c->ms. */
static void gemv_case(kt *t, const gcase *c)
{
    const int TH = c->threads ? c->threads : lower_gemv_threads(c->N, c->K, c->gated);
    char opts[120];
    int at = 0;
    opts[0] = 0;
    if (c->mmax != 8)
        at += snprintf(opts + at, sizeof opts - at, " MMAX=%d", c->mmax);
    if (c->gated)
        at += snprintf(opts + at, sizeof opts - at, " gated %s", kt_act_name(c->act));
    if (c->bias)
        at += snprintf(opts + at, sizeof opts - at, " bias");
    if (c->f32)
        at += snprintf(opts + at, sizeof opts - at, " f32");
    if (c->f16)
        at += snprintf(opts + at, sizeof opts - at, " f16");
    snprintf(opts + at, sizeof opts - at, " threads=%d", TH);
    CUmodule mod = NULL;
    int compiled = 0;
    for (int i = 0; i < 16 && c->ms[i]; i++) {
        char name[200];
        snprintf(name, sizeof name, "gemv/N=%d K=%d M=%d%s", c->N, c->K, c->ms[i], opts);
        if (!kt_want(t, name))
            continue;
        if (!compiled) {
            mod = gemv_module(t, name, NULL, "gemv", c->f16 ? "kiln::f16" : "kiln::bf16", c->N,
                              c->K, c->mmax, c->bias, c->gated, c->act, c->f32, TH);
            compiled = 1;
        }
        if (!mod && !t->compile_only)
            return; /* the compile failure is recorded with its log */
        gemv_check(t, c, kt_func(t, mod, "k_gemv"), TH, c->ms[i], name);
    }
}

/* Batch invariance: the first row of y from a launch with M rows of x equals, bit for bit, the
 * one from a launch with that row alone (same kernel, float output, split-K on). */
static void gemv_invariance(kt *t, int N, int K, int M, int mmax)
{
    const int TH = lower_gemv_threads(N, K, 0);
    char name[160];
    snprintf(name, sizeof name, "gemv/invariance N=%d K=%d M=%d vs 1 MMAX=%d threads=%d", N, K,
             M, mmax, TH);
    if (!kt_want(t, name))
        return;
    CUmodule mod = gemv_module(t, name, NULL, "gemv", "kiln::bf16", N, K, mmax, 0, 0, 0, 1, TH);
    if (!mod && !t->compile_only)
        return;
    CUfunction f = kt_func(t, mod, "k_gemv");
    float *x = xmalloc(sizeof(float) * (size_t)M * K);
    float *w = xmalloc(sizeof(float) * (size_t)N * K);
    kt_fill(t, x, (size_t)M * K, 1.0f);
    kt_fill(t, w, (size_t)N * K, 2.0f / sqrtf((float)K));
    uint16_t *x16 = to_dt(x, (size_t)M * K, 0), *w16 = to_dt(w, (size_t)N * K, 0);
    CUdeviceptr dx = kt_upload(t, x16, sizeof(uint16_t) * (size_t)M * K);
    CUdeviceptr dw = kt_upload(t, w16, sizeof(uint16_t) * (size_t)N * K);
    CUdeviceptr db = 0, dy = kt_alloc(t, (size_t)mmax * N * 4);
    kiln_step st;
    memset(&st, 0, sizeof st);
    float *y[2];
    for (int i = 0; i < 2; i++) {
        int m_arg = i == 0 ? M : 1;
        st.T = st.n_seqs = m_arg;
        void *args[] = {&st, &dx, &dw, &db, &dy, &m_arg};
        kt_launch(t, f, name, gemv_groups(m_arg, mmax), gemv_blocks(N, 0), 1, (unsigned)TH, 0,
                  args);
        y[i] = xmalloc(sizeof(float) * (size_t)N);
        kt_download(t, y[i], dy, sizeof(float) * (size_t)N);
    }
    int differ = -1;
    for (int n = 0; n < N && differ < 0; n++)
        if (memcmp(&y[0][n], &y[1][n], sizeof(float)) != 0)
            differ = n;
    char d[200];
    if (differ >= 0)
        snprintf(d, sizeof d, "row 0 differs at column %d: %.9g with M=%d, %.9g alone", differ,
                 y[0][differ], M, y[1][differ]);
    else
        snprintf(d, sizeof d, "row 0 identical with M=%d and alone (%d columns)", M, N);
    kt_result(t, name, differ < 0, d);
    kt_free(t, dx);
    kt_free(t, dw);
    kt_free(t, dy);
    free(x);
    free(w);
    free(x16);
    free(w16);
    free(y[0]);
    free(y[1]);
}

/* Row groups: one kernel launched at each M of ms (up to MG rows, grid x = ceil(M / mmax)); every
 * row of y equals, bit for bit, that row launched alone (M = 1, x and y offset to the row), rows
 * past M keep the poison, and the rows at the largest M match the double reference. */
enum { MG = 200 };
static void gemv_groups_case(kt *t, int N, int K, int mmax, int gated, int bias, int f32,
                             const int *ms, int nms)
{
    const int TH = lower_gemv_threads(N, K, gated), NOUT = gated ? N / 2 : N;
    const size_t esz = f32 ? 4 : 2, row = (size_t)NOUT * esz;
    char base[160];
    snprintf(base, sizeof base, "gemv/groups N=%d K=%d MMAX=%d%s%s%s threads=%d", N, K, mmax,
             gated ? " gated silu" : "", bias ? " bias" : "", f32 ? " f32" : "", TH);
    if (!kt_want(t, base))
        return;
    CUmodule mod = gemv_module(t, base, NULL, "gemv", "kiln::bf16", N, K, mmax, bias, gated,
                               ACT_SILU, f32, TH);
    if (!mod && !t->compile_only)
        return;
    CUfunction f = kt_func(t, mod, "k_gemv");
    float *x = xmalloc(sizeof(float) * (size_t)MG * K), *w = xmalloc(sizeof(float) * (size_t)N * K);
    float *b = xmalloc(sizeof(float) * (size_t)N);
    kt_fill(t, x, (size_t)MG * K, 1.0f);
    kt_fill(t, w, (size_t)N * K, 2.0f / sqrtf((float)K));
    kt_fill(t, b, (size_t)N, 0.5f);
    uint16_t *x16 = to_dt(x, (size_t)MG * K, 0), *w16 = to_dt(w, (size_t)N * K, 0);
    uint16_t *b16 = to_dt(b, (size_t)N, 0);
    CUdeviceptr dx = kt_upload(t, x16, sizeof(uint16_t) * (size_t)MG * K);
    CUdeviceptr dw = kt_upload(t, w16, sizeof(uint16_t) * (size_t)N * K);
    CUdeviceptr db = bias ? kt_upload(t, b16, sizeof(uint16_t) * (size_t)N) : 0;
    /* y has MG + 8 rows, so that a write past row M shows at every M */
    const size_t ybytes = (MG + 8) * row;
    CUdeviceptr dy = kt_alloc(t, ybytes), dalone = kt_alloc(t, ybytes);
    kiln_step st;
    memset(&st, 0, sizeof st);
    /* every row alone: M = 1 on row r's x and y */
    for (int r = 0; r < MG; r++) {
        CUdeviceptr xr = dx + (CUdeviceptr)r * K * 2, yr = dalone + (CUdeviceptr)r * row;
        int one = 1;
        st.T = st.n_seqs = 1;
        void *args[] = {&st, &xr, &dw, &db, &yr, &one};
        kt_launch(t, f, base, 1, gemv_blocks(N, gated), 1, (unsigned)TH, 0, args);
    }
    unsigned char *alone = xmalloc(ybytes), *got = xmalloc(ybytes);
    kt_download(t, alone, dalone, ybytes);
    for (int i = 0; i < nms; i++) {
        const int M = ms[i];
        char name[200], d[240];
        snprintf(name, sizeof name, "%s M=%d vs M=1", base, M);
        if (!t->compile_only) { /* back to the poison */
            CUresult rc = t->cu.cuMemsetD8(dy, 0xFF, ybytes);
            if (rc != CUDA_SUCCESS) {
                kt_result(t, name, 0, "cuMemsetD8 of y failed");
                continue;
            }
        }
        st.T = st.n_seqs = M;
        int m_arg = M;
        void *args[] = {&st, &dx, &dw, &db, &dy, &m_arg};
        kt_launch(t, f, name, gemv_groups(M, mmax), gemv_blocks(N, gated), 1, (unsigned)TH, 0,
                  args);
        kt_download(t, got, dy, ybytes);
        size_t differ = (size_t)-1, touched = 0;
        for (size_t k = 0; k < (size_t)M * row && differ == (size_t)-1; k++)
            if (got[k] != alone[k])
                differ = k;
        for (size_t k = (size_t)M * row; k < ybytes && !t->compile_only; k++)
            touched += got[k] != 0xFF;
        if (differ != (size_t)-1)
            snprintf(d, sizeof d, "row %zu (group %zu) differs from that row alone at column %zu",
                     differ / row, differ / row / (size_t)mmax, differ % row / esz);
        else if (touched)
            snprintf(d, sizeof d, "wrote %zu bytes past row M=%d", touched, M);
        else
            snprintf(d, sizeof d, "%d rows identical to each row alone (%u groups)", M,
                     gemv_groups(M, mmax));
        kt_result(t, name, differ == (size_t)-1 && !touched, d);
    }
    /* the rows alone against the reference (so the groups are right, not only alike) */
    float *gf = xmalloc(sizeof(float) * (size_t)MG * NOUT);
    float *want = xmalloc(sizeof(float) * (size_t)MG * NOUT);
    for (size_t k = 0; k < (size_t)MG * NOUT; k++) {
        if (f32) {
            memcpy(&gf[k], alone + 4 * k, 4);
        } else {
            uint16_t h;
            memcpy(&h, alone + 2 * k, 2);
            gf[k] = util_bf16_to_f32(h);
        }
    }
    for (int m = 0; m < MG; m++)
        for (int o = 0; o < NOUT; o++) {
            double acc[2] = {0, 0};
            for (int r = 0; r < (gated ? 2 : 1); r++) {
                const int n = o + r * NOUT;
                double sum = 0;
                for (int k = 0; k < K; k++)
                    sum += (double)x[(size_t)m * K + k] * w[(size_t)n * K + k];
                acc[r] = sum + (bias ? b[n] : 0.0);
            }
            want[(size_t)m * NOUT + o] =
                (float)(gated ? kt_act(ACT_SILU, acc[0]) * acc[1] : acc[0]);
        }
    char name[200];
    snprintf(name, sizeof name, "%s rows 0..%d alone vs reference", base, MG - 1);
    kt_check(t, name, gf, want, (size_t)MG * NOUT, f32 ? 1e-5 : 1e-2);
    kt_free(t, dx);
    kt_free(t, dw);
    if (db)
        kt_free(t, db);
    kt_free(t, dy);
    kt_free(t, dalone);
    free(x);
    free(w);
    free(b);
    free(x16);
    free(w16);
    free(b16);
    free(alone);
    free(got);
    free(gf);
    free(want);
}

void ktest_gemv(kt *t)
{
#define M1_8 {1, 2, 3, 4, 5, 6, 7, 8}
    static const gcase cases[] = {
        /* every M of the decode GEMV, gated and not; K = 520 ends in a partial step (65 chunks
         * of 8, not a multiple of 16) */
        {.N = 1000, .K = 520, .mmax = 8, .ms = M1_8, .bias = 1},
        {.N = 1998, .K = 520, .mmax = 8, .ms = M1_8, .gated = 1, .act = ACT_SILU},
        {.N = 64, .K = 64, .mmax = 8, .ms = {1, 3, 8}},
        {.N = 96, .K = 24 * 8, .mmax = 8, .ms = {1, 3, 8}},
        {.N = 4096, .K = 4096, .mmax = 8, .ms = {1, 3, 8}},
        {.N = 2048, .K = 2048, .mmax = 8, .ms = {1, 8}},
        /* tails: N not a multiple of the 16-row tile, fewer outputs than one tile; K shorter
         * than one 32-element group, and than one step */
        {.N = 1001, .K = 64, .mmax = 8, .ms = {3}, .bias = 1},
        {.N = 3, .K = 64, .mmax = 8, .ms = {2}},
        {.N = 37, .K = 8, .mmax = 8, .ms = {8}, .bias = 1},
        {.N = 40, .K = 24, .mmax = 8, .ms = {5}},
        {.N = 96, .K = 192, .mmax = 4, .ms = {4}},
        /* split-K: off (one warp), 2 and 16 warps; a long K (the 8B down projection's) */
        {.N = 1000, .K = 512, .mmax = 8, .ms = {3}, .threads = 32},
        {.N = 1000, .K = 520, .mmax = 8, .ms = {7}, .bias = 1, .threads = 64},
        {.N = 1000, .K = 4096, .mmax = 8, .ms = {8}, .threads = 512},
        {.N = 256, .K = 14336, .mmax = 8, .ms = {1, 8}, .bias = 1},
        {.N = 200, .K = 14336, .mmax = 8, .ms = {5}, .threads = 32},
        /* MMAX = 16: two column tiles (M over 8), and one (M up to 8) */
        {.N = 1000, .K = 520, .mmax = 16, .ms = {5, 9, 16}, .bias = 1},
        {.N = 1998, .K = 512, .mmax = 16, .ms = {13}, .gated = 1, .act = ACT_GELU},
        /* gated: w = [gate; up], N/2 outputs */
        {.N = 4096, .K = 4096, .mmax = 8, .ms = {3}, .gated = 1, .act = ACT_SILU},
        {.N = 1998, .K = 512, .mmax = 8, .ms = {8}, .bias = 1, .gated = 1, .act = ACT_GELU_TANH},
        {.N = 128, .K = 64, .mmax = 8, .ms = {1}, .gated = 1, .act = ACT_SILU},
        {.N = 256, .K = 128, .mmax = 8, .ms = {3}, .gated = 1, .act = ACT_GELU, .threads = 128},
        {.N = 512, .K = 256, .mmax = 8, .ms = {2}, .gated = 1, .act = ACT_SILU, .f32 = 1},
        {.N = 2 * 8192, .K = 2048, .mmax = 8, .ms = {8}, .gated = 1, .act = ACT_SILU},
        /* f16 storage */
        {.N = 1000, .K = 512, .mmax = 8, .ms = {3}, .bias = 1, .f16 = 1},
        {.N = 1998, .K = 520, .mmax = 8, .ms = {8}, .gated = 1, .act = ACT_RELU, .f16 = 1},
        {.N = 1000, .K = 512, .mmax = 16, .ms = {11}, .f16 = 1},
        /* logits: float output, large N */
        {.N = 32000, .K = 2048, .mmax = 8, .ms = {1}, .f32 = 1},
        {.N = 32000, .K = 1024, .mmax = 8, .ms = {8}, .f32 = 1},
        {.N = 151936, .K = 512, .mmax = 1, .ms = {1}, .f32 = 1},
        {.N = 151936, .K = 512, .mmax = 4, .ms = {3}, .f32 = 1, .threads = 128},
    };
#undef M1_8
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        gemv_case(t, &cases[i]);
    gemv_invariance(t, 2048, 2048, 8, 8);
    gemv_invariance(t, 1000, 14336, 7, 16);
    static const int ms[] = {1, 7, 8, 9, 17, 64, 200};
    const int nms = (int)(sizeof ms / sizeof ms[0]);
    /* the logits' shape (float), a gated MLP with bias (bf16, K ending in a partial step), a
     * plain linear at lower.c's 16 warps; and at MMAX = 16, the groups of a --batch-invariant
     * decode schedule (LOWER_GEMV_GROUP_INVARIANT): float logits, gated, 16 warps */
    gemv_groups_case(t, 1000, 520, 8, 0, 0, 1, ms, nms);
    gemv_groups_case(t, 1998, 520, 8, 1, 1, 0, ms, nms);
    gemv_groups_case(t, 2048, 2048, 8, 0, 0, 0, ms, nms);
    gemv_groups_case(t, 1000, 512, LOWER_GEMV_GROUP_INVARIANT, 0, 1, 1, ms, nms);
    gemv_groups_case(t, 1998, 520, LOWER_GEMV_GROUP_INVARIANT, 1, 1, 0, ms, nms);
    gemv_groups_case(t, 2048, 2048, LOWER_GEMV_GROUP_INVARIANT, 0, 0, 0, ms, nms);
}

/* ---------------------------------------------------------------- kiln-ktest --bench gemv */

/* A driver call of the benchmark; on failure it says which and the benchmark stops. */
#define BCK(call)                                                                               \
    do {                                                                                        \
        CUresult rc_ = t->cu.call;                                                              \
        if (rc_ != CUDA_SUCCESS) {                                                              \
            char b_[200];                                                                       \
            fprintf(stderr, "bench gemv: %s failed: %s\n", #call,                               \
                    kcuda_errstr(&t->cu, rc_, b_, sizeof b_));                                  \
            return -1;                                                                          \
        }                                                                                       \
    } while (0)

typedef struct bshape {
    const char *name;
    int N, K, gated, f32;
} bshape;

typedef struct bbuf {
    CUdeviceptr x, y, w[64]; /* w: copies, cycled so that every launch reads its weights from HBM */
    int copies;
    CUevent ev[2];
} bbuf;

/* The microseconds per launch of f, as a CUDA graph of 64 launches (as decode runs them: the time
 * includes the gap between two kernels of a graph), the best of 5 replays after a warm-up. */
static int bench_one(kt *t, CUfunction f, unsigned gx, unsigned gy, unsigned threads, const bbuf *b,
                     int M, double *us)
{
    enum { LAUNCHES = 64, REPLAYS = 5 };
    kiln_step st;
    memset(&st, 0, sizeof st);
    st.T = st.n_seqs = M;
    CUdeviceptr db = 0;
    int m_arg = M;
    CUgraph g;
    CUgraphExec ge;
    BCK(cuStreamBeginCapture(t->stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
    for (int i = 0; i < LAUNCHES; i++) {
        CUdeviceptr dw = b->w[i % b->copies];
        void *args[] = {&st, (void *)&b->x, &dw, &db, (void *)&b->y, &m_arg};
        BCK(cuLaunchKernel(f, gx, gy, 1, threads, 1, 1, 0, t->stream, args, NULL));
    }
    BCK(cuStreamEndCapture(t->stream, &g));
    BCK(cuGraphInstantiateWithFlags(&ge, g, 0));
    double best = 0;
    for (int r = 0; r <= REPLAYS; r++) {
        float ms = 0;
        BCK(cuEventRecord(b->ev[0], t->stream));
        BCK(cuGraphLaunch(ge, t->stream));
        BCK(cuEventRecord(b->ev[1], t->stream));
        BCK(cuEventSynchronize(b->ev[1]));
        BCK(cuEventElapsedTime(&ms, b->ev[0], b->ev[1]));
        if (r > 0 && (best == 0 || ms < best))
            best = ms;
    }
    BCK(cuGraphExecDestroy(ge));
    BCK(cuGraphDestroy(g));
    *us = best * 1e3 / LAUNCHES;
    return 0;
}

/* The device-to-device copy bandwidth (bytes read + written per second) of a 1 GiB copy, best of
 * 5, as kiln bench measures it (runtime/roofline.c). */
static int bench_copy(kt *t, const bbuf *b, double *bw)
{
    const size_t n = (size_t)1 << 30;
    CUdeviceptr s, d;
    BCK(cuMemAlloc(&s, n));
    BCK(cuMemAlloc(&d, n));
    BCK(cuMemsetD8(s, 1, n));
    float best = 0;
    for (int r = 0; r < 6; r++) {
        float ms = 0;
        BCK(cuEventRecord(b->ev[0], t->stream));
        BCK(cuMemcpyDtoDAsync(d, s, n, t->stream));
        BCK(cuEventRecord(b->ev[1], t->stream));
        BCK(cuEventSynchronize(b->ev[1]));
        BCK(cuEventElapsedTime(&ms, b->ev[0], b->ev[1]));
        if (r > 0 && (best == 0 || ms < best))
            best = ms;
    }
    BCK(cuMemFree(s));
    BCK(cuMemFree(d));
    *bw = best > 0 ? 2.0 * (double)n / (best * 1e-3) : 0;
    return 0;
}

/* One shape: the old kernel (tests/gpu/gemv_v0.cuh, 256 threads) and the new one at lower.c's
 * block size for M = 1..8, the new one at the other block sizes, and MMAX = 16 for M = 1..16. */
static int bench_shape(kt *t, const bshape *s, const char *v0_src, bbuf *b, double copy_bw)
{
    const int nout = s->gated ? s->N / 2 : s->N, rule = lower_gemv_threads(s->N, s->K, s->gated);
    const size_t wbytes = (size_t)s->N * (size_t)s->K * 2;
    enum { NK = 6 };
    /* kernels: 0 old; 1 new at the rule; 2..4 new at 128, 256, 512 threads; 5 new MMAX = 16 */
    static const int alt[] = {128, 256, 512};
    CUfunction f[NK] = {0};
    unsigned th[NK], blocks[NK];
    for (int k = 0; k < NK; k++) {
        char name[160];
        th[k] = k == 0 ? 256u : k == 1 || k == 5 ? (unsigned)rule : (unsigned)alt[k - 2];
        const int v0_rpb = 8 * (s->gated ? 2 : 4); /* gemv_v0.cuh: 8 warps of 4 rows */
        blocks[k] = k == 0 ? (unsigned)((nout + v0_rpb - 1) / v0_rpb) : gemv_blocks(s->N, s->gated);
        snprintf(name, sizeof name, "bench %s kernel %d", s->name, k);
        CUmodule m = gemv_module(t, name, k == 0 ? v0_src : NULL, k == 0 ? "gemv_v0" : "gemv",
                                 "kiln::bf16", s->N, s->K, k == 5 ? 16 : 8, 0, s->gated, ACT_SILU,
                                 s->f32, (int)th[k]);
        if (!m)
            return -1;
        f[k] = kt_func(t, m, "k_gemv");
    }
    b->copies = (int)((((size_t)512 << 20) + wbytes - 1) / wbytes);
    if (b->copies > 64)
        b->copies = 64;
    if (b->copies < 2)
        b->copies = 2;
    for (int i = 0; i < b->copies; i++) {
        BCK(cuMemAlloc(&b->w[i], wbytes));
        BCK(cuMemsetD8(b->w[i], 0x3c, wbytes)); /* bf16 0x3c3c = 0.0115 */
    }
    BCK(cuMemAlloc(&b->x, (size_t)16 * s->K * 2));
    BCK(cuMemsetD8(b->x, 0x3c, (size_t)16 * s->K * 2));
    BCK(cuMemAlloc(&b->y, (size_t)16 * nout * 4));
    printf("%-10s %6d x %-6d %s threads %-3d (%d copies of the weights)\n", s->name, s->N, s->K,
           s->gated ? "gated" : s->f32 ? "f32  " : "     ", rule, b->copies);
    for (int M = 1; M <= 16; M++) {
        double us[NK];
        for (int k = 0; k < NK; k++) {
            us[k] = 0;
            /* the old kernel's grid is its tiles; gemv.cuh's is (row groups: 1, tiles) */
            if ((M <= 8 || k == 5) &&
                bench_one(t, f[k], k == 0 ? blocks[k] : 1, k == 0 ? 1 : blocks[k], th[k], b, M,
                          &us[k]))
                return -1;
        }
#define GBS(k) (us[k] > 0 ? (double)wbytes / (us[k] * 1e-6) / 1e9 : 0.0)
        if (M <= 8)
            printf("  M=%-2d old %5.0f GB/s %.2f | new %5.0f GB/s %.2f %5.1f us x%.2f | "
                   "128: %5.0f  256: %5.0f  512: %5.0f | MMAX16: %5.0f\n",
                   M, GBS(0), GBS(0) * 1e9 / copy_bw, GBS(1), GBS(1) * 1e9 / copy_bw, us[1],
                   us[0] / us[1], GBS(2), GBS(3), GBS(4), GBS(5));
        else
            printf("  M=%-2d                         |                                     |"
                   "                                   | MMAX16: %5.0f GB/s %.2f\n",
                   M, GBS(5), GBS(5) * 1e9 / copy_bw);
#undef GBS
    }
    for (int i = 0; i < b->copies; i++)
        BCK(cuMemFree(b->w[i]));
    BCK(cuMemFree(b->x));
    BCK(cuMemFree(b->y));
    return 0;
}

int ktest_gemv_bench(kt *t)
{
    static const bshape shapes[] = {
        {"8B qkv", 6144, 4096, 0, 0},   {"8B o", 4096, 4096, 0, 0},
        {"8B gate_up", 28672, 4096, 1, 0}, {"8B down", 4096, 14336, 0, 0},
        {"8B lm_head", 128256, 4096, 0, 1}, {"1B qkv", 3072, 2048, 0, 0},
        {"1B o", 2048, 2048, 0, 0},     {"1B gate_up", 16384, 2048, 1, 0},
        {"1B down", 2048, 8192, 0, 0},  {"1B lm_head", 128256, 2048, 0, 1},
    };
    char *path = util_path_join(t->root, "tests/gpu/gemv_v0.cuh");
    kerr e;
    kerr_clear(&e);
    char *v0 = util_read_file(path, NULL, &e);
    if (!v0) {
        fprintf(stderr, "bench gemv: %s (run from the repository root or set KILN_ROOT)\n",
                kerr_msg(&e));
        free(path);
        return -1;
    }
    free(path);
    bbuf b;
    memset(&b, 0, sizeof b);
    BCK(cuEventCreate(&b.ev[0], 0));
    BCK(cuEventCreate(&b.ev[1], 0));
    double copy_bw = 0;
    if (bench_copy(t, &b, &copy_bw) || copy_bw <= 0)
        return -1;
    printf("bench gemv: weight bytes per second of each launch (in a CUDA graph of 64, so with "
           "the gaps between kernels), and as a ratio of the copy bandwidth %.0f GB/s.\n"
           "old = the FMA kernel of kiln 4ed27e5 (gemv_v0.cuh); new = gemv.cuh at lower.c's "
           "block size (xN = old time / new time), then at 128/256/512 threads; MMAX16 = the "
           "new kernel instantiated for up to 16 rows (GEMV_MAX 16).\n",
           copy_bw / 1e9);
    int rc = 0;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0] && rc == 0; i++)
        rc = bench_shape(t, &shapes[i], v0, &b, copy_bw);
    free(v0);
    return rc;
}
