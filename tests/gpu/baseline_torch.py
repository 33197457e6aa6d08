#!/usr/bin/env python3
"""baseline_torch.py — the PyTorch baselines tests/gpu/bench.sh puts beside `kiln bench`.

    baseline_torch.py CHECKPOINT_DIR OUT.json [--prompt 32] [--new 128] [--reps 3]
                      [--prefill 128,512,2048] [--skip-compile]

Two baselines on one Hugging Face checkpoint (a Llama-family model in bf16, as `kilnc synth` writes):

1. HF transformers' prefill (eager, sdpa): the model's forward over a prompt of each --prefill length
   with a fresh cache and the LM head on the last row only (logits_to_keep=1), then the argmax:
   what a server pays to the first token. Best of --reps after a warm-up run.
2. A static-KV-cache batch-1 decode loop under torch.compile(mode="reduce-overhead"), gpt-fast's
   method: a plain PyTorch Llama (below) over the HF model's own weight tensors (no copy), caches
   of [1, kv_heads, prompt + new (rounded up to 64), head_dim] as module buffers written in place,
   attention over the whole cache with a causal mask (gpt-fast's way; for the context lengths
   here that is a few cache rows), one decode step compiled with fullgraph=True and replayed from
   CUDA graphs, the greedy token chosen on the GPU. A --prompt-token prompt is prefilled eagerly,
   then --new steps are timed (best of --reps, each after a fresh prefill); the compile and the
   graph capture are timed separately. The prompt and the step count match `kiln bench`'s decode
   (a 32-token prompt, --new steps), so the two share a roofline.

Before timing, the loop's prefill logits are compared with HF's for the same prompt (relative L2
of the last row; bf16 both, so about 1e-2 is agreement) and the result is written, so a baseline
that computes something else is visible. Writes OUT.json with every figure and prints it.
Compile time is bounded by the caller (bench.sh runs this under `timeout`); inductor's
coordinate-descent tuning (gpt-fast turns it on) stays off unless BENCH_TORCH_CDT=1, because it
doubles the compile time for a few percent.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F


def log(msg):
    print(f"baseline_torch: {msg}", file=sys.stderr, flush=True)


def best_of(fn, reps):
    """Runs fn once to warm up, then reps times; the fastest seconds."""
    fn()
    best = math.inf
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


# ---------------------------------------------------------------- the gpt-fast style model


def rms_norm(x, w, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Layer(torch.nn.Module):
    def __init__(self, hf_layer, cfg, max_len, dev):
        super().__init__()
        a, m = hf_layer.self_attn, hf_layer.mlp
        # q, k, v and gate, up fused as gpt-fast fuses them (one GEMV each); o, down as they are
        self.wqkv = torch.nn.Parameter(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                                       requires_grad=False)
        self.wo = a.o_proj.weight
        self.w13 = torch.nn.Parameter(torch.cat([m.gate_proj.weight, m.up_proj.weight]),
                                      requires_grad=False)
        self.w2 = m.down_proj.weight
        self.ln1 = hf_layer.input_layernorm.weight
        self.ln2 = hf_layer.post_attention_layernorm.weight
        self.nh, self.nkv, self.hd = cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
        self.inter = cfg["intermediate"]
        self.eps = cfg["eps"]
        shape = (1, self.nkv, max_len, self.hd)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=torch.bfloat16, device=dev))
        self.register_buffer("v_cache", torch.zeros(shape, dtype=torch.bfloat16, device=dev))

    def forward(self, x, cos, sin, mask, pos):
        B, T, _ = x.shape
        h = rms_norm(x, self.ln1, self.eps)
        qkv = F.linear(h, self.wqkv)
        q, k, v = qkv.split([self.nh * self.hd, self.nkv * self.hd, self.nkv * self.hd], dim=-1)
        q = q.view(B, T, self.nh, self.hd).transpose(1, 2)
        k = k.view(B, T, self.nkv, self.hd).transpose(1, 2)
        v = v.view(B, T, self.nkv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        self.k_cache[:, :, pos] = k
        self.v_cache[:, :, pos] = v
        rep = self.nh // self.nkv
        kk = self.k_cache.repeat_interleave(rep, dim=1)
        vv = self.v_cache.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)
        x = x + F.linear(o.transpose(1, 2).reshape(B, T, self.nh * self.hd), self.wo)
        h = rms_norm(x, self.ln2, self.eps)
        g, u = F.linear(h, self.w13).split([self.inter, self.inter], dim=-1)
        return x + F.linear(F.silu(g) * u, self.w2)


class Decoder(torch.nn.Module):
    """Llama over the HF model's weights with static KV caches (gpt-fast's Transformer)."""

    def __init__(self, hf, max_len, dev):
        super().__init__()
        c = hf.config
        hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        cfg = {"heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads, "head_dim": hd,
               "intermediate": c.intermediate_size, "eps": c.rms_norm_eps}
        self.embed = hf.model.embed_tokens.weight
        self.layers = torch.nn.ModuleList(Layer(l, cfg, max_len, dev) for l in hf.model.layers)
        self.norm = hf.model.norm.weight
        self.head = hf.lm_head.weight
        self.eps = c.rms_norm_eps
        # the rotary tables from HF's own rotary embedding (its inv_freq has the rope scaling in it)
        rot = hf.model.rotary_emb
        t = torch.arange(max_len, device=dev, dtype=torch.float32)
        f = torch.outer(t, rot.inv_freq.float().to(dev))
        emb = torch.cat((f, f), dim=-1)
        s = float(getattr(rot, "attention_scaling", 1.0))
        self.register_buffer("cos", (emb.cos() * s).to(torch.bfloat16))
        self.register_buffer("sin", (emb.sin() * s).to(torch.bfloat16))
        self.register_buffer("causal", torch.tril(torch.ones(max_len, max_len, dtype=torch.bool,
                                                             device=dev)))

    def forward(self, ids, pos):
        """ids [1, T] at positions pos [T]: the logits of the last row [1, vocab]."""
        x = F.embedding(ids, self.embed)
        cos, sin = self.cos[pos][None, None], self.sin[pos][None, None]
        mask = self.causal[pos][None, None]
        for layer in self.layers:
            x = layer(x, cos, sin, mask, pos)
        x = rms_norm(x[:, -1], self.norm, self.eps)
        return F.linear(x, self.head).float()


def decode_one(model, tok, pos):
    """One decode step: the greedy next token [1, 1]."""
    return model(tok, pos).argmax(-1, keepdim=True).to(torch.int32)


# ---------------------------------------------------------------- the runs


def hf_prefill(hf, vocab, lengths, reps, dev, out):
    g = torch.Generator(device="cpu").manual_seed(1)
    for n in lengths:
        ids = torch.randint(0, vocab, (1, n), generator=g).to(dev)

        def run():
            r = hf(input_ids=ids, use_cache=True, logits_to_keep=1)
            r.logits[:, -1].argmax(-1).item()

        s = best_of(run, reps)
        out["hf_prefill"].append({"tokens": n, "ms": s * 1e3, "tok_s": n / s})
        log(f"HF eager (sdpa) prefill of {n} tokens: {s * 1e3:.2f} ms ({n / s:,.0f} tok/s)")


def compiled_decode(hf, vocab, prompt, new, reps, dev, out):
    max_len = (prompt + new + 63) // 64 * 64
    model = Decoder(hf, max_len, dev).eval()
    g = torch.Generator(device="cpu").manual_seed(2)
    ids = torch.randint(0, vocab, (1, prompt), generator=g).to(dev)
    ppos = torch.arange(prompt, device=dev)
    # the check: this model's prefill logits against HF's own for the same prompt
    ref = hf(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1].float()
    mine = model(ids, ppos)
    err = ((mine - ref).norm() / ref.norm()).item()
    out["check_rel_l2"] = err
    log(f"check: the loop's prefill logits vs HF's, relative L2 {err:.2e} (bf16 both)")

    step = torch.compile(decode_one, mode="reduce-overhead", fullgraph=True)

    def run(steps):
        tok = model(ids, ppos).argmax(-1, keepdim=True).to(torch.int32)
        pos = torch.tensor([prompt], device=dev)
        for _ in range(steps):
            torch.compiler.cudagraph_mark_step_begin()
            tok = step(model, tok, pos).clone()
            pos += 1
        return tok

    t = time.perf_counter()
    run(3)  # compile, then the CUDA graph's warm-up and capture
    torch.cuda.synchronize()
    out["compile_s"] = time.perf_counter() - t
    log(f"torch.compile and graph capture: {out['compile_s']:.1f} s")
    best = math.inf
    for _ in range(reps + 1):  # the first is a warm-up
        tok = model(ids, ppos).argmax(-1, keepdim=True).to(torch.int32)
        pos = torch.tensor([prompt], device=dev)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(new):
            torch.compiler.cudagraph_mark_step_begin()
            tok = step(model, tok, pos).clone()
            pos += 1
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    out["decode_b1"] = {"prompt": prompt, "new": new, "seconds": best, "tok_s": new / best}
    log(f"torch.compile decode, batch 1, {new} steps after a {prompt}-token prompt: "
        f"{new / best:.1f} tok/s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prefill", default="128,512,2048")
    ap.add_argument("--skip-compile", action="store_true")
    a = ap.parse_args()
    import transformers

    if os.environ.get("BENCH_TORCH_CDT") == "1":
        import torch._inductor.config as ic
        ic.coordinate_descent_tuning = True
    dev = "cuda"
    out = {"torch": torch.__version__, "transformers": transformers.__version__,
           "gpu": torch.cuda.get_device_name(0), "hf_prefill": []}
    t = time.perf_counter()
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        a.checkpoint, dtype=torch.bfloat16, attn_implementation="sdpa").to(dev).eval()
    out["load_s"] = time.perf_counter() - t
    log(f"loaded {a.checkpoint} in {out['load_s']:.1f} s ({torch.cuda.get_device_name(0)})")
    vocab = hf.config.vocab_size

    def save():
        with open(a.out, "w") as f:
            json.dump(out, f, indent=2)

    with torch.no_grad():  # as gpt-fast (inference tensors and CUDA-graph trees mix less well)
        hf_prefill(hf, vocab, [int(x) for x in a.prefill.split(",")], a.reps, dev, out)
        save()
        if not a.skip_compile:
            compiled_decode(hf, vocab, a.prompt, a.new, a.reps, dev, out)
            save()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
