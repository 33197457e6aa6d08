#!/bin/bash
# tests/gpu/ncu_kernel.sh — Nsight Compute's full report of chosen launches of one kernel, as text:
# the "why is this kernel slow" view (speed of light, memory and compute workload, warp stall
# reasons, occupancy, launch statistics) that profile.sh's per-kernel times do not give.
#
#   NCU_KERNEL=k_gemm NCU_SKIP="100 200" NCU_TAG=gemm90 tests/gpu/ncu_kernel.sh \
#       out/bin/kiln-ktest --bench gemm
#
# Runs the command once per entry of NCU_SKIP (launches of kernels whose name matches NCU_KERNEL,
# a regex, to skip before the one profiled), each under `ncu --set full --launch-count 1`, with
# the clocks left alone (--clock-control none, as the benchmarks run). Output:
# $OUT/ncu-TAG-SKIP.txt (ncu --print-details all) and its .ncu-rep.
set -u
cd "$(dirname "$0")/../.." || exit 1
[ $# -gt 0 ] || { echo "usage: NCU_KERNEL=REGEX NCU_SKIP='N ...' [NCU_TAG=NAME] $0 COMMAND [ARGS...]"; exit 2; }
[ -n "${NCU_KERNEL:-}" ] || { echo "ncu_kernel.sh: NCU_KERNEL (a regex of kernel names) is empty"; exit 2; }
OUT=${OUT:-/tmp/kiln-ncu}
mkdir -p "$OUT"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "ncu_kernel.sh: ncu not found"; exit 1; }
TAG=${NCU_TAG:-kernel}
fail=0
for skip in ${NCU_SKIP:-0}; do
  rep=$OUT/ncu-$TAG-$skip
  if ! $NCU --set full --clock-control none --kernel-name "regex:$NCU_KERNEL" --launch-skip "$skip" \
      --launch-count 1 -f -o "$rep" "$@" > "$rep.log" 2>&1; then
    echo "ncu_kernel.sh: ncu failed for launch $skip: $(tail -3 "$rep.log")"; fail=1; continue
  fi
  $NCU --import "$rep.ncu-rep" --print-details all > "$rep.txt" 2>&1 || fail=1
  echo "== $TAG launch $skip: $(grep -m1 -E 'k_|[a-z_]+\(' "$rep.txt" | head -c 160)"
  grep -E "Duration|DRAM Throughput|Compute \(SM\) Throughput|Memory Throughput|Registers Per|Achieved Occupancy|Issue Slots Busy|Executed Ipc Active|L1/TEX Hit|L2 Hit" "$rep.txt" | head -20
done
exit $fail
