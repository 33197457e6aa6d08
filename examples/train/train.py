#!/usr/bin/env python3
"""Trains kiln's example model, examples/tinyfortune: a small Llama on Debian's fortune cookies.

    python3 examples/train/train.py --minutes 4         # on the GPU machine: examples/tinyfortune
    python3 examples/train/train.py --minutes 10 --device cpu --out /tmp/tf
    python3 examples/train/train.py --expected-only     # only expected.safetensors and sample.txt

Self-contained and offline: the corpus is examples/train/corpus.txt.gz (Debian's `fortunes`
package, see make_corpus.sh and examples/README.md). Steps, in order:

  1. read the fortunes (separated by lines holding '%'), drop duplicates and those with control
     characters, hold out every 50th for validation;
  2. train a byte-level BPE tokenizer (HF tokenizers, GPT-2 pre-tokenization) whose special token
     <|endoftext|> separates fortunes and is the model's BOS and EOS: encoding a prompt prepends
     it, so a prompt is read as the start of a fortune;
  3. train a LlamaForCausalLM (tied embeddings) with a plain PyTorch loop: AdamW, linear warm-up
     then cosine decay, bf16 autocast on CUDA, fp32 on the CPU, on random windows of the token
     stream. The cosine runs on elapsed time, so training ends after --minutes whatever else
     shares the machine (--steps N runs on steps instead, for a reproducible run);
  4. save an HF checkpoint in bf16 (config.json, model.safetensors, generation_config.json,
     tokenizer.json, tokenizer_config.json), then reload the SAVED checkpoint upcast to fp32 on
     the CPU and store what the tests compare kiln with, expected.safetensors:
        input_ids  I64 [n]      the fixed prompt, encoded (BOS first)
        logits     F32 [n, V]   HF's logits at every prompt position
        tokens     I64 [N]      HF generate()'s greedy continuation, N tokens (EOS does not stop it)
        gen_logits F32 [N, V]   the logits each greedy token was chosen from
        margins    F32 [N]      top-1 minus top-2 of each gen_logits row
     with metadata: prompt (the text), continuation (HF's decode of tokens, specials skipped);
     and sample.txt, a few generated fortunes for the README, and training.json (command,
     device, steps, losses).

Seeded throughout (torch, the data order; the tokenizer trainer is deterministic); with --steps
the run is reproducible on the same device type. The defaults make a 5.8M-parameter model whose
folder (12 MB) fits in one result file of a GPU run.
"""
import argparse
import gzip
import json
import math
import os
import random
import sys
import time

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
EOT = "<|endoftext|>"
PROMPT = "A fool and"          # the fixed prompt of expected.safetensors and the demo
N_EXPECTED = 24                # greedy tokens stored for the tests


def log(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------- corpus

def read_fortunes(path):
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        text = f.read()
    out, seen, cur = [], set(), []
    for line in text.split("\n"):
        if line == "%":
            s = "\n".join(cur).rstrip()
            cur = []
            if not s.strip() or s in seen:
                continue
            if any((ord(c) < 32 and c not in "\t\n") or c == "\x7f" or c == "\ufffd" for c in s):
                continue  # overstrike/escape sequences and undecodable bytes
            seen.add(s)
            out.append(s)
        else:
            cur.append(line)
    return out


# ---------------------------------------------------------------- tokenizer

def train_tokenizer(texts, vocab):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    eot = tok.token_to_id(EOT)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{EOT} $A", pair=f"{EOT} $A {EOT} $B:1",
                                      special_tokens=[(EOT, eot)])])
    tok.decoder = decoders.ByteLevel()
    return tok, eot


def token_stream(tok, texts, eot):
    """<eot> f1 <eot> f2 <eot> ... as one long tensor."""
    ids = [eot]
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(eot)
    return torch.tensor(ids, dtype=torch.long)


# ---------------------------------------------------------------- training

def lr_at(step, progress, peak, warmup):
    """Linear warm-up over `warmup` steps, then cosine decay to 10% as progress goes 0 -> 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def batch(stream, bs, seq, gen):
    """bs random windows of seq + 1 tokens (the stream lives on the training device; the
    offsets come from a seeded CPU generator)."""
    ix = torch.randint(0, len(stream) - seq - 1, (bs, 1), generator=gen)
    return stream[(ix + torch.arange(seq + 1)).to(stream.device)]


@torch.no_grad()
def evaluate(model, stream, bs, seq, amp, n=8):
    model.eval()
    gen = torch.Generator().manual_seed(1234)
    tot = 0.0
    for _ in range(n):
        x = batch(stream, bs, seq, gen)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            tot += loss_of(model, x).item()
    model.train()
    return tot / n


def loss_of(model, x):
    logits = model(input_ids=x[:, :-1]).logits
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)),
                                             x[:, 1:].reshape(-1))


# ---------------------------------------------------------------- main

def transformers_quiet():
    from transformers.utils import logging as tl
    tl.disable_progress_bar()
    tl.set_verbosity_error()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=4.0, help="training time budget (default 4)")
    ap.add_argument("--steps", type=int, default=0, help="fixed number of steps (overrides --minutes)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=os.path.join(REPO, "examples", "tinyfortune"))
    ap.add_argument("--corpus", default=os.path.join(HERE, "corpus.txt.gz"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4, help="attention heads (head_dim = hidden/heads)")
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=768)
    ap.add_argument("--seq", type=int, default=256, help="training window")
    ap.add_argument("--batch", type=int, default=0, help="sequences per step (default 64 on CUDA, 16 on CPU)")
    ap.add_argument("--lr", type=float, default=0, help="peak learning rate (default 2e-3 on CUDA, 3e-3 on CPU)")
    ap.add_argument("--expected-only", action="store_true",
                    help="no training: rewrite expected.safetensors and sample.txt for --out")
    args = ap.parse_args()
    if args.expected_only:
        transformers_quiet()
        write_expected(args.out, args.seed)
        return

    from transformers import (AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM,
                              PreTrainedTokenizerFast)
    transformers_quiet()

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    bs = args.batch or (64 if cuda else 16)
    peak = args.lr or (2e-3 if cuda else 3e-3)
    t_start = time.time()

    fortunes = read_fortunes(args.corpus)
    val = fortunes[::50]
    train = [f for i, f in enumerate(fortunes) if i % 50]
    nbytes = sum(len(f.encode()) for f in fortunes)
    log(f"corpus: {len(fortunes)} fortunes, {nbytes / 1e6:.2f} MB ({len(train)} train, {len(val)} validation)")

    tok, eot = train_tokenizer(train, args.vocab)
    tr = token_stream(tok, train, eot)
    va = token_stream(tok, val, eot)
    V = tok.get_vocab_size()
    log(f"tokenizer: byte-level BPE, {V} ids, {EOT} = {eot}; {len(tr)} training tokens "
        f"({nbytes / (len(tr) + len(va)):.2f} bytes/token), {len(va)} validation tokens")

    assert args.hidden % args.heads == 0 and (args.hidden // args.heads) % 16 == 0
    cfg = LlamaConfig(vocab_size=V, hidden_size=args.hidden, intermediate_size=args.intermediate,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, head_dim=args.hidden // args.heads,
                      max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0,
                      tie_word_embeddings=True, bos_token_id=eot, eos_token_id=eot,
                      pad_token_id=None, attention_bias=False, mlp_bias=False)
    model = LlamaForCausalLM(cfg).to(device)
    nparams = sum(p.numel() for p in model.parameters())
    log(f"model: LlamaForCausalLM hidden {args.hidden}, {args.layers} layers, {args.heads} heads "
        f"/ {args.kv_heads} kv heads of {args.hidden // args.heads}, mlp {args.intermediate}, "
        f"{nparams / 1e6:.2f}M parameters (tied embeddings)")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": other, "weight_decay": 0.0}],
                            lr=peak, betas=(0.9, 0.95), eps=1e-8, fused=cuda)
    gen = torch.Generator().manual_seed(args.seed)
    tr, va = tr.to(device), va.to(device)

    # Progress through the schedule: steps done / --steps, or else time spent / --minutes (so
    # the run ends on time whatever else shares the machine; the warm-up is in steps).
    budget = args.minutes * 60
    warmup = 50 if cuda else 20
    t0 = time.time()
    step, ema, last_print, tw, progress = 0, None, t0, None, 0.0
    next_eval = t0 + budget / 5 if not args.steps else float("inf")
    log(f"training on {device} ({torch.cuda.get_device_name(device) if cuda else f'{torch.get_num_threads()} threads'}), "
        f"batch {bs} x {args.seq} tokens, peak lr {peak:g}, warm-up {warmup} steps, "
        + (f"{args.steps} steps" if args.steps else f"{args.minutes:g} minutes"))
    model.train()
    while progress < 1:
        x = batch(tr, bs, args.seq, gen)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, progress, peak, warmup)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = loss_of(model, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step == warmup:
            tw = time.time()
        if args.steps:
            progress = (step - warmup) / max(1, args.steps - warmup) if step >= warmup else 0.0
            progress = 1.0 if step >= args.steps else progress
        elif tw is not None:
            # the cosine spans the time left after the warm-up
            progress = (time.time() - tw) / max(1e-9, budget - (tw - t0))
        last = progress >= 1
        if step % (50 if cuda else 10) == 0 or last:
            l = loss.item()
            ema = l if ema is None else 0.9 * ema + 0.1 * l
            now = time.time()
            if now - last_print > (10 if cuda else 30) or last:
                last_print = now
                log(f"  step {step}  loss {l:.3f} (ema {ema:.3f})  lr {opt.param_groups[0]['lr']:.2e}  "
                    f"{now - t0:.0f} s  {step * bs * args.seq / (now - t0):.0f} tok/s  "
                    f"epoch {step * bs * args.seq / len(tr):.1f}")
            if now > next_eval and not last:
                next_eval = now + budget / 5
                log(f"  step {step}  validation loss {evaluate(model, va, min(bs, 16), args.seq, cuda, n=4):.3f}")
    train_s = time.time() - t0
    vl = evaluate(model, va, min(bs, 16), args.seq, cuda)
    tl = evaluate(model, tr, min(bs, 16), args.seq, cuda)
    log(f"trained {step} steps ({step * bs * args.seq / len(tr):.1f} epochs) in {train_s / 60:.1f} min: "
        f"train loss {tl:.3f}, validation loss {vl:.3f} (ppl {math.exp(vl):.1f})")

    # ---- save the checkpoint in bf16
    out = args.out
    os.makedirs(out, exist_ok=True)
    model = model.to("cpu", torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
                                               do_sample=False, max_new_tokens=64)
    model.save_pretrained(out)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT,
                                     unk_token=None, pad_token=EOT, model_max_length=512,
                                     clean_up_tokenization_spaces=False)
    hf_tok.save_pretrained(out)
    for junk in ("special_tokens_map.json", "chat_template.jinja"):
        if os.path.exists(os.path.join(out, junk)):
            os.remove(os.path.join(out, junk))
    # transformers may rewrite the post-processor on save (add_bos_token handling): keep ours,
    # whose TemplateProcessing prepends <|endoftext|>, and check that transformers reads it back
    tok.save(os.path.join(out, "tokenizer.json"))
    back = AutoTokenizer.from_pretrained(out)(PROMPT).input_ids
    assert back == tok.encode(PROMPT).ids and back[0] == eot, (back, tok.encode(PROMPT).ids)
    import transformers
    train_info = {"command": " ".join(["python3", "examples/train/train.py"] + sys.argv[1:]),
                  "device": torch.cuda.get_device_name(device) if cuda else "cpu",
                  "steps": step, "minutes": round(train_s / 60, 2), "batch": bs, "seq": args.seq,
                  "peak_lr": peak, "train_loss": round(tl, 4), "validation_loss": round(vl, 4),
                  "parameters": nparams, "fortunes": len(fortunes), "corpus_bytes": nbytes,
                  "torch": torch.__version__, "transformers": transformers.__version__}
    with open(os.path.join(out, "training.json"), "w") as f:
        json.dump(train_info, f, indent=2)
        f.write("\n")
    write_expected(out, args.seed)
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    log(f"wrote {out}: {sorted(os.listdir(out))}, {size / 1e6:.1f} MB; total {(time.time() - t_start) / 60:.1f} min")


def write_expected(out, seed):
    """expected.safetensors and sample.txt, from the SAVED checkpoint upcast to fp32, on the CPU."""
    import transformers
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM
    tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    eot = tok.token_to_id(EOT)
    ref = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ref.generation_config.eos_token_id = None  # greedy for exactly N tokens, through EOS
    ids = torch.tensor([tok.encode(PROMPT).ids])
    assert ids[0, 0].item() == eot
    with torch.no_grad():
        logits = ref(input_ids=ids).logits[0].float()
        g = ref.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=N_EXPECTED, pad_token_id=eot,
                         output_logits=True, return_dict_in_generate=True)
    tokens = g.sequences[0, ids.shape[1]:]
    gl = torch.stack([l[0] for l in g.logits]).float()
    assert len(tokens) == N_EXPECTED and torch.equal(gl.argmax(-1), tokens)
    top2 = gl.topk(2, dim=-1).values
    margins = top2[:, 0] - top2[:, 1]
    cont = tok.decode(tokens.tolist(), skip_special_tokens=True)
    save_file({"input_ids": ids[0].contiguous(), "logits": logits.contiguous(),
               "tokens": tokens.contiguous(), "gen_logits": gl.contiguous(),
               "margins": margins.contiguous()},
              os.path.join(out, "expected.safetensors"),
              metadata={"producer": "examples/train/train.py", "prompt": PROMPT,
                        "continuation": cont, "transformers": transformers.__version__})
    log(f"HF fp32 greedy continuation of {PROMPT!r}: {cont!r}")
    rel = (margins / gl.std(-1)).tolist()
    log("  top-2 margin / row std: " + " ".join(f"{r:.2f}" for r in rel))

    # ---- sample.txt: greedy and sampled fortunes
    info = {}
    if os.path.exists(os.path.join(out, "training.json")):
        info = json.load(open(os.path.join(out, "training.json")))
    lines = [f"# examples/tinyfortune, generated by HF transformers (fp32, CPU) after "
             f"examples/train/train.py ({info.get('device', '?')}, {info.get('minutes', '?')} min, "
             f"validation loss {info.get('validation_loss', '?')})", ""]
    prompts = [PROMPT, "The best way to", "Q: What", "Never", "Computers are"]
    torch.manual_seed(seed)
    for i, p in enumerate(prompts):
        pid = torch.tensor([tok.encode(p).ids])
        with torch.no_grad():
            kw = dict(do_sample=False) if i == 0 else dict(do_sample=True, temperature=0.8, top_k=40)
            s = ref.generate(pid, attention_mask=torch.ones_like(pid), max_new_tokens=64,
                             eos_token_id=eot, pad_token_id=eot, **kw)
        text = tok.decode(s[0].tolist(), skip_special_tokens=True)
        how = "greedy" if i == 0 else "sampled, temperature 0.8, top-k 40"
        lines += [f"## {p!r} ({how})", text, ""]
    with open(os.path.join(out, "sample.txt"), "w") as f:
        f.write("\n".join(lines))
    log("\n".join(lines))


if __name__ == "__main__":
    main()
