/* tok_text — normalizers and pre-tokenizers of tokenizer.json, as HF `tokenizers` defines them.
 *
 * Normalizers: NFC, NFD, NFKC, NFKD (utf8proc), Lowercase (Rust's char::to_lowercase: utf8proc's
 * simple mapping plus U+0130's two-character one), StripAccents (drops marks, category M),
 * Replace (string or regex), Prepend, Strip, BertNormalizer, Nmt, ByteLevel, Sequence.
 * Pre-tokenizers: ByteLevel (with/without its GPT-2 regex, add_prefix_space), Split (string or
 * regex, every SplitDelimiterBehavior, invert), Metaspace (prepend_scheme always/first/never,
 * split), Whitespace, WhitespaceSplit, BertPreTokenizer, Digits, Punctuation, CharDelimiterSplit,
 * FixedLength, Sequence.
 *
 * What it does not do: it keeps no offsets/alignments (kiln needs ids, not character spans); the
 * one thing HF reads from alignments for ids — whether a piece starts at the input's first byte,
 * for Metaspace's "first" scheme — is carried as tok_piece.origin. Precompiled (Unigram/T5
 * sentencepiece charsmaps) and UnicodeScripts are refused with an error naming them.
 */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tok_impl.h"

/* ---------------------------------------------------------------- JSON helpers */

static int jbool(json_t *o, const char *k, int def)
{
    json_t *v = json_object_get(o, k);
    return json_is_boolean(v) ? json_is_true(v) : def;
}

static const char *jstr(json_t *o, const char *k) { return json_string_value(json_object_get(o, k)); }

/* The {"String": "..."} or {"Regex": "..."} pattern object of Split and Replace. */
static int load_pattern(tok_regex *re, json_t *pat, const char *what, const char *where, kerr *err)
{
    json_t *s = json_object_get(pat, "String"), *r = json_object_get(pat, "Regex");
    if (json_is_string(s)) {
        tok_regex_literal(re, json_string_value(s), json_string_length(s));
        return 0;
    }
    if (json_is_string(r)) {
        char w[512];
        snprintf(w, sizeof w, "%s: %s", where, what);
        return tok_regex_compile(re, json_string_value(r), 1, w, err);
    }
    return kerr_add(err, "%s: %s: \"pattern\" must be {\"String\": ...} or {\"Regex\": ...}", where,
                    what);
}

static int parse_behavior(json_t *v, int def, const char *where, kerr *err)
{
    static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
                                  "Contiguous"};
    if (!v)
        return def;
    const char *s = json_string_value(v);
    for (int i = 0; s && i < 5; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    kerr_add(err, "%s: unknown split behavior %.60s (expected Removed, Isolated, MergedWithPrevious, "
                  "MergedWithNext or Contiguous)",
             where, s ? s : "(not a string)");
    return -1;
}

/* ---------------------------------------------------------------- normalizers */

enum {
    N_SEQ, N_NFC, N_NFD, N_NFKC, N_NFKD, N_LOWER, N_STRIP_ACCENTS, N_REPLACE, N_PREPEND, N_STRIP,
    N_BERT, N_NMT, N_BYTELEVEL
};

struct tok_norm {
    int type;
    tok_norm **subs;
    size_t nsubs;
    tok_regex re;           /* Replace */
    char *content;          /* Replace, Prepend */
    size_t content_len;
    int left, right;        /* Strip */
    int clean_text, chinese, strip_accents, lowercase; /* BertNormalizer */
};

void tok_norm_free(tok_norm *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->nsubs; i++)
        tok_norm_free(n->subs[i]);
    free(n->subs);
    tok_regex_free(&n->re);
    free(n->content);
    free(n);
}

tok_norm *tok_norm_load(json_t *j, const char *where, kerr *err)
{
    const char *type = jstr(j, "type");
    if (!type) {
        kerr_add(err, "%s: normalizer without a \"type\"", where);
        return NULL;
    }
    static const struct {
        const char *name;
        int type;
    } simple[] = {{"NFC", N_NFC},           {"NFD", N_NFD},   {"NFKC", N_NFKC},
                  {"NFKD", N_NFKD},         {"Lowercase", N_LOWER},
                  {"StripAccents", N_STRIP_ACCENTS}, {"Nmt", N_NMT}, {"ByteLevel", N_BYTELEVEL}};
    tok_norm *n = xcalloc(1, sizeof *n);
    for (size_t i = 0; i < ARRAY_LEN(simple); i++)
        if (strcmp(type, simple[i].name) == 0) {
            n->type = simple[i].type;
            return n;
        }
    if (strcmp(type, "Sequence") == 0) {
        n->type = N_SEQ;
        json_t *a = json_object_get(j, "normalizers");
        if (!json_is_array(a)) {
            kerr_add(err, "%s: normalizer Sequence needs a \"normalizers\" array", where);
            goto fail;
        }
        n->subs = xcalloc(json_array_size(a) + 1, sizeof *n->subs);
        for (size_t i = 0; i < json_array_size(a); i++) {
            if (!(n->subs[n->nsubs] = tok_norm_load(json_array_get(a, i), where, err)))
                goto fail;
            n->nsubs++;
        }
    } else if (strcmp(type, "Replace") == 0) {
        n->type = N_REPLACE;
        const char *c = jstr(j, "content");
        if (!c) {
            kerr_add(err, "%s: normalizer Replace needs a string \"content\"", where);
            goto fail;
        }
        n->content_len = json_string_length(json_object_get(j, "content"));
        n->content = xmalloc(n->content_len + 1);
        memcpy(n->content, c, n->content_len + 1);
        if (load_pattern(&n->re, json_object_get(j, "pattern"), "normalizer Replace", where, err))
            goto fail;
    } else if (strcmp(type, "Prepend") == 0) {
        n->type = N_PREPEND;
        const char *c = jstr(j, "prepend");
        if (!c) {
            kerr_add(err, "%s: normalizer Prepend needs a string \"prepend\"", where);
            goto fail;
        }
        n->content = xstrdup(c);
        n->content_len = strlen(c);
    } else if (strcmp(type, "Strip") == 0) {
        n->type = N_STRIP;
        n->left = jbool(j, "strip_left", 1);
        n->right = jbool(j, "strip_right", 1);
    } else if (strcmp(type, "BertNormalizer") == 0) {
        n->type = N_BERT;
        n->clean_text = jbool(j, "clean_text", 1);
        n->chinese = jbool(j, "handle_chinese_chars", 1);
        n->lowercase = jbool(j, "lowercase", 1);
        json_t *sa = json_object_get(j, "strip_accents");
        n->strip_accents = json_is_boolean(sa) ? json_is_true(sa) : n->lowercase;
    } else {
        kerr_add(err, "%s: unsupported normalizer \"%.60s\" (kiln supports NFC, NFD, NFKC, NFKD, "
                      "Lowercase, StripAccents, Replace, Prepend, Strip, BertNormalizer, Nmt, "
                      "ByteLevel, Sequence)",
                 where, type);
        goto fail;
    }
    return n;
fail:
    tok_norm_free(n);
    return NULL;
}

static int is_cjk(int32_t c)
{
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
           (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

static void lower_cp(tok_sbuf *o, int32_t c)
{
    if (c < 0x80) {
        tok_sbuf_putc(o, (char)(c >= 'A' && c <= 'Z' ? c + 32 : c));
    } else if (c == 0x130) { /* the one unconditional multi-character lowercase mapping */
        tok_sbuf_put(o, "i\xCC\x87", 3);
    } else
        tok_sbuf_cp(o, utf8proc_tolower(c));
}

static int unicode_form(const char *s, size_t n, int opts, tok_sbuf *o, kerr *err)
{
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst,
                                      (utf8proc_option_t)(UTF8PROC_STABLE | opts));
    if (r < 0)
        return kerr_add(err, "tokenizer: Unicode normalization failed: %s", utf8proc_errmsg(r));
    tok_sbuf_put(o, dst, (size_t)r);
    free(dst);
    return 0;
}

/* One normalizer (not a Sequence) from s into o. */
static int norm_one(const tok_norm *nm, tok_ctx *c, const char *s, size_t n, tok_sbuf *o,
                    int *lead_gone, kerr *err)
{
    size_t i = 0;
    switch (nm->type) {
    case N_NFC:
        return unicode_form(s, n, UTF8PROC_COMPOSE, o, err);
    case N_NFD:
        return unicode_form(s, n, UTF8PROC_DECOMPOSE, o, err);
    case N_NFKC:
        return unicode_form(s, n, UTF8PROC_COMPOSE | UTF8PROC_COMPAT, o, err);
    case N_NFKD:
        return unicode_form(s, n, UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT, o, err);
    case N_LOWER:
        while (i < n)
            lower_cp(o, tok_u8_next(s, &i));
        return 0;
    case N_STRIP_ACCENTS:
        while (i < n) {
            size_t at = i;
            int32_t cp = tok_u8_next(s, &i);
            int cat = utf8proc_category(cp);
            if (cat >= UTF8PROC_CATEGORY_MN && cat <= UTF8PROC_CATEGORY_ME) {
                if (at == 0)
                    *lead_gone = 1;
                continue;
            }
            tok_sbuf_put(o, s + at, i - at);
        }
        return 0;
    case N_NMT:
        while (i < n) {
            size_t at = i;
            int32_t cp = tok_u8_next(s, &i);
            if ((cp >= 1 && cp <= 8) || cp == 0xB || (cp >= 0xE && cp <= 0x1F) || cp == 0x7F ||
                cp == 0x8F || cp == 0x9F) {
                if (at == 0)
                    *lead_gone = 1;
                continue;
            }
            if (cp == 9 || cp == 10 || cp == 12 || cp == 13 || cp == 0x1680 ||
                (cp >= 0x200B && cp <= 0x200F) || cp == 0x2028 || cp == 0x2029 || cp == 0x2581 ||
                cp == 0xFEFF || cp == 0xFFFD)
                tok_sbuf_putc(o, ' ');
            else
                tok_sbuf_put(o, s + at, i - at);
        }
        return 0;
    case N_BYTELEVEL: { /* the ByteLevel pre-tokenizer's byte mapping, on the whole string */
        const tok_bytelevel *bl = tok_bytelevel_table();
        for (; i < n; i++)
            tok_sbuf_put(o, bl->utf8[(unsigned char)s[i]], bl->len[(unsigned char)s[i]]);
        return 0;
    }
    case N_PREPEND:
        if (n)
            tok_sbuf_put(o, nm->content, nm->content_len);
        tok_sbuf_put(o, s, n);
        return 0;
    case N_STRIP: {
        size_t a = 0, b = n;
        if (nm->left)
            while (a < n) {
                size_t k = a;
                if (!tok_is_whitespace(tok_u8_next(s, &k)))
                    break;
                a = k;
            }
        if (nm->right)
            while (b > a) {
                size_t k = b - 1;
                while (k > a && ((unsigned char)s[k] & 0xC0) == 0x80)
                    k--;
                size_t kk = k;
                if (!tok_is_whitespace(tok_u8_next(s, &kk)))
                    break;
                b = k;
            }
        if (a > 0)
            *lead_gone = 1;
        tok_sbuf_put(o, s + a, b - a);
        return 0;
    }
    case N_REPLACE: {
        size_t pos = 0, prev = (size_t)-1, ms, me;
        for (;;) {
            int r = tok_regex_next(&nm->re, c->md, s, n, pos, prev, &ms, &me);
            if (r < 0)
                return kerr_add(err, "tokenizer: normalizer Replace: regex match failed");
            if (r == 0)
                break;
            if (ms == 0 && nm->content_len == 0 && me > 0)
                *lead_gone = 1;
            tok_sbuf_put(o, s + pos, ms - pos);
            tok_sbuf_put(o, nm->content, nm->content_len);
            pos = prev = me;
            if (me >= n)
                break;
        }
        tok_sbuf_put(o, s + pos, n - pos);
        return 0;
    }
    case N_BERT: {
        /* Each step is its own pass, as in HF (strip_accents runs NFD on the padded string). */
        tok_sbuf t = {0};
        const char *cur = s;
        size_t cn = n;
        if (nm->clean_text) {
            while (i < n) {
                size_t at = i;
                int32_t cp = tok_u8_next(s, &i);
                int cat = utf8proc_category(cp);
                int ctrl = cp != 9 && cp != 10 && cp != 13 &&
                           (cat == UTF8PROC_CATEGORY_CC || cat == UTF8PROC_CATEGORY_CF ||
                            cat == UTF8PROC_CATEGORY_CO ||
                            cat == UTF8PROC_CATEGORY_CS);
                if (cp == 0 || cp == 0xFFFD || ctrl) { /* Cn (unassigned) is kept, as in HF */
                    if (at == 0)
                        *lead_gone = 1;
                    continue;
                }
                if (cp == 9 || cp == 10 || cp == 13 || tok_is_whitespace(cp))
                    tok_sbuf_putc(&t, ' ');
                else
                    tok_sbuf_put(&t, s + at, i - at);
            }
            cur = t.s ? t.s : "";
            cn = t.n;
        }
        tok_sbuf u = {0};
        if (nm->chinese) {
            for (i = 0; i < cn;) {
                size_t at = i;
                int32_t cp = tok_u8_next(cur, &i);
                if (is_cjk(cp)) {
                    tok_sbuf_putc(&u, ' ');
                    tok_sbuf_put(&u, cur + at, i - at);
                    tok_sbuf_putc(&u, ' ');
                } else
                    tok_sbuf_put(&u, cur + at, i - at);
            }
            cur = u.s ? u.s : "";
            cn = u.n;
        }
        tok_sbuf v = {0};
        if (nm->strip_accents) {
            tok_sbuf d = {0};
            if (unicode_form(cur, cn, UTF8PROC_DECOMPOSE, &d, err)) {
                free(t.s), free(u.s), free(d.s);
                return -1;
            }
            for (i = 0; i < d.n;) {
                size_t at = i;
                int32_t cp = tok_u8_next(d.s, &i);
                if (utf8proc_category(cp) == UTF8PROC_CATEGORY_MN) {
                    if (at == 0)
                        *lead_gone = 1;
                    continue;
                }
                tok_sbuf_put(&v, d.s + at, i - at);
            }
            free(d.s);
            cur = v.s ? v.s : "";
            cn = v.n;
        }
        if (nm->lowercase)
            for (i = 0; i < cn;)
                lower_cp(o, tok_u8_next(cur, &i));
        else
            tok_sbuf_put(o, cur, cn);
        free(t.s);
        free(u.s);
        free(v.s);
        (void)c;
        return 0;
    }
    }
    return kerr_add(err, "tokenizer: internal error: normalizer type %d", nm->type);
}

int tok_norm_apply(const tok_norm *nm, tok_ctx *c, const char *s, size_t len, const char **out,
                   size_t *out_len, int *lead_gone, kerr *err)
{
    if (nm->type == N_SEQ) {
        const char *cur = s;
        size_t cn = len;
        for (size_t i = 0; i < nm->nsubs; i++)
            if (tok_norm_apply(nm->subs[i], c, cur, cn, &cur, &cn, lead_gone, err))
                return -1;
        *out = cur;
        *out_len = cn;
        return 0;
    }
    c->sb.n = 0;
    if (norm_one(nm, c, s, len, &c->sb, lead_gone, err))
        return -1;
    /* Pieces keep 32-bit lengths and later steps at most triple a piece (Metaspace, ByteLevel):
     * a normalizer that grows text without bound (Replace with a long content) stops here. */
    if (c->sb.n > TOK_MAX_NORM)
        return kerr_add(err, "tokenizer: normalizer output of %zu bytes (from %zu); at most %zu",
                        c->sb.n, len, (size_t)TOK_MAX_NORM);
    *out = tok_arena_dup(&c->arena, c->sb.s ? c->sb.s : "", c->sb.n);
    *out_len = c->sb.n;
    return 0;
}

/* ---------------------------------------------------------------- pre-tokenizers */

enum {
    P_SEQ, P_BYTELEVEL, P_SPLIT, P_METASPACE, P_WHITESPACE, P_WSSPLIT, P_BERT, P_DIGITS, P_PUNCT,
    P_DELIM, P_FIXED
};
enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER };

struct tok_pretok {
    int type;
    tok_pretok **subs;
    size_t nsubs;
    int add_prefix_space, use_regex; /* ByteLevel */
    tok_regex re;                    /* ByteLevel, Split, Whitespace */
    int behavior, invert;            /* Split, Punctuation */
    char repl[8];                    /* Metaspace replacement, UTF-8 */
    size_t repl_len;
    int32_t repl_cp, delim;
    int prepend_scheme, split;       /* Metaspace */
    int individual;                  /* Digits */
    size_t length;                   /* FixedLength */
};

void tok_pretok_free(tok_pretok *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->nsubs; i++)
        tok_pretok_free(p->subs[i]);
    free(p->subs);
    tok_regex_free(&p->re);
    free(p);
}

/* GPT-2's pattern, written for Oniguruma like HF's copy of it. */
static const char GPT2_RE[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
/* Whitespace's \w+|[^\w\s]+ as the Rust regex crate reads it (\w: Alphabetic, M, Nd, Pc,
 * Join_Control; \s: White_Space). */
static const char WS_RE[] =
    "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]+|"
    "[^\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}\\p{White_Space}]+";

static int32_t single_char(const char *s, size_t n)
{
    if (!s || n == 0)
        return -1;
    size_t i = 0;
    int32_t cp = tok_u8_next(s, &i);
    return i == n ? cp : -1;
}

tok_pretok *tok_pretok_load(json_t *j, const char *where, kerr *err)
{
    const char *type = jstr(j, "type");
    if (!type) {
        kerr_add(err, "%s: pre_tokenizer without a \"type\"", where);
        return NULL;
    }
    tok_pretok *p = xcalloc(1, sizeof *p);
    char w[512];
    snprintf(w, sizeof w, "%s: pre_tokenizer %s", where, type);
    if (strcmp(type, "Sequence") == 0) {
        p->type = P_SEQ;
        json_t *a = json_object_get(j, "pretokenizers");
        if (!json_is_array(a)) {
            kerr_add(err, "%s needs a \"pretokenizers\" array", w);
            goto fail;
        }
        p->subs = xcalloc(json_array_size(a) + 1, sizeof *p->subs);
        for (size_t i = 0; i < json_array_size(a); i++) {
            if (!(p->subs[p->nsubs] = tok_pretok_load(json_array_get(a, i), where, err)))
                goto fail;
            p->nsubs++;
        }
    } else if (strcmp(type, "ByteLevel") == 0) {
        p->type = P_BYTELEVEL;
        p->add_prefix_space = jbool(j, "add_prefix_space", 1);
        p->use_regex = jbool(j, "use_regex", 1);
        if (p->use_regex && tok_regex_compile(&p->re, GPT2_RE, 1, w, err))
            goto fail;
    } else if (strcmp(type, "Split") == 0) {
        p->type = P_SPLIT;
        if (load_pattern(&p->re, json_object_get(j, "pattern"), "pre_tokenizer Split", where, err))
            goto fail;
        if ((p->behavior = parse_behavior(json_object_get(j, "behavior"), -1, w, err)) < 0) {
            if (!json_object_get(j, "behavior"))
                kerr_add(err, "%s needs a \"behavior\"", w);
            goto fail;
        }
        p->invert = jbool(j, "invert", 0);
    } else if (strcmp(type, "Metaspace") == 0) {
        p->type = P_METASPACE;
        json_t *r = json_object_get(j, "replacement");
        p->repl_cp = single_char(json_string_value(r), json_string_length(r));
        if (p->repl_cp < 0) {
            kerr_add(err, "%s: \"replacement\" must be one character", w);
            goto fail;
        }
        p->repl_len = (size_t)tok_u8_encode(p->repl_cp, p->repl);
        const char *ps = jstr(j, "prepend_scheme");
        p->prepend_scheme = PREPEND_ALWAYS;
        if (ps && strcmp(ps, "first") == 0)
            p->prepend_scheme = PREPEND_FIRST;
        else if (ps && strcmp(ps, "never") == 0)
            p->prepend_scheme = PREPEND_NEVER;
        else if (ps && strcmp(ps, "always") != 0) {
            kerr_add(err, "%s: unknown prepend_scheme \"%.60s\" (expected always, first or never)", w,
                     ps);
            goto fail;
        }
        json_t *aps = json_object_get(j, "add_prefix_space");
        if (json_is_false(aps)) {
            if (p->prepend_scheme != PREPEND_NEVER && ps) {
                kerr_add(err, "%s: add_prefix_space does not match declared prepend_scheme", w);
                goto fail;
            }
            p->prepend_scheme = PREPEND_NEVER;
        }
        p->split = jbool(j, "split", 1);
    } else if (strcmp(type, "Whitespace") == 0) {
        p->type = P_WHITESPACE;
        if (tok_regex_compile(&p->re, WS_RE, 0, w, err))
            goto fail;
    } else if (strcmp(type, "WhitespaceSplit") == 0) {
        p->type = P_WSSPLIT;
    } else if (strcmp(type, "BertPreTokenizer") == 0) {
        p->type = P_BERT;
    } else if (strcmp(type, "Digits") == 0) {
        p->type = P_DIGITS;
        p->individual = jbool(j, "individual_digits", 0);
    } else if (strcmp(type, "Punctuation") == 0) {
        p->type = P_PUNCT;
        if ((p->behavior = parse_behavior(json_object_get(j, "behavior"), TOK_ISOLATED, w, err)) < 0)
            goto fail;
    } else if (strcmp(type, "CharDelimiterSplit") == 0) {
        p->type = P_DELIM;
        json_t *d = json_object_get(j, "delimiter");
        if ((p->delim = single_char(json_string_value(d), json_string_length(d))) < 0) {
            kerr_add(err, "%s: \"delimiter\" must be one character", w);
            goto fail;
        }
    } else if (strcmp(type, "FixedLength") == 0) {
        p->type = P_FIXED;
        json_t *l = json_object_get(j, "length");
        long long x = 5;
        if (l && !json_is_null(l) && tok_json_int(l, 1, TOK_MAX_LEN, &x, err, "%s.length", w))
            goto fail;
        p->length = (size_t)x;
    } else {
        kerr_add(err, "%s: unsupported pre_tokenizer \"%.60s\" (kiln supports ByteLevel, Split, "
                      "Metaspace, Whitespace, WhitespaceSplit, BertPreTokenizer, Digits, "
                      "Punctuation, CharDelimiterSplit, FixedLength, Sequence)",
                 where, type);
        goto fail;
    }
    return p;
fail:
    tok_pretok_free(p);
    return NULL;
}

/* -- finding the delimiters of one piece: fills c->segs with segments covering [0, n) */

static void seg_push(tok_ctx *c, size_t s, size_t e, int match)
{
    if (c->nsegs == c->segs_cap) {
        c->segs_cap = c->segs_cap ? c->segs_cap * 2 : 64;
        c->segs = xrealloc(c->segs, c->segs_cap * sizeof *c->segs);
    }
    c->segs[c->nsegs++] = (struct tok_seg){s, e, match};
}

static int segs_regex(tok_ctx *c, const tok_regex *re, const char *s, size_t n, int invert,
                      kerr *err)
{
    c->nsegs = 0;
    size_t prev = 0, pos = 0, last_end = (size_t)-1, ms, me;
    while (pos <= n) {
        int r = tok_regex_next(re, c->md, s, n, pos, last_end, &ms, &me);
        if (r < 0)
            return kerr_add(err, "tokenizer: pre_tokenizer regex match failed");
        if (r == 0)
            break;
        if (prev != ms)
            seg_push(c, prev, ms, invert);
        seg_push(c, ms, me, !invert);
        prev = pos = last_end = me;
        if (me >= n)
            break;
    }
    if (prev != n)
        seg_push(c, prev, n, invert);
    return 0;
}

/* Every character for which pred holds is its own match (HF's Pattern for Fn(char) -> bool). */
static void segs_pred(tok_ctx *c, int (*pred)(int32_t, int32_t), int32_t arg, const char *s,
                      size_t n)
{
    c->nsegs = 0;
    size_t last = 0, i = 0;
    while (i < n) {
        size_t at = i;
        int32_t cp = tok_u8_next(s, &i);
        if (pred(cp, arg)) {
            if (last < at)
                seg_push(c, last, at, 0);
            seg_push(c, at, i, 1);
            last = i;
        }
    }
    if (n > last)
        seg_push(c, last, n, 0);
}

static int pred_ws(int32_t cp, int32_t a) { return (void)a, tok_is_whitespace(cp); }
static int pred_punct(int32_t cp, int32_t a) { return (void)a, tok_is_punct(cp); }
static int pred_num(int32_t cp, int32_t a) { return (void)a, tok_is_numeric(cp); }
static int pred_eq(int32_t cp, int32_t a) { return cp == a; }

/* Applies a SplitDelimiterBehavior to c->segs and appends the non-empty pieces to out. */
static void split_emit(tok_ctx *c, const tok_piece *pc, int behavior, tok_pieces *out)
{
    struct tok_seg *g = c->segs;
    size_t ng = c->nsegs, k = 0;
    switch (behavior) {
    case TOK_REMOVED:
        for (size_t i = 0; i < ng; i++)
            if (!g[i].match)
                g[k++] = g[i];
        break;
    case TOK_ISOLATED:
        k = ng;
        break;
    case TOK_CONTIGUOUS: {
        int prev = 0;
        for (size_t i = 0; i < ng; i++) {
            if (g[i].match == prev && k > 0)
                g[k - 1].e = g[i].e;
            else
                g[k++] = g[i];
            prev = g[i].match;
        }
        break;
    }
    case TOK_MERGED_PREV: {
        int prev = 0;
        for (size_t i = 0; i < ng; i++) {
            if (g[i].match && !prev && k > 0)
                g[k - 1].e = g[i].e;
            else
                g[k++] = g[i];
            prev = g[i].match;
        }
        break;
    }
    case TOK_MERGED_NEXT: {
        /* Right to left, building the list backwards from the end of the array. */
        int prev = 0;
        size_t top = ng; /* kept entries live in g[top..ng) */
        for (size_t i = ng; i-- > 0;) {
            struct tok_seg sg = g[i];
            if (sg.match && !prev && top < ng)
                g[top].s = sg.s;
            else
                g[--top] = sg;
            prev = sg.match;
        }
        memmove(g, g + top, (ng - top) * sizeof *g);
        k = ng - top;
        break;
    }
    }
    for (size_t i = 0; i < k; i++)
        if (g[i].e > g[i].s)
            tok_pieces_push(out, pc->s + g[i].s, g[i].e - g[i].s, -1, pc->origin && g[i].s == 0);
}

static int pretok_one(const tok_pretok *p, tok_ctx *c, const tok_piece *pc, tok_pieces *out,
                      kerr *err)
{
    const char *s = pc->s;
    size_t n = pc->len;
    switch (p->type) {
    case P_BYTELEVEL: {
        tok_piece q = *pc;
        if (p->add_prefix_space && s[0] != ' ') {
            char *t = tok_arena_alloc(&c->arena, n + 2);
            t[0] = ' ';
            memcpy(t + 1, s, n);
            t[n + 1] = 0;
            q.s = t;
            q.len = (uint32_t)(n + 1);
        }
        size_t first = out->n;
        if (p->use_regex) {
            if (segs_regex(c, &p->re, q.s, q.len, 0, err))
                return -1;
            split_emit(c, &q, TOK_ISOLATED, out);
        } else
            tok_pieces_push(out, q.s, q.len, -1, q.origin);
        /* Map every byte of the new pieces to its byte-level character. */
        const tok_bytelevel *bl = tok_bytelevel_table();
        for (size_t i = first; i < out->n; i++) {
            tok_piece *o = &out->v[i];
            size_t m = 0;
            for (size_t b = 0; b < o->len; b++)
                m += bl->len[(unsigned char)o->s[b]];
            char *t = tok_arena_alloc(&c->arena, m + 1), *w = t;
            for (size_t b = 0; b < o->len; b++) {
                unsigned char x = (unsigned char)o->s[b];
                memcpy(w, bl->utf8[x], bl->len[x]);
                w += bl->len[x];
            }
            *w = 0;
            o->s = t;
            o->len = (uint32_t)m;
        }
        return 0;
    }
    case P_SPLIT:
        if (segs_regex(c, &p->re, s, n, p->invert, err))
            return -1;
        split_emit(c, pc, p->behavior, out);
        return 0;
    case P_WHITESPACE:
        if (segs_regex(c, &p->re, s, n, 1, err))
            return -1;
        split_emit(c, pc, TOK_REMOVED, out);
        return 0;
    case P_WSSPLIT:
        segs_pred(c, pred_ws, 0, s, n);
        split_emit(c, pc, TOK_REMOVED, out);
        return 0;
    case P_DIGITS:
        segs_pred(c, pred_num, 0, s, n);
        split_emit(c, pc, p->individual ? TOK_ISOLATED : TOK_CONTIGUOUS, out);
        return 0;
    case P_PUNCT:
        segs_pred(c, pred_punct, 0, s, n);
        split_emit(c, pc, p->behavior, out);
        return 0;
    case P_DELIM:
        segs_pred(c, pred_eq, p->delim, s, n);
        split_emit(c, pc, TOK_REMOVED, out);
        return 0;
    case P_FIXED: {
        size_t i = 0, start = 0, cnt = 0;
        while (i < n) {
            tok_u8_next(s, &i);
            if (++cnt == p->length) {
                tok_pieces_push(out, s + start, i - start, -1, pc->origin && start == 0);
                start = i;
                cnt = 0;
            }
        }
        if (start < n)
            tok_pieces_push(out, s + start, n - start, -1, pc->origin && start == 0);
        return 0;
    }
    case P_METASPACE: {
        /* Replace ' ' with the replacement, prepend it per the scheme, then split before it. */
        c->sb.n = 0;
        int prepend = 0;
        int starts = n >= p->repl_len && memcmp(s, p->repl, p->repl_len) == 0;
        if (n && s[0] == ' ')
            starts = 1; /* the space becomes the replacement */
        if (p->prepend_scheme == PREPEND_ALWAYS && !starts)
            prepend = 1;
        if (p->prepend_scheme == PREPEND_FIRST && !starts && pc->origin)
            prepend = 1;
        if (prepend)
            tok_sbuf_put(&c->sb, p->repl, p->repl_len);
        for (size_t i = 0; i < n; i++) {
            if (s[i] == ' ')
                tok_sbuf_put(&c->sb, p->repl, p->repl_len);
            else
                tok_sbuf_putc(&c->sb, s[i]);
        }
        tok_piece q = *pc;
        q.s = tok_arena_dup(&c->arena, c->sb.s, c->sb.n);
        q.len = (uint32_t)c->sb.n;
        if (!p->split) {
            tok_pieces_push(out, q.s, q.len, -1, q.origin);
            return 0;
        }
        segs_pred(c, pred_eq, p->repl_cp, q.s, q.len);
        split_emit(c, &q, TOK_MERGED_NEXT, out);
        return 0;
    }
    case P_BERT: {
        /* Whitespace (removed) then punctuation (isolated), as two passes. */
        tok_pieces mid = {0};
        segs_pred(c, pred_ws, 0, s, n);
        split_emit(c, pc, TOK_REMOVED, &mid);
        for (size_t i = 0; i < mid.n; i++) {
            segs_pred(c, pred_punct, 0, mid.v[i].s, mid.v[i].len);
            split_emit(c, &mid.v[i], TOK_ISOLATED, out);
        }
        free(mid.v);
        return 0;
    }
    }
    return kerr_add(err, "tokenizer: internal error: pre_tokenizer type %d", p->type);
}

int tok_pretok_apply(const tok_pretok *p, tok_ctx *c, tok_pieces *io, kerr *err)
{
    if (p->type == P_SEQ) {
        for (size_t i = 0; i < p->nsubs; i++)
            if (tok_pretok_apply(p->subs[i], c, io, err))
                return -1;
        return 0;
    }
    tok_pieces *out = &c->spare;
    out->n = 0;
    for (size_t i = 0; i < io->n; i++) {
        if (io->v[i].id >= 0) {
            tok_pieces_push(out, io->v[i].s, io->v[i].len, io->v[i].id, io->v[i].origin);
            continue;
        }
        if (pretok_one(p, c, &io->v[i], out, err))
            return -1;
    }
    tok_pieces t = *io;
    *io = *out;
    *out = t;
    return 0;
}
