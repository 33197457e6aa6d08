/* standalone — one executable per model: the runtime (kiln-standalone) with the compiled model
 * appended. `kilnc compile --standalone` writes it (compiler/bundle.c); at start the executable
 * reads itself here.
 *
 * The file, in order:
 *   the runtime        kiln-standalone, an ELF file, unchanged
 *   the files          model.kiln, tokenizer.json, tokenizer_config.json, special_tokens_map.json,
 *                      generation_config.json, chat_template.jinja (those kilnc compile wrote)
 *   the weights        with --embed-weights: shards/rank<r>-of-<n>.safetensors, each starting at
 *                      a multiple of SA_PAGE, so that the one read-only mapping of the executable
 *                      gives every shard page-aligned, as mmap of a shard file does
 *   the index          one sa_entry per part above (the runtime's included)
 *   the trailer        sa_trailer, the last SA_TRAILER_SIZE bytes
 * Without --embed-weights, the index names the shards with SA_BESIDE and no bytes: they are read
 * from shards/ in the executable's own folder (/proc/self/exe, never the working directory).
 *
 * Integrity: every part's bytes carry the chunked XXH3 of hash.h (HASH_CHUNK), the index its
 * XXH3, the trailer its own XXH3 and the file's length, so a truncated file (the trailer gone or
 * its length wrong) and one flipped byte anywhere (runtime, files, appended weights, index,
 * trailer) are refused at start with a message that names the part. Weights kept beside are
 * checked as kiln checks every shard (header FNV-1a and tensor table when opened, data XXH3
 * while uploaded: artifact.h). This catches corruption and mix-ups; it is not a signature.
 *
 * Integers are little-endian (kiln runs on x86-64 and aarch64 Linux).
 */
#ifndef KILN_STANDALONE_H
#define KILN_STANDALONE_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define SA_MAGIC "KILNEXE1" /* 8 bytes, no NUL: the trailer's first and the index's key */
#define SA_VERSION 1
#define SA_PAGE 4096u /* shards' alignment in the file: the page size of x86-64 and most aarch64 */
#define SA_NAME_MAX 112
#define SA_MAX_ENTRIES 80 /* the runtime, 6 files and up to KA_MAX_TP (64) shards */
#define SA_TRAILER_SIZE 64

enum {
    SA_RUNTIME = 1, /* the runtime's bytes: [0, len) */
    SA_FILE = 2,    /* a file of the model folder, embedded */
    SA_SHARD = 3,   /* a weight shard, embedded and page-aligned */
    SA_BESIDE = 4,  /* a weight shard kept beside the executable: name only */
};

typedef struct sa_entry {
    char name[SA_NAME_MAX]; /* relative path in the model folder, NUL-terminated; "" for runtime */
    uint64_t kind;          /* SA_RUNTIME, SA_FILE, SA_SHARD, SA_BESIDE */
    uint64_t offset, len;   /* the bytes in the executable (0, 0 for SA_BESIDE) */
    uint64_t hash;          /* hash_chunked(bytes, HASH_CHUNK) (0 for SA_BESIDE) */
} sa_entry;

typedef struct sa_trailer {
    char magic[8];         /* SA_MAGIC */
    uint32_t version;      /* SA_VERSION */
    uint32_t nentries;
    uint64_t index_offset; /* the sa_entry table */
    uint64_t index_hash;   /* hash_bytes of the table */
    uint64_t file_len;     /* the whole executable, trailer included */
    uint64_t page;         /* SA_PAGE when written */
    uint64_t reserved;     /* 0 */
    uint64_t trailer_hash; /* hash_bytes of the 56 bytes above */
} sa_trailer;

_Static_assert(sizeof(sa_entry) == SA_NAME_MAX + 32, "sa_entry is written as it is in memory");
_Static_assert(sizeof(sa_trailer) == SA_TRAILER_SIZE, "sa_trailer is written as it is in memory");
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the format is little-endian");

/* The trailer's hash over its fields before trailer_hash. */
uint64_t sa_trailer_hash(const sa_trailer *t);

/* The executable, opened and checked. */
typedef struct sa_exe {
    char *path;             /* the executable's own path (/proc/self/exe resolved): the model
                             * folder every command is given */
    const unsigned char *map; /* the whole file, read-only */
    size_t len;
    sa_trailer tr;
    sa_entry *ents;         /* tr.nentries, copied out of the index */
    util_memfile *files;    /* the memory folder at `path` (util.h) */
    int nfiles;
    char **beside;          /* paths of the SA_BESIDE shards, for the memory folder */
    int embedded_weights;   /* the shards are in the file */
} sa_exe;

/* Opens EXE (NULL: /proc/self/exe), maps it, checks the trailer, the index and every part's hash
 * (appended weights on all cores), and makes the model the memory folder at sa->path. A file
 * without a model (the bare kiln-standalone runtime) and a truncated or modified one fail with a
 * message naming what is wrong. */
int sa_open(sa_exe *sa, const char *exe, kerr *err);
void sa_close(sa_exe *sa);

/* The entry named NAME, or NULL. */
const sa_entry *sa_find(const sa_exe *sa, const char *name);

#endif
