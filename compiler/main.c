/* kilnc — the compiler's command line.
 *
 *   kilnc archs                  list the architectures the archspecs serve
 *   kilnc check MODEL_DIR        resolve, build, bind; a one-screen summary or every error
 *   kilnc graph MODEL_DIR        print the graph IR (after any pass: --dump-after=PASS)
 *   kilnc ref MODEL_DIR --ids .. run the fp32 CPU reference: prefill, greedy decode, dump
 *
 * The pipeline is one list (passes[] below), run in order with the verifier between passes.
 * User errors (bad input) print "kilnc: error: ..." and exit 1; internal bugs abort.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "config.h"
#include "graph.h"
#include "kc.h"
#include "knvrtc.h"
#include "lower.h"
#include "pack.h"
#include "passes/passes.h"
#include "pipeline.h"
#include "ref.h"
#include "registry.h"
#include "safetensors.h"
#include "spec.h"
#include "tokenizer.h"
#include "util.h"

#define KILN_VERSION "0.1.0"

/* ---------------------------------------------------------------- options */

typedef struct opts {
    const char *model;
    const char *spec;
    char *spec_path[16];
    int n_spec_path;
    int strict;
    const char *dump_after;
    int help;
    /* ref */
    const char *ids, *types, *dump, *dump_nodes, *prompt;
    int max_new;
    /* compile */
    const char *out, *sm, *dtype;
    int max_seq_len, max_batch, max_tokens;
} opts;

/* Parses the options every model command shares. Returns -1 after printing an error. */
static int parse_opts(int argc, char **argv, opts *o, int allow_dump)
{
    memset(o, 0, sizeof *o);
    o->max_new = 16;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = NULL;
#define TAKE(flag)                                                                              \
    (strcmp(a, flag) == 0 ? (i + 1 < argc ? (val = argv[++i], 1)                               \
                                          : (fprintf(stderr, "kilnc: %s needs a value\n", flag), \
                                             exit(2), 0))                                       \
     : strncmp(a, flag "=", sizeof(flag)) == 0 ? (val = a + sizeof(flag), 1)                    \
                                               : 0)
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0)
            o->help = 1;
        else if (TAKE("--spec"))
            o->spec = val;
        else if (TAKE("--spec-path")) {
            if (o->n_spec_path == 16) {
                fprintf(stderr, "kilnc: at most 16 --spec-path folders\n");
                return -1;
            }
            o->spec_path[o->n_spec_path++] = (char *)val;
        } else if (strcmp(a, "--strict") == 0)
            o->strict = 1;
        else if (allow_dump == 1 && TAKE("--dump-after"))
            o->dump_after = val;
        else if (allow_dump == 3 && (TAKE("-o") || TAKE("--out")))
            o->out = val;
        else if (allow_dump == 3 && TAKE("--sm"))
            o->sm = val;
        else if (allow_dump == 3 && TAKE("--dtype"))
            o->dtype = val;
        else if (allow_dump == 3 &&
                 (TAKE("--max-seq-len") || TAKE("--max-batch") || TAKE("--max-tokens"))) {
            char *end;
            long v = strtol(val, &end, 10);
            if (*end || v < 1 || v > (1L << 24)) {
                fprintf(stderr, "kilnc: %s expects a positive number, got '%s'\n", a, val);
                return -1;
            }
            if (strstr(a, "seq-len"))
                o->max_seq_len = (int)v;
            else if (strstr(a, "batch"))
                o->max_batch = (int)v;
            else
                o->max_tokens = (int)v;
        } else if (allow_dump == 2 && TAKE("--ids"))
            o->ids = val;
        else if (allow_dump == 2 && TAKE("--prompt"))
            o->prompt = val;
        else if (allow_dump == 2 && TAKE("--token-types"))
            o->types = val;
        else if (allow_dump == 2 && TAKE("--dump"))
            o->dump = val;
        else if (allow_dump == 2 && TAKE("--dump-nodes"))
            o->dump_nodes = val;
        else if (allow_dump == 2 && TAKE("--max-new")) {
            char *end;
            long v = strtol(val, &end, 10);
            if (*end || v < 0 || v > 1000000) {
                fprintf(stderr, "kilnc: --max-new expects a number of tokens >= 0, got '%s'\n",
                        val);
                return -1;
            }
            o->max_new = (int)v;
        }
        else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "kilnc: unknown option '%s' (see --help)\n", a);
            return -1;
        } else if (!o->model)
            o->model = a;
        else {
            fprintf(stderr, "kilnc: unexpected argument '%s' (one MODEL_DIR expected)\n", a);
            return -1;
        }
#undef TAKE
    }
    return 0;
}

static kc_opts kopts(const opts *o, int need_weights)
{
    kc_opts k = {.spec = o->spec, .spec_path = o->spec_path, .n_spec_path = o->n_spec_path,
                 .strict = o->strict, .need_weights = need_weights};
    return k;
}

static const char common_help[] =
    "  --spec FILE        use this archspec instead of resolving config.json's architectures\n"
    "  --spec-path DIR    also search DIR for archspecs (repeatable; before KILN_SPEC_PATH and\n"
    "                     the built-in archspecs/)\n"
    "  --strict           checkpoint tensors the spec does not use are errors, not warnings\n"
    "  -h, --help         this help\n";

/* ---------------------------------------------------------------- setup */

static void print_err(kerr *e)
{
    const char *m = kerr_msg(e);
    /* one "kilnc: error:" per message; continuation lines as they are */
    const char *p = m;
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        if (p[0] == ' ')
            fprintf(stderr, "%.*s\n", (int)n, p);
        else
            fprintf(stderr, "kilnc: error: %.*s\n", (int)n, p);
        p = nl ? nl + 1 : p + n;
    }
}

static void print_warn(kc *c, int max)
{
    if (!c->warn.n)
        return;
    const char *m = kerr_msg(&c->warn);
    int shown = 0;
    for (const char *p = m; *p && shown < max; shown++) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        fprintf(stderr, "kilnc: %.*s\n", (int)n, p);
        p = nl ? nl + 1 : p + n;
    }
    if (c->warn.n > max)
        fprintf(stderr, "kilnc: ... and %d more warnings\n", c->warn.n - max);
}

/* ---------------------------------------------------------------- commands */

static int cmd_archs(int argc, char **argv)
{
    opts o;
    if (parse_opts(argc, argv, &o, 0))
        return 2;
    if (o.help) {
        printf("usage: kilnc archs [--spec-path DIR]\n\n"
               "Lists every architecture name the archspecs serve, with the spec file and task.\n"
               "Specs in --spec-path folders and KILN_SPEC_PATH shadow the built-in ones.\n");
        return 0;
    }
    kerr err;
    kerr_clear(&err);
    registry *r = registry_load(o.spec_path, o.n_spec_path, &err);
    if (!r) {
        print_err(&err);
        return 1;
    }
    printf("%-32s %-10s %-9s %s\n", "ARCHITECTURE", "SPEC", "TASK", "FILE");
    for (int i = 0; i < r->n; i++)
        for (int k = 0; k < r->specs[i].n_archs; k++) {
            const spec_info *s = &r->specs[i];
            const spec_info *winner = registry_find(r, s->archs[k]);
            printf("%-32s %-10s %-9s %s%s\n", s->archs[k], s->name, spec_task_name(s->task),
                   s->path, winner != s ? "  (shadowed)" : "");
        }
    for (int i = 0; i < r->nbroken; i++)
        fprintf(stderr, "kilnc: warning: spec failed to load: %s\n", r->broken[i]);
    registry_free(r);
    return 0;
}

static void count_dtypes(const kgraph *g, char *buf, size_t cap)
{
    int cnt[ST_NDTYPES] = {0};
    for (int i = 0; i < g->n; i++)
        if (g->nodes[i].op == KG_WEIGHT && g->nodes[i].bound)
            cnt[g->nodes[i].dtype]++;
    size_t n = 0;
    buf[0] = 0;
    for (int d = 0; d < ST_NDTYPES; d++)
        if (cnt[d])
            n += (size_t)snprintf(buf + n, cap - n, "%s%s x%d", n ? ", " : "",
                                  st_dtype_name((st_dtype)d), cnt[d]);
}

static int cmd_check(int argc, char **argv)
{
    opts o;
    if (parse_opts(argc, argv, &o, 0))
        return 2;
    if (o.help || !o.model) {
        fprintf(o.help ? stdout : stderr,
                "usage: kilnc check MODEL_DIR [options]\n\n"
                "Resolves the archspec for MODEL_DIR/config.json, builds the graph and binds every\n"
                "weight to the checkpoint; prints a summary, or every problem found.\n\n%s",
                common_help);
        return o.help ? 0 : 2;
    }
    kc c;
    kerr err;
    kerr_clear(&err);
    kc_opts ko = kopts(&o, 1);
    /* the GPU lowering is reported, not required: the CPU reference runs what it cannot */
    int rc = kc_open(&c, o.model, &ko, &err) || kc_run(&c, "plan_memory", NULL, NULL, &err);
    kerr gpu;
    kerr_clear(&gpu);
    int gpu_ok = rc == 0 && pass_schedule(&c, &gpu) == 0;
    print_warn(&c, 20);
    if (rc) {
        print_err(&err);
        fprintf(stderr, "kilnc: check failed: %d problem%s\n", err.n, err.n == 1 ? "" : "s");
        kc_free(&c);
        return 1;
    }
    const kgraph *g = c.g;
    const char *arch = "?";
    config_architecture(c.cfg, &arch, &err);
    char pc[32], dt[256], sh[96];
    int first_attn = -1;
    for (int i = 0; i < g->n && first_attn < 0; i++)
        if (g->nodes[i].op == KG_ATTENTION)
            first_attn = i;
    const kg_node *out = &g->nodes[g->output];
    printf("model         %s\n", c.model_dir);
    printf("architecture  %s\n", arch);
    printf("archspec      %s (%s, task %s)\n", c.spec->path, c.spec->name,
           spec_task_name(c.spec->task));
    if (first_attn >= 0) {
        const kg_attn *a = &g->nodes[first_attn].attn;
        printf("layers        %d, %d heads / %d kv heads, head_dim %d\n", g->n_layers,
               a->n_heads, a->n_kv_heads, a->head_dim);
    }
    printf("output        %s %s\n", out->name, graph_shape_str(out, sh, sizeof sh));
    count_dtypes(g, dt, sizeof dt);
    printf("parameters    %s in %d tensors (%s)\n",
           util_human_count((double)c.n_params, pc, sizeof pc), c.n_bound, dt);
    printf("checkpoint    %d tensors in %d file%s: %d used, %d unused%s\n", c.weights->n,
           c.weights->nfiles, c.weights->nfiles == 1 ? "" : "s", c.n_bound, c.n_unused,
           c.n_ignored ? " (plus ignored by the spec)" : "");
    printf("graph         %d nodes\n", g->n);
    if (gpu_ok)
        printf("gpu           %d kernels, %d prefill / %d decode steps (kilnc compile)\n",
               c.low->ninst, c.low->m.nprefill, c.low->m.ndecode);
    else
        printf("gpu           not supported yet, the CPU reference only: %s\n", kerr_msg(&gpu));
    printf("ok\n");
    kc_free(&c);
    return 0;
}

static int cmd_graph(int argc, char **argv)
{
    opts o;
    if (parse_opts(argc, argv, &o, 1))
        return 2;
    if (o.help || !o.model) {
        fprintf(o.help ? stdout : stderr,
                "usage: kilnc graph MODEL_DIR [--dump-after=PASS] [options]\n\n"
                "Prints the graph IR, one node per line:\n"
                "  %%ID NAME = OP(INPUTS; ATTRIBUTES) SHAPE DTYPE  @SPEC:LINE\n"
                "By default after the last pass; --dump-after=PASS prints it after PASS instead.\n"
                "Passes, in order: build");
        for (int i = 0; i < kc_npasses(); i++)
            fprintf(o.help ? stdout : stderr, ", %s", kc_pass_name(i));
        fprintf(o.help ? stdout : stderr, "\n\n  --dump-after=PASS  print after PASS\n%s",
                common_help);
        return o.help ? 0 : 2;
    }
    const char *upto = NULL;
    if (o.dump_after) {
        if (kc_pass_index(o.dump_after) == -2) {
            fprintf(stderr, "kilnc: error: --dump-after: unknown pass '%s' (passes: build",
                    o.dump_after);
            for (int i = 0; i < kc_npasses(); i++)
                fprintf(stderr, ", %s", kc_pass_name(i));
            fprintf(stderr, ")\n");
            return 2;
        }
        upto = o.dump_after;
    }
    kc c;
    kerr err;
    kerr_clear(&err);
    kc_opts ko = kopts(&o, 0);
    int rc = kc_open(&c, o.model, &ko, &err);
    if (rc == 0 && !c.weights && !(upto && strcmp(upto, "build") == 0)) {
        fprintf(stderr, "kilnc: note: no safetensors in %s; printing the graph as built\n",
                o.model);
        upto = o.dump_after = "build";
    }
    if (rc == 0) {
        /* by default the graph after the last pass that rewrites it; the schedule is shown
         * only when asked for (--dump-after=schedule) */
        const char *dump = o.dump_after ? o.dump_after : "plan_memory";
        rc = kc_run(&c, upto ? upto : dump, dump, stdout, &err);
    }
    print_warn(&c, 20);
    if (rc) {
        print_err(&err);
        kc_free(&c);
        return 1;
    }
    kc_free(&c);
    return 0;
}

/* "1,2,3" -> ids. Returns the count, or -1 after printing what is wrong. */
static int parse_ids(const char *flag, const char *s, int64_t **out)
{
    int n = util_parse_ids(s, out);
    if (n < 0)
        fprintf(stderr, "kilnc: %s expects comma-separated non-negative integers, got '%s'\n",
                flag, s);
    else if (n == 0) {
        fprintf(stderr, "kilnc: %s is empty\n", flag);
        free(*out);
        return -1;
    }
    return n;
}

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

static int cmd_ref(int argc, char **argv)
{
    opts o;
    if (parse_opts(argc, argv, &o, 2))
        return 2;
    if (o.help || !o.model || (!o.ids == !o.prompt)) {
        fprintf(o.help ? stdout : stderr,
                "usage: kilnc ref MODEL_DIR (--ids 1,2,3 | --prompt TEXT) [--max-new N] [--dump "
                "FILE] [options]\n\n"
                "Runs the model on the CPU in fp32, straight from the checkpoint: the prompt in one\n"
                "forward (prefill), then N greedy tokens one at a time with a KV cache (exactly N:\n"
                "end-of-sequence does not stop it). Prints the generated ids. For embedding models,\n"
                "prints the pooled vector.\n\n"
                "  --ids LIST          prompt token ids, comma separated\n"
                "  --prompt TEXT       the prompt as text, encoded with MODEL_DIR/tokenizer.json\n"
                "                      (the output is decoded too)\n"
                "  --token-types LIST  token type ids (BERT-style models; default all 0)\n"
                "  --max-new N         tokens to generate (default 16)\n"
                "  --dump FILE         write a safetensors file: logits F32 [prompt_len, vocab] and\n"
                "                      tokens I64 [N]; for embedding models last_hidden_state F32\n"
                "                      [len, hidden] and embedding F32 [hidden]\n"
                "  --dump-nodes PAT    also dump the prefill value of every node whose name contains\n"
                "                      PAT (e.g. mlp_residual: each layer's output; '' for all),\n"
                "                      named as in 'kilnc graph --dump-after=build'\n%s",
                common_help);
        return o.help ? 0 : 2;
    }
    int64_t *ids = NULL, *types = NULL;
    int n;
    tokenizer *tok = NULL;
    if (o.prompt) {
        kerr te;
        kerr_clear(&te);
        tok = tok_load(o.model, &te);
        int32_t *t32 = NULL;
        size_t nt = 0;
        if (!tok || tok_encode(tok, o.prompt, strlen(o.prompt), 1, &t32, &nt, &te)) {
            fprintf(stderr, "kilnc: error: %s\n", kerr_msg(&te));
            tok_free(tok);
            return 1;
        }
        n = (int)nt;
        ids = xmalloc(sizeof(int64_t) * (nt ? nt : 1));
        for (size_t i = 0; i < nt; i++)
            ids[i] = t32[i];
        free(t32);
        if (n == 0) {
            fprintf(stderr, "kilnc: error: the prompt encodes to no tokens\n");
            tok_free(tok);
            free(ids);
            return 1;
        }
    } else if ((n = parse_ids("--ids", o.ids, &ids)) < 0) {
        return 2;
    }
    if (o.types) {
        int nt = parse_ids("--token-types", o.types, &types);
        if (nt < 0 || nt != n) {
            if (nt >= 0)
                fprintf(stderr, "kilnc: --token-types has %d entries, --ids has %d\n", nt, n);
            free(ids);
            free(types);
            return 2;
        }
    }
    kc c;
    kerr err;
    kerr_clear(&err);
    ref *r = NULL;
    st_writer *dw = NULL;
    float *prompt_logits = NULL;
    int64_t *gen = NULL;
    /* the reference interprets the unfused graph: it is the oracle the passes are checked by */
    kc_opts ko = kopts(&o, 1);
    int rc = kc_open(&c, o.model, &ko, &err) || kc_run(&c, "bind_weights", NULL, NULL, &err);
    print_warn(&c, 5);
    if (rc)
        goto fail;
    const kgraph *g = c.g;
    int embed = g->nodes[g->output].op == KG_POOL;
    r = ref_new(g, n + (embed ? 0 : o.max_new), &err);
    if (!r)
        goto fail;
    int pool_in = embed ? g->nodes[g->output].in[0] : -1;
    if (embed)
        ref_keep(r, pool_in);
    if (o.dump_nodes)
        for (int i = 0; i < g->n; i++)
            if (!g->nodes[i].is_const && g->nodes[i].op != KG_INPUT &&
                strstr(g->nodes[i].name, o.dump_nodes))
                ref_keep(r, i);
    double t0 = util_now();
    if (ref_forward(r, ids, types, n, &err))
        goto fail;
    double t_prefill = util_now() - t0;
    int rows, cols;
    const float *out = ref_output(r, &rows, &cols);
    if (o.dump) {
        dw = st_writer_new();
        st_writer_meta(dw, "producer", "kilnc ref");
        for (int i = 0; o.dump_nodes && i < g->n; i++) {
            int rr, cc;
            const float *v = ref_value(r, i, &rr, &cc);
            if (!v || i == g->output || i == pool_in)
                continue;
            float *copy = xmalloc(sizeof(float) * (size_t)rr * (size_t)cc);
            memcpy(copy, v, sizeof(float) * (size_t)rr * (size_t)cc);
            int64_t sh[2] = {rr, cc};
            st_writer_add_owned(dw, g->nodes[i].name, ST_F32, 2, sh, copy);
        }
    }
    if (embed) {
        int rr, cc;
        const float *hid = ref_value(r, pool_in, &rr, &cc);
        printf("embedding [%d]:", cols);
        for (int j = 0; j < cols && j < 8; j++)
            printf(" %.6f", out[j]);
        printf("%s\n", cols > 8 ? " ..." : "");
        fprintf(stderr, "kilnc ref: %d tokens in %.3f s\n", n, t_prefill);
        if (dw) {
            float *h = xmalloc(sizeof(float) * (size_t)rr * (size_t)cc);
            memcpy(h, hid, sizeof(float) * (size_t)rr * (size_t)cc);
            float *e = xmalloc(sizeof(float) * (size_t)cols);
            memcpy(e, out, sizeof(float) * (size_t)cols);
            int64_t sh[2] = {rr, cc}, se[1] = {cols};
            st_writer_add_owned(dw, "last_hidden_state", ST_F32, 2, sh, h);
            st_writer_add_owned(dw, "embedding", ST_F32, 1, se, e);
        }
    } else {
        prompt_logits = xmalloc(sizeof(float) * (size_t)rows * (size_t)cols);
        memcpy(prompt_logits, out, sizeof(float) * (size_t)rows * (size_t)cols);
        gen = xmalloc(sizeof(int64_t) * (size_t)(o.max_new ? o.max_new : 1));
        double t1 = util_now();
        for (int i = 0; i < o.max_new; i++) {
            const float *last = i == 0 ? prompt_logits + (size_t)(rows - 1) * (size_t)cols : out;
            gen[i] = argmax(last, cols);
            if (i + 1 == o.max_new)
                break;
            if (ref_forward(r, &gen[i], NULL, 1, &err))
                goto fail;
            out = ref_output(r, &rows, &cols);
        }
        double t_dec = util_now() - t1;
        for (int i = 0; i < o.max_new; i++)
            printf(i ? ",%lld" : "%lld", (long long)gen[i]);
        printf("\n");
        if (tok) {
            int32_t *g32 = xmalloc(sizeof(int32_t) * (size_t)(o.max_new ? o.max_new : 1));
            for (int i = 0; i < o.max_new; i++)
                g32[i] = (int32_t)gen[i];
            char *text = NULL;
            size_t tl;
            kerr te;
            kerr_clear(&te);
            if (tok_decode(tok, g32, (size_t)o.max_new, 1, &text, &tl, &te) == 0)
                printf("%s%s\n", o.prompt, text);
            free(text);
            free(g32);
        }
        fprintf(stderr, "kilnc ref: prefill %d tokens %.3f s; %d new tokens %.3f s (%.2f tok/s)\n",
                n, t_prefill, o.max_new, t_dec,
                o.max_new > 1 && t_dec > 0 ? (o.max_new - 1) / t_dec : 0.0);
        if (dw) {
            int64_t sl[2] = {n, cols}, st[1] = {o.max_new};
            st_writer_add_owned(dw, "logits", ST_F32, 2, sl, prompt_logits);
            st_writer_add_owned(dw, "tokens", ST_I64, 1, st, gen);
            prompt_logits = NULL;
            gen = NULL;
        }
    }
    if (dw && st_writer_write(dw, o.dump, NULL, NULL, &err))
        goto fail;
    rc = 0;
    goto done;
fail:
    print_err(&err);
    rc = 1;
done:
    st_writer_free(dw);
    free(prompt_logits);
    free(gen);
    ref_free(r);
    kc_free(&c);
    tok_free(tok);
    free(ids);
    free(types);
    return rc;
}

/* Copies a file if it exists; returns 1 when copied, 0 when absent, -1 on error. */
static int copy_if_present(const char *dir, const char *name, const char *out, kerr *err)
{
    char *src = util_path_join(dir, name), *dst = util_path_join(out, name);
    int rc = 0;
    if (util_is_file(src)) {
        size_t len;
        char *data = util_read_file(src, &len, err);
        rc = data && util_write_file(dst, data, len, err) == 0 ? 1 : -1;
        free(data);
    }
    free(src);
    free(dst);
    return rc;
}

/* End-of-sequence and begin-of-sequence ids: generation_config.json first (it may list several
 * eos ids), then config.json. */
static void special_ids(const kc *c, ka_manifest *m)
{
    char *gp = util_path_join(c->model_dir, "generation_config.json");
    kerr quiet;
    kerr_clear(&quiet);
    config *gc = util_is_file(gp) ? config_load(gp, &quiet) : NULL;
    free(gp);
    const config *srcs[2] = {gc, c->cfg};
    m->bos = -1;
    for (int k = 0; k < 2 && !m->n_eos; k++) {
        if (!srcs[k])
            continue;
        json_t *e = config_get(srcs[k], "eos_token_id");
        if (json_is_integer(e)) {
            m->eos = xmalloc(sizeof(int));
            m->eos[m->n_eos++] = (int)json_integer_value(e);
        } else if (json_is_array(e)) {
            m->eos = xcalloc(json_array_size(e) + 1, sizeof(int));
            for (size_t i = 0; i < json_array_size(e); i++)
                if (json_is_integer(json_array_get(e, i)))
                    m->eos[m->n_eos++] = (int)json_integer_value(json_array_get(e, i));
        }
    }
    for (int k = 0; k < 2 && m->bos < 0; k++) {
        int64_t b;
        if (srcs[k] && config_has(srcs[k], "bos_token_id") &&
            config_int(srcs[k], "bos_token_id", 0, 0, &b, &quiet) == 0)
            m->bos = (int)b;
    }
    config_free(gc);
}

static uint64_t file_fnv(const char *path)
{
    size_t len;
    kerr quiet;
    kerr_clear(&quiet);
    char *d = util_read_file(path, &len, &quiet);
    uint64_t h = d ? util_fnv1a(d, len, UTIL_FNV_SEED) : 0;
    free(d);
    return h;
}

static int cmd_compile(int argc, char **argv)
{
    opts o;
    if (parse_opts(argc, argv, &o, 3))
        return 2;
    if (o.help || !o.model || !o.out) {
        fprintf(o.help ? stdout : stderr,
                "usage: kilnc compile MODEL_DIR -o OUT_DIR [options]\n\n"
                "Compiles a Hugging Face checkpoint for NVIDIA GPUs, on any machine (no GPU "
                "needed):\n"
                "  OUT_DIR/model.kiln                     kernels (cubin per SM, PTX), schedule, "
                "manifest\n"
                "  OUT_DIR/shards/rank0-of-1.safetensors  weights in runtime layout and dtype\n"
                "  OUT_DIR/tokenizer*.json ...            the tokenizer files, when present\n"
                "Run it with 'kiln run OUT_DIR'.\n\n"
                "  -o, --out DIR      output folder (created)\n"
                "  --sm LIST          GPU architectures, e.g. 80,90a (default 80,90a); PTX for the "
                "lowest is\n"
                "                     kept so newer GPUs can JIT it\n"
                "  --dtype bf16|fp16  compute dtype (default bf16)\n"
                "  --max-seq-len N    tokens per sequence, prompt + generated (default 2048, at most\n"
                "                     the model's max_position_embeddings)\n"
                "  --max-batch N      sequences per step (default 16)\n"
                "  --max-tokens N     tokens per prefill step; longer prompts are prefilled in "
                "chunks\n"
                "                     (default 1024)\n%s",
                common_help);
        return o.help ? 0 : 2;
    }
    st_dtype dt = ST_BF16;
    if (o.dtype && strcmp(o.dtype, "bf16") && strcmp(o.dtype, "fp16") && strcmp(o.dtype, "f16")) {
        fprintf(stderr, "kilnc: --dtype expects bf16 or fp16, got '%s'\n", o.dtype);
        return 2;
    }
    if (o.dtype && strcmp(o.dtype, "bf16"))
        dt = ST_F16;
    /* architectures */
    char sms[8][16];
    int nsm = 0;
    {
        char *list = xstrdup(o.sm ? o.sm : "80,90a"), *save = NULL;
        for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            const char *t = strncmp(tok, "sm_", 3) == 0 ? tok + 3 : tok;
            int ok = strlen(t) >= 2 && strlen(t) <= 4;
            for (const char *q = t; *q && ok; q++)
                ok = (*q >= '0' && *q <= '9') || (*q == 'a' && q[1] == 0 && q > t + 1);
            if (!ok || nsm == 8) {
                fprintf(stderr, "kilnc: --sm: '%s' is not an SM like 80, 89, 90a (at most 8)\n",
                        tok);
                free(list);
                return 2;
            }
            snprintf(sms[nsm++], sizeof sms[0], "sm_%s", t);
        }
        free(list);
        if (!nsm) {
            fprintf(stderr, "kilnc: --sm is empty\n");
            return 2;
        }
    }
    kc c;
    kerr err;
    kerr_clear(&err);
    kc_opts ko = kopts(&o, 1);
    ko.max_seq_len = o.max_seq_len;
    ko.max_seqs = o.max_batch;
    ko.max_tokens = o.max_tokens;
    ko.act_dtype = dt;
    double t0 = util_now();
    int rc = kc_open(&c, o.model, &ko, &err);
    if (rc == 0 && c.spec->task == TASK_CLASSIFY)
        rc = kerr_add(&err, "%s: task classify is not compiled for the GPU yet", c.spec->path);
    if (rc == 0) {
        int64_t maxpos = 0;
        config_int(c.cfg, "max_position_embeddings", 1, 0, &maxpos, &err);
        if (maxpos > 0 && c.max_seq_len > maxpos) {
            if (o.max_seq_len)
                rc = kerr_add(&err, "--max-seq-len %d exceeds the model's "
                                    "max_position_embeddings %lld",
                              c.max_seq_len, (long long)maxpos);
            else
                c.max_seq_len = (int)maxpos;
        }
        if (c.max_tokens > c.max_seq_len * c.max_seqs)
            c.max_tokens = c.max_seq_len * c.max_seqs;
    }
    rc = rc || kc_run(&c, NULL, NULL, NULL, &err);
    print_warn(&c, 20);
    lowered *l = c.low;
    char *src = NULL, *root = NULL, *tdir = NULL, *kdir = NULL, *shard_dir = NULL;
    char *shard = NULL, *artifact = NULL;
    nvrtc_result code[9];
    memset(code, 0, sizeof code);
    if (rc)
        goto out;
    const char *name = strrchr(o.model, '/') && strrchr(o.model, '/')[1] ? strrchr(o.model, '/') + 1 : o.model;
    src = codegen_source(l, name);
    root = xstrdup(c.reg->lib_dir);
    *strrchr(root, '/') = 0; /* archspecs/ -> the installation root */
    tdir = util_path_join(root, "templates");
    kdir = util_path_join(root, "kernels");
    const char *inc[] = {tdir, kdir, NULL};
    fprintf(stderr, "kilnc: %s: %d kernels, %d prefill / %d decode steps, %d weights\n", name,
            l->ninst, l->m.nprefill, l->m.ndecode, l->m.nweights);
    /* lowest SM's PTX first, then a cubin per SM */
    const char *targets[9];
    char ptx_target[160];
    snprintf(ptx_target, sizeof ptx_target, "compute_%s", sms[0] + 3);
    if (ptx_target[strlen(ptx_target) - 1] == 'a')
        ptx_target[strlen(ptx_target) - 1] = 0;
    targets[0] = ptx_target;
    for (int i = 0; i < nsm; i++)
        targets[i + 1] = sms[i];
    for (int i = 0; i <= nsm && rc == 0; i++) {
        char unit[256];
        snprintf(unit, sizeof unit, "%s.cu", name);
        rc = nvrtc_compile(src, unit, targets[i], inc, &code[i], &err);
        if (rc == 0)
            fprintf(stderr, "kilnc: %-10s %s (%.1f s%s)\n", targets[i],
                    i ? "cubin" : "ptx", code[i].seconds, code[i].cached ? ", cached" : "");
    }
    if (rc)
        goto out;
    shard_dir = util_path_join(o.out, "shards");
    if (util_mkdirs(shard_dir, &err)) {
        rc = -1;
        goto out;
    }
    shard = util_path_join(shard_dir, "rank0-of-1.safetensors");
    ka_manifest *m = &l->m;
    if (pack_shard(&c, l, shard, 1, &m->shard_header_fnv, &err)) {
        rc = -1;
        goto out;
    }
    m->shard = xstrdup("shards/rank0-of-1.safetensors");
    m->model_name = xstrdup(name);
    config_architecture(c.cfg, (const char **)&m->arch, &err);
    m->arch = xstrdup(m->arch ? m->arch : "?");
    m->spec_name = xstrdup(c.spec->name);
    m->task = xstrdup(spec_task_name(c.spec->task));
    m->kilnc_version = xstrdup(KILN_VERSION);
    m->spec_hash = file_fnv(c.spec->path);
    m->config_hash = file_fnv(c.config_path);
    uint64_t lh = UTIL_FNV_SEED;
    for (int i = 0; i < m->nweights; i++) {
        lh = util_fnv1a(m->weights[i].name, strlen(m->weights[i].name), lh);
        lh = util_fnv1a(m->weights[i].shape, sizeof(int64_t) * 4, lh);
    }
    m->layout_hash = lh;
    special_ids(&c, m);
    /* blobs: PTX, cubins, the generated source */
    const void *data[11];
    m->nblobs = nsm + 2;
    m->blobs = xcalloc((size_t)m->nblobs, sizeof(ka_blob));
    m->blobs[0] = (ka_blob){xasprintf("ptx.%s", targets[0]), 0, code[0].len - 1, 0};
    data[0] = code[0].code;
    for (int i = 0; i < nsm; i++) {
        m->blobs[i + 1] = (ka_blob){xasprintf("cubin.%s", sms[i]), 0, code[i + 1].len, 0};
        data[i + 1] = code[i + 1].code;
    }
    m->blobs[nsm + 1] = (ka_blob){xstrdup("source.cu"), 0, strlen(src), 0};
    data[nsm + 1] = src;
    artifact = util_path_join(o.out, "model.kiln");
    if (ka_write(artifact, m, data, &err)) {
        rc = -1;
        goto out;
    }
    static const char *tok_files[] = {"tokenizer.json", "tokenizer_config.json",
                                      "special_tokens_map.json", "generation_config.json"};
    int copied = 0;
    for (size_t i = 0; i < ARRAY_LEN(tok_files) && rc == 0; i++) {
        int r = copy_if_present(c.model_dir, tok_files[i], o.out, &err);
        if (r < 0)
            rc = -1;
        copied += r > 0 && i == 0;
    }
    if (rc == 0) {
        char sz[32];
        fprintf(stderr, "kilnc: wrote %s (%s kernels for", artifact, "compiled");
        for (int i = 0; i < nsm; i++)
            fprintf(stderr, " %s", sms[i]);
        fprintf(stderr, " + %s), %s (%s)%s in %.1f s\n", targets[0], shard,
                util_human_bytes((double)c.n_params * (double)st_dtype_size(dt), sz, sizeof sz),
                copied ? ", tokenizer" : ", no tokenizer.json (ids only)", util_now() - t0);
    }
out:
    if (rc)
        print_err(&err);
    for (int i = 0; i < 9; i++)
        nvrtc_result_free(&code[i]);
    free(src);
    free(root);
    free(tdir);
    free(kdir);
    free(shard_dir);
    free(shard);
    free(artifact);
    kc_free(&c);
    return rc ? 1 : 0;
}

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} commands[] = {
    {"archs", cmd_archs, "list the architectures the archspecs serve"},
    {"check", cmd_check, "check a checkpoint against its archspec; print a summary"},
    {"graph", cmd_graph, "print the graph IR of a model (after any pass)"},
    {"ref", cmd_ref, "run a model on the CPU in fp32 (the reference): generate or embed"},
    {"compile", cmd_compile, "compile a checkpoint into a GPU artifact (no GPU needed)"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: kilnc COMMAND [ARGS...]\n\n"
               "kiln's compiler: Hugging Face checkpoint + archspec -> graph -> artifact.\n\n"
               "commands:\n");
    for (size_t i = 0; i < ARRAY_LEN(commands); i++)
        fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\n'kilnc COMMAND --help' describes each command. 'kilnc --version' prints the "
               "version.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("kilnc %s\n", KILN_VERSION);
        return 0;
    }
    for (size_t i = 0; i < ARRAY_LEN(commands); i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "kilnc: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
