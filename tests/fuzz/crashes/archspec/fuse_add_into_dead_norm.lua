-- fuzz_archspec finding: a residual sum read by two norms, the first of them dead (its result unused).
-- fuse marked the sum fused_into that dead norm; graph_compact, walking backwards, then kept the
-- norm but not its weight, and the verifier failed after fuse: "%9 L1.attn_norm: input 1 refers
-- to %-1", a kilnc bug). Fixed by compacting before the fusion annotations.
local kiln = require "kiln"
return kiln.archspec {
  name = "fuse_two_norms",
  architectures = { "QWenLMHeadModel" },
  task = "generate",
  build = function(g, cfg)
    local H, V = cfg:int("hidden_size"), cfg:int("vocab_size")
    local x = g:embed(g:weight("transformer.wte.weight", { V, H }), g:input("ids"), "embed")
    for i = 0, 1 do
      g:layer(i)
      local p = "transformer.h." .. i .. "."
      local unused = g:rms_norm(x, g:weight(p .. "ln_1.weight", { H }), 1e-6, "attn_norm")
      local h = g:rms_norm(x, g:weight(p .. "ln_2.weight", { H }), 1e-6, "mlp_norm")
      x = g:add(x, h, "residual")
    end
    g:layer(nil)
    x = g:rms_norm(x, g:weight("transformer.ln_f.weight", { H }), 1e-6, "final_norm")
    return g:logits(x, g:weight("lm_head.weight", { V, H }), "logits")
  end,
}
