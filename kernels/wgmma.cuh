// wgmma.cuh — Hopper's warpgroup MMA (wgmma.mma_async, sm_90a only) for the templates that use
// it (gemm90.cuh, attention.cuh): the shared-memory layout and matrix descriptors of the
// 128-byte swizzle, the fence / commit / wait protocol, and the m64nNk16 products kiln uses
// (bf16 or f16 inputs, float accumulators). Compiled for another target every product traps:
// callers test wg::HAVE first (a static_assert or `if constexpr`).
//
// Layout. An operand tile is stored as panels of 64 16-bit elements (128 bytes) a row: row r's
// 16-byte chunk c at byte 128 r + 16 (c ^ (r % 8)) of its panel (wg::swz), each panel starting on
// a 1024-byte boundary (8-row atoms of 1024 bytes; TMA's 128-byte swizzle writes the same). A
// matrix of 64 < W <= 128 columns is two panels.
//   - K-major operand (rows are M or N, the panel's 64 elements are along K: Q, K, gemm90's x and
//     w): desc_k(start), the k-th 16-element step of a panel starting 32 k bytes further (the
//     hardware applies the XOR to the address bits).
//   - MN-major B (rows are K, the panel's 64 elements along N: V [keys][dims], read as B with
//     imm-trans-b = 1): desc_mn(start, lbo), lbo = the bytes from one panel (64 columns of N) to
//     the next; the k-th 16-row step starts 2,048 k bytes further.
// Descriptor bits: start address >> 4 (0-13), leading byte offset >> 4 (16-29: unused for a
// swizzled K-major operand, the N-panel stride of an MN-major one), stride byte offset >> 4
// (32-45: 1024 between 8-row atoms), base offset 0 (49-51: the atoms are 1024-aligned), swizzle
// mode 1 = 128 bytes (62-63).
//
// Accumulators (m64nNk16, f32 D) are float d[N / 8][4]: warp q of the warpgroup holds rows
// 16q..16q+15; lane (g = lane / 4, t = lane % 4) holds d[j][2h + e] at row 16q + 8h + g, column
// 8j + 2t + e (mma.sync's m16n8 C fragment, N / 8 times). A from registers (mma_rt): a[0..3] as
// mma.sync m16n8k16's A fragment of the warp's 16 rows x the step's 16 columns, which is the D
// layout of two adjacent 8-column blocks d[2kk], d[2kk + 1] packed to 16 bits in pairs.
//
// Protocol: fence() before the first product of a batch (after any register or shared write
// the products read), the products, commit(), wait<N>() until at most N batches are in flight,
// then fence_regs on the accumulators (and on register A) so that the compiler moves no access
// across the asynchronous products. Shared memory written by ordinary stores or cp.async is seen
// by wgmma (the async proxy) after proxy_fence() by the writing thread and a barrier.
#pragma once

#include "common.cuh"

namespace kiln {
namespace wg {

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
constexpr bool HAVE = true;
#else
constexpr bool HAVE = false;
#endif

__device__ __forceinline__ unsigned swz(int r, int c)
{
    return (unsigned)(r * 128 + ((c ^ (r & 7)) << 4));
}

__device__ __forceinline__ unsigned long long desc_mn(unsigned addr, unsigned lbo)
{
    return (unsigned long long)((addr & 0x3FFFFu) >> 4) |
           (unsigned long long)((lbo & 0x3FFFFu) >> 4) << 16 | (1024ull >> 4) << 32 | 1ull << 62;
}

// (the leading byte offset of a swizzled K-major operand is unused: 16, "assumed 1")
__device__ __forceinline__ unsigned long long desc_k(unsigned addr) { return desc_mn(addr, 16); }

__device__ __forceinline__ void fence()
{
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void commit()
{
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int PENDING>
__device__ __forceinline__ void wait()
{
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(PENDING) : "memory");
#endif
}
__device__ __forceinline__ void proxy_fence()
{
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
template <int R>
__device__ __forceinline__ void fence_regs(float (&d)[R][4])
{
#pragma unroll
    for (int i = 0; i < R; i++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            asm volatile("" : "+f"(d[i][e])::"memory");
}
template <int R>
__device__ __forceinline__ void fence_regs(unsigned (&a)[R])
{
#pragma unroll
    for (int i = 0; i < R; i++)
        asm volatile("" : "+r"(a[i])::"memory");
}

// Accumulator operand lists of N / 2 floats and their placeholders (%0 ... %(N/2 - 1)).
#define KILN_WG_D16 \
    "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), \
    "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), \
    "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), \
    "+f"(d[3][3])

#define KILN_WG_D32 \
    KILN_WG_D16, \
    "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), \
    "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), \
    "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), \
    "+f"(d[7][3])

#define KILN_WG_D64 \
    KILN_WG_D32, \
    "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), \
    "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), \
    "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), \
    "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), \
    "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), \
    "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), \
    "+f"(d[15][2]), "+f"(d[15][3])

#define KILN_WG_D128 \
    KILN_WG_D64, \
    "+f"(d[16][0]), "+f"(d[16][1]), "+f"(d[16][2]), "+f"(d[16][3]), "+f"(d[17][0]), \
    "+f"(d[17][1]), "+f"(d[17][2]), "+f"(d[17][3]), "+f"(d[18][0]), "+f"(d[18][1]), \
    "+f"(d[18][2]), "+f"(d[18][3]), "+f"(d[19][0]), "+f"(d[19][1]), "+f"(d[19][2]), \
    "+f"(d[19][3]), "+f"(d[20][0]), "+f"(d[20][1]), "+f"(d[20][2]), "+f"(d[20][3]), \
    "+f"(d[21][0]), "+f"(d[21][1]), "+f"(d[21][2]), "+f"(d[21][3]), "+f"(d[22][0]), \
    "+f"(d[22][1]), "+f"(d[22][2]), "+f"(d[22][3]), "+f"(d[23][0]), "+f"(d[23][1]), \
    "+f"(d[23][2]), "+f"(d[23][3]), "+f"(d[24][0]), "+f"(d[24][1]), "+f"(d[24][2]), \
    "+f"(d[24][3]), "+f"(d[25][0]), "+f"(d[25][1]), "+f"(d[25][2]), "+f"(d[25][3]), \
    "+f"(d[26][0]), "+f"(d[26][1]), "+f"(d[26][2]), "+f"(d[26][3]), "+f"(d[27][0]), \
    "+f"(d[27][1]), "+f"(d[27][2]), "+f"(d[27][3]), "+f"(d[28][0]), "+f"(d[28][1]), \
    "+f"(d[28][2]), "+f"(d[28][3]), "+f"(d[29][0]), "+f"(d[29][1]), "+f"(d[29][2]), \
    "+f"(d[29][3]), "+f"(d[30][0]), "+f"(d[30][1]), "+f"(d[30][2]), "+f"(d[30][3]), \
    "+f"(d[31][0]), "+f"(d[31][1]), "+f"(d[31][2]), "+f"(d[31][3])

#define KILN_WG_P16 \
    "%0, %1, %2, %3, %4, %5, %6, %7" ", " \
    "%8, %9, %10, %11, %12, %13, %14, %15"

#define KILN_WG_P32 \
    KILN_WG_P16 ", " \
    "%16, %17, %18, %19, %20, %21, %22, %23" ", " \
    "%24, %25, %26, %27, %28, %29, %30, %31"

#define KILN_WG_P64 \
    KILN_WG_P32 ", " \
    "%32, %33, %34, %35, %36, %37, %38, %39" ", " \
    "%40, %41, %42, %43, %44, %45, %46, %47" ", " \
    "%48, %49, %50, %51, %52, %53, %54, %55" ", " \
    "%56, %57, %58, %59, %60, %61, %62, %63"

#define KILN_WG_P128 \
    KILN_WG_P64 ", " \
    "%64, %65, %66, %67, %68, %69, %70, %71" ", " \
    "%72, %73, %74, %75, %76, %77, %78, %79" ", " \
    "%80, %81, %82, %83, %84, %85, %86, %87" ", " \
    "%88, %89, %90, %91, %92, %93, %94, %95" ", " \
    "%96, %97, %98, %99, %100, %101, %102, %103" ", " \
    "%104, %105, %106, %107, %108, %109, %110, %111" ", " \
    "%112, %113, %114, %115, %116, %117, %118, %119" ", " \
    "%120, %121, %122, %123, %124, %125, %126, %127"

// d (+)= A (64 x 16, K-major at da) . B (N x 16, K-major at db)^T; accumulate = 0 overwrites d.
// IA, IB, IS: the placeholders of da, db and accumulate (after the N / 2 accumulators).
#define KILN_WG_SS(N, TY, P, D, IA, IB, IS)                                                        \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" IS ", 0;\n"                                  \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY "." TY " {" P "}, %" IA     \
                 ", %" IB ", p, 1, 1, 0, 0;\n}\n"                                                  \
                 : D                                                                               \
                 : "l"(da), "l"(db), "r"(accumulate))
// d += A (64 x 16 in registers a[0..3]) . B (16 x N, MN-major at db: imm-trans-b = 1).
// A0..A3, IB, IS: the placeholders of a[0..3], db and the constant 1 of scale-d.
#define KILN_WG_RT(N, TY, P, D, A0, A1, A2, A3, IB, IS)                                           \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" IS ", 0;\n"                                  \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY "." TY " {" P "}, {%" A0   \
                 ", %" A1 ", %" A2 ", %" A3 "}, %" IB ", p, 1, 1, 1;\n}\n"                         \
                 : D                                                                               \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1))

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define KILN_WG_SM90(...) __VA_ARGS__
#else
#define KILN_WG_SM90(...) __trap()
#endif

#define KILN_WG_SS_FN(N, NA, IA, IB, IS)                                                           \
    __device__ __forceinline__ void mma(float (&d)[N / 8][4], unsigned long long da,               \
                                        unsigned long long db, int accumulate, bf16)               \
    {                                                                                              \
        KILN_WG_SM90(KILN_WG_SS(N, "bf16", KILN_WG_P##NA, KILN_WG_D##NA, IA, IB, IS));            \
    }                                                                                              \
    __device__ __forceinline__ void mma(float (&d)[N / 8][4], unsigned long long da,               \
                                        unsigned long long db, int accumulate, f16)                \
    {                                                                                              \
        KILN_WG_SM90(KILN_WG_SS(N, "f16", KILN_WG_P##NA, KILN_WG_D##NA, IA, IB, IS));             \
    }
KILN_WG_SS_FN(32, 16, "16", "17", "18")
KILN_WG_SS_FN(64, 32, "32", "33", "34")
KILN_WG_SS_FN(128, 64, "64", "65", "66")
KILN_WG_SS_FN(256, 128, "128", "129", "130")

#define KILN_WG_RT_FN(N, NA, A0, A1, A2, A3, IB, IS)                                               \
    __device__ __forceinline__ void mma_rt(float (&d)[N / 8][4], const unsigned (&a)[4],           \
                                           unsigned long long db, bf16)                            \
    {                                                                                              \
        KILN_WG_SM90(KILN_WG_RT(N, "bf16", KILN_WG_P##NA, KILN_WG_D##NA, A0, A1, A2, A3, IB, IS)); \
    }                                                                                              \
    __device__ __forceinline__ void mma_rt(float (&d)[N / 8][4], const unsigned (&a)[4],           \
                                           unsigned long long db, f16)                             \
    {                                                                                              \
        KILN_WG_SM90(KILN_WG_RT(N, "f16", KILN_WG_P##NA, KILN_WG_D##NA, A0, A1, A2, A3, IB, IS));  \
    }
KILN_WG_RT_FN(64, 32, "32", "33", "34", "35", "36", "37")
KILN_WG_RT_FN(128, 64, "64", "65", "66", "67", "68", "69")

#undef KILN_WG_SS_FN
#undef KILN_WG_RT_FN
#undef KILN_WG_SM90
#undef KILN_WG_SS
#undef KILN_WG_RT
#undef KILN_WG_D16
#undef KILN_WG_D32
#undef KILN_WG_D64
#undef KILN_WG_D128
#undef KILN_WG_P16
#undef KILN_WG_P32
#undef KILN_WG_P64
#undef KILN_WG_P128

} // namespace wg
} // namespace kiln
