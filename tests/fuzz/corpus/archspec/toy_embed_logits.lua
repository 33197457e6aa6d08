local kiln = require "kiln"
return kiln.archspec {
  name = "toy",
  architectures = { "LlamaForCausalLM" },
  task = "generate",
  ignore = { "%.rotary_emb%.inv_freq$" },
  build = function(g, cfg)
    local H, V = cfg:int("hidden_size"), cfg:int("vocab_size")
    local ids = g:input("ids")
    local emb = g:weight("model.embed_tokens.weight", { V, H })
    local x = g:embed(emb, ids, "embed")
    local h = g:rms_norm(x, g:weight("model.norm.weight", { H }), cfg:float("rms_norm_eps", 1e-5), "norm")
    return g:logits(h, g:weight("lm_head.weight", { V, H }), "logits")
  end,
}
