/* ktest_sample — kernel tests of templates/sample.cuh (see ktest.h).
 *
 * What is checked, against the CPU copy of the sampler (kb_sample_cpu and its parts, in
 * runtime/backend.c: the one CPU version of the algorithm, which the CPU backend samples with):
 *  - greedy (temperature <= 0) equals the CPU argmax exactly, ties to the lowest index, NaN
 *    logits ignored;
 *  - top_k = 1, and a peaked distribution with a small top_p, return the argmax;
 *  - a draw is reproducible (same seed and index, same ids), changes with the index, and always
 *    lies inside the top-k / top-p set;
 *  - a draw depends on the sequence's own (seed, index) only: the same in any row of any batch;
 *  - distribution: many draws (different indices) of a fixed row, compared with the expected
 *    probabilities after top-k / top-p by a chi-square bound, and draw by draw with the CPU copy
 *    (they differ only where __expf and expf round a weight differently right at an interval
 *    boundary: allowed for 0.1% of the draws) — each case through both paths of the kernel, the
 *    shared-memory shortcut and the full-row search (PREFILTER = 0);
 *  - the shortcut and the full-row path draw the same token, bit for bit, on model-like rows.
 */
#include "ktest.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/kiln_step.h"
#include "backend.h"

typedef unsigned long long u64;

/* ---- the CPU copy (runtime/backend.c) ------------------------------------------------------ */

/* The plan (argmax, kept set) of a row; the kept weights of a row under it and their sum. */
static kb_sample_plan make_plan(const float *l, int V, const kiln_sample *p)
{
    kb_sample_plan P;
    kb_sample_plan_make(l, V, p, &P);
    return P;
}

static u64 kept_weights(const float *l, int V, const kb_sample_plan *P, uint32_t *w)
{
    return kb_sample_weights(P, l, V, w);
}

/* Whether token `id` can be drawn under p (in the kept set, with a positive weight). */
static int drawable(const float *l, int V, const kiln_sample *p, int id)
{
    kb_sample_plan P = make_plan(l, V, p);
    if (P.greedy)
        return id == P.argmax;
    uint32_t *w = xmalloc(sizeof(uint32_t) * (size_t)V);
    kept_weights(l, V, &P, w);
    int ok = w[id] > 0;
    free(w);
    return ok;
}

/* ---- running the kernel ------------------------------------------------------------------ */

/* prefilter 1: the default sample<V, THREADS> (with the shortcut); 0: the full-row path only */
static CUfunction sampler(kt *t, const char *name, int V, int threads, int prefilter, int *skip)
{
    char src[768];
    snprintf(src, sizeof src,
             "#include \"sample.cuh\"\n"
             "extern \"C\" __global__ void __launch_bounds__(%d) k(const kiln_step st, "
             "const float *logits, const kiln_sample *params, int *out_ids)\n"
             "{ kiln::sample<%d, %d%s>(st, logits, params, out_ids); }\n",
             threads, V, threads, prefilter ? "" : ", 0");
    CUmodule m = kt_module(t, name, src);
    *skip = !t->compile_only && !m;
    return kt_func(t, m, "k");
}

typedef struct batch {
    int n, V, threads;
    kiln_sample *params; /* [n], host copy: batch_run sets the RNG counters */
    CUdeviceptr dl, dp, dout;
    kiln_step st;
} batch;

static void batch_open(kt *t, batch *b, const float *logits, const kiln_sample *params, int n,
                       int V, int threads)
{
    memset(b, 0, sizeof *b);
    b->n = n;
    b->V = V;
    b->threads = threads;
    b->params = xmalloc(sizeof(kiln_sample) * (size_t)n);
    memcpy(b->params, params, sizeof(kiln_sample) * (size_t)n);
    b->dl = kt_upload(t, logits, sizeof(float) * (size_t)n * V);
    b->dout = kt_alloc(t, sizeof(int) * (size_t)n);
    b->st.T = n;
    b->st.n_seqs = n;
}

/* Launches one step with sequence s at RNG counter index0 + s * stride; ids[n] gets the draws. */
static void batch_run(kt *t, batch *b, CUfunction f, const char *name, int index0, int stride,
                      int *ids)
{
    for (int s = 0; s < b->n; s++)
        b->params[s].index = index0 + s * stride;
    if (b->dp)
        kt_free(t, b->dp);
    b->dp = kt_upload(t, b->params, sizeof(kiln_sample) * (size_t)b->n);
    void *args[] = {&b->st, &b->dl, &b->dp, &b->dout};
    kt_launch(t, f, name, (unsigned)b->n, 1, 1, (unsigned)b->threads, 0, args);
    kt_download(t, ids, b->dout, sizeof(int) * (size_t)b->n);
}

static void batch_close(kt *t, batch *b)
{
    kt_free(t, b->dl);
    if (b->dp)
        kt_free(t, b->dp);
    kt_free(t, b->dout);
    free(b->params);
}

static kiln_sample sp(float temperature, int top_k, float top_p, u64 seed)
{
    kiln_sample p;
    memset(&p, 0, sizeof p);
    p.temperature = temperature;
    p.top_k = top_k;
    p.top_p = top_p;
    p.seed = seed;
    return p;
}

static int rand_int(kt *t, int n)
{
    int r = (int)((kt_randf(t) + 1.0f) * 0.5f * (float)n);
    return r < 0 ? 0 : r >= n ? n - 1 : r;
}

/* Compares ids with want[], records one row; the detail names the first mismatches. */
static void expect_ids(kt *t, const char *name, const int *ids, const int *want, int n)
{
    char detail[256];
    int bad = 0, len = 0;
    detail[0] = 0;
    for (int i = 0; i < n; i++)
        if (ids[i] != want[i]) {
            if (bad < 4 && len < 180)
                len += snprintf(detail + len, sizeof detail - (size_t)len,
                                "%sseq %d: got %d want %d", bad ? "; " : "", i, ids[i], want[i]);
            bad++;
        }
    if (!bad)
        snprintf(detail, sizeof detail, "%d sequences match", n);
    else if (bad > 4)
        snprintf(detail + len, sizeof detail - (size_t)len, " (%d mismatches)", bad);
    kt_result(t, name, t->compile_only || bad == 0, detail);
}

/* ---- cases ------------------------------------------------------------------------------- */

/* greedy: random rows, ties at the maximum, the maximum last, NaN and -inf entries */
static void t_greedy(kt *t, int V, int threads)
{
    char name[160];
    snprintf(name, sizeof name, "sample/greedy V=%d THREADS=%d", V, threads);
    if (!kt_want(t, name))
        return;
    int skip;
    CUfunction f = sampler(t, name, V, threads, 1, &skip);
    if (skip)
        return;
    enum { N = 6 };
    float *l = xmalloc(sizeof(float) * (size_t)N * V);
    kt_fill(t, l, (size_t)N * V, 8.0f);
    kiln_sample p[N];
    for (int s = 0; s < N; s++)
        p[s] = sp(0.f, rand_int(t, 50), 0.5f, 100 + s); /* top-k / top-p ignored when greedy */
    p[1].temperature = -1.f;
    float *r2 = l + 2 * (size_t)V, *r3 = l + 3 * (size_t)V, *r4 = l + 4 * (size_t)V;
    float *r5 = l + 5 * (size_t)V;
    r2[17 % V] = r2[V / 2] = r2[V - 1] = 100.f; /* ties: the lowest index wins */
    r3[V - 1] = 50.f;
    r4[0] = r4[V - 1] = 60.f;
    r5[3 % V] = NAN;
    r5[(V / 3) % V] = -INFINITY;
    r5[V - 1] = NAN;
    int want[N], ids[N];
    for (int s = 0; s < N; s++) {
        kb_sample_plan P = make_plan(l + (size_t)s * V, V, &p[s]);
        want[s] = P.argmax;
    }
    batch b;
    batch_open(t, &b, l, p, N, V, threads);
    batch_run(t, &b, f, name, 3, 0, ids);
    expect_ids(t, name, ids, want, N);
    batch_close(t, &b);
    free(l);
}

/* top_k = 1 and a peaked row with top_p = 0.01 both give the argmax */
static void t_forced(kt *t, int V, int threads)
{
    char name[160];
    snprintf(name, sizeof name, "sample/top_k=1, peaked top_p=0.01 V=%d THREADS=%d", V, threads);
    if (!kt_want(t, name))
        return;
    int skip;
    CUfunction f = sampler(t, name, V, threads, 1, &skip);
    if (skip)
        return;
    enum { N = 12 };
    float *l = xmalloc(sizeof(float) * (size_t)N * V);
    kiln_sample p[N];
    int want[N], ids[N];
    for (int s = 0; s < N; s++) {
        float *r = l + (size_t)s * V;
        if (s < 6) { /* top_k = 1 on a spread row, with and without top_p */
            kt_fill(t, r, (size_t)V, 6.0f);
            p[s] = sp(s % 2 ? 0.7f : 1.3f, 1, s < 3 ? 1.0f : 0.6f, 7 + s);
        } else { /* peaked: one logit +14 over [-1, 1); the top token has most of the mass */
            kt_fill(t, r, (size_t)V, 1.0f);
            r[rand_int(t, V)] += 14.f;
            p[s] = sp(1.0f, s < 9 ? 0 : 50, 0.01f, 7 + s);
        }
        kb_sample_plan P = make_plan(r, V, &p[s]);
        want[s] = P.argmax;
    }
    batch b;
    batch_open(t, &b, l, p, N, V, threads);
    batch_run(t, &b, f, name, 11, 0, ids);
    expect_ids(t, name, ids, want, N);
    batch_close(t, &b);
    free(l);
}

/* The same (seed, index) twice gives the same ids, the next index other ids; every draw lies
 * in the top-k / top-p set
 * (checked against the set for top_p + 0.02, so a boundary token that __expf and expf weigh a
 * hair apart cannot fail it; top-k is exact). */
static void t_reproducible(kt *t, int V, int threads)
{
    char name[160];
    snprintf(name, sizeof name, "sample/reproducible V=%d THREADS=%d", V, threads);
    if (!kt_want(t, name))
        return;
    int skip;
    CUfunction f = sampler(t, name, V, threads, 1, &skip);
    if (skip)
        return;
    enum { N = 16 };
    static const float temps[] = {0.7f, 1.0f, 1.3f};
    static const float tops[] = {1.0f, 0.9f, 0.5f, 0.95f};
    const int ks[] = {0, 50, 1000, V + 5, -1};
    float *l = xmalloc(sizeof(float) * (size_t)N * V);
    kt_fill(t, l, (size_t)N * V, 4.0f);
    kiln_sample p[N];
    for (int s = 0; s < N; s++)
        p[s] = sp(temps[s % 3], ks[s % 5], tops[s % 4], 1000 + (u64)s * 7919);
    int a[N], b2[N], c[N];
    batch b;
    batch_open(t, &b, l, p, N, V, threads);
    batch_run(t, &b, f, name, 7, 0, a);
    batch_run(t, &b, f, name, 7, 0, b2);
    batch_run(t, &b, f, name, 8, 0, c);
    batch_close(t, &b);
    char n2[200], detail[200];
    snprintf(n2, sizeof n2, "%s same index", name);
    expect_ids(t, n2, b2, a, N);
    int outside = 0, first = -1, first_id = -1, changed = 0;
    for (int s = 0; s < N; s++) {
        kiln_sample loose = p[s];
        if (loose.top_p < 1.f)
            loose.top_p = fminf(1.f, loose.top_p + 0.02f);
        for (int r = 0; r < 2; r++) {
            int id = r ? c[s] : a[s];
            if (id < 0 || id >= V || !drawable(l + (size_t)s * V, V, &loose, id)) {
                outside++;
                if (first < 0)
                    first = s, first_id = id;
            }
        }
        changed += a[s] != c[s];
    }
    if (outside)
        snprintf(detail, sizeof detail, "%d draws outside the top-k/top-p set (first: seq %d, id %d)",
                 outside, first, first_id);
    else
        snprintf(detail, sizeof detail, "%d draws inside their sets; %d of %d changed with the index",
                 2 * N, changed, N);
    snprintf(n2, sizeof n2, "%s in set", name);
    kt_result(t, n2, t->compile_only || outside == 0, detail);
    free(l);
}

/* A sequence draws from its own (seed, index) only: 64 sequences with their own parameters draw
 * the same tokens in reverse order, and each of four alone (issue 10: a seeded request draws the
 * same stream alone or among 63 others). */
static void t_batch_invariant(kt *t, int V, int threads)
{
    char name[160];
    snprintf(name, sizeof name, "sample/same draw in any row of any batch V=%d THREADS=%d", V,
             threads);
    if (!kt_want(t, name))
        return;
    int skip;
    CUfunction f = sampler(t, name, V, threads, 1, &skip);
    if (skip)
        return;
    enum { N = 64 };
    static const float temps[] = {0.7f, 1.0f, 1.3f, 0.f};
    static const float tops[] = {1.0f, 0.9f, 0.5f};
    static const int ks[] = {0, 50, 5, 1000, 0};
    float *l = xmalloc(sizeof(float) * (size_t)N * V), *rl = xmalloc(sizeof(float) * (size_t)N * V);
    kt_fill(t, l, (size_t)N * V, 3.0f);
    kiln_sample p[N], rp[N];
    for (int s = 0; s < N; s++) {
        p[s] = sp(temps[s % 4], ks[s % 5], tops[s % 3], 500 + (u64)s);
        p[s].index = 3 * s; /* as batch_run(index0 = 0, stride = 3) sets it */
        rp[N - 1 - s] = p[s];
        memcpy(rl + (size_t)(N - 1 - s) * V, l + (size_t)s * V, sizeof(float) * (size_t)V);
    }
    int a[N], r[N], want[N];
    batch b;
    batch_open(t, &b, l, p, N, V, threads);
    batch_run(t, &b, f, name, 0, 3, a);
    batch_close(t, &b);
    batch_open(t, &b, rl, rp, N, V, threads);
    batch_run(t, &b, f, name, 3 * (N - 1), -3, r); /* row N-1-s holds sequence s at index 3s */
    batch_close(t, &b);
    for (int s = 0; s < N; s++)
        want[s] = r[N - 1 - s];
    char n2[200];
    snprintf(n2, sizeof n2, "%s reversed", name);
    expect_ids(t, n2, a, want, N);
    int alone[4];
    for (int j = 0; j < 4; j++) {
        int s = (j * 29 + 5) % N;
        batch_open(t, &b, l + (size_t)s * V, &p[s], 1, V, threads);
        batch_run(t, &b, f, name, p[s].index, 0, &alone[j]);
        batch_close(t, &b);
        want[j] = a[s];
    }
    snprintf(n2, sizeof n2, "%s alone", name);
    expect_ids(t, n2, alone, want, 4);
    free(l);
    free(rl);
}

/* Whether sample.cuh's shortcut applies to a row (the kernel's rule, with expf for __expf: an
 * estimate for reporting, exact except right at a cut). */
static int shortcut_applies(const float *l, int V, const kiln_sample *p)
{
    static const float cuts[8] = {-2.f, -4.f, -6.f, -8.f, -10.f, -13.f, -16.f, -22.5f};
    kb_sample_plan P = make_plan(l, V, p);
    int use_k = p->top_k > 0 && p->top_k < V, use_p = p->top_p > 0.f && p->top_p < 1.f;
    if (P.greedy || (!use_k && !use_p))
        return 0;
    u64 cnt[8] = {0}, mass[8] = {0}, all = 0;
    for (int i = 0; i < V; i++) {
        float y = (l[i] - P.m) * P.inv_t; /* the rows of t_paths hold no NaN */
        uint32_t w = (uint32_t)lrintf(expf(y) * 2147483648.0f);
        all += w;
        for (int j = 0; j < 8; j++)
            if (y >= cuts[j]) {
                cnt[j]++;
                mass[j] += w;
            }
    }
    u64 target = (u64)ceil((double)fmaxf(p->top_p, 0.f) * (double)all);
    target = target < 1 ? 1 : target > all ? all : target;
    for (int j = 0; j < 8; j++)
        if (use_k ? cnt[j] >= (u64)p->top_k || j == 7 : mass[j] >= target)
            return cnt[j] <= 3072;
    return 0;
}

/* The shortcut and the full-row path draw the same token, bit for bit, on rows shaped like a
 * trained model's (a few hundred likely tokens over a flat tail). */
static void t_paths(kt *t, int V, int threads)
{
    char name[160];
    snprintf(name, sizeof name, "sample/shortcut == full-row V=%d THREADS=%d", V, threads);
    if (!kt_want(t, name))
        return;
    int skip1, skip0;
    CUfunction f1 = sampler(t, name, V, threads, 1, &skip1);
    CUfunction f0 = sampler(t, name, V, threads, 0, &skip0);
    if (skip1 || skip0)
        return;
    enum { N = 60 };
    static const float temps[] = {0.7f, 1.0f, 1.3f};
    static const int ks[] = {0, 1, 5, 50, 200, 4000};
    static const float tops[] = {1.0f, 0.5f, 0.9f, 0.99f, 0.95f};
    float *l = xmalloc(sizeof(float) * (size_t)N * V);
    kt_fill(t, l, (size_t)N * V, 2.0f);
    kiln_sample p[N];
    int through = 0;
    for (int s = 0; s < N; s++) {
        float *r = l + (size_t)s * V;
        for (int j = 0; j < 300; j++)
            r[rand_int(t, V)] += 14.f + 6.f * kt_randf(t);
        if (s % 10 == 9) /* 12 tokens so far above the rest that nothing else weighs anything */
            for (int j = 0; j < 12; j++)
                r[rand_int(t, V)] = 60.f + 8.f * kt_randf(t);
        p[s] = sp(temps[s % 3], ks[s % 6], tops[s % 5], 31 + (u64)s);
        through += shortcut_applies(r, V, &p[s]);
    }
    int a[N], b[N];
    batch bt;
    batch_open(t, &bt, l, p, N, V, threads);
    int bad = 0;
    for (int index = 0; index < 3; index++) {
        batch_run(t, &bt, f1, name, index, 0, a);
        batch_run(t, &bt, f0, name, index, 0, b);
        for (int s = 0; s < N; s++)
            bad += a[s] != b[s];
    }
    batch_close(t, &bt);
    char detail[200];
    snprintf(detail, sizeof detail, "%d of %d draws differ; %d of %d rows take the shortcut", bad,
             3 * N, through, N);
    kt_result(t, name, t->compile_only || bad == 0, detail);
    if (through < N / 2) {
        char n2[200];
        snprintf(n2, sizeof n2, "%s setup", name);
        kt_result(t, n2, 0, detail);
    }
    free(l);
}

/* Distribution of many draws of one row (the same row for n sequences, `launches` steps, each
 * draw at its own RNG counter):
 * chi-square against the kept set's probabilities w_i / W, every draw inside the set, and draw
 * by draw agreement with the CPU copy. want_kept: the size of the kept set the case was
 * designed for (a check of the test itself). */
static void t_distribution1(kt *t, const char *label, int V, int threads, const float *row,
                            kiln_sample p, int want_kept, int n, int launches, int prefilter)
{
    char name[200];
    snprintf(name, sizeof name, "sample/distribution V=%d %s T=%.2g k=%d p=%.4g%s", V, label,
             p.temperature, p.top_k, p.top_p, prefilter ? "" : " full-row");
    if (!kt_want(t, name))
        return;
    int skip;
    CUfunction f = sampler(t, name, V, threads, prefilter, &skip);
    if (skip)
        return;
    float *l = xmalloc(sizeof(float) * (size_t)n * V);
    kiln_sample *ps = xmalloc(sizeof(kiln_sample) * (size_t)n);
    for (int s = 0; s < n; s++) {
        memcpy(l + (size_t)s * V, row, sizeof(float) * (size_t)V);
        ps[s] = p;
    }
    kb_sample_plan P = make_plan(row, V, &p);
    uint32_t *w = xmalloc(sizeof(uint32_t) * (size_t)V);
    u64 Wi = kept_weights(row, V, &P, w);
    double W = (double)Wi;
    int nk = 0; /* the support: kept tokens of positive weight (a kept token of weight 0 is
                 * never drawn) */
    for (int i = 0; i < V; i++)
        nk += w[i] > 0;
    u64 *count = xcalloc((size_t)V, sizeof(u64));
    int *ids = xmalloc(sizeof(int) * (size_t)n);
    long outside = 0, disagree = 0, total = (long)n * launches;
    batch b;
    batch_open(t, &b, l, ps, n, V, threads);
    for (int k = 0; k < launches; k++) {
        const int index0 = 1000 + k * n;
        batch_run(t, &b, f, name, index0, 1, ids);
        for (int s = 0; s < n; s++) {
            int id = ids[s];
            if (id < 0 || id >= V || w[id] == 0) {
                outside++;
                continue;
            }
            count[id]++;
            kiln_sample q = p;
            q.index = index0 + s;
            disagree += id != kb_sample_draw(&P, w, Wi, V, &q, threads);
        }
    }
    batch_close(t, &b);
    double chi2 = 0;
    int worst = -1;
    double worst_c = -1;
    for (int i = 0; i < V; i++) {
        if (w[i] == 0)
            continue;
        double e = (double)total * w[i] / W;
        double c = e > 0 ? ((double)count[i] - e) * ((double)count[i] - e) / e : 0;
        chi2 += c;
        if (c > worst_c) {
            worst_c = c;
            worst = i;
        }
    }
    int df = nk - 1;
    /* P(chi2_df > bound) is below ~1e-4 for every df here */
    double bound = df + 6.0 * sqrt(2.0 * df) + 6.0;
    char detail[256], n2[240];
    if (nk != want_kept) {
        snprintf(n2, sizeof n2, "%s setup", name);
        snprintf(detail, sizeof detail, "the CPU plan keeps %d tokens, the case wants %d", nk,
                 want_kept);
        kt_result(t, n2, 0, detail);
    }
    snprintf(n2, sizeof n2, "%s chi2", name);
    if (worst >= 0)
        snprintf(detail, sizeof detail,
                 "chi2 %.1f (bound %.1f, df %d, %ld draws, %ld outside the set of %d); worst id %d: "
                 "%llu drawn, %.1f expected",
                 chi2, bound, df, total, outside, nk, worst, count[worst],
                 (double)total * w[worst] / W);
    else
        snprintf(detail, sizeof detail, "empty set");
    kt_result(t, n2, t->compile_only || (outside == 0 && chi2 <= bound), detail);
    snprintf(n2, sizeof n2, "%s replica", name);
    snprintf(detail, sizeof detail, "%ld of %ld draws differ from the CPU replica (allowed %ld)",
             disagree, total, total / 1000);
    kt_result(t, n2, t->compile_only || disagree <= total / 1000, detail);
    free(l), free(ps), free(count), free(ids), free(w);
}

static int cmp_double_desc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Both paths of the kernel (with the shortcut, and full-row only) on the same case. */
static void t_distribution(kt *t, const char *label, int V, int threads, const float *row,
                           kiln_sample p, int want_kept, int n, int launches)
{
    t_distribution1(t, label, V, threads, row, p, want_kept, n, launches, 1);
    t_distribution1(t, label, V, threads, row, p, want_kept, n, launches, 0);
}

/* top_p halfway between the cumulative probabilities of the `keep` - 1 and the `keep` most
 * likely tokens (after top-k): the nucleus is `keep` tokens with a wide margin. */
static float top_p_for(const float *row, int V, float temperature, int top_k, int keep)
{
    kiln_sample p = sp(temperature, top_k, 1.0f, 0);
    kb_sample_plan P = make_plan(row, V, &p);
    uint32_t *kw = xmalloc(sizeof(uint32_t) * (size_t)V);
    kept_weights(row, V, &P, kw);
    double *w = xmalloc(sizeof(double) * (size_t)V), W = 0;
    for (int i = 0; i < V; i++)
        W += w[i] = kw[i]; /* 0 for the tokens top-k drops */
    free(kw);
    qsort(w, (size_t)V, sizeof(double), cmp_double_desc);
    /* the nucleus is the smallest set reaching top_p: keep - 1 tokens fall short of the
     * midpoint, keep tokens pass it */
    double c0 = 0;
    for (int i = 0; i < keep - 1; i++)
        c0 += w[i];
    double c1 = c0 + w[keep - 1];
    free(w);
    return (float)((c0 + c1) / 2 / W);
}

void ktest_sample(kt *t)
{
    /* greedy, forced and reproducibility over real vocabulary sizes */
    t_greedy(t, 8, 32);
    t_greedy(t, 1000, 256);
    t_greedy(t, 32000, 256);
    t_greedy(t, 50257, 1024); /* V % 4 != 0: the one-token loads */
    t_greedy(t, 151936, 1024);
    t_forced(t, 1000, 128);
    t_forced(t, 128256, 1024);
    t_reproducible(t, 32000, 256);
    t_reproducible(t, 151936, 1024);
    t_batch_invariant(t, 32000, 256);
    t_batch_invariant(t, 151936, 1024);
    t_paths(t, 32000, 256);
    t_paths(t, 151936, 1024);

    /* distributions of a fixed row of 8 (shuffled, not sorted) */
    static const float L8[8] = {0.3f, 2.0f, -1.0f, 1.2f, 0.9f, -0.4f, 1.7f, 0.1f};
    static const float TIES[8] = {1.0f, 0.2f, 1.0f, -0.5f, 1.0f, 0.0f, 0.5f, -1.0f};
    t_distribution(t, "plain", 8, 32, L8, sp(1.0f, 0, 1.0f, 1234), 8, 4096, 16);
    t_distribution(t, "top-k", 8, 256, L8, sp(0.7f, 5, 1.0f, 1234), 5, 4096, 16);
    t_distribution(t, "top-p 4 of 8", 8, 32, L8, sp(1.0f, 0, top_p_for(L8, 8, 1.0f, 0, 4), 99),
                   4, 4096, 16);
    t_distribution(t, "top-k+top-p 5 of 6", 8, 64, L8,
                   sp(1.5f, 6, top_p_for(L8, 8, 1.5f, 6, 5), 5), 5, 4096, 16);
    /* ties at the k-th logit are all kept (TopKLogitsWarper): tokens 0, 2, 4 at 1/3 each */
    t_distribution(t, "tied top-k", 8, 32, TIES, sp(1.0f, 2, 1.0f, 77), 3, 4096, 16);

    /* a large row: four dominant tokens among 50000, through the full-vocabulary searches */
    enum { VB = 50000 };
    float *big = xmalloc(sizeof(float) * VB);
    kt_fill(t, big, VB, 2.0f);
    static const float boost[4] = {16.f, 15.5f, 15.f, 14.f};
    for (int j = 0; j < 4; j++)
        big[(j * 12347 + 101) % VB] = boost[j];
    t_distribution(t, "top-k 3", VB, 512, big, sp(1.0f, 3, 1.0f, 4242), 3, 64, 32);
    t_distribution(t, "top-p 4", VB, 512, big, sp(1.0f, 0, top_p_for(big, VB, 1.0f, 0, 4), 4243),
                   4, 64, 32);
    /* five tokens so far above the rest that no other token has any weight, and k = 100: the
     * top-k set holds 95 tokens that can never be drawn */
    for (int i = 0; i < VB; i++)
        big[i] = 2.0f * kt_randf(t);
    static const float far[5] = {64.f, 63.5f, 63.f, 62.f, 61.f};
    for (int j = 0; j < 5; j++)
        big[(j * 9973 + 7) % VB] = far[j];
    t_distribution(t, "5 far above", VB, 1024, big, sp(1.0f, 100, 1.0f, 4244), 5, 64, 32);
    free(big);
}
