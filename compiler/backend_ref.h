/* backend_ref — the CPU backend (backend.h): a Hugging Face checkpoint run by kilnc's fp32
 * reference interpreter (ref.h), behind the same step interface as the GPU engine.
 *
 * It is slow (plain loops, one sequence per `ref`) and exists so that `kiln run` and `kiln serve`
 * work, and are tested end to end, on a machine without a GPU. The checkpoint is opened as
 * `kilnc ref` opens it (config.json, archspec, graph, bind_weights), then each slot gets its own
 * `ref` with its own KV cache: the scheduler's KV blocks are ignored, and kv_blocks only sizes
 * the scheduler's accounting, so that admission and preemption behave as on the GPU. The limits a
 * compiled artifact has built in (batch, tokens per step, sequence length) are options here.
 */
#ifndef KILN_BACKEND_REF_H
#define KILN_BACKEND_REF_H

#include "artifact.h"
#include "backend.h"
#include "util.h"

/* 0 everywhere: the defaults. */
typedef struct kbr_opts {
    int max_batch;    /* sequences per step (default 8) */
    int max_tokens;   /* tokens per step (default 256, at least max_batch) */
    int max_seq_len;  /* prompt + generated tokens (default: max_position_embeddings, at most
                       * 2048) */
    int kv_blocks;    /* KV blocks the scheduler may hand out (default: max_batch sequences of
                       * max_seq_len) */
    /* the linears' weights rounded as kilnc compile --quant rounds them ("fp8" or "int4";
     * NULL: as the checkpoint has them), by GPTQ on the first calib_tokens tokens of calib_path
     * when it is set (kilnc --calibrate, --calibrate-tokens; 0: its default) */
    const char *quant, *calib_path;
    int calib_tokens;
} kbr_opts;

/* The defaults' bounds, also the ranges of the command-line options. */
#define KBR_MAX_BATCH 256
#define KBR_MAX_TOKENS 65536
#define KBR_DEFAULT_SEQ_LEN 2048

/* Opens MODEL_DIR (config.json and safetensors) for the CPU. Errors name the file or the option
 * (--max-batch, --max-tokens, --max-seq-len, --kv-blocks), with expected vs got. */
kbackend *kbr_open(const char *model_dir, const kbr_opts *o, kerr *err);

#endif
