/* test_badinput — the bad-input table: one row per hostile or broken input of issue 9 and per case
 * of the README's promise (a truncated, corrupted or mismatched artifact or shard is refused with a
 * message, never undefined behaviour), each run through the real binaries ($KILNC, $KILN).
 *
 * Every row asserts: the exit status; that stderr has an error line ("PROG: error: ...", or a
 * warning for archspec rows, where a broken spec is skipped) naming the file and the field or
 * option (each `want` string, "a|b" accepting either); no error line with an empty message; no
 * sanitizer report; and a bounded run: a row still running after ROW_SECONDS (or its own limit,
 * for the few that run NVRTC or the archspec sandbox to its limits) is killed and fails as a hang, one whose resident memory passes ROW_RSS_MB is killed and fails as a runaway. A
 * failing row is reported with its name, command, status and stderr, and the table goes on, so
 * one run lists every row that fails. Rows are independent and run four at a time.
 *
 * The bad inputs are made at test time in a temporary folder from the committed fixtures:
 * tests/fixtures/llama (the checkpoint, edited copies of its config.json and weights, and two
 * artifacts compiled from it for sm_80: one from its weights, one from slightly different ones of
 * the same shapes) and tests/fixtures/tokenizers/gpt2_bpe.json. No row needs a GPU: kiln run
 * checks its options, the folder, the manifest, the prompt against the compiled limits and the
 * shard's id and header before it loads the driver, so each artifact row stops at its own error on
 * any machine. The shard's data hash is checked by kiln run during the upload to the GPU, so the
 * one row that needs it (a flipped weight bit) runs `kiln inspect --verify`, the same check.
 */
#include "testutil.h"

#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>

#define ROW_SECONDS 20
#define ROW_RSS_MB 2048
#define FIX "tests/fixtures"

static const char *KILNC, *KILN;
static char *T; /* the temporary folder every bad input is made in */

/* ---------------------------------------------------------------- making bad inputs */

static char *tp(const char *name) { return tu_path(T, name); }

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *cmd = NULL;
    if (vasprintf(&cmd, fmt, ap) < 0)
        tu_die("vasprintf", fmt);
    va_end(ap);
    if (system(cmd) != 0)
        tu_die("running", cmd);
    free(cmd);
}

/* XORs `mask` into the byte at `at` of `path`. */
static void flip(const char *path, size_t at, int mask)
{
    size_t n;
    char *b = tu_read(path, &n);
    if (at >= n)
        tu_die("flip offset past the end of", path);
    b[at] ^= (char)mask;
    tu_write_bytes(path, b, n);
    free(b);
}

static void truncate_file(const char *path, size_t len)
{
    if (truncate(path, (off_t)len) != 0)
        tu_die("truncate", path);
}

/* Offset of the first digit after `"key":` in a file (the manifest is JSON inside model.kiln). */
static size_t json_digit_at(const char *path, const char *key)
{
    size_t n;
    char *b = tu_read(path, &n);
    char *k = xasprintf("\"%s\"", key);
    char *p = memmem(b, n, k, strlen(k));
    if (!p)
        tu_die(k, path);
    p += strlen(k);
    while (p < b + n && !(*p >= '0' && *p <= '9'))
        p++;
    size_t at = (size_t)(p - b);
    free(k);
    free(b);
    return at;
}

/* A copy of the checkpoint folder `FIX/llama` named `name`, weights linked, not copied. */
static char *llama_copy(const char *name)
{
    char *d = tp(name);
    char *cwd = getcwd(NULL, 0);
    sh("mkdir -p '%s' && cp " FIX "/llama/config.json " FIX "/llama/generation_config.json '%s'/ && "
       "ln -s '%s/" FIX "/llama/model.safetensors' '%s/model.safetensors'",
       d, d, cwd, d);
    free(cwd);
    return d;
}

/* Sets config.json's `field` to the JSON value `value` in the checkpoint copy `name`. */
static void config_set(const char *name, const char *field, const char *value)
{
    char *d = llama_copy(name), *p = tu_path(d, "config.json");
    json_error_t je;
    json_t *c = json_load_file(p, 0, &je), *v = json_loads(value, JSON_DECODE_ANY, &je);
    if (!c || !v)
        tu_die("editing", p);
    json_object_set_new(c, field, v);
    if (json_dump_file(c, p, JSON_INDENT(2)) != 0)
        tu_die("writing", p);
    json_decref(c);
    free(p);
    free(d);
}

/* File offset of tensor `name`'s data in a safetensors file, and its dtype. */
static size_t tensor_at(const char *path, const char *name, char *dtype, size_t cap)
{
    size_t n;
    char *b = tu_read(path, &n);
    uint64_t hl;
    memcpy(&hl, b, 8);
    json_error_t je;
    json_t *h = json_loadb(b + 8, (size_t)hl, 0, &je), *t = h ? json_object_get(h, name) : NULL;
    if (!t)
        tu_die(name, path);
    snprintf(dtype, cap, "%s", json_string_value(json_object_get(t, "dtype")));
    size_t at = 8 + (size_t)hl +
                (size_t)json_integer_value(json_array_get(json_object_get(t, "data_offsets"), 0));
    json_decref(h);
    free(b);
    return at;
}

#define BAD_TENSOR "model.layers.1.mlp.up_proj.weight"

/* Tensor `t` of the safetensors file `path`, which must be of dtype `dt`, gets the n bytes `v` from
 * byte `off` of its data. */
static void tensor_poke(const char *path, const char *t, const char *dt, size_t off,
                        const void *v, size_t n)
{
    char got[16];
    size_t at = tensor_at(path, t, got, sizeof got), len;
    if (strcmp(got, dt))
        tu_die(t, path);
    char *b = tu_read(path, &len);
    memcpy(b + at + off, v, n);
    tu_write_bytes(path, b, len);
    free(b);
}

/* A checkpoint copy whose BAD_TENSOR holds the float `bits` (an f32 bit pattern) at element 5. */
static void weights_poke(const char *name, uint32_t bits)
{
    char *d = llama_copy(name), *p = tu_path(d, "model.safetensors");
    sh("rm -f '%s' && cp " FIX "/llama/model.safetensors '%s'", p, p);
    tensor_poke(p, BAD_TENSOR, "F32", 5 * 4, &bits, 4); /* the fixture is float32 */
    free(p);
    free(d);
}

/* A copy of the FP8 checkpoint FIX/llama_fp8_ct named `name` with tensor_poke's change:
 * fp8_poke("x", FP8_TENSOR, "F8_E4M3", 5, "\x7f", 1) makes element 5 the e4m3 NaN byte. */
#define FP8_TENSOR "model.layers.0.mlp.down_proj.weight"
static void fp8_poke(const char *name, const char *t, const char *dt, size_t off, const char *v,
                     size_t n)
{
    char *d = tp(name), *p = tu_path(d, "model.safetensors");
    sh("mkdir -p '%s' && cp " FIX "/llama_fp8_ct/config.json " FIX
       "/llama_fp8_ct/model.safetensors '%s'/",
       d, d);
    tensor_poke(p, t, dt, off, v, n);
    free(p);
    free(d);
}

/* A copy of the artifact folder `art` named `name`; returns its path. */
static char *art_copy(const char *name)
{
    char *d = tp(name);
    sh("cp -r '%s/art' '%s'", T, d);
    return d;
}

static char *in_art(const char *dir, const char *file) { return tu_path(dir, file); }
#define SHARD "shards/rank0-of-1.safetensors"

/* Writes a tokenizer.json: gpt2_bpe.json with one edit (a JSON value at a dotted path; an
 * "added_tokens+" path appends to that array). */
static void tok_edit(const char *name, const char *path, const char *value)
{
    json_error_t je;
    json_t *t = json_load_file(FIX "/tokenizers/gpt2_bpe.json", 0, &je);
    json_t *v = json_loads(value, JSON_DECODE_ANY, &je);
    if (!t || !v)
        tu_die("editing", name);
    if (!strcmp(path, "added_tokens+")) {
        json_array_append_new(json_object_get(t, "added_tokens"), v);
    } else {
        char *p = xstrdup(path), *save = NULL, *key = strtok_r(p, ".", &save);
        json_t *o = t;
        for (char *next; (next = strtok_r(NULL, ".", &save)); key = next)
            o = json_object_get(o, key);
        json_object_set_new(o, key, v);
        free(p);
    }
    char *f = tp(name);
    if (json_dump_file(t, f, JSON_INDENT(1)) != 0)
        tu_die("writing", f);
    free(f);
    json_decref(t);
}

/* An archspec folder `name` holding `file` with `text` ({T} replaced by the temporary folder). */
static void spec_dir(const char *name, const char *file, const char *text)
{
    char *d = tp(name);
    tu_mkdir(d);
    const char *at = strstr(text, "{T}");
    char *body = at ? xasprintf("%.*s%s%s", (int)(at - text), text, T, at + 3) : xstrdup(text);
    free(tu_write(d, file, body));
    free(body);
    free(d);
}

/* ---------------------------------------------------------------- the bad inputs */

static void make_inputs(void)
{
    char *cwd = getcwd(NULL, 0), *T_b = tp("b");
    /* two artifacts of the same shapes: the fixture's weights, and a copy with one weight changed.
     * Folder name and options as test_compile's, so NVRTC's cache serves the kernels. */
    char *good = llama_copy("llama");
    tu_mkdir(T_b);
    weights_poke("b/llama", 0x3f000000u); /* 0.5 */
    sh("'%s' compile '%s' -o '%s/art' --sm 80,90a --max-seq-len 128 > '%s/compile.log' 2>&1 && "
       "'%s' compile '%s/b/llama' -o '%s/art_b' --sm 80,90a --max-seq-len 128 >> "
       "'%s/compile.log' 2>&1",
       KILNC, good, T, T, KILNC, T, T, T);
    free(good);
    free(T_b);
    free(cwd);

    /* artifacts: truncated, corrupted, mismatched (README) and the manifest cases */
    char *d, *f;
    d = art_copy("art_trunc"), f = in_art(d, "model.kiln");
    size_t n;
    free(tu_read(f, &n));
    truncate_file(f, n / 2);
    free(f), free(d);
    d = art_copy("art_tiny"), f = in_art(d, "model.kiln");
    truncate_file(f, 10);
    free(f), free(d);
    d = art_copy("art_blob"), f = in_art(d, "model.kiln");
    flip(f, n / 4, 0x5a); /* inside the PTX, which comes first */
    free(f), free(d);
    d = art_copy("art_limit"), f = in_art(d, "model.kiln");
    flip(f, json_digit_at(f, "max_seq_len"), 0x02); /* 128 -> 328: still a valid manifest */
    free(f), free(d);
    d = art_copy("art_sample"), f = in_art(d, "model.kiln");
    size_t at = json_digit_at(f, "sample_kernel");
    {
        char *bytes = tu_read(f, &n);
        for (size_t i = at; i < n && bytes[i] >= '0' && bytes[i] <= '9'; i++)
            bytes[i] = '9'; /* an index past the kernel table, same length */
        tu_write_bytes(f, bytes, n);
        free(bytes);
    }
    free(f), free(d);
    d = art_copy("art_manifest_other");
    sh("cp '%s/art_b/model.kiln' '%s/model.kiln'", T, d);
    free(d);
    d = art_copy("art_shard_flip"), f = in_art(d, SHARD);
    free(tu_read(f, &n));
    flip(f, n / 2, 0x01); /* one bit of one weight */
    free(f), free(d);
    d = art_copy("art_shard_trunc"), f = in_art(d, SHARD);
    truncate_file(f, 4096);
    free(f), free(d);
    d = art_copy("art_shard_other");
    sh("cp '%s/art_b/" SHARD "' '%s/" SHARD "'", T, d);
    free(d);
    d = art_copy("art_shard_missing"), f = in_art(d, SHARD);
    if (unlink(f) != 0)
        tu_die("unlink", f);
    free(f), free(d);

    /* config.json structural nonsense */
    config_set("cfg_layers_huge", "num_hidden_layers", "100000");
    config_set("cfg_layers_0", "num_hidden_layers", "0");
    config_set("cfg_layers_neg", "num_hidden_layers", "-2");
    config_set("cfg_heads_0", "num_attention_heads", "0");
    config_set("cfg_maxpos_0", "max_position_embeddings", "0");
    char arch[20040];
    snprintf(arch, sizeof arch, "[\"%0*dForCausalLM\"]", 20000, 0);
    memset(arch + 2, 'A', 20000);
    config_set("cfg_arch_long", "architectures", arch);

    /* non-finite weights */
    weights_poke("w_nan", 0x7fc00000u);
    weights_poke("w_inf", 0x7f800000u);
    fp8_poke("w_fp8_nan", FP8_TENSOR, "F8_E4M3", 5, "\x7f", 1);
    fp8_poke("w_fp8_inf", FP8_TENSOR "_scale", "BF16", 0, "\x80\x7f", 2); /* row 0's scale Inf */

    /* a line of stdin no tokenizer should buffer whole */
    {
        size_t len = (size_t)65 << 20;
        char *text = xmalloc(len + 8);
        memset(text, 'a', len);
        text[0] = '"';
        memcpy(text + len - 2, "\"\n", 2);
        memcpy(text + len, "\"ok\"\n", 5);
        f = tp("long_line.jsonl");
        tu_write_bytes(f, text, len + 5);
        free(f);
        free(text);
    }

    /* tokenizer.json */
    tok_edit("tok_vocab_id.json", "model.vocab.zzzz", "2147483647");
    tok_edit("tok_pad_neg.json", "padding",
             "{\"strategy\": {\"Fixed\": -5}, \"direction\": \"Right\", \"pad_to_multiple_of\": "
             "null, \"pad_id\": 0, \"pad_type_id\": 0, \"pad_token\": \"<|endoftext|>\"}");
    tok_edit("tok_pad_huge.json", "padding",
             "{\"strategy\": {\"Fixed\": 1e11}, \"direction\": \"Right\", \"pad_to_multiple_of\": "
             "null, \"pad_id\": 0, \"pad_type_id\": 0, \"pad_token\": \"<|endoftext|>\"}");
    tok_edit("tok_pad_id.json", "padding",
             "{\"strategy\": \"BatchLongest\", \"direction\": \"Right\", \"pad_to_multiple_of\": "
             "null, \"pad_id\": -1, \"pad_type_id\": 0, \"pad_token\": \"<|endoftext|>\"}");
    tok_edit("tok_trunc.json", "truncation",
             "{\"direction\": \"Right\", \"max_length\": -1, \"strategy\": \"LongestFirst\", "
             "\"stride\": 0}");
    tok_edit("tok_added.json", "added_tokens+",
             "{\"id\": -1, \"content\": \"<bad>\", \"single_word\": false, \"lstrip\": false, "
             "\"rstrip\": false, \"normalized\": false, \"special\": true}");

    /* archspecs in KILN_SPEC_PATH: a loop, a memory bomb, a shell escape, a file write */
    spec_dir("spec_loop", "loop.lua", "while true do end\n");
    spec_dir("spec_mem", "mem.lua",
             "local t = {}\nfor i = 1, 1e9 do t[i] = string.rep('x', 1 << 20) .. i end\n");
    spec_dir("spec_exec", "exec.lua", "os.execute('touch {T}/pwned')\n");
    spec_dir("spec_io", "io.lua", "io.open('{T}/pwned_io', 'w'):write('x')\n");
}

/* ---------------------------------------------------------------- the table */

typedef struct row {
    const char *name;     /* the case, as the issue or the README puts it */
    const char *args[14]; /* "kiln" or "kilnc", then its arguments; {T} is the temporary folder */
    int code;             /* the exit status expected */
    const char *want[4];  /* stderr contains each ("a|b": either); {T} replaced too */
    const char *in;       /* stdin text ("@NAME": the file NAME in {T}), or NULL for nothing */
    const char *spec_path;/* KILN_SPEC_PATH, or NULL */
    const char *absent;   /* a file the command must not have created */
    int warning;          /* the line is a warning (a broken archspec is skipped), not an error */
    int seconds;          /* the watchdog's limit when not ROW_SECONDS (rows that run NVRTC) */
} row;

#define ART "{T}/art"
/* rows leave the fields after `want` zero unless they need them */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
static const row rows[] = {
    /* ---- CLI: strict numbers (issue: atoi made "abc" 0 and 4294967297 1; nan was accepted) */
    {"kiln run --max-new abc", {"kiln", "run", ART, "--ids", "1", "--max-new", "abc"}, 2,
     {"kiln run: error: --max-new: 'abc' is not an integer (expected 0 to 2147483647)"}},
    {"kiln run --max-new 12x", {"kiln", "run", ART, "--ids", "1", "--max-new", "12x"}, 2,
     {"--max-new: '12x' is not an integer"}},
    {"kiln run --top-k 4294967297", {"kiln", "run", ART, "--ids", "1", "--top-k", "4294967297"},
     2, {"--top-k: '4294967297' is out of range (expected 0 to 2147483647)"}},
    {"kiln run --top-k ''", {"kiln", "run", ART, "--ids", "1", "--top-k", ""}, 2,
     {"--top-k: '' is not an integer"}},
    {"kiln run --temperature nan", {"kiln", "run", ART, "--ids", "1", "--temperature", "nan"}, 2,
     {"--temperature: 'nan' is not a finite number"}},
    {"kiln run --temperature inf", {"kiln", "run", ART, "--ids", "1", "--temperature", "inf"}, 2,
     {"--temperature: 'inf' is not a finite number"}},
    {"kiln run --top-p 0", {"kiln", "run", ART, "--ids", "1", "--top-p", "0"}, 2,
     {"--top-p: '0' is out of range (expected a number above 0 and at most 1)"}},
    {"kiln run --top-p 1e-50 (0 as a float)", {"kiln", "run", ART, "--ids", "1", "--top-p", "1e-50"},
     2, {"--top-p: '1e-50' is 0 as a float"}},
    {"kiln run --seed -1", {"kiln", "run", ART, "--ids", "1", "--seed", "-1"}, 2,
     {"--seed: '-1' is not a non-negative integer"}},
    {"kiln run --kv-memory 1e999", {"kiln", "run", ART, "--ids", "1", "--kv-memory", "1e999"}, 2,
     {"--kv-memory: '1e999' is not a finite number"}},
    {"kiln run --ids 1,,2", {"kiln", "run", ART, "--ids", "1,,2"}, 2,
     {"--ids: item 2 '' is not a non-negative integer"}},
    {"kiln run --ids 4294967297", {"kiln", "run", ART, "--ids", "4294967297"}, 2,
     {"--ids: item 1 '4294967297' is out of range"}},
    {"kiln run --ids past the vocabulary", {"kiln", "run", ART, "--ids", "1,512"}, 2,
     {"prompt 1 (--ids): token id 512 at position 1 is outside the vocabulary (expected 0 to "
      "511)"}},
    {"kilnc compile --max-batch 4294967297",
     {"kilnc", "compile", FIX "/llama", "-o", "{T}/x", "--max-batch", "4294967297"}, 2,
     {"kilnc compile: error: --max-batch: '4294967297' is out of range (expected 1 to 16777216)"}},
    {"kilnc compile --max-seq-len abc",
     {"kilnc", "compile", FIX "/llama", "-o", "{T}/x", "--max-seq-len", "abc"}, 2,
     {"--max-seq-len: 'abc' is not an integer"}},
    {"kilnc ref --max-new -1", {"kilnc", "ref", FIX "/llama", "--ids", "1", "--max-new", "-1"}, 2,
     {"kilnc ref: error: --max-new: '-1' is out of range"}},
    {"kilnc ref --ids 1,x", {"kilnc", "ref", FIX "/llama", "--ids", "1,x"}, 2,
     {"kilnc ref: error: --ids: item 2 'x'"}},
    /* ---- CLI: sizes the user controls are checked against the model before allocating */
    {"kiln run --max-new 2147483647", {"kiln", "run", ART, "--ids", "1", "--max-new", "2147483647"},
     2, {"--max-new 2147483647", "max_seq_len 128", "--max-new 127 or less"}},
    {"kiln run prompt longer than max_seq_len", {"kiln", "run", ART, "--ids", "{IDS129}"}, 2,
     {"prompt 1 (--ids) has 129 tokens", "max_seq_len is 128"}},
    {"kilnc ref --max-new past max_position_embeddings",
     {"kilnc", "ref", FIX "/llama", "--ids", "1", "--max-new", "1000000"}, 1,
     {"max_position_embeddings 512", "config.json"}},
    {"kilnc ref past dynamic NTK's max_position_embeddings x factor",
     {"kilnc", "ref", FIX "/llama_dynamic", "--ids", "1,2", "--max-new", "31"}, 1,
     {"2 prompt tokens + --max-new 31", "max_position_embeddings 8 (32 with dynamic NTK's factor)",
      "llama_dynamic/config.json"}},
    /* ---- CLI: never an empty error (a first message longer than the buffer was dropped) */
    {.name = "kilnc compile --sm 75 (an NVRTC log as the first error)",
     .args = {"kilnc", "compile", FIX "/mixtral", "-o", "{T}/sm75", "--sm", "75"},
     .code = 1,
     .want = {"NVRTC could not compile mixtral.cu for sm_75", "older than sm_80"},
     .seconds = 90},
    {"a first error longer than kerr's buffer (a 20,000-character architecture)",
     {"kilnc", "check", "{T}/cfg_arch_long"}, 1,
     {"cfg_arch_long/config.json: architecture 'AAAAAAAA", "(message cut: "}},
    /* ---- CLI: the newcomer's rough edges */
    {"kiln with no command", {"kiln"}, 2, {"kiln: error: missing COMMAND", "kiln --help"}},
    {"kiln run --foo", {"kiln", "run", ART, "--foo"}, 2,
     {"kiln run: error: unknown option '--foo'", "run 'kiln run --help' for usage"}},
    {"kiln run without OUT_DIR", {"kiln", "run", "--ids", "1"}, 2,
     {"kiln run: error: missing OUT_DIR"}},
    {"kilnc check without MODEL_DIR", {"kilnc", "check"}, 2,
     {"kilnc check: error: missing MODEL_DIR", "run 'kilnc check --help' for usage"}},
    {"kiln run on a missing folder", {"kiln", "run", "{T}/nowhere", "--ids", "1"}, 1,
     {"{T}/nowhere: not a folder: it does not exist"}},
    {"kiln run on a folder without model.kiln or config.json", {"kiln", "run", "{T}/b", "--ids", "1"},
     1, {"{T}/b: no model.kiln in this folder, and no config.json", "kilnc compile"}},
    {"kiln run --token-types beyond the model's type table (CPU backend)",
     {"kiln", "run", FIX "/bert", "--ids", "1,2,3", "--token-types", "0,1,2"}, 2,
     {"prompt token 2 has token type 2: expected 0 .. 1"}},
    {"kiln run --token-types on a model without token types (CPU backend)",
     {"kiln", "run", FIX "/llama", "--ids", "1,2", "--token-types", "0,1", "--max-new", "1"}, 2,
     {"prompt token 1 has token type 1: this model takes no token types (only 0)"}},
    {"kiln run --max-batch on a compiled model (a checkpoint's option)",
     {"kiln", "run", ART, "--ids", "1", "--max-batch", "2"}, 1,
     {"--max-batch applies to a Hugging Face checkpoint folder only", "kilnc compile --max-batch"}},
    {"kiln tokenize on plain text", {"kiln", "tokenize", FIX "/tokenizers/gpt2_bpe.json"}, 1,
     {"kiln tokenize: error: stdin line 2: expected one JSON string per line"},
     "\"fine\"\nplain text\n"},
    {"kiln tokenize, a 65 MiB line", {"kiln", "tokenize", FIX "/tokenizers/gpt2_bpe.json"}, 1,
     {"kiln tokenize: error: stdin line 1: longer than 64 MiB"}, "@long_line.jsonl"},

    /* ---- tokenizer.json (issue: id 2^31-1 overflowed, Fixed -5 / 1e11 padded toward SIZE_MAX,
     * negative pad ids, truncation lengths and added-token ids were accepted) */
    {"tokenizer vocab id 2147483647", {"kiln", "tokenize", "{T}/tok_vocab_id.json"}, 1,
     {"tok_vocab_id.json", "vocab|2147483647"}, "\"hi\"\n"},
    {"tokenizer padding Fixed -5", {"kiln", "tokenize", "{T}/tok_pad_neg.json"}, 1,
     {"tok_pad_neg.json", "padding|Fixed"}, "\"hi\"\n"},
    {"tokenizer padding Fixed 1e11", {"kiln", "tokenize", "{T}/tok_pad_huge.json"}, 1,
     {"tok_pad_huge.json", "padding|Fixed"}, "\"hi\"\n"},
    {"tokenizer negative pad_id", {"kiln", "tokenize", "{T}/tok_pad_id.json"}, 1,
     {"tok_pad_id.json", "pad_id"}, "\"hi\"\n"},
    {"tokenizer negative truncation max_length", {"kiln", "tokenize", "{T}/tok_trunc.json"}, 1,
     {"tok_trunc.json", "max_length|truncation"}, "\"hi\"\n"},
    {"tokenizer negative added-token id", {"kiln", "tokenize", "{T}/tok_added.json"}, 1,
     {"tok_added.json", "added_tokens|id"}, "\"hi\"\n"},

    /* ---- archspecs in KILN_SPEC_PATH (issue: a loop hung every command, a spec could grow to
     * 8 GB or call os.execute): skipped with a warning naming the spec, within the bounds */
    /* these two run the sandbox to its limits (100 million instructions, 256 MiB): a few seconds,
     * ten under ASan on a busy machine, so they have a longer watchdog and start first */
    {"archspec that loops forever", {"kilnc", "archs"}, 0, {"loop.lua"}, NULL, "{T}/spec_loop",
     NULL, 1, 60},
    {"archspec that loops forever, kilnc check", {"kilnc", "check", "{T}/llama"}, 0, {"loop.lua"},
     NULL, "{T}/spec_loop", NULL, 1, 60},
    {"archspec that grows without bound", {"kilnc", "archs"}, 0, {"mem.lua", "memory"}, NULL,
     "{T}/spec_mem", NULL, 1, 60},
    {"archspec calling os.execute", {"kilnc", "archs"}, 0, {"exec.lua", "os|execute"}, NULL,
     "{T}/spec_exec", "{T}/pwned", 1},
    {"archspec writing a file with io.open", {"kilnc", "archs"}, 0, {"io.lua", "io|open"}, NULL,
     "{T}/spec_io", "{T}/pwned_io", 1},

    /* ---- config.json structural nonsense (issue: 100,000 layers never finished; 0 or -2 layers
     * compiled a 0-layer model; 0 heads gave a raw Lua error; 0 positions were accepted) */
    {"config num_hidden_layers 100000", {"kilnc", "check", "{T}/cfg_layers_huge"}, 1,
     {"cfg_layers_huge", "num_hidden_layers|model.layers.2."}},
    {"config num_hidden_layers 0", {"kilnc", "check", "{T}/cfg_layers_0"}, 1,
     {"cfg_layers_0/config.json", "num_hidden_layers"}},
    {"config num_hidden_layers -2", {"kilnc", "check", "{T}/cfg_layers_neg"}, 1,
     {"cfg_layers_neg/config.json", "num_hidden_layers"}},
    {"config num_hidden_layers 0, compile",
     {"kilnc", "compile", "{T}/cfg_layers_0", "-o", "{T}/cfg0_out", "--sm", "80"}, 1,
     {"cfg_layers_0/config.json", "num_hidden_layers"}},
    {"config num_attention_heads 0", {"kilnc", "check", "{T}/cfg_heads_0"}, 1,
     {"cfg_heads_0/config.json", "num_attention_heads"}},
    {"config max_position_embeddings 0", {"kilnc", "check", "{T}/cfg_maxpos_0"}, 1,
     {"cfg_maxpos_0/config.json", "max_position_embeddings"}},

    /* ---- weights (issue: NaN and Inf passed check, ref and compile) */
    {"NaN weight, kilnc check", {"kilnc", "check", "{T}/w_nan"}, 1,
     {"w_nan/model.safetensors", BAD_TENSOR, "NaN|nan|non-finite|not finite"}},
    {"Inf weight, kilnc check", {"kilnc", "check", "{T}/w_inf"}, 1,
     {"w_inf/model.safetensors", BAD_TENSOR, "Inf|inf|non-finite|not finite"}},
    {"NaN weight, kilnc compile",
     {"kilnc", "compile", "{T}/w_nan", "-o", "{T}/w_nan_out", "--sm", "80"}, 1,
     {"w_nan/model.safetensors", BAD_TENSOR}},
    {"NaN weight, kilnc ref", {"kilnc", "ref", "{T}/w_nan", "--ids", "1", "--max-new", "1"}, 1,
     {"w_nan/model.safetensors", BAD_TENSOR}},
    /* (issue: a NaN byte of a published FP8 checkpoint, accepted by --allow-nonfinite, stopped
     * the packer: an assertion, then "a kilnc bug"; it is packed as the NaN byte) */
    {"FP8 NaN byte, kilnc compile",
     {"kilnc", "compile", "{T}/w_fp8_nan", "-o", "{T}/w_fp8_nan_out", "--sm", "90a"}, 1,
     {"w_fp8_nan/model.safetensors", FP8_TENSOR, "NaN"}, NULL, NULL, "{T}/w_fp8_nan_out/model.kiln",
     0, 90},
    {"FP8 NaN byte, kilnc compile --allow-nonfinite",
     {"kilnc", "compile", "{T}/w_fp8_nan", "-o", "{T}/w_fp8_nan_ok", "--sm", "90a",
      "--allow-nonfinite"},
     0, {"w_fp8_nan/model.safetensors", FP8_TENSOR, "accepted: --allow-nonfinite"}, NULL, NULL,
     NULL, 1, 90},
    {"FP8 infinite scale, kilnc compile --allow-nonfinite",
     {"kilnc", "compile", "{T}/w_fp8_inf", "-o", "{T}/w_fp8_inf_ok", "--sm", "90a",
      "--allow-nonfinite"},
     0, {"w_fp8_inf/model.safetensors", FP8_TENSOR, "accepted: --allow-nonfinite"}, NULL, NULL,
     NULL, 1, 90},

    /* ---- artifact (README: a truncated, corrupted or mismatched artifact is refused; issue: the
     * manifest had no checksum, an out-of-range sample_kernel was used unchecked) */
    {"artifact truncated", {"kiln", "run", "{T}/art_trunc", "--ids", "1"}, 1,
     {"art_trunc/model.kiln", "truncated|outside the file|past the end"}},
    {"artifact of 10 bytes", {"kiln", "run", "{T}/art_tiny", "--ids", "1"}, 1,
     {"art_tiny/model.kiln", "not a kiln artifact"}},
    {"artifact corrupted (a code blob)", {"kiln", "run", "{T}/art_blob", "--ids", "1"}, 1,
     {"art_blob/model.kiln", "checksum"}},
    {"artifact corrupted (one bit of the manifest's max_seq_len)",
     {"kiln", "run", "{T}/art_limit", "--ids", "1"}, 1,
     {"art_limit/model.kiln", "manifest|checksum"}},
    {"artifact corrupted, kiln inspect", {"kiln", "inspect", "{T}/art_limit"}, 1,
     {"art_limit/model.kiln", "manifest|checksum"}},
    {"artifact sample_kernel out of range", {"kiln", "run", "{T}/art_sample", "--ids", "1"}, 1,
     {"art_sample/model.kiln", "sample_kernel|checksum"}},
    {"artifact from another model, same shapes",
     {"kiln", "run", "{T}/art_manifest_other", "--ids", "1"}, 1,
     {"rank0-of-1.safetensors|model.kiln", "does not belong|does not match|mismatch"}},
    /* ---- shard (README: truncated, corrupted, mismatched; issue: no data checksum, a shard of
     * another model of the same shapes was accepted) */
    /* kiln run hashes the shard's data while it uploads it, so without a GPU this one is reached
     * through kiln inspect --verify, which runs the same check (ka_shard_verify) */
    {"shard corrupted (one bit of one weight)",
     {"kiln", "inspect", "--verify", "{T}/art_shard_flip"}, 1,
     {"art_shard_flip/" SHARD, "checksum|hash|does not match"}},
    {"shard truncated", {"kiln", "run", "{T}/art_shard_trunc", "--ids", "1"}, 1,
     {"art_shard_trunc/" SHARD}},
    {"shard of another model, same shapes", {"kiln", "run", "{T}/art_shard_other", "--ids", "1"},
     1, {"art_shard_other/" SHARD, "does not belong|does not match|mismatch"}},
    {"shard missing", {"kiln", "run", "{T}/art_shard_missing", "--ids", "1"}, 1,
     {"art_shard_missing/" SHARD}},
};
#pragma GCC diagnostic pop

/* ---------------------------------------------------------------- running a row */

/* `s` with every {T} replaced by the temporary folder (heap); {IDS129} is a prompt of 129 ids. */
static char *subst(const char *s)
{
    if (!strcmp(s, "{IDS129}")) {
        char *ids = xmalloc(2 * 129);
        for (int i = 0; i < 129; i++)
            ids[2 * i] = '1', ids[2 * i + 1] = i < 128 ? ',' : 0;
        return ids;
    }
    char *out = xstrdup(s);
    for (char *at; (at = strstr(out, "{T}"));) {
        char *n = xasprintf("%.*s%s%s", (int)(at - out), out, T, at + 3);
        free(out);
        out = n;
    }
    return out;
}

static long rss_mb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb / 1024;
}

/* One row in flight: its process, and what it left when it ended. */
typedef struct job {
    const row *r;
    char *argv[16];
    char *errp;
    pid_t pid;
    double t0, seconds;
    const char *why; /* "hang" or "runaway memory" when the watchdog killed it */
    int code;        /* exit status; 128+signal when killed */
    char *err;       /* stderr */
} job;

/* Starts row i in its own process group, stdin from its text, stderr to a file of its own. */
static void job_start(job *j, const row *r, size_t i)
{
    memset(j, 0, sizeof *j);
    j->r = r;
    int n = 0;
    j->argv[n++] = xstrdup(!strcmp(r->args[0], "kiln") ? KILN : KILNC);
    for (int k = 1; k < 14 && r->args[k]; k++)
        j->argv[n++] = subst(r->args[k]);
    char name[32];
    snprintf(name, sizeof name, ".stderr.%zu", i);
    j->errp = tp(name);
    snprintf(name, sizeof name, ".stdin.%zu", i);
    char *inp = r->in && r->in[0] == '@' ? tp(r->in + 1) : tp(name);
    if (!r->in || r->in[0] != '@')
        tu_write_bytes(inp, r->in ? r->in : "", r->in ? strlen(r->in) : 0);
    char *spec = r->spec_path ? subst(r->spec_path) : NULL;
    j->t0 = util_now();
    j->pid = fork();
    if (j->pid < 0)
        tu_die("fork", j->argv[0]);
    if (j->pid == 0) {
        setpgid(0, 0);
#ifndef __SANITIZE_ADDRESS__ /* ASan reserves terabytes of address space; the RSS watch is enough */
        struct rlimit lim = {(rlim_t)8 << 30, (rlim_t)8 << 30};
        setrlimit(RLIMIT_AS, &lim);
#endif
        int in = open(inp, O_RDONLY), out = open("/dev/null", O_WRONLY),
            er = open(j->errp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (in < 0 || out < 0 || er < 0)
            _exit(126);
        dup2(in, 0), dup2(out, 1), dup2(er, 2);
        if (spec)
            setenv("KILN_SPEC_PATH", spec, 1);
        execv(j->argv[0], j->argv);
        _exit(127);
    }
    setpgid(j->pid, j->pid); /* (also in the child: whichever runs first) */
    free(spec);
    free(inp);
}

/* Polls a running job: 1 when it has ended (or was killed by the watchdog), else 0. The child
 * is reaped only after its process group is killed (anything it left behind), so its pid, and
 * with it the group id, cannot have been reused by then. */
static int job_poll(job *j)
{
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, (id_t)j->pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0)
        tu_die("waitid", j->argv[0]);
    if (si.si_pid != j->pid) { /* still running */
        double el = util_now() - j->t0;
        if (el > (j->r->seconds ? j->r->seconds : ROW_SECONDS))
            j->why = "hang";
        else if (rss_mb(j->pid) > ROW_RSS_MB)
            j->why = "runaway memory";
        if (!j->why)
            return 0;
    }
    kill(-j->pid, SIGKILL);
    int st = 0;
    if (waitpid(j->pid, &st, 0) != j->pid)
        tu_die("waitpid", j->argv[0]);
    j->seconds = util_now() - j->t0;
    j->code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    j->err = tu_read(j->errp, NULL);
    return 1;
}

static void job_free(job *j)
{
    for (int k = 0; j->argv[k]; k++)
        free(j->argv[k]);
    free(j->errp);
    free(j->err);
}

/* Does `hay` hold one of the '|'-separated alternatives of `want`? */
static int has_any(const char *hay, const char *want)
{
    char *w = subst(want), *save = NULL;
    int ok = 0;
    if (!strchr(want, '|'))
        ok = strstr(hay, w) != NULL;
    else
        for (char *a = strtok_r(w, "|", &save); a && !ok; a = strtok_r(NULL, "|", &save))
            ok = strstr(hay, a) != NULL;
    free(w);
    return ok;
}

/* Checks one finished row; returns NULL when it passes, else why not (heap). */
static char *check_row(const row *r, const job *res)
{
    if (res->why)
        return xasprintf("%s: killed after %.1f s", res->why, res->seconds);
    if (strstr(res->err, "Sanitizer") || strstr(res->err, "runtime error:"))
        return xstrdup("a sanitizer report");
    if (res->code >= 128)
        return xasprintf("crashed (signal %d)", res->code - 128);
    if (res->code != r->code)
        return xasprintf("exit status %d, expected %d", res->code, r->code);
    /* an error (or warning) line from the command itself, and none of them empty */
    const char *kind = r->warning ? ": warning: " : ": error: ";
    int lines = 0;
    for (const char *p = res->err; *p;) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        const char *k = memmem(p, n, kind, strlen(kind));
        if (k && !strncmp(p, "kiln", 4)) {
            lines++;
            const char *msg = k + strlen(kind);
            if (msg >= p + n || *msg == ' ')
                return xasprintf("an empty message: '%.*s'", (int)n, p);
        }
        p = nl ? nl + 1 : p + n;
    }
    if (!lines)
        return xasprintf("no line with '%s'", kind);
    for (int i = 0; i < 4 && r->want[i]; i++)
        if (!has_any(res->err, r->want[i]))
            return xasprintf("stderr does not name '%s'", r->want[i]);
    if (r->absent) {
        char *a = subst(r->absent);
        int there = access(a, F_OK) == 0;
        free(a);
        if (there)
            return xasprintf("the command created %s", r->absent);
    }
    return NULL;
}

static void test_table(void **state)
{
    (void)state;
    double t0 = util_now();
    make_inputs();
    print_message("bad inputs made in %.1f s\n", util_now() - t0);
    /* rows are independent: PARALLEL at a time, most of each is process start-up; the slow
     * ones (NVRTC) first, so the short ones run beside them */
    enum { NROWS = ARRAY_LEN(rows), PARALLEL = 4 };
    job *jobs = xcalloc(NROWS, sizeof(job));
    size_t order[NROWS], no = 0, next = 0, done = 0, running[PARALLEL];
    for (int slow = 1; slow >= 0; slow--)
        for (size_t i = 0; i < NROWS; i++)
            if ((rows[i].seconds > 0) == slow)
                order[no++] = i;
    int nrun = 0;
    while (done < NROWS) {
        while (nrun < PARALLEL && next < NROWS) {
            size_t i = order[next++];
            job_start(&jobs[i], &rows[i], i);
            running[nrun++] = i;
        }
        for (int k = 0; k < nrun;)
            if (job_poll(&jobs[running[k]])) {
                done++;
                running[k] = running[--nrun];
            } else
                k++;
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    int failed = 0;
    for (size_t i = 0; i < NROWS; i++) {
        const job *j = &jobs[i];
        char *why = check_row(&rows[i], j);
        if (why) {
            failed++;
            print_message("FAIL  %-58s %s\n      $", rows[i].name, why);
            for (int k = 0; j->argv[k]; k++)
                print_message(" %s", k ? j->argv[k] : rows[i].args[0]);
            size_t el = strlen(j->err);
            print_message("\n      exit %d in %.2f s; stderr%s:\n%s%s", j->code, j->seconds,
                          el > 2000 ? " (the last 2000 bytes)" : "",
                          el > 2000 ? j->err + el - 2000 : j->err,
                          el && j->err[el - 1] == '\n' ? "" : "\n");
        } else {
            print_message("ok    %-58s %.2f s\n", rows[i].name, j->seconds);
        }
        free(why);
        job_free(&jobs[i]);
    }
    free(jobs);
    print_message("%zu rows, %d failed, %.1f s in all\n", (size_t)NROWS, failed, util_now() - t0);
    assert_int_equal(failed, 0);
}

static int setup(void **state)
{
    (void)state;
    T = tu_tmpdir();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tu_rmrf(T);
    T = NULL;
    return 0;
}

int main(void)
{
    KILNC = tu_binary("KILNC", "test_badinput");
    KILN = tu_binary("KILN", "test_badinput");
    /* the children see only the built-in archspecs unless a row sets KILN_SPEC_PATH */
    unsetenv("KILN_SPEC_PATH");
    unsetenv("KILN_ARCHSPECS");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_table, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
