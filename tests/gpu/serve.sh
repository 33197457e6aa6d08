#!/bin/bash
# tests/gpu/serve.sh — `kiln serve` under load on the GPU machine (issue 10's targets), one call.
#
#   SERVE_SHAPE=1b|8b  SERVE_PHASES="sweep c1000 c64 ttft soak det"  tests/gpu/serve.sh
#
# Synthesises a random-weight checkpoint of the shape (kilnc synth --like llama3.2-1b or llama3-8b,
# never shipped), compiles it (--max-batch 128 --max-seq-len 2560, kept in /tmp/kiln-serve between
# calls on a warm machine), then runs each phase with its own `kiln serve` (started, then stopped by
# SIGTERM, which must exit 0) and tests/gpu/loadgen.py:
#   sweep  Poisson request-rate sweep (SWEEP_RATES req/s, SWEEP_SECONDS each), prompts 32..2048
#          token ids, outputs 16..512 (ignore_eos: exact)
#   c1000  1,000 concurrent streams, the same mix: target all complete, 0 lost, 0 errors; 32
#          of them re-run alone afterwards (greedy token ids compared)
#   c64    64 concurrent streams (prompts 128..512, 256 tokens each), then, with the server
#          stopped, `kiln run` on the same 64 prompts in one batch: the server's decode tok/s over
#          kiln run's, both measured kiln run's way (tokens after each first token, from the
#          earliest first token to the last token; target >= 0.9)
#   ttft   20 requests one at a time (512-token prompts, 16 tokens): TTFT p50 over kiln run's
#          prefill time for the first of those prompts (median of 3; target <= 1.5)
#   soak   64 streams for SOAK_SECONDS (300) with the server's RSS sampled every 10 s: target the
#          RSS at the end is within 16 MiB of the RSS at the half-way mark (warm-up excluded)
#   det    batch invariance (issue 10 item 5): the model compiled with --batch-invariant, 128
#          requests (prompts 16..1024, outputs 16..128) with 64 in flight, so requests join and
#          leave while others decode and prompts are chunked beside decodes; then 64 of them re-run
#          alone: target every token id identical, greedy and seeded sampling (--sample). The same
#          on the default build as a control (its mismatches are reported, not a failure: they
#          show the check can fail)
# Each phase fits one 10-minute call (c1000 on 8b: run it alone). Output, written as each phase ends:
# $OUT/serve-SHAPE-PHASE.json (loadgen's summary), $OUT/serve-summary.txt (the table, also printed
# last), $OUT/serve-logs.tgz (server and kiln run logs). Exit status 1 if a phase failed or missed
# its target.
#
# Other settings: SERVE_COMPILE="--max-batch 128 --max-seq-len 2560" (kilnc compile's limits; the
# artifact is rebuilt when they change), SERVE_ART (an artifact compiled elsewhere, served as it is:
# tp.sh's 70B shape at TP 8, SERVE_SHAPE=70b naming it; every phase but det), KILN_SM (kilnc compile --sm, default 90a, as run.sh), SWEEP_RATES, SWEEP_SECONDS, SOAK_SECONDS, SERVE_STREAMS
# (the c1000 phase's streams, 1000).
# A dry run of this script without a GPU: SERVE_MODEL=examples/tinyfortune SERVE_SMALL=1 serves that
# folder (kiln's CPU backend for a checkpoint) instead of a synthesised model, with every size
# cut to fit the CPU (8 streams, short prompts and outputs, 30-second soak); its ratios mean nothing.
set -u
cd "$(dirname "$0")/../.."
BIN=${KILN_BIN:-out/bin}   # the binaries (built on the build machine, carried as out/bin)
SHAPE=${SERVE_SHAPE:-1b}
PHASES=${SERVE_PHASES:-sweep c1000 c64 ttft soak det}
COMPILE=${SERVE_COMPILE:---max-batch 128 --max-seq-len 2560}
W=/tmp/kiln-serve
LOG=$W/logs
OUT=${OUT:-$W/out}
rm -rf $LOG
mkdir -p $W $LOG "$OUT"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"   # the server holds a socket per stream
SUMMARY=$W/summary-$SHAPE.txt
: > $SUMMARY
fail=0
PY=${PYTHON:-python3}
row() { echo "$1" | tee -a $SUMMARY; cp $SUMMARY "$OUT/serve-summary.txt"; }
save_logs() { tar czf "$OUT/serve-logs.tgz" -C $W logs 2>/dev/null; }

# sizes: (streams, prompt lengths, output lengths) per phase
if [ "${SERVE_SMALL:-0}" = 1 ]; then
  C1000=16 C64=8 PMIN=4 PMAX=48 OMIN=2 OMAX=8 C64_PMIN=8 C64_PMAX=24 C64_OUT=8 TTFT_LEN=32 TTFT_OUT=4
  SOAK_STREAMS=4 SOAK_PMAX=24 SOAK_OMAX=8 SOAK_S=${SOAK_SECONDS:-30} RATES=${SWEEP_RATES:-1,4} SWEEP_S=${SWEEP_SECONDS:-4} CHECK=4
  DET_PMIN=4 DET_PMAX=40 DET_OMIN=2 DET_OMAX=8
else
  C1000=${SERVE_STREAMS:-1000} C64=64 PMIN=32 PMAX=2048 OMIN=16 OMAX=512 C64_PMIN=128 C64_PMAX=512 C64_OUT=256 TTFT_LEN=512
  TTFT_OUT=16 SOAK_STREAMS=64 SOAK_PMAX=512 SOAK_OMAX=256 SOAK_S=${SOAK_SECONDS:-300} RATES=${SWEEP_RATES:-1,4,16,48}
  SWEEP_S=${SWEEP_SECONDS:-30} CHECK=32 DET_PMIN=16 DET_PMAX=1024 DET_OMIN=16 DET_OMAX=128
fi

# ---- the model: synthesised and compiled once per machine (or SERVE_MODEL); the det phase also
# needs it compiled with --batch-invariant ($ART-bi)
compile_art() {    # $1: artifact folder, $2: kilnc compile flags
  [ -f $1/model.kiln ] && [ "$(cat $1/serve-compile-flags 2>/dev/null)" = "$2" ] && return 0
  local t0=$(date +%s)
  rm -rf $1
  if [ ! -f $W/hf-$SHAPE/config.json ]; then
    $BIN/kilnc synth --like $([ $SHAPE = 8b ] && echo llama3-8b || echo llama3.2-1b) -o $W/hf-$SHAPE --force > $LOG/synth-$SHAPE.log 2>&1 ||
      { row "synth $SHAPE: FAIL ($(tail -1 $LOG/synth-$SHAPE.log))"; return 1; }
  fi
  $BIN/kilnc compile $W/hf-$SHAPE -o $1 --sm ${KILN_SM:-90a} $2 > $LOG/compile-$(basename $1).log 2>&1 ||
    { row "compile $(basename $1): FAIL ($(grep -m1 error $LOG/compile-$(basename $1).log))"; return 1; }
  echo "$2" > $1/serve-compile-flags
  row "$SHAPE: synthesised and compiled ($2) in $(( $(date +%s) - t0 )) s"
}
if [ -n "${SERVE_MODEL:-}" ]; then
  ART=$SERVE_MODEL
  ART_BI=$ART   # a checkpoint folder runs on the CPU backend, which is batch-invariant
  SHAPE=$(basename "$ART")
elif [ -n "${SERVE_ART:-}" ]; then
  ART=$SERVE_ART
  [ -f "$ART/model.kiln" ] || { row "SERVE_ART=$ART: no model.kiln there (a kilnc compile output)"; exit 1; }
  case " $PHASES " in *" det "*)
    row "SERVE_ART: the det phase needs a --batch-invariant build of the model too; run it without SERVE_ART"; exit 1 ;;
  esac
else
  ART=$W/art-$SHAPE
  ART_BI=$ART-bi
  compile_art $ART "$COMPILE" || { save_logs; exit 1; }
  case " $PHASES " in *" det "*) compile_art $ART_BI "$COMPILE --batch-invariant" || { save_logs; exit 1; } ;; esac
  rm -rf $W/hf-$SHAPE
fi
VOCAB=128256   # the Llama-3 shapes'; a SERVE_MODEL's from its config.json
[ -n "${SERVE_MODEL:-}" ] && VOCAB=$($PY -c "import json, sys; print(json.load(open(sys.argv[1]))['vocab_size'])" \
  "$SERVE_MODEL/config.json")
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
CARD=${CARD:-no GPU}
row "card: $CARD; model $SHAPE; commit $($BIN/kiln --version 2>/dev/null | sed -n "s/.*commit \([^)]*\)).*/\1/p"); phases: $PHASES"

# ---- one server per phase
PID=
PORT=
start_server() {   # $1: phase name, $2: the artifact (default $ART)
  local err=$LOG/serve-$SHAPE-$1.stderr
  $BIN/kiln serve ${2:-$ART} --port 0 --model-name m > $LOG/serve-$SHAPE-$1.stdout 2> $err &
  PID=$!
  PORT=
  for _ in $(seq 600); do
    PORT=$(grep -m1 -oE 'listening on http://[0-9.]+:[0-9]+' $err | grep -oE '[0-9]+$')
    [ -n "$PORT" ] && break
    kill -0 $PID 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$PORT" ] || { row "$1: FAIL server did not start: $(grep -m1 -i error $err)"; return 1; }
  for _ in $(seq 1200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$PORT/health)" = 200 ] && return 0
    kill -0 $PID 2>/dev/null || break
    sleep 0.1
  done
  row "$1: FAIL /health never 200: $(grep -m1 -i error $err)"
  return 1
}
stop_server() {    # $1: phase name; SIGTERM must give exit 0 (within the 30 s grace and a margin)
  kill -TERM $PID 2>/dev/null
  for _ in $(seq 600); do kill -0 $PID 2>/dev/null || break; sleep 0.1; done
  kill -0 $PID 2>/dev/null && { row "$1: FAIL kiln serve still running 60 s after SIGTERM"; kill -KILL $PID; }
  wait $PID
  local rc=$?
  [ $rc = 0 ] || { row "$1: FAIL kiln serve exited $rc after SIGTERM"; fail=1; }
  curl -s http://127.0.0.1:$PORT/metrics > /dev/null 2>&1 && { row "$1: FAIL server still answering"; fail=1; }
  PID=
}
loadgen() {        # $1: phase; the rest: loadgen arguments. Limited to 9 minutes (a request to 7, so that
  local p=$1; shift  # a stuck one is counted as an error in the summary, not lost with the process)
  timeout 540 $PY tests/gpu/loadgen.py http://127.0.0.1:$PORT "$@" --model m --vocab $VOCAB --timeout 420 \
    --json "$OUT/serve-$SHAPE-$p.json" > $LOG/loadgen-$SHAPE-$p.out 2> $LOG/loadgen-$SHAPE-$p.log
}
# kiln run's numbers from its last line: prefill ms and decode tok/s
run_stat() {
  grep -oE "$1" "$2" | tail -1 | grep -oE '[0-9.]+' | tail -1
}
# a phase's summary line from its JSON: python prints "key=value ..." for the table
digest() {
  $PY - "$OUT/serve-$SHAPE-$1.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
for r in s["runs"]:
    print(f"  {r['run']:<26} {r['completed']}/{r['requests']} ok, lost {r['lost']}, errors {r['errors'] or 0}, "
          f"{r['output_tok_s']} tok/s out, decode {r['decode_tok_s']} (steady {r['steady_decode_tok_s']}), "
          f"TTFT p50/p99 {r['ttft_ms']['p50']}/{r['ttft_ms']['p99']} ms, ITL p50/p99 {r['itl_ms']['p50']}/{r['itl_ms']['p99']} ms")
c = s["check"]
if c.get("checked"):
    print(f"  alone re-run: {c['exact']}/{c['checked']} exact"
          + "".join(f"; mismatch at token {m.get('first_diff', m.get('error'))} (prompt {m['prompt_len']})"
                    for m in c["mismatches"][:5]))
PY
}

for phase in $PHASES; do
  t0=$(date +%s)
  case $phase in
  sweep)
    start_server $phase || { fail=1; continue; }
    loadgen $phase sweep --rates $RATES --duration $SWEEP_S --prompt-min $PMIN --prompt-max $PMAX \
      --out-min $OMIN --out-max $OMAX || fail=1
    stop_server $phase
    row "sweep ($SHAPE, $(( $(date +%s) - t0 )) s):"; row "$(digest $phase)" ;;
  c1000)
    start_server $phase || { fail=1; continue; }
    loadgen $phase concurrent --streams $C1000 --check $CHECK --prompt-min $PMIN --prompt-max $PMAX \
      --out-min $OMIN --out-max $OMAX || fail=1
    stop_server $phase
    row "c1000 ($SHAPE, $C1000 streams, $(( $(date +%s) - t0 )) s): target all complete, 0 lost, 0 errors"
    row "$(digest $phase)" ;;
  c64)
    start_server $phase || { fail=1; continue; }
    loadgen $phase concurrent --streams $C64 --prompt-min $C64_PMIN --prompt-max $C64_PMAX --out-min $C64_OUT \
      --out-max $C64_OUT --check 8 --prompts-out $W/c64.prompts || fail=1
    stop_server $phase
    args=()
    while read -r ids; do args+=(--ids "$ids"); done < $W/c64.prompts
    $BIN/kiln run $ART "${args[@]}" --max-new $C64_OUT --ignore-eos > $LOG/run-$SHAPE-c64.out 2> $LOG/run-$SHAPE-c64.log || fail=1
    run_tps=$(run_stat 'decode [0-9]+ tokens [0-9.]+ ms \([0-9.]+ tok/s\)' $LOG/run-$SHAPE-c64.log)
    srv_tps=$($PY -c "import json; print(json.load(open('$OUT/serve-$SHAPE-$phase.json'))['runs'][0]['decode_tok_s'])")
    ratio=$($PY -c "print(f'{$srv_tps / $run_tps:.3f}')" 2>/dev/null || echo "?")
    ok=$($PY -c "print('ok' if $ratio >= 0.9 else 'MISS')" 2>/dev/null || echo FAIL)
    [ $ok = ok ] || fail=1
    row "c64 ($SHAPE, $C64 streams, $(( $(date +%s) - t0 )) s): server decode $srv_tps tok/s / kiln run $run_tps tok/s = $ratio (target >= 0.9): $ok"
    row "$(digest $phase)" ;;
  ttft)
    start_server $phase || { fail=1; continue; }
    loadgen $phase ttft --requests 20 --prompt-min $TTFT_LEN --prompt-max $TTFT_LEN --out-min $TTFT_OUT \
      --out-max $TTFT_OUT \
      --prompts-out $W/ttft.prompts || fail=1
    stop_server $phase
    first=$(head -1 $W/ttft.prompts)
    pre=()
    for i in 1 2 3; do
      $BIN/kiln run $ART --ids "$first" --max-new $TTFT_OUT --ignore-eos > /dev/null 2> $LOG/run-$SHAPE-ttft-$i.log || fail=1
      pre+=("$(run_stat 'prefill [0-9]+ tokens [0-9.]+ ms' $LOG/run-$SHAPE-ttft-$i.log)")
    done
    pre_ms=$(printf '%s\n' "${pre[@]}" | sort -g | sed -n 2p)
    ttft=$($PY -c "import json; print(json.load(open('$OUT/serve-$SHAPE-$phase.json'))['runs'][0]['ttft_ms']['p50'])")
    ratio=$($PY -c "print(f'{$ttft / $pre_ms:.2f}')" 2>/dev/null || echo "?")
    ok=$($PY -c "print('ok' if $ratio <= 1.5 else 'MISS')" 2>/dev/null || echo FAIL)
    [ $ok = ok ] || fail=1
    row "ttft ($SHAPE): server TTFT p50 $ttft ms / kiln run prefill $pre_ms ms ($TTFT_LEN tokens; runs: ${pre[*]}) = $ratio (target <= 1.5): $ok"
    row "$(digest $phase)" ;;
  soak)
    start_server $phase || { fail=1; continue; }
    loadgen $phase soak --streams $SOAK_STREAMS --seconds $SOAK_S --pid $PID --prompt-min $PMIN \
      --prompt-max $SOAK_PMAX --out-min $OMIN --out-max $SOAK_OMAX || fail=1
    stop_server $phase
    verdict=$($PY - "$OUT/serve-$SHAPE-$phase.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["runs"][0]["rss"]
pts = r["samples_s_kib"]
end = pts[-1][0]
mid = min(pts, key=lambda p: abs(p[0] - end / 2))
grow = (pts[-1][1] - mid[1]) / 1024
print(f"RSS {r['rss_first_mib']} -> {mid[1] / 1024:.1f} (t={mid[0]:.0f} s) -> {r['rss_last_mib']} MiB, "
      f"second half {grow:+.1f} MiB, slope {r['second_half_slope_mib_per_min']} MiB/min: "
      + ("ok" if grow <= 16 else "MISS"))
PY
)
    case "$verdict" in *ok) ;; *) fail=1 ;; esac
    row "soak ($SHAPE, $(( $(date +%s) - t0 )) s): $verdict"; row "$(digest $phase)" ;;
  det)   # batch invariance: the --batch-invariant build, then the default build as the control
    for build in bi default; do
      art=$ART; [ $build = bi ] && art=$ART_BI
      for mode in greedy sample; do
        p=det-$build-$mode
        start_server $p $art || { fail=1; continue; }
        loadgen $p concurrent --streams 64 --requests 128 --check 64 $([ $mode = sample ] && echo --sample) \
          --prompt-min $DET_PMIN --prompt-max $DET_PMAX --out-min $DET_OMIN --out-max $DET_OMAX
        rc=$?
        stop_server $p
        verdict=$($PY -c "import json; c = json.load(open('$OUT/serve-$SHAPE-$p.json'))['check']; print(f\"{c['exact']}/{c['checked']}\")" 2>/dev/null || echo "?")
        if [ $build = bi ]; then
          ok=FAIL; [ $rc = 0 ] && [ "${verdict%/*}" = "${verdict#*/}" ] && ok=ok
          [ $ok = ok ] || fail=1
          row "det ($SHAPE, --batch-invariant, $mode): 128 requests, 64 in flight, 64 re-run alone: $verdict bit-identical token ids (target all): $ok"
        else
          row "det ($SHAPE, default build, $mode; the control, no target): $verdict identical when re-run alone"
        fi
        row "$(digest $p)"
      done
    done ;;
  *) row "unknown phase '$phase' (phases: sweep c1000 c64 ttft soak det)"; fail=1 ;;
  esac
  save_logs
done

echo
echo "== kiln serve summary ($CARD, $SHAPE)"
cat $SUMMARY
[ $fail = 0 ] && echo "== serve: ALL PASSED" || echo "== serve: FAILURES (logs: serve-logs.tgz)"
exit $fail
