-- falcon.lua — Falcon (TII's Falcon-7B/40B/180B and the Falcon-RW/Falcon-11B family with rotary
-- positions): LayerNorm with bias, rotary positions (rotate-half, whole head), a fused
-- query_key_value whose row layout depends on the variant, a plain GELU MLP, biases only when
-- `bias` is set, and the head tied to the word embeddings by default.
--
-- The variants (FalconConfig; transformers' default is the first, Falcon-7B's):
--   new_decoder_architecture=false, multi_query=true: rows [Q of every head; one K; one V], one
--     K/V head for all queries; parallel_attn=true: x + attn(ln(x)) + mlp(ln(x)) from one LayerNorm;
--   multi_query=false: rows interleaved per head [head][q, k, v] (as BLOOM), as many K/V heads;
--   parallel_attn=false: the sequential pre-norm block with a post_attention_layernorm;
--   new_decoder_architecture=true (Falcon-40B/180B): num_kv_heads groups, rows [group][q x
--     heads/num_kv_heads, k, v]; two LayerNorms ln_attn and ln_mlp (num_ln_in_parallel_attn,
--     default 2) or one, both branches added to the input.
-- Falcon with alibi=true (Falcon-RW-1B) adds the ALiBi bias BEFORE scaling the scores by
-- 1/sqrt(head_dim), unlike BLOOM's, which g:attention's alibi implements: it is refused.
--
-- HF reference: transformers/models/falcon/modeling_falcon.py (FalconAttention._split_heads,
-- FalconDecoderLayer.forward), configuration_falcon.py.
local kiln = require "kiln"

return kiln.archspec {
  name = "falcon",
  architectures = { "FalconForCausalLM" },
  task = "generate",
  ignore = { "%.rotary_emb%.inv_freq$" },

  build = function(g, cfg)
    local H        = cfg:has("hidden_size") and cfg:int("hidden_size") or cfg:int("n_embed")
    local n_layers = cfg:int("num_hidden_layers")
    local heads    = cfg:int("num_attention_heads")
    local hd       = H // heads
    local ffn      = cfg:int("ffn_hidden_size", 4 * H)
    local vocab    = cfg:int("vocab_size")
    local eps      = cfg:float("layer_norm_epsilon", 1e-5)
    local act      = cfg:str("activation", "gelu")
    local tied     = cfg:bool("tie_word_embeddings", true)
    local bias     = cfg:bool("bias", false)
    local new_arch = cfg:bool("new_decoder_architecture", false)
    local mq       = cfg:bool("multi_query", true)
    local parallel = cfg:bool("parallel_attn", true)
    if cfg:bool("alibi", false) then
      error(cfg:path() .. ": alibi is true: Falcon adds ALiBi before scaling the scores by 1/sqrt(head_dim), " ..
            "which g:attention's alibi (BLOOM's) does not; kiln runs only rotary Falcon models", 0)
    end
    local kv_heads = new_arch and cfg:int("num_kv_heads", heads) or (mq and 1 or heads)
    if heads % kv_heads ~= 0 then
      error(cfg:path() .. ": num_attention_heads " .. heads .. " is not a multiple of num_kv_heads " .. kv_heads, 0)
    end
    if new_arch and not parallel then -- FalconDecoderLayer would use LayerNorms it never made
      error(cfg:path() .. ": new_decoder_architecture is true and parallel_attn false, a combination " ..
            "transformers cannot run either; set parallel_attn to true", 0)
    end
    -- FalconDecoderLayer: None means 2 with the new architecture, else one LayerNorm.
    local n_ln = cfg:int("num_ln_in_parallel_attn", new_arch and 2 or 1)
    local rope = cfg:rope()

    local function w(name, shape) return g:weight(name, shape) end
    local function b(name, shape) if bias then return w(name, shape) end end
    local function ln(x, name, label)
      return g:layer_norm(x, w(name .. ".weight", { H }), w(name .. ".bias", { H }), eps, label)
    end
    -- The q, k and v row blocks of the fused weight (tail = H) or bias (no tail).
    local group = heads // kv_heads
    local function split(fused, tail)
      -- rows viewed as `shape`, block [j, j + len) of dimension 1, flattened back to n rows
      local function block(shape, j, len, n)
        local s, flat = { table.unpack(shape) }, { n }
        if tail then s[#s + 1], flat[2] = tail, tail end
        return fused:reshape(s):slice(1, j, len):reshape(flat)
      end
      if new_arch then -- [group][q x group, k, v][hd]
        local s = { kv_heads, group + 2, hd }
        return block(s, 0, group, heads * hd), block(s, group, 1, kv_heads * hd), block(s, group + 1, 1, kv_heads * hd)
      elseif mq then -- [Q of every head; K; V]
        return fused:slice(0, 0, heads * hd), fused:slice(0, heads * hd, hd), fused:slice(0, (heads + 1) * hd, hd)
      end
      local s = { heads, 3, hd } -- [head][q, k, v][hd]
      return block(s, 0, 1, H), block(s, 1, 1, H), block(s, 2, 1, H)
    end

    local ids, pos = g:input("ids"), g:input("positions")
    local embed = w("transformer.word_embeddings.weight", { vocab, H })
    local x = g:embed(embed, ids, "embed")

    for i = 0, n_layers - 1 do
      g:layer(i)
      local p = "transformer.h." .. i .. "."
      local a = p .. "self_attention."

      local two_ln = new_arch and n_ln == 2
      local h = ln(x, p .. (two_ln and "ln_attn" or "input_layernorm"), "attn_norm")
      local rows_qkv = (heads + 2 * kv_heads) * hd
      local qw, kw, vw = split(w(a .. "query_key_value.weight", { rows_qkv, H }), H)
      local qb, kb, vb
      if bias then qb, kb, vb = split(w(a .. "query_key_value.bias", { rows_qkv })) end
      local q = g:linear(h, qw, qb, "attn.q")
      local k = g:linear(h, kw, kb, "attn.k")
      local v = g:linear(h, vw, vb, "attn.v")
      q = g:rope(q, pos, { head_dim = hd, params = rope }, "attn.q_rope")
      k = g:rope(k, pos, { head_dim = hd, params = rope }, "attn.k_rope")
      local o = g:attention(q, k, v, { heads = heads, kv_heads = kv_heads, head_dim = hd }, "attn")
      o = g:linear(o, w(a .. "dense.weight", { H, H }), b(a .. "dense.bias", { H }), "attn.o")

      local m_in
      if two_ln then
        m_in = ln(x, p .. "ln_mlp", "mlp_norm")
      elseif parallel then
        m_in = h
      else
        x = g:add(x, o, "attn_residual")
        m_in = ln(x, p .. "post_attention_layernorm", "mlp_norm")
      end
      local m = p .. "mlp."
      local up = g:linear(m_in, w(m .. "dense_h_to_4h.weight", { ffn, H }), b(m .. "dense_h_to_4h.bias", { ffn }), "mlp.up")
      local down = g:linear(kiln.act(g, act, up, "mlp.act"), w(m .. "dense_4h_to_h.weight", { H, ffn }),
                            b(m .. "dense_4h_to_h.bias", { H }), "mlp.down")
      if new_arch or parallel then
        x = g:add(g:add(x, o, "attn_residual"), down, "mlp_residual")
      else
        x = g:add(x, down, "mlp_residual")
      end
    end

    g:layer(nil)
    x = ln(x, "transformer.ln_f", "final_norm")
    local head = tied and embed or w("lm_head.weight", { vocab, H })
    return g:logits(x, head, "logits")
  end,
}
