#!/bin/bash
# tests/gpu/profile.sh — where the time of one prefill and of decode steps goes, kernel by kernel, on
# the GPU machine (issue 12 item 5: "guided by the profile").
#
#   PROFILE_SHAPE=8b PROFILE_PROMPT=2048 PROFILE_BATCH=1 tests/gpu/profile.sh
#
# Synthesises and compiles the shape (kilnc synth; kept in /tmp/kiln-bench like bench.sh, so a warm
# machine reuses bench.sh's), then runs `kiln run` under Nsight Compute (ncu --clock-control none,
# one metric: gpu__time_duration) over one prompt of PROFILE_PROMPT tokens and PROFILE_NEW - 1 decode
# steps of PROFILE_BATCH sequences, without CUDA graphs (ncu replays kernels one by one, so absolute
# times run ~20% high and launch gaps are not seen: use the shares, and bench.sh for the totals).
# Prints per phase (prefill = the kernels before the first sampled token, decode = the rest) the
# kernels grouped by name: count, total time, share. Output: $OUT/profile-SHAPE.txt and the raw CSV.
set -u
cd "$(dirname "$0")/../.." || exit 1
BIN=${KILN_BIN:-out/bin}
SHAPE=${PROFILE_SHAPE:-8b}
PROMPT=${PROFILE_PROMPT:-2048}
BATCH=${PROFILE_BATCH:-1}
NEW=${PROFILE_NEW:-3}
PY=${PYTHON:-python3}
W=/tmp/kiln-bench
OUT=${OUT:-$W/out}
mkdir -p $W "$OUT"
case $SHAPE in
  8b) LIKE=llama3-8b ;;
  1b) LIKE=llama3.2-1b ;;
  *) echo "profile.sh: unknown PROFILE_SHAPE '$SHAPE' (8b or 1b)"; exit 2 ;;
esac
HF=$W/hf-$SHAPE ART=$W/art-$SHAPE
[ -f $HF/config.json ] || $BIN/kilnc synth --like $LIKE -o $HF --force > /dev/null || exit 1
# bench.sh's compile options and marker, so its artifact is reused when the machine is warm
COMPILE="--max-batch 64 --max-seq-len 2560"
KILNC_ID="$($BIN/kilnc --version 2>/dev/null) $COMPILE $(cat "${KILN_ROOT:-.}"/archspecs/*.lua \
  "${KILN_ROOT:-.}"/templates/*.cuh "${KILN_ROOT:-.}"/kernels/* 2>/dev/null | sha1sum | cut -c1-12)"
if [ ! -f $ART/model.kiln ] || [ "$(cat $ART/bench-compile-id 2>/dev/null)" != "$KILNC_ID" ]; then
  rm -rf $ART; $BIN/kilnc compile $HF -o $ART --sm 90a $COMPILE > /dev/null || exit 1
  echo "$KILNC_ID" > $ART/bench-compile-id
fi
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "profile.sh: ncu not found"; exit 1; }
ids=$($PY -c "import sys; print(','.join(str(1000 + (i * 7919) % 100000) for i in range(int(sys.argv[1]))))" $PROMPT)
args=()
for b in $(seq 1 $BATCH); do args+=(--ids "$ids"); done
# the last kernel of the prefill is the sampler's: mark the phase boundary by the first sample kernel
# (KILN_WARMUP=0: the load's warm-up runs prefills and samples of its own before the prompt's)
KILN_WARMUP=0 $NCU --clock-control none --metrics gpu__time_duration.sum --csv \
  $BIN/kiln run $ART "${args[@]}" --max-new $NEW --ignore-eos --no-graphs > $OUT/ncu-$SHAPE.csv 2> $OUT/ncu-$SHAPE.log
$PY - $OUT/ncu-$SHAPE.csv $SHAPE $PROMPT $BATCH <<'PYEOF' | tee $OUT/profile-$SHAPE.txt
import csv, re, sys, collections
path, shape, prompt, batch = sys.argv[1:5]
rows = [r for r in csv.reader(l for l in open(path) if l.startswith('"'))]
head, rows = rows[0], rows[1:]
ki, vi, ui = head.index("Kernel Name"), head.index("Metric Value"), head.index("Metric Unit")
scale = {"nsecond": 1e-3, "usecond": 1, "msecond": 1e3, "second": 1e6,
         "ns": 1e-3, "us": 1, "ms": 1e3, "s": 1e6}
ks = [(r[ki], float(r[vi].replace(",", "")) * scale[r[ui]]) for r in rows]
first = next((i for i, (n, _) in enumerate(ks) if "sample" in n), len(ks) - 1)
def short(n):
    n = re.sub(r"\(.*", "", n)
    return re.sub(r"^k\d+_", "", n)[:60]
for phase, part in (("prefill", ks[:first + 1]), ("decode", ks[first + 1:])):
    tot = sum(t for _, t in part)
    if not part:
        continue
    print(f"\n{shape} {phase} ({prompt}-token prompt x {batch}): {len(part)} kernels, {tot / 1e3:.2f} ms summed")
    g = collections.defaultdict(lambda: [0, 0.0])
    for n, t in part:
        g[short(n)][0] += 1
        g[short(n)][1] += t
    for n, (c, t) in sorted(g.items(), key=lambda x: -x[1][1])[:25]:
        print(f"  {n:60s} {c:6d} {t / 1e3:9.3f} ms {100 * t / tot:5.1f}%")
PYEOF
