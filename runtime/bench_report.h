/* bench_report — `kiln bench`'s figures (cmd_bench.c), their rooflines and their output: the
 * table, the header above it and the definitions below it on stdout, and --json. Apart from the
 * command so that the output is tested without a GPU (tests/test_bench.c), on made-up hardware:
 * every case of it, among them a GPU whose GEMM peak was not measured (no cuBLASLt, as on a
 * standalone executable's driver-only target), where the decode figures keep their rooflines and
 * the prefill and time-to-first-token figures are printed without one ("n/a"; null in the JSON).
 */
#ifndef KILN_BENCH_REPORT_H
#define KILN_BENCH_REPORT_H

#include <stdio.h>

#include "backend.h"
#include "roofline.h"

#define KBENCH_CONTEXT 32 /* --context's default: prompt tokens of each decode sequence */

enum { KBENCH_TTFT, KBENCH_PREFILL, KBENCH_DECODE };

/* One figure, measured or skipped. */
typedef struct kbench_fig {
    int kind;
    int n;          /* prompt tokens (KBENCH_TTFT, KBENCH_PREFILL) or sequences (KBENCH_DECODE) */
    double seconds; /* the best timed run */
    double first;   /* KBENCH_TTFT: its warm-up run, the first request after the load */
    double value;   /* ms (KBENCH_TTFT) or tok/s */
    double roof;    /* the roofline in the same unit; 0: none (CPU backend, or no GEMM peak) */
    double ratio;   /* roofline time / measured time */
    double first_ratio;
    char *skip;     /* why it was not measured, or NULL */
} kbench_fig;

/* What the output describes besides the figures. hw and rm are read only when compiled (a
 * model kilnc compiled, on the GPU; otherwise a checkpoint on the CPU backend, no roofline). */
typedef struct kbench_run {
    const char *dir, *model, *describe;
    int compiled, reps, new_tokens, context; /* context: each decode sequence's prompt */
    double load_s;
    const kroof_hw *hw;
    const kroof_model *rm;
} kbench_run;

/* The rooflines of the measured figures (seconds and first > 0), from the hardware and the cost
 * model; a prefill or time-to-first-token figure gets none where hw->gemm_flops is 0. */
void kbench_rooflines(kbench_fig *figs, int nf, const kroof_model *rm, const kroof_hw *hw,
                      int max_tokens, int new_tokens, int context);
/* The header, the table and the rooflines' definitions. */
void kbench_print(FILE *f, const kbench_run *r, const kbench_fig *figs, int nf);
int kbench_write_json(const char *path, const kbench_run *r, const kbench_fig *figs, int nf,
                      kerr *err);

#endif
