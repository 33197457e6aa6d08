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

#include "config.h"
#include "graph.h"
#include "kc.h"
#include "pipeline.h"
#include "ref.h"
#include "registry.h"
#include "safetensors.h"
#include "spec.h"
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
    const char *ids, *types, *dump, *dump_nodes;
    int max_new;
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
        else if (allow_dump == 2 && TAKE("--ids"))
            o->ids = val;
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
    kc_opts k = {o->spec, o->spec_path, o->n_spec_path, o->strict, need_weights};
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
    int rc = kc_open(&c, o.model, &ko, &err) || kc_run(&c, NULL, NULL, NULL, &err);
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
        const char *dump = o.dump_after ? o.dump_after : kc_pass_name(kc_npasses() - 1);
        rc = kc_run(&c, upto, dump, stdout, &err);
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
    int n = 0, cap = 64;
    int64_t *v = xmalloc(sizeof(int64_t) * (size_t)cap);
    const char *p = s;
    while (*p) {
        char *end;
        long long x = strtoll(p, &end, 10);
        if (end == p || x < 0 || (*end && *end != ',')) {
            fprintf(stderr, "kilnc: %s expects comma-separated non-negative integers, got '%s'\n",
                    flag, s);
            free(v);
            return -1;
        }
        if (n == cap)
            v = xrealloc(v, sizeof(int64_t) * (size_t)(cap *= 2));
        v[n++] = x;
        p = *end ? end + 1 : end;
    }
    if (n == 0) {
        fprintf(stderr, "kilnc: %s is empty\n", flag);
        free(v);
        return -1;
    }
    *out = v;
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
    if (o.help || !o.model || !o.ids) {
        fprintf(o.help ? stdout : stderr,
                "usage: kilnc ref MODEL_DIR --ids 1,2,3 [--max-new N] [--dump FILE] [options]\n\n"
                "Runs the model on the CPU in fp32, straight from the checkpoint: the prompt in one\n"
                "forward (prefill), then N greedy tokens one at a time with a KV cache (exactly N:\n"
                "end-of-sequence does not stop it). Prints the generated ids. For embedding models,\n"
                "prints the pooled vector.\n\n"
                "  --ids LIST          prompt token ids, comma separated\n"
                "  --token-types LIST  token type ids (BERT-style models; default all 0)\n"
                "  --max-new N         tokens to generate (default 16)\n"
                "  --dump FILE         write a safetensors file: logits F32 [prompt_len, vocab] and\n"
                "                      tokens I64 [N]; for embedding models last_hidden_state F32\n"
                "                      [len, hidden] and embedding F32 [hidden]\n"
                "  --dump-nodes PAT    also dump the prefill value of every node whose name contains\n"
                "                      PAT (e.g. mlp_residual: each layer's output), named as in\n"
                "                      'kilnc graph'\n%s",
                common_help);
        return o.help ? 0 : 2;
    }
    int64_t *ids = NULL, *types = NULL;
    int n = parse_ids("--ids", o.ids, &ids);
    if (n < 0)
        return 2;
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
    free(ids);
    free(types);
    return rc;
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
