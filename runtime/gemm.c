/* gemm — see gemm.h. Row-major Y = X W^T is the column-major product Y^T = W X^T: cuBLASLt's A
 * is W (K x N column-major, transposed), B is X (K x M column-major), D is Y^T (N x M). */
#include "gemm.h"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#include <cublasLt.h>
#pragma GCC diagnostic pop
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WORKSPACE (32u << 20)
#define CACHE 512

/* X(name): every cuBLASLt entry point kiln uses, resolved with dlsym (the header's prototypes
 * give their types; nothing here references the library's symbols at link time). */
#define KLT_FUNCS(X)                                                                            \
    X(cublasLtCreate) X(cublasLtDestroy) X(cublasLtMatmulDescCreate)                            \
    X(cublasLtMatmulDescDestroy) X(cublasLtMatmulDescSetAttribute) X(cublasLtMatrixLayoutCreate) \
    X(cublasLtMatrixLayoutDestroy) X(cublasLtMatmulPreferenceCreate)                            \
    X(cublasLtMatmulPreferenceSetAttribute) X(cublasLtMatmulPreferenceDestroy)                  \
    X(cublasLtMatmulAlgoGetHeuristic) X(cublasLtMatmul)

typedef struct klt {
    void *lib;
#define X(f) __typeof__(f) *f;
    KLT_FUNCS(X)
#undef X
} klt;

typedef struct entry {
    int64_t M, N, K, ldx, ldy;
    int f16, out_f32, bias, fp8, used;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulAlgo_t algo;
} entry;

struct kgemm {
    const kcuda *cu;
    klt lt;
    cublasLtHandle_t h;
    CUdeviceptr ws;
    entry cache[CACHE];
    int n;
};

/* The soname of the cuBLAS the build was compiled against first, then the next and the previous
 * major version: cuBLASLt's C API and the structs kiln passes (opaque 64-byte algo and
 * heuristic records) have kept their layout across them. The runtime path (-rpath of the CUDA
 * toolkit, LD_LIBRARY_PATH, ldconfig) is searched as for any dlopen. */
static void *lt_open(const char *why, kerr *err)
{
    const int majors[] = {CUBLAS_VER_MAJOR, CUBLAS_VER_MAJOR + 1, CUBLAS_VER_MAJOR - 1};
    char first[256] = "";
    void *lib = NULL;
    for (size_t i = 0; i < sizeof majors / sizeof majors[0] && !lib; i++) {
        char name[64];
        snprintf(name, sizeof name, "libcublasLt.so.%d", majors[i]);
        lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
        if (!lib && !first[0])
            snprintf(first, sizeof first, "%s", dlerror());
    }
    if (!lib)
        kerr_add(err, "%s needs cuBLASLt, and it cannot be loaded (libcublasLt.so.%d, .so.%d and "
                      ".so.%d tried; %s): install cuBLAS (CUDA %d's libcublasLt.so.%d, on "
                      "LD_LIBRARY_PATH)",
                 why, majors[0], majors[1], majors[2], first, CUBLAS_VER_MAJOR, CUBLAS_VER_MAJOR);
    return lib;
}

int kgemm_loadable(const char *why, kerr *err)
{
    void *lib = lt_open(why, err);
    if (!lib)
        return -1;
    dlclose(lib);
    return 0;
}

static int klt_load(klt *lt, const char *why, kerr *err)
{
    memset(lt, 0, sizeof *lt);
    if (!(lt->lib = lt_open(why, err)))
        return -1;
    int missing = 0;
#define X(f)                                                                                    \
    lt->f = (__typeof__(lt->f))dlsym(lt->lib, #f);                                              \
    if (!lt->f && !missing++)                                                                   \
        kerr_add(err, "%s needs cuBLASLt, and the libcublasLt loaded lacks %s: install cuBLAS " \
                      "%d",                                                                     \
                 why, #f, CUBLAS_VER_MAJOR);
    KLT_FUNCS(X)
#undef X
    if (missing) {
        dlclose(lt->lib);
        lt->lib = NULL;
        return -1;
    }
    return 0;
}

static int lt_fail(cublasStatus_t st, const char *what, kerr *err)
{
    return kerr_add(err, "cuBLASLt %s failed: status %d", what, (int)st);
}

static void drop(const klt *lt, entry *e)
{
    lt->cublasLtMatmulDescDestroy(e->op);
    lt->cublasLtMatrixLayoutDestroy(e->a);
    lt->cublasLtMatrixLayoutDestroy(e->b);
    lt->cublasLtMatrixLayoutDestroy(e->d);
}

kgemm *kgemm_new(const kcuda *cu, const char *why, kerr *err)
{
    kgemm *g = xcalloc(1, sizeof *g);
    g->cu = cu;
    if (klt_load(&g->lt, why, err)) {
        free(g);
        return NULL;
    }
    cublasStatus_t st = g->lt.cublasLtCreate(&g->h);
    if (st != CUBLAS_STATUS_SUCCESS) {
        lt_fail(st, "cublasLtCreate", err);
        dlclose(g->lt.lib);
        free(g);
        return NULL;
    }
    CUresult rc = cu->cuMemAlloc(&g->ws, WORKSPACE);
    if (rc != CUDA_SUCCESS) {
        kcuda_fail(cu, rc, "cuMemAlloc(gemm workspace)", __FILE__, __LINE__, err);
        g->lt.cublasLtDestroy(g->h);
        dlclose(g->lt.lib);
        free(g);
        return NULL;
    }
    return g;
}

void kgemm_free(kgemm *g)
{
    if (!g)
        return;
    for (int i = 0; i < g->n; i++)
        drop(&g->lt, &g->cache[i]);
    if (g->ws)
        g->cu->cuMemFree(g->ws);
    g->lt.cublasLtDestroy(g->h);
    dlclose(g->lt.lib);
    free(g);
}

static entry *plan(kgemm *g, int f16, int out_f32, int bias, int fp8, int64_t M, int64_t N,
                   int64_t K, int64_t ldx, int64_t ldy, kerr *err)
{
    for (int i = 0; i < g->n; i++) {
        entry *e = &g->cache[i];
        if (e->M == M && e->N == N && e->K == K && e->ldx == ldx && e->ldy == ldy &&
            e->f16 == f16 && e->out_f32 == out_f32 && e->bias == bias && e->fp8 == fp8)
            return e;
    }
    if (g->n == CACHE) { /* full: start over (shapes per model are few; this is a guard) */
        for (int i = 0; i < g->n; i++)
            drop(&g->lt, &g->cache[i]);
        g->n = 0;
    }
    entry *e = &g->cache[g->n];
    memset(e, 0, sizeof *e);
    e->M = M, e->N = N, e->K = K, e->ldx = ldx, e->ldy = ldy;
    e->f16 = f16, e->out_f32 = out_f32, e->bias = bias, e->fp8 = fp8;
    cudaDataType ct = f16 ? CUDA_R_16F : CUDA_R_16BF, dt = out_f32 ? CUDA_R_32F : ct;
    cudaDataType ab = fp8 ? CUDA_R_8F_E4M3 : ct;
    cublasStatus_t st;
    cublasOperation_t tA = CUBLAS_OP_T, tB = CUBLAS_OP_N;
    const klt *lt = &g->lt;
    if ((st = lt->cublasLtMatmulDescCreate(&e->op, CUBLAS_COMPUTE_32F, CUDA_R_32F)) ||
        (st = lt->cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSA, &tA,
                                                 sizeof tA)) ||
        (st = lt->cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSB, &tB,
                                                 sizeof tB))) {
        lt_fail(st, "matmul descriptor", err);
        return NULL;
    }
    if (bias) {
        cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BIAS;
        cudaDataType bt = ct;
        if ((st = lt->cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep,
                                                     sizeof ep)) ||
            (st = lt->cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                     &bt, sizeof bt))) {
            lt_fail(st, "bias epilogue", err);
            lt->cublasLtMatmulDescDestroy(e->op);
            return NULL;
        }
    }
    if ((st = lt->cublasLtMatrixLayoutCreate(&e->a, ab, (uint64_t)K, (uint64_t)N, K)) ||
        (st = lt->cublasLtMatrixLayoutCreate(&e->b, ab, (uint64_t)K, (uint64_t)M, ldx)) ||
        (st = lt->cublasLtMatrixLayoutCreate(&e->d, dt, (uint64_t)N, (uint64_t)M, ldy))) {
        lt_fail(st, "matrix layout", err);
        return NULL;
    }
    cublasLtMatmulPreference_t pref;
    size_t wsz = WORKSPACE;
    lt->cublasLtMatmulPreferenceCreate(&pref);
    lt->cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsz,
                                             sizeof wsz);
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    st = lt->cublasLtMatmulAlgoGetHeuristic(g->h, e->op, e->a, e->b, e->d, e->d, pref, 1, &res,
                                            &found);
    lt->cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
        kerr_add(err, "cuBLASLt has no algorithm for a %lldx%lldx%lld %s GEMM (status %d)",
                 (long long)M, (long long)N, (long long)K,
                 fp8 ? "e4m3" : f16 ? "fp16" : "bf16", (int)st);
        drop(lt, e);
        return NULL;
    }
    e->algo = res.algo;
    g->n++;
    return e;
}

int kgemm_run(kgemm *g, CUstream stream, int f16, int out_f32, int fp8, int64_t M, int64_t N,
              int64_t K, CUdeviceptr x, int64_t ldx, CUdeviceptr w, CUdeviceptr bias,
              CUdeviceptr y, int64_t ldy, kerr *err)
{
    entry *e = plan(g, f16, out_f32, bias != 0, fp8, M, N, K, ldx, ldy, err);
    if (!e)
        return -1;
    if (bias) {
        void *bp = (void *)(uintptr_t)bias;
        cublasStatus_t st = g->lt.cublasLtMatmulDescSetAttribute(
            e->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof bp);
        if (st)
            return lt_fail(st, "bias pointer", err);
    }
    float one = 1, zero = 0;
    cublasStatus_t st = g->lt.cublasLtMatmul(g->h, e->op, &one, (const void *)(uintptr_t)w, e->a,
                                             (const void *)(uintptr_t)x, e->b, &zero,
                                             (void *)(uintptr_t)y, e->d, (void *)(uintptr_t)y,
                                             e->d, &e->algo, (void *)(uintptr_t)g->ws, WORKSPACE,
                                             (cudaStream_t)stream);
    if (st != CUBLAS_STATUS_SUCCESS)
        return kerr_add(err, "cuBLASLt matmul %lldx%lldx%lld failed: status %d", (long long)M,
                        (long long)N, (long long)K, (int)st);
    return 0;
}
