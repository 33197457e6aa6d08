// gemv.cuh — decode-sized GEMM: y[m, n] = x[m] · w[n] (+ bias[n]) for M <= MMAX rows of x, w a
// PyTorch Linear weight [N, K] (row-major, one output feature per row). Used for every linear
// of a step with few tokens, and for the logits (N up to ~256k, OUT_F32).
//
// The kernel is bound by the bytes of w, so the design is about reading each weight element
// exactly once per launch, whatever M is:
//   - a warp owns a few weight rows (NR = 4: four outputs, or two gated outputs = two gate rows
//     and their two up rows) and computes them for ALL M rows of x at once;
//   - lane l reads the 8-element (16-byte) chunks l, l+32, l+64, ... of each of its rows, so a
//     warp reads 512 contiguous bytes of a row per step (coalesced), with U*NR = 8 independent
//     16-byte weight loads in flight per lane before the first use;
//   - weights are loaded with ld.global.nc.L1::no_allocate (streamed: each is used once), so
//     they do not evict x, which every warp re-reads through L1 (x is M*K*2 bytes: 64 KB at
//     M = 8, K = 4096; x is NOT staged in shared memory because M*K can exceed it, e.g. K = 14336);
//   - each lane keeps NR*MMAX float partial sums, reduced by warp_sum at the end.
// There is no split over K: a row of K = 14336 is one warp's job (56 chunks per lane).
//
// Launch rule (the runtime computes it from this):
//   NOUT  = GATED ? N/2 : N                      (output columns; the row stride of y)
//   OPW   = GATED ? 2 : 4                        (outputs per warp)
//   RPB   = (THREADS / 32) * OPW                 (outputs per block)
//   grid  = (ceil(NOUT / RPB)), block = THREADS (a multiple of 32), no dynamic shared memory.
// Layouts: x [M, K] contiguous; w [N, K]; bias [N] (read only when BIAS: may be nullptr
// otherwise; GATED: [gate bias (N/2); up bias (N/2)]); y [M, NOUT], float when OUT_F32 else DT.
// Rows m >= M of y are not written. Float accumulation, one rounding of the result.
// Preconditions: K % 8 == 0 (static_assert); x and w 16-byte aligned (rows are K elements, so
// every row is too); M <= MMAX (M is clamped to MMAX); st is unused (M is explicit).
//
// What it does not do: tensor cores (M <= 8 does not need them: M FMAs per 2 weight bytes stays
// under the FP32 rate at full HBM bandwidth), split-K (a small N with a large K leaves SMs idle).
#pragma once

#include "common.cuh"

namespace kiln {
namespace gemv_detail {

// One 16-byte weight load that does not allocate in L1 (the weights are streamed once).
__device__ __forceinline__ uint4 ld_stream(const void *p)
{
    uint4 v;
#if defined(__CUDA_ARCH__)
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
#else
    v = *reinterpret_cast<const uint4 *>(p); // host compilers: a CPU emulation of the kernels
#endif
    return v;
}

// Eight 16-bit elements packed in a uint4, to float.
template <typename DT>
__device__ __forceinline__ void unpack8(const uint4 &v, float out[8])
{
    const unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        DT lo, hi;
        *reinterpret_cast<unsigned short *>(&lo) = (unsigned short)(w[i] & 0xffffu);
        *reinterpret_cast<unsigned short *>(&hi) = (unsigned short)(w[i] >> 16);
        out[2 * i] = to_f(lo);
        out[2 * i + 1] = to_f(hi);
    }
}

// One chunk (8 elements at element offset `off`) of NR weight rows (already loaded in `wv`)
// against the first M of MMAX x rows: acc[r][m] += w_r[off..off+7] · x_m[off..off+7].
template <typename DT, int NR, int MMAX>
__device__ __forceinline__ void fma_chunk(const uint4 wv[NR], const DT *const xp[MMAX], long long off,
                                          int M, float acc[NR][MMAX])
{
    float wf[NR][8];
#pragma unroll
    for (int r = 0; r < NR; r++)
        unpack8<DT>(wv[r], wf[r]);
#pragma unroll
    for (int m = 0; m < MMAX; m++) {
        if (m < M) {
            float xf[8];
            load8(xp[m] + off, xf);
#pragma unroll
            for (int r = 0; r < NR; r++)
#pragma unroll
                for (int i = 0; i < 8; i++)
                    acc[r][m] = fmaf(wf[r][i], xf[i], acc[r][m]);
        }
    }
}

// This lane's partial dot products of NR weight rows wp[r] (each K elements) with the first M
// of MMAX x rows xp[m] (each K elements), ADDED to acc. Lane l owns chunks l, l+32, ... of K;
// the caller reduces over the warp (warp_sum). Every lane of the warp must call it (the caller's
// reductions use full-warp shuffles), with warp-uniform M.
template <typename DT, int K, int NR, int MMAX>
__device__ __forceinline__ void lane_dots(const DT *const wp[NR], const DT *const xp[MMAX], int M,
                                          float acc[NR][MMAX])
{
    static_assert(K % 8 == 0, "K must be a multiple of 8 (16-byte chunks)");
    constexpr int KC = K / 8;               // chunks per row
    constexpr int U = NR >= 4 ? 2 : 8 / NR; // chunks per lane per step: U*NR loads in flight
    const int lane = threadIdx.x & 31;
    int c = lane;
    // Main loop: U whole chunks per lane (all U in range), loads first, then the math.
#pragma unroll 1
    for (; c + 32 * (U - 1) < KC; c += 32 * U) {
        uint4 wv[U][NR];
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int r = 0; r < NR; r++)
                wv[u][r] = ld_stream(wp[r] + (long long)(c + 32 * u) * 8);
#pragma unroll
        for (int u = 0; u < U; u++)
            fma_chunk<DT, NR, MMAX>(wv[u], xp, (long long)(c + 32 * u) * 8, M, acc);
    }
    // Tail: the lane's remaining chunks (fewer than U), one at a time.
#pragma unroll 1
    for (; c < KC; c += 32) {
        uint4 wv[NR];
#pragma unroll
        for (int r = 0; r < NR; r++)
            wv[r] = ld_stream(wp[r] + (long long)c * 8);
        fma_chunk<DT, NR, MMAX>(wv, xp, (long long)c * 8, M, acc);
    }
}

} // namespace gemv_detail

template <typename DT, int N, int K, int MMAX, bool BIAS, bool GATED, int ACT, bool OUT_F32,
          int THREADS>
__device__ __forceinline__ void gemv(const kiln_step st, const DT *x, const DT *w, const DT *bias,
                                     void *y, int M)
{
    static_assert(K % 8 == 0, "gemv: K must be a multiple of 8");
    static_assert(N >= 1 && (!GATED || N % 2 == 0), "gemv: GATED needs an even N");
    static_assert(MMAX >= 1 && MMAX <= 8, "gemv: MMAX is 1..8");
    static_assert(THREADS % 32 == 0 && THREADS >= 32 && THREADS <= 1024,
                  "gemv: THREADS must be a multiple of 32");
    (void)st;
    constexpr int NOUT = GATED ? N / 2 : N;
    constexpr int OPW = GATED ? 2 : 4;
    constexpr int NR = 4; // weight rows per warp
    constexpr int WARPS = THREADS / 32;
    const int lane = threadIdx.x & 31;
    const long long o0 = ((long long)blockIdx.x * WARPS + threadIdx.x / 32) * OPW;
    if (o0 >= NOUT)
        return; // whole warp: nothing of this warp is in range (no block barrier follows)
    if (M > MMAX)
        M = MMAX;

    // The warp's weight rows; outputs past NOUT read the last row (valid memory) and store nothing.
    const DT *wp[NR];
#pragma unroll
    for (int r = 0; r < NR; r++) {
        long long row;
        if constexpr (GATED) {
            long long o = o0 + (r % OPW);
            if (o > NOUT - 1)
                o = NOUT - 1;
            row = r < OPW ? o : NOUT + o; // r 0,1: gate rows; r 2,3: up rows
        } else {
            row = o0 + r;
            if (row > N - 1)
                row = N - 1;
        }
        wp[r] = w + row * K;
    }
    const DT *xp[MMAX];
#pragma unroll
    for (int m = 0; m < MMAX; m++)
        xp[m] = x + (long long)m * K;

    float acc[NR][MMAX];
#pragma unroll
    for (int r = 0; r < NR; r++)
#pragma unroll
        for (int m = 0; m < MMAX; m++)
            acc[r][m] = 0.f;
    gemv_detail::lane_dots<DT, K, NR, MMAX>(wp, xp, M, acc);

#pragma unroll
    for (int r = 0; r < NR; r++)
#pragma unroll
        for (int m = 0; m < MMAX; m++)
            if (m < M)
                acc[r][m] = warp_sum(acc[r][m]);

    // Epilogue: every lane holds every sum; output (q, m) is stored by lane (q*MMAX + m) % 32.
#pragma unroll
    for (int q = 0; q < OPW; q++) {
        const long long o = o0 + q;
        if (o >= NOUT)
            continue;
#pragma unroll
        for (int m = 0; m < MMAX; m++) {
            if (m >= M || lane != ((q * MMAX + m) & 31))
                continue;
            float v;
            if constexpr (GATED) {
                float g = acc[q][m], u = acc[OPW + q][m];
                if (BIAS) {
                    g += to_f(bias[o]);
                    u += to_f(bias[NOUT + o]);
                }
                v = act<ACT>(g) * u;
            } else {
                v = acc[q][m];
                if (BIAS)
                    v += to_f(bias[o]);
            }
            if constexpr (OUT_F32)
                static_cast<float *>(y)[(long long)m * NOUT + o] = v;
            else
                static_cast<DT *>(y)[(long long)m * NOUT + o] = from_f<DT>(v);
        }
    }
}

} // namespace kiln
