#!/bin/bash
# tests/gpu/quant.sh — what quantisation costs in quality, on the GPU machine (issue 17 item 5):
# the perplexity of a model compiled in bf16 and with --quant fp8 (weights e4m3 with a scale per
# row; prefill W8A8 on the FP8 tensor cores, decode GEMV on the e4m3 bytes), on the same text, and
# the relative difference. Prints a table last.
#
#   QUANT_MODELS="examples/tinyfortune"  QUANT_TEXT=FILE  tests/gpu/quant.sh
#
# Models: QUANT_MODELS (checkpoint folders; default the example model), plus the 8B shape bench.sh
# synthesised (/tmp/kiln-bench/hf-8b) when it is there: random weights, so only the difference
# means anything. Text: QUANT_TEXT, default the last 60,000 bytes of the example model's training
# corpus (examples/train/corpus.txt.gz: the model has seen it; the difference is what is measured).
# Every run: --window 512 --stride 256, at most QUANT_MAX_TOKENS (default 20000) tokens.
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
SM=${KILN_SM:-90a}
TEXT=${QUANT_TEXT:-$W/text.txt}
[ -n "${QUANT_TEXT:-}" ] || zcat examples/train/corpus.txt.gz | tail -c 60000 > "$TEXT"
MODELS=${QUANT_MODELS:-examples/tinyfortune}
[ -f /tmp/kiln-bench/hf-8b/config.json ] && MODELS="$MODELS /tmp/kiln-bench/hf-8b"
PPL="--text $TEXT --window 512 --stride 256 --max-tokens ${QUANT_MAX_TOKENS:-20000}"
fail=0
table=$W/table.txt
echo "| model | bf16 | --quant fp8 | difference |" > $table
echo "|---|---|---|---|" >> $table
for M in $MODELS; do
  name=$(basename "$M")
  for v in bf16 fp8; do
    opt=; [ $v = fp8 ] && opt="--quant fp8"
    # shellcheck disable=SC2086
    if ! $BIN/kilnc compile "$M" -o $W/$name-$v --sm $SM --max-batch 8 --max-seq-len 512 $opt \
         > $LOG/compile-$name-$v.log 2>&1; then
      echo "quant.sh: $name $v: compile FAILED: $(grep -m1 error $LOG/compile-$name-$v.log)"; fail=1; continue
    fi
    # shellcheck disable=SC2086
    if ! $BIN/kiln perplexity $W/$name-$v $PPL --json $LOG/ppl-$name-$v.json > $LOG/ppl-$name-$v.txt 2>&1; then
      echo "quant.sh: $name $v: kiln perplexity FAILED: $(grep -m1 -i error $LOG/ppl-$name-$v.txt)"; fail=1
    fi
    cat $LOG/ppl-$name-$v.txt
  done
  python3 - "$name" $LOG/ppl-$name-bf16.json $LOG/ppl-$name-fp8.json >> $table <<'EOF'
import json, sys
name, a, b = sys.argv[1:4]
try:
    x, y = json.load(open(a)), json.load(open(b))
except (OSError, ValueError) as e:
    print(f"| {name} | failed: {e} | | |")
    sys.exit(0)
d = (y["perplexity"] / x["perplexity"] - 1) * 100
print(f"| {name} ({x['tokens_scored']} tokens scored) | {x['perplexity']:.4f} | {y['perplexity']:.4f} | {d:+.2f}% |")
EOF
done
rm -rf $W/*-bf16 $W/*-fp8
echo
echo "== quant.sh: perplexity, bf16 against --quant fp8 ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), kiln $($BIN/kiln --version))"
cat $table | tee "$OUT/quant.txt"
tar czf "$OUT/quant-logs.tgz" -C $W logs 2>/dev/null
exit $fail
