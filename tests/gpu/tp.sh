#!/bin/bash
# tests/gpu/tp.sh — tensor parallelism on a machine with several GPUs (issue 15), one call per
# phase, table last.
#
#   TP_PHASES="fix speed speed70 nccl servefix serve" tests/gpu/tp.sh
#
# Settings: TP_SIZES ("2 4 8": those the machine has GPUs for run), TP_GEN, TP_EMB, TP_CLS (the
# fixture lists; an empty one runs none), TP_STREAMS (serve's, 256), TP_DEADLINE (fix's, 540 s).
#
#   fix    every fixture family compiled without --tp, with --tp 1 (the NCCL path on one rank) and
#          with --tp N for each N in TP_SIZES that the machine has GPUs for and the shapes allow
#          (kilnc refuses the others, and the refusal is shown): greedy tokens identical to the
#          unsharded run (compare.py same, which reports the logits' difference; an embedding's or
#          a classifier's scores are judged against HF only), and every --tp N run against HF with
#          run.sh's bf16 criterion (compare.py gen / embed / classify). Rows past the deadline
#          (TP_DEADLINE seconds after the start, default 540: one device call has 10 minutes) say
#          SKIP; split TP_GEN over two calls when the whole list does not fit
#   speed  the Llama-3-8B shape (kilnc synth) at TP 1 (unsharded) and each N: `kiln bench` batch 1
#          and 64 decode and prefill of 2,048 tokens, and at each N again with KILN_ALLREDUCE=nccl
#          (NCCL's all-reduce instead of kiln's peer-to-peer kernel)
#   speed70  with 8 GPUs, the 70B shape (80 layers, hidden 8192, 64 heads, 8 KV heads, FFN 28672)
#          at TP 8: the same bench. Its checkpoint and its shards are 141 GB each, more than the
#          8-GPU machine's 235 GB disk holds together, so the checkpoint is synthesised in /dev/shm
#          when that has room (the machine has 560 GiB of memory) and deleted once compiled; the
#          artifact (--max-batch 128 --max-seq-len 2560: serve.sh's limits) is kept for serve
#   nccl   all-reduce bus bandwidth between the GPUs (nccl_bw.py, PyTorch's NCCL: the link, not
#          kiln; its small-message times are Python's launch loop)
#   servefix  `kiln serve` of the llama fixture at the largest N: 64 streams of loadgen.py through
#          the scheduler (8 at a time), all complete, 8 greedy re-runs alone compared
#   serve  `kiln serve --tp N` at the largest N under TP_STREAMS (256) concurrent streams through
#          serve.sh's c1000 phase: all complete, 0 lost, 0 errors. With 8 GPUs the model is the 70B
#          shape (speed70's artifact, compiled here if that phase did not run), else the 8B shape
#
# On a machine with 8 GPUs each phase fits one 10-minute call: fix, speed, speed70 (with nccl),
# servefix, serve.
#
# NCCL_NVLS_ENABLE=0 in every run (NVLink multicast stays off on the shared machines). Output:
# $OUT/tp-summary.txt (the table, also printed last), $OUT/tp-logs.tgz. Exit status 1 on a failure.
set -u
cd "$(dirname "$0")/../.."
export NCCL_NVLS_ENABLE=0
BIN=${KILN_BIN:-out/bin}
SM=${KILN_SM:-90a}
PY=${PYTHON:-python3}
PHASES=${TP_PHASES:-fix speed speed70 nccl servefix serve}
DEADLINE=$(( $(date +%s) + ${TP_DEADLINE:-540} ))
W=/tmp/kiln-tp
LOG=$W/logs
OUT=${OUT:-$W/out}
ART=$W/art
rm -rf $LOG
mkdir -p $W $LOG $ART "$OUT"
export KILN_ROOT=$PWD
SUMMARY=$W/summary.txt
: > $SUMMARY
fail=0
row() { echo "$1" | tee -a $SUMMARY; cp $SUMMARY "$OUT/tp-summary.txt"; }
# the last line of $SUMMARY (written by compare.py) echoed and sent to $OUT like a row
shown() { tail -1 $SUMMARY; cp $SUMMARY "$OUT/tp-summary.txt"; }
save_logs() { tar czf "$OUT/tp-logs.tgz" -C $W logs 2>/dev/null; }
skip_late() {
  [ "$(date +%s)" -ge $DEADLINE ] || return 1
  row "$(printf '%-22s SKIP (deadline: TP_DEADLINE=%s s)' $1 "${TP_DEADLINE:-540}")"; fail=1
}

NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
nvidia-smi topo -m > $LOG/topo.txt 2>&1
CARD="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x $NGPU"
SIZES=""
for n in ${TP_SIZES:-2 4 8}; do [ $n -le "$NGPU" ] && SIZES="$SIZES $n"; done
row "card: $CARD; tp sizes:$SIZES; commit $($BIN/kiln --version 2>/dev/null | sed -n 's/.*commit \([^)]*\)).*/\1/p'); NCCL_NVLS_ENABLE=$NCCL_NVLS_ENABLE"

# every family but qwen and llama_linear_oldstyle (5 and 3 heads: only --tp 1 works); at N = 4
# kilnc also refuses those whose heads 4 does not divide (llama, bloom6, phi3_longrope, phimoe,
# llama_dynamic) and llama_hd20 (one head of 20 per rank)
GEN=${TP_GEN-"llama llama_tied_oldstyle mistral qwen2 mixtral mixtral4 bloom bloom6
     llama_bf16 mistral_bf16 qwen2_bf16 mixtral_bf16 bloom_bf16
     gemma gemma2 gemma3 gemma3_oldstyle qwen3 qwen3_moe qwen2_moe phi3 phi3_longrope phimoe
     gpt2 gpt_neox gptj falcon falcon_new starcoder2 olmo2 granite cohere cohere_qknorm
     stablelm stablelm_qknorm internlm2 deepseek_v2 llama_hd20 llama_fp8_ct llama_dynamic"}
EMB=${TP_EMB-"bert bert_bf16"}
CLS=${TP_CLS-"qwen2_cls bert_cls"}

phase_fix() {
  # HF's bf16 baseline meanwhile, and everything compiled in parallel: unsharded, --tp 1, and
  # each size (NVRTC is single-threaded per unit)
  timeout 300 $PY tests/gpu/hf_bf16.py $ART $GEN $CLS > $LOG/hf_bf16.log 2>&1 &
  local hf=$!
  { for f in $GEN $EMB $CLS; do
      echo "$BIN/kilnc compile tests/fixtures/$f -o $ART/$f --sm $SM --max-batch 8 > $LOG/compile_$f.log 2>&1"
      for n in 1 $SIZES; do
        echo "$BIN/kilnc compile tests/fixtures/$f -o $ART/${f}_tp$n --tp $n --sm $SM --max-batch 8 > $LOG/compile_${f}_tp$n.log 2>&1"
      done
    done; } | xargs -P "$(nproc)" -I{} bash -c "{}"
  wait $hf
  row "compiled (and HF bf16): $(( $(date +%s) - t0 )) s"
  for f in $GEN $EMB $CLS; do
    skip_late $f && continue
    kind=gen; case " $EMB " in *" $f "*) kind=embed ;; esac; case " $CLS " in *" $f "*) kind=classify ;; esac
    ids=$($PY tests/gpu/compare.py ids tests/fixtures/$f)
    extra=(--max-new 16 --ignore-eos)
    if [ $kind != gen ]; then
      types=$($PY tests/gpu/compare.py types tests/fixtures/$f)
      extra=(${types:+--token-types $types})
    fi
    if ! $BIN/kiln run $ART/$f --ids $ids "${extra[@]}" --dump $ART/$f.st > $LOG/run_$f.log 2>&1; then
      row "$(printf '%-22s FAIL unsharded run: %s' $f "$(grep -m1 -i error $LOG/run_$f.log)")"; fail=1; continue
    fi
    [ $kind = gen ] && $BIN/kilnc ref tests/fixtures/$f --ids $ids --max-new 16 --dump $ART/$f.ref.st > $LOG/ref_$f.log 2>&1
    for n in 1 $SIZES; do
      name=${f}_tp$n
      skip_late $name && continue
      if [ ! -f $ART/$name/model.kiln ]; then
        msg=$(grep -m1 -A1 "error" $LOG/compile_$name.log | tr '\n' ' ' | cut -c1-150)
        if grep -q "cannot be split" $LOG/compile_$name.log; then
          row "$(printf '%-22s skip %s' $name "$msg")"
        else
          row "$(printf '%-22s FAIL compile: %s' $name "$msg")"; fail=1
        fi
        continue
      fi
      if ! $BIN/kiln run $ART/$name --ids $ids "${extra[@]}" --dump $ART/$name.st > $LOG/run_$name.log 2>&1; then
        row "$(printf '%-22s FAIL run: %s' $name "$(grep -m1 -i error $LOG/run_$name.log)")"; fail=1; continue
      fi
      $PY tests/gpu/compare.py same "$name vs unsharded" $ART/$f.st $ART/$name.st >> $SUMMARY 2>>$LOG/compare.log || fail=1
      shown
      base=$ART/$f.hfbf16.st; [ -f $base ] || base=
      case $kind in
        embed) $PY tests/gpu/compare.py embed "$name vs HF" tests/fixtures/$f $ART/$name.st >> $SUMMARY 2>>$LOG/compare.log || fail=1 ;;
        classify) $PY tests/gpu/compare.py classify "$name vs HF" tests/fixtures/$f $ART/$name.st $base >> $SUMMARY 2>>$LOG/compare.log || fail=1 ;;
        *) $PY tests/gpu/compare.py gen "$name vs HF" tests/fixtures/$f $ART/$name.st $ART/$f.ref.st $base >> $SUMMARY 2>>$LOG/compare.log || fail=1 ;;
      esac
      shown
    done
  done
}

bench_one() {  # $1 name, $2 artifact, $3... bench options: one row per figure
  local name=$1 art=$2; shift 2
  if $BIN/kiln bench $art "$@" --json $W/bench-$name.json > $LOG/bench-$name.out 2> $LOG/bench-$name.log; then
    $PY - $name $W/bench-$name.json > $W/bench-$name.rows <<'EOF'
import json, sys
name, b = sys.argv[1], json.load(open(sys.argv[2]))
print(f"{name:10s} load {b['load_s']:.1f} s; {b.get('gpu', {}).get('name', '')}")
for f in b["figures"]:
    what = f"{f['figure']} {f.get('batch', f.get('tokens', ''))}"
    if "skipped" in f:
        print(f"{name:10s} {what:24s} skipped: {f['skipped']}")
        continue
    v, unit = (f["tok_s"], "tok/s") if "tok_s" in f else (f["ms"], "ms")
    ratio = f" = {f['ratio']:.3f} of its roofline" if "ratio" in f else ""
    print(f"{name:10s} {what:24s} {v:10.1f} {unit}{ratio}")
EOF
    while read -r line; do row "$line"; done < $W/bench-$name.rows
  else
    row "$(printf '%-10s FAIL bench: %s' $name "$(grep -m1 -i error $LOG/bench-$name.log)")"; fail=1
  fi
}

phase_speed() {
  local M=$W/llama3-8b
  [ -f $M/config.json ] || $BIN/kilnc synth --like llama3-8b -o $M > $LOG/synth-8b.log 2>&1 || { row "FAIL synth 8b"; fail=1; return; }
  for n in 0 $SIZES; do
    local a=$W/art-8b-tp$n opt=""
    [ $n = 0 ] || opt="--tp $n"
    [ -f $a/model.kiln ] || $BIN/kilnc compile $M -o $a --sm $SM --max-batch 64 --max-seq-len 4096 $opt > $LOG/compile-8b-tp$n.log 2>&1 \
      || { row "$(printf 'FAIL compile 8b tp%s: %s' $n "$(grep -m1 error $LOG/compile-8b-tp$n.log)")"; fail=1; continue; }
    bench_one 8b-tp$n $a --batch 1,64 --prefill 2048 --new 64 --reps 2
    # the same with NCCL's all-reduce instead of the peer-to-peer kernel (TP_BENCH_NCCL=0 skips)
    [ $n != 0 ] && [ "${TP_BENCH_NCCL:-1}" = 1 ] &&
      KILN_ALLREDUCE=nccl bench_one 8b-tp$n-nccl $a --batch 1 --prefill 2048 --new 64 --reps 2
    rm -rf $a/shards   # disk: 16 GB per artifact
  done
}

# The 70B shape compiled at TP 8 into $A70, once per machine (speed70 and serve share it). The
# checkpoint goes to /dev/shm when it has GB70 of room, else to the disk, which must then hold
# it and the shards together; it is deleted once compiled. 1 (and a row saying why) on failure.
A70=$W/art-70b-tp8
GB70=150
art70() {
  [ -f $A70/model.kiln ] && return 0
  local t0 dir shm disk need
  t0=$(date +%s)
  shm=$(df --output=avail -BG /dev/shm 2>/dev/null | tail -1 | tr -dc 0-9)
  disk=$(df --output=avail -BG $W | tail -1 | tr -dc 0-9)
  if [ "${shm:-0}" -ge $GB70 ]; then dir=/dev/shm/kiln-tp need=$GB70; else dir=$W need=$((2 * GB70)); fi
  if [ "${disk:-0}" -lt $need ]; then
    row "FAIL 70b: room: its checkpoint and its TP 8 shards are 141 GB each; /dev/shm has ${shm:-0} GB free, the disk ${disk:-0} GB (needs $need)"
    fail=1; return 1
  fi
  mkdir -p $dir
  local M70=$dir/llama3-70b
  rm -rf $A70
  $BIN/kilnc synth --like llama3-70b -o $M70 --force > $LOG/synth-70b.log 2>&1 ||
    { row "FAIL synth 70b: $(tail -1 $LOG/synth-70b.log)"; rm -rf $M70; fail=1; return 1; }
  $BIN/kilnc compile $M70 -o $A70 --sm $SM --max-batch 128 --max-seq-len 2560 --tp 8 > $LOG/compile-70b.log 2>&1 ||
    { row "FAIL compile 70b tp8: $(grep -m1 error $LOG/compile-70b.log)"; rm -rf $M70 $A70; fail=1; return 1; }
  rm -rf $M70
  row "70b: synthesised in $dir and compiled at TP 8 in $(( $(date +%s) - t0 )) s"
}

phase_speed70() {
  [ "$NGPU" -ge 8 ] || { row "speed70: skip ($NGPU GPUs: the 70B shape runs at TP 8)"; return; }
  art70 || return
  bench_one 70b-tp8 $A70 --batch 1,64 --prefill 2048 --new 64 --reps 2
}

phase_nccl() {
  timeout 180 $PY tests/gpu/nccl_bw.py --gpus "$NGPU" > $LOG/nccl.out 2> $LOG/nccl.log || { row "FAIL nccl_bw: $(tail -1 $LOG/nccl.log)"; fail=1; return; }
  while read -r line; do row "nccl  $line"; done < $LOG/nccl.out
}

phase_servefix() {  # kiln serve of the llama fixture at the largest N: 64 streams through the scheduler
  local n=${SIZES##* } art port= pid err=$LOG/servefix.stderr
  [ -n "$n" ] || { row "servefix: skip (one GPU)"; return; }
  art=$ART/llama_tp$n
  [ -f $art/model.kiln ] || $BIN/kilnc compile tests/fixtures/llama -o $art --tp $n --sm $SM --max-batch 8 > $LOG/compile_servefix.log 2>&1 \
    || { row "servefix: FAIL compile: $(grep -m1 error $LOG/compile_servefix.log)"; fail=1; return; }
  $BIN/kiln serve $art --port 0 --model-name m > $LOG/servefix.stdout 2> $err &
  pid=$!
  for _ in $(seq 600); do
    port=$(grep -m1 -oE 'listening on http://[0-9.]+:[0-9]+' $err | grep -oE '[0-9]+$')
    [ -n "$port" ] && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$port" ] || { row "servefix: FAIL server did not start: $(grep -m1 -i error $err)"; fail=1; return; }
  for _ in $(seq 600); do   # 503 until the model is loaded
    [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$port/health)" = 200 ] && break
    sleep 0.1
  done
  timeout 300 $PY tests/gpu/loadgen.py http://127.0.0.1:$port concurrent --model m --vocab 512 --streams 64 \
    --prompt-min 4 --prompt-max 200 --out-min 8 --out-max 64 --check 8 --timeout 240 --json $W/servefix.json \
    > $LOG/servefix-loadgen.out 2> $LOG/servefix-loadgen.log || fail=1
  kill -TERM $pid; wait $pid || { row "servefix: FAIL kiln serve exited $? after SIGTERM"; fail=1; }
  $PY - $n $W/servefix.json <<'EOF' | while read -r line; do row "$line"; done
import json, sys
s = json.load(open(sys.argv[2]))
for r in s["runs"]:
    print(f"servefix tp{sys.argv[1]} (llama fixture, 64 streams): {r['completed']}/{r['requests']} ok, "
          f"lost {r['lost']}, errors {r['errors'] or 0}")
c = s["check"]
print(f"servefix tp{sys.argv[1]} greedy re-runs alone: {c['exact']}/{c['checked']} exact")
EOF
}

phase_serve() {
  local n=${SIZES##* }
  [ -n "$n" ] || { row "serve: skip (one GPU)"; return; }
  if [ "$n" = 8 ]; then
    art70 || return
    SERVE_ART=$A70 SERVE_SHAPE=70b SERVE_PHASES=c1000 SERVE_STREAMS=${TP_STREAMS:-256} \
      OUT=$W/serve bash tests/gpu/serve.sh > $LOG/serve.out 2>&1 || fail=1
  else
    SERVE_SHAPE=8b SERVE_PHASES=c1000 SERVE_STREAMS=${TP_STREAMS:-256} \
      SERVE_COMPILE="--max-batch 128 --max-seq-len 2560 --tp $n" OUT=$W/serve bash tests/gpu/serve.sh > $LOG/serve.out 2>&1 || fail=1
  fi
  while read -r line; do row "serve tp$n  $line"; done < $W/serve/serve-summary.txt
}

for p in $PHASES; do
  t0=$(date +%s)
  phase_$p
  row "== phase $p: $(( $(date +%s) - t0 )) s"
  save_logs
done
echo
echo "== summary ($CARD)"
cat $SUMMARY
[ $fail = 0 ] && echo "== ALL PASSED" || echo "== FAILURES (logs in $OUT/tp-logs.tgz)"
exit $fail
