/* fuse — rewrites the graph so that the GPU runs fewer, larger kernels. Every rewrite keeps
 * the function the graph computes (the CPU reference runs the fused graph too, and the tests
 * check it still matches HF):
 *
 *   q, k, v   three linears of one input feeding one attention become one linear whose weight
 *             is concat(Wq, Wk, Wv) (the packer materialises it), with q, k, v as column
 *             slices read in place (view_of); also when q and k pass through a norm on their
 *             way (Qwen3's per-head q/k norms, OLMo2's over the whole width), which then reads
 *             its slice in place;
 *   gate, up  act(x.Wg) * (x.Wu) becomes one linear with weight concat(Wg, Wu) and a gated
 *             epilogue (epi_act);
 *   add+norm  norm(a + b) is computed by the norm kernel, which also writes the sum for the
 *             residual stream (the add is marked fused_into the norm, and `stored` when
 *             another node reads the sum);
 *   rope+kv   the rotations of q and k feeding an attention are done by the kernel that writes
 *             k and v into the KV cache (marked fused_into the attention); those of q_pe and k_pe
 *             feeding a multi-head latent attention by its two kernels (fused_into the MLA).
 *
 * Bias and activation epilogues of single linears are left to code generation (cuBLASLt bias
 * epilogue, the GEMV kernel's bias). The rewrite builds a new graph: constants first (they
 * depend only on constants), then activations in their original order with the fused nodes
 * emitted where the first member of a group stood.
 */
#include <stdlib.h>
#include <string.h>

#include "passes.h"

enum { ROLE_NONE, ROLE_SKIP, ROLE_QKV, ROLE_GATED };

typedef struct plan {
    int role;      /* of each old node */
    int group[3];  /* QKV: the linears q, k, v; GATED (at the MUL): gate linear, up linear, act */
} plan;

static int is_act(kg_op op)
{
    return op == KG_SILU || op == KG_GELU || op == KG_GELU_TANH || op == KG_RELU;
}

static int act_kind(kg_op op)
{
    return op == KG_SILU ? KILN_ACT_SILU : op == KG_GELU ? KILN_ACT_GELU
           : op == KG_GELU_TANH                        ? KILN_ACT_GELU_TANH
                                                       : KILN_ACT_RELU;
}

static int has_bias(const kg_node *n) { return n->n_in > 2 && n->in[2] >= 0; }

/* The linear behind attention input `s`: through its rotation and then a norm between
 * reshapes ([reshape] norm [reshape]), each read by nothing else; else `s` itself. */
static int qkv_source(const kgraph *g, const int *users, int s)
{
    if (g->nodes[s].op == KG_ROPE && users[s] == 1)
        s = g->nodes[s].in[0];
    int t = s;
    if (g->nodes[t].op == KG_RESHAPE && !g->nodes[t].is_const && users[t] == 1)
        t = g->nodes[t].in[0];
    if ((g->nodes[t].op != KG_RMS_NORM && g->nodes[t].op != KG_LAYER_NORM) || users[t] != 1)
        return s;
    t = g->nodes[t].in[0];
    if (g->nodes[t].op == KG_RESHAPE && !g->nodes[t].is_const && users[t] == 1)
        t = g->nodes[t].in[0];
    return g->nodes[t].op == KG_LINEAR ? t : s;
}

/* Linears that can share one GEMM: same input, no epilogue, one user each, biases alike. */
static int compatible(const kgraph *g, const int *users, const int *ids, int n)
{
    for (int i = 0; i < n; i++) {
        const kg_node *a = &g->nodes[ids[i]];
        if (a->op != KG_LINEAR || a->epi_act >= 0 || users[ids[i]] != 1 ||
            a->in[0] != g->nodes[ids[0]].in[0] || has_bias(a) != has_bias(&g->nodes[ids[0]]))
            return 0;
        for (int k = 0; k < i; k++)
            if (ids[k] == ids[i])
                return 0;
    }
    return 1;
}

static int emit_const_concat(kgraph *g2, const kgraph *g, const int *map, const int *src, int n,
                             const char *name)
{
    kg_node p;
    memset(&p, 0, sizeof p);
    p.op = KG_CONCAT;
    p.n_in = n;
    p.is_const = 1;
    p.dim = 0;
    const kg_node *f = &g->nodes[src[0]];
    p.ndim = f->ndim;
    memcpy(p.shape, f->shape, sizeof p.shape);
    p.shape[0] = 0;
    p.dtype = f->dtype;
    for (int i = 0; i < n; i++) {
        p.in[i] = map[src[i]];
        p.shape[0] += g->nodes[src[i]].shape[0];
        if (g->nodes[src[i]].dtype != p.dtype)
            p.dtype = ST_F32;
    }
    p.epi_act = p.fused_into = p.view_of = -1;
    p.buf = -1;
    p.name = (char *)name;
    p.spec_file = f->spec_file;
    p.spec_line = f->spec_line;
    return graph_append(g2, &p);
}

/* "L3.attn.q" -> "L3.attn.qkv" style names: the layer prefix of `like` plus `suffix`. */
static char *sibling_name(const char *like, const char *suffix)
{
    const char *dot = strchr(like, '.');
    if (like[0] == 'L' && dot)
        return xasprintf("%.*s.%s", (int)(dot - like), like, suffix);
    return xstrdup(suffix);
}

int pass_fuse(kc *c, kerr *err)
{
    kgraph *g = c->g;
    int n = g->n;
    int *users = xcalloc((size_t)n, sizeof(int));
    for (int i = 0; i < n; i++)
        for (int k = 0; k < g->nodes[i].n_in; k++)
            if (g->nodes[i].in[k] >= 0)
                users[g->nodes[i].in[k]]++;
    plan *pl = xcalloc((size_t)n, sizeof(plan));

    /* q, k, v groups */
    for (int i = 0; i < n; i++) {
        const kg_node *a = &g->nodes[i];
        if (a->op != KG_ATTENTION)
            continue;
        int lin[3];
        for (int k = 0; k < 3; k++)
            lin[k] = qkv_source(g, users, a->in[k]);
        if (!compatible(g, users, lin, 3))
            continue;
        int lead = lin[0] < lin[1] ? (lin[0] < lin[2] ? lin[0] : lin[2]) : (lin[1] < lin[2] ? lin[1] : lin[2]);
        for (int k = 0; k < 3; k++)
            pl[lin[k]].role = ROLE_SKIP;
        pl[lead].role = ROLE_QKV;
        memcpy(pl[lead].group, lin, sizeof lin);
    }
    /* gate/up pairs, keyed at the MUL */
    for (int i = 0; i < n; i++) {
        const kg_node *m = &g->nodes[i];
        if (m->op != KG_MUL || g->nodes[m->in[1]].is_const)
            continue;
        for (int order = 0; order < 2; order++) {
            int a = m->in[order], u = m->in[1 - order];
            if (!is_act(g->nodes[a].op) || users[a] != 1)
                continue;
            int ids[2] = {g->nodes[a].in[0], u};
            if (pl[ids[0]].role || pl[ids[1]].role || !compatible(g, users, ids, 2))
                continue;
            pl[ids[0]].role = pl[ids[1]].role = pl[a].role = ROLE_SKIP;
            pl[i].role = ROLE_GATED;
            pl[i].group[0] = ids[0];
            pl[i].group[1] = ids[1];
            pl[i].group[2] = a;
            break;
        }
    }

    /* rebuild */
    kgraph *g2 = graph_new();
    int *map = xmalloc(sizeof(int) * (size_t)n);
    for (int i = 0; i < n; i++)
        map[i] = -1;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < n; i++) {
            const kg_node *o = &g->nodes[i];
            if (o->is_const != (pass == 0))
                continue;
            if (pl[i].role == ROLE_SKIP)
                continue;
            if (pl[i].role == ROLE_QKV) {
                const int *lin = pl[i].group;
                int w[3], b[3];
                for (int k = 0; k < 3; k++) {
                    w[k] = g->nodes[lin[k]].in[1];
                    b[k] = has_bias(&g->nodes[lin[k]]) ? g->nodes[lin[k]].in[2] : -1;
                }
                char *wn = sibling_name(g->nodes[lin[0]].name, "attn.qkv.weight");
                char *bn = sibling_name(g->nodes[lin[0]].name, "attn.qkv.bias");
                char *ln = sibling_name(g->nodes[lin[0]].name, "attn.qkv");
                int W = emit_const_concat(g2, g, map, w, 3, wn);
                int B = b[0] >= 0 ? emit_const_concat(g2, g, map, b, 3, bn) : -1;
                kg_node p = g->nodes[lin[0]];
                p.in[0] = map[p.in[0]];
                p.in[1] = W;
                p.in[2] = B;
                p.n_in = B >= 0 ? 3 : 2;
                p.shape[1] = g2->nodes[W].shape[0];
                p.name = ln;
                int L = graph_append(g2, &p);
                int64_t col = 0;
                for (int k = 0; k < 3; k++) {
                    const kg_node *lk = &g->nodes[lin[k]];
                    kg_node s = *lk;
                    s.op = KG_SLICE;
                    s.n_in = 1;
                    s.in[0] = L;
                    s.dim = 1;
                    s.start = col;
                    s.len = lk->shape[1];
                    s.view_of = L;
                    col += lk->shape[1];
                    map[lin[k]] = graph_append(g2, &s);
                }
                free(wn);
                free(bn);
                free(ln);
                continue;
            }
            if (pl[i].role == ROLE_GATED) {
                const kg_node *gl = &g->nodes[pl[i].group[0]], *ul = &g->nodes[pl[i].group[1]];
                int w[2] = {gl->in[1], ul->in[1]};
                int b[2] = {has_bias(gl) ? gl->in[2] : -1, has_bias(ul) ? ul->in[2] : -1};
                char *wn = sibling_name(o->name, "mlp.gate_up.weight");
                char *bn = sibling_name(o->name, "mlp.gate_up.bias");
                int W = emit_const_concat(g2, g, map, w, 2, wn);
                int B = b[0] >= 0 ? emit_const_concat(g2, g, map, b, 2, bn) : -1;
                kg_node p = *gl;
                p.in[0] = map[gl->in[0]];
                p.in[1] = W;
                p.in[2] = B;
                p.n_in = B >= 0 ? 3 : 2;
                p.shape[1] = gl->shape[1];
                p.epi_act = act_kind(g->nodes[pl[i].group[2]].op);
                p.name = o->name;
                map[i] = graph_append(g2, &p);
                free(wn);
                free(bn);
                continue;
            }
            kg_node p = *o;
            for (int k = 0; k < p.n_in; k++)
                if (p.in[k] >= 0) {
                    p.in[k] = map[p.in[k]];
                    if (p.in[k] < 0) {
                        kerr_add(err, "internal error: fuse lost input %d of %s", k, o->name);
                        goto fail;
                    }
                }
            map[i] = graph_append(g2, &p);
        }
    g2->output = map[g->output];
    for (int k = 0; k < KG_NINPUTS; k++)
        g2->inputs[k] = g->inputs[k] >= 0 ? map[g->inputs[k]] : -1;
    g2->n_layers = g->n_layers;
    g2->tp = g->tp;
    /* interned spec file names move with the graph */
    g2->strings = g->strings;
    g2->nstrings = g->nstrings;
    g->strings = NULL;
    g->nstrings = 0;

    /* Dead nodes go first, so that no sum is fused into a norm nothing reads (graph_compact
     * walks backwards and would keep such a norm, which comes later, without its inputs). */
    graph_compact(g2);

    /* annotations on the new graph */
    int *users2 = xcalloc((size_t)g2->n, sizeof(int));
    int *last_user = xcalloc((size_t)g2->n, sizeof(int));
    for (int i = 0; i < g2->n; i++)
        for (int k = 0; k < g2->nodes[i].n_in; k++)
            if (g2->nodes[i].in[k] >= 0) {
                users2[g2->nodes[i].in[k]]++;
                last_user[g2->nodes[i].in[k]] = i;
            }
    for (int i = 0; i < g2->n; i++) {
        kg_node *nd = &g2->nodes[i];
        if (nd->op == KG_ATTENTION) {
            for (int k = 0; k < 2; k++) /* q and k rotations */
                if (g2->nodes[nd->in[k]].op == KG_ROPE && users2[nd->in[k]] == 1)
                    g2->nodes[nd->in[k]].fused_into = i;
        }
        if (nd->op == KG_MLA) { /* mla_cache rotates k_pe, mla_attn each head's q_pe */
            const int rk[2] = {KG_MLA_Q_PE, KG_MLA_K_PE};
            for (int k = 0; k < 2; k++)
                if (g2->nodes[nd->in[rk[k]]].op == KG_ROPE && users2[nd->in[rk[k]]] == 1)
                    g2->nodes[nd->in[rk[k]]].fused_into = i;
        }
        if ((nd->op == KG_RMS_NORM || nd->op == KG_LAYER_NORM)) {
            int a = nd->in[0];
            kg_node *an = &g2->nodes[a];
            if (an->op != KG_ADD || an->fused_into >= 0 || g2->nodes[an->in[1]].is_const)
                continue;
            /* every other reader of the sum must come after the norm that computes it */
            int ok = 1;
            for (int u = a + 1; u < i && ok; u++)
                for (int k = 0; k < g2->nodes[u].n_in; k++)
                    ok &= g2->nodes[u].in[k] != a;
            if (ok)
                an->fused_into = i;
        }
    }
    free(users2);
    free(last_user);
    /* A sum fused into its norm is still stored when another node reads it (the residual
     * stream): counted once here, so plan_memory and lower need not search for readers. */
    for (int i = 0; i < g2->n; i++)
        for (int k = 0; k < g2->nodes[i].n_in; k++) {
            int a = g2->nodes[i].in[k];
            if (a >= 0 && g2->nodes[a].op == KG_ADD && g2->nodes[a].fused_into >= 0 &&
                g2->nodes[a].fused_into != i)
                g2->nodes[a].stored = 1;
        }
    graph_free(g);
    c->g = g2;
    free(map);
    free(pl);
    free(users);
    return 0;
fail:
    graph_free(g2);
    free(map);
    free(pl);
    free(users);
    return -1;
}
