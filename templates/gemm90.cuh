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
//     producer; one thread of it issues the loads), the other two multiply, each 64 rows x BN
//     columns: one wgmma m64nBNk16 per 16 elements of K, both operands read by the tensor cores
//     from shared memory through matrix descriptors, BN / 2 float accumulators a thread. 256
//     columns is the widest wgmma and makes the shared-memory and L2 reads per MMA the fewest.
//     One block an SM (193 KiB of shared memory);
//   - clusters of two CTAs (__cluster_dims__(2, 1, 1) on the wrapper; KILN_GEMM90_CLUSTER): the
//     two compute the same BN columns for two consecutive tile rows, so they need the same w
//     tile. Each loads its own x tile and half of the w tile (BN / 2 rows), which TMA multicast
//     writes into the shared memory of both: per CTA and slice, (BM + BN / 2) rows come from L2
//     instead of BM + BN (256 instead of 384 rows at BN = 256);
//   - K is streamed in slices of BK = 64 elements (128 bytes a row) through a ring of STAGES
//     slices (4 of 48 KiB for BN = 256, 6 of 32 KiB for 128: the same ~0.5 us of MMA in
//     flight), loaded by TMA (cp.async.bulk.tensor.2d) from the tensor maps tx (x: M rows of K,
//     ldx apart, boxes of 128 rows) and tw (w: N rows of K, boxes of BN / 2 rows), both boxes
//     64 elements wide and 128-byte swizzled, made on the host (runtime/kcuda.h:
//     kcuda_gemm90_maps, by the runtime at each launch and by kiln-ktest alike). Elements past
//     M, N or K read as zeros: the tails in all three dimensions cost nothing in the kernel
//     (K % 8 == 0 only for the maps' 16-byte row pitch). A box wholly past M or N (the second
//     CTA's rows past M; a w half past N) is loaded from row 0 instead: its results are never
//     stored;
//   - the protocol (per stage s, both CTAs alike; the barriers are at the same offsets in both):
//     full[s] (count 1): the CTA's producer arrives once with expect_tx(STAGE bytes: its x tile
//     and both w halves), then loads its x box (complete_tx on its own full[s]) and its w half
//     multicast to both CTAs (complete_tx on full[s] of each): the phase completes when the
//     producer has arrived and all STAGE bytes have landed, whichever CTA's copy lands first
//     (a complete_tx before the expect_tx cannot complete the phase: the arrival is pending).
//     The consumers wait on it, issue the slice's 4 wgmma as one group and keep one group in
//     flight (wgmma.wait_group 1): when slice kt's group is issued, slice kt-1's has completed,
//     and one lane of each consumer warp arrives on empty[(kt-1) % STAGES] of both CTAs (mapa +
//     remote mbarrier.arrive.release.cluster). empty[s] (count 16: 8 consumer warps x 2 CTAs):
//     the producer waits on its own empty[s] before it refills s, because its loads write stage
//     s of both CTAs. Neither CTA can run a phase ahead: CTA A's producer refills s for slice
//     kt only after both CTAs' consumers released kt - STAGES, and B's consumers release a
//     slice only after B's full barrier saw A's half of it. Slice kt goes to stage kt % STAGES
//     and waits for empty's phase kt / STAGES - 1 (parity (kt / STAGES & 1) ^ 1: a fresh
//     barrier passes parity 1 at once). Barrier init is made visible to the other CTA
//     (fence.mbarrier_init.release.cluster, then a cluster barrier) before any load or remote
//     arrival, and every thread of both CTAs meets at a last cluster barrier before exiting, so
//     no remote arrival targets a CTA that has exited. No __syncthreads in the loop; TMA writes
//     and wgmma reads are both async proxy, ordered by the mbarrier (no proxy fence);
//   - shared layout: the 128-byte swizzle of wgmma and TMA: a slice is rows of 64 elements
//     (128 bytes), 16-byte chunk c of row r stored at chunk c ^ (r % 8), 8-row atoms of 1024
//     bytes starting on a 1024-byte boundary (the x tile, each w half and each stage start on
//     one). The descriptor: start address >> 4 (bits 0-13), leading byte offset 16 >> 4 (bits
//     16-29; unused for a swizzled K-major operand), stride byte offset 1024 >> 4 between 8-row
//     atoms (bits 32-45), base offset 0 (bits 49-51: the atoms are 1024-aligned), swizzle mode
//     1 = 128 bytes (bits 62-63). The k-th 16-element step inside the slice starts 32k bytes
//     further (the hardware applies the XOR to the address bits, as TMA does);
//   - accumulator fragment (wgmma's m64nNk16 f32 D): warp q of the warpgroup holds rows
//     16q..16q+15; lane (g = lane / 4, t = lane % 4) holds d[4j + 2h + e] at row 16q + 8h + g,
//     column 8j + 2t + e (j < N / 8, h, e in {0, 1}): mma.sync's m16n8 C fragment, N / 8 times;
//   - clusters are mapped to (pair of tile rows, column tile) in groups of 4 pairs (8 tile
//     rows), as gemm.cuh maps blocks (L2 reuse of x and w).
// Batch invariance: one tile and cluster configuration for every (DT, N, K), never chosen by M,
// no split-K: every output is one chain of wgmma over K in the same order (slices 0, 1, ...,
// and the 4 steps of 16 inside each), accumulating in place in the same registers, whatever M
// is and wherever the row falls in the tile. Rows past M (zeros, or row 0's copy in a CTA
// wholly past M) only take part in their own outputs, which are not stored.
// Numerics: fp32 accumulation inside the tensor cores (never rounded to 16 bits), the bias
// added in float, one rounding to OT (the epilogue is gemm.cuh's).
//
// Launch rule (kernels/kiln_gemm.h): the wrapper carries __cluster_dims__(KILN_GEMM90_CLUSTER,
// 1, 1); grid = (2 * ceil(N / KILN_GEMM90_BN(N)), ceil(M_launch / (2 * KILN_GEMM90_BM))) for any
// M_launch >= M (x: the two CTAs of a cluster side by side, then the column tiles; y: pairs of
// tile rows; a cluster whose first tile row is past M returns at once, both CTAs alike, before
// any barrier), block = KILN_GEMM90_THREADS, dynamic shared memory KILN_GEMM90_SMEM(sizeof(DT),
// KILN_GEMM90_BN(N)) (above 48 KiB: the launcher sets
// CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES); tx and tw: kcuda_gemm90_maps's, of the same
// BN, as `const __grid_constant__ kiln::tmap` parameters (their addresses are what TMA reads).
// The BN template argument defaults to KILN_GEMM90_BN(N); kiln-ktest instantiates both widths
// for every shape it tests. Preconditions: x and w 16-byte aligned, ldx % 8 == 0 (the maps'
// rules); y aligned to two OT and ldy even, as gemm.cuh.
//
// What it does not do: a persistent grid that would overlap one tile's epilogue with the next
// tile's MMA, setmaxnreg (the producer keeps the registers it does not need: 384 threads x 168
// registers fit the register file, and the consumers need ~154), stores staged through shared
// memory (the epilogue writes pairs straight from the fragments), tensor maps made once at
// load (the runtime encodes the two on the host at every launch: CPU work, no GPU call).
#pragma once

#include "gemm.cuh" // gemm_detail::store2; common.cuh, kiln_gemm.h

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
constexpr int CLUSTER = KILN_GEMM90_CLUSTER;
static_assert(CLUSTER == 2, "gemm90: clusters of two CTAs (the multicast mask 3, the empty "
                            "barriers' 16 arrivals, the map of pairs of tile rows)");

static_assert(THREADS == 384 && BM == 128,
              "gemm90: a producer warpgroup and two consumer warpgroups of 64 rows (wgmma m64)");
static_assert(BK == 64, "gemm90: slice rows of 128 bytes (the 128-byte swizzle, 16-bit DT)");
constexpr unsigned TILE_A = BM * BK * 2; // bytes of one x slice
static_assert(TILE_A % 1024 == 0, "gemm90: every operand tile starts on a 1024-byte atom");

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
constexpr bool HAVE_WGMMA = true;
#else
constexpr bool HAVE_WGMMA = false;
#endif
template <typename T> constexpr bool have_wgmma = HAVE_WGMMA; // dependent: checked when used

// wgmma's shared-memory matrix descriptor of a K-major, 128-byte-swizzled operand at `addr`.
__device__ __forceinline__ unsigned long long desc(unsigned addr)
{
    return (unsigned long long)((addr & 0x3FFFFu) >> 4) | 1ull << 16 | (1024ull >> 4) << 32 |
           1ull << 62;
}

// The cluster: this CTA's rank in it (0 or 1), and a barrier of every thread of both CTAs
// (release / acquire: shared-memory writes and mbarrier inits before it are visible to the
// other CTA after it). Not .aligned: the threads need not be converged.
__device__ __forceinline__ unsigned cluster_rank()
{
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
    return r;
}
__device__ __forceinline__ void cluster_sync()
{
    asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
}

// mbarriers (shared::cta addresses). wait: until the phase of parity `parity` has completed
// (a fresh barrier is in phase 0, so waiting on parity 1 passes at once); acquire at cluster
// scope, since the other CTA's consumers arrive on the empty barriers.
__device__ __forceinline__ void bar_init(unsigned bar, unsigned count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void bar_wait(unsigned bar, unsigned parity)
{
    unsigned done;
    do {
        asm volatile("{\n.reg .pred p;\n"
                     "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\n"
                     "selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(bar), "r"(parity)
                     : "memory");
    } while (!done);
}
// The producer's one arrival on a full barrier, which also expects `bytes` more bytes of the
// phase (the TMA loads' complete_tx, from this CTA and the other, count them down; some may
// land before this: the phase cannot complete while this arrival is pending).
__device__ __forceinline__ void bar_expect_tx(unsigned bar, unsigned bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar),
                 "r"(bytes)
                 : "memory");
}
// One arrival on the barrier at the same offset `bar` in the shared memory of cluster CTA
// `cta` (this one included): mapa gives its shared::cluster address.
__device__ __forceinline__ void bar_arrive_cluster(unsigned bar, unsigned cta)
{
    asm volatile("{\n.reg .b32 ra;\nmapa.shared::cluster.u32 ra, %0, %1;\n"
                 "mbarrier.arrive.release.cluster.shared::cluster.b64 _, [ra];\n}\n" ::"r"(bar),
                 "r"(cta)
                 : "memory");
}

// TMA. The address of a tensor map: a __grid_constant__ kernel parameter (kiln::tmap above),
// so a generic address of the parameter space, which is where TMA may read a map from.
__device__ __forceinline__ unsigned long long tmap_addr(const tmap &m)
{
    return (unsigned long long)&m;
}
// The box at (element c0 of a row, row c1) of map `map` into this CTA's shared memory at `dst`,
// complete_tx on this CTA's `bar`; out-of-bounds elements are zeros (and count as bytes).
__device__ __forceinline__ void tma_load(unsigned dst, unsigned long long map, int c0, int c1,
                                         unsigned bar)
{
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
                 "l"(map), "r"(c0), "r"(c1), "r"(bar)
                 : "memory");
}
// The same box into the shared memory of every CTA of the cluster in `mask` at the same offset
// `dst`, complete_tx on each one's barrier at offset `bar`.
__device__ __forceinline__ void tma_load_mc(unsigned dst, unsigned long long map, int c0, int c1,
                                            unsigned bar, unsigned short mask)
{
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 ".multicast::cluster [%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"(dst),
                 "l"(map), "r"(c0), "r"(c1), "r"(bar), "h"(mask)
                 : "memory");
}

// d (64 x NN floats of the warpgroup, the fragment at the top) += A (64 x 16) . B (NN x 16)^T,
// both K-major in shared memory; NN = 2 * the size of d. Scale-d is 1 (accumulate; d starts at
// zero), A and B unscaled and not transposed.
#define KILN_WGMMA_M64N256K16(TY)                                                                  \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"                                     \
                 "wgmma.mma_async.sync.aligned.m64n256k16.f32." TY "." TY " {"                     \
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, "               \
                 "%15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, "               \
                 "%28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, "               \
                 "%41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, "               \
                 "%54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, "               \
                 "%67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "               \
                 "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, "               \
                 "%93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, "               \
                 "%105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, "              \
                 "%116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, "              \
                 "%127"                                                                            \
                 "}, %128, %129, p, 1, 1, 0, 0;\n}\n"                                              \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]),                     \
                   "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]),                     \
                   "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),                \
                   "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),                \
                   "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),                \
                   "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),                \
                   "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),                \
                   "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),                \
                   "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]),                \
                   "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]),                \
                   "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]),                \
                   "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),                \
                   "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]),                \
                   "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]),                \
                   "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]),                \
                   "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),                \
                   "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]),                \
                   "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]),                \
                   "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]),                \
                   "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]),                \
                   "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]),           \
                   "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]),           \
                   "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]),           \
                   "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),           \
                   "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]),           \
                   "+f"(d[125]), "+f"(d[126]), "+f"(d[127])                                        \
                 : "l"(da), "l"(db), "r"(1))
#define KILN_WGMMA_M64N128K16(TY)                                                                  \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                      \
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " {"                     \
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, "               \
                 "%15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, "               \
                 "%28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, "               \
                 "%41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, "               \
                 "%54, %55, %56, %57, %58, %59, %60, %61, %62, %63"                                \
                 "}, %64, %65, p, 1, 1, 0, 0;\n}\n"                                                \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]),                     \
                   "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]),                     \
                   "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),                \
                   "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),                \
                   "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),                \
                   "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),                \
                   "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),                \
                   "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),                \
                   "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]),                \
                   "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]),                \
                   "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]),                \
                   "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),                \
                   "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])                              \
                 : "l"(da), "l"(db), "r"(1))

__device__ __forceinline__ void wgmma(float (&d)[128], unsigned long long da, unsigned long long db,
                                      bf16)
{
    KILN_WGMMA_M64N256K16("bf16");
}
__device__ __forceinline__ void wgmma(float (&d)[128], unsigned long long da, unsigned long long db,
                                      f16)
{
    KILN_WGMMA_M64N256K16("f16");
}
__device__ __forceinline__ void wgmma(float (&d)[64], unsigned long long da, unsigned long long db,
                                      bf16)
{
    KILN_WGMMA_M64N128K16("bf16");
}
__device__ __forceinline__ void wgmma(float (&d)[64], unsigned long long da, unsigned long long db,
                                      f16)
{
    KILN_WGMMA_M64N128K16("f16");
}
#undef KILN_WGMMA_M64N256K16
#undef KILN_WGMMA_M64N128K16

__device__ __forceinline__ void wg_fence()
{
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wg_commit()
{
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int PENDING>
__device__ __forceinline__ void wg_wait()
{
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(PENDING) : "memory");
}
// Keeps the compiler from moving accesses of the accumulators across the asynchronous wgmma
// (which read and write them without the compiler seeing when).
template <int R>
__device__ __forceinline__ void fence_acc(float (&d)[R])
{
#pragma unroll
    for (int i = 0; i < R; i++)
        asm volatile("" : "+f"(d[i])::"memory");
}

// Epilogue (gemm.cuh's): lane (g, t) of warp q holds acc[4j + 2h + e] at row r0 + 16q + 8h + g
// (r0: the warpgroup's first row), column 8j + 2t + e of the tile; rows >= M are not stored.
template <typename OT, int N, int BIAS, int BN, typename DT>
__device__ __forceinline__ void epilogue(const float (&acc)[BN / 2], int M, int r0, int n0,
                                         int lane, int q, const DT *bias, OT *y, long long ldy)
{
    const int g = lane >> 2, t = lane & 3;
    const int mr = r0 + 16 * q + g;
#pragma unroll
    for (int j = 0; j < BN / 8; j++) {
        const int n = n0 + 8 * j + 2 * t;
        if (n >= N)
            continue;
        const bool two = n + 1 < N;
        float b0 = 0.f, b1 = 0.f;
        if (BIAS) {
            b0 = to_f(bias[n]);
            b1 = two ? to_f(bias[n + 1]) : 0.f;
        }
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int m = mr + 8 * h;
            if (m >= M)
                continue;
            OT *p = y + (long long)m * ldy + n;
            const float v0 = acc[4 * j + 2 * h] + b0, v1 = acc[4 * j + 2 * h + 1] + b1;
            if (two && ((ldy | n) & 1) == 0)
                gemm_detail::store2(p, v0, v1);
            else {
                *p = from_f<OT>(v0);
                if (two)
                    p[1] = from_f<OT>(v1);
            }
        }
    }
}

} // namespace gemm90_detail

template <typename DT, typename OT, int N, int K, int BIAS, int BN = KILN_GEMM90_BN(N)>
__device__ __forceinline__ void gemm90(int M, const tmap &tx, const tmap &tw,
                                       const DT *bias, OT *y, long long ldy)
{
    KILN_PDL_ENTER();
    using namespace gemm90_detail;
    static_assert(have_wgmma<DT>, "gemm90: wgmma needs sm_90a; compiler/lower.c uses this kernel "
                                  "only when every target is sm_90a (kilnc compile --sm 90a)");
    static_assert(sizeof(DT) == 2, "gemm90: DT is bf16 or f16");
    static_assert(N >= 1, "gemm90: N >= 1");
    static_assert(K >= 8 && K % 8 == 0, "gemm90: K must be a multiple of 8 (16-byte rows)");
    static_assert(BN == 128 || BN == 256, "gemm90: tiles of 128 or 256 columns (wgmma n)");
    constexpr int STAGES = KILN_GEMM90_STAGES(BN);
    constexpr unsigned STAGE = (BM + BN) * BK * 2; // bytes of one stage (x, then w)
    constexpr unsigned HALF_B = BN / CLUSTER * BK * 2; // bytes of the w rows one CTA loads
    static_assert(STAGE % 1024 == 0 && HALF_B % 1024 == 0,
                  "gemm90: every stage and w half starts on a 1024-byte atom");
    static_assert(STAGES * STAGE + 1024 + 2 * STAGES * 8 == KILN_GEMM90_SMEM(sizeof(DT), BN),
                  "gemm90: kiln_gemm.h's SMEM");
    constexpr int KT = (K + BK - 1) / BK; // slices of K

    // Cluster -> pair of tile rows and column tile, in groups of GROUP / CLUSTER pairs
    // (gemm.cuh's map, over pairs): both CTAs of a cluster (blockIdx.x 2j and 2j + 1, cluster
    // ranks 0 and 1) get the same pair p and columns n0; CTA `rank` computes tile row 2p + rank.
    constexpr int GP = GROUP / CLUSTER;
    const unsigned rank = cluster_rank();
    const int ntn = gridDim.x / CLUSTER, ntp = gridDim.y;
    const int pid = blockIdx.y * ntn + blockIdx.x / CLUSTER, per_group = GP * ntn;
    const int first = pid / per_group * GP;
    const int prs = ntp - first < GP ? ntp - first : GP;
    const int p = first + pid % per_group % prs;
    const int n0 = pid % per_group / prs * BN;
    if (CLUSTER * p * BM >= M)
        return; // uniform over the cluster: no barrier is reached, no CTA touches the other
    const int m0 = (CLUSTER * p + (int)rank) * BM; // may be >= M: computes, stores nothing

    // Stages from the first 1024-byte boundary (the same offset in both CTAs: multicast writes
    // each w half at its own CTA-relative address in both); then the mbarriers: full[s] at
    // bars + 8s, empty[s] at bars + 8 (STAGES + s).
    extern __shared__ unsigned char kiln_gemm90_smem[];
    const unsigned base = ((unsigned)__cvta_generic_to_shared(kiln_gemm90_smem) + 1023u) & ~1023u;
    const unsigned bars = base + STAGES * STAGE;
    const int tid = threadIdx.x, wg = tid >> 7;
    if (tid == 0) {
        for (int s = 0; s < STAGES; s++) {
            bar_init(bars + 8 * s, 1); // full: this CTA's producer (expect_tx), then the bytes
            bar_init(bars + 8 * (STAGES + s), 16); // empty: the 8 consumer warps of both CTAs
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    cluster_sync(); // both CTAs' barriers initialised before either loads or arrives remotely

    if (wg == 0) {
        // Producer: one thread. Slice kt goes to stage kt % STAGES once the consumers of both
        // CTAs have released the slice that was there (kt - STAGES): empty's phase kt / STAGES -
        // 1. It expects the stage's bytes on its own full barrier (x and both w halves), loads
        // its x tile into its own stage, and its half of the w tile (rows rank * BN / 2 ..) into
        // the stage of both CTAs, whose full barriers each count the bytes that land there.
        if (tid == 0) {
            // A box wholly past M or N is one whose outputs nobody stores (this CTA's rows, or
            // the columns of this w half): it loads row 0 instead, so that every box has a
            // corner inside the tensor (partial boxes read zeros past the edge).
            const unsigned long long mx = tmap_addr(tx), mw = tmap_addr(tw);
            const int xr = m0 < M ? m0 : 0, wr0 = n0 + (int)rank * (BN / CLUSTER);
            const int wr = wr0 < N ? wr0 : 0;
#pragma unroll 1
            for (int kt = 0; kt < KT; kt++) {
                const int s = kt % STAGES;
                const unsigned full = bars + 8 * s, a = base + s * STAGE;
                bar_wait(bars + 8 * (STAGES + s), (kt / STAGES & 1) ^ 1);
                bar_expect_tx(full, STAGE);
                tma_load(a, mx, kt * BK, xr, full);
                tma_load_mc(a + TILE_A + rank * HALF_B, mw, kt * BK, wr, full, 3);
            }
        }
    } else {
        // Consumers: warpgroup cw multiplies rows 64cw..64cw+63 of the tile by all BN columns.
        const int cw = wg - 1, lane = tid & 31;
        float acc[BN / 2];
#pragma unroll
        for (int i = 0; i < BN / 2; i++)
            acc[i] = 0.f;
#pragma unroll 1
        for (int kt = 0; kt < KT; kt++) {
            const int s = kt % STAGES;
            bar_wait(bars + 8 * s, kt / STAGES & 1);
            __syncwarp(); // the lanes left the wait loop apart: converged for the .aligned wgmma
            const unsigned a = base + s * STAGE + cw * 64 * 128, b = base + s * STAGE + TILE_A;
            fence_acc(acc);
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < BK / 16; kk++)
                wgmma(acc, desc(a + 32 * kk), desc(b + 32 * kk), DT());
            wg_commit();
            wg_wait<1>(); // slice kt-1's group has completed: its stage may be refilled
            fence_acc(acc);
            if (kt > 0 && lane == 0) { // on both CTAs' empty barrier: both producers write here
                const unsigned e = bars + 8 * (STAGES + (kt - 1) % STAGES);
                bar_arrive_cluster(e, 0);
                bar_arrive_cluster(e, 1);
            }
        }
        wg_wait<0>();
        fence_acc(acc);
        epilogue<OT, N, BIAS, BN>(acc, M, m0 + 64 * cw, n0, lane, (tid >> 5) & 3, bias, y, ldy);
    }
    // Neither CTA exits while the other may still arrive on its barriers (its consumers' last
    // remote arrivals); every multicast write has landed, each CTA's full barriers counted them.
    cluster_sync();
}

} // namespace kiln
