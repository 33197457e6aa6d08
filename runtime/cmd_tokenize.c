/* cmd_tokenize — `kiln tokenize PATH`: encode or decode JSON lines with a tokenizer.json.
 *
 * Encode (default): each stdin line is a JSON string; each stdout line is a JSON array of ids,
 * with the special tokens HF's encode adds by default (--no-special to leave them out).
 * Decode (--decode): each line is a JSON array of ids; each output line is a JSON string, special
 * tokens skipped as HF's decode(..., skip_special_tokens=True) (--keep-special keeps them).
 * A bad line (not JSON of the right kind, or longer than MAX_LINE) prints `null`, keeps going
 * (one output line per input line, so callers stay in step), reports the line number on stderr,
 * and makes the exit status 1. Other tools call this
 * interface: keep it stable.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "tokenizer/tokenizer.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kiln tokenize PATH [--decode] [--no-special | --keep-special]\n"
            "\n"
            "PATH is a tokenizer.json, or a folder holding one (a compiled model or an HF\n"
            "checkpoint; its tokenizer_config.json is read too).\n"
            "\n"
            "Reads JSON lines on stdin and writes one JSON line per input line:\n"
            "  encode (default)  \"text\"      -> [ids...]   special tokens added as HF's encode does\n"
            "  --decode          [ids...]    -> \"text\"     special tokens skipped, as HF's\n"
            "                                               decode(ids, skip_special_tokens=True)\n"
            "  --no-special      encode without the post-processor's special tokens\n"
            "  --keep-special    decode with special tokens kept\n"
            "\n"
            "A line that is not valid input gives `null`, an error on stderr, and exit status 1.\n");
}

#define PROG "kiln tokenize"
/* A line is one text to encode: longer ones are refused (with the line number), not buffered
 * without end. 64 MiB is a book; split anything longer into several lines. */
#define MAX_LINE ((size_t)64 << 20)

/* getline with a bound: a line longer than `max` bytes is read to its end, only its first `max`
 * bytes are kept, and *over is set. Returns the length kept, or -1 at the end of the input. */
static ssize_t read_line(FILE *f, char **buf, size_t *cap, size_t max, int *over)
{
    size_t n = 0;
    int c = EOF;
    *over = 0;
    while ((c = getc_unlocked(f)) != EOF) {
        if (n < max) {
            if (n + 2 > *cap) {
                *cap = *cap ? *cap * 2 : 4096;
                if (*cap > max + 2)
                    *cap = max + 2;
                *buf = xrealloc(*buf, *cap);
            }
            (*buf)[n++] = (char)c;
        } else {
            *over = 1;
        }
        if (c == '\n')
            break;
    }
    if (c == EOF && n == 0 && !*over)
        return -1;
    (*buf)[n] = 0;
    return (ssize_t)n;
}

int cmd_tokenize(int argc, char **argv)
{
    const char *path = NULL;
    int decode = 0, special = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--decode") == 0)
            decode = 1;
        else if (strcmp(argv[i], "--no-special") == 0 || strcmp(argv[i], "--keep-special") == 0)
            special = strcmp(argv[i], "--keep-special") == 0 ? 2 : 0;
        else if (argv[i][0] == '-' && argv[i][1])
            return util_usage_error(PROG, "unknown option '%s'", argv[i]);
        else if (!path)
            path = argv[i];
        else
            return util_usage_error(PROG, "one PATH expected, got '%s' and '%s'", path, argv[i]);
    }
    if (!path)
        return util_usage_error(PROG, "missing PATH (a tokenizer.json, or a folder holding one)");
    kerr *err = xcalloc(1, sizeof *err);
    tokenizer *t = tok_load(path, err);
    if (!t) {
        kerr_print(PROG, err);
        free(err);
        return 1;
    }
    int status = 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    long lineno = 0;
    int over;
    while ((got = read_line(stdin, &line, &cap, MAX_LINE, &over)) >= 0) {
        lineno++;
        json_error_t je;
        json_t *in = over ? NULL
                          : json_loadb(line, (size_t)got, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
        const char *problem = NULL;
        char *out = NULL;
        kerr_clear(err);
        char why[256];
        if (over) {
            snprintf(why, sizeof why, "longer than %zu MiB; split the text into several lines",
                     MAX_LINE >> 20);
            problem = why;
        } else if (!in) {
            /* the usual newcomer's mistake is plain text: say what a line must be */
            size_t show = strcspn(line, "\r\n");
            snprintf(why, sizeof why, "%s (got %s%.*s%s; %s)",
                     decode ? "expected one JSON array of ids per line, like [1, 2, 3]"
                            : "expected one JSON string per line, like \"Hello world\" with the "
                              "quotes",
                     show ? "'" : "an empty line", show > 40 ? 40 : (int)show, line,
                     show > 40 ? "...'" : show ? "'" : "", *je.text ? je.text : "not JSON");
            problem = why;
        }
        else if (!decode) {
            if (!json_is_string(in))
                problem = "expected a JSON string";
            else {
                int32_t *ids;
                size_t n;
                if (tok_encode(t, json_string_value(in), json_string_length(in), special != 0, &ids,
                               &n, err) == 0) {
                    json_t *a = json_array();
                    for (size_t k = 0; k < n; k++)
                        json_array_append_new(a, json_integer(ids[k]));
                    out = json_dumps(a, JSON_COMPACT);
                    json_decref(a);
                    free(ids);
                } else
                    problem = kerr_msg(err);
            }
        } else {
            size_t n = json_is_array(in) ? json_array_size(in) : 0;
            int32_t *ids = xmalloc((n + 1) * sizeof *ids);
            if (!json_is_array(in))
                problem = "expected a JSON array of ids";
            for (size_t k = 0; !problem && k < n; k++) {
                json_t *v = json_array_get(in, k);
                if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                    json_integer_value(v) > INT32_MAX)
                    problem = "expected a JSON array of non-negative integer ids";
                else
                    ids[k] = (int32_t)json_integer_value(v);
            }
            char *text;
            size_t len;
            if (!problem) {
                if (tok_decode(t, ids, n, special != 2, &text, &len, err) == 0) {
                    json_t *s = json_stringn(text, len);
                    out = s ? json_dumps(s, JSON_ENCODE_ANY) : NULL;
                    json_decref(s);
                    free(text);
                    if (!out)
                        problem = "decoded text could not be written as JSON";
                } else
                    problem = kerr_msg(err);
            }
            free(ids);
        }
        if (problem) {
            fprintf(stderr, "%s: error: stdin line %ld: %s\n", PROG, lineno,
                    *problem ? problem : "failed without a message (a kiln bug: please report it)");
            status = 1;
        }
        fputs(out ? out : "null", stdout);
        fputc('\n', stdout);
        free(out);
        json_decref(in);
    }
    free(line);
    fflush(stdout);
    tok_free(t);
    free(err);
    return status;
}
