/* metrics — counters, histograms and their Prometheus text (see metrics.h).
 *
 * Statuses are counted in a fixed table of the codes the server answers with; any other code
 * lands in "other" (none should). Histogram buckets follow vLLM's choices, which suit both the
 * CPU backend (tens of milliseconds per token) and an H200 (a few milliseconds).
 */
#include "server/metrics.h"

#include <assert.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "server/openai.h"

static const char *const endpoint_names[SM_N_ENDPOINTS] = {
    "completions", "chat_completions", "embeddings", "classify", "models", "health", "metrics", "other",
};

static const int statuses[] = {200, 400, 401, 404, 405, 413, 429, 500, 503};
#define N_STATUS ((int)ARRAY_LEN(statuses) + 1) /* + "other" */

#define MAX_BUCKETS 24
static const struct {
    const char *name, *help;
    int n;
    double le[MAX_BUCKETS];
} hists[SM_N_HISTS] = {
    [SM_TTFT] = {"kiln_time_to_first_token_seconds",
                 "Time from a request's arrival to its first generated token.", 18,
                 {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                  7.5, 10.0, 20.0, 40.0}},
    [SM_ITL] = {"kiln_inter_token_latency_seconds",
                "Time between two consecutive generated tokens of a request.", 19,
                {0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1,
                 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0}},
    [SM_LATENCY] = {"kiln_request_latency_seconds",
                    "Time from a request's arrival to its last token.", 20,
                    {0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                     50.0, 60.0, 120.0, 240.0, 480.0, 960.0}},
};

typedef struct counts {
    uint64_t requests[SM_N_ENDPOINTS][N_STATUS];
    uint64_t bucket[SM_N_HISTS][MAX_BUCKETS + 1]; /* + the +Inf bucket; not cumulative here */
    uint64_t count[SM_N_HISTS];
    double sum[SM_N_HISTS];
} counts;

struct sm_metrics {
    pthread_mutex_t mu;
    counts c;
};

sm_metrics *sm_new(void)
{
    sm_metrics *m = xcalloc(1, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
    return m;
}

void sm_free(sm_metrics *m)
{
    if (!m)
        return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void sm_request(sm_metrics *m, sm_endpoint ep, int status)
{
    assert(ep >= 0 && ep < SM_N_ENDPOINTS);
    int k = N_STATUS - 1;
    for (int i = 0; i < (int)ARRAY_LEN(statuses); i++)
        if (statuses[i] == status)
            k = i;
    pthread_mutex_lock(&m->mu);
    m->c.requests[ep][k]++;
    pthread_mutex_unlock(&m->mu);
}

void sm_observe(sm_metrics *m, sm_hist h, double seconds)
{
    assert(h >= 0 && h < SM_N_HISTS);
    int b = 0;
    while (b < hists[h].n && seconds > hists[h].le[b])
        b++;
    pthread_mutex_lock(&m->mu);
    m->c.bucket[h][b]++;
    m->c.count[h]++;
    m->c.sum[h] += seconds;
    pthread_mutex_unlock(&m->mu);
}

static void add(oa_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(oa_buf *b, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    assert(n >= 0 && n < (int)sizeof line);
    oa_buf_add(b, line, (size_t)n);
}

static void gauge(oa_buf *b, const char *name, const char *type, const char *help, double v)
{
    add(b, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, v);
}

char *sm_render(sm_metrics *m, const ks_metrics *ks)
{
    pthread_mutex_lock(&m->mu);
    counts c = m->c;
    pthread_mutex_unlock(&m->mu);
    oa_buf b = {0};
    add(&b, "# HELP kiln_requests_total HTTP requests answered, by endpoint and status.\n"
            "# TYPE kiln_requests_total counter\n");
    /* every count that is not zero, and the generation endpoints' 200s always (a series that
     * exists from the start makes rates work) */
    for (int e = 0; e < SM_N_ENDPOINTS; e++)
        for (int k = 0; k < N_STATUS; k++)
            if (c.requests[e][k] || (e <= SM_EMBEDDINGS && k == 0)) {
                char st[16];
                if (k < (int)ARRAY_LEN(statuses))
                    snprintf(st, sizeof st, "%d", statuses[k]);
                else
                    snprintf(st, sizeof st, "other");
                add(&b, "kiln_requests_total{endpoint=\"%s\",status=\"%s\"} %llu\n",
                    endpoint_names[e], st, (unsigned long long)c.requests[e][k]);
            }
    ks_metrics z = {0};
    const ks_metrics *s = ks ? ks : &z;
    gauge(&b, "kiln_prompt_tokens_total", "counter", "Prompt tokens processed.",
          (double)s->prompt_tokens);
    gauge(&b, "kiln_generation_tokens_total", "counter", "Tokens generated.",
          (double)s->generated_tokens);
    gauge(&b, "kiln_num_requests_running", "gauge", "Sequences running (in the batch).",
          s->running);
    gauge(&b, "kiln_num_requests_waiting", "gauge", "Sequences waiting to be admitted.",
          s->waiting);
    gauge(&b, "kiln_kv_blocks_used", "gauge", "KV cache blocks in use.", s->kv_used);
    gauge(&b, "kiln_kv_blocks_total", "gauge", "KV cache blocks in all.", s->kv_total);
    gauge(&b, "kiln_kv_cache_usage_ratio", "gauge", "KV cache blocks in use over all (0 to 1).",
          s->kv_total ? (double)s->kv_used / s->kv_total : 0.0);
    gauge(&b, "kiln_preemptions_total", "counter",
          "Running sequences preempted (KV blocks freed, recomputed later).",
          (double)s->preemptions);
    gauge(&b, "kiln_steps_total", "counter", "Scheduler steps run.", (double)s->steps);
    for (int h = 0; h < SM_N_HISTS; h++) {
        add(&b, "# HELP %s %s\n# TYPE %s histogram\n", hists[h].name, hists[h].help,
            hists[h].name);
        uint64_t cum = 0;
        for (int i = 0; i < hists[h].n; i++) {
            cum += c.bucket[h][i];
            add(&b, "%s_bucket{le=\"%g\"} %llu\n", hists[h].name, hists[h].le[i],
                (unsigned long long)cum);
        }
        add(&b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.17g\n%s_count %llu\n", hists[h].name,
            (unsigned long long)c.count[h], hists[h].name, c.sum[h], hists[h].name,
            (unsigned long long)c.count[h]);
    }
    return b.p;
}
