-- llama.lua — Llama 1/2/3 and Mistral: pre-norm decoder, RMSNorm, rotary positions,
-- grouped-query attention, gated SiLU MLP. Mistral adds a sliding attention window.
--
-- HF reference: transformers/models/llama/modeling_llama.py, mistral/modeling_mistral.py.
local kiln = require "kiln"

return kiln.archspec {
  name = "llama",
  architectures = { "LlamaForCausalLM", "MistralForCausalLM" },
  task = "generate",
  -- Some older checkpoints store the rotary frequencies; kiln recomputes them.
  ignore = { "%.rotary_emb%.inv_freq$" },

  build = function(g, cfg)
    local c = kiln.llama_config(cfg)
    local bias = cfg:bool("attention_bias", false)
    -- Only Mistral's modeling code applies the window; Llama ignores the field.
    local window = cfg:str("model_type", "llama") == "mistral" and cfg:int("sliding_window", 0, { min = 0 }) or 0
    return kiln.llama(g, c, { qkv_bias = bias, o_bias = bias, mlp_bias = cfg:bool("mlp_bias", false), window = window })
  end,
}
