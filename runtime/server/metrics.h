/* metrics — `kiln serve`'s counters and latency histograms, and GET /metrics in Prometheus'
 * text exposition format (version 0.0.4).
 *
 * The server counts requests by endpoint and HTTP status and observes three latencies (seconds):
 * time to first token, inter-token latency and whole-request latency. The scheduler's own numbers
 * (running and waiting sequences, KV blocks, preemptions, prompt and generated tokens, steps) are
 * read at scrape time from ks_metrics_get and printed beside them. Thread-safe: one mutex, held
 * for a few instructions per update.
 */
#ifndef KILN_SERVER_METRICS_H
#define KILN_SERVER_METRICS_H

#include "../sched.h"

typedef enum sm_endpoint {
    SM_COMPLETIONS, SM_CHAT, SM_EMBEDDINGS, SM_CLASSIFY, SM_MODELS, SM_HEALTH, SM_METRICS, SM_OTHER,
    SM_N_ENDPOINTS
} sm_endpoint;

typedef enum sm_hist { SM_TTFT, SM_ITL, SM_LATENCY, SM_N_HISTS } sm_hist;

typedef struct sm_metrics sm_metrics;

sm_metrics *sm_new(void);
void sm_free(sm_metrics *m);
/* A request answered with an HTTP status. */
void sm_request(sm_metrics *m, sm_endpoint ep, int status);
void sm_observe(sm_metrics *m, sm_hist h, double seconds);
/* The exposition text (malloc'd); ks may be NULL while the model loads. */
char *sm_render(sm_metrics *m, const ks_metrics *ks);

#endif
