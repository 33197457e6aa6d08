/* test_launch — how the runtime launches kernels, checked without a GPU:
 *
 *   - programmatic dependent launch (kernels/common.cuh, runtime/kcuda.c) is safe only if every
 *     kernel waits for its predecessor before it touches memory: every kernel template in the
 *     .cuh files of templates/ (each function whose first parameter is `const kiln_step st` by
 *     value, as templates/README.md's contract says, the GEMM templates, whose first parameter is
 *     their rows `int M`, and the collective allreduce_p2p) must
 *     begin with KILN_PDL_ENTER(); a template added without it fails here, naming the file and
 *     function (gemv_stream and gemv_stream_rope begin with KILN_PDL_TRIGGER() and call
 *     KILN_PDL_WAIT(), in the stream_detail::body they share, before it reads x; attn_decode
 *     and gemm90_skinny begin with it too and wait in their bodies);
 *   - KILN_PDL: on from sm_90, off below it or with KILN_PDL=0, any other value refused by name;
 *   - KILN_WARMUP and KILN_KERNEL_TIMES: anything but 0 or 1 is refused by km_load before it
 *     touches anything.
 * tests/gpu/ktest_pdl.c checks on the GPU that a chain of dependent kernels stays exact with PDL.
 */
#include "testutil.h"

#include <ctype.h>
#include <dirent.h>

#include "engine.h"
#include "kcuda.h"

/* Checks every kernel template of one file; returns how many it found, and adds to *bad. */
static int check_file(const char *path, char *names, size_t cap, int *bad)
{
    kerr e;
    kerr_clear(&e);
    size_t len = 0;
    char *s = util_read_file(path, &len, &e);
    assert_non_null(s);
    int found = 0;
    for (char *p = strstr(s, "__device__"); p; p = strstr(p + 1, "__device__")) {
        char *open = strchr(p, '(');
        char *semi = strchr(p, ';');
        if (!open || (semi && semi < open))
            continue;
        char *q = open; /* the function's name ends just before its '(' */
        while (q > p && isspace((unsigned char)q[-1]))
            q--;
        char *name_end = q;
        while (q > p && (isalnum((unsigned char)q[-1]) || q[-1] == '_'))
            q--;
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)(name_end - q), q);
        const char *args = open + 1;
        while (isspace((unsigned char)*args))
            args++;
        int by_value = !strncmp(args, "const kiln_step st", 18) &&
                       (args[18] == ',' || args[18] == ')');
        /* the GEMM templates take their rows explicitly, first (gemm, gemm90, gemm90_skinny) */
        int gemm = !strncmp(args, "int M,", 6);
        if (!by_value && !gemm && strcmp(name, "allreduce_p2p") != 0)
            continue;
        char *body = strchr(open, '{');
        assert_non_null(body);
        body++;
        while (isspace((unsigned char)*body))
            body++;
        found++;
        size_t nl = strlen(names);
        snprintf(names + nl, cap - nl, " %s", name);
        /* gemv_stream, gemv_stream_rope, attn_decode and gemm90_skinny alone trigger first and
         * wait later (kernels/common.cuh says when that is safe); each must still wait, in its
         * body or in the stream_detail::body it calls, before that body's first use of x */
        int early = (!strncmp(name, "gemv_stream", 11) || !strcmp(name, "attn_decode") ||
                     !strcmp(name, "gemm90_skinny")) &&
                    !strncmp(body, "KILN_PDL_TRIGGER();", 19);
        char *end = strstr(body, "\n}\n"), *wait = strstr(body, "KILN_PDL_WAIT();");
        char *call = strstr(body, "stream_detail::body<");
        char *def = strstr(s, " body(const kiln_step &st, const DT *x");
        if (early && call && (!end || call < end) && def) {
            char *dbody = strchr(def, '{'), *dend = dbody ? strstr(dbody, "\n}\n") : NULL;
            wait = dbody ? strstr(dbody, "KILN_PDL_WAIT();") : NULL;
            end = dend;
        }
        if (early && (!wait || (end && wait > end))) {
            fprintf(stderr, "%s: %s triggers first but never calls KILN_PDL_WAIT();\n", path, name);
            (*bad)++;
        } else if (!early && strncmp(body, "KILN_PDL_ENTER();", 17) != 0) {
            fprintf(stderr, "%s: kernel template %s does not begin with KILN_PDL_ENTER(); "
                            "(kernels/common.cuh says why it must)\n",
                    path, name);
            (*bad)++;
        }
    }
    free(s);
    return found;
}

static void test_templates_wait_first(void **state)
{
    (void)state;
    DIR *d = opendir("templates");
    assert_non_null(d);
    char names[4096] = "";
    int found = 0, bad = 0, files = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t n = strlen(de->d_name);
        if (n < 5 || strcmp(de->d_name + n - 4, ".cuh") != 0)
            continue;
        char *path = util_path_join("templates", de->d_name);
        found += check_file(path, names, sizeof names, &bad);
        files++;
        free(path);
    }
    closedir(d);
    /* the scan itself must see the kernels it is meant to check */
    assert_true(files >= 6);
    assert_true(found >= 20);
    static const char *const must[] = {" gemv",         " gemv_stream", " rms_norm",
                                       " rope_kv",      " attn_decode", " attn_prefill",
                                       " moe_route",    " sample",      " allreduce_p2p",
                                       " embed",        " gemm90 ",     " gemm90_skinny"};
    for (size_t i = 0; i < ARRAY_LEN(must); i++)
        assert_contains(names, must[i]);
    assert_int_equal(bad, 0);
}

static void test_pdl_switch(void **state)
{
    (void)state;
    kerr e;
    int pdl = -1;
    unsetenv("KILN_PDL");
    kerr_clear(&e);
    assert_int_equal(kcuda_pdl_wanted(9, &pdl, &e), 0);
    assert_int_equal(pdl, 1);
    assert_int_equal(kcuda_pdl_wanted(10, &pdl, &e), 0);
    assert_int_equal(pdl, 1);
    assert_int_equal(kcuda_pdl_wanted(8, &pdl, &e), 0);
    assert_int_equal(pdl, 0);
    setenv("KILN_PDL", "0", 1);
    assert_int_equal(kcuda_pdl_wanted(9, &pdl, &e), 0);
    assert_int_equal(pdl, 0);
    setenv("KILN_PDL", "1", 1);
    assert_int_equal(kcuda_pdl_wanted(9, &pdl, &e), 0);
    assert_int_equal(pdl, 1);
    setenv("KILN_PDL", "yes", 1);
    assert_int_equal(kcuda_pdl_wanted(9, &pdl, &e), -1);
    assert_contains(kerr_msg(&e), "KILN_PDL=yes: expected 0");
    unsetenv("KILN_PDL");
}

static void test_warmup_switch(void **state)
{
    (void)state;
    kerr e;
    kerr_clear(&e);
    km_opts o = {0};
    setenv("KILN_WARMUP", "2", 1);
    assert_null(km_load("tests/fixtures/llama", &o, &e));
    assert_contains(kerr_msg(&e), "KILN_WARMUP=2: expected 0");
    unsetenv("KILN_WARMUP");
    kerr_clear(&e);
    setenv("KILN_KERNEL_TIMES", "on", 1);
    assert_null(km_load("tests/fixtures/llama", &o, &e));
    assert_contains(kerr_msg(&e), "KILN_KERNEL_TIMES=on: expected 0");
    unsetenv("KILN_KERNEL_TIMES");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_templates_wait_first),
        cmocka_unit_test(test_pdl_switch),
        cmocka_unit_test(test_warmup_switch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
