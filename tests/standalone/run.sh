#!/bin/bash
# tests/standalone/run.sh BUILD_DIR — `kilnc compile --standalone` without a GPU (make check runs it
# with $(B); SAN=1 in the environment for the sanitizer build, whose binaries link ASan's runtime).
#
# Compiles llama (generate; weights beside), bert (embed; --embed-weights) and the example model
# (its tokenizer embedded) with --standalone, copies only each OUT_DIR into an empty folder, and
# checks there, under env -i, from another working directory:
#   --version and inspect work, and inspect prints what `kiln inspect OUT_DIR` prints;
#   ldd lists nothing but glibc's parts (plain build);
#   a truncated copy, and copies with one flipped byte (model.kiln, the appended shard, the index)
#   are refused with the message naming the part; the bare runtime says it holds no model;
#   the weights are found beside the executable, not in the working directory;
#   run without a GPU fails with kiln's "no NVIDIA driver" message (exit 1, no crash);
#   tokenize through the embedded tokenizer gives `kiln tokenize`'s ids.
# Prints one PASS/FAIL line per case and a summary last.
set -u
cd "$(dirname "$0")/../.." && ROOT=$PWD
B=${1:?usage: tests/standalone/run.sh BUILD_DIR}
BIN=$(realpath "$B/bin")
KILNC=$BIN/kilnc KILN=$BIN/kiln RT=$BIN/kiln-standalone
for f in $KILNC $KILN $RT; do [ -x $f ] || { echo "tests/standalone: $f is missing (make B=$B)"; exit 2; }; done
TMP=$(mktemp -d /tmp/kiln-standalone-test.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
pass=0 fail=0
ok() { echo "PASS $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1"; shift; [ $# -gt 0 ] && printf '  %s\n' "$@"; fail=$((fail + 1)); }
# expect NAME WANT_RC PATTERN CMD...: the command's exit status and a line of its output
expect() {
  local name=$1 want=$2 pat=$3; shift 3
  local out rc
  out=$("$@" 2>&1); rc=$?
  if [ $rc = "$want" ] && grep -q -- "$pat" <<<"$out"; then ok "$name"
  else bad "$name" "exit $rc (want $want), output lacks '$pat':" "$(head -c 2000 <<<"$out")"; fi
}
# flip FILE OFFSET: xor the byte at OFFSET with 1
flip() {
  local b; b=$(od -An -tu1 -j"$2" -N1 "$1" | tr -d ' ')
  printf "\\$(printf %03o $((b ^ 1)))" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
# offset FILE NAME: where the executable holds NAME (from --version)
offset() { env -i "$1" --version | sed -n "s|^$2: [0-9]* bytes at \([0-9]*\),.*|\1|p"; }

expect "bare runtime: holds no model" 1 "holds no model: it is kiln's standalone runtime" $RT --version
expect "--embed-weights without --standalone: usage error" 2 "goes with --standalone" \
  $KILNC compile tests/fixtures/bert -o $TMP/x --embed-weights

compile() { # NAME MODEL_DIR FLAGS...
  local name=$1 dir=$2; shift 2
  if $KILNC compile "$dir" -o $TMP/out/$name --sm 80 --standalone "$@" > $TMP/$name.log 2>&1; then
    mkdir -p $TMP/empty/$name && cp -r $TMP/out/$name $TMP/empty/$name/ && ok "$name: compiled with --standalone $*"
  else bad "$name: compile" "$(tail -5 $TMP/$name.log)"; return 1; fi
}
compile llama tests/fixtures/llama
compile bert tests/fixtures/bert --embed-weights
compile tinyfortune examples/tinyfortune
mkdir $TMP/cwd && cd $TMP/cwd # no model here: everything is found from the executable's path

for t in "llama LlamaForCausalLM generate" "bert BertModel embed" "tinyfortune LlamaForCausalLM generate"; do
  set -- $t
  X=$TMP/empty/$1/$1/$1
  [ -x "$X" ] || continue
  expect "$1: --version under env -i" 0 "^model $1 ($2, archspec .*, task $3" env -i "$X" --version
  expect "$1: --help" 0 "usage: $1 COMMAND" env -i "$X" --help
  expect "$1: run --help: the embedded model in DIR's place" 0 \
    "^In $1, the model in the executable takes the place of DIR below: '$1 run \[options\]'" \
    env -i "$X" run --help
  if diff <(env -i "$X" inspect 2>&1) <($KILN inspect $TMP/out/$1 2>&1) > $TMP/diff; then
    ok "$1: inspect under env -i prints what kiln inspect OUT_DIR prints"
  else bad "$1: inspect differs from kiln inspect" "$(head -20 $TMP/diff)"; fi
  expect "$1: inspect --verify (the weights $( [ $1 = bert ] && echo appended || echo beside))" 0 \
    "^verified .*match" env -i "$X" inspect --verify
  expect "$1: run without a GPU: kiln's no-driver message" 1 "kiln run: error: no NVIDIA driver" \
    env -i "$X" run --ids 1,2,3
  if [ "${SAN:-0}" = 0 ]; then
    libs=$(ldd "$X" | awk '{print $1}' | grep -vxE 'linux-vdso\.so\.1|libc\.so\.6|libm\.so\.6|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|/lib64/ld-linux-x86-64\.so\.2')
    [ -z "$libs" ] && ok "$1: ldd lists glibc only" || bad "$1: ldd lists more than glibc" "$libs"
  fi
  # no search path of this build machine (its CUDA toolkit) baked into a copied executable: a
  # dlopen of cuBLASLt or NCCL must find what the target machine has, not /usr/local/cuda here
  rp=$(readelf -d "$X" | grep -E 'RPATH|RUNPATH')
  [ -z "$rp" ] && ok "$1: no RPATH/RUNPATH" || bad "$1: a build-machine search path is baked in" "$rp"
  # a truncated copy, a flipped byte in model.kiln and in the index
  head -c -1000 "$X" > $TMP/cut && chmod +x $TMP/cut
  expect "$1: truncated copy refused" 1 "no model trailer at its end.*truncated or was modified" $TMP/cut --version
  cp "$X" $TMP/flip && flip $TMP/flip $(( $(offset "$X" model.kiln) + 100 ))
  expect "$1: flipped byte in model.kiln refused" 1 "the embedded file model.kiln fails its checksum" $TMP/flip inspect
  cp "$X" $TMP/flip && flip $TMP/flip $(( $(stat -c %s "$X") - 64 - 20 ))
  expect "$1: flipped byte in the index refused" 1 "its model index fails its checksum" $TMP/flip run --ids 1
done

X=$TMP/empty/bert/bert/bert
if [ -x $X ]; then
  cp $X $TMP/flip && flip $TMP/flip $(( $(offset $X shards/rank0-of-1.safetensors) + 5000 ))
  expect "bert: flipped byte in the appended shard refused" 1 \
    "the appended shard shards/rank0-of-1.safetensors fails its checksum" $TMP/flip --version
  expect "bert: runs without shards/ or model.kiln beside it" 0 "^verified" \
    sh -c "rm -rf $TMP/empty/bert/bert/shards $TMP/empty/bert/bert/model.kiln && env -i $X inspect --verify"
fi
X=$TMP/empty/llama/llama/llama
if [ -x $X ]; then
  mkdir -p shards && cp $TMP/out/llama/shards/* shards/ # a decoy in the working directory
  mv $TMP/empty/llama/llama/shards $TMP/empty/llama/llama/moved
  expect "llama: shards/ missing beside it refused (the working directory's ignored)" 1 \
    "$TMP/empty/llama/llama/shards/rank0-of-1.safetensors: cannot open" env -i $X inspect --verify
  mv $TMP/empty/llama/llama/moved $TMP/empty/llama/llama/shards
fi
X=$TMP/empty/tinyfortune/tinyfortune/tinyfortune
if [ -x $X ]; then
  in='"Once upon a time, a fortune"'
  want=$(echo "$in" | $KILN tokenize $ROOT/examples/tinyfortune 2>&1)
  got=$(echo "$in" | env -i $X tokenize 2>&1)
  [ "$got" = "$want" ] && [ -n "$want" ] && ok "tinyfortune: tokenize with the embedded tokenizer" ||
    bad "tinyfortune: tokenize differs" "kiln: $want" "standalone: $got"
fi
echo "== tests/standalone: $([ $fail = 0 ] && echo passed || echo FAILED): $pass passed, $fail failed"
[ $fail = 0 ]
