/* ref — see ref.h. Each op is computed the way HF transformers computes it in fp32 (the
 * comments name the module), in plain loops: this file is read to answer "what should the
 * kernel compute", so clarity wins over speed everywhere but the matrix-vector inner loop.
 */
#include "ref.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/kiln_kv8.h"
#include "posenc.h"
#include "quant.h"

/* A constant: a weight read in place, or a materialised view. Always contiguous, row-major. */
typedef struct cval {
    st_dtype dt;       /* F32, F16 or BF16 */
    const void *data;
    uint64_t numel;
    float *owned;      /* materialised data (dt F32), freed with the ref */
    int ready;
} cval;

typedef struct kv {
    float *k, *v; /* [max_seq, kv_heads * head_dim] (the rank's heads); MLA: k is
                     [max_seq, rank + rope_dim] (latent, shared key), v is NULL */
} kv;

/* One simulated rank of a sharded graph (one in all for an unsharded graph). */
typedef struct rank_state {
    cval *consts;     /* per node; only constants that differ by rank (by_rank) are used from
                         ranks other than 0 */
    float **val;      /* per node, [n, row] */
    kv *cache;        /* per attention layer */
} rank_state;

struct ref {
    const kgraph *g;
    int max_seq;
    int len;          /* tokens already in the cache */
    int n;            /* tokens of the current forward */
    int64_t rope_len; /* ref_set_rope_len: longrope's / dynamic NTK's length at least this */
    int kv_fp8;       /* ref_set_kv_fp8: K and V rounded as the FP8 cache stores them */
    int64_t *pos;     /* [n] positions of the current forward */
    const int64_t *ids, *types;
    int tp;           /* simulated ranks: g->tp */
    rank_state *ranks; /* [tp] */
    int k;            /* the rank being computed; val and cache below are its own */
    float **val;      /* = ranks[k].val */
    kv *cache;        /* = ranks[k].cache */
    unsigned char *by_rank; /* per node: a constant whose value differs by rank (a SHARD, or
                               a view of one) */
    int *last_use;    /* per node: the last node reading it */
    unsigned char *keep;
    int stop;         /* forwards compute nodes [0, stop) (ref_stop_after; g->n by default) */
    float *scratch;   /* row conversion buffer */
    size_t scratch_len;
};

/* ---------------------------------------------------------------- helpers */

static int64_t row_width(const kg_node *n)
{
    int64_t w = 1;
    for (int i = 1; i < n->ndim; i++)
        w *= n->shape[i];
    return w;
}

static float elem(st_dtype dt, const void *p, uint64_t i)
{
    switch (dt) {
    case ST_F32: return ((const float *)p)[i];
    case ST_BF16: return util_bf16_to_f32(((const uint16_t *)p)[i]);
    case ST_F16: return util_f16_to_f32(((const uint16_t *)p)[i]);
    default: return NAN;
    }
}

/* `width` elements starting at element `off` of a constant, as floats: in place when the
 * constant is F32, else converted into buf. */
static const float *crow(const cval *c, uint64_t off, int64_t width, float *buf)
{
    if (c->dt == ST_F32)
        return (const float *)c->data + off;
    if (c->dt == ST_BF16) {
        const uint16_t *s = (const uint16_t *)c->data + off;
        for (int64_t i = 0; i < width; i++)
            buf[i] = util_bf16_to_f32(s[i]);
    } else {
        for (int64_t i = 0; i < width; i++)
            buf[i] = elem(c->dt, c->data, off + (uint64_t)i);
    }
    return buf;
}

static float dot(const float *a, const float *b, int64_t n)
{
    /* eight partial sums: lets the compiler vectorise without -ffast-math */
    float s[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            s[k] += a[i + k] * b[i + k];
    float t = 0;
    for (; i < n; i++)
        t += a[i] * b[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])) + t;
}

/* DOT_T inputs (rows of x, `xs` floats apart) by DOT_W weight rows: r[t][o] = dot(x + t * xs,
 * w[o], n) to the bit (each lane of a v8 is one of dot's eight sums, added in its order), but
 * each vector of x and w loaded once for DOT_W or DOT_T products instead of once for each, and
 * the sums in registers: an 8B-shaped layer's 256-token prefill 2.7x faster on one core (12 to 33
 * GFLOP/s), the outputs the same. UTIL_AVX2_CLONE (util.h). */
#define DOT_T 4
#define DOT_W 2
typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4))); /* a load from any float */
UTIL_AVX2_CLONE static void dot_block(const float *x, int64_t xs, const float *const w[DOT_W],
                                      int64_t n, float r[DOT_T][DOT_W])
{
    const float *w0 = w[0], *w1 = w[1];
    const float *x0 = x, *x1 = x + xs, *x2 = x + 2 * xs, *x3 = x + 3 * xs;
    v8 s00 = {0}, s01 = {0}, s10 = {0}, s11 = {0}, s20 = {0}, s21 = {0}, s30 = {0}, s31 = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        v8 a = *(const v8u *)(w0 + i), b = *(const v8u *)(w1 + i), v;
        v = *(const v8u *)(x0 + i);
        s00 += v * a;
        s01 += v * b;
        v = *(const v8u *)(x1 + i);
        s10 += v * a;
        s11 += v * b;
        v = *(const v8u *)(x2 + i);
        s20 += v * a;
        s21 += v * b;
        v = *(const v8u *)(x3 + i);
        s30 += v * a;
        s31 += v * b;
    }
    const v8 sums[DOT_T][DOT_W] = {{s00, s01}, {s10, s11}, {s20, s21}, {s30, s31}};
    for (int t = 0; t < DOT_T; t++)
        for (int o = 0; o < DOT_W; o++) {
            const v8 e = sums[t][o];
            float tail = 0;
            for (int64_t j = i; j < n; j++)
                tail += x[t * xs + j] * w[o][j];
            r[t][o] = ((e[0] + e[1]) + (e[2] + e[3])) + ((e[4] + e[5]) + (e[6] + e[7])) + tail;
        }
}

static float *scratch(ref *r, size_t n)
{
    if (n > r->scratch_len) {
        free(r->scratch);
        r->scratch = xmalloc(sizeof(float) * n);
        r->scratch_len = n;
    }
    return r->scratch;
}

/* Splits a shape around `dim`: outer = prod(shape[:dim]), inner = prod(shape[dim+1:]). */
static void around(const int64_t *shape, int ndim, int dim, int64_t rows0, int64_t *outer,
                   int64_t *inner)
{
    *outer = 1;
    *inner = 1;
    for (int i = 0; i < ndim; i++) {
        int64_t s = i == 0 && shape[0] < 0 ? rows0 : shape[i];
        if (i < dim)
            *outer *= s;
        else if (i > dim)
            *inner *= s;
    }
}

static void slice_f32(const float *src, const int64_t *sshape, int ndim, int dim, int64_t start,
                      int64_t len, int64_t rows0, float *dst)
{
    int64_t outer, inner;
    around(sshape, ndim, dim, rows0, &outer, &inner);
    int64_t sd = sshape[dim];
    for (int64_t o = 0; o < outer; o++)
        memcpy(dst + o * len * inner, src + (o * sd + start) * inner,
               sizeof(float) * (size_t)(len * inner));
}

/* ---------------------------------------------------------------- constants */

static const cval *const_get(ref *r, int id);

static float *materialize_f32(const cval *c)
{
    float *f = xmalloc(sizeof(float) * (c->numel ? c->numel : 1));
    for (uint64_t i = 0; i < c->numel; i++)
        f[i] = elem(c->dt, c->data, i);
    return f;
}

/* The slot of constant `id` for the rank being computed: its own when the value differs by
 * rank, else rank 0's (made once, shared by every rank). */
static cval *cslot(ref *r, int id)
{
    return &r->ranks[r->by_rank[id] ? r->k : 0].consts[id];
}

/* c = s[start : start + len] along `dim` of the constant sn, followed by `pad` zeros along it
 * (a padded SHARD): an alias when that is one contiguous block of s, else materialised in
 * fp32. */
static void const_range(cval *c, const cval *s, const kg_node *sn, int dim, int64_t start,
                        int64_t len, int64_t pad)
{
    int64_t outer, inner;
    around(sn->shape, sn->ndim, dim, 0, &outer, &inner);
    if (outer == 1 && pad == 0) { /* a contiguous block: alias it */
        c->dt = s->dt;
        c->data = (const char *)s->data + (size_t)(start * inner) * st_dtype_size(s->dt);
        return;
    }
    float *src = s->dt == ST_F32 ? (float *)s->data : materialize_f32(s);
    c->owned = xcalloc(c->numel ? c->numel : 1, sizeof(float));
    int64_t sd = sn->shape[dim], w = len + pad;
    for (int64_t o = 0; o < outer; o++)
        memcpy(c->owned + o * w * inner, src + (o * sd + start) * inner,
               sizeof(float) * (size_t)(len * inner));
    if (src != s->data)
        free(src);
    c->dt = ST_F32;
    c->data = c->owned;
}

static const cval *const_get(ref *r, int id)
{
    cval *c = cslot(r, id);
    if (c->ready)
        return c;
    const kg_node *n = &r->g->nodes[id];
    c->numel = graph_numel_const(n);
    switch (n->op) {
    case KG_WEIGHT:
        if (n->bound->dtype == ST_U8) { /* a quantised weight's codes: their values, once */
            c->owned = xmalloc(sizeof(float) * (c->numel ? c->numel : 1));
            quant_values(n->bound, 0, c->numel, c->owned);
            c->dt = ST_F32;
            c->data = c->owned;
            break;
        }
        c->dt = n->bound->dtype;
        c->data = n->bound->data;
        break;
    case KG_RESHAPE: { /* contiguous: same bytes, new shape */
        const cval *s = const_get(r, n->in[0]);
        c->dt = s->dt;
        c->data = s->data;
        break;
    }
    case KG_SLICE:
        const_range(c, const_get(r, n->in[0]), &r->g->nodes[n->in[0]], n->dim, n->start,
                    n->len, 0);
        break;
    case KG_SHARD: { /* this rank's part: part k * parts / tp of `dim`, then pad zeros (graph.h) */
        const kg_node *sn = &r->g->nodes[n->in[0]];
        assert(n->parts >= 1 && r->tp % n->parts == 0 && sn->shape[n->dim] % n->parts == 0);
        int64_t len = sn->shape[n->dim] / n->parts, part = (int64_t)r->k * n->parts / r->tp;
        assert(n->shape[n->dim] == len + n->pad);
        const_range(c, const_get(r, n->in[0]), sn, n->dim, part * len, len, n->pad);
        break;
    }
    case KG_CONCAT: {
        c->owned = xmalloc(sizeof(float) * c->numel);
        int64_t outer, inner;
        around(n->shape, n->ndim, n->dim, 0, &outer, &inner);
        int64_t at = 0;
        for (int k = 0; k < n->n_in; k++) {
            const cval *s = const_get(r, n->in[k]);
            int64_t d = r->g->nodes[n->in[k]].shape[n->dim];
            for (int64_t o = 0; o < outer; o++)
                for (int64_t i = 0; i < d * inner; i++)
                    c->owned[(o * n->shape[n->dim] + at) * inner + i] =
                        elem(s->dt, s->data, (uint64_t)(o * d * inner + i));
            at += d;
        }
        c->dt = ST_F32;
        c->data = c->owned;
        break;
    }
    case KG_TRANSPOSE: {
        const cval *s = const_get(r, n->in[0]);
        const kg_node *sn = &r->g->nodes[n->in[0]];
        int64_t sstride[KG_MAX_DIMS], idx[KG_MAX_DIMS] = {0};
        int64_t st = 1;
        for (int i = sn->ndim - 1; i >= 0; i--) {
            sstride[i] = st;
            st *= sn->shape[i];
        }
        /* output dim a reads source dim b and vice versa */
        int64_t ostride[KG_MAX_DIMS];
        for (int i = 0; i < n->ndim; i++)
            ostride[i] = sstride[i];
        ostride[n->dim] = sstride[n->dim2];
        ostride[n->dim2] = sstride[n->dim];
        c->owned = xmalloc(sizeof(float) * c->numel);
        for (uint64_t o = 0; o < c->numel; o++) {
            int64_t si = 0;
            for (int i = 0; i < n->ndim; i++)
                si += idx[i] * ostride[i];
            c->owned[o] = elem(s->dt, s->data, (uint64_t)si);
            for (int i = n->ndim - 1; i >= 0; i--) {
                if (++idx[i] < n->shape[i])
                    break;
                idx[i] = 0;
            }
        }
        c->dt = ST_F32;
        c->data = c->owned;
        break;
    }
    case KG_SCALE: { /* a row-parallel bias' share (shard.c) */
        const cval *s = const_get(r, n->in[0]);
        c->owned = xmalloc(sizeof(float) * (c->numel ? c->numel : 1));
        for (uint64_t i = 0; i < c->numel; i++)
            c->owned[i] = (float)((double)elem(s->dt, s->data, i) * n->scalar);
        c->dt = ST_F32;
        c->data = c->owned;
        break;
    }
    default:
        /* graph_verify guarantees constants are built only from the ops above */
        abort();
    }
    c->ready = 1;
    return c;
}

/* ---------------------------------------------------------------- lifecycle */

/* Makes rank k the one the ops compute. */
static void set_rank(ref *r, int k)
{
    r->k = k;
    r->val = r->ranks[k].val;
    r->cache = r->ranks[k].cache;
}

ref *ref_new(const kgraph *g, int max_seq, kerr *err)
{
    assert(g->tp >= 1);
    if (max_seq < 1) {
        kerr_add(err, "ref: max_seq must be positive");
        return NULL;
    }
    for (int i = 0; i < g->n; i++)
        if (g->nodes[i].op == KG_WEIGHT && !g->nodes[i].bound) {
            kerr_add(err, "ref: weight '%s' is not bound (run bind_weights first)",
                     g->nodes[i].weight);
            return NULL;
        }
    ref *r = xcalloc(1, sizeof *r);
    r->g = g;
    r->max_seq = max_seq;
    r->tp = g->tp;
    r->keep = xcalloc((size_t)g->n, 1);
    r->by_rank = xcalloc((size_t)g->n, 1);
    r->last_use = xmalloc(sizeof(int) * (size_t)g->n);
    for (int i = 0; i < g->n; i++) {
        const kg_node *n = &g->nodes[i];
        r->last_use[i] = i;
        r->by_rank[i] = n->is_const && n->op == KG_SHARD;
        for (int k = 0; k < n->n_in; k++)
            if (n->in[k] >= 0) {
                r->last_use[n->in[k]] = i;
                r->by_rank[i] |= n->is_const && r->by_rank[n->in[k]];
            }
    }
    r->keep[g->output] = 1;
    r->stop = g->n;
    r->ranks = xcalloc((size_t)r->tp, sizeof(rank_state));
    for (int k = 0; k < r->tp; k++) {
        rank_state *rk = &r->ranks[k];
        rk->consts = xcalloc((size_t)g->n, sizeof(cval));
        rk->val = xcalloc((size_t)g->n, sizeof(float *));
        rk->cache = xcalloc((size_t)(g->n_layers ? g->n_layers : 1), sizeof(kv));
    }
    set_rank(r, 0);
    for (int i = 0; i < g->n; i++) {
        const kg_node *n = &g->nodes[i];
        if (n->op != KG_ATTENTION && n->op != KG_MLA)
            continue;
        /* MLA caches only the latent and the shared rotated key, in k */
        int mla = n->op == KG_MLA, layer = mla ? n->mla.layer : n->attn.layer;
        size_t w = mla ? (size_t)n->mla.rank + (size_t)n->mla.rope_dim
                       : (size_t)n->attn.n_kv_heads * (size_t)n->attn.head_dim;
        for (int k = 0; k < r->tp; k++) {
            kv *c = &r->ranks[k].cache[layer];
            c->k = calloc((size_t)max_seq * w, sizeof(float));
            c->v = mla ? NULL : calloc((size_t)max_seq * w, sizeof(float));
            if (!c->k || (!mla && !c->v)) {
                kerr_add(err, "ref: cannot allocate the KV cache for %d tokens%s", max_seq,
                         r->tp > 1 ? " on every rank" : "");
                ref_free(r);
                return NULL;
            }
        }
    }
    return r;
}

static void free_values(ref *r)
{
    for (int k = 0; k < r->tp; k++)
        for (int i = 0; i < r->g->n; i++) {
            free(r->ranks[k].val[i]);
            r->ranks[k].val[i] = NULL;
        }
}

void ref_free(ref *r)
{
    if (!r)
        return;
    free_values(r);
    for (int k = 0; k < r->tp; k++) {
        rank_state *rk = &r->ranks[k];
        for (int i = 0; i < r->g->n; i++)
            free(rk->consts[i].owned);
        for (int i = 0; i < r->g->n_layers; i++) {
            free(rk->cache[i].k);
            free(rk->cache[i].v);
        }
        free(rk->cache);
        free(rk->consts);
        free(rk->val);
    }
    free(r->ranks);
    free(r->by_rank);
    free(r->keep);
    free(r->last_use);
    free(r->pos);
    free(r->scratch);
    free(r);
}

void ref_reset(ref *r)
{
    r->len = 0;
    r->rope_len = 0;
    free_values(r);
}

int ref_len(const ref *r) { return r->len; }
void ref_set_kv_fp8(ref *r, int on) { r->kv_fp8 = on != 0; }

void ref_set_rope_len(ref *r, int64_t len)
{
    assert(len >= 0);
    r->rope_len = len;
}
int ref_ranks(const ref *r) { return r->tp; }
void ref_keep(ref *r, int node) { r->keep[node] = 1; }

void ref_stop_after(ref *r, int node) { r->stop = node + 1; }

const float *ref_rank_value(const ref *r, int node, int rank, int *rows, int *cols)
{
    assert(rank >= 0 && rank < r->tp);
    const kg_node *n = &r->g->nodes[node];
    const float *v = r->ranks[rank].val[node];
    if (!v)
        return NULL;
    *rows = n->op == KG_POOL || n->op == KG_SCORE ? 1 : r->n;
    *cols = (int)row_width(n);
    return v;
}

const float *ref_value(const ref *r, int node, int *rows, int *cols)
{
    return ref_rank_value(r, node, 0, rows, cols);
}

const float *ref_output(const ref *r, int *rows, int *cols)
{
    return ref_value(r, r->g->output, rows, cols);
}

/* ---------------------------------------------------------------- ops */

static float *alloc_val(ref *r, const kg_node *n)
{
    return xcalloc((size_t)(r->n * row_width(n)), sizeof(float));
}

/* A float row source for an activation or a broadcast constant. */
static const float *arg(ref *r, int id)
{
    if (r->g->nodes[id].is_const) {
        const cval *c = const_get(r, id);
        if (c->dt != ST_F32) { /* small (a bias or norm weight): materialise once */
            cval *m = cslot(r, id);
            m->owned = materialize_f32(c);
            m->dt = ST_F32;
            m->data = m->owned;
        }
        return (const float *)cslot(r, id)->data;
    }
    return r->val[id];
}

/* Rows of the table by index. Vocabulary-parallel (parts > 1): the table is this rank's
 * `rows` rows [k * rows, (k + 1) * rows) of a table of parts * rows, and an id outside them
 * gives a zero row (the ALL_REDUCE that follows adds the owner's row). */
static int op_embed(ref *r, int id, float *out, kerr *err)
{
    const kg_node *n = &r->g->nodes[id];
    const kg_node *tn = &r->g->nodes[n->in[0]], *in = &r->g->nodes[n->in[1]];
    const cval *t = const_get(r, n->in[0]);
    int64_t rows = tn->shape[0], h = tn->shape[1];
    int split = n->parts > 1;
    /* each row must be owned by exactly one rank, or the all-reduce would count it twice */
    assert(!split || n->parts == r->tp);
    int64_t first = split ? r->k * rows : 0, total = split ? rows * n->parts : rows;
    for (int i = 0; i < r->n; i++) {
        int64_t ix = in->input_kind == KG_IN_IDS         ? r->ids[i]
                     : in->input_kind == KG_IN_POSITIONS ? r->pos[i]
                     : r->types                          ? r->types[i]
                                                         : 0;
        if (ix < 0 || ix >= total) {
            static const char *what[] = {"token id", "position", "token type"};
            /* a split table is named by the whole table it is a part of */
            const kg_node *whole = tn->op == KG_SHARD ? &r->g->nodes[tn->in[0]] : tn;
            return kerr_add(err, "%s %lld is out of range for %s (%lld rows)%s",
                            what[in->input_kind], (long long)ix, whole->name, (long long)total,
                            in->input_kind == KG_IN_POSITIONS
                                ? ": the sequence is longer than the model's maximum"
                                : "");
        }
        float *o = out + i * h;
        if (ix < first || ix >= first + rows) {
            memset(o, 0, sizeof(float) * (size_t)h);
            continue;
        }
        const float *row = crow(t, (uint64_t)((ix - first) * h), h, o);
        if (row != o)
            memcpy(o, row, sizeof(float) * (size_t)h);
    }
    return 0;
}

static float act(int which, float x);

/* y = x . w^T (+ b). With the gated epilogue (fuse pass), w holds [gate; up] rows and
 * y = act(x . gate^T) * (x . up^T), as the unfused graph computed it. */
static void op_linear(ref *r, const kg_node *n, float *out)
{
    const kg_node *wn = &r->g->nodes[n->in[1]];
    const cval *w = const_get(r, n->in[1]);
    const float *x = r->val[n->in[0]];
    const float *b = n->n_in > 2 && n->in[2] >= 0 ? arg(r, n->in[2]) : NULL;
    int64_t o = wn->shape[0], k = wn->shape[1];
    float *buf = scratch(r, (size_t)k * DOT_W);
    int gated = n->epi_act >= 0;
    /* output j's weight rows: j (and j + o / 2, the up half, when gated) */
    int64_t cols = gated ? o / 2 : o, step = gated ? 1 : DOT_W, t0 = r->n - r->n % DOT_T;
    for (int64_t j = 0; j < cols; j += step) {
        int nw = gated ? 2 : (int)(cols - j < DOT_W ? cols - j : DOT_W);
        const float *wr[DOT_W];
        int64_t row[DOT_W];
        for (int q = 0; q < DOT_W; q++) { /* past the last row (nw < DOT_W): row j again */
            row[q] = q < nw ? (gated ? j + q * cols : j + q) : j;
            wr[q] = q < nw ? crow(w, (uint64_t)(row[q] * k), k, buf + q * k) : wr[0];
        }
        for (int t = 0; t < r->n; t += DOT_T) {
            float d[DOT_T][DOT_W];
            if (t < t0)
                dot_block(x + t * k, k, wr, k, d);
            else /* the last tokens, fewer than DOT_T */
                for (int u = 0; u < r->n - t; u++)
                    for (int q = 0; q < DOT_W; q++)
                        d[u][q] = dot(x + (t + u) * k, wr[q], k);
            for (int u = 0; u < DOT_T && t + u < r->n; u++) {
                for (int q = 0; q < DOT_W; q++)
                    d[u][q] += b ? b[row[q]] : 0.0f;
                if (gated)
                    out[(t + u) * cols + j] = act(n->epi_act, d[u][0]) * d[u][1];
                else
                    for (int q = 0; q < nw; q++)
                        out[(t + u) * o + j + q] = d[u][q];
            }
        }
    }
}

/* The LM head: a linear, then Gemma 2's final soft cap (Gemma2ForCausalLM: logits / cap, tanh,
 * * cap) when the node has one. */
static void op_logits(ref *r, const kg_node *n, float *out)
{
    op_linear(r, n, out);
    if (n->softcap > 0) {
        float cap = (float)n->softcap;
        int64_t cnt = (int64_t)r->n * n->shape[1];
        for (int64_t i = 0; i < cnt; i++)
            out[i] = tanhf(out[i] / cap) * cap;
    }
}

/* Rows of a weight [h] (1) or per head [n, h] (n: row i of the input uses weight row i % n). */
static int64_t norm_weight_rows(const ref *r, const kg_node *n)
{
    const kg_node *w = &r->g->nodes[n->in[1]];
    return w->ndim == 2 ? w->shape[0] : 1;
}

/* LlamaRMSNorm: x * rsqrt(mean(x^2) + eps) * w  (Gemma: * (1 + w)) */
static void op_rms_norm(ref *r, const kg_node *n, float *out)
{
    const float *x = r->val[n->in[0]], *w0 = arg(r, n->in[1]);
    int64_t h = n->shape[n->ndim - 1], rows = r->n * row_width(n) / h;
    int64_t wr = norm_weight_rows(r, n);
    for (int64_t i = 0; i < rows; i++) {
        const float *xi = x + i * h, *w = w0 + i % wr * h;
        float ss = 0;
        for (int64_t j = 0; j < h; j++)
            ss += xi[j] * xi[j];
        float inv = 1.0f / sqrtf(ss / (float)h + (float)n->eps);
        for (int64_t j = 0; j < h; j++)
            out[i * h + j] = xi[j] * inv * (n->unit_offset ? 1.0f + w[j] : w[j]);
    }
}

/* torch.nn.LayerNorm: (x - mean) / sqrt(var + eps) * w + b, biased variance */
static void op_layer_norm(ref *r, const kg_node *n, float *out)
{
    const float *x = r->val[n->in[0]], *w0 = arg(r, n->in[1]);
    const float *b0 = n->n_in > 2 && n->in[2] >= 0 ? arg(r, n->in[2]) : NULL;
    int64_t h = n->shape[n->ndim - 1], rows = r->n * row_width(n) / h;
    int64_t wr = norm_weight_rows(r, n);
    for (int64_t i = 0; i < rows; i++) {
        const float *xi = x + i * h, *w = w0 + i % wr * h, *b = b0 ? b0 + i % wr * h : NULL;
        float mean = 0, var = 0;
        for (int64_t j = 0; j < h; j++)
            mean += xi[j];
        mean /= (float)h;
        for (int64_t j = 0; j < h; j++)
            var += (xi[j] - mean) * (xi[j] - mean);
        var /= (float)h;
        float inv = 1.0f / sqrtf(var + (float)n->eps);
        for (int64_t j = 0; j < h; j++)
            out[i * h + j] = (xi[j] - mean) * inv * w[j] + (b ? b[j] : 0.0f);
    }
}

/* apply_rotary_pos_emb: x * cos + rotate_half(x) * sin on the first rot_dim of each head,
 * pairs (i, i + rot/2); GPT-J style pairs (2i, 2i + 1) when interleaved. */
static void op_rope(ref *r, const kg_node *n, float *out)
{
    const kg_rope *ro = &n->rope;
    const float *x = r->val[n->in[0]];
    int64_t w = n->shape[1], hd = ro->head_dim, heads = w / hd, half = ro->rot_dim / 2;
    float *inv = scratch(r, (size_t)half);
    /* transformers' max position + 1 of this forward; longrope and dynamic NTK: at least the
     * sequence's rope_len, so a prompt prefilled in chunks rotates as HF's one forward over it */
    int64_t L = r->len + r->n;
    if ((ro->p.type == ROPE_LONGROPE || ro->p.type == ROPE_DYNAMIC) && r->rope_len > L)
        L = r->rope_len;
    posenc_rope_inv_freq(ro, L, inv);
    float sc = posenc_rope_scale(ro, L);
    memcpy(out, x, sizeof(float) * (size_t)(r->n * w));
    for (int t = 0; t < r->n; t++) {
        float p = (float)r->pos[t];
        for (int64_t i = 0; i < half; i++) {
            float ang = p * inv[i];
            float c = cosf(ang) * sc, s = sinf(ang) * sc;
            for (int64_t h = 0; h < heads; h++) {
                const float *xh = x + t * w + h * hd;
                float *oh = out + t * w + h * hd;
                int64_t a = ro->interleaved ? 2 * i : i, b = ro->interleaved ? 2 * i + 1 : i + half;
                oh[a] = xh[a] * c - xh[b] * s;
                oh[b] = xh[b] * c + xh[a] * s;
            }
        }
    }
}

float ref_kv8_head(const float *x, int64_t n, uint8_t *q, float *out)
{
    float amax = 0; /* fmaxf skips a NaN, as the kernel's does */
    for (int64_t i = 0; i < n; i++)
        amax = fmaxf(amax, fabsf(x[i]));
    float scale = kiln_kv8_scale(amax);
    for (int64_t i = 0; i < n; i++) {
        uint8_t b = kiln_kv8_e4m3(x[i] / scale);
        if (q)
            q[i] = b;
        out[i] = fp8_e4m3_to_f32(b) * scale;
    }
    return scale;
}

/* Scaled dot-product attention over the cache (eager attention in HF, fp32 softmax). */
static void op_attention(ref *r, const kg_node *n, float *out)
{
    const kg_attn *a = &n->attn;
    int64_t hd = a->head_dim, kw = (int64_t)a->n_kv_heads * hd, qw = (int64_t)a->n_heads * hd;
    int group = a->n_heads / a->n_kv_heads;
    kv *c = &r->cache[a->layer];
    const float *q = r->val[n->in[0]], *k = r->val[n->in[1]], *v = r->val[n->in[2]];
    for (int t = 0; t < r->n; t++) {
        float *ck = c->k + (r->len + t) * kw, *cv = c->v + (r->len + t) * kw;
        memcpy(ck, k + t * kw, sizeof(float) * (size_t)kw);
        memcpy(cv, v + t * kw, sizeof(float) * (size_t)kw);
        for (int h = 0; r->kv_fp8 && h < a->n_kv_heads; h++) { /* --kv-dtype fp8 */
            ref_kv8_head(ck + h * hd, hd, NULL, ck + h * hd);
            ref_kv8_head(cv + h * hd, hd, NULL, cv + h * hd);
        }
    }
    int total = r->len + r->n;
    /* ALiBi: a sharded graph's slopes are those of all alibi_heads heads, of which this
     * rank's are k * n_heads .. (k + 1) * n_heads - 1 */
    float *slopes = NULL;
    const float *hslope = NULL;
    if (a->alibi) {
        int all = a->alibi_heads > 0 ? a->alibi_heads : a->n_heads;
        int first = a->alibi_heads > 0 ? r->k * a->n_heads : 0;
        assert(first + a->n_heads <= all);
        slopes = xmalloc(sizeof(float) * (size_t)all);
        posenc_alibi_slopes(all, slopes);
        hslope = slopes + first;
    }
    float *p = xmalloc(sizeof(float) * (size_t)total);
    for (int t = 0; t < r->n; t++) {
        int qpos = r->len + t;
        int lo = 0, hi = a->causal ? qpos : total - 1;
        /* a query sees the `window` most recent keys, itself included */
        if (a->window > 0 && qpos - a->window + 1 > lo)
            lo = qpos - a->window + 1;
        for (int h = 0; h < a->n_heads; h++) {
            const float *qh = q + t * qw + h * hd;
            int kh = h / group;
            float mx = -INFINITY;
            for (int j = lo; j <= hi; j++) {
                float s = dot(qh, c->k + j * kw + kh * hd, hd) * (float)a->scale;
                if (a->softcap > 0)
                    s = tanhf(s / (float)a->softcap) * (float)a->softcap;
                if (hslope)
                    s += hslope[h] * (float)(j - qpos);
                p[j] = s;
                if (s > mx)
                    mx = s;
            }
            float sum = 0;
            for (int j = lo; j <= hi; j++) {
                p[j] = expf(p[j] - mx);
                sum += p[j];
            }
            float *oh = out + t * qw + h * hd;
            for (int64_t d = 0; d < hd; d++)
                oh[d] = 0;
            for (int j = lo; j <= hi; j++) {
                float wgt = p[j] / sum;
                const float *vj = c->v + j * kw + kh * hd;
                for (int64_t d = 0; d < hd; d++)
                    oh[d] += wgt * vj[d];
            }
        }
    }
    free(p);
    free(slopes);
}

/* Multi-head latent attention in its plain form, as HF's DeepseekV2Attention computes it: the
 * cache holds each token's latent c and rotated shared key k_pe ([rank + rope] floats); every
 * step expands them to per-head keys [W_k[h] c ; k_pe] and values W_v[h] c with kv_b, then
 * runs causal attention. (The GPU computes the absorbed form instead; this is its oracle.) */
static void op_mla(ref *r, const kg_node *n, float *out)
{
    const kg_mla *m = &n->mla;
    int64_t H = m->n_heads, dn = m->nope_dim, dr = m->rope_dim, dv = m->v_dim, rk = m->rank;
    int64_t cw = rk + dr, hw = dn + dv, total = r->len + r->n;
    kv *c = &r->cache[m->layer];
    const float *qn = r->val[n->in[KG_MLA_Q_NOPE]], *qp = r->val[n->in[KG_MLA_Q_PE]];
    const float *lat = r->val[n->in[KG_MLA_LATENT]], *kp = r->val[n->in[KG_MLA_K_PE]];
    for (int t = 0; t < r->n; t++) {
        memcpy(c->k + (r->len + t) * cw, lat + t * rk, sizeof(float) * (size_t)rk);
        memcpy(c->k + (r->len + t) * cw + rk, kp + t * dr, sizeof(float) * (size_t)dr);
    }
    /* kx [total, H, nope + v]: kv_b_proj of every cached latent */
    const cval *w = const_get(r, n->in[KG_MLA_KV_B]);
    float *buf = scratch(r, (size_t)rk);
    float *kx = xmalloc(sizeof(float) * (size_t)(total * H * hw));
    for (int64_t row = 0; row < H * hw; row++) {
        const float *wr = crow(w, (uint64_t)(row * rk), rk, buf);
        for (int64_t j = 0; j < total; j++)
            kx[j * H * hw + row] = dot(c->k + j * cw, wr, rk);
    }
    float *p = xmalloc(sizeof(float) * (size_t)total);
    for (int t = 0; t < r->n; t++) {
        int qpos = r->len + t;
        for (int64_t h = 0; h < H; h++) {
            const float *qnh = qn + t * H * dn + h * dn, *qph = qp + t * H * dr + h * dr;
            float mx = -INFINITY;
            for (int j = 0; j <= qpos; j++) {
                float s = (dot(qnh, kx + j * H * hw + h * hw, dn) +
                           dot(qph, c->k + j * cw + rk, dr)) * (float)m->scale;
                p[j] = s;
                if (s > mx)
                    mx = s;
            }
            float sum = 0;
            for (int j = 0; j <= qpos; j++) {
                p[j] = expf(p[j] - mx);
                sum += p[j];
            }
            float *oh = out + t * H * dv + h * dv;
            for (int64_t d = 0; d < dv; d++)
                oh[d] = 0;
            for (int j = 0; j <= qpos; j++) {
                float wgt = p[j] / sum;
                const float *vj = kx + j * H * hw + h * hw + dn;
                for (int64_t d = 0; d < dv; d++)
                    oh[d] += wgt * vj[d];
            }
        }
    }
    free(p);
    free(kx);
}

static float act(int which, float x)
{
    switch (which) {
    case KILN_ACT_SILU: return x / (1.0f + expf(-x));
    case KILN_ACT_GELU: return 0.5f * x * (1.0f + erff(x * (float)M_SQRT1_2));
    case KILN_ACT_GELU_TANH:
        return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    default: return x > 0 ? x : 0;
    }
}

static void op_unary(ref *r, const kg_node *n, float *out)
{
    int which = n->op == KG_SILU ? KILN_ACT_SILU : n->op == KG_GELU ? KILN_ACT_GELU
                : n->op == KG_GELU_TANH                          ? KILN_ACT_GELU_TANH
                                                                 : KILN_ACT_RELU;
    const float *x = r->val[n->in[0]];
    int64_t m = r->n * row_width(n);
    for (int64_t i = 0; i < m; i++)
        out[i] = act(which, x[i]);
}

static void op_binary(ref *r, const kg_node *n, float *out)
{
    const float *a = r->val[n->in[0]], *b = arg(r, n->in[1]);
    int64_t w = row_width(n), bstride = r->g->nodes[n->in[1]].is_const ? 0 : w;
    for (int t = 0; t < r->n; t++)
        for (int64_t j = 0; j < w; j++) {
            float x = a[t * w + j], y = b[t * bstride + j];
            out[t * w + j] = n->op == KG_ADD ? x + y : x * y;
        }
}

/* One gated expert MLP on one token: down(act(gate x) * up x), rows `e` of stacked weights. */
static void expert(ref *r, const cval *g, const cval *u, const cval *d, int64_t e, int64_t I,
                   int64_t H, int which, const float *x, float *hbuf, float *y)
{
    float *buf = scratch(r, (size_t)(I > H ? I : H));
    for (int64_t j = 0; j < I; j++) {
        float gv = dot(x, crow(g, (uint64_t)((e * I + j) * H), H, buf), H);
        float uv = dot(x, crow(u, (uint64_t)((e * I + j) * H), H, buf), H);
        hbuf[j] = act(which, gv) * uv;
    }
    for (int64_t j = 0; j < H; j++)
        y[j] = dot(hbuf, crow(d, (uint64_t)((e * H + j) * I), I, buf), I);
}

/* MixtralSparseMoeBlock: softmax over all experts, top-k, optional renormalisation;
 * Qwen2MoeSparseMoeBlock adds sigmoid(x . gate_w) * shared_expert(x). */
/* Softmax over the router logits p[E] (max mx), the top_k largest probabilities (ties to the
 * lower index as torch.topk does on CPU), renormalised over the k when asked (Mixtral). */
static void moe_softmax_topk(const kg_moe *m, float *prob, int64_t E, float mx, int *chosen,
                             float *wts)
{
    float sum = 0;
    for (int64_t e = 0; e < E; e++)
        sum += prob[e] = expf(prob[e] - mx);
    for (int64_t e = 0; e < E; e++)
        prob[e] /= sum;
    float ksum = 0;
    for (int k = 0; k < m->top_k; k++) {
        int best = -1;
        for (int64_t e = 0; e < E; e++) {
            int taken = 0;
            for (int j = 0; j < k; j++)
                taken |= chosen[j] == e;
            if (!taken && (best < 0 || prob[e] > prob[best]))
                best = (int)e;
        }
        chosen[k] = best;
        ksum += prob[best];
    }
    for (int k = 0; k < m->top_k; k++)
        wts[k] = m->renormalize ? prob[chosen[k]] / ksum : prob[chosen[k]];
}

/* transformers' sparsemixer (Phi-3.5-MoE) in inference mode, on the router logits s[E]: two
 * rounds, each the argmax of the experts not yet taken (ties to the lower index, as torch.max),
 * weighted by its softmax probability over the experts within 2 jitter_eps of it relatively:
 * (top - s[e]) / max(|s[e]|, top) <= 2 jitter_eps, in float32 as torch computes it. */
static void route_sparsemixer(const float *s, int64_t E, double jitter_eps, int chosen[2],
                              float wts[2])
{
    const float thr = (float)(2 * jitter_eps);
    for (int k = 0; k < 2; k++) {
        int best = -1;
        for (int64_t e = 0; e < E; e++)
            if ((k == 0 || e != chosen[0]) && (best < 0 || s[e] > s[best]))
                best = (int)e;
        float top = s[best], sum = 0;
        for (int64_t e = 0; e < E; e++) {
            float a = fabsf(s[e]), factor = a > top ? a : top;
            if ((k == 1 && e == chosen[0]) || (top - s[e]) / factor > thr)
                continue;
            sum += expf(s[e] - top);
        }
        chosen[k] = best;
        wts[k] = 1.0f / sum;
    }
}

static void op_moe(ref *r, const kg_node *n, float *out)
{
    const kg_moe *m = &n->moe;
    const float *x = r->val[n->in[KG_MOE_X]];
    int64_t H = n->shape[1], E = m->n_experts;
    int64_t I = r->g->nodes[n->in[KG_MOE_GATE]].shape[1];
    const cval *router = const_get(r, n->in[KG_MOE_ROUTER]);
    const cval *g = const_get(r, n->in[KG_MOE_GATE]), *u = const_get(r, n->in[KG_MOE_UP]),
               *d = const_get(r, n->in[KG_MOE_DOWN]);
    float *prob = xmalloc(sizeof(float) * (size_t)E), *y = xmalloc(sizeof(float) * (size_t)H);
    float *rowbuf = xmalloc(sizeof(float) * (size_t)H);
    int64_t I2 = m->has_shared ? r->g->nodes[n->in[KG_MOE_SH_GATE]].shape[0] : 0;
    float *hbuf = xmalloc(sizeof(float) * (size_t)(I > I2 ? I : I2));
    int *chosen = xmalloc(sizeof(int) * (size_t)m->top_k);
    float *wts = xmalloc(sizeof(float) * (size_t)m->top_k);
    for (int t = 0; t < r->n; t++) {
        const float *xt = x + t * H;
        float *ot = out + t * H;
        float mx = -INFINITY;
        for (int64_t e = 0; e < E; e++) {
            prob[e] = dot(xt, crow(router, (uint64_t)(e * H), H, rowbuf), H);
            if (prob[e] > mx)
                mx = prob[e];
        }
        if (m->routing == KG_ROUTE_SPARSEMIXER) {
            assert(m->top_k == 2);
            route_sparsemixer(prob, E, m->jitter_eps, chosen, wts);
        } else {
            moe_softmax_topk(m, prob, E, mx, chosen, wts);
        }
        for (int64_t j = 0; j < H; j++)
            ot[j] = 0;
        for (int k = 0; k < m->top_k; k++) {
            expert(r, g, u, d, chosen[k], I, H, m->act, xt, hbuf, y);
            for (int64_t j = 0; j < H; j++)
                ot[j] += wts[k] * y[j];
        }
        if (m->has_shared) {
            const cval *sg = const_get(r, n->in[KG_MOE_SH_GATE]),
                       *su = const_get(r, n->in[KG_MOE_SH_UP]),
                       *sd = const_get(r, n->in[KG_MOE_SH_DOWN]);
            expert(r, sg, su, sd, 0, I2, H, m->act, xt, hbuf, y);
            float gate = 1;
            if (m->shared_gate) {
                const cval *gw = const_get(r, n->in[KG_MOE_SH_GATE_W]);
                gate = 1.0f / (1.0f + expf(-dot(xt, crow(gw, 0, H, rowbuf), H)));
            }
            for (int64_t j = 0; j < H; j++)
                ot[j] += gate * y[j];
        }
    }
    free(prob);
    free(y);
    free(rowbuf);
    free(hbuf);
    free(chosen);
    free(wts);
}

static void op_pool(ref *r, const kg_node *n, float *out)
{
    const float *x = r->val[n->in[0]];
    int64_t H = n->shape[1];
    for (int64_t j = 0; j < H; j++)
        out[j] = 0;
    if (n->pool_mode == KILN_POOL_MEAN) {
        for (int t = 0; t < r->n; t++)
            for (int64_t j = 0; j < H; j++)
                out[j] += x[t * H + j];
        for (int64_t j = 0; j < H; j++)
            out[j] /= (float)r->n;
    } else {
        int t = n->pool_mode == KILN_POOL_CLS ? 0 : r->n - 1;
        memcpy(out, x + t * H, sizeof(float) * (size_t)H);
    }
    if (n->pool_normalize) { /* F.normalize(p=2, eps=1e-12) */
        float ss = 0;
        for (int64_t j = 0; j < H; j++)
            ss += out[j] * out[j];
        float nrm = sqrtf(ss);
        if (nrm < 1e-12f)
            nrm = 1e-12f;
        for (int64_t j = 0; j < H; j++)
            out[j] /= nrm;
    }
}

/* SCORE: one row of label scores from the pooled row p (graph.h): w . tanh(dense . p + dense_b)
 * + b with BERT's pooler, w . p + b without. */
static void op_score(ref *r, const kg_node *n, float *out)
{
    const float *p = r->val[n->in[KG_SCORE_X]];
    const kg_node *wn = &r->g->nodes[n->in[KG_SCORE_W]];
    int64_t labels = wn->shape[0], H = wn->shape[1];
    float *buf = scratch(r, (size_t)H * 2), *h = buf + H;
    if (n->in[KG_SCORE_DENSE] >= 0) {
        const cval *dw = const_get(r, n->in[KG_SCORE_DENSE]);
        const float *db = arg(r, n->in[KG_SCORE_DENSE_B]);
        for (int64_t j = 0; j < H; j++)
            h[j] = tanhf(dot(p, crow(dw, (uint64_t)(j * H), H, buf), H) + db[j]);
        p = h;
    }
    const cval *w = const_get(r, n->in[KG_SCORE_W]);
    const float *b = n->in[KG_SCORE_B] >= 0 ? arg(r, n->in[KG_SCORE_B]) : NULL;
    for (int64_t j = 0; j < labels; j++)
        out[j] = dot(p, crow(w, (uint64_t)(j * H), H, buf), H) + (b ? b[j] : 0.0f);
}

/* ALL_REDUCE: the sum of x over the ranks, added in rank order ((x0 + x1) + x2) + ..., the
 * same order on every rank, so every rank gets the same bits (as a deterministic all-reduce
 * gives). */
static void op_all_reduce(ref *r, const kg_node *n, float *out)
{
    int64_t m = r->n * row_width(n);
    memcpy(out, r->ranks[0].val[n->in[0]], sizeof(float) * (size_t)m);
    for (int k = 1; k < r->tp; k++) {
        const float *x = r->ranks[k].val[n->in[0]];
        for (int64_t i = 0; i < m; i++)
            out[i] += x[i];
    }
}

/* ALL_GATHER: x [T, C] of every rank -> [T, C * tp], rank k's columns at k * C. */
static void op_all_gather(ref *r, const kg_node *n, float *out)
{
    int64_t c = row_width(&r->g->nodes[n->in[0]]), w = row_width(n);
    assert(w == c * r->tp);
    for (int k = 0; k < r->tp; k++) {
        const float *x = r->ranks[k].val[n->in[0]];
        for (int t = 0; t < r->n; t++)
            memcpy(out + t * w + k * c, x + t * c, sizeof(float) * (size_t)c);
    }
}

/* Computes node `id` for the current rank into out. */
static int compute(ref *r, int id, float *out, kerr *err)
{
    const kgraph *g = r->g;
    const kg_node *nd = &g->nodes[id];
    int n = r->n;
    int64_t w = row_width(nd);
    switch (nd->op) {
    case KG_EMBED: return op_embed(r, id, out, err);
    case KG_LINEAR: op_linear(r, nd, out); break;
    case KG_LOGITS: op_logits(r, nd, out); break;
    case KG_RMS_NORM: op_rms_norm(r, nd, out); break;
    case KG_LAYER_NORM: op_layer_norm(r, nd, out); break;
    case KG_ROPE: op_rope(r, nd, out); break;
    case KG_ATTENTION: op_attention(r, nd, out); break;
    case KG_MLA: op_mla(r, nd, out); break;
    case KG_SILU:
    case KG_GELU:
    case KG_GELU_TANH:
    case KG_RELU: op_unary(r, nd, out); break;
    case KG_ADD:
    case KG_MUL: op_binary(r, nd, out); break;
    case KG_SCALE:
        for (int64_t i = 0; i < n * w; i++)
            out[i] = r->val[nd->in[0]][i] * (float)nd->scalar;
        break;
    case KG_RESHAPE: memcpy(out, r->val[nd->in[0]], sizeof(float) * (size_t)(n * w)); break;
    case KG_SLICE: {
        const kg_node *s = &g->nodes[nd->in[0]];
        slice_f32(r->val[nd->in[0]], s->shape, s->ndim, nd->dim, nd->start, nd->len, n, out);
        break;
    }
    case KG_CONCAT: {
        int64_t outer, inner, at = 0;
        around(nd->shape, nd->ndim, nd->dim, n, &outer, &inner);
        for (int k = 0; k < nd->n_in; k++) {
            int64_t d = g->nodes[nd->in[k]].shape[nd->dim];
            for (int64_t o = 0; o < outer; o++)
                memcpy(out + (o * nd->shape[nd->dim] + at) * inner,
                       r->val[nd->in[k]] + o * d * inner, sizeof(float) * (size_t)(d * inner));
            at += d;
        }
        break;
    }
    case KG_MOE: op_moe(r, nd, out); break;
    case KG_POOL: op_pool(r, nd, out); break;
    case KG_SCORE: op_score(r, nd, out); break;
    case KG_ALL_REDUCE: op_all_reduce(r, nd, out); break;
    case KG_ALL_GATHER: op_all_gather(r, nd, out); break;
    default:
        return kerr_add(err, "ref: op %s is not implemented in the reference",
                        kg_op_name(nd->op));
    }
    return 0;
}

int ref_forward(ref *r, const int64_t *ids, const int64_t *types, int n, kerr *err)
{
    const kgraph *g = r->g;
    if (n < 1)
        return kerr_add(err, "ref: no tokens to process");
    int embed_task = g->nodes[g->output].op == KG_POOL || g->nodes[g->output].op == KG_SCORE;
    if (embed_task && r->len > 0)
        return kerr_add(err, "ref: an embedding model runs one forward per sequence (reset "
                             "first)");
    if (r->len + n > r->max_seq)
        return kerr_add(err, "ref: %d tokens exceed the reference's limit of %d", r->len + n,
                        r->max_seq);
    free_values(r);
    r->n = n;
    r->ids = ids;
    r->types = types;
    free(r->pos);
    r->pos = xmalloc(sizeof(int64_t) * (size_t)n);
    for (int i = 0; i < n; i++)
        r->pos[i] = r->len + i;

    /* the ranks in lockstep: each node on every rank before the next node, so a collective
     * finds its input computed on all of them */
    for (int id = 0; id < r->stop; id++) {
        const kg_node *nd = &g->nodes[id];
        if (nd->is_const || nd->op == KG_INPUT)
            continue;
        for (int k = 0; k < r->tp; k++) {
            set_rank(r, k);
            float *out = nd->op == KG_POOL || nd->op == KG_SCORE
                             ? xcalloc((size_t)row_width(nd), sizeof(float))
                                           : alloc_val(r, nd);
            if (compute(r, id, out, err)) {
                free(out);
                set_rank(r, 0);
                return -1;
            }
            r->val[id] = out;
        }
        /* free inputs whose last reader this was, once every rank has read them */
        for (int k = 0; k < nd->n_in; k++) {
            int in = nd->in[k];
            if (in >= 0 && r->last_use[in] == id && !r->keep[in] && !g->nodes[in].is_const)
                for (int j = 0; j < r->tp; j++) {
                    free(r->ranks[j].val[in]);
                    r->ranks[j].val[in] = NULL;
                }
        }
    }
    set_rank(r, 0);
    r->len += n;
    return 0;
}
