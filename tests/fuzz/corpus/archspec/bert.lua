-- bert.lua — BERT as a sentence encoder (task embed): word + learned absolute position +
-- token type embeddings, post-LayerNorm encoder blocks with bidirectional attention, GELU
-- MLP; the output is the mean of the last hidden states, L2-normalised (sentence-transformers'
-- mean pooling).
--
-- HF reference: transformers/models/bert/modeling_bert.py. The pooler (dense + tanh over the
-- first token) is not used by mean pooling, so its weights are ignored.
local kiln = require "kiln"

return kiln.archspec {
  name = "bert",
  architectures = { "BertModel" },
  task = "embed",
  ignore = { "pooler%.dense%.", "^cls%.", "position_ids$" },

  build = function(g, cfg)
    local H        = cfg:int("hidden_size")
    local n_layers = cfg:int("num_hidden_layers")
    local heads    = cfg:int("num_attention_heads")
    local hd       = H // heads
    local inter    = cfg:int("intermediate_size")
    local vocab    = cfg:int("vocab_size")
    local max_pos  = cfg:int("max_position_embeddings")
    local n_types  = cfg:int("type_vocab_size", 2)
    local eps      = cfg:float("layer_norm_eps", 1e-12)
    local act      = cfg:str("hidden_act", "gelu")
    if cfg:str("position_embedding_type", "absolute") ~= "absolute" then
      error("bert: only position_embedding_type 'absolute' is supported")
    end

    -- Checkpoints saved from BertFor* carry a "bert." prefix; from BertModel none.
    local P = kiln.prefix(g, { "", "bert." }, "embeddings.word_embeddings.weight")
    local function w(name, shape) return g:weight(P .. name, shape) end
    -- Old checkpoints name LayerNorm parameters gamma/beta.
    local function ln(x, name, label)
      local old = g:has_weight(P .. name .. ".gamma")
      return g:layer_norm(x, w(name .. (old and ".gamma" or ".weight"), { H }),
                          w(name .. (old and ".beta" or ".bias"), { H }), eps, label)
    end
    local function linear(x, name, out, inp, label)
      return g:linear(x, w(name .. ".weight", { out, inp }), w(name .. ".bias", { out }), label)
    end

    local e = "embeddings."
    local x = g:embed(w(e .. "word_embeddings.weight", { vocab, H }), g:input("ids"), "embed.words")
    x = g:add(x, g:embed(w(e .. "position_embeddings.weight", { max_pos, H }), g:input("positions"), "embed.positions"))
    x = g:add(x, g:embed(w(e .. "token_type_embeddings.weight", { n_types, H }), g:input("token_types"), "embed.types"))
    x = ln(x, e .. "LayerNorm", "embed_norm")

    for i = 0, n_layers - 1 do
      g:layer(i)
      local p = "encoder.layer." .. i .. "."
      local a = p .. "attention."

      local q = linear(x, a .. "self.query", H, H, "attn.q")
      local k = linear(x, a .. "self.key", H, H, "attn.k")
      local v = linear(x, a .. "self.value", H, H, "attn.v")
      local o = g:attention(q, k, v, { heads = heads, head_dim = hd, causal = false }, "attn")
      o = linear(o, a .. "output.dense", H, H, "attn.o")
      x = ln(g:add(x, o), a .. "output.LayerNorm", "attn_norm")

      local h = kiln.act(g, act, linear(x, p .. "intermediate.dense", inter, H, "mlp.up"), "mlp.act")
      h = linear(h, p .. "output.dense", H, inter, "mlp.down")
      x = ln(g:add(x, h), p .. "output.LayerNorm", "mlp_norm")
    end

    g:layer(nil)
    return g:pool(x, { mode = "mean", normalize = true }, "embedding")
  end,
}
