/* tok_model — the models of tokenizer.json: BPE, WordPiece and WordLevel, as HF `tokenizers`
 * defines them.
 *
 * BPE follows models/bpe/model.rs and word.rs step for step, because ties and odd vocabularies
 * depend on the exact procedure: each character (with continuing_subword_prefix on all but the
 * first and end_of_word_suffix on the last) is looked up; a miss becomes <0xXX> byte tokens when
 * byte_fallback is on and all exist, else unk (consecutive unks fused when fuse_unk); then merges
 * run from a priority queue ordered by (rank, position), skipping stale entries the way HF does.
 * ignore_merges (Llama-3) returns a whole word found in the vocabulary as one token. Merges load
 * from both "a b" strings and ["a", "b"] pairs; a duplicated pair keeps its last rank, as HF's
 * map does. Results per word are cached (direct-mapped, words under 256 bytes), which changes
 * nothing but speed; the cache and the per-word buffers live in the caller's tok_ctx, so a loaded
 * model is read-only and shared by every thread. Dropout > 0 is refused: it makes encoding random.
 * Ids are checked (0 <= id < TOK_MAX_ID) before the id -> token tables are sized by the largest.
 *
 * WordPiece is greedy longest-match-first with max_input_chars_per_word, never trying a candidate
 * longer than the longest vocabulary entry (same result, linear in the word); WordLevel is a
 * lookup.
 * Unigram is not supported (error naming it).
 */
#include <stdlib.h>
#include <string.h>

#include "tok_impl.h"

enum { M_BPE, M_WORDPIECE, M_WORDLEVEL };

#define CACHE_SLOTS 16384
#define CACHE_MAX_WORD 256

typedef struct merge_slot {
    uint64_t key; /* (a << 32 | b) + 1; 0 = empty */
    uint32_t rank;
    int32_t new_id;
} merge_slot;

typedef struct cache_ent {
    uint64_t hash;
    char *word; /* word bytes followed by the ids */
    uint32_t len, nids;
} cache_ent;

typedef struct heap_ent {
    uint32_t rank, pos;
    int32_t new_id;
} heap_ent;

struct tok_model {
    int type;
    tok_strmap vocab;
    char **id2tok; /* nids = max_id + 1 entries, NULL where no token */
    uint32_t *id2len;
    int32_t max_id; /* < TOK_MAX_ID, checked before id2tok is sized by it */
    size_t nids;
    size_t max_key; /* bytes of the longest vocabulary entry: no longer match can exist */
    /* BPE */
    merge_slot *merges;
    size_t merges_cap;
    char *unk; /* unk_len bytes (may hold a NUL, from "\u0000") */
    size_t unk_len;
    int32_t unk_id;
    char *prefix, *suffix;
    size_t prefix_len, suffix_len;
    int fuse_unk, byte_fallback, ignore_merges;
    int32_t byte_ids[256];
    int32_t ascii_ids[128]; /* single-byte character -> id, -1 absent (no prefix/suffix case) */
    /* WordPiece */
    size_t max_chars;
};

/* What tokenizing writes: per tok_ctx, so a loaded model is read-only and shared by threads. */
struct tok_bpe_scratch {
    cache_ent *cache; /* CACHE_SLOTS entries */
    /* one word */
    int32_t *sc, *sprev, *snext;
    uint32_t *slen;
    size_t scap;
    heap_ent *heap;
    size_t heap_n, heap_cap;
    tok_sbuf tmp;
};

void tok_bpe_scratch_free(tok_bpe_scratch *b)
{
    if (!b)
        return;
    for (size_t i = 0; i < CACHE_SLOTS; i++)
        free(b->cache[i].word);
    free(b->cache);
    free(b->sc);
    free(b->sprev);
    free(b->snext);
    free(b->slen);
    free(b->heap);
    free(b->tmp.s);
    free(b);
}

/* ---------------------------------------------------------------- merge map */

static uint64_t mkey(int32_t a, int32_t b) { return (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1; }

static size_t mhash(uint64_t k)
{
    k ^= k >> 31;
    k *= 0x9E3779B97F4A7C15ull;
    k ^= k >> 29;
    return (size_t)k;
}

static merge_slot *merge_find(const tok_model *m, int32_t a, int32_t b)
{
    if (!m->merges_cap)
        return NULL;
    uint64_t k = mkey(a, b);
    size_t j = mhash(k) & (m->merges_cap - 1);
    while (m->merges[j].key) {
        if (m->merges[j].key == k)
            return &m->merges[j];
        j = (j + 1) & (m->merges_cap - 1);
    }
    return NULL;
}

static void merge_put(tok_model *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id)
{
    uint64_t k = mkey(a, b);
    size_t j = mhash(k) & (m->merges_cap - 1);
    while (m->merges[j].key && m->merges[j].key != k)
        j = (j + 1) & (m->merges_cap - 1);
    m->merges[j] = (merge_slot){k, rank, new_id};
}

/* ---------------------------------------------------------------- loading */

void tok_model_free(tok_model *m)
{
    if (!m)
        return;
    tok_strmap_free(&m->vocab);
    if (m->id2tok)
        for (size_t i = 0; i < m->nids; i++)
            free(m->id2tok[i]);
    free(m->id2tok);
    free(m->id2len);
    free(m->merges);
    free(m->unk);
    free(m->prefix);
    free(m->suffix);
    free(m);
}

/* A string the model compares with vocabulary keys, so it gets their "\u0000" fix too. */
static char *opt_str(json_t *j, const char *k, size_t *len)
{
    json_t *v = json_object_get(j, k);
    *len = 0;
    if (!json_is_string(v))
        return NULL;
    tok_sbuf fix = {0};
    const char *s = tok_nul_fix(&fix, json_string_value(v), json_string_length(v), len);
    char *r = xmalloc(*len + 1);
    memcpy(r, s, *len);
    r[*len] = 0;
    free(fix.s);
    return r;
}

static int load_vocab(tok_model *m, json_t *vocab, const char *where, kerr *err)
{
    if (!json_is_object(vocab))
        return kerr_add(err, "%s: model.vocab must be an object of token -> id", where);
    const char *k;
    json_t *v;
    tok_sbuf fix = {0};
    m->max_id = -1;
    json_object_foreach(vocab, k, v)
    {
        int32_t id;
        if (tok_json_id(v, &id, err, "%s: model.vocab[\"%.60s%s\"]", where, k,
                        strlen(k) > 60 ? "..." : "")) {
            free(fix.s);
            return -1;
        }
        size_t kn;
        const char *key = tok_nul_fix(&fix, k, strlen(k), &kn);
        tok_strmap_set(&m->vocab, key, kn, id);
        if (id > m->max_id)
            m->max_id = id;
        if (kn > m->max_key)
            m->max_key = kn;
    }
    free(fix.s);
    /* every id is below TOK_MAX_ID here, so these tables are at most 2 x 128 MiB */
    m->nids = (size_t)m->max_id + 1;
    m->id2tok = xcalloc(m->nids + 1, sizeof *m->id2tok);
    m->id2len = xcalloc(m->nids + 1, sizeof *m->id2len);
    for (size_t i = 0; i < m->vocab.n; i++) {
        const struct tok_strkey *e = &m->vocab.keys[i];
        if (m->id2tok[e->val])
            continue; /* two tokens with one id: keep the first */
        m->id2tok[e->val] = xmalloc(e->len + 1);
        memcpy(m->id2tok[e->val], m->vocab.pool + e->off, e->len + 1);
        m->id2len[e->val] = e->len;
    }
    return 0;
}

static int load_bpe(tok_model *m, json_t *j, const char *where, kerr *err)
{
    json_t *drop = json_object_get(j, "dropout");
    if (json_is_number(drop) && json_number_value(drop) > 0.0)
        return kerr_add(err, "%s: BPE dropout %g is not supported (it makes encoding random; set it "
                             "to null)",
                        where, json_number_value(drop));
    m->unk = opt_str(j, "unk_token", &m->unk_len);
    m->prefix = opt_str(j, "continuing_subword_prefix", &m->prefix_len);
    m->suffix = opt_str(j, "end_of_word_suffix", &m->suffix_len);
    json_t *fu = json_object_get(j, "fuse_unk"), *bf = json_object_get(j, "byte_fallback"),
           *im = json_object_get(j, "ignore_merges");
    m->fuse_unk = json_is_true(fu);
    m->byte_fallback = json_is_true(bf);
    m->ignore_merges = json_is_true(im);
    m->unk_id = -1;
    if (m->unk && !tok_strmap_get(&m->vocab, m->unk, m->unk_len, &m->unk_id))
        m->unk_id = -2; /* HF fails only when the unk token is needed; so do we */
    for (int b = 0; b < 256; b++) {
        char code[8];
        snprintf(code, sizeof code, "<0x%02X>", b);
        if (!tok_strmap_get(&m->vocab, code, 6, &m->byte_ids[b]))
            m->byte_ids[b] = -1;
    }
    for (int c = 0; c < 128; c++) {
        char ch = (char)c;
        if (!tok_strmap_get(&m->vocab, &ch, 1, &m->ascii_ids[c]))
            m->ascii_ids[c] = -1;
    }
    json_t *merges = json_object_get(j, "merges");
    if (!json_is_array(merges))
        return kerr_add(err, "%s: BPE model needs a \"merges\" array", where);
    size_t nm = json_array_size(merges);
    m->merges_cap = 16;
    while (m->merges_cap < nm * 2)
        m->merges_cap *= 2;
    m->merges = xcalloc(m->merges_cap, sizeof *m->merges);
    tok_sbuf b = {0};
    for (size_t i = 0; i < nm; i++) {
        json_t *e = json_array_get(merges, i);
        const char *a, *c;
        size_t al, cl;
        char *split_at = NULL;
        if (json_is_string(e)) {
            const char *s = json_string_value(e);
            split_at = strchr(s, ' ');
            if (!split_at || strchr(split_at + 1, ' ')) {
                free(b.s);
                return kerr_add(err, "%s: merges[%zu] = \"%.60s\": expected two tokens separated by "
                                     "one space",
                                where, i, s);
            }
            a = s;
            al = (size_t)(split_at - s);
            c = split_at + 1;
            cl = strlen(c);
        } else if (json_is_array(e) && json_array_size(e) == 2 &&
                   json_is_string(json_array_get(e, 0)) && json_is_string(json_array_get(e, 1))) {
            a = json_string_value(json_array_get(e, 0));
            al = json_string_length(json_array_get(e, 0));
            c = json_string_value(json_array_get(e, 1));
            cl = json_string_length(json_array_get(e, 1));
        } else {
            free(b.s);
            return kerr_add(err, "%s: merges[%zu]: expected \"a b\" or [\"a\", \"b\"]", where, i);
        }
        tok_sbuf fa = {0}, fc = {0};
        a = tok_nul_fix(&fa, a, al, &al);
        c = tok_nul_fix(&fc, c, cl, &cl);
        int32_t ia = -1, ic = -1, inew = -1;
        int bad = 0;
        if (!tok_strmap_get(&m->vocab, a, al, &ia) || !tok_strmap_get(&m->vocab, c, cl, &ic)) {
            int a_ok = ia >= 0;
            size_t bl = a_ok ? cl : al;
            bad = kerr_add(err, "%s: merges[%zu]: token \"%.*s%s\" is not in the vocabulary", where,
                           i, (int)(bl > 60 ? 60 : bl), a_ok ? c : a, bl > 60 ? "..." : "");
        } else if (cl < m->prefix_len) {
            bad = kerr_add(err, "%s: merges[%zu]: \"%.*s\" is shorter than the subword prefix",
                           where, i, (int)(cl > 60 ? 60 : cl), c);
        } else {
            b.n = 0;
            tok_sbuf_put(&b, a, al);
            tok_sbuf_put(&b, c + m->prefix_len, cl - m->prefix_len);
            if (!tok_strmap_get(&m->vocab, b.s, b.n, &inew))
                bad = kerr_add(err, "%s: merges[%zu]: merged token \"%.60s\" is not in the vocabulary",
                               where, i, b.s);
        }
        free(fa.s);
        free(fc.s);
        if (bad) {
            free(b.s);
            return -1;
        }
        merge_put(m, ia, ic, (uint32_t)i, inew);
    }
    free(b.s);
    return 0;
}

tok_model *tok_model_load(json_t *j, const char *where, kerr *err)
{
    if (!json_is_object(j)) {
        kerr_add(err, "%s: \"model\" is missing or not an object", where);
        return NULL;
    }
    const char *type = json_string_value(json_object_get(j, "type"));
    json_t *vocab = json_object_get(j, "vocab");
    if (!type) /* very old files have no "type"; HF then guesses from the fields */
        type = json_object_get(j, "merges")                     ? "BPE"
               : json_object_get(j, "max_input_chars_per_word") ? "WordPiece"
               : json_is_array(vocab)                          ? "Unigram"
                                                               : "WordLevel";
    tok_model *m = xcalloc(1, sizeof *m);
    if (strcmp(type, "BPE") == 0)
        m->type = M_BPE;
    else if (strcmp(type, "WordPiece") == 0)
        m->type = M_WORDPIECE;
    else if (strcmp(type, "WordLevel") == 0)
        m->type = M_WORDLEVEL;
    else {
        kerr_add(err, "%s: unsupported model \"%.60s\" (kiln supports BPE, WordPiece and WordLevel)",
                 where, type);
        free(m);
        return NULL;
    }
    if (load_vocab(m, vocab, where, err))
        goto fail;
    if (m->type == M_BPE) {
        if (load_bpe(m, j, where, err))
            goto fail;
    } else {
        m->unk = opt_str(j, "unk_token", &m->unk_len);
        if (!m->unk) {
            m->unk = xstrdup(m->type == M_WORDPIECE ? "[UNK]" : "<unk>");
            m->unk_len = strlen(m->unk);
        }
        if (!tok_strmap_get(&m->vocab, m->unk, m->unk_len, &m->unk_id))
            m->unk_id = -2;
        if (m->type == M_WORDPIECE) {
            m->prefix = opt_str(j, "continuing_subword_prefix", &m->prefix_len);
            if (!m->prefix)
                m->prefix = xstrdup("##"), m->prefix_len = 2;
            json_t *mc = json_object_get(j, "max_input_chars_per_word");
            m->max_chars = 100;
            if (mc && !json_is_null(mc)) {
                long long x;
                if (tok_json_int(mc, 0, TOK_MAX_LEN, &x, err, "%s: model.max_input_chars_per_word",
                                 where))
                    goto fail;
                m->max_chars = (size_t)x;
            }
        }
    }
    return m;
fail:
    tok_model_free(m);
    return NULL;
}

/* ---------------------------------------------------------------- queries */

int tok_model_token_to_id(const tok_model *m, const char *s, size_t len, int32_t *id)
{
    return tok_strmap_get(&m->vocab, s, len, id);
}

const char *tok_model_id_to_token(const tok_model *m, int32_t id, size_t *len)
{
    if (id < 0 || id > m->max_id || !m->id2tok[id])
        return NULL;
    if (len)
        *len = m->id2len[id];
    return m->id2tok[id];
}

size_t tok_model_vocab_size(const tok_model *m) { return m->vocab.n; }
int32_t tok_model_max_id(const tok_model *m) { return m->max_id; }

/* ---------------------------------------------------------------- BPE */

static void scratch(tok_bpe_scratch *w, size_t n)
{
    if (n <= w->scap)
        return;
    size_t c = w->scap ? w->scap : 64;
    while (c < n)
        c *= 2;
    w->sc = xrealloc(w->sc, c * sizeof *w->sc);
    w->sprev = xrealloc(w->sprev, c * sizeof *w->sprev);
    w->snext = xrealloc(w->snext, c * sizeof *w->snext);
    w->slen = xrealloc(w->slen, c * sizeof *w->slen);
    w->scap = c;
}

static int heap_less(const heap_ent *a, const heap_ent *b)
{
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(tok_bpe_scratch *w, heap_ent e)
{
    if (w->heap_n == w->heap_cap) {
        w->heap_cap = w->heap_cap ? w->heap_cap * 2 : 64;
        w->heap = xrealloc(w->heap, w->heap_cap * sizeof *w->heap);
    }
    size_t i = w->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&e, &w->heap[p]))
            break;
        w->heap[i] = w->heap[p];
        i = p;
    }
    w->heap[i] = e;
}

static heap_ent heap_pop(tok_bpe_scratch *w)
{
    heap_ent top = w->heap[0], last = w->heap[--w->heap_n];
    size_t i = 0, n = w->heap_n;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, s = i;
        const heap_ent *best = &last;
        if (l < n && heap_less(&w->heap[l], best))
            s = l, best = &w->heap[l];
        if (r < n && heap_less(&w->heap[r], best))
            s = r;
        if (s == i)
            break;
        w->heap[i] = w->heap[s];
        i = s;
    }
    if (n)
        w->heap[i] = last;
    return top;
}

static int unk_id(const tok_model *m, kerr *err)
{
    if (m->unk_id == -2)
        return kerr_add(err, "tokenizer: the unk token \"%.60s\" is not in the model's vocabulary",
                        m->unk);
    return m->unk_id;
}

/* HF's merge_word + merge_all: writes the ids of the tokens of word wd to out. */
static int bpe_word(const tok_model *m, tok_bpe_scratch *w, const char *wd, size_t n, tok_ivec *out,
                    kerr *err)
{
    scratch(w, n + 1);
    size_t ns = 0;
    int32_t pend_unk = -1;
    uint32_t pend_len = 0;
    int plain = !m->prefix && !m->suffix;
#define ADD(id_, len_) (w->sc[ns] = (id_), w->slen[ns] = (uint32_t)(len_), ns++)
    for (size_t i = 0; i < n;) {
        size_t at = i;
        i += tok_u8_len((unsigned char)wd[i]);
        size_t bl = i - at;
        int32_t id = -1;
        const char *key = wd + at;
        size_t klen = bl;
        if (plain && bl == 1) {
            id = m->ascii_ids[(unsigned char)wd[at]];
        } else {
            if (!plain) {
                w->tmp.n = 0;
                if (at > 0 && m->prefix)
                    tok_sbuf_put(&w->tmp, m->prefix, m->prefix_len);
                tok_sbuf_put(&w->tmp, wd + at, bl);
                if (i == n && m->suffix)
                    tok_sbuf_put(&w->tmp, m->suffix, m->suffix_len);
                key = w->tmp.s;
                klen = w->tmp.n;
            }
            if (!tok_strmap_get(&m->vocab, key, klen, &id))
                id = -1;
        }
        if (id >= 0) {
            if (pend_unk >= 0) {
                ADD(pend_unk, pend_len);
                pend_unk = -1;
            }
            ADD(id, bl);
            continue;
        }
        if (m->byte_fallback) {
            int all = 1;
            for (size_t k = 0; k < klen && all; k++)
                all = m->byte_ids[(unsigned char)key[k]] >= 0;
            if (all) {
                /* HF adds the byte tokens without flushing a pending unk first; so do we. */
                scratch(w, ns + klen + n + 1);
                for (size_t k = 0; k < klen; k++)
                    ADD(m->byte_ids[(unsigned char)key[k]], 1);
                continue;
            }
        }
        if (m->unk) {
            int u = unk_id(m, err);
            if (u < 0)
                return -1;
            if (pend_unk >= 0 && m->fuse_unk)
                pend_len += (uint32_t)bl;
            else {
                if (pend_unk >= 0)
                    ADD(pend_unk, pend_len);
                pend_unk = u;
                pend_len = (uint32_t)bl;
            }
        }
    }
    if (pend_unk >= 0)
        ADD(pend_unk, pend_len);
#undef ADD
    for (size_t k = 0; k < ns; k++) {
        w->sprev[k] = (int32_t)k - 1;
        w->snext[k] = k + 1 < ns ? (int32_t)k + 1 : -1;
    }
    w->heap_n = 0;
    for (size_t k = 0; k + 1 < ns; k++) {
        merge_slot *ms = merge_find(m, w->sc[k], w->sc[k + 1]);
        if (ms)
            heap_push(w, (heap_ent){ms->rank, (uint32_t)k, ms->new_id});
    }
    while (w->heap_n) {
        heap_ent top = heap_pop(w);
        size_t p = top.pos;
        if (w->slen[p] == 0 || w->snext[p] == -1)
            continue;
        size_t nx = (size_t)w->snext[p];
        merge_slot *ms = merge_find(m, w->sc[p], w->sc[nx]);
        if (!ms || ms->new_id != top.new_id)
            continue;
        w->sc[p] = top.new_id;
        w->slen[p] += w->slen[nx];
        w->snext[p] = w->snext[nx];
        w->slen[nx] = 0;
        if (w->snext[nx] >= 0)
            w->sprev[w->snext[nx]] = (int32_t)p;
        if (w->sprev[p] >= 0) {
            size_t pv = (size_t)w->sprev[p];
            merge_slot *mp = merge_find(m, w->sc[pv], w->sc[p]);
            if (mp)
                heap_push(w, (heap_ent){mp->rank, (uint32_t)pv, mp->new_id});
        }
        if (w->snext[p] >= 0) {
            merge_slot *mn = merge_find(m, w->sc[p], w->sc[w->snext[p]]);
            if (mn)
                heap_push(w, (heap_ent){mn->rank, (uint32_t)p, mn->new_id});
        }
    }
    for (size_t k = 0; k < ns; k++)
        if (w->slen[k])
            tok_ivec_push(out, w->sc[k]);
    return 0;
}

static int bpe_tokenize(const tok_model *m, tok_bpe_scratch *w, const char *s, size_t n,
                        tok_ivec *out, kerr *err)
{
    if (n == 0)
        return 0;
    int32_t id;
    if (m->ignore_merges && tok_strmap_get(&m->vocab, s, n, &id)) {
        tok_ivec_push(out, id);
        return 0;
    }
    if (n >= CACHE_MAX_WORD)
        return bpe_word(m, w, s, n, out, err);
    uint64_t h = tok_hash(s, n);
    cache_ent *ce = &w->cache[h & (CACHE_SLOTS - 1)];
    if (ce->word && ce->hash == h && ce->len == n && memcmp(ce->word, s, n) == 0) {
        for (uint32_t k = 0; k < ce->nids; k++) {
            int32_t x;
            memcpy(&x, ce->word + n + k * sizeof x, sizeof x);
            tok_ivec_push(out, x);
        }
        return 0;
    }
    size_t before = out->n;
    if (bpe_word(m, w, s, n, out, err))
        return -1;
    size_t nids = out->n - before;
    free(ce->word);
    ce->word = xmalloc(n + nids * sizeof(int32_t));
    memcpy(ce->word, s, n);
    if (nids) /* a word of unknown characters with no unk token gives none */
        memcpy(ce->word + n, out->v + before, nids * sizeof(int32_t));
    ce->hash = h;
    ce->len = (uint32_t)n;
    ce->nids = (uint32_t)nids;
    return 0;
}

/* ---------------------------------------------------------------- WordPiece, WordLevel */

static int wordpiece_tokenize(const tok_model *m, tok_bpe_scratch *w, const char *s, size_t n,
                              tok_ivec *out, kerr *err)
{
    size_t nchars = 0;
    for (size_t i = 0; i < n; i += tok_u8_len((unsigned char)s[i]))
        nchars++;
    size_t before = out->n;
    if (nchars <= m->max_chars) {
        size_t start = 0;
        while (start < n) {
            /* No vocabulary entry is longer than max_key bytes, so a longer candidate cannot
             * match: starting there keeps a long word linear instead of quadratic. */
            size_t end = n - start > m->max_key ? start + m->max_key : n;
            while (end > start && end < n && ((unsigned char)s[end] & 0xC0) == 0x80)
                end--;
            int32_t found = -1;
            while (start < end) {
                const char *key = s + start;
                size_t klen = end - start;
                if (start > 0) {
                    w->tmp.n = 0;
                    tok_sbuf_put(&w->tmp, m->prefix, m->prefix_len);
                    tok_sbuf_put(&w->tmp, s + start, end - start);
                    key = w->tmp.s;
                    klen = w->tmp.n;
                }
                int32_t id;
                if (tok_strmap_get(&m->vocab, key, klen, &id)) {
                    found = id;
                    break;
                }
                do /* back off one character */
                    end--;
                while (end > start && ((unsigned char)s[end] & 0xC0) == 0x80);
            }
            if (found < 0)
                goto bad;
            tok_ivec_push(out, found);
            start = end;
        }
        return 0;
    }
bad:
    out->n = before;
    if (unk_id(m, err) < 0)
        return kerr_add(err, "tokenizer: WordPiece needs its unk token for \"%.*s\"",
                        (int)(n > 60 ? 60 : n), s);
    tok_ivec_push(out, m->unk_id);
    return 0;
}

int tok_model_tokenize(const tok_model *m, tok_ctx *c, const char *s, size_t len, kerr *err)
{
    if (!c->bpe) {
        c->bpe = xcalloc(1, sizeof *c->bpe);
        c->bpe->cache = xcalloc(CACHE_SLOTS, sizeof *c->bpe->cache);
    }
    tok_ivec *out = &c->ids;
    switch (m->type) {
    case M_BPE:
        return bpe_tokenize(m, c->bpe, s, len, out, err);
    case M_WORDPIECE:
        return wordpiece_tokenize(m, c->bpe, s, len, out, err);
    case M_WORDLEVEL: {
        int32_t id;
        if (tok_strmap_get(&m->vocab, s, len, &id)) {
            tok_ivec_push(out, id);
            return 0;
        }
        if (unk_id(m, err) < 0)
            return kerr_add(err, "tokenizer: WordLevel needs its unk token for \"%.*s\"",
                            (int)(len > 60 ? 60 : len), s);
        tok_ivec_push(out, m->unk_id);
        return 0;
    }
    }
    return kerr_add(err, "tokenizer: internal error: model type %d", m->type);
}
