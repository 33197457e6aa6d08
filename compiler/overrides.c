/* overrides — see overrides.h. */
#include "overrides.h"

#include <assert.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "graph.h"
#include "passes/passes.h"

#define OVR_MAX_DEPTH 16 /* components of a dotted key */
#define OVR_MAX_KEY 255  /* bytes of one component (config.c's lookup buffer) */

static char *dupn(const char *s, size_t n)
{
    char *r = xmalloc(n + 1);
    memcpy(r, s, n);
    r[n] = 0;
    return r;
}

void ovr_init(ovr_set *o)
{
    memset(o, 0, sizeof *o);
    o->pooling = -1;
    o->normalize = -1;
}

int ovr_flag(ovr_set *o, const char *flag, const char *val, kerr *err)
{
    if (strcmp(flag, "--config") == 0) {
        if (o->config)
            return kerr_add(err, "--config is given twice ('%s', then '%s')", o->config, val);
        o->config = val;
        return 1;
    }
    if (strcmp(flag, "--override") == 0 || strcmp(flag, "--override-new") == 0) {
        if (o->n == OVR_MAX)
            return kerr_add(err, "%s: at most %d overrides", flag, OVR_MAX);
        const char *eq = strchr(val, '=');
        if (!eq || eq == val)
            return kerr_add(err, "%s '%s': expected KEY=VALUE (e.g. rope_scaling.factor=8)", flag,
                            val);
        if (strlen(val) > OVR_MAX_LINE / 2)
            return kerr_add(err, "%s: '%.40s...' is %zu bytes; at most %d", flag, val,
                            strlen(val), OVR_MAX_LINE / 2);
        o->is_new[o->n] = strcmp(flag, "--override-new") == 0;
        o->kv[o->n++] = val;
        return 1;
    }
    if (strcmp(flag, "--pooling") == 0) {
        static const char *modes[] = {"mean", "cls", "last"};
        _Static_assert(KILN_POOL_MEAN == 0 && KILN_POOL_CLS == 1 && KILN_POOL_LAST == 2, "pool modes");
        for (int i = 0; i < 3; i++)
            if (strcmp(val, modes[i]) == 0) {
                o->pooling = i;
                return 1;
            }
        return kerr_add(err, "--pooling: '%s' is not a pooling (expected mean, cls or last)", val);
    }
    if (strcmp(flag, "--normalize") == 0) {
        if (strcmp(val, "yes") && strcmp(val, "no"))
            return kerr_add(err, "--normalize: '%s' (expected yes or no)", val);
        o->normalize = strcmp(val, "yes") == 0;
        return 1;
    }
    if (strcmp(flag, "--generation-config") == 0) {
        if (strcmp(val, "none"))
            return kerr_add(err, "--generation-config: '%s' (expected none: the only choice is to "
                                 "ignore MODEL_DIR/generation_config.json)",
                            val);
        o->no_generation_config = 1;
        return 1;
    }
    return 0;
}

/* JSON types for the type check: integer and real are one type, true and false another. */
static int kind_of(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_INTEGER:
    case JSON_REAL: return JSON_REAL;
    case JSON_TRUE:
    case JSON_FALSE: return JSON_TRUE;
    default: return (int)json_typeof(v);
    }
}

/* The top-level key of `root` nearest to `key` (edit distance), or NULL for an empty object. */
static const char *nearest(json_t *root, const char *key)
{
    const char *best = NULL, *k;
    int bd = 0;
    json_t *v;
    json_object_foreach(root, k, v)
    {
        int lim = best ? bd - 1 : (int)(strlen(key) + strlen(k));
        int d = edit_distance(key, k, lim);
        if (!best || d < bd) {
            best = k;
            bd = d;
        }
    }
    return best;
}

/* Cuts s to at most max bytes (max >= 4), ending in "...", without splitting a UTF-8 sequence. */
static void cut(char *s, size_t max)
{
    size_t n = strlen(s);
    if (n <= max)
        return;
    n = max - 3;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    strcpy(s + n, "...");
}

static char *dump(const json_t *v)
{
    char *s = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(12)) : NULL;
    return s ? s : xstrdup(v ? "?" : "absent");
}

/* Applies one KEY=VALUE. */
static int apply_one(config *c, const char *kv, int is_new, char **line, kerr *err)
{
    const char *flag = is_new ? "--override-new" : "--override";
    const char *eq = strchr(kv, '=');
    assert(eq && eq > kv); /* ovr_flag */
    char *key = dupn(kv, (size_t)(eq - kv));
    const char *text = eq + 1;
    json_error_t je;
    json_t *nv = json_loads(text, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
    int rc = -1;
    char *parts[OVR_MAX_DEPTH];
    int np = 0;
    char *old = NULL, *new = NULL;
    if (!nv) {
        kerr_add(err, "%s %s: value '%s' is not JSON (%s); a string needs quotes: %s='\"%s\"'",
                 flag, key, text, je.text, key, text);
        goto done;
    }
    for (const char *p = key; *p; p++)
        if (*p <= ' ' || *p > '~') {
            kerr_add(err, "%s: the key '%s' has a space or a byte outside printable ASCII "
                          "(config.json's keys are names such as rope_scaling.factor)",
                     flag, key);
            goto done;
        }
    for (char *p = key;; p++) {
        size_t n = strcspn(p, ".");
        if (n == 0 || n > OVR_MAX_KEY) {
            kerr_add(err, "%s %s: empty or over-long key component (expected KEY or A.B.C)", flag,
                     key);
            goto done;
        }
        if (np == OVR_MAX_DEPTH) {
            kerr_add(err, "%s %s: more than %d components", flag, key, OVR_MAX_DEPTH);
            goto done;
        }
        parts[np++] = dupn(p, n);
        p += n;
        if (!*p)
            break;
    }
    json_t *obj = c->root;
    json_t *top = json_object_get(obj, parts[0]);
    if (!top && !is_new) {
        const char *near = nearest(obj, parts[0]);
        kerr_add(err, "--override %s: %s has no field '%s'%s%s%s; to add a new one, use "
                      "--override-new %s",
                 key, c->path, parts[0], near ? " (nearest: '" : "", near ? near : "",
                 near ? "')" : "", kv);
        goto done;
    }
    if (top && is_new) {
        kerr_add(err, "--override-new %s: %s already has field '%s'; use --override", key,
                 c->path, parts[0]);
        goto done;
    }
    /* walk to the parent, creating objects where a level is absent or null */
    for (int i = 0; i + 1 < np; i++) {
        json_t *next = json_object_get(obj, parts[i]);
        if (!next || json_is_null(next)) {
            next = json_object();
            json_object_set_new(obj, parts[i], next);
        } else if (!json_is_object(next)) {
            char *s = dump(next);
            kerr_add(err, "%s %s: %s: field '%s' is %s (%s), not an object, so it has no "
                          "field '%s'",
                     flag, key, c->path, parts[i], config_kind(next), s, parts[i + 1]);
            free(s);
            goto done;
        }
        obj = next;
    }
    json_t *cur = json_object_get(obj, parts[np - 1]);
    if (cur && !json_is_null(cur) && !json_is_null(nv) && kind_of(cur) != kind_of(nv)) {
        char *s = dump(cur);
        kerr_add(err, "%s %s: %s: field '%s' is %s (%s); the override gives %s (%s): give %s, or "
                      "null to remove the field",
                 flag, key, c->path, key, config_kind(cur), s, config_kind(nv), text,
                 config_kind(cur));
        free(s);
        goto done;
    }
    old = dump(cur);
    new = dump(nv);
    cut(old, 1000); /* a replaced object may be large (add_line bounds the whole line) */
    *line = xasprintf("%s %s=%s (was %s)", flag, key, new, old);
    json_object_set(obj, parts[np - 1], nv);
    rc = 0;
done:
    for (int i = 0; i < np; i++)
        free(parts[i]);
    free(old);
    free(new);
    free(key);
    json_decref(nv);
    return rc;
}

_Static_assert(OVR_MAX_LINE == KA_MAX_OVERRIDE_LEN, "a line must fit the manifest's bound");

/* See overrides.h. Lines go into the manifest as JSON strings of at most OVR_MAX_LINE bytes,
 * valid UTF-8 (a path from the command line need not be: its bytes above 0x7f become '?'). */
void ovr_add_line(char ***lines, int *nlines, char *line)
{
    json_t *t = json_string(line);
    for (char *p = line; !t && *p; p++)
        if ((unsigned char)*p > 0x7f)
            *p = '?';
    json_decref(t);
    cut(line, OVR_MAX_LINE);
    *lines = xrealloc(*lines, sizeof(char *) * (size_t)(*nlines + 1));
    (*lines)[(*nlines)++] = line;
}

int ovr_apply(config *c, const ovr_set *o, char ***lines, int *nlines, kerr *err)
{
    for (int i = 0; i < o->n; i++) {
        char *line = NULL;
        if (apply_one(c, o->kv[i], o->is_new[i], &line, err))
            return -1;
        ovr_add_line(lines, nlines, line);
    }
    return 0;
}

int ovr_pool(kgraph *g, const char *spec_path, const ovr_set *o, char ***lines, int *nlines,
             kerr *err)
{
    static const char *modes[] = {"mean", "cls", "last"};
    if (o->pooling < 0 && o->normalize < 0)
        return 0;
    kg_node *out = g->output >= 0 ? &g->nodes[g->output] : NULL;
    if (!out || out->op != KG_POOL)
        return kerr_add(err, "%s: only embedding models pool, and %s builds no pooled output "
                             "(g:pool)",
                        o->pooling >= 0 ? "--pooling" : "--normalize", spec_path);
    assert(out->pool_mode >= 0 && out->pool_mode < 3);
    if (o->pooling >= 0) {
        ovr_add_line(lines, nlines,
                     xasprintf("--pooling %s (was %s)", modes[o->pooling], modes[out->pool_mode]));
        out->pool_mode = o->pooling;
    }
    if (o->normalize >= 0) {
        ovr_add_line(lines, nlines,
                     xasprintf("--normalize %s (was %s)", o->normalize ? "yes" : "no",
                               out->pool_normalize ? "yes" : "no"));
        out->pool_normalize = o->normalize;
    }
    return 0;
}

/* eos ids from field eos_token_id of `src`: an integer or a list of integers, each a token id.
 * Returns 1 when the field is there, 0 when absent (or null, or []), -1 on error. */
static int read_eos(const config *src, ka_manifest *m, kerr *err)
{
    json_t *e = config_get(src, "eos_token_id");
    if (!e)
        return 0;
    size_t n = json_is_array(e) ? json_array_size(e) : 1;
    if (n == 0) /* [] says nothing: the next file may */
        return 0;
    if (!json_is_integer(e) && !json_is_array(e))
        return kerr_add(err, "%s: field 'eos_token_id': expected a token id or a list of them, "
                             "got %s",
                        src->path, config_kind(e));
    if (n > KA_MAX_EOS)
        return kerr_add(err, "%s: field 'eos_token_id' lists %zu ids; at most %d", src->path, n,
                        KA_MAX_EOS);
    int *ids = xcalloc(n ? n : 1, sizeof(int));
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_is_array(e) ? json_array_get(e, i) : e;
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) >= m->vocab) {
            char *s = dump(v);
            kerr_add(err, "%s: field 'eos_token_id'%s: %s is not a token id (expected an integer "
                          "from 0 to %d, the vocabulary's last)",
                     src->path, json_is_array(e) ? " (an entry)" : "", s, m->vocab - 1);
            free(s);
            free(ids);
            return -1;
        }
        ids[i] = (int)json_integer_value(v);
    }
    free(m->eos);
    m->eos = ids;
    m->n_eos = (int)n;
    return 1;
}

/* An optional number field of generation_config.json in [lo, hi] (above lo when lo_open). */
static int gen_num(const config *g, const char *f, double lo, int lo_open, double hi, int *has,
                   double *out, kerr *err)
{
    *has = 0;
    if (!config_has(g, f))
        return 0;
    double x;
    if (config_float(g, f, 0, 0, &x, err))
        return -1;
    if (!isfinite(x) || x < lo || x > hi || (lo_open && (x <= lo || (float)x == 0)))
        return kerr_add(err, "%s: field '%s' is %g; expected a number %s %g and at most %g",
                        g->path, f, x, lo_open ? "above" : "from", lo, hi);
    *out = x;
    *has = 1;
    return 0;
}

static int gen_int(const config *g, const char *f, int64_t max, int *has, int *out, kerr *err)
{
    *has = 0;
    if (!config_has(g, f))
        return 0;
    int64_t x;
    if (config_int_in(g, f, 0, 0, 0, max, &x, err))
        return -1;
    *out = (int)x;
    *has = 1;
    return 0;
}

int ovr_generation(const char *model_dir, const config *cfg, const ovr_set *o, ka_manifest *m,
                   char ***lines, int *nlines, kerr *err)
{
    char *gp = util_path_join(model_dir, "generation_config.json");
    config *gc = NULL;
    int rc = -1;
    m->bos = -1;
    m->n_eos = 0;
    memset(&m->gen, 0, sizeof m->gen);
    int have = util_is_file(gp);
    if (have && o && o->no_generation_config)
        ovr_add_line(lines, nlines, xasprintf("--generation-config none (ignored %s)", gp));
    if (m->output_pool) { /* an embedding model generates nothing and has no logits */
        free(gp);
        return 0;
    }
    if (have && !(o && o->no_generation_config) && !(gc = config_load(gp, err)))
        goto done;
    const config *srcs[2] = {gc, cfg};
    for (int k = 0; k < 2; k++) {
        int got;
        if (srcs[k] && (got = read_eos(srcs[k], m, err)) != 0) {
            if (got < 0)
                goto done;
            break;
        }
    }
    for (int k = 0; k < 2 && m->bos < 0; k++) {
        int64_t b;
        if (!srcs[k] || !config_has(srcs[k], "bos_token_id"))
            continue;
        if (config_int(srcs[k], "bos_token_id", 0, 0, &b, err))
            goto done;
        if (b < 0 || b >= m->vocab) {
            kerr_add(err, "%s: field 'bos_token_id' is %lld; expected a token id from 0 to %d",
                     srcs[k]->path, (long long)b, m->vocab - 1);
            goto done;
        }
        m->bos = (int)b;
    }
    ka_gen *ge = &m->gen;
    if (gc && (gen_num(gc, "temperature", 0, 0, KA_MAX_TEMPERATURE, &ge->has_temperature,
                       &ge->temperature, err) ||
               gen_num(gc, "top_p", 0, 1, 1, &ge->has_top_p, &ge->top_p, err) ||
               gen_int(gc, "top_k", INT32_MAX, &ge->has_top_k, &ge->top_k, err) ||
               gen_int(gc, "max_new_tokens", KA_MAX_SEQ_LEN, &ge->has_max_new, &ge->max_new,
                       err)))
        goto done;
    rc = 0;
done:
    config_free(gc);
    free(gp);
    return rc;
}
