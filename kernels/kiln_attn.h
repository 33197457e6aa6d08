/* kiln_attn.h — the launch geometry of attn_prefill's tensor-core path (templates/attention.cuh),
 * shared by the compiler (C), kiln-ktest and the kernel (CUDA C++), so that the numbers are
 * written once.
 *
 *   grid (ceil(T / bm) + n_seqs, NH, 1), block 2 * bm threads,
 *   dynamic shared memory KILN_ATTN_PREFILL_SMEM(bm, bn, hd, esz, kv8) bytes: the Q tile (bm rows)
 *   and the K and V tiles (bn rows each) in DT, rows of hd + 8 elements (the padding keeps the
 *   fragment loads free of bank conflicts); with the FP8 cache (kv8) on the tensor-core path
 *   (hd % 16 == 0; the CUDA-core fallback uses none of this) also the staging area the tile's raw
 *   K and V bytes (bn rows of hd) and their scales (bn floats each) land in before they are
 *   converted into the DT tiles. Above 48 KiB the launcher raises the function's limit.
 */
#ifndef KILN_ATTN_H_
#define KILN_ATTN_H_

/* query rows a CTA: 128 (256 threads), so that on sm_90a two warpgroups share each key and value
 * tile (64 rows: 0.738 of the 8B prefill's GEMM peak at 2,048 tokens, 128: 0.753;
 * tests/gpu/RESULTS.md, twenty-fourth session) */
#define KILN_ATTN_BM 128
/* keys per tile: 32 for heads over 128 dims, to bound registers */
#define KILN_ATTN_BN(hd) ((hd) > 128 ? 32 : 64)

/* Keys a tile on attn_prefill's Hopper path (sm_90a, wgmma), whose two stages of K and V tiles
 * must fit the shared memory above (templates/attention.cuh: attn_prefill_wg). */
#define KILN_ATTN_WG_BN 32

/* The CTAs an SM that attn_prefill's __launch_bounds__ asks the registers for: CTAs of 2 * bm
 * threads, as many as bound a thread to 128 registers (4 of 128 threads, 2 of 256), so that the
 * CTAs the shared memory holds (at hd 128: 4 of 52 KiB at bm 64, 2 of 70 KiB at bm 128) also fit
 * the register file (unbounded, the mma.sync path takes a few more and one CTA fewer fits). Over
 * 128 dims the output accumulators alone need more: no bound. */
#define KILN_ATTN_PREFILL_MIN_CTAS(hd, bm) ((hd) <= 128 && (bm) < 256 ? 256 / (bm) : 1)

/* Bytes of the FP8 staging area: raw K and V rows (bn x hd bytes each), then bn K scales and bn
 * V scales (floats). */
#define KILN_ATTN_KV8_STAGE(bn, hd) (2LL * (bn) * (hd) + 8LL * (bn))

#define KILN_ATTN_PREFILL_SMEM(bm, bn, hd, esz, kv8)                                               \
    ((long long)((bm) + 2 * (bn)) * ((hd) + 8) * (esz) +                                           \
     ((kv8) && (hd) % 16 == 0 ? KILN_ATTN_KV8_STAGE(bn, hd) : 0))

/* attn_decode. A CTA handles hpc query heads of one kv head; with KILN_ATTN_DECODE_MMA(hd, hpc)
 * its warps run the tensor-core path (the hpc heads as the rows of m16n8k16 tiles, KT keys a warp
 * at a time through its own K and V tile in shared memory: KILN_ATTN_DECODE_WARP_TILE bytes, DT
 * rows of hd + 8 elements, or with the FP8 cache (kv8) raw rows of hd + 16 bytes and the keys' K
 * and V scales), else the CUDA-core path (attn_warp_keys). Static shared memory, at most 48 KiB
 * (lower.c chooses hpc by it): the CUDA-core path's q in float (hpc * hd), the warps' partial
 * outputs (warps * hpc * hd floats; on the tensor-core path they share their bytes with the
 * warps' tiles, used one after the other), the warps' m and l (warps * hpc * 2 floats) and the
 * split merge's weights and 1 / sum (hpc * (nsplit + 1) floats). */
#define KILN_ATTN_DECODE_KT 16
#define KILN_ATTN_DECODE_MMA(hd, hpc) ((hd) % 16 == 0 && (hd) <= 128 && (hpc) <= 16)
#define KILN_ATTN_DECODE_WARP_TILE(hd, esz, kv8)                                                   \
    ((kv8) ? 2 * KILN_ATTN_DECODE_KT * ((hd) + 16) + 8 * KILN_ATTN_DECODE_KT                       \
           : 2 * KILN_ATTN_DECODE_KT * ((hd) + 8) * (esz))
#define KILN_ATTN_DECODE_TILES(hd, hpc, warps, esz, kv8)                                           \
    (KILN_ATTN_DECODE_MMA(hd, hpc) ? (warps) * KILN_ATTN_DECODE_WARP_TILE(hd, esz, kv8) : 0)
#define KILN_ATTN_DECODE_PARTS(hd, hpc, warps, esz, kv8)                                           \
    ((warps) * (hpc) * (hd) * 4 > KILN_ATTN_DECODE_TILES(hd, hpc, warps, esz, kv8)                 \
         ? (warps) * (hpc) * (hd) * 4                                                              \
         : KILN_ATTN_DECODE_TILES(hd, hpc, warps, esz, kv8))
#define KILN_ATTN_DECODE_SMEM(hd, hpc, warps, nsplit, esz, kv8)                                    \
    ((KILN_ATTN_DECODE_MMA(hd, hpc) ? 0 : (hpc) * (hd) * 4) +                                     \
     KILN_ATTN_DECODE_PARTS(hd, hpc, warps, esz, kv8) + (warps) * (hpc) * 8 +                      \
     (hpc) * ((nsplit) + 1) * 4)

#endif
