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

/* Fills inv_freq[0 .. rot_dim/2). seq_len matters only for dynamic NTK (the length of the
 * sequence being processed, max position + 1); pass 0 when unknown. */
void posenc_rope_inv_freq(const kg_rope *r, int64_t seq_len, float *inv_freq);
/* The factor cos and sin are multiplied by (yarn's attention factor; 1 otherwise). */
float posenc_rope_scale(const kg_rope *r);
/* ALiBi slope of each head, as BLOOM (handles head counts that are not powers of two). */
void posenc_alibi_slopes(int n_heads, float *slopes);

#endif
