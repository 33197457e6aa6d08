/* pack — see pack.h. A constant node is materialised by recursion over its view ops:
 * weights convert straight from the mapped checkpoint, reshapes and leading-dimension
 * concatenations write their parts in place, and the views that reorder elements (slices of an
 * inner dimension, concatenation along one, transposes) gather from their materialised input. */
#include "pack.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hash.h"

static uint16_t conv(float f, st_dtype dt)
{
    return dt == ST_F16 ? util_f32_to_f16(f) : util_f32_to_bf16(f);
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

static int fill(const kgraph *g, int id, st_dtype dt, uint16_t *dst, kerr *err)
{
    const kg_node *n = &g->nodes[id];
    switch (n->op) {
    case KG_WEIGHT: {
        const st_tensor *t = n->bound;
        if (!t)
            return kerr_add(err, "pack: weight '%s' is not bound", n->weight);
        if (t->dtype == dt) {
            memcpy(dst, t->data, t->nbytes);
        } else if (t->dtype == ST_F32) {
            const float *s = t->data;
            for (uint64_t i = 0; i < t->numel; i++)
                dst[i] = conv(s[i], dt);
        } else {
            const uint16_t *s = t->data;
            for (uint64_t i = 0; i < t->numel; i++)
                dst[i] = conv(t->dtype == ST_BF16 ? util_bf16_to_f32(s[i]) : util_f16_to_f32(s[i]),
                              dt);
        }
        return 0;
    }
    case KG_RESHAPE:
        return fill(g, n->in[0], dt, dst, err);
    case KG_CONCAT: {
        uint64_t outer, inner;
        around(n, n->dim, &outer, &inner);
        if (outer == 1) { /* the parts follow each other */
            uint64_t at = 0;
            for (int k = 0; k < n->n_in; k++) {
                if (fill(g, n->in[k], dt, dst + at, err))
                    return -1;
                at += numel(&g->nodes[n->in[k]]);
            }
            return 0;
        }
        uint64_t at = 0, row = (uint64_t)n->shape[n->dim] * inner;
        for (int k = 0; k < n->n_in; k++) {
            const kg_node *p = &g->nodes[n->in[k]];
            uint16_t *tmp = malloc(sizeof(uint16_t) * (numel(p) ? numel(p) : 1));
            if (!tmp)
                return kerr_add(err, "pack: out of memory for %s", p->name);
            if (fill(g, n->in[k], dt, tmp, err)) {
                free(tmp);
                return -1;
            }
            uint64_t part = (uint64_t)p->shape[n->dim] * inner;
            for (uint64_t o = 0; o < outer; o++)
                memcpy(dst + o * row + at, tmp + o * part, sizeof(uint16_t) * part);
            at += part;
            free(tmp);
        }
        return 0;
    }
    case KG_SLICE: {
        const kg_node *p = &g->nodes[n->in[0]];
        uint64_t outer, inner;
        around(p, n->dim, &outer, &inner);
        uint16_t *tmp = malloc(sizeof(uint16_t) * (numel(p) ? numel(p) : 1));
        if (!tmp)
            return kerr_add(err, "pack: out of memory for %s", p->name);
        if (fill(g, n->in[0], dt, tmp, err)) {
            free(tmp);
            return -1;
        }
        uint64_t sd = (uint64_t)p->shape[n->dim], len = (uint64_t)n->len;
        for (uint64_t o = 0; o < outer; o++)
            memcpy(dst + o * len * inner, tmp + (o * sd + (uint64_t)n->start) * inner,
                   sizeof(uint16_t) * len * inner);
        free(tmp);
        return 0;
    }
    case KG_TRANSPOSE: {
        const kg_node *p = &g->nodes[n->in[0]];
        uint16_t *tmp = malloc(sizeof(uint16_t) * (numel(p) ? numel(p) : 1));
        if (!tmp)
            return kerr_add(err, "pack: out of memory for %s", p->name);
        if (fill(g, n->in[0], dt, tmp, err)) {
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
            dst[o] = tmp[si];
            for (int i = n->ndim - 1; i >= 0; i--) {
                if (++idx[i] < n->shape[i])
                    break;
                idx[i] = 0;
            }
        }
        free(tmp);
        return 0;
    }
    default:
        return kerr_add(err, "pack: %s (%s) is not a constant expression", n->name,
                        kg_op_name(n->op));
    }
}

void *pack_const(const kgraph *g, int id, st_dtype dt, kerr *err)
{
    uint64_t n = numel(&g->nodes[id]);
    uint16_t *buf = malloc(sizeof(uint16_t) * (n ? n : 1));
    if (!buf) {
        kerr_add(err, "pack: out of memory for %s", g->nodes[id].name);
        return NULL;
    }
    if (fill(g, id, dt, buf, err)) {
        free(buf);
        return NULL;
    }
    return buf;
}

typedef struct fillctx {
    const kgraph *g;
    int id;
    st_dtype dt;
    hash_stream *hs;
} fillctx;

/* The writer calls this once per tensor, in file order, so the stream sees the data region. */
static int fill_cb(void *ctx, void *buf, uint64_t nbytes, kerr *err)
{
    fillctx *f = ctx;
    if (fill(f->g, f->id, f->dt, buf, err))
        return -1;
    hash_stream_update(f->hs, buf, (size_t)nbytes);
    return 0;
}

typedef struct bar {
    double t0;
    int show;
} bar;

static void progress(void *ctx, uint64_t done, uint64_t total)
{
    bar *b = ctx;
    if (!b->show)
        return;
    char d[32], t[32];
    int pct = total ? (int)(100.0 * (double)done / (double)total) : 100;
    int fillw = pct * 30 / 100;
    double el = util_now() - b->t0;
    fprintf(stderr, "\rkilnc: packing weights %3d%% [%.*s%*s] %s / %s  %.1f s", pct, fillw,
            "==============================", 30 - fillw, "",
            util_human_bytes((double)done, d, sizeof d), util_human_bytes((double)total, t, sizeof t),
            el);
    if (done == total)
        fputc('\n', stderr);
}

/* The shard id's placeholder in the header: the writer emits the header before the data, and
 * the id hashes both, so it is written once the data is out (same length, in place). */
#define ID_PLACEHOLDER "\"" KA_SHARD_ID_KEY "\":\"################\""

/* Reads the header back, puts the id in, and fills the manifest's shard fields. */
static int finish_header(const char *path, ka_manifest *m, kerr *err)
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
        /* the id: the header as written (with the placeholder) and the data's hash */
        unsigned char tail[16];
        for (int i = 0; i < 8; i++) {
            tail[i] = (unsigned char)(m->shards[0].hash >> (8 * i));
            tail[8 + i] = (unsigned char)(m->shard_chunk >> (8 * i));
        }
        m->shards[0].id = hash_bytes2(h, (size_t)hl, tail, sizeof tail);
        char hex[17];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)m->shards[0].id);
        char *digits = at + strlen(ID_PLACEHOLDER) - 17;
        memcpy(digits, hex, 16);
        ok = fseek(f, 8 + (long)(digits - h), SEEK_SET) == 0 && fwrite(hex, 1, 16, f) == 16;
    }
    ok = fclose(f) == 0 && ok;
    if (!ok) {
        free(h);
        return kerr_add(err, "%s: cannot write the shard id into the header", path);
    }
    m->shards[0].header_fnv = util_fnv1a(h, (size_t)hl, UTIL_FNV_SEED);
    free(h);
    return 0;
}

int pack_shard(kc *c, const lowered *l, const char *path, int show_progress, ka_manifest *m,
               kerr *err)
{
    st_writer *w = st_writer_new();
    fillctx *ctx = xcalloc((size_t)(l->m.nweights ? l->m.nweights : 1), sizeof(fillctx));
    hash_stream *hs = hash_stream_new(HASH_CHUNK);
    st_dtype dt = c->act_dtype;
    for (int i = 0; i < l->m.nweights; i++) {
        const ka_weight *kw = &l->m.weights[i];
        ctx[i] = (fillctx){c->g, l->weight_node[i], dt, hs};
        st_writer_add_fill(w, kw->name, dt, kw->ndim, kw->shape, fill_cb, &ctx[i]);
    }
    st_writer_meta(w, "producer", "kilnc compile");
    st_writer_meta(w, KA_SHARD_ID_KEY, "################");
    bar b = {util_now(), show_progress > 1 || (show_progress && isatty(2))};
    int rc = st_writer_write(w, path, progress, &b, err);
    st_writer_free(w);
    free(ctx);
    m->shards[0].hash = hash_stream_finish(hs);
    m->shard_chunk = HASH_CHUNK;
    return rc ? -1 : finish_header(path, m, err);
}
