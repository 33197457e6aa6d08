/* fuzz_config — config.json parsing and the typed getters (compiler/config.h).
 *
 * The input is config.json's text. config_parse reads it; then every field path the document
 * holds (walked depth-first, dotted as archspecs write them: "rope_scaling.factor", bounded to
 * FZ_MAX_PATHS paths) is read through every getter, with and without a default, and a fixed
 * list of the fields archspecs read (some absent, some oddly spelt) likewise. config_rope runs
 * for each layer type and base field name the archspecs use.
 * Contracts: a getter that fails leaves a message; one that succeeds agrees with the JSON
 * (config_int on an integer gives that integer, config_string gives the string); a field that
 * config_has reports has a kind; config_rope's result has a known type and finite parameters.
 *
 * Then the config goes where a real one goes: the built-in archspec serving its architecture
 * (registry_resolve; KILN_SPEC_PATH is ignored) builds the graph from it, without weights, as
 * `kilnc graph` does. Structural nonsense (0 or 100,000 layers, 0 heads, huge sizes) must be an
 * error naming the field, never a crash, a hang or a blow-up; a graph that builds must pass the
 * verifier (a failure there is a kilnc bug).
 */
#include <jansson.h>
#include <math.h>

#include "config.h"
#include "fuzz.h"
#include "graph.h"
#include "registry.h"
#include "spec.h"

#define FZ_MAX_PATHS 256
#define FZ_MAX_PATH_LEN 512

static const char *fields[] = {
    "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "vocab_size", "intermediate_size", "max_position_embeddings", "head_dim", "rms_norm_eps",
    "rope_theta", "tie_word_embeddings", "hidden_act", "architectures", "model_type",
    "text_config.hidden_size", "rope_scaling.factor", "rope_scaling.type",
    "rope_parameters.rope_theta", "rope_parameters.full_attention.rope_type", "a.b.c.d.e.f",
    "", ".", "..", "hidden_size.", ".hidden_size", "rope_scaling..factor",
};

static const char *layer_types[] = {NULL, "full_attention", "sliding_attention", ""};
static const char *theta_fields[] = {NULL, "rotary_emb_base", "rope_scaling.factor"};

static registry *reg;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    unsetenv("KILN_SPEC_PATH");
    kerr e;
    kerr_clear(&e);
    reg = registry_load(NULL, 0, &e);
    if (!reg) {
        fprintf(stderr, "fuzz_config: %s\n", kerr_msg(&e));
        abort();
    }
    return 0;
}

/* The graph the archspec for this architecture builds from the config, as kilnc graph does. */
static void build(const config *c)
{
    kerr e;
    kerr_clear(&e);
    const spec_info *spec = registry_resolve(reg, c, &e);
    if (!spec) {
        fz_check_err(&e);
        return;
    }
    kgraph *g = spec_build(spec, reg->lib_dir, c, NULL, &e);
    if (!g) {
        fz_check_err(&e);
        return;
    }
    kerr_clear(&e);
    FZ_CHECK(graph_verify(g, &e) == 0, "the graph %s built fails verification: %s", spec->path,
             kerr_msg(&e));
    graph_free(g);
}

static void read_field(const config *c, const char *f)
{
    kerr e;
    json_t *v = config_get(c, f);
    FZ_CHECK(config_has(c, f) == (v != NULL), "config_has('%s') disagrees with config_get", f);
    FZ_CHECK(config_kind(v) && config_kind(v)[0], "config_kind of '%s' is empty", f);
    for (int has_def = 0; has_def < 2; has_def++) {
        int64_t i;
        kerr_clear(&e);
        if (config_int(c, f, has_def, 7, &i, &e))
            fz_check_err(&e);
        else if (json_is_integer(v))
            FZ_CHECK(i == json_integer_value(v), "config_int('%s') = %lld, JSON holds %lld", f,
                     (long long)i, (long long)json_integer_value(v));
        else if (!v)
            FZ_CHECK(has_def && i == 7, "config_int('%s') succeeded on an absent field", f);
        double d;
        kerr_clear(&e);
        if (config_float(c, f, has_def, 0.5, &d, &e))
            fz_check_err(&e);
        else if (json_is_real(v))
            FZ_CHECK(d == json_real_value(v), "config_float('%s') = %g, JSON holds %g", f, d,
                     json_real_value(v));
        int b;
        kerr_clear(&e);
        if (config_bool(c, f, has_def, 1, &b, &e))
            fz_check_err(&e);
        else if (json_is_boolean(v))
            FZ_CHECK(b == json_is_true(v), "config_bool('%s') = %d", f, b);
        const char *s;
        kerr_clear(&e);
        if (config_string(c, f, has_def, "def", &s, &e))
            fz_check_err(&e);
        else
            FZ_CHECK(s && (!json_is_string(v) || strcmp(s, json_string_value(v)) == 0),
                     "config_string('%s') = '%s'", f, s ? s : "(null)");
    }
}

/* Dotted paths of every value under `v`, depth first, at most FZ_MAX_PATHS of them. */
static void walk(const config *c, json_t *v, char *path, size_t len, int *budget)
{
    if (*budget <= 0)
        return;
    if (len) {
        --*budget;
        read_field(c, path);
    }
    if (!json_is_object(v))
        return;
    const char *k;
    json_t *child;
    json_object_foreach(v, k, child)
    {
        size_t kl = strlen(k);
        if (len + 1 + kl + 1 > FZ_MAX_PATH_LEN)
            continue;
        size_t n = len;
        if (n)
            path[n++] = '.';
        memcpy(path + n, k, kl + 1);
        walk(c, child, path, n + kl, budget);
        path[len] = 0;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fz_text(data, size);
    kerr e;
    kerr_clear(&e);
    config *c = config_parse(text, "config.json", &e);
    free(text);
    if (!c) {
        fz_check_err(&e);
        return 0;
    }
    char path[FZ_MAX_PATH_LEN] = "";
    int budget = FZ_MAX_PATHS;
    walk(c, c->root, path, 0, &budget);
    for (size_t i = 0; i < ARRAY_LEN(fields); i++)
        read_field(c, fields[i]);
    const char *arch;
    kerr_clear(&e);
    if (config_architecture(c, &arch, &e))
        fz_check_err(&e);
    else
        FZ_CHECK(arch != NULL, "config_architecture gave NULL");
    for (size_t l = 0; l < ARRAY_LEN(layer_types); l++)
        for (size_t t = 0; t < ARRAY_LEN(theta_fields); t++) {
            rope_params r;
            kerr_clear(&e);
            if (config_rope(c, layer_types[l], theta_fields[t], 10000.0, &r, &e)) {
                fz_check_err(&e);
                continue;
            }
            FZ_CHECK((unsigned)r.type < ROPE_NTYPES, "rope type %d", (int)r.type);
            FZ_CHECK(rope_type_name(r.type)[0] != '?', "rope type name");
            FZ_CHECK(isfinite(r.theta) && isfinite(r.partial) && isfinite(r.factor) &&
                         isfinite(r.attention_factor),
                     "config_rope accepted a non-finite parameter");
        }
    build(c);
    config_free(c);
    return 0;
}
