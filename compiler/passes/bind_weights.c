/* bind_weights — ties every WEIGHT node to its checkpoint tensor.
 *
 * Checks, reporting all problems at once: the tensor exists (else the closest checkpoint name
 * is suggested, which catches most prefix typos), its shape is the one the spec expects, and
 * its dtype is one kiln computes with (F32, F16, BF16). Sets each node's dtype to the
 * checkpoint's. FP8 weights (F8_E4M3 with config.json's quantization_config), integer ones
 * (a spec's X.weight stored packed as X.qweight or X.weight_packed, AWQ, GPTQ or
 * pack-quantized) and, with --quant fp8 or int4, the linears' weights are bound to their fp32
 * dequantised values (quant.h). With --calibrate those linears are first bound unquantised, the
 * model run over the calibration text (gptq.h), and then rounded by GPTQ, once every weight is
 * bound and none has NaN or Inf.
 * Checkpoint tensors that no node uses are listed by name: a warning, or an
 * error with --strict, since an unused tensor usually means the spec skips part of the model.
 * Every bound tensor is scanned for NaN and Inf (finite.c): an error naming the tensor and the
 * first bad element, or a warning with --allow-nonfinite.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gptq.h"
#include "passes.h"
#include "quant.h"

/* Missing tensors listed one by one; the rest are counted. */
#define MAX_MISSING_SHOWN 20

int edit_distance(const char *a, const char *b, int limit)
{
    int la = (int)strlen(a), lb = (int)strlen(b);
    if (abs(la - lb) > limit)
        return limit + 1;
    int *prev = xmalloc(sizeof(int) * (size_t)(lb + 1)), *cur = xmalloc(sizeof(int) * (size_t)(lb + 1));
    for (int j = 0; j <= lb; j++)
        prev[j] = j;
    for (int i = 1; i <= la; i++) {
        cur[0] = i;
        int best = cur[0];
        for (int j = 1; j <= lb; j++) {
            int d = prev[j - 1] + (a[i - 1] != b[j - 1]);
            if (prev[j] + 1 < d)
                d = prev[j] + 1;
            if (cur[j - 1] + 1 < d)
                d = cur[j - 1] + 1;
            cur[j] = d;
            if (d < best)
                best = d;
        }
        int *t = prev;
        prev = cur;
        cur = t;
        if (best > limit) {
            free(prev);
            free(cur);
            return limit + 1;
        }
    }
    int d = prev[lb];
    free(prev);
    free(cur);
    return d;
}

/* Among the checkpoint tensors no weight node asks for (`used`): a renamed tensor is one of
 * those, while another layer's tensor one edit away is not what the user meant. */
static const char *closest(const st_set *w, const unsigned char *used, const char *name)
{
    int limit = (int)strlen(name) / 3 + 1, best = limit + 1;
    const char *r = NULL;
    for (int i = 0; i < w->n; i++) {
        if (used[i])
            continue;
        int d = edit_distance(name, w->tensors[i].name, best - 1 < limit ? best - 1 : limit);
        if (d < best) {
            best = d;
            r = w->tensors[i].name;
        }
    }
    return r;
}

static const char *loc(const kg_node *n, char *buf, size_t cap)
{
    if (!n->spec_file)
        return "";
    snprintf(buf, cap, " (asked for at %s:%d)", n->spec_file, n->spec_line);
    return buf;
}

/* " (row 4, col 210)" or " (index [1, 2, 3])" for a flat index into a tensor of 2+ dims. */
static const char *multi_index(const st_tensor *t, uint64_t flat, char *buf, size_t cap)
{
    buf[0] = 0;
    if (t->ndim < 2)
        return buf;
    uint64_t idx[ST_MAX_DIMS];
    for (int d = t->ndim - 1; d >= 0; d--) {
        idx[d] = flat % (uint64_t)t->shape[d];
        flat /= (uint64_t)t->shape[d];
    }
    if (t->ndim == 2) {
        snprintf(buf, cap, " (row %llu, col %llu)", (unsigned long long)idx[0],
                 (unsigned long long)idx[1]);
        return buf;
    }
    size_t k = (size_t)snprintf(buf, cap, " (index [");
    for (int d = 0; d < t->ndim && k < cap; d++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%llu", d ? ", " : "", (unsigned long long)idx[d]);
    if (k < cap)
        snprintf(buf + k, cap - k, "])");
    return buf;
}

/* --quant quantises the weights of linears only: a 2-D weight every reader of which takes
 * it as a LINEAR's weight (embeddings, norms, biases and the LM head stay as they are). */
static int linear_only(const kgraph *g, int id)
{
    int readers = 0;
    if (g->nodes[id].ndim != 2)
        return 0;
    for (int i = 0; i < g->n; i++)
        for (int k = 0; k < g->nodes[i].n_in; k++)
            if (g->nodes[i].in[k] == id) {
                if (g->nodes[i].op != KG_LINEAR || k != 1)
                    return 0;
                readers++;
            }
    return readers > 0;
}

/* The progress bar of --quant's rounding (most of a big model's compile): bytes of the linears'
 * checkpoint weights rounded so far, on a terminal only and once the work has taken a second (a
 * small model prints nothing). */
typedef struct qbar {
    double t0, last;
    uint64_t done, total;
    int shown;
    char what[64];
} qbar;

static void qbar_init(qbar *q, const kc *c, uint64_t total)
{
    memset(q, 0, sizeof *q);
    q->t0 = util_now();
    q->total = total;
    if (c->quant_mode) /* else nothing is rounded and the bar is never drawn */
        snprintf(q->what, sizeof q->what, "%s weights to %s",
                 c->calib_path ? "GPTQ rounding" : "rounding", quant_mode_name(c->quant_mode));
}

static void qbar_add(qbar *q, const st_tensor *t)
{
    q->done += t->nbytes;
    double now = util_now();
    int last = q->done >= q->total;
    if (!isatty(2) || (last ? !q->shown : now - q->t0 < 1.0 || now - q->last < 0.2))
        return;
    q->last = now;
    q->shown = 1;
    util_progress_line(q->what, last ? q->total : q->done, q->total, now - q->t0);
}

/* --calibrate: the linear weights of nodes ids[0..n) (bound unquantised) rounded by GPTQ with
 * the Hessians of a calibration run of the whole graph. */
static int round_calibrated(kc *c, const int *ids, int n, kerr *err)
{
    gptq_calib *cal = gptq_calibrate(c, ids, n, err);
    if (!cal)
        return -1;
    double t0 = util_now();
    int rc = 0;
    uint64_t total = 0;
    for (int k = 0; k < n; k++)
        total += c->g->nodes[ids[k]].bound->nbytes;
    qbar bar;
    qbar_init(&bar, c, total);
    for (int k = 0; k < n && !rc; k++) {
        kg_node *nd = &c->g->nodes[ids[k]];
        const st_tensor *q = quant_round(c, nd->bound, gptq_hessian(cal, ids[k]), err);
        if (!q) {
            rc = -1;
            break;
        }
        qbar_add(&bar, nd->bound);
        nd->bound = q;
        nd->dtype = ST_F32; /* q's values (its codes when U8: quant.h) */
    }
    gptq_calib_free(cal);
    if (!rc)
        fprintf(stderr, "kilnc: --calibrate: GPTQ rounded %d weights in %.1f s\n", n,
                util_now() - t0);
    return rc;
}

/* NaN or Inf in the bound weights: errors, or warnings with --allow-nonfinite. */
static int check_finite(kc *c, kerr *err)
{
    const kgraph *g = c->g;
    const st_tensor **ts = xmalloc(sizeof(st_tensor *) * (size_t)(g->n ? g->n : 1));
    int n = 0;
    for (int i = 0; i < g->n; i++) /* WEIGHT nodes are distinct tensors (graph_weight) */
        if (g->nodes[i].op == KG_WEIGHT && g->nodes[i].bound)
            ts[n++] = g->nodes[i].bound;
    uint64_t *bad = xmalloc(sizeof(uint64_t) * (size_t)(n ? n : 1));
    finite_scan(ts, n, 0, bad);
    int rc = 0;
    for (int i = 0; i < n; i++) {
        if (bad[i] == UINT64_MAX)
            continue;
        const st_tensor *t = ts[i];
        char sh[128], mi[160];
        const char *file = c->weights->files[t->file].path;
        const char *kind = finite_kind(t, bad[i]);
        st_shape_str(t->ndim, t->shape, sh, sizeof sh);
        multi_index(t, bad[i], mi, sizeof mi);
        if (c->allow_nonfinite)
            kerr_add(&c->warn, "warning: %s: tensor '%s' %s: %s at index %llu%s (accepted: "
                               "--allow-nonfinite)",
                     file, t->name, sh, kind, (unsigned long long)bad[i], mi);
        else
            rc = kerr_add(err, "%s: tensor '%s' %s: %s at index %llu%s; pass --allow-nonfinite to "
                               "accept",
                          file, t->name, sh, kind, (unsigned long long)bad[i], mi);
    }
    free(bad);
    free(ts);
    return rc;
}

int pass_bind_weights(kc *c, kerr *err)
{
    kgraph *g = c->g;
    const st_set *w = c->weights;
    if (!w)
        return kerr_add(err, "%s: no checkpoint to bind weights from", c->model_dir);
    if (quant_config_read(c, err))
        return -1;
    if (c->quant_mode && c->quant)
        return kerr_add(err, "--quant %s: %s is already quantised (its config.json has a "
                             "quantization_config); drop --quant to read it as it is",
                        quant_mode_name(c->quant_mode), c->model_dir);
    unsigned char *used = xcalloc((size_t)(w->n ? w->n : 1), 1);
    uint64_t to_round = 0; /* --quant without --calibrate: the bytes rounded below */
    for (int i = 0; i < g->n; i++) { /* marked first, for closest() */
        const st_tensor *t = g->nodes[i].op == KG_WEIGHT ? st_find(w, g->nodes[i].weight) : NULL;
        if (t)
            used[t - w->tensors] = 1;
        if (t && c->quant_mode && !c->calib_path && linear_only(g, i) &&
            (t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16))
            to_round += t->nbytes;
    }
    qbar bar;
    qbar_init(&bar, c, to_round);
    int rc = 0, missing = 0;
    int *calib = xmalloc(sizeof(int) * (size_t)(g->n ? g->n : 1)), n_calib = 0;
    c->n_params = 0;
    c->n_bound = 0;
    for (int i = 0; i < g->n; i++) {
        kg_node *n = &g->nodes[i];
        if (n->op != KG_WEIGHT)
            continue;
        char where[600], a[128], b[128];
        const st_tensor *t = st_find(w, n->weight), *packed = NULL;
        if (!t) { /* perhaps stored packed as integers (X.qweight, X.weight_packed) */
            if (quant_dequant_packed(c, n->weight, used, &packed, err)) {
                rc = -1;
                continue;
            }
            t = packed;
        }
        if (!t) {
            /* the first few with a suggestion (each costs a pass over the checkpoint) */
            if (++missing > MAX_MISSING_SHOWN) {
                rc = -1;
                continue;
            }
            const char *near = closest(w, used, n->weight);
            if (near)
                rc = kerr_add(err, "%s: tensor '%s' is not in the checkpoint%s; did you mean '%s'?",
                              w->origin, n->weight, loc(n, where, sizeof where), near);
            else
                rc = kerr_add(err, "%s: tensor '%s' is not in the checkpoint%s", w->origin,
                              n->weight, loc(n, where, sizeof where));
            continue;
        }
        if (!packed)
            used[t - w->tensors] = 1;
        int same = t->ndim == n->ndim;
        for (int d = 0; same && d < n->ndim; d++)
            same = t->shape[d] == n->shape[d];
        if (!same) {
            rc = kerr_add(err, "%s: tensor '%s' has shape %s, the spec expects %s%s",
                          w->files[t->file].path, n->weight,
                          st_shape_str(t->ndim, t->shape, a, sizeof a),
                          graph_shape_str(n, b, sizeof b), loc(n, where, sizeof where));
            continue;
        }
        const st_tensor *bt = t; /* what the node computes with: t, or its fp32 dequantisation */
        if (t->dtype == ST_F8_E4M3) {
            if (!(bt = quant_dequant_fp8(c, t, used, err))) {
                rc = -1;
                continue;
            }
        } else if (!packed && t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16) {
            rc = kerr_add(err,
                          "%s: tensor '%s' has dtype %s; kiln reads F32, F16 and BF16 weights "
                          "(and F8_E4M3 ones described by config.json's quantization_config)",
                          w->files[t->file].path, n->weight, st_dtype_name(t->dtype));
            continue;
        } else if (c->quant_mode && linear_only(g, i)) {
            if (c->calib_path) { /* bound as it is until every weight is: round_calibrated */
                calib[n_calib++] = i;
            } else {
                bt = quant_round(c, t, NULL, err);
                qbar_add(&bar, t);
            }
        }
        n->bound = bt;
        n->dtype = bt->dtype == ST_U8 ? ST_F32 : bt->dtype; /* U8: quant's codes of fp32 values */
        c->n_params += t->numel;
        c->n_bound++;
    }

    if (missing > MAX_MISSING_SHOWN)
        kerr_add(err, "%s: ... and %d more tensors the spec asks for are not in the checkpoint",
                 w->origin, missing - MAX_MISSING_SHOWN);
    if (check_finite(c, err))
        rc = -1;
    if (!rc && n_calib && round_calibrated(c, calib, n_calib, err))
        rc = -1;
    free(calib);

    /* Unused tensors, minus those the spec declares it ignores. */
    const char **names = xmalloc(sizeof(char *) * (size_t)(w->n ? w->n : 1));
    int nu = 0;
    for (int i = 0; i < w->n; i++)
        if (!used[i])
            names[nu++] = w->tensors[i].name;
    unsigned char *ign = xcalloc((size_t)(nu ? nu : 1), 1);
    if (spec_filter_ignored(c->spec, names, nu, ign, err))
        rc = -1;
    c->n_unused = c->n_ignored = 0;
    for (int i = 0; i < nu; i++) {
        if (ign[i]) {
            c->n_ignored++;
            continue;
        }
        c->n_unused++;
        if (c->strict)
            rc = kerr_add(err, "%s: tensor '%s' is not used by %s (--strict)", w->origin,
                          names[i], c->spec->path);
        else
            kerr_add(&c->warn, "warning: checkpoint tensor '%s' is not used by %s", names[i],
                     c->spec->path);
    }
    free(ign);
    free(names);
    free(used);
    return rc;
}
