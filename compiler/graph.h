/* graph — kiln's graph IR: what an archspec builds and every pass transforms.
 *
 * A graph is an array of nodes in topological order (a node's inputs always come before it).
 * Building records nodes and computes nothing (as in ggml). Every op is defined once, in
 * KG_OPS below, which feeds the enum, the printed names and the Lua-visible names.
 *
 * Shapes are static, except the token dimension T (KG_T), which is dimension 0 of every
 * activation; constants (weights and views of weights) have no T. Pooled outputs are per
 * sequence (KG_S). Every node carries a name with its layer ("L3.attn.q") so intermediates
 * can be compared with a reference layer by layer, and the archspec file:line that made it.
 *
 * The builder functions (graph_linear, ...) check their arguments and infer shapes; a misuse
 * is a user error reported with the spec location, never an assert. graph_verify re-checks
 * the invariants after every pass, where a failure is a compiler bug.
 */
#ifndef KILN_GRAPH_H
#define KILN_GRAPH_H

#include <stdint.h>
#include <stdio.h>

#include "../kernels/kiln_enums.h"
#include "config.h"
#include "safetensors.h"
#include "util.h"

#define KG_T (-1)       /* the token dimension */
#define KG_S (-2)       /* the sequence dimension of pooled outputs */
#define KG_MAX_DIMS 4
#define KG_MAX_IN 10
/* Far above any real model (Mixtral with 128 layers of 128 experts is about 107,000 nodes):
 * a spec that makes more is refused before the graph takes gigabytes. */
#define KG_MAX_NODES (1 << 19)
/* Elements of one weight: 2^36 is a 128 GiB BF16 tensor. */
#define KG_MAX_NUMEL_LOG2 36
#define KG_MAX_NUMEL ((int64_t)1 << KG_MAX_NUMEL_LOG2)

/* X(enum, printed name) */
#define KG_OPS(X)                                                                              \
    X(INPUT, "input")           /* token ids, positions or token types: [T] */                 \
    X(WEIGHT, "weight")         /* a checkpoint tensor, by its HF name */                      \
    X(RESHAPE, "reshape")       /* same elements, new shape (T stays dim 0) */                 \
    X(SLICE, "slice")           /* a contiguous range of one dimension */                      \
    X(CONCAT, "concat")         /* along one dimension */                                      \
    X(TRANSPOSE, "transpose")   /* swap two dimensions of a constant (e.g. Conv1D weights) */  \
    X(EMBED, "embed")           /* rows of a table [V, H] gathered by ids [T] -> [T, H] */      \
    X(LINEAR, "linear")         /* x [T, in] . w[out, in]^T (+ bias [out]) -> [T, out] */      \
    X(RMS_NORM, "rms_norm")     /* over the last dimension, weight [H] (optionally 1 + w) */   \
    X(LAYER_NORM, "layer_norm") /* over the last dimension, weight [H], bias [H] or none */    \
    X(ROPE, "rope")             /* rotary embedding of [T, heads*head_dim] by positions */     \
    X(ATTENTION, "attention")   /* q, k, v [T, heads*head_dim] -> [T, heads*head_dim] */       \
    X(MLA, "mla_attention")     /* multi-head latent attention (DeepSeek-V2): kg_mla */        \
    X(SILU, "silu")                                                                            \
    X(GELU, "gelu")             /* exact, with erf */                                          \
    X(GELU_TANH, "gelu_tanh")   /* the tanh approximation */                                   \
    X(RELU, "relu")                                                                            \
    X(ADD, "add")               /* elementwise; b may be a constant broadcast over T */        \
    X(MUL, "mul")                                                                              \
    X(SCALE, "scale")           /* x * constant */                                             \
    X(MOE, "moe")               /* routed experts (+ optional shared expert) */                \
    X(POOL, "pool")             /* per sequence: mean, first (cls) or last token */            \
    X(LOGITS, "logits")         /* x [T, H] . w [V, H]^T -> [T, V]; the generate output */  \
    X(SCORE, "score")           /* pooled [S, H] -> [S, labels]: the classify output (below) */ \
    /* tensor parallelism: made only by the shard pass, never by an archspec */               \
    X(SHARD, "shard")           /* a constant's part for this rank (see kg_node.parts) */      \
    X(ALL_REDUCE, "all_reduce") /* the sum of x over the ranks, on every rank */               \
    X(ALL_GATHER, "all_gather") /* x [T, C] of every rank -> [T, C * tp], rank order */

typedef enum {
#define X(e, s) KG_##e,
    KG_OPS(X)
#undef X
    KG_NOPS
} kg_op;

typedef enum { KG_IN_IDS, KG_IN_POSITIONS, KG_IN_TOKEN_TYPES, KG_NINPUTS } kg_input_kind;
typedef enum kiln_pool kg_pool_mode; /* kernels/kiln_enums.h: the kernels take the same values */
typedef enum kiln_act kg_act;

typedef struct kg_attn {
    int n_heads, n_kv_heads, head_dim;
    int causal;     /* 0: bidirectional (encoders) */
    int window;     /* sliding window in tokens (a query sees the last `window` keys); 0 = none */
    int alibi;      /* add ALiBi biases (slopes from n_heads, as BLOOM) */
    int alibi_heads; /* sharded graphs: the slopes come from this many heads (the unsharded
                        n_heads) and rank r's heads are r * n_heads .. (r + 1) * n_heads - 1 of
                        them; 0 = n_heads, head 0 */
    double softcap; /* logit soft cap (tanh); 0 = none */
    double scale;   /* multiplies q.k; 1/sqrt(head_dim) unless the spec says otherwise */
    int layer;      /* KV-cache slot, numbered in build order */
} kg_attn;

/* Multi-head latent attention (DeepSeek-V2). Inputs, by KG_MLA_*: q_nope [T, heads*nope],
 * q_pe [T, heads*rope] (already rotated), the normalised latent c [T, rank], the shared key
 * k_pe [T, rope] (already rotated) and kv_b [heads*(nope+v), rank] (kv_b_proj, per head: nope
 * key rows, then v rows). Head h attends with key [W_k[h] c_j ; k_pe_j] and value W_v[h] c_j;
 * output [T, heads*v]. Per token and layer the KV cache holds only c and k_pe (rank + rope
 * floats): that saving is why this is an op and not ordinary attention of expanded k and v. */
typedef struct kg_mla {
    int n_heads, nope_dim, rope_dim, v_dim, rank;
    double scale;   /* multiplies q.k (nope and rope parts together) */
    int layer;      /* KV-cache slot, numbered in build order with the attention nodes */
} kg_mla;

/* MLA inputs, by position */
enum { KG_MLA_Q_NOPE, KG_MLA_Q_PE, KG_MLA_LATENT, KG_MLA_K_PE, KG_MLA_KV_B };

typedef struct kg_rope {
    rope_params p;
    int head_dim;    /* per head */
    int rot_dim;     /* rotated dimensions per head (partial rotary: < head_dim) */
    int interleaved; /* pairs (2i, 2i+1) as GPT-J; 0: halves (i, i + rot/2) as Llama/NeoX */
} kg_rope;

/* How a MoE picks its experts from the router logits s (one per expert):
 * SOFTMAX: softmax over all experts, the top_k largest probabilities (ties to the lower index),
 *   renormalised over the k when `renormalize` (Mixtral, Qwen-MoE).
 * SPARSEMIXER (Phi-3.5-MoE, transformers' sparsemixer in inference mode; top_k is 2): expert
 *   e1 = argmax s; an expert e is masked when (s[e1] - s[e]) / max(|s[e]|, s[e1]) > 2 jitter_eps,
 *   and e1's weight is its softmax probability over the unmasked experts. Then the same with
 *   e1 removed: e2 = argmax of the rest, mask by (s[e2] - s[e]) / max(|s[e]|, s[e2]), softmax
 *   over the unmasked rest. The two weights are not renormalised. */
typedef enum { KG_ROUTE_SOFTMAX, KG_ROUTE_SPARSEMIXER } kg_moe_routing;

typedef struct kg_moe {
    int n_experts, top_k;
    int renormalize; /* top-k probabilities renormalised to sum 1 (Mixtral) */
    int routing;       /* kg_moe_routing */
    double jitter_eps; /* SPARSEMIXER's mask threshold (router_jitter_noise) */
    int act;         /* kg_act of the gated expert MLP: down(act(gate(x)) * up(x)) */
    int has_shared;  /* a shared expert MLP added to every token (Qwen2-MoE) */
    int shared_gate; /* ... scaled by sigmoid(x . shared_gate_w) */
} kg_moe;

/* SCORE inputs, by position: the POOL it scores, the head [labels, H] and its bias [labels] (or
 * -1), and BERT's pooler before it, dense [H, H] and bias [H] (both -1 when absent): with them
 * the score is w . tanh(dense . p + dense_b) + b, without w . p + b (Qwen2/Llama). */
enum { KG_SCORE_X, KG_SCORE_W, KG_SCORE_B, KG_SCORE_DENSE, KG_SCORE_DENSE_B };

/* MOE inputs, by position */
enum { KG_MOE_X, KG_MOE_ROUTER, KG_MOE_GATE, KG_MOE_UP, KG_MOE_DOWN,
       KG_MOE_SH_GATE, KG_MOE_SH_UP, KG_MOE_SH_DOWN, KG_MOE_SH_GATE_W };

typedef struct kg_node {
    kg_op op;
    int n_in;
    int in[KG_MAX_IN];
    st_dtype dtype; /* F32 for activations (the compute dtype is chosen later), I64 for inputs,
                       the checkpoint's dtype for weights */
    int ndim;
    int64_t shape[KG_MAX_DIMS];
    int is_const;   /* a weight or a view of weights only */
    char *name;
    const char *spec_file; /* interned in the graph */
    int spec_line;

    /* attributes, by op */
    int input_kind;          /* INPUT */
    char *weight;            /* WEIGHT: the HF tensor name */
    const st_tensor *bound;  /* WEIGHT: set by bind_weights */
    int dim, dim2;           /* SLICE, CONCAT: dim; TRANSPOSE: dim, dim2 */
    int64_t start, len;      /* SLICE */
    double eps;              /* norms */
    int unit_offset;         /* RMS_NORM: scale by (1 + w), as Gemma */
    double scalar;           /* SCALE */
    double softcap;          /* LOGITS: the final soft cap, cap * tanh(logits / cap); 0 = none */
    kg_attn attn;
    kg_mla mla;
    kg_rope rope;
    kg_moe moe;
    int pool_mode, pool_normalize;
    /* SHARD: `dim` of the input is cut into `parts` equal parts, and rank r of the graph's tp
     * ranks takes part r * parts / tp (parts divides tp: with parts < tp, tp / parts neighbouring
     * ranks share a part, as KV heads are when there are fewer than ranks), followed by `pad`
     * zeros along `dim`: shape[dim] = input's / parts + pad. The shard pass pads a rank's
     * units of an MLP to whole 16-byte vectors (passes/shard.c); 0 everywhere else.
     * EMBED: `parts` = tp when the table is a SHARD of the vocabulary rows (dim 0): rank r holds
     * rows [r * rows, (r + 1) * rows) of the full table, an id outside them gives a zero row,
     * and an ALL_REDUCE follows; 0 otherwise. */
    int parts;
    int pad;                 /* SHARD: zeros after the rank's part (above) */
    int epi_act;             /* LINEAR: -1, or a kg_act: the gated epilogue act(x.Wg) * (x.Wu)
                                over the two halves of the weight's rows (fuse pass) */

    /* set by passes */
    int fused_into;          /* -1, or the node whose kernel computes this value (fuse) */
    int view_of;             /* SLICE of an activation read in place: the node it views (fuse) */
    int stored;              /* ADD fused_into a norm: also read by other nodes, so the norm
                                kernel writes the sum out too (fuse) */
    int64_t buf;             /* byte offset in the activation slab, -1 if none (plan_memory) */
    int64_t buf_bytes;
} kg_node;

typedef struct kgraph {
    int n, cap;
    kg_node *nodes;
    int output;         /* LOGITS, POOL or SCORE node; -1 until set */
    int n_layers;       /* attention and MLA nodes, i.e. KV-cache slots */
    int tp;             /* ranks the graph is sharded for (the shard pass); 1 = unsharded. The
                           graph is the same on every rank: what differs by rank is which part a
                           SHARD takes, an EMBED's vocabulary rows and the ALiBi heads */
    int inputs[KG_NINPUTS]; /* node of each input kind, or -1 */
    char prefix[64];    /* current name prefix ("L3"), set by graph_scope */
    int nstrings;
    char **strings;     /* interned spec file names */
    /* WEIGHT nodes by tensor name (open addressing, node ids, -1 empty), so that asking for a
     * weight is O(1) and building is linear in the number of layers. Nodes [0, windexed) are
     * in it; graph_weight indexes the rest first, graph_compact drops it. */
    int *wtab, wcap, windexed, wcount;
    const char *cur_file; int cur_line; /* location stamped on new nodes */
} kgraph;

const char *kg_op_name(kg_op op);
/* -1 when unknown */
int kg_op_parse(const char *name);

kgraph *graph_new(void);
void graph_free(kgraph *g);
/* Sets the location stamped on nodes created next (spec.c calls this before each op). */
void graph_set_loc(kgraph *g, const char *file, int line);
/* Name prefix for nodes created next, e.g. "L3"; NULL or "" clears it. */
void graph_scope(kgraph *g, const char *prefix);
int graph_is_const(const kgraph *g, int id);

/* Builders. Each returns the new node id, or -1 after adding a message to err. `name` may be
 * NULL (an automatic name is used). Shapes use KG_T for the token dimension. */
int graph_input(kgraph *g, kg_input_kind kind, kerr *err);
int graph_weight(kgraph *g, const char *hf_name, int ndim, const int64_t *shape, kerr *err);
int graph_reshape(kgraph *g, int x, int ndim, const int64_t *shape, const char *name, kerr *err);
int graph_slice(kgraph *g, int x, int dim, int64_t start, int64_t len, const char *name,
                kerr *err);
int graph_concat(kgraph *g, const int *xs, int n, int dim, const char *name, kerr *err);
int graph_transpose(kgraph *g, int x, int d0, int d1, const char *name, kerr *err);
int graph_embed(kgraph *g, int table, int ids, const char *name, kerr *err);
int graph_linear(kgraph *g, int x, int w, int b, const char *name, kerr *err);
int graph_rms_norm(kgraph *g, int x, int w, double eps, int unit_offset, const char *name,
                   kerr *err);
int graph_layer_norm(kgraph *g, int x, int w, int b, double eps, const char *name, kerr *err);
int graph_rope(kgraph *g, int x, int pos, const kg_rope *r, const char *name, kerr *err);
int graph_attention(kgraph *g, int q, int k, int v, const kg_attn *a, const char *name,
                    kerr *err);
/* ins: KG_MLA_* order */
int graph_mla(kgraph *g, const int ins[5], const kg_mla *m, const char *name, kerr *err);
int graph_unary(kgraph *g, kg_op op, int x, const char *name, kerr *err);
int graph_binary(kgraph *g, kg_op op, int a, int b, const char *name, kerr *err);
int graph_scale(kgraph *g, int x, double s, const char *name, kerr *err);
/* ins: KG_MOE_* order; shared-expert slots -1 when absent. */
int graph_moe(kgraph *g, const int ins[9], const kg_moe *m, const char *name, kerr *err);
int graph_pool(kgraph *g, int x, int mode, int normalize, const char *name, kerr *err);
/* ins: KG_SCORE_* order, absent ones -1. x must be the graph's output POOL; the SCORE
 * becomes the output. */
int graph_score(kgraph *g, const int ins[5], const char *name, kerr *err);
/* b: the head's bias [V] or -1 */
int graph_logits(kgraph *g, int x, int w, int b, const char *name, kerr *err);
/* Gemma 2's final_logit_softcapping on LOGITS node `id`: logits = cap * tanh(logits / cap),
 * after the bias. cap > 0 and finite. */
int graph_logits_softcap(kgraph *g, int id, double cap, kerr *err);

/* For passes: appends a copy of `proto` (strings duplicated, inputs as given), returning its
 * id. The caller keeps the order topological. */
int graph_append(kgraph *g, const kg_node *proto);
/* Removes nodes nothing depends on (the output and inputs are kept), renumbering the rest in
 * order. Returns the number removed. */
int graph_compact(kgraph *g);
/* Number of nodes reading node `id`. */
int graph_users(const kgraph *g, int id);

/* Invariants (topological order, shapes per op, T placement); messages name the node.
 * A failure after a pass is a compiler bug. */
int graph_verify(const kgraph *g, kerr *err);

/* Text form: one line per node,
 *   %12 L3.attn.q = linear(%9 L3.attn_norm, %10 w:model.layers.3...) : [T, 4096] f32  @llama.lua:30 */
void graph_print(const kgraph *g, FILE *f);

/* "[T, 4096]" */
const char *graph_shape_str(const kg_node *n, char *buf, size_t cap);
uint64_t graph_numel_const(const kg_node *n);

#endif
