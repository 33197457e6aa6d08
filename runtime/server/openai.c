/* openai — the OpenAI API's JSON for `kiln serve` (see openai.h for the pieces).
 *
 * Validation follows OpenAI's API reference: unknown fields are ignored, a known field of the
 * wrong type or outside its range is a 400 whose message names the field, the range and the
 * value, and whose `param` is the field. Prompts are encoded here (the caller's thread), so a
 * request that reaches the scheduler is already known to fit the model: ids inside the
 * vocabulary, prompt + max_tokens within max_seq_len.
 *
 * Text: generated ids go through the tokenizer's streaming decoder (skip_special, as OpenAI-style
 * servers decode), so a piece never splits a UTF-8 character, then through the stop matcher,
 * which holds back any tail that could still become a stop string; only released text is ever
 * sent. The end-of-sequence token ends the text but is counted and listed in token_ids, as vLLM
 * does. Logprob entries carry the token's own decoding (tok_decode of the one id) as its string.
 */
#include "server/openai.h"

#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ errors and buffers */

int oa_error_set(oa_error *e, int status, const char *param, const char *fmt, ...)
{
    e->status = status;
    e->type = status == 401   ? "authentication_error"
              : status == 404 ? "not_found_error"
              : status >= 500 ? (status == 503 ? "service_unavailable_error" : "internal_error")
                              : "invalid_request_error";
    e->code = status == 404 && param && !strcmp(param, "model") ? "model_not_found" : NULL;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

/* The length of the well-formed UTF-8 sequence at s (n bytes left), 0 if there is none: no
 * overlong forms, surrogates or code points past U+10FFFF (what jansson accepts). */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    size_t len = s[0] < 0x80 ? 1 : s[0] >= 0xc2 && s[0] < 0xe0 ? 2 : s[0] >= 0xe0 && s[0] < 0xf0 ? 3
                 : s[0] >= 0xf0 && s[0] < 0xf5 ? 4 : 0;
    if (!len || len > n)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    if ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] >= 0xa0) ||
        (s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] >= 0x90))
        return 0;
    return len;
}

/* s with each byte that does not start a whole UTF-8 character replaced by U+FFFD, in b. */
static const char *utf8_clean(oa_buf *b, const char *s)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t n = strlen(s);
    oa_buf_add(b, "", 0);
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq(u + i, n - i);
        oa_buf_add(b, k ? s + i : "\xef\xbf\xbd", k ? k : 3);
        i += k ? k : 1;
    }
    return b->p;
}

char *oa_error_json(const oa_error *e)
{
    /* a message quoting the request (a URL, a header, a prompt) may hold bytes that are not
     * UTF-8, or be cut inside a character by the message's size: those bytes become U+FFFD, so
     * JSON can carry the rest of what it says */
    oa_buf msg = {0}, param = {0};
    json_t *o = json_pack("{s:{s:s, s:s, s:o, s:o}}", "error", "message",
                          utf8_clean(&msg, e->message), "type",
                          e->type ? e->type : "invalid_request_error", "param",
                          e->param[0] ? json_string(utf8_clean(&param, e->param)) : json_null(),
                          "code", e->code ? json_string(e->code) : json_null());
    oa_buf_free(&msg);
    oa_buf_free(&param);
    assert(o);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    assert(s);
    return s;
}

void oa_buf_add(oa_buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1)
            cap *= 2;
        b->p = xrealloc(b->p, cap);
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

void oa_buf_free(oa_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

static void buf_str(oa_buf *b, const char *s)
{
    oa_buf_add(b, s, strlen(s));
}

/* ------------------------------------------------------------------ field readers */

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "a list";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* Each reader leaves *out alone when the field is absent or null (OpenAI's "use the default"). */
static int get_bool(json_t *o, const char *k, int *out, oa_error *e)
{
    json_t *v = json_object_get(o, k);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v))
        return oa_error_set(e, 400, k, "%s: expected a boolean, got %s", k, type_name(v));
    *out = json_is_true(v);
    return 0;
}

static int get_int(json_t *o, const char *k, long long lo, long long hi, long long *out,
                   oa_error *e)
{
    json_t *v = json_object_get(o, k);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v))
        return oa_error_set(e, 400, k, "%s: expected an integer from %lld to %lld, got %s", k, lo,
                            hi, type_name(v));
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return oa_error_set(e, 400, k, "%s: expected an integer from %lld to %lld, got %lld", k,
                            lo, hi, x);
    *out = x;
    return 0;
}

/* lo_open: lo itself is refused, (lo, hi]. */
static int get_num(json_t *o, const char *k, double lo, double hi, int lo_open, double *out,
                   oa_error *e)
{
    json_t *v = json_object_get(o, k);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_number(v))
        return oa_error_set(e, 400, k, "%s: expected a number, got %s", k, type_name(v));
    double x = json_number_value(v);
    if (!(lo_open ? x > lo : x >= lo) || !(x <= hi))
        return oa_error_set(e, 400, k, "%s: expected a number %s %g and <= %g, got %g", k,
                            lo_open ? ">" : ">=", lo, hi, x);
    *out = x;
    return 0;
}

/* ------------------------------------------------------------------ prompts */

/* One list of ids: every element an integer id of the model. */
static int parse_ids(const oa_model *m, json_t *a, const char *param, oa_prompt *p, oa_error *e)
{
    size_t n = json_array_size(a);
    if (n == 0)
        return oa_error_set(e, 400, param, "%s: empty list of token ids", param);
    if (n > (size_t)m->info->max_seq_len)
        return oa_error_set(e, 400, param,
                            "%s: %zu token ids is more than the model's maximum sequence length "
                            "(%d)", param, n, m->info->max_seq_len);
    p->ids = xmalloc(n * sizeof *p->ids);
    p->n = (int)n;
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(a, i);
        if (!json_is_integer(v))
            return oa_error_set(e, 400, param, "%s[%zu]: expected a token id (integer), got %s",
                                param, i, type_name(v));
        long long x = json_integer_value(v);
        if (x < 0 || x >= m->info->vocab)
            return oa_error_set(e, 400, param,
                                "%s[%zu]: token id %lld is outside the vocabulary (0 to %d)",
                                param, i, x, m->info->vocab - 1);
        p->ids[i] = (int32_t)x;
    }
    if (m->tok) {
        kerr err;
        kerr_clear(&err);
        size_t len;
        if (tok_decode(m->tok, p->ids, (size_t)p->n, 1, &p->text, &len, &err))
            return oa_error_set(e, 400, param, "%s: %s", param, kerr_msg(&err));
    } else
        p->text = xstrdup("");
    return 0;
}

static int encode_text(const oa_model *m, const char *s, size_t len, int add_special,
                       const char *param, oa_prompt *p, oa_error *e)
{
    if (!m->tok)
        return oa_error_set(e, 400, param,
                            "%s: model '%s' has no tokenizer (its folder holds no tokenizer.json): "
                            "give the prompt as token ids", param, m->name);
    if (len > TOK_MAX_TEXT)
        return oa_error_set(e, 400, param, "%s: %zu bytes of text is over the limit (%zu)", param,
                            len, TOK_MAX_TEXT);
    kerr err;
    kerr_clear(&err);
    size_t n;
    if (tok_encode(m->tok, s, len, add_special, &p->ids, &n, &err))
        return oa_error_set(e, 400, param, "%s: %s", param, kerr_msg(&err));
    if (n == 0)
        return oa_error_set(e, 400, param, "%s: the text encodes to no tokens", param);
    if (n > (size_t)m->info->max_seq_len)
        return oa_error_set(e, 400, param,
                            "%s: the prompt is %zu tokens, more than the model's maximum "
                            "sequence length (%d)", param, n, m->info->max_seq_len);
    p->n = (int)n;
    p->text = xmalloc(len + 1);
    memcpy(p->text, s, len);
    p->text[len] = 0;
    return 0;
}

/* prompt (completions) or input (embeddings): a string, a list of strings, a list of ids or a
 * list of lists of ids. */
static int parse_prompts(const oa_model *m, json_t *v, const char *param, oa_request *r,
                         oa_error *e)
{
    static const char *shape = "expected a string, a list of strings, a list of token ids or a "
                               "list of lists of token ids";
    if (!v || json_is_null(v))
        return oa_error_set(e, 400, param, "%s: missing (%s)", param, shape);
    int add_special = 1; /* as HF encode and OpenAI-style servers: BOS (or CLS/SEP) added */
    if (json_is_string(v)) {
        r->prompts = xcalloc(1, sizeof *r->prompts);
        r->n_prompts = 1;
        return encode_text(m, json_string_value(v), json_string_length(v), add_special, param,
                           &r->prompts[0], e);
    }
    if (!json_is_array(v))
        return oa_error_set(e, 400, param, "%s: %s, got %s", param, shape, type_name(v));
    size_t n = json_array_size(v);
    if (n == 0)
        return oa_error_set(e, 400, param, "%s: empty list (%s)", param, shape);
    json_t *first = json_array_get(v, 0);
    if (json_is_integer(first)) {
        r->prompts = xcalloc(1, sizeof *r->prompts);
        r->n_prompts = 1;
        return parse_ids(m, v, param, &r->prompts[0], e);
    }
    if (n > OA_MAX_PROMPTS)
        return oa_error_set(e, 400, param, "%s: %zu prompts, at most %d per request", param, n,
                            OA_MAX_PROMPTS);
    r->prompts = xcalloc(n, sizeof *r->prompts);
    r->n_prompts = (int)n;
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_array_get(v, i);
        char pi[48];
        snprintf(pi, sizeof pi, "%s[%zu]", param, i);
        if (json_is_string(x) && json_is_string(first)) {
            if (encode_text(m, json_string_value(x), json_string_length(x), add_special, pi,
                            &r->prompts[i], e))
                return -1;
        } else if (json_is_array(x) && json_is_array(first)) {
            if (parse_ids(m, x, pi, &r->prompts[i], e))
                return -1;
        } else
            return oa_error_set(e, 400, param, "%s: %s, got %s in a list that starts with %s",
                                pi, shape, type_name(x), type_name(first));
    }
    return 0;
}

/* Chat content given as a list of parts: the text parts joined (templates expect a string).
 * As OpenAI: every message has content, except an assistant's (which may carry tool calls). */
static int flatten_content(json_t *msg, size_t i, oa_error *e)
{
    json_t *c = json_object_get(msg, "content");
    if ((!c || json_is_null(c)) && strcmp(json_string_value(json_object_get(msg, "role")),
                                          "assistant"))
        return oa_error_set(e, 400, "messages", "messages[%zu].content: missing (a %s message "
                            "needs content)", i, json_string_value(json_object_get(msg, "role")));
    if (!c || json_is_null(c) || json_is_string(c))
        return 0;
    if (!json_is_array(c))
        return oa_error_set(e, 400, "messages",
                            "messages[%zu].content: expected a string or a list of parts, got %s",
                            i, type_name(c));
    oa_buf b = {0};
    buf_str(&b, "");
    size_t k;
    json_t *part;
    json_array_foreach(c, k, part) {
        json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
        if (!json_is_object(part) || !json_is_string(type) ||
            strcmp(json_string_value(type), "text") || !json_is_string(text)) {
            oa_buf_free(&b);
            return oa_error_set(e, 400, "messages",
                                "messages[%zu].content[%zu]: expected {\"type\": \"text\", "
                                "\"text\": string} (only text is supported)", i, k);
        }
        if (k)
            oa_buf_add(&b, "\n", 1);
        oa_buf_add(&b, json_string_value(text), json_string_length(text));
    }
    json_t *s = json_stringn(b.p, b.len);
    oa_buf_free(&b);
    json_object_set_new(msg, "content", s ? s : json_string(""));
    return 0;
}

static int parse_chat(const oa_model *m, json_t *root, oa_request *r, oa_error *e)
{
    json_t *msgs = json_object_get(root, "messages");
    if (!json_is_array(msgs) || json_array_size(msgs) == 0)
        return oa_error_set(e, 400, "messages", "messages: expected a non-empty list of "
                            "messages, got %s", msgs ? (json_is_array(msgs) ? "an empty list"
                            : type_name(msgs)) : "nothing");
    if (!m->tok)
        return oa_error_set(e, 400, "messages",
                            "model '%s' has no tokenizer (its folder holds no tokenizer.json): "
                            "use /v1/completions with token ids", m->name);
    if (!m->chat)
        return oa_error_set(e, 400, "messages", "model '%s' has no chat template (%s): use "
                            "/v1/completions", m->name, m->chat_error ? m->chat_error : "");
    json_t *req = json_object();
    json_t *copy = json_deep_copy(msgs);
    json_object_set_new(req, "messages", copy);
    size_t i;
    json_t *msg;
    int rc = 0;
    json_array_foreach(copy, i, msg) {
        json_t *role = msg ? json_object_get(msg, "role") : NULL;
        if (!json_is_object(msg)) {
            rc = oa_error_set(e, 400, "messages", "messages[%zu]: expected an object, got %s", i,
                              type_name(msg));
            break;
        }
        if (!json_is_string(role)) {
            rc = oa_error_set(e, 400, "messages", "messages[%zu].role: expected a string, got %s",
                              i, role ? type_name(role) : "nothing");
            break;
        }
        if ((rc = flatten_content(msg, i, e)))
            break;
    }
    json_t *tools = json_object_get(root, "tools");
    if (!rc && tools && !json_is_null(tools)) {
        if (!json_is_array(tools))
            rc = oa_error_set(e, 400, "tools", "tools: expected a list, got %s", type_name(tools));
        else
            json_object_set(req, "tools", tools);
    }
    json_object_set_new(req, "add_generation_prompt", json_true());
    char *text = NULL;
    size_t len = 0;
    if (!rc) {
        kerr err;
        kerr_clear(&err);
        int st = ct_model_render(m->chat, req, NULL, &text, &len, &err);
        if (st == CT_RAISED) {
            rc = oa_error_set(e, 400, "messages", "the chat template refused the messages: %s",
                              text);
            free(text);
            text = NULL;
        } else if (st)
            rc = oa_error_set(e, 400, "messages", "%s", kerr_msg(&err));
    }
    json_decref(req);
    if (rc)
        return -1;
    r->prompts = xcalloc(1, sizeof *r->prompts);
    r->n_prompts = 1;
    /* the template writes the special tokens itself */
    rc = encode_text(m, text, len, 0, "messages", &r->prompts[0], e);
    free(text);
    return rc;
}

static int parse_stop(json_t *root, oa_request *r, oa_error *e)
{
    json_t *v = json_object_get(root, "stop");
    if (!v || json_is_null(v))
        return 0;
    int list = json_is_array(v);
    size_t n = list ? json_array_size(v) : 1;
    if (n > OA_MAX_STOP)
        return oa_error_set(e, 400, "stop", "stop: at most %d strings, got %zu", OA_MAX_STOP, n);
    for (size_t i = 0; i < n; i++) {
        json_t *s = list ? json_array_get(v, i) : v;
        if (!json_is_string(s))
            return oa_error_set(e, 400, "stop", "stop: expected a string or a list of up to %d "
                                "strings, got %s", OA_MAX_STOP, type_name(s));
        size_t len = json_string_length(s);
        if (len == 0 || len > OA_MAX_STOP_LEN)
            return oa_error_set(e, 400, "stop", "stop: each string must be 1 to %d bytes, got %zu",
                                OA_MAX_STOP_LEN, len);
        r->stop[r->n_stop++] = xstrdup(json_string_value(s));
    }
    return 0;
}

static uint64_t random_seed(void)
{
    /* a request without a seed samples a fresh stream (OpenAI's behaviour) */
    static uint64_t counter;
    uint64_t x = __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED) * 0x9e3779b97f4a7c15ull;
    x ^= (uint64_t)(util_now() * 1e9);
    x ^= x >> 31;
    return x * 0xbf58476d1ce4e5b9ull;
}

/* Fields of OpenAI's (or vLLM's) API that change what is generated and that kiln does not
 * implement: accepted only with the value that changes nothing (or null), else a 400 naming the
 * field, so that no request is silently answered as if it had asked for something else. */
static int refuse_unsupported(json_t *root, oa_error *e)
{
    static const struct {
        const char *field;
        double neutral;   /* the number that means "off" */
    } nums[] = {{"presence_penalty", 0}, {"frequency_penalty", 0}, {"repetition_penalty", 1},
                {"min_p", 0}, {"best_of", 1}};
    for (size_t i = 0; i < ARRAY_LEN(nums); i++) {
        json_t *v = json_object_get(root, nums[i].field);
        if (v && !json_is_null(v) && !(json_is_number(v) && json_number_value(v) == nums[i].neutral))
            return oa_error_set(e, 400, nums[i].field, "%s is not supported by kiln (only %g, "
                                "which is off, or null)", nums[i].field, nums[i].neutral);
    }
    json_t *v = json_object_get(root, "logit_bias");
    if (v && !json_is_null(v) && !(json_is_object(v) && json_object_size(v) == 0))
        return oa_error_set(e, 400, "logit_bias", "logit_bias is not supported by kiln (only an "
                            "empty object or null)");
    v = json_object_get(root, "suffix");
    if (v && !json_is_null(v) && !(json_is_string(v) && json_string_length(v) == 0))
        return oa_error_set(e, 400, "suffix", "suffix is not supported by kiln (only \"\" or null)");
    v = json_object_get(root, "response_format");
    json_t *t = json_is_object(v) ? json_object_get(v, "type") : NULL;
    if (v && !json_is_null(v) && !(json_is_string(t) && !strcmp(json_string_value(t), "text")))
        return oa_error_set(e, 400, "response_format", "response_format: kiln generates plain "
                            "text only (type \"text\"); structured output is not supported");
    return 0;
}

/* generation_config.json's max_new_tokens, 0 when it sets none */
static int gen_max_new(const oa_model *m)
{
    return m->gen && m->gen->has_max_new ? m->gen->max_new : 0;
}

static int parse_sampling(const oa_model *m, json_t *root, oa_request *r, oa_error *e)
{
    if (refuse_unsupported(root, e))
        return -1;
    /* a field left out (or null) takes generation_config.json's value, else OpenAI's default */
    const ka_gen *g = m->gen;
    double temp = g && g->has_temperature ? g->temperature : 1,
           top_p = g && g->has_top_p ? g->top_p : 1;
    long long top_k = g && g->has_top_k ? g->top_k : 0, seed = -1, n = 1;
    if (get_num(root, "temperature", 0, 2, 0, &temp, e) ||
        get_num(root, "top_p", 0, 1, 1, &top_p, e) ||
        get_int(root, "top_k", -1, m->info->vocab, &top_k, e) ||
        get_int(root, "seed", INT64_MIN, INT64_MAX, &seed, e) ||
        get_int(root, "n", 1, 1, &n, e))
        return -1;
    r->sp.temperature = (float)temp;
    r->sp.top_p = (float)top_p;
    r->sp.top_k = top_k < 0 ? 0 : (int)top_k; /* -1: off, as vLLM */
    json_t *sv = json_object_get(root, "seed");
    r->sp.seed = sv && !json_is_null(sv) ? (unsigned long long)seed : random_seed();
    return 0;
}

int oa_parse(const oa_model *m, oa_endpoint ep, const char *body, size_t len, oa_request *r,
             oa_error *e)
{
    memset(r, 0, sizeof *r);
    r->ep = ep;
    r->logprobs = -1;
    /* jansson skips a NUL byte between tokens ({"max_tokens": 1\0} parses): JSON has none */
    const char *nul = memchr(body, 0, len);
    if (nul)
        return oa_error_set(e, 400, NULL, "the body is not valid JSON: a NUL byte at offset %zu",
                            (size_t)(nul - body));
    json_error_t je;
    json_t *root = json_loadb(body, len, 0, &je);
    if (!root)
        return oa_error_set(e, 400, NULL, "the body is not valid JSON: %s (line %d, column %d)",
                            je.text, je.line, je.column);
    int rc = -1;
    if (!json_is_object(root)) {
        oa_error_set(e, 400, NULL, "the body must be a JSON object, got %s", type_name(root));
        goto out;
    }
    json_t *model = json_object_get(root, "model");
    if (model && !json_is_null(model)) {
        if (!json_is_string(model)) {
            oa_error_set(e, 400, "model", "model: expected a string, got %s", type_name(model));
            goto out;
        }
        if (strcmp(json_string_value(model), m->name)) {
            oa_error_set(e, 404, "model", "The model '%s' does not exist: this server serves "
                         "'%s'", json_string_value(model), m->name);
            goto out;
        }
    }
    if (ep == OA_CLASSIFY) {
        if (!m->info->classify) {
            oa_error_set(e, 400, "model", "model '%s' is %s; /v1/classify needs a classifier "
                         "(a *ForSequenceClassification checkpoint)", m->name,
                         m->info->embed ? "an embedding model: use /v1/embeddings"
                                        : "a text generator: use /v1/completions");
            goto out;
        }
        if (parse_prompts(m, json_object_get(root, "input"), "input", r, e))
            goto out;
        rc = 0;
        goto out;
    }
    if (ep == OA_EMBEDDINGS) {
        if (!m->info->embed || m->info->classify) {
            oa_error_set(e, 400, "model", "model '%s' %s; /v1/embeddings needs an embedding "
                         "model", m->name, m->info->classify ? "is a classifier: use /v1/classify"
                                                             : "generates text");
            goto out;
        }
        json_t *fmt = json_object_get(root, "encoding_format");
        if (fmt && !json_is_null(fmt)) {
            if (!json_is_string(fmt) || (strcmp(json_string_value(fmt), "float") &&
                                         strcmp(json_string_value(fmt), "base64"))) {
                oa_error_set(e, 400, "encoding_format",
                             "encoding_format: expected \"float\" or \"base64\"");
                goto out;
            }
            r->base64 = !strcmp(json_string_value(fmt), "base64");
        }
        if (parse_prompts(m, json_object_get(root, "input"), "input", r, e))
            goto out;
        rc = 0;
        goto out;
    }
    if (m->info->embed) {
        oa_error_set(e, 400, "model", "model '%s' is %s", m->name,
                     m->info->classify ? "a classifier: use /v1/classify"
                                       : "an embedding model: use /v1/embeddings");
        goto out;
    }
    if (get_bool(root, "stream", &r->stream, e) || get_bool(root, "ignore_eos", &r->ignore_eos, e) ||
        get_bool(root, "return_token_ids", &r->return_token_ids, e) ||
        parse_sampling(m, root, r, e) || parse_stop(root, r, e))
        goto out;
    json_t *so = json_object_get(root, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so)) {
            oa_error_set(e, 400, "stream_options", "stream_options: expected an object, got %s",
                         type_name(so));
            goto out;
        }
        if (!r->stream) {
            oa_error_set(e, 400, "stream_options", "stream_options: only allowed with "
                         "\"stream\": true");
            goto out;
        }
        if (get_bool(so, "include_usage", &r->include_usage, e))
            goto out;
    }
    long long max_tokens = -1;
    int max_seq = m->info->max_seq_len;
    if (ep == OA_COMPLETIONS) {
        long long lp = -1;
        if (get_bool(root, "echo", &r->echo, e) ||
            get_int(root, "logprobs", 0, KB_MAX_LOGPROBS, &lp, e) ||
            get_int(root, "max_tokens", 0, max_seq, &max_tokens, e))
            goto out;
        r->logprobs = (int)lp;
        int from_gen = max_tokens < 0 && gen_max_new(m) > 0;
        if (max_tokens < 0)
            max_tokens = from_gen ? gen_max_new(m) : 16; /* else OpenAI's default */
        if (max_tokens == 0 && !r->echo) {
            oa_error_set(e, 400, "max_tokens", "max_tokens: 0 generates nothing; it is only "
                         "allowed with \"echo\": true (to score the prompt)");
            goto out;
        }
        if (parse_prompts(m, json_object_get(root, "prompt"), "prompt", r, e))
            goto out;
        for (int i = 0; from_gen && i < r->n_prompts; i++) /* a default fits every prompt */
            if (r->prompts[i].n < max_seq && max_tokens > max_seq - r->prompts[i].n)
                max_tokens = max_seq - r->prompts[i].n;
    } else {
        int lpb = 0;
        long long top = -1;
        if (get_bool(root, "logprobs", &lpb, e) ||
            get_int(root, "top_logprobs", 0, KB_MAX_LOGPROBS, &top, e) ||
            get_int(root, "max_tokens", 1, max_seq, &max_tokens, e) ||
            get_int(root, "max_completion_tokens", 1, max_seq, &max_tokens, e))
            goto out;
        if (top >= 0 && !lpb) {
            oa_error_set(e, 400, "top_logprobs", "top_logprobs: needs \"logprobs\": true");
            goto out;
        }
        r->logprobs = lpb ? (top < 0 ? 0 : (int)top) : -1;
        if (parse_chat(m, root, r, e))
            goto out;
        if (max_tokens < 0) {
            /* the model's room after the prompt, or generation_config's max_new_tokens */
            max_tokens = max_seq - r->prompts[0].n;
            if (max_tokens < 1) {
                oa_error_set(e, 400, "messages", "the prompt is %d tokens, which leaves no room "
                             "to generate within the model's maximum sequence length (%d)",
                             r->prompts[0].n, max_seq);
                goto out;
            }
            if (gen_max_new(m) > 0 && gen_max_new(m) < max_tokens)
                max_tokens = gen_max_new(m);
        }
    }
    r->max_tokens = (int)max_tokens;
    for (int i = 0; i < r->n_prompts; i++)
        if ((long long)r->prompts[i].n + max_tokens > max_seq) {
            char pi[32] = "";
            if (r->n_prompts > 1)
                snprintf(pi, sizeof pi, " (prompt[%d])", i);
            oa_error_set(e, 400, ep == OA_CHAT ? "messages" : "prompt",
                         "the prompt%s is %d tokens and max_tokens is %lld: %lld in all, more "
                         "than the model's maximum sequence length (%d); shorten the prompt or "
                         "lower max_tokens", pi, r->prompts[i].n, max_tokens,
                         r->prompts[i].n + max_tokens, max_seq);
            goto out;
        }
    rc = 0;
out:
    json_decref(root);
    if (rc)
        oa_request_free(r);
    return rc;
}

void oa_request_free(oa_request *r)
{
    for (int i = 0; i < r->n_prompts; i++) {
        free(r->prompts[i].ids);
        free(r->prompts[i].text);
    }
    free(r->prompts);
    for (int i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    memset(r, 0, sizeof *r);
    r->logprobs = -1;
}

int oa_prompt_logprobs(const oa_request *r)
{
    if (r->ep != OA_COMPLETIONS || !r->echo)
        return -1;
    if (r->logprobs >= 0)
        return r->logprobs;
    return r->max_tokens == 0 ? 0 : -1; /* scoring only: the scheduler needs something to do */
}

/* ------------------------------------------------------------------ stop strings */

void oa_stop_init(oa_stop *s, char *const *stops, int n)
{
    memset(s, 0, sizeof *s);
    s->stops = stops;
    s->n = n;
}

/* The longest tail of h (shorter than the stop string) that is a prefix of stop. */
static size_t partial_tail(const char *h, size_t len, const char *stop)
{
    size_t sl = strlen(stop);
    for (size_t k = sl - 1 < len ? sl - 1 : len; k > 0; k--)
        if (!memcmp(h + len - k, stop, k))
            return k;
    return 0;
}

int oa_stop_push(oa_stop *s, const char *text, size_t len, oa_buf *out)
{
    if (s->matched)
        return 1;
    if (s->n == 0) {
        oa_buf_add(out, text, len);
        return 0;
    }
    oa_buf_add(&s->held, text, len);
    /* the stop string that is complete first wins (the earliest end; at the same end, the one
     * that starts first): what a client watching the text grow byte by byte would see, so the
     * result does not depend on how the text was cut into tokens */
    size_t best = SIZE_MAX, best_end = SIZE_MAX;
    for (int i = 0; i < s->n; i++) {
        size_t sl = strlen(s->stops[i]);
        const char *p = memmem(s->held.p, s->held.len, s->stops[i], sl);
        if (!p)
            continue;
        size_t at = (size_t)(p - s->held.p);
        if (at + sl < best_end || (at + sl == best_end && at < best)) {
            best = at;
            best_end = at + sl;
        }
    }
    if (best != SIZE_MAX) {
        oa_buf_add(out, s->held.p, best);
        s->held.len = 0;
        s->matched = 1;
        return 1;
    }
    size_t keep = 0;
    for (int i = 0; i < s->n; i++) {
        size_t k = partial_tail(s->held.p, s->held.len, s->stops[i]);
        if (k > keep)
            keep = k;
    }
    size_t rel = s->held.len - keep;
    oa_buf_add(out, s->held.p, rel);
    memmove(s->held.p, s->held.p + rel, keep);
    s->held.len = keep;
    return 0;
}

void oa_stop_flush(oa_stop *s, oa_buf *out)
{
    if (!s->matched && s->held.len)
        oa_buf_add(out, s->held.p, s->held.len);
    s->held.len = 0;
}

void oa_stop_free(oa_stop *s)
{
    oa_buf_free(&s->held);
}

/* ------------------------------------------------------------------ choices */

static oa_logprob *new_lp(oa_choice *c)
{
    if (c->n_lp == c->cap_lp) {
        c->cap_lp = c->cap_lp ? 2 * c->cap_lp : 16;
        c->lp = xrealloc(c->lp, (size_t)c->cap_lp * sizeof *c->lp);
    }
    oa_logprob *l = &c->lp[c->n_lp++];
    memset(l, 0, sizeof *l);
    return l;
}

void oa_choice_init(oa_choice *c, const oa_model *m, const oa_request *r, int index)
{
    memset(c, 0, sizeof *c);
    c->index = index;
    const oa_prompt *p = &r->prompts[index];
    c->prompt_tokens = p->n;
    if (m->tok && !OA_POOLED(r->ep))
        c->ts = tok_stream_new(m->tok, 1);
    oa_stop_init(&c->stop, r->stop, r->n_stop);
    oa_buf_add(&c->text, "", 0);
    if (!r->echo)
        return;
    oa_buf_add(&c->text, p->text, strlen(p->text));
    c->echo_len = c->text.len;
    if (r->logprobs < 0)
        return;
    /* the echoed prompt's entries: offsets from decoding it piece by piece; logprobs arrive as
     * prompt events (the first token has none) */
    tok_stream *ts = m->tok ? tok_stream_new(m->tok, 1) : NULL;
    size_t off = 0;
    for (int i = 0; i < p->n; i++) {
        oa_logprob *l = new_lp(c);
        l->token = p->ids[i];
        l->null_logprob = 1;
        l->text_offset = off < c->echo_len ? off : c->echo_len;
        char *piece = NULL;
        size_t len = 0;
        kerr err;
        kerr_clear(&err);
        if (ts && tok_stream_push(ts, p->ids[i], &piece, &len, &err) == 0)
            off += len;
        free(piece);
    }
    tok_stream_free(ts);
}

void oa_choice_free(oa_choice *c)
{
    tok_stream_free(c->ts);
    oa_stop_free(&c->stop);
    oa_buf_free(&c->text);
    free(c->ids);
    free(c->lp);
    free(c->error);
    free(c->embedding);
    memset(c, 0, sizeof *c);
}

/* Detokenized text into the stop matcher; 1 when a stop string matched. */
static int add_text(oa_choice *c, char *piece, size_t len)
{
    c->streamed += len;
    int hit = oa_stop_push(&c->stop, piece, len, &c->text);
    free(piece);
    if (hit) {
        c->done = 1;
        c->finish = "stop";
    }
    return hit;
}

static void fail(oa_choice *c, const char *msg)
{
    free(c->error);
    c->error = xstrdup(msg);
    c->done = 1;
}

int oa_choice_event(oa_choice *c, const oa_model *m, const oa_request *r, const ks_event *ev)
{
    if (c->done)
        return 0;
    kerr err;
    kerr_clear(&err);
    if (ev->prompt_pos >= 0) {
        /* a prompt logprob (echo): entry prompt_pos was made by oa_choice_init */
        if (r->logprobs >= 0 && ev->prompt_pos < c->n_lp && ev->prompt_pos < c->prompt_tokens) {
            oa_logprob *l = &c->lp[ev->prompt_pos];
            l->null_logprob = 0;
            l->logprob = ev->logprob;
            l->n_top = ev->n_top;
            memcpy(l->top_ids, ev->top_ids, sizeof l->top_ids);
            memcpy(l->top_logprobs, ev->top_logprobs, sizeof l->top_logprobs);
        }
    } else if (ev->has_token) {
        if (c->n_ids == c->cap_ids) {
            c->cap_ids = c->cap_ids ? 2 * c->cap_ids : 16;
            c->ids = xrealloc(c->ids, (size_t)c->cap_ids * sizeof *c->ids);
        }
        c->ids[c->n_ids++] = ev->token;
        c->gen_tokens++;
        if (r->logprobs >= 0) {
            oa_logprob *l = new_lp(c);
            l->token = ev->token;
            l->logprob = ev->logprob;
            l->n_top = ev->n_top;
            memcpy(l->top_ids, ev->top_ids, sizeof l->top_ids);
            memcpy(l->top_logprobs, ev->top_logprobs, sizeof l->top_logprobs);
            l->text_offset = c->echo_len + c->streamed;
        }
        /* the end-of-sequence token ends the text without adding to it */
        if (c->ts && ev->finish != KS_STOP) {
            char *piece;
            size_t len;
            if (tok_stream_push(c->ts, ev->token, &piece, &len, &err)) {
                fail(c, kerr_msg(&err));
                return 0;
            }
            if (add_text(c, piece, len))
                return 1;
        }
    }
    if (ev->embedding && m->info->hidden > 0 && !c->embedding) {
        c->embedding = xmalloc((size_t)m->info->hidden * sizeof(float));
        memcpy(c->embedding, ev->embedding, (size_t)m->info->hidden * sizeof(float));
    }
    if (ev->finish == KS_RUNNING)
        return 0;
    if (ev->finish == KS_FAILED) {
        fail(c, ev->error ? ev->error : "the backend failed");
        return 0;
    }
    if (c->ts) {
        char *piece;
        size_t len;
        if (tok_stream_finish(c->ts, &piece, &len, &err)) {
            fail(c, kerr_msg(&err));
            return 0;
        }
        if (add_text(c, piece, len))
            return 0; /* the scheduler request has already finished */
    }
    oa_stop_flush(&c->stop, &c->text);
    c->done = 1;
    c->finish = ev->finish == KS_STOP ? "stop" : ev->finish == KS_LENGTH ? "length" : "abort";
    return 0;
}

/* ------------------------------------------------------------------ JSON */

/* jansson refuses non-finite reals; a logprob of -inf is reported as vLLM does */
static json_t *jreal(float x)
{
    return json_real(isfinite(x) ? (double)x : -9999.0);
}

static json_t *jstr(const char *s, size_t len)
{
    json_t *v = json_stringn(s, len);
    return v ? v : json_string(""); /* not UTF-8: cannot happen for decoder output */
}

/* A token's own text: the decoding of that one id (not skipping special tokens). */
static char *token_text(const oa_model *m, int32_t id)
{
    if (!m->tok)
        return xasprintf("token_id:%d", (int)id);
    kerr err;
    kerr_clear(&err);
    char *s = NULL;
    size_t len;
    if (tok_decode(m->tok, &id, 1, 0, &s, &len, &err))
        return xstrdup("");
    return s;
}

static json_t *id_array(const int32_t *ids, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_integer(ids[i]));
    return a;
}

/* Completions format: {tokens, token_logprobs, top_logprobs, text_offset} over entries
 * [from, to). top_logprobs holds the alternatives and the chosen token. */
static json_t *completion_logprobs(const oa_model *m, const oa_choice *c, int from, int to)
{
    json_t *toks = json_array(), *lps = json_array(), *tops = json_array(), *offs = json_array();
    for (int i = from; i < to; i++) {
        const oa_logprob *l = &c->lp[i];
        char *t = token_text(m, l->token);
        json_array_append_new(toks, jstr(t, strlen(t)));
        if (l->null_logprob) {
            json_array_append_new(lps, json_null());
            json_array_append_new(tops, json_null());
        } else {
            json_array_append_new(lps, jreal(l->logprob));
            json_t *d = json_object();
            for (int k = 0; k < l->n_top; k++) {
                char *a = token_text(m, l->top_ids[k]);
                json_object_set_new(d, a, jreal(l->top_logprobs[k]));
                free(a);
            }
            if (!json_object_get(d, t))
                json_object_set_new(d, t, jreal(l->logprob));
            json_array_append_new(tops, d);
        }
        json_array_append_new(offs, json_integer((json_int_t)l->text_offset));
        free(t);
    }
    return json_pack("{s:o, s:o, s:o, s:o}", "tokens", toks, "token_logprobs", lps,
                     "top_logprobs", tops, "text_offset", offs);
}

static json_t *chat_token(const oa_model *m, int32_t id, float lp)
{
    char *t = token_text(m, id);
    json_t *bytes = json_array();
    for (const unsigned char *p = (const unsigned char *)t; *p; p++)
        json_array_append_new(bytes, json_integer(*p));
    json_t *o = json_pack("{s:o, s:o, s:o}", "token", jstr(t, strlen(t)), "logprob", jreal(lp),
                          "bytes", bytes);
    free(t);
    return o;
}

/* Chat format: {"content": [{token, logprob, bytes, top_logprobs: [...]}]} */
static json_t *chat_logprobs(const oa_model *m, const oa_choice *c, int from, int to)
{
    json_t *content = json_array();
    for (int i = from; i < to; i++) {
        const oa_logprob *l = &c->lp[i];
        json_t *o = chat_token(m, l->token, l->logprob);
        json_t *tops = json_array();
        for (int k = 0; k < l->n_top; k++)
            json_array_append_new(tops, chat_token(m, l->top_ids[k], l->top_logprobs[k]));
        json_object_set_new(o, "top_logprobs", tops);
        json_array_append_new(content, o);
    }
    return json_pack("{s:o}", "content", content);
}

static json_t *usage(const oa_choice *c, int n)
{
    long long p = 0, g = 0;
    for (int i = 0; i < n; i++) {
        p += c[i].prompt_tokens;
        g += c[i].gen_tokens;
    }
    return json_pack("{s:I, s:I, s:I}", "prompt_tokens", (json_int_t)p, "completion_tokens",
                     (json_int_t)g, "total_tokens", (json_int_t)(p + g));
}

static char *dump(json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    assert(s);
    return s;
}

static void add_event(oa_buf *out, json_t *o)
{
    char *s = dump(o);
    buf_str(out, "data: ");
    buf_str(out, s);
    buf_str(out, "\n\n");
    free(s);
}

static json_t *envelope(const oa_model *m, const oa_request *r, const char *id, long created,
                        int chunk)
{
    const char *obj = r->ep == OA_CHAT ? (chunk ? "chat.completion.chunk" : "chat.completion")
                                       : "text_completion";
    return json_pack("{s:s, s:s, s:I, s:s}", "id", id, "object", obj, "created",
                     (json_int_t)created, "model", m->name);
}

void oa_chunk(const oa_model *m, const oa_request *r, const char *id, long created,
              oa_choice *c, oa_buf *out)
{
    int chat = r->ep == OA_CHAT;
    if (chat && !c->role_sent) {
        json_t *o = envelope(m, r, id, created, 1);
        json_object_set_new(o, "choices",
                            json_pack("[{s:i, s:{s:s, s:s}, s:n, s:n}]", "index", c->index,
                                      "delta", "role", "assistant", "content", "", "logprobs",
                                      "finish_reason"));
        if (r->return_token_ids) {
            json_object_set_new(o, "prompt_token_ids",
                                id_array(r->prompts[0].ids, r->prompts[0].n));
            c->prompt_sent = 1;
        }
        add_event(out, o);
        c->role_sent = 1;
    }
    int new_text = c->text.len > c->sent, new_ids = c->n_ids > c->ids_sent,
        new_lp = c->n_lp > c->lp_sent, end = c->done && c->finish;
    /* a token whose text is held back (a partial character or stop string) still shows its id
     * and logprob to clients that asked for them */
    if (!new_text && !end && !((r->return_token_ids && new_ids) || new_lp))
        return;
    json_t *o = envelope(m, r, id, created, 1);
    json_t *ch = json_pack("{s:i}", "index", c->index);
    json_t *text = jstr(c->text.p + c->sent, c->text.len - c->sent);
    if (chat)
        json_object_set_new(ch, "delta", new_text ? json_pack("{s:o}", "content", text)
                                                  : (json_decref(text), json_object()));
    else
        json_object_set_new(ch, "text", text);
    json_object_set_new(ch, "logprobs",
                        !new_lp ? json_null()
                        : chat  ? chat_logprobs(m, c, c->lp_sent, c->n_lp)
                                : completion_logprobs(m, c, c->lp_sent, c->n_lp));
    json_object_set_new(ch, "finish_reason", end ? json_string(c->finish) : json_null());
    if (r->return_token_ids) {
        json_object_set_new(ch, "token_ids", id_array(c->ids + c->ids_sent, c->n_ids - c->ids_sent));
        if (!c->prompt_sent) {
            const oa_prompt *p = &r->prompts[c->index];
            json_object_set_new(r->n_prompts > 1 ? ch : o, "prompt_token_ids",
                                id_array(p->ids, p->n));
            c->prompt_sent = 1;
        }
    }
    json_object_set_new(o, "choices", json_pack("[o]", ch));
    add_event(out, o);
    c->sent = c->text.len;
    c->ids_sent = c->n_ids;
    c->lp_sent = c->n_lp;
}

void oa_usage_chunk(const oa_model *m, const oa_request *r, const char *id, long created,
                    const oa_choice *c, int n, oa_buf *out)
{
    json_t *o = envelope(m, r, id, created, 1);
    json_object_set_new(o, "choices", json_array());
    json_object_set_new(o, "usage", usage(c, n));
    add_event(out, o);
}

char *oa_response(const oa_model *m, const oa_request *r, const char *id, long created,
                  const oa_choice *c, int n)
{
    int chat = r->ep == OA_CHAT;
    json_t *o = envelope(m, r, id, created, 0);
    json_t *choices = json_array();
    for (int i = 0; i < n; i++) {
        json_t *ch = json_pack("{s:i}", "index", c[i].index);
        json_t *text = jstr(c[i].text.p, c[i].text.len);
        if (chat)
            json_object_set_new(ch, "message",
                                json_pack("{s:s, s:o}", "role", "assistant", "content", text));
        else
            json_object_set_new(ch, "text", text);
        json_object_set_new(ch, "logprobs",
                            r->logprobs < 0 ? json_null()
                            : chat ? chat_logprobs(m, &c[i], 0, c[i].n_lp)
                                   : completion_logprobs(m, &c[i], 0, c[i].n_lp));
        json_object_set_new(ch, "finish_reason", json_string(c[i].finish ? c[i].finish : "abort"));
        if (r->return_token_ids) {
            json_object_set_new(ch, "token_ids", id_array(c[i].ids, c[i].n_ids));
            if (r->n_prompts > 1)
                json_object_set_new(ch, "prompt_token_ids",
                                    id_array(r->prompts[i].ids, r->prompts[i].n));
        }
        json_array_append_new(choices, ch);
    }
    json_object_set_new(o, "choices", choices);
    json_object_set_new(o, "usage", usage(c, n));
    if (r->return_token_ids && r->n_prompts == 1)
        json_object_set_new(o, "prompt_token_ids", id_array(r->prompts[0].ids, r->prompts[0].n));
    return dump(o);
}

static json_t *base64_floats(const float *v, int n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t len = (size_t)n * 4;
    const unsigned char *p = (const unsigned char *)v; /* little-endian float32, as OpenAI */
    char *s = xmalloc((len + 2) / 3 * 4 + 1), *q = s;
    for (size_t i = 0; i < len; i += 3) {
        unsigned x = (unsigned)p[i] << 16 | (i + 1 < len ? (unsigned)p[i + 1] << 8 : 0) |
                     (i + 2 < len ? p[i + 2] : 0);
        *q++ = tab[x >> 18 & 63];
        *q++ = tab[x >> 12 & 63];
        *q++ = i + 1 < len ? tab[x >> 6 & 63] : '=';
        *q++ = i + 2 < len ? tab[x & 63] : '=';
    }
    *q = 0;
    json_t *o = json_string(s);
    free(s);
    return o;
}

char *oa_embeddings(const oa_model *m, const oa_request *r, const oa_choice *c, int n)
{
    json_t *data = json_array();
    long long p = 0;
    for (int i = 0; i < n; i++) {
        json_t *vec;
        int h = m->info->hidden;
        if (r->base64)
            vec = base64_floats(c[i].embedding, h);
        else {
            vec = json_array();
            for (int k = 0; k < h; k++)
                json_array_append_new(vec, jreal(c[i].embedding[k]));
        }
        json_array_append_new(data, json_pack("{s:s, s:i, s:o}", "object", "embedding", "index",
                                              i, "embedding", vec));
        p += c[i].prompt_tokens;
    }
    return dump(json_pack("{s:s, s:o, s:s, s:{s:I, s:I}}", "object", "list", "data", data,
                          "model", m->name, "usage", "prompt_tokens", (json_int_t)p,
                          "total_tokens", (json_int_t)p));
}

char *oa_classify(const oa_model *m, const oa_request *r, const char *id, long created,
                  const oa_choice *c, int n)
{
    (void)r;
    json_t *data = json_array();
    long long p = 0;
    int L = m->info->hidden;
    for (int i = 0; i < n; i++) {
        const float *s = c[i].embedding;
        int top = 0;
        for (int k = 1; k < L; k++)
            if (s[k] > s[top])
                top = k;
        double sum = 0; /* softmax in double, from the largest score */
        for (int k = 0; k < L; k++)
            sum += exp((double)s[k] - (double)s[top]);
        json_t *scores = json_array(), *probs = json_array();
        for (int k = 0; k < L; k++) {
            json_array_append_new(scores, jreal(s[k]));
            json_array_append_new(probs, jreal((float)(exp((double)s[k] - (double)s[top]) / sum)));
        }
        json_array_append_new(data, json_pack("{s:i, s:s, s:o, s:o, s:i}", "index", i, "label",
                                              m->info->labels[top], "scores", scores, "probs",
                                              probs, "num_classes", L));
        p += c[i].prompt_tokens;
    }
    return dump(json_pack("{s:s, s:s, s:I, s:s, s:o, s:{s:I, s:I, s:I}}", "id", id, "object",
                          "list", "created", (json_int_t)created, "model", m->name, "data", data,
                          "usage", "prompt_tokens", (json_int_t)p, "total_tokens", (json_int_t)p,
                          "completion_tokens", (json_int_t)0));
}

char *oa_models(const oa_model *m, long created)
{
    return dump(json_pack("{s:s, s:[{s:s, s:s, s:I, s:s, s:i}]}", "object", "list", "data", "id",
                          m->name, "object", "model", "created", (json_int_t)created, "owned_by",
                          "kiln", "max_model_len", m->info->max_seq_len));
}
