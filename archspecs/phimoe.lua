-- phimoe.lua — Phi-3.5-MoE (PhimoeForCausalLM): a pre-norm decoder with LayerNorms (weight and
-- bias, eps = rms_norm_eps), q/k/v/o projections with biases (attention_bias), an LM head with a
-- bias (lm_head_bias), longrope, an optional sliding window on every layer, and a sparse mixture
-- of experts on every layer routed by "sparsemixer": transformers' sparsemixer in inference mode
-- (top 2; each expert's weight is its softmax probability over the experts whose logit is within
-- 2 * router_jitter_noise of it, relatively; not renormalised). See kg_moe_routing in
-- compiler/graph.h.
--
-- Rope, as transformers 5.17's PhimoeRotaryEmbedding computes it: the inverse frequencies always
-- come from short_factor (it calls the longrope init without a sequence length), and cos and sin
-- are scaled by rope_scaling's short_mscale, or long_mscale once the sequence (max position + 1)
-- is longer than original_max_position_embeddings. So the longrope table's long half is its
-- short half, and the two scales are the two mscales. As for phi3.lua, the switch is per
-- sequence: a prompt past the length is long from its first chunk, and a sequence that grows past
-- it is recomputed with long_mscale at that step (prepare_inputs_for_generation's cache drop).
--
-- Two expert layouts: the Hub's (block_sparse_moe.gate.weight, experts.E.w1/w3/w2.weight, as
-- Mixtral) and transformers 5's (mlp.router.weight, mlp.experts.gate_up_proj [E, 2I, H],
-- mlp.experts.down_proj [E, H, I]).
--
-- HF reference: transformers/models/phimoe/modeling_phimoe.py, configuration_phimoe.py.
local kiln = require "kiln"

return kiln.archspec {
  name = "phimoe",
  architectures = { "PhimoeForCausalLM" },
  task = "generate",
  ignore = { "%.rotary_emb%.inv_freq$" },

  build = function(g, cfg)
    local c = kiln.llama_config(cfg, { eps = 1e-5 })
    local H, heads, kv_heads, hd, inter = c.H, c.heads, c.kv_heads, c.head_dim, c.inter
    local qn, kvn = heads * hd, kv_heads * hd
    local n_exp = cfg:int("num_local_experts", 16)
    local top_k = cfg:int("num_experts_per_tok", 2)
    local jitter = cfg:float("router_jitter_noise", 0.01)
    local window = cfg:int("sliding_window", 0, { min = 0 })
    local qkv_bias = cfg:bool("attention_bias", false)
    local head_bias = cfg:bool("lm_head_bias", false)
    local act = kiln.act_name(c.act)

    local rope = c.rope
    if rope.type == "longrope" then -- the mscales sit next to the factors (cfg:rope's rule)
      local r = cfg:has("rope_scaling.short_factor") and "rope_scaling." or "rope_parameters."
      rope.long_factor = rope.short_factor
      rope.attention_factor = cfg:float(r .. "short_mscale")
      rope.long_attention_factor = cfg:float(r .. "long_mscale")
    end

    local function ln(x, name, label)
      return g:layer_norm(x, g:weight(name .. ".weight", { H }), g:weight(name .. ".bias", { H }), c.eps, label)
    end
    local function bias(on, name, shape)
      if on then return g:weight(name, shape) end
    end

    local ids, pos = g:input("ids"), g:input("positions")
    local embed = g:weight("model.embed_tokens.weight", { c.vocab, H })
    local x = g:embed(embed, ids, "embed")
    for i = 0, c.n_layers - 1 do
      g:layer(i)
      local p = "model.layers." .. i .. "."
      local a = p .. "self_attn."

      local h = ln(x, p .. "input_layernorm", "attn_norm")
      local q = g:linear(h, g:weight(a .. "q_proj.weight", { qn, H }), bias(qkv_bias, a .. "q_proj.bias", { qn }), "attn.q")
      local k = g:linear(h, g:weight(a .. "k_proj.weight", { kvn, H }), bias(qkv_bias, a .. "k_proj.bias", { kvn }), "attn.k")
      local v = g:linear(h, g:weight(a .. "v_proj.weight", { kvn, H }), bias(qkv_bias, a .. "v_proj.bias", { kvn }), "attn.v")
      q = g:rope(q, pos, { head_dim = hd, params = rope }, "attn.q_rope")
      k = g:rope(k, pos, { head_dim = hd, params = rope }, "attn.k_rope")
      local o = g:attention(q, k, v, { heads = heads, kv_heads = kv_heads, head_dim = hd, window = window }, "attn")
      o = g:linear(o, g:weight(a .. "o_proj.weight", { H, qn }), bias(qkv_bias, a .. "o_proj.bias", { H }), "attn.o")
      x = g:add(x, o, "attn_residual")

      h = ln(x, p .. "post_attention_layernorm", "moe_norm")
      local router, gate, up, down
      if g:has_weight(p .. "mlp.experts.gate_up_proj") then
        local gate_up = g:weight(p .. "mlp.experts.gate_up_proj", { n_exp, 2 * inter, H })
        router = g:weight(p .. "mlp.router.weight", { n_exp, H })
        gate, up = gate_up:slice(1, 0, inter), gate_up:slice(1, inter, inter)
        down = g:weight(p .. "mlp.experts.down_proj", { n_exp, H, inter })
      else
        router, gate, up, down = kiln.experts(g, p .. "block_sparse_moe.", n_exp, inter, H,
                                              { "w1.weight", "w3.weight", "w2.weight" })
      end
      local m = g:moe(h, { router = router, gate = gate, up = up, down = down, top_k = top_k, renormalize = false,
                           act = act, routing = "sparsemixer", jitter_eps = jitter }, "moe")
      x = g:add(x, m, "moe_residual")
    end
    g:layer(nil)
    x = ln(x, "model.norm", "final_norm")
    local head = c.tied and embed or g:weight("lm_head.weight", { c.vocab, H })
    return g:logits(x, head, bias(head_bias, "lm_head.bias", { c.vocab }), "logits")
  end,
}
