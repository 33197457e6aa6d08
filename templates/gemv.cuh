// gemv.cuh — decode-sized GEMM: y[m, n] = x[m] · w[n] (+ bias[n]) for M rows of x in groups of
// MMAX, w a PyTorch Linear weight [N, K] (row-major, one output feature per row). Used for every
// linear of a step with few tokens (M <= MMAX: one group), for the logits (N up to ~256k,
// OUT_F32), and with kilnc --batch-invariant for every linear of the decode schedule whatever
// its rows (up to max_seqs: ceil(M / MMAX) groups, MMAX 16: lower.h's LOWER_GEMV_GROUP_INVARIANT).
//
// The kernel is bound by the bytes of w (M*K*2 bytes of x against N*K*2 of w), so the design is
// about streaming w once per launch at the copy bandwidth, whatever M and the shape are:
//   - tensor cores: y^T[16 rows of w, 8 rows of x] = w_tile[16, K] · x^T[K, 8] as a chain of
//     mma.sync m16n8k16 (16-bit inputs, float accumulation), the M rows of x padded to 8 (MMAX up
//     to 16: two 8-column tiles). A lane does 2 weight loads and 1 x load per 32 elements of K
//     and no scalar FMAs, so M = 8 costs what M = 1 does (the FMA path it replaces issued M FMAs
//     per weight element and re-read all of x per 4 rows, which made M = 8 2.2x slower);
//   - 16-byte loads without the fragment shuffle: a dot product is free to permute K, so lane
//     (g = lane/4, t = lane%4) loads 8 CONSECUTIVE elements (16 bytes) of weight rows g and g+8
//     and of x row g at the same offset, and feeds the two halves of that chunk to the two mma
//     of a 32-element group as if they were the fragment's columns {2t, 2t+1, 2t+8, 2t+9}. A
//     and B are permuted the same way, so the products are the same pairs;
//   - bytes in flight: a step is U = 4 groups (128 elements, 256 contiguous bytes of each of 16
//     rows: 4 KB per warp) loaded before any mma; weights by ld.global.nc.L1::no_allocate
//     (streamed once), x through L1 (re-read by every warp);
//   - split-K inside a block: the block's WARPS = THREADS/32 warps share one 16-row tile and take
//     steps WARPS apart; the warps' float partial tiles are added in warp order through shared
//     memory, a fixed order that depends only on (N, K, THREADS), never on M, so the result of a
//     row of x is the same at every M (batch invariance). lower.c picks THREADS so that the grid
//     has about 2048 warps (16 per SM of an H100/H200) whatever N is (lower_gemv_threads);
//   - each chain of mma is one step (at most 8 mma, 128 products) started from zero and added
//     to float accumulators: the tensor cores truncate inside a chain, so a short chain keeps
//     that error at the level of the float sums (see tests/gpu/ktest_gemv.c).
// A tile is 16 weight rows: 16 outputs, or for GATED 8 gate rows and their 8 up rows, so that a
// lane ends with the gate and up sums of the same output in its registers (c0/c1 and c2/c3).
// Row groups: block (g, tile) computes rows [g*MMAX, g*MMAX + MMAX) of x and y exactly as a
// launch of M' = min(MMAX, M - g*MMAX) rows on those rows alone would: the group is the fastest
// grid dimension, so the blocks that read one weight tile run side by side and all but the
// first find it in L2. A row's result depends only on its own x row, never on M or on its group:
// each of its outputs is one column of the tile's mma chain (no column mixes with another) and
// the split-K order is fixed (tests/gpu/ktest_gemv.c checks rows at M up to 200 against M = 1).
//
// Launch rule (the runtime computes it from this; THREADS is lower.c's lower_gemv_threads):
//   NOUT  = GATED ? N/2 : N                      (output columns; the row stride of y)
//   OPB   = GATED ? 8 : 16                       (outputs per block: one tile)
//   grid  = (ceil(M / MMAX), ceil(NOUT / OPB)): x the row group, y the tile (NOUT / OPB <= 65535,
//   checked); block = THREADS (a multiple of 32, at most 512), no dynamic shared memory (the
//   split-K partials are static shared memory, THREADS/32 * NT * 512 bytes). Groups past M exit.
// Layouts: x [M, K] contiguous; w [N, K]; bias [N] (read only when BIAS: may be nullptr
// otherwise; GATED: [gate bias (N/2); up bias (N/2)]); y [M, NOUT], float when OUT_F32 else DT.
// Rows m >= M of y are not written. Float accumulation, one rounding of the result.
// Preconditions: K % 8 == 0 (static_assert); x and w 16-byte aligned (rows are K elements, so
// every row is too); M >= 1 rows, of which the grid's groups cover ceil(M / MMAX) (rows past the
// last group of the grid are not computed); st is unused (M is explicit); sm_80 or newer
// (mma.sync with bf16).
//
// What it does not do: split-K across blocks (a tile's K is split over the warps of its block
// only; with 16 warps that is enough for the 1B/8B shapes, whose smallest N gives 128 tiles),
// share x between groups (a group of MMAX rows streams the weights as if alone: at many rows the
// default build's GEMM, which reuses a weight tile across 128 rows, is the faster kernel).
#pragma once

#include "common.cuh"

namespace kiln {
namespace gemv_detail {

// The FMA path: one warp streams NR weight rows against M rows of x with float FMAs. moe.cuh's
// per-token expert matmuls use it (lane_dots); the dense GEMV below uses the tensor cores.

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


// d += A · B for one m16n8k16 tile: A 16x16 (a0: row g, cols 2t..2t+1; a1: row g+8, same cols;
// a2, a3: the same rows, cols +8), B 16x8 (b0: k 2t..2t+1 of column g; b1: k +8), d the 16x8
// float tile (d0, d1: row g, cols 2t, 2t+1; d2, d3: row g+8). The layout attention.cuh's
// attn_mma documents (PTX ISA, "mma.m16n8k16").
template <typename DT>
__device__ __forceinline__ void mma16816(float d[4], unsigned a0, unsigned a1, unsigned a2,
                                         unsigned a3, unsigned b0, unsigned b1);
template <>
__device__ __forceinline__ void mma16816<bf16>(float d[4], unsigned a0, unsigned a1, unsigned a2,
                                               unsigned a3, unsigned b0, unsigned b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<f16>(float d[4], unsigned a0, unsigned a1, unsigned a2,
                                              unsigned a3, unsigned b0, unsigned b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// One 32-element group of K: wa, wb are the lane's 16-byte chunks of weight rows g and g+8, xb[j]
// its chunk of x row 8j+g, all at the same K offset 8t. Elements 0,1 | 2,3 of each chunk act as
// fragment columns 2t,2t+1 | 2t+8,2t+9 of the first mma, elements 4..7 likewise of the second
// (the same permutation of K for A and B). Column tiles j with no row of x (8j >= M) are skipped
// (M is warp-uniform).
template <typename DT, int NT>
__device__ __forceinline__ void mma_group(float d[NT][4], const uint4 &wa, const uint4 &wb,
                                          const uint4 xb[NT], int M)
{
#pragma unroll
    for (int j = 0; j < NT; j++) {
        if (8 * j < M) {
            mma16816<DT>(d[j], wa.x, wb.x, wa.y, wb.y, xb[j].x, xb[j].y);
            mma16816<DT>(d[j], wa.z, wb.z, wa.w, wb.w, xb[j].z, xb[j].w);
        }
    }
}

} // namespace gemv_detail

template <typename DT, int N, int K, int MMAX, bool BIAS, bool GATED, int ACT, bool OUT_F32,
          int THREADS>
__device__ __forceinline__ void gemv(const kiln_step st, const DT *x, const DT *w, const DT *bias,
                                     void *y, int M)
{
    KILN_PDL_ENTER();
    static_assert(K % 8 == 0, "gemv: K must be a multiple of 8");
    static_assert(N >= 1 && (!GATED || N % 2 == 0), "gemv: GATED needs an even N");
    static_assert(MMAX >= 1 && MMAX <= 16, "gemv: MMAX is 1..16");
    static_assert(THREADS % 32 == 0 && THREADS >= 32 && THREADS <= 512,
                  "gemv: THREADS must be a multiple of 32, at most 512");
    (void)st;
    constexpr int NOUT = GATED ? N / 2 : N;
    constexpr int OPB = GATED ? 8 : 16;          // outputs per block (one 16-row tile)
    constexpr int NT = (MMAX + 7) / 8;           // 8-column tiles of x rows
    constexpr int WARPS = THREADS / 32;          // split-K ways
    constexpr int U = 4;                         // 32-element groups per step
    constexpr int KC = K / 8;                    // 16-byte chunks per row
    constexpr int STEPS = (KC + 4 * U - 1) / (4 * U);
    static_assert((NOUT + OPB - 1) / OPB <= 65535, "gemv: more tiles than grid y allows");
    // this block's row group: rows [row0, row0 + M) of x and y, as a launch of its own
    const long long row0 = (long long)blockIdx.x * MMAX;
    if (M - row0 < 1)
        return; // uniform over the block: no block barrier is reached
    M = M - row0 > MMAX ? MMAX : (int)(M - row0);
    x += row0 * K;
    const long long tile = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32, g = lane >> 2, t = lane & 3;

    // The lane's two weight rows; rows past the end read the last row (valid memory) and store
    // nothing. GATED: row g is gate row o, row g+8 its up row.
    long long ra, rb;
    if constexpr (GATED) {
        long long o = tile * OPB + g;
        if (o > NOUT - 1)
            o = NOUT - 1;
        ra = o;
        rb = NOUT + o;
    } else {
        ra = tile * OPB + g;
        rb = ra + 8;
        if (ra > N - 1)
            ra = N - 1;
        if (rb > N - 1)
            rb = N - 1;
    }
    const DT *wa = w + ra * K + 8 * t, *wb = w + rb * K + 8 * t;
    const DT *xr[NT]; // x row 8j+g, or row M-1 past M (its column of the tile is not stored)
#pragma unroll
    for (int j = 0; j < NT; j++) {
        const int m = 8 * j + g < M ? 8 * j + g : M - 1;
        xr[j] = x + (long long)m * K + 8 * t;
    }

    float acc[NT][4];
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
        for (int i = 0; i < 4; i++)
            acc[j][i] = 0.f;
    // Step s covers chunks [16s, 16s + 16) of every row: group u is chunks 16s + 4u + 0..3, the
    // lane's is 16s + 4u + t. Warp `warp` takes steps warp, warp + WARPS, ...
#pragma unroll 1
    for (int s = warp; s < STEPS; s += WARPS) {
        const int c0 = s * 4 * U;
        uint4 va[U], vb[U], vx[U][NT];
        const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
        if (c0 + 4 * U <= KC) { // a whole step: all loads first
#pragma unroll
            for (int u = 0; u < U; u++) {
                va[u] = gemv_detail::ld_stream(wa + (c0 + 4 * u) * 8);
                vb[u] = gemv_detail::ld_stream(wb + (c0 + 4 * u) * 8);
            }
#pragma unroll
            for (int u = 0; u < U; u++)
#pragma unroll
                for (int j = 0; j < NT; j++)
                    vx[u][j] = 8 * j < M
                                   ? *reinterpret_cast<const uint4 *>(xr[j] + (c0 + 4 * u) * 8)
                                   : zero;
        } else { // the last step of a K that is not a multiple of 128: zeros past K, in w and x
#pragma unroll
            for (int u = 0; u < U; u++) {
                // chunks past K load the row's last chunk (valid memory, whatever the compiler
                // hoists) and are replaced by zeros
                const int c = c0 + 4 * u + t;
                const bool in = c < KC;
                const int off = ((in ? c : KC - 1) - t) * 8;
                va[u] = gemv_detail::ld_stream(wa + off);
                vb[u] = gemv_detail::ld_stream(wb + off);
                if (!in)
                    va[u] = vb[u] = zero;
#pragma unroll
                for (int j = 0; j < NT; j++)
                    vx[u][j] = in && 8 * j < M ? *reinterpret_cast<const uint4 *>(xr[j] + off)
                                               : zero;
            }
        }
        // One chain of 2U mma per step from zero, then a float add (see the top of the file).
        float d[NT][4];
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int i = 0; i < 4; i++)
                d[j][i] = 0.f;
#pragma unroll
        for (int u = 0; u < U; u++)
            gemv_detail::mma_group<DT, NT>(d, va[u], vb[u], vx[u], M);
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int i = 0; i < 4; i++)
                acc[j][i] += d[j][i];
    }

    // Split-K: warp 0 adds the warps' tiles in warp order (fixed: independent of M).
    if constexpr (WARPS > 1) {
        __shared__ float part[WARPS][NT * 4][32]; // the warps' partial tiles, [warp][reg][lane]
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int i = 0; i < 4; i++)
                part[warp][4 * j + i][lane] = acc[j][i];
        __syncthreads();
        if (warp != 0)
            return;
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                float v = part[0][4 * j + i][lane];
#pragma unroll 1
                for (int q = 1; q < WARPS; q++)
                    v += part[q][4 * j + i][lane];
                acc[j][i] = v;
            }
    }

    // Epilogue: lane (g, t) holds, for x rows m = 8j + 2t + e (e = 0, 1), acc[j][e] (tile row g)
    // and acc[j][2 + e] (tile row g + 8).
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int m = 8 * j + 2 * t + e;
            if (m >= M)
                continue;
#pragma unroll
            for (int h = 0; h < (GATED ? 1 : 2); h++) {
                const long long o = tile * OPB + 8 * h + g;
                if (o >= NOUT)
                    continue;
                float v;
                if constexpr (GATED) {
                    float gs = acc[j][e], us = acc[j][2 + e];
                    if (BIAS) {
                        gs += to_f(bias[o]);
                        us += to_f(bias[NOUT + o]);
                    }
                    v = act<ACT>(gs) * us;
                } else {
                    v = acc[j][2 * h + e];
                    if (BIAS)
                        v += to_f(bias[o]);
                }
                if constexpr (OUT_F32)
                    static_cast<float *>(y)[(row0 + m) * NOUT + o] = v;
                else
                    static_cast<DT *>(y)[(row0 + m) * NOUT + o] = from_f<DT>(v);
            }
        }
}

} // namespace kiln
