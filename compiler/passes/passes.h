/* passes — the compiler's passes over the graph IR. Each is one file, takes the compiler
 * context first, returns 0 or -1 with every problem it found in err. The order they run in is
 * one list in main.c; graph_verify runs between them. */
#ifndef KILN_PASSES_H
#define KILN_PASSES_H

#include "kc.h"

/* Invariants of the IR (graph_verify); failure after a pass is a compiler bug. */
int pass_verify(kc *c, kerr *err);
/* Every weight the spec asks for exists in the checkpoint with the expected shape and a
 * supported dtype, and holds no NaN or Inf (warnings with --allow-nonfinite); unused checkpoint
 * tensors are listed (warnings, errors with --strict). */
int pass_bind_weights(kc *c, kerr *err);
/* Edit distance between two names, bounded: returns > limit as soon as it is certain. For
 * "did you mean" suggestions (bind_weights' tensors, overrides' config keys). */
int edit_distance(const char *a, const char *b, int limit);

/* finite.c: for each of the n tensors, the flat index of its first NaN or Inf, or UINT64_MAX;
 * nthreads < 1 means one per core. */
void finite_scan(const st_tensor *const *ts, int n, int nthreads, uint64_t *first_bad);
/* "NaN", "Inf" or "-Inf": the element at `index` (one finite_scan found). */
const char *finite_kind(const st_tensor *t, uint64_t index);

/* Tensor parallelism (kc.tp ranks; nothing when kc.tp is 0): column and row splits with
 * all-reduces, vocabulary-split embedding and LM head; a model that cannot be split is refused
 * with the values of --tp that would work. Runs before fuse, which then fuses per-rank shapes. */
int pass_shard(kc *c, kerr *err);

/* Fewer, larger kernels: q/k/v and gate/up GEMM fusion, add+norm, rope+KV write. */
int pass_fuse(kc *c, kerr *err);

/* Activation buffers in one slab, reused by liveness, for kc.max_tokens tokens. */
int pass_plan_memory(kc *c, kerr *err);
/* The launch schedules for prefill and decode and the kernel instances (lower.c). */
int pass_schedule(kc *c, kerr *err);
/* Whether a node gets its own slab buffer; the node whose buffer a view reads, and (at) the
 * view's first column in that node's rows (*col; NULL: not wanted). */
int plan_needs_buffer(const kgraph *g, int id);
int plan_storage_of(const kgraph *g, int id);
int plan_storage_at(const kgraph *g, int id, int64_t *col);
/* For every node, the linear it can be folded into (templates/gemv_stream.cuh's NORM; lower.c
 * decides whether it is), or -1: for an RMS norm of one row of the linear's K per token, with a
 * weight [K] and a dense x, whose output that KG_LINEAR alone reads, as its x. One pass over the
 * graph; the caller frees the array. The plan keeps such a norm's inputs live until its linear,
 * whose kernel may then read them. */
int *plan_norm_readers(const kgraph *g);
/* The residual add fused into norm `id` (fuse: the norm reads its sum), or -1. */
int plan_norm_add(const kgraph *g, int id);

#endif
