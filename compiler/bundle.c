/* bundle — `kilnc compile --standalone`: OUT_DIR/NAME, one executable holding the runtime
 * (kiln-standalone, found beside kilnc), the model folder's files and, with --embed-weights, the
 * weight shards; the format is runtime/standalone.h, read back by runtime/standalone.c.
 *
 * It runs after kilnc compile has written OUT_DIR, and packs what kiln would read there, so the
 * executable and `kiln run OUT_DIR` run the same model. The file is written as NAME.tmp and
 * renamed, so an interrupted compile never leaves a half executable under the model's name.
 * Every part is hashed as it is copied (hash.h's chunked XXH3: the shards are read once).
 */
#include "bundle.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hash.h"
#include "standalone.h"

/* The model folder's files kiln reads besides the shards, in the order they are packed. */
static const char *const folder_files[] = {"model.kiln", "tokenizer.json", "tokenizer_config.json",
                                           "special_tokens_map.json", "generation_config.json",
                                           "chat_template.jinja"};

typedef struct writer {
    FILE *f;
    const char *path; /* for messages */
    uint64_t at;      /* bytes written */
} writer;

static int put(writer *w, const void *p, size_t n, kerr *err)
{
    if (n && fwrite(p, 1, n, w->f) != n)
        return kerr_add(err, "%s: write failed: %s", w->path, strerror(errno));
    w->at += n;
    return 0;
}

/* Zeros up to the next multiple of SA_PAGE. */
static int pad_page(writer *w, kerr *err)
{
    static const char zero[SA_PAGE];
    return put(w, zero, (SA_PAGE - w->at % SA_PAGE) % SA_PAGE, err);
}

/* Appends the file at SRC as entry E (name and kind set by the caller). */
static int append_file(writer *w, const char *src, sa_entry *e, kerr *err)
{
    FILE *in = fopen(src, "rb");
    if (!in)
        return kerr_add(err, "%s: cannot open: %s", src, strerror(errno));
    enum { BUF = 8 << 20 };
    char *buf = xmalloc(BUF);
    hash_stream *hs = hash_stream_new(HASH_CHUNK);
    e->offset = w->at;
    int rc = 0;
    size_t n;
    while (rc == 0 && (n = fread(buf, 1, BUF, in)) > 0) {
        hash_stream_update(hs, buf, n);
        rc = put(w, buf, n, err);
    }
    if (rc == 0 && ferror(in))
        rc = kerr_add(err, "%s: read error", src);
    e->len = w->at - e->offset;
    e->hash = hash_stream_finish(hs);
    fclose(in);
    free(buf);
    return rc;
}

char *bundle_runtime_path(void)
{
    char *self = realpath("/proc/self/exe", NULL);
    if (!self)
        return xstrdup("kiln-standalone");
    *strrchr(self, '/') = 0;
    char *p = util_path_join(self, "kiln-standalone");
    free(self);
    return p;
}

int bundle_write(const char *runtime, const char *out_dir, const char *name, const ka_manifest *m,
                 int embed_weights, kerr *err)
{
    for (size_t i = 0; i < ARRAY_LEN(folder_files); i++)
        if (!strcmp(name, folder_files[i]) || !strcmp(name, "shards"))
            return kerr_add(err, "--standalone: the model's name '%s' is also a file of the "
                                 "output folder; rename the model folder",
                            name);
    if (!util_is_file(runtime))
        return kerr_add(err, "--standalone: %s is missing: kilnc packs the runtime it finds beside "
                             "itself (build it with make)",
                        runtime);
    char *path = util_path_join(out_dir, name), *tmp = xasprintf("%s.tmp", path);
    writer w = {fopen(tmp, "wb"), tmp, 0};
    sa_entry *ents = xcalloc(SA_MAX_ENTRIES, sizeof *ents);
    int n = 0, rc = 0;
    if (!w.f) {
        rc = kerr_add(err, "%s: cannot create: %s", tmp, strerror(errno));
        goto out;
    }
    ents[n].kind = SA_RUNTIME;
    rc = append_file(&w, runtime, &ents[n++], err);
    for (size_t i = 0; i < ARRAY_LEN(folder_files) && rc == 0; i++) {
        char *src = util_path_join(out_dir, folder_files[i]);
        if (util_is_file(src)) {
            snprintf(ents[n].name, SA_NAME_MAX, "%s", folder_files[i]);
            ents[n].kind = SA_FILE;
            rc = append_file(&w, src, &ents[n++], err);
        }
        free(src);
    }
    assert(m->tp >= 1 && n + m->tp <= SA_MAX_ENTRIES);
    for (int r = 0; r < m->tp && rc == 0; r++) {
        sa_entry *e = &ents[n++];
        if (strlen(m->shards[r].path) >= SA_NAME_MAX) {
            rc = kerr_add(err, "--standalone: shard path '%s' is over %d bytes", m->shards[r].path,
                          SA_NAME_MAX - 1);
            break;
        }
        snprintf(e->name, SA_NAME_MAX, "%s", m->shards[r].path);
        e->kind = embed_weights ? SA_SHARD : SA_BESIDE;
        if (!embed_weights)
            continue;
        char *src = util_path_join(out_dir, m->shards[r].path);
        rc = pad_page(&w, err) || append_file(&w, src, e, err);
        free(src);
    }
    if (rc)
        goto out;
    sa_trailer t = {.version = SA_VERSION, .nentries = (uint32_t)n, .index_offset = w.at,
                    .index_hash = hash_bytes(ents, sizeof *ents * (size_t)n), .page = SA_PAGE};
    memcpy(t.magic, SA_MAGIC, 8);
    t.file_len = w.at + sizeof *ents * (size_t)n + sizeof t;
    t.trailer_hash = sa_trailer_hash(&t);
    rc = put(&w, ents, sizeof *ents * (size_t)n, err) || put(&w, &t, sizeof t, err);
out:
    if (w.f && fclose(w.f) != 0 && rc == 0)
        rc = kerr_add(err, "%s: write failed: %s", tmp, strerror(errno));
    if (rc == 0 && (chmod(tmp, 0755) != 0 || rename(tmp, path) != 0))
        rc = kerr_add(err, "%s: cannot make it the executable %s: %s", tmp, path, strerror(errno));
    if (rc)
        unlink(tmp);
    free(ents);
    free(tmp);
    free(path);
    return rc ? -1 : 0;
}
