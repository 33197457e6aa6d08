#!/bin/bash
# tests/server/run.sh KILN_BINARY [TEST...] — the end-to-end tests of `kiln serve` over real HTTP on
# loopback (TEST: a unittest name such as test_load or test_openai.Chat; default all three files).
#
# Runs, with KILN_BINARY and the kilnc next to it (make check passes $(B)/bin/kiln; the SAN build's
# binaries run the same tests, and any sanitizer report in a server's stderr fails them):
#   test_openai.py  the official openai client: completions, chat, streaming, embeddings (BERT
#                   fixture), errors; outputs checked against `kilnc ref`
#   test_http.py    curl: SSE framing, error statuses, /health, /metrics
#   test_load.py    200 concurrent clients (some hang up mid-stream, some send garbage): every
#                   completed stream equals its prompt run alone, the server ends idle and clean
# The Python environment is a venv under out/ made once from requirements.txt (pinned; remade when
# that file changes) and shared by the plain and SAN passes. It needs python3's venv module
# (Debian: python3-venv, in the Makefile's DEB_PKGS) and PyPI. The example model is used through a
# copy in a temporary folder (symlinks) whose tokenizer_config.json adds a small chat template:
# examples/tinyfortune has none.
set -eu
cd "$(dirname "$0")/../.."
[ $# -ge 1 ] && [ -x "$1" ] || { echo "usage: tests/server/run.sh KILN_BINARY [TEST...] (kilnc must be next to it)" >&2; exit 2; }
KILN=$(realpath "$1")
shift
TESTS=${*:-test_openai test_http test_load test_classify}
KILNC=$(dirname "$KILN")/kilnc
[ -x "$KILNC" ] || { echo "tests/server/run.sh: no kilnc next to $KILN" >&2; exit 2; }

VENV=out/server-venv
REQ=tests/server/requirements.txt
mkdir -p out
(
  flock 9
  if ! cmp -s $REQ $VENV/requirements.txt; then
    rm -rf $VENV
    python3 -m venv $VENV || { echo "tests/server/run.sh: python3 -m venv failed: install python3-venv (make deps)" >&2; exit 1; }
    $VENV/bin/pip install -q --disable-pip-version-check -r $REQ
    cp $REQ $VENV/requirements.txt
  fi
) 9> out/server-venv.lock

TMP=$(mktemp -d /tmp/kiln-server-test.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
M=$TMP/tinyfortune
mkdir $M
for f in examples/tinyfortune/*; do ln -s "$PWD/$f" $M/; done
rm $M/tokenizer_config.json
$VENV/bin/python - examples/tinyfortune/tokenizer_config.json $M/tokenizer_config.json <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
assert "chat_template" not in c, "tinyfortune has a chat template now: use it"
c["chat_template"] = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                      "{% if add_generation_prompt %}assistant:{% endif %}")
json.dump(c, open(sys.argv[2], "w"), indent=2)
PY

export KILN KILNC KILN_TEST_TMP=$TMP KILN_TEST_MODEL=$M
grep -q __asan_init "$KILN" && export KILN_SAN=1 || export KILN_SAN=0
t0=$(date +%s)
cd tests/server
status=0
../../$VENV/bin/python -m unittest -v $TESTS 2>&1 || status=1
echo "== tests/server: $([ $status = 0 ] && echo passed || echo FAILED) in $(( $(date +%s) - t0 )) s (KILN_SAN=$KILN_SAN)"
[ $status = 0 ] || for f in $TMP/serve-*.stderr; do echo "---- $f (last 40 lines)"; tail -40 "$f"; done
exit $status
