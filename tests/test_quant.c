/* test_quant — quantised weights (compiler/quant.c):
 *
 *   - e4m3 encoding: every finite byte round-trips, midpoints round to the even neighbour,
 *     magnitudes above 448 saturate;
 *   - quantization_config: the formats kiln reads, and the refusals (each naming its field);
 *   - dequantisation of each scale layout on a small hand-made checkpoint, against values
 *     computed here: per-tensor, per-channel, and 128x128-style blocks with partial edge blocks;
 *   - a missing, misshapen or mistyped scale tensor, and FP8 without a quantization_config, are
 *     errors naming the tensor;
 *   - --quant fp8's per-row quantisation: every value e4m3 times the row's searched scale,
 *     within e4m3's half step or saturated, never a larger squared error than absmax / 448's,
 *     an outlier clipped, a zero row zero;
 *   - --quant int4's rounding on hand-made rows: values on the grid exact, a zero group, lo = 0
 *     and hi = 0 groups, the clamp at 15, the scale rounded to bf16 or f16 first, the group
 *     width chosen, a NaN row leaving the weight unpacked; its clipping search on random groups
 *     with outliers: never a larger squared error than the min/max grid's, and less in sum;
 *   - integer weights (AWQ, GPTQ, compressed-tensors pack-quantized): small checkpoints packed
 *     here from the published layouts, dequantised exactly as (q - z) * s computed here: AWQ's
 *     nibble order, GPTQ's v1 and v2 zero points, act-order g_idx, 8 bits, pack-quantized with
 *     padding, channel scales, zero-point and g_idx tensors; a plain weight is left alone;
 *   - every malformed integer checkpoint is an error naming the tensor or field: a missing,
 *     misshapen or mistyped qzeros/scales/g_idx, in not a multiple of group_size, a g_idx entry
 *     out of range, unsupported bits, AWQ versions, GPTQ formats, pack dtypes and per-module
 *     schemes, asymmetric or activation-quantised pack-quantized, a module listed as not
 *     converted but stored packed, a packed weight without an integer config;
 *   - the CLI: FBGEMM and block-scaled variants of the llama_fp8_ct fixture (same e4m3 bytes,
 *     scales renamed) give its tokens, kilnc check describes what it dequantised (also for the
 *     INT4 fixtures, whose every tensor is used), --quant fp8 of a quantised checkpoint and for
 *     sm_80 are refused; --quant int4 compiles for sm_80, and kilnc check and kiln inspect say
 *     what it did.
 */
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pipeline.h"
#include "quant.h"
#include "safetensors.h"
#include "testutil.h"

static const char *KILNC, *KILN;

/* ---------------------------------------------------------------- e4m3 */

static void test_e4m3(void **state)
{
    (void)state;
    for (int b = 0; b < 256; b++) {
        float v = fp8_e4m3_to_f32((uint8_t)b);
        if ((b & 0x7f) == 0x7f) {
            assert_true(isnan(v));
            continue;
        }
        assert_int_equal(fp8_e4m3_from_f32(v), b);
    }
    assert_true(fp8_e4m3_to_f32(0x7e) == 448.0f);
    assert_true(fp8_e4m3_to_f32(0x01) == 0x1p-9f);
    assert_true(fp8_e4m3_to_f32(0x08) == 0x1p-6f);
    /* ties to even: between codes b and b + 1 (b even) the midpoint goes to b, just above to b+1 */
    for (int b = 0; b < 0x7e; b += 2) {
        float lo = fp8_e4m3_to_f32((uint8_t)b), hi = fp8_e4m3_to_f32((uint8_t)(b + 1));
        float mid = (lo + hi) / 2;
        assert_int_equal(fp8_e4m3_from_f32(mid), b);
        assert_int_equal(fp8_e4m3_from_f32(nextafterf(mid, 1000.0f)), b + 1);
        float hi2 = fp8_e4m3_to_f32((uint8_t)(b + 2));
        assert_int_equal(fp8_e4m3_from_f32((hi + hi2) / 2), b + 2); /* b + 1 is odd */
    }
    assert_int_equal(fp8_e4m3_from_f32(460.0f), 0x7e);
    assert_int_equal(fp8_e4m3_from_f32(1e30f), 0x7e);
    assert_int_equal(fp8_e4m3_from_f32(-1e30f), 0xfe);
    assert_int_equal(fp8_e4m3_from_f32(-0.0f), 0x80);
    assert_int_equal(fp8_e4m3_from_f32(0x1p-11f), 0); /* a quarter step: to zero */
}

/* ---------------------------------------------------------------- a hand-made checkpoint */

typedef struct qfix {
    char *dir;
    kc c;
    kerr err;
    unsigned char used[16];
} qfix;

/* config.json `cfg`; tensors "l.weight" e4m3 [R, C] (bytes b[i] = i * 7 % 126, so every value
 * appears, with signs from bit 7 of i * 13) and "l.<scale_name>" F32 of shape sshape. */
enum { R = 5, C = 7 };
static uint8_t wbytes(int i) { return (uint8_t)((i * 7 % 126) | ((i * 13) & 0x80)); }

static void qfix_open(qfix *f, const char *cfg, const char *scale_name, int sndim,
                      const int64_t *sshape, st_dtype sdt)
{
    memset(f, 0, sizeof *f);
    f->dir = tu_tmpdir();
    char *cp = tu_write(f->dir, "config.json", cfg);
    static uint8_t w[R * C];
    for (int i = 0; i < R * C; i++)
        w[i] = wbytes(i);
    static float s[64];
    for (int i = 0; i < 64; i++)
        s[i] = 0.5f + 0.25f * (float)i;
    st_writer *sw = st_writer_new();
    int64_t wsh[2] = {R, C};
    st_writer_add(sw, "l.weight", ST_F8_E4M3, 2, wsh, w);
    if (scale_name)
        st_writer_add(sw, scale_name, sdt, sndim, sshape, s);
    char *path = tu_path(f->dir, "model.safetensors");
    kerr_clear(&f->err);
    assert_int_equal(st_writer_write(sw, path, NULL, NULL, &f->err), 0);
    st_writer_free(sw);
    f->c.cfg = config_load(cp, &f->err);
    assert_non_null(f->c.cfg);
    f->c.weights = st_open(path, &f->err);
    assert_non_null(f->c.weights);
    assert_true(f->c.weights->n <= (int)sizeof f->used);
    free(cp);
    free(path);
}

static void qfix_close(qfix *f)
{
    quant_free(&f->c);
    st_close(f->c.weights);
    config_free(f->c.cfg);
    tu_rmrf(f->dir);
}

/* Dequantises l.weight; NULL on error (the message in f->err). */
static const st_tensor *qfix_dequant(qfix *f)
{
    if (quant_config_read(&f->c, &f->err))
        return NULL;
    return quant_dequant_fp8(&f->c, st_find(f->c.weights, "l.weight"), f->used, &f->err);
}

/* The fp32 values of tensor t that quant made (its codes decoded: quant_values), malloc'd. */
static float *values_of(const st_tensor *t)
{
    float *d = malloc(sizeof(float) * (t->numel ? t->numel : 1));
    quant_values(t, 0, t->numel, d);
    return d;
}

/* Every element equals e4m3 * scale[(r / br) * sc + k / bc] exactly; t holds them as codes. */
static void expect_values(const st_tensor *t, int br, int bc, int sc)
{
    assert_non_null(t);
    assert_int_equal(t->dtype, ST_U8);
    assert_int_equal(t->nbytes, t->numel);
    float *d = values_of(t);
    for (int r = 0; r < R; r++)
        for (int k = 0; k < C; k++) {
            float want = fp8_e4m3_to_f32(wbytes(r * C + k)) *
                         (0.5f + 0.25f * (float)((r / br) * sc + k / bc));
            if (d[r * C + k] != want)
                fail_msg("element [%d, %d]: %g, expected %g", r, k, d[r * C + k], want);
        }
    free(d);
}

#define CT(strategy, extra)                                                                      \
    "{\"quantization_config\": {\"quant_method\": \"compressed-tensors\", \"format\": "          \
    "\"float-quantized\", \"config_groups\": {\"g\": {\"targets\": [\"Linear\"], \"weights\": " \
    "{\"num_bits\": 8, \"type\": \"float\", \"strategy\": \"" strategy "\"" extra "}}}}}"

/* quant_fp8_value (the clipping search's rounding, computed in float without the byte) is the
 * value of the byte the packer writes, decoded, times the scale: for every non-NaN float on a
 * stride through all 2^32 bit patterns, and around every midpoint between e4m3 values, every
 * boundary (2^-6, 448, the saturation at 464) and zero, in both signs; zeros +0. The same for
 * quant_int4_value against the libm form of its clamp, NaN included. */
static float fp8_by_byte(float x, float s)
{
    float v = fp8_e4m3_to_f32(fp8_e4m3_from_f32(x / s)) * s;
    return v == 0 ? 0.0f : v;
}

static void fp8_same(float x, float s)
{
    float want = fp8_by_byte(x, s), got = quant_fp8_value(x, s);
    if (memcmp(&want, &got, sizeof want) != 0)
        fail_msg("quant_fp8_value(%a, %a) = %a, the byte's value %a", (double)x, (double)s,
                 (double)got, (double)want);
}

/* fp8_same on the 16 floats on each side of x and of -x. */
static void fp8_around(float x)
{
    for (int sg = 0; sg < 2; sg++)
        for (int dir = 0; dir < 2; dir++) {
            float y = sg ? -x : x;
            for (int i = 0; i < 16; i++, y = nextafterf(y, dir ? -INFINITY : INFINITY))
                fp8_same(y, 1.0f);
        }
}

static void test_fp8_value(void **state)
{
    (void)state;
    for (uint64_t u = 0; u < (1ull << 32); u += 4099) {
        uint32_t b = (uint32_t)u;
        float x;
        memcpy(&x, &b, sizeof x);
        if (!isnan(x)) {
            fp8_same(x, 1.0f);
            fp8_same(x, 0.0123f);
        }
    }
    for (int b = 0; b < 0x7e; b++) { /* 0x7e is 448, 0x7f NaN */
        float lo = fp8_e4m3_to_f32((uint8_t)b), hi = fp8_e4m3_to_f32((uint8_t)(b + 1));
        fp8_around((lo + hi) / 2);
        fp8_around(lo);
    }
    float edge[] = {0.0f, 0x1p-6f, 0x1p-9f, 0x1p-10f, 448.0f, 464.0f, 480.0f};
    for (size_t i = 0; i < sizeof edge / sizeof edge[0]; i++)
        fp8_around(edge[i]);
    fp8_same(INFINITY, 1.0f);
    fp8_same(-INFINITY, 1.0f);
    fp8_same(FLT_MAX, 1e-30f); /* x / s overflows to Inf: saturates */
    float zs[] = {0.0f, 1.0f, 7.0f, 15.0f}, ss[] = {0.01f, 1.0f, 3e-5f};
    for (uint64_t u = 0; u < (1ull << 32); u += 65537) {
        uint32_t b = (uint32_t)u;
        float w;
        memcpy(&w, &b, sizeof w);
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 3; j++) {
                float v = fminf(fmaxf(rintf(w / ss[j]) + zs[i], 0.0f), 15.0f);
                float want = (v - zs[i]) * ss[j], got = quant_int4_value(w, ss[j], zs[i]);
                if (memcmp(&want, &got, sizeof want) != 0 && !(isnan(want) && isnan(got)))
                    fail_msg("quant_int4_value(%a, %a, %g) = %a, want %a", (double)w,
                             (double)ss[j], (double)zs[i], (double)got, (double)want);
            }
    }
}

static void test_layouts(void **state)
{
    (void)state;
    qfix f;
    int64_t one[1] = {1}, ch[2] = {R, 1}, ch1[1] = {R}, blk[2] = {3, 2};
    qfix_open(&f, CT("tensor", ""), "l.weight_scale", 1, one, ST_F32);
    expect_values(qfix_dequant(&f), R, C, 1);
    assert_int_equal(f.used[1], 1); /* the scale is used (tensors sorted: l.weight, l.weight_scale) */
    qfix_close(&f);
    qfix_open(&f, CT("channel", ""), "l.weight_scale", 2, ch, ST_F32);
    expect_values(qfix_dequant(&f), 1, C, 1);
    qfix_close(&f);
    qfix_open(&f, "{\"quantization_config\": {\"quant_method\": \"fbgemm_fp8\"}}",
              "l.weight_scale", 1, ch1, ST_F32);
    expect_values(qfix_dequant(&f), 1, C, 1);
    qfix_close(&f);
    /* blocks [2, 4] over [5, 7]: a 3 x 2 grid whose last row and column are partial */
    qfix_open(&f, "{\"quantization_config\": {\"quant_method\": \"fp8\", \"fmt\": \"e4m3\", "
                  "\"activation_scheme\": \"dynamic\", \"weight_block_size\": [2, 4]}}",
              "l.weight_scale_inv", 2, blk, ST_F32);
    expect_values(qfix_dequant(&f), 2, 4, 2);
    qfix_close(&f);
    qfix_open(&f, CT("block", ", \"block_structure\": [2, 4]"), "l.weight_scale", 2, blk, ST_F32);
    expect_values(qfix_dequant(&f), 2, 4, 2);
    qfix_close(&f);
}

static void expect_error(const char *cfg, const char *scale_name, int sndim, const int64_t *sh,
                         st_dtype sdt, const char *msg)
{
    qfix f;
    qfix_open(&f, cfg, scale_name, sndim, sh, sdt);
    assert_null(qfix_dequant(&f));
    assert_contains(kerr_msg(&f.err), msg);
    qfix_close(&f);
}

static void test_errors(void **state)
{
    (void)state;
    int64_t ch[2] = {R, 1}, bad[2] = {R, 2}, blk[2] = {3, 1};
    const char *fb = "{\"quantization_config\": {\"quant_method\": \"fbgemm_fp8\"}}";
    expect_error(fb, NULL, 0, NULL, ST_F32,
                 "tensor 'l.weight_scale' is not in the checkpoint: the scale of FP8 weight "
                 "'l.weight' (expected [5, 1], from quantization_config)");
    expect_error(fb, "l.weight_scale", 2, bad, ST_F32,
                 "tensor 'l.weight_scale' is F32 [5, 2]; the scale of FP8 weight 'l.weight' [5, 7] "
                 "must be F32, BF16 or F16 [5, 1]");
    expect_error(fb, "l.weight_scale", 2, ch, ST_I32, "tensor 'l.weight_scale' is I32 [5, 1]");
    expect_error("{\"quantization_config\": {\"quant_method\": \"fp8\"}}", "l.weight_scale_inv",
                 2, blk, ST_F32, "'l.weight_scale_inv' is F32 [3, 1]; the scale of FP8 weight "
                                 "'l.weight' [5, 7] must be F32, BF16 or F16 [1, 1]");
    expect_error("{}", "l.weight_scale", 2, ch, ST_F32,
                 "tensor 'l.weight' is F8_E4M3 but");
    expect_error("{}", "l.weight_scale", 2, ch, ST_F32, "has no quantization_config");
    /* the configs kiln refuses, each naming its field */
    expect_error("{\"quantization_config\": {\"quant_method\": \"bitsandbytes\"}}", NULL, 0, NULL,
                 ST_F32, "quantization_config.quant_method is 'bitsandbytes'");
    expect_error("{\"quantization_config\": {\"quant_method\": \"awq\", \"bits\": 4, "
                 "\"group_size\": 128}}",
                 "l.weight_scale", 1, ch, ST_F32,
                 "config.json describes integer weights (AWQ, GPTQ or pack-quantized), not FP8 "
                 "ones: the scales of F8_E4M3 tensor 'l.weight' are unknown");
    expect_error("{\"quantization_config\": 3}", NULL, 0, NULL, ST_F32,
                 "quantization_config must be an object");
    expect_error("{\"quantization_config\": {\"quant_method\": \"compressed-tensors\", \"format\": "
                 "\"marlin-24\"}}",
                 NULL, 0, NULL, ST_F32, "quantization_config.format is 'marlin-24'");
    expect_error("{\"quantization_config\": {\"quant_method\": \"compressed-tensors\", \"format\": "
                 "\"float-quantized\", \"kv_cache_scheme\": {\"num_bits\": 8}, \"config_groups\": "
                 "{}}}",
                 NULL, 0, NULL, ST_F32, "quantization_config.kv_cache_scheme is set");
    expect_error("{\"quantization_config\": {\"quant_method\": \"compressed-tensors\", \"format\": "
                 "\"float-quantized\", \"config_groups\": {\"g\": {\"weights\": {\"num_bits\": 4, "
                 "\"type\": \"int\", \"strategy\": \"group\"}}}}}",
                 NULL, 0, NULL, ST_F32,
                 "quantization_config.config_groups.g.weights: kiln reads 8-bit float weights");
    expect_error(CT("group", ""), NULL, 0, NULL, ST_F32,
                 "quantization_config.config_groups.g.weights.strategy is 'group'");
    expect_error(CT("block", ", \"block_structure\": [0, 128]"), NULL, 0, NULL, ST_F32,
                 "block_structure [0, 128] is out of range");
    expect_error("{\"quantization_config\": {\"quant_method\": \"fp8\", \"weight_block_size\": "
                 "128}}",
                 NULL, 0, NULL, ST_F32, "weight_block_size must be a pair of integers");
    expect_error("{\"quantization_config\": {\"quant_method\": \"fp8\", \"activation_scheme\": "
                 "\"static\"}}",
                 NULL, 0, NULL, ST_F32, "quantization_config.activation_scheme is 'static'");
}

/* ---------------------------------------------------------------- integer weights */

/* A hand-made checkpoint of integer tensors for weight "l.weight": the values below are the
 * truth, packed here from the published layouts (the packing direction, written independently
 * of quant.c's unpacking) and compared with quant.c's dequantisation element by element. */
typedef struct itensor {
    const char *name;
    st_dtype dt;
    int ndim;
    int64_t shape[2];
    const void *data;
} itensor;

static void ifix_open(qfix *f, const char *cfg, const itensor *ts, int n)
{
    memset(f, 0, sizeof *f);
    f->dir = tu_tmpdir();
    char *cp = tu_write(f->dir, "config.json", cfg);
    st_writer *sw = st_writer_new();
    for (int i = 0; i < n; i++)
        st_writer_add(sw, ts[i].name, ts[i].dt, ts[i].ndim, ts[i].shape, ts[i].data);
    char *path = tu_path(f->dir, "model.safetensors");
    kerr_clear(&f->err);
    assert_int_equal(st_writer_write(sw, path, NULL, NULL, &f->err), 0);
    st_writer_free(sw);
    f->c.cfg = config_load(cp, &f->err);
    if (!f->c.cfg)
        fail_msg("%s", kerr_msg(&f->err));
    f->c.weights = st_open(path, &f->err);
    assert_non_null(f->c.weights);
    assert_true(f->c.weights->n <= (int)sizeof f->used);
    free(cp);
    free(path);
}

/* quant_dequant_packed of "l.weight": 0 and *out, or -1 (the message in f->err). */
static int ifix_dequant(qfix *f, const st_tensor **out)
{
    *out = NULL;
    if (quant_config_read(&f->c, &f->err))
        return -1;
    return quant_dequant_packed(&f->c, "l.weight", f->used, out, &f->err);
}

/* The truth: integer values, zero points and scales as functions of their indices. */
static int qval(int64_t i, int64_t o, int bits)
{
    return (int)((i * 5 + o * 3 + i * o) % (1 << bits));
}
/* From 1 to 2^bits - 1: GPTQ's format "gptq" stores z - 1 in the field, so it has no zero of 0. */
static int zval(int64_t g, int64_t o, int bits)
{
    return (int)(1 + (g * 7 + o * 2) % ((1 << bits) - 1));
}
static float sval(int64_t g, int64_t o) /* exact in F16 and BF16 for the indices used */
{
    return 0.5f + 0.125f * (float)(g * 13 + o);
}

/* AWQ: in 8 (two groups of 4), out 16 (two words per row). */
enum { AI = 8, AO = 16, AG = 4 };
static uint32_t awq_qw[AI][AO / 8], awq_qz[AI / AG][AO / 8];
static uint16_t awq_sc[AI / AG][AO];

static void make_awq(void)
{
    static const int order[8] = {0, 2, 4, 6, 1, 3, 5, 7}; /* nibble k holds column 8j + order[k] */
    memset(awq_qw, 0, sizeof awq_qw);
    memset(awq_qz, 0, sizeof awq_qz);
    for (int j = 0; j < AO / 8; j++)
        for (int k = 0; k < 8; k++) {
            int o = 8 * j + order[k];
            for (int i = 0; i < AI; i++)
                awq_qw[i][j] |= (uint32_t)qval(i, o, 4) << (4 * k);
            for (int g = 0; g < AI / AG; g++)
                awq_qz[g][j] |= (uint32_t)zval(g, o, 4) << (4 * k);
        }
    for (int g = 0; g < AI / AG; g++)
        for (int o = 0; o < AO; o++)
            awq_sc[g][o] = util_f32_to_f16(sval(g, o));
}

#define AWQ_CFG(extra)                                                                           \
    "{\"quantization_config\": {\"quant_method\": \"awq\", \"bits\": 4, \"group_size\": 4, "     \
    "\"zero_point\": true" extra "}}"

static void awq_tensors(itensor *t)
{
    make_awq();
    t[0] = (itensor){"l.qweight", ST_I32, 2, {AI, AO / 8}, awq_qw};
    t[1] = (itensor){"l.qzeros", ST_I32, 2, {AI / AG, AO / 8}, awq_qz};
    t[2] = (itensor){"l.scales", ST_F16, 2, {AI / AG, AO}, awq_sc};
}

/* Every element of t [out, in] equals (q(i, o) - z(group(i), o)) * s(group(i), o). */
static void expect_int(const st_tensor *t, int64_t out, int64_t in, int bits, int zero, int zplus,
                       const int *group, int signed_q)
{
    assert_non_null(t);
    /* codes (a byte a value) where the weight keeps an INT4 form; 8-bit and act-order ones stay
     * fp32 (quant.h) */
    assert_true(t->dtype == ST_F32 || (t->dtype == ST_U8 && bits == 4 && t->nbytes == t->numel));
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], out);
    assert_int_equal(t->shape[1], in);
    assert_string_equal(t->name, "l.weight");
    float *d = values_of(t);
    for (int64_t o = 0; o < out; o++)
        for (int64_t i = 0; i < in; i++) {
            int g = group[i];
            int q = qval(i, o, bits) - (signed_q ? 1 << (bits - 1) : 0);
            int z = zero ? zval(g, o, bits) + zplus : 0;
            float want = (float)(q - z) * sval(g, o);
            if (d[o * in + i] != want)
                fail_msg("element [%lld, %lld]: %g, expected %g", (long long)o, (long long)i,
                         d[o * in + i], want);
        }
    free(d);
}

static void test_awq(void **state)
{
    (void)state;
    qfix f;
    itensor t[4];
    const st_tensor *o;
    int grp[AI];
    for (int i = 0; i < AI; i++)
        grp[i] = i / AG;
    awq_tensors(t);
    ifix_open(&f, AWQ_CFG(", \"version\": \"gemm\""), t, 3);
    assert_int_equal(ifix_dequant(&f, &o), 0);
    expect_int(o, AO, AI, 4, 1, 0, grp, 0);
    assert_true(f.used[0] && f.used[1] && f.used[2]); /* sorted: qweight, qzeros, scales */
    char buf[256];
    assert_string_equal(quant_describe(&f.c, buf, sizeof buf),
                        "1 weight AWQ 4-bit (gemm), group size 4 (3 tensors read), dequantised to "
                        "fp32");
    qfix_close(&f);
    /* group_size -1: one group; "format" (transformers 5's name for version); BF16 scales */
    static uint16_t sc1[AO];
    for (int c = 0; c < AO; c++)
        sc1[c] = util_f32_to_bf16(sval(0, c));
    static uint32_t qz1[AO / 8];
    memcpy(qz1, awq_qz[0], sizeof qz1);
    t[1] = (itensor){"l.qzeros", ST_I32, 2, {1, AO / 8}, qz1};
    t[2] = (itensor){"l.scales", ST_BF16, 2, {1, AO}, sc1};
    ifix_open(&f, "{\"quantization_config\": {\"quant_method\": \"awq\", \"bits\": 4, "
                  "\"group_size\": -1, \"format\": \"gemm\", \"zero_point\": false}}",
              t, 3);
    assert_int_equal(ifix_dequant(&f, &o), 0);
    for (int i = 0; i < AI; i++)
        grp[i] = 0;
    expect_int(o, AO, AI, 4, 1, 0, grp, 0);
    qfix_close(&f);
    /* a plain l.weight: not packed, nothing read (modules_to_not_convert keeps it so) */
    static float plain[4];
    t[0] = (itensor){"l.weight", ST_F32, 2, {2, 2}, plain};
    ifix_open(&f, AWQ_CFG(", \"modules_to_not_convert\": [\"l\"]"), t, 1);
    assert_int_equal(ifix_dequant(&f, &o), 0);
    assert_null(o);
    assert_null(quant_describe(&f.c, buf, sizeof buf));
    qfix_close(&f);
}

/* GPTQ: in 16, out 8, groups of 4 with act order (g_idx (3 i) mod 4: not i / 4). */
enum { GI = 16, GO = 8, GG = 4 };

static void gptq_tensors(itensor *t, int bits, int zplus)
{
    int pf = 32 / bits, zc = (GO + pf - 1) / pf;
    static uint32_t qw[GI][GO], qz[GI / GG][GO];
    static uint16_t sc[GI / GG][GO];
    static int32_t gidx[GI];
    memset(qw, 0, sizeof qw);
    memset(qz, 0, sizeof qz);
    for (int i = 0; i < GI; i++) {
        gidx[i] = (3 * i) % GG;
        for (int o = 0; o < GO; o++)
            qw[i / pf][o] |= (uint32_t)qval(i, o, bits) << (bits * (i % pf));
    }
    for (int g = 0; g < GI / GG; g++)
        for (int o = 0; o < GO; o++) {
            /* format "gptq" stores z - 1 */
            uint32_t z = (uint32_t)(zval(g, o, bits) - zplus) & ((1u << bits) - 1);
            qz[g][o / pf] |= z << (bits * (o % pf));
            sc[g][o] = util_f32_to_f16(sval(g, o));
        }
    /* qz rows are zc words long: repack them contiguously */
    static uint32_t qzc[GI / GG * GO];
    for (int g = 0; g < GI / GG; g++)
        for (int k = 0; k < zc; k++)
            qzc[g * zc + k] = qz[g][k];
    t[0] = (itensor){"l.g_idx", ST_I32, 1, {GI}, gidx};
    t[1] = (itensor){"l.qweight", ST_I32, 2, {GI / pf, GO}, qw};
    t[2] = (itensor){"l.qzeros", ST_I32, 2, {GI / GG, zc}, qzc};
    t[3] = (itensor){"l.scales", ST_F16, 2, {GI / GG, GO}, sc};
}

#define GPTQ_CFG(bits, extra)                                                                    \
    "{\"quantization_config\": {\"quant_method\": \"gptq\", \"bits\": " #bits ", \"group_size\": " \
    "4, \"desc_act\": true, \"sym\": false" extra "}}"

static void test_gptq(void **state)
{
    (void)state;
    qfix f;
    itensor t[4];
    const st_tensor *o;
    int grp[GI];
    for (int i = 0; i < GI; i++)
        grp[i] = (3 * i) % GG;
    /* v1 (the default format), v2, and 8 bits */
    gptq_tensors(t, 4, 1);
    ifix_open(&f, GPTQ_CFG(4, ""), t, 4);
    assert_int_equal(ifix_dequant(&f, &o), 0);
    expect_int(o, GO, GI, 4, 1, 0, grp, 0);
    char buf[256];
    assert_string_equal(quant_describe(&f.c, buf, sizeof buf),
                        "1 weight GPTQ 4-bit (format gptq: zero points stored minus one), group "
                        "size 4 (4 tensors read), dequantised to fp32");
    qfix_close(&f);
    gptq_tensors(t, 4, 0);
    ifix_open(&f, GPTQ_CFG(4, ", \"checkpoint_format\": \"gptq_v2\""), t, 4);
    assert_int_equal(ifix_dequant(&f, &o), 0);
    expect_int(o, GO, GI, 4, 1, 0, grp, 0);
    qfix_close(&f);
    gptq_tensors(t, 8, 1);
    ifix_open(&f, GPTQ_CFG(8, ", \"format\": \"gptq\""), t, 4);
    assert_int_equal(ifix_dequant(&f, &o), 0);
    expect_int(o, GO, GI, 8, 1, 0, grp, 0);
    qfix_close(&f);
    /* without g_idx (desc_act false): group i / 4 */
    gptq_tensors(t, 4, 1);
    for (int i = 0; i < GI; i++)
        grp[i] = i / GG;
    ifix_open(&f, "{\"quantization_config\": {\"quant_method\": \"gptq\", \"bits\": 4, "
                  "\"group_size\": 4, \"dynamic\": {\"-:.*lm_head\": {}}}}",
              t + 1, 3);
    assert_int_equal(ifix_dequant(&f, &o), 0);
    expect_int(o, GO, GI, 4, 1, 0, grp, 0);
    qfix_close(&f);
}

/* pack-quantized: out 3, in 12 (weight_shape; 2 words a row, the second half padding). */
enum { CO = 3, CI = 12, CG = 4 };

static void ct_tensors(itensor *t, int bits, int channel)
{
    int pf = 32 / bits, pc = (CI + pf - 1) / pf;
    static uint32_t wp[CO * CI];
    static uint16_t sc[CO * CI];
    static int64_t shp[2] = {CO, CI};
    memset(wp, 0, sizeof wp);
    for (int o = 0; o < CO; o++)
        for (int i = 0; i < CI; i++)
            wp[o * pc + i / pf] |= (uint32_t)qval(i, o, bits) << (bits * (i % pf));
    int G = channel ? 1 : CI / CG;
    for (int o = 0; o < CO; o++)
        for (int g = 0; g < G; g++)
            sc[o * G + g] = util_f32_to_bf16(sval(g, o));
    t[0] = (itensor){"l.weight_packed", ST_I32, 2, {CO, pc}, wp};
    t[1] = (itensor){"l.weight_scale", ST_BF16, 2, {CO, G}, sc};
    t[2] = (itensor){"l.weight_shape", ST_I64, 1, {2}, shp};
}

#define CT_INT(bits, strategy, extra)                                                            \
    "{\"quantization_config\": {\"quant_method\": \"compressed-tensors\", \"format\": "          \
    "\"pack-quantized\", \"config_groups\": {\"group_0\": {\"targets\": [\"Linear\"], "          \
    "\"weights\": {\"num_bits\": " #bits ", \"type\": \"int\", \"symmetric\": true, "            \
    "\"strategy\": \"" strategy "\", \"group_size\": 4" extra "}}}, \"ignore\": [\"lm_head\"]}}"

static void test_ct_int(void **state)
{
    (void)state;
    qfix f;
    itensor t[5];
    const st_tensor *o;
    int grp[CI];
    for (int i = 0; i < CI; i++)
        grp[i] = i / CG;
    ct_tensors(t, 4, 0);
    ifix_open(&f, CT_INT(4, "group", ""), t, 3);
    assert_int_equal(ifix_dequant(&f, &o), 0);
    expect_int(o, CO, CI, 4, 0, 0, grp, 1);
    char buf[256];
    assert_string_equal(quant_describe(&f.c, buf, sizeof buf),
                        "1 weight pack-quantized 4-bit (symmetric), group size 4 (3 tensors read), "
                        "dequantised to fp32");
    qfix_close(&f);
    /* 8 bits, a zero point tensor of zeros, and a g_idx */
    static int8_t zp[CO * CI / CG];
    static int32_t gidx[CI];
    for (int i = 0; i < CI; i++)
        gidx[i] = grp[i] = (5 * i) % (CI / CG);
    ct_tensors(t, 8, 0);
    t[3] = (itensor){"l.weight_zero_point", ST_I8, 2, {CO, CI / CG}, zp};
    t[4] = (itensor){"l.weight_g_idx", ST_I32, 1, {CI}, gidx};
    ifix_open(&f, CT_INT(8, "group", ", \"actorder\": \"group\""), t, 5);
    assert_int_equal(ifix_dequant(&f, &o), 0);
    expect_int(o, CO, CI, 8, 0, 0, grp, 1);
    qfix_close(&f);
    /* channel: one scale per row; no weight_shape (in = 2 words * 8) */
    ct_tensors(t, 4, 1);
    for (int i = 0; i < CI; i++)
        grp[i] = 0;
    ifix_open(&f, CT_INT(4, "channel", ""), t, 2);
    assert_int_equal(ifix_dequant(&f, &o), 0);
    assert_int_equal(o->shape[1], 16);
    float *d = values_of(o);
    for (int r = 0; r < CO; r++)
        for (int i = 0; i < 16; i++) {
            float want = i < CI ? (float)(qval(i, r, 4) - 8) * sval(0, r) : -8.0f * sval(0, r);
            if (d[r * 16 + i] != want) /* the padding packs as 0, which reads back as -8 */
                fail_msg("channel [%d, %d]: %g, expected %g", r, i, d[r * 16 + i], want);
        }
    free(d);
    qfix_close(&f);
}

/* ifix_open + ifix_dequant must fail with a message containing msg. */
static void expect_int_error(const char *cfg, const itensor *t, int n, const char *msg)
{
    qfix f;
    const st_tensor *o;
    ifix_open(&f, cfg, t, n);
    assert_int_equal(ifix_dequant(&f, &o), -1);
    assert_null(o);
    assert_contains(kerr_msg(&f.err), msg);
    qfix_close(&f);
}

static void test_int_errors(void **state)
{
    (void)state;
    itensor t[5], u[5];
    awq_tensors(t);
    /* missing, misshapen, mistyped companions */
    u[0] = t[0], u[1] = t[2];
    expect_int_error(AWQ_CFG(""), u, 2,
                     "tensor 'l.qzeros' is not in the checkpoint: the zero points of AWQ weight "
                     "'l.weight' (expected I32 [2, 2], [in / group_size, out / 8])");
    u[0] = t[0], u[1] = t[1];
    expect_int_error(AWQ_CFG(""), u, 2, "tensor 'l.scales' is not in the checkpoint");
    memcpy(u, t, sizeof t);
    u[2].shape[0] = 1;
    expect_int_error(AWQ_CFG(""), u, 3,
                     "tensor 'l.scales' is F16 [1, 16]; the scales of AWQ weight 'l.weight' must "
                     "be F16, BF16 or F32 [2, 16] ([in / group_size, out])");
    memcpy(u, t, sizeof t);
    u[2].dt = ST_I16;
    expect_int_error(AWQ_CFG(""), u, 3, "tensor 'l.scales' is I16 [2, 16]; the scales of AWQ");
    memcpy(u, t, sizeof t);
    u[1].dt = ST_F32;
    expect_int_error(AWQ_CFG(""), u, 3, "tensor 'l.qzeros' is F32 [2, 2]; the zero points");
    memcpy(u, t, sizeof t);
    u[0].dt = ST_F32;
    expect_int_error(AWQ_CFG(""), u, 3,
                     "tensor 'l.qweight' is F32 [8, 2]; AWQ weight 'l.weight' is packed in a 2-D "
                     "I32 tensor ([in, out / 8])");
    /* the group size must divide in */
    expect_int_error("{\"quantization_config\": {\"quant_method\": \"awq\", \"bits\": 4, "
                     "\"group_size\": 3}}",
                     t, 3,
                     "AWQ weight 'l.weight' has 8 input columns, not a multiple of "
                     "quantization_config's group_size 3");
    /* the config's fields */
    expect_int_error(AWQ_CFG(", \"version\": \"exllama\""), t, 3,
                     "quantization_config.version is 'exllama'; kiln reads AWQ's \"gemm\" layout");
    expect_int_error(AWQ_CFG(", \"format\": \"gemv\""), t, 3, "quantization_config.format is 'gemv'");
    expect_int_error("{\"quantization_config\": {\"quant_method\": \"awq\", \"bits\": 3, "
                     "\"group_size\": 4}}",
                     t, 3, "quantization_config.bits is 3; AWQ checkpoints are read with 4 bits");
    expect_int_error("{\"quantization_config\": {\"quant_method\": \"awq\", \"bits\": 4}}", t, 3,
                     "quantization_config.group_size");
    expect_int_error("{\"quantization_config\": {\"quant_method\": \"awq\", \"bits\": 4, "
                     "\"group_size\": 0}}",
                     t, 3, "quantization_config.group_size is 0");
    expect_int_error(AWQ_CFG(", \"modules_to_not_convert\": [\"visual\", \"l\"]"), t, 3,
                     "quantization_config.modules_to_not_convert lists 'l', which names module "
                     "'l', but the checkpoint stores it packed ('l.qweight')");
    expect_int_error(AWQ_CFG(", \"modules_to_not_convert\": [3]"), t, 3,
                     "quantization_config.modules_to_not_convert[0] must be a module name");
    expect_int_error(AWQ_CFG(", \"modules_to_not_convert\": \"lm_head\""), t, 3,
                     "quantization_config.modules_to_not_convert must be a list");
    expect_int_error(AWQ_CFG(", \"modules_to_not_convert\": [\"(\"]"), t, 3,
                     "quantization_config.modules_to_not_convert[0] '(' is not a regular expression");
    /* a packed weight the config does not describe */
    expect_int_error("{}", t, 3,
                     "tensor 'l.qweight' holds weight 'l.weight' packed as integers, but");
    expect_int_error("{}", t, 3, "has no quantization_config");

    /* GPTQ */
    gptq_tensors(t, 4, 1);
    memcpy(u, t, sizeof t);
    ((int32_t *)(uintptr_t)u[0].data)[5] = 4;
    expect_int_error(GPTQ_CFG(4, ""), u, 4,
                     "tensor 'l.g_idx' holds 4 at index 5; the scale group of an input column of "
                     "GPTQ weight 'l.weight' must be from 0 to 3");
    ((int32_t *)(uintptr_t)u[0].data)[5] = -1;
    expect_int_error(GPTQ_CFG(4, ""), u, 4, "tensor 'l.g_idx' holds -1 at index 5");
    gptq_tensors(t, 4, 1);
    expect_int_error(GPTQ_CFG(4, ""), t + 1, 3,
                     "tensor 'l.g_idx' is not in the checkpoint: the group index of GPTQ weight "
                     "'l.weight' (expected I32 [16]");
    memcpy(u, t, sizeof t);
    u[0].shape[0] = 8;
    expect_int_error(GPTQ_CFG(4, ""), u, 4, "tensor 'l.g_idx' is I32 [8]; the group index");
    memcpy(u, t, sizeof t);
    u[2].shape[1] = 2;
    expect_int_error(GPTQ_CFG(4, ""), u, 4,
                     "tensor 'l.qzeros' is I32 [4, 2]; the zero points of GPTQ weight 'l.weight' "
                     "must be I32 [4, 1]");
    expect_int_error(GPTQ_CFG(4, ", \"checkpoint_format\": \"marlin\""), t, 4,
                     "quantization_config.checkpoint_format is 'marlin'");
    expect_int_error(GPTQ_CFG(2, ""), t, 4,
                     "quantization_config.bits is 2; GPTQ checkpoints are read with 4 or 8 bits");
    expect_int_error(GPTQ_CFG(4, ", \"pack_dtype\": \"int16\""), t, 4,
                     "quantization_config.pack_dtype is 'int16'");
    expect_int_error(GPTQ_CFG(4, ", \"dynamic\": {\"+:.*down\": {\"bits\": 8}}"), t, 4,
                     "quantization_config.dynamic['+:.*down'] gives some modules their own bits");
    expect_int_error("{\"quantization_config\": {\"quant_method\": \"gptq\", \"bits\": 4, "
                     "\"group_size\": 4, \"desc_act\": 1}}",
                     t, 4, "quantization_config.desc_act");

    /* pack-quantized */
    ct_tensors(t, 4, 0);
    memcpy(u, t, sizeof t);
    static int64_t badshape[2] = {CO, 17}, hugeshape[2] = {CO, INT64_MAX};
    u[2].data = badshape;
    expect_int_error(CT_INT(4, "group", ""), u, 3,
                     "tensor 'l.weight_shape' (I64 [2]) must hold [out, in] = [3, n] with n from 9 "
                     "to 16, as 'l.weight_packed' is I32 [3, 2]");
    u[2].data = hugeshape;
    expect_int_error(CT_INT(4, "group", ""), u, 3, "tensor 'l.weight_shape' (I64 [2]) must hold");
    static int8_t zp[CO * CI / CG] = {0, 0, 1};
    u[2] = t[2];
    u[3] = (itensor){"l.weight_zero_point", ST_I8, 2, {CO, CI / CG}, zp};
    expect_int_error(CT_INT(4, "group", ""), u, 4,
                     "tensor 'l.weight_zero_point' holds a zero point other than 0");
    expect_int_error(CT_INT(4, "group", ", \"actorder\": \"group\""), t, 3,
                     "tensor 'l.weight_g_idx' is not in the checkpoint");
    memcpy(u, t, sizeof t);
    u[1].shape[1] = 4;
    expect_int_error(CT_INT(4, "group", ""), u, 3,
                     "tensor 'l.weight_scale' is BF16 [3, 4]; the scales of pack-quantized weight "
                     "'l.weight' must be F16, BF16 or F32 [3, 3] ([out, in / group_size])");
    expect_int_error(CT_INT(4, "tensor", ""), t, 3, "weights.strategy is 'tensor'");
    expect_int_error(CT_INT(3, "group", ""), t, 3,
                     "quantization_config.config_groups.group_0.weights: a pack-quantized "
                     "checkpoint is read with integer weights of 4 or 8 bits");
    expect_int_error("{\"quantization_config\": {\"quant_method\": \"compressed-tensors\", "
                     "\"format\": \"pack-quantized\", \"config_groups\": {\"group_0\": "
                     "{\"weights\": {\"num_bits\": 4, \"type\": \"int\", \"strategy\": \"group\"}}}}}",
                     t, 3,
                     "quantization_config.config_groups.group_0.weights.group_size must be");
    expect_int_error("{\"quantization_config\": {\"quant_method\": \"compressed-tensors\", "
                     "\"format\": \"pack-quantized\", \"config_groups\": {\"g\": {\"weights\": "
                     "{\"num_bits\": 4, \"type\": \"int\", \"strategy\": \"channel\", "
                     "\"symmetric\": false}}}}}",
                     t, 3, "quantization_config.config_groups.g.weights.symmetric is false");
    expect_int_error("{\"quantization_config\": {\"quant_method\": \"compressed-tensors\", "
                     "\"format\": \"pack-quantized\", \"config_groups\": {\"g\": {\"weights\": "
                     "{\"num_bits\": 4, \"type\": \"int\", \"strategy\": \"channel\"}, "
                     "\"input_activations\": {\"num_bits\": 8, \"type\": \"int\"}}}}}",
                     t, 3, "quantization_config.config_groups.g.input_activations is set");
    expect_int_error("{\"quantization_config\": {\"quant_method\": \"compressed-tensors\", "
                     "\"format\": \"pack-quantized\", \"config_groups\": {\"a\": {\"weights\": "
                     "{\"num_bits\": 4, \"type\": \"int\", \"strategy\": \"channel\"}}, \"b\": "
                     "{\"weights\": {\"num_bits\": 8, \"type\": \"int\", \"strategy\": "
                     "\"channel\"}}}}}",
                     t, 3, "quantization_config.config_groups: groups quantise weights differently");
    expect_int_error("{\"quantization_config\": {\"quant_method\": \"compressed-tensors\", "
                     "\"format\": \"pack-quantized\", \"ignore\": [\"lm_head\", \"re:.*\"], "
                     "\"config_groups\": {\"g\": {\"weights\": {\"num_bits\": 4, \"type\": "
                     "\"int\", \"strategy\": \"channel\"}}}}}",
                     t, 3, "quantization_config.ignore lists 're:.*', which names module 'l'");
    /* an FP8 config does not describe packed integers */
    expect_int_error(CT("channel", ""), t, 3,
                     "tensor 'l.weight_packed' holds weight 'l.weight' packed as integers, but ");
    expect_int_error(CT("channel", ""), t, 3, "config.json has an FP8 quantization_config");
}

/* ---------------------------------------------------------------- --quant fp8 */

/* --quant fp8's per-row rounding: every value is e4m3 times its row's scale, within e4m3's half
 * step of the weight (or saturated at 448 x the scale, for a weight past it), the scale found by
 * the clipping search between 0.21 and 1 x absmax / 448 with a squared error no larger than
 * absmax / 448's; a zero row stays zero with scale 1. Rows 3 on are bell-shaped (a sum of four
 * uniforms): there the search's squared error is 0.928 of absmax / 448's in sum (measured);
 * asserted under 0.96. */
static void test_quant_rows(void **state)
{
    (void)state;
    enum { RR = 53, CC = 300 };
    static float w[RR * CC];
    uint32_t seed = 7;
    for (int i = 0; i < CC; i++) {
        w[i] = ((float)(tu_rand(&seed) % 20001) - 10000.0f) * 1e-5f;
        w[CC + i] = 0;
        w[2 * CC + i] = w[i] * 1e-30f; /* tiny: the scale is a subnormal-free float still */
    }
    for (int i = 3 * CC; i < RR * CC; i++) {
        float u = 0;
        for (int j = 0; j < 4; j++)
            u += (float)(tu_rand(&seed) % 20001) - 10000.0f;
        w[i] = u * 1e-6f;
    }
    w[17] = -3.0f; /* the absmax of row 0 */
    st_tensor t = {.name = "x.weight", .dtype = ST_F32, .ndim = 2, .shape = {RR, CC},
                   .numel = RR * CC, .data = w, .nbytes = sizeof w};
    kc c;
    memset(&c, 0, sizeof c);
    c.quant_mode = KC_QUANT_FP8;
    const st_tensor *q = quant_round(&c, &t, NULL, NULL);
    assert_int_equal(q->dtype, ST_U8); /* kept as codes, a byte a value */
    assert_int_equal(q->nbytes, RR * CC);
    float *d = values_of(q);
    const qrows *qr = quant_rows(&c, q);
    assert_non_null(qr);
    assert_int_equal(qr->kind, QROWS_E4M3);
    assert_true(qr->scale[1] == 1.0f);
    double sum_c = 0, sum_m = 0;
    for (int r = 0; r < RR; r++) {
        float amax = 0, scale = qr->scale[r];
        for (int k = 0; k < CC; k++)
            amax = fmaxf(amax, fabsf(w[r * CC + k]));
        double ec = 0, em = 0;
        for (int k = 0; k < CC; k++) {
            float x = w[r * CC + k], y = d[r * CC + k];
            if (r == 1) {
                assert_true(y == 0.0f);
                continue;
            }
            /* y is exactly an e4m3 value times the scale */
            assert_true(fp8_e4m3_to_f32(fp8_e4m3_from_f32(y / scale)) * scale == y);
            /* e4m3: 3 mantissa bits, half a step is 1/16 relative; subnormals step 2^-9 * scale */
            if (fabsf(x) > 448.0f * scale)
                assert_true(y == copysignf(448.0f * scale, x));
            else if (!(fabsf(y - x) <= fmaxf(fabsf(x) / 16.0f, 0x1p-10f * scale) * 1.0001f))
                fail_msg("row %d col %d: %g quantised to %g", r, k, x, y);
            float m = quant_fp8_value(x, amax / 448.0f);
            ec += ((double)x - y) * ((double)x - y);
            em += ((double)x - m) * ((double)x - m);
        }
        if (r == 1)
            continue;
        if (!(scale <= amax / 448.0f && scale >= 0.2f * amax / 448.0f && ec <= em))
            fail_msg("row %d: scale %g (absmax / 448 %g), squared error %g against absmax / "
                     "448's %g",
                     r, (double)scale, (double)(amax / 448.0f), ec, em);
        if (r >= 3) {
            sum_c += ec;
            sum_m += em;
        }
    }
    print_message("fp8 clipping search: squared error %.4g of absmax / 448's\n", sum_c / sum_m);
    if (!(sum_c < 0.96 * sum_m))
        fail_msg("fp8: the clipping search's squared error is %.3f of absmax / 448's in sum, "
                 "expected under 0.96",
                 sum_c / sum_m);
    free(d);
    quant_free(&c);
}

/* --quant int4 of an F32 tensor `w` [rows, cols] with scales in `dt`: the rounded values
 * (malloc'd: values_of), its quantised form in *qr (which must exist). */
static float *int4_of(kc *c, st_dtype dt, float *w, int64_t rows, int64_t cols,
                      const qrows **qr)
{
    st_tensor *t = calloc(1, sizeof *t); /* quant_round keeps a copy of it: freed at the end */
    *t = (st_tensor){.name = "x.weight", .dtype = ST_F32, .ndim = 2, .shape = {rows, cols},
                     .numel = (uint64_t)(rows * cols), .data = w,
                     .nbytes = sizeof(float) * (size_t)(rows * cols)};
    c->quant_mode = KC_QUANT_INT4;
    c->act_dtype = dt;
    const st_tensor *q = quant_round(c, t, NULL, NULL);
    *qr = quant_rows(c, q);
    free(t);
    return values_of(q);
}

/* --quant int4's rounding (quant.h) on hand-made rows: values on the grid come back exactly, a
 * zero group gets scale 1, an all-positive group zero point 0 (lo = 0) and an all-negative one
 * 15, a value half a step past the top is clamped to 15, the scale is rounded to the compute
 * dtype before anything is rounded with it, the group is the largest of 128/64/32 dividing the
 * width (else the row), and a row with NaN leaves the weight without a quantised form. */
static void test_quant_int4_rows(void **state)
{
    (void)state;
    enum { NR = 3, NK = 256, NG = 128 };
    static float w[NR * NK];
    memset(w, 0, sizeof w);
    for (int k = 0; k < NG; k++) {
        w[k] = (float)(k % 16 - 6) * 0.25f;           /* row 0, group 0: s 0.25, z 6, exact */
        /* row 0, group 1: zeros */
        w[NK + k] = 0.5f * (float)(1 + k % 15);       /* row 1, group 0: 0.5..7.5, lo = 0 */
        w[NK + NG + k] = -0.5f * (float)(1 + k % 15); /* row 1, group 1: -7.5..-0.5, hi = 0 */
    }
    /* row 2, group 0: lo -5.5, hi 9.5: s = 15 / 15 = 1, z = rint(5.5) = 6 (to even), and 9.5
     * gives rint(9.5) + 6 = 16: clamped to 15, the value 9; -5.5 gives -6 + 6 = 0, the value
     * -6; 0.3 and 2.7 round to 0 and 3. The other columns hold the integers -5..8, on this grid
     * (squared error 0.68 in all) and off any shrunk one's: the clipping search keeps it (the
     * four alone would take 0.98 of the range, s 0.980469, z 5: error 0.60) */
    float *r2 = w + 2 * NK;
    for (int k = 4; k < NG; k++)
        r2[k] = (float)(k % 14 - 5);
    r2[0] = -5.5f, r2[1] = 9.5f, r2[2] = 0.3f, r2[3] = 2.7f;
    /* row 2, group 1: lo 0, hi 3: s = 0.2, not a bf16 number: bf16 0.2001953125 (f16
     * 0.199951171875); 3 / s = 14.985 (15.004) rounds to 15, 1 / s = 4.995 (5.001) to 5 */
    r2[NG] = 3.0f, r2[NG + 1] = 1.0f;
    kc c;
    memset(&c, 0, sizeof c);
    const qrows *qr;
    float *d = int4_of(&c, ST_BF16, w, NR, NK, &qr);
    assert_non_null(qr);
    assert_int_equal(qr->kind, QROWS_INT4);
    assert_int_equal(qr->block, NG);
    const float want_s[NR][2] = {{0.25f, 1.0f}, {0.5f, 0.5f}, {1.0f, 0.2001953125f}};
    const float want_z[NR][2] = {{6, 0}, {0, 15}, {6, 0}};
    for (int r = 0; r < NR; r++)
        for (int g = 0; g < 2; g++) {
            if (qr->scale[r * 2 + g] != want_s[r][g] || qr->zero[r * 2 + g] != want_z[r][g])
                fail_msg("row %d group %d: scale %g zero %g, expected %g and %g", r, g,
                         (double)qr->scale[r * 2 + g], (double)qr->zero[r * 2 + g],
                         (double)want_s[r][g], (double)want_z[r][g]);
        }
    for (int k = 0; k < 2 * NK; k++) /* rows 0 and 1: every value on its grid, unchanged */
        if (d[k] != w[k])
            fail_msg("row %d col %d: %g came back as %g", k / NK, k % NK, (double)w[k],
                     (double)d[k]);
    const float want2[] = {-6.0f, 9.0f, 0.0f, 3.0f};
    for (int k = 0; k < 4; k++)
        assert_true(d[2 * NK + k] == want2[k]);
    assert_true(d[2 * NK + NG] == 15 * 0.2001953125f);
    assert_true(d[2 * NK + NG + 1] == 5 * 0.2001953125f);
    for (int k = 4; k < NK; k++) /* values on the grid and zeros come back as they were */
        if (k != NG && k != NG + 1)
            assert_true(d[2 * NK + k] == r2[k]);
    /* the same with f16 scales: only row 2's second group has a scale that rounds */
    free(d);
    d = int4_of(&c, ST_F16, w, NR, NK, &qr);
    assert_non_null(qr);
    assert_true(qr->scale[2 * 2 + 1] == 0.199951171875f);
    assert_true(d[2 * NK + NG] == 15 * 0.199951171875f);
    assert_true(d[2 * NK + NG + 1] == 5 * 0.199951171875f);
    /* groups: 128, 64, 32 columns, else one per row (block 0, also when the group is the row) */
    static float v[2 * 192];
    for (int i = 0; i < 2 * 192; i++)
        v[i] = (float)(i % 7) - 3.0f;
    const int64_t widths[][2] = {{192, 64}, {96, 32}, {160, 32}, {64, 0}, {48, 0}, {144, 0}};
    for (int i = 0; i < 6; i++) {
        free(int4_of(&c, ST_BF16, v, 2, widths[i][0], &qr));
        assert_non_null(qr);
        if (qr->block != widths[i][1])
            fail_msg("width %lld: group %lld, expected %lld", (long long)widths[i][0],
                     (long long)qr->block, (long long)widths[i][1]);
    }
    /* a row with NaN: the weight keeps no quantised form (packed in the compute dtype), its
     * NaN stays for finite.c to report, and the other row is rounded all the same */
    static float x[2 * 32];
    for (int k = 0; k < 32; k++) {
        x[k] = 0.1f * (float)k;
        x[32 + k] = 0.25f * (float)(k % 16); /* 0..3.75: s 0.25, z 0 */
    }
    x[5] = NAN;
    x[32 + 1] = 0.3f; /* rounds to 0.25 */
    free(d);
    d = int4_of(&c, ST_BF16, x, 2, 32, &qr);
    assert_null(qr);
    assert_true(isnan(d[5]));
    assert_true(d[4] == x[4]);
    for (int k = 0; k < 32; k++)
        if (d[32 + k] != (k == 1 ? 0.25f : x[32 + k]))
            fail_msg("row 1 col %d: %g came back as %g", k, (double)x[32 + k], (double)d[32 + k]);
    free(d);
    quant_free(&c);
}

/* The squared error of w [n] on the grid s, z. */
static double int4_sq_err(const float *w, int n, float s, float z)
{
    double e = 0;
    for (int k = 0; k < n; k++) {
        double d = (double)w[k] - (double)quant_int4_value(w[k], s, z);
        e += d * d;
    }
    return e;
}

/* --quant int4's clipping search (quant.h) on 2000 random groups of 128 (uniform, and every
 * other group with an outlier 3 to 10 times the rest, of either sign): each group's grid has a
 * squared error no larger than that of the min/max grid (quant_int4_params: lo = min(w, 0), hi
 * = max(w, 0), s = (hi - lo) / 15 in bf16, z = rint(-lo / s)), and well under it in sum, and
 * every value is on it. Measured: 0.946 of min/max's in sum; asserted under 0.97 (min/max
 * itself: 1). */
static void test_quant_int4_clip(void **state)
{
    (void)state;
    enum { NR = 1000, NK = 256, G = 128 };
    float *w = malloc(sizeof(float) * NR * NK);
    uint32_t seed = 21;
    for (int g = 0; g < NR * NK / G; g++) {
        float *x = w + g * G;
        for (int k = 0; k < G; k++)
            x[k] = ((float)(tu_rand(&seed) % 20001) - 10000.0f) * 1e-5f;
        if (g % 2)
            x[tu_rand(&seed) % G] = (tu_rand(&seed) % 2 ? -1.0f : 1.0f) * 0.1f *
                                    (3.0f + (float)(tu_rand(&seed) % 701) * 0.01f);
    }
    kc c;
    memset(&c, 0, sizeof c);
    const qrows *qr;
    float *d = int4_of(&c, ST_BF16, w, NR, NK, &qr);
    assert_non_null(qr);
    assert_int_equal(qr->block, G);
    double sum_c = 0, sum_m = 0;
    for (int g = 0; g < NR * NK / G; g++) {
        const float *x = w + g * G;
        float sm, zm, sc = qr->scale[g], zc = qr->zero[g];
        assert_int_equal(quant_int4_params(x, G, ST_BF16, &sm, &zm), 0);
        assert_true(util_bf16_to_f32(util_f32_to_bf16(sc)) == sc && sc > 0);
        assert_true(zc == rintf(zc) && zc >= 0 && zc <= 15);
        for (int k = 0; k < G; k++)
            assert_true(d[g * G + k] == quant_int4_value(x[k], sc, zc));
        double ec = int4_sq_err(x, G, sc, zc), em = int4_sq_err(x, G, sm, zm);
        if (ec > em)
            fail_msg("group %d: the searched grid (s %g, z %g) has squared error %g, min/max's "
                     "(s %g, z %g) %g",
                     g, (double)sc, (double)zc, ec, (double)sm, (double)zm, em);
        sum_c += ec;
        sum_m += em;
    }
    print_message("int4 clipping search: squared error %.4g of min/max's\n", sum_c / sum_m);
    if (!(sum_c < 0.97 * sum_m))
        fail_msg("the clipping search's squared error is %.3f of min/max's in sum, expected "
                 "under 0.97",
                 sum_c / sum_m);
    free(d);
    quant_free(&c);
    free(w);
}

/* ---------------------------------------------------------------- the CLI */

/* A copy of llama_fp8_ct with config.json's quantization_config replaced by `qc` and each
 * ".weight_scale" tensor renamed to end in `suffix`. */
static char *variant(const char *tmp, const char *qc, const char *suffix)
{
    kerr err;
    kerr_clear(&err);
    st_set *s = st_open("tests/fixtures/llama_fp8_ct/model.safetensors", &err);
    assert_non_null(s);
    char *dir = tu_path(tmp, suffix + 1);
    tu_mkdir(dir);
    st_writer *w = st_writer_new();
    char **names = calloc((size_t)s->n, sizeof *names);
    for (int i = 0; i < s->n; i++) {
        const st_tensor *t = &s->tensors[i];
        size_t n = strlen(t->name);
        names[i] = n > 13 && !strcmp(t->name + n - 13, ".weight_scale")
                       ? xasprintf("%.*s%s", (int)(n - 13), t->name, suffix)
                       : xstrdup(t->name);
        st_writer_add(w, names[i], t->dtype, t->ndim, t->shape, t->data);
    }
    char *p = tu_path(dir, "model.safetensors");
    assert_int_equal(st_writer_write(w, p, NULL, NULL, &err), 0);
    st_writer_free(w);
    for (int i = 0; i < s->n; i++)
        free(names[i]);
    free(names);
    free(p);
    st_close(s);
    size_t len;
    char *cfg = tu_read("tests/fixtures/llama_fp8_ct/config.json", &len);
    char *at = strstr(cfg, "\"quantization_config\"");
    assert_non_null(at);
    /* the object runs to its matching brace (sort_keys: it is followed by other fields) */
    int depth = 0;
    char *e = strchr(at, '{');
    for (; *e; e++)
        if (*e == '{')
            depth++;
        else if (*e == '}' && --depth == 0)
            break;
    assert_true(*e == '}');
    char *out = xasprintf("%.*s\"quantization_config\": %s%s", (int)(at - cfg), cfg, qc, e + 1);
    free(tu_write(dir, "config.json", out));
    free(out);
    free(cfg);
    return dir;
}

static void test_cli(void **state)
{
    (void)state;
    char *tmp = tu_tmpdir();
    const char *ids = "5,17,200,3,99";
    const char *a0[] = {"ref", "tests/fixtures/llama_fp8_ct", "--ids", ids, "--max-new", "8", "--strict", NULL};
    tu_run r0 = tu_run_bin(tmp, KILNC, a0);
    EXPECT_CODE(r0, 0);
    char *fb = variant(tmp, "{\"quant_method\": \"fbgemm_fp8\", \"activation_scale_ub\": 1200.0}",
                       ".weight_scale");
    /* channel scales are blocks of [1, in]: weight_block_size [1, 4096] reads the same values */
    char *bl = variant(tmp, "{\"quant_method\": \"fp8\", \"weight_block_size\": [1, 4096]}",
                       ".weight_scale_inv");
    const char *dirs[] = {fb, bl};
    for (int i = 0; i < 2; i++) {
        const char *a[] = {"ref", dirs[i], "--ids", ids, "--max-new", "8", "--strict", NULL};
        tu_run r = tu_run_bin(tmp, KILNC, a);
        EXPECT_CODE(r, 0);
        assert_string_equal(r.out, r0.out);
        tu_run_free(&r);
    }
    const char *a1[] = {"ref", "tests/fixtures/llama_fp8_ct", "--ids", ids, "--quant", "fp8", NULL};
    tu_run r1 = tu_run_bin(tmp, KILNC, a1);
    EXPECT_CODE(r1, 1);
    assert_contains(r1.err, "--quant fp8: tests/fixtures/llama_fp8_ct is already quantised");
    const char *a2[] = {"compile", "tests/fixtures/llama", "-o", tmp, "--quant", "fp8", "--sm", "89,80", NULL};
    tu_run r2 = tu_run_bin(tmp, KILNC, a2);
    EXPECT_CODE(r2, 2);
    assert_contains(r2.err, "--quant fp8: sm_80 has no FP8 tensor cores");
    const char *a3[] = {"check", "tests/fixtures/llama", "--quant", "int8", NULL};
    tu_run r3 = tu_run_bin(tmp, KILNC, a3);
    EXPECT_CODE(r3, 2);
    assert_contains(r3.err, "--quant: 'int8' is not a format (expected fp8 or int4)");
    const char *a4[] = {"compile", "tests/fixtures/llama_fp8_ct", "-o", tmp, "--fp8-gemm", "w4a4", NULL};
    tu_run r4 = tu_run_bin(tmp, KILNC, a4);
    EXPECT_CODE(r4, 2);
    assert_contains(r4.err, "--fp8-gemm: 'w4a4' is not a mode (expected w8a8 or dequant)");
    const char *a5[] = {"compile", "tests/fixtures/llama_fp8_ct", "-o", tmp, "--fp8-gemm", NULL};
    tu_run r5 = tu_run_bin(tmp, KILNC, a5);
    EXPECT_CODE(r5, 2);
    /* kilnc check says what it dequantised */
    const char *c0[] = {"check", "tests/fixtures/llama_fp8_ct", NULL}, *c1[] = {"check", bl, NULL};
    const char *c2[] = {"check", "tests/fixtures/llama", "--quant", "fp8", NULL};
    tu_run k0 = tu_run_bin(tmp, KILNC, c0), k1 = tu_run_bin(tmp, KILNC, c1),
           k2 = tu_run_bin(tmp, KILNC, c2);
    EXPECT_CODE(k0, 0);
    EXPECT_CODE(k1, 0);
    EXPECT_CODE(k2, 0);
    assert_contains(k0.out, "quantised     14 weights F8_E4M3 with compressed-tensors per-channel "
                            "scales (14 scale tensors), dequantised to fp32\n");
    assert_contains(k1.out, "14 weights F8_E4M3 with fp8 block scales [1, 4096] (14 scale tensors)");
    assert_contains(k2.out, "quantised     --quant fp8: 14 linear weights rounded to e4m3");
    /* the INT4 fixtures: every tensor used (--strict), and what was dequantised; each leaves
     * layer 1's down_proj plain but GPTQ */
    static const char *const int4[][2] = {
        {"tests/fixtures/llama_awq", "quantised     13 weights AWQ 4-bit (gemm), group size 32 (39 "
                                     "tensors read), dequantised to fp32\n"},
        {"tests/fixtures/llama_gptq", "quantised     14 weights GPTQ 4-bit (format gptq: zero points "
                                      "stored minus one), group size 32 (56 tensors read), "
                                      "dequantised to fp32\n"},
        {"tests/fixtures/llama_int4_ct", "quantised     13 weights pack-quantized 4-bit (symmetric), "
                                         "group size 32 (39 tensors read), dequantised to fp32\n"},
    };
    /* --quant int4: refused for a quantised checkpoint; any SM (the INT4 kernels run on sm_80);
     * kilnc check says what it did, and kiln inspect (the manifest) too */
    const char *q0[] = {"ref", "tests/fixtures/llama_awq", "--ids", ids, "--quant", "int4", NULL};
    const char *q1[] = {"check", "tests/fixtures/llama", "--quant", "int4", NULL};
    char *art = tu_path(tmp, "int4");
    const char *q2[] = {"compile", "tests/fixtures/llama", "-o", art, "--quant", "int4",
                        "--sm", "80", NULL};
    const char *q3[] = {"inspect", art, NULL};
    const char *q4[] = {"check", "tests/fixtures/mixtral", "--quant", "int4", NULL};
    tu_run i0 = tu_run_bin(tmp, KILNC, q0), i1 = tu_run_bin(tmp, KILNC, q1);
    tu_run i2 = tu_run_bin(tmp, KILNC, q2), i3 = tu_run_bin(tmp, KILN, q3);
    tu_run i4 = tu_run_bin(tmp, KILNC, q4);
    EXPECT_CODE(i0, 1);
    assert_contains(i0.err, "--quant int4: tests/fixtures/llama_awq is already quantised");
    EXPECT_CODE(i1, 0);
    static const char int4_line[] =
        "--quant int4: 14 linear weights rounded to INT4 (round to nearest, asymmetric, a bf16 "
        "scale and zero point per group of input columns): 12 in groups of 32, 2 with one group "
        "per row (computed here in fp32)";
    assert_contains(i1.out, int4_line);
    EXPECT_CODE(i2, 0);
    EXPECT_CODE(i3, 0);
    assert_contains(i3.out, int4_line);
    /* qkv and gate/up fused, and down_proj of both layers; o_proj (144 columns, not a multiple
     * of 32) is rounded per row but packed in bf16 */
    assert_contains(i3.out, "int4         6 linear weights in 4 bits");
    /* the default limits: prefill steps of 9 to 64 rows and decode steps of more than 8 on the
     * skinny INT4 GEMM, longer prefill steps dequantised */
    assert_contains(i3.out, "prefill steps of 9 to 64 rows read them on the skinny INT4 GEMM, "
                            "longer ones dequantise them into bf16 for the GEMM; decode steps of "
                            "more than 8 rows read them on the skinny INT4 GEMM");
    /* a MoE model: the attention's 8 linears (hidden 64: one group a row), not the experts or
     * the router, as for published INT4 checkpoints */
    EXPECT_CODE(i4, 0);
    assert_contains(i4.out, "--quant int4: 8 linear weights rounded to INT4");
    assert_contains(i4.out, "8 in groups of 64 (computed here in fp32)");
    tu_run_free(&i0);
    tu_run_free(&i1);
    tu_run_free(&i2);
    tu_run_free(&i3);
    tu_run_free(&i4);
    free(art);
    for (int i = 0; i < 3; i++) {
        const char *a[] = {"ref", int4[i][0], "--ids", ids, "--max-new", "2", "--strict", NULL};
        const char *k[] = {"check", int4[i][0], "--strict", NULL};
        tu_run r = tu_run_bin(tmp, KILNC, a), rc = tu_run_bin(tmp, KILNC, k);
        EXPECT_CODE(r, 0);
        EXPECT_CODE(rc, 0);
        assert_contains(rc.out, int4[i][1]);
        assert_contains(rc.out, "0 unused");
        tu_run_free(&r);
        tu_run_free(&rc);
    }
    tu_run_free(&k0);
    tu_run_free(&k1);
    tu_run_free(&k2);
    tu_run_free(&r0);
    tu_run_free(&r1);
    tu_run_free(&r2);
    tu_run_free(&r3);
    tu_run_free(&r4);
    tu_run_free(&r5);
    free(fb);
    free(bl);
    tu_rmrf(tmp);
}

int main(void)
{
    KILNC = tu_binary("KILNC", "test_quant");
    KILN = tu_binary("KILN", "test_quant");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_e4m3),
        cmocka_unit_test(test_fp8_value),
        cmocka_unit_test(test_layouts),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_awq),
        cmocka_unit_test(test_gptq),
        cmocka_unit_test(test_ct_int),
        cmocka_unit_test(test_int_errors),
        cmocka_unit_test(test_quant_rows),
        cmocka_unit_test(test_quant_int4_rows),
        cmocka_unit_test(test_quant_int4_clip),
        cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
