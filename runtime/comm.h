/* comm — NCCL, loaded at run time with dlopen, for the engine's tensor-parallel collectives.
 *
 * kiln never links NCCL: an artifact compiled for one GPU (tp 1, no collective steps) runs where
 * no NCCL is installed, and the engine calls kncl_load only when the artifact's schedule holds
 * all-reduce or all-gather steps. kncl_load dlopens libnccl.so.2 and resolves every entry point
 * below by name (the types are nccl.h's, so a signature change is a compile error here, not a
 * crash there); a missing library or symbol is one sentence naming the library.
 *
 * Before NCCL can read its environment, kncl_load sets NCCL_NVLS_ENABLE=0 when it is not set:
 * NVLink SHARP (multicast objects) must stay off on the shared GPU machines, and a user who knows
 * better can still set it explicitly.
 *
 * kncl_init_comms creates the communicators of the ranks this process drives (one per device,
 * each in its own CUDA context) from one unique id, inside ncclGroupStart/End so that one thread
 * can initialise them all. Across processes (several hosts) every process calls it with the same
 * id and its own ranks; how the id travels is kncl_rendezvous's business.
 *
 * KNCCL(n, call, err): on failure appends "file:line: ncclXxx(...) failed: ncclError (string;
 * last error: ...)" to err and returns -1, as KCU does for the driver.
 */
#ifndef KILN_COMM_H
#define KILN_COMM_H

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#include <nccl.h>
#pragma GCC diagnostic pop

#include "kcuda.h"
#include "util.h"

#define KNCCL_LIB "libnccl.so.2"

/* X(name): every NCCL entry point kiln uses. */
#define KNCCL_FUNCS(X)                                                                          \
    X(ncclGetVersion) X(ncclGetUniqueId) X(ncclCommInitRank) X(ncclCommDestroy)                 \
    X(ncclCommAbort) X(ncclGroupStart) X(ncclGroupEnd) X(ncclAllReduce) X(ncclAllGather)        \
    X(ncclGetErrorString)

typedef struct kncl {
    void *lib;
    int version; /* NCCL_VERSION_CODE of the library loaded, e.g. 22803 */
#define X(f) __typeof__(f) *f;
    KNCCL_FUNCS(X)
#undef X
    /* ncclGetLastError (NCCL 2.13+); NULL when the library predates it */
    const char *(*ncclGetLastError)(ncclComm_t comm);
} kncl;

/* Sets NCCL_NVLS_ENABLE=0 when unset, loads `lib` (KNCCL_LIB for the engine) and resolves the
 * entry points. `why` says what needs NCCL, for the message when it is missing. */
int kncl_load(kncl *n, const char *lib, const char *why, kerr *err);
void kncl_unload(kncl *n);
/* "2.28.3" into buf. */
const char *kncl_version_str(const kncl *n, char *buf, size_t cap);

int kncl_fail(const kncl *n, ncclResult_t rc, const char *call, const char *file, int line,
              kerr *err);

#define KNCCL(n, call, err)                                                                     \
    do {                                                                                        \
        ncclResult_t knccl_rc_ = (n)->call;                                                     \
        if (knccl_rc_ != ncclSuccess)                                                           \
            return kncl_fail((n), knccl_rc_, #call, __FILE__, __LINE__, (err));                 \
    } while (0)

/* Creates comms[i] for global rank first_rank + i of nranks, in ctxs[i] (CUDA device of that
 * context), all from `id`, in one NCCL group. On failure the comms created are aborted and
 * zeroed. */
int kncl_init_comms(const kncl *n, const kcuda *cu, int nlocal, const CUcontext *ctxs,
                    int nranks, int first_rank, const ncclUniqueId *id, ncclComm_t *comms,
                    kerr *err);

/* ---- several hosts: the rendezvous and the links between the nodes ----
 *
 * `kiln run/serve --nnodes N --node-rank R --rendezvous HOST:PORT`: node 0 listens on PORT (every
 * interface), every other node connects to HOST:PORT (retrying until node 0 is up, at most
 * KRDV_TIMEOUT_S), says which node it is and which artifact it loaded (the manifest's hash), and
 * receives node 0's NCCL unique id, or a refusal saying why. The connections stay open: node 0's
 * engine sends each step's description over them (engine.c), and a node that goes away is an
 * error on the other side, not a hang. Plain TCP, no authentication: for a cluster's private
 * network. */
#define KRDV_TIMEOUT_S 300

typedef struct krdv {
    int nnodes, node_rank;
    int *fd; /* node 0: fd[i] the link to node i (fd[0] = -1); other nodes: fd[0] the link to node 0 */
} krdv;

/* Joins the rendezvous at addr ("HOST:PORT"). Node 0 sends *id (made by ncclGetUniqueId) to the
 * others; the others receive it into *id. key: what every node must agree on (the artifact's
 * manifest hash); timeout_s: how long node 0 waits for the others and they for it. */
int krdv_open(krdv *r, const char *addr, int nnodes, int node_rank, uint64_t key,
              ncclUniqueId *id, int timeout_s, kerr *err);
/* n bytes to / from the link to `node` (0 on the other nodes); an error names the node. */
int krdv_send(krdv *r, int node, const void *p, size_t n, kerr *err);
int krdv_recv(krdv *r, int node, void *p, size_t n, kerr *err);
void krdv_close(krdv *r);

#endif
