/* cmd_serve — `kiln serve DIR`: an OpenAI-compatible HTTP server over the scheduler.
 *
 * The order is fixed so that clients and supervisors can rely on it: parse the options, listen
 * (print `kiln serve: listening on http://HOST:PORT`, with the real port for --port 0), load the
 * model while /health answers 503, start the engine thread (ks_run), then print `kiln serve:
 * ready: ...` and serve. SIGINT/SIGTERM: stop accepting, let running requests finish for
 * --grace seconds (a second signal cuts it short), cancel the rest, close every connection, free
 * everything and exit 0. The signals are blocked in every thread and taken here with sigwait, so
 * no handler runs inside the HTTP library or the model. A backend failure (the engine thread's
 * ks_run returns -1) ends the server with exit status 1 and the error.
 *
 * HTTP, JSON and metrics live in runtime/server/ (http.h, openai.h, metrics.h).
 */
#include <assert.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "artifact.h" /* KA_MAX_TP */
#include "cli.h"
#include "sched.h"
#include "server/http.h"
#include "server/openai.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

#define PROG "kiln serve"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kiln serve DIR [options]\n\n"
            "Serves a model over HTTP with OpenAI's API, batching requests continuously. DIR is a\n"
            "compiled model (holds model.kiln: the GPU engine) or a Hugging Face checkpoint folder\n"
            "(config.json + safetensors: the CPU backend, kilnc's fp32 reference interpreter; slow,\n"
            "for tests and for trying the server without a GPU).\n\n"
            "Endpoints: POST /v1/completions, /v1/chat/completions, /v1/embeddings (embedding\n"
            "models), /v1/classify (classifiers: scores, probs and the top label per input);\n"
            "GET /v1/models, /health (503 until loaded), /metrics (Prometheus).\n"
            "A sampling field a request leaves out takes the checkpoint's generation_config.json\n"
            "value (temperature, top_p, top_k; max_new_tokens for max_tokens, cut to fit the\n"
            "prompt), else OpenAI's default (kiln inspect DIR shows them under sampling).\n\n"
            "  --host ADDR         bind address (default 127.0.0.1)\n"
            "  --port N            TCP port (default 8000; 0 = any free port, printed)\n"
            "  --api-key KEY       require 'Authorization: Bearer KEY' on /v1/ routes (default:\n"
            "                      the environment's KILN_API_KEY; neither = open)\n"
            "  --model-name NAME   the model id in the API (default: DIR's base name)\n"
            "  --max-waiting N     waiting-queue limit; beyond it requests get 503 + Retry-After\n"
            "                      (default 1024)\n"
            "  --max-body BYTES    request body limit, 413 beyond (default 8388608)\n"
            "  --grace SECONDS     on SIGINT/SIGTERM: stop accepting, let running requests finish\n"
            "                      this long, then cancel the rest; exit 0 (default 30)\n"
            "  --kv-memory F       GPU: fraction of free memory for the KV cache (default 0.9)\n"
            "  --no-graphs         GPU: decode without CUDA graphs\n"
            "  --tp N              GPU: the GPUs the model is split over, as kilnc compile --tp\n"
            "                      made it (default: the artifact's)\n"
            "  --nnodes N --node-rank R --rendezvous HOST:PORT\n"
            "                      GPU: split the --tp ranks over N hosts (kiln run --help); nodes\n"
            "                      other than 0 serve no HTTP and run node 0's steps\n"
            "  --max-batch N       CPU backend: sequences per step (default 8)\n"
            "  --max-tokens N      CPU backend: tokens per step (default 256)\n"
            "  --max-seq-len N     CPU backend: prompt + generated tokens (default: the model's\n"
            "                      max positions, at most 2048)\n"
            "  --kv-blocks N       CPU backend: KV blocks (default: max-batch full sequences)\n"
            "  -h, --help          this help\n\n"
            "Prints 'kiln serve: listening on http://HOST:PORT' once listening, then\n"
            "'kiln serve: ready: ...' once the model is loaded.\n");
}

typedef struct opts {
    const char *dir, *host, *api_key, *model_name;
    int port, max_waiting;
    size_t max_body;
    double grace;
    cli_backend_opts bo;
} opts;

static int parse_int(const char *what, const char *text, int64_t min, int64_t max, int *out)
{
    kerr err;
    kerr_clear(&err);
    int64_t v;
    if (util_parse_i64(what, text, min, max, &v, &err))
        return util_usage_error(PROG, "%s", kerr_msg(&err));
    *out = (int)v;
    return 0;
}

/* 0, 1 (help printed: exit 0) or 2 (usage error printed). */
static int parse(int argc, char **argv, opts *o)
{
    o->host = "127.0.0.1";
    o->port = 8000;
    o->max_waiting = 1024;
    o->max_body = 8u << 20;
    o->grace = 30;
    const char *env_key = getenv("KILN_API_KEY");
    o->api_key = env_key && *env_key ? env_key : NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 1;
        }
        if (!strcmp(a, "--no-graphs")) {
            o->bo.no_graphs = 1;
            continue;
        }
        if (a[0] == '-' && a[1]) {
            static const char *const valued[] = {
                "--host", "--port", "--api-key", "--model-name", "--max-waiting", "--max-body",
                "--grace", "--kv-memory", "--max-batch", "--max-tokens", "--max-seq-len",
                "--kv-blocks", "--tp", "--nnodes", "--node-rank", "--rendezvous"};
            int known = 0;
            for (size_t k = 0; k < ARRAY_LEN(valued); k++)
                known |= !strcmp(a, valued[k]);
            if (!known)
                return util_usage_error(PROG, "unknown option '%s'", a);
            if (i + 1 >= argc)
                return util_usage_error(PROG, "%s needs a value", a);
            const char *v = argv[++i];
            kerr err;
            kerr_clear(&err);
            int rc = 0;
            if (!strcmp(a, "--host"))
                o->host = v;
            else if (!strcmp(a, "--port"))
                rc = parse_int(a, v, 0, 65535, &o->port);
            else if (!strcmp(a, "--api-key")) {
                if (!*v)
                    return util_usage_error(PROG, "--api-key: the key is empty");
                o->api_key = v;
            } else if (!strcmp(a, "--model-name")) {
                if (!*v)
                    return util_usage_error(PROG, "--model-name: the name is empty");
                o->model_name = v;
            } else if (!strcmp(a, "--max-waiting"))
                rc = parse_int(a, v, 1, 1 << 20, &o->max_waiting);
            else if (!strcmp(a, "--max-body")) {
                int64_t b;
                if (util_parse_i64(a, v, 1, (int64_t)1 << 30, &b, &err))
                    return util_usage_error(PROG, "%s", kerr_msg(&err));
                o->max_body = (size_t)b;
            } else if (!strcmp(a, "--grace")) {
                if (util_parse_f64(a, v, 0, 86400, 0, &o->grace, &err))
                    return util_usage_error(PROG, "%s", kerr_msg(&err));
            } else if (!strcmp(a, "--kv-memory")) {
                if (util_parse_f64(a, v, 0, 1, UTIL_ABOVE_MIN, &o->bo.kv_memory, &err))
                    return util_usage_error(PROG, "%s", kerr_msg(&err));
            } else if (!strcmp(a, "--tp"))
                rc = parse_int(a, v, 1, KA_MAX_TP, &o->bo.tp);
            else if (!strcmp(a, "--nnodes"))
                rc = parse_int(a, v, 1, KA_MAX_TP, &o->bo.nnodes);
            else if (!strcmp(a, "--node-rank"))
                rc = parse_int(a, v, 0, KA_MAX_TP - 1, &o->bo.node_rank);
            else if (!strcmp(a, "--rendezvous"))
                o->bo.rendezvous = v;
            else if (!strcmp(a, "--max-batch"))
                rc = parse_int(a, v, 1, 4096, &o->bo.max_batch);
            else if (!strcmp(a, "--max-tokens"))
                rc = parse_int(a, v, 1, 1 << 20, &o->bo.max_tokens);
            else if (!strcmp(a, "--max-seq-len"))
                rc = parse_int(a, v, 1, 1 << 24, &o->bo.max_seq_len);
            else {
                assert(!strcmp(a, "--kv-blocks"));
                rc = parse_int(a, v, 1, 1 << 24, &o->bo.kv_blocks);
            }
            if (rc)
                return rc;
            continue;
        }
        if (o->dir)
            return util_usage_error(PROG, "one model folder expected, got '%s' and '%s'", o->dir,
                                    a);
        o->dir = a;
    }
    if (!o->dir)
        return util_usage_error(PROG, "missing DIR (a compiled model or a Hugging Face "
                                      "checkpoint folder)");
    return 0;
}

/* Connections the server accepts: the open-file limit raised to its hard maximum, less room for
 * the model's own files. Says so when that is below the 1,000 streams the server is built for. */
static unsigned max_connections(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl))
        return 1000;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    rlim_t n = rl.rlim_cur > 128 ? rl.rlim_cur - 64 : 64;
    if (n > 16384)
        n = 16384;
    if (n < 1000)
        fprintf(stderr, PROG ": note: the open-file limit (ulimit -n) is %llu: at most %llu "
                        "connections at once (raise it for more)\n",
                (unsigned long long)rl.rlim_cur, (unsigned long long)n);
    return (unsigned)n;
}

typedef struct engine {
    ksched *ks;
    int rc;
    kerr err;
} engine;

static void *engine_main(void *arg)
{
    engine *e = arg;
    kerr_clear(&e->err);
    e->rc = ks_run(e->ks, &e->err);
    if (e->rc)
        kill(getpid(), SIGTERM); /* the model failed: the main thread ends the server */
    return NULL;
}

/* Waits up to `grace` seconds for the engine thread; a second signal cuts the wait short. 1 when
 * the thread has ended; 0, having said why on stderr, when not. */
static int wait_engine(pthread_t t, const sigset_t *sigs, double grace)
{
    double deadline = util_now() + grace;
    while (util_now() < deadline) {
        if (pthread_tryjoin_np(t, NULL) == 0)
            return 1;
        struct timespec ts = {0, 50 * 1000 * 1000};
        if (sigtimedwait(sigs, NULL, &ts) > 0) {
            fprintf(stderr, PROG ": second signal: cancelling the running requests\n");
            return 0;
        }
    }
    if (pthread_tryjoin_np(t, NULL) == 0)
        return 1;
    fprintf(stderr, PROG ": cancelling the requests still running after %g s\n", grace);
    return 0;
}

int cmd_serve(int argc, char **argv)
{
    opts o = {0};
    int prc = parse(argc, argv, &o);
    if (prc)
        return prc == 1 ? 0 : prc;
    if (o.bo.node_rank > 0) /* no HTTP: node 0's steps */
        return cli_follow(PROG, o.dir, &o.bo);

    /* every thread created from here on inherits the mask: signals come only to sigwait */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    kerr err;
    kerr_clear(&err);
    srv_opts so = {o.host, o.port, o.api_key, o.max_body, max_connections()};
    server *srv = srv_start(&so, &err);
    if (!srv) {
        kerr_print(PROG, &err);
        return 1;
    }
    int v6 = strchr(o.host, ':') != NULL;
    fprintf(stderr, PROG ": listening on http://%s%s%s:%d\n", v6 ? "[" : "", o.host,
            v6 ? "]" : "", srv_port(srv));

    /* load: the backend, the tokenizer (optional), the chat template (optional) */
    cli_backend_opts bo = o.bo;
    kbackend *b = cli_open_backend(o.dir, &bo, &err);
    tokenizer *tok = NULL;
    ct_model ct;
    int have_ct = 0;
    char *ct_error = NULL, *name = o.model_name ? xstrdup(o.model_name) : util_base_name(o.dir);
    ksched *ks = NULL;
    if (b) {
        char *tj = util_path_join(o.dir, "tokenizer.json");
        if (util_is_file(tj))
            tok = tok_load(o.dir, &err);
        else
            fprintf(stderr, PROG ": note: %s has no tokenizer.json: prompts must be token ids "
                            "and text fields are empty\n", o.dir);
        free(tj);
        if (tok || !err.n) {
            kerr ce;
            kerr_clear(&ce);
            have_ct = ct_model_load(o.dir, &ct, &ce) == 0;
            if (!have_ct)
                ct_error = xstrdup(kerr_msg(&ce));
            ks_opts ko = {o.max_waiting};
            ks = ks_new(b, &ko);
        }
    }
    if (!ks) {
        kerr_print(PROG, &err);
        srv_stop(srv);
        if (tok)
            tok_free(tok);
        if (b)
            b->free(b);
        free(name);
        return 1;
    }
    oa_model model = {name, ks_info(ks), tok, have_ct ? &ct : NULL, ct_error, ks_info(ks)->gen};
    if (!have_ct && !ks_info(ks)->embed)
        fprintf(stderr, PROG ": note: /v1/chat/completions is off: %s\n", ct_error);

    engine eng = {.ks = ks};
    pthread_t et;
    if (pthread_create(&et, NULL, engine_main, &eng)) {
        fprintf(stderr, PROG ": error: cannot start the engine thread\n");
        return 1;
    }
    srv_ready(srv, ks, &model);
    fprintf(stderr, PROG ": ready: %s\n", b->describe(b));

    int sig;
    sigwait(&sigs, &sig);
    fprintf(stderr, PROG ": %s: no new connections; finishing the running requests\n",
            sig == SIGINT ? "SIGINT" : "SIGTERM");
    srv_quiesce(srv);
    ks_shutdown(ks, 0);
    if (!wait_engine(et, &sigs, o.grace)) {
        ks_shutdown(ks, 1);
        pthread_join(et, NULL);
    }
    srv_engine_stopped(srv);
    srv_stop(srv);
    ks_free(ks);
    b->free(b);
    if (tok)
        tok_free(tok);
    if (have_ct)
        ct_model_free(&ct);
    free(ct_error);
    free(name);
    if (eng.rc) {
        kerr_print(PROG, &eng.err);
        return 1;
    }
    fprintf(stderr, PROG ": stopped\n");
    return 0;
}
