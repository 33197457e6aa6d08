/* kvcache — the paged KV cache's block allocator (the blocks themselves live in the backend).
 *
 * Blocks are ids 1 .. total, KILN_BLOCK tokens each. A sequence holds a growing list of blocks
 * (kv_seq): kv_grow gives it enough for n tokens, or fails without taking any when too few are
 * free; kv_release returns all of them (finish, cancel, preemption). Not thread-safe: the scheduler
 * owns it and runs on one thread.
 */
#ifndef KILN_KVCACHE_H
#define KILN_KVCACHE_H

#include <stdint.h>

typedef struct kvcache kvcache;

typedef struct kv_seq {
    int32_t *blocks;
    int n, cap;
} kv_seq;

kvcache *kv_new(int total);
void kv_free(kvcache *kv);
int kv_total(const kvcache *kv);
int kv_used(const kvcache *kv);
int kv_free_blocks(const kvcache *kv);
/* Blocks needed to hold n tokens. */
int kv_blocks_for(int n);
/* Grows s to hold n tokens: 0, or -1 (nothing taken) when not enough blocks are free. */
int kv_grow(kvcache *kv, kv_seq *s, int n);
/* Returns every block of s and empties it (its array is kept for reuse; kv_seq_free frees it). */
void kv_release(kvcache *kv, kv_seq *s);
void kv_seq_free(kv_seq *s);

#endif
