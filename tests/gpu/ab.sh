#!/bin/bash
# tests/gpu/ab.sh — compile-time variants of one synthesised shape benched side by side, in one
# run on the GPU machine: the measurement behind a performance step's "predicted / measured" line
# in tests/gpu/RESULTS.md (issue 12). Not a test: it prints numbers.
#
#   cp -r archspecs templates kernels /tmp/try/   # then change /tmp/try/templates/...
#   AB_VARIANTS="base: try:KILN_ARCHSPECS=/tmp/try/archspecs fp8::--quant,fp8" tests/gpu/ab.sh
#
# Each variant is NAME:ASSIGNMENTS[:OPTIONS[:RUNENV]], the assignments (VAR=VALUE, comma-separated,
# no spaces; none: "NAME:") being the environment of its `kilnc compile` (KILN_ARCHSPECS pointing at
# a copy of the tree whose templates the caller changed: kilnc takes templates/ and kernels/ beside
# it; KILNC=PATH, another kilnc binary: a lowering rule of compiler/ changed), OPTIONS
# (comma-separated) more kilnc compile options, and RUNENV (the same form) the environment of its
# `kiln bench` (a runtime switch such as KILN_PDL=0 or KILN_ABLATE=rms_norm; KILN=PATH, another
# kiln binary). Each variant
# is compiled from the same checkpoint (kilnc synth --like, shared with bench.sh's
# /tmp/kiln-bench/hf-SHAPE), benched AB_ROUNDS times with `kiln bench --batch AB_BATCH --prefill
# AB_PREFILL`, and deleted (an 8B artifact is 15 GiB: the disk holds the checkpoint and two; AB_KEEP=NAME
# keeps that variant's, at /tmp/kiln-bench/ab-SHAPE-NAME) unless the next variant compiles the same
# way (ASSIGNMENTS and OPTIONS equal), which then benches it as it is. The table gives, per variant and figure,
# the best round's tok/s (decode, prefill) or ms (first token) and its ratio to the roofline kiln
# bench measured in that process, and the SM clock nvidia-smi saw while the rounds drew over 350 W.
#
# Settings: AB_SHAPE (8b; or 1b), AB_VARIANTS (required), AB_BATCH (1,8,64), AB_PREFILL (2048),
# AB_ROUNDS (2), AB_COMPILE (kilnc compile options, "--max-batch 64 --max-seq-len 2560"), AB_ARGS
# (more kiln bench options). Output: $OUT/ab-summary.md (the table) and $OUT/ab-logs.tgz.
set -u
cd "$(dirname "$0")/../.." || exit 1
BIN=${KILN_BIN:-out/bin}
SHAPE=${AB_SHAPE:-8b}
COMPILE=${AB_COMPILE:---max-batch 64 --max-seq-len 2560}
PY=${PYTHON:-python3}
W=/tmp/kiln-bench
LOG=$W/ab-logs
OUT=${OUT:-$W/out}
[ -n "${AB_VARIANTS:-}" ] || { echo "ab.sh: AB_VARIANTS is empty (NAME:VAR=V,... per variant)"; exit 2; }
case $SHAPE in
  8b) LIKE=llama3-8b ;;
  1b) LIKE=llama3.2-1b ;;
  *) echo "ab.sh: unknown AB_SHAPE '$SHAPE' (expected 8b or 1b)"; exit 2 ;;
esac
# NAME:ASSIGNMENTS[:OPTIONS[:RUNENV]] into name, envs, opts, renv
parse_variant() {
  name=${1%%:*} envs=${1#*:} opts= renv=
  case $envs in *:*) opts=${envs#*:} envs=${envs%%:*} ;; esac
  case $opts in *:*) renv=${opts#*:} opts=${opts%%:*} ;; esac
}
# every variant checked before any work: a NAME without its colon, or an assignment that is not
# VAR=VALUE (one colon too many shifts a field: "v::::X=1" would set nothing), is refused
FORM="NAME:ASSIGNMENTS[:OPTIONS[:RUNENV]]"
for v in $AB_VARIANTS; do
  case $v in *:*) ;; *) echo "ab.sh: variant '$v' has no ':' ($FORM)"; exit 2 ;; esac
  parse_variant "$v"
  for kv in ${envs//,/ } ${renv//,/ }; do
    [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] ||
      { echo "ab.sh: variant '$v': '$kv' is not VAR=VALUE ($FORM)"; exit 2; }
  done
done
rm -rf $LOG && mkdir -p $LOG "$OUT"
export NCCL_NVLS_ENABLE=0
HF=$W/hf-$SHAPE
if [ ! -f $HF/config.json ]; then
  $BIN/kilnc synth --like $LIKE -o $HF --force > $LOG/synth.log 2>&1 ||
    { echo "ab.sh: synth FAILED: $(tail -1 $LOG/synth.log)"; exit 1; }
fi
names=() last_key= last_art=
for v in $AB_VARIANTS; do
  parse_variant "$v"
  kilnc=$BIN/kilnc kiln=$BIN/kiln
  for kv in ${envs//,/ }; do case $kv in KILNC=*) kilnc=${kv#KILNC=} ;; esac; done
  for kv in ${renv//,/ }; do case $kv in KILN=*) kiln=${kv#KILN=} ;; esac; done
  if [ -n "$last_art" ] && [ "$last_key" = "$envs:$opts" ]; then
    ART=$last_art
    echo "ab.sh: $name ($envs ${opts//,/ }; bench: $renv): the previous variant's artifact"
  else
    [ -n "$last_art" ] && rm -rf $last_art
    ART=$W/ab-$SHAPE-$name
    rm -rf $ART
    sync # the synth's and the deletions' pending writes flushed first, untimed (bench.sh says why)
    t0=$(date +%s)
    # shellcheck disable=SC2086
    if ! env ${envs//,/ } $kilnc compile $HF -o $ART --sm 90a $COMPILE ${opts//,/ } > $LOG/compile-$name.log 2>&1; then
      echo "ab.sh: $name ($envs ${opts//,/ }): compile FAILED: $(grep -m1 -i error $LOG/compile-$name.log)"
      rm -rf $ART
      last_art= last_key=
      continue
    fi
    echo "ab.sh: $name ($envs ${opts//,/ }; bench: $renv): compiled in $(( $(date +%s) - t0 )) s"
  fi
  names+=("$name")
  for r in $(seq 1 "${AB_ROUNDS:-2}"); do
    smi=
    if command -v nvidia-smi > /dev/null; then   # the clocks and power the round ran at
      nvidia-smi --query-gpu=clocks.sm,power.draw --format=csv,noheader,nounits -lms 20 \
        > $LOG/smi-$name-$r.csv 2> /dev/null &
      smi=$!
    fi
    # shellcheck disable=SC2086
    env ${renv//,/ } $kiln bench $ART --batch "${AB_BATCH:-1,8,64}" --prefill "${AB_PREFILL:-2048}" \
      ${AB_ARGS:-} --json $LOG/$name-$r.json > $LOG/bench-$name-$r.txt 2>&1 ||
      echo "ab.sh: $name round $r: kiln bench FAILED: $(grep -m1 -i error $LOG/bench-$name-$r.txt)"
    [ -n "$smi" ] && kill $smi 2> /dev/null && wait $smi 2> /dev/null
  done
  if [ "${AB_KEEP:-}" = "$name" ]; then
    last_art= last_key=
  else
    last_art=$ART last_key="$envs:$opts"
  fi
done
[ -n "$last_art" ] && rm -rf $last_art
COMMIT=$($BIN/kiln --version 2>/dev/null | sed -n "s/.*commit \([^)]*\)).*/\1/p")
$PY - "$LOG" "$SHAPE" "$COMMIT" "$AB_VARIANTS" "${names[*]}" > $LOG/ab-summary.md <<'EOF'
import glob, json, sys

log, shape, commit, spec, names = sys.argv[1:6]
envs = dict(v.split(":", 1) for v in spec.split())
best, card, hw, peaks = {}, "?", [], []
for name in names.split():
    for p in sorted(glob.glob(f"{log}/{name}-*.json")):
        j = json.load(open(p))
        card = j["gpu"]["name"]
        g = j["gpu"]
        hw.append(f"{g['copy_bytes_per_s'] / 1e12:.2f}")
        if g.get("gemm_bf16_flops"):
            peaks.append(f"{g['gemm_bf16_flops'] / 1e12:.0f}/"
                         f"{g.get('gemm_bf16_sustained_flops', 0) / 1e12:.0f}")
        for f in j["figures"]:
            if "ratio" not in f or f["ratio"] is None:
                continue
            key = (f["figure"], f.get("batch", f.get("tokens")))
            v = f.get("tok_s", f.get("ms"))
            cur = best.setdefault(name, {}).get(key)
            better = cur is None or (v < cur[0] if f["figure"] == "time_to_first_token" else v > cur[0])
            if better:
                best[name][key] = (v, f["ratio"])
keys = sorted({k for b in best.values() for k in b}, key=lambda k: (k[0] != "decode", k[0], k[1]))
print(f"ab.sh {shape} on {card}, commit {commit}; copy bandwidth per process {', '.join(hw)} TB/s; "
      f"GEMM peak / sustained per process {', '.join(peaks) or 'n/a'} TFLOP/s; "
      f"best of the rounds per figure")
print()
print("| figure | " + " | ".join(f"{n} ({envs.get(n) or 'default'})" for n in names.split()) + " |")
print("|---|" + "---|" * len(names.split()))
for k in keys:
    unit = "ms" if k[0] == "time_to_first_token" else "tok/s"
    cells = []
    for n in names.split():
        c = best.get(n, {}).get(k)
        cells.append(f"{c[0]:,.1f} {unit} = {c[1]:.3f}" if c else "-")
    label = f"{k[0]} {'batch' if k[0] == 'decode' else 'tokens'} {k[1]}"
    print(f"| {label} | " + " | ".join(cells) + " |")
# nvidia-smi's samples (every 20 ms) of the rounds: the SM clock while the GPU drew over half its
# highest power, i.e. under the GEMMs' load, against the clock when lightly loaded
lines = []
for name in names.split():
    busy, light, top = [], [], 0.0
    for p in sorted(glob.glob(f"{log}/smi-{name}-*.csv")):
        for ln in open(p):
            try:
                mhz, watts = (float(x) for x in ln.split(","))
            except ValueError:
                continue
            top = max(top, watts)
            (busy if watts > 350 else light).append(mhz)
    if busy:
        busy.sort()
        lines.append(f"{name}: {len(busy)} samples over 350 W (highest {top:.0f} W): SM clock "
                     f"min {busy[0]:.0f} / median {busy[len(busy) // 2]:.0f} MHz; below: median "
                     f"{sorted(light)[len(light) // 2] if light else 0:.0f} MHz")
if lines:
    print()
    print("Clocks under load (nvidia-smi every 20 ms): " + "; ".join(lines))
EOF
cat $LOG/ab-summary.md
cp $LOG/ab-summary.md "$OUT/"
tar czf "$OUT/ab-logs.tgz" -C $W ab-logs
