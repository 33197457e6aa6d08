/* cmd_chat_template — `kiln chat-template DIR`: render a model's chat template for a request read
 * on stdin, exactly as transformers' apply_chat_template(..., tokenize=False) would.
 *
 * stdin: one JSON value, {"messages": [...], "tools": [...], "documents": [...],
 * "add_generation_prompt": true, ...extra variables} or a bare array of messages
 * (add_generation_prompt defaults to true). stdout: the rendered prompt and nothing else (no
 * newline added). A template error (raise_exception's message included) goes to stderr, exit 1.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tokenizer/chat_template.h"
#include "cli.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kiln chat-template DIR [--template FILE] [--now 'YYYY-MM-DD HH:MM:SS']\n"
            "\n"
            "Renders DIR's chat template (DIR is an HF model folder or a kilnc output folder:\n"
            "chat_template.jinja, else tokenizer_config.json's chat_template) for the request on\n"
            "stdin, as transformers' apply_chat_template(..., tokenize=False) does, and prints\n"
            "the prompt exactly (no newline added).\n"
            "\n"
            "stdin: {\"messages\": [...], \"tools\": [...], \"documents\": [...],\n"
            "        \"add_generation_prompt\": true, ...any extra template variables}\n"
            "       or a bare array of messages. add_generation_prompt defaults to true;\n"
            "       bos_token, eos_token... come from DIR's tokenizer_config.json.\n"
            "\n"
            "  --template FILE  render FILE instead of DIR's template (DIR still gives the\n"
            "                   special tokens)\n"
            "  --now TIME       the local time strftime_now() sees (default: now)\n"
            "\n"
            "A template error, raise_exception() included, is printed on stderr; exit status 1.\n");
}

static char *read_stdin(size_t *len)
{
    size_t cap = 65536, n = 0;
    char *buf = xmalloc(cap);
    size_t r;
    while ((r = fread(buf + n, 1, cap - n, stdin)) > 0) {
        n += r;
        if (n == cap) {
            cap *= 2;
            buf = xrealloc(buf, cap);
        }
    }
    *len = n;
    return buf;
}

int cmd_chat_template(int argc, char **argv)
{
    const char *dir = NULL, *tfile = NULL, *now_s = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if ((!strcmp(argv[i], "--template") || !strcmp(argv[i], "--now")) && i + 1 < argc) {
            *(!strcmp(argv[i], "--now") ? &now_s : &tfile) = argv[i + 1];
            i++;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return util_usage_error("kiln chat-template", "unknown option or missing value '%s'",
                                    argv[i]);
        } else if (!dir)
            dir = argv[i];
        else {
            return util_usage_error("kiln chat-template", "one DIR expected, got '%s' and '%s'",
                                    dir, argv[i]);
        }
    }
    if (!dir)
        return util_usage_error("kiln chat-template", "missing DIR (a model folder)");
    struct tm now;
    ct_options opt = {0};
    if (now_s) {
        memset(&now, 0, sizeof now);
        const char *end = strptime(now_s, "%Y-%m-%d %H:%M:%S", &now);
        if (!end || *end) {
            return util_usage_error("kiln chat-template",
                                    "--now '%s': expected 'YYYY-MM-DD HH:MM:SS'", now_s);
        }
        now.tm_isdst = -1;
        time_t t = mktime(&now); /* fills in the weekday and day of the year */
        localtime_r(&t, &now);
        opt.now = &now;
    }
    if (!util_is_dir(dir)) {
        fprintf(stderr, "kiln chat-template: error: %s: not a folder (expected a model folder or "
                        "a kilnc output folder)\n", dir);
        return 1;
    }
    kerr err;
    kerr_clear(&err);
    ct_model m;
    if (tfile) {
        /* the special tokens of DIR, the template of FILE */
        memset(&m, 0, sizeof m);
        size_t len;
        char *src = util_read_file(tfile, &len, &err);
        chat_template *t = src ? ct_parse(src, len, &err) : NULL;
        int read_ok = src != NULL;
        free(src);
        if (!t) { /* util_read_file's message names the file already */
            fprintf(stderr, "kiln chat-template: error: %s%s%s\n", read_ok ? tfile : "",
                    read_ok ? ": " : "", kerr_msg(&err));
            return 1;
        }
        ct_model dm;
        kerr e2;
        kerr_clear(&e2);
        if (ct_model_load(dir, &dm, &e2) == 0) {
            m.special = json_incref(dm.special);
            ct_model_free(&dm);
        } else
            m.special = json_object(); /* DIR without a template of its own: no special tokens */
        m.tmpl = t;
        m.origin = xstrdup(tfile);
    } else if (ct_model_load(dir, &m, &err)) {
        fprintf(stderr, "kiln chat-template: error: %s\n", kerr_msg(&err));
        return 1;
    }
    size_t len;
    char *in = read_stdin(&len);
    json_error_t je;
    json_t *req = json_loadb(in, len, 0, &je);
    free(in);
    int rc = 1;
    if (!req)
        fprintf(stderr, "kiln chat-template: error: stdin:%d:%d: %s\n", je.line, je.column, je.text);
    else {
        char *out;
        size_t olen;
        int r = ct_model_render(&m, req, &opt, &out, &olen, &err);
        if (r == 0) {
            fwrite(out, 1, olen, stdout);
            free(out);
            rc = fflush(stdout) == 0 ? 0 : 1;
        } else if (r == CT_RAISED) { /* the template's own message, exactly */
            fprintf(stderr, "kiln chat-template: error: %s: raise_exception: %s\n", m.origin, out);
            free(out);
        } else
            fprintf(stderr, "kiln chat-template: error: %s: %s\n", m.origin, kerr_msg(&err));
        json_decref(req);
    }
    ct_model_free(&m);
    return rc;
}
