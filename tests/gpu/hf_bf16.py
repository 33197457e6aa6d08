#!/usr/bin/env python3
"""hf_bf16.py — HF transformers' own bf16 logits for the fixtures, on the GPU: the baseline that
says how much error bf16 arithmetic itself makes on each fixture (tests/gpu/run.sh compares
kiln's bf16 error against it). Usage: hf_bf16.py OUTDIR FIXTURE... (writes OUTDIR/NAME.hfbf16.st;
fixtures transformers cannot load, such as Qwen v1's remote code, are skipped)."""
import sys

import numpy as np
import torch
import transformers
from safetensors.numpy import load_file, save_file

out = sys.argv[1]
dev = "cuda" if torch.cuda.is_available() else "cpu"


def qwen_v1_as_qwen2(d):
    """Qwen v1 has no transformers class; its math is Qwen2's with MHA and an untied head
    (tests/fixtures/README.md), so the checkpoint is renamed into a Qwen2ForCausalLM."""
    import json
    from safetensors.torch import load_file as load_torch
    c = json.load(open(f"{d}/config.json"))
    w = load_torch(f"{d}/model.safetensors")
    cfg = transformers.Qwen2Config(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"] // 2, num_hidden_layers=c["num_hidden_layers"],
        num_attention_heads=c["num_attention_heads"], num_key_value_heads=c["num_attention_heads"],
        rms_norm_eps=c["layer_norm_epsilon"], max_position_embeddings=c["max_position_embeddings"],
        rope_parameters={"rope_type": "default", "rope_theta": c["rotary_emb_base"]},
        tie_word_embeddings=False, use_sliding_window=False)
    sd = {"model.embed_tokens.weight": w["transformer.wte.weight"],
          "model.norm.weight": w["transformer.ln_f.weight"], "lm_head.weight": w["lm_head.weight"]}
    H = c["hidden_size"]
    for i in range(c["num_hidden_layers"]):
        p, q = f"transformer.h.{i}.", f"model.layers.{i}."
        qkv, b = w[p + "attn.c_attn.weight"], w[p + "attn.c_attn.bias"]
        for j, n in enumerate(("q", "k", "v")):
            sd[q + f"self_attn.{n}_proj.weight"] = qkv[j * H:(j + 1) * H]
            sd[q + f"self_attn.{n}_proj.bias"] = b[j * H:(j + 1) * H]
        sd[q + "self_attn.o_proj.weight"] = w[p + "attn.c_proj.weight"]
        sd[q + "input_layernorm.weight"] = w[p + "ln_1.weight"]
        sd[q + "post_attention_layernorm.weight"] = w[p + "ln_2.weight"]
        sd[q + "mlp.up_proj.weight"] = w[p + "mlp.w1.weight"]
        sd[q + "mlp.gate_proj.weight"] = w[p + "mlp.w2.weight"]
        sd[q + "mlp.down_proj.weight"] = w[p + "mlp.c_proj.weight"]
    m = transformers.Qwen2ForCausalLM(cfg)
    m.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return m


for name in sys.argv[2:]:
    d = f"tests/fixtures/{name}"
    ex = load_file(f"{d}/expected.safetensors")
    try:
        if name in ("qwen", "qwen_bf16"):
            m = qwen_v1_as_qwen2(d).to(torch.bfloat16).to(dev).eval()
        else:
            m = transformers.AutoModelForCausalLM.from_pretrained(
                d, dtype=torch.bfloat16, attn_implementation="eager").to(dev).eval()
    except Exception as e:  # noqa: BLE001 - report and go on
        print(f"{name}: skipped ({type(e).__name__}: {e})")
        continue
    with torch.no_grad():
        lo = m(torch.tensor(ex["input_ids"], device=dev)[None]).logits[0].float().cpu().numpy()
    save_file({"logits": np.ascontiguousarray(lo)}, f"{out}/{name}.hfbf16.st")
    print(f"{name}: ok")
