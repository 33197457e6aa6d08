/* lower — see lower.h. One function per op family turns a node into steps; each step is
 * appended to the prefill schedule, the decode schedule, or both. Launch shapes follow the
 * contracts at the top of each template file (templates/README.md). */
#include "lower.h"

#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "pack.h"
#include "passes/passes.h"
#include "posenc.h"
#include "../kernels/kiln_attn.h"
#include "../kernels/kiln_gemm.h"
#include "../kernels/kiln_p2p.h"
#include "../kernels/kiln_step.h"

#define PRE 1
#define DEC 2
#define BOTH 3

#define GEMV_MAX 8       /* rows up to which linears use the GEMV kernel (its MMAX: rows per group;
                          * LOWER_GEMV_GROUP_INVARIANT with --batch-invariant) */
#define ATTN_THREADS 128

typedef struct lw {
    kc *c;
    kgraph *g;
    lowered *L;
    ka_manifest *m;
    int64_t esize;       /* bytes per activation element */
    int64_t scratch;     /* scratch bytes the current node uses */
    int64_t scratch0;    /* scratch bytes every node keeps clear: attn_decode's counters */
    int attn_heads;      /* the most query heads of an attention node (sizes the counters) */
    int skinny;          /* linears get a gemm_skinny step for gemv_max < rows <= skinny_max */
    int skinny4;         /* INT4 linears get a gemm_skinny_int4 decode step past gemv_max rows */
    int skinny4p;        /* and a prefill one for gemv_max < rows <= skinny_max */
    int64_t skinny_count; /* scratch offset of gemm_skinny's arrival counters (in scratch0) */
    int *wmap;           /* node -> weight index, -1 */
    int *wmap8;          /* node -> index of its quantised weight (its scales the next), -1 */
    int *fold;           /* node -> the linear its norm may fold into (plan_norm_readers), -1 */
    int nfold;           /* nodes in fold (low_moe may append more) */
    int *rope;           /* attention <-> the qkv linear its rotation folds into (rope_fold), -1 */
    int nrope;           /* nodes in rope */
    int64_t rope_q;      /* scratch offset of the folded rotation's q row (in scratch0) */
    int cpre, cdec, cw, cc;
    kerr *err;
} lw;

/* ---------------------------------------------------------------- kernels and steps */

static int kern(lw *w, const char *op, int threads, int smem, const char *params, const char *fmt,
                ...) __attribute__((format(printf, 6, 7)));
static int kern(lw *w, const char *op, int threads, int smem, const char *params, const char *fmt,
                ...)
{
    char call[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(call, sizeof call, fmt, ap);
    va_end(ap);
    lowered *L = w->L;
    for (int i = 0; i < L->ninst; i++)
        if (strcmp(L->inst_call[i], call) == 0)
            return i;
    int i = L->ninst++;
    L->inst_call = xrealloc(L->inst_call, sizeof(char *) * (size_t)L->ninst);
    L->inst_params = xrealloc(L->inst_params, sizeof(char *) * (size_t)L->ninst);
    L->inst_min_ctas = xrealloc(L->inst_min_ctas, sizeof(int) * (size_t)L->ninst);
    L->inst_call[i] = xstrdup(call);
    L->inst_params[i] = xstrdup(params);
    L->inst_min_ctas[i] = 0;
    ka_manifest *m = w->m;
    m->kernels = xrealloc(m->kernels, sizeof(ka_kernel) * (size_t)L->ninst);
    m->kernels[i] = (ka_kernel){xasprintf("k%d_%s", i, op), threads, smem};
    m->nkernels = L->ninst;
    return i;
}

static void push(lw *w, int which, const ka_step *s)
{
    ka_manifest *m = w->m;
    if (which & PRE) {
        if (m->nprefill == w->cpre)
            m->prefill = xrealloc(m->prefill, sizeof(ka_step) * (size_t)(w->cpre = w->cpre * 2 + 16));
        m->prefill[m->nprefill] = *s;
        m->prefill[m->nprefill++].label = xstrdup(s->label ? s->label : "");
    }
    if (which & DEC) {
        if (m->ndecode == w->cdec)
            m->decode = xrealloc(m->decode, sizeof(ka_step) * (size_t)(w->cdec = w->cdec * 2 + 16));
        m->decode[m->ndecode] = *s;
        m->decode[m->ndecode++].label = xstrdup(s->label ? s->label : "");
    }
}

/* A step that only runs at some row counts (a linear's GEMM or GEMV variant, or act_mul after
 * the GEMM; s->size says which). By default both variants go to the schedules in `which` and the
 * runtime picks one by the step's rows. With --batch-invariant the rows of a step depend on what
 * else runs in it, and the GEMM and the GEMV round differently (different reduction orders; the
 * gated GEMV fuses the activation), so each schedule keeps one variant for every row count: the
 * prefill schedule the GEMM (kiln's, whose row results do not depend on M), the decode schedule
 * the GEMV (whose launch covers any M in groups of LOWER_GEMV_GROUP_INVARIANT rows,
 * templates/gemv.cuh). A prompt token then always goes through the GEMM and a generated one
 * through the GEMV, whatever the chunking and the batch (the engine never runs a prompt chunk
 * with the decode schedule in that mode: kb_item.prefill). */
static void push_sized(lw *w, int which, ka_step *s)
{
    assert(s->size != KA_SIZE_ANY);
    if (w->c->batch_invariant) {
        which &= s->size == KA_SIZE_SMALL ? DEC : PRE;
        s->size = KA_SIZE_ANY;
    }
    if (which)
        push(w, which, s);
}

/* A GEMM-path step (size large) of a linear pushed to `which`: where the decode schedule gives the
 * linear a skinny step (`skinny`), its decode copy runs past skinny_max rows only. */
static void push_gemm(lw *w, int which, ka_step *s, int skinny)
{
    if (!skinny) {
        push_sized(w, which, s);
        return;
    }
    push_sized(w, which & PRE, s);
    s->size = KA_SIZE_HUGE;
    push_sized(w, which & DEC, s);
}

static ka_grid G(int t, int s, int q, int add, int div)
{
    return (ka_grid){t, s, q, add, div, 0};
}
static ka_grid G1(void) { return G(0, 0, 0, 1, 1); }
static ka_grid GSM(void) { return (ka_grid){0, 0, 0, 0, 1, 1}; } /* one block an SM */

static ka_step kstep(int kernel, const char *label, ka_grid x, ka_grid y, ka_grid z)
{
    ka_step s;
    memset(&s, 0, sizeof s);
    s.kind = KA_KERNEL;
    s.kernel = kernel;
    s.label = (char *)label;
    s.grid[0] = x;
    s.grid[1] = y;
    s.grid[2] = z;
    return s;
}

static void add_arg(ka_step *s, ka_arg a) { s->args[s->nargs++] = a; }
static ka_arg A(ka_arg_kind k, int64_t i) { return (ka_arg){k, i, 0}; }
static ka_arg AF(double f) { return (ka_arg){KA_ARG_F32, 0, f}; }
static ka_arg ANULL(void) { return A(KA_ARG_NULL, 0); }

/* Weight #i holding const node `id` (registered once). */
static int wid(lw *w, int id)
{
    if (w->wmap[id] >= 0)
        return w->wmap[id];
    const kg_node *n = &w->g->nodes[id];
    ka_manifest *m = w->m;
    if (m->nweights == w->cw) {
        w->cw = w->cw * 2 + 16;
        m->weights = xrealloc(m->weights, sizeof(ka_weight) * (size_t)w->cw);
        w->L->weight_node = xrealloc(w->L->weight_node, sizeof(int) * (size_t)w->cw);
    }
    int i = m->nweights++;
    ka_weight *kw = &m->weights[i];
    memset(kw, 0, sizeof *kw);
    kw->name = xasprintf("%s#%d", n->name, id);
    kw->ndim = n->ndim;
    int64_t numel = 1;
    for (int d = 0; d < n->ndim; d++) {
        kw->shape[d] = n->shape[d];
        numel *= n->shape[d];
    }
    kw->nbytes = numel * w->esize;
    w->L->weight_node[i] = id;
    return w->wmap[id] = i;
}

static ka_arg AW(lw *w, int id) { return A(KA_ARG_WEIGHT, wid(w, id)); }

/* The K block of the scales with which const node `id` ([N, K], a linear's weight) is packed
 * quantised (pack.h's pack_qblock, the same on every rank; 0 for one scale per row) and *kind,
 * or -1: packed in the compute dtype. gemv_fp8 needs K % 16 == 0 and blocks of a multiple of 64
 * elements; gemv_int4 K % 32 == 0 and groups of a multiple of 32 that divide K. */
static int64_t quant_block(lw *w, int id, int64_t K, qrows_kind *kind)
{
    int64_t b = pack_qblock(w->c, id, 0, kind);
    for (int r = 1; r < w->g->tp && b >= 0; r++) {
        qrows_kind k;
        if (pack_qblock(w->c, id, r, &k) != b || k != *kind)
            b = -1;
    }
    if (b >= K)
        b = 0;
    int ok = b >= 0 && (*kind == QROWS_E4M3 ? K % 16 == 0 && b % 64 == 0
                                             : K % 32 == 0 && b % 32 == 0 && (!b || K % b == 0));
    return ok ? b : -1;
}

/* Whether a linear of the graph has an INT4 weight (quant_block's kind). */
static int has_int4(lw *w)
{
    for (int i = 0; i < w->g->n; i++) {
        const kg_node *n = &w->g->nodes[i];
        qrows_kind k;
        if (n->op == KG_LINEAR &&
            quant_block(w, n->in[1], w->g->nodes[n->in[1]].shape[1], &k) >= 0 &&
            k == QROWS_INT4)
            return 1;
    }
    return 0;
}

/* The two weights of quantised const node `id` (quant_block >= 0), registered once, next to
 * each other: FP8, its e4m3 bytes [N, K] (gemv_fp8's byte order) and its scales [N, KB] float;
 * INT4, its 4-bit values [N, K/2] bytes (gemv_int4's nibble order) and its scales and zero
 * points [N, KB, 2] (32-bit words of two dt each). */
static void wid_q(lw *w, int id, qrows_kind kind, int64_t b, ka_arg *q, ka_arg *scale)
{
    if (w->wmap8[id] < 0) {
        int saved = w->wmap[id];
        w->wmap[id] = -1;
        int i = wid(w, id);
        w->wmap[id] = -1;
        int j = wid(w, id);
        w->wmap[id] = saved;
        ka_weight *kq = &w->m->weights[i], *ks = &w->m->weights[j];
        int64_t N = kq->shape[0], K = kq->shape[1], kb = b ? (K + b - 1) / b : 1;
        int i4 = kind == QROWS_INT4;
        char *base = kq->name;
        kq->name = xasprintf("%s.%s", base, i4 ? "int4" : "e4m3");
        free(ks->name);
        ks->name = xasprintf("%s.%s", base, i4 ? "int4_sz" : "scale");
        free(base);
        kq->type = i4 ? KA_W_INT4 : KA_W_E4M3;
        kq->shape[1] = i4 ? K / 2 : K;
        kq->nbytes = N * kq->shape[1];
        ks->type = i4 ? KA_W_INT4SZ : KA_W_F32;
        ks->ndim = i4 ? 3 : 2;
        ks->shape[1] = kb;
        ks->shape[2] = 2;
        ks->nbytes = N * kb * (i4 ? 8 : 4);
        w->wmap8[id] = i;
    }
    *q = A(KA_ARG_WEIGHT, w->wmap8[id]);
    *scale = A(KA_ARG_WEIGHT, w->wmap8[id] + 1);
}

static int add_const(lw *w, const char *name, const float *v, int n)
{
    ka_manifest *m = w->m;
    for (int i = 0; i < m->nconsts; i++)
        if (m->consts[i].n == n && !memcmp(m->consts[i].v, v, sizeof(float) * (size_t)n))
            return i;
    if (m->nconsts == w->cc)
        m->consts = xrealloc(m->consts, sizeof(ka_const) * (size_t)(w->cc = w->cc * 2 + 8));
    ka_const *c = &m->consts[m->nconsts];
    c->name = xstrdup(name);
    c->n = n;
    c->v = xmalloc(sizeof(float) * (size_t)(n ? n : 1));
    memcpy(c->v, v, sizeof(float) * (size_t)n);
    return m->nconsts++;
}

/* ---------------------------------------------------------------- buffers */

static int64_t row_width(const kg_node *n)
{
    int64_t r = 1;
    for (int i = 1; i < n->ndim; i++)
        r *= n->shape[i];
    return r;
}

/* A node's activation as a pointer argument, with the row stride (elements) it is read with.
 * Views read their storage in place (a column offset for q/k/v slices). */
static int act_arg(lw *w, int id, ka_arg *a, int64_t *stride)
{
    const kgraph *g = w->g;
    int64_t col;
    const int s = plan_storage_at(g, id, &col);
    const kg_node *sn = &g->nodes[s];
    if (sn->buf < 0)
        return kerr_add(w->err, "lower: %s has no buffer (internal error)", g->nodes[id].name);
    *a = A(KA_ARG_BUF, sn->buf + col * w->esize);
    if (stride)
        *stride = row_width(sn);
    return 0;
}

/* An activation that kernels read as contiguous rows of its own width. */
static int dense_arg(lw *w, int id, ka_arg *a)
{
    int64_t stride;
    if (act_arg(w, id, a, &stride))
        return -1;
    if (stride != row_width(&w->g->nodes[id]))
        return kerr_add(w->err,
                        "lower: %s reads a column slice of another activation; the GPU code "
                        "generator supports such slices only as q/k/v of one fused projection",
                        w->g->nodes[id].name);
    return 0;
}

static int64_t scratch_at(lw *w, int64_t bytes)
{
    int64_t off = w->scratch;
    w->scratch += (bytes + 255) / 256 * 256;
    return off;
}

/* Threads for a row kernel over H elements (8 per thread per pass). */
static int row_threads(int64_t H)
{
    int64_t t = (H / 8 + 31) / 32 * 32;
    return t < 32 ? 32 : t > 256 ? 256 : (int)t;
}

#define ELEM_THREADS 256
static ka_grid elems(int64_t W) { return G((int)W, 0, 0, 0, 8 * ELEM_THREADS); }

/* ---------------------------------------------------------------- ops */

static int need8(lw *w, const kg_node *n, int64_t v, const char *what)
{
    if (v % 8 == 0)
        return 0;
    if (w->g->tp > 1)
        return kerr_add(w->err,
                        "%s: %s of one of %d ranks is %lld, not a multiple of 8: kiln's GPU "
                        "kernels read rows in 16-byte vectors; use a --tp that leaves a multiple "
                        "of 8 per rank",
                        n->name, what, w->g->tp, (long long)v);
    return kerr_add(w->err,
                    "%s: %s is %lld, not a multiple of 8: kiln's GPU kernels read rows in 16-byte "
                    "vectors (every released checkpoint satisfies this; the CPU reference `kilnc "
                    "ref` runs this model)",
                    n->name, what, (long long)v);
}

static int low_embed(lw *w, int id)
{
    const kg_node *n = &w->g->nodes[id];
    const kg_node *in = &w->g->nodes[n->in[1]];
    int64_t H = n->shape[1];
    if (need8(w, n, H, "the embedding width"))
        return -1;
    int th = row_threads(H);
    const kg_node *table = &w->g->nodes[n->in[0]];
    /* split by vocabulary (graph.h): the rank's rows, its first row a rank argument */
    int part = n->parts > 1;
    int64_t rows = table->shape[0];
    int k = part ? kern(w, "embed_part", th, 0,
                        "const kiln_step st, const DT *table, DT *out, int row0",
                        "kiln::embed_part<DT, %lld, %lldLL, %d>(st, table, out, row0)",
                        (long long)H, (long long)rows, th)
                 : kern(w, "embed", th, 0, "const kiln_step st, const DT *table, DT *out",
                        "kiln::embed<DT, %lld, %d, 0, %d>(st, table, out)", (long long)H,
                        in->input_kind, th);
    if (part && in->input_kind != KG_IN_IDS)
        return kerr_add(w->err, "%s: a vocabulary-split embedding of positions or token types "
                                "(internal error: the shard pass splits only the token table)",
                        n->name);
    ka_step s = kstep(k, n->name, G(1, 0, 0, 0, 1), G1(), G1());
    ka_arg out;
    if (act_arg(w, id, &out, NULL))
        return -1;
    /* The token table bounds the ids kiln accepts (the kernel does not check them). A model with an
     * LM head sets vocab to its width in low_linear; an embedding model keeps the table's rows
     * (all ranks' when split). */
    if (in->input_kind == KG_IN_IDS && w->m->vocab == 0)
        w->m->vocab = (int)(rows * (part ? n->parts : 1));
    if (in->input_kind == KG_IN_TOKEN_TYPES) /* and the type table the token types */
        w->m->type_vocab = (int)rows;
    add_arg(&s, A(KA_ARG_STEP, 0));
    add_arg(&s, AW(w, n->in[0]));
    add_arg(&s, out);
    if (part)
        add_arg(&s, A(KA_ARG_RANK, rows));
    push(w, BOTH, &s);
    return 0;
}

/* The bits of a linear's weight (node wid, K columns) as gemv_stream streams it: 16 for a 16-bit
 * one, 8 for FP8 with one scale per row (gemv_stream_fp8), 4 for INT4 in groups of
 * KILN_GEMV_STREAM_INT4_G (gemv_stream_int4), 0 where no gemv_stream takes it (FP8 with block
 * scales, INT4 in other groups) or where lower_gemv_stream does not allow the shape. */
static int stream_wbits(lw *w, int wid, int64_t K, int gated)
{
    qrows_kind qk;
    const int64_t qb = quant_block(w, wid, K, &qk);
    const int wbits = qb < 0                                               ? 16
                      : qb == 0 && qk == QROWS_E4M3                        ? 8
                      : qb == KILN_GEMV_STREAM_INT4_G && qk == QROWS_INT4 ? 4
                                                                           : 0;
    return wbits && lower_gemv_stream(w->c, w->g->nodes[wid].shape[0], K, gated, wbits) ? wbits
                                                                                        : 0;
}

/* The linear (node id) an RMS norm's decode steps of one row fold into, or -1: plan_norm_readers'
 * linear, where its one-row steps take gemv_stream (a 16-bit, per-row FP8 or INT4 weight:
 * stream_wbits). The norm's own step then runs at every other row count (size not_one) and
 * gemv_stream's stages the normalised x itself (its NORM): one kernel fewer a norm in a batch-1
 * decode step. */
static int norm_fold(lw *w, int id)
{
    const int l = id < w->nfold ? w->fold[id] : -1;
    if (l < 0)
        return -1;
    const kg_node *n = &w->g->nodes[l];
    return stream_wbits(w, n->in[1], w->g->nodes[n->in[1]].shape[1], n->epi_act >= 0) ? l : -1;
}

/* The rotation folds (rope_fold): r[A] = L and r[L] = A for an attention node A whose q and k
 * rotations (fused into it) and v are the column blocks [q | k | v] of one linear L's output rows,
 * read by nothing else, where L's one-row steps take gemv_stream (an ungated weight, 16-bit,
 * per-row FP8 or INT4: stream_wbits) and rope_kv's 16-bit cache and unpadded heads apply (not
 * --kv-dtype fp8, head_dim a multiple of 8) on one rank. L's decode step of one row then takes
 * gemv_stream_rope(_fp8, _int4), which writes the rotated q (into the one-row scratch at
 * w->rope_q) and the KV cache's row itself, and A's rope_kv runs at every other row count: one
 * kernel fewer a layer in a batch-1 decode step. */
static int *plan_rope_fold(lw *w)
{
    const kgraph *g = w->g;
    int *r = xmalloc(sizeof(int) * (size_t)(g->n + 1)), *readers;
    for (int i = 0; i < g->n; i++)
        r[i] = -1;
    if (!w->c->sm90 || w->c->batch_invariant || w->c->kv_fp8 || g->tp > 1)
        return r;
    readers = xcalloc((size_t)g->n + 1, sizeof(int));
    for (int i = 0; i < g->n; i++) {
        const kg_node *n = &g->nodes[i];
        if (n->view_of >= 0 || (n->op == KG_RESHAPE && !n->is_const))
            continue; /* views read nothing: their readers read their storage */
        for (int k = 0; k < n->n_in; k++)
            if (n->in[k] >= 0)
                readers[plan_storage_of(g, n->in[k])]++;
    }
    for (int a = 0; a < g->n; a++) {
        const kg_node *n = &g->nodes[a];
        if (n->op != KG_ATTENTION)
            continue;
        const kg_attn *at = &n->attn;
        const kg_node *qr = &g->nodes[n->in[0]], *kr = &g->nodes[n->in[1]];
        if (qr->op != KG_ROPE || qr->fused_into != a || kr->op != KG_ROPE ||
            kr->fused_into != a || at->head_dim % 8 != 0)
            continue;
        const int64_t QW = (int64_t)at->n_heads * at->head_dim;
        const int64_t KW = (int64_t)at->n_kv_heads * at->head_dim, N = QW + 2 * KW;
        int64_t cq, ck, cv;
        const int l = plan_storage_at(g, qr->in[0], &cq);
        if (plan_storage_at(g, kr->in[0], &ck) != l || plan_storage_at(g, n->in[2], &cv) != l ||
            cq != 0 || ck != QW || cv != QW + KW || readers[l] != 3 || g->output == l)
            continue;
        const kg_node *ln = &g->nodes[l];
        if (ln->op != KG_LINEAR || ln->epi_act >= 0 || row_width(ln) != N)
            continue;
        const kg_node *wn = &g->nodes[ln->in[1]];
        const int wb = wn->shape[0] == N ? stream_wbits(w, ln->in[1], wn->shape[1], 0) : 0;
        if (!wb || N / 2 > 32LL * KILN_GEMV_STREAM_BLOCKS * KILN_GEMV_STREAM_WARPS(wb))
            continue;
        r[a] = l;
        r[l] = a;
    }
    free(readers);
    return r;
}

/* rope_kv's rotation parameters, which gemv_stream_rope takes too: the rotated dims, pairs
 * interleaved or not, DYNAMIC (1 dynamic NTK; 2 longrope, whose table is [short; long] and whose
 * dyn_factor is the long scale, switched past dyn_max_pos keys), the inv_freq table (a constant)
 * and the scalars. */
typedef struct rope_args {
    int rot, il, dyn;
    ka_arg inv;
    double scale, dbase, dfac;
    int64_t dmax;
} rope_args;

/* The arguments rope_kv and gemv_stream_rope end with: the layer's K and V caches, inv_freq,
 * rope_scale, dyn_base, dyn_factor, dyn_max_pos. */
static void rope_cache_args(ka_step *s, const rope_args *ra, int layer)
{
    add_arg(s, A(KA_ARG_KV_K, layer));
    add_arg(s, A(KA_ARG_KV_V, layer));
    add_arg(s, ra->inv);
    add_arg(s, AF(ra->scale));
    add_arg(s, AF(ra->dbase));
    add_arg(s, AF(ra->dfac));
    add_arg(s, A(KA_ARG_I32, ra->dmax));
}

/* The rotation of attention node n's q and k (KG_ROPE nodes fused into it). */
static int rope_args_of(lw *w, const kg_node *n, rope_args *ra)
{
    const kg_node *qr = &w->g->nodes[n->in[0]], *kr = &w->g->nodes[n->in[1]];
    const kg_rope *r = &qr->rope;
    if (memcmp(&qr->rope, &kr->rope, sizeof(kg_rope)) != 0)
        return kerr_add(w->err, "%s: q and k rotate differently; not supported on the GPU",
                        n->name);
    int lr = r->p.type == ROPE_LONGROPE;
    if (lr && (r->p.original_max_pos < 1 || r->p.original_max_pos > INT32_MAX - 1))
        return kerr_add(w->err, "%s: longrope's original_max_position_embeddings %lld is out "
                                "of range for the GPU (1 .. 2^31 - 2)",
                        n->name, (long long)r->p.original_max_pos);
    ra->rot = r->rot_dim;
    ra->il = r->interleaved;
    ra->dyn = r->p.type == ROPE_DYNAMIC ? 1 : lr ? 2 : 0;
    int ntab = lr ? ra->rot : ra->rot / 2;
    float *tab = xmalloc(sizeof(float) * (size_t)(ntab + 1));
    posenc_rope_inv_freq(r, 0, tab);
    if (lr)
        posenc_rope_inv_freq(r, r->p.original_max_pos + 1, tab + ra->rot / 2);
    char nm[96];
    snprintf(nm, sizeof nm, "rope.%s.%d", rope_type_name(r->p.type), ra->rot);
    ra->inv = A(KA_ARG_CONST, add_const(w, nm, tab, ntab));
    free(tab);
    ra->scale = posenc_rope_scale(r, 0);
    ra->dbase = r->p.theta;
    ra->dfac = lr ? posenc_rope_scale(r, r->p.original_max_pos + 1) : r->p.factor;
    ra->dmax = lr ? r->p.original_max_pos : r->p.max_pos;
    return 0;
}

/* A norm's residual operands: x and res, the inputs of the add fused into it (fuse), and res_out,
 * their sum where something besides the norm reads it (else left null). 1 with such an add, 0
 * without (the arguments untouched), -1 on an error. */
static int norm_residual(lw *w, int id, ka_arg *x, ka_arg *res, ka_arg *res_out)
{
    const int a = plan_norm_add(w->g, id);
    if (a < 0)
        return 0;
    const kg_node *an = &w->g->nodes[a];
    if (dense_arg(w, an->in[0], x) || dense_arg(w, an->in[1], res) ||
        (plan_needs_buffer(w->g, a) && dense_arg(w, a, res_out)))
        return -1;
    return 1;
}

static int low_norm(lw *w, int id)
{
    const kgraph *g = w->g;
    const kg_node *n = &g->nodes[id];
    int rms = n->op == KG_RMS_NORM;
    int64_t H = n->shape[n->ndim - 1], rpt = row_width(n) / H;
    if (need8(w, n, H, "the normalised width"))
        return -1;
    int th = row_threads(H);
    ka_arg x, res = ANULL(), res_out = ANULL(), out;
    const kg_node *a = &g->nodes[n->in[0]];
    const int residual = norm_residual(w, id, &x, &res, &res_out);
    if (residual < 0)
        return -1;
    /* x may be a view: q or k normed per head straight from the fused qkv row (fuse), read
     * with that row's stride (the template's XS) */
    int64_t xs = 0;
    if (!residual && act_arg(w, n->in[0], &x, &xs))
        return -1;
    if (xs == row_width(a))
        xs = 0;
    if (dense_arg(w, id, &out))
        return -1;
    /* a weight per head, [n, H] (norm_common in graph.c), gives the template's W_ROWS = n; W_ROWS
     * and XS at their defaults (1, a weight [H]; 0, x dense) are left out of the call */
    const kg_node *wn = &g->nodes[n->in[1]];
    int64_t wrows = wn->ndim == 2 ? wn->shape[0] : 1;
    char wpr[64] = "";
    if (xs)
        snprintf(wpr, sizeof wpr, ", %lld, %lldLL", (long long)wrows, (long long)xs);
    else if (wrows > 1)
        snprintf(wpr, sizeof wpr, ", %lld", (long long)wrows);
    int k;
    ka_step s;
    if (rms) {
        k = kern(w, "rms_norm", th, 0,
                 "const kiln_step st, const DT *x, const DT *res, const DT *w, DT *out, "
                 "DT *res_out, float eps",
                 "kiln::rms_norm<DT, %lld, %lld, %d, %d, %d%s>(st, x, res, w, out, res_out, eps)",
                 (long long)H, (long long)rpt, th, n->unit_offset, residual, wpr);
        s = kstep(k, n->name, G((int)rpt, 0, 0, 0, 1), G1(), G1());
        add_arg(&s, A(KA_ARG_STEP, 0));
        add_arg(&s, x);
        add_arg(&s, res);
        add_arg(&s, AW(w, n->in[1]));
    } else {
        int bias = n->n_in > 2 && n->in[2] >= 0;
        k = kern(w, "layer_norm", th, 0,
                 "const kiln_step st, const DT *x, const DT *res, const DT *w, const DT *b, "
                 "DT *out, DT *res_out, float eps",
                 "kiln::layer_norm<DT, %lld, %lld, %d, %d, %d%s>(st, x, res, w, b, out, "
                 "res_out, eps)",
                 (long long)H, (long long)rpt, th, residual, bias, wpr);
        s = kstep(k, n->name, G((int)rpt, 0, 0, 0, 1), G1(), G1());
        add_arg(&s, A(KA_ARG_STEP, 0));
        add_arg(&s, x);
        add_arg(&s, res);
        add_arg(&s, AW(w, n->in[1]));
        add_arg(&s, bias ? AW(w, n->in[2]) : ANULL());
    }
    add_arg(&s, out);
    add_arg(&s, res_out);
    add_arg(&s, AF(n->eps));
    /* folded into its linear's one-row step: not run there */
    if (norm_fold(w, id) >= 0)
        s.size = KA_SIZE_NOT_ONE;
    push(w, BOTH, &s);
    return 0;
}

/* The GEMV's block size (templates/gemv.cuh): its warps split K of one 16-row tile. Enough warps
 * that the grid has about 2048 (16 per SM of a 132-SM H100/H200: 64 KB of weight loads in flight
 * per SM) whatever N is: 4 warps per block for the large N (gate/up, LM head), 8 for 4096 rows, 16
 * for 2048 rows (1B's o and down: 128 tiles). 16 only while the tiles fit one wave of one block
 * per SM (more than 132 blocks of 512 threads would queue a second wave behind a full one), and
 * never for gemv_int4 (its weights pass through 4 KB of static shared memory a warp: 8 warps and
 * the split-K partials fill 40 of the 48 KB); and never more warps than steps of K (`step`
 * elements: 128 for gemv, 256 for gemv_fp8, 512 for gemv_int4: the same bytes a step), so no
 * warp idles. */
int lower_gemv_threads(int64_t N, int64_t K, int gated, int step)
{
    int64_t tiles = KILN_GEMV_TILES(N, gated);
    int64_t steps = (K + step - 1) / step;
    int warps = 4;
    while (warps < 16 && tiles * warps < 2048)
        warps *= 2;
    if (warps == 16 && (tiles > 132 || step == 512))
        warps = 8;
    while (warps > 1 && warps > steps)
        warps /= 2;
    return 32 * warps;
}

/* The units a block (8, else 4: how many weight tiles share each slice of x; one block an SM, by
 * its shared memory), the ring's slices (4, or the most that fit smem_block bytes: 3 on an A100)
 * and the fewest K parts (a power of two, each part at least 4 slices) that make 96 blocks, about
 * three quarters of a 132-SM H100/H200: on an H200 (tests/gpu/RESULTS.md, tenth session) fewer,
 * longer blocks streamed faster as long as most SMs had one, and 4 units a block only where 8
 * cannot reach 96 blocks. A unit is a warp's: one tile of gemm_skinny, KILN_SKINNY4_RT of
 * gemm_skinny_int4 (g4, its group size G; 0 for gemm_skinny). gemm_skinny on the 8B shape: qkv
 * 8 x 2 parts (96 blocks), o and down 8 x 4 (128), gate_up and the LM head 8 x 1 (224, 1,002).
 * gemm_skinny_int4 holds about 255 registers a thread, and its warps mostly wait on their own
 * mma chains: blocks of 4 warps and a ring of 3 run two an SM, each with its own barriers, which
 * streamed 5-15% faster than one block of 8 (twelfth session), so it takes 4 units a block and
 * parts for 192 blocks. 0 stages: no configuration fits. */
void lower_skinny_shape(int64_t N, int64_t K, int gated, int g4, int smem_block, int *warps,
                        int *splits, int *stages)
{
    const int64_t want = g4 ? 192 : 96;
    int64_t units = KILN_SKINNY_UNITS(N, gated, g4);
    int64_t slices = (K + KILN_SKINNY_KC - 1) / KILN_SKINNY_KC, best = 0;
    *warps = 8;
    *splits = 1;
    *stages = 0;
    for (int wp = g4 ? 4 : 8; wp >= 4 && best < want; wp /= 2) {
        int st = g4 ? 3 : 4;
        while (st >= 2 && KILN_SKINNY_RING(KILN_SKINNY_MAX, wp, st, g4) > smem_block)
            st--;
        if (st < 2)
            continue;
        for (int s = 1; s == 1 || (s <= 64 && slices / s >= 4); s *= 2) {
            int64_t blocks = (units + wp - 1) / wp * s;
            if (blocks > best) {
                *warps = wp;
                *splits = s;
                *stages = st;
                best = blocks;
            }
            if (blocks >= want)
                break;
        }
    }
}

/* The most parts that keep a launch within two blocks an SM of a 132-SM H100/H200 (264), with at
 * least 4 slices a part; 1 where the tiles alone reach that. The 8B shape: qkv 48 tiles x 5
 * parts, o and down 32 x 8, gate_up 224 x 1. */
int lower_skinny90_splits(int64_t N, int64_t K, int gated)
{
    int64_t tiles = KILN_SKINNY90_TILES(N, gated);
    int64_t slices = (K + KILN_GEMM90_BK - 1) / KILN_GEMM90_BK, s = 264 / tiles;
    if (s > slices / 4)
        s = slices / 4;
    return s < 1 ? 1 : (int)s;
}

/* The GEMV step (decode-sized rows) in row groups of mmax rows (the template's MMAX): GEMV_MAX, or
 * LOWER_GEMV_GROUP_INVARIANT with --batch-invariant. rows: KA_ROWS_T or KA_ROWS_S. qk: QROWS_NONE
 * (gemv), or the quantised weight wt with its scales sc and their K block qb (0 for one per row):
 * gemv_fp8 or gemv_int4. */
static ka_step gemv_step(lw *w, const kg_node *n, ka_arg x, ka_arg wt, ka_arg sc, qrows_kind qk,
                         int64_t qb, ka_arg bias, ka_arg y, int64_t N, int64_t K, int gated,
                         int act, int out_f32, ka_rows rows)
{
    const int mmax = w->c->batch_invariant ? LOWER_GEMV_GROUP_INVARIANT : GEMV_MAX;
    static const char *const fam[] = {"gemv", "gemv_fp8", "gemv_int4"};
    static const char *const par[] = {
        "const kiln_step st, const DT *x, const DT *w, const DT *bias, void *y, int M",
        "const kiln_step st, const DT *x, const unsigned char *w, const float *scale, "
        "const DT *bias, void *y, int M",
        "const kiln_step st, const DT *x, const unsigned char *w, const uint2 *scale, "
        "const DT *bias, void *y, int M"};
    static const int step[] = {128, 256, 512};
    int th = lower_gemv_threads(N, K, gated, step[qk]);
    char tail[64] = "";
    if (qk != QROWS_NONE)
        snprintf(tail, sizeof tail, ", %lld", (long long)(qb ? qb : K));
    int k = kern(w, fam[qk], th, 0, par[qk],
                 "kiln::%s<DT, %lld, %lld, %d, %s, %s, %d, %s, %d%s>(st, x, w, %sbias, y, M)",
                 fam[qk], (long long)N, (long long)K, mmax,
                 bias.kind == KA_ARG_NULL ? "false" : "true", gated ? "true" : "false",
                 act < 0 ? 0 : act, out_f32 ? "true" : "false", th, tail,
                 qk != QROWS_NONE ? "scale, " : "");
    /* x: one block per group of mmax rows (one group up to GEMV_MAX rows; more with
     * --batch-invariant and for a quantised weight, whose decode schedules run the GEMV at every
     * batch); y: one per 16-row tile, 16 outputs or 8 gated */
    int64_t nout = gated ? N / 2 : N, opb = gated ? 8 : 16;
    ka_step s = kstep(k, n->name,
                      rows == KA_ROWS_S ? G(0, 1, 0, 0, mmax) : G(1, 0, 0, 0, mmax),
                      G(0, 0, 0, (int)nout, (int)opb), G1());
    s.size = KA_SIZE_SMALL;
    s.rows = rows;
    add_arg(&s, A(KA_ARG_STEP, 0));
    add_arg(&s, x);
    add_arg(&s, wt);
    if (qk != QROWS_NONE)
        add_arg(&s, sc);
    add_arg(&s, bias);
    add_arg(&s, y);
    add_arg(&s, A(KA_ARG_M, 0));
    return s;
}

/* The shared memory a block of the artifact may have (kc.smem_block; sm_80's when unknown). */
static int block_smem(const kc *c)
{
    return c->smem_block ? c->smem_block : lower_smem_optin(80);
}

/* The shared memory a gemv_stream block of that K and ring depth d uses (esize-byte elements of
 * x, wbits-bit ones of the weight). */
static int gemv_stream_used(int64_t K, int d, int esize, int wbits)
{
    return KILN_GEMV_STREAM_SMEM(KILN_GEMV_STREAM_WARPS(wbits), d, lower_gemv_stream_seg(K, wbits),
                                 (int)K, esize, wbits);
}

int lower_gemv_stream(const kc *c, int64_t N, int64_t K, int gated, int wbits)
{
    return c->sm90 && !c->batch_invariant && K % KILN_GEMV_STREAM_CHUNK(wbits) == 0 &&
           K <= KILN_GEMV_STREAM_KMAX && (!gated || N % 2 == 0) &&
           gemv_stream_used(K, KILN_GEMV_STREAM_DMIN, 2, wbits) <= block_smem(c);
}

int lower_gemv_stream_depth(const kc *c, int64_t K, int esize, int wbits)
{
    int d = KILN_GEMV_STREAM_DMAX;
    while (d > KILN_GEMV_STREAM_DMIN && gemv_stream_used(K, d, esize, wbits) > block_smem(c))
        d--;
    return d;
}

int lower_gemv_stream_smem(const kc *c, int64_t K, int esize, int wbits)
{
    const int need =
        gemv_stream_used(K, lower_gemv_stream_depth(c, K, esize, wbits), esize, wbits);
    const int sm = KILN_GEMV_STREAM_SMEM_SM < block_smem(c) ? KILN_GEMV_STREAM_SMEM_SM
                                                            : block_smem(c);
    return need > sm ? need : sm;
}

int lower_gemv_stream_seg(int64_t K, int wbits)
{
    const int64_t chunk = KILN_GEMV_STREAM_CHUNK(wbits);
    for (int64_t seg = KILN_GEMV_STREAM_SEGMAX * 16 / wbits; seg > chunk; seg -= chunk)
        if (K % seg == 0)
            return (int)seg;
    return (int)chunk;
}

/* A linear's one-row steps on sm_90+ code (size one), pushed to `which`: templates/
 * gemv_stream.cuh's gemv_stream, gemv_stream_fp8 for an FP8 weight (wbits 8: its scales sc) or
 * gemv_stream_int4 for an INT4 one (wbits 4: its (scale, zero) pairs sc);
 * the caller's GEMV step takes the other rows up to gemv_max (size few). norm >= 0: the RMS norm
 * whose output x is, folded into the step (norm_fold): it reads the norm's inputs instead of x.
 * Where the linear is the qkv of a rotation fold (rope_fold), the decode schedule's step is
 * gemv_stream_rope(_fp8, _int4) instead, and the plain one goes to the prefill schedule
 * alone. */
static int push_stream(lw *w, int which, const kg_node *n, ka_arg x, ka_arg wt, ka_arg sc,
                       int wbits, ka_arg bias, ka_arg y, int64_t N, int64_t K, int gated, int act,
                       int out_f32, ka_rows rows, ka_logits lg, int norm)
{
    /* the norm's operands (NORM 1: rms_norm(x); 2: of round(x + res), stored to res_out) */
    ka_arg res = ANULL(), nw = ANULL(), res_out = ANULL(), eps = AF(0.f);
    int mode = 0, unit_offset = 0;
    if (norm >= 0) {
        const kg_node *nn = &w->g->nodes[norm];
        const int residual = norm_residual(w, norm, &x, &res, &res_out);
        if (residual < 0 || (!residual && dense_arg(w, nn->in[0], &x)))
            return -1;
        nw = AW(w, nn->in[1]);
        eps = AF(nn->eps);
        mode = residual ? 2 : 1;
        unit_offset = nn->unit_offset;
    }
    const int fp8 = wbits == 8, int4 = wbits == 4;
    const char *sfx = fp8 ? "_fp8" : int4 ? "_int4" : "";
    const char *sarg = fp8 ? "scale, " : int4 ? "sz, " : "";
    const char *wpar = fp8    ? "const unsigned char *w, const float *scale"
                       : int4 ? "const unsigned char *w, const uint2 *sz"
                              : "const DT *w";
    const int seg = lower_gemv_stream_seg(K, wbits), warps = KILN_GEMV_STREAM_WARPS(wbits);
    const int th = 32 * warps;
    const int d = lower_gemv_stream_depth(w->c, K, w->esize, wbits);
    const int smem = lower_gemv_stream_smem(w->c, K, w->esize, wbits);
    char par[512];
    snprintf(par, sizeof par,
             "const kiln_step st, const DT *x, const DT *res, const DT *nw, DT *res_out, "
             "float eps, %s, const DT *bias, void *y, int M",
             wpar);
    char kname[32];
    snprintf(kname, sizeof kname, "gemv_stream%s", sfx);
    int k = kern(w, kname, th, smem, par,
                 "kiln::gemv_stream%s<DT, %lld, %lld, %s, %s, %d, %s, %d, %d, %d, %d, %d, %s>(st, "
                 "x, res, nw, res_out, eps, w, %sbias, y, M)",
                 sfx, (long long)N, (long long)K, bias.kind == KA_ARG_NULL ? "false" : "true",
                 gated ? "true" : "false", act < 0 ? 0 : act, out_f32 ? "true" : "false",
                 warps, d, seg, KILN_GEMV_STREAM_BLOCKS, mode,
                 unit_offset ? "true" : "false", sarg);
    ka_step o = kstep(k, n->name, G(0, 0, 0, KILN_GEMV_STREAM_BLOCKS, 1), G1(), G1());
    o.size = KA_SIZE_ONE;
    o.rows = rows;
    o.logits = lg;
    add_arg(&o, A(KA_ARG_STEP, 0));
    add_arg(&o, x);
    add_arg(&o, res);
    add_arg(&o, nw);
    add_arg(&o, res_out);
    add_arg(&o, eps);
    add_arg(&o, wt);
    if (wbits < 16)
        add_arg(&o, sc);
    add_arg(&o, bias);
    const int nhead = o.nargs; /* the arguments gemv_stream_rope's call begins with */
    add_arg(&o, y);
    add_arg(&o, A(KA_ARG_M, 0));
    const int id = (int)(n - w->g->nodes);
    const int att = n->op == KG_LINEAR && id < w->nrope ? w->rope[id] : -1;
    push(w, att >= 0 ? which & PRE : which, &o);
    if (att < 0 || !(which & DEC))
        return 0;
    /* the decode schedule's one-row step with the attention's rotation folded in (rope_fold) */
    const kg_node *an = &w->g->nodes[att];
    const kg_attn *at = &an->attn;
    rope_args ra;
    if (rope_args_of(w, an, &ra))
        return -1;
    snprintf(par, sizeof par,
             "const kiln_step st, const DT *x, const DT *res, const DT *nw, DT *res_out, "
             "float eps, %s, const DT *bias, DT *q_out, DT *k_cache, DT *v_cache, "
             "const float *inv_freq, float rope_scale, float dyn_base, float dyn_factor, "
             "int dyn_max_pos, int M",
             wpar);
    snprintf(kname, sizeof kname, "gemv_stream_rope%s", sfx);
    k = kern(w, kname, th, smem, par,
             "kiln::gemv_stream_rope%s<DT, %d, %d, %d, %d, %d, %d, %lld, %s, %d, %d, %d, %d, %d, "
             "%s>(st, x, res, nw, res_out, eps, w, %sbias, q_out, k_cache, v_cache, inv_freq, "
             "rope_scale, dyn_base, dyn_factor, dyn_max_pos, M)",
             sfx, at->n_heads, at->n_kv_heads, at->head_dim, ra.rot, ra.il, ra.dyn, (long long)K,
             bias.kind == KA_ARG_NULL ? "false" : "true", warps, d, seg,
             KILN_GEMV_STREAM_BLOCKS, mode, unit_offset ? "true" : "false", sarg);
    o.kernel = k;
    o.nargs = nhead;
    add_arg(&o, A(KA_ARG_SCRATCH, w->rope_q));
    rope_cache_args(&o, &ra, at->layer);
    add_arg(&o, A(KA_ARG_M, 0));
    push(w, DEC, &o);
    return 0;
}

/* A GEMV step s (gemv_step's, rows up to gemv_max) pushed to `which`: at 2 to gemv_max rows
 * (size few) where the linear has push_stream's one-row step (`stream`), else as it is sized. */
static void push_gemv_rows(lw *w, int which, ka_step *s, int stream)
{
    if (!stream) {
        push_sized(w, which, s);
        return;
    }
    s->size = KA_SIZE_FEW;
    push(w, which, s);
}

/* A 16-bit weight's GEMV steps (rows up to gemv_max; logits lg) pushed to `which`: gemv.cuh's; or,
 * where lower_gemv_stream allows it, gemv.cuh's at 2 to gemv_max (size few) and push_stream's at
 * one row. norm: push_stream's. */
static int push_gemv16(lw *w, int which, const kg_node *n, ka_arg x, ka_arg wt, ka_arg bias,
                       ka_arg y, int64_t N, int64_t K, int gated, int act, int out_f32,
                       ka_rows rows, ka_logits lg, int norm)
{
    ka_step s = gemv_step(w, n, x, wt, ANULL(), QROWS_NONE, 0, bias, y, N, K, gated, act, out_f32,
                          rows);
    s.logits = lg;
    const int stream = lower_gemv_stream(w->c, N, K, gated, 16);
    push_gemv_rows(w, which, &s, stream);
    if (!stream)
        return 0;
    return push_stream(w, which, n, x, wt, ANULL(), 16, bias, y, N, K, gated, act, out_f32, rows,
                       lg, norm);
}

int lower_smem_optin(int sm)
{
    if (sm == 80 || sm == 87)
        return 163 * 1024;
    if (sm == 90 || sm == 100 || sm == 103)
        return 227 * 1024;
    return 99 * 1024;
}

/* The most row groups of a gemm_skinny_int4 launch: a decode step has at most max_seqs rows. */
static int64_t skinny4_groups(const lw *w)
{
    return (w->c->max_seqs + KILN_SKINNY_MAX - 1) / KILN_SKINNY_MAX;
}

/* The skinny GEMM step of the decode schedule: templates/gemv.cuh's gemm_skinny for a 16-bit
 * weight (g4 0), for gemv_max < rows <= skinny_max (templates/gemm90.cuh's gemm90_skinny where
 * every target is sm_90a: lower_gemm90); or gemm_skinny_int4 for an INT4 weight wt of
 * group size g4 with its scales and zero points sc, for rows > gemv_max (row groups of
 * KILN_SKINNY_MAX: skinny4_groups); with `prefill`, gemm_skinny_int4's step of the prefill
 * schedule, for gemv_max < rows <= skinny_max (one row group). Its partials in this node's
 * scratch, its arrival counters the shared ones at w->skinny_count (every launch leaves them
 * zero). */
static void skinny_push(lw *w, const kg_node *n, ka_arg x, ka_arg wt, ka_arg sc, int64_t g4,
                        ka_arg bias, ka_arg y, int64_t N, int64_t K, int gated, int act,
                        int out_f32, int prefill)
{
    if (!g4 && lower_gemm90(w->c)) { /* Hopper's: templates/gemm90.cuh's gemm90_skinny */
        int splits = lower_skinny90_splits(N, K, gated);
        int64_t tiles = KILN_SKINNY90_TILES(N, gated), pf = KILN_SKINNY90_PART(splits, tiles);
        ka_arg part = pf ? A(KA_ARG_SCRATCH, scratch_at(w, pf * 4)) : ANULL();
        int k = kern(w, "gemm90_skinny", KILN_SKINNY90_THREADS, KILN_SKINNY90_SMEM,
                     "int M, const __grid_constant__ kiln::tmap tx, "
                     "const __grid_constant__ kiln::tmap tw, const DT *bias, void *y, "
                     "float *part, unsigned *count",
                     "kiln::gemm90_skinny<DT, %lld, %lld, %s, %s, %d, %s, %d>(M, tx, tw, bias, "
                     "y, part, count)",
                     (long long)N, (long long)K, bias.kind == KA_ARG_NULL ? "false" : "true",
                     gated ? "true" : "false", act < 0 ? 0 : act, out_f32 ? "true" : "false",
                     splits);
        w->L->inst_min_ctas[k] = 2; /* two blocks an SM (kernels/kiln_gemm.h) */
        ka_step s = kstep(k, n->name, G(0, 0, 0, (int)tiles, 1), G(0, 0, 0, splits, 1), G1());
        s.size = KA_SIZE_MID;
        add_arg(&s, A(KA_ARG_M, 0));
        add_arg(&s, A(KA_ARG_TMAP, 2));
        add_arg(&s, A(KA_ARG_TMAP, 3));
        add_arg(&s, bias);
        add_arg(&s, y);
        add_arg(&s, part);
        add_arg(&s, A(KA_ARG_SCRATCH, w->skinny_count));
        s.x = x;
        s.w = wt;
        s.n = N;
        s.k = K;
        s.ldx = K;
        push(w, DEC, &s);
        return;
    }
    int warps, splits, stages;
    lower_skinny_shape(N, K, gated, (int)g4, block_smem(w->c), &warps, &splits, &stages);
    assert(stages > 0); /* w->skinny and w->skinny4 hold only where the smallest ring fits */
    int64_t units = KILN_SKINNY_UNITS(N, gated, g4);
    int64_t pf = KILN_SKINNY_PART(splits, units * (g4 ? KILN_SKINNY4_RT : 1), KILN_SKINNY_MAX) *
                 (g4 ? skinny4_groups(w) : 1);
    ka_arg part = pf ? A(KA_ARG_SCRATCH, scratch_at(w, pf * 4)) : ANULL();
    char tail[32] = "";
    if (g4)
        snprintf(tail, sizeof tail, ", %lld", (long long)g4);
    int k = kern(w, g4 ? "gemm_skinny_int4" : "gemm_skinny", 32 * warps,
                 KILN_SKINNY_RING(KILN_SKINNY_MAX, warps, stages, (int)g4),
                 g4 ? "const kiln_step st, const DT *x, const unsigned char *w, const uint2 *sz, "
                      "const DT *bias, void *y, float *part, unsigned *count, int M"
                    : "const kiln_step st, const DT *x, const DT *w, const DT *bias, void *y, "
                      "float *part, unsigned *count, int M",
                 "kiln::%s<DT, %lld, %lld, %d, %s, %s, %d, %s, %d, %d, %d%s>(st, x, w, %sbias, "
                 "y, part, count, M)",
                 g4 ? "gemm_skinny_int4" : "gemm_skinny", (long long)N, (long long)K,
                 KILN_SKINNY_MAX, bias.kind == KA_ARG_NULL ? "false" : "true",
                 gated ? "true" : "false", act < 0 ? 0 : act, out_f32 ? "true" : "false", warps,
                 splits, stages, tail, g4 ? "sz, " : "");
    /* gemm_skinny: x ceil(units / warps) blocks of warps units, y the K parts; gemm_skinny_int4:
     * the same as y and z, x the row groups */
    ka_grid ub = G(0, 0, 0, (int)units, warps), kp = G(0, 0, 0, splits, 1);
    ka_step s = g4 ? kstep(k, n->name, G(1, 0, 0, 0, KILN_SKINNY_MAX), ub, kp)
                   : kstep(k, n->name, ub, kp, G1());
    s.size = g4 && !prefill ? KA_SIZE_LARGE : KA_SIZE_MID;
    add_arg(&s, A(KA_ARG_STEP, 0));
    add_arg(&s, x);
    add_arg(&s, wt);
    if (g4)
        add_arg(&s, sc);
    add_arg(&s, bias);
    add_arg(&s, y);
    add_arg(&s, part);
    add_arg(&s, A(KA_ARG_SCRATCH, w->skinny_count));
    add_arg(&s, A(KA_ARG_M, 0));
    push(w, prefill ? PRE : DEC, &s);
}

/* A quantised weight (q, scales sc, K block b, kind qk) dequantised into scratch [N, K] in the
 * compute dtype for a prefill GEMM (templates/gemv.cuh's dequant_fp8 or dequant_int4), a step of
 * the prefill schedule of the given size; returns the scratch argument. */
#define DEQUANT_THREADS 256
static ka_arg dequant_step(lw *w, const kg_node *n, ka_arg q, ka_arg sc, qrows_kind qk, int64_t b,
                           int64_t N, int64_t K, ka_size size)
{
    int i4 = qk == QROWS_INT4;
    ka_arg out = A(KA_ARG_SCRATCH, scratch_at(w, N * K * w->esize));
    int k = kern(w, i4 ? "dequant_int4" : "dequant_fp8", DEQUANT_THREADS, 0,
                 i4 ? "const kiln_step st, const unsigned char *w, const uint2 *scale, DT *out"
                    : "const kiln_step st, const unsigned char *w, const float *scale, DT *out",
                 "kiln::%s<DT, %lld, %lld, %lld, %d>(st, w, scale, out)",
                 i4 ? "dequant_int4" : "dequant_fp8", (long long)N, (long long)K,
                 (long long)(b ? b : K), DEQUANT_THREADS);
    /* a thread per 16-byte chunk: 16 e4m3 or 32 INT4 elements */
    ka_step s = kstep(k, n->name, G(0, 0, 0, (int)(N * K / (i4 ? 32 : 16)), DEQUANT_THREADS), G1(),
                      G1());
    s.size = size;
    add_arg(&s, A(KA_ARG_STEP, 0));
    add_arg(&s, q);
    add_arg(&s, sc);
    add_arg(&s, out);
    push_sized(w, PRE, &s);
    return out;
}

int lower_gemm90(const kc *c) { return c->gemm_kiln && c->sm90a_only; }

/* The GEMM step (prefill-sized rows): y[M, N] = x[M, K] . w[N, K]^T (+ bias), M the step's
 * rows (T, or n_seqs for KA_ROWS_S). With kilnc --gemm kiln, kiln's own kernel: one tile
 * configuration per shape whatever M is, so a row's result does not depend on the rows beside
 * it. It is templates/gemm90.cuh (wgmma) when every target is sm_90a (lower_gemm90), else
 * templates/gemm.cuh (mma.sync), each with its tile and block from kernels/kiln_gemm.h: the
 * launch geometry is one for all the artifact's cubins, so the Hopper kernel only goes where no
 * other SM shares it. Otherwise a cuBLASLt step (runtime/gemm.c), whose algorithm cuBLASLt picks
 * by M. */
static ka_step gemm_step(lw *w, const kg_node *n, ka_arg x, ka_arg wt, ka_arg bias, ka_arg y,
                         int64_t N, int64_t K, int64_t ldx, int64_t ldy, int out_f32, ka_rows rows)
{
    ka_step s;
    if (w->c->gemm_kiln && lower_gemm90(w->c)) {
        /* gemm90.cuh: x and w as TMA tensor maps the runtime makes from the step's x, w, n, k
         * and ldx; one block an SM, the blocks taking the tiles in turn (kernels/kiln_gemm.h) */
        int k = kern(w, "gemm", KILN_GEMM90_THREADS, KILN_GEMM90_SMEM((int)w->esize,
                                                                      KILN_GEMM90_BN(N)),
                     out_f32 ? "int M, const __grid_constant__ kiln::tmap tx, "
                               "const __grid_constant__ kiln::tmap tw, const DT *bias, float *y"
                             : "int M, const __grid_constant__ kiln::tmap tx, "
                               "const __grid_constant__ kiln::tmap tw, const DT *bias, DT *y",
                     "kiln::gemm90<DT, %s, %lld, %lld, %d>(M, tx, tw, bias, y, %lldLL)",
                     out_f32 ? "float" : "DT", (long long)N, (long long)K,
                     bias.kind != KA_ARG_NULL, (long long)ldy);
        s = kstep(k, n->name, GSM(), G1(), G1());
        add_arg(&s, A(KA_ARG_M, 0));
        add_arg(&s, A(KA_ARG_TMAP, 0));
        add_arg(&s, A(KA_ARG_TMAP, 1));
        add_arg(&s, bias);
        add_arg(&s, y);
        s.x = x;
        s.w = wt;
        s.n = N;
        s.k = K;
        s.ldx = ldx;
    } else if (w->c->gemm_kiln) {
        int k = kern(w, "gemm", KILN_GEMM_THREADS, KILN_GEMM_SMEM((int)w->esize),
                     out_f32 ? "int M, const DT *x, const DT *w, const DT *bias, float *y"
                             : "int M, const DT *x, const DT *w, const DT *bias, DT *y",
                     "kiln::gemm<DT, %s, %lld, %lld, %d>(M, x, %lldLL, w, bias, y, %lldLL)",
                     out_f32 ? "float" : "DT", (long long)N, (long long)K,
                     bias.kind != KA_ARG_NULL, (long long)ldx, (long long)ldy);
        /* grid (ceil(N / BN), ceil(M / BM)) */
        s = kstep(k, n->name, G(0, 0, 0, (int)N, KILN_GEMM_BN),
                  rows == KA_ROWS_S ? G(0, 1, 0, 0, KILN_GEMM_BM) : G(1, 0, 0, 0, KILN_GEMM_BM),
                  G1());
        add_arg(&s, A(KA_ARG_M, 0));
        add_arg(&s, x);
        add_arg(&s, wt);
        add_arg(&s, bias);
        add_arg(&s, y);
    } else {
        memset(&s, 0, sizeof s);
        s.kind = KA_GEMM;
        s.label = n->name;
        s.x = x;
        s.w = wt;
        s.bias = bias;
        s.y = y;
        s.n = N;
        s.k = K;
        s.ldx = ldx;
        s.ldy = ldy;
        s.out_f32 = out_f32;
    }
    s.size = KA_SIZE_LARGE;
    s.rows = rows;
    return s;
}

/* Whether LOGITS node `id` is the rank's vocabulary block of an ALL_GATHER (the graph output). */
static int gathered(const kgraph *g, int id)
{
    const kg_node *o = &g->nodes[g->output];
    return o->op == KG_ALL_GATHER && o->in[0] == id;
}

/* The vocabulary gather of one logits variant: the ranks' float [M, N] blocks (`part`) into
 * `all` ([tp][M][N], rank-major), then into the logits' rows of N * tp. Nothing without it. */
static void gather_steps(lw *w, const kg_node *n, ka_arg part, ka_arg all, int64_t N, int tp,
                         int which, ka_logits lg, ka_rows rows)
{
    if (part.kind == KA_ARG_LOGITS)
        return;
    ka_step s;
    memset(&s, 0, sizeof s);
    s.kind = KA_ALLGATHER;
    s.label = n->name;
    s.logits = lg;
    s.rows = rows;
    s.x = part;
    s.y = all;
    s.n = N;
    s.out_f32 = 1;
    push(w, which, &s);
    int k = kern(w, "gather_ranks", ELEM_THREADS, 0,
                 "const kiln_step st, const float *parts, float *logits, int M",
                 "kiln::gather_ranks<%lld, %d, %d>(st, parts, logits, M)", (long long)N, tp,
                 ELEM_THREADS);
    s = kstep(k, n->name, rows == KA_ROWS_S ? G(0, 1, 0, 0, 1) : G(1, 0, 0, 0, 1),
              G(0, 0, 0, tp, 1), G(0, 0, 0, (int)N, 8 * ELEM_THREADS));
    s.logits = lg;
    s.rows = rows;
    add_arg(&s, A(KA_ARG_STEP, 0));
    add_arg(&s, all);
    add_arg(&s, A(KA_ARG_LOGITS, 0));
    add_arg(&s, A(KA_ARG_M, 0));
    push(w, which, &s);
}

/* The LM head's bias and final soft cap on one logits variant's float [M, N] block `part` (the
 * rank's, before the gather), after its GEMM or GEMV; nothing when the head has neither. */
static void logits_epilogue_step(lw *w, const kg_node *n, ka_arg part, ka_arg bias, int64_t N,
                                 int which, ka_logits lg, ka_rows rows)
{
    int has_bias = bias.kind != KA_ARG_NULL, cap = n->softcap > 0;
    if (!has_bias && !cap)
        return;
    int k = kern(w, "logits_epilogue", ELEM_THREADS, 0,
                 "const kiln_step st, float *logits, const DT *bias, float cap, int M",
                 "kiln::logits_epilogue<DT, %lld, %d, %d, %d>(st, logits, bias, cap, M)",
                 (long long)N, has_bias, cap, ELEM_THREADS);
    ka_step s = kstep(k, n->name, rows == KA_ROWS_S ? G(0, 1, 0, 0, 1) : G(1, 0, 0, 0, 1),
                      G(0, 0, 0, (int)N, 8 * ELEM_THREADS), G1());
    s.logits = lg;
    s.rows = rows;
    add_arg(&s, A(KA_ARG_STEP, 0));
    add_arg(&s, part);
    add_arg(&s, bias);
    add_arg(&s, AF(n->softcap));
    add_arg(&s, A(KA_ARG_M, 0));
    push(w, which, &s);
}

/* A linear on an FP8 weight (e4m3 q, a float scale per row in sc) for steps of more rows than the
 * GEMV takes, in both schedules: x quantised per row to e4m3 (quant_fp8_rows: amax / 448, in the
 * weight's byte order), cuBLASLt's FP8 GEMM of the two into scratch (their plain product: bf16,
 * float for an f16 model, whose range e4m3 products outgrow), then fp8_rescale scales by both
 * rows' scales and adds the bias (act >= 0: a gated weight, act(gate) * up into y). W8A8, as
 * vLLM runs FP8 checkpoints: cuBLASLt's row-scaled FP8 modes are not available on Hopper (the
 * heuristic has no algorithm), hence the scaling after the GEMM. */
static void fp8_gemm_steps(lw *w, const kg_node *n, ka_arg x, ka_arg q, ka_arg sc, ka_arg bias,
                           ka_arg y, int64_t N, int64_t K, int act)
{
    int64_t T = w->c->max_tokens, nout = act >= 0 ? N / 2 : N;
    int f32 = w->c->act_dtype == ST_F16;
    ka_arg xq = A(KA_ARG_SCRATCH, scratch_at(w, T * K));
    ka_arg xs = A(KA_ARG_SCRATCH, scratch_at(w, T * 4));
    ka_arg d = A(KA_ARG_SCRATCH, scratch_at(w, T * N * (f32 ? 4 : w->esize)));
    int th = row_threads(K);
    int k = kern(w, "quant_fp8_rows", th, 0,
                 "const kiln_step st, const DT *x, unsigned char *q, float *scale, int M",
                 "kiln::quant_fp8_rows<DT, %lld, %d>(st, x, q, scale, M)", (long long)K, th);
    ka_step s = kstep(k, n->name, G(1, 0, 0, 0, 1), G1(), G1());
    s.size = KA_SIZE_LARGE;
    s.rows = KA_ROWS_T;
    add_arg(&s, A(KA_ARG_STEP, 0));
    add_arg(&s, x);
    add_arg(&s, xq);
    add_arg(&s, xs);
    add_arg(&s, A(KA_ARG_M, 0));
    push_sized(w, BOTH, &s);
    s = gemm_step(w, n, xq, q, ANULL(), d, N, K, K, N, f32, KA_ROWS_T);
    push_sized(w, BOTH, &s);
    const char *dd = f32 ? "float" : "DT";
    char params[200];
    snprintf(params, sizeof params,
             "const kiln_step st, const %s *d, const float *xs, const float *ws, const DT *bias, "
             "DT *y",
             dd);
    k = kern(w, "fp8_rescale", ELEM_THREADS, 0, params,
             "kiln::fp8_rescale<DT, %s, %lld, %s, %s, %d, %d>(st, d, xs, ws, bias, y)", dd,
             (long long)N, bias.kind == KA_ARG_NULL ? "false" : "true",
             act >= 0 ? "true" : "false", act < 0 ? 0 : act, ELEM_THREADS);
    s = kstep(k, n->name, elems(nout), G1(), G1());
    s.size = KA_SIZE_LARGE;
    add_arg(&s, A(KA_ARG_STEP, 0));
    add_arg(&s, d);
    add_arg(&s, xs);
    add_arg(&s, sc);
    add_arg(&s, bias);
    add_arg(&s, y);
    push_sized(w, BOTH, &s);
}

/* One prefill variant of the LM head (lg: the last row of each sequence, x = gather_last's rows;
 * or all rows): its GEMM (more rows than the GEMV takes) or GEMV into the float block part, the
 * head's bias and soft cap hb, and the vocabulary gather. */
static void logits_prefill(lw *w, const kg_node *n, ka_arg x, ka_arg wt, ka_arg hb, ka_arg part,
                           ka_arg all, int64_t N, int64_t K, int tp, ka_logits lg, ka_rows rows)
{
    ka_step s = gemm_step(w, n, x, wt, ANULL(), part, N, K, K, N, 1, rows);
    s.logits = lg;
    push_sized(w, PRE, &s);
    /* no norm folded, so no error to return */
    push_gemv16(w, PRE, n, x, wt, ANULL(), part, N, K, 0, -1, 1, rows, lg, -1);
    logits_epilogue_step(w, n, part, hb, N, PRE, lg, rows);
    gather_steps(w, n, part, all, N, tp, PRE, lg, rows);
}

static int low_linear(lw *w, int id)
{
    const kgraph *g = w->g;
    const kg_node *n = &g->nodes[id];
    const kg_node *wn = &g->nodes[n->in[1]];
    int64_t N = wn->shape[0], K = wn->shape[1];
    int gated = n->epi_act >= 0;
    if (need8(w, n, K, "the input width"))
        return -1;
    ka_arg x, y, wt;
    ka_arg bias = n->n_in > 2 && n->in[2] >= 0 ? AW(w, n->in[2]) : ANULL();
    if (dense_arg(w, n->in[0], &x))
        return -1;

    if (n->op == KG_LOGITS) { /* float logits; the last row of each sequence unless all */
        wt = AW(w, n->in[1]);
        /* the head's bias and soft cap: logits_epilogue after the GEMM or GEMV, not in them */
        ka_arg hb = bias;
        bias = ANULL();
        /* split by vocabulary: the rank's [M, N] block goes to scratch, the all-gather puts the
         * ranks' blocks side by side (rank-major), and gather_ranks makes rows of them */
        int tp = gathered(w->g, id) ? w->g->tp : 1;
        int64_t rows_max = w->c->max_tokens;
        ka_arg lg = A(KA_ARG_LOGITS, 0), part = lg, all = lg;
        if (gathered(w->g, id)) {
            part = A(KA_ARG_SCRATCH, scratch_at(w, rows_max * N * 4));
            all = A(KA_ARG_SCRATCH, scratch_at(w, rows_max * N * tp * 4));
        }
        int th = row_threads(K);
        int kg = kern(w, "gather_last", th, 0, "const kiln_step st, const DT *x, DT *out",
                      "kiln::gather_last<DT, %lld, %d>(st, x, out)", (long long)K, th);
        ka_arg last = A(KA_ARG_SCRATCH, scratch_at(w, (int64_t)w->c->max_seqs * K * w->esize));
        ka_step s = kstep(kg, n->name, G(0, 1, 0, 0, 1), G1(), G1());
        s.logits = KA_LOGITS_LAST;
        add_arg(&s, A(KA_ARG_STEP, 0));
        add_arg(&s, x);
        add_arg(&s, last);
        push(w, PRE, &s);
        logits_prefill(w, n, last, wt, hb, part, all, N, K, tp, KA_LOGITS_LAST, KA_ROWS_S);
        logits_prefill(w, n, x, wt, hb, part, all, N, K, tp, KA_LOGITS_ALL, KA_ROWS_T);
        /* decode: every row is the last of its sequence */
        s = gemm_step(w, n, x, wt, bias, part, N, K, K, N, 1, KA_ROWS_T);
        push_gemm(w, DEC, &s, w->skinny);
        if (push_gemv16(w, DEC, n, x, wt, bias, part, N, K, 0, -1, 1, KA_ROWS_T, KA_LOGITS_ANY,
                        -1))
            return -1;
        if (w->skinny)
            skinny_push(w, n, x, wt, ANULL(), 0, bias, part, N, K, 0, -1, 1, 0);
        logits_epilogue_step(w, n, part, hb, N, DEC, KA_LOGITS_ANY, KA_ROWS_T);
        gather_steps(w, n, part, all, N, tp, DEC, KA_LOGITS_ANY, KA_ROWS_T);
        w->m->vocab = (int)(N * tp);
        return 0;
    }

    if (dense_arg(w, id, &y))
        return -1;
    /* the norm before it, folded into its one-row step (norm_fold) */
    const int fold = norm_fold(w, n->in[0]) == id ? n->in[0] : -1;
    /* A quantised weight (FP8 or INT4): its GEMV reads it as packed for steps of up to
     * GEMV_MAX rows. Longer steps of an FP8 one run cuBLASLt's FP8 GEMM (fp8_gemm_steps: W8A8)
     * when every target has FP8 tensor cores and the weight has one scale per row. Otherwise
     * (INT4, block scales, an sm_80 target, kiln's own GEMM, --fp8-gemm dequant) the decode
     * schedule runs the GEMV at every batch (dequantising the whole model per step would cost
     * more than the GEMV's re-reads of a weight tile from L2 by its row groups) and longer
     * prefill steps dequantise the weight into scratch for the GEMM. INT4's decode steps of more
     * than GEMV_MAX rows take gemm_skinny_int4 (the weight read and converted once for every 64
     * rows; w->skinny4), and so do its prefill steps of up to skinny_max rows (w->skinny4p:
     * where a dequantising pass over the weight would cost more than the product); only longer
     * ones dequantise. Neither with --batch-invariant, whose GEMV keeps its fixed groups. */
    qrows_kind qk;
    int64_t qb = quant_block(w, n->in[1], K, &qk), nout = gated ? N / 2 : N;
    int gemm_which = BOTH;
    /* the rows of the GEMM path (its dequant, GEMM and act_mul steps): past gemv_max, or past
     * skinny_max where an INT4 weight's prefill skinny step takes the rows below */
    ka_size gemm_size = KA_SIZE_LARGE;
    if (qb < 0) {
        wt = AW(w, n->in[1]);
    } else {
        ka_arg sc;
        wid_q(w, n->in[1], qk, qb, &wt, &sc);
        ka_step s = gemv_step(w, n, x, wt, sc, qk, qb, bias, y, N, K, gated, n->epi_act, 0,
                              KA_ROWS_T);
        /* an FP8 weight with a scale per row: gemv_stream_fp8 at one row on sm_90+ code, the
         * GEMV at the other rows it takes */
        const int wbits = stream_wbits(w, n->in[1], K, gated);
        const int fp8_gemm = qk == QROWS_E4M3 && qb == 0 && w->c->sm_fp8 && !w->c->gemm_kiln &&
                             !w->c->fp8_dequant && nout % 8 == 0;
        push_gemv_rows(w, fp8_gemm ? BOTH : PRE, &s, wbits != 0);
        if (!fp8_gemm && qk == QROWS_INT4 && w->skinny4) {
            push(w, DEC, &s);
            skinny_push(w, n, x, wt, sc, qb ? qb : K, bias, y, N, K, gated, n->epi_act, 0, 0);
        } else if (!fp8_gemm) {
            s.size = wbits ? KA_SIZE_NOT_ONE : KA_SIZE_ANY;
            push(w, DEC, &s);
        }
        if (wbits && push_stream(w, BOTH, n, x, wt, sc, wbits, bias, y, N, K, gated, n->epi_act,
                                 0, KA_ROWS_T, KA_LOGITS_ANY, fold))
            return -1;
        if (fp8_gemm) {
            fp8_gemm_steps(w, n, x, wt, sc, bias, y, N, K, gated ? n->epi_act : -1);
            return 0;
        }
        gemm_which = PRE;
        if (qk == QROWS_INT4 && w->skinny4p) {
            skinny_push(w, n, x, wt, sc, qb ? qb : K, bias, y, N, K, gated, n->epi_act, 0, 1);
            gemm_size = KA_SIZE_HUGE;
        }
        wt = dequant_step(w, n, wt, sc, qk, qb, N, K, gemm_size);
    }
    /* a 16-bit weight: the GEMV up to gemv_max rows; with the skinny GEMM (--gemm kiln), the
     * decode schedule's steps of up to skinny_max rows take it and its GEMM runs past them only
     * (prefill keeps kiln's GEMM from gemv_max + 1 rows: its result for a row depends on no
     * other row, so a prompt prefilled in a batch equals it alone, bit for bit) */
    int skinny = qb < 0 && w->skinny;
    if (!gated) {
        ka_step s = gemm_step(w, n, x, wt, bias, y, N, K, K, N, 0, KA_ROWS_T);
        s.size = gemm_size;
        push_gemm(w, gemm_which, &s, skinny);
        if (qb < 0 && push_gemv16(w, BOTH, n, x, wt, bias, y, N, K, 0, -1, 0, KA_ROWS_T,
                                  KA_LOGITS_ANY, fold))
            return -1;
        if (skinny)
            skinny_push(w, n, x, wt, ANULL(), 0, bias, y, N, K, 0, -1, 0, 0);
        return 0;
    }
    /* gated: GEMM into scratch [T, N] then act(gate) * up; or one GEMV with the epilogue */
    int64_t I = N / 2;
    if (need8(w, n, I, "the gated width"))
        return -1;
    ka_arg tmp = A(KA_ARG_SCRATCH, scratch_at(w, (int64_t)w->c->max_tokens * N * w->esize));
    ka_step s = gemm_step(w, n, x, wt, bias, tmp, N, K, K, N, 0, KA_ROWS_T);
    s.size = gemm_size;
    push_gemm(w, gemm_which, &s, skinny);
    int ka = kern(w, "act_mul", ELEM_THREADS, 0, "const kiln_step st, const DT *gu, DT *out",
                  "kiln::act_mul<DT, %lld, %d, %d>(st, gu, out)", (long long)I, n->epi_act,
                  ELEM_THREADS);
    s = kstep(ka, n->name, elems(I), G1(), G1());
    s.size = gemm_size;
    add_arg(&s, A(KA_ARG_STEP, 0));
    add_arg(&s, tmp);
    add_arg(&s, y);
    push_gemm(w, gemm_which, &s, skinny);
    if (qb < 0 && push_gemv16(w, BOTH, n, x, wt, bias, y, N, K, 1, n->epi_act, 0, KA_ROWS_T,
                              KA_LOGITS_ANY, fold))
        return -1;
    if (skinny)
        skinny_push(w, n, x, wt, ANULL(), 0, bias, y, N, K, 1, n->epi_act, 0, 0);
    return 0;
}

/* Flash attention for prefill; for decode, split-KV attention whose last CTA per (sequence,
 * head group) merges the splits, one launch (templates/attention.cuh gives the launch rules used
 * here). A context of up to DECODE_SOLO keys is one CTA per head group that writes its output
 * with no merge (measured: tests/gpu/RESULTS.md, seventeenth session: the Llama-3 8B batch-1
 * step 0.886 -> 0.910 of its roofline at 33..160 keys against splits of 32); longer ones take
 * up to DECODE_SPLITS CTAs of at least DECODE_SPLIT_MIN keys (a first choice, not tuned). On
 * the 16-bit cache a CTA has DECODE_THREADS_WIDE threads where that many warps fit 48 KB with
 * the head group DECODE_THREADS' take (head dims up to 64: tests/gpu/RESULTS.md, nineteenth
 * session, the Llama-3.2 1B batch-1 step 0.715 -> 0.723; at 128 even one head does not fit),
 * else DECODE_THREADS; the FP8 cache keeps DECODE_THREADS (wider not measured). Past gemv_max
 * rows a step has DECODE_SPLITS_BATCH splits: the batch fills the GPU with CTAs, and a short
 * context's CTAs past the first exit at once, but each still costs its launch and a read of the
 * step's arrays (8B batch 64, 33..160 keys: 8,192 CTAs for 512 that work; tests/gpu/RESULTS.md,
 * twenty-fifth session). A batch-invariant artifact keeps DECODE_SPLITS at every batch: a long
 * context's result must not depend on the rows beside it. The batch step's instance is compiled
 * for the registers of DECODE_SM_THREADS an SM (__launch_bounds__' minimum CTAs): the Llama-3 8B
 * instance took 141 registers, 3 CTAs of 128 threads an SM, 396 slots for batch 64's 512 working
 * CTAs; held to 128 (48 bytes spilled) they take one wave: batch 64 0.677 -> 0.689
 * (tests/gpu/RESULTS.md, twenty-sixth session). The one-row and few-row steps keep their
 * registers: the same bound there cost batch 1 ~1%. */
#define DECODE_SPLITS 16
#define DECODE_SPLITS_BATCH 4
#define DECODE_SPLIT_MIN 32
#define DECODE_SOLO 256
#define DECODE_THREADS 128
#define DECODE_THREADS_WIDE 256
#define DECODE_SM_THREADS 512

/* The cache pointers' type in a kernel's parameters, and the KV8 template argument that goes
 * with it (none for the 16-bit cache: its calls are as they were before --kv-dtype) */
#define KV_T(w) ((w)->c->kv_fp8 ? "unsigned char" : "DT")
#define KV8_ARG(w) ((w)->c->kv_fp8 ? ", 1" : "")

/* The arguments of attn_prefill (ws NULL) and attn_decode (ws its split records; the arrival
 * counters at scratch offset 0), as attention_steps' parameter lists declare them. */
static void attn_args(ka_step *s, const kg_attn *at, ka_arg q, ka_arg ws, ka_arg out,
                      ka_arg slopes, int h0, int NH)
{
    add_arg(s, A(KA_ARG_STEP, 0));
    add_arg(s, q);
    add_arg(s, A(KA_ARG_KV_K, at->layer));
    add_arg(s, A(KA_ARG_KV_V, at->layer));
    if (ws.kind != KA_ARG_NULL) {
        add_arg(s, ws);
        add_arg(s, A(KA_ARG_SCRATCH, 0));
    }
    add_arg(s, out);
    add_arg(s, AF(at->scale));
    add_arg(s, AF(at->softcap));
    add_arg(s, slopes);
    if (h0)
        add_arg(s, A(KA_ARG_RANK, NH));
}

/* HD: the head_dim the kernels run at (the model's, or it padded to a multiple of 8: q, the
 * KV cache and out are then rope_kv's padded rows). With --kv-dtype fp8 (kc.kv_fp8) both
 * kernels read the FP8 cache (KV8: templates/attention.cuh). */
static int attention_steps(lw *w, const kg_node *n, int HD, ka_arg q, ka_arg q1, ka_arg out,
                           ka_arg slopes)
{
    const kg_attn *at = &n->attn;
    int NH = at->n_heads, NKV = at->n_kv_heads;
    int W = at->window, softcap = at->softcap > 0;
    int bn = KILN_ATTN_BN(HD);
    int smem = (int)KILN_ATTN_PREFILL_SMEM(KILN_ATTN_BM, bn, HD, (int)w->esize, w->c->kv_fp8);
    /* ALiBi of a sharded graph: the table holds every head's slope and the rank's heads start
     * at head0 = rank * NH, a launch argument (the kernels are the same on every rank) */
    int h0 = at->alibi && at->alibi_heads > 0;
    const char *h0_param = h0 ? ", int head0" : "", *h0_add = h0 ? " + head0" : "";
    char params[320], call[320];
    snprintf(params, sizeof params,
             "const kiln_step st, const DT *q, const %s *k_cache, const %s *v_cache, DT *out, "
             "float scale, float softcap, const float *alibi_slopes%s",
             KV_T(w), KV_T(w), h0_param);
    snprintf(call, sizeof call,
             "kiln::attn_prefill<DT, %d, %d, %d, %d, %d, %d, %d, %d, %d%s>(st, q, k_cache, "
             "v_cache, out, scale, softcap, alibi_slopes%s)",
             NH, NKV, HD, at->causal, W, at->alibi, softcap, KILN_ATTN_BM, bn, KV8_ARG(w), h0_add);
    int kp = kern(w, "attn_prefill", 2 * KILN_ATTN_BM, smem, params, "%s", call);
    w->L->inst_min_ctas[kp] = KILN_ATTN_PREFILL_MIN_CTAS(HD, KILN_ATTN_BM);
    /* grid (ceil(T / BM) + n_seqs, NH, 1) */
    ka_step s =
        kstep(kp, n->name, G(1, KILN_ATTN_BM, 0, 0, KILN_ATTN_BM), G(0, 0, 0, NH, 1), G1());
    attn_args(&s, at, q, ANULL(), out, slopes, h0, NH);
    push(w, PRE, &s);

    /* decode: query heads per CTA sharing one kv head, as many as fit 48 KB (attn_decode's
     * shared memory: kernels/kiln_attn.h, which also says when it runs on the tensor cores) */
    int G_ = NH / NKV, hpc = 1;
    for (int h = G_; h >= 1; h--)
        if (G_ % h == 0 && KILN_ATTN_DECODE_SMEM(HD, h, DECODE_THREADS / 32, DECODE_SPLITS,
                                                 (int)w->esize, w->c->kv_fp8) <= 48 * 1024) {
            hpc = h;
            break;
        }
    const int threads = !w->c->kv_fp8 && KILN_ATTN_DECODE_SMEM(HD, hpc, DECODE_THREADS_WIDE / 32,
                                                               DECODE_SPLITS, (int)w->esize,
                                                               0) <= 48 * 1024
                            ? DECODE_THREADS_WIDE
                            : DECODE_THREADS;
    ka_arg ws = A(KA_ARG_SCRATCH,
                  scratch_at(w, (int64_t)w->c->max_seqs * NH * DECODE_SPLITS * (HD + 2) * 4));
    assert(NH <= w->attn_heads); /* the counters at scratch offset 0 are [max_seqs, attn_heads] */
    snprintf(params, sizeof params,
             "const kiln_step st, const DT *q, const %s *k_cache, const %s *v_cache, "
             "float *ws, unsigned *cnt, DT *out, float scale, float softcap, "
             "const float *alibi_slopes%s",
             KV_T(w), KV_T(w), h0_param);
    /* the steps: by rows, [1 (q1: the rotation folded into the qkv linear, where q is its
     * one-row scratch)], [up to gemv_max], [past it, DECODE_SPLITS_BATCH splits] */
    int batch = !w->c->batch_invariant;
    for (int v = 0; v < 2 + batch; v++) {
        int nsplit = v == 2 ? DECODE_SPLITS_BATCH : DECODE_SPLITS;
        ka_size size = v == 2              ? KA_SIZE_LARGE
                       : v == 1            ? KA_SIZE_ONE
                       : q1.kind == KA_ARG_NULL ? (batch ? KA_SIZE_SMALL : KA_SIZE_ANY)
                       : batch             ? KA_SIZE_FEW
                                           : KA_SIZE_NOT_ONE;
        if (v == 1 && q1.kind == KA_ARG_NULL)
            continue;
        snprintf(call, sizeof call,
                 "kiln::attn_decode<DT, %d, %d, %d, %d, %d, %d, %d, %d, %d, %d, %d, %d%s>(st, q, "
                 "k_cache, v_cache, ws, cnt, out, scale, softcap, alibi_slopes%s)",
                 NH, NKV, HD, at->causal, W, at->alibi, softcap, nsplit, hpc, threads,
                 DECODE_SPLIT_MIN, DECODE_SOLO, KV8_ARG(w), h0_add);
        int kd = kern(w, "attn_decode", threads, 0, params, "%s", call);
        if (v == 2) /* past gemv_max rows: DECODE_SM_THREADS' registers an SM (above) */
            w->L->inst_min_ctas[kd] = DECODE_SM_THREADS / threads;
        s = kstep(kd, n->name, G(0, 0, 0, nsplit, 1), G(0, 0, 0, NH / hpc, 1),
                  G(0, 1, 0, 0, 1));
        s.size = size;
        attn_args(&s, at, v == 1 ? q1 : q, ws, out, slopes, h0, NH);
        push(w, DEC, &s);
    }
    return 0;
}

/* Routed experts: route, gate+up with the activation, down weighted and summed per token
 * (templates/moe.cuh). The expert gate and up weights are packed as one [E, 2I, H] tensor. A
 * shared expert (Qwen2-MoE, DeepSeek-V2) is an ordinary gated MLP on every token, lowered as the
 * linears are (GEMM + act_mul, or one gated GEMV; then the down GEMM or GEMV) into scratch, scaled
 * in place by sigmoid(x . shared_gate_w) when the op has that gate (moe_shared_gate), and added
 * to the routed sum by moe_down's `add`. */
#define MOE_THREADS 256

/* A constant node concatenating gate and up (same shapes, [..., rows, H]) along their rows:
 * [gate; up], the layout of the gated GEMV and act_mul (and of moe_gate_up per expert), which
 * the packer materialises. Returns its id; the node array may move. */
static int pack_gate_up(lw *w, int id, int gate, int up, const char *suffix)
{
    kgraph *g = w->g;
    const kg_node *gn = &g->nodes[gate];
    kg_node p;
    memset(&p, 0, sizeof p);
    p.op = KG_CONCAT;
    p.is_const = 1;
    p.n_in = 2;
    p.in[0] = gate;
    p.in[1] = up;
    p.ndim = gn->ndim;
    p.dim = gn->ndim - 2;
    for (int d = 0; d < gn->ndim; d++)
        p.shape[d] = gn->shape[d] * (d == p.dim ? 2 : 1);
    p.dtype = gn->dtype;
    p.epi_act = p.fused_into = p.view_of = -1;
    p.buf = -1;
    char *nm = xasprintf("%s.%s", g->nodes[id].name, suffix);
    p.name = nm;
    p.spec_file = g->nodes[id].spec_file;
    p.spec_line = g->nodes[id].spec_line;
    int r = graph_append(g, &p);
    free(nm);
    return r;
}

/* The shared expert of MOE node `id` on its input x, into a scratch [T, H] returned in `sum`. */
static int low_moe_shared(lw *w, int id, ka_arg x, ka_arg *sum)
{
    int gu = pack_gate_up(w, id, w->g->nodes[id].in[KG_MOE_SH_GATE],
                          w->g->nodes[id].in[KG_MOE_SH_UP], "shared_gate_up");
    const kg_node *n = &w->g->nodes[id];
    const kg_moe *mo = &n->moe;
    int64_t H = n->shape[1], I2 = w->g->nodes[n->in[KG_MOE_SH_GATE]].shape[0];
    if (need8(w, n, I2, "the shared expert's width"))
        return -1;
    int64_t T = w->c->max_tokens;
    ka_arg gu_out = A(KA_ARG_SCRATCH, scratch_at(w, T * 2 * I2 * w->esize));
    ka_arg h = A(KA_ARG_SCRATCH, scratch_at(w, T * I2 * w->esize));
    *sum = A(KA_ARG_SCRATCH, scratch_at(w, T * H * w->esize));
    /* act(x . Wg) * (x . Wu): a GEMM then act_mul, or one gated GEMV */
    ka_step s = gemm_step(w, n, x, AW(w, gu), ANULL(), gu_out, 2 * I2, H, H, 2 * I2, 0, KA_ROWS_T);
    push_sized(w, BOTH, &s);
    int ka = kern(w, "act_mul", ELEM_THREADS, 0, "const kiln_step st, const DT *gu, DT *out",
                  "kiln::act_mul<DT, %lld, %d, %d>(st, gu, out)", (long long)I2, mo->act,
                  ELEM_THREADS);
    s = kstep(ka, n->name, elems(I2), G1(), G1());
    s.size = KA_SIZE_LARGE;
    add_arg(&s, A(KA_ARG_STEP, 0));
    add_arg(&s, gu_out);
    add_arg(&s, h);
    push_sized(w, BOTH, &s);
    if (push_gemv16(w, BOTH, n, x, AW(w, gu), ANULL(), h, 2 * I2, H, 1, mo->act, 0, KA_ROWS_T,
                    KA_LOGITS_ANY, -1))
        return -1;
    /* . Wd */
    ka_arg down = AW(w, n->in[KG_MOE_SH_DOWN]);
    s = gemm_step(w, n, h, down, ANULL(), *sum, H, I2, I2, H, 0, KA_ROWS_T);
    push_sized(w, BOTH, &s);
    if (push_gemv16(w, BOTH, n, h, down, ANULL(), *sum, H, I2, 0, -1, 0, KA_ROWS_T,
                    KA_LOGITS_ANY, -1))
        return -1;
    if (!mo->shared_gate)
        return 0;
    int kg = kern(w, "moe_shared_gate", MOE_THREADS, 0,
                  "const kiln_step st, const DT *x, const DT *gate_w, const DT *y, DT *out",
                  "kiln::moe_shared_gate<DT, %lld, %d>(st, x, gate_w, y, out)", (long long)H,
                  MOE_THREADS);
    s = kstep(kg, n->name, G(1, 0, 0, 0, 1), G1(), G1());
    add_arg(&s, A(KA_ARG_STEP, 0));
    add_arg(&s, x);
    add_arg(&s, AW(w, n->in[KG_MOE_SH_GATE_W]));
    add_arg(&s, *sum);
    add_arg(&s, *sum);
    push(w, BOTH, &s);
    return 0;
}

static int low_moe(lw *w, int id)
{
    kgraph *g = w->g;
    const kg_node *n = &g->nodes[id];
    const kg_moe *mo = &n->moe;
    int64_t H = n->shape[1], E = mo->n_experts, I = g->nodes[n->in[KG_MOE_GATE]].shape[1];
    if (need8(w, n, H, "the hidden width") || need8(w, n, I, "the expert width"))
        return -1;
    ka_arg x, out, shared = ANULL();
    if (dense_arg(w, n->in[KG_MOE_X], &x) || dense_arg(w, id, &out))
        return -1;
    if (mo->has_shared && low_moe_shared(w, id, x, &shared))
        return -1;
    /* [E, 2I, H] = concat(gate, up) along dim 1 */
    int gu = pack_gate_up(w, id, g->nodes[id].in[KG_MOE_GATE], g->nodes[id].in[KG_MOE_UP],
                          "gate_up");
    n = &g->nodes[id]; /* the node array may have moved */
    mo = &n->moe;
    int K = mo->top_k;
    int64_t T = w->c->max_tokens;
    ka_arg idx = A(KA_ARG_SCRATCH, scratch_at(w, T * K * 4));
    ka_arg wts = A(KA_ARG_SCRATCH, scratch_at(w, T * K * 4));
    ka_arg hb = A(KA_ARG_SCRATCH, scratch_at(w, T * K * I * w->esize));
    int sm = mo->routing == KG_ROUTE_SPARSEMIXER; /* graph_moe checked K == 2 */
    int kr = sm ? kern(w, "moe_route_sparsemixer", MOE_THREADS, 0,
                       "const kiln_step st, const DT *x, const DT *router, int *idx, float *wts, "
                       "float jitter_eps",
                       "kiln::moe_route_sparsemixer<DT, %lld, %lld, %d>(st, x, router, idx, wts, "
                       "jitter_eps)",
                       (long long)E, (long long)H, MOE_THREADS)
                : kern(w, "moe_route", MOE_THREADS, 0,
                       "const kiln_step st, const DT *x, const DT *router, int *idx, float *wts",
                       "kiln::moe_route<DT, %lld, %lld, %d, %s, %d>(st, x, router, idx, wts)",
                       (long long)E, (long long)H, K, mo->renormalize ? "true" : "false",
                       MOE_THREADS);
    ka_step s = kstep(kr, n->name, G(1, 0, 0, 0, 1), G1(), G1());
    add_arg(&s, A(KA_ARG_STEP, 0));
    add_arg(&s, x);
    add_arg(&s, AW(w, n->in[KG_MOE_ROUTER]));
    add_arg(&s, idx);
    add_arg(&s, wts);
    if (sm)
        add_arg(&s, AF(mo->jitter_eps));
    push(w, BOTH, &s);
    int warps = MOE_THREADS / 32;
    int kg = kern(w, "moe_gate_up", MOE_THREADS, 0,
                  "const kiln_step st, const DT *x, const int *idx, const DT *gate_up, DT *hbuf",
                  "kiln::moe_gate_up<DT, %lld, %lld, %lld, %d, %d, %d>(st, x, idx, gate_up, hbuf)",
                  (long long)E, (long long)H, (long long)I, K, mo->act, MOE_THREADS);
    s = kstep(kg, n->name, G(K, 0, 0, 0, 1), G(0, 0, 0, (int)I, 2 * warps), G1());
    add_arg(&s, A(KA_ARG_STEP, 0));
    add_arg(&s, x);
    add_arg(&s, idx);
    add_arg(&s, AW(w, gu));
    add_arg(&s, hb);
    push(w, BOTH, &s);
    int kd = kern(w, "moe_down", MOE_THREADS, 0,
                  "const kiln_step st, const DT *hbuf, const int *idx, const float *wts, "
                  "const DT *down, DT *out, const DT *add",
                  "kiln::moe_down<DT, %lld, %lld, %lld, %d, %d>(st, hbuf, idx, wts, down, out, add)",
                  (long long)E, (long long)H, (long long)I, K, MOE_THREADS);
    s = kstep(kd, n->name, G(1, 0, 0, 0, 1), G(0, 0, 0, (int)H, 4 * warps), G1());
    add_arg(&s, A(KA_ARG_STEP, 0));
    add_arg(&s, hb);
    add_arg(&s, idx);
    add_arg(&s, wts);
    add_arg(&s, AW(w, n->in[KG_MOE_DOWN]));
    add_arg(&s, out);
    add_arg(&s, shared);
    push(w, BOTH, &s);
    return 0;
}

/* Registers KV-cache slot `layer` of the manifest with its cache shape (artifact.h's ka_layer). */
static void kv_layer(lw *w, int layer, ka_layer kl)
{
    ka_manifest *m = w->m;
    if (layer >= m->n_layers) {
        m->layers = xrealloc(m->layers, sizeof(ka_layer) * (size_t)(layer + 1));
        for (int l = m->n_layers; l <= layer; l++)
            m->layers[l] = (ka_layer){0, 0, 0};
        m->n_layers = layer + 1;
    }
    m->layers[layer] = kl;
}

/* The q and k rotations fused into the attention, and the attention itself. A head_dim HD that
 * is not a multiple of 8 runs padded to HDP: rope_kv writes q and the KV cache with zeros in each
 * head's dims [HD, HDP) (q.k and p.v are unchanged), the attention kernels run at HDP into
 * scratch, and unpad_heads drops the padding into the node's [T, NH*HD] rows. */
static int low_attention(lw *w, int id)
{
    const kgraph *g = w->g;
    const kg_node *n = &g->nodes[id];
    const kg_attn *at = &n->attn;
    int NH = at->n_heads, NKV = at->n_kv_heads, HD = at->head_dim, HDP = (HD + 7) / 8 * 8;
    int qn = n->in[0], kn = n->in[1], vn = n->in[2];
    const kg_node *qr = &g->nodes[qn], *kr = &g->nodes[kn];
    int q_roped = qr->op == KG_ROPE && qr->fused_into == id;
    int k_roped = kr->op == KG_ROPE && kr->fused_into == id;
    if (q_roped != k_roped)
        return kerr_add(w->err, "%s: rotary embedding on q but not k (or the reverse) is not "
                                "supported by the GPU code generator",
                        n->name);
    int qs = q_roped ? qr->in[0] : qn, ks = k_roped ? kr->in[0] : kn;
    ka_arg aq, ak, av;
    int64_t sq, sk, sv;
    if (act_arg(w, qs, &aq, &sq) || act_arg(w, ks, &ak, &sk) || act_arg(w, vn, &av, &sv))
        return -1;
    /* q, k and v are column blocks of one fused qkv row (three equal strides) or, after per-head
     * q/k norms, buffers of their own: the kernel takes each one's row stride */
    /* the rotated (or copied) queries */
    ka_arg qout;
    if (q_roped && HDP == HD) {
        if (dense_arg(w, qn, &qout))
            return -1;
    } else {
        qout = A(KA_ARG_SCRATCH,
                 scratch_at(w, (int64_t)w->c->max_tokens * NH * HDP * w->esize));
    }
    rope_args ra = {0, 0, 0, ANULL(), 1, 0, 0, 0};
    if (q_roped && rope_args_of(w, n, &ra))
        return -1;
    char rparams[400];
    snprintf(rparams, sizeof rparams,
             "const kiln_step st, const DT *q, const DT *k, const DT *v, int q_stride, "
             "int k_stride, int v_stride, DT *q_out, %s *k_cache, %s *v_cache, "
             "const float *inv_freq, float rope_scale, float dyn_base, float dyn_factor, "
             "int dyn_max_pos",
             KV_T(w), KV_T(w));
    int kr_k = kern(w, "rope_kv", ATTN_THREADS, 0, rparams,
                    "kiln::rope_kv<DT, %d, %d, %d, %d, %d, %d, %d%s>(st, q, k, v, q_stride, "
                    "k_stride, v_stride, q_out, k_cache, v_cache, inv_freq, rope_scale, "
                    "dyn_base, dyn_factor, dyn_max_pos)",
                    NH, NKV, HD, ra.rot, ra.il, ra.dyn, ATTN_THREADS, KV8_ARG(w));
    ka_step s = kstep(kr_k, n->name, G(1, 0, 0, 0, 1), G1(), G1());
    add_arg(&s, A(KA_ARG_STEP, 0));
    add_arg(&s, aq);
    add_arg(&s, ak);
    add_arg(&s, av);
    add_arg(&s, A(KA_ARG_I32, sq));
    add_arg(&s, A(KA_ARG_I32, sk));
    add_arg(&s, A(KA_ARG_I32, sv));
    add_arg(&s, qout);
    rope_cache_args(&s, &ra, at->layer);
    /* folded (rope_fold): a decode step of one row has its qkv linear's gemv_stream_rope do
     * this, its q into the one-row scratch at w->rope_q, which the attention then reads */
    const int folded = id < w->nrope && w->rope[id] >= 0;
    push(w, folded ? PRE : BOTH, &s);
    if (folded) {
        s.size = KA_SIZE_NOT_ONE;
        push(w, DEC, &s);
    }
    const ka_arg q1 = folded ? A(KA_ARG_SCRATCH, w->rope_q) : ANULL();

    ka_arg out;
    if (dense_arg(w, id, &out))
        return -1;
    ka_arg slopes = ANULL();
    if (at->alibi) { /* sharded: the slopes of all alibi_heads heads, this rank's from head0 */
        int AH = at->alibi_heads > 0 ? at->alibi_heads : NH;
        float *sl = xmalloc(sizeof(float) * (size_t)AH);
        posenc_alibi_slopes(AH, sl);
        char nm[64];
        snprintf(nm, sizeof nm, "alibi.%d", AH);
        slopes = A(KA_ARG_CONST, add_const(w, nm, sl, AH));
        free(sl);
    }
    kv_layer(w, at->layer, (ka_layer){NKV, HDP, HDP}); /* the cache holds padded rows */
    if (HDP == HD)
        return attention_steps(w, n, HD, qout, q1, out, slopes);
    ka_arg padded =
        A(KA_ARG_SCRATCH, scratch_at(w, (int64_t)w->c->max_tokens * NH * HDP * w->esize));
    if (attention_steps(w, n, HDP, qout, ANULL(), padded, slopes))
        return -1;
    int ku = kern(w, "unpad_heads", ELEM_THREADS, 0, "const kiln_step st, const DT *x, DT *out",
                  "kiln::unpad_heads<DT, %d, %d, %d, %d>(st, x, out)", NH, HD, HDP, ELEM_THREADS);
    ka_step s2 = kstep(ku, n->name, G(NH * HD, 0, 0, 0, ELEM_THREADS), G1(), G1());
    add_arg(&s2, A(KA_ARG_STEP, 0));
    add_arg(&s2, padded);
    add_arg(&s2, out);
    push(w, BOTH, &s2);
    return 0;
}

/* Multi-head latent attention (templates/mla.cuh): mla_cache writes each token's [latent |
 * k_pe] row into the layer's K cache (rows of RANK + DR, n_kv 1, no V cache), then mla_attn
 * attends per (query row, head) in the absorbed form with kv_b_proj as a weight. The rotations
 * of q_pe and k_pe that fuse marked fused_into this node are done inside the two kernels (ROT
 * 1: DeepSeek's interleaved pairs, 2: halves) with a static inv_freq table and yarn's
 * attention factor, as posenc gives them to the CPU reference; the same kernels run prefill
 * and decode. */
#define MLA_CACHE_THREADS 128
#define MLA_ATTN_THREADS 256 /* halved while mla_attn's static shared memory is over 48 KB */

/* mla_attn's static shared memory in bytes (floats qn[DN], qp[DR], q_lat and o_lat [RANK],
 * w_m and w_l [NW], w_acc [NW][RANK], cs and sn [DR/2]) */
static int64_t mla_attn_smem(int DN, int DR, int RK, int threads)
{
    int64_t nw = threads / 32;
    return 4 * (DN + 2 * (int64_t)DR + (2 + nw) * RK + 2 * nw);
}

static int low_mla(lw *w, int id)
{
    const kgraph *g = w->g;
    const kg_node *n = &g->nodes[id];
    const kg_mla *ml = &n->mla;
    int NH = ml->n_heads, DN = ml->nope_dim, DR = ml->rope_dim, DV = ml->v_dim, RK = ml->rank;
    const kg_node *qr = &g->nodes[n->in[KG_MLA_Q_PE]], *kr = &g->nodes[n->in[KG_MLA_K_PE]];
    int q_roped = qr->op == KG_ROPE && qr->fused_into == id;
    int k_roped = kr->op == KG_ROPE && kr->fused_into == id;
    if (w->c->kv_fp8) /* kilnc refuses it before (kv8_refusal); other callers get this */
        return kerr_add(w->err, "%s: --kv-dtype fp8 is not supported for multi-head latent "
                                "attention (its cache holds latents, not K and V)",
                        n->name);
    if (q_roped != k_roped)
        return kerr_add(w->err, "%s: rotary embedding on q_pe but not k_pe (or the reverse) is "
                                "not supported by the GPU code generator",
                        n->name);
    if (DR % 2)
        return kerr_add(w->err, "%s: rope_dim %d is odd; the GPU kernels rotate pairs", n->name,
                        DR);
    int rot = 0;
    ka_arg inv = ANULL();
    double rscale = 1;
    if (q_roped) {
        const kg_rope *r = &qr->rope;
        if (memcmp(&qr->rope, &kr->rope, sizeof(kg_rope)) != 0)
            return kerr_add(w->err, "%s: q_pe and k_pe rotate differently; not supported on the "
                                    "GPU",
                            n->name);
        if (r->rot_dim != DR || r->head_dim != DR)
            return kerr_add(w->err, "%s: the rotary embedding of q_pe and k_pe rotates %d of %d "
                                    "dims per head; the GPU kernels rotate all rope_dim %d",
                            n->name, r->rot_dim, r->head_dim, DR);
        if (r->p.type == ROPE_DYNAMIC || r->p.type == ROPE_LONGROPE)
            return kerr_add(w->err, "%s: rope type %s with multi-head latent attention is not "
                                    "supported on the GPU (its kernels take a static table)",
                            n->name, rope_type_name(r->p.type));
        rot = r->interleaved ? 1 : 2;
        float *tab = xmalloc(sizeof(float) * (size_t)(DR / 2));
        posenc_rope_inv_freq(r, 0, tab);
        char nm[96];
        snprintf(nm, sizeof nm, "rope.%s.%d", rope_type_name(r->p.type), DR);
        inv = A(KA_ARG_CONST, add_const(w, nm, tab, DR / 2));
        free(tab);
        rscale = posenc_rope_scale(r, 0);
    }
    int qp_id = q_roped ? qr->in[0] : n->in[KG_MLA_Q_PE];
    int kp_id = k_roped ? kr->in[0] : n->in[KG_MLA_K_PE];
    int kvb = n->in[KG_MLA_KV_B];
    if (!g->nodes[kvb].is_const)
        return kerr_add(w->err, "%s: kv_b is an activation; the GPU kernels read it as a weight",
                        n->name);
    ka_arg aqn, aqp, alat, akp, out;
    int64_t sqn, sqp, slat, skp;
    if (act_arg(w, n->in[KG_MLA_Q_NOPE], &aqn, &sqn) || act_arg(w, qp_id, &aqp, &sqp) ||
        act_arg(w, n->in[KG_MLA_LATENT], &alat, &slat) || act_arg(w, kp_id, &akp, &skp) ||
        dense_arg(w, id, &out))
        return -1;

    int kc_ = kern(w, "mla_cache", MLA_CACHE_THREADS, 0,
                   "const kiln_step st, const DT *latent, const DT *k_pe, int latent_stride, "
                   "int kpe_stride, DT *cache, const float *inv_freq, float rope_scale",
                   "kiln::mla_cache<DT, %d, %d, %d, %d>(st, latent, k_pe, latent_stride, "
                   "kpe_stride, cache, inv_freq, rope_scale)",
                   RK, DR, rot, MLA_CACHE_THREADS);
    ka_step s = kstep(kc_, n->name, G(1, 0, 0, 0, 1), G1(), G1()); /* grid (T) */
    add_arg(&s, A(KA_ARG_STEP, 0));
    add_arg(&s, alat);
    add_arg(&s, akp);
    add_arg(&s, A(KA_ARG_I32, slat));
    add_arg(&s, A(KA_ARG_I32, skp));
    add_arg(&s, A(KA_ARG_KV_K, ml->layer));
    add_arg(&s, inv);
    add_arg(&s, AF(rscale));
    push(w, BOTH, &s);

    int threads = MLA_ATTN_THREADS;
    while (threads > 32 && mla_attn_smem(DN, DR, RK, threads) > 48 * 1024)
        threads /= 2;
    if (mla_attn_smem(DN, DR, RK, threads) > 48 * 1024)
        return kerr_add(w->err, "%s: kv_lora_rank %d with nope_dim %d and rope_dim %d needs %lld "
                                "bytes of mla_attn's static shared memory, over 48 KB even with "
                                "one warp",
                        n->name, RK, DN, DR, (long long)mla_attn_smem(DN, DR, RK, threads));
    int ka_ = kern(w, "mla_attn", threads, 0,
                   "const kiln_step st, const DT *q_nope, const DT *q_pe, int qn_row, "
                   "int qn_head, int qp_row, int qp_head, const DT *cache, const DT *kv_b, "
                   "DT *out, float scale, const float *inv_freq, float rope_scale",
                   "kiln::mla_attn<DT, %d, %d, %d, %d, %d, %d, %d>(st, q_nope, q_pe, qn_row, "
                   "qn_head, qp_row, qp_head, cache, kv_b, out, scale, inv_freq, rope_scale)",
                   NH, DN, DR, DV, RK, rot, threads);
    s = kstep(ka_, n->name, G(1, 0, 0, 0, 1), G(0, 0, 0, NH, 1), G1()); /* grid (T, NH) */
    add_arg(&s, A(KA_ARG_STEP, 0));
    add_arg(&s, aqn);
    add_arg(&s, aqp);
    add_arg(&s, A(KA_ARG_I32, sqn));
    add_arg(&s, A(KA_ARG_I32, DN));
    add_arg(&s, A(KA_ARG_I32, sqp));
    add_arg(&s, A(KA_ARG_I32, DR));
    add_arg(&s, A(KA_ARG_KV_K, ml->layer));
    add_arg(&s, AW(w, kvb));
    add_arg(&s, out);
    add_arg(&s, AF(ml->scale));
    add_arg(&s, inv);
    add_arg(&s, AF(rscale));
    push(w, BOTH, &s);
    kv_layer(w, ml->layer, (ka_layer){1, RK + DR, 0}); /* [latent | k_pe] rows, no V cache */
    return 0;
}

static int low_elementwise(lw *w, int id)
{
    const kgraph *g = w->g;
    const kg_node *n = &g->nodes[id];
    int64_t W = row_width(n);
    if (need8(w, n, W, "the row width"))
        return -1;
    ka_arg x, out;
    if (dense_arg(w, n->in[0], &x) || dense_arg(w, id, &out))
        return -1;
    int k;
    ka_step s;
    switch (n->op) {
    case KG_SILU:
    case KG_GELU:
    case KG_GELU_TANH:
    case KG_RELU: {
        int act = n->op == KG_SILU ? 0 : n->op == KG_GELU ? 1 : n->op == KG_GELU_TANH ? 2 : 3;
        k = kern(w, "unary", ELEM_THREADS, 0, "const kiln_step st, const DT *x, DT *out",
                 "kiln::unary<DT, %lld, %d, %d>(st, x, out)", (long long)W, act, ELEM_THREADS);
        s = kstep(k, n->name, elems(W), G1(), G1());
        add_arg(&s, A(KA_ARG_STEP, 0));
        add_arg(&s, x);
        add_arg(&s, out);
        break;
    }
    case KG_ADD:
    case KG_MUL: {
        int bc = g->nodes[n->in[1]].is_const;
        ka_arg b;
        if (bc)
            b = AW(w, n->in[1]);
        else if (dense_arg(w, n->in[1], &b))
            return -1;
        k = kern(w, "binary", ELEM_THREADS, 0, "const kiln_step st, const DT *a, const DT *b, DT *out",
                 "kiln::binary<DT, %lld, %d, %d, %d>(st, a, b, out)", (long long)W,
                 n->op == KG_MUL, bc, ELEM_THREADS);
        s = kstep(k, n->name, elems(W), G1(), G1());
        add_arg(&s, A(KA_ARG_STEP, 0));
        add_arg(&s, x);
        add_arg(&s, b);
        add_arg(&s, out);
        break;
    }
    case KG_SCALE:
        k = kern(w, "scale", ELEM_THREADS, 0, "const kiln_step st, const DT *x, DT *out, float s",
                 "kiln::scale<DT, %lld, %d>(st, x, out, s)", (long long)W, ELEM_THREADS);
        s = kstep(k, n->name, elems(W), G1(), G1());
        add_arg(&s, A(KA_ARG_STEP, 0));
        add_arg(&s, x);
        add_arg(&s, out);
        add_arg(&s, AF(n->scalar));
        break;
    default:
        return kerr_add(w->err, "%s: op %s is not lowered", n->name, kg_op_name(n->op));
    }
    push(w, BOTH, &s);
    return 0;
}

/* POOL n's rows, one per sequence, into `out` (float [n_seqs, H]). */
static int pool_step(lw *w, const kg_node *n, ka_arg out)
{
    int64_t H = n->shape[1];
    ka_arg x;
    if (need8(w, n, H, "the pooled width") || dense_arg(w, n->in[0], &x))
        return -1;
    int th = row_threads(H);
    int k = kern(w, "pool", th, 0, "const kiln_step st, const DT *x, float *out",
                 "kiln::pool<DT, %lld, %d, %d, %d>(st, x, out)", (long long)H, n->pool_mode,
                 n->pool_normalize, th);
    ka_step s = kstep(k, n->name, G(0, 1, 0, 0, 1), G1(), G1());
    add_arg(&s, A(KA_ARG_STEP, 0));
    add_arg(&s, x);
    add_arg(&s, out);
    push(w, BOTH, &s);
    return 0;
}

/* An embedding model's output: the pooled rows in the output buffer. A classifier's POOL is
 * lowered with its SCORE (low_score). */
static int low_pool(lw *w, int id)
{
    const kg_node *n = &w->g->nodes[id];
    if (w->g->output != id) {
        assert(w->g->nodes[w->g->output].op == KG_SCORE &&
               w->g->nodes[w->g->output].in[KG_SCORE_X] == id);
        return 0;
    }
    if (pool_step(w, n, A(KA_ARG_OUT, 0)))
        return -1;
    w->m->output_pool = 1;
    w->m->hidden = (int)n->shape[1];
    return 0;
}

#define SCORE_THREADS 256

/* A classifier's output: its POOL into scratch (float [max_seqs, H]), then the score head
 * (templates/elementwise.cuh score: BERT's dense + tanh pooler when there is one, then the
 * [labels, H] linear), one block per sequence, into the output buffer: float [n_seqs, labels].
 * The head is a few small dot products per sequence; a GEMM would gain nothing. The manifest's
 * hidden is the output's width, the number of labels. */
static int low_score(lw *w, int id)
{
    const kg_node *n = &w->g->nodes[id], *p = &w->g->nodes[n->in[KG_SCORE_X]];
    int64_t H = p->shape[1], L = n->shape[1], rows = w->c->max_seqs;
    int dense = n->in[KG_SCORE_DENSE] >= 0, bias = n->in[KG_SCORE_B] >= 0;
    ka_arg pooled = A(KA_ARG_SCRATCH, scratch_at(w, rows * H * 4));
    ka_arg tmp = dense ? A(KA_ARG_SCRATCH, scratch_at(w, rows * H * 4)) : ANULL();
    if (pool_step(w, p, pooled))
        return -1;
    int k = kern(w, "score", SCORE_THREADS, 0,
                 "const kiln_step st, const float *pooled, const DT *dw, const DT *db, "
                 "const DT *w, const DT *b, float *tmp, float *out",
                 "kiln::score<DT, %lld, %lld, %d, %d, %d>(st, pooled, dw, db, w, b, tmp, out)",
                 (long long)H, (long long)L, dense, bias, SCORE_THREADS);
    ka_step s = kstep(k, n->name, G(0, 1, 0, 0, 1), G1(), G1());
    add_arg(&s, A(KA_ARG_STEP, 0));
    add_arg(&s, pooled);
    add_arg(&s, dense ? AW(w, n->in[KG_SCORE_DENSE]) : ANULL());
    add_arg(&s, dense ? AW(w, n->in[KG_SCORE_DENSE_B]) : ANULL());
    add_arg(&s, AW(w, n->in[KG_SCORE_W]));
    add_arg(&s, bias ? AW(w, n->in[KG_SCORE_B]) : ANULL());
    add_arg(&s, tmp);
    add_arg(&s, A(KA_ARG_OUT, 0));
    push(w, BOTH, &s);
    w->m->output_pool = 1;
    w->m->hidden = (int)L;
    return 0;
}

/* The sum over the ranks (NCCL, out of place: plan_memory gives the sum its own buffer), on
 * activations in the compute dtype. The one-shot peer-to-peer all-reduce kernel goes into the
 * kernel table with the first all-reduce (named k<i>_KILN_P2P_KERNEL, no step launches it): the
 * runtime runs a step with it instead of NCCL where it can (templates/collective.cuh). */
static int low_all_reduce(lw *w, int id)
{
    const kg_node *n = &w->g->nodes[id];
    ka_step s;
    memset(&s, 0, sizeof s);
    s.kind = KA_ALLREDUCE;
    s.label = n->name;
    s.rows = KA_ROWS_T;
    s.n = row_width(n);
    if (w->g->nodes[n->in[0]].op == KG_LOGITS)
        return kerr_add(w->err, "%s: an all-reduce of logits is not supported by the GPU code "
                                "generator (the shard pass gathers a vocabulary-split LM head)",
                        n->name);
    if (dense_arg(w, n->in[0], &s.x) || dense_arg(w, id, &s.y))
        return -1;
    push(w, BOTH, &s);
    kern(w, KILN_P2P_KERNEL, KILN_P2P_THREADS, 0,
         "const DT *x, DT *y, long long count, const kiln_p2p p",
         "kiln::allreduce_p2p<DT, %d>(x, y, count, p)", KILN_P2P_THREADS);
    return 0;
}

static int low_node(lw *w, int id)
{
    const kg_node *n = &w->g->nodes[id];
    if (n->is_const || n->op == KG_INPUT || n->fused_into >= 0 || n->view_of >= 0 ||
        n->op == KG_RESHAPE)
        return 0;
    switch (n->op) {
    case KG_EMBED: return low_embed(w, id);
    case KG_RMS_NORM:
    case KG_LAYER_NORM: return low_norm(w, id);
    case KG_LINEAR:
    case KG_LOGITS: return low_linear(w, id);
    case KG_ATTENTION: return low_attention(w, id);
    case KG_MLA: return low_mla(w, id);
    case KG_MOE: return low_moe(w, id);
    case KG_POOL: return low_pool(w, id);
    case KG_SCORE: return low_score(w, id);
    case KG_ALL_REDUCE: return low_all_reduce(w, id);
    case KG_ALL_GATHER: /* lowered with the logits it gathers (low_linear) */
        if (w->g->output != id || w->g->nodes[w->g->nodes[id].in[0]].op != KG_LOGITS)
            return kerr_add(w->err, "%s: an all-gather of anything but the LM head's logits is "
                                    "not supported by the GPU code generator",
                            w->g->nodes[id].name);
        return 0;
    case KG_ROPE:
        return kerr_add(w->err, "%s: a rotary embedding that does not feed an attention is not "
                                "supported by the GPU code generator",
                        n->name);
    case KG_SLICE:
    case KG_CONCAT:
        return kerr_add(w->err, "%s: %s of activations is not supported by the GPU code "
                                "generator yet (slice or concatenate the weights instead)",
                        n->name, kg_op_name(n->op));
    default: return low_elementwise(w, id);
    }
}

int lower_check_args(const char *params, const ka_step *s, kerr *err)
{
    int np = 0;
    for (const char *p = params; p && *p;) {
        while (*p == ' ')
            p++;
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        char ty[160];
        snprintf(ty, sizeof ty, "%.*s", (int)len, p);
        p = e ? e + 1 : p + len;
        if (np >= s->nargs) {
            np++;
            continue; /* counted below */
        }
        ka_arg_kind k = s->args[np].kind;
        int ok;
        if (strstr(ty, "kiln_step"))
            ok = k == KA_ARG_STEP && !strchr(ty, '*');
        else if (strstr(ty, "kiln::tmap"))
            ok = k == KA_ARG_TMAP && !strchr(ty, '*');
        else if (strchr(ty, '*'))
            ok = k == KA_ARG_BUF || k == KA_ARG_SCRATCH || k == KA_ARG_WEIGHT ||
                 k == KA_ARG_CONST || k == KA_ARG_KV_K || k == KA_ARG_KV_V || k == KA_ARG_NULL ||
                 k == KA_ARG_LOGITS || k == KA_ARG_OUT;
        else if (strstr(ty, "float"))
            ok = k == KA_ARG_F32;
        else if (strstr(ty, "int"))
            ok = k == KA_ARG_I32 || k == KA_ARG_M || k == KA_ARG_RANK;
        else
            ok = 0;
        if (!ok)
            return kerr_add(err, "step '%s': argument %d is %s, which does not make parameter "
                                 "'%s' of its kernel (internal error: lower.c's add_arg and "
                                 "kern disagree)",
                            s->label ? s->label : "", np, ka_arg_kind_name(k), ty);
        np++;
    }
    if (np != s->nargs)
        return kerr_add(err, "step '%s': %d arguments for a kernel of %d parameters (internal "
                             "error: lower.c's add_arg and kern disagree)",
                        s->label ? s->label : "", s->nargs, np);
    return 0;
}

int lower(kc *c, lowered *out, kerr *err)
{
    memset(out, 0, sizeof *out);
    lw w;
    memset(&w, 0, sizeof w);
    w.c = c;
    w.g = c->g;
    w.L = out;
    w.m = &out->m;
    w.err = err;
    w.esize = (int64_t)st_dtype_size(c->act_dtype);
    w.wmap = xmalloc(sizeof(int) * (size_t)c->g->n * 2 + sizeof(int));
    w.wmap8 = xmalloc(sizeof(int) * (size_t)c->g->n * 2 + sizeof(int));
    for (int i = 0; i < c->g->n * 2; i++)
        w.wmap[i] = w.wmap8[i] = -1;
    w.fold = plan_norm_readers(c->g);
    w.nfold = c->g->n;
    w.rope = plan_rope_fold(&w);
    w.nrope = c->g->n;
    ka_manifest *m = w.m;
    m->sample_kernel = -1;
    m->bos = -1;
    /* attn_decode's arrival counters, [max_seqs, most heads] unsigned, outlive a step (each
     * launch leaves them zero for the next): they take the first bytes of scratch, which no
     * node's temporaries overlap, and the engine zeroes scratch once at load */
    for (int i = 0; i < c->g->n; i++)
        if (c->g->nodes[i].op == KG_ATTENTION && c->g->nodes[i].attn.n_heads > w.attn_heads)
            w.attn_heads = c->g->nodes[i].attn.n_heads;
    w.scratch0 = (int64_t)c->max_seqs * w.attn_heads * 4;
    w.scratch0 = (w.scratch0 + 255) / 256 * 256;
    /* the folded rotations' q row (rope_fold): one for every layer, each read by its attention
     * before the next layer's linear writes it */
    int64_t qrow = 0;
    for (int i = 0; i < c->g->n; i++)
        if (w.rope[i] >= 0 && c->g->nodes[i].op == KG_ATTENTION) {
            const kg_attn *at = &c->g->nodes[i].attn;
            if ((int64_t)at->n_heads * at->head_dim > qrow)
                qrow = (int64_t)at->n_heads * at->head_dim;
        }
    w.rope_q = w.scratch0;
    w.scratch0 += (qrow * w.esize + 255) / 256 * 256;
    /* gemm_skinny's and gemm_skinny_int4's arrival counters, [most tiles of a linear] unsigned,
     * likewise after them (gemm90_skinny's: a set for each tile's four consumer warps). The skinny
     * steps are kiln's GEMM for decode steps of 9 to 64 rows (--gemm kiln, where the alternative
     * is a 128-row tile); cuBLASLt's kernels stream the weight faster there (tests/gpu/RESULTS.md,
     * tenth and twenty-seventh sessions). Not with --batch-invariant,
     * whose decode runs the GEMV in fixed groups at every batch; and only where its smallest ring
     * (4 tiles a block, 2 slices) fits a block. */
    w.skinny = c->gemm_kiln && !c->batch_invariant && c->max_tokens > GEMV_MAX &&
               KILN_SKINNY_SMEM(KILN_SKINNY_MAX, 4, 2) <= block_smem(c);
    /* gemm_skinny_int4 for the INT4 linears in every build (no library GEMM reads INT4), where
     * the smallest ring of the largest sz slices (G = 32) fits: for decode steps, where one can
     * have more than GEMV_MAX rows, and for prefill steps of up to skinny_max rows, where one can
     * have more than GEMV_MAX (a dequantising pass over the weight costs more than the product
     * there: tests/gpu/RESULTS.md, thirteenth session) */
    const int int4_skinny = !c->batch_invariant && has_int4(&w) &&
                            KILN_SKINNY4_SMEM(KILN_SKINNY_MAX, 4, 2, 32) <= block_smem(c);
    w.skinny4 = int4_skinny && c->max_seqs > GEMV_MAX;
    w.skinny4p = int4_skinny && c->max_tokens > GEMV_MAX;
    if (w.skinny || w.skinny4 || w.skinny4p) {
        int64_t tiles = 1;
        for (int i = 0; i < c->g->n; i++) {
            const kg_node *n = &c->g->nodes[i];
            if (n->op == KG_LINEAR || n->op == KG_LOGITS) {
                int64_t N = c->g->nodes[n->in[1]].shape[0], t = KILN_GEMV_TILES(N, 0),
                        t90 = 4 * KILN_SKINNY90_TILES(N, 0); /* gemm90_skinny's: a warp's */
                t = t90 > t ? t90 : t;
                tiles = t > tiles ? t : tiles;
            }
        }
        if (w.skinny4) /* a set of counters per row group (a prefill step's: one group) */
            tiles *= skinny4_groups(&w);
        w.skinny_count = w.scratch0;
        w.scratch0 += (tiles * 4 + 255) / 256 * 256;
    }
    if (w.skinny || w.skinny4p) /* gemm_skinny's steps, gemm_skinny_int4's prefill ones (size
                                  * mid); gemm_skinny_int4's decode ones are large */
        m->skinny_max = KILN_SKINNY_MAX;
    int64_t scratch_max = w.scratch0;
    int n0 = c->g->n; /* low_moe may append constant nodes */
    for (int i = 0; i < n0; i++) {
        w.scratch = w.scratch0;
        if (low_node(&w, i)) {
            free(w.wmap);
            free(w.wmap8);
            free(w.fold);
            free(w.rope);
            return -1;
        }
        if (w.scratch > scratch_max)
            scratch_max = w.scratch;
    }
    if (!m->output_pool) {
        int k = kern(&w, "sample", KILN_SAMPLE_THREADS, 0,
                     "const kiln_step st, const float *logits, const kiln_sample *params, "
                     "int *out_ids",
                     "kiln::sample<%d, %d>(st, logits, params, out_ids)", m->vocab,
                     KILN_SAMPLE_THREADS);
        m->sample_kernel = k;
        const kg_node *head = &c->g->nodes[c->g->output];
        if (head->op == KG_ALL_GATHER) /* of the rank's logits */
            head = &c->g->nodes[head->in[0]];
        m->hidden = (int)c->g->nodes[head->in[0]].shape[1];
    }
    m->slab_bytes = c->slab_bytes;
    m->scratch_bytes = scratch_max;
    m->max_tokens = c->max_tokens;
    m->max_seqs = c->max_seqs;
    m->max_seq_len = c->max_seq_len;
    m->gemv_max = GEMV_MAX;
    m->gemm_kiln = c->gemm_kiln;
    m->batch_invariant = c->batch_invariant;
    m->kv_e4m3 = c->kv_fp8;
    /* longrope's switch for the scheduler; none when no sequence can pass it (config.c bounds it
     * to INT32_MAX) */
    int64_t rsw = posenc_rope_switch(c->g);
    m->rope_switch = rsw < c->max_seq_len ? (int)rsw : 0;
    m->dtype = xstrdup(c->act_dtype == ST_F16 ? "f16" : "bf16");
    m->tp = c->g->tp > 1 ? c->g->tp : 1;
    m->shards = xcalloc((size_t)m->tp, sizeof(ka_shard));
    for (int r = 0; r < m->tp; r++)
        m->shards[r].path = xasprintf("shards/rank%d-of-%d.safetensors", r, m->tp);
    free(w.wmap);
    free(w.wmap8);
    free(w.fold);
    free(w.rope);
    for (int pass = 0; pass < 2; pass++) {
        const ka_step *st = pass ? m->decode : m->prefill;
        for (int i = 0, n = pass ? m->ndecode : m->nprefill; i < n; i++)
            if (st[i].kind == KA_KERNEL && lower_check_args(out->inst_params[st[i].kernel], &st[i], err))
                return -1;
    }
    return 0;
}

void lowered_free(lowered *l)
{
    for (int i = 0; i < l->ninst; i++) {
        free(l->inst_call[i]);
        free(l->inst_params[i]);
    }
    free(l->inst_call);
    free(l->inst_params);
    free(l->inst_min_ctas);
    free(l->weight_node);
    ka_manifest_free(&l->m);
    memset(l, 0, sizeof *l);
}

char *codegen_source(const lowered *l, const char *model_name)
{
    size_t cap = 1 << 16, len = 0;
    char *s = xmalloc(cap);
#define OUT(...)                                                                                \
    do {                                                                                        \
        int n_ = snprintf(NULL, 0, __VA_ARGS__);                                                \
        while (len + (size_t)n_ + 1 > cap)                                                      \
            s = xrealloc(s, cap *= 2);                                                          \
        len += (size_t)snprintf(s + len, cap - len, __VA_ARGS__);                               \
    } while (0)
    OUT("// generated by kilnc for %s -- do not edit.\n"
        "// Each kernel below instantiates a template from templates/ with this model's shapes;\n"
        "// the runtime launches them as model.kiln's schedule says.\n\n",
        model_name);
    OUT("#include \"elementwise.cuh\"\n#include \"gemv.cuh\"\n#include \"attention.cuh\"\n"
        "#include \"moe.cuh\"\n#include \"sample.cuh\"\n#include \"collective.cuh\"\n");
    /* mla.cuh only where a model has multi-head latent attention, gemm.cuh or gemm90.cuh only
     * with --gemm kiln, gemv_stream.cuh only where a target is sm_90+: other units stay as they
     * were */
    for (int i = 0; i < l->ninst; i++)
        if (strncmp(l->inst_call[i], "kiln::mla_", 10) == 0) {
            OUT("#include \"mla.cuh\"\n");
            break;
        }
    static const char *const gemms[][2] = {{"kiln::gemm<", "gemm.cuh"},
                                           {"kiln::gemm90<", "gemm90.cuh"},
                                           {"kiln::gemm90_skinny<", "gemm90.cuh"},
                                           {"kiln::gemv_stream<", "gemv_stream.cuh"}};
    for (int g = 0; g < (int)ARRAY_LEN(gemms); g++)
        for (int i = 0; i < l->ninst; i++)
            if (strncmp(l->inst_call[i], gemms[g][0], strlen(gemms[g][0])) == 0) {
                OUT("#include \"%s\"\n", gemms[g][1]);
                break;
            }
    OUT("\n");
    OUT("typedef %s DT;\n\n", strcmp(l->m.dtype, "f16") == 0 ? "kiln::f16" : "kiln::bf16");
    for (int i = 0; i < l->ninst; i++) {
        char lb[32];
        snprintf(lb, sizeof lb, l->inst_min_ctas[i] > 1 ? "%d, %d" : "%d", l->m.kernels[i].block,
                 l->inst_min_ctas[i]);
        OUT("extern \"C\" __global__ void __launch_bounds__(%s) %s(%s)\n{\n    %s;\n}\n\n", lb,
            l->m.kernels[i].name, l->inst_params[i], l->inst_call[i]);
    }
#undef OUT
    return s;
}

static void print_arg(const ka_arg *a, FILE *f)
{
    if (a->kind == KA_ARG_F32)
        fprintf(f, "%g", a->f);
    else if (a->kind == KA_ARG_STEP || a->kind == KA_ARG_NULL || a->kind == KA_ARG_M ||
             a->kind == KA_ARG_LOGITS || a->kind == KA_ARG_OUT)
        fprintf(f, "%s", ka_arg_kind_name(a->kind));
    else
        fprintf(f, "%s:%lld", ka_arg_kind_name(a->kind), (long long)a->i);
}

static void print_steps(const lowered *l, const ka_step *st, int n, FILE *f)
{
    static const char *lg[] = {"", " [last rows]", " [all rows]"};
    for (int i = 0; i < n; i++) {
        const ka_step *s = &st[i];
        fprintf(f, "  %3d %-28s ", i, s->label);
        if (s->kind == KA_GEMM) {
            fprintf(f, "gemm n=%lld k=%lld rows=%s x=", (long long)s->n, (long long)s->k,
                    s->rows == KA_ROWS_S ? "S" : "T");
            print_arg(&s->x, f);
            fprintf(f, " w=");
            print_arg(&s->w, f);
            fprintf(f, " y=");
            print_arg(&s->y, f);
        } else if (s->kind == KA_ALLREDUCE || s->kind == KA_ALLGATHER) {
            fprintf(f, "%s n=%lld %s rows=%s x=", s->kind == KA_ALLREDUCE ? "all_reduce" : "all_gather",
                    (long long)s->n, s->out_f32 ? "f32" : l->m.dtype,
                    s->rows == KA_ROWS_S ? "S" : "T");
            print_arg(&s->x, f);
            fprintf(f, " y=");
            print_arg(&s->y, f);
        } else {
            fprintf(f, "%s(", l->m.kernels[s->kernel].name);
            for (int k = 0; k < s->nargs; k++) {
                if (k)
                    fprintf(f, ", ");
                print_arg(&s->args[k], f);
            }
            fprintf(f, ")");
            if (ka_step_has_tmap(s)) { /* the tensors its maps describe */
                fprintf(f, " maps n=%lld k=%lld ldx=%lld x=", (long long)s->n, (long long)s->k,
                        (long long)s->ldx);
                print_arg(&s->x, f);
                fprintf(f, " w=");
                print_arg(&s->w, f);
            }
        }
        fprintf(f, "%s%s\n", ka_size_label(s->size), lg[s->logits]);
    }
}

void lower_print(const lowered *l, FILE *f)
{
    fprintf(f, "kernels: %d, weights: %d, slab %lld bytes, scratch %lld bytes\n", l->ninst,
            l->m.nweights, (long long)l->m.slab_bytes, (long long)l->m.scratch_bytes);
    fprintf(f, "prefill (%d steps):\n", l->m.nprefill);
    print_steps(l, l->m.prefill, l->m.nprefill, f);
    fprintf(f, "decode (%d steps):\n", l->m.ndecode);
    print_steps(l, l->m.decode, l->m.ndecode, f);
}
