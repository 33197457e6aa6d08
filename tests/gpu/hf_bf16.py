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
for name in sys.argv[2:]:
    d = f"tests/fixtures/{name}"
    ex = load_file(f"{d}/expected.safetensors")
    try:
        m = transformers.AutoModelForCausalLM.from_pretrained(
            d, dtype=torch.bfloat16, attn_implementation="eager").to(dev).eval()
    except Exception as e:  # noqa: BLE001 - report and go on
        print(f"{name}: skipped ({type(e).__name__})")
        continue
    with torch.no_grad():
        lo = m(torch.tensor(ex["input_ids"], device=dev)[None]).logits[0].float().cpu().numpy()
    save_file({"logits": np.ascontiguousarray(lo)}, f"{out}/{name}.hfbf16.st")
    print(f"{name}: ok")
