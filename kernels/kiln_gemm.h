/* kiln_gemm.h — the launch geometry of kiln's tensor-core GEMM (templates/gemm.cuh), shared by
 * the compiler and runtime (C) and the kernel (CUDA C++), so that the numbers are written once.
 *
 * A block computes one BM x BN tile of y (rows of x by rows of w) with THREADS threads, streaming
 * K through shared memory in BK-element slices, STAGES slices in flight (cp.async pipeline):
 *   grid  = (ceil(N / KILN_GEMM_BN), ceil(M_launch / KILN_GEMM_BM)), block = KILN_GEMM_THREADS,
 *   dynamic shared memory = KILN_GEMM_SMEM(element size of DT) bytes (64 KiB for 16-bit DT:
 *   above the 48 KiB default, so the launcher sets CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES).
 * M_launch may be the actual M or any larger bound (the compiled maximum of rows): blocks whose
 * tile starts at a row >= M return at once.
 * The tile is sized for two blocks an SM: 128 KiB of shared memory, and at most 255 registers a
 * thread, which __launch_bounds__(KILN_GEMM_THREADS) alone allows (NVRTC gives it ~220).
 */
#ifndef KILN_GEMM_H_
#define KILN_GEMM_H_

#define KILN_GEMM_BM 128
#define KILN_GEMM_BN 128
#define KILN_GEMM_BK 32
#define KILN_GEMM_STAGES 4
#define KILN_GEMM_THREADS 128

/* Dynamic shared memory bytes for elements of `esz` bytes: STAGES slices of the x and w tiles. */
#define KILN_GEMM_SMEM(esz)                                                                       \
    (KILN_GEMM_STAGES * (KILN_GEMM_BM + KILN_GEMM_BN) * KILN_GEMM_BK * (esz))

/* Hopper's kernel (templates/gemm90.cuh: wgmma, sm_90a only), persistent: grid = (the device's
 * SM count, 1, 1) whatever M is (a grid rule's sm term: runtime/artifact.h), block b taking tiles
 * b, b + gridDim.x, ... of the ceil(M / BM) x ceil(N / BN) tiles (any grid computes the product;
 * one block an SM keeps every SM busy with no second wave; blocks past the last tile return),
 * block = KILN_GEMM90_THREADS (a producer warpgroup, one thread of which loads by TMA, and two
 * that multiply), dynamic shared memory KILN_GEMM90_SMEM(esz, KILN_GEMM90_BN(N)): STAGES slices
 * of the x and w tiles, 1 KiB so that the slices can start on a 1024-byte boundary (the 128-byte
 * swizzle's atom), and the ring's 2 * STAGES mbarriers; 193 KiB for 16-bit DT, one block an SM
 * (at most 227 KiB a block on sm_90). The tile width is a function of N alone (batch invariance:
 * never of M): 256 columns (the widest wgmma, the fewest operand reads per MMA) unless N <= 4096,
 * where a 256-column tile leaves most of the 132 SMs of an H100/H200 idle at a few hundred rows
 * (N = 4096, M = 512: 64 tiles), 128 there. compiler/lower.c uses it when every target of the
 * artifact is sm_90a, gemm.cuh otherwise. */
#define KILN_GEMM90_BM 128
#define KILN_GEMM90_BN(N) ((N) > 4096 ? 256 : 128)
#define KILN_GEMM90_BK 64
#define KILN_GEMM90_STAGES(bn) ((bn) == 256 ? 4 : 6)
#define KILN_GEMM90_THREADS 384
#define KILN_GEMM90_SMEM(esz, bn)                                                                 \
    (KILN_GEMM90_STAGES(bn) * (KILN_GEMM90_BM + (bn)) * KILN_GEMM90_BK * (esz) + 1024 +         \
     2 * KILN_GEMM90_STAGES(bn) * 8)

/* Hopper's skinny GEMM (templates/gemm90.cuh's gemm90_skinny, sm_90a only): gemm_skinny's job
 * (below) on wgmma and TMA. A block is one consumer warpgroup and one producer warp; it owns a tile
 * of KILN_SKINNY90_ROWS weight rows (gated: half of them gate rows and their up rows) and one of
 * SPLITS parts of K, streamed through a ring of KILN_SKINNY90_STAGES slices of KILN_GEMM90_BK
 * elements, each the step's x rows (a box of KILN_SKINNY_MAX rows, zeros past M) and the tile's
 * rows; two blocks an SM.
 *   grid = (TILES, SPLITS), TILES = KILN_SKINNY90_TILES(N, gated), SPLITS from compiler/lower.c's
 *   lower_skinny90_splits; block = KILN_SKINNY90_THREADS; dynamic shared memory
 *   KILN_SKINNY90_SMEM; tx, tw: TMA maps of x and w with boxes of KILN_SKINNY_MAX and
 *   KILN_SKINNY90_ROWS / 2 rows (runtime/kcuda.c's kcuda_gemm90_maps); part: float
 *   [KILN_SKINNY90_PART(SPLITS, TILES)] (none for SPLITS 1); count: unsigned [TILES * 4] (a
 *   counter a consumer warp of a tile), zero before the first launch, left zero by every
 *   launch. */
#define KILN_SKINNY90_ROWS 128
#define KILN_SKINNY90_THREADS 160
#define KILN_SKINNY90_STAGES 4
#define KILN_SKINNY90_TILES(n, gated)                                                             \
    ((gated) ? ((n) / 2 + KILN_SKINNY90_ROWS / 2 - 1) / (KILN_SKINNY90_ROWS / 2)                  \
             : ((n) + KILN_SKINNY90_ROWS - 1) / KILN_SKINNY90_ROWS)
#define KILN_SKINNY90_SMEM                                                                        \
    (KILN_SKINNY90_STAGES * (KILN_SKINNY_MAX + KILN_SKINNY90_ROWS) * KILN_GEMM90_BK * 2 + 1024 + \
     2 * KILN_SKINNY90_STAGES * 8)
/* a partial per (part, tile, consumer warp): 64 floats a lane */
#define KILN_SKINNY90_PART(splits, tiles)                                                         \
    ((splits) > 1 ? (long long)(splits) * (long long)(tiles) * 4 * 32 * 64 : 0LL)

/* The skinny GEMM (templates/gemv.cuh's gemm_skinny): with kilnc compile --gemm kiln, every 16-bit
 * linear of a decode step of more than gemv_max and at most KILN_SKINNY_MAX rows (batches of 9 to
 * 64 sequences), where the product is still bound by the bytes of the weight, which it streams
 * once.
 *   grid = (ceil(TILES / WARPS), SPLITS), block = 32 * WARPS threads, dynamic shared memory
 *   KILN_SKINNY_SMEM(MMAX, WARPS, STAGES) (above 48 KiB: the launcher sets the attribute; one
 *   block an SM): TILES = ceil(NOUT / OPB) weight tiles of 16 rows (OPB = 16 outputs, or 8 for
 *   GATED), WARPS tiles a block (one a warp, sharing the block's x slices), K in SPLITS parts
 *   (split-K across blocks), a ring of STAGES slices; all three from lower_skinny_shape
 *   (compiler/lower.h), which fits the ring to every target's shared memory.
 *   part: float [KILN_SKINNY_PART(SPLITS, TILES, MMAX)] scratch (none for SPLITS 1); count:
 *   unsigned [TILES], zero before the first launch, and every launch leaves it zero.
 * K is streamed in slices of KILN_SKINNY_KC elements (cp.async; STAGES - 1 in flight while one
 * is multiplied): each slice holds the MMAX rows of x and each warp's 16 weight rows, every row
 * padded by KILN_SKINNY_PAD elements (272 bytes apart: the 8 row addresses of an ldmatrix phase
 * fall in 8 distinct bank groups). */
#define KILN_SKINNY_MAX 64
/* TILES: the weight tiles of an [n, K] weight in templates/gemv.cuh's kernels (the GEMV's and the
 * skinny GEMM's): 16 rows, or for a gated weight 8 gate rows and their 8 up rows. */
#define KILN_GEMV_TILES(n, gated) ((gated) ? ((n) / 2 + 7) / 8 : ((n) + 15) / 16)
#define KILN_SKINNY_KC 128
#define KILN_SKINNY_PAD 8
#define KILN_SKINNY_SMEM(mmax, warps, stages)                                                     \
    ((stages) * ((mmax) + (warps) * 16) * (KILN_SKINNY_KC + KILN_SKINNY_PAD) * 2)
/* The skinny GEMM of an INT4 weight (templates/gemv.cuh's gemm_skinny_int4: gemv_int4's layout,
 * group size G): in every build but --batch-invariant, every INT4 linear of a decode step of more
 * than gemv_max rows, in row groups of MMAX (KILN_SKINNY_MAX), and of a prefill step of
 * gemv_max < rows <= MMAX. A warp owns KILN_SKINNY4_RT tiles (x read from shared
 * memory once for both); a slice of the ring holds the MMAX rows of x (256 bytes each, unpadded:
 * the kernel swizzles them), each warp's RT * 16 weight rows (64 bytes each) and their
 * KILN_SKINNY4_SZS(G) scale/zero entries a row (8 bytes each: one when G % 128 == 0, else the most
 * groups a slice can touch).
 *   grid = (ceil(M / MMAX), ceil(UNITS / WARPS), SPLITS), UNITS = ceil(TILES /
 *   KILN_SKINNY4_RT), block = 32 * WARPS, dynamic shared memory KILN_SKINNY4_SMEM(MMAX, WARPS,
 *   STAGES, G); part: float [groups * KILN_SKINNY_PART(SPLITS, UNITS * KILN_SKINNY4_RT, MMAX)];
 *   count: unsigned [groups * UNITS], zero before the first launch, and every launch leaves it
 *   zero (groups: the most row groups a launch has). */
#define KILN_SKINNY4_RT 2
/* The units (a warp's tiles) of an [n, K] weight: a tile each in gemm_skinny (g4 0), KILN_SKINNY4_RT
 * in gemm_skinny_int4 (g4: its group size), the last one partial. */
#define KILN_SKINNY_UNITS(n, gated, g4)                                                           \
    ((g4) ? (KILN_GEMV_TILES(n, gated) + KILN_SKINNY4_RT - 1) / KILN_SKINNY4_RT                   \
          : KILN_GEMV_TILES(n, gated))
#define KILN_SKINNY4_SZS(g) ((g) % 128 == 0 ? 1 : 127 / (g) + 2)
#define KILN_SKINNY4_SMEM(mmax, warps, stages, g)                                                 \
    ((stages) * ((mmax) * KILN_SKINNY_KC * 2 +                                                    \
                 (warps) * KILN_SKINNY4_RT * 16 * (KILN_SKINNY_KC / 2 + KILN_SKINNY4_SZS(g) * 8)))
/* The ring's bytes of gemm_skinny (g4 0) or gemm_skinny_int4 (g4 its group size). */
#define KILN_SKINNY_RING(mmax, warps, stages, g4)                                                 \
    ((g4) ? KILN_SKINNY4_SMEM(mmax, warps, stages, g4) : KILN_SKINNY_SMEM(mmax, warps, stages))
#define KILN_SKINNY_PART(splits, tiles, mmax)                                                     \
    ((splits) > 1 ? (long long)(splits) * (long long)(tiles) * (mmax) * 16 : 0LL)

/* templates/gemv_stream.cuh, the batch-1 GEMV on sm_90+ code: BLOCKS blocks (one an SM of an
 * H100 SXM or H200) of WARPS warps, each warp a ring of D units of SEG elements of weight (wbits
 * bits each: 16, 8 for gemv_stream_fp8, 4 for gemv_stream_int4, whose units also bring their
 * groups' 8-byte (scale, zero) pairs, groups of KILN_GEMV_STREAM_INT4_G); x staged whole (in
 * gemv_stream.cuh's x_at order), at most KILN_GEMV_STREAM_KMAX elements. SEG: the largest
 * multiple of KILN_GEMV_STREAM_CHUNK(wbits) (a 16-byte chunk; INT4: two groups, so that a unit's
 * pairs are whole 16-byte copies) that divides K and is at most KILN_GEMV_STREAM_SEGMAX * 16 /
 * wbits (4 KiB of weight a unit; lower.c's lower_gemv_stream_seg).
 * KILN_GEMV_STREAM_SMEM is what a block uses; it asks for at least KILN_GEMV_STREAM_SMEM_SM
 * (lower.c's lower_gemv_stream_smem, where the targets allow it): more than half of a Hopper
 * SM's 228 KiB, less the 1 KiB each block reserves, so that no two gemv_stream blocks ever share
 * an SM. The hardware puts a launch's blocks wherever they fit: a GEMV launched while every SM
 * held one block of the previous (72 KiB) got two blocks on some SMs and none on others, and ran
 * those SMs' share at half speed (tests/gpu/RESULTS.md, fifteenth session: the Llama-3 8B step
 * 0.78 -> 0.83 of the roofline). Small kernels' blocks still fit beside one. D: the deepest of
 * KILN_GEMV_STREAM_DMAX down to KILN_GEMV_STREAM_DMIN whose block fits every target's limit
 * (lower.c's lower_gemv_stream_depth); more units in flight a warp keep more of the weight read
 * in the memory system (tests/gpu/RESULTS.md, nineteenth session). WARPS: 8, or 16 for INT4,
 * whose units cost the most instructions a byte: with 8 each warp was busy most of the time a
 * unit took to arrive, and 16 took the Llama-3 8B INT4 batch-1 step from 0.449 to 0.487 of its
 * roofline (tests/gpu/RESULTS.md, twenty-first session; bf16 and FP8 measured within 1-2%). */
#define KILN_GEMV_STREAM_BLOCKS 132
#define KILN_GEMV_STREAM_WARPS(wbits) ((wbits) == 4 ? 16 : 8)
#define KILN_GEMV_STREAM_DMIN 2
#define KILN_GEMV_STREAM_DMAX 4
#define KILN_GEMV_STREAM_KMAX 16384
#define KILN_GEMV_STREAM_SEGMAX 2048
#define KILN_GEMV_STREAM_INT4_G 128
#define KILN_GEMV_STREAM_CHUNK(wbits) ((wbits) == 4 ? 2 * KILN_GEMV_STREAM_INT4_G : 128 / (wbits))
#define KILN_GEMV_STREAM_SLOT(seg, wbits)                                                         \
    ((seg) * (wbits) / 8 + ((wbits) == 4 ? (seg) / KILN_GEMV_STREAM_INT4_G * 8 : 0))
#define KILN_GEMV_STREAM_SMEM(warps, d, seg, k, esz, wbits)                                       \
    ((warps) * (d) * KILN_GEMV_STREAM_SLOT(seg, wbits) + (k) * (esz) + (warps) * (d) * 8)
#define KILN_GEMV_STREAM_SMEM_SM (116 * 1024)

#endif
