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
// With --gemm kiln, decode steps of 9 to 64 rows take gemm_skinny (below): the same product on
// fragments from shared memory, x shared by the tiles of a block, and K split across blocks (where
// every target is sm_90a, templates/gemm90.cuh's gemm90_skinny instead: the same contract on
// wgmma and TMA).
//
// What it does not do: split-K across blocks (a tile's K is split over the warps of its block
// only; with 16 warps that is enough for the 1B/8B shapes, whose smallest N gives 128 tiles),
// share x between groups (a group of MMAX rows streams the weights as if alone: at many rows the
// default build's GEMM, which reuses a weight tile across 128 rows, is the faster kernel).
#pragma once

#include "common.cuh"
#include "kiln_gemm.h"

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

// bf16: each half of a word is the top half of its float (one shift or mask an element).
template <>
__device__ __forceinline__ void unpack8<bf16>(const uint4 &v, float out[8])
{
    const unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        out[2 * i] = __uint_as_float(w[i] << 16);
        out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
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

// A compile-time int as a value (a generic lambda's template argument).
template <int V>
struct int_tag {
    static constexpr int value = V;
};

// run(int_tag<E>()) for E the fewest of 1, 2, 4 and MAXT (tiles of rows) that hold `need` tiles
// (need <= MAXT): the skinny kernels' one code path per count of column or row tiles, with no
// test of M inside their loops.
template <int MAXT, typename Run>
__device__ __forceinline__ void by_tiles(int need, Run &&run)
{
    if constexpr (MAXT > 1)
        if (need <= 1)
            return run(int_tag<1>());
    if constexpr (MAXT > 2)
        if (need <= 2)
            return run(int_tag<2>());
    if constexpr (MAXT > 4)
        if (need <= 4)
            return run(int_tag<4>());
    run(int_tag<MAXT>());
}

// The launch shape gemv, gemv_fp8 and gemv_int4 share (the launch rule at the top of the file):
// the checks on their common template arguments, and what follows from them. NOUT output columns
// (the row stride of y), OPB outputs a block (one 16-row tile: 16 rows, or 8 gate rows and their
// 8 up rows), NT 8-column tiles of x rows, WARPS split-K ways.
template <int N, bool GATED, int MMAX, int THREADS>
struct shape {
    static_assert(N >= 1 && (!GATED || N % 2 == 0), "GEMV: GATED needs an even N");
    static_assert(MMAX >= 1 && MMAX <= 16, "GEMV: MMAX is 1..16");
    static_assert(THREADS % 32 == 0 && THREADS >= 32 && THREADS <= 512,
                  "GEMV: THREADS must be a multiple of 32, at most 512");
    static constexpr int NOUT = GATED ? N / 2 : N;
    static constexpr int OPB = GATED ? 8 : 16;
    static constexpr int NT = (MMAX + 7) / 8;
    static constexpr int WARPS = THREADS / 32;
    static_assert((NOUT + OPB - 1) / OPB <= 65535, "GEMV: more tiles than grid y allows");
};

// The lane's two weight rows of tile `tile` (row g and row g + 8 of the tile, or for GATED gate
// row o and its up row NOUT + o); rows past the end read the last row (valid memory) and store
// nothing.
template <int N, bool GATED>
__device__ __forceinline__ void tile_rows(long long tile, int g, long long &ra, long long &rb)
{
    constexpr int NOUT = GATED ? N / 2 : N;
    if constexpr (GATED) {
        long long o = tile * 8 + g;
        if (o > NOUT - 1)
            o = NOUT - 1;
        ra = o;
        rb = NOUT + o;
    } else {
        ra = tile * 16 + g;
        rb = ra + 8;
        if (ra > N - 1)
            ra = N - 1;
        if (rb > N - 1)
            rb = N - 1;
    }
}

// Output o of row m of y: a is its sum (GATED: the gate row's, and u the up row's), times the
// rows' scales where rscale is given (gemv_fp8's per-row scales), plus the bias, and for GATED
// act(gate) * up; stored as float (OUT_F32) or DT, one rounding.
template <typename DT, int N, bool BIAS, bool GATED, int ACT, bool OUT_F32>
__device__ __forceinline__ void store_out(void *y, const DT *bias, const float *rscale,
                                          long long m, long long o, float a, float u)
{
    constexpr int NOUT = GATED ? N / 2 : N;
    float v;
    if constexpr (GATED) {
        if (rscale) {
            a *= rscale[o];
            u *= rscale[NOUT + o];
        }
        if (BIAS) {
            a += to_f(bias[o]);
            u += to_f(bias[NOUT + o]);
        }
        v = act<ACT>(a) * u;
    } else {
        (void)u;
        v = a;
        if (rscale)
            v *= rscale[o];
        if (BIAS)
            v += to_f(bias[o]);
    }
    if constexpr (OUT_F32)
        static_cast<float *>(y)[m * NOUT + o] = v;
    else
        static_cast<DT *>(y)[m * NOUT + o] = from_f<DT>(v);
}

// The epilogue of one tile's sums, written by the lane that holds them: lane (g, t) has, for x
// rows m = 8j + 2t + e (e = 0, 1), acc[j][e] (tile row g) and acc[j][2 + e] (tile row g + 8);
// rows m >= M are not stored, nor outputs past NOUT. rscale: nullptr, or a float per weight row
// (store_out). y's row row0 + m.
template <typename DT, int N, int NT, bool BIAS, bool GATED, int ACT, bool OUT_F32>
__device__ __forceinline__ void store_tile(const float acc[NT][4], const float *rscale,
                                           const DT *bias, void *y, long long row0,
                                           long long tile, int M)
{
    constexpr int NOUT = GATED ? N / 2 : N, OPB = GATED ? 8 : 16;
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
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
                if (o < NOUT)
                    store_out<DT, N, BIAS, GATED, ACT, OUT_F32>(
                        y, bias, rscale, row0 + m, o, GATED ? acc[j][e] : acc[j][2 * h + e],
                        acc[j][2 + e]);
            }
        }
}

// The float fragments of E m-tiles by two 8-row halves (gemm_skinny's accumulators; H of them:
// gemm_skinny_int4's E column tiles of each of its H tiles): zeroed, or a chain's sums d added to
// them.
template <int E, int H>
__device__ __forceinline__ void zero_frags(float (&a)[E][H][4])
{
#pragma unroll
    for (int i = 0; i < E; i++)
#pragma unroll
        for (int h = 0; h < H; h++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                a[i][h][e] = 0.f;
}
template <int E>
__device__ __forceinline__ void add_frags(float (&a)[E][2][4], const float (&d)[E][2][4])
{
#pragma unroll
    for (int i = 0; i < E; i++)
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                a[i][h][e] += d[i][h][e];
}

// The main loop of gemm_skinny and gemm_skinny_int4 over slices [s0, s1) of K through a ring of P
// stages: load(s, b) issues slice s's copies into stage b as one cp.async group of the thread
// (an empty group past s1: the count stays one a slice), body(s, b) multiplies the slice in
// stage b. P - 1 slices are in flight while one is multiplied, one barrier a slice; no copy
// outlives the loop (the empty tail groups, a part of none).
template <int P, typename Load, typename Body>
__device__ __forceinline__ void ring_loop(int s0, int s1, Load &&load, Body &&body)
{
#pragma unroll
    for (int i = 0; i < P - 1; i++)
        load(s0 + i, i);
    int b = 0; // the stage of slice s
#pragma unroll 1
    for (int s = s0; s < s1; s++) {
        cp_async_wait<P - 2>(); // this thread's copies of slice s have landed
        __syncthreads();        // everyone's have; and every warp is done with slice s - 1
        load(s + P - 1, b == 0 ? P - 1 : b - 1); // into slice s - 1's stage
        body(s, b);
        b = b == P - 1 ? 0 : b + 1;
    }
    cp_async_wait_all();
}

// After the main loop of gemm_skinny and gemm_skinny_int4 with SPLITS > 1 (split-K across
// blocks): the warp's float partial (NREG registers a lane, acc, in the kernel's fragment order)
// goes to part (its K part p, its unit: a tile or a tile pair, PT floats each; part is [SPLITS]
// [UNITS][PT]) bypassing L1, then a fence and its arrival counted on count[unit]. The warp that
// arrives last adds the SPLITS partials in part order 0, 1, ... (the same order whichever block is
// last: the result does not depend on scheduling) into acc, resets count[unit] to zero for the
// next launch and returns true; the others return false.
template <int SPLITS, int UNITS, long long PT, int NREG>
__device__ __forceinline__ bool split_sum(float *acc, float *part, unsigned *count,
                                          long long unit, int p)
{
    const int lane = threadIdx.x & 31;
    float *mine = part + ((long long)p * UNITS + unit) * PT;
#pragma unroll
    for (int r = 0; r < NREG; r++)
        __stcg(&mine[r * 32 + lane], acc[r]);
    __threadfence(); // the partial is visible before the arrival is counted
    __syncwarp();    // every lane's fence is done before lane 0 counts the warp's
    unsigned last = 0;
    if (lane == 0)
        last = atomicAdd(&count[unit], 1u) == SPLITS - 1;
    if (!__shfl_sync(0xffffffffu, last, 0))
        return false;
    __threadfence(); // every other part's partial is visible to the reads below
#pragma unroll
    for (int r = 0; r < NREG; r++) {
        const float *q = part + unit * PT + r * 32 + lane;
        float v[SPLITS]; // every part's load in flight at once, then the sum
#pragma unroll
        for (int i = 0; i < SPLITS; i++)
            v[i] = __ldcg(q + (long long)i * UNITS * PT);
        float sum = v[0];
#pragma unroll
        for (int i = 1; i < SPLITS; i++)
            sum += v[i];
        acc[r] = sum;
    }
    if (lane == 0)
        count[unit] = 0;
    return true;
}

// After the main loop: the warps' partial tiles added in warp order (split-K: fixed, independent
// of M), then warp 0 stores the tile (store_tile).
template <typename DT, int N, int MMAX, bool BIAS, bool GATED, int ACT, bool OUT_F32, int THREADS>
__device__ __forceinline__ void finish(float acc[(MMAX + 7) / 8][4], const float *rscale,
                                       const DT *bias, void *y, long long row0, long long tile,
                                       int M)
{
    using S = shape<N, GATED, MMAX, THREADS>;
    constexpr int NT = S::NT, WARPS = S::WARPS;
    if constexpr (WARPS > 1) {
        const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
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
    store_tile<DT, N, NT, BIAS, GATED, ACT, OUT_F32>(acc, rscale, bias, y, row0, tile, M);
}

// Four e4m3 bytes of gemv_fp8's layout (word bytes 0..3 = elements k, k+2, k+1, k+3) to two
// pairs of DT: lo = (k, k+1), hi = (k+2, k+3), exactly. Each byte's sign goes to bit 15 of its
// half and its 7 exponent and mantissa bits to the low end of DT's exponent and the top of its
// mantissa: the DT number that has those bits is the e4m3 value times 2^-120 (bf16: exponent
// bias 127 for 7) or 2^-8 (f16: 15 for 7), subnormals included (an e4m3 subnormal becomes a DT
// subnormal with the same mantissa), so one exact multiply by 2^120 or 2^8 gives the value.
template <typename DT>
__device__ __forceinline__ void fp8x4(unsigned q, unsigned &lo, unsigned &hi);
template <>
__device__ __forceinline__ void fp8x4<bf16>(unsigned q, unsigned &lo, unsigned &hi)
{
    const unsigned a = ((q << 8) & 0x80008000u) | ((q << 4) & 0x07F007F0u);
    const unsigned b = (q & 0x80008000u) | ((q >> 4) & 0x07F007F0u);
    // x * 2^120 + (-0): exact, and keeps the sign of a zero
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(lo) : "r"(a), "r"(0x7B807B80u), "r"(0x80008000u));
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(hi) : "r"(b), "r"(0x7B807B80u), "r"(0x80008000u));
}
template <>
__device__ __forceinline__ void fp8x4<f16>(unsigned q, unsigned &lo, unsigned &hi)
{
    const unsigned a = ((q << 8) & 0x80008000u) | ((q << 7) & 0x3F803F80u);
    const unsigned b = (q & 0x80008000u) | ((q >> 1) & 0x3F803F80u);
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(lo) : "r"(a), "r"(0x5C005C00u), "r"(0x80008000u));
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(hi) : "r"(b), "r"(0x5C005C00u), "r"(0x80008000u));
}

// Sixteen e4m3 bytes (elements 16c .. 16c + 15 of a row) as two 8-element chunks of DT pairs, in
// the order of a 16-byte load of 8 DT elements (c0: elements 0..7, c1: 8..15).
template <typename DT>
__device__ __forceinline__ void fp8x16(const uint4 &v, uint4 &c0, uint4 &c1)
{
    fp8x4<DT>(v.x, c0.x, c0.y);
    fp8x4<DT>(v.y, c0.z, c0.w);
    fp8x4<DT>(v.z, c1.x, c1.y);
    fp8x4<DT>(v.w, c1.z, c1.w);
}

// INT4 elements of gemv_int4's layout (one 32-bit word: element 2j is nibble j, element 2j + 1
// nibble j + 4, j = 0..3) as DT pairs. Pair j is built as the DT numbers B + q (the nibbles put in
// the mantissa of B: bf16 0x4300 = 128, f16 0x6400 = 1024, whose ulp is 1) by one lop3 on the
// word shifted right by 4j (int4_bq), then (B + q) - (B + z) (an integer in [-16, 15]: exact) by
// an fma with -1 (int4_diff). sz.x is the pair (s, s), sz.y the pair (B + z, B + z). The shift
// is a multiply-high, which runs on the FMA pipe: the lop3 keep the ALU pipe (half the rate of
// the FMA pipe on sm_80 and sm_90) busy enough. fma.rn.bf16x2 and .f16x2 exist on sm_80
// (sub.bf16x2 and mul.bf16x2 only on sm_90) and keep subnormals.
template <typename DT>
struct int4_pairs;
template <>
struct int4_pairs<bf16> {
    static constexpr unsigned MAGIC = 0x43004300u; // (128, 128)
    static constexpr unsigned NEG1 = 0xBF80BF80u;  // (-1, -1)
    static __device__ __forceinline__ unsigned fma(unsigned a, unsigned b, unsigned c)
    {
        unsigned d;
        asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
        return d;
    }
    // the low half of a pair, to float (exact)
    static __device__ __forceinline__ float lo_f(unsigned p) { return __uint_as_float(p << 16); }
};
template <>
struct int4_pairs<f16> {
    static constexpr unsigned MAGIC = 0x64006400u; // (1024, 1024)
    static constexpr unsigned NEG1 = 0xBC00BC00u;  // (-1, -1)
    static __device__ __forceinline__ unsigned fma(unsigned a, unsigned b, unsigned c)
    {
        unsigned d;
        asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
        return d;
    }
    static __device__ __forceinline__ float lo_f(unsigned p)
    {
        return __half2float(__ushort_as_half((unsigned short)(p & 0xffffu)));
    }
};

// Pair j of word q: (B + q_2j, B + q_2j+1). One lop3 ((w & 0x000F000F) | MAGIC: written as
// asm because C's & and | become two LOP3 with an immediate each), after q >> 4j for j > 0.
template <typename DT>
__device__ __forceinline__ unsigned int4_bq(unsigned q, int j)
{
    const unsigned w = j ? __umulhi(q, 1u << (32 - 4 * j)) : q;
    unsigned d;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" // (a & b) | c
        : "=r"(d)
        : "r"(w), "n"(0x000F000F), "n"(int4_pairs<DT>::MAGIC));
    return d;
}

// Eight elements (word q) as an 8-element chunk of DT pairs in natural order (c.x: elements 0,
// 1; c.y: 2, 3; ...), each q - z, exact (gemv_int4's factored path multiplies by s after the
// sum).
template <typename DT>
__device__ __forceinline__ uint4 int4_diff(unsigned q, unsigned bz)
{
    using P = int4_pairs<DT>;
    unsigned c[4];
#pragma unroll
    for (int j = 0; j < 4; j++)
        c[j] = P::fma(bz, P::NEG1, int4_bq<DT>(q, j));
    return make_uint4(c[0], c[1], c[2], c[3]);
}

// The same chunk, each (q - z) * s with one rounding to DT: then times s by an fma with a -0
// addend (the sign of a zero product kept). gemv_int4's general path and dequant_int4.
template <typename DT>
__device__ __forceinline__ uint4 int4x8(unsigned q, const uint2 &sz)
{
    using P = int4_pairs<DT>;
    const uint4 d = int4_diff<DT>(q, sz.y);
    return make_uint4(P::fma(d.x, sz.x, 0x80008000u), P::fma(d.y, sz.x, 0x80008000u),
                      P::fma(d.z, sz.x, 0x80008000u), P::fma(d.w, sz.x, 0x80008000u));
}

// The line of p brought to L1 without waiting or holding a register (gemv_int4's x and sz, loaded
// at their use: without it each group's first use would wait a round trip to L2 or memory).
__device__ __forceinline__ void prefetch_l1(const void *p)
{
    asm volatile("prefetch.global.L1 [%0];" ::"l"(p));
}

// The start every GEMV shares. This block's row group: rows [row0, row0 + M) of x and y, done as
// a launch of its own (M cut to at most MMAX); false when the group starts past M (uniform over
// the block: no barrier is reached). The lane's x rows: xr[j] is x row 8j + g (row M - 1 past M:
// its column of the tile is not stored), at element xoff (its first chunk). acc zeroed.
template <typename DT, int K, int MMAX>
__device__ __forceinline__ bool row_group(const DT *x, int &M, long long &row0, int g,
                                          long long xoff, const DT *xr[(MMAX + 7) / 8],
                                          float acc[(MMAX + 7) / 8][4])
{
    row0 = (long long)blockIdx.x * MMAX;
    if (M - row0 < 1)
        return false;
    M = M - row0 > MMAX ? MMAX : (int)(M - row0);
    x += row0 * K;
#pragma unroll
    for (int j = 0; j < (MMAX + 7) / 8; j++) {
        const int m = 8 * j + g < M ? 8 * j + g : M - 1;
        xr[j] = x + (long long)m * K + xoff;
#pragma unroll
        for (int i = 0; i < 4; i++)
            acc[j][i] = 0.f;
    }
    return true;
}

// One step's loads, all before any math: for each of the U groups of step c0 (16-byte chunks
// c0 + 4u + t of every row), the lane's chunk of weight rows a and b (16 bytes: 8 DT elements of
// gemv's weight, 16 e4m3 of gemv_fp8's) and of x rows xr[j] (XH 16-byte loads of 8 DT elements:
// the chunk's elements), zero for the column tiles j with no row of x
// (8j >= M). wa, wb, xr point at the lane's chunk of step 0 (offset t). In the last step of a K
// that ends inside it, chunks past K (c >= KC) load the row's last chunk (valid memory, whatever
// the compiler hoists) and are replaced by zeros, in w and in x.
template <typename DT, int U, int NT, int XH, int KC>
__device__ __forceinline__ void step_loads(const unsigned char *wa, const unsigned char *wb,
                                           const DT *const xr[NT], int c0, int t, int M,
                                           uint4 va[U], uint4 vb[U], uint4 vx[U][XH][NT])
{
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
    if (c0 + 4 * U <= KC) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            va[u] = ld_stream(wa + (c0 + 4 * u) * 16);
            vb[u] = ld_stream(wb + (c0 + 4 * u) * 16);
        }
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int h = 0; h < XH; h++)
                    vx[u][h][j] = 8 * j < M ? *reinterpret_cast<const uint4 *>(
                                                  xr[j] + (c0 + 4 * u) * 8 * XH + 8 * h)
                                            : zero;
        return;
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
        const int c = c0 + 4 * u + t;
        const bool in = c < KC;
        const int off = (in ? c : KC - 1) - t; // chunks from the lane's first
        va[u] = ld_stream(wa + off * 16);
        vb[u] = ld_stream(wb + off * 16);
        if (!in)
            va[u] = vb[u] = zero;
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int h = 0; h < XH; h++)
                vx[u][h][j] = in && 8 * j < M
                                  ? *reinterpret_cast<const uint4 *>(xr[j] + off * 8 * XH + 8 * h)
                                  : zero;
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
    (void)st;
    using S = gemv_detail::shape<N, GATED, MMAX, THREADS>;
    constexpr int NT = S::NT, WARPS = S::WARPS;
    constexpr int U = 4;                         // 32-element groups per step
    static_assert(U % 4 == 0, "gemv: U must be a multiple of 4 (chains of 8 mma)");
    constexpr int KC = K / 8;                    // 16-byte chunks per row
    constexpr int STEPS = (KC + 4 * U - 1) / (4 * U);
    const long long tile = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32, g = lane >> 2, t = lane & 3;
    long long row0;
    const DT *xr[NT]; // x row 8j+g, at the lane's first chunk
    float acc[NT][4];
    if (!gemv_detail::row_group<DT, K, MMAX>(x, M, row0, g, 8 * t, xr, acc))
        return;

    long long ra, rb;
    gemv_detail::tile_rows<N, GATED>(tile, g, ra, rb);
    const DT *wa = w + ra * K + 8 * t, *wb = w + rb * K + 8 * t;
    // Step s covers chunks [16s, 16s + 16) of every row: group u is chunks 16s + 4u + 0..3, the
    // lane's is 16s + 4u + t. Warp `warp` takes steps warp, warp + WARPS, ...
#pragma unroll 1
    for (int s = warp; s < STEPS; s += WARPS) {
        uint4 va[U], vb[U], vx[U][1][NT];
        gemv_detail::step_loads<DT, U, NT, 1, KC>(
            reinterpret_cast<const unsigned char *>(wa), reinterpret_cast<const unsigned char *>(wb),
            xr, s * 4 * U, t, M, va, vb, vx);
        // Chains of 8 mma (4 groups) from zero, each then a float add (see the top of the file).
#pragma unroll
        for (int u0 = 0; u0 < U; u0 += 4) {
            float d[NT][4];
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int i = 0; i < 4; i++)
                    d[j][i] = 0.f;
#pragma unroll
            for (int u = u0; u < u0 + 4; u++)
                gemv_detail::mma_group<DT, NT>(d, va[u], vb[u], vx[u][0], M);
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int i = 0; i < 4; i++)
                    acc[j][i] += d[j][i];
        }
    }
    gemv_detail::finish<DT, N, MMAX, BIAS, GATED, ACT, OUT_F32, THREADS>(acc, nullptr, bias, y,
                                                                        row0, tile, M);
}

// gemm_skinny — y[m, n] = x[m] · w[n] (+ bias[n]) for steps of more rows than the GEMV takes and
// at most KILN_SKINNY_MAX (64): kilnc compile --gemm kiln's decode batches of 9 to 64 sequences,
// where a GEMM is still bound by the bytes of its weight (8B shape at 64 rows: 3.6 ms of weight
// reads, 1.3 ms of tensor-core work at the bf16 peak). The GEMV's row groups would stream each
// weight tile once per 8 or 16 rows, and a tile GEMM (cuBLASLt, gemm.cuh) sizes its tiles for
// compute. Design:
//   - a warp owns one tile of 16 weight rows (gemv's tiles: 16 outputs, or 8 gate rows and their
//     8 up rows) and computes y^T-free D[x rows, its 16 rows] = x · w_tile^T with mma.sync
//     m16n8k16: x is the A operand (m-tiles of 16 rows), the tile's two 8-row halves the B
//     operand (n-tiles), both read from shared memory by ldmatrix.x4 in the standard fragment
//     layout. A lane ends with, for x rows 16i + g and 16i + g + 8, the outputs 2t, 2t + 1 of each
//     half: for GATED a gate sum and its up sum in the same lane;
//   - the WARPS warps of a block take WARPS consecutive tiles and share x. K is streamed in
//     slices of KILN_SKINNY_KC (128) elements through a ring of STAGES slices in dynamic shared
//     memory, STAGES - 1 in flight while one is multiplied, one barrier a slice (cp.async: the
//     block copies the x rows, each warp its own 16 weight rows, 8 x 16 bytes a lane; 16 lanes
//     copy one row's 256 contiguous bytes, whole 32-byte sectors: lanes that each copied half of
//     a sector made the L2 read every weight sector twice, on an H200). Rows are
//     KILN_SKINNY_KC + KILN_SKINNY_PAD elements apart (272 bytes): the 8 row addresses of one
//     ldmatrix phase fall in 8 distinct 16-byte bank groups. x rows from M up to the last m-tile
//     computed and elements past K are zeros; m-tiles past M are not computed (E of them, the
//     fewest powers of two that hold M: one code path each, no test in the loop);
//   - chains of 8 mma (one slice) from zero added to float accumulators (gemv's numerics: the
//     tensor cores truncate inside a chain);
//   - split-K across blocks: block (group, p) takes slices [p * S / SPLITS, (p + 1) * S / SPLITS)
//     of the S slices of K (a part may have none). With SPLITS > 1 each warp writes its float
//     partial tile to part (in fragment order, bypassing L1), fences, and counts its arrival on
//     count[tile]; the warp that arrives last adds the SPLITS partials in part order 0, 1, ...
//     (the same order whichever block is last: the result does not depend on scheduling),
//     resets count[tile] to zero for the next launch and stores the tile.
// A row's result depends only on its own x row (each output is one mma row; the order of the
// sums is fixed by N, K, WARPS and SPLITS), never on M.
// Launch rule (kernels/kiln_gemm.h; WARPS, SPLITS and STAGES from compiler/lower.c's
//   lower_skinny_shape): TILES = ceil(NOUT / OPB) (gemv's NOUT, OPB); grid = (ceil(TILES /
//   WARPS), SPLITS), block = 32 * WARPS, dynamic shared memory KILN_SKINNY_SMEM(MMAX, WARPS,
//   STAGES); part: float [KILN_SKINNY_PART(SPLITS, TILES, MMAX)] (unused, may be null, for
//   SPLITS 1); count: unsigned [TILES], zero before the first launch, left zero by every launch.
// Layouts: gemv's (x [M, K] contiguous, w [N, K], bias, y [M, NOUT]). Preconditions: K % 8 == 0;
// MMAX a multiple of 16 up to KILN_SKINNY_MAX; 1 <= M (rows past MMAX are not computed); x and w
// 16-byte aligned, y aligned to two elements (NOUT even, or one element stores); st unused.
template <typename DT, int N, int K, int MMAX, bool BIAS, bool GATED, int ACT, bool OUT_F32,
          int WARPS, int SPLITS, int STAGES>
__device__ __forceinline__ void gemm_skinny(const kiln_step st, const DT *x, const DT *w,
                                            const DT *bias, void *y, float *part,
                                            unsigned *count, int M)
{
    KILN_PDL_ENTER();
    static_assert(K % 8 == 0, "gemm_skinny: K must be a multiple of 8");
    static_assert(MMAX % 16 == 0 && MMAX >= 16 && MMAX <= KILN_SKINNY_MAX,
                  "gemm_skinny: MMAX is a multiple of 16 up to KILN_SKINNY_MAX");
    static_assert(WARPS >= 1 && WARPS <= 16 && SPLITS >= 1 && STAGES >= 2,
                  "gemm_skinny: 1..16 warps, SPLITS >= 1, STAGES >= 2");
    static_assert(N >= 1 && (!GATED || N % 2 == 0), "gemm_skinny: GATED needs an even N");
    (void)st;
    constexpr int NOUT = GATED ? N / 2 : N, OPB = GATED ? 8 : 16, MT = MMAX / 16;
    constexpr int TILES = (NOUT + OPB - 1) / OPB;
    constexpr int KC = KILN_SKINNY_KC, XS = KILN_SKINNY_KC + KILN_SKINNY_PAD, P = STAGES;
    constexpr int THREADS = 32 * WARPS;
    constexpr int CPS = KC / 8;                  // 16-byte chunks of a row in a slice
    constexpr int CH = K / 8;                    // 16-byte chunks of a row
    constexpr int SLICES = (K + KC - 1) / KC;
    constexpr bool TAIL = K % KC != 0;           // the last slice ends inside it
    constexpr int RSTEP = THREADS / CPS;         // x rows between a thread's copies
    constexpr int ROW = XS * 2;                  // bytes of a staged row
    static_assert(sizeof(DT) == 2 && KC == 128 && ROW % 128 == 16,
                  "gemm_skinny: 16-bit DT; 8 consecutive staged rows in 8 distinct bank groups");
    static_assert(THREADS % CPS == 0 && MMAX % RSTEP == 0,
                  "gemm_skinny: the threads copy whole rows of an x slice, the same number each");
    constexpr int XSTAGE = MMAX * ROW;           // bytes of one x slice
    constexpr int WSTAGE = WARPS * 16 * ROW;     // bytes of the warps' weight rows of a slice
    static_assert(KILN_SKINNY_SMEM(MMAX, WARPS, STAGES) == P * (XSTAGE + WSTAGE),
                  "gemm_skinny: kiln_gemm.h's KILN_SKINNY_SMEM is this ring");
    // the ring: P x slices [MMAX][XS], then P slices of the warps' rows, [stage][warp][16][XS]
    extern __shared__ __align__(16) unsigned char skinny_smem[];
    const unsigned sbase = (unsigned)__cvta_generic_to_shared(skinny_smem);

    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32, g = lane >> 2, t = lane & 3;
    if (M > MMAX)
        M = MMAX;
    const long long tile = (long long)blockIdx.x * WARPS + warp;
    const bool active = tile < TILES; // warp-uniform: a tile past the end computes nothing
    const int p = blockIdx.y;
    const int s0 = (int)((long long)p * SLICES / SPLITS);
    const int s1 = (int)((long long)(p + 1) * SLICES / SPLITS);
    // copies (each 16 consecutive threads one row's 256 contiguous bytes of a slice, whole
    // sectors): the thread's x rows xr0 + k * RSTEP, chunk xc of each slice; the lane's rows
    // 2c + lane / 16 (c < 8) of the warp's tile, chunk lane % 16 (tile row r is gemv's row g = r
    // of its first half for r < 8, of its second for r >= 8: tile_rows)
    const int xr0 = threadIdx.x / CPS, xc = threadIdx.x % CPS;
    const DT *xsrc = x + (long long)xr0 * K + 8 * xc;
    const unsigned xdst = sbase + (unsigned)(xr0 * ROW + 16 * xc);
    const int wc = lane & 15, whi = lane >> 4;
    const DT *wsrc[8];
#pragma unroll
    for (int c = 0; c < 8; c++) {
        long long ra, rb;
        gemv_detail::tile_rows<N, GATED>(active ? tile : TILES - 1, 2 * (c & 3) + whi, ra, rb);
        wsrc[c] = w + (c < 4 ? ra : rb) * K + 8 * wc;
    }
    const unsigned wdst = sbase + (unsigned)(P * XSTAGE + (warp * 16 + whi) * ROW + 16 * wc);
    // ldmatrix row addresses: A (x, m-tile i): row 16i + (lane & 15), chunk (lane >> 4) of the
    // k16 step; B (the warp's 16 rows): row (lane & 7) + ((lane >> 4) << 3), chunk (lane >> 3) & 1
    const unsigned xa = sbase + (unsigned)((lane & 15) * ROW + (lane >> 4) * 16);
    const unsigned wa =
        sbase + (unsigned)(P * XSTAGE + (warp * 16 + (lane & 7) + ((lane >> 4) << 3)) * ROW +
                           ((lane >> 3) & 1) * 16);

    // The rest at E m-tiles of 16 rows, the fewest powers of two that hold M (or MT).
    auto run = [&](auto mtiles) {
        constexpr int E = decltype(mtiles)::value;
        // slice s into ring stage b, as one cp.async group of this thread (empty past s1: the
        // group count stays one a slice); chunks past K are zeros, and so are the x rows from M
        // to 16E (rows past 16E are not copied)
        auto load = [&](int s, int b) {
            if (s < s1) {
                const bool xin = !TAIL || s * CPS + xc < CH;
#pragma unroll
                for (int k = 0; k < MMAX / RSTEP; k++) {
                    const int r = xr0 + k * RSTEP;
                    const bool ok = xin && r < M;
                    if (r < 16 * E)
                        cp_async16(xdst + b * XSTAGE + k * RSTEP * ROW,
                                   ok ? xsrc + (long long)k * RSTEP * K + (long long)s * KC : x,
                                   ok ? 16 : 0);
                }
                if (active)
#pragma unroll
                    for (int c = 0; c < 8; c++) {
                        const bool ok = !TAIL || s * CPS + wc < CH;
                        cp_async16(wdst + b * WSTAGE + 2 * c * ROW,
                                   ok ? wsrc[c] + (long long)s * KC : w, ok ? 16 : 0);
                    }
            }
            cp_async_commit();
        };

        float acc[E][2][4];
        gemv_detail::zero_frags<E>(acc);
        gemv_detail::ring_loop<P>(s0, s1, load, [&](int s, int b) {
            (void)s;
            if (active) {
                float d[E][2][4];
                gemv_detail::zero_frags<E>(d);
#pragma unroll
                for (int kk = 0; kk < KC / 16; kk++) {
                    unsigned bw[4]; // b0, b1 of the first half, then of the second
                    ldsm4(bw, wa + b * WSTAGE + kk * 32);
#pragma unroll
                    for (int i = 0; i < E; i++) {
                        unsigned a[4];
                        ldsm4(a, xa + b * XSTAGE + i * 16 * ROW + kk * 32);
                        gemv_detail::mma16816<DT>(d[i][0], a[0], a[1], a[2], a[3], bw[0], bw[1]);
                        gemv_detail::mma16816<DT>(d[i][1], a[0], a[1], a[2], a[3], bw[2], bw[3]);
                    }
                }
                gemv_detail::add_frags<E>(acc, d);
            }
        });
        if (!active)
            return;
        // a partial tile: [MT][2][4][32 lanes] floats
        if constexpr (SPLITS > 1)
            if (!gemv_detail::split_sum<SPLITS, TILES, (long long)MMAX * 16, E * 8>(
                    &acc[0][0][0], part, count, tile, p))
                return;
        // The epilogue: lane (g, t) holds, for x rows m = 16i + g + 8r (r = 0, 1), acc[i][h][2r]
        // and acc[i][h][2r + 1] of the tile's weight rows 8h + 2t and 8h + 2t + 1 (GATED: h = 0
        // the gate rows of outputs 2t, 2t + 1, h = 1 their up rows)
#pragma unroll
        for (int i = 0; i < E; i++)
#pragma unroll
            for (int r = 0; r < 2; r++) {
                const int m = 16 * i + g + 8 * r;
                if (m >= M)
                    continue;
#pragma unroll
                for (int h = 0; h < (GATED ? 1 : 2); h++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const long long o = tile * OPB + 8 * h + 2 * t + e;
                        if (o < NOUT)
                            gemv_detail::store_out<DT, N, BIAS, GATED, ACT, OUT_F32>(
                                y, bias, nullptr, m, o, acc[i][h][2 * r + e],
                                acc[i][1][2 * r + e]);
                    }
            }
    };
    gemv_detail::by_tiles<MT>((M + 15) / 16, run);
}

// gemv_fp8 — the same GEMV with an FP8 (e4m3) weight: y[m, n] = (x[m] · q[n]) * scale (+ bias[n]),
// activations and output in DT (weight-only FP8, kilnc's --quant fp8 and published FP8
// checkpoints; compiler/quant.h). Grid, block, row groups, split-K order, batch invariance and
// epilogue are gemv's; what differs:
//   - w is [N, K] bytes, each aligned group of four elements k..k+3 stored in the byte order
//     k, k+2, k+1, k+3 (compiler/pack.c writes it so), which lets a lane turn 4 bytes into two
//     DT pairs in the order of x with a few integer operations and one exact multiply
//     (gemv_detail::fp8x4): the mma are gemv's, on DT values equal to the e4m3 ones;
//   - a lane loads 16 bytes = 16 elements of rows g and g+8 (two 8-element chunks of x); a step
//     is U = 4 groups of 64 elements (256 bytes of each of 16 rows: 4 KB per warp in flight, as
//     gemv's step), and each group is one chain of 4 mma from zero added to float accumulators;
//   - scale: float [N, KB], KB = ceil(K / SBC): SBC == K is one scale per row, applied to the
//     row's sum in the epilogue (per-tensor and per-channel checkpoints, --quant fp8); otherwise
//     (SBC a multiple of 64 below K: a block-scaled checkpoint, its 128x128 blocks expanded to
//     rows) each group's chain is scaled by its row's scale of its K block before the add.
// Preconditions: K % 16 == 0; x 16-byte aligned; w 16-byte aligned. Launch rule: gemv's.
template <typename DT, int N, int K, int MMAX, bool BIAS, bool GATED, int ACT, bool OUT_F32,
          int THREADS, int SBC>
__device__ __forceinline__ void gemv_fp8(const kiln_step st, const DT *x, const unsigned char *w,
                                         const float *scale, const DT *bias, void *y, int M)
{
    KILN_PDL_ENTER();
    static_assert(K % 16 == 0, "gemv_fp8: K must be a multiple of 16");
    static_assert(SBC == K || (SBC > 0 && SBC % 64 == 0 && SBC < K),
                  "gemv_fp8: a scale per row (SBC == K) or per K block of a multiple of 64");
    (void)st;
    using S = gemv_detail::shape<N, GATED, MMAX, THREADS>;
    constexpr int NT = S::NT, WARPS = S::WARPS;
    constexpr bool BLOCKS = SBC != K;
    constexpr int KB = (K + SBC - 1) / SBC;
    constexpr int U = 4;      // 64-element groups per step
    constexpr int KC = K / 16; // 16-byte chunks per row
    constexpr int STEPS = (KC + 4 * U - 1) / (4 * U);
    const long long tile = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32, g = lane >> 2, t = lane & 3;
    long long row0;
    const DT *xr[NT]; // x row 8j+g, at the lane's first chunk
    float acc[NT][4];
    if (!gemv_detail::row_group<DT, K, MMAX>(x, M, row0, g, 16 * t, xr, acc))
        return;

    long long ra, rb;
    gemv_detail::tile_rows<N, GATED>(tile, g, ra, rb);
    const unsigned char *wa = w + ra * K + 16 * t, *wb = w + rb * K + 16 * t;
    // Step s covers chunks [16s, 16s + 16) of every row: group u is chunks 16s + 4u + 0..3 (64
    // elements), the lane's is 16s + 4u + t.
#pragma unroll 1
    for (int s = warp; s < STEPS; s += WARPS) {
        const int c0 = s * 4 * U;
        uint4 va[U], vb[U], vx[U][2][NT];
        gemv_detail::step_loads<DT, U, NT, 2, KC>(wa, wb, xr, c0, t, M, va, vb, vx);
#pragma unroll
        for (int u = 0; u < U; u++) {
            uint4 a0, a1, b0, b1;
            gemv_detail::fp8x16<DT>(va[u], a0, a1);
            gemv_detail::fp8x16<DT>(vb[u], b0, b1);
            float d[NT][4];
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int i = 0; i < 4; i++)
                    d[j][i] = 0.f;
            gemv_detail::mma_group<DT, NT>(d, a0, b0, vx[u][0], M);
            gemv_detail::mma_group<DT, NT>(d, a1, b1, vx[u][1], M);
            float sa = 1.f, sb = 1.f;
            if constexpr (BLOCKS) {
                const int kb = (c0 + 4 * u) * 16 / SBC; // past K: d is zero
                sa = scale[ra * KB + (kb < KB ? kb : KB - 1)];
                sb = scale[rb * KB + (kb < KB ? kb : KB - 1)];
            }
#pragma unroll
            for (int j = 0; j < NT; j++) {
                acc[j][0] += d[j][0] * sa;
                acc[j][1] += d[j][1] * sa;
                acc[j][2] += d[j][2] * sb;
                acc[j][3] += d[j][3] * sb;
            }
        }
    }
    gemv_detail::finish<DT, N, MMAX, BIAS, GATED, ACT, OUT_F32, THREADS>(
        acc, BLOCKS ? nullptr : scale, bias, y, row0, tile, M);
}

// The shape dequant_fp8 and dequant_int4 share: a block converts U * THREADS consecutive units
// of w of 8 elements each (units in all; K % 8 == 0, so a unit never straddles rows), thread t
// units t, t + THREADS, ..., so that each of a warp's loads and stores is consecutive; every
// unit's load (the unit as a Q, its scale from scale_at(n, k)) before the first conversion,
// conv(q, s, j) storing unit j of out.
template <int U, int THREADS, int K, typename Q, typename ScaleAt, typename Conv>
__device__ __forceinline__ void dequant_units(long long units, const Q *wq, ScaleAt scale_at,
                                              Conv conv)
{
    const long long u0 = (long long)blockIdx.x * U * THREADS + threadIdx.x;
    Q q[U];
    decltype(scale_at(0LL, 0)) s[U];
#pragma unroll
    for (int i = 0; i < U; i++) {
        const long long j = u0 + (long long)i * THREADS;
        if (j < units) {
            q[i] = __ldcs(wq + j);
            s[i] = scale_at(j / (K / 8), (int)(j % (K / 8)) * 8);
        }
    }
#pragma unroll
    for (int i = 0; i < U; i++) {
        const long long j = u0 + (long long)i * THREADS;
        if (j < units)
            conv(q[i], s[i], j);
    }
}

// dequant_fp8 — gemv_fp8's weight (bytes in its order, float scales [N, KB]) as a DT [N, K]
// matrix in natural order: out[n, k] = DT(float(q[n, k]) * scale[n, k / SBC]), the same
// rounding as a weight dequantised at compile time (compiler/quant.c: the fp32 product, then
// the pack's conversion to DT). The prefill schedule runs it before a GEMM of more rows than
// the GEMV takes, into scratch. dequant_units with 8-byte units, two a thread: each of a warp's
// loads reads 256 consecutive bytes, each store writes 512.
// Launch rule: grid (ceil(N * K / 16 / THREADS)), block THREADS. Preconditions: K % 16 == 0;
// SBC == K or a multiple of 64; w 8-byte and out 16-byte aligned.
template <typename DT, int N, int K, int SBC, int THREADS>
__device__ __forceinline__ void dequant_fp8(const kiln_step st, const unsigned char *w,
                                            const float *scale, DT *out)
{
    KILN_PDL_ENTER();
    static_assert(K % 16 == 0 && (SBC == K || (SBC > 0 && SBC % 64 == 0)),
                  "dequant_fp8: K % 16 == 0 and a scale per row or per K block of 64k");
    static_assert(THREADS % 32 == 0 && THREADS >= 32 && THREADS <= 1024,
                  "dequant_fp8: THREADS must be a multiple of 32, at most 1024");
    (void)st;
    constexpr int KB = (K + SBC - 1) / SBC;
    dequant_units<2, THREADS, K>(
        (long long)N * (K / 8), reinterpret_cast<const uint2 *>(w),
        [&](long long n, int k) { return scale[n * KB + k / SBC]; },
        [&](const uint2 &q, float s, long long j) {
            unsigned h[4]; // elements 0..7 as DT pairs
            gemv_detail::fp8x4<DT>(q.x, h[0], h[1]);
            gemv_detail::fp8x4<DT>(q.y, h[2], h[3]);
            float f[8];
#pragma unroll
            for (int e = 0; e < 8; e++) {
                DT v;
                *reinterpret_cast<unsigned short *>(&v) =
                    (unsigned short)(e & 1 ? h[e / 2] >> 16 : h[e / 2] & 0xffffu);
                f[e] = to_f(v) * s;
            }
            store8(out + j * 8, f);
        });
}

// gemv_int4 — the same GEMV with an INT4 weight (weight-only, asymmetric, a scale and a zero point
// per group of G columns of a row): y[m, n] = x[m] · w[n] (+ bias[n]), activations and output in
// DT. Grid, block, row groups, split-K order, batch invariance and epilogue are gemv's (tile_rows,
// finish without a row scale). The weight's layout (the packer writes exactly this):
//   - w: [N, K/2] bytes. Each aligned group of 8 elements k..k+7 of a row is one little-endian
//     32-bit word in which element k+2j is nibble j (bits 4j..4j+3) and element k+2j+1 is nibble
//     j+4 (bits 16+4j..16+4j+3), j = 0..3; nibbles are unsigned q in [0, 15];
//   - sz: [N, K/G] uint2, one per (row, group of G consecutive columns): .x = the group's scale s
//     as a pair of DT (both halves s), .y = (B + z) as a pair of DT, B = 128 for bf16, 1024 for
//     f16, z the zero point, an integer in [0, 16].
// What differs from gemv: a lane's 16-byte chunk is 32 elements (4 words: 4 chunks of 8) of rows g
// and g+8, against four 16-byte loads of its x row; a step is U = 4 groups of 128 elements (256
// bytes of each of 16 rows, gemv's bytes in flight), and each group is one chain of 8 mma (4
// chunks x 2) from zero added to the float accumulators. The step's weight chunks go to shared
// memory by cp.async (4 KB a warp), all issued before the wait that precedes the math: they are
// in flight together without holding registers (loaded into registers, ptxas sinks each load
// next to its use, one round trip to memory per group, or holds 128 registers a thread); the
// lines of x and sz the step reads are prefetched to L1 with them, and loaded at their use. The
// weight's value depends on G, by one rule (G % 128 == 0 or not):
//   - G % 128 == 0 (the factored path: AWQ's and GPTQ's 128, --quant int4's whenever K allows):
//     the 128 elements of a chain lie in one group, so the chain runs on the exact integers q - z
//     (int4_diff: one lop3 and one fma per pair) and its float sum is multiplied by s, one FMA
//     per accumulator: the weight is (q - z) * s exactly, as kilnc ref computes it (quant.h),
//     and a pair costs one fma less than in the general path;
//   - otherwise (G = 32 or 64, a whole row of another size): the chain's 128 elements span
//     several groups, so each pair is scaled before the mma: the weight is DT((q - z) * s), one
//     rounding (int4x8; dequant_int4 gives the same bits).
// Preconditions: K % 32 == 0, G % 32 == 0, K % G == 0 (G == K: one group per row); x, w
// 16-byte aligned, sz 8-byte aligned. Launch rule: gemv's, with at most 8 warps (THREADS <= 256:
// lower_gemv_threads), whose 32 KB of weight buffers and the split-K partials fit the 48 KB of
// static shared memory.
template <typename DT, int N, int K, int MMAX, bool BIAS, bool GATED, int ACT, bool OUT_F32,
          int THREADS, int G>
__device__ __forceinline__ void gemv_int4(const kiln_step st, const DT *x, const unsigned char *w,
                                          const uint2 *sz, const DT *bias, void *y, int M)
{
    KILN_PDL_ENTER();
    static_assert(K % 32 == 0, "gemv_int4: K must be a multiple of 32");
    static_assert(G > 0 && G % 32 == 0 && K % G == 0,
                  "gemv_int4: G must be a multiple of 32 that divides K");
    (void)st;
    using S = gemv_detail::shape<N, GATED, MMAX, THREADS>;
    using P = gemv_detail::int4_pairs<DT>;
    constexpr int NT = S::NT, WARPS = S::WARPS;
    static_assert(WARPS <= 8, "gemv_int4: at most 8 warps (4 KB of shared memory a warp)");
    constexpr int KG = K / G;                // groups per row
    constexpr bool FACTORED = G % 128 == 0; // a chain's 128 elements in one group
    constexpr int U = 4;                     // 128-element groups per step
    constexpr int KC = K / 32;               // 16-byte chunks per row
    constexpr int STEPS = (KC + 4 * U - 1) / (4 * U);
    const long long tile = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32, g = lane >> 2, t = lane & 3;
    long long row0;
    const DT *xr[NT]; // x row 8j+g, at the lane's first chunk
    float acc[NT][4];
    if (!gemv_detail::row_group<DT, K, MMAX>(x, M, row0, g, 32 * t, xr, acc))
        return;
    __builtin_assume(M >= 1); // column tile 0 always has a row: its loads and mma take no branch

    long long ra, rb;
    gemv_detail::tile_rows<N, GATED>(tile, g, ra, rb);
    const unsigned char *wa = w + ra * (K / 2) + 16 * t, *wb = w + rb * (K / 2) + 16 * t;
    const uint2 *sza = sz + ra * KG, *szb = sz + rb * KG;
    __shared__ uint4 wbuf[WARPS][U][2][32]; // the warps' weight chunks of a step: [u][row a, b][lane]
    // Step s covers chunks [16s, 16s + 16) of every row: group u is chunks 16s + 4u + 0..3 (128
    // elements), the lane's is 16s + 4u + t. In the last step of a K that ends inside it, a chunk
    // past K (c >= KC) copies the row's last chunk (valid memory) and its x is zeros, so its
    // products are zeros whatever its weight.
#pragma unroll 1
    for (int s = warp; s < STEPS; s += WARPS) {
        const int c0 = s * 4 * U;
        int off[U]; // the lane's chunk of group u, in chunks from its first
        int kg[U];  // its group
        bool in[U]; // that chunk is inside K
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int c = c0 + 4 * u + t;
            in[u] = KC % (4 * U) == 0 || c < KC;
            off[u] = (in[u] ? c : KC - 1) - t;
            kg[u] = (off[u] + t) * 32 / G;
            cp_async16(&wbuf[warp][u][0][lane], wa + off[u] * 16);
            cp_async16(&wbuf[warp][u][1][lane], wb + off[u] * 16);
            if (u == 0 || !FACTORED) { // factored: the step's four sz of a row share a sector
                gemv_detail::prefetch_l1(sza + kg[u]);
                gemv_detail::prefetch_l1(szb + kg[u]);
            }
#pragma unroll
            for (int j = 0; j < NT; j++)
                if (8 * j < M)
                    gemv_detail::prefetch_l1(xr[j] + off[u] * 32);
        }
        cp_async_wait_all();
#pragma unroll
        for (int u = 0; u < U; u++) {
            const uint2 sa = sza[kg[u]], sb = szb[kg[u]];
            const uint4 va = wbuf[warp][u][0][lane], vb = wbuf[warp][u][1][lane];
            const unsigned qa[4] = {va.x, va.y, va.z, va.w};
            const unsigned qb[4] = {vb.x, vb.y, vb.z, vb.w};
            float d[NT][4];
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int i = 0; i < 4; i++)
                    d[j][i] = 0.f;
#pragma unroll
            for (int h = 0; h < 4; h++) {
                uint4 vx[NT]; // x of chunk h (elements 8h..8h+7 of the lane's 32), each column tile
#pragma unroll
                for (int j = 0; j < NT; j++)
                    vx[j] = in[u] && 8 * j < M ? *reinterpret_cast<const uint4 *>(
                                                     xr[j] + off[u] * 32 + 8 * h)
                                               : make_uint4(0u, 0u, 0u, 0u);
                gemv_detail::mma_group<DT, NT>(
                    d, FACTORED ? gemv_detail::int4_diff<DT>(qa[h], sa.y)
                                : gemv_detail::int4x8<DT>(qa[h], sa),
                    FACTORED ? gemv_detail::int4_diff<DT>(qb[h], sb.y)
                             : gemv_detail::int4x8<DT>(qb[h], sb),
                    vx, M);
            }
            // the chain's sum times s (factored), or as it is (times 1: the fma is the add)
            const float fa = FACTORED ? P::lo_f(sa.x) : 1.f;
            const float fb = FACTORED ? P::lo_f(sb.x) : 1.f;
#pragma unroll
            for (int j = 0; j < NT; j++) {
                acc[j][0] = fmaf(d[j][0], fa, acc[j][0]);
                acc[j][1] = fmaf(d[j][1], fa, acc[j][1]);
                acc[j][2] = fmaf(d[j][2], fb, acc[j][2]);
                acc[j][3] = fmaf(d[j][3], fb, acc[j][3]);
            }
        }
    }
    gemv_detail::finish<DT, N, MMAX, BIAS, GATED, ACT, OUT_F32, THREADS>(acc, nullptr, bias, y,
                                                                        row0, tile, M);
}

// gemm_skinny_int4 — gemm_skinny's job on gemv_int4's weight: y[m, n] = x[m] · w[n] (+ bias[n])
// for decode steps of more rows than the GEMV takes, in row groups of MMAX (KILN_SKINNY_MAX), the
// weight read once a group (the GEMV's groups of 8 or 16 rows would read and convert each tile
// once each). Every build's INT4 linears but --batch-invariant's take it for decode steps of more
// than 8 rows, and for prefill steps of 9 to 64 (longer ones dequantise for a library GEMM).
// Layouts and preconditions on w, sz and G are gemv_int4's; x, bias, y gemm_skinny's. Design:
//   - gemv_int4's mma: the weight is the A operand (a tile of 16 rows, or 8 gate rows and their
//     8 up rows) and x the B operand (column tiles of 8 rows of x), with the same permutation of
//     K: in each 32-element chunk of a slice, lane (g, t) takes elements 32t + 8h .. 32t + 8h + 7
//     of weight rows g and g + 8 (word h of its 16-byte chunk, converted in registers by
//     int4_diff or int4x8) and of x row 8j + g, for h = 0..3; a tile's chain is the slice's 128
//     elements, 8 mma, as gemv_int4's is (FACTORED when G % 128 == 0: the chain on q - z, its
//     float sum times s; otherwise each pair scaled before the mma);
//   - a warp owns RT = KILN_SKINNY4_RT consecutive tiles (a unit), so each x fragment it reads
//     from shared memory feeds RT tiles: an INT4 weight streams 2 elements a byte where
//     gemm_skinny's streams half of one, and x's reads from shared memory would otherwise be the
//     limit;
//   - gemm_skinny's ring and split-K: WARPS units a block share the x slices; K in slices of
//     KILN_SKINNY_KC (128) elements through STAGES slices of dynamic shared memory (cp.async,
//     STAGES - 1 in flight, one barrier a slice), each holding the MMAX x rows (256 bytes each,
//     16-byte unit u of row r at unit u ^ (u & 8 ? 2 : 0) ^ (r & 1): the 8 lanes of a 16-byte load
//     phase, x rows r, r + 1 at units 4t + h, t = 0..3, fall in 8 distinct bank groups), the
//     warps' weight rows (64 bytes each: 4 lanes copy a row's two sectors) and their sz entries of
//     the slice (KILN_SKINNY4_SZS(G) a row); K split over SPLITS blocks whose partials the last
//     warp to arrive adds in part order (split_sum); x rows from M up to the last column tile
//     computed, weight chunks past K and their x are zeros; E column tiles, the fewest powers of
//     two that hold M;
//   - row groups: block (group, b, p) computes rows [group * MMAX, group * MMAX + MMAX) of x and
//     y as a launch of its own on those rows would (with its group's counters and partials); the
//     group is the fastest grid dimension, so the blocks that read one weight slice run side by
//     side and all but the first find it in L2.
// A row's result depends only on its own x row (an output is one mma column; the order of the
// sums is fixed by N, K, G, WARPS and SPLITS), never on M nor on its group.
// Launch rule: kernels/kiln_gemm.h (KILN_SKINNY4_*; WARPS, SPLITS, STAGES from lower.c's
// lower_skinny_shape). Preconditions: K % 32 == 0, G % 32 == 0, K % G == 0; MMAX a multiple of
// 16 up to KILN_SKINNY_MAX; 1 <= M rows, of which the grid's groups cover ceil(M / MMAX); x, w
// 16-byte aligned, sz 8-byte aligned; st unused.
template <typename DT, int N, int K, int MMAX, bool BIAS, bool GATED, int ACT, bool OUT_F32,
          int WARPS, int SPLITS, int STAGES, int G>
__device__ __forceinline__ void gemm_skinny_int4(const kiln_step st, const DT *x,
                                                 const unsigned char *w, const uint2 *sz,
                                                 const DT *bias, void *y, float *part,
                                                 unsigned *count, int M)
{
    KILN_PDL_ENTER();
    static_assert(K % 32 == 0, "gemm_skinny_int4: K must be a multiple of 32");
    static_assert(G > 0 && G % 32 == 0 && K % G == 0,
                  "gemm_skinny_int4: G must be a multiple of 32 that divides K");
    static_assert(MMAX % 16 == 0 && MMAX >= 16 && MMAX <= KILN_SKINNY_MAX,
                  "gemm_skinny_int4: MMAX is a multiple of 16 up to KILN_SKINNY_MAX");
    static_assert(WARPS >= 1 && WARPS <= 16 && SPLITS >= 1 && STAGES >= 2,
                  "gemm_skinny_int4: 1..16 warps, SPLITS >= 1, STAGES >= 2");
    static_assert(N >= 1 && (!GATED || N % 2 == 0), "gemm_skinny_int4: GATED needs an even N");
    static_assert(sizeof(DT) == 2, "gemm_skinny_int4: 16-bit DT");
    (void)st;
    using P = gemv_detail::int4_pairs<DT>;
    constexpr int NOUT = GATED ? N / 2 : N, OPB = GATED ? 8 : 16, NT = MMAX / 8;
    constexpr int TILES = (NOUT + OPB - 1) / OPB, RT = KILN_SKINNY4_RT;
    constexpr int UNITS = (TILES + RT - 1) / RT;
    constexpr int KC = KILN_SKINNY_KC, KG = K / G;
    constexpr bool FACTORED = G % 128 == 0; // a slice lies in one group
    constexpr int SZS = KILN_SKINNY4_SZS(G);
    constexpr int SLICES = (K + KC - 1) / KC;
    constexpr bool TAIL = K % KC != 0;   // the last slice ends inside it
    constexpr int XCH = K / 8, WCH = K / 32; // 16-byte chunks of an x row, of a weight row
    constexpr int THREADS = 32 * WARPS;
    constexpr int RSTEP = THREADS / 16;  // x rows between a thread's copies
    static_assert(KC == 128 && MMAX % RSTEP == 0, "gemm_skinny_int4: the threads copy whole "
                                                  "rows of an x slice, the same number each");
    constexpr int XSTAGE = MMAX * 256;            // bytes of one x slice
    constexpr int WROWS = WARPS * RT * 16;        // weight rows of a slice
    constexpr int WSTAGE = WROWS * 64;            // their bytes
    constexpr int ZSTAGE = WROWS * SZS * 8;       // their sz entries' bytes
    static_assert(KILN_SKINNY4_SMEM(MMAX, WARPS, STAGES, G) == STAGES * (XSTAGE + WSTAGE + ZSTAGE),
                  "gemm_skinny_int4: kiln_gemm.h's KILN_SKINNY4_SMEM is this ring");
    // the ring: STAGES x slices [MMAX][256 B], then STAGES weight slices [warp][RT * 16][64 B],
    // then STAGES sz slices [warp][RT * 16][SZS]
    extern __shared__ __align__(16) unsigned char skinny_smem[];
    const unsigned sbase = (unsigned)__cvta_generic_to_shared(skinny_smem);
    const unsigned wbase = sbase + STAGES * XSTAGE, zbase = wbase + STAGES * WSTAGE;

    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32, g = lane >> 2, t = lane & 3;
    // this block's row group (uniform over the block: no barrier is reached past M)
    const long long row0 = (long long)blockIdx.x * MMAX;
    if (M - row0 < 1)
        return;
    M = M - row0 > MMAX ? MMAX : (int)(M - row0);
    x += row0 * K;
    count += (long long)blockIdx.x * UNITS;
    if constexpr (SPLITS > 1)
        part += (long long)blockIdx.x * SPLITS * UNITS * (RT * NT * 128);
    const long long unit = (long long)blockIdx.y * WARPS + warp;
    const bool active = unit < UNITS; // warp-uniform: a unit past the end computes nothing
    const int p = blockIdx.z;
    const int s0 = (int)((long long)p * SLICES / SPLITS);
    const int s1 = (int)((long long)(p + 1) * SLICES / SPLITS);
    // The weight row behind staged row r (0..RT*16-1) of the warp: tile RT*unit + r/16, its row r
    // % 16 (gemv's row g = r % 8 of the tile's first half, or of its second), a valid row for
    // tiles past the end (their sums are not stored).
    auto wrow = [&](int r) {
        long long tl = active ? unit * RT + r / 16 : TILES - 1, ra, rb;
        if (tl > TILES - 1)
            tl = TILES - 1;
        gemv_detail::tile_rows<N, GATED>(tl, r % 8, ra, rb);
        return r % 16 < 8 ? ra : rb;
    };
    // copies: x as gemm_skinny's (16 threads a row, the thread's rows xr0 + k * RSTEP, all of the
    // parity of xr0: RSTEP is even), into the swizzled unit; the lane's weight rows (lane >> 2) +
    // 8c (c < 4), chunk lane & 3 of the slice; its sz row `lane` (SZS entries)
    const int xr0 = threadIdx.x / 16, xc = threadIdx.x % 16;
    const DT *xsrc = x + (long long)xr0 * K + 8 * xc;
    const unsigned xdst = sbase + (unsigned)(xr0 * 256 + 16 * (xc ^ (xc & 8 ? 2 : 0) ^ (xr0 & 1)));
    static_assert(RT * 16 == 32, "gemm_skinny_int4: a lane copies the sz of one staged row");
    const unsigned char *wsrc[4];
#pragma unroll
    for (int c = 0; c < 4; c++)
        wsrc[c] = w + wrow((lane >> 2) + 8 * c) * (K / 2) + 16 * (lane & 3);
    const uint2 *zsrc = sz + wrow(lane) * KG;
    const unsigned wdst = wbase + (unsigned)((warp * RT * 16 + (lane >> 2)) * 64 + 16 * (lane & 3));
    const unsigned zdst = zbase + (unsigned)((warp * RT * 16 + lane) * SZS * 8);
    // reads: the lane's x unit of chunk h in row 8j + g (+ j * 2048), its weight rows g, g + 8 of
    // tile i (+ i * 1024), their sz
    int xrd[4];
#pragma unroll
    for (int h = 0; h < 4; h++)
        xrd[h] = g * 256 + 16 * (4 * t + (h ^ (t & 2) ^ (g & 1)));
    const unsigned char *wrd =
        skinny_smem + STAGES * XSTAGE + (warp * RT * 16 + g) * 64 + 16 * t;
    const unsigned char *zrd =
        skinny_smem + STAGES * (XSTAGE + WSTAGE) + (warp * RT * 16 + g) * SZS * 8;

    // The rest at E column tiles of 8 rows, the fewest powers of two that hold M (or NT).
    auto run = [&](auto ntiles) {
        constexpr int E = decltype(ntiles)::value;
        // slice s into ring stage b, as one cp.async group of this thread (empty past s1)
        auto load = [&](int s, int b) {
            if (s < s1) {
                const bool xin = !TAIL || s * 16 + xc < XCH;
#pragma unroll
                for (int k = 0; k < MMAX / RSTEP; k++) {
                    const int r = xr0 + k * RSTEP;
                    const bool ok = xin && r < M;
                    if (r < 8 * E)
                        cp_async16(xdst + b * XSTAGE + k * RSTEP * 256,
                                   ok ? xsrc + (long long)k * RSTEP * K + (long long)s * KC : x,
                                   ok ? 16 : 0);
                }
                if (active) {
                    const bool ok = !TAIL || s * 4 + (lane & 3) < WCH;
#pragma unroll
                    for (int c = 0; c < 4; c++)
                        cp_async16(wdst + b * WSTAGE + c * 8 * 64,
                                   ok ? wsrc[c] + (long long)s * 64 : w, ok ? 16 : 0);
                    const int e0 = s * KC / G; // the slice's first group
#pragma unroll
                    for (int e = 0; e < SZS; e++) {
                        const bool zin = e0 + e < KG;
                        cp_async8(zdst + b * ZSTAGE + e * 8, zin ? zsrc + e0 + e : sz,
                                  zin ? 8 : 0);
                    }
                }
            }
            cp_async_commit();
        };

        float acc[RT][E][4];
        gemv_detail::zero_frags(acc);
        gemv_detail::ring_loop<STAGES>(s0, s1, load, [&](int s, int b) {
            if (active) {
                // the lane's chunk of 32 elements of each of its rows: words h = 0..3, and the
                // sz of its group (FACTORED: the slice's one)
                uint4 q[RT][2];
                uint2 z[RT][2];
                const int ze = FACTORED ? 0 : (s * KC + 32 * t) / G - s * KC / G;
#pragma unroll
                for (int i = 0; i < RT; i++)
#pragma unroll
                    for (int r = 0; r < 2; r++) {
                        q[i][r] = *reinterpret_cast<const uint4 *>(
                            wrd + b * WSTAGE + (i * 16 + 8 * r) * 64);
                        z[i][r] = *reinterpret_cast<const uint2 *>(
                            zrd + b * ZSTAGE + ((i * 16 + 8 * r) * SZS + ze) * 8);
                    }
                float d[RT][E][4];
                gemv_detail::zero_frags(d);
#pragma unroll
                for (int h = 0; h < 4; h++) {
                    uint4 a[RT][2]; // word h of each row as 4 DT pairs
#pragma unroll
                    for (int i = 0; i < RT; i++)
#pragma unroll
                        for (int r = 0; r < 2; r++) {
                            const unsigned qw = h == 0   ? q[i][r].x
                                                : h == 1 ? q[i][r].y
                                                : h == 2 ? q[i][r].z
                                                         : q[i][r].w;
                            a[i][r] = FACTORED ? gemv_detail::int4_diff<DT>(qw, z[i][r].y)
                                               : gemv_detail::int4x8<DT>(qw, z[i][r]);
                        }
#pragma unroll
                    for (int j = 0; j < E; j++) {
                        const uint4 xb = *reinterpret_cast<const uint4 *>(
                            skinny_smem + xrd[h] + b * XSTAGE + j * 2048);
#pragma unroll
                        for (int i = 0; i < RT; i++) {
                            gemv_detail::mma16816<DT>(d[i][j], a[i][0].x, a[i][1].x, a[i][0].y,
                                                      a[i][1].y, xb.x, xb.y);
                            gemv_detail::mma16816<DT>(d[i][j], a[i][0].z, a[i][1].z, a[i][0].w,
                                                      a[i][1].w, xb.z, xb.w);
                        }
                    }
                }
                // the chains' sums times s (FACTORED), or as they are
#pragma unroll
                for (int i = 0; i < RT; i++) {
                    const float fa = FACTORED ? P::lo_f(z[i][0].x) : 1.f;
                    const float fb = FACTORED ? P::lo_f(z[i][1].x) : 1.f;
#pragma unroll
                    for (int j = 0; j < E; j++) {
                        acc[i][j][0] = fmaf(d[i][j][0], fa, acc[i][j][0]);
                        acc[i][j][1] = fmaf(d[i][j][1], fa, acc[i][j][1]);
                        acc[i][j][2] = fmaf(d[i][j][2], fb, acc[i][j][2]);
                        acc[i][j][3] = fmaf(d[i][j][3], fb, acc[i][j][3]);
                    }
                }
            }
        });
        if (!active)
            return;
        // a partial unit: [RT][E of NT][4][32 lanes] floats
        if constexpr (SPLITS > 1)
            if (!gemv_detail::split_sum<SPLITS, UNITS, (long long)RT * NT * 128, RT * E * 4>(
                    &acc[0][0][0], part, count, unit, p))
                return;
        // the epilogue: gemv's tile layout (lane (g, t) holds rows g and g + 8 of the tile, x rows
        // 8j + 2t, 8j + 2t + 1)
#pragma unroll
        for (int i = 0; i < RT; i++)
            if (unit * RT + i < TILES)
                gemv_detail::store_tile<DT, N, E, BIAS, GATED, ACT, OUT_F32>(
                    acc[i], nullptr, bias, y, row0, unit * RT + i, M);
    };
    gemv_detail::by_tiles<NT>((M + 7) / 8, run);
}

// dequant_int4 — gemv_int4's weight (w [N, K/2] bytes and sz [N, K/G] in its layout) as a DT
// [N, K] matrix in natural order: out[n, k] = DT((q - z) * s), one rounding (gemv_detail::int4x8:
// bit for bit the values gemv_int4's general path multiplies; its factored path, G % 128 == 0,
// multiplies the exact (q - z) * s). For a GEMM of more rows than the GEMV takes, into scratch.
// dequant_units with 32-bit words as units, four a thread: each of a warp's loads reads 128
// consecutive bytes, each store writes 512.
// Launch rule: grid (ceil(N * K / 32 / THREADS)), block THREADS. Preconditions: gemv_int4's on K
// and G; w 4-byte and out 16-byte aligned.
template <typename DT, int N, int K, int G, int THREADS>
__device__ __forceinline__ void dequant_int4(const kiln_step st, const unsigned char *w,
                                             const uint2 *sz, DT *out)
{
    KILN_PDL_ENTER();
    static_assert(K % 32 == 0, "dequant_int4: K must be a multiple of 32");
    static_assert(G > 0 && G % 32 == 0 && K % G == 0,
                  "dequant_int4: G must be a multiple of 32 that divides K");
    static_assert(THREADS % 32 == 0 && THREADS >= 32 && THREADS <= 1024,
                  "dequant_int4: THREADS must be a multiple of 32, at most 1024");
    (void)st;
    dequant_units<4, THREADS, K>(
        (long long)N * (K / 8), reinterpret_cast<const unsigned *>(w),
        [&](long long n, int k) { return sz[n * (K / G) + k / G]; },
        [&](unsigned q, const uint2 &s, long long j) {
            reinterpret_cast<uint4 *>(out)[j] = gemv_detail::int4x8<DT>(q, s);
        });
}

// quant_fp8_rows — x [M, K] (rows of K elements) as e4m3 rows for the FP8 GEMM (cuBLASLt's,
// runtime/gemm.c: W8A8; fp8_rescale applies the two rows' scales after): scale[m] = amax / 448
// (1 for an all-zero row), q[m, k] = e4m3(x[m, k] / scale[m]) rounded to nearest, saturating, in
// gemv_fp8's byte order (k, k+2, k+1, k+3 in each group of four), the order of the weight's
// bytes: the GEMM's sum over K runs over the same permutation of both, so it is the plain sum.
// Launch rule: grid (M), block THREADS (a multiple of 32, at most 1024); K % 16 == 0; x, q 16-byte
// aligned. sm_89 or newer (cvt to e4m3).
template <typename DT, int K, int THREADS>
__device__ __forceinline__ void quant_fp8_rows(const kiln_step st, const DT *x, unsigned char *q,
                                               float *scale, int M)
{
    KILN_PDL_ENTER();
    static_assert(K % 16 == 0, "quant_fp8_rows: K must be a multiple of 16");
    (void)st;
    const long long m = blockIdx.x;
    if (m >= M)
        return;
    x += m * K;
    q += m * K;
    __shared__ float red[32];
    float amax = 0.f;
    for (int c = threadIdx.x; c < K / 8; c += THREADS) {
        float f[8];
        load8(x + 8 * c, f);
#pragma unroll
        for (int i = 0; i < 8; i++)
            amax = fmaxf(amax, fabsf(f[i]));
    }
    amax = block_max<THREADS>(amax, red);
    const float s = amax > 0.f ? amax / 448.f : 1.f;
    if (threadIdx.x == 0)
        scale[m] = s;
    for (int c = threadIdx.x; c < K / 8; c += THREADS) {
        float f[8];
        load8(x + 8 * c, f);
        unsigned w[2];
#pragma unroll
        for (int g = 0; g < 2; g++) {
            // bytes (k, k+2) from the low half, (k+1, k+3) from the high half; cvt puts its
            // first operand in the upper byte
            unsigned short lo, hi;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
            asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(lo)
                : "f"(f[4 * g + 2] / s), "f"(f[4 * g] / s));
            asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(hi)
                : "f"(f[4 * g + 3] / s), "f"(f[4 * g + 1] / s));
#else
            __trap(); // no e4m3 conversion before sm_89: lower.c never launches it there
            lo = hi = 0;
#endif
            w[g] = (unsigned)lo | (unsigned)hi << 16;
        }
        *reinterpret_cast<uint2 *>(q + 8 * c) = make_uint2(w[0], w[1]);
    }
}

// fp8_rescale — after the FP8 GEMM: d [T, N] (DD: bf16, or float where DT is f16, whose range the
// e4m3 products outgrow) is the plain product of x's e4m3 rows and the weight's; y[t, n] =
// d[t, n] * xs[t] * ws[n] (+ bias[n]), xs the rows' scales (quant_fp8_rows), ws the weight's. GATED:
// the weight rows are [gate (N/2); up (N/2)] and y[t, j] = act(gate_j) * up_j, NOUT = N / 2 (the
// act_mul of the unquantised path, folded in). Every product and sum in float, one rounding.
// Launch rule: grid (ceil(T * NOUT / (8 * THREADS))), block THREADS: 8 outputs a thread (NOUT % 8
// == 0).
template <typename DT, typename DD, int N, bool BIAS, bool GATED, int ACT, int THREADS>
__device__ __forceinline__ void fp8_rescale(const kiln_step st, const DD *d, const float *xs,
                                            const float *ws, const DT *bias, DT *y)
{
    KILN_PDL_ENTER();
    constexpr int NOUT = GATED ? N / 2 : N;
    static_assert(NOUT % 8 == 0, "fp8_rescale: NOUT must be a multiple of 8");
    const long long idx = ((long long)blockIdx.x * THREADS + threadIdx.x) * 8;
    if (idx >= (long long)st.T * NOUT)
        return;
    const long long t = idx / NOUT;
    const int j = (int)(idx % NOUT);
    const float sx = xs[t];
    float v[8];
#pragma unroll
    for (int i = 0; i < 8; i++) {
        float a = to_f(d[t * N + j + i]) * sx * ws[j + i];
        if (BIAS)
            a += to_f(bias[j + i]);
        if constexpr (GATED) {
            float u = to_f(d[t * N + NOUT + j + i]) * sx * ws[NOUT + j + i];
            if (BIAS)
                u += to_f(bias[NOUT + j + i]);
            a = act<ACT>(a) * u;
        }
        v[i] = a;
    }
    store8(y + idx, v);
}

} // namespace kiln
