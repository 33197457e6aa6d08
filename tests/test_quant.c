/* test_quant — FP8 weights (compiler/quant.c):
 *
 *   - e4m3 encoding: every finite byte round-trips, midpoints round to the even neighbour,
 *     magnitudes above 448 saturate;
 *   - quantization_config: the formats kiln reads, and the refusals (each naming its field);
 *   - dequantisation of each scale layout on a small hand-made checkpoint, against values
 *     computed here: per-tensor, per-channel, and 128x128-style blocks with partial edge blocks;
 *   - a missing, misshapen or mistyped scale tensor, and FP8 without a quantization_config, are
 *     errors naming the tensor;
 *   - --quant fp8's per-row quantisation: the absmax element is exact, the rest within e4m3's
 *     half step, a zero row stays zero;
 *   - the CLI: FBGEMM and block-scaled variants of the llama_fp8_ct fixture (same e4m3 bytes,
 *     scales renamed) give its tokens, kilnc check describes what it dequantised, --quant fp8 of
 *     a quantised checkpoint and for sm_80 are refused.
 */
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

static const char *KILNC;

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
    unsigned char used[8];
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
    assert_true(f->c.weights->n <= 8);
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

/* Every element equals e4m3 * scale[(r / br) * sc + k / bc] exactly. */
static void expect_values(const st_tensor *t, int br, int bc, int sc)
{
    assert_non_null(t);
    assert_int_equal(t->dtype, ST_F32);
    const float *d = t->data;
    for (int r = 0; r < R; r++)
        for (int k = 0; k < C; k++) {
            float want = fp8_e4m3_to_f32(wbytes(r * C + k)) *
                         (0.5f + 0.25f * (float)((r / br) * sc + k / bc));
            if (d[r * C + k] != want)
                fail_msg("element [%d, %d]: %g, expected %g", r, k, d[r * C + k], want);
        }
}

#define CT(strategy, extra)                                                                      \
    "{\"quantization_config\": {\"quant_method\": \"compressed-tensors\", \"format\": "          \
    "\"float-quantized\", \"config_groups\": {\"g\": {\"targets\": [\"Linear\"], \"weights\": " \
    "{\"num_bits\": 8, \"type\": \"float\", \"strategy\": \"" strategy "\"" extra "}}}}}"

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
    expect_error("{\"quantization_config\": {\"quant_method\": \"awq\"}}", NULL, 0, NULL, ST_F32,
                 "quantization_config.quant_method is 'awq'");
    expect_error("{\"quantization_config\": 3}", NULL, 0, NULL, ST_F32,
                 "quantization_config must be an object");
    expect_error("{\"quantization_config\": {\"quant_method\": \"compressed-tensors\", \"format\": "
                 "\"pack-quantized\"}}",
                 NULL, 0, NULL, ST_F32, "quantization_config.format is 'pack-quantized'");
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

/* ---------------------------------------------------------------- --quant fp8 */

static void test_quant_rows(void **state)
{
    (void)state;
    enum { RR = 3, CC = 300 };
    static float w[RR * CC];
    uint32_t seed = 7;
    for (int i = 0; i < CC; i++) {
        w[i] = ((float)(tu_rand(&seed) % 20001) - 10000.0f) * 1e-4f;
        w[CC + i] = 0;
        w[2 * CC + i] = w[i] * 1e-30f; /* tiny: the scale is a subnormal-free float still */
    }
    w[17] = -3.0f; /* the absmax of row 0 */
    st_tensor t = {.name = "x.weight", .dtype = ST_F32, .ndim = 2, .shape = {RR, CC},
                   .numel = RR * CC, .data = w, .nbytes = sizeof w};
    kc c;
    memset(&c, 0, sizeof c);
    const st_tensor *q = quant_fp8_rows(&c, &t);
    const float *d = q->data;
    assert_true(d[17] == -3.0f);
    for (int r = 0; r < RR; r++) {
        float amax = 0;
        for (int k = 0; k < CC; k++)
            amax = fmaxf(amax, fabsf(w[r * CC + k]));
        float scale = amax / 448.0f;
        for (int k = 0; k < CC; k++) {
            float x = w[r * CC + k], y = d[r * CC + k];
            if (r == 1) {
                assert_true(y == 0.0f);
                continue;
            }
            /* e4m3: 3 mantissa bits, half a step is 1/16 relative; subnormals step 2^-9 * scale */
            if (!(fabsf(y - x) <= fmaxf(fabsf(x) / 16.0f, 0x1p-10f * scale) * 1.0001f))
                fail_msg("row %d col %d: %g quantised to %g", r, k, x, y);
            /* and y is exactly an e4m3 value times the scale */
            assert_true(fp8_e4m3_to_f32(fp8_e4m3_from_f32(y / scale)) * scale == y);
        }
    }
    quant_free(&c);
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
    const char *a3[] = {"check", "tests/fixtures/llama", "--quant", "int4", NULL};
    tu_run r3 = tu_run_bin(tmp, KILNC, a3);
    EXPECT_CODE(r3, 2);
    assert_contains(r3.err, "--quant: 'int4' is not a format (expected fp8)");
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
    tu_run_free(&k0);
    tu_run_free(&k1);
    tu_run_free(&k2);
    tu_run_free(&r0);
    tu_run_free(&r1);
    tu_run_free(&r2);
    tu_run_free(&r3);
    free(fb);
    free(bl);
    tu_rmrf(tmp);
}

int main(void)
{
    KILNC = getenv("KILNC");
    if (!KILNC)
        KILNC = "out/bin/kilnc";
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_e4m3),
        cmocka_unit_test(test_layouts),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_quant_rows),
        cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
