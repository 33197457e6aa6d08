/* comm — see comm.h. */
#include "comm.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int kncl_load(kncl *n, const char *lib, const char *why, kerr *err)
{
    memset(n, 0, sizeof *n);
    /* NCCL reads its environment when it initialises: before any call into it */
    setenv("NCCL_NVLS_ENABLE", "0", 0);
    n->lib = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (!n->lib)
        return kerr_add(err, "%s needs NCCL, and %s cannot be loaded (%s): install NCCL 2.x (the "
                             "libnccl2 package, or NVIDIA's nccl tarball on LD_LIBRARY_PATH)",
                        why, lib, dlerror());
    int missing = 0;
#define X(f)                                                                                    \
    n->f = (__typeof__(n->f))dlsym(n->lib, #f);                                                 \
    if (!n->f) {                                                                                \
        kerr_add(err, "%s lacks %s: it is too old for kiln (NCCL 2.18 or newer is needed)", lib, \
                 #f);                                                                           \
        missing = 1;                                                                            \
    }
    KNCCL_FUNCS(X)
#undef X
    if (missing) {
        kncl_unload(n);
        return -1;
    }
    n->ncclGetLastError = (const char *(*)(ncclComm_t))dlsym(n->lib, "ncclGetLastError");
    ncclResult_t rc = n->ncclGetVersion(&n->version);
    if (rc != ncclSuccess) {
        kncl_fail(n, rc, "ncclGetVersion", __FILE__, __LINE__, err);
        kncl_unload(n);
        return -1;
    }
    return 0;
}

void kncl_unload(kncl *n)
{
    if (n->lib)
        dlclose(n->lib);
    memset(n, 0, sizeof *n);
}

const char *kncl_version_str(const kncl *n, char *buf, size_t cap)
{
    /* NCCL_VERSION(X, Y, Z): X*10000 + Y*100 + Z since 2.9 */
    snprintf(buf, cap, "%d.%d.%d", n->version / 10000, n->version / 100 % 100, n->version % 100);
    return buf;
}

int kncl_fail(const kncl *n, ncclResult_t rc, const char *call, const char *file, int line,
              kerr *err)
{
    const char *s = n->ncclGetErrorString ? n->ncclGetErrorString(rc) : NULL;
    const char *last = n->ncclGetLastError ? n->ncclGetLastError(NULL) : NULL;
    return kerr_add(err, "%s:%d: %s failed: %s (error %d)%s%s%s", file, line, call,
                    s ? s : "unknown NCCL error", (int)rc, last && last[0] ? "; NCCL says: " : "",
                    last && last[0] ? last : "",
                    rc == ncclSystemError || rc == ncclRemoteError
                        ? " (NCCL_DEBUG=WARN in the environment shows NCCL's own log)"
                        : "");
}

int kncl_init_comms(const kncl *n, const kcuda *cu, int nlocal, const CUcontext *ctxs,
                    int nranks, int first_rank, const ncclUniqueId *id, ncclComm_t *comms,
                    kerr *err)
{
    memset(comms, 0, sizeof *comms * (size_t)nlocal);
    KNCCL(n, ncclGroupStart(), err);
    int bad = 0;
    for (int i = 0; i < nlocal && !bad; i++) {
        /* NCCL takes the device of the calling thread's current context */
        CUresult crc = cu->cuCtxSetCurrent(ctxs[i]);
        if (crc != CUDA_SUCCESS) {
            kcuda_fail(cu, crc, "cuCtxSetCurrent", __FILE__, __LINE__, err);
            bad = 1;
            break;
        }
        ncclResult_t rc = n->ncclCommInitRank(&comms[i], nranks, *id, first_rank + i);
        if (rc != ncclSuccess) {
            kncl_fail(n, rc, "ncclCommInitRank", __FILE__, __LINE__, err);
            kerr_add(err, "creating the communicator of rank %d of %d", first_rank + i, nranks);
            bad = 1;
        }
    }
    ncclResult_t rc = n->ncclGroupEnd();
    if (rc != ncclSuccess && !bad) {
        kncl_fail(n, rc, "ncclGroupEnd", __FILE__, __LINE__, err);
        kerr_add(err, "creating the communicators of ranks %d..%d of %d", first_rank,
                 first_rank + nlocal - 1, nranks);
        bad = 1;
    }
    if (bad) {
        for (int i = 0; i < nlocal; i++)
            if (comms[i]) {
                n->ncclCommAbort(comms[i]);
                comms[i] = NULL;
            }
        return -1;
    }
    return 0;
}
