/* comm — see comm.h. */
#include "comm.h"

#include <assert.h>
#include <dlfcn.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

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
        kerr_add(err, "%s lacks %s: it is too old for kiln (install a current NCCL 2.x)", lib,  \
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
    if (n->version < 20900) { /* before 2.9 the code was X*1000 + Y*100 + Z */
        kerr_add(err, "%s is NCCL %d.%d.%d; kiln needs 2.9 or newer (collectives captured in CUDA "
                      "graphs)",
                 lib, n->version / 1000, n->version / 100 % 10, n->version % 100);
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

/* ---------------------------------------------------------------- the rendezvous */

#define RDV_MAGIC "KILNRDV1"

/* What a node sends node 0, and what node 0 answers (same-architecture hosts: native layout). */
typedef struct rdv_hello {
    char magic[8];
    uint64_t key;
    int32_t node_rank, nnodes;
} rdv_hello;

typedef enum { RDV_OK, RDV_OTHER_ARTIFACT, RDV_BAD_RANK, RDV_OTHER_NNODES } rdv_status;

typedef struct rdv_reply {
    int32_t status; /* rdv_status */
    int32_t nnodes;
    ncclUniqueId id;
} rdv_reply;

/* "HOST:PORT" (the last colon; [v6]:PORT too) into host and port. */
static int split_addr(const char *addr, char *host, size_t hcap, char *port, size_t pcap,
                      kerr *err)
{
    const char *c = addr ? strrchr(addr, ':') : NULL;
    if (!c || c == addr || !c[1] || strlen(c + 1) >= pcap || (size_t)(c - addr) >= hcap)
        return kerr_add(err, "--rendezvous '%s': expected HOST:PORT (node 0's address and a free "
                             "TCP port, e.g. 10.0.0.1:29500)",
                        addr ? addr : "");
    const char *h = addr;
    size_t hl = (size_t)(c - addr);
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    memcpy(host, h, hl);
    host[hl] = 0;
    snprintf(port, pcap, "%s", c + 1);
    return 0;
}

static int io_all(int fd, void *p, size_t n, int out)
{
    char *b = p;
    while (n) {
        ssize_t k = out ? send(fd, b, n, MSG_NOSIGNAL) : recv(fd, b, n, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            if (k == 0)
                errno = ECONNRESET;
            return -1;
        }
        b += k;
        n -= (size_t)k;
    }
    return 0;
}

int krdv_send(krdv *r, int node, const void *p, size_t n, kerr *err)
{
    if (io_all(r->fd[node], (void *)p, n, 1))
        return kerr_add(err, "node %d: the link to node %d broke (%s): did kiln stop there?",
                        r->node_rank, r->node_rank ? 0 : node, strerror(errno));
    return 0;
}

int krdv_recv(krdv *r, int node, void *p, size_t n, kerr *err)
{
    if (io_all(r->fd[node], p, n, 0))
        return kerr_add(err, "node %d: the link to node %d broke (%s): did kiln stop there?",
                        r->node_rank, r->node_rank ? 0 : node, strerror(errno));
    return 0;
}

void krdv_close(krdv *r)
{
    if (r->fd)
        for (int i = 0; i < (r->node_rank ? 1 : r->nnodes); i++)
            if (r->fd[i] >= 0)
                close(r->fd[i]);
    free(r->fd);
    r->fd = NULL;
}

static void nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* steps are small messages */
}

/* Node 0: listens, takes nnodes-1 nodes (each once, each with the same artifact), sends the id. */
static int rdv_serve(krdv *r, const char *port, uint64_t key, const ncclUniqueId *id,
                     int timeout_s, kerr *err)
{
    /* every interface, IPv6 with IPv4 mapped where the host has IPv6, else IPv4 */
    int lfd = -1, fams[] = {AF_INET6, AF_INET}, e = 0;
    for (int f = 0; f < 2 && lfd < 0; f++) {
        struct addrinfo hints = {.ai_family = fams[f], .ai_socktype = SOCK_STREAM,
                                 .ai_flags = AI_PASSIVE},
                        *ai = NULL;
        int rc = getaddrinfo(NULL, port, &hints, &ai);
        if (rc) {
            if (f == 1)
                return kerr_add(err, "--rendezvous port '%s': %s", port, gai_strerror(rc));
            continue;
        }
        lfd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        int one = 1, zero = 0;
        if (lfd >= 0) {
            setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            if (ai->ai_family == AF_INET6)
                setsockopt(lfd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
            if (bind(lfd, ai->ai_addr, ai->ai_addrlen) || listen(lfd, r->nnodes)) {
                e = errno;
                close(lfd);
                lfd = -1;
            }
        } else {
            e = errno;
        }
        freeaddrinfo(ai);
    }
    if (lfd < 0)
        return kerr_add(err, "node 0: cannot listen on TCP port %s for the rendezvous (%s): pick a "
                             "free port in --rendezvous",
                        port, strerror(e));
    time_t end = time(NULL) + timeout_s;
    int joined = 1, bad = 0;
    while (joined < r->nnodes && !bad) {
        struct pollfd pf = {lfd, POLLIN, 0};
        long left = (long)(end - time(NULL));
        int ready = left > 0 ? poll(&pf, 1, (int)(left * 1000)) : 0;
        if (ready < 0)
            continue; /* a signal: the clock decides */
        if (ready == 0) {
            kerr_add(err, "node 0: %d of %d nodes joined the rendezvous on port %s within %d s: "
                          "start kiln on every node with the same --nnodes and --rendezvous "
                          "(each with its own --node-rank)",
                     joined, r->nnodes, port, timeout_s);
            bad = 1;
            break;
        }
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0)
            continue;
        rdv_hello h;
        rdv_reply rep = {RDV_OK, r->nnodes, *id};
        /* a connection that says nothing for 10 s is not a kiln node */
        struct timeval tv = {10, 0}, forever = {0, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        if (io_all(fd, &h, sizeof h, 0) || memcmp(h.magic, RDV_MAGIC, 8)) {
            close(fd); /* not a kiln node: a port scanner, a stray connection */
            continue;
        }
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &forever, sizeof forever);
        if (h.key != key)
            rep.status = RDV_OTHER_ARTIFACT;
        else if (h.nnodes != r->nnodes)
            rep.status = RDV_OTHER_NNODES;
        else if (h.node_rank < 1 || h.node_rank >= r->nnodes || r->fd[h.node_rank] >= 0)
            rep.status = RDV_BAD_RANK;
        if (rep.status != RDV_OK)
            memset(&rep.id, 0, sizeof rep.id);
        io_all(fd, &rep, sizeof rep, 1);
        if (rep.status != RDV_OK) {
            kerr_add(err, "node 0: node %d was refused at the rendezvous (%s)", (int)h.node_rank,
                     rep.status == RDV_OTHER_ARTIFACT ? "it loaded another artifact"
                     : rep.status == RDV_OTHER_NNODES ? "it has another --nnodes"
                                                      : "its --node-rank is taken or out of range");
            close(fd);
            bad = 1;
            break;
        }
        nodelay(fd);
        r->fd[h.node_rank] = fd;
        joined++;
    }
    close(lfd);
    return bad ? -1 : 0;
}

/* Another node: connects to node 0 (retrying while it is not up yet), joins, gets the id. */
static int rdv_join(krdv *r, const char *host, const char *port, uint64_t key, ncclUniqueId *id,
                    int timeout_s, kerr *err)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    time_t end = time(NULL) + timeout_s;
    int fd = -1, last = 0;
    while (fd < 0) {
        int rc = getaddrinfo(host, port, &hints, &ai);
        if (rc && rc != EAI_AGAIN)
            return kerr_add(err, "--rendezvous host '%s': %s", host, gai_strerror(rc));
        for (struct addrinfo *a = rc ? NULL : ai; a && fd < 0; a = a->ai_next) {
            fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
            if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen)) {
                last = errno;
                close(fd);
                fd = -1;
            }
        }
        if (!rc)
            freeaddrinfo(ai);
        if (fd >= 0)
            break;
        if (time(NULL) >= end)
            return kerr_add(err, "node %d: cannot reach node 0 at %s:%s for %d s (%s): start kiln "
                                 "with --node-rank 0 there, and check the address and firewall",
                            r->node_rank, host, port, timeout_s, strerror(last));
        struct timespec ts = {0, 200 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    rdv_hello h = {RDV_MAGIC, key, r->node_rank, r->nnodes};
    rdv_reply rep;
    r->fd[0] = fd;
    if (krdv_send(r, 0, &h, sizeof h, err) || krdv_recv(r, 0, &rep, sizeof rep, err))
        return -1;
    if (rep.status != RDV_OK)
        return kerr_add(err, "node %d: node 0 at %s:%s refused this node: %s", r->node_rank, host,
                        port,
                        rep.status == RDV_OTHER_ARTIFACT
                            ? "it runs another artifact (copy the same kilnc compile output to "
                              "every node)"
                        : rep.status == RDV_OTHER_NNODES
                            ? "it was started with another --nnodes"
                            : "another node already has this --node-rank");
    nodelay(fd);
    *id = rep.id;
    return 0;
}

int krdv_open(krdv *r, const char *addr, int nnodes, int node_rank, uint64_t key,
              ncclUniqueId *id, int timeout_s, kerr *err)
{
    assert(nnodes > 1 && node_rank >= 0 && node_rank < nnodes);
    r->nnodes = nnodes;
    r->node_rank = node_rank;
    r->fd = xcalloc((size_t)nnodes, sizeof(int));
    for (int i = 0; i < nnodes; i++)
        r->fd[i] = -1;
    char host[256], port[32];
    int rc = split_addr(addr, host, sizeof host, port, sizeof port, err);
    if (!rc)
        rc = node_rank == 0 ? rdv_serve(r, port, key, id, timeout_s, err)
                            : rdv_join(r, host, port, key, id, timeout_s, err);
    if (rc)
        krdv_close(r);
    return rc;
}
