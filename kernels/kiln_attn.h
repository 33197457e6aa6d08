/* kiln_attn.h — the launch geometry of attn_prefill's tensor-core path (templates/attention.cuh),
 * shared by the compiler (C), kiln-ktest and the kernel (CUDA C++), so that the numbers are
 * written once.
 *
 *   grid (ceil(T / bm) + n_seqs, NH, 1), block 2 * bm threads,
 *   dynamic shared memory KILN_ATTN_PREFILL_SMEM(bm, bn, hd, esz, kv8) bytes: the Q tile (bm rows)
 *   and the K and V tiles (bn rows each) in DT, rows of hd + 8 elements (the padding keeps the
 *   fragment loads free of bank conflicts); with the FP8 cache (kv8) also the staging area the
 *   tile's raw K and V bytes (bn rows of hd) and their scales (bn floats each) land in before they
 *   are converted into the DT tiles. Above 48 KiB the launcher raises the function's limit.
 */
#ifndef KILN_ATTN_H_
#define KILN_ATTN_H_

#define KILN_ATTN_BM 64
/* keys per tile: 32 for heads over 128 dims, to bound registers */
#define KILN_ATTN_BN(hd) ((hd) > 128 ? 32 : 64)

/* Bytes of the FP8 staging area: raw K and V rows (bn x hd bytes each), then bn K scales and bn
 * V scales (floats). */
#define KILN_ATTN_KV8_STAGE(bn, hd) (2LL * (bn) * (hd) + 8LL * (bn))

#define KILN_ATTN_PREFILL_SMEM(bm, bn, hd, esz, kv8)                                               \
    ((long long)((bm) + 2 * (bn)) * ((hd) + 8) * (esz) + ((kv8) ? KILN_ATTN_KV8_STAGE(bn, hd) : 0))

#endif
