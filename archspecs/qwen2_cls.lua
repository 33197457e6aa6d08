-- qwen2_cls.lua — Qwen2ForSequenceClassification (task classify): the Qwen2 decoder (kiln.llama
-- with q/k/v biases and Qwen2's sliding-window rule, as qwen2.lua), then a score head, a linear
-- [num_labels, hidden] without bias, on the last token of each sequence. The scores are logits,
-- not softmaxed; label i is named by config.json's id2label["i"].
--
-- HF pools the last token that is not pad_token_id; kiln runs each sequence unpadded, so that is
-- simply its last token. HF reference: transformers/models/qwen2/modeling_qwen2.py and
-- GenericForSequenceClassification (transformers/modeling_layers.py).
local kiln = require "kiln"

return kiln.archspec {
  name = "qwen2_cls",
  architectures = { "Qwen2ForSequenceClassification" },
  task = "classify",
  ignore = { "%.rotary_emb%.inv_freq$" },

  build = function(g, cfg)
    local c = kiln.llama_config(cfg)
    local n = kiln.num_labels(cfg)
    local x = kiln.llama(g, c, { qkv_bias = true, window = kiln.qwen2_window(cfg, c.n_layers), hidden = true })
    local pooled = g:pool(x, { mode = "last" }, "pooled")
    return g:score(pooled, { weight = g:weight("score.weight", { n, c.H }) }, "scores")
  end,
}
