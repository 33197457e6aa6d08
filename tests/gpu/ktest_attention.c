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
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/kiln_step.h" /* not on the include path of tests/ */
#include "ktest.h"
#include "posenc.h"
#include "util.h"

#define MAXS 8

typedef struct acase {
    int decode;                  /* attn_decode + attn_combine, else attn_prefill */
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

static void case_name(const acase *c, int T, char *name, size_t cap)
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
    if (c->decode)
        snprintf(name, cap, "attention/decode HD=%d NH=%d NKV=%d%s seqs=%d%s%s", c->hd, c->nh,
                 c->nkv, opt, c->n_seqs, c->tag ? " " : "", c->tag ? c->tag : "");
    else
        snprintf(name, cap, "attention/prefill HD=%d NH=%d NKV=%d%s T=%d%s%s", c->hd, c->nh,
                 c->nkv, opt, T, c->tag ? " " : "", c->tag ? c->tag : "");
}

static void run_case(kt *t, const acase *c)
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
    case_name(c, T, name, sizeof name);
    if (!kt_want(t, name))
        return;

    /* tile / split parameters, as the launch rules in attention.cuh state them */
    const int bm = c->bm ? c->bm : 64, bn = c->bn ? c->bn : (hd > 128 ? 32 : 64);
    const int nsplit = c->nsplit ? c->nsplit : 16, hpc = c->hpc ? c->hpc : 1;
    const int threads = c->threads ? c->threads : 128;
    const char *dt = f16 ? "kiln::f16" : "kiln::bf16";

    /* the step */
    int *tok_pos = xmalloc(sizeof(int) * (size_t)T), *tok_seq = xmalloc(sizeof(int) * (size_t)T);
    int *tok_slot = xmalloc(sizeof(int) * (size_t)T), *zeros = xcalloc((size_t)T, sizeof(int));
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

    /* the cache: NaN everywhere but the keys of each sequence */
    size_t cache_n = (size_t)nblocks * KILN_BLOCK * (size_t)kw;
    uint16_t *kc = xmalloc(sizeof(uint16_t) * cache_n), *vc = xmalloc(sizeof(uint16_t) * cache_n);
    for (size_t i = 0; i < cache_n; i++)
        kc[i] = vc[i] = 0xFFFF;
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
        for (int j = 0; j < kvlen[s]; j++) {
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
    if (!c->decode) {
        char tile[64] = "";
        if (c->bm || c->bn)
            snprintf(tile, sizeof tile, ", %d, %d", bm, bn);
        src = xasprintf("#include \"attention.cuh\"\n"
                        "extern \"C\" __global__ void __launch_bounds__(%d)\n"
                        "kt_attn_prefill(const kiln_step st, const %s *q, const %s *k_cache,\n"
                        "                const %s *v_cache, %s *out, float scale, float softcap,\n"
                        "                const float *alibi_slopes)\n"
                        "{\n"
                        "    kiln::attn_prefill<%s, %d, %d, %d, %d, %d, %d, %d%s>(\n"
                        "        st, q, k_cache, v_cache, out, scale, softcap, alibi_slopes);\n"
                        "}\n",
                        2 * bm, dt, dt, dt, dt, dt, nh, nkv, hd, c->causal, c->window, c->alibi,
                        c->softcap > 0, tile);
    } else {
        src = xasprintf("#include \"attention.cuh\"\n"
                        "extern \"C\" __global__ void __launch_bounds__(%d)\n"
                        "kt_attn_decode(const kiln_step st, const %s *q, const %s *k_cache,\n"
                        "               const %s *v_cache, float *ws, float scale, float softcap,\n"
                        "               const float *alibi_slopes)\n"
                        "{\n"
                        "    kiln::attn_decode<%s, %d, %d, %d, %d, %d, %d, %d, %d, %d, %d>(\n"
                        "        st, q, k_cache, v_cache, ws, scale, softcap, alibi_slopes);\n"
                        "}\n"
                        "extern \"C\" __global__ void __launch_bounds__(128)\n"
                        "kt_attn_combine(const kiln_step st, const float *ws, %s *out)\n"
                        "{\n"
                        "    kiln::attn_combine<%s, %d, %d, %d, 128>(st, ws, out);\n"
                        "}\n",
                        threads, dt, dt, dt, dt, nh, nkv, hd, c->causal, c->window, c->alibi,
                        c->softcap > 0, nsplit, hpc, threads, dt, dt, nh, hd, nsplit);
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
    CUdeviceptr d_k = kt_upload(t, kc, sizeof(uint16_t) * cache_n);
    CUdeviceptr d_v = kt_upload(t, vc, sizeof(uint16_t) * cache_n);
    CUdeviceptr d_sl = kt_upload(t, slopes, sizeof slopes);
    CUdeviceptr d_out = kt_alloc(t, sizeof(uint16_t) * qn); /* poisoned: NaN */
    CUdeviceptr d_ws = 0;
    if (!c->decode) {
        CUfunction f = kt_func(t, mod, "kt_attn_prefill");
        size_t smem = (size_t)(bm + 2 * bn) * (size_t)(hd + 8) * 2;
        void *args[] = {&st, &d_q, &d_k, &d_v, &d_out, &scale_f, &softcap, &d_sl};
        kt_launch(t, f, "attn_prefill", (unsigned)((T + bm - 1) / bm + ns), (unsigned)nh, 1,
                  (unsigned)(2 * bm), smem, args);
    } else {
        size_t ws_n = (size_t)ns * nh * nsplit * (size_t)(hd + 2);
        d_ws = kt_alloc(t, sizeof(float) * ws_n); /* poisoned: every record must be written */
        CUfunction fd = kt_func(t, mod, "kt_attn_decode");
        CUfunction fc = kt_func(t, mod, "kt_attn_combine");
        void *args[] = {&st, &d_q, &d_k, &d_v, &d_ws, &scale_f, &softcap, &d_sl};
        kt_launch(t, fd, "attn_decode", (unsigned)nsplit, (unsigned)(nh / hpc), (unsigned)ns,
                  (unsigned)threads, 0, args);
        void *cargs[] = {&st, &d_ws, &d_out};
        kt_launch(t, fc, "attn_combine", (unsigned)nh, (unsigned)ns, 1, 128, 0, cargs);
    }
    uint16_t *oh = xmalloc(sizeof(uint16_t) * qn);
    kt_download(t, oh, d_out, sizeof(uint16_t) * qn);

    /* compare the rows the kernel owns; decode: the other rows must still be poison */
    float *got = xmalloc(sizeof(float) * qn), *ref = xmalloc(sizeof(float) * qn);
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
            ref[n] = want[(size_t)tk * qw + e];
            n++;
        }
    }
    if (touched) {
        char detail[160];
        snprintf(detail, sizeof detail, "%d elements written in rows that are not a sequence's last",
                 touched);
        kt_result(t, name, 0, detail);
    } else if (!kt_check(t, name, got, ref, n, 1e-2)) {
        /* first mismatching (token, head, dim), with kt_check's "far" rule or non-finite */
        for (size_t i = 0; i < n; i++) {
            double d = fabs((double)got[i] - ref[i]);
            if (!isfinite(got[i]) || d > 1e-2 + 5e-2 * fabs(ref[i])) {
                int tk = row_of[i / (size_t)qw], e = (int)(i % (size_t)qw);
                int s = tok_seq[tk];
                printf("     first bad: token %d (seq %d, pos %d, kvlen %d) head %d (kv head %d) "
                       "dim %d: got %g want %g\n",
                       tk, s, tok_pos[tk], kvlen[s], e / hd, e / hd / (nh / nkv), e % hd, got[i],
                       ref[i]);
                break;
            }
        }
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
    free(ref);
    free(row_of);
}

/* Prefill: decode = 0. Fields: decode f16 nh nkv hd causal window alibi softcap n_seqs
 * {rows} {kvlen} bm bn nsplit hpc threads qamp tag */
static const acase prefill_cases[] = {
    /* one sequence, GQA, the main shape */
    {0, 0, 8, 2, 128, 1, 0, 0, 0, 1, {1}, {0}, 0, 0, 0, 0, 0, 2, NULL},
    {0, 0, 8, 2, 128, 1, 0, 0, 0, 1, {7}, {0}, 0, 0, 0, 0, 0, 2, NULL},
    {0, 0, 8, 2, 128, 1, 0, 0, 0, 1, {64}, {0}, 0, 0, 0, 0, 0, 2, NULL},
    {0, 0, 8, 2, 128, 1, 0, 0, 0, 1, {200}, {0}, 0, 0, 0, 0, 0, 2, NULL},
    /* several sequences: MHA, MQA */
    {0, 0, 4, 4, 64, 1, 0, 0, 0, 3, {5, 33, 70}, {0}, 0, 0, 0, 0, 0, 2, "seqs 5,33,70"},
    {0, 0, 8, 1, 64, 1, 0, 0, 0, 3, {5, 33, 70}, {0}, 0, 0, 0, 0, 0, 2, "seqs 5,33,70"},
    /* chunked prefill: earlier keys cached (kvlen > rows), a 1-row sequence among them */
    {0, 0, 8, 2, 128, 1, 0, 0, 0, 4, {16, 40, 1, 70}, {100, 77, 300, 70}, 0, 0, 0, 0, 0, 2,
     "chunked"},
    /* BERT: bidirectional; also with cached keys beyond the rows */
    {0, 0, 4, 4, 64, 0, 0, 0, 0, 3, {5, 33, 70}, {0}, 0, 0, 0, 0, 0, 2, "seqs 5,33,70"},
    {0, 0, 4, 2, 64, 0, 0, 0, 0, 2, {10, 40}, {50, 40}, 0, 0, 0, 0, 0, 2, "chunked"},
    /* sliding window */
    {0, 0, 8, 2, 64, 1, 16, 0, 0, 3, {70, 45, 3}, {0}, 0, 0, 0, 0, 0, 2, NULL},
    {0, 0, 8, 2, 64, 1, 16, 0, 0, 2, {20, 70}, {90, 70}, 0, 0, 0, 0, 0, 2, "chunked"},
    /* ALiBi (BLOOM slopes, 6 heads), softcap, everything together */
    {0, 0, 6, 6, 64, 1, 0, 1, 0, 3, {5, 33, 70}, {0}, 0, 0, 0, 0, 0, 2, NULL},
    {0, 0, 8, 4, 128, 1, 0, 0, 30, 2, {33, 70}, {0}, 0, 0, 0, 0, 0, 40, NULL},
    {0, 0, 6, 2, 64, 1, 16, 1, 5, 2, {70, 45}, {0}, 0, 0, 0, 0, 0, 8, NULL},
    /* head dims */
    {0, 0, 4, 2, 32, 1, 0, 0, 0, 3, {5, 33, 70}, {0}, 0, 0, 0, 0, 0, 2, NULL},
    {0, 0, 4, 1, 48, 1, 0, 0, 0, 3, {5, 33, 70}, {0}, 0, 0, 0, 0, 0, 2, NULL},
    {0, 0, 2, 2, 16, 0, 0, 0, 0, 3, {5, 33, 70}, {0}, 0, 0, 0, 0, 0, 2, NULL},
    {0, 0, 4, 2, 80, 1, 0, 0, 0, 2, {33, 70}, {0}, 0, 0, 0, 0, 0, 2, NULL},
    {0, 0, 4, 2, 96, 1, 0, 0, 0, 2, {33, 70}, {0}, 0, 0, 0, 0, 0, 2, NULL},
    {0, 0, 4, 1, 256, 1, 0, 0, 0, 2, {70, 33}, {0}, 0, 0, 0, 0, 0, 2, NULL},
    /* HD % 16 != 0: the CUDA-core fallback */
    {0, 0, 4, 2, 24, 1, 0, 0, 0, 3, {5, 33, 70}, {0, 60, 0}, 0, 0, 0, 0, 0, 2, NULL},
    {0, 0, 6, 3, 24, 1, 16, 1, 5, 2, {70, 20}, {70, 50}, 0, 0, 0, 0, 0, 8, NULL},
    {0, 0, 4, 4, 40, 0, 0, 0, 0, 2, {33, 9}, {0}, 0, 0, 0, 0, 0, 2, NULL},
    /* f16 */
    {0, 1, 4, 2, 64, 1, 0, 0, 0, 3, {5, 33, 70}, {0}, 0, 0, 0, 0, 0, 2, NULL},
    /* other tiles */
    {0, 0, 4, 2, 64, 1, 0, 0, 0, 3, {5, 33, 70}, {40, 33, 100}, 16, 32, 0, 0, 0, 2, "BM=16 BN=32"},
    {0, 0, 8, 2, 128, 1, 0, 0, 0, 2, {200, 130}, {0}, 128, 64, 0, 0, 0, 2, "BM=128 BN=64"},
    {0, 0, 4, 2, 128, 1, 0, 0, 0, 2, {70, 33}, {0}, 32, 16, 0, 0, 0, 2, "BM=32 BN=16"},
    /* many short sequences (a mixed step: decode-like rows among prefill chunks) */
    {0, 0, 8, 2, 64, 1, 0, 0, 0, 8, {1, 2, 3, 31, 32, 33, 64, 65}, {500, 2, 40, 31, 64, 33, 64, 100},
     0, 0, 0, 0, 0, 2, "8 seqs"},
};

static const acase decode_cases[] = {
    /* GQA, 128: kvlen 1 .. 5000 (several splits, empty splits) */
    {1, 0, 8, 2, 128, 1, 0, 0, 0, 1, {1}, {5000}, 0, 0, 16, 4, 128, 2, "kv 5000"},
    {1, 0, 8, 2, 128, 1, 0, 0, 0, 3, {1, 1, 1}, {1, 31, 33}, 0, 0, 16, 4, 128, 2, "kv 1,31,33"},
    {1, 0, 8, 2, 128, 1, 0, 0, 0, 8, {1, 1, 1, 1, 1, 1, 1, 1},
     {1, 31, 32, 33, 1000, 5000, 64, 7}, 0, 0, 16, 4, 128, 2, "kv 1..5000"},
    /* MQA (all 8 heads in one CTA), MHA, smaller HPC */
    {1, 0, 8, 1, 64, 1, 0, 0, 0, 3, {1, 1, 1}, {32, 1000, 5000}, 0, 0, 16, 8, 128, 2, NULL},
    {1, 0, 8, 1, 64, 1, 0, 0, 0, 3, {1, 1, 1}, {32, 1000, 5000}, 0, 0, 8, 2, 256, 2, "HPC=2"},
    {1, 0, 4, 4, 64, 1, 0, 0, 0, 3, {1, 1, 1}, {33, 200, 1000}, 0, 0, 16, 1, 128, 2, NULL},
    /* alibi, softcap, window */
    {1, 0, 6, 6, 64, 1, 0, 1, 0, 3, {1, 1, 1}, {31, 1000, 33}, 0, 0, 16, 1, 128, 2, NULL},
    {1, 0, 8, 4, 128, 1, 0, 0, 30, 3, {1, 1, 1}, {31, 1000, 5000}, 0, 0, 16, 2, 128, 40, NULL},
    {1, 0, 8, 2, 64, 1, 16, 0, 0, 3, {1, 1, 1}, {70, 5, 1000}, 0, 0, 16, 4, 128, 2, NULL},
    {1, 0, 8, 2, 64, 1, 100, 1, 5, 3, {1, 1, 1}, {1000, 5000, 40}, 0, 0, 16, 4, 128, 8, NULL},
    /* bidirectional; several rows per sequence in the step (only each last row is written) */
    {1, 0, 4, 2, 64, 0, 0, 0, 0, 3, {1, 1, 1}, {33, 1000, 2}, 0, 0, 16, 2, 128, 2, NULL},
    {1, 0, 8, 2, 128, 1, 0, 0, 0, 3, {4, 1, 7}, {40, 1000, 7}, 0, 0, 16, 4, 128, 2, "rows 4,1,7"},
    /* head dims, the fixtures' small ones included */
    {1, 0, 4, 2, 24, 1, 0, 0, 0, 3, {1, 1, 1}, {1, 33, 1000}, 0, 0, 16, 2, 128, 2, NULL},
    {1, 0, 2, 2, 16, 1, 0, 0, 0, 3, {1, 1, 1}, {1, 33, 1000}, 0, 0, 16, 1, 128, 2, NULL},
    {1, 0, 4, 2, 32, 1, 0, 0, 0, 3, {1, 1, 1}, {1, 33, 1000}, 0, 0, 16, 2, 128, 2, NULL},
    {1, 0, 4, 1, 48, 1, 0, 0, 0, 3, {1, 1, 1}, {1, 33, 1000}, 0, 0, 16, 4, 128, 2, NULL},
    {1, 0, 4, 2, 80, 1, 0, 0, 0, 3, {1, 1, 1}, {1, 33, 1000}, 0, 0, 16, 2, 128, 2, NULL},
    {1, 0, 4, 1, 256, 1, 0, 0, 0, 3, {1, 1, 1}, {31, 1000, 5000}, 0, 0, 16, 4, 128, 2, NULL},
    /* f16; one split; 2 warps */
    {1, 1, 8, 2, 64, 1, 0, 0, 0, 3, {1, 1, 1}, {1, 33, 1000}, 0, 0, 16, 4, 128, 2, NULL},
    {1, 0, 8, 2, 64, 1, 0, 0, 0, 3, {1, 1, 1}, {1, 33, 1000}, 0, 0, 1, 4, 64, 2, "NSPLIT=1"},
};

void ktest_attention(kt *t)
{
    for (size_t i = 0; i < ARRAY_LEN(prefill_cases); i++)
        run_case(t, &prefill_cases[i]);
    for (size_t i = 0; i < ARRAY_LEN(decode_cases); i++)
        run_case(t, &decode_cases[i]);
}
