/* roofline — what bounds a model's speed on this GPU, for `kiln bench` (cmd_bench.c).
 *
 * Two halves. kroof_measure() measures the hardware, in the calling process and before a model
 * is loaded: the device-to-device copy bandwidth (cuMemcpyDtoD of a 1 GiB buffer, best of
 * several; the bytes read plus the bytes written over the time, which is the rate a decode
 * step's weight reads can at best approach) and the bf16 tensor-core GEMM peak (cuBLASLt,
 * 8192 x 8192 x 8192 on random data, best of several; 2 M N K over the time; not measured where
 * cuBLASLt cannot be loaded, as on a standalone executable's driver-only target). It runs on GPU 0,
 * the engine's, and frees its buffers before it returns; GPU 0's primary context stays retained
 * until kroof_gpu_free (below), so the engine finds it made.
 *
 * kroof_model_of() reads from a compiled model's manifest what a step must move and compute.
 * The weights a decode step reads in full are the ones its schedule names, except tables that
 * only an embedding kernel reads (one row per token: they are not counted); a tied LM head is
 * read in full by the logits GEMV, so it counts. The KV cache read per token of context is
 * n_kv x (head_dim + v_dim) elements per layer (2 x n_kv x head_dim for ordinary attention;
 * one [latent | k_pe] row for multi-head latent attention, which has no V cache). Prefill FLOPs are 2 x tokens x the elements of every
 * matrix read in full, except the LM head, which the prefill applies to one row per sequence,
 * plus the attention's 4 x (query heads x head_dim) per causal (query, key) pair per layer. The
 * query width of a layer is the input width of its GEMM labelled "attn.o" (what every archspec
 * in archspecs/ calls the output projection; "attn.o.part" when the shard pass split it); a
 * model without one is assumed to have query width = hidden, and kroof_model says so.
 *
 * A tensor-parallel artifact's manifest is one rank's program (artifact.h), so its figures are
 * per rank over one GPU's measured rates: the roofline of tp alike GPUs running in parallel,
 * with the collectives' time not in it.
 *
 * Deliberate simplifications: a mixture-of-experts layer counts every expert (a decode step of
 * one token reads only its top-k, and a prefill token multiplies only those), so for MoE models
 * the rooflines are loose and the ratios overstate; attention windows and ALiBi are not
 * modelled (a full causal triangle is counted).
 */
#ifndef KILN_ROOFLINE_H
#define KILN_ROOFLINE_H

#include <stdint.h>

#include "artifact.h"
#include "util.h"

#define KROOF_COPY_BYTES ((size_t)1 << 30) /* the copy bandwidth's buffer */
#define KROOF_GEMM_N 8192                  /* the GEMM peak's M = N = K */
#define KROOF_REPS 10                      /* timed repetitions of each (after warm-ups) */
#define KROOF_SUSTAIN_MS 400               /* the sustained rate's GEMMs back to back, about (at
                                            * least 20 runs), the last half timed as one */

typedef struct kroof_hw {
    char gpu[256];         /* cuDeviceGetName */
    int sm_major, sm_minor, sms;
    double memory;         /* bytes of device memory */
    int driver_version;    /* e.g. 13000 */
    double copy_bw;        /* bytes/s: (read + written) / time */
    double gemm_flops;     /* FLOP/s: 2 M N K / time, bf16 in and out, fp32 accumulation; 0:
                              not measured, gemm_missing says why */
    char gemm_missing[1024]; /* kgemm_loadable's message where cuBLASLt cannot be loaded, or "" */
    double gemm_sustained; /* FLOP/s of the same GEMM run back to back for ~KROOF_SUSTAIN_MS
                              (gemm_sustained_runs times; a long prefill run repeatedly is nearer
                              this rate; gemm_flops, the best of short runs, is the ratios' peak) */
    int gemm_sustained_runs;
    double gemm_fp8_flops; /* the same GEMM in e4m3 (bf16 out) on sm_89 and newer; 0: not
                              measured (an older GPU, no cuBLASLt, or cuBLASLt could not) */
} kroof_hw;

/* Measures GPU 0 into *hw. Returns what must outlive the engine loaded next, or NULL with a
 * message (no driver, no GPU, out of memory): the driver and GPU 0's primary context, still
 * retained, because the GEMM measurement started the CUDA runtime (cuBLASLt's) in that context
 * and the engine's cuBLASLt goes on in it. Every buffer is freed before it returns. */
typedef struct kroof_gpu kroof_gpu;
kroof_gpu *kroof_measure(kroof_hw *hw, kerr *err);
/* After the engine is freed. */
void kroof_gpu_free(kroof_gpu *g);

typedef struct kroof_model {
    int elsize;                 /* bytes of the model's dtype (bf16, f16) */
    int64_t weight_bytes;       /* read in full by a decode step */
    int64_t gather_bytes;       /* embedding tables, read one row per token: not counted */
    double matrix_params;       /* elements of the matrices read in full, the LM head excluded */
    double head_params;         /* the LM head's elements (0: an embedding model) */
    int fp8_gemm;               /* its prefill GEMMs run in e4m3 (FP8 weights, W8A8): the
                                 * prefill roofline takes the FP8 GEMM peak */
    int64_t kv_bytes_per_token; /* K and V of every layer, per token of context */
    int64_t q_width;            /* query heads x head_dim, summed over the layers */
    int q_width_assumed;        /* no "attn.o" GEMM found: hidden per KV layer assumed */
} kroof_model;

/* From a manifest ka_read checked (so every index in it is in range). */
void kroof_model_of(const ka_manifest *m, kroof_model *r);

/* Bytes a decode step of `ctx_sum` tokens of context in all (each sequence's cached tokens
 * plus its new one, summed over the batch) must read. */
double kroof_decode_bytes(const kroof_model *r, double ctx_sum);

/* FLOPs of prefilling `tokens` tokens of one sequence from position 0 (the LM head on the last
 * row only). */
double kroof_prefill_flops(const kroof_model *r, int64_t tokens);

#endif
