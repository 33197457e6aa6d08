/* kcuda — the CUDA driver API, loaded at run time with dlopen.
 *
 * kiln never links libcuda: the library exists only where a driver is installed, and a binary
 * that links it cannot even start elsewhere. kcuda_load() dlopens libcuda.so.1, resolves every
 * entry point below through cuGetProcAddress (so each gets the version this header was written
 * against), and fails with one clear sentence when there is no driver or no GPU.
 *
 * KCU(c, call, err) is the one check macro: on failure it appends
 * "file:line: cuXxx(...) failed: CUDA_ERROR_NAME (description)" to err and returns -1.
 */
#ifndef KILN_CUDA_H
#define KILN_CUDA_H

#include <cuda.h>

#include "util.h"

/* X(name): every driver entry point kiln uses. */
#define KCUDA_FUNCS(X)                                                                          \
    X(cuInit) X(cuDriverGetVersion) X(cuDeviceGet) X(cuDeviceGetCount) X(cuDeviceGetName)       \
    X(cuDeviceGetAttribute) X(cuDeviceTotalMem) X(cuDevicePrimaryCtxRetain)                     \
    X(cuDevicePrimaryCtxRelease) X(cuCtxSetCurrent) X(cuModuleLoadData)     \
    X(cuModuleLoadDataEx) X(cuModuleUnload) X(cuModuleGetFunction) X(cuFuncSetAttribute)        \
    X(cuFuncGetAttribute) X(cuLaunchKernel) X(cuMemAlloc) X(cuMemFree) X(cuMemGetInfo)          \
    X(cuMemAllocHost) X(cuMemFreeHost) X(cuMemcpyHtoD) X(cuMemcpyDtoH) X(cuMemcpyDtoD)          \
    X(cuMemcpyHtoDAsync) X(cuMemcpyDtoHAsync) X(cuMemcpyDtoDAsync) X(cuMemsetD8)                \
    X(cuMemsetD8Async) X(cuMemsetD32Async) X(cuStreamCreate) X(cuStreamDestroy)                 \
    X(cuStreamSynchronize) X(cuStreamBeginCapture) X(cuStreamEndCapture)                        \
    X(cuGraphInstantiateWithFlags) X(cuGraphLaunch) X(cuGraphExecDestroy) X(cuGraphDestroy)     \
    X(cuEventCreate) X(cuEventDestroy) X(cuEventRecord) X(cuEventSynchronize)                   \
    X(cuEventElapsedTime) X(cuGetErrorName) X(cuGetErrorString) X(cuDeviceCanAccessPeer)    \
    X(cuCtxEnablePeerAccess) X(cuLaunchKernelEx) X(cuTensorMapEncodeTiled)

typedef struct kcuda {
    void *lib;
    int driver_version; /* e.g. 13000 */
#define X(f) __typeof__(f) *f;
    KCUDA_FUNCS(X)
#undef X
} kcuda;

/* Loads the driver and initialises it. On a machine without a driver or GPU, returns -1 with
 * one sentence saying which. */
int kcuda_load(kcuda *c, kerr *err);
void kcuda_unload(kcuda *c);

/* "CUDA_ERROR_OUT_OF_MEMORY (out of memory)" into buf. */
const char *kcuda_errstr(const kcuda *c, CUresult rc, char *buf, size_t cap);

int kcuda_fail(const kcuda *c, CUresult rc, const char *call, const char *file, int line,
               kerr *err);

/* Whether kernels on this device launch with programmatic dependent launch (PDL): compute
 * capability 9.0 or newer, and KILN_PDL is not "0" (the switch to measure without). Any other
 * value of KILN_PDL than "0" or "1" is refused, naming it. */
int kcuda_pdl_wanted(int cc_major, int *pdl, kerr *err);

/* The one kernel launch of the runtime (and of kiln-ktest): cuLaunchKernelEx, with the
 * programmatic stream serialization attribute when `pdl`. The kernel may then start while the
 * previous kernel in the stream is still running, and must wait for it before touching memory:
 * every kernel template begins with KILN_PDL_ENTER() (kernels/common.cuh). Under stream capture
 * the edge becomes a programmatic edge of the graph. After a node that is not a kernel (a copy,
 * a library's launch without the attribute) the dependency stays a full one. On failure returns
 * -1 with the call, its error and the grid in err. */
int kcuda_launch(const kcuda *c, CUfunction f, unsigned gx, unsigned gy, unsigned gz,
                 unsigned block, unsigned smem, CUstream stream, void **params, int pdl,
                 kerr *err);

/* The two TMA tensor maps of a templates/gemm90.cuh launch (kernels/kiln_gemm.h's launch rules),
 * the one way the runtime and kiln-ktest make them: maps[0] of x (`rows` rows of k 16-bit
 * elements, ldx apart; boxes of bx rows: gemm90's KILN_GEMM90_BM, gemm90_skinny's
 * KILN_SKINNY_MAX), maps[1] of w ([n, k], contiguous; boxes of bw rows: gemm90's tile width,
 * gemm90_skinny's KILN_SKINNY90_ROWS / 2). Boxes are KILN_GEMM90_BK elements (128 bytes) wide,
 * 128-byte swizzled (the kernel's shared layout); elements outside the tensor read as zeros,
 * which is how the kernel's tails in M, N and K are zero. Host only (no GPU work); rows >= 1. */
int kcuda_gemm90_maps(const kcuda *c, CUtensorMap maps[2], CUdeviceptr x, int64_t rows,
                      int64_t k, int64_t ldx, int bx, CUdeviceptr w, int64_t n, int bw, kerr *err);

#define KCU(c, call, err)                                                                       \
    do {                                                                                        \
        CUresult kcu_rc_ = (c)->call;                                                           \
        if (kcu_rc_ != CUDA_SUCCESS)                                                            \
            return kcuda_fail((c), kcu_rc_, #call, __FILE__, __LINE__, (err));                  \
    } while (0)

#endif
