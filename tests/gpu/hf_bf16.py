#!/usr/bin/env python3
"""hf_bf16.py — HF transformers' own bf16 logits for the fixtures, on the GPU: the baseline that
says how much error bf16 arithmetic itself makes on each fixture (tests/gpu/run.sh compares
kiln's bf16 error against it). Usage: hf_bf16.py OUTDIR FIXTURE... (writes OUTDIR/NAME.hfbf16.st;
fixtures transformers cannot load are skipped; Qwen v1's and InternLM2's remote code are
renamed into their transformers equivalents; the FP8 fixtures are dequantised by
tests/fixtures/make_fp8_fixtures.py, the INT4 ones by make_int4_fixtures.py). Classify fixtures
(expected "scores") get their bf16 scores instead of logits."""
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


def internlm2_as_llama(d):
    """InternLM2 is remote code; its math is Llama's with its own names and a wqkv whose rows are
    grouped per KV head ([q x heads/kv_heads, k, v] x head_dim), so it is renamed into a
    LlamaForCausalLM. Dynamic NTK (the fixture's rope_scaling) is a no-op below
    max_position_embeddings, which the fixture's prompt stays under."""
    import json
    from safetensors.torch import load_file as load_torch
    c = json.load(open(f"{d}/config.json"))
    w = load_torch(f"{d}/model.safetensors")
    H, nh = c["hidden_size"], c["num_attention_heads"]
    nkv = c.get("num_key_value_heads") or nh
    hd, grp = H // nh, nh // nkv
    cfg = transformers.LlamaConfig(
        vocab_size=c["vocab_size"], hidden_size=H, intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["num_hidden_layers"], num_attention_heads=nh, num_key_value_heads=nkv,
        rms_norm_eps=c["rms_norm_eps"], max_position_embeddings=c["max_position_embeddings"],
        rope_parameters={"rope_type": "default", "rope_theta": c["rope_theta"]},
        attention_bias=c.get("bias", True), tie_word_embeddings=False)
    sd = {"model.embed_tokens.weight": w["model.tok_embeddings.weight"],
          "model.norm.weight": w["model.norm.weight"], "lm_head.weight": w["output.weight"]}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        qkv = w[p + "attention.wqkv.weight"].view(nkv, grp + 2, hd, H)
        sd[p + "self_attn.q_proj.weight"] = qkv[:, :grp].reshape(nh * hd, H)
        sd[p + "self_attn.k_proj.weight"] = qkv[:, grp].reshape(nkv * hd, H)
        sd[p + "self_attn.v_proj.weight"] = qkv[:, grp + 1].reshape(nkv * hd, H)
        sd[p + "self_attn.o_proj.weight"] = w[p + "attention.wo.weight"]
        sd[p + "input_layernorm.weight"] = w[p + "attention_norm.weight"]
        sd[p + "post_attention_layernorm.weight"] = w[p + "ffn_norm.weight"]
        sd[p + "mlp.gate_proj.weight"] = w[p + "feed_forward.w1.weight"]
        sd[p + "mlp.up_proj.weight"] = w[p + "feed_forward.w3.weight"]
        sd[p + "mlp.down_proj.weight"] = w[p + "feed_forward.w2.weight"]
    if c.get("bias", True):
        raise ValueError("internlm2 with bias=true: the wqkv/wo biases are not converted here")
    m = transformers.LlamaForCausalLM(cfg)
    m.load_state_dict({k: v.float().contiguous() for k, v in sd.items()}, strict=True)
    return m


for name in sys.argv[2:]:
    d = f"tests/fixtures/{name}"
    ex = load_file(f"{d}/expected.safetensors")
    try:
        if name in ("qwen", "qwen_bf16"):
            m = qwen_v1_as_qwen2(d).to(torch.bfloat16).to(dev).eval()
        elif name in ("llama_fp8_ct", "llama_fp8q"):
            # FP8: transformers reads compressed-tensors only through that package, so the baseline
            # is the dequantised model (llama_fp8q: the llama fixture as --quant fp8 rounds it)
            sys.path.insert(0, "tests/fixtures")
            import make_fp8_fixtures as fp8
            m = (fp8.dequantised_model(d) if name == "llama_fp8_ct" else fp8.quantised_llama())
            m = m.to(torch.bfloat16).to(dev).eval()
        elif name in ("llama_awq", "llama_gptq", "llama_int4_ct"):
            # INT4: read through autoawq/gptqmodel/compressed-tensors only; the dequantised model
            sys.path.insert(0, "tests/fixtures")
            import make_int4_fixtures as int4
            m = int4.dequantised_model(d).to(torch.bfloat16).to(dev).eval()
        elif name.startswith("internlm2"):
            m = internlm2_as_llama(d).to(torch.bfloat16).to(dev).eval()
        elif "scores" in ex:
            m = transformers.AutoModelForSequenceClassification.from_pretrained(
                d, dtype=torch.bfloat16, attn_implementation="eager").to(dev).eval()
        else:
            m = transformers.AutoModelForCausalLM.from_pretrained(
                d, dtype=torch.bfloat16, attn_implementation="eager").to(dev).eval()
    except Exception as e:  # noqa: BLE001 - report and go on
        print(f"{name}: skipped ({type(e).__name__}: {e})")
        continue
    kw = {}
    if "token_type_ids" in ex:
        kw["token_type_ids"] = torch.tensor(ex["token_type_ids"], device=dev)[None]
    with torch.no_grad():
        lo = m(torch.tensor(ex["input_ids"], device=dev)[None], **kw).logits[0].float().cpu().numpy()
    save_file({"scores" if "scores" in ex else "logits": np.ascontiguousarray(lo)},
              f"{out}/{name}.hfbf16.st")
    print(f"{name}: ok")
