/* lower — turns the planned graph into what the GPU runs: the kernel instances (template
 * instantiations, deduplicated), the launch schedules for prefill and decode, the weights the
 * shard must hold in runtime layout, and the constant tables (rope frequencies, ALiBi slopes).
 * The result fills an artifact manifest (runtime/artifact.h); codegen_source turns its kernel
 * instances into the generated translation unit.
 *
 * A sharded graph (kilnc --tp) lowers to one rank's program: its collectives become collective
 * steps, and what differs by rank (a vocabulary-split embedding's first row, the first ALiBi
 * head) becomes a KA_ARG_RANK launch argument, so the kernels are the same on every rank. The
 * vocabulary-split LM head writes its float block to scratch; an all-gather and gather_ranks
 * put the ranks' blocks into the logits.
 *
 * Not lowered yet (a clear error names the node): activation slices other than the q/k/v views
 * of a fused projection, activation concatenation, MoE shared experts, an attention whose q, k
 * and v do not come from one fused projection, an all-reduce of logits.
 */
#ifndef KILN_LOWER_H
#define KILN_LOWER_H

#include "artifact.h"
#include "kc.h"

typedef struct lowered {
    ka_manifest m;
    int ninst;
    char **inst_params; /* per kernel: the C++ parameter list of its wrapper */
    char **inst_call;   /* per kernel: the template call */
    int *inst_min_ctas; /* per kernel: __launch_bounds__'s minimum CTAs an SM (0: not given) */
    int *weight_node;   /* per weight: the const node whose value it holds */
} lowered;

/* The graph must have been through plan_memory. */
int lower(kc *c, lowered *out, kerr *err);
void lowered_free(lowered *l);

/* Whether a kernel step's arguments fit its kernel's parameters (`params`, the wrapper's
 * parameter list as kern() records it, e.g. "const kiln_step st, const DT *x, int M"): as many
 * arguments as parameters, and each of a kind that makes that parameter's C type when the runtime
 * packs it (runtime/engine.c: the kiln_step by value; a device pointer for every pointer type; an
 * int for I32, M and RANK; a float for F32). A step's arguments and its kernel's parameters are
 * written in two places in lower.c (add_arg, kern); lower() checks every step with this, so a
 * mismatch fails the compile instead of launching a kernel on misread arguments. -1 and an error
 * naming the argument otherwise. */
int lower_check_args(const char *params, const ka_step *s, kerr *err);

/* The generated CUDA translation unit (banner, includes, one wrapper per kernel). */
char *codegen_source(const lowered *l, const char *model_name);

/* The block size of the GEMV of an [N, K] weight (gated: N/2 outputs), as gemv_step launches it;
 * kiln-ktest's cases and benchmark use the same rule. */
int lower_gemv_threads(int64_t N, int64_t K, int gated, int step);
/* Rows per group of the GEMV (its MMAX) in a --batch-invariant artifact, whose decode schedule runs
 * it at every batch: 16 (two 8-column tiles per mma chain) reads each weight tile half as often as
 * 8 at batches over 8. The default build's GEMV takes up to 8 rows (gemv_max), one group of 8. */
#define LOWER_GEMV_GROUP_INVARIANT 16

/* The shared memory one block may opt in to on sm_XY (CUDA's per-architecture limit): 227 KiB on
 * Hopper and Blackwell's data-center parts, 163 KiB on the A100, 99 KiB on the others. kilnc
 * compile keeps the least over its --sm targets (kc.smem_block). */
int lower_smem_optin(int sm);
/* Whether an [N, K] linear's one-row steps take templates/gemv_stream.cuh on sm_90+ code, its
 * weight of wbits bits an element (16, or 8: FP8 with a scale per row, gemv_stream_fp8): builds
 * with such a target, without --batch-invariant, K a whole number of 16-byte chunks and up to
 * KILN_GEMV_STREAM_KMAX, its shared memory at KILN_GEMV_STREAM_DMIN within kc.smem_block; its
 * ring depth (the deepest from KILN_GEMV_STREAM_DMAX down whose block fits kc.smem_block); and
 * its unit of weight (SEG elements: the largest multiple of a chunk's 128 / wbits that divides K,
 * at most KILN_GEMV_STREAM_SEGMAX * 16 / wbits: 4 KiB). esize: the bytes of x's elements. */
int lower_gemv_stream(const kc *c, int64_t N, int64_t K, int gated, int wbits);
int lower_gemv_stream_depth(const kc *c, int64_t K, int esize, int wbits);
int lower_gemv_stream_seg(int64_t K, int wbits);
/* The shared memory a gemv_stream block of that K asks for: what it uses, raised to
 * KILN_GEMV_STREAM_SMEM_SM (one block an SM; kernels/kiln_gemm.h) as far as every target allows
 * (kc.smem_block). */
int lower_gemv_stream_smem(const kc *c, int64_t K, int esize, int wbits);

/* The skinny GEMM's units (warps) a block (*warps), K parts (*splits) and ring slices (*stages;
 * 0: none fits) for an [N, K] weight (gated: N/2 outputs), 16-bit (g4 0: gemm_skinny) or INT4 of
 * group size g4 (gemm_skinny_int4), in blocks of at most smem_block bytes of shared memory, as
 * lower.c launches it (kernels/kiln_gemm.h); kiln-ktest uses the same rule. */
void lower_skinny_shape(int64_t N, int64_t K, int gated, int g4, int smem_block, int *warps,
                        int *splits, int *stages);

/* gemm90_skinny's K parts for an [N, K] weight (gated: N/2 outputs), as lower.c launches it
 * (kernels/kiln_gemm.h); kiln-ktest uses the same rule. */
int lower_skinny90_splits(int64_t N, int64_t K, int gated);

/* Whether kiln's GEMM is the Hopper kernel (templates/gemm90.cuh, sm_90a only): with --gemm kiln
 * when every target is sm_90a. kilnc compile then keeps PTX for compute_90a, not compute_90. */
int lower_gemm90(const kc *c);

/* Prints the schedules in text (kilnc graph --dump-after=schedule). */
void lower_print(const lowered *l, FILE *f);

#endif
