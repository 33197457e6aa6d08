/* cmd_backend — cli_open_backend (cli.h): what `kiln run` and `kiln serve` load from a folder.
 *
 * A folder holding model.kiln is a compiled model: the GPU engine (engine.h). A folder holding
 * config.json is a Hugging Face checkpoint: the CPU backend over kilnc's fp32 reference
 * interpreter (compiler/backend_ref.h), slow, with a note saying so. The options of one kind
 * given for the other are an error rather than silently ignored: a compiled model has its batch,
 * tokens per step and sequence length built in, and a checkpoint has no GPU memory or graphs.
 * Anything else is an error saying what the folder should hold.
 */
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "engine.h"

#define WANT "expected the OUT_DIR of 'kilnc compile MODEL_DIR -o OUT_DIR', or a Hugging Face " \
             "checkpoint folder with config.json"

/* The first option of the other kind that was given, or NULL. */
static const char *gpu_option(const cli_backend_opts *o)
{
    return o->kv_memory    ? "--kv-memory"
           : o->no_graphs  ? "--no-graphs"
           : o->tp         ? "--tp"
           : o->nnodes     ? "--nnodes"
           : o->node_rank  ? "--node-rank"
           : o->rendezvous ? "--rendezvous"
                           : NULL;
}

/* The checkpoint's options: the limits a compiled model has built in, and how its weights are
 * rounded. */
static const char *limit_option(const cli_backend_opts *o)
{
    return o->max_batch     ? "--max-batch"
           : o->max_tokens  ? "--max-tokens"
           : o->max_seq_len ? "--max-seq-len"
           : o->kv_blocks   ? "--kv-blocks"
                            : NULL;
}

static const char *rounding_option(const cli_backend_opts *o)
{
    return o->quant          ? "--quant"
           : o->calib_path   ? "--calibrate"
           : o->calib_tokens ? "--calibrate-tokens"
                             : NULL;
}

static kbackend *open_gpu(const char *dir, const cli_backend_opts *o, kerr *err)
{
    if (limit_option(o)) {
        kerr_add(err, "%s: %s applies to a Hugging Face checkpoint folder only; %s is compiled, "
                      "with its limits built in (kilnc compile --max-batch, --max-tokens, "
                      "--max-seq-len; kiln inspect shows them)",
                 dir, limit_option(o), dir);
        return NULL;
    }
    if (rounding_option(o)) {
        kerr_add(err, "%s: %s applies to a Hugging Face checkpoint folder only; %s is compiled, "
                      "its weights' rounding built in (kilnc compile --quant, --calibrate; kiln "
                      "inspect shows it)",
                 dir, rounding_option(o), dir);
        return NULL;
    }
    km_opts ko = {o->kv_memory ? o->kv_memory : 0.9, o->no_graphs, o->quiet, o->tp,
                  o->nnodes, o->node_rank, o->rendezvous};
    kmodel *m = km_load(dir, &ko, err);
    if (!m)
        return NULL;
    return km_backend(m);
}

int cli_follow(const char *prog, const char *dir, const cli_backend_opts *o)
{
    kerr err;
    kerr_clear(&err);
    char *mk = util_path_join(dir, "model.kiln");
    int compiled = util_is_file(mk);
    free(mk);
    if (!compiled) {
        kerr_add(&err, "%s: --node-rank %d needs a compiled model (no model.kiln here); every node "
                       "runs the same kilnc compile --tp output",
                 dir, o->node_rank);
        kerr_print(prog, &err);
        return 1;
    }
    km_opts ko = {o->kv_memory ? o->kv_memory : 0.9, o->no_graphs, o->quiet, o->tp,
                  o->nnodes, o->node_rank, o->rendezvous};
    kmodel *m = km_load(dir, &ko, &err);
    if (!m) {
        kerr_print(prog, &err);
        return 1;
    }
    if (!o->quiet)
        fprintf(stderr, "%s: %s; running the steps node 0 sends\n", prog, km_describe(m));
    int rc = km_follow(m, &err);
    if (rc)
        kerr_print(prog, &err);
    else if (!o->quiet)
        fprintf(stderr, "%s: node 0 ended; done\n", prog);
    km_free(m);
    return rc ? 1 : 0;
}

static kbackend *open_cpu(const char *dir, const cli_backend_opts *o, kerr *err)
{
    if (gpu_option(o)) {
        kerr_add(err, "%s: %s applies to a compiled model only; %s is a Hugging Face checkpoint, "
                      "run on the CPU (compile it with kilnc compile for the GPU)",
                 dir, gpu_option(o), dir);
        return NULL;
    }
    if (!o->quiet)
        fprintf(stderr, "kiln: %s is a Hugging Face checkpoint: running it on the CPU with the fp32 "
                        "reference interpreter (slow; compile it with kilnc compile for the "
                        "GPU)\n",
                dir);
    kbr_opts ro = {o->max_batch,   o->max_tokens, o->max_seq_len, o->kv_blocks,
                   o->quant,       o->calib_path, o->calib_tokens};
    return cli_cpu->open(dir, &ro, err);
}

kbackend *cli_open_backend(const char *dir, const cli_backend_opts *o, kerr *err)
{
    cli_backend_opts none = {0};
    if (!o)
        o = &none;
    struct stat st;
    if (!util_is_dir(dir)) { /* util_is_dir: the standalone executable's memory folder too */
        kerr_add(err, stat(dir, &st) != 0 ? "%s: not a folder: it does not exist (" WANT ")"
                                          : "%s: not a folder (" WANT ")",
                 dir);
        return NULL;
    }
    char *mk = util_path_join(dir, "model.kiln"), *cfg = util_path_join(dir, "config.json");
    int compiled = util_is_file(mk), checkpoint = util_is_file(cfg);
    free(mk);
    free(cfg);
    if (compiled)
        return open_gpu(dir, o, err);
    if (checkpoint && cli_cpu)
        return open_cpu(dir, o, err);
    if (checkpoint) {
        kerr_add(err, "%s is a Hugging Face checkpoint: this binary runs compiled models only "
                      "(kiln runs checkpoints on the CPU)", dir);
        return NULL;
    }
    kerr_add(err, "%s: no model.kiln in this folder, and no config.json (" WANT ")", dir);
    return NULL;
}

int cli_value_arg(const char *prog, int argc, char **argv, int *i, const char *const *names,
                  size_t n, const char **v)
{
    *v = NULL;
    for (size_t k = 0; k < n; k++)
        if (!strcmp(argv[*i], names[k])) {
            if (*i + 1 == argc)
                return util_usage_error(prog, "%s needs a value", argv[*i]);
            *v = argv[++*i];
            return 0;
        }
    return 0;
}

int cli_dir_arg(const char *prog, const char *a, const char **dir)
{
    if (a[0] == '-' && a[1])
        return util_usage_error(prog, "unknown option '%s'", a);
    if (*dir)
        return util_usage_error(prog, "unexpected argument '%s' (one DIR expected, already have "
                                      "'%s')",
                                a, *dir);
    *dir = a;
    return 0;
}
