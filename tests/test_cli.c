/* test_cli — the kilnc command line, run as a program (the binary named by $KILNC).
 *
 * Usage and option errors (exit 2: one line naming the problem, then a hint to --help), strict
 * numbers (util_parse_*, every numeric option), error buffers that never print empty,
 * `kilnc archs`, `kilnc check` on a tiny random-weight Llama
 * checkpoint the test writes itself and on its broken variants (exit 1, with the message that
 * names the file and the tensor or field), and `kilnc graph`. Every run's stderr is also checked
 * for sanitizer reports, since under `make SAN=1 check` kilnc is the sanitized build.
 */
#include "testutil.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>

extern char **environ;

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

/* Runs `bin` with the given arguments (NULL-terminated), capturing stdout and stderr. */
static run run_v(const char *bin, const char *first, va_list ap)
{
    const char *argv[32];
    int n = 0;
    argv[n++] = bin;
    for (const char *a = first; a; a = va_arg(ap, const char *)) {
        assert_true(n < 31);
        argv[n++] = a;
    }
    argv[n] = NULL;
    run r = tu_run_argv(D, NULL, argv);
    /* no crash, whatever the input */
    assert_true(r.code < 128);
    return r;
}

static run kilnc(const char *first, ...)
{
    va_list ap;
    va_start(ap, first);
    run r = run_v(KILNC, first, ap);
    va_end(ap);
    return r;
}

static run kiln(const char *first, ...)
{
    va_list ap;
    va_start(ap, first);
    run r = run_v(KILN, first, ap);
    va_end(ap);
    return r;
}

static int count_lines_starting(const char *text, const char *prefix)
{
    int n = 0;
    size_t k = strlen(prefix);
    for (const char *p = text; p && *p;) {
        if (strncmp(p, prefix, k) == 0)
            n++;
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    return n;
}

/* A folder `name` under D with a tiny Llama checkpoint (variant o). */
static char *model(const char *name, const tu_llama *o)
{
    char *dir = tu_path(D, name);
    tu_mkdir(dir);
    tu_write_llama(dir, o);
    return dir;
}

/* The line of archspecs/llama.lua holding `needle`, as "llama.lua:N". */
static char *llama_line(const char *needle)
{
    char *src = xasprintf("%s/archspecs/llama.lua", KILN_SOURCE_DIR);
    char *text = tu_read(src, NULL);
    const char *p = strstr(text, needle);
    assert_non_null(p);
    int line = 1;
    for (const char *q = text; q < p; q++)
        line += *q == '\n';
    char *r = xasprintf("llama.lua:%d", line);
    free(text);
    free(src);
    return r;
}

/* ---------------------------------------------------------------- usage */

static void test_help(void **state)
{
    (void)state;
    static const char *forms[] = {"--help", "-h", "help"};
    for (size_t i = 0; i < ARRAY_LEN(forms); i++) {
        run r = kilnc(forms[i], NULL);
        EXPECT_CODE(r, 0);
        assert_contains(r.out, "usage: kilnc COMMAND [ARGS...]");
        assert_contains(r.out, "  archs ");
        assert_contains(r.out, "  check ");
        assert_contains(r.out, "  graph ");
        assert_string_equal(r.err, "");
        tu_run_free(&r);
    }
    run r = kilnc("--version", NULL);
    EXPECT_CODE(r, 0);
    char *want = xasprintf("kilnc %s (commit ", KILN_VERSION);
    assert_starts_with(r.out, want);
    free(want);
    assert_true(strlen(r.out) > strlen("kilnc 0.1.0 (commit )\n")); /* a commit is named */
    assert_string_equal(r.out + strlen(r.out) - 2, ")\n");
    tu_run_free(&r);
}

static void test_command_help(void **state)
{
    (void)state;
    run r = kilnc("archs", "--help", NULL);
    EXPECT_CODE(r, 0);
    assert_starts_with(r.out, "usage: kilnc archs");
    tu_run_free(&r);
    r = kilnc("check", "--help", NULL);
    EXPECT_CODE(r, 0);
    assert_starts_with(r.out, "usage: kilnc check MODEL_DIR [options]");
    assert_contains(r.out, "--spec FILE");
    assert_contains(r.out, "--spec-path DIR");
    assert_contains(r.out, "--strict");
    assert_string_equal(r.err, "");
    tu_run_free(&r);
    static const char *const cmds[] = {"ref", "compile"};
    for (size_t i = 0; i < ARRAY_LEN(cmds); i++) {
        r = kilnc(cmds[i], "--help", NULL);
        EXPECT_CODE(r, 0);
        char *want = xasprintf("usage: kilnc %s MODEL_DIR", cmds[i]);
        assert_starts_with(r.out, want);
        free(want);
        assert_string_equal(r.err, "");
        tu_run_free(&r);
    }
    r = kilnc("graph", "-h", NULL);
    EXPECT_CODE(r, 0);
    assert_starts_with(r.out, "usage: kilnc graph MODEL_DIR [--dump-after=PASS] [options]");
    assert_contains(r.out, "Passes, in order: build, bind_weights");
    assert_contains(r.out, "--dump-after=PASS");
    tu_run_free(&r);
}

static void test_usage_errors(void **state)
{
    (void)state;
    /* one line saying what is wrong, then a hint; never the whole usage */
    run r = kilnc(NULL);
    EXPECT_CODE(r, 2);
    assert_string_equal(r.err, "kilnc: error: missing COMMAND (one of: archs, check, graph, ref, "
                               "compile, synth)\nrun 'kilnc --help' for usage\n");
    assert_string_equal(r.out, "");
    tu_run_free(&r);
    r = kilnc("compile-all", NULL);
    EXPECT_CODE(r, 2);
    assert_string_equal(r.err, "kilnc: error: unknown command 'compile-all' (commands: archs, "
                               "check, graph, ref, compile, synth)\nrun 'kilnc --help' for usage\n");
    tu_run_free(&r);
    r = kilnc("check", "--frobnicate", D, NULL);
    EXPECT_CODE(r, 2);
    assert_string_equal(r.err, "kilnc check: error: unknown option '--frobnicate'\n"
                               "run 'kilnc check --help' for usage\n");
    tu_run_free(&r);
    r = kilnc("archs", "--dump-after=build", NULL); /* only graph takes it */
    EXPECT_CODE(r, 2);
    assert_contains(r.err, "unknown option '--dump-after=build'");
    tu_run_free(&r);
    static const char *const cmds[] = {"check", "graph", "ref", "compile"};
    for (size_t i = 0; i < ARRAY_LEN(cmds); i++) {
        r = kilnc(cmds[i], NULL);
        EXPECT_CODE(r, 2);
        char *want = xasprintf("kilnc %s: error: missing MODEL_DIR (a Hugging Face model folder)\n"
                               "run 'kilnc %s --help' for usage\n",
                               cmds[i], cmds[i]);
        assert_string_equal(r.err, want);
        free(want);
        tu_run_free(&r);
    }
    r = kilnc("compile", D, NULL);
    EXPECT_CODE(r, 2);
    assert_starts_with(r.err, "kilnc compile: error: missing -o OUT_DIR");
    tu_run_free(&r);
    r = kilnc("ref", D, NULL);
    EXPECT_CODE(r, 2);
    assert_starts_with(r.err, "kilnc ref: error: missing a prompt: give --ids LIST or --prompt");
    tu_run_free(&r);
    r = kilnc("check", "a", "b", NULL);
    EXPECT_CODE(r, 2);
    assert_starts_with(r.err, "kilnc check: error: unexpected argument 'b' (one MODEL_DIR "
                              "expected, already have 'a')\n");
    tu_run_free(&r);
    r = kilnc("check", D, "--spec", NULL);
    EXPECT_CODE(r, 2);
    assert_starts_with(r.err, "kilnc check: error: --spec needs a value\n");
    tu_run_free(&r);
    r = kilnc("archs", D, NULL);
    EXPECT_CODE(r, 2);
    assert_starts_with(r.err, "kilnc archs: error: unexpected argument");
    tu_run_free(&r);
}

/* ---------------------------------------------------------------- kiln's command line */

static void test_kiln_usage(void **state)
{
    (void)state;
    run r = kiln("--version", NULL);
    EXPECT_CODE(r, 0);
    char *want = xasprintf("kiln %s (commit ", KILN_VERSION);
    assert_starts_with(r.out, want);
    free(want);
    tu_run_free(&r);
    r = kiln("--help", NULL);
    EXPECT_CODE(r, 0);
    assert_starts_with(r.out, "usage: kiln COMMAND [ARGS...]");
    tu_run_free(&r);
    /* every command has --help, on stdout, exit 0 */
    static const char *const cmds[] = {"run", "serve", "inspect", "tokenize", "chat-template"};
    for (size_t i = 0; i < ARRAY_LEN(cmds); i++) {
        r = kiln(cmds[i], "--help", NULL);
        EXPECT_CODE(r, 0);
        want = xasprintf("usage: kiln %s ", cmds[i]);
        assert_starts_with(r.out, want);
        free(want);
        assert_string_equal(r.err, "");
        tu_run_free(&r);
        /* and a usage error is one line and a hint */
        r = kiln(cmds[i], "--no-such-option", NULL);
        EXPECT_CODE(r, 2);
        want = xasprintf("kiln %s: error: ", cmds[i]);
        assert_starts_with(r.err, want);
        free(want);
        want = xasprintf("\nrun 'kiln %s --help' for usage\n", cmds[i]);
        assert_contains(r.err, want);
        free(want);
        assert_int_equal(count_lines_starting(r.err, ""), 2); /* no usage dump */
        tu_run_free(&r);
    }
    r = kiln("frobnicate", NULL);
    EXPECT_CODE(r, 2);
    assert_starts_with(r.err, "kiln: error: unknown command 'frobnicate' (commands: run, serve, "
                              "inspect, tokenize");
    tu_run_free(&r);
}

/* ---------------------------------------------------------------- strict numbers */

/* util_parse_*: the message for `text`, or "" when it parses (value in *v). */
static const char *pi64(const char *text, int64_t min, int64_t max, int64_t *v)
{
    static kerr e;
    kerr_clear(&e);
    util_parse_i64("--opt", text, min, max, v, &e);
    return kerr_msg(&e);
}

static const char *pf64(const char *text, double min, double max, unsigned fl, double *v)
{
    static kerr e;
    kerr_clear(&e);
    util_parse_f64("--opt", text, min, max, fl, v, &e);
    return kerr_msg(&e);
}

static void test_parse_numbers(void **state)
{
    (void)state;
    int64_t v = 7;
    assert_string_equal(pi64("42", 0, 100, &v), "");
    assert_int_equal(v, 42);
    assert_string_equal(pi64("-3", -5, 5, &v), "");
    assert_int_equal(v, -3);
    assert_string_equal(pi64("-9223372036854775808", INT64_MIN, INT64_MAX, &v), "");
    assert_true(v == INT64_MIN);
    static const char *const junk[] = {"abc", "12x", "", " 1", "1 ", "+1", "0x10", "1.0", "-", "1e3"};
    for (size_t i = 0; i < ARRAY_LEN(junk); i++) {
        char *want = xasprintf("--opt: '%s' is not an integer (expected 0 to 100)", junk[i]);
        v = 7;
        assert_string_equal(pi64(junk[i], 0, 100, &v), want);
        assert_int_equal(v, 7); /* untouched */
        free(want);
    }
    /* overflow is refused, never wrapped (atoi gave 1 for 4294967297) */
    assert_string_equal(pi64("4294967297", 0, INT32_MAX, &v),
                        "--opt: '4294967297' is out of range (expected 0 to 2147483647)");
    assert_string_equal(pi64("99999999999999999999", 0, INT64_MAX, &v),
                        "--opt: '99999999999999999999' is out of range (expected 0 to "
                        "9223372036854775807)");
    assert_string_equal(pi64("-1", 0, 5, &v), "--opt: '-1' is out of range (expected 0 to 5)");
    assert_string_equal(pi64("6", 0, 5, &v), "--opt: '6' is out of range (expected 0 to 5)");
    uint64_t u = 0;
    kerr e;
    kerr_clear(&e);
    assert_int_equal(util_parse_u64("--seed", "18446744073709551615", UINT64_MAX, &u, &e), 0);
    assert_true(u == UINT64_MAX);
    assert_int_equal(util_parse_u64("--seed", "18446744073709551616", UINT64_MAX, &u, &e), -1);
    assert_string_equal(kerr_msg(&e), "--seed: '18446744073709551616' is out of range (expected 0 "
                                      "to 18446744073709551615)");
    kerr_clear(&e);
    assert_int_equal(util_parse_u64("--seed", "-1", UINT64_MAX, &u, &e), -1);
    assert_contains(kerr_msg(&e), "'-1' is not a non-negative integer");

    double d = 0;
    assert_string_equal(pf64("0.7", 0, 1, 0, &d), "");
    assert_true(d == 0.7);
    assert_string_equal(pf64("1e-3", 0, 1, 0, &d), "");
    assert_true(d == 1e-3);
    static const char *const nonfinite[] = {"nan", "NaN", "inf", "-inf", "infinity", "1e999"};
    for (size_t i = 0; i < ARRAY_LEN(nonfinite); i++) {
        char *want = xasprintf("--opt: '%s' is not a finite number (expected a number at least 0 "
                               "and at most 1)",
                               nonfinite[i]);
        assert_string_equal(pf64(nonfinite[i], 0, 1, 0, &d), want);
        free(want);
    }
    static const char *const fjunk[] = {"abc", "0.5x", "", " 0.5", "0x1p-1", "0.5 "};
    for (size_t i = 0; i < ARRAY_LEN(fjunk); i++)
        assert_contains(pf64(fjunk[i], 0, 1, 0, &d), "is not a number (expected a number");
    assert_string_equal(pf64("0", 0, 1, UTIL_ABOVE_MIN, &d),
                        "--opt: '0' is out of range (expected a number above 0 and at most 1)");
    assert_string_equal(pf64("1.5", 0, 1, 0, &d),
                        "--opt: '1.5' is out of range (expected a number at least 0 and at most 1)");
    assert_string_equal(pf64("1", 0, 1, UTIL_ABOVE_MIN, &d), "");
}

static void test_parse_ids(void **state)
{
    (void)state;
    int64_t *v = NULL;
    kerr e;
    kerr_clear(&e);
    assert_int_equal(util_parse_ids("--ids", "1,22,333", 1000, &v, &e), 3);
    assert_true(v[0] == 1 && v[1] == 22 && v[2] == 333);
    free(v);
    assert_int_equal(util_parse_ids("--ids", "0", 0, &v, &e), 1);
    free(v);
    static const struct {
        const char *in, *msg;
    } bad[] = {
        {"", "--ids: the list is empty (expected ids like 1,2,3)"},
        {"1,", "--ids: item 2 '' is not a non-negative integer"},
        {",1", "--ids: item 1 '' is not a non-negative integer"},
        {"1,,2", "--ids: item 2 '' is not a non-negative integer"},
        {"1,-2", "--ids: item 2 '-2' is not a non-negative integer"},
        {"1, 2", "--ids: item 2 ' 2' is not a non-negative integer"},
        {"1,2x", "--ids: item 2 '2x' is not a non-negative integer"},
        {"1001", "--ids: item 1 '1001' is out of range (expected 0 to 1000)"},
        {"1,99999999999999999999", "--ids: item 2 '99999999999999999999' is out of range"},
        {"123456789012345678901234567890", "--ids: item 1 '123456789012345678901234...' is out "
                                           "of range"},
        {"12345678901234567890123456789x", "--ids: item 1 '123456789012345678901234...' is not a "
                                           "non-negative integer"},
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        kerr_clear(&e);
        v = NULL;
        assert_int_equal(util_parse_ids("--ids", bad[i].in, 1000, &v, &e), -1);
        assert_null(v);
        assert_starts_with(kerr_msg(&e), bad[i].msg);
    }
}

/* kerr never prints an empty message: a first message longer than the buffer keeps its start
 * and a visible marker (kilnc compile --sm 75 printed nothing: its NVRTC log was too long). */
static void test_kerr_long_messages(void **state)
{
    (void)state;
    kerr *e = xcalloc(1, sizeof *e);
    size_t big = 3 * KERR_CAP;
    char *msg = xmalloc(big + 1);
    for (size_t i = 0; i < big; i++)
        msg[i] = i % 80 == 79 ? '\n' : 'a' + (char)(i % 26);
    msg[big] = 0;
    kerr_clear(e);
    kerr_add(e, "NVRTC log: %s", msg);
    const char *m = kerr_msg(e);
    assert_starts_with(m, "NVRTC log: abcdef");
    assert_true(strlen(m) > KERR_CAP / 2 && strlen(m) < KERR_CAP);
    assert_contains(m, " ... (message cut: ");
    assert_contains(m, " more bytes)");
    /* a second message no longer fits: counted, and the text says there were more */
    kerr_add(e, "second: %.300s", msg);
    assert_int_equal(e->n, 2);
    assert_contains(kerr_msg(e), "(more errors; fix the above first)");
    /* a message cut in a UTF-8 character keeps whole characters only */
    kerr_clear(e);
    char *u = xmalloc(2 * KERR_CAP + 1);
    for (size_t i = 0; i < 2 * KERR_CAP; i += 2)
        u[i] = (char)0xc3, u[i + 1] = (char)0xa9; /* é */
    u[2 * KERR_CAP] = 0;
    kerr_add(e, "%s", u);
    m = kerr_msg(e);
    const char *cut = strstr(m, " ... (message cut: ");
    assert_non_null(cut);
    assert_int_equal((cut - m) % 2, 0);
    /* many messages: the first ones kept whole, the overflow counted */
    kerr_clear(e);
    for (int i = 0; i < 2000; i++)
        kerr_add(e, "problem %d: %.40s", i, msg);
    assert_int_equal(e->n, 2000);
    assert_starts_with(kerr_msg(e), "problem 0: abcdef");
    assert_contains(kerr_msg(e), "(more errors; fix the above first)");
    assert_true(strlen(kerr_msg(e)) < KERR_CAP);
    /* an empty message, or a failure that added none, still reads as something */
    kerr_clear(e);
    kerr_add(e, "%s", "");
    assert_true(strlen(kerr_msg(e)) > 10);
    kerr_clear(e);
    assert_string_equal(kerr_msg(e), "");
    /* trailing line breaks (an NVRTC log's) do not make an empty message line */
    kerr_clear(e);
    kerr_add(e, "log:\nline 1\n\n");
    kerr_add(e, "next");
    assert_string_equal(kerr_msg(e), "log:\n  line 1\nnext");
    kerr_clear(e);
    /* kerr_msg then kerr_add: two lines, not one glued line */
    kerr_add(e, "one");
    assert_string_equal(kerr_msg(e), "one");
    kerr_add(e, "two\nmore");
    assert_string_equal(kerr_msg(e), "one\ntwo\n  more");
    free(u);
    free(msg);
    free(e);
}

static void test_kilnc_numeric_options(void **state)
{
    (void)state;
    static const struct {
        const char *flag, *val, *msg;
    } rows[] = {
        {"--max-seq-len", "abc", "--max-seq-len: 'abc' is not an integer (expected 1 to 16777216)"},
        {"--max-batch", "4294967297", "--max-batch: '4294967297' is out of range (expected 1 to "
                                      "16777216)"},
        {"--max-tokens", "", "--max-tokens: '' is not an integer (expected 1 to 16777216)"},
        {"--max-tokens", "0", "--max-tokens: '0' is out of range (expected 1 to 16777216)"},
        {"--max-seq-len", "12x", "--max-seq-len: '12x' is not an integer"},
        {"--sm", "75x", "--sm: '75x' is not an SM (expected a list like 80,89,90a)"},
        {"--sm", "80,,90a", "--sm: '' is not an SM"},
        {"--sm", "80,80", "--sm: sm_80 is listed twice"},
        {"--dtype", "fp8", "--dtype: 'fp8' is not a dtype (expected bf16 or fp16)"},
    };
    char *out = tu_path(D, "o");
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
        run r = kilnc("compile", D, "-o", out, rows[i].flag, rows[i].val, NULL);
        EXPECT_CODE(r, 2);
        char *want = xasprintf("kilnc compile: error: %s", rows[i].msg);
        assert_starts_with(r.err, want);
        assert_contains(r.err, "\nrun 'kilnc compile --help' for usage\n");
        free(want);
        tu_run_free(&r);
    }
    free(out);
    static const struct {
        const char *flag, *val, *msg;
    } refrows[] = {
        {"--max-new", "abc", "--max-new: 'abc' is not an integer (expected 0 to 1000000)"},
        {"--max-new", "-1", "--max-new: '-1' is out of range (expected 0 to 1000000)"},
        {"--ids", "1,x", "--ids: item 2 'x' is not a non-negative integer"},
        {"--ids", "4294967297", "--ids: item 1 '4294967297' is out of range (expected 0 to "
                                "2147483647)"},
    };
    for (size_t i = 0; i < ARRAY_LEN(refrows); i++) {
        run r = strcmp(refrows[i].flag, "--ids")
                    ? kilnc("ref", D, "--ids", "1", refrows[i].flag, refrows[i].val, NULL)
                    : kilnc("ref", D, refrows[i].flag, refrows[i].val, NULL);
        EXPECT_CODE(r, 2);
        char *want = xasprintf("kilnc ref: error: %s", refrows[i].msg);
        assert_starts_with(r.err, want);
        free(want);
        tu_run_free(&r);
    }
}

/* ---------------------------------------------------------------- archs */

static void test_archs(void **state)
{
    (void)state;
    run r = kilnc("archs", NULL);
    EXPECT_CODE(r, 0);
    assert_starts_with(r.out, "ARCHITECTURE");
    assert_contains(r.out, "LlamaForCausalLM");
    assert_contains(r.out, "MistralForCausalLM");
    assert_contains(r.out, "archspecs/llama.lua");
    assert_not_contains(r.out, "(shadowed)");
    tu_run_free(&r);

    char *dir = tu_path(D, "specs");
    tu_mkdir(dir);
    free(tu_write(dir, "mine.lua", "local kiln = require \"kiln\"\n"
                                   "return kiln.archspec { name = \"mine\", architectures = "
                                   "{ \"LlamaForCausalLM\" }, task = \"generate\", build = "
                                   "function(g, cfg) end }\n"));
    free(tu_write(dir, "broken.lua", "return {\n"));
    r = kilnc("archs", "--spec-path", dir, NULL);
    EXPECT_CODE(r, 0);
    assert_contains(r.out, "mine.lua");
    assert_contains(r.out, "llama.lua  (shadowed)");
    assert_contains(r.err, "kilnc archs: warning: spec failed to load: ");
    assert_contains(r.err, "broken.lua");
    tu_run_free(&r);
    free(dir);
}

/* ---------------------------------------------------------------- check */

static void test_check_ok(void **state)
{
    (void)state;
    char *m = model("tiny", NULL);
    run r = kilnc("check", m, NULL);
    EXPECT_CODE(r, 0);
    assert_contains(r.out, "architecture  LlamaForCausalLM\n");
    assert_contains(r.out, "archspecs/llama.lua (llama, task generate)\n");
    assert_contains(r.out, "layers        2, 4 heads / 2 kv heads, head_dim 4\n");
    assert_contains(r.out, "output        logits [T, 64]\n");
    assert_contains(r.out, "parameters    6.74K in 21 tensors (F32 x20, BF16 x1)\n");
    assert_contains(r.out, "checkpoint    21 tensors in 1 file: 21 used, 0 unused\n");
    assert_contains(r.out, "graph         58 nodes\n");
    assert_true(strlen(r.out) >= 3 && strcmp(r.out + strlen(r.out) - 3, "ok\n") == 0);
    assert_string_equal(r.err, ""); /* no warnings */
    tu_run_free(&r);
    /* --strict changes nothing when every tensor is used */
    r = kilnc("check", "--strict", m, NULL);
    EXPECT_CODE(r, 0);
    tu_run_free(&r);
    free(m);
}

static void test_check_missing_folder(void **state)
{
    (void)state;
    char *m = tu_path(D, "nowhere");
    run r = kilnc("check", m, NULL);
    EXPECT_CODE(r, 1);
    char *want = xasprintf("kilnc check: error: %s: not a folder (expected a Hugging Face model folder "
                           "with config.json and *.safetensors)\n",
                           m);
    assert_starts_with(r.err, want);
    assert_contains(r.err, "kilnc check: check failed: 1 problem\n");
    assert_string_equal(r.out, "");
    free(want);
    tu_run_free(&r);
    free(m);
}

static void test_check_no_config(void **state)
{
    (void)state;
    char *m = tu_path(D, "empty");
    tu_mkdir(m);
    run r = kilnc("check", m, NULL);
    EXPECT_CODE(r, 1);
    char *want = xasprintf("kilnc check: error: %s: no config.json in this folder\n", m);
    assert_starts_with(r.err, want);
    free(want);
    tu_run_free(&r);
    free(m);
}

static void test_check_bad_config(void **state)
{
    (void)state;
    tu_llama o = {.config = "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n"
                            "  \"hidden_size\": 16\n  \"vocab_size\": 64\n}\n"};
    char *m = model("badjson", &o);
    run r = kilnc("check", m, NULL);
    EXPECT_CODE(r, 1);
    char *want = xasprintf("kilnc check: error: %s/config.json:4:", m);
    assert_starts_with(r.err, want);
    assert_contains(r.err, "not valid JSON");
    free(want);
    tu_run_free(&r);
    free(m);
    /* valid JSON, a field of the wrong type: file, field, expected vs got, spec line */
    o.config = "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": \"16\"}";
    m = model("badfield", &o);
    r = kilnc("check", m, NULL);
    EXPECT_CODE(r, 1);
    char *line = llama_line("kiln.llama_config(cfg)");
    want = xasprintf("kilnc check: error: %s/config.json: field 'hidden_size': expected an integer, got "
                     "a string \"16\" (needed by ",
                     m);
    assert_starts_with(r.err, want);
    assert_contains(r.err, line);
    free(line);
    free(want);
    tu_run_free(&r);
    free(m);
}

static void test_check_missing_tensor(void **state)
{
    (void)state;
    /* a near miss: the closest checkpoint name is suggested */
    tu_llama o = {.rename_from = "model.layers.1.self_attn.o_proj.weight",
                  .rename_to = "model.layers.1.self_attn.out_proj.weight"};
    char *m = model("renamed", &o);
    run r = kilnc("check", m, NULL);
    EXPECT_CODE(r, 1);
    char *want = xasprintf("kilnc check: error: %s: tensor 'model.layers.1.self_attn.o_proj.weight' is "
                           "not in the checkpoint (asked for at ",
                           m);
    assert_contains(r.err, want);
    char *line = llama_line("kiln.llama(g, c");
    assert_contains(r.err, line);
    assert_contains(r.err, "did you mean 'model.layers.1.self_attn.out_proj.weight'?");
    /* and the renamed tensor is reported unused */
    assert_contains(r.err, "kilnc check: warning: checkpoint tensor "
                           "'model.layers.1.self_attn.out_proj.weight' is not used by ");
    assert_contains(r.err, "kilnc check: check failed: 1 problem\n");
    free(line);
    free(want);
    tu_run_free(&r);
    free(m);
    /* nothing close: no suggestion */
    tu_llama o2 = {.skip = "lm_head.weight"};
    m = model("nohead", &o2);
    r = kilnc("check", m, NULL);
    EXPECT_CODE(r, 1);
    assert_contains(r.err, "tensor 'lm_head.weight' is not in the checkpoint (asked for at ");
    assert_not_contains(r.err, "did you mean");
    tu_run_free(&r);
    free(m);
}

static void test_check_wrong_shape(void **state)
{
    (void)state;
    tu_llama o = {.wrong_shape = "model.layers.0.mlp.gate_proj.weight"};
    char *m = model("shape", &o);
    run r = kilnc("check", m, NULL);
    EXPECT_CODE(r, 1);
    char *want = xasprintf("kilnc check: error: %s/model.safetensors: tensor "
                           "'model.layers.0.mlp.gate_proj.weight' has shape [33, 16], the spec "
                           "expects [32, 16] (asked for at ",
                           m);
    assert_starts_with(r.err, want);
    char *line = llama_line("kiln.llama(g, c");
    assert_contains(r.err, line);
    free(line);
    free(want);
    tu_run_free(&r);
    free(m);
}

static void test_check_unsupported_dtype(void **state)
{
    (void)state;
    tu_llama o = {.as_i8 = "model.norm.weight"};
    char *m = model("i8", &o);
    run r = kilnc("check", m, NULL);
    EXPECT_CODE(r, 1);
    char *want = xasprintf("kilnc check: error: %s/model.safetensors: tensor 'model.norm.weight' has "
                           "dtype I8; kiln reads F32, F16 and BF16 weights",
                           m);
    assert_starts_with(r.err, want);
    free(want);
    tu_run_free(&r);
    free(m);
}

static void test_check_all_problems_at_once(void **state)
{
    (void)state;
    tu_llama o = {.skip = "model.layers.0.mlp.up_proj.weight",
                  .wrong_shape = "model.layers.1.mlp.down_proj.weight",
                  .as_i8 = "model.layers.1.input_layernorm.weight"};
    char *m = model("many", &o);
    run r = kilnc("check", m, NULL);
    EXPECT_CODE(r, 1);
    assert_contains(r.err, "'model.layers.0.mlp.up_proj.weight' is not in the checkpoint");
    assert_contains(r.err, "'model.layers.1.mlp.down_proj.weight' has shape [17, 32]");
    assert_contains(r.err, "'model.layers.1.input_layernorm.weight' has dtype I8");
    assert_contains(r.err, "kilnc check: check failed: 3 problems\n");
    tu_run_free(&r);
    free(m);
}

static void test_check_unused_tensor(void **state)
{
    (void)state;
    tu_llama o = {.extra = "model.extra.weight"};
    char *m = model("extra", &o);
    run r = kilnc("check", m, NULL);
    EXPECT_CODE(r, 0);
    char *want = xasprintf("kilnc check: warning: checkpoint tensor 'model.extra.weight' is not used by "
                           "%s/archspecs/llama.lua\n",
                           KILN_SOURCE_DIR);
    assert_string_equal(r.err, want);
    free(want);
    assert_contains(r.out, "checkpoint    22 tensors in 1 file: 21 used, 1 unused\n");
    tu_run_free(&r);
    r = kilnc("check", m, "--strict", NULL);
    EXPECT_CODE(r, 1);
    want = xasprintf("kilnc check: error: %s: tensor 'model.extra.weight' is not used by "
                     "%s/archspecs/llama.lua (--strict)\n",
                     m, KILN_SOURCE_DIR);
    assert_contains(r.err, want);
    free(want);
    tu_run_free(&r);
    free(m);
    /* a tensor the spec's ignore list covers: neither a warning nor a --strict error */
    tu_llama o2 = {.extra = "model.layers.0.self_attn.rotary_emb.inv_freq"};
    m = model("inv_freq", &o2);
    r = kilnc("check", "--strict", m, NULL);
    EXPECT_CODE(r, 0);
    assert_string_equal(r.err, "");
    assert_contains(r.out, "21 used, 0 unused (plus ignored by the spec)\n");
    tu_run_free(&r);
    free(m);
}

static void test_check_truncated_safetensors(void **state)
{
    (void)state;
    char *m = model("trunc", NULL);
    char *st = tu_path(m, "model.safetensors");
    size_t n;
    char *bytes = tu_read(st, &n);
    tu_write_bytes(st, bytes, n - 10);
    run r = kilnc("check", m, NULL);
    EXPECT_CODE(r, 1);
    char *want = xasprintf("kilnc check: error: %s: ", st);
    assert_starts_with(r.err, want);
    assert_contains(r.err, "truncated");
    free(want);
    tu_run_free(&r);
    /* cut inside the header */
    tu_write_bytes(st, bytes, 20);
    r = kilnc("check", m, NULL);
    EXPECT_CODE(r, 1);
    assert_contains(r.err, "runs past the end of the file (20 bytes); the file is truncated");
    tu_run_free(&r);
    free(bytes);
    free(st);
    free(m);
}

static void test_check_no_weights(void **state)
{
    (void)state;
    tu_llama o = {.no_weights = 1};
    char *m = model("cfgonly", &o);
    run r = kilnc("check", m, NULL);
    EXPECT_CODE(r, 1);
    char *want = xasprintf("kilnc check: error: %s: no model.safetensors or model.safetensors.index.json "
                           "in this folder",
                           m);
    assert_starts_with(r.err, want);
    free(want);
    tu_run_free(&r);
    free(m);
}

static const char GPT9_CONFIG[] =
    "{\"architectures\": [\"GPT9ForCausalLM\"], \"hidden_size\": 16, \"num_hidden_layers\": 2,"
    " \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"intermediate_size\": 32,"
    " \"vocab_size\": 64}";

static void test_check_unknown_architecture(void **state)
{
    (void)state;
    tu_llama o = {.config = GPT9_CONFIG};
    char *m = model("gpt9", &o);
    run r = kilnc("check", m, NULL);
    EXPECT_CODE(r, 1);
    char *want = xasprintf("kilnc check: error: %s/config.json: architecture 'GPT9ForCausalLM' has no "
                           "archspec.\n  known architectures: ",
                           m);
    assert_starts_with(r.err, want);
    free(want);
    assert_contains(r.err, "LlamaForCausalLM");
    assert_contains(r.err, "\n  to add it: write a spec (a short Lua file; see ");
    assert_contains(r.err, "README.md");
    assert_contains(r.err, "--spec FILE");
    tu_run_free(&r);
    /* --spec FILE bypasses resolution */
    char *spec = xasprintf("%s/archspecs/llama.lua", KILN_SOURCE_DIR);
    r = kilnc("check", m, "--spec", spec, NULL);
    EXPECT_CODE(r, 0);
    assert_contains(r.out, "architecture  GPT9ForCausalLM\n");
    assert_contains(r.out, "ok\n");
    tu_run_free(&r);
    /* a --spec that does not exist */
    char *gone = tu_path(D, "gone.lua");
    r = kilnc("check", m, "--spec", gone, NULL);
    EXPECT_CODE(r, 1);
    assert_starts_with(r.err, "kilnc check: error: ");
    assert_contains(r.err, gone);
    assert_contains(r.err, "cannot open");
    tu_run_free(&r);
    free(gone);
    free(spec);
    free(m);
}

/* ---------------------------------------------------------------- graph */

/* The node lines of `kilnc graph` output are numbered %0, %1, ... in order, and the one other
 * line is "output %K" of an existing node. Returns the number of nodes. */
static int check_numbering(const char *out)
{
    int n = 0;
    for (const char *p = out; *p;) {
        if (*p == '%') {
            char want[16];
            snprintf(want, sizeof want, "%%%-4d ", n);
            if (strncmp(p, want, strlen(want)) != 0)
                fail_msg("node line %d is numbered wrong:\n%.80s", n, p);
            n++;
        } else {
            int k = -1;
            if (sscanf(p, "output %%%d ", &k) != 1 || k < 0 || k >= n)
                fail_msg("unexpected line in kilnc graph output:\n%.80s", p);
        }
        p = strchr(p, '\n');
        assert_non_null(p); /* every line ends */
        p++;
    }
    assert_int_equal(count_lines_starting(out, "output %"), 1);
    return n;
}

static void test_graph(void **state)
{
    (void)state;
    char *m = model("g", NULL);
    /* as built: one line per node, in build order */
    run r = kilnc("graph", "--dump-after=build", m, NULL);
    EXPECT_CODE(r, 0);
    assert_int_equal(check_numbering(r.out), 58);
    assert_starts_with(r.out, "%0    ids = input(ids) [T] I64  @llama.lua:");
    assert_contains(r.out, "\noutput %57 logits\n");
    assert_contains(r.out, "model.embed_tokens.weight = weight(\"model.embed_tokens.weight\") "
                           "[64, 16] F32"); /* before binding */
    assert_contains(r.out, " L1.attn = attention(");
    assert_contains(r.out, "heads=4 kv=2 head_dim=4 causal scale=0.5 kv_slot=1) [T, 16] F32");
    assert_string_equal(r.err, "");
    tu_run_free(&r);

    /* after bind_weights the weights carry the checkpoint's dtype */
    r = kilnc("graph", m, "--dump-after", "bind_weights", NULL);
    EXPECT_CODE(r, 0);
    assert_int_equal(check_numbering(r.out), 58);
    assert_contains(r.out, "model.embed_tokens.weight = weight(\"model.embed_tokens.weight\") "
                           "[64, 16] BF16");
    tu_run_free(&r);

    /* after the last pass, whatever the pipeline holds */
    r = kilnc("graph", m, NULL);
    EXPECT_CODE(r, 0);
    assert_true(check_numbering(r.out) > 0);
    assert_contains(r.out, " ids = input(ids) [T] I64");
    assert_string_equal(r.err, "");
    tu_run_free(&r);

    r = kilnc("graph", m, "--dump-after=nosuchpass", NULL);
    EXPECT_CODE(r, 2);
    assert_starts_with(r.err, "kilnc graph: error: --dump-after: unknown pass 'nosuchpass' (passes: "
                              "build, bind_weights");
    assert_string_equal(r.out, "");
    tu_run_free(&r);
    free(m);
}

static void test_graph_without_weights(void **state)
{
    (void)state;
    tu_llama o = {.no_weights = 1};
    char *m = model("g2", &o);
    run r = kilnc("graph", m, NULL);
    EXPECT_CODE(r, 0);
    char *want = xasprintf("kilnc graph: note: no safetensors in %s; printing the graph as built\n", m);
    assert_string_equal(r.err, want);
    free(want);
    assert_int_equal(check_numbering(r.out), 58);
    tu_run_free(&r);
    free(m);
    /* a broken checkpoint is still an error for graph */
    m = model("g3", NULL);
    char *st = tu_path(m, "model.safetensors");
    tu_write_bytes(st, "abc", 3);
    r = kilnc("graph", m, NULL);
    EXPECT_CODE(r, 1);
    want = xasprintf("kilnc graph: error: %s: file is 3 bytes, too short", st);
    assert_starts_with(r.err, want);
    free(want);
    tu_run_free(&r);
    free(st);
    free(m);
}

int main(void)
{
    KILNC = tu_binary("KILNC", "test_cli");
    KILN = tu_binary("KILN", "test_cli");
    /* the child sees only the built-in specs */
    unsetenv("KILN_SPEC_PATH");
    unsetenv("KILN_ARCHSPECS");
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_help),
        T(test_command_help),
        T(test_usage_errors),
        T(test_kiln_usage),
        T(test_parse_numbers),
        T(test_parse_ids),
        T(test_kerr_long_messages),
        T(test_kilnc_numeric_options),
        T(test_archs),
        T(test_check_ok),
        T(test_check_missing_folder),
        T(test_check_no_config),
        T(test_check_bad_config),
        T(test_check_missing_tensor),
        T(test_check_wrong_shape),
        T(test_check_unsupported_dtype),
        T(test_check_all_problems_at_once),
        T(test_check_unused_tensor),
        T(test_check_truncated_safetensors),
        T(test_check_no_weights),
        T(test_check_unknown_architecture),
        T(test_graph),
        T(test_graph_without_weights),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
