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
 *   - --tp on a checkpoint folder (the CPU backend) is refused, and kiln serve takes --tp too;
 *   - several hosts: the rendezvous over loopback (three nodes get node 0's NCCL id and keep
 *     their links; a node with another artifact is refused on both sides; timeouts and a bad
 *     address are messages), and --nnodes/--node-rank/--rendezvous checked before CUDA.
 *
 * The binaries come from $KILNC and $KILN (make check sets them); the artifacts are compiled
 * from tests/fixtures/llama for sm_80 only (the kernels come from kilnc's compile cache after
 * the first run).
 */
#include "testutil.h"

#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>

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

/* ---------------------------------------------------------------- the rendezvous */

/* A TCP port free a moment ago on loopback. */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t n = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) ||
        getsockname(fd, (struct sockaddr *)&a, &n))
        tu_die("bind", "127.0.0.1:0");
    close(fd);
    return ntohs(a.sin_port);
}

typedef struct node {
    char addr[64];
    int nnodes, node_rank, timeout, rc;
    uint64_t key;
    ncclUniqueId id;
    krdv r;
    kerr err;
} node;

/* A node other than 0: joins, sends its rank over the link, and expects rank * 10 back. */
static void *follower(void *p)
{
    node *n = p;
    kerr_clear(&n->err);
    n->rc = krdv_open(&n->r, n->addr, n->nnodes, n->node_rank, n->key, &n->id, n->timeout,
                      &n->err);
    if (n->rc)
        return NULL;
    int64_t v = n->node_rank, back = 0;
    n->rc = krdv_send(&n->r, 0, &v, sizeof v, &n->err) ||
            krdv_recv(&n->r, 0, &back, sizeof back, &n->err) || back != v * 10;
    krdv_close(&n->r);
    return NULL;
}

static void test_rendezvous(void **state)
{
    (void)state;
    node nodes[3];
    memset(nodes, 0, sizeof nodes);
    int port = free_port();
    for (int i = 0; i < 3; i++) {
        snprintf(nodes[i].addr, sizeof nodes[i].addr, "127.0.0.1:%d", port);
        nodes[i].nnodes = 3;
        nodes[i].node_rank = i;
        nodes[i].timeout = 20;
        nodes[i].key = 0x1234abcd;
    }
    for (int i = 0; i < NCCL_UNIQUE_ID_BYTES; i++)
        nodes[0].id.internal[i] = (char)(i * 7 + 1);
    pthread_t t[3];
    /* the others start first: they retry until node 0 listens */
    for (int i = 2; i >= 1; i--)
        assert_int_equal(pthread_create(&t[i], NULL, follower, &nodes[i]), 0);
    kerr err;
    kerr_clear(&err);
    krdv r0;
    if (krdv_open(&r0, nodes[0].addr, 3, 0, 0x1234abcd, &nodes[0].id, 20, &err))
        fail_msg("%s", kerr_msg(&err));
    for (int i = 1; i <= 2; i++) { /* the links are node by node, whatever the join order */
        int64_t v;
        if (krdv_recv(&r0, i, &v, sizeof v, &err))
            fail_msg("%s", kerr_msg(&err));
        assert_int_equal(v, i);
        v *= 10;
        if (krdv_send(&r0, i, &v, sizeof v, &err))
            fail_msg("%s", kerr_msg(&err));
    }
    for (int i = 1; i <= 2; i++) {
        pthread_join(t[i], NULL);
        if (nodes[i].rc)
            fail_msg("node %d: %s", i, kerr_msg(&nodes[i].err));
        assert_memory_equal(&nodes[i].id, &nodes[0].id, sizeof(ncclUniqueId));
    }
    /* the others are gone: node 0's link says so */
    int64_t v;
    kerr_clear(&err);
    assert_int_equal(krdv_recv(&r0, 1, &v, sizeof v, &err), -1);
    assert_contains(kerr_msg(&err), "node 0: the link to node 1 broke");
    krdv_close(&r0);
}

static void test_rendezvous_refusals(void **state)
{
    (void)state;
    /* another artifact: refused on both sides */
    node n1;
    memset(&n1, 0, sizeof n1);
    int port = free_port();
    snprintf(n1.addr, sizeof n1.addr, "127.0.0.1:%d", port);
    n1.nnodes = 2;
    n1.node_rank = 1;
    n1.timeout = 20;
    n1.key = 2;
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, follower, &n1), 0);
    kerr err;
    kerr_clear(&err);
    krdv r0;
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    assert_int_equal(krdv_open(&r0, n1.addr, 2, 0, 1, &id, 20, &err), -1);
    pthread_join(t, NULL);
    assert_contains(kerr_msg(&err), "node 0: node 1 was refused at the rendezvous (it loaded "
                                    "another artifact)");
    assert_int_not_equal(n1.rc, 0);
    assert_contains(kerr_msg(&n1.err), "refused this node: it runs another artifact");
    /* nobody comes, nobody listens */
    kerr_clear(&err);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", free_port());
    assert_int_equal(krdv_open(&r0, addr, 2, 0, 1, &id, 1, &err), -1);
    assert_contains(kerr_msg(&err), "1 of 2 nodes joined the rendezvous");
    kerr_clear(&err);
    assert_int_equal(krdv_open(&r0, addr, 2, 1, 1, &id, 1, &err), -1);
    assert_contains(kerr_msg(&err), "node 1: cannot reach node 0 at 127.0.0.1:");
    assert_contains(kerr_msg(&err), "start kiln with --node-rank 0 there");
    /* not HOST:PORT */
    kerr_clear(&err);
    assert_int_equal(krdv_open(&r0, "node0", 2, 1, 1, &id, 1, &err), -1);
    assert_contains(kerr_msg(&err), "--rendezvous 'node0': expected HOST:PORT");
    assert_null(r0.fd);
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

static void test_nodes_options(void **state)
{
    (void)state;
    struct {
        const char *args[12], *want;
    } rows[] = {
        {{"run", tp2, "--ids", "1", "--nnodes", "2", NULL}, "--nnodes 2 needs --rendezvous"},
        {{"run", tp2, "--ids", "1", "--nnodes", "3", "--rendezvous", "h:1", NULL},
         "cannot be split evenly over --nnodes 3"},
        {{"run", tp2, "--ids", "1", "--rendezvous", "h:1", NULL}, "give --nnodes N"},
        {{"run", tp2, "--node-rank", "1", NULL}, "--node-rank 1: expected 0 to 0"},
        {{"run", FIX, "--ids", "1", "--nnodes", "2", NULL}, "--nnodes applies to a compiled"},
        {{"run", FIX, "--node-rank", "1", "--nnodes", "2", NULL}, "needs a compiled model"},
    };
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
        tu_run r = kiln(rows[i].args);
        assert_int_equal(r.code, 1);
        assert_contains(r.err, rows[i].want);
        tu_run_free(&r);
    }
    /* node 1 opens only its own rank's shard: rank 0's may be absent there */
    char *dir = broken("node1");
    char *p0 = util_path_join(dir, "shards/rank0-of-2.safetensors");
    assert_int_equal(unlink(p0), 0);
    const char *a[] = {"run", dir, "--nnodes", "2", "--node-rank", "1", "--rendezvous",
                       "127.0.0.1:1", NULL};
    tu_run r = kiln(a);
    assert_reached_cuda(&r);
    tu_run_free(&r);
    free(p0);
    free(dir);
}

/* KILN_ALLREDUCE (engine.c: which all-reduce runs) is checked before CUDA; its values pass. */
static void test_allreduce_env(void **state)
{
    (void)state;
    const char *a[] = {"run", tp2, "--ids", "1,2", "--max-new", "1", NULL};
    setenv("KILN_ALLREDUCE", "fast", 1);
    tu_run r = kiln(a);
    assert_int_equal(r.code, 1);
    assert_contains(r.err, "KILN_ALLREDUCE=fast: expected nccl");
    assert_not_contains(r.err, "NVIDIA");
    tu_run_free(&r);
    const char *ok[] = {"nccl", "p2p", "auto"};
    for (size_t i = 0; i < ARRAY_LEN(ok); i++) {
        setenv("KILN_ALLREDUCE", ok[i], 1);
        r = kiln(a);
        assert_reached_cuda(&r);
        tu_run_free(&r);
    }
    unsetenv("KILN_ALLREDUCE");
}

static int setup(void **state)
{
    (void)state;
    KILNC = tu_binary("KILNC", "test_tp_runtime");
    KILN = tu_binary("KILN", "test_tp_runtime");
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
        cmocka_unit_test(test_rendezvous),
        cmocka_unit_test(test_rendezvous_refusals),
        cmocka_unit_test(test_nodes_options),
        cmocka_unit_test(test_allreduce_env),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
