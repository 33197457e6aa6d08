/* kvcache — the paged KV cache's block allocator (kvcache.h): which block ids are free, which
 * sequence holds which. The blocks' memory is the backend's; this file only hands out numbers.
 *
 * The free blocks are a stack of ids (1 .. total), so taking or returning a block is O(1) and a
 * freshly created cache hands out 1, 2, 3, ... in order (which makes test logs readable). A
 * sequence's blocks are an array in position order: block i holds positions i*KILN_BLOCK ..
 * i*KILN_BLOCK+KILN_BLOCK-1, exactly what backend.h's item.blocks expects. kv_grow is
 * all-or-nothing, so a failed grow never leaves a sequence half-extended; the scheduler then
 * preempts someone and tries again. Nothing here is thread-safe: the scheduler owns it.
 */
#include "kvcache.h"

#include <assert.h>
#include <stdlib.h>

#include "util.h"
#include "../kernels/kiln_step.h"

struct kvcache {
    int total;
    int nfree;
    int32_t *free;   /* [total] stack of free ids; the top is free[nfree-1] */
};

kvcache *kv_new(int total)
{
    assert(total >= 1 && "kv_new: the backend reported no KV blocks");
    kvcache *kv = xcalloc(1, sizeof *kv);
    kv->total = total;
    kv->free = xmalloc((size_t)total * sizeof *kv->free);
    /* pushed from the highest id down, so the first kv_grow takes block 1 */
    for (int i = 0; i < total; i++)
        kv->free[i] = total - i;
    kv->nfree = total;
    return kv;
}

void kv_free(kvcache *kv)
{
    if (!kv)
        return;
    free(kv->free);
    free(kv);
}

int kv_total(const kvcache *kv) { return kv->total; }
int kv_used(const kvcache *kv) { return kv->total - kv->nfree; }
int kv_free_blocks(const kvcache *kv) { return kv->nfree; }

int kv_blocks_for(int n)
{
    assert(n >= 0);
    return n / KILN_BLOCK + (n % KILN_BLOCK != 0);
}

int kv_grow(kvcache *kv, kv_seq *s, int n)
{
    int need = kv_blocks_for(n) - s->n;
    if (need <= 0)
        return 0;
    if (need > kv->nfree)
        return -1;
    if (s->n + need > s->cap) {
        int cap = s->cap ? s->cap : 4;
        while (cap < s->n + need)
            cap *= 2;
        s->blocks = xrealloc(s->blocks, (size_t)cap * sizeof *s->blocks);
        s->cap = cap;
    }
    for (int i = 0; i < need; i++)
        s->blocks[s->n++] = kv->free[--kv->nfree];
    return 0;
}

void kv_release(kvcache *kv, kv_seq *s)
{
    assert(kv->nfree + s->n <= kv->total && "kv_release: more blocks returned than were taken");
    /* returned last-first, so the next grow reuses them in the order this sequence had them */
    for (int i = s->n - 1; i >= 0; i--) {
        assert(s->blocks[i] >= 1 && s->blocks[i] <= kv->total);
        kv->free[kv->nfree++] = s->blocks[i];
    }
    s->n = 0;
}

void kv_seq_free(kv_seq *s)
{
    free(s->blocks);
    s->blocks = NULL;
    s->n = s->cap = 0;
}
