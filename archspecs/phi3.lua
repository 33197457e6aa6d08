-- phi3.lua — Phi-3 (Phi3ForCausalLM): the Llama block with two fused projections. q, k and v
-- are one qkv_proj [(heads + 2 kv_heads) * head_dim, H] whose rows are [Q; K; V] blocks, and the
-- MLP's gate and up are one gate_up_proj [2 * inter, H] (rows [gate; up], HF's chunk(2)). Both
-- are split with views of the weight (archspecs/README.md section 6). Optional sliding window
-- on every layer (Phi-3-mini ships 2047). Phi3Config's default rms_norm_eps is 1e-5.
--
-- Rope: default or longrope (Phi-3-*-128k, Phi-3.5-mini, Phi-4-mini): short_factor and
-- long_factor tables, one per rotary pair, the long one (and the long scale) used while the
-- sequence is longer than original_max_position_embeddings. cfg:rope() reads it. transformers
-- decides per forward; kiln per sequence, with the same numbers (archspecs/README.md, cfg:rope):
-- a prompt longer than that length is long from its first chunk, and a sequence that grows past
-- it during generation is recomputed with the long factors at that step, as
-- Phi3ForCausalLM.prepare_inputs_for_generation drops the KV cache there.
--
-- HF reference: transformers/models/phi3/modeling_phi3.py, configuration_phi3.py.
local kiln = require "kiln"

return kiln.archspec {
  name = "phi3",
  architectures = { "Phi3ForCausalLM" },
  task = "generate",
  ignore = { "%.rotary_emb%.inv_freq$" },

  build = function(g, cfg)
    local c = kiln.llama_config(cfg, { eps = 1e-5 })
    local window = cfg:int("sliding_window", 0, { min = 0 })
    local H, heads, kv_heads, hd, inter = c.H, c.heads, c.kv_heads, c.head_dim, c.inter
    local qn, kvn = heads * hd, kv_heads * hd

    local ids, pos = g:input("ids"), g:input("positions")
    local embed = g:weight("model.embed_tokens.weight", { c.vocab, H })
    local x = g:embed(embed, ids, "embed")
    for i = 0, c.n_layers - 1 do
      g:layer(i)
      local p = "model.layers." .. i .. "."

      local h = g:rms_norm(x, g:weight(p .. "input_layernorm.weight", { H }), c.eps, "attn_norm")
      local qkv = g:weight(p .. "self_attn.qkv_proj.weight", { qn + 2 * kvn, H })
      local q = g:linear(h, qkv:slice(0, 0, qn), "attn.q")
      local k = g:linear(h, qkv:slice(0, qn, kvn), "attn.k")
      local v = g:linear(h, qkv:slice(0, qn + kvn, kvn), "attn.v")
      q = g:rope(q, pos, { head_dim = hd, params = c.rope }, "attn.q_rope")
      k = g:rope(k, pos, { head_dim = hd, params = c.rope }, "attn.k_rope")
      local o = g:attention(q, k, v, { heads = heads, kv_heads = kv_heads, head_dim = hd, window = window }, "attn")
      o = g:linear(o, g:weight(p .. "self_attn.o_proj.weight", { H, qn }), "attn.o")
      x = g:add(x, o, "attn_residual")

      h = g:rms_norm(x, g:weight(p .. "post_attention_layernorm.weight", { H }), c.eps, "mlp_norm")
      local gate_up = g:weight(p .. "mlp.gate_up_proj.weight", { 2 * inter, H })
      local gate = kiln.act(g, c.act, g:linear(h, gate_up:slice(0, 0, inter), "mlp.gate"), "mlp.act")
      local up = g:linear(h, gate_up:slice(0, inter, inter), "mlp.up")
      local down = g:linear(g:mul(gate, up, "mlp.gated"), g:weight(p .. "mlp.down_proj.weight", { H, inter }), "mlp.down")
      x = g:add(x, down, "mlp_residual")
    end
    g:layer(nil)
    x = g:rms_norm(x, g:weight("model.norm.weight", { H }), c.eps, "final_norm")
    local head = c.tied and embed or g:weight("lm_head.weight", { c.vocab, H })
    return g:logits(x, head, "logits")
  end,
}
