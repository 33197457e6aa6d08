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
    local c            = kiln.llama_config(cfg)
    local n_exp        = cfg:int("num_experts", nil, { min = 0 })
    local top_k        = n_exp > 0 and cfg:int("num_experts_per_tok", nil, { max = n_exp }) or 0
    local inter        = cfg:int("moe_intermediate_size")
    local shared_inter = cfg:int("shared_expert_intermediate_size")
    local step         = cfg:int("decoder_sparse_step", 1)
    local renormalize  = cfg:bool("norm_topk_prob", false)
    local act          = kiln.act_name(c.act)

    local window = cfg:bool("use_sliding_window", false) and cfg:int("sliding_window", 0, { min = 0 }) or 0
    local layer_types = cfg:get("layer_types")
    local last_sliding = cfg:int("max_window_layers", c.n_layers, { min = 0 })
    local function window_of(i)
      if layer_types then return layer_types[i + 1] == "sliding_attention" and window or 0 end
      return (i % 2 == 0 and i < last_sliding) and window or 0
    end

    local dense_only = {}
    for _, l in ipairs(cfg:get("mlp_only_layers") or {}) do dense_only[l] = true end
    local function sparse(i) return n_exp > 0 and not dense_only[i] and (i + 1) % step == 0 end

    local function moe(_, h, _, p)
      local m, H = p .. "mlp.", c.H
      local router, gate, up, down = kiln.experts(g, m, n_exp, inter, H,
                                                  { "gate_proj.weight", "up_proj.weight", "down_proj.weight" })
      local s = m .. "shared_expert."
      local shared = { gate = g:weight(s .. "gate_proj.weight", { shared_inter, H }),
                       up = g:weight(s .. "up_proj.weight", { shared_inter, H }),
                       down = g:weight(s .. "down_proj.weight", { H, shared_inter }),
                       gate_weight = g:weight(m .. "shared_expert_gate.weight", { 1, H }) }
      return g:moe(h, { router = router, gate = gate, up = up, down = down, top_k = top_k,
                        renormalize = renormalize, act = act, shared = shared }, "moe")
    end

    return kiln.llama(g, c, { qkv_bias = cfg:bool("qkv_bias", true), window = window_of, moe = moe, sparse = sparse })
  end,
}
