/* backend — what the two step backends share (backend.h): the log-softmax behind logprobs, and
 * the CPU copy of the GPU sampler.
 *
 * kb_sample_cpu is templates/sample.cuh's definition, written for clarity instead of speed: it
 * sorts the row's order keys to find the top-k and top-p thresholds where the kernel
 * binary-searches them, which yields the same thresholds. Everything else is the kernel's own
 * arithmetic, in the same float operations: NaN logits count as -inf, weights are
 * round(exp((l - m) / T) * 2^31) (expf here, __expf there: the one place the two can differ, by
 * one unit of a weight), the kept weights are summed exactly in 64 bits, u comes from the
 * splitmix64 hash of (seed, index), r = floor(u * W), and the kept tokens are laid end to end in
 * thread-major order. Change one side, change the other: tests/gpu/ktest_sample.c compares them
 * draw by draw on the GPU.
 */
#include "backend.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- logprobs */

/* NaN -> -inf, -0 -> +0 (sample.cuh's sample_clean, on the bits). */
static float clean(float l)
{
    uint32_t u;
    memcpy(&u, &l, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        u = 0xff800000u;
    else if ((u & 0x7fffffffu) == 0)
        u = 0;
    memcpy(&l, &u, 4);
    return l;
}

void kb_logprobs(const float *logits, int vocab, int32_t token, int n, float *logprob,
                 int32_t *top_ids, float *top_logprobs)
{
    assert(vocab >= 1 && token >= 0 && token < vocab && n >= 0 && n <= KB_MAX_LOGPROBS);
    /* the maximum, how many tokens reach it, and the n largest (value, then lower id) */
    double m = -INFINITY;
    long at_max = 0;
    float bv[KB_MAX_LOGPROBS];
    int32_t bi[KB_MAX_LOGPROBS];
    int nb = 0;
    for (int i = 0; i < vocab; i++) {
        float v = clean(logits[i]);
        if (v > m) {
            m = v;
            at_max = 0;
        }
        at_max += v == m;
        if (n && (nb < n || v > bv[nb - 1])) { /* strict: an equal later id loses the tie */
            int j = nb < n ? nb++ : n - 1;
            for (; j > 0 && v > bv[j - 1]; j--) {
                bv[j] = bv[j - 1];
                bi[j] = bi[j - 1];
            }
            bv[j] = v;
            bi[j] = i;
        }
    }
    /* log Z = m + log sum exp(l - m). Without a finite maximum the limit is taken: the tokens at
     * +inf share the mass (all of them when every logit is -inf or NaN) */
    double lse = 0;
    if (isfinite(m)) {
        double s = 0;
        for (int i = 0; i < vocab; i++)
            s += exp((double)clean(logits[i]) - m);
        lse = m + log(s);
    }
#define LP(v) \
    (isfinite(m) ? (double)(v) - lse : (double)(v) == m ? -log((double)at_max) : -INFINITY)
    *logprob = (float)LP(clean(logits[token]));
    for (int j = 0; j < nb; j++) {
        top_ids[j] = bi[j];
        top_logprobs[j] = (float)LP(bv[j]);
    }
#undef LP
}

/* ---------------------------------------------------------------- the sampler */

/* The splitmix64 finaliser, and the counter-based uniform in [0, 1) of sample.cuh. */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double uniform(uint64_t seed, uint64_t index)
{
    const uint64_t G = 0x9E3779B97F4A7C15ull;
    uint64_t h = mix64(seed + G);
    h = mix64(h + (index + 1) * G);
    return (double)(h >> 11) * (1.0 / 9007199254740992.0);
}

/* Order-preserving key of a cleaned float: a < b <=> key(a) < key(b). */
static uint32_t key_of(float l)
{
    uint32_t u;
    memcpy(&u, &l, 4);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static uint32_t weight_of(float l, float m, float inv_t)
{
    float y = (l - m) * inv_t;
    return (uint32_t)lrintf(expf(y) * 2147483648.0f);
}

typedef struct kw {
    uint32_t key, w;
} kw;

static int cmp_kw_desc(const void *a, const void *b)
{
    uint32_t x = ((const kw *)a)->key, y = ((const kw *)b)->key;
    return x < y ? 1 : x > y ? -1 : 0;
}

void kb_sample_plan_make(const float *logits, int vocab, const kiln_sample *sp, kb_sample_plan *p)
{
    assert(vocab >= 1);
    memset(p, 0, sizeof *p);
    float m = -INFINITY;
    for (int i = 0; i < vocab; i++) {
        float c = clean(logits[i]);
        if (i == 0 || c > m) {
            m = c;
            p->argmax = i;
        }
    }
    p->m = m;
    if (!(sp->temperature > 0.f) || !isfinite(m)) {
        p->greedy = 1;
        return;
    }
    p->inv_t = 1.0f / sp->temperature;
    kw *a = xmalloc(sizeof(kw) * (size_t)vocab);
    for (int i = 0; i < vocab; i++) {
        float c = clean(logits[i]);
        a[i].key = key_of(c);
        a[i].w = weight_of(c, m, p->inv_t);
    }
    qsort(a, (size_t)vocab, sizeof(kw), cmp_kw_desc);
    /* top-k: every token at or above the k-th largest logit (ties at it kept) */
    uint32_t thr = 0;
    if (sp->top_k > 0 && sp->top_k < vocab)
        thr = a[sp->top_k - 1].key;
    /* top-p: the largest logit whose tokens (all of its ties) reach ceil(top_p * kept) */
    if (sp->top_p > 0.f && sp->top_p < 1.f) {
        uint64_t kept = 0;
        for (int i = 0; i < vocab && a[i].key >= thr; i++)
            kept += a[i].w;
        uint64_t target = (uint64_t)ceil((double)sp->top_p * (double)kept);
        if (target < 1)
            target = 1;
        if (target > kept)
            target = kept;
        uint64_t cum = 0;
        for (int i = 0; i < vocab && a[i].key >= thr; i++) {
            cum += a[i].w;
            if ((i + 1 == vocab || a[i + 1].key != a[i].key) && cum >= target) {
                thr = a[i].key;
                break;
            }
        }
    }
    p->thr = thr;
    free(a);
}

uint64_t kb_sample_weights(const kb_sample_plan *p, const float *logits, int vocab, uint32_t *w)
{
    assert(!p->greedy);
    uint64_t total = 0;
    for (int i = 0; i < vocab; i++) {
        float c = clean(logits[i]);
        w[i] = key_of(c) >= p->thr ? weight_of(c, p->m, p->inv_t) : 0;
        total += w[i];
    }
    return total;
}

int32_t kb_sample_draw(const kb_sample_plan *p, const uint32_t *w, uint64_t total, int vocab,
                       const kiln_sample *sp, int threads)
{
    assert(threads >= 1);
    if (p->greedy || total == 0) /* total >= 2^31 when not greedy: the top token is kept */
        return p->argmax;
    uint64_t r = (uint64_t)(uniform(sp->seed, (uint64_t)(uint32_t)sp->index) * (double)total);
    if (r >= total)
        r = total - 1;
    uint64_t acc = 0;
    for (int t = 0; t < threads; t++) /* thread-major: thread t holds the ids i = t mod threads */
        for (int i = t; i < vocab; i += threads)
            if (w[i]) {
                acc += w[i];
                if (acc > r)
                    return i;
            }
    return p->argmax; /* not reached: the intervals tile [0, total) */
}

int32_t kb_sample_cpu(const float *logits, int vocab, const kiln_sample *sp, int threads)
{
    kb_sample_plan p;
    kb_sample_plan_make(logits, vocab, sp, &p);
    if (p.greedy)
        return p.argmax;
    uint32_t *w = xmalloc(sizeof(uint32_t) * (size_t)vocab);
    uint64_t total = kb_sample_weights(&p, logits, vocab, w);
    int32_t id = kb_sample_draw(&p, w, total, vocab, sp, threads);
    free(w);
    return id;
}
