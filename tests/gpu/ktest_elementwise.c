/* ktest_elementwise — kernel tests of templates/elementwise.cuh (see ktest.h).
 *
 * Every case instantiates one template in its own translation unit, runs it on fresh random bf16
 * inputs and compares with a CPU reference written here from compiler/ref.c's and
 * compiler/posenc.c's definitions: float math, rounded to bf16 wherever the kernel stores bf16.
 * Outputs start poisoned (NaN), so an element the kernel forgets fails.
 *
 * Tolerances (relative L2, see kt_check):
 *  - TOL_EXACT (0) for ops whose result is one IEEE operation on bf16 inputs rounded once to bf16
 *    (copies, the residual sum, add, mul, scale): kernel and reference must agree bit for bit.
 *  - TOL_BF16 for float computations stored as bf16: both sides round (almost) the same float,
 *    so a correct kernel differs only by rare one-ulp flips (rel ~1e-4); 5e-3 is about one bf16
 *    ulp (2^-8) everywhere, far below what a wrong index or formula gives.
 *  - TOL_F32 for float outputs (pool), summed in the same order as the reference.
 *
 * Steps with several sequences use a block table that is not the identity (blocks handed out
 * in shuffled order, block 0 left as scratch), lengths that are not multiples of KILN_BLOCK, and
 * a padding token with tok_slot -1 where the op writes the KV cache.
 */
#include "ktest.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/kiln_kv8.h"
#include "../../kernels/kiln_step.h"
#include "lower.h"
#include "quant.h"
#include "ref.h"
#include "../../kernels/kiln_gemm.h"

#define TOL_EXACT 0.0
#define TOL_BF16 5e-3
#define TOL_F32 1e-5

/* ---- helpers ---------------------------------------------------------------------------- */

static int rand_int(kt *t, int n)
{
    int r = (int)((kt_randf(t) + 1.0f) * 0.5f * (float)n);
    return r < 0 ? 0 : r >= n ? n - 1 : r;
}

static float bf(float x) { return util_bf16_to_f32(util_f32_to_bf16(x)); }

/* n random values in [-scale, scale) + offset, rounded to bf16 (the kernel's exact inputs). */
static float *rand_bf16(kt *t, size_t n, float scale, float offset)
{
    float *x = xmalloc(sizeof(float) * (n ? n : 1));
    kt_fill(t, x, n, scale);
    for (size_t i = 0; i < n; i++)
        x[i] += offset;
    kt_round_bf16(x, n);
    return x;
}

static CUdeviceptr up_bf16(kt *t, const float *x, size_t n)
{
    uint16_t *h = kt_to_bf16(x, n);
    CUdeviceptr d = kt_upload(t, h, sizeof(uint16_t) * n);
    free(h);
    return d;
}

static float *down_bf16(kt *t, CUdeviceptr d, size_t n)
{
    uint16_t *h = xmalloc(sizeof(uint16_t) * (n ? n : 1));
    kt_download(t, h, d, sizeof(uint16_t) * n);
    float *f = kt_from_bf16(h, n);
    free(h);
    return f;
}

static float *down_f32(kt *t, CUdeviceptr d, size_t n)
{
    float *f = xmalloc(sizeof(float) * (n ? n : 1));
    kt_download(t, f, d, sizeof(float) * n);
    return f;
}

/* kt_check, and on failure the first mismatching elements as [row, col] of `width`. */
static int check(kt *t, const char *name, const float *got, const float *want, size_t n,
                 size_t width, double tol)
{
    int ok = kt_check(t, name, got, want, n, tol);
    if (ok || t->compile_only)
        return ok;
    int shown = 0;
    for (size_t i = 0; i < n && shown < 8; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        double lim = tol == 0 ? 0 : 4e-3 * fabs(want[i]) + 1e-3;
        if (!(d <= lim)) {
            fprintf(stderr, "    %s: [%zu, %zu] got %.6g want %.6g\n", name, i / width,
                    i % width, got[i], want[i]);
            shown++;
        }
    }
    return ok;
}

/* Compiles `src` (kernel "k") and returns it; NULL in compile-only mode or when the compile
 * failed (already recorded as a failed case): *skip tells the caller to stop there. */
static CUfunction kfunc(kt *t, const char *name, const char *src, int *skip)
{
    CUmodule m = kt_module(t, name, src);
    *skip = !t->compile_only && !m;
    return kt_func(t, m, "k");
}

static unsigned grid_for(long long elems, int threads)
{
    long long per = 8LL * threads;
    return (unsigned)((elems + per - 1) / per);
}

/* ---- steps: sequences, block table, slots -------------------------------------------- */

typedef struct seqcfg {
    int n;              /* sequences */
    int past[8], nnew[8];
    int pad;            /* token index given tok_slot -1, or -1 */
    int ropelen[8];     /* st.seq_ropelen, when above the sequence's keys (0: its keys) */
} seqcfg;

typedef struct kstep {
    kiln_step st; /* device pointers: passed by value to the kernel */
    int T, n_seqs, max_blocks, num_blocks;
    int *ids, *pos, *type, *seq, *slot, *start, *kvlen, *bt, *ropelen; /* host copies */
    CUdeviceptr d[9];
} kstep;

static void step_make(kt *t, kstep *s, const seqcfg *c, int vocab)
{
    memset(s, 0, sizeof *s);
    int T = 0, need = 0, maxb = 1;
    for (int i = 0; i < c->n; i++) {
        int b = (c->past[i] + c->nnew[i] + KILN_BLOCK - 1) / KILN_BLOCK;
        T += c->nnew[i];
        need += b;
        if (b > maxb)
            maxb = b;
    }
    s->T = T;
    s->n_seqs = c->n;
    s->max_blocks = maxb;
    s->num_blocks = need + 3; /* block 0 is the scratch block; two spare blocks stay unused */
    int nb = s->num_blocks - 1, *perm = xmalloc(sizeof(int) * (size_t)nb);
    for (int i = 0; i < nb; i++)
        perm[i] = i + 1;
    for (int i = nb - 1; i > 0; i--) { /* Fisher-Yates */
        int j = rand_int(t, i + 1), x = perm[i];
        perm[i] = perm[j];
        perm[j] = x;
    }
    s->bt = xcalloc((size_t)(c->n * maxb), sizeof(int));
    int used = 0;
    for (int i = 0; i < c->n; i++)
        for (int b = 0; b < (c->past[i] + c->nnew[i] + KILN_BLOCK - 1) / KILN_BLOCK; b++)
            s->bt[i * maxb + b] = perm[used++];
    free(perm);
    size_t tn = (size_t)(T ? T : 1);
    s->ids = xmalloc(sizeof(int) * tn);
    s->pos = xmalloc(sizeof(int) * tn);
    s->type = xmalloc(sizeof(int) * tn);
    s->seq = xmalloc(sizeof(int) * tn);
    s->slot = xmalloc(sizeof(int) * tn);
    s->start = xmalloc(sizeof(int) * (size_t)(c->n + 1));
    s->kvlen = xmalloc(sizeof(int) * (size_t)c->n);
    s->ropelen = xmalloc(sizeof(int) * (size_t)c->n);
    int k = 0;
    for (int i = 0; i < c->n; i++) {
        s->start[i] = k;
        s->kvlen[i] = c->past[i] + c->nnew[i];
        s->ropelen[i] = c->ropelen[i] > s->kvlen[i] ? c->ropelen[i] : s->kvlen[i];
        for (int j = 0; j < c->nnew[i]; j++, k++) {
            int p = c->past[i] + j;
            s->ids[k] = rand_int(t, vocab);
            s->pos[k] = p;
            s->type[k] = rand_int(t, 2);
            s->seq[k] = i;
            s->slot[k] = s->bt[i * maxb + p / KILN_BLOCK] * KILN_BLOCK + p % KILN_BLOCK;
        }
    }
    s->start[c->n] = T;
    if (c->pad >= 0 && c->pad < T)
        s->slot[c->pad] = -1;
    int *arrs[9] = {s->ids,  s->pos,   s->type, s->seq,    s->slot,
                    s->start, s->kvlen, s->bt,   s->ropelen};
    size_t lens[9] = {tn, tn, tn, tn, tn, (size_t)c->n + 1, (size_t)c->n,
                      (size_t)(c->n * maxb), (size_t)c->n};
    for (int i = 0; i < 9; i++)
        s->d[i] = kt_upload(t, arrs[i], sizeof(int) * lens[i]);
    s->st.T = T;
    s->st.n_seqs = c->n;
    s->st.max_blocks = maxb;
    s->st.tok_ids = s->d[0];
    s->st.tok_pos = s->d[1];
    s->st.tok_type = s->d[2];
    s->st.tok_seq = s->d[3];
    s->st.tok_slot = s->d[4];
    s->st.seq_start = s->d[5];
    s->st.seq_kvlen = s->d[6];
    s->st.block_table = s->d[7];
    s->st.seq_ropelen = s->d[8];
}

static void step_free(kt *t, kstep *s)
{
    for (int i = 0; i < 9; i++)
        kt_free(t, s->d[i]);
    free(s->ids);
    free(s->pos);
    free(s->type);
    free(s->seq);
    free(s->slot);
    free(s->start);
    free(s->kvlen);
    free(s->ropelen);
    free(s->bt);
}

/* A single sequence of T new tokens (for ops that only look at st.T). */
static seqcfg one_seq(int T)
{
    seqcfg c = {.n = 1, .pad = -1};
    c.nnew[0] = T;
    return c;
}

/* Step shapes shared by the cases. */
static const seqcfg CFG_DECODE = {5, {0, 31, 32, 100, 70}, {1, 1, 1, 1, 1}, 2, {0}};
static const seqcfg CFG_PREFILL = {3, {0, 0, 37}, {29, 7, 28}, 30, {0}}; /* T = 64 */
static const seqcfg CFG_ONE = {1, {0}, {1}, -1, {0}};
/* one decode token: at key 100, past 20000, at key 10 (under dynamic NTK's and longrope's 64),
 * and without a cache slot */
static const seqcfg CFG_ONE_100 = {1, {99}, {1}, -1, {0}};
static const seqcfg CFG_ONE_FAR = {1, {20011}, {1}, -1, {0}};
static const seqcfg CFG_ONE_10 = {1, {9}, {1}, -1, {0}};
static const seqcfg CFG_ONE_NOSLOT = {1, {5}, {1}, 0, {0}};
static const seqcfg CFG_LONG = {2, {20011, 5}, {3, 4}, -1, {0}}; /* positions past 20000 */
static const seqcfg CFG_POOL = {4, {0, 3, 0, 0}, {5, 1, 17, 9}, -1, {0}};
/* chunks of prompts (longrope's switch and dynamic NTK's max_pos at 64 keys): the first ends at
 * 40 keys of a 100-token prompt (long; dynamic NTK: the base of 100 keys, not 40), the others'
 * prompts are 48 and 60 tokens (short; unscaled) */
static const seqcfg CFG_CHUNK = {3, {0, 32, 0}, {40, 16, 20}, -1, {100, 0, 60}};

static int cfg_T(const seqcfg *c)
{
    int T = 0;
    for (int i = 0; i < c->n; i++)
        T += c->nnew[i];
    return T;
}

/* The activations, as compiler/ref.c computes them. */
static float act_ref(int which, float x)
{
    switch (which) {
    case 0: return x / (1.0f + expf(-x));
    case 1: return 0.5f * x * (1.0f + erff(x * (float)M_SQRT1_2));
    case 2: return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    default: return x > 0 ? x : 0;
    }
}

/* ---- embed -------------------------------------------------------------------------------- */

static void t_embed(kt *t, int H, int SRC, int ACC, int THREADS, const seqcfg *c)
{
    char name[160], src[1024];
    snprintf(name, sizeof name, "elementwise/embed H=%d SRC=%d%s T=%d", H, SRC,
             ACC ? " acc" : "", cfg_T(c));
    if (!kt_want(t, name))
        return;
    snprintf(src, sizeof src,
             "#include \"elementwise.cuh\"\n"
             "extern \"C\" __global__ void __launch_bounds__(%d) k(const kiln_step st, "
             "const kiln::bf16 *table, kiln::bf16 *out)\n"
             "{ kiln::embed<kiln::bf16, %d, %d, %d, %d>(st, table, out); }\n",
             THREADS, H, SRC, ACC, THREADS);
    int skip;
    CUfunction f = kfunc(t, name, src, &skip);
    if (skip)
        return;
    const int rows = 1024; /* vocab, positions (< 1024 here) and types (2) all index this */
    kstep s;
    step_make(t, &s, c, rows);
    size_t n = (size_t)s.T * H;
    float *table = rand_bf16(t, (size_t)rows * H, 1.0f, 0.f);
    float *out0 = rand_bf16(t, n, 1.0f, 0.f);
    CUdeviceptr dt = up_bf16(t, table, (size_t)rows * H);
    CUdeviceptr dout = ACC ? up_bf16(t, out0, n) : kt_alloc(t, sizeof(uint16_t) * n);
    void *args[] = {&s.st, &dt, &dout};
    kt_launch(t, f, name, (unsigned)s.T, 1, 1, (unsigned)THREADS, 0, args);
    float *got = down_bf16(t, dout, n), *want = xmalloc(sizeof(float) * n);
    for (int i = 0; i < s.T; i++) {
        int id = SRC == 0 ? s.ids[i] : SRC == 1 ? s.pos[i] : s.type[i];
        for (int j = 0; j < H; j++)
            want[(size_t)i * H + j] = ACC ? bf(out0[(size_t)i * H + j] + table[(size_t)id * H + j])
                                          : table[(size_t)id * H + j];
    }
    check(t, name, got, want, n, (size_t)H, TOL_EXACT);
    free(table), free(out0), free(got), free(want);
    kt_free(t, dt), kt_free(t, dout);
    step_free(t, &s);
}

/* The vocabulary-split embedding of rank `rank` of `parts`: table holds rows [row0, row0 + ROWS)
 * of a full table of ROWS * parts rows, ids outside them give zeros (TOL_EXACT: copies). */
static void t_embed_part(kt *t, int H, int ROWS, int parts, int rank, int THREADS,
                         const seqcfg *c)
{
    char name[160], src[1024];
    snprintf(name, sizeof name, "elementwise/embed_part H=%d ROWS=%d rank %d of %d T=%d", H, ROWS,
             rank, parts, cfg_T(c));
    if (!kt_want(t, name))
        return;
    snprintf(src, sizeof src,
             "#include \"elementwise.cuh\"\n"
             "extern \"C\" __global__ void __launch_bounds__(%d) k(const kiln_step st, "
             "const kiln::bf16 *table, kiln::bf16 *out, int row0)\n"
             "{ kiln::embed_part<kiln::bf16, %d, %dLL, %d>(st, table, out, row0); }\n",
             THREADS, H, ROWS, THREADS);
    int skip;
    CUfunction f = kfunc(t, name, src, &skip);
    if (skip)
        return;
    kstep s;
    step_make(t, &s, c, ROWS * parts); /* ids over the full vocabulary */
    size_t n = (size_t)s.T * H;
    int row0 = rank * ROWS;
    float *full = rand_bf16(t, (size_t)ROWS * parts * H, 1.0f, 0.f);
    CUdeviceptr dt = up_bf16(t, full + (size_t)row0 * H, (size_t)ROWS * H);
    CUdeviceptr dout = kt_alloc(t, sizeof(uint16_t) * n);
    void *args[] = {&s.st, &dt, &dout, &row0};
    kt_launch(t, f, name, (unsigned)s.T, 1, 1, (unsigned)THREADS, 0, args);
    float *got = down_bf16(t, dout, n), *want = xmalloc(sizeof(float) * n);
    for (int i = 0; i < s.T; i++) {
        int id = s.ids[i], mine = id >= row0 && id < row0 + ROWS;
        for (int j = 0; j < H; j++)
            want[(size_t)i * H + j] = mine ? full[(size_t)id * H + j] : 0.f;
    }
    check(t, name, got, want, n, (size_t)H, TOL_EXACT);
    free(full), free(got), free(want);
    kt_free(t, dt), kt_free(t, dout);
    step_free(t, &s);
}

/* ---- rms_norm / layer_norm ---------------------------------------------------------------- */

/* LN = 0: rms_norm<.., UNIT_OFFSET = opt>; LN = 1: layer_norm<.., BIAS = opt>. inplace: res_out
 * is res. */
/* WR: rows of the weight (and bias), [WR, H]; row r of x uses weight row r % WR (WR = heads: a
 * weight per head, StableLM's and Cohere's q/k LayerNorms); 1 is the plain weight [H].
 * XS > 0: x is a view, the last RPT*H columns of rows of XS (k in a fused qkv row). */
static void t_norm_w(kt *t, int LN, int H, int RPT, int THREADS, int opt, int RES, int T,
                     int inplace, int WR, int XS)
{
    char name[160], src[1400];
    snprintf(name, sizeof name, "elementwise/%s H=%d RPT=%d T=%d%s%s%s%s%s",
             LN ? "layer_norm" : "rms_norm", H, RPT, T, RES ? " res" : "",
             opt ? (LN ? " bias" : " unit_offset") : "", inplace ? " inplace" : "",
             WR > 1 ? " weight per head" : "", XS ? " view" : "");
    if (!kt_want(t, name))
        return;
    if (LN)
        snprintf(src, sizeof src,
                 "#include \"elementwise.cuh\"\n"
                 "extern \"C\" __global__ void __launch_bounds__(%d) k(const kiln_step st, "
                 "const kiln::bf16 *x, const kiln::bf16 *res, const kiln::bf16 *w, "
                 "const kiln::bf16 *b, kiln::bf16 *out, kiln::bf16 *res_out, float eps)\n"
                 "{ kiln::layer_norm<kiln::bf16, %d, %d, %d, %d, %d, %d, %dLL>(st, x, res, w, b, "
                 "out, res_out, eps); }\n",
                 THREADS, H, RPT, THREADS, RES, opt, WR, XS);
    else
        snprintf(src, sizeof src,
                 "#include \"elementwise.cuh\"\n"
                 "extern \"C\" __global__ void __launch_bounds__(%d) k(const kiln_step st, "
                 "const kiln::bf16 *x, const kiln::bf16 *res, const kiln::bf16 *w, "
                 "kiln::bf16 *out, kiln::bf16 *res_out, float eps)\n"
                 "{ kiln::rms_norm<kiln::bf16, %d, %d, %d, %d, %d, %d, %dLL>(st, x, res, w, out, "
                 "res_out, eps); }\n",
                 THREADS, H, RPT, THREADS, opt, RES, WR, XS);
    int skip;
    CUfunction f = kfunc(t, name, src, &skip);
    if (skip)
        return;
    seqcfg c = one_seq(T);
    kstep s;
    step_make(t, &s, &c, 16);
    const int rows = T * RPT;
    size_t n = (size_t)rows * H;
    /* an offset on x so layer_norm's mean matters; w around 1 (UNIT_OFFSET: an offset w) */
    float *x = rand_bf16(t, n, 1.0f, LN ? 0.75f : 0.f);
    /* XS: the rows x holds, gathered from the view's columns [xcol, XS) of each token's row */
    float *xall = XS ? rand_bf16(t, (size_t)T * XS, 1.0f, LN ? 0.75f : 0.f) : NULL;
    const int xcol = XS ? XS - RPT * H : 0;
    for (int r = 0; XS && r < rows; r++)
        memcpy(x + (size_t)r * H, xall + (size_t)(r / RPT) * XS + xcol + (size_t)(r % RPT) * H,
               sizeof(float) * (size_t)H);
    float *res = rand_bf16(t, n, 1.0f, 0.f);
    const size_t wn = (size_t)WR * H;
    float *w0 = rand_bf16(t, wn, 0.5f, (!LN && opt) ? 0.f : 1.0f);
    float *b0 = rand_bf16(t, wn, 0.5f, 0.f);
    const float eps = LN ? 1e-5f : 1e-6f;
    CUdeviceptr dx = XS ? up_bf16(t, xall, (size_t)T * XS) : up_bf16(t, x, n);
    CUdeviceptr dxv = dx + sizeof(uint16_t) * (size_t)xcol, dw = up_bf16(t, w0, wn);
    CUdeviceptr db = up_bf16(t, b0, wn);
    CUdeviceptr dres = RES ? up_bf16(t, res, n) : 0;
    CUdeviceptr dro = RES ? (inplace ? dres : kt_alloc(t, sizeof(uint16_t) * n)) : 0;
    CUdeviceptr dout = kt_alloc(t, sizeof(uint16_t) * n);
    float epsv = eps;
    if (LN) {
        void *args[] = {&s.st, &dxv, &dres, &dw, &db, &dout, &dro, &epsv};
        kt_launch(t, f, name, (unsigned)rows, 1, 1, (unsigned)THREADS, 0, args);
    } else {
        void *args[] = {&s.st, &dxv, &dres, &dw, &dout, &dro, &epsv};
        kt_launch(t, f, name, (unsigned)rows, 1, 1, (unsigned)THREADS, 0, args);
    }
    float *sum = xmalloc(sizeof(float) * n), *want = xmalloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++)
        sum[i] = RES ? bf(x[i] + res[i]) : x[i];
    for (int r = 0; r < rows; r++) {
        const float *v = sum + (size_t)r * H;
        const float *w = w0 + (size_t)(r % WR) * H, *b = b0 + (size_t)(r % WR) * H;
        float *o = want + (size_t)r * H;
        if (LN) { /* op_layer_norm */
            float mean = 0, var = 0;
            for (int j = 0; j < H; j++)
                mean += v[j];
            mean /= (float)H;
            for (int j = 0; j < H; j++)
                var += (v[j] - mean) * (v[j] - mean);
            var /= (float)H;
            float inv = 1.0f / sqrtf(var + eps);
            for (int j = 0; j < H; j++)
                o[j] = bf((v[j] - mean) * inv * w[j] + (opt ? b[j] : 0.0f));
        } else { /* op_rms_norm */
            float ss = 0;
            for (int j = 0; j < H; j++)
                ss += v[j] * v[j];
            float inv = 1.0f / sqrtf(ss / (float)H + eps);
            for (int j = 0; j < H; j++)
                o[j] = bf(v[j] * inv * (opt ? 1.0f + w[j] : w[j]));
        }
    }
    float *got = down_bf16(t, dout, n);
    check(t, name, got, want, n, (size_t)H, TOL_BF16);
    if (RES) {
        char rn[200];
        snprintf(rn, sizeof rn, "%s res_out", name);
        float *gr = down_bf16(t, dro, n);
        check(t, rn, gr, sum, n, (size_t)H, TOL_EXACT);
        free(gr);
    }
    free(x), free(xall), free(res), free(w0), free(b0), free(sum), free(want), free(got);
    kt_free(t, dx), kt_free(t, dw), kt_free(t, db), kt_free(t, dout);
    if (RES) {
        kt_free(t, dres);
        if (!inplace)
            kt_free(t, dro);
    }
    step_free(t, &s);
}

static void t_norm(kt *t, int LN, int H, int RPT, int THREADS, int opt, int RES, int T, int inplace)
{
    t_norm_w(t, LN, H, RPT, THREADS, opt, RES, T, inplace, 1, 0);
}

/* ---- rope_kv -------------------------------------------------------------------------------- */

/* rows of `heads` heads of HD as rows of heads of HDP >= HD, each head's [HD, HDP) zero (what
 * rope_kv writes when HD is not a multiple of 8) */
static float *pad_heads(const float *x, int rows, int heads, int HD, int HDP)
{
    float *p = xcalloc((size_t)rows * heads * HDP, sizeof(float));
    for (int r = 0; r < rows; r++)
        for (int h = 0; h < heads; h++)
            memcpy(p + ((size_t)r * heads + h) * HDP, x + ((size_t)r * heads + h) * HD,
                   sizeof(float) * (size_t)HD);
    return p;
}

/* posenc.c default_freqs */
static void freqs_ref(double base, int dim, float *out)
{
    for (int i = 0; i < dim / 2; i++) {
        float e = (float)(2 * i) / (float)dim;
        out[i] = 1.0f / powf((float)base, e);
    }
}

/* layout 0: q, k, v are column blocks of one fused row (the three strides (NH + 2 NKV) HD);
 * layout 1: three strides: q and k buffers of their own (dense, NH HD and NKV HD: after per-head
 * q/k norms) and v a column block of a fused qkv row ((NH + 2 NKV) HD, at NH HD + NKV HD).
 * kv8 (kilnc compile --kv-dtype fp8): the caches are FP8 (kernels/kiln_kv8.h), checked in
 * t_rope_kv8_cache; q_out is checked as for the 16-bit cache. */
static void t_rope_kv8_cache(kt *t, const char *name, const kstep *s, CUdeviceptr dkc,
                             CUdeviceptr dvc, const float *wkp, const float *wvp, int NKV, int HDP);

static void t_rope(kt *t, int NH, int NKV, int HD, int ROT, int INTER, int DYN, int THREADS,
                   int layout, const seqcfg *c, const char *cname, float rscale, int kv8)
{
    char name[200], src[1600];
    snprintf(name, sizeof name, "elementwise/rope_kv NH=%d NKV=%d HD=%d ROT=%d%s%s %s %s T=%d%s%s",
             NH, NKV, HD, ROT, INTER ? " interleaved" : "",
             DYN == 1 ? " dynamic" : DYN == 2 ? " longrope" : "",
             layout ? "strided" : "fused", cname, cfg_T(c), rscale != 1.0f ? " scaled" : "",
             kv8 ? " kv8" : "");
    if (!kt_want(t, name))
        return;
    const char *ct = kv8 ? "unsigned char" : "kiln::bf16";
    snprintf(src, sizeof src,
             "#include \"elementwise.cuh\"\n"
             "extern \"C\" __global__ void __launch_bounds__(%d) k(const kiln_step st, "
             "const kiln::bf16 *q, const kiln::bf16 *k, const kiln::bf16 *v, int q_stride, "
             "int k_stride, int v_stride, kiln::bf16 *q_out, %s *k_cache, "
             "%s *v_cache, const float *inv_freq, float rope_scale, float dyn_base, "
             "float dyn_factor, int dyn_max_pos)\n"
             "{ kiln::rope_kv<kiln::bf16, %d, %d, %d, %d, %d, %d, %d%s>(st, q, k, v, q_stride, "
             "k_stride, v_stride, q_out, k_cache, v_cache, inv_freq, rope_scale, dyn_base, "
             "dyn_factor, dyn_max_pos); }\n",
             THREADS, ct, ct, NH, NKV, HD, ROT, INTER, DYN, THREADS, kv8 ? ", 1" : "");
    int skip;
    CUfunction f = kfunc(t, name, src, &skip);
    if (skip)
        return;
    kstep s;
    step_make(t, &s, c, 1000);
    const int T = s.T, QW = NH * HD, KW = NKV * HD, half = ROT / 2;
    /* q_out and the cache rows are padded to heads of HDP (HD not a multiple of 8) */
    const int HDP = (HD + 7) / 8 * 8, QWP = NH * HDP, KWP = NKV * HDP;
    const float theta = 10000.0f, factor = 2.0f;
    const int max_pos = 64;
    const int fused = QW + 2 * KW;
    const int qst = layout ? QW : fused, kst = layout ? KW : fused, vst = fused;
    /* host inputs: in the fused layout one buffer; else q and k their own, v in a fused one */
    float *bufq = rand_bf16(t, (size_t)T * qst, 1.0f, 0.f);
    float *bufk = layout ? rand_bf16(t, (size_t)T * kst, 1.0f, 0.f) : bufq;
    float *bufv = layout ? rand_bf16(t, (size_t)T * vst, 1.0f, 0.f) : bufq;
    const size_t ko = layout ? 0 : (size_t)QW, vo = (size_t)(QW + KW);
    CUdeviceptr dq = up_bf16(t, bufq, (size_t)T * qst);
    CUdeviceptr dk = layout ? up_bf16(t, bufk, (size_t)T * kst) : dq + 2 * ko;
    CUdeviceptr dvb = layout ? up_bf16(t, bufv, (size_t)T * vst) : dq, dv = dvb + 2 * vo;
    size_t crow = (size_t)s.num_blocks * KILN_BLOCK, cn = crow * KWP;
    /* the caches, poisoned (0xFF: NaN bytes and NaN scales in an FP8 cache) */
    size_t cbytes = kv8 ? (size_t)s.num_blocks * (size_t)KILN_KV8_BLOCK_BYTES(KWP, NKV)
                        : sizeof(uint16_t) * cn;
    CUdeviceptr dkc = kt_alloc(t, cbytes), dvc = kt_alloc(t, cbytes);
    CUdeviceptr dqo = kt_alloc(t, sizeof(uint16_t) * (size_t)T * QWP);
    /* longrope (DYN 2): the table is [short; long] (the default one over per-pair factors), the
     * long half and the scale long_scale (in dyn_factor) used by sequences whose seq_ropelen is
     * above max_pos: CFG_PREFILL, CFG_DECODE and CFG_CHUNK hold sequences on both sides */
    const int ntab = DYN == 2 ? ROT : half;
    const float long_scale = 1.3f;
    float *inv = xmalloc(sizeof(float) * (size_t)(ntab ? ntab : 1));
    inv[0] = 0;
    freqs_ref(theta, ROT, inv);
    for (int i = 0; DYN == 2 && i < half; i++) {
        inv[half + i] = inv[i] / (1.0f + (float)i);
        inv[i] = inv[i] / (1.0f + 0.05f * (float)i);
    }
    CUdeviceptr dinv = kt_upload(t, inv, sizeof(float) * (size_t)(ntab ? ntab : 1));
    int q_stride = qst, k_stride = kst, v_stride = vst, dmp = max_pos;
    float rs = rscale, dbase = theta, dfac = DYN == 2 ? long_scale : factor;
    void *args[] = {&s.st, &dq,  &dk,  &dv,   &q_stride, &k_stride, &v_stride,
                    &dqo,  &dkc, &dvc, &dinv, &rs,       &dbase,    &dfac,     &dmp};
    kt_launch(t, f, name, (unsigned)T, 1, 1, (unsigned)THREADS, 0, args);

    /* reference: op_rope on q and k (posenc_rope_inv_freq for the dynamic base), v copied */
    float *wq = xmalloc(sizeof(float) * (size_t)T * QW);
    float *wk = xmalloc(sizeof(float) * (size_t)T * KW), *wv = xmalloc(sizeof(float) * (size_t)T * KW);
    float *tinv = xmalloc(sizeof(float) * (size_t)(half ? half : 1));
    float *cs = xmalloc(sizeof(float) * (size_t)(half ? half : 1));
    float *sn = xmalloc(sizeof(float) * (size_t)(half ? half : 1));
    for (int tk = 0; tk < T; tk++) {
        float sc = rscale;
        if (DYN == 2) {
            int lng = s.ropelen[s.seq[tk]] > max_pos;
            memcpy(tinv, inv + (lng ? half : 0), sizeof(float) * (size_t)half);
            sc = lng ? long_scale : rscale;
        } else if (DYN) {
            /* dynamic NTK: the base of the sequence's rope length (its whole prompt while that
             * is prefilled in chunks, as HF's one forward; its keys in decode) */
            double base = theta, L = (double)s.ropelen[s.seq[tk]];
            if (L > max_pos)
                base = theta * pow((double)factor * L / (double)max_pos - ((double)factor - 1),
                                   (double)ROT / (double)(ROT - 2));
            freqs_ref(base, ROT, tinv);
        } else if (half) {
            memcpy(tinv, inv, sizeof(float) * (size_t)half);
        }
        float p = (float)s.pos[tk];
        for (int i = 0; i < half; i++) {
            float ang = p * tinv[i];
            cs[i] = cosf(ang) * sc;
            sn[i] = sinf(ang) * sc;
        }
        for (int part = 0; part < 3; part++) {
            int heads = part == 0 ? NH : NKV;
            const float *in = part == 0   ? bufq + (size_t)tk * qst
                              : part == 1 ? bufk + (size_t)tk * kst + ko
                                          : bufv + (size_t)tk * vst + vo;
            float *o = part == 0 ? wq + (size_t)tk * QW : (part == 1 ? wk : wv) + (size_t)tk * KW;
            memcpy(o, in, sizeof(float) * (size_t)heads * HD);
            if (part == 2)
                continue;
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < half; i++) {
                    int a = INTER ? 2 * i : i, b = INTER ? 2 * i + 1 : i + half;
                    const float *xh = in + h * HD;
                    /* q and the 16-bit cache store bf16; the FP8 cache rounds the float */
                    const float oa = xh[a] * cs[i] - xh[b] * sn[i];
                    const float ob = xh[b] * cs[i] + xh[a] * sn[i];
                    o[h * HD + a] = part == 1 && kv8 ? oa : bf(oa);
                    o[h * HD + b] = part == 1 && kv8 ? ob : bf(ob);
                }
        }
    }
    float *gq = down_bf16(t, dqo, (size_t)T * QWP);
    float *wqp = pad_heads(wq, T, NH, HD, HDP), *wkp = pad_heads(wk, T, NKV, HD, HDP);
    float *wvp = pad_heads(wv, T, NKV, HD, HDP);
    char cn2[240];
    snprintf(cn2, sizeof cn2, "%s q", name);
    check(t, cn2, gq, wqp, (size_t)T * QWP, (size_t)QWP, TOL_BF16);
    if (kv8) {
        t_rope_kv8_cache(t, name, &s, dkc, dvc, wkp, wvp, NKV, HDP);
        free(bufq);
        if (layout)
            free(bufk), free(bufv);
        free(inv), free(tinv), free(cs), free(sn), free(wq), free(wk), free(wv), free(gq);
        free(wqp), free(wkp), free(wvp);
        kt_free(t, dq);
        if (layout)
            kt_free(t, dk), kt_free(t, dvb);
        kt_free(t, dkc), kt_free(t, dvc), kt_free(t, dqo), kt_free(t, dinv);
        step_free(t, &s);
        return;
    }

    /* the cache: rows of tokens with a slot hold k / v; every other row stays poisoned */
    uint16_t *hk = xmalloc(sizeof(uint16_t) * cn), *hv = xmalloc(sizeof(uint16_t) * cn);
    kt_download(t, hk, dkc, sizeof(uint16_t) * cn);
    kt_download(t, hv, dvc, sizeof(uint16_t) * cn);
    char *written = xcalloc(crow, 1);
    float *gk = xmalloc(sizeof(float) * (size_t)T * KWP), *gv = xmalloc(sizeof(float) * (size_t)T * KWP);
    float *ek = xmalloc(sizeof(float) * (size_t)T * KWP), *ev = xmalloc(sizeof(float) * (size_t)T * KWP);
    size_t nw = 0;
    for (int tk = 0; tk < T; tk++) {
        if (s.slot[tk] < 0)
            continue;
        size_t r = (size_t)s.slot[tk];
        written[r] = 1;
        for (int j = 0; j < KWP; j++) {
            gk[nw * KWP + j] = util_bf16_to_f32(hk[r * KWP + j]);
            gv[nw * KWP + j] = util_bf16_to_f32(hv[r * KWP + j]);
            ek[nw * KWP + j] = wkp[(size_t)tk * KWP + j];
            ev[nw * KWP + j] = wvp[(size_t)tk * KWP + j];
        }
        nw++;
    }
    snprintf(cn2, sizeof cn2, "%s k cache", name);
    check(t, cn2, gk, ek, nw * KWP, (size_t)KWP, TOL_BF16);
    snprintf(cn2, sizeof cn2, "%s v cache", name);
    check(t, cn2, gv, ev, nw * KWP, (size_t)KWP, TOL_EXACT);
    size_t clobbered = 0, first = (size_t)-1;
    for (size_t r = 0; r < crow; r++) {
        if (written[r])
            continue;
        for (int j = 0; j < KWP; j++)
            if (hk[r * KWP + j] != 0xFFFF || hv[r * KWP + j] != 0xFFFF) {
                if (first == (size_t)-1)
                    first = r;
                clobbered++;
                break;
            }
    }
    char detail[200];
    if (clobbered)
        snprintf(detail, sizeof detail, "%zu unwritten cache rows changed (first: row %zu = block %zu row %zu)",
                 clobbered, first, first / KILN_BLOCK, first % KILN_BLOCK);
    else
        snprintf(detail, sizeof detail, "%zu rows written, %zu others untouched", nw, crow - nw);
    snprintf(cn2, sizeof cn2, "%s cache untouched", name);
    kt_result(t, cn2, t->compile_only || clobbered == 0, detail);

    free(bufq);
    if (layout)
        free(bufk), free(bufv);
    free(inv), free(tinv), free(cs), free(sn), free(wq), free(wk), free(wv), free(gq);
    free(wqp), free(wkp), free(wvp);
    free(hk), free(hv), free(written), free(gk), free(gv), free(ek), free(ev);
    kt_free(t, dq);
    if (layout)
        kt_free(t, dk), kt_free(t, dvb);
    kt_free(t, dkc), kt_free(t, dvc), kt_free(t, dqo), kt_free(t, dinv);
    step_free(t, &s);
}

/* gemv_stream_rope (templates/gemv_stream.cuh): the fused qkv linear of one token with rope_kv in
 * its epilogue, against the two kernels it replaces run on the same inputs: gemv_stream into a
 * [N] row, then rope_kv (fused layout, 128 threads) from it. Both compute the row's sums in the
 * same order and rotate with ew_detail::rope_cs's numbers: q and the k row within TOL_BF16 (a
 * contraction of the rotation into an fma may differ), v exact, every other cache row untouched.
 * One step of one token (CFG cfg: its position, rope length and slot; pad 0: no slot). wb: the
 * weight's bits, 16; 8, the FP8 weight with a scale per row, gemv_stream_rope_fp8 against
 * gemv_stream_fp8; 4, INT4 in groups of 128, gemv_stream_rope_int4 against gemv_stream_int4. */
static void t_stream_rope(kt *t, int NH, int NKV, int HD, int ROT, int INTER, int DYN, int K,
                          int bias, int wb, const seqcfg *c, const char *cname)
{
    const int N = (NH + 2 * NKV) * HD, QW = NH * HD, KW = NKV * HD;
    const int W = KILN_GEMV_STREAM_WARPS(wb), B = KILN_GEMV_STREAM_BLOCKS;
    const int D = kt_stream_depth(K, wb), SEG = lower_gemv_stream_seg(K, wb);
    const int smem = KILN_GEMV_STREAM_SMEM(W, D, SEG, K, 2, wb);
    char name[200], src[3000];
    snprintf(name, sizeof name,
             "elementwise/gemv_stream_rope NH=%d NKV=%d HD=%d ROT=%d K=%d%s%s%s%s %s", NH, NKV,
             HD, ROT, K, INTER ? " interleaved" : "",
             DYN == 1 ? " dynamic" : DYN == 2 ? " longrope" : "", bias ? " bias" : "",
             wb == 8 ? " fp8" : wb == 4 ? " int4" : "", cname);
    if (!kt_want(t, name) || (!t->compile_only && !kt_sm90a(t)))
        return;
    const char *tf = bias ? "true" : "false", *sf = wb == 8 ? "_fp8" : wb == 4 ? "_int4" : "";
    const char *wp = wb == 8   ? "const unsigned char *w, const float *scale"
                     : wb == 4 ? "const unsigned char *w, const uint2 *scale"
                               : "const kiln::bf16 *w";
    const char *wa = wb < 16 ? "w, scale" : "w";
    snprintf(src, sizeof src,
             "#include \"gemv_stream.cuh\"\n"
             "extern \"C\" __global__ void __launch_bounds__(%d) k_gs(const kiln_step st, "
             "const kiln::bf16 *x, %s, const kiln::bf16 *bias, void *y)\n"
             "{ kiln::gemv_stream%s<kiln::bf16, %d, %d, %s, false, 0, false, %d, %d, %d, %d>(st, "
             "x, nullptr, nullptr, nullptr, 0.f, %s, bias, y, 1); }\n"
             "extern \"C\" __global__ void __launch_bounds__(128) k_rk(const kiln_step st, "
             "const kiln::bf16 *q, const kiln::bf16 *k, const kiln::bf16 *v, int q_stride, "
             "int k_stride, int v_stride, kiln::bf16 *q_out, kiln::bf16 *k_cache, "
             "kiln::bf16 *v_cache, const float *inv_freq, float rope_scale, float dyn_base, "
             "float dyn_factor, int dyn_max_pos)\n"
             "{ kiln::rope_kv<kiln::bf16, %d, %d, %d, %d, %d, %d, 128>(st, q, k, v, q_stride, "
             "k_stride, v_stride, q_out, k_cache, v_cache, inv_freq, rope_scale, dyn_base, "
             "dyn_factor, dyn_max_pos); }\n"
             "extern \"C\" __global__ void __launch_bounds__(%d) k_gr(const kiln_step st, "
             "const kiln::bf16 *x, %s, const kiln::bf16 *bias, "
             "kiln::bf16 *q_out, kiln::bf16 *k_cache, kiln::bf16 *v_cache, const float *inv_freq, "
             "float rope_scale, float dyn_base, float dyn_factor, int dyn_max_pos)\n"
             "{ kiln::gemv_stream_rope%s<kiln::bf16, %d, %d, %d, %d, %d, %d, %d, %s, %d, %d, %d, "
             "%d>(st, x, nullptr, nullptr, nullptr, 0.f, %s, bias, q_out, k_cache, v_cache, "
             "inv_freq, rope_scale, dyn_base, dyn_factor, dyn_max_pos, 1); }\n",
             32 * W, wp, sf, N, K, tf, W, D, SEG, B, wa, NH, NKV, HD, ROT, INTER, DYN, 32 * W, wp,
             sf, NH, NKV, HD, ROT, INTER, DYN, K, tf, W, D, SEG, B, wa);
    CUmodule m = kt_module_sm90a(t, name, src);
    if (!m || t->compile_only)
        return;
    CUfunction fgs = kt_func(t, m, "k_gs"), frk = kt_func(t, m, "k_rk");
    CUfunction fgr = kt_func(t, m, "k_gr");
    kstep s;
    step_make(t, &s, c, 1000);
    assert(s.T == 1);
    float *x = rand_bf16(t, (size_t)K, 1.0f, 0.f), *b = rand_bf16(t, (size_t)N, 0.5f, 0.f);
    CUdeviceptr dx = up_bf16(t, x, (size_t)K), db = bias ? up_bf16(t, b, (size_t)N) : 0;
    gweights g;
    gweights_make(t, &g, N, K, 0, wb == 8 ? K : 0, 0, wb == 4 ? KILN_GEMV_STREAM_INT4_G : 0);
    const int ntab = DYN == 2 ? ROT : ROT / 2, max_pos = 64;
    float *inv = xcalloc((size_t)(ntab ? ntab : 1), sizeof(float));
    freqs_ref(10000.0, ROT, inv);
    for (int i = 0; DYN == 2 && i < ROT / 2; i++)
        inv[ROT / 2 + i] = inv[i] / (1.0f + (float)i);
    CUdeviceptr dinv = kt_upload(t, inv, sizeof(float) * (size_t)(ntab ? ntab : 1));
    const size_t crow = (size_t)s.num_blocks * KILN_BLOCK, cn = crow * (size_t)KW;
    CUdeviceptr dy = kt_alloc(t, 2 * (size_t)N), dq[2], dk[2], dv[2];
    for (int i = 0; i < 2; i++) {
        dq[i] = kt_alloc(t, 2 * (size_t)QW);
        dk[i] = kt_alloc(t, 2 * cn);
        dv[i] = kt_alloc(t, 2 * cn);
    }
    float rs = DYN == 2 ? 1.19f : 1.0f, dbase = 10000.0f, dfac = DYN == 2 ? 1.3f : 2.0f;
    int dmp = max_pos, stride = N;
    CUdeviceptr yk = dy + 2 * (size_t)QW, yv = dy + 2 * (size_t)(QW + KW);
    void *a_gs[6] = {&s.st, &dx, &g.dw, &db, &dy};
    void *a_rk[] = {&s.st, &dy,   &yk, &yv,    &stride, &stride, &stride, &dq[0],
                    &dk[0], &dv[0], &dinv, &rs, &dbase, &dfac,   &dmp};
    void *a_gr[13] = {&s.st, &dx,  &g.dw, &db,    &dq[1], &dk[1], &dv[1],
                      &dinv, &rs, &dbase, &dfac, &dmp};
    if (wb < 16) { /* the scales (INT4: the sz pairs) after w */
        memmove(&a_gs[4], &a_gs[3], 2 * sizeof(void *));
        memmove(&a_gr[4], &a_gr[3], 9 * sizeof(void *));
        a_gs[3] = a_gr[3] = &g.ds;
    }
    kt_launch(t, fgs, name, (unsigned)B, 1, 1, 32u * W, (size_t)smem, a_gs);
    kt_launch(t, frk, name, 1, 1, 1, 128, 0, a_rk);
    kt_launch(t, fgr, name, (unsigned)B, 1, 1, 32u * W, (size_t)smem, a_gr);

    char cn2[260];
    float *q0 = down_bf16(t, dq[0], (size_t)QW), *q1 = down_bf16(t, dq[1], (size_t)QW);
    snprintf(cn2, sizeof cn2, "%s q", name);
    check(t, cn2, q1, q0, (size_t)QW, (size_t)QW, TOL_BF16);
    /* the caches: the slot's row within the tolerances, every other byte the same (poison) */
    uint16_t *h[2][2];
    for (int i = 0; i < 2; i++) {
        h[i][0] = xmalloc(2 * cn);
        h[i][1] = xmalloc(2 * cn);
        kt_download(t, h[i][0], dk[i], 2 * cn);
        kt_download(t, h[i][1], dv[i], 2 * cn);
    }
    const int slot = s.slot[0];
    size_t other = 0;
    for (size_t r = 0; r < crow; r++)
        for (int j = 0; j < KW && (long long)r != slot; j++)
            other += h[0][0][r * KW + j] != h[1][0][r * KW + j] ||
                     h[0][1][r * KW + j] != h[1][1][r * KW + j];
    snprintf(cn2, sizeof cn2, "%s other cache rows", name);
    char detail[120];
    snprintf(detail, sizeof detail, "%zu elements differ outside the slot's row (slot %d)", other,
             slot);
    kt_result(t, cn2, other == 0, detail);
    if (slot >= 0) {
        float *kr[2], *vr[2];
        for (int i = 0; i < 2; i++) {
            kr[i] = xmalloc(sizeof(float) * (size_t)KW);
            vr[i] = xmalloc(sizeof(float) * (size_t)KW);
            for (int j = 0; j < KW; j++) {
                kr[i][j] = util_bf16_to_f32(h[i][0][(size_t)slot * KW + j]);
                vr[i][j] = util_bf16_to_f32(h[i][1][(size_t)slot * KW + j]);
            }
        }
        snprintf(cn2, sizeof cn2, "%s k row", name);
        check(t, cn2, kr[1], kr[0], (size_t)KW, (size_t)KW, TOL_BF16);
        snprintf(cn2, sizeof cn2, "%s v row", name);
        check(t, cn2, vr[1], vr[0], (size_t)KW, (size_t)KW, TOL_EXACT);
        for (int i = 0; i < 2; i++)
            free(kr[i]), free(vr[i]);
    }
    for (int i = 0; i < 2; i++) {
        free(h[i][0]), free(h[i][1]);
        kt_free(t, dq[i]), kt_free(t, dk[i]), kt_free(t, dv[i]);
    }
    free(x), free(b), free(inv), free(q0), free(q1);
    kt_free(t, dx), kt_free(t, db), kt_free(t, dinv), kt_free(t, dy);
    gweights_free(t, &g);
    step_free(t, &s);
}

/* rope_kv's FP8 cache: each written row's bytes and scales decoded (e4m3 * scale) against the
 * reference's float k and v rows (wkp, wvp: [T][NKV*HDP], padded) rounded per head as
 * ref_kv8_head rounds them (the kernel's rule, kernels/kiln_kv8.h). v is copied, so its bytes and
 * scales must be the reference's exactly (TOL_EXACT); k is rotated in float on both sides with
 * sin/cos from different libraries, so a value within a float ulp of an e4m3 midpoint may round
 * the other way: TOL_BF16 allows a few such flips in a case, a wrong byte order or scale fails it
 * by far. Every other row (bytes and scales) must still be poison. */
static void t_rope_kv8_cache(kt *t, const char *name, const kstep *s, CUdeviceptr dkc,
                             CUdeviceptr dvc, const float *wkp, const float *wvp, int NKV, int HDP)
{
    const int T = s->T, KWP = NKV * HDP;
    const size_t bb = (size_t)KILN_KV8_BLOCK_BYTES(KWP, NKV), sa = (size_t)KILN_KV8_SCALES_AT(KWP);
    const size_t cbytes = (size_t)s->num_blocks * bb, crow = (size_t)s->num_blocks * KILN_BLOCK;
    unsigned char *hc[2] = {xmalloc(cbytes), xmalloc(cbytes)};
    kt_download(t, hc[0], dkc, cbytes);
    kt_download(t, hc[1], dvc, cbytes);
    char *written = xcalloc(crow, 1);
    float *got[2], *want[2];
    for (int kv = 0; kv < 2; kv++) {
        got[kv] = xmalloc(sizeof(float) * (size_t)T * KWP);
        want[kv] = xmalloc(sizeof(float) * (size_t)T * KWP);
    }
    size_t nw = 0;
    for (int tk = 0; tk < T; tk++) {
        if (s->slot[tk] < 0)
            continue;
        const size_t r = (size_t)s->slot[tk], blk = r / KILN_BLOCK, row = r % KILN_BLOCK;
        written[r] = 1;
        for (int kv = 0; kv < 2; kv++) {
            const unsigned char *bytes = hc[kv] + blk * bb + row * KWP;
            const unsigned char *sc = hc[kv] + blk * bb + sa + row * NKV * 4;
            for (int h = 0; h < NKV; h++) {
                float scale;
                memcpy(&scale, sc + 4 * h, 4);
                const float *x = (kv ? wvp : wkp) + (size_t)tk * KWP + h * HDP;
                ref_kv8_head(x, HDP, NULL, want[kv] + nw * KWP + h * HDP);
                for (int d = 0; d < HDP; d++)
                    got[kv][nw * KWP + h * HDP + d] = fp8_e4m3_to_f32(bytes[h * HDP + d]) * scale;
            }
        }
        nw++;
    }
    char cn2[240];
    snprintf(cn2, sizeof cn2, "%s k cache (fp8)", name);
    check(t, cn2, got[0], want[0], nw * KWP, (size_t)KWP, TOL_BF16);
    snprintf(cn2, sizeof cn2, "%s v cache (fp8)", name);
    check(t, cn2, got[1], want[1], nw * KWP, (size_t)KWP, TOL_EXACT);
    size_t clobbered = 0, first = (size_t)-1;
    for (size_t r = 0; r < crow; r++) {
        if (written[r])
            continue;
        const size_t blk = r / KILN_BLOCK, row = r % KILN_BLOCK;
        int bad = 0;
        for (int kv = 0; kv < 2; kv++) {
            const unsigned char *bytes = hc[kv] + blk * bb + row * KWP;
            const unsigned char *sc = hc[kv] + blk * bb + sa + row * NKV * 4;
            for (int j = 0; j < KWP; j++)
                bad |= bytes[j] != 0xFF;
            for (int j = 0; j < NKV * 4; j++)
                bad |= sc[j] != 0xFF;
        }
        if (bad) {
            if (first == (size_t)-1)
                first = r;
            clobbered++;
        }
    }
    char detail[200];
    if (clobbered)
        snprintf(detail, sizeof detail,
                 "%zu unwritten cache rows or their scales changed (first: row %zu = block %zu "
                 "row %zu)",
                 clobbered, first, first / KILN_BLOCK, first % KILN_BLOCK);
    else
        snprintf(detail, sizeof detail, "%zu rows written, %zu others untouched", nw, crow - nw);
    snprintf(cn2, sizeof cn2, "%s cache untouched", name);
    kt_result(t, cn2, t->compile_only || clobbered == 0, detail);
    for (int kv = 0; kv < 2; kv++) {
        free(hc[kv]);
        free(got[kv]);
        free(want[kv]);
    }
    free(written);
}

/* ---- unpad_heads ---------------------------------------------------------------------------- */

static void t_unpad(kt *t, int NH, int HD, int THREADS, int T)
{
    const int HDP = (HD + 7) / 8 * 8;
    char name[160], src[800];
    snprintf(name, sizeof name, "elementwise/unpad_heads NH=%d HD=%d HDP=%d T=%d", NH, HD, HDP, T);
    if (!kt_want(t, name))
        return;
    snprintf(src, sizeof src,
             "#include \"elementwise.cuh\"\n"
             "extern \"C\" __global__ void __launch_bounds__(%d) k(const kiln_step st, "
             "const kiln::bf16 *x, kiln::bf16 *out)\n"
             "{ kiln::unpad_heads<kiln::bf16, %d, %d, %d, %d>(st, x, out); }\n",
             THREADS, NH, HD, HDP, THREADS);
    int skip;
    CUfunction f = kfunc(t, name, src, &skip);
    if (skip)
        return;
    seqcfg c = one_seq(T);
    kstep s;
    step_make(t, &s, &c, 16);
    size_t np = (size_t)T * NH * HDP, n = (size_t)T * NH * HD;
    float *x = rand_bf16(t, np, 1.0f, 0.f);
    CUdeviceptr dx = up_bf16(t, x, np), dout = kt_alloc(t, sizeof(uint16_t) * n);
    void *args[] = {&s.st, &dx, &dout};
    kt_launch(t, f, name, (unsigned)((n + THREADS - 1) / THREADS), 1, 1, (unsigned)THREADS, 0, args);
    float *want = xmalloc(sizeof(float) * n);
    for (int r = 0; r < T * NH; r++)
        memcpy(want + (size_t)r * HD, x + (size_t)r * HDP, sizeof(float) * (size_t)HD);
    float *got = down_bf16(t, dout, n);
    check(t, name, got, want, n, (size_t)NH * HD, TOL_EXACT);
    free(x), free(want), free(got);
    kt_free(t, dx), kt_free(t, dout);
    step_free(t, &s);
}

/* ---- act_mul, unary, binary, scale ---------------------------------------------------------- */

static void t_act_mul(kt *t, int I, int ACT, int THREADS, int T)
{
    char name[160], src[1024];
    snprintf(name, sizeof name, "elementwise/act_mul I=%d %s T=%d", I, kt_act_name(ACT), T);
    if (!kt_want(t, name))
        return;
    snprintf(src, sizeof src,
             "#include \"elementwise.cuh\"\n"
             "extern \"C\" __global__ void __launch_bounds__(%d) k(const kiln_step st, "
             "const kiln::bf16 *gu, kiln::bf16 *out)\n"
             "{ kiln::act_mul<kiln::bf16, %d, %d, %d>(st, gu, out); }\n",
             THREADS, I, ACT, THREADS);
    int skip;
    CUfunction f = kfunc(t, name, src, &skip);
    if (skip)
        return;
    seqcfg c = one_seq(T);
    kstep s;
    step_make(t, &s, &c, 16);
    size_t n = (size_t)T * I;
    float *gu = rand_bf16(t, 2 * n, 4.0f, 0.f);
    CUdeviceptr dgu = up_bf16(t, gu, 2 * n), dout = kt_alloc(t, sizeof(uint16_t) * n);
    void *args[] = {&s.st, &dgu, &dout};
    kt_launch(t, f, name, grid_for((long long)n, THREADS), 1, 1, (unsigned)THREADS, 0, args);
    float *want = xmalloc(sizeof(float) * n);
    for (int i = 0; i < T; i++)
        for (int j = 0; j < I; j++) {
            const float *row = gu + (size_t)i * 2 * I;
            want[(size_t)i * I + j] = bf(act_ref(ACT, row[j]) * row[I + j]);
        }
    float *got = down_bf16(t, dout, n);
    check(t, name, got, want, n, (size_t)I, TOL_BF16);
    free(gu), free(want), free(got);
    kt_free(t, dgu), kt_free(t, dout);
    step_free(t, &s);
}

/* kind 0: unary<ACT = arg>; 1: binary<OP = arg, BCAST>; 2: scale */
static void t_pointwise(kt *t, int kind, int W, int arg, int BCAST, int THREADS, int T)
{
    char name[160], src[1024];
    if (kind == 0)
        snprintf(name, sizeof name, "elementwise/unary W=%d %s T=%d", W, kt_act_name(arg), T);
    else if (kind == 1)
        snprintf(name, sizeof name, "elementwise/binary W=%d %s%s T=%d", W, arg ? "mul" : "add",
                 BCAST ? " bcast" : "", T);
    else
        snprintf(name, sizeof name, "elementwise/scale W=%d T=%d", W, T);
    if (!kt_want(t, name))
        return;
    if (kind == 0)
        snprintf(src, sizeof src,
                 "#include \"elementwise.cuh\"\n"
                 "extern \"C\" __global__ void __launch_bounds__(%d) k(const kiln_step st, "
                 "const kiln::bf16 *x, kiln::bf16 *out)\n"
                 "{ kiln::unary<kiln::bf16, %d, %d, %d>(st, x, out); }\n",
                 THREADS, W, arg, THREADS);
    else if (kind == 1)
        snprintf(src, sizeof src,
                 "#include \"elementwise.cuh\"\n"
                 "extern \"C\" __global__ void __launch_bounds__(%d) k(const kiln_step st, "
                 "const kiln::bf16 *a, const kiln::bf16 *b, kiln::bf16 *out)\n"
                 "{ kiln::binary<kiln::bf16, %d, %d, %d, %d>(st, a, b, out); }\n",
                 THREADS, W, arg, BCAST, THREADS);
    else
        snprintf(src, sizeof src,
                 "#include \"elementwise.cuh\"\n"
                 "extern \"C\" __global__ void __launch_bounds__(%d) k(const kiln_step st, "
                 "const kiln::bf16 *x, kiln::bf16 *out, float s)\n"
                 "{ kiln::scale<kiln::bf16, %d, %d>(st, x, out, s); }\n",
                 THREADS, W, THREADS);
    int skip;
    CUfunction f = kfunc(t, name, src, &skip);
    if (skip)
        return;
    seqcfg c = one_seq(T);
    kstep s;
    step_make(t, &s, &c, 16);
    size_t n = (size_t)T * W, nb = BCAST ? (size_t)W : n;
    float *a = rand_bf16(t, n, kind == 0 ? 4.0f : 1.0f, 0.f);
    float *b = rand_bf16(t, nb, 1.0f, 0.f);
    float sc = 0.3535534f; /* 1/sqrt(8): not a power of two, so the product rounds */
    CUdeviceptr da = up_bf16(t, a, n), db = up_bf16(t, b, nb);
    CUdeviceptr dout = kt_alloc(t, sizeof(uint16_t) * n);
    unsigned g = grid_for((long long)n, THREADS);
    if (kind == 0) {
        void *args[] = {&s.st, &da, &dout};
        kt_launch(t, f, name, g, 1, 1, (unsigned)THREADS, 0, args);
    } else if (kind == 1) {
        void *args[] = {&s.st, &da, &db, &dout};
        kt_launch(t, f, name, g, 1, 1, (unsigned)THREADS, 0, args);
    } else {
        void *args[] = {&s.st, &da, &dout, &sc};
        kt_launch(t, f, name, g, 1, 1, (unsigned)THREADS, 0, args);
    }
    float *want = xmalloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) {
        float y = b[BCAST ? i % (size_t)W : i];
        want[i] = kind == 0 ? bf(act_ref(arg, a[i]))
                  : kind == 1 ? bf(arg ? a[i] * y : a[i] + y)
                              : bf(a[i] * sc);
    }
    float *got = down_bf16(t, dout, n);
    check(t, name, got, want, n, (size_t)W, kind == 0 ? TOL_BF16 : TOL_EXACT);
    free(a), free(b), free(want), free(got);
    kt_free(t, da), kt_free(t, db), kt_free(t, dout);
    step_free(t, &s);
}

/* ---- gather_last, pool -------------------------------------------------------------------- */

static void t_gather_last(kt *t, int H, int THREADS, const seqcfg *c, const char *cname)
{
    char name[160], src[1024];
    snprintf(name, sizeof name, "elementwise/gather_last H=%d %s seqs=%d", H, cname, c->n);
    if (!kt_want(t, name))
        return;
    snprintf(src, sizeof src,
             "#include \"elementwise.cuh\"\n"
             "extern \"C\" __global__ void __launch_bounds__(%d) k(const kiln_step st, "
             "const kiln::bf16 *x, kiln::bf16 *out)\n"
             "{ kiln::gather_last<kiln::bf16, %d, %d>(st, x, out); }\n",
             THREADS, H, THREADS);
    int skip;
    CUfunction f = kfunc(t, name, src, &skip);
    if (skip)
        return;
    kstep s;
    step_make(t, &s, c, 16);
    size_t n = (size_t)s.T * H, no = (size_t)s.n_seqs * H;
    float *x = rand_bf16(t, n, 1.0f, 0.f);
    CUdeviceptr dx = up_bf16(t, x, n), dout = kt_alloc(t, sizeof(uint16_t) * no);
    void *args[] = {&s.st, &dx, &dout};
    kt_launch(t, f, name, (unsigned)s.n_seqs, 1, 1, (unsigned)THREADS, 0, args);
    float *want = xmalloc(sizeof(float) * no);
    for (int q = 0; q < s.n_seqs; q++)
        memcpy(want + (size_t)q * H, x + (size_t)(s.start[q + 1] - 1) * H, sizeof(float) * H);
    float *got = down_bf16(t, dout, no);
    check(t, name, got, want, no, (size_t)H, TOL_EXACT);
    free(x), free(want), free(got);
    kt_free(t, dx), kt_free(t, dout);
    step_free(t, &s);
}

static void t_pool(kt *t, int H, int MODE, int NORM, int THREADS, const seqcfg *c)
{
    static const char *mn[] = {"mean", "first", "last"};
    char name[160], src[1024];
    snprintf(name, sizeof name, "elementwise/pool H=%d %s%s seqs=%d T=%d", H, mn[MODE],
             NORM ? " normalize" : "", c->n, cfg_T(c));
    if (!kt_want(t, name))
        return;
    snprintf(src, sizeof src,
             "#include \"elementwise.cuh\"\n"
             "extern \"C\" __global__ void __launch_bounds__(%d) k(const kiln_step st, "
             "const kiln::bf16 *x, float *out)\n"
             "{ kiln::pool<kiln::bf16, %d, %d, %d, %d>(st, x, out); }\n",
             THREADS, H, MODE, NORM, THREADS);
    int skip;
    CUfunction f = kfunc(t, name, src, &skip);
    if (skip)
        return;
    kstep s;
    step_make(t, &s, c, 16);
    size_t n = (size_t)s.T * H, no = (size_t)s.n_seqs * H;
    float *x = rand_bf16(t, n, 1.0f, 0.25f);
    CUdeviceptr dx = up_bf16(t, x, n), dout = kt_alloc(t, sizeof(float) * no);
    void *args[] = {&s.st, &dx, &dout};
    kt_launch(t, f, name, (unsigned)s.n_seqs, 1, 1, (unsigned)THREADS, 0, args);
    float *want = xcalloc(no, sizeof(float));
    for (int q = 0; q < s.n_seqs; q++) { /* op_pool */
        float *o = want + (size_t)q * H;
        int lo = s.start[q], hi = s.start[q + 1];
        if (MODE == 0) {
            for (int r = lo; r < hi; r++)
                for (int j = 0; j < H; j++)
                    o[j] += x[(size_t)r * H + j];
            for (int j = 0; j < H; j++)
                o[j] /= (float)(hi - lo);
        } else {
            memcpy(o, x + (size_t)(MODE == 1 ? lo : hi - 1) * H, sizeof(float) * H);
        }
        if (NORM) {
            float ss = 0;
            for (int j = 0; j < H; j++)
                ss += o[j] * o[j];
            float nrm = sqrtf(ss);
            if (nrm < 1e-12f)
                nrm = 1e-12f;
            for (int j = 0; j < H; j++)
                o[j] /= nrm;
        }
    }
    float *got = down_f32(t, dout, no);
    check(t, name, got, want, no, (size_t)H, TOL_F32);
    free(x), free(want), free(got);
    kt_free(t, dx), kt_free(t, dout);
    step_free(t, &s);
}

/* The classify head on pooled rows (compiler/ref.c op_score): optional tanh(dense) pooler, then
 * the [L, H] linear with optional bias; float in, float out. */
static void t_score(kt *t, int H, int L, int DENSE, int BIAS, int THREADS, const seqcfg *c)
{
    char name[160], src[1024];
    snprintf(name, sizeof name, "elementwise/score H=%d labels=%d%s%s seqs=%d", H, L,
             DENSE ? " pooler" : "", BIAS ? " bias" : "", c->n);
    if (!kt_want(t, name))
        return;
    snprintf(src, sizeof src,
             "#include \"elementwise.cuh\"\n"
             "extern \"C\" __global__ void __launch_bounds__(%d) k(const kiln_step st, "
             "const float *pooled, const kiln::bf16 *dw, const kiln::bf16 *db, "
             "const kiln::bf16 *w, const kiln::bf16 *b, float *tmp, float *out)\n"
             "{ kiln::score<kiln::bf16, %d, %d, %d, %d, %d>(st, pooled, dw, db, w, b, tmp, out); }\n",
             THREADS, H, L, DENSE, BIAS, THREADS);
    int skip;
    CUfunction f = kfunc(t, name, src, &skip);
    if (skip)
        return;
    kstep s;
    step_make(t, &s, c, 16);
    size_t S = (size_t)s.n_seqs, np = S * H;
    float *p = xmalloc(sizeof(float) * np);
    kt_fill(t, p, np, 1.0f);
    float *dw = rand_bf16(t, (size_t)H * H, 1.0f / sqrtf((float)H), 0.f);
    float *db = rand_bf16(t, (size_t)H, 0.2f, 0.f);
    float *w = rand_bf16(t, (size_t)L * H, 1.0f / sqrtf((float)H), 0.f);
    float *b = rand_bf16(t, (size_t)L, 0.2f, 0.f);
    CUdeviceptr dp = kt_upload(t, p, sizeof(float) * np), ddw = 0, ddb = 0, dbias = 0;
    if (DENSE)
        ddw = up_bf16(t, dw, (size_t)H * H), ddb = up_bf16(t, db, (size_t)H);
    if (BIAS)
        dbias = up_bf16(t, b, (size_t)L);
    CUdeviceptr dwt = up_bf16(t, w, (size_t)L * H), dtmp = kt_alloc(t, sizeof(float) * np);
    CUdeviceptr dout = kt_alloc(t, sizeof(float) * S * L);
    void *args[] = {&s.st, &dp, &ddw, &ddb, &dwt, &dbias, &dtmp, &dout};
    kt_launch(t, f, name, (unsigned)s.n_seqs, 1, 1, (unsigned)THREADS, 0, args);
    float *want = xmalloc(sizeof(float) * S * L), *h = xmalloc(sizeof(float) * H);
    for (size_t q = 0; q < S; q++) { /* op_score */
        const float *pq = p + q * H;
        if (DENSE) {
            for (int j = 0; j < H; j++) {
                float acc = 0;
                for (int k = 0; k < H; k++)
                    acc += dw[(size_t)j * H + k] * pq[k];
                h[j] = tanhf(acc + db[j]);
            }
            pq = h;
        }
        for (int j = 0; j < L; j++) {
            float acc = 0;
            for (int k = 0; k < H; k++)
                acc += w[(size_t)j * H + k] * pq[k];
            want[q * L + j] = acc + (BIAS ? b[j] : 0.f);
        }
    }
    float *got = down_f32(t, dout, S * L);
    check(t, name, got, want, S * L, (size_t)L, TOL_F32);
    free(p), free(dw), free(db), free(w), free(b), free(want), free(h), free(got);
    kt_free(t, dp), kt_free(t, dwt), kt_free(t, dtmp), kt_free(t, dout);
    if (DENSE)
        kt_free(t, ddw), kt_free(t, ddb);
    if (BIAS)
        kt_free(t, dbias);
    step_free(t, &s);
}

/* The ranks' all-gathered logits blocks ([TP][M][N], rank-major) into rows of N * TP: float
 * copies (TOL_EXACT). */
static void t_gather_ranks(kt *t, int N, int TP, int M, int THREADS)
{
    char name[160], src[1024];
    snprintf(name, sizeof name, "elementwise/gather_ranks N=%d TP=%d M=%d", N, TP, M);
    if (!kt_want(t, name))
        return;
    snprintf(src, sizeof src,
             "#include \"elementwise.cuh\"\n"
             "extern \"C\" __global__ void __launch_bounds__(%d) k(const kiln_step st, "
             "const float *parts, float *logits, int M)\n"
             "{ kiln::gather_ranks<%d, %d, %d>(st, parts, logits, M); }\n",
             THREADS, N, TP, THREADS);
    int skip;
    CUfunction f = kfunc(t, name, src, &skip);
    if (skip)
        return;
    kstep s;
    step_make(t, &s, &CFG_ONE, 16);
    size_t n = (size_t)TP * M * N;
    float *parts = xmalloc(sizeof(float) * n), *want = xmalloc(sizeof(float) * n);
    kt_fill(t, parts, n, 10.0f);
    CUdeviceptr dp = kt_upload(t, parts, sizeof(float) * n), dl = kt_alloc(t, sizeof(float) * n);
    void *args[] = {&s.st, &dp, &dl, &M};
    kt_launch(t, f, name, (unsigned)M, (unsigned)TP,
              (unsigned)((N + 8 * THREADS - 1) / (8 * THREADS)), (unsigned)THREADS, 0, args);
    for (int r = 0; r < TP; r++)
        for (int m = 0; m < M; m++)
            memcpy(want + ((size_t)m * TP + r) * N, parts + ((size_t)r * M + m) * N,
                   sizeof(float) * N);
    float *got = down_f32(t, dl, n);
    check(t, name, got, want, n, (size_t)N * TP, TOL_EXACT);
    free(parts), free(want), free(got);
    kt_free(t, dp), kt_free(t, dl);
    step_free(t, &s);
}

/* The LM head's bias and final soft cap on float logits [M, N], in place: v = l + bias (bf16),
 * then cap * tanh(v / cap), against double math (TOL_F32: the kernel's tanh from one exp is
 * ~1e-7 absolute; an element left as it was differs by the bias or the cap). */
static void t_logits_epilogue(kt *t, int N, int M, int BIAS, float cap, int THREADS)
{
    char name[160], src[1024];
    snprintf(name, sizeof name, "elementwise/logits_epilogue N=%d M=%d%s%s", N, M,
             BIAS ? " bias" : "", cap > 0 ? " softcap" : "");
    if (!kt_want(t, name))
        return;
    snprintf(src, sizeof src,
             "#include \"elementwise.cuh\"\n"
             "extern \"C\" __global__ void __launch_bounds__(%d) k(const kiln_step st, "
             "float *logits, const kiln::bf16 *bias, float cap, int M)\n"
             "{ kiln::logits_epilogue<kiln::bf16, %d, %d, %d, %d>(st, logits, bias, cap, M); }\n",
             THREADS, N, BIAS, cap > 0, THREADS);
    int skip;
    CUfunction f = kfunc(t, name, src, &skip);
    if (skip)
        return;
    kstep s;
    step_make(t, &s, &CFG_ONE, 16);
    size_t n = (size_t)M * N;
    float *lg = xmalloc(sizeof(float) * n), *want = xmalloc(sizeof(float) * n);
    kt_fill(t, lg, n, 40.0f); /* beyond a cap of 30 */
    float *bias = rand_bf16(t, (size_t)N, 2.0f, 0.0f);
    for (size_t i = 0; i < n; i++) {
        double v = (double)lg[i] + (BIAS ? bias[i % (size_t)N] : 0.0);
        want[i] = (float)(cap > 0 ? cap * tanh(v / cap) : v);
    }
    CUdeviceptr dl = kt_upload(t, lg, sizeof(float) * n);
    CUdeviceptr db = BIAS ? up_bf16(t, bias, (size_t)N) : 0;
    void *args[] = {&s.st, &dl, &db, &cap, &M};
    kt_launch(t, f, name, (unsigned)M, (unsigned)((N + 8 * THREADS - 1) / (8 * THREADS)), 1,
              (unsigned)THREADS, 0, args);
    float *got = down_f32(t, dl, n);
    check(t, name, got, want, n, (size_t)N, TOL_F32);
    free(lg), free(want), free(bias), free(got);
    kt_free(t, dl);
    if (BIAS)
        kt_free(t, db);
    step_free(t, &s);
}

/* ---- the cases ---------------------------------------------------------------------------- */

void ktest_elementwise(kt *t)
{
    /* embed: token ids / positions / token types, plain and accumulating */
    t_embed(t, 64, 0, 0, 32, &CFG_ONE);
    t_embed(t, 4096, 0, 0, 256, &CFG_PREFILL);
    t_embed(t, 4096, 1, 1, 256, &CFG_DECODE);
    t_embed(t, 768, 2, 1, 128, &CFG_PREFILL);
    /* vocabulary-split (tensor parallel): (H, ROWS, parts, rank, THREADS) */
    t_embed_part(t, 64, 256, 4, 0, 32, &CFG_PREFILL);
    t_embed_part(t, 4096, 256, 4, 2, 256, &CFG_PREFILL);
    t_embed_part(t, 4096, 512, 2, 1, 256, &CFG_DECODE);

    /* rms_norm: (H, RPT, THREADS, UNIT_OFFSET, RESIDUAL, T, inplace) */
    t_norm(t, 0, 64, 1, 32, 0, 0, 7, 0);
    t_norm(t, 0, 128, 4, 32, 0, 0, 7, 0);     /* per-head norm: 4 heads of 128 per token */
    t_norm(t, 0, 128, 8, 64, 1, 0, 1, 0);     /* more threads than chunks */
    t_norm(t, 0, 4096, 1, 128, 0, 1, 1, 0);
    t_norm(t, 0, 4096, 1, 128, 0, 1, 64, 1);  /* in-place residual update */
    t_norm(t, 0, 4096, 1, 256, 1, 1, 7, 0);   /* Gemma: 1 + w */
    t_norm(t, 0, 8192, 1, 512, 0, 1, 3, 1);
    t_norm(t, 0, 2304, 1, 128, 1, 0, 7, 0);   /* 288 chunks: a partial last round */

    /* a weight per head, x a view: (LN, H, RPT, THREADS, BIAS or UNIT_OFFSET, RESIDUAL, T,
     * inplace, WR, XS) */
    t_norm_w(t, 1, 16, 4, 32, 0, 0, 7, 0, 4, 0);     /* StableLM's q_layernorm, 4 heads of 16 */
    t_norm_w(t, 1, 128, 8, 32, 1, 0, 5, 0, 8, 0);    /* Command R+'s q_norm, with a bias */
    t_norm_w(t, 0, 128, 8, 64, 1, 0, 3, 0, 8, 0);    /* rms_norm, unit offset */
    t_norm_w(t, 0, 128, 8, 32, 0, 0, 9, 0, 1, 6144); /* Qwen3-8B's k_norm on the qkv row */
    t_norm_w(t, 0, 256, 8, 64, 1, 0, 5, 0, 1, 8192); /* Gemma-3 shape, unit offset */
    t_norm_w(t, 1, 16, 2, 32, 0, 0, 7, 0, 2, 128);   /* StableLM-like k view, weight per head */
    t_norm_w(t, 0, 64, 1, 32, 0, 0, 7, 0, 1, 128);   /* OLMo2: the whole k width */

    /* layer_norm: (H, RPT, THREADS, BIAS, RESIDUAL, T, inplace) */
    t_norm(t, 1, 64, 1, 32, 1, 0, 7, 0);
    t_norm(t, 1, 768, 1, 128, 1, 1, 64, 0);
    t_norm(t, 1, 768, 1, 128, 1, 1, 7, 1);
    t_norm(t, 1, 4096, 1, 256, 0, 1, 1, 0);
    t_norm(t, 1, 128, 4, 32, 0, 0, 7, 0);

    /* rope_kv: (NH, NKV, HD, ROT, INTERLEAVED, DYNAMIC, THREADS, layout, step, scale) */
    t_rope(t, 4, 2, 64, 64, 0, 0, 128, 0, &CFG_PREFILL, "prefill", 1.0f, 0);
    t_rope(t, 4, 2, 64, 64, 0, 0, 128, 0, &CFG_DECODE, "decode", 1.0f, 0);
    t_rope(t, 4, 2, 64, 64, 0, 0, 128, 16, &CFG_ONE, "one", 1.0f, 0);
    t_rope(t, 32, 8, 128, 128, 0, 0, 256, 0, &CFG_DECODE, "decode", 1.0f, 0);   /* Llama-3-8B */
    t_rope(t, 32, 8, 128, 128, 0, 0, 256, 0, &CFG_LONG, "long", 1.0f, 0);
    t_rope(t, 8, 8, 128, 128, 0, 0, 128, 1, &CFG_PREFILL, "prefill", 1.0f, 0);  /* MHA, strided */
    t_rope(t, 32, 8, 128, 128, 0, 0, 256, 1, &CFG_PREFILL, "prefill", 1.0f, 0); /* Qwen3-8B: q/k normed */
    t_rope(t, 16, 8, 256, 256, 0, 0, 256, 1, &CFG_DECODE, "decode", 1.0f, 0);   /* Gemma-3 shape */
    t_rope(t, 8, 2, 128, 64, 1, 0, 128, 0, &CFG_PREFILL, "prefill", 1.0f, 0);   /* GPT-J style */
    t_rope(t, 4, 4, 64, 16, 0, 0, 64, 1, &CFG_DECODE, "decode", 1.0f, 0);      /* partial (NeoX) */
    t_rope(t, 4, 4, 80, 20, 0, 0, 64, 1, &CFG_PREFILL, "prefill", 1.0f, 0);    /* ROT/2 = 10 */
    t_rope(t, 4, 2, 80, 20, 1, 0, 64, 0, &CFG_DECODE, "decode", 1.0f, 0);      /* straddles a chunk */
    t_rope(t, 4, 2, 64, 64, 0, 1, 128, 0, &CFG_PREFILL, "prefill", 1.0f, 0);
    t_rope(t, 4, 2, 64, 64, 0, 1, 128, 0, &CFG_DECODE, "decode", 1.0f, 0);
    t_rope(t, 8, 4, 128, 128, 0, 1, 128, 0, &CFG_LONG, "long", 1.0f, 0);
    t_rope(t, 4, 2, 64, 64, 0, 1, 128, 0, &CFG_CHUNK, "chunk", 1.0f, 0);  /* base of the whole prompt */
    t_rope(t, 32, 8, 128, 128, 0, 1, 256, 1, &CFG_CHUNK, "chunk", 1.0f, 0);
    t_rope(t, 4, 2, 64, 64, 0, 0, 128, 0, &CFG_PREFILL, "prefill", 1.25f, 0);  /* yarn factor */
    t_rope(t, 4, 2, 64, 0, 0, 0, 128, 0, &CFG_PREFILL, "prefill", 1.0f, 0);    /* no rotation */
    t_rope(t, 4, 2, 64, 64, 0, 2, 128, 0, &CFG_PREFILL, "prefill", 1.19f, 0);  /* longrope */
    t_rope(t, 4, 2, 64, 64, 0, 2, 128, 1, &CFG_DECODE, "decode", 1.19f, 0);
    t_rope(t, 32, 32, 96, 96, 0, 2, 256, 0, &CFG_DECODE, "decode", 1.19f, 0);  /* Phi-3-mini-128k */
    t_rope(t, 4, 2, 64, 64, 0, 2, 128, 0, &CFG_CHUNK, "chunk", 1.19f, 0);    /* long from its 1st chunk */
    t_rope(t, 32, 32, 96, 96, 0, 2, 256, 1, &CFG_CHUNK, "chunk", 1.19f, 0);
    /* gemv_stream_rope (NH, NKV, HD, ROT, INTERLEAVED, DYNAMIC, K, bias): Llama-3-8B, Qwen2-7B
     * (bias), GPT-J style and NeoX partial rotary, dynamic NTK and longrope on both sides of
     * their switch, no rotation, no slot */
    t_stream_rope(t, 32, 8, 128, 128, 0, 0, 4096, 0, 16, &CFG_ONE_100, "key 100");
    t_stream_rope(t, 32, 8, 128, 128, 0, 0, 4096, 0, 16, &CFG_ONE_FAR, "key 20012");
    t_stream_rope(t, 28, 4, 128, 128, 0, 0, 3584, 1, 16, &CFG_ONE_100, "key 100");
    t_stream_rope(t, 8, 2, 128, 64, 1, 0, 1024, 0, 16, &CFG_ONE_100, "key 100");
    t_stream_rope(t, 4, 4, 80, 32, 0, 0, 640, 1, 16, &CFG_ONE_100, "key 100");
    t_stream_rope(t, 4, 2, 64, 64, 0, 1, 512, 0, 16, &CFG_ONE_100, "key 100");
    t_stream_rope(t, 4, 2, 64, 64, 0, 1, 512, 0, 16, &CFG_ONE_10, "key 10");
    t_stream_rope(t, 32, 32, 96, 96, 0, 2, 3072, 0, 16, &CFG_ONE_100, "key 100");
    t_stream_rope(t, 4, 2, 64, 64, 0, 2, 512, 0, 16, &CFG_ONE_10, "key 10");
    t_stream_rope(t, 4, 2, 64, 0, 0, 0, 512, 0, 16, &CFG_ONE_100, "key 100");
    t_stream_rope(t, 32, 8, 128, 128, 0, 0, 4096, 0, 16, &CFG_ONE_NOSLOT, "no slot");
    t_stream_rope(t, 32, 8, 128, 128, 0, 0, 4096, 0, 8, &CFG_ONE_100, "key 100");
    t_stream_rope(t, 28, 4, 128, 128, 0, 0, 3584, 1, 8, &CFG_ONE_100, "key 100");
    t_stream_rope(t, 4, 4, 80, 32, 0, 0, 640, 1, 8, &CFG_ONE_100, "key 100");
    t_stream_rope(t, 32, 8, 128, 128, 0, 0, 4096, 0, 4, &CFG_ONE_100, "key 100");
    t_stream_rope(t, 28, 4, 128, 128, 0, 0, 3584, 1, 4, &CFG_ONE_100, "key 100");
    t_stream_rope(t, 4, 2, 64, 64, 0, 1, 512, 0, 4, &CFG_ONE_10, "key 10");
    /* the FP8 cache (kv8): Llama-3-8B's heads, GQA prefill with its padding token, longrope,
     * no rotation (v-like k), partial interleaved, head dims 256 and 20 (padded to 24) */
    t_rope(t, 32, 8, 128, 128, 0, 0, 256, 0, &CFG_DECODE, "decode", 1.0f, 1);
    t_rope(t, 4, 2, 64, 64, 0, 0, 128, 0, &CFG_PREFILL, "prefill", 1.0f, 1);
    t_rope(t, 8, 8, 128, 128, 0, 0, 128, 1, &CFG_PREFILL, "prefill", 1.0f, 1);
    t_rope(t, 4, 2, 64, 64, 0, 2, 128, 0, &CFG_CHUNK, "chunk", 1.19f, 1);
    t_rope(t, 4, 2, 64, 0, 0, 0, 128, 0, &CFG_PREFILL, "prefill", 1.0f, 1);
    t_rope(t, 8, 2, 128, 64, 1, 0, 128, 0, &CFG_LONG, "long", 1.0f, 1);
    t_rope(t, 16, 8, 256, 256, 0, 0, 256, 1, &CFG_DECODE, "decode", 1.0f, 1);
    t_rope(t, 4, 2, 20, 20, 0, 0, 64, 0, &CFG_PREFILL, "prefill", 1.0f, 1);
    /* head_dim not a multiple of 8: q and the cache padded to 24 (or 40), element loads */
    t_rope(t, 4, 2, 20, 20, 0, 0, 64, 0, &CFG_PREFILL, "prefill", 1.0f, 0);    /* llama_hd20 */
    t_rope(t, 4, 2, 20, 20, 0, 0, 64, 1, &CFG_DECODE, "decode", 1.0f, 0);
    t_rope(t, 8, 1, 36, 36, 1, 0, 128, 0, &CFG_LONG, "long", 1.0f, 0);        /* interleaved, MQA */
    t_rope(t, 4, 4, 36, 8, 0, 0, 64, 1, &CFG_PREFILL, "prefill", 1.0f, 0);    /* partial */
    /* unpad_heads: (NH, HD, THREADS, T) */
    t_unpad(t, 4, 20, 256, 7);
    t_unpad(t, 32, 36, 256, 65);

    /* act_mul: (I, ACT, THREADS, T) */
    t_act_mul(t, 64, 0, 128, 7);
    t_act_mul(t, 11008, 0, 256, 3);
    t_act_mul(t, 256, 1, 128, 64);
    t_act_mul(t, 1024, 2, 256, 7);
    t_act_mul(t, 512, 3, 128, 1);

    /* unary / binary / scale: (kind, W, ACT or OP, BCAST, THREADS, T) */
    for (int a = 0; a < 4; a++)
        t_pointwise(t, 0, 64, a, 0, 128, 7);
    t_pointwise(t, 0, 4096, 1, 0, 256, 3);
    t_pointwise(t, 1, 64, 0, 0, 128, 7);
    t_pointwise(t, 1, 4096, 1, 0, 256, 5);
    t_pointwise(t, 1, 768, 0, 1, 128, 64);
    t_pointwise(t, 1, 128, 1, 1, 128, 7);
    t_pointwise(t, 2, 64, 0, 0, 128, 1);
    t_pointwise(t, 2, 4096, 0, 0, 256, 7);

    /* gather_last and pool over sequences of 5, 1, 17 and 9 tokens */
    t_gather_last(t, 64, 32, &CFG_POOL, "pool");
    t_gather_last(t, 4096, 256, &CFG_PREFILL, "prefill");
    t_gather_last(t, 4096, 256, &CFG_ONE, "one");
    /* the logits' all-gather reordered: (N, TP, M, THREADS) */
    t_gather_ranks(t, 100, 4, 5, 256);   /* N not a multiple of 8 or of the threads */
    t_gather_ranks(t, 64128, 2, 16, 256); /* 128256 / 2: Llama-3's vocabulary at TP 2, decode */
    t_gather_ranks(t, 16032, 8, 1, 256); /* at TP 8, batch 1 */
    /* the LM head's bias and final soft cap: (N, M, BIAS, cap, THREADS) */
    t_logits_epilogue(t, 100, 5, 1, 0.0f, 256);      /* N not a multiple of 8 or of the threads */
    t_logits_epilogue(t, 50400, 1, 1, 0.0f, 256);    /* GPT-J's head, decode of one */
    t_logits_epilogue(t, 25200, 16, 1, 30.0f, 256);  /* a rank's half, bias and cap */
    t_logits_epilogue(t, 256000, 3, 0, 30.0f, 256);  /* Gemma 2's vocabulary and cap */
    t_pool(t, 64, 0, 0, 32, &CFG_POOL);
    t_pool(t, 384, 0, 1, 64, &CFG_POOL);
    t_pool(t, 768, 1, 1, 128, &CFG_POOL);
    t_pool(t, 768, 2, 0, 128, &CFG_POOL);
    t_pool(t, 4096, 0, 1, 256, &CFG_PREFILL);
    /* the classify head: (H, labels, pooler, bias, THREADS) */
    t_score(t, 32, 3, 0, 0, 256, &CFG_POOL);     /* qwen2_cls's */
    t_score(t, 32, 4, 1, 1, 256, &CFG_POOL);     /* bert_cls's */
    t_score(t, 768, 2, 1, 1, 256, &CFG_POOL);    /* BERT-base's, more rows than warps */
    t_score(t, 3584, 5, 0, 0, 256, &CFG_PREFILL); /* Qwen2-7B's width */
}
