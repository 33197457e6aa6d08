/* test_tp_runtime — what the tensor-parallel runtime checks before it touches a GPU, proved
 * without one (issue 14 item 5):
 *
 *   - NCCL is loaded by dlopen: a missing library is one message naming it; NCCL_NVLS_ENABLE is
 *     set to 0 before NCCL can read it, unless the user set it; the real libnccl.so.2 of the build
 *     machine loads and reports its version;
 *   - `kiln run` on an artifact compiled with kilnc compile --tp 2 refuses, each with a message
 *     naming the file and what to do: --tp of another N (naming the artifact's N and the compile
 *     command), a missing rank shard, a shard of another rank, a shard of another N; and those
 *     checks come before CUDA: on a machine without a driver, a sound tp-2 artifact gets as far
 *     as "no NVIDIA driver", a broken one never does;
 *   - --tp on a checkpoint folder (the CPU backend) is refused, and kiln serve takes --tp too.
 *
 * The binaries come from $KILNC and $KILN (make check sets them); the artifacts are compiled
 * from tests/fixtures/llama for sm_80 only (the kernels come from kilnc's compile cache after
 * the first run).
 */
#include "testutil.h"

#include "comm.h"

#define FIX "tests/fixtures/llama"

static const char *KILNC, *KILN;
static char *tmp;
static char tp2[512], tp1[512];

/* ---------------------------------------------------------------- NCCL */

static void test_nccl_missing(void **state)
{
    (void)state;
    unsetenv("NCCL_NVLS_ENABLE");
    kncl n;
    kerr err;
    kerr_clear(&err);
    assert_int_equal(kncl_load(&n, "libkiln-test-no-such-nccl.so.2", "out/m/model.kiln (tp 2)",
                               &err),
                     -1);
    const char *msg = kerr_msg(&err);
    assert_contains(msg, "out/m/model.kiln (tp 2) needs NCCL");
    assert_contains(msg, "libkiln-test-no-such-nccl.so.2 cannot be loaded");
    assert_contains(msg, "install NCCL");
    assert_null(n.lib);
    /* set before the library was even looked for */
    assert_non_null(getenv("NCCL_NVLS_ENABLE"));
    assert_string_equal(getenv("NCCL_NVLS_ENABLE"), "0");
    /* a value the user chose stays */
    setenv("NCCL_NVLS_ENABLE", "1", 1);
    kerr_clear(&err);
    assert_int_equal(kncl_load(&n, "libkiln-test-no-such-nccl.so.2", "x", &err), -1);
    assert_string_equal(getenv("NCCL_NVLS_ENABLE"), "1");
    unsetenv("NCCL_NVLS_ENABLE");
}

/* The build machine has NCCL (GPU.md): it loads without a GPU and says which version it is. */
static void test_nccl_loads(void **state)
{
    (void)state;
    kncl n;
    kerr err;
    kerr_clear(&err);
    if (kncl_load(&n, KNCCL_LIB, "test_tp_runtime", &err))
        fail_msg("%s", kerr_msg(&err));
    assert_true(n.version >= 21800);
    char b[32];
    kncl_version_str(&n, b, sizeof b);
    assert_int_equal(b[0], '2');
    assert_int_equal(b[1], '.');
    /* an error code's message names the call and NCCL's words for it */
    kerr_clear(&err);
    assert_int_equal(kncl_fail(&n, ncclInvalidArgument, "ncclAllReduce(...)", "f.c", 7, &err), -1);
    assert_contains(kerr_msg(&err), "f.c:7: ncclAllReduce(...) failed: ");
    assert_contains(kerr_msg(&err), "(error 4)");
    kncl_unload(&n);
    assert_null(n.lib);
}

/* ---------------------------------------------------------------- the loader */

static tu_run kiln(const char *const *args) { return tu_run_bin(tmp, KILN, args); }

static void compile(const char *out, const char *tp)
{
    const char *with[] = {"compile", FIX, "-o", out, "--sm", "80", "--tp", tp, NULL};
    const char *without[] = {"compile", FIX, "-o", out, "--sm", "80", NULL};
    tu_run r = tu_run_bin(tmp, KILNC, tp ? with : without);
    if (r.code != 0)
        fail_msg("kilnc compile failed (%d): %s", r.code, r.err);
    tu_run_free(&r);
}

static void copy_file(const char *from, const char *to)
{
    size_t len;
    char *data = tu_read(from, &len);
    tu_write_bytes(to, data, len);
    free(data);
}

/* A broken copy of the tp-2 artifact: model.kiln and both shards, then `edit`. */
static char *broken(const char *name)
{
    char *dir = tu_path(tmp, name), *shards = util_path_join(dir, "shards");
    tu_mkdir(dir);
    tu_mkdir(shards);
    const char *files[] = {"model.kiln", "shards/rank0-of-2.safetensors",
                           "shards/rank1-of-2.safetensors"};
    for (size_t i = 0; i < ARRAY_LEN(files); i++) {
        char *a = util_path_join(tp2, files[i]), *b = util_path_join(dir, files[i]);
        copy_file(a, b);
        free(a);
        free(b);
    }
    free(shards);
    return dir;
}

/* Without a driver, a sound artifact fails at libcuda; with one, it runs. Either way, every
 * check that needs no GPU has passed. */
static void assert_reached_cuda(const tu_run *r)
{
    if (strstr(r->err, "no NVIDIA driver") || strstr(r->err, "no CUDA GPU")) {
        assert_int_equal(r->code, 1);
    } else {
        print_message("a GPU is present: kiln run exit %d\n", r->code);
        assert_not_contains(r->err, "shard");
    }
}

static void test_tp_mismatch(void **state)
{
    (void)state;
    /* --tp of another N, both ways, before anything else is read */
    const char *a[] = {"run", tp2, "--ids", "1,2", "--tp", "3", NULL};
    tu_run r = kiln(a);
    assert_int_equal(r.code, 1);
    assert_contains(r.err, "model.kiln was compiled for tensor parallelism over 2 GPUs (tp 2), "
                           "not --tp 3");
    assert_contains(r.err, "run it with --tp 2 (or without --tp)");
    assert_contains(r.err, "kilnc compile MODEL_DIR -o OUT --tp 3");
    tu_run_free(&r);
    const char *b[] = {"run", tp1, "--ids", "1,2", "--tp", "2", NULL};
    r = kiln(b);
    assert_int_equal(r.code, 1);
    assert_contains(r.err, "over 1 GPU (tp 1), not --tp 2");
    assert_contains(r.err, "kilnc compile MODEL_DIR -o OUT --tp 2");
    tu_run_free(&r);
    /* the right N, given or not, gets as far as the GPU */
    const char *c[] = {"run", tp2, "--ids", "1,2", "--max-new", "1", "--tp", "2", NULL};
    r = kiln(c);
    assert_reached_cuda(&r);
    tu_run_free(&r);
    const char *d[] = {"run", tp2, "--ids", "1,2", "--max-new", "1", NULL};
    r = kiln(d);
    assert_reached_cuda(&r);
    tu_run_free(&r);
    const char *e[] = {"run", tp1, "--ids", "1,2", "--max-new", "1", "--tp", "1", NULL};
    r = kiln(e);
    assert_reached_cuda(&r);
    tu_run_free(&r);
    /* out of range, and on the CPU backend */
    const char *f[] = {"run", tp2, "--ids", "1", "--tp", "0", NULL};
    r = kiln(f);
    assert_int_equal(r.code, 2);
    assert_contains(r.err, "--tp");
    tu_run_free(&r);
    const char *g[] = {"run", FIX, "--ids", "1", "--tp", "2", NULL};
    r = kiln(g);
    assert_int_equal(r.code, 1);
    assert_contains(r.err, "--tp applies to a compiled model only");
    tu_run_free(&r);
    const char *h[] = {"serve", tp2, "--port", "0", "--tp", "3", NULL};
    r = kiln(h);
    assert_int_not_equal(r.code, 0);
    assert_contains(r.err, "not --tp 3");
    tu_run_free(&r);
}

static void test_rank_shards(void **state)
{
    (void)state;
    /* rank 1's shard missing */
    char *dir = broken("missing");
    char *p = util_path_join(dir, "shards/rank1-of-2.safetensors");
    assert_int_equal(unlink(p), 0);
    const char *a[] = {"run", dir, "--ids", "1,2", NULL};
    tu_run r = kiln(a);
    assert_int_equal(r.code, 1);
    assert_contains(r.err, "shards/rank1-of-2.safetensors");
    assert_contains(r.err, "rank 1 of 2");
    assert_not_contains(r.err, "NVIDIA");
    tu_run_free(&r);
    /* rank 0's shard where rank 1's belongs */
    char *p0 = util_path_join(dir, "shards/rank0-of-2.safetensors");
    copy_file(p0, p);
    r = kiln(a);
    assert_int_equal(r.code, 1);
    assert_contains(r.err, "rank1-of-2.safetensors: shard id mismatch");
    assert_contains(r.err, "for rank 1 of 2");
    assert_not_contains(r.err, "NVIDIA");
    tu_run_free(&r);
    /* the shard of another N (the tp-1 compile's) as rank 0's */
    char *one = util_path_join(tp1, "shards/rank0-of-1.safetensors");
    copy_file(one, p0);
    r = kiln(a);
    assert_int_equal(r.code, 1);
    assert_contains(r.err, "rank0-of-2.safetensors: shard id mismatch");
    assert_contains(r.err, "recompile");
    assert_not_contains(r.err, "NVIDIA");
    tu_run_free(&r);
    free(one);
    free(p0);
    free(p);
    free(dir);
}

static int setup(void **state)
{
    (void)state;
    KILNC = getenv("KILNC");
    KILN = getenv("KILN");
    if (!KILNC || !KILN) {
        fprintf(stderr, "KILNC and KILN must name the binaries (run through make check)\n");
        return -1;
    }
    tmp = tu_tmpdir();
    snprintf(tp2, sizeof tp2, "%s/tp2", tmp);
    snprintf(tp1, sizeof tp1, "%s/tp1", tmp);
    compile(tp2, "2");
    compile(tp1, NULL);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tu_rmrf(tmp);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nccl_missing),
        cmocka_unit_test(test_nccl_loads),
        cmocka_unit_test(test_tp_mismatch),
        cmocka_unit_test(test_rank_shards),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
