-- olmo2.lua — OLMo 2 (Olmo2ForCausalLM): the Llama block with its norms moved. There is no norm
-- before attention or the MLP; instead RMSNorm is applied to each block's output before the
-- residual add (post_attention_layernorm, post_feedforward_layernorm), and q and k are each
-- RMSNormed over their whole projection width (all heads at once: q_norm [heads * head_dim],
-- k_norm [kv_heads * head_dim]), before the rotation. Optional q/k/v/o biases (attention_bias).
-- Olmo2Config's default rms_norm_eps is 1e-5.
--
-- HF reference: transformers/models/olmo2/modeling_olmo2.py, configuration_olmo2.py.
local kiln = require "kiln"

return kiln.archspec {
  name = "olmo2",
  architectures = { "Olmo2ForCausalLM" },
  task = "generate",
  ignore = { "%.rotary_emb%.inv_freq$" },

  build = function(g, cfg)
    local c = kiln.llama_config(cfg, { eps = 1e-5 })
    local bias = cfg:bool("attention_bias", false)
    local H, heads, kv_heads, hd = c.H, c.heads, c.kv_heads, c.head_dim
    local qn, kvn = heads * hd, kv_heads * hd

    local function w(name, shape) return g:weight(name, shape) end
    local function b(name, shape)
      if bias then return w(name, shape) end
    end
    local function norm(x, name, n, label) return g:rms_norm(x, w(name, { n }), c.eps, label) end

    local ids, pos = g:input("ids"), g:input("positions")
    local embed = w("model.embed_tokens.weight", { c.vocab, H })
    local x = g:embed(embed, ids, "embed")
    for i = 0, c.n_layers - 1 do
      g:layer(i)
      local p = "model.layers." .. i .. "."
      local a = p .. "self_attn."

      local q = g:linear(x, w(a .. "q_proj.weight", { qn, H }), b(a .. "q_proj.bias", { qn }), "attn.q")
      local k = g:linear(x, w(a .. "k_proj.weight", { kvn, H }), b(a .. "k_proj.bias", { kvn }), "attn.k")
      local v = g:linear(x, w(a .. "v_proj.weight", { kvn, H }), b(a .. "v_proj.bias", { kvn }), "attn.v")
      q = norm(q, a .. "q_norm.weight", qn, "attn.q_norm")
      k = norm(k, a .. "k_norm.weight", kvn, "attn.k_norm")
      q = g:rope(q, pos, { head_dim = hd, params = c.rope }, "attn.q_rope")
      k = g:rope(k, pos, { head_dim = hd, params = c.rope }, "attn.k_rope")
      local o = g:attention(q, k, v, { heads = heads, kv_heads = kv_heads, head_dim = hd }, "attn")
      o = g:linear(o, w(a .. "o_proj.weight", { H, qn }), b(a .. "o_proj.bias", { H }), "attn.o")
      x = g:add(x, norm(o, p .. "post_attention_layernorm.weight", H, "attn_post_norm"), "attn_residual")

      local gate = kiln.act(g, c.act, g:linear(x, w(p .. "mlp.gate_proj.weight", { c.inter, H }), "mlp.gate"), "mlp.act")
      local up = g:linear(x, w(p .. "mlp.up_proj.weight", { c.inter, H }), "mlp.up")
      local m = g:linear(g:mul(gate, up, "mlp.gated"), w(p .. "mlp.down_proj.weight", { H, c.inter }), "mlp.down")
      x = g:add(x, norm(m, p .. "post_feedforward_layernorm.weight", H, "mlp_post_norm"), "mlp_residual")
    end
    g:layer(nil)
    x = norm(x, "model.norm.weight", H, "final_norm")
    local head = c.tied and embed or w("lm_head.weight", { c.vocab, H })
    return g:logits(x, head, "logits")
  end,
}
