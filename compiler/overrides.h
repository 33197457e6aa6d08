/* overrides — compile-time changes to a checkpoint's config, pooling and generation defaults,
 * given on kilnc's command line instead of by editing the model folder (issue 18; vLLM's
 * hf_config_path and --hf-overrides).
 *
 *   --config FILE             read FILE instead of MODEL_DIR/config.json
 *   --override KEY=VALUE      set a field; KEY is dotted (rope_scaling.factor), VALUE is JSON
 *   --override-new KEY=VALUE  the same, for a top-level key the config does not have
 *   --pooling mean|cls|last   the embedding model's pooling, instead of the archspec's
 *   --normalize yes|no        L2-normalise the pooled vector or not, instead of the archspec's
 *   --generation-config none  (compile) ignore generation_config.json's sampling defaults
 *
 * Overrides are applied to the parsed config once, in kc_open (pipeline.c), before the registry
 * resolves the archspec and before the archspec reads a field: every command that reads a config
 * (check, graph, ref, compile) sees the same effective config. Each applied change is kept as one
 * line ("--override rope_scaling.factor=8", old and new value) so that check can print it and
 * compile can record it in the manifest. The rules:
 *   - a dotted key walks objects; a missing intermediate object is created (rope_scaling.factor
 *     on a config with rope_scaling null makes {"factor": 8}); walking into a non-object is an
 *     error;
 *   - an unknown top-level key is an error naming the nearest known key, unless --override-new;
 *   - a new value of another JSON type than the existing one is an error (integer and number
 *     count as one type; null, and anything replacing null, is allowed: null means absent).
 * Library code: no printing, errors through kerr.
 */
#ifndef KILN_OVERRIDES_H
#define KILN_OVERRIDES_H

#include "artifact.h"
#include "config.h"
#include "graph.h"
#include "util.h"

#define OVR_MAX 64          /* --override flags per command */
#define OVR_MAX_LINE 4096   /* bytes of one recorded line (also the manifest's bound) */

typedef struct ovr_set {
    const char *config;       /* --config FILE, or NULL */
    int n;
    const char *kv[OVR_MAX];  /* KEY=VALUE as given */
    int is_new[OVR_MAX];      /* from --override-new */
    int pooling;              /* -1: the spec's; else kg_pool_mode */
    int normalize;            /* -1: the spec's; 0 or 1 */
    int no_generation_config; /* --generation-config none */
} ovr_set;

void ovr_init(ovr_set *o);

/* Takes one of the flags above (`flag` without "=VALUE", `val` its value) into `o`. Returns 1
 * when taken, 0 when `flag` is not an override flag, -1 with a message on a bad value. */
int ovr_flag(ovr_set *o, const char *flag, const char *val, kerr *err);

/* Appends `line` (heap; taken) to *lines, made valid UTF-8 and at most OVR_MAX_LINE bytes, as
 * the manifest requires. */
void ovr_add_line(char ***lines, int *nlines, char *line);

/* Applies o's --override flags to `c`, in order. Appends one line per change to *lines
 * (heap strings, *nlines counting them; each "--override KEY=NEW (was OLD)" where OLD is the
 * compact JSON or "absent"). On error nothing further is applied. */
int ovr_apply(config *c, const ovr_set *o, char ***lines, int *nlines, kerr *err);

/* Applies --pooling and --normalize to the graph's pooled output (after the archspec built it),
 * appending a line per change; an error when the model has no pooled output. */
int ovr_pool(kgraph *g, const char *spec_path, const ovr_set *o, char ***lines, int *nlines,
             kerr *err);

/* The generation defaults of a compiled model, into m (whose vocab must be set): eos ids and bos
 * from MODEL_DIR/generation_config.json (unless o says --generation-config none), then from
 * `cfg`; temperature, top_p, top_k and max_new_tokens from generation_config.json. Every value
 * is checked (type; finite; eos and bos within the vocabulary; temperature 0..100, top_p in
 * (0, 1], top_k and max_new_tokens not negative): an error names the file and the field.
 * With --generation-config none, appends its line to *lines. Embedding models (m->output_pool)
 * get none of these. */
int ovr_generation(const char *model_dir, const config *cfg, const ovr_set *o, ka_manifest *m,
                   char ***lines, int *nlines, kerr *err);

#endif
