-- qwen.lua — Qwen (v1, "QWenLMHeadModel", remote code): a Llama-like decoder with its own
-- names: a fused c_attn (q, k, v stacked, with bias), an MLP of w1 (up), w2 (gate) and c_proj,
-- and intermediate_size giving TWICE the MLP width.
--
-- Reference: modeling_qwen.py of Qwen/Qwen-7B. Not modelled: use_logn_attn and
-- use_dynamic_ntk, which only change anything past config.seq_length tokens; kiln refuses
-- nothing here, so keep generation within seq_length (the limit kilnc compile sets).
local kiln = require "kiln"

return kiln.archspec {
  name = "qwen",
  architectures = { "QWenLMHeadModel" },
  task = "generate",
  ignore = { "%.rotary_emb%.inv_freq$" },

  build = function(g, cfg)
    local H        = cfg:int("hidden_size")
    local n_layers = cfg:int("num_hidden_layers")
    local heads    = cfg:int("num_attention_heads")
    local hd       = cfg:int("kv_channels", H // heads)
    local inter    = cfg:int("intermediate_size") // 2
    local vocab    = cfg:int("vocab_size")
    local eps      = cfg:float("layer_norm_epsilon", 1e-6)
    local tied     = cfg:bool("tie_word_embeddings", false)
    local rope     = cfg:rope { theta_field = "rotary_emb_base" }
    local rot_dim  = math.floor(hd * cfg:float("rotary_pct", 1.0))
    local proj     = heads * hd

    local function w(name, shape) return g:weight(name, shape) end

    local ids, pos = g:input("ids"), g:input("positions")
    local wte = w("transformer.wte.weight", { vocab, H })
    local x = g:embed(wte, ids, "embed")

    for i = 0, n_layers - 1 do
      g:layer(i)
      local p = "transformer.h." .. i .. "."

      local h = g:rms_norm(x, w(p .. "ln_1.weight", { H }), eps, "attn_norm")
      -- c_attn rows are [q; k; v]: contiguous slices of the fused weight and bias
      local qkv_w = w(p .. "attn.c_attn.weight", { 3 * proj, H })
      local qkv_b = w(p .. "attn.c_attn.bias", { 3 * proj })
      local q = g:linear(h, qkv_w:slice(0, 0, proj), qkv_b:slice(0, 0, proj), "attn.q")
      local k = g:linear(h, qkv_w:slice(0, proj, proj), qkv_b:slice(0, proj, proj), "attn.k")
      local v = g:linear(h, qkv_w:slice(0, 2 * proj, proj), qkv_b:slice(0, 2 * proj, proj), "attn.v")
      q = g:rope(q, pos, { head_dim = hd, params = rope, rotary_dim = rot_dim }, "attn.q_rope")
      k = g:rope(k, pos, { head_dim = hd, params = rope, rotary_dim = rot_dim }, "attn.k_rope")
      local o = g:attention(q, k, v, { heads = heads, head_dim = hd }, "attn")
      x = g:add(x, g:linear(o, w(p .. "attn.c_proj.weight", { H, proj }), "attn.o"), "attn_residual")

      h = g:rms_norm(x, w(p .. "ln_2.weight", { H }), eps, "mlp_norm")
      -- w2 is the gate: c_proj(w1(x) * silu(w2(x)))
      local down = kiln.gated_mlp(g, h, w(p .. "mlp.w2.weight", { inter, H }), w(p .. "mlp.w1.weight", { inter, H }),
                                  w(p .. "mlp.c_proj.weight", { H, inter }), "silu")
      x = g:add(x, down, "mlp_residual")
    end

    g:layer(nil)
    x = g:rms_norm(x, w("transformer.ln_f.weight", { H }), eps, "final_norm")
    local head = tied and wte or w("lm_head.weight", { vocab, H })
    return g:logits(x, head, "logits")
  end,
}
