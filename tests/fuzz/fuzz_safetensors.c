/* fuzz_safetensors — the strict safetensors reader (runtime/safetensors.h) on hostile files.
 *
 * The input is written to a scratch folder and opened with st_open, one of two ways:
 *   - input starting with '{': a model.safetensors.index.json; the folder also holds two small
 *     valid shards, a.safetensors and b.safetensors (written once, at start), for it to name;
 *   - anything else: a single .safetensors file.
 * Contracts checked on success, for every tensor: its bytes lie inside its file's mapping,
 * numel is the product of the shape, nbytes = numel x element size, the dtype and rank are in
 * range, names are sorted and unique, st_find finds each one. Every byte of every tensor is
 * read, so ASan sees any pointer outside the file. On failure the error must not be empty.
 */
#include "fuzz.h"
#include "safetensors.h"

static void write_shard(const char *name, const char *tensor, int n)
{
    float v[4] = {1, 2, 3, 4};
    int64_t shape[1] = {n};
    st_writer *w = st_writer_new();
    st_writer_add(w, tensor, ST_F32, 1, shape, v);
    kerr e;
    kerr_clear(&e);
    if (st_writer_write(w, fz_path(name), NULL, NULL, &e)) {
        fprintf(stderr, "fuzz_safetensors: %s\n", kerr_msg(&e));
        abort();
    }
    st_writer_free(w);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    write_shard("a.safetensors", "a.weight", 4);
    write_shard("b.safetensors", "b.weight", 2);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int index = size > 0 && data[0] == '{';
    const char *path = fz_write(index ? "input.json" : "model.safetensors", data, size);
    kerr e;
    kerr_clear(&e);
    st_set *s = st_open(path, &e);
    if (!s) {
        fz_check_err(&e);
        return 0;
    }
    /* an index with an empty weight_map is an empty set: no files */
    FZ_CHECK(s->n >= 0 && s->nfiles >= 0 && (s->n == 0 || s->nfiles >= 1), "n=%d nfiles=%d", s->n,
             s->nfiles);
    unsigned sum = 0;
    for (int i = 0; i < s->n; i++) {
        const st_tensor *t = &s->tensors[i];
        FZ_CHECK(t->file >= 0 && t->file < s->nfiles, "tensor %d in file %d", i, t->file);
        const st_file *f = &s->files[t->file];
        FZ_CHECK((unsigned)t->dtype < ST_NDTYPES, "dtype %d", (int)t->dtype);
        FZ_CHECK(t->ndim >= 0 && t->ndim <= ST_MAX_DIMS, "ndim %d", t->ndim);
        uint64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            FZ_CHECK(t->shape[d] >= 0, "'%s' dim %d = %lld", t->name, d, (long long)t->shape[d]);
            FZ_CHECK(util_mul_ok(numel, (uint64_t)t->shape[d], &numel), "'%s' numel overflows",
                     t->name);
        }
        FZ_CHECK(numel == t->numel, "'%s' numel %llu, shape says %llu", t->name,
                 (unsigned long long)t->numel, (unsigned long long)numel);
        FZ_CHECK(t->nbytes == numel * st_dtype_size(t->dtype), "'%s' nbytes %llu", t->name,
                 (unsigned long long)t->nbytes);
        const unsigned char *b = f->base, *p = t->data;
        FZ_CHECK(t->nbytes == 0 || (p >= b && t->nbytes <= f->size && p - b <= (ptrdiff_t)(f->size - t->nbytes)),
                 "'%s' data outside its file", t->name);
        for (uint64_t k = 0; k < t->nbytes; k++)
            sum += p[k];
        FZ_CHECK(st_find(s, t->name) == t, "st_find('%s') does not find it", t->name);
        if (i > 0)
            FZ_CHECK(strcmp(s->tensors[i - 1].name, t->name) < 0, "names not sorted/unique: '%s'",
                     t->name);
        char buf[256];
        st_shape_str(t->ndim, t->shape, buf, sizeof buf);
    }
    char mb[64];
    st_metadata(s, "format", mb, sizeof mb);
    /* keep the reads from being optimised away */
    FZ_CHECK(sum != 0xffffffffu || s->n, "unreachable");
    st_close(s);
    return 0;
}
