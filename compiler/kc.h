/* kc — the compiler's one context, passed first to every pass and command.
 *
 * kilnc runs once and exits: what a kc owns is freed by kc_free at the end, and passes may
 * allocate without tracking small bookkeeping beyond that.
 */
#ifndef KILN_KC_H
#define KILN_KC_H

#include "config.h"
#include "graph.h"
#include "registry.h"
#include "safetensors.h"
#include "spec.h"
#include "util.h"

#define KC_MAX_TP 64 /* --tp range: far above one node's GPUs, low enough to list splits */

/* --quant: how bind_weights quantises the linear weights of a bf16/fp32 checkpoint (quant.h) */
typedef enum {
    KC_QUANT_NONE,
    KC_QUANT_FP8,  /* e4m3, one scale per output row */
    KC_QUANT_INT4, /* 4 bits, asymmetric, a scale and zero point per group of input columns */
} kc_quant;

typedef struct kc {
    /* inputs */
    char *model_dir;
    char *config_path;
    config *cfg;
    st_set *weights;      /* NULL when the folder has no safetensors (graph-only runs) */
    registry *reg;
    spec_info own_spec;   /* --spec FILE */
    const spec_info *spec;
    kgraph *g;

    /* options */
    int strict;           /* unused checkpoint tensors are errors */
    int allow_nonfinite;  /* NaN and Inf in weights are warnings, not errors */
    int max_tokens;       /* tokens per step the buffers are sized for (plan_memory) */
    int max_seqs;         /* sequences per step */
    int max_seq_len;      /* tokens per sequence (prompt + generated) */
    st_dtype act_dtype;   /* compute dtype on the GPU: BF16 or F16 */
    kc_quant quant_mode;  /* --quant fp8|int4: linear weights rounded at bind time (quant.h) */
    const char *calib_path; /* --calibrate FILE: --quant rounds by GPTQ calibrated on its text
                             * (gptq.h); NULL: round to nearest */
    int calib_tokens;     /* --calibrate-tokens (0: GPTQ_TOKENS) */
    int calib_ran;        /* tokens the calibration ran (bind_weights) */
    int gemm_kiln;        /* --gemm kiln: prefill linears on kiln's own GEMM kernel, not cuBLASLt */
    int sm90a_only;       /* every --sm target is sm_90a (Hopper's arch-specific instructions may be
                           * used: kiln's GEMM is then templates/gemm90.cuh, lower.c) */
    int sm90;             /* some --sm target is sm_90 or newer: lower.c adds the steps that run only
                           * on such code (templates/gemv_stream.cuh; ka_size_runs) */
    int smem_block;       /* the shared memory a block may have on every --sm target (the least
                           * of their opt-in limits; 0: unknown, lower.c assumes sm_80's) */
    int sm_fp8;           /* every --sm target is sm_89 or newer: FP8 tensor cores (lower.c runs an
                           * FP8 weight's prefill GEMM on them, cuBLASLt's W8A8) */
    int fp8_dequant;      /* --fp8-gemm dequant: an FP8 weight's GEMM is bf16 on the weight
                           * dequantised into scratch (weight-only numerics), never W8A8 */
    int batch_invariant;  /* --batch-invariant (implies gemm_kiln): lower.c gives every linear one
                           * kernel per schedule, whatever the rows (ka_manifest.batch_invariant) */
    int kv_fp8;           /* --kv-dtype fp8: K and V cached as e4m3 with a scale per token and head
                           * (kernels/kiln_kv8.h; lower.c's kernels, ref.c's rounding) */
    int tp;               /* --tp: ranks the shard pass splits the graph for; 0 = no shard pass
                           * (1 = one rank, with its collectives of one: the TP code path) */
    int64_t slab_bytes;   /* result of plan_memory */
    struct lowered *low;  /* result of schedule: kernels, launch lists, weights (lower.h) */

    /* results of bind_weights */
    uint64_t n_params;    /* elements of the checkpoint tensors the graph uses */
    int n_bound;          /* distinct checkpoint tensors used */
    int n_unused;         /* checkpoint tensors left unused (after the spec's ignore list) */
    int n_ignored;        /* unused but matched by the spec's ignore list */
    struct quant_state *quant; /* quantization_config and the dequantised weights (quant.c) */

    char **overrides;     /* what overrides changed, one line each (overrides.h): check prints
                           * them, compile records them in the manifest */
    int n_overrides;

    kerr warn;            /* warnings, printed by the command */
} kc;

#endif
