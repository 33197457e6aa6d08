/* tokenizer — loads tokenizer.json and runs HF `tokenizers`' encode and decode pipelines.
 *
 * Encode, as TokenizerImpl::encode does it: (1) added tokens whose "normalized" flag is false
 * are split out of the raw text (leftmost-longest, honouring single_word/lstrip/rstrip);
 * (2) every other piece is normalized on its own, then added tokens with normalized=true are
 * split out of it (their patterns are normalized too); (3) the pre-tokenizer splits the rest;
 * (4) the model turns each piece into ids; (5) truncation, the post-processor (TemplateProcessing,
 * BertProcessing, RobertaProcessing, ByteLevel, Sequence) and padding run as tokenizer.json says.
 * Added tokens get ids exactly as AddedVocabulary::add_tokens assigns them. add_bos_token and
 * add_eos_token in tokenizer_config.json do not change the ids: transformers 5.17 also leaves
 * tokenizer.json's post-processor in charge (checked with AutoTokenizer, with and without a
 * post-processor and with Llama/Gemma tokenizer classes); the config files only name bos/eos.
 *
 * Decode: ids -> token strings (added tokens first, unknown ids dropped, special tokens dropped
 * when asked), then the decoder chain (ByteLevel, Metaspace, WordPiece, BPEDecoder, ByteFallback,
 * Fuse, Strip, Replace, CTC, Sequence; none: tokens joined with spaces).
 *
 * Invalid UTF-8 input: HF works on Rust/Python strings, which cannot hold it, so tok_encode first
 * replaces every maximal invalid byte sequence with U+FFFD — exactly what Python's
 * bytes.decode("utf-8", "replace") does — and encodes the result. Feeding HF the same decoded
 * string therefore gives the same ids (the test corpus checks this). Decoded text is always valid
 * UTF-8 (byte tokens that do not form characters become U+FFFD, as in HF).
 *
 * Hostile files: every number tokenizer.json or a config file gives is range-checked before
 * use (ids below TOK_MAX_ID, lengths below TOK_MAX_LEN, tokenizer.h), naming the file and the
 * field; messages quote at most a short prefix of the file's text.
 *
 * Not supported, each refused by name when tokenizer.json uses it: the Unigram model, the
 * Precompiled normalizer, the UnicodeScripts pre-tokenizer, BPE dropout. Pair encoding and
 * offsets are not provided (kiln encodes one sequence and needs ids only).
 */
#include "tokenizer.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tok_impl.h"

/* ---------------------------------------------------------------- types */

typedef struct added_tok {
    char *content;
    size_t len;
    char *norm; /* normalized content when it differs (HF's normalized_cache), else NULL */
    size_t norm_len;
    int32_t id;
    uint8_t single_word, lstrip, rstrip, normalized, special;
} added_tok;

/* Byte trie for leftmost-longest matching of added tokens. A node's children are found through
 * one hash table keyed by (node, byte), so a step costs O(1) whatever the fan-out; patterns are
 * at most TOK_MAX_ADDED bytes, so matching costs at most that many steps per input byte. */
typedef struct trie_node {
    int32_t value; /* index into tokenizer.added, -1 none */
} trie_node;
typedef struct trie {
    trie_node *n;
    size_t nn, cap;
    int32_t root[256]; /* first byte -> node, -1 none */
    uint64_t *hkey;    /* (node + 1) << 8 | byte; 0 = empty slot */
    int32_t *hval;     /* the child node */
    size_t hcap, hn;   /* hcap: a power of two */
    int empty;
} trie;
#define TOK_MAX_ADDED 1024

enum { PP_NONE, PP_TEMPLATE, PP_BERT, PP_ROBERTA, PP_BYTELEVEL, PP_SEQ };
#define PP_SEQ_A INT32_MIN /* marks $A inside a template */
typedef struct post {
    int type;
    int32_t *items; /* TemplateProcessing single: ids and PP_SEQ_A markers */
    size_t nitems;
    int32_t cls, sep;
    struct post **subs;
    size_t nsubs;
} post;

enum {
    D_BYTELEVEL, D_METASPACE, D_WORDPIECE, D_BPE, D_BYTEFALLBACK, D_FUSE, D_STRIP, D_REPLACE, D_CTC,
    D_SEQ
};
typedef struct dec {
    int type;
    char *a, *b; /* WordPiece prefix / BPE suffix / Replace content / CTC pad, word delimiter */
    size_t alen, blen;
    int32_t cp;  /* Metaspace replacement, Strip content */
    int never;   /* Metaspace prepend_scheme == never */
    int cleanup;
    size_t start, stop;
    tok_regex re;
    struct dec **subs;
    size_t nsubs;
} dec;

struct tokenizer {
    char *file; /* the tokenizer.json path, for messages */
    tok_model *model;
    tok_norm *norm;
    tok_pretok *pretok;
    post *post;
    dec *dec;
    int has_dec;
    /* Streaming (see tok_stream): whether the chain can stream by windows, and the decoder steps
     * that run before its ByteFallback (Replaces only), to tell byte tokens as ByteFallback
     * sees them. */
    int stream_window;
    int byte_fallback;
    const dec **pre_bf;
    size_t npre_bf;
    added_tok *added;
    size_t nadded;
    tok_strmap added_map;   /* content -> index in added */
    tok_strmap special_set; /* contents of special tokens (value unused) */
    int32_t *id2added;      /* id -> index in added, -1 */
    size_t id2added_n;
    trie plain, normed;
    /* truncation / padding from tokenizer.json */
    int trunc, trunc_left, trunc_only_second;
    size_t trunc_max;
    int pad, pad_left;
    size_t pad_fixed, pad_multiple;
    int32_t pad_id;
    /* special ids */
    int32_t bos, eos_list[16];
    size_t neos;
    size_t vocab_size;
    /* Scratch for encode calls: a free list of contexts, each used by one call at a time. The
     * rest of the struct is read-only after tok_load (see tokenizer.h on threads). */
    pthread_mutex_t pool_lock;
    tok_ctx *pool;
};

/* ---------------------------------------------------------------- encode contexts */

static tok_ctx *ctx_get(tokenizer *t)
{
    pthread_mutex_lock(&t->pool_lock);
    tok_ctx *c = t->pool;
    if (c)
        t->pool = c->next;
    pthread_mutex_unlock(&t->pool_lock);
    if (!c) {
        c = xcalloc(1, sizeof *c);
        c->md = tok_match_data_new();
    }
    return c;
}

static void ctx_put(tokenizer *t, tok_ctx *c)
{
    tok_arena_reset(&c->arena);
    tok_ctx_trim(c, (size_t)4 << 20);
    pthread_mutex_lock(&t->pool_lock);
    c->next = t->pool;
    t->pool = c;
    pthread_mutex_unlock(&t->pool_lock);
}

static void ctx_free(tok_ctx *c)
{
    tok_arena_free(&c->arena);
    free(c->sb.s);
    free(c->sb2.s);
    free(c->segs);
    free(c->pieces.v);
    free(c->spare.v);
    free(c->ids.v);
    pcre2_match_data_free(c->md);
    tok_bpe_scratch_free(c->bpe);
    free(c);
}

/* ---------------------------------------------------------------- trie */

static size_t trie_slot(const trie *t, uint64_t key)
{
    size_t j = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 17) & (t->hcap - 1);
    while (t->hkey[j] && t->hkey[j] != key)
        j = (j + 1) & (t->hcap - 1);
    return j;
}

static int32_t trie_child(const trie *t, int32_t node, unsigned char b)
{
    if (!t->hcap)
        return -1;
    size_t j = trie_slot(t, ((uint64_t)node + 1) << 8 | b);
    return t->hkey[j] ? t->hval[j] : -1;
}

static void trie_link(trie *t, int32_t node, unsigned char b, int32_t child)
{
    if ((t->hn + 1) * 2 > t->hcap) {
        trie old = *t;
        t->hcap = t->hcap ? t->hcap * 2 : 256;
        t->hkey = xcalloc(t->hcap, sizeof *t->hkey);
        t->hval = xmalloc(t->hcap * sizeof *t->hval);
        for (size_t i = 0; i < old.hcap; i++)
            if (old.hkey[i]) {
                size_t j = trie_slot(t, old.hkey[i]);
                t->hkey[j] = old.hkey[i];
                t->hval[j] = old.hval[i];
            }
        free(old.hkey);
        free(old.hval);
    }
    uint64_t key = ((uint64_t)node + 1) << 8 | b;
    size_t j = trie_slot(t, key);
    t->hkey[j] = key;
    t->hval[j] = child;
    t->hn++;
}

static int32_t trie_new_node(trie *t)
{
    if (t->nn == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 64;
        t->n = xrealloc(t->n, t->cap * sizeof *t->n);
    }
    t->n[t->nn].value = -1;
    return (int32_t)t->nn++;
}

static void trie_add(trie *t, const char *s, size_t n, int32_t value)
{
    if (n == 0)
        return;
    int32_t node = t->root[(unsigned char)s[0]];
    if (node < 0)
        node = t->root[(unsigned char)s[0]] = trie_new_node(t);
    for (size_t i = 1; i < n; i++) {
        int32_t next = trie_child(t, node, (unsigned char)s[i]);
        if (next < 0) {
            next = trie_new_node(t);
            trie_link(t, node, (unsigned char)s[i], next);
        }
        node = next;
    }
    if (t->n[node].value < 0) /* two tokens with one pattern: the first added wins */
        t->n[node].value = value;
    t->empty = 0;
}

/* Longest token starting at s[0]; returns its index and *len, or -1. */
static int32_t trie_longest(const trie *t, const char *s, size_t n, size_t *len)
{
    int32_t best = -1, cur = t->root[(unsigned char)s[0]];
    for (size_t i = 0; cur >= 0;) {
        if (t->n[cur].value >= 0) {
            best = t->n[cur].value;
            *len = i + 1;
        }
        if (++i >= n)
            break;
        cur = trie_child(t, cur, (unsigned char)s[i]);
    }
    return best;
}

static void trie_free(trie *t)
{
    free(t->n);
    free(t->hkey);
    free(t->hval);
}

/* ---------------------------------------------------------------- added tokens */

static int32_t added_index(const tokenizer *t, int32_t id)
{
    return id >= 0 && (size_t)id < t->id2added_n ? t->id2added[id] : -1;
}

static void id2added_set(tokenizer *t, int32_t id, int32_t idx)
{
    if ((size_t)id >= t->id2added_n) {
        size_t n = t->id2added_n ? t->id2added_n : 64;
        while (n <= (size_t)id)
            n *= 2;
        t->id2added = xrealloc(t->id2added, n * sizeof *t->id2added);
        for (size_t i = t->id2added_n; i < n; i++)
            t->id2added[i] = -1;
        t->id2added_n = n;
    }
    t->id2added[id] = idx;
}

static int32_t token_to_id(const tokenizer *t, const char *s, size_t n)
{
    int32_t idx, id;
    if (tok_strmap_get(&t->added_map, s, n, &idx))
        return t->added[idx].id;
    if (tok_model_token_to_id(t->model, s, n, &id))
        return id;
    return -1;
}

/* One entry of "added_tokens", added as AddedVocabulary::add_tokens does. */
static int add_token(tokenizer *t, tok_ctx *ctx, json_t *j, size_t i, int32_t *next_id, kerr *err)
{
    json_t *c = json_object_get(j, "content");
    if (!json_is_string(c))
        return kerr_add(err, "%s: added_tokens[%zu]: expected an object with a string \"content\"",
                        t->file, i);
    /* The id in the file is only checked (HF assigns ids itself, see below, and refuses one that
     * is not a u32); kiln also bounds it like every other id. */
    json_t *fid = json_object_get(j, "id");
    int32_t file_id;
    if (fid && tok_json_id(fid, &file_id, err, "%s: added_tokens[%zu].id", t->file, i))
        return -1;
    added_tok a = {0};
    tok_sbuf fix = {0};
    const char *s = tok_nul_fix(&fix, json_string_value(c), json_string_length(c), &a.len);
    if (a.len == 0)
        return 0;
    if (a.len > TOK_MAX_ADDED) {
        free(fix.s);
        return kerr_add(err, "%s: added_tokens[%zu].content: %zu bytes; added tokens are at most %d",
                        t->file, i, a.len, TOK_MAX_ADDED);
    }
    a.single_word = json_is_true(json_object_get(j, "single_word"));
    a.lstrip = json_is_true(json_object_get(j, "lstrip"));
    a.rstrip = json_is_true(json_object_get(j, "rstrip"));
    a.special = json_is_true(json_object_get(j, "special"));
    json_t *nz = json_object_get(j, "normalized");
    a.normalized = json_is_boolean(nz) ? json_is_true(nz) : !a.special;
    int32_t idx;
    if (tok_strmap_get(&t->added_map, s, a.len, &idx)) {
        added_tok *o = &t->added[idx];
        if (o->single_word == a.single_word && o->lstrip == a.lstrip && o->rstrip == a.rstrip &&
            o->normalized == a.normalized && o->special == a.special) {
            free(fix.s);
            return 0;
        }
    }
    a.id = token_to_id(t, s, a.len);
    if (a.id < 0) {
        if (*next_id >= TOK_MAX_ID) {
            free(fix.s);
            return kerr_add(err, "%s: added_tokens[%zu]: the new token would get id %d; ids must be "
                                 "below %d",
                            t->file, i, (int)*next_id, TOK_MAX_ID);
        }
        a.id = (*next_id)++;
    }
    a.content = xmalloc(a.len + 1);
    memcpy(a.content, s, a.len);
    a.content[a.len] = 0;
    free(fix.s);
    if (a.normalized && t->norm) {
        const char *o;
        size_t on;
        int lead = 0;
        if (tok_norm_apply(t->norm, ctx, a.content, a.len, &o, &on, &lead, err)) {
            free(a.content);
            return -1;
        }
        if (on != a.len || memcmp(o, a.content, on) != 0) {
            a.norm = xmalloc(on + 1);
            memcpy(a.norm, o, on);
            a.norm[on] = 0;
            a.norm_len = on;
        }
    }
    /* An id added twice keeps its latest token (HF's added_tokens_map_r.insert). */
    int32_t prev = added_index(t, a.id);
    if (prev >= 0) {
        added_tok *o = &t->added[prev];
        free(o->content);
        free(o->norm);
        *o = a;
        idx = prev;
    } else {
        t->added = xrealloc(t->added, (t->nadded + 1) * sizeof *t->added);
        t->added[t->nadded] = a;
        idx = (int32_t)t->nadded++;
        id2added_set(t, a.id, idx);
    }
    tok_strmap_set(&t->added_map, a.content, a.len, idx);
    if (a.special)
        tok_strmap_set(&t->special_set, a.content, a.len, 1);
    return 0;
}

static int load_added(tokenizer *t, json_t *arr, kerr *err)
{
    if (!arr || json_is_null(arr))
        return 0;
    if (!json_is_array(arr))
        return kerr_add(err, "%s: \"added_tokens\" must be an array", t->file);
    /* next_id as HF computes it before the (single) add_tokens call of deserialization; capped so
     * that a vocabulary of more than TOK_MAX_ID entries cannot wrap it */
    size_t vn = tok_model_vocab_size(t->model);
    int32_t next_id = vn < TOK_MAX_ID ? (int32_t)vn : TOK_MAX_ID;
    tok_ctx *c = ctx_get(t);
    for (size_t i = 0; i < json_array_size(arr); i++)
        if (add_token(t, c, json_array_get(arr, i), i, &next_id, err)) {
            ctx_put(t, c);
            return -1;
        }
    ctx_put(t, c);
    /* trie nodes are int32 indices: at most one node per byte of the patterns */
    size_t bytes = 0;
    for (size_t k = 0; k < t->nadded; k++)
        bytes += t->added[k].norm ? t->added[k].norm_len : t->added[k].len;
    if (bytes > (size_t)1 << 28)
        return kerr_add(err, "%s: added_tokens: %zu bytes of token text; at most %zu", t->file,
                        bytes, (size_t)1 << 28);
    /* Build the two matchers; iterate by id like HF's map does (first pattern wins on ties). */
    memset(t->plain.root, -1, sizeof t->plain.root);
    memset(t->normed.root, -1, sizeof t->normed.root);
    t->plain.empty = t->normed.empty = 1;
    for (size_t id = 0; id < t->id2added_n; id++) {
        int32_t k = t->id2added[id];
        if (k < 0 || t->added[k].id != (int32_t)id)
            continue;
        added_tok *a = &t->added[k];
        if (a->normalized)
            trie_add(&t->normed, a->norm ? a->norm : a->content, a->norm ? a->norm_len : a->len, k);
        else
            trie_add(&t->plain, a->content, a->len, k);
    }
    return 0;
}

static int prev_char_is_word(const char *s, size_t at)
{
    if (at == 0)
        return 0;
    size_t k = at - 1;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80)
        k--;
    return tok_is_rust_word(tok_u8_next(s, &k));
}

/* AddedVocabulary::find_matches + split_with_indices on one piece, appending to out. */
static void split_added(const tokenizer *t, const trie *tr, const tok_piece *pc, tok_pieces *out)
{
    const char *s = pc->s;
    size_t n = pc->len, start_off = 0;
    if (tr->empty || n == 0) {
        if (n)
            tok_pieces_push(out, s, n, -1, pc->origin);
        return;
    }
    for (size_t i = 0; i < n;) {
        size_t mlen = 0;
        int32_t k = tr->root[(unsigned char)s[i]] >= 0 ? trie_longest(tr, s + i, n - i, &mlen) : -1;
        if (k < 0) {
            i++;
            continue;
        }
        const added_tok *a = &t->added[k];
        size_t start = i, stop = i + mlen;
        i = stop; /* the automaton resumes after the match, whether it is used or not */
        if (a->single_word) {
            size_t q = stop;
            int start_space = start == 0 || !prev_char_is_word(s, start);
            int stop_space = stop == n || !tok_is_rust_word(tok_u8_next(s, &q));
            if (!start_space || !stop_space)
                continue;
        }
        if (a->lstrip) {
            size_t ns = start;
            while (ns > start_off) { /* text before start_off is already split off */
                size_t k2 = ns - 1;
                while (k2 > 0 && ((unsigned char)s[k2] & 0xC0) == 0x80)
                    k2--;
                size_t kk = k2;
                if (!tok_is_whitespace(tok_u8_next(s, &kk)))
                    break;
                ns = k2;
            }
            start = ns;
        }
        if (a->rstrip) {
            while (stop < n) {
                size_t kk = stop;
                if (!tok_is_whitespace(tok_u8_next(s, &kk)))
                    break;
                stop = kk;
            }
        }
        if (start_off < start)
            tok_pieces_push(out, s + start_off, start - start_off, -1, pc->origin && start_off == 0);
        tok_pieces_push(out, s + start, stop - start, a->id, 0);
        start_off = stop;
        if (i < stop)
            i = stop;
    }
    if (start_off < n)
        tok_pieces_push(out, s + start_off, n - start_off, -1, pc->origin && start_off == 0);
}

/* ---------------------------------------------------------------- post-processors */

static void post_free(post *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->nsubs; i++)
        post_free(p->subs[i]);
    free(p->subs);
    free(p->items);
    free(p);
}

/* "cls": ["[CLS]", 101] */
static int pair_id(const tokenizer *t, json_t *j, const char *where, const char *key, int32_t *id,
                   kerr *err)
{
    json_t *v = json_object_get(j, key);
    if (!json_is_array(v) || json_array_size(v) != 2 || !json_is_string(json_array_get(v, 0)))
        return kerr_add(err, "%s: %s.%s: expected a [token, id] pair", t->file, where, key);
    return tok_json_id(json_array_get(v, 1), id, err, "%s: %s.%s[1]", t->file, where, key);
}

/* where: the field path for messages ("post_processor", "post_processor.processors[1]"). */
static post *post_load(tokenizer *t, json_t *j, const char *where, kerr *err)
{
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!type) {
        kerr_add(err, "%s: %s without a \"type\"", t->file, where);
        return NULL;
    }
    post *p = xcalloc(1, sizeof *p);
    if (strcmp(type, "ByteLevel") == 0) {
        p->type = PP_BYTELEVEL;
    } else if (strcmp(type, "BertProcessing") == 0 || strcmp(type, "RobertaProcessing") == 0) {
        p->type = type[0] == 'B' ? PP_BERT : PP_ROBERTA;
        if (pair_id(t, j, where, "cls", &p->cls, err) || pair_id(t, j, where, "sep", &p->sep, err))
            goto fail;
    } else if (strcmp(type, "TemplateProcessing") == 0) {
        p->type = PP_TEMPLATE;
        json_t *single = json_object_get(j, "single"), *sp = json_object_get(j, "special_tokens");
        if (!json_is_array(single)) {
            kerr_add(err, "%s: %s: TemplateProcessing needs a \"single\" array", t->file, where);
            goto fail;
        }
        size_t cap = 0;
        for (size_t i = 0; i < json_array_size(single); i++) {
            json_t *it = json_array_get(single, i), *st = json_object_get(it, "SpecialToken"),
                   *sq = json_object_get(it, "Sequence");
            if (sq) {
                const char *which = json_string_value(json_object_get(sq, "id"));
                if (!which || strcmp(which, "A") != 0) {
                    kerr_add(err, "%s: TemplateProcessing single template uses sequence %.60s "
                                  "(expected A)",
                             t->file, which ? which : "?");
                    goto fail;
                }
                if (p->nitems == cap)
                    p->items = xrealloc(p->items, (cap = cap * 2 + 8) * sizeof *p->items);
                p->items[p->nitems++] = PP_SEQ_A;
                continue;
            }
            const char *name = json_string_value(json_object_get(st, "id"));
            json_t *def = json_object_get(sp, name ? name : "");
            json_t *ids = json_object_get(def, "ids");
            if (!name || !json_is_array(ids)) {
                kerr_add(err, "%s: TemplateProcessing: special token %.60s has no entry with \"ids\" in "
                              "\"special_tokens\"",
                         t->file, name ? name : "(unnamed)");
                goto fail;
            }
            for (size_t k = 0; k < json_array_size(ids); k++) {
                int32_t id;
                if (tok_json_id(json_array_get(ids, k), &id, err,
                                "%s: %s.special_tokens[\"%.60s\"].ids[%zu]", t->file, where, name, k))
                    goto fail;
                if (p->nitems == cap)
                    p->items = xrealloc(p->items, (cap = cap * 2 + 8) * sizeof *p->items);
                p->items[p->nitems++] = id;
            }
        }
    } else if (strcmp(type, "Sequence") == 0) {
        p->type = PP_SEQ;
        json_t *a = json_object_get(j, "processors");
        if (!json_is_array(a)) {
            kerr_add(err, "%s: %s: Sequence needs a \"processors\" array", t->file, where);
            goto fail;
        }
        p->subs = xcalloc(json_array_size(a) + 1, sizeof *p->subs);
        for (size_t i = 0; i < json_array_size(a); i++) {
            char sub[256];
            snprintf(sub, sizeof sub, "%s.processors[%zu]", where, i);
            if (!(p->subs[p->nsubs] = post_load(t, json_array_get(a, i), sub, err)))
                goto fail;
            p->nsubs++;
        }
    } else {
        kerr_add(err, "%s: %s: unsupported post_processor \"%.60s\" (kiln supports "
                      "TemplateProcessing, BertProcessing, RobertaProcessing, ByteLevel, Sequence)",
                 t->file, where, type);
        goto fail;
    }
    return p;
fail:
    post_free(p);
    return NULL;
}

static size_t post_added(const post *p)
{
    if (!p)
        return 0;
    switch (p->type) {
    case PP_BERT:
    case PP_ROBERTA:
        return 2;
    case PP_TEMPLATE: {
        size_t n = 0;
        for (size_t i = 0; i < p->nitems; i++)
            n += p->items[i] != PP_SEQ_A;
        return n;
    }
    case PP_SEQ: {
        size_t n = 0;
        for (size_t i = 0; i < p->nsubs; i++)
            n += post_added(p->subs[i]);
        return n;
    }
    }
    return 0;
}

/* Wraps ids (in place) with the special tokens of p. */
static void post_apply(const post *p, tok_ivec *ids)
{
    if (!p)
        return;
    if (p->type == PP_SEQ) {
        for (size_t i = 0; i < p->nsubs; i++)
            post_apply(p->subs[i], ids);
        return;
    }
    if (p->type != PP_TEMPLATE && p->type != PP_BERT && p->type != PP_ROBERTA)
        return;
    tok_ivec out = {0};
    if (p->type == PP_TEMPLATE) {
        for (size_t i = 0; i < p->nitems; i++)
            if (p->items[i] == PP_SEQ_A)
                for (size_t k = 0; k < ids->n; k++)
                    tok_ivec_push(&out, ids->v[k]);
            else
                tok_ivec_push(&out, p->items[i]);
    } else {
        tok_ivec_push(&out, p->cls);
        for (size_t k = 0; k < ids->n; k++)
            tok_ivec_push(&out, ids->v[k]);
        tok_ivec_push(&out, p->sep);
    }
    free(ids->v);
    *ids = out;
}

/* ---------------------------------------------------------------- decoders */

static void dec_free(dec *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->nsubs; i++)
        dec_free(d->subs[i]);
    free(d->subs);
    free(d->a);
    free(d->b);
    tok_regex_free(&d->re);
    free(d);
}

static char *jdup(json_t *o, const char *k, const char *def, size_t *len)
{
    json_t *v = json_object_get(o, k);
    const char *s = json_is_string(v) ? json_string_value(v) : def;
    size_t n = json_is_string(v) ? json_string_length(v) : strlen(def);
    char *r = xmalloc(n + 1);
    memcpy(r, s, n);
    r[n] = 0;
    *len = n;
    return r;
}

static int32_t jchar(json_t *o, const char *k, int32_t def)
{
    json_t *v = json_object_get(o, k);
    if (!json_is_string(v))
        return def;
    const char *s = json_string_value(v);
    size_t i = 0;
    if (!*s)
        return -1;
    int32_t cp = tok_u8_next(s, &i);
    return i == json_string_length(v) ? cp : -1;
}

static dec *dec_load(tokenizer *t, json_t *j, kerr *err)
{
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!type) {
        kerr_add(err, "%s: decoder without a \"type\"", t->file);
        return NULL;
    }
    dec *d = xcalloc(1, sizeof *d);
    if (strcmp(type, "ByteLevel") == 0)
        d->type = D_BYTELEVEL;
    else if (strcmp(type, "ByteFallback") == 0)
        d->type = D_BYTEFALLBACK;
    else if (strcmp(type, "Fuse") == 0)
        d->type = D_FUSE;
    else if (strcmp(type, "Metaspace") == 0) {
        d->type = D_METASPACE;
        d->cp = jchar(j, "replacement", 0x2581);
        const char *ps = json_string_value(json_object_get(j, "prepend_scheme"));
        d->never = (ps && strcmp(ps, "never") == 0) || json_is_false(json_object_get(j, "add_prefix_space"));
        if (d->cp < 0) {
            kerr_add(err, "%s: decoder Metaspace: \"replacement\" must be one character", t->file);
            goto fail;
        }
    } else if (strcmp(type, "WordPiece") == 0) {
        d->type = D_WORDPIECE;
        d->a = jdup(j, "prefix", "##", &d->alen);
        json_t *c = json_object_get(j, "cleanup");
        d->cleanup = json_is_boolean(c) ? json_is_true(c) : 1;
    } else if (strcmp(type, "BPEDecoder") == 0) {
        d->type = D_BPE;
        d->a = jdup(j, "suffix", "</w>", &d->alen);
    } else if (strcmp(type, "Strip") == 0) {
        d->type = D_STRIP;
        d->cp = jchar(j, "content", ' ');
        const char *k[2] = {"start", "stop"};
        size_t *dst[2] = {&d->start, &d->stop};
        for (int q = 0; q < 2; q++) {
            json_t *v = json_object_get(j, k[q]);
            long long x = 0;
            if (v && tok_json_int(v, 0, TOK_MAX_LEN, &x, err, "%s: decoder Strip.%s", t->file, k[q]))
                goto fail;
            *dst[q] = (size_t)x;
        }
        if (d->cp < 0) {
            kerr_add(err, "%s: decoder Strip: \"content\" must be one character", t->file);
            goto fail;
        }
    } else if (strcmp(type, "Replace") == 0) {
        d->type = D_REPLACE;
        d->a = jdup(j, "content", "", &d->alen);
        json_t *pat = json_object_get(j, "pattern");
        json_t *s = json_object_get(pat, "String"), *r = json_object_get(pat, "Regex");
        if (json_is_string(s))
            tok_regex_literal(&d->re, json_string_value(s), json_string_length(s));
        else if (json_is_string(r)) {
            char w[512];
            snprintf(w, sizeof w, "%s: decoder Replace", t->file);
            if (tok_regex_compile(&d->re, json_string_value(r), 1, w, err))
                goto fail;
        } else {
            kerr_add(err, "%s: decoder Replace: \"pattern\" must be {\"String\": ...} or "
                          "{\"Regex\": ...}",
                     t->file);
            goto fail;
        }
    } else if (strcmp(type, "CTC") == 0) {
        d->type = D_CTC;
        d->a = jdup(j, "pad_token", "<pad>", &d->alen);
        d->b = jdup(j, "word_delimiter_token", "|", &d->blen);
        json_t *c = json_object_get(j, "cleanup");
        d->cleanup = json_is_boolean(c) ? json_is_true(c) : 1;
    } else if (strcmp(type, "Sequence") == 0) {
        d->type = D_SEQ;
        json_t *a = json_object_get(j, "decoders");
        if (!json_is_array(a)) {
            kerr_add(err, "%s: decoder Sequence needs a \"decoders\" array", t->file);
            goto fail;
        }
        d->subs = xcalloc(json_array_size(a) + 1, sizeof *d->subs);
        for (size_t i = 0; i < json_array_size(a); i++) {
            if (!(d->subs[d->nsubs] = dec_load(t, json_array_get(a, i), err)))
                goto fail;
            d->nsubs++;
        }
    } else {
        kerr_add(err, "%s: unsupported decoder \"%.60s\" (kiln supports ByteLevel, Metaspace, "
                      "WordPiece, BPEDecoder, ByteFallback, Fuse, Strip, Replace, CTC, Sequence)",
                 t->file, type);
        goto fail;
    }
    return d;
fail:
    dec_free(d);
    return NULL;
}

/* A list of token strings moving through the decoder chain. */
typedef struct slist {
    tok_sbuf *v;
    size_t n, cap;
} slist;

static tok_sbuf *slist_add(slist *l)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->v = xrealloc(l->v, l->cap * sizeof *l->v);
    }
    tok_sbuf *b = &l->v[l->n++];
    memset(b, 0, sizeof *b);
    tok_sbuf_put(b, "", 0);
    return b;
}

/* Appends b, taking ownership of its buffer. */
static void slist_push(slist *l, tok_sbuf b)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->v = xrealloc(l->v, l->cap * sizeof *l->v);
    }
    if (!b.s)
        tok_sbuf_put(&b, "", 0);
    l->v[l->n++] = b;
}

static void slist_free(slist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i].s);
    free(l->v);
    memset(l, 0, sizeof *l);
}

/* In s (n bytes), replace every occurrence of `from` with `to` into o (str::replace). */
static void replace_str(tok_sbuf *o, const char *s, size_t n, const char *from, size_t fl,
                        const char *to, size_t tl)
{
    size_t i = 0;
    while (i < n) {
        const char *hit = fl ? memmem(s + i, n - i, from, fl) : NULL;
        if (!hit) {
            tok_sbuf_put(o, s + i, n - i);
            return;
        }
        tok_sbuf_put(o, s + i, (size_t)(hit - (s + i)));
        tok_sbuf_put(o, to, tl);
        i = (size_t)(hit - s) + fl;
    }
}

static void wp_cleanup(tok_sbuf *b)
{
    static const char *rep[][2] = {{" .", "."},     {" ?", "?"},     {" !", "!"},
                                   {" ,", ","},     {" ' ", "'"},    {" n't", "n't"},
                                   {" 'm", "'m"},   {" do not", " don't"}, {" 's", "'s"},
                                   {" 've", "'ve"}, {" 're", "'re"}};
    for (size_t r = 0; r < ARRAY_LEN(rep); r++) {
        if (!memmem(b->s, b->n, rep[r][0], strlen(rep[r][0])))
            continue;
        tok_sbuf o = {0};
        tok_sbuf_put(&o, "", 0);
        replace_str(&o, b->s, b->n, rep[r][0], strlen(rep[r][0]), rep[r][1], strlen(rep[r][1]));
        free(b->s);
        *b = o;
    }
}

/* The byte of a ByteFallback token "<0xNN>" (u8::from_str_radix also takes "+N"), or -1. */
static int byte_token(const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdefABCDEF";
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>' || !s[3] || !s[4] ||
        !(s[3] == '+' || strchr(hex, s[3])) || !strchr(hex, s[4]))
        return -1;
    char hx[3] = {s[3], s[4], 0};
    return (int)strtol(hx, NULL, 16);
}

/* Runs decoder d on the token list l. *open_tail is set when the text ends inside a UTF-8
 * character that later tokens may complete (ByteLevel joins the bytes of all tokens). */
static int dec_chain(const dec *d, slist *l, int *open_tail, kerr *err)
{
    switch (d->type) {
    case D_SEQ:
        for (size_t i = 0; i < d->nsubs; i++)
            if (dec_chain(d->subs[i], l, open_tail, err))
                return -1;
        return 0;
    case D_BYTELEVEL: {
        tok_sbuf raw = {0};
        const tok_bytelevel *bl = tok_bytelevel_table();
        for (size_t t = 0; t < l->n; t++) {
            const char *s = l->v[t].s;
            size_t n = l->v[t].n, i = 0, mark = raw.n;
            while (i < n) {
                int32_t cp = tok_u8_next(s, &i);
                int32_t b = cp >= 0 && cp < (int32_t)ARRAY_LEN(bl->byte_of) ? bl->byte_of[cp] - 1 : -1;
                if (b < 0) { /* not all byte-level: the token's own bytes */
                    raw.n = mark;
                    tok_sbuf_put(&raw, s, n);
                    break;
                }
                tok_sbuf_putc(&raw, (char)b);
            }
        }
        slist_free(l);
        tok_sbuf *o = slist_add(l);
        tok_u8_sanitize(o, raw.s ? raw.s : "", raw.n);
        *open_tail = tok_u8_truncated(raw.s ? raw.s : "", raw.n);
        free(raw.s);
        return 0;
    }
    case D_FUSE: {
        tok_sbuf all = {0};
        tok_sbuf_put(&all, "", 0);
        for (size_t t = 0; t < l->n; t++)
            tok_sbuf_put(&all, l->v[t].s, l->v[t].n);
        slist_free(l);
        slist_push(l, all);
        return 0;
    }
    case D_BYTEFALLBACK: {
        slist out = {0};
        tok_sbuf bytes = {0};
        for (size_t t = 0; t <= l->n; t++) {
            int byte = t < l->n ? byte_token(l->v[t].s, l->v[t].n) : -1;
            if (byte >= 0) {
                tok_sbuf_putc(&bytes, (char)byte);
                continue;
            }
            if (bytes.n) {
                tok_sbuf chk = {0};
                if (tok_u8_sanitize(&chk, bytes.s, bytes.n) == 0)
                    slist_push(&out, chk);
                else {
                    free(chk.s);
                    for (size_t k = 0; k < bytes.n; k++)
                        tok_sbuf_put(slist_add(&out), "\xEF\xBF\xBD", 3);
                }
                bytes.n = 0;
            }
            if (t < l->n) {
                slist_push(&out, l->v[t]);
                l->v[t].s = NULL;
            }
        }
        free(bytes.s);
        slist_free(l);
        *l = out;
        return 0;
    }
    default:
        break;
    }
    /* The rest map each token on its own. */
    if (d->type == D_CTC) {
        /* dedup consecutive equal tokens first */
        size_t k = 0;
        for (size_t t = 0; t < l->n; t++) {
            if (k > 0 && l->v[k - 1].n == l->v[t].n && memcmp(l->v[k - 1].s, l->v[t].s, l->v[t].n) == 0) {
                free(l->v[t].s);
                continue;
            }
            l->v[k++] = l->v[t];
        }
        l->n = k;
    }
    size_t last = l->n ? l->n - 1 : 0;
    size_t keep = 0;
    pcre2_match_data *md = NULL;
    for (size_t t = 0; t < l->n; t++) {
        tok_sbuf *b = &l->v[t];
        tok_sbuf o = {0};
        tok_sbuf_put(&o, "", 0);
        size_t i = 0;
        switch (d->type) {
        case D_METASPACE:
            while (i < b->n) {
                size_t at = i;
                int32_t cp = tok_u8_next(b->s, &i);
                if (cp == d->cp) {
                    if (!(t == 0 && !d->never))
                        tok_sbuf_putc(&o, ' ');
                } else
                    tok_sbuf_put(&o, b->s + at, i - at);
            }
            break;
        case D_WORDPIECE:
            if (t != 0) {
                if (b->n >= d->alen && memcmp(b->s, d->a, d->alen) == 0)
                    tok_sbuf_put(&o, b->s + d->alen, b->n - d->alen);
                else {
                    tok_sbuf_putc(&o, ' ');
                    tok_sbuf_put(&o, b->s, b->n);
                }
            } else
                tok_sbuf_put(&o, b->s, b->n);
            if (d->cleanup)
                wp_cleanup(&o);
            break;
        case D_BPE:
            replace_str(&o, b->s, b->n, d->a, d->alen, t == last ? "" : " ", t == last ? 0 : 1);
            break;
        case D_STRIP: {
            /* count characters, then cut up to `start` leading and `stop` trailing `content` */
            size_t nch = 0;
            for (i = 0; i < b->n; i += tok_u8_len((unsigned char)b->s[i]))
                nch++;
            size_t *pos = xmalloc((nch + 1) * sizeof *pos);
            int32_t *cps = xmalloc((nch + 1) * sizeof *cps);
            size_t c = 0;
            for (i = 0; i < b->n;) {
                pos[c] = i;
                cps[c++] = tok_u8_next(b->s, &i);
            }
            pos[c] = b->n;
            size_t sc = 0, ec = nch;
            for (size_t q = 0; q < d->start && q < nch; q++) {
                if (cps[q] != d->cp)
                    break;
                sc = q + 1;
            }
            for (size_t q = 0; q < d->stop && q < nch; q++) {
                size_t idx = nch - q - 1;
                if (cps[idx] != d->cp)
                    break;
                ec = idx;
            }
            if (ec > sc)
                tok_sbuf_put(&o, b->s + pos[sc], pos[ec] - pos[sc]);
            free(pos);
            free(cps);
            break;
        }
        case D_REPLACE: {
            size_t p0 = 0, prev = (size_t)-1, ms, me;
            if (!d->re.literal && !md)
                md = tok_match_data_new(); /* decode keeps no scratch in the tokenizer */
            for (;;) {
                int r = tok_regex_next(&d->re, md, b->s, b->n, p0, prev, &ms, &me);
                if (r < 0) {
                    free(o.s);
                    pcre2_match_data_free(md);
                    return kerr_add(err, "tokenizer: decoder Replace: regex match failed");
                }
                if (r == 0)
                    break;
                tok_sbuf_put(&o, b->s + p0, ms - p0);
                tok_sbuf_put(&o, d->a, d->alen);
                p0 = prev = me;
                if (me >= b->n)
                    break;
            }
            tok_sbuf_put(&o, b->s + p0, b->n - p0);
            break;
        }
        case D_CTC: {
            replace_str(&o, b->s, b->n, d->a, d->alen, "", 0);
            if (d->cleanup) {
                wp_cleanup(&o);
                tok_sbuf o2 = {0};
                tok_sbuf_put(&o2, "", 0);
                replace_str(&o2, o.s, o.n, d->b, d->blen, " ", 1);
                free(o.s);
                o = o2;
            }
            break;
        }
        }
        free(b->s);
        if (d->type == D_CTC && o.n == 0) {
            free(o.s);
            continue;
        }
        l->v[keep++] = o;
    }
    l->n = keep;
    if (md)
        pcre2_match_data_free(md);
    return 0;
}

/* ---------------------------------------------------------------- loading */

static json_t *load_json(const char *path, int required, kerr *err)
{
    if (!util_is_file(path)) {
        if (required)
            kerr_add(err, "%s: no such file", path);
        return NULL;
    }
    return tok_json_load(path, err);
}

/* "bos_token": "<s>" or {"content": "<s>", ...} -> id, -1 */
static int32_t config_token(const tokenizer *t, json_t *cfg, const char *key)
{
    json_t *v = json_object_get(cfg, key);
    if (json_is_object(v))
        v = json_object_get(v, "content");
    if (!json_is_string(v))
        return -1;
    tok_sbuf fix = {0};
    size_t n;
    const char *s = tok_nul_fix(&fix, json_string_value(v), json_string_length(v), &n);
    int32_t id = token_to_id(t, s, n);
    free(fix.s);
    return id;
}

/* Ids that encode emits or callers stop on (post-processor tokens, pad_id, bos/eos) must be ids
 * of this tokenizer: below tok_vocab_size, so a model's embedding lookup can trust them. */
static int in_vocab(const tokenizer *t, int32_t id, const char *file, const char *what, kerr *err)
{
    if ((size_t)id < t->vocab_size)
        return 0;
    return kerr_add(err, "%s: %s: %d is not an id of this tokenizer (its ids are 0 to %zu)", file,
                    what, (int)id, t->vocab_size - 1);
}

/* An id field of a config file ("bos_token_id": 1): -1 when absent or null, else checked. */
static int config_id(const tokenizer *t, json_t *cfg, const char *file, const char *key, int32_t *id,
                     kerr *err)
{
    json_t *v = json_object_get(cfg, key);
    *id = -1;
    if (!v || json_is_null(v))
        return 0;
    if (tok_json_id(v, id, err, "%s: %s", file, key) || in_vocab(t, *id, file, key, err))
        return *id = -1, -1;
    return 0;
}

/* "eos_token_id": 2 or [2, 32000] (generation_config.json may list several). */
static int config_eos(tokenizer *t, json_t *cfg, const char *file, kerr *err)
{
    json_t *v = json_object_get(cfg, "eos_token_id");
    if (!json_is_array(v)) {
        int32_t id;
        if (config_id(t, cfg, file, "eos_token_id", &id, err))
            return -1;
        if (id >= 0)
            t->eos_list[t->neos++] = id;
        return 0;
    }
    if (json_array_size(v) > ARRAY_LEN(t->eos_list))
        return kerr_add(err, "%s: eos_token_id lists %zu ids; kiln takes at most %zu", file,
                        json_array_size(v), ARRAY_LEN(t->eos_list));
    for (size_t i = 0; i < json_array_size(v); i++) {
        char what[64];
        snprintf(what, sizeof what, "eos_token_id[%zu]", i);
        if (tok_json_id(json_array_get(v, i), &t->eos_list[t->neos], err, "%s: %s", file, what) ||
            in_vocab(t, t->eos_list[t->neos], file, what, err))
            return -1;
        t->neos++;
    }
    return 0;
}

static int load_special_ids(tokenizer *t, const char *dir, kerr *err)
{
    json_t *gen = NULL, *tc = NULL, *stm = NULL, *cfg = NULL;
    int rc = 0;
    char *pgen = NULL, *pcfg = NULL;
    if (dir) {
        /* an absent file is fine; one that is there but does not parse is an error */
        pgen = util_path_join(dir, "generation_config.json");
        char *ptc = util_path_join(dir, "tokenizer_config.json");
        char *pstm = util_path_join(dir, "special_tokens_map.json");
        pcfg = util_path_join(dir, "config.json");
        if ((!(gen = load_json(pgen, 0, err)) && util_is_file(pgen)) |
            (!(tc = load_json(ptc, 0, err)) && util_is_file(ptc)) |
            (!(stm = load_json(pstm, 0, err)) && util_is_file(pstm)) |
            (!(cfg = load_json(pcfg, 0, err)) && util_is_file(pcfg)))
            rc = -1;
        free(ptc);
        free(pstm);
    }
    t->bos = -1;
    t->neos = 0;
    int32_t cfg_bos = -1;
    /* bos */
    if (rc == 0 && (config_id(t, gen, pgen, "bos_token_id", &t->bos, err) ||
                    config_id(t, cfg, pcfg, "bos_token_id", &cfg_bos, err)))
        rc = -1;
    if (t->bos < 0)
        t->bos = config_token(t, tc, "bos_token");
    if (t->bos < 0)
        t->bos = config_token(t, stm, "bos_token");
    if (t->bos < 0)
        t->bos = cfg_bos;
    /* eos: generation_config.json, then the token named by the tokenizer's config files, then
     * config.json */
    if (rc == 0 && config_eos(t, gen, pgen, err))
        rc = -1;
    if (rc == 0 && t->neos == 0) {
        int32_t e = config_token(t, tc, "eos_token");
        if (e < 0)
            e = config_token(t, stm, "eos_token");
        if (e >= 0)
            t->eos_list[t->neos++] = e;
    }
    if (rc == 0 && t->neos == 0 && config_eos(t, cfg, pcfg, err))
        rc = -1;
    json_decref(gen);
    json_decref(tc);
    json_decref(stm);
    json_decref(cfg);
    free(pgen);
    free(pcfg);
    return rc;
}

/* An optional length field: absent or null leaves *out as it is. */
static int opt_len(tokenizer *t, json_t *o, const char *path, const char *key, long long lo,
                   size_t *out, kerr *err)
{
    json_t *v = json_object_get(o, key);
    long long x;
    if (!v || json_is_null(v))
        return 0;
    if (tok_json_int(v, lo, TOK_MAX_LEN, &x, err, "%s: %s.%s", t->file, path, key))
        return -1;
    *out = (size_t)x;
    return 0;
}

static int load_trunc_pad(tokenizer *t, json_t *root, kerr *err)
{
    json_t *tr = json_object_get(root, "truncation");
    if (tr && !json_is_null(tr)) {
        if (!json_is_object(tr))
            return kerr_add(err, "%s: truncation: expected an object or null", t->file);
        long long x;
        if (tok_json_int(json_object_get(tr, "max_length"), 1, TOK_MAX_LEN, &x, err,
                         "%s: truncation.max_length", t->file))
            return -1;
        t->trunc = 1;
        t->trunc_max = (size_t)x;
        size_t stride = 0;
        if (opt_len(t, tr, "truncation", "stride", 0, &stride, err))
            return -1;
        if (stride >= t->trunc_max)
            return kerr_add(err, "%s: truncation.stride: %zu; expected less than max_length (%zu)",
                            t->file, stride, t->trunc_max);
        const char *dir = json_string_value(json_object_get(tr, "direction"));
        const char *st = json_string_value(json_object_get(tr, "strategy"));
        t->trunc_left = dir && strcmp(dir, "Left") == 0;
        t->trunc_only_second = st && strcmp(st, "OnlySecond") == 0;
    }
    json_t *pd = json_object_get(root, "padding");
    if (pd && !json_is_null(pd)) {
        if (!json_is_object(pd))
            return kerr_add(err, "%s: padding: expected an object or null", t->file);
        t->pad = 1;
        json_t *st = json_object_get(pd, "strategy");
        if (json_is_object(st)) {
            long long x;
            if (tok_json_int(json_object_get(st, "Fixed"), 1, TOK_MAX_LEN, &x, err,
                             "%s: padding.strategy.Fixed", t->file))
                return -1;
            t->pad_fixed = (size_t)x;
        } else if (st && (!json_is_string(st) || strcmp(json_string_value(st), "BatchLongest") != 0))
            return kerr_add(err, "%s: padding.strategy: expected \"BatchLongest\" or {\"Fixed\": N}",
                            t->file);
        t->pad_multiple = 0;
        if (opt_len(t, pd, "padding", "pad_to_multiple_of", 0, &t->pad_multiple, err))
            return -1;
        json_t *pid = json_object_get(pd, "pad_id");
        t->pad_id = 0;
        if (pid && tok_json_id(pid, &t->pad_id, err, "%s: padding.pad_id", t->file))
            return -1;
        const char *dir = json_string_value(json_object_get(pd, "direction"));
        t->pad_left = dir && strcmp(dir, "Left") == 0;
    }
    return 0;
}

static int post_check(const tokenizer *t, const post *p, const char *where, kerr *err)
{
    if (!p)
        return 0;
    char what[300];
    switch (p->type) {
    case PP_BERT:
    case PP_ROBERTA:
        snprintf(what, sizeof what, "%s.cls[1]", where);
        if (in_vocab(t, p->cls, t->file, what, err))
            return -1;
        snprintf(what, sizeof what, "%s.sep[1]", where);
        return in_vocab(t, p->sep, t->file, what, err);
    case PP_TEMPLATE:
        snprintf(what, sizeof what, "%s.special_tokens (TemplateProcessing)", where);
        for (size_t i = 0; i < p->nitems; i++)
            if (p->items[i] != PP_SEQ_A && in_vocab(t, p->items[i], t->file, what, err))
                return -1;
        return 0;
    case PP_SEQ:
        for (size_t i = 0; i < p->nsubs; i++) {
            snprintf(what, sizeof what, "%s.processors[%zu]", where, i);
            if (post_check(t, p->subs[i], what, err))
                return -1;
        }
        return 0;
    }
    return 0;
}

/* Flattens the decoder chain (Sequences inlined) into steps[]; returns the count. */
static size_t dec_flatten(const dec *d, const dec **steps, size_t n, size_t cap)
{
    if (d->type != D_SEQ)
        return n < cap ? (steps[n] = d, n + 1) : n + 1;
    for (size_t i = 0; i < d->nsubs; i++)
        n = dec_flatten(d->subs[i], steps, n, cap);
    return n;
}

/* Decides how tok_stream works for this decoder chain. Windows (tok_stream) are exact when every
 * step maps tokens one by one or only looks at the first token of the list (Replace, Strip,
 * Metaspace, WordPiece, BPEDecoder, CTC, ByteFallback) until a step joins the text into one
 * string (Fuse, ByteLevel); after that only steps that touch the start or the end of the text
 * may follow (Fuse, Strip, Metaspace). A step that rewrites the joined text anywhere (Replace,
 * WordPiece's cleanup, ...) can change released text when a token arrives, and a ByteFallback
 * preceded by anything but Replace cannot be told byte runs from ids: such chains (no HF model's
 * is one) release all their text at tok_stream_finish. */
static void stream_classify(tokenizer *t)
{
    t->stream_window = 1;
    if (!t->has_dec)
        return;
    size_t n = dec_flatten(t->dec, NULL, 0, 0);
    const dec **steps = xcalloc(n + 1, sizeof *steps);
    dec_flatten(t->dec, steps, 0, n);
    size_t bf = n;
    for (size_t i = 0; i < n && bf == n; i++)
        if (steps[i]->type == D_BYTEFALLBACK)
            bf = i;
    int joined = 0;
    for (size_t i = 0; i < n; i++) {
        int ty = steps[i]->type;
        if (joined && ty != D_FUSE && ty != D_STRIP && ty != D_METASPACE)
            t->stream_window = 0;
        if (i < bf && bf < n && ty != D_REPLACE)
            t->stream_window = 0;
        if (ty == D_FUSE || ty == D_BYTELEVEL)
            joined = 1;
    }
    if (bf < n && t->stream_window) {
        t->byte_fallback = 1;
        t->pre_bf = steps;
        t->npre_bf = bf;
    } else
        free(steps);
}

tokenizer *tok_load(const char *path, kerr *err)
{
    char *file, *dir = NULL;
    if (util_is_dir(path)) {
        file = util_path_join(path, "tokenizer.json");
        dir = xstrdup(path);
        if (!util_is_file(file)) {
            kerr_add(err, "%s: no tokenizer.json in this folder (expected %s)", path, file);
            free(file);
            free(dir);
            return NULL;
        }
    } else {
        file = xstrdup(path);
        const char *slash = strrchr(path, '/');
        const char *base = slash ? slash + 1 : path;
        if (strcmp(base, "tokenizer.json") == 0) /* an HF folder: read its config files too */
            dir = slash ? xasprintf("%.*s", (int)(slash - path), path) : xstrdup(".");
    }
    tokenizer *t = xcalloc(1, sizeof *t);
    pthread_mutex_init(&t->pool_lock, NULL);
    t->file = file;
    t->bos = -1;
    memset(t->plain.root, -1, sizeof t->plain.root);
    memset(t->normed.root, -1, sizeof t->normed.root);
    t->plain.empty = t->normed.empty = 1;
    json_t *root = load_json(file, 1, err);
    if (!root)
        goto fail;
    if (!json_is_object(root)) {
        kerr_add(err, "%s: expected a JSON object at the top level", file);
        goto fail;
    }
    json_t *v;
    if (!(t->model = tok_model_load(json_object_get(root, "model"), file, err)))
        goto fail;
    if ((v = json_object_get(root, "normalizer")) && !json_is_null(v) &&
        !(t->norm = tok_norm_load(v, file, err)))
        goto fail;
    if ((v = json_object_get(root, "pre_tokenizer")) && !json_is_null(v) &&
        !(t->pretok = tok_pretok_load(v, file, err)))
        goto fail;
    if ((v = json_object_get(root, "post_processor")) && !json_is_null(v) &&
        !(t->post = post_load(t, v, "post_processor", err)))
        goto fail;
    if ((v = json_object_get(root, "decoder")) && !json_is_null(v)) {
        if (!(t->dec = dec_load(t, v, err)))
            goto fail;
        t->has_dec = 1;
    }
    stream_classify(t);
    if (load_added(t, json_object_get(root, "added_tokens"), err))
        goto fail;
    size_t vs = (size_t)(tok_model_max_id(t->model) + 1);
    for (size_t i = 0; i < t->nadded; i++)
        if ((size_t)t->added[i].id + 1 > vs)
            vs = (size_t)t->added[i].id + 1;
    t->vocab_size = vs;
    if (post_check(t, t->post, "post_processor", err) || load_trunc_pad(t, root, err) ||
        (t->pad && in_vocab(t, t->pad_id, t->file, "padding.pad_id", err)) ||
        load_special_ids(t, dir, err))
        goto fail;
    json_decref(root);
    free(dir);
    return t;
fail:
    json_decref(root);
    free(dir);
    tok_free(t);
    return NULL;
}

void tok_free(tokenizer *t)
{
    if (!t)
        return;
    tok_model_free(t->model);
    tok_norm_free(t->norm);
    tok_pretok_free(t->pretok);
    post_free(t->post);
    dec_free(t->dec);
    free(t->pre_bf);
    for (size_t i = 0; i < t->nadded; i++) {
        free(t->added[i].content);
        free(t->added[i].norm);
    }
    free(t->added);
    tok_strmap_free(&t->added_map);
    tok_strmap_free(&t->special_set);
    free(t->id2added);
    trie_free(&t->plain);
    trie_free(&t->normed);
    while (t->pool) {
        tok_ctx *c = t->pool;
        t->pool = c->next;
        ctx_free(c);
    }
    pthread_mutex_destroy(&t->pool_lock);
    free(t->file);
    free(t);
}

/* ---------------------------------------------------------------- encode */

static int encode_pieces(const tokenizer *t, tok_ctx *c, const char *text, size_t len, kerr *err)
{
    tok_pieces *io = &c->pieces, *out = &c->spare;
    io->n = 0;
    tok_pieces_push(io, text, len, -1, 1);
    /* (1) non-normalized added tokens on the raw text */
    out->n = 0;
    for (size_t i = 0; i < io->n; i++)
        split_added(t, &t->plain, &io->v[i], out);
    tok_pieces tmp = *io;
    *io = *out;
    *out = tmp;
    /* (2) normalize each remaining piece, then split normalized added tokens */
    if (t->norm || !t->normed.empty) {
        out->n = 0;
        for (size_t i = 0; i < io->n; i++) {
            tok_piece pc = io->v[i];
            if (pc.id >= 0) {
                tok_pieces_push(out, pc.s, pc.len, pc.id, 0);
                continue;
            }
            if (t->norm) {
                const char *ns;
                size_t nn;
                int lead = 0;
                if (tok_norm_apply(t->norm, c, pc.s, pc.len, &ns, &nn, &lead, err))
                    return -1;
                pc.s = ns;
                pc.len = (uint32_t)nn;
                pc.origin = pc.origin && !lead;
            }
            split_added(t, &t->normed, &pc, out);
        }
        tmp = *io;
        *io = *out;
        *out = tmp;
    }
    /* (3) pre-tokenize */
    if (t->pretok && tok_pretok_apply(t->pretok, c, io, err))
        return -1;
    /* (4) model */
    c->ids.n = 0;
    for (size_t i = 0; i < io->n; i++) {
        if (io->v[i].id >= 0)
            tok_ivec_push(&c->ids, io->v[i].id);
        else if (tok_model_tokenize(t->model, c, io->v[i].s, io->v[i].len, err))
            return -1;
    }
    return 0;
}

int tok_encode(tokenizer *t, const char *text, size_t len, int add_special, int32_t **ids,
               size_t *n, kerr *err)
{
    *ids = NULL;
    *n = 0;
    if (len > TOK_MAX_TEXT)
        return kerr_add(err, "tokenizer: the text to encode has %zu bytes; at most %zu at once "
                             "(split it)",
                        len, TOK_MAX_TEXT);
    tok_ctx *c = ctx_get(t);
    c->sb2.n = 0;
    const char *clean = text;
    if (len) {
        /* Valid input is used in place; invalid bytes become U+FFFD (see the top of the file). */
        if (tok_u8_sanitize(NULL, text, len)) {
            tok_sbuf_put(&c->sb2, "", 0);
            tok_u8_sanitize(&c->sb2, text, len);
            clean = c->sb2.s;
            len = c->sb2.n;
        }
    }
    int rc = encode_pieces(t, c, clean ? clean : "", len, err);
    /* (5) truncation, post-processing, padding (Tokenizer::post_process) */
    tok_ivec out = c->ids;
    c->ids = (tok_ivec){0};
    ctx_put(t, c);
    if (rc) {
        free(out.v);
        return -1;
    }
    if (t->trunc) {
        size_t added = add_special ? post_added(t->post) : 0;
        if (added > t->trunc_max) {
            free(out.v);
            return kerr_add(err, "%s: truncation.max_length %zu is smaller than the %zu special "
                                 "tokens the post-processor adds",
                            t->file, t->trunc_max, added);
        }
        size_t max = t->trunc_max - added;
        if (out.n > max) {
            if (t->trunc_only_second) {
                free(out.v);
                return kerr_add(err, "%s: truncation strategy OnlySecond needs a pair of sequences",
                                t->file);
            }
            if (t->trunc_left)
                memmove(out.v, out.v + (out.n - max), max * sizeof *out.v);
            out.n = max;
        }
    }
    if (add_special)
        post_apply(t->post, &out);
    if (t->pad) {
        size_t target = t->pad_fixed ? t->pad_fixed : out.n;
        if (t->pad_multiple && target % t->pad_multiple)
            target += t->pad_multiple - target % t->pad_multiple;
        if (out.n < target) {
            size_t old = out.n, k = target - old;
            for (size_t i = 0; i < k; i++)
                tok_ivec_push(&out, t->pad_id);
            if (t->pad_left) {
                memmove(out.v + k, out.v, old * sizeof *out.v);
                for (size_t i = 0; i < k; i++)
                    out.v[i] = t->pad_id;
            }
        }
    }
    if (!out.v)
        out.v = xmalloc(sizeof *out.v);
    *ids = out.v;
    *n = out.n;
    return 0;
}

/* ---------------------------------------------------------------- decode */

static const char *id_token(const tokenizer *t, int32_t id, size_t *len)
{
    int32_t k = added_index(t, id);
    if (k >= 0) {
        const added_tok *a = &t->added[k];
        *len = a->norm ? a->norm_len : a->len;
        return a->norm ? a->norm : a->content;
    }
    return tok_model_id_to_token(t->model, id, len);
}

static int is_special_str(const tokenizer *t, const char *s, size_t n)
{
    int32_t dummy;
    return t->special_set.n && tok_strmap_get(&t->special_set, s, n, &dummy);
}

/* An id decode drops before the decoders run: unknown, or a special token being skipped. */
static int dropped(const tokenizer *t, int32_t id, int skip, const char **tok, size_t *len)
{
    const char *s = id_token(t, id, len);
    if (tok)
        *tok = s;
    return !s || (skip && is_special_str(t, s, *len));
}

/* Appends the text of ids to o. *open_tail (may be NULL): see dec_chain. */
static int decode_to(const tokenizer *t, const int32_t *ids, size_t n, int skip, tok_sbuf *o,
                     int *open_tail, kerr *err)
{
    slist l = {0};
    int open = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *s;
        if (!dropped(t, ids[i], skip, &s, &len))
            tok_sbuf_put(slist_add(&l), s, len);
    }
    if (t->has_dec && l.n && dec_chain(t->dec, &l, &open, err)) {
        slist_free(&l);
        return -1;
    }
    for (size_t i = 0; i < l.n; i++) {
        if (!t->has_dec && i)
            tok_sbuf_putc(o, ' ');
        tok_sbuf_put(o, l.v[i].s, l.v[i].n);
    }
    slist_free(&l);
    if (open_tail)
        *open_tail = open;
    return 0;
}

int tok_decode(tokenizer *t, const int32_t *ids, size_t n, int skip_special, char **text,
               size_t *len, kerr *err)
{
    tok_sbuf o = {0};
    tok_sbuf_put(&o, "", 0);
    if (decode_to(t, ids, n, skip_special, &o, NULL, err)) {
        free(o.s);
        *text = NULL;
        *len = 0;
        return -1;
    }
    *text = o.s;
    *len = o.n;
    return 0;
}

/* ---------------------------------------------------------------- streaming */

/* The contract (tokenizer.h): the pieces joined equal tok_decode of all ids. Like HF's
 * DecodeStream the stream decodes a window of ids with left context: ids[0..read) were released
 * already and `prefix` is their text decoded alone; a decode of the window starts with it, and
 * what follows is the new text. The context gives decoders that treat the first token specially
 * (Metaspace, WordPiece, Strip after Fuse) the same first token as the full decode, and dedup
 * (CTC) its left neighbour. Unlike DecodeStream, text is released only when no later id can
 * change it; until then the window grows (see stream_in_byte_run). Once released, the window
 * restarts at the ids of the release just made, which become the next context. Ids that decode
 * drops (unknown ones; special ones when skipping) cannot change any text, so they never enter it.
 * Cost: at most one decode of the window per push. Byte-fallback runs are held without decoding;
 * a ByteLevel text held because every token so far ends inside a character (not what models
 * emit, but ids are input) costs O(k^2) over k such tokens. */
struct tok_stream {
    tokenizer *t;
    int skip;
    tok_ivec ids;
    size_t read;
    tok_sbuf prefix;
};

tok_stream *tok_stream_new(tokenizer *t, int skip_special)
{
    tok_stream *s = xcalloc(1, sizeof *s);
    s->t = t;
    s->skip = skip_special;
    tok_sbuf_put(&s->prefix, "", 0);
    return s;
}

void tok_stream_free(tok_stream *s)
{
    if (!s)
        return;
    free(s->ids.v);
    free(s->prefix.s);
    free(s);
}

/* Whether the end of the window's text may still change when more ids come. Two cases:
 * - the last id is a <0xNN> byte token and the chain has ByteFallback: HF decodes a run of byte
 *   tokens as one unit, the run's UTF-8 if all of it is valid, else one U+FFFD per byte (llama-2
 *   <0x22> <0x20> <0xD4> is three U+FFFD, not "\" " and one), so nothing of a run is final before
 *   a token that is not a byte ends it. This needs no decode, so a run of k bytes costs O(k).
 * - the bytes end inside a UTF-8 character (ByteLevel joins the bytes of all tokens; open_tail
 *   from dec_chain), which later bytes complete or turn into U+FFFD.
 * Every other decoder step kiln supports maps tokens one by one, or only looks at the first
 * token (covered by the context), or only drops text at the very end (BPEDecoder's suffix,
 * Strip's stop), which a later token brings back unchanged. */
static int stream_in_byte_run(const tok_stream *s, kerr *err)
{
    const tokenizer *t = s->t;
    if (!t->byte_fallback || s->ids.n == 0)
        return 0;
    size_t n;
    const char *tok = id_token(t, s->ids.v[s->ids.n - 1], &n); /* kept: see tok_stream_push */
    if (t->npre_bf == 0)
        return byte_token(tok, n) >= 0;
    /* the token as ByteFallback sees it: after the Replace steps before it */
    slist l = {0};
    tok_sbuf_put(slist_add(&l), tok, n);
    int open = 0, r = 0;
    for (size_t i = 0; i < t->npre_bf && r == 0; i++)
        r = dec_chain(t->pre_bf[i], &l, &open, err);
    if (r == 0)
        r = l.n == 1 && byte_token(l.v[0].s, l.v[0].n) >= 0;
    slist_free(&l);
    return r;
}

/* Releases what the window's text adds to the context's, then makes the new ids the context.
 * The context must have text: Strip and Metaspace after Fuse treat the start of the joined text
 * specially, which is the same in the context and the window only when the context has some;
 * ids whose text is empty so far stay in the window, with the old context before them. */
static int stream_release(tok_stream *s, tok_sbuf *full, char **text, size_t *len, kerr *err)
{
    if (full->n < s->prefix.n || memcmp(full->s, s->prefix.s, s->prefix.n) != 0)
        return kerr_add(err, "%s: decoder: the text decoded so far changed when a token was added; "
                             "this decoder chain cannot stream",
                        s->t->file);
    size_t nn = full->n - s->prefix.n;
    *text = xmalloc(nn + 1);
    memcpy(*text, full->s + s->prefix.n, nn);
    (*text)[nn] = 0;
    *len = nn;
    if (s->ids.n == s->read) /* finish with nothing new */
        return 0;
    tok_sbuf ctx = {0};
    tok_sbuf_put(&ctx, "", 0);
    if (decode_to(s->t, s->ids.v + s->read, s->ids.n - s->read, s->skip, &ctx, NULL, err)) {
        free(ctx.s);
        free(*text);
        *text = NULL;
        *len = 0;
        return -1;
    }
    if (ctx.n) {
        memmove(s->ids.v, s->ids.v + s->read, (s->ids.n - s->read) * sizeof *s->ids.v);
        s->ids.n -= s->read;
        free(s->prefix.s);
        s->prefix = ctx;
    } else {
        free(ctx.s);
        s->prefix.n = 0;
        tok_sbuf_put(&s->prefix, full->s, full->n);
    }
    s->read = s->ids.n;
    return 0;
}

static int stream_step(tok_stream *s, int final, char **text, size_t *len, kerr *err)
{
    *text = NULL;
    *len = 0;
    int held = !final && !s->t->stream_window;
    if (!final && !held) {
        held = stream_in_byte_run(s, err);
        if (held < 0)
            return -1;
    }
    if (held) {
        *text = xstrdup("");
        return 0;
    }
    tok_sbuf full = {0};
    tok_sbuf_put(&full, "", 0);
    int open;
    if (decode_to(s->t, s->ids.v, s->ids.n, s->skip, &full, &open, err)) {
        free(full.s);
        return -1;
    }
    int rc = 0;
    if (!final && open)
        *text = xstrdup("");
    else
        rc = stream_release(s, &full, text, len, err);
    free(full.s);
    return rc;
}

int tok_stream_push(tok_stream *s, int32_t id, char **text, size_t *len, kerr *err)
{
    const char *tok;
    size_t n;
    if (dropped(s->t, id, s->skip, &tok, &n)) {
        *text = xstrdup("");
        *len = 0;
        return 0;
    }
    tok_ivec_push(&s->ids, id);
    return stream_step(s, 0, text, len, err);
}

int tok_stream_finish(tok_stream *s, char **text, size_t *len, kerr *err)
{
    return stream_step(s, 1, text, len, err);
}

/* ---------------------------------------------------------------- queries */

int32_t tok_bos_id(const tokenizer *t) { return t->bos; }
int32_t tok_eos_id(const tokenizer *t) { return t->neos ? t->eos_list[0] : -1; }
size_t tok_eos_ids(const tokenizer *t, const int32_t **ids)
{
    *ids = t->eos_list;
    return t->neos;
}
size_t tok_vocab_size(const tokenizer *t) { return t->vocab_size; }

const char *tok_id_to_token(const tokenizer *t, int32_t id)
{
    int32_t k = added_index(t, id);
    size_t len;
    const char *s;
    if (k >= 0)
        s = t->added[k].content, len = t->added[k].len;
    else if (!(s = tok_model_id_to_token(t->model, id, &len)))
        return NULL;
    /* a token holding a NUL byte has no C string name (tokenizer.h) */
    return memchr(s, 0, len) ? NULL : s;
}

int32_t tok_token_to_id(const tokenizer *t, const char *token)
{
    return token_to_id(t, token, strlen(token));
}

int tok_is_special(const tokenizer *t, int32_t id)
{
    int32_t k = added_index(t, id);
    return k >= 0 && t->added[k].special;
}
