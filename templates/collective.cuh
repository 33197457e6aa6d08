// collective.cuh — the one-shot peer-to-peer all-reduce of tensor-parallel decode:
// y[count] = the sum over the ranks of each rank's x[count], every rank launching this kernel on
// its own GPU with the same count, always with KILN_P2P_BLOCKS blocks. It replaces NCCL's
// all-reduce where the runtime drives every rank from one process with peer access between every
// pair of GPUs (the state, its layout and who allocates it: kernels/kiln_p2p.h), and the size
// fits the exchange buffers (a decode step's 8 KiB activations: one flag round trip over NVLink
// instead of NCCL's protocol). Larger all-reduces (prefill) and all-gathers stay with NCCL.
//
// Block b of every rank handles the same slice of the vectors (8 elements, 16 bytes), so the
// barrier is per block: the blocks of one launch never wait for each other, only for the
// same block on the other ranks, which runs on another GPU. Block b:
//   1. reads its epoch counter e and takes tag = e + 1 (the counters and flags start at 0, so a
//      zero flag never matches); half = tag's parity;
//   2. copies its slice of x into its own exchange buffer's half;
//   3. stores tag into flags[b][rank] of every rank (itself too), a system-scope release;
//   4. spins (system-scope acquire loads, at most KILN_P2P_POLLS polls, then __trap: a bug or a
//      dead rank is a launch error, never a hang) until its own flags[b][q] has reached tag for
//      every rank q;
//   5. sums, for each element, every rank's value IN RANK ORDER in float and rounds once to T,
//      reading rank q's exchange buffer (its own x for itself), into y;
//   6. stores tag into its epoch counter.
// Every rank computes the same float operations on the same values in the same order, so every
// rank's y is bit-identical. The epoch lives in device memory and the kernel advances it, so the
// same launch replayed from a CUDA graph runs the next epoch.
//
// The grid is the same on every launch (KILN_P2P_BLOCKS; a block whose slice is empty still
// takes part in the barrier), so every block's counter counts the launches and a tag's parity
// is the launch's. With a grid that followed count, block b's slice would move from launch to
// launch and two launches' slices of one half could overlap while a peer still reads the older
// one; the kernel traps on any other grid.
//
// Why one barrier per all-reduce suffices (the double buffering):
//  - A flag from rank q may run one epoch ahead, never more: q's block b at epoch tag+1 started
//    after q's launch `tag` finished (kernels on one stream run in order), which needed this
//    rank's flag `tag`, stored by this launch; q cannot reach tag+2 before this rank stores
//    tag+1 in its next launch. Hence the wait is "flag - tag >= 0" (as a signed difference, so
//    the 32-bit counters may wrap), not equality.
//  - Rank q overwrites the half this launch reads (parity of tag) only at epoch tag+2, and q's
//    launch tag+2 starts after its launch tag+1 finished, which waited for this rank's flag
//    tag+1, stored only after this launch (and so its reads of q's half) finished. The other
//    half is written at tag+1 while this launch may still read the half of tag: no overlap.
//  - Memory order: every thread's buffer stores precede the flag's release store (st.release.sys)
//    through the __syncthreads before it; the reader's acquire load (ld.acquire.sys) that sees
//    the flag, and the __syncthreads after it, order every thread's loads of the buffers after
//    the writer's stores. The loads bypass L1 (ld.global.cg). TensorRT-LLM's one-shot
//    all-reduce synchronises the same way.
//
// Contract: THREADS == KILN_P2P_THREADS threads per block, KILN_P2P_BLOCKS blocks; x, y and the
// buffers 16-byte aligned; count <= p.cap; x and y do not overlap the exchange buffers (y == x,
// in place, is allowed: every element of y is written after the block's barrier, by the thread
// that read it from x first, and no other block touches it).
#pragma once

#include "common.cuh"
#include "kiln_p2p.h"

namespace kiln {
namespace p2p_detail {

__device__ __forceinline__ void st_release_sys(unsigned *p, unsigned v)
{
    asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ unsigned ld_acquire_sys(const unsigned *p)
{
    unsigned v;
    asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

// 8 elements of rank q's values at vector v: its own x for this rank, else its exchange half,
// loaded past L1 (the peer stored it after this kernel began).
template <typename T>
__device__ __forceinline__ void load_rank8(const T *src, long long v, bool own, float out[8])
{
    if (own) {
        load8(src + v * 8, out);
        return;
    }
    uint4 u = __ldcg(reinterpret_cast<const uint4 *>(src + v * 8));
    const unsigned short *h = reinterpret_cast<const unsigned short *>(&u);
#pragma unroll
    for (int i = 0; i < 8; i++) {
        T e;
        *reinterpret_cast<unsigned short *>(&e) = h[i];
        out[i] = to_f(e);
    }
}

template <typename T>
__device__ __forceinline__ float load_rank1(const T *src, long long i, bool own)
{
    if (own)
        return to_f(src[i]);
    unsigned short h = __ldcg(reinterpret_cast<const unsigned short *>(src + i));
    T e;
    *reinterpret_cast<unsigned short *>(&e) = h;
    return to_f(e);
}

} // namespace p2p_detail

template <typename T, int THREADS>
__device__ void allreduce_p2p(const T *x, T *y, long long count, const kiln_p2p p)
{
    KILN_PDL_ENTER();
    static_assert(sizeof(T) == 2, "allreduce_p2p moves 16-bit elements (bf16, f16)");
    static_assert(THREADS == KILN_P2P_THREADS, "allreduce_p2p runs KILN_P2P_THREADS threads");
    const int b = blockIdx.x, nb = KILN_P2P_BLOCKS, tid = threadIdx.x;
    if (gridDim.x != KILN_P2P_BLOCKS)
        __trap();
    __shared__ unsigned tag_s;
    if (tid == 0)
        tag_s = p.epoch[b] + 1u;
    __syncthreads();
    const unsigned tag = tag_s;
    const long long half = (long long)(tag & 1u) * p.cap;

    // this block's vectors [v0, v1); the last block also takes the count % 8 tail elements
    const long long nvec = count / 8, per = (nvec + nb - 1) / nb;
    const long long v0 = b * per < nvec ? b * per : nvec;
    const long long v1 = v0 + per < nvec ? v0 + per : nvec;
    const bool tail = b == nb - 1;

    T *mine = static_cast<T *>(p.buf[p.rank]) + half;
    for (long long v = v0 + tid; v < v1; v += THREADS)
        *reinterpret_cast<vec8 *>(mine + v * 8) = *reinterpret_cast<const vec8 *>(x + v * 8);
    if (tail)
        for (long long i = nvec * 8 + tid; i < count; i += THREADS)
            mine[i] = x[i];
    __syncthreads();

    // announce this block's slice to every rank, then wait for every rank's
    if (tid < p.nranks) {
        p2p_detail::st_release_sys(p.flags[tid] + b * KILN_P2P_MAX_RANKS + p.rank, tag);
        const unsigned *g = p.flags[p.rank] + b * KILN_P2P_MAX_RANKS + tid;
        unsigned polls = 0;
        while ((int)(p2p_detail::ld_acquire_sys(g) - tag) < 0)
            if (++polls >= KILN_P2P_POLLS)
                __trap();
    }
    __syncthreads();

    // the sum in rank order, in float (rank 0's value, + rank 1's, ...), rounded once
    for (long long v = v0 + tid; v < v1; v += THREADS) {
        float acc[8];
        p2p_detail::load_rank8(p.rank == 0 ? x : static_cast<const T *>(p.buf[0]) + half, v,
                               p.rank == 0, acc);
        for (int q = 1; q < p.nranks; q++) {
            float e[8];
            const bool own = q == p.rank;
            p2p_detail::load_rank8(own ? x : static_cast<const T *>(p.buf[q]) + half, v, own, e);
#pragma unroll
            for (int i = 0; i < 8; i++)
                acc[i] += e[i];
        }
        store8(y + v * 8, acc);
    }
    if (tail)
        for (long long i = nvec * 8 + tid; i < count; i += THREADS) {
            float acc = p2p_detail::load_rank1(
                p.rank == 0 ? x : static_cast<const T *>(p.buf[0]) + half, i, p.rank == 0);
            for (int q = 1; q < p.nranks; q++) {
                const bool own = q == p.rank;
                acc += p2p_detail::load_rank1(own ? x : static_cast<const T *>(p.buf[q]) + half,
                                              i, own);
            }
            y[i] = from_f<T>(acc);
        }
    if (tid == 0)
        p.epoch[b] = tag;
}

} // namespace kiln
