/* cmd_run — `kiln run DIR`: generate (or embed) from prompts on the command line, as a client of
 * the scheduler (sched.h), the same one `kiln serve` runs.
 *
 *   kiln run out/llama --ids 1,2,3 [--ids 4,5 ...] [--prompt TEXT ...] [--chat MESSAGE ...]
 *            [--max-new N]
 *            [--temperature T --top-k K --top-p P --seed S] [--ignore-eos] [--dump FILE]
 *
 * DIR is a compiled model (model.kiln: the GPU) or a Hugging Face checkpoint (config.json: the
 * CPU reference interpreter); cli_open_backend picks. Each prompt is one request; the scheduler
 * batches them, so more prompts than the model's batch simply queue. --chat renders one user
 * message with the model's chat template (chat_template.h) and encodes it without added special
 * tokens, as apply_chat_template(tokenize=True).
 *
 * The limits are checked before anything is loaded when DIR is compiled (its manifest holds
 * them, so a bad request fails fast and without a GPU), and after the CPU backend is opened when
 * DIR is a checkpoint (its limits are options). Prints the generated ids per sequence (and the
 * text, when the folder has a tokenizer), then the timings, taken from the times the tokens
 * arrived: load, prefill (prompt tokens, until every prompt has its first token), time to the
 * first token, decode (the tokens after each sequence's first, from the first token to the
 * last). --dump writes what `kilnc ref --dump` writes (logits F32 [prompt_len, vocab] of every
 * prompt position, tokens I64 [N]; embedding models: embedding F32 [hidden]; classifiers:
 * scores F32 [labels], printed as LABEL=score per sequence); with several
 * sequences, tensors of sequence i > 0 are suffixed ".i".
 */
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "safetensors.h"
#include "sched.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

#define PROG "kiln run"
#define MAX_SEQS 256

/* One prompt and what came back for it. */
typedef struct seq {
    const char *text;        /* the option's value */
    int kind;                /* 0 --ids, 1 --prompt, 2 --chat */
    const char *types_arg;   /* --token-types, or NULL */
    char *chat;              /* the rendered chat prompt */
    int32_t *ids, *types;    /* [n] */
    int n;
    int32_t *out;            /* [max_new] generated ids */
    int n_out, cap;
    float *embedding;        /* [hidden] (embedding models) */
    float *prompt_logits;    /* [n, vocab] (--dump) */
    double t_first, t_end;   /* when the first token / the last event came (0: not yet) */
    ks_finish finish;
    char *error;             /* KS_FAILED */
    int *finished;           /* the run's count of finished requests */
    int hidden;
} seq;

/* What the requests are checked against: the manifest's fields, or the CPU backend's. */
typedef struct limits {
    int vocab, max_seq_len, max_tokens, embed;
    const ka_gen *gen;
} limits;

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
            "usage: kiln run DIR (--ids 1,2,3 | --prompt TEXT)... [options]\n\n"
            "Generates text (or, for embedding models, returns the pooled vectors; for\n"
            "classifiers, each label's score, logits named by config.json's id2label) from each\n"
            "prompt. DIR is a model compiled by 'kilnc compile MODEL_DIR -o DIR', run on the GPU,\n"
            "or a Hugging Face checkpoint folder (config.json), run on the CPU by the fp32\n"
            "reference interpreter (slow). Several --ids/--prompt/--chat are batched by the\n"
            "scheduler; more than the model's batch wait their turn.\n\n"
            "  --ids LIST         a prompt as token ids (repeatable)\n"
            "  --token-types LIST token type ids of the preceding --ids (BERT-style models)\n"
            "  --prompt TEXT      a prompt as text, encoded with the model's tokenizer.json\n"
            "  --chat MESSAGE     a user message through the model's chat template (as 'kiln\n"
            "                     chat-template' renders it), then encoded (repeatable)\n"
            "  --max-new N        tokens to generate per sequence (default: the model's\n"
            "                     max_new_tokens, cut to fit, else 32); prompt + N must fit the\n"
            "                     model's max_seq_len (kiln inspect shows it)\n"
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
            "  --tp N             the GPUs the model is split over: must be what kilnc compile\n"
            "                     --tp made it for (default: the artifact's; kiln inspect shows it)\n"
            "  --nnodes N --node-rank R --rendezvous HOST:PORT\n"
            "                     split the --tp ranks over N hosts: run this on each, R = 0..N-1,\n"
            "                     HOST:PORT node 0's address (every node the same); nodes other\n"
            "                     than 0 take no prompt and run node 0's steps until it ends\n"
            "                     These apply to a compiled model only; the next four to a\n"
            "                     checkpoint folder only (a compiled model has them built in):\n"
            "  --max-batch N      sequences per step (default 8)\n"
            "  --max-tokens N     tokens per step (default 256, at least --max-batch)\n"
            "  --max-seq-len N    prompt + generated tokens of a sequence (default: the model's\n"
            "                     max_position_embeddings, at most 2048)\n"
            "  --kv-blocks N      KV-cache blocks of %d tokens the scheduler may use (default:\n"
            "                     --max-batch full sequences; fewer make it queue and preempt)\n"
            "  -h, --help         this help\n",
            KILN_BLOCK);
}

/* The prompts against the limits, before anything sized by them is allocated. Returns 0, or -1
 * with a message naming the option and both numbers. */
static int check_limits(const limits *lim, const seq *seqs, int np, int max_new, int compiled,
                        kerr *err)
{
    const char *fix_tokens = compiled ? "kilnc compile --max-tokens N" : "--max-tokens N";
    const char *fix_len = compiled ? "kilnc compile --max-seq-len N" : "--max-seq-len N";
    for (int i = 0; i < np; i++) {
        const seq *q = &seqs[i];
        const char *opt = q->kind == 2 ? "--chat" : q->kind ? "--prompt" : "--ids";
        int nt = q->n;
        if (nt < 1)
            return kerr_add(err, "prompt %d (%s) has no tokens", i + 1, opt);
        for (int t = 0; t < nt; t++)
            if (q->ids[t] >= lim->vocab)
                return kerr_add(err, "prompt %d (%s): token id %d at position %d is outside the "
                                     "vocabulary (expected 0 to %d)",
                                i + 1, opt, q->ids[t], t, lim->vocab - 1);
        if (lim->embed) {
            if (nt > lim->max_tokens)
                return kerr_add(err, "prompt %d (%s) has %d token%s; this embedding model takes at "
                                     "most %d (%s)",
                                i + 1, opt, nt, nt == 1 ? "" : "s", lim->max_tokens, fix_tokens);
            if (nt > lim->max_seq_len)
                return kerr_add(err, "prompt %d (%s) has %d token%s; the model's max_seq_len is "
                                     "%d (%s)",
                                i + 1, opt, nt, nt == 1 ? "" : "s", lim->max_seq_len, fix_len);
        } else if (nt >= lim->max_seq_len) {
            return kerr_add(err, "prompt %d (%s) has %d token%s; the model's max_seq_len is %d, "
                                 "with room for at least one new token (%s)",
                            i + 1, opt, nt, nt == 1 ? "" : "s", lim->max_seq_len, fix_len);
        } else if ((int64_t)nt + max_new > lim->max_seq_len) {
            return kerr_add(err, "--max-new %d: prompt %d (%s) has %d token%s, and %d + %d exceeds "
                                 "the model's max_seq_len %d: use --max-new %d or less, or %s "
                                 "a larger --max-seq-len",
                            max_new, i + 1, opt, nt, nt == 1 ? "" : "s", nt, max_new,
                            lim->max_seq_len, lim->max_seq_len - nt,
                            compiled ? "compile with" : "give");
        }
    }
    return 0;
}

/* The scheduler's events, on the thread that runs ks_step (this one). */
static void on_event(const ks_event *ev)
{
    seq *q = ev->user;
    double now = util_now();
    if (ev->has_token && ev->prompt_pos < 0) {
        assert(q->n_out < q->cap);
        q->out[q->n_out++] = ev->token;
        if (!q->t_first)
            q->t_first = now;
    }
    if (ev->finish == KS_RUNNING)
        return;
    q->finish = ev->finish;
    q->t_end = now;
    if (!q->t_first) /* an embedding, or no token at all */
        q->t_first = now;
    if (ev->embedding && q->embedding)
        memcpy(q->embedding, ev->embedding, sizeof(float) * (size_t)q->hidden);
    if (ev->finish == KS_FAILED)
        q->error = xstrdup(ev->error ? ev->error : "the backend failed");
    (*q->finished)++;
}

/* Encodes (or parses) prompt i. Returns 0, 1 (exit status: a runtime error in err) or 2 (a usage
 * error, printed). */
static int encode(seq *q, int i, const char *dir, tokenizer *tok, kerr *err)
{
    if (q->kind) {
        size_t nn;
        const char *text = q->text;
        if (q->kind == 2 && !(text = q->chat = ct_chat_prompt(dir, q->text, err)))
            return 1;
        if (tok_encode(tok, text, strlen(text), q->kind == 1, &q->ids, &nn, err))
            return 1;
        if (nn > INT32_MAX) {
            kerr_add(err, "--prompt %d encodes to %zu tokens", i + 1, nn);
            return 1;
        }
        q->n = (int)nn;
    } else if ((q->n = parse_ids("--ids", q->text, &q->ids, err)) < 0) {
        return util_usage_error(PROG, "%s", kerr_msg(err));
    }
    if (q->types_arg) {
        int nt = parse_ids("--token-types", q->types_arg, &q->types, err);
        if (nt < 0)
            return util_usage_error(PROG, "%s", kerr_msg(err));
        if (nt != q->n)
            return util_usage_error(PROG, "--token-types '%s' gives %d types; the prompt has %d "
                                          "tokens (one type per token)",
                                    q->types_arg, nt, q->n);
    }
    return 0;
}

static void print_results(const seq *seqs, int np, const kb_info *in, tokenizer *tok)
{
    kerr te;
    for (int i = 0; i < np; i++) {
        const seq *q = &seqs[i];
        if (in->classify) { /* one line per sequence: each label's score (logits) */
            printf("scores[%d]:", i);
            for (int j = 0; j < in->hidden; j++)
                printf(" %s=%.6f", in->labels[j], q->embedding[j]);
            printf("\n");
            continue;
        }
        if (in->embed) {
            printf("embedding[%d] [%d]:", i, in->hidden);
            for (int j = 0; j < in->hidden && j < 8; j++)
                printf(" %.6f", q->embedding[j]);
            printf("%s\n", in->hidden > 8 ? " ..." : "");
            continue;
        }
        if (np > 1)
            printf("[%d] ", i);
        for (int j = 0; j < q->n_out; j++)
            printf(j ? ",%d" : "%d", q->out[j]);
        printf("\n");
        if (tok) {
            char *text;
            size_t len;
            kerr_clear(&te);
            if (tok_decode(tok, q->out, (size_t)q->n_out, 1, &text, &len, &te) == 0) {
                /* a text prompt is printed with its continuation */
                printf("%s%s%s\n", np > 1 ? "    " : "",
                       q->kind == 2 ? q->chat : q->kind ? q->text : "", text);
                free(text);
            }
        }
    }
}

/* The timing line, from the event times (t0: the first step). */
static void print_timing(const seq *seqs, int np, double load_s, double t0, uint64_t preempted)
{
    int prefill_tokens = 0, decode_tokens = 0;
    double first = 0, all_first = 0, last = 0;
    for (int i = 0; i < np; i++) {
        const seq *q = &seqs[i];
        prefill_tokens += q->n;
        decode_tokens += q->n_out > 1 ? q->n_out - 1 : 0;
        if (!first || q->t_first < first)
            first = q->t_first;
        if (q->t_first > all_first)
            all_first = q->t_first;
        if (q->t_end > last)
            last = q->t_end;
    }
    double decode_s = decode_tokens ? last - first : 0;
    fprintf(stderr,
            "%s: load %.2f s, prefill %d tokens %.2f ms, time to first token %.2f ms, decode %d "
            "tokens %.2f ms (%.1f tok/s)",
            PROG, load_s, prefill_tokens, (all_first - t0) * 1e3, (first - t0) * 1e3,
            decode_tokens, decode_s * 1e3, decode_s > 0 ? decode_tokens / decode_s : 0.0);
    if (preempted) /* the KV cache was full: sequences were recomputed, which the times include */
        fprintf(stderr, ", %llu preemption%s", (unsigned long long)preempted,
                preempted == 1 ? "" : "s");
    fprintf(stderr, "\n");
}

static int write_dump(const char *path, const seq *seqs, int np, const kb_info *in, kerr *err)
{
    st_writer *dw = st_writer_new();
    st_writer_meta(dw, "producer", "kiln run");
    for (int i = 0; i < np; i++) {
        const seq *q = &seqs[i];
        char name[64], sfx[16] = "";
        if (i)
            snprintf(sfx, sizeof sfx, ".%d", i);
        if (in->embed) {
            int64_t sh[1] = {in->hidden};
            snprintf(name, sizeof name, "%s%s", in->classify ? "scores" : "embedding", sfx);
            st_writer_add(dw, name, ST_F32, 1, sh, q->embedding);
            continue;
        }
        int64_t sl[2] = {q->n, in->vocab}, stk[1] = {q->n_out};
        snprintf(name, sizeof name, "logits%s", sfx);
        st_writer_add(dw, name, ST_F32, 2, sl, q->prompt_logits);
        int64_t *t64 = xcalloc((size_t)(q->n_out ? q->n_out : 1), sizeof(int64_t));
        for (int j = 0; j < q->n_out; j++)
            t64[j] = q->out[j];
        snprintf(name, sizeof name, "tokens%s", sfx);
        st_writer_add_owned(dw, name, ST_I64, 1, stk, t64);
    }
    int rc = st_writer_write(dw, path, NULL, NULL, err);
    st_writer_free(dw);
    return rc;
}

static const char *const value_opts[] = {
    "--ids",   "--prompt", "--chat", "--token-types", "--max-new",    "--temperature",
    "--top-k", "--top-p",  "--seed", "--dump",        "--kv-memory",  "--max-batch",
    "--max-tokens", "--max-seq-len", "--kv-blocks", "--tp", "--nnodes", "--node-rank",
    "--rendezvous"};

int cmd_run(int argc, char **argv)
{
    const char *dir = NULL, *dump = NULL;
    seq seqs[MAX_SEQS];
    memset(seqs, 0, sizeof seqs);
    int np = 0, max_new = 32, ignore_eos = 0, finished = 0;
    /* which of the sampling flags were given: the others take the model's defaults */
    int set_max_new = 0, set_temperature = 0, set_top_k = 0, set_top_p = 0;
    kiln_sample sp = {0, 1, 0, 0, 0};
    cli_backend_opts bo = {0};
    kerr err;
    kerr_clear(&err);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (cli_value_arg(PROG, argc, argv, &i, value_opts, ARRAY_LEN(value_opts), &v))
            return 2;
        int64_t x;
        uint64_t u;
        double d;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--ids") || !strcmp(a, "--prompt") || !strcmp(a, "--chat")) {
            if (np == MAX_SEQS)
                return util_usage_error(PROG, "at most %d prompts", MAX_SEQS);
            seqs[np].kind = a[2] == 'p' ? 1 : a[2] == 'c' ? 2 : 0;
            seqs[np++].text = v;
        } else if (!strcmp(a, "--token-types")) {
            if (!np)
                return util_usage_error(PROG, "--token-types follows the --ids it belongs to");
            seqs[np - 1].types_arg = v;
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
            if (util_parse_f64(a, v, 0, 1, UTIL_ABOVE_MIN, &bo.kv_memory, &err))
                return util_usage_error(PROG, "%s", kerr_msg(&err));
        } else if (!strcmp(a, "--no-graphs")) {
            bo.no_graphs = 1;
        } else if (!strcmp(a, "--tp")) {
            if (util_parse_i64(a, v, 1, KA_MAX_TP, &x, &err))
                return util_usage_error(PROG, "%s", kerr_msg(&err));
            bo.tp = (int)x;
        } else if (!strcmp(a, "--nnodes") || !strcmp(a, "--node-rank")) {
            int nodes = !strcmp(a, "--nnodes");
            if (util_parse_i64(a, v, nodes, nodes ? KA_MAX_TP : KA_MAX_TP - 1, &x, &err))
                return util_usage_error(PROG, "%s", kerr_msg(&err));
            *(nodes ? &bo.nnodes : &bo.node_rank) = (int)x;
        } else if (!strcmp(a, "--rendezvous")) {
            bo.rendezvous = v;
        } else if (!strcmp(a, "--max-batch") || !strcmp(a, "--max-tokens") ||
                   !strcmp(a, "--max-seq-len") || !strcmp(a, "--kv-blocks")) {
            /* ranges against the model and each other: kbr_open */
            if (util_parse_i64(a, v, 1, INT32_MAX, &x, &err))
                return util_usage_error(PROG, "%s", kerr_msg(&err));
            int *dst = !strcmp(a, "--max-batch")    ? &bo.max_batch
                       : !strcmp(a, "--max-tokens") ? &bo.max_tokens
                       : !strcmp(a, "--max-seq-len") ? &bo.max_seq_len
                                                     : &bo.kv_blocks;
            *dst = (int)x;
        } else if (cli_dir_arg(PROG, a, &dir)) {
            return 2;
        }
    }
    if (!dir)
        return util_usage_error(PROG, "missing OUT_DIR (the folder 'kilnc compile' wrote, or a "
                                      "Hugging Face checkpoint folder)");
    if (bo.node_rank > 0) /* no prompt: node 0's steps */
        return cli_follow(PROG, dir, &bo);
    if (!np)
        return util_usage_error(PROG, "missing a prompt: give --ids LIST or --prompt TEXT (or "
                                      "--chat MESSAGE)");
    int rc = 1;
    tokenizer *tok = NULL;
    char *tokpath = util_path_join(dir, "tokenizer.json");
    char *mkpath = util_path_join(dir, "model.kiln");
    ka_file *af = NULL;
    kbackend *b = NULL;
    ksched *s = NULL;
    limits lim;
    double load_s = 0, t;
    /* the limits every size below is checked against: a compiled model's manifest (before the
     * GPU is touched), or the CPU backend's options */
    int compiled = util_is_file(mkpath);
    if (compiled) {
        if (!(af = ka_read(mkpath, &err)))
            goto out;
        lim = (limits){af->m.vocab, af->m.max_seq_len, af->m.max_tokens, af->m.output_pool,
                       &af->m.gen};
    } else {
        t = util_now();
        if (!(b = cli_open_backend(dir, &bo, &err)))
            goto out;
        load_s = util_now() - t;
        const kb_info *in = b->info;
        lim = (limits){in->vocab, in->max_seq_len, in->max_tokens, in->embed, in->gen};
    }
    const ka_gen *ge = lim.gen;
    if (!set_temperature && ge->has_temperature)
        sp.temperature = (float)ge->temperature;
    if (!set_top_p && ge->has_top_p)
        sp.top_p = (float)ge->top_p;
    if (!set_top_k && ge->has_top_k)
        sp.top_k = ge->top_k;
    int have_tok = util_is_file(tokpath);
    for (int i = 0; i < np; i++)
        if (seqs[i].kind && !have_tok) {
            rc = util_usage_error(PROG, "--prompt needs %s (the model folder has no tokenizer); "
                                        "pass --ids instead",
                                  tokpath);
            goto out;
        }
    if (have_tok && !(tok = tok_load(dir, &err)))
        goto out;
    for (int i = 0; i < np; i++)
        if ((rc = encode(&seqs[i], i, dir, tok, &err)) != 0)
            goto out;
    rc = 1;
    if (!set_max_new && ge->has_max_new && !lim.embed) {
        /* the model's max_new_tokens, cut to the room the longest prompt leaves (a prompt with
         * no room at all is check_limits' error) */
        max_new = ge->max_new;
        for (int i = 0; i < np; i++)
            if (seqs[i].n < lim.max_seq_len && max_new > lim.max_seq_len - seqs[i].n)
                max_new = lim.max_seq_len - seqs[i].n;
    }
    if (check_limits(&lim, seqs, np, max_new, compiled, &err)) {
        rc = util_usage_error(PROG, "%s", kerr_msg(&err));
        goto out;
    }
    if (compiled) {
        ka_file_free(af);
        af = NULL;
        t = util_now();
        if (!(b = cli_open_backend(dir, &bo, &err)))
            goto out;
        load_s = util_now() - t;
    }
    const kb_info *in = b->info;
    fprintf(stderr, "%s: %s\n", PROG, b->describe(b));
    if (lim.embed)
        max_new = 0;
    /* bounded now: max_new < max_seq_len (an embedding model generates nothing) */
    for (int i = 0; i < np; i++) {
        seq *q = &seqs[i];
        q->cap = max_new;
        q->out = xcalloc((size_t)(max_new ? max_new : 1), sizeof(int32_t));
        q->finished = &finished;
        q->hidden = in->hidden;
        if (in->embed)
            q->embedding = xcalloc((size_t)in->hidden, sizeof(float));
        else if (dump)
            q->prompt_logits = xcalloc((size_t)q->n * (size_t)in->vocab, sizeof(float));
    }
    ks_opts so = {.max_waiting = np};
    s = ks_new(b, &so);
    for (int i = 0; i < np; i++) {
        seq *q = &seqs[i];
        ks_params p = {.prompt = q->ids, .n_prompt = q->n, .types = q->types, .max_new = max_new,
                       .ignore_eos = ignore_eos, .sp = sp, .logprobs = -1, .prompt_logprobs = -1,
                       .prompt_logits = q->prompt_logits, .cb = on_event, .user = q};
        uint64_t id;
        int r = ks_submit(s, &p, &id, &err);
        if (r == KS_EINVAL) {
            rc = util_usage_error(PROG, "prompt %d: %s", i + 1, kerr_msg(&err));
            goto out;
        }
        if (r != KS_OK)
            goto out;
    }
    double t0 = util_now();
    while (finished < np) {
        int r = ks_step(s, &err);
        if (r < 0)
            goto out;
        /* a step that runs nothing while requests wait would loop forever */
        if (r == 0 && finished < np) {
            kerr_add(&err, "the scheduler has %d unfinished request%s and nothing it can run",
                     np - finished, np - finished == 1 ? "" : "s");
            goto out;
        }
    }
    for (int i = 0; i < np; i++)
        if (seqs[i].finish == KS_FAILED) {
            kerr_add(&err, "prompt %d: %s", i + 1, seqs[i].error);
            goto out;
        }
    print_results(seqs, np, in, tok);
    ks_metrics m;
    ks_metrics_get(s, &m);
    print_timing(seqs, np, load_s, t0, m.preemptions);
    if (dump && write_dump(dump, seqs, np, in, &err))
        goto out;
    rc = 0;
out:
    if (rc == 1)
        kerr_print(PROG, &err);
    if (s)
        ks_free(s);
    if (b)
        b->free(b);
    tok_free(tok);
    for (int i = 0; i < np; i++) {
        free(seqs[i].ids);
        free(seqs[i].types);
        free(seqs[i].chat);
        free(seqs[i].out);
        free(seqs[i].embedding);
        free(seqs[i].prompt_logits);
        free(seqs[i].error);
    }
    ka_file_free(af);
    free(tokpath);
    free(mkpath);
    return rc;
}
