/* test_bench — `kiln bench` without a GPU, run as a program (the binaries named by $KILNC and
 * $KILN), and the roofline's cost model (roofline.h) on compiled fixtures.
 *
 * The command: --help; usage errors for bad options, each one line naming the option; a value
 * the model cannot run refused with the limit; an embedding model and a missing folder refused;
 * a bench of the Llama fixture checkpoint on the CPU backend that ends with its table, no
 * roofline (said so) and the same figures in --json; and defaults a tiny checkpoint cannot run
 * skipped with their reasons. Timings are not asserted (only that they are positive and agree
 * with the seconds).
 *
 * The output (bench_report.h) on made-up GPU figures: without a GEMM peak (no cuBLASLt), the
 * decode rows keep their ratios and the prefill and time-to-first-token rows say "n/a" (null in
 * the JSON, which stays valid); with one, every row has its ratio.
 *
 * The cost model: on the Llama fixture compiled, the bytes a decode step reads are every weight
 * but the embedding table (untied LM head), the KV bytes per token, the query width (from the
 * attn.o GEMMs: 6 heads x 24) and the prefill FLOPs are checked against numbers worked out by
 * hand from its config; on the tied fixture the table is the LM head and counts in full; compiled
 * with --tp 2, the figures are one rank's.
 */
#include "testutil.h"

#include <jansson.h>

#include "artifact.h"
#include "bench_report.h"
#include "roofline.h"

#define LLAMA "tests/fixtures/llama"          /* hidden 96, 2 layers, 6 heads / 2 KV of 24 */
#define TIED "tests/fixtures/llama_tied_oldstyle"
#define BERT "tests/fixtures/bert"

static const char *KILNC, *KILN;
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

static run run_argv(const char *bin, const char **args) { return tu_run_bin(D, bin, args); }
#define BENCH(...) run_argv(KILN, (const char *[]){"bench", __VA_ARGS__, NULL})

/* A usage error: exit 2, "kiln bench: error: ..." holding `msg`, and the hint, on stderr. */
static void expect_usage(run r, const char *msg, const char *file, int line)
{
    tu_expect_code(&r, 2, file, line);
    /* after the notes of the load, for what only the loaded CPU backend can check */
    tu_assert_contains(r.err, "kiln bench: error: ", file, line);
    tu_assert_contains(r.err, msg, file, line);
    tu_assert_contains(r.err, "run 'kiln bench --help' for usage", file, line);
    tu_run_free(&r);
}
#define EXPECT_USAGE(r, msg) expect_usage((r), (msg), __FILE__, __LINE__)

static void test_help(void **state)
{
    (void)state;
    run r = BENCH("--help");
    EXPECT_CODE(r, 0);
    assert_starts_with(r.out, "usage: kiln bench DIR");
    assert_contains(r.out, "--batch LIST");
    assert_contains(r.out, "--json FILE");
    assert_string_equal(r.err, "");
    tu_run_free(&r);
    r = BENCH("-h");
    EXPECT_CODE(r, 0);
    assert_starts_with(r.out, "usage: kiln bench DIR");
    tu_run_free(&r);
}

static void test_bad_options(void **state)
{
    (void)state;
    EXPECT_USAGE(BENCH("--batch", "1"), "missing DIR");
    EXPECT_USAGE(BENCH(LLAMA, "--no-such-option"), "unknown option '--no-such-option'");
    EXPECT_USAGE(BENCH(LLAMA, LLAMA), "unexpected argument");
    EXPECT_USAGE(BENCH(LLAMA, "--batch"), "--batch needs a value");
    EXPECT_USAGE(BENCH(LLAMA, "--batch", "1,,2"), "--batch");
    EXPECT_USAGE(BENCH(LLAMA, "--batch", "0,1"), "--batch: item 1 is 0");
    EXPECT_USAGE(BENCH(LLAMA, "--batch", "-1"), "--batch");
    EXPECT_USAGE(BENCH(LLAMA, "--batch", "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17"),
                 "--batch: 17 values; at most 16");
    EXPECT_USAGE(BENCH(LLAMA, "--prefill", "abc"), "--prefill");
    EXPECT_USAGE(BENCH(LLAMA, "--reps", "0"), "--reps: '0'");
    EXPECT_USAGE(BENCH(LLAMA, "--reps", "101"), "--reps: '101'");
    EXPECT_USAGE(BENCH(LLAMA, "--new", "12x"), "--new: '12x' is not an integer");
    EXPECT_USAGE(BENCH(LLAMA, "--tp", "0"), "--tp: '0' is out of range (expected 1 to 64)");
    EXPECT_USAGE(BENCH(LLAMA, "--tp", "65"), "--tp: '65' is out of range (expected 1 to 64)");
    EXPECT_USAGE(BENCH(LLAMA, "--tp", "two"), "--tp");
    EXPECT_USAGE(BENCH(LLAMA, "--prompt", ""), "--prompt");
    /* values the fixture cannot run: its max_seq_len is 512 (max_position_embeddings) */
    EXPECT_USAGE(BENCH(LLAMA, "--prompt", "513", "--reps", "1"),
                 "--prompt 513: the model's max_seq_len is 512");
    EXPECT_USAGE(BENCH(LLAMA, "--prefill", "64,600"),
                 "--prefill: 600 tokens exceed the model's max_seq_len 512");
    EXPECT_USAGE(BENCH(LLAMA, "--new", "481"), "--new 481: --context 32 + 481 tokens exceed the "
                                               "model's max_seq_len 512 (use --new 480 or less, "
                                               "or a shorter --context)");
    EXPECT_USAGE(BENCH(LLAMA, "--context", "400"), "--new 128: --context 400 + 128 tokens exceed "
                                                   "the model's max_seq_len 512 (use --new 112 or "
                                                   "less");
    EXPECT_USAGE(BENCH(LLAMA, "--context", "512"), "--context 512: the model's max_seq_len is 512");
    EXPECT_USAGE(BENCH(LLAMA, "--context", "0"), "--context: '0' is out of range");
    EXPECT_USAGE(BENCH(LLAMA, "--batch", "1,300"),
                 "--batch: 300 sequences exceed the 256 the model runs per step");
}

static void test_refused(void **state)
{
    (void)state;
    run r = BENCH("/nonexistent/model");
    EXPECT_CODE(r, 1);
    assert_contains(r.err, "kiln bench: error: /nonexistent/model: not a folder");
    tu_run_free(&r);
    r = BENCH(BERT, "--batch", "1");
    EXPECT_CODE(r, 1);
    assert_contains(r.err, "is an embedding model: kiln bench measures generation");
    tu_run_free(&r);
    /* --json into a folder that does not exist: the figures are printed, then the error */
    r = BENCH(LLAMA, "--batch", "1", "--prompt", "4", "--prefill", "8", "--new", "2", "--reps",
              "1", "--json", "/nonexistent/bench.json");
    EXPECT_CODE(r, 1);
    assert_contains(r.out, "decode, batch 1");
    assert_contains(r.err, "kiln bench: error: --json /nonexistent/bench.json: cannot write");
    tu_run_free(&r);
}

/* The figure `name` of the JSON (kind and n), or fail. */
static json_t *figure(json_t *root, const char *kind, const char *key, int n)
{
    json_t *figs = json_object_get(root, "figures"), *f;
    size_t i;
    json_array_foreach(figs, i, f)
    {
        if (!strcmp(json_string_value(json_object_get(f, "figure")), kind) &&
            json_integer_value(json_object_get(f, key)) == n)
            return f;
    }
    fail_msg("no figure %s with %s %d in the JSON", kind, key, n);
    return NULL;
}

static void test_cpu_bench(void **state)
{
    (void)state;
    char *json = tu_path(D, "bench.json");
    run r = BENCH(LLAMA, "--batch", "1,3", "--prompt", "16", "--prefill", "64", "--new", "4",
                  "--reps", "2", "--json", json);
    EXPECT_CODE(r, 0);
    assert_contains(r.err, "running it on the CPU");
    assert_contains(r.out, "kiln bench: llama (" LLAMA ")");
    assert_contains(r.out, "  load ");
    assert_contains(r.out, "time to first token, 16 tokens");
    assert_contains(r.out, "\n  the first request after the load ");
    assert_contains(r.out, "prefill, 64 tokens");
    assert_contains(r.out, "decode, batch 1 (context 33-36)");
    assert_contains(r.out, "decode, batch 3 (context 33-36)");
    assert_contains(r.out, "no GPU roofline: " LLAMA " is a Hugging Face checkpoint");
    assert_contains(r.out, "each figure: the best of 2 timed runs after a warm-up run");
    assert_not_contains(r.out, "GEMM peak");
    assert_not_contains(r.out, "skipped");
    /* the table: its header, then the figures in order */
    const char *h = strstr(r.out, "figure "), *t = strstr(r.out, "time to first token"),
               *p = strstr(r.out, "prefill, 64"), *d = strstr(r.out, "decode, batch 3");
    assert_true(h && t && p && d && h < t && t < p && p < d);
    tu_run_free(&r);

    json_error_t je;
    json_t *root = json_load_file(json, 0, &je);
    assert_non_null(root);
    assert_string_equal(json_string_value(json_object_get(root, "backend")), "cpu");
    assert_string_equal(json_string_value(json_object_get(root, "model")), "llama");
    assert_null(json_object_get(root, "gpu"));
    assert_true(json_real_value(json_object_get(root, "load_s")) > 0);
    assert_int_equal(json_array_size(json_object_get(root, "figures")), 4);
    json_t *f = figure(root, "time_to_first_token", "tokens", 16);
    assert_true(json_real_value(json_object_get(f, "ms")) > 0);
    assert_true(json_real_value(json_object_get(f, "first_request_ms")) > 0);
    assert_null(json_object_get(f, "ratio"));
    f = figure(root, "prefill", "tokens", 64);
    double tps = json_real_value(json_object_get(f, "tok_s")),
           s = json_real_value(json_object_get(f, "seconds"));
    assert_true(tps > 0 && fabs(tps * s - 64) < 1e-6 * 64);
    for (int b = 1; b <= 3; b += 2) {
        f = figure(root, "decode", "batch", b);
        tps = json_real_value(json_object_get(f, "tok_s"));
        s = json_real_value(json_object_get(f, "seconds"));
        assert_true(tps > 0 && s > 0);
        /* tok/s is batch x --new over the timed seconds */
        assert_true(fabs(tps * s - b * 4) < 1e-6 * b * 4);
    }
    json_decref(root);
    free(json);
}

/* Defaults the model cannot run are skipped, each with its reason: the tiny checkpoint's
 * max_seq_len is 128, under both default prefill lengths. */
static void test_defaults_skipped(void **state)
{
    (void)state;
    char *model = tu_path(D, "tiny");
    tu_mkdir(model);
    tu_write_llama(model, NULL);
    run r = BENCH(model, "--batch", "1", "--prompt", "8", "--new", "2", "--reps", "1");
    EXPECT_CODE(r, 0);
    assert_contains(r.out, "prefill, 512 tokens                      skipped: longer than the "
                           "model's max_seq_len 128 (on the CPU it is the checkpoint's "
                           "max_position_embeddings, at most 2048)");
    assert_contains(r.out, "prefill, 2048 tokens                     skipped: longer than the "
                           "model's max_seq_len 128");
    assert_contains(r.out, "decode, batch 1 (context 33-34)");
    tu_run_free(&r);
    /* a default --new that does not fit skips the decodes; given, it is an error */
    r = BENCH(model, "--batch", "1", "--prompt", "8", "--prefill", "8", "--reps", "1");
    EXPECT_CODE(r, 0);
    assert_contains(r.out, "skipped: 32 prompt tokens + --new 128 exceed the model's max_seq_len "
                           "128");
    tu_run_free(&r);
    EXPECT_USAGE(BENCH(model, "--new", "97"), "--new 97: --context 32 + 97 tokens exceed");
    /* --context: each decode sequence's prompt */
    r = BENCH(model, "--batch", "2", "--prompt", "8", "--prefill", "8", "--new", "3", "--context",
              "100", "--reps", "1");
    EXPECT_CODE(r, 0);
    assert_contains(r.out, "decode, batch 2 (context 101-103)");
    assert_not_contains(r.out, "skipped");
    tu_run_free(&r);
    free(model);
}

/* ---- the output, on made-up hardware ---- */

/* kbench_print's text. */
static char *report_text(const kbench_run *r, const kbench_fig *figs, int nf)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    kbench_print(f, r, figs, nf);
    fclose(f);
    return text;
}

/* A GPU without cuBLASLt (gemm_flops 0, as kroof_measure leaves it where the library cannot be
 * loaded): the decode figure keeps its roofline; the time to first token, its first request and
 * the prefill are printed with "n/a" and written with null (no division by the missing peak, no
 * infinity, which jansson would drop); then the same figures with a peak get every ratio. */
static void test_report_no_gemm_peak(void **state)
{
    (void)state;
    kroof_hw hw;
    memset(&hw, 0, sizeof hw);
    snprintf(hw.gpu, sizeof hw.gpu, "Test GPU");
    hw.sm_major = 9;
    hw.copy_bw = 4e12;
    snprintf(hw.gemm_missing, sizeof hw.gemm_missing, "the bf16 GEMM peak needs cuBLASLt, and it "
                                                      "cannot be loaded");
    kroof_model rm = {.elsize = 2, .weight_bytes = 1 << 30, .matrix_params = 5e8,
                      .head_params = 1e7, .kv_bytes_per_token = 4096, .q_width = 4096};
    kbench_fig figs[] = {
        {.kind = KBENCH_TTFT, .n = 128, .seconds = 0.01, .first = 0.02, .value = 10},
        {.kind = KBENCH_PREFILL, .n = 512, .seconds = 0.05, .value = 512 / 0.05},
        {.kind = KBENCH_DECODE, .n = 1, .seconds = 0.5, .value = 4 / 0.5},
        {.kind = KBENCH_DECODE, .n = 64, .skip = "above the 8 sequences the model runs per step"},
    };
    const int nf = 4;
    kbench_rooflines(figs, nf, &rm, &hw, 256, 4, KBENCH_CONTEXT);
    assert_true(figs[0].roof == 0 && figs[1].roof == 0);
    assert_true(figs[2].roof > 0 && figs[2].ratio > 0 && isfinite(figs[2].ratio));
    /* the decode roofline: 4 steps, each reading the weights and the KV of 33, 34, 35, 36 tokens */
    double t = (4.0 * rm.weight_bytes + 4096.0 * (33 + 34 + 35 + 36)) / hw.copy_bw;
    assert_true(fabs(figs[2].roof - 4 / t) <= 1e-9 * figs[2].roof);
    /* --context 1000, batch 2: the KV of 1001..1004 tokens per sequence */
    kbench_fig lg = {.kind = KBENCH_DECODE, .n = 2, .seconds = 0.5, .value = 16};
    kbench_rooflines(&lg, 1, &rm, &hw, 256, 4, 1000);
    t = (4.0 * rm.weight_bytes + 4096.0 * 2 * (1001 + 1002 + 1003 + 1004)) / hw.copy_bw;
    assert_true(fabs(lg.roof - 8 / t) <= 1e-9 * lg.roof);
    assert_true(fabs(lg.ratio - t / 0.5) <= 1e-9 * lg.ratio);
    kbench_run br = {"out/test", "test", "gpu backend", 1, 3, 4, KBENCH_CONTEXT, 1.5, &hw, &rm};
    char *text = report_text(&br, figs, nf);
    char line[256];
    assert_contains(text, "  GEMM peak    not measured: cuBLASLt cannot be loaded");
    snprintf(line, sizeof line, "%-40s %16s %16s %7s\n", "time to first token, 128 tokens",
             "10.00 ms", "n/a", "n/a");
    assert_contains(text, line);
    snprintf(line, sizeof line, "%-40s %16s %16s %7s\n", "  the first request after the load",
             "20.00 ms", "n/a", "n/a");
    assert_contains(text, line);
    snprintf(line, sizeof line, "%-40s %16s %16s %7s\n", "prefill, 512 tokens", "10240.0 tok/s",
             "n/a", "n/a");
    assert_contains(text, line);
    char roof[32];
    snprintf(roof, sizeof roof, "%.1f tok/s", figs[2].roof);
    snprintf(line, sizeof line, "%-40s %16s %16s %7.2f\n", "decode, batch 1 (context 33-36)",
             "8.0 tok/s", roof, figs[2].ratio);
    assert_contains(text, line);
    assert_not_contains(text, " inf");
    assert_not_contains(text, " nan");
    free(text);

    char *json = tu_path(D, "report.json");
    kerr err;
    kerr_clear(&err);
    assert_int_equal(kbench_write_json(json, &br, figs, nf, &err), 0);
    json_error_t je;
    json_t *root = json_load_file(json, 0, &je);
    if (!root)
        fail_msg("%s: not valid JSON: %s (line %d)", json, je.text, je.line);
    json_t *gpu = json_object_get(root, "gpu");
    assert_true(json_is_null(json_object_get(gpu, "gemm_bf16_flops")));
    assert_string_equal(json_string_value(json_object_get(gpu, "gemm_not_measured")),
                        hw.gemm_missing);
    json_t *f = figure(root, "time_to_first_token", "tokens", 128);
    assert_true(json_real_value(json_object_get(f, "ms")) == 10);
    assert_true(json_is_null(json_object_get(f, "roofline_ms")));
    assert_true(json_is_null(json_object_get(f, "ratio")));
    assert_true(json_is_null(json_object_get(f, "first_request_ratio")));
    f = figure(root, "prefill", "tokens", 512);
    assert_true(json_real_value(json_object_get(f, "tok_s")) > 0);
    assert_true(json_is_null(json_object_get(f, "roofline_tok_s")));
    assert_true(json_is_null(json_object_get(f, "ratio")));
    f = figure(root, "decode", "batch", 1);
    assert_true(json_real_value(json_object_get(f, "ratio")) == figs[2].ratio);
    assert_true(json_real_value(json_object_get(f, "roofline_tok_s")) == figs[2].roof);
    json_decref(root);

    /* with a peak: every figure has its ratio, and nothing is n/a */
    hw.gemm_flops = 8e14;
    hw.gemm_sustained = 7.2e14;
    hw.gemm_sustained_runs = 292;
    hw.gemm_missing[0] = 0;
    kbench_rooflines(figs, nf, &rm, &hw, 256, 4, KBENCH_CONTEXT);
    assert_true(figs[0].roof > 0 && figs[0].ratio > 0 && figs[0].first_ratio > 0);
    assert_true(figs[1].roof > 0 && figs[1].ratio > 0);
    text = report_text(&br, figs, nf);
    assert_contains(text, "  GEMM peak    800.0 TFLOP/s");
    assert_contains(text, "(292 back to back: 720.0 TFLOP/s)");
    assert_not_contains(text, "n/a");
    free(text);
    assert_int_equal(kbench_write_json(json, &br, figs, nf, &err), 0);
    root = json_load_file(json, 0, &je);
    assert_non_null(root);
    gpu = json_object_get(root, "gpu");
    assert_true(json_real_value(json_object_get(gpu, "gemm_bf16_flops")) == 8e14);
    assert_true(json_real_value(json_object_get(gpu, "gemm_bf16_sustained_flops")) == 7.2e14);
    assert_int_equal(json_integer_value(json_object_get(gpu, "gemm_bf16_sustained_runs")), 292);
    assert_null(json_object_get(gpu, "gemm_not_measured"));
    f = figure(root, "time_to_first_token", "tokens", 128);
    assert_true(json_real_value(json_object_get(f, "first_request_ratio")) == figs[0].first_ratio);
    f = figure(root, "prefill", "tokens", 512);
    assert_true(json_real_value(json_object_get(f, "ratio")) == figs[1].ratio);
    json_decref(root);
    free(json);
}

/* ---- the cost model ---- */

static ka_file *compile_fixture(const char *fixture, const char *name, const char *tp)
{
    char *out = tu_path(D, name);
    /* one SM: the cost model does not depend on it, and NVRTC's time halves */
    run r = run_argv(KILNC, (const char *[]){"compile", fixture, "-o", out, "--sm", "80",
                                             tp ? "--tp" : NULL, tp, NULL});
    EXPECT_CODE(r, 0);
    tu_run_free(&r);
    char *mk = tu_path(out, "model.kiln");
    kerr err;
    kerr_clear(&err);
    ka_file *af = ka_read(mk, &err);
    if (!af)
        fail_msg("%s", kerr_msg(&err));
    free(mk);
    free(out);
    return af;
}

static void test_cost_model(void **state)
{
    (void)state;
    ka_file *af = compile_fixture(LLAMA, "llama", NULL);
    kroof_model rm;
    kroof_model_of(&af->m, &rm);
    /* hidden 96, vocab 512, q 6x24 = 144, kv 2x24 = 48, MLP 160, 2 layers, bf16 */
    const double embed = 512 * 96, head = 512 * 96;
    const double layer = (144 + 2 * 48) * 96 /* qkv */ + 96 * 144 /* o */ +
                         2 * 160 * 96 /* gate, up */ + 96 * 160 /* down */;
    const double norms = 2 * 2 * 96 + 96;
    assert_int_equal(rm.elsize, 2);
    assert_int_equal(rm.gather_bytes, (int64_t)embed * 2);
    assert_int_equal(rm.weight_bytes, (int64_t)(2 * layer + norms + head) * 2);
    assert_true(rm.matrix_params == 2 * layer);
    assert_true(rm.head_params == head);
    assert_int_equal(rm.kv_bytes_per_token, 2 /* layers */ * 2 /* K, V */ * 48 * 2);
    assert_int_equal(rm.q_width, 2 * 144);
    assert_int_equal(rm.q_width_assumed, 0);
    /* 3 tokens: 2 x 3 x matrices + 2 x head + 4 x q width x (1 + 2 + 3) pairs */
    assert_true(kroof_prefill_flops(&rm, 3) == 2 * 3 * 2 * layer + 2 * head + 4 * 288.0 * 6);
    assert_true(kroof_decode_bytes(&rm, 10) == rm.weight_bytes + 10.0 * 384);
    ka_file_free(af);

    /* tied: the embedding table is the LM head, read in full by the logits GEMV */
    af = compile_fixture(TIED, "tied", NULL);
    kroof_model_of(&af->m, &rm);
    assert_int_equal(rm.gather_bytes, 0);
    int64_t total = 0;
    for (int i = 0; i < af->m.nweights; i++)
        total += af->m.weights[i].nbytes;
    assert_int_equal(rm.weight_bytes, total);
    assert_true(rm.head_params == 64.0 * af->m.vocab);
    assert_int_equal(rm.q_width, 3 * 4 * 16);
    ka_file_free(af);

    /* --tp 2: one rank's program. Its weights are its halves (3 of 6 query heads, 1 of 2 KV
     * heads, 80 of 160 MLP rows, 256 of 512 vocabulary rows of the embedding and the LM head),
     * the norms whole; the vocabulary-split embedding is still a gather (embed_part) */
    af = compile_fixture(LLAMA, "llama-tp2", "2");
    assert_int_equal(af->m.tp, 2);
    kroof_model_of(&af->m, &rm);
    const double rlayer = (72 + 2 * 24) * 96 + 96 * 72 + 2 * 80 * 96 + 96 * 80;
    assert_int_equal(rm.gather_bytes, 256 * 96 * 2);
    assert_int_equal(rm.weight_bytes, (int64_t)(2 * rlayer + norms + 256 * 96) * 2);
    assert_true(rm.matrix_params == 2 * rlayer);
    assert_true(rm.head_params == 256 * 96);
    assert_int_equal(rm.kv_bytes_per_token, 2 * 2 * 24 * 2);
    assert_int_equal(rm.q_width, 2 * 72);
    ka_file_free(af);
    /* --tp of another N than the artifact's is refused before the GPU is measured */
    char *dir = tu_path(D, "llama-tp2");
    run r = BENCH(dir, "--tp", "4");
    EXPECT_CODE(r, 1);
    assert_contains(r.err, "--tp 4: ");
    assert_contains(r.err, "was compiled for --tp 2");
    assert_not_contains(r.err, "measuring the GPU");
    tu_run_free(&r);
    free(dir);
}

int main(void)
{
    KILNC = tu_binary("KILNC", "test_bench");
    KILN = tu_binary("KILN", "test_bench");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_help, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_options, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cpu_bench, setup, teardown),
        cmocka_unit_test_setup_teardown(test_defaults_skipped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_report_no_gemm_peak, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cost_model, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
