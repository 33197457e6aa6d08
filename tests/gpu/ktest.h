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

#include "gemm.h"
#include "kcuda.h"
#include "../../kernels/kiln_enums.h"

typedef struct kt {
    kcuda cu;
    CUcontext ctx;
    CUstream stream;
    char arch[16];      /* "sm_90a" */
    int sms;            /* the GPU's SM count (0 with --compile-only) */
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
/* gemv_stream's ring depth for K and a weight of wbits bits (lower_gemv_stream_depth) in a build
 * for sm_90 alone, as kilnc compile builds for an H100 or H200. */
int kt_stream_depth(int K, int wbits);
CUfunction kt_func(kt *t, CUmodule m, const char *name);
CUdeviceptr kt_alloc(kt *t, size_t bytes);          /* poisoned with 0xFF */
CUdeviceptr kt_upload(kt *t, const void *host, size_t bytes);
void kt_download(kt *t, void *host, CUdeviceptr d, size_t bytes);
void kt_free(kt *t, CUdeviceptr d);
/* Launches (kcuda_launch, the runtime's launch, with t->pdl) and synchronises; a launch or
 * execution error fails the run with the kernel name. */
void kt_launch(kt *t, CUfunction f, const char *name, unsigned gx, unsigned gy, unsigned gz,
               unsigned bx, size_t smem, void **args);

/* A driver call whose failure ends the run (exit 2), naming the call, its error and file:line:
 * KT_CU(t, cuMemAlloc(&d, n)). For the benchmarks, where nothing can go on after one. */
void kt_cu(kt *t, CUresult rc, const char *call, const char *file, int line);
#define KT_CU(t, call) kt_cu((t), (t)->cu.call, #call, __FILE__, __LINE__)
/* Relative L2 difference of two bf16 device arrays of n elements (got against want), after the
 * stream's work: the benchmarks' check of an output against cuBLASLt's. */
double kt_rel_l2_bf16(kt *t, CUdeviceptr got, CUdeviceptr want, size_t n);
/* cuBLASLt (runtime/gemm.c's kgemm_new) for a benchmark's comparison, or NULL after saying on
 * stderr why it could not load (`why` names the benchmark). */
kgemm *kt_cublaslt(kt *t, const char *why);
/* The device-to-device copy bandwidth (bytes read + written per second) of a 1 GiB copy, best of
 * 5 after a warm-up, as kiln bench measures it (runtime/roofline.c): the benchmarks' roofline.
 * A failed driver call ends the run. */
double kt_copy_bw(kt *t);

/* Milliseconds of one replay of graph g (instantiated here), the best of `replays` after a
 * warm-up replay. A failed driver call ends the run. */
double kt_graph_ms(kt *t, CUgraph g, int replays);

/* Uniform in [-1, 1). */
float kt_randf(kt *t);
void kt_fill(kt *t, float *x, size_t n, float scale);
/* float <-> bf16 arrays (the compute dtype of the tests). */
uint16_t *kt_to_bf16(const float *x, size_t n);
float *kt_from_bf16(const uint16_t *x, size_t n);
/* Rounds x through bf16, so the CPU reference sees exactly the kernel's inputs. */
void kt_round_bf16(float *x, size_t n);
/* Rounds x through the storage type (bf16, or f16) in place and returns the 16-bit copy to
 * upload. */
uint16_t *kt_to_dt(float *x, size_t n, int f16);

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

/* ktest_gemv.c's weights and CPU reference, shared with ktest_skinny.c (the same semantics). */
/* A weight on the host (the values the kernel multiplies) and on the device. */
typedef struct gweights {
    int N, K, sbc, kb; /* sbc 0: a 16-bit weight (gemv); else gemv_fp8's, kb scales per row */
    int g4;            /* gemv_int4's group G (sbc 0), else 0 */
    float *w;          /* [N, K] the elements' values: bf16/f16, e4m3, or INT4's int4_value */
    float *scale;      /* [N, kb] gemv_fp8's scales, else NULL */
    CUdeviceptr dw, ds; /* ds: gemv_fp8's scales or gemv_int4's sz */
} gweights;
/* A fresh weight [N, K]: U[-1, 1) * 2/sqrt(K) in the storage type (sbc = g4 = 0, wsc unused),
 * or gemv_fp8's (sbc) or gemv_int4's (g4) quantised weight; see ktest_gemv.c. */
void gweights_make(kt *t, gweights *g, int N, int K, int f16, int sbc, float wsc, int g4);
void gweights_free(kt *t, gweights *g);
/* The double-precision reference of M rows of x [M, K]: want[m, o] = x[m] . w[n] (+ b[n]; b may
 * be NULL), gated (w = [gate; up]): act(gate) * up; want is [M, NOUT]. */
void gemv_ref(const float *x, const gweights *g, const float *b, int M, int gated, int act,
              float *want);

/* The families; each file tests/gpu/ktest_<family>.c defines one. */
void ktest_elementwise(kt *t);
void ktest_gemv(kt *t);
/* `kiln-ktest --bench gemv`: prints the GEMV's weight bandwidth per shape and M; -1 on a failure. */
int ktest_gemv_bench(kt *t);
/* `kiln-ktest --bench dequant`: dequant_int4's and dequant_fp8's bytes per second on the Llama-3
 * shapes, over the copy bandwidth. */
int ktest_dequant_bench(kt *t);
void ktest_skinny(kt *t);
/* `kiln-ktest --bench skinny`: gemm_skinny's weight bandwidth at lower_skinny_shape's warps and
 * splits and around them, against cuBLASLt, on the Llama-3 shapes at 16 to 64 rows; -1 on a
 * failure. */
int ktest_skinny_bench(kt *t);
/* `kiln-ktest --bench skinny_int4`: gemm_skinny_int4's INT4 bandwidth on the same shapes. */
int ktest_skinny_int4_bench(kt *t);
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
