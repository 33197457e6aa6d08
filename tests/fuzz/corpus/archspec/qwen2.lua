-- qwen2.lua — Qwen2 / Qwen2.5: the Llama block with biases on q, k and v (not on o), and an
-- optional sliding window on the layers config.layer_types marks "sliding_attention".
--
-- HF reference: transformers/models/qwen2/modeling_qwen2.py, configuration_qwen2.py.
local kiln = require "kiln"

return kiln.archspec {
  name = "qwen2",
  architectures = { "Qwen2ForCausalLM" },
  task = "generate",
  ignore = { "%.rotary_emb%.inv_freq$" },

  build = function(g, cfg)
    local H        = cfg:int("hidden_size")
    local n_layers = cfg:int("num_hidden_layers")
    local heads    = cfg:int("num_attention_heads")
    local kv_heads = cfg:int("num_key_value_heads", heads)
    local hd       = cfg:int("head_dim", H // heads)
    local inter    = cfg:int("intermediate_size")
    local vocab    = cfg:int("vocab_size")
    local eps      = cfg:float("rms_norm_eps", 1e-6)
    local act      = cfg:str("hidden_act", "silu")
    local tied     = cfg:bool("tie_word_embeddings", false)
    local rope     = cfg:rope()

    -- Which layers slide: config.layer_types when written (transformers 5), else the older
    -- rule: with use_sliding_window, layers from max_window_layers on.
    local window = cfg:bool("use_sliding_window", false) and cfg:int("sliding_window", 0, { min = 0 }) or 0
    local layer_types = cfg:get("layer_types")
    local first_sliding = cfg:int("max_window_layers", n_layers, { min = 0 })
    local function window_of(i)
      if layer_types then
        return layer_types[i + 1] == "sliding_attention" and cfg:int("sliding_window", 0, { min = 0 }) or 0
      end
      return i >= first_sliding and window or 0
    end

    local function w(name, shape) return g:weight(name, shape) end

    local ids, pos = g:input("ids"), g:input("positions")
    local embed = w("model.embed_tokens.weight", { vocab, H })
    local x = g:embed(embed, ids, "embed")

    for i = 0, n_layers - 1 do
      g:layer(i)
      local p = "model.layers." .. i .. "."
      local a = p .. "self_attn."

      local h = g:rms_norm(x, w(p .. "input_layernorm.weight", { H }), eps, "attn_norm")
      local q = g:linear(h, w(a .. "q_proj.weight", { heads * hd, H }), w(a .. "q_proj.bias", { heads * hd }), "attn.q")
      local k = g:linear(h, w(a .. "k_proj.weight", { kv_heads * hd, H }), w(a .. "k_proj.bias", { kv_heads * hd }), "attn.k")
      local v = g:linear(h, w(a .. "v_proj.weight", { kv_heads * hd, H }), w(a .. "v_proj.bias", { kv_heads * hd }), "attn.v")
      q = g:rope(q, pos, { head_dim = hd, params = rope }, "attn.q_rope")
      k = g:rope(k, pos, { head_dim = hd, params = rope }, "attn.k_rope")
      local o = g:attention(q, k, v, { heads = heads, kv_heads = kv_heads, head_dim = hd, window = window_of(i) }, "attn")
      x = g:add(x, g:linear(o, w(a .. "o_proj.weight", { H, heads * hd }), "attn.o"), "attn_residual")

      local m = p .. "mlp."
      h = g:rms_norm(x, w(p .. "post_attention_layernorm.weight", { H }), eps, "mlp_norm")
      local down = kiln.gated_mlp(g, h, w(m .. "gate_proj.weight", { inter, H }), w(m .. "up_proj.weight", { inter, H }),
                                  w(m .. "down_proj.weight", { H, inter }), act)
      x = g:add(x, down, "mlp_residual")
    end

    g:layer(nil)
    x = g:rms_norm(x, w("model.norm.weight", { H }), eps, "final_norm")
    local head = tied and embed or w("lm_head.weight", { vocab, H })
    return g:logits(x, head, "logits")
  end,
}
