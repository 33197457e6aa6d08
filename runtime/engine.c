/* engine — see engine.h.
 *
 * The state is split along the devices: a kmodel holds what every device shares (the manifest,
 * the host step arrays, the KV layout, the worker handshake) and one kdev per device holds that
 * device's context, stream, module, weights, buffers, KV cache, GEMM handle, CUDA graphs and
 * communicator. Everything a device does runs as a job (job_kind) on that device's worker thread,
 * which binds the device's context once; the caller of km_load and of the step hands a job to
 * every worker and waits for all (run_all). A tp-1 artifact without collectives has no workers:
 * run_all runs the job on the calling thread, so that path is the single-GPU engine unchanged.
 *
 * The collectives need every rank to issue the same NCCL calls in the same order on its stream:
 * each worker walks the same schedule with the same T, n_seqs and flags (the main thread fills
 * them once), and the decode graphs of a bucket are captured on every device or used on none.
 * A rank that fails mid-step would leave the others waiting inside a collective forever: after
 * ABORT_AFTER_S the remaining communicators are aborted so that the error comes back.
 *
 * All-reduces small enough for the exchange buffers (decode's) run the one-shot peer-to-peer
 * kernel (templates/collective.cuh, kernels/kiln_p2p.h) instead of NCCL when one process drives
 * every rank and every pair of GPUs has peer access (init_p2p); KILN_ALLREDUCE=nccl keeps NCCL
 * for all of them, =p2p makes the kernel required. A rank stuck in that kernel (a peer failed)
 * is not released by aborting NCCL: the kernel traps after its bounded spin (KILN_P2P_POLLS).
 *
 * Every kernel launch goes through kcuda_launch: on sm_90 and newer, with code compiled for it,
 * with programmatic dependent launch (each kernel's launch overlaps its predecessor's tail, and
 * the decode graphs keep programmatic edges; every template waits first, kernels/common.cuh);
 * KILN_PDL=0 turns it off. The load ends with a warm-up (warm_up: a prefill ladder and one
 * decode step per bucket through the ordinary step, on every rank and node) so that the first
 * request pays no first-call cost; KILN_WARMUP=0 skips it. The load line says both.
 * KILN_KERNEL_TIMES=1 times every launch of rank 0's steps in the stream (kt_mark) and prints the
 * totals per kernel when the model is freed. KILN_ABLATE=PART[+PART...] leaves out every launch of
 * a kernel whose name holds one of the parts ("cublaslt": the cuBLASLt GEMMs), graphs and warm-up
 * included: what a kernel costs inside the step, timing only (the outputs are wrong, and the load
 * says so); ablate_parse checks each part against the artifact's kernel names.
 */
#include "engine.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm.h"
#include "gemm.h"
#include "../kernels/kiln_gemm.h"
#include "../kernels/kiln_p2p.h"
#include "hash.h"
#include "kcuda.h"
#include "safetensors.h"

#define ALIGN 256
#define STAGE (64u << 20) /* pinned staging buffer for weight uploads */
#define MAX_BUCKETS 16
#define ABORT_AFTER_S 10 /* a rank failed while others still run: abort their collectives */
/* The largest all-reduce (bytes) the one-shot kernel takes: each rank reads every other rank's
 * whole input, so past a few MiB NCCL's ring, which moves 2 (tp-1)/tp of it, is faster; the
 * cut-off shrinks as ranks are added (vLLM's custom all-reduce draws the same lines). */
#define P2P_MAX_BYTES_TP2 ((int64_t)2 << 20)
#define P2P_MAX_BYTES ((int64_t)512 << 10)

typedef enum { JOB_QUIT, JOB_LOAD, JOB_FIT, JOB_KV, JOB_CAPTURE, JOB_STEP } job_kind;

typedef struct kdev {
    kmodel *m;
    int rank;                /* this device's rank, 0..tp-1 (and its CUDA device ordinal) */
    CUdevice dev;
    CUcontext ctx;
    CUstream stream;
    int cc_major, cc_minor;
    int sms;                 /* its SM count (a grid rule's sm term) */
    char devname[256];
    const ka_blob *code;     /* the cubin (or PTX) this device loads */
    int is_ptx;
    int pdl;                 /* kernels launch with programmatic dependent launch (code_pdl) */
    int sm90;                /* the code is for sm_90 or newer (code_pdl; ka_size_runs) */
    CUmodule mod;
    CUfunction *fn;          /* [nkernels] */
    st_set *shard;           /* shards[rank], mapped */
    hash_job *shard_job;     /* hashing the mapped shard while it is uploaded */
    double up_s, hash_wait_s;
    CUdeviceptr warena, consts, slab, scratch, logits, logits_all, out, meta, kv, d_ids;
    size_t *woff;            /* [nweights] offsets in warena */
    kgemm *gemm;
    CUevent *kt_ev;          /* KILN_KERNEL_TIMES: an event before each launch of the step, and
                              * one after its last (kt_mark) */
    char (*kt_name)[40];     /* what each event's interval ran */
    int kt_n, kt_cap;
    ncclComm_t comm;         /* NULL without collectives */
    CUdeviceptr p2p_mem;     /* the exchange buffers, flags and epochs (kiln_p2p.h); 0: none */
    kiln_p2p p2p;            /* this rank's view of every rank's, the p2p kernel's argument */
    CUgraphExec graphs[MAX_BUCKETS];
    int captured;            /* the last JOB_CAPTURE succeeded */
    long kv_fit;             /* KV blocks its free memory allows (JOB_FIT) */
    pthread_t thread;
    int started;
    int failed;              /* the last job failed; err says why */
    kerr err;
} kdev;

struct kmodel {
    kcuda cu;
    kncl nccl;               /* loaded only when the schedule has collective steps */
    int ndev;
    kdev *devs;              /* [ndev]; devs[i] is rank first_rank + i, on CUDA device i */
    int nnodes, node_rank, first_rank;
    krdv rdv;                /* the links between the nodes (nnodes > 1) */
    long remote_fit;         /* node 0: the other nodes' smallest KV fit (JOB_FIT) */
    int remote_captured;     /* node 0: every other node captured the bucket (JOB_CAPTURE) */
    int threaded;            /* one worker thread per device (tp > 1 or collectives) */
    enum { AR_AUTO, AR_NCCL, AR_P2P } ar_mode; /* KILN_ALLREDUCE: unset/auto, nccl, p2p */
    int p2p_kernel;          /* index of k<i>_allreduce_p2p in the kernel table, -1: none */
    int64_t p2p_cap;         /* elements of the largest all-reduce the kernel takes; 0: NCCL */
    char ar_desc[256];       /* which all-reduce runs, for the load line and describe */
    char desc[2048];
    double load_s;
    int warm;                /* KILN_WARMUP: warm up at the end of the load (warm_up) */
    double warm_s;           /* its seconds, part of load_s */
    char warm_desc[160];     /* what it ran, for describe */
    int kt;                  /* KILN_KERNEL_TIMES=1: 1 once the load is done (kt_mark) */
    char *ablate;            /* KILN_ABLATE's parts, '+'-separated (ablated); NULL: none */
    struct kt_row {
        char name[40];
        int decode;
        long count;
        double ms;
    } *kt_rows;              /* the totals by schedule and kernel (kt_collect) */
    int kt_nrows, kt_cap;
    long kt_steps[2];        /* prefill, decode steps timed */
    double kt_step_ms[2];    /* their first event to last */
    double kt_wall_ms[2];    /* their dev_step on the host, its wait included */

    ka_file *af;
    ka_manifest *m;
    int esize, f16;

    size_t *coff;            /* constant tables' offsets, the same on every device */
    size_t const_bytes;
    size_t *kv_k, *kv_v;     /* per layer offsets into each device's kv */
    size_t kv_bytes, kv_per_block;
    int nblocks, max_blocks; /* KV blocks (block 0: the padding rows' scratch); per sequence */

    /* the step arrays and sampling parameters (meta_layout): one pinned host copy that every
     * device uploads from (pinned memory is visible to every context under unified addressing)
     * into its meta */
    int cap_tok, cap_seq;
    int32_t *h_meta;
    size_t meta_bytes;
    int32_t *h_ids;          /* pinned [max_seqs]: rank 0's sampled ids */
    float *h_lp; /* pinned [max_seqs, vocab]: logits rows for logprobs (allocated on first use) */
    int graphs_failed;
    int bucket_ready[MAX_BUCKETS]; /* captured on every device */
    km_opts o;

    /* the workers' handshake: the main thread sets job and its arguments, bumps gen, and waits
     * until ndone reaches ndev */
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    int sync_init;
    unsigned gen;
    int ndone, nfailed;
    job_kind job;
    struct {
        kb_item *items;
        int n, T, S, Q, decode, all, any_sample, bucket;
        int head; /* the prefill schedule's LM head runs: an item samples or wants its logits */
    } j;

    kbackend kb; /* the step backend (km_backend) and what it reports */
    kb_info info;
};

static void kt_print(kmodel *m);

const ka_manifest *km_manifest(const kmodel *m) { return m->m; }
const char *km_describe(const kmodel *m) { return m->desc; }
double km_load_seconds(const kmodel *m) { return m->load_s; }

/* Inside a device's job: m, d and err in scope. */
#define CU(call)                                                                                \
    do {                                                                                        \
        CUresult rc_ = m->cu.call;                                                              \
        if (rc_ != CUDA_SUCCESS)                                                                \
            return kcuda_fail(&m->cu, rc_, #call, __FILE__, __LINE__, err);                     \
    } while (0)

static void init_backend(kmodel *m);
static int engine_step(kbackend *b, kb_item *items, int n, kerr *err);
static void kv_layout(kmodel *m);

static size_t align_up(size_t x) { return (x + ALIGN - 1) / ALIGN * ALIGN; }

/* ---------------------------------------------------------------- workers */

static int run_job(kdev *d, job_kind job, kerr *err);

static void *worker(void *p)
{
    kdev *d = p;
    kmodel *m = d->m;
    unsigned seen = 0;
    /* the context stays bound to this thread for every job (a failure shows in the first job) */
    CUresult bind = m->cu.cuCtxSetCurrent(d->ctx);
    for (;;) {
        pthread_mutex_lock(&m->mu);
        while (m->gen == seen)
            pthread_cond_wait(&m->go, &m->mu);
        seen = m->gen;
        job_kind job = m->job;
        pthread_mutex_unlock(&m->mu);
        if (job == JOB_QUIT)
            break;
        kerr_clear(&d->err);
        if (bind != CUDA_SUCCESS)
            d->failed = kcuda_fail(&m->cu, bind, "cuCtxSetCurrent", __FILE__, __LINE__,
                                   &d->err) != 0;
        else
            d->failed = run_job(d, job, &d->err) != 0;
        pthread_mutex_lock(&m->mu);
        m->ndone++;
        m->nfailed += d->failed;
        pthread_cond_signal(&m->done);
        pthread_mutex_unlock(&m->mu);
    }
    /* the graphs hold NCCL's captured work: they go before the communicator */
    for (int i = 0; i < MAX_BUCKETS; i++)
        if (d->graphs[i]) {
            m->cu.cuGraphExecDestroy(d->graphs[i]);
            d->graphs[i] = NULL;
        }
    if (d->comm) { /* destroyed by every rank's own thread at once, as NCCL expects */
        m->nccl.ncclCommDestroy(d->comm);
        d->comm = NULL;
    }
    return NULL;
}

/* Aborts the communicators of the devices still running a job, so that a rank waiting in a
 * collective for a rank that failed returns (with an error) instead of hanging. */
static void abort_comms(kmodel *m)
{
    for (int i = 0; i < m->ndev; i++)
        if (m->devs[i].comm && m->nccl.ncclCommAbort) {
            m->nccl.ncclCommAbort(m->devs[i].comm);
            m->devs[i].comm = NULL;
        }
}

/* Runs `job` on every device of this process and waits for all; the failures' messages go to
 * err, each naming its device. */
static int run_local(kmodel *m, job_kind job, kerr *err)
{
    if (!m->threaded) {
        kdev *d = &m->devs[0];
        CU(cuCtxSetCurrent(d->ctx)); /* steps may run on another thread than km_load's */
        return run_job(d, job, err);
    }
    pthread_mutex_lock(&m->mu);
    m->job = job;
    m->ndone = m->nfailed = 0;
    m->gen++;
    pthread_cond_broadcast(&m->go);
    time_t failed_at = 0;
    int aborted = 0;
    while (m->ndone < m->ndev) {
        if (m->nfailed && !aborted) {
            if (!failed_at)
                failed_at = time(NULL);
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&m->done, &m->mu, &ts);
            if (m->ndone < m->ndev && time(NULL) - failed_at >= ABORT_AFTER_S) {
                abort_comms(m);
                aborted = 1;
            }
        } else {
            pthread_cond_wait(&m->done, &m->mu);
        }
    }
    pthread_mutex_unlock(&m->mu);
    int rc = 0;
    for (int i = 0; i < m->ndev; i++) {
        kdev *d = &m->devs[i];
        if (!d->failed)
            continue;
        kerr_add(err, "GPU %d (rank %d of %d, %s)%s: %s", i, d->rank, m->m->tp, d->devname,
                 m->nnodes > 1 ? " of this node" : "", kerr_msg(&d->err));
        rc = -1;
    }
    if (aborted)
        kerr_add(err, "the other ranks were still waiting in a collective %d s after that; their "
                      "NCCL communicators were aborted",
                 ABORT_AFTER_S);
    return rc;
}

/* ---------------------------------------------------------------- several nodes */

/* What node 0 sends the other nodes for each job after loading; a STEP is followed by the used
 * step arrays (meta_layout). */
typedef struct node_msg {
    int32_t job;            /* job_kind */
    int32_t n, T, S, Q;     /* the step's items, tokens, rows, most tokens of one row */
    int32_t decode, all, bucket, graphs_failed, bucket_ready;
    int32_t nblocks;        /* JOB_KV */
    int32_t head;           /* JOB_STEP: kmodel.j.head */
} node_msg;

/* Where the step arrays of T tokens in S rows (kiln_step's) and the rows' sampling parameters
 * lie in the meta buffers, host and device alike: packed in this order from the start, each part
 * META_ALIGN-aligned, so that a step's are one span, uploaded with one copy (a decode step used to
 * wait on ten small ones). A function of (T, S) alone: the decode graph captured for a bucket of
 * rows finds its arrays in the same places at every step of that bucket. */
typedef struct meta_at {
    size_t ids, pos, type, seq, slot, start, kvlen, ropelen, bt, params, bytes;
} meta_at;

#define META_ALIGN 64
static meta_at meta_layout(const kmodel *m, int T, int S)
{
    meta_at a;
    size_t o = 0, t = sizeof(int32_t) * (size_t)T, s = sizeof(int32_t) * (size_t)S;
#define PART(f, n) (a.f = o, o += ((n) + META_ALIGN - 1) / META_ALIGN * META_ALIGN)
    PART(ids, t);
    PART(pos, t);
    PART(type, t);
    PART(seq, t);
    PART(slot, t);
    PART(start, s + sizeof(int32_t));
    PART(kvlen, s);
    PART(ropelen, s);
    PART(bt, s * (size_t)m->max_blocks);
    PART(params, sizeof(kiln_sample) * (size_t)S);
#undef PART
    a.bytes = o;
    return a;
}

/* Node 0: the job (and a step's arrays) to every other node. */
static int forward(kmodel *m, job_kind job, kerr *err)
{
    node_msg h = {(int32_t)job, m->j.n, m->j.T, m->j.S, m->j.Q, m->j.decode, m->j.all,
                  m->j.bucket, m->graphs_failed,
                  m->j.bucket < MAX_BUCKETS ? m->bucket_ready[m->j.bucket] : 0, m->nblocks,
                  m->j.head};
    size_t bytes = job == JOB_STEP ? meta_layout(m, m->j.T, m->j.S).bytes : 0;
    for (int node = 1; node < m->nnodes; node++)
        if (krdv_send(&m->rdv, node, &h, sizeof h, err) ||
            (bytes && krdv_send(&m->rdv, node, m->h_meta, bytes, err)))
            return -1;
    return 0;
}

/* Node 0: the other nodes' answers to JOB_FIT (their smallest fit, -1: failed) and
 * JOB_CAPTURE (1: captured on all their devices). */
static int gather_answers(kmodel *m, job_kind job, kerr *err)
{
    m->remote_fit = LONG_MAX;
    m->remote_captured = 1;
    for (int node = 1; node < m->nnodes; node++) {
        int64_t v;
        if (krdv_recv(&m->rdv, node, &v, sizeof v, err))
            return -1;
        if (v < 0)
            return kerr_add(err, "node %d failed (its log says why)", node);
        if (job == JOB_FIT && v < m->remote_fit)
            m->remote_fit = (long)v;
        if (job == JOB_CAPTURE)
            m->remote_captured &= v == 1;
    }
    return 0;
}

/* Runs `job` on every device of every node: node 0 first sends it to the others (after loading,
 * which each node does on its own), then runs it on its own devices and collects the answers. */
static int run_all(kmodel *m, job_kind job, kerr *err)
{
    int lead = m->nnodes > 1 && m->node_rank == 0 && m->rdv.fd && job != JOB_LOAD;
    if (lead && forward(m, job, err))
        return -1;
    int rc = run_local(m, job, err);
    if (lead && (job == JOB_FIT || job == JOB_CAPTURE) && gather_answers(m, job, err))
        return -1;
    return rc;
}

/* ---------------------------------------------------------------- loading */

static int pick_code(kmodel *m, kdev *d, kerr *err)
{
    const ka_manifest *man = m->m;
    char want[32];
    const ka_blob *code = NULL;
    d->is_ptx = 0;
    if (d->cc_major == 9 && d->cc_minor == 0) /* Hopper: the arch-specific cubin first */
        code = ka_find_blob(man, "cubin.sm_90a");
    if (!code) {
        snprintf(want, sizeof want, "cubin.sm_%d%d", d->cc_major, d->cc_minor);
        code = ka_find_blob(man, want);
    }
    /* a cubin for an older minor of the same major runs too ("a" cubins only on their own) */
    for (int minor = d->cc_minor - 1; !code && minor >= 0; minor--) {
        snprintf(want, sizeof want, "cubin.sm_%d%d", d->cc_major, minor);
        code = ka_find_blob(man, want);
    }
    d->code = code;
    if (code)
        return 0;
    char have[256] = "";
    size_t hl = 0;
    for (int i = 0; i < man->nblobs; i++)
        if (!strncmp(man->blobs[i].name, "cubin.", 6))
            hl += (size_t)snprintf(have + hl, sizeof have - hl, "%s%s", hl ? ", " : "",
                                   man->blobs[i].name + 6);
    for (int i = 0; i < man->nblobs; i++) {
        const ka_blob *b = &man->blobs[i];
        int v;
        /* an arch-specific PTX (compute_90a: kiln's Hopper GEMM) runs on its own SM only */
        const size_t bl = strlen(b->name);
        const int own = bl > 0 && b->name[bl - 1] == 'a';
        if (sscanf(b->name, "ptx.compute_%d", &v) == 1 &&
            (own ? v == d->cc_major * 10 + d->cc_minor : v <= d->cc_major * 10 + d->cc_minor)) {
            d->code = b;
            d->is_ptx = 1;
            if (!m->o.quiet && d->rank == 0)
                fprintf(stderr,
                        "kiln: note: this artifact has no cubin for sm_%d%d (it has %s); "
                        "JIT-compiling its PTX (%s) instead, which slows the start. Rebuild with "
                        "kilnc compile --sm %d%d for a native cubin.\n",
                        d->cc_major, d->cc_minor, have[0] ? have : "none", b->name + 4,
                        d->cc_major, d->cc_minor);
            return 0;
        }
    }
    return kerr_add(err,
                    "%s: no code for GPU %d (%s, sm_%d%d): the artifact has cubins for %s and "
                    "no usable PTX. Rebuild it: kilnc compile MODEL_DIR -o OUT --sm %d%d",
                    m->af->path, d->rank, d->devname, d->cc_major, d->cc_minor,
                    have[0] ? have : "nothing", d->cc_major, d->cc_minor);
}

/* Programmatic dependent launch (kcuda_launch) is safe only where the kernels wait for their
 * predecessor (KILN_PDL_ENTER, kernels/common.cuh), which they do when compiled for sm_90 or
 * newer: code built for an older SM (a PTX JIT-compiled here, or an older cubin) launches
 * without it. KILN_PDL=0 turns it off (to measure the difference). Also notes whether the code
 * is for sm_90 or newer (d->sm90): the steps that run only there (ka_size_runs). */
static int code_pdl(kdev *d, kerr *err)
{
    int arch = 0;
    const char *name = d->code->name;
    if (sscanf(name, "cubin.sm_%d", &arch) != 1 && sscanf(name, "ptx.compute_%d", &arch) != 1)
        arch = 0;
    if (kcuda_pdl_wanted(d->cc_major, &d->pdl, err))
        return -1;
    d->sm90 = arch >= 90;
    d->pdl &= d->sm90;
    return 0;
}

/* Weights into one arena, through two pinned staging buffers so the copy out of the mapped
 * file overlaps the previous DMA. */
static int upload_weights(kmodel *m, kdev *d, kerr *err)
{
    const ka_manifest *man = m->m;
    size_t total = 0;
    d->woff = xcalloc((size_t)(man->nweights ? man->nweights : 1), sizeof(size_t));
    for (int i = 0; i < man->nweights; i++) {
        d->woff[i] = total;
        total += align_up((size_t)man->weights[i].nbytes);
    }
    CU(cuMemAlloc(&d->warena, total ? total : ALIGN));
    void *stage[2] = {NULL, NULL};
    CUevent ev[2] = {NULL, NULL};
    int rc = -1;
    CUresult r;
    const char *what = "cuMemAllocHost(staging)";
    if ((r = m->cu.cuMemAllocHost(&stage[0], STAGE)) ||
        (r = m->cu.cuMemAllocHost(&stage[1], STAGE)) ||
        (what = "cuEventCreate", r = m->cu.cuEventCreate(&ev[0], CU_EVENT_DISABLE_TIMING)) ||
        (r = m->cu.cuEventCreate(&ev[1], CU_EVENT_DISABLE_TIMING))) {
        kcuda_fail(&m->cu, r, what, __FILE__, __LINE__, err);
        goto out;
    }
    int b = 0, used[2] = {0, 0};
    for (int i = 0; i < man->nweights; i++) {
        const st_tensor *t = st_find(d->shard, man->weights[i].name);
        const unsigned char *src = t->data;
        size_t left = t->nbytes, at = 0;
        while (left) {
            size_t n = left < STAGE ? left : STAGE;
            if (used[b] && (r = m->cu.cuEventSynchronize(ev[b]))) {
                kcuda_fail(&m->cu, r, "cuEventSynchronize", __FILE__, __LINE__, err);
                goto out;
            }
            memcpy(stage[b], src + at, n);
            if ((r = m->cu.cuMemcpyHtoDAsync(d->warena + d->woff[i] + at, stage[b], n,
                                             d->stream)) ||
                (r = m->cu.cuEventRecord(ev[b], d->stream))) {
                kcuda_fail(&m->cu, r, "cuMemcpyHtoDAsync(weights)", __FILE__, __LINE__, err);
                goto out;
            }
            used[b] = 1;
            b ^= 1;
            at += n;
            left -= n;
        }
    }
    if ((r = m->cu.cuStreamSynchronize(d->stream))) {
        kcuda_fail(&m->cu, r, "cuStreamSynchronize", __FILE__, __LINE__, err);
        goto out;
    }
    rc = 0;
out:
    for (int i = 0; i < 2; i++) {
        if (ev[i])
            m->cu.cuEventDestroy(ev[i]);
        if (stage[i])
            m->cu.cuMemFreeHost(stage[i]);
    }
    return rc;
}

/* The device's buffers other than the weights and the KV cache. */
static int alloc_device(kmodel *m, kdev *d, kerr *err)
{
    const ka_manifest *man = m->m;
    CU(cuMemAlloc(&d->consts, m->const_bytes ? m->const_bytes : ALIGN));
    for (int i = 0; i < man->nconsts; i++)
        if (man->consts[i].n)
            CU(cuMemcpyHtoD(d->consts + m->coff[i], man->consts[i].v,
                            sizeof(float) * (size_t)man->consts[i].n));
    CU(cuMemAlloc(&d->slab, man->slab_bytes ? (size_t)man->slab_bytes : ALIGN));
    CU(cuMemAlloc(&d->scratch, man->scratch_bytes ? (size_t)man->scratch_bytes : ALIGN));
    /* attn_decode's arrival counters live in scratch and must start at zero (lower.c) */
    CU(cuMemsetD8(d->scratch, 0, man->scratch_bytes ? (size_t)man->scratch_bytes : ALIGN));
    size_t V = (size_t)(man->vocab > 0 ? man->vocab : 1);
    CU(cuMemAlloc(&d->logits, sizeof(float) * V * (size_t)man->max_seqs));
    CU(cuMemAlloc(&d->out, sizeof(float) * (size_t)man->hidden * (size_t)man->max_seqs));
    CU(cuMemAlloc(&d->meta, m->meta_bytes));
    CU(cuMemsetD8(d->meta, 0, m->meta_bytes));
    /* the copies' DMA and the memsets run on the legacy stream, which the device's
     * non-blocking stream does not wait for: finish them before any kernel reads these */
    CU(cuStreamSynchronize(NULL));
    CU(cuMemAlloc(&d->d_ids, sizeof(int32_t) * (size_t)m->cap_seq));
    if (!man->cublaslt_steps) /* kilnc --gemm kiln: cuBLASLt is never loaded */
        return 0;
    d->gemm = kgemm_new(&m->cu, "this model (compiled with kilnc compile --gemm cublaslt, the "
                                "default)", err);
    if (!d->gemm)
        return kerr_add(err, "or compile it with kilnc compile --gemm kiln: kiln's own GEMM "
                             "kernel needs no cuBLASLt");
    return 0;
}

/* JOB_LOAD: the stream, the code, the weights (checked against their hash), the buffers. */
static int dev_load(kmodel *m, kdev *d, kerr *err)
{
    const ka_manifest *man = m->m;
    CU(cuStreamCreate(&d->stream, CU_STREAM_NON_BLOCKING));
    CU(cuModuleLoadData(&d->mod, m->af->data + d->code->offset));
    d->fn = xcalloc((size_t)(man->nkernels ? man->nkernels : 1), sizeof(CUfunction));
    for (int i = 0; i < man->nkernels; i++) {
        if (m->cu.cuModuleGetFunction(&d->fn[i], d->mod, man->kernels[i].name))
            return kerr_add(err, "%s: kernel '%s' is missing from the code for this GPU (%s): "
                                 "rebuild it with kilnc compile",
                            m->af->path, man->kernels[i].name, d->code->name);
        if (man->kernels[i].smem > 48 * 1024)
            CU(cuFuncSetAttribute(d->fn[i], CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                  man->kernels[i].smem));
    }
    double t_up = util_now();
    if (upload_weights(m, d, err))
        return -1;
    double t_hash = util_now();
    uint64_t got = hash_finish(d->shard_job);
    d->shard_job = NULL;
    d->up_s = t_hash - t_up;
    d->hash_wait_s = util_now() - t_hash;
    if (ka_shard_hash_check_rank(m->af, d->rank, d->shard, got, err))
        return -1;
    return alloc_device(m, d, err);
}

/* JOB_FIT: how many KV blocks this device's free memory allows. */
static int dev_fit(kmodel *m, kdev *d, kerr *err)
{
    size_t fr = 0, tot = 0;
    CU(cuMemGetInfo(&fr, &tot));
    d->kv_fit = (long)((double)fr * m->o.kv_memory / (double)m->kv_per_block);
    if (d->kv_fit < 2)
        return kerr_add(err, "not enough GPU memory for the KV cache (%zu MiB free after the "
                             "weights; one block of %d tokens needs %zu KiB): use a smaller "
                             "model or raise --kv-memory",
                        fr >> 20, KILN_BLOCK, m->kv_per_block >> 10);
    return 0;
}

/* The host step arrays, the sampling buffers and the KV layout, shared by every device (made
 * once, in rank 0's context; pinned memory is usable from every context). */
static int alloc_shared(kmodel *m, kerr *err)
{
    const ka_manifest *man = m->m;
    m->coff = xcalloc((size_t)(man->nconsts ? man->nconsts : 1), sizeof(size_t));
    for (int i = 0; i < man->nconsts; i++) {
        m->coff[i] = m->const_bytes;
        m->const_bytes += align_up(sizeof(float) * (size_t)man->consts[i].n);
    }
    m->cap_tok = man->max_tokens > man->max_seqs ? man->max_tokens : man->max_seqs;
    m->cap_seq = man->max_seqs;
    m->max_blocks = (man->max_seq_len + KILN_BLOCK - 1) / KILN_BLOCK;
    m->meta_bytes = meta_layout(m, m->cap_tok, m->cap_seq).bytes; /* the largest step's */
    CU(cuMemAllocHost((void **)&m->h_meta, m->meta_bytes));
    memset(m->h_meta, 0, m->meta_bytes);
    CU(cuMemAllocHost((void **)&m->h_ids, sizeof(int32_t) * (size_t)m->cap_seq));
    m->kv_k = xcalloc((size_t)(man->n_layers ? man->n_layers : 1), sizeof(size_t));
    m->kv_v = xcalloc((size_t)(man->n_layers ? man->n_layers : 1), sizeof(size_t));
    for (int l = 0; l < man->n_layers; l++)
        m->kv_per_block += (size_t)(ka_kv_block_bytes(man, l, 0) + ka_kv_block_bytes(man, l, 1));
    return 0;
}

/* The paged KV cache: what the device with the least free memory allows, up to what the limits
 * can use; the same layout on every device (each holds its rank's KV heads). */
static int size_kv(kmodel *m, kerr *err)
{
    const ka_manifest *man = m->m;
    if (!man->n_layers)
        return 0;
    if (run_all(m, JOB_FIT, err))
        return -1;
    long need = (long)man->max_seqs * m->max_blocks + 1, fit = need;
    for (int i = 0; i < m->ndev; i++)
        if (m->devs[i].kv_fit < fit)
            fit = m->devs[i].kv_fit;
    if (m->nnodes > 1 && m->remote_fit < fit)
        fit = m->remote_fit;
    m->nblocks = (int)fit;
    kv_layout(m);
    return run_all(m, JOB_KV, err);
}

/* Each layer's K and V in a device's KV cache of m->nblocks blocks (ka_kv_block_bytes: 16-bit
 * values, or --kv-dtype fp8's e4m3 blocks with their scales). A layer without a V cache (v_dim
 * 0: multi-head latent attention) takes no V bytes; its kv_v is the next layer's start and no
 * kernel of it reads KA_ARG_KV_V. */
static void kv_layout(kmodel *m)
{
    const ka_manifest *man = m->m;
    size_t o = 0;
    for (int l = 0; l < man->n_layers; l++) {
        m->kv_k[l] = o;
        o += align_up((size_t)m->nblocks * (size_t)ka_kv_block_bytes(man, l, 0));
        m->kv_v[l] = o;
        o += align_up((size_t)m->nblocks * (size_t)ka_kv_block_bytes(man, l, 1));
    }
    m->kv_bytes = o;
}

static int dev_kv(kmodel *m, kdev *d, kerr *err)
{
    CU(cuMemAlloc(&d->kv, m->kv_bytes));
    CU(cuMemsetD8(d->kv, 0, m->kv_bytes));
    CU(cuStreamSynchronize(NULL)); /* legacy stream: see alloc_device */
    return 0;
}

/* Everything that needs no GPU, before libcuda is touched: the requested tp, every rank's
 * shard (id, header, weights), NCCL when the schedule needs it. */
static int check_host_side(kmodel *m, const char *dir, kerr *err)
{
    const ka_manifest *man = m->m;
    if (m->o.tp && m->o.tp != man->tp)
        return kerr_add(err, "%s was compiled for tensor parallelism over %d GPU%s (tp %d), not "
                             "--tp %d: run it with --tp %d (or without --tp), or compile it for "
                             "%d GPUs: kilnc compile MODEL_DIR -o OUT --tp %d",
                        m->af->path, man->tp, man->tp == 1 ? "" : "s", man->tp, m->o.tp, man->tp,
                        m->o.tp, m->o.tp);
    m->nnodes = m->o.nnodes > 1 ? m->o.nnodes : 1;
    m->node_rank = m->o.node_rank;
    if (m->nnodes > 1 && !m->o.rendezvous)
        return kerr_add(err, "--nnodes %d needs --rendezvous HOST:PORT (node 0's address and a "
                             "free TCP port, the same on every node)",
                        m->nnodes);
    if (m->nnodes == 1 && m->o.rendezvous)
        return kerr_add(err, "--rendezvous %s applies to several hosts: give --nnodes N (and "
                             "--node-rank) too",
                        m->o.rendezvous);
    if (m->node_rank < 0 || m->node_rank >= m->nnodes)
        return kerr_add(err, "--node-rank %d: expected 0 to %d (--nnodes %d)", m->node_rank,
                        m->nnodes - 1, m->nnodes);
    if (man->tp % m->nnodes)
        return kerr_add(err, "%s: its %d ranks (tp %d) cannot be split evenly over --nnodes %d: "
                             "use a number of nodes that divides %d, or compile it for another "
                             "tp: kilnc compile MODEL_DIR -o OUT --tp N",
                        m->af->path, man->tp, man->tp, m->nnodes, man->tp);
    m->ndev = man->tp / m->nnodes;
    m->first_rank = m->node_rank * m->ndev;
    m->devs = xcalloc((size_t)m->ndev, sizeof(kdev));
    /* the shards' data hashes run on the other cores from now until each is uploaded */
    int threads = (util_cpus(HASH_MAX_THREADS) - 1) / m->ndev;
    for (int i = 0; i < m->ndev; i++) {
        kdev *d = &m->devs[i];
        d->m = m;
        d->rank = m->first_rank + i;
        kerr_clear(&d->err);
        d->shard = ka_shard_open_rank(m->af, dir, d->rank, err);
        if (!d->shard)
            return -1;
    }
    for (int i = 0; i < m->ndev; i++)
        m->devs[i].shard_job =
            ka_shard_hash_start(man, m->devs[i].shard, threads < 1 ? 1 : threads);
    if (man->collectives) {
        char why[300];
        snprintf(why, sizeof why, "%s (tensor parallel over %d GPU%s: %d collective steps)",
                 m->af->path, man->tp, man->tp == 1 ? "" : "s", man->collectives);
        if (kncl_load(&m->nccl, KNCCL_LIB, why, err))
            return -1;
    }
    m->threaded = m->ndev > 1 || man->collectives > 0;
    const char *ar = getenv("KILN_ALLREDUCE");
    if (!ar || !*ar || strcmp(ar, "auto") == 0)
        m->ar_mode = AR_AUTO;
    else if (strcmp(ar, "nccl") == 0)
        m->ar_mode = AR_NCCL;
    else if (strcmp(ar, "p2p") == 0)
        m->ar_mode = AR_P2P;
    else
        return kerr_add(err, "KILN_ALLREDUCE=%s: expected nccl (NCCL for every all-reduce), p2p "
                             "(the one-shot peer-to-peer kernel where it fits, required) or auto "
                             "(the default: the kernel where it fits and the GPUs allow it)",
                        ar);
    return 0;
}

/* libcuda, the devices (one per rank: CUDA devices 0..tp-1 of those visible), their contexts. */
static int open_devices(kmodel *m, kerr *err)
{
    const ka_manifest *man = m->m;
    if (kcuda_load(&m->cu, err))
        return -1;
    int visible = 0;
    CU(cuDeviceGetCount(&visible));
    if (visible < m->ndev) {
        const char *cvd = getenv("CUDA_VISIBLE_DEVICES");
        char per[64] = "";
        if (m->nnodes > 1)
            snprintf(per, sizeof per, ", %d on each of %d nodes", m->ndev, m->nnodes);
        return kerr_add(err, "%s is tensor parallel over %d GPUs (tp %d%s), but only %d GPU%s "
                             "%s visible (CUDA_VISIBLE_DEVICES=%s): run it where %d GPUs are "
                             "visible (list them in CUDA_VISIBLE_DEVICES), or compile it for %d: "
                             "kilnc compile MODEL_DIR -o OUT --tp %d",
                        m->af->path, man->tp, man->tp, per, visible, visible == 1 ? "" : "s",
                        visible == 1 ? "is" : "are", cvd ? cvd : "(not set)", m->ndev,
                        visible * m->nnodes, visible * m->nnodes);
    }
    for (int i = 0; i < m->ndev; i++) {
        kdev *d = &m->devs[i];
        CUresult rc;
        if ((rc = m->cu.cuDeviceGet(&d->dev, i)) ||
            (rc = m->cu.cuDeviceGetAttribute(&d->cc_major,
                                             CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, d->dev)) ||
            (rc = m->cu.cuDeviceGetAttribute(&d->cc_minor,
                                             CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, d->dev)) ||
            (rc = m->cu.cuDeviceGetAttribute(&d->sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                                             d->dev)) ||
            (rc = m->cu.cuDeviceGetName(d->devname, sizeof d->devname, d->dev))) {
            kcuda_fail(&m->cu, rc, "device query", __FILE__, __LINE__, err);
            return kerr_add(err, "on GPU %d", i);
        }
        if ((rc = m->cu.cuDevicePrimaryCtxRetain(&d->ctx, d->dev))) {
            d->ctx = NULL;
            kcuda_fail(&m->cu, rc, "cuDevicePrimaryCtxRetain", __FILE__, __LINE__, err);
            return kerr_add(err, "on GPU %d (%s)", i, d->devname);
        }
        if (pick_code(m, d, err) || code_pdl(d, err))
            return -1;
    }
    CU(cuCtxSetCurrent(m->devs[0].ctx));
    return 0;
}

/* The communicators: one unique id (node 0's, handed to the others at the rendezvous), every
 * local rank's ncclCommInitRank in one group. */
static int init_nccl(kmodel *m, kerr *err)
{
    if (!m->m->collectives)
        return 0;
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (m->node_rank == 0)
        KNCCL(&m->nccl, ncclGetUniqueId(&id), err);
    if (m->nnodes > 1) {
        uint64_t key; /* the header's hash of the manifest: the same artifact on every node */
        memcpy(&key, m->af->data + 32, sizeof key);
        if (krdv_open(&m->rdv, m->o.rendezvous, m->nnodes, m->node_rank, key, &id,
                      KRDV_TIMEOUT_S, err))
            return -1;
    }
    CUcontext ctxs[KA_MAX_TP];
    ncclComm_t comms[KA_MAX_TP];
    for (int i = 0; i < m->ndev; i++)
        ctxs[i] = m->devs[i].ctx;
    int rc = kncl_init_comms(&m->nccl, &m->cu, m->ndev, ctxs, m->m->tp, m->first_rank, &id,
                             comms, err);
    for (int i = 0; i < m->ndev; i++)
        m->devs[i].comm = comms[i];
    CU(cuCtxSetCurrent(m->devs[0].ctx));
    return rc;
}

/* *why: why the one-shot all-reduce kernel cannot run here (NULL: it can); -1 when a driver
 * query fails. */
static int p2p_unusable(kmodel *m, const char **why, char *buf, size_t cap, kerr *err)
{
    const ka_manifest *man = m->m;
    *why = NULL;
    if (m->ar_mode == AR_NCCL)
        *why = "KILN_ALLREDUCE=nccl";
    else if (man->tp < 2)
        *why = "tp 1";
    else if (m->nnodes > 1)
        *why = "the ranks span several hosts";
    else if (m->p2p_kernel < 0)
        *why = "the artifact has no allreduce_p2p kernel: it was compiled by an older kilnc";
    else if (m->ndev > KILN_P2P_MAX_RANKS) {
        snprintf(buf, cap, "tp %d: the kernel takes at most %d ranks", m->ndev,
                 KILN_P2P_MAX_RANKS);
        *why = buf;
    }
    for (int i = 0; i < m->ndev && !*why; i++)
        for (int j = 0; j < m->ndev && !*why; j++) {
            int ok = 0;
            if (i != j)
                CU(cuDeviceCanAccessPeer(&ok, m->devs[i].dev, m->devs[j].dev));
            if (i != j && !ok) {
                snprintf(buf, cap, "GPU %d cannot access GPU %d's memory (no peer access)", i, j);
                *why = buf;
            }
        }
    return 0;
}

/* The one-shot all-reduce (templates/collective.cuh): peer access between every pair of the
 * devices, on each an exchange buffer of two halves of p2p_cap elements (the largest all-reduce
 * of either schedule at its largest step, at most P2P_MAX_BYTES*), its flags and epochs
 * (zeroed), and every rank's kiln_p2p with the peers' pointers. Steps larger than p2p_cap keep
 * NCCL (run_collective). Logs which all-reduce runs. */
static int init_p2p(kmodel *m, kerr *err)
{
    const ka_manifest *man = m->m;
    m->p2p_kernel = -1;
    m->p2p_cap = 0;
    if (!m->m->collectives)
        return 0;
    for (int i = 0; i < man->nkernels && m->p2p_kernel < 0; i++)
        if (ka_kernel_is(&man->kernels[i], KILN_P2P_KERNEL))
            m->p2p_kernel = i;
    if (m->p2p_kernel >= 0 && man->kernels[m->p2p_kernel].block != KILN_P2P_THREADS)
        return kerr_add(err, "%s: kernel %s has %d threads per block, this kiln launches it with "
                             "%d: recompile the model with this kilnc (kilnc compile --tp %d)",
                        m->af->path, man->kernels[m->p2p_kernel].name,
                        man->kernels[m->p2p_kernel].block, KILN_P2P_THREADS, man->tp);
    /* the largest all-reduce of the schedules at their largest steps, in the dtype */
    int64_t biggest = 0, bound = (man->tp == 2 ? P2P_MAX_BYTES_TP2 : P2P_MAX_BYTES) / m->esize;
    int nar = 0;
    for (int pass = 0; pass < 2; pass++) {
        const ka_step *st = pass ? man->decode : man->prefill;
        int n = pass ? man->ndecode : man->nprefill;
        int64_t tmax = pass ? man->max_seqs : (man->max_tokens > man->max_seqs ? man->max_tokens
                                                                                : man->max_seqs);
        for (int i = 0; i < n; i++)
            if (st[i].kind == KA_ALLREDUCE && !st[i].out_f32) {
                int64_t e = st[i].n * (st[i].rows == KA_ROWS_S ? man->max_seqs : tmax);
                biggest = e > biggest ? e : biggest;
                nar++;
            }
    }
    char whyb[160];
    const char *why = "no all-reduce steps";
    if (nar && p2p_unusable(m, &why, whyb, sizeof whyb, err))
        return -1;
    if (why && m->ar_mode == AR_P2P)
        return kerr_add(err, "KILN_ALLREDUCE=p2p: the one-shot peer-to-peer all-reduce cannot run "
                             "here: %s (unset KILN_ALLREDUCE to fall back to NCCL)",
                        why);
    if (why) {
        snprintf(m->ar_desc, sizeof m->ar_desc, "all-reduce by NCCL (%s)", why);
    } else {
        int64_t cap = ((biggest < bound ? biggest : bound) + 7) / 8 * 8; /* halves 16-aligned */
        size_t buf = align_up((size_t)cap * 2 * (size_t)m->esize);
        size_t flags = align_up(sizeof(unsigned) * KILN_P2P_BLOCKS * KILN_P2P_MAX_RANKS);
        size_t epochs = align_up(sizeof(unsigned) * KILN_P2P_BLOCKS);
        for (int i = 0; i < m->ndev; i++) {
            kdev *d = &m->devs[i];
            CU(cuCtxSetCurrent(d->ctx));
            for (int j = 0; j < m->ndev; j++) {
                CUresult rc =
                    j == i ? CUDA_SUCCESS : m->cu.cuCtxEnablePeerAccess(m->devs[j].ctx, 0);
                if (rc != CUDA_SUCCESS && rc != CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED) {
                    kcuda_fail(&m->cu, rc, "cuCtxEnablePeerAccess", __FILE__, __LINE__, err);
                    return kerr_add(err, "enabling GPU %d's access to GPU %d's memory (for the "
                                         "peer-to-peer all-reduce; KILN_ALLREDUCE=nccl avoids it)",
                                    i, j);
                }
            }
            CU(cuMemAlloc(&d->p2p_mem, buf + flags + epochs));
            CU(cuMemsetD8(d->p2p_mem, 0, buf + flags + epochs));
            CU(cuStreamSynchronize(NULL)); /* legacy stream: see alloc_device */
        }
        for (int i = 0; i < m->ndev; i++) {
            kiln_p2p *p = &m->devs[i].p2p;
            memset(p, 0, sizeof *p);
            for (int q = 0; q < m->ndev; q++) {
                p->buf[q] = m->devs[q].p2p_mem;
                p->flags[q] = m->devs[q].p2p_mem + buf;
            }
            p->epoch = m->devs[i].p2p_mem + buf + flags;
            p->cap = cap;
            p->rank = i;
            p->nranks = m->ndev;
        }
        m->p2p_cap = cap;
        CU(cuCtxSetCurrent(m->devs[0].ctx));
        snprintf(m->ar_desc, sizeof m->ar_desc,
                 "all-reduce by the one-shot peer-to-peer kernel up to %lld KiB, %s",
                 (long long)(cap * m->esize >> 10),
                 biggest > cap ? "NCCL above (prefill)" : "every all-reduce step");
    }
    if (!m->o.quiet)
        fprintf(stderr, "kiln: %s\n", m->ar_desc);
    return 0;
}

static int start_workers(kmodel *m, kerr *err)
{
    if (!m->threaded)
        return 0;
    pthread_mutex_init(&m->mu, NULL);
    pthread_cond_init(&m->go, NULL);
    pthread_cond_init(&m->done, NULL);
    m->sync_init = 1;
    for (int i = 0; i < m->ndev; i++) {
        int e = pthread_create(&m->devs[i].thread, NULL, worker, &m->devs[i]);
        if (e)
            return kerr_add(err, "cannot start the worker thread of GPU %d: %s", i, strerror(e));
        m->devs[i].started = 1;
    }
    return 0;
}

/* How the kernels launch and what the warm-up ran, appended to the load line. */
static void describe_launch(kmodel *m)
{
    int pdl = 0, off = 0;
    for (int i = 0; i < m->ndev; i++) {
        pdl += m->devs[i].pdl;
        off |= m->devs[i].cc_major >= 9 && !m->devs[i].pdl;
    }
    const char *e = getenv("KILN_PDL");
    const char *how = pdl == m->ndev ? "with programmatic dependent launch"
                      : e && !strcmp(e, "0") ? "without programmatic dependent launch (KILN_PDL=0)"
                      : off ? "without programmatic dependent launch (code for an SM before sm_90)"
                            : "without programmatic dependent launch (it needs sm_90)";
    size_t l = strlen(m->desc);
    snprintf(m->desc + l, sizeof m->desc - l, "; kernels %s; %s", how,
             m->node_rank > 0  ? "warmed up by node 0's steps"
             : m->warm_desc[0] ? m->warm_desc
                               : "no warm-up (KILN_WARMUP=0)");
}

static void describe(kmodel *m)
{
    const ka_manifest *man = m->m;
    char wb[32];
    size_t wbytes = 0;
    for (int i = 0; i < man->nweights; i++)
        wbytes += (size_t)man->weights[i].nbytes;
    util_human_bytes((double)wbytes, wb, sizeof wb);
    int threads = (util_cpus(HASH_MAX_THREADS) - 1) / m->ndev;
    double up = 0, wait = 0;
    for (int i = 0; i < m->ndev; i++) {
        up = m->devs[i].up_s > up ? m->devs[i].up_s : up;
        wait = m->devs[i].hash_wait_s > wait ? m->devs[i].hash_wait_s : wait;
    }
    const kdev *d0 = &m->devs[0];
    char kv[128];
    if (m->node_rank > 0)
        snprintf(kv, sizeof kv, "KV cache sized by node 0");
    else
        snprintf(kv, sizeof kv, "KV cache %d tokens in %d blocks%s",
                 (m->nblocks - 1) * KILN_BLOCK, m->nblocks - 1,
                 man->kv_e4m3 ? " (fp8: e4m3 with a scale per token and head)" : "");
    if (!m->threaded) {
        snprintf(m->desc, sizeof m->desc,
                 "%s (%s) on %s (sm_%d%d, %s%s): %s of weights (uploaded in %.2f s; their hash, "
                 "on %d threads, verified %.0f ms after the upload), %s",
                 man->model_name, man->arch, d0->devname, d0->cc_major, d0->cc_minor,
                 d0->is_ptx ? "PTX " : "", d0->code->name, wb, up, threads < 1 ? 1 : threads,
                 wait * 1e3, kv);
        describe_launch(m);
        return;
    }
    char nv[32] = "", devs[1024] = "";
    size_t dl = 0;
    for (int i = 0; i < m->ndev && dl < sizeof devs; i++) {
        const kdev *d = &m->devs[i];
        dl += (size_t)snprintf(devs + dl, sizeof devs - dl, "%sGPU %d %s (rank %d, sm_%d%d, %s%s)",
                               i ? ", " : "", i, d->devname, d->rank, d->cc_major, d->cc_minor,
                               d->is_ptx ? "PTX " : "", d->code->name);
    }
    const char *nvls = getenv("NCCL_NVLS_ENABLE");
    char node[64] = "";
    if (m->nnodes > 1)
        snprintf(node, sizeof node, " of node %d of %d", m->node_rank, m->nnodes);
    snprintf(m->desc, sizeof m->desc,
             "%s (%s) tensor parallel, tp %d, NCCL %s (NCCL_NVLS_ENABLE=%s), %s, on %s%s: %s "
             "of weights per rank (uploaded in %.2f s; their hashes verified %.0f ms after), %s "
             "on each",
             man->model_name, man->arch, man->tp, kncl_version_str(&m->nccl, nv, sizeof nv),
             nvls ? nvls : "unset", m->ar_desc, devs, node, wb, up, wait * 1e3, kv);
    describe_launch(m);
}

/* The largest prompt the warm-up prefills: longer prompts pay their first-call costs (a
 * cuBLASLt plan for their M) in proportion to far more compute. */
#define WARM_MAX_TOKENS 2048

/* The warm-up at the end of the load: every first-call cost a first request would otherwise pay
 * (lazy loading of the model's kernels and of cuBLASLt's, cuBLASLt's algorithm choice per GEMM
 * shape, the CUDA runtime's start inside cuBLASLt, each decode bucket's graph capture,
 * instantiation and first upload), paid here through the ordinary step on every rank (and, from
 * node 0, on every node). It runs prefills of 1 (embedding models) or 2, 4, 8, ... tokens up to
 * the step's limit (at most WARM_MAX_TOKENS), both the GEMV and the GEMM paths and cuBLASLt's
 * choices for those M, and then one decode step of every bucket (1, 2, 4, ... max_seqs rows),
 * which captures its graph.
 *
 * Nothing a user can see changes: the items are the engine's own (all token 0, greedy, their
 * outputs dropped), so no scheduler, KV allocation, metric or RNG is involved (sampling draws
 * from each request's own (seed, index), no state carries over). They write garbage K/V into
 * blocks 1.. of the cache, which no sequence holds yet and every sequence overwrites before it
 * reads (attention reads only the positions its own tokens wrote). Not warmed: the first
 * request that asks for prompt logits (its [max_tokens, vocab] buffer is allocated on first use,
 * and so is the pinned buffer of the first request with logprobs). */
static int warm_up(kmodel *m, kerr *err)
{
    const kb_info *in = &m->info;
    double t0 = util_now();
    /* one item's tokens: within its sequence limit and the blocks it may name */
    int per = in->max_seq_len;
    if ((long)in->kv_blocks * KILN_BLOCK < per)
        per = in->kv_blocks * KILN_BLOCK;
    if ((long)m->max_blocks * KILN_BLOCK < per)
        per = m->max_blocks * KILN_BLOCK;
    int limit = in->max_tokens < WARM_MAX_TOKENS ? in->max_tokens : WARM_MAX_TOKENS;
    if ((long)per * in->max_seqs < limit)
        limit = per * in->max_seqs;
    assert(per >= 1 && limit >= 1);
    int nblk = (per + KILN_BLOCK - 1) / KILN_BLOCK;
    int32_t *ids = xcalloc((size_t)(limit > in->max_seqs ? limit : in->max_seqs), sizeof *ids);
    int32_t *blocks = xcalloc((size_t)nblk, sizeof *blocks);
    for (int b = 0; b < nblk; b++)
        blocks[b] = b + 1;
    kb_item *items = xcalloc((size_t)in->max_seqs, sizeof *items);
    float *emb = in->embed ? xcalloc((size_t)in->max_seqs * (size_t)in->hidden, sizeof *emb)
                           : NULL;
    int rc = 0, first = in->embed ? 1 : 2, last = 0, decode_rows = 0;
    for (int want = first; !rc && last < limit; want *= 2) {
        int T = want < limit ? want : limit, n = 0;
        for (int done = 0; done < T; n++) { /* prefill items of at most `per` tokens */
            kb_item *it = &items[n];
            memset(it, 0, sizeof *it);
            it->slot = n;
            it->n = T - done < per ? T - done : per;
            it->prefill = 1;
            it->ids = ids;
            it->blocks = blocks;
            it->nblocks = (it->n + KILN_BLOCK - 1) / KILN_BLOCK;
            it->sample = !in->embed;
            it->embedding = emb ? emb + (size_t)n * (size_t)in->hidden : NULL;
            done += it->n;
        }
        rc = engine_step(&m->kb, items, n, err);
        last = T;
    }
    for (int want = 1; !rc && !in->embed && decode_rows < in->max_seqs; want *= 2) {
        int n = want < in->max_seqs ? want : in->max_seqs;
        for (int r = 0; r < n; r++) {
            kb_item *it = &items[r];
            memset(it, 0, sizeof *it);
            it->slot = r;
            it->n = 1;
            it->ids = ids;
            it->blocks = blocks;
            it->nblocks = 1;
            it->sample = 1;
        }
        rc = engine_step(&m->kb, items, n, err);
        decode_rows = n;
    }
    free(ids);
    free(blocks);
    free(items);
    free(emb);
    if (rc)
        return kerr_add(err, "in the warm-up after the load (KILN_WARMUP=0 skips it)");
    m->warm_s = util_now() - t0;
    char dec[96] = "";
    if (decode_rows)
        snprintf(dec, sizeof dec, ", decode steps of 1..%d rows%s", decode_rows,
                 m->o.no_graphs || m->graphs_failed ? "" : " and their CUDA graphs");
    snprintf(m->warm_desc, sizeof m->warm_desc, "warm-up %.0f ms (prefills of %d..%d tokens%s)",
             m->warm_s * 1e3, first < last ? first : last, last, dec);
    return 0;
}

/* The name KILN_ABLATE's parts are matched against: a kernel step's kernel, "cublaslt" for a
 * GEMM step; collectives are never left out. */
static const char *step_name(const kmodel *m, const ka_step *s)
{
    return s->kind == KA_KERNEL ? m->m->kernels[s->kernel].name
           : s->kind == KA_GEMM ? "cublaslt"
                                : NULL;
}

/* 1 if the part p[0..n) of KILN_ABLATE is in name (a kernel step's or "cublaslt"; never in
 * NULL, a collective's) */
static int part_in(const char *name, const char *p, size_t n)
{
    return name && memmem(name, strlen(name), p, n) != NULL;
}

static int ablated(const kmodel *m, const ka_step *s)
{
    if (!m->ablate)
        return 0;
    const char *name = step_name(m, s);
    for (const char *p = m->ablate;; p++) { /* ablate_parse: no empty part, no '+' last */
        size_t n = strcspn(p, "+");
        if (part_in(name, p, n))
            return 1;
        if (!p[n])
            return 0;
        p += n;
    }
}

/* KILN_ABLATE: parts of [A-Za-z0-9_], '+'-separated, each in some step's name */
static int ablate_parse(kmodel *m, kerr *err)
{
    const char *v = getenv("KILN_ABLATE");
    if (!v || !*v)
        return 0;
    const ka_manifest *man = m->m;
    size_t len = strlen(v);
    if (v[0] == '+' || v[len - 1] == '+' || strstr(v, "++"))
        return kerr_add(err, "KILN_ABLATE=%s: expected kernel-name parts joined by '+' "
                             "(e.g. rms_norm+act_mul)", v);
    static const char word[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_";
    for (const char *p = v; *p;) {
        int n = (int)strcspn(p, "+"), found = 0;
        if ((int)strspn(p, word) < n)
            return kerr_add(err, "KILN_ABLATE=%s: '%.*s' is not a kernel-name part "
                                 "([A-Za-z0-9_])", v, n, p);
        for (int sch = 0; sch < 2 && !found; sch++) {
            const ka_step *st = sch ? man->decode : man->prefill;
            int ns = sch ? man->ndecode : man->nprefill;
            for (int i = 0; i < ns && !found; i++)
                found = part_in(step_name(m, &st[i]), p, (size_t)n);
        }
        if (!found)
            return kerr_add(err, "KILN_ABLATE=%s: no kernel of this model has '%.*s' in its "
                                 "name (kiln inspect DIR --schedule lists them; cuBLASLt's GEMMs "
                                 "are \"cublaslt\")", v, n, p);
        p += n + (p[n] == '+');
    }
    m->ablate = xstrdup(v);
    fprintf(stderr, "kiln: KILN_ABLATE=%s: the launches of those kernels are left out; timing "
                    "only, the outputs are wrong\n", v);
    return 0;
}

kmodel *km_load(const char *dir, const km_opts *o, kerr *err)
{
    double t0 = util_now();
    kmodel *m = xcalloc(1, sizeof *m);
    m->o = *o;
    if (m->o.kv_memory <= 0 || m->o.kv_memory > 1)
        m->o.kv_memory = 0.9;
    int want_kt;
    if (util_env_switch("KILN_WARMUP", 1, "leave the first-call costs to the first request",
                        "warm up at the end of the load, the default", &m->warm, err) ||
        util_env_switch("KILN_KERNEL_TIMES", 0, "the default",
                        "time each kernel in the stream, print the totals at exit", &want_kt,
                        err)) {
        km_free(m);
        return NULL;
    }
    if (want_kt) /* the launches are timed one by one, so the decode steps are not graphs */
        m->o.no_graphs = 1;
    char *path = util_path_join(dir, "model.kiln");
    if (!util_is_dir(dir)) {
        kerr_add(err, "%s: not a folder (expected the output of kilnc compile)", dir);
        goto fail;
    }
    m->af = ka_read(path, err);
    if (!m->af)
        goto fail;
    m->m = &m->af->m;
    if (ablate_parse(m, err))
        goto fail;
    m->esize = 2;
    m->f16 = strcmp(m->m->dtype, "f16") == 0;
    /* everything that can be checked without a GPU is checked first: ka_read has checked every
     * manifest field against its table, buffer or limit, so nothing below re-checks them */
    if (check_host_side(m, dir, err) || open_devices(m, err))
        goto fail;
    if (m->threaded && !m->o.quiet) {
        char nv[32];
        const char *cvd = getenv("CUDA_VISIBLE_DEVICES");
        fprintf(stderr, "kiln: tensor parallel: tp %d, ranks %d..%d on GPUs 0..%d%s "
                        "(CUDA_VISIBLE_DEVICES=%s), NCCL %s from %s, NCCL_NVLS_ENABLE=%s\n",
                m->m->tp, m->first_rank, m->first_rank + m->ndev - 1, m->ndev - 1,
                m->nnodes > 1 ? " of this node" : "", cvd ? cvd : "(not set)",
                kncl_version_str(&m->nccl, nv, sizeof nv), KNCCL_LIB,
                getenv("NCCL_NVLS_ENABLE") ? getenv("NCCL_NVLS_ENABLE") : "unset");
    }
    /* the KV cache of nodes other than node 0 is sized when node 0 says (km_follow) */
    if (alloc_shared(m, err) || start_workers(m, err) || run_all(m, JOB_LOAD, err) ||
        init_nccl(m, err) || init_p2p(m, err) || (m->node_rank == 0 && size_kv(m, err)))
        goto fail;
    init_backend(m);
    if (m->node_rank == 0 && m->warm && warm_up(m, err))
        goto fail;
    m->load_s = util_now() - t0;
    m->kt = want_kt; /* the warm-up's steps are not counted */
    describe(m);
    free(path);
    return m;
fail:
    free(path);
    km_free(m);
    return NULL;
}

static void free_device(kmodel *m, kdev *d)
{
    if (d->ctx) {
        m->cu.cuCtxSetCurrent(d->ctx);
        for (int i = 0; i < MAX_BUCKETS; i++)
            if (d->graphs[i])
                m->cu.cuGraphExecDestroy(d->graphs[i]);
        kgemm_free(d->gemm);
        for (int i = 0; i < d->kt_cap; i++)
            m->cu.cuEventDestroy(d->kt_ev[i]);
        CUdeviceptr bufs[] = {d->warena, d->consts, d->slab,     d->scratch, d->logits,
                              d->logits_all, d->out, d->meta, d->kv, d->d_ids,
                              d->p2p_mem};
        for (size_t i = 0; i < ARRAY_LEN(bufs); i++)
            if (bufs[i])
                m->cu.cuMemFree(bufs[i]);
        if (d->mod)
            m->cu.cuModuleUnload(d->mod);
        if (d->stream)
            m->cu.cuStreamDestroy(d->stream);
    }
    hash_abort(d->shard_job); /* its threads read the mapping st_close unmaps */
    st_close(d->shard);
    free(d->fn);
    free(d->woff);
    free(d->kt_ev);
    free(d->kt_name);
}

void km_free(kmodel *m)
{
    if (!m)
        return;
    kt_print(m);
    free(m->ablate);
    if (m->rdv.fd) { /* node 0 tells the others to end; the others just leave */
        kerr ignored;
        kerr_clear(&ignored);
        if (m->node_rank == 0)
            forward(m, JOB_QUIT, &ignored);
        krdv_close(&m->rdv);
    }
    if (m->threaded && m->sync_init) { /* the workers destroy their communicators and end */
        pthread_mutex_lock(&m->mu);
        m->job = JOB_QUIT;
        m->gen++;
        pthread_cond_broadcast(&m->go);
        pthread_mutex_unlock(&m->mu);
        for (int i = 0; i < m->ndev; i++)
            if (m->devs[i].started)
                pthread_join(m->devs[i].thread, NULL);
        pthread_mutex_destroy(&m->mu);
        pthread_cond_destroy(&m->go);
        pthread_cond_destroy(&m->done);
    }
    for (int i = 0; i < m->ndev; i++)
        free_device(m, &m->devs[i]);
    if (m->cu.lib) {
        if (m->ndev && m->devs[0].ctx) { /* the pinned buffers were made in rank 0's context */
            m->cu.cuCtxSetCurrent(m->devs[0].ctx);
            void *host[] = {m->h_meta, m->h_ids, m->h_lp};
            for (size_t i = 0; i < ARRAY_LEN(host); i++)
                if (host[i])
                    m->cu.cuMemFreeHost(host[i]);
        }
        for (int i = 0; i < m->ndev; i++)
            if (m->devs[i].ctx)
                m->cu.cuDevicePrimaryCtxRelease(m->devs[i].dev);
        kcuda_unload(&m->cu);
    }
    kncl_unload(&m->nccl);
    ka_file_free(m->af);
    free(m->devs);
    free(m->coff);
    free(m->kv_k);
    free(m->kv_v);
    free(m->kt_rows);
    free(m);
}

/* ---------------------------------------------------------------- running a schedule */

static CUdeviceptr ptr_of(const kmodel *m, const kdev *d, const ka_arg *a, CUdeviceptr logits)
{
    switch (a->kind) {
    case KA_ARG_BUF: return d->slab + (CUdeviceptr)a->i;
    case KA_ARG_SCRATCH: return d->scratch + (CUdeviceptr)a->i;
    case KA_ARG_WEIGHT: return d->warena + d->woff[a->i];
    case KA_ARG_CONST: return d->consts + m->coff[a->i];
    case KA_ARG_KV_K: return d->kv + m->kv_k[a->i];
    case KA_ARG_KV_V: return d->kv + m->kv_v[a->i];
    case KA_ARG_LOGITS: return logits;
    case KA_ARG_OUT: return d->out;
    default: return 0;
    }
}

static unsigned grid_dim(const ka_grid *g, int T, int S, int Q, int sms)
{
    long v = (long)g->t * T + (long)g->s * S + (long)g->q * Q + g->add + (long)g->sm * sms;
    return (unsigned)((v + g->div - 1) / g->div);
}

/* A collective step (artifact.h): rows x n elements of the step's dtype, over every rank. An
 * all-reduce that fits the exchange buffers runs the one-shot kernel, the others NCCL; which
 * one depends only on the step, its rows and the artifact, so every rank picks the same. */
static int run_collective(kmodel *m, kdev *d, const ka_step *s, int rows, CUdeviceptr logits,
                          kerr *err)
{
    ncclDataType_t t = s->out_f32 ? ncclFloat32 : m->f16 ? ncclFloat16 : ncclBfloat16;
    size_t count = (size_t)rows * (size_t)s->n;
    CUdeviceptr px = ptr_of(m, d, &s->x, logits), py = ptr_of(m, d, &s->y, logits);
    if (s->kind == KA_ALLREDUCE && !s->out_f32 && (int64_t)count <= m->p2p_cap &&
        ((px | py) & 15) == 0) {
        long long n = (long long)count;
        void *params[] = {&px, &py, &n, &d->p2p};
        return kcuda_launch(&m->cu, d->fn[m->p2p_kernel], KILN_P2P_BLOCKS, 1, 1, KILN_P2P_THREADS,
                            0, d->stream, params, d->pdl, err);
    }
    const void *x = (const void *)(uintptr_t)px;
    void *y = (void *)(uintptr_t)py;
    cudaStream_t st = d->stream; /* CUstream and cudaStream_t are the same type */
    if (s->kind == KA_ALLREDUCE)
        KNCCL(&m->nccl, ncclAllReduce(x, y, count, t, ncclSum, d->comm, st), err);
    else
        KNCCL(&m->nccl, ncclAllGather(x, y, count, t, d->comm, st), err);
    return 0;
}

/* ---------------------------------------------------------------- kernel times */

/* KILN_KERNEL_TIMES=1: on rank 0, after the load, each launch of a step run launch by launch
 * (the decode graphs are off) is preceded by an event named for what it runs (a kernel, or
 * cuBLASLt's GEMM and its N x K, or a collective), and the step's last launch followed by one
 * (name NULL). The events keep programmatic dependent launch from overlapping two kernels, so the
 * totals are the kernels as they run back to back in the stream, launch gaps included, where
 * Nsight Compute's one-kernel-at-a-time replay (tests/gpu/profile.sh) shows each alone. */
static int kt_mark(kmodel *m, kdev *d, const char *name, int n, int k, kerr *err)
{
    if (!m->kt || d->rank != 0)
        return 0;
    if (!d->kt_ev) { /* one event a step of the longer schedule, and the closing one */
        int cap = (m->m->nprefill > m->m->ndecode ? m->m->nprefill : m->m->ndecode) + 1;
        d->kt_ev = xcalloc((size_t)cap, sizeof *d->kt_ev);
        d->kt_name = xcalloc((size_t)cap, sizeof *d->kt_name);
        for (; d->kt_cap < cap; d->kt_cap++)
            CU(cuEventCreate(&d->kt_ev[d->kt_cap], CU_EVENT_DEFAULT));
    }
    assert(d->kt_n < d->kt_cap);
    if (!name)
        d->kt_name[d->kt_n][0] = 0;
    else if (n > 0)
        snprintf(d->kt_name[d->kt_n], sizeof d->kt_name[0], "%s %dx%d", name, n, k);
    else
        snprintf(d->kt_name[d->kt_n], sizeof d->kt_name[0], "%s", name);
    CU(cuEventRecord(d->kt_ev[d->kt_n++], d->stream));
    return 0;
}

/* After the step's wait: its intervals added to the totals of their names, and the step's
 * time on the host since dev_step began (t0) to the wait's return. */
static int kt_collect(kmodel *m, kdev *d, double t0, kerr *err)
{
    if (d->kt_n < 2) {
        d->kt_n = 0;
        return 0;
    }
    int dec = m->j.decode;
    for (int i = 0; i + 1 < d->kt_n; i++) {
        float ms;
        CU(cuEventElapsedTime(&ms, d->kt_ev[i], d->kt_ev[i + 1]));
        int r = 0;
        while (r < m->kt_nrows && (m->kt_rows[r].decode != dec ||
                                   strcmp(m->kt_rows[r].name, d->kt_name[i]) != 0))
            r++;
        if (r == m->kt_nrows) {
            if (m->kt_nrows == m->kt_cap) {
                m->kt_cap = m->kt_cap ? 2 * m->kt_cap : 64;
                m->kt_rows = xrealloc(m->kt_rows, (size_t)m->kt_cap * sizeof *m->kt_rows);
            }
            memset(&m->kt_rows[r], 0, sizeof m->kt_rows[r]);
            memcpy(m->kt_rows[r].name, d->kt_name[i], sizeof m->kt_rows[r].name);
            m->kt_rows[r].decode = dec;
            m->kt_nrows++;
        }
        m->kt_rows[r].count++;
        m->kt_rows[r].ms += ms;
    }
    float all;
    CU(cuEventElapsedTime(&all, d->kt_ev[0], d->kt_ev[d->kt_n - 1]));
    m->kt_steps[dec]++;
    m->kt_step_ms[dec] += all;
    m->kt_wall_ms[dec] += (util_now() - t0) * 1e3;
    d->kt_n = 0;
    return 0;
}

static int kt_by_ms(const void *a, const void *b)
{
    double x = ((const struct kt_row *)a)->ms, y = ((const struct kt_row *)b)->ms;
    return (x < y) - (x > y);
}

/* The totals, per schedule, the longest first (stderr). */
static void kt_print(kmodel *m)
{
    if (!m->kt_nrows)
        return;
    qsort(m->kt_rows, (size_t)m->kt_nrows, sizeof *m->kt_rows, kt_by_ms);
    fprintf(stderr, "kiln: KILN_KERNEL_TIMES, rank 0, the steps after the load, each launch "
                    "timed in the stream (no programmatic overlap)\n");
    for (int dec = 0; dec < 2; dec++) {
        if (!m->kt_steps[dec])
            continue;
        fprintf(stderr,
                "  %s: %ld steps, %.3f ms a step from the first launch to the last kernel's "
                "end, %.3f ms on the host (the step's arrays uploaded, launched, sampled, "
                "waited for)\n",
                dec ? "decode" : "prefill", m->kt_steps[dec],
                m->kt_step_ms[dec] / (double)m->kt_steps[dec],
                m->kt_wall_ms[dec] / (double)m->kt_steps[dec]);
        for (int r = 0; r < m->kt_nrows; r++) {
            const struct kt_row *k = &m->kt_rows[r];
            if (k->decode == dec)
                fprintf(stderr, "    %-36s %6.1f a step %9.3f ms a step %6.1f%%\n", k->name,
                        (double)k->count / (double)m->kt_steps[dec],
                        k->ms / (double)m->kt_steps[dec],
                        m->kt_step_ms[dec] > 0 ? 100 * k->ms / m->kt_step_ms[dec] : 0.0);
        }
    }
}

/* The kernels' view of this device's step arrays for T tokens in S rows. */
static kiln_step step_view(const kmodel *m, const kdev *d, int T, int S)
{
    const meta_at a = meta_layout(m, T, S);
    return (kiln_step){.T = T,
                       .n_seqs = S,
                       .max_blocks = m->max_blocks,
                       .tok_ids = d->meta + a.ids,
                       .tok_pos = d->meta + a.pos,
                       .tok_type = d->meta + a.type,
                       .tok_seq = d->meta + a.seq,
                       .tok_slot = d->meta + a.slot,
                       .seq_start = d->meta + a.start,
                       .seq_kvlen = d->meta + a.kvlen,
                       .block_table = d->meta + a.bt,
                       .seq_ropelen = d->meta + a.ropelen};
}

/* Launches the steps of one schedule for T tokens of S sequences (Q: most tokens of one). The
 * LM head's steps (those of a logits variant, KA_LOGITS_LAST or _ALL) run only with `head`: a
 * prompt chunk that is not a prompt's last, with nothing sampled and no prompt logits wanted,
 * would compute logits no one reads. */
static int run_steps(kmodel *m, kdev *d, const ka_step *steps, int n, int T, int S, int Q,
                     int head, int all_logits, CUdeviceptr logits, kerr *err)
{
    const ka_manifest *man = m->m;
    kiln_step st = step_view(m, d, T, S);
    for (int i = 0; i < n; i++) {
        const ka_step *s = &steps[i];
        if (ablated(m, s) || (s->logits == KA_LOGITS_LAST && (all_logits || !head)) ||
            (s->logits == KA_LOGITS_ALL && !all_logits))
            continue;
        int rows = s->rows == KA_ROWS_S ? S : T;
        if (!ka_size_runs(man, s->size, rows, d->sm90))
            continue;
        if (s->kind == KA_GEMM) {
            int fp8 = s->w.kind == KA_ARG_WEIGHT && man->weights[s->w.i].type == KA_W_E4M3;
            if (kt_mark(m, d, "cuBLASLt GEMM", (int)s->n, (int)s->k, err))
                return -1;
            if (kgemm_run(d->gemm, d->stream, m->f16, s->out_f32, fp8, rows, s->n, s->k,
                          ptr_of(m, d, &s->x, logits), s->ldx, ptr_of(m, d, &s->w, logits),
                          ptr_of(m, d, &s->bias, logits), ptr_of(m, d, &s->y, logits), s->ldy,
                          err))
                return kerr_add(err, "in step %d (%s)", i, s->label);
            continue;
        }
        if (s->kind == KA_ALLREDUCE || s->kind == KA_ALLGATHER) {
            if (kt_mark(m, d, s->kind == KA_ALLREDUCE ? "all-reduce" : "all-gather", 0, 0, err))
                return -1;
            if (run_collective(m, d, s, rows, logits, err))
                return kerr_add(err, "in step %d (%s), %d rows", i, s->label, rows);
            continue;
        }
        unsigned gx = grid_dim(&s->grid[0], T, S, Q, d->sms),
                 gy = grid_dim(&s->grid[1], T, S, Q, d->sms),
                 gz = grid_dim(&s->grid[2], T, S, Q, d->sms);
        if (!gx || !gy || !gz)
            continue;
        union {
            CUdeviceptr p;
            int i;
            float f;
        } val[KA_MAX_ARGS];
        void *params[KA_MAX_ARGS];
        CUtensorMap maps[2]; /* made when a step takes them (ka_read: its x, w, n, k, ldx) */
        int made = 0;
        for (int k = 0; k < s->nargs; k++) {
            const ka_arg *a = &s->args[k];
            switch (a->kind) {
            case KA_ARG_STEP: params[k] = &st; continue;
            case KA_ARG_TMAP:
                /* host work only (no GPU call), so a captured graph keeps the maps it was
                 * launched with: the pointers are fixed after load, and rows is its bucket's.
                 * i 0 and 1: gemm90's boxes; 2 and 3: gemm90_skinny's */
                if (!made++ &&
                    kcuda_gemm90_maps(&m->cu, maps, ptr_of(m, d, &s->x, logits),
                                      rows > 0 ? rows : 1, s->k, s->ldx,
                                      a->i < 2 ? KILN_GEMM90_BM : KILN_SKINNY_MAX,
                                      ptr_of(m, d, &s->w, logits), s->n,
                                      a->i < 2 ? KILN_GEMM90_BN(s->n) : KILN_SKINNY90_ROWS / 2,
                                      err))
                    return kerr_add(err, "in step %d (%s)", i, s->label);
                params[k] = &maps[a->i & 1];
                continue;
            case KA_ARG_I32: val[k].i = (int)a->i; break;
            case KA_ARG_F32: val[k].f = (float)a->f; break;
            case KA_ARG_M: val[k].i = rows; break;
            case KA_ARG_RANK: val[k].i = (int)(a->i * d->rank); break; /* ka_read: fits */
            default: val[k].p = ptr_of(m, d, a, logits); break;
            }
            params[k] = &val[k];
        }
        const ka_kernel *kk = &man->kernels[s->kernel];
        if (kt_mark(m, d, kk->name, 0, 0, err))
            return -1;
        if (kcuda_launch(&m->cu, d->fn[s->kernel], gx, gy, gz, (unsigned)kk->block,
                         (unsigned)kk->smem, d->stream, params, d->pdl, err))
            return kerr_add(err, "launching %s for step %d (%s)", kk->name, i, s->label);
    }
    return kt_mark(m, d, NULL, 0, 0, err);
}

/* Uploads the step's arrays and sampling parameters, one copy. */
static int upload_meta(kmodel *m, kdev *d, int T, int S, kerr *err)
{
    CU(cuMemcpyHtoDAsync(d->meta, m->h_meta, meta_layout(m, T, S).bytes, d->stream));
    return 0;
}

#define H(o) ((int32_t *)((char *)m->h_meta + (o)))

/* ---------------------------------------------------------------- the step */

/* Fills the host step arrays of T tokens in `rows` rows from the items: row r holds item r's
 * tokens [start[r], start[r+1]); rows n .. rows-1 are padding (one token each, at position 0,
 * writing the scratch block 0 and reading nothing else). Returns the most tokens of one row. */
static int fill_step(kmodel *m, const kb_item *items, int n, int T_all, int rows)
{
    const ka_manifest *man = m->m;
    const meta_at a = meta_layout(m, T_all, rows);
    int32_t *ids = H(a.ids), *pos = H(a.pos), *typ = H(a.type), *sq = H(a.seq), *slot = H(a.slot),
            *start = H(a.start), *kvl = H(a.kvlen), *ropel = H(a.ropelen);
    int T = 0, q = 1;
    for (int r = 0; r < rows; r++) {
        int32_t *bt = H(a.bt) + (size_t)r * (size_t)m->max_blocks;
        start[r] = T;
        if (r >= n) { /* padding */
            memset(bt, 0, sizeof(int32_t) * (size_t)m->max_blocks);
            ids[T] = pos[T] = typ[T] = slot[T] = 0;
            sq[T++] = r;
            kvl[r] = ropel[r] = 1;
            continue;
        }
        /* the scheduler checked the items against kb_info: a violation is a kiln bug */
        const kb_item *it = &items[r];
        assert(it->n >= 1 && it->pos >= 0 && it->pos + it->n <= man->max_seq_len);
        assert(T + it->n <= T_all);
        assert(it->nblocks >= (it->pos + it->n + KILN_BLOCK - 1) / KILN_BLOCK &&
               it->nblocks <= m->max_blocks);
        for (int b = 0; b < m->max_blocks; b++) {
            bt[b] = b < it->nblocks ? it->blocks[b] : 0;
            assert(b >= it->nblocks || (bt[b] >= 1 && bt[b] <= m->info.kv_blocks));
        }
        for (int k = 0; k < it->n; k++) {
            int p = it->pos + k;
            assert(it->ids[k] >= 0 && it->ids[k] < man->vocab);
            ids[T] = it->ids[k];
            pos[T] = p;
            typ[T] = it->types ? it->types[k] : 0;
            sq[T] = r;
            slot[T] = man->n_layers ? bt[p / KILN_BLOCK] * KILN_BLOCK + p % KILN_BLOCK : -1;
            T++;
        }
        kvl[r] = it->pos + it->n;
        /* (sched.c: rope_len; callers without a scheduler leave it 0) */
        assert(it->rope_len <= man->max_seq_len);
        ropel[r] = it->rope_len > kvl[r] ? it->rope_len : kvl[r];
        if (it->n > q)
            q = it->n;
    }
    assert(T == T_all);
    start[rows] = T;
    return q;
}

/* Decode batches run in buckets of 1, 2, 4, ... rows, the last one max_seqs. */
static int bucket_rows(const kmodel *m, int n)
{
    int b = 1;
    while (b < n)
        b *= 2;
    return b < m->m->max_seqs ? b : m->m->max_seqs;
}

/* A graph slot per bucket: log2 of the bucket, rounded up (max_seqs, the only bucket that may
 * not be a power of two, is above every other). */
static int bucket_index(int rows)
{
    int i = 0;
    while ((1 << i) < rows)
        i++;
    return i;
}

/* JOB_CAPTURE: the decode schedule for the bucket's rows into a CUDA graph on this device. A
 * failure is not an error (the step runs without graphs); d->captured and d->err say how it
 * went. */
static int dev_capture(kmodel *m, kdev *d)
{
    const ka_manifest *man = m->m;
    int bi = m->j.bucket, rows = m->j.T;
    kerr_clear(&d->err);
    CUgraph g = NULL;
    CUresult rc = m->cu.cuStreamBeginCapture(d->stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL);
    int ok = rc == CUDA_SUCCESS;
    if (!ok)
        kcuda_fail(&m->cu, rc, "cuStreamBeginCapture", __FILE__, __LINE__, &d->err);
    if (ok)
        ok = run_steps(m, d, man->decode, man->ndecode, rows, rows, 1, 1, 0, d->logits,
                       &d->err) == 0;
    if (rc == CUDA_SUCCESS) {
        CUresult rc2 = m->cu.cuStreamEndCapture(d->stream, &g);
        if (rc2 != CUDA_SUCCESS && ok)
            kcuda_fail(&m->cu, rc2, "cuStreamEndCapture", __FILE__, __LINE__, &d->err);
        ok = rc2 == CUDA_SUCCESS && ok;
    }
    if (ok) {
        rc = m->cu.cuGraphInstantiateWithFlags(&d->graphs[bi], g, 0);
        if (rc != CUDA_SUCCESS)
            kcuda_fail(&m->cu, rc, "cuGraphInstantiateWithFlags", __FILE__, __LINE__, &d->err);
        ok = rc == CUDA_SUCCESS;
    }
    if (g)
        m->cu.cuGraphDestroy(g);
    if (!ok)
        d->graphs[bi] = NULL;
    d->captured = ok;
    return 0;
}

/* Captures the bucket's decode graph on every device; when any device fails, no device uses
 * graphs from then on (a rank replaying a graph while another runs the steps one by one would
 * still match collective for collective, but one decode path for all is simpler to trust). */
static int capture_all(kmodel *m, int bi, kerr *err)
{
    if (run_all(m, JOB_CAPTURE, err))
        return -1;
    kdev *bad = NULL;
    for (int i = 0; i < m->ndev && !bad; i++)
        if (!m->devs[i].captured)
            bad = &m->devs[i];
    if (!bad && (m->nnodes == 1 || m->remote_captured)) {
        m->bucket_ready[bi] = 1;
        return 0;
    }
    m->graphs_failed = 1;
    if (!m->o.quiet)
        fprintf(stderr, "kiln: note: CUDA graph capture failed on %s (%s); decoding without "
                        "graphs\n",
                bad ? bad->devname : "another node",
                !bad ? "its log says why" : bad->err.n ? kerr_msg(&bad->err) : "driver refused");
    return 0;
}

/* The device part of finishing a step, on rank 0 only: samples the rows whose item asks (row r
 * of the sampling buffer is item r's last position) and queues the copies to the host (sampled
 * ids, the logits rows of items that want logprobs, embeddings).
 *
 * Why rank 0 alone: the schedule ends in an all-gather (and its reordering) of the logits, or an
 * all-reduce of the pooled output, so every rank holds the same full rows, bit for bit (NCCL's
 * gather copies, and its all-reduce gives every rank the same sum); the sampler's draw depends
 * only on those rows and the item's (seed, index), so every rank would draw the same token.
 * The next step's ids come from the host, so the other ranks need not draw it. */
static int finish_rank0(kmodel *m, kdev *d, kerr *err)
{
    const ka_manifest *man = m->m;
    size_t V = (size_t)man->vocab;
    kb_item *items = m->j.items;
    int n = m->j.n;
    if (m->j.any_sample) {
        assert(man->sample_kernel >= 0); /* embedding models sample nothing */
        /* the parameters came with the step arrays (meta_layout) */
        kiln_step st = step_view(m, d, m->j.T, m->j.S);
        st.T = n;
        st.n_seqs = n;
        CUdeviceptr lg = d->logits, par = d->meta + meta_layout(m, m->j.T, m->j.S).params,
                    ids = d->d_ids;
        void *params[] = {&st, &lg, &par, &ids};
        const ka_kernel *kk = &man->kernels[man->sample_kernel];
        if (kcuda_launch(&m->cu, d->fn[man->sample_kernel], (unsigned)n, 1, 1, (unsigned)kk->block,
                         (unsigned)kk->smem, d->stream, params, d->pdl, err))
            return kerr_add(err, "launching the sampler (%s)", kk->name);
        CU(cuMemcpyDtoHAsync(m->h_ids, d->d_ids, sizeof(int32_t) * (size_t)n, d->stream));
        for (int r = 0; r < n; r++) /* the rows the sampler read (it does not write them) */
            if (items[r].sample && items[r].logprobs > 0)
                CU(cuMemcpyDtoHAsync(m->h_lp + (size_t)r * V,
                                     d->logits + (size_t)r * V * sizeof(float), sizeof(float) * V,
                                     d->stream));
    }
    if (man->output_pool)
        for (int r = 0; r < n; r++) {
            assert(items[r].embedding);
            CU(cuMemcpyDtoHAsync(items[r].embedding,
                                 d->out + (size_t)r * (size_t)man->hidden * sizeof(float),
                                 sizeof(float) * (size_t)man->hidden, d->stream));
        }
    return 0;
}

/* The prefill schedule over the filled step (T tokens in n rows). With `all`, every position's
 * logits go to logits_all: on rank 0 the rows of items that asked for them are copied to the
 * host, and the last row of each sampling item to its row of the sampling buffer. */
static int dev_prefill(kmodel *m, kdev *d, kerr *err)
{
    const ka_manifest *man = m->m;
    kb_item *items = m->j.items;
    int n = m->j.n, T = m->j.T, all = m->j.all;
    if (all && !d->logits_all) /* [max_tokens, vocab] floats, on first use */
        CU(cuMemAlloc(&d->logits_all, sizeof(float) * (size_t)man->max_tokens * (size_t)man->vocab));
    if (upload_meta(m, d, T, n, err) ||
        run_steps(m, d, man->prefill, man->nprefill, T, n, m->j.Q, m->j.head, all,
                  all ? d->logits_all : d->logits, err))
        return -1;
    if (!all || d->rank != 0)
        return 0;
    const int32_t *start = H(meta_layout(m, T, n).start);
    size_t row = sizeof(float) * (size_t)man->vocab;
    for (int r = 0; r < n; r++) {
        const kb_item *it = &items[r];
        if (it->prompt_logits)
            CU(cuMemcpyDtoHAsync(it->prompt_logits, d->logits_all + (size_t)start[r] * row,
                                 row * (size_t)it->n, d->stream));
        if (it->sample)
            CU(cuMemcpyDtoDAsync(d->logits + (size_t)r * row,
                                 d->logits_all + (size_t)(start[r] + it->n - 1) * row, row,
                                 d->stream));
    }
    return 0;
}

/* The decode schedule for the bucket's rows, replayed from its CUDA graph when every device
 * has one (else launched step by step). */
static int dev_decode(kmodel *m, kdev *d, kerr *err)
{
    const ka_manifest *man = m->m;
    int rows = m->j.T, bi = m->j.bucket;
    if (upload_meta(m, d, rows, rows, err))
        return -1;
    if (m->graphs_failed) /* a device failed to capture: none replays its graphs */
        for (int i = 0; i < MAX_BUCKETS; i++)
            if (d->graphs[i]) {
                m->cu.cuGraphExecDestroy(d->graphs[i]);
                d->graphs[i] = NULL;
            }
    if (bi < MAX_BUCKETS && d->graphs[bi] && m->bucket_ready[bi]) {
        CU(cuGraphLaunch(d->graphs[bi], d->stream));
        return 0;
    }
    return run_steps(m, d, man->decode, man->ndecode, rows, rows, 1, 1, 0, d->logits, err);
}

/* JOB_STEP: this device's part of the step, then one wait for its stream. */
static int dev_step(kmodel *m, kdev *d, kerr *err)
{
    double t0 = m->kt ? util_now() : 0; /* KILN_KERNEL_TIMES' host time (kt_collect) */
    if ((m->j.decode ? dev_decode(m, d, err) : dev_prefill(m, d, err)) ||
        (d->rank == 0 && finish_rank0(m, d, err)))
        return -1;
    CU(cuStreamSynchronize(d->stream));
    return kt_collect(m, d, t0, err);
}

static int run_job(kdev *d, job_kind job, kerr *err)
{
    kmodel *m = d->m;
    switch (job) {
    case JOB_LOAD: return dev_load(m, d, err);
    case JOB_FIT: return dev_fit(m, d, err);
    case JOB_KV: return dev_kv(m, d, err);
    case JOB_CAPTURE: return dev_capture(m, d);
    case JOB_STEP: return dev_step(m, d, err);
    case JOB_QUIT: break;
    }
    assert(0 && "JOB_QUIT is handled by the worker loop");
    return -1;
}

/* backend.h's step. One token per item and nothing but the next token wanted: the decode
 * schedule over a padded bucket from its CUDA graph (in a batch-invariant artifact, only when
 * the items are decodes, not one-token prompt chunks: kb_item.prefill). Anything else (prefill
 * chunks, with or without decodes among them, prompt logits, embeddings): the prefill schedule,
 * which handles sequences whose cache already holds earlier tokens (that is how chunked prefill
 * works). The host arrays are filled once here; every device uploads and runs them (run_all). */
static int engine_step(kbackend *b, kb_item *items, int n, kerr *err)
{
    kmodel *m = (kmodel *)((char *)b - offsetof(kmodel, kb));
    const ka_manifest *man = m->m;
    assert(n >= 1 && n <= man->max_seqs);
    int decode = !man->output_pool, all = 0, any = 0, lp = 0, T = 0;
    for (int r = 0; r < n; r++) {
        /* batch-invariant: a prompt chunk of one token takes the prefill schedule too (its
         * linears are the GEMM there, the GEMV in decode: different roundings), and the
         * scheduler never mixes the two kinds (kb_info.batch_invariant) */
        assert(!man->batch_invariant || items[r].prefill == items[0].prefill);
        decode &= items[r].n == 1 && !items[r].prompt_logits &&
                  !(man->batch_invariant && items[r].prefill);
        all |= items[r].prompt_logits != NULL;
        any |= items[r].sample;
        lp |= items[r].sample && items[r].logprobs > 0;
        T += items[r].n;
    }
    /* a decode step runs a bucket of rows, one token each (padding past n) */
    int S = decode ? bucket_rows(m, n) : n;
    if (decode)
        T = S;
    assert(T <= (decode ? m->cap_tok : man->max_tokens));
    if (lp && !m->h_lp) { /* pinned [max_seqs, vocab], on first use (rank 0's context) */
        kdev *d = &m->devs[0];
        CU(cuCtxSetCurrent(d->ctx));
        CU(cuMemAllocHost((void **)&m->h_lp,
                          sizeof(float) * (size_t)man->vocab * (size_t)man->max_seqs));
    }
    kiln_sample *par = (kiln_sample *)((char *)m->h_meta + meta_layout(m, T, S).params);
    for (int r = 0; r < n && any; r++) { /* rows not sampled: greedy, one cheap pass */
        memset(&par[r], 0, sizeof(kiln_sample));
        if (items[r].sample)
            par[r] = items[r].sp;
    }
    m->j.items = items;
    m->j.n = n;
    m->j.all = all;
    m->j.any_sample = any;
    m->j.head = any || all;
    m->j.decode = decode;
    m->j.T = T;
    m->j.S = S;
    m->j.Q = fill_step(m, items, n, T, S);
    m->j.bucket = decode ? bucket_index(S) : 0; /* prefill: no graph */
    if (decode && !m->o.no_graphs && !m->graphs_failed && m->j.bucket < MAX_BUCKETS &&
        !m->bucket_ready[m->j.bucket] && capture_all(m, m->j.bucket, err))
        return -1;
    if (run_all(m, JOB_STEP, err))
        return -1;
    size_t V = (size_t)man->vocab;
    for (int r = 0; r < n; r++) {
        kb_item *it = &items[r];
        if (!it->sample)
            continue;
        it->token = m->h_ids[r];
        it->logprob = 0;
        if (it->logprobs > 0)
            kb_logprobs(m->h_lp + (size_t)r * V, man->vocab, it->token, it->logprobs, &it->logprob,
                        it->top_ids, it->top_logprobs);
    }
    return 0;
}

/* A message from node 0, checked as anything read from outside is: every count against the
 * buffers it sizes, the step arrays against the limits, the cache and the bucket. */
static int check_msg(const kmodel *m, const node_msg *h, kerr *err)
{
    const ka_manifest *man = m->m;
    int ok = h->job >= JOB_QUIT && h->job <= JOB_STEP && h->job != JOB_LOAD;
    if (ok && h->job == JOB_KV)
        ok = h->nblocks >= 2 && h->nblocks <= (long)man->max_seqs * m->max_blocks + 1;
    if (ok && (h->job == JOB_STEP || h->job == JOB_CAPTURE))
        ok = h->S >= 1 && h->S <= m->cap_seq && h->T >= h->S && h->T <= m->cap_tok &&
             h->n >= 1 && h->n <= h->S && h->Q >= 1 && h->Q <= h->T && h->bucket >= 0 &&
             h->bucket < (h->job == JOB_CAPTURE ? MAX_BUCKETS : 32) && (unsigned)h->decode <= 1 && (unsigned)h->all <= 1 &&
             (unsigned)h->graphs_failed <= 1 && (unsigned)h->bucket_ready <= 1 &&
             (unsigned)h->head <= 1;
    if (!ok)
        return kerr_add(err, "node %d: a malformed message from node 0 (job %d, T %d, S %d, "
                             "blocks %d): the nodes run different kiln builds?",
                        m->node_rank, h->job, h->T, h->S, h->nblocks);
    return 0;
}

/* The step arrays node 0 sent, checked before any device reads them (padding rows included). */
static int check_step_arrays(const kmodel *m, int T, int S, kerr *err)
{
    const ka_manifest *man = m->m;
    const meta_at a = meta_layout(m, T, S);
    int32_t *ids = H(a.ids), *pos = H(a.pos), *sq = H(a.seq), *slot = H(a.slot),
            *start = H(a.start), *kvl = H(a.kvlen), *bt = H(a.bt), *typ = H(a.type),
            *ropel = H(a.ropelen);
    int types = man->type_vocab > 0 ? man->type_vocab : 1;
    int ok = start[0] == 0 && start[S] == T;
    for (int r = 0; ok && r < S; r++)
        ok = start[r] <= start[r + 1] && kvl[r] >= 1 && kvl[r] <= man->max_seq_len &&
             ropel[r] >= kvl[r] && ropel[r] <= man->max_seq_len;
    for (int t = 0; ok && t < T; t++)
        ok = ids[t] >= 0 && ids[t] < man->vocab && pos[t] >= 0 && pos[t] < man->max_seq_len &&
             sq[t] >= 0 && sq[t] < S && typ[t] >= 0 && typ[t] < types &&
             (man->n_layers ? slot[t] >= 0 && slot[t] < m->nblocks * KILN_BLOCK : slot[t] == -1 ||
                                                                                   slot[t] == 0);
    for (size_t i = 0; ok && i < (size_t)S * (size_t)m->max_blocks; i++)
        ok = bt[i] >= 0 && bt[i] < (man->n_layers ? m->nblocks : INT_MAX);
    if (!ok)
        return kerr_add(err, "node %d: node 0 sent step arrays outside the model's limits",
                        m->node_rank);
    return 0;
}

int km_follow(kmodel *m, kerr *err)
{
    assert(m->nnodes > 1 && m->node_rank > 0);
    for (;;) {
        node_msg h;
        if (krdv_recv(&m->rdv, 0, &h, sizeof h, err) || check_msg(m, &h, err))
            return -1;
        int64_t answer = 0;
        int rc = 0;
        switch ((job_kind)h.job) {
        case JOB_QUIT:
            return 0;
        case JOB_FIT:
            rc = run_local(m, JOB_FIT, err);
            answer = LONG_MAX;
            for (int i = 0; i < m->ndev; i++)
                answer = m->devs[i].kv_fit < answer ? m->devs[i].kv_fit : answer;
            break;
        case JOB_KV:
            m->nblocks = h.nblocks;
            kv_layout(m);
            init_backend(m);
            rc = run_local(m, JOB_KV, err);
            break;
        case JOB_CAPTURE:
            m->j.T = m->j.S = h.T;
            m->j.bucket = h.bucket;
            rc = run_local(m, JOB_CAPTURE, err);
            answer = 1;
            for (int i = 0; i < m->ndev; i++)
                answer &= m->devs[i].captured;
            break;
        case JOB_STEP: {
            m->j.items = NULL; /* the items' outputs are node 0's (rank 0 samples) */
            m->j.n = h.n;
            m->j.T = h.T;
            m->j.S = h.S;
            m->j.Q = h.Q;
            m->j.decode = h.decode;
            m->j.all = h.all;
            m->j.any_sample = 0;
            m->j.head = h.head;
            m->j.bucket = h.bucket;
            m->graphs_failed = h.graphs_failed;
            if (h.bucket < MAX_BUCKETS)
                m->bucket_ready[h.bucket] = h.bucket_ready;
            if (krdv_recv(&m->rdv, 0, m->h_meta, meta_layout(m, h.T, h.S).bytes, err) ||
                check_step_arrays(m, h.T, h.S, err))
                return -1;
            rc = run_local(m, JOB_STEP, err);
            break;
        }
        case JOB_LOAD:
            assert(0 && "check_msg refuses JOB_LOAD");
            return -1;
        }
        if ((h.job == JOB_FIT || h.job == JOB_CAPTURE) &&
            krdv_send(&m->rdv, 0, &(int64_t){rc ? -1 : answer}, sizeof answer, err))
            return -1;
        if (rc)
            return -1;
    }
}

static const char *engine_describe(kbackend *b)
{
    return ((kmodel *)((char *)b - offsetof(kmodel, kb)))->desc;
}

static void engine_free(kbackend *b) { km_free((kmodel *)((char *)b - offsetof(kmodel, kb))); }

kbackend *km_backend(kmodel *m) { return &m->kb; }

/* kb_info from the manifest (km_load, once the cache is sized). */
static void init_backend(kmodel *m)
{
    const ka_manifest *man = m->m;
    _Static_assert(sizeof(int) == sizeof(int32_t), "the manifest's eos ids are ints");
    kb_info *in = &m->info;
    in->model = man->model_name;
    in->max_seqs = man->max_seqs;
    in->max_tokens = man->max_tokens;
    in->max_seq_len = man->max_seq_len;
    in->vocab = man->vocab;
    in->type_vocab = man->type_vocab;
    in->hidden = man->hidden;
    in->embed = man->output_pool;
    in->classify = strcmp(man->task, "classify") == 0;
    in->labels = (const char *const *)man->labels;
    /* block 0 is the padding rows' scratch; a model without KV layers has no cache, and any
     * block ids do (the limits' worth, so the scheduler never waits for blocks) */
    in->kv_blocks = man->n_layers ? m->nblocks - 1 : man->max_seqs * m->max_blocks;
    in->n_eos = man->n_eos;
    in->eos = (const int32_t *)man->eos;
    in->rope_switch = man->rope_switch;
    in->batch_invariant = man->batch_invariant;
    in->gen = &man->gen;
    m->kb.info = in;
    m->kb.step = engine_step;
    m->kb.describe = engine_describe;
    m->kb.free = engine_free;
}
