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
// gemv_fp8 layout): a lane's 16-byte chunk is 16 e4m3 elements, turned into floats by the
// hardware's e4m3-to-f16 conversion (e4m3x4) and multiplied with x staged in x_at's order, in two
// FMA chains; each row's sum times its scale (lane j holds the scales of the warp's item j,
// loaded before griddepcontrol.wait). The conversions make a unit cost about twice the
// instructions of a bf16 unit of the same bytes: written plainly (x's offsets computed per chunk,
// bf16 widened by two instructions) they were four times as many, and the Llama-3 8B batch-1
// step ran at 0.54 of its roofline against 0.75 now (tests/gpu/RESULTS.md, twentieth session).
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
// KILN_GEMV_STREAM_SMEM(WARPS, D, SEG, K, sizeof(DT), 16 or 8 weight bits) (kernels/
// kiln_gemm.h; SEG lower.c's lower_gemv_stream_seg). Layouts: x [1, K]; res, nw, res_out [K]
// (NORM only); w [N, K] (FP8: bytes, and scale [N] float); bias [N] (read only when BIAS; GATED:
// [gate bias (N/2); up bias (N/2)]); y [NOUT], float when OUT_F32 else DT. Float sums, one
// rounding of the result (gemv_detail::store_out).
// Preconditions: M == 1 (the step's size class says so), SEG a multiple of a 16-byte chunk's
// elements (8, FP8 16), K % SEG == 0, x, res and w 16-byte aligned, code for sm_90 or newer (the
// older body traps; the engine never launches it there).
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
// One bulk copy of `bytes` (a multiple of 16) from global src to shared dst, completing on bar
// (which expects those bytes: one arrival of the count 1 it was initialised with).
__device__ __forceinline__ void bulk_load(unsigned dst, const void *src, unsigned bytes,
                                          unsigned bar)
{
    asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}\n"
                 ::"r"(bar), "r"(bytes)
                 : "memory");
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

// Where element i (a multiple of 8) of x is staged: in order for a 16-bit weight; for an FP8 one
// (a lane's chunk is 16 elements against two 16-byte chunks of x) each unit's SEG elements are
// [first halves of its chunks | second halves], so that a warp's 16-byte reads of either half
// are consecutive (in order, a lane's two reads 32 bytes apart would be 2-way bank conflicts)
// and their addresses a base per unit plus constants.
template <bool FP8, int SEG>
__device__ __forceinline__ int x_at(int i)
{
    if (!FP8)
        return i;
    const int r = i % SEG;
    return i - r + (r / 8 % 2) * (SEG / 2) + r / 16 * 8;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// Four e4m3 bytes of gemv_fp8's order (word bytes 0..3 = elements k, k+2, k+1, k+3) as floats
// e[0..3] = elements k..k+3, exactly: the hardware's e4m3 pair to f16 pair (every e4m3 value,
// subnormals included, is an f16 normal), then each f16 to float.
__device__ __forceinline__ void e4m3x4(unsigned q, float e[4])
{
    asm("{\n.reg .b16 l, h, a, b, c, d;\n.reg .b32 p, r;\n"
        "mov.b32 {l, h}, %4;\n"
        "cvt.rn.f16x2.e4m3x2 p, l;\n"
        "cvt.rn.f16x2.e4m3x2 r, h;\n"
        "mov.b32 {a, b}, p;\n"
        "mov.b32 {c, d}, r;\n"
        "cvt.f32.f16 %0, a;\n"
        "cvt.f32.f16 %2, b;\n"
        "cvt.f32.f16 %1, c;\n"
        "cvt.f32.f16 %3, d;\n}"
        : "=f"(e[0]), "=f"(e[1]), "=f"(e[2]), "=f"(e[3])
        : "r"(q));
}
#endif

// The kernel for policy OUT (above), called after KILN_PDL_TRIGGER. WT: DT, or unsigned char for
// an FP8 (e4m3) weight in gemv_fp8's byte order, with a float scale per weight row in wscale that
// multiplies the row's sum.
template <typename DT, typename WT, int K, int WARPS, int D, int SEG, int BLOCKS, int NORM,
          bool UNIT_OFFSET, typename OUT>
__device__ __forceinline__ void body(const kiln_step &st, const DT *x, const DT *res,
                                     const DT *nw, DT *res_out, float eps, const WT *w,
                                     const float *wscale, OUT &out)
{
    constexpr bool FP8 = sizeof(WT) == 1;
    static_assert(FP8 || sizeof(WT) == sizeof(DT), "gemv_stream: a DT or an FP8 weight");
    constexpr int EPC = 16 / (int)sizeof(WT); // weight elements of a 16-byte chunk
    static_assert(SEG % EPC == 0 && K % SEG == 0, "gemv_stream: K must be whole units of SEG");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    constexpr int NOUT = OUT::ITEMS;
    constexpr int KS = K / SEG;                    // units of one weight row
    constexpr int UPO = OUT::PAIRED ? 2 * KS : KS; // units of one item
    constexpr int UB = SEG * (int)sizeof(WT);      // bytes of a unit
    constexpr int TW = BLOCKS * WARPS;
    extern __shared__ __align__(128) unsigned char smem[];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gw = blockIdx.x * WARPS + warp;
    unsigned char *ring = smem + warp * D * UB;
    DT *xs = reinterpret_cast<DT *>(smem + WARPS * D * UB);
    const unsigned bars = smem_addr(smem + WARPS * D * UB + K * (int)sizeof(DT)) + warp * D * 8;
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
            bulk_load(smem_addr(ring + slot * UB), w + row * K + (long long)seg * SEG, UB,
                      bars + slot * 8);
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
    if (NORM == 0) {
        for (int i = threadIdx.x * 8; i < K; i += WARPS * 32 * 8)
            *reinterpret_cast<uint4 *>(xs + x_at<FP8, SEG>(i)) =
                __ldcg(reinterpret_cast<const uint4 *>(x + i));
    } else {
        // rms_norm's arithmetic (templates/elementwise.cuh): s = round(x + res) (NORM 2; block 0
        // stores it to res_out), then round(s * rsqrt(mean(s^2) + eps) * w) into xs
        constexpr int CH = (K / 8 + WARPS * 32 - 1) / (WARPS * 32);
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
        ss = block_sum<WARPS * 32>(ss, scratch);
        const float inv = rsqrtf(ss / (float)K + eps);
#pragma unroll
        for (int k = 0; k < CH; k++) {
            const int i = (threadIdx.x + k * WARPS * 32) * 8;
            if (i < K) {
                float g[8], o[8];
                load8(nw + i, g);
#pragma unroll
                for (int e = 0; e < 8; e++)
                    o[e] = v[k][e] * inv * (UNIT_OFFSET ? 1.f + g[e] : g[e]);
                store8(xs + x_at<FP8, SEG>(i), o);
            }
        }
    }
    __syncthreads();

    float ag = 0.f, au = 0.f; // the lane's sums of the item's first and second row
    int consumed = 0, k = 0;  // k: the warp's item count
    for (int o = gw; o < NOUT; o += TW, k++)
        for (int u = 0; u < UPO; u++, consumed++) {
            const int slot = consumed % D;
            mbar_wait(bars + slot * 8, (unsigned)(consumed / D) & 1u);
            const uint4 *wv = reinterpret_cast<const uint4 *>(ring + slot * UB);
            const int xu = (OUT::PAIRED && u >= KS ? u - KS : u) * SEG; // the unit's first element
            const DT *xl = xs + xu + 8 * lane; // the lane's first chunk of x (FP8: first half)
            float a = 0.f, a2 = 0.f;           // two chains: half the FMA latency a unit
#pragma unroll
            for (int j = 0; j < (UB / 16 + 31) / 32; j++) {
                const int c = j * 32 + lane; // the lane's 16-byte chunk of the unit
                if (UB % 512 == 0 || c < UB / 16) {
                    float wf[8], xf[8];
                    if constexpr (FP8) {
                        // one half of the chunk (its words w0, w1) against its x at xp
                        auto half = [&](unsigned w0, unsigned w1, const DT *xp, float &acc) {
                            e4m3x4(w0, wf);
                            e4m3x4(w1, wf + 4);
                            gemv_detail::unpack8<DT>(*reinterpret_cast<const uint4 *>(xp), xf);
#pragma unroll
                            for (int i = 0; i < 8; i++)
                                acc = fmaf(wf[i], xf[i], acc);
                        };
                        const uint4 q = wv[c];
                        half(q.x, q.y, xl + 256 * j, a);
                        half(q.z, q.w, xl + SEG / 2 + 256 * j, a2);
                    } else {
                        gemv_detail::unpack8<DT>(wv[c], wf);
                        gemv_detail::unpack8<DT>(*reinterpret_cast<const uint4 *>(xl + 256 * j),
                                                 xf);
#pragma unroll
                        for (int i = 0; i < 8; i++)
                            a = fmaf(wf[i], xf[i], a);
                    }
                }
            }
            a += a2;
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
                    g *= __shfl_sync(0xffffffffu, sg, k % 32);
                    up *= __shfl_sync(0xffffffffu, su, k % 32);
                    if (k % 32 == 31)
                        load_scales(k + 1);
                }
                out.finish(st, lane, o, k, g, up);
                ag = au = 0.f;
            }
        }
#else
    (void)st, (void)x, (void)res, (void)nw, (void)res_out, (void)eps, (void)w, (void)wscale,
        (void)out;
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
    stream_detail::body<DT, DT, K, WARPS, D, SEG, BLOCKS, NORM, UNIT_OFFSET>(
        st, x, res, nw, res_out, eps, w, nullptr, out);
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
    stream_detail::body<DT, unsigned char, K, WARPS, D, SEG, BLOCKS, NORM, UNIT_OFFSET>(
        st, x, res, nw, res_out, eps, w, scale, out);
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
    stream_detail::body<DT, DT, K, WARPS, D, SEG, BLOCKS, NORM, UNIT_OFFSET>(
        st, x, res, nw, res_out, eps, w, nullptr, out);
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
    stream_detail::body<DT, unsigned char, K, WARPS, D, SEG, BLOCKS, NORM, UNIT_OFFSET>(
        st, x, res, nw, res_out, eps, w, scale, out);
}

} // namespace kiln
