-- gemma2.lua — Gemma 2: Gemma's (1 + w) RMSNorm, sqrt(hidden)-scaled embeddings and tanh-GELU
-- gated MLP, plus a norm after attention and after the MLP as well as before each (four per
-- layer), attention scaled by query_pre_attn_scalar^-0.5 instead of head_dim^-0.5, a tanh soft cap
-- on the attention scores, a sliding window on every other layer (config.layer_types), and a
-- tanh soft cap on the logits (Gemma2ForCausalLM's tanh(logits / c) * c, c =
-- final_logit_softcapping, 30.0 in the released checkpoints: g:logits's softcap option).
--
-- HF reference: transformers/models/gemma2/modeling_gemma2.py, configuration_gemma2.py.
--
-- Absent and null are the same to cfg (archspecs/README.md 3.4): either means no cap here, while
-- Gemma2Config reads an absent final_logit_softcapping as 30.0 and an absent
-- attn_logit_softcapping as 50.0; transformers writes both fields, so only a hand-written
-- config.json can tell the difference.
local kiln = require "kiln"

return kiln.archspec {
  name = "gemma2",
  architectures = { "Gemma2ForCausalLM" },
  task = "generate",
  ignore = { "%.rotary_emb%.inv_freq$" },

  build = function(g, cfg)
    local c = kiln.llama_config(cfg, { kv_heads = 4, head_dim = 256, tied = true })   -- Gemma2Config's defaults
    local H, n_layers, heads, kv_heads, hd = c.H, c.n_layers, c.heads, c.kv_heads, c.head_dim
    local inter, vocab, eps, tied, rope = c.inter, c.vocab, c.eps, c.tied, c.rope
    local act      = cfg:str("hidden_activation", "gelu_pytorch_tanh")   -- not hidden_act
    local qkv_bias = cfg:bool("attention_bias", false)
    local scale    = cfg:float("query_pre_attn_scalar", 256) ^ -0.5
    local softcap  = cfg:has("attn_logit_softcapping") and cfg:float("attn_logit_softcapping") or 0
    local final_cap = cfg:has("final_logit_softcapping") and cfg:float("final_logit_softcapping") or 0

    -- Gemma2Config: layer_types, else sliding on even layers; sliding_window null means none.
    local window = cfg:has("sliding_window") and cfg:int("sliding_window") or 0
    local layer_types = cfg:get("layer_types")
    local function window_of(i)
      local t = layer_types and layer_types[i + 1] or (i % 2 == 0 and "sliding_attention" or "full_attention")
      if t ~= "sliding_attention" and t ~= "full_attention" then
        error(cfg:path() .. ": layer_types[" .. i .. "] is '" .. tostring(t) ..
              "'; expected 'sliding_attention' or 'full_attention'")
      end
      return t == "sliding_attention" and window or 0
    end

    local function w(name, shape) return g:weight(name, shape) end
    local function b(name, shape)
      if qkv_bias then return w(name, shape) end
    end
    -- Gemma2RMSNorm: x * rsqrt(mean(x^2) + eps) * (1 + w)
    local function norm(x, name, label) return g:rms_norm(x, w(name, { H }), eps, { offset = 1 }, label) end

    local ids, pos = g:input("ids"), g:input("positions")
    local embed = w("model.embed_tokens.weight", { vocab, H })
    local x = g:scale(g:embed(embed, ids, "embed_tokens"), math.sqrt(H), "embed")

    for i = 0, n_layers - 1 do
      g:layer(i)
      local p = "model.layers." .. i .. "."
      local a = p .. "self_attn."

      local h = norm(x, p .. "input_layernorm.weight", "attn_norm")
      local q = g:linear(h, w(a .. "q_proj.weight", { heads * hd, H }), b(a .. "q_proj.bias", { heads * hd }), "attn.q")
      local k = g:linear(h, w(a .. "k_proj.weight", { kv_heads * hd, H }), b(a .. "k_proj.bias", { kv_heads * hd }), "attn.k")
      local v = g:linear(h, w(a .. "v_proj.weight", { kv_heads * hd, H }), b(a .. "v_proj.bias", { kv_heads * hd }), "attn.v")
      q = g:rope(q, pos, { head_dim = hd, params = rope }, "attn.q_rope")
      k = g:rope(k, pos, { head_dim = hd, params = rope }, "attn.k_rope")
      local o = g:attention(q, k, v, { heads = heads, kv_heads = kv_heads, head_dim = hd, scale = scale,
                                       softcap = softcap, window = window_of(i) }, "attn")
      o = g:linear(o, w(a .. "o_proj.weight", { H, heads * hd }), b(a .. "o_proj.bias", { H }), "attn.o")
      x = g:add(x, norm(o, p .. "post_attention_layernorm.weight", "attn_post_norm"), "attn_residual")

      local m = p .. "mlp."
      h = norm(x, p .. "pre_feedforward_layernorm.weight", "mlp_norm")
      local down = kiln.gated_mlp(g, h, w(m .. "gate_proj.weight", { inter, H }), w(m .. "up_proj.weight", { inter, H }),
                                  w(m .. "down_proj.weight", { H, inter }), act)
      x = g:add(x, norm(down, p .. "post_feedforward_layernorm.weight", "mlp_post_norm"), "mlp_residual")
    end

    g:layer(nil)
    x = norm(x, "model.norm.weight", "final_norm")
    local head = tied and embed or w("lm_head.weight", { vocab, H })
    return g:logits(x, head, { softcap = final_cap }, "logits")
  end,
}
