/* cmd_perplexity — `kiln perplexity DIR --text FILE`: a model's perplexity on a text, with
 * sliding windows as Hugging Face's perplexity guide computes it, so that a quantised build and
 * its bf16 one (issue 17), or a checkpoint on the CPU and its compiled model on the GPU, can be
 * compared on the same text.
 *
 *   kiln perplexity DIR --text FILE [--max-tokens N] [--window W] [--stride S] [--json FILE]
 *                   [--quant fp8|int4 [--calibrate FILE [--calibrate-tokens N]]]
 *
 * DIR is opened as `kiln run` opens it (cli_open_backend: a compiled model on the GPU, a checkpoint
 * folder on the CPU backend; --quant rounds the checkpoint's weights there as kilnc compile --quant
 * would, so what quantising costs is measured without a GPU). The text is encoded with the model's
 * tokenizer.json, special tokens added as `kiln run --prompt` adds them (HF's tokenizer(text));
 * --max-tokens keeps the first N tokens. Windows of W tokens start every S tokens (begin = 0, S,
 * 2S, ...; the last ends at the text's end); each is one scoring request to the scheduler (max_new
 * 0 and ks_params.prompt_logprobs 0: the scheduler turns the float logits of every position into
 * the log-probability of the next prompt token with kb_logprobs, the path of the server's echo with
 * logprobs), run one at a time. A window scores the tokens at positions max(end of the previous
 * window, begin + 1) .. end - 1, the earlier ones its context: every token but the text's first is
 * scored once when S < W; at S == W a window's first token has no context and is not scored (as in
 * HF's guide). The NLLs (minus those log-probabilities) are summed in double.
 *
 * Prints the tokens scored, the mean NLL, the perplexity exp(mean NLL), the windows and the
 * seconds the scoring took (load excluded); --json writes the same as one JSON object.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "gptq.h"
#include "sched.h"
#include "tokenizer/tokenizer.h"

#define PROG "kiln perplexity"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kiln perplexity DIR --text FILE [options]\n\n"
            "The perplexity of a model on a text: exp of the mean negative log-likelihood of its\n"
            "tokens, over sliding windows as Hugging Face's perplexity guide computes it. DIR is\n"
            "a model compiled by 'kilnc compile' (GPU) or a Hugging Face checkpoint folder (CPU,\n"
            "fp32), as for 'kiln run'. The text is encoded with the model's tokenizer.json,\n"
            "special tokens added as 'kiln run --prompt' adds them (a BOS where the tokenizer\n"
            "adds one); its first token is never scored.\n\n"
            "  --text FILE        the text (UTF-8; invalid bytes become U+FFFD, as for kiln run)\n"
            "  --max-tokens N     use the text's first N tokens only (at least 2)\n"
            "  --window W         tokens per window (default: the model's max sequence length;\n"
            "                     at most that: kiln inspect shows it)\n"
            "  --stride S         tokens between window starts, 1 to W (default W/2); each window\n"
            "                     scores the tokens the previous one did not, the earlier ones\n"
            "                     its context; at S = W a window's first token is not scored\n"
            "  --json FILE        also write the results as a JSON object\n"
            "  --quant fp8|int4   a checkpoint folder only: its linears' weights rounded as\n"
            "                     'kilnc compile --quant' rounds them, to measure what that\n"
            "                     costs without a GPU (a compiled model has its own built in)\n"
            "  --calibrate FILE   with --quant: rounded by GPTQ calibrated on FILE's text, as\n"
            "                     'kilnc compile --calibrate' does (minutes on the CPU)\n"
            "  --calibrate-tokens N  with --calibrate: its first N tokens (default 16384)\n"
            "  -h, --help         this help\n\n"
            "Prints the tokens scored, the mean NLL (nats), the perplexity, the windows and the\n"
            "seconds the scoring took (loading the model excluded).\n");
}

/* One window's scoring request: the NLL of its prompt positions >= from, and its end. */
typedef struct pending {
    int from;
    double nll;
    int64_t scored;
    int done;
    ks_finish finish;
    char *error;
} pending;

static void on_event(const ks_event *ev)
{
    pending *p = ev->user;
    if (ev->prompt_pos >= p->from) {
        p->nll -= ev->logprob;
        p->scored++;
    }
    if (ev->finish == KS_RUNNING)
        return;
    p->done = 1;
    p->finish = ev->finish;
    if (ev->finish == KS_FAILED)
        p->error = xstrdup(ev->error ? ev->error : "the backend failed");
}

/* Runs one window of n tokens through the scheduler and adds the NLL of its tokens from position
 * `from` on (1 <= from < n) to *nll and their count to *scored. 0, or -1 with err set. */
static int score_window(ksched *s, const int32_t *ids, int n, int from, double *nll,
                        int64_t *scored, kerr *err)
{
    pending p = {.from = from};
    ks_params kp = {.prompt = ids, .n_prompt = n, .max_new = 0, .logprobs = -1,
                    .prompt_logprobs = 0, .cb = on_event, .user = &p};
    uint64_t id;
    if (ks_submit(s, &kp, &id, err) != KS_OK)
        return -1;
    while (!p.done) {
        int r = ks_step(s, err);
        if (r < 0)
            return -1;
        if (r == 0 && !p.done)
            return kerr_add(err, "the scheduler has a window to score and nothing it can run");
    }
    if (p.finish == KS_FAILED) {
        kerr_add(err, "%s", p.error);
        free(p.error);
        return -1;
    }
    *nll += p.nll;
    *scored += p.scored;
    return 0;
}

static const char *const value_opts[] = {"--text",  "--max-tokens", "--window",
                                         "--stride", "--json",       "--quant",
                                         "--calibrate", "--calibrate-tokens"};

int cmd_perplexity(int argc, char **argv)
{
    const char *dir = NULL, *text_path = NULL, *json = NULL;
    int64_t max_tokens = 0, window = 0, stride = 0, calib_tokens = 0;
    cli_backend_opts bo = {0};
    kerr err;
    kerr_clear(&err);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (cli_value_arg(PROG, argc, argv, &i, value_opts, ARRAY_LEN(value_opts), &v))
            return 2;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--text")) {
            text_path = v;
        } else if (!strcmp(a, "--json")) {
            json = v;
        } else if (!strcmp(a, "--quant")) {
            if (strcmp(v, "fp8") && strcmp(v, "int4"))
                return util_usage_error(PROG, "--quant %s: expected fp8 or int4", v);
            bo.quant = v;
        } else if (!strcmp(a, "--calibrate")) {
            bo.calib_path = v;
        } else if (!strcmp(a, "--calibrate-tokens")) {
            if (util_parse_i64(a, v, 2, GPTQ_MAX_TOKENS, &calib_tokens, &err))
                return util_usage_error(PROG, "%s", kerr_msg(&err));
            bo.calib_tokens = (int)calib_tokens;
        } else if (!strcmp(a, "--max-tokens") || !strcmp(a, "--window") ||
                   !strcmp(a, "--stride")) {
            int64_t *dst = a[2] == 'm' ? &max_tokens : a[2] == 'w' ? &window : &stride;
            if (util_parse_i64(a, v, a[2] == 'm' ? 2 : 1, INT32_MAX, dst, &err))
                return util_usage_error(PROG, "%s", kerr_msg(&err));
        } else if (cli_dir_arg(PROG, a, &dir)) {
            return 2;
        }
    }
    if (!dir)
        return util_usage_error(PROG, "missing DIR (the folder 'kilnc compile' wrote, or a "
                                      "Hugging Face checkpoint folder)");
    if (!text_path)
        return util_usage_error(PROG, "missing --text FILE (the text to score)");
    if (bo.calib_path && !bo.quant)
        return util_usage_error(PROG, "--calibrate needs --quant fp8 or int4 (it picks how the "
                                      "weights are rounded)");
    if (bo.calib_tokens && !bo.calib_path)
        return util_usage_error(PROG, "--calibrate-tokens needs --calibrate FILE");
    if (window && stride > window)
        return util_usage_error(PROG, "--stride %lld is outside 1 to --window %lld",
                                (long long)stride, (long long)window);

    int rc = 1;
    char *text = NULL, *tokpath = util_path_join(dir, "tokenizer.json");
    tokenizer *tok = NULL;
    int32_t *ids = NULL;
    kbackend *b = NULL;
    ksched *s = NULL;
    size_t len, nn;
    /* the text and its tokens first: a bad input fails before a model is loaded */
    if (!(text = util_read_file(text_path, &len, &err))) {
        rc = util_usage_error(PROG, "--text: %s", kerr_msg(&err));
        goto out;
    }
    if (len == 0) {
        rc = util_usage_error(PROG, "--text %s is empty (a text of at least 2 tokens is needed)",
                              text_path);
        goto out;
    }
    if (!util_is_file(tokpath)) {
        rc = util_usage_error(PROG, "%s not found: the model folder has no tokenizer to encode "
                                    "the text with",
                              tokpath);
        goto out;
    }
    if (!(tok = tok_load(dir, &err)) || tok_encode(tok, text, len, 1, &ids, &nn, &err))
        goto out;
    if (nn < 2) {
        rc = util_usage_error(PROG, "--text %s encodes to %zu token%s; at least 2 are needed (the "
                                    "first is never scored)",
                              text_path, nn, nn == 1 ? "" : "s");
        goto out;
    }
    if (nn > INT32_MAX) {
        rc = util_usage_error(PROG, "--text %s encodes to %zu tokens (at most %d): use "
                                    "--max-tokens",
                              text_path, nn, INT32_MAX);
        goto out;
    }
    int n = (int)nn;
    if (max_tokens && max_tokens < n)
        n = (int)max_tokens;

    if (!(b = cli_open_backend(dir, &bo, &err)))
        goto out;
    const kb_info *in = b->info;
    fprintf(stderr, "%s: %s\n", PROG, b->describe(b));
    if (in->embed) {
        rc = util_usage_error(PROG, "%s is %s: it has no LM head, so no perplexity", dir,
                              in->classify ? "a classifier" : "an embedding model");
        goto out;
    }
    int W = window ? (int)window : in->max_seq_len;
    if (W > in->max_seq_len) {
        rc = util_usage_error(PROG, "--window %d exceeds the model's max sequence length %d",
                              W, in->max_seq_len);
        goto out;
    }
    if (W < 2) {
        rc = util_usage_error(PROG, "--window %d: a window of at least 2 tokens is needed (one "
                                    "to score, one before it)",
                              W);
        goto out;
    }
    int S = stride ? (int)stride : W / 2;
    if (S > W) {
        rc = util_usage_error(PROG, "--stride %d is outside 1 to the window %d", S, W);
        goto out;
    }
    s = ks_new(b, &(ks_opts){.max_waiting = 1});
    double nll = 0, t0 = util_now();
    int64_t scored = 0;
    int windows = 0;
    for (int begin = 0, prev_end = 0;; begin += S) {
        int end = begin + W < n ? begin + W : n;
        int from = prev_end > begin + 1 ? prev_end - begin : 1; /* local: the first new token */
        if (score_window(s, ids + begin, end - begin, from, &nll, &scored, &err)) {
            kerr_add(&err, "(scoring window %d: tokens %d to %d)", windows + 1, begin, end - 1);
            goto out;
        }
        windows++;
        prev_end = end;
        if (end == n)
            break;
    }
    double secs = util_now() - t0, mean = nll / (double)scored, ppl = exp(mean);
    printf("tokens scored: %lld\n", (long long)scored);
    printf("mean NLL: %.9g\n", mean);
    printf("perplexity: %.9g\n", ppl);
    printf("windows: %d (window %d, stride %d, %d tokens)\n", windows, W, S, n);
    printf("seconds: %.3f\n", secs);
    if (json) {
        char *j = xasprintf("{\"tokens_scored\": %lld, \"mean_nll\": %.17g, \"perplexity\": "
                            "%.17g, \"windows\": %d, \"window\": %d, \"stride\": %d, \"tokens\": "
                            "%d, \"seconds\": %.6f}\n",
                            (long long)scored, mean, ppl, windows, W, S, n, secs);
        int wr = util_write_file(json, j, strlen(j), &err);
        free(j);
        if (wr)
            goto out;
    }
    rc = 0;
out:
    if (rc == 1)
        kerr_print(PROG, &err);
    if (s)
        ks_free(s);
    if (b)
        b->free(b);
    tok_free(tok);
    free(ids);
    free(text);
    free(tokpath);
    return rc;
}
