/* test_artifact — model.kiln and its shard refuse anything that is not exactly what kilnc wrote,
 * without a GPU:
 *
 *   - every fixture's manifest survives ka_write + ka_read field for field, and passes every
 *     range check (so the checks accept what the compiler emits), sharded ones (--tp 2, 1) too;
 *   - every bit of the header and of the manifest, and every byte of the blobs and the zero gaps
 *     between sections, flipped one at a time, is refused; so are a byte appended or cut off;
 *   - manifests with one bad field (sample_kernel, kernel, weight, const, layer and buffer
 *     references, grids, GEMM dims, weight sizes, token ids, limits, counts, paths; tp, the
 *     shard list and collective steps of a --tp 2 manifest), re-signed with a correct header
 *     hash so that the range check and not the checksum is what refuses them, each with a
 *     message naming the file, the place and expected vs got; "gemm" (kilnc compile --gemm)
 *     that is not cublaslt or kiln, or kiln with cuBLASLt steps; none: cublaslt;
 *   - the shard: a shard of another model with the same names and shapes is refused by its id
 *     (by km_load too, before any GPU work), a truncated shard and a modified header or data
 *     byte are refused naming the shard; the chunked hash does not depend on threads or on how
 *     the data is fed;
 *   - KILN_ABLATE (runtime/engine.c, timing only): a part that is not [A-Za-z0-9_], an empty
 *     part, or one no kernel's name holds is refused by km_load, before any GPU work.
 *
 * The artifacts are built in-process (lower, pack, ka_write with small stand-in blobs in place
 * of NVRTC output), so the test takes about a second.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "artifact.h"
#include "engine.h"
#include "hash.h"
#include "lower.h"
#include "pack.h"
#include "pipeline.h"

#define FIX "tests/fixtures/"

static char tmp[256];
static char art[512];     /* the llama artifact folder */
static unsigned char *A;  /* its model.kiln */
static size_t alen;

static void set_identity(ka_manifest *m, const char *name, const kc *c)
{
    m->model_name = xstrdup(name);
    m->arch = xstrdup("TestForCausalLM");
    m->spec_name = xstrdup(c->spec->name);
    m->task = xstrdup(spec_task_name(c->spec->task));
    if (c->spec->task == TASK_CLASSIFY) { /* as kilnc compile: one name per score */
        kerr err;
        kerr_clear(&err);
        assert_int_equal(config_labels(c->cfg, m->hidden, &m->labels, &err), 0);
    }
    m->kilnc_version = xstrdup(KILN_VERSION);
    m->spec_hash = 1;
    m->config_hash = 2;
    m->layout_hash = 3;
    /* kilnc's overrides and generation defaults (max_new_tokens left out: each is optional) */
    m->n_overrides = 2;
    m->overrides = xcalloc(2, sizeof(char *));
    m->overrides[0] = xstrdup("--override rope_scaling.factor=8 (was 4)");
    m->overrides[1] = xstrdup("--pooling cls (was mean)");
    if (!m->output_pool)
        m->gen = (ka_gen){.has_temperature = 1, .has_top_p = 1, .has_top_k = 1,
                          .temperature = 0.7, .top_p = 0.95, .top_k = 40};
}

/* Stand-ins for the PTX, a cubin and the source: small, with an odd length and a 256-byte one. */
static char blob_ptx[1001], blob_cubin[512], blob_src[77];

static int write_kiln(const char *path, ka_manifest *m, kerr *err)
{
    memset(blob_ptx, 'p', sizeof blob_ptx - 1);
    for (size_t i = 0; i < sizeof blob_cubin; i++)
        blob_cubin[i] = (char)(i * 7 + 1);
    memset(blob_src, 's', sizeof blob_src);
    m->nblobs = 3;
    m->blobs = xcalloc(3, sizeof(ka_blob));
    m->blobs[0] = (ka_blob){xstrdup("ptx.compute_80"), 0, sizeof blob_ptx - 1, 0};
    m->blobs[1] = (ka_blob){xstrdup("cubin.sm_80"), 0, sizeof blob_cubin, 0};
    m->blobs[2] = (ka_blob){xstrdup("source.cu"), 0, sizeof blob_src, 0};
    const void *data[3] = {blob_ptx, blob_cubin, blob_src};
    return ka_write(path, m, data, err);
}

/* invariant: kilnc compile --batch-invariant (with the kiln GEMM it implies) */
static void lower_fixture_with(kc *c, const char *dir, int tp, int invariant)
{
    kc_opts o = {.need_weights = 1, .max_seq_len = 128, .max_seqs = 4, .max_tokens = 64, .tp = tp,
                 .gemm_kiln = invariant, .batch_invariant = invariant};
    kerr err;
    kerr_clear(&err);
    if (kc_open(c, dir, &o, &err) || kc_run(c, NULL, NULL, NULL, &err))
        fail_msg("%s: %s", dir, kerr_msg(&err));
}

static void lower_fixture_tp(kc *c, const char *dir, int tp) { lower_fixture_with(c, dir, tp, 0); }

static void lower_fixture(kc *c, const char *dir) { lower_fixture_tp(c, dir, 0); }

/* kilnc compile without NVRTC: the model in `dir` into the folder `out`. */
static void build(const char *dir, const char *out)
{
    kc c;
    lower_fixture(&c, dir);
    char mk[700];
    kerr err;
    kerr_clear(&err);
    snprintf(mk, sizeof mk, "%s/model.kiln", out);
    ka_manifest *m = &c.low->m;
    if (pack_shards(&c, c.low, out, 0, m, &err))
        fail_msg("pack: %s", kerr_msg(&err));
    set_identity(m, "llama", &c);
    if (write_kiln(mk, m, &err))
        fail_msg("write: %s", kerr_msg(&err));
    kc_free(&c);
}

static unsigned char *slurp(const char *path, size_t *len)
{
    kerr err;
    kerr_clear(&err);
    unsigned char *d = (unsigned char *)util_read_file(path, len, &err);
    if (!d)
        fail_msg("%s", kerr_msg(&err));
    return d;
}

static uint64_t get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* ka_read_mem on bytes; returns the error ("" when accepted). */
static const char *read_mem(const unsigned char *d, size_t n, kerr *err)
{
    kerr_clear(err);
    ka_file *f = ka_read_mem("art/model.kiln", d, n, err);
    if (f) {
        ka_file_free(f);
        return "";
    }
    return kerr_msg(err);
}

/* ---------------------------------------------------------------- round trips */

static void same_arg(const ka_arg *a, const ka_arg *b)
{
    assert_int_equal(a->kind, b->kind);
    assert_int_equal(a->i, b->i);
    assert_true(a->kind != KA_ARG_F32 || (float)a->f == (float)b->f);
}

static void same_steps(const ka_step *a, const ka_step *b, int n)
{
    for (int i = 0; i < n; i++) {
        assert_string_equal(a[i].label, b[i].label);
        assert_int_equal(a[i].kind, b[i].kind);
        assert_int_equal(a[i].size, b[i].size);
        assert_int_equal(a[i].logits, b[i].logits);
        assert_int_equal(a[i].rows, b[i].rows); /* kernel steps lost it before format 2 */
        if (a[i].kind != KA_KERNEL) { /* a GEMM, or a collective (w, bias, k, ld* zero) */
            same_arg(&a[i].x, &b[i].x);
            same_arg(&a[i].w, &b[i].w);
            same_arg(&a[i].bias, &b[i].bias);
            same_arg(&a[i].y, &b[i].y);
            assert_int_equal(a[i].n, b[i].n);
            assert_int_equal(a[i].k, b[i].k);
            assert_int_equal(a[i].ldx, b[i].ldx);
            assert_int_equal(a[i].ldy, b[i].ldy);
            assert_int_equal(a[i].out_f32, b[i].out_f32);
            continue;
        }
        assert_int_equal(a[i].kernel, b[i].kernel);
        assert_memory_equal(a[i].grid, b[i].grid, sizeof a[i].grid);
        assert_int_equal(a[i].nargs, b[i].nargs);
        for (int k = 0; k < a[i].nargs; k++)
            same_arg(&a[i].args[k], &b[i].args[k]);
    }
}

static void test_every_fixture_round_trips(void **state)
{
    (void)state;
    static const char *fx[] = {"llama",   "llama_tied_oldstyle", "mistral", "qwen2", "qwen",
                               "mixtral", "mixtral4",            "bloom",   "bert",  "llama_bf16",
                               /* sharded (--tp): collectives, rank arguments, shards */
                               "llama",   "mixtral",             "bloom",   "bert",  "llama",
                               /* classifiers: the scores as output, the labels */
                               "qwen2_cls", "bert_cls",
                               /* longrope: limits.rope_switch 12 */
                               "phi3_longrope"};
    static const int tps[ARRAY_LEN(fx)] = {[10] = 2, [11] = 2, [12] = 2, [13] = 2, [14] = 1,
                                           [16] = 2};
    for (size_t i = 0; i < ARRAY_LEN(fx); i++) {
        char dir[256], path[700];
        snprintf(dir, sizeof dir, FIX "%s", fx[i]);
        snprintf(path, sizeof path, "%s/rt.kiln", tmp);
        kc c;
        lower_fixture_tp(&c, dir, tps[i]);
        ka_manifest *m = &c.low->m;
        /* kiln run bounds prompt ids by vocab: an embedding model's is its token table's rows */
        assert_true(m->vocab > 0);
        set_identity(m, fx[i], &c);
        m->shard_chunk = HASH_CHUNK;
        kerr err;
        kerr_clear(&err);
        assert_int_equal(write_kiln(path, m, &err), 0);
        ka_file *f = ka_read(path, &err);
        if (!f)
            fail_msg("%s: %s", fx[i], kerr_msg(&err));
        const ka_manifest *r = &f->m;
        assert_int_equal(r->vocab, m->vocab);
        assert_int_equal(r->hidden, m->hidden);
        assert_int_equal(r->max_tokens, m->max_tokens);
        assert_int_equal(r->max_seqs, m->max_seqs);
        assert_int_equal(r->gemv_max, m->gemv_max);
        assert_int_equal(r->skinny_max, m->skinny_max);
        assert_int_equal(m->rope_switch, strcmp(fx[i], "phi3_longrope") ? 0 : 12);
        assert_int_equal(r->rope_switch, m->rope_switch);
        assert_int_equal(r->slab_bytes, m->slab_bytes);
        assert_int_equal(r->scratch_bytes, m->scratch_bytes);
        assert_int_equal(r->output_pool, m->output_pool);
        assert_string_equal(r->task, m->task);
        assert_int_equal(!r->labels, !m->labels);
        for (int k = 0; m->labels && k < m->hidden; k++)
            assert_string_equal(r->labels[k], m->labels[k]);
        assert_int_equal(r->sample_kernel, m->sample_kernel);
        assert_int_equal(r->n_layers, m->n_layers);
        assert_memory_equal(r->layers, m->layers, sizeof(ka_layer) * (size_t)m->n_layers);
        assert_int_equal(r->nkernels, m->nkernels);
        for (int k = 0; k < m->nkernels; k++) {
            assert_string_equal(r->kernels[k].name, m->kernels[k].name);
            assert_int_equal(r->kernels[k].block, m->kernels[k].block);
            assert_int_equal(r->kernels[k].smem, m->kernels[k].smem);
        }
        assert_int_equal(r->nweights, m->nweights);
        for (int k = 0; k < m->nweights; k++) {
            assert_string_equal(r->weights[k].name, m->weights[k].name);
            assert_int_equal(r->weights[k].nbytes, m->weights[k].nbytes);
            assert_memory_equal(r->weights[k].shape, m->weights[k].shape, sizeof(int64_t) * 4);
        }
        assert_int_equal(r->nconsts, m->nconsts);
        for (int k = 0; k < m->nconsts; k++)
            assert_memory_equal(r->consts[k].v, m->consts[k].v, sizeof(float) * (size_t)m->consts[k].n);
        assert_int_equal(r->n_overrides, m->n_overrides);
        for (int k = 0; k < m->n_overrides; k++)
            assert_string_equal(r->overrides[k], m->overrides[k]);
        assert_memory_equal(&r->gen, &m->gen, sizeof m->gen); /* (no padding: 6 ints, 2 doubles) */
        assert_int_equal(r->gen.has_temperature, !m->output_pool);
        assert_int_equal(r->gen.has_max_new, 0);
        assert_int_equal(r->tp, tps[i] ? tps[i] : 1);
        for (int k = 0; k < r->tp; k++) {
            assert_string_equal(r->shards[k].path, m->shards[k].path);
            assert_int_equal(r->shards[k].id, m->shards[k].id);
        }
        /* collective steps exactly when sharded: --tp 1 has collectives of one */
        assert_true((r->collectives > 0) == (tps[i] > 0));
        assert_int_equal(r->nprefill, m->nprefill);
        assert_int_equal(r->ndecode, m->ndecode);
        same_steps(r->prefill, m->prefill, m->nprefill);
        same_steps(r->decode, m->decode, m->ndecode);
        /* the PTX is followed by a zero byte: it is loaded as a C string */
        const ka_blob *ptx = ka_find_blob(r, "ptx.compute_80");
        assert_non_null(ptx);
        assert_int_equal(f->data[ptx->offset + ptx->len], 0);
        ka_file_free(f);
        kc_free(&c);
    }
}

/* ---------------------------------------------------------------- bit flips */

static void test_header_every_bit(void **state)
{
    (void)state;
    kerr err;
    assert_string_equal(read_mem(A, alen, &err), "");
    for (int byte = 0; byte < KA_HEADER; byte++)
        for (int bit = 0; bit < 8; bit++) {
            A[byte] ^= (unsigned char)(1 << bit);
            const char *m = read_mem(A, alen, &err);
            A[byte] ^= (unsigned char)(1 << bit);
            if (!strstr(m, "art/model.kiln: "))
                fail_msg("header byte %d bit %d: accepted or unnamed: '%s'", byte, bit, m);
            const char *want = byte < 8    ? "not a kiln artifact"
                               : byte < 12 ? "format version"
                               : byte < 16 ? "not zero"
                               : byte < 32 ? "truncated or corrupt"
                                           : "manifest checksum mismatch";
            if (!strstr(m, want))
                fail_msg("header byte %d bit %d: '%s' does not say '%s'", byte, bit, m, want);
        }
}

static void test_manifest_every_bit(void **state)
{
    (void)state;
    uint64_t moff = get64(A + 16);
    kerr err;
    for (uint64_t byte = moff; byte < alen; byte++)
        for (int bit = 0; bit < 8; bit++) {
            A[byte] ^= (unsigned char)(1 << bit);
            const char *m = read_mem(A, alen, &err);
            A[byte] ^= (unsigned char)(1 << bit);
            if (!strstr(m, "art/model.kiln: manifest checksum mismatch (corrupted or edited)"))
                fail_msg("manifest byte %llu bit %d: '%s'", (unsigned long long)byte, bit, m);
        }
    assert_non_null(strstr(kerr_msg(&err), "kilnc compile"));
}

/* The zero gaps between sections, every byte; the blobs, their first and last bytes and every
 * 31st (each read parses the whole manifest before it gets to them). */
static void test_blobs_and_gaps(void **state)
{
    (void)state;
    uint64_t moff = get64(A + 16);
    ka_file *f = ka_read_mem("a", A, alen, &(kerr){0});
    assert_non_null(f);
    int inblob[4096] = {0};
    assert_true(moff <= sizeof inblob / sizeof *inblob);
    for (int b = 0; b < f->m.nblobs; b++)
        for (uint64_t p = f->m.blobs[b].offset; p < f->m.blobs[b].offset + f->m.blobs[b].len; p++)
            inblob[p] = p == f->m.blobs[b].offset || p + 1 == f->m.blobs[b].offset + f->m.blobs[b].len ||
                        p % 31 == 0 ? 1 : 2;
    ka_file_free(f);
    kerr err;
    int n = 0;
    for (uint64_t byte = KA_HEADER; byte < moff; byte++) {
        if (inblob[byte] == 2)
            continue;
        unsigned char bit = (unsigned char)(1 << (byte % 8));
        A[byte] ^= bit;
        const char *m = read_mem(A, alen, &err);
        A[byte] ^= bit;
        const char *want = inblob[byte] ? "fails its checksum" : "is not zero";
        if (!strstr(m, "art/model.kiln: ") || !strstr(m, want))
            fail_msg("byte %llu: '%s' does not say '%s'", (unsigned long long)byte, m, want);
        n++;
    }
    assert_true(n > 500);
    /* a byte more or less */
    unsigned char *big = xmalloc(alen + 1);
    memcpy(big, A, alen);
    big[alen] = 0;
    assert_non_null(strstr(read_mem(big, alen + 1, &err), "truncated or corrupt"));
    assert_non_null(strstr(read_mem(A, alen - 1, &err), "truncated or corrupt"));
    free(big);
}

/* ---------------------------------------------------------------- re-signed bad fields */

/* The artifact with its manifest replaced by `root`, and a correct header hash. */
static unsigned char *resign(json_t *root, size_t *len)
{
    uint64_t moff = get64(A + 16);
    char *js = json_dumps(root, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    size_t jl = strlen(js);
    unsigned char *d = xmalloc(moff + jl);
    memcpy(d, A, moff);
    memcpy(d + moff, js, jl);
    put64(d + 24, jl);
    put64(d + 32, ka_manifest_hash(d, js, jl));
    free(js);
    *len = moff + jl;
    return d;
}

static json_t *manifest(void)
{
    uint64_t moff = get64(A + 16);
    json_t *r = json_loadb((const char *)A + moff, alen - moff, 0, NULL);
    assert_non_null(r);
    return r;
}

/* The first step of a schedule that is a GEMM (argkind NULL) or has an argument of that kind
 * (its index in *arg). */
static json_t *find_step(json_t *root, const char *sched, const char *argkind, size_t *arg)
{
    json_t *steps = json_object_get(root, sched), *s;
    size_t i;
    json_array_foreach(steps, i, s)
    {
        if (!argkind) {
            if (json_object_get(s, "gemm"))
                return s;
            continue;
        }
        json_t *args = json_object_get(s, "args"), *a;
        size_t k;
        json_array_foreach(args, k, a)
        if (!strcmp(json_string_value(json_array_get(a, 0)), argkind))
        {
            *arg = k;
            return s;
        }
    }
    fail_msg("no %s step with a %s argument", sched, argkind ? argkind : "gemm");
    return NULL;
}

static void set_int(json_t *o, const char *k, json_int_t v) { json_object_set_new(o, k, json_integer(v)); }
static json_t *limits(json_t *r) { return json_object_get(r, "limits"); }
static json_int_t lim(json_t *r, const char *k) { return json_integer_value(json_object_get(limits(r), k)); }

static void set_arg(json_t *r, const char *sched, const char *kind, json_int_t v)
{
    size_t k;
    json_t *s = find_step(r, sched, kind, &k);
    json_array_set_new(json_array_get(json_object_get(s, "args"), k), 1, json_integer(v));
}

typedef struct bad_case {
    const char *what;
    void (*edit)(json_t *r);
    const char *expect[3]; /* substrings of the message */
} bad_case;

static void e_none(json_t *r) { (void)r; }
static void e_sample(json_t *r) { set_int(r, "sample_kernel", 999); }
static void e_sample_neg(json_t *r) { set_int(r, "sample_kernel", -1); }
static void e_kernel(json_t *r)
{
    size_t k;
    set_int(find_step(r, "decode", "step", &k), "kernel", (json_int_t)json_array_size(json_object_get(r, "kernels")));
}
static void e_weight(json_t *r) { set_arg(r, "decode", "weight", 999); }
static void e_const(json_t *r) { set_arg(r, "prefill", "const", 77); }
static void e_kv(json_t *r) { set_arg(r, "decode", "kv_k", 2); }
static void e_buf(json_t *r) { set_arg(r, "decode", "buf", lim(r, "slab_bytes")); }
static void e_scratch(json_t *r) { set_arg(r, "prefill", "scratch", -256); }
static void e_i32(json_t *r) { set_arg(r, "decode", "step", 5); }
static void e_kind(json_t *r)
{
    size_t k;
    json_t *s = find_step(r, "decode", "weight", &k);
    json_array_set_new(json_array_get(json_object_get(s, "args"), k), 0, json_string("bogus"));
}
static void e_f32(json_t *r)
{
    size_t k;
    json_t *s = find_step(r, "decode", "f32", &k);
    json_array_set_new(json_array_get(json_object_get(s, "args"), k), 1, json_real(1e300));
}
static void e_nargs(json_t *r)
{
    size_t k;
    json_t *args = json_object_get(find_step(r, "decode", "step", &k), "args");
    while (json_array_size(args) <= KA_MAX_ARGS)
        json_array_append(args, json_array_get(args, 0));
}
static void e_grid_div(json_t *r)
{
    size_t k;
    json_t *g = json_object_get(find_step(r, "decode", "step", &k), "grid");
    json_array_set_new(json_array_get(g, 0), 4, json_integer(0));
}
static void e_grid_x(json_t *r)
{
    size_t k;
    json_t *g = json_object_get(find_step(r, "prefill", "step", &k), "grid");
    json_array_set_new(json_array_get(g, 0), 0, json_integer(INT32_MAX)); /* t: x T_max */
}
static void e_grid_y(json_t *r)
{
    size_t k;
    json_t *g = json_object_get(find_step(r, "decode", "step", &k), "grid");
    json_array_set_new(json_array_get(g, 1), 3, json_integer(70000)); /* add */
}
/* the sixth element, the SM count's multiplier (gemm90's one block an SM), is bounded */
static void e_grid_sm(json_t *r)
{
    size_t k;
    json_t *g = json_object_get(find_step(r, "decode", "step", &k), "grid");
    json_array_append_new(json_array_get(g, 0), json_integer(KA_MAX_SMS + 1));
}
static void e_grid_len(json_t *r)
{
    size_t k;
    json_t *x = json_array_get(json_object_get(find_step(r, "decode", "step", &k), "grid"), 0);
    json_array_append_new(x, json_integer(1));
    json_array_append_new(x, json_integer(1));
}
static void e_grid_shape(json_t *r)
{
    size_t k;
    json_array_remove(json_object_get(find_step(r, "decode", "step", &k), "grid"), 2);
}
static void e_gemm_n(json_t *r)
{
    json_t *s = find_step(r, "prefill", NULL, NULL);
    set_int(s, "n", json_integer_value(json_object_get(s, "n")) + 8);
    set_int(s, "ldy", json_integer_value(json_object_get(s, "ldy")) + 8);
}
static void e_gemm_ldx(json_t *r)
{
    json_t *s = find_step(r, "prefill", NULL, NULL);
    set_int(s, "ldx", json_integer_value(json_object_get(s, "k")) - 1);
}
static void e_gemm_x_extent(json_t *r)
{
    json_t *s = find_step(r, "prefill", NULL, NULL);
    json_array_set_new(json_object_get(s, "x"), 1, json_integer(lim(r, "slab_bytes") - 64));
}
static void e_gemm_w_kind(json_t *r)
{
    json_t *s = find_step(r, "prefill", NULL, NULL);
    json_array_set_new(json_object_get(s, "w"), 0, json_string("buf"));
}
static void e_gemm_k0(json_t *r) { set_int(find_step(r, "decode", NULL, NULL), "k", 0); }
static void e_size(json_t *r)
{
    size_t k;
    set_int(find_step(r, "decode", "step", &k), "size", 8);
}
static void e_skinny_max(json_t *r) { set_int(limits(r), "skinny_max", lim(r, "gemv_max")); }
static void e_skinny_neg(json_t *r) { set_int(limits(r), "skinny_max", -1); }
static void e_skinny_huge(json_t *r) { set_int(limits(r), "skinny_max", (json_int_t)1 << 40); }
static void e_size_mid(json_t *r)
{
    size_t k;
    set_int(limits(r), "skinny_max", 0);
    set_int(find_step(r, "decode", "step", &k), "size", KA_SIZE_MID);
}
static void e_wbytes(json_t *r)
{
    json_t *w = json_array_get(json_object_get(r, "weights"), 3);
    set_int(w, "nbytes", json_integer_value(json_object_get(w, "nbytes")) + 2);
}
static void e_wshape(json_t *r)
{
    json_t *w = json_array_get(json_object_get(r, "weights"), 0);
    json_array_set_new(json_object_get(w, "shape"), 0, json_integer(-512));
}
static void e_eos(json_t *r) { json_object_set_new(r, "eos", json_pack("[iI]", 2, lim(r, "vocab"))); }
static void e_bos(json_t *r) { set_int(r, "bos", -2); }
static void e_eos_count(json_t *r)
{
    json_t *e = json_object_get(r, "eos");
    while (json_array_size(e) <= KA_MAX_EOS)
        json_array_append_new(e, json_integer(1));
}
static void e_max_tokens(json_t *r) { set_int(limits(r), "max_tokens", 0); }
static void e_max_seqs(json_t *r) { set_int(limits(r), "max_seqs", 1 << 25); }
static void e_kv_slots(json_t *r)
{
    set_int(limits(r), "max_tokens", 1 << 16);
    set_int(limits(r), "max_seqs", 1 << 16);
    set_int(limits(r), "max_seq_len", 1 << 16);
}
static void e_max_seq_len(json_t *r) { set_int(limits(r), "max_seq_len", -1); }
static void e_gemv_max(json_t *r) { set_int(limits(r), "gemv_max", -1); }
static void e_rope_switch(json_t *r) { set_int(limits(r), "rope_switch", 0); }
static void e_slab(json_t *r) { set_int(limits(r), "slab_bytes", (json_int_t)1 << 50); }
static void e_tok_seqs(json_t *r) { set_int(limits(r), "max_seqs", lim(r, "max_tokens") + 1); }
static void e_vocab(json_t *r) { set_int(limits(r), "vocab", 0); }
static void e_layer(json_t *r)
{
    json_array_set_new(json_array_get(json_object_get(r, "kv_layers"), 1), 0, json_integer(0));
}
static void e_layer_vdim(json_t *r)
{
    json_array_set_new(json_array_get(json_object_get(r, "kv_layers"), 0), 2, json_integer(-1));
}
static void e_layer_pair(json_t *r) /* format 5's [n_kv, head_dim] */
{
    json_array_remove(json_array_get(json_object_get(r, "kv_layers"), 0), 2);
}
static void e_layer_no_v(json_t *r) /* an ordinary layer whose kernels read its V cache */
{
    json_array_set_new(json_array_get(json_object_get(r, "kv_layers"), 0), 2, json_integer(0));
}
static void e_layer_area(json_t *r)
{
    json_t *l = json_array_get(json_object_get(r, "kv_layers"), 0);
    json_array_set_new(l, 0, json_integer(1 << 10));
    json_array_set_new(l, 1, json_integer(8));
    json_array_set_new(l, 2, json_integer(2048));
}
static void e_no_limits(json_t *r) { json_object_del(r, "limits"); }
static void e_format(json_t *r) { set_int(r, "format", 1); }
static json_t *gen(json_t *r) { return json_object_get(r, "generation"); }
static void e_gen_temp(json_t *r) { json_object_set_new(gen(r), "temperature", json_real(100.5)); }
static void e_gen_temp_type(json_t *r) { json_object_set_new(gen(r), "temperature", json_string("hot")); }
static void e_gen_top_p(json_t *r) { json_object_set_new(gen(r), "top_p", json_real(1e-50)); }
static void e_gen_top_k(json_t *r) { set_int(gen(r), "top_k", -1); }
static void e_gen_max_new(json_t *r) { set_int(gen(r), "max_new_tokens", (json_int_t)1 << 25); }
static void e_gen_unknown(json_t *r) { set_int(gen(r), "min_p", 0); }
static void e_gen_missing(json_t *r) { json_object_del(r, "generation"); }
static void e_ovr_entry(json_t *r) { json_array_set_new(json_object_get(r, "overrides"), 0, json_integer(1)); }
static void e_ovr_empty(json_t *r) { json_array_set_new(json_object_get(r, "overrides"), 1, json_string("")); }
static void e_ovr_count(json_t *r)
{
    json_t *o = json_object_get(r, "overrides");
    for (int i = 0; i < KA_MAX_OVERRIDES; i++)
        json_array_append_new(o, json_string("x"));
}
static void e_dtype(json_t *r) { json_object_set_new(json_object_get(r, "identity"), "dtype", json_string("fp8")); }
static void e_task(json_t *r) { json_object_set_new(json_object_get(r, "identity"), "task", json_string("embed")); }
static json_t *shard0(json_t *r) { return json_array_get(json_object_get(r, "shards"), 0); }
static void e_shard_path(json_t *r) { json_object_set_new(shard0(r), "path", json_string("shards/../../etc/passwd")); }
static void e_shard_abs(json_t *r) { json_object_set_new(shard0(r), "path", json_string("/etc/passwd")); }
static void e_shard_rank(json_t *r) { json_object_set_new(shard0(r), "path", json_string("shards/rank1-of-1.safetensors")); }
static void e_shard_chunk(json_t *r) { set_int(r, "shard_chunk", 0); }
static void e_hex(json_t *r) { json_object_set_new(shard0(r), "id", json_string("xyz")); }
static void e_tp0(json_t *r) { set_int(r, "tp", 0); }
static void e_tp65(json_t *r) { set_int(r, "tp", 65); }
static void e_tp_shards(json_t *r) { set_int(r, "tp", 2); } /* one shard listed */
static void e_shards_extra(json_t *r)
{
    json_t *sh = json_object_get(r, "shards");
    json_array_append(sh, json_array_get(sh, 0));
}
static void e_rank_arg(json_t *r)
{
    size_t k;
    json_t *a = json_object_get(find_step(r, "decode", "step", &k), "args");
    json_array_set_new(a, 0, json_pack("[sI]", "rank", (json_int_t)1 << 40));
}
/* a kernel step's tensor map (gemm90's x and w): of x or w only, and of a step that has them */
static void e_tmap_val(json_t *r)
{
    size_t k;
    json_t *a = json_object_get(find_step(r, "decode", "step", &k), "args");
    json_array_set_new(a, 0, json_pack("[si]", "tmap", 4));
}
static void e_tmap_no_x(json_t *r)
{
    size_t k;
    json_t *a = json_object_get(find_step(r, "decode", "step", &k), "args");
    json_array_set_new(a, 0, json_pack("[si]", "tmap", 1));
}
static void e_tmap_mixed(json_t *r)
{
    size_t k;
    json_t *a = json_object_get(find_step(r, "decode", "step", &k), "args");
    json_array_set_new(a, 0, json_pack("[si]", "tmap", 0));
    json_array_set_new(a, 1, json_pack("[si]", "tmap", 3));
}
static void e_const_val(json_t *r)
{
    json_t *v = json_object_get(json_array_get(json_object_get(r, "consts"), 0), "values");
    json_array_set_new(v, 0, json_real(1e39));
}
static void e_blob_off(json_t *r)
{
    json_t *b = json_array_get(json_object_get(r, "blobs"), 1);
    set_int(b, "offset", json_integer_value(json_object_get(b, "offset")) + 256);
}
static void e_blob_len(json_t *r)
{
    json_t *b = json_array_get(json_object_get(r, "blobs"), 2);
    set_int(b, "len", (json_int_t)1 << 40);
}
static void e_blob_dup(json_t *r)
{
    json_t *b = json_array_get(json_object_get(r, "blobs"), 2);
    json_object_set_new(b, "name", json_string("cubin.sm_80"));
}
static void e_type(json_t *r) { json_object_set_new(limits(r), "vocab", json_string("512")); }

static void test_bad_fields_resigned(void **state)
{
    (void)state;
    const bad_case cases[] = {
        {"sample_kernel", e_sample, {"manifest: top level: sample_kernel is 999, expected 0..", "kilnc compile"}},
        {"sample_kernel -1", e_sample_neg, {"sample_kernel is -1, expected 0.."}},
        {"kernel index", e_kernel, {"decode step ", "): kernel is ", ", expected 0.."}},
        {"weight index", e_weight, {"decode step ", "weight index 999 out of range (0.."}},
        {"const index", e_const, {"prefill step ", "constant table index 77 out of range (0.."}},
        {"kv layer", e_kv, {"KV layer index 2 out of range (0..1)"}},
        {"buf offset", e_buf, {"offset in the activation slab", "out of range"}},
        {"scratch offset", e_scratch, {"offset in the scratch area -256 out of range"}},
        {"step value", e_i32, {"(step) has the value 5, expected 0"}},
        {"tmap value", e_tmap_val, {"argument 0 (tmap) is 4, expected 0 or 2 (of x), 1 or 3 (of w)"}},
        {"tmap tensors", e_tmap_no_x, {"decode step ", "x is not a [kind, value] pair"}},
        {"tmap boxes", e_tmap_mixed,
         {"argument 1 (tmap) is 3, another kernel's boxes than the step's earlier tensor map"}},
        {"arg kind", e_kind, {"unknown kind 'bogus'"}},
        {"f32 arg", e_f32, {"(f32) is not a finite float"}},
        {"arg count", e_nargs, {"args has 21 entries, at most 20"}},
        {"grid div", e_grid_div, {"grid x.div is 0, expected 1.."}},
        {"grid x", e_grid_x, {"grid x is ", "blocks at the largest step (T=64 S=4 Q=64); the limit is 2147483647"}},
        {"grid y", e_grid_y, {"grid y is ", "the limit is 65535"}},
        {"grid rules", e_grid_shape, {"grid has 2 rules, expected 3"}},
        {"grid sm", e_grid_sm, {"grid x.sm is 1025, expected 0..1024"}},
        {"grid rule length", e_grid_len, {"grid rule x is not a list of 5 or 6 integers"}},
        {"gemm n", e_gemm_n, {"prefill step ", "GEMM n=", "but its weight"}},
        {"gemm ldx", e_gemm_ldx, {"ldx is ", "expected "}},
        {"gemm extent", e_gemm_x_extent, {"GEMM x needs ", "bytes at 64 rows", "left in the activation slab"}},
        {"gemm w", e_gemm_w_kind, {"GEMM w is buf, expected weight"}},
        {"gemm k", e_gemm_k0, {"decode step ", "k is 0, expected 1.."}},
        {"size", e_size, {"size is 8, expected 0..7"}},
        {"size mid", e_size_mid, {"size mid (3) needs limits.skinny_max, which is 0"}},
        {"weight bytes", e_wbytes, {"weight 3 (", "bytes for ", "elements of bf16"}},
        {"weight shape", e_wshape, {"weight 0 (", "a dimension is -512"}},
        {"eos", e_eos, {"token ids: eos id 1 is 512, expected 0..511"}},
        {"bos", e_bos, {"token ids: bos is -2, expected -1..511"}},
        {"eos count", e_eos_count, {"eos has 1025 entries, at most 1024"}},
        {"max_tokens", e_max_tokens, {"limits: max_tokens is 0, expected 1.."}},
        {"max_seqs", e_max_seqs, {"limits: max_seqs is 33554432, expected 1..16777216"}},
        {"max_seqs x max_seq_len", e_kv_slots, {"limits: max_seqs 65536 x max_seq_len 65536 KV slots do not fit a 32-bit index"}},
        {"max_seq_len", e_max_seq_len, {"limits: max_seq_len is -1"}},
        {"gemv_max", e_gemv_max, {"limits: gemv_max is -1"}},
        {"skinny_max", e_skinny_max, {"limits: skinny_max 8 is not above gemv_max 8"}},
        {"skinny_max negative", e_skinny_neg, {"limits: skinny_max is -1"}},
        {"skinny_max huge", e_skinny_huge, {"limits: skinny_max is 1099511627776"}},
        {"rope_switch", e_rope_switch, {"limits: rope_switch is 0, expected 1..16777216"}},
        {"slab", e_slab, {"limits: slab_bytes is 1125899906842624"}},
        {"tokens < seqs", e_tok_seqs, {"max_tokens 64 < max_seqs 65"}},
        {"vocab", e_vocab, {"limits: vocab is 0, expected 1.."}},
        {"kv layer shape", e_layer, {"kv layer 1: n_kv is 0, expected 1.."}},
        {"kv layer v_dim", e_layer_vdim, {"kv layer 0: v_dim is -1, expected 0..65536"}},
        {"kv layer pair", e_layer_pair, {"kv layer 0 is not an [n_kv, head_dim, v_dim] triple"}},
        {"kv layer without V", e_layer_no_v, {"the V cache of KV layer 0, which has none (v_dim 0)"}},
        {"kv layer size", e_layer_area, {"kv layer 0: n_kv 1024 x head_dim 8 (v_dim 2048) is over 1048576"}},
        {"missing", e_no_limits, {"field 'limits' is missing, expected an object"}},
        {"format", e_format, {"format is 1, expected 7..7"}},
        {"temperature", e_gen_temp, {"generation: temperature is out of range, expected a number from 0 and at most 100"}},
        {"temperature type", e_gen_temp_type, {"generation: temperature is not a number"}},
        {"top_p", e_gen_top_p, {"generation: top_p is out of range, expected a number above 0 and at most 1"}},
        {"top_k", e_gen_top_k, {"generation: top_k is -1, expected 0..2147483647"}},
        {"max_new_tokens", e_gen_max_new, {"generation: max_new_tokens is 33554432, expected 0..16777216"}},
        {"generation field", e_gen_unknown, {"generation: unknown field 'min_p'"}},
        {"generation missing", e_gen_missing, {"field 'generation' is missing, expected an object"}},
        {"override entry", e_ovr_entry, {"overrides: entry 0 is not a string, expected a string of 1 to 4096 bytes"}},
        {"override empty", e_ovr_empty, {"overrides: entry 1 is of another length"}},
        {"override count", e_ovr_count, {"overrides has 258 entries, at most 256"}},
        {"dtype", e_dtype, {"dtype is \"fp8\", expected bf16 or f16"}},
        {"task", e_task, {"output_pool is 0 for task embed"}},
        {"shard path", e_shard_path, {"shard 0: path is \"shards/../../etc/passwd\", expected \"shards/rank0-of-1.safetensors\""}},
        {"shard path /", e_shard_abs, {"path is \"/etc/passwd\", expected \"shards/rank0-of-1"}},
        {"shard path rank", e_shard_rank, {"path is \"shards/rank1-of-1.safetensors\", expected \"shards/rank0-of-1"}},
        {"shard chunk", e_shard_chunk, {"shard_chunk is 0, expected 1048576..1073741824"}},
        {"hex", e_hex, {"shard 0: id is \"xyz\", expected 16 lowercase hex digits"}},
        {"tp 0", e_tp0, {"top level: tp is 0, expected 1..64"}},
        {"tp 65", e_tp65, {"top level: tp is 65, expected 1..64"}},
        {"tp 2, one shard", e_tp_shards, {"shards: 1 entries for tp 2, expected one per rank"}},
        {"two shards, tp 1", e_shards_extra, {"shards: 2 entries for tp 1, expected one per rank"}},
        {"rank arg", e_rank_arg, {"(rank) is 1099511627776, expected"}},
        {"const value", e_const_val, {"constant table 0: value 0 is not a finite float"}},
        {"blob offset", e_blob_off, {"section 'cubin.sm_80' is at byte", "expected"}},
        {"blob len", e_blob_len, {"section 'source.cu'", "runs past the manifest"}},
        {"blob name", e_blob_dup, {"blobs 1 and 2 are both named 'cubin.sm_80'"}},
        {"type", e_type, {"limits: field 'vocab' is of another type, expected an integer"}},
    };
    kerr err;
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        json_t *r = manifest();
        cases[i].edit(r);
        size_t n;
        unsigned char *d = resign(r, &n);
        json_decref(r);
        const char *m = read_mem(d, n, &err);
        if (!strstr(m, "art/model.kiln: manifest: ") && !strstr(m, "art/model.kiln: section"))
            fail_msg("%s: accepted or unnamed: '%s'", cases[i].what, m);
        if (strstr(m, "checksum"))
            fail_msg("%s: refused by the checksum, not the range check: '%s'", cases[i].what, m);
        for (int k = 0; k < 3 && cases[i].expect[k]; k++)
            if (!strstr(m, cases[i].expect[k]))
                fail_msg("%s: '%s' does not say '%s'", cases[i].what, m, cases[i].expect[k]);
        free(d);
    }
    /* the re-signing itself is right: an unedited manifest, re-serialised, is accepted */
    json_t *r = manifest();
    e_none(r);
    size_t n;
    unsigned char *d = resign(r, &n);
    json_decref(r);
    assert_string_equal(read_mem(d, n, &err), "");
    free(d);
    /* ka_wrap_manifest (for fuzzers): a manifest without blobs, accepted, then a bad field */
    r = manifest();
    json_object_set_new(r, "blobs", json_array());
    char *js = json_dumps(r, JSON_COMPACT);
    d = ka_wrap_manifest(js, strlen(js), &n);
    assert_string_equal(read_mem(d, n, &err), "");
    free(d);
    free(js);
    e_sample(r);
    js = json_dumps(r, JSON_COMPACT);
    d = ka_wrap_manifest(js, strlen(js), &n);
    assert_non_null(strstr(read_mem(d, n, &err), "sample_kernel is 999"));
    free(d);
    free(js);
    json_decref(r);
}

/* ---------------------------------------------------------------- tensor parallelism */

/* A fixture's manifest at --tp `tp` (no blobs: read through ka_wrap_manifest), as JSON to edit;
 * invariant: compiled with --batch-invariant. */
static json_t *fixture_manifest_with(const char *name, int tp, int invariant)
{
    char dir[256];
    snprintf(dir, sizeof dir, FIX "%s", name);
    kc c;
    lower_fixture_with(&c, dir, tp, invariant);
    ka_manifest *m = &c.low->m;
    set_identity(m, name, &c);
    m->shard_chunk = HASH_CHUNK;
    char *js = ka_manifest_json(m);
    json_t *r = json_loads(js, 0, NULL);
    assert_non_null(r);
    free(js);
    kc_free(&c);
    return r;
}

static json_t *fixture_manifest(const char *name, int tp)
{
    return fixture_manifest_with(name, tp, 0);
}

/* `base` (a manifest without blobs) is accepted unedited, and refused with each case's edit with
 * a message that says what the case expects; takes base. */
static void expect_refused(json_t *base, const bad_case *cases, size_t ncases)
{
    kerr err;
    size_t n;
    char *js = json_dumps(base, JSON_COMPACT);
    unsigned char *d = ka_wrap_manifest(js, strlen(js), &n);
    assert_string_equal(read_mem(d, n, &err), "");
    free(d);
    free(js);
    for (size_t i = 0; i < ncases; i++) {
        json_t *r = json_deep_copy(base);
        cases[i].edit(r);
        js = json_dumps(r, JSON_COMPACT);
        d = ka_wrap_manifest(js, strlen(js), &n);
        const char *m = read_mem(d, n, &err);
        if (!strstr(m, "art/model.kiln: manifest: "))
            fail_msg("%s: accepted or unnamed: '%s'", cases[i].what, m);
        for (int k = 0; k < 3 && cases[i].expect[k]; k++)
            if (!strstr(m, cases[i].expect[k]))
                fail_msg("%s: '%s' does not say '%s'", cases[i].what, m, cases[i].expect[k]);
        free(d);
        free(js);
        json_decref(r);
    }
    json_decref(base);
}

/* The first collective of `kind` in the decode schedule. */
static json_t *find_coll(json_t *r, const char *kind)
{
    json_t *s;
    size_t i;
    json_array_foreach(json_object_get(r, "decode"), i, s)
    {
        json_t *c = json_object_get(s, "collective");
        if (c && !strcmp(json_string_value(c), kind))
            return s;
    }
    fail_msg("no %s step", kind);
    return NULL;
}

static void t_coll_name(json_t *r) { json_object_set_new(find_coll(r, "all_reduce"), "collective", json_string("all_sum")); }
static void t_coll_x_kind(json_t *r) { json_object_set_new(find_coll(r, "all_reduce"), "x", json_pack("[si]", "weight", 0)); }
static void t_coll_y_extent(json_t *r)
{
    json_array_set_new(json_object_get(find_coll(r, "all_reduce"), "y"), 1,
                       json_integer(lim(r, "slab_bytes") - 64));
}
static void t_coll_overlap(json_t *r)
{
    json_t *s = find_coll(r, "all_reduce");
    json_int_t x = json_integer_value(json_array_get(json_object_get(s, "x"), 1));
    json_array_set_new(json_object_get(s, "y"), 1, json_integer(x + 256));
}
static void t_coll_gather_inplace(json_t *r)
{
    json_t *s = find_coll(r, "all_gather");
    json_object_set(s, "y", json_object_get(s, "x"));
}
static void t_coll_logits_bf16(json_t *r)
{
    json_t *s = find_coll(r, "all_gather");
    json_object_set_new(s, "y", json_pack("[si]", "logits", 0));
    set_int(s, "out_f32", 0);
}
static void t_coll_gather_extent(json_t *r) /* y holds one rank's block, not tp of them */
{
    json_t *s = find_coll(r, "all_gather");
    json_array_set_new(json_object_get(s, "y"), 1,
                       json_integer(lim(r, "scratch_bytes") - 4 * 4 * json_integer_value(json_object_get(s, "n"))));
}
static void t_coll_n(json_t *r) { set_int(find_coll(r, "all_reduce"), "n", 0); }
static void t_tp3(json_t *r) { set_int(r, "tp", 3); }
static void t_tp1(json_t *r) { set_int(r, "tp", 1); }
static void t_shard1_path(json_t *r)
{
    json_object_set_new(json_array_get(json_object_get(r, "shards"), 1), "path",
                        json_string("shards/rank0-of-2.safetensors"));
}
static void t_shards_type(json_t *r) { json_object_set_new(r, "shards", json_string("rank0")); }

static void test_tp_fields(void **state)
{
    (void)state;
    const bad_case cases[] = {
        {"collective name", t_coll_name, {"decode step ", "collective is another name, expected \"all_reduce\" or \"all_gather\""}},
        {"collective x", t_coll_x_kind, {"collective x is weight, expected buf, scratch or logits"}},
        {"collective y extent", t_coll_y_extent, {"collective y needs ", "bytes at 4 rows", "left in the activation slab"}},
        {"collective overlap", t_coll_overlap, {"collective x (", ") overlap"}},
        {"gather in place", t_coll_gather_inplace, {"overlap"}},
        {"logits bf16", t_coll_logits_bf16, {"collective y is the float logits, but out_f32 is 0"}},
        {"gather extent", t_coll_gather_extent, {"collective y needs ", "left in the scratch area"}},
        {"collective n", t_coll_n, {"n is 0, expected 1.."}},
        {"tp 3, two shards", t_tp3, {"shards: 2 entries for tp 3, expected one per rank"}},
        {"tp 1, two shards", t_tp1, {"shards: 2 entries for tp 1, expected one per rank"}},
        {"shard 1 path", t_shard1_path, {"shard 1: path is \"shards/rank0-of-2.safetensors\", expected \"shards/rank1-of-2.safetensors\""}},
        {"shards type", t_shards_type, {"field 'shards' is of another type, expected a list"}},
    };
    expect_refused(fixture_manifest("llama", 2), cases, ARRAY_LEN(cases));
}

/* A classifier's label names (qwen2_cls: 3 labels). */
static json_t *labels_of(json_t *r) { return json_object_get(r, "labels"); }
static void l_count(json_t *r) { json_array_remove(labels_of(r), 2); }
static void l_type(json_t *r) { json_array_set_new(labels_of(r), 1, json_integer(7)); }
static void l_empty(json_t *r) { json_array_set_new(labels_of(r), 0, json_string("")); }
static void l_long(json_t *r)
{
    char name[KA_MAX_LABEL_LEN + 2];
    memset(name, 'x', sizeof name - 1);
    name[sizeof name - 1] = 0;
    json_array_set_new(labels_of(r), 2, json_string(name));
}
static void l_missing(json_t *r) { json_object_del(r, "labels"); }
static void l_on_generate(json_t *r) { json_object_set_new(r, "labels", json_pack("[s]", "a")); }

static void test_labels_fields(void **state)
{
    (void)state;
    const bad_case cls[] = {
        {"labels count", l_count, {"labels: 2 names for 3 scores (limits.hidden)"}},
        {"label type", l_type, {"labels: entry 1 is not a string, expected a string of 1 to 128 bytes"}},
        {"label empty", l_empty, {"labels: entry 0 is of another length"}},
        {"label long", l_long, {"labels: entry 2 is of another length, expected a string of 1 to 128"}},
        {"labels missing", l_missing, {"field 'labels' is missing"}},
    };
    expect_refused(fixture_manifest("qwen2_cls", 1), cls, ARRAY_LEN(cls));
    const bad_case gen[] = {
        {"labels on generate", l_on_generate, {"top level: labels are only for task classify, not generate"}},
    };
    expect_refused(fixture_manifest("llama", 1), gen, ARRAY_LEN(gen));
}

/* What runs the GEMM steps: "gemm" (kilnc compile --gemm). */
static void g_kiln(json_t *r) { json_object_set_new(r, "gemm", json_string("kiln")); }
static void g_name(json_t *r) { json_object_set_new(r, "gemm", json_string("cutlass")); }
static void g_type(json_t *r) { json_object_set_new(r, "gemm", json_integer(1)); }

static void test_gemm_field(void **state)
{
    (void)state;
    const bad_case cases[] = {
        {"kiln with cuBLASLt steps", g_kiln, {"top level: ", "gemm is \"kiln\" but the schedules hold 19 cuBLASLt GEMM steps"}},
        {"gemm name", g_name, {"top level: gemm is not \"cublaslt\" or \"kiln\""}},
        {"gemm type", g_type, {"top level: gemm is not \"cublaslt\" or \"kiln\""}},
    };
    json_t *base = fixture_manifest("llama", 0);
    assert_string_equal(json_string_value(json_object_get(base, "gemm")), "cublaslt");
    expect_refused(base, cases, ARRAY_LEN(cases));
    /* written before kilnc --gemm: no field, the GEMM steps are cuBLASLt's */
    base = fixture_manifest("llama", 0);
    json_object_del(base, "gemm");
    char *js = json_dumps(base, JSON_COMPACT);
    size_t n;
    unsigned char *d = ka_wrap_manifest(js, strlen(js), &n);
    kerr err;
    kerr_clear(&err);
    ka_file *f = ka_read_mem("art/model.kiln", d, n, &err);
    if (!f)
        fail_msg("%s", kerr_msg(&err));
    assert_int_equal(f->m.gemm_kiln, 0);
    assert_int_equal(f->m.cublaslt_steps, 19);
    ka_file_free(f);
    free(d);
    free(js);
    json_decref(base);
}

/* kilnc compile --batch-invariant: "batch_invariant": true, only with kiln's GEMM on one rank
 * and no step chosen by the row count. */
static void b_type(json_t *r) { json_object_set_new(r, "batch_invariant", json_integer(1)); }
static void b_cublaslt(json_t *r) { json_object_set_new(r, "gemm", json_string("cublaslt")); }
static void b_sized(json_t *r)
{
    json_t *st = json_array_get(json_object_get(r, "decode"), 3);
    json_object_set_new(st, "size", json_integer(KA_SIZE_SMALL));
}

static void test_batch_invariant_field(void **state)
{
    (void)state;
    json_t *base = fixture_manifest_with("llama", 0, 1);
    assert_true(json_is_true(json_object_get(base, "batch_invariant")));
    char *js = json_dumps(base, JSON_COMPACT);
    size_t n;
    unsigned char *d = ka_wrap_manifest(js, strlen(js), &n);
    kerr err;
    kerr_clear(&err);
    ka_file *f = ka_read_mem("art/model.kiln", d, n, &err);
    if (!f)
        fail_msg("%s", kerr_msg(&err));
    assert_int_equal(f->m.batch_invariant, 1);
    assert_int_equal(f->m.gemm_kiln, 1);
    assert_int_equal(f->m.cublaslt_steps, 0);
    ka_file_free(f);
    free(d);
    free(js);
    const bad_case cases[] = {
        {"batch_invariant type", b_type, {"top level: batch_invariant is not true or false"}},
        {"batch_invariant on cuBLASLt", b_cublaslt, {"top level: batch_invariant needs gemm \"kiln\" and tp 1 (got gemm \"cublaslt\", tp 1)"}},
        {"batch_invariant sized step", b_sized, {"decode step 3 (", "): size 1 in a batch_invariant artifact"}},
    };
    expect_refused(base, cases, ARRAY_LEN(cases));
    /* every other artifact: no field, read as false */
    base = fixture_manifest("llama", 0);
    assert_null(json_object_get(base, "batch_invariant"));
    js = json_dumps(base, JSON_COMPACT);
    d = ka_wrap_manifest(js, strlen(js), &n);
    kerr_clear(&err);
    f = ka_read_mem("art/model.kiln", d, n, &err);
    if (!f)
        fail_msg("%s", kerr_msg(&err));
    assert_int_equal(f->m.batch_invariant, 0);
    ka_file_free(f);
    free(d);
    free(js);
    json_decref(base);
}

/* ---------------------------------------------------------------- the shard */

static void copy_art(const char *to)
{
    char cmd[2000];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s' '%s'", to, art, to);
    assert_int_equal(system(cmd), 0);
}

/* Opens and fully verifies dir's shard; returns the error ("" when it passes). */
static const char *verify_dir(const char *dir, kerr *err)
{
    char mk[700];
    snprintf(mk, sizeof mk, "%s/model.kiln", dir);
    kerr_clear(err);
    ka_file *f = ka_read(mk, err);
    if (!f)
        fail_msg("%s", kerr_msg(err));
    st_set *s = ka_shard_open_rank(f, dir, 0, err);
    int rc = s ? ka_shard_verify(f, 0, s, 3, err) : -1;
    st_close(s);
    ka_file_free(f);
    return rc ? kerr_msg(err) : "";
}

static void flip_at(const char *path, long at)
{
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    assert_int_equal(fseek(f, at, SEEK_SET), 0);
    int c = fgetc(f);
    assert_int_equal(fseek(f, at, SEEK_SET), 0);
    fputc(c ^ 0x01, f);
    fclose(f);
}

static void test_shard_pristine(void **state)
{
    (void)state;
    kerr err;
    assert_string_equal(verify_dir(art, &err), "");
}

/* The same model with one weight changed by one ulp: same names and shapes, another shard id. */
static void test_shard_of_another_model(void **state)
{
    (void)state;
    char src[600], other[600], cmd[1400];
    snprintf(src, sizeof src, "%s/llama_copy", tmp);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r " FIX "llama '%s'", src, src);
    assert_int_equal(system(cmd), 0);
    char st[700];
    snprintf(st, sizeof st, "%s/model.safetensors", src);
    size_t n;
    unsigned char *d = slurp(st, &n);
    uint64_t hl = get64(d);
    free(d);
    flip_at(st, (long)(8 + hl + 4 * 1000 + 2)); /* bf16's lowest mantissa bit of an f32 */
    snprintf(other, sizeof other, "%s/other", tmp);
    build(src, other);
    /* its shard into a copy of the first artifact */
    char dir[600];
    snprintf(dir, sizeof dir, "%s/mixed", tmp);
    copy_art(dir);
    snprintf(cmd, sizeof cmd, "cp '%s/shards/rank0-of-1.safetensors' '%s/shards/'", other, dir);
    assert_int_equal(system(cmd), 0);
    char mk[700];
    snprintf(mk, sizeof mk, "%s/model.kiln", other);
    kerr err;
    kerr_clear(&err);
    ka_file *fo = ka_read(mk, &err), *fa = ka_read_mem("a", A, alen, &err);
    assert_non_null(fo);
    assert_non_null(fa);
    assert_int_equal(fo->m.layout_hash, fa->m.layout_hash);
    assert_true(fo->m.shards[0].id != fa->m.shards[0].id);
    char ido[40], ida[40];
    snprintf(ido, sizeof ido, "has id %016llx", (unsigned long long)fo->m.shards[0].id);
    snprintf(ida, sizeof ida, "expects %016llx", (unsigned long long)fa->m.shards[0].id);
    ka_file_free(fo);
    ka_file_free(fa);
    const char *m = verify_dir(dir, &err);
    if (!strstr(m, "mixed/shards/rank0-of-1.safetensors: shard id mismatch") || !strstr(m, ido) ||
        !strstr(m, ida) || !strstr(m, "another compile"))
        fail_msg("foreign shard: '%s'", m);
    /* km_load refuses it before looking for a GPU */
    km_opts o = {.kv_memory = 0.5, .quiet = 1};
    kerr_clear(&err);
    kmodel *km = km_load(dir, &o, &err);
    assert_null(km);
    assert_non_null(strstr(kerr_msg(&err), ido));
    assert_null(strstr(kerr_msg(&err), "NVIDIA"));
}

static void test_shard_truncated_or_modified(void **state)
{
    (void)state;
    char dir[600], sh[700];
    snprintf(dir, sizeof dir, "%s/mod", tmp);
    snprintf(sh, sizeof sh, "%s/shards/rank0-of-1.safetensors", dir);
    size_t n;
    copy_art(dir);
    unsigned char *d = slurp(sh, &n);
    uint64_t hl = get64(d);
    free(d);
    kerr err;
    /* truncated: by a byte, and to the header */
    assert_int_equal(truncate(sh, (off_t)n - 1), 0);
    assert_non_null(strstr(verify_dir(dir, &err), sh));
    copy_art(dir);
    assert_int_equal(truncate(sh, (off_t)(8 + hl)), 0);
    assert_non_null(strstr(verify_dir(dir, &err), sh));
    /* one data byte: the first, one in the middle, the last */
    long at[] = {(long)(8 + hl), (long)(8 + hl + (n - 8 - hl) / 2), (long)n - 1};
    for (size_t i = 0; i < ARRAY_LEN(at); i++) {
        copy_art(dir);
        flip_at(sh, at[i]);
        const char *m = verify_dir(dir, &err);
        if (!strstr(m, sh) || !strstr(m, "weight data checksum mismatch"))
            fail_msg("data byte %ld: '%s'", at[i], m);
    }
    /* a header byte inside a tensor name: the header fingerprint (or the parser) refuses it */
    copy_art(dir);
    d = slurp(sh, &n);
    char *name = memmem(d, n, "o_proj", 6);
    assert_non_null(name);
    flip_at(sh, (long)((unsigned char *)name - d));
    free(d);
    assert_non_null(strstr(verify_dir(dir, &err), sh));
    /* the padding of the header (a space the writer added) */
    copy_art(dir);
    d = slurp(sh, &n);
    int pad = d[8 + hl - 1] == ' ';
    free(d);
    if (pad) {
        flip_at(sh, (long)(8 + hl - 1));
        assert_non_null(strstr(verify_dir(dir, &err), sh));
    }
}

/* ---------------------------------------------------------------- the chunked hash */

static void test_hash_threads_and_streams(void **state)
{
    (void)state;
    uint64_t C = HASH_CHUNK_MIN, len = 3 * C + 5;
    unsigned char *d = xmalloc(len);
    for (uint64_t i = 0; i < len; i++)
        d[i] = (unsigned char)(i * 2654435761u >> 13);
    uint64_t sizes[] = {0, 1, C - 1, C, C + 1, len};
    for (size_t i = 0; i < ARRAY_LEN(sizes); i++) {
        uint64_t n = sizes[i], h1 = hash_chunked(d, n, C, 1);
        assert_int_equal(hash_chunked(d, n, C, 4), h1);
        assert_int_equal(hash_finish(hash_start(d, n, C, 3)), h1);
        hash_stream *s = hash_stream_new(C);
        for (uint64_t at = 0, step = 1; at < n; at += step, step = step * 3 + 7)
            hash_stream_update(s, d + at, (size_t)(n - at < step ? n - at : step));
        assert_int_equal(hash_stream_finish(s), h1);
        /* the length is part of the hash, and so is every byte */
        if (n) {
            assert_int_not_equal(hash_chunked(d, n - 1, C, 2), h1);
            d[n / 2] ^= 0x40;
            assert_int_not_equal(hash_chunked(d, n, C, 2), h1);
            d[n / 2] ^= 0x40;
        }
    }
    assert_int_not_equal(hash_chunked(d, len, C, 2), hash_chunked(d, len, 2 * C, 2));
    hash_abort(hash_start(d, len, C, 2)); /* stops and frees (ASan checks) */
    free(d);
}

static int setup(void **state)
{
    (void)state;
    snprintf(tmp, sizeof tmp, "/tmp/kiln_test_artifact.XXXXXX");
    if (!mkdtemp(tmp))
        return -1;
    snprintf(art, sizeof art, "%s/art", tmp);
    build(FIX "llama", art);
    char mk[700];
    snprintf(mk, sizeof mk, "%s/model.kiln", art);
    A = slurp(mk, &alen);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    free(A);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    return system(cmd) == 0 ? 0 : -1;
}

/* Which steps run at which rows: the GEMV's (small) up to gemv_max, the skinny GEMM's (mid) above
 * it up to skinny_max, and the GEMM of a linear with a skinny step (huge) past that; without
 * skinny_max, huge is large and mid never runs. The batch-1 GEMV (one) runs at one row on sm_90+
 * code only, the GEMV beside it (few) at every other row up to gemv_max, and a norm folded into
 * it (not_one) at every row count but that one. */
static void test_size_rows(void **state)
{
    (void)state;
    ka_manifest m;
    memset(&m, 0, sizeof m);
    m.gemv_max = 8;
    m.skinny_max = 64;
    static const struct {
        ka_size z;
        int rows, runs, runs_no_skinny, runs_sm80;
    } c[] = {
        {KA_SIZE_ANY, 1, 1, 1, 1},
        {KA_SIZE_ANY, 4096, 1, 1, 1},
        {KA_SIZE_SMALL, 8, 1, 1, 1},
        {KA_SIZE_SMALL, 9, 0, 0, 0},
        {KA_SIZE_LARGE, 8, 0, 0, 0},
        {KA_SIZE_LARGE, 9, 1, 1, 1},
        {KA_SIZE_LARGE, 65, 1, 1, 1},
        {KA_SIZE_MID, 8, 0, 0, 0},
        {KA_SIZE_MID, 9, 1, 0, 1},
        {KA_SIZE_MID, 64, 1, 0, 1},
        {KA_SIZE_MID, 65, 0, 0, 0},
        {KA_SIZE_HUGE, 8, 0, 0, 0},
        {KA_SIZE_HUGE, 9, 0, 1, 0},
        {KA_SIZE_HUGE, 64, 0, 1, 0},
        {KA_SIZE_HUGE, 65, 1, 1, 1},
        {KA_SIZE_ONE, 1, 1, 1, 0},
        {KA_SIZE_ONE, 2, 0, 0, 0},
        {KA_SIZE_ONE, 9, 0, 0, 0},
        {KA_SIZE_FEW, 1, 0, 0, 1},
        {KA_SIZE_FEW, 2, 1, 1, 1},
        {KA_SIZE_FEW, 8, 1, 1, 1},
        {KA_SIZE_FEW, 9, 0, 0, 0},
        {KA_SIZE_NOT_ONE, 1, 0, 0, 1},
        {KA_SIZE_NOT_ONE, 2, 1, 1, 1},
        {KA_SIZE_NOT_ONE, 4096, 1, 1, 1},
    };
    for (size_t i = 0; i < ARRAY_LEN(c); i++) {
        m.skinny_max = 64;
        if (ka_size_runs(&m, c[i].z, c[i].rows, 1) != c[i].runs)
            fail_msg("size %d at %d rows (skinny_max 64): expected %d", (int)c[i].z, c[i].rows,
                     c[i].runs);
        if (ka_size_runs(&m, c[i].z, c[i].rows, 0) != c[i].runs_sm80)
            fail_msg("size %d at %d rows (skinny_max 64, sm_80 code): expected %d", (int)c[i].z,
                     c[i].rows, c[i].runs_sm80);
        m.skinny_max = 0;
        if (ka_size_runs(&m, c[i].z, c[i].rows, 1) != c[i].runs_no_skinny)
            fail_msg("size %d at %d rows (skinny_max 0): expected %d", (int)c[i].z, c[i].rows,
                     c[i].runs_no_skinny);
    }
    assert_string_equal(ka_size_label(KA_SIZE_MID), " [gemv_max < rows <= skinny_max]");
    assert_string_equal(ka_size_label(KA_SIZE_ANY), "");
    assert_string_equal(ka_size_label(KA_SIZE_ONE), " [rows == 1 on sm_90+ code]");
    assert_string_equal(ka_size_label(KA_SIZE_FEW), " [rows <= gemv_max, not 1 on sm_90+ code]");
    assert_string_equal(ka_size_label(KA_SIZE_NOT_ONE), " [not 1 row on sm_90+ code]");
}

/* ka_kernel_is: k<digits>_<op> exactly, whatever op's own underscores; nothing else. */
static void test_kernel_is(void **state)
{
    (void)state;
    static const struct {
        const char *name, *op;
        int is;
    } c[] = {
        {"k12_allreduce_p2p", "allreduce_p2p", 1}, {"k0_gemm_skinny_int4", "gemm_skinny_int4", 1},
        {"k3_gemm_skinny_int4", "gemm_skinny", 0}, {"k3_gemm_skinny", "gemm_skinny_int4", 0},
        {"k3_gemm_skinny_int4", "skinny_int4", 0}, {"k_allreduce_p2p", "allreduce_p2p", 0},
        {"kx1_allreduce_p2p", "allreduce_p2p", 0}, {"k1allreduce_p2p", "allreduce_p2p", 0},
        {"", "allreduce_p2p", 0},                  {"k1_", "", 1},
        {"x1_allreduce_p2p", "allreduce_p2p", 0},
    };
    for (size_t i = 0; i < ARRAY_LEN(c); i++) {
        ka_kernel k = {.name = (char *)c[i].name};
        if (ka_kernel_is(&k, c[i].op) != c[i].is)
            fail_msg("kernel '%s' of op '%s': expected %d", c[i].name, c[i].op, c[i].is);
    }
}

/* KILN_ABLATE's parts are checked against the artifact's kernel names before the GPU is looked
 * for: each refusal names the variable and the part */
static void test_ablate_refused(void **state)
{
    (void)state;
    char dir[600];
    snprintf(dir, sizeof dir, "%s/ablate", tmp);
    copy_art(dir);
    static const struct {
        const char *v, *msg;
    } bad[] = {
        {"rms_norm+no_such_kernel", "no kernel of this model has 'no_such_kernel' in its name"},
        {"rms-norm", "'rms-norm' is not a kernel-name part"},
        {"rms_norm++act_mul", "expected kernel-name parts joined by '+'"},
        {"+rms_norm", "expected kernel-name parts joined by '+'"},
        {"rms_norm+", "expected kernel-name parts joined by '+'"},
    };
    /* a part longer than any kernel's name: refused as matching none, not cut short */
    char huge[4100];
    memset(huge, 'x', sizeof huge - 1);
    huge[sizeof huge - 1] = 0;
    km_opts o = {.kv_memory = 0.5, .quiet = 1};
    for (size_t i = 0; i <= sizeof bad / sizeof bad[0]; i++) {
        const char *v = i < sizeof bad / sizeof bad[0] ? bad[i].v : huge;
        const char *msg = i < sizeof bad / sizeof bad[0] ? bad[i].msg : "no kernel of this model";
        kerr err;
        kerr_clear(&err);
        setenv("KILN_ABLATE", v, 1);
        kmodel *km = km_load(dir, &o, &err);
        unsetenv("KILN_ABLATE");
        assert_null(km);
        if (!strstr(kerr_msg(&err), msg) || !strstr(kerr_msg(&err), v) ||
            strstr(kerr_msg(&err), "NVIDIA"))
            fail_msg("KILN_ABLATE=%.60s: '%.300s'", v, kerr_msg(&err));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_fixture_round_trips),
        cmocka_unit_test(test_header_every_bit),
        cmocka_unit_test(test_manifest_every_bit),
        cmocka_unit_test(test_blobs_and_gaps),
        cmocka_unit_test(test_bad_fields_resigned),
        cmocka_unit_test(test_tp_fields),
        cmocka_unit_test(test_labels_fields),
        cmocka_unit_test(test_gemm_field),
        cmocka_unit_test(test_size_rows),
        cmocka_unit_test(test_kernel_is),
        cmocka_unit_test(test_batch_invariant_field),
        cmocka_unit_test(test_shard_pristine),
        cmocka_unit_test(test_shard_of_another_model),
        cmocka_unit_test(test_shard_truncated_or_modified),
        cmocka_unit_test(test_hash_threads_and_streams),
        cmocka_unit_test(test_ablate_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
