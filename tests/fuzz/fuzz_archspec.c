/* fuzz_archspec — archspecs (compiler/spec.h) run on hostile Lua, then the compiler's passes on
 * the graph they build.
 *
 * The input is written as spec.lua in a scratch folder and run as `kilnc --spec` would:
 * spec_probe reads its declarations, then spec_build runs its build function against a fixed
 * fixture model (config.json and weights, loaded once at start): the fixture whose architecture
 * the spec declares, else the Llama one. A graph that builds goes through every pass
 * (bind_weights, fuse, plan_memory, schedule; pipeline.c's kc_run, with the verifier between
 * passes).
 * Contracts: every failure leaves a message; no failure is an internal error (a graph the
 * verifier or a pass rejects after spec_build accepted it is a kilnc bug, which kc_run reports
 * as "internal error"). Hangs and memory blow-ups are findings through libFuzzer's -timeout and
 * -rss_limit_mb (make fuzz sets both): the spec sandbox must stop them first.
 */
#include "config.h"
#include "fuzz.h"
#include "pipeline.h"
#include "spec.h"

#define LIB FZ_FIXTURE("archspecs")

static const char *models[] = {"llama", "bert", "bloom", "mixtral", "qwen", "qwen2", "mistral"};
#define NMODELS ARRAY_LEN(models)
static config *cfgs[NMODELS];
static st_set *weights[NMODELS];
static const char *archs[NMODELS];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    for (size_t i = 0; i < NMODELS; i++) {
        char *dir = xasprintf("%s/%s", FZ_FIXTURE("tests/fixtures"), models[i]);
        char *cp = util_path_join(dir, "config.json");
        kerr e;
        kerr_clear(&e);
        cfgs[i] = config_load(cp, &e);
        weights[i] = cfgs[i] ? st_open(dir, &e) : NULL;
        if (!weights[i] || config_architecture(cfgs[i], &archs[i], &e)) {
            fprintf(stderr, "fuzz_archspec: %s\n", kerr_msg(&e));
            abort();
        }
        free(cp);
        free(dir);
    }
    return 0;
}

/* The fixture whose architecture the spec serves; the Llama one when none. */
static size_t pick(const spec_info *s)
{
    for (size_t m = 0; m < NMODELS; m++)
        for (int a = 0; a < s->n_archs; a++)
            if (strcmp(s->archs[a], archs[m]) == 0)
                return m;
    return 0;
}

/* How kc_run starts the line of a kilnc bug. A spec can put this text into a user error (a
 * tensor name, an error() message), and libFuzzer, which sees the strstr below, soon learns it:
 * such specs are skipped, and only a line that starts with it counts. */
#define IE "internal error:"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (memmem(data, size, "internal error", 14))
        return 0;
    const char *path = fz_write("spec.lua", data, size);
    kc c;
    memset(&c, 0, sizeof c);
    kerr e;
    kerr_clear(&e);
    if (spec_probe(path, LIB, &c.own_spec, &e)) {
        fz_check_err(&e);
        return 0;
    }
    size_t m = pick(&c.own_spec);
    c.spec = &c.own_spec;
    c.cfg = cfgs[m];
    c.weights = weights[m];
    c.max_tokens = 64;
    c.max_seqs = 4;
    c.max_seq_len = 128;
    c.act_dtype = ST_BF16;
    c.g = spec_build(c.spec, LIB, c.cfg, c.weights, &e);
    if (!c.g) {
        fz_check_err(&e);
    } else if (kc_run(&c, NULL, NULL, NULL, &e)) {
        fz_check_err(&e);
        const char *msg = kerr_msg(&e);
        FZ_CHECK(strncmp(msg, IE, strlen(IE)) != 0 && !strstr(msg, "\n" IE), "%s", msg);
    }
    /* the fixtures stay loaded for the next input */
    c.cfg = NULL;
    c.weights = NULL;
    kc_free(&c);
    return 0;
}
