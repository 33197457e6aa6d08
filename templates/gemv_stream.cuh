// gemv_stream.cuh — the batch-1 GEMV (one row of x) that streams its weight without a gap at the
// kernel boundaries: y[n] = x · w[n] (+ bias[n]), w a PyTorch Linear weight [N, K]. lower.c adds
// it beside a linear's gemv.cuh step where a target is sm_90 or newer; the engine runs it for a
// step of exactly one row on such code and gemv.cuh for the others (ka_size_runs).
//
// Why: a batch-1 decode step is a chain of kernels, each GEMV reading its weight once. A GEMV
// whose blocks fill the SMs starts its loads only when its predecessor is done, and its last
// blocks run alone: ~4 us of fixed cost a matrix (tests/gpu/RESULTS.md, eighth session), the
// 8B step's GEMVs at 0.83 of the copy bandwidth. This kernel is a grid of BLOCKS blocks, one an
// SM (each asks for more than half an SM's shared memory, so that the blocks of two of them never
// share one: kernels/kiln_gemm.h says why; small kernels' blocks still fit beside it), and it
// overlaps the boundary from both sides:
//   - it lets its dependent launch at once (griddepcontrol.launch_dependents first), whose
//     blocks take each SM as this kernel's block there leaves, and
//   - before it waits for its predecessor (griddepcontrol.wait) each warp issues the bulk copies
//     (cp.async.bulk, TMA) of its first D units of weight into its shared-memory ring. Weights
//     are no kernel's output, so reading them early is safe; x, the bias and y are touched only
//     after the wait (kernels/common.cuh: KILN_PDL_TRIGGER, KILN_PDL_WAIT).
// Its prototype (kiln-ktest --bench chain, tests/gpu/RESULTS.md, fourteenth session) read the
// Llama-3 8B layer chain at 0.98 of the copy bandwidth with an empty kernel between the GEMVs,
// against 0.82 for gemv.cuh.
//
// Work: output o (GATED: gate row o and up row NOUT + o) belongs to warp o % TW of the TW =
// BLOCKS * WARPS warps, which reads the row(s) as units of SEG elements (SEG * sizeof(DT) bytes,
// one bulk copy each), lane l taking the 16-byte chunks l, l + 32, ... of a unit (fewer than 32
// chunks: some lanes idle) against the same elements of x (staged once per block in shared
// memory), float FMAs, one warp sum per row. A warp's ring has D slots with an mbarrier each;
// a slot is refilled with the warp's next unit as soon as it has been read.
//
// gemv_stream_fp8 and gemv_stream_rope_fp8 stream an FP8 weight with one scale per row (gemv.cuh's
// gemv_fp8 layout) and take the products on the tensor cores (unit_dot_fp8): the e4m3 bytes
// turned into f16 pairs by the hardware's conversion, x staged as f16 (scaled by a power of two
// into f16's range, exactly), mma.sync with float sums, each row's sum times its scale (lane j
// holds the scales of the warp's item j, loaded before griddepcontrol.wait) and the power of two.
// In float FMAs a unit cost 518 instructions, on mma.sync 192: the issue slots went from 48% to
// 23% busy, and the Llama-3 8B batch-1 step stayed at 0.73-0.76 of its roofline (tests/gpu/
// RESULTS.md, twentieth and twenty-first sessions): not the arithmetic, then. gemv_stream_int4
// and gemv_stream_rope_int4 take the same rounds on gemv_int4's weight in groups of 128
// (unit_dot_int4), each unit's (scale, zero) pairs copied into its ring slot after its weight
// bytes, with 16 warps a block (kernels/kiln_gemm.h: the 8B INT4 step 0.40 on gemv_int4, 0.45
// with 8 warps, 0.49 with 16).
//
// NORM folds the RMS norm before the linear into the staging of x, so that the decode step runs
// no norm kernel (lower.c's norm_fold: the norm's output has no other reader): NORM 1 stages
// rms_norm(x) (elementwise.cuh's arithmetic: round(s * rsqrt(mean(s^2) + eps) * w), w being
// 1 + nw with UNIT_OFFSET), NORM 2 the same of s = round(x + res), which block 0 also stores to
// res_out (when not null) as rms_norm's residual output. Every block computes the norm itself:
// K elements from L2, against a kernel boundary of several microseconds saved (tests/gpu/
// RESULTS.md, fifteenth session). res, nw and res_out must not overlap y (plan_memory keeps
// the norm's inputs live until the linear).
//
// Launch rule: grid = (BLOCKS), block = 32 * WARPS threads, dynamic shared memory at least
// KILN_GEMV_STREAM_SMEM(WARPS, D, SEG, K, sizeof(DT), 16, 8 or 4 weight bits) (kernels/
// kiln_gemm.h; SEG lower.c's lower_gemv_stream_seg). Layouts: x [1, K]; res, nw, res_out [K]
// (NORM only); w [N, K] (FP8: bytes, and scale [N] float; INT4: bytes [N, K/2], and sz
// [N, K/128] uint2); bias [N] (read only when BIAS; GATED: [gate bias (N/2); up bias (N/2)]); y
// [NOUT], float when OUT_F32 else DT. Float sums, one rounding of the result
// (gemv_detail::store_out).
// Preconditions: M == 1 (the step's size class says so), SEG a multiple of
// KILN_GEMV_STREAM_CHUNK (a 16-byte chunk's elements: 8, FP8 16; INT4 two groups, 256), K % SEG
// == 0, x, res, w and sz 16-byte aligned, code for sm_90 or newer (the older body traps; the
// engine never launches it there).
#pragma once

#include "elementwise.cuh" // ew_detail::rope_cs
#include "gemv.cuh"
#include "kiln_gemm.h"

namespace kiln {

namespace stream_detail {

__device__ __forceinline__ unsigned smem_addr(const void *p)
{
    return (unsigned)__cvta_generic_to_shared(p);
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// The slot's barrier (initialised with count 1) to expect `bytes` from the bulk copies that follow
// (one arrival), then one of them: `bytes` (a multiple of 16) from global src (16-byte aligned)
// to shared dst, completing on bar.
__device__ __forceinline__ void mbar_expect(unsigned bar, unsigned bytes)
{
    asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}\n"
                 ::"r"(bar), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void bulk_copy(unsigned dst, const void *src, unsigned bytes,
                                          unsigned bar)
{
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], "
                 "%2, [%3];\n" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
}
#endif

// What the kernel computes, as a type OUT (the body's policy): ITEMS items, each one weight row
// or (PAIRED) two, whose warp sums go to finish() (called by every lane; the first sum is the first
// row's). row(p, second): an item's weight row. prepare<TW>(st, gw, lane): per-lane work before
// griddepcontrol.wait, for the items of warp gw (p = gw, gw + TW, ...), reading nothing a kernel
// writes.

// gemv_stream's: output o the row o (GATED: gate row o and up row NOUT + o), stored by
// gemv_detail::store_out.
template <typename DT, int N, bool BIAS, bool GATED, int ACT, bool OUT_F32>
struct plain_out {
    static constexpr int ITEMS = GATED ? N / 2 : N;
    static constexpr bool PAIRED = GATED;
    const DT *bias;
    void *y;
    __device__ __forceinline__ long long row(int p, bool second) const
    {
        return second ? (long long)ITEMS + p : p;
    }
    template <int TW>
    __device__ __forceinline__ void prepare(const kiln_step &, int, int)
    {
    }
    __device__ __forceinline__ void finish(const kiln_step &, int lane, int o, int, float g,
                                           float up) const
    {
        if (lane == 0)
            gemv_detail::store_out<DT, N, BIAS, GATED, ACT, OUT_F32>(y, bias, nullptr, 0, o, g,
                                                                     up);
    }
};

// gemv_stream_rope's: the fused qkv linear of one token (heads of HD rows: NH of q, NKV of k, NKV
// of v) with rope_kv's work done in the epilogue. An item is two rows of one head: rotary pair j
// < ROT / 2 (dims j, j + ROT / 2, or 2j, 2j + 1 when INTERLEAVED), then the dims past ROT two by
// two. Each row's sum (+ bias) is rounded to DT (the linear's output, as rope_kv reads it), q and
// k pairs rotated as rope_kv does (ew_detail::rope_cs's cos and sin), and rounded again into q_out
// (q), or the KV cache's row st.tok_slot[0] (k, v; nothing when the slot is < 0).
template <typename DT, int NH, int NKV, int HD, int ROT, int INTERLEAVED, int DYNAMIC, bool BIAS>
struct rope_out {
    static constexpr int N = (NH + 2 * NKV) * HD, ITEMS = N / 2, HALF = ROT / 2;
    static constexpr bool PAIRED = true;
    static_assert(HD % 2 == 0 && ROT % 2 == 0 && ROT <= HD, "gemv_stream_rope: even HD and ROT");
    const DT *bias;
    DT *q_out, *k_cache, *v_cache;
    const float *inv_freq;
    float rope_scale, dyn_base, dyn_factor;
    int dyn_max_pos;
    float c, s, b1, b2; // lane k: item k's cos and sin, and its rows' bias (prepare)
    int slot;           // st.tok_slot[0]

    // the item's head (of the NH + 2 NKV) and its two dims
    static __device__ __forceinline__ void dims(int p, int &head, int &d1, int &d2)
    {
        head = p / (HD / 2);
        const int j = p % (HD / 2);
        if (j < HALF) {
            d1 = INTERLEAVED ? 2 * j : j;
            d2 = INTERLEAVED ? 2 * j + 1 : j + HALF;
        } else {
            d1 = ROT + 2 * (j - HALF);
            d2 = d1 + 1;
        }
    }
    __device__ __forceinline__ long long row(int p, bool second) const
    {
        int head, d1, d2;
        dims(p, head, d1, d2);
        return (long long)head * HD + (second ? d2 : d1);
    }
    // Lane k: the cos and sin of the warp's item k and its rows' bias, and the cache slot, all
    // loaded before griddepcontrol.wait (loaded at an item's end, they would stall the warp a
    // memory round trip each): the step's metadata (st.tok_pos, st.tok_slot, ...) is copied
    // from the host before the step's first kernel and written by none, inv_freq and the bias
    // are constants.
    template <int TW>
    __device__ __forceinline__ void prepare(const kiln_step &st, int gw, int lane)
    {
        static_assert((ITEMS + TW - 1) / TW <= 32, "gemv_stream_rope: at most 32 items a warp");
        const int p = gw + lane * TW;
        c = 1.f, s = 0.f, b1 = 0.f, b2 = 0.f;
        slot = st.tok_slot[0];
        if (p >= ITEMS)
            return;
        int head, d1, d2;
        dims(p, head, d1, d2);
        if (BIAS) {
            b1 = to_f(bias[head * HD + d1]);
            b2 = to_f(bias[head * HD + d2]);
        }
        if (HALF > 0 && head < NH + NKV && p % (HD / 2) < HALF)
            ew_detail::rope_cs<ROT, DYNAMIC>(st, 0, p % (HD / 2), inv_freq, rope_scale, dyn_base,
                                             dyn_factor, dyn_max_pos, c, s);
    }
    __device__ __forceinline__ void finish(const kiln_step &, int lane, int p, int k, float g,
                                           float up) const
    {
        const float ck = __shfl_sync(0xffffffffu, c, k), sk = __shfl_sync(0xffffffffu, s, k);
        const float bk1 = __shfl_sync(0xffffffffu, b1, k), bk2 = __shfl_sync(0xffffffffu, b2, k);
        if (lane != 0)
            return;
        int head, d1, d2;
        dims(p, head, d1, d2);
        const float x1 = to_f(from_f<DT>(BIAS ? g + bk1 : g));
        const float x2 = to_f(from_f<DT>(BIAS ? up + bk2 : up));
        float o1 = x1, o2 = x2;
        if (head < NH + NKV && d1 < ROT && d2 < ROT) {
            o1 = x1 * ck - x2 * sk;
            o2 = x2 * ck + x1 * sk;
        }
        DT *dst;
        if (head < NH) {
            dst = q_out + (long long)head * HD;
        } else {
            if (slot < 0)
                return;
            const int h = head < NH + NKV ? head - NH : head - NH - NKV;
            dst = (head < NH + NKV ? k_cache : v_cache) + (long long)slot * (NKV * HD) +
                  (long long)h * HD;
        }
        dst[d1] = from_f<DT>(o1);
        dst[d2] = from_f<DT>(o2);
    }
};

// Where element i (a multiple of 8) of x is staged for a weight of WBITS bits: in order for a
// 16-bit weight; where a lane's 16-byte chunk of weight is P = 16 / WBITS pieces of 8 elements
// of x (FP8: 2, INT4: 4), each unit's SEG elements are [pieces 0 of its chunks | pieces 1 | ...],
// so that a warp's 16-byte reads of one piece are consecutive (in order, a lane's reads 16P
// bytes apart would be P-way bank conflicts) and their addresses a base per unit plus
// constants. FP8: the 8 elements at x_at(i) are those of i in gemv_fp8's byte order (0, 2, 1, 3,
// 4, 6, 5, 7), as e4m3x16's pairs are.
template <int WBITS, int SEG>
__device__ __forceinline__ int x_at(int i)
{
    constexpr int P = 16 / WBITS;
    if (P == 1)
        return i;
    const int r = i % SEG;
    return i - r + (r / 8 % P) * (SEG / P) + r / (8 * P) * 8;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// Sixteen e4m3 bytes of gemv_fp8's order (word j's bytes: elements 4j, 4j+2, 4j+1, 4j+3) as
// eight f16 pairs, exactly (every e4m3 value, subnormals included, is an f16 normal): h[2j] =
// (4j, 4j+2), h[2j+1] = (4j+1, 4j+3), one hardware conversion a pair.
__device__ __forceinline__ void e4m3x16(const uint4 &q, unsigned h[8])
{
    const unsigned w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int j = 0; j < 4; j++)
        asm("{\n.reg .b16 l, h;\nmov.b32 {l, h}, %2;\n"
            "cvt.rn.f16x2.e4m3x2 %0, l;\ncvt.rn.f16x2.e4m3x2 %1, h;\n}"
            : "=r"(h[2 * j]), "=r"(h[2 * j + 1])
            : "r"(w[j]));
}
#endif

// A unit of a 16-bit weight (UB bytes) against x staged in order from the unit's first element
// xu: the lane's 16-byte chunks lane, lane + 32, ... in float FMAs; the lane's share of the sum.
template <typename DT, int UB>
__device__ __forceinline__ float unit_dot(const uint4 *wv, const DT *xu, int lane)
{
    float a = 0.f;
#pragma unroll
    for (int j = 0; j < (UB / 16 + 31) / 32; j++) {
        const int c = j * 32 + lane;
        if (UB % 512 == 0 || c < UB / 16) {
            float wf[8], xf[8];
            gemv_detail::unpack8<DT>(wv[c], wf);
            gemv_detail::unpack8<DT>(*reinterpret_cast<const uint4 *>(xu + 8 * c), xf);
#pragma unroll
            for (int i = 0; i < 8; i++)
                a = fmaf(wf[i], xf[i], a);
        }
    }
    return a;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// A unit of an FP8 weight (UB bytes, SEG = UB elements) on the tensor cores, against x staged as
// f16 from the unit's first element xu in x_at's order. A dot product may split its terms any
// way, so the unit's 16-byte chunks go in rounds of 64: in round r, lane (g = lane / 4, t =
// lane % 4) takes chunk 64r + lane as row g of an mma's A (16 x 16) and chunk 64r + 32 + lane as
// its row g + 8, each chunk's 16 elements four k-groups at the lane's fragment columns {2t, 2t+1,
// 2t+8, 2t+9} (e4m3x16's pairs, x's staged in the same order), and B's column g is the x of its
// row g chunk in the first mma, of its row g + 8 chunk in the second. Of each mma's 128 outputs
// 8 are wanted, D1[g][g] and D2[g + 8][g] (the chunks against their own x), which lane (g, g / 2)
// holds (c0 + c2 for an even g, c1 + c3 for an odd one); the rest is discarded. 192
// instructions a 4 KB unit against 518 in float FMAs (tests/gpu/RESULTS.md, twenty-first
// session). A round's chains of 4 mma start from zero and are added to floats (the tensor cores
// truncate inside a chain: gemv.cuh). Returns the lane's share of the unit's sum.
template <int UB, int SEG>
__device__ __forceinline__ float unit_dot_fp8(const uint4 *wv, const f16 *xu, int lane)
{
    constexpr int CH = UB / 16, R = (CH + 63) / 64;
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
    float f0 = 0.f, f1 = 0.f;
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int ca = 64 * r + lane, cb = ca + 32;
        const bool rows8 = 64 * r + 32 < CH; // the round has chunks for rows 8..15
        uint4 qa = zero, qb = zero, xa[2] = {zero, zero}, xb[2] = {zero, zero};
        if (CH % 64 == 0 || ca < CH) {
            qa = wv[ca];
            xa[0] = *reinterpret_cast<const uint4 *>(xu + 8 * ca);
            xa[1] = *reinterpret_cast<const uint4 *>(xu + SEG / 2 + 8 * ca);
        }
        if (CH % 64 == 0 || cb < CH) {
            qb = wv[cb];
            xb[0] = *reinterpret_cast<const uint4 *>(xu + 8 * cb);
            xb[1] = *reinterpret_cast<const uint4 *>(xu + SEG / 2 + 8 * cb);
        }
        unsigned ha[8], hb[8];
        e4m3x16(qa, ha);
        e4m3x16(qb, hb);
        const unsigned *pa = reinterpret_cast<const unsigned *>(xa);
        const unsigned *pb = reinterpret_cast<const unsigned *>(xb);
        float d1[4] = {0.f, 0.f, 0.f, 0.f}, d2[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int q = 0; q < 4; q++) {
            gemv_detail::mma16816<f16>(d1, ha[2 * q], hb[2 * q], ha[2 * q + 1], hb[2 * q + 1],
                                       pa[2 * q], pa[2 * q + 1]);
            if (rows8)
                gemv_detail::mma16816<f16>(d2, ha[2 * q], hb[2 * q], ha[2 * q + 1],
                                           hb[2 * q + 1], pb[2 * q], pb[2 * q + 1]);
        }
        f0 += d1[0] + d2[2];
        f1 += d1[1] + d2[3];
    }
    const int g = lane / 4;
    return lane % 4 == g / 2 ? (g % 2 ? f1 : f0) : 0.f;
}

// A unit of an INT4 weight (gemv_int4's layout, groups of 128 columns: UB bytes, SEG = 2 UB
// elements) with its groups' (scale, B + zero) pairs sz (gemv_int4's), against x staged in DT from
// the unit's first element xu in x_at's order: unit_dot_fp8's rounds, a chunk 32 elements (four
// words: int4_diff's exact q - z pairs in the weight's DT, for mma with x in DT), a round's row
// (4 lanes' chunks) the 128 elements of one group, whose sum, a chain of 8 mma from zero, is
// multiplied by the group's scale (gemv_int4's factored path). Returns the lane's share.
template <typename DT, int UB, int SEG>
__device__ __forceinline__ float unit_dot_int4(const uint4 *wv, const uint2 *sz, const DT *xu,
                                               int lane)
{
    using P = gemv_detail::int4_pairs<DT>;
    constexpr int CH = UB / 16, R = (CH + 63) / 64;
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
    const int g = lane / 4, e = g % 2;
    float f = 0.f;
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int ca = 64 * r + lane, cb = ca + 32;
        const bool rows8 = 64 * r + 32 < CH;
        uint4 qa = zero, qb = zero, xa[4] = {zero, zero, zero, zero};
        uint4 xb[4] = {zero, zero, zero, zero};
        uint2 sa = make_uint2(0u, 0u), sb = make_uint2(0u, 0u);
        if (CH % 64 == 0 || ca < CH) {
            qa = wv[ca];
            sa = sz[16 * r + g];
#pragma unroll
            for (int h = 0; h < 4; h++)
                xa[h] = *reinterpret_cast<const uint4 *>(xu + h * (SEG / 4) + 8 * ca);
        }
        if (CH % 64 == 0 || cb < CH) {
            qb = wv[cb];
            sb = sz[16 * r + 8 + g];
#pragma unroll
            for (int h = 0; h < 4; h++)
                xb[h] = *reinterpret_cast<const uint4 *>(xu + h * (SEG / 4) + 8 * cb);
        }
        const unsigned wa[4] = {qa.x, qa.y, qa.z, qa.w}, wb[4] = {qb.x, qb.y, qb.z, qb.w};
        float d1[4] = {0.f, 0.f, 0.f, 0.f}, d2[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int h = 0; h < 4; h++) {
            const uint4 a = gemv_detail::int4_diff<DT>(wa[h], sa.y);
            const uint4 b = gemv_detail::int4_diff<DT>(wb[h], sb.y);
            gemv_detail::mma16816<DT>(d1, a.x, b.x, a.y, b.y, xa[h].x, xa[h].y);
            gemv_detail::mma16816<DT>(d1, a.z, b.z, a.w, b.w, xa[h].z, xa[h].w);
            if (rows8) {
                gemv_detail::mma16816<DT>(d2, a.x, b.x, a.y, b.y, xb[h].x, xb[h].y);
                gemv_detail::mma16816<DT>(d2, a.z, b.z, a.w, b.w, xb[h].z, xb[h].w);
            }
        }
        f = fmaf(e ? d1[1] : d1[0], P::lo_f(sa.x), f);
        f = fmaf(e ? d2[3] : d2[2], P::lo_f(sb.x), f);
    }
    return lane % 4 == g / 2 ? f : 0.f;
}
#endif

// The kernel for policy OUT (above), called after KILN_PDL_TRIGGER, on a weight w (bytes) of
// WBITS bits: 16, DT; 8, FP8 (e4m3) in gemv_fp8's byte order, with a float scale per weight row in
// wscale that multiplies the row's sum; 4, INT4 in gemv_int4's layout with groups of 128 columns
// (KILN_GEMV_STREAM_INT4_G), whose (scale, B + zero) pairs sz each unit brings into its ring slot
// after its weight bytes (a second bulk copy on the slot's barrier).
template <typename DT, int WBITS, int K, int WARPS, int D, int SEG, int BLOCKS, int NORM,
          bool UNIT_OFFSET, typename OUT>
__device__ __forceinline__ void body(const kiln_step &st, const DT *x, const DT *res,
                                     const DT *nw, DT *res_out, float eps, const unsigned char *w,
                                     const float *wscale, const uint2 *sz, OUT &out)
{
    constexpr bool FP8 = WBITS == 8, INT4 = WBITS == 4;
    constexpr int G4 = KILN_GEMV_STREAM_INT4_G;
    static_assert(WBITS == 16 ? sizeof(DT) == 2 : FP8 || INT4, "gemv_stream: 16, 8 or 4 bits");
    static_assert(SEG % KILN_GEMV_STREAM_CHUNK(WBITS) == 0 && K % SEG == 0,
                  "gemv_stream: K must be whole units of SEG, SEG whole chunks (INT4: whole pairs "
                  "of groups, 16-byte sz slices)");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    constexpr int NOUT = OUT::ITEMS;
    constexpr int KS = K / SEG;                    // units of one weight row
    constexpr int UPO = OUT::PAIRED ? 2 * KS : KS; // units of one item
    constexpr int UB = SEG * WBITS / 8;                         // weight bytes of a unit
    constexpr int SLOT = KILN_GEMV_STREAM_SLOT(SEG, WBITS), SZB = SLOT - UB; // + its sz (INT4)
    constexpr int TW = BLOCKS * WARPS;
    extern __shared__ __align__(128) unsigned char smem[];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gw = blockIdx.x * WARPS + warp;
    unsigned char *ring = smem + warp * D * SLOT;
    DT *xs = reinterpret_cast<DT *>(smem + WARPS * D * SLOT);
    const unsigned bars = smem_addr(smem + WARPS * D * SLOT + K * (int)sizeof(DT)) + warp * D * 8;
    if (lane < D)
        mbar_init(bars + lane * 8, 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    __syncwarp();

    // the warp's units in order: output o (o = gw, gw + TW, ...), unit u of it
    int po = gw, pu = 0; // the next unit to issue
    auto issue = [&](int slot) {
        if (lane == 0) {
            const long long row = out.row(po, OUT::PAIRED && pu >= KS);
            const int seg = OUT::PAIRED && pu >= KS ? pu - KS : pu;
            const unsigned dst = smem_addr(ring + slot * SLOT), bar = bars + slot * 8;
            mbar_expect(bar, SLOT);
            bulk_copy(dst, w + (row * K + (long long)seg * SEG) * WBITS / 8, UB, bar);
            if (INT4)
                bulk_copy(dst + UB, sz + (row * K + (long long)seg * SEG) / G4, SZB, bar);
        }
        if (++pu == UPO) {
            pu = 0;
            po += TW;
        }
    };
    for (int slot = 0; slot < D && po < NOUT; slot++)
        issue(slot);
    out.template prepare<TW>(st, gw, lane);
    // FP8: lane j holds the row scales of the warp's item k0 + j (sg; su the second row's),
    // loaded 32 items at a time (the first before griddepcontrol.wait: they are constants)
    float sg = 1.f, su = 1.f;
    auto load_scales = [&](int k0) {
        const int p = gw + (k0 + lane) * TW;
        if (p < NOUT) {
            sg = wscale[out.row(p, false)];
            if (OUT::PAIRED)
                su = wscale[out.row(p, true)];
        }
    };
    if (FP8)
        load_scales(0);

    KILN_PDL_WAIT();
    // x staged: rms_norm's arithmetic when NORM (templates/elementwise.cuh): s = round(x + res)
    // (NORM 2; block 0 stores it to res_out), then round(s * rsqrt(mean(s^2) + eps) * w); FP8:
    // as f16 in x_at's order, times 2^-xe (the sums are multiplied back by 2^xe)
    constexpr int CH = (K / 8 + WARPS * 32 - 1) / (WARPS * 32); // a thread's 8-element chunks
    __shared__ float scratch[32];
    float v[CH][8], ss = 0.f;
#pragma unroll
    for (int k = 0; k < CH; k++) {
        const int i = (threadIdx.x + k * WARPS * 32) * 8;
        if (i < K) {
            gemv_detail::unpack8<DT>(__ldcg(reinterpret_cast<const uint4 *>(x + i)), v[k]);
            if (NORM == 2) {
                float r[8];
                gemv_detail::unpack8<DT>(__ldcg(reinterpret_cast<const uint4 *>(res + i)), r);
#pragma unroll
                for (int e = 0; e < 8; e++)
                    v[k][e] = to_f(from_f<DT>(v[k][e] + r[e]));
                if (blockIdx.x == 0 && res_out)
                    store8(res_out + i, v[k]);
            }
#pragma unroll
            for (int e = 0; e < 8; e++)
                ss += v[k][e] * v[k][e];
        }
    }
    if (NORM != 0) {
        const float inv = rsqrtf(block_sum<WARPS * 32>(ss, scratch) / (float)K + eps);
#pragma unroll
        for (int k = 0; k < CH; k++) {
            const int i = (threadIdx.x + k * WARPS * 32) * 8;
            if (i < K) {
                float g[8];
                load8(nw + i, g);
#pragma unroll
                for (int e = 0; e < 8; e++)
                    v[k][e] = to_f(from_f<DT>(v[k][e] * inv * (UNIT_OFFSET ? 1.f + g[e] : g[e])));
            }
        }
    }
    float xscale = 1.f; // FP8: 2^xe
    if constexpr (FP8) {
        // xe puts the largest |x| in [2^13, 2^14): every DT value of x (bf16: 8 significant
        // bits) is an f16 there, exactly, down to 2^-28 of the largest (smaller ones, below the
        // float sums' rounding, may round)
        float amax = 0.f;
#pragma unroll
        for (int k = 0; k < CH; k++)
#pragma unroll
            for (int e = 0; e < 8; e++)
                if ((threadIdx.x + k * WARPS * 32) * 8 < K)
                    amax = fmaxf(amax, fabsf(v[k][e]));
        amax = block_max<WARPS * 32>(amax, scratch);
        int xe = (int)(__float_as_uint(amax) >> 23 & 0xFFu) - 127 - 13;
        xe = xe < -110 ? -110 : xe > 110 ? 110 : xe;
        xscale = __uint_as_float((unsigned)(127 + xe) << 23);
        const float down = __uint_as_float((unsigned)(127 - xe) << 23);
        auto h2 = [&](float lo, float hi) {
            const __half2 h = __floats2half2_rn(lo * down, hi * down);
            return *reinterpret_cast<const unsigned *>(&h);
        };
#pragma unroll
        for (int k = 0; k < CH; k++) {
            const int i = (threadIdx.x + k * WARPS * 32) * 8;
            if (i < K)
                *reinterpret_cast<uint4 *>(xs + x_at<WBITS, SEG>(i)) =
                    make_uint4(h2(v[k][0], v[k][2]), h2(v[k][1], v[k][3]), h2(v[k][4], v[k][6]),
                               h2(v[k][5], v[k][7]));
        }
    } else {
#pragma unroll
        for (int k = 0; k < CH; k++) {
            const int i = (threadIdx.x + k * WARPS * 32) * 8;
            if (i < K)
                store8(xs + x_at<WBITS, SEG>(i), v[k]);
        }
    }
    __syncthreads();

    float ag = 0.f, au = 0.f; // the lane's sums of the item's first and second row
    int consumed = 0, k = 0;  // k: the warp's item count
    for (int o = gw; o < NOUT; o += TW, k++)
        for (int u = 0; u < UPO; u++, consumed++) {
            const int slot = consumed % D;
            mbar_wait(bars + slot * 8, (unsigned)(consumed / D) & 1u);
            const uint4 *wv = reinterpret_cast<const uint4 *>(ring + slot * SLOT);
            const int xu = (OUT::PAIRED && u >= KS ? u - KS : u) * SEG; // the unit's first element
            float a;
            if constexpr (FP8)
                a = unit_dot_fp8<UB, SEG>(wv, reinterpret_cast<const f16 *>(xs) + xu, lane);
            else if constexpr (INT4)
                a = unit_dot_int4<DT, UB, SEG>(
                    wv, reinterpret_cast<const uint2 *>(ring + slot * SLOT + UB), xs + xu, lane);
            else
                a = unit_dot<DT, UB>(wv, xs + xu, lane);
            if (OUT::PAIRED && u >= KS)
                au += a;
            else
                ag += a;
            __syncwarp(); // every lane has read the slot: it may be refilled
            if (po < NOUT)
                issue(slot);
            if (u == UPO - 1) {
                float g = warp_sum(ag), up = OUT::PAIRED ? warp_sum(au) : 0.f;
                if (FP8) {
                    g *= __shfl_sync(0xffffffffu, sg, k % 32) * xscale;
                    up *= __shfl_sync(0xffffffffu, su, k % 32) * xscale;
                    if (k % 32 == 31)
                        load_scales(k + 1);
                }
                out.finish(st, lane, o, k, g, up);
                ag = au = 0.f;
            }
        }
#else
    (void)st, (void)x, (void)res, (void)nw, (void)res_out, (void)eps, (void)w, (void)wscale,
        (void)sz, (void)out;
    __trap();
#endif
}

} // namespace stream_detail

template <typename DT, int N, int K, bool BIAS, bool GATED, int ACT, bool OUT_F32, int WARPS,
          int D, int SEG, int BLOCKS, int NORM = 0, bool UNIT_OFFSET = false>
__device__ __forceinline__ void gemv_stream(const kiln_step st, const DT *x, const DT *res,
                                            const DT *nw, DT *res_out, float eps, const DT *w,
                                            const DT *bias, void *y, int M)
{
    KILN_PDL_TRIGGER();
    static_assert(!GATED || N % 2 == 0, "gemv_stream: GATED needs an even N");
    (void)M;
    stream_detail::plain_out<DT, N, BIAS, GATED, ACT, OUT_F32> out{bias, y};
    stream_detail::body<DT, 16, K, WARPS, D, SEG, BLOCKS, NORM, UNIT_OFFSET>(
        st, x, res, nw, res_out, eps, reinterpret_cast<const unsigned char *>(w), nullptr, nullptr,
        out);
}

// gemv_stream_fp8: gemv_stream of an FP8 weight (templates/gemv.cuh's gemv_fp8 with one scale per
// row: e4m3 bytes [N, K] in its byte order, float scale [N]): y[n] = (x · q[n]) * scale[n]
// (+ bias[n]), its decode step of one row on sm_90+ code. A lane's chunk is 16 elements; SEG a
// multiple of 16.
template <typename DT, int N, int K, bool BIAS, bool GATED, int ACT, bool OUT_F32, int WARPS,
          int D, int SEG, int BLOCKS, int NORM = 0, bool UNIT_OFFSET = false>
__device__ __forceinline__ void gemv_stream_fp8(const kiln_step st, const DT *x, const DT *res,
                                                const DT *nw, DT *res_out, float eps,
                                                const unsigned char *w, const float *scale,
                                                const DT *bias, void *y, int M)
{
    KILN_PDL_TRIGGER();
    static_assert(!GATED || N % 2 == 0, "gemv_stream_fp8: GATED needs an even N");
    (void)M;
    stream_detail::plain_out<DT, N, BIAS, GATED, ACT, OUT_F32> out{bias, y};
    stream_detail::body<DT, 8, K, WARPS, D, SEG, BLOCKS, NORM, UNIT_OFFSET>(
        st, x, res, nw, res_out, eps, w, scale, nullptr, out);
}

// gemv_stream_int4: gemv_stream of an INT4 weight (templates/gemv.cuh's gemv_int4 with G = 128:
// bytes [N, K/2], sz [N, K/128]), its decode step of one row on sm_90+ code. SEG a multiple of
// 256 (lower.c's lower_gemv_stream_seg).
template <typename DT, int N, int K, bool BIAS, bool GATED, int ACT, bool OUT_F32, int WARPS,
          int D, int SEG, int BLOCKS, int NORM = 0, bool UNIT_OFFSET = false>
__device__ __forceinline__ void gemv_stream_int4(const kiln_step st, const DT *x, const DT *res,
                                                 const DT *nw, DT *res_out, float eps,
                                                 const unsigned char *w, const uint2 *sz,
                                                 const DT *bias, void *y, int M)
{
    KILN_PDL_TRIGGER();
    static_assert(!GATED || N % 2 == 0, "gemv_stream_int4: GATED needs an even N");
    (void)M;
    stream_detail::plain_out<DT, N, BIAS, GATED, ACT, OUT_F32> out{bias, y};
    stream_detail::body<DT, 4, K, WARPS, D, SEG, BLOCKS, NORM, UNIT_OFFSET>(
        st, x, res, nw, res_out, eps, w, nullptr, sz, out);
}

// gemv_stream_rope: gemv_stream of a fused qkv linear [(NH + 2 NKV) * HD, K] for the one token of
// a decode step, with rope_kv (templates/elementwise.cuh) in its epilogue: rotated q to q_out [NH *
// HD], rotated k and v to the KV cache's row st.tok_slot[0] (the 16-bit cache, HD a multiple of
// 8: rope_kv's unpadded case). lower.c uses it where the linear's output is read by that rope_kv
// alone (rope_fold), and runs rope_kv at every other row count. Parameters as rope_kv's.
template <typename DT, int NH, int NKV, int HD, int ROT, int INTERLEAVED, int DYNAMIC, int K,
          bool BIAS, int WARPS, int D, int SEG, int BLOCKS, int NORM = 0,
          bool UNIT_OFFSET = false>
__device__ __forceinline__ void gemv_stream_rope(const kiln_step st, const DT *x, const DT *res,
                                                 const DT *nw, DT *res_out, float eps,
                                                 const DT *w, const DT *bias, DT *q_out,
                                                 DT *k_cache, DT *v_cache, const float *inv_freq,
                                                 float rope_scale, float dyn_base,
                                                 float dyn_factor, int dyn_max_pos, int M)
{
    KILN_PDL_TRIGGER();
    static_assert(HD % 8 == 0, "gemv_stream_rope: HD a multiple of 8 (rope_kv unpadded)");
    (void)M;
    stream_detail::rope_out<DT, NH, NKV, HD, ROT, INTERLEAVED, DYNAMIC, BIAS> out{
        bias, q_out, k_cache, v_cache, inv_freq, rope_scale, dyn_base, dyn_factor, dyn_max_pos};
    stream_detail::body<DT, 16, K, WARPS, D, SEG, BLOCKS, NORM, UNIT_OFFSET>(
        st, x, res, nw, res_out, eps, reinterpret_cast<const unsigned char *>(w), nullptr, nullptr,
        out);
}

// gemv_stream_rope_fp8: gemv_stream_rope of an FP8 weight with a scale per row (as
// gemv_stream_fp8's), each row's sum times its scale before the bias and the rotation.
template <typename DT, int NH, int NKV, int HD, int ROT, int INTERLEAVED, int DYNAMIC, int K,
          bool BIAS, int WARPS, int D, int SEG, int BLOCKS, int NORM = 0,
          bool UNIT_OFFSET = false>
__device__ __forceinline__ void
gemv_stream_rope_fp8(const kiln_step st, const DT *x, const DT *res, const DT *nw, DT *res_out,
                     float eps, const unsigned char *w, const float *scale, const DT *bias,
                     DT *q_out, DT *k_cache, DT *v_cache, const float *inv_freq, float rope_scale,
                     float dyn_base, float dyn_factor, int dyn_max_pos, int M)
{
    KILN_PDL_TRIGGER();
    static_assert(HD % 8 == 0, "gemv_stream_rope_fp8: HD a multiple of 8 (rope_kv unpadded)");
    (void)M;
    stream_detail::rope_out<DT, NH, NKV, HD, ROT, INTERLEAVED, DYNAMIC, BIAS> out{
        bias, q_out, k_cache, v_cache, inv_freq, rope_scale, dyn_base, dyn_factor, dyn_max_pos};
    stream_detail::body<DT, 8, K, WARPS, D, SEG, BLOCKS, NORM, UNIT_OFFSET>(
        st, x, res, nw, res_out, eps, w, scale, nullptr, out);
}

// gemv_stream_rope_int4: gemv_stream_rope of an INT4 weight (as gemv_stream_int4's).
template <typename DT, int NH, int NKV, int HD, int ROT, int INTERLEAVED, int DYNAMIC, int K,
          bool BIAS, int WARPS, int D, int SEG, int BLOCKS, int NORM = 0,
          bool UNIT_OFFSET = false>
__device__ __forceinline__ void
gemv_stream_rope_int4(const kiln_step st, const DT *x, const DT *res, const DT *nw, DT *res_out,
                      float eps, const unsigned char *w, const uint2 *sz, const DT *bias,
                      DT *q_out, DT *k_cache, DT *v_cache, const float *inv_freq,
                      float rope_scale, float dyn_base, float dyn_factor, int dyn_max_pos, int M)
{
    KILN_PDL_TRIGGER();
    static_assert(HD % 8 == 0, "gemv_stream_rope_int4: HD a multiple of 8 (rope_kv unpadded)");
    (void)M;
    stream_detail::rope_out<DT, NH, NKV, HD, ROT, INTERLEAVED, DYNAMIC, BIAS> out{
        bias, q_out, k_cache, v_cache, inv_freq, rope_scale, dyn_base, dyn_factor, dyn_max_pos};
    stream_detail::body<DT, 4, K, WARPS, D, SEG, BLOCKS, NORM, UNIT_OFFSET>(
        st, x, res, nw, res_out, eps, w, nullptr, sz, out);
}

} // namespace kiln
