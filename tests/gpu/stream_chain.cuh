// stream_chain.cuh — a measurement, not a kiln kernel: can ONE persistent kernel stream a decode
// step's chain of GEMVs (a layer's qkv, o, gate_up, down, times the layers) at the copy
// bandwidth, with a grid-wide barrier between dependent matrices? `kiln-ktest --bench chain`
// (tests/gpu/ktest_chain.c) times it against the same chain as a CUDA graph of gemv.cuh
// launches (PDL on), which pays a launch's ramp and tail per matrix: about 4 us of fixed cost
// per GEMV and per small kernel in the eighth session's profile. Not used by kilnc.
//
// Design (sm_90: cp.async.bulk and mbarriers):
//   - grid = one block per SM (every block resident: the barrier's precondition), WARPS warps;
//   - a unit is SEG consecutive elements of one weight row (SEG * 2 bytes). Warp gw of the TW
//     warps of the grid owns rows gw, gw + TW, ... of every stage, all of each row's units in
//     order, so it sums a row in registers and lane 0 writes y[row];
//   - each warp has a ring of D unit slots in shared memory with one mbarrier each. Lane 0
//     issues the bulk copy of its warp's next unit as soon as a slot is free, WHATEVER ITS STAGE:
//     weights are no stage's output, so a warp's copies run ahead across the barrier into the
//     next matrices while the grid waits for the current one's last rows. The HBM stream never
//     stops at a matrix boundary, which a launch per matrix cannot do;
//   - after a stage, every block arrives on a global counter (release) and waits until all have
//     (acquire); then it copies the stage's x (the previous stage's y, K elements) from L2 into
//     shared memory, and its warps consume their slots;
//   - a stage with N = 0 is a barrier alone: it stands for a step's small kernels (norm, rope,
//     attention), whose cost in such a kernel is a barrier plus their own work.
// M = 1 (batch-1 decode), bf16, float sums, one rounding of y. Preconditions: K % SEG == 0, the
// x of a stage has K elements, w and x 16-byte aligned, *bar zero at launch.
#pragma once

#include "gemv.cuh"

namespace kiln {

struct chain_stage {
    const bf16 *w; // [N, K]
    const bf16 *x; // [K]
    bf16 *y;       // [N]
    int N, K;
};

namespace chain_detail {

__device__ __forceinline__ unsigned smem_addr(const void *p)
{
    return (unsigned)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity)
{
    unsigned done;
    do {
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     "selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(bar), "r"(parity)
                     : "memory");
    } while (!done);
}

// One bulk copy of `bytes` (a multiple of 16) from global src to shared dst, completing on bar.
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

__device__ __forceinline__ unsigned ld_acquire(const unsigned *p)
{
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
    return v;
}

// The grid barrier before stage si (> 0), by thread 0 of each block, after the block's
// __syncthreads. bar[0] counts arrivals over the whole launch (si * gridDim.x by barrier si);
// bar[32] (another 128-byte line) is BAR 2's flag. BAR 0: a fence, atomicAdd, and polling the
// counter (cooperative groups' plain form); BAR 1: one red.release and polling the counter with
// ld.acquire; BAR 2: atom.acq_rel, and the last arriver releases the flag the others poll, so the
// polls do not queue behind the arrivals on one address.
template <int BAR>
__device__ __forceinline__ void grid_barrier(unsigned *bar, int si)
{
    const unsigned target = (unsigned)si * gridDim.x;
    if (BAR == 0) {
        __threadfence();
        atomicAdd(bar, 1u);
        while (ld_acquire(bar) < target) {
        }
        __threadfence();
    } else if (BAR == 1) {
        asm volatile("red.release.gpu.global.add.u32 [%0], 1;\n" ::"l"(bar) : "memory");
        while (ld_acquire(bar) < target) {
        }
    } else {
        unsigned old;
        asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;\n"
                     : "=r"(old)
                     : "l"(bar)
                     : "memory");
        if (old == target - 1)
            asm volatile("st.release.gpu.global.u32 [%0], %1;\n" ::"l"(bar + 32), "r"((unsigned)si)
                         : "memory");
        else
            while (ld_acquire(bar + 32) < (unsigned)si) {
            }
    }
}

// A warp's position in its sequence of units: stage s, row r, unit g of the row.
struct pos {
    int s, r, g;
};

// Skips to the first stage (from p.s on) in which the warp has a row; false past the last.
__device__ __forceinline__ bool settle(pos &p, const chain_stage *st, int n, int gw)
{
    while (p.s < n && p.r >= __ldg(&st[p.s].N)) {
        p.s++;
        p.r = gw;
    }
    return p.s < n;
}

template <int SEG>
__device__ __forceinline__ bool advance(pos &p, const chain_stage *st, int n, int gw, int TW)
{
    if (++p.g < __ldg(&st[p.s].K) / SEG)
        return true;
    p.g = 0;
    p.r += TW;
    if (p.r < __ldg(&st[p.s].N))
        return true;
    p.s++;
    p.r = gw;
    return settle(p, st, n, gw);
}

} // namespace chain_detail

// Dynamic shared memory: WARPS * D * SEG * 2 bytes of slots, KMAX * 2 of x, WARPS * D * 8 of
// mbarriers. *bar and bar[32] zero at launch.
// PDL 1: the same for ONE stage a launch (n = 1), in a CUDA graph of such launches with
// programmatic dependent launch: the kernel lets its dependent launch at once (trigger first) and
// issues its first D units a warp before griddepcontrol.wait, so a GEMV's weights stream while
// its predecessor finishes, where the two fit on an SM together.
template <int WARPS, int D, int SEG, int KMAX, int BAR, int PDL>
__device__ __forceinline__ void stream_chain(const chain_stage *stages, int n, unsigned *bar)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (PDL)
        asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
    using namespace chain_detail;
    constexpr int THREADS = WARPS * 32, SEGB = SEG * 2;
    static_assert(SEG % 256 == 0, "a unit is whole 16-byte chunks of every lane");
    extern __shared__ __align__(128) unsigned char smem[];
    unsigned char *ring = smem;
    bf16 *xs = reinterpret_cast<bf16 *>(smem + WARPS * D * SEGB);
    const unsigned bars = smem_addr(smem + WARPS * D * SEGB + KMAX * 2);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int TW = gridDim.x * WARPS, gw = blockIdx.x * WARPS + warp;
    unsigned char *myring = ring + warp * D * SEGB;
    const unsigned mybars = bars + warp * D * 8;
    if (threadIdx.x < WARPS * D)
        mbar_init(bars + threadIdx.x * 8, 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    __syncthreads();

    pos prod = {0, gw, 0};
    bool pv = settle(prod, stages, n, gw), cv = pv;
    pos cons = prod;
    int issued = 0, consumed = 0;
    for (; pv && issued < D; issued++) {
        if (lane == 0) {
            const chain_stage &s = stages[prod.s];
            bulk_load(smem_addr(myring + issued * SEGB),
                      s.w + (long long)prod.r * s.K + (long long)prod.g * SEG, SEGB,
                      mybars + issued * 8);
        }
        pv = advance<SEG>(prod, stages, n, gw, TW);
    }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (PDL)
        asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif

    for (int si = 0; si < n; si++) {
        if (si > 0) { // the grid barrier: stage si - 1's y is complete and visible
            __syncthreads();
            if (threadIdx.x == 0)
                grid_barrier<BAR>(bar, si);
            __syncthreads();
        }
        const chain_stage s = stages[si];
        if (s.N == 0)
            continue;
        for (int i = threadIdx.x * 8; i < s.K; i += THREADS * 8)
            *reinterpret_cast<uint4 *>(xs + i) = __ldcg(reinterpret_cast<const uint4 *>(s.x + i));
        __syncthreads();
        float acc = 0.f;
        while (cv && cons.s == si) {
            const int k = consumed % D;
            mbar_wait(mybars + k * 8, (unsigned)(consumed / D) & 1u);
            const uint4 *wv = reinterpret_cast<const uint4 *>(myring + k * SEGB);
            const uint4 *xv = reinterpret_cast<const uint4 *>(xs + cons.g * SEG);
#pragma unroll
            for (int j = 0; j < SEG / 256; j++) {
                const uint4 a = wv[j * 32 + lane], b = xv[j * 32 + lane];
                const unsigned aw[4] = {a.x, a.y, a.z, a.w}, bw[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const float2 fa =
                        __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&aw[e]));
                    const float2 fb =
                        __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&bw[e]));
                    acc = fmaf(fa.x, fb.x, acc);
                    acc = fmaf(fa.y, fb.y, acc);
                }
            }
            __syncwarp();
            consumed++;
            if (pv) { // the freed slot takes the warp's next unit, of whatever stage
                if (lane == 0) {
                    const chain_stage &p = stages[prod.s];
                    bulk_load(smem_addr(myring + k * SEGB),
                              p.w + (long long)prod.r * p.K + (long long)prod.g * SEG, SEGB,
                              mybars + k * 8);
                }
                pv = advance<SEG>(prod, stages, n, gw, TW);
                issued++;
            }
            const bool last = cons.g == s.K / SEG - 1;
            const int row = cons.r;
            cv = advance<SEG>(cons, stages, n, gw, TW);
            if (last) {
                acc = warp_sum(acc);
                if (lane == 0)
                    s.y[row] = __float2bfloat16(acc);
                acc = 0.f;
            }
        }
    }
}

} // namespace kiln
