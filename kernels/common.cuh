// common.cuh — device helpers every kernel template uses: element types and conversions,
// 16-byte vector loads, warp and block reductions. Compiled by NVRTC into each model's
// generated translation unit (no host code here).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kiln_attn.h"
#include "kiln_enums.h"
#include "kiln_kv8.h"
#include "kiln_step.h"

// NVRTC has no <math.h>: the constants kernels use.
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

namespace kiln {

typedef __nv_bfloat16 bf16;
typedef __half f16;

// Conversions between the storage types (bf16, f16, float) and float.
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(f16 x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ f16 from_f<f16>(float x) { return __float2half(x); }

// cp.async (sm_80+), global -> shared without a register: 16 bytes cached in L2 only (.cg:
// streamed data), or 4 bytes (.ca: the only form for fewer than 16); a commit closes this
// thread's group of copies; cp_async_wait<N> waits until at most N of its groups are in flight,
// cp_async_wait_all until none is. Other threads' copies are visible after a barrier.
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem)
{
    const unsigned a = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(a), "l"(gmem) : "memory");
}
// The 16-byte copy to shared address `dst` of src-size `bytes` (0 or 16): 0 writes 16 zero
// bytes and reads nothing.
__device__ __forceinline__ void cp_async16(unsigned dst, const void *gmem, int bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem),
                 "r"(bytes)
                 : "memory");
}
// The 8-byte copy (.ca) to shared address `dst` of src-size `bytes` (0 or 8): 0 writes 8 zero
// bytes and reads nothing.
__device__ __forceinline__ void cp_async8(unsigned dst, const void *gmem, int bytes)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(dst), "l"(gmem),
                 "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async4(void *smem, const void *gmem)
{
    const unsigned a = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(a), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit()
{
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all()
{
    asm volatile("cp.async.wait_all;\n" ::: "memory");
}

// Four 8x8 matrices of 16-bit elements: lanes 8i..8i+7 give the row addresses of matrix i; r[i]
// is the lane's part of matrix i (row lane/4, columns 2(lane%4), +1).
__device__ __forceinline__ void ldsm4(unsigned r[4], unsigned addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// The same, transposed: r[i] is the lane's part of matrix i's transpose (rows 2(lane%4), +1 of
// column lane/4), as an mma B fragment of a k x n tile stored k-major.
__device__ __forceinline__ void ldsm4_t(unsigned r[4], unsigned addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// Eight 16-bit elements in one 16-byte load or store.
struct alignas(16) vec8 {
    unsigned short u[8];
};

template <typename T>
__device__ __forceinline__ void load8(const T *p, float out[8])
{
    vec8 v = *reinterpret_cast<const vec8 *>(p);
#pragma unroll
    for (int i = 0; i < 8; i++) {
        T e;
        *reinterpret_cast<unsigned short *>(&e) = v.u[i];
        out[i] = to_f(e);
    }
}

template <typename T>
__device__ __forceinline__ void store8(T *p, const float in[8])
{
    vec8 v;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        T e = from_f<T>(in[i]);
        v.u[i] = *reinterpret_cast<unsigned short *>(&e);
    }
    *reinterpret_cast<vec8 *>(p) = v;
}

__device__ __forceinline__ float warp_sum(float x)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

__device__ __forceinline__ float warp_max(float x)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

// (v, i) of the warp's best under the total order (value desc, index asc): every lane ends with
// the same pair (a butterfly under a total order).
__device__ __forceinline__ void warp_argmax(float &v, int &i)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, o);
        const int oi = __shfl_xor_sync(0xffffffffu, i, o);
        if (ov > v || (ov == v && oi < i)) {
            v = ov;
            i = oi;
        }
    }
}

// Sum over the block; every thread gets the result. `scratch` holds >= 32 floats.
template <int THREADS>
__device__ __forceinline__ float block_sum(float x, float *scratch)
{
    x = warp_sum(x);
    if (THREADS <= 32)
        return x;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads(); // scratch may still be read by a previous reduction
    if (lane == 0)
        scratch[warp] = x;
    __syncthreads();
    x = lane < THREADS / 32 ? scratch[lane] : 0.f;
    return warp_sum(x);
}

template <int THREADS>
__device__ __forceinline__ float block_max(float x, float *scratch)
{
    x = warp_max(x);
    if (THREADS <= 32)
        return x;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0)
        scratch[warp] = x;
    __syncthreads();
    x = lane < THREADS / 32 ? scratch[lane] : -INFINITY;
    return warp_max(x);
}

// Programmatic dependent launch (PDL, sm_90 and up). The runtime launches every kernel with the
// programmatic stream serialization attribute (runtime/kcuda.c, kcuda_launch; KILN_PDL=0 turns it
// off), so a kernel's grid may start while its predecessor in the stream is still running, and a
// CUDA graph captured from such launches keeps programmatic edges. Every kernel template calls
// KILN_PDL_ENTER() as its FIRST statement, before any read or write of global memory and before
// any early return:
//   - griddepcontrol.wait blocks until the predecessor grid has completed and its writes are
//     visible. Called by every block of every kernel, it makes the ordering transitive: kernel C
//     may read what A wrote two launches back, because B's blocks could not finish before A did.
//     A kernel that skipped it could read its inputs before they are written, or overwrite a
//     buffer its predecessor still reads.
//   - griddepcontrol.launch_dependents then lets the next kernel's grid launch as soon as every
//     block of this one has started: its launch and block scheduling overlap this kernel's tail,
//     and its blocks wait in hardware (no spinning) at their own griddepcontrol.wait.
// Without the attribute (KILN_PDL=0, before sm_90, library kernels such as cuBLASLt's and NCCL's
// in between) both instructions are no-ops and the edge is an ordinary full dependency. Below
// sm_90 the macro is empty. tests/test_pdl.c checks that every template calls it first.
//
// KILN_PDL_TRIGGER() and KILN_PDL_WAIT() are its two halves in the other order, for a kernel that
// streams weights or cache: it lets its dependent launch at once, does work that reads nothing
// but weights, the step's metadata (no kernel writes either: the host copies kiln_step's arrays
// before the step's first kernel, which every later launch follows) and the KV cache rows of
// positions before the step's own (written by earlier steps, which end before the host starts
// this one), and writes nothing but its own shared memory and registers, then waits before it
// touches anything else (templates/gemv_stream.cuh, attn_decode in templates/attention.cuh;
// tests/test_launch.c allows it there alone).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define KILN_PDL_TRIGGER() asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory")
#define KILN_PDL_WAIT() asm volatile("griddepcontrol.wait;\n" ::: "memory")
#else
#define KILN_PDL_TRIGGER()                                                                        \
    do {                                                                                          \
    } while (0)
#define KILN_PDL_WAIT()                                                                           \
    do {                                                                                          \
    } while (0)
#endif
#define KILN_PDL_ENTER()                                                                          \
    do {                                                                                          \
        KILN_PDL_WAIT();                                                                          \
        KILN_PDL_TRIGGER();                                                                       \
    } while (0)

// Activations (kiln_enums.h's kiln_act), computed in float (the same formulas as compiler/ref.c).

template <int ACT>
__device__ __forceinline__ float act(float x)
{
    if (ACT == KILN_ACT_SILU)
        return x / (1.f + __expf(-x));
    if (ACT == KILN_ACT_GELU)
        return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
    if (ACT == KILN_ACT_GELU_TANH)
        return 0.5f * x * (1.f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    return fmaxf(x, 0.f);
}

// Address of the K or V row of (sequence s, position p) in a paged cache layer of
// [blocks][KILN_BLOCK][n_kv * hd] elements.
template <typename T>
__device__ __forceinline__ const T *kv_row(const T *base, const kiln_step &st, int s, int p,
                                           int row_elems)
{
    const int *bt = st.block_table + s * st.max_blocks;
    const int blk = bt[p / KILN_BLOCK];
    return base + ((long long)blk * KILN_BLOCK + p % KILN_BLOCK) * row_elems;
}

// The FP8 KV cache (kilnc compile --kv-dtype fp8; the layout is kernels/kiln_kv8.h's). A
// template's cache pointers are kv_t<DT, KV8>: DT for the 16-bit cache, bytes for the FP8 one.
template <typename DT, int KV8> struct kv_elem {
    typedef DT type;
};
template <typename DT> struct kv_elem<DT, 1> {
    typedef unsigned char type;
};
template <typename DT, int KV8> using kv_t = typename kv_elem<DT, KV8>::type;

// The slot (block * KILN_BLOCK + row) of (sequence s, position p).
__device__ __forceinline__ int kv_slot(const kiln_step &st, int s, int p)
{
    return st.block_table[s * st.max_blocks + p / KILN_BLOCK] * KILN_BLOCK + p % KILN_BLOCK;
}

// Byte offsets, in a layer's FP8 cache of KW-element rows and NKV heads, of slot `slot`'s e4m3
// row and of its NKV float scales.
template <int KW, int NKV>
__device__ __forceinline__ void kv8_at(int slot, long long &row, long long &scales)
{
    const long long blk = slot / KILN_BLOCK, r = slot % KILN_BLOCK;
    row = blk * KILN_KV8_BLOCK_BYTES(KW, NKV) + r * KW;
    scales = blk * KILN_KV8_BLOCK_BYTES(KW, NKV) + KILN_KV8_SCALES_AT(KW) + r * (NKV * 4);
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// mbarriers (sm_90; shared::cta addresses), for templates/gemm90.cuh and gemv_stream.cuh. init:
// `count` arrivals complete a phase. wait: until the phase of parity `parity` has completed (a
// fresh barrier is in phase 0, so waiting on parity 1 passes at once).
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
#endif

} // namespace kiln
