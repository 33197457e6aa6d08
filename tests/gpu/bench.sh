#!/bin/bash
# tests/gpu/bench.sh — kiln's speed against its rooflines and against PyTorch, in one run on the GPU
# machine (issue 12).
#
#   BENCH_SHAPES="8b 1b"  BENCH_SKIP_TORCH=0  tests/gpu/bench.sh
#
# For each shape (8b: Llama-3-8B, 1b: Llama-3.2-1B untied, random weights from `kilnc synth`, never
# shipped): synthesise and compile it (kept in /tmp/kiln-bench between calls on a warm machine, rebuilt
# when kilnc or BENCH_COMPILE changes), run `kiln bench` (copy bandwidth and GEMM peak measured in the
# same process, then load, time to first token, prefill and decode per batch, each against its
# roofline), then tests/gpu/baseline_torch.py on the same checkpoint: HF transformers' eager (sdpa)
# prefill, and a static-KV-cache batch-1 decode loop under torch.compile(mode="reduce-overhead")
# (gpt-fast's method) with kiln bench's prompt and step count, so both share one roofline. Prints a
# side-by-side table last (every ratio against the rooflines kiln bench measured in this run) and a
# markdown block for tests/gpu/RESULTS.md (date, card, commit).
#
# Budget (one call has 10 minutes): per shape, synth ~10 s (8B), compile ~20 s, kiln bench ~30 s,
# the torch baselines ~60-180 s (HF load ~20 s, torch.compile 60-120 s, capped by BENCH_TORCH_TIMEOUT,
# default 300 s). Both shapes fit one call when the machine is warm; on a cold one run
# BENCH_SHAPES=8b, then BENCH_SHAPES=1b: results are kept per shape in /tmp/kiln-bench/results, and
# the table takes every shape measured there by this commit on this card.
#
# Each shape is also compiled with --standalone and its process start to first token timed
# against kiln run's (BENCH_STANDALONE=0 skips it; its folder is deleted after, for the disk).
#
# BENCH_QUANT=fp8 likewise compiles each shape with --quant fp8 (weights in e4m3, a scale per row)
# and benches it: rows marked "--quant fp8", each ratio against that artifact's own roofline (its
# decode reads the FP8 bytes; its prefill GEMMs are FP8, so kiln bench takes the FP8 GEMM peak it
# measured). BENCH_QUANT=int4 does the same with --quant int4 (4-bit weights, a bf16 scale and
# zero point per group of 128 columns: decode reads them, prefill dequantises into scratch for the
# bf16 GEMM, so its roofline is the bf16 peak); BENCH_QUANT="fp8 int4" benches both. The compile
# quantises on every core.
#
# BENCH_GEMM=kiln also compiles each shape with kiln's own GEMM (kilnc compile --gemm kiln) and runs
# kiln bench on it after the cuBLASLt artifact's, in the same run: the table gets its figures that
# run GEMMs (first token, prefill, decode at batch 32 and 64) as rows marked "--gemm kiln", against
# the same rooflines (about 30 s more per shape, and the artifact's disk).
#
# Settings: BENCH_SHAPES ("8b 1b"), BENCH_SKIP_TORCH=1 (kiln only), BENCH_COMPILE (kilnc compile's
# limits, "--max-batch 64 --max-seq-len 2560"), BENCH_ARGS (more kiln bench options, e.g. "--reps 5"),
# BENCH_TORCH_TIMEOUT (300), PYTHON (python3). Output in $OUT (or /tmp/kiln-bench/out), four files at
# most: bench-SHAPE.txt (kiln bench's table), bench-summary.md (the side-by-side table and the block) and
# bench-logs.tgz (every log, and the JSON of kiln bench and of the baselines). Exit status 1 if kiln bench
# or a baseline failed.
set -u
cd "$(dirname "$0")/../.." || exit 1
BIN=${KILN_BIN:-out/bin}
SHAPES=${BENCH_SHAPES:-8b 1b}
COMPILE=${BENCH_COMPILE:---max-batch 64 --max-seq-len 2560}
PY=${PYTHON:-python3}
W=/tmp/kiln-bench
RES=$W/results
LOG=$W/logs
OUT=${OUT:-$W/out}
mkdir -p $W $RES "$OUT"
rm -rf $LOG
mkdir -p $LOG
export NCCL_NVLS_ENABLE=0
fail=0
COMMIT=$($BIN/kiln --version 2>/dev/null | sed -n "s/.*commit \([^)]*\)).*/\1/p")
# an artifact is reused while kilnc, these options and the sources it compiles from (archspecs,
# templates, kernels: a dirty tree's changes keep the commit of kilnc --version) are the same;
# profile.sh makes the same id
KILNC_ID="$($BIN/kilnc --version 2>/dev/null) $COMPILE $(cat "${KILN_ROOT:-.}"/archspecs/*.lua \
  "${KILN_ROOT:-.}"/templates/*.cuh "${KILN_ROOT:-.}"/kernels/* 2>/dev/null | sha1sum | cut -c1-12)"
say() { echo "bench.sh: $*" | tee -a $LOG/bench.txt; }
elapsed() { $PY -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(date +%s.%N)"; }

for SHAPE in $SHAPES; do
  case $SHAPE in
    8b) LIKE=llama3-8b ;;
    1b) LIKE=llama3.2-1b ;;
    *) say "unknown shape '$SHAPE' in BENCH_SHAPES (expected 8b or 1b)"; fail=1; continue ;;
  esac
  HF=$W/hf-$SHAPE ART=$W/art-$SHAPE
  rm -f $RES/$SHAPE-*.json
  if [ ! -f $HF/config.json ]; then
    t0=$(date +%s.%N)
    $BIN/kilnc synth --like $LIKE -o $HF --force > $LOG/synth-$SHAPE.log 2>&1 ||
      { say "$SHAPE: synth FAILED: $(tail -1 $LOG/synth-$SHAPE.log)"; fail=1; continue; }
    say "$SHAPE: synthesised ($LIKE) in $(elapsed $t0) s"
  fi
  if [ ! -f $ART/model.kiln ] || [ "$(cat $ART/bench-compile-id 2>/dev/null)" != "$KILNC_ID" ]; then
    rm -rf $ART
    # the synth's and the deletion's pending writes flushed first, untimed: a compile right after
    # synth wrote 15 GB measured 31 s against 24-26 s otherwise (RESULTS.md, twenty-eighth session)
    sync
    t0=$(date +%s.%N)
    $BIN/kilnc compile $HF -o $ART --sm 90a $COMPILE > $LOG/compile-$SHAPE.log 2>&1 ||
      { say "$SHAPE: compile FAILED: $(grep -m1 error $LOG/compile-$SHAPE.log)"; fail=1; continue; }
    echo "$KILNC_ID" > $ART/bench-compile-id
    echo "$(elapsed $t0)" > $ART/bench-compile-s
    say "$SHAPE: compiled ($COMPILE) in $(cat $ART/bench-compile-s) s"
  fi
  # shellcheck disable=SC2086
  if $BIN/kiln bench $ART ${BENCH_ARGS:-} --json $RES/$SHAPE-kiln.json > $LOG/bench-$SHAPE.txt \
       2> $LOG/bench-$SHAPE.log; then
    cat $LOG/bench-$SHAPE.txt
  else
    say "$SHAPE: kiln bench FAILED: $(grep -m1 error $LOG/bench-$SHAPE.log)"
    rm -f $RES/$SHAPE-kiln.json
    fail=1
    continue
  fi
  cp $ART/bench-compile-s $RES/$SHAPE-compile-s 2>/dev/null
  # variants of the same checkpoint and limits, each benched after the default artifact:
  # kiln's own GEMM (BENCH_GEMM=kiln: --gemm kiln) and quantised weights (BENCH_QUANT=fp8, int4 or
  # both: --quant fp8, --quant int4)
  variants=()
  [ "${BENCH_GEMM:-}" = kiln ] && variants+=("kgemm:--gemm kiln")
  for q in ${BENCH_QUANT:-}; do
    case $q in
      fp8|int4) variants+=("$q:--quant $q") ;;
      *) say "unknown BENCH_QUANT '$q' (expected fp8, int4 or both)"; fail=1 ;;
    esac
  done
  for v in "${variants[@]}"; do
    VN=${v%%:*} VOPT=${v#*:}
    KG=$W/art-$SHAPE-$VN
    if [ ! -f $KG/model.kiln ] || [ "$(cat $KG/bench-compile-id 2>/dev/null)" != "$KILNC_ID" ]; then
      rm -rf $KG
      sync # as above: pending writes flushed, untimed
      t0=$(date +%s.%N)
      # shellcheck disable=SC2086
      $BIN/kilnc compile $HF -o $KG --sm 90a $VOPT $COMPILE > $LOG/compile-$SHAPE-$VN.log 2>&1 &&
        echo "$KILNC_ID" > $KG/bench-compile-id && echo "$(elapsed $t0)" > $KG/bench-compile-s &&
        say "$SHAPE $VOPT: compiled in $(cat $KG/bench-compile-s) s"
    fi
    # shellcheck disable=SC2086
    if [ -f $KG/bench-compile-id ] && $BIN/kiln bench $KG ${BENCH_ARGS:-} --json $RES/$SHAPE-$VN.json \
         > $LOG/bench-$SHAPE-$VN.txt 2> $LOG/bench-$SHAPE-$VN.log; then
      cat $LOG/bench-$SHAPE-$VN.txt
      cp $KG/bench-compile-s $RES/$SHAPE-$VN-compile-s 2>/dev/null
    else
      say "$SHAPE $VOPT: compile or kiln bench FAILED: $(grep -h -m1 error $LOG/compile-$SHAPE-$VN.log $LOG/bench-$SHAPE-$VN.log)"
      rm -f $RES/$SHAPE-$VN.json
      fail=1
    fi
  done
  # the standalone executable (issue 16; BENCH_STANDALONE=0 skips): start to first token, process
  # start to exit of `OUT_DIR/NAME run` (a 128-token prompt, one new token) from an empty folder
  # under env -i, twice, and of `kiln run OUT_DIR` alike; OUT_DIR is deleted after (disk)
  if [ "${BENCH_STANDALONE:-1}" = 1 ]; then
    SA=$W/sa-$SHAPE
    rm -rf $SA && mkdir -p $SA/empty
    # shellcheck disable=SC2086
    if $BIN/kilnc compile $HF -o $SA/empty/out --sm 90a $COMPILE --standalone > $LOG/sa-compile-$SHAPE.log 2>&1; then
      ids=$(seq -s, 1 128) sa=() kr=()
      for i in 1 2; do
        t0=$(date +%s.%N)
        (cd $SA/empty && env -i ./out/$(basename $HF) run --ids $ids --max-new 1 --ignore-eos) >> $LOG/sa-run-$SHAPE.log 2>&1 &&
          sa+=("$(elapsed $t0)")
        t0=$(date +%s.%N)
        $BIN/kiln run $SA/empty/out --ids $ids --max-new 1 --ignore-eos >> $LOG/sa-run-$SHAPE.log 2>&1 && kr+=("$(elapsed $t0)")
      done
      if [ ${#sa[@]} = 2 ] && [ ${#kr[@]} = 2 ]; then
        echo "{\"standalone_s\": [${sa[0]}, ${sa[1]}], \"kiln_s\": [${kr[0]}, ${kr[1]}], \"bytes\": $(stat -c %s $SA/empty/out/$(basename $HF))}" > $RES/$SHAPE-standalone.json
        say "$SHAPE: standalone start to first token ${sa[*]} s (kiln run: ${kr[*]} s)"
      else
        say "$SHAPE: standalone run FAILED: $(grep -m1 -i error $LOG/sa-run-$SHAPE.log)"; fail=1
      fi
    else
      say "$SHAPE: standalone compile FAILED: $(grep -m1 error $LOG/sa-compile-$SHAPE.log)"; fail=1
    fi
    rm -rf $SA
  fi
  echo "$COMMIT" > $RES/$SHAPE-commit
  if [ "${BENCH_SKIP_TORCH:-0}" != 1 ]; then
    read -r P N R <<< "$($PY -c "import json, sys; j = json.load(open(sys.argv[1])); \
print(j['decode_prompt'], j['new'], j['reps'])" $RES/$SHAPE-kiln.json)"
    t0=$(date +%s.%N)
    if timeout ${BENCH_TORCH_TIMEOUT:-300} $PY tests/gpu/baseline_torch.py $HF $RES/$SHAPE-torch.json \
         --prompt $P --new $N --reps $R > $LOG/torch-$SHAPE.log 2>&1; then
      say "$SHAPE: torch baselines in $(elapsed $t0) s"
    else
      say "$SHAPE: torch baselines FAILED or cut at ${BENCH_TORCH_TIMEOUT:-300} s (after $(elapsed $t0) s): $(grep -v '^ ' $LOG/torch-$SHAPE.log | tail -1)"
      fail=1   # a partial torch-SHAPE.json (the prefill, written first) is still used
    fi
  fi
  cp $RES/$SHAPE-*.json $LOG/ 2>/dev/null
  cp $LOG/bench-$SHAPE.txt "$OUT/bench-$SHAPE.txt"
done

# ---- the table: every shape this commit measured on this card
$PY - "$RES" "$COMMIT" > $W/summary.md <<'EOF'
import datetime, json, os, sys

res, commit = sys.argv[1], sys.argv[2]


def load(p):
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


rows, cards, hw = [], set(), []
for shape in ("8b", "1b"):
    k = load(f"{res}/{shape}-kiln.json")
    if not k or not os.path.exists(f"{res}/{shape}-commit") or \
            open(f"{res}/{shape}-commit").read().strip() != commit:
        continue
    t = load(f"{res}/{shape}-torch.json") or {}
    g = k["gpu"]
    cards.add(g["name"])
    sus = g.get("gemm_bf16_sustained_flops")
    hw.append(f"{shape}: copy {g['copy_bytes_per_s'] / 1e12:.2f} TB/s, bf16 GEMM peak "
              f"{g['gemm_bf16_flops'] / 1e12:.0f} TFLOP/s"
              + (f" ({sus / 1e12:.0f} back to back)" if sus else "")
              + f", load {k['load_s']:.2f} s, compile "
              f"{open(f'{res}/{shape}-compile-s').read().strip()} s")
    figs = {(f["figure"], f.get("batch", f.get("tokens"))): f for f in k["figures"]}
    hfp = {p["tokens"]: p for p in t.get("hf_prefill", [])}

    def cell(v, unit, ratio):
        return f"{v:,.1f} {unit} = {ratio:.2f}" if v is not None else "-"

    def row(name, f, unit, torch_v=None, torch_name=""):
        if not f or "skipped" in f:
            rows.append((f"{shape} {name}", "skipped: " + (f or {}).get("skipped", "not run"), "", ""))
            return
        v = f["ms" if unit == "ms" else "tok_s"]
        roof = f["roofline_ms" if unit == "ms" else "roofline_tok_s"]
        tr = None
        if torch_v is not None:
            tr = roof / torch_v if unit == "ms" else torch_v / roof
        rows.append((f"{shape} {name}", cell(v, unit, f["ratio"]),
                     f"{torch_name} {cell(torch_v, unit, tr)}" if torch_v is not None else "-",
                     f"{roof:,.1f} {unit}"))

    d1 = t.get("decode_b1")
    row("decode, batch 1", figs.get(("decode", 1)), "tok/s", d1 and d1["tok_s"], "torch.compile loop:")
    for b in (8, 32, 64):
        row(f"decode, batch {b}", figs.get(("decode", b)), "tok/s")
    ttft = figs.get(("time_to_first_token", 128))
    row("first token, 128-token prompt", ttft, "ms", hfp.get(128, {}).get("ms"), "HF eager:")
    if ttft and "first_request_ratio" in ttft:
        rows.append((f"{shape} the same, the first request after the load",
                     cell(ttft["first_request_ms"], "ms", ttft["first_request_ratio"]), "-",
                     f"{ttft['roofline_ms']:,.1f} ms"))
    for n in (512, 2048):
        row(f"prefill, {n} tokens", figs.get(("prefill", n)), "tok/s",
            hfp.get(n, {}).get("tok_s"), "HF eager (sdpa):")
    kg = load(f"{res}/{shape}-kgemm.json")  # BENCH_GEMM=kiln
    for q in ("fp8", "int4"):  # BENCH_QUANT=fp8, int4
        fp = load(f"{res}/{shape}-{q}.json")
        if not fp:
            continue
        ff = {(f["figure"], f.get("batch", f.get("tokens"))): f for f in fp["figures"]}
        for b in (1, 8, 32, 64):
            row(f"decode, batch {b}, --quant {q}", ff.get(("decode", b)), "tok/s",
                d1 and d1["tok_s"] if b == 1 else None, "torch.compile loop (bf16):")
        row(f"first token, 128-token prompt, --quant {q}", ff.get(("time_to_first_token", 128)), "ms")
        for n in (512, 2048):
            row(f"prefill, {n} tokens, --quant {q}", ff.get(("prefill", n)), "tok/s")
        cs = f"{res}/{shape}-{q}-compile-s"
        fg = fp["gpu"]
        hw.append(f"{shape} --quant {q}: load {fp['load_s']:.2f} s, compile "
                  f"{open(cs).read().strip() if os.path.exists(cs) else '?'} s; FP8 GEMM peak "
                  f"{fg.get('gemm_fp8_flops', 0) / 1e12:.0f} TFLOP/s (its prefill roofline: "
                  f"{fg.get('prefill_peak', 'bf16')})")
    if kg:
        kf = {(f["figure"], f.get("batch", f.get("tokens"))): f for f in kg["figures"]}
        row("first token, 128-token prompt, --gemm kiln", kf.get(("time_to_first_token", 128)),
            "ms", hfp.get(128, {}).get("ms"), "HF eager:")
        for n in (512, 2048):
            row(f"prefill, {n} tokens, --gemm kiln", kf.get(("prefill", n)), "tok/s",
                hfp.get(n, {}).get("tok_s"), "HF eager (sdpa):")
        for b in (32, 64):
            row(f"decode, batch {b}, --gemm kiln", kf.get(("decode", b)), "tok/s")
    sa = load(f"{res}/{shape}-standalone.json")
    if sa:
        rows.append((f"{shape} standalone executable ({sa['bytes'] / 2**20:.1f} MiB, weights "
                     "beside), process start to first token, 128-token prompt, two runs",
                     " / ".join(f"{v:.2f} s" for v in sa["standalone_s"]),
                     "kiln run of the same folder: " + " / ".join(f"{v:.2f} s" for v in sa["kiln_s"]),
                     "-"))
    if "check_rel_l2" in t:
        hw.append(f"{shape}: the torch loop's logits vs HF's: relative L2 {t['check_rel_l2']:.1e}; "
                  f"torch.compile + capture {t.get('compile_s', 0):.0f} s; torch {t.get('torch')}, "
                  f"transformers {t.get('transformers')}")

card = ", ".join(sorted(cards)) or "no card"
head = ("| figure | kiln = ratio | PyTorch = ratio | roofline |", "|---|---|---|---|")
table = "\n".join(head + tuple(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows))
print(f"### {datetime.date.today().isoformat()}: tests/gpu/bench.sh on {card}, kiln {commit}\n")
print(table + "\n")
print("Ratios are roofline time / measured time, against the rooflines kiln bench measured in the "
      "same run (decode: weight bytes but the embedding table + KV read / copy bandwidth; prefill: "
      "FLOPs / bf16 GEMM peak; first token: both). What changed: (fill in)\n")
for h in hw:
    print(f"- {h}")
EOF
cp $W/summary.md "$OUT/bench-summary.md"
tar czf "$OUT/bench-logs.tgz" -C $W logs 2>/dev/null
echo
echo "== bench summary (for tests/gpu/RESULTS.md; full logs in $OUT)"
cat $W/summary.md
exit $fail
