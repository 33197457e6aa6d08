/* hash — XXH3-64 (Debian's libxxhash, linked statically) over large buffers, on several threads.
 *
 * The chunked hash of a buffer of `len` bytes, with chunk size C, is defined as: XXH3_64bits of
 * each C-byte chunk (the last may be shorter; a 0-byte buffer has no chunks), then
 * XXH3_64bits_withSeed over the list of chunk hashes (each 8 bytes, little-endian), seeded with
 * `len`. The value does not depend on the number of threads, so the packer (one stream, fed one
 * tensor at a time) and the loader (all cores over the mapped file) compute the same number.
 * The weight shards use it with HASH_CHUNK (artifact.h records the chunk size per shard).
 *
 * A hash_job runs in the background so that the loader can hash the mapped shard while it copies
 * the same bytes to the GPU; it reads the buffer until hash_finish or hash_abort returns, so the
 * buffer must outlive the job. This is an integrity check against corruption and mix-ups, not
 * a cryptographic signature.
 */
#ifndef KILN_HASH_H
#define KILN_HASH_H

#include <stddef.h>
#include <stdint.h>

#define HASH_CHUNK ((uint64_t)64 << 20)
#define HASH_CHUNK_MIN ((uint64_t)1 << 20) /* bounds the chunk list: 1 TiB is 1M chunks */
#define HASH_CHUNK_MAX ((uint64_t)1 << 30)
#define HASH_MAX_THREADS 64

/* XXH3_64bits of one buffer. */
uint64_t hash_bytes(const void *data, size_t len);
/* XXH3_64bits of a followed by b. */
uint64_t hash_bytes2(const void *a, size_t na, const void *b, size_t nb);
/* The chunked hash, computed on `threads` threads (the caller's included). chunk must lie in
 * [HASH_CHUNK_MIN, HASH_CHUNK_MAX]. */
uint64_t hash_chunked(const void *data, uint64_t len, uint64_t chunk, int threads);

/* The chunked hash on `threads` background threads (all threads: when none can be started,
 * hash_finish does the work). */
typedef struct hash_job hash_job;
hash_job *hash_start(const void *data, uint64_t len, uint64_t chunk, int threads);
/* Waits for the job, frees it and returns the chunked hash. */
uint64_t hash_finish(hash_job *j);
/* Stops the job after the chunks in flight, waits, frees it. NULL is a no-op. */
void hash_abort(hash_job *j);

/* The chunked hash of bytes fed in order, in pieces of any size. */
typedef struct hash_stream hash_stream;
hash_stream *hash_stream_new(uint64_t chunk);
void hash_stream_update(hash_stream *s, const void *data, size_t len);
/* The chunked hash of everything fed; frees the stream. */
uint64_t hash_stream_finish(hash_stream *s);

#endif
