-- gptj.lua — GPT-J (EleutherAI's GPT-J-6B): one LayerNorm per block feeding attention and MLP in
-- parallel, x + attn(ln(x)) + mlp(ln(x)); separate q/k/v/out projections without bias; rotary
-- positions on only the first rotary_dim of each head with GPT-J's interleaved pairing (2i, 2i+1)
-- and a fixed base of 10000; a plain GELU (tanh form) MLP with biases; an untied LM head WITH a
-- bias.
--
-- HF reference: transformers/models/gptj/modeling_gptj.py (create_sinusoidal_positions,
-- rotate_every_two), configuration_gptj.py.
local kiln = require "kiln"

return kiln.archspec {
  name = "gptj",
  architectures = { "GPTJForCausalLM" },
  task = "generate",
  -- Old checkpoints store the causal mask as buffers.
  ignore = { "%.attn%.bias$", "%.attn%.masked_bias$" },

  build = function(g, cfg)
    local H        = cfg:int("n_embd")
    local n_layers = cfg:int("n_layer")
    local heads    = cfg:int("n_head")
    local hd       = H // heads
    local inter    = cfg:int("n_inner", 4 * H)
    local vocab    = cfg:int("vocab_size")
    local eps      = cfg:float("layer_norm_epsilon", 1e-5)
    local act      = cfg:str("activation_function", "gelu_new")
    local tied     = cfg:bool("tie_word_embeddings", false)
    -- GPTJConfig's default is 64. (HF's rotary_dim = null rotates hidden_size dimensions, which
    -- only works with one head; it is read as absent here.)
    local rot      = cfg:int("rotary_dim", 64)
    -- The sinusoids are built with base 10000 whatever the config says; GPT-J has no rope fields.
    local rope     = { type = "default", theta = 10000, partial = 1 }

    local function w(name, shape) return g:weight(name, shape) end
    local function ln(x, name, label)
      return g:layer_norm(x, w(name .. ".weight", { H }), w(name .. ".bias", { H }), eps, label)
    end

    local ids, pos = g:input("ids"), g:input("positions")
    local embed = w("transformer.wte.weight", { vocab, H })
    local x = g:embed(embed, ids, "embed")

    for i = 0, n_layers - 1 do
      g:layer(i)
      local p = "transformer.h." .. i .. "."
      local a = p .. "attn."

      local h = ln(x, p .. "ln_1", "attn_norm")
      local q = g:linear(h, w(a .. "q_proj.weight", { H, H }), "attn.q")
      local k = g:linear(h, w(a .. "k_proj.weight", { H, H }), "attn.k")
      local v = g:linear(h, w(a .. "v_proj.weight", { H, H }), "attn.v")
      local ro = { head_dim = hd, params = rope, rotary_dim = rot, interleaved = true }
      q = g:rope(q, pos, ro, "attn.q_rope")
      k = g:rope(k, pos, ro, "attn.k_rope")
      local o = g:attention(q, k, v, { heads = heads, head_dim = hd }, "attn")
      o = g:linear(o, w(a .. "out_proj.weight", { H, H }), "attn.o")

      local m = p .. "mlp."
      local up = g:linear(h, w(m .. "fc_in.weight", { inter, H }), w(m .. "fc_in.bias", { inter }), "mlp.up")
      local down = g:linear(kiln.act(g, act, up, "mlp.act"), w(m .. "fc_out.weight", { H, inter }),
                            w(m .. "fc_out.bias", { H }), "mlp.down")
      -- both branches read ln_1's output
      x = g:add(g:add(x, o, "attn_residual"), down, "mlp_residual")
    end

    g:layer(nil)
    x = ln(x, "transformer.ln_f", "final_norm")
    local head = tied and embed or w("lm_head.weight", { vocab, H })
    return g:logits(x, head, w("lm_head.bias", { vocab }), "logits")
  end,
}
