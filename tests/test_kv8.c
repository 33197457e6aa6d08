/* test_kv8 — the FP8 KV cache (kilnc compile --kv-dtype fp8) on the CPU: the e4m3 rounding the
 * kernels use (kernels/kiln_kv8.h) against compiler/quant.c's, the per-head rounding of the
 * reference (ref_kv8_head: exact values, a zero head, saturation, ties, NaN), kilnc ref's logits
 * with the option against without it on the llama fixture, the compiled artifact (manifest, kernel
 * parameters, kiln inspect, block sizes, a bad kv_dtype refused by ka_read) and the refusals
 * (multi-head latent attention, embedding and classification models, an unknown dtype).
 * The kernels themselves are tested on the GPU (tests/gpu/ktest_attention.c and
 * ktest_elementwise.c: their KV8 cases) and the whole path by tests/gpu/run.sh section 3f.
 */
#include <math.h>

#include "../kernels/kiln_attn.h"
#include "../kernels/kiln_kv8.h"
#include "artifact.h"
#include "pipeline.h"
#include "quant.h"
#include "ref.h"
#include "testutil.h"

static const char *KILNC, *KILN;

/* ---------------------------------------------------------------- the e4m3 rounding */

/* The oracle, by search: the finite e4m3 value nearest x (in double, exact for floats), ties to
 * the even byte (the even mantissa), past 448 the largest, with x's sign. */
static unsigned nearest_e4m3(float x)
{
    unsigned sign = signbit(x) ? 0x80u : 0u, best = 0;
    double a = fabs((double)x), bd = INFINITY;
    for (unsigned b = 0; b <= 0x7e; b++) {
        double d = fabs((double)fp8_e4m3_to_f32((uint8_t)b) - a);
        if (d < bd || (d == bd && !(b & 1))) {
            bd = d;
            best = b;
        }
    }
    return sign | best;
}

static void expect_same(float x)
{
    unsigned got = kiln_kv8_e4m3(x), want = nearest_e4m3(x);
    if (got != want)
        fail_msg("kiln_kv8_e4m3(%a) = 0x%02x, the nearest e4m3 is 0x%02x", (double)x, got, want);
}

/* kiln_kv8_e4m3 (integer operations: the kernels' encoder, and quant.c's fp8_e4m3_from_f32 on
 * the CPU) gives the nearest e4m3 byte, found by search, on every e4m3 value, every midpoint
 * between two neighbours and the floats on either side of it, float subnormals, values past 448,
 * and a million random floats from 2^-24 to 2^10 */
static void test_e4m3_same(void **state)
{
    (void)state;
    for (int b = 0; b < 256; b++) {
        if ((b & 0x7f) == 0x7f)
            continue; /* NaN */
        float v = fp8_e4m3_to_f32((uint8_t)b);
        expect_same(v);
        assert_int_equal(kiln_kv8_e4m3(v), b);
        if ((b & 0x7f) < 0x7e) {
            float w = fp8_e4m3_to_f32((uint8_t)(b + 1)), mid = (v + w) / 2;
            expect_same(mid);
            expect_same(nextafterf(mid, 0.0f));
            expect_same(nextafterf(mid, mid * 2));
        }
    }
    const float special[] = {0.0f, -0.0f, 0x1p-149f, -0x1p-130f, 0x1p-11f, 0x1p-10f, 0x1.8p-10f,
                             448.0f, 449.0f, 464.0f, -480.0f, 1e30f, INFINITY, -INFINITY};
    for (size_t i = 0; i < ARRAY_LEN(special); i++)
        expect_same(special[i]);
    assert_int_equal(kiln_kv8_e4m3(INFINITY), 0x7e);
    assert_int_equal(kiln_kv8_e4m3(-1e30f), 0xfe);
    assert_int_equal(kiln_kv8_e4m3(NAN) & 0x7f, 0x7f);
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 1000000; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        float m = 1.0f + (float)(s >> 40) * 0x1p-24f;                  /* [1, 2) */
        float x = ldexpf(m, (int)((s >> 8) % 35) - 24) * (s & 1 ? -1.0f : 1.0f); /* 2^-24 .. 2^11 */
        expect_same(x);
    }
    /* the scale: amax / 448 rounded once, 1 for a zero or underflowing head */
    assert_true(kiln_kv8_scale(448.0f) == 1.0f);
    assert_true(kiln_kv8_scale(0.0f) == 1.0f);
    assert_true(kiln_kv8_scale(0x1p-149f) == 1.0f);
    assert_true(kiln_kv8_scale(3.0f) == 3.0f / 448.0f);
}

/* ---------------------------------------------------------------- one head */

static void test_head(void **state)
{
    (void)state;
    uint8_t q[8];
    float out[8];
    /* exact e4m3 values with 448 in the head: scale 1, bytes their codes, values unchanged; the
     * same times 2^-10: scale 2^-10 (exact), the same bytes */
    const float ex[8] = {448.0f, 1.0f, -0.5f, 0x1p-9f, 3.25f, -240.0f, 0x1.8p-6f, 0.0f};
    const uint8_t codes[8] = {0x7e, 0x38, 0xb0, 0x01, 0x45, 0xf7, 0x0c, 0x00};
    for (int k = 0; k < 2; k++) {
        float x[8];
        for (int i = 0; i < 8; i++)
            x[i] = ldexpf(ex[i], -10 * k);
        float sc = ref_kv8_head(x, 8, q, out);
        assert_true(sc == ldexpf(1.0f, -10 * k));
        for (int i = 0; i < 8; i++) {
            assert_int_equal(q[i], codes[i]);
            assert_true(out[i] == x[i]);
        }
    }
    /* a zero head: scale 1, every byte a zero, every value 0 */
    const float zero[4] = {0.0f, -0.0f, 0.0f, 0.0f};
    assert_true(ref_kv8_head(zero, 4, q, out) == 1.0f);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(q[i] & 0x7f, 0);
        assert_true(out[i] == 0.0f);
    }
    /* ties to even at scale 1: 1.0625 (between 1 and 1.125) to 1, 1.1875 to 1.25, 17 to 16,
     * 2^-10 (half the smallest subnormal) to 0, 3 * 2^-10 to 2 * 2^-9 */
    const float tie[6] = {448.0f, 1.0625f, 1.1875f, 17.0f, 0x1p-10f, 0x1.8p-9f};
    const float tie_to[6] = {448.0f, 1.0f, 1.25f, 16.0f, 0.0f, 0x1p-8f};
    assert_true(ref_kv8_head(tie, 6, q, out) == 1.0f);
    for (int i = 0; i < 6; i++)
        if (out[i] != tie_to[i])
            fail_msg("tie %d: %a rounds to %a, expected %a", i, (double)tie[i], (double)out[i],
                     (double)tie_to[i]);
    /* saturation: an absmax whose quotient by its own scale rounds above 448 is stored as 448 */
    float amax = 1.0f;
    while (amax / (amax / 448.0f) <= 448.0f)
        amax = nextafterf(amax, 2.0f);
    const float sat[3] = {amax, -amax, 1.0f};
    float sc = ref_kv8_head(sat, 3, q, out);
    assert_true(sc == amax / 448.0f);
    assert_int_equal(q[0], 0x7e);
    assert_int_equal(q[1], 0xfe);
    assert_true(out[0] == 448.0f * sc && out[1] == -448.0f * sc);
    /* in place; a NaN stays NaN and leaves the others' scale alone */
    float nanh[3] = {NAN, 224.0f, -2.0f};
    assert_true(ref_kv8_head(nanh, 3, NULL, nanh) == 0.5f);
    assert_true(isnan(nanh[0]) && nanh[1] == 224.0f && nanh[2] == -2.0f);
}

/* ---------------------------------------------------------------- kilnc ref --kv-dtype fp8 */

/* The llama fixture's prompt repeated `rep` times: greedy logits of the prompt and 8 decode
 * steps, with and without the FP8 cache; returns the relative L2 error of all of them and
 * whether the first generated token agrees. */
static double ref_fp8_error(int rep, int *first_same)
{
    kc c;
    kc_opts o = {.need_weights = 1};
    kerr err;
    kerr_clear(&err);
    if (kc_open(&c, "tests/fixtures/llama", &o, &err) || kc_run(&c, "bind_weights", NULL, NULL, &err))
        fail_msg("llama: %s", kerr_msg(&err));
    st_set *ex = st_open("tests/fixtures/llama/expected.safetensors", &err);
    assert_non_null(ex);
    const st_tensor *ti = st_find(ex, "input_ids");
    assert_non_null(ti);
    int n0 = (int)ti->numel, n = n0 * rep, N = 8;
    int64_t *ids = malloc(sizeof(int64_t) * (size_t)n);
    for (int i = 0; i < n; i++)
        ids[i] = ((const int64_t *)ti->data)[i % n0];
    double num = 0, den = 0;
    int tok[2] = {-1, -1};
    float *lg[2] = {NULL, NULL};
    int V = 0;
    ref *r[2];
    for (int k = 0; k < 2; k++) {
        r[k] = ref_new(c.g, n + N, &err);
        assert_non_null(r[k]);
        ref_set_kv_fp8(r[k], k);
        assert_int_equal(ref_forward(r[k], ids, NULL, n, &err), 0);
        int rows;
        const float *o0 = ref_output(r[k], &rows, &V);
        lg[k] = malloc(sizeof(float) * (size_t)(n + N) * (size_t)V);
        memcpy(lg[k], o0, sizeof(float) * (size_t)n * (size_t)V);
    }
    /* decode: both follow the fp32 reference's greedy tokens, so their rows stay comparable */
    for (int s = 0; s < N; s++) {
        const float *last = lg[0] + (size_t)(n - 1 + s) * V;
        int64_t best = 0;
        for (int v = 1; v < V; v++)
            if (last[v] > last[best])
                best = v;
        if (s == 0) {
            const float *l8 = lg[1] + (size_t)(n - 1) * V;
            int b8 = 0;
            for (int v = 1; v < V; v++)
                if (l8[v] > l8[b8])
                    b8 = v;
            tok[0] = (int)best;
            tok[1] = b8;
        }
        for (int k = 0; k < 2; k++) {
            assert_int_equal(ref_forward(r[k], &best, NULL, 1, &err), 0);
            int rows, cols;
            memcpy(lg[k] + (size_t)(n + s) * V, ref_output(r[k], &rows, &cols),
                   sizeof(float) * (size_t)V);
        }
    }
    for (size_t i = 0; i < (size_t)(n + N - 1) * (size_t)V; i++) {
        double d = (double)lg[1][i] - lg[0][i];
        num += d * d;
        den += (double)lg[0][i] * lg[0][i];
    }
    *first_same = tok[0] == tok[1];
    for (int k = 0; k < 2; k++) {
        ref_free(r[k]);
        free(lg[k]);
    }
    free(ids);
    st_close(ex);
    kc_free(&c);
    return sqrt(num / den);
}

/* The FP8 cache changes the reference's logits (e4m3 keeps 3 mantissa bits: each cached value
 * moves by up to 1/16 of itself) but keeps them close. Measured on this machine: rel_l2 0.116 for the
 * fixture's 40-token prompt, 0.132 for it eight times over (320 tokens, 10 KV blocks), first token
 * the same (this tiny random model is "hot": run.sh's bf16-vs-fp32 control is 0.03 on it). The
 * bound 0.25 leaves about 2x; an unrounded cache gives exactly 0, hence the lower bound. */
static void test_ref_logits(void **state)
{
    (void)state;
    for (int rep = 1; rep <= 8; rep += 7) {
        int same = 0;
        double e = ref_fp8_error(rep, &same);
        print_message("kilnc ref --kv-dtype fp8 vs fp32, llama, %d-token prompt + 8 decode "
                      "steps: logits rel_l2 %.4f, first token %s\n",
                      40 * rep, e, same ? "the same" : "differs");
        assert_true(e > 1e-3);
        assert_true(e < 0.25);
        assert_true(same);
    }
}

/* ---------------------------------------------------------------- the artifact */

static void test_compile(void **state)
{
    (void)state;
    char *tmp = tu_tmpdir();
    char *out = tu_path(tmp, "a");
    const char *a[] = {"compile", "tests/fixtures/llama", "-o", out, "--sm", "90a", "--kv-dtype",
                       "fp8", NULL};
    tu_run r = tu_run_bin(tmp, KILNC, a);
    EXPECT_CODE(r, 0);
    tu_run_free(&r);
    char *mk = tu_path(out, "model.kiln");
    kerr err;
    kerr_clear(&err);
    ka_file *f = ka_read(mk, &err);
    if (!f)
        fail_msg("%s", kerr_msg(&err));
    const ka_manifest *m = &f->m;
    assert_int_equal(m->kv_e4m3, 1);
    assert_int_equal(m->n_layers, 2);
    for (int l = 0; l < m->n_layers; l++) { /* 2 kv heads of 24: 32 rows of 48 bytes + 2 scales */
        assert_int_equal(ka_kv_block_bytes(m, l, 0), 32 * (48 + 8));
        assert_int_equal(ka_kv_block_bytes(m, l, 1), 32 * (48 + 8));
    }
    /* the manifest says so, and a kv_dtype kiln does not store is refused by name */
    size_t mlen = 0;
    char *man = NULL;
    {
        uint64_t moff = 0, ml = 0;
        memcpy(&moff, f->data + 16, 8);
        memcpy(&ml, f->data + 24, 8);
        mlen = (size_t)ml;
        man = malloc(mlen + 1);
        memcpy(man, f->data + moff, mlen);
        man[mlen] = 0;
    }
    assert_contains(man, "\"kv_dtype\": \"f8_e4m3\"");
    char *bad = strstr(man, "f8_e4m3");
    memcpy(bad, "f8_e5m2", 7);
    size_t wl = 0;
    unsigned char *w = ka_wrap_manifest(man, mlen, &wl);
    kerr_clear(&err);
    ka_file *g = ka_read_mem("bad.kiln", w, wl, &err);
    assert_null(g);
    assert_contains(kerr_msg(&err), "kv_dtype is not \"f8_e4m3\"");
    free(w);
    free(man);
    ka_file_free(f);
    /* the kernels take byte caches; kiln inspect says what the cache holds */
    const char *s[] = {"inspect", out, "--source", NULL}, *i[] = {"inspect", out, NULL};
    tu_run rs = tu_run_bin(tmp, KILN, s), ri = tu_run_bin(tmp, KILN, i);
    EXPECT_CODE(rs, 0);
    EXPECT_CODE(ri, 0);
    assert_contains(rs.out, "unsigned char *k_cache, unsigned char *v_cache");
    assert_contains(rs.out, ", 128, 1>(st, q, k, v,");  /* rope_kv<..., THREADS, KV8 = 1> */
    char bmbn[64]; /* attn_prefill<..., BM, BN, 1> */
    snprintf(bmbn, sizeof bmbn, ", %d, %d, 1>(st, q, k_cache", KILN_ATTN_BM,
             KILN_ATTN_BN(24)); /* the llama fixture's head_dim */
    assert_contains(rs.out, bmbn);
    assert_contains(ri.out, "kv cache     fp8 (kilnc compile --kv-dtype fp8): e4m3 with a float "
                            "scale per token and kv head, 224 B a token (bf16: 384 B)");
    tu_run_free(&rs);
    tu_run_free(&ri);
    free(mk);
    free(out);
    tu_rmrf(tmp);
}

/* ---------------------------------------------------------------- refusals */

static void test_refusals(void **state)
{
    (void)state;
    char *tmp = tu_tmpdir();
    char *out = tu_path(tmp, "a");
    struct {
        const char *cmd, *model, *dtype, *msg;
    } cases[] = {
        {"compile", "tests/fixtures/deepseek_v2", "fp8",
         "--kv-dtype fp8: L0.attn is multi-head latent attention, whose cache holds latents"},
        {"ref", "tests/fixtures/deepseek_v2", "fp8", "is multi-head latent attention"},
        {"compile", "tests/fixtures/bert", "fp8",
         "--kv-dtype fp8: tests/fixtures/bert is an embedding or classification model"},
        {"compile", "tests/fixtures/bert_cls", "fp8", "is an embedding or classification model"},
        {"compile", "tests/fixtures/llama", "bf16", "--kv-dtype: 'bf16' is not a KV-cache dtype"},
        {"ref", "tests/fixtures/llama", "e5m2", "--kv-dtype: 'e5m2' is not a KV-cache dtype"},
    };
    for (size_t k = 0; k < ARRAY_LEN(cases); k++) {
        const char *c[] = {cases[k].cmd, cases[k].model, "--kv-dtype", cases[k].dtype,
                           "--ids", "1,2,3", NULL};
        const char *cc[] = {cases[k].cmd, cases[k].model, "-o", out, "--kv-dtype",
                            cases[k].dtype, NULL};
        tu_run r = tu_run_bin(tmp, KILNC, strcmp(cases[k].cmd, "ref") ? cc : c);
        EXPECT_CODE(r, 2);
        assert_contains(r.err, cases[k].msg);
        tu_run_free(&r);
    }
    free(out);
    tu_rmrf(tmp);
}

int main(void)
{
    KILNC = tu_binary("KILNC", "test_kv8");
    KILN = tu_binary("KILN", "test_kv8");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_e4m3_same), cmocka_unit_test(test_head),
        cmocka_unit_test(test_ref_logits), cmocka_unit_test(test_compile),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
