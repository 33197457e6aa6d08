#!/usr/bin/env python3
"""synth_llama.py — a random-weight Llama checkpoint of a real model's shape, written on the GPU
machine (never shipped: an 8B checkpoint is 16 GB). HF layout: config.json, generation_config.json,
model-0000i-of-0000n.safetensors + index. Weights ~ N(0, 0.02) in bf16, norm weights ~ 1 + N(0, 0.1).

  synth_llama.py SHAPE OUT_DIR     SHAPE: 8b (Llama-3-8B), 1b (Llama-3.2-1B, untied), 70b
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

SHAPES = {
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
}


def main():
    shape, out = sys.argv[1], sys.argv[2]
    c = SHAPES[shape]
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
               max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0,
               bos_token_id=128000, eos_token_id=128001, torch_dtype="bfloat16", **c)
    os.makedirs(out, exist_ok=True)
    json.dump(cfg, open(f"{out}/config.json", "w"), indent=2)
    json.dump({"bos_token_id": 128000, "eos_token_id": 128001}, open(f"{out}/generation_config.json", "w"))
    H, I, L = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    hd = H // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * hd
    g = torch.Generator(device="cuda").manual_seed(0)

    def rnd(*s):
        return (torch.randn(*s, generator=g, device="cuda", dtype=torch.float32) * 0.02).to(torch.bfloat16).cpu()

    def norm(n):
        return (1 + 0.1 * torch.randn(n, generator=g, device="cuda")).to(torch.bfloat16).cpu()

    shards, cur, size, index = [], {}, 0, {}

    def add(name, t):
        nonlocal cur, size
        cur[name] = t
        size += t.numel() * 2
        if size > 4 << 30:
            flush()

    def flush():
        nonlocal cur, size
        if cur:
            shards.append(cur)
            cur, size = {}, 0

    add("model.embed_tokens.weight", rnd(c["vocab_size"], H))
    for i in range(L):
        p = f"model.layers.{i}."
        add(p + "input_layernorm.weight", norm(H))
        add(p + "self_attn.q_proj.weight", rnd(H, H))
        add(p + "self_attn.k_proj.weight", rnd(kv, H))
        add(p + "self_attn.v_proj.weight", rnd(kv, H))
        add(p + "self_attn.o_proj.weight", rnd(H, H))
        add(p + "post_attention_layernorm.weight", norm(H))
        add(p + "mlp.gate_proj.weight", rnd(I, H))
        add(p + "mlp.up_proj.weight", rnd(I, H))
        add(p + "mlp.down_proj.weight", rnd(H, I))
    add("model.norm.weight", norm(H))
    add("lm_head.weight", rnd(c["vocab_size"], H))
    flush()
    n = len(shards)
    for k, sh in enumerate(shards):
        fn = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        save_file(sh, f"{out}/{fn}", metadata={"format": "pt"})
        for name in sh:
            index[name] = fn
    json.dump({"metadata": {}, "weight_map": index}, open(f"{out}/model.safetensors.index.json", "w"), indent=1)
    print(f"synth_llama: {shape} -> {out} ({n} files)")


if __name__ == "__main__":
    main()
