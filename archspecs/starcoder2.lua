-- starcoder2.lua — StarCoder2 (Starcoder2ForCausalLM): a Llama-shaped decoder with LayerNorms
-- (with bias, eps norm_epsilon) instead of RMSNorms, biases on q/k/v/o and on the MLP when
-- use_bias (the default), a non-gated MLP c_proj(act(c_fc(x))) (gelu_pytorch_tanh by default),
-- grouped-query attention with rotary q/k, an optional sliding window on every layer (the
-- released checkpoints set 4096), and a head tied to the embedding by default.
--
-- HF reference: transformers/models/starcoder2/modeling_starcoder2.py, configuration_starcoder2.py.
local kiln = require "kiln"

return kiln.archspec {
  name = "starcoder2",
  architectures = { "Starcoder2ForCausalLM" },
  task = "generate",
  ignore = { "%.rotary_emb%.inv_freq$" },

  build = function(g, cfg)
    local H        = cfg:int("hidden_size")
    local n_layers = cfg:int("num_hidden_layers")
    local heads    = cfg:int("num_attention_heads")
    local kv_heads = cfg:int("num_key_value_heads", 2)           -- Starcoder2Config's defaults
    local hd       = cfg:int("head_dim", H // heads)
    local inter    = cfg:int("intermediate_size")
    local vocab    = cfg:int("vocab_size")
    local eps      = cfg:float("norm_epsilon", 1e-5)
    local act      = cfg:str("hidden_act", "gelu_pytorch_tanh")
    local bias     = cfg:bool("use_bias", true)
    local tied     = cfg:bool("tie_word_embeddings", true)
    local window   = cfg:int("sliding_window", 0, { min = 0 })
    local rope     = cfg:rope()

    local function w(name, shape) return g:weight(name, shape) end
    local function b(name, shape)
      if bias then return w(name, shape) end
    end
    local function norm(x, name, label)
      return g:layer_norm(x, w(name .. ".weight", { H }), w(name .. ".bias", { H }), eps, label)
    end

    local ids, pos = g:input("ids"), g:input("positions")
    local embed = w("model.embed_tokens.weight", { vocab, H })
    local x = g:embed(embed, ids, "embed")
    for i = 0, n_layers - 1 do
      g:layer(i)
      local p = "model.layers." .. i .. "."
      local a = p .. "self_attn."

      local h = norm(x, p .. "input_layernorm", "attn_norm")
      local q = g:linear(h, w(a .. "q_proj.weight", { heads * hd, H }), b(a .. "q_proj.bias", { heads * hd }), "attn.q")
      local k = g:linear(h, w(a .. "k_proj.weight", { kv_heads * hd, H }), b(a .. "k_proj.bias", { kv_heads * hd }), "attn.k")
      local v = g:linear(h, w(a .. "v_proj.weight", { kv_heads * hd, H }), b(a .. "v_proj.bias", { kv_heads * hd }), "attn.v")
      q = g:rope(q, pos, { head_dim = hd, params = rope }, "attn.q_rope")
      k = g:rope(k, pos, { head_dim = hd, params = rope }, "attn.k_rope")
      local o = g:attention(q, k, v, { heads = heads, kv_heads = kv_heads, head_dim = hd, window = window }, "attn")
      o = g:linear(o, w(a .. "o_proj.weight", { H, heads * hd }), b(a .. "o_proj.bias", { H }), "attn.o")
      x = g:add(x, o, "attn_residual")

      h = norm(x, p .. "post_attention_layernorm", "mlp_norm")
      h = g:linear(h, w(p .. "mlp.c_fc.weight", { inter, H }), b(p .. "mlp.c_fc.bias", { inter }), "mlp.fc")
      h = kiln.act(g, act, h, "mlp.act")
      h = g:linear(h, w(p .. "mlp.c_proj.weight", { H, inter }), b(p .. "mlp.c_proj.bias", { H }), "mlp.proj")
      x = g:add(x, h, "mlp_residual")
    end
    g:layer(nil)
    x = norm(x, "model.norm", "final_norm")
    local head = tied and embed or w("lm_head.weight", { vocab, H })
    return g:logits(x, head, "logits")
  end,
}
