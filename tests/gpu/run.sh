#!/bin/bash
# tests/gpu/run.sh — everything the GPU machine checks, in one call, summary table last.
#
#   1. the kernel tests: every template against its CPU reference (kiln-ktest)
#   2. every fixture compiled (kilnc compile), run (kiln run --dump) and compared with HF's
#      outputs and the CPU reference (kilnc ref): logits at every prompt position, greedy tokens;
#      in bf16 against HF's own bf16 error (hf_bf16.py), and the fp32 fixtures again in fp16
#      against the absolute bound 2e-2 (compare.py says why both)
#   3. batching: four prompts of different lengths in one call equal each run alone; a seeded
#      sampled batch equals its requests alone; a --max-batch 6 artifact runs 6 prompts correctly
#   4. compute-sanitizer (memcheck, racecheck, synccheck, initcheck) over one fixture of each
#      family: tests/gpu/sanitize.sh, on the artifacts compiled here
#   5. standalone executables (kilnc compile --standalone) run from an empty folder under env -i,
#      against kiln run and HF (RUN_STANDALONE=0 skips them)
#
# Binaries come built from the build machine (make; carried as out/bin); CUDA 13 and Python with
# numpy + safetensors are on the GPU machine. Full logs go to $OUT (or ./out/gpu-logs).
# Exit status 1 if anything failed.
#
# One device call has 10 minutes, so the run keeps a deadline (RUN_DEADLINE seconds after the start,
# default 540): past it, a fixture's row says "SKIP (deadline)", the sanitizer is stopped (its row
# says so) and the logs are still written. $OUT/summary.txt is rewritten after every row, so even a
# call that is killed brings back the rows it finished. RUN_GEN, RUN_EMB, RUN_CLS and RUN_FP16
# replace the fixture lists (e.g. only the fixtures a change touched); KILN_SAN=0 skips the sanitizer
# and KILN_KTEST=0 the kernel tests; RUN_FP8Q= skips the --quant fp8 compile of the llama fixture;
# RUN_KGEMM=0 skips section 3c (fixtures compiled with kiln's own GEMM, kilnc compile --gemm kiln),
# RUN_KGEMM_FIX replaces its fixture list; RUN_INVARIANT=0 skips section 3d (kilnc compile
# --batch-invariant: 64 prompts together against each alone, bit for bit), RUN_INVARIANT_FIX
# replaces its fixture list; RUN_KV8= skips section 3f (kilnc compile --kv-dtype fp8), RUN_KV8=F
# runs it on fixture F instead of llama; RUN_INT4Q= skips section 3g (kilnc compile --quant int4),
# RUN_INT4Q=F runs it on fixture F instead of llama; RUN_INT4S= skips section 3h (gemv_stream_int4 on a
# synthesised shape).
set -u
cd "$(dirname "$0")/../.."
LOG=/tmp/kiln-gpu-logs
rm -rf $LOG
mkdir -p "$LOG"
BIN=out/bin
ART=/tmp/kiln-art
mkdir -p $ART
[ -n "${OUT:-}" ] && mkdir -p "$OUT" # a subfolder of the device call's $OUT is not made for us
export KILN_ROOT=$PWD
SM=${KILN_SM:-90a}
PY=${PYTHON:-python3}
SUMMARY=$LOG/summary.txt
: > "$SUMMARY"
fail=0
T0=$(date +%s)
DEADLINE=$((T0 + ${RUN_DEADLINE:-540}))
# every row goes to $OUT at once: a call killed at its limit still brings back what it finished
row() { echo "$1" | tee -a "$SUMMARY"; [ -n "${OUT:-}" ] && cp "$SUMMARY" "$OUT/summary.txt"; }
# the last line of $SUMMARY (written by compare.py) echoed and sent to $OUT like a row
shown() { tail -1 "$SUMMARY"; [ -n "${OUT:-}" ] && cp "$SUMMARY" "$OUT/summary.txt"; }
late() { [ "$(date +%s)" -ge $DEADLINE ]; }
skip_late() { late && { row "$(printf '%-24s SKIP (deadline: RUN_DEADLINE=%s s)' "$1" "${RUN_DEADLINE:-540}")"; fail=1; }; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$LOG/gpu.txt" 2>&1
CARD=$(head -1 "$LOG/gpu.txt")
row "card: $CARD; commit ${KILN_COMMIT:-$($BIN/kiln --version 2>/dev/null | sed -n "s/.*commit \([^)]*\)).*/\1/p")}"

# 1. kernels, in the background (mostly NVRTC time) while the fixtures compile and run
# (KILN_KTEST=0 skips them: for a run after host-only changes, when templates/ and kernels/ are as
# last verified)
# (on a machine with two GPUs or more, the kernel tests and the sanitizer run on the second, unless
# RUN_SIDE_GPU names another: e.g. 0 while bench.sh has GPU 1 to itself)
SIDE=0; [ "$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')" -gt 1 ] && SIDE=1
SIDE=${RUN_SIDE_GPU:-$SIDE}
if [ "${KILN_KTEST:-1}" = 1 ]; then
  CUDA_VISIBLE_DEVICES=$SIDE $BIN/kiln-ktest > "$LOG/ktest.log" 2>&1 &
  KTEST_PID=$!
fi

# 2. fixtures
GEN=${RUN_GEN:-"llama llama_tied_oldstyle llama_linear_oldstyle mistral qwen2 qwen mixtral mixtral4 bloom bloom6
     llama_bf16 mistral_bf16 qwen2_bf16 qwen_bf16 mixtral_bf16 bloom_bf16
     gemma gemma2 granite cohere gpt2 gpt_neox stablelm falcon falcon_new phi3 starcoder2 internlm2
     qwen3 qwen3_moe gemma3 gemma3_oldstyle olmo2 stablelm_qknorm cohere_qknorm llama_hd20
     qwen2_moe gptj phi3_longrope phimoe deepseek_v2 llama_fp8_ct llama_awq llama_gptq llama_int4_ct
     llama_dynamic"}
EMB=${RUN_EMB:-"bert bert_bf16"}
CLS=${RUN_CLS:-"qwen2_cls bert_cls"}
FP16=${RUN_FP16-"llama llama_tied_oldstyle llama_linear_oldstyle mistral qwen2 qwen mixtral mixtral4 bloom bloom6"}
# compile all in parallel (NVRTC is single-threaded per unit), and HF's bf16 baseline meanwhile
FP8Q=${RUN_FP8Q-llama_fp8q}
KGEMM=; [ "${RUN_KGEMM:-1}" = 1 ] && KGEMM=${RUN_KGEMM_FIX-"llama mixtral bloom deepseek_v2 bert qwen2_cls"}
INVAR=; [ "${RUN_INVARIANT:-1}" = 1 ] && INVAR=${RUN_INVARIANT_FIX-"llama mixtral"}
KV8=${RUN_KV8-llama}
INT4Q=${RUN_INT4Q-llama}
# (every fixture some section compares with HF's bf16 error, once: with RUN_GEN narrowed, sections
# 3c and 3d still have their baselines)
HFB=$(for f in $GEN $CLS $FP8Q $KGEMM $INVAR; do grep -qw -- "$f" <<< "$EMB" || echo "$f"; done | sort -u)
# shellcheck disable=SC2086
timeout 300 $PY tests/gpu/hf_bf16.py $ART $HFB > $LOG/hf_bf16.log 2>&1 &
HF_PID=$!
{ for f in $GEN $EMB $CLS; do
    echo "$BIN/kilnc compile tests/fixtures/$f -o $ART/$f --sm $SM --max-batch 8 > $LOG/compile_$f.log 2>&1 || echo COMPILE_FAIL $f"
  done
  for f in $FP16; do
    echo "$BIN/kilnc compile tests/fixtures/$f -o $ART/${f}_fp16 --dtype fp16 --sm $SM --max-batch 8 > $LOG/compile_${f}_fp16.log 2>&1 || echo COMPILE_FAIL ${f}_fp16"
  done
  for f in $KGEMM; do
    echo "$BIN/kilnc compile tests/fixtures/$f -o $ART/${f}_kgemm --gemm kiln --sm $SM --max-batch 8 > $LOG/compile_${f}_kgemm.log 2>&1 || echo COMPILE_FAIL ${f}_kgemm"
  done
  for f in $KV8; do
    echo "$BIN/kilnc compile tests/fixtures/$f --kv-dtype fp8 -o $ART/${f}_kv8 --sm $SM --max-batch 8 > $LOG/compile_${f}_kv8.log 2>&1 || echo COMPILE_FAIL ${f}_kv8"
    echo "$BIN/kilnc compile tests/fixtures/$f --kv-dtype fp8 --max-tokens 64 -o $ART/${f}_kv8c --sm $SM --max-batch 8 > $LOG/compile_${f}_kv8c.log 2>&1 || echo COMPILE_FAIL ${f}_kv8c"
  done
  for f in $INT4Q; do
    echo "$BIN/kilnc compile tests/fixtures/$f --quant int4 -o $ART/${f}_int4q --sm $SM --max-batch 8 > $LOG/compile_${f}_int4q.log 2>&1 || echo COMPILE_FAIL ${f}_int4q"
  done
  for f in $INVAR; do
    echo "$BIN/kilnc compile tests/fixtures/$f -o $ART/${f}_bi --batch-invariant --sm $SM --max-batch 64 --max-tokens 96 --max-seq-len 128 > $LOG/compile_${f}_bi.log 2>&1 || echo COMPILE_FAIL ${f}_bi"
  done
  [ -n "$FP8Q" ] && echo "$BIN/kilnc compile tests/fixtures/llama --quant fp8 --fp8-gemm dequant -o $ART/llama_fp8q --sm $SM --max-batch 8 > $LOG/compile_llama_fp8q.log 2>&1 || echo COMPILE_FAIL llama_fp8q"
  [ -n "$FP8Q" ] && echo "$BIN/kilnc compile tests/fixtures/llama --quant fp8 -o $ART/llama_fp8q_w8a8 --sm $SM --max-batch 8 > $LOG/compile_llama_fp8q_w8a8.log 2>&1 || echo COMPILE_FAIL llama_fp8q_w8a8"; } | xargs -P "$(nproc)" -I{} bash -c "{}" > "$LOG/compile_failures.txt"
row "$(printf '%-24s %s s' "compiled (and HF bf16)" $(( $(date +%s) - T0 )))"
wait $HF_PID
# 4. compute-sanitizer in the background on the artifacts just compiled (its table is printed below),
# stopped at the deadline
if [ "${KILN_SAN:-1}" = 1 ]; then
  CUDA_VISIBLE_DEVICES=$SIDE timeout $((DEADLINE - $(date +%s) - 20)) bash tests/gpu/sanitize.sh $ART > $LOG/sanitize.out 2>&1 &
  SAN_PID=$!
fi
for f in $GEN; do
  skip_late $f && continue
  if grep -q "COMPILE_FAIL $f\$" "$LOG/compile_failures.txt"; then
    row "$(printf '%-24s FAIL compile: %s' $f "$(grep -m1 error $LOG/compile_$f.log)")"; fail=1; continue
  fi
  ids=$($PY tests/gpu/compare.py ids tests/fixtures/$f)
  $BIN/kilnc ref tests/fixtures/$f --ids $ids --max-new 16 --dump $ART/$f.ref.st > $LOG/ref_$f.log 2>&1
  if ! $BIN/kiln run $ART/$f --ids $ids --max-new 16 --ignore-eos --dump $ART/$f.kiln.st > $LOG/run_$f.log 2>&1; then
    row "$(printf '%-24s FAIL run: %s' $f "$(grep -m1 -i error $LOG/run_$f.log)")"; fail=1; continue
  fi
  base=$ART/$f.hfbf16.st; [ -f $base ] || base=
  $PY tests/gpu/compare.py gen $f tests/fixtures/$f $ART/$f.kiln.st $ART/$f.ref.st $base >> "$SUMMARY" 2>>"$LOG/compare.log" || fail=1
  shown
  # the same run without --dump: last-row logits only (the path every real request takes)
  $BIN/kiln run $ART/$f --ids $ids --max-new 16 --ignore-eos > $LOG/run_${f}_nodump.out 2> $LOG/run_${f}_nodump.log
  $PY tests/gpu/compare.py tokens "$f no-dump" $ART/$f.kiln.st $LOG/run_${f}_nodump.out >> "$SUMMARY" 2>>"$LOG/compare.log" || fail=1
  shown
done
for f in $FP16; do
  skip_late ${f}_fp16 && continue
  if grep -q "COMPILE_FAIL ${f}_fp16\$" "$LOG/compile_failures.txt"; then
    row "$(printf '%-24s FAIL compile' ${f}_fp16)"; fail=1; continue
  fi
  ids=$($PY tests/gpu/compare.py ids tests/fixtures/$f)
  if ! $BIN/kiln run $ART/${f}_fp16 --ids $ids --max-new 16 --ignore-eos --dump $ART/${f}_fp16.kiln.st > $LOG/run_${f}_fp16.log 2>&1; then
    row "$(printf '%-24s FAIL run: %s' ${f}_fp16 "$(grep -m1 -i error $LOG/run_${f}_fp16.log)")"; fail=1; continue
  fi
  $PY tests/gpu/compare.py gen ${f}_fp16 tests/fixtures/$f $ART/${f}_fp16.kiln.st $ART/$f.ref.st >> "$SUMMARY" 2>>"$LOG/compare.log" || fail=1
  shown
done
# --quant fp8: the llama fixture quantised at compile time, against HF on the same rounding
# (llama_fp8q, tests/fixtures/make_fp8_fixtures.py) and kilnc ref --quant fp8, compiled --fp8-gemm
# dequant: weight-only, the numbers HF computes (the W8A8 default is checked in 3e). Its prompt is
# 8 tokens since the clipping search (12 before: then longer than the GEMV's 8 rows)
f=llama_fp8q
if [ -z "$FP8Q" ]; then :
elif skip_late $f; then :
elif grep -q "COMPILE_FAIL $f\$" "$LOG/compile_failures.txt"; then
  row "$(printf '%-24s FAIL compile: %s' $f "$(grep -m1 error $LOG/compile_$f.log)")"; fail=1
else
  ids=$($PY tests/gpu/compare.py ids tests/fixtures/$f)
  $BIN/kilnc ref tests/fixtures/llama --quant fp8 --ids $ids --max-new 16 --dump $ART/$f.ref.st > $LOG/ref_$f.log 2>&1
  if $BIN/kiln run $ART/$f --ids $ids --max-new 16 --ignore-eos --dump $ART/$f.kiln.st > $LOG/run_$f.log 2>&1; then
    base=$ART/$f.hfbf16.st; [ -f $base ] || base=
    $PY tests/gpu/compare.py gen $f tests/fixtures/$f $ART/$f.kiln.st $ART/$f.ref.st $base >> "$SUMMARY" 2>>"$LOG/compare.log" || fail=1
    shown
  else
    row "$(printf '%-24s FAIL run: %s' $f "$(grep -m1 -i error $LOG/run_$f.log)")"; fail=1
  fi
fi
for f in $EMB; do
  skip_late $f && continue
  if grep -q "COMPILE_FAIL $f\$" "$LOG/compile_failures.txt"; then
    row "$(printf '%-24s FAIL compile' $f)"; fail=1; continue
  fi
  ids=$($PY tests/gpu/compare.py ids tests/fixtures/$f); types=$($PY tests/gpu/compare.py types tests/fixtures/$f)
  if ! $BIN/kiln run $ART/$f --ids $ids --token-types $types --dump $ART/$f.kiln.st > $LOG/run_$f.log 2>&1; then
    row "$(printf '%-24s FAIL run: %s' $f "$(grep -m1 -i error $LOG/run_$f.log)")"; fail=1; continue
  fi
  $PY tests/gpu/compare.py embed $f tests/fixtures/$f $ART/$f.kiln.st >> "$SUMMARY" 2>>"$LOG/compare.log" || fail=1
  shown
done

for f in $CLS; do
  skip_late $f && continue
  if grep -q "COMPILE_FAIL $f\$" "$LOG/compile_failures.txt"; then
    row "$(printf '%-24s FAIL compile' $f)"; fail=1; continue
  fi
  ids=$($PY tests/gpu/compare.py ids tests/fixtures/$f); types=$($PY tests/gpu/compare.py types tests/fixtures/$f)
  if ! $BIN/kiln run $ART/$f --ids $ids ${types:+--token-types $types} --dump $ART/$f.kiln.st > $LOG/run_$f.log 2>&1; then
    row "$(printf '%-24s FAIL run: %s' $f "$(grep -m1 -i error $LOG/run_$f.log)")"; fail=1; continue
  fi
  base=$ART/$f.hfbf16.st; [ -f $base ] || base=
  $PY tests/gpu/compare.py classify $f tests/fixtures/$f $ART/$f.kiln.st $base >> "$SUMMARY" 2>>"$LOG/compare.log" || fail=1
  shown
done

# the example model (examples/tinyfortune): kiln run's greedy tokens vs HF's and the reference
EX=examples/tinyfortune
if skip_late tinyfortune; then :
elif $BIN/kilnc compile $EX -o $ART/tinyfortune --sm $SM > $LOG/compile_tinyfortune.log 2>&1; then
  ids=$($PY tests/gpu/compare.py ids $EX)
  nnew=$($PY -c "from safetensors.numpy import load_file; print(len(load_file('$EX/expected.safetensors')['tokens']))")
  $BIN/kilnc ref $EX --ids $ids --max-new $nnew --dump $ART/tinyfortune.ref.st > $LOG/ref_tinyfortune.log 2>&1
  if $BIN/kiln run $ART/tinyfortune --ids $ids --max-new $nnew --ignore-eos --dump $ART/tinyfortune.kiln.st > $LOG/run_tinyfortune.log 2>&1; then
    $PY tests/gpu/compare.py gen tinyfortune $EX $ART/tinyfortune.kiln.st $ART/tinyfortune.ref.st >> "$SUMMARY" 2>>"$LOG/compare.log" || fail=1
    shown
    $BIN/kiln run $ART/tinyfortune --prompt "A fool and" --max-new 40 > $LOG/text_tinyfortune.log 2>&1
    row "$(printf "%-24s text: %s" tinyfortune "$(grep -m1 "^A fool and" $LOG/text_tinyfortune.log)")"
  else
    row "$(printf '%-24s FAIL run: %s' tinyfortune "$(grep -m1 -i error $LOG/run_tinyfortune.log)")"; fail=1
  fi
else
  row "$(printf '%-24s FAIL compile' tinyfortune)"; fail=1
fi

# 3. batching: 4 prompts of different lengths, together and alone
for f in llama mixtral bloom qwen2; do
  [ -f $ART/$f/model.kiln ] || continue
  skip_late "$f batch" && continue
  full=$($PY tests/gpu/compare.py ids tests/fixtures/$f)
  IFS=, read -ra T <<< "$full"
  p1=$(IFS=,; echo "${T[*]:0:5}"); p2=$(IFS=,; echo "${T[*]:3:17}"); p3=$full; p4=$(IFS=,; echo "${T[*]:1:9}")
  singles=()
  i=0
  for p in $p1 $p2 $p3 $p4; do
    $BIN/kiln run $ART/$f --ids $p --max-new 12 --ignore-eos --dump $ART/$f.single$i.st > $LOG/batch_$f.$i.log 2>&1
    singles+=($ART/$f.single$i.st); i=$((i+1))
  done
  if $BIN/kiln run $ART/$f --ids $p1 --ids $p2 --ids $p3 --ids $p4 --max-new 12 --ignore-eos --dump $ART/$f.batch.st > $LOG/batch_$f.log 2>&1; then
    $PY tests/gpu/compare.py batch "$f batch" "${singles[@]}" -- $ART/$f.batch.st >> "$SUMMARY" 2>>"$LOG/compare.log" || fail=1
  else
    row "$(printf '%-24s FAIL batch run: %s' $f "$(grep -m1 -i error $LOG/batch_$f.log)")"; fail=1
  fi
  shown
done

# The fixture's whole prompt prefilled in chunks of 8 (an artifact compiled with --max-tokens 8):
# gen against HF's one forward and generate()'s tokens, as the one-chunk run of the GEN loop
chunks_of_8() {
  local f=$1 full=$2 base
  if $BIN/kilnc compile tests/fixtures/$f -o $ART/${f}_chunk8 --sm $SM --max-batch 8 --max-tokens 8 > $LOG/compile_${f}_chunk8.log 2>&1 &&
     $BIN/kiln run $ART/${f}_chunk8 --ids $full --max-new 16 --ignore-eos --dump $ART/${f}_chunk8.kiln.st > $LOG/run_${f}_chunk8.log 2>&1; then
    base=$ART/$f.hfbf16.st; [ -f $base ] || base=
    $PY tests/gpu/compare.py gen "${f} chunks of 8" tests/fixtures/$f $ART/${f}_chunk8.kiln.st $ART/$f.ref.st $base >> "$SUMMARY" 2>>"$LOG/compare.log" || fail=1
    shown
  else
    row "$(printf '%-24s FAIL compile/run: %s' ${f}_chunk8 "$(grep -m1 -i error $LOG/compile_${f}_chunk8.log $LOG/run_${f}_chunk8.log)")"; fail=1
  fi
}

# 3a. longrope as transformers (issue 13): phi3_longrope's 6-token cross_ids generate past
# original_max_position_embeddings 12, where the scheduler recomputes the sequence with the long
# factors (HF's cross_tokens), alone and next to the 16-token prompt in one batch; and that prompt
# prefilled in chunks of 8 (an artifact compiled with --max-tokens 8: the first chunk ends before
# the switch) is long from its first chunk (gen: logits and tokens against HF's one forward)
if [ -f $ART/phi3_longrope/model.kiln ] && ! skip_late "phi3_longrope cross"; then
  f=phi3_longrope
  pre=$($PY tests/gpu/compare.py ids tests/fixtures/$f cross_ids)
  full=$($PY tests/gpu/compare.py ids tests/fixtures/$f)
  $BIN/kiln run $ART/$f --ids $pre --max-new 16 --ignore-eos > $LOG/cross_$f.out 2> $LOG/cross_$f.log
  $PY tests/gpu/compare.py cross "$f cross" tests/fixtures/$f $LOG/cross_$f.out >> "$SUMMARY" 2>>"$LOG/compare.log" || fail=1
  shown
  $BIN/kiln run $ART/$f --ids $full --ids $pre --max-new 16 --ignore-eos > $LOG/cross_batch_$f.out 2> $LOG/cross_batch_$f.log
  $PY tests/gpu/compare.py cross "$f cross batch" tests/fixtures/$f $LOG/cross_batch_$f.out "[1] " >> "$SUMMARY" 2>>"$LOG/compare.log" || fail=1
  shown
  chunks_of_8 $f "$full"
fi

# 3a'. dynamic NTK as transformers: llama_dynamic's 14-token prompt (past max_position_embeddings
# 8) prefilled in chunks of 8 and 6 (an artifact compiled with --max-tokens 8) rotates every chunk
# with the whole prompt's base (rope_kv DYNAMIC 1 on seq_ropelen)
if [ -f $ART/llama_dynamic/model.kiln ] && ! skip_late "llama_dynamic chunks"; then
  f=llama_dynamic
  full=$($PY tests/gpu/compare.py ids tests/fixtures/$f)
  chunks_of_8 $f "$full"
fi

# 3b. sampling with a seed draws from (seed, token index) only: a sampled request gives the same
# tokens alone and in a batch. The three prompts are short (2, 3 and 2 tokens: together at most
# gemv_max rows, so every linear of the prefill runs on kiln's GEMV kernels, whose rows do not depend
# on the batch, as in decode): with longer prompts the batch's prefill GEMMs run on cuBLASLt with
# other shapes than alone, the logits differ in the last bits (the batch rows above: ~6e-3), and a
# sampled draw near a boundary may flip, which says nothing about the RNG. Then a maximum batch that
# is not a power of two (6: the decode bucket of 5 or 6 rows is the batch itself) gives every row
# its tokens.
if [ -f $ART/llama/model.kiln ] && ! skip_late "llama seeded"; then
  full=$($PY tests/gpu/compare.py ids tests/fixtures/llama)
  IFS=, read -ra T <<< "$full"
  ps=("$(IFS=,; echo "${T[*]:0:7}")" "$(IFS=,; echo "${T[*]:2:13}")" "$full" "$(IFS=,; echo "${T[*]:1:4}")"
      "$(IFS=,; echo "${T[*]:5:9}")" "$(IFS=,; echo "${T[*]:0:21}")")
  samp="--temperature 1 --top-k 40 --seed 7"
  short=("$(IFS=,; echo "${T[*]:0:2}")" "$(IFS=,; echo "${T[*]:4:3}")" "$(IFS=,; echo "${T[*]:9:2}")")
  singles=(); args=()
  for i in 0 1 2; do
    $BIN/kiln run $ART/llama --ids ${short[$i]} $samp --max-new 16 --ignore-eos --dump $ART/llama.seed$i.st > $LOG/seed_llama.$i.log 2>&1
    singles+=($ART/llama.seed$i.st); args+=(--ids ${short[$i]})
  done
  if $BIN/kiln run $ART/llama "${args[@]}" $samp --max-new 16 --ignore-eos --dump $ART/llama.seedb.st > $LOG/seed_llama.log 2>&1; then
    $PY tests/gpu/compare.py batch "llama seeded" "${singles[@]}" -- $ART/llama.seedb.st >> "$SUMMARY" 2>>"$LOG/compare.log" || fail=1
  else
    row "$(printf '%-24s FAIL seeded batch run: %s' llama "$(grep -m1 -i error $LOG/seed_llama.log)")"; fail=1
  fi
  shown
  if $BIN/kilnc compile tests/fixtures/llama -o $ART/llama_b6 --sm $SM --max-batch 6 > $LOG/compile_llama_b6.log 2>&1; then
    singles=(); args=()
    for i in 0 1 2 3 4 5; do
      $BIN/kiln run $ART/llama_b6 --ids ${ps[$i]} --max-new 12 --ignore-eos --dump $ART/llama_b6.single$i.st > $LOG/b6_llama.$i.log 2>&1
      singles+=($ART/llama_b6.single$i.st); args+=(--ids ${ps[$i]})
    done
    if $BIN/kiln run $ART/llama_b6 "${args[@]}" --max-new 12 --ignore-eos --dump $ART/llama_b6.batch.st > $LOG/b6_llama.log 2>&1; then
      $PY tests/gpu/compare.py batch "llama max-batch 6" "${singles[@]}" -- $ART/llama_b6.batch.st >> "$SUMMARY" 2>>"$LOG/compare.log" || fail=1
    else
      row "$(printf '%-24s FAIL batch run: %s' llama_b6 "$(grep -m1 -i error $LOG/b6_llama.log)")"; fail=1
    fi
  else
    row "$(printf '%-24s FAIL compile --max-batch 6' llama)"; fail=1
  fi
  shown
  # Batches of 20 and 40 (decode steps of 20 and 40 rows, prefills of more than 64 tokens) against
  # the six prompts alone: with cuBLASLt (its GEMM past gemv_max rows), with --gemm kiln (decode
  # steps of 9 to 64 rows on the skinny GEMM: templates/gemm90.cuh's gemm90_skinny at --sm 90a,
  # templates/gemv.cuh's gemm_skinny elsewhere; its own singles),
  # and with --quant int4 (those steps on gemm_skinny_int4, the singles' on gemv_int4; its own).
  # Its prompts are prefilled in steps of at most 64 tokens (--max-tokens 64), all of them on
  # gemm_skinny_int4, as each prompt alone (15 tokens) is: a row's result on it depends on no
  # other row. Longer prefill steps run dequant_int4 and cuBLASLt's GEMM, another summation
  # order, and this fixture's INT4 margins are thin (section 3g: 2 of 8 tokens equal ref's):
  # tokens flipped where the batch's prefill took that path and the singles' did not (measured,
  # twelfth and thirteenth sessions). So no batch of 80 here (its two decode row groups need
  # --max-batch 128, hence prefill steps of 128 tokens): kiln-ktest's skinny_int4 invariance
  # cases check rows of later row groups against each row alone, bit for bit.
  for gm in "" kiln int4; do
    a=$ART/llama_b64${gm:+_$gm} mb=64 ns="20 40"
    case $gm in
      kiln) opt="--gemm kiln" ;;
      int4) opt="--quant int4 --max-tokens 64" ;;
      *) opt= ;;
    esac
    # shellcheck disable=SC2086
    if [ ${#ps[@]} = 6 ] && $BIN/kilnc compile tests/fixtures/llama -o $a --sm $SM --max-batch $mb $opt > $LOG/compile_$(basename $a).log 2>&1; then
      one=()
      for i in 0 1 2 3 4 5; do
        if [ -z "$gm" ]; then one+=(${singles[$i]}); continue; fi
        $BIN/kiln run $a --ids ${ps[$i]} --max-new 12 --ignore-eos --dump $a.single$i.st > $LOG/$(basename $a).$i.log 2>&1
        one+=($a.single$i.st)
      done
      for n in $ns; do
        rep=(); args=()
        for i in $(seq 0 $((n - 1))); do rep+=(${one[$((i % 6))]}); args+=(--ids ${ps[$((i % 6))]}); done
        name="llama${gm:+_$gm} batch of $n"
        if $BIN/kiln run $a "${args[@]}" --max-new 12 --ignore-eos --dump $a.batch$n.st > $LOG/$(basename $a).b$n.log 2>&1; then
          $PY tests/gpu/compare.py batch "$name" "${rep[@]}" -- $a.batch$n.st >> "$SUMMARY" 2>>"$LOG/compare.log" || fail=1
        else
          row "$(printf '%-24s FAIL batch run: %s' "$name" "$(grep -m1 -i error $LOG/$(basename $a).b$n.log)")"; fail=1
        fi
        shown
      done
    else
      row "$(printf '%-24s FAIL compile --max-batch %s %s' llama $mb "$opt")"; fail=1
    fi
  done
fi

# 5. standalone executables (issue 16; RUN_STANDALONE=0 skips): llama (generate, weights beside it)
# and bert (embed, --embed-weights) compiled with --standalone; only OUT_DIR copied into an empty
# folder and run there under env -i, with ldd's and LD_DEBUG=libs' output in the logs
# (sa_ldd_F.txt, sa_run_F.log). Rows: the shared objects it needs (ldd: glibc only) and those it
# loaded (LD_DEBUG: glibc, libgcc_s and the driver's libcuda/libnvidia-* only); its --dump equal to
# `kiln run OUT_DIR`'s (greedy tokens identical; logits' or embedding's relative L2 shown); and
# against HF with the criteria of the rows above (compare.py gen / embed).
if [ "${RUN_STANDALONE:-1}" = 1 ]; then
  SA=/tmp/kiln-standalone
  rm -rf $SA && mkdir -p $SA
  GLIBC='linux-vdso\.so\.1|libc\.so\.6|libm\.so\.6|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|/lib64/ld-linux-x86-64\.so\.2'
  for f in llama bert; do
    skip_late "$f standalone" && continue
    flags=; [ $f = bert ] && flags=--embed-weights
    if ! $BIN/kilnc compile tests/fixtures/$f -o $SA/out/$f --sm $SM --max-batch 8 --standalone $flags > $LOG/sa_compile_$f.log 2>&1; then
      row "$(printf '%-24s FAIL compile: %s' "$f standalone" "$(grep -m1 error $LOG/sa_compile_$f.log)")"; fail=1; continue
    fi
    mkdir -p $SA/empty/$f && cp -r $SA/out/$f $SA/empty/$f/
    X=./$f/$f   # from $SA/empty/$f: OUT_DIR and nothing else
    ids=$($PY tests/gpu/compare.py ids tests/fixtures/$f)
    if [ $f = bert ]; then args="--ids $ids --token-types $($PY tests/gpu/compare.py types tests/fixtures/$f)"
    else args="--ids $ids --max-new 16 --ignore-eos"; fi
    ls -la $SA/empty/$f/$f > $LOG/sa_ldd_$f.txt
    ldd $SA/empty/$f/$X >> $LOG/sa_ldd_$f.txt 2>&1
    other=$(sed -n '/=>\|ld-linux\|vdso/p' $LOG/sa_ldd_$f.txt | awk '{print $1}' | grep -vxE "$GLIBC" | tr '\n' ' ')
    # shellcheck disable=SC2086
    (cd $SA/empty/$f && env -i LD_DEBUG=libs $X run $args --dump $SA/$f.sa.st) > $LOG/sa_run_$f.log 2>&1
    src=$?
    loaded=$(sed -n 's/.*calling init: \(.*\)/\1/p' $LOG/sa_run_$f.log | xargs -rn1 basename | sort -u | tr '\n' ' ')
    foreign=$(tr ' ' '\n' <<< "$loaded" | grep -v '^$' | grep -vE "^($GLIBC|ld-linux-x86-64\\.so\\.2|libgcc_s\.so\.1|libcuda\.so.*|libnvidia-.*)\$" | tr '\n' ' ')
    if [ -z "$other" ] && [ -z "$foreign" ] && [ $src = 0 ]; then st=ok; else st=FAIL; fail=1; fi
    row "$(printf '%-24s %-4s %s: ldd: %s; loaded: %s%s' "$f standalone" $st "$(du -h $SA/empty/$f/$X | cut -f1)" \
      "${other:-glibc only}" "$loaded" "$([ $src = 0 ] || echo "; run FAILED: $(grep -v '^ *[0-9]*:' $LOG/sa_run_$f.log | grep -m1 -i error)")")"
    [ $src = 0 ] || continue
    # shellcheck disable=SC2086
    if ! $BIN/kiln run $SA/out/$f $args --dump $SA/$f.kiln.st > $LOG/sa_kiln_$f.log 2>&1; then
      row "$(printf '%-24s FAIL kiln run: %s' "$f standalone" "$(grep -m1 -i error $LOG/sa_kiln_$f.log)")"; fail=1; continue
    fi
    $PY tests/gpu/compare.py same "$f standalone = kiln" $SA/$f.kiln.st $SA/$f.sa.st >> "$SUMMARY" 2>>"$LOG/compare.log" || fail=1
    shown
    if [ $f = bert ]; then
      $PY tests/gpu/compare.py embed "$f standalone vs HF" tests/fixtures/$f $SA/$f.sa.st >> "$SUMMARY" 2>>"$LOG/compare.log" || fail=1
    else
      $BIN/kilnc ref tests/fixtures/$f --ids $ids --max-new 16 --dump $SA/$f.ref.st > $LOG/sa_ref_$f.log 2>&1
      base=$ART/$f.hfbf16.st; [ -f $base ] || base=
      $PY tests/gpu/compare.py gen "$f standalone vs HF" tests/fixtures/$f $SA/$f.sa.st $SA/$f.ref.st $base >> "$SUMMARY" 2>>"$LOG/compare.log" || fail=1
    fi
    shown
  done
else
  row "$(printf '%-24s %-4s %s' standalone skip "RUN_STANDALONE=0")"
fi

# 3c. kiln's own GEMM (kilnc compile --gemm kiln; RUN_KGEMM=0 skips): each fixture of $KGEMM,
# compiled with it, runs with no cuBLASLt step; LD_DEBUG=libs (logs kg_ld_F.*) shows libcublasLt
# never loaded. Compared with HF as the rows above (compare.py gen, embed, classify). Then llama's
# four prompts of section 3, together and alone (compare.py batch); and four prompts of 9 to 40
# tokens, more than gemv_max (8) each, so that every prefill linear runs kiln's GEMM both in the
# batch and alone: its tile does not depend on M and it has no split-K (templates/gemm.cuh), the
# rest of the step is per row or per sequence, and decode's GEMV rows do not depend on the batch,
# so the batch must equal each prompt alone bit for bit (compare.py batch-exact).
for f in $KGEMM; do
  g=${f}_kgemm
  skip_late $g && continue
  if grep -q "COMPILE_FAIL $g\$" "$LOG/compile_failures.txt"; then
    row "$(printf '%-24s FAIL compile: %s' $g "$(grep -m1 error $LOG/compile_$g.log)")"; fail=1; continue
  fi
  steps=$($BIN/kiln inspect $ART/$g | sed -n 's/^gemm *//p')
  ids=$($PY tests/gpu/compare.py ids tests/fixtures/$f); types=$($PY tests/gpu/compare.py types tests/fixtures/$f)
  task=$(sed -n 's/.*task \([a-z]*\).*/\1/p' <<< "$($BIN/kiln inspect $ART/$g | head -1)")
  if [ "$task" = generate ]; then args="--max-new 16 --ignore-eos"; else args=${types:+--token-types $types}; fi
  rm -f $LOG/kg_ld_$g.*
  # shellcheck disable=SC2086
  if ! LD_DEBUG=libs LD_DEBUG_OUTPUT=$LOG/kg_ld_$g $BIN/kiln run $ART/$g --ids $ids $args --dump $ART/$g.kiln.st > $LOG/run_$g.log 2>&1; then
    row "$(printf '%-24s FAIL run: %s' $g "$(grep -m1 -i error $LOG/run_$g.log)")"; fail=1; continue
  fi
  if ! ls $LOG/kg_ld_$g.* > /dev/null 2>&1; then lt="? (no LD_DEBUG output)"
  elif cat $LOG/kg_ld_$g.* | grep -q 'calling init: .*libcublasLt'; then lt=LOADED
  else lt="not loaded"; fi
  if [ "$lt" = "not loaded" ] && grep -q ': 0 cuBLASLt steps' <<< "$steps"; then st=ok; else st=FAIL; fail=1; fi
  row "$(printf '%-24s %-4s gemm %s; libcublasLt %s' $g $st "$steps" "$lt")"
  case $task in
    generate)
      [ -f $ART/$f.ref.st ] || $BIN/kilnc ref tests/fixtures/$f --ids $ids --max-new 16 --dump $ART/$f.ref.st > $LOG/ref_$f.log 2>&1
      base=$ART/$f.hfbf16.st; [ -f $base ] || base=
      $PY tests/gpu/compare.py gen $g tests/fixtures/$f $ART/$g.kiln.st $ART/$f.ref.st $base >> "$SUMMARY" 2>>"$LOG/compare.log" || fail=1 ;;
    embed)
      $PY tests/gpu/compare.py embed $g tests/fixtures/$f $ART/$g.kiln.st >> "$SUMMARY" 2>>"$LOG/compare.log" || fail=1 ;;
    *)
      base=$ART/$f.hfbf16.st; [ -f $base ] || base=
      $PY tests/gpu/compare.py classify $g tests/fixtures/$f $ART/$g.kiln.st $base >> "$SUMMARY" 2>>"$LOG/compare.log" || fail=1 ;;
  esac
  shown
done
if [ -f $ART/llama_kgemm/model.kiln ] && ! skip_late "llama_kgemm batch"; then
  full=$($PY tests/gpu/compare.py ids tests/fixtures/llama)
  IFS=, read -ra T <<< "$full"
  # section 3's prompts (5, 17, 40 and 9 tokens), then four of more than gemv_max tokens each
  sets=("$(IFS=,; echo "${T[*]:0:5}") $(IFS=,; echo "${T[*]:3:17}") $full $(IFS=,; echo "${T[*]:1:9}")"
        "$(IFS=,; echo "${T[*]:0:9}") $(IFS=,; echo "${T[*]:3:17}") $full $(IFS=,; echo "${T[*]:1:12}")")
  for k in 0 1; do
    name=("llama_kgemm batch" "llama_kgemm batch exact"); how=(batch batch-exact)
    singles=(); args=(); i=0
    for p in ${sets[$k]}; do
      $BIN/kiln run $ART/llama_kgemm --ids $p --max-new 12 --ignore-eos --dump $ART/llama_kgemm.s$k.$i.st > $LOG/kg_batch.$k.$i.log 2>&1
      singles+=($ART/llama_kgemm.s$k.$i.st); args+=(--ids $p); i=$((i+1))
    done
    if $BIN/kiln run $ART/llama_kgemm "${args[@]}" --max-new 12 --ignore-eos --dump $ART/llama_kgemm.b$k.st > $LOG/kg_batch.$k.log 2>&1; then
      $PY tests/gpu/compare.py ${how[$k]} "${name[$k]}" "${singles[@]}" -- $ART/llama_kgemm.b$k.st >> "$SUMMARY" 2>>"$LOG/compare.log" || fail=1
    else
      row "$(printf '%-24s FAIL batch run: %s' "${name[$k]}" "$(grep -m1 -i error $LOG/kg_batch.$k.log)")"; fail=1
    fi
    shown
  done
fi

# 3e. FP8 prefill on the FP8 tensor cores (W8A8, kilnc compile's default --fp8-gemm: quant_fp8_rows,
# cuBLASLt's e4m3 GEMM, fp8_rescale with the weight rows' and the tokens' scales). Each W8A8
# artifact (llama_fp8_ct, whose 8-token prompt the GEMV takes above, and llama_fp8q_w8a8) runs its
# fixture's prompt five times over (40 and 200 tokens) against kilnc ref on the same prompt (fp32,
# the dequantised weights, activations unquantised), with the bf16 llama artifact on the same
# prompt as the control. compare.py quant: the dump's logits (the prefill rows, W8A8, then 8 decode
# rows on the GEMV) within rel_l2 0.25 of ref's, and the first greedy token ref's. The bound is
# loose on purpose: e4m3 rounds each activation by up to 2^-4 (rms about 3.6%), and these tiny
# random models amplify it (0.13 and 0.17 on an H200 at 3984455, the bf16 control 0.03); a wrong
# byte order or scale gives about 1.
if [ -n "$FP8Q" ] && [ -f $ART/llama/model.kiln ]; then
  for f in llama llama_fp8_ct llama_fp8q_w8a8; do
    skip_late "$f w8a8" && continue
    [ -f $ART/$f/model.kiln ] || continue
    src=tests/fixtures/$f q=
    [ $f = llama_fp8q_w8a8 ] && src=tests/fixtures/llama q="--quant fp8"
    ids=$($PY tests/gpu/compare.py ids $src)
    long=$ids,$ids,$ids,$ids,$ids
    # shellcheck disable=SC2086
    $BIN/kilnc ref $src $q --ids $long --max-new 8 --dump $ART/$f.long.ref.st > $LOG/ref_${f}_long.log 2>&1
    if $BIN/kiln run $ART/$f --ids $long --max-new 8 --ignore-eos --dump $ART/$f.long.kiln.st > $LOG/run_${f}_long.log 2>&1; then
      $PY tests/gpu/compare.py quant "$f 40-token prefill" $ART/$f.long.kiln.st $ART/$f.long.ref.st 0.25 >> "$SUMMARY" 2>>"$LOG/compare.log" || fail=1
    else
      row "$(printf '%-24s FAIL run: %s' "$f w8a8" "$(grep -m1 -i error $LOG/run_${f}_long.log)")"; fail=1
    fi
    shown
  done
fi

# 3g. --quant int4 (RUN_INT4Q= skips): the fixture's linears rounded to INT4 at compile time, run on
# the first 6 tokens of its prompt (a prefill of up to 8 rows: gemv_int4) and on the whole prompt
# (40 tokens for llama: gemm_skinny_int4; past 64, dequant_int4 into scratch and the bf16 GEMM), 8
# decode steps on gemv_int4 after each, against kilnc ref --quant int4 on the same prompt. The
# weights are the same numbers on both sides (the scales rounded to bf16 at compile time;
# test_compile checks the packed
# nibbles, scales and zero points give them back exactly), so the difference is bf16 arithmetic,
# as in 3e's bf16 control (0.03): the bound 0.1 leaves room for that and nothing else; a wrong
# nibble order, group, scale or zero point moves the logits by about as much as the rounding
# itself (0.34 from the unquantised logits on the CPU, tests/test_ref.c) or more.
for f in $INT4Q; do
  g=${f}_int4q
  skip_late $g && continue
  if grep -q "COMPILE_FAIL $g\$" "$LOG/compile_failures.txt"; then
    row "$(printf '%-24s FAIL compile: %s' $g "$(grep -m1 error $LOG/compile_$g.log)")"; fail=1; continue
  fi
  ids=$($PY tests/gpu/compare.py ids tests/fixtures/$f)
  for n in 6 all; do
    p=$ids; [ $n = 6 ] && p=$(echo "$ids" | cut -d, -f1-6)
    $BIN/kilnc ref tests/fixtures/$f --quant int4 --ids $p --max-new 8 --dump $ART/$g.$n.ref.st > $LOG/ref_${g}_$n.log 2>&1
    if $BIN/kiln run $ART/$g --ids $p --max-new 8 --ignore-eos --dump $ART/$g.$n.kiln.st > $LOG/run_${g}_$n.log 2>&1; then
      $PY tests/gpu/compare.py quant "$g prompt $n" $ART/$g.$n.kiln.st $ART/$g.$n.ref.st 0.1 >> "$SUMMARY" 2>>"$LOG/compare.log" || fail=1
      shown
    else
      row "$(printf '%-24s FAIL run: %s' $g "$(grep -m1 -i error $LOG/run_${g}_$n.log)")"; fail=1
    fi
  done
done

# 3h. gemv_stream_int4 (RUN_INT4S= skips): an INT4 weight in groups of 128 streams at batch 1 on
# sm_90+ code, but the fixtures' widths (at most 192) take gemv_int4; a synthesised Llama-3.2 1B
# of 2 layers (kilnc synth: hidden 2048, FFN 8192) compiled --quant int4 runs its 8 decode steps on
# gemv_stream_int4 and gemv_stream_rope_int4 (the norms and rotations folded in), against kilnc
# ref --quant int4 as in 3g (bound 0.1; measured 9.6e-3 at the commit that added it).
if [ -n "${RUN_INT4S-1}" ] && ! skip_late syn1b_int4; then
  S=/tmp/kiln-syn1b2 g=syn1b_int4
  if { [ -f $S/config.json ] || $BIN/kilnc synth --like llama3.2-1b --layers 2 -o $S > $LOG/synth_$g.log 2>&1; } &&
     $BIN/kilnc compile $S --quant int4 -o $ART/$g --sm $SM --max-batch 8 > $LOG/compile_$g.log 2>&1; then
    n=$($BIN/kiln inspect $ART/$g --schedule | grep -c "gemv_stream.*_int4")
    ids=$($PY -c "print(','.join(str(1000 + (i * 7919) % 100000) for i in range(40)))")
    $BIN/kilnc ref $S --quant int4 --ids $ids --max-new 8 --dump $ART/$g.ref.st > $LOG/ref_$g.log 2>&1
    if [ "$n" -gt 0 ] && $BIN/kiln run $ART/$g --ids $ids --max-new 8 --ignore-eos --dump $ART/$g.kiln.st > $LOG/run_$g.log 2>&1; then
      $PY tests/gpu/compare.py quant "$g ($n stream steps)" $ART/$g.kiln.st $ART/$g.ref.st 0.1 >> "$SUMMARY" 2>>"$LOG/compare.log" || fail=1
      shown
    else
      row "$(printf '%-24s FAIL run (%s gemv_stream_int4 steps): %s' $g "$n" "$(grep -m1 -i error $LOG/run_$g.log)")"; fail=1
    fi
  else
    row "$(printf '%-24s FAIL synth or compile: %s' $g "$(grep -m1 -i error $LOG/compile_$g.log $LOG/synth_$g.log)")"; fail=1
  fi
fi

# 3f. the FP8 KV cache (kilnc compile --kv-dtype fp8; RUN_KV8= skips): the fixture compiled with it
# (F_kv8) and again with --max-tokens 64 (F_kv8c: the prompt prefilled in chunks of 64 tokens, each
# attending the earlier chunks' keys in the FP8 cache), each run on the fixture's prompt eight times
# over (320 tokens for llama: 10 KV blocks, and its 8 decode steps attend 320+ keys in 11 splits)
# against kilnc ref --kv-dtype fp8 on the same prompt. compare.py quant: the prompt's logits within
# rel_l2 0.25 of ref's and the first greedy token ref's. The bound is loose for the reason 3e's is:
# on the CPU the FP8 cache itself moves llama's logits by 0.13 from fp32 (tests/test_kv8.c), and
# the GPU's K and V, computed in bf16, land on the other side of an e4m3 midpoint now and then:
# emulated on the CPU (ref's K and V rounded to bf16 before the FP8 rounding) that alone moves the
# logits by 0.077, on top of bf16's own 0.03 (3e's control); a wrong byte order, scale or block
# layout gives about 1. The kernels are checked tightly by their kv8 cases in kiln-ktest. Then the
# capacity: the bf16 and the FP8 artifact loaded with the same --kv-memory 2.5e-6 (about 370 KB of
# an H200, so the memory and not the limits sizes the cache: granite's FP8 cache reached the
# artifact's 4,096-token limit at twice that): the FP8 one must hold 2 HD / (HD + 4) times the
# tokens (a head's bytes in bf16 over its e4m3 bytes and float scale; HD the head dim the kernels
# run at, a multiple of 8), less at most 10% (whole KV blocks) and not more than 5% over: llama's
# heads of 24, 1.71x; granite's of 16, 1.6x.
for f in $KV8; do
  skip_late "${f}_kv8" && continue
  ids=$($PY tests/gpu/compare.py ids tests/fixtures/$f)
  long=$ids,$ids,$ids,$ids,$ids,$ids,$ids,$ids
  $BIN/kilnc ref tests/fixtures/$f --kv-dtype fp8 --ids $long --max-new 8 --dump $ART/$f.kv8.ref.st > $LOG/ref_${f}_kv8.log 2>&1
  for g in ${f}_kv8 ${f}_kv8c; do
    if grep -q "COMPILE_FAIL $g\$" "$LOG/compile_failures.txt"; then
      row "$(printf '%-24s FAIL compile: %s' $g "$(grep -m1 error $LOG/compile_$g.log)")"; fail=1; continue
    fi
    if $BIN/kiln run $ART/$g --ids $long --max-new 8 --ignore-eos --dump $ART/$g.kiln.st > $LOG/run_$g.log 2>&1; then
      $PY tests/gpu/compare.py quant "$g 8x prompt" $ART/$g.kiln.st $ART/$f.kv8.ref.st 0.25 >> "$SUMMARY" 2>>"$LOG/compare.log" || fail=1
      shown
    else
      row "$(printf '%-24s FAIL run: %s' $g "$(grep -m1 -i error $LOG/run_$g.log)")"; fail=1
    fi
  done
  if [ -f $ART/$f/model.kiln ] && [ -f $ART/${f}_kv8/model.kiln ]; then
    $BIN/kiln run $ART/$f --ids 1,2,3 --max-new 1 --kv-memory 2.5e-6 > $LOG/cap_$f.log 2>&1
    $BIN/kiln run $ART/${f}_kv8 --ids 1,2,3 --max-new 1 --kv-memory 2.5e-6 > $LOG/cap_${f}_kv8.log 2>&1
    a=$(sed -n 's/.*KV cache \([0-9]*\) tokens.*/\1/p' $LOG/cap_$f.log | head -1)
    b=$(sed -n 's/.*KV cache \([0-9]*\) tokens.*(fp8: e4m3.*/\1/p' $LOG/cap_${f}_kv8.log | head -1)
    st=$($PY - tests/fixtures/$f/config.json "$a" "$b" <<'PYEOF' 2>/dev/null || echo "FAIL no KV line"
import json, sys
c = json.load(open(sys.argv[1]))
hd = c.get("head_dim") or (c.get("hidden_size") or c["n_embd"]) // (
    c.get("num_attention_heads") or c["n_head"])
hd = (hd + 7) // 8 * 8
want = 2 * hd / (hd + 4)
r = int(sys.argv[3]) / int(sys.argv[2])
print(("ok  " if 0.9 * want <= r <= 1.05 * want else "FAIL") + f" {r:.2f}x (expected {want:.2f}x)")
PYEOF
)
    [ "${st:0:2}" = ok ] || fail=1
    row "$(printf '%-24s %s: KV cache %s tokens in fp8, %s in bf16 at --kv-memory 2.5e-6' "${f}_kv8 capacity" "$st" "${b:-?}" "${a:-?}")"
  fi
done

# 3d. batch invariance (kilnc compile --batch-invariant; RUN_INVARIANT=0 skips): each fixture of
# $INVAR compiled with --max-batch 64 --max-tokens 96, so that 64 prompts of 1 to 90 tokens (slices
# of the fixture's prompt) run in one kiln run in steps of at most 96 tokens: prompts are admitted
# as tokens allow and prefilled in chunks beside up to 64 decodes (which the scheduler runs as
# steps of their own), the decodes in buckets of up to 64 rows (the GEMV's row groups). Rows:
#   F_bi vs HF         the fixture's prompt against HF: compare.py gen, the criteria of the rows above
#   F_bi x64 greedy    the 64 prompts together against each one run alone (its own kiln run of the
#                      same artifact, 8 at a time): greedy tokens and the logits of every prompt
#                      position bit for bit (compare.py batch-exact; the dump's logits are the
#                      prefill's, the tokens after the first come from decode steps)
#   F_bi x64 seeded    the same with --temperature 1 --top-k 40 --seed 7
# --kv-memory 0.02 (about 2.8 GB of an H200): the fixtures need a few MB, so nothing is preempted
# (a preempted request is recomputed through the prefill kernels: not covered, kilnc compile
# --help says so), and eight processes fit at once.
for f in $INVAR; do
  g=${f}_bi
  skip_late $g && continue
  if grep -q "COMPILE_FAIL $g\$" "$LOG/compile_failures.txt"; then
    row "$(printf '%-24s FAIL compile: %s' $g "$(grep -m1 error $LOG/compile_$g.log)")"; fail=1; continue
  fi
  ids=$($PY tests/gpu/compare.py ids tests/fixtures/$f)
  [ -f $ART/$f.ref.st ] || $BIN/kilnc ref tests/fixtures/$f --ids $ids --max-new 16 --dump $ART/$f.ref.st > $LOG/ref_$f.log 2>&1
  if ! $BIN/kiln run $ART/$g --ids $ids --max-new 16 --ignore-eos --dump $ART/$g.kiln.st > $LOG/run_$g.log 2>&1; then
    row "$(printf '%-24s FAIL run: %s' $g "$(grep -m1 -i error $LOG/run_$g.log)")"; fail=1; continue
  fi
  base=$ART/$f.hfbf16.st; [ -f $base ] || base=
  $PY tests/gpu/compare.py gen "$g vs HF" tests/fixtures/$f $ART/$g.kiln.st $ART/$f.ref.st $base >> "$SUMMARY" 2>>"$LOG/compare.log" || fail=1
  shown
  # prompt i: 1 + 37i mod 90 tokens of the fixture's prompt (cyclic), from token 5i
  mapfile -t P < <($PY -c "import sys; t = sys.argv[1].split(','); [print(','.join(t[(5 * i + k) % len(t)] for k in range(1 + 37 * i % 90))) for i in range(64)]" "$ids")
  for mode in greedy seeded; do
    skip_late "$g x64 $mode" && continue
    samp=; [ $mode = seeded ] && samp="--temperature 1 --top-k 40 --seed 7"
    singles=(); args=()
    for i in "${!P[@]}"; do singles+=($ART/$g.$mode.$i.st); args+=(--ids "${P[$i]}"); done
    for i in "${!P[@]}"; do
      echo "$BIN/kiln run $ART/$g --ids ${P[$i]} $samp --max-new 16 --ignore-eos --kv-memory 0.02 --dump $ART/$g.$mode.$i.st > $LOG/bi_$g.$mode.$i.log 2>&1 || echo ALONE_FAIL $i"
    done | xargs -P 8 -I{} bash -c "{}" > $LOG/bi_$g.$mode.failures.txt
    if [ -s $LOG/bi_$g.$mode.failures.txt ]; then
      row "$(printf '%-24s FAIL alone runs: %s' "$g x64 $mode" "$(tr '\n' ' ' < $LOG/bi_$g.$mode.failures.txt | cut -c1-120)")"; fail=1; continue
    fi
    # shellcheck disable=SC2086
    if $BIN/kiln run $ART/$g "${args[@]}" $samp --max-new 16 --ignore-eos --kv-memory 0.02 --dump $ART/$g.$mode.batch.st > $LOG/bi_$g.$mode.log 2>&1; then
      $PY tests/gpu/compare.py batch-exact "$g x64 $mode" "${singles[@]}" -- $ART/$g.$mode.batch.st >> "$SUMMARY" 2>>"$LOG/compare.log" || fail=1
      shown
    else
      row "$(printf '%-24s FAIL batch run: %s' "$g x64 $mode" "$(grep -m1 -i error $LOG/bi_$g.$mode.log)")"; fail=1
    fi
  done
done

# 4. compute-sanitizer, one fixture per family (its own table; its logs as sanitize-logs.tgz)
if [ "${KILN_SAN:-1}" = 1 ]; then
  wait $SAN_PID; rc=$?
  if [ $rc = 0 ]; then ss=ok; elif [ $rc = 124 ]; then ss=FAIL; echo "stopped at the deadline" >> $LOG/sanitize.out; else ss=FAIL; fi
  [ $ss = ok ] || fail=1
  row "$(printf '%-24s %-4s %s' compute-sanitizer $ss "$(tail -1 $LOG/sanitize.out)")"
  sed -n '/== compute-sanitizer summary/,$p' $LOG/sanitize.out | sed '1d;$d' | sed 's/^/    /' | tee -a "$SUMMARY"
else
  row "$(printf '%-24s %-4s %s' compute-sanitizer skip "KILN_SAN=0")"
fi

if [ "${KILN_KTEST:-1}" = 1 ]; then
  # the kernel tests get what is left of the deadline
  ( sleep $((DEADLINE - $(date +%s) > 0 ? DEADLINE - $(date +%s) : 1)); kill $KTEST_PID ) > /dev/null 2>&1 &
  STOPPER=$!
  if wait $KTEST_PID; then ks=ok; else ks=FAIL; fail=1; fi
  kill $STOPPER 2>/dev/null
  row "$(printf '%-24s %-4s %s' kernels $ks "$(tail -1 "$LOG/ktest.log")")"
  grep -E "^FAIL" "$LOG/ktest.log" | head -30 | tee -a "$SUMMARY"
else
  row "$(printf '%-24s %-4s %s' kernels skip "KILN_KTEST=0")"
fi

echo
echo "== summary ($CARD)"
cat "$SUMMARY"
[ $fail = 0 ] && echo "== ALL PASSED" || echo "== FAILURES (logs in $LOG)"
# the device tool brings back at most 8 files: one archive of every log, and the summary
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/gpu-logs.tgz" -C /tmp kiln-gpu-logs
  cp "$SUMMARY" "$OUT/summary.txt"
fi
exit $fail
