-- bert.lua — BERT as a sentence encoder (task embed): the encoder of kiln.bert (word + learned
-- absolute position + token type embeddings, post-LayerNorm encoder blocks with bidirectional
-- attention, GELU MLP); the output is the mean of the last hidden states, L2-normalised
-- (sentence-transformers' mean pooling). BertForSequenceClassification is bert_cls.lua.
--
-- HF reference: transformers/models/bert/modeling_bert.py. The pooler (dense + tanh over the
-- first token) is not used by mean pooling, so its weights are ignored.
local kiln = require "kiln"

return kiln.archspec {
  name = "bert",
  architectures = { "BertModel" },
  task = "embed",
  ignore = { "pooler%.dense%.", "^cls%.", "position_ids$" },

  build = function(g, cfg)
    local x = kiln.bert(g, cfg)
    return g:pool(x, { mode = "mean", normalize = true }, "embedding")
  end,
}
