local kiln = require "kiln"
return kiln.archspec {
  name = "toy",
  architectures = { "LlamaForCausalLM" },
  task = "generate",
  ignore = { "%.rotary_emb%.inv_freq$" },
  build = function(g, cfg)
    local n = 0
    for i = 1, 1000 do n = n + i end
    return g:input("ids")
  end,
}
