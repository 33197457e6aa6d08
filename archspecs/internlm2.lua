-- internlm2.lua — InternLM2 (InternLM2ForCausalLM, remote code): a Llama decoder with its own
-- names (tok_embeddings, attention_norm, attention.wqkv / wo, ffn_norm, feed_forward.w1 gate,
-- w3 up, w2 down, output) and q, k and v fused in one wqkv whose rows are grouped per KV head:
-- for each of the kv_heads groups, the group's heads / kv_heads query heads, then its key head,
-- then its value head, head_dim rows each (modeling_internlm2.py views the output as
-- [kv_heads, groups + 2, head_dim]). Split here with views of the weight: reshape to
-- [kv_heads, groups + 2, head_dim, H], take a range of dimension 1, flatten.
--
-- Reference: modeling_internlm2.py / configuration_internlm2.py of internlm/internlm2-chat-7b.
-- InternLM2Config's defaults: bias true (q/k/v and wo biases; the released checkpoints set
-- false), rms_norm_eps 1e-6, num_key_value_heads = num_attention_heads. rope_scaling dynamic
-- (the 7B/20B configs) changes nothing below max_position_embeddings.
local kiln = require "kiln"

return kiln.archspec {
  name = "internlm2",
  architectures = { "InternLM2ForCausalLM" },
  task = "generate",
  ignore = { "%.rotary_emb%.inv_freq$" },

  build = function(g, cfg)
    local c = kiln.llama_config(cfg)   -- head_dim is hidden_size / num_attention_heads
    local bias = cfg:bool("bias", true)
    local H, heads, kv_heads, hd = c.H, c.heads, c.kv_heads, c.head_dim
    if heads % kv_heads ~= 0 then
      error(cfg:path() .. ": num_attention_heads (" .. heads .. ") must be a multiple of num_key_value_heads (" ..
            kv_heads .. ")")
    end
    local groups = heads // kv_heads

    local function w(name, shape) return g:weight(name, shape) end
    -- Rows [first, first + n) of each KV group of the fused weight (tail H) or bias, flattened.
    local function part(fused, first, n, tail)
      local shape, flat = { kv_heads, groups + 2, hd }, { kv_heads * n * hd }
      if tail then shape[4], flat[2] = tail, tail end
      return fused:reshape(shape):slice(1, first, n):reshape(flat)
    end

    local ids, pos = g:input("ids"), g:input("positions")
    local embed = w("model.tok_embeddings.weight", { c.vocab, H })
    local x = g:embed(embed, ids, "embed")
    for i = 0, c.n_layers - 1 do
      g:layer(i)
      local p = "model.layers." .. i .. "."
      local a = p .. "attention."

      local h = g:rms_norm(x, w(p .. "attention_norm.weight", { H }), c.eps, "attn_norm")
      local rows = (heads + 2 * kv_heads) * hd
      local qkv_w = w(a .. "wqkv.weight", { rows, H })
      local qkv_b = bias and w(a .. "wqkv.bias", { rows }) or nil
      local function proj(first, n, label)
        return g:linear(h, part(qkv_w, first, n, H), qkv_b and part(qkv_b, first, n) or nil, label)
      end
      local q = proj(0, groups, "attn.q")
      local k = proj(groups, 1, "attn.k")
      local v = proj(groups + 1, 1, "attn.v")
      q = g:rope(q, pos, { head_dim = hd, params = c.rope }, "attn.q_rope")
      k = g:rope(k, pos, { head_dim = hd, params = c.rope }, "attn.k_rope")
      local o = g:attention(q, k, v, { heads = heads, kv_heads = kv_heads, head_dim = hd }, "attn")
      o = g:linear(o, w(a .. "wo.weight", { H, heads * hd }), bias and w(a .. "wo.bias", { H }) or nil, "attn.o")
      x = g:add(x, o, "attn_residual")

      h = g:rms_norm(x, w(p .. "ffn_norm.weight", { H }), c.eps, "mlp_norm")
      local f = p .. "feed_forward."
      local gate = kiln.act(g, c.act, g:linear(h, w(f .. "w1.weight", { c.inter, H }), "mlp.gate"), "mlp.act")
      local up = g:linear(h, w(f .. "w3.weight", { c.inter, H }), "mlp.up")
      x = g:add(x, g:linear(g:mul(gate, up, "mlp.gated"), w(f .. "w2.weight", { H, c.inter }), "mlp.down"), "mlp_residual")
    end
    g:layer(nil)
    x = g:rms_norm(x, w("model.norm.weight", { H }), c.eps, "final_norm")
    local head = c.tied and embed or w("output.weight", { c.vocab, H })
    return g:logits(x, head, "logits")
  end,
}
