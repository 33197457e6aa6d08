/* artifact — the compiled model: model.kiln, written by kilnc compile, read by kiln.
 *
 * File layout (little-endian):
 *   bytes 0..7    magic "KILNART\0"
 *   bytes 8..11   format version (KA_VERSION); a different version is refused with the command
 *                 that rebuilds the artifact
 *   bytes 12..15  0
 *   bytes 16..23  manifest offset, 24..31 manifest length
 *   then blobs (cubins per SM, PTX, the generated source) and the manifest: JSON describing the
 *   model, its limits, the weights the shards must hold, the kernel table, and the launch
 *   schedules for prefill and decode. Every blob's offset, length and FNV-1a hash are in the
 *   manifest and are checked before use.
 *
 * The schedule is a list of steps; each is a kernel launch with its grid rule and arguments,
 * or a GEMM (cuBLASLt), taken or skipped by conditions on the step's size. Argument kinds name
 * where a pointer comes from (the activation slab, a weight, a constant table, the KV cache of a
 * layer, the per-step scratch) so the runtime can bind them once per batch bucket.
 *
 * Next to model.kiln: shards/rank0-of-1.safetensors (weights in runtime layout, named as the
 * manifest's weight list) and the tokenizer files.
 */
#ifndef KILN_ARTIFACT_H
#define KILN_ARTIFACT_H

#include <stdint.h>

#include "util.h"

#define KA_MAGIC "KILNART"
#define KA_VERSION 1
#define KA_MAX_ARGS 20

/* Where a kernel argument comes from. */
typedef enum {
    KA_ARG_STEP,    /* the kiln_step struct, by value */
    KA_ARG_BUF,     /* slab + i bytes */
    KA_ARG_SCRATCH, /* scratch + i bytes (per-step temporaries) */
    KA_ARG_WEIGHT,  /* weight #i */
    KA_ARG_CONST,   /* constant table #i (float) */
    KA_ARG_KV_K,    /* K cache of layer i */
    KA_ARG_KV_V,    /* V cache of layer i */
    KA_ARG_NULL,    /* a null pointer */
    KA_ARG_I32,     /* the integer i */
    KA_ARG_F32,     /* the float f */
    KA_ARG_M,       /* int: rows of the GEMM (T, or n_seqs for the logits of the last rows) */
    KA_ARG_LOGITS,  /* the float logits buffer */
    KA_ARG_OUT,     /* the float output buffer of embedding models */
    KA_NARGKINDS
} ka_arg_kind;

typedef struct ka_arg {
    ka_arg_kind kind;
    int64_t i;
    double f;
} ka_arg;

/* One grid dimension: ceil((t*T + s*n_seqs + q*max_q + add) / div), max_q = the most tokens
 * of one sequence in the step. */
typedef struct ka_grid {
    int t, s, q, add, div;
} ka_grid;

typedef enum { KA_KERNEL, KA_GEMM } ka_step_kind;
typedef enum { KA_SIZE_ANY, KA_SIZE_SMALL, KA_SIZE_LARGE } ka_size;     /* T <= gemv_max or not */
typedef enum { KA_LOGITS_ANY, KA_LOGITS_LAST, KA_LOGITS_ALL } ka_logits; /* last rows or all */
typedef enum { KA_ROWS_T, KA_ROWS_S } ka_rows;                          /* GEMM rows */

typedef struct ka_step {
    ka_step_kind kind;
    char *label;            /* the graph node it implements */
    ka_size size;
    ka_logits logits;
    /* kernel */
    int kernel;
    ka_grid grid[3];
    int nargs;
    ka_arg args[KA_MAX_ARGS];
    /* GEMM: y[M, n] = x[M, k] . w[n, k]^T (+ bias[n]); x, y row-major with leading dims ldx, ldy
     * (elements); y float when out_f32 */
    ka_arg x, w, bias, y;
    int64_t n, k, ldx, ldy;
    int out_f32;
    ka_rows rows;
} ka_step;

typedef struct ka_kernel {
    char *name;
    int block;   /* threads per block */
    int smem;    /* dynamic shared memory bytes */
} ka_kernel;

typedef struct ka_weight {
    char *name;   /* tensor name in the shard */
    int ndim;
    int64_t shape[4];
    int64_t nbytes;
    int64_t offset; /* in the runtime's weight arena (256-byte aligned), set at load */
} ka_weight;

typedef struct ka_const {
    char *name;
    int n;
    float *v;
} ka_const;

typedef struct ka_layer {
    int n_kv, head_dim;
} ka_layer;

typedef struct ka_blob {
    char *name;     /* "cubin.sm_90a", "ptx.compute_80", "source.cu" */
    uint64_t offset, len, fnv;
} ka_blob;

typedef struct ka_manifest {
    /* identity */
    char *model_name, *arch, *spec_name, *task, *dtype; /* dtype: "bf16" | "f16" */
    char *kilnc_version;
    uint64_t spec_hash, config_hash, layout_hash;
    /* shapes and limits */
    int vocab, hidden, n_layers;
    int max_tokens, max_seqs, max_seq_len, gemv_max;
    int64_t slab_bytes, scratch_bytes;
    int output_pool;        /* embedding model: output is [n_seqs, hidden] float */
    ka_layer *layers;
    int n_eos;
    int *eos;               /* token ids that end a sequence (generation_config.json) */
    int bos;                /* -1 when none */
    /* code */
    int nkernels;
    ka_kernel *kernels;
    int sample_kernel;      /* index, -1 for embedding models */
    int nprefill, ndecode;
    ka_step *prefill, *decode;
    int nweights;
    ka_weight *weights;
    char *shard;            /* "shards/rank0-of-1.safetensors" */
    uint64_t shard_header_fnv;
    int nconsts;
    ka_const *consts;
    int nblobs;
    ka_blob *blobs;
} ka_manifest;

/* An artifact in memory: the manifest and the file's bytes (blobs are read from it). */
typedef struct ka_file {
    ka_manifest m;
    unsigned char *data;
    size_t len;
    char *path;
} ka_file;

/* Serialises the manifest to JSON (blobs must have been placed). */
char *ka_manifest_json(const ka_manifest *m);
/* Writes model.kiln: the blobs (in m->blobs order, offsets filled in) then the manifest. */
int ka_write(const char *path, ka_manifest *m, const void *const *blob_data, kerr *err);
/* Reads and validates model.kiln (magic, version, bounds, hashes, manifest schema). */
ka_file *ka_read(const char *path, kerr *err);
void ka_file_free(ka_file *f);
void ka_manifest_free(ka_manifest *m);
/* The blob named `name`, or NULL. */
const ka_blob *ka_find_blob(const ka_manifest *m, const char *name);

const char *ka_arg_kind_name(ka_arg_kind k);

#endif
