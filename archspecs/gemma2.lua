-- gemma2.lua — Gemma 2: Gemma's (1 + w) RMSNorm, sqrt(hidden)-scaled embeddings and tanh-GELU
-- gated MLP, plus a norm after attention and after the MLP as well as before each (four per
-- layer), attention scaled by query_pre_attn_scalar^-0.5 instead of head_dim^-0.5, a tanh soft cap
-- on the attention scores, a sliding window on every other layer (config.layer_types), and a
-- tanh soft cap on the logits (Gemma2ForCausalLM's tanh(logits / c) * c, c =
-- final_logit_softcapping, 30.0 in the released checkpoints: g:logits's softcap option).
--
-- HF reference: transformers/models/gemma2/modeling_gemma2.py, configuration_gemma2.py.
--
-- Absent and null are the same to cfg (archspecs/README.md 3.4): either means no cap here, while
-- Gemma2Config reads an absent final_logit_softcapping as 30.0 and an absent
-- attn_logit_softcapping as 50.0; transformers writes both fields, so only a hand-written
-- config.json can tell the difference.
local kiln = require "kiln"

return kiln.archspec {
  name = "gemma2",
  architectures = { "Gemma2ForCausalLM" },
  task = "generate",
  ignore = { "%.rotary_emb%.inv_freq$" },

  build = function(g, cfg)
    local c = kiln.llama_config(cfg, { kv_heads = 4, head_dim = 256, tied = true })   -- Gemma2Config's defaults
    local act      = cfg:str("hidden_activation", "gelu_pytorch_tanh")   -- not hidden_act
    local qkv_bias = cfg:bool("attention_bias", false)
    local scale    = cfg:float("query_pre_attn_scalar", 256) ^ -0.5
    local softcap  = cfg:has("attn_logit_softcapping") and cfg:float("attn_logit_softcapping") or 0
    local final_cap = cfg:has("final_logit_softcapping") and cfg:float("final_logit_softcapping") or 0

    -- Gemma2Config: layer_types, else sliding on even layers; sliding_window null means none.
    local window = cfg:has("sliding_window") and cfg:int("sliding_window") or 0
    local layer_types = cfg:get("layer_types")
    local function window_of(i)
      local t = layer_types and layer_types[i + 1] or (i % 2 == 0 and "sliding_attention" or "full_attention")
      if t ~= "sliding_attention" and t ~= "full_attention" then
        error(cfg:path() .. ": layer_types[" .. i .. "] is '" .. tostring(t) ..
              "'; expected 'sliding_attention' or 'full_attention'")
      end
      return t == "sliding_attention" and window or 0
    end

    return kiln.gemma(g, c, { act = act, qkv_bias = qkv_bias, sandwich = true, softcap = final_cap,
                              attention = function(i) return { scale = scale, softcap = softcap, window = window_of(i) } end })
  end,
}
