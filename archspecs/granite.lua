-- granite.lua — IBM Granite (3.x dense): the Llama block with four scalar multipliers from the
-- config: embedding_multiplier on the token embeddings, residual_multiplier on each attention and
-- MLP output before it is added to the residual stream, attention_multiplier as the attention
-- scale (in place of head_dim^-0.5), and the logits divided by logits_scaling.
--
-- HF reference: transformers/models/granite/modeling_granite.py, configuration_granite.py.
-- The logits' division is applied to the final-normed hidden state before the head, the same
-- product up to fp32 rounding, since the head is linear.
local kiln = require "kiln"

return kiln.archspec {
  name = "granite",
  architectures = { "GraniteForCausalLM" },
  task = "generate",
  ignore = { "%.rotary_emb%.inv_freq$" },

  build = function(g, cfg)
    local c = kiln.llama_config(cfg)   -- GraniteConfig's defaults are LlamaConfig's
    local H, n_layers, heads, kv_heads, hd = c.H, c.n_layers, c.heads, c.kv_heads, c.head_dim
    local inter, vocab, eps, act, tied, rope = c.inter, c.vocab, c.eps, c.act, c.tied, c.rope
    local qkv_bias = cfg:bool("attention_bias", false)
    local mlp_bias = cfg:bool("mlp_bias", false)
    -- GraniteConfig's defaults are all 1.0
    local emb_mult   = cfg:float("embedding_multiplier", 1.0)
    local res_mult   = cfg:float("residual_multiplier", 1.0)
    local attn_mult  = cfg:float("attention_multiplier", 1.0)
    local logits_div = cfg:float("logits_scaling", 1.0)
    if logits_div == 0 then
      error(cfg:path() .. ": logits_scaling is 0; the logits are divided by it, so it must be non-zero")
    end

    local function w(name, shape) return g:weight(name, shape) end
    local function b(name, shape)
      if qkv_bias then return w(name, shape) end
    end
    local function mb(name, shape)
      if mlp_bias then return w(name, shape) end
    end

    local ids, pos = g:input("ids"), g:input("positions")
    local embed = w("model.embed_tokens.weight", { vocab, H })
    local x = g:scale(g:embed(embed, ids, "embed_tokens"), emb_mult, "embed")

    for i = 0, n_layers - 1 do
      g:layer(i)
      local p = "model.layers." .. i .. "."
      local a = p .. "self_attn."

      local h = g:rms_norm(x, w(p .. "input_layernorm.weight", { H }), eps, "attn_norm")
      local q = g:linear(h, w(a .. "q_proj.weight", { heads * hd, H }), b(a .. "q_proj.bias", { heads * hd }), "attn.q")
      local k = g:linear(h, w(a .. "k_proj.weight", { kv_heads * hd, H }), b(a .. "k_proj.bias", { kv_heads * hd }), "attn.k")
      local v = g:linear(h, w(a .. "v_proj.weight", { kv_heads * hd, H }), b(a .. "v_proj.bias", { kv_heads * hd }), "attn.v")
      q = g:rope(q, pos, { head_dim = hd, params = rope }, "attn.q_rope")
      k = g:rope(k, pos, { head_dim = hd, params = rope }, "attn.k_rope")
      local o = g:attention(q, k, v, { heads = heads, kv_heads = kv_heads, head_dim = hd, scale = attn_mult }, "attn")
      o = g:linear(o, w(a .. "o_proj.weight", { H, heads * hd }), b(a .. "o_proj.bias", { H }), "attn.o")
      x = g:add(x, g:scale(o, res_mult, "attn.o_scaled"), "attn_residual")

      local m = p .. "mlp."
      h = g:rms_norm(x, w(p .. "post_attention_layernorm.weight", { H }), eps, "mlp_norm")
      local gate = kiln.act(g, act, g:linear(h, w(m .. "gate_proj.weight", { inter, H }), mb(m .. "gate_proj.bias", { inter }), "mlp.gate"), "mlp.act")
      local up = g:linear(h, w(m .. "up_proj.weight", { inter, H }), mb(m .. "up_proj.bias", { inter }), "mlp.up")
      local down = g:linear(g:mul(gate, up, "mlp.gated"), w(m .. "down_proj.weight", { H, inter }), mb(m .. "down_proj.bias", { H }), "mlp.down")
      x = g:add(x, g:scale(down, res_mult, "mlp.down_scaled"), "mlp_residual")
    end

    g:layer(nil)
    x = g:rms_norm(x, w("model.norm.weight", { H }), eps, "final_norm")
    local head = tied and embed or w("lm_head.weight", { vocab, H })
    return g:logits(g:scale(x, 1 / logits_div, "final_norm_scaled"), head, "logits")
  end,
}
