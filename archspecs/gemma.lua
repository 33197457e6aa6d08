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
    local H, n_layers, heads, kv_heads, hd = c.H, c.n_layers, c.heads, c.kv_heads, c.head_dim
    local inter, vocab, eps, act, tied, rope = c.inter, c.vocab, c.eps, c.act, c.tied, c.rope
    local qkv_bias = cfg:bool("attention_bias", false)
    if act == "gelu" then act = "gelu_pytorch_tanh" end
    if cfg:bool("use_bidirectional_attention", false) then
      error(cfg:path() .. ": use_bidirectional_attention is true; gemma.lua serves causal generation only " ..
            "(set it to false or null)")
    end

    local function w(name, shape) return g:weight(name, shape) end
    local function b(name, shape)
      if qkv_bias then return w(name, shape) end
    end
    -- GemmaRMSNorm: x * rsqrt(mean(x^2) + eps) * (1 + w)
    local function norm(x, name, label) return g:rms_norm(x, w(name, { H }), eps, { offset = 1 }, label) end

    local ids, pos = g:input("ids"), g:input("positions")
    local embed = w("model.embed_tokens.weight", { vocab, H })
    -- GemmaModel: hidden * torch.tensor(hidden_size ** 0.5) in the activations' dtype
    local x = g:scale(g:embed(embed, ids, "embed_tokens"), math.sqrt(H), "embed")

    for i = 0, n_layers - 1 do
      g:layer(i)
      local p = "model.layers." .. i .. "."
      local a = p .. "self_attn."

      local h = norm(x, p .. "input_layernorm.weight", "attn_norm")
      local q = g:linear(h, w(a .. "q_proj.weight", { heads * hd, H }), b(a .. "q_proj.bias", { heads * hd }), "attn.q")
      local k = g:linear(h, w(a .. "k_proj.weight", { kv_heads * hd, H }), b(a .. "k_proj.bias", { kv_heads * hd }), "attn.k")
      local v = g:linear(h, w(a .. "v_proj.weight", { kv_heads * hd, H }), b(a .. "v_proj.bias", { kv_heads * hd }), "attn.v")
      q = g:rope(q, pos, { head_dim = hd, params = rope }, "attn.q_rope")
      k = g:rope(k, pos, { head_dim = hd, params = rope }, "attn.k_rope")
      local o = g:attention(q, k, v, { heads = heads, kv_heads = kv_heads, head_dim = hd }, "attn")
      o = g:linear(o, w(a .. "o_proj.weight", { H, heads * hd }), b(a .. "o_proj.bias", { H }), "attn.o")
      x = g:add(x, o, "attn_residual")

      local m = p .. "mlp."
      h = norm(x, p .. "post_attention_layernorm.weight", "mlp_norm")
      local down = kiln.gated_mlp(g, h, w(m .. "gate_proj.weight", { inter, H }), w(m .. "up_proj.weight", { inter, H }),
                                  w(m .. "down_proj.weight", { H, inter }), act)
      x = g:add(x, down, "mlp_residual")
    end

    g:layer(nil)
    x = norm(x, "model.norm.weight", "final_norm")
    local head = tied and embed or w("lm_head.weight", { vocab, H })
    return g:logits(x, head, "logits")
  end,
}
