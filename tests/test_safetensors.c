/* test_safetensors — the strict safetensors reader and the writer (runtime/safetensors.c).
 *
 * Round trips through st_writer (every dtype the format defines, metadata, zero-sized and scalar
 * tensors, a fill callback), sharded sets through model.safetensors.index.json, and every kind of
 * bad file the reader must refuse with a message naming the file and the tensor or field. The
 * last two tests truncate and corrupt a valid file at every position: st_open must return NULL or
 * a set whose every pointer lies inside the file (ASan in `make SAN=1 check` catches any read
 * outside the mapping).
 */
#include "testutil.h"


static kerr E;         /* the error buffer of the current test */
static char *D;        /* the current test's temp folder */

static int setup(void **state)
{
    (void)state;
    kerr_clear(&E);
    D = tu_tmpdir();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tu_rmrf(D);
    D = NULL;
    return 0;
}

/* Writes a safetensors file by hand: 8-byte little-endian header length, header, data. */
static char *raw(const char *name, const char *header, const void *data, size_t dlen)
{
    char *p = tu_path(D, name);
    size_t hl = strlen(header);
    unsigned char *buf = xmalloc(8 + hl + dlen);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, header, hl);
    if (dlen)
        memcpy(buf + 8 + hl, data, dlen);
    tu_write_bytes(p, buf, 8 + hl + dlen);
    free(buf);
    return p;
}

static const unsigned char ZEROS[256];

/* st_open(path) must fail; the message must name the file. Returns the message. */
static const char *open_fails(const char *path)
{
    kerr_clear(&E);
    st_set *s = st_open(path, &E);
    if (s) {
        st_close(s);
        fail_msg("st_open(%s) succeeded; expected an error", path);
    }
    const char *m = kerr_msg(&E);
    assert_contains(m, path);
    return m;
}

/* A one-tensor file with this header entry for tensor "w", and `dlen` zero bytes of data. */
static const char *one_entry_fails(const char *entry, size_t dlen)
{
    char *h = xasprintf("{\"w\":%s}", entry);
    char *p = raw("bad.safetensors", h, ZEROS, dlen);
    const char *m = open_fails(p);
    assert_contains(m, "tensor 'w'");
    free(h);
    free(p);
    return m;
}

/* ---------------------------------------------------------------- writer round trips */

typedef struct fill_ctx {
    int calls;
    uint64_t asked;
} fill_ctx;

static int fill_pattern(void *ctx, void *buf, uint64_t nbytes, kerr *err)
{
    fill_ctx *c = ctx;
    c->calls++;
    c->asked += nbytes;
    for (uint64_t i = 0; i < nbytes; i++)
        ((unsigned char *)buf)[i] = (unsigned char)(i * 7 + 3);
    return 0;
}

static int fill_fails(void *ctx, void *buf, uint64_t nbytes, kerr *err)
{
    return kerr_add(err, "fill: the source tensor went away");
}

typedef struct prog {
    int calls;
    uint64_t done, total;
} prog;

static void progress(void *ctx, uint64_t done, uint64_t total)
{
    prog *p = ctx;
    assert_true(done >= p->done); /* monotonic */
    p->calls++;
    p->done = done;
    p->total = total;
}

static void test_roundtrip_every_dtype(void **state)
{
    (void)state;
    st_writer *w = st_writer_new();
    st_writer_meta(w, "format", "pt");
    st_writer_meta(w, "note", "hello");
    unsigned char *bufs[ST_NDTYPES];
    const int64_t shape[2] = {3, 2};
    /* Added smallest element first, so the writer's reordering (larger elements first, for
     * alignment) is exercised. */
    for (int d = ST_NDTYPES - 1; d >= 0; d--) {
        size_t n = 6 * st_dtype_size((st_dtype)d);
        bufs[d] = xmalloc(n);
        for (size_t i = 0; i < n; i++)
            bufs[d][i] = (unsigned char)(d * 31 + i);
        char name[32];
        snprintf(name, sizeof name, "t.%s", st_dtype_name((st_dtype)d));
        st_writer_add(w, name, (st_dtype)d, 2, shape, bufs[d]);
    }
    const int64_t zshape[2] = {0, 4}, fshape[1] = {5};
    st_writer_add(w, "empty", ST_F32, 2, zshape, NULL);
    float scalar = 2.5f;
    st_writer_add(w, "scalar", ST_F32, 0, NULL, &scalar);
    fill_ctx fc = {0};
    st_writer_add_fill(w, "filled", ST_F16, 1, fshape, fill_pattern, &fc);
    char *path = tu_path(D, "rt.safetensors");
    prog pr = {0};
    int rc = st_writer_write(w, path, progress, &pr, &E);
    assert_int_equal(rc, 0);
    assert_string_equal(kerr_msg(&E), "");
    st_writer_free(w);
    assert_int_equal(fc.calls, 1);
    assert_int_equal(fc.asked, 10);
    assert_true(pr.calls > 0);
    assert_true(pr.done == pr.total);
    char *tmp = xasprintf("%s.tmp", path);
    assert_false(util_is_file(tmp)); /* written under a temporary name, then renamed */
    free(tmp);

    st_set *s = st_open(path, &E);
    assert_non_null(s);
    assert_int_equal(s->n, ST_NDTYPES + 3);
    assert_int_equal(s->nfiles, 1);
    assert_string_equal(s->origin, path);
    const unsigned char *base = s->files[0].base;
    for (int d = 0; d < ST_NDTYPES; d++) {
        char name[32];
        snprintf(name, sizeof name, "t.%s", st_dtype_name((st_dtype)d));
        const st_tensor *t = st_find(s, name);
        assert_non_null(t);
        assert_string_equal(t->name, name);
        assert_int_equal(t->dtype, d);
        assert_int_equal(t->ndim, 2);
        assert_int_equal(t->shape[0], 3);
        assert_int_equal(t->shape[1], 2);
        assert_int_equal(t->numel, 6);
        assert_int_equal(t->nbytes, 6 * st_dtype_size((st_dtype)d));
        assert_memory_equal(t->data, bufs[d], t->nbytes);
        assert_int_equal(t->file, 0);
        /* every tensor is aligned to its element size within the file */
        assert_int_equal(((const unsigned char *)t->data - base) % st_dtype_size((st_dtype)d), 0);
        free(bufs[d]);
    }
    const st_tensor *t = st_find(s, "empty");
    assert_non_null(t);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], 0);
    assert_int_equal(t->shape[1], 4);
    assert_int_equal(t->numel, 0);
    assert_int_equal(t->nbytes, 0);
    t = st_find(s, "scalar");
    assert_non_null(t);
    assert_int_equal(t->ndim, 0);
    assert_int_equal(t->numel, 1);
    float got;
    memcpy(&got, t->data, 4);
    assert_true(got == 2.5f);
    t = st_find(s, "filled");
    assert_non_null(t);
    assert_int_equal(t->dtype, ST_F16);
    assert_int_equal(t->nbytes, 10);
    for (int i = 0; i < 10; i++)
        assert_int_equal(((const unsigned char *)t->data)[i], (unsigned char)(i * 7 + 3));
    assert_null(st_find(s, "missing"));
    assert_null(st_find(s, "t.F3"));

    char buf[64];
    assert_non_null(st_metadata(s, "format", buf, sizeof buf));
    assert_string_equal(buf, "pt");
    assert_non_null(st_metadata(s, "note", buf, sizeof buf));
    assert_string_equal(buf, "hello");
    assert_null(st_metadata(s, "absent", buf, sizeof buf));
    st_close(s);
    free(path);
}

static void test_dtype_table(void **state)
{
    (void)state;
    for (int d = 0; d < ST_NDTYPES; d++)
        assert_int_equal(st_dtype_parse(st_dtype_name((st_dtype)d)), d);
    assert_int_equal(st_dtype_parse("F4"), -1);
    assert_int_equal(st_dtype_parse("bf16"), -1); /* names are case-sensitive, as in the format */
    assert_int_equal(st_dtype_size(ST_BF16), 2);
    assert_int_equal(st_dtype_size(ST_F8_E4M3), 1);
    assert_int_equal(st_dtype_size(ST_I64), 8);
    int nsup = 0;
    for (int d = 0; d < ST_NDTYPES; d++)
        nsup += st_dtype_supported((st_dtype)d);
    assert_int_equal(nsup, 5);
    assert_true(st_dtype_supported(ST_F32) && st_dtype_supported(ST_F16) &&
                st_dtype_supported(ST_BF16) && st_dtype_supported(ST_I32) &&
                st_dtype_supported(ST_I64));
    assert_false(st_dtype_supported(ST_I8));
    assert_string_equal(st_dtype_name((st_dtype)99), "?");
    char b[64];
    const int64_t sh[3] = {4096, 128, 1};
    assert_string_equal(st_shape_str(3, sh, b, sizeof b), "[4096, 128, 1]");
    assert_string_equal(st_shape_str(0, sh, b, sizeof b), "[]");
    char tiny[6];
    st_shape_str(3, sh, tiny, sizeof tiny); /* truncates, never overflows */
    assert_int_equal(strlen(tiny), 5);
}

static void test_writer_empty_file(void **state)
{
    (void)state;
    st_writer *w = st_writer_new();
    char *path = tu_path(D, "empty.safetensors");
    assert_int_equal(st_writer_write(w, path, NULL, NULL, &E), 0);
    st_writer_free(w);
    st_set *s = st_open(path, &E);
    assert_non_null(s);
    assert_int_equal(s->n, 0);
    char buf[8];
    assert_null(st_metadata(s, "format", buf, sizeof buf));
    st_close(s);
    free(path);
}

static void test_writer_fill_error(void **state)
{
    (void)state;
    st_writer *w = st_writer_new();
    const int64_t sh[1] = {4};
    float a[4] = {1, 2, 3, 4};
    st_writer_add(w, "a", ST_F32, 1, sh, a);
    st_writer_add_fill(w, "b", ST_F32, 1, sh, fill_fails, NULL);
    char *path = tu_path(D, "f.safetensors");
    assert_int_equal(st_writer_write(w, path, NULL, NULL, &E), -1);
    assert_contains(kerr_msg(&E), "the source tensor went away");
    st_writer_free(w);
    assert_false(util_is_file(path));
    char *tmp = xasprintf("%s.tmp", path);
    assert_false(util_is_file(tmp)); /* no half-written file left behind */
    free(tmp);
    free(path);
}

static void test_writer_duplicate_name(void **state)
{
    (void)state;
    st_writer *w = st_writer_new();
    const int64_t sh[1] = {2};
    float a[2] = {1, 2}, b[2] = {3, 4};
    st_writer_add(w, "x", ST_F32, 1, sh, a);
    st_writer_add(w, "x", ST_F32, 1, sh, b);
    char *path = tu_path(D, "dup.safetensors");
    assert_int_equal(st_writer_write(w, path, NULL, NULL, &E), -1);
    char *want = xasprintf("%s: tensor 'x' is added twice", path);
    assert_string_equal(kerr_msg(&E), want);
    free(want);
    assert_false(util_is_file(path));
    st_writer_free(w);
    free(path);
}

static void test_writer_bad_folder(void **state)
{
    (void)state;
    st_writer *w = st_writer_new();
    char *path = tu_path(D, "no/such/folder/x.safetensors");
    assert_int_equal(st_writer_write(w, path, NULL, NULL, &E), -1);
    assert_contains(kerr_msg(&E), "no/such/folder/x.safetensors");
    assert_contains(kerr_msg(&E), "cannot create");
    st_writer_free(w);
    free(path);
}

/* ---------------------------------------------------------------- sharded sets */

static void write_shard(const char *name, const char *const *tensors, int n, float base)
{
    st_writer *w = st_writer_new();
    st_writer_meta(w, "format", "pt");
    const int64_t sh[1] = {2};
    float *data = xmalloc(sizeof(float) * 2 * (size_t)n);
    for (int i = 0; i < n; i++) {
        data[2 * i] = base + (float)i;
        data[2 * i + 1] = -(base + (float)i);
        st_writer_add(w, tensors[i], ST_F32, 1, sh, data + 2 * i);
    }
    char *p = tu_path(D, name);
    kerr e;
    kerr_clear(&e);
    if (st_writer_write(w, p, NULL, NULL, &e))
        fail_msg("%s", kerr_msg(&e));
    free(p);
    free(data);
    st_writer_free(w);
}

#define SHARD1 "model-00001-of-00002.safetensors"
#define SHARD2 "model-00002-of-00002.safetensors"

static void write_two_shards(void)
{
    static const char *s1[] = {"a.weight", "b.weight"}, *s2[] = {"c.weight"};
    write_shard(SHARD1, s1, 2, 10);
    write_shard(SHARD2, s2, 1, 20);
}

static char *write_index(const char *weight_map)
{
    char *t = xasprintf("{\"metadata\": {\"total_size\": 24}, \"weight_map\": %s}", weight_map);
    char *p = tu_write(D, "model.safetensors.index.json", t);
    free(t);
    return p;
}

static const char GOOD_MAP[] = "{\"a.weight\": \"" SHARD1 "\", \"b.weight\": \"" SHARD1
                               "\", \"c.weight\": \"" SHARD2 "\"}";

static void check_two_shards(st_set *s)
{
    assert_non_null(s);
    assert_int_equal(s->nfiles, 2);
    assert_int_equal(s->n, 3);
    static const char *names[] = {"a.weight", "b.weight", "c.weight"};
    static const char *files[] = {SHARD1, SHARD1, SHARD2};
    static const float first[] = {10, 11, 20};
    for (int i = 0; i < 3; i++) {
        const st_tensor *t = st_find(s, names[i]);
        assert_non_null(t);
        const char *fp = s->files[t->file].path;
        assert_string_equal(strrchr(fp, '/') + 1, files[i]);
        float v[2];
        memcpy(v, t->data, sizeof v);
        assert_true(v[0] == first[i] && v[1] == -first[i]);
    }
    char buf[16];
    assert_non_null(st_metadata(s, "format", buf, sizeof buf));
    assert_string_equal(buf, "pt");
}

static void test_sharded_folder(void **state)
{
    (void)state;
    write_two_shards();
    free(write_index(GOOD_MAP));
    st_set *s = st_open(D, &E);
    check_two_shards(s);
    st_close(s);
}

static void test_sharded_index_path(void **state)
{
    (void)state;
    write_two_shards();
    char *idx = write_index(GOOD_MAP);
    st_set *s = st_open(idx, &E);
    check_two_shards(s);
    st_close(s);
    free(idx);
}

static void test_folder_single_file(void **state)
{
    (void)state;
    static const char *t[] = {"x"};
    write_shard("model.safetensors", t, 1, 1);
    st_set *s = st_open(D, &E);
    assert_non_null(s);
    assert_int_equal(s->n, 1);
    assert_non_null(st_find(s, "x"));
    st_close(s);
}

static void test_index_bad_json(void **state)
{
    (void)state;
    write_two_shards();
    char *idx = tu_write(D, "model.safetensors.index.json", "{\"weight_map\": {\"a\": \n");
    const char *m = open_fails(idx);
    assert_contains(m, "not valid JSON");
    assert_contains(m, "line 2"); /* where it broke */
    free(idx);
}

static void test_index_file_missing(void **state)
{
    (void)state;
    char *idx = tu_path(D, "model.safetensors.index.json");
    const char *m = open_fails(idx);
    assert_contains(m, "cannot read");
    assert_not_contains(m, "not valid JSON");
    free(idx);
}

static void test_index_missing_weight_map(void **state)
{
    (void)state;
    write_two_shards();
    char *idx = tu_write(D, "model.safetensors.index.json", "{\"metadata\": {}}");
    const char *m = open_fails(D);
    assert_contains(m, idx);
    assert_contains(m, "'weight_map' missing or not an object");
    free(idx);
    idx = tu_write(D, "model.safetensors.index.json", "{\"weight_map\": [1, 2]}");
    m = open_fails(D);
    assert_contains(m, "'weight_map' missing or not an object");
    free(idx);
}

static void test_index_empty_weight_map(void **state)
{
    (void)state;
    char *idx = write_index("{}");
    st_set *s = st_open(idx, &E);
    assert_non_null(s); /* nothing listed, nothing loaded: binding will name what is missing */
    assert_int_equal(s->n, 0);
    assert_int_equal(s->nfiles, 0);
    assert_null(st_find(s, "a.weight"));
    st_close(s);
    free(idx);
}

static void test_index_entry_not_a_string(void **state)
{
    (void)state;
    write_two_shards();
    char *idx = write_index("{\"a.weight\": 3}");
    const char *m = open_fails(idx);
    assert_contains(m, "weight_map['a.weight'] is not a file name");
    free(idx);
}

static void test_index_tensor_absent_from_shard(void **state)
{
    (void)state;
    write_two_shards();
    char *idx = write_index("{\"a.weight\": \"" SHARD1 "\", \"b.weight\": \"" SHARD1
                            "\", \"c.weight\": \"" SHARD2 "\", \"d.weight\": \"" SHARD2 "\"}");
    const char *m = open_fails(idx);
    assert_contains(m, "tensor 'd.weight' is listed in the index for '" SHARD2 "'");
    assert_contains(m, "not found there");
    free(idx);
}

static void test_index_tensor_in_other_shard(void **state)
{
    (void)state;
    write_two_shards();
    char *idx = write_index("{\"a.weight\": \"" SHARD1 "\", \"b.weight\": \"" SHARD1
                            "\", \"c.weight\": \"" SHARD1 "\", \"z\": \"" SHARD2 "\"}");
    const char *m = open_fails(idx);
    assert_contains(m, "tensor 'c.weight' is listed for '" SHARD1 "' but found in");
    assert_contains(m, SHARD2);
    free(idx);
}

static void test_index_shard_missing(void **state)
{
    (void)state;
    write_two_shards();
    char *gone = tu_path(D, SHARD2);
    assert_int_equal(unlink(gone), 0);
    char *idx = write_index(GOOD_MAP);
    kerr_clear(&E);
    assert_null(st_open(D, &E));
    const char *m = kerr_msg(&E);
    assert_contains(m, gone); /* the shard file that is missing, by its full path */
    assert_contains(m, "cannot open");
    free(gone);
    free(idx);
}

static void test_index_name_with_slash(void **state)
{
    (void)state;
    write_two_shards();
    char *idx = write_index("{\"a.weight\": \"../" SHARD1 "\"}");
    const char *m = open_fails(idx);
    assert_contains(m, "weight_map['a.weight'] = '../" SHARD1 "'");
    assert_contains(m, "must be a file name in the same folder");
    free(idx);
    idx = write_index("{\"a.weight\": \"sub/" SHARD1 "\"}");
    m = open_fails(idx);
    assert_contains(m, "'sub/" SHARD1 "' must be a file name");
    free(idx);
}

static void test_tensor_in_two_shards(void **state)
{
    (void)state;
    static const char *s1[] = {"a.weight", "dup"}, *s2[] = {"c.weight", "dup"};
    write_shard(SHARD1, s1, 2, 1);
    write_shard(SHARD2, s2, 2, 5);
    char *idx = write_index("{\"a.weight\": \"" SHARD1 "\", \"c.weight\": \"" SHARD2
                            "\", \"dup\": \"" SHARD1 "\"}");
    const char *m = open_fails(idx);
    assert_contains(m, "'dup'");
    free(idx);
}

static void test_folder_without_safetensors(void **state)
{
    (void)state;
    free(tu_write(D, "pytorch_model.bin", "not read"));
    const char *m = open_fails(D);
    assert_contains(m, "no model.safetensors or model.safetensors.index.json");
    assert_contains(m, "safe_serialization=True");
}

static void test_file_missing(void **state)
{
    (void)state;
    char *p = tu_path(D, "nope.safetensors");
    const char *m = open_fails(p);
    assert_contains(m, "cannot open");
    assert_contains(m, "No such file");
    free(p);
}

/* ---------------------------------------------------------------- bad single files */

static void test_shorter_than_8_bytes(void **state)
{
    (void)state;
    for (size_t n = 0; n < 8; n++) {
        char *p = tu_path(D, "short.safetensors");
        tu_write_bytes(p, "\x10\0\0\0\0\0\0", n);
        const char *m = open_fails(p);
        char want[64];
        snprintf(want, sizeof want, "file is %zu bytes, too short", n);
        assert_contains(m, want);
        assert_contains(m, "truncated or not a safetensors file");
        free(p);
    }
}

static void test_header_length_past_end(void **state)
{
    (void)state;
    char *p = tu_path(D, "h.safetensors");
    unsigned char b[20] = {0xe8, 0x03}; /* 1000 */
    memcpy(b + 8, "{\"a\":1}", 7);
    tu_write_bytes(p, b, sizeof b);
    const char *m = open_fails(p);
    assert_contains(m, "header length 1000 runs past the end of the file (20 bytes)");
    /* the largest length: no overflow in the bounds check */
    memset(b, 0xff, 8);
    tu_write_bytes(p, b, sizeof b);
    m = open_fails(p);
    assert_contains(m, "header length 18446744073709551615 runs past the end");
    free(p);
}

static void test_header_not_json(void **state)
{
    (void)state;
    char *p = raw("j.safetensors", "{\"w\": {\"dtype\": ", NULL, 0);
    const char *m = open_fails(p);
    assert_contains(m, "header is not valid JSON");
    free(p);
    p = raw("j.safetensors", "", NULL, 0);
    m = open_fails(p);
    assert_contains(m, "header is not valid JSON");
    free(p);
}

static void test_header_not_object(void **state)
{
    (void)state;
    char *p = raw("o.safetensors", "[{\"dtype\": \"F32\"}]", NULL, 0);
    const char *m = open_fails(p);
    assert_contains(m, "header JSON is not an object");
    free(p);
}

static void test_entry_not_object(void **state)
{
    (void)state;
    const char *m = one_entry_fails("[1, 2]", 0);
    assert_contains(m, "header entry is not an object");
}

static void test_metadata_not_object(void **state)
{
    (void)state;
    char *p = raw("m.safetensors", "{\"__metadata__\": \"pt\"}", NULL, 0);
    const char *m = open_fails(p);
    assert_contains(m, "__metadata__ is not an object");
    free(p);
}

static void test_dtype_bad(void **state)
{
    (void)state;
    const char *m = one_entry_fails("{\"dtype\":\"F4\",\"shape\":[1],\"data_offsets\":[0,4]}", 4);
    assert_contains(m, "unknown dtype 'F4'");
    m = one_entry_fails("{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}", 4);
    assert_contains(m, "field 'dtype' missing or not a string");
    m = one_entry_fails("{\"shape\":[1],\"data_offsets\":[0,4]}", 4);
    assert_contains(m, "field 'dtype' missing or not a string");
}

static void test_shape_bad(void **state)
{
    (void)state;
    const char *m = one_entry_fails("{\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,16]}", 16);
    assert_contains(m, "field 'shape' missing or not an array");
    m = one_entry_fails("{\"dtype\":\"F32\",\"data_offsets\":[0,16]}", 16);
    assert_contains(m, "field 'shape' missing or not an array");
    m = one_entry_fails("{\"dtype\":\"F32\",\"shape\":[2,-2],\"data_offsets\":[0,16]}", 16);
    assert_contains(m, "shape[1] is not a non-negative integer");
    m = one_entry_fails("{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,16]}", 16);
    assert_contains(m, "shape[0] is not a non-negative integer");
    m = one_entry_fails("{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                        "\"data_offsets\":[0,4]}",
                        4);
    assert_contains(m, "9 dimensions, at most 8 supported");
    m = one_entry_fails("{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],"
                        "\"data_offsets\":[0,4]}",
                        4);
    assert_contains(m, "shape overflows");
    /* numel fits, numel * element size does not */
    m = one_entry_fails("{\"dtype\":\"F64\",\"shape\":[4611686018427387904],"
                        "\"data_offsets\":[0,4]}",
                        4);
    assert_contains(m, "needs");
}

static void test_data_offsets_bad(void **state)
{
    (void)state;
    static const char *bad[] = {
        "{\"dtype\":\"F32\",\"shape\":[4]}",
        "{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":16}",
        "{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[16]}",
        "{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16,32]}",
        "{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,\"16\"]}",
        "{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0.0,16]}",
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        const char *m = one_entry_fails(bad[i], 16);
        assert_contains(m, "field 'data_offsets' must be [begin, end]");
    }
    const char *m = one_entry_fails("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}", 16);
    assert_contains(m, "bad data_offsets [8, 4]");
    m = one_entry_fails("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}", 16);
    assert_contains(m, "bad data_offsets [-4, 0]");
    m = one_entry_fails("{\"dtype\":\"F32\",\"shape\":[16],\"data_offsets\":[0,64]}", 16);
    assert_contains(m, "data_offsets [0, 64] run past the end of the data (16 bytes)");
    assert_contains(m, "truncated or corrupt");
    m = one_entry_fails("{\"dtype\":\"F32\",\"shape\":[1],"
                        "\"data_offsets\":[9223372036854775803,9223372036854775807]}",
                        16);
    assert_contains(m, "run past the end of the data");
}

static void test_shape_times_dtype_mismatch(void **state)
{
    (void)state;
    const char *m =
        one_entry_fails("{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,16]}", 16);
    assert_contains(m, "shape [2, 3] x F32 (4 bytes each) needs 24 bytes, but data_offsets give 16");
    m = one_entry_fails("{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[0,4]}", 4);
    assert_contains(m, "shape [] x BF16 (2 bytes each) needs 2 bytes, but data_offsets give 4");
}

static void test_overlap(void **state)
{
    (void)state;
    char *p = raw("ov.safetensors",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                  ZEROS, 12);
    const char *m = open_fails(p);
    assert_contains(m, "tensor 'b' (bytes 4..12) overlaps tensor 'a'");
    free(p);
    /* the same range twice */
    p = raw("ov.safetensors",
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
            "\"b\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
            ZEROS, 8);
    m = open_fails(p);
    assert_contains(m, "overlaps tensor");
    assert_contains(m, "'a'");
    assert_contains(m, "'b'");
    free(p);
}

static void test_hole_and_trailing_bytes(void **state)
{
    (void)state;
    char *p = raw("hole.safetensors",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]}}",
                  ZEROS, 16);
    const char *m = open_fails(p);
    assert_contains(m, "4 unused bytes before tensor 'b' (data offset 12)");
    assert_contains(m, "must be contiguous");
    free(p);
    p = raw("lead.safetensors",
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", ZEROS, 16);
    m = open_fails(p);
    assert_contains(m, "8 unused bytes before tensor 'a' (data offset 8)");
    free(p);
    p = raw("trail.safetensors",
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", ZEROS, 12);
    m = open_fails(p);
    assert_contains(m, "4 bytes after the last tensor are not described by the header");
    free(p);
    /* zero-sized tensors may sit anywhere inside the data */
    p = raw("zero.safetensors",
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
            "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}",
            ZEROS, 8);
    kerr_clear(&E);
    st_set *s = st_open(p, &E);
    assert_non_null(s);
    assert_int_equal(s->n, 2);
    st_close(s);
    free(p);
}

static void test_duplicate_tensor_name(void **state)
{
    (void)state;
    /* A realistic (long) name: the message must still say which tensor. */
    char *p = raw("dup.safetensors",
                  "{\"model.layers.0.self_attn.q_proj.weight\":"
                  "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                  "\"model.layers.0.self_attn.q_proj.weight\":"
                  "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                  ZEROS, 8);
    const char *m = open_fails(p);
    assert_contains(m, "duplicate");
    assert_contains(m, "model.layers.0.self_attn.q_proj.weight");
    free(p);
    p = raw("dup2.safetensors",
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
            "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
            ZEROS, 8);
    m = open_fails(p);
    assert_contains(m, "duplicate");
    assert_contains(m, "'a'");
    free(p);
}

static void test_all_errors_of_a_file_reported(void **state)
{
    (void)state;
    /* Two bad entries: both are named in one run. */
    char *p = raw("two.safetensors",
                  "{\"a\":{\"dtype\":\"F4\",\"shape\":[1],\"data_offsets\":[0,4]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":\"x\",\"data_offsets\":[4,8]}}",
                  ZEROS, 8);
    const char *m = open_fails(p);
    assert_contains(m, "tensor 'a': unknown dtype 'F4'");
    assert_contains(m, "tensor 'b': field 'shape' missing or not an array");
    assert_int_equal(E.n, 2);
    free(p);
}

/* ---------------------------------------------------------------- fuzz-ish */

/* A valid file with several dtypes, metadata, a zero-sized tensor. */
static char *write_valid(size_t *size)
{
    st_writer *w = st_writer_new();
    st_writer_meta(w, "format", "pt");
    static const float f[6] = {1, 2, 3, 4, 5, 6};
    static const uint16_t h[3] = {1, 2, 3};
    static const int64_t q[2] = {7, 8};
    const int64_t s23[2] = {2, 3}, s3[1] = {3}, s2[1] = {2}, s0[2] = {0, 5};
    st_writer_add(w, "layer.weight", ST_F32, 2, s23, f);
    st_writer_add(w, "layer.bias", ST_BF16, 1, s3, h);
    st_writer_add(w, "ids", ST_I64, 1, s2, q);
    st_writer_add(w, "none", ST_F16, 2, s0, NULL);
    char *p = tu_path(D, "valid.safetensors");
    if (st_writer_write(w, p, NULL, NULL, &E))
        fail_msg("%s", kerr_msg(&E));
    st_writer_free(w);
    free(tu_read(p, size));
    return p;
}

/* st_open on `path` holding `bytes`: NULL with a message naming the file, or a set whose
 * pointers all lie inside the file. Returns 1 when it opened. */
static int open_any(const char *path, const unsigned char *bytes, size_t n)
{
    tu_write_bytes(path, bytes, n);
    kerr_clear(&E);
    st_set *s = st_open(path, &E);
    if (!s) {
        assert_true(E.n > 0);
        assert_contains(kerr_msg(&E), path);
        return 0;
    }
    assert_int_equal(s->nfiles, 1);
    const unsigned char *base = s->files[0].base;
    for (int i = 0; i < s->n; i++) {
        const st_tensor *t = &s->tensors[i];
        const unsigned char *d = t->data;
        assert_true(t->ndim >= 0 && t->ndim <= ST_MAX_DIMS);
        assert_int_equal(t->nbytes, t->numel * st_dtype_size(t->dtype));
        assert_true(d >= base + 8);
        assert_true(d + t->nbytes <= base + s->files[0].size);
        /* touch every byte: ASan would flag a pointer outside the mapping */
        unsigned sum = 0;
        for (uint64_t k = 0; k < t->nbytes; k++)
            sum += d[k];
        (void)sum;
        if (i)
            assert_true(strcmp(s->tensors[i - 1].name, t->name) < 0);
    }
    st_close(s);
    return 1;
}

static void test_fuzz_truncate(void **state)
{
    (void)state;
    size_t size;
    char *p = write_valid(&size);
    unsigned char *bytes = (unsigned char *)tu_read(p, NULL);
    char *q = tu_path(D, "cut.safetensors");
    assert_int_equal(open_any(q, bytes, size), 1);
    /* Every byte of a safetensors file is described, so every truncation must be refused. */
    for (size_t n = 0; n < size; n++)
        if (open_any(q, bytes, n))
            fail_msg("a file truncated to %zu of %zu bytes was accepted", n, size);
    free(q);
    free(bytes);
    free(p);
}

static void test_fuzz_flip(void **state)
{
    (void)state;
    size_t size;
    char *p = write_valid(&size);
    unsigned char *bytes = (unsigned char *)tu_read(p, NULL);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | bytes[i];
    assert_true(8 + hlen <= size);
    char *q = tu_path(D, "flip.safetensors");
    unsigned char *m = xmalloc(size);
    static const unsigned char subst[] = {0x00, '"', '{', '}', '[', ']', ',', ':', '-', '0',
                                          '9',  'e', ' ', 0x80, 0xff};
    int opened = 0, tries = 0;
    /* every position of the length prefix and the header, with several substitutes each */
    for (size_t pos = 0; pos < 8 + hlen; pos++) {
        for (size_t k = 0; k <= ARRAY_LEN(subst); k++) {
            memcpy(m, bytes, size);
            unsigned char v = k < ARRAY_LEN(subst) ? subst[k] : (unsigned char)(bytes[pos] ^ 0x01);
            if (v == bytes[pos])
                continue;
            m[pos] = v;
            opened += open_any(q, m, size);
            tries++;
        }
    }
    /* the data bytes are not checked by the reader: flipping them still opens */
    for (size_t pos = 8 + hlen; pos < size; pos++) {
        memcpy(m, bytes, size);
        m[pos] ^= 0xff;
        assert_int_equal(open_any(q, m, size), 1);
    }
    assert_true(tries > 1000);
    assert_true(opened < tries); /* most corruptions are refused */
    free(m);
    free(q);
    free(bytes);
    free(p);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_roundtrip_every_dtype),
        T(test_dtype_table),
        T(test_writer_empty_file),
        T(test_writer_fill_error),
        T(test_writer_duplicate_name),
        T(test_writer_bad_folder),
        T(test_sharded_folder),
        T(test_sharded_index_path),
        T(test_folder_single_file),
        T(test_index_bad_json),
        T(test_index_file_missing),
        T(test_index_missing_weight_map),
        T(test_index_empty_weight_map),
        T(test_index_entry_not_a_string),
        T(test_index_tensor_absent_from_shard),
        T(test_index_tensor_in_other_shard),
        T(test_index_shard_missing),
        T(test_index_name_with_slash),
        T(test_tensor_in_two_shards),
        T(test_folder_without_safetensors),
        T(test_file_missing),
        T(test_shorter_than_8_bytes),
        T(test_header_length_past_end),
        T(test_header_not_json),
        T(test_header_not_object),
        T(test_entry_not_object),
        T(test_metadata_not_object),
        T(test_dtype_bad),
        T(test_shape_bad),
        T(test_data_offsets_bad),
        T(test_shape_times_dtype_mismatch),
        T(test_overlap),
        T(test_hole_and_trailing_bytes),
        T(test_duplicate_tensor_name),
        T(test_all_errors_of_a_file_reported),
        T(test_fuzz_truncate),
        T(test_fuzz_flip),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
