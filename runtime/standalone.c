/* standalone — the executable reads and checks the model appended to itself (format:
 * standalone.h). It maps its own file once, read-only: embedded files and shards are served
 * from that mapping through the memory folder (util.h), so the weights are never copied before
 * the upload, exactly as a shard file's mmap. Nothing is written to disk.
 *
 * A missing trailer is told apart from a bare runtime by the ELF header: a bare kiln-standalone
 * ends where its section header table ends; anything longer without a trailer was cut.
 */
#include "standalone.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hash.h"

#define AGAIN "copy it again, or rebuild it with kilnc compile --standalone"

uint64_t sa_trailer_hash(const sa_trailer *t)
{
    return hash_bytes(t, offsetof(sa_trailer, trailer_hash));
}

/* Where the ELF file at the start of p ends (its section header table is last), or 0. */
static uint64_t elf_end(const unsigned char *p, size_t len)
{
    Elf64_Ehdr h;
    if (len < sizeof h)
        return 0;
    memcpy(&h, p, sizeof h);
    if (memcmp(h.e_ident, ELFMAG, SELFMAG) != 0 || h.e_ident[EI_CLASS] != ELFCLASS64)
        return 0;
    return h.e_shoff + (uint64_t)h.e_shnum * h.e_shentsize;
}

static const char *kind_name(uint64_t kind)
{
    switch (kind) {
    case SA_RUNTIME: return "the runtime";
    case SA_FILE: return "the embedded file";
    case SA_SHARD: return "the appended shard";
    default: return "the part";
    }
}

/* The trailer and the index: bounds, hashes and the entries' order and kinds. */
static int check_index(sa_exe *sa, kerr *err)
{
    const char *p = sa->path;
    sa_trailer *t = &sa->tr;
    uint64_t end = elf_end(sa->map, sa->len);
    if (sa->len < SA_TRAILER_SIZE || memcmp(sa->map + sa->len - SA_TRAILER_SIZE, SA_MAGIC, 8)) {
        if (end && end == sa->len)
            return kerr_add(err, "%s holds no model: it is kiln's standalone runtime, which kilnc "
                                 "compile --standalone appends a model to; run the executable "
                                 "it writes",
                            p);
        return kerr_add(err, "%s: no model trailer at its end (%zu bytes): the executable is "
                             "truncated or was modified; " AGAIN,
                        p, sa->len);
    }
    memcpy(t, sa->map + sa->len - SA_TRAILER_SIZE, sizeof *t);
    if (sa_trailer_hash(t) != t->trailer_hash)
        return kerr_add(err, "%s: its model trailer fails its checksum: the executable was "
                             "modified; " AGAIN,
                        p);
    if (t->version != SA_VERSION)
        return kerr_add(err, "%s: model trailer version %u, this runtime reads version %d; " AGAIN,
                        p, t->version, SA_VERSION);
    if (t->file_len != sa->len)
        return kerr_add(err, "%s: %zu bytes, its trailer records %llu: the executable is %s; " AGAIN,
                        p, sa->len, (unsigned long long)t->file_len,
                        sa->len < t->file_len ? "truncated" : "longer than written");
    uint64_t ilen;
    if (t->nentries < 2 || t->nentries > SA_MAX_ENTRIES ||
        !util_mul_ok(t->nentries, sizeof(sa_entry), &ilen) ||
        t->index_offset > sa->len - SA_TRAILER_SIZE ||
        ilen != sa->len - SA_TRAILER_SIZE - t->index_offset)
        return kerr_add(err, "%s: its model index (%u entries at %llu) does not fit the file; "
                             AGAIN,
                        p, t->nentries, (unsigned long long)t->index_offset);
    if (hash_bytes(sa->map + t->index_offset, ilen) != t->index_hash)
        return kerr_add(err, "%s: its model index fails its checksum: the executable was "
                             "modified; " AGAIN,
                        p);
    sa->ents = xmalloc(ilen);
    memcpy(sa->ents, sa->map + t->index_offset, ilen);
    /* the parts in file order, each inside [previous end, index) */
    uint64_t at = 0;
    for (uint32_t i = 0; i < t->nentries; i++) {
        sa_entry *e = &sa->ents[i];
        uint64_t e_end = 0;
        int named = memchr(e->name, 0, SA_NAME_MAX) && (e->kind == SA_RUNTIME) == !e->name[0];
        int placed = e->kind == SA_BESIDE ? e->offset == 0 && e->len == 0
                                           : util_add_ok(e->offset, e->len, &e_end) &&
                                                 e->offset >= at && e_end <= t->index_offset;
        if (!named || !placed || (i == 0) != (e->kind == SA_RUNTIME) || e->kind < SA_RUNTIME ||
            e->kind > SA_BESIDE || (e->kind == SA_SHARD && e->offset % SA_PAGE) ||
            strstr(e->name, "..") || e->name[0] == '/')
            return kerr_add(err, "%s: model index entry %u is malformed; " AGAIN, p, i);
        if (e->kind != SA_BESIDE)
            at = e_end;
    }
    if (sa->ents[0].offset != 0 || (end && sa->ents[0].len != end))
        return kerr_add(err, "%s: its model index does not start with the runtime; " AGAIN, p);
    return 0;
}

/* Every embedded part against its hash; shards on all cores. */
static int check_parts(sa_exe *sa, kerr *err)
{
    int threads = util_cpus(HASH_MAX_THREADS);
    for (uint32_t i = 0; i < sa->tr.nentries; i++) {
        const sa_entry *e = &sa->ents[i];
        if (e->kind == SA_BESIDE)
            continue;
        uint64_t got = hash_chunked(sa->map + e->offset, e->len, HASH_CHUNK, threads);
        if (got != e->hash)
            return kerr_add(err, "%s: %s%s%s fails its checksum (XXH3 %016llx, the index records "
                                 "%016llx): the executable is corrupt or was modified; " AGAIN,
                            sa->path, kind_name(e->kind), e->name[0] ? " " : "", e->name,
                            (unsigned long long)got, (unsigned long long)e->hash);
    }
    return 0;
}

int sa_open(sa_exe *sa, const char *exe, kerr *err)
{
    memset(sa, 0, sizeof *sa);
    char *path = realpath(exe ? exe : "/proc/self/exe", NULL);
    if (!path)
        return kerr_add(err, "%s: cannot resolve the executable's path: %s",
                        exe ? exe : "/proc/self/exe", strerror(errno));
    sa->path = path;
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return kerr_add(err, "%s: cannot read the executable: %s", path, strerror(e));
    }
    sa->len = (size_t)st.st_size;
    void *m = sa->len ? mmap(NULL, sa->len, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
    close(fd);
    if (m == MAP_FAILED)
        return kerr_add(err, "%s: cannot map the executable: %s", path, strerror(errno));
    sa->map = m;
    if (check_index(sa, err) || check_parts(sa, err))
        return -1;
    /* the memory folder: embedded parts by their bytes, shards kept beside by their path */
    char *dir = xstrdup(path);
    *strrchr(dir, '/') = 0; /* realpath: absolute */
    sa->files = xcalloc(sa->tr.nentries, sizeof *sa->files);
    sa->beside = xcalloc(sa->tr.nentries, sizeof *sa->beside);
    for (uint32_t i = 1; i < sa->tr.nentries; i++) {
        const sa_entry *e = &sa->ents[i];
        util_memfile *f = &sa->files[sa->nfiles++];
        f->name = e->name;
        if (e->kind == SA_BESIDE) {
            f->real = sa->beside[i] = util_path_join(dir, e->name);
        } else {
            f->data = sa->map + e->offset;
            f->len = e->len;
        }
        sa->embedded_weights |= e->kind == SA_SHARD;
    }
    free(dir);
    util_memdir_set(sa->path, sa->files, sa->nfiles);
    return 0;
}

const sa_entry *sa_find(const sa_exe *sa, const char *name)
{
    for (uint32_t i = 0; sa->ents && i < sa->tr.nentries; i++)
        if (strcmp(sa->ents[i].name, name) == 0)
            return &sa->ents[i];
    return NULL;
}

void sa_close(sa_exe *sa)
{
    util_memdir_set(NULL, NULL, 0);
    for (uint32_t i = 0; sa->beside && i < sa->tr.nentries; i++)
        free(sa->beside[i]);
    free(sa->beside);
    free(sa->files);
    free(sa->ents);
    if (sa->map)
        munmap((void *)sa->map, sa->len);
    free(sa->path);
    memset(sa, 0, sizeof *sa);
}
