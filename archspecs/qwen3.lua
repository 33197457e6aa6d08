-- qwen3.lua — Qwen3 and Qwen3-MoE: the Llama block with an RMSNorm over each head of q and of k
-- (weights [head_dim], applied before the rotation), optional biases on q, k, v and o
-- (attention_bias), and for Qwen3-MoE a sparse mixture of experts in place of the MLP on the layers
-- decoder_sparse_step and mlp_only_layers pick (softmax router, top-k, renormalised when
-- norm_topk_prob). Qwen3-MoE has no shared expert.
--
-- Windows: Qwen3 slides the layers config.layer_types marks "sliding_attention" (without it, with
-- use_sliding_window, the layers from max_window_layers on); Qwen3-MoE, with use_sliding_window,
-- slides every layer. Without use_sliding_window HF drops sliding_window, so neither does.
--
-- Experts come in the Hub's per-expert layout (mlp.experts.E.gate_proj/up_proj/down_proj.weight) or
-- transformers 5's fused one (mlp.experts.gate_up_proj [E, 2I, H], mlp.experts.down_proj [E, H, I]).
--
-- HF reference: transformers/models/qwen3/modeling_qwen3.py, qwen3_moe/modeling_qwen3_moe.py and
-- their configuration files.
local kiln = require "kiln"

return kiln.archspec {
  name = "qwen3",
  architectures = { "Qwen3ForCausalLM", "Qwen3MoeForCausalLM" },
  task = "generate",
  ignore = { "%.rotary_emb%.inv_freq$" },

  build = function(g, cfg)
    local moe      = cfg:str("model_type", "qwen3") == "qwen3_moe"
    local H        = cfg:int("hidden_size")
    local n_layers = cfg:int("num_hidden_layers")
    local heads    = cfg:int("num_attention_heads")
    local kv_heads = cfg:int("num_key_value_heads", heads)
    -- Qwen3Config defaults head_dim to 128; Qwen3MoeConfig has no such field (hidden / heads).
    local hd       = cfg:int("head_dim", moe and H // heads or 128)
    local vocab    = cfg:int("vocab_size")
    local eps      = cfg:float("rms_norm_eps", 1e-6)
    local act      = cfg:str("hidden_act", "silu")
    local bias     = cfg:bool("attention_bias", false)
    local tied     = cfg:bool("tie_word_embeddings", false)
    local rope     = cfg:rope()

    local window = cfg:bool("use_sliding_window", false) and cfg:int("sliding_window", 0, { min = 0 }) or 0
    local layer_types = cfg:get("layer_types")
    local first_sliding = cfg:int("max_window_layers", n_layers, { min = 0 })
    local function window_of(i)
      if moe then return window end
      if layer_types then return layer_types[i + 1] == "sliding_attention" and window or 0 end
      return i >= first_sliding and window or 0
    end

    -- Which layers are sparse (Qwen3MoeDecoderLayer).
    local n_exp, top_k, moe_inter, step, dense_only = 0, 0, 0, 1, {}
    if moe then
      -- Qwen3MoeConfig maps num_experts to num_local_experts: the Hub's files say the first,
      -- transformers 5 writes the second.
      n_exp     = cfg:int(cfg:has("num_local_experts") and "num_local_experts" or "num_experts", nil, { min = 0 })
      top_k     = n_exp > 0 and cfg:int("num_experts_per_tok", nil, { max = n_exp }) or 0
      moe_inter = cfg:int("moe_intermediate_size")
      step      = cfg:int("decoder_sparse_step", 1)
      for _, l in ipairs(cfg:get("mlp_only_layers") or {}) do dense_only[l] = true end
    end
    local function sparse(i) return n_exp > 0 and not dense_only[i] and (i + 1) % step == 0 end

    local function w(name, shape) return g:weight(name, shape) end
    local function b(name, shape)
      if bias then return w(name, shape) end
    end

    -- The routed experts of MLP prefix m in whichever layout the checkpoint uses.
    local function experts(m)
      if g:has_weight(m .. "experts.gate_up_proj") then
        local gate_up = w(m .. "experts.gate_up_proj", { n_exp, 2 * moe_inter, H })
        return gate_up:slice(1, 0, moe_inter), gate_up:slice(1, moe_inter, moe_inter),
               w(m .. "experts.down_proj", { n_exp, H, moe_inter })
      end
      local gate, up, down = {}, {}, {}
      for e = 0, n_exp - 1 do
        local x = m .. "experts." .. e .. "."
        gate[#gate + 1], up[#up + 1], down[#down + 1] = x .. "gate_proj.weight", x .. "up_proj.weight", x .. "down_proj.weight"
      end
      return kiln.stack(g, gate, { moe_inter, H }), kiln.stack(g, up, { moe_inter, H }),
             kiln.stack(g, down, { H, moe_inter })
    end

    local ids, pos = g:input("ids"), g:input("positions")
    local embed = w("model.embed_tokens.weight", { vocab, H })
    local x = g:embed(embed, ids, "embed")

    for i = 0, n_layers - 1 do
      g:layer(i)
      local p = "model.layers." .. i .. "."
      local a = p .. "self_attn."

      local h = g:rms_norm(x, w(p .. "input_layernorm.weight", { H }), eps, "attn_norm")
      local q = g:linear(h, w(a .. "q_proj.weight", { heads * hd, H }), b(a .. "q_proj.bias", { heads * hd }), "attn.q")
      local k = g:linear(h, w(a .. "k_proj.weight", { kv_heads * hd, H }), b(a .. "k_proj.bias", { kv_heads * hd }), "attn.k")
      local v = g:linear(h, w(a .. "v_proj.weight", { kv_heads * hd, H }), b(a .. "v_proj.bias", { kv_heads * hd }), "attn.v")
      q = g:rms_norm(q:reshape { kiln.T, heads, hd }, w(a .. "q_norm.weight", { hd }), eps, "attn.q_norm")
            :reshape { kiln.T, heads * hd }
      k = g:rms_norm(k:reshape { kiln.T, kv_heads, hd }, w(a .. "k_norm.weight", { hd }), eps, "attn.k_norm")
            :reshape { kiln.T, kv_heads * hd }
      q = g:rope(q, pos, { head_dim = hd, params = rope }, "attn.q_rope")
      k = g:rope(k, pos, { head_dim = hd, params = rope }, "attn.k_rope")
      local o = g:attention(q, k, v, { heads = heads, kv_heads = kv_heads, head_dim = hd, window = window_of(i) }, "attn")
      o = g:linear(o, w(a .. "o_proj.weight", { H, heads * hd }), b(a .. "o_proj.bias", { H }), "attn.o")
      x = g:add(x, o, "attn_residual")

      local m = p .. "mlp."
      if sparse(i) then
        h = g:rms_norm(x, w(p .. "post_attention_layernorm.weight", { H }), eps, "moe_norm")
        local gate, up, down = experts(m)
        local y = g:moe(h, { router = w(m .. "gate.weight", { n_exp, H }), gate = gate, up = up, down = down,
                             top_k = top_k, renormalize = cfg:bool("norm_topk_prob", false),
                             act = kiln.act_name(act) }, "moe")
        x = g:add(x, y, "moe_residual")
      else
        local inter = cfg:int("intermediate_size")
        h = g:rms_norm(x, w(p .. "post_attention_layernorm.weight", { H }), eps, "mlp_norm")
        local down = kiln.gated_mlp(g, h, w(m .. "gate_proj.weight", { inter, H }), w(m .. "up_proj.weight", { inter, H }),
                                    w(m .. "down_proj.weight", { H, inter }), act)
        x = g:add(x, down, "mlp_residual")
      end
    end

    g:layer(nil)
    x = g:rms_norm(x, w("model.norm.weight", { H }), eps, "final_norm")
    local head = tied and embed or w("lm_head.weight", { vocab, H })
    return g:logits(x, head, "logits")
  end,
}
