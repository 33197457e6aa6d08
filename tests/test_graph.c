/* test_graph — the graph IR (compiler/graph.c), built directly with the graph_* builders.
 *
 * Shape inference of every op, each builder's misuse message (it must name the tensors and the
 * sizes involved), graph_verify on corrupted graphs, and the text form against a golden string.
 * Then the limits: weights are found by hash (the same tensor twice is one node, also after
 * graph_compact renumbers), a 10,000-layer Llama builds, fuses and plans in bounded time, absurd
 * weight sizes are refused, and finite_scan finds the first NaN or Inf in every float dtype.
 */
#include "testutil.h"

#include <math.h>

#include "config.h"
#include "graph.h"
#include "kc.h"
#include "passes/passes.h"
#include "spec.h"

static kerr E;
static kgraph *G;

static int setup(void **state)
{
    (void)state;
    kerr_clear(&E);
    G = graph_new();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    graph_free(G);
    G = NULL;
    return 0;
}

/* ---------------------------------------------------------------- helpers */

static const char *shape_of(int id)
{
    static char buf[96];
    assert_true(id >= 0 && id < G->n);
    return graph_shape_str(&G->nodes[id], buf, sizeof buf);
}

#define assert_shape(id, want) assert_string_equal(shape_of(id), want)

static int W1(const char *name, int64_t a)
{
    const int64_t s[1] = {a};
    int id = graph_weight(G, name, 1, s, &E);
    assert_true(id >= 0);
    return id;
}

static int W2(const char *name, int64_t a, int64_t b)
{
    const int64_t s[2] = {a, b};
    int id = graph_weight(G, name, 2, s, &E);
    assert_true(id >= 0);
    return id;
}

static int W3(const char *name, int64_t a, int64_t b, int64_t c)
{
    const int64_t s[3] = {a, b, c};
    int id = graph_weight(G, name, 3, s, &E);
    assert_true(id >= 0);
    return id;
}

/* An activation [T, width] named `name`: ids -> embed of a [V, width] table. */
static int act(const char *name, int64_t width)
{
    int ids = graph_input(G, KG_IN_IDS, &E);
    char wn[64];
    snprintf(wn, sizeof wn, "%s.table", name);
    int x = graph_embed(G, W2(wn, 10, width), ids, name, &E);
    assert_true(x >= 0);
    return x;
}

/* The builder call returned -1 and left a message with `op: ` first and `want` inside. */
static void expect_err(int id, const char *op, const char *want, const char *file, int line)
{
    if (id != -1)
        fail_msg("%s:%d: expected -1, got node %d", file, line, id);
    const char *m = kerr_msg(&E);
    char pre[32];
    snprintf(pre, sizeof pre, "%s: ", op);
    tu_assert_starts_with(m, pre, file, line);
    tu_assert_contains(m, want, file, line);
    kerr_clear(&E);
}
#define EXPECT_ERR(id, op, want) expect_err((id), (op), (want), __FILE__, __LINE__)

static int ok(int id)
{
    if (id < 0)
        fail_msg("builder failed: %s", kerr_msg(&E));
    return id;
}

/* ---------------------------------------------------------------- ops */

static void test_op_names(void **state)
{
    (void)state;
    for (int i = 0; i < KG_NOPS; i++)
        assert_int_equal(kg_op_parse(kg_op_name((kg_op)i)), i);
    assert_string_equal(kg_op_name(KG_RMS_NORM), "rms_norm");
    assert_string_equal(kg_op_name(KG_LOGITS), "logits");
    assert_string_equal(kg_op_name((kg_op)KG_NOPS), "?");
    assert_int_equal(kg_op_parse("matmul"), -1);
}

static void test_input(void **state)
{
    (void)state;
    graph_scope(G, "L3");
    int ids = ok(graph_input(G, KG_IN_IDS, &E));
    assert_shape(ids, "[T]");
    const kg_node *n = &G->nodes[ids];
    assert_int_equal(n->op, KG_INPUT);
    assert_int_equal(n->dtype, ST_I64);
    assert_false(n->is_const);
    assert_string_equal(n->name, "ids"); /* inputs are global: no layer prefix */
    assert_int_equal(graph_input(G, KG_IN_IDS, &E), ids); /* one node per kind */
    int pos = ok(graph_input(G, KG_IN_POSITIONS, &E));
    assert_int_not_equal(pos, ids);
    assert_string_equal(G->nodes[pos].name, "positions");
    assert_int_equal(G->inputs[KG_IN_POSITIONS], pos);
    assert_int_equal(G->inputs[KG_IN_TOKEN_TYPES], -1);
    assert_int_equal(G->n, 2);
    EXPECT_ERR(graph_input(G, (kg_input_kind)7, &E), "input", "unknown input kind 7");
}

static void test_weight(void **state)
{
    (void)state;
    graph_scope(G, "L0");
    int w = W2("model.embed_tokens.weight", 8, 4);
    const kg_node *n = &G->nodes[w];
    assert_int_equal(n->op, KG_WEIGHT);
    assert_true(n->is_const);
    assert_string_equal(n->name, "model.embed_tokens.weight"); /* the HF name, unprefixed */
    assert_string_equal(n->weight, "model.embed_tokens.weight");
    assert_shape(w, "[8, 4]");
    assert_int_equal(graph_numel_const(n), 32);
    /* asked for twice (tied embeddings): one node */
    assert_int_equal(W2("model.embed_tokens.weight", 8, 4), w);
    assert_int_equal(G->n, 1);
    const int64_t other[2] = {4, 8};
    EXPECT_ERR(graph_weight(G, "model.embed_tokens.weight", 2, other, &E), "weight",
               "'model.embed_tokens.weight' asked for as [4, 8], but earlier as [8, 4]");
    const int64_t s1[1] = {4};
    EXPECT_ERR(graph_weight(G, "model.embed_tokens.weight", 1, s1, &E), "weight",
               "asked for as [4], but earlier as [8, 4]");
    EXPECT_ERR(graph_weight(G, "", 1, s1, &E), "weight", "empty tensor name");
    EXPECT_ERR(graph_weight(G, NULL, 1, s1, &E), "weight", "empty tensor name");
    EXPECT_ERR(graph_weight(G, "w", 0, s1, &E), "weight", "'w': 0 dimensions (1..4 supported)");
    const int64_t s5[5] = {1, 1, 1, 1, 1};
    EXPECT_ERR(graph_weight(G, "w", 5, s5, &E), "weight", "'w': 5 dimensions (1..4 supported)");
    const int64_t z[2] = {4, 0};
    EXPECT_ERR(graph_weight(G, "w", 2, z, &E), "weight",
               "'w': dimension 1 is 0; expected a positive size");
    const int64_t t[2] = {KG_T, 4};
    EXPECT_ERR(graph_weight(G, "w", 2, t, &E), "weight", "'w': dimension 0 is -1");
    assert_int_equal(G->n, 1); /* failed calls add nothing */
}

static void test_reshape(void **state)
{
    (void)state;
    int x = act("x", 16);
    const int64_t s3[3] = {KG_T, 4, 4};
    int r = ok(graph_reshape(G, x, 3, s3, "heads", &E));
    assert_shape(r, "[T, 4, 4]");
    assert_false(G->nodes[r].is_const);
    assert_int_equal(G->nodes[r].in[0], x);
    const int64_t back[2] = {KG_T, 16};
    assert_shape(ok(graph_reshape(G, r, 2, back, NULL, &E)), "[T, 16]");
    const int64_t bad[3] = {KG_T, 3, 4};
    EXPECT_ERR(graph_reshape(G, x, 3, bad, NULL, &E), "reshape",
               "cannot reshape x [T, 16] to [T, 3, 4]: 16 elements per token vs 12");
    const int64_t not[2] = {4, 4};
    EXPECT_ERR(graph_reshape(G, x, 2, not, NULL, &E), "reshape",
               "the new shape of activation x [T, 16] must start with T");
    const int64_t neg[2] = {KG_T, -16};
    EXPECT_ERR(graph_reshape(G, x, 2, neg, NULL, &E), "reshape",
               "dimension 1 is -16; expected a positive size");
    EXPECT_ERR(graph_reshape(G, x, 5, s3, NULL, &E), "reshape", "5 dimensions (1..4 supported)");
    /* constants: all elements */
    int w = W2("w", 8, 4);
    const int64_t flat[1] = {32};
    int f = ok(graph_reshape(G, w, 1, flat, NULL, &E));
    assert_shape(f, "[32]");
    assert_true(G->nodes[f].is_const);
    const int64_t t30[1] = {30};
    EXPECT_ERR(graph_reshape(G, w, 1, t30, NULL, &E), "reshape",
               "cannot reshape weight 'w' [8, 4] to [30]: 32 elements vs 30");
}

static void test_slice(void **state)
{
    (void)state;
    int w = W2("qkv.weight", 12, 4);
    int q = ok(graph_slice(G, w, 0, 4, 4, "k.weight", &E));
    assert_shape(q, "[4, 4]");
    assert_true(G->nodes[q].is_const);
    assert_int_equal(G->nodes[q].dim, 0);
    assert_int_equal(G->nodes[q].start, 4);
    assert_int_equal(G->nodes[q].len, 4);
    int x = act("x", 16);
    int s = ok(graph_slice(G, x, -1, 4, 8, "mid", &E));
    assert_shape(s, "[T, 8]");
    assert_int_equal(G->nodes[s].dim, 1); /* negative dims count from the end */
    assert_false(G->nodes[s].is_const);
    EXPECT_ERR(graph_slice(G, x, 1, 14, 4, NULL, &E), "slice",
               "range [14, 18) is outside dimension 1 (size 16) of x [T, 16]");
    EXPECT_ERR(graph_slice(G, x, 1, -1, 4, NULL, &E), "slice", "range [-1, 3) is outside");
    EXPECT_ERR(graph_slice(G, x, 1, 0, 0, NULL, &E), "slice", "range [0, 0) is outside");
    EXPECT_ERR(graph_slice(G, w, 2, 0, 1, NULL, &E), "slice",
               "dimension 2 out of range for weight 'qkv.weight' [12, 4]");
    EXPECT_ERR(graph_slice(G, w, -3, 0, 1, NULL, &E), "slice", "dimension -3 out of range");
    EXPECT_ERR(graph_slice(G, x, 0, 0, 1, NULL, &E), "slice",
               "cannot slice the token dimension T of x [T, 16]");
}

static void test_concat(void **state)
{
    (void)state;
    int a = W2("a", 4, 4), b = W2("b", 2, 4);
    int ab[2] = {a, b};
    int c = ok(graph_concat(G, ab, 2, 0, "ab", &E));
    assert_shape(c, "[6, 4]");
    assert_true(G->nodes[c].is_const);
    assert_int_equal(G->nodes[c].n_in, 2);
    int x = act("x", 4), y = act("y", 8);
    int xy[2] = {x, y};
    int d = ok(graph_concat(G, xy, 2, -1, NULL, &E));
    assert_shape(d, "[T, 12]");
    assert_int_equal(G->nodes[d].dim, 1);
    int ba[2] = {a, W2("c", 4, 3)};
    EXPECT_ERR(graph_concat(G, ba, 2, 0, NULL, &E), "concat",
               "weight 'c' [4, 3] does not match weight 'a' [4, 4] outside dimension 0");
    int mixed[2] = {x, W1("v", 4)};
    EXPECT_ERR(graph_concat(G, mixed, 2, 1, NULL, &E), "concat",
               "weight 'v' [4] does not match x [T, 4] outside dimension 1");
    int wa[2] = {W2("d", 10, 4), x}; /* same rank, but a constant and an activation */
    EXPECT_ERR(graph_concat(G, wa, 2, 1, NULL, &E), "concat", "does not match weight 'd'");
    EXPECT_ERR(graph_concat(G, xy, 2, 0, NULL, &E), "concat",
               "cannot concatenate along the token dimension T");
    EXPECT_ERR(graph_concat(G, xy, 2, 2, NULL, &E), "concat", "dimension 2 out of range for x");
    EXPECT_ERR(graph_concat(G, xy, 0, 1, NULL, &E), "concat", "0 tensors (1..10 supported");
    int many[11] = {a, a, a, a, a, a, a, a, a, a, a};
    EXPECT_ERR(graph_concat(G, many, 11, 0, NULL, &E), "concat", "11 tensors");
    int badid[2] = {a, 999};
    EXPECT_ERR(graph_concat(G, badid, 2, 0, NULL, &E), "concat",
               "element 2 is not a tensor of this graph");
}

static void test_transpose(void **state)
{
    (void)state;
    int w = W2("c_attn.weight", 8, 24);
    int t = ok(graph_transpose(G, w, 0, 1, NULL, &E));
    assert_shape(t, "[24, 8]");
    assert_true(G->nodes[t].is_const);
    assert_int_equal(G->nodes[t].dim, 0);
    assert_int_equal(G->nodes[t].dim2, 1);
    EXPECT_ERR(graph_transpose(G, w, 0, 2, NULL, &E), "transpose",
               "dimensions 0, 2 out of range for 2-d c_attn.weight");
    int x = act("x", 4);
    EXPECT_ERR(graph_transpose(G, x, 0, 1, NULL, &E), "transpose",
               "the input must be a weight (or a view of weights), got activation x [T, 4]");
}

static void test_embed(void **state)
{
    (void)state;
    int ids = ok(graph_input(G, KG_IN_IDS, &E));
    int tab = W2("embed", 100, 8);
    int e = ok(graph_embed(G, tab, ids, "embed", &E));
    assert_shape(e, "[T, 8]");
    assert_false(G->nodes[e].is_const);
    assert_int_equal(G->nodes[e].in[0], tab);
    assert_int_equal(G->nodes[e].in[1], ids);
    /* indices that are not a graph input */
    EXPECT_ERR(graph_embed(G, tab, e, NULL, &E), "embed",
               "the indices must be a graph input (g:input(...)), got embed [T, 8]");
    EXPECT_ERR(graph_embed(G, tab, W1("idx", 4), NULL, &E), "embed",
               "the indices must be a graph input");
    EXPECT_ERR(graph_embed(G, e, ids, NULL, &E), "embed",
               "the table must be a weight (or a view of weights), got activation embed");
    EXPECT_ERR(graph_embed(G, W1("flat", 8), ids, NULL, &E), "embed",
               "the table must be 2-d [rows, width], got weight 'flat' [8]");
}

static void test_linear(void **state)
{
    (void)state;
    graph_scope(G, "L0");
    int h = act("h", 16);
    int w = W2("q.weight", 8, 16);
    int q = ok(graph_linear(G, h, w, -1, "q", &E));
    assert_shape(q, "[T, 8]");
    assert_int_equal(G->nodes[q].n_in, 2);
    assert_string_equal(G->nodes[q].name, "L0.q");
    int qb = ok(graph_linear(G, h, w, W1("q.bias", 8), "qb", &E));
    assert_int_equal(G->nodes[qb].n_in, 3);
    assert_shape(qb, "[T, 8]");
    /* the width mismatch names both tensors and both widths */
    EXPECT_ERR(graph_linear(G, h, W2("o.weight", 8, 12), -1, NULL, &E), "linear",
               "input L0.h [T, 16] has width 16 but weight 'o.weight' [8, 12] expects 12");
    EXPECT_ERR(graph_linear(G, h, w, W1("bad.bias", 16), NULL, &E), "linear",
               "the bias should be [8], got weight 'bad.bias' [16]");
    EXPECT_ERR(graph_linear(G, h, w, q, NULL, &E), "linear",
               "the bias must be a weight (or a view of weights), got activation L0.q");
    EXPECT_ERR(graph_linear(G, h, q, -1, NULL, &E), "linear",
               "the weight must be a weight (or a view of weights), got activation L0.q [T, 8]");
    EXPECT_ERR(graph_linear(G, w, w, -1, NULL, &E), "linear",
               "the input must be a per-token activation [T, ...], got weight 'q.weight' [8, 16]");
    EXPECT_ERR(graph_linear(G, h, W3("w3", 2, 4, 16), -1, NULL, &E), "linear",
               "the weight must be 2-d [out, in], got weight 'w3' [2, 4, 16]");
    const int64_t s3[3] = {KG_T, 4, 4};
    int r = ok(graph_reshape(G, h, 3, s3, "r", &E));
    EXPECT_ERR(graph_linear(G, r, w, -1, NULL, &E), "linear",
               "the input must be 2-d [T, width], got L0.r [T, 4, 4] (reshape first)");
    EXPECT_ERR(graph_linear(G, 999, w, -1, NULL, &E), "linear",
               "argument 1 is not a tensor of this graph");
    EXPECT_ERR(graph_linear(G, h, -7, -1, NULL, &E), "linear",
               "argument 2 is not a tensor of this graph");
}

static void test_norms(void **state)
{
    (void)state;
    int x = act("x", 16);
    int n = ok(graph_rms_norm(G, x, W1("norm.w", 16), 1e-6, 0, "n", &E));
    assert_shape(n, "[T, 16]");
    assert_true(G->nodes[n].eps == 1e-6);
    assert_int_equal(G->nodes[n].unit_offset, 0);
    int g = ok(graph_rms_norm(G, x, W1("norm.w", 16), 1e-6, 1, "gemma", &E));
    assert_int_equal(G->nodes[g].unit_offset, 1);
    EXPECT_ERR(graph_rms_norm(G, x, W1("short.w", 8), 1e-6, 0, NULL, &E), "rms_norm",
               "the weight should be [16], got weight 'short.w' [8]");
    EXPECT_ERR(graph_rms_norm(G, x, W1("norm.w", 16), 0, 0, NULL, &E), "rms_norm",
               "eps is 0; expected a small positive number");
    EXPECT_ERR(graph_rms_norm(G, x, W1("norm.w", 16), 2, 0, NULL, &E), "rms_norm", "eps is 2");
    EXPECT_ERR(graph_rms_norm(G, x, W1("norm.w", 16), NAN, 0, NULL, &E), "rms_norm", "eps is nan");
    EXPECT_ERR(graph_rms_norm(G, x, x, 1e-6, 0, NULL, &E), "rms_norm",
               "the weight must be a weight (or a view of weights), got activation x");
    int ln = ok(graph_layer_norm(G, x, W1("ln.w", 16), W1("ln.b", 16), 1e-5, "ln", &E));
    assert_int_equal(G->nodes[ln].n_in, 3);
    assert_shape(ln, "[T, 16]");
    int ln2 = ok(graph_layer_norm(G, x, W1("ln.w", 16), -1, 1e-5, NULL, &E));
    assert_int_equal(G->nodes[ln2].n_in, 2);
    EXPECT_ERR(graph_layer_norm(G, x, W1("ln.w", 16), W1("ln.b2", 15), 1e-5, NULL, &E),
               "layer_norm", "the bias should be [16], got weight 'ln.b2' [15]");
    EXPECT_ERR(graph_layer_norm(G, x, W1("ln.w", 16), -1, -1, NULL, &E), "layer_norm",
               "eps is -1");
    /* a weight per head: [heads, hd] over [T, heads, hd]; the bias like the weight */
    const int64_t s3[3] = {KG_T, 4, 4};
    int h3 = ok(graph_reshape(G, x, 3, s3, "heads", &E));
    int ph = ok(graph_layer_norm(G, h3, W2("ph.w", 4, 4), W2("ph.b", 4, 4), 1e-5, "ph", &E));
    assert_shape(ph, "[T, 4, 4]");
    ok(graph_rms_norm(G, h3, W2("ph.w", 4, 4), 1e-6, 0, NULL, &E));
    EXPECT_ERR(graph_rms_norm(G, h3, W2("ph3.w", 3, 4), 1e-6, 0, NULL, &E), "rms_norm",
               "the weight should be [4, 4], got weight 'ph3.w' [3, 4]");
    EXPECT_ERR(graph_layer_norm(G, h3, W2("ph.w", 4, 4), W1("ln.b4", 4), 1e-5, NULL, &E),
               "layer_norm", "the bias should be [4, 4], got weight 'ln.b4' [4]");
    EXPECT_ERR(graph_rms_norm(G, x, W2("ph.w", 4, 4), 1e-6, 0, NULL, &E), "rms_norm",
               "the weight should be [16], got weight 'ph.w' [4, 4]");
}

static kg_rope rope_of(int head_dim, int rot)
{
    kg_rope r = {0};
    r.p.type = ROPE_DEFAULT;
    r.p.theta = 10000;
    r.p.partial = 1;
    r.head_dim = head_dim;
    r.rot_dim = rot;
    return r;
}

static void test_rope(void **state)
{
    (void)state;
    int q = act("q", 16);
    int pos = ok(graph_input(G, KG_IN_POSITIONS, &E));
    kg_rope r = rope_of(4, 4);
    int qr = ok(graph_rope(G, q, pos, &r, "q_rope", &E));
    assert_shape(qr, "[T, 16]");
    assert_int_equal(G->nodes[qr].rope.head_dim, 4);
    assert_true(G->nodes[qr].rope.p.theta == 10000);
    kg_rope partial = rope_of(8, 4); /* partial rotary: rotates 4 of 8 */
    assert_true(graph_rope(G, q, pos, &partial, NULL, &E) >= 0);
    int ids = ok(graph_input(G, KG_IN_IDS, &E));
    EXPECT_ERR(graph_rope(G, q, ids, &r, NULL, &E), "rope",
               "the second argument must be g:input(\"positions\"), got ids [T]");
    kg_rope r5 = rope_of(5, 4);
    EXPECT_ERR(graph_rope(G, q, pos, &r5, NULL, &E), "rope",
               "width 16 of q is not a multiple of head_dim 5");
    kg_rope odd = rope_of(4, 3);
    EXPECT_ERR(graph_rope(G, q, pos, &odd, NULL, &E), "rope",
               "rotary dimension 3 must be even and within head_dim 4");
    kg_rope big = rope_of(4, 8);
    EXPECT_ERR(graph_rope(G, q, pos, &big, NULL, &E), "rope", "rotary dimension 8");
    const int64_t s3[3] = {KG_T, 4, 4};
    int q3 = ok(graph_reshape(G, q, 3, s3, "q3", &E));
    EXPECT_ERR(graph_rope(G, q3, pos, &r, NULL, &E), "rope",
               "the input must be 2-d [T, heads*head_dim], got q3 [T, 4, 4]");
}

static kg_attn attn_of(int heads, int kv, int hd)
{
    kg_attn a = {0};
    a.n_heads = heads;
    a.n_kv_heads = kv;
    a.head_dim = hd;
    a.causal = 1;
    a.scale = 1.0 / sqrt((double)hd);
    return a;
}

static void test_attention(void **state)
{
    (void)state;
    int q = act("q", 16), k = act("k", 8), v = act("v", 8);
    kg_attn a = attn_of(4, 2, 4);
    a.window = 4096;
    int o = ok(graph_attention(G, q, k, v, &a, "attn", &E));
    assert_shape(o, "[T, 16]");
    const kg_attn *na = &G->nodes[o].attn;
    assert_int_equal(na->n_heads, 4);
    assert_int_equal(na->n_kv_heads, 2);
    assert_int_equal(na->head_dim, 4);
    assert_int_equal(na->window, 4096);
    assert_int_equal(na->layer, 0);
    int o2 = ok(graph_attention(G, q, k, v, &a, "attn2", &E));
    assert_int_equal(G->nodes[o2].attn.layer, 1); /* KV-cache slots in build order */
    assert_int_equal(G->n_layers, 2);

    kg_attn bad = attn_of(6, 4, 4);
    EXPECT_ERR(graph_attention(G, q, k, v, &bad, NULL, &E), "attention",
               "6 query heads are not divisible by 4 key/value heads");
    kg_attn wide = attn_of(4, 4, 4);
    EXPECT_ERR(graph_attention(G, q, k, v, &wide, NULL, &E), "attention",
               "with 4 heads, 4 kv heads and head_dim 4, expected q [T, 16] and k, v [T, 16]; "
               "got q q [T, 16], k k [T, 8], v v [T, 8]");
    kg_attn zero = attn_of(0, 1, 4);
    EXPECT_ERR(graph_attention(G, q, k, v, &zero, NULL, &E), "attention",
               "heads 0, kv_heads 1, head_dim 4 must be positive");
    kg_attn win = attn_of(4, 2, 4);
    win.window = -1;
    EXPECT_ERR(graph_attention(G, q, k, v, &win, NULL, &E), "attention",
               "sliding window -1 is negative");
    kg_attn sc = attn_of(4, 2, 4);
    sc.scale = 0;
    EXPECT_ERR(graph_attention(G, q, k, v, &sc, NULL, &E), "attention", "scale 0 must be positive");
    EXPECT_ERR(graph_attention(G, q, W2("kw", 3, 8), v, &a, NULL, &E), "attention",
               "k must be a per-token activation [T, ...], got weight 'kw'");
    assert_int_equal(G->n_layers, 2); /* failures take no slot */
}

/* mla_attention: shapes inferred and checked, KV slots shared with attention's numbering */
static void test_mla(void **state)
{
    (void)state;
    /* 4 heads, nope 8, rope 4, v 6, latent 16 */
    int qn = act("q_nope", 32), qp = act("q_pe", 16), c = act("latent", 16), kp = act("k_pe", 4);
    int kvb = W2("kv_b", 4 * (8 + 6), 16);
    int ins[5] = {qn, qp, c, kp, kvb};
    kg_mla m = {.n_heads = 4, .nope_dim = 8, .rope_dim = 4, .v_dim = 6, .rank = 16, .scale = 0.25};
    kg_attn a = attn_of(4, 4, 4);
    int q = act("q", 16);
    ok(graph_attention(G, q, q, q, &a, "attn", &E));
    int o = ok(graph_mla(G, ins, &m, "mla", &E));
    assert_shape(o, "[T, 24]");
    assert_int_equal(G->nodes[o].mla.layer, 1); /* after the attention's slot 0 */
    assert_int_equal(G->n_layers, 2);
    kg_mla bad = m;
    bad.v_dim = 8;
    EXPECT_ERR(graph_mla(G, ins, &bad, NULL, &E), "mla_attention",
               "kv_b [heads*(nope_dim+v_dim), rank] should be [64, 16], got weight 'kv_b' [56, 16]");
    bad = m;
    bad.rank = 0;
    EXPECT_ERR(graph_mla(G, ins, &bad, NULL, &E), "mla_attention",
               "heads 4, nope_dim 8, rope_dim 4, v_dim 6 and rank 0 must be positive");
    bad = m;
    bad.scale = -1;
    EXPECT_ERR(graph_mla(G, ins, &bad, NULL, &E), "mla_attention", "scale -1 must be positive");
    int swapped[5] = {qn, qp, c, qp, kvb}; /* k_pe of the heads' width */
    EXPECT_ERR(graph_mla(G, swapped, &m, NULL, &E), "mla_attention", "k_pe should be [T, 4]");
    int wconst[5] = {qn, qp, c, kp, qn}; /* kv_b an activation */
    EXPECT_ERR(graph_mla(G, wconst, &m, NULL, &E), "mla_attention", "kv_b");
    assert_int_equal(G->n_layers, 2); /* failures take no slot */
}

static void test_unary(void **state)
{
    (void)state;
    int x = act("x", 8);
    static const kg_op ops[] = {KG_SILU, KG_GELU, KG_GELU_TANH, KG_RELU};
    for (size_t i = 0; i < ARRAY_LEN(ops); i++) {
        int y = ok(graph_unary(G, ops[i], x, NULL, &E));
        assert_int_equal(G->nodes[y].op, ops[i]);
        assert_shape(y, "[T, 8]");
        char want[32];
        snprintf(want, sizeof want, "%s.%d", kg_op_name(ops[i]), y); /* automatic name */
        assert_string_equal(G->nodes[y].name, want);
    }
    EXPECT_ERR(graph_unary(G, KG_ADD, x, NULL, &E), "add", "not an activation");
    EXPECT_ERR(graph_unary(G, KG_SILU, W1("b", 8), NULL, &E), "silu",
               "the input must be a per-token activation [T, ...], got weight 'b' [8]");
}

static void test_binary(void **state)
{
    (void)state;
    int x = act("x", 8), y = act("y", 8);
    int s = ok(graph_binary(G, KG_ADD, x, y, "sum", &E));
    assert_shape(s, "[T, 8]");
    int b = W1("bias", 8);
    /* a constant broadcasts over T; given first, it is put second */
    int m = ok(graph_binary(G, KG_MUL, b, x, NULL, &E));
    assert_int_equal(G->nodes[m].in[0], x);
    assert_int_equal(G->nodes[m].in[1], b);
    assert_false(G->nodes[m].is_const);
    int z = act("z", 4);
    EXPECT_ERR(graph_binary(G, KG_ADD, x, z, NULL, &E), "add",
               "shapes do not match: x [T, 8] and z [T, 4]");
    EXPECT_ERR(graph_binary(G, KG_MUL, x, W1("b4", 4), NULL, &E), "mul",
               "shapes do not match: x [T, 8] and weight 'b4' [4]");
    EXPECT_ERR(graph_binary(G, KG_ADD, b, b, NULL, &E), "add",
               "the first operand must be a per-token activation");
    EXPECT_ERR(graph_binary(G, KG_SILU, x, y, NULL, &E), "silu", "not a binary op");
}

static void test_scale(void **state)
{
    (void)state;
    int x = act("x", 8);
    int s = ok(graph_scale(G, x, 0.125, NULL, &E));
    assert_shape(s, "[T, 8]");
    assert_true(G->nodes[s].scalar == 0.125);
    EXPECT_ERR(graph_scale(G, x, INFINITY, NULL, &E), "scale", "factor inf is not finite");
    EXPECT_ERR(graph_scale(G, x, NAN, NULL, &E), "scale", "is not finite");
}

/* x [T, 8] and 4 experts of inner width 16; shared-expert slots empty. The nodes are made in
 * this order (an initializer list would leave it unspecified): x, router, gate, up, down. */
static void moe_inputs(int ins[9])
{
    ins[KG_MOE_X] = act("x", 8);
    ins[KG_MOE_ROUTER] = W2("router", 4, 8);
    ins[KG_MOE_GATE] = W3("gate", 4, 16, 8);
    ins[KG_MOE_UP] = W3("up", 4, 16, 8);
    ins[KG_MOE_DOWN] = W3("down", 4, 8, 16);
    for (int i = KG_MOE_SH_GATE; i <= KG_MOE_SH_GATE_W; i++)
        ins[i] = -1;
}

static void test_moe(void **state)
{
    (void)state;
    int ins[9];
    moe_inputs(ins);
    kg_moe m = {.n_experts = 4, .top_k = 2, .renormalize = 1};
    int y = ok(graph_moe(G, ins, &m, "moe", &E));
    assert_shape(y, "[T, 8]");
    assert_int_equal(G->nodes[y].n_in, 5);
    assert_int_equal(G->nodes[y].moe.top_k, 2);
    int sh[9];
    memcpy(sh, ins, sizeof sh);
    sh[KG_MOE_SH_GATE] = W2("sg", 12, 8);
    sh[KG_MOE_SH_UP] = W2("su", 12, 8);
    sh[KG_MOE_SH_DOWN] = W2("sd", 8, 12);
    sh[KG_MOE_SH_GATE_W] = W2("sgw", 1, 8);
    kg_moe ms = m;
    ms.has_shared = 1;
    ms.shared_gate = 1;
    int y2 = ok(graph_moe(G, sh, &ms, NULL, &E));
    assert_int_equal(G->nodes[y2].n_in, 9);

    kg_moe k5 = m;
    k5.top_k = 5;
    EXPECT_ERR(graph_moe(G, ins, &k5, NULL, &E), "moe",
               "top_k 5 must be between 1 and the number of experts 4");
    kg_moe e0 = m;
    e0.n_experts = 0;
    EXPECT_ERR(graph_moe(G, ins, &e0, NULL, &E), "moe", "0 experts; expected at least 1");
    int br[9];
    memcpy(br, ins, sizeof br);
    br[KG_MOE_ROUTER] = W2("router3", 3, 8);
    EXPECT_ERR(graph_moe(G, br, &m, NULL, &E), "moe",
               "the router should be [4, 8], got weight 'router3' [3, 8]");
    memcpy(br, ins, sizeof br);
    br[KG_MOE_GATE] = W2("gate2", 16, 8);
    EXPECT_ERR(graph_moe(G, br, &m, NULL, &E), "moe",
               "expert gate weights must be stacked [experts, inter, hidden], got weight 'gate2'");
    memcpy(br, ins, sizeof br);
    br[KG_MOE_DOWN] = W3("down2", 4, 16, 8);
    EXPECT_ERR(graph_moe(G, br, &m, NULL, &E), "moe",
               "the expert down weights should be [4, 8, 16], got weight 'down2' [4, 16, 8]");
    memcpy(br, sh, sizeof br);
    br[KG_MOE_SH_DOWN] = W2("sd2", 12, 8);
    EXPECT_ERR(graph_moe(G, br, &ms, NULL, &E), "moe",
               "the shared expert down should be [8, 12], got weight 'sd2' [12, 8]");
    memcpy(br, sh, sizeof br);
    br[KG_MOE_SH_GATE_W] = -1;
    EXPECT_ERR(graph_moe(G, br, &ms, NULL, &E), "moe", "argument 1 is not a tensor of this graph");
}

static void test_pool(void **state)
{
    (void)state;
    int x = act("x", 8);
    EXPECT_ERR(graph_pool(G, x, 7, 0, NULL, &E), "pool", "unknown mode 7");
    int p = ok(graph_pool(G, x, KILN_POOL_MEAN, 1, "pooled", &E));
    assert_shape(p, "[S, 8]");
    assert_int_equal(G->output, p);
    assert_int_equal(G->nodes[p].pool_normalize, 1);
    EXPECT_ERR(graph_pool(G, x, KILN_POOL_CLS, 0, NULL, &E), "pool",
               "the graph already has an output (pooled)");
    EXPECT_ERR(graph_logits(G, x, W2("head", 5, 8), -1, NULL, &E), "logits",
               "the graph already has an output (pooled)");
}

static void test_logits(void **state)
{
    (void)state;
    int x = act("x", 8);
    int head = W2("lm_head.weight", 32, 8);
    EXPECT_ERR(graph_logits(G, x, W2("wide", 32, 16), -1, NULL, &E), "logits",
               "input x [T, 8] does not fit head weight 'wide' [32, 16] [vocab, hidden]");
    EXPECT_ERR(graph_logits(G, x, x, -1, NULL, &E), "logits",
               "the head weight must be a weight (or a view of weights), got activation x");
    assert_int_equal(G->output, -1); /* failures set nothing */
    int l = ok(graph_logits(G, x, head, -1, "logits", &E));
    assert_shape(l, "[T, 32]");
    assert_int_equal(G->output, l);
    EXPECT_ERR(graph_logits(G, x, head, -1, NULL, &E), "logits",
               "the graph already has an output (logits)");
    EXPECT_ERR(graph_pool(G, x, KILN_POOL_MEAN, 0, NULL, &E), "pool",
               "the graph already has an output (logits)");
}

static void test_names_and_locations(void **state)
{
    (void)state;
    graph_set_loc(G, "/specs/llama.lua", 30);
    int x = act("x", 8);
    graph_scope(G, "L3");
    int y = ok(graph_unary(G, KG_SILU, x, "mlp.act", &E));
    assert_string_equal(G->nodes[y].name, "L3.mlp.act");
    assert_string_equal(G->nodes[y].spec_file, "/specs/llama.lua");
    assert_int_equal(G->nodes[y].spec_line, 30);
    char file[] = "/specs/llama.lua"; /* a different buffer, the same name: interned once */
    graph_set_loc(G, file, 31);
    int z = ok(graph_unary(G, KG_RELU, x, "", &E));
    assert_ptr_equal(G->nodes[z].spec_file, G->nodes[y].spec_file);
    assert_int_equal(G->nodes[z].spec_line, 31);
    assert_int_equal(G->nstrings, 1);
    char want[32];
    snprintf(want, sizeof want, "L3.relu.%d", z);
    assert_string_equal(G->nodes[z].name, want);
    graph_scope(G, NULL);
    graph_set_loc(G, NULL, 0);
    int u = ok(graph_unary(G, KG_GELU, x, "top", &E));
    assert_string_equal(G->nodes[u].name, "top");
    assert_null(G->nodes[u].spec_file);
}

static void test_many_nodes(void **state)
{
    (void)state;
    /* Builders pass the shape of an existing node to the node they add; the node array grows
     * (and moves) every 256 nodes: each new shape must still be read from live memory (ASan
     * catches a read of the old array). */
    int x = act("x", 8);
    for (int i = 0; i < 1100; i++) {
        x = ok(i % 2 ? graph_unary(G, KG_SILU, x, NULL, &E) : graph_scale(G, x, 0.5, NULL, &E));
        assert_shape(x, "[T, 8]");
    }
    assert_true(G->n > 1024);
    int head = W2("head", 4, 8);
    ok(graph_logits(G, x, head, -1, "logits", &E));
    assert_int_equal(graph_verify(G, &E), 0);
    /* graph_append of a copy of one of the graph's own nodes, across a growth of the array */
    while (G->n % 256)
        ok(graph_unary(G, KG_RELU, x, NULL, &E));
    int c = graph_append(G, &G->nodes[x]);
    assert_int_equal(c, G->n - 1);
    assert_shape(c, "[T, 8]");
    assert_string_equal(G->nodes[c].name, G->nodes[x].name);
    assert_ptr_not_equal(G->nodes[c].name, G->nodes[x].name);
}

/* ---------------------------------------------------------------- verify */

/* A small complete graph: ids -> embed -> rms_norm -> linear -> add -> logits. */
static void build_small(void)
{
    int ids = ok(graph_input(G, KG_IN_IDS, &E));
    int emb = W2("embed", 32, 8);
    int x = ok(graph_embed(G, emb, ids, "embed", &E));
    int h = ok(graph_rms_norm(G, x, W1("norm", 8), 1e-5, 0, "norm", &E));
    int y = ok(graph_linear(G, h, W2("proj", 8, 8), -1, "proj", &E));
    int r = ok(graph_binary(G, KG_ADD, x, y, "res", &E));
    ok(graph_logits(G, r, emb, -1, "logits", &E));
}

static void test_verify_ok(void **state)
{
    (void)state;
    build_small();
    assert_int_equal(graph_verify(G, &E), 0);
    assert_string_equal(kerr_msg(&E), "");
}

static void test_verify_forward_reference(void **state)
{
    (void)state;
    build_small();
    int y = 0;
    while (G->nodes[y].op != KG_LINEAR)
        y++;
    G->nodes[y].in[0] = y + 1;
    assert_int_equal(graph_verify(G, &E), -1);
    char want[128];
    snprintf(want, sizeof want, "verify: %%%d proj: input 0 refers to %%%d, which is not an "
                                "earlier node", y, y + 1);
    assert_contains(kerr_msg(&E), want);
    kerr_clear(&E);
    G->nodes[y].in[0] = y; /* itself */
    assert_int_equal(graph_verify(G, &E), -1);
    assert_contains(kerr_msg(&E), "which is not an earlier node");
    kerr_clear(&E);
    G->nodes[y].in[0] = -1; /* not optional for a linear's input */
    assert_int_equal(graph_verify(G, &E), -1);
    assert_contains(kerr_msg(&E), "input 0 refers to %-1");
}

static void test_verify_missing_output(void **state)
{
    (void)state;
    build_small();
    G->output = -1;
    assert_int_equal(graph_verify(G, &E), -1);
    assert_contains(kerr_msg(&E), "verify: the graph has no output: an archspec must end in "
                                  "g:logits(...) or g:pool(...)");
    kerr_clear(&E);
    G->output = G->n;
    assert_int_equal(graph_verify(G, &E), -1);
    assert_contains(kerr_msg(&E), "the graph has no output");
}

static void test_verify_other_corruptions(void **state)
{
    (void)state;
    build_small();
    kg_node *emb = &G->nodes[2]; /* embed activation */
    assert_int_equal(emb->op, KG_EMBED);
    emb->shape[0] = 4; /* activation without T */
    assert_int_equal(graph_verify(G, &E), -1);
    assert_contains(kerr_msg(&E), "verify: %2 embed: activation without T as dimension 0");
    emb->shape[0] = KG_T;
    kerr_clear(&E);
    emb->shape[1] = 0;
    assert_int_equal(graph_verify(G, &E), -1);
    assert_contains(kerr_msg(&E), "verify: %2 embed: dimension 1 is 0");
    emb->shape[1] = 8;
    kerr_clear(&E);
    emb->ndim = 0;
    assert_int_equal(graph_verify(G, &E), -1);
    assert_contains(kerr_msg(&E), "verify: %2 embed: 0 dimensions");
    emb->ndim = 2;
    kerr_clear(&E);
    emb->op = (kg_op)99;
    assert_int_equal(graph_verify(G, &E), -1);
    assert_contains(kerr_msg(&E), "verify: node 2 has invalid op 99");
    emb->op = KG_EMBED;
    kerr_clear(&E);
    emb->n_in = KG_MAX_IN + 1;
    assert_int_equal(graph_verify(G, &E), -1);
    assert_contains(kerr_msg(&E), "verify: %2 embed: 11 inputs");
    emb->n_in = 2;
    kerr_clear(&E);
    kg_node *w = &G->nodes[1];
    assert_int_equal(w->op, KG_WEIGHT);
    char *saved = w->weight;
    w->weight = NULL;
    assert_int_equal(graph_verify(G, &E), -1);
    assert_contains(kerr_msg(&E), "verify: %1 weight node without a tensor name");
    w->weight = saved;
    kerr_clear(&E);
    w->shape[0] = KG_T; /* a constant cannot have T */
    assert_int_equal(graph_verify(G, &E), -1);
    assert_contains(kerr_msg(&E), "verify: %1 embed: dimension 0 is -1");
    w->shape[0] = 32;
    kerr_clear(&E);
    assert_int_equal(graph_verify(G, &E), 0);
}

/* ---------------------------------------------------------------- text form */

static char *print_graph(void)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    graph_print(G, f);
    fclose(f);
    return buf;
}

static void test_print_golden(void **state)
{
    (void)state;
    graph_set_loc(G, "/specs/tiny.lua", 3);
    int ids = ok(graph_input(G, KG_IN_IDS, &E));
    int emb = W2("embed.weight", 8, 4);
    int x = ok(graph_embed(G, emb, ids, "embed", &E));
    graph_set_loc(G, "/specs/tiny.lua", 5);
    graph_scope(G, "L0");
    int h = ok(graph_rms_norm(G, x, W1("layers.0.norm.weight", 4), 1e-5, 1, "norm", &E));
    int wqkv = W2("layers.0.qkv.weight", 12, 4);
    int bqkv = W1("layers.0.qkv.bias", 12);
    int qkv = ok(graph_linear(G, h, wqkv, bqkv, "qkv", &E));
    graph_set_loc(G, "/specs/tiny.lua", 7);
    int q = ok(graph_slice(G, qkv, 1, 0, 4, "q", &E));
    int k = ok(graph_slice(G, qkv, 1, 4, 4, "k", &E));
    int v = ok(graph_slice(G, qkv, 1, 8, 4, "v", &E));
    int pos = ok(graph_input(G, KG_IN_POSITIONS, &E));
    kg_rope r = rope_of(2, 2);
    r.p.type = ROPE_LLAMA3;
    r.p.factor = 8;
    int qr = ok(graph_rope(G, q, pos, &r, "q_rope", &E));
    kg_attn a = attn_of(2, 2, 2);
    a.window = 16;
    a.softcap = 50;
    graph_set_loc(G, "/specs/tiny.lua", 9);
    int o = ok(graph_attention(G, qr, k, v, &a, "attn", &E));
    int s = ok(graph_scale(G, o, 0.5, NULL, &E));
    int res = ok(graph_binary(G, KG_ADD, x, s, "residual", &E));
    int wup = ok(graph_transpose(G, W2("layers.0.up.weight", 4, 6), 0, 1, "up.wt", &E));
    int up = ok(graph_linear(G, res, wup, -1, "up", &E));
    int act2 = ok(graph_unary(G, KG_GELU_TANH, up, "act", &E));
    const int64_t sh[3] = {KG_T, 2, 3};
    int rs = ok(graph_reshape(G, act2, 3, sh, "split", &E));
    (void)rs;
    graph_scope(G, NULL);
    graph_set_loc(G, "/specs/tiny.lua", 12);
    int ln = ok(graph_layer_norm(G, res, W1("norm.weight", 4), -1, 1e-6, "final_norm", &E));
    ok(graph_logits(G, ln, emb, -1, "logits", &E));
    assert_int_equal(graph_verify(G, &E), 0);

    char *text = print_graph();
    static const char golden[] =
        "%0    ids = input(ids) [T] I64  @tiny.lua:3\n"
        "%1    embed.weight = weight(\"embed.weight\") [8, 4] F32  @tiny.lua:3\n"
        "%2    embed = embed(%1, %0) [T, 4] F32  @tiny.lua:3\n"
        "%3    layers.0.norm.weight = weight(\"layers.0.norm.weight\") [4] F32  @tiny.lua:5\n"
        "%4    L0.norm = rms_norm(%2, %3; eps=1e-05 offset=1) [T, 4] F32  @tiny.lua:5\n"
        "%5    layers.0.qkv.weight = weight(\"layers.0.qkv.weight\") [12, 4] F32  @tiny.lua:5\n"
        "%6    layers.0.qkv.bias = weight(\"layers.0.qkv.bias\") [12] F32  @tiny.lua:5\n"
        "%7    L0.qkv = linear(%4, %5, %6) [T, 12] F32  @tiny.lua:5\n"
        "%8    L0.q = slice(%7; dim=1 start=0 len=4) [T, 4] F32  @tiny.lua:7\n"
        "%9    L0.k = slice(%7; dim=1 start=4 len=4) [T, 4] F32  @tiny.lua:7\n"
        "%10   L0.v = slice(%7; dim=1 start=8 len=4) [T, 4] F32  @tiny.lua:7\n"
        "%11   positions = input(positions) [T] I64  @tiny.lua:7\n"
        "%12   L0.q_rope = rope(%8, %11; llama3 theta=10000 head_dim=2 rot=2 factor=8) [T, 4] "
        "F32  @tiny.lua:7\n"
        "%13   L0.attn = attention(%12, %9, %10; heads=2 kv=2 head_dim=2 causal "
        "scale=0.707107 window=16 softcap=50 kv_slot=0) [T, 4] F32  @tiny.lua:9\n"
        "%14   L0.scale.14 = scale(%13; 0.5) [T, 4] F32  @tiny.lua:9\n"
        "%15   L0.residual = add(%2, %14) [T, 4] F32  @tiny.lua:9\n"
        "%16   layers.0.up.weight = weight(\"layers.0.up.weight\") [4, 6] F32  @tiny.lua:9\n"
        "%17   L0.up.wt = transpose(%16; dims=0,1) [6, 4] F32 const  @tiny.lua:9\n"
        "%18   L0.up = linear(%15, %17) [T, 6] F32  @tiny.lua:9\n"
        "%19   L0.act = gelu_tanh(%18) [T, 6] F32  @tiny.lua:9\n"
        "%20   L0.split = reshape(%19) [T, 2, 3] F32  @tiny.lua:9\n"
        "%21   norm.weight = weight(\"norm.weight\") [4] F32  @tiny.lua:12\n"
        "%22   final_norm = layer_norm(%15, %21; eps=1e-06) [T, 4] F32  @tiny.lua:12\n"
        "%23   logits = logits(%22, %1) [T, 8] F32  @tiny.lua:12\n"
        "output %23 logits\n";
    assert_string_equal(text, golden);
    free(text);
}

static void test_print_pool_and_moe(void **state)
{
    (void)state;
    int ins[9];
    moe_inputs(ins);
    kg_moe m = {.n_experts = 4, .top_k = 2, .renormalize = 1, .act = KILN_ACT_SILU};
    int y = ok(graph_moe(G, ins, &m, "moe", &E));
    ok(graph_pool(G, y, KILN_POOL_CLS, 1, "pool", &E));
    char *text = print_graph();
    assert_contains(text, " moe = moe(%2, %3, %4, %5, %6; experts=4 top_k=2 renormalize act=silu) "
                          "[T, 8] F32\n");
    assert_contains(text, " pool = pool(%7; cls normalize) [S, 8] F32\n");
    assert_contains(text, "output %8 pool\n");
    assert_not_contains(text, "@"); /* no location set: none printed */
    free(text);
}

/* ---------------------------------------------------------------- limits */

static void test_weight_dedup_by_hash(void **state)
{
    (void)state;
    /* many weights (the table grows), each asked twice: one node per name */
    int first[600];
    for (int i = 0; i < 600; i++) {
        char n[32];
        snprintf(n, sizeof n, "w%d", i);
        first[i] = W1(n, 4);
    }
    for (int i = 0; i < 600; i++) {
        char n[32];
        snprintf(n, sizeof n, "w%d", i);
        assert_int_equal(W1(n, 4), first[i]);
    }
    const int64_t s5[1] = {5};
    EXPECT_ERR(graph_weight(G, "w7", 1, s5, &E), "weight",
               "'w7' asked for as [5], but earlier as [4]");
    /* after graph_compact renumbers the nodes, and after graph_append adds one */
    int x = act("x", 4);
    ok(graph_logits(G, x, W2("head", 3, 4), -1, "logits", &E));
    graph_compact(G);
    int head = -1;
    for (int i = 0; i < G->n; i++)
        if (G->nodes[i].op == KG_WEIGHT && strcmp(G->nodes[i].weight, "head") == 0)
            head = i;
    assert_true(head >= 0);
    assert_int_equal(W2("head", 3, 4), head);
    kg_node p = G->nodes[head];
    p.weight = (char *)"appended";
    p.name = (char *)"appended";
    int a = graph_append(G, &p);
    assert_int_equal(W2("appended", 3, 4), a);
}

static void test_weight_absurd_sizes(void **state)
{
    (void)state;
    const int64_t big[2] = {(int64_t)1 << 31, 4};
    EXPECT_ERR(graph_weight(G, "big", 2, big, &E), "weight",
               "'big': dimension 0 is 2147483648; expected a positive size below 2^31");
    const int64_t huge[3] = {1 << 20, 1 << 20, 1 << 20};
    EXPECT_ERR(graph_weight(G, "huge", 3, huge, &E), "weight",
               "'huge': more than 2^36 elements; no checkpoint tensor is that large");
}

/* A Llama of `layers` layers of tiny width, built by archspecs/llama.lua without weights. */
static kgraph *build_llama_layers(int layers, kerr *err)
{
    char *dir = tu_tmpdir();
    char *cfgs = xasprintf("{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 8, "
                           "\"num_hidden_layers\": %d, \"num_attention_heads\": 2, "
                           "\"num_key_value_heads\": 1, \"intermediate_size\": 8, "
                           "\"vocab_size\": 16}",
                           layers);
    char *p = tu_write(dir, "config.json", cfgs);
    config *c = config_load(p, err);
    assert_non_null(c);
    spec_info s;
    const char *lib = KILN_SOURCE_DIR "/archspecs";
    assert_int_equal(spec_probe(KILN_SOURCE_DIR "/archspecs/llama.lua", lib, &s, err), 0);
    kgraph *g = spec_build(&s, lib, c, NULL, err);
    spec_info_free(&s);
    config_free(c);
    free(p);
    free(cfgs);
    tu_rmrf(dir);
    return g;
}

static void test_many_layers_linear(void **state)
{
    (void)state;
    /* 10,000 layers (the most config_check_sizes lets through): 250,000 nodes. Building,
     * verifying, fusing and planning used to search all nodes per weight and per sum
     * (quadratic: hours); now each is one pass. */
    double t0 = util_now();
    kgraph *g = build_llama_layers(10000, &E);
    if (!g)
        fail_msg("%s", kerr_msg(&E));
    double t_build = util_now() - t0;
    assert_int_equal(g->n_layers, 10000);
    assert_true(g->n > 250000);
    kc c;
    memset(&c, 0, sizeof c);
    c.g = g;
    c.max_tokens = 16;
    c.act_dtype = ST_BF16;
    assert_int_equal(graph_verify(c.g, &E), 0);
    assert_int_equal(pass_fuse(&c, &E), 0);
    assert_int_equal(graph_verify(c.g, &E), 0);
    assert_int_equal(pass_plan_memory(&c, &E), 0);
    double t_all = util_now() - t0;
    print_message("10,000 layers, %d nodes: built in %.2f s, then verified, fused and planned: "
                  "%.2f s\n",
                  c.g->n, t_build, t_all);
    assert_true(t_all < 60);
    /* both residual sums of every layer are fused into the next norm, and stored for the next
     * residual add, except the last, which only the final norm reads */
    int fused = 0, stored = 0;
    for (int i = 0; i < c.g->n; i++)
        if (c.g->nodes[i].op == KG_ADD && c.g->nodes[i].fused_into >= 0) {
            fused++;
            stored += c.g->nodes[i].stored;
        }
    assert_int_equal(fused, 2 * 10000);
    assert_int_equal(stored, fused - 1);
    graph_free(c.g);
}

static void test_verify_stored(void **state)
{
    (void)state;
    /* x + y fused into its norm, and read again by a later add: must be marked stored */
    int x = act("x", 8), y = act("y", 8);
    int a = ok(graph_binary(G, KG_ADD, x, y, "sum", &E));
    int n = ok(graph_rms_norm(G, a, W1("norm", 8), 1e-5, 0, "norm", &E));
    int r = ok(graph_binary(G, KG_ADD, a, n, "res", &E));
    ok(graph_logits(G, r, W2("head", 4, 8), -1, "logits", &E));
    G->nodes[a].fused_into = n;
    assert_int_equal(graph_verify(G, &E), -1);
    assert_contains(kerr_msg(&E), "sum: fused sum marked not stored, but another node reads it");
    kerr_clear(&E);
    G->nodes[a].stored = 1;
    assert_int_equal(graph_verify(G, &E), 0);
}

/* ---------------------------------------------------------------- non-finite weights */

static st_tensor tensor_of(st_dtype dt, int ndim, const int64_t *shape, const void *data)
{
    st_tensor t;
    memset(&t, 0, sizeof t);
    t.name = "t";
    t.dtype = dt;
    t.ndim = ndim;
    t.numel = 1;
    for (int i = 0; i < ndim; i++) {
        t.shape[i] = shape[i];
        t.numel *= (uint64_t)shape[i];
    }
    t.data = data;
    t.nbytes = t.numel * st_dtype_size(dt);
    return t;
}

static void test_finite_scan(void **state)
{
    (void)state;
    enum { N = 5000 };
    float f32[N];
    uint16_t f16[N], bf16[N];
    double f64[N];
    uint8_t e5m2[N], e4m3[N];
    int32_t i32[N], ok32[N];
    for (int i = 0; i < N; i++) {
        f32[i] = (float)i - 2500.0f;
        f16[i] = 0x3c00;  /* 1.0 */
        bf16[i] = 0xbf80; /* -1.0 */
        f64[i] = 1e300;
        e5m2[i] = 0x3c;   /* 1.0 */
        e4m3[i] = 0x7e;   /* 448, the largest finite */
        i32[i] = 0x7fc00000; /* NaN's bits, but an integer */
        ok32[i] = i;
    }
    uint32_t nan32 = 0x7fc00000u;
    memcpy(&f32[4321], &nan32, 4);
    memcpy(&f32[4999], &nan32, 4);
    f16[77] = 0x7c00;  /* Inf */
    bf16[4096] = 0xff80; /* -Inf, just past the first block */
    f64[0] = INFINITY;
    e5m2[10] = 0x7d;   /* NaN */
    e4m3[4000] = 0xff; /* NaN */
    const int64_t sh2[2] = {50, 100}, sh1[1] = {N}, sh3[3] = {10, 20, 25};
    st_tensor ts[] = {
        tensor_of(ST_F32, 2, sh2, f32),       tensor_of(ST_F16, 1, sh1, f16),
        tensor_of(ST_BF16, 3, sh3, bf16),     tensor_of(ST_F64, 1, sh1, f64),
        tensor_of(ST_F8_E5M2, 1, sh1, e5m2),  tensor_of(ST_F8_E4M3, 1, sh1, e4m3),
        tensor_of(ST_I32, 1, sh1, i32),       tensor_of(ST_F32, 1, sh1, ok32),
    };
    const st_tensor *tp[ARRAY_LEN(ts)];
    for (size_t i = 0; i < ARRAY_LEN(ts); i++)
        tp[i] = &ts[i];
    static const uint64_t want[] = {4321, 77, 4096, 0, 10, 4000, UINT64_MAX, UINT64_MAX};
    static const char *kind[] = {"NaN", "Inf", "-Inf", "Inf", "NaN", "NaN"};
    for (int threads = 1; threads <= 4; threads += 3) {
        uint64_t bad[ARRAY_LEN(ts)];
        finite_scan(tp, (int)ARRAY_LEN(ts), threads, bad);
        for (size_t i = 0; i < ARRAY_LEN(ts); i++) {
            if (bad[i] != want[i])
                fail_msg("tensor %zu (%s), %d threads: first bad %llu, expected %llu", i,
                         st_dtype_name(ts[i].dtype), threads, (unsigned long long)bad[i],
                         (unsigned long long)want[i]);
            if (want[i] != UINT64_MAX)
                assert_string_equal(finite_kind(&ts[i], bad[i]), kind[i]);
        }
    }
    /* a tensor of several chunks: the first bad element wins whichever thread finds it */
    size_t big = (size_t)3 << 22;
    uint16_t *b = xcalloc(big, sizeof(uint16_t));
    b[big - 1] = 0x7c00;
    b[((size_t)1 << 22) + 5] = 0xfe00; /* F16 NaN in the second chunk */
    const int64_t shb[1] = {(int64_t)big};
    st_tensor tb = tensor_of(ST_F16, 1, shb, b);
    const st_tensor *tbp = &tb;
    uint64_t bb;
    finite_scan(&tbp, 1, 4, &bb);
    assert_int_equal(bb, ((uint64_t)1 << 22) + 5);
    assert_string_equal(finite_kind(&tb, bb), "NaN");
    free(b);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_op_names),
        T(test_input),
        T(test_weight),
        T(test_reshape),
        T(test_slice),
        T(test_concat),
        T(test_transpose),
        T(test_embed),
        T(test_linear),
        T(test_norms),
        T(test_rope),
        T(test_attention),
        T(test_mla),
        T(test_unary),
        T(test_binary),
        T(test_scale),
        T(test_moe),
        T(test_pool),
        T(test_logits),
        T(test_names_and_locations),
        T(test_many_nodes),
        T(test_verify_ok),
        T(test_verify_forward_reference),
        T(test_verify_missing_output),
        T(test_verify_other_corruptions),
        T(test_print_golden),
        T(test_print_pool_and_moe),
        T(test_weight_dedup_by_hash),
        T(test_weight_absurd_sizes),
        T(test_many_layers_linear),
        T(test_verify_stored),
        T(test_finite_scan),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
