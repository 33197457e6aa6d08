/* artifact — the compiled model: model.kiln, written by kilnc compile, read by kiln.
 *
 * File layout (little-endian):
 *   bytes 0..7    magic "KILNART\0"
 *   bytes 8..11   format version (KA_VERSION); a different version is refused with the command
 *                 that rebuilds the artifact
 *   bytes 12..15  0
 *   bytes 16..23  manifest offset, 24..31 manifest length
 *   bytes 32..39  XXH3-64 of bytes 0..31 followed by the manifest (ka_manifest_hash)
 *   then sections: the blobs (cubins per SM, PTX, the generated source) and last the manifest,
 *   each starting at the first 256-byte boundary after the previous section's end + 1 (so every
 *   blob is followed by a zero byte: PTX is loaded as a C string), the gaps zero, the file ending
 *   where the manifest does. The manifest is JSON describing the model, its limits, the weights
 *   the shards must hold, the kernel table, and the launch schedules for prefill and decode;
 *   every blob's offset, length and XXH3-64 hash are in it.
 *
 * So every byte of the file is covered: the header and manifest by the header's hash, blobs by
 * theirs, gaps by being zero, the length by the layout. ka_read checks all of that, then every
 * field of the manifest: presence, type and range (each index against its table, each offset and
 * extent against its buffer, each grid at the largest step the limits allow), so the engine can
 * use the manifest without checks of its own.
 *
 * The schedule is a list of steps; each is a kernel launch with its grid rule and arguments,
 * or a GEMM (cuBLASLt), taken or skipped by conditions on the step's size. Argument kinds name
 * where a pointer comes from (the activation slab, a weight, a constant table, the KV cache of a
 * layer, the per-step scratch) so the runtime can bind them once per batch bucket.
 *
 * Next to model.kiln: one weight shard per rank, shards/rank<r>-of-<tp>.safetensors (weights in
 * runtime layout, named as the manifest's weight list), and the tokenizer files. The manifest
 * binds each shard three ways: the FNV-1a of its header (names, dtypes, shapes, offsets), the
 * chunked XXH3 of its data (hash.h) and its shard id, which the shard also carries in its
 * __metadata__ (KA_SHARD_ID_KEY). The id is a hash of the shard's header and data, so a shard of
 * another model, of the same model with other weights, or of another rank, is refused by its id
 * before any data is hashed, while a byte-identical shard is accepted (it is the same weights).
 *
 * Tensor parallelism (kilnc compile --tp N, format 5). The manifest describes ONE rank's program:
 * kernels, schedules, weights (names and per-rank shapes), constant tables, kv_layers (per-rank
 * KV heads) and the buffer sizes are the same on every rank; only three things differ by rank,
 * all resolved by the runtime when it binds a schedule on device r:
 *   - the weight shard: rank r loads shards[r] (every shard holds the same names and shapes, each
 *     its own slices);
 *   - KA_ARG_RANK arguments: the integer i * r (e.g. an embedding's first vocabulary row, the
 *     first ALiBi head of the rank);
 *   - collective steps (KA_ALLREDUCE, KA_ALLGATHER), run over the tp ranks' communicator, rank r
 *     being device r's place in it.
 * An artifact compiled without --tp has tp 1, one shard and no collective steps: the single-GPU
 * path, which needs no NCCL. `kilnc compile --tp 1` gives tp 1 with collectives of one rank
 * (NCCL's all-reduce and all-gather over one rank copy their input): the TP code path on one GPU.
 */
#ifndef KILN_ARTIFACT_H
#define KILN_ARTIFACT_H

#include <stdint.h>

#include "hash.h"
#include "safetensors.h"
#include "util.h"

#define KA_MAGIC "KILNART"
#define KA_VERSION 7 /* 3: overrides and generation defaults (kilnc compile's issue-18 flags);
                      * 4: the sampler draws from (seed, index) and takes no step counter;
                      * 5: tensor parallelism: tp, a shard per rank, collective steps, rank args;
                      * 6: kv_layers are [n_kv, head_dim, v_dim] (v_dim 0: no V cache, MLA);
                      * 7: steps of skinny_max rows and fewer (sizes mid and huge) */
#define KA_HEADER 40     /* bytes before the first section */
#define KA_ALIGN 256     /* sections start on this boundary */
#define KA_MAX_ARGS 20
#define KA_SHARD_ID_KEY "kiln_shard_id" /* __metadata__ key of the shard id (16 hex digits) */

/* Bounds on what a manifest may declare, checked before anything is allocated or used. They are
 * far above any real model and low enough that sizes computed from them cannot overflow. */
#define KA_MAX_STEPS (1 << 17) /* per schedule; a step takes ~700 bytes in memory */
#define KA_MAX_KERNELS (1 << 16)
#define KA_MAX_WEIGHTS (1 << 20)
#define KA_MAX_CONSTS (1 << 16)
#define KA_MAX_CONST_VALUES (1 << 24)
#define KA_MAX_LAYERS (1 << 16)
#define KA_MAX_BLOBS 64
#define KA_MAX_EOS 1024
#define KA_MAX_VOCAB (1 << 24)
#define KA_MAX_HIDDEN (1 << 20)
#define KA_MAX_TOKENS (1 << 24)  /* max_tokens (kilnc's --max-tokens range) */
#define KA_MAX_SEQS (1 << 24)    /* max_seqs (kilnc's --max-batch range) */
#define KA_MAX_SEQ_LEN (1 << 24) /* max_seq_len; max_seqs x max_seq_len must fit an int too */
#define KA_MAX_BYTES ((int64_t)1 << 44) /* slab, scratch, one weight */
#define KA_MAX_DIM ((int64_t)1 << 26)   /* GEMM n, k and leading dimensions */
#define KA_MAX_SMEM (228 * 1024)        /* dynamic shared memory of one block (sm_90) */
#define KA_MAX_OVERRIDES 256            /* recorded override lines (kilnc: 64 --override + 4) */
#define KA_MAX_OVERRIDE_LEN 4096        /* bytes of one line */
#define KA_MAX_LABEL_LEN 128            /* bytes of a classifier's label name (id2label) */
#define KA_MAX_TEMPERATURE 100.0        /* above this the softmax is flat to float precision */
#define KA_MAX_TP 64                    /* ranks (kilnc --tp's range, KC_MAX_TP) */

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
    KA_ARG_RANK,    /* int: i * rank, rank = this device's rank 0..tp-1 (ka_read checks that
                     * |i| <= INT32_MAX / KA_MAX_TP, so the product fits an int); the one kernel
                     * argument whose value differs by rank */
    KA_ARG_TMAP,    /* a TMA tensor map (a CUtensorMap, 128 bytes, by value) of the step's GEMM
                     * operands, made by the runtime at each launch (runtime/kcuda.h:
                     * kcuda_gemm90_maps, x of the step's M rows): i 0 of x, 1 of w, with
                     * gemm90's boxes; 2 of x, 3 of w, with gemm90_skinny's (kernels/kiln_gemm.h).
                     * A kernel step with one also has x, w, n, k and ldx (ka_step) */
    KA_NARGKINDS
} ka_arg_kind;

typedef struct ka_arg {
    ka_arg_kind kind;
    int64_t i;
    double f;
} ka_arg;

/* One grid dimension: ceil((t*T + s*n_seqs + q*max_q + add + sm*sms) / div), max_q = the most
 * tokens of one sequence in the step, sms the SM count of the device it runs on (a persistent
 * kernel's one block an SM: templates/gemm90.cuh). Written as [t, s, q, add, div], with sm as a
 * sixth element where it is not 0. */
typedef struct ka_grid {
    int t, s, q, add, div, sm;
} ka_grid;

#define KA_MAX_SMS 1024 /* the SM count ka_read bounds a grid's sm term by */

/* KA_ALLREDUCE and KA_ALLGATHER are collectives over the tp ranks (NCCL). Every rank runs the
 * same step at the same place in its schedule, after every step before it on its stream, so the
 * runtime issues them in schedule order on the device's stream (and captures them in the decode
 * CUDA graphs like any other step). Fields (with M = the step's rows: T or n_seqs, by `rows`, as
 * for a GEMM; elements are float when out_f32, else the artifact's dtype bf16/f16):
 *   KA_ALLREDUCE: y[M, n] = sum over ranks of x[M, n], contiguous rows (count M * n). x == y
 *     (same kind and offset) is in place; otherwise the two do not overlap.
 *     ncclAllReduce(x, y, M * n, dtype, ncclSum, comm, stream). An artifact with all-reduces
 *     also holds the kernel k<i>_allreduce_p2p (KILN_P2P_KERNEL, kernels/kiln_p2p.h) in its
 *     kernel table, which no step names: where one process drives every rank with peer access,
 *     the engine runs the all-reduces that fit its exchange buffers with it instead of NCCL.
 *   KA_ALLGATHER: y[tp][M][n] (rank-major: rank r's block at y + r * M * n elements) from each
 *     rank's x[M, n]; x and y do not overlap. ncclAllGather(x, y, M * n, dtype, comm, stream).
 *     (A kernel step after it reorders the blocks where the graph wants [M, n * tp] rows.)
 * x and y are KA_ARG_BUF, KA_ARG_SCRATCH or KA_ARG_LOGITS; ka_read checks that x's M * n and y's
 * M * n (* tp for the gather) elements fit their buffers at the largest step. size and logits
 * select the step as for any other (a collective inside a skipped variant is skipped on every
 * rank alike: the conditions depend only on T, n_seqs and the all-logits flag, which all ranks
 * share). w, bias, k, ldx, ldy, kernel, grid and args are unused (zero). */
typedef enum { KA_KERNEL, KA_GEMM, KA_ALLREDUCE, KA_ALLGATHER } ka_step_kind;
/* The rows a step runs at (ka_size_runs): any; small: at most gemv_max; large: more; mid: more
 * than gemv_max and at most skinny_max (the skinny GEMM); huge: more than skinny_max (the GEMM of
 * a linear that has a mid step; with skinny_max 0, more than gemv_max); one: exactly one, on a
 * device that runs code built for sm_90 or newer (the batch-1 GEMV, templates/gemv_stream.cuh,
 * whose older-SM body traps); few: at most gemv_max but not the one's (the GEMV of a linear
 * that has a one step); not_one: any but the one's (a norm folded into the one step). */
typedef enum {
    KA_SIZE_ANY,
    KA_SIZE_SMALL,
    KA_SIZE_LARGE,
    KA_SIZE_MID,
    KA_SIZE_HUGE,
    KA_SIZE_ONE,
    KA_SIZE_FEW,
    KA_SIZE_NOT_ONE
} ka_size;
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
     * (elements); y float when out_f32. Collectives use x, y, n, out_f32 and rows (above); a
     * kernel step with KA_ARG_TMAP arguments x, w, n, k and ldx (the tensors its maps describe:
     * x a buffer, w a weight [n, k]).
     * FP8 (w a KA_W_E4M3 weight): x is e4m3 rows too (templates/gemv.cuh's quant_fp8_rows, in
     * the weight's byte order, in scratch with ldx = k), no bias, and y the plain product of the
     * e4m3 values (fp8_rescale applies the rows' scales next). */
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

/* A weight's elements: the artifact's dtype (bf16/f16); the two tensors of an FP8 linear
 * weight that templates/gemv.cuh's gemv_fp8 and dequant_fp8 read, its e4m3 bytes (in their
 * byte order) and its float scales; or the two of an INT4 one (gemv_int4, dequant_int4): its
 * 4-bit values, two a byte (U8 [N, K/2]), and its scales and zero points (U32 [N, groups, 2]). */
typedef enum { KA_W_ACT, KA_W_E4M3, KA_W_F32, KA_W_INT4, KA_W_INT4SZ } ka_wtype;

typedef struct ka_weight {
    char *name;   /* tensor name in the shard */
    ka_wtype type; /* manifest "dtype": absent (KA_W_ACT), "f8_e4m3", "f32", "int4", "int4_sz" */
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

/* Per rank, a layer's K cache is [blocks][KILN_BLOCK][n_kv][head_dim] and its V cache
 * [blocks][KILN_BLOCK][n_kv][v_dim]. An ordinary attention layer has v_dim == head_dim; a
 * multi-head latent attention layer (templates/mla.cuh) has n_kv 1, head_dim RANK + DR (rows of
 * [latent | k_pe]) and v_dim 0: no V cache, the values are made from the latents. In an
 * artifact with kv_e4m3 (kilnc compile --kv-dtype fp8) each block is instead e4m3 rows and a
 * float scale per row and kv head (kernels/kiln_kv8.h; no MLA layer then): ka_kv_block_bytes. */
typedef struct ka_layer {
    int n_kv, head_dim, v_dim;
} ka_layer;

/* One rank's weight shard (artifact.h's opening comment says how the three values bind it). */
typedef struct ka_shard {
    char *path;          /* "shards/rank<r>-of-<tp>.safetensors", exactly (ka_read checks it) */
    uint64_t header_fnv; /* FNV-1a of the shard's header JSON (its padding included) */
    uint64_t hash;       /* chunked XXH3 of the shard's data (hash.h), chunk ka_manifest.shard_chunk */
    uint64_t id;         /* the id in the shard's __metadata__ */
} ka_shard;

typedef struct ka_blob {
    char *name;     /* "cubin.sm_90a", "ptx.compute_80", "source.cu" */
    uint64_t offset, len, hash; /* hash: XXH3-64 of the bytes */
} ka_blob;

/* Sampling defaults from the checkpoint's generation_config.json; kiln run applies each one the
 * user did not give as a flag. has_* is 0 for a value the file does not set (or with kilnc
 * compile --generation-config none). */
typedef struct ka_gen {
    int has_temperature, has_top_p, has_top_k, has_max_new;
    double temperature;  /* 0..KA_MAX_TEMPERATURE; 0 = greedy */
    double top_p;        /* (0, 1], nonzero as a float */
    int top_k;           /* 0..INT32_MAX; 0 = off */
    int max_new;         /* max_new_tokens: 0..KA_MAX_SEQ_LEN */
} ka_gen;

typedef struct ka_manifest {
    /* identity */
    char *model_name, *arch, *spec_name, *task, *dtype; /* dtype: "bf16" | "f16" */
    char *kilnc_version;
    uint64_t spec_hash, layout_hash;
    uint64_t config_hash; /* FNV-1a of the effective config (--config or config.json, with the
                           * overrides applied) as compact JSON with sorted keys */
    /* shapes and limits */
    int vocab, hidden, n_layers;
    int type_vocab;         /* rows of the token-type table (BERT-style models), 0: none */
    int max_tokens, max_seqs, max_seq_len, gemv_max;
    int skinny_max;         /* rows up to which mid steps run (above gemv_max), 0: no mid steps */
    int rope_switch;        /* longrope: a sequence longer than this rotates with the long factors
                               (kb_info.rope_switch); 0 none (limits.rope_switch, optional) */
    int64_t slab_bytes, scratch_bytes;
    int output_pool;        /* embedding model or classifier: output is [n_seqs, hidden] float
                               (a classifier's hidden is its number of labels) */
    char **labels;          /* task classify: the [hidden] label names (id2label); else NULL */
    ka_layer *layers;
    int n_eos;
    int *eos;               /* token ids that end a sequence (generation_config.json) */
    int bos;                /* -1 when none */
    ka_gen gen;             /* sampling defaults (generation_config.json) */
    /* How kilnc changed the checkpoint's config, pooling or generation defaults, one line per
     * flag (e.g. "--override rope_scaling.factor=8 (was 4)"); kiln inspect shows them. */
    int n_overrides;
    char **overrides;
    /* code */
    int nkernels;
    ka_kernel *kernels;
    int sample_kernel;      /* index, -1 for embedding models */
    int nprefill, ndecode;
    ka_step *prefill, *decode;
    int nweights;
    ka_weight *weights;
    int tp;                 /* ranks, 1..KA_MAX_TP; 1 for an artifact compiled without --tp */
    int collectives;        /* collective steps in prefill + decode (0: NCCL is not needed; tp 1
                             * without --tp); derived by ka_read, not stored */
    int gemm_kiln;          /* kilnc --gemm kiln: the prefill linears are kiln's own GEMM kernel
                             * (templates/gemm.cuh), no cuBLASLt step (ka_read checks that);
                             * "gemm": "kiln" | "cublaslt" in the manifest, absent: cublaslt */
    int batch_invariant;    /* kilnc compile --batch-invariant: implies gemm_kiln and tp 1, and
                             * no step of either schedule has a size condition (ka_read checks
                             * it); "batch_invariant": true in the manifest, absent: false */
    int cublaslt_steps;     /* KA_GEMM steps in prefill + decode (0: cuBLASLt is never loaded);
                             * derived by ka_read, not stored */
    int kv_e4m3;            /* kilnc compile --kv-dtype fp8: the KV cache holds e4m3 bytes and a
                             * float scale per token and kv head (kernels/kiln_kv8.h), which the
                             * kernels were compiled for; "kv_dtype": "f8_e4m3" in the manifest,
                             * absent: the compute dtype. An older kiln ignores the field and runs
                             * such an artifact correctly with the 16-bit cache's larger blocks
                             * (the FP8 blocks fit in them), at its smaller capacity */
    ka_shard *shards;       /* tp entries, shards[r] is rank r's */
    uint64_t shard_chunk;   /* the chunk size of every shard's data hash */
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
    int borrowed; /* data belongs to the caller (ka_read_mem) */
} ka_file;

/* Serialises the manifest to JSON (blobs must have been placed). */
char *ka_manifest_json(const ka_manifest *m);
/* Writes model.kiln: the blobs (in m->blobs order, offsets filled in) then the manifest; then
 * reads it back with ka_read, so that kilnc never leaves an artifact kiln would refuse. */
int ka_write(const char *path, ka_manifest *m, const void *const *blob_data, kerr *err);
/* Reads and validates model.kiln: header, layout, hashes, and every manifest field (see the top
 * of this file). Errors name the file and the field, with expected vs got. */
ka_file *ka_read(const char *path, kerr *err);
/* As ka_read, from bytes the caller keeps alive and unchanged while the result is used. */
ka_file *ka_read_mem(const char *path, const void *data, size_t len, kerr *err);
/* The header's hash: XXH3-64 of the header's first 32 bytes followed by the manifest. */
uint64_t ka_manifest_hash(const unsigned char *head32, const void *manifest, size_t len);
void ka_file_free(ka_file *f);
/* A model.kiln holding only `manifest` (no blobs), laid out and signed as ka_write does (heap;
 * *len set): for tests and fuzzers whose manifests must get past the checksum to the range
 * checks. */
unsigned char *ka_wrap_manifest(const void *manifest, size_t n, size_t *len);
void ka_manifest_free(ka_manifest *m);
/* The blob named `name`, or NULL. */
const ka_blob *ka_find_blob(const ka_manifest *m, const char *name);

const char *ka_arg_kind_name(ka_arg_kind k);
/* Whether a step of size `size` runs at `rows` rows (ka_size) on a device whose code (cubin or
 * PTX) is for sm_90 or newer (sm90) or older; its label for kiln inspect (" [rows <= gemv_max]",
 * ..., "" for any). */
int ka_size_runs(const ka_manifest *m, ka_size size, int64_t rows, int sm90);
const char *ka_size_label(ka_size size);
/* Whether kernel k is an instance of template function `op`: its name is k<i>_<op> (lower.c). */
int ka_kernel_is(const ka_kernel *k, const char *op);

/* Whether kernel step s takes TMA tensor maps (KA_ARG_TMAP), and so has the GEMM operands x, w,
 * n, k and ldx they describe. */
int ka_step_has_tmap(const ka_step *s);

/* Bytes of one KV block (KILN_BLOCK tokens) of layer l's K cache (v = 0) or V cache (v = 1): the
 * compute dtype's 2 bytes a value, or with kv_e4m3 the FP8 layout's. The runtime's sizes and
 * kiln inspect's use it. */
int64_t ka_kv_block_bytes(const ka_manifest *m, int l, int v);

/* ---- the weight shard; nothing here needs a GPU ---- */

/* Opens rank `rank`'s shard next to the artifact (dir/m->shards[rank].path; 0 <= rank < m->tp)
 * and checks what is cheap: its id against the manifest's entry for that rank (first, so a shard
 * of another model, rank or N is named as such; a missing file says which rank's it is), its
 * header fingerprint, and every weight the manifest lists (present, dtype, shape, size). The
 * data is not hashed here. No GPU and no NCCL are needed. */
st_set *ka_shard_open_rank(const ka_file *af, const char *dir, int rank, kerr *err);
/* The shard's data region (after its header). */
void ka_shard_data(const st_set *s, const unsigned char **data, uint64_t *len);
/* Starts hashing the shard's data on `threads` background threads (hash.h). Any rank's. */
hash_job *ka_shard_hash_start(const ka_manifest *m, const st_set *s, int threads);
/* Compares a finished hash with the manifest's entry for `rank`; an error names the shard. */
int ka_shard_hash_check_rank(const ka_file *af, int rank, const st_set *s, uint64_t got,
                             kerr *err);
/* Hashes rank `rank`'s shard data on `threads` threads (the caller's included) and checks it. */
int ka_shard_verify(const ka_file *af, int rank, const st_set *s, int threads, kerr *err);

#endif
