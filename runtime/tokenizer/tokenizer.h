/* tokenizer — Hugging Face tokenizer.json, in C, giving the ids HF `tokenizers` gives.
 *
 * tok_load reads tokenizer.json (and, in a folder, tokenizer_config.json, special_tokens_map.json,
 * generation_config.json and config.json, which name the bos/eos tokens) and
 * builds the pipeline HF defines: added/special tokens are split out first, then the normalizer,
 * the pre-tokenizer, the model (BPE, WordPiece, WordLevel) and the post-processor run. Decoding
 * runs the decoder chain. See tokenizer.c for the list of supported components and the rules for
 * invalid UTF-8 input.
 *
 * Threads: a loaded tokenizer may be shared. tok_encode, tok_decode and the queries may be
 * called on one tokenizer from any number of threads at once (a server does); the pipeline is
 * read-only after tok_load, and each tok_encode call takes its own scratch (buffers and a BPE word
 * cache) from a mutex-guarded pool in the tokenizer, so calls never share writable state. A
 * tok_stream is a per-request object: one thread at a time per stream, any number of streams on
 * one tokenizer. tok_load and tok_free are not concurrent with anything on the same tokenizer
 * (free it only after every call on it has returned). Nothing here prints or exits: errors go to
 * `err`, which must be the calling thread's own.
 *
 * Limits: every id read from tokenizer.json (or the config files) must be 0 <= id < TOK_MAX_ID,
 * and ids that encode emits or generation stops on (post-processor tokens, pad_id, bos/eos) must
 * be ids of the tokenizer (below tok_vocab_size); lengths such as padding and truncation are
 * bounded by TOK_MAX_LEN; tok_load refuses larger or non-integer values naming the file and the
 * field, before sizing anything by them. Files over 256 MiB and added tokens over 1024 bytes are
 * refused too, as is U+10FFFF anywhere in these files (a noncharacter; the loader uses it to stand
 * for "\u0000", which jansson cannot hold in object keys), and tok_encode takes at most
 * TOK_MAX_TEXT bytes: with these, encoding costs a bounded amount of work per input byte (regexes
 * from the file are bounded by PCRE2's match limit, which fails the call with a message).
 */
#ifndef KILN_TOKENIZER_H
#define KILN_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* Ids are below 1 << 24 (real vocabularies have at most ~262k entries); tables indexed by id are
 * sized by the largest id, so this caps what a tokenizer.json can make tok_load allocate. */
#define TOK_MAX_ID (1 << 24)
/* padding.strategy.Fixed, pad_to_multiple_of, truncation.max_length and stride: at most this many
 * ids (a 16M-token sequence is far beyond any model's context). */
#define TOK_MAX_LEN (1 << 24)

/* tok_encode takes at most this many bytes of text (64 MiB); split longer input. */
#define TOK_MAX_TEXT ((size_t)1 << 26)

typedef struct tokenizer tokenizer;

/* path: a tokenizer.json file, or a folder holding one (a compiled model folder or an HF
 * checkpoint). Returns NULL with a message naming the file and the problem. */
tokenizer *tok_load(const char *path, kerr *err);
void tok_free(tokenizer *t);

/* Encodes len bytes of text (UTF-8; invalid bytes become U+FFFD, see tokenizer.c);
 * len <= TOK_MAX_TEXT.
 * add_special: add the post-processor's special tokens (HF encode's default is 1).
 * *ids is malloc'd (free it); *n its length. Returns 0, or -1 with err set. */
int tok_encode(tokenizer *t, const char *text, size_t len, int add_special, int32_t **ids,
               size_t *n, kerr *err);

/* Decodes ids to UTF-8 text as HF decode(ids, skip_special_tokens) does: unknown ids are dropped,
 * byte sequences that are not UTF-8 become U+FFFD. *text is malloc'd and NUL-terminated. */
int tok_decode(tokenizer *t, const int32_t *ids, size_t n, int skip_special, char **text,
               size_t *len, kerr *err);

/* Streaming decoder for generation: push ids one by one and get the text they complete.
 * Contract: for any id sequence, concatenating every piece returned, then the text of
 * tok_stream_finish, gives exactly tok_decode of all ids (same skip_special), and every piece is
 * valid UTF-8. Text is released only once no later id can change it: not while the bytes end
 * inside a UTF-8 character, nor during a run of byte-fallback tokens (<0xNN>), which HF decodes
 * as one unit (the run's text if all of it is UTF-8, else one U+FFFD per byte) and which is final
 * only when a token that is not a byte ends it. A decoder chain that rewrites text after joining
 * it (e.g. a Replace after Fuse; no HF model has one) cannot stream safely: its stream releases
 * everything at tok_stream_finish. tests/test_tokenizer.c checks the contract on random sequences
 * for every fixture tokenizer and for such chains. */
typedef struct tok_stream tok_stream;
tok_stream *tok_stream_new(tokenizer *t, int skip_special);
/* *text: malloc'd, NUL-terminated, possibly empty ("" when nothing is complete yet). */
int tok_stream_push(tok_stream *s, int32_t id, char **text, size_t *len, kerr *err);
/* Whatever is still held back (e.g. a trailing incomplete byte sequence, as U+FFFD). */
int tok_stream_finish(tok_stream *s, char **text, size_t *len, kerr *err);
void tok_stream_free(tok_stream *s);

/* Special ids, -1 when the tokenizer's files name none. bos/eos come from generation_config.json,
 * tokenizer_config.json, special_tokens_map.json or config.json, in that order. */
int32_t tok_bos_id(const tokenizer *t);
int32_t tok_eos_id(const tokenizer *t);
/* Every end-of-sequence id (generation_config.json may list several); returns the count. */
size_t tok_eos_ids(const tokenizer *t, const int32_t **ids);
/* Number of ids: one more than the largest id of the model or the added tokens. */
size_t tok_vocab_size(const tokenizer *t);
/* The token's string (model vocabulary or added token), NULL if the id is unknown or its token
 * holds a NUL byte (a vocabulary's "\u0000", or "<s\u0000>": no C string names it, and the text
 * before the NUL may be another token's name). tok_encode and tok_decode handle such tokens. */
const char *tok_id_to_token(const tokenizer *t, int32_t id);
/* -1 if the token is not in the vocabulary or the added tokens. For every id whose
 * tok_id_to_token is not NULL, tok_token_to_id of that string gives the id back. */
int32_t tok_token_to_id(const tokenizer *t, const char *token);
/* 1 if the id is an added token marked special (what skip_special skips). */
int tok_is_special(const tokenizer *t, int32_t id);

#endif
