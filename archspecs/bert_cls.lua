-- bert_cls.lua — BertForSequenceClassification (task classify): the encoder of kiln.bert, then
-- BERT's pooler on the first ([CLS]) token (dense + tanh) and the classifier, a linear
-- [num_labels, hidden] with bias. The scores are logits, not softmaxed; label i is named by
-- config.json's id2label["i"].
--
-- HF reference: transformers/models/bert/modeling_bert.py (BertPooler, and
-- BertForSequenceClassification without dropout, as in eval mode).
local kiln = require "kiln"

return kiln.archspec {
  name = "bert_cls",
  architectures = { "BertForSequenceClassification" },
  task = "classify",
  ignore = { "position_ids$" },

  build = function(g, cfg)
    local H = cfg:int("hidden_size")
    local x, P = kiln.bert(g, cfg)
    local n = kiln.num_labels(cfg)
    local pooled = g:pool(x, { mode = "cls" }, "pooled")
    return g:score(pooled, {
      weight = g:weight("classifier.weight", { n, H }),
      bias = g:weight("classifier.bias", { n }),
      pooler = { weight = g:weight(P .. "pooler.dense.weight", { H, H }),
                 bias = g:weight(P .. "pooler.dense.bias", { H }) },
    }, "scores")
  end,
}
