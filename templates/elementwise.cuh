// elementwise.cuh — the memory-bound ops of a transformer step: embedding lookup, RMSNorm and
// LayerNorm (optionally fused with the residual add), rotary embedding fused with the KV-cache
// write, gated activations, unary/binary/scale elementwise ops, last-token gather and pooling.
// Contracts (signatures, grids) are in templates/README.md; the functions computed are those of
// compiler/ref.c and compiler/posenc.c (the CPU reference), in float, stored as DT.
//
// Common rules of this file:
//  - Every width (H, I, W, HD) is a multiple of 8: rows are moved as 16-byte vectors
//    (load8/store8), so every row and every pointer handed in must be 16-byte aligned. The
//    exceptions are rope_kv's inputs when HD is not a multiple of 8 and unpad_heads, which read
//    element by element (the KV cache and the attention then use HD padded to a multiple of 8).
//  - THREADS is the block size the caller launches (a multiple of 32, at most 1024).
//  - A row-wise op keeps its row in registers: thread `tid` owns the 8-element chunks
//    tid, tid + THREADS, ... (NCH = ceil(H / 8 / THREADS) of them, unrolled with compile-time
//    indices), so a norm reads x once and writes once. Pick THREADS so that NCH stays small
//    (H / 8 / THREADS <= 8 keeps it at 64 floats a thread).
//  - Each thread reads the elements it writes before writing them and no thread reads another's
//    elements, so in-place use (res_out == res, or == x) is safe; nothing is __restrict__.
//  - Offsets are computed in 64 bits (a 256k x 8k embedding table has 2^31 elements).
//
// Built with --use_fast_math (compiler/knvrtc.c): expf/sinf/cosf/powf/division become the fast
// approximations. Where that matters (rope angles reach tens of thousands of radians, and the
// dynamic-NTK frequencies must match posenc.c) the math is done in double, which fast-math
// does not touch, and rounded to float where the reference rounds.
#pragma once

#include "common.cuh"

namespace kiln {
namespace ew_detail { // helpers, kept out of kiln:: so other families' names cannot clash

// Chunks of 8 per row and per thread, for a row of H elements over THREADS threads.
template <int H, int THREADS>
struct row_chunks {
    static_assert(H % 8 == 0, "row width must be a multiple of 8 (16-byte vectors)");
    static_assert(THREADS % 32 == 0 && THREADS >= 32 && THREADS <= 1024,
                  "THREADS must be a multiple of 32 in [32, 1024]");
    static constexpr int CH = H / 8;                          // chunks in a row
    static constexpr int NCH = (CH + THREADS - 1) / THREADS;  // chunks per thread (upper bound)
};

// Loads this thread's chunks of the row of x at `xoff` into v (res and res_out: the row at
// `off`; xoff differs only for a norm reading a view, XS below); with RESIDUAL, v = round_DT(x + res)
// and that rounded sum is stored to res_out unless it is null (HF adds the residual in the
// storage dtype, and the norm reads that rounded value). Chunks past the row end are zero.
template <typename DT, int H, int THREADS, int RESIDUAL>
__device__ __forceinline__ void load_row_residual(const DT *x, long long xoff, const DT *res,
                                                  DT *res_out, long long off,
                                                  float (&v)[row_chunks<H, THREADS>::NCH][8])
{
    typedef ew_detail::row_chunks<H, THREADS> RC;
#pragma unroll
    for (int k = 0; k < RC::NCH; k++) {
        const int c = threadIdx.x + k * THREADS;
#pragma unroll
        for (int i = 0; i < 8; i++)
            v[k][i] = 0.f;
        if (c < RC::CH) {
            load8(x + xoff + c * 8, v[k]);
            if (RESIDUAL) {
                float r[8];
                load8(res + off + c * 8, r);
#pragma unroll
                for (int i = 0; i < 8; i++)
                    v[k][i] = to_f(from_f<DT>(v[k][i] + r[i]));
                if (res_out) // null when nothing else reads the sum (e.g. before the final norm)
                    store8(res_out + off + c * 8, v[k]); // exact: v is already representable
            }
        }
    }
}

} // namespace ew_detail

// ---------------------------------------------------------------------------------------------
// embed: out[t] = table[id] (ACC: out[t] = round(out[t] + table[id])), id from SRC:
// 0 tok_ids, 1 tok_pos, 2 tok_type.  Grid (T) x THREADS: block t copies one row of H.
template <typename DT, int H, int SRC, int ACC, int THREADS>
__device__ __forceinline__ void embed(const kiln_step st, const DT *table, DT *out)
{
    KILN_PDL_ENTER();
    typedef ew_detail::row_chunks<H, THREADS> RC;
    static_assert(SRC >= 0 && SRC <= 2, "SRC: 0 tok_ids, 1 tok_pos, 2 tok_type");
    const int t = blockIdx.x;
    if (t >= st.T)
        return;
    const int *ids = SRC == 0 ? st.tok_ids : SRC == 1 ? st.tok_pos : st.tok_type;
    const DT *src = table + (long long)ids[t] * H;
    DT *dst = out + (long long)t * H;
    for (int c = threadIdx.x; c < RC::CH; c += THREADS) {
        float a[8];
        load8(src + c * 8, a);
        if (ACC) {
            float b[8];
            load8(dst + c * 8, b);
#pragma unroll
            for (int i = 0; i < 8; i++)
                a[i] = b[i] + a[i];
        }
        store8(dst + c * 8, a);
    }
}

// embed_part: the token embedding split by vocabulary over tensor-parallel ranks. table holds
// the ROWS rows [row0, row0 + ROWS) of the full table (row0 = rank * ROWS, a launch argument, so
// one compiled kernel serves every rank); out[t] = table[id - row0] for an id inside them, a zero
// row otherwise, and the all-reduce that follows sums the one rank's row into every rank's.
// Ids are below the full vocabulary (the runtime checks them). Grid (T) x THREADS.
template <typename DT, int H, long long ROWS, int THREADS>
__device__ __forceinline__ void embed_part(const kiln_step st, const DT *table, DT *out, int row0)
{
    KILN_PDL_ENTER();
    typedef ew_detail::row_chunks<H, THREADS> RC;
    static_assert(ROWS >= 1, "ROWS >= 1");
    const int t = blockIdx.x;
    if (t >= st.T)
        return;
    const long long r = (long long)st.tok_ids[t] - row0;
    const bool mine = r >= 0 && r < ROWS;
    const DT *src = table + (mine ? r : 0) * H;
    DT *dst = out + (long long)t * H;
    for (int c = threadIdx.x; c < RC::CH; c += THREADS) {
        float a[8];
        if (mine)
            load8(src + c * 8, a);
        else
#pragma unroll
            for (int i = 0; i < 8; i++)
                a[i] = 0.f;
        store8(dst + c * 8, a);
    }
}

// ---------------------------------------------------------------------------------------------
// rms_norm: rows of H, RPT rows per token (RPT > 1 for per-head norms of a [T, RPT*H] tensor).
//   s = RESIDUAL ? round(x + res) : x;   res_out = s (RESIDUAL only)
//   out = s * rsqrt(mean(s^2) + eps) * (UNIT_OFFSET ? 1 + w : w)
// W_ROWS: w is [W_ROWS, H] and row r uses its row r % W_ROWS (W_ROWS = heads: a weight per
// head); the default, 1, is a weight [H].
// XS > 0: x is a view, token t's RPT rows starting at x + t*XS (q or k as a column block of the
// fused qkv row, normed per head in place: XS is that row's width); 0: x is dense like out.
// Grid (T*RPT) x THREADS: block r normalises row r (elements [r*H, (r+1)*H) of out).
template <typename DT, int H, int RPT, int THREADS, int UNIT_OFFSET, int RESIDUAL,
          int W_ROWS = 1, long long XS = 0>
__device__ __forceinline__ void rms_norm(const kiln_step st, const DT *x, const DT *res,
                                         const DT *w, DT *out, DT *res_out, float eps)
{
    KILN_PDL_ENTER();
    typedef ew_detail::row_chunks<H, THREADS> RC;
    static_assert(RPT >= 1, "RPT >= 1");
    static_assert(XS == 0 || (!RESIDUAL && XS % 8 == 0 && XS >= RPT * H),
                  "a view of x (XS): no residual, XS a multiple of 8 and at least RPT*H");
    __shared__ float scratch[32];
    const long long row = blockIdx.x;
    if (row >= (long long)st.T * RPT) // uniform over the block, before any barrier
        return;
    const long long off = row * H, xoff = XS ? row / RPT * XS + row % RPT * H : off;
    float v[RC::NCH][8];
    ew_detail::load_row_residual<DT, H, THREADS, RESIDUAL>(x, xoff, res, res_out, off, v);
    float ss = 0.f;
#pragma unroll
    for (int k = 0; k < RC::NCH; k++)
#pragma unroll
        for (int i = 0; i < 8; i++)
            ss += v[k][i] * v[k][i];
    ss = block_sum<THREADS>(ss, scratch);
    const float inv = rsqrtf(ss / (float)H + eps);
#pragma unroll
    for (int k = 0; k < RC::NCH; k++) {
        const int c = threadIdx.x + k * THREADS;
        if (c < RC::CH) {
            float wv[8], o[8];
            load8(w + row % W_ROWS * H + c * 8, wv);
#pragma unroll
            for (int i = 0; i < 8; i++)
                o[i] = v[k][i] * inv * (UNIT_OFFSET ? 1.f + wv[i] : wv[i]);
            store8(out + off + c * 8, o);
        }
    }
}

// layer_norm: as rms_norm, out = (s - mean) / sqrt(var + eps) * w (+ b when BIAS), biased
// variance (torch.nn.LayerNorm), computed in two passes over the row held in registers.
// W_ROWS: w and b are [W_ROWS, H], and XS: x a view, as in rms_norm. Grid (T*RPT) x THREADS.
template <typename DT, int H, int RPT, int THREADS, int RESIDUAL, int BIAS, int W_ROWS = 1,
          long long XS = 0>
__device__ __forceinline__ void layer_norm(const kiln_step st, const DT *x, const DT *res,
                                           const DT *w, const DT *b, DT *out, DT *res_out,
                                           float eps)
{
    KILN_PDL_ENTER();
    typedef ew_detail::row_chunks<H, THREADS> RC;
    static_assert(RPT >= 1, "RPT >= 1");
    static_assert(XS == 0 || (!RESIDUAL && XS % 8 == 0 && XS >= RPT * H),
                  "a view of x (XS): no residual, XS a multiple of 8 and at least RPT*H");
    __shared__ float scratch[32];
    const long long row = blockIdx.x;
    if (row >= (long long)st.T * RPT)
        return;
    const long long off = row * H, xoff = XS ? row / RPT * XS + row % RPT * H : off;
    float v[RC::NCH][8];
    ew_detail::load_row_residual<DT, H, THREADS, RESIDUAL>(x, xoff, res, res_out, off, v);
    float sum = 0.f;
#pragma unroll
    for (int k = 0; k < RC::NCH; k++)
#pragma unroll
        for (int i = 0; i < 8; i++)
            sum += v[k][i];
    const float mean = block_sum<THREADS>(sum, scratch) / (float)H;
    float var = 0.f;
#pragma unroll
    for (int k = 0; k < RC::NCH; k++) {
        const int c = threadIdx.x + k * THREADS;
        if (c < RC::CH) // chunks past the row end hold 0, not `mean`
#pragma unroll
            for (int i = 0; i < 8; i++)
                var += (v[k][i] - mean) * (v[k][i] - mean);
    }
    var = block_sum<THREADS>(var, scratch) / (float)H;
    const float inv = rsqrtf(var + eps);
#pragma unroll
    for (int k = 0; k < RC::NCH; k++) {
        const int c = threadIdx.x + k * THREADS;
        if (c < RC::CH) {
            float wv[8], bv[8], o[8];
            const long long wo = row % W_ROWS * H;
            load8(w + wo + c * 8, wv);
            if (BIAS)
                load8(b + wo + c * 8, bv);
#pragma unroll
            for (int i = 0; i < 8; i++)
                o[i] = (v[k][i] - mean) * inv * wv[i] + (BIAS ? bv[i] : 0.f);
            store8(out + off + c * 8, o);
        }
    }
}

namespace ew_detail {
// The cos and sin of rotary pair i (i < ROT / 2) of token t, each times the scale: rope_kv's rule
// (below: the angle pos * inv_freq[i] rounded to float, sincos in double rounded to float; DYNAMIC
// 1 recomputes inv_freq, 2 picks longrope's table). gemv_stream_rope uses it too, so that both
// rotate with the same numbers.
template <int ROT, int DYNAMIC>
__device__ __forceinline__ void rope_cs(const kiln_step &st, int t, int i, const float *inv_freq,
                                        float rope_scale, float dyn_base, float dyn_factor,
                                        int dyn_max_pos, float &c, float &s)
{
    constexpr int HALF = ROT / 2;
    const float pos = (float)st.tok_pos[t];
    double base = (double)dyn_base;
    const float *tab = inv_freq;
    float sc = rope_scale;
    if (DYNAMIC == 2 && st.seq_ropelen[st.tok_seq[t]] > dyn_max_pos) {
        tab = inv_freq + HALF;
        sc = dyn_factor;
    }
    float f;
    if (DYNAMIC == 1) {
        const int L = st.seq_ropelen[st.tok_seq[t]];
        if (dyn_max_pos > 0 && L > dyn_max_pos)
            base = (double)dyn_base *
                   pow((double)dyn_factor * (double)L / (double)dyn_max_pos -
                           ((double)dyn_factor - 1.0),
                       (double)ROT / (double)(ROT - 2));
        // posenc.c: e = (float)(2i) / (float)ROT; 1.0f / powf((float)base, e). Float division
        // and pow done in double then rounded: the same float (double rounding is innocuous for
        // a quotient, and powf is correctly rounded or 1 ulp).
        const float e = (float)((double)(2 * i) / (double)ROT);
        const float pw = (float)pow((double)(float)base, (double)e);
        f = (float)(1.0 / (double)pw);
    } else {
        f = tab[i];
    }
    const float ang = pos * f; // rounded to float, as the reference does
    double sd, cd;
    sincos((double)ang, &sd, &cd);
    c = (float)cd * sc;
    s = (float)sd * sc;
}

// rope_kv's chunk at element e (a multiple of 8) of a padded q, k or v row (heads of HDP = HD
// rounded up to 8): the 8 values from `src` (the unpadded row), the first ROT dims of each head
// rotated when `rot` (cs, sn: each pair's cos and sin, scaled), zeros past HD, handed to
// sink(const float *v) (a store to DT, or registers for the FP8 cache).
template <typename DT, int HD, int ROT, int INTERLEAVED, typename SINK>
__device__ __forceinline__ void rope_chunk(const DT *src, int e, bool rot, const float *cs,
                                           const float *sn, SINK sink)
{
    constexpr int HALF = ROT / 2, HDP = (HD + 7) / 8 * 8, VEC = HD % 8 == 0;
    const int d0 = e % HDP; // dim of xv[0] within its head; the chunk never crosses heads
    src += e / HDP * HD + d0; // the input row is not padded
    float xv[8];
    if (VEC) {
        load8(src, xv);
    } else {
#pragma unroll
        for (int j = 0; j < 8; j++)
            xv[j] = d0 + j < HD ? to_f(src[j]) : 0.f;
    }
    if (HALF > 0 && rot && d0 < ROT) {
        // Partner of dim d: d^1 (interleaved, inside the chunk), else d +- HALF.
        float pv[8];
        if (INTERLEAVED) {
#pragma unroll
            for (int j = 0; j < 8; j++)
                pv[j] = xv[j ^ 1];
        } else if (VEC && HALF % 8 == 0) {
            // the chunk lies wholly in [0, HALF) or in [HALF, ROT): one aligned vector
            load8(src + (d0 < HALF ? HALF : -HALF), pv);
        } else {
            // partial rotary with ROT/2 not a multiple of 8 (e.g. ROT = 20): element loads
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const int d = d0 + j;
                pv[j] = d < ROT ? to_f(src[j + (d < HALF ? HALF : -HALF)]) : 0.f;
            }
        }
        float o[8];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int d = d0 + j;
            if (d < ROT) {
                const bool first = INTERLEAVED ? (d & 1) == 0 : d < HALF;
                const int i = INTERLEAVED ? d >> 1 : (first ? d : d - HALF);
                const float c = cs[i], s = sn[i];
                o[j] = first ? xv[j] * c - pv[j] * s : xv[j] * c + pv[j] * s;
            } else {
                o[j] = xv[j];
            }
        }
        sink(o);
    } else {
        sink(xv);
    }
}
} // namespace ew_detail

// ---------------------------------------------------------------------------------------------
// rope_kv: rotary embedding of q and k fused with the KV-cache write, one token per block.
// Grid (T) x THREADS.
//   q, k, v: row t at q + t*q_stride, k + t*k_stride, v + t*v_stride (in elements; multiples
//            of 8), NH*HD / NKV*HD / NKV*HD wide: column blocks of one fused qkv row (three
//            equal strides) or buffers of their own (q and k after per-head norms, v a view).
//   q_out [T, NH*HDP]: rotated q.  k_cache/v_cache: row `st.tok_slot[t]` (NKV*HDP elements,
//            i.e. element offset slot*NKV*HDP) gets rotated k / plain v; nothing when slot < 0.
// HDP = HD rounded up to a multiple of 8. A head_dim that is not a multiple of 8 (HD = 20) is
// written padded, each head's dims [HD, HDP) zero, so that the attention kernels run at head_dim
// HDP unchanged (zeros add nothing to q.k, and the padded output dims are dropped by unpad_heads);
// its inputs are read element by element, with no alignment or stride requirement.
// Rotation of the first ROT dims of each head, i < ROT/2, pair (a, b) = (i, i + ROT/2), or
// (2i, 2i+1) when INTERLEAVED (GPT-J):
//   out[a] = x[a]*c - x[b]*s,  out[b] = x[b]*c + x[a]*s,  dims >= ROT copied unchanged,
//   c = cos(pos * inv_freq[i]) * rope_scale, s = sin(pos * inv_freq[i]) * rope_scale,
// the angle rounded to float as in ref.c, cos/sin evaluated in double (positions reach tens of
// thousands of radians, far outside what fast-math __sinf handles) and rounded to float.
// DYNAMIC (dynamic NTK): inv_freq is ignored and recomputed per token as posenc.c does, with
// seq_len L = st.seq_ropelen[st.tok_seq[t]] (below): the whole prompt's length for every chunk of
// a prompt prefilled in chunks, as transformers' one forward over it takes its base from its max
// position + 1; pos + 1 in decode, where HF, too, leaves the cached keys as they were rotated:
//   base = L > dyn_max_pos ? dyn_base * (dyn_factor*L/dyn_max_pos - (dyn_factor-1))^(ROT/(ROT-2))
//                          : dyn_base,
//   inv_freq[i] = 1 / powf((float)base, (float)(2i) / ROT)
// (double math rounded to float at the same places as posenc.c). ROT == 0: copies only.
// DYNAMIC == 2 (longrope, Phi-3): inv_freq holds ROT entries, the short table then the long
// one; a token whose sequence has L = st.seq_ropelen[st.tok_seq[t]] > dyn_max_pos (the
// original_max_position_embeddings) uses the long table and scales cos and sin by dyn_factor
// instead of rope_scale. seq_ropelen is the sequence's length as the scheduler sees it (its whole
// prompt from the first chunk, as transformers' one forward over it; a sequence that grows past
// the switch is recomputed from position 0, as generate() drops its cache there), so all of one
// sequence's keys share a table. dyn_base is unused.
// KV8 (kilnc compile --kv-dtype fp8): k_cache and v_cache are FP8 caches (kernels/kiln_kv8.h's
// layout and rounding, rows of NKV*HDP bytes): a warp per (K or V, kv head) of the token computes
// the head's values in float as above, their absmax, the head's scale and e4m3 bytes (the padded
// dims' bytes are 0). Not KV8: the 16-bit cache, in DT.
template <typename DT, int NH, int NKV, int HD, int ROT, int INTERLEAVED, int DYNAMIC, int THREADS,
          int KV8 = 0>
__device__ __forceinline__ void rope_kv(const kiln_step st, const DT *q, const DT *k, const DT *v,
                                        int q_stride, int k_stride, int v_stride, DT *q_out,
                                        kv_t<DT, KV8> *k_cache, kv_t<DT, KV8> *v_cache,
                                        const float *inv_freq, float rope_scale, float dyn_base,
                                        float dyn_factor, int dyn_max_pos)
{
    KILN_PDL_ENTER();
    static_assert(HD >= 1, "HD >= 1");
    static_assert(ROT >= 0 && ROT <= HD && ROT % 2 == 0, "0 <= ROT <= HD, ROT even");
    static_assert(DYNAMIC >= 0 && DYNAMIC <= 2, "DYNAMIC: 0 none, 1 dynamic NTK, 2 longrope");
    static_assert(DYNAMIC != 1 || ROT > 2, "dynamic NTK needs ROT > 2");
    static_assert(THREADS % 32 == 0 && THREADS <= 1024, "THREADS: multiple of 32, <= 1024");
    constexpr int HALF = ROT / 2;
    constexpr int HDP = (HD + 7) / 8 * 8;
    constexpr int QC = NH * HDP / 8, KC = NKV * HDP / 8; // 8-element chunks of q and of k (= v)
    __shared__ float cs[HALF > 0 ? HALF : 1], sn[HALF > 0 ? HALF : 1];

    const int t = blockIdx.x;
    if (t >= st.T)
        return;
    if (HALF > 0) {
        for (int i = threadIdx.x; i < HALF; i += THREADS)
            ew_detail::rope_cs<ROT, DYNAMIC>(st, t, i, inv_freq, rope_scale, dyn_base, dyn_factor,
                                             dyn_max_pos, cs[i], sn[i]);
        __syncthreads();
    }

    const int slot = st.tok_slot[t];
    if constexpr (!KV8) {
        for (int u = threadIdx.x; u < QC + 2 * KC; u += THREADS) {
            const DT *src;
            DT *dst;
            int e;      // element index within the padded q (or k, v) row
            bool rot;
            if (u < QC) {
                e = u * 8;
                src = q + (long long)t * q_stride;
                dst = q_out + (long long)t * (NH * HDP) + e;
                rot = true;
            } else if (u < QC + KC) {
                if (slot < 0)
                    continue;
                e = (u - QC) * 8;
                src = k + (long long)t * k_stride;
                dst = k_cache + (long long)slot * (NKV * HDP) + e;
                rot = true;
            } else {
                if (slot < 0)
                    continue;
                e = (u - QC - KC) * 8;
                src = v + (long long)t * v_stride;
                dst = v_cache + (long long)slot * (NKV * HDP) + e;
                rot = false;
            }
            ew_detail::rope_chunk<DT, HD, ROT, INTERLEAVED>(src, e, rot, cs, sn,
                                                            [&](const float *o) { store8(dst, o); });
        }
    } else {
        for (int u = threadIdx.x; u < QC; u += THREADS) // q; the caches by heads below
            ew_detail::rope_chunk<DT, HD, ROT, INTERLEAVED>(
                q + (long long)t * q_stride, u * 8, true, cs, sn, [&](const float *o) {
                    store8(q_out + (long long)t * (NH * HDP) + u * 8, o);
                });
        // The FP8 cache (kernels/kiln_kv8.h): a warp per (K or V, kv head) holds the head's
        // chunks, takes their absmax, and writes the e4m3 bytes and the scale.
        if (slot < 0)
            return;
        constexpr int CH = HDP / 8, CPL = (CH + 31) / 32;
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        long long row, sat;
        kv8_at<NKV * HDP, NKV>(slot, row, sat);
        for (int job = warp; job < 2 * NKV; job += THREADS / 32) { // warp-uniform
            const bool isv = job >= NKV;
            const int h = isv ? job - NKV : job;
            const DT *src = isv ? v + (long long)t * v_stride : k + (long long)t * k_stride;
            unsigned char *cache = isv ? v_cache : k_cache;
            float o[CPL][8], amax = 0.f;
#pragma unroll
            for (int cc = 0; cc < CPL; cc++) {
                const int c = lane + 32 * cc;
                if (c < CH) {
                    ew_detail::rope_chunk<DT, HD, ROT, INTERLEAVED>(
                        src, h * HDP + c * 8, !isv, cs, sn, [&](const float *x) {
#pragma unroll
                            for (int j = 0; j < 8; j++)
                                o[cc][j] = x[j];
                        });
#pragma unroll
                    for (int j = 0; j < 8; j++)
                        amax = fmaxf(amax, fabsf(o[cc][j]));
                }
            }
            const float sc = kiln_kv8_scale(warp_max(amax));
#pragma unroll
            for (int cc = 0; cc < CPL; cc++) {
                const int c = lane + 32 * cc;
                if (c < CH) {
                    unsigned w[2] = {0u, 0u};
#pragma unroll
                    for (int j = 0; j < 8; j++)
                        w[j / 4] |= (unsigned)kiln_kv8_e4m3(KILN_KV8_DIV(o[cc][j], sc))
                                    << (8 * (j % 4));
                    *reinterpret_cast<uint2 *>(cache + row + h * HDP + c * 8) =
                        make_uint2(w[0], w[1]);
                }
            }
            if (lane == 0)
                *reinterpret_cast<float *>(cache + sat + 4 * h) = sc;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// unpad_heads: the attention's output at the padded head_dim HDP (rope_kv) back to heads of HD:
//   out[t, h*HD + d] = x[t, h*HDP + d],  d < HD,  x [T, NH*HDP], out [T, NH*HD].
// One element per thread (HD is not a multiple of 8 when this runs, so rows are not vectors).
// Grid (ceil(T*NH*HD / THREADS)) x THREADS.
template <typename DT, int NH, int HD, int HDP, int THREADS>
__device__ __forceinline__ void unpad_heads(const kiln_step st, const DT *x, DT *out)
{
    KILN_PDL_ENTER();
    static_assert(HD >= 1 && HDP >= HD, "HDP >= HD >= 1");
    const long long i = (long long)blockIdx.x * THREADS + threadIdx.x;
    if (i >= (long long)st.T * (NH * HD))
        return;
    const long long t = i / (NH * HD);
    const int c = (int)(i - t * (NH * HD));
    out[i] = x[t * (NH * HDP) + c / HD * HDP + c % HD];
}

// ---------------------------------------------------------------------------------------------
// act_mul: gu rows are [gate(I) | up(I)]; out[t, j] = act<ACT>(gate[t, j]) * up[t, j].
// Grid (ceil(T*I / (8*THREADS))) x THREADS: one 8-element chunk per thread.
template <typename DT, int I, int ACT, int THREADS>
__device__ __forceinline__ void act_mul(const kiln_step st, const DT *gu, DT *out)
{
    KILN_PDL_ENTER();
    static_assert(I % 8 == 0, "I must be a multiple of 8 (16-byte vectors)");
    const long long idx = ((long long)blockIdx.x * THREADS + threadIdx.x) * 8;
    if (idx >= (long long)st.T * I)
        return;
    const long long t = idx / I, j = idx % I; // a chunk never crosses rows (I % 8 == 0)
    const DT *g = gu + t * (2LL * I) + j;
    float a[8], b[8];
    load8(g, a);
    load8(g + I, b);
#pragma unroll
    for (int i = 0; i < 8; i++)
        a[i] = act<ACT>(a[i]) * b[i];
    store8(out + idx, a);
}

// unary: out = act<ACT>(x) over [T, W]. Grid (ceil(T*W / (8*THREADS))) x THREADS.
template <typename DT, int W, int ACT, int THREADS>
__device__ __forceinline__ void unary(const kiln_step st, const DT *x, DT *out)
{
    KILN_PDL_ENTER();
    static_assert(W % 8 == 0, "W must be a multiple of 8 (16-byte vectors)");
    const long long idx = ((long long)blockIdx.x * THREADS + threadIdx.x) * 8;
    if (idx >= (long long)st.T * W)
        return;
    float a[8];
    load8(x + idx, a);
#pragma unroll
    for (int i = 0; i < 8; i++)
        a[i] = act<ACT>(a[i]);
    store8(out + idx, a);
}

// binary: out = a OP b over [T, W], OP 0 add, 1 mul; BCAST: b is one row [W] used for every
// token. Grid (ceil(T*W / (8*THREADS))) x THREADS.
template <typename DT, int W, int OP, int BCAST, int THREADS>
__device__ __forceinline__ void binary(const kiln_step st, const DT *a, const DT *b, DT *out)
{
    KILN_PDL_ENTER();
    static_assert(W % 8 == 0, "W must be a multiple of 8 (16-byte vectors)");
    static_assert(OP == 0 || OP == 1, "OP: 0 add, 1 mul");
    const long long idx = ((long long)blockIdx.x * THREADS + threadIdx.x) * 8;
    if (idx >= (long long)st.T * W)
        return;
    float x[8], y[8];
    load8(a + idx, x);
    load8(b + (BCAST ? idx % W : idx), y);
#pragma unroll
    for (int i = 0; i < 8; i++)
        x[i] = OP == 0 ? x[i] + y[i] : x[i] * y[i];
    store8(out + idx, x);
}

// scale: out = x * s over [T, W]. Grid (ceil(T*W / (8*THREADS))) x THREADS.
template <typename DT, int W, int THREADS>
__device__ __forceinline__ void scale(const kiln_step st, const DT *x, DT *out, float s)
{
    KILN_PDL_ENTER();
    static_assert(W % 8 == 0, "W must be a multiple of 8 (16-byte vectors)");
    const long long idx = ((long long)blockIdx.x * THREADS + threadIdx.x) * 8;
    if (idx >= (long long)st.T * W)
        return;
    float a[8];
    load8(x + idx, a);
#pragma unroll
    for (int i = 0; i < 8; i++)
        a[i] = a[i] * s;
    store8(out + idx, a);
}

// ---------------------------------------------------------------------------------------------
// gather_last: out[s] = x[seq_start[s+1] - 1], rows of H (the last token of each sequence, whose
// logits are wanted). Every sequence has at least one token in the step.
// Grid (n_seqs) x THREADS.
template <typename DT, int H, int THREADS>
__device__ __forceinline__ void gather_last(const kiln_step st, const DT *x, DT *out)
{
    KILN_PDL_ENTER();
    typedef ew_detail::row_chunks<H, THREADS> RC;
    const int s = blockIdx.x;
    if (s >= st.n_seqs)
        return;
    const DT *src = x + (long long)(st.seq_start[s + 1] - 1) * H;
    DT *dst = out + (long long)s * H;
    for (int c = threadIdx.x; c < RC::CH; c += THREADS) // a bit-exact 16-byte copy
        *reinterpret_cast<vec8 *>(dst + c * 8) = *reinterpret_cast<const vec8 *>(src + c * 8);
}

// gather_ranks: logits[m][r*N + c] = parts[r][m][c] for m < M, r < TP, c < N: the vocabulary
// blocks of the tensor-parallel ranks, rank-major as ncclAllGather leaves them ([TP][M][N]),
// into rows of the full vocabulary (float, bit-exact copies). Block (m, r, k) copies elements
// [k * 8 * THREADS, (k + 1) * 8 * THREADS) of row m of rank r, so that a decode step of a few
// rows still spreads over many SMs. Grid (M, TP, ceil(N / (8 * THREADS))) x THREADS.
template <int N, int TP, int THREADS>
__device__ __forceinline__ void gather_ranks(const kiln_step st, const float *parts,
                                             float *logits, int M)
{
    KILN_PDL_ENTER();
    (void)st;
    const int m = blockIdx.x, r = blockIdx.y;
    if (m >= M || r >= TP)
        return;
    const float *src = parts + ((long long)r * M + m) * N;
    float *dst = logits + (long long)m * N * TP + (long long)r * N;
    const int end = min(N, (int)(blockIdx.z + 1) * 8 * THREADS);
    for (int c = blockIdx.z * 8 * THREADS + threadIdx.x; c < end; c += THREADS)
        dst[c] = src[c];
}

// logits_epilogue: logits[m][c] = v, c < N, m < M, with v = logits[m][c] (+ bias[c] when BIAS,
// DT [N]) and then, when SOFTCAP, v = cap * tanh(v / cap): the LM head's bias and Gemma 2's final
// logit soft cap (final_logit_softcapping), in place on the float logits [M, N] that the head's
// GEMM or GEMV wrote (one rank's vocabulary block under tensor parallelism: both are per column,
// so each rank applies them to its own block with its own bias slice). The bias is added here,
// not by the GEMM (cuBLASLt's bias epilogue would pair a DT bias with float output, a combination
// kiln does not rely on) nor the GEMV, so that both paths share one kernel after them.
// tanh as attention.cuh's attn_tanh (from one exp, absolute error ~1e-7;
// the fast-math tanhf is ~5e-4 relative, 0.015 at cap 30). Block (m, k) does elements
// [k * 8 * THREADS, (k + 1) * 8 * THREADS) of row m: grid (M, ceil(N / (8 * THREADS))) x THREADS.
// N need not be a multiple of 8 (scalar accesses).
template <typename DT, int N, int BIAS, int SOFTCAP, int THREADS>
__device__ __forceinline__ void logits_epilogue(const kiln_step st, float *logits, const DT *bias,
                                                float cap, int M)
{
    KILN_PDL_ENTER();
    static_assert(BIAS || SOFTCAP, "logits_epilogue: nothing to do");
    (void)st;
    const int m = blockIdx.x;
    if (m >= M)
        return;
    float *row = logits + (long long)m * N;
    const int end = min(N, (int)(blockIdx.y + 1) * 8 * THREADS);
    for (int c = blockIdx.y * 8 * THREADS + threadIdx.x; c < end; c += THREADS) {
        float v = row[c];
        if (BIAS)
            v += to_f(bias[c]);
        if (SOFTCAP) {
            const float x = fminf(fmaxf(v / cap, -15.f), 15.f);
            const float e = __expf(2.f * x);
            v = cap * ((e - 1.f) / (e + 1.f));
        }
        row[c] = v;
    }
}

// pool: out[s] (float, [n_seqs, H]) = MODE (kiln_enums.h) KILN_POOL_MEAN: the mean of the
// sequence's rows [seq_start[s], seq_start[s+1]) (summed in float in row order), KILN_POOL_CLS:
// its first row, KILN_POOL_LAST: its last row; NORMALIZE: out[s] /= max(||out[s]||_2, 1e-12)
// (F.normalize). Every sequence has at least one token. Grid (n_seqs) x THREADS.
template <typename DT, int H, int MODE, int NORMALIZE, int THREADS>
__device__ __forceinline__ void pool(const kiln_step st, const DT *x, float *out)
{
    KILN_PDL_ENTER();
    typedef ew_detail::row_chunks<H, THREADS> RC;
    static_assert(MODE == KILN_POOL_MEAN || MODE == KILN_POOL_CLS || MODE == KILN_POOL_LAST,
                  "MODE: kiln_enums.h's kiln_pool");
    __shared__ float scratch[32];
    const int s = blockIdx.x;
    if (s >= st.n_seqs)
        return;
    const int lo = st.seq_start[s], hi = st.seq_start[s + 1];
    float a[RC::NCH][8];
#pragma unroll
    for (int k = 0; k < RC::NCH; k++)
#pragma unroll
        for (int i = 0; i < 8; i++)
            a[k][i] = 0.f;
    const int r0 = MODE == KILN_POOL_LAST ? hi - 1 : lo;
    const int r1 = MODE == KILN_POOL_MEAN ? hi : r0 + 1;
    for (int r = r0; r < r1; r++) {
#pragma unroll
        for (int k = 0; k < RC::NCH; k++) {
            const int c = threadIdx.x + k * THREADS;
            if (c < RC::CH) {
                float b[8];
                load8(x + (long long)r * H + c * 8, b);
#pragma unroll
                for (int i = 0; i < 8; i++)
                    a[k][i] += b[i];
            }
        }
    }
    if (MODE == KILN_POOL_MEAN) {
        const float n = (float)(hi - lo > 0 ? hi - lo : 1);
#pragma unroll
        for (int k = 0; k < RC::NCH; k++)
#pragma unroll
            for (int i = 0; i < 8; i++)
                a[k][i] = a[k][i] / n;
    }
    if (NORMALIZE) {
        float ss = 0.f;
#pragma unroll
        for (int k = 0; k < RC::NCH; k++)
#pragma unroll
            for (int i = 0; i < 8; i++)
                ss += a[k][i] * a[k][i];
        const float nrm = fmaxf(sqrtf(block_sum<THREADS>(ss, scratch)), 1e-12f);
#pragma unroll
        for (int k = 0; k < RC::NCH; k++)
#pragma unroll
            for (int i = 0; i < 8; i++)
                a[k][i] = a[k][i] / nrm;
    }
    float *dst = out + (long long)s * H;
#pragma unroll
    for (int k = 0; k < RC::NCH; k++) {
        const int c = threadIdx.x + k * THREADS;
        if (c < RC::CH) {
            float4 *d4 = reinterpret_cast<float4 *>(dst + c * 8);
            d4[0] = make_float4(a[k][0], a[k][1], a[k][2], a[k][3]);
            d4[1] = make_float4(a[k][4], a[k][5], a[k][6], a[k][7]);
        }
    }
}

namespace ew_detail {
// row (H elements of DT, 16-byte aligned) . p (H floats), one warp: lane l takes the 8-element
// chunks l, l + 32, ...; the float sum over the warp (every lane gets it), in a fixed order.
template <typename DT, int H>
__device__ __forceinline__ float warp_row_dot(const DT *row, const float *p, int lane)
{
    float acc = 0.f;
    for (int c = lane; c < H / 8; c += 32) {
        float wv[8];
        load8(row + c * 8, wv);
#pragma unroll
        for (int i = 0; i < 8; i++)
            acc += wv[i] * p[c * 8 + i];
    }
    return warp_sum(acc);
}
} // namespace ew_detail

// score: the classify head on pooled rows (compiler/ref.c op_score). out[s] (float, [n_seqs, L])
// = w . h + b, with h = tanh(dw . p + db) when DENSE (BERT's pooler), else h = p, where p =
// pooled[s] (float [n_seqs, H], the pool kernel's output); w [L, H], dw [H, H] in DT, b [L] and db
// [H] only when BIAS / DENSE (null otherwise). tmp (float [n_seqs, H]) holds h when DENSE: every
// warp of the block reads all of it, and __syncthreads makes the block's global writes visible to
// the block. Each output is one warp's dot product over 8-element chunks, warps taking rows j,
// j + WARPS, ... Sums in float in a fixed order. Grid (n_seqs) x THREADS.
template <typename DT, int H, int L, int DENSE, int BIAS, int THREADS>
__device__ __forceinline__ void score(const kiln_step st, const float *pooled, const DT *dw,
                                      const DT *db, const DT *w, const DT *b, float *tmp,
                                      float *out)
{
    KILN_PDL_ENTER();
    static_assert(H % 8 == 0, "the pooled width must be a multiple of 8 (16-byte vectors)");
    static_assert(THREADS % 32 == 0 && THREADS >= 32 && THREADS <= 1024,
                  "THREADS must be a multiple of 32 in [32, 1024]");
    constexpr int WARPS = THREADS / 32;
    const int s = blockIdx.x;
    if (s >= st.n_seqs)
        return;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const float *p = pooled + (long long)s * H;
    if (DENSE) {
        float *h = tmp + (long long)s * H;
        for (int j = warp; j < H; j += WARPS) {
            const float acc = ew_detail::warp_row_dot<DT, H>(dw + (long long)j * H, p, lane);
            if (lane == 0)
                h[j] = tanhf(acc + to_f(db[j]));
        }
        __syncthreads();
        p = h;
    }
    for (int j = warp; j < L; j += WARPS) {
        const float acc = ew_detail::warp_row_dot<DT, H>(w + (long long)j * H, p, lane);
        if (lane == 0)
            out[(long long)s * L + j] = acc + (BIAS ? to_f(b[j]) : 0.f);
    }
}

} // namespace kiln
