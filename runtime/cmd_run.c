/* cmd_run — `kiln run OUT_DIR`: load a compiled model on the GPU and generate (or embed).
 *
 *   kiln run out/llama --ids 1,2,3 [--ids 4,5 ...] [--prompt TEXT ...] [--chat MESSAGE ...]
 *            [--max-new N]
 *            [--temperature T --top-k K --top-p P --seed S] [--ignore-eos] [--dump FILE]
 *
 * --chat renders one user message with the model's chat template (chat_template.h) and encodes
 * it without added special tokens, as apply_chat_template(tokenize=True).
 * Several --ids, --prompt and --chat run batched, one schedule. Prints the generated ids per
 * sequence (and the text, when the model folder has a tokenizer), then the timings: load time,
 * time to first token, decode tokens per second. --dump writes what `kilnc ref --dump` writes
 * (logits F32 [prompt_len, vocab] of every prompt position, tokens I64 [N]; embedding models:
 * embedding F32 [hidden]); with several sequences, tensors of sequence i > 0 are suffixed ".i".
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tokenizer/chat_template.h"
#include "cli.h"
#include "engine.h"
#include "safetensors.h"
#include "tokenizer/tokenizer.h"

#define PROG "kiln run"
#define MAX_SEQS 256

/* util_parse_ids, narrowed to the runtime's int32 ids (checked against the vocabulary later). */
static int parse_ids(const char *what, const char *s, int32_t **out, kerr *err)
{
    int64_t *v;
    int n = util_parse_ids(what, s, INT32_MAX, &v, err);
    if (n < 0)
        return -1;
    *out = xmalloc(sizeof(int32_t) * (size_t)n);
    for (int i = 0; i < n; i++)
        (*out)[i] = (int32_t)v[i];
    free(v);
    return n;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kiln run OUT_DIR (--ids 1,2,3 | --prompt TEXT)... [options]\n\n"
            "Loads a model compiled by 'kilnc compile MODEL_DIR -o OUT_DIR' onto the GPU and\n"
            "generates text (or, for embedding models, returns the pooled vectors). Several\n"
            "--ids/--prompt run as one batch.\n\n"
            "  --ids LIST         a prompt as token ids (repeatable)\n"
            "  --token-types LIST token type ids of the preceding --ids (BERT-style models)\n"
            "  --prompt TEXT      a prompt as text, encoded with the model's tokenizer.json\n"
            "  --chat MESSAGE     a user message through the model's chat template (as 'kiln\n"
            "                     chat-template' renders it), then encoded (repeatable)\n"
            "  --max-new N        tokens to generate per sequence (default: the model's\n"
            "                     max_new_tokens, cut to fit, else 32); prompt + N must fit the\n"
            "                     compiled max_seq_len (kiln inspect shows it)\n"
            "  --ignore-eos       generate exactly N tokens (default: stop at end-of-sequence)\n"
            "  --temperature T    0 = greedy; otherwise sample (at most 100)\n"
            "  --top-k K          keep the K most likely tokens (0 = off)\n"
            "  --top-p P          keep the smallest set with probability >= P, 0 < P <= 1 (1 = off)\n"
            "                     These three and --max-new default to the model's\n"
            "                     generation_config.json values (kiln inspect: sampling), else to\n"
            "                     greedy, 0 and 1; kilnc compile --generation-config none drops them\n"
            "  --seed S           sampling seed (default 0; equal seeds give equal outputs)\n"
            "  --dump FILE        write logits of every prompt position and the generated tokens\n"
            "                     (safetensors, the layout of 'kilnc ref --dump')\n"
            "  --kv-memory F      fraction of free GPU memory for the KV cache, 0 < F <= 1\n"
            "                     (default 0.9)\n"
            "  --no-graphs        decode without CUDA graphs\n"
            "  -h, --help         this help\n");
}

/* OUT_DIR must be a folder holding model.kiln; says which of the two it is not. */
static int check_out_dir(const char *dir, kerr *err)
{
    struct stat st;
    if (stat(dir, &st) != 0)
        return kerr_add(err, "%s: not a folder: it does not exist (expected the OUT_DIR of "
                             "'kilnc compile MODEL_DIR -o OUT_DIR')",
                        dir);
    if (!S_ISDIR(st.st_mode))
        return kerr_add(err, "%s: not a folder (expected the OUT_DIR of 'kilnc compile MODEL_DIR "
                             "-o OUT_DIR')",
                        dir);
    char *mk = util_path_join(dir, "model.kiln"), *cfg = util_path_join(dir, "config.json");
    int rc = 0;
    if (!util_is_file(mk))
        rc = kerr_add(err, "%s: no model.kiln in this folder (expected the OUT_DIR of 'kilnc "
                           "compile MODEL_DIR -o OUT_DIR')%s",
                      dir, util_is_file(cfg) ? "; it holds a config.json: a Hugging Face "
                                               "checkpoint is compiled with kilnc compile first"
                                             : "");
    free(mk);
    free(cfg);
    return rc;
}

/* The batch against the compiled limits, before anything sized by the user is allocated or the
 * GPU is touched. Returns 0, or -1 with a message naming the option and both numbers. */
static int check_limits(const ka_manifest *man, const km_seq *seqs, const int *is_text, int np,
                        int max_new, kerr *err)
{
    if (np > man->max_seqs)
        return kerr_add(err, "%d prompts, but this model was compiled for at most %d sequences "
                             "per batch (kilnc compile --max-batch N)",
                        np, man->max_seqs);
    for (int i = 0; i < np; i++) {
        const km_seq *q = &seqs[i];
        const char *opt = is_text[i] == 2 ? "--chat" : is_text[i] ? "--prompt" : "--ids";
        int nt = q->n_prompt;
        if (q->n_prompt < 1)
            return kerr_add(err, "prompt %d (%s) has no tokens", i + 1, opt);
        for (int t = 0; t < q->n_prompt; t++)
            if (q->prompt[t] >= man->vocab)
                return kerr_add(err, "prompt %d (%s): token id %d at position %d is outside the "
                                     "vocabulary (expected 0 to %d)",
                                i + 1, opt, q->prompt[t], t, man->vocab - 1);
        if (man->output_pool) {
            if (q->n_prompt > man->max_tokens)
                return kerr_add(err, "prompt %d (%s) has %d token%s; this embedding model takes at "
                                     "most %d (kilnc compile --max-tokens N)",
                                i + 1, opt, nt, nt == 1 ? "" : "s", man->max_tokens);
        } else if (q->n_prompt >= man->max_seq_len) {
            return kerr_add(err, "prompt %d (%s) has %d token%s; the model's max_seq_len is %d, "
                                 "with room for at least one new token (kilnc compile "
                                 "--max-seq-len N)",
                            i + 1, opt, nt, nt == 1 ? "" : "s", man->max_seq_len);
        } else if ((int64_t)q->n_prompt + max_new > man->max_seq_len) {
            return kerr_add(err, "--max-new %d: prompt %d (%s) has %d token%s, and %d + %d exceeds "
                                 "the model's max_seq_len %d: use --max-new %d or less, or "
                                 "compile with a larger --max-seq-len",
                            max_new, i + 1, opt, nt, nt == 1 ? "" : "s", nt, max_new,
                            man->max_seq_len, man->max_seq_len - nt);
        }
    }
    return 0;
}

static const char *const value_opts[] = {"--ids",   "--prompt", "--chat", "--token-types",
                                         "--max-new",
                                         "--temperature", "--top-k", "--top-p", "--seed",
                                         "--dump", "--kv-memory"};

int cmd_run(int argc, char **argv)
{
    const char *dir = NULL, *dump = NULL;
    const char *prompts[MAX_SEQS], *types_arg[MAX_SEQS] = {0};
    int is_text[MAX_SEQS]; /* 0 --ids, 1 --prompt, 2 --chat */
    char *chat[MAX_SEQS] = {0};
    int np = 0, max_new = 32, ignore_eos = 0;
    /* which of the sampling flags were given: the others take the artifact's defaults */
    int set_max_new = 0, set_temperature = 0, set_top_k = 0, set_top_p = 0;
    kiln_sample sp = {0, 1, 0, 0, 0};
    km_opts ko = {0.9, 0, 0};
    kerr err;
    kerr_clear(&err);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        for (size_t k = 0; k < ARRAY_LEN(value_opts); k++)
            if (!strcmp(a, value_opts[k])) {
                if (i + 1 == argc)
                    return util_usage_error(PROG, "%s needs a value", a);
                v = argv[++i];
            }
        int64_t x;
        uint64_t u;
        double d;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--ids") || !strcmp(a, "--prompt") || !strcmp(a, "--chat")) {
            if (np == MAX_SEQS)
                return util_usage_error(PROG, "at most %d prompts", MAX_SEQS);
            is_text[np] = a[2] == 'p' ? 1 : a[2] == 'c' ? 2 : 0;
            prompts[np++] = v;
        } else if (!strcmp(a, "--token-types")) {
            if (!np)
                return util_usage_error(PROG, "--token-types follows the --ids it belongs to");
            types_arg[np - 1] = v;
        } else if (!strcmp(a, "--max-new")) {
            if (util_parse_i64(a, v, 0, INT32_MAX, &x, &err))
                return util_usage_error(PROG, "%s", kerr_msg(&err));
            max_new = (int)x;
            set_max_new = 1;
        } else if (!strcmp(a, "--temperature")) {
            if (util_parse_f64(a, v, 0, KA_MAX_TEMPERATURE, 0, &d, &err))
                return util_usage_error(PROG, "%s", kerr_msg(&err));
            sp.temperature = (float)d;
            set_temperature = 1;
        } else if (!strcmp(a, "--top-k")) {
            if (util_parse_i64(a, v, 0, INT32_MAX, &x, &err))
                return util_usage_error(PROG, "%s", kerr_msg(&err));
            sp.top_k = (int)x;
            set_top_k = 1;
        } else if (!strcmp(a, "--top-p")) {
            if (util_parse_f64(a, v, 0, 1, UTIL_ABOVE_MIN, &d, &err))
                return util_usage_error(PROG, "%s", kerr_msg(&err));
            if ((float)d == 0) /* the kernel takes a float: 1e-50 would be 0, "off" nothing */
                return util_usage_error(PROG, "--top-p: '%s' is 0 as a float (expected a number "
                                              "above 0 and at most 1)",
                                        v);
            sp.top_p = (float)d;
            set_top_p = 1;
        } else if (!strcmp(a, "--seed")) {
            if (util_parse_u64(a, v, UINT64_MAX, &u, &err))
                return util_usage_error(PROG, "%s", kerr_msg(&err));
            sp.seed = u;
        } else if (!strcmp(a, "--ignore-eos")) {
            ignore_eos = 1;
        } else if (!strcmp(a, "--dump")) {
            dump = v;
        } else if (!strcmp(a, "--kv-memory")) {
            if (util_parse_f64(a, v, 0, 1, UTIL_ABOVE_MIN, &ko.kv_memory, &err))
                return util_usage_error(PROG, "%s", kerr_msg(&err));
        } else if (!strcmp(a, "--no-graphs")) {
            ko.no_graphs = 1;
        } else if (a[0] == '-' && a[1]) {
            return util_usage_error(PROG, "unknown option '%s'", a);
        } else if (!dir) {
            dir = a;
        } else {
            return util_usage_error(PROG, "unexpected argument '%s' (one OUT_DIR expected, "
                                          "already have '%s')",
                                    a, dir);
        }
    }
    if (!dir)
        return util_usage_error(PROG, "missing OUT_DIR (the folder 'kilnc compile' wrote)");
    if (!np)
        return util_usage_error(PROG, "missing a prompt: give --ids LIST or --prompt TEXT (or "
                                      "--chat MESSAGE)");
    int rc = 1;
    tokenizer *tok = NULL;
    char *tokpath = util_path_join(dir, "tokenizer.json");
    char *mkpath = util_path_join(dir, "model.kiln");
    ka_file *af = NULL;
    km_seq seqs[MAX_SEQS];
    int32_t *ids[MAX_SEQS], *types[MAX_SEQS];
    memset(seqs, 0, sizeof seqs);
    memset(ids, 0, sizeof ids);
    memset(types, 0, sizeof types);
    kmodel *m = NULL;
    st_writer *dw = NULL;
    /* the folder and the manifest first: the limits every size below is checked against */
    if (check_out_dir(dir, &err) || !(af = ka_read(mkpath, &err)))
        goto out;
    /* the checkpoint's generation_config.json defaults (ka_read checked their ranges) */
    const ka_gen *ge = &af->m.gen;
    if (!set_temperature && ge->has_temperature)
        sp.temperature = (float)ge->temperature;
    if (!set_top_p && ge->has_top_p)
        sp.top_p = (float)ge->top_p;
    if (!set_top_k && ge->has_top_k)
        sp.top_k = ge->top_k;
    int have_tok = util_is_file(tokpath);
    for (int i = 0; i < np; i++)
        if (is_text[i] && !have_tok) {
            rc = util_usage_error(PROG, "--prompt needs %s (the model folder has no tokenizer); "
                                        "pass --ids instead",
                                  tokpath);
            goto out;
        }
    if (have_tok) {
        tok = tok_load(dir, &err);
        if (!tok)
            goto out;
    }
    for (int i = 0; i < np; i++) {
        int n;
        if (is_text[i]) {
            size_t nn;
            if (is_text[i] == 2 && !(prompts[i] = chat[i] = ct_chat_prompt(dir, prompts[i], &err)))
                goto out;
            if (tok_encode(tok, prompts[i], strlen(prompts[i]), is_text[i] == 1, &ids[i], &nn,
                           &err))
                goto out;
            if (nn > INT32_MAX) {
                kerr_add(&err, "--prompt %d encodes to %zu tokens", i + 1, nn);
                goto out;
            }
            n = (int)nn;
        } else if ((n = parse_ids("--ids", prompts[i], &ids[i], &err)) < 0) {
            rc = util_usage_error(PROG, "%s", kerr_msg(&err));
            goto out;
        }
        if (types_arg[i]) {
            int nt = parse_ids("--token-types", types_arg[i], &types[i], &err);
            if (nt < 0) {
                rc = util_usage_error(PROG, "%s", kerr_msg(&err));
                goto out;
            }
            if (nt != n) {
                rc = util_usage_error(PROG, "--token-types '%s' gives %d types; the prompt has %d "
                                            "tokens (one type per token)",
                                      types_arg[i], nt, n);
                goto out;
            }
            seqs[i].types = types[i];
        }
        seqs[i].prompt = ids[i];
        seqs[i].n_prompt = n;
        seqs[i].max_new = max_new;
        seqs[i].ignore_eos = ignore_eos;
        seqs[i].sample = sp;
    }
    if (!set_max_new && ge->has_max_new && !af->m.output_pool) {
        /* the model's max_new_tokens, cut to the room the longest prompt leaves (a prompt with
         * no room at all is check_limits' error) */
        max_new = ge->max_new;
        for (int i = 0; i < np; i++)
            if (seqs[i].n_prompt < af->m.max_seq_len &&
                max_new > af->m.max_seq_len - seqs[i].n_prompt)
                max_new = af->m.max_seq_len - seqs[i].n_prompt;
        for (int i = 0; i < np; i++)
            seqs[i].max_new = max_new;
    }
    if (check_limits(&af->m, seqs, is_text, np, max_new, &err)) {
        rc = util_usage_error(PROG, "%s", kerr_msg(&err));
        goto out;
    }
    /* bounded now: max_new < max_seq_len (an embedding model generates nothing) */
    int n_out = af->m.output_pool || !max_new ? 1 : max_new;
    for (int i = 0; i < np; i++)
        seqs[i].out = xcalloc((size_t)n_out, sizeof(int32_t));
    ka_file_free(af);
    af = NULL;
    m = km_load(dir, &ko, &err);
    if (!m)
        goto out;
    const ka_manifest *man = km_manifest(m);
    fprintf(stderr, "%s: %s\n", PROG, km_describe(m));
    for (int i = 0; i < np; i++) {
        if (man->output_pool)
            seqs[i].embedding = xcalloc((size_t)man->hidden, sizeof(float));
        if (dump && !man->output_pool)
            seqs[i].prompt_logits =
                xcalloc((size_t)seqs[i].n_prompt * (size_t)man->vocab, sizeof(float));
    }
    km_stats st;
    if (km_generate(m, seqs, np, &st, &err))
        goto out;
    for (int i = 0; i < np; i++) {
        if (man->output_pool) {
            printf("embedding[%d] [%d]:", i, man->hidden);
            for (int j = 0; j < man->hidden && j < 8; j++)
                printf(" %.6f", seqs[i].embedding[j]);
            printf("%s\n", man->hidden > 8 ? " ..." : "");
            continue;
        }
        if (np > 1)
            printf("[%d] ", i);
        for (int j = 0; j < seqs[i].n_out; j++)
            printf(j ? ",%d" : "%d", seqs[i].out[j]);
        printf("\n");
        if (tok) {
            char *text;
            size_t len;
            if (tok_decode(tok, seqs[i].out, (size_t)seqs[i].n_out, 1, &text, &len, &err) == 0) {
                /* a text prompt is printed with its continuation */
                printf("%s%s%s\n", np > 1 ? "    " : "", is_text[i] ? prompts[i] : "", text);
                free(text);
            }
        }
    }
    fprintf(stderr,
            "%s: load %.2f s, prefill %d tokens %.2f ms, time to first token %.2f ms, decode %d "
            "tokens %.2f ms (%.1f tok/s)\n",
            PROG, st.load_s, st.prefill_tokens, st.prefill_s * 1e3, st.ttft_s * 1e3, st.decode_tokens,
            st.decode_s * 1e3, st.decode_s > 0 ? st.decode_tokens / st.decode_s : 0.0);
    if (dump) {
        dw = st_writer_new();
        st_writer_meta(dw, "producer", "kiln run");
        for (int i = 0; i < np; i++) {
            char name[64], sfx[16] = "";
            if (i)
                snprintf(sfx, sizeof sfx, ".%d", i);
            if (man->output_pool) {
                int64_t sh[1] = {man->hidden};
                snprintf(name, sizeof name, "embedding%s", sfx);
                st_writer_add(dw, name, ST_F32, 1, sh, seqs[i].embedding);
                continue;
            }
            int64_t sl[2] = {seqs[i].n_prompt, man->vocab}, stk[1] = {seqs[i].n_out};
            snprintf(name, sizeof name, "logits%s", sfx);
            st_writer_add(dw, name, ST_F32, 2, sl, seqs[i].prompt_logits);
            int64_t *t64 = xcalloc((size_t)(seqs[i].n_out ? seqs[i].n_out : 1), sizeof(int64_t));
            for (int j = 0; j < seqs[i].n_out; j++)
                t64[j] = seqs[i].out[j];
            snprintf(name, sizeof name, "tokens%s", sfx);
            st_writer_add_owned(dw, name, ST_I64, 1, stk, t64);
        }
        if (st_writer_write(dw, dump, NULL, NULL, &err))
            goto out;
    }
    rc = 0;
out:
    if (rc == 1)
        kerr_print(PROG, &err);
    st_writer_free(dw);
    km_free(m);
    tok_free(tok);
    for (int i = 0; i < np; i++) {
        free(ids[i]);
        free(types[i]);
        free(chat[i]);
        free(seqs[i].out);
        free(seqs[i].embedding);
        free(seqs[i].prompt_logits);
    }
    ka_file_free(af);
    free(tokpath);
    free(mkpath);
    return rc;
}
