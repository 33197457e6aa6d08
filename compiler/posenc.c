/* posenc — see posenc.h. Each formula names the transformers function it mirrors. */
#include "posenc.h"

#include <assert.h>
#include <math.h>

/* base ** (arange(0, dim, 2) / dim) in float32, then 1 / that: _compute_default_rope_parameters */
static void default_freqs(double base, int dim, float *out)
{
    for (int i = 0; i < dim / 2; i++) {
        float e = (float)(2 * i) / (float)dim;
        out[i] = 1.0f / powf((float)base, e);
    }
}

void posenc_rope_inv_freq(const kg_rope *r, int64_t seq_len, float *inv)
{
    const rope_params *p = &r->p;
    int dim = r->rot_dim, half = dim / 2;
    switch (p->type) {
    case ROPE_DEFAULT:
        default_freqs(p->theta, dim, inv);
        break;
    case ROPE_LINEAR: /* _compute_linear_scaling_rope_parameters */
        default_freqs(p->theta, dim, inv);
        for (int i = 0; i < half; i++)
            inv[i] /= (float)p->factor;
        break;
    case ROPE_DYNAMIC: { /* _compute_dynamic_ntk_parameters, recomputed when seq_len grows */
        double base = p->theta;
        if (seq_len > p->max_pos && p->max_pos > 0) {
            double s = (double)seq_len;
            base = p->theta * pow(p->factor * s / (double)p->max_pos - (p->factor - 1),
                                  (double)dim / (double)(dim - 2));
        }
        default_freqs(base, dim, inv);
        break;
    }
    case ROPE_LLAMA3: { /* _compute_llama3_parameters */
        default_freqs(p->theta, dim, inv);
        double old = (double)p->original_max_pos;
        double low_wl = old / p->low_freq_factor, high_wl = old / p->high_freq_factor;
        for (int i = 0; i < half; i++) {
            float f = inv[i];
            double wl = 2 * M_PI / f;
            float scaled = wl > low_wl ? f / (float)p->factor : f;
            if (!(wl < high_wl) && !(wl > low_wl)) {
                float smooth = (float)((old / wl - p->low_freq_factor) /
                                       (p->high_freq_factor - p->low_freq_factor));
                scaled = (1 - smooth) * scaled / (float)p->factor + smooth * scaled;
            }
            inv[i] = scaled;
        }
        break;
    }
    case ROPE_YARN: { /* _compute_yarn_parameters */
        double base = p->theta, factor = p->factor;
        double omax = (double)p->original_max_pos;
#define CORR(rot) ((dim * log(omax / ((rot) * 2 * M_PI))) / (2 * log(base)))
        double low = CORR(p->beta_fast), high = CORR(p->beta_slow);
#undef CORR
        if (p->truncate) {
            low = floor(low);
            high = ceil(high);
        }
        if (low < 0)
            low = 0;
        if (high > dim - 1)
            high = dim - 1;
        if (low == high)
            high += 0.001;
        for (int i = 0; i < half; i++) {
            float pos_freq = powf((float)base, (float)(2 * i) / (float)dim);
            float extra = 1.0f / pos_freq, inter = 1.0f / ((float)factor * pos_freq);
            float ramp = (float)(((double)i - low) / (high - low));
            ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
            float extra_factor = 1 - ramp;
            inv[i] = inter * (1 - extra_factor) + extra * extra_factor;
        }
        break;
    }
    case ROPE_LONGROPE: { /* _compute_longrope_parameters, as longrope_frequency_update calls it */
        assert(p->n_factors == half);
        const float *ext = posenc_rope_long(r, seq_len) ? p->long_factor : p->short_factor;
        for (int i = 0; i < half; i++) {
            float e = (float)(2 * i) / (float)dim;
            inv[i] = 1.0f / (ext[i] * powf((float)p->theta, e));
        }
        break;
    }
    default:
        default_freqs(p->theta, dim, inv);
        break;
    }
}

int posenc_rope_long(const kg_rope *r, int64_t seq_len)
{
    return r->p.type == ROPE_LONGROPE && seq_len > r->p.original_max_pos;
}

float posenc_rope_scale(const kg_rope *r, int64_t seq_len)
{
    if (r->p.type == ROPE_LONGROPE)
        return (float)(posenc_rope_long(r, seq_len) ? r->p.long_attention_factor
                                                     : r->p.attention_factor);
    return r->p.type == ROPE_YARN ? (float)r->p.attention_factor : 1.0f;
}

int64_t posenc_rope_switch(const kgraph *g)
{
    int64_t sw = 0;
    for (int i = 0; i < g->n; i++) {
        const kg_node *n = &g->nodes[i];
        if (n->op != KG_ROPE || n->rope.p.type != ROPE_LONGROPE)
            continue;
        assert(n->rope.p.original_max_pos >= 1);
        assert(sw == 0 || sw == n->rope.p.original_max_pos);
        sw = n->rope.p.original_max_pos;
    }
    return sw;
}

int64_t posenc_max_len(const kgraph *g, int64_t maxpos)
{
    double f = 1; /* config.c reads the factor unchecked: only a finite one above 1 extends */
    for (int i = 0; i < g->n; i++) {
        const kg_node *n = &g->nodes[i];
        if (n->op == KG_ROPE && n->rope.p.type == ROPE_DYNAMIC && isfinite(n->rope.p.factor) &&
            n->rope.p.factor > f)
            f = n->rope.p.factor;
    }
    double m = floor((double)maxpos * f);
    return m >= (double)INT32_MAX ? INT32_MAX : (int64_t)m;
}

/* BLOOM build_alibi_tensor: slopes for the closest power of two below n, then every other
 * slope of the next power of two for the remaining heads. */
void posenc_alibi_slopes(int n, float *slopes)
{
    int cp = 1;
    while (cp * 2 <= n)
        cp *= 2;
    float base = (float)pow(2.0, -pow(2.0, -(log2((double)cp) - 3)));
    for (int i = 0; i < cp; i++)
        slopes[i] = powf(base, (float)(i + 1));
    if (cp != n) {
        float extra = (float)pow(2.0, -pow(2.0, -(log2((double)(2 * cp)) - 3)));
        int rem = n - cp < cp ? n - cp : cp;
        for (int i = 0; i < rem; i++)
            slopes[cp + i] = powf(extra, (float)(1 + 2 * i));
    }
}
