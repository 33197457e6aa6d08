/* fuzz_chat_template — the chat-template engine (runtime/tokenizer/chat_template.h): parser and interpreter.
 *
 * The input is a template's text, optionally followed by a NUL byte and a JSON request (what
 * `kiln chat-template` reads on stdin: an object with messages/tools/... or a bare array). Without
 * a request, three fixed ones are used: a system + user + assistant conversation with unicode and
 * Jinja-looking content, one with tool calls, tools and extra variables, and an empty one.
 * ct_parse reads the text; a template that parses is rendered for each request through
 * ct_model_render (the path the server and the CLI take), with tight limits so that a template
 * that loops, recurses or grows stops quickly.
 * Contracts: a failing parse or render leaves a message, and a render error names the template
 * line (or the request's field); a rendering is valid UTF-8, its length is
 * what ct_render reports and no longer than the output limit; rendering is deterministic (the
 * second render of the same request gives the same bytes or the same error).
 */
#include <jansson.h>

#include "tokenizer/chat_template.h"
#include "fuzz.h"

static const char *const requests[] = {
    "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", "
    "\"content\": \"H\\u00e9llo \\u4e16\\u754c {{ x }} {% if %}\"}, {\"role\": \"assistant\", "
    "\"content\": \" hi \", \"reasoning_content\": \"think\"}], \"add_generation_prompt\": true}",
    "{\"messages\": [{\"role\": \"user\", \"content\": \"weather?\"}, {\"role\": \"assistant\", "
    "\"content\": null, \"tool_calls\": [{\"id\": \"call_123456789\", \"type\": \"function\", "
    "\"function\": {\"name\": \"get\", \"arguments\": {\"city\": \"Paris\", \"n\": 2.5}}}]}, "
    "{\"role\": \"tool\", \"tool_call_id\": \"call_123456789\", \"content\": \"sunny\"}], "
    "\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"get\", \"description\": "
    "\"d\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": "
    "\"string\"}}, \"required\": [\"city\"]}}}], \"enable_thinking\": false, \"documents\": "
    "[{\"title\": \"t\", \"text\": \"x\"}], \"add_generation_prompt\": false}",
    "[]",
};

static ct_model model;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    model.special = json_pack("{s:s,s:s}", "bos_token", "<s>", "eos_token", "</s>");
    model.origin = xstrdup("fuzz");
    return 0;
}

static void render_twice(const json_t *req)
{
    struct tm now = {.tm_year = 126, .tm_mon = 0, .tm_mday = 15, .tm_hour = 12, .tm_wday = 4};
    ct_options opt = {.now = &now, .max_steps = 200000, .max_output = 1 << 18,
                      .max_memory = 64u << 20, .max_depth = 100};
    char *out[2] = {NULL, NULL};
    size_t len[2] = {0, 0};
    int rc[2];
    kerr err[2];
    for (int k = 0; k < 2; k++) {
        kerr_clear(&err[k]);
        rc[k] = ct_model_render(&model, req, &opt, &out[k], &len[k], &err[k]);
        if (rc[k] == CT_RAISED) { /* the message is the output */
            FZ_CHECK(out[k] && strlen(out[k]) == len[k], "raise_exception's message");
            fz_check_err(&err[k]);
        } else if (rc[k] != 0) {
            FZ_CHECK(rc[k] == -1, "status %d", rc[k]);
            FZ_CHECK(out[k] == NULL, "an error left an output");
            fz_check_err(&err[k]);
            const char *m = kerr_msg(&err[k]);
            FZ_CHECK(!strncmp(m, "chat template line ", 19) || !strncmp(m, "chat request: ", 14),
                     "a render error that names no template line: %s", m);
        } else {
            FZ_CHECK(out[k] && memchr(out[k], 0, len[k] + 1) != NULL, "output not NUL-terminated");
            FZ_CHECK(len[k] <= opt.max_output, "output of %zu bytes over the limit", len[k]);
            FZ_CHECK(fz_utf8_valid(out[k], len[k]), "output is not valid UTF-8");
        }
    }
    FZ_CHECK(rc[0] == rc[1], "two renders disagree: %d then %d", rc[0], rc[1]);
    if (rc[0] == 0 || rc[0] == CT_RAISED)
        FZ_CHECK(len[0] == len[1] && memcmp(out[0], out[1], len[0]) == 0, "two renders differ");
    else
        FZ_CHECK(strcmp(kerr_msg(&err[0]), kerr_msg(&err[1])) == 0, "two errors differ: %s / %s",
                 kerr_msg(&err[0]), kerr_msg(&err[1]));
    free(out[0]);
    free(out[1]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t tlen = nul ? (size_t)(nul - data) : size;
    kerr err;
    kerr_clear(&err);
    chat_template *t = ct_parse((const char *)data, tlen, &err);
    if (!t) {
        fz_check_err(&err);
        return 0;
    }
    model.tmpl = t;
    if (nul) {
        json_error_t je;
        json_t *req = json_loadb((const char *)nul + 1, size - tlen - 1, 0, &je);
        if (req) {
            render_twice(req);
            json_decref(req);
        }
    } else {
        for (size_t i = 0; i < ARRAY_LEN(requests); i++) {
            json_error_t je;
            json_t *req = json_loads(requests[i], 0, &je);
            FZ_CHECK(req != NULL, "fixed request %zu: %s", i, je.text);
            render_twice(req);
            json_decref(req);
        }
    }
    model.tmpl = NULL;
    ct_free(t);
    return 0;
}
