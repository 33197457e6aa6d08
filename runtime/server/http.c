/* http — `kiln serve` over libmicrohttpd (see http.h for the threads and the flow).
 *
 * One request (hreq) is shared by its connection thread and the engine thread, which delivers
 * the scheduler's events (on_event). It is reference counted: one reference for the HTTP side
 * (dropped in MHD's request-completed callback) and one per submitted scheduler request (dropped
 * by that request's final event), so whichever side finishes last frees it. The engine thread
 * only copies events into the request's queue and signals; detokenizing, stop strings and JSON
 * run on the connection thread, so a slow client or a large response never slows a step.
 *
 * Limits: a body over max_body is refused with 413 as soon as its Content-Length is seen, before
 * it is read (a chunked body is dropped from the byte that passes the limit, and refused at its
 * end); connections are bounded by max_connections (MHD refuses more); every connection thread
 * has a fixed stack.
 * Deliberate simplification: the server speaks plain HTTP (put a TLS proxy in front of it).
 */
#include "server/http.h"

#include <assert.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Connection threads run the tokenizer and the chat template's interpreter (whose nesting is
 * bounded, ct_options.max_depth): 4 MiB is ample and 1,000 connections reserve 4 GiB of address
 * space, of which only the touched pages are memory. */
#define STACK_SIZE (4u << 20)
#define KEEPALIVE_S 1.0
/* srv_stop gives the responses being answered this long to go out before it closes every
 * connection: a stream cancelled at shutdown ends with its finish_reason and [DONE], not cut */
#define FLUSH_S 1.0

struct server {
    struct MHD_Daemon *d;
    srv_opts o;
    int port;
    MHD_socket quiesced_fd;      /* the listening socket after srv_quiesce, closed at srv_stop */
    sm_metrics *metrics;
    ksched *ks;                  /* set by srv_ready, read once `ready` is seen */
    const oa_model *m;
    int ready;                   /* atomic */
    int engine_stopped;          /* atomic */
    uint64_t next_id;            /* atomic */
    int answering;               /* atomic: requests being answered (count_answering) */
};

typedef struct hreq hreq;
typedef struct slot {
    hreq *h;
    int index;
} slot;

struct hreq {
    server *srv;
    sm_endpoint ep;
    int responded;               /* a response is queued: further body bytes are dropped */
    int counted;                 /* counted in srv->answering */
    oa_buf body;
    size_t body_bytes;           /* received so far (the body is dropped once over the limit) */
    double t_start;
    char id[48];
    long created;
    oa_request req;
    int n;                       /* choices (submitted scheduler requests) */
    oa_choice *ch;
    slot *slots;
    uint64_t *ks_id;
    int *err_sent;
    oa_buf out;                  /* stream: bytes not yet handed to MHD */
    size_t out_pos;
    int stream_end;              /* stream: [DONE] is in out */

    pthread_mutex_t mu;          /* guards everything below */
    pthread_cond_t cv;
    int refs;
    int http_done;               /* MHD completed the request: events are dropped */
    int *final;                  /* per choice: its final event arrived */
    double *t_last;              /* per choice: time of its last token (0: none yet) */
    ks_event *q;                 /* events not yet taken by the connection thread */
    int qn, qcap;
};

/* ------------------------------------------------------------------ requests */

static hreq *hreq_new(server *s, sm_endpoint ep)
{
    hreq *h = xcalloc(1, sizeof *h);
    h->srv = s;
    h->ep = ep;
    h->t_start = util_now();
    h->created = (long)time(NULL);
    h->refs = 1;
    h->req.logprobs = -1;
    pthread_mutex_init(&h->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&h->cv, &ca);
    pthread_condattr_destroy(&ca);
    return h;
}

static void event_free(ks_event *e)
{
    free((void *)e->embedding);
    free((void *)e->error);
}

static void hreq_free(hreq *h)
{
    for (int i = 0; i < h->qn; i++)
        event_free(&h->q[i]);
    free(h->q);
    for (int i = 0; i < h->n; i++)
        oa_choice_free(&h->ch[i]);
    free(h->ch);
    free(h->slots);
    free(h->ks_id);
    free(h->err_sent);
    free(h->final);
    free(h->t_last);
    oa_request_free(&h->req);
    oa_buf_free(&h->body);
    oa_buf_free(&h->out);
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->cv);
    free(h);
}

/* Drops a reference taken under h->mu; frees h when it was the last. */
static void unref_locked(hreq *h)
{
    int last = --h->refs == 0;
    pthread_mutex_unlock(&h->mu);
    if (last)
        hreq_free(h);
}

/* The scheduler's callback, on the engine thread: copy, queue, signal. */
static void on_event(const ks_event *ev)
{
    slot *sl = ev->user;
    hreq *h = sl->h;
    server *s = h->srv;
    double now = util_now();
    pthread_mutex_lock(&h->mu);
    if (ev->has_token && ev->prompt_pos < 0) {
        double last = h->t_last[sl->index];
        sm_observe(s->metrics, last ? SM_ITL : SM_TTFT, now - (last ? last : h->t_start));
        h->t_last[sl->index] = now;
    }
    if (!h->http_done) {
        if (h->qn == h->qcap) {
            h->qcap = h->qcap ? 2 * h->qcap : 16;
            h->q = xrealloc(h->q, (size_t)h->qcap * sizeof *h->q);
        }
        ks_event *e = &h->q[h->qn++];
        *e = *ev;
        if (ev->embedding) {
            size_t bytes = (size_t)s->m->info->hidden * sizeof(float);
            float *v = xmalloc(bytes);
            memcpy(v, ev->embedding, bytes);
            e->embedding = v;
        }
        e->error = ev->error ? xstrdup(ev->error) : NULL;
        pthread_cond_signal(&h->cv);
    }
    if (ev->finish == KS_RUNNING) {
        pthread_mutex_unlock(&h->mu);
        return;
    }
    sm_observe(s->metrics, SM_LATENCY, now - h->t_start);
    h->final[sl->index] = 1;
    unref_locked(h);
}

static int all_done(const hreq *h)
{
    for (int i = 0; i < h->n; i++)
        if (!h->ch[i].done)
            return 0;
    return 1;
}

/* Waits up to `timeout` seconds for events and applies them to the choices. Returns the number
 * of events applied (0: the wait timed out). */
static int pump(hreq *h, double timeout)
{
    server *s = h->srv;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    long long ns = ts.tv_nsec + (long long)(timeout * 1e9);
    ts.tv_sec += ns / 1000000000;
    ts.tv_nsec = ns % 1000000000;
    /* read before the queue is taken: the engine stops only after its last event, so once it is
     * seen stopped, an empty queue means nothing more will come (read after, a final event queued
     * in between would be overruled by the error below) */
    int stopped = __atomic_load_n(&s->engine_stopped, __ATOMIC_ACQUIRE);
    pthread_mutex_lock(&h->mu);
    while (h->qn == 0 && !stopped)
        if (pthread_cond_timedwait(&h->cv, &h->mu, &ts) == ETIMEDOUT)
            break;
    ks_event *q = h->q;
    int qn = h->qn;
    h->q = NULL;
    h->qn = h->qcap = 0;
    pthread_mutex_unlock(&h->mu);
    for (int i = 0; i < qn; i++) {
        const slot *sl = q[i].user;
        if (oa_choice_event(&h->ch[sl->index], s->m, &h->req, &q[i]))
            ks_cancel(s->ks, h->ks_id[sl->index]); /* a stop string ended it */
        event_free(&q[i]);
    }
    free(q);
    /* the engine thread is gone (a backend failure): nothing more will come */
    if (qn == 0 && stopped)
        for (int i = 0; i < h->n; i++)
            if (!h->ch[i].done) {
                h->ch[i].done = 1;
                h->ch[i].error = xstrdup("the model stopped before this request finished");
            }
    return qn;
}

static void cancel_all(hreq *h)
{
    for (int i = 0; i < h->n; i++) {
        pthread_mutex_lock(&h->mu);
        int fin = h->final[i];
        pthread_mutex_unlock(&h->mu);
        if (!fin)
            ks_cancel(h->srv->ks, h->ks_id[i]);
    }
}

/* ------------------------------------------------------------------ responses */

/* The request is being answered (its body is in, or a response is queued) until MHD completes
 * it: srv_stop waits for those a moment. */
static void count_answering(hreq *h)
{
    if (!h->counted) {
        h->counted = 1;
        __atomic_add_fetch(&h->srv->answering, 1, __ATOMIC_ACQ_REL);
    }
}

/* The endpoints that take a POST (the others, a GET). */
static int routes_post(sm_endpoint ep)
{
    return ep == SM_COMPLETIONS || ep == SM_CHAT || ep == SM_EMBEDDINGS || ep == SM_CLASSIFY;
}

static enum MHD_Result queue(struct MHD_Connection *c, hreq *h, int status, char *body,
                             const char *type)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (status == 503)
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (status == 405)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW,
                                       routes_post(h->ep) ? "POST" : "GET, HEAD");
    if (status == 401)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    sm_request(h->srv->metrics, h->ep, status);
    h->responded = 1;
    count_answering(h);
    return ret;
}

static enum MHD_Result queue_error(struct MHD_Connection *c, hreq *h, const oa_error *e)
{
    return queue(c, h, e->status, oa_error_json(e), "application/json");
}

static enum MHD_Result reply_error(struct MHD_Connection *c, hreq *h, int status, const char *fmt,
                             ...) __attribute__((format(printf, 4, 5)));
static enum MHD_Result reply_error(struct MHD_Connection *c, hreq *h, int status, const char *fmt, ...)
{
    oa_error e;
    char msg[sizeof e.message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    oa_error_set(&e, status, NULL, "%s", msg);
    return queue_error(c, h, &e);
}

/* The peer closed its end (or the socket failed): a non-streaming request stops waiting. */
static int client_gone(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci)
        return 0;
    struct pollfd p = {.fd = ci->connect_fd, .events = POLLRDHUP};
    if (poll(&p, 1, 0) <= 0)
        return 0;
    return (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

/* The first error among the choices, as a 500 (the backend failed). */
static const char *choice_error(const hreq *h)
{
    for (int i = 0; i < h->n; i++)
        if (h->ch[i].error)
            return h->ch[i].error;
    return NULL;
}

/* Stream content callback: hands MHD the next bytes, waiting for events as needed. */
static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    hreq *h = cls;
    server *s = h->srv;
    while (h->out_pos == h->out.len) {
        if (h->stream_end)
            return MHD_CONTENT_READER_END_OF_STREAM;
        h->out.len = h->out_pos = 0;
        for (int i = 0; i < h->n; i++) {
            oa_choice *c = &h->ch[i];
            if (!OA_POOLED(h->req.ep))
                oa_chunk(s->m, &h->req, h->id, h->created, c, &h->out);
            if (c->error && !h->err_sent[i]) {
                oa_error e;
                oa_error_set(&e, 500, NULL, "choice %d: %s", i, c->error);
                char *j = oa_error_json(&e);
                oa_buf_add(&h->out, "data: ", 6);
                oa_buf_add(&h->out, j, strlen(j));
                oa_buf_add(&h->out, "\n\n", 2);
                free(j);
                h->err_sent[i] = 1;
            }
        }
        if (all_done(h)) {
            if (h->req.include_usage)
                oa_usage_chunk(s->m, &h->req, h->id, h->created, h->ch, h->n, &h->out);
            static const char done[] = "data: [DONE]\n\n";
            oa_buf_add(&h->out, done, sizeof done - 1);
            h->stream_end = 1;
        } else if (h->out.len == 0 && pump(h, KEEPALIVE_S) == 0) {
            /* nothing for a second: a comment line, so a vanished client shows as a write
             * failure (and the request is cancelled) */
            static const char ka[] = ": keep-alive\n\n";
            oa_buf_add(&h->out, ka, sizeof ka - 1);
        }
    }
    size_t n = h->out.len - h->out_pos;
    if (n > max)
        n = max;
    memcpy(buf, h->out.p + h->out_pos, n);
    h->out_pos += n;
    return (ssize_t)n;
}

/* Submits every choice. On failure the ones already submitted are cancelled and e says why. */
static int submit(hreq *h, oa_error *e)
{
    server *s = h->srv;
    oa_request *r = &h->req;
    int n = r->n_prompts;
    h->ch = xcalloc((size_t)n, sizeof *h->ch);
    h->slots = xcalloc((size_t)n, sizeof *h->slots);
    h->ks_id = xcalloc((size_t)n, sizeof *h->ks_id);
    h->err_sent = xcalloc((size_t)n, sizeof *h->err_sent);
    h->final = xcalloc((size_t)n, sizeof *h->final);
    h->t_last = xcalloc((size_t)n, sizeof *h->t_last);
    for (int i = 0; i < n; i++) {
        oa_choice_init(&h->ch[i], s->m, r, i);
        h->slots[i] = (slot){h, i};
        ks_params p = {
            .prompt = r->prompts[i].ids,
            .n_prompt = r->prompts[i].n,
            .max_new = OA_POOLED(r->ep) ? 0 : r->max_tokens,
            .ignore_eos = r->ignore_eos,
            .sp = r->sp,
            .logprobs = OA_POOLED(r->ep) ? -1 : r->logprobs,
            .prompt_logprobs = oa_prompt_logprobs(r),
            .cb = on_event,
            .user = &h->slots[i],
        };
        kerr err;
        kerr_clear(&err);
        pthread_mutex_lock(&h->mu);
        h->refs++; /* the callback may run before ks_submit returns */
        pthread_mutex_unlock(&h->mu);
        int rc = ks_submit(s->ks, &p, &h->ks_id[i], &err);
        if (rc == KS_OK) {
            h->n = i + 1;
            continue;
        }
        pthread_mutex_lock(&h->mu);
        h->refs--;
        pthread_mutex_unlock(&h->mu);
        oa_choice_free(&h->ch[i]);
        cancel_all(h);
        char pi[32] = "";
        if (n > 1)
            snprintf(pi, sizeof pi, "prompt %d: ", i);
        return oa_error_set(e, rc == KS_EINVAL ? 400 : 503, NULL, "%s%s", pi, kerr_msg(&err));
    }
    return 0;
}

static const char *id_prefix(oa_endpoint ep)
{
    return ep == OA_CHAT ? "chatcmpl" : ep == OA_COMPLETIONS ? "cmpl" : ep == OA_CLASSIFY ? "classify" : "embd";
}

/* A POST whose body has arrived: validate, submit, answer. */
static enum MHD_Result handle_post(struct MHD_Connection *c, hreq *h)
{
    server *s = h->srv;
    oa_endpoint ep = h->ep == SM_CHAT ? OA_CHAT : h->ep == SM_EMBEDDINGS ? OA_EMBEDDINGS
                     : h->ep == SM_CLASSIFY ? OA_CLASSIFY : OA_COMPLETIONS;
    oa_error e;
    count_answering(h);
    if (oa_parse(s->m, ep, h->body.p ? h->body.p : "", h->body.len, &h->req, &e))
        return queue_error(c, h, &e);
    oa_buf_free(&h->body);
    snprintf(h->id, sizeof h->id, "%s-%016llx", id_prefix(ep),
             (unsigned long long)__atomic_add_fetch(&s->next_id, 1, __ATOMIC_RELAXED));
    if (submit(h, &e)) {
        /* the choices submitted before the failure finish as cancelled; no one waits for them */
        for (int i = 0; i < h->n; i++)
            h->ch[i].done = 1;
        return queue_error(c, h, &e);
    }
    if (h->req.stream) {
        struct MHD_Response *r =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 << 10, stream_reader, h, NULL);
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        sm_request(s->metrics, h->ep, 200);
        h->responded = 1;
        return ret;
    }
    double checked = util_now();
    int cancelled = 0;
    while (!all_done(h)) {
        pump(h, KEEPALIVE_S);
        if (!cancelled && util_now() - checked >= KEEPALIVE_S) {
            checked = util_now();
            if (client_gone(c)) {
                cancel_all(h);
                cancelled = 1;
            }
        }
    }
    const char *err = choice_error(h);
    if (err) {
        oa_error_set(&e, 500, NULL, "%s", err);
        return queue_error(c, h, &e);
    }
    for (int i = 0; OA_POOLED(ep) && i < h->n; i++)
        if (!h->ch[i].embedding) {
            /* cancelled before it ran: the server is shutting down */
            oa_error_set(&e, 503, NULL, "input %d was cancelled before it ran (the server is "
                         "shutting down)", i);
            return queue_error(c, h, &e);
        }
    char *body = ep == OA_EMBEDDINGS ? oa_embeddings(s->m, &h->req, h->ch, h->n)
                 : ep == OA_CLASSIFY ? oa_classify(s->m, &h->req, h->id, h->created, h->ch, h->n)
                                     : oa_response(s->m, &h->req, h->id, h->created, h->ch, h->n);
    return queue(c, h, 200, body, "application/json");
}

/* ------------------------------------------------------------------ routing */

static const struct {
    const char *path;
    sm_endpoint ep;
    int post;
} routes[] = {
    {"/v1/completions", SM_COMPLETIONS, 1},
    {"/v1/chat/completions", SM_CHAT, 1},
    {"/v1/embeddings", SM_EMBEDDINGS, 1},
    {"/v1/classify", SM_CLASSIFY, 1},
    {"/v1/models", SM_MODELS, 0},
    {"/health", SM_HEALTH, 0},
    {"/metrics", SM_METRICS, 0},
};

static int authorized(server *s, struct MHD_Connection *c)
{
    if (!s->o.api_key)
        return 1;
    const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    /* the scheme is case-insensitive and whitespace around the token is not part of it (RFC
     * 9110 11.1, 5.5): `bearer  KEY ` is the same credential */
    if (!a || strncasecmp(a, "Bearer", 6) || (a[6] != ' ' && a[6] != '\t'))
        return 0;
    a += 6;
    a += strspn(a, " \t");
    size_t n = strlen(a), k = strlen(s->o.api_key);
    while (n && (a[n - 1] == ' ' || a[n - 1] == '\t'))
        n--;
    /* compare every byte whatever matches, so timing does not reveal the key's prefix */
    unsigned diff = n != k;
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned char)a[i] ^ (unsigned char)s->o.api_key[i < k ? i : 0];
    return diff == 0;
}

static enum MHD_Result handle_get(struct MHD_Connection *c, hreq *h)
{
    server *s = h->srv;
    int ready = __atomic_load_n(&s->ready, __ATOMIC_ACQUIRE);
    switch (h->ep) {
    case SM_HEALTH:
        return ready ? queue(c, h, 200, xstrdup("{\"status\":\"ok\"}"), "application/json")
                     : reply_error(c, h, 503, "the model is loading");
    case SM_METRICS: {
        ks_metrics km;
        if (ready)
            ks_metrics_get(s->ks, &km);
        return queue(c, h, 200, sm_render(s->metrics, ready ? &km : NULL),
                     "text/plain; version=0.0.4; charset=utf-8");
    }
    case SM_MODELS:
        return queue(c, h, 200, oa_models(s->m, h->created), "application/json");
    default:
        assert(0 && "not a GET route");
        return MHD_NO;
    }
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    server *s = cls;
    hreq *h = *con_cls;
    if (!h) {
        /* the headers are in: route, check and refuse what can be refused unread */
        int r = -1;
        for (int i = 0; i < (int)ARRAY_LEN(routes); i++)
            if (!strcmp(url, routes[i].path))
                r = i;
        h = hreq_new(s, r < 0 ? SM_OTHER : routes[r].ep);
        *con_cls = h;
        /* MHD reads a body as chunked when both framings are given and keeps the connection,
         * and waits for an end that never comes under a coding it does not know: both are
         * refused unread, and the connection closes (RFC 9112 6.1, 6.3: a proxy in front that
         * framed it by Content-Length would see a smuggled request) */
        const char *te =
            MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING);
        if (te && strcasecmp(te, "chunked"))
            return reply_error(c, h, 501, "Transfer-Encoding: %s is not supported: send the body "
                               "with Content-Length or Transfer-Encoding: chunked", te);
        if (te && MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH))
            return reply_error(c, h, 400, "both Transfer-Encoding and Content-Length: send one");
        if (r < 0)
            return reply_error(c, h, 404, "no route %s %s (routes: POST /v1/completions, "
                               "/v1/chat/completions, /v1/embeddings, /v1/classify; GET /v1/models, /health, "
                               "/metrics)", method, url);
        int post = routes[r].post;
        /* HEAD is GET without the body (MHD leaves it out): health checkers send it */
        if (strcmp(method, post ? MHD_HTTP_METHOD_POST : MHD_HTTP_METHOD_GET) &&
            (post || strcmp(method, MHD_HTTP_METHOD_HEAD)))
            return reply_error(c, h, 405, "%s takes %s, not %s", url, post ? "POST" : "GET",
                               method);
        if (!strncmp(url, "/v1/", 4) && !authorized(s, c))
            return reply_error(c, h, 401,
                               "missing or wrong API key: send 'Authorization: Bearer KEY'");
        if (post) {
            const char *cl =
                MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
            if (cl && strtoull(cl, NULL, 10) > s->o.max_body)
                return reply_error(c, h, 413, "the body is %s bytes, over this server's limit of "
                                   "%zu (kiln serve --max-body)", cl, s->o.max_body);
        }
        if (h->ep != SM_HEALTH && h->ep != SM_METRICS &&
            !__atomic_load_n(&s->ready, __ATOMIC_ACQUIRE))
            return reply_error(c, h, 503, "the model is loading: retry shortly");
        /* answered on the next call: a response queued on the first one closes the
         * connection (MHD cannot know yet that the request was read), and clients keep
         * theirs alive */
        return MHD_YES;
    }
    if (h->responded) {
        *upload_data_size = 0; /* a refused body: dropped as it comes */
        return MHD_YES;
    }
    if (*upload_data_size) {
        /* a body without Content-Length (chunked) over the limit: MHD cannot answer in the
         * middle of an upload, so the rest is counted and dropped, and the 413 goes out at its
         * end; a client that keeps sending far beyond the limit is cut off */
        h->body_bytes += *upload_data_size;
        if (h->body_bytes > s->o.max_body) {
            oa_buf_free(&h->body);
            *upload_data_size = 0;
            return h->body_bytes / 16 > s->o.max_body ? MHD_NO : MHD_YES;
        }
        oa_buf_add(&h->body, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (!routes_post(h->ep))
        return handle_get(c, h);
    if (h->body_bytes > s->o.max_body)
        return reply_error(c, h, 413, "the body is %zu bytes, over this server's limit of %zu "
                           "(kiln serve --max-body)", h->body_bytes, s->o.max_body);
    return handle_post(c, h);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    hreq *h = *con_cls;
    if (!h)
        return;
    *con_cls = NULL;
    /* whatever is still running is no longer wanted (a client gone mid-stream, a stream whose
     * stop string matched): its KV blocks are freed within one step */
    cancel_all(h);
    if (h->counted)
        __atomic_sub_fetch(&h->srv->answering, 1, __ATOMIC_ACQ_REL);
    pthread_mutex_lock(&h->mu);
    h->http_done = 1;
    unref_locked(h);
}

/* ------------------------------------------------------------------ daemon */

server *srv_start(const srv_opts *o, kerr *err)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE}, *ai;
    char port[16];
    snprintf(port, sizeof port, "%d", o->port);
    int rc = getaddrinfo(o->host, port, &hints, &ai);
    if (rc) {
        kerr_add(err, "--host %s: %s", o->host, gai_strerror(rc));
        return NULL;
    }
    server *s = xcalloc(1, sizeof *s);
    s->o = *o;
    s->quiesced_fd = MHD_INVALID_SOCKET;
    s->metrics = sm_new();
    s->next_id = (uint64_t)time(NULL) << 24;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                     MHD_USE_POLL | MHD_USE_ITC;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    s->d = MHD_start_daemon(flags, (uint16_t)o->port, NULL, NULL, on_request, s,
                            MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                            MHD_OPTION_CONNECTION_LIMIT, o->max_connections,
                            MHD_OPTION_THREAD_STACK_SIZE, (size_t)STACK_SIZE,
                            MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u,
                            /* a connection idle this long (a stalled body, an idle keep-alive)
                             * is closed; a request being answered is never idle: its thread is in
                             * our handler, and streams send keep-alives every second */
                            MHD_OPTION_CONNECTION_TIMEOUT, 60u,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                            MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!s->d) {
        kerr_add(err, "cannot listen on %s port %d (in use, or not an address of this machine?)",
                 o->host, o->port);
        sm_free(s->metrics);
        free(s);
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : o->port;
    return s;
}

int srv_port(const server *s)
{
    return s->port;
}

void srv_ready(server *s, ksched *ks, const oa_model *m)
{
    s->ks = ks;
    s->m = m;
    __atomic_store_n(&s->ready, 1, __ATOMIC_RELEASE);
}

void srv_engine_stopped(server *s)
{
    __atomic_store_n(&s->engine_stopped, 1, __ATOMIC_RELEASE);
}

void srv_quiesce(server *s)
{
    if (s->quiesced_fd == MHD_INVALID_SOCKET)
        s->quiesced_fd = MHD_quiesce_daemon(s->d);
}

void srv_stop(server *s)
{
    if (!s)
        return;
    double end = util_now() + FLUSH_S;
    while (__atomic_load_n(&s->answering, __ATOMIC_ACQUIRE) > 0 && util_now() < end) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    MHD_stop_daemon(s->d);
    if (s->quiesced_fd != MHD_INVALID_SOCKET)
        close(s->quiesced_fd);
    sm_free(s->metrics);
    free(s);
}
