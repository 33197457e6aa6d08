/* kcuda — see kcuda.h. */
#include "kcuda.h"

#include "../kernels/kiln_gemm.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef CUresult (*get_proc_fn)(const char *, void **, int, cuuint64_t,
                                CUdriverProcAddressQueryResult *);

int kcuda_load(kcuda *c, kerr *err)
{
    memset(c, 0, sizeof *c);
    c->lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!c->lib)
        return kerr_add(err, "no NVIDIA driver on this machine (libcuda.so.1 not found: %s); "
                             "kiln needs a GPU to run models (use 'kilnc ref' on the CPU)",
                        dlerror());
    get_proc_fn gpa = (get_proc_fn)dlsym(c->lib, "cuGetProcAddress_v2");
    if (!gpa) {
        kcuda_unload(c);
        return kerr_add(err, "the NVIDIA driver is too old: libcuda.so.1 has no "
                             "cuGetProcAddress_v2 (kiln needs a CUDA 12 or newer driver)");
    }
    int missing = 0;
#define X(f)                                                                                    \
    {                                                                                           \
        CUdriverProcAddressQueryResult q;                                                       \
        void *p = NULL;                                                                         \
        if (gpa(#f, &p, CUDA_VERSION, CU_GET_PROC_ADDRESS_DEFAULT, &q) != CUDA_SUCCESS || !p) { \
            kerr_add(err, "the NVIDIA driver lacks %s (it is older than CUDA %d.%d)", #f,      \
                     CUDA_VERSION / 1000, CUDA_VERSION % 1000 / 10);                            \
            missing = 1;                                                                        \
        }                                                                                       \
        c->f = (__typeof__(c->f))p;                                                             \
    }
    KCUDA_FUNCS(X)
#undef X
    if (missing) {
        kcuda_unload(c);
        return -1;
    }
    CUresult rc = c->cuInit(0);
    if (rc != CUDA_SUCCESS) {
        char b[160];
        kerr_add(err, "the NVIDIA driver is installed but cannot start: cuInit failed: %s",
                 kcuda_errstr(c, rc, b, sizeof b));
        kcuda_unload(c);
        return -1;
    }
    int n = 0;
    if (c->cuDeviceGetCount(&n) != CUDA_SUCCESS || n == 0) {
        kcuda_unload(c);
        return kerr_add(err, "no CUDA GPU is visible (check nvidia-smi and "
                             "CUDA_VISIBLE_DEVICES)");
    }
    c->cuDriverGetVersion(&c->driver_version);
    return 0;
}

void kcuda_unload(kcuda *c)
{
    if (c->lib)
        dlclose(c->lib);
    memset(c, 0, sizeof *c);
}

const char *kcuda_errstr(const kcuda *c, CUresult rc, char *buf, size_t cap)
{
    const char *name = NULL, *desc = NULL;
    if (c->cuGetErrorName)
        c->cuGetErrorName(rc, &name);
    if (c->cuGetErrorString)
        c->cuGetErrorString(rc, &desc);
    snprintf(buf, cap, "%s (%s)", name ? name : "CUDA_ERROR_?", desc ? desc : "no description");
    return buf;
}

int kcuda_fail(const kcuda *c, CUresult rc, const char *call, const char *file, int line,
               kerr *err)
{
    char b[200];
    return kerr_add(err, "%s:%d: %s failed: %s", file, line, call,
                    kcuda_errstr(c, rc, b, sizeof b));
}

int kcuda_pdl_wanted(int cc_major, int *pdl, kerr *err)
{
    int on;
    if (util_env_switch("KILN_PDL", 1,
                        "launch kernels without programmatic dependent launch",
                        "with it, on sm_90 and newer; the default", &on, err))
        return -1;
    *pdl = cc_major >= 9 && on;
    return 0;
}

int kcuda_launch(const kcuda *c, CUfunction f, unsigned gx, unsigned gy, unsigned gz,
                 unsigned block, unsigned smem, CUstream stream, void **params, int pdl,
                 kerr *err)
{
    CUlaunchAttribute attr;
    memset(&attr, 0, sizeof attr);
    attr.id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    CUlaunchConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.gridDimX = gx;
    cfg.gridDimY = gy;
    cfg.gridDimZ = gz;
    cfg.blockDimX = block;
    cfg.blockDimY = 1;
    cfg.blockDimZ = 1;
    cfg.sharedMemBytes = smem;
    cfg.hStream = stream;
    cfg.attrs = pdl ? &attr : NULL;
    cfg.numAttrs = pdl ? 1 : 0;
    CUresult rc = c->cuLaunchKernelEx(&cfg, f, params, NULL);
    if (rc != CUDA_SUCCESS) {
        kcuda_fail(c, rc, pdl ? "cuLaunchKernelEx (programmatic dependent launch)"
                              : "cuLaunchKernelEx",
                   __FILE__, __LINE__, err);
        return kerr_add(err, "grid %u,%u,%u of %u threads, %u bytes of shared memory", gx, gy,
                        gz, block, smem);
    }
    return 0;
}

/* One 2-D map of 16-bit elements (the copy does not look at them: zeros are zeros in bf16 and
 * f16 alike): rows x cols, ld elements apart, boxes of box_rows x KILN_GEMM90_BK. */
static int gemm90_map(const kcuda *c, CUtensorMap *m, CUdeviceptr p, int64_t rows, int64_t cols,
                      int64_t ld, int box_rows, kerr *err)
{
    cuuint64_t dim[2] = {(cuuint64_t)cols, (cuuint64_t)rows}, stride[1] = {(cuuint64_t)ld * 2};
    cuuint32_t box[2] = {KILN_GEMM90_BK, (cuuint32_t)box_rows}, estride[2] = {1, 1};
    KCU(c,
        cuTensorMapEncodeTiled(m, CU_TENSOR_MAP_DATA_TYPE_UINT16, 2, (void *)(uintptr_t)p, dim,
                               stride, box, estride, CU_TENSOR_MAP_INTERLEAVE_NONE,
                               CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                               CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE),
        err);
    return 0;
}

int kcuda_gemm90_maps(const kcuda *c, CUtensorMap maps[2], CUdeviceptr x, int64_t rows,
                      int64_t k, int64_t ldx, int bx, CUdeviceptr w, int64_t n, int bw, kerr *err)
{
    _Static_assert(sizeof(CUtensorMap) == 128, "gemm90.cuh's kiln::tmap is 128 bytes");
    if (gemm90_map(c, &maps[0], x, rows, k, ldx, bx, err) ||
        gemm90_map(c, &maps[1], w, n, k, k, bw, err))
        return kerr_add(err, "gemm90's tensor maps (x %lld x %lld, ld %lld; w %lld x %lld)",
                        (long long)rows, (long long)k, (long long)ldx, (long long)n,
                        (long long)k);
    return 0;
}
