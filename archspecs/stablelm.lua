-- stablelm.lua — StableLM (Stability AI's StableLM-3B-4E1T, StableLM-2): a Llama-shaped decoder
-- with LayerNorm (weight and bias) instead of RMSNorm, rotary positions on only the first
-- partial_rotary_factor of each head (rotate-half pairing, default 0.25), optional q/k/v biases
-- (use_qkv_bias), optional per-head LayerNorms on q and k (qk_layernorm: one weight per head, no
-- bias) and an optional parallel residual x + attn(ln(x)) + mlp(ln(x)) that reuses the input
-- LayerNorm (use_parallel_residual; StableLM-2-12B). The MLP is Llama's gated one.
--
-- HF reference: transformers/models/stablelm/modeling_stablelm.py, configuration_stablelm.py.
local kiln = require "kiln"

return kiln.archspec {
  name = "stablelm",
  architectures = { "StableLmForCausalLM" },
  task = "generate",
  ignore = { "%.rotary_emb%.inv_freq$" },

  build = function(g, cfg)
    local H        = cfg:int("hidden_size")
    local n_layers = cfg:int("num_hidden_layers")
    local heads    = cfg:int("num_attention_heads")
    -- StableLmConfig's default is 32, not the number of query heads.
    local kv_heads = cfg:int("num_key_value_heads", 32)
    local hd       = H // heads
    local inter    = cfg:int("intermediate_size")
    local vocab    = cfg:int("vocab_size")
    local eps      = cfg:float("layer_norm_eps", 1e-5)
    local act      = cfg:str("hidden_act", "silu")
    local tied     = cfg:bool("tie_word_embeddings", false)
    local qkv_bias = cfg:bool("use_qkv_bias", false)
    local qk_norm  = cfg:bool("qk_layernorm", false)
    local parallel = cfg:bool("use_parallel_residual", false)
    -- StableLmConfig defaults partial_rotary_factor to 0.25, not the 1.0 cfg:rope() assumes.
    local rope = cfg:rope()
    if not (cfg:has("rope_parameters.partial_rotary_factor") or cfg:has("rope_scaling.partial_rotary_factor")
            or cfg:has("partial_rotary_factor")) then
      rope.partial = 0.25
    end

    local function w(name, shape) return g:weight(name, shape) end
    local function b(name, shape) if qkv_bias then return w(name, shape) end end
    local function ln(x, name, label)
      return g:layer_norm(x, w(name .. ".weight", { H }), w(name .. ".bias", { H }), eps, label)
    end
    -- StableLmLayerNormPerHead: head j of x [T, n*hd] through its own LayerNorm (no bias): one
    -- layer_norm over [T, n, hd] whose weight [n, hd] stacks the heads' weights.
    local function per_head_ln(x, n, name, label)
      local names = {}
      for j = 0, n - 1 do names[j + 1] = name .. ".norms." .. j .. ".weight" end
      return g:layer_norm(x:reshape { kiln.T, n, hd }, kiln.stack(g, names, { hd }), nil, eps, label)
               :reshape { kiln.T, n * hd }
    end

    local ids, pos = g:input("ids"), g:input("positions")
    local embed = w("model.embed_tokens.weight", { vocab, H })
    local x = g:embed(embed, ids, "embed")

    for i = 0, n_layers - 1 do
      g:layer(i)
      local p = "model.layers." .. i .. "."
      local a = p .. "self_attn."

      local h = ln(x, p .. "input_layernorm", "attn_norm")
      local q = g:linear(h, w(a .. "q_proj.weight", { heads * hd, H }), b(a .. "q_proj.bias", { heads * hd }), "attn.q")
      local k = g:linear(h, w(a .. "k_proj.weight", { kv_heads * hd, H }), b(a .. "k_proj.bias", { kv_heads * hd }), "attn.k")
      local v = g:linear(h, w(a .. "v_proj.weight", { kv_heads * hd, H }), b(a .. "v_proj.bias", { kv_heads * hd }), "attn.v")
      if qk_norm then
        q = per_head_ln(q, heads, a .. "q_layernorm", "attn.q_norm")
        k = per_head_ln(k, kv_heads, a .. "k_layernorm", "attn.k_norm")
      end
      q = g:rope(q, pos, { head_dim = hd, params = rope }, "attn.q_rope")
      k = g:rope(k, pos, { head_dim = hd, params = rope }, "attn.k_rope")
      local o = g:attention(q, k, v, { heads = heads, kv_heads = kv_heads, head_dim = hd }, "attn")
      o = g:linear(o, w(a .. "o_proj.weight", { H, heads * hd }), "attn.o")

      local m = p .. "mlp."
      local function mlp(y)
        return kiln.gated_mlp(g, y, w(m .. "gate_proj.weight", { inter, H }), w(m .. "up_proj.weight", { inter, H }),
                              w(m .. "down_proj.weight", { H, inter }), act)
      end
      if parallel then -- the MLP reads the input LayerNorm's output too
        x = g:add(g:add(x, o, "attn_residual"), mlp(h), "mlp_residual")
      else
        x = g:add(x, o, "attn_residual")
        x = g:add(x, mlp(ln(x, p .. "post_attention_layernorm", "mlp_norm")), "mlp_residual")
      end
    end

    g:layer(nil)
    x = ln(x, "model.norm", "final_norm")
    local head = tied and embed or w("lm_head.weight", { vocab, H })
    return g:logits(x, head, "logits")
  end,
}
