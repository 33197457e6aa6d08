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
    local moe = cfg:str("model_type", "qwen3") == "qwen3_moe"
    -- Qwen3Config defaults head_dim to 128; Qwen3MoeConfig has no such field (hidden / heads).
    local c = kiln.llama_config(cfg, { head_dim = not moe and 128 or nil })
    local bias = cfg:bool("attention_bias", false)

    local window = cfg:bool("use_sliding_window", false) and cfg:int("sliding_window", 0, { min = 0 }) or 0
    local layer_types = cfg:get("layer_types")
    local first_sliding = cfg:int("max_window_layers", c.n_layers, { min = 0 })
    local function window_of(i)
      if moe then return window end
      if layer_types then return layer_types[i + 1] == "sliding_attention" and window or 0 end
      return i >= first_sliding and window or 0
    end
    local opts = { qkv_bias = bias, o_bias = bias, qk_norm = true, window = window_of }
    if not moe then return kiln.llama(g, c, opts) end

    -- Qwen3MoeConfig maps num_experts to num_local_experts: the Hub's files say the first,
    -- transformers 5 writes the second.
    local n_exp = cfg:int(cfg:has("num_local_experts") and "num_local_experts" or "num_experts", nil, { min = 0 })
    local top_k = n_exp > 0 and cfg:int("num_experts_per_tok", nil, { max = n_exp }) or 0
    local inter = cfg:int("moe_intermediate_size")
    local step  = cfg:int("decoder_sparse_step", 1)
    local renormalize, act = cfg:bool("norm_topk_prob", false), kiln.act_name(c.act)
    local dense_only = {}
    for _, l in ipairs(cfg:get("mlp_only_layers") or {}) do dense_only[l] = true end

    function opts.sparse(i) return n_exp > 0 and not dense_only[i] and (i + 1) % step == 0 end
    function opts.moe(_, h, _, p)
      local router, gate, up, down = kiln.experts(g, p .. "mlp.", n_exp, inter, c.H,
                                                  { "gate_proj.weight", "up_proj.weight", "down_proj.weight" })
      return g:moe(h, { router = router, gate = gate, up = up, down = down, top_k = top_k,
                        renormalize = renormalize, act = act }, "moe")
    end
    return kiln.llama(g, c, opts)
  end,
}
