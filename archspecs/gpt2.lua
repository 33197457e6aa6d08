-- gpt2.lua — GPT-2: learned absolute positions added to the token embeddings, pre-LayerNorm
-- blocks (with bias), a fused c_attn that stacks [Q; K; V], a plain GELU (tanh form) MLP, and
-- the head tied to the token embeddings.
--
-- GPT-2's linears are Conv1D modules, which store their weight as [in, out], the transpose of
-- nn.Linear's; each one is transposed here (a free view of the constant). Attention scores are
-- scaled by 1/sqrt(head_dim) unless scale_attn_weights is false, and further by 1/(layer + 1)
-- when scale_attn_by_inverse_layer_idx is set. reorder_and_upcast_attn only changes fp16
-- rounding, which kiln's fp32-accumulating attention does anyway.
--
-- HF reference: transformers/models/gpt2/modeling_gpt2.py, configuration_gpt2.py.
local kiln = require "kiln"

return kiln.archspec {
  name = "gpt2",
  architectures = { "GPT2LMHeadModel" },
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
    local n_pos    = cfg:int("n_positions")
    local eps      = cfg:float("layer_norm_epsilon", 1e-5)
    local act      = cfg:str("activation_function", "gelu_new")
    local tied     = cfg:bool("tie_word_embeddings", true)
    local scaled   = cfg:bool("scale_attn_weights", true)
    local by_layer = cfg:bool("scale_attn_by_inverse_layer_idx", false)
    if cfg:bool("add_cross_attention", false) then
      error("gpt2: add_cross_attention is true; kiln has no cross-attention", 0)
    end

    -- The Hub's GPT-2 checkpoints were saved from GPT2Model: no "transformer." prefix.
    local P = kiln.prefix(g, { "transformer.", "" }, "wte.weight")
    local function w(name, shape) return g:weight(P .. name, shape) end
    -- A Conv1D weight [in, out] as the [out, in] g:linear takes.
    local function conv(name, n_in, n_out) return w(name, { n_in, n_out }):transpose(0, 1) end
    local function ln(x, name, label)
      return g:layer_norm(x, w(name .. ".weight", { H }), w(name .. ".bias", { H }), eps, label)
    end

    local ids, pos = g:input("ids"), g:input("positions")
    local embed = w("wte.weight", { vocab, H })
    local x = g:add(g:embed(embed, ids, "embed.tokens"), g:embed(w("wpe.weight", { n_pos, H }), pos, "embed.positions"), "embed")

    for i = 0, n_layers - 1 do
      g:layer(i)
      local p = "h." .. i .. "."

      local h = ln(x, p .. "ln_1", "attn_norm")
      local qkv_w = conv(p .. "attn.c_attn.weight", H, 3 * H)
      local qkv_b = w(p .. "attn.c_attn.bias", { 3 * H })
      local q = g:linear(h, qkv_w:slice(0, 0, H), qkv_b:slice(0, 0, H), "attn.q")
      local k = g:linear(h, qkv_w:slice(0, H, H), qkv_b:slice(0, H, H), "attn.k")
      local v = g:linear(h, qkv_w:slice(0, 2 * H, H), qkv_b:slice(0, 2 * H, H), "attn.v")
      local scale = scaled and 1 / math.sqrt(hd) or 1.0
      if by_layer then scale = scale / (i + 1) end
      local o = g:attention(q, k, v, { heads = heads, head_dim = hd, scale = scale }, "attn")
      o = g:linear(o, conv(p .. "attn.c_proj.weight", H, H), w(p .. "attn.c_proj.bias", { H }), "attn.o")
      x = g:add(x, o, "attn_residual")

      h = ln(x, p .. "ln_2", "mlp_norm")
      local up = g:linear(h, conv(p .. "mlp.c_fc.weight", H, inter), w(p .. "mlp.c_fc.bias", { inter }), "mlp.up")
      local down = g:linear(kiln.act(g, act, up, "mlp.act"), conv(p .. "mlp.c_proj.weight", inter, H),
                            w(p .. "mlp.c_proj.bias", { H }), "mlp.down")
      x = g:add(x, down, "mlp_residual")
    end

    g:layer(nil)
    x = ln(x, "ln_f", "final_norm")
    local head = tied and embed or g:weight("lm_head.weight", { vocab, H })
    return g:logits(x, head, "logits")
  end,
}
