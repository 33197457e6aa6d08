/* kiln_step.h — the per-step batch description, shared by the runtime (C) and the kernels
 * (CUDA C++). Passed BY VALUE as a kernel parameter (`kiln_step st`), so a captured CUDA graph
 * holds the values of its batch bucket; the arrays it points to live in device memory and are
 * refilled by the runtime before each step.
 *
 * A step is T tokens from n_seqs sequences, grouped: the tokens of sequence s are
 * [seq_start[s], seq_start[s+1]). A prefill step carries whole prompts (or chunks of them);
 * a decode step carries one token per sequence (T == n_seqs).
 *
 * The paged KV cache of each layer is K and V arrays of [num_blocks][KILN_BLOCK][n_kv][hd];
 * sequence s's token at position p lives in block block_table[s*max_blocks + p/KILN_BLOCK],
 * row p%KILN_BLOCK. Block 0 is a scratch block that padding tokens write to.
 */
#ifndef KILN_STEP_H
#define KILN_STEP_H

#define KILN_BLOCK 32 /* tokens per KV-cache block */

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define KILN_DPTR(t) const t *
#else
#include <stdint.h>
#define KILN_DPTR(t) uint64_t
#endif

typedef struct kiln_step {
    int T;                        /* tokens in this step */
    int n_seqs;                   /* sequences in this step */
    int max_blocks;               /* columns of block_table */
    int pad_;
    KILN_DPTR(int) tok_ids;       /* [T] token ids */
    KILN_DPTR(int) tok_pos;       /* [T] position of the token in its sequence */
    KILN_DPTR(int) tok_type;      /* [T] token type ids (BERT-style); 0 when not given */
    KILN_DPTR(int) tok_seq;       /* [T] sequence index of the token */
    KILN_DPTR(int) tok_slot;      /* [T] KV slot: block * KILN_BLOCK + row */
    KILN_DPTR(int) seq_start;     /* [n_seqs + 1] first token of each sequence in this step */
    KILN_DPTR(int) seq_kvlen;     /* [n_seqs] keys of each sequence, this step included */
    KILN_DPTR(int) block_table;   /* [n_seqs * max_blocks] */
    KILN_DPTR(int) seq_ropelen;   /* [n_seqs] the sequence's length as longrope's switch sees it
                                   * (kb_item.rope_len): >= seq_kvlen, its whole prompt while
                                   * that is prefilled in chunks */
} kiln_step;

/* Sampling parameters of one sequence (sample.cuh). temperature 0 = greedy. A draw is a function
 * of (logits, these parameters) only: the RNG counter is `index`, the number of tokens the request
 * has generated so far, so a seeded request draws the same stream alone or in any batch. */
typedef struct kiln_sample {
    float temperature;
    float top_p;     /* 1 = off (so is 0, as in a zeroed struct) */
    int top_k;       /* 0 = off */
    int index;       /* RNG counter: tokens generated so far by this request */
    unsigned long long seed;
} kiln_sample;

/* Threads per block of the compiled sampler (compiler/lower.c). A draw depends on it (sample.cuh
 * lays the kept tokens out in thread-major order), so the CPU replica (kb_sample_cpu) takes it. */
#define KILN_SAMPLE_THREADS 1024

#endif
