/* ktest_skinny — kernel tests of templates/gemv.cuh's gemm_skinny (the GEMM of steps of 9 to 64
 * rows: one warp per 16-row weight tile as in gemv, x staged in shared memory for the block's
 * WARPS tiles, K split across SPLITS blocks whose partials the last-arriving block adds in a fixed
 * order) against the CPU reference of ktest_gemv.c (gemv_ref, the same semantics), and
 * `kiln-ktest --bench skinny`: its weight bandwidth against cuBLASLt on the Llama-3 shapes (on
 * sm_90a, of templates/gemm90.cuh's gemm90_skinny, the same contract on wgmma and TMA, which the
 * cases named skinny90/ check the same way where the GPU is sm_90a: N and K tails, gated, bias,
 * f32, f16, its split rule and 1 to 16 parts, the Llama linears, batch invariance).
 *
 * Inputs as ktest_gemv.c's (x ~ U[-1, 1), w ~ U[-1, 1) * 2/sqrt(K), bias ~ U[-0.5, 0.5), rounded
 * through the storage type, so the double reference sees the kernel's inputs), and its
 * tolerances for the same reasons (the kernel's numerics are gemv's: float sums of chains of at
 * most 8 mma, one rounding of the output): relative L2 1e-2 for a bf16/f16 output, 1e-5 for a
 * float one. Every case launches the launch rule of kernels/kiln_gemm.h (grid (ceil(TILES /
 * WARPS), SPLITS), block 32 * WARPS, KILN_SKINNY_SMEM(MMAX, WARPS, STAGES) bytes of dynamic shared
 * memory) with the wrapper written as lower.c writes a kernel (__launch_bounds__(32 * WARPS)),
 * WARPS, SPLITS and STAGES those of lower_skinny_shape (for this GPU's shared memory) unless the
 * case names them. The cases cover M = 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64 at MMAX 64 (and
 * MMAX 16 and 32), gated and not, bias, float output, bf16 and f16, N not a multiple of the
 * 16-row tile (gated: N/2 not a multiple of 8), K not a multiple of the 128-element slice (520,
 * 1000), shorter than one (64, 8), 4096 and 14336, SPLITS 1, 2, 4, 8 and 16 (and more parts
 * than slices, parts without a slice: K = 256 in 4 parts, K = 64 in 2, K = 520 in 8), WARPS 1, 4
 * and 8 with TILES not a multiple of WARPS (N = 1000: 63 tiles; gated N = 1998: 125; N = 37: 3
 * tiles, 5 warps of the block without one), rings of 2 and 3 slices, and the Llama 8B/1B linears at M = 16 and 64 at
 * lower_skinny_shape's pick. There the double reference of every row would take minutes: only
 * rows 0, 1, M/2 and M - 1 are compared (all rows are in the checks below).
 *
 * Each launch of a case also checks, beyond the reference:
 *   - y is a buffer of MMAX rows (gemm_skinny_int4: whole row groups of MMAX), poisoned: the
 *     rows from M on must keep the poison;
 *   - part (SPLITS > 1) starts poisoned too (the kernel must write before it reads), and is null
 *     for SPLITS 1; count starts zero and must be all zero after the launch (the contract: every
 *     launch leaves it so, which CUDA graphs replaying the launch rely on);
 *   - a second launch on the same inputs into a freshly poisoned y gives the same bytes, bit for
 *     bit (the split-K sum's order does not depend on which block arrives last), and leaves count
 *     zero again.
 * skinny/invariance checks batch invariance bit for bit (float output): rows 0, 7, 8, 37 and 63
 * of a launch with M = 64 equal the same row launched alone (M = 1, x pointing at that row);
 * the kernel's per-row result must depend only on that row, never on M.
 * skinny_int4/ runs the same checks on gemm_skinny_int4 (gemv_int4's weight, G 32, 64, 96, 128,
 * 256 and a whole row of K = 544 and 4224: a last, partial slice; the reference multiplies
 * ktest_gemv.c's int4_value, the values the kernel's conversion must give; one split over up to
 * 16 row groups, the Llama linears at 1,000 rows), with its own invariance cases.
 *
 * The benchmark: gemm_skinny (bf16, no bias, MMAX 64) at lower_skinny_shape's WARPS/SPLITS, at 4
 * and 8 warps with those splits, and at half and twice the splits, on the 8B and 1B linears at
 * M = 16, 32 and 64, each launch in a CUDA graph of back-to-back launches (with PDL where the
 * runtime uses it: kcuda_launch with t->pdl) cycling over copies of the weight (so that it
 * comes from HBM, not L2), the best of 3 replays; reported as weight bytes per second and as a
 * ratio of the device-to-device copy bandwidth, beside cuBLASLt's time (runtime/gemm.c's
 * kgemm_run in the same kind of graph, on the same copies) at the same M, N, K (for gated shapes
 * the plain [M, N] product: cuBLASLt has no gated epilogue), and the throughput ratio
 * skinny/cuBLASLt. Non-gated shapes also compare skinny's output with cuBLASLt's (relative L2).
 * `kiln-ktest --bench skinny_int4`: gemm_skinny_int4 (G 128) on the same shapes, M 16 to 128, at
 * lower_skinny_shape's pick and four other launch shapes, as INT4 bytes (weight and sz) per
 * second over the copy bandwidth, and as the 16-bit weight's rate at the same time.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ktest.h"
#include "lower.h"
#include "util.h"
#include "../../kernels/kiln_gemm.h"
#include "../../kernels/kiln_step.h"

typedef struct scase {
    int N, K, mmax;
    int ms[13]; /* the rows M to run (one kernel for all), 0-terminated */
    int bias, gated, act, f32, f16;
    int warps, splits, stages; /* 0: lower_skinny_shape's */
    int g4;                    /* 0: gemm_skinny; else gemm_skinny_int4 with G = g4 */
    int h90;                   /* gemm90_skinny (templates/gemm90.cuh; MMAX 64, its own block) */
} scase;

/* One kernel instance: the shape, the template arguments and its launch geometry. */
typedef struct skern {
    int N, K, mmax, bias, gated, act, f32, f16, warps, splits, stages, g4, h90;
    int nout, tiles, units, smem; /* units: the counters (tiles, or INT4's tile pairs); smem:
                                   * the dynamic shared memory bytes of a block */
    CUfunction f;
} skern;

/* The shared memory a block may opt in to on this GPU (lower_skinny_shape's budget, as kilnc
 * compile --sm gives it for this GPU alone); sm_80's without a GPU. */
static int smem_block = 163 * 1024;

static void smem_block_of(kt *t)
{
    if (t->compile_only)
        return;
    CUdevice dev;
    KT_CU(t, cuDeviceGet(&dev, 0)); /* kiln-ktest runs on device 0 */
    KT_CU(t, cuDeviceGetAttribute(&smem_block,
                                  CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, dev));
}

/* The dynamic shared memory of a block of k (kernels/kiln_gemm.h). */
static int skern_smem(const skern *k)
{
    return k->h90 ? KILN_SKINNY90_SMEM : KILN_SKINNY_RING(k->mmax, k->warps, k->stages, k->g4);
}

/* lower_skinny_shape's WARPS, SPLITS and STAGES where k has none, then the launch rule's numbers
 * (kernels/kiln_gemm.h). */
static void skern_shape(skern *k)
{
    int w = 0, s = 0, st = 0;
    if (k->h90) { /* one warpgroup and a producer warp: "warps" sizes the block */
        w = KILN_SKINNY90_THREADS / 32;
        s = lower_skinny90_splits(k->N, k->K, k->gated);
        st = KILN_SKINNY90_STAGES;
    } else {
        lower_skinny_shape(k->N, k->K, k->gated, k->g4, smem_block, &w, &s, &st);
    }
    if (!k->warps)
        k->warps = w;
    if (!k->splits)
        k->splits = s;
    if (!k->stages)
        k->stages = st;
    k->nout = k->gated ? k->N / 2 : k->N;
    k->tiles = (int)(k->h90 ? KILN_SKINNY90_TILES(k->N, k->gated)
                            : KILN_GEMV_TILES(k->N, k->gated));
    k->units = k->h90 ? 4 * k->tiles : KILN_SKINNY_UNITS(k->N, k->gated, k->g4);
    k->smem = skern_smem(k);
}

/* The row groups of an M-row launch: gemm_skinny_int4's ceil(M / MMAX); gemm_skinny computes
 * at most MMAX rows, in one. */
static int skern_groups(const skern *k, int M) { return k->g4 ? (M + k->mmax - 1) / k->mmax : 1; }

/* Floats of k's part scratch for M rows (0 for SPLITS 1). */
static long long skern_part(const skern *k, int M)
{
    if (k->h90)
        return KILN_SKINNY90_PART(k->splits, k->tiles);
    return KILN_SKINNY_PART(k->splits, k->units * (k->g4 ? KILN_SKINNY4_RT : 1), k->mmax) *
           skern_groups(k, M);
}

/* The launch grid at M rows: gemm_skinny (ceil(UNITS / WARPS), SPLITS, 1); gemm_skinny_int4 (row
 * groups, ceil(UNITS / WARPS), SPLITS). */
static void skern_grid(const skern *k, int M, unsigned grid[3])
{
    if (k->h90) { /* (TILES, SPLITS) */
        grid[0] = (unsigned)k->tiles;
        grid[1] = (unsigned)k->splits;
        grid[2] = 1;
        return;
    }
    const unsigned ub = (unsigned)((k->units + k->warps - 1) / k->warps);
    grid[0] = k->g4 ? (unsigned)skern_groups(k, M) : ub;
    grid[1] = k->g4 ? ub : (unsigned)k->splits;
    grid[2] = k->g4 ? (unsigned)k->splits : 1u;
}

/* Rows a case may launch (gemm_skinny_int4's groups), and the y buffer's rows at M: whole groups
 * of MMAX, so that the rows past M are there to stay poisoned. */
enum { SKINNY_ROWS_MAX = 256 };
static int y_rows(const skern *k, int M) { return skern_groups(k, M) * k->mmax; }

/* The kernel's wrapper k_skinny, as lower.c writes a kernel: extern "C", __launch_bounds__ of
 * the block, the template's own parameter list; compiled and loaded into k->f. 0, or -1 when it
 * did not compile (the failure is recorded with its log). */
static int skern_build(kt *t, skern *k, const char *name)
{
    const char *dt = k->f16 ? "kiln::f16" : "kiln::bf16";
    char src[1024], g4[32] = "";
    if (k->h90) {
        snprintf(src, sizeof src,
                 "#include \"gemm90.cuh\"\n"
                 "extern \"C\" __global__ void __launch_bounds__(%d, 2)\n"
                 "k_skinny(int M, const __grid_constant__ kiln::tmap tx, "
                 "const __grid_constant__ kiln::tmap tw, const %s *bias, void *y, float *part, "
                 "unsigned *count)\n"
                 "{\n"
                 "    kiln::gemm90_skinny<%s, %d, %d, %s, %s, %d, %s, %d>(M, tx, tw, bias, y, "
                 "part, count);\n"
                 "}\n",
                 KILN_SKINNY90_THREADS, dt, dt, k->N, k->K, k->bias ? "true" : "false",
                 k->gated ? "true" : "false", k->act, k->f32 ? "true" : "false", k->splits);
        CUmodule m = kt_module_sm90a(t, name, src);
        if (!m && !t->compile_only)
            return -1;
        k->f = kt_func(t, m, "k_skinny");
        return 0;
    }
    if (k->g4)
        snprintf(g4, sizeof g4, ", %d", k->g4);
    snprintf(src, sizeof src,
             "#include \"gemv.cuh\"\n"
             "extern \"C\" __global__ void __launch_bounds__(%d)\n"
             "k_skinny(const kiln_step st, const %s *x, const %s *w, %sconst %s *bias, void *y, "
             "float *part, unsigned *count, int M)\n"
             "{\n"
             "    kiln::%s<%s, %d, %d, %d, %s, %s, %d, %s, %d, %d, %d%s>(st, x, w, %sbias, "
             "y, part, count, M);\n"
             "}\n",
             32 * k->warps, dt, k->g4 ? "unsigned char" : dt, k->g4 ? "const uint2 *sz, " : "",
             dt, k->g4 ? "gemm_skinny_int4" : "gemm_skinny", dt, k->N, k->K, k->mmax,
             k->bias ? "true" : "false", k->gated ? "true" : "false", k->act,
             k->f32 ? "true" : "false", k->warps, k->splits, k->stages, g4, k->g4 ? "sz, " : "");
    CUmodule m = kt_module(t, name, src);
    if (!m && !t->compile_only)
        return -1;
    k->f = kt_func(t, m, "k_skinny");
    return 0;
}

/* A launch's buffers: x, w and sz (the caller's; sz INT4's only), bias (or 0), part
 * (skern_part floats, poisoned, so the kernel must write what it reads; 0 for SPLITS 1) and count
 * ([units], zero). */
typedef struct sbufs {
    CUdeviceptr x, w, sz, b, part, count;
} sbufs;

/* A launch's inputs: x [M, K] (f16: in f16, else bf16) and bias [N] on the host, rounded through
 * the storage type (the reference's inputs), a fresh weight, and the device buffers. */
typedef struct sinputs {
    float *x, *b;
    gweights g;
    sbufs d;
} sinputs;

static void sinputs_make(kt *t, const skern *k, int M, sinputs *in)
{
    const size_t nx = (size_t)M * k->K, nb = (size_t)k->N;
    in->x = xmalloc(sizeof(float) * nx);
    in->b = xmalloc(sizeof(float) * nb);
    kt_fill(t, in->x, nx, 1.0f);
    kt_fill(t, in->b, nb, 0.5f);
    gweights_make(t, &in->g, k->N, k->K, k->f16, 0, 0, k->g4);
    uint16_t *h = kt_to_dt(in->x, nx, k->f16);
    in->d.x = kt_upload(t, h, sizeof(uint16_t) * nx);
    free(h);
    h = kt_to_dt(in->b, nb, k->f16);
    in->d.b = k->bias ? kt_upload(t, h, sizeof(uint16_t) * nb) : 0;
    free(h);
    in->d.w = in->g.dw;
    in->d.sz = in->g.ds;
    const long long pf = skern_part(k, M);
    const size_t nc = (size_t)k->units * (size_t)skern_groups(k, M);
    in->d.part = pf ? kt_alloc(t, sizeof(float) * (size_t)pf) : 0;
    unsigned *zero = xcalloc(nc, sizeof(unsigned));
    in->d.count = kt_upload(t, zero, sizeof(unsigned) * nc);
    free(zero);
}

static void sinputs_free(kt *t, sinputs *in)
{
    kt_free(t, in->d.x);
    if (in->d.b)
        kt_free(t, in->d.b);
    if (in->d.part)
        kt_free(t, in->d.part);
    kt_free(t, in->d.count);
    gweights_free(t, &in->g);
    free(in->x);
    free(in->b);
}

/* Bytes of one row of y. */
static size_t y_row(const skern *k) { return (size_t)k->nout * (k->f32 ? 4 : 2); }

/* Output i of y's bytes as float. */
static float y_value(const skern *k, const unsigned char *y, size_t i)
{
    if (k->f32) {
        float v;
        memcpy(&v, y + 4 * i, 4);
        return v;
    }
    uint16_t h;
    memcpy(&h, y + 2 * i, 2);
    return k->f16 ? util_f16_to_f32(h) : util_bf16_to_f32(h);
}

/* A launch's kernel arguments, as the runtime packs them: gemm_skinny's (st, x, w, bias, y, part,
 * count, M), gemm_skinny_int4's (sz after w) and gemm90_skinny's (M, x's map, w's map, bias, y,
 * part, count: the maps made as runtime/engine.c makes them, x of M rows). */
typedef struct sargs {
    kiln_step st;
    int M;
    CUdeviceptr x, w, sz, b, y, part, count;
    CUtensorMap map[2];
    void *p[9];
} sargs;

static void sargs_make(const kt *t, const skern *k, sargs *a, const char *name)
{
    memset(&a->st, 0, sizeof a->st);
    a->st.T = a->st.n_seqs = a->M;
    if (k->h90) {
        kerr e;
        kerr_clear(&e);
        if (kcuda_gemm90_maps(&t->cu, a->map, a->x, a->M > 0 ? a->M : 1, k->K, k->K,
                              KILN_SKINNY_MAX, a->w, k->N, KILN_SKINNY90_ROWS / 2, &e))
            fprintf(stderr, "%s: %s\n", name, kerr_msg(&e)); /* the launch then fails */
        void *p[] = {&a->M, &a->map[0], &a->map[1], &a->b, &a->y, &a->part, &a->count};
        memcpy(a->p, p, sizeof p);
    } else if (k->g4) {
        void *p[] = {&a->st, &a->x, &a->w, &a->sz, &a->b, &a->y, &a->part, &a->count, &a->M};
        memcpy(a->p, p, sizeof p);
    } else {
        void *p[] = {&a->st, &a->x, &a->w, &a->b, &a->y, &a->part, &a->count, &a->M};
        memcpy(a->p, p, sizeof p);
    }
}

/* One launch of k by the launch rule on M rows of x (at x) into y; returns how many of the
 * counters (one a unit, a set a row group) are not zero afterwards (the contract: none). */
static int skern_run(kt *t, const skern *k, const char *name, const sbufs *d, CUdeviceptr x,
                     CUdeviceptr y, int M)
{
    sargs a = {.M = M, .x = x, .w = d->w, .sz = d->sz, .b = d->b, .y = y, .part = d->part,
               .count = d->count};
    sargs_make(t, k, &a, name);
    unsigned grid[3];
    skern_grid(k, M, grid);
    kt_launch(t, k->f, name, grid[0], grid[1], grid[2], 32u * (unsigned)k->warps, (size_t)k->smem,
              a.p);
    const size_t nc = (size_t)k->units * (size_t)skern_groups(k, M);
    unsigned *c = xmalloc(sizeof(unsigned) * nc);
    kt_download(t, c, d->count, sizeof(unsigned) * nc);
    int nz = 0;
    for (size_t i = 0; i < nc; i++)
        nz += c[i] != 0;
    free(c);
    return nz;
}

/* The rows of an M-row launch compared with the double reference: all of them, or where that
 * would take long (the Llama shapes) or M is more than SKINNY_ROWS_MAX, rows 0, 1, M/2 and
 * M - 1. Returns how many, into rows. */
static int ref_rows(int M, const skern *k, int rows[SKINNY_ROWS_MAX])
{
    if (M <= SKINNY_ROWS_MAX && (double)M * k->N * k->K <= (double)(1 << 28)) {
        for (int r = 0; r < M; r++)
            rows[r] = r;
        return M;
    }
    const int pick[4] = {0, 1, M / 2, M - 1};
    int n = 0;
    for (int i = 0; i < 4; i++)
        if (pick[i] < M && (n == 0 || pick[i] > rows[n - 1]))
            rows[n++] = pick[i];
    return n;
}

/* One M of a case: fresh inputs, two launches (each into a freshly poisoned y), then in order:
 * the counters left zero, nothing written past row M, the two launches' bytes identical, and
 * the rows against the reference. */
static void skinny_check(kt *t, const skern *k, int M, const char *name)
{
    if (t->compile_only)
        return; /* the kernel is compiled; the inputs and the reference would be unused */
    const int K = k->K, NOUT = k->nout;
    sinputs in;
    sinputs_make(t, k, M, &in);
    const float *bias = k->bias ? in.b : NULL;
    const size_t row = y_row(k), ybytes = (size_t)y_rows(k, M) * row, used = (size_t)M * row;
    unsigned char *yb[2];
    int nz[2];
    for (int i = 0; i < 2; i++) {
        CUdeviceptr dy = kt_alloc(t, ybytes);
        nz[i] = skern_run(t, k, name, &in.d, in.d.x, dy, M);
        yb[i] = xmalloc(ybytes);
        kt_download(t, yb[i], dy, ybytes);
        kt_free(t, dy);
    }
    size_t touched = 0, first = 0, differ = (size_t)-1;
    for (size_t i = used; i < ybytes; i++)
        if (yb[0][i] != 0xFF && touched++ == 0)
            first = i;
    for (size_t i = 0; i < ybytes && differ == (size_t)-1; i++)
        if (yb[0][i] != yb[1][i])
            differ = i;
    char msg[240];
    if (nz[0] || nz[1]) {
        snprintf(msg, sizeof msg, "count not all zero after launch %d: %d of %d counters "
                 "(the next launch would add the wrong parts)", nz[0] ? 1 : 2,
                 nz[0] ? nz[0] : nz[1], k->units);
        kt_result(t, name, 0, msg);
    } else if (touched) {
        snprintf(msg, sizeof msg,
                 "wrote %zu bytes past row M=%d (first at output row %zu, col %zu)", touched, M,
                 first / row, first % row / (k->f32 ? 4 : 2));
        kt_result(t, name, 0, msg);
    } else if (differ != (size_t)-1) {
        snprintf(msg, sizeof msg, "NOT DETERMINISTIC: a second launch on the same inputs differs "
                 "at row %zu col %zu (%.9g, then %.9g)", differ / row,
                 differ % row / (k->f32 ? 4 : 2), y_value(k, yb[0], differ / (k->f32 ? 4 : 2)),
                 y_value(k, yb[1], differ / (k->f32 ? 4 : 2)));
        kt_result(t, name, 0, msg);
    } else {
        int rows[SKINNY_ROWS_MAX];
        const int nr = ref_rows(M, k, rows);
        float *got = xmalloc(sizeof(float) * (size_t)nr * NOUT);
        float *want = xmalloc(sizeof(float) * (size_t)nr * NOUT);
        if (nr == M)
            gemv_ref(in.x, &in.g, bias, M, k->gated, k->act, want);
        for (int i = 0; i < nr; i++) {
            if (nr != M)
                gemv_ref(in.x + (size_t)rows[i] * K, &in.g, bias, 1, k->gated, k->act,
                         want + (size_t)i * NOUT);
            for (int o = 0; o < NOUT; o++)
                got[(size_t)i * NOUT + o] = y_value(k, yb[0], (size_t)rows[i] * NOUT + o);
        }
        kt_check(t, name, got, want, (size_t)nr * NOUT, k->f32 ? 1e-5 : 1e-2);
        free(got);
        free(want);
    }
    sinputs_free(t, &in);
    free(yb[0]);
    free(yb[1]);
}

/* A case's label after "skinny/N=.. K=.. M=..": MMAX, gated and its activation, bias, f32, f16,
 * warps, splits and stages. */
static void skern_label(const skern *k, char *out, size_t n)
{
    char g4[16] = "";
    if (k->g4)
        snprintf(g4, sizeof g4, " G=%d", k->g4);
    if (k->h90) {
        snprintf(out, n, "%s%s%s%s%s splits=%d", k->gated ? " gated " : "",
                 k->gated ? kt_act_name(k->act) : "", k->bias ? " bias" : "",
                 k->f32 ? " f32" : "", k->f16 ? " f16" : "", k->splits);
        return;
    }
    snprintf(out, n, " MMAX=%d%s%s%s%s%s%s warps=%d splits=%d stages=%d", k->mmax,
             k->gated ? " gated " : "", k->gated ? kt_act_name(k->act) : "", k->bias ? " bias" : "",
             k->f32 ? " f32" : "", k->f16 ? " f16" : "", g4, k->warps, k->splits, k->stages);
}

/* The family of k's cases: "skinny" (gemm_skinny) or "skinny_int4". */
static const char *skern_fam(const skern *k)
{
    return k->h90 ? "skinny90" : k->g4 ? "skinny_int4" : "skinny";
}

/* A case: its kernel compiled once, run for each M of c->ms. */
static void skinny_case(kt *t, const scase *c)
{
    skern k = {.N = c->N, .K = c->K, .mmax = c->mmax, .bias = c->bias, .gated = c->gated,
               .act = c->act, .f32 = c->f32, .f16 = c->f16, .warps = c->warps,
               .splits = c->splits, .stages = c->stages, .g4 = c->g4, .h90 = c->h90};
    if (k.h90 && !kt_sm90a(t))
        return; /* sm_90a only (wgmma) */
    skern_shape(&k);
    char opts[160];
    skern_label(&k, opts, sizeof opts);
    int compiled = 0;
    for (int i = 0; i < 13 && c->ms[i]; i++) {
        char name[240];
        snprintf(name, sizeof name, "%s/N=%d K=%d M=%d%s", skern_fam(&k), c->N, c->K, c->ms[i],
                 opts);
        if (!kt_want(t, name))
            continue;
        if (!compiled && skern_build(t, &k, name))
            return; /* the compile failure is recorded with its log */
        compiled = 1;
        skinny_check(t, &k, c->ms[i], name);
    }
}

/* Batch invariance, bit for bit (float output): rows 0, 7, 8, 37, 63 (and with M = 200 rows, 64,
 * 100 and 199: other row groups of gemm_skinny_int4) of a launch with M rows (MMAX 64) against the
 * same row launched alone (M = 1, x and y at that row). */
static void skinny_invariance(kt *t, int N, int K, int gated, int warps, int splits, int g4, int M,
                              int h90)
{
    if (h90 && !kt_sm90a(t))
        return;
    static const int all_rows[] = {0, 7, 8, 37, 63, 64, 100, 199};
    const size_t nrows = M > 64 ? 8 : 5;
    const int *rows = all_rows;
    skern k = {.N = N, .K = K, .mmax = 64, .gated = gated, .act = KILN_ACT_SILU, .f32 = 1,
               .warps = warps, .splits = splits, .g4 = g4, .h90 = h90};
    skern_shape(&k);
    char name[240], opts[160];
    skern_label(&k, opts, sizeof opts);
    snprintf(name, sizeof name, "%s/invariance N=%d K=%d M=%d vs 1%s", skern_fam(&k), N, K, M,
             opts);
    if (!kt_want(t, name) || skern_build(t, &k, name) || t->compile_only)
        return;
    sinputs in;
    sinputs_make(t, &k, M, &in);
    const size_t row = y_row(&k), ybytes = (size_t)M * row;
    CUdeviceptr dall = kt_alloc(t, ybytes), dalone = kt_alloc(t, ybytes);
    int nz = skern_run(t, &k, name, &in.d, in.d.x, dall, M);
    for (size_t i = 0; i < nrows; i++)
        nz += skern_run(t, &k, name, &in.d, in.d.x + (CUdeviceptr)rows[i] * K * 2,
                        dalone + (CUdeviceptr)rows[i] * row, 1);
    unsigned char *all = xmalloc(ybytes), *alone = xmalloc(ybytes);
    kt_download(t, all, dall, ybytes);
    kt_download(t, alone, dalone, ybytes);
    char msg[300];
    int ok = nz == 0;
    if (!ok)
        snprintf(msg, sizeof msg, "count not all zero after a launch (%d tile counters)", nz);
    for (size_t i = 0; i < nrows && ok; i++) {
        const size_t r0 = (size_t)rows[i] * row;
        for (int o = 0; o < k.nout && ok; o++) /* the poison is NaN: both unwritten is no pass */
            if (!isfinite(y_value(&k, all, (size_t)rows[i] * k.nout + o))) {
                snprintf(msg, sizeof msg, "row %d col %d of the M=%d launch not written (NaN)",
                         rows[i], o, M);
                ok = 0;
            }
        for (size_t b = 0; b < row && ok; b++)
            if (all[r0 + b] != alone[r0 + b]) {
                const size_t col = b / 4;
                snprintf(msg, sizeof msg,
                         "BATCH INVARIANCE BROKEN: row %d of the M=%d launch differs from that "
                         "row launched alone (M=1) at column %zu: %.9g vs %.9g alone",
                         rows[i], M, col, y_value(&k, all, (size_t)rows[i] * k.nout + col),
                         y_value(&k, alone, (size_t)rows[i] * k.nout + col));
                ok = 0;
            }
    }
    if (ok)
        snprintf(msg, sizeof msg, "rows 0, 7, 8, 37, 63%s at M=%d identical to each alone (%d "
                 "cols)", M > 64 ? ", 64, 100, 199" : "", M, k.nout);
    kt_result(t, name, ok, msg);
    kt_free(t, dall);
    kt_free(t, dalone);
    sinputs_free(t, &in);
    free(all);
    free(alone);
}

/* The Llama-3 8B and 1B linears (w [N, K]; gated: gate_up, [gate; up]), the cases' and the
 * benchmark's. */
static const struct {
    const char *name;
    int N, K, gated;
} llama[] = {
    {"8B qkv", 6144, 4096, 0},     {"8B o", 4096, 4096, 0},  {"8B gate_up", 28672, 4096, 1},
    {"8B down", 4096, 14336, 0},   {"1B qkv", 3072, 2048, 0}, {"1B o", 2048, 2048, 0},
    {"1B gate_up", 16384, 2048, 1}, {"1B down", 2048, 8192, 0},
};
enum { NLLAMA = sizeof llama / sizeof llama[0] };

void ktest_skinny(kt *t)
{
    smem_block_of(t);
#define M12 {1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64}
    static const scase cases[] = {
        /* every M at MMAX 64: N = 1000 is 63 tiles (not a multiple of 16 rows, nor of 4 or 8
         * warps), K = 520 four slices and a partial one, at lower's pick; gated N = 1998 is 999
         * outputs (125 tiles of 8, the last partial), K = 1000 in 2 parts; K = 1000 in 4 */
        {.N = 1000, .K = 520, .mmax = 64, .ms = M12, .bias = 1},
        {.N = 1998, .K = 1000, .mmax = 64, .ms = M12, .gated = 1, .act = KILN_ACT_SILU,
         .warps = 8, .splits = 2},
        {.N = 1000, .K = 1000, .mmax = 64, .ms = {1, 9, 33, 64}, .warps = 8, .splits = 4},
        /* MMAX 16 and 32 */
        {.N = 1000, .K = 520, .mmax = 16, .ms = {1, 9, 16}, .bias = 1},
        {.N = 1000, .K = 1000, .mmax = 32, .ms = {5, 17, 32}, .f16 = 1},
        {.N = 1998, .K = 520, .mmax = 32, .ms = {8, 31}, .bias = 1, .gated = 1,
         .act = KILN_ACT_GELU},
        /* float output */
        {.N = 1000, .K = 1000, .mmax = 64, .ms = {9, 64}, .bias = 1, .f32 = 1},
        {.N = 1998, .K = 520, .mmax = 64, .ms = {33}, .gated = 1, .act = KILN_ACT_SILU,
         .f32 = 1},
        /* f16 storage */
        {.N = 1000, .K = 520, .mmax = 64, .ms = {16, 63}, .bias = 1, .f16 = 1},
        {.N = 1998, .K = 1000, .mmax = 64, .ms = {17, 64}, .gated = 1, .act = KILN_ACT_RELU,
         .f16 = 1},
        /* K shorter than one 128-element slice */
        {.N = 200, .K = 64, .mmax = 64, .ms = {1, 17, 64}},
        {.N = 37, .K = 8, .mmax = 64, .ms = {9, 64}, .bias = 1},
        {.N = 128, .K = 64, .mmax = 64, .ms = {15}, .gated = 1, .act = KILN_ACT_GELU_TANH},
        /* long K at lower's pick (split-K), and one warp a block in 8 parts */
        {.N = 512, .K = 4096, .mmax = 64, .ms = {16, 64}},
        {.N = 256, .K = 14336, .mmax = 64, .ms = {9, 64}, .bias = 1},
        {.N = 200, .K = 14336, .mmax = 64, .ms = {33}, .warps = 1, .splits = 8},
        /* split-K 1, 2 and 8 over 8, 4 and 1 warps (63 tiles: a partial last block) */
        {.N = 1000, .K = 4096, .mmax = 64, .ms = {7, 64}, .warps = 8, .splits = 1},
        {.N = 1000, .K = 4096, .mmax = 64, .ms = {17, 64}, .bias = 1, .warps = 4, .splits = 2},
        {.N = 1000, .K = 4096, .mmax = 64, .ms = {1, 32, 64}, .warps = 1, .splits = 8},
        {.N = 1998, .K = 4096, .mmax = 64, .ms = {16, 63}, .gated = 1, .act = KILN_ACT_SILU,
         .warps = 4, .splits = 8},
        /* more parts than slices: parts with no slice add zeros (K = 256: 2 slices in 4 parts;
         * K = 64: 1 in 2; K = 520: 5 in 8) */
        {.N = 1000, .K = 256, .mmax = 64, .ms = {1, 33, 64}, .warps = 4, .splits = 4},
        {.N = 200, .K = 64, .mmax = 64, .ms = {64}, .f32 = 1, .warps = 8, .splits = 2},
        {.N = 1000, .K = 520, .mmax = 64, .ms = {64}, .warps = 8, .splits = 8},
        /* rings of 2 and 3 slices (the shared memory of 99 KiB and 163 KiB targets) */
        {.N = 1000, .K = 1000, .mmax = 64, .ms = {9, 40, 64}, .bias = 1, .warps = 4,
         .splits = 2, .stages = 2},
        {.N = 1998, .K = 4096, .mmax = 64, .ms = {16, 64}, .gated = 1, .act = KILN_ACT_SILU,
         .warps = 8, .splits = 4, .stages = 3},
    };
#undef M12
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        skinny_case(t, &cases[i]);
    /* the Llama linears at lower_skinny_shape's pick, as the runtime runs them */
    for (int i = 0; i < NLLAMA; i++) {
        scase c = {.N = llama[i].N, .K = llama[i].K, .mmax = KILN_SKINNY_MAX, .ms = {16, 64},
                   .gated = llama[i].gated, .act = KILN_ACT_SILU};
        skinny_case(t, &c);
    }
    skinny_invariance(t, 1000, 1000, 0, 0, 0, 0, 64, 0);
    skinny_invariance(t, 1000, 520, 0, 4, 8, 0, 64, 0);
    skinny_invariance(t, 4096, 4096, 0, 0, 0, 0, 64, 0);
    skinny_invariance(t, 4096, 14336, 0, 0, 0, 0, 64, 0);
    skinny_invariance(t, 16384, 2048, 1, 0, 0, 0, 64, 0);

    /* gemm90_skinny (sm_90a): tiles of 128 weight rows (64 gated outputs), MMAX 64. N = 1000 is
     * 8 tiles (the last partial), gated N = 1998 16 (999 outputs), K = 520 eight 64-element
     * slices and a partial one, K = 8 and 64 one slice; split-K at lower_skinny90_splits's pick
     * (K = 14336 over 2 tiles: 56 parts) and at 1, 2, 4, 8 and 16, one slice a part (K = 512 in
     * 8) */
#define M12 {1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64}
    static const scase c90[] = {
        {.N = 1000, .K = 520, .mmax = 64, .ms = M12, .bias = 1, .h90 = 1},
        {.N = 1998, .K = 1000, .mmax = 64, .ms = M12, .gated = 1, .act = KILN_ACT_SILU,
         .splits = 2, .h90 = 1},
        {.N = 1000, .K = 1000, .mmax = 64, .ms = {1, 9, 33, 64}, .splits = 4, .h90 = 1},
        {.N = 1000, .K = 1000, .mmax = 64, .ms = {9, 64}, .bias = 1, .f32 = 1, .h90 = 1},
        {.N = 1998, .K = 520, .mmax = 64, .ms = {33}, .gated = 1, .act = KILN_ACT_SILU,
         .f32 = 1, .h90 = 1},
        {.N = 1000, .K = 520, .mmax = 64, .ms = {16, 63}, .bias = 1, .f16 = 1, .h90 = 1},
        {.N = 1998, .K = 1000, .mmax = 64, .ms = {17, 64}, .gated = 1, .act = KILN_ACT_RELU,
         .f16 = 1, .h90 = 1},
        {.N = 200, .K = 64, .mmax = 64, .ms = {1, 17, 64}, .h90 = 1},
        {.N = 37, .K = 8, .mmax = 64, .ms = {9, 64}, .bias = 1, .h90 = 1},
        {.N = 128, .K = 64, .mmax = 64, .ms = {15}, .gated = 1, .act = KILN_ACT_GELU_TANH,
         .h90 = 1},
        {.N = 256, .K = 14336, .mmax = 64, .ms = {9, 64}, .bias = 1, .h90 = 1},
        {.N = 1000, .K = 4096, .mmax = 64, .ms = {7, 64}, .splits = 1, .h90 = 1},
        {.N = 1000, .K = 4096, .mmax = 64, .ms = {1, 32, 64}, .splits = 8, .h90 = 1},
        {.N = 1998, .K = 4096, .mmax = 64, .ms = {16, 63}, .gated = 1, .act = KILN_ACT_SILU,
         .splits = 16, .h90 = 1},
        {.N = 200, .K = 512, .mmax = 64, .ms = {64}, .f32 = 1, .splits = 8, .h90 = 1},
    };
#undef M12
    for (size_t i = 0; i < sizeof c90 / sizeof c90[0]; i++)
        skinny_case(t, &c90[i]);
    for (int i = 0; i < NLLAMA; i++) {
        scase c = {.N = llama[i].N, .K = llama[i].K, .mmax = KILN_SKINNY_MAX, .ms = {16, 64},
                   .gated = llama[i].gated, .act = KILN_ACT_SILU, .h90 = 1};
        skinny_case(t, &c);
    }
    skinny_invariance(t, 1000, 1000, 0, 0, 0, 0, 64, 1);
    skinny_invariance(t, 4096, 14336, 0, 0, 0, 0, 64, 1);
    skinny_invariance(t, 16384, 2048, 1, 0, 0, 0, 64, 1);

    /* gemm_skinny_int4: the same checks with gemv_int4's weight (the reference multiplies
     * int4_value, the values the kernel's conversion must give). N = 1000 is 63 tiles, 32 tile
     * pairs (the last one tile); gated N = 1998: 125 tiles. G = 128 and 256 (the factored path:
     * a slice in one group), 32 and 64 (groups inside a slice), 96 (a slice across 2 groups), a
     * whole row of K = 544 and of 4224 (not multiples of 128: a last, partial slice). */
#define M12 {1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64}
    static const scase c4[] = {
        {.N = 1000, .K = 640, .mmax = 64, .ms = M12, .bias = 1, .g4 = 128},
        /* row groups: rows past MMAX in groups of MMAX (a partial last one) */
        {.N = 1000, .K = 640, .mmax = 64, .ms = {65, 100, 128, 200}, .bias = 1, .g4 = 128},
        {.N = 1998, .K = 1024, .mmax = 16, .ms = {17, 40, 64}, .gated = 1,
         .act = KILN_ACT_SILU, .warps = 4, .splits = 2, .g4 = 32},
        {.N = 1000, .K = 4224, .mmax = 64, .ms = {150}, .f32 = 1, .warps = 4, .splits = 4,
         .g4 = 4224},
        {.N = 1998, .K = 1024, .mmax = 64, .ms = M12, .gated = 1, .act = KILN_ACT_SILU,
         .warps = 8, .splits = 2, .g4 = 32},
        {.N = 1000, .K = 544, .mmax = 64, .ms = {1, 9, 33, 64}, .warps = 8, .splits = 4,
         .g4 = 544},
        {.N = 1000, .K = 1056, .mmax = 64, .ms = {9, 40}, .bias = 1, .g4 = 96},
        {.N = 1000, .K = 4224, .mmax = 64, .ms = {16, 64}, .f32 = 1, .g4 = 4224},
        {.N = 1000, .K = 4096, .mmax = 64, .ms = {17, 64}, .f32 = 1, .g4 = 256},
        {.N = 1000, .K = 640, .mmax = 16, .ms = {1, 9, 16}, .bias = 1, .g4 = 64},
        {.N = 1000, .K = 1024, .mmax = 32, .ms = {5, 17, 32}, .f16 = 1, .g4 = 128},
        {.N = 1998, .K = 640, .mmax = 64, .ms = {17, 64}, .gated = 1, .act = KILN_ACT_RELU,
         .f16 = 1, .g4 = 32},
        {.N = 37, .K = 64, .mmax = 64, .ms = {9, 64}, .bias = 1, .g4 = 32},
        {.N = 256, .K = 14336, .mmax = 64, .ms = {9, 64}, .bias = 1, .g4 = 128},
        {.N = 200, .K = 14336, .mmax = 64, .ms = {33}, .warps = 1, .splits = 8, .g4 = 128},
        {.N = 1000, .K = 256, .mmax = 64, .ms = {1, 33, 64}, .warps = 4, .splits = 4, .g4 = 128},
        {.N = 1000, .K = 1024, .mmax = 64, .ms = {9, 40, 64}, .bias = 1, .warps = 4,
         .splits = 2, .stages = 2, .g4 = 128},
        {.N = 1998, .K = 4096, .mmax = 64, .ms = {16, 64}, .gated = 1, .act = KILN_ACT_SILU,
         .warps = 8, .splits = 4, .stages = 3, .g4 = 128},
        /* one split (gate_up's at lower_skinny_shape's pick), many row groups (the last partial) */
        {.N = 1000, .K = 640, .mmax = 64, .ms = {9, 129, 300}, .bias = 1, .splits = 1,
         .g4 = 128},
        {.N = 1998, .K = 1024, .mmax = 64, .ms = {257}, .gated = 1, .act = KILN_ACT_SILU,
         .warps = 8, .splits = 1, .stages = 4, .g4 = 32},
        {.N = 1000, .K = 4224, .mmax = 64, .ms = {190}, .f32 = 1, .splits = 1, .g4 = 4224},
    };
#undef M12
    for (size_t i = 0; i < sizeof c4 / sizeof c4[0]; i++)
        skinny_case(t, &c4[i]);
    for (int i = 0; i < NLLAMA; i++) {
        scase c = {.N = llama[i].N, .K = llama[i].K, .mmax = KILN_SKINNY_MAX,
                   .ms = {16, 64, 128}, .gated = llama[i].gated, .act = KILN_ACT_SILU,
                   .g4 = 128};
        skinny_case(t, &c);
        scase p = c; /* one split, up to 16 row groups (a decode step of max_seqs 1000) */
        p.splits = 1;
        memcpy(p.ms, (const int[]){9, 1000}, 2 * sizeof(int));
        p.ms[2] = 0;
        skinny_case(t, &p);
    }
    skinny_invariance(t, 1000, 1024, 0, 0, 0, 128, 64, 0);
    skinny_invariance(t, 1000, 640, 0, 4, 8, 32, 200, 0);
    skinny_invariance(t, 16384, 2048, 1, 0, 0, 128, 200, 0);
    skinny_invariance(t, 4096, 4096, 0, 0, 1, 128, 200, 0);
}

/* ---------------------------------------------------------------- kiln-ktest --bench skinny */

/* One shape's buffers: x [64, K], y [64, NOUT] (skinny) and ylt [64, N] (cuBLASLt), bf16; part
 * for the most splits measured, count [TILES] (zero, and every launch leaves it so); copies of
 * the weight, cycled so that every launch reads its weight from HBM (H200's L2: 50 MB). */
typedef struct sbench {
    kgemm *lt;
    CUdeviceptr x, y, ylt, part, count, w[64], sz[64]; /* sz: INT4's, beside each weight copy */
    int copies;
} sbench;

enum { BENCH_LAUNCHES = 32, BENCH_REPLAYS = 3 };

/* Microseconds per launch: BENCH_LAUNCHES launches captured back to back in a CUDA graph,
 * launch i reading weight copy i % copies, the best of BENCH_REPLAYS replays after a warm-up.
 * k: gemm_skinny (kcuda_launch, with PDL where the runtime uses it), or NULL: cuBLASLt's plain
 * [M, N] product. -1 when a launch fails (said on stderr). */
static int bench_graph(kt *t, sbench *b, const skern *k, int M, int N, int K, double *us)
{
    kerr e;
    kerr_clear(&e);
    /* cuBLASLt's first call for a shape picks its algorithm (host work): outside the graph */
    int rc = k ? 0 : kgemm_run(b->lt, t->stream, 0, 0, 0, M, N, K, b->x, K, b->w[0], 0, b->ylt,
                               N, &e);
    CUgraph g = NULL;
    if (rc == 0)
        KT_CU(t, cuStreamBeginCapture(t->stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
    for (int i = 0; i < BENCH_LAUNCHES && rc == 0; i++) {
        CUdeviceptr w = b->w[i % b->copies], sz = b->sz[i % b->copies];
        if (k) {
            sargs a = {.M = M, .x = b->x, .w = w, .sz = sz, .y = b->y, .part = b->part,
                       .count = b->count};
            sargs_make(t, k, &a, "bench skinny");
            unsigned grid[3];
            skern_grid(k, M, grid);
            rc = kcuda_launch(&t->cu, k->f, grid[0], grid[1], grid[2], 32u * (unsigned)k->warps,
                              (unsigned)k->smem, t->stream, a.p, t->pdl, &e);
        } else {
            rc = kgemm_run(b->lt, t->stream, 0, 0, 0, M, N, K, b->x, K, w, 0, b->ylt, N, &e);
        }
        if (rc && t->cu.cuStreamEndCapture(t->stream, &g) == CUDA_SUCCESS && g)
            t->cu.cuGraphDestroy(g); /* the failed capture ends, and its graph with it */
    }
    if (rc) {
        fprintf(stderr, "bench skinny: %s\n", kerr_msg(&e));
        return -1;
    }
    KT_CU(t, cuStreamEndCapture(t->stream, &g));
    *us = kt_graph_ms(t, g, BENCH_REPLAYS) * 1e3 / BENCH_LAUNCHES;
    KT_CU(t, cuGraphDestroy(g));
    return 0;
}

/* n arrival counters on the device, zero. */
static CUdeviceptr bench_counters(kt *t, int n)
{
    unsigned *zero = xcalloc((size_t)n, sizeof(unsigned));
    CUdeviceptr d = kt_upload(t, zero, sizeof(unsigned) * (size_t)n);
    free(zero);
    return d;
}

/* 0 when the n counters at count are all zero after a shape's launches (the contract), else -1
 * with the first that is not on stderr. */
static int bench_counters_left_zero(kt *t, const char *fam, const char *shape, CUdeviceptr count,
                                    int n)
{
    unsigned *c = xmalloc(sizeof(unsigned) * (size_t)n);
    kt_download(t, c, count, sizeof(unsigned) * (size_t)n);
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++)
        if (c[i]) {
            fprintf(stderr, "bench %s: %s: count[%d] = %u after the launches (must be 0)\n", fam,
                    shape, i, c[i]);
            rc = -1;
        }
    free(c);
    return rc;
}

/* A fresh device array of n bf16 elements U[-1, 1) * scale. */
static CUdeviceptr bench_rand(kt *t, size_t n, float scale)
{
    float *f = xmalloc(sizeof(float) * n);
    kt_fill(t, f, n, scale);
    uint16_t *h = kt_to_bf16(f, n);
    CUdeviceptr d = kt_upload(t, h, 2 * n);
    free(f);
    free(h);
    return d;
}

/* The columns of the table: lower_skinny_shape's pick; 4 warps and a ring of 3 slices (two blocks
 * an SM) at its splits and at half of them; its warps and ring at half and a quarter of its
 * splits (at least 1). */
enum { BENCH_COLS = 5 };

/* Shape s's launch at lower_skinny_shape's pick: gemm_skinny (g4 0) or gemm_skinny_int4. */
static void bench_base(int s, int g4, int h90, skern *base)
{
    *base = (skern){.N = llama[s].N, .K = llama[s].K, .mmax = KILN_SKINNY_MAX,
                    .gated = llama[s].gated, .act = KILN_ACT_SILU, .g4 = g4, .h90 = h90};
    skern_shape(base);
}

/* The n columns' kernels k: base at warps cw[c], splits cs[c] and a ring of cp[c] (columns of the
 * same three share one kernel). 0, or -1 when one did not compile. */
static int bench_columns(kt *t, const skern *base, int s, int n, const int *cw, const int *cs,
                         const int *cp, skern *k)
{
    for (int c = 0; c < n; c++) {
        k[c] = *base;
        k[c].warps = cw[c];
        k[c].splits = cs[c];
        k[c].stages = cp[c];
        k[c].smem = skern_smem(&k[c]);
        k[c].f = NULL;
        for (int p = 0; p < c; p++)
            if (cw[p] == cw[c] && cs[p] == cs[c] && cp[p] == cp[c])
                k[c].f = k[p].f;
        if (k[c].f)
            continue;
        char name[160];
        snprintf(name, sizeof name, "bench %s %s warps=%d splits=%d stages=%d", skern_fam(base),
                 llama[s].name, cw[c], cs[c], cp[c]);
        if (skern_build(t, &k[c], name))
            return -1;
        KT_CU(t, cuFuncSetAttribute(k[c].f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                    k[c].smem));
    }
    return 0;
}

/* Shape s's kernels, one per column: gemm_skinny's, or on sm_90a gemm90_skinny's (its block and
 * ring fixed: lower_skinny90_splits's parts S, then 2S (S where K has not the slices), S/2, S/4
 * and 1). 0, or -1 when one did not compile. */
static int bench_kernels(kt *t, int s, skern k[BENCH_COLS])
{
    skern base;
    bench_base(s, 0, kt_sm90a(t), &base);
    const int W = base.warps, S = base.splits;
    const int P = base.stages;
    const int S2 = S / 2 ? S / 2 : 1, S4 = S / 4 ? S / 4 : 1;
    if (base.h90) {
        const int slices = (base.K + KILN_GEMM90_BK - 1) / KILN_GEMM90_BK;
        const int cw[BENCH_COLS] = {W, W, W, W, W}, cp[BENCH_COLS] = {P, P, P, P, P};
        const int cs[BENCH_COLS] = {S, 2 * S <= slices ? 2 * S : S, S2, S4, 1};
        return bench_columns(t, &base, s, BENCH_COLS, cw, cs, cp, k);
    }
    const int cw[BENCH_COLS] = {W, 4, 4, W, W}, cs[BENCH_COLS] = {S, S, S2, S2, S4};
    const int cp[BENCH_COLS] = {P, 3, 3, P, P};
    return bench_columns(t, &base, s, BENCH_COLS, cw, cs, cp, k);
}

/* One shape: its kernels, its buffers, and a row of the table per M. sum64, n64: the sum and
 * count of the ratios skinny/cuBLASLt at M = 64 of the 8B shapes. */
static int bench_shape(kt *t, sbench *b, int s, double copy_bw, double *sum64, int *n64)
{
    static const int ms[] = {16, 32, 64};
    const int N = llama[s].N, K = llama[s].K;
    skern k[BENCH_COLS];
    if (bench_kernels(t, s, k))
        return -1;
    int regs = 0; /* registers a thread of the pick */
    KT_CU(t, cuFuncGetAttribute(&regs, CU_FUNC_ATTRIBUTE_NUM_REGS, k[0].f));
    const size_t wbytes = (size_t)N * K * 2;
    b->copies = (int)((((size_t)512 << 20) + wbytes - 1) / wbytes);
    b->copies = b->copies > 64 ? 64 : b->copies < 2 ? 2 : b->copies;
    b->w[0] = bench_rand(t, (size_t)N * K, 2.0f / sqrtf((float)K));
    for (int i = 1; i < b->copies; i++) {
        KT_CU(t, cuMemAlloc(&b->w[i], wbytes));
        KT_CU(t, cuMemcpyDtoD(b->w[i], b->w[0], wbytes));
    }
    b->x = bench_rand(t, (size_t)KILN_SKINNY_MAX * K, 1.0f);
    b->y = kt_alloc(t, (size_t)KILN_SKINNY_MAX * k[0].nout * 2);
    b->ylt = kt_alloc(t, (size_t)KILN_SKINNY_MAX * N * 2);
    long long pmax = 1;
    for (int c = 0; c < BENCH_COLS; c++)
        pmax = skern_part(&k[c], KILN_SKINNY_MAX) > pmax ? skern_part(&k[c], KILN_SKINNY_MAX)
                                                          : pmax;
    b->part = kt_alloc(t, sizeof(float) * (size_t)pmax);
    b->count = bench_counters(t, k[0].units);
    int rc = 0;
    for (size_t mi = 0; mi < sizeof ms / sizeof ms[0] && rc == 0; mi++) {
        const int M = ms[mi];
        double us[BENCH_COLS] = {0}, ult = 0, diff = 0;
        rc = bench_graph(t, b, NULL, M, N, K, &ult);
        for (int c = BENCH_COLS - 1; c >= 0 && rc == 0; c--) /* the pick last: its y compared */
            if (k[c].f)
                rc = bench_graph(t, b, &k[c], M, N, K, &us[c]);
        if (rc)
            break;
        if (!llama[s].gated)
            diff = kt_rel_l2_bf16(t, b->y, b->ylt, (size_t)M * N);
#define GBS(u) ((u) > 0 ? (double)wbytes / ((u) * 1e-6) / 1e9 : 0.0)
        printf("%-10s %5d %5d %2d | %2d/%-2d %4d %5.0f %4.2f %6.1f | %5.0f %5.0f %6.0f %5.0f | "
               "%6.1f %5.0f | %5.2f | ",
               llama[s].name, N, K, M, k[0].warps, k[0].splits, regs, GBS(us[0]),
               GBS(us[0]) * 1e9 / copy_bw, us[0], GBS(us[1]), GBS(us[2]), GBS(us[3]), GBS(us[4]),
               ult, GBS(ult), ult / us[0]);
#undef GBS
        /* both round a float sum to bf16 once: about one bf16 ulp apart in a few outputs (rel
         * ~1e-3 at most); a wrong kernel differs by ~1 */
        if (llama[s].gated)
            printf("(gated: not comparable)\n");
        else
            printf("%.1e %s\n", diff, diff <= 1e-2 ? "ok" : "MISMATCH (skinny's output is wrong)");
        if (!(diff <= 1e-2))
            rc = -1;
        if (M == 64 && strncmp(llama[s].name, "8B", 2) == 0) {
            *sum64 += ult / us[0];
            (*n64)++;
        }
        fflush(stdout);
    }
    if (rc == 0)
        rc = bench_counters_left_zero(t, "skinny", llama[s].name, b->count, k[0].units);
    for (int i = 0; i < b->copies; i++)
        kt_free(t, b->w[i]);
    kt_free(t, b->x);
    kt_free(t, b->y);
    kt_free(t, b->ylt);
    kt_free(t, b->part);
    kt_free(t, b->count);
    return rc;
}

/* INT4's columns: lower_skinny_shape's pick (G 128: 4 warps, two blocks an SM); a ring of 4
 * slices; twice and half its splits; 8 warps (one block an SM) with a ring of 4 and its splits. */
enum { BENCH4_COLS = 5 };

/* gemm_skinny_int4 on shape s (G 128, MMAX 64) at M = 16, 32, 64 and 128 (two row groups), each
 * column's time in the same kind of graph as gemm_skinny's, cycling over copies of the weight and
 * its sz. One row per M: INT4 bytes (weight and sz) per second and that over the copy bandwidth at
 * the pick, the same for the other columns, and the speed against the 16-bit weight's copy (bf16
 * GB/s: N * K * 2 bytes over the pick's time). No reference here: the cases above check the values. */
static int bench_int4_shape(kt *t, sbench *b, int s, double copy_bw)
{
    static const int ms[] = {16, 32, 64, 128}; /* 128: two row groups */
    enum { MMOST = 128 };
    const int N = llama[s].N, K = llama[s].K, G = 128;
    skern base;
    bench_base(s, G, 0, &base);
    const int W = base.warps, S = base.splits, P = base.stages, S2 = S / 2 ? S / 2 : 1;
    const int cw[BENCH4_COLS] = {W, W, W, W, 8}, cs[BENCH4_COLS] = {S, S, 2 * S, S2, S};
    const int cp[BENCH4_COLS] = {P, 4, P, P, 4};
    skern k[BENCH4_COLS];
    if (bench_columns(t, &base, s, BENCH4_COLS, cw, cs, cp, k))
        return -1;
    int regs = 0;
    KT_CU(t, cuFuncGetAttribute(&regs, CU_FUNC_ATTRIBUTE_NUM_REGS, k[0].f));
    const size_t wbytes = (size_t)N * K / 2, zbytes = (size_t)N * (K / G) * 8;
    b->copies = (int)((((size_t)512 << 20) + wbytes - 1) / wbytes);
    b->copies = b->copies > 64 ? 64 : b->copies < 2 ? 2 : b->copies;
    /* nibbles uniform; every group's scale 2^-7 and zero point 8: bf16 pairs (s, s), (B+z, B+z) */
    unsigned char *hw = xmalloc(wbytes);
    for (size_t i = 0; i < wbytes; i++)
        hw[i] = (unsigned char)(int)((kt_randf(t) + 1.0f) * 128.0f);
    uint32_t *hz = xmalloc(zbytes);
    for (size_t i = 0; i < zbytes / 4; i += 2) {
        hz[i] = 0x3C003C00u;     /* bf16 2^-7, twice */
        hz[i + 1] = 0x43084308u; /* bf16 136 = 128 + 8, twice */
    }
    for (int i = 0; i < b->copies; i++) {
        b->w[i] = kt_upload(t, hw, wbytes);
        b->sz[i] = kt_upload(t, hz, zbytes);
    }
    free(hw);
    free(hz);
    b->x = bench_rand(t, (size_t)MMOST * K, 1.0f);
    b->y = kt_alloc(t, (size_t)MMOST * k[0].nout * 2);
    long long pmax = 0;
    for (int c = 0; c < BENCH4_COLS; c++)
        pmax = skern_part(&k[c], MMOST) > pmax ? skern_part(&k[c], MMOST) : pmax;
    b->part = kt_alloc(t, sizeof(float) * (size_t)(pmax ? pmax : 1));
    const int ncnt = base.units * skern_groups(&base, MMOST);
    b->count = bench_counters(t, ncnt);
    int rc = 0;
    for (size_t mi = 0; mi < sizeof ms / sizeof ms[0] && rc == 0; mi++) {
        const int M = ms[mi];
        double us[BENCH4_COLS] = {0};
        for (int c = 0; c < BENCH4_COLS && rc == 0; c++)
            rc = bench_graph(t, b, &k[c], M, N, K, &us[c]);
        if (rc)
            break;
#define GBS(u) ((u) > 0 ? (double)(wbytes + zbytes) / ((u) * 1e-6) / 1e9 : 0.0)
        printf("%-10s %5d %5d %2d | %2d/%-2d/%d %4d %5.0f %4.2f %6.1f | %5.0f %5.0f %5.0f %5.0f | "
               "%6.0f\n",
               llama[s].name, N, K, M, W, S, P, regs, GBS(us[0]), GBS(us[0]) * 1e9 / copy_bw,
               us[0], GBS(us[1]), GBS(us[2]), GBS(us[3]), GBS(us[4]),
               (double)N * K * 2 / (us[0] * 1e-6) / 1e9);
#undef GBS
        fflush(stdout);
    }
    if (rc == 0)
        rc = bench_counters_left_zero(t, "skinny_int4", llama[s].name, b->count, ncnt);
    for (int i = 0; i < b->copies; i++) {
        kt_free(t, b->w[i]);
        kt_free(t, b->sz[i]);
        b->sz[i] = 0;
    }
    kt_free(t, b->x);
    kt_free(t, b->y);
    kt_free(t, b->part);
    kt_free(t, b->count);
    return rc;
}

int ktest_skinny_bench(kt *t)
{
    sbench b;
    memset(&b, 0, sizeof b);
    if (!(b.lt = kt_cublaslt(t, "kiln-ktest --bench skinny")))
        return -1;
    smem_block_of(t);
    const double copy_bw = kt_copy_bw(t);
    printf("bench skinny: templates/gemv.cuh's gemm_skinny, bf16, no bias, MMAX %d; each time per "
           "launch in a CUDA graph of %d back-to-back launches (PDL %s) cycling over copies of "
           "the weight, the best of %d replays. W/S regs GB/s xcpy us = at lower_skinny_shape's "
           "warps/splits: registers a thread, weight bytes per second, that over the copy "
           "bandwidth %.0f GB/s, microseconds; 4/S, 4/S2 = GB/s at 4 warps and a ring of 3 slices "
           "(two blocks an SM) with its splits and half of them; S/2, S/4 = at its warps and ring "
           "with half and a quarter of its splits (at least 1); lt_us, lt_GB = cuBLASLt "
           "(kgemm_run, the plain "
           "[M, N] product) in the same kind of graph; ratio = skinny's throughput (W/S) over "
           "cuBLASLt's; diff = relative L2 of skinny's y against cuBLASLt's.\n",
           KILN_SKINNY_MAX, BENCH_LAUNCHES, t->pdl ? "on" : "off", BENCH_REPLAYS, copy_bw / 1e9);
    if (kt_sm90a(t))
        printf("bench skinny: on sm_90a the kernel is templates/gemm90.cuh's gemm90_skinny (what "
               "--gemm kiln --sm 90a compiles), W/S its block's warps (a warpgroup and the "
               "producer) and lower_skinny90_splits's parts S; the next columns: 2S, S/2, S/4 "
               "and 1 parts (the headers below are gemm_skinny's)\n");
    printf("%-10s %5s %5s %2s | %5s %4s %5s %4s %6s | %5s %5s %6s %5s | %6s %5s | %5s | %s\n",
           "shape", "N", "K", "M", "W/S", "regs", "GB/s", "xcpy", "us",
           "4/S", "4/S2", "S/2", "S/4", "lt_us", "lt_GB", "ratio", "diff");
    double sum64 = 0;
    int n64 = 0, rc = 0;
    for (int s = 0; s < NLLAMA && rc == 0; s++)
        rc = bench_shape(t, &b, s, copy_bw, &sum64, &n64);
    if (n64)
        printf("bench skinny: mean ratio skinny/cuBLASLt over the 8B shapes at M = 64: %.2f "
               "(%d shapes)%s\n",
               sum64 / n64, n64, rc ? "; FAILED (see above)" : "");
    kgemm_free(b.lt);
    return rc;
}

int ktest_skinny_int4_bench(kt *t)
{
    sbench b;
    memset(&b, 0, sizeof b);
    smem_block_of(t);
    const double copy_bw = kt_copy_bw(t);
    int rc = 0;
    printf("bench skinny_int4: gemm_skinny_int4, bf16 x, G 128, no bias, MMAX %d, as above. "
           "W/S/P = lower_skinny_shape's warps/splits/ring; GB/s = INT4 bytes (weight and sz) "
           "per second, xcpy that over the copy bandwidth; P4 = a ring of 4 slices, 2S and S/2 = "
           "twice and half the splits, 8w = 8 warps, a ring of 4 and the same splits (one block "
           "an SM), each in GB/s; bf16eq = N * K * 2 bytes over the pick's time (the 16-bit "
           "weight's rate).\n",
           KILN_SKINNY_MAX);
    printf("%-10s %5s %5s %2s | %8s %4s %5s %4s %6s | %5s %5s %5s %5s | %6s\n", "shape", "N",
           "K", "M", "W/S/P", "regs", "GB/s", "xcpy", "us", "P4", "2S", "S/2", "8w", "bf16eq");
    for (int s = 0; s < NLLAMA && rc == 0; s++)
        rc = bench_int4_shape(t, &b, s, copy_bw);
    return rc;
}
