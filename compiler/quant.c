/* quant — see quant.h. The dequantised tensors live in one list owned by the kc (kilnc runs
 * once: they are freed with it by quant_free). */
#include "quant.h"

#include <assert.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum {
    QS_CT_TENSOR,  /* compressed-tensors, one scale per tensor */
    QS_CT_CHANNEL, /* compressed-tensors, one scale per output row */
    QS_CT_BLOCK,   /* compressed-tensors, block_structure [br, bc] */
    QS_FBGEMM,     /* fbgemm_fp8: one scale per output row */
    QS_BLOCK,      /* fp8 (DeepSeek / Qwen FP8): weight_scale_inv per [br, bc] block */
} qscheme;

typedef struct quant_state {
    int have;         /* config.json has a quantization_config */
    qscheme scheme;
    int64_t br, bc;   /* block rows and columns (block schemes) */
    st_tensor **owned;
    int n, cap;
    int n_companions; /* scale tensors read and input scales skipped (FP8 checkpoints) */
} quant_state;

/* ---------------------------------------------------------------- e4m3 */

float fp8_e4m3_to_f32(uint8_t b)
{
    int e = (b >> 3) & 15, m = b & 7;
    float v = e == 15 && m == 7 ? NAN
              : e == 0          ? ldexpf((float)m, -9)
                                : ldexpf((float)(8 + m), e - 10);
    return b & 0x80 ? -v : v;
}

uint8_t fp8_e4m3_from_f32(float x)
{
    assert(!isnan(x));
    uint8_t s = signbit(x) ? 0x80 : 0;
    float a = fabsf(x);
    if (a >= FP8_E4M3_MAX)
        return s | 0x7e;
    if (a < 0x1p-6f) /* subnormals step 2^-9; rintf ties to even; 8 << -9 is the first normal */
        return s | (uint8_t)rintf(a * 512.0f);
    int e;
    frexpf(a, &e); /* a = f * 2^e, f in [0.5, 1): exponent e - 1, mantissa in [8, 16) eighths */
    int E = e - 1, m = (int)rintf(ldexpf(a, 4 - e));
    if (m == 16) {
        m = 8;
        E++;
    }
    if (E > 8 || (E == 8 && m > 14)) /* above 448 after rounding: saturate */
        return s | 0x7e;
    return s | (uint8_t)((E + 7) << 3) | (uint8_t)(m - 8);
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

/* compressed-tensors: every config group must quantise weights the same FP8 way. */
static int read_ct(kc *c, json_t *q, quant_state *s, kerr *err)
{
    const char *path = c->cfg->path, *fmt = jstr(q, "format");
    if (!fmt || (strcmp(fmt, "float-quantized") && strcmp(fmt, "naive-quantized")))
        return kerr_add(err, "%s: quantization_config.format is '%s'; kiln reads compressed-tensors "
                             "FP8 checkpoints ('float-quantized' or 'naive-quantized')",
                        path, fmt ? fmt : "(missing)");
    json_t *kv = json_object_get(q, "kv_cache_scheme");
    if (kv && !json_is_null(kv))
        return kerr_add(err, "%s: quantization_config.kv_cache_scheme is set; an FP8 KV cache is "
                             "not supported yet (remove the field to run with a bf16 cache)",
                        path);
    json_t *groups = json_object_get(q, "config_groups");
    if (!json_is_object(groups) || json_object_size(groups) == 0)
        return kerr_add(err, "%s: quantization_config.config_groups must be a non-empty object",
                        path);
    const char *key, *strat0 = NULL;
    json_t *g;
    json_object_foreach(groups, key, g) {
        json_t *w = json_object_get(g, "weights");
        json_t *bits = json_object_get(w, "num_bits");
        const char *type = jstr(w, "type"), *strat = jstr(w, "strategy");
        if (!json_is_object(w) || !json_is_integer(bits) || json_integer_value(bits) != 8 || !type ||
            strcmp(type, "float"))
            return kerr_add(err, "%s: quantization_config.config_groups.%s.weights: kiln reads "
                                 "8-bit float weights (num_bits 8, type \"float\"); integer "
                                 "weights (AWQ, GPTQ, W4A16) are not supported yet",
                            path, key);
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
                         "\"compressed-tensors\" (FP8), \"fbgemm_fp8\" and \"fp8\" (block-scaled) "
                         "checkpoints, or quantises a bf16 one with 'kilnc compile --quant fp8'",
                    path, m ? m : "(missing)");
}

/* ---------------------------------------------------------------- tensors */

static st_tensor *own(kc *c, const st_tensor *like)
{
    quant_state *s = state(c);
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        s->owned = xrealloc(s->owned, sizeof *s->owned * (size_t)s->cap);
    }
    st_tensor *t = xmalloc(sizeof *t);
    *t = *like;
    t->dtype = ST_F32;
    t->nbytes = t->numel * sizeof(float);
    t->data = xmalloc(t->nbytes ? t->nbytes : 1);
    s->owned[s->n++] = t;
    return t;
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
    st_tensor *o = own(c, t);
    const uint8_t *q = t->data;
    float *d = (float *)o->data;
    int64_t brr = sr == 1 ? rows : (s->scheme == QS_CT_BLOCK || s->scheme == QS_BLOCK ? s->br : 1);
    int64_t bcc = scl == 1 ? cols : s->bc;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < cols; k++)
            d[r * cols + k] = fp8_e4m3_to_f32(q[r * cols + k]) *
                              scalar_at(sc, (uint64_t)((r / brr) * scl + k / bcc));
    return o;
}

const st_tensor *quant_fp8_rows(kc *c, const st_tensor *t)
{
    assert(t->ndim == 2);
    int64_t rows = t->shape[0], cols = t->shape[1];
    st_tensor *o = own(c, t);
    float *d = (float *)o->data;
    for (int64_t r = 0; r < rows; r++) {
        float *row = d + r * cols, amax = 0;
        int finite = 1;
        for (int64_t k = 0; k < cols; k++) {
            row[k] = scalar_at(t, (uint64_t)(r * cols + k));
            finite &= isfinite(row[k]) != 0;
            if (fabsf(row[k]) > amax)
                amax = fabsf(row[k]);
        }
        if (!finite) /* kept as it is: finite.c reports the row (or --allow-nonfinite) */
            continue;
        float scale = amax / FP8_E4M3_MAX;
        if (!(scale > 0)) /* an all-zero row, or one too small for its scale to be a float */
            scale = 1.0f;
        for (int64_t k = 0; k < cols; k++)
            row[k] = fp8_e4m3_to_f32(fp8_e4m3_from_f32(row[k] / scale)) * scale;
    }
    return o;
}

const char *quant_describe(const kc *c, char *buf, size_t cap)
{
    const quant_state *s = c->quant;
    if (!s || !s->n)
        return NULL;
    if (c->quant_fp8) {
        snprintf(buf, cap, "--quant fp8: %d linear weight%s rounded to e4m3 with a scale per row "
                           "(computed here in fp32)",
                 s->n, s->n == 1 ? "" : "s");
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
    }
    free(s->owned);
    free(s);
    c->quant = NULL;
}
