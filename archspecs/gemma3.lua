-- gemma3.lua — Gemma 3's text model (Gemma3ForCausalLM, model_type gemma3_text): the Gemma 2
-- layer (four (1 + w) RMSNorms per layer, sqrt(hidden)-scaled embeddings, tanh-GELU gated MLP,
-- query_pre_attn_scalar) with a per-head (1 + w) RMSNorm on q and k before the rotation, sliding
-- ("local") layers and full ("global") layers that rotate with different bases, five local
-- layers to one global by default, and no soft caps in the released checkpoints.
--
-- HF reference: transformers/models/gemma3/modeling_gemma3.py, configuration_gemma3.py
-- (Gemma3TextConfig). The rotary settings come in two conventions: transformers 5 writes
-- rope_parameters keyed by layer type; older files write rope_theta (global, default 1e6),
-- rope_local_base_freq (local, default 1e4) and rope_scaling, which applies to global layers only.
--
-- A final logit soft cap (final_logit_softcapping, null in the released checkpoints) is served as
-- Gemma 2's is. Not served: the image-text Gemma3ForConditionalGeneration.
local kiln = require "kiln"

return kiln.archspec {
  name = "gemma3",
  architectures = { "Gemma3ForCausalLM" },
  task = "generate",
  ignore = { "%.rotary_emb%.inv_freq$" },

  build = function(g, cfg)
    local H        = cfg:int("hidden_size")
    local n_layers = cfg:int("num_hidden_layers")
    local heads    = cfg:int("num_attention_heads")
    local kv_heads = cfg:int("num_key_value_heads", 4)          -- Gemma3TextConfig's defaults
    local hd       = cfg:int("head_dim", 256)
    local inter    = cfg:int("intermediate_size")
    local vocab    = cfg:int("vocab_size")
    local eps      = cfg:float("rms_norm_eps", 1e-6)
    local act      = cfg:str("hidden_activation", "gelu_pytorch_tanh")
    local qkv_bias = cfg:bool("attention_bias", false)
    local tied     = cfg:bool("tie_word_embeddings", true)
    local scale    = cfg:float("query_pre_attn_scalar", 256) ^ -0.5
    local softcap  = cfg:has("attn_logit_softcapping") and cfg:float("attn_logit_softcapping") or 0
    if cfg:bool("use_bidirectional_attention", false) then
      error(cfg:path() .. ": use_bidirectional_attention is true; gemma3.lua serves causal generation only " ..
            "(set it to false or null)")
    end

    -- Global and local rotary settings, in either convention (see the top of this file).
    local global_rope, local_rope
    if cfg:has("rope_parameters.full_attention") or cfg:has("rope_parameters.sliding_attention") then
      global_rope = cfg:rope { layer_type = "full_attention" }
      local_rope = cfg:rope { layer_type = "sliding_attention" }
    else
      global_rope = cfg:rope { default_theta = 1000000 }
      local_rope = {}
      for key, val in pairs(global_rope) do local_rope[key] = val end
      local_rope.type = "default"
      local_rope.factor = 1
      local_rope.attention_factor = 1
      local_rope.theta = cfg:float("rope_local_base_freq", 10000)
    end
    local final_cap = cfg:has("final_logit_softcapping") and cfg:float("final_logit_softcapping") or 0

    -- Gemma3TextConfig: layer_types, else every sliding_window_pattern-th layer (1-based) is
    -- global and the others slide; sliding_window null means no window.
    local window = cfg:has("sliding_window") and cfg:int("sliding_window") or 0
    local layer_types = cfg:get("layer_types")
    local pattern = cfg:int("sliding_window_pattern", 6)
    local function is_sliding(i)
      local t = layer_types and layer_types[i + 1] or ((i + 1) % pattern ~= 0 and "sliding_attention" or "full_attention")
      if t ~= "sliding_attention" and t ~= "full_attention" then
        error(cfg:path() .. ": layer_types[" .. i .. "] is '" .. tostring(t) ..
              "'; expected 'sliding_attention' or 'full_attention'")
      end
      return t == "sliding_attention"
    end

    local c = { H = H, n_layers = n_layers, heads = heads, kv_heads = kv_heads, head_dim = hd, inter = inter,
                vocab = vocab, eps = eps, tied = tied }
    return kiln.gemma(g, c, { act = act, qkv_bias = qkv_bias, sandwich = true, qk_norm = true, softcap = final_cap,
                              attention = function(i)
                                local sliding = is_sliding(i)
                                return { scale = scale, softcap = softcap, window = sliding and window or 0,
                                         rope = sliding and local_rope or global_rope }
                              end })
  end,
}
