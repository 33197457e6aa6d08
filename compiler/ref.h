/* ref — the CPU reference: an fp32 interpreter of the unfused graph, with a KV cache.
 *
 * It is the oracle for every pass and every GPU kernel, and lets archspecs be developed and
 * tested without a GPU; its own truth is HF transformers' outputs (tests/fixtures). It runs one
 * sequence: ref_forward appends tokens (a prompt, then one token per decode step) and
 * computes every node for them, attending over the cached keys and values of earlier calls.
 *
 * Weights are read in place from the memory-mapped checkpoint (F32, BF16, F16 rows are
 * converted as they are used), so a 1B model runs, slowly, in little more memory than its
 * activations; only views of weights that cannot alias the file (interleaved slices,
 * concatenations, transposes) are materialised, once, in fp32.
 *
 * A graph sharded for tensor parallelism (g->tp ranks, the shard pass) runs on g->tp
 * simulated ranks in lockstep, in one thread: every node is computed on rank 0 .. tp-1 before
 * the next node, each rank with its own activations and KV cache (its own heads). The
 * collectives are exact fp32: ALL_REDUCE adds the ranks' values in rank order, the same order
 * for every rank, and ALL_GATHER concatenates them along the last dimension. A SHARD is the
 * rank's part of its constant (an alias when the part is contiguous, else materialised once
 * per rank); a vocabulary-split EMBED gives zero rows for ids other ranks hold; ALiBi slopes
 * are those of the rank's heads among alibi_heads. Constants that do not depend on the rank
 * are shared. The output (and every value ref_value returns) is rank 0's, which after the
 * final ALL_GATHER or ALL_REDUCE equals every rank's. An unsharded graph (tp 1) runs exactly
 * as before, so callers need not know whether a graph is sharded.
 */
#ifndef KILN_REF_H
#define KILN_REF_H

#include <stdint.h>

#include "graph.h"
#include "util.h"

typedef struct ref ref;

/* The graph must have been through bind_weights (and may have been through shard: it then
 * runs on g->tp ranks). max_seq bounds prompt + generated tokens. */
ref *ref_new(const kgraph *g, int max_seq, kerr *err);
void ref_free(ref *r);
/* Forgets the sequence (empties the KV cache). */
void ref_reset(ref *r);
/* Tokens processed so far. */
int ref_len(const ref *r);
/* The length of the sequence as longrope's switch and dynamic NTK see it in the next forwards:
 * a prompt prefilled in several chunks is long (posenc_rope_switch) from its first chunk, and
 * dynamic NTK takes its base from the whole prompt's length, as in transformers' one forward
 * over it. Both use max(len, tokens so far, this forward's included); 0, the default (and after
 * ref_reset), the tokens alone. Other rope types ignore it. */
void ref_set_rope_len(ref *r, int64_t len);
/* on: every K and V the attention caches is rounded per token and kv head as kilnc compile
 * --kv-dtype fp8's cache stores it (ref_kv8_head), before any query reads it; off (the
 * default): fp32. Set it before the first forward. */
void ref_set_kv_fp8(ref *r, int on);
/* One head's n values as the FP8 KV cache holds them (kernels/kiln_kv8.h: scale = absmax / 448,
 * or 1 for a zero head; bytes = e4m3(x / scale), to nearest even, saturating): out[i] =
 * e4m3(q[i]) * scale in fp32 (out may be x). Returns the scale; q (n bytes) may be NULL. */
float ref_kv8_head(const float *x, int64_t n, uint8_t *q, float *out);
/* Appends n tokens (token types may be NULL: all 0) and computes the graph for them. */
int ref_forward(ref *r, const int64_t *ids, const int64_t *types, int n, kerr *err);
/* The output of the last forward: logits [n, vocab] (generate) or the pooled vector [1, H]. */
const float *ref_output(const ref *r, int *rows, int *cols);
/* Keep a node's value after forwards (values are otherwise freed after their last use). */
void ref_keep(ref *r, int node);
/* Forwards compute the nodes up to `node` (in graph order) and no further: for a caller that reads
 * only kept values from before it (GPTQ's calibration reads the linears' inputs, not the logits;
 * ref_output is then NULL). */
void ref_stop_after(ref *r, int node);
/* A kept node's value from the last forward on rank 0, [rows, cols]; NULL if not
 * kept/computed. */
const float *ref_value(const ref *r, int node, int *rows, int *cols);
/* Simulated ranks (the graph's tp), and a kept node's value on one of them (0 <= rank < ranks):
 * what rank `rank` computed, e.g. its partial sum before an ALL_REDUCE. */
int ref_ranks(const ref *r);
const float *ref_rank_value(const ref *r, int node, int rank, int *rows, int *cols);

#endif
