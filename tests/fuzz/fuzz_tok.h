/* fuzz_tok — the streaming-decode contract, shared by the tokenizer fuzz targets.
 *
 * fz_check_stream(t, ids, n, skip) decodes ids with tok_decode, then pushes them one by one
 * through a tok_stream and finishes it, and abort()s (a libFuzzer finding) unless: tok_decode's
 * text is valid UTF-8, NUL-terminated at the length it reports; every piece is valid UTF-8; the pieces, in order,
 * are exactly tok_decode's text (checked piece by piece, so the report names the first piece that
 * differs); and the stream accepts every id tok_decode accepted.
 */
#ifndef KILN_FUZZ_TOK_H
#define KILN_FUZZ_TOK_H

#include "fuzz.h"
#include "tokenizer/tokenizer.h"

/* Streams ids through a tok_stream and checks the pieces against tok_decode. */
static inline void fz_check_stream(tokenizer *t, const int32_t *ids, size_t n, int skip)
{
    kerr e;
    kerr_clear(&e);
    char *want;
    size_t want_len;
    if (tok_decode(t, ids, n, skip, &want, &want_len, &e)) {
        fz_check_err(&e);
        return;
    }
    FZ_CHECK(want[want_len] == 0, "tok_decode's text is not NUL-terminated at its length");
    FZ_CHECK(fz_utf8_valid(want, want_len), "tok_decode gave invalid UTF-8");
    tok_stream *s = tok_stream_new(t, skip);
    FZ_CHECK(s != NULL, "tok_stream_new gave NULL");
    size_t got = 0;
    for (size_t i = 0; i <= n; i++) {
        char *piece;
        size_t len;
        kerr_clear(&e);
        int rc = i < n ? tok_stream_push(s, ids[i], &piece, &len, &e)
                       : tok_stream_finish(s, &piece, &len, &e);
        if (rc) {
            /* tok_decode accepted these ids: the stream must too */
            FZ_CHECK(0, "stream %s of id #%zu failed where tok_decode succeeded: %s",
                     i < n ? "push" : "finish", i, kerr_msg(&e));
        }
        FZ_CHECK(fz_utf8_valid(piece, len), "stream piece #%zu is not valid UTF-8", i);
        FZ_CHECK(got + len <= want_len && memcmp(want + got, piece, len) == 0,
                 "stream piece #%zu (%zu bytes at %zu) differs from tok_decode's text (%zu bytes)",
                 i, len, got, want_len);
        got += len;
        free(piece);
    }
    FZ_CHECK(got == want_len, "stream gave %zu bytes, tok_decode %zu", got, want_len);
    tok_stream_free(s);
    free(want);
}

#endif
