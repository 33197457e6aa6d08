/* synth — random-weight Hugging Face checkpoints of real models' shapes (`kilnc synth`).
 *
 * A preset is the config.json a real model ships (Llama 3 8B/70B, Llama 3.2 1B untied, Qwen2.5 7B,
 * Mixtral 8x7B with 2 layers) or a tiny one for tests; the tensors (names and shapes) are derived
 * from that config as the model's HF checkpoint has them. synth_write writes config.json,
 * generation_config.json and bf16 safetensors shards (with model.safetensors.index.json when there
 * is more than one), generating the values on several threads straight into the preallocated
 * files with pwrite. Every value is a function of (seed, tensor name, element index) only, so the
 * bytes do not depend on the thread count or the sharding.
 *
 * Nothing here prints: the command line (`kilnc synth`) is in main.c.
 */
#ifndef KILN_SYNTH_H
#define KILN_SYNTH_H

#include <stdint.h>

#include "util.h"

#define SYNTH_MAX_THREADS 1024
#define SYNTH_MAX_LAYERS 10000 /* config.c's bound on num_hidden_layers */

typedef struct synth_preset {
    const char *name;   /* "llama3-8b" */
    const char *what;   /* one line for --list */
    const char *config; /* config.json text, as the model ships it */
} synth_preset;

int synth_n_presets(void);
const synth_preset *synth_preset_at(int i);
const synth_preset *synth_find(const char *name); /* NULL when there is none of that name */

typedef struct synth_opts {
    const char *like;     /* a preset name */
    const char *out;      /* the folder to write */
    uint64_t seed;
    int layers;           /* 0: the preset's num_hidden_layers */
    int threads;          /* >= 1 */
    uint64_t shard_bytes; /* a new shard starts before a tensor that would pass this size */
    int force;            /* write into a non-empty folder, replacing the model files */
    /* called about every 0.2 s while the tensors are written, and once at the end */
    void (*progress)(void *ctx, uint64_t done_bytes, uint64_t total_bytes);
    void *progress_ctx;
} synth_opts;

/* The parameter count and the bytes of the safetensors files of a preset with `layers` layers
 * (0: its own). Returns 0, or -1 with a message. */
int synth_size(const synth_preset *p, int layers, uint64_t *params, uint64_t *bytes, kerr *err);

/* Writes the checkpoint; *params and *bytes (the safetensors files') say how large it is.
 * Returns 0, or -1 with a message (files written so far stay). */
int synth_write(const synth_opts *o, uint64_t *params, uint64_t *bytes, kerr *err);


#endif
