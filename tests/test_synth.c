/* test_synth — `kilnc synth`, run as a program (the binary named by $KILNC).
 *
 *   - tiny-llama and tiny-mixtral: written, `kilnc check` passes, `kilnc ref` gives finite logits
 *     that are not all equal;
 *   - the same seed gives byte-identical files with 1 and 2 threads; another seed differs (in the
 *     values, not in the header); --shard-mib 1 gives several shards and an index, holding the same
 *     tensors with the same bytes; --layers gives that many layers;
 *   - --list and --help; every bad option, a non-empty folder without --force, and a checkpoint
 *     that cannot fit on the disk are refused with their messages; --force replaces the model
 *     files of an earlier layout and keeps the others.
 */
#include "testutil.h"

static const char *KILNC;

static tu_run kilnc(const char *dir, const char *const *args)
{
    return tu_run_bin(dir, KILNC, args);
}

/* Runs kilnc with args; asserts the exit status; returns stdout + stderr for the caller to
 * inspect (heap). */
static char *expect(const char *dir, int code, const char *const *args)
{
    tu_run r = kilnc(dir, args);
    if (r.code != code)
        fail_msg("kilnc %s %s: exit %d, expected %d\nstdout: %s\nstderr: %s", args[0],
                 args[1] ? args[1] : "", r.code, code, r.out, r.err);
    char *s = xasprintf("%s%s", r.out, r.err);
    tu_run_free(&r);
    return s;
}

static int same_file(const char *a, const char *b)
{
    size_t la, lb;
    char *x = tu_read(a, &la), *y = tu_read(b, &lb);
    int same = la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return same;
}

/* synth SHAPE into d/name, check it, run ref with a dump and assert finite, varied logits. */
static void synth_check_ref(const char *d, const char *shape)
{
    char *m = tu_path(d, shape), *dump = xasprintf("%s.dump", m);
    free(expect(d, 0, (const char *[]){"synth", "--like", shape, "-o", m, NULL}));
    char *s = expect(d, 0, (const char *[]){"check", m, NULL});
    assert_contains(s, "\nok");
    assert_contains(s, "0 unused");
    free(s);
    free(expect(d, 0, (const char *[]){"ref", m, "--ids", "1,2,3,4", "--max-new", "2", "--dump", dump, NULL}));
    kerr err;
    kerr_clear(&err);
    st_set *st = st_open(dump, &err);
    if (!st)
        fail_msg("%s: %s", dump, kerr_msg(&err));
    const st_tensor *t = st_find(st, "logits");
    assert_non_null(t);
    assert_int_equal(t->dtype, ST_F32);
    assert_int_equal(t->shape[0], 4);
    assert_int_equal(t->shape[1], 1024);
    const float *x = t->data;
    float lo = INFINITY, hi = -INFINITY;
    for (uint64_t i = 0; i < t->numel; i++) {
        if (!isfinite(x[i]))
            fail_msg("%s: logit %llu is %g", shape, (unsigned long long)i, x[i]);
        lo = fminf(lo, x[i]);
        hi = fmaxf(hi, x[i]);
    }
    /* random weights of std 0.02 give logits of rms about 0.2 at this width: not all equal */
    assert_true(hi - lo > 0.1f);
    st_close(st);
    free(dump);
    free(m);
}

static void test_tiny_llama(void **state)
{
    (void)state;
    char *d = tu_tmpdir();
    synth_check_ref(d, "tiny-llama");
    tu_rmrf(d);
}

static void test_tiny_mixtral(void **state)
{
    (void)state;
    char *d = tu_tmpdir();
    synth_check_ref(d, "tiny-mixtral");
    char *cfg = tu_path(d, "tiny-mixtral/config.json");
    size_t n;
    char *text = tu_read(cfg, &n);
    assert_contains(text, "\"model_type\": \"mixtral\"");
    assert_contains(text, "\"torch_dtype\": \"bfloat16\"");
    free(text);
    free(cfg);
    tu_rmrf(d);
}

static void test_deterministic(void **state)
{
    (void)state;
    char *d = tu_tmpdir();
    char *a = tu_path(d, "a"), *b = tu_path(d, "b"), *c = tu_path(d, "c");
    free(expect(d, 0, (const char *[]){"synth", "--like", "tiny-mixtral", "-o", a, "--seed", "7",
                                       "--threads", "1", NULL}));
    free(expect(d, 0, (const char *[]){"synth", "--like", "tiny-mixtral", "-o", b, "--seed=7",
                                       "--threads=2", NULL}));
    free(expect(d, 0, (const char *[]){"synth", "--like", "tiny-mixtral", "-o", c, "--seed", "8",
                                       NULL}));
    static const char *files[] = {"config.json", "generation_config.json", "model.safetensors"};
    for (size_t i = 0; i < ARRAY_LEN(files); i++) {
        char *pa = tu_path(a, files[i]), *pb = tu_path(b, files[i]), *pc = tu_path(c, files[i]);
        if (!same_file(pa, pb))
            fail_msg("%s differs between 1 and 2 threads", files[i]);
        /* another seed: the same configs, other values */
        assert_int_equal(same_file(pa, pc), i < 2);
        free(pa), free(pb), free(pc);
    }
    /* every tensor differs with the seed, not only some */
    kerr err;
    kerr_clear(&err);
    st_set *sa = st_open(a, &err), *sc = st_open(c, &err);
    assert_non_null(sa);
    assert_non_null(sc);
    assert_int_equal(sa->n, sc->n);
    for (int i = 0; i < sa->n; i++) {
        assert_string_equal(sa->tensors[i].name, sc->tensors[i].name);
        if (memcmp(sa->tensors[i].data, sc->tensors[i].data, sa->tensors[i].nbytes) == 0)
            fail_msg("%s is the same with seeds 7 and 8", sa->tensors[i].name);
    }
    st_close(sa);
    st_close(sc);
    free(a), free(b), free(c);
    tu_rmrf(d);
}

/* --shard-mib 1: several files and an index, the same tensors with the same bytes */
static void test_shards_and_layers(void **state)
{
    (void)state;
    char *d = tu_tmpdir();
    char *one = tu_path(d, "one"), *many = tu_path(d, "many");
    free(expect(d, 0, (const char *[]){"synth", "--like", "tiny-llama", "-o", one, "--layers", "3", NULL}));
    free(expect(d, 0, (const char *[]){"synth", "--like", "tiny-llama", "-o", many, "--layers", "3",
                                       "--shard-mib", "1", NULL}));
    char *idx = tu_path(many, "model.safetensors.index.json"),
         *s2 = tu_path(many, "model-00002-of-00002.safetensors");
    assert_true(util_is_file(idx));
    assert_true(util_is_file(s2));
    kerr err;
    kerr_clear(&err);
    st_set *a = st_open(one, &err), *b = st_open(many, &err);
    if (!a || !b)
        fail_msg("%s", kerr_msg(&err));
    assert_int_equal(a->nfiles, 1);
    assert_int_equal(b->nfiles, 2);
    assert_int_equal(a->n, 3 + 3 * 9); /* embed, norm, lm_head and 3 layers of 9 */
    assert_int_equal(a->n, b->n);
    for (int i = 0; i < a->n; i++) {
        const st_tensor *tb = st_find(b, a->tensors[i].name);
        assert_non_null(tb);
        assert_int_equal(tb->nbytes, a->tensors[i].nbytes);
        assert_int_equal(tb->dtype, ST_BF16);
        assert_memory_equal(tb->data, a->tensors[i].data, tb->nbytes);
    }
    assert_non_null(st_find(a, "model.layers.2.mlp.down_proj.weight"));
    assert_null(st_find(a, "model.layers.3.mlp.down_proj.weight"));
    st_close(a);
    st_close(b);
    char *s = expect(d, 0, (const char *[]){"check", many, NULL});
    assert_contains(s, "in 2 files");
    free(s);
    free(idx), free(s2), free(one), free(many);
    tu_rmrf(d);
}

static void test_list_help(void **state)
{
    (void)state;
    char *d = tu_tmpdir();
    char *s = expect(d, 0, (const char *[]){"synth", "--list", NULL});
    assert_contains(s, "llama3-8b                   8.03B    16.1 GB");
    assert_contains(s, "llama3-70b                 70.55B");
    assert_contains(s, "qwen2.5-7b                  7.62B");
    assert_contains(s, "mixtral-8x7b-2layers");
    assert_contains(s, "llama3.2-1b                 1.50B"); /* untied: 1.24B + the LM head */
    assert_contains(s, "tiny-mixtral");
    free(s);
    s = expect(d, 0, (const char *[]){"synth", "--help", NULL});
    assert_contains(s, "usage: kilnc synth --like SHAPE -o DIR");
    free(s);
    s = expect(d, 0, (const char *[]){"--help", NULL});
    assert_contains(s, "synth");
    free(s);
    tu_rmrf(d);
}

static void test_bad_options(void **state)
{
    (void)state;
    char *d = tu_tmpdir();
    char *m = tu_path(d, "m");
    static const struct {
        const char *args[8];
        const char *msg;
    } cases[] = {
        {{"synth", "-o", "X", NULL}, "kilnc synth: error: missing --like SHAPE (one of: llama3-8b, "},
        {{"synth", "--like", "llama3-9b", "-o", "X", NULL},
         "--like: unknown shape 'llama3-9b' (expected one of: llama3-8b, llama3.2-1b"},
        {{"synth", "--like", "tiny-llama", NULL}, "missing -o DIR"},
        {{"synth", "--like", NULL}, "--like needs a value"},
        {{"synth", "--like", "tiny-llama", "-o", "X", "--threads", "0", NULL},
         "--threads: '0' is out of range"},
        {{"synth", "--like", "tiny-llama", "-o", "X", "--threads", "1025", NULL}, "--threads"},
        {{"synth", "--like", "tiny-llama", "-o", "X", "--layers", "0", NULL}, "--layers"},
        {{"synth", "--like", "tiny-llama", "-o", "X", "--layers", "10001", NULL}, "--layers"},
        {{"synth", "--like", "tiny-llama", "-o", "X", "--layers", "2x", NULL}, "--layers: '2x'"},
        {{"synth", "--like", "tiny-llama", "-o", "X", "--seed", "-1", NULL}, "--seed: '-1'"},
        {{"synth", "--like", "tiny-llama", "-o", "X", "--shard-mib", "0", NULL}, "--shard-mib"},
        {{"synth", "--like", "tiny-llama", "-o", "X", "--fast", NULL}, "unknown option '--fast'"},
        {{"synth", "--like", "tiny-llama", "X", NULL}, "unexpected argument 'X'"},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char *s = expect(d, 2, cases[i].args);
        assert_contains(s, cases[i].msg);
        assert_contains(s, "kilnc synth --help");
        free(s);
    }
    assert_false(util_is_dir("X"));

    /* a non-empty folder: refused, then written with --force */
    tu_mkdir(m);
    free(tu_write(m, "notes.txt", "mine"));
    char *s = expect(d, 1, (const char *[]){"synth", "--like", "tiny-llama", "-o", m, NULL});
    assert_contains(s, "kilnc synth: error: ");
    assert_contains(s, "the folder is not empty");
    assert_contains(s, "--force");
    free(s);
    free(expect(d, 0, (const char *[]){"synth", "--like", "tiny-llama", "-o", m, "--force",
                                       "--shard-mib", "1", NULL}));
    /* again in one file: the old shards and index go, other files stay */
    free(expect(d, 0, (const char *[]){"synth", "--like", "tiny-llama", "-o", m, "--force", NULL}));
    char *idx = tu_path(m, "model.safetensors.index.json"),
         *s1 = tu_path(m, "model-00001-of-00002.safetensors"), *notes = tu_path(m, "notes.txt");
    assert_false(util_is_file(idx));
    assert_false(util_is_file(s1));
    assert_true(util_is_file(notes));
    free(idx), free(s1), free(notes);
    s = expect(d, 0, (const char *[]){"check", m, NULL});
    assert_contains(s, "in 1 file:");
    free(s);

    /* 17 TB: refused before anything is written, and the new folder is not left behind */
    char *big = tu_path(d, "big");
    s = expect(d, 1, (const char *[]){"synth", "--like", "llama3-70b", "--layers", "10000", "-o", big, NULL});
    assert_contains(s, "not enough disk space: llama3-70b needs 17");
    assert_contains(s, "GB free");
    free(s);
    assert_false(util_is_dir(big));
    free(big);
    free(m);
    tu_rmrf(d);
}

int main(void)
{
    KILNC = tu_binary("KILNC", "test_synth");
    unsetenv("KILN_SPEC_PATH");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_llama),        cmocka_unit_test(test_tiny_mixtral),
        cmocka_unit_test(test_deterministic),     cmocka_unit_test(test_shards_and_layers),
        cmocka_unit_test(test_list_help),         cmocka_unit_test(test_bad_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
