/* backend — what the scheduler (sched.h) drives: one step of a model over a set of work items.
 *
 * Two backends implement it: the GPU engine (engine.c, a compiled artifact) and the CPU reference
 * interpreter (compiler/backend_ref.c, a Hugging Face checkpoint run by kilnc's fp32 `ref`; slow,
 * for tests and for trying the server without a GPU). Neither knows about requests, text or HTTP.
 *
 * A step takes work items, at most info->max_seqs of them with at most info->max_tokens tokens in
 * all. An item appends n tokens to one sequence: its next prefill chunk (n >= 1, several chunks
 * over several steps for a long prompt) or its next decode token (n == 1). The sequence lives in a
 * slot (0 .. max_seqs-1) chosen by the scheduler and stable while it runs, and its keys and values
 * in the KV blocks the scheduler allocated (kvcache.h): blocks[] covers positions 0 .. pos+n-1,
 * block b holding positions b*KILN_BLOCK .. b*KILN_BLOCK+KILN_BLOCK-1. Block ids are 1 ..
 * info->kv_blocks (block 0 is the backend's own scratch). pos is the number of the sequence's
 * tokens already in the cache: 0 for a new (or preempted and restarted) sequence, whose slot the
 * backend then treats as empty whatever ran in it before.
 *
 * When item.sample is set, the backend samples the token that follows the item's last token
 * (sp: temperature 0 = greedy; sp.index is the RNG counter, the number of tokens the request has
 * generated so far, so a seeded request draws the same stream alone or in any batch) and, when
 * item.logprobs > 0, its log-probability and the item.logprobs most likely tokens with theirs
 * (from the raw logits, log-softmax, before temperature/top-k/top-p).
 *
 * Embedding models (info->embed): an item is a whole prompt (never split, n <= max_tokens),
 * nothing is sampled, and item.embedding receives the pooled vector [info->hidden].
 * Classifiers (info->classify, with info->embed set: they run the same way) return their
 * label scores there instead: info->hidden is the number of labels, info->labels their names.
 */
#ifndef KILN_BACKEND_H
#define KILN_BACKEND_H

#include <stdint.h>

#include "util.h"
#include "../kernels/kiln_step.h"

struct ka_gen; /* artifact.h */

#define KB_MAX_LOGPROBS 5

typedef struct kb_info {
    const char *model;      /* the model's name (the checkpoint folder's base name) */
    int max_seqs;           /* items per step (the compiled maximum batch) */
    int max_tokens;         /* tokens per step (the compiled tokens-per-step) */
    int max_seq_len;        /* prompt + generated tokens of one sequence */
    int vocab;
    int type_vocab;         /* token types are 0 .. type_vocab-1; 0: the model takes none */
    int hidden;             /* width of an embedding */
    int embed;              /* an embedding model, or a classifier (one vector per sequence) */
    int classify;           /* a classifier: the vector is its scores, hidden = labels */
    const char *const *labels; /* classify: the [hidden] label names (config.json id2label) */
    int kv_blocks;          /* usable KV blocks, ids 1 .. kv_blocks */
    int rope_switch;        /* longrope: a sequence longer than this many tokens rotates with the
                             * long factors from its first token (kb_item.rope_len); 0: none */
    int batch_invariant;    /* an item's tokens and logits do not depend on the other items of
                             * its step, provided no step mixes decode tokens with prefill chunks
                             * (kilnc compile --batch-invariant): the scheduler then runs the
                             * decodes and the chunks it plans together as two steps */
    int n_eos;
    const int32_t *eos;     /* end-of-sequence ids */
    const struct ka_gen *gen; /* generation_config.json's sampling defaults (artifact.h), as the
                               * manifest or the checkpoint has them */
} kb_info;

typedef struct kb_item {
    /* in */
    int slot;
    int pos;                /* tokens of the sequence already in the cache */
    int n;                  /* tokens appended by this item */
    const int32_t *ids;     /* [n] */
    const int32_t *types;   /* [n] token types, or NULL (all 0) */
    const int32_t *blocks;  /* KV blocks covering pos + n tokens */
    int nblocks;
    int prefill;            /* a prefill chunk (of the prompt, or of a recomputed sequence), not
                             * the decode of the last generated token, whatever n is: a
                             * batch-invariant backend runs it with its prefill kernels even at
                             * n == 1, so a prompt token takes the same kernels however the prompt
                             * was chunked (callers without a scheduler may leave it 0) */
    int rope_len;           /* the sequence's length as longrope's switch sees it: the whole
                             * prompt (or recomputed sequence) while it is prefilled in chunks,
                             * as transformers' one forward over it; pos + n when less (0) */
    int sample;             /* sample the next token after the last one */
    kiln_sample sp;
    int logprobs;           /* 0 .. KB_MAX_LOGPROBS: top alternatives to report (with sample) */
    float *prompt_logits;   /* if set: [n, vocab] logits at each appended position */
    float *embedding;       /* embedding models: [hidden] */
    /* out (when sample) */
    int32_t token;
    float logprob;          /* of token (guaranteed only when logprobs > 0) */
    int32_t top_ids[KB_MAX_LOGPROBS];
    float top_logprobs[KB_MAX_LOGPROBS];
} kb_item;

typedef struct kbackend kbackend;
struct kbackend {
    const kb_info *info;
    /* Runs one step. Items are valid (the scheduler checked them against info); an error is a
     * device failure, after which the backend is unusable. */
    int (*step)(kbackend *b, kb_item *items, int n, kerr *err);
    /* A line saying what runs where, for the logs. */
    const char *(*describe)(kbackend *b);
    void (*free)(kbackend *b);
};

/* Log-softmax of one row of logits: the log-probability of `token` and the n (<= KB_MAX_LOGPROBS)
 * most likely ids with theirs, most likely first (ties: the lower id). Shared by the backends. */
void kb_logprobs(const float *logits, int vocab, int32_t token, int n, float *logprob,
                 int32_t *top_ids, float *top_logprobs);

/* The GPU sampler (templates/sample.cuh) on the CPU: the same token for the same logits and
 * parameters, bit for bit except where expf and the GPU's __expf round a token's fixed-point
 * weight differently right at an interval boundary. `threads` is the sampler's block size
 * (KILN_SAMPLE_THREADS for the engine's): the draw depends on it. The CPU backend samples with
 * it; tests/gpu/ktest_sample.c checks the kernel against it. */
int32_t kb_sample_cpu(const float *logits, int vocab, const kiln_sample *sp, int threads);

/* kb_sample_cpu in its three parts, for tests that need the kept set and its weights. */
typedef struct kb_sample_plan {
    int greedy;          /* temperature <= 0 (or NaN) or no finite maximum: the argmax */
    int32_t argmax;      /* ties: the lowest id; NaN counts as -inf */
    uint32_t thr;        /* the kept tokens (top-k, top-p): order key >= thr */
    float m, inv_t;      /* the maximum logit, 1 / temperature */
} kb_sample_plan;
void kb_sample_plan_make(const float *logits, int vocab, const kiln_sample *sp, kb_sample_plan *p);
/* w[i] = the fixed-point weight round(exp((l_i - m) / T) * 2^31) of each kept token, 0 for the
 * others; returns their sum. Not for a greedy plan. */
uint64_t kb_sample_weights(const kb_sample_plan *p, const float *logits, int vocab, uint32_t *w);
/* The token drawn from (sp->seed, sp->index) given the weights and their sum. */
int32_t kb_sample_draw(const kb_sample_plan *p, const uint32_t *w, uint64_t total, int vocab,
                       const kiln_sample *sp, int threads);

#endif
