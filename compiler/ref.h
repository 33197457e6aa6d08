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
 */
#ifndef KILN_REF_H
#define KILN_REF_H

#include <stdint.h>

#include "graph.h"
#include "util.h"

typedef struct ref ref;

/* The graph must have been through bind_weights. max_seq bounds prompt + generated tokens. */
ref *ref_new(const kgraph *g, int max_seq, kerr *err);
void ref_free(ref *r);
/* Forgets the sequence (empties the KV cache). */
void ref_reset(ref *r);
/* Tokens processed so far. */
int ref_len(const ref *r);
/* Appends n tokens (token types may be NULL: all 0) and computes the graph for them. */
int ref_forward(ref *r, const int64_t *ids, const int64_t *types, int n, kerr *err);
/* The output of the last forward: logits [n, vocab] (generate) or the pooled vector [1, H]. */
const float *ref_output(const ref *r, int *rows, int *cols);
/* Keep a node's value after forwards (values are otherwise freed after their last use). */
void ref_keep(ref *r, int node);
/* A kept node's value from the last forward, [rows, cols]; NULL if not kept/computed. */
const float *ref_value(const ref *r, int node, int *rows, int *cols);

#endif
