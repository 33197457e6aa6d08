/* gemm — the prefill-sized linears, through cuBLASLt: y[M, N] = x[M, K] . w[N, K]^T (+ bias),
 * row-major activations and PyTorch-layout weights, bf16 or fp16 inputs with fp32 accumulation,
 * output in the input dtype or fp32 (logits). Heuristic choices are cached per shape.
 *
 * kiln never links libcublasLt: kgemm_new dlopens it (the soname of the cuBLAS this build was
 * made with, then its neighbours), so only what uses it needs it: an artifact with cuBLASLt
 * steps (kilnc compile --gemm cublaslt, the default) and the GEMM peak of kiln bench. An
 * artifact compiled with --gemm kiln runs its linears on kiln's own kernel and never loads it. */
#ifndef KILN_GEMM_H
#define KILN_GEMM_H

#include <stdint.h>

#include "kcuda.h"
#include "util.h"

typedef struct kgemm kgemm;

/* Loads cuBLASLt and makes a handle and a workspace on the current context. `why` says what
 * needs cuBLASLt, for the message when the library is missing. */
kgemm *kgemm_new(const kcuda *cu, const char *why, kerr *err);
/* Whether kgemm_new can load cuBLASLt: 0, or -1 with kgemm_new's message for a missing library.
 * For a caller that can do without it (kiln bench's GEMM peak), to tell a missing library, which
 * it reports and goes on without, from kgemm_new's other failures. */
int kgemm_loadable(const char *why, kerr *err);
void kgemm_free(kgemm *g);
/* y[M, N] = x[M, K] . w[N, K]^T (+ bias[N]), row-major, bf16/f16 (f16) in and out (or float out).
 * fp8: x and w are e4m3 (FP8 tensor cores, sm_89 or newer) and y their plain product, unscaled
 * (the caller applies the rows' scales: templates/gemv.cuh's fp8_rescale). */
int kgemm_run(kgemm *g, CUstream stream, int f16, int out_f32, int fp8, int64_t M, int64_t N,
              int64_t K, CUdeviceptr x, int64_t ldx, CUdeviceptr w, CUdeviceptr bias,
              CUdeviceptr y, int64_t ldy, kerr *err);

#endif
