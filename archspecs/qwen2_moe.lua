-- qwen2_moe.lua — Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): the Qwen2 block (biases on q, k and v
-- when qkv_bias, as by default; none on o) with a sparse mixture of experts in place of the MLP on
-- the layers decoder_sparse_step and mlp_only_layers pick: softmax router over all experts, top-k,
-- renormalised only when norm_topk_prob, plus a shared expert on every token scaled by
-- sigmoid(x . shared_expert_gate). The other layers have a dense MLP of intermediate_size.
--
-- Windows: with use_sliding_window, the layers config.layer_types marks "sliding_attention" (without
-- it HF's default: even layers below max_window_layers). Without use_sliding_window, none.
--
-- Experts come in the Hub's per-expert layout (mlp.experts.E.gate_proj/up_proj/down_proj.weight) or
-- transformers 5's fused one (mlp.experts.gate_up_proj [E, 2I, H], mlp.experts.down_proj [E, H, I]).
--
-- HF reference: transformers/models/qwen2_moe/modeling_qwen2_moe.py, configuration_qwen2_moe.py.
local kiln = require "kiln"

return kiln.archspec {
  name = "qwen2_moe",
  architectures = { "Qwen2MoeForCausalLM" },
  task = "generate",
  ignore = { "%.rotary_emb%.inv_freq$" },

  build = function(g, cfg)
    local H         = cfg:int("hidden_size")
    local n_layers  = cfg:int("num_hidden_layers")
    local heads     = cfg:int("num_attention_heads")
    local kv_heads  = cfg:int("num_key_value_heads", heads)
    local hd        = cfg:int("head_dim", H // heads)
    local vocab     = cfg:int("vocab_size")
    local eps       = cfg:float("rms_norm_eps", 1e-6)
    local act       = cfg:str("hidden_act", "silu")
    local qkv_bias  = cfg:bool("qkv_bias", true)
    local tied      = cfg:bool("tie_word_embeddings", false)
    local rope      = cfg:rope()
    local n_exp     = cfg:int("num_experts", nil, { min = 0 })
    local top_k     = n_exp > 0 and cfg:int("num_experts_per_tok", nil, { max = n_exp }) or 0
    local step      = cfg:int("decoder_sparse_step", 1)

    local window = cfg:bool("use_sliding_window", false) and cfg:int("sliding_window", 0, { min = 0 }) or 0
    local layer_types = cfg:get("layer_types")
    local last_sliding = cfg:int("max_window_layers", n_layers, { min = 0 })
    local function window_of(i)
      if layer_types then return layer_types[i + 1] == "sliding_attention" and window or 0 end
      return (i % 2 == 0 and i < last_sliding) and window or 0
    end

    local dense_only = {}
    for _, l in ipairs(cfg:get("mlp_only_layers") or {}) do dense_only[l] = true end
    local function sparse(i) return n_exp > 0 and not dense_only[i] and (i + 1) % step == 0 end

    local function w(name, shape) return g:weight(name, shape) end
    local function b(name, shape)
      if qkv_bias then return w(name, shape) end
    end

    -- The routed experts of MLP prefix m in whichever layout the checkpoint uses.
    local function experts(m, inter)
      if g:has_weight(m .. "experts.gate_up_proj") then
        local gate_up = w(m .. "experts.gate_up_proj", { n_exp, 2 * inter, H })
        return gate_up:slice(1, 0, inter), gate_up:slice(1, inter, inter), w(m .. "experts.down_proj", { n_exp, H, inter })
      end
      local gate, up, down = {}, {}, {}
      for e = 0, n_exp - 1 do
        local x = m .. "experts." .. e .. "."
        gate[#gate + 1], up[#up + 1], down[#down + 1] = x .. "gate_proj.weight", x .. "up_proj.weight", x .. "down_proj.weight"
      end
      return kiln.stack(g, gate, { inter, H }), kiln.stack(g, up, { inter, H }), kiln.stack(g, down, { H, inter })
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
      q = g:rope(q, pos, { head_dim = hd, params = rope }, "attn.q_rope")
      k = g:rope(k, pos, { head_dim = hd, params = rope }, "attn.k_rope")
      local o = g:attention(q, k, v, { heads = heads, kv_heads = kv_heads, head_dim = hd, window = window_of(i) }, "attn")
      x = g:add(x, g:linear(o, w(a .. "o_proj.weight", { H, heads * hd }), "attn.o"), "attn_residual")

      local m = p .. "mlp."
      if sparse(i) then
        local inter, shared_inter = cfg:int("moe_intermediate_size"), cfg:int("shared_expert_intermediate_size")
        h = g:rms_norm(x, w(p .. "post_attention_layernorm.weight", { H }), eps, "moe_norm")
        local gate, up, down = experts(m, inter)
        local s = m .. "shared_expert."
        local y = g:moe(h, { router = w(m .. "gate.weight", { n_exp, H }), gate = gate, up = up, down = down,
                             top_k = top_k, renormalize = cfg:bool("norm_topk_prob", false),
                             act = kiln.act_name(act),
                             shared = { gate = w(s .. "gate_proj.weight", { shared_inter, H }),
                                        up = w(s .. "up_proj.weight", { shared_inter, H }),
                                        down = w(s .. "down_proj.weight", { H, shared_inter }),
                                        gate_weight = w(m .. "shared_expert_gate.weight", { 1, H }) } }, "moe")
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
