/* chat_template — the public face of the chat-template engine (see chat_template.h): parsing,
 * one bounded render, and a model folder's template, special tokens and request preparation.
 *
 * A render gets its own context (arena, output buffer, limits, jmp_buf) on the heap; the parsed
 * template is only read. Errors inside the interpreter longjmp back here, where the arena and
 * buffers are freed and the message is put into the caller's kerr with the template line.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template.h"
#include "jinja.h"

chat_template *ct_parse(const char *src, size_t len, kerr *err)
{
    size_t bad;
    if (!ju_valid(src, len, &bad)) {
        int line = 1;
        for (size_t i = 0; i < bad; i++)
            line += src[i] == '\n';
        kerr_add(err, "chat template line %d: not valid UTF-8 (byte %zu)", line, bad);
        return NULL;
    }
    chat_template *t = xcalloc(1, sizeof *t);
    char msg[1024];
    if (jp_parse(t, src, len, msg, sizeof msg)) {
        kerr_add(err, "%s", msg);
        ct_free(t);
        return NULL;
    }
    return t;
}

void ct_free(chat_template *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->nallocs; i++)
        free(t->allocs[i]);
    free(t->allocs);
    free(t);
}

/* JSON to values; jansson keeps object keys in insertion order, as Python dicts do */
static jv from_json(jctx *c, const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_NULL: return jv_none();
    case JSON_TRUE: return jv_bool(1);
    case JSON_FALSE: return jv_bool(0);
    case JSON_INTEGER: return jv_int((int64_t)json_integer_value(j));
    case JSON_REAL: return jv_float(json_real_value(j));
    case JSON_STRING: return jv_str(c, json_string_value(j), json_string_length(j));
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        jv l = jv_list(c, n);
        for (size_t i = 0; i < n; i++)
            jl_push(c, l.u.l, from_json(c, json_array_get(j, i)));
        return l;
    }
    case JSON_OBJECT: {
        jv d = jv_dict(c, json_object_size(j));
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)j, k, v) jd_set(c, d.u.d, jv_cstr(c, k), from_json(c, v));
        return d;
    }
    }
    return jv_none();
}

int ct_render(const chat_template *t, const json_t *vars, const ct_options *opt, char **out,
              size_t *out_len, kerr *err)
{
    static const ct_options none;
    if (!opt)
        opt = &none;
    if (!json_is_object(vars))
        return kerr_add(err, "chat template: the variables must be a JSON object");
    jctx *c = xcalloc(1, sizeof *c);
    c->tmpl = t;
    c->step_limit = opt->max_steps ? opt->max_steps : CT_DEFAULT_STEPS;
    c->out_limit = opt->max_output ? opt->max_output : CT_DEFAULT_OUTPUT;
    c->mem_limit = opt->max_memory ? opt->max_memory : CT_DEFAULT_MEMORY;
    c->depth_limit = opt->max_depth ? opt->max_depth : CT_DEFAULT_DEPTH;
    if (opt->now)
        c->now = *opt->now;
    else {
        time_t now = time(NULL);
        localtime_r(&now, &c->now);
    }
    /* both buffers exist from the start, so text taken from them never starts at NULL */
    c->out = (jbuf){xcalloc(1, 256), 0, 256};
    c->tmp = (jbuf){xcalloc(1, 256), 0, 256};
    int rc = 0;
    if (setjmp(c->jmp)) {
        if (c->raised) {
            /* the exact text for the caller (kerr tidies whitespace), a printable copy in err */
            if (c->err[0])
                kerr_add(err, "%s", c->err);
            else
                kerr_add(err, "raise_exception('') (the template raised an empty message)");
            *out_len = strlen(c->err);
            *out = c->err;
            c->err = NULL;
            rc = CT_RAISED;
        } else
            rc = kerr_add(err, "chat template line %d: %s", c->line, c->err);
        free(c->out.p);
    } else {
        jv v = from_json(c, vars);
        jx_render(c, t->root, v);
        *out_len = c->out.len;
        *out = c->out.p;
    }
    free(c->err);
    free(c->tmp.p);
    jx_arena_free(c);
    free(c);
    return rc;
}

/* ---------------------------------------------------------------- model folders */

static const char *const special_names[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                            "pad_token", "cls_token", "mask_token"};

static json_t *load_json(const char *dir, const char *name, int *present, kerr *err)
{
    char *path = util_path_join(dir, name);
    *present = util_is_file(path);
    json_t *j = NULL;
    if (*present) {
        json_error_t je;
        j = json_load_file(path, 0, &je);
        if (!j)
            kerr_add(err, "%s:%d: %s", path, je.line, je.text);
        else if (!json_is_object(j)) {
            kerr_add(err, "%s: expected a JSON object", path);
            json_decref(j);
            j = NULL;
        }
    }
    free(path);
    return j;
}

static chat_template *parse_named(const char *origin, const char *src, size_t len, kerr *err)
{
    kerr e;
    kerr_clear(&e);
    chat_template *t = ct_parse(src, len, &e);
    if (!t)
        kerr_add(err, "%s: %s", origin, kerr_msg(&e));
    return t;
}

int ct_model_load(const char *dir, ct_model *m, kerr *err)
{
    memset(m, 0, sizeof *m);
    int have_cfg, have_map;
    json_t *cfg = load_json(dir, "tokenizer_config.json", &have_cfg, err);
    if (have_cfg && !cfg)
        return -1;
    char *jpath = util_path_join(dir, "chat_template.jinja");
    int rc = 0;
    if (util_is_file(jpath)) {
        size_t len;
        char *src = util_read_file(jpath, &len, err);
        m->origin = xstrdup(jpath);
        if (!src || !(m->tmpl = parse_named(jpath, src, len, err)))
            rc = -1;
        free(src);
    } else if (cfg && json_object_get(cfg, "chat_template")) {
        json_t *ct = json_object_get(cfg, "chat_template");
        m->origin = xasprintf("%s/tokenizer_config.json", dir);
        if (json_is_string(ct)) {
            if (!(m->tmpl = parse_named(m->origin, json_string_value(ct), json_string_length(ct), err)))
                rc = -1;
        } else if (json_is_array(ct)) {
            size_t i;
            json_t *e;
            json_array_foreach(ct, i, e) {
                json_t *nm = json_object_get(e, "name"), *tx = json_object_get(e, "template");
                if (!json_is_string(nm) || !json_is_string(tx)) {
                    rc = kerr_add(err, "%s: chat_template[%zu]: expected {\"name\": string, "
                                       "\"template\": string}", m->origin, i);
                    break;
                }
                chat_template **slot = !strcmp(json_string_value(nm), "default") ? &m->tmpl
                                     : !strcmp(json_string_value(nm), "tool_use") ? &m->tool_tmpl
                                     : NULL;
                if (slot && !*slot) {
                    char *o = xasprintf("%s (chat_template '%s')", m->origin, json_string_value(nm));
                    *slot = parse_named(o, json_string_value(tx), json_string_length(tx), err);
                    free(o);
                    if (!*slot) {
                        rc = -1;
                        break;
                    }
                }
            }
            if (rc == 0 && !m->tmpl)
                rc = kerr_add(err, "%s: chat_template lists several templates and none is named "
                                   "'default'", m->origin);
        } else
            rc = kerr_add(err, "%s: chat_template: expected a string or a list of {name, "
                               "template}, got %s", m->origin,
                          json_is_null(ct) ? "null" : "another JSON type");
    } else
        rc = kerr_add(err, "%s: no chat template (neither chat_template.jinja nor a "
                           "\"chat_template\" in tokenizer_config.json)", dir);
    free(jpath);

    m->special = json_object();
    json_t *map = rc == 0 ? load_json(dir, "special_tokens_map.json", &have_map, err) : NULL;
    if (rc == 0 && have_map && !map)
        rc = -1;
    for (size_t i = 0; rc == 0 && i < ARRAY_LEN(special_names); i++) {
        json_t *src[2] = {cfg ? json_object_get(cfg, special_names[i]) : NULL,
                          map ? json_object_get(map, special_names[i]) : NULL};
        for (int k = 0; k < 2; k++) {
            json_t *v = src[k];
            if (json_is_object(v))
                v = json_object_get(v, "content");
            if (json_is_string(v)) {
                json_object_set(m->special, special_names[i], v);
                break;
            }
        }
    }
    json_decref(cfg);
    json_decref(map);
    if (rc)
        ct_model_free(m);
    return rc;
}

void ct_model_free(ct_model *m)
{
    ct_free(m->tmpl);
    ct_free(m->tool_tmpl);
    json_decref(m->special);
    free(m->origin);
    memset(m, 0, sizeof *m);
}

/* transformers' _normalize_chat_messages and _alias_reasoning_fields on one message */
static json_t *prepare_message(json_t *msg)
{
    json_t *out = json_object();
    const char *k;
    json_t *v;
    json_t *reasoning = NULL;
    static const char *const fields[] = {"reasoning_content", "thinking", "reasoning"};
    for (size_t i = 0; i < ARRAY_LEN(fields) && !reasoning; i++) {
        json_t *r = json_object_get(msg, fields[i]);
        if (r && !json_is_null(r))
            reasoning = r;
    }
    if (reasoning)
        json_object_set(out, "thinking", reasoning);
    json_object_foreach(msg, k, v) {
        if (json_is_null(v))
            continue;
        if (reasoning && !strcmp(k, "thinking"))
            continue; /* keeps its first place, with the reasoning */
        json_object_set(out, k, reasoning && !strcmp(k, "reasoning_content") ? reasoning : v);
    }
    if (reasoning && !json_object_get(out, "reasoning_content"))
        json_object_set(out, "reasoning_content", reasoning);
    return out;
}

int ct_model_render(const ct_model *m, const json_t *request, const ct_options *opt, char **out,
                    size_t *out_len, kerr *err)
{
    json_t *msgs;
    const json_t *req = request;
    if (json_is_array(request)) {
        msgs = (json_t *)request;
        req = NULL;
    } else if (json_is_object(request)) {
        msgs = json_object_get(request, "messages");
        if (!json_is_array(msgs))
            return kerr_add(err, "chat request: \"messages\" must be an array of message objects%s",
                            msgs ? "" : " (it is missing)");
    } else
        return kerr_add(err, "chat request: expected a JSON object {\"messages\": [...], ...} or an "
                             "array of messages");
    json_t *vars = json_object();
    json_t *pm = json_array();
    size_t i;
    json_t *msg;
    json_array_foreach(msgs, i, msg) {
        if (!json_is_object(msg)) {
            json_decref(pm);
            json_decref(vars);
            return kerr_add(err, "chat request: messages[%zu] must be an object with \"role\" and "
                                 "\"content\"", i);
        }
        json_array_append_new(pm, prepare_message(msg));
    }
    json_t *tools = req ? json_object_get(req, "tools") : NULL;
    json_t *docs = req ? json_object_get(req, "documents") : NULL;
    json_t *agp = req ? json_object_get(req, "add_generation_prompt") : NULL;
    json_object_set_new(vars, "messages", pm);
    json_object_set(vars, "tools", tools ? tools : json_null());
    json_object_set(vars, "documents", docs ? docs : json_null());
    json_object_set(vars, "add_generation_prompt", agp ? agp : json_true());
    json_object_update(vars, m->special);
    const char *k;
    json_t *v;
    if (req)
        json_object_foreach((json_t *)req, k, v) {
            if (strcmp(k, "messages") && strcmp(k, "tools") && strcmp(k, "documents") &&
                strcmp(k, "add_generation_prompt"))
                json_object_set(vars, k, v);
        }
    const chat_template *t = tools && !json_is_null(tools) && m->tool_tmpl ? m->tool_tmpl : m->tmpl;
    int rc = ct_render(t, vars, opt, out, out_len, err);
    json_decref(vars);
    return rc;
}

json_t *ct_user_request(const char *text)
{
    return json_pack("{s:[{s:s,s:s}]}", "messages", "role", "user", "content", text);
}

char *ct_chat_prompt(const char *dir, const char *message, kerr *err)
{
    ct_model m;
    if (ct_model_load(dir, &m, err))
        return NULL;
    json_t *req = ct_user_request(message);
    char *out = NULL;
    size_t len;
    int rc = ct_model_render(&m, req, NULL, &out, &len, err);
    if (rc == CT_RAISED) { /* the message is in err too */
        free(out);
        out = NULL;
        kerr_add(err, "%s: the chat template refused the message (raise_exception above)", m.origin);
    } else if (rc)
        kerr_add(err, "%s: rendering the chat template failed", m.origin);
    else if (memchr(out, 0, len)) {
        kerr_add(err, "%s: the chat template's output holds a NUL byte", m.origin);
        free(out);
        out = NULL;
    }
    json_decref(req);
    ct_model_free(&m);
    return out;
}
