/* artifact — see artifact.h. Reading trusts nothing: the header's hash is checked before the
 * manifest is parsed, then every field for presence, type and range, every blob for layout and
 * hash, so a truncated, corrupted, edited or foreign file is a clear error naming the file and
 * the field, never undefined behaviour in the engine. The range checks are the engine's contract:
 * it indexes tables, offsets buffers and sizes grids with manifest values and checks nothing
 * itself. Also here: opening and verifying the weight shard against the manifest. */
#include "artifact.h"

#include <assert.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../kernels/kiln_kv8.h"
#include "../kernels/kiln_step.h"

static const char *const wtype_names[] = {"", "f8_e4m3", "f32", "int4", "int4_sz"}; /* ka_wtype */
static const int wtype_size[] = {2, 1, 4, 1, 4}; /* bytes per element as stored (int4: two a byte) */

static const char *arg_names[] = {"step", "buf", "scratch", "weight", "const", "kv_k", "kv_v",
                                  "null", "i32", "f32", "m",    "logits",  "out",  "rank", "tmap"};
_Static_assert(ARRAY_LEN(arg_names) == KA_NARGKINDS, "arg kind table out of sync");

const char *ka_arg_kind_name(ka_arg_kind k)
{
    return (unsigned)k < KA_NARGKINDS ? arg_names[k] : "?";
}

int ka_size_runs(const ka_manifest *m, ka_size size, int64_t rows, int sm90)
{
    int mid = m->skinny_max > 0;
    switch (size) {
    case KA_SIZE_SMALL: return rows <= m->gemv_max;
    case KA_SIZE_LARGE: return rows > m->gemv_max;
    case KA_SIZE_MID: return mid && rows > m->gemv_max && rows <= m->skinny_max;
    case KA_SIZE_HUGE: return rows > (mid ? m->skinny_max : m->gemv_max);
    case KA_SIZE_ONE: return sm90 && rows == 1;
    case KA_SIZE_FEW: return rows <= m->gemv_max && (rows > 1 || !sm90);
    case KA_SIZE_NOT_ONE: return rows > 1 || !sm90;
    default: return 1;
    }
}

const char *ka_size_label(ka_size size)
{
    static const char *const l[] = {"",
                                    " [rows <= gemv_max]",
                                    " [rows > gemv_max]",
                                    " [gemv_max < rows <= skinny_max]",
                                    " [rows > skinny_max]",
                                    " [rows == 1 on sm_90+ code]",
                                    " [rows <= gemv_max, not 1 on sm_90+ code]",
                                    " [not 1 row on sm_90+ code]"};
    return (unsigned)size < ARRAY_LEN(l) ? l[size] : " [?]";
}

int ka_kernel_is(const ka_kernel *k, const char *op)
{
    const char *p = k->name;
    if (*p++ != 'k' || *p < '0' || *p > '9')
        return 0;
    while (*p >= '0' && *p <= '9')
        p++;
    return *p == '_' && strcmp(p + 1, op) == 0;
}

int64_t ka_kv_block_bytes(const ka_manifest *m, int l, int v)
{
    const ka_layer *y = &m->layers[l];
    int64_t dim = v ? y->v_dim : y->head_dim;
    if (m->kv_e4m3) /* ka_read checked v_dim == head_dim, a multiple of 8 */
        return KILN_KV8_BLOCK_BYTES((int64_t)y->n_kv * dim, y->n_kv);
    return (int64_t)KILN_BLOCK * y->n_kv * dim * 2; /* bf16 or f16 */
}

int ka_step_has_tmap(const ka_step *s)
{
    for (int k = 0; k < s->nargs; k++)
        if (s->args[k].kind == KA_ARG_TMAP)
            return 1;
    return 0;
}

/* ---------------------------------------------------------------- writing */

static json_t *jarg(const ka_arg *a)
{
    json_t *o = json_array();
    json_array_append_new(o, json_string(arg_names[a->kind]));
    if (a->kind == KA_ARG_F32)
        json_array_append_new(o, json_real(a->f));
    else
        json_array_append_new(o, json_integer(a->i));
    return o;
}

static json_t *jgrid(const ka_grid *g)
{
    json_t *a = json_array();
    json_array_append_new(a, json_integer(g->t));
    json_array_append_new(a, json_integer(g->s));
    json_array_append_new(a, json_integer(g->q));
    json_array_append_new(a, json_integer(g->add));
    json_array_append_new(a, json_integer(g->div));
    if (g->sm)
        json_array_append_new(a, json_integer(g->sm));
    return a;
}

/* the "collective" field of a collective step, by ka_step_kind - KA_ALLREDUCE */
static const char *const coll_names[] = {"all_reduce", "all_gather"};

static json_t *jsteps(const ka_step *st, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++) {
        const ka_step *s = &st[i];
        json_t *o = json_object();
        json_object_set_new(o, "label", json_string(s->label ? s->label : ""));
        json_object_set_new(o, "size", json_integer(s->size));
        json_object_set_new(o, "logits", json_integer(s->logits));
        json_object_set_new(o, "rows", json_integer(s->rows));
        if (s->kind == KA_KERNEL) {
            json_object_set_new(o, "kernel", json_integer(s->kernel));
            json_t *g = json_array();
            for (int d = 0; d < 3; d++)
                json_array_append_new(g, jgrid(&s->grid[d]));
            json_object_set_new(o, "grid", g);
            json_t *args = json_array();
            for (int k = 0; k < s->nargs; k++)
                json_array_append_new(args, jarg(&s->args[k]));
            json_object_set_new(o, "args", args);
            if (ka_step_has_tmap(s)) {
                json_object_set_new(o, "x", jarg(&s->x));
                json_object_set_new(o, "w", jarg(&s->w));
                json_object_set_new(o, "n", json_integer(s->n));
                json_object_set_new(o, "k", json_integer(s->k));
                json_object_set_new(o, "ldx", json_integer(s->ldx));
            }
        } else if (s->kind == KA_ALLREDUCE || s->kind == KA_ALLGATHER) {
            json_object_set_new(o, "collective",
                                json_string(coll_names[s->kind - KA_ALLREDUCE]));
            json_object_set_new(o, "x", jarg(&s->x));
            json_object_set_new(o, "y", jarg(&s->y));
            json_object_set_new(o, "n", json_integer(s->n));
            json_object_set_new(o, "out_f32", json_integer(s->out_f32));
        } else {
            json_object_set_new(o, "gemm", json_true());
            json_object_set_new(o, "x", jarg(&s->x));
            json_object_set_new(o, "w", jarg(&s->w));
            json_object_set_new(o, "bias", jarg(&s->bias));
            json_object_set_new(o, "y", jarg(&s->y));
            json_object_set_new(o, "n", json_integer(s->n));
            json_object_set_new(o, "k", json_integer(s->k));
            json_object_set_new(o, "ldx", json_integer(s->ldx));
            json_object_set_new(o, "ldy", json_integer(s->ldy));
            json_object_set_new(o, "out_f32", json_integer(s->out_f32));
        }
        json_array_append_new(a, o);
    }
    return a;
}

static json_t *jhex(uint64_t v)
{
    char b[24];
    snprintf(b, sizeof b, "%016llx", (unsigned long long)v);
    return json_string(b);
}

/* What runs the prefill-sized linears: the manifest's "gemm", indexed by ka_manifest.gemm_kiln */
static const char *const gemms[] = {"cublaslt", "kiln"};

char *ka_manifest_json(const ka_manifest *m)
{
    json_t *r = json_object();
    json_object_set_new(r, "format", json_integer(KA_VERSION));
    json_object_set_new(r, "kilnc_version", json_string(m->kilnc_version));
    json_t *id = json_object();
    json_object_set_new(id, "model", json_string(m->model_name));
    json_object_set_new(id, "architecture", json_string(m->arch));
    json_object_set_new(id, "spec", json_string(m->spec_name));
    json_object_set_new(id, "task", json_string(m->task));
    json_object_set_new(id, "dtype", json_string(m->dtype));
    json_object_set_new(id, "spec_hash", jhex(m->spec_hash));
    json_object_set_new(id, "config_hash", jhex(m->config_hash));
    json_object_set_new(id, "layout_hash", jhex(m->layout_hash));
    json_object_set_new(r, "identity", id);
    json_t *lim = json_object();
    json_object_set_new(lim, "vocab", json_integer(m->vocab));
    json_object_set_new(lim, "type_vocab", json_integer(m->type_vocab));
    json_object_set_new(lim, "hidden", json_integer(m->hidden));
    json_object_set_new(lim, "max_tokens", json_integer(m->max_tokens));
    json_object_set_new(lim, "max_seqs", json_integer(m->max_seqs));
    json_object_set_new(lim, "max_seq_len", json_integer(m->max_seq_len));
    json_object_set_new(lim, "gemv_max", json_integer(m->gemv_max));
    json_object_set_new(lim, "skinny_max", json_integer(m->skinny_max));
    if (m->rope_switch)
        json_object_set_new(lim, "rope_switch", json_integer(m->rope_switch));
    json_object_set_new(lim, "slab_bytes", json_integer(m->slab_bytes));
    json_object_set_new(lim, "scratch_bytes", json_integer(m->scratch_bytes));
    json_object_set_new(lim, "output_pool", json_integer(m->output_pool));
    json_object_set_new(r, "limits", lim);
    if (m->labels) {
        json_t *lb = json_array();
        for (int i = 0; i < m->hidden; i++)
            json_array_append_new(lb, json_string(m->labels[i]));
        json_object_set_new(r, "labels", lb);
    }
    json_t *ly = json_array();
    for (int i = 0; i < m->n_layers; i++) {
        json_t *l = json_array();
        json_array_append_new(l, json_integer(m->layers[i].n_kv));
        json_array_append_new(l, json_integer(m->layers[i].head_dim));
        json_array_append_new(l, json_integer(m->layers[i].v_dim));
        json_array_append_new(ly, l);
    }
    json_object_set_new(r, "kv_layers", ly);
    json_t *eos = json_array();
    for (int i = 0; i < m->n_eos; i++)
        json_array_append_new(eos, json_integer(m->eos[i]));
    json_object_set_new(r, "eos", eos);
    json_object_set_new(r, "bos", json_integer(m->bos));
    json_t *ov = json_array();
    for (int i = 0; i < m->n_overrides; i++)
        json_array_append_new(ov, json_string(m->overrides[i]));
    json_object_set_new(r, "overrides", ov);
    json_t *gen = json_object();
    if (m->gen.has_temperature)
        json_object_set_new(gen, "temperature", json_real(m->gen.temperature));
    if (m->gen.has_top_p)
        json_object_set_new(gen, "top_p", json_real(m->gen.top_p));
    if (m->gen.has_top_k)
        json_object_set_new(gen, "top_k", json_integer(m->gen.top_k));
    if (m->gen.has_max_new)
        json_object_set_new(gen, "max_new_tokens", json_integer(m->gen.max_new));
    json_object_set_new(r, "generation", gen);
    json_t *ks = json_array();
    for (int i = 0; i < m->nkernels; i++) {
        json_t *k = json_object();
        json_object_set_new(k, "name", json_string(m->kernels[i].name));
        json_object_set_new(k, "block", json_integer(m->kernels[i].block));
        json_object_set_new(k, "smem", json_integer(m->kernels[i].smem));
        json_array_append_new(ks, k);
    }
    json_object_set_new(r, "kernels", ks);
    json_object_set_new(r, "sample_kernel", json_integer(m->sample_kernel));
    json_object_set_new(r, "gemm", json_string(gemms[m->gemm_kiln]));
    if (m->batch_invariant) /* absent in every other artifact, which stay as they were */
        json_object_set_new(r, "batch_invariant", json_true());
    if (m->kv_e4m3) /* likewise: absent means the compute dtype */
        json_object_set_new(r, "kv_dtype", json_string("f8_e4m3"));
    json_object_set_new(r, "prefill", jsteps(m->prefill, m->nprefill));
    json_object_set_new(r, "decode", jsteps(m->decode, m->ndecode));
    json_t *ws = json_array();
    for (int i = 0; i < m->nweights; i++) {
        json_t *w = json_object(), *sh = json_array();
        json_object_set_new(w, "name", json_string(m->weights[i].name));
        if (m->weights[i].type != KA_W_ACT)
            json_object_set_new(w, "dtype", json_string(wtype_names[m->weights[i].type]));
        for (int d = 0; d < m->weights[i].ndim; d++)
            json_array_append_new(sh, json_integer(m->weights[i].shape[d]));
        json_object_set_new(w, "shape", sh);
        json_object_set_new(w, "nbytes", json_integer(m->weights[i].nbytes));
        json_array_append_new(ws, w);
    }
    json_object_set_new(r, "weights", ws);
    json_object_set_new(r, "tp", json_integer(m->tp));
    json_t *sh = json_array();
    for (int i = 0; i < m->tp; i++) {
        json_t *o = json_object();
        json_object_set_new(o, "path", json_string(m->shards[i].path));
        json_object_set_new(o, "header_fnv", jhex(m->shards[i].header_fnv));
        json_object_set_new(o, "hash", jhex(m->shards[i].hash));
        json_object_set_new(o, "id", jhex(m->shards[i].id));
        json_array_append_new(sh, o);
    }
    json_object_set_new(r, "shards", sh);
    json_object_set_new(r, "shard_chunk", json_integer((json_int_t)m->shard_chunk));
    json_t *cs = json_array();
    for (int i = 0; i < m->nconsts; i++) {
        json_t *c = json_object(), *v = json_array();
        json_object_set_new(c, "name", json_string(m->consts[i].name));
        for (int k = 0; k < m->consts[i].n; k++)
            json_array_append_new(v, json_real(m->consts[i].v[k]));
        json_object_set_new(c, "values", v);
        json_array_append_new(cs, c);
    }
    json_object_set_new(r, "consts", cs);
    json_t *bs = json_array();
    for (int i = 0; i < m->nblobs; i++) {
        json_t *b = json_object();
        json_object_set_new(b, "name", json_string(m->blobs[i].name));
        json_object_set_new(b, "offset", json_integer((json_int_t)m->blobs[i].offset));
        json_object_set_new(b, "len", json_integer((json_int_t)m->blobs[i].len));
        json_object_set_new(b, "hash", jhex(m->blobs[i].hash));
        json_array_append_new(bs, b);
    }
    json_object_set_new(r, "blobs", bs);
    char *s = json_dumps(r, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    json_decref(r);
    return s;
}

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* Where the section after one ending at `end` starts: the first boundary past a zero byte. */
static uint64_t next_section(uint64_t end) { return (end + KA_ALIGN) / KA_ALIGN * KA_ALIGN; }

uint64_t ka_manifest_hash(const unsigned char *head32, const void *manifest, size_t len)
{
    return hash_bytes2(head32, 32, manifest, len);
}

/* The header for a manifest of jl bytes at moff, signed. */
static void make_header(unsigned char *head, uint64_t moff, const void *js, size_t jl)
{
    memset(head, 0, KA_HEADER);
    memcpy(head, KA_MAGIC, 8);
    head[8] = KA_VERSION & 0xff;
    head[9] = (KA_VERSION >> 8) & 0xff;
    put64(head + 16, moff);
    put64(head + 24, jl);
    put64(head + 32, ka_manifest_hash(head, js, jl));
}

unsigned char *ka_wrap_manifest(const void *manifest, size_t n, size_t *len)
{
    uint64_t moff = next_section(KA_HEADER);
    unsigned char *f = xcalloc(1, moff + n);
    make_header(f, moff, manifest, n);
    memcpy(f + moff, manifest, n);
    *len = moff + n;
    return f;
}

int ka_write(const char *path, ka_manifest *m, const void *const *blob_data, kerr *err)
{
    uint64_t end = KA_HEADER;
    for (int i = 0; i < m->nblobs; i++) {
        m->blobs[i].offset = next_section(end); /* cubins are loaded in place: aligned */
        m->blobs[i].hash = hash_bytes(blob_data[i], m->blobs[i].len);
        end = m->blobs[i].offset + m->blobs[i].len;
    }
    uint64_t moff = next_section(end);
    char *js = ka_manifest_json(m);
    size_t jl = strlen(js);
    unsigned char head[KA_HEADER];
    make_header(head, moff, js, jl);
    char *tmp = xasprintf("%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        kerr_add(err, "%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        free(js);
        return -1;
    }
    int ok = fwrite(head, 1, KA_HEADER, f) == KA_HEADER;
    uint64_t at = KA_HEADER;
    static const unsigned char zeros[KA_ALIGN];
    for (int i = 0; i < m->nblobs && ok; i++) {
        ok = fwrite(zeros, 1, m->blobs[i].offset - at, f) == m->blobs[i].offset - at &&
             fwrite(blob_data[i], 1, m->blobs[i].len, f) == m->blobs[i].len;
        at = m->blobs[i].offset + m->blobs[i].len;
    }
    ok = ok && fwrite(zeros, 1, moff - at, f) == moff - at && fwrite(js, 1, jl, f) == jl;
    ok = fclose(f) == 0 && ok;
    free(js);
    if (!ok || rename(tmp, path) != 0) {
        kerr_add(err, "%s: write failed: %s", path, strerror(errno));
        unlink(tmp);
        free(tmp);
        return -1;
    }
    free(tmp);
    ka_file *back = ka_read(path, err);
    if (!back) {
        unlink(path);
        return kerr_add(err, "%s: kilnc wrote an artifact that kiln would refuse (above), so it "
                             "was removed: the model's limits are beyond what kiln supports, or "
                             "this is a kilnc bug",
                        path);
    }
    ka_file_free(back);
    return 0;
}

/* ---------------------------------------------------------------- reading */

typedef struct rd {
    const char *path;
    kerr *err;
    int bad;
    ka_manifest *m;
} rd;

/* The first problem found, with where it is; later ones are not reported (one corrupt field
 * tends to cascade). */
__attribute__((format(printf, 2, 3))) static int bad(rd *r, const char *fmt, ...)
{
    if (r->bad)
        return -1;
    r->bad = 1;
    char b[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b, sizeof b, fmt, ap);
    va_end(ap);
    return kerr_add(r->err, "%s: manifest: %s; the artifact is corrupt or was edited: rebuild it "
                            "with kilnc compile",
                    r->path, b);
}

static const char *type_name(json_type t)
{
    switch (t) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "a list";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    default: return "a number";
    }
}

static json_t *jget(rd *r, json_t *o, const char *where, const char *k, json_type t)
{
    json_t *v = o ? json_object_get(o, k) : NULL;
    if (!v || json_typeof(v) != t) {
        bad(r, "%s: field '%s' is %s, expected %s", where, k, v ? "of another type" : "missing",
            type_name(t));
        return NULL;
    }
    return v;
}

static int64_t jint(rd *r, json_t *o, const char *where, const char *k, int64_t lo, int64_t hi)
{
    json_t *v = jget(r, o, where, k, JSON_INTEGER);
    if (!v)
        return lo;
    int64_t x = json_integer_value(v);
    if (x < lo || x > hi) {
        bad(r, "%s: %s is %lld, expected %lld..%lld", where, k, (long long)x, (long long)lo,
            (long long)hi);
        return lo;
    }
    return x;
}

/* Element i of a list, an integer in [lo, hi]. */
static int64_t jelem(rd *r, json_t *a, size_t i, const char *where, const char *what, int64_t lo,
                     int64_t hi)
{
    json_t *v = json_array_get(a, i);
    if (!json_is_integer(v)) {
        bad(r, "%s: %s is %s, expected an integer", where, what, v ? "of another type" : "missing");
        return lo;
    }
    int64_t x = json_integer_value(v);
    if (x < lo || x > hi) {
        bad(r, "%s: %s is %lld, expected %lld..%lld", where, what, (long long)x, (long long)lo,
            (long long)hi);
        return lo;
    }
    return x;
}

static char *jstr(rd *r, json_t *o, const char *where, const char *k, int nonempty)
{
    json_t *v = jget(r, o, where, k, JSON_STRING);
    const char *s = v ? json_string_value(v) : "";
    if (v && nonempty && !*s)
        bad(r, "%s: %s is empty", where, k);
    return xstrdup(s);
}

/* Exactly 16 hex digits. */
static uint64_t jget_hex(rd *r, json_t *o, const char *where, const char *k)
{
    json_t *v = jget(r, o, where, k, JSON_STRING);
    if (!v)
        return 0;
    const char *s = json_string_value(v);
    uint64_t x = 0;
    size_t n = strlen(s);
    for (size_t i = 0; i < n && n == 16; i++) {
        int c = s[i], d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            n = 0;
        x = x << 4 | (uint64_t)(d & 15);
    }
    if (n != 16)
        bad(r, "%s: %s is \"%.40s\", expected 16 lowercase hex digits", where, k, s);
    return x;
}

/* A list of at most max entries. */
static json_t *jlist(rd *r, json_t *o, const char *where, const char *k, size_t max, int *n)
{
    *n = 0;
    json_t *v = jget(r, o, where, k, JSON_ARRAY);
    if (v && json_array_size(v) > max) {
        bad(r, "%s: %s has %zu entries, at most %zu are allowed", where, k, json_array_size(v), max);
        return NULL;
    }
    if (v)
        *n = (int)json_array_size(v);
    return v;
}

/* An optional number of object o in [lo, hi] (finite, and nonzero as a float when lo_open);
 * returns whether present. */
static int jopt_num(rd *r, json_t *o, const char *where, const char *k, double lo, int lo_open,
                    double hi, double *out)
{
    json_t *v = o ? json_object_get(o, k) : NULL;
    if (!v)
        return 0;
    double x = json_is_number(v) ? json_number_value(v) : NAN;
    if (!isfinite(x) || x < lo || x > hi || (lo_open && (x <= lo || (float)x == 0)))
        bad(r, "%s: %s is %s, expected a number %s %g and at most %g", where, k,
            json_is_number(v) ? "out of range" : "not a number", lo_open ? "above" : "from", lo,
            hi);
    *out = x;
    return !r->bad;
}

/* The n entries of the JSON list `arr` (manifest field `what`) as strings of 1 to maxlen bytes:
 * a calloc'd array of n (at least 1) pointers, NULL from the first bad entry on. */
static char **jstrings(rd *r, json_t *arr, int n, const char *what, int maxlen)
{
    char **out = xcalloc((size_t)(n ? n : 1), sizeof(char *));
    for (int i = 0; i < n && !r->bad; i++) {
        json_t *v = json_array_get(arr, (size_t)i);
        size_t len = json_is_string(v) ? strlen(json_string_value(v)) : 0;
        if (len == 0 || len > (size_t)maxlen) {
            bad(r, "%s: entry %d is %s, expected a string of 1 to %d bytes", what, i,
                json_is_string(v) ? "of another length" : "not a string", maxlen);
            break;
        }
        out[i] = xstrdup(json_string_value(v));
    }
    return out;
}

/* The overrides kilnc applied and the generation defaults (top level). */
static void parse_made(rd *r, json_t *root, ka_manifest *m)
{
    json_t *ov = jlist(r, root, "top level", "overrides", KA_MAX_OVERRIDES, &m->n_overrides);
    m->overrides = jstrings(r, ov, m->n_overrides, "overrides", KA_MAX_OVERRIDE_LEN);
    json_t *g = r->bad ? NULL : jget(r, root, "top level", "generation", JSON_OBJECT);
    if (!g)
        return;
    const char *k;
    json_t *v;
    json_object_foreach(g, k, v)
    {
        if (strcmp(k, "temperature") && strcmp(k, "top_p") && strcmp(k, "top_k") &&
            strcmp(k, "max_new_tokens")) {
            bad(r, "generation: unknown field '%.40s'", k);
            return;
        }
    }
    ka_gen *ge = &m->gen;
    ge->has_temperature = jopt_num(r, g, "generation", "temperature", 0, 0, KA_MAX_TEMPERATURE,
                                   &ge->temperature);
    ge->has_top_p = jopt_num(r, g, "generation", "top_p", 0, 1, 1, &ge->top_p);
    if (json_object_get(g, "top_k")) {
        ge->top_k = (int)jint(r, g, "generation", "top_k", 0, INT32_MAX);
        ge->has_top_k = !r->bad;
    }
    if (json_object_get(g, "max_new_tokens")) {
        ge->max_new = (int)jint(r, g, "generation", "max_new_tokens", 0, KA_MAX_SEQ_LEN);
        ge->has_max_new = !r->bad;
    }
}

static int is_enum(const char *s, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(s, names[i]))
            return i;
    return -1;
}

/* ---- steps ---- */

typedef struct stepctx {
    char where[160];  /* "decode step 12 (L3.attn.o)" */
    int prefill;
} stepctx;

static int parse_arg(rd *r, json_t *a, const stepctx *c, const char *what, ka_arg *out)
{
    memset(out, 0, sizeof *out);
    if (!json_is_array(a) || json_array_size(a) != 2 || !json_is_string(json_array_get(a, 0)))
        return bad(r, "%s: %s is not a [kind, value] pair", c->where, what);
    const char *k = json_string_value(json_array_get(a, 0));
    int kind = is_enum(k, arg_names, KA_NARGKINDS);
    if (kind < 0)
        return bad(r, "%s: %s has the unknown kind '%.40s'", c->where, what, k);
    out->kind = (ka_arg_kind)kind;
    json_t *v = json_array_get(a, 1);
    if (kind == KA_ARG_F32) {
        if (!json_is_number(v) || !isfinite((float)json_number_value(v)))
            return bad(r, "%s: %s (f32) is not a finite float", c->where, what);
        out->f = json_number_value(v);
        return 0;
    }
    if (!json_is_integer(v))
        return bad(r, "%s: %s (%s) is not an integer", c->where, what, k);
    out->i = json_integer_value(v);
    return 0;
}

/* The argument refers to something that exists. */
static int check_arg(rd *r, const ka_arg *a, const stepctx *c, const char *what)
{
    const ka_manifest *m = r->m;
    int64_t hi = -1;
    const char *of = NULL;
    switch (a->kind) {
    case KA_ARG_BUF: hi = m->slab_bytes - 1, of = "offset in the activation slab"; break;
    case KA_ARG_SCRATCH: hi = m->scratch_bytes - 1, of = "offset in the scratch area"; break;
    case KA_ARG_WEIGHT: hi = m->nweights - 1, of = "weight index"; break;
    case KA_ARG_CONST: hi = m->nconsts - 1, of = "constant table index"; break;
    case KA_ARG_KV_K:
    case KA_ARG_KV_V: hi = m->n_layers - 1, of = "KV layer index"; break;
    case KA_ARG_I32:
        if (a->i < INT32_MIN || a->i > INT32_MAX)
            return bad(r, "%s: %s (i32) is %lld, outside the int32 range", c->where, what,
                       (long long)a->i);
        return 0;
    case KA_ARG_F32: return 0;
    case KA_ARG_RANK: /* i * rank fits an int for every rank there can be */
        if (a->i < -(INT32_MAX / KA_MAX_TP) || a->i > INT32_MAX / KA_MAX_TP)
            return bad(r, "%s: %s (rank) is %lld, expected %d..%d (times the rank, an int32)",
                       c->where, what, (long long)a->i, -(INT32_MAX / KA_MAX_TP),
                       INT32_MAX / KA_MAX_TP);
        return 0;
    case KA_ARG_TMAP:
        if (a->i < 0 || a->i > 3)
            return bad(r, "%s: %s (tmap) is %lld, expected 0 or 2 (of x), 1 or 3 (of w)",
                       c->where, what, (long long)a->i);
        return 0;
    case KA_ARG_LOGITS:
        if (m->output_pool)
            return bad(r, "%s: %s is the logits buffer, which an embedding model does not have",
                       c->where, what);
        break;
    case KA_ARG_OUT:
        if (!m->output_pool)
            return bad(r, "%s: %s is the pooled output, which only an embedding model has",
                       c->where, what);
        break;
    default: break;
    }
    if (!of) { /* step, null, m, logits, out: no value */
        if (a->i != 0)
            return bad(r, "%s: %s (%s) has the value %lld, expected 0", c->where, what,
                       ka_arg_kind_name(a->kind), (long long)a->i);
        return 0;
    }
    if (hi < 0)
        return bad(r, "%s: %s: %s %lld, but there are none", c->where, what, of, (long long)a->i);
    if (a->i < 0 || a->i > hi)
        return bad(r, "%s: %s: %s %lld out of range (0..%lld)", c->where, what, of,
                   (long long)a->i, (long long)hi);
    if (a->kind == KA_ARG_KV_V && m->layers[a->i].v_dim == 0)
        return bad(r, "%s: %s: the V cache of KV layer %lld, which has none (v_dim 0)",
                   c->where, what, (long long)a->i);
    return 0;
}

/* The most rows a step can have: prefill steps carry up to max_tokens tokens, decode steps one
 * per sequence (the engine pads a batch to at most max_seqs rows). */
static int64_t max_rows(const ka_manifest *m, const ka_step *s, int prefill)
{
    return s->rows == KA_ROWS_S || !prefill ? m->max_seqs : m->max_tokens;
}

/* A GEMM operand of `rows` rows of `cols` elements, `ld` apart, fits its buffer. */
static int check_extent(rd *r, const stepctx *c, const ka_step *s, const char *what,
                        const ka_arg *a, int64_t rows, int64_t ld, int64_t cols, int64_t esize)
{
    const ka_manifest *m = r->m;
    int64_t bytes = ((rows - 1) * ld + cols) * esize, cap; /* < 2^53 by the bounds: no overflow */
    const char *in;
    switch (a->kind) {
    case KA_ARG_BUF: cap = m->slab_bytes - a->i, in = "the activation slab"; break;
    case KA_ARG_SCRATCH: cap = m->scratch_bytes - a->i, in = "the scratch area"; break;
    case KA_ARG_LOGITS:
        cap = (int64_t)(c->prefill && s->logits == KA_LOGITS_ALL ? m->max_tokens : m->max_seqs) *
              m->vocab * 4;
        in = "the logits buffer";
        break;
    default: return 0;
    }
    if (bytes > cap)
        return bad(r, "%s: %s %s needs %lld bytes at %lld rows, %lld are left in %s", c->where,
                   s->kind == KA_ALLREDUCE || s->kind == KA_ALLGATHER ? "collective" : "GEMM",
                   what, (long long)bytes, (long long)rows, (long long)cap, in);
    return 0;
}

/* A GEMM's x, w, n, k and ldx (of a cuBLASLt step, or of a kernel step's tensor maps, `tmap`):
 * x a buffer whose rows fit it at the largest step; w a 16-bit weight [n, k], or one dequantised
 * into scratch by the step before (dequant_fp8, dequant_int4), or (cuBLASLt only) an FP8 weight.
 * Sets *fp8 when w is an FP8 weight (x is then e4m3 rows in scratch, ldx = k). */
static int parse_xw(rd *r, json_t *o, const stepctx *c, ka_step *s, int tmap, int *fp8)
{
    const ka_manifest *m = r->m;
    *fp8 = 0;
    if (parse_arg(r, json_object_get(o, "x"), c, "x", &s->x) ||
        parse_arg(r, json_object_get(o, "w"), c, "w", &s->w))
        return -1;
    s->n = jint(r, o, c->where, "n", 1, KA_MAX_DIM);
    s->k = jint(r, o, c->where, "k", 1, KA_MAX_DIM);
    s->ldx = jint(r, o, c->where, "ldx", s->k, KA_MAX_DIM);
    if (r->bad)
        return -1;
    if (s->x.kind != KA_ARG_BUF && s->x.kind != KA_ARG_SCRATCH)
        return bad(r, "%s: GEMM x is %s, expected buf or scratch", c->where,
                   ka_arg_kind_name(s->x.kind));
    if (s->w.kind != KA_ARG_WEIGHT && s->w.kind != KA_ARG_SCRATCH)
        return bad(r, "%s: GEMM w is %s, expected weight or scratch", c->where,
                   ka_arg_kind_name(s->w.kind));
    if (check_arg(r, &s->x, c, "x") || check_arg(r, &s->w, c, "w"))
        return -1;
    const ka_weight *w = s->w.kind == KA_ARG_WEIGHT ? &m->weights[s->w.i] : NULL;
    *fp8 = w && w->type == KA_W_E4M3 && !tmap;
    if (w && w->type != KA_W_ACT && !*fp8)
        return bad(r, "%s: GEMM weight '%s' is %s: a GEMM reads a %s%s weight", c->where,
                   w->name, wtype_names[w->type], m->dtype, tmap ? "" : " or an f8_e4m3");
    if (w && (w->ndim != 2 || w->shape[0] != s->n || w->shape[1] != s->k))
        return bad(r, "%s: GEMM n=%lld k=%lld, but its weight '%s' is %s with %d dimensions "
                      "[%lld, %lld]",
                   c->where, (long long)s->n, (long long)s->k, w->name,
                   w->type == KA_W_ACT ? m->dtype : wtype_names[w->type], w->ndim,
                   (long long)w->shape[0], (long long)(w->ndim > 1 ? w->shape[1] : 0));
    if (!w && check_extent(r, c, s, "w", &s->w, s->n, s->k, s->k, 2))
        return -1;
    if (*fp8 && (s->x.kind != KA_ARG_SCRATCH || s->ldx != s->k))
        return bad(r, "%s: an FP8 GEMM (weight '%s' is f8_e4m3) needs x in scratch with ldx = k",
                   c->where, w->name);
    return check_extent(r, c, s, "x", &s->x, max_rows(m, s, c->prefill), s->ldx, s->k,
                        *fp8 ? 1 : 2);
}

static int parse_gemm(rd *r, json_t *o, const stepctx *c, ka_step *s)
{
    const ka_manifest *m = r->m;
    s->kind = KA_GEMM;
    if (!json_is_true(json_object_get(o, "gemm")))
        return bad(r, "%s: field 'gemm' is not true", c->where);
    int fp8;
    if (parse_xw(r, o, c, s, 0, &fp8) ||
        parse_arg(r, json_object_get(o, "bias"), c, "bias", &s->bias) ||
        parse_arg(r, json_object_get(o, "y"), c, "y", &s->y))
        return -1;
    s->ldy = jint(r, o, c->where, "ldy", s->n, KA_MAX_DIM);
    s->out_f32 = (int)jint(r, o, c->where, "out_f32", 0, 1);
    if (r->bad)
        return -1;
    if (s->bias.kind != KA_ARG_NULL && s->bias.kind != KA_ARG_WEIGHT)
        return bad(r, "%s: GEMM bias is %s, expected null or weight", c->where,
                   ka_arg_kind_name(s->bias.kind));
    if (fp8 && s->bias.kind != KA_ARG_NULL)
        return bad(r, "%s: an FP8 GEMM (weight '%s' is f8_e4m3) takes no bias", c->where,
                   m->weights[s->w.i].name);
    if (s->y.kind != KA_ARG_BUF && s->y.kind != KA_ARG_SCRATCH && s->y.kind != KA_ARG_LOGITS)
        return bad(r, "%s: GEMM y is %s, expected buf, scratch or logits", c->where,
                   ka_arg_kind_name(s->y.kind));
    if (check_arg(r, &s->bias, c, "bias") || check_arg(r, &s->y, c, "y"))
        return -1;
    if (s->bias.kind == KA_ARG_WEIGHT && m->weights[s->bias.i].nbytes != s->n * 2)
        return bad(r, "%s: GEMM bias '%s' has %lld bytes, expected n=%lld elements", c->where,
                   m->weights[s->bias.i].name, (long long)m->weights[s->bias.i].nbytes,
                   (long long)s->n);
    if (s->y.kind == KA_ARG_LOGITS && (!s->out_f32 || s->n != m->vocab || s->ldy != m->vocab))
        return bad(r, "%s: a GEMM into the logits must write float rows of the vocabulary "
                      "(%d); got out_f32=%d n=%lld ldy=%lld",
                   c->where, m->vocab, s->out_f32, (long long)s->n, (long long)s->ldy);
    return check_extent(r, c, s, "y", &s->y, max_rows(m, s, c->prefill), s->ldy, s->n,
                        s->out_f32 ? 4 : 2);
}

/* A collective (artifact.h's comment on KA_ALLREDUCE says what it does): operands in buffers,
 * each extent inside its buffer at the largest step. */
static int parse_collective(rd *r, json_t *o, const stepctx *c, ka_step *s)
{
    const ka_manifest *m = r->m;
    json_t *k = json_object_get(o, "collective");
    int kind = json_is_string(k) ? is_enum(json_string_value(k), coll_names, 2) : -1;
    if (kind < 0)
        return bad(r, "%s: collective is %s, expected \"all_reduce\" or \"all_gather\"",
                   c->where, json_is_string(k) ? "another name" : "not a string");
    s->kind = (ka_step_kind)(KA_ALLREDUCE + kind);
    if (parse_arg(r, json_object_get(o, "x"), c, "x", &s->x) ||
        parse_arg(r, json_object_get(o, "y"), c, "y", &s->y))
        return -1;
    s->n = jint(r, o, c->where, "n", 1, KA_MAX_DIM);
    s->out_f32 = (int)jint(r, o, c->where, "out_f32", 0, 1);
    if (r->bad)
        return -1;
    const ka_arg *ops[2] = {&s->x, &s->y};
    for (int i = 0; i < 2; i++) {
        ka_arg_kind ak = ops[i]->kind;
        if (ak != KA_ARG_BUF && ak != KA_ARG_SCRATCH && ak != KA_ARG_LOGITS)
            return bad(r, "%s: collective %c is %s, expected buf, scratch or logits", c->where,
                       "xy"[i], ka_arg_kind_name(ak));
        if (check_arg(r, ops[i], c, i ? "y" : "x"))
            return -1;
        if (ak == KA_ARG_LOGITS && !s->out_f32)
            return bad(r, "%s: collective %c is the float logits, but out_f32 is 0", c->where,
                       "xy"[i]);
    }
    int64_t rows = max_rows(m, s, c->prefill), es = s->out_f32 ? 4 : 2;
    int64_t yrows = s->kind == KA_ALLGATHER ? rows * m->tp : rows;
    if (check_extent(r, c, s, "x", &s->x, rows, s->n, s->n, es) ||
        check_extent(r, c, s, "y", &s->y, yrows, s->n, s->n, es))
        return -1;
    /* in place (a reduce only) or apart: a partial overlap is undefined in NCCL */
    if (s->x.kind == s->y.kind && !(s->kind == KA_ALLREDUCE && s->x.i == s->y.i)) {
        int64_t xb = rows * s->n * es, yb = yrows * s->n * es;
        if (s->x.i < s->y.i + yb && s->y.i < s->x.i + xb)
            return bad(r, "%s: collective x (%lld bytes at %lld) and y (%lld bytes at %lld) "
                          "overlap",
                       c->where, (long long)xb, (long long)s->x.i, (long long)yb,
                       (long long)s->y.i);
    }
    return 0;
}

static int parse_kernel_step(rd *r, json_t *o, const stepctx *c, ka_step *s)
{
    const ka_manifest *m = r->m;
    s->kind = KA_KERNEL;
    s->kernel = (int)jint(r, o, c->where, "kernel", 0, m->nkernels - 1);
    int n;
    json_t *g = jlist(r, o, c->where, "grid", 3, &n);
    if (r->bad)
        return -1;
    if (n != 3)
        return bad(r, "%s: grid has %d rules, expected 3", c->where, n);
    /* the largest step the engine can launch: grids grow with T, S and Q */
    int64_t T = c->prefill ? m->max_tokens : m->max_seqs, S = m->max_seqs,
            Q = c->prefill ? (m->max_tokens < m->max_seq_len ? m->max_tokens : m->max_seq_len) : 1;
    static const char *dims = "xyz", *names[6] = {"t", "s", "q", "add", "div", "sm"};
    for (int d = 0; d < 3; d++) {
        json_t *gd = json_array_get(g, (size_t)d);
        size_t ne = json_is_array(gd) ? json_array_size(gd) : 0;
        if (ne != 5 && ne != 6)
            return bad(r, "%s: grid rule %c is not a list of 5 or 6 integers", c->where, dims[d]);
        int *f[6] = {&s->grid[d].t,   &s->grid[d].s,   &s->grid[d].q,
                     &s->grid[d].add, &s->grid[d].div, &s->grid[d].sm};
        for (size_t k = 0; k < ne; k++) {
            char what[32];
            snprintf(what, sizeof what, "grid %c.%s", dims[d], names[k]);
            *f[k] = (int)jelem(r, gd, k, c->where, what, k == 4 ? 1 : 0,
                               k == 5 ? KA_MAX_SMS : INT32_MAX);
        }
        if (r->bad)
            return -1;
        const ka_grid *gr = &s->grid[d];
        /* < 2^58: no overflow; the sm term at the most SMs a device is taken to have */
        int64_t v = gr->t * T + gr->s * S + gr->q * Q + gr->add + (int64_t)gr->sm * KA_MAX_SMS;
        int64_t blocks = (v + gr->div - 1) / gr->div, lim = d == 0 ? INT32_MAX : 65535;
        if (blocks > lim)
            return bad(r, "%s: grid %c is %lld blocks at the largest step (T=%lld S=%lld Q=%lld); "
                          "the limit is %lld",
                       c->where, dims[d], (long long)blocks, (long long)T, (long long)S,
                       (long long)Q, (long long)lim);
    }
    json_t *args = jlist(r, o, c->where, "args", KA_MAX_ARGS, &s->nargs);
    for (int k = 0; k < s->nargs && !r->bad; k++) {
        char what[32];
        snprintf(what, sizeof what, "argument %d", k);
        if (parse_arg(r, json_array_get(args, (size_t)k), c, what, &s->args[k]) == 0)
            check_arg(r, &s->args[k], c, what);
    }
    /* a step's tensor maps are made once, with one kernel's boxes (the engine's run_steps):
     * gemm90's (0, 1) or gemm90_skinny's (2, 3), never both */
    for (int k = 0, fam = -1; k < s->nargs && !r->bad; k++)
        if (s->args[k].kind == KA_ARG_TMAP) {
            if (fam >= 0 && fam != (s->args[k].i >= 2))
                return bad(r, "%s: argument %d (tmap) is %lld, another kernel's boxes than the "
                              "step's earlier tensor map (0 and 1: gemm90's; 2 and 3: "
                              "gemm90_skinny's)",
                           c->where, k, (long long)s->args[k].i);
            fam = s->args[k].i >= 2;
        }
    int fp8;
    if (!r->bad && ka_step_has_tmap(s))
        parse_xw(r, o, c, s, 1, &fp8);
    return r->bad ? -1 : 0;
}

static int parse_steps(rd *r, json_t *root, const char *which, ka_step **out, int *n)
{
    int cnt;
    json_t *a = jlist(r, root, "schedule", which, KA_MAX_STEPS, &cnt);
    if (!a)
        return -1;
    *out = xcalloc((size_t)(cnt ? cnt : 1), sizeof(ka_step));
    *n = cnt;
    for (int i = 0; i < cnt && !r->bad; i++) {
        json_t *o = json_array_get(a, (size_t)i);
        ka_step *s = &(*out)[i];
        stepctx c = {.prefill = !strcmp(which, "prefill")};
        snprintf(c.where, sizeof c.where, "%s step %d", which, i);
        if (!json_is_object(o))
            return bad(r, "%s is not an object", c.where);
        s->label = jstr(r, o, c.where, "label", 0);
        snprintf(c.where, sizeof c.where, "%s step %d (%.80s)", which, i, s->label);
        s->size = (ka_size)jint(r, o, c.where, "size", KA_SIZE_ANY, KA_SIZE_NOT_ONE);
        s->logits = (ka_logits)jint(r, o, c.where, "logits", KA_LOGITS_ANY, KA_LOGITS_ALL);
        s->rows = (ka_rows)jint(r, o, c.where, "rows", KA_ROWS_T, KA_ROWS_S);
        if (r->bad)
            return -1;
        if (s->size == KA_SIZE_MID && !r->m->skinny_max)
            return bad(r, "%s: size mid (%d) needs limits.skinny_max, which is 0", c.where,
                       (int)KA_SIZE_MID);
        if (json_object_get(o, "gemm")) {
            parse_gemm(r, o, &c, s);
            r->m->cublaslt_steps++;
        } else if (json_object_get(o, "collective")) {
            parse_collective(r, o, &c, s);
            r->m->collectives++;
        } else {
            parse_kernel_step(r, o, &c, s);
        }
    }
    return r->bad ? -1 : 0;
}

/* ---- the manifest ---- */

static const char *const dtypes[] = {"bf16", "f16"},
                         *const tasks[] = {"generate", "embed", "classify"};

static void parse_identity(rd *r, json_t *root, ka_manifest *m)
{
    if (jint(r, root, "top level", "format", KA_VERSION, KA_VERSION) != KA_VERSION)
        return;
    m->kilnc_version = jstr(r, root, "top level", "kilnc_version", 1);
    json_t *id = jget(r, root, "top level", "identity", JSON_OBJECT);
    m->model_name = jstr(r, id, "identity", "model", 1);
    m->arch = jstr(r, id, "identity", "architecture", 1);
    m->spec_name = jstr(r, id, "identity", "spec", 1);
    m->task = jstr(r, id, "identity", "task", 1);
    m->dtype = jstr(r, id, "identity", "dtype", 1);
    m->spec_hash = jget_hex(r, id, "identity", "spec_hash");
    m->config_hash = jget_hex(r, id, "identity", "config_hash");
    m->layout_hash = jget_hex(r, id, "identity", "layout_hash");
    if (!r->bad && is_enum(m->dtype, dtypes, 2) < 0)
        bad(r, "identity: dtype is \"%.40s\", expected bf16 or f16", m->dtype);
    if (!r->bad && is_enum(m->task, tasks, 3) < 0)
        bad(r, "identity: task is \"%.40s\", expected generate, embed or classify", m->task);
}

static void parse_limits(rd *r, json_t *root, ka_manifest *m)
{
    json_t *lim = jget(r, root, "top level", "limits", JSON_OBJECT);
    const char *w = "limits";
    m->output_pool = (int)jint(r, lim, w, "output_pool", 0, 1);
    m->vocab = (int)jint(r, lim, w, "vocab", m->output_pool ? 0 : 1, KA_MAX_VOCAB);
    m->type_vocab = (int)jint(r, lim, w, "type_vocab", 0, KA_MAX_VOCAB);
    m->hidden = (int)jint(r, lim, w, "hidden", 1, KA_MAX_HIDDEN);
    m->max_tokens = (int)jint(r, lim, w, "max_tokens", 1, KA_MAX_TOKENS);
    m->max_seqs = (int)jint(r, lim, w, "max_seqs", 1, KA_MAX_SEQS);
    m->max_seq_len = (int)jint(r, lim, w, "max_seq_len", 1, KA_MAX_SEQ_LEN);
    m->gemv_max = (int)jint(r, lim, w, "gemv_max", 0, KA_MAX_TOKENS);
    m->skinny_max = (int)jint(r, lim, w, "skinny_max", 0, KA_MAX_TOKENS);
    if (lim && json_object_get(lim, "rope_switch")) /* optional: absent in artifacts without longrope */
        m->rope_switch = (int)jint(r, lim, w, "rope_switch", 1, KA_MAX_SEQ_LEN);
    m->slab_bytes = jint(r, lim, w, "slab_bytes", 0, KA_MAX_BYTES);
    m->scratch_bytes = jint(r, lim, w, "scratch_bytes", 0, KA_MAX_BYTES);
    if (r->bad)
        return;
    if (m->output_pool != (strcmp(m->task, "embed") == 0 || strcmp(m->task, "classify") == 0))
        bad(r, "limits: output_pool is %d for task %s", m->output_pool, m->task);
    else if (m->max_tokens < m->max_seqs)
        bad(r, "limits: max_tokens %d < max_seqs %d: a decode step of max_seqs tokens would "
               "overflow activation buffers sized for max_tokens (kilnc compile --max-tokens must "
               "be at least --max-batch)",
            m->max_tokens, m->max_seqs);
    else if (m->skinny_max && m->skinny_max <= m->gemv_max)
        bad(r, "limits: skinny_max %d is not above gemv_max %d (expected 0, or the rows up to "
               "which steps of size mid run, above gemv_max)",
            m->skinny_max, m->gemv_max);
    else if ((int64_t)m->max_seqs * ((m->max_seq_len + KILN_BLOCK - 1) / KILN_BLOCK + 1) *
                 KILN_BLOCK >
             INT32_MAX)
        bad(r, "limits: max_seqs %d x max_seq_len %d KV slots do not fit a 32-bit index",
            m->max_seqs, m->max_seq_len);
}

/* A classifier's label names (top level "labels"): one per output column, 1 to
 * KA_MAX_LABEL_LEN bytes each; no other task has them. */
static void parse_labels(rd *r, json_t *root, ka_manifest *m)
{
    if (strcmp(m->task, "classify") != 0) {
        if (json_object_get(root, "labels"))
            bad(r, "top level: labels are only for task classify, not %s", m->task);
        return;
    }
    int n;
    json_t *lb = jlist(r, root, "top level", "labels", KA_MAX_HIDDEN, &n);
    if (r->bad)
        return;
    if (n != m->hidden) {
        bad(r, "labels: %d names for %d scores (limits.hidden)", n, m->hidden);
        return;
    }
    m->labels = jstrings(r, lb, n, "labels", KA_MAX_LABEL_LEN);
}

static void parse_tables(rd *r, json_t *root, ka_manifest *m)
{
    json_t *ly = jlist(r, root, "top level", "kv_layers", KA_MAX_LAYERS, &m->n_layers);
    m->layers = xcalloc((size_t)(m->n_layers ? m->n_layers : 1), sizeof(ka_layer));
    for (int i = 0; i < m->n_layers && !r->bad; i++) {
        char where[48];
        snprintf(where, sizeof where, "kv layer %d", i);
        json_t *l = json_array_get(ly, (size_t)i);
        if (!json_is_array(l) || json_array_size(l) != 3) {
            bad(r, "%s is not an [n_kv, head_dim, v_dim] triple", where);
            break;
        }
        ka_layer *y = &m->layers[i];
        y->n_kv = (int)jelem(r, l, 0, where, "n_kv", 1, 1 << 16);
        y->head_dim = (int)jelem(r, l, 1, where, "head_dim", 1, 1 << 16);
        y->v_dim = (int)jelem(r, l, 2, where, "v_dim", 0, 1 << 16); /* 0: no V cache (MLA) */
        if (!r->bad && (int64_t)y->n_kv * (y->head_dim > y->v_dim ? y->head_dim : y->v_dim) >
                           (1 << 20))
            bad(r, "%s: n_kv %d x head_dim %d (v_dim %d) is over %d", where, y->n_kv,
                y->head_dim, y->v_dim, 1 << 20);
    }
    json_t *eos = jlist(r, root, "top level", "eos", KA_MAX_EOS, &m->n_eos);
    m->eos = xcalloc((size_t)(m->n_eos ? m->n_eos : 1), sizeof(int));
    for (int i = 0; i < m->n_eos && !r->bad; i++) {
        char what[32];
        snprintf(what, sizeof what, "eos id %d", i);
        m->eos[i] = (int)jelem(r, eos, (size_t)i, "token ids", what, 0, m->vocab - 1);
    }
    m->bos = (int)jint(r, root, "token ids", "bos", -1, m->vocab - 1);

    json_t *ks = jlist(r, root, "top level", "kernels", KA_MAX_KERNELS, &m->nkernels);
    m->kernels = xcalloc((size_t)(m->nkernels ? m->nkernels : 1), sizeof(ka_kernel));
    for (int i = 0; i < m->nkernels && !r->bad; i++) {
        char where[48];
        snprintf(where, sizeof where, "kernel %d", i);
        json_t *k = json_array_get(ks, (size_t)i);
        m->kernels[i].name = jstr(r, k, where, "name", 1);
        m->kernels[i].block = (int)jint(r, k, where, "block", 1, 1024);
        m->kernels[i].smem = (int)jint(r, k, where, "smem", 0, KA_MAX_SMEM);
    }
    /* embedding models sample nothing: -1; generating ones launch it after every step */
    if (m->output_pool)
        m->sample_kernel = (int)jint(r, root, "top level", "sample_kernel", -1, -1);
    else
        m->sample_kernel = (int)jint(r, root, "top level", "sample_kernel", 0, m->nkernels - 1);
    /* optional: artifacts written before kilnc --gemm ran every GEMM step on cuBLASLt */
    json_t *gm = json_object_get(root, "gemm");
    if (gm && !r->bad) {
        m->gemm_kiln = json_is_string(gm) ? is_enum(json_string_value(gm), gemms, 2) : -1;
        if (m->gemm_kiln < 0)
            bad(r, "top level: gemm is not \"cublaslt\" or \"kiln\"");
    }
    /* optional: kilnc compile --batch-invariant (absent: false) */
    json_t *bi = json_object_get(root, "batch_invariant");
    if (bi && !r->bad) {
        if (!json_is_boolean(bi))
            bad(r, "top level: batch_invariant is not true or false");
        m->batch_invariant = json_is_true(bi);
    }
    /* optional: kilnc compile --kv-dtype fp8 (absent: the compute dtype); the FP8 layout needs
     * K and V rows of the same multiple-of-8 head dim (no MLA layer) */
    json_t *kd = json_object_get(root, "kv_dtype");
    if (kd && !r->bad) {
        if (!json_is_string(kd) || strcmp(json_string_value(kd), "f8_e4m3") != 0)
            bad(r, "top level: kv_dtype is not \"f8_e4m3\" (the only one stored; absent: the "
                   "compute dtype)");
        m->kv_e4m3 = 1;
        for (int i = 0; i < m->n_layers && !r->bad; i++)
            if (m->layers[i].v_dim != m->layers[i].head_dim || m->layers[i].head_dim % 8)
                bad(r, "kv layer %d: head_dim %d, v_dim %d in an artifact with kv_dtype "
                       "f8_e4m3 (its layout needs equal head dims, multiples of 8)",
                    i, m->layers[i].head_dim, m->layers[i].v_dim);
    }

    json_t *ws = jlist(r, root, "top level", "weights", KA_MAX_WEIGHTS, &m->nweights);
    m->weights = xcalloc((size_t)(m->nweights ? m->nweights : 1), sizeof(ka_weight));
    for (int i = 0; i < m->nweights && !r->bad; i++) {
        char where[160];
        json_t *w = json_array_get(ws, (size_t)i);
        snprintf(where, sizeof where, "weight %d", i);
        m->weights[i].name = jstr(r, w, where, "name", 1);
        snprintf(where, sizeof where, "weight %d (%.80s)", i, m->weights[i].name);
        m->weights[i].nbytes = jint(r, w, where, "nbytes", 1, KA_MAX_BYTES);
        json_t *wt = json_object_get(w, "dtype");
        if (wt && !r->bad) {
            int k = json_is_string(wt) ? is_enum(json_string_value(wt), wtype_names, 5) : -1;
            if (k <= KA_W_ACT)
                bad(r, "%s: dtype is not \"f8_e4m3\", \"f32\", \"int4\" or \"int4_sz\"", where);
            else
                m->weights[i].type = (ka_wtype)k;
        }
        json_t *sh = jlist(r, w, where, "shape", 4, &m->weights[i].ndim);
        if (!r->bad && m->weights[i].ndim < 1)
            bad(r, "%s: shape is empty", where);
        int64_t numel = 1;
        for (int d = 0; d < m->weights[i].ndim && !r->bad; d++) {
            m->weights[i].shape[d] = jelem(r, sh, (size_t)d, where, "a dimension", 1, KA_MAX_BYTES);
            numel = numel > KA_MAX_BYTES / m->weights[i].shape[d]
                        ? KA_MAX_BYTES + 1
                        : numel * m->weights[i].shape[d];
        }
        int es = wtype_size[m->weights[i].type];
        if (!r->bad && numel * es != m->weights[i].nbytes)
            bad(r, "%s: %lld bytes for %lld elements of %s", where,
                (long long)m->weights[i].nbytes, (long long)numel,
                m->weights[i].type == KA_W_ACT ? m->dtype : wtype_names[m->weights[i].type]);
    }

    json_t *cs = jlist(r, root, "top level", "consts", KA_MAX_CONSTS, &m->nconsts);
    m->consts = xcalloc((size_t)(m->nconsts ? m->nconsts : 1), sizeof(ka_const));
    for (int i = 0; i < m->nconsts && !r->bad; i++) {
        char where[48];
        snprintf(where, sizeof where, "constant table %d", i);
        json_t *c = json_array_get(cs, (size_t)i);
        m->consts[i].name = jstr(r, c, where, "name", 1);
        json_t *v = jlist(r, c, where, "values", KA_MAX_CONST_VALUES, &m->consts[i].n);
        m->consts[i].v = xcalloc((size_t)(m->consts[i].n ? m->consts[i].n : 1), sizeof(float));
        for (int k = 0; k < m->consts[i].n && !r->bad; k++) {
            json_t *x = json_array_get(v, (size_t)k);
            m->consts[i].v[k] = (float)json_number_value(x);
            if (!json_is_number(x) || !isfinite(m->consts[i].v[k]))
                bad(r, "%s: value %d is not a finite float", where, k);
        }
    }
}

/* The shards: tp of them, rank r's at exactly shards/rank<r>-of-<tp>.safetensors (no other path
 * can be named, so none leaves the artifact folder), each with its fingerprints. */
static void parse_shard_blobs(rd *r, json_t *root, ka_manifest *m)
{
    m->tp = (int)jint(r, root, "top level", "tp", 1, KA_MAX_TP);
    int n;
    json_t *sh = jlist(r, root, "top level", "shards", KA_MAX_TP, &n);
    if (!r->bad && n != m->tp)
        bad(r, "shards: %d entries for tp %d, expected one per rank", n, m->tp);
    m->shards = xcalloc((size_t)(m->tp ? m->tp : 1), sizeof(ka_shard));
    for (int i = 0; i < m->tp && !r->bad; i++) {
        char where[48], want[64];
        snprintf(where, sizeof where, "shard %d", i);
        json_t *o = json_array_get(sh, (size_t)i);
        ka_shard *s = &m->shards[i];
        s->path = jstr(r, o, where, "path", 1);
        snprintf(want, sizeof want, "shards/rank%d-of-%d.safetensors", i, m->tp);
        if (!r->bad && strcmp(s->path, want))
            bad(r, "%s: path is \"%.80s\", expected \"%s\"", where, s->path, want);
        s->header_fnv = jget_hex(r, o, where, "header_fnv");
        s->hash = jget_hex(r, o, where, "hash");
        s->id = jget_hex(r, o, where, "id");
    }
    m->shard_chunk = (uint64_t)jint(r, root, "shards", "shard_chunk", (int64_t)HASH_CHUNK_MIN,
                                    (int64_t)HASH_CHUNK_MAX);

    json_t *bs = jlist(r, root, "top level", "blobs", KA_MAX_BLOBS, &m->nblobs);
    m->blobs = xcalloc((size_t)(m->nblobs ? m->nblobs : 1), sizeof(ka_blob));
    for (int i = 0; i < m->nblobs && !r->bad; i++) {
        char where[48];
        snprintf(where, sizeof where, "blob %d", i);
        json_t *b = json_array_get(bs, (size_t)i);
        m->blobs[i].name = jstr(r, b, where, "name", 1);
        m->blobs[i].offset = (uint64_t)jint(r, b, where, "offset", 0, INT64_MAX);
        m->blobs[i].len = (uint64_t)jint(r, b, where, "len", 0, INT64_MAX);
        m->blobs[i].hash = jget_hex(r, b, where, "hash");
        for (int k = 0; k < i && !r->bad; k++)
            if (!strcmp(m->blobs[k].name, m->blobs[i].name))
                bad(r, "blobs %d and %d are both named '%.40s'", k, i, m->blobs[i].name);
    }
}

/* A batch-invariant artifact (kilnc compile --batch-invariant): kiln's GEMM, one rank, and no
 * step chosen by the row count, so each schedule runs the same kernels at every batch (the
 * engine keeps decode tokens and prompt chunks in separate steps: kb_info.batch_invariant). */
static void check_invariant(rd *r, const ka_manifest *m)
{
    if (!m->gemm_kiln || m->tp != 1) {
        bad(r, "top level: batch_invariant needs gemm \"kiln\" and tp 1 (got gemm \"%s\", tp %d)",
            gemms[m->gemm_kiln], m->tp);
        return;
    }
    for (int pass = 0; pass < 2; pass++) {
        const ka_step *st = pass ? m->decode : m->prefill;
        int n = pass ? m->ndecode : m->nprefill;
        for (int i = 0; i < n; i++)
            if (st[i].size != KA_SIZE_ANY) {
                bad(r, "%s step %d (%.80s): size %d in a batch_invariant artifact (expected 0: "
                       "no step chosen by the row count)",
                    pass ? "decode" : "prefill", i, st[i].label, (int)st[i].size);
                return;
            }
    }
}

static int parse_manifest(rd *r, const char *text, size_t len, ka_manifest *m)
{
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        return kerr_add(r->err, "%s: manifest: not a JSON object (%s at line %d); the file is "
                                "corrupt or was edited: rebuild it with kilnc compile",
                        r->path, root ? "another value" : je.text, je.line);
    }
    r->m = m;
    /* in dependency order: later checks use the tables and limits read before them */
    parse_identity(r, root, m);
    if (!r->bad)
        parse_limits(r, root, m);
    if (!r->bad)
        parse_labels(r, root, m);
    if (!r->bad)
        parse_tables(r, root, m);
    if (!r->bad)
        parse_made(r, root, m);
    if (!r->bad)
        parse_shard_blobs(r, root, m);
    if (!r->bad)
        parse_steps(r, root, "prefill", &m->prefill, &m->nprefill);
    if (!r->bad)
        parse_steps(r, root, "decode", &m->decode, &m->ndecode);
    if (!r->bad && m->gemm_kiln && m->cublaslt_steps)
        bad(r, "top level: gemm is \"kiln\" but the schedules hold %d cuBLASLt GEMM steps",
            m->cublaslt_steps);
    if (!r->bad && m->batch_invariant)
        check_invariant(r, m);
    json_decref(root);
    return r->bad ? -1 : 0;
}

/* Every byte outside the header, the blobs and the manifest is a zero gap, and each section is
 * where ka_write puts it. */
static int check_layout(const ka_file *f, uint64_t moff, kerr *err)
{
    const ka_manifest *m = &f->m;
    uint64_t end = KA_HEADER;
    for (int i = 0; i <= m->nblobs; i++) {
        const char *name = i < m->nblobs ? m->blobs[i].name : "manifest";
        uint64_t off = i < m->nblobs ? m->blobs[i].offset : moff, want = next_section(end);
        if (off != want)
            return kerr_add(err, "%s: section '%s' is at byte %llu, expected %llu: the file is "
                                 "corrupt; rebuild it with kilnc compile",
                            f->path, name, (unsigned long long)off, (unsigned long long)want);
        if (off > moff)
            return kerr_add(err, "%s: section '%s' is at byte %llu, past the manifest at %llu: "
                                 "the file is corrupt; rebuild it with kilnc compile",
                            f->path, name, (unsigned long long)off, (unsigned long long)moff);
        for (uint64_t p = end; p < off; p++)
            if (f->data[p])
                return kerr_add(err, "%s: byte %llu (padding before section '%s') is not zero: "
                                     "the file is corrupt; rebuild it with kilnc compile",
                                f->path, (unsigned long long)p, name);
        if (i == m->nblobs)
            break;
        if (m->blobs[i].len > moff - off)
            return kerr_add(err, "%s: section '%s' (%llu bytes at %llu) runs past the manifest: "
                                 "truncated or corrupt; rebuild it with kilnc compile",
                            f->path, name, (unsigned long long)m->blobs[i].len,
                            (unsigned long long)off);
        end = off + m->blobs[i].len;
    }
    return 0;
}

static ka_file *read_bytes(ka_file *f, kerr *err)
{
    const char *path = f->path;
    const unsigned char *p = f->data;
    size_t len = f->len;
    rd r = {path, err, 0, NULL};
    if (len < KA_HEADER || memcmp(p, KA_MAGIC, 8) != 0) {
        kerr_add(err, "%s: not a kiln artifact (bad magic%s); compile one with kilnc compile",
                 path, len < KA_HEADER ? ", file too short" : "");
        goto fail;
    }
    uint32_t version = (uint32_t)p[8] | (uint32_t)p[9] << 8 | (uint32_t)p[10] << 16 |
                       (uint32_t)p[11] << 24;
    if (version != KA_VERSION) {
        kerr_add(err,
                 "%s: artifact format version %u, this kiln reads version %d; rebuild it with "
                 "this release's kilnc compile",
                 path, version, KA_VERSION);
        goto fail;
    }
    uint64_t moff = get64(p + 16), mlen = get64(p + 24);
    if (p[12] | p[13] | p[14] | p[15]) {
        kerr_add(err, "%s: header bytes 12..15 are not zero: the file is corrupt; rebuild it with "
                      "kilnc compile",
                 path);
        goto fail;
    }
    if (moff < KA_HEADER || moff > len || mlen != len - moff || mlen == 0) {
        kerr_add(err, "%s: the header puts the manifest at %llu+%llu, but the file has %zu "
                      "bytes: it is truncated or corrupt; copy it again or rebuild it with kilnc "
                      "compile",
                 path, (unsigned long long)moff, (unsigned long long)mlen, len);
        goto fail;
    }
    if (ka_manifest_hash(p, p + moff, mlen) != get64(p + 32)) {
        kerr_add(err, "%s: manifest checksum mismatch (corrupted or edited); rebuild with: kilnc "
                      "compile MODEL_DIR -o OUT_DIR",
                 path);
        goto fail;
    }
    if (parse_manifest(&r, (const char *)p + moff, mlen, &f->m) || check_layout(f, moff, err))
        goto fail;
    for (int i = 0; i < f->m.nblobs; i++) {
        const ka_blob *b = &f->m.blobs[i];
        if (hash_bytes(p + b->offset, b->len) != b->hash) {
            kerr_add(err, "%s: section '%s' fails its checksum: the file is corrupt; copy it "
                          "again or rebuild it with kilnc compile",
                     path, b->name);
            goto fail;
        }
    }
    return f;
fail:
    ka_file_free(f);
    return NULL;
}

ka_file *ka_read(const char *path, kerr *err)
{
    size_t len = 0;
    char *data = util_read_file(path, &len, err);
    if (!data)
        return NULL;
    ka_file *f = xcalloc(1, sizeof *f);
    f->data = (unsigned char *)data;
    f->len = len;
    f->path = xstrdup(path);
    return read_bytes(f, err);
}

ka_file *ka_read_mem(const char *path, const void *data, size_t len, kerr *err)
{
    ka_file *f = xcalloc(1, sizeof *f);
    f->data = (unsigned char *)data;
    f->len = len;
    f->path = xstrdup(path);
    f->borrowed = 1;
    return read_bytes(f, err);
}

static void free_steps(ka_step *s, int n)
{
    for (int i = 0; i < n && s; i++)
        free(s[i].label);
    free(s);
}

void ka_manifest_free(ka_manifest *m)
{
    free(m->model_name);
    free(m->arch);
    free(m->spec_name);
    for (int i = 0; m->labels && i < m->hidden; i++)
        free(m->labels[i]);
    free(m->labels);
    free(m->task);
    free(m->dtype);
    free(m->kilnc_version);
    free(m->layers);
    free(m->eos);
    for (int i = 0; i < m->n_overrides && m->overrides; i++)
        free(m->overrides[i]);
    free(m->overrides);
    for (int i = 0; i < m->nkernels && m->kernels; i++)
        free(m->kernels[i].name);
    free(m->kernels);
    free_steps(m->prefill, m->nprefill);
    free_steps(m->decode, m->ndecode);
    for (int i = 0; i < m->nweights && m->weights; i++)
        free(m->weights[i].name);
    free(m->weights);
    for (int i = 0; i < m->tp && m->shards; i++)
        free(m->shards[i].path);
    free(m->shards);
    for (int i = 0; i < m->nconsts && m->consts; i++) {
        free(m->consts[i].name);
        free(m->consts[i].v);
    }
    free(m->consts);
    for (int i = 0; i < m->nblobs && m->blobs; i++)
        free(m->blobs[i].name);
    free(m->blobs);
    memset(m, 0, sizeof *m);
}

void ka_file_free(ka_file *f)
{
    if (!f)
        return;
    ka_manifest_free(&f->m);
    if (!f->borrowed)
        free(f->data);
    free(f->path);
    free(f);
}

const ka_blob *ka_find_blob(const ka_manifest *m, const char *name)
{
    for (int i = 0; i < m->nblobs; i++)
        if (strcmp(m->blobs[i].name, name) == 0)
            return &m->blobs[i];
    return NULL;
}

/* ---------------------------------------------------------------- the weight shard */

void ka_shard_data(const st_set *s, const unsigned char **data, uint64_t *len)
{
    const st_file *f = &s->files[0];
    const unsigned char *p = f->base;
    uint64_t hl = get64(p); /* st_open checked 8 + hl <= size */
    *data = p + 8 + hl;
    *len = f->size - 8 - hl;
}

st_set *ka_shard_open_rank(const ka_file *af, const char *dir, int rank, kerr *err)
{
    const ka_manifest *m = &af->m;
    assert(rank >= 0 && rank < m->tp);
    const ka_shard *sh = &m->shards[rank];
    char *path = util_path_join(dir, sh->path);
    st_set *s = st_open(path, err);
    if (!s) {
        kerr_add(err, "the weights of rank %d of %d of %s are missing or unreadable; copy the "
                      "shards/ folder of the same kilnc compile output, or recompile with kilnc "
                      "compile",
                 rank, m->tp, af->path);
        free(path);
        return NULL;
    }
    if (s->nfiles != 1) {
        kerr_add(err, "%s: %d files, expected one .safetensors file: recompile with kilnc compile",
                 path, s->nfiles);
        goto fail;
    }
    char id[64];
    const char *got = st_metadata(s, KA_SHARD_ID_KEY, id, sizeof id);
    char want[24];
    snprintf(want, sizeof want, "%016llx", (unsigned long long)sh->id);
    if (!got || strcmp(got, want) != 0) {
        if (got)
            kerr_add(err, "%s: shard id mismatch: the shard has id %.20s, %s expects %s for rank "
                          "%d of %d: the shard belongs to another compile (another model, other "
                          "weights, another rank or --tp); copy the shards/ folder of the same "
                          "kilnc compile output, or recompile",
                     path, got, af->path, want, rank, m->tp);
        else
            kerr_add(err, "%s: no %s in its __metadata__ (%s expects shard id %s): it was not "
                          "written by this release's kilnc compile; recompile",
                     path, KA_SHARD_ID_KEY, af->path, want);
        goto fail;
    }
    const unsigned char *p = s->files[0].base;
    uint64_t fnv = util_fnv1a(p + 8, (size_t)get64(p), UTIL_FNV_SEED);
    if (fnv != sh->header_fnv) {
        kerr_add(err, "%s: header checksum mismatch (FNV-1a %016llx, %s expects %016llx): the "
                      "shard's header was modified; copy it again or recompile with kilnc compile",
                 path, (unsigned long long)fnv, af->path, (unsigned long long)sh->header_fnv);
        goto fail;
    }
    st_dtype want_dt = strcmp(m->dtype, "f16") == 0 ? ST_F16 : ST_BF16;
    if (s->n != m->nweights) {
        kerr_add(err, "%s: %d tensors, but %s lists %d weights: recompile with kilnc compile", path,
                 s->n, af->path, m->nweights);
        goto fail;
    }
    for (int i = 0; i < m->nweights; i++) {
        const ka_weight *w = &m->weights[i];
        const st_tensor *t = st_find(s, w->name);
        static const st_dtype stored[] = {[KA_W_E4M3] = ST_F8_E4M3, [KA_W_F32] = ST_F32,
                                          [KA_W_INT4] = ST_U8, [KA_W_INT4SZ] = ST_U32};
        st_dtype wdt = w->type == KA_W_ACT ? want_dt : stored[w->type];
        int same = t && t->dtype == wdt && t->ndim == w->ndim && (int64_t)t->nbytes == w->nbytes;
        for (int d = 0; same && d < w->ndim; d++)
            same = t->shape[d] == w->shape[d];
        if (!same) {
            char ws[96];
            kerr_add(err, "%s: tensor '%s' is %s; %s expects %s %s (%lld bytes): recompile with "
                          "kilnc compile",
                     path, w->name, t ? "of another dtype or shape" : "missing", af->path,
                     st_dtype_name(wdt), st_shape_str(w->ndim, w->shape, ws, sizeof ws),
                     (long long)w->nbytes);
            goto fail;
        }
    }
    free(path);
    return s;
fail:
    free(path);
    st_close(s);
    return NULL;
}

hash_job *ka_shard_hash_start(const ka_manifest *m, const st_set *s, int threads)
{
    const unsigned char *data;
    uint64_t len;
    ka_shard_data(s, &data, &len);
    return hash_start(data, len, m->shard_chunk, threads);
}

int ka_shard_hash_check_rank(const ka_file *af, int rank, const st_set *s, uint64_t got,
                             kerr *err)
{
    assert(rank >= 0 && rank < af->m.tp);
    uint64_t want = af->m.shards[rank].hash;
    if (got == want)
        return 0;
    return kerr_add(err, "%s: weight data checksum mismatch (XXH3 %016llx, %s expects %016llx "
                         "for rank %d of %d): the shard is corrupt or was modified; copy it "
                         "again or recompile with kilnc compile",
                    s->files[0].path, (unsigned long long)got, af->path, (unsigned long long)want,
                    rank, af->m.tp);
}

int ka_shard_verify(const ka_file *af, int rank, const st_set *s, int threads, kerr *err)
{
    const unsigned char *data;
    uint64_t len;
    ka_shard_data(s, &data, &len);
    return ka_shard_hash_check_rank(af, rank, s,
                                    hash_chunked(data, len, af->m.shard_chunk, threads), err);
}
