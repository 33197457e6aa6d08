/* artifact — see artifact.h. Reading trusts nothing: every field is checked for presence, type
 * and range, every blob for bounds and hash, so a truncated, corrupted or foreign file is a
 * clear error and never undefined behaviour. */
#include "artifact.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *arg_names[] = {"step", "buf", "scratch", "weight", "const", "kv_k", "kv_v",
                                  "null", "i32", "f32", "m",    "logits",  "out"};
_Static_assert(ARRAY_LEN(arg_names) == KA_NARGKINDS, "arg kind table out of sync");

const char *ka_arg_kind_name(ka_arg_kind k)
{
    return (unsigned)k < KA_NARGKINDS ? arg_names[k] : "?";
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
    return a;
}

static json_t *jsteps(const ka_step *st, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++) {
        const ka_step *s = &st[i];
        json_t *o = json_object();
        json_object_set_new(o, "label", json_string(s->label ? s->label : ""));
        json_object_set_new(o, "size", json_integer(s->size));
        json_object_set_new(o, "logits", json_integer(s->logits));
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
            json_object_set_new(o, "rows", json_integer(s->rows));
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
    json_object_set_new(lim, "hidden", json_integer(m->hidden));
    json_object_set_new(lim, "max_tokens", json_integer(m->max_tokens));
    json_object_set_new(lim, "max_seqs", json_integer(m->max_seqs));
    json_object_set_new(lim, "max_seq_len", json_integer(m->max_seq_len));
    json_object_set_new(lim, "gemv_max", json_integer(m->gemv_max));
    json_object_set_new(lim, "slab_bytes", json_integer(m->slab_bytes));
    json_object_set_new(lim, "scratch_bytes", json_integer(m->scratch_bytes));
    json_object_set_new(lim, "output_pool", json_integer(m->output_pool));
    json_object_set_new(r, "limits", lim);
    json_t *ly = json_array();
    for (int i = 0; i < m->n_layers; i++) {
        json_t *l = json_array();
        json_array_append_new(l, json_integer(m->layers[i].n_kv));
        json_array_append_new(l, json_integer(m->layers[i].head_dim));
        json_array_append_new(ly, l);
    }
    json_object_set_new(r, "kv_layers", ly);
    json_t *eos = json_array();
    for (int i = 0; i < m->n_eos; i++)
        json_array_append_new(eos, json_integer(m->eos[i]));
    json_object_set_new(r, "eos", eos);
    json_object_set_new(r, "bos", json_integer(m->bos));
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
    json_object_set_new(r, "prefill", jsteps(m->prefill, m->nprefill));
    json_object_set_new(r, "decode", jsteps(m->decode, m->ndecode));
    json_t *ws = json_array();
    for (int i = 0; i < m->nweights; i++) {
        json_t *w = json_object(), *sh = json_array();
        json_object_set_new(w, "name", json_string(m->weights[i].name));
        for (int d = 0; d < m->weights[i].ndim; d++)
            json_array_append_new(sh, json_integer(m->weights[i].shape[d]));
        json_object_set_new(w, "shape", sh);
        json_object_set_new(w, "nbytes", json_integer(m->weights[i].nbytes));
        json_array_append_new(ws, w);
    }
    json_object_set_new(r, "weights", ws);
    json_object_set_new(r, "shard", json_string(m->shard));
    json_object_set_new(r, "shard_header_fnv", jhex(m->shard_header_fnv));
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
        json_object_set_new(b, "fnv", jhex(m->blobs[i].fnv));
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

int ka_write(const char *path, ka_manifest *m, const void *const *blob_data, kerr *err)
{
    uint64_t off = 32;
    for (int i = 0; i < m->nblobs; i++) {
        off = (off + 255) & ~(uint64_t)255; /* cubins are loaded in place: keep them aligned */
        m->blobs[i].offset = off;
        m->blobs[i].fnv = util_fnv1a(blob_data[i], m->blobs[i].len, UTIL_FNV_SEED);
        off += m->blobs[i].len;
    }
    char *js = ka_manifest_json(m);
    size_t jl = strlen(js);
    unsigned char head[32] = {0};
    memcpy(head, KA_MAGIC, 8);
    head[8] = KA_VERSION & 0xff;
    head[9] = (KA_VERSION >> 8) & 0xff;
    put64(head + 16, off);
    put64(head + 24, jl);
    char *tmp = xasprintf("%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        kerr_add(err, "%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        free(js);
        return -1;
    }
    int ok = fwrite(head, 1, 32, f) == 32;
    uint64_t at = 32;
    static const unsigned char zeros[256];
    for (int i = 0; i < m->nblobs && ok; i++) {
        ok = fwrite(zeros, 1, m->blobs[i].offset - at, f) == m->blobs[i].offset - at &&
             fwrite(blob_data[i], 1, m->blobs[i].len, f) == m->blobs[i].len;
        at = m->blobs[i].offset + m->blobs[i].len;
    }
    ok = ok && fwrite(js, 1, jl, f) == jl;
    ok = fclose(f) == 0 && ok;
    free(js);
    if (!ok || rename(tmp, path) != 0) {
        kerr_add(err, "%s: write failed: %s", path, strerror(errno));
        unlink(tmp);
        free(tmp);
        return -1;
    }
    free(tmp);
    return 0;
}

/* ---------------------------------------------------------------- reading */

typedef struct rd {
    const char *path;
    kerr *err;
    int bad;
} rd;

static json_t *field(rd *r, json_t *o, const char *k, json_type t, const char *what)
{
    json_t *v = json_object_get(o, k);
    if (!v || json_typeof(v) != t) {
        if (!r->bad)
            kerr_add(r->err, "%s: manifest field '%s' (%s) is missing or has the wrong type; the "
                             "artifact is corrupt or was written by another kilnc: rebuild it with "
                             "kilnc compile",
                     r->path, k, what);
        r->bad = 1;
        return NULL;
    }
    return v;
}

static int64_t get_int(rd *r, json_t *o, const char *k)
{
    json_t *v = field(r, o, k, JSON_INTEGER, "integer");
    return v ? json_integer_value(v) : 0;
}

static char *get_str(rd *r, json_t *o, const char *k)
{
    json_t *v = field(r, o, k, JSON_STRING, "string");
    return xstrdup(v ? json_string_value(v) : "");
}

static uint64_t get_hex(rd *r, json_t *o, const char *k)
{
    json_t *v = field(r, o, k, JSON_STRING, "hex string");
    return v ? strtoull(json_string_value(v), NULL, 16) : 0;
}

static int parse_arg(rd *r, json_t *a, ka_arg *out)
{
    memset(out, 0, sizeof *out);
    if (!json_is_array(a) || json_array_size(a) != 2 || !json_is_string(json_array_get(a, 0))) {
        r->bad = 1;
        return kerr_add(r->err, "%s: malformed kernel argument in the manifest", r->path);
    }
    const char *k = json_string_value(json_array_get(a, 0));
    int kind = -1;
    for (int i = 0; i < KA_NARGKINDS; i++)
        if (strcmp(k, arg_names[i]) == 0)
            kind = i;
    if (kind < 0) {
        r->bad = 1;
        return kerr_add(r->err, "%s: unknown argument kind '%s' in the manifest", r->path, k);
    }
    out->kind = (ka_arg_kind)kind;
    json_t *v = json_array_get(a, 1);
    if (kind == KA_ARG_F32)
        out->f = json_number_value(v);
    else
        out->i = json_integer_value(v);
    return 0;
}

static int parse_steps(rd *r, json_t *a, ka_step **out, int *n, const ka_manifest *m)
{
    if (!json_is_array(a)) {
        r->bad = 1;
        return kerr_add(r->err, "%s: manifest schedule is not a list", r->path);
    }
    *n = (int)json_array_size(a);
    *out = xcalloc((size_t)(*n ? *n : 1), sizeof(ka_step));
    for (int i = 0; i < *n && !r->bad; i++) {
        json_t *o = json_array_get(a, i);
        ka_step *s = &(*out)[i];
        if (!json_is_object(o)) {
            r->bad = 1;
            return kerr_add(r->err, "%s: schedule step %d is not an object", r->path, i);
        }
        s->label = get_str(r, o, "label");
        s->size = (ka_size)get_int(r, o, "size");
        s->logits = (ka_logits)get_int(r, o, "logits");
        if (json_object_get(o, "gemm")) {
            s->kind = KA_GEMM;
            parse_arg(r, json_object_get(o, "x"), &s->x);
            parse_arg(r, json_object_get(o, "w"), &s->w);
            parse_arg(r, json_object_get(o, "bias"), &s->bias);
            parse_arg(r, json_object_get(o, "y"), &s->y);
            s->n = get_int(r, o, "n");
            s->k = get_int(r, o, "k");
            s->ldx = get_int(r, o, "ldx");
            s->ldy = get_int(r, o, "ldy");
            s->out_f32 = (int)get_int(r, o, "out_f32");
            s->rows = (ka_rows)get_int(r, o, "rows");
            if (s->w.kind != KA_ARG_WEIGHT || s->w.i < 0 || s->w.i >= m->nweights) {
                r->bad = 1;
                return kerr_add(r->err, "%s: step %d (%s): GEMM weight out of range", r->path, i,
                                s->label);
            }
        } else {
            s->kind = KA_KERNEL;
            s->kernel = (int)get_int(r, o, "kernel");
            if (s->kernel < 0 || s->kernel >= m->nkernels) {
                r->bad = 1;
                return kerr_add(r->err, "%s: step %d (%s): kernel index %d out of range", r->path,
                                i, s->label, s->kernel);
            }
            json_t *g = field(r, o, "grid", JSON_ARRAY, "3 grid rules");
            for (int d = 0; g && d < 3; d++) {
                json_t *gd = json_array_get(g, (size_t)d);
                int *f[5] = {&s->grid[d].t, &s->grid[d].s, &s->grid[d].q, &s->grid[d].add,
                             &s->grid[d].div};
                for (int k = 0; k < 5; k++)
                    *f[k] = (int)json_integer_value(json_array_get(gd, (size_t)k));
                if (s->grid[d].div <= 0) {
                    r->bad = 1;
                    return kerr_add(r->err, "%s: step %d (%s): bad grid divisor", r->path, i,
                                    s->label);
                }
            }
            json_t *args = field(r, o, "args", JSON_ARRAY, "argument list");
            s->nargs = args ? (int)json_array_size(args) : 0;
            if (s->nargs > KA_MAX_ARGS) {
                r->bad = 1;
                return kerr_add(r->err, "%s: step %d: too many arguments", r->path, i);
            }
            for (int k = 0; k < s->nargs; k++)
                parse_arg(r, json_array_get(args, (size_t)k), &s->args[k]);
        }
    }
    return r->bad ? -1 : 0;
}

static int parse_manifest(rd *r, const char *text, size_t len, ka_manifest *m)
{
    json_error_t je;
    json_t *root = json_loadb(text, len, 0, &je);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        return kerr_add(r->err, "%s: the manifest is not valid JSON (%s); the file is corrupt",
                        r->path, je.text);
    }
    m->kilnc_version = get_str(r, root, "kilnc_version");
    json_t *id = field(r, root, "identity", JSON_OBJECT, "object");
    json_t *lim = field(r, root, "limits", JSON_OBJECT, "object");
    if (r->bad)
        goto done;
    m->model_name = get_str(r, id, "model");
    m->arch = get_str(r, id, "architecture");
    m->spec_name = get_str(r, id, "spec");
    m->task = get_str(r, id, "task");
    m->dtype = get_str(r, id, "dtype");
    m->spec_hash = get_hex(r, id, "spec_hash");
    m->config_hash = get_hex(r, id, "config_hash");
    m->layout_hash = get_hex(r, id, "layout_hash");
    m->vocab = (int)get_int(r, lim, "vocab");
    m->hidden = (int)get_int(r, lim, "hidden");
    m->max_tokens = (int)get_int(r, lim, "max_tokens");
    m->max_seqs = (int)get_int(r, lim, "max_seqs");
    m->max_seq_len = (int)get_int(r, lim, "max_seq_len");
    m->gemv_max = (int)get_int(r, lim, "gemv_max");
    m->slab_bytes = get_int(r, lim, "slab_bytes");
    m->scratch_bytes = get_int(r, lim, "scratch_bytes");
    m->output_pool = (int)get_int(r, lim, "output_pool");
    json_t *ly = field(r, root, "kv_layers", JSON_ARRAY, "list");
    if (ly) {
        m->n_layers = (int)json_array_size(ly);
        m->layers = xcalloc((size_t)(m->n_layers ? m->n_layers : 1), sizeof(ka_layer));
        for (int i = 0; i < m->n_layers; i++) {
            json_t *l = json_array_get(ly, (size_t)i);
            m->layers[i].n_kv = (int)json_integer_value(json_array_get(l, 0));
            m->layers[i].head_dim = (int)json_integer_value(json_array_get(l, 1));
            if (m->layers[i].n_kv <= 0 || m->layers[i].head_dim <= 0) {
                r->bad = 1;
                kerr_add(r->err, "%s: kv layer %d has a bad shape", r->path, i);
                goto done;
            }
        }
    }
    json_t *eos = field(r, root, "eos", JSON_ARRAY, "list");
    if (eos) {
        m->n_eos = (int)json_array_size(eos);
        m->eos = xcalloc((size_t)(m->n_eos ? m->n_eos : 1), sizeof(int));
        for (int i = 0; i < m->n_eos; i++)
            m->eos[i] = (int)json_integer_value(json_array_get(eos, (size_t)i));
    }
    m->bos = (int)get_int(r, root, "bos");
    json_t *ks = field(r, root, "kernels", JSON_ARRAY, "list");
    if (ks) {
        m->nkernels = (int)json_array_size(ks);
        m->kernels = xcalloc((size_t)(m->nkernels ? m->nkernels : 1), sizeof(ka_kernel));
        for (int i = 0; i < m->nkernels && !r->bad; i++) {
            json_t *k = json_array_get(ks, (size_t)i);
            m->kernels[i].name = get_str(r, k, "name");
            m->kernels[i].block = (int)get_int(r, k, "block");
            m->kernels[i].smem = (int)get_int(r, k, "smem");
            if (m->kernels[i].block < 1 || m->kernels[i].block > 1024 || m->kernels[i].smem < 0) {
                r->bad = 1;
                kerr_add(r->err, "%s: kernel '%s' has a bad launch shape", r->path,
                         m->kernels[i].name);
            }
        }
    }
    m->sample_kernel = (int)get_int(r, root, "sample_kernel");
    json_t *ws = field(r, root, "weights", JSON_ARRAY, "list");
    if (ws) {
        m->nweights = (int)json_array_size(ws);
        m->weights = xcalloc((size_t)(m->nweights ? m->nweights : 1), sizeof(ka_weight));
        for (int i = 0; i < m->nweights && !r->bad; i++) {
            json_t *w = json_array_get(ws, (size_t)i);
            m->weights[i].name = get_str(r, w, "name");
            m->weights[i].nbytes = get_int(r, w, "nbytes");
            json_t *sh = field(r, w, "shape", JSON_ARRAY, "list");
            m->weights[i].ndim = sh ? (int)json_array_size(sh) : 0;
            if (m->weights[i].ndim > 4) {
                r->bad = 1;
                kerr_add(r->err, "%s: weight '%s' has too many dimensions", r->path,
                         m->weights[i].name);
                break;
            }
            for (int d = 0; d < m->weights[i].ndim; d++)
                m->weights[i].shape[d] = json_integer_value(json_array_get(sh, (size_t)d));
        }
    }
    m->shard = get_str(r, root, "shard");
    m->shard_header_fnv = get_hex(r, root, "shard_header_fnv");
    json_t *cs = field(r, root, "consts", JSON_ARRAY, "list");
    if (cs) {
        m->nconsts = (int)json_array_size(cs);
        m->consts = xcalloc((size_t)(m->nconsts ? m->nconsts : 1), sizeof(ka_const));
        for (int i = 0; i < m->nconsts && !r->bad; i++) {
            json_t *c = json_array_get(cs, (size_t)i);
            m->consts[i].name = get_str(r, c, "name");
            json_t *v = field(r, c, "values", JSON_ARRAY, "list");
            m->consts[i].n = v ? (int)json_array_size(v) : 0;
            m->consts[i].v = xcalloc((size_t)(m->consts[i].n ? m->consts[i].n : 1), sizeof(float));
            for (int k = 0; k < m->consts[i].n; k++)
                m->consts[i].v[k] = (float)json_number_value(json_array_get(v, (size_t)k));
        }
    }
    json_t *bs = field(r, root, "blobs", JSON_ARRAY, "list");
    if (bs) {
        m->nblobs = (int)json_array_size(bs);
        m->blobs = xcalloc((size_t)(m->nblobs ? m->nblobs : 1), sizeof(ka_blob));
        for (int i = 0; i < m->nblobs && !r->bad; i++) {
            json_t *b = json_array_get(bs, (size_t)i);
            m->blobs[i].name = get_str(r, b, "name");
            m->blobs[i].offset = (uint64_t)get_int(r, b, "offset");
            m->blobs[i].len = (uint64_t)get_int(r, b, "len");
            m->blobs[i].fnv = get_hex(r, b, "fnv");
        }
    }
    if (!r->bad)
        parse_steps(r, json_object_get(root, "prefill"), &m->prefill, &m->nprefill, m);
    if (!r->bad)
        parse_steps(r, json_object_get(root, "decode"), &m->decode, &m->ndecode, m);
    if (!r->bad && (m->vocab < 0 || m->hidden <= 0 || m->max_tokens <= 0 || m->max_seqs <= 0 ||
                    m->max_seq_len <= 0 || m->slab_bytes < 0 || m->scratch_bytes < 0)) {
        r->bad = 1;
        kerr_add(r->err, "%s: manifest limits are out of range; rebuild with kilnc compile",
                 r->path);
    }
done:
    json_decref(root);
    return r->bad ? -1 : 0;
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
    rd r = {path, err, 0};
    const unsigned char *p = f->data;
    if (len < 32 || memcmp(p, KA_MAGIC, 8) != 0) {
        kerr_add(err, "%s: not a kiln artifact (bad magic%s); compile one with kilnc compile",
                 path, len < 32 ? ", file too short" : "");
        goto fail;
    }
    int version = p[8] | p[9] << 8;
    if (version != KA_VERSION) {
        kerr_add(err,
                 "%s: artifact format version %d, this kiln reads version %d; rebuild it with "
                 "this release's kilnc compile",
                 path, version, KA_VERSION);
        goto fail;
    }
    uint64_t moff = get64(p + 16), mlen = get64(p + 24);
    if (moff > len || mlen > len - moff || mlen == 0) {
        kerr_add(err, "%s: manifest at %llu+%llu is outside the file (%zu bytes): the file is "
                      "truncated",
                 path, (unsigned long long)moff, (unsigned long long)mlen, len);
        goto fail;
    }
    if (parse_manifest(&r, data + moff, mlen, &f->m))
        goto fail;
    for (int i = 0; i < f->m.nblobs; i++) {
        const ka_blob *b = &f->m.blobs[i];
        if (b->offset > moff || b->len > moff - b->offset) {
            kerr_add(err, "%s: section '%s' is outside the file: truncated or corrupt", path,
                     b->name);
            goto fail;
        }
        if (util_fnv1a(p + b->offset, b->len, UTIL_FNV_SEED) != b->fnv) {
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

static void free_steps(ka_step *s, int n)
{
    for (int i = 0; i < n; i++)
        free(s[i].label);
    free(s);
}

void ka_manifest_free(ka_manifest *m)
{
    free(m->model_name);
    free(m->arch);
    free(m->spec_name);
    free(m->task);
    free(m->dtype);
    free(m->kilnc_version);
    free(m->layers);
    free(m->eos);
    for (int i = 0; i < m->nkernels; i++)
        free(m->kernels[i].name);
    free(m->kernels);
    free_steps(m->prefill, m->nprefill);
    free_steps(m->decode, m->ndecode);
    for (int i = 0; i < m->nweights; i++)
        free(m->weights[i].name);
    free(m->weights);
    free(m->shard);
    for (int i = 0; i < m->nconsts; i++) {
        free(m->consts[i].name);
        free(m->consts[i].v);
    }
    free(m->consts);
    for (int i = 0; i < m->nblobs; i++)
        free(m->blobs[i].name);
    free(m->blobs);
    memset(m, 0, sizeof *m);
}

void ka_file_free(ka_file *f)
{
    if (!f)
        return;
    ka_manifest_free(&f->m);
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
