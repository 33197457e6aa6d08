/* safetensors — see safetensors.h. The reader validates the whole header before it hands out
 * a single pointer; the writer is used by `kilnc compile` (weight shards), `kilnc ref --dump`
 * and `kiln run --dump`. */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The reference implementation refuses headers over 100 MB; so do we. */
#define ST_MAX_HEADER (100u << 20)

static const struct {
    const char *name;
    size_t size;
    int supported;
} dtypes[] = {
#define X(n, sz, ok) {#n, sz, ok},
    ST_DTYPES(X)
#undef X
};
_Static_assert(ARRAY_LEN(dtypes) == ST_NDTYPES, "dtype table out of sync");

const char *st_dtype_name(st_dtype dt) { return (unsigned)dt < ST_NDTYPES ? dtypes[dt].name : "?"; }
size_t st_dtype_size(st_dtype dt) { return (unsigned)dt < ST_NDTYPES ? dtypes[dt].size : 0; }
int st_dtype_supported(st_dtype dt) { return (unsigned)dt < ST_NDTYPES && dtypes[dt].supported; }

int st_dtype_parse(const char *name)
{
    for (int i = 0; i < ST_NDTYPES; i++)
        if (strcmp(name, dtypes[i].name) == 0)
            return i;
    return -1;
}

const char *st_shape_str(int ndim, const int64_t *shape, char *buf, size_t cap)
{
    size_t n = 0;
    n += (size_t)snprintf(buf + n, cap - n, "[");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (n < cap)
        snprintf(buf + n, cap - n, "]");
    return buf;
}

/* ---------------------------------------------------------------- reading */

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int cmp_tensor_ptr_offset(const void *a, const void *b)
{
    const st_tensor *x = *(st_tensor *const *)a, *y = *(st_tensor *const *)b;
    if (x->data != y->data)
        return (const char *)x->data < (const char *)y->data ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* Parses one tensor entry; appends to s->tensors. */
static int parse_entry(st_set *s, int fi, const char *path, const char *name, json_t *v,
                       const unsigned char *data, uint64_t data_len, kerr *err)
{
    if (!json_is_object(v))
        return kerr_add(err, "%s: tensor '%s': header entry is not an object", path, name);
    json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape"),
           *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd))
        return kerr_add(err, "%s: tensor '%s': field 'dtype' missing or not a string", path, name);
    int dt = st_dtype_parse(json_string_value(jd));
    if (dt < 0)
        return kerr_add(err, "%s: tensor '%s': unknown dtype '%s'", path, name,
                        json_string_value(jd));
    if (!json_is_array(js))
        return kerr_add(err, "%s: tensor '%s': field 'shape' missing or not an array", path, name);
    size_t nd = json_array_size(js);
    if (nd > ST_MAX_DIMS)
        return kerr_add(err, "%s: tensor '%s': %zu dimensions, at most %d supported", path, name,
                        nd, ST_MAX_DIMS);
    st_tensor t = {0};
    t.dtype = (st_dtype)dt;
    t.ndim = (int)nd;
    t.file = fi;
    uint64_t numel = 1;
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(js, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return kerr_add(err, "%s: tensor '%s': shape[%zu] is not a non-negative integer", path,
                            name, i);
        t.shape[i] = json_integer_value(d);
        if (!util_mul_ok(numel, (uint64_t)t.shape[i], &numel))
            return kerr_add(err, "%s: tensor '%s': shape overflows", path, name);
    }
    if (!json_is_array(jo) || json_array_size(jo) != 2 || !json_is_integer(json_array_get(jo, 0)) ||
        !json_is_integer(json_array_get(jo, 1)))
        return kerr_add(err, "%s: tensor '%s': field 'data_offsets' must be [begin, end]", path,
                        name);
    json_int_t b = json_integer_value(json_array_get(jo, 0)),
               e = json_integer_value(json_array_get(jo, 1));
    if (b < 0 || e < b)
        return kerr_add(err, "%s: tensor '%s': bad data_offsets [%lld, %lld]", path, name,
                        (long long)b, (long long)e);
    if ((uint64_t)e > data_len)
        return kerr_add(err,
                        "%s: tensor '%s': data_offsets [%lld, %lld] run past the end of the data "
                        "(%llu bytes); the file is truncated or corrupt",
                        path, name, (long long)b, (long long)e, (unsigned long long)data_len);
    uint64_t want;
    if (!util_mul_ok(numel, st_dtype_size(t.dtype), &want) || want != (uint64_t)(e - b)) {
        char sh[128];
        return kerr_add(err,
                        "%s: tensor '%s': shape %s x %s (%zu bytes each) needs %llu bytes, but "
                        "data_offsets give %llu",
                        path, name, st_shape_str(t.ndim, t.shape, sh, sizeof sh),
                        st_dtype_name(t.dtype), st_dtype_size(t.dtype), (unsigned long long)want,
                        (unsigned long long)(e - b));
    }
    t.numel = numel;
    t.nbytes = want;
    t.data = data + b;
    t.name = xstrdup(name);
    s->tensors = xrealloc(s->tensors, sizeof(st_tensor) * (size_t)(s->n + 1));
    s->tensors[s->n++] = t;
    return 0;
}

static int map_file(st_set *s, const char *path, kerr *err)
{
    const util_memfile *mf = util_memdir_find(path);
    if (mf && mf->data) {
        s->files = xrealloc(s->files, sizeof(st_file) * (size_t)(s->nfiles + 1));
        s->files[s->nfiles++] = (st_file){.path = xstrdup(path), .base = (void *)mf->data,
                                          .size = mf->len, .borrowed = 1};
        return 0;
    }
    if (mf) /* weights beside the standalone executable: messages name where they really are */
        path = mf->real;
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return kerr_add(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return kerr_add(err, "%s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    void *base = NULL;
    if (size > 0) {
        base = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (base == MAP_FAILED) {
            close(fd);
            return kerr_add(err, "%s: mmap failed: %s", path, strerror(errno));
        }
    }
    close(fd);
    s->files = xrealloc(s->files, sizeof(st_file) * (size_t)(s->nfiles + 1));
    s->files[s->nfiles++] = (st_file){.path = xstrdup(path), .base = base, .size = size};
    return 0;
}

/* Maps and validates one file, appending its tensors. `only`, when set, is the list of tensor
 * names the index promised for this file (checked by the caller). */
static int load_file(st_set *s, const char *path, kerr *err)
{
    int first = s->n;
    if (map_file(s, path, err))
        return -1;
    int fi = s->nfiles - 1;
    st_file *f = &s->files[fi];
    const unsigned char *p = f->base;
    if (f->size < 8)
        return kerr_add(err,
                        "%s: file is %zu bytes, too short for a safetensors header (8-byte length "
                        "+ JSON); it is truncated or not a safetensors file",
                        path, f->size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | p[i];
    if (hlen > f->size - 8)
        return kerr_add(err,
                        "%s: header length %llu runs past the end of the file (%zu bytes); the "
                        "file is truncated or not a safetensors file",
                        path, (unsigned long long)hlen, f->size);
    if (hlen > ST_MAX_HEADER)
        return kerr_add(err, "%s: header length %llu exceeds the 100 MB limit", path,
                        (unsigned long long)hlen);
    json_error_t je;
    json_t *root = json_loadb((const char *)p + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        /* jansson does not name a duplicate key; its error position is just past the key's
         * closing quote, so the name is read back from the header. */
        const char *h = (const char *)p + 8;
        int q = je.position - 1;
        if (json_error_code(&je) == json_error_duplicate_key && q >= 1 &&
            (uint64_t)q < hlen && h[q] == '"') {
            int b = q - 1;
            while (b >= 0 && !(h[b] == '"' && (b == 0 || h[b - 1] != '\\')))
                b--;
            if (b >= 0)
                return kerr_add(err, "%s: tensor '%.*s' appears twice in the header (duplicate "
                                     "key)",
                                path, q - b - 1, h + b + 1);
        }
        return kerr_add(err, "%s: header is not valid JSON (byte %d of the header: %s)", path,
                        je.position, je.text);
    }
    if (!json_is_object(root)) {
        json_decref(root);
        return kerr_add(err, "%s: header JSON is not an object", path);
    }
    const unsigned char *data = p + 8 + hlen;
    uint64_t data_len = f->size - 8 - hlen;
    int rc = 0;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        if (strcmp(key, "__metadata__") == 0) {
            if (!json_is_object(v)) {
                rc = kerr_add(err, "%s: __metadata__ is not an object", path);
                continue;
            }
            f->metadata_json = json_dumps(v, JSON_COMPACT);
            continue;
        }
        if (parse_entry(s, fi, path, key, v, data, data_len, err))
            rc = -1;
    }
    json_decref(root);
    if (rc)
        return -1;

    /* Coverage: sort this file's tensors by start; each must begin where the previous ended
     * and the last must end at the end of the file. Zero-sized tensors may sit anywhere. */
    int nt = s->n - first;
    st_tensor **order = xmalloc(sizeof(st_tensor *) * (size_t)(nt ? nt : 1));
    for (int i = 0; i < nt; i++)
        order[i] = &s->tensors[first + i];
    qsort(order, (size_t)nt, sizeof *order, cmp_tensor_ptr_offset);
    const unsigned char *at = data;
    for (int i = 0; i < nt && rc == 0; i++) {
        const st_tensor *t = order[i];
        const unsigned char *b = t->data;
        if (t->nbytes == 0)
            continue;
        if (b < at) {
            const st_tensor *prev = NULL;
            for (int j = i - 1; j >= 0 && !prev; j--)
                if (order[j]->nbytes && (const unsigned char *)order[j]->data + order[j]->nbytes > b)
                    prev = order[j];
            rc = kerr_add(err, "%s: tensor '%s' (bytes %lld..%lld) overlaps tensor '%s'", path,
                          t->name, (long long)(b - data), (long long)(b - data + (long)t->nbytes),
                          prev ? prev->name : "?");
        } else if (b > at) {
            rc = kerr_add(err,
                          "%s: %lld unused bytes before tensor '%s' (data offset %lld); the data "
                          "must be contiguous",
                          path, (long long)(b - at), t->name, (long long)(b - data));
        }
        at = b + t->nbytes;
    }
    if (rc == 0 && at != data + data_len)
        rc = kerr_add(err, "%s: %lld bytes after the last tensor are not described by the header",
                      path, (long long)(data + data_len - at));
    free(order);
    return rc;
}

static int load_index(st_set *s, const char *index_path, kerr *err)
{
    json_error_t je;
    json_t *root = json_load_file(index_path, JSON_REJECT_DUPLICATES, &je);
    if (!root && je.line < 0)
        return kerr_add(err, "%s: cannot read: %s", index_path, je.text);
    if (!root)
        return kerr_add(err, "%s: not valid JSON (line %d: %s)", index_path, je.line, je.text);
    json_t *map = json_object_get(root, "weight_map");
    if (!json_is_object(map)) {
        json_decref(root);
        return kerr_add(err, "%s: field 'weight_map' missing or not an object", index_path);
    }
    char *dir = xstrdup(index_path);
    char *slash = strrchr(dir, '/');
    if (slash)
        slash[1] = 0;
    else
        strcpy(dir, "./");
    /* Distinct shard file names, in first-seen order. */
    const char **names = NULL;
    int nn = 0, rc = 0;
    const char *key;
    json_t *v;
    json_object_foreach(map, key, v)
    {
        if (!json_is_string(v)) {
            rc = kerr_add(err, "%s: weight_map['%s'] is not a file name", index_path, key);
            continue;
        }
        const char *fn = json_string_value(v);
        if (strchr(fn, '/') || strcmp(fn, "..") == 0) {
            rc = kerr_add(err, "%s: weight_map['%s'] = '%s' must be a file name in the same folder",
                          index_path, key, fn);
            continue;
        }
        int seen = 0;
        for (int i = 0; i < nn && !seen; i++)
            seen = strcmp(names[i], fn) == 0;
        if (!seen) {
            names = xrealloc(names, sizeof(char *) * (size_t)(nn + 1));
            names[nn++] = fn;
        }
    }
    for (int i = 0; i < nn && rc == 0; i++) {
        char *p = xasprintf("%s%s", dir, names[i]);
        if (load_file(s, p, err))
            rc = -1;
        free(p);
    }
    if (rc == 0) {
        /* Every tensor the index names must be in the shard it names. */
        if (s->n) /* qsort(NULL, 0) is undefined */
            qsort(s->tensors, (size_t)s->n, sizeof(st_tensor), cmp_tensor_name);
        json_object_foreach(map, key, v)
        {
            const st_tensor *t = st_find(s, key);
            if (!t)
                rc = kerr_add(err, "%s: tensor '%s' is listed in the index for '%s' but not found "
                                   "there",
                              index_path, key, json_string_value(v));
            else if (strcmp(strrchr(s->files[t->file].path, '/') + 1, json_string_value(v)) != 0)
                rc = kerr_add(err, "%s: tensor '%s' is listed for '%s' but found in '%s'",
                              index_path, key, json_string_value(v), s->files[t->file].path);
        }
    }
    free(names);
    free(dir);
    json_decref(root);
    return rc;
}

st_set *st_open(const char *path, kerr *err)
{
    st_set *s = xcalloc(1, sizeof *s);
    s->origin = xstrdup(path);
    int rc;
    if (util_is_dir(path)) {
        char *idx = util_path_join(path, "model.safetensors.index.json");
        char *one = util_path_join(path, "model.safetensors");
        if (util_is_file(idx))
            rc = load_index(s, idx, err);
        else if (util_is_file(one))
            rc = load_file(s, one, err);
        else
            rc = kerr_add(err,
                          "%s: no model.safetensors or model.safetensors.index.json in this "
                          "folder (only safetensors checkpoints are read; convert .bin/.pt with "
                          "transformers' save_pretrained(safe_serialization=True))",
                          path);
        free(idx);
        free(one);
    } else {
        size_t n = strlen(path);
        if (n >= 5 && strcmp(path + n - 5, ".json") == 0)
            rc = load_index(s, path, err);
        else
            rc = load_file(s, path, err);
    }
    if (rc) {
        st_close(s);
        return NULL;
    }
    if (s->n) /* qsort(NULL, 0) is undefined */
        qsort(s->tensors, (size_t)s->n, sizeof(st_tensor), cmp_tensor_name);
    for (int i = 1; i < s->n; i++)
        if (strcmp(s->tensors[i - 1].name, s->tensors[i].name) == 0) {
            kerr_add(err, "%s: tensor '%s' appears in both %s and %s", path, s->tensors[i].name,
                     s->files[s->tensors[i - 1].file].path, s->files[s->tensors[i].file].path);
            st_close(s);
            return NULL;
        }
    return s;
}

void st_close(st_set *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->n; i++)
        free((char *)s->tensors[i].name);
    free(s->tensors);
    for (int i = 0; i < s->nfiles; i++) {
        if (s->files[i].base && !s->files[i].borrowed)
            munmap(s->files[i].base, s->files[i].size);
        free(s->files[i].path);
        free(s->files[i].metadata_json);
    }
    free(s->files);
    free(s->origin);
    free(s);
}

const st_tensor *st_find(const st_set *s, const char *name)
{
    size_t lo = 0, hi = (size_t)s->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(s->tensors[mid].name, name);
        if (c == 0)
            return &s->tensors[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const char *st_metadata(const st_set *s, const char *key, char *buf, size_t cap)
{
    if (!s->nfiles || !s->files[0].metadata_json)
        return NULL;
    json_t *m = json_loads(s->files[0].metadata_json, 0, NULL);
    const char *r = NULL;
    json_t *v = m ? json_object_get(m, key) : NULL;
    if (json_is_string(v)) {
        snprintf(buf, cap, "%s", json_string_value(v));
        r = buf;
    }
    json_decref(m);
    return r;
}

/* ---------------------------------------------------------------- writing */

typedef struct {
    char *name;
    st_dtype dt;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t nbytes;
    const void *data;
    void *owned;
    st_fill_fn fill;
    void *ctx;
} wentry;

struct st_writer {
    int n;
    wentry *e;
    json_t *meta;
};

st_writer *st_writer_new(void)
{
    st_writer *w = xcalloc(1, sizeof *w);
    w->meta = json_object();
    return w;
}

void st_writer_free(st_writer *w)
{
    if (!w)
        return;
    for (int i = 0; i < w->n; i++) {
        free(w->e[i].name);
        free(w->e[i].owned);
    }
    free(w->e);
    json_decref(w->meta);
    free(w);
}

void st_writer_meta(st_writer *w, const char *key, const char *value)
{
    json_object_set_new(w->meta, key, json_string(value));
}

static wentry *add_entry(st_writer *w, const char *name, st_dtype dt, int ndim,
                         const int64_t *shape)
{
    w->e = xrealloc(w->e, sizeof(wentry) * (size_t)(w->n + 1));
    wentry *e = &w->e[w->n++];
    memset(e, 0, sizeof *e);
    e->name = xstrdup(name);
    e->dt = dt;
    e->ndim = ndim;
    uint64_t n = st_dtype_size(dt);
    for (int i = 0; i < ndim; i++) {
        e->shape[i] = shape[i];
        n *= (uint64_t)shape[i];
    }
    e->nbytes = n;
    return e;
}

void st_writer_add(st_writer *w, const char *name, st_dtype dt, int ndim, const int64_t *shape,
                   const void *data)
{
    add_entry(w, name, dt, ndim, shape)->data = data;
}

void st_writer_add_owned(st_writer *w, const char *name, st_dtype dt, int ndim,
                         const int64_t *shape, void *data)
{
    wentry *e = add_entry(w, name, dt, ndim, shape);
    e->data = data;
    e->owned = data;
}

void st_writer_add_fill(st_writer *w, const char *name, st_dtype dt, int ndim,
                        const int64_t *shape, st_fill_fn fill, void *ctx)
{
    wentry *e = add_entry(w, name, dt, ndim, shape);
    e->fill = fill;
    e->ctx = ctx;
}

/* Larger elements first keeps every tensor's offset a multiple of its element size (the data
 * starts 8-aligned), without leaving holes the format forbids. Stable within a size. */
static int cmp_wentry(const void *a, const void *b)
{
    const wentry *x = a, *y = b;
    size_t sx = st_dtype_size(x->dt), sy = st_dtype_size(y->dt);
    if (sx != sy)
        return sx > sy ? -1 : 1;
    return x < y ? -1 : x > y;
}

int st_writer_write(st_writer *w, const char *path, void (*progress)(void *, uint64_t, uint64_t),
                    void *pctx, kerr *err)
{
    if (w->n) /* qsort(NULL, 0) is undefined */
        qsort(w->e, (size_t)w->n, sizeof(wentry), cmp_wentry);
    json_t *h = json_object();
    if (json_object_size(w->meta))
        json_object_set(h, "__metadata__", w->meta);
    uint64_t off = 0;
    for (int i = 0; i < w->n; i++) {
        wentry *e = &w->e[i];
        json_t *t = json_object(), *sh = json_array(), *of = json_array();
        for (int d = 0; d < e->ndim; d++)
            json_array_append_new(sh, json_integer(e->shape[d]));
        json_array_append_new(of, json_integer((json_int_t)off));
        json_array_append_new(of, json_integer((json_int_t)(off + e->nbytes)));
        json_object_set_new(t, "dtype", json_string(st_dtype_name(e->dt)));
        json_object_set_new(t, "shape", sh);
        json_object_set_new(t, "data_offsets", of);
        if (json_object_get(h, e->name)) { /* set_new would replace it: a corrupt file */
            json_decref(t);
            json_decref(h);
            return kerr_add(err, "%s: tensor '%s' is added twice", path, e->name);
        }
        if (json_object_set_new(h, e->name, t)) {
            json_decref(h);
            return kerr_add(err, "%s: cannot add tensor '%s' to the header", path, e->name);
        }
        off += e->nbytes;
    }
    char *hs = json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(h);
    size_t hl = strlen(hs), padded = (hl + 7) & ~(size_t)7;
    char *tmp = xasprintf("%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        free(hs);
        kerr_add(err, "%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        return -1;
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(hs, 1, hl, f) == hl;
    for (size_t i = hl; i < padded && ok; i++)
        ok = fputc(' ', f) != EOF;
    free(hs);
    uint64_t done = 0;
    size_t cap = 16u << 20;
    void *buf = NULL;
    for (int i = 0; i < w->n && ok; i++) {
        wentry *e = &w->e[i];
        if (e->fill) {
            if (!buf)
                buf = xmalloc(cap);
            /* Callers that stream must produce exactly nbytes in one or more calls; the simple
             * contract is one call per tensor into a buffer large enough. */
            void *b = e->nbytes > cap ? xmalloc(e->nbytes) : buf;
            if (e->fill(e->ctx, b, e->nbytes, err))
                ok = 0;
            else
                ok = fwrite(b, 1, e->nbytes, f) == e->nbytes;
            if (b != buf)
                free(b);
            if (!ok && err->n == 0)
                kerr_add(err, "%s: write failed: %s", tmp, strerror(errno));
        } else if (e->nbytes) {
            ok = fwrite(e->data, 1, e->nbytes, f) == e->nbytes;
        }
        done += e->nbytes;
        if (progress)
            progress(pctx, done, off);
    }
    free(buf);
    if (fclose(f) != 0)
        ok = 0;
    if (!ok) {
        if (err->n == 0)
            kerr_add(err, "%s: write failed: %s", tmp, strerror(errno));
        unlink(tmp);
        free(tmp);
        return -1;
    }
    /* Write to a temporary name and rename, so an interrupted run never leaves a file that
     * looks complete. */
    if (rename(tmp, path) != 0) {
        kerr_add(err, "%s: cannot rename from %s: %s", path, tmp, strerror(errno));
        unlink(tmp);
        free(tmp);
        return -1;
    }
    free(tmp);
    return 0;
}
