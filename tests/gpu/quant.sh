#!/bin/bash
# tests/gpu/quant.sh — what quantisation costs in quality, on the GPU machine (issue 17 item 5):
# the perplexity of a model compiled in bf16 and with --quant fp8 (weights e4m3 with a scale per
# row; decode GEMV on the e4m3 bytes), the latter twice: W8A8 steps on the FP8 tensor cores
# (--fp8-gemm w8a8, the default) and weight-only (--fp8-gemm dequant), and with --quant int4 (4-bit
# weights, round to nearest, a bf16 scale and zero point per group of 128 columns; weight-only), on
# the same text, and the relative differences; then the same three --quant variants calibrated
# (--calibrate: GPTQ picks the values on the same grids). Prints a table last.
#
#   QUANT_MODELS="examples/tinyfortune"  QUANT_TEXT=FILE  tests/gpu/quant.sh
#
# Models: QUANT_MODELS (checkpoint folders; default the example model), plus the 8B shape bench.sh
# synthesised (/tmp/kiln-bench/hf-8b) when it is there: random weights, so only the difference
# means anything (it has no tokenizer: the example model's encodes the text for it). Text: QUANT_TEXT, default the last 60,000 bytes of the example model's training
# corpus (examples/train/corpus.txt.gz: the model has seen it; the difference is what is measured).
# Calibration (the GPTQ columns): only the models in QUANT_CALIB_MODELS (default the example model:
# kilnc runs the calibration forward on the CPU reference, hours for an 8B), on QUANT_CALIB_TEXT,
# default the FIRST 300,000 bytes of the same corpus (kilnc reads at most 64 bytes a token of it:
# 131,072 bytes for its default 2048 tokens; the evaluation text is the last 60,000 of its
# 2,470,621 bytes, so they do not overlap). Other models' GPTQ cells say "not run".
# Every run: --window QUANT_WINDOW (default 256: the example model was trained on 256-token
# sequences and diverges past them) --stride half of it, at most QUANT_MAX_TOKENS (default 30000).
# Output in $OUT (or /tmp/kiln-quant/out): quant.txt (the table) and quant-logs.tgz.
set -u
cd "$(dirname "$0")/../.." || exit 1
BIN=${KILN_BIN:-out/bin}
export KILN_ROOT=${KILN_ROOT:-$PWD}
W=/tmp/kiln-quant
OUT=${OUT:-$W/out}
LOG=$W/logs
rm -rf $LOG
mkdir -p $LOG "$OUT"
# artifacts a killed run left (each is deleted once scored)
rm -rf $W/*-bf16 $W/*-fp8 $W/*-fp8dq $W/*-int4 $W/*-fp8g $W/*-fp8dqg $W/*-int4g
SM=${KILN_SM:-90a}
TEXT=${QUANT_TEXT:-$W/text.txt}
[ -n "${QUANT_TEXT:-}" ] || zcat examples/train/corpus.txt.gz | tail -c 60000 > "$TEXT"
CALIB_TEXT=${QUANT_CALIB_TEXT:-$W/calib.txt}
[ -n "${QUANT_CALIB_TEXT:-}" ] || zcat examples/train/corpus.txt.gz | head -c 300000 > "$CALIB_TEXT"
CALIB_MODELS=${QUANT_CALIB_MODELS:-examples/tinyfortune}
MODELS=${QUANT_MODELS:-examples/tinyfortune}
[ -f /tmp/kiln-bench/hf-8b/config.json ] && MODELS="$MODELS /tmp/kiln-bench/hf-8b"
WIN=${QUANT_WINDOW:-256}
PPL="--text $TEXT --window $WIN --stride $((WIN / 2)) --max-tokens ${QUANT_MAX_TOKENS:-30000}"
fail=0
table=$W/table.txt
echo "| model | bf16 | --quant fp8 (W8A8 GEMMs) | --quant fp8 --fp8-gemm dequant (weight-only) | --quant int4 (weight-only) | fp8 GPTQ (W8A8) | fp8 GPTQ dequant | int4 GPTQ |" > $table
echo "|---|---|---|---|---|---|---|---|" >> $table
for M in $MODELS; do
  name=$(basename "$M")
  if [ ! -f "$M/tokenizer.json" ]; then
    # a synthesised checkpoint has no tokenizer: the example model's (4,096 ids, all inside any
    # Llama vocabulary) encodes the text, in a folder of links to the checkpoint's files; its
    # own config.json and generation_config.json there carry the example's special-token ids
    # (the tokenizer refuses a bos_token_id of 128000, outside its 4,096)
    T=$W/tok-$name
    rm -rf "$T" && mkdir -p "$T" && ln -s "$(cd "$M" && pwd)"/* "$T"/ && rm "$T/config.json" &&
      cp --remove-destination examples/tinyfortune/tokenizer.json \
        examples/tinyfortune/tokenizer_config.json examples/tinyfortune/generation_config.json "$T"/ &&
      python3 -c 'import json, sys
c = json.load(open(sys.argv[1]))
c.update({k: 0 for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in c})
json.dump(c, open(sys.argv[2], "w"), indent=2)' "$M/config.json" "$T/config.json" ||
      { echo "quant.sh: $name: cannot make its tokenizer folder $T"; fail=1; continue; }
    M=$T
  fi
  calib=0
  for C in $CALIB_MODELS; do [ "$C" = "$M" ] && calib=1; done
  for v in bf16 fp8 fp8dq int4 fp8g fp8dqg int4g; do
    opt=; [ $v = fp8 ] && opt="--quant fp8"; [ $v = fp8dq ] && opt="--quant fp8 --fp8-gemm dequant"
    [ $v = int4 ] && opt="--quant int4"
    [ $v = fp8g ] && opt="--quant fp8 --calibrate $CALIB_TEXT"
    [ $v = fp8dqg ] && opt="--quant fp8 --fp8-gemm dequant --calibrate $CALIB_TEXT"
    [ $v = int4g ] && opt="--quant int4 --calibrate $CALIB_TEXT"
    if [ "${v%g}" != "$v" ] && [ $calib = 0 ]; then
      echo '{"not_run": true}' > $LOG/ppl-$name-$v.json; continue
    fi
    # shellcheck disable=SC2086
    if ! $BIN/kilnc compile "$M" -o $W/$name-$v --sm $SM --max-batch 8 --max-seq-len $WIN $opt \
         > $LOG/compile-$name-$v.log 2>&1; then
      echo "quant.sh: $name $v: compile FAILED: $(grep -m1 error $LOG/compile-$name-$v.log)"; fail=1; continue
    fi
    # shellcheck disable=SC2086
    if ! $BIN/kiln perplexity $W/$name-$v $PPL --json $LOG/ppl-$name-$v.json > $LOG/ppl-$name-$v.txt 2>&1; then
      echo "quant.sh: $name $v: kiln perplexity FAILED: $(grep -m1 -i error $LOG/ppl-$name-$v.txt)"; fail=1
    fi
    cat $LOG/ppl-$name-$v.txt
    rm -rf "${W:?}/$name-$v" # an 8B artifact is 8-15 GiB: the disk holds the checkpoint and one
  done
  python3 - "$name" $LOG/ppl-$name-{bf16,fp8,fp8dq,int4,fp8g,fp8dqg,int4g}.json >> $table <<'EOF'
import json, sys
name, paths = sys.argv[1], sys.argv[2:]
def load(p):
    try:
        return json.load(open(p))
    except (OSError, ValueError) as e:
        return e
x, *qs = (load(p) for p in paths)
if isinstance(x, Exception):
    print(f"| {name} | failed: {x} | | | | | | |")
    sys.exit(0)
def d(v):
    if isinstance(v, Exception):
        return f"failed: {v}"
    if v.get("not_run"):
        return "not run"
    return f"{v['perplexity']:.4f} ({(v['perplexity'] / x['perplexity'] - 1) * 100:+.2f}%)"
print(f"| {name} ({x['tokens_scored']} tokens scored) | {x['perplexity']:.4f} | "
      + " | ".join(d(v) for v in qs) + " |")
EOF
done
echo
echo "== quant.sh: perplexity at window $WIN, bf16 against --quant fp8 and int4, to nearest and GPTQ-calibrated ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), kiln $($BIN/kiln --version))"
cat $table | tee "$OUT/quant.txt"
tar czf "$OUT/quant-logs.tgz" -C $W logs 2>/dev/null
exit $fail
