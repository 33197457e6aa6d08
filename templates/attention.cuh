// attention.cuh — scaled dot-product attention over the paged KV cache (see templates/README.md).
//
// Two kernels:
//   attn_prefill   every query row of the step; FlashAttention-2 style tiles on the tensor cores
//                  (mma.sync m16n8k16, or wgmma on sm_90a for head dims 64 and 128; bf16/f16
//                  in, float accumulate) when HD % 16 == 0, else a plain per-row CUDA-core path
//                  (tiny test models: head dims 24, 40 ...).
//   attn_decode    one query per sequence (the last row of each sequence in the step), the keys
//                  split over up to NSPLIT CTAs (flash-decoding) whose last CTA to finish merges
//                  the splits: one launch per layer.
//
// Semantics (the same as compiler/ref.c's op_attention): query row t belongs to sequence
// s = tok_seq[t] at position p = tok_pos[t]; it sees the cached keys j of s in [lo, hi] with
//     hi = CAUSAL ? min(p, kvlen - 1) : kvlen - 1,  lo = WINDOW > 0 ? max(0, p - WINDOW + 1) : 0
// (kvlen = seq_kvlen[s]; the keys of this step are already in the cache, written by rope_kv);
//     score(j) = (q . k_j) * scale;  SOFTCAP: softcap * tanh(score / softcap);
//                ALIBI: + alibi_slopes[h] * (j - p)
// softmax over [lo, hi] in float, out = sum_j p_j v_j. Query head h reads kv head h / (NH / NKV).
// q and out are [T, NH*HD] rows in step order; the caches [blocks][KILN_BLOCK][NKV*HD].
// Pointers must be 16-byte aligned (16-byte vector accesses).
//
// KV8 (kilnc compile --kv-dtype fp8): the caches are FP8 (kv_t<DT, 1>: bytes), laid out as
// kernels/kiln_kv8.h says: per block, KILN_BLOCK rows of NKV*HD e4m3 bytes (natural order), then
// a float scale per (row, kv head); value = e4m3 * scale. The e4m3 bytes become DT exactly
// (gemv_detail::fp8x4), and the scale is applied in float: attn_prefill's tensor-core path copies
// each tile's raw bytes and scales into a staging area with cp.async (K and V as two groups, so V
// still lands while Q.K^T runs) and stores the products rounded to DT into its shared tiles;
// attn_decode's tensor-core path feeds the exact e4m3 values to the MMA and scales each key's
// score and probability instead (attn_decode_warp_mma); the CUDA-core paths use the float
// products. Otherwise the math is the 16-bit cache's. KV8 = 0 compiles to the code of the 16-bit
// cache alone.
//
// What this file does not do: it never reads a cache row at or beyond kvlen (those rows, and
// block-table columns past the sequence's last block, may hold anything); it uses no TMA, and
// wgmma only in attn_prefill's Hopper path (sm_90a code, the 16-bit cache, head dims 64 and
// 128; elsewhere mma.sync, which runs on sm_80 and sm_90a alike); the mma.sync path does not
// pipeline K/V tiles beyond overlapping the V load with Q.K^T — correctness and clarity first.
// Softmax probabilities are rounded to DT before the P.V product (as FlashAttention does); the
// running sums stay in float.
#pragma once

#include "common.cuh"
#include "gemv.cuh"  // gemv_detail::fp8x4: e4m3 bytes to DT, exactly
#include "wgmma.cuh" // attn_prefill's Hopper path

namespace kiln {

// ---------------------------------------------------------------------------------------------
// Shared helpers

// -inf (NVRTC has no INFINITY macro; fast math keeps infinities)
#define ATTN_NINF __int_as_float((int)0xff800000u)

// tanh from one exp: absolute error ~1e-7, so softcap * tanh stays accurate for any softcap
// (the fast-math tanhf approximation has ~5e-4 relative error, 0.015 at softcap 30).
__device__ __forceinline__ float attn_tanh(float x)
{
    x = fminf(fmaxf(x, -15.f), 15.f);
    const float e = __expf(2.f * x);
    return (e - 1.f) / (e + 1.f);
}

template <int SOFTCAP, int ALIBI>
__device__ __forceinline__ float attn_score(float dot, float scale, float softcap, float slope,
                                            int j, int p)
{
    float x = dot * scale;
    if (SOFTCAP)
        x = softcap * attn_tanh(x / softcap);
    if (ALIBI)
        x += slope * (float)(j - p);
    return x;
}

// Keys [lo, hi] that the query at position p of a sequence with kvlen keys sees (lo > hi: none).
template <int CAUSAL, int WINDOW>
__device__ __forceinline__ void attn_key_range(int p, int kvlen, int &lo, int &hi)
{
    hi = kvlen - 1;
    if (CAUSAL && p < hi)
        hi = p;
    lo = 0;
    if (WINDOW > 0 && p - WINDOW + 1 > lo)
        lo = p - WINDOW + 1;
}

// Prefill grids are (tiles, heads): the query tiles of all sequences (each sequence has
// ceil(rows / BM) tiles; sum <= ceil(T / BM) + n_seqs) by the query heads. The CTAs start in
// the order of their linear index, which this maps head first: every head's first tile, then
// every head's second, ...; and within a sequence the last tile comes first. Under a causal mask
// the last tile has the most keys, so the longest CTAs start first and the short ones fill the
// end: the tail of the launch is short tiles of every head, not one head's long tiles (the 8B
// 2,048-token prompt in one step: 0.772 -> 0.786 of the GEMM peak, its attention then 3.6 ms of
// 43.9 ms of kernels; tests/gpu/RESULTS.md, twenty-fifth session). Sets the CTA's head h;
// returns false for the grid's surplus tiles.
template <int BM>
__device__ __forceinline__ bool attn_find_tile(const kiln_step &st, int &h, int &s, int &row0,
                                               int &nrows)
{
    const int lin = blockIdx.y * gridDim.x + blockIdx.x;
    int tile = lin / gridDim.y;
    h = lin % gridDim.y;
    for (int i = 0; i < st.n_seqs; i++) {
        const int a = st.seq_start[i], b = st.seq_start[i + 1];
        const int nt = b > a ? (b - a + BM - 1) / BM : 0;
        if (tile < nt) {
            s = i;
            row0 = a + (nt - 1 - tile) * BM;
            nrows = min(BM, b - row0);
            return true;
        }
        tile -= nt;
    }
    return false;
}

template <typename DT>
__device__ __forceinline__ void attn_unpack8(const vec8 &v, float f[8])
{
#pragma unroll
    for (int i = 0; i < 8; i++) {
        DT e;
        *reinterpret_cast<unsigned short *>(&e) = v.u[i];
        f[i] = to_f(e);
    }
}

// Eight e4m3 bytes of an FP8 cache row (8 consecutive dims, natural order) times their head's
// scale, as floats: __byte_perm puts each word's bytes in fp8x4's order (k, k+2, k+1, k+3).
template <typename DT>
__device__ __forceinline__ void attn_kv8_unpack(const uint2 &b, float sc, float f[8])
{
    const unsigned w[2] = {b.x, b.y};
#pragma unroll
    for (int g = 0; g < 2; g++) {
        unsigned p[2]; // DT pairs: dims (4g, 4g+1), (4g+2, 4g+3), the lower in the low half
        gemv_detail::fp8x4<DT>(__byte_perm(w[g], 0u, 0x3120u), p[0], p[1]);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            DT e;
            *reinterpret_cast<unsigned short *>(&e) = (unsigned short)(p[i / 2] >> (16 * (i % 2)));
            f[4 * g + i] = to_f(e) * sc;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tensor-core pieces (sm_80+): the m16n8k16 MMA, packing two floats (cp.async: common.cuh).

__device__ __forceinline__ void attn_zero16(void *smem)
{
    *reinterpret_cast<uint4 *>(smem) = make_uint4(0u, 0u, 0u, 0u);
}

// attn_prefill's FP8 tiles (KV8, HD % 16 == 0): the keys [kb, kb + BN) of kv head kvh of
// sequence s, from a cache in kernels/kiln_kv8.h's layout, as raw bytes into raw [BN][HD] (16
// bytes a copy) and their scales into sc [BN], by cp.async, one commit group; keys at or past
// kvlen get zero bytes and a zero scale.
template <int NKV, int HD, int BN, int THREADS>
__device__ __forceinline__ void attn_kv8_stage(const kiln_step &st, int s, int kb, int kvlen,
                                               int kvh, const unsigned char *cache,
                                               unsigned char *raw, float *sc)
{
    constexpr int C16 = HD / 16;
    for (int i = threadIdx.x; i < BN * C16; i += THREADS) {
        const int r = i / C16, d = (i % C16) * 16, j = kb + r;
        if (j < kvlen) {
            long long row, sat;
            kv8_at<NKV * HD, NKV>(kv_slot(st, s, j), row, sat);
            cp_async16(raw + r * HD + d, cache + row + kvh * HD + d);
            if (d == 0)
                cp_async4(sc + r, cache + sat + 4 * kvh);
        } else {
            attn_zero16(raw + r * HD + d);
            if (d == 0)
                sc[r] = 0.f;
        }
    }
    cp_async_commit();
}

// The staged tile converted into the DT tile t [BN][LD]: 8 values at a time, e4m3 x scale
// rounded to DT (attn_kv8_unpack, the products attn_decode computes in float).
template <typename DT, int HD, int LD, int BN, int THREADS>
__device__ __forceinline__ void attn_kv8_convert(const unsigned char *raw, const float *sc, DT *t)
{
    constexpr int C8 = HD / 8;
    for (int i = threadIdx.x; i < BN * C8; i += THREADS) {
        const int r = i / C8, d = (i % C8) * 8;
        float f[8];
        attn_kv8_unpack<DT>(*reinterpret_cast<const uint2 *>(raw + r * HD + d), sc[r], f);
        store8(t + r * LD + d, f);
    }
}

// D = A(16x16, row) * B(16x8, col) + D. Fragments (g = lane / 4, c = lane % 4; a register holds
// two 16-bit elements, the lower index in the low half):
//   A: a0 (row g, k 2c..2c+1), a1 (row g+8, k 2c..), a2 (row g, k 2c+8..), a3 (row g+8, k 2c+8..)
//   B: b0 (k 2c..2c+1, col g), b1 (k 2c+8..2c+9, col g)
//   D: d0,d1 (row g, cols 2c, 2c+1), d2,d3 (row g+8, cols 2c, 2c+1)
template <typename DT>
__device__ __forceinline__ void attn_mma(float (&d)[4], const unsigned (&a)[4], unsigned b0,
                                         unsigned b1);
template <>
__device__ __forceinline__ void attn_mma<bf16>(float (&d)[4], const unsigned (&a)[4], unsigned b0,
                                               unsigned b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void attn_mma<f16>(float (&d)[4], const unsigned (&a)[4], unsigned b0,
                                              unsigned b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <typename DT> __device__ __forceinline__ unsigned attn_pack2(float lo, float hi);
template <> __device__ __forceinline__ unsigned attn_pack2<bf16>(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); // .x (low half) = lo
    return *reinterpret_cast<unsigned *>(&v);
}
template <> __device__ __forceinline__ unsigned attn_pack2<f16>(float lo, float hi)
{
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<unsigned *>(&v);
}

__device__ __forceinline__ unsigned attn_ld32(const void *smem)
{
    return *reinterpret_cast<const unsigned *>(smem);
}

// One key tile's online-softmax step on the m16n8k16 S accumulators of a lane (rows g and g + 8,
// i = e / 2 of element e): sc holds the tile's scores, masked ones -inf; m, l are the rows'
// running max and sum (this lane's columns; summed over the quad at the end). The 4 lanes of a
// quad share rows, so the row max is reduced over the quad (xor 1, 2). sc and m are in units of
// k2 / log2 e: the scores (k2 = log2 e), or unscaled dot products with k2 = scale * log2 e (the
// scale folded into the exponent). On return sc holds the tile's probabilities exp(score - max)
// (0 where masked), each one FFMA and one ex2 (exp(x - mu) = 2^(x k2 - mu k2)), and alpha the
// factor the rows' output must be rescaled by (attn_rescale) before this tile's P V is added. A
// row whose max did not change keeps alpha = 1 exactly.
#define ATTN_LOG2E 1.4426950408889634f
template <int NT>
__device__ __forceinline__ void attn_softmax_tile(float (&sc)[NT][4], float (&m)[2], float (&l)[2],
                                                  float (&alpha)[2], float k2)
{
    float mx[2] = {ATTN_NINF, ATTN_NINF};
#pragma unroll
    for (int n = 0; n < NT; n++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            mx[e / 2] = fmaxf(mx[e / 2], sc[n][e]);
    float mul[2], ls[2] = {0.f, 0.f};
#pragma unroll
    for (int i = 0; i < 2; i++) {
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
        const float mn = fmaxf(m[i], mx[i]);
        // no key yet: keep exp() away from -inf - -inf
        mul[i] = (mn == ATTN_NINF ? 0.f : mn) * k2;
        alpha[i] = mn == m[i] ? 1.f : exp2f(fmaf(m[i], k2, -mul[i])); // 0 while m was -inf
        m[i] = mn;
    }
#pragma unroll
    for (int n = 0; n < NT; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            sc[n][e] = exp2f(fmaf(sc[n][e], k2, -mul[e / 2])); // masked: 2^-inf = 0
            ls[e / 2] += sc[n][e];
        }
#pragma unroll
    for (int i = 0; i < 2; i++)
        l[i] = l[i] * alpha[i] + ls[i];
}

// The output rows' rescale after attn_softmax_tile, only where some row's max changed (after the
// first few tiles of a row, rarely): the products it skips are by 1.
template <int NO>
__device__ __forceinline__ void attn_rescale(float (&o)[NO][4], const float (&alpha)[2])
{
    if (alpha[0] != 1.f || alpha[1] != 1.f) {
#pragma unroll
        for (int n = 0; n < NO; n++) {
            o[n][0] *= alpha[0];
            o[n][1] *= alpha[0];
            o[n][2] *= alpha[1];
            o[n][3] *= alpha[1];
        }
    }
}

// P's A fragment for the 16-key k-step kk: the n-tiles 2kk, 2kk + 1 of the S accumulators sc
// (probabilities) rounded to DT in pairs (the D layout of two adjacent 8-key n-tiles is the A
// layout of one 16-key k-step, for mma.sync's m16n8k16 and wgmma's register A alike).
template <typename DT, int NT>
__device__ __forceinline__ void attn_p_frag(const float (&sc)[NT][4], int kk, unsigned (&a)[4])
{
    a[0] = attn_pack2<DT>(sc[2 * kk][0], sc[2 * kk][1]);
    a[1] = attn_pack2<DT>(sc[2 * kk][2], sc[2 * kk][3]);
    a[2] = attn_pack2<DT>(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
    a[3] = attn_pack2<DT>(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
}

// O += P V over a tile of NT * 8 keys in a DT tile sV [keys][LD] (LD % 8 == 0, rows 16-byte
// aligned): k-step kk covers keys [16kk, 16kk + 16) = the n-tiles 2kk, 2kk + 1 of P (the D layout
// of two adjacent 8-key n-tiles is the A layout of one 16-key k-step); B[k = key][n = dim] comes
// from sV by ldmatrix.x4.trans, 16 keys x 16 dims at a time: lane L gives the row address of key
// L & 15, dims + 8 (L >> 4), so the four matrices are b0, b1 of dims [0, 8) and b0, b1 of
// [8, 16) (no bank conflicts: the 8 rows of a phase are LD * 2 bytes apart, LD = HD + 8).
template <typename DT, int NT, int HD, int LD>
__device__ __forceinline__ void attn_pv_tile(const float (&sc)[NT][4], const DT *sV, int lane,
                                             float (&o)[HD / 8][4])
{
    static_assert(HD % 16 == 0 && LD % 8 == 0, "attn_pv_tile: 16-dim steps, 16-byte rows");
    const unsigned vb = (unsigned)__cvta_generic_to_shared(sV) +
                        (unsigned)(((lane & 15) * LD + (lane >> 4) * 8) * 2);
#pragma unroll
    for (int kk = 0; kk < NT / 2; kk++) {
        unsigned a[4];
        attn_p_frag<DT>(sc, kk, a);
#pragma unroll
        for (int n = 0; n < HD / 16; n++) {
            unsigned b[4];
            ldsm4_t(b, vb + (unsigned)((kk * 16 * LD + n * 16) * 2));
            attn_mma<DT>(o[2 * n], a, b[0], b[1]);
            attn_mma<DT>(o[2 * n + 1], a, b[2], b[3]);
        }
    }
}

// attn_pv_tile on wgmma (attn_prefill's Hopper path), issued and committed, not waited for: O +=
// P V, P (the warpgroup's 64 rows x NT * 8 keys) from the registers a (attn_p_frag's fragments),
// V from sV's panels ([keys][64 dims] each, ROWS keys, 128-byte swizzle) read MN-major: one
// m64nHDk16 a 16-key step, 2,048 bytes (16 rows) apart. o and a stay the products' until a
// wg::wait covers them (then wg::fence_regs on both).
template <typename DT, int NT, int HD, int ROWS>
__device__ __forceinline__ void attn_pv_issue_wg(const unsigned (&a)[NT / 2][4], const DT *sV,
                                                 float (&o)[HD / 8][4])
{
    const unsigned vs = (unsigned)__cvta_generic_to_shared(sV);
    wg::fence_regs(o); // the softmax's rescale of o is done before the products read it
    wg::fence();
#pragma unroll
    for (int kk = 0; kk < NT / 2; kk++)
        wg::mma_rt(o, a[kk], wg::desc_mn(vs + kk * 2048, ROWS * 128), DT());
    wg::commit();
}

// attn_prefill's Hopper path (compiled for sm_90a): a warpgroup for each 64 rows of the CTA,
// S = Q K^T and O += P V on wgmma, the 16-bit cache, head dims of one or two 128-byte panels, and
// the launch's shared memory (the mma.sync path's, kernels/kiln_attn.h) holding Q and two stages
// of K and V tiles of KILN_ATTN_WG_BN keys, 1024-aligned.
template <int HD, int BM, int BN, int KV8>
constexpr bool attn_prefill_wg =
    wg::HAVE && !KV8 && BM % 64 == 0 && (HD == 64 || HD == 128) &&
    (BM + 4 * KILN_ATTN_WG_BN) * HD * 2 + 1023 <= KILN_ATTN_PREFILL_SMEM(BM, BN, HD, 2, KV8);

// Element (r, d) of the Q tile of ROWS rows in shared memory: rows of LD elements, or with WG
// wgmma.cuh's panels (HD / 64 of them, ROWS x 64 elements each, 128-byte swizzle).
template <bool WG, int LD, int ROWS, typename DT>
__device__ __forceinline__ DT *attn_tile_at(DT *tile, int r, int d)
{
    if constexpr (WG)
        return tile + (d / 64) * ROWS * 64 + wg::swz(r, (d % 64) / 8) / 2 + d % 8;
    else
        return tile + r * LD + d;
}

// The mma.sync path's tiles: the keys [kb, kb + ROWS) of kv head kvh of sequence s, from a 16-bit
// cache, into ROWS rows of LD elements in shared memory by cp.async, 16 bytes a copy (no commit);
// keys at or past kvlen get zeros.
template <int LD, int ROWS, int HD, int KW, int THREADS, typename DT>
__device__ __forceinline__ void attn_load_rows(DT *tile, const DT *cache, const kiln_step &st,
                                               int s, int kb, int kvlen, int kvh)
{
    constexpr int C8 = HD / 8;
    for (int i = threadIdx.x; i < ROWS * C8; i += THREADS) {
        const int r = i / C8, d = (i % C8) * 8, j = kb + r;
        DT *dst = tile + r * LD + d;
        if (j < kvlen)
            cp_async16(dst, kv_row(cache, st, s, j, KW) + kvh * HD + d);
        else
            attn_zero16(dst);
    }
}

// attn_prefill's Hopper path: the keys [kb, kb + BW) of kv head kvh of sequence s (kb a multiple
// of BW, which divides KILN_BLOCK: one cache block, one block-table read) from a 16-bit cache
// into the panels at t (wgmma.cuh's layout, BW rows) by cp.async; keys at or past kvlen get
// zeros. Thread i copies 16-byte chunk i % (HD / 8) of rows i / (HD / 8) + RP p (RP = THREADS /
// (HD / 8) rows a pass, a multiple of 8): its rows share r % 8, so its destinations are one
// offset plus 128 RP p bytes and its sources one row plus RP p rows.
template <int HD, int KW, int BW, int THREADS, typename DT>
__device__ __forceinline__ void attn_load_tile_wg(DT *t, const DT *cache, const kiln_step &st,
                                                  int s, int kb, int kvlen, int kvh)
{
    constexpr int C8 = HD / 8, RP = THREADS / C8;
    static_assert(THREADS % C8 == 0 && RP % 8 == 0 && BW % RP == 0 && KILN_BLOCK % BW == 0,
                  "attn_load_tile_wg: whole passes of 8-row groups, a tile inside one cache block");
    const int c8 = threadIdx.x % C8, r0 = threadIdx.x / C8;
    const DT *src = cache +
                    ((long long)st.block_table[s * st.max_blocks + kb / KILN_BLOCK] * KILN_BLOCK +
                     kb % KILN_BLOCK + r0) * KW + kvh * HD + c8 * 8;
    DT *dst = t + (c8 / 8) * BW * 64 + wg::swz(r0, c8 % 8) / 2;
#pragma unroll
    for (int p = 0; p < BW / RP; p++) {
        if (kb + r0 + p * RP < kvlen)
            cp_async16(dst + p * RP * 64, src + (long long)p * RP * KW);
        else
            attn_zero16(dst + p * RP * 64);
    }
}

// A key tile's dot products sc (element e of n-tile n: row i = e / 2 of the lane's two, key kb +
// 8n + 2c + (e & 1)) through softcap and ALiBi (attn_score) and the mask (rows' key ranges [qlo,
// qhi]; a tile inside every real row's range, `whole`, uniform over the CTA, skips it), then the
// online softmax step (attn_softmax_tile: alpha, the output's rescale). Without softcap and
// ALiBi the scale is folded into the softmax's exponent (m in unscaled units): one multiply an
// element fewer.
template <int NT, int SOFTCAP, int ALIBI>
__device__ __forceinline__ void attn_tile_softmax(float (&sc)[NT][4], int kb, bool whole, int c,
                                                  const int (&qp)[2], const int (&qlo)[2],
                                                  const int (&qhi)[2], float scale, float softcap,
                                                  float slope, float (&m)[2], float (&l)[2],
                                                  float (&alpha)[2])
{
    constexpr bool RAW = !SOFTCAP && !ALIBI;
    if (!RAW || !whole) {
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int i = e / 2, j = kb + n * 8 + 2 * c + (e & 1);
                const float x = RAW ? sc[n][e]
                                    : attn_score<SOFTCAP, ALIBI>(sc[n][e], scale, softcap, slope,
                                                                 j, qp[i]);
                sc[n][e] = whole || (j >= qlo[i] && j <= qhi[i]) ? x : ATTN_NINF;
            }
    }
    attn_softmax_tile<NT>(sc, m, l, alpha, RAW ? scale * ATTN_LOG2E : ATTN_LOG2E);
}

// ---------------------------------------------------------------------------------------------
// attn_prefill, tensor-core path (HD % 16 == 0).
//
// CTA = BM query rows of ONE sequence x ONE query head; BM / 16 warps, warp w owns rows
// [16w, 16w + 16) of the tile. Shared memory (dynamic): Q [BM][HD+8], K [BN][HD+8],
// V [BN][HD+8] in DT (8 elements of padding per row: the ldmatrix fragment loads below are then
// free of bank conflicts for every HD % 16 == 0). The CTA walks the key tiles [kb, kb + BN)
// covering the union of its rows' key ranges; each tile row is looked up in the block table
// on its own (so BN need not relate to KILN_BLOCK), rows >= kvlen are zero-filled.
// Per tile: S = Q K^T (fp32 accumulators), scale / softcap / alibi / mask per element, online
// softmax (running max m and sum l per row, in float), O = O * alpha + P V with P rounded to DT
// and fed to the MMA straight from the S accumulators (the D layout of two adjacent 8-key
// n-tiles is the A layout of one 16-key k-step).
// Hopper (attn_prefill_wg: sm_90a, BM a multiple of 64, HD 64 or 128, the 16-bit cache): the same
// CTA as BM / 64 warpgroups (warpgroup w: rows 64w..64w+63, warp by warp as above), whose
// accumulators have the same rows and fragments; the warpgroups share the K and V tiles (two at
// KILN_ATTN_BM = 128: half the key and value bytes a query row of one). The tiles are wgmma.cuh's
// swizzled panels (no padding): Q, then two stages of a K and a V tile of KILN_ATTN_WG_BN keys
// (the launch's shared memory holds them with 1 KiB for alignment), so the next tile's loads are
// in flight while one is computed (tests/gpu/RESULTS.md, twenty-fourth session: one K and V tile
// of 64 keys, as the mma.sync path's, measured no faster than mma.sync; two stages, each tile's
// copies from one block-table read, no mask on whole tiles and the scale in the exponent took the
// 8B 2,048-token prefill's attention from 7.8 to 4.7 ms). The products are wgmma: S from Q and K
// in shared memory (both K-major), O += P V with P from the registers and V read MN-major, one
// instruction a 16-dim (or 16-key) step instead of the warp's ldmatrix and 4 to 16 mma.sync.
// Tiles written by cp.async or stores are fenced to the async proxy before the barrier that
// publishes them.
template <typename DT, int NH, int NKV, int HD, int CAUSAL, int WINDOW, int ALIBI, int SOFTCAP,
          int BM, int BN, int KV8>
__device__ __forceinline__ void attn_prefill_mma(const kiln_step &st, const DT *q,
                                                 const kv_t<DT, KV8> *k_cache,
                                                 const kv_t<DT, KV8> *v_cache, DT *out,
                                                 float scale, float softcap,
                                                 const float *alibi_slopes)
{
    constexpr int THREADS = 2 * BM, LD = HD + 8, C8 = HD / 8, QW = NH * HD, KW = NKV * HD;
    constexpr bool WG = attn_prefill_wg<HD, BM, BN, KV8>;
    extern __shared__ __align__(16) unsigned char attn_smem_[];
    // WG: the panels from the first 1024-byte boundary
    const unsigned pad =
        WG ? (1024u - ((unsigned)__cvta_generic_to_shared(attn_smem_) & 1023u)) & 1023u : 0u;
    DT *sQ = reinterpret_cast<DT *>(attn_smem_ + pad); // [BM][LD], WG: panels of BM rows
    DT *sK = sQ + BM * (WG ? HD : LD);                 // [BN][LD]; WG: the stages (K, V panels)
    DT *sV = sK + BN * LD;                             // [BN][LD]; WG: unused
    // KV8: the staging area after the tiles (kernels/kiln_attn.h): raw K, V bytes [BN][HD], then
    // their scales [BN] each
    unsigned char *rK = reinterpret_cast<unsigned char *>(sV + BN * LD), *rV = rK + BN * HD;
    float *rKs = reinterpret_cast<float *>(rV + BN * HD), *rVs = rKs + BN;
    __shared__ int s_klo, s_khi, s_qlo_max, s_qhi_min;

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, c = lane % 4;
    int h = 0, s = 0, row0 = 0, nrows = 0;
    if (!attn_find_tile<BM>(st, h, s, row0, nrows))
        return; // uniform over the CTA
    const int kvh = h / (NH / NKV);
    const int kvlen = st.seq_kvlen[s];

    // Q tile; rows past the sequence's rows are zeros (computed on, never written)
    for (int i = tid; i < BM * C8; i += THREADS) {
        const int r = i / C8, d = (i % C8) * 8;
        DT *dst = attn_tile_at<WG, LD, BM>(sQ, r, d);
        if (r < nrows)
            cp_async16(dst, q + (long long)(row0 + r) * QW + h * HD + d);
        else
            attn_zero16(dst);
    }
    cp_async_commit();

    // the keys any row of the tile sees: [klo, khi]; the keys every row sees: [qlo_max, qhi_min]
    // (rows that see no key make it empty)
    if (tid == 0) {
        s_klo = s_qhi_min = 0x7fffffff;
        s_khi = -1;
        s_qlo_max = 0;
    }
    __syncthreads();
    for (int r = tid; r < nrows; r += THREADS) {
        int lo, hi;
        attn_key_range<CAUSAL, WINDOW>(st.tok_pos[row0 + r], kvlen, lo, hi);
        if (lo <= hi) {
            atomicMin(&s_klo, lo);
            atomicMax(&s_khi, hi);
        }
        atomicMax(&s_qlo_max, lo);
        atomicMin(&s_qhi_min, hi);
    }
    __syncthreads();
    const int klo = s_klo, khi = s_khi, qlo_max = s_qlo_max, qhi_min = s_qhi_min;

    // this thread's two rows: g and g + 8 of its warp's 16 (i = 0, 1)
    int qp[2], qlo[2], qhi[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int r = warp * 16 + g + 8 * i;
        qp[i] = 0;
        qlo[i] = 1;
        qhi[i] = 0; // padding row: sees nothing
        if (r < nrows) {
            qp[i] = st.tok_pos[row0 + r];
            attn_key_range<CAUSAL, WINDOW>(qp[i], kvlen, qlo[i], qhi[i]);
        }
    }
    const float slope = ALIBI ? alibi_slopes[h] : 0.f;

    float o[HD / 8][4];
#pragma unroll
    for (int n = 0; n < HD / 8; n++)
        o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m[2] = {ATTN_NINF, ATTN_NINF}, l[2] = {0.f, 0.f};

    if constexpr (WG) {
        // Hopper: tiles of BW keys, tile j's K in stage j % 2's K tile and its V in that stage's
        // V tile (BW x HD each, after Q). Tile j's S = Q K^T is issued, then tile j - 1's O +=
        // P V, and tile j's softmax runs while that product does (o is rescaled after it). Loads
        // run a tile ahead: tile j's pass copies K of tile j + 1 and V of tile j, into tiles its
        // opening barrier freed (K of tile j - 1, V of tile j - 2); one cp.async group a pass.
        constexpr int BW = KILN_ATTN_WG_BN, ST = 2 * BW * HD; // a stage: K, V (elements)
        const int kb0 = klo >= 0 && klo <= khi ? (klo / BW) * BW : 0;
        if (kb0 <= khi)
            attn_load_tile_wg<HD, KW, BW, THREADS>(sK, k_cache, st, s, kb0, kvlen, kvh);
        cp_async_commit();
        // descriptors: Q's, and stage 0's K; a step adds its offset >> 4 to the address field
        // (no carry: shared addresses are < 2^18)
        const unsigned long long dq = wg::desc_k((unsigned)__cvta_generic_to_shared(sQ) +
                                                 (unsigned)(warp / 4 * 64 * 128)),
                                 dk0 = wg::desc_k((unsigned)__cvta_generic_to_shared(sK));
        // every thread's copies and zeros have landed, fenced to wgmma's reads
        auto land = [&]() {
            cp_async_wait<0>();
            wg::proxy_fence();
            __syncthreads();
        };
        // a tile's opening: its K and the last tile's V have landed, the last tile's K and the
        // one before's V are free; the copies of the next tile's K and this tile's V start
        auto open = [&](int kb, int b) {
            land();
            if (kb + BW <= khi)
                attn_load_tile_wg<HD, KW, BW, THREADS>(sK + (b ^ 1) * ST, k_cache, st, s, kb + BW,
                                                       kvlen, kvh);
            attn_load_tile_wg<HD, KW, BW, THREADS>(sK + b * ST + BW * HD, v_cache, st, s, kb,
                                                   kvlen, kvh);
            cp_async_commit();
        };
        // S = Q K^T of the tile in stage b, issued and committed: one m64nBWk16 a 16-dim step,
        // 32 (kk % 4) bytes into panel kk / 4 (the warpgroup's 64 rows of Q: 64 x 128 bytes
        // into each panel)
        auto qk = [&](float (&sc)[BW / 8][4], int b) {
            const unsigned long long dk = dk0 + (unsigned)(b * ST * 2 / 16);
            wg::fence();
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++)
                wg::mma(sc, dq + ((kk / 4) * BM * 128 + (kk % 4) * 32) / 16,
                        dk + ((kk / 4) * BW * 128 + (kk % 4) * 32) / 16, kk > 0, DT());
            wg::commit();
        };
        auto softmax = [&](float (&sc)[BW / 8][4], int kb, float (&alpha)[2]) {
            attn_tile_softmax<BW / 8, SOFTCAP, ALIBI>(
                sc, kb, kb >= qlo_max && kb + BW - 1 <= qhi_min, c, qp, qlo, qhi, scale, softcap,
                slope, m, l, alpha);
        };
        if (kb0 <= khi) {
            unsigned pa[BW / 16][4]; // the last tile's P (attn_p_frag)
            float sc[BW / 8][4], alpha[2];
            open(kb0, 0);
            qk(sc, 0);
            wg::wait<0>();
            wg::fence_regs(sc);
            softmax(sc, kb0, alpha); // o is 0: no rescale
#pragma unroll
            for (int kk = 0; kk < BW / 16; kk++)
                attn_p_frag<DT>(sc, kk, pa[kk]);
            int b = 1;
            for (int kb = kb0 + BW; kb <= khi; kb += BW, b ^= 1) {
                open(kb, b);
                qk(sc, b);
                attn_pv_issue_wg<DT, BW / 8, HD, BW>(pa, sK + (b ^ 1) * ST + BW * HD, o);
                wg::wait<1>(); // S
                wg::fence_regs(sc);
                softmax(sc, kb, alpha);
                wg::wait<0>(); // the last tile's P V
                wg::fence_regs(o);
#pragma unroll
                for (int kk = 0; kk < BW / 16; kk++) {
                    wg::fence_regs(pa[kk]); // the products read pa until they completed
                    attn_p_frag<DT>(sc, kk, pa[kk]);
                }
                attn_rescale(o, alpha);
            }
            land(); // the last tile's P V, once its V has landed
            attn_pv_issue_wg<DT, BW / 8, HD, BW>(pa, sK + (b ^ 1) * ST + BW * HD, o);
            wg::wait<0>();
            wg::fence_regs(o);
#pragma unroll
            for (int kk = 0; kk < BW / 16; kk++)
                wg::fence_regs(pa[kk]);
        }
    } else {
        // ldmatrix row addresses (shared space, bytes): Q (A): the warp's row (lane & 15), dims
        // + 8 (lane >> 4); K (B): key (lane & 7) + 8 (lane >> 4), dims + 8 ((lane >> 3) & 1)
        const unsigned qa = (unsigned)__cvta_generic_to_shared(sQ) +
                            (unsigned)(((warp * 16 + (lane & 15)) * LD + (lane >> 4) * 8) * 2);
        const unsigned ka =
            (unsigned)__cvta_generic_to_shared(sK) +
            (unsigned)((((lane & 7) + (lane >> 4) * 8) * LD + ((lane >> 3) & 1) * 8) * 2);
        for (int kb = klo >= 0 && klo <= khi ? (klo / BN) * BN : 0; kb <= khi; kb += BN) {
            if constexpr (KV8) {
                // the tile's raw K then V bytes and scales into the staging area (two cp.async
                // groups, as the 16-bit tiles), then K converted into sK; V is converted once it
                // has landed, after Q.K^T
                attn_kv8_stage<NKV, HD, BN, THREADS>(st, s, kb, kvlen, kvh, k_cache, rK, rKs);
                attn_kv8_stage<NKV, HD, BN, THREADS>(st, s, kb, kvlen, kvh, v_cache, rV, rVs);
                cp_async_wait<1>(); // Q (first tile) and K have landed
                __syncthreads();
                attn_kv8_convert<DT, HD, LD, BN, THREADS>(rK, rKs, sK);
                __syncthreads();
            } else {
                // K then V tile (two cp.async groups, so S can start before V has landed)
                attn_load_rows<LD, BN, HD, KW, THREADS>(sK, k_cache, st, s, kb, kvlen, kvh);
                cp_async_commit();
                attn_load_rows<LD, BN, HD, KW, THREADS>(sV, v_cache, st, s, kb, kvlen, kvh);
                cp_async_commit();
                cp_async_wait<1>(); // Q (first tile) and K have landed
                __syncthreads();
            }

            // S = Q K^T: 16 rows x BN keys per warp; the fragments by ldmatrix.x4 (qa, ka above):
            // A = the warp's 16 rows x 16 dims, B = 16 keys x 16 dims (b0, b1 of two n-tiles)
            float sc[BN / 8][4];
#pragma unroll
            for (int n = 0; n < BN / 8; n++)
                sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++) {
                unsigned a[4];
                ldsm4(a, qa + kk * 32);
#pragma unroll
                for (int n = 0; n < BN / 16; n++) {
                    unsigned b[4];
                    ldsm4(b, ka + (unsigned)(n * 16 * LD * 2 + kk * 32));
                    attn_mma<DT>(sc[2 * n], a, b[0], b[1]);
                    attn_mma<DT>(sc[2 * n + 1], a, b[2], b[3]);
                }
            }
            float alpha[2];
            attn_tile_softmax<BN / 8, SOFTCAP, ALIBI>(
                sc, kb, kb >= qlo_max && kb + BN - 1 <= qhi_min, c, qp, qlo, qhi, scale, softcap,
                slope, m, l, alpha);
            attn_rescale(o, alpha);

            cp_async_wait<0>(); // V has landed
            __syncthreads();
            if constexpr (KV8) {
                attn_kv8_convert<DT, HD, LD, BN, THREADS>(rV, rVs, sV);
                __syncthreads();
            }

            attn_pv_tile<DT, BN / 8, HD, LD>(sc, sV, lane, o);
            __syncthreads(); // every warp is done with sK / sV before the next tile lands
        }
    }
    cp_async_wait<0>(); // no key tile at all (cannot happen for valid input): Q's group

    // normalise and write this thread's two rows (pairs of dims, 4-byte stores)
#pragma unroll
    for (int i = 0; i < 2; i++) {
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int r = warp * 16 + g + 8 * i;
        if (r < nrows) {
            const float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;
            DT *dst = out + (long long)(row0 + r) * QW + h * HD + 2 * c;
#pragma unroll
            for (int n = 0; n < HD / 8; n++)
                *reinterpret_cast<unsigned *>(dst + n * 8) =
                    attn_pack2<DT>(o[n][2 * i] * inv, o[n][2 * i + 1] * inv);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One warp attends one query (HPC query heads sharing a kv head) over keys [k0, k1), on the
// CUDA cores. Used by attn_decode (keys split over the warps of a CTA) and by the prefill
// fallback (HD % 16 != 0).
//
// Lanes: a K/V row is CH = HD/8 chunks of 16 bytes; a key is handled by LPK lanes (CH rounded
// up to a power of two, at most 32), each holding CPL chunks; a warp takes KPW = 32/LPK keys
// at a time ("slots"). Key groups: group gi covers keys k0 + gi*KPW + [0, KPW); this warp takes
// the groups grp0, grp0 + ngrp, grp0 + 2 ngrp, ... Each slot keeps its own online softmax
// state per head (m, l, o); at the end the slots are merged across the warp (butterfly), so
// every lane returns the warp's state for its chunks (chunk ch = sub + c*LPK, c < CPL,
// where sub = lane % LPK). m = -inf, l = 0, o = 0 when the warp saw no key.
template <int HD> struct attn_lanes {
    static constexpr int CH = HD / 8;
    static constexpr int LPK = CH > 16 ? 32 : CH > 8 ? 16 : CH > 4 ? 8 : CH > 2 ? 4 : CH > 1 ? 2 : 1;
    static constexpr int CPL = (CH + LPK - 1) / LPK;
    static constexpr int KPW = 32 / LPK;
};

// merge (mo, lo, oo) into (m, l, o): scale each side by exp(its max - the new max)
__device__ __forceinline__ void attn_merge_w(float m, float mo, float &mn, float &wa, float &wb)
{
    mn = fmaxf(m, mo);
    wa = m == ATTN_NINF ? 0.f : __expf(m - mn);
    wb = mo == ATTN_NINF ? 0.f : __expf(mo - mn);
}

// KV8: each lane loads its chunks' 8 bytes (uint2) and the key's two scales instead of 16-byte
// DT chunks, and unpacks them with attn_kv8_unpack.
template <int KV8> struct attn_raw {
    typedef vec8 type; // 8 DT
};
template <> struct attn_raw<1> {
    typedef uint2 type; // 8 e4m3
};

template <typename DT, int NKV, int HD, int HPC, int SOFTCAP, int ALIBI, int KV8>
__device__ __forceinline__ void
attn_warp_keys(const kiln_step &st, int s, const kv_t<DT, KV8> *k_cache,
               const kv_t<DT, KV8> *v_cache, int kvh, int k0,
               int k1, int grp0, int ngrp, const float *qs /* smem [HPC][HD] */, float scale,
               float softcap, const float (&slope)[HPC], int qpos, float (&m)[HPC],
               float (&l)[HPC], float (&o)[HPC][attn_lanes<HD>::CPL * 8])
{
    using LN = attn_lanes<HD>;
    constexpr int U = 2, KW = NKV * HD; // U key groups loaded before any is used
    const int lane = threadIdx.x % 32, slot = lane / LN::LPK, sub = lane % LN::LPK;
#pragma unroll
    for (int hh = 0; hh < HPC; hh++) {
        m[hh] = ATTN_NINF;
        l[hh] = 0.f;
#pragma unroll
        for (int i = 0; i < LN::CPL * 8; i++)
            o[hh][i] = 0.f;
    }

    for (int gb = grp0; k0 + gb * LN::KPW < k1; gb += ngrp * U) { // warp-uniform
        typename attn_raw<KV8>::type kr[U][LN::CPL], vr[U][LN::CPL];
        float ks[U], vs[U]; // KV8: the key's K and V scales (0 for a key out of range)
        int jj[U];
        bool ok[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            jj[u] = k0 + (gb + u * ngrp) * LN::KPW + slot;
            ok[u] = jj[u] < k1;
            const kv_t<DT, KV8> *kp = k_cache, *vp = v_cache;
            ks[u] = vs[u] = 0.f;
            if (ok[u]) { // never touch the block table past the range
                if constexpr (KV8) {
                    long long row, sat;
                    kv8_at<KW, NKV>(kv_slot(st, s, jj[u]), row, sat);
                    kp = k_cache + row + kvh * HD;
                    vp = v_cache + row + kvh * HD;
                    ks[u] = *reinterpret_cast<const float *>(k_cache + sat + 4 * kvh);
                    vs[u] = *reinterpret_cast<const float *>(v_cache + sat + 4 * kvh);
                } else {
                    kp = kv_row(k_cache, st, s, jj[u], KW) + kvh * HD;
                    vp = kv_row(v_cache, st, s, jj[u], KW) + kvh * HD;
                }
            }
#pragma unroll
            for (int cc = 0; cc < LN::CPL; cc++) {
                const int ch = sub + cc * LN::LPK;
                if constexpr (KV8) {
                    kr[u][cc] = vr[u][cc] = make_uint2(0u, 0u);
                    if (ok[u] && ch < LN::CH) {
                        kr[u][cc] = *reinterpret_cast<const uint2 *>(kp + ch * 8);
                        vr[u][cc] = *reinterpret_cast<const uint2 *>(vp + ch * 8);
                    }
                } else if (ok[u] && ch < LN::CH) {
                    kr[u][cc] = *reinterpret_cast<const vec8 *>(kp + ch * 8);
                    vr[u][cc] = *reinterpret_cast<const vec8 *>(vp + ch * 8);
                } else {
#pragma unroll
                    for (int i = 0; i < 8; i++)
                        kr[u][cc].u[i] = vr[u][cc].u[i] = 0;
                }
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            float kf[LN::CPL][8], vf[LN::CPL][8];
#pragma unroll
            for (int cc = 0; cc < LN::CPL; cc++) {
                if constexpr (KV8) {
                    attn_kv8_unpack<DT>(kr[u][cc], ks[u], kf[cc]);
                    attn_kv8_unpack<DT>(vr[u][cc], vs[u], vf[cc]);
                } else {
                    attn_unpack8<DT>(kr[u][cc], kf[cc]);
                    attn_unpack8<DT>(vr[u][cc], vf[cc]);
                }
            }
#pragma unroll
            for (int hh = 0; hh < HPC; hh++) {
                float d = 0.f;
#pragma unroll
                for (int cc = 0; cc < LN::CPL; cc++) {
                    const int ch = sub + cc * LN::LPK;
                    if (ch < LN::CH) {
                        const float4 *qv = reinterpret_cast<const float4 *>(qs + hh * HD + ch * 8);
                        const float4 q0 = qv[0], q1 = qv[1];
                        d += q0.x * kf[cc][0] + q0.y * kf[cc][1] + q0.z * kf[cc][2] +
                             q0.w * kf[cc][3] + q1.x * kf[cc][4] + q1.y * kf[cc][5] +
                             q1.z * kf[cc][6] + q1.w * kf[cc][7];
                    }
                }
#pragma unroll
                for (int off = LN::LPK / 2; off > 0; off >>= 1) // all lanes, every time
                    d += __shfl_xor_sync(0xffffffffu, d, off);
                if (ok[u]) {
                    const float x = attn_score<SOFTCAP, ALIBI>(d, scale, softcap, slope[hh],
                                                               jj[u], qpos);
                    const float mn = fmaxf(m[hh], x);     // finite: x is
                    const float a = __expf(m[hh] - mn);   // 0 on the first key
                    const float pj = __expf(x - mn);
                    l[hh] = l[hh] * a + pj;
#pragma unroll
                    for (int cc = 0; cc < LN::CPL; cc++)
#pragma unroll
                        for (int i = 0; i < 8; i++)
                            o[hh][cc * 8 + i] = o[hh][cc * 8 + i] * a + pj * vf[cc][i];
                    m[hh] = mn;
                }
            }
        }
    }

    // merge the slots (lanes with the same sub, different slot) across the warp
#pragma unroll
    for (int off = LN::LPK; off < 32; off <<= 1)
#pragma unroll
        for (int hh = 0; hh < HPC; hh++) {
            const float mo = __shfl_xor_sync(0xffffffffu, m[hh], off);
            const float lo = __shfl_xor_sync(0xffffffffu, l[hh], off);
            float mn, wa, wb;
            attn_merge_w(m[hh], mo, mn, wa, wb);
            l[hh] = l[hh] * wa + lo * wb;
#pragma unroll
            for (int i = 0; i < LN::CPL * 8; i++) {
                const float oo = __shfl_xor_sync(0xffffffffu, o[hh][i], off);
                o[hh][i] = o[hh][i] * wa + oo * wb;
            }
            m[hh] = mn;
        }
}

// ---------------------------------------------------------------------------------------------
// attn_prefill, CUDA-core fallback (HD % 16 != 0). Same grid and block as the tensor-core path;
// warp w of the CTA handles rows w, w + BM/16, ... of the tile, one row at a time, all its keys.
template <typename DT, int NH, int NKV, int HD, int CAUSAL, int WINDOW, int ALIBI, int SOFTCAP,
          int BM, int KV8>
__device__ __forceinline__ void attn_prefill_rows(const kiln_step &st, const DT *q,
                                                  const kv_t<DT, KV8> *k_cache,
                                                  const kv_t<DT, KV8> *v_cache, DT *out,
                                                  float scale, float softcap,
                                                  const float *alibi_slopes)
{
    using LN = attn_lanes<HD>;
    constexpr int WARPS = BM / 16, QW = NH * HD;
    __shared__ __align__(16) float qs[WARPS][HD];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int h = 0, s = 0, row0 = 0, nrows = 0;
    if (!attn_find_tile<BM>(st, h, s, row0, nrows))
        return;
    const int kvh = h / (NH / NKV);
    const int kvlen = st.seq_kvlen[s];
    const float slope[1] = {ALIBI ? alibi_slopes[h] : 0.f};

    for (int r = warp; r < nrows; r += WARPS) { // warp-uniform
        const int t = row0 + r, p = st.tok_pos[t];
        int lo, hi;
        attn_key_range<CAUSAL, WINDOW>(p, kvlen, lo, hi);
        for (int d = lane; d < HD; d += 32)
            qs[warp][d] = to_f(q[(long long)t * QW + h * HD + d]);
        __syncwarp();
        float m[1], l[1], o[1][LN::CPL * 8];
        attn_warp_keys<DT, NKV, HD, 1, SOFTCAP, ALIBI, KV8>(st, s, k_cache, v_cache, kvh, lo,
                                                            hi + 1, 0, 1, &qs[warp][0], scale,
                                                            softcap, slope, p, m, l, o);
        const float inv = l[0] > 0.f ? 1.f / l[0] : 0.f;
        if (lane < LN::LPK) { // slot 0 writes; every slot holds the same merged values
#pragma unroll
            for (int cc = 0; cc < LN::CPL; cc++) {
                const int ch = lane + cc * LN::LPK;
                if (ch < LN::CH) {
                    float v[8];
#pragma unroll
                    for (int i = 0; i < 8; i++)
                        v[i] = o[0][cc * 8 + i] * inv;
                    store8(out + (long long)t * QW + h * HD + ch * 8, v);
                }
            }
        }
        __syncwarp(); // qs is rewritten for the next row
    }
}

// ---------------------------------------------------------------------------------------------
// attn_prefill — every query row of the step.
//
//   grid  (ceil(T / BM) + n_seqs, NH, 1)     x: query tiles of all sequences (surplus CTAs exit)
//   block 2 * BM threads                      (BM / 16 warps)
//   dynamic shared memory KILN_ATTN_PREFILL_SMEM(BM, BN, HD, sizeof(DT), KV8) bytes
//         (kernels/kiln_attn.h; the HD % 16 != 0 fallback uses none of it and (BM/16)*HD*4
//         bytes static). Over 48 KB needs
//         CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES raised first.
//
//   DT       bf16 or f16            NH, NKV  query / kv heads (NH % NKV == 0)
//   HD       head dim, % 8 == 0 and <= 256; % 16 == 0 takes the tensor-core path
//   CAUSAL   0/1                    WINDOW   0 = none, else keys [p - WINDOW + 1, p] at most
//   ALIBI    0/1: + alibi_slopes[h] * (j - p)   SOFTCAP 0/1: softcap * tanh(score / softcap)
//   BM       query rows per CTA, % 16 == 0 (default KILN_ATTN_BM = 128 -> 256 threads)
//   BN       keys per tile, % 16 == 0 (default KILN_ATTN_BN(HD): 64, 32 when HD > 128)
//   KV8      0: the 16-bit cache (DT); 1: the FP8 cache (bytes, kernels/kiln_kv8.h)
//   scale    the score scale (usually 1/sqrt(HD)); softcap, alibi_slopes [NH] read only when
//            enabled.
template <typename DT, int NH, int NKV, int HD, int CAUSAL, int WINDOW, int ALIBI, int SOFTCAP,
          int BM = KILN_ATTN_BM, int BN = KILN_ATTN_BN(HD), int KV8 = 0>
__device__ __forceinline__ void attn_prefill(const kiln_step st, const DT *q,
                                             const kv_t<DT, KV8> *k_cache,
                                             const kv_t<DT, KV8> *v_cache, DT *out, float scale,
                                             float softcap, const float *alibi_slopes)
{
    KILN_PDL_ENTER();
    static_assert(NH % NKV == 0, "attn_prefill: NH must be a multiple of NKV");
    static_assert(HD % 8 == 0 && HD <= 256, "attn_prefill: HD must be a multiple of 8, <= 256");
    static_assert(BM % 16 == 0 && BM >= 16 && BM <= 256, "attn_prefill: BM must be 16..256, % 16");
    static_assert(BN % 16 == 0 && BN >= 16, "attn_prefill: BN must be a multiple of 16");
    if constexpr (HD % 16 == 0)
        attn_prefill_mma<DT, NH, NKV, HD, CAUSAL, WINDOW, ALIBI, SOFTCAP, BM, BN, KV8>(
            st, q, k_cache, v_cache, out, scale, softcap, alibi_slopes);
    else
        attn_prefill_rows<DT, NH, NKV, HD, CAUSAL, WINDOW, ALIBI, SOFTCAP, BM, KV8>(
            st, q, k_cache, v_cache, out, scale, softcap, alibi_slopes);
}

// ---------------------------------------------------------------------------------------------
// attn_decode's tensor-core path (KILN_ATTN_DECODE_MMA): one warp attends the HPC query heads of
// row t (heads hq0 .. hq0 + HPC - 1, all of kv head kvh) over its tiles of KT keys: tiles
// k0 + (i * WARPS + warp) * KT for i = 0, 1, ... below k1. The heads are the rows of m16n8k16
// tiles (row r = head hq0 + r; rows r >= HPC are zero queries, computed on and never written), so
// S = Q K^T and O += P V are attn_prefill_mma's, with the rows being heads instead of tokens.
// Q's fragments are loaded once from q (row t of the step's queries); each K and V tile lands in
// the warp's own shared rows (`tile`, kernels/kiln_attn.h) by cp.async, keys at or past k1 as
// zero rows, masked. P is rounded to DT before P.V, as in attn_prefill.
//   Before griddepcontrol.wait (the caller has let its dependent launch and waits here): the
//   warp's first tile is requested except its rows at or past `fresh`, the sequence's first
//   position in this step. Those rows, like the queries, are written by this step's kernels
//   (rope_kv or the qkv GEMV's rope fold); the earlier ones by earlier steps, complete before
//   this step's first kernel (kernels/common.cuh: KILN_PDL_TRIGGER). So the block table's and
//   the cache's dependent reads overlap the kernel before this one.
//   16-bit cache: DT rows of HD + 8 elements, read as attn_prefill_mma reads its tiles.
//   FP8 cache: the raw bytes (rows of HD + 16 bytes: conflict-free 32-bit reads) and each key's
//     K and V scales. A K fragment is one 32-bit read of 4 consecutive dims turned into two DT
//     pairs exactly (gemv_detail::fp8x4); the dot product does not care which dims an mma k
//     index stands for, so Q's fragments take the same order (k 2c, 2c + 1 = dims 4c, 4c + 1;
//     k 2c + 8, 2c + 9 = dims 4c + 2, 4c + 3). The K scale multiplies the key's score and the V
//     scale its probability before the rounding to DT (l sums the unscaled probabilities), so
//     the cache's e4m3 values enter the tensor cores unrounded.
// Returns the warp's state per row i of the lane (rows g and g + 8): m[i] (-inf if the warp had
// no key), l[i] (summed over the quad) and o[n][2i + e] (unnormalised, dims 8n + 2c + e).
template <typename DT, int NKV, int HD, int HPC, int SOFTCAP, int ALIBI, int KV8, int WARPS>
__device__ __forceinline__ void
attn_decode_warp_mma(const kiln_step &st, int s, int p, int fresh, const DT *q,
                     const kv_t<DT, KV8> *k_cache, const kv_t<DT, KV8> *v_cache, int kvh,
                     int hq0, int k0, int k1, float scale, float softcap,
                     const float *alibi_slopes, unsigned char *tile, float (&m)[2], float (&l)[2],
                     float (&o)[HD / 8][4])
{
    constexpr int KT = KILN_ATTN_DECODE_KT, KW = NKV * HD;
    constexpr int LD = HD + 8;  // 16-bit tiles: elements a row
    constexpr int RB = HD + 16; // FP8 tiles: bytes a row
    static_assert(KT == 16, "attn_decode_warp_mma: one k-step of P.V a tile");
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    DT *sK = reinterpret_cast<DT *>(tile), *sV = sK + KT * LD;
    unsigned char *rK = tile, *rV = tile + KT * RB;
    float *ks = reinterpret_cast<float *>(tile + 2 * KT * RB), *vs = ks + KT;

    // the tile at kt's K and V rows (rows past k1: zeros), 16 bytes a copy; part 0: every row,
    // 1: the rows before `fresh` and the zeros, 2: the rows at or past `fresh`
    auto tile_rows = [&](int kt, int part) {
        constexpr int CPR = KV8 ? HD / 16 : HD / 8; // copies a row
        for (int i = lane; i < KT * CPR; i += 32) {
            const int r = i / CPR, cb = (i % CPR) * 16, j = kt + r; // cb: the copy's first byte
            if (part != 0 && (part == 2) != (j >= fresh && j < k1))
                continue;
            if constexpr (KV8) {
                if (j < k1) {
                    long long row, sat;
                    kv8_at<KW, NKV>(kv_slot(st, s, j), row, sat);
                    cp_async16(rK + r * RB + cb, k_cache + row + kvh * HD + cb);
                    cp_async16(rV + r * RB + cb, v_cache + row + kvh * HD + cb);
                    if (cb == 0) {
                        cp_async4(ks + r, k_cache + sat + 4 * kvh);
                        cp_async4(vs + r, v_cache + sat + 4 * kvh);
                    }
                } else {
                    attn_zero16(rK + r * RB + cb);
                    attn_zero16(rV + r * RB + cb);
                    if (cb == 0)
                        ks[r] = vs[r] = 0.f;
                }
            } else if (j < k1) {
                cp_async16(sK + r * LD + cb / 2, kv_row(k_cache, st, s, j, KW) + kvh * HD + cb / 2);
                cp_async16(sV + r * LD + cb / 2, kv_row(v_cache, st, s, j, KW) + kvh * HD + cb / 2);
            } else {
                attn_zero16(sK + r * LD + cb / 2);
                attn_zero16(sV + r * LD + cb / 2);
            }
        }
    };
    const int kt0 = k0 + warp * KT;
    if (kt0 < k1)
        tile_rows(kt0, 1);
    KILN_PDL_WAIT();

    // Q fragments (A: rows g, g + 8), zero for rows past HPC; a[2h + i] holds row g + 8i at the
    // dims of k 2c + 8h (the FP8 path: dims 4c + 2h, see above)
    unsigned qa[HD / 16][4];
    const DT *qr[2] = {g < HPC ? q + (long long)(hq0 + g) * HD : nullptr,
                       g + 8 < HPC ? q + (long long)(hq0 + g + 8) * HD : nullptr};
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++)
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int d = kk * 16 + (KV8 ? 4 * c + 2 * h : 2 * c + 8 * h);
                qa[kk][2 * h + i] = qr[i] ? *reinterpret_cast<const unsigned *>(qr[i] + d) : 0u;
            }
    float slope[2];
#pragma unroll
    for (int i = 0; i < 2; i++)
        slope[i] = ALIBI && g + 8 * i < HPC ? alibi_slopes[hq0 + g + 8 * i] : 0.f;

#pragma unroll
    for (int i = 0; i < 2; i++) {
        m[i] = ATTN_NINF;
        l[i] = 0.f;
    }
#pragma unroll
    for (int n = 0; n < HD / 8; n++)
        o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;

    for (int kt = kt0; kt < k1; kt += WARPS * KT) { // warp-uniform
        tile_rows(kt, kt == kt0 ? 2 : 0);
        cp_async_commit();
        cp_async_wait<0>();
        __syncwarp();

        // S = Q K^T: the HPC heads x KT keys (two n-tiles of 8 keys)
        float sc[KT / 8][4];
#pragma unroll
        for (int n = 0; n < KT / 8; n++)
            sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++)
#pragma unroll
            for (int n = 0; n < KT / 8; n++) {
                unsigned b0, b1; // B[k][n = key n * 8 + g]
                if constexpr (KV8) {
                    const unsigned w4 = attn_ld32(rK + (n * 8 + g) * RB + kk * 16 + 4 * c);
                    gemv_detail::fp8x4<DT>(__byte_perm(w4, 0u, 0x3120u), b0, b1);
                } else {
                    const DT *kp = sK + (n * 8 + g) * LD + kk * 16 + 2 * c;
                    b0 = attn_ld32(kp);
                    b1 = attn_ld32(kp + 8);
                }
                attn_mma<DT>(sc[n], qa[kk], b0, b1);
            }

        // scores and mask (element e of n-tile n: row e / 2, key kt + 8n + 2c + (e & 1)), then
        // the online softmax
#pragma unroll
        for (int n = 0; n < KT / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = n * 8 + 2 * c + (e & 1), j = kt + r;
                const float dot = KV8 ? sc[n][e] * ks[r] : sc[n][e];
                sc[n][e] = j < k1 ? attn_score<SOFTCAP, ALIBI>(dot, scale, softcap, slope[e / 2],
                                                                j, p)
                                  : ATTN_NINF;
            }
        float alpha[2];
        attn_softmax_tile<KT / 8>(sc, m, l, alpha, ATTN_LOG2E);
        attn_rescale(o, alpha);

        // O += P V: the tile's 16 keys are one k-step
        if constexpr (KV8) {
            // the V scale times each probability (l has summed them unscaled; masked keys have
            // scale 0 and p 0); B[k = key][n = dim 8n + g]: b0 = keys 2c, 2c + 1, b1 = keys
            // 2c + 8, 2c + 9
#pragma unroll
            for (int n = 0; n < KT / 8; n++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    sc[n][e] *= vs[n * 8 + 2 * c + (e & 1)];
            unsigned a[4];
            attn_p_frag<DT>(sc, 0, a);
#pragma unroll
            for (int n = 0; n < HD / 8; n++) {
                const unsigned char *v0 = rV + 2 * c * RB + n * 8 + g;
                // bytes in fp8x4's order: keys 2c, 2c + 8, 2c + 1, 2c + 9
                const unsigned w4 = (unsigned)v0[0] | ((unsigned)v0[8 * RB] << 8) |
                                    ((unsigned)v0[RB] << 16) | ((unsigned)v0[9 * RB] << 24);
                unsigned b0, b1;
                gemv_detail::fp8x4<DT>(w4, b0, b1);
                attn_mma<DT>(o[n], a, b0, b1);
            }
        } else {
            attn_pv_tile<DT, KT / 8, HD, LD>(sc, sV, lane, o);
        }
        __syncwarp(); // every lane is done with the tile before the next one lands
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    }
}

// ---------------------------------------------------------------------------------------------
// attn_decode — the last query row t = seq_start[s+1] - 1 of each sequence, keys split over
// CTAs (flash-decoding) and the splits merged in the same launch.
//
//   grid  (NSPLIT, NH / HPC, n_seqs)   block THREADS (multiple of 32)   static shared memory
//         KILN_ATTN_DECODE_SMEM(HD, HPC, THREADS / 32, NSPLIT, sizeof(DT)) bytes (<= 48 KB,
//         checked; compiler/lower.c sizes HPC by the same sum: kernels/kiln_attn.h)
//   ws    partials: n_seqs * NH * NSPLIT * (HD + 2) floats; record (s, h, split) at
//         ((s * NH + h) * NSPLIT + split) * (HD + 2) holds o[HD] (unnormalised), m, l. Only
//         read within the launch that writes it (a per-step temporary).
//   cnt   arrival counters: n_seqs * NH unsigned, group (s, y) at s * NH + y * HPC. They must
//         be zero before the first launch (the engine zeroes scratch at load) and every launch
//         leaves them zero, so a CUDA graph can be replayed any number of times.
//   out   row t of [T, NH*HD] (the layout attn_prefill writes); other rows are not touched.
//
// CTA (split, y, s) handles query heads [y*HPC, y*HPC + HPC) (HPC divides NH/NKV, so they share
// one kv head, whose K/V rows are read once for all of them). The query's key range [lo, hi]
// (same rules as attn_prefill), n keys, is one piece when n <= SOLO, else cut into pieces of
// chunk = max(SPLIT_MIN, ceil(n / NSPLIT)) keys: used = ceil(n / chunk) <= NSPLIT splits, the
// CTAs with split >= used exit at once. The boundaries depend only on the sequence's own n,
// never on the batch. The warps of a CTA interleave over its piece and merge in shared memory
// (warp 0 .. WARPS-1). A warp's keys: with KILN_ATTN_DECODE_MMA(HD, HPC) (HD % 16 == 0, HD <=
// 128, HPC <= 16) on the tensor cores, the HPC heads as the rows of m16n8k16 tiles
// (attn_decode_warp_mma: its P is rounded to DT before P.V, as attn_prefill's); otherwise on the
// CUDA cores, in float (attn_warp_keys).
//   used == 1 (n <= max(SOLO, SPLIT_MIN): short contexts): the CTA normalises and writes out
//     itself. A short context's keys on one CTA's warps, a few tiles each, take less time than
//     the merge's round trips through global memory (a fence, the counter, the records): at batch
//     1 its latency is the whole kernel's (tests/gpu/RESULTS.md, seventeenth session).
//   used > 1: each CTA writes its record, fences, and counts itself in with atomicInc on its
//     group's counter (which wraps to 0 at the used-th arrival: the reset for the next launch);
//     the last CTA to arrive merges the records of splits 0 .. used-1 in that order (never the
//     arrival order, so the result is the same whichever CTA is last) and writes out. Nothing
//     waits on another CTA, so any number of CTAs may be resident; PDL is safe because the
//     next kernel's griddepcontrol.wait covers this whole grid, the merging CTAs included.
// A sequence with no row in the step is skipped (nothing written, its counters not touched).
// PDL: the kernel lets its dependent launch first (KILN_PDL_TRIGGER) and reads the step's arrays
// and, on the tensor-core path, each warp's first cache tile before griddepcontrol.wait
// (attn_decode_warp_mma: the rows earlier steps wrote); every CTA waits before it reads q,
// writes or leaves.
//
//   NSPLIT     most key splits per (sequence, head group)   HPC query heads per CTA (1 .. NH/NKV)
//   SPLIT_MIN  fewest keys a split takes (>= 1)              SOLO most keys on one CTA (>= 0)
//   other parameters as attn_prefill.
template <typename DT, int NH, int NKV, int HD, int CAUSAL, int WINDOW, int ALIBI, int SOFTCAP,
          int NSPLIT, int HPC, int THREADS, int SPLIT_MIN, int SOLO, int KV8 = 0>
__device__ __forceinline__ void attn_decode(const kiln_step st, const DT *q,
                                            const kv_t<DT, KV8> *k_cache,
                                            const kv_t<DT, KV8> *v_cache, float *ws,
                                            unsigned *cnt, DT *out,
                                            float scale, float softcap,
                                            const float *alibi_slopes)
{
    KILN_PDL_TRIGGER();
    using LN = attn_lanes<HD>;
    constexpr int WARPS = THREADS / 32, G = NH / NKV, QW = NH * HD, RS = HD + 2;
    static_assert(NH % NKV == 0, "attn_decode: NH must be a multiple of NKV");
    static_assert(G % HPC == 0, "attn_decode: HPC must divide NH / NKV");
    static_assert(HD % 8 == 0, "attn_decode: HD must be a multiple of 8");
    static_assert(THREADS % 32 == 0 && THREADS >= 32 && THREADS <= 1024, "attn_decode: THREADS");
    static_assert(NSPLIT >= 1 && SPLIT_MIN >= 1 && SOLO >= 0,
                  "attn_decode: NSPLIT and SPLIT_MIN >= 1, SOLO >= 0");
    static_assert(HPC <= THREADS, "attn_decode: a thread per head computes the merge weights");
    static_assert(KILN_ATTN_DECODE_SMEM(HD, HPC, WARPS, NSPLIT, (int)sizeof(DT), KV8) <= 48 * 1024,
                  "attn_decode: HPC * HD * THREADS too large for 48 KB of shared memory");
    constexpr bool MMA = KILN_ATTN_DECODE_MMA(HD, HPC);
    // the warps' partial outputs po [WARPS][HPC][HD]; on the tensor-core path the same bytes
    // hold the warps' K and V tiles first (kernels/kiln_attn.h)
    constexpr int PARTS = KILN_ATTN_DECODE_PARTS(HD, HPC, WARPS, (int)sizeof(DT), KV8);
    __shared__ __align__(16) unsigned char parts[PARTS];
    float(*po)[HPC][HD] = reinterpret_cast<float(*)[HPC][HD]>(parts);
    __shared__ float pm[WARPS][HPC], pl[WARPS][HPC];
    __shared__ float sw[HPC][NSPLIT], sinv[HPC]; // the merge's split weights and 1 / sum
    __shared__ int s_last;

    const int sp = blockIdx.x, hq0 = blockIdx.y * HPC, s = blockIdx.z, kvh = hq0 / G;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    // a context of at most max(SOLO, SPLIT_MIN) keys is one piece (n <= kvlen): the other splits'
    // CTAs leave after one read (a batch of short contexts launches many of them)
    const int kvlen = st.seq_kvlen[s];
    if (sp > 0 && kvlen <= (SOLO > SPLIT_MIN ? SOLO : SPLIT_MIN)) {
        KILN_PDL_WAIT();
        return; // uniform over the CTA
    }
    const int a = st.seq_start[s], b = st.seq_start[s + 1];
    if (b <= a) {
        KILN_PDL_WAIT();
        return;
    }
    const int t = b - 1, p = st.tok_pos[t];
    int lo, hi;
    attn_key_range<CAUSAL, WINDOW>(p, kvlen, lo, hi);
    const int n = hi >= lo ? hi - lo + 1 : 0;
    const int chunk = n <= SOLO ? max(n, 1) : max(SPLIT_MIN, (n + NSPLIT - 1) / NSPLIT);
    const int used = n > 0 ? (n + chunk - 1) / chunk : 1; // n = 0 (invalid input): zeros out
    if (sp >= used) {
        KILN_PDL_WAIT();
        return; // uniform over the CTA
    }
    const int k0 = lo + sp * chunk, k1 = min(hi + 1, k0 + chunk);

    if constexpr (MMA) {
        float m[2], l[2], o[HD / 8][4];
        attn_decode_warp_mma<DT, NKV, HD, HPC, SOFTCAP, ALIBI, KV8, WARPS>(
            st, s, p, st.tok_pos[a], q + (long long)t * QW, k_cache, v_cache, kvh, hq0, k0, k1,
            scale, softcap, alibi_slopes,
            parts + warp * KILN_ATTN_DECODE_WARP_TILE(HD, (int)sizeof(DT), KV8), m, l, o);
        __syncthreads(); // every warp is done with its tiles: po takes their bytes
        const int g = lane / 4, c = lane % 4;
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int r = g + 8 * i;
            if (r < HPC) {
#pragma unroll
                for (int n = 0; n < HD / 8; n++) {
                    po[warp][r][8 * n + 2 * c] = o[n][2 * i];
                    po[warp][r][8 * n + 2 * c + 1] = o[n][2 * i + 1];
                }
                if (c == 0) {
                    pm[warp][r] = m[i];
                    pl[warp][r] = l[i];
                }
            }
        }
    } else {
        KILN_PDL_WAIT();
        __shared__ __align__(16) float qs[HPC * HD];
        for (int i = threadIdx.x; i < HPC * HD; i += THREADS) // heads hq0.. are contiguous in q
            qs[i] = to_f(q[(long long)t * QW + hq0 * HD + i]);
        float slope[HPC];
#pragma unroll
        for (int hh = 0; hh < HPC; hh++)
            slope[hh] = ALIBI ? alibi_slopes[hq0 + hh] : 0.f;
        __syncthreads();

        float m[HPC], l[HPC], o[HPC][LN::CPL * 8];
        attn_warp_keys<DT, NKV, HD, HPC, SOFTCAP, ALIBI, KV8>(st, s, k_cache, v_cache, kvh, k0,
                                                              k1, warp, WARPS, qs, scale, softcap,
                                                              slope, p, m, l, o);
        if (lane < LN::LPK) {
#pragma unroll
            for (int hh = 0; hh < HPC; hh++)
#pragma unroll
                for (int cc = 0; cc < LN::CPL; cc++) {
                    const int ch = lane + cc * LN::LPK;
                    if (ch < LN::CH)
#pragma unroll
                        for (int i = 0; i < 8; i++)
                            po[warp][hh][ch * 8 + i] = o[hh][cc * 8 + i];
                }
            if (lane == 0)
#pragma unroll
                for (int hh = 0; hh < HPC; hh++) {
                    pm[warp][hh] = m[hh];
                    pl[warp][hh] = l[hh];
                }
        }
    }
    __syncthreads();

    DT *orow = out + (long long)t * QW + hq0 * HD;
    for (int i = threadIdx.x; i < HPC * HD; i += THREADS) {
        const int hh = i / HD, d = i % HD;
        float M = ATTN_NINF;
#pragma unroll
        for (int w = 0; w < WARPS; w++)
            M = fmaxf(M, pm[w][hh]);
        float acc = 0.f, L = 0.f;
#pragma unroll
        for (int w = 0; w < WARPS; w++) {
            const float wt = pm[w][hh] == ATTN_NINF ? 0.f : __expf(pm[w][hh] - M);
            acc += wt * po[w][hh][d];
            L += wt * pl[w][hh];
        }
        if (used == 1) {
            orow[i] = from_f<DT>(acc * (L > 0.f ? 1.f / L : 0.f));
        } else {
            float *rec = ws + ((long long)(s * NH + hq0 + hh) * NSPLIT + sp) * RS;
            rec[d] = acc;
            if (d == 0) {
                rec[HD] = M;
                rec[HD + 1] = L;
            }
        }
    }
    if (used == 1)
        return;

    // the "last block" reduction: every writer fences its record before the CTA counts itself
    // in; the last CTA fences again before it reads the others' records, and reads them from L2
    // (__ldcg: another SM's writes are not in this SM's L1)
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned prev = atomicInc(cnt + s * NH + hq0, (unsigned)(used - 1));
        s_last = prev == (unsigned)(used - 1);
        if (s_last)
            __threadfence();
    }
    __syncthreads();
    if (!s_last)
        return;
    const float *rec0 = ws + (long long)(s * NH + hq0) * NSPLIT * RS;
    if (threadIdx.x < HPC) {
        const float *rh = rec0 + (long long)threadIdx.x * NSPLIT * RS;
        float M = ATTN_NINF;
        for (int i = 0; i < used; i++)
            M = fmaxf(M, __ldcg(rh + i * RS + HD));
        float L = 0.f;
        for (int i = 0; i < used; i++) { // every used split has a key: its m is finite
            const float w = __expf(__ldcg(rh + i * RS + HD) - M);
            sw[threadIdx.x][i] = w;
            L += w * __ldcg(rh + i * RS + HD + 1);
        }
        sinv[threadIdx.x] = L > 0.f ? 1.f / L : 0.f;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < HPC * HD; i += THREADS) {
        const int hh = i / HD, d = i % HD;
        const float *rh = rec0 + (long long)hh * NSPLIT * RS + d;
        float acc = 0.f;
        for (int j = 0; j < used; j++)
            acc += sw[hh][j] * __ldcg(rh + j * RS);
        orow[i] = from_f<DT>(acc * sinv[hh]);
    }
}

} // namespace kiln
