/* tok_util — the tokenizer's floor: growable vectors, a bump arena, a string->id hash map,
 * UTF-8 helpers, the Unicode character classes HF tokenizers uses (as the Rust standard library
 * defines them, computed from utf8proc's categories), GPT-2's byte-level alphabet (built once,
 * under pthread_once), range-checked reading of JSON numbers, and a PCRE2 wrapper that matches
 * the way tokenizer.json regexes behave under Oniguruma (patterns shared, match data per call).
 *
 * It does not know about tokenizer.json; see tok_text.c, tok_model.c and tokenizer.c for that.
 */
#include <assert.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <utf8proc.h>

#include "tok_impl.h"

/* ---------------------------------------------------------------- containers */

void tok_ivec_push(tok_ivec *a, int32_t x)
{
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 16;
        a->v = xrealloc(a->v, a->cap * sizeof *a->v);
    }
    a->v[a->n++] = x;
}

static void sbuf_room(tok_sbuf *b, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 64;
        while (c < b->n + n + 1)
            c *= 2;
        b->s = xrealloc(b->s, c);
        b->cap = c;
    }
}

void tok_sbuf_put(tok_sbuf *b, const void *p, size_t n)
{
    sbuf_room(b, n);
    if (n)
        memcpy(b->s + b->n, p, n);
    b->n += n;
    b->s[b->n] = 0;
}

void tok_sbuf_putc(tok_sbuf *b, char c)
{
    sbuf_room(b, 1);
    b->s[b->n++] = c;
    b->s[b->n] = 0;
}

void tok_sbuf_cp(tok_sbuf *b, int32_t cp)
{
    char u[4];
    int k = tok_u8_encode(cp, u);
    tok_sbuf_put(b, u, (size_t)k);
}

struct tok_arena_blk {
    tok_arena_blk *next;
    size_t used, cap;
    _Alignas(16) char data[];
};

void *tok_arena_alloc(tok_arena *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    tok_arena_blk *b = a->head;
    if (!b || b->used + n > b->cap) {
        size_t cap = 1 << 16;
        if (b && b->cap * 2 > cap)
            cap = b->cap * 2;
        if (cap < n)
            cap = n;
        tok_arena_blk *nb = xmalloc(sizeof *nb + cap);
        nb->next = b;
        nb->used = 0;
        nb->cap = cap;
        a->head = b = nb;
    }
    void *p = b->data + b->used;
    b->used += n;
    return p;
}

char *tok_arena_dup(tok_arena *a, const char *s, size_t n)
{
    char *p = tok_arena_alloc(a, n + 1);
    if (n)
        memcpy(p, s, n);
    p[n] = 0;
    return p;
}

void tok_arena_reset(tok_arena *a)
{
    /* Keep the largest (newest) block so a steady workload stops allocating. */
    tok_arena_blk *b = a->head;
    if (!b)
        return;
    tok_arena_blk *rest = b->next;
    while (rest) {
        tok_arena_blk *nx = rest->next;
        free(rest);
        rest = nx;
    }
    b->next = NULL;
    b->used = 0;
}

void tok_arena_free(tok_arena *a)
{
    tok_arena_reset(a);
    free(a->head);
    a->head = NULL;
}

void tok_ctx_trim(tok_ctx *c, size_t keep)
{
    if (c->arena.head && c->arena.head->cap > keep)
        tok_arena_free(&c->arena);
    tok_sbuf *bufs[2] = {&c->sb, &c->sb2};
    for (int i = 0; i < 2; i++)
        if (bufs[i]->cap > keep) {
            free(bufs[i]->s);
            memset(bufs[i], 0, sizeof *bufs[i]);
        }
    tok_pieces *ps[2] = {&c->pieces, &c->spare};
    for (int i = 0; i < 2; i++)
        if (ps[i]->cap * sizeof *ps[i]->v > keep) {
            free(ps[i]->v);
            memset(ps[i], 0, sizeof *ps[i]);
        }
    if (c->segs_cap * sizeof *c->segs > keep) {
        free(c->segs);
        c->segs = NULL;
        c->segs_cap = c->nsegs = 0;
    }
}

void tok_pieces_push(tok_pieces *p, const char *s, size_t len, int32_t id, int origin)
{
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 32;
        p->v = xrealloc(p->v, p->cap * sizeof *p->v);
    }
    p->v[p->n++] = (tok_piece){s, (uint32_t)len, id, (uint8_t)origin};
}

/* ---------------------------------------------------------------- string map */

uint64_t tok_hash(const void *p, size_t n)
{
    /* FNV-1a over 8-byte words then bytes, finished with a mixer: fast for short tokens. */
    const unsigned char *s = p;
    uint64_t h = 0xcbf29ce484222325ull ^ (n * 0x9E3779B97F4A7C15ull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0x100000001b3ull;
        h ^= h >> 29;
        s += 8;
        n -= 8;
    }
    while (n--)
        h = (h ^ *s++) * 0x100000001b3ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static void strmap_grow(tok_strmap *m)
{
    size_t cap = m->cap ? m->cap * 2 : 64;
    uint32_t *slots = xcalloc(cap, sizeof *slots);
    for (size_t i = 0; i < m->n; i++) {
        size_t j = m->keys[i].hash & (cap - 1);
        while (slots[j])
            j = (j + 1) & (cap - 1);
        slots[j] = (uint32_t)(i + 1);
    }
    free(m->slots);
    m->slots = slots;
    m->cap = cap;
}

static long strmap_find(const tok_strmap *m, const char *k, size_t n, uint64_t h)
{
    if (!m->cap)
        return -1;
    size_t j = h & (m->cap - 1);
    while (m->slots[j]) {
        const struct tok_strkey *e = &m->keys[m->slots[j] - 1];
        if (e->hash == h && e->len == n && memcmp(m->pool + e->off, k, n) == 0)
            return (long)(m->slots[j] - 1);
        j = (j + 1) & (m->cap - 1);
    }
    return -1;
}

void tok_strmap_set(tok_strmap *m, const char *k, size_t n, int32_t val)
{
    uint64_t h = tok_hash(k, n);
    long at = strmap_find(m, k, n, h);
    if (at >= 0) {
        m->keys[at].val = val;
        return;
    }
    if ((m->n + 1) * 4 > m->cap * 3)
        strmap_grow(m);
    if (m->n == m->keys_cap) {
        m->keys_cap = m->keys_cap ? m->keys_cap * 2 : 64;
        m->keys = xrealloc(m->keys, m->keys_cap * sizeof *m->keys);
    }
    if (m->pool_n + n + 1 > m->pool_cap) {
        size_t c = m->pool_cap ? m->pool_cap * 2 : 4096;
        while (c < m->pool_n + n + 1)
            c *= 2;
        m->pool = xrealloc(m->pool, c);
        m->pool_cap = c;
    }
    memcpy(m->pool + m->pool_n, k, n);
    m->pool[m->pool_n + n] = 0;
    m->keys[m->n] = (struct tok_strkey){h, m->pool_n, (uint32_t)n, val};
    m->pool_n += n + 1;
    size_t j = h & (m->cap - 1);
    while (m->slots[j])
        j = (j + 1) & (m->cap - 1);
    m->slots[j] = (uint32_t)(m->n + 1);
    m->n++;
}

int tok_strmap_get(const tok_strmap *m, const char *k, size_t n, int32_t *val)
{
    long at = strmap_find(m, k, n, tok_hash(k, n));
    if (at < 0)
        return 0;
    *val = m->keys[at].val;
    return 1;
}

void tok_strmap_free(tok_strmap *m)
{
    free(m->slots);
    free(m->keys);
    free(m->pool);
    memset(m, 0, sizeof *m);
}

/* ---------------------------------------------------------------- UTF-8 */

int tok_u8_encode(int32_t cp, char out[4])
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0 with *bad set to the length of
 * the maximal invalid prefix ("maximal subpart" of Unicode §3.9, what from_utf8_lossy uses). */
static size_t u8_valid_len(const unsigned char *s, size_t n, size_t *bad)
{
    unsigned c = s[0];
    *bad = 1;
    if (c < 0x80)
        return 1;
    size_t need;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        need = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0)
            lo = 0xA0;
        if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0)
            lo = 0x90;
        if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    for (size_t k = 1; k <= need; k++) {
        if (k >= n)
            return *bad = k, 0;
        unsigned b = s[k];
        unsigned l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
        if (b < l || b > h)
            return *bad = k, 0;
    }
    return need + 1;
}

size_t tok_u8_sanitize(tok_sbuf *b, const char *s, size_t n)
{
    size_t i = 0, run = 0, bad_count = 0;
    const unsigned char *u = (const unsigned char *)s;
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        size_t bad, k = u8_valid_len(u + i, n - i, &bad);
        if (k) {
            i += k;
            continue;
        }
        if (b) {
            tok_sbuf_put(b, s + run, i - run);
            tok_sbuf_put(b, "\xEF\xBF\xBD", 3);
        }
        bad_count++;
        i += bad;
        run = i;
    }
    if (b)
        tok_sbuf_put(b, s + run, n - run);
    return bad_count;
}

int tok_u8_truncated(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t k = 1; k <= 3 && k <= n; k++) {
        size_t p = n - k, bad;
        if (u[p] < 0xC2 || u[p] > 0xF4)
            continue;
        /* a lead byte: valid so far and cut off by the end of s? */
        return u8_valid_len(u + p, k, &bad) == 0 && bad == k;
    }
    return 0;
}

const char *tok_nul_fix(tok_sbuf *b, const char *s, size_t n, size_t *out_n)
{
    *out_n = n;
    if (n < 4 || !memmem(s, n, TOK_NUL_SENTINEL, 4))
        return s;
    b->n = 0;
    for (size_t i = 0; i < n;) {
        if (i + 4 <= n && memcmp(s + i, TOK_NUL_SENTINEL, 4) == 0) {
            tok_sbuf_putc(b, 0);
            i += 4;
        } else
            tok_sbuf_putc(b, s[i++]);
    }
    *out_n = b->n;
    return b->s;
}

/* 1 when the backslash at text[i] starts an escape: an even number of backslashes before it. */
static int escape_at(const char *text, size_t i)
{
    size_t k = 0;
    while (k < i && text[i - 1 - k] == '\\')
        k++;
    return k % 2 == 0;
}

json_t *tok_json_load(const char *path, kerr *err)
{
    /* The largest real tokenizer.json files are tens of MB; jansson needs several times the
     * file's size, so refuse what cannot be one before reading it. */
    struct stat st;
    if (stat(path, &st) == 0 && (uint64_t)st.st_size > TOK_MAX_FILE)
        return kerr_add(err, "%s: %llu bytes; kiln reads tokenizer files of at most %llu bytes",
                        path, (unsigned long long)st.st_size, (unsigned long long)TOK_MAX_FILE),
               NULL;
    size_t len;
    char *text = util_read_file(path, &len, err);
    if (!text)
        return NULL;
    /* U+10FFFF stands for U+0000 after parsing, so a file that holds it itself (as UTF-8 or as
     * the escape pair \uDBFF\uDFFF) would have it read as a NUL byte: a token "<s\U0010FFFF>"
     * became "<s\0>". It is a noncharacter no real tokenizer uses; refuse it. */
    const char *raw = memmem(text, len, TOK_NUL_SENTINEL, 4);
    size_t bad = raw ? (size_t)(raw - text) : len;
    for (size_t i = 0; i + 12 <= bad; i++)
        if (text[i] == '\\' && strncasecmp(text + i, "\\uDBFF\\uDFFF", 12) == 0 &&
            escape_at(text, i))
            bad = i;
    if (bad < len) {
        size_t line = 1, col = 1;
        for (size_t i = 0; i < bad; i++) {
            col = text[i] == '\n' ? 1 : col + 1;
            line += text[i] == '\n';
        }
        kerr_add(err, "%s:%zu:%zu: U+10FFFF in a string; kiln's loader uses this noncharacter to "
                      "stand for \\u0000, so it cannot be read faithfully: remove it",
                 path, line, col);
        free(text);
        return NULL;
    }
    tok_sbuf b = {0};
    const char *src = text;
    size_t slen = len;
    if (memmem(text, len, "u0000", 5)) {
        for (size_t i = 0; i < len;) {
            if (text[i] == '\\' && i + 5 < len && text[i + 1] == 'u' &&
                memcmp(text + i + 2, "0000", 4) == 0 && escape_at(text, i)) {
                tok_sbuf_put(&b, "\\uDBFF\\uDFFF", 12);
                i += 6;
                continue;
            }
            tok_sbuf_putc(&b, text[i++]);
        }
        src = b.s;
        slen = b.n;
    }
    json_error_t je;
    json_t *j = json_loadb(src, slen, JSON_ALLOW_NUL, &je);
    if (!j)
        kerr_add(err, "%s:%d:%d: invalid JSON: %s", path, je.line, je.column, je.text);
    free(b.s);
    free(text);
    return j;
}

/* ---------------------------------------------------------------- byte-level alphabet */

/* Built once per process under pthread_once, so tokenizers used from several threads (or
 * loaded by several threads) never see a half-filled table. */
static tok_bytelevel bl_table;
static pthread_once_t bl_once = PTHREAD_ONCE_INIT;

static void bl_build(void)
{
    int k = 0;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        int32_t cp = keep ? b : 256 + k++;
        char u[4];
        int n = tok_u8_encode(cp, u);
        memcpy(bl_table.utf8[b], u, (size_t)n);
        bl_table.len[b] = (uint8_t)n;
        bl_table.byte_of[cp] = (int16_t)(b + 1);
    }
}

const tok_bytelevel *tok_bytelevel_table(void)
{
    int rc = pthread_once(&bl_once, bl_build);
    assert(rc == 0);
    (void)rc;
    return &bl_table;
}

/* ---------------------------------------------------------------- checked JSON numbers */

int tok_json_int(json_t *v, long long lo, long long hi, long long *out, kerr *err, const char *fmt,
                 ...)
{
    if (json_is_integer(v) && json_integer_value(v) >= lo && json_integer_value(v) <= hi) {
        *out = json_integer_value(v);
        return 0;
    }
    char where[512], got[96];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(where, sizeof where, fmt, ap);
    va_end(ap);
    if (!v)
        snprintf(got, sizeof got, "missing");
    else if (json_is_integer(v))
        snprintf(got, sizeof got, "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v))
        snprintf(got, sizeof got, "%.17g", json_real_value(v));
    else if (json_is_string(v))
        snprintf(got, sizeof got, "\"%.40s\"%s", json_string_value(v),
                 json_string_length(v) > 40 ? "..." : "");
    else
        snprintf(got, sizeof got, "%s",
                 json_is_true(v) ? "true" : json_is_false(v) ? "false" : json_is_null(v) ? "null"
                 : json_is_array(v) ? "an array" : "an object");
    return kerr_add(err, "%s: %s; expected an integer from %lld to %lld", where, got, lo, hi);
}

int tok_json_id(json_t *v, int32_t *id, kerr *err, const char *fmt, ...)
{
    char where[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(where, sizeof where, fmt, ap);
    va_end(ap);
    long long x;
    if (tok_json_int(v, 0, TOK_MAX_ID - 1, &x, err, "%s", where))
        return -1;
    *id = (int32_t)x;
    return 0;
}

/* ---------------------------------------------------------------- Unicode classes */

int tok_category(int32_t cp) { return utf8proc_category(cp); }

int tok_is_whitespace(int32_t cp)
{
    /* The White_Space property (stable since Unicode 6.3). */
    if (cp <= 0x20)
        return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
    if (cp < 0x85)
        return 0;
    return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
           cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

int tok_is_numeric(int32_t cp)
{
    if (cp < 0x80)
        return cp >= '0' && cp <= '9';
    int c = utf8proc_category(cp);
    return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

int tok_is_punct(int32_t cp)
{
    if (cp < 0x80)
        return (cp >= 0x21 && cp <= 0x2F) || (cp >= 0x3A && cp <= 0x40) ||
               (cp >= 0x5B && cp <= 0x60) || (cp >= 0x7B && cp <= 0x7E);
    int c = utf8proc_category(cp);
    return c >= UTF8PROC_CATEGORY_PC && c <= UTF8PROC_CATEGORY_PO;
}

int tok_is_rust_word(int32_t cp)
{
    if (cp < 0x80)
        return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') ||
               cp == '_';
    int c = utf8proc_category(cp);
    if ((c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_ND) || c == UTF8PROC_CATEGORY_NL ||
        c == UTF8PROC_CATEGORY_PC)
        return 1; /* L*, M*, Nd, Nl (Alphabetic), Pc */
    /* Join_Control, and the symbols with Other_Alphabetic (circled/squared Latin letters). */
    return cp == 0x200C || cp == 0x200D || (cp >= 0x24B6 && cp <= 0x24E9) ||
           (cp >= 0x1F130 && cp <= 0x1F149) || (cp >= 0x1F150 && cp <= 0x1F169) ||
           (cp >= 0x1F170 && cp <= 0x1F189);
}

/* ---------------------------------------------------------------- regex */

/* Oniguruma (what HF compiles tokenizer.json regexes with) and PCRE2 disagree on a few escapes
 * in Unicode mode: Oniguruma's \s also matches U+0085, its \w is L|M|N|Pc (PCRE2 10.42: L|N|_),
 * and its \h is a hex digit (PCRE2: horizontal space). Rewrite those; copy the rest. */
static char *onig_to_pcre2(const char *p)
{
    static const char W[] = "\\p{L}\\p{M}\\p{N}\\p{Pc}";
    tok_sbuf b = {0};
    int in_class = 0;
    for (size_t i = 0; p[i];) {
        char c = p[i];
        if (c == '\\' && p[i + 1]) {
            char e = p[i + 1];
            const char *rep = NULL;
            char tmp[64];
            if (e == 's')
                rep = in_class ? "\\s\\x{85}" : "[\\s\\x{85}]";
            else if (e == 'S' && !in_class)
                rep = "[^\\s\\x{85}]";
            else if (e == 'w')
                rep = in_class ? W : (snprintf(tmp, sizeof tmp, "[%s]", W), tmp);
            else if (e == 'W' && !in_class)
                rep = (snprintf(tmp, sizeof tmp, "[^%s]", W), tmp);
            else if (e == 'h')
                rep = in_class ? "0-9a-fA-F" : "[0-9a-fA-F]";
            else if (e == 'H' && !in_class)
                rep = "[^0-9a-fA-F]";
            if (rep) {
                tok_sbuf_put(&b, rep, strlen(rep));
                i += 2;
                continue;
            }
            if ((e == 'p' || e == 'P' || e == 'x' || e == 'o') && p[i + 2] == '{') {
                const char *close = strchr(p + i, '}');
                size_t k = close ? (size_t)(close - (p + i)) + 1 : 2;
                tok_sbuf_put(&b, p + i, k);
                i += k;
                continue;
            }
            size_t k = 1 + tok_u8_len((unsigned char)e);
            tok_sbuf_put(&b, p + i, k);
            i += k;
            continue;
        }
        if (in_class && c == '[' && p[i + 1] == ':') {
            const char *close = strstr(p + i, ":]");
            size_t k = close ? (size_t)(close - (p + i)) + 2 : 1;
            tok_sbuf_put(&b, p + i, k);
            i += k;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = 1;
            tok_sbuf_putc(&b, c);
            i++;
            if (p[i] == '^')
                tok_sbuf_putc(&b, p[i++]);
            if (p[i] == ']') /* a leading ] is literal */
                tok_sbuf_putc(&b, p[i++]);
            continue;
        }
        if (in_class && c == ']')
            in_class = 0;
        tok_sbuf_putc(&b, c);
        i++;
    }
    if (!b.s)
        tok_sbuf_put(&b, "", 0);
    return b.s;
}

int tok_regex_compile(tok_regex *re, const char *pattern, int onig, const char *where, kerr *err)
{
    memset(re, 0, sizeof *re);
    char *pat = onig ? onig_to_pcre2(pattern) : xstrdup(pattern);
    int ec;
    PCRE2_SIZE eo;
    re->code = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &ec, &eo,
                             NULL);
    free(pat);
    if (!re->code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return kerr_add(err, "%s: regex /%.200s/ does not compile: %s (at offset %zu)", where, pattern,
                        (const char *)msg, (size_t)eo);
    }
    re->jit = pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE) == 0;
    return 0;
}

void tok_regex_literal(tok_regex *re, const char *s, size_t n)
{
    memset(re, 0, sizeof *re);
    re->literal = xmalloc(n + 1);
    memcpy(re->literal, s, n);
    re->literal[n] = 0;
    re->literal_len = n;
}

void tok_regex_free(tok_regex *re)
{
    if (re->code)
        pcre2_code_free(re->code);
    free(re->literal);
    memset(re, 0, sizeof *re);
}

pcre2_match_data *tok_match_data_new(void)
{
    /* One pair: only the whole match is read. A pattern with capture groups then returns 0
     * ("ovector too small"), with the whole match still in pair 0. */
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    if (!md) {
        fprintf(stderr, "kiln: out of memory creating PCRE2 match data\n");
        abort();
    }
    return md;
}

static int regex_at(const tok_regex *re, pcre2_match_data *md, const char *s, size_t n, size_t from,
                    size_t *ms, size_t *me)
{
    if (re->literal) {
        if (re->literal_len == 0) {
            *ms = *me = from; /* an empty pattern matches everywhere */
            return from <= n;
        }
        const char *hit = memmem(s + from, n - from, re->literal, re->literal_len);
        if (!hit)
            return 0;
        *ms = (size_t)(hit - s);
        *me = *ms + re->literal_len;
        return 1;
    }
    assert(md);
    int rc = re->jit ? pcre2_jit_match(re->code, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK, md, NULL)
                     : pcre2_match(re->code, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK, md, NULL);
    if (rc == PCRE2_ERROR_NOMATCH)
        return 0;
    if (rc < 0)
        return -1;
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    *ms = ov[0];
    *me = ov[1];
    return 1;
}

int tok_regex_next(const tok_regex *re, pcre2_match_data *md, const char *s, size_t n, size_t from,
                   size_t prev_end, size_t *ms, size_t *me)
{
    while (from <= n) {
        int r = regex_at(re, md, s, n, from, ms, me);
        if (r <= 0)
            return r;
        /* Oniguruma's iterator refuses an empty match right where the last match ended and
         * retries one character further on. */
        if (*ms == *me && *ms == prev_end) {
            if (from >= n)
                return 0;
            from = *ms + tok_u8_len((unsigned char)s[*ms]);
            if (*ms >= n)
                return 0;
            continue;
        }
        return 1;
    }
    return 0;
}
