#!/usr/bin/env bash
# examples/demo.sh — what `make demo` runs after building: compile the example model
# (examples/tinyfortune, a small Llama trained on Debian's fortune cookies) and generate text.
#
#   1. out/bin/kilnc compile examples/tinyfortune -o out/demo   (no GPU needed; skipped when
#      out/demo is newer than the model and kilnc)
#   2. on a machine with an NVIDIA GPU: out/bin/kiln run out/demo --prompt TEXT
#      elsewhere:                        out/bin/kiln run examples/tinyfortune --prompt TEXT (the
#                                        checkpoint on the fp32 reference interpreter, CPU)
#   3. prints which one ran, the prompt, the generated text and the speed.
#   4. the same model as one executable, out/demo/tinyfortune (compiled with --standalone in step 1;
#      the runtime and the model in one file, nothing but glibc and the driver needed): on the GPU
#      it generates the same text; elsewhere it prints its --version (the model and its hashes).
#
# Environment: DEMO_PROMPT (default "A fool and"), DEMO_MAX_NEW (default 40 tokens),
# DEMO_DEVICE=cpu to run on the CPU even where a GPU exists, KILNC/KILN (the binaries),
# DEMO_MODEL/DEMO_OUT (model folder, compile output). Generation is greedy and stops at the end
# of the fortune (<|endoftext|>), on both paths.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${DEMO_MODEL:-examples/tinyfortune}
OUT=${DEMO_OUT:-out/demo}
PROMPT=${DEMO_PROMPT:-A fool and}
MAX_NEW=${DEMO_MAX_NEW:-40}
KILNC=${KILNC:-out/bin/kilnc}
KILN=${KILN:-out/bin/kiln}
LOG=$OUT.log
mkdir -p "$(dirname "$OUT")"

die() { echo "demo: $*" >&2; exit 1; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
indent() { sed 's/^/           /' | sed '1s/^           //'; }

[ -x "$KILNC" ] && [ -x "$KILN" ] || die "$KILNC and $KILN are not built (run make)"
[ -f "$MODEL/config.json" ] || die "$MODEL/config.json is missing (see examples/README.md)"

cfg() { sed -n "s/.*\"$1\": *\([0-9][0-9]*\).*/\1/p" "$MODEL/config.json" | head -n 1; }
size=$(du -h "$MODEL/model.safetensors" | cut -f1)
echo "== kiln demo: $MODEL, a small Llama trained on Debian's fortune cookies"
echo "   $(cfg num_hidden_layers) layers, hidden $(cfg hidden_size), vocab $(cfg vocab_size); $size of bf16 weights"

# ---- 1. compile
stale=0
[ -f "$OUT/model.kiln" ] && [ -x "$OUT/$(basename "$MODEL")" ] || stale=1
for f in "$MODEL"/*.json "$MODEL"/*.safetensors "$KILNC" "$(dirname "$KILNC")/kiln-standalone"; do
  [ "$f" -nt "$OUT/model.kiln" ] && stale=1
done
if [ $stale = 1 ]; then
  echo "== compile: $KILNC compile $MODEL -o $OUT --max-seq-len 512 --max-batch 8 --standalone"
  t0=$(now)
  rm -rf "$OUT"
  if ! "$KILNC" compile "$MODEL" -o "$OUT" --max-seq-len 512 --max-batch 8 --standalone >"$LOG" 2>&1; then
    cat "$LOG" >&2
    rm -rf "$OUT"
    die "kilnc compile failed"
  fi
  tail -n 2 "$LOG" | sed 's/^kilnc compile: /   /'
  echo "   [$(secs "$t0" "$(now)") s]"
else
  echo "== compile: $OUT is up to date (kilnc compile $MODEL -o $OUT)"
fi

# ---- 2. generate: on the GPU where one exists, else with the CPU reference
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
device=cpu why=""
if [ "${DEMO_DEVICE:-}" = cpu ]; then
  why="DEMO_DEVICE=cpu"
elif "$KILN" run "$OUT" --prompt "$PROMPT" --max-new "$MAX_NEW" >"$tmp/out" 2>"$tmp/err"; then
  device=gpu
elif grep -q "no NVIDIA driver\|no CUDA GPU" "$tmp/err"; then
  why=$(grep -o "no NVIDIA driver[^(;]*\|no CUDA GPU[^(;]*" "$tmp/err" | head -n 1 | sed 's/ *$//')
else
  cat "$tmp/err" >&2
  die "kiln run failed on this GPU machine (above); DEMO_DEVICE=cpu runs the checkpoint on the CPU instead"
fi

if [ $device = gpu ]; then
  gpu=$(sed -n 's/^kiln run: \(.*\)/\1/p' "$tmp/err" | grep -v "load .* s, prefill" | head -n 1)
  echo "== generate: GPU, $KILN run $OUT --prompt ... --max-new $MAX_NEW"
  [ -n "$gpu" ] && echo "   $gpu"
else
  echo "== generate: CPU, $KILN run $MODEL (the checkpoint itself, on the fp32 reference interpreter; no GPU here: $why)"
  "$KILN" run "$MODEL" --prompt "$PROMPT" --max-new "$MAX_NEW" >"$tmp/out" 2>"$tmp/err" ||
    { cat "$tmp/err" >&2; die "kiln run on the CPU failed"; }
fi
text=$(tail -n +2 "$tmp/out")
text=${text#"$PROMPT"} # kiln run prints a text prompt with its continuation
n_gen=$(head -n 1 "$tmp/out" | awk -F, 'NF { print NF } !NF { print 0 }')
speed=$(grep "tok/s" "$tmp/err" | tail -n 1 | sed 's/^kiln run: //')

# ---- 3. show
echo
echo "prompt:    $PROMPT"
printf 'generated: %s%s\n' "$PROMPT" "$text" | indent
echo
if [ "$n_gen" -lt "$MAX_NEW" ]; then
  echo "length:    $n_gen tokens, to the end of the fortune (at most $MAX_NEW: DEMO_MAX_NEW)"
else
  echo "length:    $n_gen tokens (DEMO_MAX_NEW)"
fi
echo "speed:     $speed"
echo "ran on:    $( [ $device = gpu ] && echo "the GPU, with kiln run" || echo "the CPU, with kiln run on the checkpoint (fp32 reference interpreter)")"

# ---- 4. the standalone executable: the same model, one file
EXE=$OUT/$(basename "$MODEL")
echo
if [ $device = gpu ]; then
  echo "== standalone: $EXE run --prompt ... --max-new $MAX_NEW (one file: runtime + model; weights in $OUT/shards)"
  env -i "$EXE" run --prompt "$PROMPT" --max-new "$MAX_NEW" >"$tmp/sa" 2>"$tmp/saerr" ||
    { cat "$tmp/saerr" >&2; die "the standalone executable failed"; }
  cmp -s "$tmp/sa" "$tmp/out" && echo "   the same tokens and text as kiln run" ||
    { echo "   its output differs from kiln run's:" >&2; cat "$tmp/sa" >&2; die "standalone differs"; }
else
  echo "== standalone: $EXE --version (one file: runtime + model; on a GPU machine, '$EXE run --prompt TEXT')"
  env -i "$EXE" --version | sed -n '1,2p' | indent
fi
