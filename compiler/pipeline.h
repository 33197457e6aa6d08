/* pipeline — the compiler's passes in order, and the setup every command shares: read
 * config.json and the checkpoint, resolve and run the archspec, then run passes with the
 * verifier between them. main.c's commands and the tests both go through here. */
#ifndef KILN_PIPELINE_H
#define KILN_PIPELINE_H

#include <stdio.h>

#include "kc.h"
#include "overrides.h"

typedef struct kc_opts {
    const char *spec;      /* --spec FILE, or NULL to resolve from config.json */
    char *const *spec_path;/* --spec-path folders */
    int n_spec_path;
    int strict;
    int allow_nonfinite;   /* --allow-nonfinite: NaN and Inf in weights are warnings */
    int need_weights;      /* a checkpoint must be present (else graph-only) */
    int max_tokens, max_seqs, max_seq_len; /* 0: defaults 2048, 16, 2048 */
    st_dtype act_dtype;    /* ST_BF16 (default) or ST_F16 */
    kc_quant quant_mode;   /* --quant fp8|int4 (quant.h) */
    const char *calib_path;/* --calibrate FILE (with quant_mode; gptq.h) */
    int calib_tokens;      /* --calibrate-tokens (0: the default) */
    const ovr_set *ovr;    /* --config, --override, --pooling, --normalize (overrides.h); NULL: none */
    int tp;                /* --tp N: the shard pass splits the graph for N ranks; 0: unsharded */
    int gemm_kiln;         /* --gemm kiln (kc.h) */
    int sm90a_only;        /* every --sm target is sm_90a (kc.h) */
    int sm_fp8;            /* every --sm target is sm_89 or newer (kc.h) */
    int sm90;              /* some --sm target is sm_90 or newer (kc.h) */
    int smem_block;        /* shared memory a block may have on every --sm target (kc.h) */
    int fp8_dequant;       /* --fp8-gemm dequant (kc.h) */
    int batch_invariant;   /* --batch-invariant (kc.h; the caller sets gemm_kiln with it) */
    int kv_fp8;            /* --kv-dtype fp8 (kc.h) */
} kc_opts;

/* Loads config, checkpoint and spec, and builds the graph. On error kc_free still applies. */
int kc_open(kc *c, const char *model_dir, const kc_opts *o, kerr *err);
void kc_free(kc *c);

/* Runs the passes up to and including `upto` (NULL: all), verifying after each; prints the
 * graph to `dump` after the pass named `dump_after` ("build" = before the first pass). */
int kc_run(kc *c, const char *upto, const char *dump_after, FILE *dump, kerr *err);

/* Pass names in order; -1 for "build", -2 when unknown. */
int kc_pass_index(const char *name);
int kc_npasses(void);
const char *kc_pass_name(int i);

#endif
