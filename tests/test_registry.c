/* test_registry — which archspec serves which architecture (compiler/registry.c).
 *
 * Spec folders from --spec-path and KILN_SPEC_PATH shadow the built-in archspecs/, in order;
 * every built-in architecture resolves to its spec; an unknown architecture lists the known ones
 * and says how to add one; a spec that fails to load is remembered and mentioned. Hostile specs
 * in a folder (a loop, a memory bomb, os.execute, a FIFO) are bounded and reported by name and
 * line while the others load.
 */
#include "testutil.h"

#include "config.h"
#include "registry.h"
#include "spec.h"

static kerr E;
static char *D;

static int setup(void **state)
{
    (void)state;
    kerr_clear(&E);
    D = tu_tmpdir();
    unsetenv("KILN_SPEC_PATH");
    unsetenv("KILN_ARCHSPECS");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unsetenv("KILN_SPEC_PATH");
    unsetenv("KILN_ARCHSPECS");
    tu_rmrf(D);
    D = NULL;
    return 0;
}

/* A spec file `name`.lua in folder `dir` serving `archs` (a Lua list body). */
static void write_spec(const char *dir, const char *name, const char *archs)
{
    char *file = xasprintf("%s.lua", name);
    char *text = xasprintf("local kiln = require \"kiln\"\n"
                           "return kiln.archspec {\n"
                           "  name = \"%s\",\n"
                           "  architectures = { %s },\n"
                           "  task = \"generate\",\n"
                           "  build = function(g, cfg) end,\n"
                           "}\n",
                           name, archs);
    free(tu_write(dir, file, text));
    free(text);
    free(file);
}

static char *subdir(const char *name)
{
    char *p = tu_path(D, name);
    tu_mkdir(p);
    return p;
}

static config *cfg_arch(const char *arch)
{
    char *t = xasprintf("{\"architectures\": [\"%s\"]}", arch);
    kerr e;
    kerr_clear(&e);
    config *c = config_parse(t, "/models/m/config.json", &e);
    if (!c)
        fail_msg("%s", kerr_msg(&e));
    free(t);
    return c;
}

static const spec_info *resolve(const registry *r, const char *arch)
{
    config *c = cfg_arch(arch);
    kerr_clear(&E);
    const spec_info *s = registry_resolve(r, c, &E);
    config_free(c);
    return s;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* ---------------------------------------------------------------- built-in */

static void test_builtin_dir(void **state)
{
    (void)state;
    char *dir = registry_builtin_dir(&E);
    assert_non_null(dir);
    assert_true(ends_with(dir, "/archspecs"));
    char *k = tu_path(dir, "kiln.lua");
    assert_true(util_is_file(k));
    free(k);
    free(dir);
}

static void test_builtin_architectures(void **state)
{
    (void)state;
    registry *r = registry_load(NULL, 0, &E);
    assert_non_null(r);
    /* every built-in spec loads */
    for (int i = 0; i < r->nbroken; i++)
        print_error("broken built-in spec: %s\n", r->broken[i]);
    assert_int_equal(r->nbroken, 0);
    assert_true(r->n >= 1);
    /* each architecture resolves to the spec that declares it, from the built-in folder */
    int nresolved = 0;
    for (int i = 0; i < r->n; i++) {
        const spec_info *s = &r->specs[i];
        assert_true(strncmp(s->path, r->lib_dir, strlen(r->lib_dir)) == 0);
        for (int k = 0; k < s->n_archs; k++) {
            const spec_info *got = resolve(r, s->archs[k]);
            if (got != s)
                fail_msg("%s resolves to %s, expected %s (%s)", s->archs[k],
                         got ? got->path : kerr_msg(&E), s->path, s->archs[k]);
            assert_ptr_equal(registry_find(r, s->archs[k]), s);
            nresolved++;
        }
    }
    assert_true(nresolved >= 2);
    const spec_info *l = resolve(r, "LlamaForCausalLM");
    assert_non_null(l);
    assert_string_equal(l->name, "llama");
    assert_true(ends_with(l->path, "/archspecs/llama.lua"));
    assert_ptr_equal(resolve(r, "MistralForCausalLM"), l);
    assert_null(registry_find(r, "llamaforcausallm")); /* names are exact */
    registry_free(r);
}

static void test_unknown_architecture(void **state)
{
    (void)state;
    registry *r = registry_load(NULL, 0, &E);
    assert_non_null(r);
    assert_null(resolve(r, "GPT9ForCausalLM"));
    const char *m = kerr_msg(&E);
    assert_starts_with(m, "/models/m/config.json: architecture 'GPT9ForCausalLM' has no archspec");
    assert_contains(m, "known architectures: ");
    assert_contains(m, "LlamaForCausalLM");
    assert_contains(m, "MistralForCausalLM");
    char *readme = xasprintf("see %s/README.md", r->lib_dir);
    assert_contains(m, readme);
    free(readme);
    assert_contains(m, "--spec FILE");
    assert_contains(m, "--spec-path DIR");
    assert_contains(m, "KILN_SPEC_PATH");
    assert_not_contains(m, "note:"); /* nothing broken to mention */
    registry_free(r);
}

static void test_config_without_architectures(void **state)
{
    (void)state;
    registry *r = registry_load(NULL, 0, &E);
    kerr e;
    kerr_clear(&e);
    config *c = config_parse("{\"model_type\": \"llama\"}", "/m/config.json", &e);
    assert_null(registry_resolve(r, c, &E));
    assert_starts_with(kerr_msg(&E), "/m/config.json: field 'architectures' is missing");
    config_free(c);
    registry_free(r);
}

/* ---------------------------------------------------------------- spec folders */

static void test_spec_path_shadows_builtin(void **state)
{
    (void)state;
    char *dir = subdir("mine");
    write_spec(dir, "myllama", "\"LlamaForCausalLM\", \"ToyForCausalLM\"");
    char *dirs[1] = {dir};
    registry *r = registry_load(dirs, 1, &E);
    assert_non_null(r);
    assert_int_equal(r->nbroken, 0);
    const spec_info *s = resolve(r, "LlamaForCausalLM");
    assert_non_null(s);
    assert_string_equal(s->name, "myllama");
    char *want = tu_path(dir, "myllama.lua");
    assert_string_equal(s->path, want);
    free(want);
    assert_ptr_equal(resolve(r, "ToyForCausalLM"), s);
    /* what the user spec does not serve still comes from the built-in one */
    const spec_info *m = resolve(r, "MistralForCausalLM");
    assert_non_null(m);
    assert_string_equal(m->name, "llama");
    /* the shadowed built-in spec is still loaded (kilnc archs shows it as shadowed) */
    int builtin_llama = 0;
    for (int i = 0; i < r->n; i++)
        builtin_llama += strcmp(r->specs[i].name, "llama") == 0;
    assert_int_equal(builtin_llama, 1);
    assert_string_equal(r->specs[0].name, "myllama"); /* search order */
    registry_free(r);
    free(dir);
}

static void test_spec_path_order(void **state)
{
    (void)state;
    char *a = subdir("a"), *b = subdir("b");
    write_spec(a, "first", "\"FooForCausalLM\"");
    write_spec(b, "second", "\"FooForCausalLM\", \"BarForCausalLM\"");
    char *dirs[2] = {a, b};
    registry *r = registry_load(dirs, 2, &E);
    assert_string_equal(resolve(r, "FooForCausalLM")->name, "first");
    assert_string_equal(resolve(r, "BarForCausalLM")->name, "second");
    registry_free(r);
    char *rev[2] = {b, a};
    r = registry_load(rev, 2, &E);
    assert_string_equal(resolve(r, "FooForCausalLM")->name, "second");
    registry_free(r);
    free(a);
    free(b);
}

static void test_kiln_spec_path_env(void **state)
{
    (void)state;
    char *a = subdir("env_a"), *b = subdir("env_b"), *u = subdir("user");
    write_spec(a, "envfoo", "\"FooForCausalLM\", \"LlamaForCausalLM\"");
    write_spec(b, "envbar", "\"BarForCausalLM\", \"FooForCausalLM\"");
    write_spec(u, "userbar", "\"BarForCausalLM\"");
    char *env = xasprintf("%s::%s:", a, b); /* empty entries are skipped */
    setenv("KILN_SPEC_PATH", env, 1);
    registry *r = registry_load(NULL, 0, &E);
    assert_non_null(r);
    assert_int_equal(r->nbroken, 0);
    assert_string_equal(resolve(r, "FooForCausalLM")->name, "envfoo"); /* in order */
    assert_string_equal(resolve(r, "BarForCausalLM")->name, "envbar");
    assert_string_equal(resolve(r, "LlamaForCausalLM")->name, "envfoo"); /* shadows built-in */
    registry_free(r);
    /* --spec-path comes before KILN_SPEC_PATH */
    char *dirs[1] = {u};
    r = registry_load(dirs, 1, &E);
    assert_string_equal(resolve(r, "BarForCausalLM")->name, "userbar");
    assert_string_equal(resolve(r, "FooForCausalLM")->name, "envfoo");
    registry_free(r);
    free(env);
    free(a);
    free(b);
    free(u);
}

static void test_only_lua_files(void **state)
{
    (void)state;
    char *dir = subdir("misc");
    free(tu_write(dir, "README.md", "# not a spec"));
    free(tu_write(dir, "notes.lua.txt", "return 1"));
    free(tu_write(dir, ".lua", "return 1"));
    /* a kiln.lua in a user folder is not a spec (and not the DSL: that is the built-in one) */
    free(tu_write(dir, "kiln.lua", "error('must not be loaded')"));
    write_spec(dir, "only", "\"OnlyForCausalLM\"");
    char *dirs[1] = {dir};
    registry *r = registry_load(dirs, 1, &E);
    assert_int_equal(r->nbroken, 0);
    assert_non_null(resolve(r, "OnlyForCausalLM"));
    int from_dir = 0;
    for (int i = 0; i < r->n; i++)
        from_dir += strncmp(r->specs[i].path, dir, strlen(dir)) == 0;
    assert_int_equal(from_dir, 1);
    registry_free(r);
    free(dir);
}

static void test_broken_spec(void **state)
{
    (void)state;
    char *dir = subdir("broken");
    free(tu_write(dir, "a_broken.lua", "local kiln = require \"kiln\"\n"
                                       "return kiln.archspec {\n"
                                       "  name = \"gpt9\"\n"
                                       "  architectures = { \"GPT9ForCausalLM\" },\n"
                                       "}\n"));
    write_spec(dir, "b_good", "\"GoodForCausalLM\"");
    char *dirs[1] = {dir};
    registry *r = registry_load(dirs, 1, &E);
    assert_non_null(r);
    assert_int_equal(r->nbroken, 1);
    char *bad = tu_path(dir, "a_broken.lua");
    char *want = xasprintf("%s:4:", bad);
    assert_starts_with(r->broken[0], want);
    free(want);
    /* the other spec of that folder still loads */
    assert_non_null(resolve(r, "GoodForCausalLM"));
    /* an unresolved architecture mentions the broken spec, which may be the one meant */
    assert_null(resolve(r, "GPT9ForCausalLM"));
    const char *m = kerr_msg(&E);
    assert_contains(m, "architecture 'GPT9ForCausalLM' has no archspec");
    assert_contains(m, "GoodForCausalLM"); /* listed as known */
    assert_contains(m, "note: this spec failed to load and may be the one you meant");
    assert_contains(m, bad);
    assert_contains(m, "'}' expected");
    free(bad);
    registry_free(r);
    free(dir);
}

static void test_missing_spec_folder(void **state)
{
    (void)state;
    char *gone = tu_path(D, "no-such-folder");
    char *dirs[1] = {gone};
    registry *r = registry_load(dirs, 1, &E);
    assert_non_null(r); /* the built-in specs still work */
    assert_int_equal(r->nbroken, 1);
    char *want = xasprintf("%s: cannot open spec folder", gone);
    assert_string_equal(r->broken[0], want);
    free(want);
    assert_non_null(resolve(r, "LlamaForCausalLM"));
    assert_null(resolve(r, "FooForCausalLM"));
    assert_contains(kerr_msg(&E), "cannot open spec folder");
    registry_free(r);
    free(gone);
}

static void test_kiln_archspecs_env(void **state)
{
    (void)state;
    char *bad = subdir("nolib");
    setenv("KILN_ARCHSPECS", bad, 1);
    assert_null(registry_load(NULL, 0, &E));
    char *want = xasprintf("KILN_ARCHSPECS=%s: no kiln.lua in that folder", bad);
    assert_string_equal(kerr_msg(&E), want);
    free(want);
    /* a folder with kiln.lua replaces the built-in specs */
    char *lib = subdir("lib");
    char *src = xasprintf("%s/archspecs/kiln.lua", KILN_SOURCE_DIR);
    size_t n;
    char *kiln = tu_read(src, &n);
    char *dst = tu_path(lib, "kiln.lua");
    tu_write_bytes(dst, kiln, n);
    write_spec(lib, "solo", "\"SoloForCausalLM\"");
    setenv("KILN_ARCHSPECS", lib, 1);
    kerr_clear(&E);
    registry *r = registry_load(NULL, 0, &E);
    assert_non_null(r);
    assert_string_equal(r->lib_dir, lib);
    assert_int_equal(r->n, 1);
    assert_non_null(resolve(r, "SoloForCausalLM"));
    assert_null(resolve(r, "LlamaForCausalLM"));
    assert_contains(kerr_msg(&E), "known architectures: SoloForCausalLM\n");
    registry_free(r);
    free(dst);
    free(kiln);
    free(src);
    free(lib);
    free(bad);
}

/* Hostile specs in a spec folder (as in KILN_SPEC_PATH): each is bounded, reported with its
 * name and line, and the other specs, built-in ones included, still load. */
static void test_hostile_specs(void **state)
{
    (void)state;
    char *dir = subdir("hostile");
    char *mark = tu_path(dir, "PWNED");
    free(tu_write(dir, "a_loop.lua", "local kiln = require \"kiln\"\nwhile true do end\n"));
    free(tu_write(dir, "b_mem.lua", "local t = {}\nwhile true do t[#t + 1] = {} end\n"));
    char *exec = xasprintf("os.execute(\"touch %s\")\n", mark);
    free(tu_write(dir, "c_exec.lua", exec));
    char *fifo = tu_path(dir, "d_fifo.lua");
    assert_int_equal(mkfifo(fifo, 0600), 0);
    write_spec(dir, "e_good", "\"GoodForCausalLM\"");
    char *dirs[1] = {dir};
    double t0 = util_now();
    registry *r = registry_load(dirs, 1, &E);
    double t = util_now() - t0;
    assert_non_null(r);
    assert_true(t < 60);
    assert_int_equal(r->nbroken, 4);
    static const char *want[] = {
        "a_loop.lua:2: the archspec did not finish within 100 million Lua instructions",
        "b_mem.lua:2: the archspec holds more than 224 MiB of memory",
        "c_exec.lua:1: attempt to index a nil value (global 'os')",
        "d_fifo.lua: not a regular file",
    };
    for (int i = 0; i < 4; i++) {
        char *w = xasprintf("%s/%s", dir, want[i]);
        assert_starts_with(r->broken[i], w);
        free(w);
    }
    assert_false(util_is_file(mark));
    assert_non_null(resolve(r, "GoodForCausalLM"));
    assert_non_null(resolve(r, "LlamaForCausalLM"));
    registry_free(r);
    free(exec);
    free(fifo);
    free(mark);
    free(dir);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_builtin_dir),
        T(test_builtin_architectures),
        T(test_unknown_architecture),
        T(test_config_without_architectures),
        T(test_spec_path_shadows_builtin),
        T(test_spec_path_order),
        T(test_kiln_spec_path_env),
        T(test_only_lua_files),
        T(test_broken_spec),
        T(test_missing_spec_folder),
        T(test_kiln_archspecs_env),
        T(test_hostile_specs),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
