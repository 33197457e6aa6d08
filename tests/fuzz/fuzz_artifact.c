/* fuzz_artifact — ka_read (runtime/artifact.h) on a hostile model.kiln and manifest.
 *
 * Two kinds of input:
 *   - input starting with '{': a manifest (JSON). The target wraps it in a well-formed file
 *     (header with the manifest's hash, zeros, the manifest at the first section boundary) and
 *     reads it from memory with ka_read_mem, so that mutations reach the manifest's schema and
 *     range checks instead of failing the header's hash. The seeds name no blobs.
 *   - anything else: the whole file, header included, written to a file read by ka_read.
 * Contracts, for a file ka_read accepts (the engine uses the manifest without checks of its
 * own): every index is in range: the sample kernel (-1 for embedding models), each step's
 * kernel, every kernel and GEMM argument against its table or buffer (slab and scratch offsets,
 * weights, constants, kv layers; collectives' operands in buffers; rank arguments bounded),
 * bos (-1 or a vocabulary id), every eos id, each blob inside the file, each kv layer's shape
 * positive, tp in range with a shard per rank. A rejected file leaves a message.
 */
#include "artifact.h"
#include "fuzz.h"

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* A file holding only this manifest, laid out as ka_write lays one out when there are no blobs:
 * the header (with its hash of the first 32 bytes and the manifest), zeros up to the first
 * section boundary, the manifest. */
static unsigned char *wrap(const uint8_t *manifest, size_t n, size_t *len)
{
    size_t moff = (KA_HEADER + KA_ALIGN) / KA_ALIGN * KA_ALIGN;
    *len = moff + n;
    unsigned char *f = xcalloc(1, *len);
    memcpy(f, KA_MAGIC, 8);
    f[8] = KA_VERSION & 0xff;
    f[9] = KA_VERSION >> 8;
    put64(f + 16, moff);
    put64(f + 24, n);
    memcpy(f + moff, manifest, n);
    put64(f + 32, ka_manifest_hash(f, manifest, n));
    return f;
}

/* What the engine's binding of an argument relies on (it no longer checks: ka_read does). */
static void check_arg(const ka_manifest *m, const ka_arg *a, int step, int k)
{
    int ok;
    switch (a->kind) {
    case KA_ARG_BUF: ok = a->i >= 0 && a->i < m->slab_bytes; break;
    case KA_ARG_SCRATCH: ok = a->i >= 0 && a->i < m->scratch_bytes; break;
    case KA_ARG_WEIGHT: ok = a->i >= 0 && a->i < m->nweights; break;
    case KA_ARG_CONST: ok = a->i >= 0 && a->i < m->nconsts; break;
    case KA_ARG_KV_K:
    case KA_ARG_KV_V: ok = a->i >= 0 && a->i < m->n_layers; break;
    case KA_ARG_RANK: /* i * rank fits an int for every rank */
        ok = a->i >= -(INT32_MAX / KA_MAX_TP) && a->i <= INT32_MAX / KA_MAX_TP;
        break;
    case KA_ARG_TMAP: ok = a->i == 0 || a->i == 1; break;
    default: ok = (unsigned)a->kind < KA_NARGKINDS;
    }
    FZ_CHECK(ok, "step %d: argument %d (%s %lld) out of range", step, k, ka_arg_kind_name(a->kind),
             (long long)a->i);
}

static void check_steps(const ka_manifest *m, const ka_step *s, int n)
{
    for (int i = 0; i < n; i++) {
        if (s[i].kind == KA_KERNEL) {
            FZ_CHECK(s[i].kernel >= 0 && s[i].kernel < m->nkernels, "step %d: kernel %d of %d",
                     i, s[i].kernel, m->nkernels);
            FZ_CHECK(s[i].nargs >= 0 && s[i].nargs <= KA_MAX_ARGS, "step %d: %d args", i,
                     s[i].nargs);
            for (int k = 0; k < s[i].nargs; k++)
                check_arg(m, &s[i].args[k], i, k);
            if (ka_step_has_tmap(&s[i])) { /* the tensors the maps describe */
                FZ_CHECK((s[i].x.kind == KA_ARG_BUF || s[i].x.kind == KA_ARG_SCRATCH) &&
                             (s[i].w.kind == KA_ARG_WEIGHT || s[i].w.kind == KA_ARG_SCRATCH),
                         "step %d: tensor maps of x %s, w %s", i, ka_arg_kind_name(s[i].x.kind),
                         ka_arg_kind_name(s[i].w.kind));
                check_arg(m, &s[i].x, i, -1);
                check_arg(m, &s[i].w, i, -2);
            }
        } else if (s[i].kind == KA_ALLREDUCE || s[i].kind == KA_ALLGATHER) {
            const ka_arg *g[2] = {&s[i].x, &s[i].y};
            for (int k = 0; k < 2; k++) {
                FZ_CHECK(g[k]->kind == KA_ARG_BUF || g[k]->kind == KA_ARG_SCRATCH ||
                             g[k]->kind == KA_ARG_LOGITS,
                         "step %d: collective operand %d is %s", i, k,
                         ka_arg_kind_name(g[k]->kind));
                check_arg(m, g[k], i, k);
            }
            FZ_CHECK(s[i].n >= 1, "step %d: collective of %lld elements a row", i,
                     (long long)s[i].n);
        } else {
            FZ_CHECK(s[i].w.kind == KA_ARG_WEIGHT && s[i].w.i >= 0 && s[i].w.i < m->nweights,
                     "step %d: GEMM weight %lld of %d", i, (long long)s[i].w.i, m->nweights);
            const ka_arg *g[4] = {&s[i].x, &s[i].w, &s[i].bias, &s[i].y};
            for (int k = 0; k < 4; k++)
                check_arg(m, g[k], i, k);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kerr e;
    kerr_clear(&e);
    ka_file *af;
    unsigned char *wrapped = NULL;
    if (size && data[0] == '{') {
        size_t len;
        wrapped = wrap(data, size, &len);
        af = ka_read_mem("model.kiln", wrapped, len, &e);
    } else {
        af = ka_read(fz_write("model.kiln", data, size), &e);
    }
    if (!af) {
        fz_check_err(&e);
        free(wrapped);
        return 0;
    }
    const ka_manifest *m = &af->m;
    FZ_CHECK(m->sample_kernel >= -1 && m->sample_kernel < m->nkernels, "sample_kernel %d of %d",
             m->sample_kernel, m->nkernels);
    FZ_CHECK(m->bos >= -1 && m->bos < m->vocab, "bos %d, vocab %d", m->bos, m->vocab);
    for (int i = 0; i < m->n_eos; i++)
        FZ_CHECK(m->eos[i] >= 0 && m->eos[i] < m->vocab, "eos %d, vocab %d", m->eos[i], m->vocab);
    for (int i = 0; i < m->n_layers; i++)
        FZ_CHECK(m->layers[i].n_kv > 0 && m->layers[i].head_dim > 0, "kv layer %d", i);
    for (int i = 0; i < m->nblobs; i++) {
        const ka_blob *b = &m->blobs[i];
        FZ_CHECK(b->offset <= af->len && b->len <= af->len - b->offset, "blob %d outside", i);
        FZ_CHECK(ka_find_blob(m, b->name) != NULL, "blob '%s' not found by name", b->name);
    }
    FZ_CHECK(m->tp >= 1 && m->tp <= KA_MAX_TP && m->shards, "tp %d", m->tp);
    for (int r = 0; r < m->tp; r++)
        FZ_CHECK(m->shards[r].path && !strstr(m->shards[r].path, ".."), "shard %d's path", r);
    check_steps(m, m->prefill, m->nprefill);
    check_steps(m, m->decode, m->ndecode);
    char *json = ka_manifest_json(m);
    FZ_CHECK(json && json[0] == '{', "ka_manifest_json");
    free(json);
    ka_file_free(af);
    free(wrapped);
    return 0;
}
