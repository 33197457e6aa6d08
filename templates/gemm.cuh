// gemm.cuh — prefill-sized GEMM on the tensor cores: y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n])
// for 0 <= m < M, 0 <= n < N, w a PyTorch Linear weight [N, K] (row-major). kiln's own kernel for
// the linears with more rows than the GEMV takes (templates/gemv.cuh), so that an executable needs
// no cuBLASLt and a row's result does not depend on the batch.
//
// Design (sm_80 and newer; the classic Ampere structure, written for kiln's shapes):
//   - a block computes a BM x BN = 128 x 128 tile of y with 4 warps in a 2 x 2 arrangement, each
//     warp a 64 x 64 tile: 4 x 8 mma.sync m16n8k16 (16-bit inputs, float accumulators, 128 floats
//     a lane) per 16 elements of K. The warp's fragments come from shared memory by ldmatrix.x4:
//     4 for x (one per 16-row tile), 4 for w (each two 8-row tiles), 8 loads for 32 mma. Warp
//     tiles of 64 x 32 (8 warps) would need 6 loads for 16 mma: on paper the shared-memory reads
//     (512 bytes an ldmatrix.x4, 128 bytes a clock) would then take longer than the mma;
//   - two blocks an SM (64 KiB of shared memory each, ~220 of the 255 registers a thread that
//     two blocks of 128 threads allow), so one block's barrier or epilogue overlaps the other's
//     mma;
//   - K is streamed in slices of BK = 32 elements through a STAGES = 4 deep ring of shared-memory
//     slices filled by cp.async (16 bytes a copy, 8 a thread a slice): while the warps multiply
//     slice kt, the slices up to kt + 3 are in flight. One barrier a slice;
//   - a slice row is 64 bytes (4 chunks of 16); chunk c of row r is stored at chunk c ^ ((r/2) % 4)
//     so that the 8 rows one ldmatrix phase reads (same c, 8 consecutive rows) fall in 8 distinct
//     16-byte bank groups: no bank conflicts for the cp.async writes or the ldmatrix reads;
//   - blocks are mapped to tiles in groups of 8 tile rows (GROUP): consecutive blocks take the 8
//     row tiles of one column of tiles before the next column, so the blocks resident at once
//     share their x and w slices through L2 (for the 8B gate_up weight, 235 MB, this is the
//     difference between reading w from HBM 16 times at M = 2048 and twice).
// Tails: rows of x past M, rows of w past N and chunks of K past K are zero-filled by cp.async
// (source size 0), so they add exact zeros; outputs past M or N are not stored. K % 8 == 0
// (static_assert) keeps every 16-byte chunk of a row whole; N is any width (an LM head's vocabulary,
// e.g. 50257, or a rank's share of it): an output pair is stored together where both exist and the
// pair is aligned, else element by element.
//
// Batch invariance: one tile configuration for every (DT, N, K), never chosen by M, no split-K:
// every output is the chain of mma over K in the same order (slices 0, 1, ..., halves 0, 1), from
// the same operands, whatever M is and wherever the row falls in a tile. Zero rows (past M) do not
// take part in another row's dot product (tests/gpu/ktest_gemm.c checks it bit for bit).
// Numerics: fp32 accumulation over all of K inside the tensor cores (the chain is never rounded
// to 16 bits), the bias added in float, one rounding of the result to OT.
//
// Launch rule (kernels/kiln_gemm.h): grid = (ceil(N / BN), ceil(M_launch / BM)) for any
// M_launch >= M, block = KILN_GEMM_THREADS, dynamic shared memory KILN_GEMM_SMEM(sizeof(DT)).
// Preconditions (not checkable at compile time): x and w 16-byte aligned, ldx % 8 == 0 (cp.async
// copies 16 bytes); y aligned to two OT and ldy even (pairs of outputs are stored together).
//
// What it does not do: Hopper's wgmma (mma.sync reaches a fraction of an H100/H200's peak:
// templates/gemm90.cuh is the same GEMM on wgmma, which lower.c uses when every target of the
// artifact is sm_90a; tests/gpu/ktest_gemm.c's `--bench gemm` measures against cuBLASLt), split-K
// for small grids, fused activations (the gated linears keep their separate act_mul).
#pragma once

#include "common.cuh"
#include "gemv.cuh" // gemv_detail::mma16816
#include "kiln_gemm.h"

namespace kiln {
namespace gemm_detail {

constexpr int BM = KILN_GEMM_BM, BN = KILN_GEMM_BN, BK = KILN_GEMM_BK, STAGES = KILN_GEMM_STAGES;
constexpr int THREADS = KILN_GEMM_THREADS;
constexpr int GROUP = 8; // tile rows per group of the block-to-tile map

static_assert(THREADS == 128 && BM == 128 && BN == 128,
              "gemm: the warp layout below is 4 warps of 64 x 64 in a 128 x 128 tile");
static_assert(BK == 32, "gemm: the swizzle below is for 64-byte slice rows (BK = 32)");
constexpr int CPT = BM * BK / 8 / THREADS; // 16-byte chunks a thread copies of each tile a slice
static_assert(BM * BK / 8 == CPT * THREADS && BN * BK / 8 == CPT * THREADS && THREADS % 32 == 0,
              "gemm: the copies of a slice are whole rows of 4 chunks, the same for x and w");

// Element offset of chunk c (8 elements) of row r in a BK-wide slice: the XOR swizzle above.
__device__ __forceinline__ int swz(int r, int c) { return r * BK + ((c ^ ((r >> 1) & 3)) << 3); }

// 16 bytes global -> shared, bypassing L1; bytes = 0 writes 16 zero bytes and reads nothing.
// L2::128B: a slice reads 64 bytes of each row, so the L2 fetches the whole 128-byte line, the
// next slice's half with it (one DRAM burst where there would be two).
__device__ __forceinline__ void cp16(unsigned dst, const void *src, int bytes)
{
    asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                 "r"(bytes)
                 : "memory");
}

// Two adjacent outputs, one store (the pair is 4 or 8 bytes aligned: see the preconditions).
__device__ __forceinline__ void store2(float *p, float a, float b)
{
    *reinterpret_cast<float2 *>(p) = make_float2(a, b);
}
__device__ __forceinline__ void store2(bf16 *p, float a, float b)
{
    *reinterpret_cast<__nv_bfloat162 *>(p) = __floats2bfloat162_rn(a, b);
}
__device__ __forceinline__ void store2(f16 *p, float a, float b)
{
    *reinterpret_cast<__half2 *>(p) = __floats2half2_rn(a, b);
}

// The outputs (m, n) and, when n + 1 < N, (m, n + 1) of y, rounded once to OT: one store for the
// pair where it is aligned (ldy and n even), else element by element. Both epilogues (gemm and
// gemm90.cuh's) store through it.
template <typename OT>
__device__ __forceinline__ void store_pair(OT *y, long long ldy, int m, int n, int N, float v0,
                                           float v1)
{
    OT *p = y + (long long)m * ldy + n;
    const bool two = n + 1 < N;
    if (two && ((ldy | n) & 1) == 0) {
        store2(p, v0, v1);
    } else {
        *p = from_f<OT>(v0);
        if (two)
            p[1] = from_f<OT>(v1);
    }
}

// The bias of output columns n and n + 1 in float: 0 without one (BIAS 0) and past N. Both
// epilogues add it before store_pair.
template <int BIAS, typename DT>
__device__ __forceinline__ void bias_pair(const DT *bias, int n, int N, float &b0, float &b1)
{
    b0 = BIAS ? to_f(bias[n]) : 0.f;
    b1 = BIAS && n + 1 < N ? to_f(bias[n + 1]) : 0.f;
}

} // namespace gemm_detail

template <typename DT, typename OT, int N, int K, int BIAS>
__device__ __forceinline__ void gemm(int M, const DT *x, long long ldx, const DT *w, const DT *bias,
                                     OT *y, long long ldy)
{
    KILN_PDL_ENTER();
    using namespace gemm_detail;
    static_assert(sizeof(DT) == 2, "gemm: DT is bf16 or f16");
    static_assert(N >= 1, "gemm: N >= 1");
    static_assert(K >= 8 && K % 8 == 0, "gemm: K must be a multiple of 8 (16-byte chunks)");
    constexpr int KT = (K + BK - 1) / BK;                 // slices of K
    constexpr unsigned SLICE_A = BM * BK * sizeof(DT);    // bytes of one x slice
    constexpr unsigned STAGE = (BM + BN) * BK * sizeof(DT); // bytes of one stage (x, then w)
    static_assert(STAGES * STAGE == KILN_GEMM_SMEM(sizeof(DT)), "gemm: kiln_gemm.h's SMEM");

    // Block -> tile, in groups of GROUP tile rows (column-major inside a group; see the top).
    const int ntn = gridDim.x, ntm = gridDim.y;
    const int pid = blockIdx.y * ntn + blockIdx.x, per_group = GROUP * ntn;
    const int first = pid / per_group * GROUP;
    const int rows = ntm - first < GROUP ? ntm - first : GROUP;
    const int m0 = (first + pid % per_group % rows) * BM;
    const int n0 = pid % per_group / rows * BN;
    if (m0 >= M || n0 >= N)
        return; // uniform over the block: no barrier is reached

    extern __shared__ __align__(128) unsigned char kiln_gemm_smem[];
    const unsigned smem = (unsigned)__cvta_generic_to_shared(kiln_gemm_smem);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    // Copies: thread tid moves chunk tid & 3 of rows tid/4 + i * THREADS/4 (i < CPT) of both
    // tiles. Rows past M or N read nothing (zero fill) from a valid address.
    constexpr int RSTEP = THREADS / 4;
    const int lr = tid >> 2, lc = tid & 3;
    const DT *xs[CPT], *ws[CPT];
    bool xin[CPT], win[CPT];
    unsigned so[CPT];
#pragma unroll
    for (int i = 0; i < CPT; i++) {
        const int r = lr + RSTEP * i;
        xin[i] = m0 + r < M;
        win[i] = n0 + r < N;
        xs[i] = x + (xin[i] ? (long long)(m0 + r) * ldx : 0) + 8 * lc;
        ws[i] = w + (win[i] ? (long long)(n0 + r) * K : 0) + 8 * lc;
        so[i] = (unsigned)swz(r, lc) * sizeof(DT);
    }
    auto load = [&](int stage, int kt) {
        const bool kin = kt * BK + 8 * lc < K; // the chunk is whole: K % 8 == 0
        const unsigned base = smem + stage * STAGE;
#pragma unroll
        for (int i = 0; i < CPT; i++) {
            const bool a = kin && xin[i], b = kin && win[i];
            cp16(base + so[i], a ? xs[i] + kt * BK : x, a ? 16 : 0);
            cp16(base + SLICE_A + so[i], b ? ws[i] + kt * BK : w, b ? 16 : 0);
        }
    };

    // The warp's 64 x 64 tile: rows wm*64 + 16i + (g, g+8), columns wn*64 + 8j + 2t, +1.
    const int wm = warp >> 1, wn = warp & 1;
    float acc[4][8][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                acc[i][j][e] = 0.f;

    // Pipeline: slices 0..STAGES-2 in flight first; each iteration waits for slice kt, then (after
    // the barrier that says every warp is done with the stage of slice kt-1) refills that stage
    // with slice kt+STAGES-1. Every iteration commits one group, empty or not, so that
    // "at most STAGES-2 pending" always means "slice kt has landed".
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < KT)
            load(s, s);
        cp_async_commit();
    }
#pragma unroll 1
    for (int kt = 0; kt < KT; kt++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        const int nk = kt + STAGES - 1;
        if (nk < KT)
            load(nk % STAGES, nk);
        cp_async_commit();
        const unsigned a_s = smem + (kt % STAGES) * STAGE, b_s = a_s + SLICE_A;
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) {
            // x: matrices (rows 0-7, k lo), (rows 8-15, k lo), (0-7, k hi), (8-15, k hi) = a0..a3.
            unsigned a[4][4], b[8][2];
#pragma unroll
            for (int i = 0; i < 4; i++)
                ldsm4(a[i], a_s + swz(wm * 64 + 16 * i + (lane & 15), 2 * kk + (lane >> 4)) *
                                      (unsigned)sizeof(DT));
            // w: matrices (n 0-7, k lo), (n 0-7, k hi), (n 8-15, k lo), (n 8-15, k hi) = b0, b1 of
            // the 8-column tiles 2p and 2p + 1 (w's rows are B's columns: "col" layout as stored).
#pragma unroll
            for (int p = 0; p < 4; p++) {
                unsigned r[4];
                ldsm4(r, b_s + swz(wn * 64 + 16 * p + (lane & 7) + ((lane >> 4) << 3),
                                   2 * kk + ((lane >> 3) & 1)) *
                                   (unsigned)sizeof(DT));
                b[2 * p][0] = r[0];
                b[2 * p][1] = r[1];
                b[2 * p + 1][0] = r[2];
                b[2 * p + 1][1] = r[3];
            }
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 8; j++)
                    gemv_detail::mma16816<DT>(acc[i][j], a[i][0], a[i][1], a[i][2], a[i][3],
                                              b[j][0], b[j][1]);
        }
    }
    cp_async_wait<0>(); // only empty groups are left; nothing may be in flight when the block exits

    // Epilogue: lane (g, t) holds acc[i][j][0..1] at row 16i + g, columns 8j + 2t, +1 of the warp
    // tile, and acc[i][j][2..3] at row + 8.
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const int n = n0 + wn * 64 + 8 * j + 2 * t;
        if (n >= N)
            continue;
        float b0, b1;
        bias_pair<BIAS>(bias, n, N, b0, b1);
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int m = m0 + wm * 64 + 16 * i + 8 * h + g;
                if (m < M)
                    store_pair(y, ldy, m, n, N, acc[i][j][2 * h] + b0, acc[i][j][2 * h + 1] + b1);
            }
    }
}

} // namespace kiln
