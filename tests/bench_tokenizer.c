/* bench_tokenizer — single-threaded encode (and decode) throughput of a tokenizer.json.
 *
 *   out/tests/bench_tokenizer TOKENIZER.json TEXT [REPEATS]
 *
 * Encodes TEXT line by line (each line a separate tok_encode call, as prompts arrive) and then
 * as one whole string, REPEATS times each (default 3), and prints the best MB/s of input bytes
 * per second for each, plus ids/s for decode. `make bench-tokenizer` runs it on a 128k-vocab
 * byte-level BPE (Llama-3 layout) trained by make_tokenizer_fixtures.py --bench. A benchmark,
 * not a test: it asserts nothing about speed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokenizer.h"
#include "util.h"

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s TOKENIZER.json TEXT [REPEATS]\n", argv[0]);
        return 2;
    }
    int reps = argc > 3 ? atoi(argv[3]) : 3;
    if (reps < 1)
        reps = 1;
    static kerr err;
    size_t len;
    char *text = util_read_file(argv[2], &len, &err);
    if (!text) {
        fprintf(stderr, "bench_tokenizer: %s\n", kerr_msg(&err));
        return 1;
    }
    double t0 = util_now();
    tokenizer *t = tok_load(argv[1], &err);
    if (!t) {
        fprintf(stderr, "bench_tokenizer: %s\n", kerr_msg(&err));
        return 1;
    }
    printf("tokenizer: %s, %zu ids, loaded in %.0f ms\n", argv[1], tok_vocab_size(t),
           (util_now() - t0) * 1e3);
    printf("text: %s, %.2f MB\n", argv[2], len / 1e6);

    double best_lines = 1e30, best_whole = 1e30, best_dec = 1e30;
    size_t ntok = 0;
    int32_t *all = NULL;
    size_t nall = 0;
    for (int r = 0; r < reps; r++) {
        t0 = util_now();
        ntok = 0;
        for (size_t i = 0; i < len;) {
            const char *nl = memchr(text + i, '\n', len - i);
            size_t e = nl ? (size_t)(nl - text) + 1 : len;
            int32_t *ids;
            size_t n;
            if (tok_encode(t, text + i, e - i, 0, &ids, &n, &err)) {
                fprintf(stderr, "bench_tokenizer: %s\n", kerr_msg(&err));
                return 1;
            }
            ntok += n;
            free(ids);
            i = e;
        }
        double dt = util_now() - t0;
        if (dt < best_lines)
            best_lines = dt;
        t0 = util_now();
        free(all);
        if (tok_encode(t, text, len, 0, &all, &nall, &err)) {
            fprintf(stderr, "bench_tokenizer: %s\n", kerr_msg(&err));
            return 1;
        }
        dt = util_now() - t0;
        if (dt < best_whole)
            best_whole = dt;
        t0 = util_now();
        char *out;
        size_t olen;
        if (tok_decode(t, all, nall, 1, &out, &olen, &err)) {
            fprintf(stderr, "bench_tokenizer: %s\n", kerr_msg(&err));
            return 1;
        }
        dt = util_now() - t0;
        if (dt < best_dec)
            best_dec = dt;
        free(out);
    }
    printf("encode, line by line: %.1f MB/s (%zu tokens, %.2f bytes/token, best of %d)\n",
           len / 1e6 / best_lines, ntok, (double)len / (double)ntok, reps);
    printf("encode, whole text:   %.1f MB/s (%zu tokens)\n", len / 1e6 / best_whole, nall);
    printf("decode:               %.1f M tokens/s\n", nall / 1e6 / best_dec);
    free(all);
    free(text);
    tok_free(t);
    return 0;
}
