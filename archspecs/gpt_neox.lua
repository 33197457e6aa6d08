-- gpt_neox.lua — GPT-NeoX (EleutherAI's Pythia, GPT-NeoX-20B): LayerNorm with bias, rotary
-- positions on only the first rotary_pct of each head
-- (rotate-half pairing), a fused query_key_value interleaved per head, a plain GELU MLP and,
-- by default, the "parallel" residual x + attn(ln1(x)) + mlp(ln2(x)).
--
-- HF reference: transformers/models/gpt_neox/modeling_gpt_neox.py, configuration_gpt_neox.py.
-- examples/custom_arch/README.md shows how it was added from outside the tree.
local kiln = require "kiln"

return kiln.archspec {
  name = "gpt_neox",
  architectures = { "GPTNeoXForCausalLM" },
  task = "generate",
  -- Old checkpoints store rotary frequencies and attention masks as buffers.
  ignore = { "%.rotary_emb%.inv_freq$", "%.attention%.bias$", "%.attention%.masked_bias$" },

  build = function(g, cfg)
    local H        = cfg:int("hidden_size")
    local n_layers = cfg:int("num_hidden_layers")
    local heads    = cfg:int("num_attention_heads")
    local hd       = H // heads
    local inter    = cfg:int("intermediate_size")
    local vocab    = cfg:int("vocab_size")
    local eps      = cfg:float("layer_norm_eps", 1e-5)
    local act      = cfg:str("hidden_act", "gelu")
    local parallel = cfg:bool("use_parallel_residual", true)
    local tied     = cfg:bool("tie_word_embeddings", false)
    local bias     = cfg:bool("attention_bias", true)

    -- Older config.json files say rotary_emb_base and rotary_pct; transformers 5 writes
    -- rope_parameters {rope_theta, partial_rotary_factor}. GPT-NeoX's default fraction is 0.25,
    -- not the 1.0 cfg:rope() assumes when no partial_rotary_factor is written.
    local rope = cfg:rope { theta_field = "rotary_emb_base" }
    if not (cfg:has("rope_parameters.partial_rotary_factor") or cfg:has("rope_scaling.partial_rotary_factor")
            or cfg:has("partial_rotary_factor")) then
      rope.partial = cfg:float("rotary_pct", 0.25)
    end

    local function w(name, shape) return g:weight(name, shape) end
    local function b(name, shape) if bias then return w(name, shape) end end
    local function ln(x, name, label)
      return g:layer_norm(x, w(name .. ".weight", { H }), w(name .. ".bias", { H }), eps, label)
    end
    -- query_key_value rows are [head][q, k, v][head_dim]: block j of every head.
    local function part(fused, j, tail)
      local shape, flat = { heads, 3, hd }, { H }
      if tail then shape[4], flat[2] = tail, tail end
      return fused:reshape(shape):slice(1, j, 1):reshape(flat)
    end

    local ids, pos = g:input("ids"), g:input("positions")
    local embed = w("gpt_neox.embed_in.weight", { vocab, H })
    local x = g:embed(embed, ids, "embed")

    for i = 0, n_layers - 1 do
      g:layer(i)
      local p = "gpt_neox.layers." .. i .. "."
      local a = p .. "attention."

      local h = ln(x, p .. "input_layernorm", "attn_norm")
      local qkv_w = w(a .. "query_key_value.weight", { 3 * H, H })
      local qkv_b = b(a .. "query_key_value.bias", { 3 * H })
      local q = g:linear(h, part(qkv_w, 0, H), qkv_b and part(qkv_b, 0), "attn.q")
      local k = g:linear(h, part(qkv_w, 1, H), qkv_b and part(qkv_b, 1), "attn.k")
      local v = g:linear(h, part(qkv_w, 2, H), qkv_b and part(qkv_b, 2), "attn.v")
      q = g:rope(q, pos, { head_dim = hd, params = rope }, "attn.q_rope")
      k = g:rope(k, pos, { head_dim = hd, params = rope }, "attn.k_rope")
      local o = g:attention(q, k, v, { heads = heads, head_dim = hd }, "attn")
      o = g:linear(o, w(a .. "dense.weight", { H, H }), b(a .. "dense.bias", { H }), "attn.o")

      local function mlp(y)
        local m = p .. "mlp."
        local up = g:linear(y, w(m .. "dense_h_to_4h.weight", { inter, H }), w(m .. "dense_h_to_4h.bias", { inter }), "mlp.up")
        return g:linear(kiln.act(g, act, up, "mlp.act"), w(m .. "dense_4h_to_h.weight", { H, inter }),
                        w(m .. "dense_4h_to_h.bias", { H }), "mlp.down")
      end

      if parallel then -- both branches read the layer's input
        local m = mlp(ln(x, p .. "post_attention_layernorm", "mlp_norm"))
        x = g:add(g:add(x, o, "attn_residual"), m, "mlp_residual")
      else
        x = g:add(x, o, "attn_residual")
        x = g:add(x, mlp(ln(x, p .. "post_attention_layernorm", "mlp_norm")), "mlp_residual")
      end
    end

    g:layer(nil)
    x = ln(x, "gpt_neox.final_layer_norm", "final_norm")
    -- save_pretrained writes the Hub name embed_out; transformers 5 calls it lm_head in memory.
    local head = tied and embed or w(g:has_weight("lm_head.weight") and "lm_head.weight" or "embed_out.weight", { vocab, H })
    return g:logits(x, head, "logits")
  end,
}
