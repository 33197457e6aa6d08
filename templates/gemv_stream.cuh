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
// KILN_GEMV_STREAM_SMEM(WARPS, D, SEG, K, sizeof(DT)) (kernels/kiln_gemm.h; SEG lower.c's
// lower_gemv_stream_seg). Layouts: x [1, K]; res, nw, res_out [K] (NORM only); w [N, K]; bias
// [N] (read only when BIAS; GATED: [gate bias (N/2); up bias (N/2)]); y [NOUT], float when
// OUT_F32 else DT. Float sums, one rounding of the result (gemv_detail::store_out).
// Preconditions: M == 1 (the step's size class says so), SEG % 8 == 0, K % SEG == 0, x, res and
// w 16-byte aligned, code for sm_90 or newer (the older body traps; the engine never launches
// it there).
#pragma once

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

} // namespace stream_detail

template <typename DT, int N, int K, bool BIAS, bool GATED, int ACT, bool OUT_F32, int WARPS,
          int D, int SEG, int BLOCKS, int NORM = 0, bool UNIT_OFFSET = false>
__device__ __forceinline__ void gemv_stream(const kiln_step st, const DT *x, const DT *res,
                                            const DT *nw, DT *res_out, float eps, const DT *w,
                                            const DT *bias, void *y, int M)
{
    KILN_PDL_TRIGGER();
    static_assert(SEG % 8 == 0 && K % SEG == 0, "gemv_stream: K must be whole units of SEG");
    static_assert(!GATED || N % 2 == 0, "gemv_stream: GATED needs an even N");
    (void)st;
    (void)M;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    using namespace stream_detail;
    constexpr int NOUT = GATED ? N / 2 : N;
    constexpr int KS = K / SEG;               // units of one weight row
    constexpr int UPO = GATED ? 2 * KS : KS;  // units of one output
    constexpr int UB = SEG * (int)sizeof(DT); // bytes of a unit
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
            const long long row = GATED && pu >= KS ? (long long)NOUT + po : po;
            const int seg = GATED && pu >= KS ? pu - KS : pu;
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

    KILN_PDL_WAIT();
    if (NORM == 0) {
        for (int i = threadIdx.x * 8; i < K; i += WARPS * 32 * 8)
            *reinterpret_cast<uint4 *>(xs + i) = __ldcg(reinterpret_cast<const uint4 *>(x + i));
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
                store8(xs + i, o);
            }
        }
    }
    __syncthreads();

    float ag = 0.f, au = 0.f; // the lane's sums of the output's (gate) row and up row
    int consumed = 0;
    for (int o = gw; o < NOUT; o += TW)
        for (int u = 0; u < UPO; u++, consumed++) {
            const int slot = consumed % D;
            mbar_wait(bars + slot * 8, (unsigned)(consumed / D) & 1u);
            const uint4 *wv = reinterpret_cast<const uint4 *>(ring + slot * UB);
            const int xu = GATED && u >= KS ? u - KS : u;
            const uint4 *xv = reinterpret_cast<const uint4 *>(xs + xu * SEG);
            float a = 0.f;
#pragma unroll
            for (int j = 0; j < (SEG / 8 + 31) / 32; j++) {
                const int c = j * 32 + lane; // the lane's 16-byte chunk of the unit
                if (SEG % 256 == 0 || c < SEG / 8) {
                    float wf[8], xf[8];
                    gemv_detail::unpack8<DT>(wv[c], wf);
                    gemv_detail::unpack8<DT>(xv[c], xf);
#pragma unroll
                    for (int e = 0; e < 8; e++)
                        a = fmaf(wf[e], xf[e], a);
                }
            }
            if (GATED && u >= KS)
                au += a;
            else
                ag += a;
            __syncwarp(); // every lane has read the slot: it may be refilled
            if (po < NOUT)
                issue(slot);
            if (u == UPO - 1) {
                const float g = warp_sum(ag), up = GATED ? warp_sum(au) : 0.f;
                if (lane == 0)
                    gemv_detail::store_out<DT, N, BIAS, GATED, ACT, OUT_F32>(y, bias, nullptr, 0,
                                                                             o, g, up);
                ag = au = 0.f;
            }
        }
#else
    (void)x, (void)res, (void)nw, (void)res_out, (void)eps, (void)w, (void)bias, (void)y;
    __trap();
#endif
}

} // namespace kiln
