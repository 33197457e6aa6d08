/* config — see config.h. */
#include "config.h"

#include <assert.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static config *wrap(json_t *root, const char *path, kerr *err)
{
    if (!json_is_object(root)) {
        kerr_add(err, "%s: expected a JSON object at the top level, got %s", path,
                 config_kind(root));
        json_decref(root);
        return NULL;
    }
    config *c = xcalloc(1, sizeof *c);
    c->path = xstrdup(path);
    c->root = root;
    return c;
}

config *config_load(const char *path, kerr *err)
{
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        if (je.line < 0 || !util_is_file(path))
            kerr_add(err, "%s: cannot read: %s", path, je.text);
        else
            kerr_add(err, "%s:%d:%d: not valid JSON: %s", path, je.line, je.column, je.text);
        return NULL;
    }
    return wrap(root, path, err);
}

config *config_parse(const char *text, const char *path, kerr *err)
{
    json_error_t je;
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        kerr_add(err, "%s:%d:%d: not valid JSON: %s", path, je.line, je.column, je.text);
        return NULL;
    }
    return wrap(root, path, err);
}

void config_free(config *c)
{
    if (!c)
        return;
    json_decref(c->root);
    free(c->path);
    free(c);
}

const char *config_kind(const json_t *v)
{
    switch (v ? json_typeof(v) : JSON_NULL) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

static json_t *lookup(json_t *obj, const char *field)
{
    char key[256];
    const char *p = field;
    while (obj) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        if (n >= sizeof key || !json_is_object(obj))
            return NULL;
        memcpy(key, p, n);
        key[n] = 0;
        obj = json_object_get(obj, key);
        if (!dot)
            break;
        p = dot + 1;
    }
    return json_is_null(obj) ? NULL : obj;
}

json_t *config_get(const config *c, const char *field) { return lookup(c->root, field); }
int config_has(const config *c, const char *field) { return config_get(c, field) != NULL; }

/* Shared shape of every typed read: absent -> default or error; wrong type -> error. */
static int missing(const config *c, const char *field, const char *want, kerr *err)
{
    return kerr_add(err, "%s: field '%s' is missing (expected %s)", c->path, field, want);
}

static int wrong(const config *c, const char *field, const char *want, const json_t *v, kerr *err)
{
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    kerr_add(err, "%s: field '%s': expected %s, got %s %s", c->path, field, want, config_kind(v),
             s ? s : "");
    free(s);
    return -1;
}

int config_int(const config *c, const char *field, int has_def, int64_t def, int64_t *out,
               kerr *err)
{
    json_t *v = config_get(c, field);
    if (!v) {
        if (!has_def)
            return missing(c, field, "an integer", err);
        *out = def;
        return 0;
    }
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return 0;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d == floor(d) && fabs(d) < 9e15) {
            *out = (int64_t)d;
            return 0;
        }
    }
    return wrong(c, field, "an integer", v, err);
}

/* X(field, max): fields that size a model; each must be at least 1. The bounds are far above
 * any real model and low enough that the tensors they size stay addressable. */
#define SIZE_FIELDS(X)                                                                         \
    X("num_hidden_layers", 10000) X("n_layer", 10000) X("num_layers", 10000)                  \
    X("hidden_size", 1 << 20) X("n_embed", 1 << 20) X("n_embd", 1 << 20)                       \
    X("intermediate_size", 1 << 22)                                                           \
    X("num_attention_heads", 1 << 14) X("n_head", 1 << 14)                                     \
    X("num_key_value_heads", 1 << 14) X("head_dim", 1 << 14) X("kv_channels", 1 << 14)         \
    X("vocab_size", 1 << 24) X("max_position_embeddings", INT32_MAX)                          \
    X("num_local_experts", 1 << 14) X("num_experts_per_tok", 1 << 14)

static const struct {
    const char *name;
    int64_t max;
} size_fields[] = {
#define X(f, m) {f, m},
    SIZE_FIELDS(X)
#undef X
};

void config_int_range(const char *field, int64_t *min, int64_t *max)
{
    const char *dot = strrchr(field, '.');
    const char *last = dot ? dot + 1 : field;
    *min = 1;
    *max = INT32_MAX;
    for (size_t i = 0; i < ARRAY_LEN(size_fields); i++)
        if (strcmp(last, size_fields[i].name) == 0)
            *max = size_fields[i].max;
}

static const char *range_str(int64_t min, int64_t max, char *buf, size_t cap)
{
    if (max == INT64_MAX)
        snprintf(buf, cap, "at least %lld", (long long)min);
    else if (min == INT64_MIN)
        snprintf(buf, cap, "at most %lld", (long long)max);
    else
        snprintf(buf, cap, "%lld to %lld", (long long)min, (long long)max);
    return buf;
}

int config_int_in(const config *c, const char *field, int has_def, int64_t def, int64_t min,
                  int64_t max, int64_t *out, kerr *err)
{
    int64_t v;
    if (config_int(c, field, has_def, def, &v, err))
        return -1;
    if (v >= min && v <= max) {
        *out = v;
        return 0;
    }
    char r[64];
    if (!config_has(c, field))
        return kerr_add(err, "%s: field '%s' is absent, and its default, %lld, is out of range "
                             "(expected %s)",
                        c->path, field, (long long)v, range_str(min, max, r, sizeof r));
    return kerr_add(err, "%s: field '%s' is %lld; expected %s", c->path, field, (long long)v,
                    range_str(min, max, r, sizeof r));
}

/* Whether `field` holds a number (its type is checked where a spec reads it, with the line). */
static int is_num(const config *c, const char *field) { return json_is_number(config_get(c, field)); }

int config_check_sizes(const config *c, kerr *err)
{
    int rc = 0;
    static const char *scopes[] = {"", "text_config."};
    for (size_t s = 0; s < ARRAY_LEN(scopes); s++)
        for (size_t i = 0; i < ARRAY_LEN(size_fields); i++) {
            char f[128];
            snprintf(f, sizeof f, "%s%s", scopes[s], size_fields[i].name);
            int64_t v, min, max;
            config_int_range(f, &min, &max);
            if (is_num(c, f) && config_int_in(c, f, 0, 0, min, max, &v, err))
                rc = -1;
        }
    /* grouped-query attention: each key/value head serves a whole group of query heads */
    for (size_t s = 0; s < ARRAY_LEN(scopes) && rc == 0; s++) {
        char hf[64], kf[64];
        snprintf(hf, sizeof hf, "%snum_attention_heads", scopes[s]);
        snprintf(kf, sizeof kf, "%snum_key_value_heads", scopes[s]);
        int64_t h, k;
        if (is_num(c, hf) && is_num(c, kf) && config_int(c, hf, 0, 0, &h, err) == 0 &&
            config_int(c, kf, 0, 0, &k, err) == 0 && h % k != 0)
            rc = kerr_add(err, "%s: field '%s' (%lld) is not divisible by field '%s' (%lld): "
                               "each key/value head serves a whole group of query heads",
                          c->path, hf, (long long)h, kf, (long long)k);
    }
    return rc;
}

int config_float(const config *c, const char *field, int has_def, double def, double *out,
                 kerr *err)
{
    json_t *v = config_get(c, field);
    if (!v) {
        if (!has_def)
            return missing(c, field, "a number", err);
        *out = def;
        return 0;
    }
    if (json_is_number(v)) {
        *out = json_number_value(v);
        return 0;
    }
    return wrong(c, field, "a number", v, err);
}

int config_bool(const config *c, const char *field, int has_def, int def, int *out, kerr *err)
{
    json_t *v = config_get(c, field);
    if (!v) {
        if (!has_def)
            return missing(c, field, "true or false", err);
        *out = def;
        return 0;
    }
    if (json_is_boolean(v)) {
        *out = json_is_true(v);
        return 0;
    }
    return wrong(c, field, "true or false", v, err);
}

int config_string(const config *c, const char *field, int has_def, const char *def,
                  const char **out, kerr *err)
{
    json_t *v = config_get(c, field);
    if (!v) {
        if (!has_def)
            return missing(c, field, "a string", err);
        *out = def;
        return 0;
    }
    if (json_is_string(v)) {
        *out = json_string_value(v);
        return 0;
    }
    return wrong(c, field, "a string", v, err);
}

int config_architecture(const config *c, const char **out, kerr *err)
{
    json_t *a = config_get(c, "architectures");
    if (!a)
        return kerr_add(err,
                        "%s: field 'architectures' is missing: kiln picks the archspec from it "
                        "(e.g. [\"LlamaForCausalLM\"]); add it, or name a spec with --spec FILE",
                        c->path);
    if (!json_is_array(a) || json_array_size(a) == 0 || !json_is_string(json_array_get(a, 0)))
        return wrong(c, "architectures", "a non-empty array of strings", a, err);
    *out = json_string_value(json_array_get(a, 0));
    return 0;
}

int config_labels(const config *c, int n, char ***out, kerr *err)
{
    assert(n >= 1);
    json_t *m = config_get(c, "id2label");
    char **l = xcalloc((size_t)n, sizeof(char *));
    *out = NULL;
    if (m && (!json_is_object(m) || (int)json_object_size(m) != n)) {
        config_labels_free(l, n);
        if (!json_is_object(m))
            return wrong(c, "id2label", "an object {\"0\": name, ...}", m, err);
        return kerr_add(err, "%s: id2label names %zu labels, but the score head has %d: "
                             "make them agree (num_labels is len(id2label) in transformers)",
                        c->path, json_object_size(m), n);
    }
    for (int i = 0; i < n; i++) {
        char key[16];
        snprintf(key, sizeof key, "%d", i);
        json_t *v = m ? json_object_get(m, key) : NULL;
        if (m && (!v || !json_is_string(v) || strlen(json_string_value(v)) > CONFIG_MAX_LABEL)) {
            config_labels_free(l, n);
            return kerr_add(err, "%s: id2label[\"%s\"] should be a name of at most %d bytes, "
                                 "got %s",
                            c->path, key, CONFIG_MAX_LABEL,
                            !v ? "nothing" : json_is_string(v) ? "a longer string"
                                                                : config_kind(v));
        }
        l[i] = v ? xstrdup(json_string_value(v)) : xasprintf("LABEL_%d", i);
    }
    *out = l;
    return 0;
}

void config_labels_free(char **labels, int n)
{
    for (int i = 0; labels && i < n; i++)
        free(labels[i]);
    free(labels);
}

/* ---------------------------------------------------------------- rope */

static const char *rope_names[] = {
#define X(e, s) s,
    ROPE_TYPES(X)
#undef X
};
_Static_assert(ARRAY_LEN(rope_names) == ROPE_NTYPES, "rope name table out of sync");

const char *rope_type_name(rope_type t) { return (unsigned)t < ROPE_NTYPES ? rope_names[t] : "?"; }

/* A float field of the rope object `r` (named `where` in messages). */
static int rope_num(const config *c, json_t *r, const char *where, const char *key, int has_def,
                    double def, double *out, kerr *err)
{
    json_t *v = r ? json_object_get(r, key) : NULL;
    if (!v || json_is_null(v)) {
        if (!has_def)
            return kerr_add(err, "%s: field '%s.%s' is missing (expected a number; required by "
                                 "this rope type)",
                            c->path, where, key);
        *out = def;
        return 0;
    }
    if (!json_is_number(v)) {
        char *s = xasprintf("%s.%s", where, key);
        wrong(c, s, "a number", v, err);
        free(s);
        return -1;
    }
    *out = json_number_value(v);
    return 0;
}

/* One of longrope's factor tables: an array of 1..ROPE_MAX_FACTORS positive numbers, stored as
 * float32 (transformers makes a float32 tensor of it). */
static int rope_factors(const config *c, json_t *r, const char *where, const char *key,
                        float *out, int *n, kerr *err)
{
    json_t *a = r ? json_object_get(r, key) : NULL;
    if (!a || json_is_null(a))
        return kerr_add(err, "%s: field '%s.%s' is missing (longrope needs short_factor and "
                             "long_factor, one number per rotary pair)",
                        c->path, where, key);
    size_t len = json_is_array(a) ? json_array_size(a) : 0;
    if (!json_is_array(a) || len < 1 || len > ROPE_MAX_FACTORS) {
        char *s = xasprintf("%s.%s", where, key);
        char *want = xasprintf("an array of 1 to %d numbers (kiln's limit: rotary dimensions up "
                               "to %d)", ROPE_MAX_FACTORS, 2 * ROPE_MAX_FACTORS);
        if (json_is_array(a))
            kerr_add(err, "%s: field '%s' has %zu entries; expected %s", c->path, s, len, want);
        else
            wrong(c, s, want, a, err);
        free(s);
        free(want);
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        json_t *v = json_array_get(a, i);
        double d = json_is_number(v) ? json_number_value(v) : 0;
        if (!json_is_number(v) || !(d > 0) || !isfinite(d) || (float)d > 3.0e38f)
            return kerr_add(err, "%s: field '%s.%s[%zu]' is %s; expected a positive number",
                            c->path, where, key, i, json_is_number(v) ? "not positive" : config_kind(v));
        out[i] = (float)d;
    }
    *n = (int)len;
    return 0;
}

/* _compute_longrope_parameters: original_max_position_embeddings as yarn reads it (the
 * top-level field first, Phi-3 style), factor = max_position_embeddings / that unless given,
 * attention_factor = sqrt(1 + log(factor) / log(original)) unless given (1 when factor <= 1). */
static int rope_longrope(const config *c, json_t *r, const char *where, int64_t maxpos,
                         rope_params *out, kerr *err)
{
    double d;
    if (config_has(c, "original_max_position_embeddings")) {
        int64_t o;
        if (config_int(c, "original_max_position_embeddings", 0, 0, &o, err))
            return -1;
        d = (double)o;
    } else if (rope_num(c, r, where, "original_max_position_embeddings", 1, (double)maxpos, &d,
                        err)) {
        return -1;
    }
    if (!(d >= 1 && d <= (double)INT32_MAX))
        return kerr_add(err, "%s: longrope needs original_max_position_embeddings between 1 and "
                             "%d, got %g",
                        c->path, INT32_MAX, d);
    out->original_max_pos = (int64_t)d;
    json_t *fv = r ? json_object_get(r, "factor") : NULL;
    if (!fv || json_is_null(fv))
        out->factor = (double)maxpos / d;
    else if (rope_num(c, r, where, "factor", 0, 0, &out->factor, err))
        return -1;
    json_t *af = r ? json_object_get(r, "attention_factor") : NULL;
    if (af && !json_is_null(af)) {
        if (rope_num(c, r, where, "attention_factor", 0, 1, &out->attention_factor, err))
            return -1;
        if (!(out->attention_factor > 0))
            return kerr_add(err, "%s: field '%s.attention_factor' is %g; expected a positive "
                                 "number",
                            c->path, where, out->attention_factor);
    } else if (out->factor > 1) {
        out->attention_factor = sqrt(1 + log(out->factor) / log(d));
    }
    out->long_attention_factor = out->attention_factor;
    int ns = 0, nl = 0;
    if (rope_factors(c, r, where, "short_factor", out->short_factor, &ns, err) ||
        rope_factors(c, r, where, "long_factor", out->long_factor, &nl, err))
        return -1;
    if (ns != nl)
        return kerr_add(err, "%s: '%s.short_factor' has %d entries and 'long_factor' %d; "
                             "expected one per rotary pair in both",
                        c->path, where, ns, nl);
    out->n_factors = ns;
    return 0;
}

int config_rope(const config *c, const char *layer_type, const char *theta_field,
                double default_theta, rope_params *out, kerr *err)
{
    memset(out, 0, sizeof *out);
    char wbuf[160];
    const char *where = "rope_parameters";
    json_t *r = config_get(c, "rope_parameters");
    /* transformers: `rope_parameters = rope_scaling or rope_parameters` — a non-empty
     * rope_scaling wins when a file has both */
    json_t *rs = config_get(c, "rope_scaling");
    if (rs && json_is_object(rs) && json_object_size(rs) > 0) {
        r = rs;
        where = "rope_scaling";
    } else if (r && layer_type && json_is_object(r) && json_object_get(r, layer_type)) {
        r = json_object_get(r, layer_type);
        snprintf(wbuf, sizeof wbuf, "rope_parameters.%s", layer_type);
        where = wbuf;
    } else if (r && json_is_object(r) && json_object_size(r) > 0) {
        /* Keyed per layer type (every member an object) but no entry picked: reading it as
         * flat would silently give the default base to every layer. */
        char keys[256];
        size_t kn = 0;
        const char *k;
        json_t *v;
        int keyed = 1;
        keys[0] = 0;
        json_object_foreach(r, k, v)
        {
            if (!json_is_object(v)) {
                keyed = 0;
                break;
            }
            if (kn < sizeof keys)
                kn += (size_t)snprintf(keys + kn, sizeof keys - kn, "%s%s", kn ? ", " : "", k);
        }
        if (keyed) {
            if (layer_type)
                return kerr_add(err, "%s: field 'rope_parameters' is keyed by layer type (%s) "
                                     "and has no entry for layer type '%s'",
                                c->path, keys, layer_type);
            return kerr_add(err, "%s: field 'rope_parameters' is keyed by layer type (%s); the "
                                 "archspec must ask for one: cfg:rope{layer_type=\"...\"}",
                            c->path, keys);
        }
    }
    if (!r) {
        r = config_get(c, "rope_scaling");
        where = "rope_scaling";
    }
    if (r && !json_is_object(r))
        return wrong(c, where, "an object", r, err);

    /* Type: "rope_type", or the older "type"; absent means default. */
    const char *tname = "default";
    json_t *tv = r ? json_object_get(r, "rope_type") : NULL;
    if (!tv || json_is_null(tv))
        tv = r ? json_object_get(r, "type") : NULL;
    if (tv && !json_is_null(tv)) {
        if (!json_is_string(tv)) {
            char *s = xasprintf("%s.rope_type", where);
            wrong(c, s, "a string", tv, err);
            free(s);
            return -1;
        }
        tname = json_string_value(tv);
    }
    int t = -1;
    for (int i = 0; i < ROPE_NTYPES; i++)
        if (strcmp(tname, rope_names[i]) == 0)
            t = i;
    if (t < 0)
        return kerr_add(err,
                        "%s: field '%s.rope_type' is '%s', which kiln does not implement "
                        "(supported: default, linear, dynamic, yarn, llama3, longrope)",
                        c->path, where, tname);
    out->type = (rope_type)t;

    /* Base: inside the rope object first (transformers 5), then the top-level field. */
    double theta = 0;
    int have_theta = 0;
    json_t *thv = r ? json_object_get(r, "rope_theta") : NULL;
    if (thv && !json_is_null(thv)) {
        if (rope_num(c, r, where, "rope_theta", 0, 0, &theta, err))
            return -1;
        have_theta = 1;
    }
    if (!have_theta) {
        const char *f = theta_field ? theta_field : "rope_theta";
        if (config_float(c, f, 1, default_theta, &theta, err))
            return -1;
    }
    if (!(theta > 1))
        return kerr_add(err, "%s: rope base (rope_theta) is %g; expected a number > 1", c->path,
                        theta);
    out->theta = theta;

    double partial = 1;
    json_t *pv = r ? json_object_get(r, "partial_rotary_factor") : NULL;
    if (pv && !json_is_null(pv)) {
        if (rope_num(c, r, where, "partial_rotary_factor", 0, 1, &partial, err))
            return -1;
    } else if (config_float(c, "partial_rotary_factor", 1, 1.0, &partial, err)) {
        return -1;
    }
    if (!(partial > 0 && partial <= 1))
        return kerr_add(err, "%s: partial_rotary_factor is %g; expected 0 < x <= 1", c->path,
                        partial);
    out->partial = partial;

    int64_t maxpos;
    if (config_int(c, "max_position_embeddings", 1, 0, &maxpos, err))
        return -1;
    out->max_pos = maxpos;
    out->attention_factor = 1;

    double d;
    switch (out->type) {
    case ROPE_DEFAULT:
        break;
    case ROPE_LINEAR:
    case ROPE_DYNAMIC:
        if (rope_num(c, r, where, "factor", 0, 0, &out->factor, err))
            return -1;
        if (out->type == ROPE_DYNAMIC && maxpos <= 0)
            return kerr_add(err, "%s: dynamic rope needs 'max_position_embeddings'", c->path);
        break;
    case ROPE_LLAMA3:
        if (rope_num(c, r, where, "factor", 0, 0, &out->factor, err) ||
            rope_num(c, r, where, "low_freq_factor", 0, 0, &out->low_freq_factor, err) ||
            rope_num(c, r, where, "high_freq_factor", 0, 0, &out->high_freq_factor, err) ||
            rope_num(c, r, where, "original_max_position_embeddings", 1, (double)maxpos, &d, err))
            return -1;
        out->original_max_pos = (int64_t)d;
        if (out->high_freq_factor == out->low_freq_factor)
            return kerr_add(err, "%s: llama3 rope needs high_freq_factor != low_freq_factor",
                            c->path);
        break;
    case ROPE_YARN: {
        /* transformers: original_max_position_embeddings from the top-level field when present
         * (Phi-3 style), else from the rope object, else max_position_embeddings. */
        if (config_has(c, "original_max_position_embeddings")) {
            int64_t o;
            if (config_int(c, "original_max_position_embeddings", 0, 0, &o, err))
                return -1;
            d = (double)o;
        } else if (rope_num(c, r, where, "original_max_position_embeddings", 1, (double)maxpos,
                            &d, err)) {
            return -1;
        }
        out->original_max_pos = (int64_t)d;
        if (out->original_max_pos <= 0)
            return kerr_add(err, "%s: yarn rope needs original_max_position_embeddings", c->path);
        json_t *fv = r ? json_object_get(r, "factor") : NULL;
        if (!fv || json_is_null(fv))
            out->factor = (double)maxpos / (double)out->original_max_pos;
        else if (rope_num(c, r, where, "factor", 0, 0, &out->factor, err))
            return -1;
        double bf, bs, mscale, mall;
        if (rope_num(c, r, where, "beta_fast", 1, 32, &bf, err) ||
            rope_num(c, r, where, "beta_slow", 1, 1, &bs, err) ||
            rope_num(c, r, where, "mscale", 1, 0, &mscale, err) ||
            rope_num(c, r, where, "mscale_all_dim", 1, 0, &mall, err))
            return -1;
        /* transformers uses `x or default`, so an explicit 0 also means the default. */
        out->beta_fast = bf ? bf : 32;
        out->beta_slow = bs ? bs : 1;
        json_t *tr = r ? json_object_get(r, "truncate") : NULL;
        out->truncate = tr && json_is_boolean(tr) ? json_is_true(tr) : 1;
        json_t *af = r ? json_object_get(r, "attention_factor") : NULL;
        if (af && !json_is_null(af)) {
            if (rope_num(c, r, where, "attention_factor", 0, 1, &out->attention_factor, err))
                return -1;
        } else {
            double f = out->factor;
#define MSCALE(scale, m) ((scale) <= 1 ? 1.0 : 0.1 * (m) * log(scale) + 1.0)
            if (mscale != 0 && mall != 0)
                out->attention_factor = MSCALE(f, mscale) / MSCALE(f, mall);
            else
                out->attention_factor = MSCALE(f, 1.0);
#undef MSCALE
        }
        break;
    }
    case ROPE_LONGROPE:
        if (rope_longrope(c, r, where, maxpos, out, err))
            return -1;
        break;
    default:
        break;
    }
    if (out->type != ROPE_DEFAULT && !(out->factor > 0))
        return kerr_add(err, "%s: rope '%s' needs a positive 'factor', got %g", c->path, tname,
                        out->factor);
    return 0;
}
