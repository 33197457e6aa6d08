/* hash — see hash.h. Workers take chunk indices from one atomic counter, so uneven progress
 * (page faults on a cold file, a busy core) balances itself; each chunk's hash lands in its own
 * slot of the list, which is hashed once every worker has joined. */
#include "hash.h"

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>
#include <xxhash.h>

#include "util.h"

uint64_t hash_bytes(const void *data, size_t len) { return XXH3_64bits(data, len); }

static XXH3_state_t *state_new(void)
{
    XXH3_state_t *st = XXH3_createState();
    if (!st)
        abort(); /* out of memory for 600 bytes: as xmalloc */
    XXH3_64bits_reset(st);
    return st;
}

uint64_t hash_bytes2(const void *a, size_t na, const void *b, size_t nb)
{
    XXH3_state_t *st = state_new();
    XXH3_64bits_update(st, a, na);
    XXH3_64bits_update(st, b, nb);
    uint64_t h = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return h;
}

/* The final step: the list of chunk hashes, little-endian, seeded with the total length. */
static uint64_t hash_list(const uint64_t *h, uint64_t n, uint64_t len)
{
    unsigned char *b = xmalloc(n ? (size_t)n * 8 : 1);
    for (uint64_t i = 0; i < n; i++)
        for (int k = 0; k < 8; k++)
            b[i * 8 + (uint64_t)k] = (unsigned char)(h[i] >> (8 * k));
    uint64_t r = XXH3_64bits_withSeed(b, (size_t)n * 8, len);
    free(b);
    return r;
}

struct hash_job {
    const unsigned char *data;
    uint64_t len, chunk, n;
    uint64_t *h;
    atomic_uint_fast64_t next;
    int nthreads;
    pthread_t t[HASH_MAX_THREADS];
};

static void *worker(void *arg)
{
    hash_job *j = arg;
    for (;;) {
        uint64_t i = atomic_fetch_add(&j->next, 1);
        if (i >= j->n)
            return NULL;
        uint64_t at = i * j->chunk, n = j->len - at < j->chunk ? j->len - at : j->chunk;
        j->h[i] = XXH3_64bits(j->data + at, (size_t)n);
    }
}

static hash_job *job_new(const void *data, uint64_t len, uint64_t chunk)
{
    assert(chunk >= HASH_CHUNK_MIN && chunk <= HASH_CHUNK_MAX);
    hash_job *j = xcalloc(1, sizeof *j);
    j->data = data;
    j->len = len;
    j->chunk = chunk;
    j->n = len / chunk + (len % chunk != 0);
    j->h = xcalloc(j->n ? (size_t)j->n : 1, sizeof(uint64_t));
    atomic_init(&j->next, 0);
    return j;
}

static void job_start(hash_job *j, int threads)
{
    if (threads > HASH_MAX_THREADS)
        threads = HASH_MAX_THREADS;
    if ((uint64_t)threads > j->n)
        threads = (int)j->n;
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&j->t[i], NULL, worker, j) != 0)
            break; /* fewer threads; hash_finish's own pass picks up the rest */
        j->nthreads++;
    }
}

hash_job *hash_start(const void *data, uint64_t len, uint64_t chunk, int threads)
{
    hash_job *j = job_new(data, len, chunk);
    job_start(j, threads);
    return j;
}

uint64_t hash_finish(hash_job *j)
{
    worker(j); /* the caller helps: the chunks no thread took yet */
    for (int i = 0; i < j->nthreads; i++)
        pthread_join(j->t[i], NULL);
    uint64_t r = hash_list(j->h, j->n, j->len);
    free(j->h);
    free(j);
    return r;
}

void hash_abort(hash_job *j)
{
    if (!j)
        return;
    atomic_store(&j->next, j->n);
    for (int i = 0; i < j->nthreads; i++)
        pthread_join(j->t[i], NULL);
    free(j->h);
    free(j);
}

uint64_t hash_chunked(const void *data, uint64_t len, uint64_t chunk, int threads)
{
    hash_job *j = job_new(data, len, chunk);
    job_start(j, threads - 1); /* the caller is one of them */
    return hash_finish(j);
}

struct hash_stream {
    XXH3_state_t *st;
    uint64_t chunk, at, len, n, cap;
    uint64_t *h;
};

hash_stream *hash_stream_new(uint64_t chunk)
{
    assert(chunk >= HASH_CHUNK_MIN && chunk <= HASH_CHUNK_MAX);
    hash_stream *s = xcalloc(1, sizeof *s);
    s->st = state_new();
    s->chunk = chunk;
    return s;
}

static void stream_push(hash_stream *s)
{
    if (s->n == s->cap)
        s->h = xrealloc(s->h, sizeof(uint64_t) * (size_t)(s->cap = s->cap * 2 + 64));
    s->h[s->n++] = XXH3_64bits_digest(s->st);
    XXH3_64bits_reset(s->st);
    s->at = 0;
}

void hash_stream_update(hash_stream *s, const void *data, size_t len)
{
    const unsigned char *p = data;
    s->len += len;
    while (len) {
        size_t n = s->chunk - s->at < len ? (size_t)(s->chunk - s->at) : len;
        XXH3_64bits_update(s->st, p, n);
        s->at += n;
        p += n;
        len -= n;
        if (s->at == s->chunk)
            stream_push(s);
    }
}

uint64_t hash_stream_finish(hash_stream *s)
{
    if (s->at)
        stream_push(s);
    uint64_t r = hash_list(s->h, s->n, s->len);
    XXH3_freeState(s->st);
    free(s->h);
    free(s);
    return r;
}
