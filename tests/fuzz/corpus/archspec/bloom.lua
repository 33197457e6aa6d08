-- bloom.lua — BLOOM: LayerNorm (with bias) everywhere, a LayerNorm right after the word
-- embeddings, ALiBi instead of positional embeddings, GELU (tanh form) MLP, and a fused
-- query_key_value whose rows interleave per head: [head][q, k, v][head_dim].
--
-- HF reference: transformers/models/bloom/modeling_bloom.py (BloomAttention._reshape views
-- the fused output as (..., heads, 3, head_dim)). The head is tied to the word embeddings.
local kiln = require "kiln"

return kiln.archspec {
  name = "bloom",
  architectures = { "BloomForCausalLM" },
  task = "generate",

  build = function(g, cfg)
    local H        = cfg:has("hidden_size") and cfg:int("hidden_size") or cfg:int("n_embed")
    local n_layers = cfg:int("n_layer")
    local heads    = cfg:int("n_head")
    local hd       = H // heads
    local vocab    = cfg:int("vocab_size")
    local eps      = cfg:float("layer_norm_epsilon", 1e-5)
    local post_ln_residual = cfg:bool("apply_residual_connection_post_layernorm", false)

    -- Checkpoints saved from BloomModel (as bigscience's own) have no "transformer." prefix.
    local P = kiln.prefix(g, { "transformer.", "" }, "word_embeddings.weight")
    local function w(name, shape) return g:weight(P .. name, shape) end
    local function ln(x, name, label)
      return g:layer_norm(x, w(name .. ".weight", { H }), w(name .. ".bias", { H }), eps, label)
    end
    -- Row block j (0 q, 1 k, 2 v) of the per-head interleaved fused weight or bias.
    local function part(fused, j, tail)
      local shape, flat = { heads, 3, hd }, { H }
      if tail then shape[4], flat[2] = tail, tail end
      return fused:reshape(shape):slice(1, j, 1):reshape(flat)
    end

    local ids = g:input("ids")
    local embed = w("word_embeddings.weight", { vocab, H })
    local x = ln(g:embed(embed, ids, "embed"), "word_embeddings_layernorm", "embed_norm")

    for i = 0, n_layers - 1 do
      g:layer(i)
      local p = "h." .. i .. "."

      local h = ln(x, p .. "input_layernorm", "attn_norm")
      local qkv_w = w(p .. "self_attention.query_key_value.weight", { 3 * H, H })
      local qkv_b = w(p .. "self_attention.query_key_value.bias", { 3 * H })
      local q = g:linear(h, part(qkv_w, 0, H), part(qkv_b, 0), "attn.q")
      local k = g:linear(h, part(qkv_w, 1, H), part(qkv_b, 1), "attn.k")
      local v = g:linear(h, part(qkv_w, 2, H), part(qkv_b, 2), "attn.v")
      local o = g:attention(q, k, v, { heads = heads, head_dim = hd, alibi = true }, "attn")
      o = g:linear(o, w(p .. "self_attention.dense.weight", { H, H }), w(p .. "self_attention.dense.bias", { H }), "attn.o")
      x = g:add(post_ln_residual and h or x, o, "attn_residual")

      h = ln(x, p .. "post_attention_layernorm", "mlp_norm")
      local up = g:linear(h, w(p .. "mlp.dense_h_to_4h.weight", { 4 * H, H }), w(p .. "mlp.dense_h_to_4h.bias", { 4 * H }), "mlp.up")
      local down = g:linear(g:gelu_tanh(up, "mlp.act"), w(p .. "mlp.dense_4h_to_h.weight", { H, 4 * H }),
                            w(p .. "mlp.dense_4h_to_h.bias", { H }), "mlp.down")
      x = g:add(post_ln_residual and h or x, down, "mlp_residual")
    end

    g:layer(nil)
    x = ln(x, "ln_f", "final_norm")
    return g:logits(x, embed, "logits")
  end,
}
