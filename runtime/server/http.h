/* http — `kiln serve`'s HTTP side, over libmicrohttpd: routes, authentication, body limits, and
 * the bridge between HTTP connection threads and the scheduler (sched.h).
 *
 * The server listens before the model is loaded (GET /health says 503 until srv_ready). Each
 * connection has its own thread (MHD_USE_THREAD_PER_CONNECTION): a POST is validated and encoded
 * on it (openai.h), submitted with ks_submit, and answered from the scheduler's events, which
 * the engine thread queues on the request; a non-streaming request waits on its connection
 * thread, a stream (server-sent events) waits in MHD's content callback, sending a keep-alive
 * comment every second without events so that a vanished client is noticed. A request whose
 * connection ends early is cancelled (ks_cancel). Nothing here touches the model or the GPU.
 */
#ifndef KILN_SERVER_HTTP_H
#define KILN_SERVER_HTTP_H

#include <stddef.h>

#include "../sched.h"
#include "../util.h"
#include "server/metrics.h"
#include "server/openai.h"

typedef struct srv_opts {
    const char *host;        /* numeric IPv4 or IPv6 address to bind */
    int port;                /* 0: any free port */
    const char *api_key;     /* NULL: open; else `Authorization: Bearer KEY` on /v1/ routes */
    size_t max_body;         /* bytes; 413 beyond */
    unsigned max_connections;
} srv_opts;

typedef struct server server;

/* Binds and listens (the model is not loaded yet: /health is 503). NULL with err on failure. */
server *srv_start(const srv_opts *o, kerr *err);
int srv_port(const server *s);
/* The model is loaded: requests go to ks, described by m (both outlive the server's traffic). */
void srv_ready(server *s, ksched *ks, const oa_model *m);
/* The engine thread stopped (ks_run returned): requests still waiting for events fail. */
void srv_engine_stopped(server *s);
/* Stops accepting connections (MHD_quiesce_daemon); open ones are still served. */
void srv_quiesce(server *s);
/* Gives the requests being answered up to a second to send the rest of their responses, then
 * closes every connection (waiting for their threads) and frees the server. */
void srv_stop(server *s);

#endif
