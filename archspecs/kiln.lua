-- kiln.lua — the Lua side of kiln's archspec DSL.
--
-- An archspec is a Lua file that returns kiln.archspec{...}. Its build(g, cfg) function
-- describes the model's forward pass with the graph builder `g` (ops implemented in C,
-- compiler/spec.c) from fields of config.json read through `cfg`. Nothing here computes;
-- building only records nodes. See archspecs/README.md for the guide.
--
-- This file holds what is easier to say in Lua than in C: validation of the spec table and
-- small compositions of the C ops that many families share.

local kiln = {}

-- The token dimension in shapes: x:reshape{kiln.T, heads, head_dim}.
kiln.T = "T"

-- kiln.options(opts, op, decl) -> opts: checks a table of named options the way the C ops
-- (g:attention, g:moe, g:rope, ...) check theirs. decl maps each known key to its type:
-- "integer" (a whole number), "number", "boolean", "string", "table", "tensor", "function" or
-- "any". An unknown key is an error naming the key, `op`, the spec line and the nearest known
-- key; a value of another type is an error saying what it got and what is expected. nil opts
-- pass (an omitted table). Every helper here that takes an options table checks it with this,
-- so a misspelt option is never silently ignored. (Implemented in C, compiler/spec.c.)
kiln.options = require "kiln.options"

local TASKS = { generate = true, embed = true, classify = true }
-- The keys of a declaration (spec_probe in compiler/spec.c checks the same five).
local ARCHSPEC_KEYS = {
  name = "string", architectures = "table", task = "string", ignore = "table", build = "function",
}

-- Declares an archspec. Checks the declaration so that mistakes are reported against the
-- spec file when it is loaded, not later.
function kiln.archspec(spec)
  if type(spec) ~= "table" then
    error("kiln.archspec expects a table {name=, architectures=, task=, build=}", 2)
  end
  kiln.options(spec, "archspec", ARCHSPEC_KEYS, true) -- errors at the line of the key
  if type(spec.name) ~= "string" then error("archspec: 'name' must be a string", 2) end
  if type(spec.architectures) ~= "table" or #spec.architectures == 0 then
    error("archspec '" .. spec.name .. "': 'architectures' must list HF architecture names", 2)
  end
  if not TASKS[spec.task] then
    error("archspec '" .. spec.name .. "': 'task' must be generate, embed or classify", 2)
  end
  if type(spec.build) ~= "function" then
    error("archspec '" .. spec.name .. "': 'build' must be a function(g, cfg)", 2)
  end
  return spec
end

-- The first of `prefixes` under which the checkpoint has `probe`: checkpoints saved from the
-- bare model lack the task head's prefix ("transformer.", "bert.", "model."). Falls back to the
-- first prefix, so a missing tensor is reported under its usual name.
function kiln.prefix(g, prefixes, probe)
  for _, p in ipairs(prefixes) do
    if g:has_weight(p .. probe) then return p end
  end
  return prefixes[1]
end

-- Applies the activation named like HF's `hidden_act` ("silu", "gelu", "gelu_new", ...).
local ACTS = {
  silu = "silu", swish = "silu",
  gelu = "gelu",
  gelu_new = "gelu_tanh", gelu_pytorch_tanh = "gelu_tanh", gelu_fast = "gelu_tanh",
  relu = "relu",
}
function kiln.act(g, name, x, label)
  local op = ACTS[name]
  if not op then
    local known = {}
    for k in pairs(ACTS) do known[#known + 1] = k end
    table.sort(known)
    error("activation '" .. tostring(name) .. "' is not supported (known: " ..
          table.concat(known, ", ") .. ")", 2)
  end
  return g[op](g, x, label)
end

-- The activation name for g:moe's `act` option.
function kiln.act_name(name)
  local op = ACTS[name]
  if not op then error("activation '" .. tostring(name) .. "' is not supported", 2) end
  return op
end

-- down(act(gate(x)) * up(x)): the gated MLP of Llama and most decoders since.
function kiln.gated_mlp(g, x, gate_w, up_w, down_w, act)
  local gate = kiln.act(g, act or "silu", g:linear(x, gate_w, "mlp.gate"), "mlp.act")
  local up = g:linear(x, up_w, "mlp.up")
  return g:linear(g:mul(gate, up, "mlp.gated"), down_w, "mlp.down")
end

-- Concatenates any number of tensors (the C op takes up to 10 at once).
function kiln.concat(g, parts, dim)
  if #parts == 1 then return parts[1] end
  local level = parts
  while #level > 1 do
    local next_level = {}
    for i = 1, #level, 10 do
      local chunk = {}
      for k = i, math.min(i + 9, #level) do chunk[#chunk + 1] = level[k] end
      next_level[#next_level + 1] = #chunk == 1 and chunk[1] or g:concat(chunk, dim)
    end
    level = next_level
  end
  return level[1]
end

-- Stacks checkpoint tensors of one shape into a [n, ...shape] weight, e.g. per-expert
-- matrices into the [experts, out, in] tensor g:moe expects.
function kiln.stack(g, names, shape)
  local full = { 1 }
  for _, d in ipairs(shape) do full[#full + 1] = d end
  local parts = {}
  for i, name in ipairs(names) do
    parts[i] = g:weight(name, shape):reshape(full)
  end
  return kiln.concat(g, parts, 0)
end

-- ---------------------------------------------------------------------------------------------
-- The Llama-like decoder, which most families since Llama repeat with small changes: pre-norm
-- layers of RMSNorm -> self-attention (rotary q and k, grouped-query) -> residual, RMSNorm ->
-- gated MLP or mixture of experts -> residual; a final RMSNorm and an LM head. HF's names:
-- model.embed_tokens, model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj,
-- post_attention_layernorm, mlp.{gate,up,down}_proj}, model.norm, lm_head. With these a family
-- whose HF code is LlamaForCausalLM plus a few switches is a few lines (llama.lua, mixtral.lua);
-- one that differs more uses the pieces (llama_attention, llama_mlp) in its own loop.
-- ---------------------------------------------------------------------------------------------

-- The config.json fields every Llama-like decoder reads, with LlamaConfig's defaults: a table
-- { H, n_layers, heads, kv_heads, head_dim, inter, vocab, eps, act, tied, rope }. `defaults`
-- replaces a family's config class defaults where they differ from LlamaConfig's: head_dim
-- (Qwen3Config has 128; otherwise hidden_size / heads), eps (rms_norm_eps; Mixtral's is 1e-5),
-- kv_heads (num_key_value_heads; otherwise heads, MHA), act (hidden_act; otherwise silu), tied
-- (tie_word_embeddings; otherwise false).
function kiln.llama_config(cfg, defaults)
  defaults = defaults or {}
  kiln.options(defaults, "kiln.llama_config",
               { head_dim = "integer", eps = "number", kv_heads = "integer", act = "string", tied = "boolean" })
  local c = {}
  c.H        = cfg:int("hidden_size")
  c.n_layers = cfg:int("num_hidden_layers")
  c.heads    = cfg:int("num_attention_heads")
  c.kv_heads = cfg:int("num_key_value_heads", defaults.kv_heads or c.heads)   -- absent or null: the default
  c.head_dim = cfg:int("head_dim", defaults.head_dim or c.H // c.heads)
  c.inter    = cfg:int("intermediate_size")
  c.vocab    = cfg:int("vocab_size")
  c.eps      = cfg:float("rms_norm_eps", defaults.eps or 1e-6)
  c.act      = cfg:str("hidden_act", defaults.act or "silu")
  if defaults.tied == nil then
    c.tied   = cfg:bool("tie_word_embeddings", false)
  else
    c.tied   = cfg:bool("tie_word_embeddings", defaults.tied)
  end
  c.rope     = cfg:rope()
  return c
end

-- Qwen2's sliding-window rule as a function(i) -> the window of layer i (0: none), for
-- kiln.llama's window option: config.layer_types when written (transformers 5: a layer marked
-- "sliding_attention" slides), else the older rule: with use_sliding_window, the layers from
-- max_window_layers on. (qwen2.lua spells the same rule out: it is the guide's worked example.)
function kiln.qwen2_window(cfg, n_layers)
  local window = cfg:bool("use_sliding_window", false) and cfg:int("sliding_window", 0, { min = 0 }) or 0
  local layer_types = cfg:get("layer_types")
  local first_sliding = cfg:int("max_window_layers", n_layers, { min = 0 })
  return function(i)
    if layer_types then
      return layer_types[i + 1] == "sliding_attention" and cfg:int("sliding_window", 0, { min = 0 }) or 0
    end
    return i >= first_sliding and window or 0
  end
end

local ATTENTION_OPTS = { qkv_bias = "boolean", o_bias = "boolean", qk_norm = "boolean", window = "integer" }

-- x + o_proj(attention(rope(q), rope(k), v)) of rms_norm(x): the self-attention block of the
-- layer with prefix p ("model.layers.N."), c from kiln.llama_config. opts (all optional):
-- qkv_bias (biases on q, k and v), o_bias (on o), qk_norm (Qwen3's RMSNorm over each head of q
-- and of k, self_attn.q_norm/k_norm [head_dim], before the rotation), window (sliding window; 0,
-- the default, is none).
function kiln.llama_attention(g, x, p, c, opts)
  opts = opts or {}
  kiln.options(opts, "kiln.llama_attention", ATTENTION_OPTS)
  local H, heads, kv_heads, hd = c.H, c.heads, c.kv_heads, c.head_dim
  local a = p .. "self_attn."
  local function w(name, shape) return g:weight(a .. name, shape) end
  local function b(on, name, shape)
    if on then return w(name, shape) end
  end
  local pos = g:input("positions")
  local h = g:rms_norm(x, g:weight(p .. "input_layernorm.weight", { H }), c.eps, "attn_norm")
  local q = g:linear(h, w("q_proj.weight", { heads * hd, H }), b(opts.qkv_bias, "q_proj.bias", { heads * hd }), "attn.q")
  local k = g:linear(h, w("k_proj.weight", { kv_heads * hd, H }), b(opts.qkv_bias, "k_proj.bias", { kv_heads * hd }), "attn.k")
  local v = g:linear(h, w("v_proj.weight", { kv_heads * hd, H }), b(opts.qkv_bias, "v_proj.bias", { kv_heads * hd }), "attn.v")
  if opts.qk_norm then
    q = g:rms_norm(q:reshape { kiln.T, heads, hd }, w("q_norm.weight", { hd }), c.eps, "attn.q_norm")
          :reshape { kiln.T, heads * hd }
    k = g:rms_norm(k:reshape { kiln.T, kv_heads, hd }, w("k_norm.weight", { hd }), c.eps, "attn.k_norm")
          :reshape { kiln.T, kv_heads * hd }
  end
  q = g:rope(q, pos, { head_dim = hd, params = c.rope }, "attn.q_rope")
  k = g:rope(k, pos, { head_dim = hd, params = c.rope }, "attn.k_rope")
  local o = g:attention(q, k, v, { heads = heads, kv_heads = kv_heads, head_dim = hd, window = opts.window or 0 }, "attn")
  o = g:linear(o, w("o_proj.weight", { H, heads * hd }), b(opts.o_bias, "o_proj.bias", { H }), "attn.o")
  return g:add(x, o, "attn_residual")
end

-- x + down(act(gate(h)) * up(h)) with h = rms_norm(x): the MLP block of the layer with prefix p,
-- with HF's names and optional biases (nodes as kiln.gated_mlp's). opts: bias (biases on the three
-- projections, Llama's mlp_bias), inter (the width, default c.inter).
function kiln.llama_mlp(g, x, p, c, opts)
  opts = opts or {}
  kiln.options(opts, "kiln.llama_mlp", { bias = "boolean", inter = "integer" })
  local H, inter, m = c.H, opts.inter or c.inter, p .. "mlp."
  local function linear(h, name, n_out, n_in, label)
    return g:linear(h, g:weight(m .. name .. ".weight", { n_out, n_in }),
                    opts.bias and g:weight(m .. name .. ".bias", { n_out }) or nil, label)
  end
  local h = g:rms_norm(x, g:weight(p .. "post_attention_layernorm.weight", { H }), c.eps, "mlp_norm")
  local gate = kiln.act(g, c.act, linear(h, "gate_proj", inter, H, "mlp.gate"), "mlp.act")
  local up = linear(h, "up_proj", inter, H, "mlp.up")
  return g:add(x, linear(g:mul(gate, up, "mlp.gated"), "down_proj", H, inter, "mlp.down"), "mlp_residual")
end

-- The routed experts under the MLP prefix m, as g:moe wants them: router [E, H], gate and up
-- [E, I, H], down [E, H, I]. Either transformers 5's fused layout (m.."experts.gate_up_proj"
-- [E, 2I, H] and m.."experts.down_proj") or per-expert tensors m.."experts.<e>."..names[j] for
-- names = { gate, up, down } (Qwen-MoE: "gate_proj.weight", "up_proj.weight", "down_proj.weight";
-- Mixtral: "w1.weight", "w3.weight", "w2.weight"), stacked. The router is m.."gate.weight".
function kiln.experts(g, m, n_exp, inter, H, names)
  if g:has_weight(m .. "experts.gate_up_proj") then
    local gate_up = g:weight(m .. "experts.gate_up_proj", { n_exp, 2 * inter, H })
    return g:weight(m .. "gate.weight", { n_exp, H }),
           gate_up:slice(1, 0, inter), gate_up:slice(1, inter, inter),
           g:weight(m .. "experts.down_proj", { n_exp, H, inter })
  end
  local gate, up, down = {}, {}, {}
  for e = 0, n_exp - 1 do
    local x = m .. "experts." .. e .. "."
    gate[#gate + 1], up[#up + 1], down[#down + 1] = x .. names[1], x .. names[2], x .. names[3]
  end
  return g:weight(m .. "gate.weight", { n_exp, H }),
         kiln.stack(g, gate, { inter, H }), kiln.stack(g, up, { inter, H }), kiln.stack(g, down, { H, inter })
end

local LLAMA_OPTS = {
  qkv_bias = "boolean", o_bias = "boolean", qk_norm = "boolean", window = "any", mlp_bias = "boolean",
  moe = "function", sparse = "function", hidden = "boolean",
}

-- The whole Llama-like decoder: embedding, per layer kiln.llama_attention and kiln.llama_mlp
-- (or a mixture of experts), final RMSNorm, LM head (the embedding when c.tied); returns the
-- logits. c from kiln.llama_config. opts (all optional): qkv_bias, o_bias, qk_norm as for
-- llama_attention; window, a number or function(i) -> the window of layer i (0-based); mlp_bias
-- (llama_mlp's bias); moe = function(g, h, i, p) -> the mixture-of-experts output of layer i for
-- its normed input h (p = "model.layers.i."), labelled moe_norm / moe / moe_residual;
-- sparse = function(i) -> whether layer i uses moe rather than the MLP (default: all, given moe);
-- hidden = true returns the final normed hidden states [T, H] instead of the logits (for a task
-- head of the spec's own: qwen2_cls.lua's score head).
function kiln.llama(g, c, opts)
  opts = opts or {}
  kiln.options(opts, "kiln.llama", LLAMA_OPTS)
  local window = opts.window or 0
  if type(window) ~= "number" and type(window) ~= "function" then
    error("kiln.llama: 'window' must be a number or a function(layer) (got " .. type(window) .. ")", 2)
  end
  local ids = g:input("ids")
  g:input("positions")
  local embed = g:weight("model.embed_tokens.weight", { c.vocab, c.H })
  local x = g:embed(embed, ids, "embed")
  for i = 0, c.n_layers - 1 do
    g:layer(i)
    local p = "model.layers." .. i .. "."
    x = kiln.llama_attention(g, x, p, c, { qkv_bias = opts.qkv_bias, o_bias = opts.o_bias, qk_norm = opts.qk_norm,
                                           window = type(window) == "function" and window(i) or window })
    if opts.moe and (not opts.sparse or opts.sparse(i)) then
      local h = g:rms_norm(x, g:weight(p .. "post_attention_layernorm.weight", { c.H }), c.eps, "moe_norm")
      x = g:add(x, opts.moe(g, h, i, p), "moe_residual")
    else
      x = kiln.llama_mlp(g, x, p, c, { bias = opts.mlp_bias })
    end
  end
  g:layer(nil)
  x = g:rms_norm(x, g:weight("model.norm.weight", { c.H }), c.eps, "final_norm")
  if opts.hidden then return x end
  local head = c.tied and embed or g:weight("lm_head.weight", { c.vocab, c.H })
  return g:logits(x, head, "logits")
end

local GEMMA_OPTS = {
  act = "string", qkv_bias = "boolean", sandwich = "boolean", qk_norm = "boolean", attention = "function",
  softcap = "number",
}

-- The Gemma decoder (gemma.lua, gemma2.lua, gemma3.lua): the Llama block with Gemma's RMSNorm,
-- x * rsqrt(mean(x^2) + eps) * (1 + w), token embeddings scaled by sqrt(hidden_size) and a gated MLP;
-- returns the logits. c from kiln.llama_config. opts: act (the MLP's activation, required),
-- qkv_bias (biases on q, k, v and o), sandwich (Gemma 2/3: a norm after attention and after the MLP
-- as well as before each), qk_norm (Gemma 3: a (1 + w) RMSNorm over each head of q and of k before
-- the rotation), attention = function(i) -> { scale, softcap, window, rope } for layer i (each
-- optional; rope defaults to c.rope), softcap (a soft cap on the logits, 0 or absent: none).
function kiln.gemma(g, c, opts)
  kiln.options(opts, "kiln.gemma", GEMMA_OPTS)
  local H, heads, kv_heads, hd = c.H, c.heads, c.kv_heads, c.head_dim
  local function w(name, shape) return g:weight(name, shape) end
  local function b(name, shape)
    if opts.qkv_bias then return w(name, shape) end
  end
  local function norm(x, name, n, label) return g:rms_norm(x, w(name, { n }), c.eps, { offset = 1 }, label) end

  local ids, pos = g:input("ids"), g:input("positions")
  local embed = w("model.embed_tokens.weight", { c.vocab, H })
  -- GemmaModel: hidden * torch.tensor(hidden_size ** 0.5) in the activations' dtype
  local x = g:scale(g:embed(embed, ids, "embed_tokens"), math.sqrt(H), "embed")

  for i = 0, c.n_layers - 1 do
    g:layer(i)
    local p = "model.layers." .. i .. "."
    local a = p .. "self_attn."
    local at = opts.attention and opts.attention(i) or {}

    local h = norm(x, p .. "input_layernorm.weight", H, "attn_norm")
    local q = g:linear(h, w(a .. "q_proj.weight", { heads * hd, H }), b(a .. "q_proj.bias", { heads * hd }), "attn.q")
    local k = g:linear(h, w(a .. "k_proj.weight", { kv_heads * hd, H }), b(a .. "k_proj.bias", { kv_heads * hd }), "attn.k")
    local v = g:linear(h, w(a .. "v_proj.weight", { kv_heads * hd, H }), b(a .. "v_proj.bias", { kv_heads * hd }), "attn.v")
    if opts.qk_norm then
      q = norm(q:reshape { kiln.T, heads, hd }, a .. "q_norm.weight", hd, "attn.q_norm"):reshape { kiln.T, heads * hd }
      k = norm(k:reshape { kiln.T, kv_heads, hd }, a .. "k_norm.weight", hd, "attn.k_norm"):reshape { kiln.T, kv_heads * hd }
    end
    local rope = at.rope or c.rope
    q = g:rope(q, pos, { head_dim = hd, params = rope }, "attn.q_rope")
    k = g:rope(k, pos, { head_dim = hd, params = rope }, "attn.k_rope")
    local o = g:attention(q, k, v, { heads = heads, kv_heads = kv_heads, head_dim = hd, scale = at.scale,
                                     softcap = at.softcap, window = at.window }, "attn")
    o = g:linear(o, w(a .. "o_proj.weight", { H, heads * hd }), b(a .. "o_proj.bias", { H }), "attn.o")
    if opts.sandwich then o = norm(o, p .. "post_attention_layernorm.weight", H, "attn_post_norm") end
    x = g:add(x, o, "attn_residual")

    local m = p .. "mlp."
    h = norm(x, p .. (opts.sandwich and "pre_feedforward_layernorm.weight" or "post_attention_layernorm.weight"), H,
             "mlp_norm")
    local down = kiln.gated_mlp(g, h, w(m .. "gate_proj.weight", { c.inter, H }), w(m .. "up_proj.weight", { c.inter, H }),
                                w(m .. "down_proj.weight", { H, c.inter }), opts.act)
    if opts.sandwich then down = norm(down, p .. "post_feedforward_layernorm.weight", H, "mlp_post_norm") end
    x = g:add(x, down, "mlp_residual")
  end

  g:layer(nil)
  x = norm(x, "model.norm.weight", H, "final_norm")
  local head = c.tied and embed or w("lm_head.weight", { c.vocab, H })
  return g:logits(x, head, { softcap = opts.softcap or 0 }, "logits")
end

-- A classifier's number of labels as transformers counts it: the entries of id2label, or
-- num_labels (default 2) when the config has no id2label. The runtime names label i by
-- id2label["i"] (or LABEL_i).
function kiln.num_labels(cfg)
  local m = cfg:get("id2label")
  if m == nil then return cfg:int("num_labels", 2) end
  if type(m) ~= "table" then error("config field 'id2label' must be an object {\"0\": name, ...}", 2) end
  local n = 0
  for _ in pairs(m) do n = n + 1 end
  if n < 1 then error("config field 'id2label' is empty: a classifier has at least one label", 2) end
  return n
end

-- The BERT encoder (bert.lua, bert_cls.lua): word + learned absolute position + token type
-- embeddings, post-LayerNorm blocks with bidirectional attention and an MLP with biases. Returns
-- the last hidden states [T, H] and the weights' prefix: "bert." in checkpoints saved from a
-- BertFor* head model, "" from BertModel. HF: transformers/models/bert/modeling_bert.py.
function kiln.bert(g, cfg)
  local H        = cfg:int("hidden_size")
  local n_layers = cfg:int("num_hidden_layers")
  local heads    = cfg:int("num_attention_heads")
  local hd       = H // heads
  local inter    = cfg:int("intermediate_size")
  local vocab    = cfg:int("vocab_size")
  local max_pos  = cfg:int("max_position_embeddings")
  local n_types  = cfg:int("type_vocab_size", 2)
  local eps      = cfg:float("layer_norm_eps", 1e-12)
  local act      = cfg:str("hidden_act", "gelu")
  if cfg:str("position_embedding_type", "absolute") ~= "absolute" then
    error("bert: only position_embedding_type 'absolute' is supported", 2)
  end

  local P = kiln.prefix(g, { "", "bert." }, "embeddings.word_embeddings.weight")
  local function w(name, shape) return g:weight(P .. name, shape) end
  -- Old checkpoints name LayerNorm parameters gamma/beta.
  local function ln(x, name, label)
    local old = g:has_weight(P .. name .. ".gamma")
    return g:layer_norm(x, w(name .. (old and ".gamma" or ".weight"), { H }),
                        w(name .. (old and ".beta" or ".bias"), { H }), eps, label)
  end
  local function linear(x, name, out, inp, label)
    return g:linear(x, w(name .. ".weight", { out, inp }), w(name .. ".bias", { out }), label)
  end

  local e = "embeddings."
  local x = g:embed(w(e .. "word_embeddings.weight", { vocab, H }), g:input("ids"), "embed.words")
  x = g:add(x, g:embed(w(e .. "position_embeddings.weight", { max_pos, H }), g:input("positions"), "embed.positions"))
  x = g:add(x, g:embed(w(e .. "token_type_embeddings.weight", { n_types, H }), g:input("token_types"), "embed.types"))
  x = ln(x, e .. "LayerNorm", "embed_norm")

  for i = 0, n_layers - 1 do
    g:layer(i)
    local p = "encoder.layer." .. i .. "."
    local a = p .. "attention."
    local q = linear(x, a .. "self.query", H, H, "attn.q")
    local k = linear(x, a .. "self.key", H, H, "attn.k")
    local v = linear(x, a .. "self.value", H, H, "attn.v")
    local o = g:attention(q, k, v, { heads = heads, head_dim = hd, causal = false }, "attn")
    o = linear(o, a .. "output.dense", H, H, "attn.o")
    x = ln(g:add(x, o), a .. "output.LayerNorm", "attn_norm")

    local h = kiln.act(g, act, linear(x, p .. "intermediate.dense", inter, H, "mlp.up"), "mlp.act")
    h = linear(h, p .. "output.dense", H, inter, "mlp.down")
    x = ln(g:add(x, h), p .. "output.LayerNorm", "mlp_norm")
  end
  g:layer(nil)
  return x, P
end

return kiln
