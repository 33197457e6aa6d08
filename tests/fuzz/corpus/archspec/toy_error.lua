local kiln = require "kiln"
return kiln.archspec {
  name = "toy",
  architectures = { "LlamaForCausalLM" },
  task = "generate",
  ignore = { "%.rotary_emb%.inv_freq$" },
  build = function(g, cfg)
    error("spec error")
  end,
}
