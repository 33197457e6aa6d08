-- kiln.lua — the Lua side of kiln's archspec DSL.
--
-- An archspec is a Lua file that returns kiln.archspec{...}. Its build(g, cfg) function
-- describes the model's forward pass with the graph builder `g` (ops implemented in C,
-- compiler/spec.c) from fields of config.json read through `cfg`. Nothing here computes;
-- building only records nodes. See archspecs/README.md for the guide.
--
-- This file holds what is easier to say in Lua than in C: validation of the spec table and
-- small compositions of the C ops that many families share.

local kiln = {}

-- The token dimension in shapes: x:reshape{kiln.T, heads, head_dim}.
kiln.T = "T"

-- kiln.options(opts, op, decl) -> opts: checks a table of named options the way the C ops
-- (g:attention, g:moe, g:rope, ...) check theirs. decl maps each known key to its type:
-- "integer" (a whole number), "number", "boolean", "string", "table", "tensor", "function" or
-- "any". An unknown key is an error naming the key, `op`, the spec line and the nearest known
-- key; a value of another type is an error saying what it got and what is expected. nil opts
-- pass (an omitted table). Every helper here that takes an options table checks it with this,
-- so a misspelt option is never silently ignored. (Implemented in C, compiler/spec.c.)
kiln.options = require "kiln.options"

local TASKS = { generate = true, embed = true, classify = true }
-- The keys of a declaration (spec_probe in compiler/spec.c checks the same five).
local ARCHSPEC_KEYS = {
  name = "string", architectures = "table", task = "string", ignore = "table", build = "function",
}

-- Declares an archspec. Checks the declaration so that mistakes are reported against the
-- spec file when it is loaded, not later.
function kiln.archspec(spec)
  if type(spec) ~= "table" then
    error("kiln.archspec expects a table {name=, architectures=, task=, build=}", 2)
  end
  kiln.options(spec, "archspec", ARCHSPEC_KEYS)
  if type(spec.name) ~= "string" then error("archspec: 'name' must be a string", 2) end
  if type(spec.architectures) ~= "table" or #spec.architectures == 0 then
    error("archspec '" .. spec.name .. "': 'architectures' must list HF architecture names", 2)
  end
  if not TASKS[spec.task] then
    error("archspec '" .. spec.name .. "': 'task' must be generate, embed or classify", 2)
  end
  if type(spec.build) ~= "function" then
    error("archspec '" .. spec.name .. "': 'build' must be a function(g, cfg)", 2)
  end
  return spec
end

-- The first of `prefixes` under which the checkpoint has `probe`: checkpoints saved from the
-- bare model lack the task head's prefix ("transformer.", "bert.", "model."). Falls back to the
-- first prefix, so a missing tensor is reported under its usual name.
function kiln.prefix(g, prefixes, probe)
  for _, p in ipairs(prefixes) do
    if g:has_weight(p .. probe) then return p end
  end
  return prefixes[1]
end

-- Applies the activation named like HF's `hidden_act` ("silu", "gelu", "gelu_new", ...).
local ACTS = {
  silu = "silu", swish = "silu",
  gelu = "gelu",
  gelu_new = "gelu_tanh", gelu_pytorch_tanh = "gelu_tanh", gelu_fast = "gelu_tanh",
  relu = "relu",
}
function kiln.act(g, name, x, label)
  local op = ACTS[name]
  if not op then
    local known = {}
    for k in pairs(ACTS) do known[#known + 1] = k end
    table.sort(known)
    error("activation '" .. tostring(name) .. "' is not supported (known: " ..
          table.concat(known, ", ") .. ")", 2)
  end
  return g[op](g, x, label)
end

-- The activation name for g:moe's `act` option.
function kiln.act_name(name)
  local op = ACTS[name]
  if not op then error("activation '" .. tostring(name) .. "' is not supported", 2) end
  return op
end

-- down(act(gate(x)) * up(x)): the gated MLP of Llama and most decoders since.
function kiln.gated_mlp(g, x, gate_w, up_w, down_w, act)
  local gate = kiln.act(g, act or "silu", g:linear(x, gate_w, "mlp.gate"), "mlp.act")
  local up = g:linear(x, up_w, "mlp.up")
  return g:linear(g:mul(gate, up, "mlp.gated"), down_w, "mlp.down")
end

-- Concatenates any number of tensors (the C op takes up to 10 at once).
function kiln.concat(g, parts, dim)
  if #parts == 1 then return parts[1] end
  local level = parts
  while #level > 1 do
    local next_level = {}
    for i = 1, #level, 10 do
      local chunk = {}
      for k = i, math.min(i + 9, #level) do chunk[#chunk + 1] = level[k] end
      next_level[#next_level + 1] = #chunk == 1 and chunk[1] or g:concat(chunk, dim)
    end
    level = next_level
  end
  return level[1]
end

-- Stacks checkpoint tensors of one shape into a [n, ...shape] weight, e.g. per-expert
-- matrices into the [experts, out, in] tensor g:moe expects.
function kiln.stack(g, names, shape)
  local full = { 1 }
  for _, d in ipairs(shape) do full[#full + 1] = d end
  local parts = {}
  for i, name in ipairs(names) do
    parts[i] = g:weight(name, shape):reshape(full)
  end
  return kiln.concat(g, parts, 0)
end

return kiln
