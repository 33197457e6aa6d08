/* test_overrides — kilnc's compile-time overrides (issue 18; compiler/overrides.c), run as
 * programs (the binaries named by $KILNC and $KILN).
 *
 * Equality: for each flag, `kilnc ref --dump` on a fixture with the flag gives the same bytes as
 * on a copy of the fixture edited on disk the same way (config.json rewritten; for --pooling and
 * --normalize, the archspec's g:pool call edited, since that is where the default lives), and
 * different bytes from the fixture as it is, so the flag is known to have done something.
 * Errors: each bad flag or value gives its message (the flag, the file, the field, expected vs
 * got). Records: `kilnc check` prints each override with its old and new value; `kilnc compile`
 * records them and generation_config.json's sampling defaults in the manifest, `kiln inspect`
 * shows them, and generation_config.json's bad values are refused naming the file and field.
 */
#include "testutil.h"

#include <fcntl.h>
#include <jansson.h>
#include <spawn.h>
#include <sys/wait.h>

#include "overrides.h"

extern char **environ;

#define FIX "tests/fixtures/"

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

/* A copy of fixture `name` in D/sub: its files linked, and config.json (and, when given,
 * generation_config.json) written as JSON after `edit` (NULL: unchanged). Returns the folder. */
static char *copy_fixture(const char *name, const char *sub, void (*edit)(json_t *root),
                          const char *gen_config)
{
    char *dir = tu_path(D, sub);
    tu_mkdir(dir);
    char src[256];
    static const char *files[] = {"model.safetensors", "generation_config.json"};
    for (size_t i = 0; i < ARRAY_LEN(files); i++) {
        snprintf(src, sizeof src, "%s/" FIX "%s/%s", getenv("PWD"), name, files[i]);
        char *dst = tu_path(dir, files[i]);
        if (util_is_file(src) && !(i == 1 && gen_config) && symlink(src, dst))
            tu_die("symlink", dst);
        free(dst);
    }
    if (gen_config)
        free(tu_write(dir, "generation_config.json", gen_config));
    snprintf(src, sizeof src, FIX "%s/config.json", name);
    json_error_t je;
    json_t *root = json_load_file(src, 0, &je);
    assert_non_null(root);
    if (edit)
        edit(root);
    char *text = json_dumps(root, JSON_INDENT(2));
    free(tu_write(dir, "config.json", text));
    free(text);
    json_decref(root);
    return dir;
}

/* `kilnc ref DIR --ids 1,2,3,4 --max-new 3 --dump FILE EXTRA...`: the dump's bytes. */
static char *ref_dump(const char *dir, const char *extra0, const char *extra1, const char *extra2,
                      size_t *len)
{
    char *dump = tu_path(D, "dump.safetensors");
    const char *args[] = {"ref", dir, "--ids", "1,2,3,4", "--max-new", "3", "--dump", dump,
                          extra0, extra1, extra2, NULL};
    run r = run_argv(KILNC, args);
    EXPECT_CODE(r, 0);
    tu_run_free(&r);
    char *data = tu_read(dump, len);
    unlink(dump);
    free(dump);
    return data;
}

/* The flag run equals the edited copy bit for bit, and differs from the plain fixture. */
static void expect_same(const char *plain, const char *edited, const char *f0, const char *f1,
                        const char *f2)
{
    static char *c; /* the plain fixture's dump, made once (every case uses the same one) */
    static size_t lc;
    size_t la, lb;
    if (!c)
        c = ref_dump(plain, NULL, NULL, NULL, &lc);
    char *a = ref_dump(plain, f0, f1, f2, &la);
    char *b = ref_dump(edited, NULL, NULL, NULL, &lb);
    assert_int_equal(la, lb);
    assert_memory_equal(a, b, la);
    assert_true(la != lc || memcmp(a, c, la) != 0);
    free(a);
    free(b);
}

static void set_factor4(json_t *r)
{
    json_object_set_new(json_object_get(r, "rope_parameters"), "factor", json_real(4.0));
}
static void set_eps(json_t *r) { json_object_set_new(r, "rms_norm_eps", json_real(1e-3)); }
static void add_rope_scaling(json_t *r)
{
    json_t *s = json_object();
    json_object_set_new(s, "rope_type", json_string("linear"));
    json_object_set_new(s, "factor", json_integer(2));
    json_object_set_new(r, "rope_scaling", s);
}

static void test_override_equals_edit(void **state)
{
    (void)state;
    const char *plain = FIX "llama";
    char *e1 = copy_fixture("llama", "factor", set_factor4, NULL);
    expect_same(plain, e1, "--override", "rope_parameters.factor=4", NULL);
    char *e2 = copy_fixture("llama", "eps", set_eps, NULL);
    expect_same(plain, e2, "--override=rms_norm_eps=1e-3", NULL, NULL);
    char *e3 = copy_fixture("llama", "scaling", add_rope_scaling, NULL);
    expect_same(plain, e3, "--override-new",
                "rope_scaling={\"rope_type\": \"linear\", \"factor\": 2}", NULL);
    /* --config: another file, edited, instead of the folder's config.json */
    char *cfg = tu_path(e1, "config.json");
    expect_same(plain, e1, "--config", cfg, NULL);
    free(cfg);
    free(e1);
    free(e2);
    free(e3);
}

static void test_pooling_equals_spec_edit(void **state)
{
    (void)state;
    /* the pooling's default is the archspec's g:pool call: the edited copy is a spec */
    size_t n;
    char *spec = tu_read("archspecs/bert.lua", &n);
    const char *old = "g:pool(x, { mode = \"mean\", normalize = true }, \"embedding\")";
    char *at = strstr(spec, old);
    assert_non_null(at);
    char *edited =
        xasprintf("%.*sg:pool(x, { mode = \"cls\", normalize = false }, \"embedding\")%s",
                  (int)(at - spec), spec, at + strlen(old));
    char *sp = tu_write(D, "bert_cls.lua", edited);
    size_t la, lb, lc;
    char *d1 = tu_path(D, "d1"), *d2 = tu_path(D, "d2"), *d3 = tu_path(D, "d3");
    const char *a1[] = {"ref", FIX "bert", "--ids", "2,5,7,9", "--dump", d1, "--pooling=cls",
                        "--normalize", "no", NULL};
    const char *a2[] = {"ref", FIX "bert", "--ids", "2,5,7,9", "--dump", d2, "--spec", sp, NULL};
    const char *a3[] = {"ref", FIX "bert", "--ids", "2,5,7,9", "--dump", d3, NULL};
    run r1 = run_argv(KILNC, a1), r2 = run_argv(KILNC, a2), r3 = run_argv(KILNC, a3);
    EXPECT_CODE(r1, 0);
    EXPECT_CODE(r2, 0);
    EXPECT_CODE(r3, 0);
    char *b1 = tu_read(d1, &la), *b2 = tu_read(d2, &lb), *b3 = tu_read(d3, &lc);
    assert_int_equal(la, lb);
    assert_memory_equal(b1, b2, la);
    assert_true(la != lc || memcmp(b1, b3, la) != 0);
    tu_run_free(&r1);
    tu_run_free(&r2);
    tu_run_free(&r3);
    free(b1);
    free(b2);
    free(b3);
    free(d1);
    free(d2);
    free(d3);
    free(sp);
    free(edited);
    free(spec);
}

/* kilnc ARGS... must exit with `code` and print `msg` (stderr). */
static void expect_error(int code, const char *msg, const char **args)
{
    run r = run_argv(KILNC, args);
    EXPECT_CODE(r, code);
    assert_contains(r.err, msg);
    tu_run_free(&r);
}

static void test_errors(void **state)
{
    (void)state;
    const char *L = FIX "llama";
#define ERR(code, msg, ...)                                                                     \
    do {                                                                                        \
        const char *a_[] = {__VA_ARGS__, NULL};                                                 \
        expect_error(code, msg, a_);                                                            \
    } while (0)
    ERR(1, "kilnc check: error: --override rms_norm_ep: " FIX "llama/config.json has no field "
           "'rms_norm_ep' (nearest: 'rms_norm_eps'); to add a new one, use --override-new "
           "rms_norm_ep=1",
        "check", L, "--override", "rms_norm_ep=1");
    /* the value is checked where the archspec reads it, and the message says it was overridden */
    ERR(1, FIX "llama/config.json (after --override): field 'num_hidden_layers' is 0; expected 1 "
           "to 10000",
        "check", L, "--override", "num_hidden_layers=0");
    ERR(1, "--config /nonexistent/c.json: no such file", "check", L, "--config",
        "/nonexistent/c.json");
    ERR(1, "--pooling: only embedding models pool, and ", "check", L, "--pooling", "cls");
    ERR(1, "--normalize: only embedding models pool", "ref", L, "--ids", "1", "--normalize", "no");
    /* usage errors: one line and the hint */
    ERR(2, "kilnc check: error: --override 'rms_norm_eps': expected KEY=VALUE", "check", L,
        "--override", "rms_norm_eps");
    ERR(2, "--pooling: 'max' is not a pooling (expected mean, cls or last)", "graph", L,
        "--pooling", "max");
    ERR(2, "--normalize: 'true' (expected yes or no)", "check", L, "--normalize", "true");
    ERR(2, "--generation-config: 'off' (expected none", "compile", L, "-o", "/tmp/x",
        "--generation-config", "off");
    ERR(2, "unknown option '--generation-config'", "check", L, "--generation-config", "none");
    ERR(2, "--config is given twice", "check", L, "--config", "a", "--config", "b");
    ERR(2, "--override needs a value", "check", L, "--override");
#undef ERR
}

/* ovr_apply on the llama fixture's config with one KEY=VALUE must fail with `msg`. */
static void apply_fails(const char *kv, int is_new, const char *msg)
{
    kerr err;
    kerr_clear(&err);
    config *c = config_load(FIX "llama/config.json", &err);
    assert_non_null(c);
    ovr_set o;
    ovr_init(&o);
    assert_int_equal(ovr_flag(&o, is_new ? "--override-new" : "--override", kv, &err), 1);
    char **lines = NULL;
    int n = 0;
    assert_int_equal(ovr_apply(c, &o, &lines, &n, &err), -1);
    assert_int_equal(n, 0);
    free(lines);
    assert_contains(kerr_msg(&err), msg);
    config_free(c);
}

static void test_apply_errors(void **state)
{
    (void)state;
    apply_fails("rms_norm_eps=\"x\"", 0,
                "--override rms_norm_eps: " FIX "llama/config.json: field 'rms_norm_eps' is a "
                "number (1e-5); the override gives a string (\"x\"): give a number, or null to "
                "remove the field");
    apply_fails("rope_parameters.rope_type=3", 0,
                "--override rope_parameters.rope_type: " FIX "llama/config.json: field "
                "'rope_parameters.rope_type' is a string (\"llama3\"); the override gives an "
                "integer (3)");
    apply_fails("tie_word_embeddings=0", 0, "field 'tie_word_embeddings' is a boolean (false)");
    apply_fails("hidden_act=gelu", 0,
                "--override hidden_act: value 'gelu' is not JSON (invalid token near 'gelu'); a "
                "string needs quotes: hidden_act='\"gelu\"'");
    apply_fails("hidden_size=8", 1,
                "--override-new hidden_size: " FIX "llama/config.json already has field "
                "'hidden_size'; use --override");
    apply_fails("hidden_size.x=1", 0,
                "--override hidden_size.x: " FIX "llama/config.json: field 'hidden_size' is an "
                "integer (96), not an object, so it has no field 'x'");
    apply_fails("rope_parameters..factor=1", 0,
                "--override rope_parameters..factor: empty or over-long key component");
    apply_fails("rope_parameters.factor.=1", 0, "empty or over-long key component");
    apply_fails("rope theta=1", 1, "--override-new: the key 'rope theta' has a space or a byte "
                                   "outside printable ASCII");
    apply_fails("r\xc3\xa9=1", 1, "a space or a byte outside printable ASCII");
}

/* Lines for the manifest: valid UTF-8 and at most OVR_MAX_LINE bytes, whatever they hold. */
static void test_lines_fit_the_manifest(void **state)
{
    (void)state;
    char **lines = NULL;
    int n = 0;
    ovr_add_line(&lines, &n, xstrdup("--config /m/d\xff/c.json"));
    char *big = xmalloc(OVR_MAX_LINE + 100);
    memset(big, 'a', OVR_MAX_LINE - 4);
    /* four 2-byte sequences from byte 4092: a cut at 4093 would split the first */
    strcpy(big + OVR_MAX_LINE - 4, "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9");
    ovr_add_line(&lines, &n, big);
    assert_int_equal(n, 2);
    assert_string_equal(lines[0], "--config /m/d?/c.json");
    assert_int_equal(strlen(lines[1]), OVR_MAX_LINE - 4 + 3); /* so it goes whole */
    assert_string_equal(lines[1] + OVR_MAX_LINE - 4, "...");
    for (int i = 0; i < n; i++) {
        json_t *s = json_string(lines[i]);
        assert_non_null(s); /* valid UTF-8 */
        json_decref(s);
        free(lines[i]);
    }
    free(lines);
}

static void test_check_prints_overrides(void **state)
{
    (void)state;
    const char *a[] = {"check", FIX "llama", "--override", "rope_parameters.factor=4",
                       "--override-new", "my_note=\"x\"", "--override", "pad_token_id=0", NULL};
    run r = run_argv(KILNC, a);
    EXPECT_CODE(r, 0);
    assert_contains(r.out, "override      --override rope_parameters.factor=4 (was 8.0)\n");
    assert_contains(r.out, "override      --override-new my_note=\"x\" (was absent)\n");
    assert_contains(r.out, "override      --override pad_token_id=0 (was null)\n");
    tu_run_free(&r);
    const char *b[] = {"check", FIX "bert", "--pooling", "last", "--normalize=no", NULL};
    r = run_argv(KILNC, b);
    EXPECT_CODE(r, 0);
    assert_contains(r.out, "override      --pooling last (was mean)\n");
    assert_contains(r.out, "override      --normalize no (was yes)\n");
    tu_run_free(&r);
}

/* compile (NVRTC for sm_80 only; no GPU), then `kiln inspect` */
static run compile_inspect(const char *model, const char *sub, const char *x0, const char *x1,
                           const char *x2, const char *x3)
{
    char *out = tu_path(D, sub);
    const char *a[] = {"compile", model, "-o", out, "--sm", "80", x0, x1, x2, x3, NULL};
    run r = run_argv(KILNC, a);
    if (r.code) {
        free(out);
        return r;
    }
    tu_run_free(&r);
    const char *b[] = {"inspect", out, NULL};
    r = run_argv(KILN, b);
    EXPECT_CODE(r, 0);
    free(out);
    return r;
}

static void test_compile_records(void **state)
{
    (void)state;
    char *m = copy_fixture("llama", "gen", NULL,
                           "{\"bos_token_id\": 1, \"eos_token_id\": [2, 7], \"do_sample\": true,\n"
                           " \"temperature\": 0.6, \"top_p\": 0.9, \"top_k\": 20,\n"
                           " \"max_new_tokens\": 100}\n");
    run r = compile_inspect(m, "art1", "--override", "rms_norm_eps=1e-6", NULL, NULL);
    EXPECT_CODE(r, 0);
    assert_contains(r.out, "eos          2, 7; bos 1\n");
    assert_contains(r.out, "sampling     temperature 0.6 top_p 0.9 top_k 20 max_new_tokens 100 "
                           "(generation_config.json; kiln run's flags win)\n");
    assert_contains(r.out, "overrides    --override rms_norm_eps=1e-6 (was 1e-5)\n");
    tu_run_free(&r);
    /* --generation-config none: no defaults, eos from config.json, the file not copied */
    r = compile_inspect(m, "art2", "--generation-config", "none", "--config",
                        FIX "llama/config.json");
    EXPECT_CODE(r, 0);
    assert_contains(r.out, "eos          2; bos 1\n");
    assert_contains(r.out, "sampling     no defaults (kiln run's own)\n");
    assert_contains(r.out, "overrides    --config " FIX "llama/config.json\n");
    assert_contains(r.out, "             --generation-config none (ignored ");
    tu_run_free(&r);
    char *copied = tu_path(D, "art1/generation_config.json");
    assert_true(util_is_file(copied));
    free(copied);
    copied = tu_path(D, "art2/generation_config.json");
    assert_false(util_is_file(copied));
    free(copied);
    free(m);
    /* a bad generation_config.json value stops the compile (the cases: test_generation_errors) */
    m = copy_fixture("llama", "badgen", NULL, "{\"temperature\": -0.5}");
    r = compile_inspect(m, "art3", NULL, NULL, NULL, NULL);
    EXPECT_CODE(r, 1);
    assert_contains(r.err, "kilnc compile: error: ");
    assert_contains(r.err, "badgen/generation_config.json: field 'temperature' is -0.5; expected a "
                           "number from 0 and at most 100");
    tu_run_free(&r);
    free(m);
}

/* generation_config.json's bad values (ovr_generation, as kilnc compile calls it before NVRTC):
 * the file and the field */
static void test_generation_errors(void **state)
{
    (void)state;
    static const struct {
        const char *json, *msg;
    } bad[] = {
        {"{\"temperature\": -0.5}", "generation_config.json: field 'temperature' is -0.5; expected "
                                     "a number from 0 and at most 100"},
        {"{\"temperature\": \"hot\"}", "generation_config.json: field 'temperature': expected a "
                                        "number, got a string"},
        {"{\"top_p\": 0}", "generation_config.json: field 'top_p' is 0; expected a number above 0 "
                            "and at most 1"},
        {"{\"top_p\": 1e-60}", "field 'top_p' is 1e-60; expected a number above 0"},
        {"{\"top_k\": -1}", "generation_config.json: field 'top_k' is -1; expected 0 to"},
        {"{\"max_new_tokens\": 1.5}", "field 'max_new_tokens': expected an integer"},
        {"{\"eos_token_id\": [2, 512]}", "generation_config.json: field 'eos_token_id' (an entry): "
                                        "512 is not a token id (expected an integer from 0 to 511"},
        {"{\"eos_token_id\": \"</s>\"}", "field 'eos_token_id': expected a token id or a list"},
        {"{\"bos_token_id\": -1}", "field 'bos_token_id' is -1; expected a token id from 0 to 511"},
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        char sub[16];
        snprintf(sub, sizeof sub, "bad%zu", i);
        char *b = copy_fixture("llama", sub, NULL, bad[i].json);
        kerr err;
        kerr_clear(&err);
        config *cfg = config_load(FIX "llama/config.json", &err);
        assert_non_null(cfg);
        ka_manifest m = {.vocab = 512};
        char **lines = NULL;
        int n = 0;
        assert_int_equal(ovr_generation(b, cfg, NULL, &m, &lines, &n, &err), -1);
        assert_contains(kerr_msg(&err), bad[i].msg);
        assert_int_equal(n, 0);
        free(m.eos);
        free(lines);
        config_free(cfg);
        free(b);
    }
}

static void test_help_documents_flags(void **state)
{
    (void)state;
    static const char *cmds[] = {"check", "graph", "ref", "compile"};
    for (size_t i = 0; i < ARRAY_LEN(cmds); i++) {
        const char *a[] = {cmds[i], "--help", NULL};
        run r = run_argv(KILNC, a);
        EXPECT_CODE(r, 0);
        assert_contains(r.out, "--config FILE");
        assert_contains(r.out, "--override KEY=VALUE");
        assert_contains(r.out, "--override-new KEY=VALUE");
        assert_contains(r.out, "--pooling mean|cls|last");
        assert_contains(r.out, "--normalize yes|no");
        if (i == 3)
            assert_contains(r.out, "--generation-config none");
        tu_run_free(&r);
    }
    const char *a[] = {"run", "--help", NULL};
    run r = run_argv(KILN, a);
    EXPECT_CODE(r, 0);
    assert_contains(r.out, "generation_config.json");
    tu_run_free(&r);
}

int main(void)
{
    KILNC = tu_binary("KILNC", "test_overrides");
    KILN = tu_binary("KILN", "test_overrides");
    /* the child sees only the built-in specs */
    unsetenv("KILN_SPEC_PATH");
    unsetenv("KILN_ARCHSPECS");
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_override_equals_edit), T(test_pooling_equals_spec_edit), T(test_errors),
        T(test_apply_errors), T(test_generation_errors), T(test_lines_fit_the_manifest),
        T(test_check_prints_overrides), T(test_compile_records), T(test_help_documents_flags),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
