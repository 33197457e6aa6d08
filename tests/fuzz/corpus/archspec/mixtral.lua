-- mixtral.lua — Mixtral: the Mistral block with a sparse mixture of experts for the MLP
-- (softmax router over all experts, top-k, weights renormalised over the chosen k).
--
-- Two checkpoint layouts exist: the Hub's per-expert tensors
--   model.layers.N.block_sparse_moe.gate.weight, ...experts.E.w1/w2/w3.weight  (w1 gate, w3 up)
-- and transformers 5's fused ones
--   model.layers.N.mlp.gate.weight, mlp.experts.gate_up_proj [E, 2I, H], mlp.experts.down_proj.
-- HF reference: transformers/models/mixtral/modeling_mixtral.py, conversion_mapping.py.
local kiln = require "kiln"

return kiln.archspec {
  name = "mixtral",
  architectures = { "MixtralForCausalLM" },
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
    local n_exp    = cfg:int("num_local_experts")
    local top_k    = cfg:int("num_experts_per_tok")
    local eps      = cfg:float("rms_norm_eps", 1e-5)
    local act      = kiln.act_name(cfg:str("hidden_act", "silu"))
    local tied     = cfg:bool("tie_word_embeddings", false)
    local window   = cfg:int("sliding_window", 0, { min = 0 })
    local rope     = cfg:rope()

    local function w(name, shape) return g:weight(name, shape) end

    -- The experts of layer i in whichever layout the checkpoint uses.
    local function experts(i)
      local p = "model.layers." .. i .. "."
      if g:has_weight(p .. "mlp.experts.gate_up_proj") then
        local gate_up = w(p .. "mlp.experts.gate_up_proj", { n_exp, 2 * inter, H })
        return w(p .. "mlp.gate.weight", { n_exp, H }),
               gate_up:slice(1, 0, inter), gate_up:slice(1, inter, inter),
               w(p .. "mlp.experts.down_proj", { n_exp, H, inter })
      end
      local b = p .. "block_sparse_moe."
      local gate, up, down = {}, {}, {}
      for e = 0, n_exp - 1 do
        local x = b .. "experts." .. e .. "."
        gate[#gate + 1], up[#up + 1], down[#down + 1] = x .. "w1.weight", x .. "w3.weight", x .. "w2.weight"
      end
      return w(b .. "gate.weight", { n_exp, H }),
             kiln.stack(g, gate, { inter, H }), kiln.stack(g, up, { inter, H }), kiln.stack(g, down, { H, inter })
    end

    local ids, pos = g:input("ids"), g:input("positions")
    local embed = w("model.embed_tokens.weight", { vocab, H })
    local x = g:embed(embed, ids, "embed")

    for i = 0, n_layers - 1 do
      g:layer(i)
      local p = "model.layers." .. i .. "."
      local a = p .. "self_attn."

      local h = g:rms_norm(x, w(p .. "input_layernorm.weight", { H }), eps, "attn_norm")
      local q = g:linear(h, w(a .. "q_proj.weight", { heads * hd, H }), "attn.q")
      local k = g:linear(h, w(a .. "k_proj.weight", { kv_heads * hd, H }), "attn.k")
      local v = g:linear(h, w(a .. "v_proj.weight", { kv_heads * hd, H }), "attn.v")
      q = g:rope(q, pos, { head_dim = hd, params = rope }, "attn.q_rope")
      k = g:rope(k, pos, { head_dim = hd, params = rope }, "attn.k_rope")
      local o = g:attention(q, k, v, { heads = heads, kv_heads = kv_heads, head_dim = hd, window = window }, "attn")
      x = g:add(x, g:linear(o, w(a .. "o_proj.weight", { H, heads * hd }), "attn.o"), "attn_residual")

      h = g:rms_norm(x, w(p .. "post_attention_layernorm.weight", { H }), eps, "moe_norm")
      local router, gate, up, down = experts(i)
      local y = g:moe(h, { router = router, gate = gate, up = up, down = down, top_k = top_k,
                           renormalize = true, act = act }, "moe")
      x = g:add(x, y, "moe_residual")
    end

    g:layer(nil)
    x = g:rms_norm(x, w("model.norm.weight", { H }), eps, "final_norm")
    local head = tied and embed or w("lm_head.weight", { vocab, H })
    return g:logits(x, head, "logits")
  end,
}
