/* engine — loads a compiled model (model.kiln + shards) onto one GPU or, tensor-parallel, onto
 * tp GPUs, and runs it as a step backend (backend.h).
 *
 * Loading: the artifact (ka_read checks its hashes and every manifest field, so the engine trusts
 * the manifest), then everything that needs no GPU: --tp against the artifact's tp, every local
 * rank's shard (memory-mapped; its id, header and weight list checked against the manifest's
 * entry for that rank), NCCL (dlopen, only when the schedule holds collective steps); then
 * libcuda (dlopen), the visible GPUs against the ranks, and per device: the SM against the
 * cubins present (PTX is JIT-compiled only when no cubin fits, and said so), the shard's data
 * hashed on the other cores while it is uploaded through pinned staging buffers into one weight
 * arena (the load is refused if the hash differs), one activation slab carved by the compiler's
 * memory plan, a scratch area, and a paged KV cache sized from free memory (kv_memory fraction)
 * up to what the limits can use, the same number of blocks on every device. The engine only
 * sizes the cache: which blocks a sequence holds is the scheduler's (kvcache.h); block 0 is the
 * engine's scratch, written by padding rows.
 *
 * Tensor parallelism (artifact.h): every device runs the same per-rank program on its own
 * weights; KA_ARG_RANK arguments and the collective steps (NCCL all-reduce and all-gather, issued
 * on the device's stream in schedule order) are the only differences. One process drives the
 * tp GPUs with one worker thread per device, which binds the device's context once and runs its
 * part of every step; the communicators are created in one NCCL group from one unique id. An
 * artifact with tp 1 and no collective steps loads no NCCL and runs on the calling thread, as the
 * single-GPU engine always did.
 *
 * Several hosts (km_opts.nnodes > 1): each node runs one kiln process driving its tp/nnodes ranks
 * as above. Node 0 hands out the NCCL unique id at the rendezvous (comm.h) and runs the only
 * scheduler; every job it gives its own workers after loading (KV sizing, graph capture, steps,
 * the end) it first sends to the other nodes, with the step arrays, and those run it on theirs
 * (km_follow), so that every rank issues the same collectives in the same order. The KV cache
 * and the graph decisions are agreed the same way (the smallest fit, capture on all or none).
 *
 * Running: km_backend's step takes work items (backend.h) and fills the host step arrays once (a
 * pinned buffer every device uploads from). When every item is one token and wants nothing but
 * the next token, the step is a decode step: the decode schedule over a batch padded to a bucket
 * (1, 2, 4, ... max_seqs rows; padding rows write the scratch block), replayed from a CUDA graph
 * captured per bucket on every device (the collectives are captured too). Otherwise (prefill
 * chunks, mixed with decodes or not, prompt logits, embeddings) it runs the prefill schedule,
 * which handles sequences whose cache already holds earlier tokens. Then the GPU sampler of rank
 * 0 draws the next token of every item that asks, from the item's own (seed, index) RNG stream;
 * a step costs one upload of the step arrays per device, the schedule, the sampler and one wait
 * per device, plus the copies an item asks for (logits rows for logprobs, prompt logits,
 * embeddings), all from rank 0.
 *
 * The load ends with a warm-up through that same step (prefills of 2, 4, ... up to 2,048 tokens,
 * one decode step of every bucket, which captures its graph), so that lazy module loading,
 * cuBLASLt's algorithm choices and graph instantiation are paid at load, not by the first
 * request; it changes no state a user sees (km_load_seconds includes it, km_describe gives its
 * share; KILN_WARMUP=0 skips it). On sm_90 kernels launch with programmatic dependent launch
 * (kcuda_launch; KILN_PDL=0 turns it off).
 */
#ifndef KILN_ENGINE_H
#define KILN_ENGINE_H

#include <stdint.h>

#include "artifact.h"
#include "backend.h"
#include "util.h"
#include "../kernels/kiln_step.h"

typedef struct km_opts {
    double kv_memory;  /* fraction of free GPU memory for the KV cache after loading (0.9) */
    int no_graphs;     /* run decode steps without CUDA graphs */
    int quiet;         /* no notes on stderr */
    int tp;            /* ranks the user asked for (kiln --tp): 0 = the artifact's; another
                        * number than the artifact's is refused */
    /* several hosts: nnodes > 1 splits the tp ranks evenly over the nodes; this process is node
     * node_rank and drives ranks node_rank * tp/nnodes .. on its CUDA devices 0 .. tp/nnodes-1;
     * rendezvous is node 0's "HOST:PORT" (comm.h) */
    int nnodes, node_rank;
    const char *rendezvous;
} km_opts;

typedef struct kmodel kmodel;

kmodel *km_load(const char *dir, const km_opts *o, kerr *err);
void km_free(kmodel *m);
const ka_manifest *km_manifest(const kmodel *m);
/* A line describing the devices and what was loaded. */
const char *km_describe(const kmodel *m);
double km_load_seconds(const kmodel *m);
/* The model as a step backend; it lives inside the model, and its free frees the model. The
 * step may run on another thread than km_load's (one thread at a time). */
kbackend *km_backend(kmodel *m);
/* Nodes other than node 0 (km_opts.node_rank > 0) have no scheduler: after km_load they run the
 * steps node 0's engine sends, until node 0 frees its model (returns 0) or fails (-1). */
int km_follow(kmodel *m, kerr *err);

#endif
