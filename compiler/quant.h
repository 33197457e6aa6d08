/* quant — quantised weights: published FP8 (E4M3) and integer (AWQ, GPTQ, compressed-tensors
 * pack-quantized) checkpoints read, and bf16/fp32 ones quantised to FP8 or INT4 at compile time
 * (--quant fp8, --quant int4).
 *
 * What kiln computes with: every quantised weight stands for fp32 values, exactly (e4m3 value * its
 * scale, or (q - z) * scale: one fp32 multiply), so `kilnc ref` of a quantised checkpoint equals
 * the forward of its dequantised fp32 copy, and `--quant fp8` or `--quant int4` gives the numbers
 * an FP8 or INT4 weight-only model computes. bind_weights binds such a weight to a tensor of dtype
 * U8 holding its codes (a byte a value: a quarter of fp32's memory) that quant_values decodes, for
 * the packer and `kilnc ref` (a weight with NaN or Inf keeps its fp32 values). quant also keeps
 * each weight's quantised form by rows (quant_rows: FP8 scales; INT4 scales and zero points per
 * group), and `kilnc compile` packs a linear's weight in it where pack.h's pack_qblock can follow
 * it (FP8: e4m3 bytes and float scales; INT4: two 4-bit values a byte, scales and zero points as dt
 * pairs): the GEMVs read them as they are (templates/gemv.cuh's gemv_fp8, gemv_int4), longer steps
 * through the FP8 GEMM (W8A8) or after dequant_fp8/dequant_int4 into scratch (lower.c). 8-bit
 * integer and act-order GPTQ weights, quantised weights of other ops (MoE experts, the LM head) and
 * ones the packer cannot keep whole (a K cut off a group edge) are packed in the compute dtype.
 *
 * Formats (config.json's quantization_config), for a weight `X.weight` stored as F8_E4M3:
 *   compressed-tensors (quant_method "compressed-tensors", format "float-quantized" or
 *     "naive-quantized", every config group's weights {num_bits 8, type "float"}):
 *     strategy "tensor": X.weight_scale of one element; "channel": X.weight_scale [out, 1];
 *     "block": X.weight_scale [ceil(out/br), ceil(in/bc)] with block_structure [br, bc];
 *   FBGEMM (quant_method "fbgemm_fp8"): X.weight_scale [out, 1];
 *   block-scaled (quant_method "fp8", DeepSeek-V3 / Qwen3-FP8): X.weight_scale_inv
 *     [ceil(out/br), ceil(in/bc)] with weight_block_size [br, bc] (default [128, 128]);
 *     despite its name the scale multiplies, as in transformers' FP8 dequantisation.
 * Input-activation scales (X.input_scale, X.input_scale_ub; static or dynamic) are accepted and
 * not applied: kiln keeps activations in bf16 (weight-only FP8). A KV-cache scheme, grouped FP8
 * weights, or any other quant_method is refused naming the field.
 *
 * Integer weight-only formats. The spec asks for `X.weight` [out, in]; the checkpoint holds it
 * packed in int32 words (p = 32 / bits values a word, lowest bits first unless said otherwise)
 * with scales per group of group_size input columns (group_size -1: one group per row), and
 * every integer weight is dequantised to fp32 [out, in] the same way as FP8 ones, one fp32
 * multiply per element (exact for F16 and BF16 scales):
 *   AWQ (quant_method "awq", version/format "gemm", bits 4): X.qweight I32 [in, out/8] and
 *     X.qzeros I32 [in/group, out/8], nibbles in AutoAWQ's order (word j holds columns 8j +
 *     0 2 4 6 1 3 5 7 from the lowest nibble up), X.scales [in/group, out]; w = (q - z) * s. The
 *     zero points are subtracted whatever zero_point says (AutoAWQ's dequantisation does).
 *   GPTQ (quant_method "gptq", bits 4 or 8): X.qweight I32 [in/p, out] (packed along in),
 *     X.qzeros I32 [groups, out/p] (packed along out), X.scales [groups, out], X.g_idx I32 [in]
 *     (the group of each input column; required with desc_act, else i / group_size when absent);
 *     w = (q - z) * s, where z is the stored zero point plus one for checkpoint_format "gptq"
 *     (AutoGPTQ's v1 stored z - 1) and as stored for "gptq_v2".
 *   compressed-tensors "pack-quantized" (num_bits 4 or 8, type "int", strategy "group" or
 *     "channel", symmetric, weight-only): X.weight_packed I32 [out, ceil(in/p)] (values plus
 *     2^(bits-1)), X.weight_scale [out, in/group] or [out, 1], X.weight_shape [out, in] and an
 *     all-zero X.weight_zero_point (both optional), X.weight_g_idx (required with actorder
 *     "group"); w = q * s.
 * A weight the checkpoint stores as plain X.weight (the LM head, a module listed in
 * modules_to_not_convert or ignore) is read as it is; a module so listed but stored packed is an
 * error. Scale, zero and index tensors are F16/BF16/F32 and I32 as above; every shape is
 * checked against the packed tensor's before any element is read, and every g_idx entry
 * against the number of groups.
 */
#ifndef KILN_QUANT_H
#define KILN_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "kc.h"

#define FP8_E4M3_MAX 448.0f

/* The value of an e4m3 byte (0x7f and 0xff are NaN). */
float fp8_e4m3_to_f32(uint8_t b);
/* x rounded to the nearest e4m3 (ties to even), saturating at +-448; x must not be NaN. */
uint8_t fp8_e4m3_from_f32(float x);

/* Reads config.json's quantization_config into c (nothing when absent). Errors name the field. */
int quant_config_read(kc *c, kerr *err);
/* A WEIGHT node bound to F8_E4M3 tensor t: the tensor of its dequantised values (as codes: above;
 * owned by c, freed by quant_free). Marks the scale tensors it reads, and the input scales it
 * skips, in used[] (indexed like c->weights->tensors). NULL with an error naming the tensor when
 * the checkpoint's scales are missing or of the wrong shape or dtype. */
const st_tensor *quant_dequant_fp8(kc *c, const st_tensor *t, unsigned char *used, kerr *err);
/* The spec's weight `name` ("X.weight") that the checkpoint holds packed as integers
 * (X.qweight, or X.weight_packed): *out is the [out, in] tensor of its dequantised values (codes:
 * above), named `name` (owned by c), and the tensors read are marked in used[]. *out is NULL and 0
 * is returned when the checkpoint has no packed form of `name`; -1 with an error naming the tensor
 * or field when it has one that the config does not describe or that is malformed. */
int quant_dequant_packed(kc *c, const char *name, unsigned char *used, const st_tensor **out,
                         kerr *err);
/* --quant's formats by name: "fp8" and "int4" give their mode, any other name KC_QUANT_NONE;
 * and a mode's name. */
kc_quant quant_mode_parse(const char *name);
const char *quant_mode_name(kc_quant mode);
/* --quant's grid for a weight of `cols` input columns: the mode, the compute dtype INT4's
 * scales are rounded to, and the groups (FP8: one of the whole row). */
typedef struct quant_grid {
    kc_quant mode;
    st_dtype dt;   /* INT4: BF16 or F16 */
    int64_t group; /* columns a scale covers (0 for a weight of no columns) */
    int64_t kb;    /* scales a row: cols / group, 1 when group is 0 */
} quant_grid;
quant_grid quant_grid_of(const kc *c, int64_t cols);
/* --quant (c->quant_mode, not KC_QUANT_NONE): the tensor of t ([out, in], F32/F16/BF16) rounded row
 * by row, dequantised again (codes: above): the values the quantised weight holds, its quantised
 * form kept for quant_rows. The rounding of one row:
 *   KC_QUANT_FP8: e4m3 with one scale per row, absmax x p / 448 (1 for a zero row), round to
 *     nearest even, saturating at +-448 x scale; p as for INT4 below, the first of 1, 0.99,
 *     ..., 0.21 whose scale gives the row the least squared error;
 *   KC_QUANT_INT4: round to nearest, asymmetric (AWQ's scheme), per group of G input columns,
 *     G the largest of 128, 64, 32 that divides `in`, else the whole row: lo = min(w, 0), hi =
 *     max(w, 0) shrunk by a factor p (below), scale s = p (hi - lo) / 15 rounded to
 *     c->act_dtype (bf16 or f16, the dtype the GPU stores it in: pack.c's fill_int4sz; 1 when
 *     that is 0: a zero group), zero point z = rint(-p lo / s) in 0..15, q = rint(w / s) + z
 *     clamped to 0..15, value (q - z) * s, exact in fp32: `kilnc ref` and the GPU compute with
 *     the same weights. p is the first of 1, 0.99, ..., 0.21 whose grid gives the group the
 *     least squared error (the clipping search of GPTQ's reference, quant.py with mse=True).
 * With a `hessian` (H = sum of x x^T over the calibration tokens' inputs x of the linear, [in,
 * in], from --calibrate: gptq.h), the values are chosen by GPTQ (gptq_round) instead of to
 * nearest, on each group's grid of p = 1 (quant_int4_params: the search measured worse inside
 * GPTQ, gptq.h); NULL with an error when H cannot be factored. Without one (NULL), round to
 * nearest, which never fails.
 * A row with NaN or Inf (or an INT4 scale that is Inf in the compute dtype) is left as it is
 * and the weight keeps no quantised form: the packer stores all of it in the compute dtype
 * (finite.c reports the NaN or Inf unless --allow-nonfinite). Rows on every core. */
const st_tensor *quant_round(kc *c, const st_tensor *t, const float *hessian, kerr *err);
/* The grids' element rules, shared by round to nearest and GPTQ. FP8: a row's scale (as above,
 * searched; 1 for a zero row) and x's value on the grid (e4m3(x / s) * s). INT4: a group's scale s
 * (in dt) and zero point z from its n values as above with p = 1 (GPTQ's grid; -1 when s is Inf
 * in dt), and w's value (q - z) * s. */
float quant_fp8_scale(const float *row, int64_t n);
float quant_fp8_value(float x, float s);
int quant_int4_params(const float *w, int64_t n, st_dtype dt, float *s, float *z);
float quant_int4_value(float w, float s, float z);
/* A weight's quantised form by rows, when quant made it: its values are exactly (one fp32
 * multiply) fp8_e4m3_to_f32(q) * scale (QROWS_E4M3: a published FP8 checkpoint's, --quant
 * fp8's) or (q - zero) * scale with q in 0..15 (QROWS_INT4: AWQ, GPTQ 4-bit in column order,
 * compressed-tensors pack-quantized 4-bit, --quant int4's), for scale and zero [rows, kb] (zero
 * NULL for E4M3), kb = ceil(cols / block) blocks of `block` columns, or one per row when block
 * is 0. */
typedef enum { QROWS_NONE, QROWS_E4M3, QROWS_INT4 } qrows_kind;
typedef struct qrows {
    qrows_kind kind;
    int64_t block;
    float *scale, *zero;
} qrows;
/* t's quantised form (owned by c), or NULL for any other tensor (a checkpoint's as stored, an
 * 8-bit or act-order integer weight, a --quant one with NaN or Inf): those are packed in the
 * compute dtype. */
const qrows *quant_rows(const kc *c, const st_tensor *t);
/* The code of value x in a quantised form of `kind` with scale s (and zero point z, INT4): the
 * e4m3 byte or the q in 0..15 whose value is x exactly, or -1 when none is. The byte of a
 * published FP8 checkpoint's non-finite values (--allow-nonfinite): NaN (a NaN byte, a NaN
 * scale, 0 times an infinite scale) the NaN byte 0x7f, a byte times an infinite scale +-1 times
 * it. */
int quant_code(qrows_kind kind, float x, float s, float z);
/* Elements [from, from + count) of a tensor quant made, as fp32: its codes decoded (dtype U8,
 * which only quant makes: a bound weight of that dtype is one of these), or its F32 values. */
void quant_values(const st_tensor *t, uint64_t from, uint64_t count, float *dst);
/* After bind_weights: what was quantised, for kilnc check and the manifest ("14 weights F8_E4M3
 * with compressed-tensors per-channel scales, dequantised to fp32", "14 weights AWQ 4-bit
 * (gemm), group size 32 (42 tensors read), dequantised to fp32", "--quant int4: 14 linear
 * weights rounded to INT4 (...)"), or NULL when nothing was. */
const char *quant_describe(const kc *c, char *buf, size_t cap);
void quant_free(kc *c);

#endif
