/* cli — the `kiln` subcommands. Each lives in its own file (cmd_<name>.c) and is listed once in
 * main.c's table; each prints its own --help and returns the process exit status. */
#ifndef KILN_CLI_H
#define KILN_CLI_H

#include "backend.h"
#include "backend_ref.h" /* kbr_opts: the CPU backend's options (compiler/backend_ref.c) */

int cmd_tokenize(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_chat_template(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_perplexity(int argc, char **argv);

/* What `kiln run` and `kiln serve` load (cmd_backend.c). */
typedef struct cli_backend_opts {
    double kv_memory;  /* GPU: fraction of free memory for the KV cache (0: default 0.9) */
    int no_graphs;     /* GPU: decode without CUDA graphs */
    int tp;            /* GPU: --tp, the ranks the artifact must have (0: whatever it has) */
    int nnodes, node_rank;  /* GPU, several hosts: --nnodes, --node-rank (engine.h) */
    const char *rendezvous; /* GPU, several hosts: --rendezvous HOST:PORT of node 0 */
    int quiet;         /* no notes on stderr */
    /* CPU backend: the limits a compiled artifact has built in (0: defaults) */
    int max_batch, max_tokens, max_seq_len, kv_blocks;
    /* CPU backend: the weights rounded as kilnc compile --quant Q [--calibrate F
     * --calibrate-tokens N] rounds them (NULL, 0: as the checkpoint has them) */
    const char *quant, *calib_path;
    int calib_tokens;
} cli_backend_opts;

/* The CPU backend behind a Hugging Face checkpoint folder (compiler/backend_ref.h). kiln links
 * the compiler library and main.c points this at it; kiln-standalone runs its embedded compiled
 * model only and links no compiler (no NVRTC, no archspecs), so it is NULL there. */
typedef struct cli_cpu_backend {
    kbackend *(*open)(const char *dir, const kbr_opts *o, kerr *err);
} cli_cpu_backend;
extern const cli_cpu_backend *const cli_cpu;

/* DIR holding model.kiln: the GPU engine (engine.h). DIR holding a Hugging Face checkpoint
 * (config.json): the CPU backend (compiler/backend_ref.h), with a note on stderr. Anything else:
 * NULL and a message saying what DIR should be. */
kbackend *cli_open_backend(const char *dir, const cli_backend_opts *o, kerr *err);
/* The head of a command's option loop: when argv[*i] is one of the n options in `names`, which
 * take a value, *v is the next argument and *i steps past it; else *v is NULL. 0, or 2 with the
 * usage error printed when the value is missing. */
int cli_value_arg(const char *prog, int argc, char **argv, int *i, const char *const *names,
                  size_t n, const char **v);
/* The end of a command's option loop: an argument no option took. Starting with '-' (but "-"
 * alone) it is an unknown option; else the first is DIR and a second an error. 0, or 2 with the
 * usage error printed. */
int cli_dir_arg(const char *prog, const char *a, const char **dir);
/* A node other than node 0 (o->node_rank > 0): loads DIR and runs the steps node 0 sends until it
 * ends (km_follow); prints as the command line does. Returns the exit status. */
int cli_follow(const char *prog, const char *dir, const cli_backend_opts *o);

#endif
