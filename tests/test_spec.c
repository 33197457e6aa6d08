/* test_spec — archspecs run through the Lua bindings (compiler/spec.c).
 *
 * Small specs written to a temp folder (they `require "kiln"` from the repository's archspecs/)
 * check spec_probe's declarations, spec_build, and that every kind of spec error carries the spec
 * file:line that caused it: Lua syntax and runtime errors, a failing op, a missing config field
 * ("needed by spec:line"), bad declarations, a build without output. Then the real
 * archspecs/llama.lua is built from configs written here (no checkpoint: weights NULL) in both
 * config styles, and the graph is checked node by node where it matters (attention and rope).
 * Last, the sandbox: endless loops (also behind pcall), memory bombs, the libraries a spec must
 * not reach, require, backtracking patterns, enormous or empty messages, FIFOs and huge files,
 * cfg:int's ranges (field, file and spec line), and the graph's node cap. Last, option tables:
 * an unknown key of every op's table, of kiln.options and of the archspec table (both through
 * kiln.archspec and raw) names the op, the spec line and the nearest key; values of the wrong
 * type or range are refused with what was given and what is expected; every shipped spec loads.
 */
#include "testutil.h"

#include <dirent.h>

#include "config.h"
#include "graph.h"
#include "spec.h"

#define LIB KILN_SOURCE_DIR "/archspecs"
#define LLAMA LIB "/llama.lua"

static kerr E;
static char *D;

static int setup(void **state)
{
    (void)state;
    kerr_clear(&E);
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

/* The 1-based line of `text` holding `needle` (the first one). */
static int line_of(const char *text, const char *needle)
{
    const char *p = strstr(text, needle);
    if (!p)
        fail_msg("'%s' not in the spec text", needle);
    int line = 1;
    for (const char *q = text; q < p; q++)
        line += *q == '\n';
    return line;
}

/* "path:line" for messages (static buffer). */
static const char *at(const char *path, int line)
{
    static char buf[2][512];
    static int k;
    k ^= 1;
    snprintf(buf[k], sizeof buf[k], "%s:%d", path, line);
    return buf[k];
}

static config *cfg_of(const char *text)
{
    char *p = tu_write(D, "config.json", text);
    kerr e;
    kerr_clear(&e);
    config *c = config_load(p, &e);
    if (!c)
        fail_msg("%s", kerr_msg(&e));
    free(p);
    return c;
}

static const char TOY_CONFIG[] = "{\"hidden_size\": 8, \"vocab_size\": 16}";

/* A spec with the usual head and this build body. */
static char *toy_spec(const char *body)
{
    return xasprintf("local kiln = require \"kiln\"\n"
                     "return kiln.archspec {\n"
                     "  name = \"toy\",\n"
                     "  architectures = { \"ToyForCausalLM\", \"ToyModel\" },\n"
                     "  task = \"generate\",\n"
                     "  ignore = { \"%%.rotary_emb%%.inv_freq$\", \"^extra%%.\" },\n"
                     "  build = function(g, cfg)\n"
                     "%s"
                     "  end,\n"
                     "}\n",
                     body);
}

static const char GOOD_BODY[] =
    "    local H, V = cfg:int(\"hidden_size\"), cfg:int(\"vocab_size\")\n"
    "    local ids = g:input(\"ids\")\n"
    "    local emb = g:weight(\"embed\", { V, H })\n"
    "    local x = g:embed(emb, ids, \"embed\")\n"
    "    g:layer(0)\n"
    "    local h = g:rms_norm(x, g:weight(\"norm\", { H }), cfg:float(\"eps\", 1e-5), \"norm\")\n"
    "    g:layer(nil)\n"
    "    return g:logits(h, emb, \"logits\")\n";

/* Probes and builds `spec_text` with `config_text`; returns the graph or NULL (message in E). */
static kgraph *build(const char *spec_text, const char *config_text, char **path_out)
{
    char *path = tu_write(D, "toy.lua", spec_text);
    if (path_out)
        *path_out = path;
    spec_info s;
    kerr_clear(&E);
    if (spec_probe(path, LIB, &s, &E))
        fail_msg("spec_probe: %s", kerr_msg(&E));
    config *c = cfg_of(config_text);
    kgraph *g = spec_build(&s, LIB, c, NULL, &E);
    config_free(c);
    spec_info_free(&s);
    if (!path_out)
        free(path);
    return g;
}

/* spec_build must fail; returns the message (in E). */
static const char *build_fails(const char *body, const char *config_text, char **spec_text,
                               char **path)
{
    *spec_text = toy_spec(body);
    kgraph *g = build(*spec_text, config_text, path);
    if (g) {
        graph_free(g);
        fail_msg("spec_build succeeded; expected an error");
    }
    return kerr_msg(&E);
}

/* spec_probe of this text must fail; returns the message (in E). */
static const char *probe_fails(const char *text, char **path)
{
    *path = tu_write(D, "bad.lua", text);
    spec_info s;
    kerr_clear(&E);
    if (spec_probe(*path, LIB, &s, &E) == 0) {
        spec_info_free(&s);
        fail_msg("spec_probe accepted:\n%s", text);
    }
    assert_null(s.path); /* nothing is left half-filled */
    assert_null(s.name);
    assert_int_equal(s.n_archs, 0);
    return kerr_msg(&E);
}

/* ---------------------------------------------------------------- good specs */

static void test_probe_good(void **state)
{
    (void)state;
    char *text = toy_spec(GOOD_BODY);
    char *path = tu_write(D, "toy.lua", text);
    spec_info s;
    assert_int_equal(spec_probe(path, LIB, &s, &E), 0);
    assert_string_equal(s.path, path);
    assert_string_equal(s.name, "toy");
    assert_int_equal(s.n_archs, 2);
    assert_string_equal(s.archs[0], "ToyForCausalLM");
    assert_string_equal(s.archs[1], "ToyModel");
    assert_int_equal(s.task, TASK_GENERATE);
    assert_int_equal(s.n_ignore, 2);
    assert_string_equal(s.ignore[0], "%.rotary_emb%.inv_freq$");
    spec_info_free(&s);
    assert_null(s.name);
    assert_string_equal(spec_task_name(TASK_EMBED), "embed");
    assert_string_equal(spec_task_name(TASK_CLASSIFY), "classify");
    assert_string_equal(spec_task_name(TASK_N), "?");
    free(path);
    free(text);
}

static void test_build_good(void **state)
{
    (void)state;
    char *text = toy_spec(GOOD_BODY), *path;
    kgraph *g = build(text, TOY_CONFIG, &path);
    assert_non_null(g);
    assert_string_equal(kerr_msg(&E), "");
    assert_int_equal(graph_verify(g, &E), 0);
    /* ids, embed weight, embed, norm weight, norm, logits */
    assert_int_equal(g->n, 6);
    assert_int_equal(g->nodes[g->output].op, KG_LOGITS);
    char sh[64];
    assert_string_equal(graph_shape_str(&g->nodes[g->output], sh, sizeof sh), "[T, 16]");
    const kg_node *norm = &g->nodes[4];
    assert_int_equal(norm->op, KG_RMS_NORM);
    assert_string_equal(norm->name, "L0.norm");
    assert_true(norm->eps == 1e-5);
    /* every node carries the spec line that made it */
    assert_string_equal(norm->spec_file, path);
    assert_int_equal(norm->spec_line, line_of(text, "g:rms_norm"));
    assert_int_equal(g->nodes[g->output].spec_line, line_of(text, "g:logits"));
    assert_string_equal(g->nodes[g->output].name, "logits");
    graph_free(g);
    free(path);
    free(text);
}

static void test_build_uses_checkpoint(void **state)
{
    (void)state;
    /* g:has_weight / g:weight_shape look at the checkpoint when there is one */
    st_writer *w = st_writer_new();
    const int64_t se[2] = {16, 8}, sn[1] = {8};
    float *e = xcalloc(16 * 8, sizeof(float)), *n = xcalloc(8, sizeof(float));
    st_writer_add(w, "embed", ST_F32, 2, se, e);
    st_writer_add(w, "norm", ST_F32, 1, sn, n);
    char *stp = tu_path(D, "model.safetensors");
    assert_int_equal(st_writer_write(w, stp, NULL, NULL, &E), 0);
    st_writer_free(w);
    free(e);
    free(n);
    st_set *ws = st_open(stp, &E);
    assert_non_null(ws);

    char *text = toy_spec("    local shape = g:weight_shape(\"embed\")\n"
                          "    assert(g:weight_shape(\"absent\") == nil)\n"
                          "    assert(g:has_weight(\"norm\") and not g:has_weight(\"absent\"))\n"
                          "    local emb = g:weight(\"embed\", shape)\n"
                          "    local x = g:embed(emb, g:input(\"ids\"))\n"
                          "    return g:logits(x, emb)\n");
    char *path = tu_write(D, "toy.lua", text);
    spec_info s;
    assert_int_equal(spec_probe(path, LIB, &s, &E), 0);
    config *c = cfg_of(TOY_CONFIG);
    kgraph *g = spec_build(&s, LIB, c, ws, &E);
    if (!g)
        fail_msg("%s", kerr_msg(&E));
    assert_int_equal(g->nodes[0].op, KG_WEIGHT);
    assert_int_equal(g->nodes[0].shape[0], 16);
    assert_int_equal(g->nodes[0].shape[1], 8);
    graph_free(g);
    /* without a checkpoint, has_weight is false and weight_shape nil */
    g = spec_build(&s, LIB, c, NULL, &E);
    assert_null(g);
    assert_starts_with(kerr_msg(&E), at(path, line_of(text, "g:has_weight(\"norm\")")));
    assert_contains(kerr_msg(&E), "assertion failed!");
    config_free(c);
    spec_info_free(&s);
    st_close(ws);
    free(stp);
    free(path);
    free(text);
}

/* ---------------------------------------------------------------- spec errors */

static void test_syntax_error(void **state)
{
    (void)state;
    char *path;
    const char *text = "local kiln = require \"kiln\"\n"
                       "return kiln.archspec {\n"
                       "  name = \"toy\"\n"
                       "  architectures = { \"X\" },\n" /* missing comma above */
                       "}\n";
    const char *m = probe_fails(text, &path);
    assert_starts_with(m, at(path, 4));
    assert_contains(m, "'}' expected");
    free(path);
}

static void test_runtime_error_at_load(void **state)
{
    (void)state;
    char *path;
    const char *text = "local kiln = require \"kiln\"\n"
                       "local t = nil\n"
                       "t.field = 1\n"
                       "return kiln.archspec { }\n";
    const char *m = probe_fails(text, &path);
    assert_starts_with(m, at(path, 3));
    assert_contains(m, "attempt to index a nil value");
    free(path);
    /* require of something that is not kiln: Lua's own message, with the line */
    text = "local other = require \"torch\"\n";
    m = probe_fails(text, &path);
    assert_contains(m, "module 'torch' not found");
    assert_contains(m, at(path, 1));
    free(path);
}

static void test_runtime_error_in_build(void **state)
{
    (void)state;
    char *text, *path;
    const char *m = build_fails("    local H = cfg:int(\"hidden_size\")\n"
                                "    local x = cfg.nothing.field\n"
                                "    return x\n",
                                TOY_CONFIG, &text, &path);
    assert_starts_with(m, at(path, line_of(text, "cfg.nothing")));
    assert_contains(m, "attempt to index a nil value (field 'nothing')");
    free(text);
    free(path);
}

static void test_failing_op(void **state)
{
    (void)state;
    char *text, *path;
    const char *m = build_fails("    local ids = g:input(\"ids\")\n"
                                "    local x = g:embed(g:weight(\"embed\", { 16, 8 }), ids)\n"
                                "    local y = g:linear(x, g:weight(\"proj\", { 4, 6 }), \"proj\")\n"
                                "    return g:logits(y, g:weight(\"head\", { 16, 4 }))\n",
                                TOY_CONFIG, &text, &path);
    char *want = xasprintf("%s: linear: input embed.2 [T, 8] has width 8 but weight 'proj' [4, 6] "
                           "expects 6",
                           at(path, line_of(text, "g:linear")));
    assert_starts_with(m, want);
    free(want);
    free(text);
    free(path);
}

static void test_failing_op_through_wrappers(void **state)
{
    (void)state;
    /* A one-line wrapper and the DSL's own helpers in kiln.lua are skipped: the message points
     * at the line of the spec that uses them. */
    char *text, *path;
    const char *m = build_fails("    local function lin(x, w) return g:linear(x, w) end\n"
                                "    local x = g:embed(g:weight(\"embed\", { 16, 8 }), g:input(\"ids\"))\n"
                                "    local y = lin(x, g:weight(\"proj\", { 4, 6 }))\n"
                                "    return g:logits(y, g:weight(\"head\", { 16, 4 }))\n",
                                TOY_CONFIG, &text, &path);
    assert_starts_with(m, at(path, line_of(text, "local y = lin(")));
    assert_contains(m, "linear: input");
    free(text);
    free(path);
    m = build_fails("    local x = g:embed(g:weight(\"embed\", { 16, 8 }), g:input(\"ids\"))\n"
                    "    local y = kiln.gated_mlp(g, x, g:weight(\"gate\", { 32, 8 }),\n"
                    "                             g:weight(\"up\", { 32, 8 }), g:weight(\"down\", { 8, 30 }))\n"
                    "    return g:logits(y, g:weight(\"head\", { 16, 8 }))\n",
                    TOY_CONFIG, &text, &path);
    assert_starts_with(m, at(path, line_of(text, "kiln.gated_mlp")));
    assert_contains(m, "linear: input mlp.gated [T, 32] has width 32 but weight 'down' [8, 30] "
                       "expects 30");
    free(text);
    free(path);
}

static void test_bad_argument(void **state)
{
    (void)state;
    /* luaL_check* messages: the traceback part names the spec line */
    char *text, *path;
    const char *m = build_fails("    local x = g:embed(g:weight(\"embed\", { 16, 8 }), g:input(\"ids\"))\n"
                                "    local y = g:linear(x, \"proj.weight\")\n"
                                "    return y\n",
                                TOY_CONFIG, &text, &path);
    assert_contains(m, "bad argument #2 to 'linear'");
    assert_contains(m, at(path, line_of(text, "g:linear")));
    free(text);
    free(path);
    m = build_fails("    local w = g:weight(\"embed\", { 16, 8.5 })\n"
                    "    return w\n",
                    TOY_CONFIG, &text, &path);
    assert_contains(m, "shape[2] must be a whole number, got 8.5");
    assert_contains(m, at(path, line_of(text, "g:weight")));
    free(text);
    free(path);
    m = build_fails("    local x = g:input(\"tokens\")\n"
                    "    return x\n",
                    TOY_CONFIG, &text, &path);
    assert_contains(m, "bad argument #1 to 'input' (invalid option 'tokens')");
    assert_contains(m, at(path, line_of(text, "g:input")));
    free(text);
    free(path);
}

static void test_missing_config_field(void **state)
{
    (void)state;
    char *text, *path;
    const char *m = build_fails("    local H = cfg:int(\"hidden_size\")\n"
                                "    local L = cfg:int(\"num_hidden_layers\")\n"
                                "    return L\n",
                                TOY_CONFIG, &text, &path);
    char *cfgp = tu_path(D, "config.json");
    char *want = xasprintf("%s: field 'num_hidden_layers' is missing (expected an integer) "
                           "(needed by %s)",
                           cfgp, at(path, line_of(text, "num_hidden_layers")));
    assert_starts_with(m, want);
    free(want);
    free(text);
    free(path);
    /* the wrong type: expected vs got, and the line */
    m = build_fails("    local act = cfg:str(\"hidden_size\")\n"
                    "    return act\n",
                    TOY_CONFIG, &text, &path);
    want = xasprintf("%s: field 'hidden_size': expected a string, got an integer 8 (needed by %s)",
                     cfgp, at(path, line_of(text, "cfg:str")));
    assert_starts_with(m, want);
    free(want);
    free(text);
    free(path);
    /* a rope config error, also with the line */
    m = build_fails("    local r = cfg:rope()\n"
                    "    return r\n",
                    "{\"rope_scaling\": {\"type\": \"proportional\"}}", &text, &path);
    assert_starts_with(m, cfgp);
    assert_contains(m, "'proportional'");
    assert_contains(m, "(needed by ");
    assert_contains(m, at(path, line_of(text, "cfg:rope")));
    free(cfgp);
    free(text);
    free(path);
}

static void test_config_defaults_and_rope(void **state)
{
    (void)state;
    /* cfg:* with defaults, cfg:has, cfg:path, cfg:rope fields seen from Lua */
    char *text = toy_spec(
        "    assert(cfg:int(\"absent\", 7) == 7)\n"
        "    assert(cfg:float(\"absent\", 0.5) == 0.5)\n"
        "    assert(cfg:bool(\"absent\", true) == true)\n"
        "    assert(cfg:str(\"absent\", \"x\") == \"x\")\n"
        "    assert(cfg:has(\"hidden_size\") and not cfg:has(\"absent\"))\n"
        "    assert(cfg:path():match(\"config%.json$\"))\n"
        "    local r = cfg:rope()\n"
        "    assert(r.type == \"yarn\", r.type)\n"
        "    assert(r.theta == 1e6 and r.factor == 4 and r.beta_fast == 32, r.theta)\n"
        "    assert(r.original_max_position_embeddings == 1024)\n"
        "    assert(math.abs(r.attention_factor - (0.1 * math.log(4) + 1)) < 1e-12)\n"
        "    local x = g:embed(g:weight(\"embed\", { 16, 8 }), g:input(\"ids\"))\n"
        "    return g:logits(x, g:weight(\"embed\", { 16, 8 }))\n");
    kgraph *g = build(text,
                      "{\"hidden_size\": 8, \"rope_theta\": 1e6, \"max_position_embeddings\": "
                      "4096, \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4, "
                      "\"original_max_position_embeddings\": 1024}}",
                      NULL);
    if (!g)
        fail_msg("%s", kerr_msg(&E));
    assert_int_equal(g->n, 4); /* the tied head is the same weight node */
    graph_free(g);
    free(text);
}

static void test_bad_declarations_raw(void **state)
{
    (void)state;
    /* specs that skip kiln.archspec{}: spec_probe's own checks */
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"return 42\n", ": must return an archspec table (return kiln.archspec{...}), returned "
                        "number"},
        {"return nil\n", ": must return an archspec table"},
        {"return { architectures = { \"X\" }, task = \"generate\", build = function() end }\n",
         ": the archspec has no 'name' (a string)"},
        {"return { name = \"x\", architectures = { \"X\" }, task = \"train\", build = function() "
         "end }\n",
         ": 'task' must be \"generate\", \"embed\" or \"classify\", got train"},
        {"return { name = \"x\", architectures = { \"X\" }, build = function() end }\n",
         ": 'task' must be \"generate\", \"embed\" or \"classify\", got nothing"},
        {"return { name = \"x\", task = \"embed\", build = function() end }\n",
         ": 'architectures' must list the HF architecture names this spec serves"},
        {"return { name = \"x\", architectures = {}, task = \"embed\", build = function() end }\n",
         ": 'architectures' must list the HF architecture names"},
        {"return { name = \"x\", architectures = { \"A\", true }, task = \"embed\", build = "
         "function() end }\n",
         ": architectures[2] is not a string"},
        {"return { name = \"x\", architectures = { \"A\" }, task = \"embed\" }\n",
         ": 'build' must be a function(g, cfg)"},
        {"return { name = \"x\", architectures = { \"A\" }, task = \"embed\", build = 3 }\n",
         ": 'build' must be a function(g, cfg)"},
        {"return { name = \"x\", architectures = { \"A\" }, task = \"embed\", ignore = \"a\", "
         "build = function() end }\n",
         ": 'ignore' must be a list of Lua patterns of tensor names"},
        {"return { name = \"x\", architectures = { \"A\" }, task = \"embed\", ignore = { {} }, "
         "build = function() end }\n",
         ": ignore[1] is not a string"},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char *path;
        const char *m = probe_fails(cases[i].text, &path);
        char *want = xasprintf("%s%s", path, cases[i].want);
        assert_starts_with(m, want);
        free(want);
        free(path);
    }
}

static void test_bad_declarations_dsl(void **state)
{
    (void)state;
    /* through kiln.archspec{}: kiln.lua's checks, located at the spec line */
    static const struct {
        const char *decl, *want;
    } cases[] = {
        {"architectures = { \"X\" }, task = \"generate\", build = function() end",
         "archspec: 'name' must be a string"},
        {"name = \"toy\", task = \"generate\", build = function() end",
         "archspec 'toy': 'architectures' must list HF architecture names"},
        {"name = \"toy\", architectures = {}, task = \"generate\", build = function() end",
         "archspec 'toy': 'architectures' must list HF architecture names"},
        {"name = \"toy\", architectures = { \"X\" }, task = \"train\", build = function() end",
         "archspec 'toy': 'task' must be generate, embed or classify"},
        {"name = \"toy\", architectures = { \"X\" }, task = \"generate\"",
         "archspec 'toy': 'build' must be a function(g, cfg)"},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char *text = xasprintf("local kiln = require \"kiln\"\n"
                               "\n"
                               "return kiln.archspec { %s }\n",
                               cases[i].decl);
        char *path;
        const char *m = probe_fails(text, &path);
        /* `return kiln.archspec{}` is a tail call, but into a C closure (kiln.lua's functions
         * are wrapped, spec.c's wrap_lib_functions): the spec's frame and line survive */
        char *want = xasprintf("%s: %s", at(path, 3), cases[i].want);
        assert_starts_with(m, want);
        free(want);
        free(path);
        free(text);
    }
    char *path;
    const char *m = probe_fails("local kiln = require \"kiln\"\nreturn kiln.archspec(\"llama\")\n",
                                &path);
    char *want = xasprintf("%s: kiln.archspec expects a table", at(path, 2));
    assert_starts_with(m, want);
    free(want);
    free(path);
    /* not a tail call: Lua adds the line itself */
    m = probe_fails("local kiln = require \"kiln\"\n"
                    "local spec = kiln.archspec { name = \"toy\" }\n"
                    "return spec\n",
                    &path);
    want = xasprintf("%s: archspec 'toy': 'architectures' must list", at(path, 2));
    assert_starts_with(m, want);
    free(want);
    free(path);
}

static void test_build_without_output(void **state)
{
    (void)state;
    char *text, *path;
    const char *m = build_fails("    local x = g:embed(g:weight(\"embed\", { 16, 8 }), g:input(\"ids\"))\n"
                                "    return x\n",
                                TOY_CONFIG, &text, &path);
    char *want = xasprintf("%s: build() finished without an output: end with g:logits(x, head) "
                           "for task generate, g:pool(x, {...}) for task embed, or "
                           "g:score(g:pool(x, {...}), {weight=...}) for task classify",
                           path);
    assert_string_equal(m, want);
    free(want);
    free(text);
    free(path);
    /* an output of another task than the spec's */
    m = build_fails("    local x = g:embed(g:weight(\"embed\", { 16, 8 }), g:input(\"ids\"))\n"
                    "    return g:pool(x, { mode = \"last\" })\n",
                    TOY_CONFIG, &text, &path);
    want = xasprintf("%s: task generate ends in g:logits, but build() ended in g:pool", path);
    assert_string_equal(m, want);
    free(want);
    free(text);
    free(path);
}

static void test_build_error_after_probe_changes(void **state)
{
    (void)state;
    /* the file changed after probing (the registry probes early): build reports it */
    char *text = toy_spec(GOOD_BODY);
    char *path = tu_write(D, "toy.lua", text);
    spec_info s;
    assert_int_equal(spec_probe(path, LIB, &s, &E), 0);
    free(tu_write(D, "toy.lua", "return { name = \"toy\" }\n"));
    config *c = cfg_of(TOY_CONFIG);
    assert_null(spec_build(&s, LIB, c, NULL, &E));
    char *want = xasprintf("%s: 'build' must be a function(g, cfg)", path);
    assert_string_equal(kerr_msg(&E), want);
    free(want);
    config_free(c);
    spec_info_free(&s);
    free(path);
    free(text);
}

/* ---------------------------------------------------------------- ignore patterns */

static void test_filter_ignored(void **state)
{
    (void)state;
    char *text = toy_spec(GOOD_BODY);
    char *path = tu_write(D, "toy.lua", text);
    spec_info s;
    assert_int_equal(spec_probe(path, LIB, &s, &E), 0);
    const char *names[] = {"model.layers.0.self_attn.rotary_emb.inv_freq", "extra.bias",
                           "model.extra.bias", "model.layers.0.self_attn.rotary_emb.inv_freq.x",
                           "lm_head.weight"};
    unsigned char ign[5];
    memset(ign, 7, sizeof ign);
    assert_int_equal(spec_filter_ignored(&s, names, 5, ign, &E), 0);
    assert_int_equal(ign[0], 1);
    assert_int_equal(ign[1], 1);
    assert_int_equal(ign[2], 0); /* anchored at the start */
    assert_int_equal(ign[3], 0); /* anchored at the end */
    assert_int_equal(ign[4], 0);
    /* a broken pattern names the spec and the pattern */
    free(s.ignore[1]);
    s.ignore[1] = xstrdup("[unclosed");
    assert_int_equal(spec_filter_ignored(&s, names + 4, 1, ign, &E), -1);
    char *want = xasprintf("%s: ignore pattern '[unclosed': ", path);
    assert_starts_with(kerr_msg(&E), want);
    assert_contains(kerr_msg(&E), "malformed pattern");
    free(want);
    spec_info_free(&s);
    /* no patterns: nothing ignored */
    spec_info none = {0};
    memset(ign, 7, sizeof ign);
    assert_int_equal(spec_filter_ignored(&none, names, 5, ign, &E), 0);
    for (int i = 0; i < 5; i++)
        assert_int_equal(ign[i], 0);
    free(path);
    free(text);
}

/* ---------------------------------------------------------------- the real Llama spec */

static char *llama_text(void) { return tu_read(LLAMA, NULL); }

/* The line of llama.lua that makes what `direct` names: that call's own line where the spec
 * writes it out, else the line of the kiln.lua helper call (`helper`) that makes it for the
 * spec. Either way a location in llama.lua, never in kiln.lua. */
static int llama_line(const char *text, const char *direct, const char *helper)
{
    return line_of(text, strstr(text, direct) ? direct : helper);
}

static kgraph *build_llama(const char *config_text)
{
    spec_info s;
    kerr_clear(&E);
    if (spec_probe(LLAMA, LIB, &s, &E))
        fail_msg("spec_probe(%s): %s", LLAMA, kerr_msg(&E));
    config *c = cfg_of(config_text);
    kgraph *g = spec_build(&s, LIB, c, NULL, &E);
    config_free(c);
    spec_info_free(&s);
    return g;
}

static int count_op(const kgraph *g, kg_op op)
{
    int n = 0;
    for (int i = 0; i < g->n; i++)
        n += g->nodes[i].op == op;
    return n;
}

static const kg_node *find_node(const kgraph *g, const char *name)
{
    for (int i = 0; i < g->n; i++)
        if (strcmp(g->nodes[i].name, name) == 0)
            return &g->nodes[i];
    fail_msg("no node '%s'", name);
    return NULL;
}

static void test_llama_probe(void **state)
{
    (void)state;
    spec_info s;
    assert_int_equal(spec_probe(LLAMA, LIB, &s, &E), 0);
    assert_string_equal(s.name, "llama");
    assert_int_equal(s.task, TASK_GENERATE);
    int llama = 0, mistral = 0;
    for (int i = 0; i < s.n_archs; i++) {
        llama += strcmp(s.archs[i], "LlamaForCausalLM") == 0;
        mistral += strcmp(s.archs[i], "MistralForCausalLM") == 0;
    }
    assert_int_equal(llama, 1);
    assert_int_equal(mistral, 1);
    /* it knowingly leaves stored rotary frequencies unused */
    const char *names[] = {"model.layers.3.self_attn.rotary_emb.inv_freq"};
    unsigned char ign[1];
    assert_int_equal(spec_filter_ignored(&s, names, 1, ign, &E), 0);
    assert_int_equal(ign[0], 1);
    spec_info_free(&s);
}

/* Llama 3.1 style: old conventions (rope_theta + rope_scaling llama3), GQA, untied. */
static const char LLAMA3_OLD[] =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\",\n"
    " \"hidden_size\": 16, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,\n"
    " \"num_key_value_heads\": 2, \"intermediate_size\": 32, \"vocab_size\": 64,\n"
    " \"max_position_embeddings\": 256, \"rms_norm_eps\": 1e-5, \"rope_theta\": 500000.0,\n"
    " \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0,\n"
    "                  \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 64},\n"
    " \"sliding_window\": 32, \"tie_word_embeddings\": false}";

static void test_llama_old_style(void **state)
{
    (void)state;
    kgraph *g = build_llama(LLAMA3_OLD);
    if (!g)
        fail_msg("%s", kerr_msg(&E));
    assert_int_equal(graph_verify(g, &E), 0);
    /* 2 inputs + embed table + embed, 25 nodes per layer, final norm weight + norm + head + logits */
    assert_int_equal(g->n, 4 + 2 * 25 + 4);
    assert_int_equal(g->n_layers, 2);
    assert_int_equal(count_op(g, KG_ATTENTION), 2);
    assert_int_equal(count_op(g, KG_ROPE), 4);
    assert_int_equal(count_op(g, KG_WEIGHT), 1 + 2 * 9 + 2);
    for (int i = 0; i < g->n; i++) {
        const kg_node *n = &g->nodes[i];
        if (n->op == KG_ATTENTION) {
            assert_int_equal(n->attn.n_heads, 4);
            assert_int_equal(n->attn.n_kv_heads, 2);
            assert_int_equal(n->attn.head_dim, 4);
            assert_int_equal(n->attn.window, 0); /* Llama ignores sliding_window */
            assert_int_equal(n->attn.causal, 1);
            assert_true(n->attn.scale == 0.5);
        } else if (n->op == KG_ROPE) {
            assert_int_equal(n->rope.p.type, ROPE_LLAMA3);
            assert_true(n->rope.p.theta == 500000);
            assert_true(n->rope.p.factor == 8);
            assert_true(n->rope.p.low_freq_factor == 1);
            assert_true(n->rope.p.high_freq_factor == 4);
            assert_int_equal(n->rope.p.original_max_pos, 64);
            assert_int_equal(n->rope.head_dim, 4);
            assert_int_equal(n->rope.rot_dim, 4);
            assert_int_equal(n->rope.interleaved, 0);
        }
    }
    const kg_node *q = find_node(g, "L1.attn.q");
    assert_int_equal(q->op, KG_LINEAR);
    assert_string_equal(g->nodes[q->in[1]].weight, "model.layers.1.self_attn.q_proj.weight");
    assert_int_equal(q->shape[1], 16);
    const kg_node *k = find_node(g, "L1.attn.k");
    assert_int_equal(k->shape[1], 8);
    const kg_node *out = &g->nodes[g->output];
    assert_int_equal(out->op, KG_LOGITS);
    assert_int_equal(out->shape[1], 64);
    assert_string_equal(g->nodes[out->in[1]].weight, "lm_head.weight");
    /* locations point into llama.lua */
    char *text = llama_text();
    assert_string_equal(q->spec_file, LLAMA);
    assert_int_equal(q->spec_line, llama_line(text, "\"attn.q\")", "kiln.llama("));
    free(text);
    graph_free(g);
}

/* transformers 5 conventions: rope_parameters, explicit head_dim, Mistral with a window, tied
 * embeddings, biases on q/k/v/o. */
static const char MISTRAL_NEW[] =
    "{\"architectures\": [\"MistralForCausalLM\"], \"model_type\": \"mistral\",\n"
    " \"hidden_size\": 16, \"num_hidden_layers\": 3, \"num_attention_heads\": 4,\n"
    " \"num_key_value_heads\": 1, \"head_dim\": 8, \"intermediate_size\": 24,\n"
    " \"vocab_size\": 50, \"max_position_embeddings\": 512, \"rms_norm_eps\": 1e-6,\n"
    " \"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 1000000.0,\n"
    "                     \"partial_rotary_factor\": 0.5},\n"
    " \"sliding_window\": 128, \"tie_word_embeddings\": true, \"attention_bias\": true}";

static void test_llama_new_style_mistral(void **state)
{
    (void)state;
    kgraph *g = build_llama(MISTRAL_NEW);
    if (!g)
        fail_msg("%s", kerr_msg(&E));
    assert_int_equal(graph_verify(g, &E), 0);
    /* 25 per layer + 4 bias weights per layer; tied: no separate head weight */
    assert_int_equal(g->n, 4 + 3 * (25 + 4) + 3);
    assert_int_equal(g->n_layers, 3);
    int seen = 0;
    for (int i = 0; i < g->n; i++) {
        const kg_node *n = &g->nodes[i];
        if (n->op == KG_ATTENTION) {
            assert_int_equal(n->attn.n_heads, 4);
            assert_int_equal(n->attn.n_kv_heads, 1);
            assert_int_equal(n->attn.head_dim, 8);
            assert_int_equal(n->attn.window, 128);
            assert_int_equal(n->attn.layer, seen++);
        } else if (n->op == KG_ROPE) {
            assert_int_equal(n->rope.p.type, ROPE_DEFAULT);
            assert_true(n->rope.p.theta == 1e6);
            assert_int_equal(n->rope.head_dim, 8);
            assert_int_equal(n->rope.rot_dim, 4); /* partial rotary */
        }
    }
    assert_int_equal(seen, 3);
    const kg_node *q = find_node(g, "L0.attn.q");
    assert_int_equal(q->n_in, 3); /* with bias */
    assert_int_equal(q->shape[1], 32);
    assert_string_equal(g->nodes[q->in[2]].weight, "model.layers.0.self_attn.q_proj.bias");
    const kg_node *out = &g->nodes[g->output];
    assert_string_equal(g->nodes[out->in[1]].weight, "model.embed_tokens.weight");
    assert_int_equal(out->shape[1], 50);
    graph_free(g);
}

static void test_llama_mistral_without_window(void **state)
{
    (void)state;
    /* model_type mistral with sliding_window null: no window */
    kgraph *g = build_llama("{\"model_type\": \"mistral\", \"hidden_size\": 8, "
                            "\"num_hidden_layers\": 1, \"num_attention_heads\": 2, "
                            "\"intermediate_size\": 8, \"vocab_size\": 8, \"sliding_window\": "
                            "null}");
    if (!g)
        fail_msg("%s", kerr_msg(&E));
    const kg_node *a = find_node(g, "L0.attn");
    assert_int_equal(a->attn.window, 0);
    assert_int_equal(a->attn.n_kv_heads, 2); /* absent num_key_value_heads: MHA */
    assert_int_equal(a->attn.head_dim, 4);   /* derived: hidden / heads */
    graph_free(g);
}

static void test_llama_many_layers(void **state)
{
    (void)state;
    /* past the node array's first growth (256 nodes): every shape still right */
    kgraph *g = build_llama("{\"hidden_size\": 16, \"num_hidden_layers\": 12, "
                            "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, "
                            "\"intermediate_size\": 32, \"vocab_size\": 64}");
    if (!g)
        fail_msg("%s", kerr_msg(&E));
    assert_int_equal(g->n, 4 + 12 * 25 + 4);
    assert_int_equal(g->n_layers, 12);
    assert_int_equal(graph_verify(g, &E), 0);
    char sh[64];
    for (int i = 0; i < g->n; i++)
        if (g->nodes[i].op == KG_ROPE || g->nodes[i].op == KG_SILU)
            assert_true(g->nodes[i].shape[0] == KG_T &&
                        (g->nodes[i].shape[1] == 16 || g->nodes[i].shape[1] == 8 ||
                         g->nodes[i].shape[1] == 32));
    assert_string_equal(graph_shape_str(&g->nodes[g->output], sh, sizeof sh), "[T, 64]");
    assert_int_equal(find_node(g, "L11.attn")->attn.layer, 11);
    graph_free(g);
}

/* luaL_check* errors ("bad argument #2 to 'linear'") get the spec line too */
static void test_bad_argument_located(void **state)
{
    (void)state;
    char *text, *path;
    const char *m = build_fails("    local x = g:embed(g:weight(\"e\", {64, 16}), g:input(\"ids\"))\n"
                                "    local y = g:linear(x, \"not a tensor\")\n"
                                "    return y\n",
                                TOY_CONFIG, &text, &path);
    char *want = xasprintf("%s:%d: ", path, line_of(text, "not a tensor"));
    assert_starts_with(m, want);
    assert_non_null(strstr(m, "bad argument #2 to 'linear'"));
    free(want);
    free(text);
    free(path);
}

static void test_llama_missing_field(void **state)
{
    (void)state;
    kgraph *g = build_llama("{\"architectures\": [\"LlamaForCausalLM\"], \"num_hidden_layers\": 1}");
    assert_null(g);
    char *text = llama_text();
    char *cfgp = tu_path(D, "config.json");
    char *want = xasprintf("%s: field 'hidden_size' is missing (expected an integer) (needed by "
                           "%s)",
                           cfgp, at(LLAMA, llama_line(text, "cfg:int(\"hidden_size\")", "kiln.llama_config(")));
    assert_starts_with(kerr_msg(&E), want);
    free(want);
    /* an unsupported activation: kiln.lua's error, located at llama.lua */
    g = build_llama("{\"hidden_size\": 8, \"num_hidden_layers\": 1, \"num_attention_heads\": 2, "
                    "\"intermediate_size\": 8, \"vocab_size\": 8, \"hidden_act\": \"swiglu\"}");
    assert_null(g);
    assert_starts_with(kerr_msg(&E), at(LLAMA, llama_line(text, "kiln.act(g, act", "kiln.llama(")));
    assert_contains(kerr_msg(&E), "activation 'swiglu' is not supported (known: gelu");
    /* heads that do not divide: the attention op's message, at its line */
    g = build_llama("{\"hidden_size\": 24, \"num_hidden_layers\": 1, \"num_attention_heads\": 6, "
                    "\"num_key_value_heads\": 4, \"intermediate_size\": 8, \"vocab_size\": 8}");
    assert_null(g);
    assert_starts_with(kerr_msg(&E), at(LLAMA, llama_line(text, "g:attention(", "kiln.llama(")));
    assert_contains(kerr_msg(&E), "6 query heads are not divisible by 4 key/value heads");
    free(cfgp);
    free(text);
}

/* ---------------------------------------------------------------- sandbox */

/* The spec's message and how long spec_probe took to refuse it. */
static const char *probe_fails_timed(const char *text, char **path, double *secs)
{
    double t0 = util_now();
    const char *m = probe_fails(text, path);
    *secs = util_now() - t0;
    return m;
}

static void test_sandbox_endless_loop(void **state)
{
    (void)state;
    char *path;
    double t;
    /* a plain loop, and one that hides in pcall: both end at the budget, at their line */
    const char *text = "local kiln = require \"kiln\"\n"
                       "local i = 0\n"
                       "while true do i = i + 1 end\n";
    const char *m = probe_fails_timed(text, &path, &t);
    char *want = xasprintf("%s: the archspec did not finish within 100 million Lua instructions "
                           "(an endless loop?)",
                           at(path, 3));
    assert_starts_with(m, want);
    assert_true(t < 30);
    free(want);
    free(path);
    text = "local function spin() while true do end end\n"
           "while true do pcall(spin) end\n";
    m = probe_fails_timed(text, &path, &t);
    assert_contains(m, "did not finish within 100 million Lua instructions");
    assert_contains(m, path);
    assert_true(t < 30);
    free(path);
}

static void test_sandbox_memory(void **state)
{
    (void)state;
    char *path;
    double t;
    /* growing step by step: caught by the hook, with the line */
    const char *text = "local t = {}\n"
                       "while true do t[#t + 1] = string.rep(\"x\", 1000) .. #t end\n";
    const char *m = probe_fails_timed(text, &path, &t);
    assert_starts_with(m, at(path, 2));
    assert_contains(m, "close to the limit of 256 MiB for an archspec");
    free(path);
    /* one huge allocation: refused by the allocator, named with the limit */
    m = probe_fails("local s = string.rep(\"x\", 1e9)\n", &path);
    char *want = xasprintf("%s: the archspec needs more than 256 MiB of memory", path);
    assert_starts_with(m, want);
    free(want);
    free(path);
}

static void test_sandbox_libraries(void **state)
{
    (void)state;
    char *path;
    char *mark = tu_path(D, "PWNED");
    /* no os, io, debug, package, coroutine; no dofile/loadfile; no string.dump */
    static const char *calls[] = {
        "os.execute('touch %s')", "io.open('%s', 'w')", "debug.getinfo(1)",
        "package.loadlib('%s', 'x')", "dofile('%s')", "loadfile('%s')",
        "coroutine.create(print)", "string.dump(print)",
    };
    for (size_t i = 0; i < ARRAY_LEN(calls); i++) {
        char *call = xasprintf(calls[i], mark);
        char *text = xasprintf("local x = 1\n%s\n", call);
        const char *m = probe_fails(text, &path);
        assert_starts_with(m, at(path, 2));
        assert_contains(m, "attempt to");
        assert_contains(m, "nil value");
        free(path);
        free(text);
        free(call);
    }
    assert_false(util_is_file(mark));
    free(mark);
    /* load takes text only: a binary chunk is refused, a text chunk runs in the sandbox */
    const char *m = probe_fails("local f, e = load(\"\\27Lua\\84\\0\")\nerror(e)\n", &path);
    assert_starts_with(m, at(path, 2));
    assert_contains(m, "attempt to load a binary chunk");
    free(path);
    m = probe_fails("local f = load(\"return os\")\nerror(type(f()))\n", &path);
    assert_contains(m, "nil");
    free(path);
}

static void test_sandbox_require(void **state)
{
    (void)state;
    char *path;
    /* a module next to the spec is found; one anywhere else is not */
    free(tu_write(D, "helper.lua", "return { answer = 42 }\n"));
    const char *m = probe_fails("local h = require \"helper\"\nerror(\"got \" .. h.answer)\n",
                                &path);
    assert_contains(m, "got 42");
    free(path);
    static const char *names[] = {"../helper", "/etc/passwd", "a.b", ""};
    for (size_t i = 0; i < ARRAY_LEN(names); i++) {
        char *text = xasprintf("local x = 1\nlocal h = require \"%s\"\n", names[i]);
        m = probe_fails(text, &path);
        assert_starts_with(m, at(path, 2));
        assert_contains(m, "not found: an archspec requires modules by a plain name");
        free(text);
        free(path);
    }
    free(tu_write(D, "loop1.lua", "return require \"loop1\"\n"));
    m = probe_fails("require \"loop1\"\n", &path);
    assert_contains(m, "module 'loop1' requires itself");
    free(path);
}

static void test_sandbox_patterns(void **state)
{
    (void)state;
    char *path;
    double t;
    /* backtracking inside C, where no hook runs: refused before it starts */
    const char *m = probe_fails_timed(
        "local s = string.rep(\"a\", 100000)\nlocal x = s:find(\".-.-.-b\")\n", &path, &t);
    assert_starts_with(m, at(path, 2));
    assert_contains(m, "string.find: a pattern with 3 repetition items on a string of 100000 "
                       "bytes could backtrack for too long");
    assert_true(t < 10);
    free(path);
    /* ordinary patterns and plain finds still work */
    m = probe_fails("local a = (\"model.layers.3.mlp\"):match(\"^model%.layers%.(%d+)%.\")\n"
                    "local b = string.rep(\"a\", 100000):find(\".-.-.-b\", 1, true)\n"
                    "error(\"ok \" .. a .. \" \" .. tostring(b))\n",
                    &path);
    assert_contains(m, "ok 3 nil");
    free(path);
}

static void test_sandbox_messages(void **state)
{
    (void)state;
    char *path;
    /* enormous: cut; empty: said so; not a string: said so */
    const char *m = probe_fails("error(string.rep(\"x\", 100000))\n", &path);
    assert_starts_with(m, at(path, 1));
    assert_contains(m, "x ... (message cut)");
    assert_true(strlen(m) < 3000);
    free(path);
    m = probe_fails("error(\"\")\n", &path);
    assert_starts_with(m, at(path, 1));
    assert_contains(m, "(an error with an empty message)");
    free(path);
    m = probe_fails("error({})\n", &path);
    assert_contains(m, path);
    assert_contains(m, "(error object is a table value)");
    free(path);
    /* a metatable on the returned table runs no code: the declaration is read raw */
    m = probe_fails("return setmetatable({}, { __index = function() while true do end end })\n",
                    &path);
    char *want = xasprintf("%s: the archspec has no 'name' (a string)", path);
    assert_starts_with(m, want);
    free(want);
    free(path);
    /* a division by zero gets a hint */
    m = probe_fails("local n = 0\nlocal x = 64 // n\n", &path);
    assert_starts_with(m, at(path, 2));
    assert_contains(m, "(a division by zero: is a config value the spec divides by 0?)");
    free(path);
}

static void test_sandbox_files(void **state)
{
    (void)state;
    /* a FIFO would block the reader forever; a huge file is not read */
    char *fifo = tu_path(D, "fifo.lua");
    assert_int_equal(mkfifo(fifo, 0600), 0);
    spec_info s;
    kerr_clear(&E);
    assert_int_equal(spec_probe(fifo, LIB, &s, &E), -1);
    char *want = xasprintf("%s: not a regular file", fifo);
    assert_starts_with(kerr_msg(&E), want);
    free(want);
    free(fifo);
    char *big = tu_path(D, "big.lua");
    FILE *f = fopen(big, "w");
    assert_non_null(f);
    assert_int_equal(ftruncate(fileno(f), (off_t)5 << 20), 0);
    fclose(f);
    kerr_clear(&E);
    assert_int_equal(spec_probe(big, LIB, &s, &E), -1);
    assert_contains(kerr_msg(&E), "5242880 bytes, more than the 4194304 an archspec may have");
    free(big);
}

static void test_sandbox_c_loops(void **state)
{
    (void)state;
    char *path;
    double t;
    /* loops in C over a length that allocates nothing: refused or short-cut, not run */
    const char *m = probe_fails_timed("local t = setmetatable({}, { __len = function() return 1 << 60 "
                                      "end })\ntable.insert(t, 1, 5)\n",
                                      &path, &t);
    assert_starts_with(m, at(path, 2));
    assert_contains(m, "table.insert: 1152921504606846976 elements, more than an archspec's table "
                       "can hold");
    free(path);
    m = probe_fails_timed("local x = 1\ntable.move({}, 1, 1 << 50, 2)\n", &path, &t);
    assert_starts_with(m, at(path, 2));
    assert_contains(m, "table.move: ");
    free(path);
    /* an empty string repeated 2^62 times is empty, at once; the guarded functions still work */
    m = probe_fails_timed("local s = string.rep(\"\", 1 << 62)\n"
                          "local t = { 3, 1, 2 }\ntable.sort(t)\ntable.insert(t, 4)\n"
                          "table.remove(t, 1)\n"
                          "local r = { string.rep(\"ab\", 3, \"-\"), string.rep(\"xyz\", 1), "
                          "string.rep(\"a\", 0), string.rep(\"\", 5, \",\"), "
                          "string.rep(\"ab\", 5), #string.rep(\"q\", 1 << 26) }\n"
                          "error(#s .. \" \" .. table.concat(t, \",\") .. \" \" .. "
                          "select(2, table.unpack(t)) .. \" \" .. table.concat(r, \"|\"))\n",
                          &path, &t);
    assert_contains(m, "0 2,3,4 3 ab-ab-ab|xyz||,,,,|ababababab|67108864");
    assert_true(t < 10);
    free(path);
}

static void test_sandbox_print_capped(void **state)
{
    (void)state;
    char *out = tu_path(D, "stdout.txt");
    fflush(stdout);
    int saved = dup(1);
    FILE *f = fopen(out, "w");
    assert_non_null(f);
    dup2(fileno(f), 1);
    char *path;
    const char *m = probe_fails("for i = 1, 100000 do print(\"line\", i) end\nerror(\"done\")\n",
                                &path);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    fclose(f);
    assert_contains(m, "done");
    size_t n;
    char *text = tu_read(out, &n);
    assert_true(n >= 64 << 10 && n < (64 << 10) + 100);
    assert_starts_with(text, "line\t1\nline\t2\n");
    assert_contains(text, "(archspec print output cut)");
    free(text);
    free(path);
    free(out);
}

static void test_sandbox_finalizers(void **state)
{
    (void)state;
    char *path;
    double t;
    /* Lua runs finalizers with hooks off: a looping __gc would never end, so none can be set */
    const char *m = probe_fails_timed("local x = 1\n"
                                      "keep = setmetatable({}, { __gc = function() while true do end "
                                      "end })\n",
                                      &path, &t);
    assert_starts_with(m, at(path, 2));
    assert_contains(m, "setmetatable: an archspec cannot use __gc");
    assert_true(t < 10);
    free(path);
    /* __gc added to the metatable later does not mark the object (Lua 5.4): nothing runs */
    m = probe_fails_timed("local mt = {}\nkeep = setmetatable({}, mt)\n"
                          "mt.__gc = function() while true do end end\n"
                          "keep = nil\ncollectgarbage()\nerror(\"collected\")\n",
                          &path, &t);
    assert_contains(m, "collected");
    assert_true(t < 10);
    free(path);
    /* a to-be-closed variable's __close runs under the budget */
    m = probe_fails_timed("do local x <close> = setmetatable({}, { __close = function() while true "
                          "do end end }) end\n",
                          &path, &t);
    assert_contains(m, "did not finish within 100 million Lua instructions");
    assert_true(t < 30);
    free(path);
}

/* ---------------------------------------------------------------- config ranges */

static void test_cfg_int_ranges(void **state)
{
    (void)state;
    char *text, *path;
    char *cfgp = tu_path(D, "config.json");
    /* 0 heads: the field, the file and the spec line, not Lua's "attempt to perform 'n//0'" */
    const char *m = build_fails("    local h = cfg:int(\"num_attention_heads\")\n"
                                "    return h\n",
                                "{\"num_attention_heads\": 0}", &text, &path);
    char *want = xasprintf("%s: field 'num_attention_heads' is 0; expected 1 to 16384 (needed "
                           "by %s)",
                           cfgp, at(path, line_of(text, "num_attention_heads")));
    assert_starts_with(m, want);
    free(want);
    free(text);
    free(path);
    /* an absurd layer count, and a negative one */
    m = build_fails("    return cfg:int(\"num_hidden_layers\")\n", "{\"num_hidden_layers\": 100000}",
                    &text, &path);
    assert_contains(m, "field 'num_hidden_layers' is 100000; expected 1 to 10000");
    free(text);
    free(path);
    m = build_fails("    return cfg:int(\"text_config.num_hidden_layers\")\n",
                    "{\"text_config\": {\"num_hidden_layers\": -2}}", &text, &path);
    assert_contains(m, "field 'text_config.num_hidden_layers' is -2; expected 1 to 10000");
    free(text);
    free(path);
    /* a default out of range is refused too (head_dim = H // heads = 0) */
    m = build_fails("    return cfg:int(\"head_dim\", 8 // 16)\n", "{}", &text, &path);
    want = xasprintf("%s: field 'head_dim' is absent, and its default, 0, is out of range "
                     "(expected 1 to 16384) (needed by %s)",
                     cfgp, at(path, line_of(text, "head_dim")));
    assert_starts_with(m, want);
    free(want);
    free(text);
    free(path);
    /* a spec widens the range where 0 means something, or narrows it */
    m = build_fails("    local w = cfg:int(\"sliding_window\", 0, { min = 0 })\n"
                    "    local n = cfg:int(\"n\", nil, { min = -5, max = 5 })\n"
                    "    error(\"ok \" .. w .. \" \" .. n)\n",
                    "{\"sliding_window\": 0, \"n\": -3}", &text, &path);
    assert_contains(m, "ok 0 -3");
    free(text);
    free(path);
    m = build_fails("    return cfg:int(\"n\", nil, { max = 5 })\n", "{\"n\": 6}", &text, &path);
    assert_contains(m, "field 'n' is 6; expected 1 to 5");
    free(text);
    free(path);
    free(cfgp);
}

static void test_graph_node_cap(void **state)
{
    (void)state;
    char *text, *path;
    double t0 = util_now();
    const char *m = build_fails("    local x = g:embed(g:weight(\"e\", {64, 16}), g:input(\"ids\"))\n"
                                "    while true do x = g:silu(x) end\n",
                                TOY_CONFIG, &text, &path);
    assert_starts_with(m, at(path, line_of(text, "g:silu")));
    assert_contains(m, "the graph has 524288 nodes, the most kiln builds");
    assert_true(util_now() - t0 < 60);
    free(text);
    free(path);
}

/* ---------------------------------------------------------------- option tables */

/* The body of a toy build whose `call` line passes options; spec_build must fail at that line
 * with a message containing every string of `want` (NULL-terminated). */
static void expect_option_error(const char *body, const char *call, const char *const *want)
{
    char *text, *path;
    const char *m = build_fails(body, TOY_CONFIG, &text, &path);
    char *where = xasprintf("%s: ", at(path, line_of(text, call)));
    assert_starts_with(m, where);
    for (int i = 0; want[i]; i++)
        assert_contains(m, want[i]);
    free(where);
    free(text);
    free(path);
}

#define EMBED_X "    local x = g:embed(g:weight(\"embed\", { 16, 8 }), g:input(\"ids\"))\n"
#define HEAD "    return g:logits(y, g:weight(\"embed\", { 16, 8 }))\n"

static void test_options_unknown_key(void **state)
{
    (void)state;
    /* issue 13: {sliding_window = 16} was silently no window */
    static const struct {
        const char *body, *call, *want[3];
    } cases[] = {
        {EMBED_X "    local y = g:attention(x, x, x, { heads = 2, head_dim = 4, sliding_window = 16 })\n" HEAD,
         "g:attention",
         {"attention: unknown key 'sliding_window' (did you mean 'window'?); known keys: heads, "
          "kv_heads, head_dim, causal, window, alibi, softcap, scale",
          NULL}},
        {EMBED_X "    local y = g:moe(x, { router = g:weight(\"r\", { 4, 8 }), gate = g:weight(\"g\", { 4, 6, 8 }),\n"
                 "      up = g:weight(\"u\", { 4, 6, 8 }), down = g:weight(\"d\", { 4, 8, 6 }), top_k = 2, renormalise = false })\n" HEAD,
         "g:moe",
         {"moe: unknown key 'renormalise' (did you mean 'renormalize'?); known keys: router, "
          "gate, up, down, top_k, renormalize, act, shared",
          NULL}},
        {EMBED_X "    local y = g:moe(x, { router = g:weight(\"r\", { 4, 8 }), gate = g:weight(\"g\", { 4, 6, 8 }),\n"
                 "      up = g:weight(\"u\", { 4, 6, 8 }), down = g:weight(\"d\", { 4, 8, 6 }), top_k = 2,\n"
                 "      shared = { gate = g:weight(\"sg\", { 6, 8 }), up = g:weight(\"su\", { 6, 8 }),\n"
                 "                 down = g:weight(\"sd\", { 8, 6 }), gate_wieght = g:weight(\"sw\", { 1, 8 }) } })\n" HEAD,
         "g:moe",
         {"moe: shared: unknown key 'gate_wieght' (did you mean 'gate_weight'?); known keys: "
          "gate, up, down, gate_weight",
          NULL}},
        {EMBED_X "    local y = g:rope(x, g:input(\"positions\"), { head_dim = 4, params = cfg:rope(), rotary_dims = 2 })\n" HEAD,
         "y = g:rope",
         {"rope: unknown key 'rotary_dims' (did you mean 'rotary_dim'?); known keys: head_dim, "
          "params, rotary_dim, interleaved",
          NULL}},
        /* the table cfg:rope() returns, edited with a misspelt field */
        {EMBED_X "    local p = cfg:rope()\n"
                 "    p.rope_theta = 5e5\n"
                 "    local y = g:rope(x, g:input(\"positions\"), { head_dim = 4, params = p })\n" HEAD,
         "y = g:rope",
         {"rope: params: unknown key 'rope_theta' (did you mean 'theta'?); known keys: type, "
          "theta, partial, factor, attention_factor, max_position_embeddings, ",
          NULL}},
        {EMBED_X "    local y = g:pool(x, { mode = \"mean\", normalise = true })\n",
         "g:pool",
         {"pool: unknown key 'normalise' (did you mean 'normalize'?); known keys: mode, normalize",
          NULL}},
        {EMBED_X "    local y = g:rms_norm(x, g:weight(\"n\", { 8 }), 1e-5, { unit_offset = 1 })\n" HEAD,
         "g:rms_norm",
         {"rms_norm: unknown key 'unit_offset' (did you mean 'offset'?); known keys: offset", NULL}},
        {"    local w = cfg:int(\"hidden_size\", 8, { minimum = 0 })\n",
         "cfg:int",
         {"cfg:int: unknown key 'minimum' (did you mean 'min'?); known keys: min, max", NULL}},
        {"    local r = cfg:rope { theta = 1e6 }\n",
         "cfg:rope",
         {"cfg:rope: unknown key 'theta' (did you mean 'theta_field'?); known keys: layer_type, "
          "theta_field, default_theta",
          NULL}},
        /* nothing close: no suggestion, only the list */
        {EMBED_X "    local y = g:attention(x, x, x, { heads = 2, head_dim = 4, xyz = 1 })\n" HEAD,
         "g:attention",
         {"attention: unknown key 'xyz'; known keys: heads,", NULL}},
        /* positional values are not options */
        {EMBED_X "    local y = g:attention(x, x, x, { 2, head_dim = 4 })\n" HEAD,
         "g:attention",
         {"attention: options are named (key = value), got a value under the key the integer 1",
          NULL}},
        /* a kiln.lua-style helper (or the spec's own) checks its table with kiln.options; the
         * error names the line that called kiln.options, in the helper */
        {"    local function block(opts)\n"
         "      opts = kiln.options(opts, \"block\", { heads = \"integer\", causal = \"boolean\" })\n"
         "      return opts\n"
         "    end\n"
         "    assert(kiln.options(nil, \"block\", {}) == nil)\n"
         "    local y = block({ heads = 2, casual = true })\n",
         "kiln.options(opts",
         {"block: unknown key 'casual' (did you mean 'causal'?); known keys: causal, heads",
          NULL}},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++)
        expect_option_error(cases[i].body, cases[i].call, cases[i].want);
}

/* g:mla_attention: its options checked as every op's, and graph_mla's shape errors located at
 * the spec line */
static void test_mla_options(void **state)
{
    (void)state;
#define MLA_IN                                                                                    \
    EMBED_X "    local qn, qp = g:linear(x, g:weight(\"qn\", { 8, 8 })), g:linear(x, g:weight(\"qp\", { 4, 8 }))\n" \
    "    local c, kp = g:linear(x, g:weight(\"c\", { 6, 8 })), g:linear(x, g:weight(\"kp\", { 2, 8 }))\n"
    static const struct {
        const char *body, *call, *want[3];
    } cases[] = {
        {MLA_IN "    local o = g:mla_attention(qn, qp, c, kp, { kvb = g:weight(\"kv_b\", { 16, 6 }), heads = 2,\n"
                "      nope_dim = 4, rope_dim = 2, v_dim = 4 })\n",
         "g:mla_attention",
         {"mla_attention: unknown key 'kvb' (did you mean 'kv_b'?); known keys: kv_b, heads, "
          "nope_dim, rope_dim, v_dim, scale",
          NULL}},
        {MLA_IN "    local o = g:mla_attention(qn, qp, c, kp, { heads = 2, nope_dim = 4, rope_dim = 2, v_dim = 4 })\n",
         "g:mla_attention", {"mla_attention: option 'kv_b' is required", NULL}},
        {MLA_IN "    local o = g:mla_attention(qn, qp, c, kp, { kv_b = g:weight(\"kv_b\", { 16, 6 }), heads = 2,\n"
                "      nope_dim = 4, rope_dim = 2, v_dim = 4.5 })\n",
         "g:mla_attention", {"mla_attention: option 'v_dim' must be an integer", NULL}},
        /* kv_b of 2 * (4 + 3) rows for v_dim 4 */
        {MLA_IN "    local o = g:mla_attention(qn, qp, c, kp, { kv_b = g:weight(\"kv_b\", { 14, 6 }), heads = 2,\n"
                "      nope_dim = 4, rope_dim = 2, v_dim = 4 })\n",
         "g:mla_attention",
         {"mla_attention: kv_b [heads*(nope_dim+v_dim), rank] should be [16, 6], got weight 'kv_b' "
          "[14, 6]",
          NULL}},
    };
#undef MLA_IN
    for (size_t i = 0; i < ARRAY_LEN(cases); i++)
        expect_option_error(cases[i].body, cases[i].call, cases[i].want);
}

static void test_options_value_types(void **state)
{
    (void)state;
    /* no silent coercion: which option, what was given, what is expected */
    static const struct {
        const char *body, *call, *want[3];
    } cases[] = {
        {EMBED_X "    local y = g:attention(x, x, x, { heads = 2, head_dim = 4, window = 0.5 })\n" HEAD,
         "g:attention",
         {"attention: option 'window' must be an integer (a whole number), got the number 0.5",
          NULL}},
        {EMBED_X "    local y = g:attention(x, x, x, { heads = 2, head_dim = 4, causal = 1 })\n" HEAD,
         "g:attention",
         {"attention: option 'causal' must be a boolean (true or false), got the integer 1", NULL}},
        {EMBED_X "    local y = g:attention(x, x, x, { heads = \"2\", head_dim = 4 })\n" HEAD,
         "g:attention",
         {"attention: option 'heads' must be an integer (a whole number), got the string \"2\"",
          NULL}},
        {EMBED_X "    local y = g:attention(x, x, x, { heads = 2, head_dim = 4, scale = 0 / 0 })\n" HEAD,
         "g:attention",
         {"attention: option 'scale' must be a finite number, got the number ", NULL}},
        {EMBED_X "    local y = g:attention(x, x, x, { heads = 2, head_dim = 4, softcap = -30 })\n" HEAD,
         "g:attention",
         {"attention: option 'softcap' is -30; expected 0 (none) or a positive number", NULL}},
        {EMBED_X "    local y = g:attention(x, x, x, { heads = 2, head_dim = 4, window = 2^40 })\n" HEAD,
         "g:attention",
         {"attention: option 'window' is 1099511627776; expected an integer within +-2^30", NULL}},
        {EMBED_X "    local y = g:attention(x, x, x, { head_dim = 4 })\n" HEAD,
         "g:attention",
         {"attention: option 'heads' is required", NULL}},
        /* range checks of the op itself */
        {EMBED_X "    local y = g:attention(x, x, x, { heads = 0, head_dim = 4 })\n" HEAD,
         "g:attention",
         {"attention: heads 0, kv_heads 0, head_dim 4 must be positive", NULL}},
        {EMBED_X "    local y = g:moe(x, { router = g:weight(\"r\", { 4, 8 }), gate = g:weight(\"g\", { 4, 6, 8 }),\n"
                 "      up = g:weight(\"u\", { 4, 6, 8 }), down = g:weight(\"d\", { 4, 8, 6 }), top_k = 5 })\n" HEAD,
         "g:moe",
         {"moe: top_k 5 must be between 1 and the number of experts 4", NULL}},
        {EMBED_X "    local y = g:moe(x, { router = g:weight(\"r\", { 4, 8 }), gate = g:weight(\"g\", { 4, 6, 8 }),\n"
                 "      up = g:weight(\"u\", { 4, 6, 8 }), down = g:weight(\"d\", { 4, 8, 6 }), top_k = 2, act = \"swish\" })\n" HEAD,
         "g:moe",
         {"moe: option 'act' is \"swish\"; expected one of silu, gelu, gelu_tanh, relu", NULL}},
        {EMBED_X "    local y = g:moe(x, { router = g:weight(\"r\", { 4, 8 }), gate = g:weight(\"g\", { 4, 6, 8 }),\n"
                 "      up = g:weight(\"u\", { 4, 6, 8 }), down = g:weight(\"d\", { 4, 8, 6 }), top_k = 2, routing = \"sparse\" })\n" HEAD,
         "g:moe",
         {"moe: option 'routing' is \"sparse\"; expected one of softmax, sparsemixer", NULL}},
        {EMBED_X "    local y = g:moe(x, { router = g:weight(\"r\", { 4, 8 }), gate = g:weight(\"g\", { 4, 6, 8 }),\n"
                 "      up = g:weight(\"u\", { 4, 6, 8 }), down = g:weight(\"d\", { 4, 8, 6 }), top_k = 2, renormalize = false, routing = \"sparsemixer\" })\n" HEAD,
         "g:moe",
         {"moe: routing \"sparsemixer\" needs option 'jitter_eps' (the config's router_jitter_noise)", NULL}},
        {EMBED_X "    local y = g:moe(x, { router = g:weight(\"r\", { 4, 8 }), gate = g:weight(\"g\", { 4, 6, 8 }),\n"
                 "      up = g:weight(\"u\", { 4, 6, 8 }), down = g:weight(\"d\", { 4, 8, 6 }), top_k = 2, jitter_eps = 0.01 })\n" HEAD,
         "g:moe",
         {"moe: option 'jitter_eps' applies only to routing \"sparsemixer\"", NULL}},
        {EMBED_X "    local y = g:moe(x, { router = g:weight(\"r\", { 4, 8 }), gate = g:weight(\"g\", { 4, 6, 8 }),\n"
                 "      up = g:weight(\"u\", { 4, 6, 8 }), down = g:weight(\"d\", { 4, 8, 6 }), top_k = 2, routing = \"sparsemixer\", jitter_eps = 0.01 })\n" HEAD,
         "g:moe",
         {"moe: routing \"sparsemixer\" picks exactly 2 experts and does not renormalise their weights; got top_k 2 and renormalize = true", NULL}},
        /* longrope tables edited into the params: one entry per rotary pair */
        {EMBED_X "    local p = cfg:rope()\n"
                 "    p.type, p.short_factor, p.long_factor = \"longrope\", { 1, 1, 1 }, { 2, 2, 2 }\n"
                 "    local y = g:rope(x, g:input(\"positions\"), { head_dim = 4, params = p })\n" HEAD,
         "y = g:rope",
         {"rope: params.short_factor and long_factor have 3 entries; expected one per rotary pair, "
          "rotary_dim / 2 = 2",
          NULL}},
        {EMBED_X "    local p = cfg:rope()\n"
                 "    p.type = \"longrope\"\n"
                 "    local y = g:rope(x, g:input(\"positions\"), { head_dim = 4, params = p })\n" HEAD,
         "y = g:rope",
         {"rope: longrope params need short_factor and long_factor", NULL}},
        {EMBED_X "    local y = g:moe(x, { router = \"r\", gate = g:weight(\"g\", { 4, 6, 8 }),\n"
                 "      up = g:weight(\"u\", { 4, 6, 8 }), down = g:weight(\"d\", { 4, 8, 6 }), top_k = 2 })\n" HEAD,
         "g:moe",
         {"moe: option 'router' must be a tensor (a value g: returned), got the string \"r\"",
          NULL}},
        {EMBED_X "    local y = g:pool(x, { mode = \"max\" })\n",
         "g:pool",
         {"pool: option 'mode' is \"max\"; expected one of mean, cls, last", NULL}},
        {EMBED_X "    local y = g:rms_norm(x, g:weight(\"n\", { 8 }), 1e-5, { offset = 0.5 })\n" HEAD,
         "g:rms_norm",
         {"rms_norm: option 'offset' must be 1 or true (scale by 1 + w) or 0 or false, got the "
          "number 0.5",
          NULL}},
        {EMBED_X "    local p = cfg:rope()\n"
                 "    p.truncate = 0\n"
                 "    local y = g:rope(x, g:input(\"positions\"), { head_dim = 4, params = p })\n" HEAD,
         "y = g:rope",
         {"rope: params: option 'truncate' must be a boolean (true or false), got the integer 0",
          NULL}},
        {EMBED_X "    local y = g:rope(x, g:input(\"positions\"), { head_dim = 4, params = cfg:rope(), interleaved = \"yes\" })\n" HEAD,
         "y = g:rope",
         {"rope: option 'interleaved' must be a boolean (true or false), got the string \"yes\"",
          NULL}},
        {"    local w = cfg:int(\"hidden_size\", 8, { min = 0.5 })\n",
         "cfg:int",
         {"cfg:int: option 'min' must be an integer (a whole number), got the number 0.5", NULL}},
        {EMBED_X "    local y = g:attention(x, x, x, \"window=4\")\n" HEAD,
         "g:attention",
         {"attention: the options must be a table {key = value, ...}, got the string \"window=4\"",
          NULL}},
        {"    local b = cfg:bool(\"use_cache\", 1)\n",
         "cfg:bool",
         {"cfg:bool(\"use_cache\", default): the default must be true or false, got the integer 1",
          NULL}},
        {"    kiln.options({ heads = 2 }, \"block\", { heads = \"int\" })\n",
         "kiln.options",
         {"kiln.options: block declares key 'heads' of type 'int'; types are any, integer,", NULL}},
        {"    kiln.options({ heads = 2.5 }, \"block\", { heads = \"integer\" })\n",
         "kiln.options",
         {"block: option 'heads' must be an integer (a whole number), got the number 2.5", NULL}},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++)
        expect_option_error(cases[i].body, cases[i].call, cases[i].want);

    /* what is right is accepted: whole floats (H / heads), every key of every op */
    char *text = toy_spec(
        EMBED_X
        "    local p = cfg:rope { theta_field = \"rope_theta\", default_theta = 1e4 }\n"
        "    local r = g:rope(x, g:input(\"positions\"), { head_dim = 4, params = p, rotary_dim = 4.0, interleaved = false })\n"
        "    local a = g:attention(r, x, x, { heads = 8 / 4, kv_heads = 2, head_dim = 4, causal = true,\n"
        "                                     window = 4.0, alibi = false, softcap = 0, scale = 0.5 })\n"
        "    local n = g:rms_norm(a, g:weight(\"n\", { 8 }), 1e-5, { offset = true })\n"
        "    n = g:rms_norm(n, g:weight(\"n\", { 8 }), 1e-5, { offset = 0 })\n"
        "    assert(cfg:int(\"hidden_size\", 8, { min = 1, max = 8 }) == 8)\n"
        "    local o = kiln.options({ heads = 2.0, f = print, t = x }, \"block\", { heads = \"integer\", f = \"function\", t = \"tensor\", z = \"any\" })\n"
        "    assert(o.heads == 2)\n"
        "    local y = g:moe(n, { router = g:weight(\"r\", { 4, 8 }), gate = g:weight(\"g\", { 4, 6, 8 }),\n"
        "      up = g:weight(\"u\", { 4, 6, 8 }), down = g:weight(\"d\", { 4, 8, 6 }), top_k = 2,\n"
        "      renormalize = false, act = \"gelu\", shared = { gate = g:weight(\"sg\", { 6, 8 }),\n"
        "      up = g:weight(\"su\", { 6, 8 }), down = g:weight(\"sd\", { 8, 6 }), gate_weight = g:weight(\"sw\", { 1, 8 }) } })\n"
        HEAD);
    kgraph *g = build(text, TOY_CONFIG, NULL);
    if (!g)
        fail_msg("%s", kerr_msg(&E));
    int seen = 0, norms = 0;
    for (int i = 0; i < g->n; i++) {
        const kg_node *n = &g->nodes[i];
        if (n->op == KG_ATTENTION) {
            assert_int_equal(n->attn.n_heads, 2);
            assert_int_equal(n->attn.window, 4);
            assert_true(n->attn.scale == 0.5);
            seen++;
        } else if (n->op == KG_MOE) {
            assert_int_equal(n->moe.renormalize, 0);
            assert_int_equal(n->moe.act, KILN_ACT_GELU);
            assert_int_equal(n->moe.shared_gate, 1);
            seen++;
        } else if (n->op == KG_RMS_NORM) {
            assert_int_equal(n->unit_offset, norms++ == 0); /* offset = true, then 0 */
            seen++;
        } else if (n->op == KG_ROPE) {
            assert_int_equal(n->rope.rot_dim, 4);
            seen++;
        }
    }
    assert_int_equal(seen, 5);
    assert_int_equal(norms, 2);
    graph_free(g);
    free(text);
}

static void test_options_archspec_table(void **state)
{
    (void)state;
    /* an unknown key of the declaration, through kiln.archspec (a tail call: the line is found
     * where the key is written) and as a raw table read by spec_probe */
    static const char *const heads[] = {"local kiln = require \"kiln\"\nreturn kiln.archspec {\n",
                                        "return {\n"};
    static const struct {
        const char *decl, *key, *want;
    } cases[] = {
        {"  name = \"toy\",\n  architectures = { \"X\" },\n  task = \"generate\",\n"
         "  ignores = { \"x\" },\n  build = function() end,\n",
         "ignores =", "archspec: unknown key 'ignores' (did you mean 'ignore'?); known keys: "
                      "architectures, build, ignore, name, task"},
        /* a misspelt required key: the hint comes before "'architectures' must list ..." */
        {"  name = \"toy\",\n  architecture = { \"X\" },\n  task = \"generate\",\n"
         "  build = function() end,\n",
         "architecture =", "archspec: unknown key 'architecture' (did you mean 'architectures'?)"},
        {"  name = \"toy\",\n  architectures = { \"X\" },\n  task = \"generate\",\n"
         "  build = function() end,\n  description = \"a toy\",\n",
         "description =", "archspec: unknown key 'description'; known keys: architectures, build, "
                          "ignore, name, task"},
    };
    for (size_t h = 0; h < ARRAY_LEN(heads); h++)
        for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
            char *text = xasprintf("%s%s}\n", heads[h], cases[i].decl), *path;
            const char *m = probe_fails(text, &path);
            char *want = xasprintf("%s: %s", at(path, line_of(text, cases[i].key)), cases[i].want);
            assert_starts_with(m, want);
            free(want);
            free(path);
            free(text);
        }
    /* types through kiln.archspec */
    char *path;
    const char *m = probe_fails("local kiln = require \"kiln\"\n"
                                "return kiln.archspec { name = \"toy\", architectures = { \"X\" },\n"
                                "  task = \"generate\", build = \"build\" }\n",
                                &path);
    assert_contains(m, "archspec: option 'build' must be a function, got the string \"build\"");
    assert_contains(m, path);
    free(path);
    /* every shipped archspec still loads */
    DIR *dir = opendir(LIB);
    assert_non_null(dir);
    int loaded = 0;
    for (struct dirent *e; (e = readdir(dir));) {
        size_t l = strlen(e->d_name);
        if (l < 5 || strcmp(e->d_name + l - 4, ".lua") != 0 || strcmp(e->d_name, "kiln.lua") == 0)
            continue;
        char *p = xasprintf("%s/%s", LIB, e->d_name);
        spec_info s;
        kerr_clear(&E);
        if (spec_probe(p, LIB, &s, &E))
            fail_msg("%s: %s", p, kerr_msg(&E));
        spec_info_free(&s);
        free(p);
        loaded++;
    }
    closedir(dir);
    assert_true(loaded >= 6);
}

/* g:logits(x, head [, bias] [, {softcap=}] [, name]): Gemma 2's final soft cap is an option of
 * the head, checked as every option table is. */
static void test_logits_options(void **state)
{
    (void)state;
#define LG "    return g:logits(x, g:weight(\"embed\", { 16, 8 }), "
    static const struct {
        const char *body, *want[2];
    } cases[] = {
        {EMBED_X LG "{ sofcap = 30 })\n",
         {"logits: unknown key 'sofcap' (did you mean 'softcap'?); known keys: softcap", NULL}},
        {EMBED_X LG "nil, { softcap = -30 })\n",
         {"logits: option 'softcap' is -30; expected 0 (none) or a positive number", NULL}},
        {EMBED_X LG "{ softcap = \"30\" })\n",
         {"logits: option 'softcap' must be a finite number, got the string \"30\"", NULL}},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++)
        expect_option_error(cases[i].body, "g:logits", cases[i].want);

    /* a bias, the cap and a name; then no bias (nil) and a cap of 0 (none) */
    static const char *const ok[] = {
        EMBED_X LG "g:weight(\"b\", { 16 }), { softcap = 30 }, \"out\")\n",
        EMBED_X LG "nil, { softcap = 0 })\n"};
    for (int i = 0; i < 2; i++) {
        char *text = toy_spec(ok[i]);
        kgraph *g = build(text, TOY_CONFIG, NULL);
        if (!g)
            fail_msg("%s", kerr_msg(&E));
        const kg_node *o = &g->nodes[g->output];
        assert_int_equal(o->op, KG_LOGITS);
        assert_true(o->softcap == (i == 0 ? 30.0 : 0.0));
        assert_int_equal(o->n_in > 2 && o->in[2] >= 0, i == 0);
        if (i == 0)
            assert_string_equal(o->name, "out");
        graph_free(g);
        free(text);
    }
#undef LG
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_probe_good),
        T(test_build_good),
        T(test_build_uses_checkpoint),
        T(test_syntax_error),
        T(test_runtime_error_at_load),
        T(test_runtime_error_in_build),
        T(test_failing_op),
        T(test_failing_op_through_wrappers),
        T(test_bad_argument),
        T(test_bad_argument_located),
        T(test_missing_config_field),
        T(test_config_defaults_and_rope),
        T(test_bad_declarations_raw),
        T(test_bad_declarations_dsl),
        T(test_build_without_output),
        T(test_build_error_after_probe_changes),
        T(test_filter_ignored),
        T(test_llama_probe),
        T(test_llama_old_style),
        T(test_llama_new_style_mistral),
        T(test_llama_mistral_without_window),
        T(test_llama_many_layers),
        T(test_llama_missing_field),
        T(test_sandbox_endless_loop),
        T(test_sandbox_memory),
        T(test_sandbox_libraries),
        T(test_sandbox_require),
        T(test_sandbox_patterns),
        T(test_sandbox_messages),
        T(test_sandbox_files),
        T(test_sandbox_c_loops),
        T(test_sandbox_print_capped),
        T(test_sandbox_finalizers),
        T(test_cfg_int_ranges),
        T(test_graph_node_cap),
        T(test_options_unknown_key),
        T(test_mla_options),
        T(test_options_value_types),
        T(test_options_archspec_table),
        T(test_logits_options),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
