/* synth — `kilnc synth`: a random-weight Hugging Face checkpoint of a real model's shape.
 *
 * Each preset is the config.json its model ships on the Hub (the fields as they are there, with
 * two deliberate changes: llama3.2-1b is untied, like tests/gpu/synth_llama.py's "1b", so a decode
 * step reads a separate LM head; and mixtral-8x7b-2layers has 2 layers). The tensor list is derived
 * from the config (synth_tensors) with the names and shapes of that architecture's HF checkpoint;
 * `kilnc check` holds it to the archspecs.
 *
 * Values. Element e of tensor t is a function of (seed, FNV-1a of t's name, e) only: splitmix64 of
 * a counter gives 64 bits, four 16-bit lanes give four uniform samples on (-1, 1), scaled to the
 * wanted standard deviation (uniform, not normal: cheaper, and these weights only have to keep the
 * activations in range). So the bytes do not depend on the thread count, the sharding or (for the
 * layers both have) --layers. Linear weights and embeddings have std 0.02, biases 0.02, norm weights
 * 1 + (std 0.1).
 *
 * Why activations stay finite at any depth: every block reads the residual stream through an RMS
 * norm, so its input has rms about 1 whatever the stream's size. A linear of fan-in K with weights
 * of std 0.02 maps rms 1 to rms 0.02*sqrt(K): 1.3 (K = 4096) to 3.4 (K = 28,672). Attention's output
 * is a convex combination of V rows, so o_proj adds at most 0.02^2 * H (1.6 for H = 4096, 3.3 for
 * 8192); the gated MLP adds about 0.02*sqrt(I) * rms(silu(gate) * up), 2 to 6. The blocks' increments
 * are nearly independent, so the stream grows like sqrt(number of blocks), not exponentially: a few
 * tens after Llama 3 70B's 160 blocks. The final norm brings it back to rms 1 before the LM head
 * (logits of rms 0.02*sqrt(H), under 2). bf16's range is 3e38: nothing comes close. Measured with
 * kilnc ref --dump-nodes mlp_residual: on llama3.2-1b the stream's rms goes from 1.06 after layer 0
 * to 4.5 after layer 15 (sqrt(16) = 4x), logits rms 0.9; on tiny-llama --layers 80 from 0.05 to
 * 0.49 (sqrt(80) = 9x).
 *
 * Writing. The files are created at their full size (fallocate, so a full disk fails at once), the
 * safetensors headers written, then the tensors are cut into chunks of at most CHUNK bytes that the
 * threads take in order from an atomic counter, fill in a buffer of their own and pwrite in place.
 * No tensor or shard is ever held in memory whole.
 */
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "synth.h"

#define CHUNK (4u << 20)          /* bytes one thread generates and writes at a time */
#define DISK_MARGIN (64ull << 20) /* room left on the disk after writing */

/* ---------------------------------------------------------------- presets */

/* Llama 3 8B and 70B: meta-llama/Meta-Llama-3-{8B,70B}/config.json. */
#define LLAMA3(H, I, L, NH)                                                                        \
    "{\"architectures\": [\"LlamaForCausalLM\"], \"attention_bias\": false, "                     \
    "\"attention_dropout\": 0.0, \"bos_token_id\": 128000, \"eos_token_id\": 128001, "            \
    "\"hidden_act\": \"silu\", \"hidden_size\": " #H ", \"initializer_range\": 0.02, "             \
    "\"intermediate_size\": " #I ", \"max_position_embeddings\": 8192, \"model_type\": \"llama\", " \
    "\"num_attention_heads\": " #NH ", \"num_hidden_layers\": " #L ", \"num_key_value_heads\": 8, " \
    "\"pretraining_tp\": 1, \"rms_norm_eps\": 1e-05, \"rope_scaling\": null, "                     \
    "\"rope_theta\": 500000.0, \"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\", "    \
    "\"transformers_version\": \"4.40.0.dev0\", \"use_cache\": true, \"vocab_size\": 128256}"

static const synth_preset presets[] = {
    {"llama3-8b", "Llama 3 8B", LLAMA3(4096, 14336, 32, 32)},
    {"llama3.2-1b", "Llama 3.2 1B, untied (its own lm_head.weight)",
     /* meta-llama/Llama-3.2-1B/config.json, tie_word_embeddings false */
     "{\"architectures\": [\"LlamaForCausalLM\"], \"attention_bias\": false, "
     "\"attention_dropout\": 0.0, \"bos_token_id\": 128000, \"eos_token_id\": 128001, "
     "\"head_dim\": 64, \"hidden_act\": \"silu\", \"hidden_size\": 2048, "
     "\"initializer_range\": 0.02, \"intermediate_size\": 8192, "
     "\"max_position_embeddings\": 131072, \"mlp_bias\": false, \"model_type\": \"llama\", "
     "\"num_attention_heads\": 32, \"num_hidden_layers\": 16, \"num_key_value_heads\": 8, "
     "\"pretraining_tp\": 1, \"rms_norm_eps\": 1e-05, \"rope_scaling\": {\"factor\": 32.0, "
     "\"high_freq_factor\": 4.0, \"low_freq_factor\": 1.0, "
     "\"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"}, "
     "\"rope_theta\": 500000.0, \"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\", "
     "\"transformers_version\": \"4.45.0.dev0\", \"use_cache\": true, \"vocab_size\": 128256}"},
    {"llama3-70b", "Llama 3 70B", LLAMA3(8192, 28672, 80, 64)},
    {"qwen2.5-7b", "Qwen2.5 7B (biases on q, k, v)",
     /* Qwen/Qwen2.5-7B/config.json */
     "{\"architectures\": [\"Qwen2ForCausalLM\"], \"attention_dropout\": 0.0, "
     "\"bos_token_id\": 151643, \"eos_token_id\": 151643, \"hidden_act\": \"silu\", "
     "\"hidden_size\": 3584, \"initializer_range\": 0.02, \"intermediate_size\": 18944, "
     "\"max_position_embeddings\": 131072, \"max_window_layers\": 28, \"model_type\": \"qwen2\", "
     "\"num_attention_heads\": 28, \"num_hidden_layers\": 28, \"num_key_value_heads\": 4, "
     "\"rms_norm_eps\": 1e-06, \"rope_theta\": 1000000.0, \"sliding_window\": 131072, "
     "\"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\", "
     "\"transformers_version\": \"4.40.1\", \"use_cache\": true, \"use_mrope\": false, "
     "\"use_sliding_window\": false, \"vocab_size\": 152064}"},
    {"mixtral-8x7b-2layers", "Mixtral 8x7B's shape with 2 of its 32 layers",
     /* mistralai/Mixtral-8x7B-v0.1/config.json, num_hidden_layers 2 */
     "{\"architectures\": [\"MixtralForCausalLM\"], \"attention_dropout\": 0.0, "
     "\"bos_token_id\": 1, \"eos_token_id\": 2, \"hidden_act\": \"silu\", \"hidden_size\": 4096, "
     "\"initializer_range\": 0.02, \"intermediate_size\": 14336, "
     "\"max_position_embeddings\": 32768, \"model_type\": \"mixtral\", "
     "\"num_attention_heads\": 32, \"num_experts_per_tok\": 2, \"num_hidden_layers\": 2, "
     "\"num_key_value_heads\": 8, \"num_local_experts\": 8, \"output_router_logits\": false, "
     "\"rms_norm_eps\": 1e-05, \"rope_theta\": 1000000.0, \"router_aux_loss_coef\": 0.02, "
     "\"sliding_window\": null, \"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\", "
     "\"transformers_version\": \"4.36.0.dev0\", \"use_cache\": true, \"vocab_size\": 32000}"},
    {"tiny-llama", "a tiny Llama for tests (GQA, untied)",
     "{\"architectures\": [\"LlamaForCausalLM\"], \"attention_bias\": false, "
     "\"bos_token_id\": 1, \"eos_token_id\": 2, \"hidden_act\": \"silu\", \"hidden_size\": 128, "
     "\"intermediate_size\": 256, \"max_position_embeddings\": 512, \"model_type\": \"llama\", "
     "\"num_attention_heads\": 4, \"num_hidden_layers\": 2, \"num_key_value_heads\": 2, "
     "\"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0, \"tie_word_embeddings\": false, "
     "\"torch_dtype\": \"bfloat16\", \"vocab_size\": 1024}"},
    {"tiny-mixtral", "a tiny Mixtral for tests (4 experts, top 2)",
     "{\"architectures\": [\"MixtralForCausalLM\"], \"bos_token_id\": 1, \"eos_token_id\": 2, "
     "\"hidden_act\": \"silu\", \"hidden_size\": 128, \"intermediate_size\": 256, "
     "\"max_position_embeddings\": 512, \"model_type\": \"mixtral\", "
     "\"num_attention_heads\": 4, \"num_experts_per_tok\": 2, \"num_hidden_layers\": 2, "
     "\"num_key_value_heads\": 2, \"num_local_experts\": 4, \"rms_norm_eps\": 1e-05, "
     "\"rope_theta\": 1000000.0, \"sliding_window\": null, \"tie_word_embeddings\": false, "
     "\"torch_dtype\": \"bfloat16\", \"vocab_size\": 1024}"},
};

int synth_n_presets(void)
{
    return (int)ARRAY_LEN(presets);
}

const synth_preset *synth_preset_at(int i)
{
    assert(i >= 0 && i < synth_n_presets());
    return &presets[i];
}

const synth_preset *synth_find(const char *name)
{
    for (size_t i = 0; i < ARRAY_LEN(presets); i++)
        if (strcmp(presets[i].name, name) == 0)
            return &presets[i];
    return NULL;
}

/* ---------------------------------------------------------------- the tensor list */

typedef enum { INIT_LINEAR, INIT_NORM, INIT_BIAS } init_kind;

typedef struct tensor {
    char name[96];
    int ndim;
    int64_t shape[2];
    uint64_t n;     /* elements */
    init_kind init;
    uint64_t key;   /* the RNG stream: seed and name */
    int shard;
    uint64_t off;   /* byte offset in its shard's file (header included) */
} tensor;

typedef struct plan {
    json_t *config; /* the config.json written (num_hidden_layers overridden) */
    tensor *t;
    int n, cap;
    int n_shards;
    uint64_t *shard_size; /* file sizes */
    char **header;        /* each shard's header JSON, space padded to a multiple of 8 */
    uint64_t params, bytes;
} plan;

static void plan_free(plan *p)
{
    json_decref(p->config);
    free(p->t);
    for (int i = 0; i < p->n_shards; i++)
        free(p->header[i]);
    free(p->header);
    free(p->shard_size);
    memset(p, 0, sizeof *p);
}

static void add(plan *p, init_kind init, int64_t d0, int64_t d1, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void add(plan *p, init_kind init, int64_t d0, int64_t d1, const char *fmt, ...)
{
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 256;
        p->t = xrealloc(p->t, (size_t)p->cap * sizeof *p->t);
    }
    tensor *t = &p->t[p->n++];
    memset(t, 0, sizeof *t);
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    assert(len > 0 && (size_t)len < sizeof t->name);
    t->init = init;
    t->ndim = d1 ? 2 : 1;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->n = (uint64_t)d0 * (uint64_t)(d1 ? d1 : 1);
}

static int64_t cfg_int(json_t *c, const char *key, int64_t dflt)
{
    json_t *v = json_object_get(c, key);
    if (!v || json_is_null(v))
        return dflt;
    assert(json_is_integer(v)); /* the presets are ours */
    return json_integer_value(v);
}

/* The tensors of an HF checkpoint of config c, in the order HF's modeling code creates them. */
static void synth_tensors(plan *p)
{
    json_t *c = p->config;
    const char *type = json_string_value(json_object_get(c, "model_type"));
    assert(type);
    int64_t H = cfg_int(c, "hidden_size", 0), I = cfg_int(c, "intermediate_size", 0),
            L = cfg_int(c, "num_hidden_layers", 0), nh = cfg_int(c, "num_attention_heads", 0),
            nkv = cfg_int(c, "num_key_value_heads", nh), V = cfg_int(c, "vocab_size", 0),
            hd = cfg_int(c, "head_dim", nh ? H / nh : 0), E = cfg_int(c, "num_local_experts", 0);
    assert(H > 0 && I > 0 && L > 0 && nh > 0 && nkv > 0 && V > 0 && hd > 0);
    int qwen = strcmp(type, "qwen2") == 0, mixtral = strcmp(type, "mixtral") == 0;
    assert(qwen || mixtral || strcmp(type, "llama") == 0);
    assert(!mixtral || E > 0);
    assert(!json_is_true(json_object_get(c, "tie_word_embeddings")));

    add(p, INIT_LINEAR, V, H, "model.embed_tokens.weight");
    for (int64_t i = 0; i < L; i++) {
        char pre[48];
        snprintf(pre, sizeof pre, "model.layers.%d.", (int)i);
        add(p, INIT_NORM, H, 0, "%sinput_layernorm.weight", pre);
        add(p, INIT_LINEAR, nh * hd, H, "%sself_attn.q_proj.weight", pre);
        if (qwen)
            add(p, INIT_BIAS, nh * hd, 0, "%sself_attn.q_proj.bias", pre);
        add(p, INIT_LINEAR, nkv * hd, H, "%sself_attn.k_proj.weight", pre);
        if (qwen)
            add(p, INIT_BIAS, nkv * hd, 0, "%sself_attn.k_proj.bias", pre);
        add(p, INIT_LINEAR, nkv * hd, H, "%sself_attn.v_proj.weight", pre);
        if (qwen)
            add(p, INIT_BIAS, nkv * hd, 0, "%sself_attn.v_proj.bias", pre);
        add(p, INIT_LINEAR, H, nh * hd, "%sself_attn.o_proj.weight", pre);
        add(p, INIT_NORM, H, 0, "%spost_attention_layernorm.weight", pre);
        if (mixtral) {
            /* the Hub's per-expert layout (w1 gate, w3 up, w2 down) */
            add(p, INIT_LINEAR, E, H, "%sblock_sparse_moe.gate.weight", pre);
            for (int64_t e = 0; e < E; e++) {
                add(p, INIT_LINEAR, I, H, "%sblock_sparse_moe.experts.%d.w1.weight", pre, (int)e);
                add(p, INIT_LINEAR, H, I, "%sblock_sparse_moe.experts.%d.w2.weight", pre, (int)e);
                add(p, INIT_LINEAR, I, H, "%sblock_sparse_moe.experts.%d.w3.weight", pre, (int)e);
            }
        } else {
            add(p, INIT_LINEAR, I, H, "%smlp.gate_proj.weight", pre);
            add(p, INIT_LINEAR, I, H, "%smlp.up_proj.weight", pre);
            add(p, INIT_LINEAR, H, I, "%smlp.down_proj.weight", pre);
        }
    }
    add(p, INIT_NORM, H, 0, "model.norm.weight");
    add(p, INIT_LINEAR, V, H, "lm_head.weight");
}

/* The safetensors header of tensors [first, last) as stored in one shard, with data offsets from
 * the start of the data; space padded so the data starts 8-byte aligned (as safetensors does). */
static char *shard_header(const plan *p, int first, int last, uint64_t *len)
{
    /* printed, not built with jansson (a plan may have 120,000 tensors: 10,000 layers); the
     * names are ours, with no character that JSON would escape */
    size_t cap = 64 + (size_t)(last - first) * 192, n = 0;
    char *out = xmalloc(cap);
    n += (size_t)snprintf(out, cap, "{\"__metadata__\":{\"format\":\"pt\"}");
    uint64_t off = 0;
    for (int i = first; i < last; i++) {
        const tensor *t = &p->t[i];
        char shape[48];
        if (t->ndim == 2)
            snprintf(shape, sizeof shape, "%lld,%lld", (long long)t->shape[0], (long long)t->shape[1]);
        else
            snprintf(shape, sizeof shape, "%lld", (long long)t->shape[0]);
        int w = snprintf(out + n, cap - n,
                         ",\"%s\":{\"dtype\":\"BF16\",\"shape\":[%s],\"data_offsets\":[%llu,%llu]}",
                         t->name, shape, (unsigned long long)off,
                         (unsigned long long)(off + 2 * t->n));
        assert(w > 0 && (size_t)w < cap - n); /* 192 bytes hold a 96-byte name and the numbers */
        n += (size_t)w;
        off += 2 * t->n;
    }
    size_t padded = (n + 1 + 7) & ~(size_t)7;
    out = xrealloc(out, padded + 1);
    out[n++] = '}';
    memset(out + n, ' ', padded - n);
    out[padded] = 0;
    *len = padded;
    return out;
}

/* The whole plan: config, tensors, shards, offsets. */
static int make_plan(plan *p, const synth_preset *pr, int layers, uint64_t seed,
                     uint64_t shard_bytes, kerr *err)
{
    memset(p, 0, sizeof *p);
    json_error_t je;
    p->config = json_loads(pr->config, 0, &je);
    assert(p->config); /* the presets are ours */
    if (layers)
        json_object_set_new(p->config, "num_hidden_layers", json_integer(layers));
    synth_tensors(p);

    /* shards: a new one before a tensor that would take the current one past shard_bytes */
    int *first = xmalloc(((size_t)p->n + 1) * sizeof *first);
    uint64_t cur = 0;
    for (int i = 0; i < p->n; i++) {
        tensor *t = &p->t[i];
        uint64_t b = 2 * t->n;
        if (i == 0 || (cur > 0 && cur + b > shard_bytes)) {
            first[p->n_shards++] = i;
            cur = 0;
        }
        t->shard = p->n_shards - 1;
        cur += b;
        p->params += t->n;
        t->key = seed ^ util_fnv1a(t->name, strlen(t->name), UTIL_FNV_SEED);
    }
    first[p->n_shards] = p->n;
    if (p->n_shards > 99999) {
        free(first);
        plan_free(p);
        return kerr_add(err, "--shard-mib: that makes more than 99999 shards (the file names "
                             "have 5 digits); give a larger size");
    }
    p->header = xcalloc((size_t)p->n_shards, sizeof *p->header);
    p->shard_size = xcalloc((size_t)p->n_shards, sizeof *p->shard_size);
    for (int s = 0; s < p->n_shards; s++) {
        uint64_t hl;
        p->header[s] = shard_header(p, first[s], first[s + 1], &hl);
        uint64_t off = 8 + hl;
        for (int i = first[s]; i < first[s + 1]; i++) {
            p->t[i].off = off;
            off += 2 * p->t[i].n;
        }
        p->shard_size[s] = off;
        p->bytes += off;
    }
    free(first);
    return 0;
}

int synth_size(const synth_preset *pr, int layers, uint64_t *params, uint64_t *bytes, kerr *err)
{
    plan p;
    if (make_plan(&p, pr, layers, 0, 4ull << 30, err))
        return -1;
    *params = p.params;
    *bytes = p.bytes;
    plan_free(&p);
    return 0;
}

/* ---------------------------------------------------------------- values */

static inline uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static inline uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even; the values are finite */
    return (uint16_t)(u >> 16);
}

/* The 64 random bits of group g (elements 4g .. 4g+3) of the stream key. */
static inline uint64_t bits(uint64_t key, uint64_t g)
{
    return splitmix64(key + g * 0xd1b54a32d192ed03ull);
}

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "lanes are read as 16-bit words");

/* Elements [e0, e0 + n) of t into out (e0 a multiple of 4). Element 4g + k is
 * mean + std * sqrt(3) * u, u uniform on (-1, 1) from bits 16k .. 16k+15 of bits(key, g). The
 * main loop takes 64 elements at a time, hashing 16 groups first so that the conversion loop
 * vectorises (3.4 times faster than one group at a time); the tail gives the same values. */
static void fill(const tensor *t, uint64_t e0, uint64_t n, uint16_t *out)
{
    float stdev = t->init == INIT_NORM ? 0.1f : 0.02f, mean = t->init == INIT_NORM ? 1.0f : 0.0f;
    float scale = stdev * 1.7320508f / 32768.0f, shift = -32767.5f;
    assert(e0 % 4 == 0);
    uint64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        uint64_t r[16];
        uint16_t lane[64];
        for (int k = 0; k < 16; k++)
            r[k] = bits(t->key, (e0 + i) / 4 + (uint64_t)k);
        memcpy(lane, r, sizeof lane);
        for (int k = 0; k < 64; k++)
            out[i + k] = to_bf16(mean + scale * ((float)lane[k] + shift));
    }
    for (; i < n; i++) {
        uint64_t r = bits(t->key, (e0 + i) / 4);
        out[i] = to_bf16(mean + scale * ((float)((r >> (16 * ((e0 + i) % 4))) & 0xffff) + shift));
    }
}

/* ---------------------------------------------------------------- writing */

typedef struct chunk {
    int tensor;
    uint64_t e0, n; /* elements */
} chunk;

typedef struct job {
    const plan *p;
    const int *fd; /* per shard */
    const chunk *c;
    size_t n_chunks;
    atomic_size_t next;
    atomic_uint_fast64_t done; /* bytes written */
    atomic_int failed;
    int running;        /* workers not finished, under mu */
    pthread_mutex_t mu; /* err, running */
    pthread_cond_t cv;  /* signalled when a worker finishes */
    kerr *err;
    const char *out;
} job;

static void *worker(void *arg)
{
    job *j = arg;
    uint16_t *buf = malloc(CHUNK);
    if (!buf) {
        pthread_mutex_lock(&j->mu);
        if (!atomic_exchange(&j->failed, 1))
            kerr_add(j->err, "out of memory for a %u MiB buffer", CHUNK >> 20);
        pthread_mutex_unlock(&j->mu);
    }
    while (buf && !atomic_load(&j->failed)) {
        size_t k = atomic_fetch_add(&j->next, 1);
        if (k >= j->n_chunks)
            break;
        const chunk *c = &j->c[k];
        const tensor *t = &j->p->t[c->tensor];
        fill(t, c->e0, c->n, buf);
        const char *b = (const char *)buf;
        uint64_t left = 2 * c->n, off = t->off + 2 * c->e0;
        while (left > 0) {
            ssize_t w = pwrite(j->fd[t->shard], b, left, (off_t)off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                int e = w < 0 ? errno : ENOSPC;
                pthread_mutex_lock(&j->mu);
                if (!atomic_exchange(&j->failed, 1))
                    kerr_add(j->err, "%s: writing shard %d of %d at byte %llu: %s", j->out,
                             t->shard + 1, j->p->n_shards, (unsigned long long)off, strerror(e));
                pthread_mutex_unlock(&j->mu);
                break;
            }
            b += w, off += (uint64_t)w, left -= (uint64_t)w;
        }
        atomic_fetch_add(&j->done, 2 * c->n);
    }
    free(buf);
    pthread_mutex_lock(&j->mu);
    j->running--;
    pthread_cond_signal(&j->cv);
    pthread_mutex_unlock(&j->mu);
    return NULL;
}

static char *shard_name(int s, int n)
{
    return n == 1 ? xstrdup("model.safetensors") : xasprintf("model-%05d-of-%05d.safetensors", s + 1, n);
}

static int write_json(const char *dir, const char *name, json_t *j, kerr *err)
{
    char *path = util_path_join(dir, name);
    /* precision 15: 1e-05 and 500000.0 print as Python writes them */
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15));
    assert(s);
    size_t n = strlen(s);
    s = xrealloc(s, n + 2);
    s[n] = '\n';
    int rc = util_write_file(path, s, n + 1, err);
    free(s);
    free(path);
    return rc;
}

/* 1: path is a folder with an entry other than . and ..; 0: empty; -1: cannot be read */
static int dir_nonempty(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return -1;
    struct dirent *e;
    int any = 0;
    while (!any && (e = readdir(d)))
        any = strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return any;
}

/* --force: removes the safetensors files an earlier synth (or HF's save_pretrained) left in dir,
 * so that a stale index or shard of another layout cannot be read with the new ones. */
static int remove_old(const char *dir, kerr *err)
{
    DIR *d = opendir(dir);
    if (!d)
        return kerr_add(err, "%s: cannot read this folder: %s", dir, strerror(errno));
    struct dirent *e;
    int rc = 0;
    while (rc == 0 && (e = readdir(d))) {
        const char *n = e->d_name;
        if (strcmp(n, "model.safetensors") && strcmp(n, "model.safetensors.index.json") &&
            fnmatch("model-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].safetensors", n,
                    0))
            continue;
        char *path = util_path_join(dir, n);
        if (unlink(path) != 0)
            rc = kerr_add(err, "%s: cannot remove it (--force replaces the model files): %s", path,
                          strerror(errno));
        free(path);
    }
    closedir(d);
    return rc;
}

/* Creates and sizes the shard files and writes their headers. */
static int open_shards(const plan *p, const char *out, int *fd, kerr *err)
{
    for (int s = 0; s < p->n_shards; s++) {
        char *name = shard_name(s, p->n_shards), *path = util_path_join(out, name);
        free(name);
        fd[s] = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        int rc = fd[s] < 0 ? -1 : fallocate(fd[s], 0, 0, (off_t)p->shard_size[s]);
        if (rc < 0 && fd[s] >= 0 && (errno == EOPNOTSUPP || errno == ENOSYS))
            rc = ftruncate(fd[s], (off_t)p->shard_size[s]); /* a filesystem without fallocate */
        uint64_t hl = strlen(p->header[s]);
        unsigned char len8[8];
        for (int i = 0; i < 8; i++)
            len8[i] = (unsigned char)(hl >> (8 * i));
        if (rc == 0)
            rc = pwrite(fd[s], len8, 8, 0) == 8 &&
                         pwrite(fd[s], p->header[s], hl, 8) == (ssize_t)hl
                     ? 0
                     : -1;
        if (rc < 0) {
            kerr_add(err, "%s: cannot create this %.2f GB file: %s", path,
                     p->shard_size[s] / 1e9, strerror(errno));
            free(path);
            return -1;
        }
        free(path);
    }
    return 0;
}

static int write_index(const plan *p, const char *out, kerr *err)
{
    json_t *map = json_object();
    for (int i = 0; i < p->n; i++) {
        char *name = shard_name(p->t[i].shard, p->n_shards);
        json_object_set_new(map, p->t[i].name, json_string(name));
        free(name);
    }
    json_t *idx = json_pack("{s:{s:I},s:o}", "metadata", "total_size",
                            (json_int_t)(2 * p->params), "weight_map", map);
    int rc = write_json(out, "model.safetensors.index.json", idx, err);
    json_decref(idx);
    return rc;
}

/* Generates every tensor on o->threads threads. */
static int write_tensors(const plan *p, const synth_opts *o, const int *fd, kerr *err)
{
    /* the chunks, in file order; each a multiple of 4 elements except a tensor's last */
    const uint64_t per = CHUNK / 2;
    size_t n = 0, cap = 1024;
    chunk *c = xmalloc(cap * sizeof *c);
    for (int i = 0; i < p->n; i++)
        for (uint64_t e = 0; e < p->t[i].n; e += per) {
            if (n == cap)
                c = xrealloc(c, (cap *= 2) * sizeof *c);
            c[n++] = (chunk){i, e, p->t[i].n - e < per ? p->t[i].n - e : per};
        }
    job j = {.p = p, .fd = fd, .c = c, .n_chunks = n, .err = err, .out = o->out};
    atomic_init(&j.next, 0);
    atomic_init(&j.done, 0);
    atomic_init(&j.failed, 0);
    pthread_mutex_init(&j.mu, NULL);
    pthread_cond_init(&j.cv, NULL);
    pthread_t *th = xcalloc((size_t)o->threads, sizeof *th);
    int started = 0;
    for (; started < o->threads; started++) {
        pthread_mutex_lock(&j.mu);
        j.running++;
        pthread_mutex_unlock(&j.mu);
        if (pthread_create(&th[started], NULL, worker, &j)) {
            pthread_mutex_lock(&j.mu);
            j.running--;
            pthread_mutex_unlock(&j.mu);
            break;
        }
    }
    if (started == 0) {
        /* no thread could be started: do the work here */
        pthread_mutex_lock(&j.mu);
        j.running++;
        pthread_mutex_unlock(&j.mu);
        worker(&j);
    }
    uint64_t total = 0;
    for (int i = 0; i < p->n; i++)
        total += 2 * p->t[i].n;
    /* wake every 0.2 s for the progress line until the last worker is done */
    pthread_mutex_lock(&j.mu);
    while (j.running > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 200 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&j.cv, &j.mu, &ts);
        if (o->progress && j.running > 0) {
            pthread_mutex_unlock(&j.mu);
            o->progress(o->progress_ctx, atomic_load(&j.done), total);
            pthread_mutex_lock(&j.mu);
        }
    }
    pthread_mutex_unlock(&j.mu);
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    free(th);
    free(c);
    pthread_cond_destroy(&j.cv);
    pthread_mutex_destroy(&j.mu);
    if (atomic_load(&j.failed))
        return -1;
    if (o->progress)
        o->progress(o->progress_ctx, total, total);
    return 0;
}

int synth_write(const synth_opts *o, uint64_t *params, uint64_t *bytes, kerr *err)
{
    const synth_preset *pr = synth_find(o->like);
    assert(pr && o->out && o->threads >= 1 && o->threads <= SYNTH_MAX_THREADS);
    assert(o->layers >= 0 && o->layers <= SYNTH_MAX_LAYERS && o->shard_bytes > 0);

    plan p;
    if (make_plan(&p, pr, o->layers, o->seed, o->shard_bytes, err))
        return -1;

    int existed = util_is_dir(o->out);
    if (existed) {
        int ne = dir_nonempty(o->out);
        if (ne < 0) {
            kerr_add(err, "%s: cannot read this folder: %s", o->out, strerror(errno));
            goto fail;
        }
        if (ne && !o->force) {
            kerr_add(err, "%s: the folder is not empty; give an empty or new folder, or --force "
                          "to write into it (replacing its config.json, generation_config.json "
                          "and model safetensors)",
                     o->out);
            goto fail;
        }
    } else if (util_mkdirs(o->out, err))
        goto fail;

    struct statvfs sv;
    if (statvfs(o->out, &sv) != 0) {
        kerr_add(err, "%s: cannot read the free space of its filesystem: %s", o->out,
                 strerror(errno));
        goto fail;
    }
    uint64_t avail = (uint64_t)sv.f_bavail * (uint64_t)sv.f_frsize;
    if (avail < p.bytes + DISK_MARGIN) {
        kerr_add(err, "%s: not enough disk space: %s needs %.2f GB (plus %llu MB to spare), the "
                      "filesystem has %.2f GB free; free some space or write elsewhere",
                 o->out, pr->name, p.bytes / 1e9, (unsigned long long)(DISK_MARGIN >> 20),
                 avail / 1e9);
        if (!existed)
            rmdir(o->out);
        goto fail;
    }

    if (existed && o->force && remove_old(o->out, err))
        goto fail;

    json_t *gen = json_pack("{s:O,s:O}", "bos_token_id", json_object_get(p.config, "bos_token_id"),
                            "eos_token_id", json_object_get(p.config, "eos_token_id"));
    int rc = write_json(o->out, "config.json", p.config, err) ||
             write_json(o->out, "generation_config.json", gen, err) ||
             (p.n_shards > 1 && write_index(&p, o->out, err));
    json_decref(gen);
    if (rc)
        goto fail;

    int *fd = xmalloc((size_t)p.n_shards * sizeof *fd);
    for (int s = 0; s < p.n_shards; s++)
        fd[s] = -1;
    rc = open_shards(&p, o->out, fd, err);
    if (rc == 0)
        rc = write_tensors(&p, o, fd, err);
    for (int s = 0; s < p.n_shards; s++)
        if (fd[s] >= 0 && close(fd[s]) != 0 && rc == 0)
            rc = kerr_add(err, "%s: closing shard %d: %s", o->out, s + 1, strerror(errno));
    free(fd);
    if (rc)
        goto fail;
    *params = p.params;
    *bytes = p.bytes;
    plan_free(&p);
    return 0;
fail:
    plan_free(&p);
    return -1;
}
