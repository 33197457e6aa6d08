/* ktest — the kernel test harness, run on the GPU machine (tests/gpu/run.sh).
 *
 * Every kernel template is tested on its own against a CPU reference: fresh random inputs each
 * case, the output poisoned (all bytes 0xFF: NaN in bf16/f16/f32) before the launch so an
 * unwritten element fails, and a relative L2 error against a tolerance that fits the compute
 * dtype. Failures print the first mismatching indices; every case adds a row to the summary
 * table printed at the end.
 *
 * A case builds a tiny translation unit: `#include "<template>.cuh"` plus an extern "C" wrapper
 * instantiating the template, compiled by NVRTC for this GPU, exactly as kilnc compiles
 * generated code.
 */
#ifndef KILN_KTEST_H
#define KILN_KTEST_H

#include <stddef.h>
#include <stdint.h>

#include "kcuda.h"
#include "../../kernels/kiln_enums.h"

typedef struct kt {
    kcuda cu;
    CUcontext ctx;
    CUstream stream;
    char arch[16];      /* "sm_90a" */
    const char *root;   /* repository root (templates/, kernels/) */
    uint64_t rng;
    int cases, failures;
    char *summary;      /* table rows */
    size_t summary_len;
    const char *filter; /* run only cases whose name contains this */
    int compile_only;   /* no GPU: compile each case for sm_80 and sm_90a, run nothing */
    int pdl;            /* launches use programmatic dependent launch (kcuda_pdl_wanted) */
    int compiled;
} kt;

/* Compiles `src` (which #includes templates by name) and loads it; a compile error is a failed
 * case (with the NVRTC log) and returns NULL, after which kt_func/kt_launch of it fail the run.
 * In compile-only mode every device call below does nothing (downloads give zeros, checks
 * pass silently): write cases so that they still run their CPU reference harmlessly. */
CUmodule kt_module(kt *t, const char *name, const char *src);
/* kt_module for a template that exists on sm_90a only (wgmma: templates/gemm90.cuh): compiled for
 * sm_90a alone in compile-only mode. On a GPU, call it only where kt_sm90a(t). */
CUmodule kt_module_sm90a(kt *t, const char *name, const char *src);
/* Whether the GPU (or, in compile-only mode, one of the targets) is sm_90a. */
int kt_sm90a(const kt *t);
/* Whether the GPU's compute capability is at least sm (89: sm_89); in compile-only mode, 1 (the
 * case compiles for every target). */
int kt_sm_at_least(const kt *t, int sm);
CUfunction kt_func(kt *t, CUmodule m, const char *name);
CUdeviceptr kt_alloc(kt *t, size_t bytes);          /* poisoned with 0xFF */
CUdeviceptr kt_upload(kt *t, const void *host, size_t bytes);
void kt_download(kt *t, void *host, CUdeviceptr d, size_t bytes);
void kt_free(kt *t, CUdeviceptr d);
/* Launches (kcuda_launch, the runtime's launch, with t->pdl) and synchronises; a launch or
 * execution error fails the run with the kernel name. */
void kt_launch(kt *t, CUfunction f, const char *name, unsigned gx, unsigned gy, unsigned gz,
               unsigned bx, size_t smem, void **args);

/* Uniform in [-1, 1). */
float kt_randf(kt *t);
void kt_fill(kt *t, float *x, size_t n, float scale);
/* float <-> bf16 arrays (the compute dtype of the tests). */
uint16_t *kt_to_bf16(const float *x, size_t n);
float *kt_from_bf16(const uint16_t *x, size_t n);
/* Rounds x through bf16, so the CPU reference sees exactly the kernel's inputs. */
void kt_round_bf16(float *x, size_t n);

/* Compares and records a summary row; returns 1 when it passes. */
int kt_check(kt *t, const char *case_name, const float *got, const float *want, size_t n,
             double tol);
/* Records a case's result when the check is not a tensor comparison. */
void kt_result(kt *t, const char *case_name, int ok, const char *detail);
/* Whether a case should run (KTEST_FILTER). */
int kt_want(kt *t, const char *case_name);

/* Activation kinds (kernels/kiln_enums.h's kiln_act), their reference in double, and their names
 * for case labels. */
double kt_act(int which, double x);
const char *kt_act_name(int which);

/* The families; each file tests/gpu/ktest_<family>.c defines one. */
void ktest_elementwise(kt *t);
void ktest_gemv(kt *t);
/* `kiln-ktest --bench gemv`: prints the GEMV's weight bandwidth per shape and M; -1 on a failure. */
int ktest_gemv_bench(kt *t);
void ktest_gemm(kt *t);
/* `kiln-ktest --bench gemm`: kiln's GEMM against cuBLASLt in TFLOP/s per shape and M; -1 on a
 * failure (a launch, or an output that differs from cuBLASLt's). */
int ktest_gemm_bench(kt *t);
void ktest_attention(kt *t);
void ktest_mla(kt *t);
void ktest_moe(kt *t);
void ktest_sample(kt *t);
void ktest_collective(kt *t);
void ktest_pdl(kt *t);

#endif
