/* test_run_cpu — `kiln run` on a Hugging Face checkpoint: the CPU backend (compiler/backend_ref.c)
 * under the scheduler, run as programs (the binaries named by $KILNC and $KILN).
 *
 * The oracle is `kilnc ref`, which runs the same interpreter without backend or scheduler: the
 * example model's greedy ids for "A fool and" equal its ids up to the first end-of-sequence token
 * (kiln run stops there, kilnc ref does not); on the Llama fixture (20 times cheaper, which keeps
 * the test fast under the sanitizers) several prompts in one run give each prompt's ids alone,
 * also when a tiny KV cache and batch force queueing and preemption (recomputation), and --dump's
 * prompt logits equal kilnc ref --dump's, prefilled whole or in chunks; the Phi-3 longrope
 * fixture's tokens equal HF's across the switch (a recomputation) and its chunked prefill the
 * one-forward logits; the dynamic NTK fixture's prompt (past max_position_embeddings) prefilled in
 * chunks gives HF's one-forward logits and tokens; a BERT fixture's embedding equals kilnc ref's. The CPU-only options are range-checked with messages naming the
 * option, the bound and where it comes from.
 */
#include "testutil.h"

#include <unistd.h>

#define TINY "examples/tinyfortune"
#define LLAMA "tests/fixtures/llama"
#define BERT "tests/fixtures/bert"
#define PHI3_LONGROPE "tests/fixtures/phi3_longrope"
#define LLAMA_DYNAMIC "tests/fixtures/llama_dynamic"
#define EOS_ID 0 /* tinyfortune's generation_config.json eos_token_id */

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

/* Runs bin with args (NULL-terminated), capturing stdout and stderr. */
static run run_argv(const char *bin, const char **args) { return tu_run_bin(D, bin, args); }
#define KILN_RUN(...) run_argv(KILN, (const char *[]){"run", __VA_ARGS__, NULL})
#define KILNC_REF(...) run_argv(KILNC, (const char *[]){"ref", __VA_ARGS__, NULL})

/* Line `i` (0-based) of s, without its newline, as a heap string ("" past the end). With a
 * "[k] " prefix (kiln run with several prompts) the prefix is dropped. */
static char *line_of(const char *s, int i)
{
    for (; i > 0 && s; i--)
        s = strchr(s, '\n') ? strchr(s, '\n') + 1 : NULL;
    if (!s)
        return xstrdup("");
    size_t n = strcspn(s, "\n");
    if (s[0] == '[' && strstr(s, "] ") && (size_t)(strstr(s, "] ") - s) < n) {
        n -= (size_t)(strstr(s, "] ") + 2 - s);
        s = strstr(s, "] ") + 2;
    }
    char *l = xmalloc(n + 1);
    memcpy(l, s, n);
    l[n] = 0;
    return l;
}

/* kilnc ref's greedy ids for --ids `ids`, --max-new n on the Llama fixture: the first line of
 * its output. */
static char *ref_ids(const char *ids, const char *n)
{
    run r = KILNC_REF(LLAMA, "--ids", ids, "--max-new", n);
    EXPECT_CODE(r, 0);
    char *l = line_of(r.out, 0);
    tu_run_free(&r);
    return l;
}

/* The ids up to and including the first end-of-sequence id. */
static void cut_at_eos(char *ids)
{
    char eos[16];
    snprintf(eos, sizeof eos, "%d", EOS_ID);
    for (char *p = ids; *p; p += strcspn(p, ","), p += *p == ',') {
        if (strncmp(p, eos, strlen(eos)) == 0 && (p[strlen(eos)] == ',' || !p[strlen(eos)])) {
            p[strlen(eos)] = 0;
            return;
        }
    }
}

static void test_greedy_equals_ref(void **state)
{
    (void)state;
    /* (kilnc ref to 12 tokens: the end-of-sequence token is the 9th; 12 keeps the test fast
     * under the sanitizers) */
    run ref = KILNC_REF(TINY, "--prompt", "A fool and", "--max-new", "12");
    EXPECT_CODE(ref, 0);
    char *want = line_of(ref.out, 0), *ref_text = line_of(ref.out, 1);
    run r = KILN_RUN(TINY, "--prompt", "A fool and", "--max-new", "24");
    EXPECT_CODE(r, 0);
    assert_contains(r.err, "is a Hugging Face checkpoint: running it on the CPU");
    assert_contains(r.err, "kiln run: load ");
    /* the greedy continuation has an end-of-sequence token within 12, where kiln run stops */
    size_t full = strlen(want);
    cut_at_eos(want);
    assert_true(strlen(want) < full);
    char *got = line_of(r.out, 0), *text = line_of(r.out, 1);
    assert_string_equal(got, want);
    /* the text line: the prompt and its continuation, as kilnc ref prints it (up to the eos) */
    assert_starts_with(text, "A fool and ");
    assert_starts_with(ref_text, text);
    tu_run_free(&r);
    tu_run_free(&ref);
    free(got);
    free(text);
    free(want);
    free(ref_text);
}

/* Prompts of different lengths: two cross a KV block (32 tokens) while generating, one is
 * longer than a block already. */
static const char *const prompts[] = {
    "1,467,288",
    "5,99,100,200,300,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39",
    "300",
    "7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39",
};
#define NEW "16"

/* The ids line of prompt i in a run of several ("[i] 1,2,3"; a text line follows each). */
static char *batch_ids(const char *out, int i)
{
    char tag[16];
    snprintf(tag, sizeof tag, "[%d] ", i);
    const char *p = out;
    for (int l = 0; p && *p; l++, p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (!strncmp(p, tag, strlen(tag)))
            return line_of(out, l);
    fail_msg("no line '%s' in\n%s", tag, out);
    return NULL;
}

/* kilnc ref's ids for each prompt (computed once). */
static char *alone[ARRAY_LEN(prompts)];

static void expect_batch(const char *const *extra)
{
    const char *args[40] = {"run", LLAMA};
    int n = 2;
    for (size_t i = 0; i < ARRAY_LEN(prompts); i++) {
        args[n++] = "--ids";
        args[n++] = prompts[i];
    }
    args[n++] = "--max-new";
    args[n++] = NEW;
    args[n++] = "--ignore-eos";
    for (int i = 0; extra && extra[i]; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    run r = run_argv(KILN, args);
    EXPECT_CODE(r, 0);
    for (size_t i = 0; i < ARRAY_LEN(prompts); i++) {
        if (!alone[i])
            alone[i] = ref_ids(prompts[i], NEW);
        char *got = batch_ids(r.out, (int)i);
        if (strcmp(got, alone[i]))
            fail_msg("prompt %zu: kiln run gave\n  %s\nalone (kilnc ref):\n  %s\n--- stderr\n%s",
                     i, got, alone[i], r.err);
        free(got);
    }
    if (extra)
        assert_contains(r.err, "preemption");
    tu_run_free(&r);
}

static void test_batch_equals_alone(void **state)
{
    (void)state;
    expect_batch(NULL);
    /* a prompt alone through kiln run too (the scheduler, one request) */
    run r = KILN_RUN(LLAMA, "--ids", prompts[1], "--max-new", NEW, "--ignore-eos");
    EXPECT_CODE(r, 0);
    char *got = line_of(r.out, 0);
    assert_string_equal(got, alone[1]);
    free(got);
    tu_run_free(&r);
}

static void test_queueing_and_preemption(void **state)
{
    (void)state;
    /* two sequences at a time, and 2 blocks of 32 tokens for sequences of up to 64: two running
     * sequences cannot both pass 32 tokens, so the newer is preempted and recomputed later */
    const char *extra[] = {"--max-batch", "2",  "--kv-blocks", "2", "--max-seq-len", "64",
                           "--max-tokens", "16", NULL};
    expect_batch(extra);
}

/* Max |a - b| over the float tensor `name` of two safetensors files, which must have the same
 * shape; the I64 tensor "tokens" too must be equal when both have it. */
static double dump_diff(const char *a, const char *b, const char *name)
{
    kerr e;
    kerr_clear(&e);
    st_set *sa = st_open(a, &e), *sb = st_open(b, &e);
    if (!sa || !sb)
        fail_msg("%s", kerr_msg(&e));
    const st_tensor *ta = st_find(sa, name), *tb = st_find(sb, name);
    assert_non_null(ta);
    assert_non_null(tb);
    assert_int_equal(ta->dtype, ST_F32);
    assert_int_equal(tb->dtype, ST_F32);
    assert_int_equal(ta->ndim, tb->ndim);
    for (int i = 0; i < ta->ndim; i++)
        assert_int_equal(ta->shape[i], tb->shape[i]);
    double m = 0;
    for (uint64_t i = 0; i < ta->numel; i++) {
        double d = fabs((double)((const float *)ta->data)[i] - ((const float *)tb->data)[i]);
        if (!(d <= m)) /* NaN too */
            m = d;
    }
    const st_tensor *ka = st_find(sa, "tokens"), *kb = st_find(sb, "tokens");
    if (ka && kb) {
        assert_int_equal(ka->numel, kb->numel);
        assert_memory_equal(ka->data, kb->data, ka->nbytes);
    }
    st_close(sa);
    st_close(sb);
    return m;
}

static void test_dump_equals_ref(void **state)
{
    (void)state;
    char *a = tu_path(D, "run.st"), *b = tu_path(D, "ref.st");
    run r = KILN_RUN(LLAMA, "--ids", prompts[3], "--max-new", "4", "--ignore-eos", "--dump", a);
    EXPECT_CODE(r, 0);
    tu_run_free(&r);
    r = KILNC_REF(LLAMA, "--ids", prompts[3], "--max-new", "4", "--dump", b);
    EXPECT_CODE(r, 0);
    tu_run_free(&r);
    double d = dump_diff(a, b, "logits");
    if (d > 1e-5)
        fail_msg("kiln run --dump logits differ from kilnc ref's by %g (at most 1e-5)", d);
    /* a prompt prefilled in chunks (--max-tokens 8: five chunks) gives the same logits */
    r = KILN_RUN(LLAMA, "--ids", prompts[3], "--max-new", "4", "--ignore-eos", "--dump", a,
                 "--max-tokens", "8");
    EXPECT_CODE(r, 0);
    tu_run_free(&r);
    d = dump_diff(a, b, "logits");
    if (d > 1e-5)
        fail_msg("chunked prefill: logits differ from kilnc ref's by %g (at most 1e-5)", d);
    free(a);
    free(b);
}

/* The ids of an I64 tensor of fixture dir's expected.safetensors, comma separated. */
static char *fixture_ids(const char *dir, const char *name)
{
    kerr e;
    kerr_clear(&e);
    char *path = tu_path(dir, "expected.safetensors");
    st_set *ex = st_open(path, &e);
    free(path);
    if (!ex)
        fail_msg("%s", kerr_msg(&e));
    const st_tensor *t = st_find(ex, name);
    assert_non_null(t);
    assert_int_equal(t->dtype, ST_I64);
    assert_true(t->numel >= 1 && t->numel <= 64);
    char *s = xmalloc(t->numel * 24);
    size_t n = 0;
    for (uint64_t i = 0; i < t->numel; i++)
        n += (size_t)sprintf(s + n, i ? ",%lld" : "%lld", (long long)((const int64_t *)t->data)[i]);
    st_close(ex);
    return s;
}

/* Longrope (original_max_position_embeddings 12) as transformers means it: a 6-token prompt whose
 * generation passes 12 tokens is recomputed with the long factors at that step, so kiln run and
 * kilnc ref give HF's cross_tokens, alone and in a batch with a prompt already past the switch;
 * the 16-token prompt prefilled in chunks of 8 (the first ends before the switch) gives the
 * logits of one forward. */
static void test_longrope_switch(void **state)
{
    (void)state;
    char *pre = fixture_ids(PHI3_LONGROPE, "cross_ids");
    char *want = fixture_ids(PHI3_LONGROPE, "cross_tokens");
    char *full = fixture_ids(PHI3_LONGROPE, "input_ids");
    run r = KILNC_REF(PHI3_LONGROPE, "--ids", pre, "--max-new", "16");
    EXPECT_CODE(r, 0);
    char *got = line_of(r.out, 0);
    assert_string_equal(got, want);
    free(got);
    tu_run_free(&r);
    r = KILN_RUN(PHI3_LONGROPE, "--ids", pre, "--max-new", "16", "--ignore-eos");
    EXPECT_CODE(r, 0);
    got = line_of(r.out, 0);
    assert_string_equal(got, want);
    free(got);
    tu_run_free(&r);
    r = KILN_RUN(PHI3_LONGROPE, "--ids", full, "--ids", pre, "--max-new", "16", "--ignore-eos",
                 "--max-tokens", "8", "--max-batch", "2");
    EXPECT_CODE(r, 0);
    got = batch_ids(r.out, 1);
    assert_string_equal(got, want);
    free(got);
    tu_run_free(&r);

    char *a = tu_path(D, "run.st"), *b = tu_path(D, "ref.st");
    r = KILN_RUN(PHI3_LONGROPE, "--ids", full, "--max-new", "2", "--ignore-eos", "--dump", a,
                 "--max-tokens", "8");
    EXPECT_CODE(r, 0);
    tu_run_free(&r);
    r = KILNC_REF(PHI3_LONGROPE, "--ids", full, "--max-new", "2", "--dump", b);
    EXPECT_CODE(r, 0);
    tu_run_free(&r);
    double d = dump_diff(a, b, "logits");
    if (d > 1e-5)
        fail_msg("longrope, prefill in chunks of 8: logits differ from one forward's by %g", d);
    free(a);
    free(b);
    free(pre);
    free(want);
    free(full);
}

/* Dynamic NTK (max_position_embeddings 8, factor 4) as transformers computes it: the 14-token
 * prompt's base comes from its whole length in every chunk (rope_len), so kiln run with chunks of
 * 8 and 6 gives HF's one-forward logits (within 1e-4; |logits| reach 9) and HF generate()'s 16
 * tokens (each decode step's base from its position + 1), as one chunk and kilnc ref do. */
static void test_dynamic_ntk_chunks(void **state)
{
    (void)state;
    char *full = fixture_ids(LLAMA_DYNAMIC, "input_ids");
    char *want = fixture_ids(LLAMA_DYNAMIC, "tokens");
    char *hf = tu_path(LLAMA_DYNAMIC, "expected.safetensors");
    run r = KILNC_REF(LLAMA_DYNAMIC, "--ids", full, "--max-new", "16");
    EXPECT_CODE(r, 0);
    char *got = line_of(r.out, 0);
    assert_string_equal(got, want);
    free(got);
    tu_run_free(&r);
    char *a = tu_path(D, "run.st");
    const char *chunks[] = {"8", "256"}; /* 8 + 6 tokens; the prompt whole */
    for (int i = 0; i < 2; i++) {
        r = KILN_RUN(LLAMA_DYNAMIC, "--ids", full, "--max-new", "16", "--ignore-eos", "--dump", a,
                     "--max-tokens", chunks[i]);
        EXPECT_CODE(r, 0);
        got = line_of(r.out, 0);
        assert_string_equal(got, want);
        free(got);
        tu_run_free(&r);
        double d = dump_diff(a, hf, "logits"); /* and the dump's tokens equal HF's */
        if (!(d < 1e-4))
            fail_msg("dynamic NTK, --max-tokens %s: prompt logits differ from HF's one forward "
                     "by %g (at most 1e-4)",
                     chunks[i], d);
    }
    free(a);
    free(hf);
    free(want);
    free(full);
}

static void test_bert_embedding_equals_ref(void **state)
{
    (void)state;
    char *a = tu_path(D, "run.st"), *b = tu_path(D, "ref.st");
    const char *ids[] = {"2,45,7,300,9", "101,7,999"}, *types = "0,0,1,1,1";
    run r = KILN_RUN(BERT, "--ids", ids[0], "--token-types", types, "--ids", ids[1], "--dump", a);
    EXPECT_CODE(r, 0);
    assert_contains(r.out, "embedding[0] [64]:");
    assert_contains(r.out, "embedding[1] [64]:");
    tu_run_free(&r);
    r = KILNC_REF(BERT, "--ids", ids[0], "--token-types", types, "--dump", b);
    EXPECT_CODE(r, 0);
    tu_run_free(&r);
    double d = dump_diff(a, b, "embedding");
    if (d > 1e-6)
        fail_msg("kiln run's embedding differs from kilnc ref's by %g (at most 1e-6)", d);
    /* the second prompt is the file's "embedding.1" */
    r = KILNC_REF(BERT, "--ids", ids[1], "--dump", b);
    EXPECT_CODE(r, 0);
    tu_run_free(&r);
    kerr e;
    kerr_clear(&e);
    st_set *sa = st_open(a, &e), *sb = st_open(b, &e);
    assert_non_null(sa);
    assert_non_null(sb);
    const st_tensor *ta = st_find(sa, "embedding.1"), *tb = st_find(sb, "embedding");
    assert_non_null(ta);
    assert_non_null(tb);
    assert_int_equal(ta->numel, 64);
    assert_int_equal(tb->numel, 64);
    for (int i = 0; i < 64; i++)
        assert_float_equal(((const float *)ta->data)[i], ((const float *)tb->data)[i], 1e-6);
    st_close(sa);
    st_close(sb);
    free(a);
    free(b);
}

static void test_cpu_option_errors(void **state)
{
    (void)state;
    static const struct {
        const char *flag, *value, *want[3];
    } cases[] = {
        {"--max-seq-len", "513", {"--max-seq-len 513", "1 to 512", "max_position_embeddings"}},
        {"--max-batch", "257", {"--max-batch 257", "1 to 256"}},
        {"--max-tokens", "4", {"--max-tokens 4", "8 to", "at least --max-batch"}},
        {"--kv-blocks", "1", {"--kv-blocks 1", "16 to 128", "--max-seq-len 512"}},
        {"--kv-blocks", "0", {"--kv-blocks: '0'", "1 to"}},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        run r = KILN_RUN(LLAMA, "--ids", "1", cases[i].flag, cases[i].value);
        EXPECT_CODE(r, cases[i].value[0] == '0' ? 2 : 1);
        for (int k = 0; k < 3 && cases[i].want[k]; k++)
            assert_contains(r.err, cases[i].want[k]);
        tu_run_free(&r);
    }
    /* a cache of more positions than an int counts (2^26 blocks of 32): refused, not run by a
     * scheduler whose free room overflowed (it could run nothing: "nothing it can run") */
    char *big = tu_path(D, "bigpos");
    tu_mkdir(big);
    const char *def = tu_llama_config(), *at = strstr(def, "128,");
    assert_non_null(at); /* max_position_embeddings, made 9000000 (past 8388608) */
    char *cfg = xasprintf("%.*s9000000%s", (int)(at - def), def, at + 3);
    tu_write_llama(big, &(tu_llama){.config = cfg});
    run r = KILN_RUN(big, "--ids", "1", "--max-new", "1", "--max-batch", "256", "--max-seq-len",
                     "8388608", "--kv-blocks", "67108864");
    EXPECT_CODE(r, 1);
    assert_contains(r.err, "--kv-blocks 67108864");
    assert_contains(r.err, "at most 67108863 blocks in all");
    tu_run_free(&r);
    free(cfg);
    free(big);
    /* the GPU's options on a checkpoint */
    r = KILN_RUN(LLAMA, "--ids", "1", "--kv-memory", "0.5");
    EXPECT_CODE(r, 1);
    assert_contains(r.err, "--kv-memory applies to a compiled model only");
    tu_run_free(&r);
    /* a prompt past the CPU's --max-seq-len: the CLI's message, with the option to change */
    r = KILN_RUN(TINY, "--ids", "1,2,3", "--max-seq-len", "8", "--max-new", "6");
    EXPECT_CODE(r, 2);
    assert_contains(r.err, "3 + 6 exceeds the model's max_seq_len 8");
    assert_contains(r.err, "give a larger --max-seq-len");
    tu_run_free(&r);
    /* help documents them */
    r = KILN_RUN("--help");
    EXPECT_CODE(r, 0);
    assert_contains(r.out, "--max-batch N");
    assert_contains(r.out, "--kv-blocks N");
    assert_contains(r.out, "checkpoint folder only");
    tu_run_free(&r);
}

int main(void)
{
    KILNC = tu_binary("KILNC", "test_run_cpu");
    KILN = tu_binary("KILN", "test_run_cpu");
    unsetenv("KILN_SPEC_PATH");
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_greedy_equals_ref),       T(test_batch_equals_alone),
        T(test_queueing_and_preemption), T(test_dump_equals_ref),
        T(test_longrope_switch),         T(test_dynamic_ntk_chunks),
        T(test_bert_embedding_equals_ref),
        T(test_cpu_option_errors),
    };
#undef T
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    for (size_t i = 0; i < ARRAY_LEN(alone); i++)
        free(alone[i]);
    return rc;
}
