-- cohere.lua — Cohere Command-R (CohereForCausalLM): a parallel block, where attention and the
-- gated SiLU MLP both read one LayerNorm of the residual stream (a weight and no bias) and both
-- outputs are added to it at once; rotary embeddings on interleaved pairs (2i, 2i+1, GPT-J
-- style); an LM head tied to the embeddings whose logits are multiplied by logit_scale.
--
-- HF reference: transformers/models/cohere/modeling_cohere.py, configuration_cohere.py.
-- The logits' factor is applied to the final-normed hidden state before the head, the same
-- product up to fp32 rounding, since the head is linear. use_qk_norm (Command R+): q and k go
-- through CohereLayerNorms with a weight per head, [heads, head_dim], over [T, heads, head_dim]
-- before the rotation.
local kiln = require "kiln"

return kiln.archspec {
  name = "cohere",
  architectures = { "CohereForCausalLM" },
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
    local eps      = cfg:float("layer_norm_eps", 1e-5)
    local act      = cfg:str("hidden_act", "silu")
    local qkv_bias = cfg:bool("attention_bias", false)
    local tied     = cfg:bool("tie_word_embeddings", true)
    local logit_scale = cfg:float("logit_scale", 0.0625)
    local rope     = cfg:rope()
    local qk_norm  = cfg:bool("use_qk_norm", false)

    local function w(name, shape) return g:weight(name, shape) end
    local function b(name, shape)
      if qkv_bias then return w(name, shape) end
    end
    -- CohereLayerNorm: (x - mean) * rsqrt(var + eps) * w, biased variance, no bias
    local function norm(x, name, label) return g:layer_norm(x, w(name, { H }), nil, eps, label) end
    -- the same per head: x [T, n*hd] as [T, n, hd], weight [n, hd]
    local function head_norm(x, n, name, label)
      return g:layer_norm(x:reshape { kiln.T, n, hd }, w(name, { n, hd }), nil, eps, label):reshape { kiln.T, n * hd }
    end

    local ids, pos = g:input("ids"), g:input("positions")
    local embed = w("model.embed_tokens.weight", { vocab, H })
    local x = g:embed(embed, ids, "embed")

    for i = 0, n_layers - 1 do
      g:layer(i)
      local p = "model.layers." .. i .. "."
      local a = p .. "self_attn."

      local h = norm(x, p .. "input_layernorm.weight", "attn_norm")
      local q = g:linear(h, w(a .. "q_proj.weight", { heads * hd, H }), b(a .. "q_proj.bias", { heads * hd }), "attn.q")
      local k = g:linear(h, w(a .. "k_proj.weight", { kv_heads * hd, H }), b(a .. "k_proj.bias", { kv_heads * hd }), "attn.k")
      local v = g:linear(h, w(a .. "v_proj.weight", { kv_heads * hd, H }), b(a .. "v_proj.bias", { kv_heads * hd }), "attn.v")
      if qk_norm then
        q = head_norm(q, heads, a .. "q_norm.weight", "attn.q_norm")
        k = head_norm(k, kv_heads, a .. "k_norm.weight", "attn.k_norm")
      end
      q = g:rope(q, pos, { head_dim = hd, params = rope, interleaved = true }, "attn.q_rope")
      k = g:rope(k, pos, { head_dim = hd, params = rope, interleaved = true }, "attn.k_rope")
      local o = g:attention(q, k, v, { heads = heads, kv_heads = kv_heads, head_dim = hd }, "attn")
      o = g:linear(o, w(a .. "o_proj.weight", { H, heads * hd }), b(a .. "o_proj.bias", { H }), "attn.o")

      local m = p .. "mlp."
      local down = kiln.gated_mlp(g, h, w(m .. "gate_proj.weight", { inter, H }), w(m .. "up_proj.weight", { inter, H }),
                                  w(m .. "down_proj.weight", { H, inter }), act)
      -- CohereDecoderLayer: residual + attention + mlp, both from the same normed input
      x = g:add(g:add(x, o, "attn_residual"), down, "mlp_residual")
    end

    g:layer(nil)
    x = norm(x, "model.norm.weight", "final_norm")
    local head = tied and embed or w("lm_head.weight", { vocab, H })
    return g:logits(g:scale(x, logit_scale, "final_norm_scaled"), head, "logits")
  end,
}
