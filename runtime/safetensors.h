/* safetensors — strict reader (mmap, single file or sharded) and a writer.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON
 *   {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}
 * then the data buffer; offsets are relative to the buffer start.
 *
 * The reader trusts nothing in the file: every offset, shape and length is checked (with
 * overflow-safe arithmetic) before a pointer into the mapping is handed out, so a caller can
 * never read outside the mapped file. Like the reference implementation, the data buffer must
 * be covered exactly: no overlaps and no holes. Errors name the file and the tensor.
 *
 * A set (st_set) is what a checkpoint folder holds: one model.safetensors, or the shards
 * listed by model.safetensors.index.json, looked up by tensor name.
 */
#ifndef KILN_SAFETENSORS_H
#define KILN_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define ST_MAX_DIMS 8

/* Every dtype the format defines, so an unsupported one is named, not "unknown".
 * X(name in the file, element bytes, usable for compute) */
#define ST_DTYPES(X)       \
    X(F64, 8, 0)           \
    X(F32, 4, 1)           \
    X(F16, 2, 1)           \
    X(BF16, 2, 1)          \
    X(I64, 8, 1)           \
    X(I32, 4, 1)           \
    X(I16, 2, 0)           \
    X(I8, 1, 0)            \
    X(U64, 8, 0)           \
    X(U32, 4, 0)           \
    X(U16, 2, 0)           \
    X(U8, 1, 0)            \
    X(BOOL, 1, 0)          \
    X(F8_E4M3, 1, 0)       \
    X(F8_E5M2, 1, 0)

typedef enum {
#define X(n, sz, ok) ST_##n,
    ST_DTYPES(X)
#undef X
    ST_NDTYPES
} st_dtype;

const char *st_dtype_name(st_dtype dt);
size_t st_dtype_size(st_dtype dt);
int st_dtype_supported(st_dtype dt); /* F32 F16 BF16 I32 I64 */
/* -1 when the name is not a safetensors dtype. */
int st_dtype_parse(const char *name);

typedef struct st_tensor {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t numel;
    const void *data; /* inside the read-only mapping */
    uint64_t nbytes;
    int file;         /* index into st_set.files */
} st_tensor;

typedef struct st_file {
    char *path;
    void *base;  /* mapping of the whole file */
    size_t size;
    int borrowed; /* base is a memory file's bytes (util_memdir_find), not a mapping of ours */
    char *metadata_json; /* "__metadata__" object as JSON text, or NULL */
} st_file;

typedef struct st_set {
    int n;
    st_tensor *tensors; /* sorted by name */
    int nfiles;
    st_file *files;
    char *origin; /* the path given to st_open */
} st_set;

/* path: a .safetensors file, a model.safetensors.index.json, or a folder holding one of
 * those. Returns NULL and appends to err on any problem. */
st_set *st_open(const char *path, kerr *err);
void st_close(st_set *s);
const st_tensor *st_find(const st_set *s, const char *name);
/* Metadata value of the first file's __metadata__, or NULL. */
const char *st_metadata(const st_set *s, const char *key, char *buf, size_t cap);

/* "[4096, 128]" into buf. */
const char *st_shape_str(int ndim, const int64_t *shape, char *buf, size_t cap);

/* Writer: tensors are added with their bytes (owned by the caller until st_writer_write
 * returns) or with a fill callback that produces the bytes in order, which lets the weight
 * packer stream a 16 GB shard through a small buffer. */
typedef struct st_writer st_writer;
typedef int (*st_fill_fn)(void *ctx, void *buf, uint64_t nbytes, kerr *err);
st_writer *st_writer_new(void);
void st_writer_free(st_writer *w);
void st_writer_meta(st_writer *w, const char *key, const char *value);
void st_writer_add(st_writer *w, const char *name, st_dtype dt, int ndim, const int64_t *shape,
                   const void *data);
/* As st_writer_add, but the writer owns `data` (malloc'd) and frees it. */
void st_writer_add_owned(st_writer *w, const char *name, st_dtype dt, int ndim,
                         const int64_t *shape, void *data);
void st_writer_add_fill(st_writer *w, const char *name, st_dtype dt, int ndim,
                        const int64_t *shape, st_fill_fn fill, void *ctx);
/* progress(ctx, bytes_done, bytes_total) is called as data is written; may be NULL. */
int st_writer_write(st_writer *w, const char *path, void (*progress)(void *, uint64_t, uint64_t),
                    void *pctx, kerr *err);

#endif
