/* quant — see quant.h. The dequantised tensors live in one list owned by the kc (kilnc runs
 * once: they are freed with it by quant_free). */
#include "quant.h"
#include "gptq.h"

#define PCRE2_CODE_UNIT_WIDTH 8

#include <assert.h>
#include <float.h>
#include <jansson.h>
#include <math.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/kiln_kv8.h"

typedef enum {
    QS_CT_TENSOR,  /* compressed-tensors, one scale per tensor */
    QS_CT_CHANNEL, /* compressed-tensors, one scale per output row */
    QS_CT_BLOCK,   /* compressed-tensors, block_structure [br, bc] */
    QS_FBGEMM,     /* fbgemm_fp8: one scale per output row */
    QS_BLOCK,      /* fp8 (DeepSeek / Qwen FP8): weight_scale_inv per [br, bc] block */
    QS_AWQ,        /* integer from here on: AWQ gemm (qweight [in, out/8], interleaved nibbles) */
    QS_GPTQ,       /* GPTQ (qweight [in/p, out], g_idx) */
    QS_CT_INT,     /* compressed-tensors pack-quantized (weight_packed [out, in/p]) */
} qscheme;

/* One entry of modules_to_not_convert (AWQ, GPTQ) or ignore (compressed-tensors). */
typedef struct qexcl {
    char *text;
    pcre2_code *re; /* anchored at the start (Python's re.match); NULL: a compressed-tensors name */
} qexcl;

typedef struct quant_state {
    int have;         /* config.json has a quantization_config */
    qscheme scheme;
    int64_t br, bc;   /* block rows and columns (block schemes) */
    /* integer schemes */
    int bits;         /* 4 (or 8: GPTQ, compressed-tensors) */
    int64_t group;    /* input columns per scale group; 0: one group per row (-1, "channel") */
    int zero_plus1;   /* GPTQ checkpoint_format "gptq" (v1): zero points stored minus one */
    int need_gidx;    /* GPTQ desc_act, compressed-tensors actorder "group": g_idx required */
    const char *excl_field; /* "modules_to_not_convert" or "ignore" */
    qexcl *excl;
    int n_excl;
    st_tensor **owned;
    qrows *rows;      /* per owned tensor: its quantised form by rows (quant_rows), or kind 0 */
    int n, cap;
    int n_companions; /* scale, zero and index tensors read; input scales skipped (FP8) */
    int n_gptq;       /* --quant weights rounded by GPTQ (--calibrate) */
} quant_state;

static int is_int(const quant_state *s) { return s->scheme >= QS_AWQ; }

/* ---------------------------------------------------------------- e4m3 */

/* Every byte's value, as constant expressions (a table: the packer decodes and checks every
 * weight of a model): exponent e = bits 6..3, mantissa m = bits 2..0; e 0 the subnormals m/8 *
 * 2^-6, else (1 + m/8) * 2^(e - 7) = (8 + m) * 2^(e - 10); S.1111.111 NaN. */
#define E4M3_ABS(b)                                                                               \
    (((b) & 0x7f) == 0x7f    ? NAN                                                                \
     : ((b) >> 3 & 15) == 0 ? (float)((b) & 7) * 0x1p-9f                                          \
                            : (float)((8 + ((b) & 7)) << ((b) >> 3 & 15)) * 0x1p-10f)
#define E4M3(b) ((b) & 0x80 ? -E4M3_ABS(b) : E4M3_ABS(b))
#define E4M3_4(b) E4M3(b), E4M3((b) + 1), E4M3((b) + 2), E4M3((b) + 3)
#define E4M3_16(b) E4M3_4(b), E4M3_4((b) + 4), E4M3_4((b) + 8), E4M3_4((b) + 12)
#define E4M3_64(b) E4M3_16(b), E4M3_16((b) + 16), E4M3_16((b) + 32), E4M3_16((b) + 48)
static const float E4M3_VALUE[256] = {E4M3_64(0), E4M3_64(64), E4M3_64(128), E4M3_64(192)};

float fp8_e4m3_to_f32(uint8_t b) { return E4M3_VALUE[b]; }

uint8_t fp8_e4m3_from_f32(float x)
{
    assert(!isnan(x));
    return kiln_kv8_e4m3(x); /* the kernels' encoder (integer operations): one rounding rule */
}

/* ---------------------------------------------------------------- quantization_config */

static quant_state *state(kc *c)
{
    if (!c->quant)
        c->quant = xcalloc(1, sizeof *c->quant);
    return c->quant;
}

/* A JSON integer pair [r, c] in 1..4096 at `field` of object o, into r and c. */
static int block_pair(const kc *c, json_t *o, const char *field, int64_t *r, int64_t *cc,
                      kerr *err)
{
    json_t *v = json_object_get(o, field);
    if (!json_is_array(v) || json_array_size(v) != 2 || !json_is_integer(json_array_get(v, 0)) ||
        !json_is_integer(json_array_get(v, 1)))
        return kerr_add(err, "%s: quantization_config: %s must be a pair of integers [rows, "
                             "cols] (e.g. [128, 128])",
                        c->cfg->path, field);
    *r = json_integer_value(json_array_get(v, 0));
    *cc = json_integer_value(json_array_get(v, 1));
    if (*r < 1 || *r > 4096 || *cc < 1 || *cc > 4096)
        return kerr_add(err, "%s: quantization_config: %s [%lld, %lld] is out of range (each "
                             "1 to 4096)",
                        c->cfg->path, field, (long long)*r, (long long)*cc);
    return 0;
}

static const char *jstr(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* The exclusion list at quantization_config.<field>: null, or an array of strings. With
 * `ct` (compressed-tensors' ignore) an entry is a module name, or "re:" and a regular
 * expression; otherwise (transformers' modules_to_not_convert) every entry is a regular
 * expression, and also matches a module whose name ends with it. Patterns are PCRE2, anchored
 * at the start as Python's re.match is. */
static int read_excl(kc *c, json_t *q, const char *field, int ct, quant_state *s, kerr *err)
{
    const char *path = c->cfg->path;
    json_t *v = json_object_get(q, field);
    s->excl_field = field;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_array(v))
        return kerr_add(err, "%s: quantization_config.%s must be a list of module names, got %s",
                        path, field, config_kind(v));
    if (json_array_size(v) > 4096)
        return kerr_add(err, "%s: quantization_config.%s lists %zu modules; kiln reads at most 4096",
                        path, field, json_array_size(v));
    s->excl = xcalloc(json_array_size(v) + 1, sizeof *s->excl);
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) {
        if (!json_is_string(e))
            return kerr_add(err, "%s: quantization_config.%s[%zu] must be a module name (a "
                                 "string), got %s",
                            path, field, i, config_kind(e));
        const char *text = json_string_value(e), *pat = ct ? NULL : text;
        if (ct && !strncmp(text, "re:", 3))
            pat = text + 3;
        qexcl *x = &s->excl[s->n_excl++];
        x->text = xstrdup(text);
        if (!pat)
            continue;
        int ec;
        PCRE2_SIZE eo;
        x->re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_ANCHORED, &ec, &eo, NULL);
        if (!x->re) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(ec, msg, sizeof msg);
            return kerr_add(err, "%s: quantization_config.%s[%zu] '%.200s' is not a regular "
                                 "expression kiln reads: %s (at offset %zu)",
                            path, field, i, text, (const char *)msg, (size_t)eo);
        }
    }
    return 0;
}

/* The entry of the exclusion list that names `module`, or NULL. */
static const char *excluded(const quant_state *s, const char *module)
{
    pcre2_match_data *md = s->n_excl ? pcre2_match_data_create(1, NULL) : NULL;
    const char *hit = NULL;
    size_t n = strlen(module);
    for (int i = 0; i < s->n_excl && !hit; i++) {
        const qexcl *x = &s->excl[i];
        size_t k = strlen(x->text);
        int ct = s->scheme == QS_CT_INT;
        if ((ct && !x->re && !strcmp(module, x->text)) ||
            (x->re && pcre2_match(x->re, (PCRE2_SPTR)module, n, 0, 0, md, NULL) >= 0) ||
            (!ct && k <= n && !strcmp(module + n - k, x->text)))
            hit = x->text;
    }
    pcre2_match_data_free(md);
    return hit;
}

/* compressed-tensors "pack-quantized": every config group's weights the same integer way,
 * weight-only. */
static int read_ct_int(kc *c, json_t *q, json_t *groups, quant_state *s, kerr *err)
{
    const char *path = c->cfg->path, *key;
    json_t *g;
    int first = 1;
    json_object_foreach(groups, key, g) {
        json_t *w = json_object_get(g, "weights"), *ia = json_object_get(g, "input_activations");
        json_t *bits = json_object_get(w, "num_bits"), *gs = json_object_get(w, "group_size");
        json_t *sym = json_object_get(w, "symmetric");
        const char *type = jstr(w, "type"), *strat = jstr(w, "strategy"), *act = jstr(w, "actorder");
        if (ia && !json_is_null(ia))
            return kerr_add(err, "%s: quantization_config.config_groups.%s.input_activations is "
                                 "set; kiln reads weight-only integer checkpoints (W4A16, W8A16): "
                                 "activations stay bf16",
                            path, key);
        if (!json_is_object(w) || !json_is_integer(bits) ||
            (json_integer_value(bits) != 4 && json_integer_value(bits) != 8) || !type ||
            strcmp(type, "int"))
            return kerr_add(err, "%s: quantization_config.config_groups.%s.weights: a "
                                 "pack-quantized checkpoint is read with integer weights of 4 or 8 "
                                 "bits (num_bits 4 or 8, type \"int\")",
                            path, key);
        if (!strat || (strcmp(strat, "group") && strcmp(strat, "channel")))
            return kerr_add(err, "%s: quantization_config.config_groups.%s.weights.strategy is "
                                 "'%s'; kiln reads pack-quantized weights with \"group\" or "
                                 "\"channel\" scales",
                            path, key, strat ? strat : "(missing)");
        if (sym && !json_is_true(sym))
            return kerr_add(err, "%s: quantization_config.config_groups.%s.weights.symmetric is "
                                 "false; kiln reads symmetric pack-quantized weights only (no zero "
                                 "points)",
                            path, key);
        int64_t group = 0;
        if (!strcmp(strat, "group")) {
            group = json_is_integer(gs) ? json_integer_value(gs) : 0;
            if (group < 1 || group > (1 << 20))
                return kerr_add(err, "%s: quantization_config.config_groups.%s.weights.group_size "
                                     "must be an integer from 1 to 1048576 with strategy \"group\"",
                                path, key);
        }
        if (!first && (s->bits != json_integer_value(bits) || s->group != group))
            return kerr_add(err, "%s: quantization_config.config_groups: groups quantise weights "
                                 "differently (num_bits, strategy or group_size); kiln reads one "
                                 "scheme per checkpoint",
                            path);
        first = 0;
        s->bits = (int)json_integer_value(bits);
        s->group = group;
        s->need_gidx |= act && (!strcmp(act, "group") || !strcmp(act, "dynamic"));
    }
    s->scheme = QS_CT_INT;
    return read_excl(c, q, "ignore", 1, s, err);
}

/* compressed-tensors: every config group must quantise weights the same FP8 way, or the same
 * integer way (format "pack-quantized"). */
static int read_ct(kc *c, json_t *q, quant_state *s, kerr *err)
{
    const char *path = c->cfg->path, *fmt = jstr(q, "format");
    if (!fmt || (strcmp(fmt, "float-quantized") && strcmp(fmt, "naive-quantized") &&
                 strcmp(fmt, "pack-quantized")))
        return kerr_add(err, "%s: quantization_config.format is '%s'; kiln reads compressed-tensors "
                             "FP8 checkpoints ('float-quantized' or 'naive-quantized') and integer "
                             "ones ('pack-quantized')",
                        path, fmt ? fmt : "(missing)");
    json_t *kv = json_object_get(q, "kv_cache_scheme");
    if (kv && !json_is_null(kv))
        return kerr_add(err, "%s: quantization_config.kv_cache_scheme is set; a quantised KV "
                             "cache is not supported yet (remove the field to run with a bf16 "
                             "cache)",
                        path);
    json_t *groups = json_object_get(q, "config_groups");
    if (!json_is_object(groups) || json_object_size(groups) == 0)
        return kerr_add(err, "%s: quantization_config.config_groups must be a non-empty object",
                        path);
    if (!strcmp(fmt, "pack-quantized"))
        return read_ct_int(c, q, groups, s, err);
    const char *key, *strat0 = NULL;
    json_t *g;
    json_object_foreach(groups, key, g) {
        json_t *w = json_object_get(g, "weights");
        json_t *bits = json_object_get(w, "num_bits");
        const char *type = jstr(w, "type"), *strat = jstr(w, "strategy");
        if (!json_is_object(w) || !json_is_integer(bits) || json_integer_value(bits) != 8 || !type ||
            strcmp(type, "float"))
            return kerr_add(err, "%s: quantization_config.config_groups.%s.weights: kiln reads "
                                 "8-bit float weights (num_bits 8, type \"float\") from a '%s' "
                                 "checkpoint; integer weights come in format \"pack-quantized\"",
                            path, key, fmt);
        if (!strat || (strcmp(strat, "tensor") && strcmp(strat, "channel") && strcmp(strat, "block")))
            return kerr_add(err, "%s: quantization_config.config_groups.%s.weights.strategy is "
                                 "'%s'; expected \"tensor\", \"channel\" or \"block\"",
                            path, key, strat ? strat : "(missing)");
        if (strat0 && strcmp(strat, strat0))
            return kerr_add(err, "%s: quantization_config.config_groups: groups with different "
                                 "weight strategies ('%s' and '%s') are not supported",
                            path, strat0, strat);
        strat0 = strat;
        if (!strcmp(strat, "block") && block_pair(c, w, "block_structure", &s->br, &s->bc, err))
            return -1;
    }
    s->scheme = !strcmp(strat0, "tensor")    ? QS_CT_TENSOR
                : !strcmp(strat0, "channel") ? QS_CT_CHANNEL
                                             : QS_CT_BLOCK;
    return 0;
}

/* group_size: -1 (one group per row) or 1 to 2^20. */
static int read_group(kc *c, quant_state *s, kerr *err)
{
    int64_t g;
    if (config_int(c->cfg, "quantization_config.group_size", 0, 0, &g, err))
        return -1;
    if (g != -1 && (g < 1 || g > (1 << 20)))
        return kerr_add(err, "%s: quantization_config.group_size is %lld; expected -1 (one group "
                             "per row) or 1 to 1048576",
                        c->cfg->path, (long long)g);
    s->group = g == -1 ? 0 : g;
    return 0;
}

/* The format string at `field` or, for older checkpoints, `legacy` (transformers reads both):
 * *v, or `def` when neither is there; *which names the field read, for messages. */
static int read_format(kc *c, json_t *q, const char *field, const char *legacy, const char *def,
                       const char **v, const char **which, kerr *err)
{
    json_t *x = json_object_get(q, legacy);
    *which = legacy;
    if (!x || json_is_null(x)) {
        x = json_object_get(q, field);
        *which = field;
    }
    *v = def;
    if (!x || json_is_null(x))
        return 0;
    if (!json_is_string(x))
        return kerr_add(err, "%s: quantization_config.%s must be a string, got %s", c->cfg->path,
                        *which, config_kind(x));
    *v = json_string_value(x);
    return 0;
}

/* AutoAWQ: {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true,
 * "version": "gemm", "modules_to_not_convert": null}. */
static int read_awq(kc *c, json_t *q, quant_state *s, kerr *err)
{
    const char *path = c->cfg->path, *fmt, *which;
    int64_t bits;
    int zp;
    if (config_int(c->cfg, "quantization_config.bits", 0, 0, &bits, err) || read_group(c, s, err) ||
        config_bool(c->cfg, "quantization_config.zero_point", 1, 1, &zp, err) ||
        read_format(c, q, "format", "version", "gemm", &fmt, &which, err))
        return -1;
    if (bits != 4)
        return kerr_add(err, "%s: quantization_config.bits is %lld; AWQ checkpoints are read with "
                             "4 bits",
                        path, (long long)bits);
    if (strcmp(fmt, "gemm"))
        return kerr_add(err, "%s: quantization_config.%s is '%s'; kiln reads AWQ's \"gemm\" "
                             "layout (qweight [in, out/8]); the GEMV, exllama and marlin layouts "
                             "are not read: export the checkpoint with version \"gemm\"",
                        path, which, fmt);
    s->scheme = QS_AWQ;
    s->bits = 4;
    return read_excl(c, q, "modules_to_not_convert", 0, s, err);
}

/* AutoGPTQ, GPTQModel, optimum: {"quant_method": "gptq", "bits": 4, "group_size": 128,
 * "desc_act": false, "sym": true, "checkpoint_format": "gptq"} ("format" in newer ones). */
static int read_gptq(kc *c, json_t *q, quant_state *s, kerr *err)
{
    const char *path = c->cfg->path, *fmt, *which, *pack, *pack_field;
    int64_t bits;
    int desc_act;
    if (config_int(c->cfg, "quantization_config.bits", 0, 0, &bits, err) || read_group(c, s, err) ||
        config_bool(c->cfg, "quantization_config.desc_act", 1, 0, &desc_act, err) ||
        read_format(c, q, "format", "checkpoint_format", "gptq", &fmt, &which, err) ||
        read_format(c, q, "pack_dtype", "pack_dtype", "int32", &pack, &pack_field, err))
        return -1;
    if (bits != 4 && bits != 8)
        return kerr_add(err, "%s: quantization_config.bits is %lld; GPTQ checkpoints are read with "
                             "4 or 8 bits",
                        path, (long long)bits);
    if (strcmp(fmt, "gptq") && strcmp(fmt, "gptq_v2"))
        return kerr_add(err, "%s: quantization_config.%s is '%s'; kiln reads GPTQ checkpoints in "
                             "format \"gptq\" (zero points stored minus one) or \"gptq_v2\"",
                        path, which, fmt);
    if (strcmp(pack, "int32"))
        return kerr_add(err, "%s: quantization_config.pack_dtype is '%s'; kiln reads GPTQ weights "
                             "packed in int32",
                        path, pack);
    json_t *dyn = json_object_get(q, "dynamic");
    if (dyn && !json_is_null(dyn)) {
        const char *key;
        json_t *v;
        if (!json_is_object(dyn))
            return kerr_add(err, "%s: quantization_config.dynamic must be an object, got %s", path,
                            config_kind(dyn));
        json_object_foreach(dyn, key, v) {
            if (strncmp(key, "-:", 2))
                return kerr_add(err, "%s: quantization_config.dynamic['%.200s'] gives some modules "
                                     "their own bits or group size; kiln reads one GPTQ scheme per "
                                     "checkpoint (only \"-:\" exclusions are accepted)",
                                path, key);
        }
    }
    s->scheme = QS_GPTQ;
    s->bits = (int)bits;
    s->zero_plus1 = !strcmp(fmt, "gptq");
    s->need_gidx = desc_act;
    return read_excl(c, q, "modules_to_not_convert", 0, s, err);
}

int quant_config_read(kc *c, kerr *err)
{
    json_t *q = config_get(c->cfg, "quantization_config");
    if (!q)
        return 0;
    const char *path = c->cfg->path;
    if (!json_is_object(q))
        return kerr_add(err, "%s: quantization_config must be an object, got %s", path,
                        config_kind(q));
    const char *m = jstr(q, "quant_method");
    quant_state *s = state(c);
    s->have = 1;
    if (m && !strcmp(m, "compressed-tensors"))
        return read_ct(c, q, s, err);
    if (m && !strcmp(m, "awq"))
        return read_awq(c, q, s, err);
    if (m && !strcmp(m, "gptq"))
        return read_gptq(c, q, s, err);
    if (m && !strcmp(m, "fbgemm_fp8")) {
        s->scheme = QS_FBGEMM;
        return 0;
    }
    if (m && !strcmp(m, "fp8")) {
        const char *fmt = jstr(q, "fmt"), *act = jstr(q, "activation_scheme");
        if (fmt && strcmp(fmt, "e4m3"))
            return kerr_add(err, "%s: quantization_config.fmt is '%s'; kiln reads e4m3 weights",
                            path, fmt);
        if (act && strcmp(act, "dynamic"))
            return kerr_add(err, "%s: quantization_config.activation_scheme is '%s'; block-scaled "
                                 "FP8 checkpoints are read with \"dynamic\" activations only",
                            path, act);
        s->scheme = QS_BLOCK;
        s->br = s->bc = 128;
        json_t *b = json_object_get(q, "weight_block_size");
        return b && !json_is_null(b) ? block_pair(c, q, "weight_block_size", &s->br, &s->bc, err)
                                     : 0;
    }
    return kerr_add(err, "%s: quantization_config.quant_method is '%s'; kiln reads "
                         "\"compressed-tensors\" (FP8, or pack-quantized integers), \"fbgemm_fp8\", "
                         "\"fp8\" (block-scaled), \"awq\" and \"gptq\" checkpoints, or quantises a "
                         "bf16 one with 'kilnc compile --quant fp8'",
                    path, m ? m : "(missing)");
}

/* ---------------------------------------------------------------- tensors */

/* A tensor the quant state owns: the fp32 values of a weight, or once compact() has replaced
 * them, their codes (dtype U8) with the qrows that decode them (quant_values). */
typedef struct qowned {
    st_tensor t; /* first: a bound `const st_tensor *` of dtype U8 is a qowned */
    qrows q;     /* a copy of its state's rows entry, for quant_values (which has no kc) */
} qowned;

/* A new fp32 tensor shaped as `like`, owned by the quant state. With `name`, the tensor is
 * called that (a copy, in the same allocation): a weight dequantised from tensors of other
 * names. */
static st_tensor *own(kc *c, const st_tensor *like, const char *name)
{
    quant_state *s = state(c);
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        s->owned = xrealloc(s->owned, sizeof *s->owned * (size_t)s->cap);
        s->rows = xrealloc(s->rows, sizeof *s->rows * (size_t)s->cap);
    }
    memset(&s->rows[s->n], 0, sizeof s->rows[s->n]);
    size_t nl = name ? strlen(name) + 1 : 0;
    qowned *qo = xmalloc(sizeof *qo + nl);
    memset(&qo->q, 0, sizeof qo->q);
    st_tensor *t = &qo->t;
    *t = *like;
    if (name)
        t->name = memcpy(qo + 1, name, nl);
    t->dtype = ST_F32;
    t->nbytes = t->numel * sizeof(float);
    t->data = xmalloc(t->nbytes ? t->nbytes : 1);
    s->owned[s->n++] = t;
    return t;
}

int quant_code(qrows_kind kind, float x, float s, float z)
{
    if (kind == QROWS_E4M3) {
        if (isnan(x))
            return 0x7f;
        if (isinf(x) && isinf(s))
            return (x > 0) == (s > 0) ? 0x38 : 0xb8; /* 1.0, -1.0 */
        uint8_t q = x == 0 ? 0 : kiln_kv8_e4m3(x / s);
        return E4M3_VALUE[q] * s == x ? q : -1;
    }
    int q = s != 0 ? (int)lrintf(x / s) + (int)z : (int)z;
    return q >= 0 && q <= 15 && (float)(q - (int)z) * s == x ? q : -1;
}

/* Rows [lo, hi) of compact: each value's code, or the chunk marked failed. */
typedef struct codejob {
    const qowned *qo;
    uint8_t *codes;
    int64_t cols, kb;
    int failed[UTIL_PAR_MAX];
} codejob;

static void code_part(void *ctx, int chunk, int64_t lo, int64_t hi)
{
    codejob *j = ctx;
    const qrows *q = &j->qo->q;
    const float *v = j->qo->t.data;
    for (int64_t r = lo; r < hi && !j->failed[chunk]; r++)
        for (int64_t k = 0; k < j->cols; k++) {
            int64_t at = r * j->kb + (q->block ? k / q->block : 0);
            float x = v[r * j->cols + k];
            int c = isfinite(x) ? quant_code(q->kind, x, q->scale[at], q->zero ? q->zero[at] : 0.f)
                                : -1;
            if (c < 0) {
                j->failed[chunk] = 1;
                break;
            }
            j->codes[r * j->cols + k] = (uint8_t)c;
        }
}

/* The last owned tensor, when it has a quantised form and every value is finite and its form's
 * exactly: its fp32 values replaced by their codes, a byte each (a quarter of the memory: an 8B
 * model's --quant keeps about 7 GB instead of 28). Otherwise (NaN or Inf, which finite.c must see,
 * or a value off its grid, which the packer reports as a kilnc bug) the values stay. */
static void compact(quant_state *s)
{
    qowned *qo = (qowned *)s->owned[s->n - 1];
    const qrows *q = &s->rows[s->n - 1];
    if (!q->kind || qo->t.ndim != 2)
        return;
    int64_t rows = qo->t.shape[0], cols = qo->t.shape[1];
    qo->q = *q;
    codejob *j = xcalloc(1, sizeof *j);
    *j = (codejob){qo, xmalloc(qo->t.numel ? qo->t.numel : 1), cols,
                   q->block ? (cols + q->block - 1) / q->block : 1, {0}};
    util_parallel_for(rows, code_part, j);
    int ok = 1;
    for (int i = 0; i < UTIL_PAR_MAX; i++)
        ok &= !j->failed[i];
    if (ok) {
        free((void *)qo->t.data);
        qo->t.data = j->codes;
        qo->t.dtype = ST_U8;
        qo->t.nbytes = qo->t.numel;
    } else {
        free(j->codes);
        memset(&qo->q, 0, sizeof qo->q);
    }
    free(j);
}

void quant_values(const st_tensor *t, uint64_t from, uint64_t count, float *dst)
{
    if (t->dtype == ST_F32) {
        memcpy(dst, (const float *)t->data + from, sizeof(float) * count);
        return;
    }
    assert(t->dtype == ST_U8 && t->ndim == 2);
    const qowned *qo = (const qowned *)t;
    const qrows *q = &qo->q;
    const uint8_t *codes = t->data;
    uint64_t cols = (uint64_t)t->shape[1], b = (uint64_t)q->block;
    uint64_t kb = b ? (cols + b - 1) / b : 1;
    for (uint64_t i = 0; i < count; i++) {
        uint64_t e = from + i, r = e / cols, k = e % cols, at = r * kb + (b ? k / b : 0);
        dst[i] = q->kind == QROWS_E4M3
                     ? fp8_e4m3_to_f32(codes[e]) * q->scale[at]
                     : (float)((int)codes[e] - (int)q->zero[at]) * q->scale[at];
    }
}

static float scalar_at(const st_tensor *t, uint64_t i)
{
    switch (t->dtype) {
    case ST_F32: return ((const float *)t->data)[i];
    case ST_BF16: return util_bf16_to_f32(((const uint16_t *)t->data)[i]);
    default: return util_f16_to_f32(((const uint16_t *)t->data)[i]);
    }
}

/* Marks `base` + suffix as used when the checkpoint has it. */
static const st_tensor *companion(quant_state *s, const st_set *w, const char *base,
                                  const char *suffix, unsigned char *used)
{
    char name[1024];
    if ((size_t)snprintf(name, sizeof name, "%s%s", base, suffix) >= sizeof name)
        return NULL;
    const st_tensor *t = st_find(w, name);
    if (t) {
        used[t - w->tensors] = 1;
        s->n_companions++;
    }
    return t;
}

const st_tensor *quant_dequant_fp8(kc *c, const st_tensor *t, unsigned char *used, kerr *err)
{
    const st_set *w = c->weights;
    const char *file = w->files[t->file].path;
    quant_state *s = c->quant;
    if (!s || !s->have) {
        kerr_add(err, "%s: tensor '%s' is F8_E4M3 but %s has no quantization_config to say how "
                      "it is scaled",
                 file, t->name, c->cfg->path);
        return NULL;
    }
    if (is_int(s)) {
        kerr_add(err, "%s: quantization_config in %s describes integer weights (AWQ, GPTQ or "
                      "pack-quantized), not FP8 ones: the scales of F8_E4M3 tensor '%s' are unknown",
                 file, c->cfg->path, t->name);
        return NULL;
    }
    size_t len = strlen(t->name);
    if (t->ndim != 2 || len < 7 || strcmp(t->name + len - 7, ".weight")) {
        kerr_add(err, "%s: tensor '%s' is F8_E4M3; kiln reads FP8 only for 2-D linear weights "
                      "named '*.weight'",
                 file, t->name);
        return NULL;
    }
    char base[1024];
    snprintf(base, sizeof base, "%.*s", (int)(len - 7), t->name);
    companion(s, w, base, ".input_scale", used);
    companion(s, w, base, ".input_scale_ub", used);
    const char *sfx = s->scheme == QS_BLOCK ? ".weight_scale_inv" : ".weight_scale";
    const st_tensor *sc = companion(s, w, base, sfx, used);
    int64_t rows = t->shape[0], cols = t->shape[1];
    int64_t sr = 1, scl = 1; /* the scale grid: sr x scl blocks */
    switch (s->scheme) {
    case QS_CT_TENSOR: break;
    case QS_CT_CHANNEL:
    case QS_FBGEMM: sr = rows; break;
    case QS_CT_BLOCK:
    case QS_BLOCK:
        sr = (rows + s->br - 1) / s->br;
        scl = (cols + s->bc - 1) / s->bc;
        break;
    default: assert(!"integer schemes are refused above");
    }
    char want[64], got[128], wsh[128];
    if (s->scheme == QS_CT_TENSOR)
        snprintf(want, sizeof want, "one element");
    else
        snprintf(want, sizeof want, "[%lld, %lld]", (long long)sr, (long long)scl);
    if (!sc) {
        kerr_add(err, "%s: tensor '%s%s' is not in the checkpoint: the scale of FP8 weight '%s' "
                      "(expected %s, from quantization_config)",
                 w->origin, base, sfx, t->name, want);
        return NULL;
    }
    /* the shape: [sr, scl], or [sr] when scl is 1, or any single element for one scale */
    int ok = (uint64_t)sc->numel == (uint64_t)(sr * scl) &&
             (s->scheme == QS_CT_TENSOR ||
              (sc->ndim == 2 && sc->shape[0] == sr && sc->shape[1] == scl) ||
              (sc->ndim == 1 && scl == 1 && sc->shape[0] == sr));
    if (!ok || (sc->dtype != ST_F32 && sc->dtype != ST_BF16 && sc->dtype != ST_F16)) {
        kerr_add(err, "%s: tensor '%s' is %s %s; the scale of FP8 weight '%s' %s must be F32, BF16 "
                      "or F16 %s",
                 w->files[sc->file].path, sc->name, st_dtype_name(sc->dtype),
                 st_shape_str(sc->ndim, sc->shape, got, sizeof got), t->name,
                 st_shape_str(t->ndim, t->shape, wsh, sizeof wsh), want);
        return NULL;
    }
    st_tensor *o = own(c, t, NULL);
    const uint8_t *q = t->data;
    float *d = (float *)o->data;
    int64_t brr = sr == 1 ? rows : (s->scheme == QS_CT_BLOCK || s->scheme == QS_BLOCK ? s->br : 1);
    int64_t bcc = scl == 1 ? cols : s->bc;
    /* the scales per row (a block's scale repeated over its rows), kept for the packer */
    float *rs = xmalloc(sizeof(float) * (size_t)(rows * scl));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t b = 0; b < scl; b++)
            rs[r * scl + b] = scalar_at(sc, (uint64_t)((r / brr) * scl + b));
    s->rows[s->n - 1] = (qrows){QROWS_E4M3, scl == 1 ? 0 : bcc, rs, NULL};
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < cols; k++)
            d[r * cols + k] = fp8_e4m3_to_f32(q[r * cols + k]) * rs[r * scl + k / bcc];
    compact(s);
    return o;
}

/* ---------------------------------------------------------------- integer weights */

/* Element i of an I32 tensor, as the 32 bits its packer wrote (little-endian, like the host). */
static uint32_t word(const st_tensor *t, uint64_t i)
{
    uint32_t v;
    memcpy(&v, (const char *)t->data + 4 * i, sizeof v);
    return v;
}

/* AutoAWQ packs output columns 8j..8j+7 into word j in the order 0 2 4 6 1 3 5 7 (nibble k
 * holds column 8j + AWQ_ORDER[k]); column 8j + c is therefore in nibble AWQ_NIBBLE[c]. */
static const int AWQ_NIBBLE[8] = {0, 4, 1, 5, 2, 6, 3, 7};

/* One packed weight being read: what messages name, and whether one was added. */
typedef struct ipack {
    kc *c;
    const char *weight; /* the spec's name, "X.weight" */
    char base[1024];    /* "X" */
    const char *fmt;    /* "AWQ", "GPTQ", "pack-quantized" */
    unsigned char *used;
    kerr *err;
    int failed;
} ipack;

/* Tensor base + sfx, the `role` of the weight: of dtype dt (ST_F32 standing for F32, F16 or
 * BF16) and shape want[0..nd); `why` says where that shape comes from. NULL when it is absent
 * (an error unless `optional`) or wrong (an error, p->failed set). */
static const st_tensor *need(ipack *p, const char *sfx, const char *role, int optional, st_dtype dt,
                             int nd, const int64_t *want, const char *why)
{
    const st_set *w = p->c->weights;
    const st_tensor *t = companion(p->c->quant, w, p->base, sfx, p->used);
    char ws[128], got[128];
    const char *dts = dt == ST_F32 ? "F16, BF16 or F32" : st_dtype_name(dt);
    st_shape_str(nd, want, ws, sizeof ws);
    if (!t) {
        if (!optional) {
            kerr_add(p->err, "%s: tensor '%s%s' is not in the checkpoint: the %s of %s weight '%s' "
                             "(expected %s %s, %s)",
                     w->origin, p->base, sfx, role, p->fmt, p->weight, dts, ws, why);
            p->failed = 1;
        }
        return NULL;
    }
    int ok = dt == ST_F32 ? t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16
                          : t->dtype == dt;
    ok = ok && t->ndim == nd;
    for (int d = 0; ok && d < nd; d++)
        ok = t->shape[d] == want[d];
    if (!ok) {
        kerr_add(p->err, "%s: tensor '%s' is %s %s; the %s of %s weight '%s' must be %s %s (%s)",
                 w->files[t->file].path, t->name, st_dtype_name(t->dtype),
                 st_shape_str(t->ndim, t->shape, got, sizeof got), role, p->fmt, p->weight, dts, ws,
                 why);
        p->failed = 1;
        return NULL;
    }
    return t;
}

/* Scale groups along the input: in / group_size of them (1 for one group per row). 0 with an
 * error when in is not a multiple of the group size. */
static int64_t n_groups(ipack *p, int64_t in)
{
    int64_t g = p->c->quant->group;
    if (!g)
        return 1;
    if (in % g) {
        kerr_add(p->err, "%s: %s weight '%s' has %lld input columns, not a multiple of "
                         "quantization_config's group_size %lld: the checkpoint does not match "
                         "its config",
                 p->c->weights->origin, p->fmt, p->weight, (long long)in, (long long)g);
        p->failed = 1;
        return 0;
    }
    return in / g;
}

/* The scale group of each input column: the checkpoint's index tensor base + sfx (I32 [in])
 * when it has one (required when the config says columns were reordered), every entry checked
 * below `groups`; else column / (in / groups). NULL with p->failed on an error. */
static int32_t *group_index(ipack *p, const char *sfx, int64_t in, int64_t groups)
{
    const st_tensor *gi = NULL;
    if (sfx) {
        int64_t sh[1] = {in};
        gi = need(p, sfx, "group index", !p->c->quant->need_gidx, ST_I32, 1, sh,
                  "one group per input column; quantization_config reorders the columns");
        if (p->failed)
            return NULL;
    }
    int32_t *g = xmalloc(sizeof *g * (size_t)in);
    for (int64_t i = 0; i < in; i++) {
        int64_t v = gi ? (int32_t)word(gi, (uint64_t)i) : i / (in / groups);
        if (v < 0 || v >= groups) {
            kerr_add(p->err, "%s: tensor '%s' holds %lld at index %lld; the scale group of an input "
                             "column of %s weight '%s' must be from 0 to %lld",
                     p->c->weights->files[gi->file].path, gi->name, (long long)v, (long long)i,
                     p->fmt, p->weight, (long long)groups - 1);
            p->failed = 1;
            free(g);
            return NULL;
        }
        g[i] = (int32_t)v;
    }
    return g;
}

/* The INT4 form of the weight just dequantised (out_tensor's, the last owned), for the packer:
 * its scale and zero point per row and group, sc and zp [out, groups] (taken), of `in` / groups
 * contiguous columns each. Kept when the format has 4 bits and the columns are in order (gi
 * NULL, or every entry i / G: act order puts a group's columns apart, and the INT4 kernels read
 * groups as runs); freed otherwise. */
static void keep_int4(ipack *p, int64_t in, int64_t groups, const int32_t *gi, float *sc, float *zp)
{
    quant_state *s = p->c->quant;
    int64_t G = in / groups;
    int ok = s->bits == 4;
    for (int64_t i = 0; ok && gi && i < in; i++)
        ok = gi[i] == i / G;
    if (!ok) {
        free(sc);
        free(zp);
        return;
    }
    s->rows[s->n - 1] = (qrows){QROWS_INT4, groups == 1 ? 0 : G, sc, zp};
}

/* The fp32 [out, in] tensor the weight dequantises into, named as the spec asks for it. */
static float *out_tensor(ipack *p, const st_tensor *packed, int64_t out, int64_t in,
                         const st_tensor **o)
{
    st_tensor like = {.name = p->weight, .ndim = 2, .shape = {out, in},
                      .numel = (uint64_t)out * (uint64_t)in, .file = packed->file};
    st_tensor *t = own(p->c, &like, p->weight);
    *o = t;
    return (float *)t->data;
}

/* AWQ gemm: qweight I32 [in, out/8] (AWQ's nibble order), qzeros I32 [groups, out/8] (same
 * order), scales [groups, out]; w[o][i] = (q - z) * s. The zero points are subtracted whatever
 * zero_point says, as AutoAWQ's dequantisation does (it writes them either way). */
static const st_tensor *deq_awq(ipack *p, const st_tensor *qw)
{
    int64_t in = qw->shape[0], oc = qw->shape[1], out = oc * 8, G = n_groups(p, in);
    if (!G)
        return NULL;
    int64_t zs[2] = {G, oc}, ss[2] = {G, out};
    const st_tensor *qz = need(p, ".qzeros", "zero points", 0, ST_I32, 2, zs,
                               "[in / group_size, out / 8]");
    const st_tensor *sc = need(p, ".scales", "scales", 0, ST_F32, 2, ss, "[in / group_size, out]");
    if (p->failed)
        return NULL;
    const st_tensor *o;
    float *d = out_tensor(p, qw, out, in, &o);
    float *ks = xmalloc(sizeof(float) * (size_t)(out * G)), *kz = xmalloc(sizeof(float) * (size_t)(out * G));
    for (int64_t i = 0; i < in; i++) {
        int64_t g = i / (in / G);
        for (int64_t c = 0; c < out; c++) {
            int sh = 4 * AWQ_NIBBLE[c & 7];
            int q = (int)(word(qw, (uint64_t)(i * oc + c / 8)) >> sh & 15);
            int z = (int)(word(qz, (uint64_t)(g * oc + c / 8)) >> sh & 15);
            float v = scalar_at(sc, (uint64_t)(g * out + c));
            d[c * in + i] = (float)(q - z) * v;
            ks[c * G + g] = v;
            kz[c * G + g] = (float)z;
        }
    }
    keep_int4(p, in, G, NULL, ks, kz);
    return o;
}

/* GPTQ: qweight I32 [in/p, out] (p = 32 / bits values per word along the input, lowest bits
 * first), qzeros I32 [groups, ceil(out/p)] (along the output), scales [groups, out], g_idx I32
 * [in]; w[o][i] = (q - z) * s with z the stored zero point, plus one in format "gptq" (v1:
 * AutoGPTQ stored z - 1; its dequantisation adds the 1 back to each unpacked field). */
static const st_tensor *deq_gptq(ipack *p, const st_tensor *qw)
{
    const quant_state *s = p->c->quant;
    int bits = s->bits, pf = 32 / bits;
    uint32_t mask = (1u << bits) - 1;
    int64_t in = qw->shape[0] * pf, out = qw->shape[1], zc = (out + pf - 1) / pf;
    int64_t G = n_groups(p, in);
    if (!G)
        return NULL;
    int64_t zs[2] = {G, zc}, ss[2] = {G, out};
    const st_tensor *qz = need(p, ".qzeros", "zero points", 0, ST_I32, 2, zs,
                               pf == 8 ? "[groups, out / 8]" : "[groups, out / 4]");
    const st_tensor *sc = need(p, ".scales", "scales", 0, ST_F32, 2, ss, "[groups, out]");
    if (p->failed)
        return NULL;
    int32_t *gi = group_index(p, ".g_idx", in, G);
    if (!gi)
        return NULL;
    const st_tensor *o;
    float *d = out_tensor(p, qw, out, in, &o);
    float *ks = xmalloc(sizeof(float) * (size_t)(out * G)), *kz = xmalloc(sizeof(float) * (size_t)(out * G));
    for (int64_t i = 0; i < in; i++) {
        int64_t g = gi[i];
        int sh = bits * (int)(i % pf);
        for (int64_t c = 0; c < out; c++) {
            int q = (int)(word(qw, (uint64_t)((i / pf) * out + c)) >> sh & mask);
            int z = (int)(word(qz, (uint64_t)(g * zc + c / pf)) >> (bits * (int)(c % pf)) & mask) +
                    s->zero_plus1;
            float v = scalar_at(sc, (uint64_t)(g * out + c));
            d[c * in + i] = (float)(q - z) * v;
            ks[c * G + g] = v;
            kz[c * G + g] = (float)z;
        }
    }
    keep_int4(p, in, G, gi, ks, kz);
    free(gi);
    return o;
}

/* compressed-tensors pack-quantized, symmetric: weight_packed I32 [out, ceil(in/p)] (values
 * along the input, lowest bits first, each stored plus 2^(bits-1)), weight_scale [out, groups],
 * weight_shape [out, in] (optional), weight_zero_point (optional, all zero), weight_g_idx I32
 * [in] (optional unless actorder "group"); w[o][i] = q * s. */
static const st_tensor *deq_ct(ipack *p, const st_tensor *wp)
{
    const quant_state *s = p->c->quant;
    const st_set *w = p->c->weights;
    int bits = s->bits, pf = 32 / bits;
    uint32_t mask = (1u << bits) - 1;
    int64_t out = wp->shape[0], pc = wp->shape[1], in = pc * pf;
    const st_tensor *ws = companion(p->c->quant, w, p->base, ".weight_shape", p->used);
    if (ws) {
        int64_t v[2] = {0, 0};
        int ok = ws->ndim == 1 && ws->shape[0] == 2 && (ws->dtype == ST_I64 || ws->dtype == ST_I32);
        for (int k = 0; ok && k < 2; k++)
            if (ws->dtype == ST_I64)
                memcpy(&v[k], (const char *)ws->data + 8 * k, 8);
            else
                v[k] = (int32_t)word(ws, (uint64_t)k);
        if (!ok || v[0] != out || v[1] < 1 || v[1] > in || (v[1] + pf - 1) / pf != pc) {
            char got[128];
            return kerr_add(p->err, "%s: tensor '%s' (%s %s) must hold [out, in] = [%lld, n] with "
                                    "n from %lld to %lld, as '%s' is I32 [%lld, %lld]",
                            w->files[ws->file].path, ws->name, st_dtype_name(ws->dtype),
                            st_shape_str(ws->ndim, ws->shape, got, sizeof got), (long long)out,
                            (long long)(pc - 1) * pf + 1, (long long)in, wp->name, (long long)out,
                            (long long)pc),
                   NULL;
        }
        in = v[1];
    }
    int64_t G = n_groups(p, in);
    if (!G)
        return NULL;
    int64_t ss[2] = {out, G};
    const st_tensor *sc = need(p, ".weight_scale", "scales", 0, ST_F32, 2, ss,
                               s->group ? "[out, in / group_size]" : "[out, 1]");
    const st_tensor *zp = companion(p->c->quant, w, p->base, ".weight_zero_point", p->used);
    if (p->failed)
        return NULL;
    for (uint64_t k = 0; zp && k < zp->nbytes; k++)
        if (((const uint8_t *)zp->data)[k])
            return kerr_add(p->err, "%s: tensor '%s' holds a zero point other than 0; kiln reads "
                                    "symmetric pack-quantized weights only",
                            w->files[zp->file].path, zp->name),
                   NULL;
    int32_t *gi = group_index(p, ".weight_g_idx", in, G);
    if (!gi)
        return NULL;
    const st_tensor *o;
    float *d = out_tensor(p, wp, out, in, &o);
    float *ks = xmalloc(sizeof(float) * (size_t)(out * G)), *kz = xmalloc(sizeof(float) * (size_t)(out * G));
    int off = 1 << (bits - 1);
    for (int64_t c = 0; c < out; c++)
        for (int64_t i = 0; i < in; i++) {
            uint32_t v = word(wp, (uint64_t)(c * pc + i / pf)) >> (bits * (int)(i % pf)) & mask;
            int q = (int)v - off;
            float sv = scalar_at(sc, (uint64_t)(c * G + gi[i]));
            d[c * in + i] = (float)q * sv;
            ks[c * G + gi[i]] = sv;
            kz[c * G + gi[i]] = (float)off; /* stored v = q + off: (v - off) * s */
        }
    keep_int4(p, in, G, gi, ks, kz);
    free(gi);
    return o;
}

int quant_dequant_packed(kc *c, const char *name, unsigned char *used, const st_tensor **out,
                         kerr *err)
{
    *out = NULL;
    const st_set *w = c->weights;
    quant_state *s = c->quant;
    ipack p = {.c = c, .weight = name, .used = used, .err = err};
    size_t len = strlen(name);
    if (len < 8 || strcmp(name + len - 7, ".weight") || len - 7 >= sizeof p.base - 16)
        return 0;
    snprintf(p.base, sizeof p.base, "%.*s", (int)(len - 7), name);
    char pn[1100];
    if (!s || !s->have || !is_int(s)) { /* a packed weight the config does not describe */
        static const char *const sfx[] = {".qweight", ".weight_packed"};
        for (int k = 0; k < 2; k++) {
            snprintf(pn, sizeof pn, "%s%s", p.base, sfx[k]);
            const st_tensor *t = st_find(w, pn);
            if (t)
                return kerr_add(err, "%s: tensor '%s' holds weight '%s' packed as integers, but %s "
                                     "has %s; kiln reads them with quant_method \"awq\", \"gptq\" "
                                     "or compressed-tensors format \"pack-quantized\"",
                                w->files[t->file].path, t->name, name, c->cfg->path,
                                s && s->have ? "an FP8 quantization_config"
                                             : "no quantization_config");
        }
        return 0;
    }
    const char *psfx = s->scheme == QS_CT_INT ? ".weight_packed" : ".qweight";
    p.fmt = s->scheme == QS_AWQ ? "AWQ" : s->scheme == QS_GPTQ ? "GPTQ" : "pack-quantized";
    snprintf(pn, sizeof pn, "%s%s", p.base, psfx);
    const st_tensor *pk = st_find(w, pn);
    if (!pk)
        return 0; /* stored plain, or not at all: bind_weights says which */
    used[pk - w->tensors] = 1;
    s->n_companions++;
    const char *hit = excluded(s, p.base);
    if (hit)
        return kerr_add(err, "%s: quantization_config.%s lists '%s', which names module '%s', but "
                             "the checkpoint stores it packed ('%s'); a module left unquantised is "
                             "stored as '%s': remove the entry or fix the checkpoint",
                        c->cfg->path, s->excl_field, hit, p.base, pk->name, name);
    if (pk->dtype != ST_I32 || pk->ndim != 2 || pk->shape[0] < 1 || pk->shape[1] < 1) {
        char got[128];
        return kerr_add(err, "%s: tensor '%s' is %s %s; %s weight '%s' is packed in a 2-D I32 "
                             "tensor (%s)",
                        w->files[pk->file].path, pk->name, st_dtype_name(pk->dtype),
                        st_shape_str(pk->ndim, pk->shape, got, sizeof got), p.fmt, name,
                        s->scheme == QS_AWQ    ? "[in, out / 8]"
                        : s->scheme == QS_GPTQ ? "[in * bits / 32, out]"
                                               : "[out, in * bits / 32]");
    }
    *out = s->scheme == QS_AWQ    ? deq_awq(&p, pk)
           : s->scheme == QS_GPTQ ? deq_gptq(&p, pk)
                                  : deq_ct(&p, pk);
    if (*out)
        compact(s);
    return *out ? 0 : -1;
}

/* ---------------------------------------------------------------- --quant fp8|int4 */

static const char *const MODE_NAMES[] = {[KC_QUANT_FP8] = "fp8", [KC_QUANT_INT4] = "int4"};

kc_quant quant_mode_parse(const char *name)
{
    for (int m = KC_QUANT_FP8; m <= KC_QUANT_INT4; m++)
        if (!strcmp(name, MODE_NAMES[m]))
            return (kc_quant)m;
    return KC_QUANT_NONE;
}

const char *quant_mode_name(kc_quant mode)
{
    assert(mode == KC_QUANT_FP8 || mode == KC_QUANT_INT4);
    return MODE_NAMES[mode];
}

/* --quant int4's group: the largest of 128, 64, 32 input columns that divides `in` (AWQ's 128
 * when it can; gemv_int4 reads groups of a multiple of 32), else the whole row. */
static int64_t int4_group(int64_t in)
{
    for (int64_t g = 128; g >= 32; g /= 2)
        if (in >= g && in % g == 0)
            return g;
    return in;
}

/* One weight being rounded (quant_round): t's values go to d [rows, cols], each row's scales
 * to sc and INT4's zero points to zp ([rows, g.kb]). */
typedef struct rowjob {
    quant_grid g;
    const st_tensor *t;
    float *d, *sc, *zp;
    int64_t cols;
    int nearest; /* round to nearest here; else the values only (GPTQ rounds them after) */
} rowjob;

/* The clipping searches' candidates (FP8's row scale, INT4's group grid): the range shrunk by
 * p = 1 - i / 100 for i < SHRINKS, as GPTQ's reference searches (quant.py with mse=True: grid
 * 100, maxshrink 0.8; AWQ searches so too), with the squared error where quant.py sums
 * |error|^2.4; the candidate of least squared error, the widest on a tie. */
#define SHRINKS 80
static float shrink(int i) { return 1.0f - (float)i / 100.0f; }

/* The searches' inner loops run 80 candidates over every weight of the model (most of kilnc
 * compile --quant's time): they are written so that the compiler vectorises them
 * (UTIL_AVX2_CLONE: a clone for AVX2 as well, picked at load time where the CPU has it)
 * and give the same sums, bit for bit, as the plain loop they replace: each element's squared
 * error by the same IEEE operations, SEARCH_CHUNK elements at a time, then added in element order;
 * the bound is tested once a chunk instead of once an element, which only lets a losing
 * candidate's sum run a little further past it. 1B shape on 2 cores: --quant int4 94 s to 32 s,
 * fp8 88 s to 29 s, the same shards byte for byte. */
#define SEARCH_CHUNK 32

/* The value of e4m3 byte kiln_kv8_e4m3(y), in float without the byte: saturated at 448; below
 * 2^-6 the subnormal grid of 2^-9 (round to nearest even, as rintf); else the mantissa kept to 3
 * bits by the encoder's own carry; the sign kept; NaN stays NaN, as the byte's decoding gives.
 * Each case is computed and one selected by masks (GCC 12 leaves ternaries on these integers as
 * branches, and then does not vectorise the search loop). */
static inline float e4m3_round(float y)
{
    const float sub = rintf(fabsf(y) * 512.0f) * 0x1p-9f;
    uint32_t u, a, s, r, m;
    float v;
    memcpy(&u, &y, sizeof u);
    memcpy(&s, &sub, sizeof s);
    a = u & 0x7fffffffu;
    r = (a + 0x7ffffu + ((a >> 20) & 1u)) & 0xfff00000u; /* normal */
    m = 0u - (uint32_t)(a < 0x3c800000u);               /* below 2^-6 */
    r = (s & m) | (r & ~m);
    m = 0u - (uint32_t)(a >= 0x43e00000u);              /* 448 and past it */
    r = (0x43e00000u & m) | (r & ~m);
    m = 0u - (uint32_t)(a > 0x7f800000u);               /* NaN */
    r = (a & m) | (r & ~m);
    r |= u & 0x80000000u;
    memcpy(&v, &r, sizeof v);
    return v;
}

/* The clamp to 0..15 by comparisons: as fminf(fmaxf(v, 0), 15), NaN included (it gives 0), without
 * libm's calls (not inlined at -O2), so the search below vectorises. */
static inline float int4_value(float w, float s, float z)
{
    float v = rintf(w / s) + z;
    v = v > 0.0f ? v : 0.0f;
    v = v < 15.0f ? v : 15.0f;
    return (v - z) * s; /* |q - z| <= 15, s of 8 (bf16) or 11 (f16) bits: exact */
}

/* The squared error of w [n] on a grid, or any value >= bound once the sum reaches it (a candidate
 * no better than the best so far is dropped there: the searches' cost, 80 passes over the weights,
 * is mostly of the candidates that lose early): int4, the grid s, z (int4_value); else e4m3 x s.
 * Inlined into fp8_err and int4_err (each its own clones), where int4 is a constant. */
static inline __attribute__((always_inline)) double grid_err(const float *w, int64_t n, int int4,
                                                             float s, float z, double bound)
{
    double e = 0, d2[SEARCH_CHUNK];
    int64_t k0 = 0;
    for (; k0 + SEARCH_CHUNK <= n && e < bound; k0 += SEARCH_CHUNK) {
        for (int i = 0; i < SEARCH_CHUNK; i++) {
            const float v = int4 ? int4_value(w[k0 + i], s, z) : e4m3_round(w[k0 + i] / s) * s;
            double d = (double)w[k0 + i] - (double)v;
            d2[i] = d * d;
        }
        for (int i = 0; i < SEARCH_CHUNK; i++)
            e += d2[i];
    }
    for (; k0 < n && e < bound; k0++) {
        const float v = int4 ? int4_value(w[k0], s, z) : e4m3_round(w[k0] / s) * s;
        double d = (double)w[k0] - (double)v;
        e += d * d;
    }
    return e;
}

/* The squared error of row [n] on e4m3 x s (grid_err). */
UTIL_AVX2_CLONE static double fp8_err(const float *row, int64_t n, float s, double bound)
{
    return grid_err(row, n, 0, s, 0.0f, bound);
}

/* absmax x p / 448 for the p of the search above: values past 448 x s saturate. e4m3 keeps 3
 * mantissa bits down to 2^-6 of its range and fewer below, so a smaller scale rounds a row's
 * small values finer at the cost of its largest; on the example model the search takes --quant
 * fp8's perplexity from +1.32% of bf16 to +0.04% (README). */
float quant_fp8_scale(const float *row, int64_t n)
{
    float amax = 0;
    for (int64_t k = 0; k < n; k++)
        amax = fabsf(row[k]) > amax ? fabsf(row[k]) : amax; /* a finite row */
    float s = amax / FP8_E4M3_MAX;
    if (!(s > 0))
        return 1.0f; /* a zero row, or one too small for its scale to be a float */
    double best = fp8_err(row, n, s, INFINITY);
    for (int i = 1; i < SHRINKS && best > 0; i++) {
        float si = shrink(i) * amax / FP8_E4M3_MAX;
        if (!(si > 0))
            break; /* below the smallest float */
        double e = fp8_err(row, n, si, best);
        if (e < best) {
            best = e;
            s = si;
        }
    }
    return s;
}

/* A zero is +0 whatever x's sign: the packer stores either zero as byte 0 (pack.c), so kilnc ref
 * computes with the weights the GPU reads, bit for bit. */
float quant_fp8_value(float x, float s)
{
    float v = e4m3_round(x / s) * s;
    return v == 0 ? 0.0f : v;
}

/* FP8: the row rounded to e4m3 with one scale (quant_fp8_scale). */
static void fp8_row(float *row, int64_t n, float *scale)
{
    float s = quant_fp8_scale(row, n);
    *scale = s;
    for (int64_t k = 0; k < n; k++)
        row[k] = quant_fp8_value(row[k], s);
}

/* x rounded to dt (BF16 or F16), as the GPU stores it. */
static float to_dt(float x, st_dtype dt)
{
    return dt == ST_F16 ? util_f16_to_f32(util_f32_to_f16(x))
                        : util_bf16_to_f32(util_f32_to_bf16(x));
}

float quant_int4_value(float w, float s, float z) { return int4_value(w, s, z); }

/* The grid of the range [lo, hi] (lo <= 0 <= hi): s = (hi - lo) / 15 in dt, z = rint(-lo / s)
 * in 0..15; -1 when s is Inf in dt. */
static int int4_range(float lo, float hi, st_dtype dt, float *scale, float *zero)
{
    double s0 = ((double)hi - (double)lo) / 15.0; /* in double: hi - lo can pass FLT_MAX */
    float s = s0 > FLT_MAX ? INFINITY : to_dt((float)s0, dt), z;
    if (isinf(s))
        return -1;
    if (s == 0) /* a zero group, or one below dt's smallest scale: its values round to 0 */
        s = 1.0f;
    z = rintf(-lo / s);
    *scale = s;
    *zero = z > 15 ? 15.0f : z > 0 ? z : 0.0f;
    return 0;
}

/* The smallest and largest of w [n] (finite) and 0. */
static void int4_span(const float *w, int64_t n, float *lo, float *hi)
{
    float l = 0, h = 0;
    for (int64_t k = 0; k < n; k++) {
        l = w[k] < l ? w[k] : l;
        h = w[k] > h ? w[k] : h;
    }
    *lo = l;
    *hi = h;
}

int quant_int4_params(const float *w, int64_t n, st_dtype dt, float *scale, float *zero)
{
    float lo, hi;
    int4_span(w, n, &lo, &hi);
    return int4_range(lo, hi, dt, scale, zero);
}

/* The squared error of w [n] on the INT4 grid s, z (grid_err). */
UTIL_AVX2_CLONE static double int4_err(const float *w, int64_t n, float s, float z, double bound)
{
    return grid_err(w, n, 1, s, z, bound);
}

/* Round to nearest's grid of a group (quant.h): the clipping search (above) of [lo, hi], both
 * ends shrunk alike, each candidate's scale rounded to dt before it is measured (so a group
 * already on its min/max grid keeps it). On the example model it takes --quant int4's
 * perplexity from +12.4% to +9.0% of bf16 (README). GPTQ keeps the min/max grid: this search
 * measured worse inside it (gptq.h). Its cost: 80 passes over each group's values. */
static int int4_search(const float *w, int64_t n, st_dtype dt, float *scale, float *zero)
{
    float lo, hi;
    int4_span(w, n, &lo, &hi);
    if (int4_range(lo, hi, dt, scale, zero))
        return -1;
    double best = int4_err(w, n, *scale, *zero, INFINITY);
    for (int i = 1; i < SHRINKS && best > 0; i++) {
        float p = shrink(i), s, z;
        int inf = int4_range(p * lo, p * hi, dt, &s, &z);
        assert(!inf); /* a narrower range than one whose scale was finite */
        (void)inf;
        double e = int4_err(w, n, s, z, best);
        if (e < best) {
            best = e;
            *scale = s;
            *zero = z;
        }
    }
    return 0;
}

/* INT4: the row rounded group by group (quant.h gives the rule), its scales and zero points in
 * sc and zp; -1, the row untouched, when a scale is Inf in dt (f16 weights past 65504 * 15). */
static int int4_row(const quant_grid *g, float *row, float *sc, float *zp)
{
    for (int64_t b = 0; b < g->kb; b++)
        if (int4_search(row + b * g->group, g->group, g->dt, &sc[b], &zp[b]))
            return -1;
    for (int64_t b = 0; b < g->kb; b++) {
        float *w = row + b * g->group;
        for (int64_t k = 0; k < g->group; k++)
            w[k] = quant_int4_value(w[k], sc[b], zp[b]);
    }
    return 0;
}

/* Rows [lo, hi) of quant_round; a row with NaN or Inf, or one int4_row refuses, is kept as it
 * is, its first scale NaN. */
static void round_part(void *ctx, int chunk, int64_t lo, int64_t hi)
{
    rowjob *q = ctx;
    (void)chunk;
    for (int64_t r = lo; r < hi; r++) {
        float *row = q->d + r * q->cols, *sc = q->sc + r * q->g.kb;
        int finite = 1;
        for (int64_t k = 0; k < q->cols; k++) {
            row[k] = scalar_at(q->t, (uint64_t)(r * q->cols + k));
            finite &= isfinite(row[k]) != 0;
        }
        if (!q->nearest)
            continue; /* gptq_round reads the values and makes the same checks */
        if (!finite) /* finite.c reports the row (or --allow-nonfinite) */
            sc[0] = NAN;
        else if (q->g.mode == KC_QUANT_FP8)
            fp8_row(row, q->cols, sc);
        else if (int4_row(&q->g, row, sc, q->zp + r * q->g.kb))
            sc[0] = NAN;
    }
}

quant_grid quant_grid_of(const kc *c, int64_t cols)
{
    int i4 = c->quant_mode == KC_QUANT_INT4;
    assert(!i4 || c->act_dtype == ST_BF16 || c->act_dtype == ST_F16);
    int64_t group = i4 ? int4_group(cols) : cols;
    return (quant_grid){c->quant_mode, c->act_dtype, group, group ? cols / group : 1};
}

const st_tensor *quant_round(kc *c, const st_tensor *t, const float *hessian, kerr *err)
{
    assert(t->ndim == 2 && (c->quant_mode == KC_QUANT_FP8 || c->quant_mode == KC_QUANT_INT4));
    int64_t rows = t->shape[0], cols = t->shape[1];
    quant_grid g = quant_grid_of(c, cols); /* group 0, kb 1: a weight of no columns */
    int i4 = g.mode == KC_QUANT_INT4;
    size_t nsc = (size_t)(rows * g.kb > 0 ? rows * g.kb : 1);
    st_tensor *o = own(c, t, NULL);
    rowjob q = {g, t, (float *)o->data, xmalloc(sizeof(float) * nsc),
                i4 ? xmalloc(sizeof(float) * nsc) : NULL, cols, !hessian};
    util_parallel_for(rows, round_part, &q); /* rows on every core: an 8B model has 7B weights */
    if (hessian && gptq_round(&g, hessian, q.d, rows, cols, q.sc, q.zp)) {
        free(q.sc);
        free(q.zp);
        return kerr_add(err, "--calibrate: tensor '%s': the Hessian of its input (from the "
                             "calibration text) is not positive definite even with GPTQ's "
                             "damping; try more or other text",
                        t->name),
               NULL;
    }
    int all = 1;
    for (int64_t r = 0; r < rows; r++)
        all &= !isnan(q.sc[r * g.kb]);
    if (all) /* else the packer stores the weight in the compute dtype */
        c->quant->rows[c->quant->n - 1] =
            (qrows){i4 ? QROWS_INT4 : QROWS_E4M3, g.group == cols ? 0 : g.group, q.sc, q.zp};
    else {
        free(q.sc);
        free(q.zp);
    }
    if (hessian)
        c->quant->n_gptq++;
    compact(c->quant);
    return o;
}

const qrows *quant_rows(const kc *c, const st_tensor *t)
{
    const quant_state *s = c->quant;
    for (int i = 0; s && i < s->n; i++)
        if (s->owned[i] == t)
            return s->rows[i].kind ? &s->rows[i] : NULL;
    return NULL;
}

/* quant_describe's end for --quant: how the values were chosen. */
static void gptq_note(const kc *c, const quant_state *s, char *buf, size_t cap)
{
    if (s->n_gptq)
        snprintf(buf, cap, " (computed here in fp32; %d by GPTQ calibrated on %d tokens of %s)",
                 s->n_gptq, c->calib_ran, c->calib_path);
    else
        snprintf(buf, cap, " (computed here in fp32)");
}

const char *quant_describe(const kc *c, char *buf, size_t cap)
{
    const quant_state *s = c->quant;
    if (!s || !s->n)
        return NULL;
    if (c->quant_mode == KC_QUANT_FP8) {
        int k = snprintf(buf, cap, "--quant fp8: %d linear weight%s rounded to e4m3 with a scale "
                                   "per row",
                         s->n, s->n == 1 ? "" : "s");
        if (k >= 0 && (size_t)k < cap)
            gptq_note(c, s, buf + k, cap - (size_t)k);
        return buf;
    }
    if (c->quant_mode == KC_QUANT_INT4) {
        /* how many weights have each group size (int4_group's: 128, 64, 32 columns, or the
         * row: block 0 is also a group of 128 columns in a row of 128); a weight with NaN or
         * Inf has no quantised form and is counted apart */
        int n[4] = {0}, none = 0;
        for (int i = 0; i < s->n; i++) {
            int64_t b = s->rows[i].block ? s->rows[i].block : s->owned[i]->shape[1];
            if (!s->rows[i].kind)
                none++;
            else
                n[b == 128 ? 0 : b == 64 ? 1 : b == 32 ? 2 : 3]++;
        }
        static const char *const what[4] = {"in groups of 128", "in groups of 64",
                                            "in groups of 32", "with one group per row"};
        int k = snprintf(buf, cap, "--quant int4: %d linear weight%s rounded to INT4 (%s, "
                                   "asymmetric, %s scale and zero point per group of input "
                                   "columns):",
                         s->n, s->n == 1 ? "" : "s", s->n_gptq ? "GPTQ" : "round to nearest",
                         c->act_dtype == ST_F16 ? "an f16" : "a bf16");
        const char *sep = " ";
        for (int g = 0; g < 4; g++)
            if (n[g] && k >= 0 && (size_t)k < cap) {
                k += snprintf(buf + k, cap - (size_t)k, "%s%d %s", sep, n[g], what[g]);
                sep = ", ";
            }
        if (none && k >= 0 && (size_t)k < cap)
            k += snprintf(buf + k, cap - (size_t)k, "%s%d with NaN or Inf (not packed as INT4)",
                          sep, none);
        if (k >= 0 && (size_t)k < cap)
            gptq_note(c, s, buf + k, cap - (size_t)k);
        return buf;
    }
    if (is_int(s)) {
        char grp[64];
        if (s->group)
            snprintf(grp, sizeof grp, "group size %lld", (long long)s->group);
        else
            snprintf(grp, sizeof grp, "one group per row");
        snprintf(buf, cap, "%d weight%s %s %d-bit%s, %s (%d tensors read), dequantised to fp32",
                 s->n, s->n == 1 ? "" : "s",
                 s->scheme == QS_AWQ ? "AWQ" : s->scheme == QS_GPTQ ? "GPTQ" : "pack-quantized",
                 s->bits,
                 s->scheme == QS_AWQ    ? " (gemm)"
                 : s->scheme == QS_CT_INT ? " (symmetric)"
                 : s->zero_plus1        ? " (format gptq: zero points stored minus one)"
                                        : " (format gptq_v2)",
                 grp, s->n_companions);
        return buf;
    }
    static const char *const names[] = {
        [QS_CT_TENSOR] = "compressed-tensors per-tensor", [QS_CT_CHANNEL] = "compressed-tensors per-channel",
        [QS_CT_BLOCK] = "compressed-tensors block", [QS_FBGEMM] = "fbgemm_fp8 per-row",
        [QS_BLOCK] = "fp8 block"};
    int n = snprintf(buf, cap, "%d weight%s F8_E4M3 with %s scales", s->n, s->n == 1 ? "" : "s",
                     names[s->scheme]);
    if (n >= 0 && (size_t)n < cap && (s->scheme == QS_CT_BLOCK || s->scheme == QS_BLOCK))
        n += snprintf(buf + n, cap - (size_t)n, " [%lld, %lld]", (long long)s->br, (long long)s->bc);
    if (n >= 0 && (size_t)n < cap)
        snprintf(buf + n, cap - (size_t)n, " (%d scale tensor%s), dequantised to fp32",
                 s->n_companions, s->n_companions == 1 ? "" : "s");
    return buf;
}

void quant_free(kc *c)
{
    quant_state *s = c->quant;
    if (!s)
        return;
    for (int i = 0; i < s->n; i++) {
        free((void *)s->owned[i]->data);
        free(s->owned[i]);
        free(s->rows[i].scale);
        free(s->rows[i].zero);
    }
    free(s->owned);
    free(s->rows);
    for (int i = 0; i < s->n_excl; i++) {
        free(s->excl[i].text);
        pcre2_code_free(s->excl[i].re);
    }
    free(s->excl);
    free(s);
    c->quant = NULL;
}
