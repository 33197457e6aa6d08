#!/bin/bash
# tests/gpu/load.sh — compile and load times of a real-size model, and the shard checks at that size.
#
#   load.sh [SHAPE]       SHAPE: 8b (default) or 1b, synthesised here by kilnc synth (never shipped)
#
# Prints: kilnc compile's time (which now includes the NaN/Inf scan of every weight), kiln's load time
# twice (page cache cold, then warm) with its upload and hash lines, `kiln inspect --verify`'s hash
# rate on all cores, that a shard with one flipped byte is refused, and that a long prompt gives the
# same tokens with and without --dump. Summary table last; exit status 1 if a check failed.
set -u
cd "$(dirname "$0")/../.."
BIN=out/bin
SHAPE=${1:-8b}
W=/tmp/kiln-load
rm -rf $W
mkdir -p $W
LOG=$W/log.txt
fail=0
say() { echo "$1" | tee -a $W/summary.txt; }

t0=$(date +%s.%N)
out/bin/kilnc synth --like $([ $SHAPE = 8b ] && echo llama3-8b || echo llama3.2-1b) -o $W/hf --force > $LOG 2>&1 || { echo "synth failed"; cat $LOG; exit 1; }
say "$SHAPE synth (kilnc synth): $(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')") s"
t0=$(date +%s.%N)
$BIN/kilnc compile $W/hf -o $W/art --sm 90a >> $LOG 2>&1 || { say "compile FAIL: $(grep -m1 error $LOG)"; exit 1; }
say "$SHAPE compile: $(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')") s ($(grep -m1 'wrote' $LOG | grep -oE 'in [0-9.]+ s'))"
sync
echo 3 > /proc/sys/vm/drop_caches 2>/dev/null && cold="cold cache" || cold="cache not dropped"
for i in 1 2; do
  $BIN/kiln run $W/art --ids 1,2,3,4 --max-new 8 --ignore-eos > $W/run$i.out 2> $W/run$i.err || fail=1
  say "$SHAPE kiln run #$i ($([ $i = 1 ] && echo "$cold" || echo warm)): $(grep -E "load [0-9.]+ s|error" $W/run$i.err | head -2 | tr '\n' ' ')"
  grep -iE "upload|verified|hash" $W/run$i.err | sed 's/^/    /' | tee -a $W/summary.txt
done
$BIN/kiln inspect $W/art --verify > $W/verify.out 2>&1 || fail=1
say "$SHAPE inspect --verify: $(grep -m1 verified $W/verify.out)"

# a long prompt (over the GEMV row limit): the same tokens with and without --dump
ids=$(python3 -c "print(','.join(str((i * 7919) % 128000 + 1) for i in range(300)))")
$BIN/kiln run $W/art --ids $ids --max-new 8 --ignore-eos > $W/nodump.out 2>> $LOG || fail=1
$BIN/kiln run $W/art --ids $ids --max-new 8 --ignore-eos --dump $W/dump.st > $W/dump.out 2>> $LOG || fail=1
a=$(head -1 $W/nodump.out); b=$(head -1 $W/dump.out)
[ -n "$a" ] && [ "$a" = "$b" ] && say "$SHAPE 300-token prompt: same tokens with and without --dump ($a)" ||
  { say "$SHAPE 300-token prompt: FAIL tokens differ: '$a' vs '$b'"; fail=1; }

# one flipped byte in the middle of the shard's data (in place: the artifact is not used after this):
# refused after the upload, naming the shard
SH=$W/art/shards/rank0-of-1.safetensors
off=$(( $(stat -c %s $SH) / 2 ))
printf '\x5a' | dd of=$SH bs=1 seek=$off conv=notrunc status=none
if $BIN/kiln run $W/art --ids 1,2 --max-new 2 > /dev/null 2> $W/bad.err; then
  say "$SHAPE flipped shard byte: FAIL accepted"; fail=1
else
  say "$SHAPE flipped shard byte: refused: $(grep -m1 -i error $W/bad.err | cut -c1-200)"
fi
rm -rf $W/hf

echo
echo "== load summary ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), $(nproc) cores)"
cat $W/summary.txt
[ -n "${OUT:-}" ] && cp $W/summary.txt "$OUT/load-summary.txt" && cp $LOG "$OUT/load-log.txt"
exit $fail
