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
    local c      = kiln.llama_config(cfg, { eps = 1e-5 })
    local n_exp  = cfg:int("num_local_experts")
    local top_k  = cfg:int("num_experts_per_tok")
    local act    = kiln.act_name(c.act)
    local window = cfg:int("sliding_window", 0, { min = 0 })

    local function moe(_, h, _, p)
      local m = g:has_weight(p .. "mlp.experts.gate_up_proj") and p .. "mlp." or p .. "block_sparse_moe."
      local router, gate, up, down = kiln.experts(g, m, n_exp, c.inter, c.H, { "w1.weight", "w3.weight", "w2.weight" })
      return g:moe(h, { router = router, gate = gate, up = up, down = down, top_k = top_k, renormalize = true, act = act }, "moe")
    end

    return kiln.llama(g, c, { window = window, moe = moe })
  end,
}
