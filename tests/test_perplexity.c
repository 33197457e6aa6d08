/* test_perplexity — `kiln perplexity` on examples/tinyfortune (the CPU backend, fp32), run as a
 * program (the binary named by $KILN).
 *
 * The oracle is HF transformers on the same text, tokens and windows: the table below is what
 *   /work/hf-venv/bin/python tests/fixtures/perplexity/make_reference.py
 * prints (the guide's sliding windows, each token's NLL summed exactly in float64). kiln's mean
 * NLL and perplexity must agree within 1e-4 relative, its tokens scored and windows exactly; the
 * settings differ by more than that (windows matter: 50.36 with the whole text as context, 50.88
 * at window 64 stride 32, 56.69 at window = stride 48, whose windows' first tokens are not scored).
 * The bad inputs each give their message: an unreadable or empty file, a text of one token, a
 * window past the model's max sequence length, a stride outside 1..W, a model without an LM head.
 * --quant on the CPU: the weights are rounded (the perplexity moves, and the backend says how
 * they were rounded), by GPTQ with --calibrate; the misuses of --quant and --calibrate are
 * usage errors, and --quant on a compiled model names what to do instead.
 */
#include "testutil.h"

#include <jansson.h>
#include <unistd.h>

#define TINY "examples/tinyfortune"
#define BERT "tests/fixtures/bert"
#define TEXT "tests/fixtures/perplexity/text.txt"

static const char *KILN;
static char *D;

static int setup(void **state)
{
    (void)state;
    D = tu_tmpdir();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tu_rmrf(D);
    D = NULL;
    return 0;
}

typedef tu_run run;

#define PPL(...) tu_run_bin(D, KILN, (const char *[]){"perplexity", __VA_ARGS__, NULL})

/* make_reference.py's lines: window, stride, tokens scored, windows, mean NLL, perplexity */
static const struct {
    int window, stride, scored, windows;
    double mean_nll, ppl;
} REF[] = {
    {512, 256, 208, 1, 3.919180345544975, 50.359150754694916},
    {64, 32, 208, 6, 3.929414352360756, 50.87717284632238},
    {48, 48, 204, 5, 4.037549054759822, 56.687235093382164},
    {40, 7, 208, 26, 3.895033357272927, 49.15769310192039},
};

/* The number after "KEY: " in out. */
static double field(const char *out, const char *key)
{
    const char *p = strstr(out, key);
    if (!p)
        fail_msg("no '%s' in:\n%s", key, out);
    return strtod(p + strlen(key), NULL);
}

static void assert_rel(double got, double want, const char *what, int window, int stride)
{
    if (fabs(got - want) > 1e-4 * fabs(want))
        fail_msg("window %d stride %d: %s %.9g, HF %.9g (rel. %.2e > 1e-4)", window, stride, what,
                 got, want, fabs(got - want) / fabs(want));
}

static void test_matches_hf(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(REF); i++) {
        char w[16], s[16];
        snprintf(w, sizeof w, "%d", REF[i].window);
        snprintf(s, sizeof s, "%d", REF[i].stride);
        run r = PPL(TINY, "--text", TEXT, "--window", w, "--stride", s);
        EXPECT_CODE(r, 0);
        assert_int_equal((int)field(r.out, "tokens scored: "), REF[i].scored);
        assert_int_equal((int)field(r.out, "windows: "), REF[i].windows);
        assert_rel(field(r.out, "mean NLL: "), REF[i].mean_nll, "mean NLL", REF[i].window,
                   REF[i].stride);
        assert_rel(field(r.out, "perplexity: "), REF[i].ppl, "perplexity", REF[i].window,
                   REF[i].stride);
        tu_run_free(&r);
    }
    /* windows matter: each setting's perplexity is apart from the others' by more than 1e-4 */
    for (size_t i = 0; i < ARRAY_LEN(REF); i++)
        for (size_t k = i + 1; k < ARRAY_LEN(REF); k++)
            assert_true(fabs(REF[i].ppl - REF[k].ppl) > 1e-3 * REF[i].ppl);
}

/* No options: the window is the model's max sequence length (512), the stride half of it; --json
 * writes the same numbers; --max-tokens keeps the first N tokens. */
static void test_defaults_and_json(void **state)
{
    (void)state;
    char *json = tu_path(D, "ppl.json");
    run r = PPL(TINY, "--text", TEXT, "--json", json);
    EXPECT_CODE(r, 0);
    assert_contains(r.out, "windows: 1 (window 512, stride 256, 209 tokens)");
    assert_rel(field(r.out, "perplexity: "), REF[0].ppl, "perplexity", 512, 256);
    json_error_t je;
    json_t *root = json_load_file(json, 0, &je);
    assert_non_null(root);
    assert_int_equal(json_integer_value(json_object_get(root, "tokens_scored")), 208);
    assert_int_equal(json_integer_value(json_object_get(root, "windows")), 1);
    assert_int_equal(json_integer_value(json_object_get(root, "window")), 512);
    assert_int_equal(json_integer_value(json_object_get(root, "stride")), 256);
    assert_rel(json_real_value(json_object_get(root, "mean_nll")), REF[0].mean_nll, "json mean_nll",
               512, 256);
    assert_rel(json_real_value(json_object_get(root, "perplexity")), REF[0].ppl,
               "json perplexity", 512, 256);
    assert_true(json_is_number(json_object_get(root, "seconds")));
    json_decref(root);
    tu_run_free(&r);
    free(json);
    r = PPL(TINY, "--text", TEXT, "--max-tokens", "100", "--window", "64");
    EXPECT_CODE(r, 0);
    assert_contains(r.out, "tokens scored: 99\n");
    assert_contains(r.out, "windows: 3 (window 64, stride 32, 100 tokens)");
    tu_run_free(&r);
}

/* A folder of links to FILES[i] named NAMES[i]: a model put together for one case. */
static char *linked(const char *name, const char *const *files, const char *const *names, int n)
{
    char *dir = tu_path(D, name);
    tu_mkdir(dir);
    for (int i = 0; i < n; i++) {
        char *abs = xasprintf("%s/%s", KILN_SOURCE_DIR, files[i]), *p = tu_path(dir, names[i]);
        if (symlink(abs, p))
            tu_die("symlink", p);
        free(abs);
        free(p);
    }
    return dir;
}

static void test_errors(void **state)
{
    (void)state;
    char *empty = tu_write(D, "empty.txt", ""), *one = tu_write(D, "one.txt", "A");
    static const struct {
        const char *args[6];
        int code;
        const char *want;
    } cases[] = {
        {{"--text", "/nonexistent/t.txt"}, 2, "--text: /nonexistent/t.txt: cannot open"},
        {{"--text", TEXT, "--window", "513"},
         2,
         "--window 513 exceeds the model's max sequence length 512"},
        {{"--text", TEXT, "--window", "64", "--stride", "65"}, 2, "--stride 65 is outside 1 to --window 64"},
        {{"--text", TEXT, "--stride", "300", "--window", "256"}, 2, "--stride 300 is outside 1 to --window 256"},
        {{"--text", TEXT, "--stride", "600"}, 2, "--stride 600 is outside 1 to the window 512"},
        {{"--text", TEXT, "--stride", "0"}, 2, "--stride: '0' is out of range (expected 1 to"},
        {{"--text", TEXT, "--max-tokens", "1"}, 2, "--max-tokens: '1' is out of range (expected 2 to"},
        {{"--window", "64"}, 2, "missing --text FILE"},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        const char *argv[10] = {"perplexity", TINY};
        int n = 2;
        for (int k = 0; k < 6 && cases[i].args[k]; k++)
            argv[n++] = cases[i].args[k];
        run r = tu_run_bin(D, KILN, argv);
        EXPECT_CODE(r, cases[i].code);
        assert_contains(r.err, cases[i].want);
        assert_contains(r.err, "kiln perplexity: error: ");
        tu_run_free(&r);
    }
    run r = PPL(TINY, "--text", empty);
    EXPECT_CODE(r, 2);
    assert_contains(r.err, "is empty (a text of at least 2 tokens is needed)");
    tu_run_free(&r);
    /* one token: tinyfortune's tokenizer adds BOS, so "A" is 2 tokens there; without its
     * post-processor it is 1 */
    char *nobos = linked("nobos", (const char *[]){TINY "/config.json", TINY "/model.safetensors"},
                         (const char *[]){"config.json", "model.safetensors"}, 2);
    json_error_t je;
    json_t *tj = json_load_file(TINY "/tokenizer.json", 0, &je);
    assert_non_null(tj);
    json_object_set_new(tj, "post_processor", json_null());
    char *tp = tu_path(nobos, "tokenizer.json");
    assert_int_equal(json_dump_file(tj, tp, 0), 0);
    json_decref(tj);
    r = PPL(nobos, "--text", one);
    EXPECT_CODE(r, 2);
    assert_contains(r.err, "encodes to 1 token; at least 2 are needed (the first is never scored)");
    tu_run_free(&r);
    r = PPL(TINY, "--text", one); /* the same text with BOS: scored */
    EXPECT_CODE(r, 0);
    assert_contains(r.out, "tokens scored: 1\n");
    tu_run_free(&r);
    /* an embedding model (BERT, given tinyfortune's tokenizer): no LM head */
    char *emb = linked("emb", (const char *[]){BERT "/config.json", BERT "/model.safetensors",
                                               TINY "/tokenizer.json"},
                       (const char *[]){"config.json", "model.safetensors", "tokenizer.json"}, 3);
    r = PPL(emb, "--text", TEXT);
    EXPECT_CODE(r, 2);
    assert_contains(r.err, "is an embedding model: it has no LM head, so no perplexity");
    tu_run_free(&r);
    /* help */
    r = tu_run_bin(D, KILN, (const char *[]){"perplexity", "--help", NULL});
    EXPECT_CODE(r, 0);
    assert_contains(r.out, "usage: kiln perplexity DIR --text FILE");
    assert_contains(r.out, "--stride S");
    tu_run_free(&r);
    r = tu_run_bin(D, KILN, (const char *[]){"--help", NULL});
    EXPECT_CODE(r, 0);
    assert_contains(r.out, "perplexity");
    tu_run_free(&r);
    free(tp);
    free(nobos);
    free(emb);
    free(empty);
    free(one);
}

/* kiln perplexity --quant: the checkpoint's linears rounded as kilnc compile --quant rounds them:
 * the perplexity moves (by more than 1e-4), and by less than a bound. On this 208-token text
 * (bf16 50.359) FP8 moves it by -2.25% and INT4 to nearest by +15.8% (issue 17's 1% and 5% are
 * for the README's longer text, INT4's with --calibrate). */
static void test_quant(void **state)
{
    (void)state;
    static const struct {
        const char *quant, *says;
        double bound; /* on |perplexity / bf16's - 1| */
    } q[] = {
        {"fp8", "--quant fp8: 42 linear weights rounded to e4m3 with a scale per row", 0.03},
        {"int4", "--quant int4: 42 linear weights rounded to INT4 (round to nearest", 0.25},
    };
    for (size_t i = 0; i < ARRAY_LEN(q); i++) {
        run r = PPL(TINY, "--text", TEXT, "--quant", q[i].quant);
        EXPECT_CODE(r, 0);
        assert_contains(r.err, q[i].says);
        double d = fabs(field(r.out, "perplexity: ") / REF[0].ppl - 1);
        if (d < 1e-4 || d > q[i].bound)
            fail_msg("--quant %s: perplexity %.2e from bf16's, expected 1e-4 to %g", q[i].quant, d,
                     q[i].bound);
        tu_run_free(&r);
    }
    /* GPTQ on the text's first 64 tokens: a different rounding from round to nearest's */
    run r = PPL(TINY, "--text", TEXT, "--quant", "int4", "--calibrate", TEXT,
                "--calibrate-tokens", "64");
    EXPECT_CODE(r, 0);
    assert_contains(r.err, "42 by GPTQ calibrated on 64 tokens of " TEXT);
    tu_run_free(&r);
    static const struct {
        const char *args[6];
        const char *want;
    } bad[] = {
        {{"--quant", "int3"}, "--quant int3: expected fp8 or int4"},
        {{"--calibrate", TEXT}, "--calibrate needs --quant fp8 or int4"},
        {{"--quant", "fp8", "--calibrate-tokens", "64"},
         "--calibrate-tokens needs --calibrate FILE"},
        {{"--quant", "fp8", "--calibrate", TEXT, "--calibrate-tokens", "1"},
         "--calibrate-tokens: '1' is out of range (expected 2 to"},
        /* kilnc's bound (GPTQ_MAX_TOKENS, 2^24), not int's */
        {{"--quant", "fp8", "--calibrate", TEXT, "--calibrate-tokens", "16777217"},
         "--calibrate-tokens: '16777217' is out of range (expected 2 to 16777216)"},
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        const char *argv[12] = {"perplexity", TINY, "--text", TEXT};
        int n = 4;
        for (int k = 0; k < 6 && bad[i].args[k]; k++)
            argv[n++] = bad[i].args[k];
        r = tu_run_bin(D, KILN, argv);
        EXPECT_CODE(r, 2);
        assert_contains(r.err, bad[i].want);
        tu_run_free(&r);
    }
    /* a compiled model (model.kiln: only its presence is looked at before the options are) */
    char *art = linked("art", (const char *[]){TINY "/tokenizer.json", TINY "/config.json"},
                       (const char *[]){"tokenizer.json", "model.kiln"}, 2);
    r = PPL(art, "--text", TEXT, "--quant", "int4");
    EXPECT_CODE(r, 1);
    assert_contains(r.err, "--quant applies to a Hugging Face checkpoint folder only");
    assert_contains(r.err, "its weights' rounding built in (kilnc compile --quant, --calibrate");
    tu_run_free(&r);
    free(art);
}

int main(void)
{
    KILN = getenv("KILN");
    if (!KILN || access(KILN, X_OK)) {
        fprintf(stderr, "test_perplexity: KILN must name the binary: run it through `make "
                        "check`, or as\n  KILN=out/bin/kiln out/tests/test_perplexity\n");
        return 1;
    }
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_matches_hf),
        T(test_defaults_and_json),
        T(test_errors),
        T(test_quant),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
