/* test_backend — what the step backends share (runtime/backend.c): kb_logprobs and the CPU copy
 * of the GPU sampler, kb_sample_cpu.
 *
 * kb_logprobs against log-softmax computed here in long double (ties, NaN as -inf, rows without a
 * finite maximum, n = 0). kb_sample_cpu: greedy (temperature 0, negative, NaN; no finite maximum)
 * and top_k = 1 return the argmax with ties to the lowest id; a draw is a function of
 * (seed, index) only (repeatable, and other indices draw other tokens); top_p = 0 is off, as in a
 * zeroed struct; and draws over many indices follow softmax(l / T) restricted to the top-k and
 * top-p sets (a chi-square bound). Whether the GPU kernel draws the same tokens is
 * tests/gpu/ktest_sample.c's job (on the GPU machine).
 */
#include "testutil.h"

#include "backend.h"

static kiln_sample sp(float temperature, int top_k, float top_p, unsigned long long seed, int index)
{
    kiln_sample p;
    memset(&p, 0, sizeof p);
    p.temperature = temperature;
    p.top_k = top_k;
    p.top_p = top_p;
    p.seed = seed;
    p.index = index;
    return p;
}

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static float randf(void) /* uniform in [-1, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* ---------------------------------------------------------------- kb_logprobs */

static void logprobs_basic(void **state)
{
    (void)state;
    const float l[7] = {1.0f, 3.0f, 2.0f, 3.0f, -INFINITY, NAN, -0.5f};
    long double z = expl(1.0L) + 2 * expl(3.0L) + expl(2.0L) + expl(-0.5L);
    long double lse = logl(z);
    float lp;
    int32_t ids[KB_MAX_LOGPROBS];
    float lps[KB_MAX_LOGPROBS];
    kb_logprobs(l, 7, 2, 5, &lp, ids, lps);
    assert_float_equal(lp, (float)(2.0L - lse), 1e-6);
    /* by value, ties to the lower id; -inf and NaN last, in id order */
    const int32_t want[5] = {1, 3, 2, 0, 6};
    const long double wantv[5] = {3, 3, 2, 1, -0.5L};
    for (int j = 0; j < 5; j++) {
        assert_int_equal(ids[j], want[j]);
        assert_float_equal(lps[j], (float)(wantv[j] - lse), 1e-6);
    }
    /* the probabilities of the row sum to 1 */
    double s = 0;
    for (int i = 0; i < 7; i++) {
        kb_logprobs(l, 7, i, 0, &lp, ids, lps);
        s += exp(lp);
    }
    assert_float_equal(s, 1.0, 1e-6);
    kb_logprobs(l, 7, 5, 1, &lp, ids, lps); /* NaN: probability 0 */
    assert_true(isinf(lp) && lp < 0);
    assert_int_equal(ids[0], 1);
}

/* A large row: huge logits do not overflow (the maximum is subtracted first), and the top 5 of
 * 50,000 are found wherever they are. */
static void logprobs_large(void **state)
{
    (void)state;
    enum { V = 50000 };
    float *l = xmalloc(sizeof(float) * V);
    for (int i = 0; i < V; i++)
        l[i] = 1000.0f + randf();
    const int top[5] = {49999, 7, 25000, 3, 12345};
    for (int j = 0; j < 5; j++)
        l[top[j]] = 1010.0f - (float)j;
    long double z = 0;
    for (int i = 0; i < V; i++)
        z += expl((long double)l[i] - 1010.0L);
    long double lse = 1010.0L + logl(z);
    float lp;
    int32_t ids[KB_MAX_LOGPROBS];
    float lps[KB_MAX_LOGPROBS];
    kb_logprobs(l, V, 100, 5, &lp, ids, lps);
    assert_float_equal(lp, (float)((long double)l[100] - lse), 1e-4);
    for (int j = 0; j < 5; j++) {
        assert_int_equal(ids[j], top[j]);
        assert_float_equal(lps[j], (float)((long double)l[top[j]] - lse), 1e-4);
    }
    free(l);
}

/* Without a finite maximum: the tokens at +inf share the mass; all -inf (or NaN) is uniform. */
static void logprobs_nonfinite(void **state)
{
    (void)state;
    float lp;
    int32_t ids[KB_MAX_LOGPROBS];
    float lps[KB_MAX_LOGPROBS];
    const float a[4] = {0.0f, INFINITY, 5.0f, INFINITY};
    kb_logprobs(a, 4, 3, 2, &lp, ids, lps);
    assert_float_equal(lp, -logf(2.0f), 1e-6);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 3);
    kb_logprobs(a, 4, 2, 0, &lp, ids, lps);
    assert_true(isinf(lp) && lp < 0);
    const float b[4] = {-INFINITY, NAN, -INFINITY, NAN};
    kb_logprobs(b, 4, 1, 3, &lp, ids, lps);
    assert_float_equal(lp, -logf(4.0f), 1e-6);
    for (int j = 0; j < 3; j++) {
        assert_int_equal(ids[j], j);
        assert_float_equal(lps[j], -logf(4.0f), 1e-6);
    }
}

/* ---------------------------------------------------------------- kb_sample_cpu */

static int argmax(const float *l, int V)
{
    int best = 0;
    for (int i = 1; i < V; i++)
        if (!isnan(l[i]) && (isnan(l[best]) || l[i] > l[best]))
            best = i;
    return best;
}

/* temperature 0, negative or NaN is greedy whatever top-k / top-p say; ties go to the lowest id;
 * NaN logits are ignored; a row without a finite maximum is greedy too */
static void sample_greedy(void **state)
{
    (void)state;
    enum { V = 1000 };
    float l[V];
    const float temps[3] = {0.0f, -1.0f, NAN};
    for (int c = 0; c < 30; c++) {
        for (int i = 0; i < V; i++)
            l[i] = 8.0f * randf();
        if (c % 3 == 1)
            l[17] = l[500] = l[V - 1] = 100.0f;
        if (c % 3 == 2)
            l[0] = NAN, l[(c * 37) % V] = -INFINITY;
        kiln_sample p = sp(temps[c % 3], c % 7, 0.5f, (unsigned long long)c, c);
        int want = argmax(l, V);
        assert_int_equal(kb_sample_cpu(l, V, &p, KILN_SAMPLE_THREADS), want);
        if (c % 3 == 1)
            assert_int_equal(want, 17);
    }
    for (int i = 0; i < V; i++)
        l[i] = randf();
    l[300] = INFINITY; /* no finite maximum: greedy even at temperature 1 */
    kiln_sample p = sp(1.0f, 0, 1.0f, 5, 0);
    assert_int_equal(kb_sample_cpu(l, V, &p, KILN_SAMPLE_THREADS), 300);
}

/* top_k = 1 keeps only the argmax, with or without top_p, at any temperature, seed and index */
static void sample_top_k_1(void **state)
{
    (void)state;
    enum { V = 4096 };
    float *l = xmalloc(sizeof(float) * V);
    for (int c = 0; c < 40; c++) {
        for (int i = 0; i < V; i++)
            l[i] = 4.0f * randf();
        kiln_sample p = sp(c % 2 ? 0.7f : 1.5f, 1, c % 4 < 2 ? 1.0f : 0.9f, 100 + c, c * 3);
        assert_int_equal(kb_sample_cpu(l, V, &p, KILN_SAMPLE_THREADS), argmax(l, V));
    }
    free(l);
}

/* A draw depends on (seed, index) only: the same pair gives the same token, other indices and
 * other seeds give other tokens on a nearly flat row. */
static void sample_seeded(void **state)
{
    (void)state;
    enum { V = 64, N = 200 };
    float l[V];
    for (int i = 0; i < V; i++)
        l[i] = 0.1f * randf();
    int32_t a[N], seen[V] = {0};
    int changed = 0, distinct = 0, other_seed = 0;
    for (int k = 0; k < N; k++) {
        kiln_sample p = sp(1.0f, 0, 1.0f, 42, k);
        a[k] = kb_sample_cpu(l, V, &p, KILN_SAMPLE_THREADS);
        assert_true(a[k] >= 0 && a[k] < V);
        assert_int_equal(kb_sample_cpu(l, V, &p, KILN_SAMPLE_THREADS), a[k]);
        distinct += !seen[a[k]]++;
        changed += k > 0 && a[k] != a[k - 1];
        kiln_sample q = sp(1.0f, 0, 1.0f, 43, k);
        other_seed += kb_sample_cpu(l, V, &q, KILN_SAMPLE_THREADS) != a[k];
    }
    /* 200 draws over 64 almost equally likely tokens: about 61 distinct ones and 197 changes
     * from one index to the next are expected; these bounds fail only for a broken counter */
    assert_true(distinct >= 40);
    assert_true(changed >= 150);
    assert_true(other_seed >= 150);
    /* top_p = 0 is off, like 1 (a zeroed struct samples plainly) */
    for (int k = 0; k < 20; k++) {
        kiln_sample p0 = sp(1.0f, 0, 0.0f, 9, k), p1 = sp(1.0f, 0, 1.0f, 9, k);
        assert_int_equal(kb_sample_cpu(l, V, &p0, KILN_SAMPLE_THREADS),
                         kb_sample_cpu(l, V, &p1, KILN_SAMPLE_THREADS));
    }
}

/* Draws at indices 0 .. n-1 of one row against softmax(l / T) over the kept set: every draw in
 * the set, chi-square within a bound exceeded with probability ~1e-4, and the set's size. */
static void check_distribution(const float *l, int V, kiln_sample p, int want_kept, int n)
{
    double *prob = xcalloc((size_t)V, sizeof(double));
    long *count = xcalloc((size_t)V, sizeof(long));
    /* expected: exp((l - max) / T) normalised over the tokens the case keeps (computed here
     * from the definition: top-k by sorting, top-p as the smallest most-likely prefix) */
    double mx = -INFINITY, z = 0;
    for (int i = 0; i < V; i++)
        mx = fmax(mx, l[i]);
    int *ord = xmalloc(sizeof(int) * (size_t)V);
    for (int i = 0; i < V; i++)
        ord[i] = i;
    for (int i = 1; i < V; i++) /* insertion sort by logit, descending (V is small) */
        for (int j = i; j > 0 && l[ord[j]] > l[ord[j - 1]]; j--) {
            int t = ord[j];
            ord[j] = ord[j - 1];
            ord[j - 1] = t;
        }
    int keep = p.top_k > 0 && p.top_k < V ? p.top_k : V;
    for (int j = 0; j < keep; j++)
        z += exp((l[ord[j]] - mx) / p.temperature);
    if (p.top_p > 0 && p.top_p < 1) {
        double c = 0;
        for (int j = 0; j < keep; j++) {
            c += exp((l[ord[j]] - mx) / p.temperature);
            if (c >= p.top_p * z) {
                keep = j + 1;
                z = c;
                break;
            }
        }
    }
    assert_int_equal(keep, want_kept);
    for (int j = 0; j < keep; j++)
        prob[ord[j]] = exp((l[ord[j]] - mx) / p.temperature) / z;
    /* the plan and weights once, then a draw per index (kb_sample_cpu in full for some) */
    kb_sample_plan plan;
    kb_sample_plan_make(l, V, &p, &plan);
    assert_false(plan.greedy);
    uint32_t *w = xmalloc(sizeof(uint32_t) * (size_t)V);
    uint64_t total = kb_sample_weights(&plan, l, V, w);
    for (int k = 0; k < n; k++) {
        p.index = k;
        int id = kb_sample_draw(&plan, w, total, V, &p, KILN_SAMPLE_THREADS);
        if (k % 97 == 0)
            assert_int_equal(kb_sample_cpu(l, V, &p, KILN_SAMPLE_THREADS), id);
        assert_true(id >= 0 && id < V);
        if (prob[id] == 0)
            fail_msg("index %d drew token %d, outside the kept set", k, id);
        count[id]++;
    }
    double chi2 = 0;
    for (int i = 0; i < V; i++)
        if (prob[i] > 0) {
            double e = n * prob[i];
            chi2 += (count[i] - e) * (count[i] - e) / e;
        }
    int df = keep - 1;
    double bound = df + 6.0 * sqrt(2.0 * df) + 6.0;
    if (chi2 > bound)
        fail_msg("chi2 %.1f over %d draws exceeds %.1f (df %d)", chi2, n, bound, df);
    free(prob), free(count), free(ord), free(w);
}

static void sample_distribution(void **state)
{
    (void)state;
    static const float L8[8] = {0.3f, 2.0f, -1.0f, 1.2f, 0.9f, -0.4f, 1.7f, 0.1f};
    check_distribution(L8, 8, sp(1.0f, 0, 1.0f, 1234, 0), 8, 40000);
    check_distribution(L8, 8, sp(0.7f, 3, 1.0f, 77, 0), 3, 40000);
    /* cumulative probabilities at T = 1: 0.334, 0.581, 0.731, 0.842, ...: top_p 0.66 keeps 3;
     * of the top 6 at T = 1.5: 0.287, 0.521, 0.689, 0.827, 0.919, 1: top_p 0.87 keeps 5 */
    check_distribution(L8, 8, sp(1.0f, 0, 0.66f, 5, 0), 3, 40000);
    check_distribution(L8, 8, sp(1.5f, 6, 0.87f, 6, 0), 5, 40000);
    /* the thread-major layout changes which token a given u picks, not the distribution */
    enum { V = 3000 };
    float *l = xmalloc(sizeof(float) * V);
    for (int i = 0; i < V; i++)
        l[i] = randf() - 20.0f;
    for (int j = 0; j < 6; j++)
        l[(j * 977 + 5) % V] = 3.0f - 0.5f * (float)j;
    check_distribution(l, V, sp(1.0f, 6, 1.0f, 8, 0), 6, 20000);
    int differ = 0;
    for (int k = 0; k < 200; k++) {
        kiln_sample p = sp(1.0f, 6, 1.0f, 8, k);
        differ += kb_sample_cpu(l, V, &p, KILN_SAMPLE_THREADS) != kb_sample_cpu(l, V, &p, 32);
    }
    assert_true(differ > 20);
    free(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(logprobs_basic),     cmocka_unit_test(logprobs_large),
        cmocka_unit_test(logprobs_nonfinite), cmocka_unit_test(sample_greedy),
        cmocka_unit_test(sample_top_k_1),     cmocka_unit_test(sample_seeded),
        cmocka_unit_test(sample_distribution),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
