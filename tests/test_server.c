/* test_server — `kiln serve`: the OpenAI layer (runtime/server/openai.c) as units, and the server
 * end to end over loopback.
 *
 * Units: the stop-string matcher (a stop across token boundaries, a stop string that is a prefix
 * of another, text held back and released, and a random property check that no byte of a stop
 * string is ever released), one choice fed scheduler events (the stop ends the text and asks for
 * a cancel, and the stream chunks never carry any of it), and request validation: every 400/404
 * case, each message naming the field and the range.
 *
 * End to end: `kiln serve examples/tinyfortune --port 0 --api-key K --max-body 4096` (the CPU
 * backend; $KILN is the binary) driven by a small HTTP client over a socket: /health, a
 * completion, a streamed completion ending in [DONE], 401 without the key, 404, 405, 413 as soon
 * as a Content-Length over the limit is sent, /metrics, then SIGTERM and exit status 0.
 */
#include "testutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>

#include "server/openai.h"

#define EXAMPLE "examples/tinyfortune"

static tokenizer *TOK;

/* ------------------------------------------------------------------ stop strings */

typedef struct stop_run {
    oa_buf out;
    int hit;
} stop_run;

static void push(oa_stop *s, stop_run *r, const char *piece)
{
    r->hit = oa_stop_push(s, piece, strlen(piece), &r->out);
}

static void test_stop_across_tokens(void **state)
{
    (void)state;
    char *stops[] = {"END", "\n\n"};
    oa_stop s;
    oa_stop_init(&s, stops, 2);
    stop_run r = {0};
    push(&s, &r, "Hello E");
    assert_false(r.hit);
    assert_string_equal(r.out.p, "Hello "); /* "E" may start "END" */
    push(&s, &r, "N");
    assert_false(r.hit);
    assert_string_equal(r.out.p, "Hello ");
    push(&s, &r, "Dless");
    assert_true(r.hit);
    assert_string_equal(r.out.p, "Hello ");
    push(&s, &r, "more");
    assert_true(r.hit);
    assert_string_equal(r.out.p, "Hello ");
    oa_stop_flush(&s, &r.out);
    assert_string_equal(r.out.p, "Hello ");
    oa_stop_free(&s);
    oa_buf_free(&r.out);

    /* a false start is released as soon as it cannot be a stop string any more */
    oa_stop_init(&s, stops, 2);
    stop_run q = {0};
    push(&s, &q, "EN");
    assert_int_equal(q.out.len, 0);
    push(&s, &q, "Ex");
    assert_false(q.hit);
    assert_string_equal(q.out.p, "ENEx");
    push(&s, &q, "\n");
    assert_string_equal(q.out.p, "ENEx");
    oa_stop_flush(&s, &q.out); /* the end of generation releases what was held */
    assert_string_equal(q.out.p, "ENEx\n");
    oa_stop_free(&s);
    oa_buf_free(&q.out);
}

static void test_stop_prefix_of_another(void **state)
{
    (void)state;
    char *stops[] = {"abc", "ab"};
    oa_stop s;
    oa_stop_init(&s, stops, 2);
    stop_run r = {0};
    push(&s, &r, "xa");
    assert_string_equal(r.out.p, "x");
    push(&s, &r, "b");
    assert_true(r.hit); /* "ab" matched: no waiting for a possible "abc" */
    assert_string_equal(r.out.p, "x");
    oa_stop_free(&s);
    oa_buf_free(&r.out);

    /* the earliest match wins, whichever string it is */
    char *stops2[] = {"world", "o"};
    oa_stop_init(&s, stops2, 2);
    stop_run q = {0};
    push(&s, &q, "hello world");
    assert_true(q.hit);
    assert_string_equal(q.out.p, "hell");
    oa_stop_free(&s);
    oa_buf_free(&q.out);
}

/* Random texts over a small alphabet, cut into random pieces: the released text is always a
 * prefix of the text before the stop string complete first, and equal to it at the end, however
 * the text was cut. */
static void test_stop_never_leaked(void **state)
{
    (void)state;
    uint32_t seed = 12345;
    for (int iter = 0; iter < 3000; iter++) {
        char text[64], st[3][6], *stops[3];
        int n = 1 + (int)(tu_rand(&seed) % 40), ns = 1 + (int)(tu_rand(&seed) % 3);
        for (int i = 0; i < n; i++)
            text[i] = "abc"[tu_rand(&seed) % 3];
        text[n] = 0;
        for (int k = 0; k < ns; k++) {
            int l = 1 + (int)(tu_rand(&seed) % 4);
            for (int i = 0; i < l; i++)
                st[k][i] = "abc"[tu_rand(&seed) % 3];
            st[k][l] = 0;
            stops[k] = st[k];
        }
        /* the expected output: up to the stop string complete first (at equal ends, the one
         * that starts first) */
        size_t end = (size_t)n, done_at = SIZE_MAX;
        for (int k = 0; k < ns; k++) {
            char *p = strstr(text, stops[k]);
            size_t at = p ? (size_t)(p - text) : 0, e = at + strlen(stops[k]);
            if (p && (e < done_at || (e == done_at && at < end))) {
                end = at;
                done_at = e;
            }
        }
        oa_stop s;
        oa_stop_init(&s, stops, ns);
        oa_buf out = {0};
        int hit = 0;
        for (int i = 0; i < n && !hit;) {
            int len = 1 + (int)(tu_rand(&seed) % 5);
            if (i + len > n)
                len = n - i;
            hit = oa_stop_push(&s, text + i, (size_t)len, &out);
            i += len;
            assert_true(out.len <= end);
            assert_true(out.len == 0 || memcmp(out.p, text, out.len) == 0);
        }
        if (!hit)
            oa_stop_flush(&s, &out);
        assert_int_equal(hit, end < (size_t)n);
        assert_int_equal(out.len, end);
        oa_stop_free(&s);
        oa_buf_free(&out);
    }
}

/* ------------------------------------------------------------------ a choice fed events */

static kb_info INFO = {.model = "m", .max_seqs = 8, .max_tokens = 64, .max_seq_len = 64,
                       .vocab = 4096, .hidden = 8, .kv_blocks = 32};

static oa_model model(void)
{
    oa_model m = {"tiny", &INFO, TOK, NULL, "no chat template (test)"};
    return m;
}

static void test_choice_stop_in_stream(void **state)
{
    (void)state;
    oa_model m = model();
    oa_request r;
    oa_error e;
    const char *body = "{\"prompt\": \"A fool and\", \"stop\": \" soon\", \"stream\": true, "
                       "\"max_tokens\": 20, \"return_token_ids\": true}";
    assert_int_equal(oa_parse(&m, OA_COMPLETIONS, body, strlen(body), &r, &e), 0);
    const char *gen = " his honey are soon parted.";
    int32_t *ids;
    size_t n;
    kerr err;
    kerr_clear(&err);
    assert_int_equal(tok_encode(TOK, gen, strlen(gen), 0, &ids, &n, &err), 0);
    assert_true(n >= 4);
    oa_choice c;
    oa_choice_init(&c, &m, &r, 0);
    oa_buf stream = {0};
    int cancel_at = -1;
    for (size_t i = 0; i < n; i++) {
        ks_event ev = {.has_token = 1, .token = ids[i], .index = (int)i, .prompt_pos = -1,
                       .finish = i + 1 == n ? KS_LENGTH : KS_RUNNING};
        if (oa_choice_event(&c, &m, &r, &ev)) {
            assert_int_equal(cancel_at, -1);
            cancel_at = (int)i;
        }
        oa_chunk(&m, &r, "cmpl-1", 0, &c, &stream);
    }
    assert_true(cancel_at >= 0 && cancel_at < (int)n - 1); /* " soon" ends before the last token */
    assert_true(c.done);
    assert_string_equal(c.finish, "stop");
    assert_string_equal(c.text.p, " his honey are");
    assert_int_equal(c.gen_tokens, cancel_at + 1); /* usage counts what was generated */
    assert_not_contains(stream.p, "soon");
    assert_not_contains(stream.p, " so");
    assert_contains(stream.p, "\"finish_reason\":\"stop\"");
    assert_contains(stream.p, "\"prompt_token_ids\":[");
    free(ids);
    oa_buf_free(&stream);
    oa_choice_free(&c);
    oa_request_free(&r);
}

/* generation_config.json's defaults fill the fields a request leaves out (or sets to null), the
 * request's own values win, and a max_new_tokens default is cut to the room after the prompt. */
static void test_generation_defaults(void **state)
{
    (void)state;
    ka_gen g = {.has_temperature = 1, .temperature = 0.6, .has_top_p = 1, .top_p = 0.9,
                .has_top_k = 1, .top_k = 50, .has_max_new = 1, .max_new = 40};
    oa_model m = model();
    m.gen = &g;
    oa_request r;
    oa_error e;
    const char *b1 = "{\"prompt\": [1, 2, 3], \"top_p\": null}";
    assert_int_equal(oa_parse(&m, OA_COMPLETIONS, b1, strlen(b1), &r, &e), 0);
    assert_float_equal(r.sp.temperature, 0.6f, 0);
    assert_float_equal(r.sp.top_p, 0.9f, 0);
    assert_int_equal(r.sp.top_k, 50);
    assert_int_equal(r.max_tokens, 40); /* not OpenAI's 16 */
    oa_request_free(&r);
    const char *b2 = "{\"prompt\": [1, 2, 3], \"temperature\": 0, \"top_k\": -1, "
                     "\"max_tokens\": 5, \"top_p\": 1}";
    assert_int_equal(oa_parse(&m, OA_COMPLETIONS, b2, strlen(b2), &r, &e), 0);
    assert_float_equal(r.sp.temperature, 0, 0);
    assert_float_equal(r.sp.top_p, 1, 0);
    assert_int_equal(r.sp.top_k, 0);
    assert_int_equal(r.max_tokens, 5);
    oa_request_free(&r);
    /* 40 tokens after a 30-token prompt would pass max_seq_len 64: the default becomes 34 */
    char b3[512] = "{\"prompt\": [1";
    for (int i = 1; i < 30; i++)
        strcat(b3, ", 7");
    strcat(b3, "]}");
    assert_int_equal(oa_parse(&m, OA_COMPLETIONS, b3, strlen(b3), &r, &e), 0);
    assert_int_equal(r.max_tokens, 34);
    oa_request_free(&r);
    /* without generation defaults: OpenAI's (temperature 1, top_p 1, 16 tokens) */
    m.gen = NULL;
    assert_int_equal(oa_parse(&m, OA_COMPLETIONS, b1, strlen(b1), &r, &e), 0);
    assert_float_equal(r.sp.temperature, 1, 0);
    assert_float_equal(r.sp.top_p, 1, 0);
    assert_int_equal(r.sp.top_k, 0);
    assert_int_equal(r.max_tokens, 16);
    oa_request_free(&r);
}

/* ------------------------------------------------------------------ validation */

static char *CHAT_DIR;

typedef struct bad {
    oa_endpoint ep;
    const char *body;
    int status;
    const char *param;   /* "" for none */
    const char *message; /* a substring */
} bad;

static void test_validation(void **state)
{
    (void)state;
    ct_model ct;
    kerr err;
    kerr_clear(&err);
    assert_int_equal(ct_model_load(CHAT_DIR, &ct, &err), 0);
    oa_model m = model(), mc = model(), notok = model(), emb = model();
    mc.chat = &ct;
    notok.tok = NULL;
    kb_info einfo = INFO;
    einfo.embed = 1;
    emb.info = &einfo;
    static const bad cases[] = {
        {OA_COMPLETIONS, "{\"prompt\": ", 400, "", "not valid JSON"},
        {OA_COMPLETIONS, "[1, 2]", 400, "", "must be a JSON object, got a list"},
        {OA_COMPLETIONS, "{\"model\": \"gpt-4\", \"prompt\": \"x\"}", 404, "model",
         "The model 'gpt-4' does not exist: this server serves 'tiny'"},
        {OA_COMPLETIONS, "{\"model\": 7, \"prompt\": \"x\"}", 400, "model",
         "model: expected a string, got an integer"},
        {OA_COMPLETIONS, "{}", 400, "prompt", "prompt: missing"},
        {OA_COMPLETIONS, "{\"prompt\": 5}", 400, "prompt",
         "prompt: expected a string, a list of strings, a list of token ids or a list of lists"},
        {OA_COMPLETIONS, "{\"prompt\": []}", 400, "prompt", "prompt: empty list"},
        {OA_COMPLETIONS, "{\"prompt\": [[1, 2], \"x\"]}", 400, "prompt", "prompt[1]:"},
        {OA_COMPLETIONS, "{\"prompt\": [1, 4096]}", 400, "prompt",
         "prompt[1]: token id 4096 is outside the vocabulary (0 to 4095)"},
        {OA_COMPLETIONS, "{\"prompt\": [1, -1]}", 400, "prompt", "token id -1 is outside"},
        {OA_COMPLETIONS, "{\"prompt\": [[1], []]}", 400, "prompt[1]", "empty list of token ids"},
        {OA_COMPLETIONS, "{\"prompt\": [1, 2.5]}", 400, "prompt",
         "prompt[1]: expected a token id (integer), got a number"},
        {OA_COMPLETIONS, "{\"prompt\": \"x\", \"temperature\": 3}", 400, "temperature",
         "temperature: expected a number >= 0 and <= 2, got 3"},
        {OA_COMPLETIONS, "{\"prompt\": \"x\", \"temperature\": \"hot\"}", 400, "temperature",
         "temperature: expected a number, got a string"},
        {OA_COMPLETIONS, "{\"prompt\": \"x\", \"top_p\": 0}", 400, "top_p",
         "top_p: expected a number > 0 and <= 1, got 0"},
        {OA_COMPLETIONS, "{\"prompt\": \"x\", \"top_k\": -2}", 400, "top_k",
         "top_k: expected an integer from -1 to 4096, got -2"},
        {OA_COMPLETIONS, "{\"prompt\": \"x\", \"seed\": 1.5}", 400, "seed",
         "seed: expected an integer"},
        {OA_COMPLETIONS, "{\"prompt\": \"x\", \"n\": 2}", 400, "n",
         "n: expected an integer from 1 to 1, got 2"},
        {OA_COMPLETIONS, "{\"prompt\": \"x\", \"presence_penalty\": 0.5}", 400,
         "presence_penalty", "presence_penalty is not supported by kiln (only 0, which is off"},
        {OA_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], "
                  "\"logit_bias\": {\"5\": 100}}",
         400, "logit_bias", "logit_bias is not supported by kiln"},
        {OA_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], "
                  "\"response_format\": {\"type\": \"json_object\"}}",
         400, "response_format", "structured output is not supported"},
        {OA_COMPLETIONS, "{\"prompt\": \"x\", \"max_tokens\": -1}", 400, "max_tokens",
         "max_tokens: expected an integer from 0 to 64, got -1"},
        {OA_COMPLETIONS, "{\"prompt\": \"x\", \"max_tokens\": 1.0}", 400, "max_tokens",
         "max_tokens: expected an integer from 0 to 64, got a number"},
        {OA_COMPLETIONS, "{\"prompt\": \"x\", \"max_tokens\": 0}", 400, "max_tokens",
         "only allowed with \"echo\": true"},
        {OA_COMPLETIONS, "{\"prompt\": [1,2,3,4,5,6,7,8,9,10], \"max_tokens\": 60}", 400, "prompt",
         "the prompt is 10 tokens and max_tokens is 60: 70 in all, more than the model's maximum "
         "sequence length (64)"},
        {OA_COMPLETIONS, "{\"prompt\": [[1], [1,2,3,4,5,6,7,8,9,10]], \"max_tokens\": 60}", 400,
         "prompt", "the prompt (prompt[1]) is 10 tokens and max_tokens is 60"},
        {OA_COMPLETIONS, "{\"prompt\": \"x\", \"stop\": [\"a\",\"b\",\"c\",\"d\",\"e\"]}", 400,
         "stop", "stop: at most 4 strings, got 5"},
        {OA_COMPLETIONS, "{\"prompt\": \"x\", \"stop\": \"\"}", 400, "stop",
         "stop: each string must be 1 to 1024 bytes, got 0"},
        {OA_COMPLETIONS, "{\"prompt\": \"x\", \"stop\": [1]}", 400, "stop",
         "stop: expected a string or a list of up to 4 strings, got an integer"},
        {OA_COMPLETIONS, "{\"prompt\": \"x\", \"logprobs\": 6}", 400, "logprobs",
         "logprobs: expected an integer from 0 to 5, got 6"},
        {OA_COMPLETIONS, "{\"prompt\": \"x\", \"echo\": \"yes\"}", 400, "echo",
         "echo: expected a boolean, got a string"},
        {OA_COMPLETIONS, "{\"prompt\": \"x\", \"stream\": 1}", 400, "stream",
         "stream: expected a boolean, got an integer"},
        {OA_COMPLETIONS, "{\"prompt\": \"x\", \"stream_options\": {\"include_usage\": true}}",
         400, "stream_options", "only allowed with \"stream\": true"},
        {OA_CHAT, "{\"messages\": []}", 400, "messages",
         "messages: expected a non-empty list of messages, got an empty list"},
        {OA_CHAT, "{}", 400, "messages", "messages: expected a non-empty list of messages, got "
         "nothing"},
        {OA_CHAT, "{\"messages\": [\"hi\"]}", 400, "messages",
         "messages[0]: expected an object, got a string"},
        {OA_CHAT, "{\"messages\": [{\"content\": \"hi\"}]}", 400, "messages",
         "messages[0].role: expected a string, got nothing"},
        {OA_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}",
         400, "messages", "messages[0].content[0]: expected {\"type\": \"text\""},
        {OA_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": 5}]}", 400, "messages",
         "messages[0].content: expected a string or a list of parts, got an integer"},
        {OA_CHAT, "{\"messages\": [{\"role\": \"user\"}]}", 400, "messages",
         "messages[0].content: missing (a user message needs content)"},
        {OA_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"top_logprobs\": 2}",
         400, "top_logprobs", "top_logprobs: needs \"logprobs\": true"},
        {OA_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": 0}",
         400, "max_tokens", "max_tokens: expected an integer from 1 to 64, got 0"},
        {OA_CHAT, "{\"messages\": [{\"role\": \"bad\", \"content\": \"x\"}]}", 400, "messages",
         "the chat template refused the messages: no role bad"},
        {OA_EMBEDDINGS, "{\"input\": \"x\"}", 400, "model",
         "model 'tiny' generates text; /v1/embeddings needs an embedding model"},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        const bad *b = &cases[i];
        oa_request r;
        oa_error e;
        memset(&e, 0, sizeof e);
        int rc = oa_parse(b->ep == OA_CHAT ? &mc : &m, b->ep, b->body, strlen(b->body), &r, &e);
        if (rc != -1 || e.status != b->status || strcmp(e.param, b->param) ||
            !strstr(e.message, b->message))
            fail_msg("case %zu: %s\n  got rc %d, status %d, param '%s', message\n    %s\n  "
                     "expected status %d, param '%s', message containing\n    %s", i, b->body, rc,
                     e.status, e.param, e.message, b->status, b->param, b->message);
        char *j = oa_error_json(&e);
        assert_contains(j, "{\"error\":{\"message\":");
        free(j);
    }

    /* a NUL byte between tokens, which jansson skips */
    {
        static const char nul[] = "{\"prompt\": [1, 2], \"max_tokens\": 1\0}";
        oa_request r;
        oa_error e;
        assert_int_equal(oa_parse(&m, OA_COMPLETIONS, nul, sizeof nul - 1, &r, &e), -1);
        assert_int_equal(e.status, 400);
        assert_contains(e.message, "the body is not valid JSON: a NUL byte at offset 34");
    }

    /* a model without a chat template, without a tokenizer, an embedding model */
    oa_request r;
    oa_error e;
    const char *chat = "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}";
    assert_int_equal(oa_parse(&m, OA_CHAT, chat, strlen(chat), &r, &e), -1);
    assert_contains(e.message, "model 'tiny' has no chat template (no chat template (test))");
    const char *text = "{\"prompt\": \"x\"}";
    assert_int_equal(oa_parse(&notok, OA_COMPLETIONS, text, strlen(text), &r, &e), -1);
    assert_contains(e.message, "prompt: model 'tiny' has no tokenizer");
    assert_int_equal(oa_parse(&emb, OA_COMPLETIONS, text, strlen(text), &r, &e), -1);
    assert_contains(e.message, "model 'tiny' is an embedding model: use /v1/embeddings");

    /* valid requests: defaults, a list of prompts, unknown fields ignored */
    const char *ok = "{\"prompt\": [\"A fool\", \"and\"], \"frobnicate\": {\"x\": 1}, "
                     "\"temperature\": 0, \"seed\": 7, \"stop\": [\"\\n\"]}";
    assert_int_equal(oa_parse(&m, OA_COMPLETIONS, ok, strlen(ok), &r, &e), 0);
    assert_int_equal(r.n_prompts, 2);
    assert_int_equal(r.max_tokens, 16); /* OpenAI's default */
    assert_int_equal(r.sp.seed, 7);
    assert_int_equal(r.n_stop, 1);
    assert_int_equal(r.logprobs, -1);
    assert_true(r.prompts[0].n > 1 && r.prompts[1].n >= 1);
    assert_string_equal(r.prompts[0].text, "A fool");
    oa_request_free(&r);
    assert_int_equal(oa_parse(&mc, OA_CHAT, chat, strlen(chat), &r, &e), 0);
    assert_int_equal(r.max_tokens, 64 - r.prompts[0].n); /* chat: the model's room */
    oa_request_free(&r);
    const char *ids = "{\"prompt\": [5, 6, 7], \"max_tokens\": 61}";
    assert_int_equal(oa_parse(&notok, OA_COMPLETIONS, ids, strlen(ids), &r, &e), 0);
    assert_int_equal(r.prompts[0].n, 3);
    assert_int_equal(r.max_tokens, 61);
    oa_request_free(&r);
    ct_model_free(&ct);
}

/* ------------------------------------------------------------------ end to end */

typedef struct http_reply {
    int status;
    char *head, *body; /* heap */
} http_reply;

static void reply_free(http_reply *r)
{
    free(r->head);
    free(r->body);
}

/* One request over a fresh connection (Connection: close), read to EOF. extra: header lines
 * ending in \r\n, or "". A body given as NULL with a length sends just the headers. */
static http_reply http(int port, const char *method, const char *path, const char *extra,
                       const char *body)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    char *req = xasprintf("%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n%s"
                          "Content-Length: %zu\r\n\r\n%s", method, path, extra,
                          body ? strlen(body) : 0, body ? body : "");
    size_t len = strlen(req), off = 0;
    while (off < len) {
        ssize_t k = send(fd, req + off, len - off, MSG_NOSIGNAL);
        if (k <= 0)
            break; /* the server may answer and close before reading all of it (413) */
        off += (size_t)k;
    }
    free(req);
    oa_buf in = {0};
    char buf[4096];
    ssize_t k;
    while ((k = recv(fd, buf, sizeof buf, 0)) > 0)
        oa_buf_add(&in, buf, (size_t)k);
    close(fd);
    http_reply r = {0};
    assert_non_null(in.p);
    assert_int_equal(sscanf(in.p, "HTTP/1.1 %d", &r.status), 1);
    char *sep = strstr(in.p, "\r\n\r\n");
    assert_non_null(sep);
    *sep = 0;
    r.head = xstrdup(in.p);
    r.body = xstrdup(sep + 4);
    oa_buf_free(&in);
    return r;
}

/* A chunked body (what a stream is) as its plain bytes. */
static char *unchunk(const char *s)
{
    oa_buf out = {0};
    oa_buf_add(&out, "", 0);
    for (;;) {
        char *end;
        unsigned long n = strtoul(s, &end, 16);
        if (end == s || n == 0)
            break;
        s = strstr(end, "\r\n");
        assert_non_null(s);
        s += 2;
        assert_true(strlen(s) >= n);
        oa_buf_add(&out, s, n);
        s += n + 2;
    }
    return out.p;
}

static void test_end_to_end(void **state)
{
    (void)state;
    const char *kiln = getenv("KILN");
    char *dir = tu_tmpdir(), *errp = tu_path(dir, "stderr");
    const char *argv[] = {kiln, "serve", EXAMPLE, "--port", "0", "--api-key", "K",
                          "--max-body", "4096", "--grace", "5", NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, errp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    pid_t pid;
    extern char **environ;
    unsetenv("KILN_API_KEY");
    assert_int_equal(posix_spawn(&pid, kiln, &fa, NULL, (char *const *)argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);

    /* the port from the one "listening" line, then /health until the model is loaded */
    int port = 0;
    double t0 = util_now();
    while (!port && util_now() - t0 < 60) {
        char *log = tu_read(errp, NULL);
        const char *p = log ? strstr(log, "kiln serve: listening on http://127.0.0.1:") : NULL;
        if (p)
            port = atoi(p + strlen("kiln serve: listening on http://127.0.0.1:"));
        free(log);
        if (!port)
            usleep(20000);
    }
    assert_true(port > 0);
    http_reply r;
    for (;;) {
        r = http(port, "GET", "/health", "", NULL);
        if (r.status == 200 || util_now() - t0 > 120)
            break;
        assert_int_equal(r.status, 503);
        reply_free(&r);
        usleep(50000);
    }
    assert_int_equal(r.status, 200);
    reply_free(&r);

    const char *auth = "Authorization: Bearer K\r\n";
    r = http(port, "POST", "/v1/completions", auth,
             "{\"model\": \"tinyfortune\", \"prompt\": \"A fool and\", \"max_tokens\": 8, "
             "\"temperature\": 0, \"ignore_eos\": true}");
    assert_int_equal(r.status, 200);
    assert_contains(r.head, "Content-Type: application/json");
    assert_contains(r.body, "\"object\":\"text_completion\"");
    assert_contains(r.body, "\"finish_reason\":\"length\"");
    assert_contains(r.body, "\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":8,"
                            "\"total_tokens\":12}");
    json_t *j = json_loads(r.body, 0, NULL);
    assert_non_null(j);
    const char *text = json_string_value(
        json_object_get(json_array_get(json_object_get(j, "choices"), 0), "text"));
    assert_non_null(text);
    assert_true(strlen(text) > 0);
    char *greedy = xstrdup(text);
    json_decref(j);
    reply_free(&r);

    /* the same request streamed: the chunks' text is the same text, then [DONE] */
    r = http(port, "POST", "/v1/completions", auth,
             "{\"prompt\": \"A fool and\", \"max_tokens\": 8, \"temperature\": 0, "
             "\"ignore_eos\": true, \"stream\": true}");
    assert_int_equal(r.status, 200);
    assert_contains(r.head, "Content-Type: text/event-stream");
    char *sse = unchunk(r.body);
    oa_buf joined = {0};
    oa_buf_add(&joined, "", 0);
    int chunks = 0;
    for (char *line = strtok(sse, "\n"); line; line = strtok(NULL, "\n")) {
        if (!strncmp(line, "data: {", 7)) {
            json_t *c = json_loads(line + 6, 0, NULL);
            assert_non_null(c);
            const char *t = json_string_value(
                json_object_get(json_array_get(json_object_get(c, "choices"), 0), "text"));
            assert_non_null(t);
            oa_buf_add(&joined, t, strlen(t));
            json_decref(c);
            chunks++;
        } else if (strcmp(line, "data: [DONE]") && line[0] != ':')
            fail_msg("unexpected stream line: %s", line);
    }
    assert_true(chunks >= 2);
    assert_string_equal(joined.p, greedy);
    oa_buf_free(&joined);
    free(sse);
    assert_contains(r.body, "data: [DONE]\n\n");
    reply_free(&r);
    free(greedy);

    r = http(port, "POST", "/v1/completions", "", "{\"prompt\": \"x\"}");
    assert_int_equal(r.status, 401);
    assert_contains(r.body, "\"type\":\"authentication_error\"");
    reply_free(&r);
    r = http(port, "POST", "/v1/completions", "Authorization: Bearer L\r\n", "{\"prompt\": \"x\"}");
    assert_int_equal(r.status, 401);
    reply_free(&r);
    r = http(port, "GET", "/v1/nothing", auth, NULL);
    assert_int_equal(r.status, 404);
    assert_contains(r.body, "no route GET /v1/nothing");
    reply_free(&r);
    r = http(port, "POST", "/v1/completions", auth, "{\"model\": \"other\", \"prompt\": \"x\"}");
    assert_int_equal(r.status, 404);
    assert_contains(r.body, "\"code\":\"model_not_found\"");
    reply_free(&r);
    r = http(port, "GET", "/v1/completions", auth, NULL);
    assert_int_equal(r.status, 405);
    reply_free(&r);
    r = http(port, "POST", "/v1/completions", auth, "{\"prompt\": \"x\", \"temperature\": -1}");
    assert_int_equal(r.status, 400);
    assert_contains(r.body, "\"param\":\"temperature\"");
    reply_free(&r);
    /* 413 from the Content-Length alone */
    char *big = xmalloc(5001);
    memset(big, ' ', 5000);
    big[5000] = 0;
    r = http(port, "POST", "/v1/completions", auth, big);
    assert_int_equal(r.status, 413);
    assert_contains(r.body, "the body is 5000 bytes, over this server's limit of 4096");
    reply_free(&r);
    free(big);
    r = http(port, "GET", "/metrics", "", NULL);
    assert_int_equal(r.status, 200);
    assert_contains(r.body, "kiln_requests_total{endpoint=\"completions\",status=\"200\"} 2\n");
    assert_contains(r.body, "kiln_requests_total{endpoint=\"completions\",status=\"413\"} 1\n");
    assert_contains(r.body, "kiln_time_to_first_token_seconds_count 2\n");
    assert_contains(r.body, "kiln_kv_blocks_used 0\n");
    reply_free(&r);

    assert_int_equal(kill(pid, SIGTERM), 0);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    char *log = tu_read(errp, NULL);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("kiln serve did not exit 0 after SIGTERM:\n%s", log);
    assert_contains(log, "kiln serve: ready: ");
    assert_contains(log, "kiln serve: stopped");
    assert_not_contains(log, "Sanitizer");
    free(log);
    free(errp);
    tu_rmrf(dir);
}

/* An error message quoting bytes that are not UTF-8, or cut inside a character by its size,
 * keeps what it says: the bad bytes become U+FFFD (it used to be replaced as a whole). */
static void test_error_json_not_utf8(void **state)
{
    oa_error e;
    oa_error_set(&e, 404, "x\xff", "no route GET /v1/\xff\xc3 (routes: ...)");
    char *j = oa_error_json(&e);
    assert_contains(j, "\"message\":\"no route GET /v1/\xef\xbf\xbd\xef\xbf\xbd (routes: ...)\"");
    assert_contains(j, "\"param\":\"x\xef\xbf\xbd\"");
    free(j);
    char big[3000 * 2 + 1];
    for (int i = 0; i < 3000; i++)
        memcpy(big + 2 * i, "\xc3\xa9", 2);
    big[sizeof big - 1] = 0;
    oa_error_set(&e, 400, NULL, "xy%s", big);
    j = oa_error_json(&e);
    assert_contains(j, "\"message\":\"xy\xc3\xa9\xc3\xa9");
    /* 2047 bytes kept: "xy", 1,022 é and the first byte of the next */
    assert_contains(j, "\xc3\xa9\xef\xbf\xbd\",\"type\"");
    free(j);
}

int main(void)
{
    const char *kiln = getenv("KILN");
    if (!kiln || access(kiln, X_OK) != 0) {
        fprintf(stderr, "test_server: KILN (the kiln binary) is not set or not an executable: "
                        "run it through `make check`, or as\n"
                        "  KILN=out/bin/kiln out/tests/test_server\n");
        return 1;
    }
    kerr err;
    kerr_clear(&err);
    TOK = tok_load(EXAMPLE, &err);
    if (!TOK) {
        fprintf(stderr, "test_server: %s\n", kerr_msg(&err));
        return 1;
    }
    CHAT_DIR = tu_tmpdir();
    free(tu_write(CHAT_DIR, "chat_template.jinja",
                  "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}"
                  "{{ raise_exception('no role ' + m.role) }}{% endif %}"
                  "{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_json_not_utf8),
        cmocka_unit_test(test_stop_across_tokens),
        cmocka_unit_test(test_stop_prefix_of_another),
        cmocka_unit_test(test_stop_never_leaked),
        cmocka_unit_test(test_choice_stop_in_stream),
        cmocka_unit_test(test_generation_defaults),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_end_to_end),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    tu_rmrf(CHAT_DIR);
    tok_free(TOK);
    return rc;
}
