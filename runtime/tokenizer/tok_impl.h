/* tok_impl — internals shared by the tokenizer's files (tokenizer.c, tok_text.c, tok_model.c).
 * Nothing outside those files includes this header; the public API is tokenizer.h.
 *
 * All text inside the pipeline is valid UTF-8 (tok_encode replaces invalid input bytes first),
 * so the helpers here decode without checks. Strings made while encoding one input live in a
 * bump arena that is reset when tok_encode returns; long-lived data (vocabularies, patterns)
 * is malloc'd at load time and freed by tok_free. Threads: everything reachable from a loaded
 * tokenizer is read-only after tok_load except the pool of tok_ctx (tokenizer.c, under a mutex);
 * whatever an encode call writes is in its own tok_ctx, and decode writes only locals.
 */
#ifndef KILN_TOK_IMPL_H
#define KILN_TOK_IMPL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"
#include "util.h"

/* ---------------------------------------------------------------- small containers */

typedef struct tok_ivec {
    int32_t *v;
    size_t n, cap;
} tok_ivec;
void tok_ivec_push(tok_ivec *a, int32_t x);

typedef struct tok_sbuf {
    char *s;
    size_t n, cap;
} tok_sbuf;
void tok_sbuf_put(tok_sbuf *b, const void *p, size_t n);
void tok_sbuf_putc(tok_sbuf *b, char c);
void tok_sbuf_cp(tok_sbuf *b, int32_t cp); /* appends one code point as UTF-8 */

/* Bump allocator for one encode call: tok_arena_reset keeps the first block. */
typedef struct tok_arena_blk tok_arena_blk;
typedef struct tok_arena {
    tok_arena_blk *head;
} tok_arena;
void *tok_arena_alloc(tok_arena *a, size_t n);
char *tok_arena_dup(tok_arena *a, const char *s, size_t n);
void tok_arena_reset(tok_arena *a);
void tok_arena_free(tok_arena *a);

/* String -> int32 map (open addressing). Keys are copied into a pool owned by the map. */
typedef struct tok_strmap {
    uint32_t *slots; /* index+1 into keys, 0 = empty */
    size_t cap;      /* power of two */
    size_t n;
    struct tok_strkey {
        uint64_t hash;
        size_t off;
        uint32_t len;
        int32_t val;
    } *keys;
    size_t keys_cap;
    char *pool;
    size_t pool_n, pool_cap;
} tok_strmap;
uint64_t tok_hash(const void *p, size_t n);
/* Sets key -> val (replacing an existing value, as a JSON object's last duplicate key would). */
void tok_strmap_set(tok_strmap *m, const char *k, size_t n, int32_t val);
/* Returns 1 and *val when found. */
int tok_strmap_get(const tok_strmap *m, const char *k, size_t n, int32_t *val);
void tok_strmap_free(tok_strmap *m);

/* ---------------------------------------------------------------- UTF-8 and Unicode */

/* Decodes the code point at s[*i] (valid UTF-8 assumed) and advances *i. */
static inline int32_t tok_u8_next(const char *s, size_t *i)
{
    const unsigned char *p = (const unsigned char *)s + *i;
    if (p[0] < 0x80) {
        *i += 1;
        return p[0];
    }
    if (p[0] < 0xE0) {
        *i += 2;
        return ((p[0] & 0x1F) << 6) | (p[1] & 0x3F);
    }
    if (p[0] < 0xF0) {
        *i += 3;
        return ((p[0] & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F);
    }
    *i += 4;
    return ((p[0] & 0x07) << 18) | ((p[1] & 0x3F) << 12) | ((p[2] & 0x3F) << 6) | (p[3] & 0x3F);
}
static inline size_t tok_u8_len(unsigned char lead)
{
    return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}
int tok_u8_encode(int32_t cp, char out[4]);
/* Appends s to b with every maximal invalid subsequence replaced by U+FFFD, exactly as Rust's
 * String::from_utf8_lossy and Python's bytes.decode("utf-8", "replace") do. Returns the number
 * of replacements made; with b NULL it only counts them. */
size_t tok_u8_sanitize(tok_sbuf *b, const char *s, size_t n);

/* 1 when s ends inside a UTF-8 character: a lead byte and valid continuation bytes, fewer than
 * the character needs (more bytes may still complete it; tok_u8_sanitize makes it one U+FFFD). */
int tok_u8_truncated(const char *s, size_t n);

/* jansson cannot hold U+0000 in object keys (vocabularies sometimes have "\u0000"), so the
 * loader rewrites that escape to U+10FFFF (a noncharacter) before parsing, and strings read from
 * the vocabulary, merges and added tokens go through tok_nul_fix, which turns it back into a NUL
 * byte. So that the stand-in is unambiguous, tok_json_load refuses a file holding U+10FFFF itself
 * (as UTF-8 or as \uDBFF\uDFFF). Returns s itself when there is nothing to fix, else b's buffer. */
#define TOK_NUL_SENTINEL "\xF4\x8F\xBF\xBF"
#define TOK_MAX_FILE ((uint64_t)256 << 20)
const char *tok_nul_fix(tok_sbuf *b, const char *s, size_t n, size_t *out_n);
/* A number read from tokenizer.json: v must be a JSON integer with lo <= v <= hi (a fraction, a
 * string, a missing field or an out-of-range value is refused). The message starts with the
 * printf-formatted place (file and field path) and says what was found and what is expected:
 * "tokenizer.json: padding.strategy.Fixed: -5; expected an integer from 1 to 16777216". */
int tok_json_int(json_t *v, long long lo, long long hi, long long *out, kerr *err, const char *fmt,
                 ...) __attribute__((format(printf, 6, 7)));
/* A token id: 0 <= id < TOK_MAX_ID (tokenizer.h). */
int tok_json_id(json_t *v, int32_t *id, kerr *err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Parses a JSON file with that rewrite (files over TOK_MAX_FILE bytes are refused unread, and
 * files holding U+10FFFF are refused naming its line and column).
 * NULL with a message (file:line:col) on error. */
json_t *tok_json_load(const char *path, kerr *err);

/* GPT-2's byte-level alphabet: byte b is the character whose UTF-8 is utf8[b] (len[b] bytes);
 * byte_of[cp] is b + 1 for the 256 characters of the alphabet (cp < 324), 0 elsewhere.
 * Built once, thread-safely, on first use; read-only afterwards. */
typedef struct tok_bytelevel {
    char utf8[256][3];
    uint8_t len[256];
    int16_t byte_of[324];
} tok_bytelevel;
const tok_bytelevel *tok_bytelevel_table(void);

/* Character classes as the Rust standard library and HF tokenizers define them. */
int tok_is_whitespace(int32_t cp);  /* char::is_whitespace (White_Space property) */
int tok_is_numeric(int32_t cp);     /* char::is_numeric: Nd, Nl, No */
int tok_is_punct(int32_t cp);       /* is_ascii_punctuation || category P* (BERT's is_punc) */
int tok_is_rust_word(int32_t cp);   /* regex crate's \w: Alphabetic, M, Nd, Pc, Join_Control */
int tok_category(int32_t cp);       /* utf8proc category */

/* ---------------------------------------------------------------- regex */

/* A compiled pattern is read-only after loading and shared by every thread; the match data a
 * match writes into belongs to the caller (one per tok_ctx, see tok_match_data_new). */
typedef struct tok_regex {
    pcre2_code *code;
    int jit;
    char *literal; /* non-NULL: a plain string pattern, matched with memmem */
    size_t literal_len;
} tok_regex;
/* `onig` = the pattern is written for Oniguruma (tokenizer.json's Regex patterns); a few escapes
 * whose meaning differs between Oniguruma and PCRE2 are rewritten. */
int tok_regex_compile(tok_regex *re, const char *pattern, int onig, const char *where, kerr *err);
void tok_regex_literal(tok_regex *re, const char *s, size_t n);
void tok_regex_free(tok_regex *re);
/* Match data for tok_regex_next (whole-match offsets only); free with pcre2_match_data_free. */
pcre2_match_data *tok_match_data_new(void);
/* Finds the next match at or after `from`, with Oniguruma's find_iter rule for empty matches
 * (the caller passes the end of the previous match as `prev_end`, or (size_t)-1).
 * md: the caller's match data (may be NULL for a literal pattern).
 * Returns 1 and [*ms, *me) on a match, 0 when none, -1 on a matcher error (e.g. PCRE2's match
 * limit, which bounds the work a hostile pattern can cause). */
int tok_regex_next(const tok_regex *re, pcre2_match_data *md, const char *s, size_t n, size_t from,
                   size_t prev_end, size_t *ms, size_t *me);

/* ---------------------------------------------------------------- pieces of text */

/* One split of the input as it moves through the pipeline: text not yet tokenized (id < 0),
 * or an added token already recognised (id >= 0). `origin` is 1 while the piece starts at
 * byte 0 of the original input (what Metaspace's prepend_scheme "first" asks). */
typedef struct tok_piece {
    const char *s;
    uint32_t len;
    int32_t id;
    uint8_t origin;
} tok_piece;

typedef struct tok_pieces {
    tok_piece *v;
    size_t n, cap;
} tok_pieces;
void tok_pieces_push(tok_pieces *p, const char *s, size_t len, int32_t id, int origin);

/* How a split keeps its delimiters (SplitDelimiterBehavior). */
enum tok_behavior { TOK_REMOVED, TOK_ISOLATED, TOK_MERGED_PREV, TOK_MERGED_NEXT, TOK_CONTIGUOUS };

/* ---------------------------------------------------------------- normalizers / pre-tokenizers */

typedef struct tok_norm tok_norm;
typedef struct tok_pretok tok_pretok;
typedef struct tok_ctx tok_ctx;

typedef struct tok_bpe_scratch tok_bpe_scratch;

/* Everything one encode call writes: a tokenizer keeps a pool of these (tokenizer.c) and each
 * tok_encode takes one for itself, so the loaded pipeline itself stays read-only and calls from
 * several threads never share scratch. */
struct tok_ctx {
    tok_arena arena;
    tok_sbuf sb, sb2;
    struct tok_seg {
        size_t s, e;
        int match;
    } *segs;
    size_t nsegs, segs_cap;
    tok_pieces pieces, spare; /* a double-buffered piece list */
    tok_ivec ids;
    pcre2_match_data *md;
    tok_bpe_scratch *bpe; /* the BPE model's word buffers and word cache, made on first use */
    tok_ctx *next;        /* the pool's free list */
};

/* Normalized text of one piece is at most 1 GiB (see tok_norm_apply). */
#define TOK_MAX_NORM ((size_t)1 << 30)

/* Frees the scratch buffers of c larger than keep bytes (a pooled context then does not hold
 * on to the memory of the largest input it ever saw). */
void tok_ctx_trim(tok_ctx *c, size_t keep);

/* `where` names the file for messages. Return NULL (and add to err) on an unknown type. */
tok_norm *tok_norm_load(json_t *j, const char *where, kerr *err);
void tok_norm_free(tok_norm *n);
/* Normalizes s into the ctx arena. *lead_gone is set when the first original character was
 * removed (so the result no longer starts at the original's first byte). */
int tok_norm_apply(const tok_norm *n, tok_ctx *c, const char *s, size_t len, const char **out,
                   size_t *out_len, int *lead_gone, kerr *err);

tok_pretok *tok_pretok_load(json_t *j, const char *where, kerr *err);
void tok_pretok_free(tok_pretok *p);
/* Splits every piece with id < 0 of *io; pieces with ids pass through. */
int tok_pretok_apply(const tok_pretok *p, tok_ctx *c, tok_pieces *io, kerr *err);

/* ---------------------------------------------------------------- models */

typedef struct tok_model tok_model;
tok_model *tok_model_load(json_t *j, const char *where, kerr *err);
void tok_model_free(tok_model *m);
/* Appends the ids of one pre-tokenized piece to c->ids. */
int tok_model_tokenize(const tok_model *m, tok_ctx *c, const char *s, size_t len, kerr *err);
void tok_bpe_scratch_free(tok_bpe_scratch *b);
int tok_model_token_to_id(const tok_model *m, const char *s, size_t len, int32_t *id);
/* NULL when the id is not in the model's vocabulary. */
const char *tok_model_id_to_token(const tok_model *m, int32_t id, size_t *len);
size_t tok_model_vocab_size(const tok_model *m); /* entries in the vocabulary (HF get_vocab_size) */
int32_t tok_model_max_id(const tok_model *m);

#endif
