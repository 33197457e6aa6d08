/* sched — the scheduler: continuous batching of requests over one backend (backend.h).
 *
 * Requests join at any step and leave when they finish. Each step (ks_step) is built as:
 *   1. every running request past its prompt decodes one token (oldest first);
 *   2. requests still prefilling get their next chunk, then waiting requests are admitted, first
 *      come first served, while the step has room (at most info->max_seqs items and
 *      info->max_tokens tokens; a prompt longer than the room left is split into chunks), so a long
 *      prompt delays the running decodes by at most one chunk per step;
 *   3. KV blocks are allocated as sequences grow (kvcache.h). When the cache cannot hold the step,
 *      the newest running request is preempted: its blocks are freed and it goes back to the head
 *      of the waiting queue, to be recomputed (prompt + the tokens it already produced) when blocks
 *      free up. Its stream continues where it stopped: no token is repeated or lost.
 *   4. longrope (info->rope_switch): a sequence whose next token takes it past the switch is
 *      recomputed the same way, in place (it keeps its slot), with the long factors; each item's
 *      rope_len tells the backend how long the sequence is (sched.c: rope_recompute).
 * A request's tokens are delivered through its callback, on the thread that runs ks_step, in order.
 * The last event of every request has `finish` set (KS_STOP, KS_LENGTH, KS_CANCELLED, KS_FAILED),
 * exactly once; after it the scheduler never mentions that id again.
 *
 * Threads: ks_submit, ks_cancel, ks_metrics and ks_shutdown may be called from any thread;
 * ks_step / ks_run from one thread only (the engine thread). `kiln run` calls ks_step in a loop
 * on its own thread; `kiln serve` runs ks_run on an engine thread and submits from HTTP threads.
 */
#ifndef KILN_SCHED_H
#define KILN_SCHED_H

#include <stdint.h>

#include "backend.h"
#include "util.h"

typedef enum ks_finish {
    KS_RUNNING = 0,   /* not finished (token events before the last) */
    KS_STOP,          /* an end-of-sequence token (delivered as the last token) */
    KS_LENGTH,        /* max_new tokens generated, or the sequence reached max_seq_len */
    KS_CANCELLED,     /* ks_cancel */
    KS_FAILED,        /* the backend failed (error says why) */
} ks_finish;

typedef struct ks_event {
    uint64_t id;
    void *user;
    int has_token;
    int32_t token;
    int index;                      /* the token's index in the request's output */
    int n_top;                      /* logprobs: alternatives in top_ids/top_logprobs */
    float logprob;
    int32_t top_ids[KB_MAX_LOGPROBS];
    float top_logprobs[KB_MAX_LOGPROBS];
    /* prompt logprobs (ks_params.prompt_logprobs), one event per prompt position p >= 1 before
     * any token: prompt_pos = p, token = prompt[p], logprob and alternatives as above */
    int prompt_pos;                 /* -1 for generated tokens */
    const float *embedding;         /* embedding models: [hidden], on the last event */
    ks_finish finish;
    int prompt_tokens, gen_tokens;  /* counts so far (usage) */
    const char *error;              /* KS_FAILED */
} ks_event;

typedef void (*ks_callback)(const ks_event *ev);

typedef struct ks_params {
    const int32_t *prompt;          /* copied by ks_submit */
    int n_prompt;
    const int32_t *types;           /* token types or NULL; copied */
    int max_new;                    /* generated tokens at most (0 with prompt_logprobs: score only) */
    int ignore_eos;
    kiln_sample sp;                 /* sp.index is the scheduler's */
    int logprobs;                   /* 0 .. KB_MAX_LOGPROBS alternatives per generated token; -1: none */
    int prompt_logprobs;            /* -1: none; 0 .. KB_MAX_LOGPROBS: logprobs of prompt tokens */
    float *prompt_logits;           /* NULL, or the caller's [n_prompt, vocab]: raw logits of every
                                     * prompt position (kiln run --dump) */
    ks_callback cb;
    void *user;
} ks_params;

typedef struct ks_opts {
    int max_waiting;                /* waiting requests at most; ks_submit says KS_EFULL beyond */
} ks_opts;

typedef struct ks_metrics {
    int running, waiting;
    int kv_used, kv_total;
    uint64_t preemptions, steps, prompt_tokens, generated_tokens;
} ks_metrics;

typedef struct ksched ksched;

ksched *ks_new(kbackend *b, const ks_opts *o);
/* Frees the scheduler (not the backend); requests still queued are dropped without events. */
void ks_free(ksched *s);
const kb_info *ks_info(const ksched *s);

enum { KS_OK = 0, KS_EINVAL = -1, KS_EFULL = -2, KS_ECLOSED = -3 };
/* Queues a request. KS_EINVAL: the request cannot run on this model (err names the field and
 * both numbers: an empty prompt, a prompt + max_new beyond max_seq_len, an id outside the
 * vocabulary, ...); KS_EFULL: the waiting queue is full; KS_ECLOSED: shutting down. On KS_OK,
 * *id is its id and its callback will be called. */
int ks_submit(ksched *s, const ks_params *p, uint64_t *id, kerr *err);
/* Cancels a request: within one step its blocks are freed and its last event (KS_CANCELLED) is
 * delivered, unless it finished first. Unknown or finished ids are ignored. */
void ks_cancel(ksched *s, uint64_t id);
/* Runs one step. Returns the number of items it ran (0: nothing to do), or -1 when the backend
 * failed (err says why; every request then got KS_FAILED). */
int ks_step(ksched *s, kerr *err);
/* The engine thread's loop: steps while there is work, sleeps while there is none, and returns
 * when ks_shutdown was called and no request is left (or at once after a backend failure: -1). */
int ks_run(ksched *s, kerr *err);
/* Stops admitting new requests (ks_submit says KS_ECLOSED); with cancel_all, also cancels every
 * queued and running request. ks_run returns when the last one has finished. */
void ks_shutdown(ksched *s, int cancel_all);
void ks_metrics_get(ksched *s, ks_metrics *m);

#endif
