#!/bin/bash
# tests/gpu/fuzz.sh — issue 9's fuzz campaign on a machine of its own: every libFuzzer target at
# once, its workers spread over the cores by how slow it is, for SECONDS; summary table last.
#
#   tests/gpu/fuzz.sh [DIST_DIR] [SECONDS]     (defaults: out/fuzz/dist, 450; paths from the repo root)
#
# DIST_DIR holds the targets as `make fuzz-dist` builds them on the build machine: clang's libFuzzer
# with ASan+UBSan linked in, nothing dynamic but glibc, libstdc++/libgcc and CUDA's NVRTC and
# cuBLASLt, so they run on the GPU machine, which has no clang. They find their fixtures
# (tests/fixtures/, archspecs/) from the folder they run in: this script runs them from the root.
#
# Each target runs W libFuzzer processes ("workers", each its own random seed) for SECONDS, on the
# committed corpus tests/fuzz/corpus/NAME, the reproducers tests/fuzz/crashes/NAME and the dictionary
# tests/fuzz/NAME.dict, with -timeout=10 -rss_limit_mb=2048 (a hang or a blow-up is a finding, as in
# `make fuzz`). A target's workers write new inputs into one scratch folder, $FUZZ_SCRATCH/NAME/corpus
# (never the committed corpus), which each rereads every few seconds (libFuzzer's -reload), so they
# share what they find. A worker stops at its first finding; the others go on.
#
# Output: $OUT/fuzz_summary.txt (without $OUT, $FUZZ_SCRATCH/fuzz_summary.txt), also printed: per target
# its workers, executions (the sum over its workers of each log's final stat::number_of_executed_units,
# or of its last "#N" status line when a worker was killed), exec/s, and findings; $OUT/fuzz-logs.tgz,
# every worker's log; findings (crash-, timeout-, oom-, leak- inputs) in $OUT/fuzz-crashes/NAME/.
# Exit status 1 on a finding or a worker that did not run to its end.
#
# Environment: FUZZ_CORES (cores to use; default all but 2, left to a GPU test run beside this one),
# FUZZ_TARGETS (a subset), FUZZ_NICE (default 5: a GPU test run that shares a worker's core gets 3
# times its CPU; a worker slowed past -timeout that way is told apart from a hang: see below),
# FUZZ_TIMEOUT and FUZZ_RSS_MB (as in the Makefile; 10 s, 2048 MB), FUZZ_SCRATCH (default
# /tmp/kiln-fuzz; its logs and findings are cleared first, its corpora kept, so a second call on the
# same machine goes on from what the first found), KILN_COMMIT (the tree's commit, when the copy
# has no .git). It finishes within SECONDS + 60 s: libFuzzer's -max_total_time stops each worker
# after SECONDS (plus at most one 10 s input); `timeout` kills a worker still there 20 s later.
#
# clang 14's ASan can fail at start, printing "AddressSanitizer:DEADLYSIGNAL" forever, on kernels with
# vm.mmap_rnd_bits=32 (Ubuntu 24.04's default); workers run without address randomization
# (setarch -R) where the system allows it, which avoids that and changes nothing else.
set -u
cd "$(dirname "$0")/../.."
DIST=${1:-out/fuzz/dist}
SECS=${2:-450}
SCR=${FUZZ_SCRATCH:-/tmp/kiln-fuzz}
NICE=${FUZZ_NICE:-5}
NCPU=$(nproc)
CORES=${FUZZ_CORES:-$((NCPU > 3 ? NCPU - 2 : 1))}
TIMEOUT=${FUZZ_TIMEOUT:-10}
RSS_MB=${FUZZ_RSS_MB:-2048}
case "$SECS$TIMEOUT$RSS_MB" in ''|*[!0-9]*) echo "fuzz.sh: SECONDS, FUZZ_TIMEOUT and FUZZ_RSS_MB must be whole numbers, got '$SECS', '$TIMEOUT', '$RSS_MB'" >&2; exit 2;; esac
case "$CORES" in ''|*[!0-9]*|0) echo "fuzz.sh: FUZZ_CORES must be a positive whole number, got '$CORES'" >&2; exit 2;; esac

# The plan. A target's cost is the core-seconds it needs per execution, 1 / RATE, where RATE is the
# executions per CPU-second one process made on the build machine (2.1 GHz Xeon; measured with
# /usr/bin/time on 2026-11-29, less the time to load the corpus): tokenizer 414 on the corpus its
# 8-minute final round grew and 419 from the seeds; config 2,970 from the seeds, falling to about
# 200 once the corpus holds thousand-layer configs (1-2 s each), so 350 over a campaign; archspec
# 799, tokenizer_load 1,186, artifact 1,072, safetensors 6,395 on their grown corpora;
# chat_template 3,945 from the seeds, but 2,405 to 3,202 wall-clock in its owners' longer
# campaigns, so 2,000 to be safe. Cores go in proportion to cost, at least one per target, the
# rest by largest remainder (with fewer cores than targets, one worker each all the same).
# 1 million executions of every target costs about 9,000 core-seconds at these rates:
#   14 cores: tokenizer 4, config 4, archspec 2, the others 1; in 470 s, 500 to 940 thousand for
#             all but safetensors: short of 1 million unless the cores are 1.3 to 2 times as
#             fast as the build machine's;
#   30 cores (a 2-GPU machine): tokenizer 8, config 9, archspec 4, artifact 3, tokenizer_load 3,
#             chat_template 2, safetensors 1; in 420 s, 1.32 to 2.7 million each.
# "est." in the summary is workers x RATE x SECONDS, to compare with what was run.
RATES="tokenizer 415
config 350
archspec 800
chat_template 2000
artifact 1070
tokenizer_load 1190
safetensors 6400"
# every target in DIST_DIR; one missing from RATES counts as 1,000 exec/s
TARGETS=${FUZZ_TARGETS:-$(ls "$DIST" 2> /dev/null | sed -n 's/^fuzz_//p')}
[ -n "$TARGETS" ] || { echo "fuzz.sh: no fuzz_* binary in $DIST (make fuzz-dist builds them)" >&2; exit 2; }
PLAN=$(echo "$RATES" | awk -v cores="$CORES" -v want="$TARGETS" '
  BEGIN { n = split(want, t, " "); for (i = 1; i <= n; i++) pick[t[i]] = i }
  ($1 in pick) { rate[$1] = $2 }
  END {
    for (i = 1; i <= n; i++) { if (!(t[i] in rate)) rate[t[i]] = 1000; sum += 1 / rate[t[i]] }
    left = cores
    for (i = 1; i <= n; i++) {
      share[i] = cores / rate[t[i]] / sum; w[i] = int(share[i]); if (w[i] < 1) w[i] = 1; left -= w[i]
    }
    for (; left > 0; left--) {
      best = 1
      for (i = 2; i <= n; i++) if (share[i] - w[i] > share[best] - w[best]) best = i
      w[best]++
    }
    for (; left < 0; left++) {  # the minimum of one took cores from the others: give back
      best = 0
      for (i = 1; i <= n; i++) if (w[i] > 1 && (!best || share[i] - w[i] < share[best] - w[best])) best = i
      if (!best) break          # fewer cores than targets: one worker each all the same
      w[best]--
    }
    for (i = 1; i <= n; i++) printf "%s %d %d\n", t[i], w[i], rate[t[i]]
  }')

for t in $TARGETS; do
  [ -x "$DIST/fuzz_$t" ] || { echo "fuzz.sh: $DIST/fuzz_$t: no such binary (make fuzz-dist builds them)" >&2; exit 2; }
  [ -d "tests/fuzz/corpus/$t" ] || { echo "fuzz.sh: tests/fuzz/corpus/$t: no seed corpus" >&2; exit 2; }
done

rm -rf "$SCR/logs" "$SCR"/*/crashes
mkdir -p "$SCR/logs"
RES=${OUT:-$SCR}
SUMMARY=$RES/fuzz_summary.txt
SETARCH=
setarch "$(uname -m)" -R true 2> /dev/null && SETARCH="setarch $(uname -m) -R"
export ASAN_OPTIONS=${ASAN_OPTIONS:-allow_addr2line=1}   # names in stack traces without llvm-symbolizer
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-allow_addr2line=1:print_stacktrace=1}
START=$(date -u +%s)

# ---- run: every worker of every target at once ----
crashdir() { if [ -n "${OUT:-}" ]; then echo "$OUT/fuzz-crashes/$1"; else echo "$SCR/$1/crashes"; fi; }
while read -r t w rate; do
  mkdir -p "$SCR/$t/corpus" "$(crashdir $t)"
  extra=()
  [ -d "tests/fuzz/crashes/$t" ] && extra+=("tests/fuzz/crashes/$t")
  [ -f "tests/fuzz/$t.dict" ] && extra+=("-dict=tests/fuzz/$t.dict")
  for i in $(seq 1 "$w"); do
    ( nice -n "$NICE" timeout -k 5 $((SECS + 20)) $SETARCH "$DIST/fuzz_$t" \
        "$SCR/$t/corpus" "tests/fuzz/corpus/$t" "${extra[@]}" \
        -max_total_time="$SECS" -timeout=$TIMEOUT -rss_limit_mb=$RSS_MB -print_final_stats=1 \
        -artifact_prefix="$(crashdir $t)/" > "$SCR/logs/${t}_$i.log" 2>&1
      echo $? > "$SCR/logs/${t}_$i.rc" ) 2> /dev/null &  # (bash's "Killed" line)
  done
done <<< "$PLAN"
echo "fuzz.sh: $(echo "$PLAN" | awk '{s += $2} END {print s}') workers for $SECS s from $(date -u +%H:%M:%S) UTC" \
     "(plan: $(echo "$PLAN" | awk '{printf "%s%s %s", (NR > 1 ? ", " : ""), $1, $2}'))"
wait

# ---- timeouts: a hang, or slow on a busy machine? ----
# libFuzzer's -timeout counts wall-clock time, which a busy machine stretches (a 10,000-layer
# config takes 2 s alone under ASan). The first two timeout inputs are run again alone: one that
# finishes within half the timeout is listed as slow under load, not counted as a finding (its
# worker's exit 70 neither). Each rerun is bounded, so the script ends within SECONDS + 60 s.
declare -A slow
reruns=0
for t in $TARGETS; do
  for f in $(ls "$(crashdir $t)" 2> /dev/null | grep '^timeout-'); do
    [ $reruns -lt 2 ] || break 2
    reruns=$((reruns + 1))
    t0=$(date +%s%N)
    timeout -k 1 $((TIMEOUT + 2)) $SETARCH "$DIST/fuzz_$t" -timeout=$TIMEOUT "$(crashdir $t)/$f" \
      > "$SCR/logs/rerun_$f.log" 2>&1
    rc=$?
    ms=$((($(date +%s%N) - t0) / 1000000))
    [ $rc = 0 ] && [ $ms -lt $((TIMEOUT * 500)) ] && slow[$t]="${slow[$t]:-}$f ($ms ms alone) "
  done
done

# ---- summary ----
# A worker's executions: its final stats (printed at the end, at a finding, and on SIGTERM), else
# the count of its last status line "#N ..." (a worker killed by SIGKILL), else 0.
execs() { awk '/^stat::number_of_executed_units:/ {f = $2}
               /^#[0-9]+\t/ {s = substr($1, 2)}
               END {print f != "" ? f : (s != "" ? s : 0)}' "$1"; }
worker_secs() { awk '/^Done [0-9]+ runs in [0-9]+ second/ {d = $5} END {print d + 0}' "$1"; }
commas() { echo "$1" | sed -e :a -e 's/\([0-9]\)\([0-9]\{3\}\)\($\|,\)/\1,\2\3/; ta'; }
ELAPSED=$(($(date -u +%s) - START))
tree=${KILN_COMMIT:-$(git rev-parse --short HEAD 2> /dev/null || echo "? (no git here)")}
built=$(cat "$DIST/COMMIT" 2> /dev/null || echo "? (no $DIST/COMMIT)")
fail=0
reached=0
ntargets=0
{
  echo "== kiln fuzz campaign, $(date -u '+%Y-%m-%d %H:%M') UTC: binaries built from $built (tree here: $tree)"
  echo "   $(uname -n): $NCPU CPUs, $CORES for fuzzing (nice $NICE), $SECS s per worker, $ELAPSED s in all;" \
       "ASan+UBSan, -timeout=$TIMEOUT -rss_limit_mb=$RSS_MB; address randomization" \
       "$([ -n "$SETARCH" ] && echo off || echo "on (setarch -R refused; vm.mmap_rnd_bits=$(cat /proc/sys/vm/mmap_rnd_bits 2> /dev/null))")"
  printf '%-15s %7s %12s %8s %11s %12s %9s %8s  %s\n' target workers executions exec/s "per worker" "est." "new units" "peak MB" findings
} > "$SUMMARY"
while read -r t w rate; do
  total=0; secs=0; rss=0; notes=
  for i in $(seq 1 "$w"); do
    log=$SCR/logs/${t}_$i.log
    n=$(execs "$log"); total=$((total + n))
    s=$(worker_secs "$log"); [ "$s" -gt "$secs" ] && secs=$s
    r=$(awk '/^stat::peak_rss_mb:/ {print $2}' "$log"); [ -n "$r" ] && [ "$r" -gt "$rss" ] && rss=$r
    rc=$(cat "$SCR/logs/${t}_$i.rc" 2> /dev/null || echo "?")
    [ "$rc" = 0 ] && continue
    [ "$rc" = 70 ] && [ -n "${slow[$t]:-}" ] && continue  # libFuzzer's timeout exit, explained above
    fail=1
    case $rc in
      137|124) why="killed $((SECS + 20)) s in (counted to its last status line)";;
      *) why=$(grep -m1 -E 'ERROR: |runtime error:|contract broken|fuzz_[a-z_]+: ' "$log" | cut -c1-160);;
    esac
    case "$notes" in *"$why"*) notes="$notes; worker $i exit $rc";;
                     *) notes="$notes; worker $i exit $rc${why:+: $why}";; esac
  done
  [ "$secs" -gt 0 ] || secs=$SECS
  found=
  for f in $(ls "$(crashdir $t)" 2> /dev/null | grep -E '^(crash|timeout|oom|leak)-'); do
    case " ${slow[$t]:-}" in *" $f ("*) ;; *) found="$found$f ";; esac
  done
  [ -n "$found" ] && fail=1
  rmdir "$(crashdir $t)" 2> /dev/null  # nothing to bring back when there was no finding
  ntargets=$((ntargets + 1))
  [ "$total" -ge 1000000 ] && reached=$((reached + 1))
  printf '%-15s %7d %12s %8s %11s %12s %9d %8d  %s\n' "$t" "$w" "$(commas $total)" \
    "$(commas $((total / secs)))" "$(commas $((total / secs / w)))" \
    "$(commas $((w * rate * SECS)))" "$(ls "$SCR/$t/corpus" | wc -l)" "$rss" \
    "$(echo $found | wc -w)${found:+ (${found% })}${slow[$t]:+; slow under load, not a hang: ${slow[$t]% }}$notes" >> "$SUMMARY"
done <<< "$PLAN"
{
  echo "exec/s: executions / the longest worker's run time; est.: workers x the plan's exec/s per core x $SECS s"
  echo "issue 9's bar (1,000,000 executions per target): $reached of $ntargets targets;" \
       "$([ $fail = 0 ] && echo "no finding" || echo "FINDINGS or failed workers (logs: fuzz-logs.tgz)")"
} >> "$SUMMARY"
[ -n "${OUT:-}" ] && tar czf "$OUT/fuzz-logs.tgz" -C "$SCR" logs && rmdir "$OUT/fuzz-crashes" 2> /dev/null
cat "$SUMMARY"
exit $fail
