-- gemma.lua — Gemma (1): the Llama block with Gemma's RMSNorm, which scales by (1 + w) instead of
-- w, token embeddings multiplied by sqrt(hidden_size), a gated tanh-GELU MLP and an LM head tied
-- to the embeddings.
--
-- HF reference: transformers/models/gemma/modeling_gemma.py, configuration_gemma.py.
-- The official releases write the legacy hidden_act "gelu" but were trained with the tanh
-- approximation; transformers 4.x read hidden_activation for it and GemmaConfig since 5.24
-- rewrites "gelu" to "gelu_pytorch_tanh" (5.17 did not), and so does this spec.
local kiln = require "kiln"

return kiln.archspec {
  name = "gemma",
  architectures = { "GemmaForCausalLM" },
  task = "generate",
  ignore = { "%.rotary_emb%.inv_freq$" },

  build = function(g, cfg)
    -- GemmaConfig's defaults (head_dim 256, not H // heads)
    local c = kiln.llama_config(cfg, { kv_heads = 16, head_dim = 256, act = "gelu_pytorch_tanh", tied = true })
    local act = c.act == "gelu" and "gelu_pytorch_tanh" or c.act
    if cfg:bool("use_bidirectional_attention", false) then
      error(cfg:path() .. ": use_bidirectional_attention is true; gemma.lua serves causal generation only " ..
            "(set it to false or null)")
    end
    return kiln.gemma(g, c, { act = act, qkv_bias = cfg:bool("attention_bias", false) })
  end,
}
