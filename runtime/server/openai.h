/* openai — the OpenAI API's JSON for `kiln serve`: request validation, the stop-string matcher,
 * logprob formatting, and the response and stream-chunk builders. No HTTP and no threads here
 * (http.c owns those): everything takes the request's own state and is called by one thread at a
 * time per request.
 *
 *   oa_parse          body of POST /v1/completions, /v1/chat/completions or /v1/embeddings ->
 *                     an oa_request with the prompts encoded to ids, or an oa_error (status,
 *                     message naming the field and the range, OpenAI error type and param)
 *   oa_stop_*         holds text back while its tail could start a stop string; ends the output
 *                     just before the first stop string that matches
 *   oa_choice_*       one choice's output: the scheduler's events for it in order (ks_event), the
 *                     streaming detokenizer, the stop matcher, generated ids and logprobs
 *   oa_chunk / oa_response / oa_usage_chunk / oa_embeddings
 *                     the JSON the client sees (stream chunks as "data: ...\n\n" lines)
 */
#ifndef KILN_SERVER_OPENAI_H
#define KILN_SERVER_OPENAI_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "../artifact.h" /* ka_gen */
#include "../backend.h"
#include "../sched.h"
#include "../tokenizer/chat_template.h"
#include "../tokenizer/tokenizer.h"

#define OA_MAX_STOP 4           /* stop strings per request (OpenAI's limit) */
#define OA_MAX_STOP_LEN 1024    /* bytes per stop string */
#define OA_MAX_PROMPTS 256      /* prompts (choices, embedding inputs) per request */

typedef enum oa_endpoint { OA_COMPLETIONS, OA_CHAT, OA_EMBEDDINGS, OA_CLASSIFY } oa_endpoint;
/* one vector per input, nothing generated: /v1/embeddings and /v1/classify */
#define OA_POOLED(ep) ((ep) == OA_EMBEDDINGS || (ep) == OA_CLASSIFY)

/* What the server serves: set up once at startup, read-only afterwards, shared by all threads. */
typedef struct oa_model {
    const char *name;        /* the model id in the API */
    const kb_info *info;
    tokenizer *tok;          /* NULL: the folder has no tokenizer.json (token-id prompts only) */
    const ct_model *chat;    /* NULL: no chat template (chat_error says why) */
    const char *chat_error;
    const ka_gen *gen;       /* generation_config.json's defaults for the fields a request leaves
                              * out (temperature, top_p, top_k, max_tokens), as vLLM's
                              * --generation-config auto; NULL: OpenAI's defaults */
} oa_model;

typedef struct oa_error {
    int status;              /* HTTP status: 400, 401, 404, 405, 413, 500, 503 */
    const char *type;        /* "invalid_request_error", ... */
    const char *code;        /* NULL or a code such as "model_not_found" */
    char param[64];          /* the field, "" when none */
    char message[2048];
} oa_error;

/* Sets e (status, type from the status, param) and returns -1. */
int oa_error_set(oa_error *e, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* {"error": {"message", "type", "param", "code"}} as a malloc'd string. */
char *oa_error_json(const oa_error *e);

/* A growable byte buffer (always NUL-terminated once anything was appended). */
typedef struct oa_buf {
    char *p;
    size_t len, cap;
} oa_buf;
void oa_buf_add(oa_buf *b, const char *s, size_t n);
void oa_buf_free(oa_buf *b);

typedef struct oa_prompt {
    int32_t *ids;
    int n;
    char *text;              /* for echo: the prompt's text (as given, or decoded from ids) */
} oa_prompt;

typedef struct oa_request {
    oa_endpoint ep;
    oa_prompt *prompts;      /* one per choice (completions, embeddings); chat has one */
    int n_prompts;
    int max_tokens;
    kiln_sample sp;
    char *stop[OA_MAX_STOP];
    int n_stop;
    int echo;                /* completions: the prompt's text (and logprobs) come first */
    int logprobs;            /* -1: none; 0 .. KB_MAX_LOGPROBS alternatives */
    int stream, include_usage;
    int return_token_ids, ignore_eos;
    int base64;              /* embeddings: encoding_format "base64" */
} oa_request;

/* Validates and encodes a request body. 0, or -1 with e set (400 for bad JSON, types and ranges
 * (the message names the field and the range), 404 for another model's name). */
int oa_parse(const oa_model *m, oa_endpoint ep, const char *body, size_t len, oa_request *r,
             oa_error *e);
void oa_request_free(oa_request *r);
/* The prompt logprobs a request needs from the scheduler (-1: none). */
int oa_prompt_logprobs(const oa_request *r);

/* ---- stop strings ---- */
typedef struct oa_stop {
    char *const *stops;
    int n;
    oa_buf held;             /* text not released yet: its tail may start a stop string */
    int matched;
} oa_stop;
void oa_stop_init(oa_stop *s, char *const *stops, int n);
/* Adds generated text; appends to out the text that can no longer be part of a stop string.
 * Returns 1 when a stop string matched: out then ends just before it, and later pushes add
 * nothing. The stop string complete first in the text wins (at equal ends, the longer), so the
 * result is the same however the text is cut into pieces. */
int oa_stop_push(oa_stop *s, const char *text, size_t len, oa_buf *out);
/* The end of generation: releases the text held back. */
void oa_stop_flush(oa_stop *s, oa_buf *out);
void oa_stop_free(oa_stop *s);

/* ---- one choice's output ---- */
typedef struct oa_logprob {
    int32_t token;
    int null_logprob;        /* the first prompt token of an echo: no logprob */
    float logprob;
    int n_top;
    int32_t top_ids[KB_MAX_LOGPROBS];
    float top_logprobs[KB_MAX_LOGPROBS];
    size_t text_offset;
} oa_logprob;

typedef struct oa_choice {
    int index;
    tok_stream *ts;          /* NULL without a tokenizer */
    oa_stop stop;
    oa_buf text;             /* the text released so far (the echoed prompt first) */
    size_t sent;             /* bytes of text already in a stream chunk */
    size_t echo_len;         /* bytes of the echoed prompt */
    size_t streamed;         /* bytes of generated text out of the detokenizer (text_offset) */
    int prompt_sent;         /* stream: prompt_token_ids went out */
    int32_t *ids;            /* generated ids */
    int n_ids, cap_ids, ids_sent;
    oa_logprob *lp;          /* logprob entries (echoed prompt first) */
    int n_lp, cap_lp, lp_sent;
    int prompt_tokens, gen_tokens;
    int done;                /* finished (finish reason known), or failed (error) */
    const char *finish;      /* "stop", "length", NULL while running */
    char *error;             /* the backend failed */
    float *embedding;        /* embeddings: [info->hidden] */
    int role_sent;           /* chat stream: the {"role": "assistant"} chunk went out */
} oa_choice;

void oa_choice_init(oa_choice *c, const oa_model *m, const oa_request *r, int index);
void oa_choice_free(oa_choice *c);
/* Takes the choice's next scheduler event (embedding and error pointers must stay valid for the
 * call). Returns 1 when a stop string just matched (the caller cancels the scheduler request:
 * later events of this choice are ignored), else 0. */
int oa_choice_event(oa_choice *c, const oa_model *m, const oa_request *r, const ks_event *ev);

/* Stream: "data: {chunk}\n\n" with what the choice produced since its last chunk (and its
 * finish_reason when done), appended to out; nothing when there is nothing new. */
void oa_chunk(const oa_model *m, const oa_request *r, const char *id, long created,
              oa_choice *c, oa_buf *out);
/* Stream: the usage chunk (stream_options.include_usage) over all choices. */
void oa_usage_chunk(const oa_model *m, const oa_request *r, const char *id, long created,
                    const oa_choice *c, int n, oa_buf *out);
/* Non-stream: the whole completion or chat completion object. */
char *oa_response(const oa_model *m, const oa_request *r, const char *id, long created,
                  const oa_choice *c, int n);
/* /v1/embeddings: the list object. */
char *oa_embeddings(const oa_model *m, const oa_request *r, const oa_choice *c, int n);
/* /v1/classify: per input its raw scores (logits), their softmax and the top label (README). */
char *oa_classify(const oa_model *m, const oa_request *r, const char *id, long created,
                  const oa_choice *c, int n);
/* GET /v1/models */
char *oa_models(const oa_model *m, long created);

#endif
