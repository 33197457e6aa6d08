/* pipeline — see pipeline.h. The one list of passes is here. */
#include "pipeline.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "lower.h"
#include "passes/passes.h"
#include "quant.h"

typedef struct pass {
    const char *name;
    int (*run)(kc *c, kerr *err);
} pass;

/* The pipeline: one pass per line, graph_verify between them (kc_run). */
static const pass passes[] = {
    {"bind_weights", pass_bind_weights},
    {"shard", pass_shard},
    {"fuse", pass_fuse},
    {"plan_memory", pass_plan_memory},
    {"schedule", pass_schedule},
};

int kc_npasses(void) { return (int)ARRAY_LEN(passes); }
const char *kc_pass_name(int i) { return passes[i].name; }

int kc_pass_index(const char *name)
{
    if (strcmp(name, "build") == 0)
        return -1;
    for (size_t i = 0; i < ARRAY_LEN(passes); i++)
        if (strcmp(passes[i].name, name) == 0)
            return (int)i;
    return -2;
}

int kc_run(kc *c, const char *upto, const char *dump_after, FILE *dump, kerr *err)
{
    int last = upto ? kc_pass_index(upto) : (int)ARRAY_LEN(passes) - 1;
    if (last == -2)
        return kerr_add(err, "unknown pass '%s'", upto);
    if (graph_verify(c->g, err))
        return kerr_add(err, "internal error: the graph built by %s fails verification (a kilnc "
                             "bug; please report it with the spec and config.json)",
                        c->spec->path);
    if (dump_after && strcmp(dump_after, "build") == 0)
        graph_print(c->g, dump);
    for (int i = 0; i <= last; i++) {
        if (passes[i].run(c, err))
            return -1;
        if (graph_verify(c->g, err))
            return kerr_add(err, "internal error: the graph fails verification after pass '%s' "
                                 "(a kilnc bug)",
                            passes[i].name);
        if (dump_after && strcmp(dump_after, passes[i].name) == 0) {
            if (passes[i].run == pass_schedule)
                lower_print(c->low, dump);
            else
                graph_print(c->g, dump);
        }
    }
    return 0;
}

void kc_free(kc *c)
{
    if (c->low) {
        lowered_free(c->low);
        free(c->low);
    }
    graph_free(c->g);
    quant_free(c);
    st_close(c->weights);
    config_free(c->cfg);
    registry_free(c->reg);
    spec_info_free(&c->own_spec);
    free(c->model_dir);
    free(c->config_path);
    for (int i = 0; i < c->n_overrides; i++)
        free(c->overrides[i]);
    free(c->overrides);
    memset(c, 0, sizeof *c);
}

int kc_open(kc *c, const char *model, const kc_opts *o, kerr *err)
{
    memset(c, 0, sizeof *c);
    c->strict = o->strict;
    c->allow_nonfinite = o->allow_nonfinite;
    /* 2,048 tokens a prefill step: the 8B's 2,048-token prompt in one step is 2.4% faster than
     * in two of 1,024 (the GEMMs' last waves fuller; tests/gpu/RESULTS.md, twenty-fifth session) */
    c->max_tokens = o->max_tokens ? o->max_tokens : 2048;
    c->max_seqs = o->max_seqs ? o->max_seqs : 16;
    c->max_seq_len = o->max_seq_len ? o->max_seq_len : 2048;
    c->act_dtype = o->act_dtype == ST_F16 ? ST_F16 : ST_BF16;
    c->quant_mode = o->quant_mode;
    c->calib_path = o->calib_path;
    c->calib_tokens = o->calib_tokens;
    c->tp = o->tp;
    c->gemm_kiln = o->gemm_kiln;
    c->sm90a_only = o->sm90a_only;
    c->sm_fp8 = o->sm_fp8;
    c->sm90 = o->sm90;
    c->smem_block = o->smem_block;
    c->fp8_dequant = o->fp8_dequant;
    c->batch_invariant = o->batch_invariant;
    c->kv_fp8 = o->kv_fp8;
    assert(!c->batch_invariant || c->gemm_kiln);
    if (!util_is_dir(model))
        return kerr_add(err, "%s: not a folder (expected a Hugging Face model folder with "
                             "config.json and *.safetensors)",
                        model);
    c->model_dir = xstrdup(model);
    /* the one place a config is loaded: overrides apply here, before the registry or the
     * archspec reads a field */
    const ovr_set *ov = o->ovr;
    if (ov && ov->config) {
        c->config_path = xstrdup(ov->config);
        if (!util_is_file(c->config_path))
            return kerr_add(err, "--config %s: no such file", ov->config);
        ovr_add_line(&c->overrides, &c->n_overrides, xasprintf("--config %s", ov->config));
    } else {
        c->config_path = util_path_join(model, "config.json");
        if (!util_is_file(c->config_path))
            return kerr_add(err, "%s: no config.json in this folder", model);
    }
    c->cfg = config_load(c->config_path, err);
    if (!c->cfg)
        return -1;
    if (ov && ov->n) {
        if (ovr_apply(c->cfg, ov, &c->overrides, &c->n_overrides, err))
            return -1;
        /* later messages about a field name the file and that it was overridden */
        char *p = xasprintf("%s (after --override)", c->cfg->path);
        free(c->cfg->path);
        c->cfg->path = p;
    }
    if (config_check_sizes(c->cfg, err))
        return -1;
    char *st_idx = util_path_join(model, "model.safetensors.index.json");
    char *st_one = util_path_join(model, "model.safetensors");
    int have_st = util_is_file(st_idx) || util_is_file(st_one);
    free(st_idx);
    free(st_one);
    if (have_st || o->need_weights) {
        c->weights = st_open(model, err);
        if (!c->weights)
            return -1;
    }
    c->reg = registry_load(o->spec_path, o->n_spec_path, err);
    if (!c->reg)
        return -1;
    if (o->spec) {
        if (spec_probe(o->spec, c->reg->lib_dir, &c->own_spec, err))
            return -1;
        c->spec = &c->own_spec;
    } else {
        c->spec = registry_resolve(c->reg, c->cfg, err);
        if (!c->spec)
            return -1;
    }
    c->g = spec_build(c->spec, c->reg->lib_dir, c->cfg, c->weights, err);
    if (!c->g || (ov && ovr_pool(c->g, c->spec->path, ov, &c->overrides, &c->n_overrides, err)))
        return -1;
    if (c->g->n_layers == 0)
        return kerr_add(err, "%s: the model %s builds has no attention layer; check the number "
                             "of layers in %s (e.g. num_hidden_layers)",
                        c->spec->path, c->spec->name, c->config_path);
    return 0;
}

int pass_schedule(kc *c, kerr *err)
{
    lowered *l = xcalloc(1, sizeof *l);
    if (lower(c, l, err)) {
        lowered_free(l);
        free(l);
        return -1;
    }
    c->low = l;
    return 0;
}
