/* gptq — calibrated rounding for --quant fp8|int4 (kilnc --calibrate FILE): GPTQ (Frantar et
 * al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
 * Transformers"), without act order.
 *
 * It changes only WHICH grid value each weight takes: the result is exactly e4m3 x the row's
 * scale, or (q - z) x s per group with q in 0..15, as --quant's round to nearest gives (quant.h),
 * so quant_rows, the packer and the GPU kernels take it as they are.
 *
 * Two parts:
 *   gptq_calibrate: runs the CPU reference (ref.h) over the calibration text, the model's
 *     linears still unquantised, and sums H = sum over tokens of x x^T (float [K, K], each
 *     forward's sum in double) for every distinct input x of the linears to be rounded; linears
 *     reading one input (q/k/v, gate/up) share its H. One forward over all layers at once: every
 *     H is held together (sum of K^2 x 4 bytes over the inputs, plus 12 K^2 bytes for the
 *     widest one's factor while its weights are rounded; printed, and refused when it exceeds
 *     90% of the memory the machine has available). The rows run are the first `tokens` of the
 *     text (tokenised as `kiln perplexity` does: the model's tokenizer.json, special tokens
 *     added) in sequences of GPTQ_SEQ tokens, or the model's max_position_embeddings when
 *     smaller, each one a fresh sequence.
 *   gptq_round: one weight [rows, K] and its H -> its values rounded on the grid, column by
 *     column in order, each column's rounding error pushed onto the columns not yet rounded
 *     through the upper Cholesky factor U of the damped H^-1:
 *       q_i = grid(w_i); e = (w_i - q_i) / U_ii; w_j -= e * U_ij for j > i,
 *     lazily in blocks of GPTQ_BLOCK columns (the paper's; equal to doing it column by column
 *     up to float rounding). As the reference implementation (gptq.py's fasterquant): inputs
 *     with H_ii = 0 (dead) get H_ii = 1 and their weight column is zeroed; damping adds 1% of
 *     the mean diagonal to the diagonal. FP8's row scale comes from the original row
 *     (quant_fp8_scale's search, as round to nearest); INT4's scale and zero point of a group from its current
 *     (error-updated) columns when the loop reaches its first column (static_groups=False: a
 *     group never straddles a block, so every update from the columns before it has landed;
 *     gptq.py's groups of 32 or 64 see their block's start instead), by min and max
 *     (quant_int4_params), not by round to nearest's clipping search. The arithmetic: H's
 *     factorisation in double, U and the updates in float (as gptq.py).
 * Measured on the example model and not kept (README, --calibrate: perplexity on held-out text
 * against bf16, calibrated on five texts; as it is, INT4 +1.3% to +8.4%, mean +4.2%): the
 * clipping search on each group's columns when its grid is fixed (+4.6% to +10.2% on four: it
 * helps round to nearest, not GPTQ); act order with the groups kept in column order (desc_act
 * with static groups: columns by decreasing H_ii, a group's grid fixed when its first column
 * comes, from its columns then: +2.4% to +7.5%, mean +5.2%; from the original weights: worse on
 * the two texts tried); groups by their largest H_ii, then columns by H_ii (+4.6% to +9.4%); and
 * 10% damping (worse on the two texts tried); AWQ's activation-aware scaling folded into the
 * norms, before round to nearest (better than it on the held-out text, worse on learnt text) or
 * before GPTQ (no better than GPTQ alone). Those perplexities are noisy: the held-out text's
 * tokens the model never learnt (15% of them, 91% of its loss) move by -5% to +1% of perplexity
 * with any change of rounding, and one text's tokens shifted by 128 move it as much as another
 * text does. Compare roundings on text the model learnt: there GPTQ beats round to nearest on all
 * five texts, and none of the searches, static groups, 4x the tokens or H shrunk towards its
 * diagonal beat it on every text tried (README).
 */
#ifndef KILN_GPTQ_H
#define KILN_GPTQ_H

#include <stdint.h>

#include "kc.h"
#include "quant.h"

#define GPTQ_BLOCK 128        /* columns a lazy update covers (a multiple of every INT4 group) */
#define GPTQ_SEQ 256          /* calibration sequence length (the model's limit when smaller) */
/* --calibrate-tokens' default. Fewer overfit: on the example model (inputs up to 1024 wide) GPTQ
 * INT4 on 2048 tokens scores worse than round to nearest on held-out text (perplexity +13.1%
 * against +12.4%), 8192 +5.7%, 16384 +2.1% (README); about 16 tokens per input column of the
 * widest linear input, as the paper's 128 x 2048 tokens for inputs of 11008-14336. */
#define GPTQ_TOKENS 16384
#define GPTQ_MAX_TOKENS (1 << 24)

/* Rounds w [rows, K] in place on grid g (quant_grid_of) by GPTQ with H [K, K] (symmetric; its
 * upper triangle is read), the scales to sc and INT4's zero points to zp ([rows, g->kb]). A
 * row with NaN or Inf, or an INT4 group whose scale is Inf in g->dt, is left as it was, its
 * first scale NaN (quant_round's rule). With H the identity (or any diagonal H) it gives
 * exactly round to nearest. -1 when the damped H is not positive definite (H with NaN). Rows on
 * every core. */
int gptq_round(const quant_grid *g, const float *H, float *w, int64_t rows, int64_t K, float *sc,
               float *zp);

/* The Hessians of the calibration run (gptq_calibrate), freed by gptq_calib_free. */
typedef struct gptq_calib gptq_calib;
/* Runs c->g (bound; `weights`' nodes still unquantised) over the first c->calib_tokens tokens of
 * c->calib_path, collecting H for the inputs of the LINEARs reading each weight node in
 * `weights`. Sets c->calib_ran to the tokens run. NULL with an error naming the file, the
 * tokenizer or the memory it would need. Prints a line on stderr: tokens, sequences, the
 * Hessians' memory and the time. */
gptq_calib *gptq_calibrate(kc *c, const int *weights, int n, kerr *err);
/* The H of weight node `weight` (one of gptq_calibrate's): its input's, or the sum over its
 * LINEAR readers' inputs when they differ. Owned by cal. */
const float *gptq_hessian(gptq_calib *cal, int weight);
void gptq_calib_free(gptq_calib *cal);

#endif
