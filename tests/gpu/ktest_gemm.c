/* ktest_gemm — kernel tests of kiln's GEMM (see ktest.h) against a CPU reference, its batch
 * invariance, and `kiln-ktest --bench gemm`: its TFLOP/s against cuBLASLt's (runtime/gemm.c) on
 * the Llama-3 8B and 1B shapes. Two kernels keep one contract: templates/gemm.cuh (mma.sync, any
 * SM; cases named gemm/...) and templates/gemm90.cuh (wgmma, sm_90a only; cases named
 * "gemm90 bn128/..." and "gemm90 bn256/...", its two tile widths, both for every shape, run where
 * the GPU is sm_90a). On an H100/H200 all run: an artifact compiled for --sm 90a alone uses
 * gemm90 at the width KILN_GEMM90_BN(N), one that also targets an older SM uses gemm
 * (compiler/lower.c); "gemm90/widths" checks that the two widths give the same bits. The
 * benchmark measures gemm90 at both widths on sm_90a (the ratio is of lower.c's), gemm elsewhere.
 *
 * Inputs are drawn in float and rounded through the storage type (bf16 or f16), so the reference
 * (double accumulation) sees exactly the kernel's inputs: x ~ U[-1, 1), w ~ U[-1, 1) * 2/sqrt(K),
 * bias ~ U[-0.5, 0.5), outputs of rms ~0.67 (as ktest_gemv.c). Every case launches the launch rule
 * of kernels/kiln_gemm.h, the wrapper as lower.c writes it (__launch_bounds__(THREADS)). The
 * cases cover N below one 128-column tile (96), one tile and a bit (136, 144, 264), one and two
 * 256-column tiles exactly (256, 512) and a bit more (264, 520, 1000), K of one chunk (8), one
 * 64-element slice exactly (64), under one 32-element slice and not a multiple of one (144, 200,
 * 4104, 136, 328: 64-element slices and a chunk or more), M of 1, 7, 16, 64, 65, 128, 129, 300,
 * 1030 (partial row tiles, one and several, more than a group of 8 tile rows), K of 4104 (65
 * slices: gemm90's ring of 4 or 6 stages turns 16 or 10 times; 1030 rows: a block of its
 * persistent grid takes several tiles, the ring turning on across them), row strides ldx = K + 8
 * (x's tensor map then skips the NaN padding) and ldy = N + 8, gemm.cuh's grid sized for 300
 * more rows than M, bias, float output, f16, and the Llama
 * 8B/1B linears and the 1B logits at M = 64 and 512 (there only a sample of rows is compared:
 * the double reference of all of them would take minutes).
 *
 * Tolerances (relative L2 over the compared outputs):
 *   - stored in bf16 or f16: 1e-2. One rounding of the output is a relative error of at most 2^-9
 *     (rms ~1.1e-3 for bf16, 8x less for f16); the float accumulation adds ~1e-6. 1e-2 is ~9x the
 *     expected error and far below an indexing bug (~1) or a dropped 16-element step of K
 *     (~1/sqrt(K/16): 6e-2 at K = 4096).
 *   - stored in float: 1e-4. Products of two 16-bit values are exact in float; the error is the
 *     tensor cores' accumulation over one chain of K/16 mma, which truncates the running float sum
 *     at each step: at most 2^-23 of the partial sum a step, with the sign of the partial sum, so
 *     over K = 14336 (896 steps) a bound of ~896 * 2^-24 = 5e-5 of the partial sums' size and
 *     typically far less (the partial sums change sign). 1e-4 still catches a bf16-rounded output
 *     (~1e-3) and a dropped step of K (>= 1e-2).
 * Every case also checks that y outside [0, M) x [0, N) (rows past M, the ldy padding) keeps its
 * poison, and NaN in x's padding columns (ldx > K) would show if it were read.
 * gemm/invariance checks batch invariance bit for bit (float output, where a difference cannot
 * hide in a rounding): the rows of a launch with M = 300 against launches with M = 1..17, 64,
 * 128, 129, 255, against a grid sized for 2048 rows, and against x shifted by 1 and by 17 rows
 * (every row at another position of its tile and its warp's fragments).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"
#include "ktest.h"
#include "util.h"
#include "../../kernels/kiln_gemm.h"

typedef struct gmcase {
    int N, K;
    int ms[8]; /* the rows M to run (one kernel for all), 0-terminated */
    int bias, f32, f16;
    int pad; /* ldx = K + 8, ldy = N + 8, and the grid sized for M + 300 rows */
} gmcase;

/* The kernels and their launch rules (kernels/kiln_gemm.h; 16-bit DT): gemm.cuh, and gemm90.cuh
 * at both of its tile widths, whatever the shape (lower.c takes KILN_GEMM90_BN(N) of the two:
 * every case then covers the configuration lower.c would use for it and the other one). */
typedef struct gkind {
    const char *name; /* the cases' prefix */
    const char *tmpl; /* the template: kiln::TMPL in templates/TMPL.cuh */
    int bm, bn, threads, smem;
    int sm90a; /* gemm90: exists on sm_90a only; its BN is a template argument, it takes x and w
                * as TMA tensor maps and runs one block an SM */
} gkind;

static const gkind kinds[] = {
    {"gemm", "gemm", KILN_GEMM_BM, KILN_GEMM_BN, KILN_GEMM_THREADS, KILN_GEMM_SMEM(2), 0},
    {"gemm90 bn128", "gemm90", KILN_GEMM90_BM, 128, KILN_GEMM90_THREADS,
     KILN_GEMM90_SMEM(2, 128), 1},
    {"gemm90 bn256", "gemm90", KILN_GEMM90_BM, 256, KILN_GEMM90_THREADS,
     KILN_GEMM90_SMEM(2, 256), 1},
};

/* Whether kind g runs here (compile-only: whether it is compiled). */
static int kind_here(const kt *t, const gkind *g) { return !g->sm90a || kt_sm90a(t); }

/* The case's kernel: an extern "C" wrapper k_gemm of one instance of kind g, as lower.c writes
 * it (gemm90's tile width explicit). */
static CUmodule gemm_module(kt *t, const gkind *g, const char *name, int f16, int f32, int N,
                            int K, int bias)
{
    const char *dt = f16 ? "kiln::f16" : "kiln::bf16", *ot = f32 ? "float" : dt;
    char src[1024];
    if (g->sm90a)
        snprintf(src, sizeof src,
                 "#include \"gemm90.cuh\"\n"
                 "extern \"C\" __global__ void __launch_bounds__(%d)\n"
                 "k_gemm(int M, const __grid_constant__ kiln::tmap tx,\n"
                 "       const __grid_constant__ kiln::tmap tw, const %s *bias, %s *y,\n"
                 "       long long ldy)\n"
                 "{\n"
                 "    kiln::gemm90<%s, %s, %d, %d, %d, %d>(M, tx, tw, bias, y, ldy);\n"
                 "}\n",
                 g->threads, dt, ot, dt, ot, N, K, bias, g->bn);
    else
        snprintf(src, sizeof src,
                 "#include \"gemm.cuh\"\n"
                 "extern \"C\" __global__ void __launch_bounds__(%d)\n"
                 "k_gemm(int M, const %s *x, long long ldx, const %s *w, const %s *bias, %s *y,\n"
                 "       long long ldy)\n"
                 "{\n"
                 "    kiln::gemm<%s, %s, %d, %d, %d>(M, x, ldx, w, bias, y, ldy);\n"
                 "}\n",
                 g->threads, dt, dt, dt, ot, dt, ot, N, K, bias);
    return g->sm90a ? kt_module_sm90a(t, name, src) : kt_module(t, name, src);
}

/* The launch rule: gemm.cuh's grid covers the tiles, gemm90.cuh's is one block an SM. */
static unsigned grid_x(const kt *t, const gkind *g, int N)
{
    return g->sm90a ? (unsigned)t->sms : (unsigned)((N + g->bn - 1) / g->bn);
}
static unsigned grid_y(const gkind *g, int M)
{
    return g->sm90a ? 1 : (unsigned)((M + g->bm - 1) / g->bm);
}

/* A launch's kernel arguments, as the runtime packs them: gemm's (M, x, ldx, w, bias, y, ldy),
 * gemm90's (M, x's map, w's map, bias, y, ldy), the maps made as runtime/engine.c makes them
 * (kcuda_gemm90_maps, x of M rows). */
typedef struct gargs {
    int M;
    CUdeviceptr x, w, b, y;
    long long ldx, ldy;
    CUtensorMap map[2];
    void *p[7];
} gargs;

static int gargs_make(kt *t, const gkind *g, gargs *a, int N, int K, kerr *err)
{
    if (!g->sm90a) {
        void *p[] = {&a->M, &a->x, &a->ldx, &a->w, &a->b, &a->y, &a->ldy};
        memcpy(a->p, p, sizeof p);
        return 0;
    }
    void *p[] = {&a->M, &a->map[0], &a->map[1], &a->b, &a->y, &a->ldy};
    memcpy(a->p, p, sizeof p);
    return kcuda_gemm90_maps(&t->cu, a->map, a->x, a->M > 0 ? a->M : 1, K, a->ldx,
                             KILN_GEMM90_BM, a->w, N, g->bn, err);
}

/* One problem's inputs: host copies rounded through the storage type, and device copies. */
typedef struct gdata {
    int N, K, rows, f16, bias;
    long long ldx;
    float *x, *w, *b; /* x [rows, ldx] (columns past K unused), w [N, K], b [N] */
    CUdeviceptr dx, dw, db;
} gdata;

static uint16_t to16(float *v, int f16)
{
    uint16_t h = f16 ? util_f32_to_f16(*v) : util_f32_to_bf16(*v);
    *v = f16 ? util_f16_to_f32(h) : util_bf16_to_f32(h);
    return h;
}

static void gdata_make(kt *t, gdata *d, int N, int K, int rows, long long ldx, int f16, int bias)
{
    memset(d, 0, sizeof *d);
    d->N = N, d->K = K, d->rows = rows, d->ldx = ldx, d->f16 = f16, d->bias = bias;
    const size_t nx = (size_t)rows * (size_t)ldx, nw = (size_t)N * (size_t)K;
    d->x = xmalloc(sizeof(float) * nx);
    d->w = xmalloc(sizeof(float) * nw);
    d->b = xmalloc(sizeof(float) * (size_t)N);
    uint16_t *h = xmalloc(sizeof(uint16_t) * (nx > nw ? nx : nw));
    for (size_t i = 0; i < nx; i++) {
        if ((long long)(i % (size_t)ldx) >= K) { /* padding: NaN, which must never be read */
            d->x[i] = NAN;
            h[i] = 0xFFFF;
            continue;
        }
        d->x[i] = kt_randf(t);
        h[i] = to16(&d->x[i], f16);
    }
    d->dx = kt_upload(t, h, sizeof(uint16_t) * nx);
    const float ws = 2.0f / sqrtf((float)K);
    for (size_t i = 0; i < nw; i++) {
        d->w[i] = kt_randf(t) * ws;
        h[i] = to16(&d->w[i], f16);
    }
    d->dw = kt_upload(t, h, sizeof(uint16_t) * nw);
    for (int i = 0; i < N; i++) {
        d->b[i] = kt_randf(t) * 0.5f;
        h[i] = to16(&d->b[i], f16);
    }
    d->db = bias ? kt_upload(t, h, sizeof(uint16_t) * (size_t)N) : 0;
    free(h);
}

static void gdata_free(kt *t, gdata *d)
{
    kt_free(t, d->dx);
    kt_free(t, d->dw);
    if (d->db)
        kt_free(t, d->db);
    free(d->x);
    free(d->w);
    free(d->b);
}

/* y = gemm(x rows from `row0`) with M rows, into a fresh poisoned buffer of `yrows` rows of ldy;
 * the grid covers m_launch rows. Returns the device buffer. */
static CUdeviceptr gemm_run(kt *t, const gkind *g, CUfunction f, const char *name, const gdata *d,
                            int row0, int M, int m_launch, int yrows, long long ldy, int f32)
{
    gargs a = {.M = M,
               .x = d->dx + (CUdeviceptr)((size_t)row0 * (size_t)d->ldx * 2),
               .w = d->dw,
               .b = d->db,
               .y = kt_alloc(t, (size_t)yrows * (size_t)ldy * (f32 ? 4 : 2)),
               .ldx = d->ldx,
               .ldy = ldy};
    kerr e;
    kerr_clear(&e);
    if (gargs_make(t, g, &a, d->N, d->K, &e))
        fprintf(stderr, "%s: %s\n", name, kerr_msg(&e)); /* the launch below then fails */
    kt_launch(t, f, name, grid_x(t, g, d->N), grid_y(g, m_launch), 1, (unsigned)g->threads,
              (size_t)g->smem, a.p);
    return a.y;
}

/* Element i of a downloaded y, as float. */
static float y_at(const unsigned char *y, size_t i, int f32, int f16)
{
    if (f32) {
        float v;
        memcpy(&v, y + 4 * i, 4);
        return v;
    }
    uint16_t h;
    memcpy(&h, y + 2 * i, 2);
    return f16 ? util_f16_to_f32(h) : util_bf16_to_f32(h);
}

/* The rows of y compared with the reference: all M of them for small problems, else a sample at
 * the edges of warps (64 rows) and tiles (128 rows) and the last row. Returns the count. */
static int check_rows(int M, int N, int K, int *rows)
{
    if ((double)M * N * K <= 4e8) {
        for (int i = 0; i < M; i++)
            rows[i] = i;
        return M;
    }
    static const int cand[] = {0, 1, 31, 63, 64, 127, 128, 200, 255, 256, 383, 511};
    int n = 0;
    for (size_t i = 0; i < sizeof cand / sizeof cand[0]; i++)
        if (cand[i] < M - 1)
            rows[n++] = cand[i];
    rows[n++] = M - 1;
    return n;
}

/* One launch of a case's kernel with M rows, checked against the reference. */
static void gemm_check(kt *t, const gkind *g, const gmcase *c, const gdata *d, CUfunction f,
                       int M, const char *name)
{
    const int N = c->N, K = c->K;
    const long long ldy = c->pad ? N + 8 : N;
    const int yrows = M + 8, m_launch = c->pad ? M + 300 : M;
    const size_t esz = c->f32 ? 4 : 2, ybytes = (size_t)yrows * (size_t)ldy * esz;
    CUdeviceptr dy = gemm_run(t, g, f, name, d, 0, M, m_launch, yrows, ldy, c->f32);
    unsigned char *y = xmalloc(ybytes);
    kt_download(t, y, dy, ybytes);
    kt_free(t, dy);
    if (t->compile_only) {
        free(y);
        return;
    }

    /* everything outside rows [0, M) and columns [0, N) still holds the poison (0xFF bytes) */
    size_t touched = 0, first = 0;
    for (size_t i = 0; i < ybytes; i += esz) {
        const size_t e = i / esz;
        if ((long long)(e / (size_t)ldy) < M && (long long)(e % (size_t)ldy) < N)
            continue;
        for (size_t b = 0; b < esz; b++)
            if (y[i + b] != 0xFF && touched++ == 0)
                first = e;
    }
    if (touched) {
        char msg[200];
        snprintf(msg, sizeof msg, "wrote %zu bytes outside the M x N output (first at row %zu, "
                 "col %zu)", touched, first / (size_t)ldy, first % (size_t)ldy);
        kt_result(t, name, 0, msg);
        free(y);
        return;
    }

    int *rows = xmalloc(sizeof(int) * (size_t)(M > 16 ? M : 16));
    const int nr = check_rows(M, N, K, rows);
    float *got = xmalloc(sizeof(float) * (size_t)nr * N);
    float *want = xmalloc(sizeof(float) * (size_t)nr * N);
    for (int r = 0; r < nr; r++) {
        const int m = rows[r];
        const float *xm = d->x + (size_t)m * (size_t)d->ldx;
        for (int n = 0; n < N; n++) {
            const float *wn = d->w + (size_t)n * K;
            double s = c->bias ? d->b[n] : 0.0;
            for (int k = 0; k < K; k++)
                s += (double)xm[k] * wn[k];
            want[(size_t)r * N + n] = (float)s;
            got[(size_t)r * N + n] = y_at(y, (size_t)m * (size_t)ldy + n, c->f32, c->f16);
        }
    }
    kt_check(t, name, got, want, (size_t)nr * N, c->f32 ? 1e-4 : 1e-2);
    free(rows);
    free(got);
    free(want);
    free(y);
}

/* A case on kernel g: compiled once, its inputs drawn once for the largest M, run for each M. */
static void gemm_case(kt *t, const gkind *g, const gmcase *c)
{
    char opts[64];
    snprintf(opts, sizeof opts, "%s%s%s%s", c->bias ? " bias" : "", c->f32 ? " f32" : "",
             c->f16 ? " f16" : "", c->pad ? " ld+8 grid+300" : "");
    CUmodule mod = NULL;
    gdata d;
    int ready = 0, mmax = 0;
    for (int i = 0; i < 8 && c->ms[i]; i++)
        mmax = c->ms[i] > mmax ? c->ms[i] : mmax;
    for (int i = 0; i < 8 && c->ms[i]; i++) {
        char name[200];
        snprintf(name, sizeof name, "%s/N=%d K=%d M=%d%s", g->name, c->N, c->K, c->ms[i], opts);
        if (!kt_want(t, name))
            continue;
        if (!ready) {
            mod = gemm_module(t, g, name, c->f16, c->f32, c->N, c->K, c->bias);
            if (t->compile_only || !mod)
                return; /* compiled (or its failure recorded with the log): nothing to run */
            gdata_make(t, &d, c->N, c->K, mmax, c->pad ? c->K + 8 : c->K, c->f16, c->bias);
            ready = 1;
        }
        gemm_check(t, g, c, &d, kt_func(t, mod, "k_gemm"), c->ms[i], name);
    }
    if (ready)
        gdata_free(t, &d);
}

/* Batch invariance (see the top): every row of every launch equals, bit for bit, the same row of
 * x in the launch with M = 300. */
static void gemm_invariance(kt *t, const gkind *g, int N, int K, int bias)
{
    char name[160];
    snprintf(name, sizeof name, "%s/invariance N=%d K=%d%s f32: M=300 vs 1..17, 64..255, "
             "grid 2048, shifted", g->name, N, K, bias ? " bias" : "");
    if (!kt_want(t, name))
        return;
    CUmodule mod = gemm_module(t, g, name, 0, 1, N, K, bias);
    if (t->compile_only || !mod)
        return;
    CUfunction f = kt_func(t, mod, "k_gemm");
    enum { MREF = 300, ROWS = 320 };
    gdata d;
    gdata_make(t, &d, N, K, ROWS, K, 0, bias);
    const size_t rowb = (size_t)N * 4;
    float *ref = xmalloc(rowb * MREF), *y = xmalloc(rowb * MREF);
    CUdeviceptr dy = gemm_run(t, g, f, name, &d, 0, MREF, MREF, MREF, N, 1);
    kt_download(t, ref, dy, rowb * MREF);
    kt_free(t, dy);

    /* runs: {M, first row of x, rows the grid covers} */
    int runs[32][3], nrun = 0;
    for (int m = 1; m <= 17; m++)
        runs[nrun][0] = m, runs[nrun][1] = 0, runs[nrun][2] = m, nrun++;
    static const int more[][3] = {{64, 0, 64},   {128, 0, 128},   {129, 0, 129}, {255, 0, 255},
                                  {300, 0, 2048}, {299, 1, 299}, {283, 17, 283}};
    for (size_t i = 0; i < sizeof more / sizeof more[0]; i++, nrun++)
        memcpy(runs[nrun], more[i], sizeof more[i]);
    char msg[256];
    snprintf(msg, sizeof msg, "%d launches, every row identical to M=300's", nrun);
    int ok = 1;
    for (int r = 0; r < nrun && ok; r++) {
        const int M = runs[r][0], row0 = runs[r][1];
        dy = gemm_run(t, g, f, name, &d, row0, M, runs[r][2], M, N, 1);
        kt_download(t, y, dy, rowb * (size_t)M);
        kt_free(t, dy);
        for (int m = 0; m < M && ok; m++)
            for (int n = 0; n < N && ok; n++)
                if (memcmp(&y[(size_t)m * N + n], &ref[(size_t)(m + row0) * N + n], 4) != 0) {
                    snprintf(msg, sizeof msg, "M=%d (x from row %d, grid for %d rows): row %d "
                             "col %d is %.9g, %.9g at M=300", M, row0, runs[r][2], m + row0, n,
                             y[(size_t)m * N + n], ref[(size_t)(m + row0) * N + n]);
                    ok = 0;
                }
    }
    kt_result(t, name, ok, msg);
    free(ref);
    free(y);
    gdata_free(t, &d);
}

/* gemm90's two tile widths give the same bits: every output is one chain of wgmma over K in the
 * same order whatever the tile's width (gemm90.cuh's batch invariance), so a width chosen by M
 * would keep a prompt's results independent of its batch. Both widths on one x of M = 300
 * rows, float output, compared bit for bit. */
static void gemm90_widths(kt *t, int N, int K, int bias)
{
    char name[160];
    snprintf(name, sizeof name, "gemm90/widths N=%d K=%d%s f32: bn128 = bn256 bit for bit", N, K,
             bias ? " bias" : "");
    if (!kt_sm90a(t) || !kt_want(t, name))
        return;
    CUmodule mod[2];
    for (int i = 0; i < 2; i++)
        mod[i] = gemm_module(t, &kinds[1 + i], name, 0, 1, N, K, bias);
    if (t->compile_only || !mod[0] || !mod[1])
        return; /* compiled (or a failure recorded with the log): nothing to run */
    enum { M = 300 };
    gdata d;
    gdata_make(t, &d, N, K, M, K, 0, bias);
    const size_t bytes = (size_t)M * (size_t)N * 4;
    float *y[2] = {xmalloc(bytes), xmalloc(bytes)};
    for (int i = 0; i < 2; i++) {
        CUdeviceptr dy = gemm_run(t, &kinds[1 + i], kt_func(t, mod[i], "k_gemm"), name, &d, 0, M,
                                  M, M, N, 1);
        kt_download(t, y[i], dy, bytes);
        kt_free(t, dy);
    }
    char msg[200] = "every output identical";
    int ok = 1;
    for (size_t e = 0; e < (size_t)M * (size_t)N && ok; e++)
        if (memcmp(&y[0][e], &y[1][e], 4) != 0) {
            snprintf(msg, sizeof msg, "row %zu col %zu: %.9g at 128 wide, %.9g at 256", e / N,
                     e % N, y[0][e], y[1][e]);
            ok = 0;
        }
    kt_result(t, name, ok, msg);
    free(y[0]);
    free(y[1]);
    gdata_free(t, &d);
}

void ktest_gemm(kt *t)
{
    static const gmcase cases[] = {
        /* small and odd: N under one 128-column tile, one tile and 8 or 16 columns; K of two
         * slices, 4.5 slices, 128.25 slices; every M of the brief, partial row tiles */
        {.N = 96, .K = 144, .ms = {1, 7, 16, 129, 300}, .bias = 1},
        {.N = 144, .K = 64, .ms = {1, 7, 16, 129, 300}, .f32 = 1},
        {.N = 136, .K = 4104, .ms = {1, 7, 129, 300}, .bias = 1, .f32 = 1},
        {.N = 136, .K = 64, .ms = {16, 300}, .bias = 1},
        {.N = 96, .K = 4104, .ms = {7, 300}, .f16 = 1},
        {.N = 144, .K = 144, .ms = {1, 16, 129}, .bias = 1, .f16 = 1, .f32 = 1},
        {.N = 8, .K = 8, .ms = {1, 130}, .bias = 1},
        /* widths that are not a multiple of 8 (LM heads: the mixtral and bloom fixtures' 500 and
         * 700, an odd one as GPT-2's 50257): pairs split at N, unaligned rows of an odd ldy */
        {.N = 500, .K = 64, .ms = {1, 129, 300}, .bias = 1, .f32 = 1},
        {.N = 700, .K = 144, .ms = {7, 300}},
        {.N = 501, .K = 64, .ms = {1, 130}, .bias = 1, .f32 = 1},
        {.N = 501, .K = 64, .ms = {16}, .f16 = 1},
        /* strides and a grid for more rows than M; three column tiles, the last partial */
        {.N = 264, .K = 200, .ms = {129, 300}, .bias = 1, .pad = 1},
        {.N = 264, .K = 200, .ms = {1, 129}, .f32 = 1, .f16 = 1, .pad = 1},
        /* more tile rows than one group of the block-to-tile map (8): 9 and 11 with the grid */
        {.N = 264, .K = 40, .ms = {1030}, .pad = 1},
        /* gemm90's tiles: 128 x 256 or 128 x 128, K in slices of 64. Exact tiles and one slice;
         * two 256-column tiles (four of 128) and 8 columns, two slices and one chunk, M at the
         * edges of its warps (64) and tiles (128) and 9 tile rows; three 256-column tiles and
         * 232 columns (seven of 128 and 104), five slices and a chunk */
        {.N = 256, .K = 64, .ms = {128, 256}, .f32 = 1},
        {.N = 512, .K = 64, .ms = {1, 64, 65}},
        {.N = 520, .K = 136, .ms = {64, 65, 128, 1030}, .bias = 1, .pad = 1},
        {.N = 1000, .K = 328, .ms = {7, 300}, .bias = 1, .f16 = 1, .f32 = 1},
        /* Llama-3 8B: qkv, o, gate_up, down; 1B: the same and the logits (float) */
        {.N = 6144, .K = 4096, .ms = {64, 512}},
        {.N = 4096, .K = 4096, .ms = {64, 512}, .bias = 1},
        {.N = 28672, .K = 4096, .ms = {64, 512}},
        {.N = 4096, .K = 14336, .ms = {64, 512}},
        {.N = 3072, .K = 2048, .ms = {64, 512}, .f16 = 1},
        {.N = 2048, .K = 2048, .ms = {64, 512}},
        {.N = 16384, .K = 2048, .ms = {64, 512}},
        {.N = 2048, .K = 8192, .ms = {64, 512}, .f32 = 1},
        {.N = 128256, .K = 2048, .ms = {64}, .f32 = 1},
    };
    for (size_t g = 0; g < sizeof kinds / sizeof kinds[0]; g++) {
        if (!kind_here(t, &kinds[g]))
            continue;
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
            gemm_case(t, &kinds[g], &cases[i]);
        gemm_invariance(t, &kinds[g], 4096, 4096, 0);
        gemm_invariance(t, &kinds[g], 136, 4104, 1);
        gemm_invariance(t, &kinds[g], 520, 200, 1);
    }
    gemm90_widths(t, 4096, 4096, 0);
    gemm90_widths(t, 520, 4104, 1);
}

/* ---------------------------------------------------------------- kiln-ktest --bench gemm */

/* A driver call of the benchmark; on failure it says which and the benchmark stops. */
#define BCK(call)                                                                               \
    do {                                                                                        \
        CUresult rc_ = t->cu.call;                                                              \
        if (rc_ != CUDA_SUCCESS) {                                                              \
            char b_[200];                                                                       \
            fprintf(stderr, "bench gemm: %s failed: %s\n", #call,                               \
                    kcuda_errstr(&t->cu, rc_, b_, sizeof b_));                                  \
            return -1;                                                                          \
        }                                                                                       \
    } while (0)

typedef struct gbench {
    const gkind *g; /* kiln's kernel measured */
    kgemm *lt;
    CUevent ev[2];
    CUdeviceptr x, w, y, ylt;
    int M, N, K;
} gbench;

/* Milliseconds of one GEMM: the best of 3 runs of 10 back-to-back launches, after 2 warm-ups.
 * f == NULL times cuBLASLt (into ylt), else kiln's kernel f (into y). */
static int bench_time(kt *t, gbench *b, CUfunction f, double *ms)
{
    gargs a = {.M = b->M, .x = b->x, .w = b->w, .b = 0, .y = b->y, .ldx = b->K, .ldy = b->N};
    long long ldx = b->K, ldy = b->N;
    if (f) {
        kerr e;
        kerr_clear(&e);
        if (gargs_make(t, b->g, &a, b->N, b->K, &e)) {
            fprintf(stderr, "bench gemm: %s\n", kerr_msg(&e));
            return -1;
        }
    }
    double best = 0;
    for (int r = -1; r < 3; r++) {
        const int n = r < 0 ? 2 : 10;
        BCK(cuEventRecord(b->ev[0], t->stream));
        for (int i = 0; i < n; i++) {
            if (f) {
                BCK(cuLaunchKernel(f, grid_x(t, b->g, b->N), grid_y(b->g, b->M), 1,
                                   (unsigned)b->g->threads, 1, 1, (unsigned)b->g->smem,
                                   t->stream, a.p, NULL));
            } else {
                kerr e;
                kerr_clear(&e);
                if (kgemm_run(b->lt, t->stream, 0, 0, 0, b->M, b->N, b->K, b->x, ldx, b->w, 0,
                              b->ylt, ldy, &e)) {
                    fprintf(stderr, "bench gemm: %s\n", kerr_msg(&e));
                    return -1;
                }
            }
        }
        BCK(cuEventRecord(b->ev[1], t->stream));
        BCK(cuEventSynchronize(b->ev[1]));
        float el = 0;
        BCK(cuEventElapsedTime(&el, b->ev[0], b->ev[1]));
        if (r >= 0 && (best == 0 || el / n < best))
            best = el / n;
    }
    *ms = best;
    return 0;
}

/* bf16 of U[-1, 1) * scale, n elements, uploaded to d. */
static int bench_fill(kt *t, CUdeviceptr d, size_t n, float scale)
{
    uint16_t *h = xmalloc(2 * n);
    for (size_t i = 0; i < n; i++)
        h[i] = util_f32_to_bf16(kt_randf(t) * scale);
    CUresult rc = t->cu.cuMemcpyHtoD(d, h, 2 * n);
    free(h);
    if (rc != CUDA_SUCCESS) {
        char b_[200];
        fprintf(stderr, "bench gemm: cuMemcpyHtoD failed: %s\n",
                kcuda_errstr(&t->cu, rc, b_, sizeof b_));
        return -1;
    }
    return 0;
}

int ktest_gemm_bench(kt *t)
{
    static const struct {
        const char *name;
        int N, K;
    } shapes[] = {
        {"8B qkv", 6144, 4096},   {"8B o", 4096, 4096},     {"8B gate_up", 28672, 4096},
        {"8B down", 4096, 14336}, {"1B qkv", 3072, 2048},   {"1B o", 2048, 2048},
        {"1B gate_up", 16384, 2048}, {"1B down", 2048, 8192},
    };
    static const int ms[] = {512, 2048};
    /* the kernels measured: gemm90 at both widths on sm_90a (an artifact compiled for this GPU
     * alone uses the one KILN_GEMM90_BN(N) gives: the ratio is of that one), else gemm */
    const int h = kt_sm90a(t), k0 = h ? 1 : 0, nk = h ? 2 : 1;
    gbench b;
    memset(&b, 0, sizeof b);
    if (!(b.lt = kt_cublaslt(t, "kiln-ktest --bench gemm")))
        return -1;
    BCK(cuEventCreate(&b.ev[0], 0));
    BCK(cuEventCreate(&b.ev[1], 0));
    printf("bench gemm: bf16 in and out, no bias; each time the best of 3 x 10 back-to-back "
           "launches. kiln = templates/%s.cuh (%s; %d threads); cuBLASLt = runtime/gemm.c's "
           "kgemm_run on the same inputs; ratio = the throughput of kiln's kernel as lower.c "
           "picks it (*) over cuBLASLt's; diff = relative L2 of its y against cuBLASLt's.\n",
           kinds[k0].tmpl,
           h ? "128 x 128 and 128 x 256 tiles; lower.c's is KILN_GEMM90_BN(N): kernels/kiln_gemm.h"
             : "128 x 128 tiles",
           kinds[k0].threads);
    printf("%-11s %6s %6s %5s |", "shape", "N", "K", "M");
    for (int k = k0; k < k0 + nk; k++)
        printf(" %13s |", kinds[k].name);
    printf(" %9s | %5s | %s\n", "cuBLASLt", "ratio", "diff");
    int rc = 0;
    double sum_ratio = 0, sum_8b = 0; /* ratios: all rows; the 8B shapes (the target) */
    int nratio = 0, n8b = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0] && rc == 0; s++) {
        const int N = shapes[s].N, K = shapes[s].K, MM = ms[1];
        CUfunction f[2];
        for (int k = 0; k < nk; k++) {
            b.g = &kinds[k0 + k];
            char name[120];
            snprintf(name, sizeof name, "bench %s %s", b.g->name, shapes[s].name);
            CUmodule m = gemm_module(t, b.g, name, 0, 0, N, K, 0);
            if (!m)
                return -1;
            f[k] = kt_func(t, m, "k_gemm");
            BCK(cuFuncSetAttribute(f[k], CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                   b.g->smem));
        }
        /* lower.c's: the one of the tile width KILN_GEMM90_BN(N) */
        const int pick = h && KILN_GEMM90_BN(N) != kinds[k0].bn ? 1 : 0;
        b.N = N, b.K = K;
        BCK(cuMemAlloc(&b.x, (size_t)MM * K * 2));
        BCK(cuMemAlloc(&b.w, (size_t)N * K * 2));
        BCK(cuMemAlloc(&b.y, (size_t)MM * N * 2));
        BCK(cuMemAlloc(&b.ylt, (size_t)MM * N * 2));
        if (bench_fill(t, b.x, (size_t)MM * K, 1.0f) ||
            bench_fill(t, b.w, (size_t)N * K, 2.0f / sqrtf((float)K)))
            return -1;
        for (size_t mi = 0; mi < sizeof ms / sizeof ms[0] && rc == 0; mi++) {
            b.M = ms[mi];
            double tk[2], tl, diff[2];
            if (bench_time(t, &b, NULL, &tl)) {
                rc = -1;
                break;
            }
            for (int k = 0; k < nk && rc == 0; k++) {
                b.g = &kinds[k0 + k];
                if (bench_time(t, &b, f[k], &tk[k]))
                    rc = -1;
                else /* kiln's output against cuBLASLt's, the sanity check of a row */
                    diff[k] = kt_rel_l2_bf16(t, b.y, b.ylt, (size_t)b.M * N);
            }
            if (rc)
                break;
            const double flop = 2.0 * b.M * (double)N * K;
#define TF(ms_) (flop / ((ms_) * 1e-3) / 1e12)
            printf("%-11s %6d %6d %5d |", shapes[s].name, N, K, b.M);
            for (int k = 0; k < nk; k++)
                printf(" %12.1f%s |", TF(tk[k]), k == pick && h ? "*" : " ");
            /* both round one float sum to bf16: they differ by about one bf16 ulp in a few
             * outputs (rel ~1e-3 at most); a wrong kernel differs by ~1 */
            int same = 1;
            for (int k = 0; k < nk; k++)
                same &= diff[k] <= 1e-2;
            printf(" %9.1f | %5.2f | %.1e", TF(tl), tl / tk[pick], diff[pick]);
            if (nk == 2)
                printf(" (other width %.1e)", diff[1 - pick]);
            printf(" %s\n", same ? "ok" : "MISMATCH (kiln's output is wrong)");
#undef TF
            if (!same)
                rc = -1;
            sum_ratio += tl / tk[pick];
            nratio++;
            if (strncmp(shapes[s].name, "8B", 2) == 0) {
                sum_8b += tl / tk[pick];
                n8b++;
            }
            fflush(stdout);
        }
        BCK(cuMemFree(b.x));
        BCK(cuMemFree(b.w));
        BCK(cuMemFree(b.y));
        BCK(cuMemFree(b.ylt));
    }
    if (nratio)
        printf("bench gemm: mean ratio kiln/cuBLASLt %.2f over %d rows, %.2f over the 8B shapes "
               "at M = 512 and 2048 (the goal: >= 0.80)%s\n",
               sum_ratio / nratio, nratio, n8b ? sum_8b / n8b : 0.0,
               rc ? "; FAILED (see above)" : "");
    kgemm_free(b.lt);
    return rc;
}
