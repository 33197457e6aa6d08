/* chat_template — a model's Jinja chat template rendered in C, byte for byte as transformers'
 * apply_chat_template renders it (jinja2 3.1 in an ImmutableSandboxedEnvironment with
 * trim_blocks, lstrip_blocks, loopcontrols, transformers' tojson, raise_exception,
 * strftime_now, dict and namespace).
 *
 *   ct_parse / ct_render / ct_free   one template: parse once, render from any number of
 *                                    threads at once (a render touches nothing shared);
 *   ct_model_load / ct_model_render  a model folder or a compiled artifact folder: the template
 *                                    (chat_template.jinja, else tokenizer_config.json's
 *                                    chat_template), its special tokens, and a request in the
 *                                    shape apply_chat_template takes its arguments.
 * Rendering is bounded: steps, output bytes, memory and nesting all have limits (ct_options), so
 * a hostile template or request fails with a message instead of hanging or crashing.
 * Implementation: jinja.h (value model, lexer/parser, interpreter).
 */
#ifndef KILN_CHAT_TEMPLATE_H
#define KILN_CHAT_TEMPLATE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "util.h"

typedef struct chat_template chat_template;

typedef struct ct_options {
    const struct tm *now; /* what strftime_now() sees; NULL: the local time when rendering */
    uint64_t max_steps;   /* 0: CT_DEFAULT_STEPS */
    size_t max_output;    /* bytes of rendering; 0: CT_DEFAULT_OUTPUT */
    size_t max_memory;    /* bytes the render may allocate; 0: CT_DEFAULT_MEMORY */
    int max_depth;        /* nesting of blocks, macro calls and values; 0: CT_DEFAULT_DEPTH */
} ct_options;

#define CT_DEFAULT_STEPS 20000000ull
#define CT_DEFAULT_OUTPUT (16u << 20)
#define CT_DEFAULT_MEMORY (512u << 20)
#define CT_DEFAULT_DEPTH 500

/* ct_render's status when the template itself called raise_exception(msg): *out holds msg
 * exactly (malloc'd, *out_len bytes; the server answers 400 with it) and err the same text for
 * printing (kerr trims trailing whitespace and indents continuation lines). Other errors return
 * -1 with *out untouched and read "chat template line N: ..." in err. */
#define CT_RAISED (-2)

/* Parses a template (UTF-8). NULL with "chat template line N: ..." in err on a syntax error or
 * a construct kiln does not support. */
chat_template *ct_parse(const char *src, size_t len, kerr *err);
void ct_free(chat_template *t);

/* Renders t with the variables of vars (a JSON object: messages, add_generation_prompt,
 * bos_token, ...; passed as they are — see ct_model_render for transformers' preparation).
 * On success *out is a malloc'd NUL-terminated string of *out_len bytes. */
int ct_render(const chat_template *t, const json_t *vars, const ct_options *opt, char **out,
              size_t *out_len, kerr *err);

typedef struct ct_model {
    chat_template *tmpl;      /* the default template */
    chat_template *tool_tmpl; /* the template named "tool_use", used when tools are given; or NULL */
    json_t *special;          /* {"bos_token": "<s>", ...}: the named special tokens */
    char *origin;             /* where the template came from, for messages */
} ct_model;

/* Loads the chat template of a model folder (HF checkpoint or kilnc output): chat_template.jinja
 * if present (it wins, as in transformers), else tokenizer_config.json's "chat_template" (a
 * string, or a list of {name, template} of which "default" and "tool_use" are used). Special
 * tokens come from tokenizer_config.json (strings or {"content": ...}), then
 * special_tokens_map.json for any it lacks. */
int ct_model_load(const char *dir, ct_model *m, kerr *err);
void ct_model_free(ct_model *m);

/* Renders a request: a JSON object {"messages": [...], "tools": [...], "documents": [...],
 * "add_generation_prompt": bool, ...extra variables} or a bare array of messages. As
 * apply_chat_template: add_generation_prompt defaults to true here (the CLI's and the server's
 * convention), tools and documents default to None, message keys whose value is null are
 * dropped, reasoning_content/thinking/reasoning are aliased to each other, and the special
 * tokens are passed unless the request sets them. Returns 0, -1 or CT_RAISED as ct_render. */
int ct_model_render(const ct_model *m, const json_t *request, const ct_options *opt, char **out,
                    size_t *out_len, kerr *err);

/* The request for one user message: {"messages": [{"role": "user", "content": text}]}. */
json_t *ct_user_request(const char *text);

/* `--chat MESSAGE` of kiln run and kilnc ref: DIR's template rendered for one user message with
 * the generation prompt, as a malloc'd string; NULL with the reason in err. Encode it without
 * adding special tokens (the template writes them), as apply_chat_template(tokenize=True). */
char *ct_chat_prompt(const char *dir, const char *message, kerr *err);

#endif
