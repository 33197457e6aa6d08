/* pack — see pack.h. A constant node is materialised by recursion over its view ops, for one
 * rank: weights convert straight from the mapped checkpoint, reshapes and leading-dimension
 * concatenations write their parts in place, a rank's SHARD of a weight converts only its part
 * of the checkpoint tensor, and the views that reorder elements (slices of an inner dimension,
 * concatenation along one, transposes, shards of anything but a weight) gather from their
 * materialised input. Ranks are packed on parallel threads, each streaming its own shard file;
 * the progress bar counts the bytes of all of them. */
#include "pack.h"

#include <assert.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hash.h"
#include "quant.h"

/* f stored as dt (BF16, F16 or F32) at dst. */
static void put(float f, st_dtype dt, unsigned char *dst)
{
    if (dt == ST_F32) {
        memcpy(dst, &f, sizeof f);
    } else {
        uint16_t h = dt == ST_F16 ? util_f32_to_f16(f) : util_f32_to_bf16(f);
        memcpy(dst, &h, sizeof h);
    }
}

/* The element at src of dtype dt (BF16, F16 or F32). */
static float get(const unsigned char *src, st_dtype dt)
{
    if (dt == ST_F32) {
        float f;
        memcpy(&f, src, sizeof f);
        return f;
    }
    uint16_t h;
    memcpy(&h, src, sizeof h);
    return dt == ST_BF16 ? util_bf16_to_f32(h) : util_f16_to_f32(h);
}

static uint64_t numel(const kg_node *n) { return graph_numel_const(n); }

/* outer = prod(shape[:dim]), inner = prod(shape[dim+1:]) */
static void around(const kg_node *n, int dim, uint64_t *outer, uint64_t *inner)
{
    *outer = *inner = 1;
    for (int i = 0; i < n->ndim; i++) {
        if (i < dim)
            *outer *= (uint64_t)n->shape[i];
        else if (i > dim)
            *inner *= (uint64_t)n->shape[i];
    }
}

/* Elements [from, from + count) of bound tensor t, converted to dt: a checkpoint's, or quant's
 * fp32 values or codes (U8, decoded by quant_values). */
static void convert(const st_tensor *t, uint64_t from, uint64_t count, st_dtype dt,
                    unsigned char *dst)
{
    size_t es = st_dtype_size(dt), ts = st_dtype_size(t->dtype);
    if (t->dtype == ST_U8) {
        float v[1024];
        for (uint64_t i = 0; i < count; i += 1024) {
            uint64_t n = count - i < 1024 ? count - i : 1024;
            quant_values(t, from + i, n, dt == ST_F32 ? (float *)(dst + i * es) : v);
            for (uint64_t e = 0; dt != ST_F32 && e < n; e++)
                put(v[e], dt, dst + (i + e) * es);
        }
        return;
    }
    if (t->dtype == dt) {
        memcpy(dst, (const unsigned char *)t->data + from * es, count * es);
        return;
    }
    for (uint64_t i = 0; i < count; i++)
        put(get((const unsigned char *)t->data + (from + i) * ts, t->dtype), dt, dst + i * es);
}

static int fill(const kgraph *g, int id, int rank, st_dtype dt, unsigned char *dst, kerr *err);

/* Elements [start, start + len) along `dim` of constant `src`, evaluated whole first. */
static int fill_range(const kgraph *g, int src, int rank, st_dtype dt, int dim, uint64_t start,
                      uint64_t len, unsigned char *dst, kerr *err)
{
    const kg_node *p = &g->nodes[src];
    uint64_t outer, inner, sd = (uint64_t)p->shape[dim];
    size_t es = st_dtype_size(dt);
    around(p, dim, &outer, &inner);
    unsigned char *tmp = malloc(es * (numel(p) ? numel(p) : 1));
    if (!tmp)
        return kerr_add(err, "pack: out of memory for %s", p->name);
    if (fill(g, src, rank, dt, tmp, err)) {
        free(tmp);
        return -1;
    }
    for (uint64_t o = 0; o < outer; o++)
        memcpy(dst + o * len * inner * es, tmp + (o * sd + start) * inner * es, es * len * inner);
    free(tmp);
    return 0;
}

static int fill(const kgraph *g, int id, int rank, st_dtype dt, unsigned char *dst, kerr *err)
{
    const kg_node *n = &g->nodes[id];
    size_t es = st_dtype_size(dt);
    switch (n->op) {
    case KG_WEIGHT: {
        const st_tensor *t = n->bound;
        if (!t)
            return kerr_add(err, "pack: weight '%s' is not bound", n->weight);
        convert(t, 0, t->numel, dt, dst);
        return 0;
    }
    case KG_SHARD: { /* part rank * parts / tp of dimension dim, then pad zeros (graph.h) */
        const kg_node *p = &g->nodes[n->in[0]];
        uint64_t outer, inner;
        around(p, n->dim, &outer, &inner);
        uint64_t w = (uint64_t)n->shape[n->dim], pad = (uint64_t)n->pad, len = w - pad;
        uint64_t sd = (uint64_t)p->shape[n->dim], start = (uint64_t)(rank * n->parts / g->tp) * len;
        assert(rank >= 0 && rank < g->tp && start + len <= sd);
        if (p->op == KG_WEIGHT && p->bound) { /* straight from the checkpoint */
            for (uint64_t o = 0; o < outer; o++) {
                convert(p->bound, (o * sd + start) * inner, len * inner, dt,
                        dst + o * w * inner * es);
                memset(dst + (o * w + len) * inner * es, 0, es * pad * inner);
            }
            return 0;
        }
        if (fill_range(g, n->in[0], rank, dt, n->dim, start, len, dst, err))
            return -1;
        /* [outer][len][inner] to [outer][w][inner], last block first: each moves up or stays */
        for (uint64_t o = outer; pad && o-- > 0;) {
            memmove(dst + o * w * inner * es, dst + o * len * inner * es, es * len * inner);
            memset(dst + (o * w + len) * inner * es, 0, es * pad * inner);
        }
        return 0;
    }
    case KG_RESHAPE:
        return fill(g, n->in[0], rank, dt, dst, err);
    case KG_CONCAT: {
        uint64_t outer, inner;
        around(n, n->dim, &outer, &inner);
        if (outer == 1) { /* the parts follow each other */
            uint64_t at = 0;
            for (int k = 0; k < n->n_in; k++) {
                if (fill(g, n->in[k], rank, dt, dst + at * es, err))
                    return -1;
                at += numel(&g->nodes[n->in[k]]);
            }
            return 0;
        }
        uint64_t at = 0, row = (uint64_t)n->shape[n->dim] * inner;
        for (int k = 0; k < n->n_in; k++) {
            const kg_node *p = &g->nodes[n->in[k]];
            unsigned char *tmp = malloc(es * (numel(p) ? numel(p) : 1));
            if (!tmp)
                return kerr_add(err, "pack: out of memory for %s", p->name);
            if (fill(g, n->in[k], rank, dt, tmp, err)) {
                free(tmp);
                return -1;
            }
            uint64_t part = (uint64_t)p->shape[n->dim] * inner;
            for (uint64_t o = 0; o < outer; o++)
                memcpy(dst + (o * row + at) * es, tmp + o * part * es, es * part);
            at += part;
            free(tmp);
        }
        return 0;
    }
    case KG_SLICE:
        return fill_range(g, n->in[0], rank, dt, n->dim, (uint64_t)n->start, (uint64_t)n->len,
                          dst, err);
    case KG_TRANSPOSE: {
        const kg_node *p = &g->nodes[n->in[0]];
        unsigned char *tmp = malloc(es * (numel(p) ? numel(p) : 1));
        if (!tmp)
            return kerr_add(err, "pack: out of memory for %s", p->name);
        if (fill(g, n->in[0], rank, dt, tmp, err)) {
            free(tmp);
            return -1;
        }
        uint64_t sstride[KG_MAX_DIMS], st = 1;
        for (int i = p->ndim - 1; i >= 0; i--) {
            sstride[i] = st;
            st *= (uint64_t)p->shape[i];
        }
        uint64_t ostride[KG_MAX_DIMS];
        memcpy(ostride, sstride, sizeof ostride);
        ostride[n->dim] = sstride[n->dim2];
        ostride[n->dim2] = sstride[n->dim];
        int64_t idx[KG_MAX_DIMS] = {0};
        uint64_t total = numel(n);
        for (uint64_t o = 0; o < total; o++) {
            uint64_t si = 0;
            for (int i = 0; i < n->ndim; i++)
                si += (uint64_t)idx[i] * ostride[i];
            memcpy(dst + o * es, tmp + si * es, es);
            for (int i = n->ndim - 1; i >= 0; i--) {
                if (++idx[i] < n->shape[i])
                    break;
                idx[i] = 0;
            }
        }
        free(tmp);
        return 0;
    }
    case KG_SCALE: /* a row-parallel bias' share (shard.c) */
        if (fill(g, n->in[0], rank, dt, dst, err))
            return -1;
        for (uint64_t i = 0, e = numel(n); i < e; i++)
            put((float)((double)get(dst + i * es, dt) * n->scalar), dt, dst + i * es);
        return 0;
    default:
        return kerr_add(err, "pack: %s (%s) is not a constant expression", n->name,
                        kg_op_name(n->op));
    }
}

void *pack_const(const kgraph *g, int id, int rank, st_dtype dt, kerr *err)
{
    uint64_t n = numel(&g->nodes[id]);
    unsigned char *buf = malloc(st_dtype_size(dt) * (n ? n : 1));
    if (!buf) {
        kerr_add(err, "pack: out of memory for %s", g->nodes[id].name);
        return NULL;
    }
    if (fill(g, id, rank, dt, buf, err)) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* ---------------------------------------------------------------- quantised weights */

/* pack_qblock without the kind check at the top: *kind is the kind of the first leaf seen
 * (QROWS_NONE before), and a leaf of another kind makes it -1. */
static int64_t qblock(const kc *c, int id, int rank, qrows_kind *kind)
{
    const kgraph *g = c->g;
    const kg_node *n = &g->nodes[id];
    int last = n->ndim - 1;
    if (n->ndim < 1)
        return -1;
    switch (n->op) {
    case KG_WEIGHT: {
        const qrows *q = n->bound && n->ndim == 2 ? quant_rows(c, n->bound) : NULL;
        if (!q || (*kind && *kind != q->kind))
            return -1;
        *kind = q->kind;
        return q->block >= n->shape[1] ? 0 : q->block;
    }
    case KG_RESHAPE: {
        const kg_node *p = &g->nodes[n->in[0]];
        return p->ndim >= 1 && p->shape[p->ndim - 1] == n->shape[last]
                   ? qblock(c, n->in[0], rank, kind)
                   : -1;
    }
    case KG_CONCAT: {
        if (n->dim == last)
            return -1;
        int64_t b = qblock(c, n->in[0], rank, kind);
        for (int k = 1; k < n->n_in && b >= 0; k++)
            if (qblock(c, n->in[k], rank, kind) != b)
                b = -1;
        return b;
    }
    case KG_SLICE:
        return n->dim == last ? -1 : qblock(c, n->in[0], rank, kind);
    case KG_SHARD: {
        int64_t b = qblock(c, n->in[0], rank, kind);
        /* a cut of K: the rank's part must start at a block edge */
        int64_t len = n->shape[n->dim] - n->pad;
        if (b > 0 && n->dim == last && (rank * n->parts / g->tp * len) % b != 0)
            return -1;
        return b;
    }
    default:
        return -1;
    }
}

int64_t pack_qblock(const kc *c, int id, int rank, qrows_kind *kind)
{
    *kind = QROWS_NONE;
    int64_t b = qblock(c, id, rank, kind);
    if (b < 0)
        *kind = QROWS_NONE;
    return b;
}

static float *floats(uint64_t n) { return xmalloc(sizeof(float) * (n + 1)); }

/* Rows of a constant: every dimension but the last. */
static uint64_t rows_of(const kg_node *n) { return n->ndim ? numel(n) / (uint64_t)n->shape[n->ndim - 1] : 0; }

/* The scales (zero: the zero points) of constant `id` (pack_qblock(id) == b >= 0) for rank
 * `rank`: [rows, kb] floats, kb = b ? ceil(K / b) : 1. Padding (rows or blocks a SHARD adds)
 * gets scale 1 and zero point 0 (its values are zero). */
static void fill_scales(const kc *c, int id, int rank, int64_t b, int zero, float *dst)
{
    const kgraph *g = c->g;
    const kg_node *n = &g->nodes[id];
    int last = n->ndim - 1;
    uint64_t K = (uint64_t)n->shape[last], kb = b ? (K + (uint64_t)b - 1) / (uint64_t)b : 1;
    switch (n->op) {
    case KG_WEIGHT: {
        const qrows *q = quant_rows(c, n->bound);
        memcpy(dst, zero ? q->zero : q->scale, sizeof(float) * rows_of(n) * kb);
        return;
    }
    case KG_RESHAPE:
        fill_scales(c, n->in[0], rank, b, zero, dst);
        return;
    case KG_CONCAT:
    case KG_SLICE:
    case KG_SHARD: {
        /* rows move whole: [outer][dim][inner] rows of kb scales each, as fill's element moves */
        const kg_node *p = &g->nodes[n->in[0]];
        uint64_t outer = 1, inner = 1;
        for (int i = 0; i < last; i++) {
            if (i < n->dim)
                outer *= (uint64_t)n->shape[i];
            else if (i > n->dim)
                inner *= (uint64_t)n->shape[i];
        }
        if (n->op == KG_CONCAT) {
            uint64_t at = 0, row = (uint64_t)n->shape[n->dim] * inner * kb;
            for (int k = 0; k < n->n_in; k++) {
                const kg_node *q = &g->nodes[n->in[k]];
                uint64_t part = (uint64_t)q->shape[n->dim] * inner * kb;
                float *tmp = floats(rows_of(q) * kb);
                fill_scales(c, n->in[k], rank, b, zero, tmp);
                for (uint64_t o = 0; o < outer; o++)
                    memcpy(dst + o * row + at, tmp + o * part, sizeof(float) * part);
                at += part;
                free(tmp);
            }
            return;
        }
        uint64_t pkb = b ? ((uint64_t)p->shape[last] + (uint64_t)b - 1) / (uint64_t)b : 1;
        float *tmp = floats(rows_of(p) * pkb);
        fill_scales(c, n->in[0], rank, b, zero, tmp);
        const float pad = zero ? 0.0f : 1.0f;
        if (n->dim == last) { /* a SHARD of K: the rank's blocks of every row */
            uint64_t len = (uint64_t)(n->shape[last] - n->pad);
            uint64_t first = b ? (uint64_t)(rank * n->parts / g->tp) * len / (uint64_t)b : 0;
            for (uint64_t r = 0; r < rows_of(n); r++)
                for (uint64_t k = 0; k < kb; k++)
                    dst[r * kb + k] = first + k < pkb ? tmp[r * pkb + first + k] : pad;
            free(tmp);
            return;
        }
        uint64_t sd = (uint64_t)p->shape[n->dim], w = (uint64_t)n->shape[n->dim], len = w, start;
        if (n->op == KG_SLICE) {
            start = (uint64_t)n->start;
        } else {
            len = w - (uint64_t)n->pad;
            start = (uint64_t)(rank * n->parts / g->tp) * len;
        }
        for (uint64_t o = 0; o < outer; o++) {
            memcpy(dst + o * w * inner * kb, tmp + (o * sd + start) * inner * kb,
                   sizeof(float) * len * inner * kb);
            for (uint64_t i = len * inner * kb; i < w * inner * kb; i++)
                dst[o * w * inner * kb + i] = pad;
        }
        free(tmp);
        return;
    }
    default:
        assert(!"pack_qblock accepts no other op");
    }
}

/* A rank's fp32 buffer for its quantised weights' values, grown to the largest and kept: one
 * allocation per tensor would fault fresh pages in each time (as many bytes as the model's
 * weights in fp32). */
typedef struct fbuf {
    float *v;
    uint64_t n;
} fbuf;

static float *fbuf_get(fbuf *b, uint64_t n)
{
    if (n + 1 > b->n) {
        free(b->v);
        b->v = malloc(sizeof(float) * (n + 1));
        b->n = b->v ? n + 1 : 0;
    }
    return b->v;
}

/* Rows [lo, hi) of fill_quant. */
typedef struct qjob {
    qrows_kind kind;
    const float *v, *sc, *zp; /* zp: INT4's zero points */
    unsigned char *dst;
    uint64_t K, kb, b;
    int64_t bad[UTIL_PAR_MAX]; /* per chunk: the first element that does not come back, or -1 */
} qjob;

/* The element's quantised value (quant_code: e4m3 byte or 4-bit q) that gives back x exactly,
 * or -1. */
static int quantised(const qjob *j, uint64_t r, uint64_t k)
{
    uint64_t at = r * j->kb + (j->b ? k / j->b : 0);
    return quant_code(j->kind, j->v[r * j->K + k], j->sc[at], j->zp ? j->zp[at] : 0.f);
}

static void quant_part(void *ctx, int chunk, int64_t lo, int64_t hi)
{
    qjob *j = ctx;
    for (uint64_t r = (uint64_t)lo; r < (uint64_t)hi; r++)
        for (uint64_t k0 = 0; k0 < j->K; k0 += 8) {
            uint32_t word = 0; /* INT4: 8 elements */
            for (uint64_t e = 0; e < 8 && k0 + e < j->K; e++) {
                uint64_t k = k0 + e;
                int q = quantised(j, r, k);
                if (q < 0) {
                    j->bad[chunk] = (int64_t)(r * j->K + k);
                    return;
                }
                if (j->kind == QROWS_E4M3)
                    j->dst[r * j->K + (k & ~3ull) + ((k & 3) == 1 ? 2 : (k & 3) == 2 ? 1 : (k & 3))] =
                        (unsigned char)q;
                else
                    word |= (uint32_t)q << (e & 1 ? 16 + 4 * (e / 2) : 4 * (e / 2));
            }
            for (int i = 0; j->kind == QROWS_INT4 && i < 4; i++)
                j->dst[(r * j->K + k0) / 2 + (uint64_t)i] = (unsigned char)(word >> (8 * i));
        }
}

/* A quantised weight's values as the kernels read them (templates/gemv.cuh), from the fp32 values
 * of what quant.h made (its codes decoded, the graph's slices and shards applied) and the scales
 * (and zero points) it kept, each checked to give back its value exactly. E4M3 (gemv_fp8): bytes,
 * each group of four elements k..k+3 in the order k, k+2, k+1, k+3. INT4 (gemv_int4): two 4-bit q a
 * byte, each group of 8 elements k..k+7 one little-endian 32-bit word, element k+2j in nibble j and
 * k+2j+1 in nibble j+4 (j = 0..3). Rows on every core. */
static int fill_quant(const kc *c, int id, int rank, qrows_kind kind, int64_t b, fbuf *fb,
                      unsigned char *dst, kerr *err)
{
    const kg_node *n = &c->g->nodes[id];
    uint64_t rows = rows_of(n), K = (uint64_t)n->shape[n->ndim - 1];
    uint64_t kb = b ? (K + (uint64_t)b - 1) / (uint64_t)b : 1;
    float *v = fbuf_get(fb, rows * K), *sc = floats(rows * kb);
    float *zp = kind == QROWS_INT4 ? floats(rows * kb) : NULL;
    int rc = v ? fill(c->g, id, rank, ST_F32, (unsigned char *)v, err)
               : kerr_add(err, "pack: out of memory for %s", n->name);
    if (!rc) {
        fill_scales(c, id, rank, b, 0, sc);
        if (zp)
            fill_scales(c, id, rank, b, 1, zp);
        qjob j = {kind, v, sc, zp, dst, K, kb, (uint64_t)b, {0}};
        for (int i = 0; i < UTIL_PAR_MAX; i++)
            j.bad[i] = -1;
        util_parallel_for((int64_t)rows, quant_part, &j);
        for (int i = 0; i < UTIL_PAR_MAX && !rc; i++)
            if (j.bad[i] >= 0) {
                uint64_t e = (uint64_t)j.bad[i], r = e / K, k = e % K;
                uint64_t at = r * kb + (b ? k / (uint64_t)b : 0);
                rc = kerr_add(err, "pack: %s [%llu, %llu] = %g is not %s times its scale %g (a "
                                   "kilnc bug: please report it)",
                              n->name, (unsigned long long)r, (unsigned long long)k, (double)v[e],
                              kind == QROWS_E4M3 ? "an e4m3 number" : "(q - zero point)",
                              (double)sc[at]);
            }
    }
    free(sc);
    free(zp);
    return rc;
}

/* gemv_int4's scales and zero points: per row and group, two 32-bit words, the scale as a pair
 * of dt values and (B + zero) as a pair of dt values, B = 128 for bf16 and 1024 for f16 (the
 * base of the kernel's nibble-to-dt trick). */
static void fill_int4sz(const kc *c, int id, int rank, int64_t b, st_dtype dt, uint32_t *dst)
{
    const kg_node *n = &c->g->nodes[id];
    uint64_t rows = rows_of(n), K = (uint64_t)n->shape[n->ndim - 1];
    uint64_t kb = b ? (K + (uint64_t)b - 1) / (uint64_t)b : 1;
    float *sc = floats(rows * kb), *zp = floats(rows * kb);
    fill_scales(c, id, rank, b, 0, sc);
    fill_scales(c, id, rank, b, 1, zp);
    float base = dt == ST_F16 ? 1024.0f : 128.0f;
    for (uint64_t i = 0; i < rows * kb; i++) {
        uint32_t hs = dt == ST_F16 ? util_f32_to_f16(sc[i]) : util_f32_to_bf16(sc[i]);
        uint32_t hz = dt == ST_F16 ? util_f32_to_f16(base + zp[i]) : util_f32_to_bf16(base + zp[i]);
        dst[2 * i] = hs | hs << 16;
        dst[2 * i + 1] = hz | hz << 16;
    }
    free(sc);
    free(zp);
}

typedef struct fillctx {
    const kc *c;
    int id, rank;
    st_dtype dt;   /* the compute dtype (KA_W_ACT) */
    ka_wtype type;
    hash_stream *hs;
    fbuf *fb;      /* the rank's (fill_quant) */
} fillctx;

/* The writer calls this once per tensor, in file order, so the stream sees the data region. */
static int fill_cb(void *ctx, void *buf, uint64_t nbytes, kerr *err)
{
    fillctx *f = ctx;
    qrows_kind kind;
    int64_t b = f->type == KA_W_ACT ? 0 : pack_qblock(f->c, f->id, f->rank, &kind);
    assert(b >= 0); /* lower made it quantised only so */
    int rc = 0;
    switch (f->type) {
    case KA_W_E4M3:
    case KA_W_INT4: rc = fill_quant(f->c, f->id, f->rank, kind, b, f->fb, buf, err); break;
    case KA_W_F32: fill_scales(f->c, f->id, f->rank, b, 0, buf); break;
    case KA_W_INT4SZ: fill_int4sz(f->c, f->id, f->rank, b, f->dt, buf); break;
    default: rc = fill(f->c->g, f->id, f->rank, f->dt, buf, err); break;
    }
    if (rc)
        return -1;
    hash_stream_update(f->hs, buf, (size_t)nbytes);
    return 0;
}

/* The bar over every rank's bytes: each writer reports its own, under the lock. */
typedef struct bar {
    double t0;
    int show, tp;
    pthread_mutex_t mu;
    uint64_t done[KA_MAX_TP];
    uint64_t total; /* of one rank: every shard holds the same tensors */
} bar;

typedef struct rankbar {
    bar *b;
    int rank;
} rankbar;

static void progress(void *ctx, uint64_t done, uint64_t total)
{
    rankbar *rb = ctx;
    bar *b = rb->b;
    if (!b->show)
        return;
    pthread_mutex_lock(&b->mu);
    b->done[rb->rank] = done;
    b->total = total;
    uint64_t sum = 0, all = total * (uint64_t)b->tp;
    for (int r = 0; r < b->tp; r++)
        sum += b->done[r];
    util_progress_line("packing weights", sum, all, util_now() - b->t0);
    pthread_mutex_unlock(&b->mu);
}

/* The shard id's placeholder in the header: the writer emits the header before the data, and
 * the id hashes both, so it is written once the data is out (same length, in place). */
#define ID_PLACEHOLDER "\"" KA_SHARD_ID_KEY "\":\"################\""

/* Reads the header back, puts the id in, and fills the shard's entry (its hash is set). */
static int finish_header(const char *path, ka_shard *sh, uint64_t chunk, kerr *err)
{
    FILE *f = fopen(path, "r+b");
    unsigned char len8[8];
    if (!f || fread(len8, 1, 8, f) != 8) {
        if (f)
            fclose(f);
        return kerr_add(err, "%s: cannot read back the shard header", path);
    }
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--)
        hl = hl << 8 | len8[i];
    char *h = hl < ((uint64_t)1 << 32) ? malloc(hl + 1) : NULL;
    int ok = h && fread(h, 1, hl, f) == hl;
    char *at = NULL;
    if (ok) {
        h[hl] = 0;
        at = strstr(h, ID_PLACEHOLDER);
        ok = at && !strstr(at + 1, ID_PLACEHOLDER); /* exactly one: the metadata's */
    }
    if (ok) {
        /* the id: the header as written (with the placeholder and the rank's name) and the
         * data's hash */
        unsigned char tail[16];
        for (int i = 0; i < 8; i++) {
            tail[i] = (unsigned char)(sh->hash >> (8 * i));
            tail[8 + i] = (unsigned char)(chunk >> (8 * i));
        }
        sh->id = hash_bytes2(h, (size_t)hl, tail, sizeof tail);
        char hex[17];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)sh->id);
        char *digits = at + strlen(ID_PLACEHOLDER) - 17;
        memcpy(digits, hex, 16);
        ok = fseek(f, 8 + (long)(digits - h), SEEK_SET) == 0 && fwrite(hex, 1, 16, f) == 16;
    }
    ok = fclose(f) == 0 && ok;
    if (!ok) {
        free(h);
        return kerr_add(err, "%s: cannot write the shard id into the header", path);
    }
    sh->header_fnv = util_fnv1a(h, (size_t)hl, UTIL_FNV_SEED);
    free(h);
    return 0;
}

/* One rank's shard: written, hashed as it streams, its id put in. */
static int pack_rank(kc *c, const lowered *l, const char *path, int rank, bar *b, ka_shard *sh,
                     kerr *err)
{
    st_writer *w = st_writer_new();
    fillctx *ctx = xcalloc((size_t)(l->m.nweights ? l->m.nweights : 1), sizeof(fillctx));
    hash_stream *hs = hash_stream_new(HASH_CHUNK);
    st_dtype dt = c->act_dtype;
    fbuf fb = {NULL, 0};
    for (int i = 0; i < l->m.nweights; i++) {
        const ka_weight *kw = &l->m.weights[i];
        ctx[i] = (fillctx){c, l->weight_node[i], rank, dt, kw->type, hs, &fb};
        static const st_dtype wdt[] = {[KA_W_E4M3] = ST_F8_E4M3, [KA_W_F32] = ST_F32,
                                       [KA_W_INT4] = ST_U8, [KA_W_INT4SZ] = ST_U32};
        st_writer_add_fill(w, kw->name, kw->type == KA_W_ACT ? dt : wdt[kw->type], kw->ndim,
                           kw->shape, fill_cb, &ctx[i]);
    }
    char rk[32];
    snprintf(rk, sizeof rk, "%d of %d", rank, l->m.tp);
    st_writer_meta(w, "producer", "kilnc compile");
    st_writer_meta(w, "kiln_rank", rk); /* so that shards of other ranks have other ids */
    st_writer_meta(w, KA_SHARD_ID_KEY, "################");
    rankbar rb = {b, rank};
    int rc = st_writer_write(w, path, progress, &rb, err);
    st_writer_free(w);
    free(ctx);
    free(fb.v);
    sh->hash = hash_stream_finish(hs);
    return rc ? -1 : finish_header(path, sh, HASH_CHUNK, err);
}

typedef struct packjob {
    kc *c;
    const lowered *l;
    const char *dir;
    ka_manifest *m;
    bar *b;
    pthread_mutex_t mu;
    int next;     /* the next rank to pack */
    kerr *errs;   /* per rank */
    int *rc;      /* per rank */
} packjob;

static void *pack_worker(void *arg)
{
    packjob *j = arg;
    for (;;) {
        pthread_mutex_lock(&j->mu);
        int r = j->next < j->m->tp ? j->next++ : -1;
        pthread_mutex_unlock(&j->mu);
        if (r < 0)
            return NULL;
        char *path = util_path_join(j->dir, j->m->shards[r].path);
        j->rc[r] = pack_rank(j->c, j->l, path, r, j->b, &j->m->shards[r], &j->errs[r]);
        free(path);
    }
}

int pack_shards(kc *c, const lowered *l, const char *out_dir, int show_progress, ka_manifest *m,
                kerr *err)
{
    assert(m->tp >= 1 && m->tp <= KA_MAX_TP && m->shards && m->tp == c->g->tp);
    char *sdir = util_path_join(out_dir, "shards");
    int rc = util_mkdirs(sdir, err);
    free(sdir);
    if (rc)
        return -1;
    bar b = {.t0 = util_now(), .show = show_progress > 1 || (show_progress && isatty(2)),
             .tp = m->tp};
    packjob j = {.c = c, .l = l, .dir = out_dir, .m = m, .b = &b};
    pthread_mutex_init(&b.mu, NULL);
    pthread_mutex_init(&j.mu, NULL);
    j.errs = xcalloc((size_t)m->tp, sizeof(kerr));
    j.rc = xcalloc((size_t)m->tp, sizeof(int));
    for (int r = 0; r < m->tp; r++)
        kerr_clear(&j.errs[r]);
    /* ranks on parallel threads (the calling one too); each holds one tensor at a time */
    int nth = util_cpus(m->tp) - 1;
    pthread_t th[KA_MAX_TP];
    int started = 0;
    for (int i = 0; i < nth && pthread_create(&th[started], NULL, pack_worker, &j) == 0; i++)
        started++;
    pack_worker(&j);
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    m->shard_chunk = HASH_CHUNK;
    rc = 0;
    for (int r = 0; r < m->tp && rc == 0; r++)
        if (j.rc[r])
            rc = kerr_add(err, "%s", kerr_msg(&j.errs[r]));
    free(j.errs);
    free(j.rc);
    pthread_mutex_destroy(&j.mu);
    pthread_mutex_destroy(&b.mu);
    return rc;
}
