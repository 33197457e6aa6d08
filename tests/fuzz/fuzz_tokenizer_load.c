/* fuzz_tokenizer_load — tok_load (runtime/tokenizer/tokenizer.h) on a hostile tokenizer.json.
 *
 * The input is written as tokenizer.json in a scratch folder and loaded by its file path (so the
 * folder's other files are not read). A tokenizer that loads is then used a little, on a fixed
 * text that touches the usual pipeline stages (spaces, punctuation, digits, accents, CJK, an
 * emoji, a byte that is not UTF-8), so hostile vocabularies, merges, added tokens, normalizers,
 * pre-tokenizers, post-processors and decoders are run, not only parsed.
 * Contracts: a failed load leaves a message; every encoded id is below tok_vocab_size; decode
 * gives valid UTF-8; streaming the ids gives valid UTF-8 pieces whose concatenation is
 * tok_decode of the same ids; the special ids are -1 or below the vocabulary size; an encoded id's
 * token string (tok_id_to_token, NULL for a token holding a NUL byte) looks up that same id.
 */
#include "fuzz_tok.h"

static const char text[] = "Hello, world! 123  caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x91\x8d"
                           "\xff <s> [CLS]\n\tend";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fz_write("tokenizer.json", data, size);
    kerr e;
    kerr_clear(&e);
    tokenizer *t = tok_load(path, &e);
    if (!t) {
        fz_check_err(&e);
        return 0;
    }
    size_t V = tok_vocab_size(t);
    FZ_CHECK(tok_bos_id(t) >= -1 && (tok_bos_id(t) < 0 || (size_t)tok_bos_id(t) < V),
             "bos id %d, vocab %zu", tok_bos_id(t), V);
    const int32_t *eos;
    size_t neos = tok_eos_ids(t, &eos);
    for (size_t i = 0; i < neos; i++)
        FZ_CHECK(eos[i] >= 0 && (size_t)eos[i] < V, "eos id %d, vocab %zu", eos[i], V);
    for (int add = 0; add < 2; add++) {
        int32_t *ids;
        size_t n;
        kerr_clear(&e);
        if (tok_encode(t, text, sizeof text - 1, add, &ids, &n, &e)) {
            fz_check_err(&e);
            continue;
        }
        for (size_t i = 0; i < n; i++) {
            FZ_CHECK(ids[i] >= 0 && (size_t)ids[i] < V, "encode gave id %d, vocab %zu", ids[i], V);
            const char *tokstr = tok_id_to_token(t, ids[i]);
            if (tokstr)
                FZ_CHECK(tok_token_to_id(t, tokstr) == ids[i], "token '%s' of id %d gives id %d",
                         tokstr, ids[i], tok_token_to_id(t, tokstr));
        }
        fz_check_stream(t, ids, n, add);
        free(ids);
    }
    tok_free(t);
    return 0;
}
