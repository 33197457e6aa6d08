// gemm90.cuh — gemm.cuh's GEMM for Hopper (sm_90a): y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n])
// for 0 <= m < M, 0 <= n < N, w a PyTorch Linear weight [N, K] (row-major), on warpgroup MMA
// (wgmma.mma_async), which mma.sync cannot feed fast enough on an H100/H200 (gemm.cuh reaches
// ~0.37 of cuBLASLt there). Same contract as gemm.cuh (read its header: tails, batch invariance,
// numerics, preconditions); its own launch numbers in kernels/kiln_gemm.h (KILN_GEMM90_*).
// compiler/lower.c picks it when every target of the artifact is sm_90a (wgmma exists nowhere
// else: compiled for another target, the template fails with a static_assert, never silently).
//
// Design:
//   - a block computes a BM x BN tile of y, BM = 128 and BN = 256 or 128 (a function of N only,
//     KILN_GEMM90_BN(N): 256 where the grid has columns enough, 128 for N <= 4096, where 256
//     would leave most SMs idle at a few hundred rows: M = 512, N = 4096 makes 64 tiles of
//     128 x 256 for 132 SMs), with three warpgroups (384 threads): the first only loads (the
//     producer), the other two multiply, each 64 rows x BN columns: one wgmma m64nBNk16 per 16
//     elements of K, both operands read by the tensor cores from shared memory through matrix
//     descriptors, BN / 2 float accumulators a thread. 256 columns is the widest wgmma and makes
//     the shared-memory and L2 reads per MMA the fewest. One block an SM (193 KiB of shared
//     memory);
//   - K is streamed in slices of BK = 64 elements (128 bytes a row) through a ring of STAGES
//     slices (4 of 48 KiB for BN = 256, 6 of 32 KiB for 128: the same ~0.5 us of MMA in
//     flight). One producer thread fills a slice by TMA (cp.async.bulk.tensor.2d: an x box of BM
//     rows and a w box of BN rows, each 64 elements wide, from the tensor maps tx and tw that
//     the host makes: runtime/kcuda.c's kcuda_gemm90_maps), arming the slice's "full" mbarrier
//     with one arrive.expect_tx of the stage's bytes, which the copies count down as they land.
//     Rows past M or N and elements past K come back as zeros from the maps' bounds. The
//     consumers wait on "full", issue the slice's 4 wgmma as one group, and keep one group in
//     flight (wgmma.wait_group 1): when slice kt's group is issued, slice kt-1's has completed,
//     and one lane of each consumer warp arrives on slice kt-1's "empty" mbarrier (8
//     arrivals), which the producer waits on before it refills that stage. So the tensor cores
//     always have the next slice queued, and the loads run up to STAGES - 1 slices ahead. No
//     __syncthreads in the loop. (cp.async by a producer warpgroup, the first version, kept the
//     tensor pipe 44-58% busy against TMA's 69-83%: 0.61 of cuBLASLt on the 8B shapes against
//     0.84; tests/gpu/RESULTS.md, twenty-second session);
//   - persistent: one block an SM, block b taking tiles b, b + gridDim.x, ...; the
//     ring turns on across a block's tiles (its slices counted from its first tile), so the
//     next tile's first slices load while the consumers store the last one's outputs;
//   - shared layout, descriptors and accumulator fragments: kernels/wgmma.cuh's (a slice is a
//     K-major panel of BM or BN rows, as TMA's 128-byte swizzle writes it);
//   - blocks are mapped to tiles in groups of 8 tile rows, as gemm.cuh (L2 reuse of x and w).
// Batch invariance: one tile configuration for every (DT, N, K), never chosen by M, no split-K:
// every output is one chain of wgmma over K in the same order (slices 0, 1, ..., and the 4
// steps of 16 inside each), accumulating in place in the same registers, whatever M is and
// wherever the row falls in the tile. Zero rows past M only take part in their own outputs.
// Numerics: fp32 accumulation inside the tensor cores (never rounded to 16 bits), the bias
// added in float, one rounding to OT (the epilogue is gemm.cuh's).
//
// Launch rule (kernels/kiln_gemm.h): grid = (SM count, 1, 1) whatever M is (any grid computes
// the product; the engine's is the device's SM count: a grid rule's sm term), block =
// KILN_GEMM90_THREADS, dynamic shared memory KILN_GEMM90_SMEM(sizeof(DT), KILN_GEMM90_BN(N))
// (above 48 KiB: the launcher sets CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES); tx and tw
// by kcuda_gemm90_maps (x of M rows of K elements, ldx apart; w [N, K]; the boxes of this BN).
// The BN template argument defaults to KILN_GEMM90_BN(N); kiln-ktest instantiates both widths
// for every shape it tests. Preconditions (TMA's): x and w 16-byte aligned, ldx % 8 == 0; y
// aligned to two OT and ldy even.
//
// What it does not do: thread-block clusters (multicast of w; the one attempt, with
// cp.async-era barriers, measured 0.43), an epilogue overlapped with the next tile's MMA (both
// consumer warpgroups store at once), setmaxnreg (384 threads x 168 registers fit the register
// file), stores staged through shared memory (the epilogue writes pairs straight from the
// fragments).
#pragma once

#include "gemm.cuh"  // gemm_detail::bias_pair and store_pair; common.cuh, kiln_gemm.h
#include "wgmma.cuh" // wg::: descriptors, products, fences

namespace kiln {

// A CUtensorMap (cuda.h, which NVRTC does not see): 128 opaque bytes, 64-byte aligned, made on
// the host by kcuda_gemm90_maps (runtime/kcuda.c) and passed by value as a __grid_constant__
// kernel parameter.
struct alignas(64) tmap {
    unsigned long long opaque[16];
};

namespace gemm90_detail {

constexpr int BM = KILN_GEMM90_BM, BK = KILN_GEMM90_BK, THREADS = KILN_GEMM90_THREADS;
constexpr int GROUP = 8; // tile rows per group of the block-to-tile map

static_assert(THREADS == 384 && BM == 128,
              "gemm90: a producer warpgroup and two consumer warpgroups of 64 rows (wgmma m64)");
static_assert(BK == 64, "gemm90: slice rows of 128 bytes (the 128-byte swizzle, 16-bit DT)");
constexpr unsigned TILE_A = BM * BK * 2; // bytes of one x slice
static_assert(TILE_A % 1024 == 0, "gemm90: every operand tile starts on a 1024-byte atom");

template <typename T> constexpr bool have_wgmma = wg::HAVE; // dependent: checked when used

// mbarriers beyond common.cuh's mbar_init and mbar_wait (shared::cta addresses).
__device__ __forceinline__ void bar_arrive(unsigned bar)
{
    asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(bar)
                 : "memory");
}
// The producer's one arrival on a full barrier, which also expects `bytes` more bytes of the
// phase (the TMA loads' complete_tx count them down; some may land before it: the phase cannot
// complete while this arrival is pending).
__device__ __forceinline__ void bar_expect_tx(unsigned bar, unsigned bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar),
                 "r"(bytes)
                 : "memory");
}

// TMA: the box of map `m` at (element c0 of a row, row c1) into shared memory at `dst` (the
// 128-byte swizzle the map was made with), complete_tx on `bar`; elements outside the tensor are
// zeros and count as bytes. The map is a __grid_constant__ kernel parameter, so its generic
// address is in the parameter space, where TMA may read it.
__device__ __forceinline__ void tma_load(unsigned dst, const tmap &m, int c0, int c1, unsigned bar)
{
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
                 "l"((unsigned long long)&m), "r"(c0), "r"(c1), "r"(bar)
                 : "memory");
}

// Tile `tile` of ntm tile rows by NTN tile columns -> its first row and column: tiles are
// numbered in groups of GROUP tile rows, column by column inside a group, so the blocks working at
// one time share their x rows and w columns in L2 (gemm.cuh's map).
template <int BN, int NTN>
__device__ __forceinline__ void tile_origin(int tile, int ntm, int &m0, int &n0)
{
    const int per_group = GROUP * NTN, first = tile / per_group * GROUP;
    const int rows = ntm - first < GROUP ? ntm - first : GROUP;
    m0 = (first + tile % per_group % rows) * BM;
    n0 = tile % per_group / rows * BN;
}

// A consumer warpgroup's products of the it-th slice of its ring (stage s = it % STAGES, which
// starts at base + s * stage_bytes: A at a_off and B at b_off in it, K-major panels of BK
// elements):
// it waits for the stage's full barrier, issues the slice's BK / 16 wgmma as one group and waits
// until the previous group has completed, whose stage lane 0 then releases (empty barrier: one
// arrival a consumer warp) where `release` says the previous slice is this chain's; the last
// slice's stage is released by consume_end.
template <typename DT, int STAGES, int R>
__device__ __forceinline__ void consume_slice(float (&acc)[R][4], unsigned base,
                                              unsigned stage_bytes, unsigned bars, unsigned it,
                                              unsigned a_off, unsigned b_off, bool release,
                                              int lane)
{
    const unsigned s = it % STAGES;
    mbar_wait(bars + 8 * s, it / STAGES & 1);
    __syncwarp(); // the lanes left the wait loop apart: converged for the .aligned wgmma
    const unsigned a = base + s * stage_bytes + a_off, b = base + s * stage_bytes + b_off;
    wg::fence_regs(acc);
    wg::fence();
#pragma unroll
    for (int kk = 0; kk < BK / 16; kk++)
        wg::mma(acc, wg::desc_k(a + 32 * kk), wg::desc_k(b + 32 * kk), 1, DT());
    wg::commit();
    wg::wait<1>(); // slice it-1's group has completed: its stage may be refilled
    wg::fence_regs(acc);
    if (release && lane == 0)
        bar_arrive(bars + 8 * (STAGES + (it - 1) % STAGES));
}

// After a chain's last slice (it - 1): its products complete, then lane 0 releases its stage.
template <int STAGES, int R>
__device__ __forceinline__ void consume_end(float (&acc)[R][4], unsigned bars, unsigned it,
                                            int lane)
{
    wg::wait<0>();
    wg::fence_regs(acc);
    if (lane == 0)
        bar_arrive(bars + 8 * (STAGES + (it - 1) % STAGES));
}

} // namespace gemm90_detail

template <typename DT, typename OT, int N, int K, int BIAS, int BN = KILN_GEMM90_BN(N)>
__device__ __forceinline__ void gemm90(int M, const tmap &tx, const tmap &tw, const DT *bias,
                                       OT *y, long long ldy)
{
    KILN_PDL_ENTER();
    using namespace gemm90_detail;
    static_assert(have_wgmma<DT>, "gemm90: wgmma needs sm_90a; compiler/lower.c uses this kernel "
                                  "only when every target is sm_90a (kilnc compile --sm 90a)");
    static_assert(sizeof(DT) == 2, "gemm90: DT is bf16 or f16");
    static_assert(N >= 1, "gemm90: N >= 1");
    static_assert(K >= 8 && K % 8 == 0, "gemm90: K must be a multiple of 8 (16-byte chunks)");
    static_assert(BN == 128 || BN == 256, "gemm90: tiles of 128 or 256 columns (wgmma n)");
    constexpr int STAGES = KILN_GEMM90_STAGES(BN);
    constexpr unsigned STAGE = (BM + BN) * BK * 2; // bytes of one stage (x, then w)
    static_assert(STAGE % 1024 == 0, "gemm90: every stage starts on a 1024-byte atom");
    static_assert(STAGES * STAGE + 1024 + 2 * STAGES * 8 == KILN_GEMM90_SMEM(sizeof(DT), BN),
                  "gemm90: kiln_gemm.h's SMEM");
    constexpr int KT = (K + BK - 1) / BK; // slices of K

    // Tiles: ntm tile rows of BM by NTN tile columns of BN, numbered in groups of GROUP tile
    // rows (gemm.cuh's map); block b takes tiles b, b + gridDim.x, b + 2 gridDim.x, ...
    constexpr int NTN = (N + BN - 1) / BN;
    const int ntm = (M + BM - 1) / BM, ntiles = NTN * ntm;
    if ((int)blockIdx.x >= ntiles)
        return; // uniform over the block: no barrier is reached

    // Stages from the first 1024-byte boundary; then the mbarriers: full[s] at bars + 8s,
    // empty[s] at bars + 8 (STAGES + s).
    extern __shared__ unsigned char kiln_gemm90_smem[];
    const unsigned base = ((unsigned)__cvta_generic_to_shared(kiln_gemm90_smem) + 1023u) & ~1023u;
    const unsigned bars = base + STAGES * STAGE;
    const int tid = threadIdx.x, wg = tid >> 7;
    if (tid == 0) {
        for (int s = 0; s < STAGES; s++) {
            mbar_init(bars + 8 * s, 1);            // full: the producer's arrival, then the bytes
            mbar_init(bars + 8 * (STAGES + s), 8); // empty: each consumer warp done reading
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    // The ring turns across the block's tiles: its it-th slice (counting from the block's first
    // tile) goes to stage it % STAGES, in the barriers' phase it / STAGES.
    if (wg == 0) {
        // Producer: one thread. A slice goes to its stage once the consumers have released the
        // slice that was there (it - STAGES): empty's phase it / STAGES - 1; it arms the stage's
        // full barrier with the stage's bytes and loads the x box (BM rows) and the w box (BN
        // rows) by TMA. So the next tile's first slices load while the consumers store the last
        // one's outputs. Zeros past M, N and K come from the maps' bounds.
        if (tid != 0)
            return;
        unsigned it = 0;
#pragma unroll 1
        for (int tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
            int m0, n0;
            gemm90_detail::tile_origin<BN, NTN>(tile, ntm, m0, n0);
#pragma unroll 1
            for (int kt = 0; kt < KT; kt++, it++) {
                const int s = it % STAGES;
                const unsigned full = bars + 8 * s, a = base + s * STAGE;
                mbar_wait(bars + 8 * (STAGES + s), (it / STAGES & 1) ^ 1);
                bar_expect_tx(full, STAGE);
                tma_load(a, tx, kt * BK, m0, full);
                tma_load(a + TILE_A, tw, kt * BK, n0, full);
            }
        }
        return;
    }

    // Consumers: warpgroup cw multiplies rows 64cw..64cw+63 of the tile by all BN columns.
    const int cw = wg - 1, lane = tid & 31, q = (tid >> 5) & 3;
    const int g = lane >> 2, t = lane & 3;
    float acc[BN / 8][4];
    unsigned it = 0;
#pragma unroll 1
    for (int tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
        int m0, n0;
        gemm90_detail::tile_origin<BN, NTN>(tile, ntm, m0, n0);
#pragma unroll
        for (int j = 0; j < BN / 8; j++)
            acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
#pragma unroll 1
        for (int kt = 0; kt < KT; kt++, it++)
            consume_slice<DT, STAGES>(acc, base, STAGE, bars, it, cw * 64 * 128, TILE_A, kt > 0,
                                      lane);
        consume_end<STAGES>(acc, bars, it, lane); // the producer may refill the last slice's stage

        // Epilogue (gemm.cuh's): lane (g, t) of warp q holds acc[j][2h + e] at row
        // 64cw + 16q + 8h + g, column 8j + 2t + e of the tile.
        const int mr = m0 + 64 * cw + 16 * q + g;
#pragma unroll
        for (int j = 0; j < BN / 8; j++) {
            const int n = n0 + 8 * j + 2 * t;
            if (n >= N)
                continue;
            float b0, b1;
            gemm_detail::bias_pair<BIAS>(bias, n, N, b0, b1);
#pragma unroll
            for (int h = 0; h < 2; h++)
                if (mr + 8 * h < M)
                    gemm_detail::store_pair(y, ldy, mr + 8 * h, n, N, acc[j][2 * h] + b0,
                                            acc[j][2 * h + 1] + b1);
        }
    }
}

// gemm90_skinny — gemm_skinny's product (templates/gemv.cuh: y[m, n] = x[m] · w[n] (+ bias[n]),
// GATED: act(gate) * up; its layouts, numerics contract and arguments but st, with x and w as
// TMA maps) on Hopper's wgmma, for the decode steps of 9 to KILN_SKINNY_MAX rows, where a product
// is bound by the bytes of its weight, which it streams once. Launch rule and constants:
// kernels/kiln_gemm.h (KILN_SKINNY90_*). Design:
//   - a block is one consumer warpgroup (warps 0-3) and a producer warp (warp 4, one thread of
//     which loads); it owns a tile of 128 weight rows (GATED: 64 gate rows and their 64 up rows,
//     64 outputs) and part p of the K slices, [p * KT / SPLITS, (p + 1) * KT / SPLITS);
//   - a slice (BK = 64 elements of K) is three TMA boxes in one stage of the ring: the step's x
//     rows (a box of KILN_SKINNY_MAX rows: zeros past M come from the map's bounds) and two boxes
//     of 64 weight rows, which together are one 128-row K-major panel; STAGES slices in flight,
//     full/empty mbarriers as in gemm90;
//   - the products: wgmma m64n128k16, A = the x rows (the m64 side: the step's tokens), B = the
//     weight panel: D[token][weight row], so for GATED a lane holds a gate sum (columns 0-63) and
//     its up sum (column + 64) in acc[j] and acc[j + 8]; float accumulation in the tensor cores
//     over the block's slices, in slice order;
//   - split-K: each consumer warp is a unit (tile * 4 + warp: its 16 token rows), whose partial
//     goes through gemv_detail::split_sum (the last-arriving part adds the SPLITS partials in
//     part order: the result does not depend on scheduling); a warp whose rows are all past M
//     takes no part in it. Then gemv_detail::store_out writes each output (bias, act, one
//     rounding);
//   - two blocks an SM (~97 KiB each), so one block's ramp and epilogue overlap the other's
//     stream, and the hardware hands the blocks to the SMs as they free up;
//   - PDL: the kernel lets its dependent launch first, and the producer requests the first
//     STAGES slices' weight boxes before griddepcontrol.wait (gemv_stream's rule, kernels/
//     common.cuh), so a block resident early streams weights while the kernel before it ends;
//     the x boxes, and everything the consumers do, wait.
// A row's result depends only on its own x row: rows are the m side of every product, summed in
// the same order whatever M is.
// Measured and not kept (tests/gpu/RESULTS.md, twenty-seventh session): a persistent grid of one
// block an SM with a fixed share of the units each and the first weight boxes loaded before
// griddepcontrol.wait read the weights faster in kiln-ktest's benchmark (0.88 of cuBLASLt at 64
// rows against this kernel's 0.71) but ran decode steps of 16 rows 12% slower: in a step a block
// that starts late (its SM still busy with the kernel before) delays a fixed share.
template <typename DT, int N, int K, bool BIAS, bool GATED, int ACT, bool OUT_F32, int SPLITS>
__device__ __forceinline__ void gemm90_skinny(int M, const tmap &tx, const tmap &tw,
                                              const DT *bias, void *y, float *part,
                                              unsigned *count)
{
    KILN_PDL_TRIGGER();
    using namespace gemm90_detail;
    static_assert(have_wgmma<DT>, "gemm90_skinny: wgmma needs sm_90a; compiler/lower.c uses it "
                                  "only when every target is sm_90a");
    static_assert(sizeof(DT) == 2, "gemm90_skinny: DT is bf16 or f16");
    static_assert(K >= 8 && K % 8 == 0, "gemm90_skinny: K must be a multiple of 8");
    static_assert(N >= 1 && (!GATED || N % 2 == 0), "gemm90_skinny: GATED needs an even N");
    constexpr int ROWS = KILN_SKINNY90_ROWS, STAGES = KILN_SKINNY90_STAGES;
    constexpr int MMAX = KILN_SKINNY_MAX, NOUT = GATED ? N / 2 : N;
    constexpr int TILES = KILN_SKINNY90_TILES(N, GATED), KT = (K + BK - 1) / BK;
    static_assert(ROWS == 128 && MMAX == 64 && KILN_SKINNY90_THREADS == 160,
                  "gemm90_skinny: one warpgroup of m64n128 products and a producer warp");
    static_assert(SPLITS >= 1 && SPLITS <= KT, "gemm90_skinny: 1..KT parts of K");
    constexpr unsigned XB = MMAX * BK * 2, WB = ROWS / 2 * BK * 2, STAGE = XB + 2 * WB;
    static_assert(XB % 1024 == 0 && WB % 1024 == 0, "gemm90_skinny: 1024-byte atoms");
    static_assert(STAGES * STAGE + 1024 + 2 * STAGES * 8 == KILN_SKINNY90_SMEM,
                  "gemm90_skinny: kiln_gemm.h's SMEM");

    const int tile = blockIdx.x, p = blockIdx.y;
    const int k0 = p * KT / SPLITS, k1 = (p + 1) * KT / SPLITS;
    extern __shared__ unsigned char kiln_skinny90_smem[];
    const unsigned base = ((unsigned)__cvta_generic_to_shared(kiln_skinny90_smem) + 1023u) & ~1023u;
    const unsigned bars = base + STAGES * STAGE; // full[s] at bars + 8s, empty[s] + 8 STAGES
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    if (tid == 0) {
        for (int s = 0; s < STAGES; s++) {
            mbar_init(bars + 8 * s, 1);
            mbar_init(bars + 8 * (STAGES + s), 4); // each consumer warp done reading
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (warp == 4) {
        // Producer: slice it of the part into stage it % STAGES once the consumers have released
        // slice it - STAGES. Weight rows: GATED, gate rows 64 tile.. and their up rows; else
        // rows 128 tile.. in two boxes.
        if (lane != 0)
            return;
        const int ra = GATED ? tile * (ROWS / 2) : tile * ROWS;
        const int rb = GATED ? NOUT + ra : ra + ROWS / 2;
        // the first STAGES slices' weight boxes before griddepcontrol.wait (weights only: no
        // kernel writes them), their x boxes after it; each stage armed once for all three
        const int pre = min(STAGES, k1 - k0);
        for (int it = 0; it < pre; it++) {
            const unsigned full = bars + 8 * it, a = base + it * STAGE;
            bar_expect_tx(full, STAGE);
            tma_load(a + XB, tw, (k0 + it) * BK, ra, full);
            tma_load(a + XB + WB, tw, (k0 + it) * BK, rb, full);
        }
        KILN_PDL_WAIT();
        for (int it = 0; it < pre; it++)
            tma_load(base + it * STAGE, tx, (k0 + it) * BK, 0, bars + 8 * it);
#pragma unroll 1
        for (int kt = k0 + pre; kt < k1; kt++) {
            const int it = kt - k0, s = it % STAGES;
            const unsigned full = bars + 8 * s, a = base + s * STAGE;
            mbar_wait(bars + 8 * (STAGES + s), (it / STAGES & 1) ^ 1);
            bar_expect_tx(full, STAGE);
            tma_load(a, tx, kt * BK, 0, full);
            tma_load(a + XB, tw, kt * BK, ra, full);
            tma_load(a + XB + WB, tw, kt * BK, rb, full);
        }
        return;
    }

    // Consumers: warp q holds token rows 16q..16q+15 (wgmma.cuh's accumulator layout).
    KILN_PDL_WAIT();
    float acc[ROWS / 8][4];
#pragma unroll
    for (int j = 0; j < ROWS / 8; j++)
        acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
#pragma unroll 1
    for (int kt = k0; kt < k1; kt++)
        consume_slice<DT, STAGES>(acc, base, STAGE, bars, (unsigned)(kt - k0), 0, XB, kt > k0,
                                  lane);
    consume_end<STAGES>(acc, bars, (unsigned)(k1 - k0), lane);

    if (16 * warp >= M)
        return; // no row of this warp is real (the same in every part: M is the launch's)
    if constexpr (SPLITS > 1)
        if (!gemv_detail::split_sum<SPLITS, TILES * 4, 32 * 4 * ROWS / 8, 4 * ROWS / 8>(
                &acc[0][0], part, count, (long long)tile * 4 + warp, p))
            return;
    // lane (g, t) holds acc[j][2h + e] at token 16 warp + 8h + g, tile column 8j + 2t + e
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int m = 16 * warp + 8 * h + g;
        if (m >= M)
            continue;
#pragma unroll
        for (int j = 0; j < (GATED ? ROWS / 16 : ROWS / 8); j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int c = 8 * j + 2 * t + e;
                const long long o = (long long)tile * (GATED ? ROWS / 2 : ROWS) + c;
                if (o < NOUT)
                    gemv_detail::store_out<DT, N, BIAS, GATED, ACT, OUT_F32>(
                        y, bias, nullptr, m, o, acc[j][2 * h + e],
                        GATED ? acc[j + ROWS / 16][2 * h + e] : 0.f);
            }
    }
}

} // namespace kiln
