/* plan_memory — gives every activation that needs storage an offset in one slab, reusing
 * space by liveness, sized for the compiled maximum of tokens per step (kc.max_tokens).
 *
 * Storage rules (they mirror what code generation emits):
 *   - constants, inputs and views take no space: a SLICE marked view_of, and a RESHAPE of an
 *     activation, read their source's buffer in place (the source lives as long as they do);
 *   - the k rotation fused into an attention writes the KV cache, not a buffer; the q rotation
 *     is the attention's query buffer;
 *   - an add fused into a norm is stored only if something besides the norm reads it;
 *   - the inputs of a norm that plan_norm_readers can fold into its linear stay live until that
 *     linear (which then reads them), so that its output does not take their space;
 *   - pooled outputs and logits live in the runtime's output buffers, not in the slab.
 * Allocation is first fit over intervals [first write, last read] in node order.
 */
#include <stdlib.h>
#include <string.h>

#include "passes.h"

#define ALIGN 256

static int64_t row_width(const kg_node *n)
{
    int64_t w = 1;
    for (int i = 1; i < n->ndim; i++)
        w *= n->shape[i];
    return w;
}

int plan_storage_at(const kgraph *g, int id, int64_t *col)
{
    int64_t c = 0;
    while (id >= 0) {
        const kg_node *n = &g->nodes[id];
        if (n->view_of >= 0) {
            c += n->start;
            id = n->view_of;
        } else if (n->op == KG_RESHAPE && !n->is_const) {
            id = n->in[0];
        } else {
            break;
        }
    }
    if (col)
        *col = c;
    return id;
}

int plan_storage_of(const kgraph *g, int id) { return plan_storage_at(g, id, NULL); }

int plan_needs_buffer(const kgraph *g, int id)
{
    const kg_node *n = &g->nodes[id];
    /* the output lands in the logits or output buffer; an ALL_GATHER is the vocabulary-split
     * LM head's gather into the logits (lower.c) */
    if (n->is_const || n->op == KG_INPUT || n->op == KG_POOL || n->op == KG_LOGITS ||
        n->op == KG_SCORE || n->op == KG_ALL_GATHER)
        return 0;
    if (n->view_of >= 0 || n->op == KG_RESHAPE)
        return 0;
    if (n->op == KG_ROPE && n->fused_into >= 0)
        return g->nodes[n->fused_into].in[0] == id; /* the query, not the key */
    if (n->op == KG_ADD && n->fused_into >= 0)
        return n->stored;
    return 1;
}

int plan_norm_add(const kgraph *g, int id)
{
    const int a = g->nodes[id].in[0];
    return a >= 0 && g->nodes[a].op == KG_ADD && g->nodes[a].fused_into == id ? a : -1;
}

/* The node that reads id's storage, recorded in rd (-2: none yet, -1: more than one, or not a
 * linear reading it as its x). */
static void note_reader(const kgraph *g, int *rd, int s, int i, int k)
{
    const kg_node *r = &g->nodes[i];
    rd[s] = rd[s] == -2 && r->op == KG_LINEAR && k == 0 && r->in[0] == s ? i : -1;
}

int *plan_norm_readers(const kgraph *g)
{
    int *rd = xmalloc(sizeof(int) * (size_t)(g->n + 1));
    for (int i = 0; i < g->n; i++)
        rd[i] = -2;
    for (int i = 0; i < g->n; i++) {
        const kg_node *r = &g->nodes[i];
        for (int k = 0; k < r->n_in; k++)
            if (r->in[k] >= 0) {
                const int s = plan_storage_of(g, r->in[k]);
                note_reader(g, rd, s, i, k);
                if (s != r->in[k])
                    note_reader(g, rd, r->in[k], i, k);
            }
    }
    for (int id = 0; id < g->n; id++) {
        const kg_node *n = &g->nodes[id];
        const int l = rd[id];
        rd[id] = -1;
        if (l < 0 || n->op != KG_RMS_NORM || n->fused_into >= 0 || g->output == id)
            continue;
        const int64_t H = n->shape[n->ndim - 1];
        if (row_width(n) == H && g->nodes[n->in[1]].ndim == 1 &&
            g->nodes[g->nodes[l].in[1]].shape[1] == H &&
            (plan_norm_add(g, id) >= 0 || plan_storage_of(g, n->in[0]) == n->in[0]))
            rd[id] = l;
    }
    return rd;
}

typedef struct live {
    int64_t off, size;
    int end;
} live;

int pass_plan_memory(kc *c, kerr *err)
{
    kgraph *g = c->g;
    if (c->max_tokens < 1)
        return kerr_add(err, "plan_memory: max_tokens is %d", c->max_tokens);
    int64_t esize = (int64_t)st_dtype_size(c->act_dtype);
    int *last = xmalloc(sizeof(int) * (size_t)g->n);
    for (int i = 0; i < g->n; i++)
        last[i] = i;
    /* A read of a view is a read of its storage. A fused node runs (reads its inputs and
     * writes its value) at the node that computes it. */
    for (int i = 0; i < g->n; i++) {
        const kg_node *n = &g->nodes[i];
        int when = n->fused_into >= 0 ? n->fused_into : i;
        for (int k = 0; k < n->n_in; k++)
            if (n->in[k] >= 0) {
                int s = plan_storage_of(g, n->in[k]);
                if (last[s] < when)
                    last[s] = when;
                if (last[n->in[k]] < when)
                    last[n->in[k]] = when;
            }
        if (last[i] < when)
            last[i] = when;
    }
    int *fold = plan_norm_readers(g);
    for (int i = 0; i < g->n; i++) {
        const int l = fold[i];
        if (l < 0)
            continue;
        const int a = plan_norm_add(g, i);
        for (int k = 0; k < (a >= 0 ? 2 : 1); k++) {
            const int s = plan_storage_of(g, a >= 0 ? g->nodes[a].in[k] : g->nodes[i].in[0]);
            if (last[s] < l)
                last[s] = l;
        }
    }
    free(fold);
    live *act = NULL;
    int nact = 0;
    int64_t top = 0;
    for (int i = 0; i < g->n; i++) {
        kg_node *n = &g->nodes[i];
        n->buf = -1;
        n->buf_bytes = 0;
        if (!plan_needs_buffer(g, i))
            continue;
        int64_t size = (int64_t)c->max_tokens * row_width(n) * esize;
        size = (size + ALIGN - 1) / ALIGN * ALIGN;
        /* the value is written at its own node, or at the node that computes it */
        int def = i;
        /* drop intervals that ended before this one starts */
        int m = 0;
        for (int k = 0; k < nact; k++)
            if (act[k].end >= def)
                act[m++] = act[k];
        nact = m;
        /* lowest gap that fits, among live intervals sorted by offset */
        for (int a = 1; a < nact; a++)
            for (int b = a; b > 0 && act[b - 1].off > act[b].off; b--) {
                live t = act[b];
                act[b] = act[b - 1];
                act[b - 1] = t;
            }
        int64_t off = 0;
        for (int k = 0; k < nact; k++) {
            if (act[k].off - off >= size)
                break;
            if (act[k].off + act[k].size > off)
                off = act[k].off + act[k].size;
        }
        act = xrealloc(act, sizeof(live) * (size_t)(nact + 1));
        act[nact++] = (live){off, size, last[i]};
        n->buf = off;
        n->buf_bytes = size;
        if (off + size > top)
            top = off + size;
    }
    c->slab_bytes = top;
    free(act);
    free(last);
    return 0;
}
