/* ktest_attention — kernel tests of templates/attention.cuh (see ktest.h).
 *
 * Each case builds a step of several sequences (rows of each = its last positions, so a
 * sequence with kvlen > rows is a chunked prefill with earlier keys already cached), a paged
 * K/V cache with a SHUFFLED block table, and random q/k/v rounded through the storage type.
 * Every cache row that is not a key of some sequence (rows past kvlen in a last block, the
 * scratch block 0, spare blocks, which unused block-table columns point at) is NaN, so a kernel
 * that reads past kvlen or through a wrong block-table entry produces NaN and fails.
 *
 * The reference is op_attention's semantics (compiler/ref.c) written out here in double:
 * query row t (sequence s, position p) attends keys [lo, hi] of s, hi = causal ? p : kvlen-1,
 * lo = window ? max(0, p - window + 1) : 0; score = q.k * scale, softcap * tanh(score/softcap),
 * + slope[h] * (j - p) (BLOOM slopes from posenc_alibi_slopes); softmax; sum p_j v_j. GQA: head
 * h uses kv head h / (NH/NKV). Outputs are poisoned (NaN) before the launch; decode cases also
 * check that rows other than each sequence's last are left alone.
 *
 * attn_decode merges its splits in the same launch (the last CTA of a group to finish, counted
 * by counters that each launch must leave at zero), so each decode case also checks, bit for bit
 * against its first launch: three launches back to back on one stream (with PDL where the GPU
 * has it, so each starts while the one before it finishes), the same three captured in a CUDA
 * graph and replayed three times, and each sequence launched alone (its output must not depend
 * on the batch); then that the counters are all zero. The cases' key counts take one split
 * (n <= SPLIT_MIN, or n <= SOLO where a case sets it), two, and all NSPLIT.
 *
 * kv8 cases read an FP8 cache (kilnc compile --kv-dtype fp8; kernels/kiln_kv8.h's layout): each
 * (key, kv head)'s random values are scaled by 2^-3 .. 2^3 (so the scales differ), rounded by
 * ref_kv8_head (the rule rope_kv writes by) into the cache's bytes and scales, and the reference
 * attends over the decoded values (e4m3 * scale, in float: what attn_decode computes; attn_prefill
 * rounds them to DT for its tensor cores, within the same 1e-2). The poison is 0xFF bytes: NaN
 * e4m3 values and NaN scales.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/kiln_attn.h" /* not on the include path of tests/ */
#include "../../kernels/kiln_kv8.h"
#include "../../kernels/kiln_step.h"
#include "ktest.h"
#include "posenc.h"
#include "ref.h"
#include "util.h"

#define MAXS 8

typedef struct acase {
    int decode;                  /* attn_decode, else attn_prefill */
    int f16;                     /* DT = f16 (else bf16) */
    int nh, nkv, hd;
    int causal, window, alibi;
    float softcap;               /* 0 = off */
    int n_seqs;
    int rows[MAXS];              /* rows of each sequence in the step (its last positions) */
    int kvlen[MAXS];             /* keys of each sequence, the step's included; 0: = rows */
    int bm, bn;                  /* prefill tile; 0: the template's defaults */
    int nsplit, hpc, threads;    /* decode */
    float qamp;                  /* q uniform in [-qamp, qamp); 0: 1 */
    const char *tag;             /* extra words for the case name */
    int split_min;               /* decode: fewest keys per split; 0: 32 (lower.c's) */
    int solo;                    /* decode: most keys one CTA takes whole (SOLO); 0: none */
} acase;

static uint16_t to_dt(float x, int f16) { return f16 ? util_f32_to_f16(x) : util_f32_to_bf16(x); }
static float from_dt(uint16_t x, int f16) { return f16 ? util_f16_to_f32(x) : util_bf16_to_f32(x); }

static void shuffle(kt *t, int *a, int n)
{
    for (int i = n - 1; i > 0; i--) {
        int j = (int)((kt_randf(t) * 0.5f + 0.5f) * (float)(i + 1));
        if (j > i)
            j = i;
        if (j < 0)
            j = 0;
        int x = a[i];
        a[i] = a[j];
        a[j] = x;
    }
}

/* The reference for one query row: out[NH*HD]. k/v: the sequence's keys [kvlen][NKV*HD]. */
static void ref_row(const acase *c, const float *qrow, int p, int kvlen, const float *k,
                    const float *v, const float *slopes, double scale, float *out, double *sc)
{
    int hd = c->hd, kw = c->nkv * hd, group = c->nh / c->nkv;
    int hi = kvlen - 1, lo = 0;
    if (c->causal && p < hi)
        hi = p;
    if (c->window > 0 && p - c->window + 1 > lo)
        lo = p - c->window + 1;
    for (int h = 0; h < c->nh; h++) {
        const float *qh = qrow + h * hd;
        int kh = h / group;
        double mx = -INFINITY;
        for (int j = lo; j <= hi; j++) {
            double d = 0;
            for (int e = 0; e < hd; e++)
                d += (double)qh[e] * k[(size_t)j * kw + kh * hd + e];
            double s = d * scale;
            if (c->softcap > 0)
                s = tanh(s / c->softcap) * c->softcap;
            if (c->alibi)
                s += (double)slopes[h] * (double)(j - p);
            sc[j] = s;
            if (s > mx)
                mx = s;
        }
        double sum = 0;
        for (int j = lo; j <= hi; j++) {
            sc[j] = exp(sc[j] - mx);
            sum += sc[j];
        }
        for (int e = 0; e < hd; e++) {
            double acc = 0;
            for (int j = lo; j <= hi; j++)
                acc += sc[j] * v[(size_t)j * kw + kh * hd + e];
            out[h * hd + e] = sum > 0 ? (float)(acc / sum) : 0.f;
        }
    }
}

static void case_name(const acase *c, int T, int kv8, char *name, size_t cap)
{
    char opt[128] = "";
    size_t n = 0;
    n += (size_t)snprintf(opt + n, sizeof opt - n, " %s", c->causal ? "causal" : "bidir");
    if (c->window)
        n += (size_t)snprintf(opt + n, sizeof opt - n, " window=%d", c->window);
    if (c->alibi)
        n += (size_t)snprintf(opt + n, sizeof opt - n, " alibi");
    if (c->softcap > 0)
        n += (size_t)snprintf(opt + n, sizeof opt - n, " softcap=%g", c->softcap);
    if (c->f16)
        n += (size_t)snprintf(opt + n, sizeof opt - n, " f16");
    if (kv8)
        n += (size_t)snprintf(opt + n, sizeof opt - n, " kv8");
    if (c->decode)
        snprintf(name, cap, "attention/decode HD=%d NH=%d NKV=%d%s seqs=%d%s%s", c->hd, c->nh,
                 c->nkv, opt, c->n_seqs, c->tag ? " " : "", c->tag ? c->tag : "");
    else
        snprintf(name, cap, "attention/prefill HD=%d NH=%d NKV=%d%s T=%d%s%s", c->hd, c->nh,
                 c->nkv, opt, T, c->tag ? " " : "", c->tag ? c->tag : "");
}

/* What the decode checks after the first launch need: that launch's inputs and output. */
typedef struct decode_ctx {
    const acase *c;
    const char *name;
    CUfunction f;
    kiln_step st;
    CUdeviceptr q, k, v, ws, cnt, slopes;
    float scale, softcap;
    int nsplit, hpc, threads, T;
    const uint16_t *first;       /* the first launch's output [T, NH*HD], checked */
    const int *seq_start, *kvlen, *tok_pos, *tok_slot, *bt;
    int max_blocks;
    const uint16_t *q_host;      /* [T, NH*HD] */
} decode_ctx;

/* Index of the first element where a and b differ, or -1. */
static long long first_diff(const uint16_t *a, const uint16_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i])
            return (long long)i;
    return -1;
}

static int decode_launch(kt *t, const decode_ctx *d, const kiln_step *st, CUdeviceptr q,
                         CUdeviceptr out, int n_seqs, CUstream stream, kerr *e)
{
    CUdeviceptr dq = q, dk = d->k, dv = d->v, dws = d->ws, dcnt = d->cnt, dsl = d->slopes;
    CUdeviceptr dout = out;
    float scale = d->scale, softcap = d->softcap;
    kiln_step s = *st;
    void *args[] = {&s, &dq, &dk, &dv, &dws, &dcnt, &dout, &scale, &softcap, &dsl};
    return kcuda_launch(&t->cu, d->f, (unsigned)d->nsplit, (unsigned)(d->c->nh / d->hpc),
                        (unsigned)n_seqs, (unsigned)d->threads, 0, stream, args, t->pdl, e);
}

/* Three launches back to back into three poisoned outputs, on a stream of their own (no sync in
 * between: with PDL each one's blocks start while the one before it finishes), then the same
 * three captured in a CUDA graph replayed three times, outputs poisoned before each replay.
 * Every output must equal the first launch's bit for bit, poisoned rows included. */
static void decode_repeats(kt *t, const decode_ctx *d)
{
    enum { REPS = 3 };
    const size_t bytes = sizeof(uint16_t) * (size_t)d->T * (size_t)(d->c->nh * d->c->hd);
    char nm[320], detail[200] = "";
    snprintf(nm, sizeof nm, "%s: 3 launches, and a graph of them replayed 3 times, bitwise",
             d->name);
    CUdeviceptr out[REPS];
    for (int i = 0; i < REPS; i++)
        out[i] = kt_alloc(t, bytes);
    uint16_t *got = xmalloc(bytes);
    CUstream stream = NULL;
    CUgraph g = NULL;
    CUgraphExec ge = NULL;
    kerr e;
    kerr_clear(&e);
    /* kt_alloc poisoned on the legacy stream, which a non-blocking stream does not wait for */
    int ok = t->cu.cuStreamSynchronize(NULL) == CUDA_SUCCESS &&
             t->cu.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING) == CUDA_SUCCESS;
    if (!ok)
        snprintf(detail, sizeof detail, "cuStreamSynchronize or cuStreamCreate failed");
    for (int i = 0; ok && i < REPS; i++)
        if (decode_launch(t, d, &d->st, d->q, out[i], d->st.n_seqs, stream, &e)) {
            snprintf(detail, sizeof detail, "launch %d: %s", i + 1, kerr_msg(&e));
            ok = 0;
        }
    if (ok && t->cu.cuStreamSynchronize(stream) != CUDA_SUCCESS) {
        snprintf(detail, sizeof detail, "the back-to-back launches failed on the GPU");
        ok = 0;
    }
    for (int i = 0; ok && i < REPS; i++) {
        kt_download(t, got, out[i], bytes);
        long long j = first_diff(got, d->first, bytes / 2);
        if (j >= 0) {
            snprintf(detail, sizeof detail,
                     "launch %d of %d back to back: element %lld is 0x%04x, the first launch "
                     "gave 0x%04x", i + 1, REPS, j, got[j], d->first[j]);
            ok = 0;
        }
    }
    if (ok) {
        ok = t->cu.cuStreamBeginCapture(stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL) ==
             CUDA_SUCCESS;
        for (int i = 0; ok && i < REPS; i++)
            ok = !decode_launch(t, d, &d->st, d->q, out[i], d->st.n_seqs, stream, &e);
        ok = t->cu.cuStreamEndCapture(stream, &g) == CUDA_SUCCESS && ok;
        ok = ok && t->cu.cuGraphInstantiateWithFlags(&ge, g, 0) == CUDA_SUCCESS;
        if (!ok)
            snprintf(detail, sizeof detail, "capturing or instantiating the graph failed%s%s",
                     kerr_msg(&e)[0] ? ": " : "", kerr_msg(&e));
    }
    for (int r = 0; ok && r < REPS; r++) {
        for (int i = 0; ok && i < REPS; i++)
            ok = t->cu.cuMemsetD8Async(out[i], 0xFF, bytes, stream) == CUDA_SUCCESS;
        ok = ok && t->cu.cuGraphLaunch(ge, stream) == CUDA_SUCCESS &&
             t->cu.cuStreamSynchronize(stream) == CUDA_SUCCESS;
        if (!ok) {
            snprintf(detail, sizeof detail, "graph replay %d failed on the GPU", r + 1);
            break;
        }
        for (int i = 0; ok && i < REPS; i++) {
            kt_download(t, got, out[i], bytes);
            long long j = first_diff(got, d->first, bytes / 2);
            if (j >= 0) {
                snprintf(detail, sizeof detail,
                         "graph replay %d, launch %d: element %lld is 0x%04x, the first launch "
                         "gave 0x%04x", r + 1, i + 1, j, got[j], d->first[j]);
                ok = 0;
            }
        }
    }
    kt_result(t, nm, ok, detail);
    if (ge)
        t->cu.cuGraphExecDestroy(ge);
    if (g)
        t->cu.cuGraphDestroy(g);
    if (stream)
        t->cu.cuStreamDestroy(stream);
    for (int i = 0; i < REPS; i++)
        kt_free(t, out[i]);
    free(got);
}

/* Each sequence of the batch launched alone (a step of its rows only, its own block-table row,
 * the same cache, workspace and counters): its last row must equal the batch's bit for bit. */
static void decode_alone(kt *t, const decode_ctx *d)
{
    const acase *c = d->c;
    if (c->n_seqs < 2)
        return;
    const int qw = c->nh * c->hd;
    char nm[320], detail[200] = "";
    snprintf(nm, sizeof nm, "%s: each sequence alone equals it in the batch, bitwise", d->name);
    int ok = 1;
    for (int s = 0; ok && s < c->n_seqs; s++) {
        const int a = d->seq_start[s], rows = d->seq_start[s + 1] - a;
        int *pos = xmalloc(sizeof(int) * (size_t)rows), *slot = xmalloc(sizeof(int) * (size_t)rows);
        int *zero = xcalloc((size_t)rows, sizeof(int)), start[2] = {0, rows};
        memcpy(pos, d->tok_pos + a, sizeof(int) * (size_t)rows);
        memcpy(slot, d->tok_slot + a, sizeof(int) * (size_t)rows);
        kiln_step st = d->st;
        st.T = rows;
        st.n_seqs = 1;
        CUdeviceptr dpos = kt_upload(t, pos, sizeof(int) * (size_t)rows);
        CUdeviceptr dzero = kt_upload(t, zero, sizeof(int) * (size_t)rows);
        CUdeviceptr dslot = kt_upload(t, slot, sizeof(int) * (size_t)rows);
        CUdeviceptr dstart = kt_upload(t, start, sizeof start);
        CUdeviceptr dkv = kt_upload(t, &d->kvlen[s], sizeof(int));
        CUdeviceptr dbt = kt_upload(t, d->bt + (size_t)s * d->max_blocks,
                                    sizeof(int) * (size_t)d->max_blocks);
        CUdeviceptr dq = kt_upload(t, d->q_host + (size_t)a * qw,
                                   sizeof(uint16_t) * (size_t)rows * qw);
        CUdeviceptr dout = kt_alloc(t, sizeof(uint16_t) * (size_t)rows * qw);
        st.tok_ids = st.tok_type = st.tok_seq = dzero;
        st.tok_pos = dpos;
        st.tok_slot = dslot;
        st.seq_start = dstart;
        st.seq_kvlen = dkv;
        st.block_table = dbt;
        kerr e;
        kerr_clear(&e);
        CUresult rc = CUDA_SUCCESS;
        if (decode_launch(t, d, &st, dq, dout, 1, t->stream, &e) ||
            (rc = t->cu.cuStreamSynchronize(t->stream)) != CUDA_SUCCESS) {
            snprintf(detail, sizeof detail, "sequence %d alone: %s", s,
                     rc != CUDA_SUCCESS ? "the launch failed on the GPU" : kerr_msg(&e));
            ok = 0;
        } else {
            uint16_t *got = xmalloc(sizeof(uint16_t) * (size_t)qw);
            kt_download(t, got, dout + sizeof(uint16_t) * (size_t)(rows - 1) * qw,
                        sizeof(uint16_t) * (size_t)qw);
            const uint16_t *want = d->first + (size_t)(d->seq_start[s + 1] - 1) * qw;
            long long j = first_diff(got, want, (size_t)qw);
            if (j >= 0) {
                snprintf(detail, sizeof detail,
                         "sequence %d (kvlen %d) alone: head %lld dim %lld is 0x%04x, in the "
                         "batch 0x%04x", s, d->kvlen[s], j / c->hd, j % c->hd, got[j], want[j]);
                ok = 0;
            }
            free(got);
        }
        CUdeviceptr bufs[] = {dpos, dzero, dslot, dstart, dkv, dbt, dq, dout};
        for (size_t i = 0; i < ARRAY_LEN(bufs); i++)
            kt_free(t, bufs[i]);
        free(pos);
        free(slot);
        free(zero);
    }
    kt_result(t, nm, ok, detail);
}

/* After all the launches of the case (1 + 3 + 9 + one per sequence alone), every arrival
 * counter must be back at zero: the state the next step or graph replay starts from. */
static void decode_counters(kt *t, const decode_ctx *d)
{
    const int n = d->c->n_seqs * d->c->nh;
    unsigned *cnt = xmalloc(sizeof(unsigned) * (size_t)n);
    kt_download(t, cnt, d->cnt, sizeof(unsigned) * (size_t)n);
    char nm[320], detail[160] = "";
    snprintf(nm, sizeof nm, "%s: counters back to zero after every launch", d->name);
    int ok = 1;
    for (int i = 0; ok && i < n; i++)
        if (cnt[i] != 0) {
            snprintf(detail, sizeof detail, "counter %d (sequence %d, head %d) is %u", i,
                     i / d->c->nh, i % d->c->nh, cnt[i]);
            ok = 0;
        }
    kt_result(t, nm, ok, detail);
    free(cnt);
}

/* kv8: the FP8 cache (KV8 = 1), else the 16-bit one */
static void run_case(kt *t, const acase *c, int kv8)
{
    const int nh = c->nh, nkv = c->nkv, hd = c->hd, ns = c->n_seqs, f16 = c->f16;
    const int qw = nh * hd, kw = nkv * hd;
    int kvlen[MAXS], seq_start[MAXS + 1];
    int T = 0;
    seq_start[0] = 0;
    for (int s = 0; s < ns; s++) {
        kvlen[s] = c->kvlen[s] ? c->kvlen[s] : c->rows[s];
        if (c->rows[s] < 1 || c->rows[s] > kvlen[s]) {
            fprintf(stderr, "ktest_attention: bad case (seq %d: rows %d, kvlen %d)\n", s,
                    c->rows[s], kvlen[s]);
            exit(2);
        }
        T += c->rows[s];
        seq_start[s + 1] = T;
    }
    char name[200];
    case_name(c, T, kv8, name, sizeof name);
    if (!kt_want(t, name))
        return;

    /* tile / split parameters, as the launch rules in attention.cuh state them */
    const int bm = c->bm ? c->bm : KILN_ATTN_BM, bn = c->bn ? c->bn : KILN_ATTN_BN(hd);
    const int nsplit = c->nsplit ? c->nsplit : 16, hpc = c->hpc ? c->hpc : 1;
    const int threads = c->threads ? c->threads : 128;
    const int split_min = c->split_min ? c->split_min : 32;
    const char *dt = f16 ? "kiln::f16" : "kiln::bf16";

    /* the step */
    int *tok_pos = xmalloc(sizeof(int) * (size_t)T), *tok_seq = xmalloc(sizeof(int) * (size_t)T);
    int *tok_slot = xmalloc(sizeof(int) * (size_t)T);
    int *zeros = xcalloc((size_t)(T > ns * nh ? T : ns * nh), sizeof(int)); /* ids, counters */
    int max_blocks = 1, total_blocks = 0;
    for (int s = 0; s < ns; s++) {
        int nb = (kvlen[s] + KILN_BLOCK - 1) / KILN_BLOCK;
        if (nb + 1 > max_blocks)
            max_blocks = nb + 1; /* one spare column, pointing at the NaN scratch block */
        total_blocks += nb;
    }
    const int nblocks = 1 + total_blocks + 3; /* scratch block 0, 3 spare (NaN) blocks */
    int *perm = xmalloc(sizeof(int) * (size_t)(nblocks - 1));
    for (int i = 0; i < nblocks - 1; i++)
        perm[i] = i + 1;
    shuffle(t, perm, nblocks - 1);
    int *bt = xcalloc((size_t)(ns * max_blocks), sizeof(int)); /* unused columns: block 0 */
    int next = 0;
    for (int s = 0; s < ns; s++)
        for (int b = 0; b < (kvlen[s] + KILN_BLOCK - 1) / KILN_BLOCK; b++)
            bt[s * max_blocks + b] = perm[next++];
    for (int s = 0; s < ns; s++)
        for (int i = 0; i < c->rows[s]; i++) {
            int tk = seq_start[s] + i, p = kvlen[s] - c->rows[s] + i;
            tok_pos[tk] = p;
            tok_seq[tk] = s;
            tok_slot[tk] = bt[s * max_blocks + p / KILN_BLOCK] * KILN_BLOCK + p % KILN_BLOCK;
        }

    /* the cache: NaN everywhere but the keys of each sequence (kv8: bytes and scales 0xFF) */
    size_t cache_n = (size_t)nblocks * KILN_BLOCK * (size_t)kw;
    const size_t bb = (size_t)KILN_KV8_BLOCK_BYTES(kw, nkv);
    const size_t cache_bytes = kv8 ? (size_t)nblocks * bb : sizeof(uint16_t) * cache_n;
    uint16_t *kc = xmalloc(cache_bytes), *vc = xmalloc(cache_bytes);
    memset(kc, 0xFF, cache_bytes);
    memset(vc, 0xFF, cache_bytes);
    float *kref[MAXS], *vref[MAXS];
    int maxkv = 1;
    for (int s = 0; s < ns; s++) {
        size_t n = (size_t)kvlen[s] * (size_t)kw;
        if (kvlen[s] > maxkv)
            maxkv = kvlen[s];
        kref[s] = xmalloc(sizeof(float) * n);
        vref[s] = xmalloc(sizeof(float) * n);
        kt_fill(t, kref[s], n, 1.0f);
        kt_fill(t, vref[s], n, 1.0f);
        for (int j = 0; kv8 && j < kvlen[s]; j++) {
            const size_t b = (size_t)bt[s * max_blocks + j / KILN_BLOCK], r = (size_t)(j % KILN_BLOCK);
            for (int kv = 0; kv < 2; kv++) {
                unsigned char *base = (unsigned char *)(kv ? vc : kc) + b * bb;
                for (int h = 0; h < nkv; h++) {
                    float *x = (kv ? vref[s] : kref[s]) + (size_t)j * kw + (size_t)h * hd;
                    const float amp = ldexpf(1.0f, (int)lroundf(3.0f * kt_randf(t)));
                    for (int e = 0; e < hd; e++)
                        x[e] *= amp;
                    float sc = ref_kv8_head(x, hd, base + r * kw + (size_t)h * hd, x);
                    memcpy(base + KILN_KV8_SCALES_AT(kw) + (r * nkv + h) * 4, &sc, 4);
                }
            }
        }
        for (int j = 0; !kv8 && j < kvlen[s]; j++) {
            size_t row = ((size_t)bt[s * max_blocks + j / KILN_BLOCK] * KILN_BLOCK +
                          (size_t)(j % KILN_BLOCK)) * (size_t)kw;
            for (int e = 0; e < kw; e++) {
                size_t i = (size_t)j * kw + e;
                kc[row + e] = to_dt(kref[s][i], f16);
                vc[row + e] = to_dt(vref[s][i], f16);
                kref[s][i] = from_dt(kc[row + e], f16);
                vref[s][i] = from_dt(vc[row + e], f16);
            }
        }
    }

    /* q */
    size_t qn = (size_t)T * qw;
    float *qf = xmalloc(sizeof(float) * qn);
    uint16_t *qh = xmalloc(sizeof(uint16_t) * qn);
    kt_fill(t, qf, qn, c->qamp > 0 ? c->qamp : 1.0f);
    for (size_t i = 0; i < qn; i++) {
        qh[i] = to_dt(qf[i], f16);
        qf[i] = from_dt(qh[i], f16);
    }
    float slopes[64] = {0};
    if (c->alibi)
        posenc_alibi_slopes(nh, slopes);
    const double scale = 1.0 / sqrt((double)hd);
    float scale_f = (float)scale, softcap = c->softcap;

    /* reference: every row (prefill) or each sequence's last row (decode) */
    float *want = xcalloc(qn, sizeof(float));
    double *sc = xmalloc(sizeof(double) * (size_t)maxkv);
    for (int tk = 0; tk < T; tk++) {
        int s = tok_seq[tk];
        if (c->decode && tk != seq_start[s + 1] - 1)
            continue;
        ref_row(c, qf + (size_t)tk * qw, tok_pos[tk], kvlen[s], kref[s], vref[s], slopes, scale,
                want + (size_t)tk * qw, sc);
    }

    /* the kernels */
    char *src;
    const char *ct = kv8 ? "unsigned char" : dt; /* the caches' element type */
    if (!c->decode) {
        char tile[64] = "";
        if (c->bm || c->bn || kv8)
            snprintf(tile, sizeof tile, ", %d, %d%s", bm, bn, kv8 ? ", 1" : "");
        src = xasprintf("#include \"attention.cuh\"\n"
                        "extern \"C\" __global__ void __launch_bounds__(%d, %d)\n"
                        "kt_attn_prefill(const kiln_step st, const %s *q, const %s *k_cache,\n"
                        "                const %s *v_cache, %s *out, float scale, float softcap,\n"
                        "                const float *alibi_slopes)\n"
                        "{\n"
                        "    kiln::attn_prefill<%s, %d, %d, %d, %d, %d, %d, %d%s>(\n"
                        "        st, q, k_cache, v_cache, out, scale, softcap, alibi_slopes);\n"
                        "}\n",
                        2 * bm, KILN_ATTN_PREFILL_MIN_CTAS(hd, bm), dt, ct, ct, dt, dt, nh, nkv, hd,
                        c->causal, c->window, c->alibi,
                        c->softcap > 0, tile);
    } else {
        src = xasprintf("#include \"attention.cuh\"\n"
                        "extern \"C\" __global__ void __launch_bounds__(%d)\n"
                        "kt_attn_decode(const kiln_step st, const %s *q, const %s *k_cache,\n"
                        "               const %s *v_cache, float *ws, unsigned *cnt, %s *out,\n"
                        "               float scale, float softcap, const float *alibi_slopes)\n"
                        "{\n"
                        "    kiln::attn_decode<%s, %d, %d, %d, %d, %d, %d, %d, %d, %d, %d, %d, %d%s"
                        ">(\n"
                        "        st, q, k_cache, v_cache, ws, cnt, out, scale, softcap,\n"
                        "        alibi_slopes);\n"
                        "}\n",
                        threads, dt, ct, ct, dt, dt, nh, nkv, hd, c->causal, c->window, c->alibi,
                        c->softcap > 0, nsplit, hpc, threads, split_min, c->solo,
                        kv8 ? ", 1" : "");
    }
    CUmodule mod = kt_module(t, name, src);
    free(src);

    kiln_step st;
    memset(&st, 0, sizeof st);
    st.T = T;
    st.n_seqs = ns;
    st.max_blocks = max_blocks;
    CUdeviceptr d_pos = kt_upload(t, tok_pos, sizeof(int) * (size_t)T);
    CUdeviceptr d_zero = kt_upload(t, zeros, sizeof(int) * (size_t)T);
    CUdeviceptr d_seq = kt_upload(t, tok_seq, sizeof(int) * (size_t)T);
    CUdeviceptr d_slot = kt_upload(t, tok_slot, sizeof(int) * (size_t)T);
    CUdeviceptr d_start = kt_upload(t, seq_start, sizeof(int) * (size_t)(ns + 1));
    CUdeviceptr d_kvlen = kt_upload(t, kvlen, sizeof(int) * (size_t)ns);
    CUdeviceptr d_bt = kt_upload(t, bt, sizeof(int) * (size_t)(ns * max_blocks));
    st.tok_ids = d_zero;
    st.tok_pos = d_pos;
    st.tok_type = d_zero;
    st.tok_seq = d_seq;
    st.tok_slot = d_slot;
    st.seq_start = d_start;
    st.seq_kvlen = d_kvlen;
    st.block_table = d_bt;
    CUdeviceptr d_q = kt_upload(t, qh, sizeof(uint16_t) * qn);
    CUdeviceptr d_k = kt_upload(t, kc, cache_bytes);
    CUdeviceptr d_v = kt_upload(t, vc, cache_bytes);
    CUdeviceptr d_sl = kt_upload(t, slopes, sizeof slopes);
    CUdeviceptr d_out = kt_alloc(t, sizeof(uint16_t) * qn); /* poisoned: NaN */
    CUdeviceptr d_ws = 0, d_cnt = 0;
    CUfunction f_dec = NULL;
    if (!c->decode) {
        CUfunction f = kt_func(t, mod, "kt_attn_prefill");
        size_t smem = (size_t)KILN_ATTN_PREFILL_SMEM(bm, bn, hd, 2, kv8);
        void *args[] = {&st, &d_q, &d_k, &d_v, &d_out, &scale_f, &softcap, &d_sl};
        kt_launch(t, f, "attn_prefill", (unsigned)((T + bm - 1) / bm + ns), (unsigned)nh, 1,
                  (unsigned)(2 * bm), smem, args);
    } else {
        size_t ws_n = (size_t)ns * nh * nsplit * (size_t)(hd + 2);
        d_ws = kt_alloc(t, sizeof(float) * ws_n); /* poisoned: a merge must read only records
                                                   * written in its own launch */
        d_cnt = kt_upload(t, zeros, sizeof(unsigned) * (size_t)(ns * nh)); /* as at load */
        f_dec = kt_func(t, mod, "kt_attn_decode");
        void *args[] = {&st, &d_q, &d_k, &d_v, &d_ws, &d_cnt, &d_out, &scale_f, &softcap, &d_sl};
        kt_launch(t, f_dec, "attn_decode", (unsigned)nsplit, (unsigned)(nh / hpc), (unsigned)ns,
                  (unsigned)threads, 0, args);
    }
    uint16_t *oh = xmalloc(sizeof(uint16_t) * qn);
    kt_download(t, oh, d_out, sizeof(uint16_t) * qn);

    /* compare the rows the kernel owns; decode: the other rows must still be poison */
    float *got = xmalloc(sizeof(float) * qn), *wantv = xmalloc(sizeof(float) * qn);
    int *row_of = xmalloc(sizeof(int) * (size_t)T);
    size_t n = 0;
    int nrow = 0, touched = 0;
    for (int tk = 0; tk < T; tk++) {
        int last = tk == seq_start[tok_seq[tk] + 1] - 1;
        if (c->decode && !last) {
            for (int e = 0; e < qw; e++)
                if (!t->compile_only && oh[(size_t)tk * qw + e] != 0xFFFF)
                    touched++;
            continue;
        }
        row_of[nrow++] = tk;
        for (int e = 0; e < qw; e++) {
            got[n] = from_dt(oh[(size_t)tk * qw + e], f16);
            wantv[n] = want[(size_t)tk * qw + e];
            n++;
        }
    }
    if (touched) {
        char detail[160];
        snprintf(detail, sizeof detail, "%d elements written in rows that are not a sequence's last",
                 touched);
        kt_result(t, name, 0, detail);
    } else if (!kt_check(t, name, got, wantv, n, 1e-2)) {
        /* first mismatching (token, head, dim), with kt_check's "far" rule or non-finite */
        for (size_t i = 0; i < n; i++) {
            double d = fabs((double)got[i] - wantv[i]);
            if (!isfinite(got[i]) || d > 1e-2 + 5e-2 * fabs(wantv[i])) {
                int tk = row_of[i / (size_t)qw], e = (int)(i % (size_t)qw);
                int s = tok_seq[tk];
                printf("     first bad: token %d (seq %d, pos %d, kvlen %d) head %d (kv head %d) "
                       "dim %d: got %g want %g\n",
                       tk, s, tok_pos[tk], kvlen[s], e / hd, e / hd / (nh / nkv), e % hd, got[i],
                       wantv[i]);
                break;
            }
        }
    }

    if (c->decode && !t->compile_only) {
        decode_ctx dc = {.c = c, .name = name, .f = f_dec, .st = st, .q = d_q, .k = d_k,
                         .v = d_v, .ws = d_ws, .cnt = d_cnt, .slopes = d_sl, .scale = scale_f,
                         .softcap = softcap, .nsplit = nsplit, .hpc = hpc, .threads = threads,
                         .T = T, .first = oh, .seq_start = seq_start, .kvlen = kvlen,
                         .tok_pos = tok_pos, .tok_slot = tok_slot, .bt = bt,
                         .max_blocks = max_blocks, .q_host = qh};
        decode_repeats(t, &dc);
        decode_alone(t, &dc);
        decode_counters(t, &dc);
    }

    kt_free(t, d_pos);
    kt_free(t, d_zero);
    kt_free(t, d_seq);
    kt_free(t, d_slot);
    kt_free(t, d_start);
    kt_free(t, d_kvlen);
    kt_free(t, d_bt);
    kt_free(t, d_q);
    kt_free(t, d_k);
    kt_free(t, d_v);
    kt_free(t, d_sl);
    kt_free(t, d_out);
    if (d_ws)
        kt_free(t, d_ws);
    if (d_cnt)
        kt_free(t, d_cnt);
    for (int s = 0; s < ns; s++) {
        free(kref[s]);
        free(vref[s]);
    }
    free(tok_pos);
    free(tok_seq);
    free(tok_slot);
    free(zeros);
    free(perm);
    free(bt);
    free(kc);
    free(vc);
    free(qf);
    free(qh);
    free(want);
    free(sc);
    free(oh);
    free(got);
    free(wantv);
    free(row_of);
}

/* Prefill: decode = 0. Fields: decode f16 nh nkv hd causal window alibi softcap n_seqs
 * {rows} {kvlen} bm bn nsplit hpc threads qamp tag */
static const acase prefill_cases[] = {
    /* one sequence, GQA, the main shape */
    {0, 0, 8, 2, 128, 1, 0, 0, 0, 1, {1}, {0}, 0, 0, 0, 0, 0, 2, NULL, 0, 0},
    {0, 0, 8, 2, 128, 1, 0, 0, 0, 1, {7}, {0}, 0, 0, 0, 0, 0, 2, NULL, 0, 0},
    {0, 0, 8, 2, 128, 1, 0, 0, 0, 1, {64}, {0}, 0, 0, 0, 0, 0, 2, NULL, 0, 0},
    {0, 0, 8, 2, 128, 1, 0, 0, 0, 1, {200}, {0}, 0, 0, 0, 0, 0, 2, NULL, 0, 0},
    /* several sequences: MHA, MQA */
    {0, 0, 4, 4, 64, 1, 0, 0, 0, 3, {5, 33, 70}, {0}, 0, 0, 0, 0, 0, 2, "seqs 5,33,70", 0, 0},
    {0, 0, 8, 1, 64, 1, 0, 0, 0, 3, {5, 33, 70}, {0}, 0, 0, 0, 0, 0, 2, "seqs 5,33,70", 0, 0},
    /* chunked prefill: earlier keys cached (kvlen > rows), a 1-row sequence among them */
    {0, 0, 8, 2, 128, 1, 0, 0, 0, 4, {16, 40, 1, 70}, {100, 77, 300, 70}, 0, 0, 0, 0, 0, 2,
     "chunked", 0, 0},
    /* BERT: bidirectional; also with cached keys beyond the rows */
    {0, 0, 4, 4, 64, 0, 0, 0, 0, 3, {5, 33, 70}, {0}, 0, 0, 0, 0, 0, 2, "seqs 5,33,70", 0, 0},
    {0, 0, 4, 2, 64, 0, 0, 0, 0, 2, {10, 40}, {50, 40}, 0, 0, 0, 0, 0, 2, "chunked", 0, 0},
    /* sliding window */
    {0, 0, 8, 2, 64, 1, 16, 0, 0, 3, {70, 45, 3}, {0}, 0, 0, 0, 0, 0, 2, NULL, 0, 0},
    {0, 0, 8, 2, 64, 1, 16, 0, 0, 2, {20, 70}, {90, 70}, 0, 0, 0, 0, 0, 2, "chunked", 0, 0},
    /* ALiBi (BLOOM slopes, 6 heads), softcap, everything together */
    {0, 0, 6, 6, 64, 1, 0, 1, 0, 3, {5, 33, 70}, {0}, 0, 0, 0, 0, 0, 2, NULL, 0, 0},
    {0, 0, 8, 4, 128, 1, 0, 0, 30, 2, {33, 70}, {0}, 0, 0, 0, 0, 0, 40, NULL, 0, 0},
    {0, 0, 6, 2, 64, 1, 16, 1, 5, 2, {70, 45}, {0}, 0, 0, 0, 0, 0, 8, NULL, 0, 0},
    /* head dims */
    {0, 0, 4, 2, 32, 1, 0, 0, 0, 3, {5, 33, 70}, {0}, 0, 0, 0, 0, 0, 2, NULL, 0, 0},
    {0, 0, 4, 1, 48, 1, 0, 0, 0, 3, {5, 33, 70}, {0}, 0, 0, 0, 0, 0, 2, NULL, 0, 0},
    {0, 0, 2, 2, 16, 0, 0, 0, 0, 3, {5, 33, 70}, {0}, 0, 0, 0, 0, 0, 2, NULL, 0, 0},
    {0, 0, 4, 2, 80, 1, 0, 0, 0, 2, {33, 70}, {0}, 0, 0, 0, 0, 0, 2, NULL, 0, 0},
    {0, 0, 4, 2, 96, 1, 0, 0, 0, 2, {33, 70}, {0}, 0, 0, 0, 0, 0, 2, NULL, 0, 0},
    {0, 0, 4, 1, 256, 1, 0, 0, 0, 2, {70, 33}, {0}, 0, 0, 0, 0, 0, 2, NULL, 0, 0},
    /* HD % 16 != 0: the CUDA-core fallback */
    {0, 0, 4, 2, 24, 1, 0, 0, 0, 3, {5, 33, 70}, {0, 60, 0}, 0, 0, 0, 0, 0, 2, NULL, 0, 0},
    {0, 0, 6, 3, 24, 1, 16, 1, 5, 2, {70, 20}, {70, 50}, 0, 0, 0, 0, 0, 8, NULL, 0, 0},
    {0, 0, 4, 4, 40, 0, 0, 0, 0, 2, {33, 9}, {0}, 0, 0, 0, 0, 0, 2, NULL, 0, 0},
    /* f16 */
    {0, 1, 4, 2, 64, 1, 0, 0, 0, 3, {5, 33, 70}, {0}, 0, 0, 0, 0, 0, 2, NULL, 0, 0},
    {0, 1, 8, 2, 128, 1, 0, 0, 0, 2, {300, 17}, {400, 17}, 0, 0, 0, 0, 0, 2, "chunked", 0, 0},
    /* Llama-3-8B's heads over a long prompt: many full key tiles a CTA (sm_90a: wgmma) */
    {0, 0, 32, 8, 128, 1, 0, 0, 0, 1, {700}, {0}, 0, 0, 0, 0, 0, 2, NULL, 0, 0},
    /* other tiles */
    {0, 0, 4, 2, 64, 1, 0, 0, 0, 3, {5, 33, 70}, {40, 33, 100}, 16, 32, 0, 0, 0, 2,
     "BM=16 BN=32", 0, 0},
    {0, 0, 8, 2, 128, 1, 0, 0, 0, 2, {200, 130}, {0}, 128, 64, 0, 0, 0, 2, "BM=128 BN=64", 0, 0},
    {0, 0, 4, 2, 128, 1, 0, 0, 0, 2, {70, 33}, {0}, 32, 16, 0, 0, 0, 2, "BM=32 BN=16", 0, 0},
    /* 64 and 128 rows a CTA (on sm_90a one and two warpgroups sharing the key tiles): several
     * sequences, chunked, f16, a window with ALiBi and softcap */
    {0, 0, 8, 2, 64, 1, 0, 0, 0, 8, {1, 2, 3, 31, 32, 33, 64, 65},
     {500, 2, 40, 31, 64, 33, 64, 100}, 64, 64, 0, 0, 0, 2, "BM=64 8 seqs", 0, 0},
    {0, 0, 8, 2, 64, 1, 0, 0, 0, 8, {1, 2, 3, 31, 32, 33, 64, 65},
     {500, 2, 40, 31, 64, 33, 64, 100}, 128, 64, 0, 0, 0, 2, "BM=128 8 seqs", 0, 0},
    {0, 1, 8, 2, 128, 1, 0, 0, 0, 2, {300, 17}, {400, 17}, 64, 64, 0, 0, 0, 2, "BM=64 chunked", 0,
     0},
    {0, 1, 8, 2, 128, 1, 0, 0, 0, 2, {300, 17}, {400, 17}, 128, 64, 0, 0, 0, 2, "BM=128 chunked",
     0, 0},
    {0, 0, 6, 2, 64, 1, 16, 1, 5, 2, {170, 45}, {0}, 128, 64, 0, 0, 0, 8, "BM=128", 0, 0},
    {0, 0, 4, 4, 128, 0, 0, 0, 0, 2, {10, 140}, {50, 140}, 128, 64, 0, 0, 0, 2, "BM=128 chunked",
     0, 0},
    /* many short sequences (a mixed step: decode-like rows among prefill chunks) */
    {0, 0, 8, 2, 64, 1, 0, 0, 0, 8, {1, 2, 3, 31, 32, 33, 64, 65}, {500, 2, 40, 31, 64, 33, 64, 100},
     0, 0, 0, 0, 0, 2, "8 seqs", 0, 0},
};

static const acase decode_cases[] = {
    /* Llama-3-8B's heads; with SPLIT_MIN 32 and NSPLIT 16 the keys take 1, 1, 2, 2, 3, 16, 16
     * and 16 splits (the one-split sequences write their output without a merge) */
    {1, 0, 32, 8, 128, 1, 0, 0, 0, 8, {1, 1, 1, 1, 1, 1, 1, 1},
     {1, 32, 33, 64, 65, 512, 513, 5000}, 0, 0, 16, 4, 128, 2, "splits 1..16", 0, 0},
    /* SPLIT_MIN 1 (the split rule of the two-kernel decode): ceil(n / 16) keys per split, so
     * 1, 2, 15, 16, 9, 15, 16 and 3 splits */
    {1, 0, 8, 2, 128, 1, 0, 0, 0, 8, {1, 1, 1, 1, 1, 1, 1, 1}, {1, 2, 15, 16, 17, 100, 1000, 3},
     0, 0, 16, 4, 128, 2, "SPLIT_MIN=1", 1, 0},
    /* SOLO 256 (lower.c's): up to 256 keys on one CTA (four 16-key tiles a warp), 257 on 9
     * splits; then with a window, ALiBi, softcap and several rows a sequence; f16 at HD 256 */
    {1, 0, 32, 8, 128, 1, 0, 0, 0, 8, {1, 1, 1, 1, 1, 1, 1, 1},
     {1, 33, 160, 255, 256, 257, 1000, 5000}, 0, 0, 16, 4, 128, 2, "SOLO=256", 0, 256},
    {1, 0, 8, 2, 64, 1, 100, 1, 5, 3, {4, 1, 7}, {300, 200, 40}, 0, 0, 16, 4, 128, 8,
     "SOLO=256 rows 4,1,7", 0, 256},
    {1, 1, 4, 1, 256, 1, 0, 0, 0, 3, {1, 1, 1}, {31, 256, 1000}, 0, 0, 16, 4, 128, 2, "SOLO=256",
     0, 256},
    /* 256 threads (lower.c's DECODE_THREADS_WIDE, head dims up to 64): Llama-3.2 1B's heads
     * solo and split, several rows and a window with ALiBi and softcap, the fixtures' head dims,
     * f16 */
    {1, 0, 32, 8, 64, 1, 0, 0, 0, 8, {1, 1, 1, 1, 1, 1, 1, 1},
     {1, 33, 160, 255, 256, 257, 1000, 5000}, 0, 0, 16, 4, 256, 2, "SOLO=256 wide", 0, 256},
    {1, 0, 8, 2, 64, 1, 100, 1, 5, 3, {4, 1, 7}, {300, 200, 40}, 0, 0, 16, 4, 256, 8,
     "SOLO=256 wide rows 4,1,7", 0, 256},
    {1, 0, 4, 2, 16, 1, 0, 0, 0, 3, {1, 1, 1}, {1, 33, 1000}, 0, 0, 16, 2, 256, 2,
     "SOLO=256 wide", 0, 256},
    {1, 0, 4, 2, 24, 1, 0, 0, 0, 3, {1, 1, 1}, {1, 300, 1000}, 0, 0, 16, 2, 256, 2,
     "SOLO=256 wide", 0, 256},
    {1, 1, 4, 1, 64, 1, 0, 0, 0, 3, {1, 1, 1}, {31, 256, 1000}, 0, 0, 16, 4, 256, 2,
     "SOLO=256 wide", 0, 256},
    /* SPLIT_MIN 64 under a window of 100 keys, ALiBi and softcap: 2, 1, 2, 1 splits */
    {1, 0, 8, 2, 64, 1, 100, 1, 5, 4, {1, 1, 1, 1}, {1000, 64, 65, 40}, 0, 0, 16, 2, 128, 8,
     "SPLIT_MIN=64", 64, 0},
    /* GQA, 128: kvlen 1 .. 5000 (several splits, empty splits) */
    {1, 0, 8, 2, 128, 1, 0, 0, 0, 1, {1}, {5000}, 0, 0, 16, 4, 128, 2, "kv 5000", 0, 0},
    {1, 0, 8, 2, 128, 1, 0, 0, 0, 3, {1, 1, 1}, {1, 31, 33}, 0, 0, 16, 4, 128, 2, "kv 1,31,33",
     0, 0},
    {1, 0, 8, 2, 128, 1, 0, 0, 0, 8, {1, 1, 1, 1, 1, 1, 1, 1},
     {1, 31, 32, 33, 1000, 5000, 64, 7}, 0, 0, 16, 4, 128, 2, "kv 1..5000", 0, 0},
    /* MQA (all 8 heads in one CTA), MHA, smaller HPC */
    {1, 0, 8, 1, 64, 1, 0, 0, 0, 3, {1, 1, 1}, {32, 1000, 5000}, 0, 0, 16, 8, 128, 2, NULL, 0, 0},
    {1, 0, 8, 1, 64, 1, 0, 0, 0, 3, {1, 1, 1}, {32, 1000, 5000}, 0, 0, 8, 2, 256, 2, "HPC=2", 0, 0},
    {1, 0, 4, 4, 64, 1, 0, 0, 0, 3, {1, 1, 1}, {33, 200, 1000}, 0, 0, 16, 1, 128, 2, NULL, 0, 0},
    /* alibi, softcap, window */
    {1, 0, 6, 6, 64, 1, 0, 1, 0, 3, {1, 1, 1}, {31, 1000, 33}, 0, 0, 16, 1, 128, 2, NULL, 0, 0},
    {1, 0, 8, 4, 128, 1, 0, 0, 30, 3, {1, 1, 1}, {31, 1000, 5000}, 0, 0, 16, 2, 128, 40, NULL,
     0, 0},
    {1, 0, 8, 2, 64, 1, 16, 0, 0, 3, {1, 1, 1}, {70, 5, 1000}, 0, 0, 16, 4, 128, 2, NULL, 0, 0},
    {1, 0, 8, 2, 64, 1, 100, 1, 5, 3, {1, 1, 1}, {1000, 5000, 40}, 0, 0, 16, 4, 128, 8, NULL, 0, 0},
    /* bidirectional; several rows per sequence in the step (only each last row is written) */
    {1, 0, 4, 2, 64, 0, 0, 0, 0, 3, {1, 1, 1}, {33, 1000, 2}, 0, 0, 16, 2, 128, 2, NULL, 0, 0},
    {1, 0, 8, 2, 128, 1, 0, 0, 0, 3, {4, 1, 7}, {40, 1000, 7}, 0, 0, 16, 4, 128, 2,
     "rows 4,1,7", 0, 0},
    /* head dims, the fixtures' small ones included */
    {1, 0, 4, 2, 24, 1, 0, 0, 0, 3, {1, 1, 1}, {1, 33, 1000}, 0, 0, 16, 2, 128, 2, NULL, 0, 0},
    {1, 0, 2, 2, 16, 1, 0, 0, 0, 3, {1, 1, 1}, {1, 33, 1000}, 0, 0, 16, 1, 128, 2, NULL, 0, 0},
    {1, 0, 4, 2, 32, 1, 0, 0, 0, 3, {1, 1, 1}, {1, 33, 1000}, 0, 0, 16, 2, 128, 2, NULL, 0, 0},
    {1, 0, 4, 1, 48, 1, 0, 0, 0, 3, {1, 1, 1}, {1, 33, 1000}, 0, 0, 16, 4, 128, 2, NULL, 0, 0},
    {1, 0, 4, 2, 80, 1, 0, 0, 0, 3, {1, 1, 1}, {1, 33, 1000}, 0, 0, 16, 2, 128, 2, NULL, 0, 0},
    {1, 0, 4, 1, 256, 1, 0, 0, 0, 3, {1, 1, 1}, {31, 1000, 5000}, 0, 0, 16, 4, 128, 2, NULL, 0, 0},
    /* f16; one split; 2 warps */
    {1, 1, 8, 2, 64, 1, 0, 0, 0, 3, {1, 1, 1}, {1, 33, 1000}, 0, 0, 16, 4, 128, 2, NULL, 0, 0},
    {1, 0, 8, 2, 64, 1, 0, 0, 0, 3, {1, 1, 1}, {1, 33, 1000}, 0, 0, 1, 4, 64, 2, "NSPLIT=1", 0, 0},
};

/* Cases run with the FP8 cache (kv8). Fields as above. */
static const acase kv8_cases[] = {
    /* prefill: the tensor-core path at HD 128 (one long sequence; chunked prefill over cached
     * blocks), 64 with window, ALiBi and softcap, 256 (BN 32), f16; the CUDA-core fallback at
     * HD 24 */
    {0, 0, 8, 2, 128, 1, 0, 0, 0, 1, {200}, {0}, 0, 0, 0, 0, 0, 2, NULL, 0, 0},
    {0, 0, 8, 2, 128, 1, 0, 0, 0, 4, {16, 40, 1, 70}, {100, 77, 300, 70}, 0, 0, 0, 0, 0, 2,
     "chunked", 0, 0},
    {0, 0, 6, 2, 64, 1, 16, 1, 5, 2, {70, 45}, {90, 45}, 0, 0, 0, 0, 0, 8, NULL, 0, 0},
    {0, 0, 4, 1, 256, 1, 0, 0, 0, 2, {70, 33}, {0}, 0, 0, 0, 0, 0, 2, NULL, 0, 0},
    {0, 1, 4, 2, 64, 1, 0, 0, 0, 3, {5, 33, 70}, {0, 40, 100}, 0, 0, 0, 0, 0, 2, NULL, 0, 0},
    {0, 0, 4, 2, 24, 1, 0, 0, 0, 3, {5, 33, 70}, {0, 60, 0}, 0, 0, 0, 0, 0, 2, NULL, 0, 0},
    /* decode: Llama-3-8B's heads over 1..16 splits, SPLIT_MIN 1, SOLO 256, window + ALiBi +
     * softcap, several rows a sequence, f16, head dims 24 and 256 */
    {1, 0, 32, 8, 128, 1, 0, 0, 0, 8, {1, 1, 1, 1, 1, 1, 1, 1},
     {1, 32, 33, 64, 65, 512, 513, 5000}, 0, 0, 16, 4, 128, 2, "splits 1..16", 0, 0},
    {1, 0, 8, 2, 128, 1, 0, 0, 0, 8, {1, 1, 1, 1, 1, 1, 1, 1}, {1, 2, 15, 16, 17, 100, 1000, 3},
     0, 0, 16, 4, 128, 2, "SPLIT_MIN=1", 1, 0},
    {1, 0, 32, 8, 128, 1, 0, 0, 0, 8, {1, 1, 1, 1, 1, 1, 1, 1},
     {1, 33, 160, 255, 256, 257, 1000, 5000}, 0, 0, 16, 4, 128, 2, "SOLO=256", 0, 256},
    {1, 0, 8, 2, 64, 1, 100, 1, 5, 3, {1, 1, 1}, {1000, 5000, 40}, 0, 0, 16, 4, 128, 8, NULL, 0, 0},
    {1, 0, 8, 2, 128, 1, 0, 0, 0, 3, {4, 1, 7}, {40, 1000, 7}, 0, 0, 16, 4, 128, 2,
     "rows 4,1,7", 0, 0},
    {1, 1, 8, 2, 64, 1, 0, 0, 0, 3, {1, 1, 1}, {1, 33, 1000}, 0, 0, 16, 4, 128, 2, NULL, 0, 0},
    {1, 0, 4, 2, 24, 1, 0, 0, 0, 3, {1, 1, 1}, {1, 33, 1000}, 0, 0, 16, 2, 128, 2, NULL, 0, 0},
    {1, 0, 4, 1, 256, 1, 0, 0, 0, 3, {1, 1, 1}, {31, 1000, 5000}, 0, 0, 16, 4, 128, 2, NULL, 0, 0},
};

void ktest_attention(kt *t)
{
    for (size_t i = 0; i < ARRAY_LEN(prefill_cases); i++)
        run_case(t, &prefill_cases[i], 0);
    for (size_t i = 0; i < ARRAY_LEN(decode_cases); i++)
        run_case(t, &decode_cases[i], 0);
    for (size_t i = 0; i < ARRAY_LEN(kv8_cases); i++)
        run_case(t, &kv8_cases[i], 1);
}
