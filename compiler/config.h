/* config — a typed view of a Hugging Face config.json, read with jansson.
 *
 * Archspecs read fields through this view (from Lua: cfg:int("hidden_size"), see spec.c).
 * A JSON null counts as absent, as transformers treats it. Lookups take dotted paths
 * ("text_config.hidden_size", "rope_scaling.factor"). Every failure says which file, which
 * field, and expected vs got; the caller (spec.c) adds the archspec line that asked.
 *
 * RoPE parameters come in two generations of conventions and are normalised here into one
 * struct (config_rope): the older top-level `rope_theta` + `rope_scaling {type|rope_type,..}`
 * and transformers 5's `rope_parameters {rope_type, rope_theta, ..}`, possibly keyed per layer
 * type ("full_attention", "sliding_attention"). The rules follow transformers 5.17
 * modeling_rope_utils.py (standardize_rope_params and the _compute_*_parameters functions).
 */
#ifndef KILN_CONFIG_H
#define KILN_CONFIG_H

#include <stdint.h>

#include "util.h"

typedef struct json_t json_t;

typedef struct config {
    char *path;   /* the config.json this came from */
    json_t *root; /* the parsed object */
} config;

config *config_load(const char *path, kerr *err);
/* For tests: parse from text; `path` is only used in messages. */
config *config_parse(const char *text, const char *path, kerr *err);
void config_free(config *c);

/* The value at a dotted path, or NULL when absent or null. */
json_t *config_get(const config *c, const char *field);
int config_has(const config *c, const char *field);
/* "integer", "string", "array", ... for messages. */
const char *config_kind(const json_t *v);

/* Typed reads. `def` is used when the field is absent and has_def is set; otherwise absence is
 * an error. Integers accept JSON integers (and floats with an integral value, which some
 * configs write, e.g. 4096.0); floats accept integers too. */
int config_int(const config *c, const char *field, int has_def, int64_t def, int64_t *out,
               kerr *err);
/* As config_int, and the value (or the default, when the field is absent) must lie in
 * [min, max]; messages name the field and the range. */
int config_int_in(const config *c, const char *field, int has_def, int64_t def, int64_t min,
                  int64_t max, int64_t *out, kerr *err);
/* The range an archspec's cfg:int gets unless it gives one: positive and within a C int, and
 * for the fields that size a model (num_hidden_layers, hidden_size, num_attention_heads, ...,
 * matched by the last component of a dotted path) a sane upper bound, so that nonsense such as
 * 0 heads or 100,000 layers is refused with the field's name before anything is built. */
void config_int_range(const char *field, int64_t *min, int64_t *max);
/* Checks every model-size field present in the config (at the top level and in text_config)
 * against config_int_range, reporting each one out of range; for commands, before a spec runs. */
int config_check_sizes(const config *c, kerr *err);
int config_float(const config *c, const char *field, int has_def, double def, double *out,
                 kerr *err);
int config_bool(const config *c, const char *field, int has_def, int def, int *out, kerr *err);
/* The returned string lives as long as the config. */
int config_string(const config *c, const char *field, int has_def, const char *def,
                  const char **out, kerr *err);

/* architectures[0]; an error when missing. */
int config_architecture(const config *c, const char **out, kerr *err);

#define CONFIG_MAX_LABEL 128 /* bytes of one id2label name */
/* The names of a classifier's n labels (xstrdup'd, *out an array of n the caller frees with
 * config_labels_free): id2label["i"], or HF's default "LABEL_i" when the config has no
 * id2label. An id2label that is not an object of n string names keyed "0" .. "n-1" is an
 * error naming the field. */
int config_labels(const config *c, int n, char ***out, kerr *err);
void config_labels_free(char **labels, int n);

#define ROPE_TYPES(X)        \
    X(DEFAULT, "default")    \
    X(LINEAR, "linear")      \
    X(DYNAMIC, "dynamic")    \
    X(YARN, "yarn")          \
    X(LLAMA3, "llama3")      \
    X(LONGROPE, "longrope")

typedef enum {
#define X(e, s) ROPE_##e,
    ROPE_TYPES(X)
#undef X
    ROPE_NTYPES
} rope_type;

const char *rope_type_name(rope_type t);

typedef struct rope_params {
    rope_type type;
    double theta;             /* base */
    double partial;           /* partial_rotary_factor, 1 when absent */
    double factor;            /* linear, dynamic, yarn, llama3 */
    int64_t max_pos;          /* max_position_embeddings (dynamic NTK's reference length) */
    int64_t original_max_pos; /* llama3, yarn */
    double low_freq_factor, high_freq_factor; /* llama3 */
    double beta_fast, beta_slow;              /* yarn */
    double attention_factor;                  /* yarn: scales cos and sin; 1 otherwise */
    int truncate;                             /* yarn */
    /* longrope (Phi-3): per rotary pair i, inv_freq[i] = 1 / (factor[i] * base^(2i/dim)) with
     * short_factor while the sequence is at most original_max_pos tokens long and long_factor
     * beyond; cos and sin are scaled by attention_factor, or long_attention_factor beyond. The
     * tables are stored inline (the struct is copied by value into every rope node), so their
     * length is bounded: ROPE_MAX_FACTORS pairs covers rotary dimensions up to 128. */
#define ROPE_MAX_FACTORS 64
    int n_factors;
    float short_factor[ROPE_MAX_FACTORS], long_factor[ROPE_MAX_FACTORS];
    double long_attention_factor;
} rope_params;

/* Reads the RoPE parameters in either convention. `layer_type` selects an entry when
 * rope_parameters is keyed per layer type; NULL otherwise. `theta_field` names the field
 * holding the base in configs that use their own name (Qwen v1: "rotary_emb_base"); NULL
 * for the standard "rope_theta". default_theta applies when no base is given anywhere. */
int config_rope(const config *c, const char *layer_type, const char *theta_field,
                double default_theta, rope_params *out, kerr *err);

#endif
