/* test_tokenizer — the tokenizer against HF `tokenizers` on the fixture corpus.
 *
 * For every tokenizer.json in tests/fixtures/tokenizers (made by make_tokenizer_fixtures.py):
 * every corpus record must encode to HF's ids and decode to HF's text, and random id sequences
 * must decode as HF decodes them (special tokens skipped and kept). Records that are not valid
 * UTF-8 are fed as raw bytes; HF was given bytes.decode("utf-8", "replace"). Also: streaming
 * decode, config-folder rules (bos/eos, add_bos/add_eos), error messages, and `kiln tokenize`.
 */
#include <jansson.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "tokenizer/tokenizer.h"
#include "util.h"

#define FIX "tests/fixtures/tokenizers"

static const char *flavours[] = {"llama3_bpe",     "gpt2_bpe",      "qwen2_bpe",
                                 "roberta_bpe",    "llama2_sp_bpe", "mistral_sp_bpe",
                                 "metaspace_bpe",  "bert_wordpiece", "nfkc_wordpiece",
                                 "suffix_bpe",     "wordlevel",     "minilm_bert"};

typedef struct rec {
    char *bytes;
    size_t len;
} rec;

static rec *corpus;
static size_t ncorpus;

static int hexval(char c) { return c <= '9' ? c - '0' : (c | 32) - 'a' + 10; }

static json_t *load_line(const char *line, size_t n)
{
    json_error_t je;
    json_t *j = json_loadb(line, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (!j)
        fail_msg("bad fixture line: %s", je.text);
    return j;
}

static int setup_corpus(void **state)
{
    (void)state;
    FILE *f = fopen(FIX "/corpus.jsonl", "r");
    if (!f)
        return -1;
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    while ((got = getline(&line, &cap, f)) > 0) {
        json_t *j = load_line(line, (size_t)got);
        corpus = xrealloc(corpus, (ncorpus + 1) * sizeof *corpus);
        rec *r = &corpus[ncorpus++];
        if (json_is_string(j)) {
            r->len = json_string_length(j);
            r->bytes = xmalloc(r->len + 1);
            memcpy(r->bytes, json_string_value(j), r->len);
        } else {
            const char *hx = json_string_value(json_object_get(j, "hex"));
            r->len = strlen(hx) / 2;
            r->bytes = xmalloc(r->len + 1);
            for (size_t i = 0; i < r->len; i++)
                r->bytes[i] = (char)(hexval(hx[2 * i]) * 16 + hexval(hx[2 * i + 1]));
        }
        json_decref(j);
    }
    free(line);
    fclose(f);
    return ncorpus >= 2000 ? 0 : -1;
}

static int teardown_corpus(void **state)
{
    (void)state;
    for (size_t i = 0; i < ncorpus; i++)
        free(corpus[i].bytes);
    free(corpus);
    return 0;
}

static tokenizer *load_flavour(const char *name)
{
    kerr err;
    kerr_clear(&err);
    char *p = xasprintf(FIX "/%s.json", name);
    tokenizer *t = tok_load(p, &err);
    if (!t)
        fail_msg("%s: %s", p, kerr_msg(&err));
    free(p);
    return t;
}

static void ids_from_json(json_t *a, int32_t **ids, size_t *n)
{
    *n = json_array_size(a);
    *ids = xmalloc((*n + 1) * sizeof **ids);
    for (size_t i = 0; i < *n; i++)
        (*ids)[i] = (int32_t)json_integer_value(json_array_get(a, i));
}

static int valid_utf8(const char *s, size_t n)
{
    json_t *j = json_stringn(s, n); /* jansson validates UTF-8 */
    int ok = j != NULL;
    json_decref(j);
    return ok;
}

/* Streams ids through a tok_stream and checks the pieces join to the full decode. */
static void check_stream(tokenizer *t, const int32_t *ids, size_t n, const char *full, size_t flen,
                         const char *name, size_t line)
{
    kerr err;
    kerr_clear(&err);
    tok_stream *s = tok_stream_new(t, 1);
    char *acc = xmalloc(flen + 64);
    size_t an = 0;
    for (size_t i = 0; i <= n; i++) {
        char *piece;
        size_t pl;
        int rc = i < n ? tok_stream_push(s, ids[i], &piece, &pl, &err)
                       : tok_stream_finish(s, &piece, &pl, &err);
        if (rc)
            fail_msg("%s line %zu: stream: %s", name, line, kerr_msg(&err));
        if (!valid_utf8(piece, pl))
            fail_msg("%s line %zu: stream piece %zu is not valid UTF-8", name, line, i);
        if (an + pl > flen)
            fail_msg("%s line %zu: stream produced more text than decode", name, line);
        memcpy(acc + an, piece, pl);
        an += pl;
        free(piece);
    }
    if (an != flen || memcmp(acc, full, flen) != 0)
        fail_msg("%s line %zu: streamed text differs from decode:\n  decode: %.*s\n  stream: %.*s",
                 name, line, (int)flen, full, (int)an, acc);
    free(acc);
    tok_stream_free(s);
}

static void check_flavour(const char *name)
{
    tokenizer *t = load_flavour(name);
    /* gzipped in the repo (6.6 MB plain); gzip is in every Debian base system */
    char *p = xasprintf("gzip -dc " FIX "/%s.expected.jsonl.gz", name);
    FILE *f = popen(p, "r");
    assert_non_null(f);
    char *line = NULL;
    size_t cap = 0, lineno = 0, bad = 0;
    ssize_t got;
    kerr err;
    while ((got = getline(&line, &cap, f)) > 0) {
        assert_true(lineno < ncorpus);
        json_t *j = load_line(line, (size_t)got);
        int32_t *exp;
        size_t nexp;
        ids_from_json(json_array_get(j, 0), &exp, &nexp);
        const char *etext = json_string_value(json_array_get(j, 1));
        size_t etlen = json_string_length(json_array_get(j, 1));
        rec *r = &corpus[lineno];
        int32_t *ids;
        size_t n;
        kerr_clear(&err);
        if (tok_encode(t, r->bytes, r->len, 1, &ids, &n, &err))
            fail_msg("%s line %zu: encode failed: %s", name, lineno + 1, kerr_msg(&err));
        if (n != nexp || memcmp(ids, exp, n * sizeof *ids) != 0) {
            size_t k = 0;
            while (k < n && k < nexp && ids[k] == exp[k])
                k++;
            print_error("%s corpus line %zu: ids differ from HF at index %zu (got %zu ids, HF %zu): "
                        "got %d, HF %d\n",
                        name, lineno + 1, k, n, nexp, k < n ? ids[k] : -1,
                        k < nexp ? exp[k] : -1);
            bad++;
        }
        char *text;
        size_t tlen;
        if (tok_decode(t, exp, nexp, 1, &text, &tlen, &err))
            fail_msg("%s line %zu: decode failed: %s", name, lineno + 1, kerr_msg(&err));
        if (tlen != etlen || memcmp(text, etext, tlen) != 0) {
            print_error("%s corpus line %zu: decode differs from HF:\n  HF:   %s\n  kiln: %s\n", name,
                        lineno + 1, etext, text);
            bad++;
        }
        /* streaming on a sample of lines (all lines would double the ASan run time) */
        if (lineno % 7 == 0)
            check_stream(t, exp, nexp, text, tlen, name, lineno + 1);
        free(text);
        free(ids);
        free(exp);
        json_decref(j);
        lineno++;
    }
    assert_int_equal(pclose(f), 0);
    free(p);
    assert_int_equal(lineno, ncorpus);
    /* random id sequences: HF's decode with and without skipping special tokens */
    p = xasprintf(FIX "/%s.decode.jsonl", name);
    f = fopen(p, "r");
    assert_non_null(f);
    size_t ndec = 0;
    while ((got = getline(&line, &cap, f)) > 0) {
        json_t *j = load_line(line, (size_t)got);
        int32_t *ids;
        size_t n;
        ids_from_json(json_array_get(j, 0), &ids, &n);
        for (int skip = 1; skip >= 0; skip--) {
            json_t *e = json_array_get(j, skip ? 1 : 2);
            char *text;
            size_t tlen;
            kerr_clear(&err);
            assert_int_equal(tok_decode(t, ids, n, skip, &text, &tlen, &err), 0);
            if (tlen != json_string_length(e) || memcmp(text, json_string_value(e), tlen) != 0) {
                print_error("%s decode.jsonl line %zu (skip_special=%d):\n  HF:   %s\n  kiln: %s\n",
                            name, ndec + 1, skip, json_string_value(e), text);
                bad++;
            }
            free(text);
        }
        free(ids);
        json_decref(j);
        ndec++;
    }
    fclose(f);
    free(p);
    free(line);
    assert_true(ndec >= 100);
    tok_free(t);
    if (bad)
        fail_msg("%s: %zu mismatches with HF (listed above)", name, bad);
}

static void test_flavour(void **state) { check_flavour((const char *)*state); }

/* ---------------------------------------------------------------- specific behaviour */

static void test_stream_holds_partial_utf8(void **state)
{
    (void)state;
    tokenizer *t = load_flavour("llama2_sp_bpe");
    kerr err;
    kerr_clear(&err);
    /* A character missing from this small vocabulary falls back to <0xXX> byte tokens. */
    int32_t *ids;
    size_t n;
    const char *s = "\xF0\x9F\xA6\x84"; /* U+1F984, absent from the corpus */
    assert_int_equal(tok_encode(t, s, strlen(s), 0, &ids, &n, &err), 0);
    assert_true(n >= 4);
    int32_t b0 = tok_token_to_id(t, "<0xF0>");
    assert_int_equal(ids[n - 4], b0);
    /* HF decodes a run of byte tokens as one unit (its UTF-8 if the whole run is valid, else one
     * U+FFFD per byte), so the character is final only once a token that is not a byte follows. */
    int32_t *after;
    size_t nafter;
    assert_int_equal(tok_encode(t, " the", 4, 0, &after, &nafter, &err), 0);
    assert_true(nafter >= 1);
    assert_true(tok_id_to_token(t, after[0])[0] != '<');
    tok_stream *st = tok_stream_new(t, 1);
    size_t total = 0;
    for (size_t i = 0; i <= n; i++) {
        char *piece;
        size_t pl;
        assert_int_equal(tok_stream_push(st, i < n ? ids[i] : after[0], &piece, &pl, &err), 0);
        if (i >= n - 4 && i < n)
            assert_int_equal(pl, 0); /* nothing while the byte run is open */
        total += pl;
        if (i == n)
            assert_true(pl >= 4 && memcmp(piece, s, 4) == 0);
        free(piece);
    }
    assert_true(total >= 4);
    free(after);
    tok_stream_free(st);
    /* an incomplete sequence at the end comes out as U+FFFD on finish, like decode */
    st = tok_stream_new(t, 1);
    char *piece;
    size_t pl;
    assert_int_equal(tok_stream_push(st, b0, &piece, &pl, &err), 0);
    assert_int_equal(pl, 0);
    free(piece);
    assert_int_equal(tok_stream_finish(st, &piece, &pl, &err), 0);
    assert_string_equal(piece, "\xEF\xBF\xBD");
    free(piece);
    tok_stream_free(st);
    free(ids);
    tok_free(t);
}

static void test_invalid_utf8_is_replaced(void **state)
{
    (void)state;
    tokenizer *t = load_flavour("gpt2_bpe");
    kerr err;
    kerr_clear(&err);
    int32_t *a, *b;
    size_t na, nb;
    /* each maximal invalid subsequence becomes one U+FFFD */
    assert_int_equal(tok_encode(t, "x\xE6\x97y\xFF", 5, 1, &a, &na, &err), 0);
    assert_int_equal(tok_encode(t, "x\xEF\xBF\xBDy\xEF\xBF\xBD", 8, 1, &b, &nb, &err), 0);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na * sizeof *a);
    free(a);
    free(b);
    /* empty input: no ids, no error */
    assert_int_equal(tok_encode(t, "", 0, 1, &a, &na, &err), 0);
    assert_int_equal(na, 0);
    free(a);
    tok_free(t);
}

static void test_queries(void **state)
{
    (void)state;
    tokenizer *t = load_flavour("bert_wordpiece");
    int32_t cls = tok_token_to_id(t, "[CLS]");
    assert_true(cls >= 0);
    assert_string_equal(tok_id_to_token(t, cls), "[CLS]");
    assert_true(tok_is_special(t, cls));
    assert_false(tok_is_special(t, tok_token_to_id(t, "the")));
    assert_int_equal(tok_vocab_size(t), 1500);
    assert_null(tok_id_to_token(t, 99999));
    assert_int_equal(tok_token_to_id(t, "no-such-token-here"), -1);
    assert_int_equal(tok_bos_id(t), -1); /* a bare tokenizer.json names no bos/eos */
    assert_int_equal(tok_eos_id(t), -1);
    /* add_special = 0 leaves out [CLS]/[SEP] */
    kerr err;
    kerr_clear(&err);
    int32_t *ids;
    size_t n;
    assert_int_equal(tok_encode(t, "the", 3, 0, &ids, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], tok_token_to_id(t, "the"));
    free(ids);
    assert_int_equal(tok_encode(t, "the", 3, 1, &ids, &n, &err), 0);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], cls);
    free(ids);
    tok_free(t);
}

/* Random bytes (mostly invalid UTF-8, NULs, controls) through every flavour: encode never fails,
 * every id decodes, decoded text is valid UTF-8 and streaming it gives the same text. */
static void test_random_bytes(void **state)
{
    (void)state;
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (size_t f = 0; f < sizeof flavours / sizeof flavours[0]; f++) {
        tokenizer *t = load_flavour(flavours[f]);
        for (int it = 0; it < 60; it++) {
            char buf[96];
            size_t n = (size_t)(it % 96);
            for (size_t i = 0; i < n; i++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                /* mix raw bytes with ASCII and pieces of special tokens */
                buf[i] = (x & 3) == 0 ? "<s>[CLS] \n\t\xe2\x96\x81"[(x >> 8) % 14] : (char)(x >> 16);
            }
            int32_t *ids;
            size_t nids;
            kerr err;
            kerr_clear(&err);
            if (tok_encode(t, buf, n, 1, &ids, &nids, &err))
                fail_msg("%s: encode of random bytes failed: %s", flavours[f], kerr_msg(&err));
            for (size_t k = 0; k < nids; k++) {
                /* NULL for a token holding a NUL byte (wordlevel's "\u0000") */
                const char *tok = tok_id_to_token(t, ids[k]);
                assert_true(ids[k] >= 0 && (size_t)ids[k] < tok_vocab_size(t));
                if (tok)
                    assert_int_equal(tok_token_to_id(t, tok), ids[k]);
            }
            char *text;
            size_t tl;
            assert_int_equal(tok_decode(t, ids, nids, 1, &text, &tl, &err), 0);
            assert_true(valid_utf8(text, tl));
            check_stream(t, ids, nids, text, tl, flavours[f], (size_t)it);
            free(text);
            free(ids);
        }
        tok_free(t);
    }
}

static char *tmpdir;

/* ---------------------------------------------------------------- streaming property */

static uint64_t rng_next(uint64_t *x)
{
    *x ^= *x << 13, *x ^= *x >> 7, *x ^= *x << 17;
    return *x;
}

/* Streams ids, returning 0 when the pieces are valid UTF-8 and join to tok_decode's text, else
 * a description of the first difference in *why (malloc'd). */
static int stream_matches(tokenizer *t, const int32_t *ids, size_t n, int skip, char **why)
{
    kerr err;
    kerr_clear(&err);
    char *full;
    size_t flen;
    if (tok_decode(t, ids, n, skip, &full, &flen, &err)) {
        *why = xasprintf("decode failed: %s", kerr_msg(&err));
        return -1;
    }
    tok_stream *s = tok_stream_new(t, skip);
    char *acc = xmalloc(1);
    size_t an = 0;
    int rc = 0;
    for (size_t i = 0; i <= n && rc == 0; i++) {
        char *piece;
        size_t pl;
        if ((i < n ? tok_stream_push(s, ids[i], &piece, &pl, &err)
                   : tok_stream_finish(s, &piece, &pl, &err))) {
            *why = xasprintf("stream failed at id %zu: %s", i, kerr_msg(&err));
            rc = -1;
            break;
        }
        if (!valid_utf8(piece, pl)) {
            *why = xasprintf("piece %zu is not valid UTF-8", i);
            rc = -1;
        }
        acc = xrealloc(acc, an + pl + 1);
        memcpy(acc + an, piece, pl);
        an += pl;
        free(piece);
    }
    if (rc == 0 && (an != flen || memcmp(acc, full, flen) != 0)) {
        *why = xasprintf("decode \"%.*s\" but stream \"%.*s\"", (int)flen, full, (int)an, acc);
        rc = -1;
    }
    tok_stream_free(s);
    free(acc);
    free(full);
    return rc;
}

/* The streaming contract, for every fixture tokenizer: for any id sequence, the pieces a stream
 * releases (and its finish) join to tok_decode of the whole sequence, and each is valid UTF-8.
 * Sequences: uniform ids (specials, byte tokens and unknown ids included), sequences biased to
 * the ids that make decoding non-local (byte-fallback <0xNN> tokens, pieces of UTF-8 characters,
 * special tokens, tokens that decode to nothing or to spaces), and encodings of random bytes. */
static void test_stream_property(void **state)
{
    (void)state;
    uint64_t x = 0x2545F4914F6CDD1Dull;
    size_t checked = 0;
    for (size_t f = 0; f < sizeof flavours / sizeof flavours[0]; f++) {
        tokenizer *t = load_flavour(flavours[f]);
        size_t v = tok_vocab_size(t);
        /* the ids whose decode is not plain text on its own */
        int32_t *odd = xmalloc(v * sizeof *odd);
        size_t nodd = 0;
        kerr err;
        kerr_clear(&err);
        for (size_t id = 0; id < v; id++) {
            int32_t i32 = (int32_t)id;
            char *text;
            size_t tl;
            const char *tok = tok_id_to_token(t, i32);
            if (!tok || tok_decode(t, &i32, 1, 0, &text, &tl, &err))
                continue;
            int is_odd = tok_is_special(t, i32) || tl == 0 || strstr(text, "\xEF\xBF\xBD") ||
                         strspn(text, " ") == tl || (strlen(tok) == 6 && strncmp(tok, "<0x", 3) == 0);
            free(text);
            if (is_odd)
                odd[nodd++] = i32;
        }
        for (int it = 0; it < 1500; it++) {
            int32_t ids[40];
            int32_t *enc = NULL;
            size_t n = (size_t)(rng_next(&x) % 25);
            const int32_t *seq = ids;
            int kind = it % 3;
            if (kind == 0) {
                for (size_t i = 0; i < n; i++)
                    ids[i] = (int32_t)(rng_next(&x) % (v + 3)); /* a few ids past the vocabulary */
            } else if (kind == 1 && nodd) {
                for (size_t i = 0; i < n; i++)
                    ids[i] = rng_next(&x) % 4 ? odd[rng_next(&x) % nodd] : (int32_t)(rng_next(&x) % v);
            } else {
                char buf[32];
                size_t bl = n;
                for (size_t i = 0; i < bl; i++) {
                    uint64_t r = rng_next(&x);
                    buf[i] = r % 3 == 0 ? "a \xE2\x96\x81\xF0\x9F\xA6\x84\xC3\xA9."[(r >> 8) % 12]
                                        : (char)(r >> 16);
                }
                if (tok_encode(t, buf, bl, (int)(it & 1), &enc, &n, &err))
                    fail_msg("%s: encode failed: %s", flavours[f], kerr_msg(&err));
                seq = enc;
            }
            for (int skip = 0; skip <= 1; skip++) {
                char *why;
                if (stream_matches(t, seq, n, skip, &why)) {
                    print_error("%s, skip_special=%d, ids:", flavours[f], skip);
                    for (size_t i = 0; i < n; i++)
                        print_error(" %d", seq[i]);
                    fail_msg("\n%s", why);
                }
                checked++;
            }
            free(enc);
        }
        free(odd);
        tok_free(t);
    }
    assert_int_equal(checked, 12 * 1500 * 2);
}

/* The same contract for decoder chains the fixtures do not have, on a vocabulary of awkward
 * tokens (empty, only spaces or U+2581, pieces of <0xNN>, byte-level bytes of broken UTF-8,
 * WordPiece/BPE affixes, CTC pad and delimiter): chains that stream by windows, and chains that
 * cannot (a Replace after Fuse, a Strip before ByteFallback), which must hold text to the end. */
static void test_stream_chains(void **state)
{
    (void)state;
    static const char *vocab[] = {
        "a", "", "\u2581", " ", "\u2581a", "##a", "##", "</w>", "a</w>", "<0x41>", "<0x20>",
        "<0xC3>", "<0xA9>", "<0xE2>", "<0x96>", "<0x81>", "<0xFF>", "<pad>", "|", "b", "<0x", "1>",
        ".", " .", "\u00e9", "\u2581\u2581", "\u0120", "\u00c3", "\u00a9", "\u00e2\u0138", "\u0123",
        "ab", "\u00ff", "  ", "<0x4", "'", "n't"};
    static const char *chains[] = {
        "{\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\", \"pattern\": {\"String\": "
        "\"\u2581\"}, \"content\": \" \"}, {\"type\": \"ByteFallback\"}, {\"type\": \"Fuse\"}, "
        "{\"type\": \"Strip\", \"content\": \" \", \"start\": 1, \"stop\": 0}]}",
        "{\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\", \"pattern\": {\"String\": "
        "\"\u2581\"}, \"content\": \" \"}, {\"type\": \"ByteFallback\"}, {\"type\": \"Fuse\"}, "
        "{\"type\": \"Strip\", \"content\": \" \", \"start\": 2, \"stop\": 2}]}",
        "{\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Fuse\"}, {\"type\": \"Replace\", "
        "\"pattern\": {\"String\": \"ab\"}, \"content\": \"X\"}]}",
        "{\"type\": \"CTC\", \"pad_token\": \"<pad>\", \"word_delimiter_token\": \"|\", \"cleanup\": true}",
        "{\"type\": \"BPEDecoder\", \"suffix\": \"</w>\"}",
        "{\"type\": \"WordPiece\", \"prefix\": \"##\", \"cleanup\": true}",
        "{\"type\": \"Metaspace\", \"replacement\": \"\u2581\", \"prepend_scheme\": \"always\"}",
        "{\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Fuse\"}, {\"type\": \"Metaspace\", "
        "\"replacement\": \"\u2581\", \"prepend_scheme\": \"first\"}]}",
        "{\"type\": \"ByteLevel\"}",
        "{\"type\": \"Sequence\", \"decoders\": [{\"type\": \"ByteLevel\"}, {\"type\": \"Strip\", "
        "\"content\": \" \", \"start\": 1, \"stop\": 1}]}",
        "null",
        "{\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\", \"pattern\": {\"String\": "
        "\"<0x4\"}, \"content\": \"<0x2\"}, {\"type\": \"Replace\", \"pattern\": {\"Regex\": \"^<0x$\"}, "
        "\"content\": \"<0x41>\"}, {\"type\": \"ByteFallback\"}, {\"type\": \"Fuse\"}]}",
        "{\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Strip\", \"content\": \"<\", \"start\": 1, "
        "\"stop\": 0}, {\"type\": \"ByteFallback\"}, {\"type\": \"Fuse\"}]}",
    };
    size_t nv = ARRAY_LEN(vocab);
    uint64_t x = 0x853C49E6748FEA9Bull;
    for (size_t c = 0; c < ARRAY_LEN(chains); c++) {
        char *json = xasprintf("{\"model\": {\"type\": \"WordLevel\", \"unk_token\": \"a\", \"vocab\": {");
        for (size_t i = 0; i < nv; i++) {
            char *more = xasprintf("%s%s\"%s\": %zu", json, i ? ", " : "", vocab[i], i);
            free(json);
            json = more;
        }
        char *more = xasprintf("%s}}, \"added_tokens\": [{\"id\": %zu, \"content\": \"<s>\", "
                               "\"special\": true}], \"decoder\": %s}",
                               json, nv, chains[c]);
        free(json);
        json = more;
        char *p = util_path_join(tmpdir, "chain.json");
        kerr err;
        kerr_clear(&err);
        assert_int_equal(util_write_file(p, json, strlen(json), &err), 0);
        tokenizer *t = tok_load(p, &err);
        if (!t)
            fail_msg("chain %zu: %s", c, kerr_msg(&err));
        for (int it = 0; it < 600; it++) {
            int32_t ids[24];
            size_t n = (size_t)(rng_next(&x) % 25);
            for (size_t i = 0; i < n; i++)
                ids[i] = (int32_t)(rng_next(&x) % (nv + 2)); /* <s> and one unknown id */
            for (int skip = 0; skip <= 1; skip++) {
                char *why;
                if (stream_matches(t, ids, n, skip, &why)) {
                    print_error("chain %zu, skip_special=%d, ids:", c, skip);
                    for (size_t i = 0; i < n; i++)
                        print_error(" %d", ids[i]);
                    fail_msg("\n%s", why);
                }
            }
        }
        tok_free(t);
        free(p);
        free(json);
    }
}

/* The case the fuzzing campaign found: Llama-2 byte fallback, ids 37 35 215 (<0x22> <0x20>
 * <0xD4>) decode to three U+FFFD (the bytes are not UTF-8 as a whole), and so must the stream. */
static void test_stream_byte_fallback_run(void **state)
{
    (void)state;
    tokenizer *t = load_flavour("llama2_sp_bpe");
    const int32_t ids[] = {37, 35, 215};
    char *why;
    if (stream_matches(t, ids, 3, 1, &why))
        fail_msg("%s", why);
    kerr err;
    kerr_clear(&err);
    char *text;
    size_t tl;
    assert_int_equal(tok_decode(t, ids, 3, 1, &text, &tl, &err), 0);
    assert_string_equal(text, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
    free(text);
    /* A long run is held without decoding it on every push (that was O(k^2): a fuzz timeout),
     * and comes out whole when a token that is not a byte ends it. */
    int32_t a = tok_token_to_id(t, "<0x41>"), end = tok_token_to_id(t, "\xE2\x96\x81the");
    assert_true(a >= 0 && end >= 0);
    tok_stream *s = tok_stream_new(t, 1);
    size_t k = 100000, got = 0;
    char *piece;
    size_t pl;
    for (size_t i = 0; i <= k; i++) {
        assert_int_equal(tok_stream_push(s, i < k ? a : end, &piece, &pl, &err), 0);
        if (i < k)
            assert_int_equal(pl, 0);
        else
            got = pl;
        free(piece);
    }
    assert_int_equal(got, k + 4); /* k x "A", then " the" */
    tok_stream_free(s);
    tok_free(t);
}

/* ---------------------------------------------------------------- threads */

typedef struct mt_job {
    tokenizer *t;
    size_t first;        /* this thread starts at a different record, so calls interleave */
    int32_t **ids;       /* single-threaded results, per corpus record */
    size_t *nids;
    char **text;
    size_t mismatches, failures;
} mt_job;

static void *mt_worker(void *arg)
{
    mt_job *j = arg;
    kerr err;
    for (size_t k = 0; k < ncorpus; k++) {
        size_t r = (j->first + k) % ncorpus;
        int32_t *ids;
        size_t n;
        char *text;
        size_t tl;
        kerr_clear(&err);
        if (tok_encode(j->t, corpus[r].bytes, corpus[r].len, 1, &ids, &n, &err)) {
            j->failures++;
            continue;
        }
        if (n != j->nids[r] || memcmp(ids, j->ids[r], n * sizeof *ids) != 0)
            j->mismatches++;
        if (tok_decode(j->t, ids, n, 1, &text, &tl, &err))
            j->failures++;
        else {
            if (strcmp(text, j->text[r]) != 0)
                j->mismatches++;
            free(text);
        }
        free(ids);
    }
    return NULL;
}

/* A server shares one loaded tokenizer between request threads: 4 threads encode and decode the
 * whole corpus at once and must get exactly the single-threaded ids and text (run under SAN=1
 * too; the encode scratch pool and the byte-level tables are what this exercises). */
static void test_threads(void **state)
{
    (void)state;
    static const char *names[] = {"llama3_bpe", "llama2_sp_bpe", "minilm_bert"};
    for (size_t f = 0; f < ARRAY_LEN(names); f++) {
        tokenizer *t = load_flavour(names[f]);
        int32_t **ids = xcalloc(ncorpus, sizeof *ids);
        size_t *nids = xcalloc(ncorpus, sizeof *nids);
        char **text = xcalloc(ncorpus, sizeof *text);
        kerr err;
        kerr_clear(&err);
        for (size_t r = 0; r < ncorpus; r++) {
            size_t tl;
            assert_int_equal(tok_encode(t, corpus[r].bytes, corpus[r].len, 1, &ids[r], &nids[r], &err), 0);
            assert_int_equal(tok_decode(t, ids[r], nids[r], 1, &text[r], &tl, &err), 0);
        }
        tok_free(t);
        /* a fresh tokenizer: its pool and the BPE caches fill while the threads race */
        t = load_flavour(names[f]);
        mt_job jobs[4];
        pthread_t th[4];
        for (int i = 0; i < 4; i++) {
            jobs[i] = (mt_job){t, (size_t)i * ncorpus / 4, ids, nids, text, 0, 0};
            assert_int_equal(pthread_create(&th[i], NULL, mt_worker, &jobs[i]), 0);
        }
        for (int i = 0; i < 4; i++) {
            assert_int_equal(pthread_join(th[i], NULL), 0);
            if (jobs[i].mismatches || jobs[i].failures)
                fail_msg("%s: thread %d: %zu results differ from one thread's, %zu calls failed",
                         names[f], i, jobs[i].mismatches, jobs[i].failures);
        }
        tok_free(t);
        for (size_t r = 0; r < ncorpus; r++) {
            free(ids[r]);
            free(text[r]);
        }
        free(ids);
        free(nids);
        free(text);
    }
}


static void write_text(const char *dir, const char *name, const char *text)
{
    char *p = util_path_join(dir, name);
    kerr err;
    kerr_clear(&err);
    assert_int_equal(util_write_file(p, text, strlen(text), &err), 0);
    free(p);
}

static void copy_fixture(const char *name, const char *dir)
{
    char *src = xasprintf(FIX "/%s.json", name);
    size_t len;
    kerr err;
    kerr_clear(&err);
    char *data = util_read_file(src, &len, &err);
    assert_non_null(data);
    char *dst = util_path_join(dir, "tokenizer.json");
    assert_int_equal(util_write_file(dst, data, len, &err), 0);
    free(dst);
    free(data);
    free(src);
}

static void test_config_folder(void **state)
{
    (void)state;
    char *dir = util_path_join(tmpdir, "llama2");
    kerr err;
    kerr_clear(&err);
    assert_int_equal(util_mkdirs(dir, &err), 0);
    copy_fixture("llama2_sp_bpe", dir);
    write_text(dir, "tokenizer_config.json",
               "{\"add_bos_token\": true, \"add_eos_token\": true, \"bos_token\": \"<s>\","
               " \"eos_token\": {\"content\": \"</s>\", \"special\": true}}");
    write_text(dir, "generation_config.json", "{\"bos_token_id\": 1, \"eos_token_id\": [2, 0]}");
    tokenizer *t = tok_load(dir, &err);
    if (!t)
        fail_msg("%s", kerr_msg(&err));
    assert_int_equal(tok_bos_id(t), 1);
    assert_int_equal(tok_eos_id(t), 2);
    const int32_t *eos;
    assert_int_equal(tok_eos_ids(t, &eos), 2);
    assert_int_equal(eos[1], 0);
    int32_t *ids;
    size_t n;
    assert_int_equal(tok_encode(t, "hi", 2, 1, &ids, &n, &err), 0);
    assert_true(n >= 3);
    assert_int_equal(ids[0], 1); /* <s>, from tokenizer.json's TemplateProcessing */
    /* add_eos_token does not add </s>: transformers 5 keeps tokenizer.json's post-processor */
    assert_int_not_equal(ids[n - 1], 2);
    free(ids);
    tok_free(t);
    /* bos named by tokenizer_config.json when generation_config.json is gone */
    write_text(dir, "tokenizer_config.json", "{\"add_bos_token\": false, \"bos_token\": \"<s>\"}");
    char *gc = util_path_join(dir, "generation_config.json");
    assert_int_equal(remove(gc), 0);
    free(gc);
    assert_non_null(t = tok_load(dir, &err));
    assert_int_equal(tok_bos_id(t), 1); /* from tokenizer_config.json */
    assert_int_equal(tok_eos_id(t), -1);
    tok_free(t);
    /* a broken config file is an error naming it */
    write_text(dir, "tokenizer_config.json", "{\"add_bos_token\": tru");
    assert_null(tok_load(dir, &err));
    assert_non_null(strstr(kerr_msg(&err), "tokenizer_config.json:1:"));
    assert_non_null(strstr(kerr_msg(&err), "invalid JSON"));
    free(dir);
}

static void expect_load_error(const char *json, const char *want1, const char *want2)
{
    char *p = util_path_join(tmpdir, "bad.json");
    kerr err;
    kerr_clear(&err);
    assert_int_equal(util_write_file(p, json, strlen(json), &err), 0);
    tokenizer *t = tok_load(p, &err);
    assert_null(t);
    const char *m = kerr_msg(&err);
    if (!strstr(m, want1) || (want2 && !strstr(m, want2)) || !strstr(m, p))
        fail_msg("error message '%s' lacks '%s' / '%s' / the path", m, want1, want2 ? want2 : "");
    free(p);
}

#define MODEL_OK "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a b\"]}"

static void test_errors(void **state)
{
    (void)state;
    kerr err;
    kerr_clear(&err);
    assert_null(tok_load("tests/fixtures/tokenizers/nope.json", &err));
    assert_non_null(strstr(kerr_msg(&err), "nope.json: no such file"));
    kerr_clear(&err);
    assert_null(tok_load("tests/fixtures", &err));
    assert_non_null(strstr(kerr_msg(&err), "no tokenizer.json in this folder"));
    expect_load_error("{\"model\": ", "invalid JSON", ":1:");
    expect_load_error("[1, 2]", "expected a JSON object", NULL);
    expect_load_error("{\"normalizer\": {\"type\": \"Precompiled\", \"precompiled_charsmap\": \"\"}, " MODEL_OK "}",
                      "unsupported normalizer \"Precompiled\"", NULL);
    expect_load_error("{\"pre_tokenizer\": {\"type\": \"UnicodeScripts\"}, " MODEL_OK "}",
                      "unsupported pre_tokenizer \"UnicodeScripts\"", NULL);
    expect_load_error("{\"decoder\": {\"type\": \"Mystery\"}, " MODEL_OK "}",
                      "unsupported decoder \"Mystery\"", NULL);
    expect_load_error("{\"post_processor\": {\"type\": \"Mystery\"}, " MODEL_OK "}",
                      "unsupported post_processor \"Mystery\"", NULL);
    expect_load_error("{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.0]]}}",
                      "unsupported model \"Unigram\"", NULL);
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}}",
                      "merges[0]", "\"b\" is not in the vocabulary");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"dropout\": 0.1, \"vocab\": {}, \"merges\": []}}",
                      "dropout", NULL);
    expect_load_error("{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(a\"}, "
                      "\"behavior\": \"Isolated\", \"invert\": false}, " MODEL_OK "}",
                      "does not compile", "(a");
    expect_load_error("{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"String\": \"x\"}, "
                      "\"behavior\": \"Sideways\", \"invert\": false}, " MODEL_OK "}",
                      "unknown split behavior Sideways", NULL);
    expect_load_error("{}", "\"model\" is missing", NULL);
}

/* Every number tokenizer.json gives is range-checked before use, with the file and the field
 * path in the message (the fuzzing campaign on e52b4c6 found ids of 2^31-1 and padding of -5). */
static void test_limits(void **state)
{
    (void)state;
#define WL(vocab) "\"model\": {\"type\": \"WordLevel\", \"unk_token\": \"a\", \"vocab\": " vocab "}"
    expect_load_error("{" WL("{\"a\": 2147483647}") "}",
                      "model.vocab[\"a\"]: 2147483647; expected an integer from 0 to 16777215", NULL);
    expect_load_error("{" WL("{\"a\": -1}") "}", "model.vocab[\"a\"]: -1; expected an integer", NULL);
    expect_load_error("{" WL("{\"a\": 1.5}") "}", "model.vocab[\"a\"]: 1.5; expected an integer", NULL);
    expect_load_error("{" WL("{\"a\": \"7\"}") "}", "model.vocab[\"a\"]: \"7\"; expected", NULL);
    expect_load_error("{" WL("{\"a\": 0}") ", \"added_tokens\": [{\"id\": -3, \"content\": \"<x>\"}]}",
                      "added_tokens[0].id: -3; expected an integer from 0 to 16777215", NULL);
    expect_load_error("{" WL("{\"a\": 0}") ", \"padding\": {\"strategy\": {\"Fixed\": -5}}}",
                      "padding.strategy.Fixed: -5; expected an integer from 1 to 16777216", NULL);
    expect_load_error("{" WL("{\"a\": 0}") ", \"padding\": {\"strategy\": {\"Fixed\": 1e11}}}",
                      "padding.strategy.Fixed: 100000000000; expected an integer from 1 to", NULL);
    expect_load_error("{" WL("{\"a\": 0}") ", \"padding\": {\"strategy\": {\"Fixed\": 100000000000}}}",
                      "padding.strategy.Fixed: 100000000000; expected", NULL);
    expect_load_error("{" WL("{\"a\": 0}") ", \"padding\": {\"strategy\": \"BatchLongest\", "
                      "\"pad_id\": -1}}",
                      "padding.pad_id: -1; expected an integer from 0 to 16777215", NULL);
    expect_load_error("{" WL("{\"a\": 0}") ", \"padding\": {\"strategy\": \"BatchLongest\", "
                      "\"pad_to_multiple_of\": -8}}",
                      "padding.pad_to_multiple_of: -8; expected an integer from 0 to", NULL);
    expect_load_error("{" WL("{\"a\": 0}") ", \"padding\": {\"strategy\": \"Longest\"}}",
                      "padding.strategy: expected \"BatchLongest\"", NULL);
    expect_load_error("{" WL("{\"a\": 0}") ", \"truncation\": {\"max_length\": -1}}",
                      "truncation.max_length: -1; expected an integer from 1 to 16777216", NULL);
    expect_load_error("{" WL("{\"a\": 0}") ", \"truncation\": {\"max_length\": \"abc\"}}",
                      "truncation.max_length: \"abc\"; expected", NULL);
    expect_load_error("{" WL("{\"a\": 0}") ", \"truncation\": {\"max_length\": 8, \"stride\": 8}}",
                      "truncation.stride: 8; expected less than max_length (8)", NULL);
    expect_load_error("{" WL("{\"a\": 0}") ", \"post_processor\": {\"type\": \"BertProcessing\", "
                      "\"cls\": [\"a\", -2], \"sep\": [\"a\", 0]}}",
                      "post_processor.cls[1]: -2; expected an integer from 0 to 16777215", NULL);
    expect_load_error("{" WL("{\"a\": 0}") ", \"post_processor\": {\"type\": \"Sequence\", \"processors\": "
                      "[{\"type\": \"ByteLevel\"}, {\"type\": \"TemplateProcessing\", \"single\": "
                      "[{\"SpecialToken\": {\"id\": \"a\"}}], \"special_tokens\": {\"a\": {\"ids\": [1e11]}}}]}}",
                      "post_processor.processors[1].special_tokens[\"a\"].ids[0]: 100000000000", NULL);
    expect_load_error("{" WL("{\"a\": 0}") ", \"decoder\": {\"type\": \"Strip\", \"start\": -1}}",
                      "decoder Strip.start: -1; expected an integer from 0 to", NULL);
    expect_load_error("{" WL("{\"a\": 0}") ", \"pre_tokenizer\": {\"type\": \"FixedLength\", \"length\": 0}}",
                      "pre_tokenizer FixedLength.length: 0; expected an integer from 1 to", NULL);
    expect_load_error("{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"[UNK]\": 0}, "
                      "\"max_input_chars_per_word\": -100}}",
                      "model.max_input_chars_per_word: -100; expected an integer from 0 to", NULL);
    /* ids that encode emits or generation stops on must be ids of the tokenizer */
    expect_load_error("{" WL("{\"a\": 0}") ", \"post_processor\": {\"type\": \"BertProcessing\", "
                      "\"cls\": [\"a\", 0], \"sep\": [\"a\", 70000]}}",
                      "post_processor.sep[1]: 70000 is not an id of this tokenizer (its ids are 0 to 0)",
                      NULL);
    expect_load_error("{" WL("{\"a\": 0}") ", \"post_processor\": {\"type\": \"TemplateProcessing\", "
                      "\"single\": [{\"SpecialToken\": {\"id\": \"a\"}}], \"special_tokens\": "
                      "{\"a\": {\"ids\": [3]}}}}",
                      "post_processor.special_tokens (TemplateProcessing): 3 is not an id", NULL);
    expect_load_error("{" WL("{\"a\": 0}") ", \"padding\": {\"strategy\": \"BatchLongest\", "
                      "\"pad_id\": 5}}",
                      "padding.pad_id: 5 is not an id of this tokenizer", NULL);
#undef WL
    /* the largest id allowed loads, and every table sized by it is walked without wrapping */
    char *p = util_path_join(tmpdir, "bigid.json");
    const char *j = "{\"model\": {\"type\": \"WordLevel\", \"unk_token\": \"a\", "
                    "\"vocab\": {\"a\": 0, \"z\": 16777215}}}";
    kerr err;
    kerr_clear(&err);
    assert_int_equal(util_write_file(p, j, strlen(j), &err), 0);
    tokenizer *t = tok_load(p, &err);
    if (!t)
        fail_msg("%s", kerr_msg(&err));
    assert_int_equal(tok_vocab_size(t), 16777216);
    assert_string_equal(tok_id_to_token(t, 16777215), "z");
    assert_null(tok_id_to_token(t, 16777216));
    tok_free(t);
    /* config files: ids there are checked too, naming the file */
    char *dir = util_path_join(tmpdir, "badcfg");
    assert_int_equal(util_mkdirs(dir, &err), 0);
    copy_fixture("llama2_sp_bpe", dir);
    write_text(dir, "generation_config.json", "{\"bos_token_id\": 1, \"eos_token_id\": [2, -7]}");
    kerr_clear(&err);
    assert_null(tok_load(dir, &err));
    if (!strstr(kerr_msg(&err), "generation_config.json: eos_token_id[1]: -7; expected an integer"))
        fail_msg("unexpected message: %s", kerr_msg(&err));
    write_text(dir, "generation_config.json", "{\"eos_token_id\": 99999}");
    kerr_clear(&err);
    assert_null(tok_load(dir, &err));
    if (!strstr(kerr_msg(&err), "generation_config.json: eos_token_id: 99999 is not an id of this "
                                "tokenizer (its ids are 0 to 1399)"))
        fail_msg("unexpected message: %s", kerr_msg(&err));
    write_text(dir, "generation_config.json", "{\"bos_token_id\": 4294967297}");
    kerr_clear(&err);
    assert_null(tok_load(dir, &err));
    if (!strstr(kerr_msg(&err), "generation_config.json: bos_token_id: 4294967297; expected"))
        fail_msg("unexpected message: %s", kerr_msg(&err));
    free(dir);
    free(p);
}

/* Hostile but valid input stays linear: a 200k-character word with max_input_chars_per_word
 * 1000000 (WordPiece's greedy search looks no further than the longest vocabulary entry; it was
 * O(n^2) lookups of O(n) bytes), and text over TOK_MAX_TEXT is refused before it is read. */
static void test_bounded_work(void **state)
{
    (void)state;
    char *p = util_path_join(tmpdir, "wp.json");
    const char *j = "{\"model\": {\"type\": \"WordPiece\", \"max_input_chars_per_word\": 1000000, "
                    "\"vocab\": {\"[UNK]\": 0, \"a\": 1, \"##a\": 2, \"##aa\": 3}}}";
    kerr err;
    kerr_clear(&err);
    assert_int_equal(util_write_file(p, j, strlen(j), &err), 0);
    tokenizer *t = tok_load(p, &err);
    if (!t)
        fail_msg("%s", kerr_msg(&err));
    size_t n = 200001;
    char *text = xmalloc(n);
    memset(text, 'a', n);
    int32_t *ids;
    size_t nids;
    assert_int_equal(tok_encode(t, text, n, 0, &ids, &nids, &err), 0);
    assert_int_equal(nids, 1 + (n - 1) / 2); /* a ##aa ##aa ... */
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[nids - 1], 3);
    free(ids);
    /* added tokens are matched with at most TOK_MAX_ADDED (1024) trie steps per input byte:
     * longer ones are refused, and a near-miss on every byte stays cheap */
    char *tokj = xmalloc(4096), *longtok = xmalloc(1100);
    memset(longtok, 'a', 1099);
    longtok[1099] = 0;
    snprintf(tokj, 4096, "{\"model\": {\"type\": \"WordLevel\", \"unk_token\": \"a\", \"vocab\": "
             "{\"a\": 0}}, \"added_tokens\": [{\"id\": 1, \"content\": \"%s\"}]}", longtok);
    expect_load_error(tokj, "added_tokens[0].content: 1099 bytes; added tokens are at most 1024", NULL);
    longtok[1023] = 'b';
    longtok[1024] = 0;
    snprintf(tokj, 4096, "{\"model\": {\"type\": \"WordLevel\", \"unk_token\": \"a\", \"vocab\": "
             "{\"a\": 0}}, \"added_tokens\": [{\"id\": 1, \"content\": \"%s\"}]}", longtok);
    char *tp = util_path_join(tmpdir, "longadded.json");
    assert_int_equal(util_write_file(tp, tokj, strlen(tokj), &err), 0);
    tokenizer *ta = tok_load(tp, &err);
    if (!ta)
        fail_msg("%s", kerr_msg(&err));
    assert_int_equal(tok_encode(ta, text, 65536, 0, &ids, &nids, &err), 0); /* 64k 'a' */
    assert_int_equal(nids, 1);
    free(ids);
    memcpy(text + 1000, longtok, 1024);
    assert_int_equal(tok_encode(ta, text, 65536, 0, &ids, &nids, &err), 0);
    assert_int_equal(nids, 3);
    assert_int_equal(ids[1], 1);
    free(ids);
    memset(text, 'a', n);
    tok_free(ta);
    free(tp);
    free(tokj);
    free(longtok);
    /* a file too large to be a tokenizer is refused before it is read (a sparse file here) */
    char *big = util_path_join(tmpdir, "big.json");
    FILE *bf = fopen(big, "w");
    assert_non_null(bf);
    assert_int_equal(ftruncate(fileno(bf), (off_t)300 << 20), 0);
    fclose(bf);
    kerr_clear(&err);
    assert_null(tok_load(big, &err));
    if (!strstr(kerr_msg(&err), "big.json: 314572800 bytes; kiln reads tokenizer files of at most"))
        fail_msg("unexpected message: %s", kerr_msg(&err));
    remove(big);
    free(big);
    kerr_clear(&err);
    assert_int_equal(tok_encode(t, text, TOK_MAX_TEXT + 1, 0, &ids, &nids, &err), -1);
    assert_non_null(strstr(kerr_msg(&err), "67108865 bytes; at most 67108864"));
    free(text);
    tok_free(t);
    free(p);
}

/* Regexes keep only the whole match (the match data belongs to each call, not the pattern): a
 * pattern with capture groups still splits at the whole match, and the decoder's Replace regex
 * works on its own match data. */
static void test_regex_groups(void **state)
{
    (void)state;
    char *p = util_path_join(tmpdir, "re.json");
    const char *j = "{\"model\": {\"type\": \"WordLevel\", \"unk_token\": \"<unk>\", "
                    "\"vocab\": {\"<unk>\": 0, \"x\": 1, \"ab\": 2, \"y\": 3}}, "
                    "\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(a)(b)\"}, "
                    "\"behavior\": \"Isolated\", \"invert\": false}, "
                    "\"decoder\": {\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\", "
                    "\"pattern\": {\"Regex\": \"(a)(b)\"}, \"content\": \"-\"}, {\"type\": \"Fuse\"}]}}";
    kerr err;
    kerr_clear(&err);
    assert_int_equal(util_write_file(p, j, strlen(j), &err), 0);
    tokenizer *t = tok_load(p, &err);
    if (!t)
        fail_msg("%s", kerr_msg(&err));
    int32_t *ids;
    size_t n;
    assert_int_equal(tok_encode(t, "xabyab", 6, 0, &ids, &n, &err), 0);
    assert_int_equal(n, 4);
    const int32_t want[] = {1, 2, 3, 2};
    assert_memory_equal(ids, want, sizeof want);
    char *text;
    size_t tl;
    assert_int_equal(tok_decode(t, ids, n, 0, &text, &tl, &err), 0);
    assert_string_equal(text, "x-y-");
    free(text);
    free(ids);
    tok_free(t);
    free(p);
}

/* A BPE model without an unk token drops characters it does not know (as HF does): a word of
 * them gives no ids, and the word cache must cope with an empty result (UBSan found a NULL
 * memcpy there). */
static void test_bpe_no_unk(void **state)
{
    (void)state;
    char *p = util_path_join(tmpdir, "nounk.json");
    const char *j = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}";
    kerr err;
    kerr_clear(&err);
    assert_int_equal(util_write_file(p, j, strlen(j), &err), 0);
    tokenizer *t = tok_load(p, &err);
    if (!t)
        fail_msg("%s", kerr_msg(&err));
    for (int rep = 0; rep < 2; rep++) { /* the second time from the word cache */
        int32_t *ids;
        size_t n;
        assert_int_equal(tok_encode(t, "zz", 2, 1, &ids, &n, &err), 0);
        assert_int_equal(n, 0);
        free(ids);
        assert_int_equal(tok_encode(t, "zaz", 3, 1, &ids, &n, &err), 0);
        assert_int_equal(n, 1);
        assert_int_equal(ids[0], 0);
        free(ids);
    }
    tok_free(t);
    free(p);
}

/* Messages quoting the file's own text stay short, so a long one is never dropped by kerr. */
static void test_long_names_in_errors(void **state)
{
    (void)state;
    char *big = xmalloc(40000);
    memset(big, 'q', 39999);
    big[39999] = 0;
    char *j = xasprintf("{\"decoder\": {\"type\": \"%s\"}, " MODEL_OK "}", big);
    expect_load_error(j, "unsupported decoder \"qqqq", NULL);
    free(j);
    j = xasprintf("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a %s\"]}}", big);
    expect_load_error(j, "merges[0]: token \"qqqq", "...\" is not in the vocabulary");
    free(j);
    free(big);
}

/* A vocabulary key "\u0000" (jansson cannot hold NUL in keys; the loader works around it). */
static void test_nul_in_vocab(void **state)
{
    (void)state;
    char *p = util_path_join(tmpdir, "nul.json");
    const char *j = "{\"model\": {\"type\": \"WordLevel\", \"unk_token\": \"<unk>\", "
                    "\"vocab\": {\"<unk>\": 0, \"\\u0000\": 1, \"a\\\\u0000\": 2}}}";
    kerr err;
    kerr_clear(&err);
    assert_int_equal(util_write_file(p, j, strlen(j), &err), 0);
    tokenizer *t = tok_load(p, &err);
    if (!t)
        fail_msg("%s", kerr_msg(&err));
    int32_t *ids;
    size_t n;
    assert_int_equal(tok_encode(t, "\0", 1, 1, &ids, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 1);
    free(ids);
    assert_int_equal(tok_token_to_id(t, "a\\u0000"), 2); /* an escaped backslash stays text */
    tok_free(t);
    free(p);
}

/* A token holding a NUL byte (fuzz_tokenizer_load: "<s\u0000>" emitted by a post-processor came
 * back from tok_id_to_token as "<s", which names no token or another one) has no C string name:
 * tok_id_to_token gives NULL, and encoding still finds it, also as the unk token. U+10FFFF, which
 * the loader uses to stand for "\u0000", is refused in the file instead of being read as a NUL. */
static void test_nul_token_names(void **state)
{
    (void)state;
    char *p = util_path_join(tmpdir, "nulname.json");
    const char *j = "{\"model\": {\"type\": \"WordLevel\", \"unk_token\": \"<s\\u0000>\", "
                    "\"vocab\": {\"<s\\u0000>\": 0, \"<s\": 1, \"x\": 2}}, "
                    "\"pre_tokenizer\": {\"type\": \"WhitespaceSplit\"}, "
                    "\"added_tokens\": "
                    "[{\"id\": 3, \"content\": \"[\\u0000]\", \"special\": true}]}";
    kerr err;
    kerr_clear(&err);
    assert_int_equal(util_write_file(p, j, strlen(j), &err), 0);
    tokenizer *t = tok_load(p, &err);
    if (!t)
        fail_msg("%s", kerr_msg(&err));
    int32_t *ids;
    size_t n;
    assert_int_equal(tok_encode(t, "x y [\0] <s", 10, 1, &ids, &n, &err), 0);
    assert_int_equal(n, 4);
    assert_int_equal(ids[0], 2);
    assert_int_equal(ids[1], 0); /* "y" is unknown: the unk token "<s\0>" */
    assert_int_equal(ids[2], 3);
    assert_int_equal(ids[3], 1);
    free(ids);
    assert_null(tok_id_to_token(t, 0));
    assert_null(tok_id_to_token(t, 3));
    assert_string_equal(tok_id_to_token(t, 1), "<s");
    assert_int_equal(tok_token_to_id(t, "<s"), 1);
    assert_int_equal(tok_token_to_id(t, "["), -1);
    tok_free(t);
    free(p);

    expect_load_error("{\"model\": {\"type\": \"WordLevel\", "
                      "\"vocab\": {\"<s\xF4\x8F\xBF\xBF>\": 0}}}",
                      ":1:46: U+10FFFF in a string", "stand for \\u0000");
    expect_load_error("{\"model\": {\"type\": \"WordLevel\",\n"
                      " \"vocab\": {\"<s\\udbff\\uDFFF>\": 0}}}",
                      ":2:15: U+10FFFF in a string", NULL);
    /* an escaped backslash before it makes "\\udbff\\udfff" plain text */
    p = util_path_join(tmpdir, "notesc.json");
    j = "{\"model\": {\"type\": \"WordLevel\", \"vocab\": {\"\\\\udbff\\\\udfff\": 0}}}";
    assert_int_equal(util_write_file(p, j, strlen(j), &err), 0);
    t = tok_load(p, &err);
    if (!t)
        fail_msg("%s", kerr_msg(&err));
    assert_int_equal(tok_token_to_id(t, "\\udbff\\udfff"), 0);
    tok_free(t);
    free(p);
}

static void test_cli(void **state)
{
    (void)state;
    const char *kiln = getenv("KILN");
    if (!kiln || access(kiln, X_OK) != 0) {
        print_message("test_cli: KILN is not set to the kiln binary (make check sets it); "
                      "checking the command with out/bin/kiln if it exists\n");
        kiln = access("out/bin/kiln", X_OK) == 0 ? "out/bin/kiln" : NULL;
    }
    if (!kiln) {
        print_message("test_cli: SKIPPED, no kiln binary built\n");
        skip();
    }
    char *in = util_path_join(tmpdir, "in.jsonl"), *out = util_path_join(tmpdir, "out.jsonl");
    write_text(tmpdir, "in.jsonl", "\"hello world\"\n\"\"\n42\n\"caf\\u00e9 \\ud83d\\udc4d\"\n");
    char *cmd = xasprintf("%s tokenize " FIX "/bert_wordpiece.json < %s > %s 2>/dev/null", kiln, in,
                          out);
    int rc = system(cmd);
    assert_int_not_equal(rc, 0); /* line 3 is not a string */
    size_t len;
    kerr err;
    kerr_clear(&err);
    char *got = util_read_file(out, &len, &err);
    assert_non_null(got);
    /* [CLS] hello world [SEP], [CLS] [SEP], null, [CLS] cafe [UNK]... [SEP] */
    tokenizer *t = load_flavour("bert_wordpiece");
    int32_t *ids;
    size_t n;
    assert_int_equal(tok_encode(t, "hello world", 11, 1, &ids, &n, &err), 0);
    json_t *j = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(j, json_integer(ids[i]));
    char *first = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    free(ids);
    char *nl = strchr(got, '\n');
    assert_non_null(nl);
    *nl = 0;
    assert_string_equal(got, first);
    assert_non_null(strstr(nl + 1, "\nnull\n"));
    free(first);
    free(got);
    free(cmd);
    /* --decode round trip */
    write_text(tmpdir, "in.jsonl", "[2, 3]\n[]\n\"x\"\n");
    cmd = xasprintf("%s tokenize " FIX "/bert_wordpiece.json --decode < %s > %s 2>/dev/null", kiln,
                    in, out);
    assert_int_not_equal(system(cmd), 0);
    got = util_read_file(out, &len, &err);
    assert_string_equal(got, "\"\"\n\"\"\nnull\n"); /* [CLS] [SEP] skipped */
    free(got);
    free(cmd);
    cmd = xasprintf("%s tokenize --help > %s", kiln, out);
    assert_int_equal(system(cmd), 0);
    got = util_read_file(out, &len, &err);
    assert_non_null(strstr(got, "usage: kiln tokenize PATH"));
    free(got);
    free(cmd);
    free(in);
    free(out);
    tok_free(t);
}

static int setup_tmp(void **state)
{
    (void)state;
    char tmpl[] = "/tmp/kiln-tok-XXXXXX";
    if (!mkdtemp(tmpl))
        return -1;
    tmpdir = xstrdup(tmpl);
    return setup_corpus(state);
}

static int teardown_tmp(void **state)
{
    char *cmd = xasprintf("rm -rf '%s'", tmpdir);
    int rc = system(cmd);
    (void)rc;
    free(cmd);
    free(tmpdir);
    return teardown_corpus(state);
}

int main(void)
{
#define FLAVOUR(i) {flavours[i], test_flavour, NULL, NULL, (void *)flavours[i]}
    const struct CMUnitTest tests[] = {
        FLAVOUR(0), FLAVOUR(1), FLAVOUR(2), FLAVOUR(3), FLAVOUR(4),  FLAVOUR(5),
        FLAVOUR(6), FLAVOUR(7), FLAVOUR(8), FLAVOUR(9), FLAVOUR(10), FLAVOUR(11),
        cmocka_unit_test(test_stream_holds_partial_utf8),
        cmocka_unit_test(test_invalid_utf8_is_replaced),
        cmocka_unit_test(test_random_bytes),
        cmocka_unit_test(test_stream_byte_fallback_run),
        cmocka_unit_test(test_stream_property),
        cmocka_unit_test(test_stream_chains),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_queries),
        cmocka_unit_test(test_config_folder),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_long_names_in_errors),
        cmocka_unit_test(test_bounded_work),
        cmocka_unit_test(test_regex_groups),
        cmocka_unit_test(test_bpe_no_unk),
        cmocka_unit_test(test_nul_in_vocab),
        cmocka_unit_test(test_nul_token_names),
        cmocka_unit_test(test_cli),
    };
    _Static_assert(sizeof flavours / sizeof flavours[0] == 12, "one FLAVOUR() per flavour");
    return cmocka_run_group_tests(tests, setup_tmp, teardown_tmp);
}
