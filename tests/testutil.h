/* testutil — helpers shared by the cmocka unit tests (tests/test_*.c).
 *
 * Everything is static inline so each test binary takes only what it uses, and the runtime
 * tests (which link libkiln only) can include this too: nothing here needs the compiler.
 *
 *   tu_tmpdir / tu_rmrf         a fresh mkdtemp folder under /tmp, removed at the end
 *   tu_write / tu_write_bytes   files with given contents; tu_read reads one back
 *   tu_fixture_with_chars       a fixture with a character-level tokenizer (for text input)
 *   assert_contains(s, sub)     fails with the whole text printed, so a changed message is
 *                               visible in the test log, not just "assertion failed"
 *   tu_write_llama              a tiny random-weight Llama checkpoint (config.json and
 *                               model.safetensors), with knobs for the bad variants
 *   tu_binary                   the kilnc or kiln binary under test, from KILNC / KILN as `make
 *                               check` sets them (else says how to run the test, and exits 1)
 *   tu_run_argv                 runs a binary (kiln, kilnc), capturing its exit status, stdout
 *                               and stderr, and fails on any sanitizer report; tu_run_bin the
 *                               same for a binary and a NULL-terminated argument list
 *
 * Helpers abort on I/O failures of the test's own scaffolding (that is not what is under test).
 */
#ifndef KILN_TESTUTIL_H
#define KILN_TESTUTIL_H

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <fcntl.h>
#include <ftw.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "safetensors.h"
#include "util.h"

/* ---------------------------------------------------------------- assertions */

static inline void tu_assert_contains(const char *hay, const char *needle, const char *file,
                                      int line)
{
    if (hay && strstr(hay, needle))
        return;
    print_error("%s:%d: expected to find\n    %s\nin\n----\n%s\n----\n", file, line, needle,
                   hay ? hay : "(null)");
    _fail(file, line);
}

static inline void tu_assert_not_contains(const char *hay, const char *needle, const char *file,
                                          int line)
{
    if (!hay || !strstr(hay, needle))
        return;
    print_error("%s:%d: did not expect\n    %s\nin\n----\n%s\n----\n", file, line, needle, hay);
    _fail(file, line);
}

static inline void tu_assert_starts_with(const char *s, const char *prefix, const char *file,
                                         int line)
{
    if (s && strncmp(s, prefix, strlen(prefix)) == 0)
        return;
    print_error("%s:%d: expected to start with\n    %s\ngot\n----\n%s\n----\n", file, line,
                   prefix, s ? s : "(null)");
    _fail(file, line);
}

#define assert_contains(hay, needle) tu_assert_contains((hay), (needle), __FILE__, __LINE__)
#define assert_not_contains(hay, needle) \
    tu_assert_not_contains((hay), (needle), __FILE__, __LINE__)
#define assert_starts_with(s, prefix) tu_assert_starts_with((s), (prefix), __FILE__, __LINE__)

/* ---------------------------------------------------------------- files */

/* Relative L2 error of a against b. */
static inline double tu_rel_l2(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

/* Index of the largest element, ties to the lowest (torch.argmax). */
static inline int tu_argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

static inline void tu_die(const char *what, const char *path)
{
    fprintf(stderr, "test scaffolding: %s %s failed\n", what, path);
    abort();
}

/* The binary under test that environment variable var ("KILNC" or "KILN") names, as `make check`
 * sets it. When it is unset, empty or not an executable, says how to run `test` (its name, e.g.
 * "test_quant") and exits 1: a test of the binaries cannot run without them. */
static inline const char *tu_binary(const char *var, const char *test)
{
    const char *p = getenv(var);
    if (p && *p && access(p, X_OK) == 0)
        return p;
    fprintf(stderr, "%s: %s must name the %s binary (got %s): run it through `make check`, or as\n"
                    "  KILNC=out/bin/kilnc KILN=out/bin/kiln out/tests/%s\n",
            test, var, strcmp(var, "KILN") ? "kilnc" : "kiln", p ? p : "nothing", test);
    exit(1);
}

/* A new empty folder /tmp/kiln-test-XXXXXX (heap string). */
static inline char *tu_tmpdir(void)
{
    char *d = xstrdup("/tmp/kiln-test-XXXXXX");
    if (!mkdtemp(d))
        tu_die("mkdtemp", d);
    return d;
}

static inline int tu_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* rm -rf dir, then frees the string. */
static inline void tu_rmrf(char *dir)
{
    if (!dir)
        return;
    if (strncmp(dir, "/tmp/kiln-test-", 15) == 0) /* never anything else */
        nftw(dir, tu_rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(dir);
}

static inline void tu_write_bytes(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0)
        tu_die("writing", path);
}

/* Writes dir/name with `text`; returns the full path (heap). */
static inline char *tu_write(const char *dir, const char *name, const char *text)
{
    char *p = util_path_join(dir, name);
    tu_write_bytes(p, text, strlen(text));
    return p;
}

/* dir/name (heap). */
static inline char *tu_path(const char *dir, const char *name) { return util_path_join(dir, name); }

/* dir/NAME: the fixture tests/fixtures/NAME (its config.json and model.safetensors, linked)
 * with a character-level tokenizer.json (WordLevel: each printable ASCII character its own
 * token, ids 1..95; anything else <unk>, id 0), for what needs text and the fixtures' lack of a
 * tokenizer (--calibrate). Returns the folder (heap). */
static inline char *tu_fixture_with_chars(const char *dir, const char *name)
{
    char *d = util_path_join(dir, name), src[PATH_MAX], rel[600];
    mkdir(d, 0755);
    static const char *const files[] = {"config.json", "model.safetensors"};
    for (int i = 0; i < 2; i++) {
        snprintf(rel, sizeof rel, "tests/fixtures/%s/%s", name, files[i]);
        char *link = util_path_join(d, files[i]);
        if (!realpath(rel, src) || (symlink(src, link) && access(link, F_OK)))
            tu_die("linking", rel);
        free(link);
    }
    char tok[4096];
    int k = snprintf(tok, sizeof tok, "{\"model\": {\"type\": \"WordLevel\", \"unk_token\": "
                                      "\"<unk>\", \"vocab\": {\"<unk>\": 0");
    for (int c = 32; c < 127; c++)
        k += snprintf(tok + k, sizeof tok - (size_t)k, ", \"%s%c\": %d",
                      c == '"' || c == '\\' ? "\\" : "", c, c - 31);
    snprintf(tok + k, sizeof tok - (size_t)k, "}}, \"pre_tokenizer\": {\"type\": \"Split\", "
                                              "\"pattern\": {\"Regex\": \".\"}, \"behavior\": "
                                              "\"Isolated\"}}");
    free(tu_write(d, "tokenizer.json", tok));
    return d;
}

static inline char *tu_read(const char *path, size_t *len)
{
    kerr e;
    kerr_clear(&e);
    char *s = util_read_file(path, len, &e);
    if (!s)
        tu_die("reading", path);
    return s;
}

static inline void tu_mkdir(const char *path)
{
    kerr e;
    kerr_clear(&e);
    if (util_mkdirs(path, &e))
        tu_die("mkdir", path);
}

/* ---------------------------------------------------------------- a tiny Llama checkpoint */

/* Shape of the tiny model: 2 layers, hidden 16, 4 heads of 4 with 2 kv heads, MLP 32,
 * vocab 64. Its parameters: embed 64*16 + 2 * (16 + 256 + 128 + 128 + 256 + 16 + 3*512)
 * + 16 + lm_head 64*16 = 6736, in 21 tensors. */
#define TU_LLAMA_PARAMS 6736
#define TU_LLAMA_TENSORS 21

typedef struct tu_llama {
    const char *skip;         /* this tensor is left out */
    const char *rename_from;  /* this tensor is written under the name rename_to */
    const char *rename_to;
    const char *wrong_shape;  /* this tensor gets one more row than expected */
    const char *as_i8;        /* this tensor is written as I8 */
    const char *extra;        /* an unused extra F32 tensor [4] of this name */
    const char *config;       /* config.json text instead of the default (NULL: default) */
    int no_weights;           /* write config.json only */
} tu_llama;

static inline const char *tu_llama_config(void)
{
    return "{\n"
           "  \"architectures\": [\"LlamaForCausalLM\"],\n"
           "  \"model_type\": \"llama\",\n"
           "  \"hidden_size\": 16,\n"
           "  \"num_hidden_layers\": 2,\n"
           "  \"num_attention_heads\": 4,\n"
           "  \"num_key_value_heads\": 2,\n"
           "  \"intermediate_size\": 32,\n"
           "  \"vocab_size\": 64,\n"
           "  \"max_position_embeddings\": 128,\n"
           "  \"rms_norm_eps\": 1e-5,\n"
           "  \"rope_theta\": 10000.0,\n"
           "  \"hidden_act\": \"silu\",\n"
           "  \"tie_word_embeddings\": false,\n"
           "  \"torch_dtype\": \"float32\"\n"
           "}\n";
}

static inline uint32_t tu_rand(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

typedef struct tu_bufs {
    int n;
    void *p[64];
} tu_bufs;

static inline void tu_llama_add(st_writer *w, tu_bufs *bufs, const tu_llama *o, const char *name,
                                int ndim, int64_t d0, int64_t d1, uint32_t *seed)
{
    if (o->skip && strcmp(name, o->skip) == 0)
        return;
    if (o->rename_from && strcmp(name, o->rename_from) == 0)
        name = o->rename_to;
    int64_t shape[2] = {d0, d1};
    if (o->wrong_shape && strcmp(name, o->wrong_shape) == 0)
        shape[0]++;
    int i8 = o->as_i8 && strcmp(name, o->as_i8) == 0;
    /* The embedding is BF16 and everything else F32, so `check` has two dtypes to count. */
    int bf16 = !i8 && strcmp(name, "model.embed_tokens.weight") == 0;
    uint64_t n = (uint64_t)shape[0] * (uint64_t)(ndim == 2 ? shape[1] : 1);
    st_dtype dt = i8 ? ST_I8 : bf16 ? ST_BF16 : ST_F32;
    unsigned char *buf = xmalloc(n * st_dtype_size(dt));
    for (uint64_t i = 0; i < n; i++) {
        float v = ((float)(tu_rand(seed) % 2001) - 1000.0f) / 5000.0f;
        if (i8)
            buf[i] = (unsigned char)(tu_rand(seed) & 0xff);
        else if (bf16)
            ((uint16_t *)buf)[i] = util_f32_to_bf16(v);
        else
            ((float *)buf)[i] = v;
    }
    if (bufs->n == (int)ARRAY_LEN(bufs->p))
        abort();
    bufs->p[bufs->n++] = buf;
    st_writer_add(w, name, dt, ndim, shape, buf);
}

/* Writes dir/config.json and dir/model.safetensors. */
static inline void tu_write_llama(const char *dir, const tu_llama *o)
{
    static const tu_llama none = {0};
    if (!o)
        o = &none;
    free(tu_write(dir, "config.json", o->config ? o->config : tu_llama_config()));
    if (o->no_weights)
        return;
    const int H = 16, L = 2, heads = 4, kv = 2, hd = 4, I = 32, V = 64;
    st_writer *w = st_writer_new();
    st_writer_meta(w, "format", "pt");
    tu_bufs bufs = {0};
    uint32_t seed = 12345;
    char name[128];
    tu_llama_add(w, &bufs, o, "model.embed_tokens.weight", 2, V, H, &seed);
    for (int l = 0; l < L; l++) {
#define T(suffix, nd, a, b)                                              \
    (snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix),       \
     tu_llama_add(w, &bufs, o, name, nd, a, b, &seed))
        T("input_layernorm.weight", 1, H, 0);
        T("self_attn.q_proj.weight", 2, heads * hd, H);
        T("self_attn.k_proj.weight", 2, kv * hd, H);
        T("self_attn.v_proj.weight", 2, kv * hd, H);
        T("self_attn.o_proj.weight", 2, H, heads * hd);
        T("post_attention_layernorm.weight", 1, H, 0);
        T("mlp.gate_proj.weight", 2, I, H);
        T("mlp.up_proj.weight", 2, I, H);
        T("mlp.down_proj.weight", 2, H, I);
#undef T
    }
    tu_llama_add(w, &bufs, o, "model.norm.weight", 1, H, 0, &seed);
    tu_llama_add(w, &bufs, o, "lm_head.weight", 2, V, H, &seed);
    if (o->extra)
        tu_llama_add(w, &bufs, o, o->extra, 1, 4, 0, &seed);
    char *path = tu_path(dir, "model.safetensors");
    kerr e;
    kerr_clear(&e);
    if (st_writer_write(w, path, NULL, NULL, &e))
        tu_die("st_writer_write", path);
    free(path);
    st_writer_free(w);
    for (int i = 0; i < bufs.n; i++)
        free(bufs.p[i]);
}

/* ---------------------------------------------------------------- running the binaries */

typedef struct tu_run {
    int code;  /* exit status; 128+signal when killed */
    char *out; /* stdout */
    char *err; /* stderr */
} tu_run;

static inline void tu_run_free(tu_run *r)
{
    free(r->out);
    free(r->err);
}

/* Runs argv (argv[0] is the binary's path; NULL-terminated) with stdin from a file holding
 * `input` (or /dev/null when NULL), capturing stdout and stderr through files in the scratch
 * folder dir. Whatever the input, a sanitizer report fails the test. */
static inline tu_run tu_run_argv(const char *dir, const char *input, const char *const *argv)
{
    extern char **environ;
    char *inp = input ? tu_write(dir, ".stdin", input) : NULL, *outp = tu_path(dir, ".stdout"),
         *errp = tu_path(dir, ".stderr");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, inp ? inp : "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, outp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, 2, errp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    pid_t pid;
    int rc = posix_spawn(&pid, argv[0], &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
        fail_msg("cannot run %s: %s", argv[0], strerror(rc));
    int st;
    if (waitpid(pid, &st, 0) != pid)
        fail_msg("waitpid failed");
    tu_run r = {WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), tu_read(outp, NULL),
                tu_read(errp, NULL)};
    if (inp)
        unlink(inp);
    unlink(outp);
    unlink(errp);
    free(inp);
    free(outp);
    free(errp);
    assert_not_contains(r.err, "Sanitizer");
    assert_not_contains(r.err, "runtime error:");
    return r;
}

/* The run exited with `code`; otherwise the test fails showing both of its outputs. */
static inline void tu_expect_code(const tu_run *r, int code, const char *file, int line)
{
    if (r->code == code)
        return;
    print_error("%s:%d: exit status %d, expected %d\n--- stdout\n%s--- stderr\n%s---\n", file,
                line, r->code, code, r->out, r->err);
    _fail(file, line);
}
#define EXPECT_CODE(r, code) tu_expect_code(&(r), (code), __FILE__, __LINE__)

/* tu_run_argv of `bin` followed by the NULL-terminated args, with no input. */
static inline tu_run tu_run_bin(const char *dir, const char *bin, const char *const *args)
{
    const char *argv[64];
    int n = 0;
    argv[n++] = bin;
    for (int i = 0; args[i]; i++) {
        if (n == 63)
            fail_msg("tu_run_bin: more than 62 arguments");
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    return tu_run_argv(dir, NULL, argv);
}

#endif
