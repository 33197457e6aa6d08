/* posenc — numbers of positional encodings, shared by the CPU reference and code generation:
 * rotary inverse frequencies for every rope type, and ALiBi slopes.
 *
 * Computed as transformers 5.17 computes them (modeling_rope_utils.py, BLOOM's
 * build_alibi_tensor), in float32 where torch uses float32, so the reference matches HF to
 * rounding rather than to a formula.
 */
#ifndef KILN_POSENC_H
#define KILN_POSENC_H

#include <stdint.h>

#include "graph.h"

/* Fills inv_freq[0 .. rot_dim/2). seq_len matters only for dynamic NTK and longrope: the
 * length of the sequence being processed, max position + 1, as transformers' dynamic_rope_update
 * takes it per forward (so keys already in a KV cache keep the rotation they were given; a
 * prompt prefilled in chunks passes the whole prompt's length, ref_set_rope_len); pass 0 when
 * unknown (longrope: the short table). */
void posenc_rope_inv_freq(const kg_rope *r, int64_t seq_len, float *inv_freq);
/* Whether longrope uses its long factors (and long scale) at this seq_len: seq_len >
 * original_max_position_embeddings. 0 for every other type. */
int posenc_rope_long(const kg_rope *r, int64_t seq_len);
/* The factor cos and sin are multiplied by (yarn's and longrope's attention factor, longrope's
 * by seq_len as above; 1 otherwise). */
float posenc_rope_scale(const kg_rope *r, int64_t seq_len);
/* The sequence length past which the graph's longrope switches to its long factors
 * (original_max_position_embeddings), or 0 when no rope of the graph is longrope. Transformers
 * decides per forward; kiln makes it a property of the sequence (the runtime's scheduler, kilnc
 * ref): a sequence longer than this is long from its first token, and one that grows past it
 * during generation is recomputed with the long factors, as Phi3ForCausalLM and
 * PhimoeForCausalLM's prepare_inputs_for_generation drop the KV cache at that step. Every
 * longrope of one graph comes from one config, so they share the length (asserted). */
int64_t posenc_rope_switch(const kgraph *g);
/* The longest sequence the model's positions are meant for: max_position_embeddings (maxpos)
 * times the factor of a dynamic NTK rope, which rescales its base for sequences past maxpos (the
 * length vLLM's max_model_len allows too); maxpos for every other rope, 0 (no limit) when maxpos
 * is 0. At most INT32_MAX. kilnc ref, kilnc compile and the CPU backend cap sequences by it. */
int64_t posenc_max_len(const kgraph *g, int64_t maxpos);
/* ALiBi slope of each head, as BLOOM (handles head counts that are not powers of two). */
void posenc_alibi_slopes(int n_heads, float *slopes);

#endif
