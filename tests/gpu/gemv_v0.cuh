// gemv_v0.cuh — the decode GEMV kiln had before the tensor-core one (kiln 4ed27e5, FMA path): the
// baseline of `kiln-ktest --bench gemv` (tests/gpu/ktest_gemv.c), which prepends this file to
// the benchmark's translation unit so one run shows both kernels' weight bandwidth. Not used by
// kilnc. A warp owns 4 weight rows (2 gated outputs) and computes them for all M rows of x with
// float FMAs, lane l reading the 16-byte chunks l, l+32, ... of each row (gemv_detail::lane_dots
// in templates/gemv.cuh, which moe.cuh still uses), every warp re-reading x through L1.
// Launch rule: grid = (ceil(NOUT / ((THREADS / 32) * (GATED ? 2 : 4)))), block = THREADS.
#pragma once

#include "gemv.cuh"

namespace kiln {

template <typename DT, int N, int K, int MMAX, bool BIAS, bool GATED, int ACT, bool OUT_F32,
          int THREADS>
__device__ __forceinline__ void gemv_v0(const kiln_step st, const DT *x, const DT *w, const DT *bias,
                                        void *y, int M)
{
    KILN_PDL_ENTER();
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
