// initcheck_probe — does compute-sanitizer's initcheck see the stores of cuBLASLt's kernels?
//
// tests/gpu/sanitize.sh runs this once plainly and once under `compute-sanitizer --tool initcheck`.
// It issues the same cuBLASLt call as runtime/gemm.c (row-major Y = X W^T as the column-major
// Y^T = W X^T, bf16 in and out, f32 compute, beta 0, the heuristic's first algorithm) into a fresh
// cudaMalloc'd Y, then a plain kernel reads every element of Y.
//
//   plain run:  Y is first filled with NaN (0xFFFF) so that any element the GEMM did not write would
//               survive; the program checks that every element of Y is finite and equals a CPU
//               reference (relative L2 < 1e-2). That proves the GEMM writes all of Y.
//   initcheck:  Y is left uninitialised (no memset: initcheck would count a memset as a write).
//               Any "Uninitialized __global__ memory read" report in read_all then concerns memory
//               the plain run proved written: the tool does not see the GEMM's stores (on sm_90
//               cuBLASLt's kernels store tiles with the tensor memory accelerator, cp.async.bulk).
//
// Build: nvcc -O2 -arch=sm_90 initcheck_probe.cu -lcublasLt -o initcheck_probe
// Usage: initcheck_probe poison|fresh M N K
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CK(x)                                                                                      \
    do {                                                                                           \
        cudaError_t e_ = (x);                                                                      \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));    \
            exit(2);                                                                               \
        }                                                                                          \
    } while (0)
#define LK(x)                                                                                      \
    do {                                                                                           \
        cublasStatus_t s_ = (x);                                                                   \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                         \
            fprintf(stderr, "%s:%d: %s: status %d\n", __FILE__, __LINE__, #x, (int)s_);           \
            exit(2);                                                                               \
        }                                                                                          \
    } while (0)

__global__ void read_all(const __nv_bfloat16 *y, long n, float *sum)
{
    float s = 0;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        s += __bfloat162float(y[i]);
    atomicAdd(sum, s);
}

static float frand(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    return ((*s >> 8) / 16777216.0f) * 2.0f - 1.0f;
}

int main(int argc, char **argv)
{
    if (argc != 5 || (strcmp(argv[1], "poison") && strcmp(argv[1], "fresh"))) {
        fprintf(stderr, "usage: initcheck_probe poison|fresh M N K\n");
        return 2;
    }
    const int poison = strcmp(argv[1], "poison") == 0;
    const long M = atol(argv[2]), N = atol(argv[3]), K = atol(argv[4]);
    __nv_bfloat16 *hx = (__nv_bfloat16 *)malloc(sizeof(__nv_bfloat16) * M * K);
    __nv_bfloat16 *hw = (__nv_bfloat16 *)malloc(sizeof(__nv_bfloat16) * N * K);
    __nv_bfloat16 *hy = (__nv_bfloat16 *)malloc(sizeof(__nv_bfloat16) * M * N);
    unsigned seed = 12345;
    for (long i = 0; i < M * K; i++)
        hx[i] = __float2bfloat16(frand(&seed));
    for (long i = 0; i < N * K; i++)
        hw[i] = __float2bfloat16(frand(&seed));

    __nv_bfloat16 *x, *w, *y;
    float *sum;
    void *ws;
    const size_t wsz = 32u << 20;
    CK(cudaMalloc(&x, sizeof(__nv_bfloat16) * M * K));
    CK(cudaMalloc(&w, sizeof(__nv_bfloat16) * N * K));
    CK(cudaMalloc(&y, sizeof(__nv_bfloat16) * M * N));
    CK(cudaMalloc(&sum, sizeof(float)));
    CK(cudaMalloc(&ws, wsz));
    CK(cudaMemcpy(x, hx, sizeof(__nv_bfloat16) * M * K, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(w, hw, sizeof(__nv_bfloat16) * N * K, cudaMemcpyHostToDevice));
    CK(cudaMemset(sum, 0, sizeof(float)));
    if (poison)
        CK(cudaMemset(y, 0xFF, sizeof(__nv_bfloat16) * M * N));

    cublasLtHandle_t h;
    LK(cublasLtCreate(&h));
    cublasLtMatmulDesc_t op;
    cublasOperation_t tA = CUBLAS_OP_T, tB = CUBLAS_OP_N;
    LK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &tA, sizeof tA));
    LK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tB, sizeof tB));
    cublasLtMatrixLayout_t la, lb, ld;
    LK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, K, N, K));
    LK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, K, M, K));
    LK(cublasLtMatrixLayoutCreate(&ld, CUDA_R_16BF, N, M, N));
    cublasLtMatmulPreference_t pref;
    LK(cublasLtMatmulPreferenceCreate(&pref));
    LK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsz,
                                            sizeof wsz));
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    LK(cublasLtMatmulAlgoGetHeuristic(h, op, la, lb, ld, ld, pref, 1, &res, &found));
    if (!found) {
        fprintf(stderr, "no algorithm\n");
        return 2;
    }
    float one = 1, zero = 0;
    LK(cublasLtMatmul(h, op, &one, w, la, x, lb, &zero, y, ld, y, ld, &res.algo, ws, wsz, 0));
    read_all<<<64, 256>>>(y, M * N, sum);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(hy, y, sizeof(__nv_bfloat16) * M * N, cudaMemcpyDeviceToHost));

    long nonfinite = 0;
    double num = 0, den = 0;
    for (long m = 0; m < M; m++)
        for (long n = 0; n < N; n++) {
            double r = 0;
            for (long k = 0; k < K; k++)
                r += (double)__bfloat162float(hx[m * K + k]) * (double)__bfloat162float(hw[n * K + k]);
            float g = __bfloat162float(hy[m * N + n]);
            if (!isfinite(g))
                nonfinite++;
            num += (g - r) * (g - r);
            den += r * r;
        }
    double rel = sqrt(num / (den > 0 ? den : 1));
    printf("initcheck_probe %s M=%ld N=%ld K=%ld: %ld of %ld elements not written (NaN), rel L2 %.2e\n",
           argv[1], M, N, K, nonfinite, M * N, rel);
    return poison && (nonfinite || !(rel < 1e-2)) ? 1 : 0;
}
