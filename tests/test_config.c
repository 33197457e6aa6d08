/* test_config — the typed view of config.json (compiler/config.c).
 *
 * Typed reads (defaults, null as absent, dotted paths, integral floats as integers), every
 * error's message (the config.json path, the field, expected vs got), malformed JSON with
 * line:column, architectures, and config_rope in both generations of HF conventions: top-level
 * rope_theta + rope_scaling {type|rope_type}, and transformers 5's rope_parameters, flat or keyed
 * per layer type.
 */
#include "testutil.h"

#include <math.h>

#include "config.h"

#define CFG "/models/tiny/config.json"

static kerr E;
static char *D; /* a temp folder, for the tests that write files */

static int setup(void **state)
{
    (void)state;
    kerr_clear(&E);
    D = tu_tmpdir();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tu_rmrf(D);
    D = NULL;
    return 0;
}

/* Parses text that must be valid. */
static config *parse(const char *text)
{
    kerr e;
    kerr_clear(&e);
    config *c = config_parse(text, CFG, &e);
    if (!c)
        fail_msg("config_parse: %s", kerr_msg(&e));
    return c;
}

/* config_parse must fail; returns the message, which names the file. */
static const char *parse_fails(const char *text)
{
    kerr_clear(&E);
    config *c = config_parse(text, CFG, &E);
    if (c) {
        config_free(c);
        fail_msg("config_parse accepted %s", text);
    }
    assert_starts_with(kerr_msg(&E), CFG);
    return kerr_msg(&E);
}

static void assert_close(double a, double b)
{
    if (fabs(a - b) > 1e-12 * (fabs(b) + 1))
        fail_msg("%.17g != %.17g", a, b);
}

/* ---------------------------------------------------------------- typed reads */

static const char TYPED[] = "{\n"
                            "  \"hidden_size\": 4096,\n"
                            "  \"neg\": -3,\n"
                            "  \"as_float\": 4096.0,\n"
                            "  \"half\": 4096.5,\n"
                            "  \"huge\": 1e20,\n"
                            "  \"eps\": 1e-5,\n"
                            "  \"flag\": true,\n"
                            "  \"off\": false,\n"
                            "  \"act\": \"silu\",\n"
                            "  \"nothing\": null,\n"
                            "  \"list\": [1, 2],\n"
                            "  \"obj\": {},\n"
                            "  \"text_config\": {\"hidden_size\": 2048, \"deep\": {\"x\": 3},\n"
                            "                    \"gone\": null}\n"
                            "}\n";

static void test_int(void **state)
{
    (void)state;
    config *c = parse(TYPED);
    int64_t v = 0;
    assert_int_equal(config_int(c, "hidden_size", 0, 0, &v, &E), 0);
    assert_int_equal(v, 4096);
    assert_int_equal(config_int(c, "neg", 0, 0, &v, &E), 0);
    assert_int_equal(v, -3);
    /* some configs write 4096.0 */
    assert_int_equal(config_int(c, "as_float", 0, 0, &v, &E), 0);
    assert_int_equal(v, 4096);
    /* dotted paths */
    assert_int_equal(config_int(c, "text_config.hidden_size", 0, 0, &v, &E), 0);
    assert_int_equal(v, 2048);
    assert_int_equal(config_int(c, "text_config.deep.x", 0, 0, &v, &E), 0);
    assert_int_equal(v, 3);
    /* defaults: absent, and null (as transformers treats it) */
    assert_int_equal(config_int(c, "num_key_value_heads", 1, 32, &v, &E), 0);
    assert_int_equal(v, 32);
    assert_int_equal(config_int(c, "nothing", 1, 7, &v, &E), 0);
    assert_int_equal(v, 7);
    assert_int_equal(config_int(c, "text_config.gone", 1, 8, &v, &E), 0);
    assert_int_equal(v, 8);
    assert_int_equal(config_int(c, "text_config.nope.deeper", 1, 9, &v, &E), 0);
    assert_int_equal(v, 9);
    assert_string_equal(kerr_msg(&E), "");
    config_free(c);
}

static void test_int_errors(void **state)
{
    (void)state;
    config *c = parse(TYPED);
    int64_t v = 123;
    assert_int_equal(config_int(c, "half", 0, 0, &v, &E), -1);
    assert_string_equal(kerr_msg(&E),
                        CFG ": field 'half': expected an integer, got a number 4096.5");
    assert_int_equal(v, 123); /* untouched on error */
    kerr_clear(&E);
    assert_int_equal(config_int(c, "huge", 0, 0, &v, &E), -1);
    assert_contains(kerr_msg(&E), "field 'huge': expected an integer, got a number");
    kerr_clear(&E);
    assert_int_equal(config_int(c, "act", 1, 5, &v, &E), -1); /* a default does not hide a type error */
    assert_string_equal(kerr_msg(&E), CFG ": field 'act': expected an integer, got a string \"silu\"");
    kerr_clear(&E);
    assert_int_equal(config_int(c, "flag", 0, 0, &v, &E), -1);
    assert_string_equal(kerr_msg(&E), CFG ": field 'flag': expected an integer, got a boolean true");
    kerr_clear(&E);
    assert_int_equal(config_int(c, "list", 0, 0, &v, &E), -1);
    assert_string_equal(kerr_msg(&E), CFG ": field 'list': expected an integer, got an array [1,2]");
    kerr_clear(&E);
    assert_int_equal(config_int(c, "hidden_sizes", 0, 0, &v, &E), -1);
    assert_string_equal(kerr_msg(&E), CFG ": field 'hidden_sizes' is missing (expected an integer)");
    kerr_clear(&E);
    assert_int_equal(config_int(c, "nothing", 0, 0, &v, &E), -1);
    assert_string_equal(kerr_msg(&E), CFG ": field 'nothing' is missing (expected an integer)");
    kerr_clear(&E);
    assert_int_equal(config_int(c, "text_config.deep.y", 0, 0, &v, &E), -1);
    assert_string_equal(kerr_msg(&E),
                        CFG ": field 'text_config.deep.y' is missing (expected an integer)");
    config_free(c);
}

static void test_float(void **state)
{
    (void)state;
    config *c = parse(TYPED);
    double d = 0;
    assert_int_equal(config_float(c, "eps", 0, 0, &d, &E), 0);
    assert_close(d, 1e-5);
    assert_int_equal(config_float(c, "hidden_size", 0, 0, &d, &E), 0); /* integers are numbers */
    assert_close(d, 4096);
    assert_int_equal(config_float(c, "rms_norm_eps", 1, 1e-6, &d, &E), 0);
    assert_close(d, 1e-6);
    assert_int_equal(config_float(c, "nothing", 1, 0.5, &d, &E), 0);
    assert_close(d, 0.5);
    assert_int_equal(config_float(c, "act", 0, 0, &d, &E), -1);
    assert_string_equal(kerr_msg(&E), CFG ": field 'act': expected a number, got a string \"silu\"");
    kerr_clear(&E);
    assert_int_equal(config_float(c, "obj", 0, 0, &d, &E), -1);
    assert_string_equal(kerr_msg(&E), CFG ": field 'obj': expected a number, got an object {}");
    kerr_clear(&E);
    assert_int_equal(config_float(c, "rope_theta", 0, 0, &d, &E), -1);
    assert_string_equal(kerr_msg(&E), CFG ": field 'rope_theta' is missing (expected a number)");
    config_free(c);
}

static void test_bool(void **state)
{
    (void)state;
    config *c = parse(TYPED);
    int b = -1;
    assert_int_equal(config_bool(c, "flag", 0, 0, &b, &E), 0);
    assert_int_equal(b, 1);
    assert_int_equal(config_bool(c, "off", 1, 1, &b, &E), 0);
    assert_int_equal(b, 0);
    assert_int_equal(config_bool(c, "tie_word_embeddings", 1, 1, &b, &E), 0);
    assert_int_equal(b, 1);
    assert_int_equal(config_bool(c, "nothing", 1, 0, &b, &E), 0);
    assert_int_equal(b, 0);
    assert_int_equal(config_bool(c, "hidden_size", 0, 0, &b, &E), -1);
    assert_string_equal(kerr_msg(&E),
                        CFG ": field 'hidden_size': expected true or false, got an integer 4096");
    kerr_clear(&E);
    assert_int_equal(config_bool(c, "attention_bias", 0, 0, &b, &E), -1);
    assert_string_equal(kerr_msg(&E),
                        CFG ": field 'attention_bias' is missing (expected true or false)");
    config_free(c);
}

static void test_string(void **state)
{
    (void)state;
    config *c = parse(TYPED);
    const char *s = NULL;
    assert_int_equal(config_string(c, "act", 0, NULL, &s, &E), 0);
    assert_string_equal(s, "silu");
    assert_int_equal(config_string(c, "model_type", 1, "llama", &s, &E), 0);
    assert_string_equal(s, "llama");
    assert_int_equal(config_string(c, "nothing", 1, "dflt", &s, &E), 0);
    assert_string_equal(s, "dflt");
    assert_int_equal(config_string(c, "obj", 0, NULL, &s, &E), -1);
    assert_string_equal(kerr_msg(&E), CFG ": field 'obj': expected a string, got an object {}");
    kerr_clear(&E);
    assert_int_equal(config_string(c, "eps", 0, NULL, &s, &E), -1);
    assert_contains(kerr_msg(&E), CFG ": field 'eps': expected a string, got a number 1");
    kerr_clear(&E);
    assert_int_equal(config_string(c, "hidden_act", 0, NULL, &s, &E), -1);
    assert_string_equal(kerr_msg(&E), CFG ": field 'hidden_act' is missing (expected a string)");
    config_free(c);
}

static void test_has_get_kind(void **state)
{
    (void)state;
    config *c = parse(TYPED);
    assert_true(config_has(c, "hidden_size"));
    assert_true(config_has(c, "text_config.deep"));
    assert_false(config_has(c, "nothing")); /* null is absent */
    assert_false(config_has(c, "text_config.gone"));
    assert_false(config_has(c, "act.x")); /* through a non-object */
    assert_false(config_has(c, "missing"));
    assert_null(config_get(c, "nothing"));
    assert_non_null(config_get(c, "list"));
    assert_string_equal(config_kind(config_get(c, "obj")), "an object");
    assert_string_equal(config_kind(config_get(c, "list")), "an array");
    assert_string_equal(config_kind(config_get(c, "act")), "a string");
    assert_string_equal(config_kind(config_get(c, "hidden_size")), "an integer");
    assert_string_equal(config_kind(config_get(c, "eps")), "a number");
    assert_string_equal(config_kind(config_get(c, "off")), "a boolean");
    assert_string_equal(config_kind(NULL), "null");
    /* a key longer than the lookup buffer is simply absent, not an overflow */
    char longkey[400];
    memset(longkey, 'k', sizeof longkey - 1);
    longkey[sizeof longkey - 1] = 0;
    assert_false(config_has(c, longkey));
    config_free(c);
}

/* ---------------------------------------------------------------- malformed input */

static void test_malformed_json(void **state)
{
    (void)state;
    const char *m = parse_fails("{\n  \"a\": 1,\n  \"b\": ,\n}\n");
    assert_contains(m, CFG ":3:");
    assert_contains(m, "not valid JSON");
    m = parse_fails("{\"hidden_size\": 4096"); /* truncated */
    assert_contains(m, CFG ":1:");
    assert_contains(m, "not valid JSON");
    m = parse_fails("");
    assert_contains(m, "not valid JSON");
    m = parse_fails("{\"a\": 1,\n \"a\": 2}"); /* duplicate keys are refused, not last-wins */
    assert_contains(m, CFG ":2:");
    assert_contains(m, "duplicate");
}

static void test_malformed_column(void **state)
{
    (void)state;
    const char *m = parse_fails("{\"a\": 1,\n\"b\": tru}");
    assert_contains(m, CFG ":2:");
    /* line:column, both numbers */
    const char *p = strstr(m, CFG ":2:") + strlen(CFG ":2:");
    assert_true(*p >= '1' && *p <= '9');
}

static void test_top_level_not_object(void **state)
{
    (void)state;
    const char *m = parse_fails("[{\"hidden_size\": 1}]");
    assert_string_equal(m, CFG ": expected a JSON object at the top level, got an array");
    m = parse_fails("\"LlamaForCausalLM\""); /* jansson refuses scalars itself */
    assert_contains(m, CFG ":1:");
    assert_contains(m, "'[' or '{' expected");
}

static void test_load_file(void **state)
{
    (void)state;
    const char *d = D;
    char *p = tu_write(d, "config.json", "{\"hidden_size\": 8}");
    config *c = config_load(p, &E);
    assert_non_null(c);
    assert_string_equal(c->path, p);
    int64_t v;
    assert_int_equal(config_int(c, "hidden_size", 0, 0, &v, &E), 0);
    assert_int_equal(v, 8);
    config_free(c);
    free(p);

    p = tu_write(d, "config.json", "{\n  \"hidden_size\": 8,\n  \"vocab_size\": 64,,\n}");
    assert_null(config_load(p, &E));
    char *want = xasprintf("%s:3:", p);
    assert_starts_with(kerr_msg(&E), want);
    assert_contains(kerr_msg(&E), "not valid JSON");
    free(want);
    free(p);

    kerr_clear(&E);
    p = tu_path(d, "absent.json");
    assert_null(config_load(p, &E));
    assert_starts_with(kerr_msg(&E), p);
    assert_contains(kerr_msg(&E), "cannot read");
    free(p);

    kerr_clear(&E);
    p = tu_write(d, "config.json", "");
    assert_null(config_load(p, &E));
    assert_starts_with(kerr_msg(&E), p);
    assert_contains(kerr_msg(&E), "not valid JSON");
    free(p);

    kerr_clear(&E);
    p = tu_write(d, "config.json", "42");
    assert_null(config_load(p, &E));
    assert_starts_with(kerr_msg(&E), p);
    assert_contains(kerr_msg(&E), "'[' or '{' expected");
    free(p);
}

static void test_architectures(void **state)
{
    (void)state;
    config *c = parse("{\"architectures\": [\"MistralForCausalLM\", \"Other\"]}");
    const char *a = NULL;
    assert_int_equal(config_architecture(c, &a, &E), 0);
    assert_string_equal(a, "MistralForCausalLM");
    config_free(c);

    c = parse("{\"model_type\": \"llama\"}");
    assert_int_equal(config_architecture(c, &a, &E), -1);
    assert_starts_with(kerr_msg(&E), CFG ": field 'architectures' is missing");
    assert_contains(kerr_msg(&E), "--spec FILE");
    config_free(c);

    static const char *bad[] = {"{\"architectures\": []}", "{\"architectures\": [3]}",
                                "{\"architectures\": \"LlamaForCausalLM\"}"};
    static const char *got[] = {"got an array []", "got an array [3]",
                                "got a string \"LlamaForCausalLM\""};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        kerr_clear(&E);
        c = parse(bad[i]);
        assert_int_equal(config_architecture(c, &a, &E), -1);
        assert_starts_with(kerr_msg(&E),
                           CFG ": field 'architectures': expected a non-empty array of strings");
        assert_contains(kerr_msg(&E), got[i]);
        config_free(c);
    }
    kerr_clear(&E);
    c = parse("{\"architectures\": null}");
    assert_int_equal(config_architecture(c, &a, &E), -1);
    assert_contains(kerr_msg(&E), "field 'architectures' is missing");
    config_free(c);
}

/* ---------------------------------------------------------------- rope */

/* config_rope on `text`, which must succeed. */
static rope_params rope_ok(const char *text, const char *layer_type)
{
    config *c = parse(text);
    rope_params p;
    kerr e;
    kerr_clear(&e);
    if (config_rope(c, layer_type, NULL, 10000, &p, &e))
        fail_msg("config_rope(%s): %s", text, kerr_msg(&e));
    config_free(c);
    return p;
}

/* config_rope on `text`, which must fail; returns the message (starting with the file). */
static const char *rope_fails(const char *text, const char *layer_type)
{
    config *c = parse(text);
    rope_params p;
    kerr_clear(&E);
    if (config_rope(c, layer_type, NULL, 10000, &p, &E) == 0)
        fail_msg("config_rope accepted %s", text);
    config_free(c);
    assert_starts_with(kerr_msg(&E), CFG ": ");
    return kerr_msg(&E);
}

static void test_rope_default(void **state)
{
    (void)state;
    rope_params p = rope_ok("{\"rope_theta\": 500000.0, \"max_position_embeddings\": 8192}", NULL);
    assert_int_equal(p.type, ROPE_DEFAULT);
    assert_close(p.theta, 500000);
    assert_close(p.partial, 1);
    assert_close(p.attention_factor, 1);
    assert_int_equal(p.max_pos, 8192);
    /* rope_scaling null counts as absent */
    p = rope_ok("{\"rope_theta\": 1e6, \"rope_scaling\": null}", NULL);
    assert_int_equal(p.type, ROPE_DEFAULT);
    assert_close(p.theta, 1e6);
    assert_string_equal(rope_type_name(ROPE_DEFAULT), "default");
    assert_string_equal(rope_type_name(ROPE_LLAMA3), "llama3");
    assert_string_equal(rope_type_name((rope_type)42), "?");
}

static void test_rope_default_theta(void **state)
{
    (void)state;
    rope_params p = rope_ok("{}", NULL);
    assert_int_equal(p.type, ROPE_DEFAULT);
    assert_close(p.theta, 10000);
    config *c = parse("{\"max_position_embeddings\": 2048}");
    assert_int_equal(config_rope(c, NULL, NULL, 1e6, &p, &E), 0);
    assert_close(p.theta, 1e6);
    /* a model-specific field name for the base (Qwen v1) */
    config_free(c);
    c = parse("{\"rotary_emb_base\": 50000, \"rope_theta\": 7}");
    assert_int_equal(config_rope(c, NULL, "rotary_emb_base", 10000, &p, &E), 0);
    assert_close(p.theta, 50000);
    config_free(c);
}

static void test_rope_theta_bad(void **state)
{
    (void)state;
    const char *m = rope_fails("{\"rope_theta\": \"big\"}", NULL);
    assert_string_equal(m, CFG ": field 'rope_theta': expected a number, got a string \"big\"");
    m = rope_fails("{\"rope_theta\": 0.5}", NULL);
    assert_contains(m, "rope base (rope_theta) is 0.5; expected a number > 1");
    m = rope_fails("{\"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": \"x\"}}",
                   NULL);
    assert_contains(m, "field 'rope_parameters.rope_theta': expected a number, got a string");
    m = rope_fails("{\"max_position_embeddings\": \"long\"}", NULL);
    assert_contains(m, "field 'max_position_embeddings': expected an integer");
}

static void test_rope_linear_old_style(void **state)
{
    (void)state;
    rope_params p =
        rope_ok("{\"rope_theta\": 10000, \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}}",
                NULL);
    assert_int_equal(p.type, ROPE_LINEAR);
    assert_close(p.factor, 2);
    assert_close(p.theta, 10000);
    /* the newer key inside the old object */
    p = rope_ok("{\"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": 4}}", NULL);
    assert_int_equal(p.type, ROPE_LINEAR);
    assert_close(p.factor, 4);
    /* rope_type wins over a stale type */
    p = rope_ok("{\"rope_scaling\": {\"rope_type\": \"dynamic\", \"type\": \"linear\", "
                "\"factor\": 4}, \"max_position_embeddings\": 4096}",
                NULL);
    assert_int_equal(p.type, ROPE_DYNAMIC);
}

static void test_rope_linear_errors(void **state)
{
    (void)state;
    const char *m = rope_fails("{\"rope_scaling\": {\"type\": \"linear\"}}", NULL);
    assert_string_equal(m, CFG ": field 'rope_scaling.factor' is missing (expected a number; "
                               "required by this rope type)");
    m = rope_fails("{\"rope_scaling\": {\"type\": \"linear\", \"factor\": \"2\"}}", NULL);
    assert_contains(m, "field 'rope_scaling.factor': expected a number, got a string \"2\"");
    m = rope_fails("{\"rope_scaling\": {\"type\": \"linear\", \"factor\": 0}}", NULL);
    assert_contains(m, "rope 'linear' needs a positive 'factor', got 0");
    m = rope_fails("{\"rope_scaling\": \"linear\"}", NULL);
    assert_string_equal(m, CFG ": field 'rope_scaling': expected an object, got a string \"linear\"");
    m = rope_fails("{\"rope_scaling\": {\"type\": 3, \"factor\": 2}}", NULL);
    assert_contains(m, "field 'rope_scaling.");
    assert_contains(m, "expected a string, got an integer 3");
}

static void test_rope_dynamic(void **state)
{
    (void)state;
    rope_params p = rope_ok("{\"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 2}, "
                            "\"max_position_embeddings\": 4096}",
                            NULL);
    assert_int_equal(p.type, ROPE_DYNAMIC);
    assert_close(p.factor, 2);
    assert_int_equal(p.max_pos, 4096);
    const char *m = rope_fails("{\"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 2}}", NULL);
    assert_contains(m, "dynamic rope needs 'max_position_embeddings'");
}

static void test_rope_yarn_defaults(void **state)
{
    (void)state;
    rope_params p = rope_ok("{\"max_position_embeddings\": 32768, \"rope_theta\": 1e6, "
                            "\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4.0, "
                            "\"original_max_position_embeddings\": 8192}}",
                            NULL);
    assert_int_equal(p.type, ROPE_YARN);
    assert_close(p.factor, 4);
    assert_close(p.beta_fast, 32);
    assert_close(p.beta_slow, 1);
    assert_close(p.attention_factor, 0.1 * log(4.0) + 1);
    assert_int_equal(p.original_max_pos, 8192);
    assert_int_equal(p.max_pos, 32768);
    assert_int_equal(p.truncate, 1);
    assert_close(p.theta, 1e6);
}

static void test_rope_yarn_original_max_pos(void **state)
{
    (void)state;
    /* the top-level field wins over the one in the rope object (Phi-3 style configs) */
    rope_params p = rope_ok("{\"max_position_embeddings\": 131072, "
                            "\"original_max_position_embeddings\": 4096, "
                            "\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 32, "
                            "\"original_max_position_embeddings\": 8192}}",
                            NULL);
    assert_int_equal(p.original_max_pos, 4096);
    /* absent everywhere: max_position_embeddings */
    p = rope_ok("{\"max_position_embeddings\": 4096, "
                "\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 2}}",
                NULL);
    assert_int_equal(p.original_max_pos, 4096);
    /* no factor: the ratio of the two lengths */
    p = rope_ok("{\"max_position_embeddings\": 16384, "
                "\"rope_scaling\": {\"type\": \"yarn\", \"original_max_position_embeddings\": 4096}}",
                NULL);
    assert_close(p.factor, 4);
    assert_close(p.attention_factor, 0.1 * log(4.0) + 1);
    const char *m = rope_fails("{\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 2}}", NULL);
    assert_contains(m, "yarn rope needs original_max_position_embeddings");
    m = rope_fails("{\"original_max_position_embeddings\": \"4k\", "
                   "\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 2}}",
                   NULL);
    assert_contains(m, "field 'original_max_position_embeddings': expected an integer");
}

static void test_rope_yarn_options(void **state)
{
    (void)state;
    rope_params p = rope_ok("{\"max_position_embeddings\": 4096, \"rope_scaling\": {\"type\": "
                            "\"yarn\", \"factor\": 40, \"mscale\": 1.0, \"mscale_all_dim\": 0.5, "
                            "\"beta_fast\": 16, \"beta_slow\": 2, \"truncate\": false}}",
                            NULL);
    assert_close(p.attention_factor, (0.1 * log(40.0) + 1) / (0.1 * 0.5 * log(40.0) + 1));
    assert_close(p.beta_fast, 16);
    assert_close(p.beta_slow, 2);
    assert_int_equal(p.truncate, 0);
    /* an explicit attention_factor is used as is; 0 for beta means the default (`x or d`) */
    p = rope_ok("{\"max_position_embeddings\": 4096, \"rope_scaling\": {\"type\": \"yarn\", "
                "\"factor\": 8, \"attention_factor\": 0.8, \"beta_fast\": 0}}",
                NULL);
    assert_close(p.attention_factor, 0.8);
    assert_close(p.beta_fast, 32);
    /* factor <= 1: no scaling of cos/sin */
    p = rope_ok("{\"max_position_embeddings\": 4096, \"rope_scaling\": {\"type\": \"yarn\", "
                "\"factor\": 1}}",
                NULL);
    assert_close(p.attention_factor, 1);
    const char *m = rope_fails("{\"max_position_embeddings\": 4096, \"rope_scaling\": "
                               "{\"type\": \"yarn\", \"factor\": 2, \"beta_fast\": \"x\"}}",
                               NULL);
    assert_contains(m, "field 'rope_scaling.beta_fast': expected a number");
}

static const char LLAMA3[] = "{\"max_position_embeddings\": 131072, \"rope_theta\": 500000.0, "
                             "\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, "
                             "\"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
                             "\"original_max_position_embeddings\": 8192}}";

static void test_rope_llama3(void **state)
{
    (void)state;
    rope_params p = rope_ok(LLAMA3, NULL);
    assert_int_equal(p.type, ROPE_LLAMA3);
    assert_close(p.factor, 8);
    assert_close(p.low_freq_factor, 1);
    assert_close(p.high_freq_factor, 4);
    assert_int_equal(p.original_max_pos, 8192);
    assert_close(p.theta, 500000);
    assert_close(p.attention_factor, 1);
}

static void test_rope_llama3_errors(void **state)
{
    (void)state;
    const char *m = rope_fails("{\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, "
                               "\"high_freq_factor\": 4.0}}",
                               NULL);
    assert_string_equal(m, CFG ": field 'rope_scaling.low_freq_factor' is missing (expected a "
                               "number; required by this rope type)");
    m = rope_fails("{\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, "
                   "\"low_freq_factor\": 1.0}}",
                   NULL);
    assert_contains(m, "field 'rope_scaling.high_freq_factor' is missing");
    m = rope_fails("{\"rope_scaling\": {\"rope_type\": \"llama3\", \"low_freq_factor\": 1.0, "
                   "\"high_freq_factor\": 4.0}}",
                   NULL);
    assert_contains(m, "field 'rope_scaling.factor' is missing");
    m = rope_fails("{\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, "
                   "\"low_freq_factor\": 2.0, \"high_freq_factor\": 2.0}}",
                   NULL);
    assert_contains(m, "llama3 rope needs high_freq_factor != low_freq_factor");
}

/* Phi-3-mini-128k's layout: rope_scaling {type: longrope, short_factor, long_factor} and the
 * top-level original_max_position_embeddings, which wins over the rope object's (as
 * transformers' standardize_rope_params gives it priority). */
static void test_rope_longrope(void **state)
{
    (void)state;
    rope_params p = rope_ok("{\"max_position_embeddings\": 131072, \"original_max_position_embeddings\": "
                            "4096, \"rope_theta\": 10000.0, \"rope_scaling\": {\"type\": \"longrope\", "
                            "\"original_max_position_embeddings\": 99, \"short_factor\": [1, 1.5], "
                            "\"long_factor\": [2, 0.25]}}",
                            NULL);
    assert_int_equal(p.type, ROPE_LONGROPE);
    assert_int_equal(p.original_max_pos, 4096);
    assert_close(p.factor, 32);
    assert_close(p.attention_factor, sqrt(1 + log(32.0) / log(4096.0)));
    assert_close(p.long_attention_factor, p.attention_factor);
    assert_int_equal(p.n_factors, 2);
    assert_close(p.short_factor[1], 1.5);
    assert_close(p.long_factor[1], 0.25);
    /* explicit factor and attention_factor; the rope object's original length */
    p = rope_ok("{\"max_position_embeddings\": 64, \"rope_parameters\": {\"rope_type\": \"longrope\", "
                "\"rope_theta\": 1e4, \"factor\": 4, \"attention_factor\": 1.25, "
                "\"original_max_position_embeddings\": 8, \"short_factor\": [1], \"long_factor\": [3]}}",
                NULL);
    assert_int_equal(p.original_max_pos, 8);
    assert_close(p.factor, 4);
    assert_close(p.attention_factor, 1.25);
    /* refusals name the field */
    const char *m = rope_fails("{\"max_position_embeddings\": 64, \"rope_scaling\": {\"type\": "
                               "\"longrope\", \"short_factor\": [1, 2]}}",
                               NULL);
    assert_contains(m, "field 'rope_scaling.long_factor' is missing");
    m = rope_fails("{\"max_position_embeddings\": 64, \"rope_scaling\": {\"type\": \"longrope\", "
                   "\"short_factor\": [1, 2], \"long_factor\": [1, 0]}}",
                   NULL);
    assert_contains(m, "field 'rope_scaling.long_factor[1]' is not positive; expected a positive number");
    m = rope_fails("{\"max_position_embeddings\": 64, \"rope_scaling\": {\"type\": \"longrope\", "
                   "\"short_factor\": [1, 2], \"long_factor\": [1]}}",
                   NULL);
    assert_contains(m, "'rope_scaling.short_factor' has 2 entries and 'long_factor' 1");
    m = rope_fails("{\"max_position_embeddings\": 64, \"rope_scaling\": {\"type\": \"longrope\", "
                   "\"short_factor\": \"x\", \"long_factor\": [1]}}",
                   NULL);
    assert_contains(m, "field 'rope_scaling.short_factor'");
    assert_contains(m, "expected an array of 1 to 64 numbers");
}

static void test_rope_unknown_type(void **state)
{
    (void)state;
    const char *m = rope_fails("{\"rope_scaling\": {\"type\": \"proportional\", \"factor\": 2}}",
                               NULL);
    assert_contains(m, "field 'rope_scaling.rope_type' is 'proportional', which kiln does not "
                       "implement");
    assert_contains(m, "(supported: default, linear, dynamic, yarn, llama3, longrope)");
    m = rope_fails("{\"rope_parameters\": {\"rope_type\": \"foo\", \"rope_theta\": 10000}}", NULL);
    assert_contains(m, "field 'rope_parameters.rope_type' is 'foo'");
    assert_contains(m, "supported: default, linear, dynamic, yarn, llama3, longrope");
}

static void test_rope_parameters_new_style(void **state)
{
    (void)state;
    rope_params p = rope_ok("{\"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": "
                            "1000000.0}, \"max_position_embeddings\": 4096}",
                            NULL);
    assert_int_equal(p.type, ROPE_DEFAULT);
    assert_close(p.theta, 1e6);
    /* the base inside rope_parameters wins over a stale top-level one */
    p = rope_ok("{\"rope_theta\": 10000, \"rope_parameters\": {\"rope_type\": \"default\", "
                "\"rope_theta\": 500000}}",
                NULL);
    assert_close(p.theta, 500000);
    /* a non-empty rope_scaling wins over rope_parameters, as transformers 5.17 does
     * (`rope_parameters = rope_scaling or rope_parameters`; checked with LlamaConfig.from_dict:
     * linear, factor 2, theta 10000) */
    p = rope_ok("{\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2}, "
                "\"rope_parameters\": {\"rope_type\": \"llama3\", \"rope_theta\": 500000, "
                "\"factor\": 32, \"low_freq_factor\": 1, \"high_freq_factor\": 4, "
                "\"original_max_position_embeddings\": 8192}}",
                NULL);
    assert_int_equal(p.type, ROPE_LINEAR);
    assert_close(p.factor, 2);
    assert_close(p.theta, 10000);
    /* no base inside: the top-level rope_theta */
    p = rope_ok("{\"rope_theta\": 20000, \"rope_parameters\": {\"rope_type\": \"linear\", "
                "\"factor\": 2}}",
                NULL);
    assert_close(p.theta, 20000);
    assert_int_equal(p.type, ROPE_LINEAR);
    const char *m = rope_fails("{\"rope_parameters\": {\"rope_type\": \"llama3\", \"rope_theta\": "
                               "500000, \"factor\": 8, \"high_freq_factor\": 4}}",
                               NULL);
    assert_contains(m, "field 'rope_parameters.low_freq_factor' is missing");
}

static const char KEYED[] =
    "{\"max_position_embeddings\": 8192, \"rope_parameters\": {"
    "\"full_attention\": {\"rope_type\": \"linear\", \"factor\": 8.0, \"rope_theta\": 1000000.0},"
    "\"sliding_attention\": {\"rope_type\": \"default\", \"rope_theta\": 10000.0}}}";

static void test_rope_parameters_per_layer_type(void **state)
{
    (void)state;
    rope_params p = rope_ok(KEYED, "full_attention");
    assert_int_equal(p.type, ROPE_LINEAR);
    assert_close(p.factor, 8);
    assert_close(p.theta, 1e6);
    p = rope_ok(KEYED, "sliding_attention");
    assert_int_equal(p.type, ROPE_DEFAULT);
    assert_close(p.theta, 10000);
    /* a flat rope_parameters serves every layer type */
    p = rope_ok("{\"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 1e6}}",
                "sliding_attention");
    assert_close(p.theta, 1e6);
    /* errors name the entry */
    const char *m = rope_fails("{\"rope_parameters\": {\"full_attention\": {\"rope_type\": "
                               "\"llama3\", \"factor\": 8, \"rope_theta\": 1e6}}}",
                               "full_attention");
    assert_contains(m, "field 'rope_parameters.full_attention.low_freq_factor' is missing");
    m = rope_fails("{\"rope_parameters\": {\"sliding_attention\": {\"rope_type\": \"proportional\"}}}",
                   "sliding_attention");
    assert_contains(m, "field 'rope_parameters.sliding_attention.rope_type' is 'proportional'");
}

static void test_rope_per_layer_type_not_chosen(void **state)
{
    (void)state;
    /* Keyed per layer type, but the spec did not say which (or named one that is not there):
     * an error, not the default base 10000 for every layer. */
    const char *m = rope_fails(KEYED, NULL);
    assert_contains(m, "rope_parameters");
    assert_contains(m, "full_attention");
    assert_contains(m, "sliding_attention");
    assert_contains(m, "layer_type");
    m = rope_fails(KEYED, "chunked_attention");
    assert_contains(m, "chunked_attention");
    assert_contains(m, "full_attention");
}

static void test_rope_partial(void **state)
{
    (void)state;
    rope_params p = rope_ok("{\"partial_rotary_factor\": 0.5}", NULL);
    assert_close(p.partial, 0.5);
    /* inside the rope object wins */
    p = rope_ok("{\"partial_rotary_factor\": 0.5, \"rope_parameters\": {\"rope_type\": "
                "\"default\", \"rope_theta\": 10000, \"partial_rotary_factor\": 0.25}}",
                NULL);
    assert_close(p.partial, 0.25);
    p = rope_ok("{\"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 10000, "
                "\"partial_rotary_factor\": 0.75}}",
                NULL);
    assert_close(p.partial, 0.75);
    const char *m = rope_fails("{\"partial_rotary_factor\": 1.5}", NULL);
    assert_contains(m, "partial_rotary_factor is 1.5; expected 0 < x <= 1");
    m = rope_fails("{\"partial_rotary_factor\": 0}", NULL);
    assert_contains(m, "partial_rotary_factor is 0");
    m = rope_fails("{\"partial_rotary_factor\": \"half\"}", NULL);
    assert_contains(m, "field 'partial_rotary_factor': expected a number, got a string \"half\"");
    m = rope_fails("{\"rope_parameters\": {\"rope_type\": \"default\", \"partial_rotary_factor\": "
                   "[1]}}",
                   NULL);
    assert_contains(m, "field 'rope_parameters.partial_rotary_factor': expected a number");
}

/* ---------------------------------------------------------------- ranges */

static void test_int_in(void **state)
{
    (void)state;
    config *c = parse("{\"a\": 5, \"z\": 0, \"f\": 3.0}");
    int64_t v = 0;
    assert_int_equal(config_int_in(c, "a", 0, 0, 1, 5, &v, &E), 0);
    assert_int_equal(v, 5);
    assert_int_equal(config_int_in(c, "f", 0, 0, 3, 3, &v, &E), 0);
    assert_int_equal(v, 3);
    assert_int_equal(config_int_in(c, "a", 0, 0, 1, 4, &v, &E), -1);
    assert_starts_with(kerr_msg(&E), CFG ": field 'a' is 5; expected 1 to 4");
    kerr_clear(&E);
    assert_int_equal(config_int_in(c, "z", 0, 0, 1, INT64_MAX, &v, &E), -1);
    assert_starts_with(kerr_msg(&E), CFG ": field 'z' is 0; expected at least 1");
    kerr_clear(&E);
    /* the default is checked too, and the message says it was the default */
    assert_int_equal(config_int_in(c, "absent", 1, 0, 1, 9, &v, &E), -1);
    assert_starts_with(kerr_msg(&E), CFG ": field 'absent' is absent, and its default, 0, is out "
                                         "of range (expected 1 to 9)");
    kerr_clear(&E);
    /* type errors stay type errors */
    config_free(c);
    c = parse("{\"a\": \"5\"}");
    assert_int_equal(config_int_in(c, "a", 0, 0, 1, 9, &v, &E), -1);
    assert_contains(kerr_msg(&E), "field 'a': expected an integer, got a string \"5\"");
    config_free(c);
}

static void test_int_range_defaults(void **state)
{
    (void)state;
    int64_t lo, hi;
    config_int_range("sliding_window", &lo, &hi); /* any field: a positive C int */
    assert_int_equal(lo, 1);
    assert_int_equal(hi, INT32_MAX);
    config_int_range("num_hidden_layers", &lo, &hi);
    assert_int_equal(hi, 10000);
    config_int_range("text_config.num_hidden_layers", &lo, &hi); /* by the last component */
    assert_int_equal(hi, 10000);
    config_int_range("hidden_size", &lo, &hi);
    assert_int_equal(hi, 1 << 20);
    config_int_range("num_attention_heads", &lo, &hi);
    assert_int_equal(lo, 1);
    assert_int_equal(hi, 1 << 14);
}

static void test_check_sizes(void **state)
{
    (void)state;
    /* every structural nonsense of the issue, each named with the file and the field */
    static const struct {
        const char *json, *want;
    } cases[] = {
        {"{\"num_hidden_layers\": 0}", "field 'num_hidden_layers' is 0; expected 1 to 10000"},
        {"{\"num_hidden_layers\": -2}", "field 'num_hidden_layers' is -2; expected 1 to 10000"},
        {"{\"num_hidden_layers\": 100000}",
         "field 'num_hidden_layers' is 100000; expected 1 to 10000"},
        {"{\"n_layer\": 0}", "field 'n_layer' is 0"},
        {"{\"num_attention_heads\": 0}", "field 'num_attention_heads' is 0; expected 1 to 16384"},
        {"{\"num_key_value_heads\": 0}", "field 'num_key_value_heads' is 0"},
        {"{\"max_position_embeddings\": 0}",
         "field 'max_position_embeddings' is 0; expected 1 to 2147483647"},
        {"{\"hidden_size\": 0}", "field 'hidden_size' is 0"},
        {"{\"hidden_size\": 4294967296}", "field 'hidden_size' is 4294967296; expected 1 to "
                                          "1048576"},
        {"{\"intermediate_size\": 0}", "field 'intermediate_size' is 0"},
        {"{\"vocab_size\": 0}", "field 'vocab_size' is 0"},
        {"{\"head_dim\": 0}", "field 'head_dim' is 0"},
        {"{\"text_config\": {\"vocab_size\": -1}}", "field 'text_config.vocab_size' is -1"},
        {"{\"num_attention_heads\": 32, \"num_key_value_heads\": 5}",
         "field 'num_attention_heads' (32) is not divisible by field 'num_key_value_heads' (5)"},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        config *c = parse(cases[i].json);
        kerr_clear(&E);
        assert_int_equal(config_check_sizes(c, &E), -1);
        char *want = xasprintf(CFG ": %s", cases[i].want);
        assert_starts_with(kerr_msg(&E), want);
        free(want);
        config_free(c);
    }
    /* a real config passes; absent, null and mistyped fields are left to the spec's reads */
    config *c = parse("{\"num_hidden_layers\": 32, \"hidden_size\": 4096, \"num_attention_heads\": "
                      "32, \"num_key_value_heads\": 8, \"head_dim\": null, \"vocab_size\": "
                      "\"many\", \"max_position_embeddings\": 131072.0}");
    kerr_clear(&E);
    assert_int_equal(config_check_sizes(c, &E), 0);
    config_free(c);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_int),
        T(test_int_errors),
        T(test_float),
        T(test_bool),
        T(test_string),
        T(test_has_get_kind),
        T(test_malformed_json),
        T(test_malformed_column),
        T(test_top_level_not_object),
        T(test_load_file),
        T(test_architectures),
        T(test_rope_default),
        T(test_rope_default_theta),
        T(test_rope_theta_bad),
        T(test_rope_linear_old_style),
        T(test_rope_linear_errors),
        T(test_rope_dynamic),
        T(test_rope_yarn_defaults),
        T(test_rope_yarn_original_max_pos),
        T(test_rope_yarn_options),
        T(test_rope_llama3),
        T(test_rope_llama3_errors),
        T(test_rope_longrope),
        T(test_rope_unknown_type),
        T(test_rope_parameters_new_style),
        T(test_rope_parameters_per_layer_type),
        T(test_rope_per_layer_type_not_chosen),
        T(test_rope_partial),
        T(test_int_in),
        T(test_int_range_defaults),
        T(test_check_sizes),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
