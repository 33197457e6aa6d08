/* sched — the scheduler (sched.h): continuous batching of requests over one backend.
 *
 * A request lives in one of two places: the waiting queue (a linked list ordered by id, which is
 * arrival order: new requests join at the tail; a preempted one goes back in id order, which puts
 * it at the head, ahead of every request never admitted, because admission is strictly first come
 * first served) or the running set (an array ordered by id, at most min(max_seqs, max_tokens)
 * long, so every running request can always decode in the same step). A running request holds a
 * backend slot and a kv_seq. Its tokens are one array: the prompt, then what it generated.
 *
 * `pos` is how many of those tokens are in the backend's cache and `n_eff` the effective prompt of
 * the current run: the prompt on first admission, prompt + generated tokens after a preemption
 * (the whole sequence is recomputed from position 0, and the last chunk samples the next new token
 * with sp.index = tokens generated so far, so the stream continues with no repeat and, for a
 * seeded request, draws what it would have drawn). pos < n_eff: prefilling; otherwise the request
 * decodes its last token (pos == n_prompt + n_gen - 1).
 *
 * A step (ks_step): cancelled requests leave (blocks and slot freed, KS_CANCELLED delivered); then
 * the items are planned under the mutex: decodes oldest first, then the next chunk of each request
 * still prefilling, then admissions from the queue head while the step has room (items, tokens,
 * slots). KV blocks are taken as each item is planned: a request that cannot get even one more
 * position preempts the newest running request (itself, when it is the newest), and no request is
 * admitted in a step that preempted one (it would only be preempted again). A prefill chunk or an
 * admission takes what the free blocks allow rather than preempting. The backend runs without the
 * mutex, then the results become events, delivered on this thread without the mutex (a callback may
 * call ks_cancel or ks_submit). A step with anything running or waiting always runs an item, so
 * ks_step returns 0 only when idle: the oldest running request is never preempted (ks_submit
 * refused any request the whole cache cannot hold, so alone it always fits), and with nothing
 * running the queue's head is admitted.
 *
 * Prompt logprobs and raw prompt logits: the backend writes [n, vocab] rows of every item that
 * asks into one scratch buffer of the scheduler, carved per step. It holds min(max_tokens,
 * KS_SCRATCH_FLOATS / vocab) rows (at most 256 MiB: a 128k vocabulary gets ~520 rows), and chunks of
 * such requests are cut to what is left of it in the step: a deliberate limit on host memory
 * that only makes their prefill take more steps.
 *
 * Locking: one mutex guards the waiting queue, the running array (the engine thread changes it only
 * with the mutex held; ks_cancel reads it), the cancel flags, the KV allocator (ks_metrics reads
 * it) and the counters. The engine thread alone reads and writes a request's token state.
 */
#include "sched.h"

#include <assert.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kvcache.h"

/* The prompt-logits scratch holds at most this many floats (256 MiB). */
#define KS_SCRATCH_FLOATS (64 << 20)

typedef struct kreq kreq;
struct kreq {
    uint64_t id;
    ks_callback cb;
    void *user;
    int n_prompt, max_new, ignore_eos;
    int logprobs, prompt_logprobs;
    kiln_sample sp;
    float *prompt_logits;   /* the caller's [n_prompt, vocab], or NULL */
    int32_t *toks;          /* [n_prompt + max_new]: the prompt, then the generated tokens */
    int32_t *types;         /* [n_prompt + max_new] (0 past the prompt), or NULL */
    float *embedding;       /* embedding models: [hidden] */
    int n_gen;              /* tokens generated */
    int n_eff;              /* tokens to prefill in this run */
    int pos;                /* tokens in the backend's cache */
    int lp_rows;            /* prompt rows already reported (logprob events, copied logits) */
    int slot;               /* -1 while waiting */
    kv_seq kv;
    int cancelled;          /* ks_cancel marked it (mutex) */
    int counted;            /* its prompt is in the prompt_tokens metric */
    kreq *prev, *next;      /* the waiting queue */
};

struct ksched {
    kbackend *b;
    const kb_info *info;
    int max_running;        /* min(max_seqs, max_tokens): every running request decodes each step */
    int max_waiting;

    /* engine thread */
    kb_item *items;         /* [max_seqs] the step being built */
    kreq **item_req;        /* [max_seqs] the request of each item */
    int n_items, n_tokens;
    int *free_slots;        /* [max_seqs] stack */
    int n_free_slots;
    float *scratch;         /* [scratch_rows, vocab] prompt logits, allocated by the first request
                             * that asks (under the mutex) */
    int scratch_rows;

    /* under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;      /* ks_run sleeps on it while there is nothing to do */
    kvcache *kv;
    kreq **running;         /* [max_running] ordered by id */
    int n_running;
    kreq *wait_head, *wait_tail;
    int n_waiting;
    int n_cancel;           /* requests marked cancelled since the last step */
    uint64_t next_id;
    int closed, failed;
    char *fail_msg;
    uint64_t preemptions, steps, prompt_tokens, generated_tokens;
};

static int imin(int a, int b) { return a < b ? a : b; }

ksched *ks_new(kbackend *b, const ks_opts *o)
{
    const kb_info *in = b->info;
    /* the backend's info is the backend's own checked data: a bad value is a kiln bug */
    assert(in->max_seqs >= 1 && in->max_tokens >= 1 && in->max_seq_len >= 1 && in->vocab >= 1);
    assert(in->kv_blocks >= 1 && in->n_eos >= 0 && (in->n_eos == 0 || in->eos));
    assert(!in->embed || in->hidden >= 1);
    /* the cache's positions are counted in an int (room, admissions) */
    assert((int64_t)in->kv_blocks * KILN_BLOCK <= INT32_MAX);
    assert(o && o->max_waiting >= 1);
    ksched *s = xcalloc(1, sizeof *s);
    s->b = b;
    s->info = in;
    s->max_running = imin(in->max_seqs, in->max_tokens);
    s->max_waiting = o->max_waiting;
    s->items = xcalloc((size_t)in->max_seqs, sizeof *s->items);
    s->item_req = xcalloc((size_t)in->max_seqs, sizeof *s->item_req);
    s->free_slots = xmalloc((size_t)in->max_seqs * sizeof *s->free_slots);
    for (int i = 0; i < in->max_seqs; i++)
        s->free_slots[i] = in->max_seqs - 1 - i;     /* slot 0 is taken first */
    s->n_free_slots = in->max_seqs;
    s->scratch_rows = imin(in->max_tokens, KS_SCRATCH_FLOATS / in->vocab);
    if (s->scratch_rows < 1)
        s->scratch_rows = 1;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->kv = kv_new(in->kv_blocks);
    s->running = xcalloc((size_t)s->max_running, sizeof *s->running);
    s->next_id = 1;
    return s;
}

static void req_free(kreq *r)
{
    free(r->toks);
    free(r->types);
    free(r->embedding);
    kv_seq_free(&r->kv);
    free(r);
}

void ks_free(ksched *s)
{
    if (!s)
        return;
    for (kreq *r = s->wait_head, *nx; r; r = nx) {
        nx = r->next;
        req_free(r);
    }
    for (int i = 0; i < s->n_running; i++)
        req_free(s->running[i]);
    kv_free(s->kv);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s->running);
    free(s->items);
    free(s->item_req);
    free(s->free_slots);
    free(s->scratch);
    free(s->fail_msg);
    free(s);
}

const kb_info *ks_info(const ksched *s) { return s->info; }

/* ---- submission ---- */

/* Checks a request against the model. 0, or KS_EINVAL with a sentence the server can pass on. */
static int check_params(const ksched *s, const ks_params *p, kerr *err)
{
    const kb_info *in = s->info;
    if (p->n_prompt < 1)
        return kerr_add(err, "the prompt is empty (%d tokens): at least 1 token is needed",
                        p->n_prompt), KS_EINVAL;
    if (p->max_new < 0)
        return kerr_add(err, "the number of tokens to generate is %d: expected 0 or more",
                        p->max_new), KS_EINVAL;
    int64_t total = (int64_t)p->n_prompt + p->max_new;
    if (total > in->max_seq_len) {
        if (p->max_new == 0)
            kerr_add(err, "the prompt has %d tokens, more than this model's maximum sequence "
                     "length of %d: shorten the prompt", p->n_prompt, in->max_seq_len);
        else
            kerr_add(err, "the prompt (%d tokens) plus %d tokens to generate is %lld tokens, more "
                     "than this model's maximum sequence length of %d: shorten the prompt or ask "
                     "for fewer tokens", p->n_prompt, p->max_new, (long long)total,
                     in->max_seq_len);
        return KS_EINVAL;
    }
    /* (total fits in an int now) */
    if (kv_blocks_for((int)total) > in->kv_blocks)
        return kerr_add(err, "the prompt (%d tokens) plus %d tokens to generate is %d tokens, more "
                        "than the KV cache holds (%d blocks of %d: %d tokens): shorten the prompt "
                        "or ask for fewer tokens", p->n_prompt, p->max_new, (int)total,
                        in->kv_blocks, KILN_BLOCK, in->kv_blocks * KILN_BLOCK), KS_EINVAL;
    assert(p->prompt && p->cb);
    for (int i = 0; i < p->n_prompt; i++)
        if (p->prompt[i] < 0 || p->prompt[i] >= in->vocab)
            return kerr_add(err, "prompt token %d is id %d, outside the vocabulary (0 .. %d)", i,
                            (int)p->prompt[i], in->vocab - 1), KS_EINVAL;
    if (p->types)
        for (int i = 0; i < p->n_prompt; i++)
            if (p->types[i] < 0 || p->types[i] >= (in->type_vocab ? in->type_vocab : 1))
                return (in->type_vocab
                            ? kerr_add(err, "prompt token %d has token type %d: expected 0 .. %d",
                                       i, (int)p->types[i], in->type_vocab - 1)
                            : kerr_add(err, "prompt token %d has token type %d: this model takes "
                                            "no token types (only 0)",
                                       i, (int)p->types[i])),
                       KS_EINVAL;
    if (p->logprobs < -1 || p->logprobs > KB_MAX_LOGPROBS)
        return kerr_add(err, "logprobs is %d: expected 0 .. %d (or none)", p->logprobs,
                        KB_MAX_LOGPROBS), KS_EINVAL;
    if (p->prompt_logprobs < -1 || p->prompt_logprobs > KB_MAX_LOGPROBS)
        return kerr_add(err, "prompt logprobs is %d: expected 0 .. %d (or none)",
                        p->prompt_logprobs, KB_MAX_LOGPROBS), KS_EINVAL;
    if (!isfinite(p->sp.temperature) || p->sp.temperature < 0)
        return kerr_add(err, "temperature is %g: expected a finite number, 0 or more (0 is greedy)",
                        (double)p->sp.temperature), KS_EINVAL;
    if (!(p->sp.top_p >= 0 && p->sp.top_p <= 1))
        return kerr_add(err, "top_p is %g: expected 0 .. 1 (0 and 1 are off)",
                        (double)p->sp.top_p), KS_EINVAL;
    if (p->sp.top_k < 0)
        return kerr_add(err, "top_k is %d: expected 0 (off) or more", p->sp.top_k), KS_EINVAL;
    if (in->embed) {
        if (p->n_prompt > in->max_tokens)
            return kerr_add(err, "the input has %d tokens; this embedding model takes at most %d "
                            "tokens per input: shorten it", p->n_prompt, in->max_tokens), KS_EINVAL;
        if (p->max_new != 0)
            return kerr_add(err, "an embedding model generates no tokens: %d tokens to generate "
                            "were asked for (expected 0)", p->max_new), KS_EINVAL;
        if (p->prompt_logprobs >= 0 || p->prompt_logits)
            return kerr_add(err, "an embedding model has no logits: prompt logprobs cannot be "
                            "given"), KS_EINVAL;
    }
    return 0;
}

int ks_submit(ksched *s, const ks_params *p, uint64_t *id, kerr *err)
{
    int rc = check_params(s, p, err);
    if (rc)
        return rc;
    const kb_info *in = s->info;
    int cap = p->n_prompt + p->max_new;
    kreq *r = xcalloc(1, sizeof *r);
    r->cb = p->cb;
    r->user = p->user;
    r->n_prompt = p->n_prompt;
    r->max_new = p->max_new;
    r->ignore_eos = p->ignore_eos;
    r->logprobs = p->logprobs;
    r->prompt_logprobs = p->prompt_logprobs;
    r->prompt_logits = p->prompt_logits;
    r->sp = p->sp;
    r->toks = xmalloc((size_t)cap * sizeof *r->toks);
    memcpy(r->toks, p->prompt, (size_t)p->n_prompt * sizeof *r->toks);
    if (p->types) {
        r->types = xcalloc((size_t)cap, sizeof *r->types);
        memcpy(r->types, p->types, (size_t)p->n_prompt * sizeof *r->types);
    }
    if (in->embed)
        r->embedding = xcalloc((size_t)in->hidden, sizeof *r->embedding);
    r->n_eff = p->n_prompt;
    r->slot = -1;
    int rows = p->prompt_logprobs >= 0 || p->prompt_logits;

    pthread_mutex_lock(&s->mu);
    if (s->closed) {
        rc = KS_ECLOSED;
        if (s->failed)
            kerr_add(err, "the model failed and takes no more requests: %s", s->fail_msg);
        else
            kerr_add(err, "the server is shutting down and takes no new requests");
    } else if (s->n_waiting >= s->max_waiting) {
        rc = KS_EFULL;
        kerr_add(err, "too many requests are waiting (%d): retry later", s->n_waiting);
    } else if (rows && !s->scratch) {
        /* rows * vocab <= KS_SCRATCH_FLOATS or max_tokens * vocab: no overflow */
        s->scratch = malloc((size_t)s->scratch_rows * (size_t)in->vocab * sizeof *s->scratch);
        if (!s->scratch) {
            rc = KS_EFULL;
            kerr_add(err, "not enough host memory for prompt logprobs (%zu MiB): retry later",
                     ((size_t)s->scratch_rows * (size_t)in->vocab * sizeof(float)) >> 20);
        }
    }
    if (rc == 0) {
        r->id = s->next_id++;
        r->prev = s->wait_tail;
        if (s->wait_tail)
            s->wait_tail->next = r;
        else
            s->wait_head = r;
        s->wait_tail = r;
        s->n_waiting++;
        *id = r->id;
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    if (rc)
        req_free(r);
    return rc;
}

/* ---- the queues (mutex held) ---- */

static void wait_unlink(ksched *s, kreq *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        s->wait_head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        s->wait_tail = r->prev;
    r->prev = r->next = NULL;
    s->n_waiting--;
}

/* Puts a preempted request back in id order: ahead of every request never admitted. */
static void wait_insert(ksched *s, kreq *r)
{
    kreq *at = s->wait_head;
    for (int i = 0; at && at->id < r->id && i < s->n_waiting; i++)
        at = at->next;
    r->next = at;
    r->prev = at ? at->prev : s->wait_tail;
    if (r->prev)
        r->prev->next = r;
    else
        s->wait_head = r;
    if (at)
        at->prev = r;
    else
        s->wait_tail = r;
    s->n_waiting++;
}

static void run_insert(ksched *s, kreq *r)
{
    assert(s->n_running < s->max_running && s->n_free_slots > 0);
    int i = s->n_running;
    while (i > 0 && s->running[i - 1]->id > r->id) {
        s->running[i] = s->running[i - 1];
        i--;
    }
    s->running[i] = r;
    s->n_running++;
    r->slot = s->free_slots[--s->n_free_slots];
}

/* Takes r out of the running set: its blocks and slot are free again. */
static void run_remove(ksched *s, kreq *r)
{
    int i = 0;
    while (i < s->n_running && s->running[i] != r)
        i++;
    assert(i < s->n_running);
    memmove(s->running + i, s->running + i + 1, (size_t)(s->n_running - i - 1) * sizeof *s->running);
    s->n_running--;
    kv_release(s->kv, &r->kv);
    s->free_slots[s->n_free_slots++] = r->slot;
    r->slot = -1;
}

/* ---- events ---- */

static ks_event event_of(const kreq *r)
{
    ks_event ev;
    memset(&ev, 0, sizeof ev);
    ev.id = r->id;
    ev.user = r->user;
    ev.index = -1;
    ev.prompt_pos = -1;
    ev.prompt_tokens = r->n_prompt;
    ev.gen_tokens = r->n_gen;
    return ev;
}

/* Delivers the last event of a request that has left both queues, and frees it. */
static void deliver_final(kreq *r, ks_event *ev)
{
    assert(ev->finish != KS_RUNNING && r->slot == -1);
    r->cb(ev);
    req_free(r);
}

/* ---- cancellation and failure ---- */

/* Moves every cancelled request out of the queues onto *out (mutex held). */
static void take_cancelled(ksched *s, kreq **out)
{
    if (!s->n_cancel)
        return;
    s->n_cancel = 0;
    kreq **tail = out;
    for (int i = 0; i < s->n_running;) {
        kreq *r = s->running[i];
        if (!r->cancelled) {
            i++;
            continue;
        }
        run_remove(s, r);
        *tail = r;
        tail = &r->next;
    }
    for (kreq *r = s->wait_head, *nx; r; r = nx) {
        nx = r->next;
        if (!r->cancelled)
            continue;
        wait_unlink(s, r);
        *tail = r;
        tail = &r->next;
    }
    *tail = NULL;
}

static void deliver_list(kreq *list, ks_finish finish, const char *error)
{
    for (kreq *r = list, *nx; r; r = nx) {
        nx = r->next;
        ks_event ev = event_of(r);
        ev.finish = finish;
        ev.error = error;
        deliver_final(r, &ev);
    }
}

void ks_cancel(ksched *s, uint64_t id)
{
    pthread_mutex_lock(&s->mu);
    kreq *r = NULL;
    for (int i = 0; i < s->n_running && !r; i++)
        if (s->running[i]->id == id)
            r = s->running[i];
    for (kreq *w = s->wait_head; w && !r; w = w->next)
        if (w->id == id)
            r = w;
    if (r && !r->cancelled) {
        r->cancelled = 1;
        s->n_cancel++;
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
}

void ks_shutdown(ksched *s, int cancel_all)
{
    pthread_mutex_lock(&s->mu);
    s->closed = 1;
    if (cancel_all) {
        for (int i = 0; i < s->n_running; i++)
            s->running[i]->cancelled = 1;
        for (kreq *w = s->wait_head; w; w = w->next)
            w->cancelled = 1;
        s->n_cancel++;
    }
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* The backend failed: every request ends with KS_FAILED and the scheduler takes no more. */
static void fail_all(ksched *s, const char *msg)
{
    pthread_mutex_lock(&s->mu);
    s->failed = s->closed = 1;
    s->fail_msg = xstrdup(msg);
    kreq *list = NULL, **tail = &list;
    while (s->n_running) {
        kreq *r = s->running[0];
        run_remove(s, r);
        *tail = r;
        tail = &r->next;
    }
    while (s->wait_head) {
        kreq *r = s->wait_head;
        wait_unlink(s, r);
        *tail = r;
        tail = &r->next;
    }
    *tail = NULL;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    deliver_list(list, KS_FAILED, s->fail_msg);
}

/* ---- planning a step (mutex held) ---- */

static int wants_rows(const kreq *r)
{
    return (r->prompt_logprobs >= 0 || r->prompt_logits) && r->lp_rows < r->n_prompt &&
           r->pos < r->n_prompt;
}

/* Sends the newest running request back to the queue, to be recomputed from position 0. */
static void preempt(ksched *s)
{
    kreq *v = s->running[s->n_running - 1];
    for (int k = 0; k < s->n_items; k++)
        if (s->item_req[k] == v) {
            s->n_tokens -= s->items[k].n;
            memmove(s->items + k, s->items + k + 1, (size_t)(s->n_items - k - 1) * sizeof *s->items);
            memmove(s->item_req + k, s->item_req + k + 1,
                    (size_t)(s->n_items - k - 1) * sizeof *s->item_req);
            s->n_items--;
            break;
        }
    run_remove(s, v);
    v->pos = 0;
    v->n_eff = v->n_prompt + v->n_gen;
    wait_insert(s, v);
    s->preemptions++;
}

/* Longrope (info->rope_switch): a run is long when what it prefills (n_eff) is longer than the
 * switch, so a prompt past it rotates with the long factors from its first chunk. A short run
 * whose next decode takes the sequence past the switch restarts from position 0 (its blocks
 * freed, its slot kept) to recompute prompt + generated tokens with the long factors, as
 * transformers' generate() drops its KV cache at that step (Phi3ForCausalLM and
 * PhimoeForCausalLM.prepare_inputs_for_generation); the last chunk samples the next token. */
static void rope_recompute(ksched *s, kreq *r)
{
    int sw = s->info->rope_switch;
    if (sw <= 0 || r->n_eff > sw || r->pos + 1 <= sw)
        return;
    kv_release(s->kv, &r->kv);
    r->pos = 0;
    r->n_eff = r->n_prompt + r->n_gen;
}

/* Blocks for r to append up to `want` tokens: returns how many it may append now (at least 1,
 * preempting newer requests when not even one more position fits), or 0 when r itself was the
 * newest and got preempted. */
static int take_room(ksched *s, kreq *r, int want)
{
    for (;;) {
        int room = (r->kv.n + kv_free_blocks(s->kv)) * KILN_BLOCK - r->pos;
        if (room >= 1) {
            int n = imin(want, room);
            int ok = kv_grow(s->kv, &r->kv, r->pos + n);
            assert(ok == 0);
            (void)ok;
            return n;
        }
        int self = s->running[s->n_running - 1] == r;
        preempt(s);
        if (self)
            return 0;
    }
}

static void add_item(ksched *s, kreq *r, int n, int *scratch_used)
{
    const kb_info *in = s->info;
    assert(s->n_items < in->max_seqs && s->n_tokens + n <= in->max_tokens);
    assert(r->kv.n == kv_blocks_for(r->pos + n));
    kb_item *it = &s->items[s->n_items];
    memset(it, 0, sizeof *it);
    it->slot = r->slot;
    it->pos = r->pos;
    it->n = n;
    it->ids = r->toks + r->pos;
    it->types = r->types ? r->types + r->pos : NULL;
    it->blocks = r->kv.blocks;
    it->nblocks = r->kv.n;
    it->rope_len = r->n_eff > r->pos + n ? r->n_eff : r->pos + n;
    it->prefill = r->pos < r->n_eff;
    it->sample = !in->embed && r->max_new > 0 && r->pos + n >= r->n_eff;  /* last chunk or decode */
    it->sp = r->sp;
    it->sp.index = r->n_gen;
    /* logprobs 0 still wants the sampled token's own logprob, which the backend computes with
     * at least one alternative */
    it->logprobs = r->logprobs >= 0 ? (r->logprobs > 0 ? r->logprobs : 1) : 0;
    if (wants_rows(r)) {
        assert(s->scratch && *scratch_used + n <= s->scratch_rows);
        it->prompt_logits = s->scratch + (size_t)*scratch_used * (size_t)in->vocab;
        *scratch_used += n;
    }
    it->embedding = r->embedding;
    s->item_req[s->n_items++] = r;
    s->n_tokens += n;
}

static void plan(ksched *s)
{
    const kb_info *in = s->info;
    int scratch_used = 0;
    uint64_t preempted = s->preemptions;
    s->n_items = s->n_tokens = 0;

    /* 1. decodes, oldest first (a preemption removes the newest, the end of the array) */
    for (int i = 0; i < s->n_running; i++) {
        kreq *r = s->running[i];
        if (r->pos >= r->n_eff)
            rope_recompute(s, r);               /* (then prefills below) */
        if (r->pos < r->n_eff)
            continue;
        assert(r->pos == r->n_prompt + r->n_gen - 1);
        if (take_room(s, r, 1))
            add_item(s, r, 1, &scratch_used);
    }
    /* 2. the next chunk of every request still prefilling */
    for (int i = 0; i < s->n_running; i++) {
        kreq *r = s->running[i];
        if (r->pos >= r->n_eff)
            continue;
        if (s->n_items == in->max_seqs || s->n_tokens == in->max_tokens)
            break;
        int n = imin(r->n_eff - r->pos, in->max_tokens - s->n_tokens);
        if (wants_rows(r) && (n = imin(n, s->scratch_rows - scratch_used)) == 0)
            continue;
        if ((n = take_room(s, r, n)))
            add_item(s, r, n, &scratch_used);
    }
    /* 3. admissions, first come first served, while there is room and nobody was preempted */
    while (s->wait_head && s->preemptions == preempted && s->n_running < s->max_running &&
           s->n_items < in->max_seqs && s->n_tokens < in->max_tokens) {
        kreq *r = s->wait_head;
        assert(r->pos == 0 && r->kv.n == 0);
        int n = imin(r->n_eff, in->max_tokens - s->n_tokens);
        if (wants_rows(r))
            n = imin(n, s->scratch_rows - scratch_used);
        n = imin(n, kv_free_blocks(s->kv) * KILN_BLOCK);
        if (n == 0 || (in->embed && n < r->n_eff))
            break;                              /* (an embedding input is never split) */
        wait_unlink(s, r);
        run_insert(s, r);
        int ok = kv_grow(s->kv, &r->kv, n);
        assert(ok == 0);
        (void)ok;
        if (!r->counted) {
            r->counted = 1;
            s->prompt_tokens += (uint64_t)r->n_prompt;
        }
        add_item(s, r, n, &scratch_used);
    }
}

/* ---- results ---- */

/* Ends a running request: out of the running set, then its last event. */
static void finish(ksched *s, kreq *r, ks_event *ev)
{
    pthread_mutex_lock(&s->mu);
    run_remove(s, r);
    pthread_mutex_unlock(&s->mu);
    deliver_final(r, ev);
}

/* The logprob events of prompt rows [lo, hi) of an item (util_parallel_for's chunks). */
typedef struct lp_rows {
    const kreq *r;
    const kb_item *it;
    int vocab, first;
    ks_event *ev;
} lp_rows;

static void lp_rows_fill(void *ctx, int chunk, int64_t lo, int64_t hi)
{
    (void)chunk;
    const lp_rows *j = ctx;
    for (int64_t e = lo; e < hi; e++) {
        const int i = j->first + (int)e, q = j->it->pos + i;
        ks_event *ev = &j->ev[e];
        ev->prompt_pos = q + 1;
        ev->token = j->r->toks[q + 1];
        ev->n_top = j->r->prompt_logprobs;
        kb_logprobs(j->it->prompt_logits + (size_t)i * (size_t)j->vocab, j->vocab, ev->token,
                    ev->n_top, &ev->logprob, ev->top_ids, ev->top_logprobs);
    }
}

/* Prompt rows of an item: the caller's raw logits, and one logprob event per prompt position
 * p >= 1 (row p-1 scores prompt[p]); rows reported before a preemption are not reported again.
 * The logprobs (a pass over the vocabulary a row: 128K entries for Llama 3) are computed on
 * every CPU where there are many rows, then delivered in order. */
static void prompt_rows(ksched *s, kreq *r, const kb_item *it)
{
    const int vocab = s->info->vocab;
    /* rows [first, last): not yet reported, and within the prompt */
    const int first = r->lp_rows > it->pos ? r->lp_rows - it->pos : 0;
    const int last = r->n_prompt - it->pos < it->n ? r->n_prompt - it->pos : it->n;
    if (first >= last)
        return;
    if (r->prompt_logits)
        memcpy(r->prompt_logits + (size_t)(it->pos + first) * (size_t)vocab,
               it->prompt_logits + (size_t)first * (size_t)vocab,
               (size_t)(last - first) * (size_t)vocab * sizeof(float));
    /* logprob events for rows whose next prompt token exists */
    const int nlp = r->prompt_logprobs < 0 ? 0
                    : it->pos + last < r->n_prompt ? last - first
                                                   : last - first - 1;
    if (nlp > 0) {
        lp_rows j = {r, it, vocab, first, xmalloc(sizeof(ks_event) * (size_t)nlp)};
        for (int e = 0; e < nlp; e++)
            j.ev[e] = event_of(r);
        if ((int64_t)nlp * vocab >= (1 << 22))
            util_parallel_for(nlp, lp_rows_fill, &j);
        else
            lp_rows_fill(&j, 0, 0, nlp);
        for (int e = 0; e < nlp; e++)
            r->cb(&j.ev[e]);
        free(j.ev);
    }
    r->lp_rows = it->pos + last;
}

static int is_eos(const kb_info *in, int32_t t)
{
    for (int i = 0; i < in->n_eos; i++)
        if (in->eos[i] == t)
            return 1;
    return 0;
}

/* Turns one item's results into events. Returns 1 when it generated a token. */
static int item_done(ksched *s, kreq *r, const kb_item *it)
{
    const kb_info *in = s->info;
    r->pos += it->n;
    if (it->prompt_logits)
        prompt_rows(s, r, it);
    ks_event ev = event_of(r);
    if (in->embed) {
        ev.embedding = r->embedding;
        ev.finish = KS_STOP;
        finish(s, r, &ev);
        return 0;
    }
    if (!it->sample) {
        if (r->pos == r->n_eff && r->max_new == 0) {     /* scoring: the prompt was all */
            ev.finish = KS_LENGTH;
            finish(s, r, &ev);
        }
        return 0;
    }
    assert(it->token >= 0 && it->token < in->vocab && r->n_gen < r->max_new);
    r->toks[r->n_prompt + r->n_gen++] = it->token;
    ev.has_token = 1;
    ev.token = it->token;
    ev.index = r->n_gen - 1;
    ev.gen_tokens = r->n_gen;
    if (r->logprobs >= 0) {
        ev.n_top = r->logprobs;
        ev.logprob = it->logprob;
        memcpy(ev.top_ids, it->top_ids, sizeof ev.top_ids);
        memcpy(ev.top_logprobs, it->top_logprobs, sizeof ev.top_logprobs);
    }
    /* max_seq_len needs no test of its own: ks_submit checked n_prompt + max_new against it */
    if (!r->ignore_eos && is_eos(in, it->token))
        ev.finish = KS_STOP;
    else if (r->n_gen == r->max_new)
        ev.finish = KS_LENGTH;
    if (ev.finish)
        finish(s, r, &ev);
    else
        r->cb(&ev);
    return 1;
}

int ks_step(ksched *s, kerr *err)
{
    kreq *cancelled;
    pthread_mutex_lock(&s->mu);
    if (s->failed) {
        pthread_mutex_unlock(&s->mu);
        return 0;
    }
    cancelled = NULL;
    take_cancelled(s, &cancelled);
    plan(s);
    pthread_mutex_unlock(&s->mu);
    deliver_list(cancelled, KS_CANCELLED, NULL);

    int n = s->n_items;
    if (n == 0)
        return 0;
    /* A batch-invariant backend computes an item alike in any step of its own kind only: its
     * decode steps and its prefill steps run different kernels. So the decodes (plan() puts them
     * first) and the prefill chunks run as two steps, before any result is delivered: the same
     * items, order and stall as one step. */
    int nd = n;
    if (s->info->batch_invariant) {
        nd = 0;
        while (nd < n && !s->items[nd].prefill)
            nd++;
        for (int k = nd; k < n; k++)
            assert(s->items[k].prefill);
    }
    if ((nd > 0 && s->b->step(s->b, s->items, nd, err) < 0) ||
        (nd < n && s->b->step(s->b, s->items + nd, n - nd, err) < 0)) {
        fail_all(s, kerr_msg(err));
        return -1;
    }
    uint64_t gen = 0;
    for (int k = 0; k < n; k++)
        gen += (uint64_t)item_done(s, s->item_req[k], &s->items[k]);
    pthread_mutex_lock(&s->mu);
    s->steps++;
    s->generated_tokens += gen;
    pthread_mutex_unlock(&s->mu);
    return n;
}

int ks_run(ksched *s, kerr *err)
{
    pthread_mutex_lock(&s->mu);
    for (;;) {
        if (s->n_running == 0 && s->n_waiting == 0) {
            if (s->closed)
                break;
            pthread_cond_wait(&s->cv, &s->mu);
            continue;
        }
        pthread_mutex_unlock(&s->mu);
        if (ks_step(s, err) < 0)
            return -1;
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return 0;
}

void ks_metrics_get(ksched *s, ks_metrics *m)
{
    pthread_mutex_lock(&s->mu);
    m->running = s->n_running;
    m->waiting = s->n_waiting;
    m->kv_used = kv_used(s->kv);
    m->kv_total = kv_total(s->kv);
    m->preemptions = s->preemptions;
    m->steps = s->steps;
    m->prompt_tokens = s->prompt_tokens;
    m->generated_tokens = s->generated_tokens;
    pthread_mutex_unlock(&s->mu);
}
