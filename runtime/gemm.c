/* gemm — see gemm.h. Row-major Y = X W^T is the column-major product Y^T = W X^T: cuBLASLt's A
 * is W (K x N column-major, transposed), B is X (K x M column-major), D is Y^T (N x M). */
#include "gemm.h"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#include <cublasLt.h>
#pragma GCC diagnostic pop
#include <stdlib.h>
#include <string.h>

#define WORKSPACE (32u << 20)
#define CACHE 512

typedef struct entry {
    int64_t M, N, K, ldx, ldy;
    int f16, out_f32, bias, used;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulAlgo_t algo;
} entry;

struct kgemm {
    const kcuda *cu;
    cublasLtHandle_t h;
    CUdeviceptr ws;
    entry cache[CACHE];
    int n;
};

static int lt_fail(cublasStatus_t st, const char *what, kerr *err)
{
    return kerr_add(err, "cuBLASLt %s failed: status %d", what, (int)st);
}

static void drop(entry *e)
{
    cublasLtMatmulDescDestroy(e->op);
    cublasLtMatrixLayoutDestroy(e->a);
    cublasLtMatrixLayoutDestroy(e->b);
    cublasLtMatrixLayoutDestroy(e->d);
}

kgemm *kgemm_new(const kcuda *cu, kerr *err)
{
    kgemm *g = xcalloc(1, sizeof *g);
    g->cu = cu;
    cublasStatus_t st = cublasLtCreate(&g->h);
    if (st != CUBLAS_STATUS_SUCCESS) {
        lt_fail(st, "cublasLtCreate", err);
        free(g);
        return NULL;
    }
    CUresult rc = cu->cuMemAlloc(&g->ws, WORKSPACE);
    if (rc != CUDA_SUCCESS) {
        kcuda_fail(cu, rc, "cuMemAlloc(gemm workspace)", __FILE__, __LINE__, err);
        cublasLtDestroy(g->h);
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
        drop(&g->cache[i]);
    if (g->ws)
        g->cu->cuMemFree(g->ws);
    cublasLtDestroy(g->h);
    free(g);
}

static entry *plan(kgemm *g, int f16, int out_f32, int bias, int64_t M, int64_t N, int64_t K,
                   int64_t ldx, int64_t ldy, kerr *err)
{
    for (int i = 0; i < g->n; i++) {
        entry *e = &g->cache[i];
        if (e->M == M && e->N == N && e->K == K && e->ldx == ldx && e->ldy == ldy &&
            e->f16 == f16 && e->out_f32 == out_f32 && e->bias == bias)
            return e;
    }
    if (g->n == CACHE) { /* full: start over (shapes per model are few; this is a guard) */
        for (int i = 0; i < g->n; i++)
            drop(&g->cache[i]);
        g->n = 0;
    }
    entry *e = &g->cache[g->n];
    memset(e, 0, sizeof *e);
    e->M = M, e->N = N, e->K = K, e->ldx = ldx, e->ldy = ldy;
    e->f16 = f16, e->out_f32 = out_f32, e->bias = bias;
    cudaDataType ab = f16 ? CUDA_R_16F : CUDA_R_16BF, dt = out_f32 ? CUDA_R_32F : ab;
    cublasStatus_t st;
    cublasOperation_t tA = CUBLAS_OP_T, tB = CUBLAS_OP_N;
    if ((st = cublasLtMatmulDescCreate(&e->op, CUBLAS_COMPUTE_32F, CUDA_R_32F)) ||
        (st = cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSA, &tA, sizeof tA)) ||
        (st = cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSB, &tB, sizeof tB))) {
        lt_fail(st, "matmul descriptor", err);
        return NULL;
    }
    if (bias) {
        cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BIAS;
        cudaDataType bt = ab;
        if ((st = cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep,
                                                 sizeof ep)) ||
            (st = cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt,
                                                 sizeof bt))) {
            lt_fail(st, "bias epilogue", err);
            cublasLtMatmulDescDestroy(e->op);
            return NULL;
        }
    }
    if ((st = cublasLtMatrixLayoutCreate(&e->a, ab, (uint64_t)K, (uint64_t)N, K)) ||
        (st = cublasLtMatrixLayoutCreate(&e->b, ab, (uint64_t)K, (uint64_t)M, ldx)) ||
        (st = cublasLtMatrixLayoutCreate(&e->d, dt, (uint64_t)N, (uint64_t)M, ldy))) {
        lt_fail(st, "matrix layout", err);
        return NULL;
    }
    cublasLtMatmulPreference_t pref;
    size_t wsz = WORKSPACE;
    cublasLtMatmulPreferenceCreate(&pref);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsz,
                                         sizeof wsz);
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    st = cublasLtMatmulAlgoGetHeuristic(g->h, e->op, e->a, e->b, e->d, e->d, pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
        kerr_add(err, "cuBLASLt has no algorithm for a %lldx%lldx%lld %s GEMM (status %d)",
                 (long long)M, (long long)N, (long long)K, f16 ? "fp16" : "bf16", (int)st);
        drop(e);
        return NULL;
    }
    e->algo = res.algo;
    g->n++;
    return e;
}

int kgemm_run(kgemm *g, CUstream stream, int f16, int out_f32, int64_t M, int64_t N, int64_t K,
              CUdeviceptr x, int64_t ldx, CUdeviceptr w, CUdeviceptr bias, CUdeviceptr y,
              int64_t ldy, kerr *err)
{
    entry *e = plan(g, f16, out_f32, bias != 0, M, N, K, ldx, ldy, err);
    if (!e)
        return -1;
    if (bias) {
        void *bp = (void *)(uintptr_t)bias;
        cublasStatus_t st = cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                           &bp, sizeof bp);
        if (st)
            return lt_fail(st, "bias pointer", err);
    }
    float one = 1, zero = 0;
    cublasStatus_t st = cublasLtMatmul(g->h, e->op, &one, (const void *)(uintptr_t)w, e->a,
                                       (const void *)(uintptr_t)x, e->b, &zero,
                                       (void *)(uintptr_t)y, e->d, (void *)(uintptr_t)y, e->d,
                                       &e->algo, (void *)(uintptr_t)g->ws, WORKSPACE,
                                       (cudaStream_t)stream);
    if (st != CUBLAS_STATUS_SUCCESS)
        return kerr_add(err, "cuBLASLt matmul %lldx%lldx%lld failed: status %d", (long long)M,
                        (long long)N, (long long)K, (int)st);
    return 0;
}
