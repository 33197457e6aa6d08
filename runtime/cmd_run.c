/* cmd_run — `kiln run OUT_DIR`: load a compiled model on the GPU and generate (or embed).
 *
 *   kiln run out/llama --ids 1,2,3 [--ids 4,5 ...] [--prompt TEXT ...] [--max-new N]
 *            [--temperature T --top-k K --top-p P --seed S] [--ignore-eos] [--dump FILE]
 *
 * Several --ids / --prompt run batched, through the same schedule. Prints the generated ids per
 * sequence (and the text, when the model folder has a tokenizer), then the timings: load time,
 * time to first token, decode tokens per second. --dump writes what `kilnc ref --dump` writes
 * (logits F32 [prompt_len, vocab] of every prompt position, tokens I64 [N]; embedding models:
 * embedding F32 [hidden]); with several sequences, tensors of sequence i > 0 are suffixed ".i".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "engine.h"
#include "safetensors.h"
#include "tokenizer.h"

#define MAX_SEQS 256

/* util_parse_ids, narrowed to the runtime's int32 ids; -1 for anything else or an empty list. */
static int parse_ids(const char *s, int32_t **out)
{
    int64_t *v;
    int n = util_parse_ids(s, &v);
    if (n < 0)
        return -1;
    int ok = n > 0;
    for (int i = 0; i < n; i++)
        ok &= v[i] <= 0x7fffffff;
    if (!ok) {
        free(v);
        return -1;
    }
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
            "Loads a model compiled by 'kilnc compile' onto the GPU and generates text (or, for\n"
            "embedding models, returns the pooled vectors). Several --ids/--prompt run as one\n"
            "batch.\n\n"
            "  --ids LIST         a prompt as token ids (repeatable)\n"
            "  --token-types LIST token type ids of the preceding --ids (BERT-style models)\n"
            "  --prompt TEXT      a prompt as text, encoded with the model's tokenizer.json\n"
            "  --max-new N        tokens to generate per sequence (default 32)\n"
            "  --ignore-eos       generate exactly N tokens (default: stop at end-of-sequence)\n"
            "  --temperature T    0 = greedy (default); otherwise sample\n"
            "  --top-k K          keep the K most likely tokens (0 = off)\n"
            "  --top-p P          keep the smallest set with probability >= P (1 = off)\n"
            "  --seed S           sampling seed (default 0; equal seeds give equal outputs)\n"
            "  --dump FILE        write logits of every prompt position and the generated tokens\n"
            "                     (safetensors, the layout of 'kilnc ref --dump')\n"
            "  --kv-memory F      fraction of free GPU memory for the KV cache (default 0.9)\n"
            "  --no-graphs        decode without CUDA graphs\n"
            "  -h, --help         this help\n");
}

int cmd_run(int argc, char **argv)
{
    const char *dir = NULL, *dump = NULL;
    const char *prompts[MAX_SEQS], *types_arg[MAX_SEQS] = {0};
    int is_text[MAX_SEQS];
    int np = 0, max_new = 32, ignore_eos = 0;
    kiln_sample sp = {0, 1, 0, 0, 0};
    km_opts ko = {0.9, 0, 0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if ((!strcmp(a, "--ids") || !strcmp(a, "--prompt")) && has) {
            if (np == MAX_SEQS) {
                fprintf(stderr, "kiln run: at most %d prompts\n", MAX_SEQS);
                return 2;
            }
            is_text[np] = a[2] == 'p';
            prompts[np++] = argv[++i];
        } else if (!strcmp(a, "--token-types") && has) {
            if (!np) {
                fprintf(stderr, "kiln run: --token-types follows the --ids it belongs to\n");
                return 2;
            }
            types_arg[np - 1] = argv[++i];
        } else if (!strcmp(a, "--max-new") && has) {
            max_new = atoi(argv[++i]);
            if (max_new < 0) {
                fprintf(stderr, "kiln run: --max-new must be >= 0\n");
                return 2;
            }
        } else if (!strcmp(a, "--temperature") && has) {
            sp.temperature = strtof(argv[++i], NULL);
        } else if (!strcmp(a, "--top-k") && has) {
            sp.top_k = atoi(argv[++i]);
        } else if (!strcmp(a, "--top-p") && has) {
            sp.top_p = strtof(argv[++i], NULL);
        } else if (!strcmp(a, "--seed") && has) {
            sp.seed = strtoull(argv[++i], NULL, 10);
        } else if (!strcmp(a, "--ignore-eos")) {
            ignore_eos = 1;
        } else if (!strcmp(a, "--dump") && has) {
            dump = argv[++i];
        } else if (!strcmp(a, "--kv-memory") && has) {
            ko.kv_memory = strtod(argv[++i], NULL);
            if (!(ko.kv_memory > 0 && ko.kv_memory <= 1)) {
                fprintf(stderr, "kiln run: --kv-memory expects a fraction in (0, 1]\n");
                return 2;
            }
        } else if (!strcmp(a, "--no-graphs")) {
            ko.no_graphs = 1;
        } else if (a[0] == '-') {
            fprintf(stderr, "kiln run: unknown option or missing value: %s (see --help)\n", a);
            return 2;
        } else if (!dir) {
            dir = a;
        } else {
            fprintf(stderr, "kiln run: unexpected argument '%s'\n", a);
            return 2;
        }
    }
    if (!dir || !np) {
        usage(stderr);
        return 2;
    }
    if (sp.temperature < 0 || sp.top_k < 0 || !(sp.top_p > 0 && sp.top_p <= 1)) {
        fprintf(stderr, "kiln run: need --temperature >= 0, --top-k >= 0, 0 < --top-p <= 1\n");
        return 2;
    }
    kerr err;
    kerr_clear(&err);
    int rc = 1;
    tokenizer *tok = NULL;
    char *tokpath = util_path_join(dir, "tokenizer.json");
    int have_tok = util_is_file(tokpath);
    km_seq seqs[MAX_SEQS];
    int32_t *ids[MAX_SEQS], *types[MAX_SEQS];
    memset(seqs, 0, sizeof seqs);
    memset(ids, 0, sizeof ids);
    memset(types, 0, sizeof types);
    kmodel *m = NULL;
    st_writer *dw = NULL;
    for (int i = 0; i < np; i++)
        if (is_text[i] && !have_tok) {
            fprintf(stderr, "kiln run: --prompt needs %s (the model folder has no tokenizer); "
                            "pass --ids instead\n",
                    tokpath);
            free(tokpath);
            return 2;
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
            if (tok_encode(tok, prompts[i], strlen(prompts[i]), 1, &ids[i], &nn, &err))
                goto out;
            n = (int)nn;
        } else if ((n = parse_ids(prompts[i], &ids[i])) < 0) {
            fprintf(stderr, "kiln run: --ids expects comma-separated non-negative integers, got "
                            "'%s'\n",
                    prompts[i]);
            rc = 2;
            goto out;
        }
        if (types_arg[i]) {
            int nt = parse_ids(types_arg[i], &types[i]);
            if (nt != n) {
                fprintf(stderr, "kiln run: --token-types '%s' must give one type per prompt token "
                                "(%d)\n",
                        types_arg[i], n);
                rc = 2;
                goto out;
            }
            seqs[i].types = types[i];
        }
        seqs[i].prompt = ids[i];
        seqs[i].n_prompt = n;
        seqs[i].max_new = max_new;
        seqs[i].ignore_eos = ignore_eos;
        seqs[i].sample = sp;
        seqs[i].out = xcalloc((size_t)(max_new ? max_new : 1), sizeof(int32_t));
    }
    m = km_load(dir, &ko, &err);
    if (!m)
        goto out;
    const ka_manifest *man = km_manifest(m);
    fprintf(stderr, "kiln: %s\n", km_describe(m));
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
            "kiln: load %.2f s, prefill %d tokens %.2f ms, time to first token %.2f ms, decode %d "
            "tokens %.2f ms (%.1f tok/s)\n",
            st.load_s, st.prefill_tokens, st.prefill_s * 1e3, st.ttft_s * 1e3, st.decode_tokens,
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
        fprintf(stderr, "kiln: error: %s\n", kerr_msg(&err));
    st_writer_free(dw);
    km_free(m);
    tok_free(tok);
    for (int i = 0; i < np; i++) {
        free(ids[i]);
        free(types[i]);
        free(seqs[i].out);
        free(seqs[i].embedding);
        free(seqs[i].prompt_logits);
    }
    free(tokpath);
    return rc;
}
