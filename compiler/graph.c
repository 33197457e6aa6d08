/* graph — see graph.h. Builders check and infer shapes; graph_verify re-checks the invariants
 * a pass must keep; graph_print writes the text form shown by `kilnc graph`. */
#include "graph.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static const char *op_names[] = {
#define X(e, s) s,
    KG_OPS(X)
#undef X
};
_Static_assert(ARRAY_LEN(op_names) == KG_NOPS, "op name table out of sync with KG_OPS");

const char *kg_op_name(kg_op op) { return (unsigned)op < KG_NOPS ? op_names[op] : "?"; }

int kg_op_parse(const char *name)
{
    for (int i = 0; i < KG_NOPS; i++)
        if (strcmp(op_names[i], name) == 0)
            return i;
    return -1;
}

static const char *input_names[] = {"ids", "positions", "token_types"};
_Static_assert(ARRAY_LEN(input_names) == KG_NINPUTS, "input name table out of sync");

kgraph *graph_new(void)
{
    kgraph *g = xcalloc(1, sizeof *g);
    g->output = -1;
    g->tp = 1;
    for (int i = 0; i < KG_NINPUTS; i++)
        g->inputs[i] = -1;
    return g;
}

void graph_free(kgraph *g)
{
    if (!g)
        return;
    for (int i = 0; i < g->n; i++) {
        free(g->nodes[i].name);
        free(g->nodes[i].weight);
    }
    free(g->nodes);
    free(g->wtab);
    for (int i = 0; i < g->nstrings; i++)
        free(g->strings[i]);
    free(g->strings);
    free(g);
}

void graph_set_loc(kgraph *g, const char *file, int line)
{
    g->cur_file = NULL;
    if (file) {
        for (int i = 0; i < g->nstrings && !g->cur_file; i++)
            if (strcmp(g->strings[i], file) == 0)
                g->cur_file = g->strings[i];
        if (!g->cur_file) {
            g->strings = xrealloc(g->strings, sizeof(char *) * (size_t)(g->nstrings + 1));
            g->cur_file = g->strings[g->nstrings++] = xstrdup(file);
        }
    }
    g->cur_line = line;
}

void graph_scope(kgraph *g, const char *prefix)
{
    snprintf(g->prefix, sizeof g->prefix, "%s", prefix ? prefix : "");
}

int graph_is_const(const kgraph *g, int id) { return g->nodes[id].is_const; }

const char *graph_shape_str(const kg_node *n, char *buf, size_t cap)
{
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < n->ndim && k < cap; i++) {
        const char *sep = i ? ", " : "";
        if (n->shape[i] == KG_T)
            k += (size_t)snprintf(buf + k, cap - k, "%sT", sep);
        else if (n->shape[i] == KG_S)
            k += (size_t)snprintf(buf + k, cap - k, "%sS", sep);
        else
            k += (size_t)snprintf(buf + k, cap - k, "%s%lld", sep, (long long)n->shape[i]);
    }
    if (k < cap)
        snprintf(buf + k, cap - k, "]");
    return buf;
}

uint64_t graph_numel_const(const kg_node *n)
{
    uint64_t e = 1;
    for (int i = 0; i < n->ndim; i++)
        e *= n->shape[i] > 0 ? (uint64_t)n->shape[i] : 1;
    return e;
}

/* Product of the dims after dim 0 (the per-token width of an activation). */
static int64_t row_numel(const kg_node *n)
{
    int64_t e = 1;
    for (int i = 1; i < n->ndim; i++)
        e *= n->shape[i];
    return e;
}

/* ---------------------------------------------------------------- building */

static int valid_id(const kgraph *g, int id) { return id >= 0 && id < g->n; }

/* Appends a node; inputs given as a -1 terminated list. */
static int add(kgraph *g, kg_op op, const char *name, int ndim, const int64_t *shape, int nin,
               const int *in)
{
    /* Callers pass shapes of existing nodes (g->nodes[x].shape): copied before the realloc
     * below can move them. */
    int64_t sh[KG_MAX_DIMS] = {0};
    for (int i = 0; i < ndim && i < KG_MAX_DIMS; i++)
        sh[i] = shape[i];
    if (g->n == g->cap) {
        g->cap = g->cap ? g->cap * 2 : 256;
        g->nodes = xrealloc(g->nodes, sizeof(kg_node) * (size_t)g->cap);
    }
    int id = g->n++;
    kg_node *n = &g->nodes[id];
    memset(n, 0, sizeof *n);
    n->op = op;
    n->dtype = ST_F32;
    n->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        n->shape[i] = sh[i];
    n->n_in = nin;
    int all_const = nin > 0;
    for (int i = 0; i < nin; i++) {
        n->in[i] = in[i];
        if (in[i] >= 0 && !g->nodes[in[i]].is_const)
            all_const = 0;
    }
    n->is_const = op == KG_WEIGHT || (all_const && op != KG_INPUT);
    n->spec_file = g->cur_file;
    n->spec_line = g->cur_line;
    n->epi_act = -1;
    n->fused_into = -1;
    n->view_of = -1;
    n->buf = -1;
    char auto_name[64];
    if (!name || !*name) {
        snprintf(auto_name, sizeof auto_name, "%s.%d", op_names[op], id);
        name = auto_name;
    }
    n->name = g->prefix[0] ? xasprintf("%s.%s", g->prefix, name) : xstrdup(name);
    return id;
}

/* Node description for messages: "L3.attn.q [T, 64]". */
static const char *desc(const kgraph *g, int id, char *buf, size_t cap)
{
    char sh[96];
    const kg_node *n = &g->nodes[id];
    snprintf(buf, cap, "%s%s%s %s", n->op == KG_WEIGHT ? "weight '" : "", n->name,
             n->op == KG_WEIGHT ? "'" : "", graph_shape_str(n, sh, sizeof sh));
    return buf;
}

static int fail(kerr *err, const char *op, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(kerr *err, const char *op, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return kerr_add(err, "%s: %s", op, msg);
}

static int need_ids(const kgraph *g, const char *op, kerr *err, int n, ...)
{
    va_list ap;
    va_start(ap, n);
    int rc = 0;
    for (int i = 0; i < n; i++) {
        int id = va_arg(ap, int);
        if (!valid_id(g, id))
            rc = fail(err, op, "argument %d is not a tensor of this graph", i + 1);
    }
    va_end(ap);
    return rc;
}

static int need_act(const kgraph *g, const char *op, int id, const char *what, kerr *err)
{
    char d[200];
    if (g->nodes[id].is_const || g->nodes[id].ndim < 1 || g->nodes[id].shape[0] != KG_T)
        return fail(err, op, "%s must be a per-token activation [T, ...], got %s", what,
                    desc(g, id, d, sizeof d));
    return 0;
}

static int need_const(const kgraph *g, const char *op, int id, const char *what, kerr *err)
{
    char d[200];
    if (!g->nodes[id].is_const)
        return fail(err, op, "%s must be a weight (or a view of weights), got activation %s",
                    what, desc(g, id, d, sizeof d));
    return 0;
}

/* Constant of exactly this shape (n dims, given by the variadic list). */
static int need_shape(const kgraph *g, const char *op, int id, const char *what, kerr *err,
                      int ndim, ...)
{
    const kg_node *n = &g->nodes[id];
    int64_t want[KG_MAX_DIMS];
    va_list ap;
    va_start(ap, ndim);
    for (int i = 0; i < ndim; i++)
        want[i] = va_arg(ap, int64_t);
    va_end(ap);
    int ok = n->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = n->shape[i] == want[i];
    if (ok)
        return 0;
    kg_node tmp = {.ndim = ndim};
    memcpy(tmp.shape, want, sizeof(int64_t) * (size_t)ndim);
    char d[200], w[96];
    return fail(err, op, "%s should be %s, got %s", what, graph_shape_str(&tmp, w, sizeof w),
                desc(g, id, d, sizeof d));
}

int graph_input(kgraph *g, kg_input_kind kind, kerr *err)
{
    if ((unsigned)kind >= KG_NINPUTS)
        return fail(err, "input", "unknown input kind %d", (int)kind);
    if (g->inputs[kind] >= 0)
        return g->inputs[kind];
    char saved[64];
    memcpy(saved, g->prefix, sizeof saved);
    g->prefix[0] = 0;
    int64_t sh[1] = {KG_T};
    int id = add(g, KG_INPUT, input_names[kind], 1, sh, 0, NULL);
    memcpy(g->prefix, saved, sizeof saved);
    g->nodes[id].dtype = ST_I64;
    g->nodes[id].input_kind = kind;
    g->inputs[kind] = id;
    return id;
}

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static int weight_find_indexed(const kgraph *g, const char *name)
{
    if (!g->wcap)
        return -1;
    size_t mask = (size_t)g->wcap - 1;
    for (size_t h = hash_str(name) & mask; g->wtab[h] >= 0; h = (h + 1) & mask)
        if (strcmp(g->nodes[g->wtab[h]].weight, name) == 0)
            return g->wtab[h];
    return -1;
}

static void wtab_put(kgraph *g, int id)
{
    size_t mask = (size_t)g->wcap - 1;
    for (size_t h = hash_str(g->nodes[id].weight) & mask;; h = (h + 1) & mask)
        if (g->wtab[h] < 0) {
            g->wtab[h] = id;
            g->wcount++;
            return;
        }
}

/* The WEIGHT node for `name`, or -1; indexes the nodes added since the last call first. */
static int weight_find(kgraph *g, const char *name)
{
    for (; g->windexed < g->n; g->windexed++) {
        const kg_node *n = &g->nodes[g->windexed];
        if (n->op != KG_WEIGHT || !n->weight)
            continue;
        if (2 * (g->wcount + 1) > g->wcap) { /* grow, keeping the load under one half */
            int old = g->wcap, *ot = g->wtab;
            g->wcap = old ? old * 2 : 256;
            g->wtab = xmalloc(sizeof(int) * (size_t)g->wcap);
            for (int k = 0; k < g->wcap; k++)
                g->wtab[k] = -1;
            g->wcount = 0;
            for (int k = 0; k < old; k++)
                if (ot[k] >= 0)
                    wtab_put(g, ot[k]);
            free(ot);
        }
        if (weight_find_indexed(g, n->weight) < 0)
            wtab_put(g, g->windexed);
    }
    return weight_find_indexed(g, name);
}

int graph_weight(kgraph *g, const char *hf_name, int ndim, const int64_t *shape, kerr *err)
{
    if (!hf_name || !*hf_name)
        return fail(err, "weight", "empty tensor name");
    if (ndim < 1 || ndim > KG_MAX_DIMS)
        return fail(err, "weight", "'%s': %d dimensions (1..%d supported)", hf_name, ndim,
                    KG_MAX_DIMS);
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] <= 0 || shape[i] > INT32_MAX)
            return fail(err, "weight", "'%s': dimension %d is %lld; expected a positive size "
                                       "below 2^31",
                        hf_name, i, (long long)shape[i]);
        if (__builtin_mul_overflow(numel, shape[i], &numel) || numel > KG_MAX_NUMEL)
            return fail(err, "weight", "'%s': more than 2^%d elements; no checkpoint tensor is "
                                       "that large (are the config's sizes sane?)",
                        hf_name, KG_MAX_NUMEL_LOG2);
    }
    /* The same checkpoint tensor asked for twice (e.g. tied embeddings) is one node. */
    int i = weight_find(g, hf_name);
    if (i >= 0) {
        kg_node tmp = {.ndim = ndim};
        memcpy(tmp.shape, shape, sizeof(int64_t) * (size_t)ndim);
        int same = g->nodes[i].ndim == ndim;
        for (int d = 0; same && d < ndim; d++)
            same = g->nodes[i].shape[d] == shape[d];
        if (!same) {
            char a[96], b[96];
            return fail(err, "weight", "'%s' asked for as %s, but earlier as %s", hf_name,
                        graph_shape_str(&tmp, a, sizeof a),
                        graph_shape_str(&g->nodes[i], b, sizeof b));
        }
        return i;
    }
    char saved[64];
    memcpy(saved, g->prefix, sizeof saved);
    g->prefix[0] = 0;
    int id = add(g, KG_WEIGHT, hf_name, ndim, shape, 0, NULL);
    memcpy(g->prefix, saved, sizeof saved);
    g->nodes[id].weight = xstrdup(hf_name);
    weight_find(g, hf_name); /* indexes it */
    return id;
}

static int norm_dim(const kg_node *n, int dim) { return dim < 0 ? dim + n->ndim : dim; }

int graph_reshape(kgraph *g, int x, int ndim, const int64_t *shape, const char *name, kerr *err)
{
    if (need_ids(g, "reshape", err, 1, x))
        return -1;
    const kg_node *n = &g->nodes[x];
    char d[200];
    if (ndim < 1 || ndim > KG_MAX_DIMS)
        return fail(err, "reshape", "%d dimensions (1..%d supported)", ndim, KG_MAX_DIMS);
    int act = !n->is_const;
    if (act && shape[0] != KG_T)
        return fail(err, "reshape", "the new shape of activation %s must start with T",
                    desc(g, x, d, sizeof d));
    int64_t numel = 1;
    for (int i = act; i < ndim; i++) {
        if (shape[i] <= 0)
            return fail(err, "reshape", "dimension %d is %lld; expected a positive size", i,
                        (long long)shape[i]);
        if (__builtin_mul_overflow(numel, shape[i], &numel))
            return fail(err, "reshape", "the new shape's element count overflows");
    }
    int64_t have = act ? row_numel(n) : (int64_t)graph_numel_const(n);
    if (numel != have) {
        kg_node tmp = {.ndim = ndim};
        memcpy(tmp.shape, shape, sizeof(int64_t) * (size_t)ndim);
        char w[96];
        return fail(err, "reshape", "cannot reshape %s to %s: %lld elements%s vs %lld",
                    desc(g, x, d, sizeof d), graph_shape_str(&tmp, w, sizeof w),
                    (long long)have, act ? " per token" : "", (long long)numel);
    }
    return add(g, KG_RESHAPE, name, ndim, shape, 1, &x);
}

int graph_slice(kgraph *g, int x, int dim, int64_t start, int64_t len, const char *name,
                kerr *err)
{
    if (need_ids(g, "slice", err, 1, x))
        return -1;
    const kg_node *n = &g->nodes[x];
    char d[200];
    int dd = norm_dim(n, dim);
    if (dd < 0 || dd >= n->ndim)
        return fail(err, "slice", "dimension %d out of range for %s", dim,
                    desc(g, x, d, sizeof d));
    if (n->shape[dd] == KG_T)
        return fail(err, "slice", "cannot slice the token dimension T of %s",
                    desc(g, x, d, sizeof d));
    if (start < 0 || len <= 0 || start > n->shape[dd] || len > n->shape[dd] - start)
        return fail(err, "slice", "range [%lld, %lld) is outside dimension %d (size %lld) of %s",
                    (long long)start, (long long)(start + len), dd, (long long)n->shape[dd],
                    desc(g, x, d, sizeof d));
    int64_t sh[KG_MAX_DIMS];
    memcpy(sh, n->shape, sizeof sh);
    sh[dd] = len;
    int id = add(g, KG_SLICE, name, n->ndim, sh, 1, &x);
    g->nodes[id].dim = dd;
    g->nodes[id].start = start;
    g->nodes[id].len = len;
    return id;
}

int graph_concat(kgraph *g, const int *xs, int n, int dim, const char *name, kerr *err)
{
    if (n < 1 || n > KG_MAX_IN)
        return fail(err, "concat", "%d tensors (1..%d supported; concatenate in steps)", n,
                    KG_MAX_IN);
    for (int i = 0; i < n; i++)
        if (!valid_id(g, xs[i]))
            return fail(err, "concat", "element %d is not a tensor of this graph", i + 1);
    const kg_node *f = &g->nodes[xs[0]];
    int dd = norm_dim(f, dim);
    char d[200], e[200];
    if (dd < 0 || dd >= f->ndim)
        return fail(err, "concat", "dimension %d out of range for %s", dim,
                    desc(g, xs[0], d, sizeof d));
    if (f->shape[dd] == KG_T)
        return fail(err, "concat", "cannot concatenate along the token dimension T");
    int64_t sh[KG_MAX_DIMS];
    memcpy(sh, f->shape, sizeof sh);
    for (int i = 1; i < n; i++) {
        const kg_node *o = &g->nodes[xs[i]];
        int ok = o->ndim == f->ndim && o->is_const == f->is_const;
        for (int k = 0; ok && k < f->ndim; k++)
            ok = k == dd || o->shape[k] == f->shape[k];
        if (!ok)
            return fail(err, "concat", "%s does not match %s outside dimension %d",
                        desc(g, xs[i], d, sizeof d), desc(g, xs[0], e, sizeof e), dd);
        if (__builtin_add_overflow(sh[dd], o->shape[dd], &sh[dd]))
            return fail(err, "concat", "the concatenated size overflows");
    }
    int id = add(g, KG_CONCAT, name, f->ndim, sh, n, xs);
    g->nodes[id].dim = dd;
    return id;
}

int graph_transpose(kgraph *g, int x, int d0, int d1, const char *name, kerr *err)
{
    if (need_ids(g, "transpose", err, 1, x) || need_const(g, "transpose", x, "the input", err))
        return -1;
    const kg_node *n = &g->nodes[x];
    int a = norm_dim(n, d0), b = norm_dim(n, d1);
    if (a < 0 || a >= n->ndim || b < 0 || b >= n->ndim)
        return fail(err, "transpose", "dimensions %d, %d out of range for %d-d %s", d0, d1,
                    n->ndim, n->name);
    int64_t sh[KG_MAX_DIMS];
    memcpy(sh, n->shape, sizeof sh);
    sh[a] = n->shape[b];
    sh[b] = n->shape[a];
    int id = add(g, KG_TRANSPOSE, name, n->ndim, sh, 1, &x);
    g->nodes[id].dim = a;
    g->nodes[id].dim2 = b;
    return id;
}

int graph_embed(kgraph *g, int table, int ids, const char *name, kerr *err)
{
    if (need_ids(g, "embed", err, 2, table, ids) ||
        need_const(g, "embed", table, "the table", err))
        return -1;
    const kg_node *t = &g->nodes[table], *i = &g->nodes[ids];
    char d[200];
    if (t->ndim != 2)
        return fail(err, "embed", "the table must be 2-d [rows, width], got %s",
                    desc(g, table, d, sizeof d));
    if (i->op != KG_INPUT)
        return fail(err, "embed", "the indices must be a graph input (g:input(...)), got %s",
                    desc(g, ids, d, sizeof d));
    int64_t sh[2] = {KG_T, t->shape[1]};
    int in[2] = {table, ids};
    return add(g, KG_EMBED, name, 2, sh, 2, in);
}

int graph_linear(kgraph *g, int x, int w, int b, const char *name, kerr *err)
{
    if (need_ids(g, "linear", err, 2, x, w) || need_act(g, "linear", x, "the input", err) ||
        need_const(g, "linear", w, "the weight", err))
        return -1;
    const kg_node *xn = &g->nodes[x], *wn = &g->nodes[w];
    char d[200], e[200];
    if (xn->ndim != 2)
        return fail(err, "linear", "the input must be 2-d [T, width], got %s (reshape first)",
                    desc(g, x, d, sizeof d));
    if (wn->ndim != 2)
        return fail(err, "linear", "the weight must be 2-d [out, in], got %s",
                    desc(g, w, d, sizeof d));
    if (wn->shape[1] != xn->shape[1])
        return fail(err, "linear", "input %s has width %lld but %s expects %lld",
                    desc(g, x, d, sizeof d), (long long)xn->shape[1], desc(g, w, e, sizeof e),
                    (long long)wn->shape[1]);
    if (b >= 0) {
        if (need_ids(g, "linear", err, 1, b) || need_const(g, "linear", b, "the bias", err) ||
            need_shape(g, "linear", b, "the bias", err, 1, wn->shape[0]))
            return -1;
    }
    int64_t sh[2] = {KG_T, wn->shape[0]};
    int in[3] = {x, w, b};
    return add(g, KG_LINEAR, name, 2, sh, b >= 0 ? 3 : 2, in);
}

static int norm_common(kgraph *g, const char *op, int x, int w, int b, kerr *err)
{
    if (need_ids(g, op, err, 2, x, w) || need_act(g, op, x, "the input", err) ||
        need_const(g, op, w, "the weight", err))
        return -1;
    /* The weight covers the last dimension, [h], or the last two of a [T, n, h] input, [n, h]:
     * a weight per head (StableLM's and Cohere's q/k LayerNorms). A bias has the weight's shape. */
    const kg_node *xn = &g->nodes[x];
    int64_t h = xn->shape[xn->ndim - 1];
    if (xn->ndim >= 3 && g->nodes[w].ndim == 2) {
        int64_t nh = xn->shape[xn->ndim - 2];
        if (need_shape(g, op, w, "the weight", err, 2, nh, h) ||
            (b >= 0 && (need_ids(g, op, err, 1, b) || need_const(g, op, b, "the bias", err) ||
                        need_shape(g, op, b, "the bias", err, 2, nh, h))))
            return -1;
        return 0;
    }
    if (need_shape(g, op, w, "the weight", err, 1, h))
        return -1;
    if (b >= 0 && (need_ids(g, op, err, 1, b) || need_const(g, op, b, "the bias", err) ||
                   need_shape(g, op, b, "the bias", err, 1, h)))
        return -1;
    return 0;
}

int graph_rms_norm(kgraph *g, int x, int w, double eps, int unit_offset, const char *name,
                   kerr *err)
{
    if (norm_common(g, "rms_norm", x, w, -1, err))
        return -1;
    if (!(eps > 0 && eps < 1))
        return fail(err, "rms_norm", "eps is %g; expected a small positive number", eps);
    int in[2] = {x, w};
    int id = add(g, KG_RMS_NORM, name, g->nodes[x].ndim, g->nodes[x].shape, 2, in);
    g->nodes[id].eps = eps;
    g->nodes[id].unit_offset = unit_offset;
    return id;
}

int graph_layer_norm(kgraph *g, int x, int w, int b, double eps, const char *name, kerr *err)
{
    if (norm_common(g, "layer_norm", x, w, b, err))
        return -1;
    if (!(eps > 0 && eps < 1))
        return fail(err, "layer_norm", "eps is %g; expected a small positive number", eps);
    int in[3] = {x, w, b};
    int id = add(g, KG_LAYER_NORM, name, g->nodes[x].ndim, g->nodes[x].shape, b >= 0 ? 3 : 2,
                 in);
    g->nodes[id].eps = eps;
    return id;
}

int graph_rope(kgraph *g, int x, int pos, const kg_rope *r, const char *name, kerr *err)
{
    if (need_ids(g, "rope", err, 2, x, pos) || need_act(g, "rope", x, "the input", err))
        return -1;
    const kg_node *xn = &g->nodes[x];
    char d[200];
    if (g->nodes[pos].op != KG_INPUT || g->nodes[pos].input_kind != KG_IN_POSITIONS)
        return fail(err, "rope", "the second argument must be g:input(\"positions\"), got %s",
                    desc(g, pos, d, sizeof d));
    if (xn->ndim != 2)
        return fail(err, "rope", "the input must be 2-d [T, heads*head_dim], got %s",
                    desc(g, x, d, sizeof d));
    if (r->head_dim <= 0 || xn->shape[1] % r->head_dim != 0)
        return fail(err, "rope", "width %lld of %s is not a multiple of head_dim %d",
                    (long long)xn->shape[1], xn->name, r->head_dim);
    if (r->rot_dim <= 0 || r->rot_dim > r->head_dim || r->rot_dim % 2)
        return fail(err, "rope", "rotary dimension %d must be even and within head_dim %d",
                    r->rot_dim, r->head_dim);
    int in[2] = {x, pos};
    int id = add(g, KG_ROPE, name, 2, xn->shape, 2, in);
    g->nodes[id].rope = *r;
    return id;
}

int graph_attention(kgraph *g, int q, int k, int v, const kg_attn *a, const char *name,
                    kerr *err)
{
    if (need_ids(g, "attention", err, 3, q, k, v) ||
        need_act(g, "attention", q, "q", err) || need_act(g, "attention", k, "k", err) ||
        need_act(g, "attention", v, "v", err))
        return -1;
    if (a->n_heads <= 0 || a->n_kv_heads <= 0 || a->head_dim <= 0)
        return fail(err, "attention", "heads %d, kv_heads %d, head_dim %d must be positive",
                    a->n_heads, a->n_kv_heads, a->head_dim);
    if (a->n_heads % a->n_kv_heads)
        return fail(err, "attention",
                    "%d query heads are not divisible by %d key/value heads (grouped-query "
                    "attention needs heads %% kv_heads == 0)",
                    a->n_heads, a->n_kv_heads);
    if (a->window < 0)
        return fail(err, "attention", "sliding window %d is negative", a->window);
    if (!(a->scale > 0))
        return fail(err, "attention", "scale %g must be positive", a->scale);
    if (need_shape(g, "attention", q, "q", NULL, 2, (int64_t)KG_T,
                   (int64_t)a->n_heads * a->head_dim) == 0 &&
        need_shape(g, "attention", k, "k", NULL, 2, (int64_t)KG_T,
                   (int64_t)a->n_kv_heads * a->head_dim) == 0 &&
        need_shape(g, "attention", v, "v", NULL, 2, (int64_t)KG_T,
                   (int64_t)a->n_kv_heads * a->head_dim) == 0) {
        int64_t sh[2] = {KG_T, (int64_t)a->n_heads * a->head_dim};
        int in[3] = {q, k, v};
        int id = add(g, KG_ATTENTION, name, 2, sh, 3, in);
        g->nodes[id].attn = *a;
        g->nodes[id].attn.layer = g->n_layers++;
        return id;
    }
    char dq[200], dk[200], dv[200];
    return fail(err, "attention",
                "with %d heads, %d kv heads and head_dim %d, expected q [T, %lld] and k, v [T, "
                "%lld]; got q %s, k %s, v %s",
                a->n_heads, a->n_kv_heads, a->head_dim, (long long)a->n_heads * a->head_dim,
                (long long)a->n_kv_heads * a->head_dim, desc(g, q, dq, sizeof dq), desc(g, k, dk, sizeof dk),
                desc(g, v, dv, sizeof dv));
}

int graph_mla(kgraph *g, const int ins[5], const kg_mla *m, const char *name, kerr *err)
{
    if (need_ids(g, "mla_attention", err, 5, ins[0], ins[1], ins[2], ins[3], ins[4]) ||
        need_act(g, "mla_attention", ins[KG_MLA_Q_NOPE], "q_nope", err) ||
        need_act(g, "mla_attention", ins[KG_MLA_Q_PE], "q_pe", err) ||
        need_act(g, "mla_attention", ins[KG_MLA_LATENT], "the latent", err) ||
        need_act(g, "mla_attention", ins[KG_MLA_K_PE], "k_pe", err) ||
        need_const(g, "mla_attention", ins[KG_MLA_KV_B], "kv_b", err))
        return -1;
    if (m->n_heads <= 0 || m->nope_dim <= 0 || m->rope_dim <= 0 || m->v_dim <= 0 ||
        m->rank <= 0)
        return fail(err, "mla_attention",
                    "heads %d, nope_dim %d, rope_dim %d, v_dim %d and rank %d must be positive",
                    m->n_heads, m->nope_dim, m->rope_dim, m->v_dim, m->rank);
    if (!(m->scale > 0) || !isfinite(m->scale))
        return fail(err, "mla_attention", "scale %g must be positive", m->scale);
    int64_t h = m->n_heads;
    if (need_shape(g, "mla_attention", ins[KG_MLA_Q_NOPE], "q_nope", err, 2, (int64_t)KG_T,
                   h * m->nope_dim) ||
        need_shape(g, "mla_attention", ins[KG_MLA_Q_PE], "q_pe", err, 2, (int64_t)KG_T,
                   h * m->rope_dim) ||
        need_shape(g, "mla_attention", ins[KG_MLA_LATENT], "the latent", err, 2, (int64_t)KG_T,
                   (int64_t)m->rank) ||
        need_shape(g, "mla_attention", ins[KG_MLA_K_PE], "k_pe", err, 2, (int64_t)KG_T,
                   (int64_t)m->rope_dim) ||
        need_shape(g, "mla_attention", ins[KG_MLA_KV_B], "kv_b [heads*(nope_dim+v_dim), rank]",
                   err, 2, h * (m->nope_dim + m->v_dim), (int64_t)m->rank))
        return -1;
    int64_t sh[2] = {KG_T, h * m->v_dim};
    int id = add(g, KG_MLA, name, 2, sh, 5, ins);
    g->nodes[id].mla = *m;
    g->nodes[id].mla.layer = g->n_layers++;
    return id;
}

int graph_unary(kgraph *g, kg_op op, int x, const char *name, kerr *err)
{
    const char *on = kg_op_name(op);
    if (op != KG_SILU && op != KG_GELU && op != KG_GELU_TANH && op != KG_RELU)
        return fail(err, on, "not an activation");
    if (need_ids(g, on, err, 1, x) || need_act(g, on, x, "the input", err))
        return -1;
    return add(g, op, name, g->nodes[x].ndim, g->nodes[x].shape, 1, &x);
}

int graph_binary(kgraph *g, kg_op op, int a, int b, const char *name, kerr *err)
{
    const char *on = kg_op_name(op);
    if (op != KG_ADD && op != KG_MUL)
        return fail(err, on, "not a binary op");
    if (need_ids(g, on, err, 2, a, b))
        return -1;
    if (g->nodes[a].is_const && !g->nodes[b].is_const) { /* keep the activation first */
        int t = a;
        a = b;
        b = t;
    }
    if (need_act(g, on, a, "the first operand", err))
        return -1;
    const kg_node *an = &g->nodes[a], *bn = &g->nodes[b];
    int ok;
    if (!bn->is_const) {
        ok = an->ndim == bn->ndim;
        for (int i = 0; ok && i < an->ndim; i++)
            ok = an->shape[i] == bn->shape[i];
    } else { /* broadcast a constant over T: its shape is the trailing dims */
        ok = bn->ndim == an->ndim - 1;
        for (int i = 0; ok && i < bn->ndim; i++)
            ok = bn->shape[i] == an->shape[i + 1];
    }
    if (!ok) {
        char d[200], e[200];
        return fail(err, on, "shapes do not match: %s and %s", desc(g, a, d, sizeof d),
                    desc(g, b, e, sizeof e));
    }
    int in[2] = {a, b};
    return add(g, op, name, an->ndim, an->shape, 2, in);
}

int graph_scale(kgraph *g, int x, double s, const char *name, kerr *err)
{
    if (need_ids(g, "scale", err, 1, x) || need_act(g, "scale", x, "the input", err))
        return -1;
    if (!isfinite(s))
        return fail(err, "scale", "factor %g is not finite", s);
    int id = add(g, KG_SCALE, name, g->nodes[x].ndim, g->nodes[x].shape, 1, &x);
    g->nodes[id].scalar = s;
    return id;
}

int graph_moe(kgraph *g, const int ins[9], const kg_moe *m, const char *name, kerr *err)
{
    if (need_ids(g, "moe", err, 5, ins[0], ins[1], ins[2], ins[3], ins[4]) ||
        need_act(g, "moe", ins[KG_MOE_X], "the input", err))
        return -1;
    const kg_node *x = &g->nodes[ins[KG_MOE_X]];
    char d[200];
    if (x->ndim != 2)
        return fail(err, "moe", "the input must be [T, hidden], got %s",
                    desc(g, ins[0], d, sizeof d));
    int64_t H = x->shape[1], E = m->n_experts;
    if (E < 1)
        return fail(err, "moe", "%lld experts; expected at least 1", (long long)E);
    if (m->top_k < 1 || m->top_k > E)
        return fail(err, "moe", "top_k %d must be between 1 and the number of experts %lld",
                    m->top_k, (long long)E);
    if (m->routing == KG_ROUTE_SPARSEMIXER && (m->top_k != 2 || m->renormalize))
        return fail(err, "moe", "routing \"sparsemixer\" picks exactly 2 experts and does not "
                                "renormalise their weights; got top_k %d%s (set top_k = 2, "
                                "renormalize = false)",
                    m->top_k, m->renormalize ? " and renormalize = true" : "");
    if (m->routing == KG_ROUTE_SPARSEMIXER && !(m->jitter_eps >= 0 && m->jitter_eps < 1e30))
        return fail(err, "moe", "jitter_eps is %g; expected a number >= 0", m->jitter_eps);
    const kg_node *gate = &g->nodes[ins[KG_MOE_GATE]];
    if (gate->ndim != 3)
        return fail(err, "moe", "expert gate weights must be stacked [experts, inter, hidden], "
                                "got %s", desc(g, ins[KG_MOE_GATE], d, sizeof d));
    int64_t I = gate->shape[1];
    static const char *what[] = {"", "the router", "the expert gate weights",
                                 "the expert up weights", "the expert down weights"};
    for (int i = 1; i <= 4; i++)
        if (need_const(g, "moe", ins[i], what[i], err))
            return -1;
    if (need_shape(g, "moe", ins[KG_MOE_ROUTER], "the router", err, 2, E, H) ||
        need_shape(g, "moe", ins[KG_MOE_GATE], "the expert gate weights", err, 3, E, I, H) ||
        need_shape(g, "moe", ins[KG_MOE_UP], "the expert up weights", err, 3, E, I, H) ||
        need_shape(g, "moe", ins[KG_MOE_DOWN], "the expert down weights", err, 3, E, H, I))
        return -1;
    int nin = 5;
    if (m->has_shared) {
        if (need_ids(g, "moe", err, 3, ins[5], ins[6], ins[7]))
            return -1;
        int64_t I2 = g->nodes[ins[KG_MOE_SH_GATE]].shape[0];
        if (need_shape(g, "moe", ins[KG_MOE_SH_GATE], "the shared expert gate", err, 2, I2, H) ||
            need_shape(g, "moe", ins[KG_MOE_SH_UP], "the shared expert up", err, 2, I2, H) ||
            need_shape(g, "moe", ins[KG_MOE_SH_DOWN], "the shared expert down", err, 2, H, I2))
            return -1;
        nin = 8;
        if (m->shared_gate) {
            if (need_ids(g, "moe", err, 1, ins[8]) ||
                need_shape(g, "moe", ins[KG_MOE_SH_GATE_W], "the shared expert gate vector", err,
                           2, (int64_t)1, H))
                return -1;
            nin = 9;
        }
    }
    int id = add(g, KG_MOE, name, 2, x->shape, nin, ins);
    g->nodes[id].moe = *m;
    return id;
}

int graph_pool(kgraph *g, int x, int mode, int normalize, const char *name, kerr *err)
{
    if (need_ids(g, "pool", err, 1, x) || need_act(g, "pool", x, "the input", err))
        return -1;
    if (g->nodes[x].ndim != 2)
        return fail(err, "pool", "the input must be [T, hidden]");
    if (mode < KILN_POOL_MEAN || mode > KILN_POOL_LAST)
        return fail(err, "pool", "unknown mode %d", mode);
    if (g->output >= 0)
        return fail(err, "pool", "the graph already has an output (%s)",
                    g->nodes[g->output].name);
    int64_t sh[2] = {KG_S, g->nodes[x].shape[1]};
    int id = add(g, KG_POOL, name, 2, sh, 1, &x);
    g->nodes[id].pool_mode = mode;
    g->nodes[id].pool_normalize = normalize;
    g->output = id;
    return id;
}

/* The classify head on pooled rows (graph.h, KG_SCORE_*). It takes over the output from the
 * POOL it scores, so a classify graph ends in SCORE and its pooling stays a POOL node. */
int graph_score(kgraph *g, const int ins[5], const char *name, kerr *err)
{
    int x = ins[KG_SCORE_X], w = ins[KG_SCORE_W], dw = ins[KG_SCORE_DENSE];
    if (need_ids(g, "score", err, 2, x, w))
        return -1;
    if (g->nodes[x].op != KG_POOL || g->output != x)
        return fail(err, "score", "the input must be the graph's pooled output (g:pool), got %s",
                    g->nodes[x].name);
    if (need_const(g, "score", w, "the head weight", err))
        return -1;
    int64_t H = g->nodes[x].shape[1], labels = g->nodes[w].shape[0];
    if (need_shape(g, "score", w, "the head weight [labels, hidden]", err, 2, labels, H))
        return -1;
    if (ins[KG_SCORE_B] >= 0 &&
        (need_ids(g, "score", err, 1, ins[KG_SCORE_B]) ||
         need_const(g, "score", ins[KG_SCORE_B], "the head bias", err) ||
         need_shape(g, "score", ins[KG_SCORE_B], "the head bias", err, 1, labels)))
        return -1;
    if ((dw >= 0) != (ins[KG_SCORE_DENSE_B] >= 0))
        return fail(err, "score", "the pooler's dense weight and bias come together (BERT's "
                                  "pooler.dense.weight and .bias)");
    if (dw >= 0 &&
        (need_ids(g, "score", err, 2, dw, ins[KG_SCORE_DENSE_B]) ||
         need_const(g, "score", dw, "the pooler's dense weight", err) ||
         need_shape(g, "score", dw, "the pooler's dense weight", err, 2, H, H) ||
         need_const(g, "score", ins[KG_SCORE_DENSE_B], "the pooler's dense bias", err) ||
         need_shape(g, "score", ins[KG_SCORE_DENSE_B], "the pooler's dense bias", err, 1, H)))
        return -1;
    int64_t sh[2] = {KG_S, labels};
    int id = add(g, KG_SCORE, name, 2, sh, 5, ins);
    g->output = id;
    return id;
}

int graph_logits(kgraph *g, int x, int w, int b, const char *name, kerr *err)
{
    if (need_ids(g, "logits", err, 2, x, w) || need_act(g, "logits", x, "the input", err) ||
        need_const(g, "logits", w, "the head weight", err))
        return -1;
    const kg_node *xn = &g->nodes[x], *wn = &g->nodes[w];
    char d[200], e[200];
    if (xn->ndim != 2 || wn->ndim != 2 || wn->shape[1] != xn->shape[1])
        return fail(err, "logits", "input %s does not fit head %s [vocab, hidden]",
                    desc(g, x, d, sizeof d), desc(g, w, e, sizeof e));
    if (g->output >= 0)
        return fail(err, "logits", "the graph already has an output (%s)",
                    g->nodes[g->output].name);
    if (b >= 0 && (need_ids(g, "logits", err, 1, b) || need_const(g, "logits", b, "the bias", err) ||
                   need_shape(g, "logits", b, "the bias", err, 1, wn->shape[0])))
        return -1;
    int64_t sh[2] = {KG_T, wn->shape[0]};
    int in[3] = {x, w, b};
    int id = add(g, KG_LOGITS, name, 2, sh, b >= 0 ? 3 : 2, in);
    g->output = id;
    return id;
}

int graph_logits_softcap(kgraph *g, int id, double cap, kerr *err)
{
    if (!valid_id(g, id) || g->nodes[id].op != KG_LOGITS)
        return fail(err, "logits", "the soft cap applies to a logits node");
    if (!(cap > 0) || !isfinite(cap))
        return fail(err, "logits", "softcap is %g; expected a positive number (HF's "
                    "final_logit_softcapping), or no softcap option for none", cap);
    g->nodes[id].softcap = cap;
    return 0;
}

/* ---------------------------------------------------------------- verify */

int graph_verify(const kgraph *g, kerr *err)
{
    int bad = 0;
#define BAD(...) (bad = 1, kerr_add(err, __VA_ARGS__))
    for (int i = 0; i < g->n; i++) {
        const kg_node *n = &g->nodes[i];
        if ((unsigned)n->op >= KG_NOPS) {
            BAD("verify: node %d has invalid op %d", i, (int)n->op);
            continue;
        }
        if (n->n_in < 0 || n->n_in > KG_MAX_IN)
            BAD("verify: %%%d %s: %d inputs", i, n->name, n->n_in);
        for (int k = 0; k < n->n_in && k < KG_MAX_IN; k++) {
            int in = n->in[k];
            int optional = ((n->op == KG_LINEAR || n->op == KG_LOGITS) && k == 2) ||
                           (n->op == KG_LAYER_NORM && k == 2) ||
                           (n->op == KG_SCORE && k >= KG_SCORE_B) ||
                           (n->op == KG_MOE && k >= KG_MOE_SH_GATE);
            if (in == -1 && optional)
                continue;
            if (in < 0 || in >= i)
                BAD("verify: %%%d %s: input %d refers to %%%d, which is not an earlier node", i,
                    n->name, k, in);
        }
        if (n->ndim < 1 || n->ndim > KG_MAX_DIMS) {
            BAD("verify: %%%d %s: %d dimensions", i, n->name, n->ndim);
            continue;
        }
        for (int d = 0; d < n->ndim; d++) {
            int64_t s = n->shape[d];
            int dyn_ok = d == 0 && ((s == KG_T && !n->is_const) || (s == KG_S && (n->op == KG_POOL || n->op == KG_SCORE)));
            if (s <= 0 && !dyn_ok)
                BAD("verify: %%%d %s: dimension %d is %lld", i, n->name, d, (long long)s);
        }
        if (!n->is_const && n->op != KG_POOL && n->op != KG_SCORE && n->shape[0] != KG_T)
            BAD("verify: %%%d %s: activation without T as dimension 0", i, n->name);
        if (!n->name || !*n->name)
            BAD("verify: %%%d has no name", i);
        if (n->op == KG_WEIGHT && (!n->weight || n->n_in))
            BAD("verify: %%%d weight node without a tensor name", i);
        if (n->op == KG_SHARD) {
            const kg_node *s = n->n_in == 1 && n->in[0] >= 0 && n->in[0] < i
                                   ? &g->nodes[n->in[0]] : NULL;
            int ok = s && n->is_const && s->is_const && n->parts >= 1 && g->tp % n->parts == 0 &&
                     n->dim >= 0 && n->dim < n->ndim && s->ndim == n->ndim && n->pad >= 0;
            for (int d = 0; ok && d < n->ndim; d++)
                ok = d == n->dim ? (n->shape[d] - n->pad) * n->parts == s->shape[d]
                                 : n->shape[d] == s->shape[d];
            if (!ok)
                BAD("verify: %%%d %s: a shard that is not a part of its constant for %d ranks", i,
                    n->name, g->tp);
        }
        if (n->softcap != 0 && (n->op != KG_LOGITS || !(n->softcap > 0) || !isfinite(n->softcap)))
            BAD("verify: %%%d %s: a soft cap of %g on a %s node", i, n->name, n->softcap,
                kg_op_name(n->op));
        if ((n->op == KG_ALL_REDUCE || n->op == KG_ALL_GATHER) &&
            (n->n_in != 1 || n->in[0] < 0 || n->in[0] >= i || n->is_const ||
             n->shape[n->ndim - 1] != g->nodes[n->in[0]].shape[n->ndim - 1] *
                                          (n->op == KG_ALL_GATHER ? g->tp : 1)))
            BAD("verify: %%%d %s: a collective whose shape does not follow its input for %d "
                "ranks", i, n->name, g->tp);
    }
    if (g->output < 0 || g->output >= g->n)
        BAD("verify: the graph has no output: an archspec must end in g:logits(...) or "
            "g:pool(...)");
    /* `stored` on a sum fused into its norm says exactly whether another node reads it */
    unsigned char *read = xcalloc((size_t)(g->n ? g->n : 1), 1);
    for (int i = 0; i < g->n; i++)
        for (int k = 0; k < g->nodes[i].n_in && k < KG_MAX_IN; k++) {
            int a = g->nodes[i].in[k];
            if (a >= 0 && a < i && g->nodes[a].fused_into != i)
                read[a] = 1;
        }
    for (int i = 0; i < g->n; i++) {
        const kg_node *n = &g->nodes[i];
        if (n->op == KG_ADD && n->fused_into >= 0 && n->stored != read[i])
            BAD("verify: %%%d %s: fused sum marked %s, but %s", i, n->name,
                n->stored ? "stored" : "not stored",
                read[i] ? "another node reads it" : "no other node reads it");
    }
    free(read);
#undef BAD
    return bad ? -1 : 0;
}

/* ---------------------------------------------------------------- print */

static void print_attrs(const kg_node *n, FILE *f)
{
    switch (n->op) {
    case KG_INPUT: fprintf(f, "%s", input_names[n->input_kind]); break;
    case KG_WEIGHT: fprintf(f, "\"%s\"", n->weight); break;
    case KG_SLICE:
        fprintf(f, "; dim=%d start=%lld len=%lld", n->dim, (long long)n->start,
                (long long)n->len);
        break;
    case KG_CONCAT: fprintf(f, "; dim=%d", n->dim); break;
    case KG_TRANSPOSE: fprintf(f, "; dims=%d,%d", n->dim, n->dim2); break;
    case KG_RMS_NORM:
        fprintf(f, "; eps=%g%s", n->eps, n->unit_offset ? " offset=1" : "");
        break;
    case KG_LAYER_NORM: fprintf(f, "; eps=%g", n->eps); break;
    case KG_SCALE: fprintf(f, "; %g", n->scalar); break;
    case KG_ROPE: {
        const kg_rope *r = &n->rope;
        fprintf(f, "; %s theta=%g head_dim=%d rot=%d%s", rope_type_name(r->p.type), r->p.theta,
                r->head_dim, r->rot_dim, r->interleaved ? " interleaved" : "");
        if (r->p.type != ROPE_DEFAULT)
            fprintf(f, " factor=%g", r->p.factor);
        if (r->p.type == ROPE_LONGROPE)
            fprintf(f, " original=%lld scale=%g/%g", (long long)r->p.original_max_pos,
                    r->p.attention_factor, r->p.long_attention_factor);
        break;
    }
    case KG_ATTENTION: {
        const kg_attn *a = &n->attn;
        fprintf(f, "; heads=%d kv=%d head_dim=%d %s scale=%g", a->n_heads, a->n_kv_heads,
                a->head_dim, a->causal ? "causal" : "bidirectional", a->scale);
        if (a->window)
            fprintf(f, " window=%d", a->window);
        if (a->alibi)
            fprintf(f, a->alibi_heads ? " alibi(of %d heads)" : " alibi", a->alibi_heads);
        if (a->softcap)
            fprintf(f, " softcap=%g", a->softcap);
        fprintf(f, " kv_slot=%d", a->layer);
        break;
    }
    case KG_MLA: {
        const kg_mla *m = &n->mla;
        fprintf(f, "; heads=%d nope=%d rope=%d v=%d rank=%d causal scale=%g kv_slot=%d",
                m->n_heads, m->nope_dim, m->rope_dim, m->v_dim, m->rank, m->scale, m->layer);
        break;
    }
    case KG_MOE: {
        static const char *acts[] = {"silu", "gelu", "gelu_tanh", "relu"};
        fprintf(f, "; experts=%d top_k=%d%s act=%s%s", n->moe.n_experts, n->moe.top_k,
                n->moe.renormalize ? " renormalize" : "", acts[n->moe.act],
                n->moe.has_shared ? (n->moe.shared_gate ? " shared(gated)" : " shared") : "");
        if (n->moe.routing == KG_ROUTE_SPARSEMIXER)
            fprintf(f, " sparsemixer(jitter_eps=%g)", n->moe.jitter_eps);
        break;
    }
    case KG_LINEAR:
        if (n->epi_act >= 0) {
            static const char *acts[] = {"silu", "gelu", "gelu_tanh", "relu"};
            fprintf(f, "; gated=%s", acts[n->epi_act]);
        }
        break;
    case KG_LOGITS:
        if (n->softcap > 0)
            fprintf(f, "; softcap=%g", n->softcap);
        break;
    case KG_SHARD:
        fprintf(f, "; dim=%d parts=%d", n->dim, n->parts);
        if (n->pad)
            fprintf(f, " pad=%d", n->pad);
        break;
    case KG_EMBED:
        if (n->parts > 1)
            fprintf(f, "; vocab parts=%d", n->parts);
        break;
    case KG_ALL_GATHER: fprintf(f, "; dim=%d", n->ndim - 1); break;
    case KG_POOL: {
        static const char *modes[] = {"mean", "cls", "last"};
        fprintf(f, "; %s%s", modes[n->pool_mode], n->pool_normalize ? " normalize" : "");
        break;
    }
    default: break;
    }
}

void graph_print(const kgraph *g, FILE *f)
{
    for (int i = 0; i < g->n; i++) {
        const kg_node *n = &g->nodes[i];
        char sh[96];
        fprintf(f, "%%%-4d %s = %s(", i, n->name, kg_op_name(n->op));
        for (int k = 0; k < n->n_in; k++)
            if (n->in[k] >= 0)
                fprintf(f, "%s%%%d", k ? ", " : "", n->in[k]);
            else
                fprintf(f, "%s-", k ? ", " : "");
        print_attrs(n, f);
        fprintf(f, ") %s %s", graph_shape_str(n, sh, sizeof sh), st_dtype_name(n->dtype));
        if (n->is_const && n->op != KG_WEIGHT)
            fprintf(f, " const");
        if (n->fused_into >= 0)
            fprintf(f, " [computed by %%%d]", n->fused_into);
        if (n->view_of >= 0)
            fprintf(f, " [view of %%%d]", n->view_of);
        if (n->buf >= 0)
            fprintf(f, " [slab +%lld, %lld B/token]", (long long)n->buf, (long long)n->buf_bytes);
        if (n->spec_file) {
            const char *base = strrchr(n->spec_file, '/');
            fprintf(f, "  @%s:%d", base ? base + 1 : n->spec_file, n->spec_line);
        }
        fputc('\n', f);
    }
    if (g->output >= 0)
        fprintf(f, "output %%%d %s\n", g->output, g->nodes[g->output].name);
    if (g->tp > 1)
        fprintf(f, "tp %d\n", g->tp);
}

/* ---------------------------------------------------------------- rewriting */

int graph_append(kgraph *g, const kg_node *proto)
{
    kg_node p = *proto; /* proto may be a node of g, which the realloc below can move */
    if (g->n == g->cap) {
        g->cap = g->cap ? g->cap * 2 : 256;
        g->nodes = xrealloc(g->nodes, sizeof(kg_node) * (size_t)g->cap);
    }
    int id = g->n++;
    kg_node *n = &g->nodes[id];
    *n = p;
    n->name = xstrdup(p.name ? p.name : "node");
    n->weight = p.weight ? xstrdup(p.weight) : NULL;
    return id;
}

int graph_users(const kgraph *g, int id)
{
    int u = 0;
    for (int i = id + 1; i < g->n; i++)
        for (int k = 0; k < g->nodes[i].n_in; k++)
            u += g->nodes[i].in[k] == id;
    return u;
}

int graph_compact(kgraph *g)
{
    unsigned char *live = xcalloc((size_t)(g->n ? g->n : 1), 1);
    if (g->output >= 0)
        live[g->output] = 1;
    for (int k = 0; k < KG_NINPUTS; k++)
        if (g->inputs[k] >= 0)
            live[g->inputs[k]] = 1;
    for (int i = g->n - 1; i >= 0; i--) {
        if (!live[i])
            continue;
        const kg_node *n = &g->nodes[i];
        for (int k = 0; k < n->n_in; k++)
            if (n->in[k] >= 0)
                live[n->in[k]] = 1;
        if (n->fused_into >= 0)
            live[n->fused_into] = 1;
        if (n->view_of >= 0)
            live[n->view_of] = 1;
    }
    int *map = xmalloc(sizeof(int) * (size_t)(g->n ? g->n : 1));
    int m = 0, removed = 0;
    for (int i = 0; i < g->n; i++) {
        if (!live[i]) {
            map[i] = -1;
            free(g->nodes[i].name);
            free(g->nodes[i].weight);
            removed++;
            continue;
        }
        map[i] = m;
        g->nodes[m++] = g->nodes[i];
    }
    g->n = m;
    for (int i = 0; i < g->n; i++) {
        kg_node *n = &g->nodes[i];
        for (int k = 0; k < n->n_in; k++)
            if (n->in[k] >= 0)
                n->in[k] = map[n->in[k]];
        if (n->fused_into >= 0)
            n->fused_into = map[n->fused_into];
        if (n->view_of >= 0)
            n->view_of = map[n->view_of];
    }
    if (g->output >= 0)
        g->output = map[g->output];
    for (int k = 0; k < KG_NINPUTS; k++)
        if (g->inputs[k] >= 0)
            g->inputs[k] = map[g->inputs[k]];
    free(g->wtab); /* node ids changed: rebuilt when next asked */
    g->wtab = NULL;
    g->wcap = g->windexed = g->wcount = 0;
    free(map);
    free(live);
    return removed;
}
