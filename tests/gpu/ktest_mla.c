/* ktest_mla — kernel tests of templates/mla.cuh (multi-head latent attention; see ktest.h).
 *
 * Each case builds a step of several sequences (rows of each = its last positions, so a
 * sequence with kvlen > rows is a chunked prefill over latents already cached; rows = 1 is a
 * decode), a paged latent cache [blocks][KILN_BLOCK][RANK + DR] with a SHUFFLED block table, NaN
 * in every row that is not a key of some sequence, and random q_nope, q_pe, kv_b rounded through
 * bf16. The step's own rows are written by mla_cache first (from latent and k_pe buffers with row
 * strides wider than a row, as slices of one projection), then mla_attn reads them.
 *
 * The reference is compiler/ref.c's op_mla, the plain (not absorbed) form, in double: per head
 * h the keys [W_k[h] c_j ; k_pe_j] and values W_v[h] c_j, causal softmax of q.k * scale over
 * keys [0, p], out = sum p_j v_j. So the test also checks the absorption algebra of the kernel.
 * With rotation (ROT 1: pairs (2i, 2i+1), DeepSeek's; 2: halves), mla_cache rotates the step's
 * k_pe at its position and mla_attn each head's q_pe, from a yarn-like inv_freq table and a
 * rope_scale != 1; the reference rotates the same values in double (earlier keys are cached as
 * they come: they were rotated when written).
 * q_nope and q_pe are read as the [nope | pe] heads of one q buffer in some cases, as separate
 * buffers in others. The cache rows the step wrote are compared with the inputs too.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/kiln_step.h" /* not on the include path of tests/ */
#include "ktest.h"
#include "util.h"

#define MAXS 6

typedef struct mcase {
    int nh, dn, dr, dv, rank;
    int n_seqs;
    int rows[MAXS];  /* rows of each sequence in the step (its last positions) */
    int kvlen[MAXS]; /* keys of each sequence, the step's included; 0: = rows */
    int fused_q;     /* q_nope and q_pe are the [nope | pe] heads of one buffer */
    int rot;         /* 0: inputs rotated; 1: interleaved pairs; 2: halves */
    int threads;
    const char *tag;
} mcase;

static float bf(float x) { return util_bf16_to_f32(util_f32_to_bf16(x)); }

/* x [dr] rotated in place at position pos (ROT 1: pairs (2i, 2i+1); 2: (i, i + dr/2)). */
static void rotate(float *x, int dr, int rot, int pos, const float *inv, float scale)
{
    for (int i = 0; i < dr / 2; i++) {
        double ang = (double)((float)pos * inv[i]);
        double c = cos(ang) * scale, sn = sin(ang) * scale;
        int a = rot == 1 ? 2 * i : i, b = rot == 1 ? 2 * i + 1 : i + dr / 2;
        double xa = x[a], xb = x[b];
        x[a] = (float)(xa * c - xb * sn);
        x[b] = (float)(xb * c + xa * sn);
    }
}

static void run_case(kt *t, const mcase *c)
{
    const int nh = c->nh, dn = c->dn, dr = c->dr, dv = c->dv, rk = c->rank, ns = c->n_seqs;
    const int row = rk + dr, hw = dn + dv;
    if (dn + dr > 1024) {
        fprintf(stderr, "ktest_mla: bad case (nope + rope %d > 1024)\n", dn + dr);
        exit(2);
    }
    int kvlen[MAXS], seq_start[MAXS + 1], T = 0;
    seq_start[0] = 0;
    for (int s = 0; s < ns; s++) {
        kvlen[s] = c->kvlen[s] ? c->kvlen[s] : c->rows[s];
        if (c->rows[s] < 1 || c->rows[s] > kvlen[s]) {
            fprintf(stderr, "ktest_mla: bad case (seq %d: rows %d, kvlen %d)\n", s, c->rows[s],
                    kvlen[s]);
            exit(2);
        }
        T += c->rows[s];
        seq_start[s + 1] = T;
    }
    char name[200];
    static const char *rots[] = {"", " rope-interleaved", " rope-halves"};
    snprintf(name, sizeof name, "mla/attn NH=%d DN=%d DR=%d DV=%d RANK=%d seqs=%d T=%d%s%s%s%s", nh,
             dn, dr, dv, rk, ns, T, c->fused_q ? " fused-q" : "", rots[c->rot], c->tag ? " " : "",
             c->tag ? c->tag : "");
    if (!kt_want(t, name))
        return;

    /* the step: a shuffled block table, unused columns at the NaN scratch block 0 */
    int *tok_pos = xmalloc(sizeof(int) * (size_t)T), *tok_seq = xmalloc(sizeof(int) * (size_t)T);
    int *tok_slot = xmalloc(sizeof(int) * (size_t)T), *zeros = xcalloc((size_t)T, sizeof(int));
    int max_blocks = 1, total_blocks = 0, maxkv = 1;
    for (int s = 0; s < ns; s++) {
        int nb = (kvlen[s] + KILN_BLOCK - 1) / KILN_BLOCK;
        if (nb + 1 > max_blocks)
            max_blocks = nb + 1;
        total_blocks += nb;
        if (kvlen[s] > maxkv)
            maxkv = kvlen[s];
    }
    const int nblocks = 1 + total_blocks + 2;
    int *perm = xmalloc(sizeof(int) * (size_t)(nblocks - 1));
    for (int i = 0; i < nblocks - 1; i++)
        perm[i] = i + 1;
    for (int i = nblocks - 2; i > 0; i--) {
        int j = (int)((kt_randf(t) * 0.5f + 0.5f) * (float)(i + 1));
        j = j < 0 ? 0 : j > i ? i : j;
        int x = perm[i];
        perm[i] = perm[j];
        perm[j] = x;
    }
    int *bt = xcalloc((size_t)(ns * max_blocks), sizeof(int));
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

    /* a yarn-like table: base 10000, rope_scale 1.2 */
    float *inv = xmalloc(sizeof(float) * (size_t)(dr / 2 + 1));
    for (int i = 0; i < dr / 2; i++)
        inv[i] = (float)(1.0 / pow(10000.0, (double)(2 * i) / dr));
    float rope_scale = c->rot ? 1.2f : 1.0f;

    /* latents and rope keys of every key (bf16-exact); the earlier ones go into the cache now,
     * the step's own through the latent / k_pe buffers (row stride rk + dr + 8) and mla_cache */
    float *lat[MAXS];
    size_t cache_n = (size_t)nblocks * KILN_BLOCK * (size_t)row;
    uint16_t *cache = xmalloc(sizeof(uint16_t) * cache_n);
    for (size_t i = 0; i < cache_n; i++)
        cache[i] = 0xFFFF;
    const int in_stride = row + 8;
    uint16_t *in_h = xmalloc(sizeof(uint16_t) * (size_t)T * in_stride);
    for (size_t i = 0; i < (size_t)T * in_stride; i++)
        in_h[i] = 0xFFFF; /* the gap columns are NaN: never copied */
    for (int s = 0; s < ns; s++) {
        lat[s] = xmalloc(sizeof(float) * (size_t)kvlen[s] * row);
        kt_fill(t, lat[s], (size_t)kvlen[s] * row, 1.0f);
        for (int j = 0; j < kvlen[s]; j++) {
            float *lr = lat[s] + (size_t)j * row;
            for (int e = 0; e < row; e++)
                lr[e] = bf(lr[e]);
            int first_step_pos = kvlen[s] - c->rows[s];
            if (j < first_step_pos) {
                size_t at = ((size_t)bt[s * max_blocks + j / KILN_BLOCK] * KILN_BLOCK +
                             (size_t)(j % KILN_BLOCK)) * (size_t)row;
                for (int e = 0; e < row; e++)
                    cache[at + e] = util_f32_to_bf16(lr[e]);
            } else {
                int tk = seq_start[s] + j - first_step_pos;
                for (int e = 0; e < row; e++)
                    in_h[(size_t)tk * in_stride + e] = util_f32_to_bf16(lr[e]);
                /* what mla_cache stores: k_pe rotated at position j, rounded to bf16 */
                if (c->rot) {
                    rotate(lr + rk, dr, c->rot, j, inv, rope_scale);
                    for (int e = rk; e < row; e++)
                        lr[e] = bf(lr[e]);
                }
            }
        }
    }

    /* q (one [T, nh, dn + dr] buffer; the separate layout copies it out) and kv_b, scaled so
     * that the scores spread: q.k ~ N(0, 1) before the scale */
    const int qw = nh * (dn + dr);
    float *q = xmalloc(sizeof(float) * (size_t)T * qw);
    kt_fill(t, q, (size_t)T * qw, 1.0f);
    for (size_t i = 0; i < (size_t)T * qw; i++)
        q[i] = bf(q[i]);
    size_t wn = (size_t)nh * hw * rk;
    float *w = xmalloc(sizeof(float) * wn);
    kt_fill(t, w, wn, 2.0f / sqrtf((float)rk));
    for (size_t i = 0; i < wn; i++)
        w[i] = bf(w[i]);
    const double scale = 1.0 / sqrt((double)(dn + dr));
    float scale_f = (float)scale;

    /* reference: op_mla's plain form in double */
    size_t on = (size_t)T * nh * dv;
    float *want = xmalloc(sizeof(float) * on);
    /* kx [kvlen][nh][dn + dv]: kv_b of every latent of the sequence, once per sequence */
    double *kx = xmalloc(sizeof(double) * (size_t)maxkv * nh * hw);
    double *sc = xmalloc(sizeof(double) * (size_t)maxkv);
    for (int tk = 0; tk < T; tk++) {
        int s = tok_seq[tk], p = tok_pos[tk];
        if (tk == seq_start[s])
            for (int j = 0; j < kvlen[s]; j++)
                for (int o = 0; o < nh * hw; o++) {
                    double a = 0;
                    for (int r = 0; r < rk; r++)
                        a += (double)w[(size_t)o * rk + r] * lat[s][(size_t)j * row + r];
                    kx[(size_t)j * nh * hw + o] = a;
                }
        for (int h = 0; h < nh; h++) {
            float qrow[1024];
            memcpy(qrow, q + (size_t)tk * qw + (size_t)h * (dn + dr), sizeof(float) * (size_t)(dn + dr));
            if (c->rot)
                rotate(qrow + dn, dr, c->rot, p, inv, rope_scale);
            const float *qh = qrow;
            const double *kh = kx + (size_t)h * hw; /* key j of head h at kh + j * nh * hw */
            double mx = -INFINITY;
            for (int j = 0; j <= p; j++) {
                double d = 0;
                for (int e = 0; e < dn; e++)
                    d += (double)qh[e] * kh[(size_t)j * nh * hw + e];
                for (int e = 0; e < dr; e++)
                    d += (double)qh[dn + e] * lat[s][(size_t)j * row + rk + e];
                sc[j] = d * scale;
                if (sc[j] > mx)
                    mx = sc[j];
            }
            double sum = 0;
            for (int j = 0; j <= p; j++) {
                sc[j] = exp(sc[j] - mx);
                sum += sc[j];
            }
            for (int e = 0; e < dv; e++) {
                double a = 0;
                for (int j = 0; j <= p; j++)
                    a += sc[j] * kh[(size_t)j * nh * hw + dn + e];
                want[((size_t)tk * nh + h) * dv + e] = (float)(a / sum);
            }
        }
    }

    /* the kernels */
    const int threads = c->threads ? c->threads : 128;
    char *src = xasprintf("#include \"mla.cuh\"\n"
                          "extern \"C\" __global__ void __launch_bounds__(128)\n"
                          "kt_mla_cache(const kiln_step st, const kiln::bf16 *latent,\n"
                          "             const kiln::bf16 *k_pe, int latent_stride, int kpe_stride,\n"
                          "             kiln::bf16 *cache, const float *inv_freq, float rope_scale)\n"
                          "{\n"
                          "    kiln::mla_cache<kiln::bf16, %d, %d, %d, 128>(st, latent, k_pe,\n"
                          "        latent_stride, kpe_stride, cache, inv_freq, rope_scale);\n"
                          "}\n"
                          "extern \"C\" __global__ void __launch_bounds__(%d)\n"
                          "kt_mla_attn(const kiln_step st, const kiln::bf16 *q_nope,\n"
                          "            const kiln::bf16 *q_pe, int qn_row, int qn_head, int qp_row,\n"
                          "            int qp_head, const kiln::bf16 *cache, const kiln::bf16 *kv_b,\n"
                          "            kiln::bf16 *out, float scale, const float *inv_freq,\n"
                          "            float rope_scale)\n"
                          "{\n"
                          "    kiln::mla_attn<kiln::bf16, %d, %d, %d, %d, %d, %d, %d>(st, q_nope,\n"
                          "        q_pe, qn_row, qn_head, qp_row, qp_head, cache, kv_b, out, scale,\n"
                          "        inv_freq, rope_scale);\n"
                          "}\n",
                          rk, dr, c->rot, threads, nh, dn, dr, dv, rk, c->rot, threads);
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

    uint16_t *qh = kt_to_bf16(q, (size_t)T * qw), *wh = kt_to_bf16(w, wn);
    /* separate layout: q_nope [T, nh*dn] and q_pe [T, nh*dr] buffers of their own */
    uint16_t *qnh = xmalloc(sizeof(uint16_t) * (size_t)T * nh * dn);
    uint16_t *qph = xmalloc(sizeof(uint16_t) * (size_t)T * nh * dr);
    for (int tk = 0; tk < T; tk++)
        for (int h = 0; h < nh; h++) {
            memcpy(qnh + ((size_t)tk * nh + h) * dn, qh + (size_t)tk * qw + (size_t)h * (dn + dr),
                   sizeof(uint16_t) * (size_t)dn);
            memcpy(qph + ((size_t)tk * nh + h) * dr,
                   qh + (size_t)tk * qw + (size_t)h * (dn + dr) + dn, sizeof(uint16_t) * (size_t)dr);
        }
    CUdeviceptr d_q = kt_upload(t, qh, sizeof(uint16_t) * (size_t)T * qw);
    CUdeviceptr d_qn = kt_upload(t, qnh, sizeof(uint16_t) * (size_t)T * nh * dn);
    CUdeviceptr d_qp = kt_upload(t, qph, sizeof(uint16_t) * (size_t)T * nh * dr);
    CUdeviceptr d_w = kt_upload(t, wh, sizeof(uint16_t) * wn);
    CUdeviceptr d_in = kt_upload(t, in_h, sizeof(uint16_t) * (size_t)T * in_stride);
    CUdeviceptr d_cache = kt_upload(t, cache, sizeof(uint16_t) * cache_n);
    CUdeviceptr d_out = kt_alloc(t, sizeof(uint16_t) * on); /* poisoned: NaN */
    CUdeviceptr d_kpe = d_in + sizeof(uint16_t) * (size_t)rk;
    CUdeviceptr d_inv = kt_upload(t, inv, sizeof(float) * (size_t)(dr / 2 + 1));
    int lstride = in_stride, kstride = in_stride;
    CUfunction fc = kt_func(t, mod, "kt_mla_cache");
    void *cargs[] = {&st, &d_in, &d_kpe, &lstride, &kstride, &d_cache, &d_inv, &rope_scale};
    kt_launch(t, fc, "mla_cache", (unsigned)T, 1, 1, 128, 0, cargs);

    CUdeviceptr d_qnope = c->fused_q ? d_q : d_qn;
    CUdeviceptr d_qpe = c->fused_q ? d_q + sizeof(uint16_t) * (size_t)dn : d_qp;
    int qn_row = c->fused_q ? qw : nh * dn, qn_head = c->fused_q ? dn + dr : dn;
    int qp_row = c->fused_q ? qw : nh * dr, qp_head = c->fused_q ? dn + dr : dr;
    CUfunction fa = kt_func(t, mod, "kt_mla_attn");
    void *aargs[] = {&st,     &d_qnope, &d_qpe,   &qn_row, &qn_head,  &qp_row,
                     &qp_head, &d_cache, &d_w,     &d_out,  &scale_f, &d_inv, &rope_scale};
    kt_launch(t, fa, "mla_attn", (unsigned)T, (unsigned)nh, 1, (unsigned)threads, 0, aargs);

    /* the cache rows the step wrote */
    uint16_t *cache_got = xmalloc(sizeof(uint16_t) * cache_n);
    kt_download(t, cache_got, d_cache, sizeof(uint16_t) * cache_n);
    int bad_rows = 0; /* the latent bit-exact; k_pe as the reference rotated it, within bf16 */
    for (int tk = 0; tk < T && !t->compile_only; tk++) {
        const uint16_t *got = cache_got + (size_t)tok_slot[tk] * row;
        const float *wantk = lat[tok_seq[tk]] + (size_t)tok_pos[tk] * row + rk;
        int bad = memcmp(got, in_h + (size_t)tk * in_stride, sizeof(uint16_t) * (size_t)rk) != 0;
        for (int e = 0; e < dr; e++) {
            float g = util_bf16_to_f32(got[rk + e]);
            bad |= !(fabsf(g - wantk[e]) <= 1e-2f * (1.0f + fabsf(wantk[e])));
        }
        bad_rows += bad;
    }
    char cname[240];
    snprintf(cname, sizeof cname, "mla/cache RANK=%d DR=%d T=%d%s", rk, dr, T, rots[c->rot]);
    char detail[96];
    snprintf(detail, sizeof detail, "%d of %d step rows differ from [latent | k_pe]", bad_rows, T);
    kt_result(t, cname, bad_rows == 0, bad_rows ? detail : "rows as expected");

    uint16_t *oh = xmalloc(sizeof(uint16_t) * on);
    kt_download(t, oh, d_out, sizeof(uint16_t) * on);
    float *got = kt_from_bf16(oh, on);
    if (!kt_check(t, name, got, want, on, 1e-2)) {
        for (size_t i = 0; i < on; i++) {
            double d = fabs((double)got[i] - want[i]);
            if (!isfinite(got[i]) || d > 1e-2 + 5e-2 * fabs(want[i])) {
                int tk = (int)(i / ((size_t)nh * dv)), e = (int)(i % ((size_t)nh * dv));
                printf("     first bad: token %d (seq %d, pos %d, kvlen %d) head %d dim %d: got %g "
                       "want %g\n",
                       tk, tok_seq[tk], tok_pos[tk], kvlen[tok_seq[tk]], e / dv, e % dv, got[i],
                       want[i]);
                break;
            }
        }
    }

    CUdeviceptr frees[] = {d_pos, d_zero, d_seq, d_slot, d_start, d_kvlen, d_bt, d_q,
                           d_qn,  d_qp,   d_w,   d_in,   d_cache, d_out, d_inv};
    for (size_t i = 0; i < ARRAY_LEN(frees); i++)
        kt_free(t, frees[i]);
    for (int s = 0; s < ns; s++)
        free(lat[s]);
    free(tok_pos);
    free(tok_seq);
    free(tok_slot);
    free(zeros);
    free(perm);
    free(bt);
    free(cache);
    free(in_h);
    free(q);
    free(w);
    free(want);
    free(kx);
    free(sc);
    free(qh);
    free(wh);
    free(qnh);
    free(qph);
    free(cache_got);
    free(inv);
    free(oh);
    free(got);
}

/* Fields: nh dn dr dv rank n_seqs {rows} {kvlen} fused_q rot threads tag */
static const mcase cases[] = {
    /* the deepseek_v2 fixture's shape: prefill of one and of several sequences */
    {4, 16, 16, 16, 32, 1, {24}, {0}, 0, 0, 0, "fixture"},
    {4, 16, 16, 16, 32, 3, {5, 33, 40}, {0}, 1, 1, 0, "fixture"},
    /* chunked prefill and decode rows over cached latents (several blocks, a shuffled table) */
    {4, 16, 16, 16, 32, 4, {16, 1, 1, 40}, {100, 77, 1, 70}, 1, 1, 64, "chunked"},
    /* DeepSeek-V2-Lite's attention shape (16 heads, nope 128, rope 64, v 128, latent 512) */
    {16, 128, 64, 128, 512, 2, {1, 1}, {300, 33}, 1, 1, 256, "V2-Lite decode"},
    {16, 128, 64, 128, 512, 2, {20, 7}, {20, 90}, 0, 0, 128, "V2-Lite prefill"},
    /* a latent that is not a multiple of 32, odd head dims, the other pairing */
    {2, 24, 8, 40, 48, 2, {9, 3}, {9, 50}, 0, 2, 96, "odd dims"},
};

void ktest_mla(kt *t)
{
    for (size_t i = 0; i < ARRAY_LEN(cases); i++)
        run_case(t, &cases[i]);
}
