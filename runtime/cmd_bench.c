/* cmd_bench — `kiln bench DIR`: how fast a model runs, and how close that is to what the GPU
 * allows.
 *
 *   kiln bench out/llama [--batch 1,8,32,64] [--prompt N] [--prefill 512,2048] [--new N]
 *                        [--context N] [--reps N] [--json FILE]
 *
 * In one process, in this order: the GPU's copy bandwidth and bf16 GEMM peak (roofline.h),
 * measured before the model is loaded; the load (its seconds); then every figure, each after
 * one warm-up run of the same shape (CUDA graphs captured, cuBLASLt algorithms picked) as the
 * best of --reps timed runs:
 *   - time to first token of a --prompt N prompt: its prefill, chunked by the model's tokens per
 *     step as the scheduler chunks it, until the first token is sampled; its warm-up run is the
 *     first request after the load and is reported too: what a user's first request sees, the
 *     engine having warmed itself up at the end of the load as it does in kiln run and kiln serve
 *     (engine.c warm_up; its share of the load is in the backend line, KILN_WARMUP=0 shows the
 *     first request without it). The GPU measurements before the load start the CUDA runtime
 *     and cuBLASLt in the same context, which only shortens the load, not that first request;
 *   - prefill tok/s at each --prefill length, the same way;
 *   - decode tok/s at each --batch B: B sequences with a --context-token prompt are prefilled
 *     (untimed), then --new steps of B one-token items are timed, each token the greedy
 *     sampler's choice fed back (end-of-sequence ignored). The default context, 32 tokens
 *     (KBENCH_CONTEXT), makes the weights nearly all a step reads; a long one measures the KV
 *     cache's reads too (the roofline counts them).
 * The bench drives the step interface (backend.h) directly, with no scheduler: one sequence per
 * slot, KV blocks handed out in order. Each figure is given absolute and as the ratio of its
 * roofline time to its measured time (1 would be the hardware limit), the rooflines computed
 * from the manifest (roofline.h) and the measured hardware; the output says how (bench_report.h).
 * Without cuBLASLt (a standalone executable's driver-only target) there is no GEMM peak: the
 * prefill and time-to-first-token figures are measured and given without a ratio.
 *
 * DIR may also be a Hugging Face checkpoint folder: the CPU backend (fp32 reference interpreter)
 * runs the same figures, sized to them (its batch is the largest --batch), with no roofline:
 * useful to test the bench itself without a GPU.
 *
 * Limits: a value given on the command line that the model cannot run (a batch above its
 * compiled batch, a prompt over its max_seq_len) is a usage error; a default that does not fit
 * is skipped with a line saying why; a figure whose sequences need more KV blocks than the
 * backend has is skipped too (known only after the load).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_ref.h"
#include "bench_report.h"
#include "cli.h"
#include "roofline.h"

#define PROG "kiln bench"
#define MAX_LIST 16      /* items of --batch and of --prefill */
#define MAX_REPS 100

typedef struct opts {
    int64_t batch[MAX_LIST], prefill[MAX_LIST];
    int nbatch, nprefill, prompt, new_tokens, context, reps, tp;
    int set_batch, set_prefill, set_prompt, set_new, set_context;
    const char *json;
} opts;

/* What the figures are checked against: the manifest's limits, or the CPU backend's. */
typedef struct limits {
    int max_seqs, max_tokens, max_seq_len, compiled;
} limits;

typedef struct bench {
    kbackend *b;
    const kb_info *in;
    int reps, context; /* context: each decode sequence's prompt tokens */
    int32_t *ids;      /* prompt ids; sequence s reads from ids + s */
    int32_t *blocks; /* 1, 2, 3, ...: sequence s holds a contiguous run of them */
    kb_item *items;  /* [max_seqs] */
    int32_t *tok;    /* [max_seqs] each sequence's last sampled token */
    int *pos;        /* [max_seqs] */
} bench;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kiln bench DIR [options]\n\n"
            "Measures a model's speed and compares it with what the GPU allows. First, before\n"
            "the model is loaded, the GPU's device-to-device copy bandwidth (a 1 GiB copy)\n"
            "and its bf16 GEMM peak (cuBLASLt, 8192^3, the best of 10 runs; also given, not\n"
            "used in a ratio: its rate run back to back for about 0.4 s, which a long prefill\n"
            "run repeatedly is nearer to); then the load time, the time to the first token,\n"
            "prefill tok/s and decode tok/s, each the best of --reps runs after a warm-up\n"
            "run, and each as a ratio to its roofline: for decode, the bytes a step must read\n"
            "(every weight but the embedding table, plus the KV cache) over the copy\n"
            "bandwidth; for prefill, its FLOPs over the GEMM peak. Where cuBLASLt cannot be\n"
            "loaded (a standalone executable's target may have only the driver), the GEMM\n"
            "peak is not measured and the prefill and time-to-first-token ratios are n/a\n"
            "(null in --json); the decode ratios are still given. DIR is a model compiled by\n"
            "'kilnc compile', or a Hugging Face checkpoint folder (config.json), which runs\n"
            "on the CPU reference interpreter with no roofline (slow: use small figures).\n\n"
            "  --batch LIST     decode batch sizes (default 1,8,32,64; defaults above the\n"
            "                   model's compiled batch are skipped)\n"
            "  --prompt N       prompt tokens for the time to first token (default 128)\n"
            "  --prefill LIST   prompt lengths for prefill tok/s (default 512,2048)\n"
            "  --new N          decode steps per batch (default 128)\n"
            "  --context N      prompt tokens of each decode sequence, before its --new steps\n"
            "                   (default %d: the weights are nearly all a step reads; a long\n"
            "                   context measures the KV cache's reads too)\n"
            "  --reps N         timed runs of each figure, the best kept (default 3, at most %d)\n"
            "  --json FILE      also write the figures as JSON\n"
            "  --tp N           the GPUs a tensor-parallel artifact is split over: must be what\n"
            "                   kilnc compile --tp made it for (default: the artifact's). Its\n"
            "                   rooflines are one rank's bytes and FLOPs over one GPU's rates\n"
            "  -h, --help       this help\n",
            KBENCH_CONTEXT, MAX_REPS);
}

static int blocks_for(int64_t tokens)
{
    return (int)((tokens + KILN_BLOCK - 1) / KILN_BLOCK);
}

static kbench_fig *add_fig(kbench_fig **figs, int *nf, int kind, int n)
{
    *figs = xrealloc(*figs, sizeof(kbench_fig) * (size_t)(*nf + 1));
    kbench_fig *g = &(*figs)[(*nf)++];
    memset(g, 0, sizeof *g);
    g->kind = kind;
    g->n = n;
    return g;
}

/* The figures to measure, checked against the limits: a value the user gave that does not fit
 * is a usage error (returns 2, printed), a default that does not fit a skipped figure. */
static int plan(const opts *o, const limits *lim, kbench_fig **figs, int *nf)
{
    const char *len_fix = lim->compiled ? "kilnc compile --max-seq-len sets it"
                                        : "on the CPU it is the checkpoint's "
                                          "max_position_embeddings, at most 2048";
    kbench_fig *g;
    if (o->prompt > lim->max_seq_len && o->set_prompt)
        return util_usage_error(PROG, "--prompt %d: the model's max_seq_len is %d (use %d or "
                                      "less; %s)",
                                o->prompt, lim->max_seq_len, lim->max_seq_len, len_fix);
    g = add_fig(figs, nf, KBENCH_TTFT, o->prompt);
    if (o->prompt > lim->max_seq_len)
        g->skip = xasprintf("longer than the model's max_seq_len %d (%s)", lim->max_seq_len,
                            len_fix);
    for (int i = 0; i < o->nprefill; i++) {
        int t = (int)o->prefill[i];
        if (t > lim->max_seq_len && o->set_prefill)
            return util_usage_error(PROG, "--prefill: %d tokens exceed the model's max_seq_len %d "
                                          "(use lengths up to %d; %s)",
                                    t, lim->max_seq_len, lim->max_seq_len, len_fix);
        g = add_fig(figs, nf, KBENCH_PREFILL, t);
        if (t > lim->max_seq_len)
            g->skip = xasprintf("longer than the model's max_seq_len %d (%s)", lim->max_seq_len,
                                len_fix);
    }
    if (o->context >= lim->max_seq_len && o->set_context)
        return util_usage_error(PROG, "--context %d: the model's max_seq_len is %d, and each "
                                      "sequence needs room for --new tokens after it (use "
                                      "less than %d; %s)",
                                o->context, lim->max_seq_len, lim->max_seq_len, len_fix);
    int new_tokens = o->new_tokens, room = lim->max_seq_len - o->context;
    if (new_tokens > room && (o->set_new || o->set_context))
        return util_usage_error(PROG, "--new %d: --context %d + %d tokens exceed the model's "
                                      "max_seq_len %d (use --new %d or less, or a shorter "
                                      "--context)",
                                new_tokens, o->context, new_tokens, lim->max_seq_len,
                                room > 0 ? room : 0);
    int cap = lim->max_seqs < lim->max_tokens ? lim->max_seqs : lim->max_tokens;
    for (int i = 0; i < o->nbatch; i++) {
        int bsz = (int)o->batch[i];
        if (bsz > cap && o->set_batch)
            return util_usage_error(PROG, "--batch: %d sequences exceed the %d the model runs per "
                                          "step (%s)",
                                    bsz, cap,
                                    lim->compiled ? "kilnc compile --max-batch and --max-tokens "
                                                    "set it; kiln inspect shows it"
                                                  : "the CPU backend's most");
        g = add_fig(figs, nf, KBENCH_DECODE, bsz);
        if (bsz > cap)
            g->skip = xasprintf("above the %d sequences the model runs per step%s", cap,
                                lim->compiled ? " (kilnc compile --max-batch)" : "");
        else if (new_tokens > room)
            g->skip = xasprintf("%d prompt tokens + --new %d exceed the model's max_seq_len %d",
                                o->context, new_tokens, lim->max_seq_len);
    }
    return 0;
}

/* ---- runs ---- */

static kb_item item(int slot, int pos, int n, const int32_t *ids, const int32_t *blocks,
                    int sample, int index)
{
    kb_item it;
    memset(&it, 0, sizeof it);
    it.slot = slot;
    it.pos = pos;
    it.n = n;
    it.ids = ids;
    it.blocks = blocks;
    it.nblocks = blocks_for((int64_t)pos + n);
    it.sample = sample;
    it.sp = (kiln_sample){0, 1, 0, index, 0}; /* greedy */
    return it;
}

/* A prompt of `tokens` tokens in slot 0, chunked by the tokens per step, until the token after
 * it is sampled. Returns the seconds. */
static int run_prefill(bench *B, int tokens, double *sec, kerr *err)
{
    double t0 = util_now();
    for (int pos = 0; pos < tokens;) {
        int n = tokens - pos < B->in->max_tokens ? tokens - pos : B->in->max_tokens;
        B->items[0] = item(0, pos, n, B->ids + pos, B->blocks, pos + n == tokens, 0);
        B->items[0].prefill = 1;
        if (B->b->step(B->b, B->items, 1, err))
            return -1;
        pos += n;
    }
    *sec = util_now() - t0;
    return 0;
}

/* nseq sequences of B->context tokens, prefilled together (untimed), then `steps` decode
 * steps of nseq items (timed). Sequence s holds blocks [s*per, (s+1)*per). */
static int run_decode(bench *B, int nseq, int steps, double *sec, kerr *err)
{
    const kb_info *in = B->in;
    const int ctx = B->context;
    int per = blocks_for(ctx + steps), left = nseq;
    for (int s = 0; s < nseq; s++)
        B->pos[s] = 0;
    while (left > 0) { /* each step takes one chunk of every sequence it has room for */
        int n_items = 0, n_tok = 0;
        for (int s = 0; s < nseq && n_items < in->max_seqs && n_tok < in->max_tokens; s++) {
            if (B->pos[s] == ctx)
                continue;
            int n = ctx - B->pos[s];
            if (n > in->max_tokens - n_tok)
                n = in->max_tokens - n_tok;
            B->items[n_items++] = item(s, B->pos[s], n, B->ids + s + B->pos[s],
                                       B->blocks + (size_t)s * per,
                                       B->pos[s] + n == ctx, 0);
            B->items[n_items - 1].prefill = 1;
            n_tok += n;
        }
        if (B->b->step(B->b, B->items, n_items, err))
            return -1;
        for (int i = 0; i < n_items; i++) {
            kb_item *it = &B->items[i];
            B->pos[it->slot] += it->n;
            if (it->sample) {
                B->tok[it->slot] = it->token;
                left--;
            }
        }
    }
    double t0 = util_now();
    for (int j = 0; j < steps; j++) {
        for (int s = 0; s < nseq; s++)
            B->items[s] = item(s, ctx + j, 1, &B->tok[s],
                               B->blocks + (size_t)s * per, 1, j + 1);
        if (B->b->step(B->b, B->items, nseq, err))
            return -1;
        for (int s = 0; s < nseq; s++)
            B->tok[s] = B->items[s].token;
    }
    *sec = util_now() - t0;
    return 0;
}

/* One figure: a warm-up run, then the best of reps. A figure needing more KV blocks than the
 * backend has is skipped. */
static int measure(bench *B, kbench_fig *g, int new_tokens, kerr *err)
{
    int64_t need = g->kind == KBENCH_DECODE
                       ? (int64_t)g->n * blocks_for(B->context + new_tokens)
                       : blocks_for(g->n);
    if (need > B->in->kv_blocks) {
        g->skip = xasprintf("needs %lld KV blocks of %d tokens; the backend has %d",
                            (long long)need, KILN_BLOCK, B->in->kv_blocks);
        return 0;
    }
    if (g->kind == KBENCH_DECODE)
        fprintf(stderr, "%s: decode, batch %d, %d steps\n", PROG, g->n, new_tokens);
    else
        fprintf(stderr, "%s: prefill of %d tokens\n", PROG, g->n);
    for (int r = 0; r <= B->reps; r++) {
        double s;
        if ((g->kind == KBENCH_DECODE ? run_decode(B, g->n, new_tokens, &s, err)
                                   : run_prefill(B, g->n, &s, err)))
            return -1;
        if (r == 0)
            g->first = s;
        else if (g->seconds == 0 || s < g->seconds)
            g->seconds = s;
    }
    if (g->seconds <= 0) /* a clock that did not move: keep the figures finite */
        g->seconds = 1e-9;
    if (g->first <= 0)
        g->first = 1e-9;
    g->value = g->kind == KBENCH_TTFT      ? g->seconds * 1e3
               : g->kind == KBENCH_DECODE ? (double)g->n * new_tokens / g->seconds
                                        : g->n / g->seconds;
    return 0;
}

/* ---- the command ---- */

static int parse_list(const char *what, const char *v, int64_t max, int64_t *out, int *n)
{
    kerr err;
    kerr_clear(&err);
    int64_t *vals;
    int k = util_parse_ids(what, v, max, &vals, &err);
    if (k < 0)
        return util_usage_error(PROG, "%s", kerr_msg(&err));
    if (k > MAX_LIST) {
        free(vals);
        return util_usage_error(PROG, "%s: %d values; at most %d", what, k, MAX_LIST);
    }
    for (int i = 0; i < k; i++)
        if (vals[i] < 1) {
            free(vals);
            return util_usage_error(PROG, "%s: item %d is 0 (expected 1 to %lld)", what, i + 1,
                                    (long long)max);
        }
    memcpy(out, vals, sizeof(int64_t) * (size_t)k);
    *n = k;
    free(vals);
    return 0;
}

static int parse_opts(int argc, char **argv, opts *o, const char **dir)
{
    static const char *const value_opts[] = {"--batch", "--prompt", "--prefill", "--new",
                                             "--context", "--reps", "--json", "--tp"};
    kerr err;
    kerr_clear(&err);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (cli_value_arg(PROG, argc, argv, &i, value_opts, ARRAY_LEN(value_opts), &v))
            return 2;
        int64_t x;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return -1;
        } else if (!strcmp(a, "--batch")) {
            if (parse_list(a, v, KA_MAX_SEQS, o->batch, &o->nbatch))
                return 2;
            o->set_batch = 1;
        } else if (!strcmp(a, "--prefill")) {
            if (parse_list(a, v, KA_MAX_SEQ_LEN, o->prefill, &o->nprefill))
                return 2;
            o->set_prefill = 1;
        } else if (!strcmp(a, "--prompt") || !strcmp(a, "--new") || !strcmp(a, "--context") ||
                   !strcmp(a, "--reps")) {
            int64_t max = !strcmp(a, "--reps") ? MAX_REPS : KA_MAX_SEQ_LEN;
            if (util_parse_i64(a, v, 1, max, &x, &err))
                return util_usage_error(PROG, "%s", kerr_msg(&err));
            if (!strcmp(a, "--prompt"))
                o->prompt = (int)x, o->set_prompt = 1;
            else if (!strcmp(a, "--new"))
                o->new_tokens = (int)x, o->set_new = 1;
            else if (!strcmp(a, "--context"))
                o->context = (int)x, o->set_context = 1;
            else
                o->reps = (int)x;
        } else if (!strcmp(a, "--json")) {
            o->json = v;
        } else if (!strcmp(a, "--tp")) {
            if (util_parse_i64(a, v, 1, KA_MAX_TP, &x, &err))
                return util_usage_error(PROG, "%s", kerr_msg(&err));
            o->tp = (int)x;
        } else if (cli_dir_arg(PROG, a, dir)) {
            return 2;
        }
    }
    if (!*dir)
        return util_usage_error(PROG, "missing DIR (the folder 'kilnc compile' wrote, or a "
                                      "Hugging Face checkpoint folder)");
    return 0;
}

/* Runs every figure on the loaded backend. */
static int run_figures(kbackend *b, const opts *o, kbench_fig *figs, int nf, kerr *err)
{
    const kb_info *in = b->info;
    bench B = {b, in, o->reps, o->context, NULL, NULL, NULL, NULL, NULL};
    int64_t ids = 0, blocks = 0; /* what the figures that fit need */
    for (int i = 0; i < nf; i++) {
        const kbench_fig *g = &figs[i];
        if (g->skip)
            continue;
        int64_t t = g->kind == KBENCH_DECODE ? (int64_t)g->n + o->context : g->n;
        int64_t k = g->kind == KBENCH_DECODE
                        ? (int64_t)g->n * blocks_for(o->context + o->new_tokens)
                        : blocks_for(g->n);
        ids = t > ids ? t : ids;
        blocks = k > blocks && k <= in->kv_blocks ? k : blocks;
    }
    B.ids = xmalloc(sizeof(int32_t) * (size_t)(ids ? ids : 1));
    uint64_t s = 0x2545f4914f6cdd1dull; /* prompts: fixed pseudo-random ids */
    for (int64_t i = 0; i < ids; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        B.ids[i] = (int32_t)((s >> 33) % (uint64_t)in->vocab);
    }
    B.blocks = xmalloc(sizeof(int32_t) * (size_t)(blocks ? blocks : 1));
    for (int64_t i = 0; i < blocks; i++)
        B.blocks[i] = (int32_t)(i + 1);
    B.items = xcalloc((size_t)in->max_seqs, sizeof(kb_item));
    B.tok = xcalloc((size_t)in->max_seqs, sizeof(int32_t));
    B.pos = xcalloc((size_t)in->max_seqs, sizeof(int));
    int rc = 0;
    for (int i = 0; i < nf && rc == 0; i++)
        if (!figs[i].skip)
            rc = measure(&B, &figs[i], o->new_tokens, err);
    free(B.ids);
    free(B.blocks);
    free(B.items);
    free(B.tok);
    free(B.pos);
    return rc;
}

int cmd_bench(int argc, char **argv)
{
    opts o = {.batch = {1, 8, 32, 64}, .nbatch = 4, .prefill = {512, 2048}, .nprefill = 2,
              .prompt = 128, .new_tokens = 128, .context = KBENCH_CONTEXT, .reps = 3};
    const char *dir = NULL;
    int r = parse_opts(argc, argv, &o, &dir);
    if (r)
        return r < 0 ? 0 : r;
    kerr err;
    kerr_clear(&err);
    int rc = 1, nf = 0;
    kbench_fig *figs = NULL;
    char *mkpath = util_path_join(dir, "model.kiln");
    int compiled = util_is_file(mkpath);
    ka_file *af = NULL;
    kbackend *b = NULL;
    kroof_gpu *gpu = NULL;
    kroof_hw hw;
    kroof_model rm;
    memset(&hw, 0, sizeof hw);
    memset(&rm, 0, sizeof rm);
    cli_backend_opts bo = {.tp = o.tp};
    if (compiled) {
        /* everything checkable is checked before the GPU is touched */
        if (!(af = ka_read(mkpath, &err)))
            goto out;
        if (af->m.output_pool) {
            kerr_add(&err, "%s is an embedding model (task %s): kiln bench measures generation "
                           "(prefill and decode)",
                     dir, af->m.task);
            goto out;
        }
        if (o.tp && o.tp != af->m.tp) {
            kerr_add(&err, "--tp %d: %s was compiled for --tp %d (kiln inspect shows it); bench "
                           "it with --tp %d, or recompile: kilnc compile MODEL_DIR -o OUT --tp %d",
                     o.tp, dir, af->m.tp, af->m.tp, o.tp);
            goto out;
        }
        limits lim = {af->m.max_seqs, af->m.max_tokens, af->m.max_seq_len, 1};
        if ((r = plan(&o, &lim, &figs, &nf)) != 0) {
            rc = r;
            goto out;
        }
        kroof_model_of(&af->m, &rm);
        ka_file_free(af);
        af = NULL;
        fprintf(stderr, "%s: measuring the GPU: copy bandwidth and bf16 GEMM peak\n", PROG);
        if (!(gpu = kroof_measure(&hw, &err)))
            goto out;
        if (hw.gemm_missing[0])
            fprintf(stderr, "%s: no GEMM peak, so the prefill and time-to-first-token figures have "
                            "no roofline ratio (n/a): %s\n",
                    PROG, hw.gemm_missing);
    } else {
        /* the CPU backend sized to the figures: its batch is the largest --batch */
        for (int i = 0; i < o.nbatch; i++)
            if (o.batch[i] > bo.max_batch)
                bo.max_batch = o.batch[i] < KBR_MAX_BATCH ? (int)o.batch[i] : KBR_MAX_BATCH;
    }
    fprintf(stderr, "%s: loading %s\n", PROG, dir);
    double t0 = util_now();
    if (!(b = cli_open_backend(dir, &bo, &err)))
        goto out;
    double load_s = util_now() - t0;
    const kb_info *in = b->info;
    if (!compiled) {
        if (in->embed) {
            kerr_add(&err, "%s is an embedding model: kiln bench measures generation (prefill "
                           "and decode)",
                     dir);
            goto out;
        }
        limits lim = {in->max_seqs, in->max_tokens, in->max_seq_len, 0};
        if ((r = plan(&o, &lim, &figs, &nf)) != 0) {
            rc = r;
            goto out;
        }
    }
    const char *describe = b->describe(b);
    fprintf(stderr, "%s: %s\n", PROG, describe);
    if (run_figures(b, &o, figs, nf, &err))
        goto out;
    if (compiled)
        kbench_rooflines(figs, nf, &rm, &hw, in->max_tokens, o.new_tokens, o.context);
    kbench_run run = {dir,    in->model, describe, compiled, o.reps, o.new_tokens,
                      o.context, load_s, &hw,     &rm};
    kbench_print(stdout, &run, figs, nf);
    if (o.json && kbench_write_json(o.json, &run, figs, nf, &err))
        goto out;
    rc = 0;
out:
    if (rc == 1)
        kerr_print(PROG, &err);
    if (b)
        b->free(b);
    kroof_gpu_free(gpu);
    ka_file_free(af);
    for (int i = 0; i < nf; i++)
        free(figs[i].skip);
    free(figs);
    free(mkpath);
    return rc;
}
