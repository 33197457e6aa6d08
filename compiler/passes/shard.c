/* shard — tensor parallelism: rewrites the graph into the one graph every rank of kc.tp runs,
 * Megatron-style, deriving the split from the graph alone (archspecs say nothing about it):
 *
 *   column   a linear of a replicated input is split by output rows (q/k/v by heads, gate/up by
 *            intermediate units), and what follows it per head or per unit (rope, per-head norms,
 *            activations, the gated product, attention) runs on the rank's part;
 *   row      a linear of a split input is split by input columns: its partial sums are added by an
 *            ALL_REDUCE; each rank adds bias / ranks to its partial sum;
 *   vocab    the token embedding is split by rows (an id outside the rank's rows gives zeros, then
 *            an ALL_REDUCE), the LM head by rows too, its logits joined by an ALL_GATHER;
 *   experts  MoE experts (and the shared expert) are split by their intermediate size, the router
 *            replicated, and an ALL_REDUCE follows. By intermediate size rather than by expert:
 *            every rank then does the same share of every token's work whatever the routing, and
 *            Mixtral's 8 experts split 8 ways as evenly as 2.
 *
 * How: the split state of every activation is propagated forward. A column linear opens a
 * component of split values; the ops listed above keep a value split (and join components); a
 * row linear closes it. A component that reaches anything else (a norm over the split dimension,
 * a slice, a concat, an add with a replicated value, the output) cannot be split: its linears stay
 * whole on every rank (a warning names it) and the propagation runs again, until it holds. Then
 * the sizes are checked: heads, KV heads, intermediate sizes must divide (KV heads fewer than the
 * ranks are replicated when the ranks are a multiple of them); if not, the model is refused with
 * the values of --tp that would work. A vocabulary that is not a multiple of the ranks keeps the
 * embedding and LM head whole (a warning).
 *
 * Padding: kiln's GPU kernels read rows in 16-byte vectors (8 elements of bf16/fp16), so a
 * rank's width must be a multiple of 8 (lower.c refuses others). Dividing an MLP's intermediate
 * size by the ranks can break that (136 units over 2 ranks: 68 each), so a component of MLP
 * units (its column linears, activations, products and sums, nothing per head) is padded: each
 * rank's shard of the column linears' weights and biases gets zero rows up to a multiple of 8,
 * and the row linear that closes it gets as many zero columns. A zero row gives a pre-activation
 * of exactly 0, every activation kiln has maps 0 to 0, and the zero columns multiply whatever is
 * there by 0 anyway, so each rank's partial sum is the unpadded one's. MoE experts (and the
 * shared expert) are padded the same way along their intermediate size. Heads are never padded
 * (attention reads its rows as whole heads), so a split that leaves a rank heads whose output,
 * the o projection's input, is not a multiple of 8 wide (one head of 20) is refused here, with
 * the --tp values that work, as heads the ranks do not divide are.
 *
 * The result is one graph for all ranks: per-rank shapes, SHARD constants that pick each rank's
 * part (graph.h), and the collectives. It runs before fuse, which then fuses a rank's q/k/v and
 * gate/up as it does unsharded.
 */
#include <stdlib.h>
#include <string.h>

#include "passes.h"

enum { REP, SPLIT };

typedef struct an {
    const kgraph *g;
    int tp;
    int *st;            /* activation: REP or SPLIT */
    int *parts;         /* SPLIT: dim 1 is cut in this many parts (divides tp) */
    int *uf;            /* union-find over split nodes: components */
    int *bad;           /* by component root: the node that made it unsplittable + 1, or 0 */
    unsigned char *whole;   /* linears forced whole (their component could not be split) */
    int *heads;         /* linears feeding an attention: heads of their output; 0 otherwise */
    unsigned char *is_q;    /* ... and whether as its query */
    unsigned char *col, *row; /* linears split by columns (output rows) / by rows (input) */
    unsigned char *vocab;   /* EMBED / LOGITS split by vocabulary */
    int *pad;           /* SPLIT: zero columns after the rank's part of dim 1 (see the top) */
} an;

/* The GPU kernels' vector: 16 bytes of bf16/fp16 (lower.c's need8). */
#define VEC 8

/* Zeros that make a rank's width w whole vectors; none with one rank, whose graph computes
 * exactly what the unsharded one does (a width lowering refuses there is refused alike). */
static int vec_pad(int64_t w, int tp) { return tp > 1 ? (int)((VEC - w % VEC) % VEC) : 0; }

static int find(an *a, int x)
{
    while (a->uf[x] != x)
        x = a->uf[x] = a->uf[a->uf[x]];
    return x;
}

static void join(an *a, int x, int y)
{
    x = find(a, x);
    y = find(a, y);
    if (x == y)
        return;
    if (a->bad[y] && !a->bad[x])
        a->bad[x] = a->bad[y];
    a->uf[y] = x;
}

static void spoil(an *a, int x, int by)
{
    int r = find(a, x);
    if (!a->bad[r])
        a->bad[r] = by + 1;
}

static int is_split(const an *a, int id) { return id >= 0 && a->st[id] == SPLIT; }

/* Parts of a column linear's output rows. */
static int col_parts(const an *a, int lin)
{
    int h = a->heads[lin];
    if (h && !a->is_q[lin] && h < a->tp && a->tp % h == 0)
        return h; /* fewer KV heads than ranks: neighbouring ranks share one */
    return a->tp;
}

/* Linears whose output reaches an attention input through per-head ops get its head count. */
static void find_heads(an *a)
{
    const kgraph *g = a->g;
    for (int i = 0; i < g->n; i++) {
        const kg_node *n = &g->nodes[i];
        if (n->op != KG_ATTENTION)
            continue;
        for (int k = 0; k < 3; k++) {
            int s = n->in[k];
            for (int hop = 0; hop < 8 && s >= 0; hop++) {
                const kg_node *m = &g->nodes[s];
                if (m->op == KG_LINEAR && !m->is_const) {
                    a->heads[s] = k == 0 ? n->attn.n_heads : n->attn.n_kv_heads;
                    a->is_q[s] = k == 0;
                    break;
                }
                int per_head = m->op == KG_ROPE || m->op == KG_RESHAPE || m->op == KG_SCALE ||
                               ((m->op == KG_RMS_NORM || m->op == KG_LAYER_NORM) && m->ndim >= 3);
                s = per_head ? m->in[0] : -1;
            }
        }
    }
}

/* One forward propagation; returns 1 when a component was found unsplittable (its linears are
 * then marked whole for the next round), 0 when the split holds. */
static int propagate(an *a)
{
    const kgraph *g = a->g;
    for (int i = 0; i < g->n; i++) {
        a->st[i] = REP;
        a->parts[i] = 1;
        a->uf[i] = i;
        a->bad[i] = 0;
        a->col[i] = a->row[i] = 0;
    }
    for (int i = 0; i < g->n; i++) {
        const kg_node *n = &g->nodes[i];
        if (n->is_const)
            continue;
        int x = n->n_in > 0 ? n->in[0] : -1;
        int any = 0;
        for (int k = 0; k < n->n_in; k++)
            any |= is_split(a, n->in[k]);
        switch (n->op) {
        case KG_LINEAR:
            if (is_split(a, x)) {
                if (a->parts[x] != a->tp || g->nodes[x].ndim != 2)
                    spoil(a, x, i);
                a->row[i] = 1;
            } else if (!a->whole[i] && n->ndim == 2) {
                a->col[i] = 1;
                a->st[i] = SPLIT;
                a->parts[i] = col_parts(a, i);
            }
            continue;
        case KG_ROPE:
        case KG_SCALE:
        case KG_SILU:
        case KG_GELU:
        case KG_GELU_TANH:
        case KG_RELU:
        case KG_RESHAPE:
        case KG_RMS_NORM:
        case KG_LAYER_NORM:
            if (!is_split(a, x))
                break;
            a->st[i] = SPLIT;
            a->parts[i] = a->parts[x];
            join(a, i, x);
            /* a norm over the split dimension needs every rank's part; a weight per head
             * ([n, hd]) is not split, so its heads stay whole too */
            if ((n->op == KG_RMS_NORM || n->op == KG_LAYER_NORM) &&
                (n->ndim < 3 || g->nodes[n->in[1]].ndim == 2))
                spoil(a, i, i);
            /* a reshape keeps the split when dim 1 still cuts into the same parts */
            if (n->op == KG_RESHAPE && (n->ndim < 2 || n->shape[1] % a->parts[x] != 0))
                spoil(a, i, i);
            continue;
        case KG_ADD:
        case KG_MUL: {
            int b = n->in[1];
            if (!any)
                break;
            a->st[i] = SPLIT;
            a->parts[i] = is_split(a, x) ? a->parts[x] : a->parts[b];
            if (is_split(a, x))
                join(a, i, x);
            if (is_split(a, b))
                join(a, i, b);
            if (!is_split(a, x) || !is_split(a, b) || a->parts[x] != a->parts[b])
                spoil(a, i, i);
            continue;
        }
        case KG_ATTENTION:
            if (!any)
                break;
            a->st[i] = SPLIT;
            a->parts[i] = a->tp;
            for (int k = 0; k < 3; k++) {
                if (is_split(a, n->in[k]))
                    join(a, i, n->in[k]);
                else
                    spoil(a, i, i);
            }
            if (is_split(a, n->in[0]) && a->parts[n->in[0]] != a->tp)
                spoil(a, i, i);
            continue;
        default:
            break;
        }
        /* anything else needs its inputs whole */
        for (int k = 0; k < n->n_in; k++)
            if (is_split(a, n->in[k]))
                spoil(a, n->in[k], i);
    }
    if (is_split(a, g->output))
        spoil(a, g->output, g->output);
    /* Only the first unsplittable component is made whole per round: what follows it was
     * propagated from its wrong split (a norm reading it looked split, so the next layer's q
     * looked like a row linear...), and is decided again in the next round. */
    int first = -1;
    for (int i = 0; i < g->n && first < 0; i++)
        if (a->col[i] && a->bad[find(a, i)])
            first = find(a, i);
    if (first < 0)
        return 0;
    for (int i = 0; i < g->n; i++)
        if (a->col[i] && find(a, i) == first)
            a->whole[i] = 1;
    return 1;
}

/* Pads the components of MLP units: those whose every value is a column linear without heads
 * or an op that keeps zeros zero (an activation, a product, a sum, a scale). */
static void find_pads(an *a)
{
    const kgraph *g = a->g;
    unsigned char *fixed = xcalloc((size_t)(g->n ? g->n : 1), 1); /* by component root */
    for (int i = 0; i < g->n; i++) {
        if (a->st[i] != SPLIT)
            continue;
        kg_op op = g->nodes[i].op;
        int units = (op == KG_LINEAR && !a->heads[i]) || op == KG_SILU || op == KG_GELU ||
                    op == KG_GELU_TANH || op == KG_RELU || op == KG_MUL || op == KG_ADD ||
                    op == KG_SCALE;
        if (!units)
            fixed[find(a, i)] = 1;
    }
    for (int i = 0; i < g->n; i++)
        if (a->st[i] == SPLIT && !fixed[find(a, i)])
            a->pad[i] = vec_pad(g->nodes[i].shape[1] / a->parts[i], a->tp);
    free(fixed);
}

static void an_free(an *a)
{
    free(a->st);
    free(a->parts);
    free(a->uf);
    free(a->bad);
    free(a->whole);
    free(a->heads);
    free(a->is_q);
    free(a->col);
    free(a->row);
    free(a->vocab);
    free(a->pad);
}

/* Analyses the graph for tp ranks. Returns 0, or the number of sizes that do not divide (with
 * their messages in err when err is not NULL). */
static int analyse(an *a, const kgraph *g, int tp, kerr *err)
{
    size_t n = (size_t)(g->n ? g->n : 1);
    memset(a, 0, sizeof *a);
    a->g = g;
    a->tp = tp;
    a->st = xcalloc(n, sizeof(int));
    a->parts = xcalloc(n, sizeof(int));
    a->uf = xcalloc(n, sizeof(int));
    a->bad = xcalloc(n, sizeof(int));
    a->heads = xcalloc(n, sizeof(int));
    a->whole = xcalloc(n, 1);
    a->is_q = xcalloc(n, 1);
    a->col = xcalloc(n, 1);
    a->row = xcalloc(n, 1);
    a->vocab = xcalloc(n, 1);
    a->pad = xcalloc(n, sizeof(int));
    find_heads(a);
    /* each round makes at least one more linear whole, so this ends */
    while (propagate(a))
        ;
    find_pads(a);
    int nfail = 0;
    /* the first few (the same sizes repeat in every layer), then a count */
#define FAIL(...) (++nfail <= 3 && err ? kerr_add(err, __VA_ARGS__) : 0)
    for (int i = 0; i < g->n; i++) {
        const kg_node *m = &g->nodes[i];
        if (a->col[i]) {
            int h = a->heads[i];
            if (h && h % tp && !(col_parts(a, i) == h && tp % h == 0))
                FAIL("%s: %d %s heads cannot be split over %d ranks (%s)", m->name, h,
                     a->is_q[i] ? "query" : "key/value", tp,
                     a->is_q[i] ? "the ranks must divide the heads"
                                : "the ranks must divide the KV heads, or be a multiple of them");
            else if (!h && m->shape[1] % tp)
                FAIL("%s: %lld outputs cannot be split over %d ranks", m->name,
                     (long long)m->shape[1], tp);
        }
        /* what a row linear reads on each rank: MLP units are padded to the GPU's vectors;
         * heads (or a split the pass cannot pad) that miss them are refused here rather than
         * by lowering, so that the --tp values listed are those that compile (with one rank
         * the width is the unsharded one, which lowering judges) */
        if (a->row[i] && tp > 1) {
            const kg_node *x = &g->nodes[m->in[0]];
            int64_t k = x->shape[1] / tp + a->pad[m->in[0]];
            if (k % VEC)
                FAIL("%s: its input is %lld wide on each of %d ranks (%lld / %d), not a multiple "
                     "of %d: kiln's GPU kernels read rows in 16-byte vectors, and only an MLP's "
                     "units are padded to them, not heads",
                     m->name, (long long)k, tp, (long long)x->shape[1], tp, VEC);
        }
        if (m->op == KG_MOE) {
            int64_t I = g->nodes[m->in[KG_MOE_GATE]].shape[1];
            if (I % tp)
                FAIL("%s: the experts' intermediate size %lld cannot be split over %d ranks",
                     m->name, (long long)I, tp);
            if (m->moe.has_shared) {
                int64_t I2 = g->nodes[m->in[KG_MOE_SH_GATE]].shape[0];
                if (I2 % tp)
                    FAIL("%s: the shared expert's intermediate size %lld cannot be split over "
                         "%d ranks", m->name, (long long)I2, tp);
            }
        }
        /* the vocabulary: the ids' embedding and the LM head, when the rows divide */
        if (m->op == KG_EMBED && g->nodes[m->in[1]].op == KG_INPUT &&
            g->nodes[m->in[1]].input_kind == KG_IN_IDS)
            a->vocab[i] = g->nodes[m->in[0]].shape[0] % tp == 0;
        if (m->op == KG_LOGITS)
            a->vocab[i] = g->nodes[m->in[1]].shape[0] % tp == 0;
    }
#undef FAIL
    if (nfail > 3 && err)
        kerr_add(err, "(and %d more like these)", nfail - 3);
    return nfail;
}

/* ---------------------------------------------------------------- rewrite */

typedef struct rw {
    const kgraph *g;
    kgraph *g2;
    int *map;
    int *memo, *memo_dim, *memo_parts, *memo_pad; /* per old const: its last SHARD */
} rw;

static kg_node proto(const kg_node *like, kg_op op, const char *name)
{
    kg_node p;
    memset(&p, 0, sizeof p);
    p.op = op;
    p.dtype = like->dtype;
    p.ndim = like->ndim;
    memcpy(p.shape, like->shape, sizeof p.shape);
    p.name = (char *)name;
    p.spec_file = like->spec_file;
    p.spec_line = like->spec_line;
    p.epi_act = p.fused_into = p.view_of = -1;
    p.buf = -1;
    return p;
}

/* The rank's part of old constant `c`: dim cut in `parts`, then `pad` zeros along it. */
static int shard_of(rw *w, int c, int dim, int parts, int pad)
{
    if (c < 0)
        return -1;
    if (w->memo[c] >= 0 && w->memo_dim[c] == dim && w->memo_parts[c] == parts &&
        w->memo_pad[c] == pad)
        return w->memo[c];
    const kg_node *n = &w->g->nodes[c];
    char *name = xasprintf("%s.shard", n->name);
    kg_node p = proto(n, KG_SHARD, name);
    p.is_const = 1;
    p.n_in = 1;
    p.in[0] = w->map[c];
    p.dim = dim;
    p.parts = parts;
    p.pad = pad;
    p.shape[dim] = p.shape[dim] / parts + pad;
    int id = graph_append(w->g2, &p);
    free(name);
    w->memo[c] = id;
    w->memo_dim[c] = dim;
    w->memo_parts[c] = parts;
    w->memo_pad[c] = pad;
    return id;
}

/* A row-parallel linear's bias divided by the ranks: every rank adds its share in the GEMM's
 * epilogue and the all-reduce sums them. (Not the whole bias after the all-reduce: that is one
 * more kernel per row linear, and with one rank the graph would not compute exactly what the
 * unsharded one does.) */
static int share_of(rw *w, int b)
{
    const kg_node *n = &w->g->nodes[b];
    char *name = xasprintf("%s.share", n->name);
    kg_node p = proto(n, KG_SCALE, name);
    p.is_const = 1;
    p.n_in = 1;
    p.in[0] = w->map[b];
    p.scalar = 1.0 / w->g2->tp;
    int id = graph_append(w->g2, &p);
    free(name);
    return id;
}

/* A collective after node `x` of the new graph, named `name`. */
static int follow(rw *w, kg_op op, int x, const char *name)
{
    const kg_node *n = &w->g2->nodes[x];
    kg_node p = proto(n, op, name);
    p.n_in = 1;
    p.in[0] = x;
    if (op == KG_ALL_GATHER)
        p.shape[p.ndim - 1] *= w->g2->tp;
    return graph_append(w->g2, &p);
}

/* Copies old node i with mapped inputs; the caller edits the copy. */
static kg_node copy(const rw *w, int i)
{
    kg_node p = w->g->nodes[i];
    for (int k = 0; k < p.n_in; k++)
        if (p.in[k] >= 0)
            p.in[k] = w->map[p.in[k]];
    return p;
}

/* Appends p; when `partial` it is renamed NAME.part and followed by an ALL_REDUCE that takes the
 * old name. */
static int emit(rw *w, kg_node *p, int partial)
{
    if (!partial)
        return graph_append(w->g2, p);
    char *old = p->name;
    char *part = xasprintf("%s.part", old);
    p->name = part;
    int id = graph_append(w->g2, p);
    free(part);
    return follow(w, KG_ALL_REDUCE, id, old);
}

static void rewrite(const an *a, kgraph *g2)
{
    const kgraph *g = a->g;
    int tp = a->tp;
    size_t n = (size_t)(g->n ? g->n : 1);
    rw w = {.g = g, .g2 = g2};
    w.map = xmalloc(n * sizeof(int));
    w.memo = xmalloc(n * sizeof(int));
    w.memo_dim = xcalloc(n, sizeof(int));
    w.memo_parts = xcalloc(n, sizeof(int));
    w.memo_pad = xcalloc(n, sizeof(int));
    for (size_t i = 0; i < n; i++)
        w.memo[i] = -1;
    g2->tp = tp;
    g2->n_layers = g->n_layers;
    g2->output = -1;
    for (int i = 0; i < g->n; i++) {
        const kg_node *o = &g->nodes[i];
        kg_node p = copy(&w, i);
        if (a->st[i] == SPLIT)
            p.shape[1] = p.shape[1] / a->parts[i] + a->pad[i];
        int partial = 0, gather = 0;
        switch (o->op) {
        case KG_LINEAR:
            if (a->col[i]) {
                p.in[1] = shard_of(&w, o->in[1], 0, a->parts[i], a->pad[i]);
                if (o->n_in > 2 && o->in[2] >= 0)
                    p.in[2] = shard_of(&w, o->in[2], 0, a->parts[i], a->pad[i]);
            } else if (a->row[i]) {
                p.in[1] = shard_of(&w, o->in[1], 1, tp, a->pad[o->in[0]]);
                if (o->n_in > 2 && o->in[2] >= 0 && tp > 1)
                    p.in[2] = share_of(&w, o->in[2]);
                partial = 1;
            }
            break;
        case KG_ATTENTION:
            if (a->st[i] == SPLIT) {
                if (p.attn.alibi)
                    p.attn.alibi_heads = o->attn.n_heads;
                p.attn.n_heads /= tp;
                p.attn.n_kv_heads /= a->parts[o->in[1]];
            }
            break;
        case KG_EMBED:
            if (a->vocab[i]) {
                p.in[0] = shard_of(&w, o->in[0], 0, tp, 0);
                p.parts = tp;
                partial = 1;
            }
            break;
        case KG_LOGITS:
            if (a->vocab[i]) {
                p.in[1] = shard_of(&w, o->in[1], 0, tp, 0);
                if (o->n_in > 2 && o->in[2] >= 0)
                    p.in[2] = shard_of(&w, o->in[2], 0, tp, 0);
                p.shape[1] /= tp;
                gather = 1;
            }
            break;
        case KG_MOE: {
            static const int dims[] = {[KG_MOE_GATE] = 1, [KG_MOE_UP] = 1, [KG_MOE_DOWN] = 2,
                                       [KG_MOE_SH_GATE] = 0, [KG_MOE_SH_UP] = 0,
                                       [KG_MOE_SH_DOWN] = 1};
            /* the experts' and the shared expert's intermediate sizes, padded (see the top) */
            int pad = vec_pad(g->nodes[o->in[KG_MOE_GATE]].shape[1] / tp, tp), sh_pad = 0;
            if (o->moe.has_shared)
                sh_pad = vec_pad(g->nodes[o->in[KG_MOE_SH_GATE]].shape[0] / tp, tp);
            for (int k = KG_MOE_GATE; k <= KG_MOE_SH_DOWN && k < o->n_in; k++)
                if (o->in[k] >= 0)
                    p.in[k] = shard_of(&w, o->in[k], dims[k], tp,
                                       k >= KG_MOE_SH_GATE ? sh_pad : pad);
            partial = 1;
            break;
        }
        default: break;
        }
        int id;
        if (gather) {
            char *part = xasprintf("%s.part", o->name);
            p.name = part;
            id = follow(&w, KG_ALL_GATHER, graph_append(g2, &p), o->name);
            free(part);
        } else {
            id = emit(&w, &p, partial);
        }
        w.map[i] = id;
    }
    g2->output = w.map[g->output];
    for (int k = 0; k < KG_NINPUTS; k++)
        g2->inputs[k] = g->inputs[k] >= 0 ? w.map[g->inputs[k]] : -1;
    /* spec file names are interned per graph */
    for (int i = 0; i < g2->n; i++)
        if (g2->nodes[i].spec_file) {
            graph_set_loc(g2, g2->nodes[i].spec_file, 0);
            g2->nodes[i].spec_file = g2->cur_file;
        }
    graph_set_loc(g2, NULL, 0);
    free(w.map);
    free(w.memo);
    free(w.memo_dim);
    free(w.memo_parts);
    free(w.memo_pad);
}

/* "1, 2, 4 and 8" for the tp values up to KC_MAX_TP that divide everything. */
static char *working_tps(const kgraph *g)
{
    char buf[512];
    size_t k = 0;
    int found[KC_MAX_TP + 1], nf = 0;
    for (int t = 1; t <= KC_MAX_TP; t++) {
        an a;
        if (analyse(&a, g, t, NULL) == 0)
            found[nf++] = t;
        an_free(&a);
    }
    buf[0] = 0;
    for (int i = 0; i < nf && k < sizeof buf; i++)
        k += (size_t)snprintf(buf + k, sizeof buf - k, "%s%d",
                              i == 0 ? "" : i == nf - 1 ? " and " : ", ", found[i]);
    return xstrdup(buf);
}

int pass_shard(kc *c, kerr *err)
{
    if (c->tp == 0)
        return 0;
    const kgraph *g = c->g;
    an a;
    kerr why;
    kerr_clear(&why);
    if (analyse(&a, g, c->tp, &why)) {
        char *ok = working_tps(g);
        if (strcmp(ok, "1") == 0)
            kerr_add(err, "--tp %d: %s cannot be split over %d ranks:\n%s\nIt cannot be split "
                          "at all: only --tp 1 works.",
                     c->tp, c->spec->name, c->tp, kerr_msg(&why));
        else
            kerr_add(err, "--tp %d: %s cannot be split over %d ranks:\n%s\nIt can be split over "
                          "%s ranks (--tp).",
                     c->tp, c->spec->name, c->tp, kerr_msg(&why), ok);
        free(ok);
        an_free(&a);
        return -1;
    }
    /* what stays whole, once per component */
    for (int i = 0; i < g->n; i++) {
        if (!a.whole[i] || a.row[i])
            continue;
        int first = 1;
        for (int k = 0; k < i && first; k++)
            first = !(a.whole[k] && g->nodes[k].in[0] == g->nodes[i].in[0]);
        if (first)
            kerr_add(&c->warn, "--tp %d: %s is computed whole on every rank: what it feeds "
                               "reaches an op the shard pass cannot split (slower, not wrong)",
                     c->tp, g->nodes[i].name);
    }
    for (int i = 0; i < g->n; i++)
        if ((g->nodes[i].op == KG_LOGITS ||
             (g->nodes[i].op == KG_EMBED && g->nodes[g->nodes[i].in[1]].op == KG_INPUT &&
              g->nodes[g->nodes[i].in[1]].input_kind == KG_IN_IDS)) &&
            !a.vocab[i])
            kerr_add(&c->warn, "--tp %d: %s is whole on every rank: its %lld vocabulary rows are "
                               "not a multiple of %d",
                     c->tp, g->nodes[i].name,
                     (long long)g->nodes[g->nodes[i].in[g->nodes[i].op == KG_LOGITS]].shape[0],
                     c->tp);
    kgraph *g2 = graph_new();
    rewrite(&a, g2);
    an_free(&a);
    graph_free(c->g);
    c->g = g2;
    return 0;
}
