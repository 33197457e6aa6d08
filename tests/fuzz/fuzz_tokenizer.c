/* fuzz_tokenizer — encode, decode and streaming decode on fixed, loaded tokenizers
 * (runtime/tokenizer/tokenizer.h), one of each model and decoder family in tests/fixtures/tokenizers/.
 *
 * Input: byte 0 picks the tokenizer (modulo the count), byte 1 the flags (bit 0: add special
 * tokens when encoding, bit 1: skip special tokens when decoding). The rest is used twice:
 *   - as text: tok_encode, then every id must be below tok_vocab_size, and decoding and
 *     streaming those ids must keep the streaming contract (fuzz_tok.h);
 *   - as an id sequence, two bytes each (little-endian u16 v): v = 0xffff is INT32_MAX, 0xfffe
 *     INT32_MIN, else v mod (vocab + 4) - 2, so unknown, negative and special ids all occur;
 *     tok_decode must give valid UTF-8 and the stream must give exactly the same text, in valid
 *     UTF-8 pieces (the Llama-2 byte-fallback case of issue 9 is this check).
 * Any broken contract abort()s, which libFuzzer reports with the input.
 */
#include "fuzz_tok.h"

static const char *files[] = {
    "llama2_sp_bpe.json", "gpt2_bpe.json",      "llama3_bpe.json",  "bert_wordpiece.json",
    "metaspace_bpe.json", "mistral_sp_bpe.json", "nfkc_wordpiece.json", "qwen2_bpe.json",
    "roberta_bpe.json",   "suffix_bpe.json",    "wordlevel.json",
};
#define NTOK ARRAY_LEN(files)
static tokenizer *toks[NTOK];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    for (size_t i = 0; i < NTOK; i++) {
        char *p = xasprintf("%s/%s", FZ_FIXTURE("tests/fixtures/tokenizers"), files[i]);
        kerr e;
        kerr_clear(&e);
        toks[i] = tok_load(p, &e);
        if (!toks[i]) {
            fprintf(stderr, "fuzz_tokenizer: %s\n", kerr_msg(&e));
            abort();
        }
        free(p);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    tokenizer *t = toks[data[0] % NTOK];
    int add = data[1] & 1, skip = (data[1] >> 1) & 1;
    data += 2, size -= 2;
    size_t V = tok_vocab_size(t);

    int32_t *ids;
    size_t n;
    kerr e;
    kerr_clear(&e);
    if (tok_encode(t, (const char *)data, size, add, &ids, &n, &e)) {
        fz_check_err(&e);
    } else {
        for (size_t i = 0; i < n; i++)
            FZ_CHECK(ids[i] >= 0 && (size_t)ids[i] < V, "encode gave id %d, vocab %zu", ids[i], V);
        fz_check_stream(t, ids, n, skip);
        free(ids);
    }

    n = size / 2;
    ids = xmalloc((n ? n : 1) * sizeof *ids);
    for (size_t i = 0; i < n; i++) {
        unsigned v = data[2 * i] | data[2 * i + 1] << 8;
        ids[i] = v == 0xffff ? INT32_MAX : v == 0xfffe ? INT32_MIN : (int32_t)(v % (V + 4)) - 2;
    }
    fz_check_stream(t, ids, n, skip);
    free(ids);
    return 0;
}
