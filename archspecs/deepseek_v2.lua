-- deepseek_v2.lua — DeepSeek-V2 and DeepSeek-V2-Lite: multi-head latent attention (MLA) and a
-- mixture of routed and shared experts.
--
-- Attention (HF's DeepseekV2Attention): q = q_proj(h) (V2-Lite: q_lora_rank null), or
-- q_b_proj(rms_norm(q_a_proj(h))) (V2); each head of q is [nope | rope]. kv_a_proj_with_mqa(h) is
-- [latent (kv_lora_rank) | shared rope key (qk_rope_head_dim)]; the latent goes through
-- kv_a_layernorm. The rope parts of q (per head) and the one shared key are rotated in DeepSeek's
-- interleaved layout (pairs 2i, 2i+1: HF multiplies complex numbers made of adjacent pairs), with
-- yarn's attention factor on cos and sin. g:mla_attention expands the latent with kv_b_proj into
-- each head's nope key and value, so the KV cache keeps only the latent and the rope key. The
-- softmax scale is (qk_nope + qk_rope)^-0.5, times yarn's mscale(factor, mscale_all_dim)^2 when the
-- rope is scaled and mscale_all_dim is set (yarn_apply_mscale). The two small RMSNorms on latents use
-- HF's DeepseekV2RMSNorm default eps, 1e-6, not rms_norm_eps.
--
-- MLP: layers below first_k_dense_replace (and, as DeepSeek's own code, those not a multiple of
-- moe_layer_freq) are dense (intermediate_size); the others are sparse: softmax over the
-- n_routed_experts router logits, top num_experts_per_tok (topk_method "greedy"; "group_limited_greedy"
-- only where it picks the same experts: n_group 1 or topk_group >= n_group), NOT renormalised (HF
-- 5.17 ignores norm_topk_prob: a config setting it true is refused, as DeepSeek's own code would
-- renormalise), times routed_scaling_factor, plus n_shared_experts plain gated MLPs of
-- moe_intermediate_size each, held as one of n_shared_experts * moe_intermediate_size (no gate).
--
-- Experts come in the Hub's per-expert layout (mlp.experts.E.gate_proj/up_proj/down_proj.weight) or
-- transformers 5's fused one (mlp.experts.gate_up_proj, mlp.experts.down_proj).
--
-- HF reference: transformers/models/deepseek_v2/modeling_deepseek_v2.py, configuration_deepseek_v2.py.
local kiln = require "kiln"

-- yarn_get_mscale
local function mscale(factor, m)
  if factor <= 1 then return 1.0 end
  return 0.1 * m * math.log(factor) + 1.0
end

return kiln.archspec {
  name = "deepseek_v2",
  architectures = { "DeepseekV2ForCausalLM" },
  task = "generate",
  ignore = { "%.rotary_emb%.inv_freq$" },

  build = function(g, cfg)
    local H        = cfg:int("hidden_size")
    local n_layers = cfg:int("num_hidden_layers")
    local heads    = cfg:int("num_attention_heads")
    local vocab    = cfg:int("vocab_size")
    local inter    = cfg:int("intermediate_size")
    local eps      = cfg:float("rms_norm_eps", 1e-6)
    local act      = cfg:str("hidden_act", "silu")
    local tied     = cfg:bool("tie_word_embeddings", false)
    local bias     = cfg:bool("attention_bias", false)
    local rope     = cfg:rope()
    local q_rank   = cfg:has("q_lora_rank") and cfg:int("q_lora_rank") or nil
    local rank     = cfg:int("kv_lora_rank", 512)
    local dn       = cfg:int("qk_nope_head_dim", 128)
    local dr       = cfg:int("qk_rope_head_dim", 64)
    local dv       = cfg:int("v_head_dim", 128)
    local n_exp    = cfg:int("n_routed_experts", 64, { min = 0 })
    local top_k    = n_exp > 0 and cfg:int("num_experts_per_tok", nil, { max = n_exp }) or 0
    local m_inter  = cfg:int("moe_intermediate_size", 1407)
    local n_shared = cfg:int("n_shared_experts", 2, { min = 0 })
    local first_k  = cfg:int("first_k_dense_replace", 0, { min = 0 })
    local freq     = cfg:int("moe_layer_freq", 1)
    local routed_scale = cfg:float("routed_scaling_factor", 1.0)
    local dq = dn + dr
    local lat_eps = 1e-6 -- DeepseekV2RMSNorm's default: kv_a_layernorm, q_a_layernorm

    if cfg:bool("norm_topk_prob", false) then
      error(cfg:path() .. ": norm_topk_prob is true; transformers' DeepseekV2 ignores it while DeepSeek's own "
            .. "code renormalises the top-k weights, so the intended model is ambiguous: set it to false "
            .. "(DeepSeek-V2 and V2-Lite ship false)")
    end
    local method = cfg:str("topk_method", "greedy")
    if method == "group_limited_greedy" then
      local groups = cfg:int("n_group", 1)
      if groups > 1 and cfg:int("topk_group", groups) < groups then
        error(cfg:path() .. (": topk_method group_limited_greedy with n_group %d and topk_group %d is not "
               .. "supported (experts restricted to the best groups); with topk_group >= n_group it equals "
               .. "greedy"):format(groups, cfg:int("topk_group", groups)))
      end
    elseif method ~= "greedy" then
      error(cfg:path() .. ": topk_method '" .. method .. "' is not supported (known: greedy, group_limited_greedy)")
    end
    if routed_scale <= 0 then
      error(cfg:path() .. ": routed_scaling_factor is " .. routed_scale .. "; expected a positive number")
    end

    local scale = dq ^ -0.5
    local mall = cfg:has("rope_parameters.mscale_all_dim") and cfg:float("rope_parameters.mscale_all_dim")
                 or cfg:has("rope_scaling.mscale_all_dim") and cfg:float("rope_scaling.mscale_all_dim") or 0
    if rope.type ~= "default" and mall ~= 0 then
      local m = mscale(rope.factor, mall)
      scale = scale * m * m
    end

    local function w(name, shape) return g:weight(name, shape) end
    local function b(p, name, shape)
      if bias then return w(p .. name, shape) end
    end
    local pos = g:input("positions")
    local embed = w("model.embed_tokens.weight", { vocab, H })
    local x = g:embed(embed, g:input("ids"), "embed")
    for i = 0, n_layers - 1 do
      g:layer(i)
      local p = "model.layers." .. i .. "."
      local a = p .. "self_attn."
      local h = g:rms_norm(x, w(p .. "input_layernorm.weight", { H }), eps, "attn_norm")
      -- q's heads are [nope | pe] rows of q_proj (q_b_proj): two linears of weight views, so no
      -- activation is sliced; likewise kv_a's [latent | k_pe] rows
      local qx, qw = h, nil
      if q_rank then
        qx = g:linear(h, w(a .. "q_a_proj.weight", { q_rank, H }), b(a, "q_a_proj.bias", { q_rank }), "attn.q_a")
        qx = g:rms_norm(qx, w(a .. "q_a_layernorm.weight", { q_rank }), lat_eps, "attn.q_a_norm")
        qw = w(a .. "q_b_proj.weight", { heads * dq, q_rank }):reshape { heads, dq, q_rank }
      else
        qw = w(a .. "q_proj.weight", { heads * dq, H }):reshape { heads, dq, H }
      end
      local qin = q_rank or H
      local q_nope = g:linear(qx, qw:slice(1, 0, dn):reshape { heads * dn, qin }, "attn.q_nope")
      local q_pe = g:linear(qx, qw:slice(1, dn, dr):reshape { heads * dr, qin }, "attn.q_pe")
      q_pe = g:rope(q_pe, pos, { head_dim = dr, params = rope, interleaved = true }, "attn.q_rope")
      local kv_w = w(a .. "kv_a_proj_with_mqa.weight", { rank + dr, H })
      local kv_bias = b(a, "kv_a_proj_with_mqa.bias", { rank + dr })
      local latent = g:linear(h, kv_w:slice(0, 0, rank), kv_bias and kv_bias:slice(0, 0, rank), "attn.latent")
      latent = g:rms_norm(latent, w(a .. "kv_a_layernorm.weight", { rank }), lat_eps, "attn.latent_norm")
      local k_pe = g:linear(h, kv_w:slice(0, rank, dr), kv_bias and kv_bias:slice(0, rank, dr), "attn.k_pe")
      k_pe = g:rope(k_pe, pos, { head_dim = dr, params = rope, interleaved = true }, "attn.k_rope")
      local o = g:mla_attention(q_nope, q_pe, latent, k_pe,
                                { kv_b = w(a .. "kv_b_proj.weight", { heads * (dn + dv), rank }), heads = heads,
                                  nope_dim = dn, rope_dim = dr, v_dim = dv, scale = scale }, "attn")
      o = g:linear(o, w(a .. "o_proj.weight", { H, heads * dv }), b(a, "o_proj.bias", { H }), "attn.o")
      x = g:add(x, o, "attn_residual")

      local m = p .. "mlp."
      h = g:rms_norm(x, w(p .. "post_attention_layernorm.weight", { H }), eps, "mlp_norm")
      local out
      if n_exp > 0 and i >= first_k and i % freq == 0 then
        local router, gate, up, down = kiln.experts(g, m, n_exp, m_inter, H,
                                                    { "gate_proj.weight", "up_proj.weight", "down_proj.weight" })
        out = g:moe(h, { router = router, gate = gate, up = up, down = down, top_k = top_k,
                         renormalize = false, act = kiln.act_name(act) }, "moe")
        if routed_scale ~= 1 then out = g:scale(out, routed_scale, "moe.scaled") end
        if n_shared > 0 then
          local s, si = m .. "shared_experts.", n_shared * m_inter
          local sh = kiln.gated_mlp(g, h, w(s .. "gate_proj.weight", { si, H }), w(s .. "up_proj.weight", { si, H }),
                                    w(s .. "down_proj.weight", { H, si }), act)
          out = g:add(out, sh, "moe.with_shared")
        end
      else
        out = kiln.gated_mlp(g, h, w(m .. "gate_proj.weight", { inter, H }), w(m .. "up_proj.weight", { inter, H }),
                             w(m .. "down_proj.weight", { H, inter }), act)
      end
      x = g:add(x, out, "mlp_residual")
    end
    g:layer(nil)
    x = g:rms_norm(x, w("model.norm.weight", { H }), eps, "final_norm")
    local head = tied and embed or w("lm_head.weight", { vocab, H })
    return g:logits(x, head, "logits")
  end,
}
