#!/bin/bash
# tests/gpu/device.sh — how a session's binaries reach the GPU machine and run there, in one place.
#
# The GPU machine has no Lua, jansson headers or cmocka (../shared/GPU.md), so kiln is built here and
# its binaries travel with the working tree. A device call copies the tree (tracked files and
# untracked ones git does not ignore) plus the ignored paths it is told to carry, 64 MiB at most.
#
#   tests/gpu/device.sh pack          on the build machine, after `make`: the four binaries, stripped,
#                                     into out/gpu/bin.tar.xz (~1 MB); carry ["out/gpu"] with the call
#   tests/gpu/device.sh shrink        on the build machine, before a call: the tracked files are ~65 MB,
#                                     over the limit with anything carried, so the largest fixtures
#                                     the GPU scripts do not need by default (FREE below) leave git's
#                                     index for the call (their files stay; .git/info/exclude hides
#                                     them). Commit nothing until `restore`: a pre-commit hook it
#                                     installs refuses (a commit made while shrunk records FREE's
#                                     deletion; the twenty-eighth session made one).
#   tests/gpu/device.sh restore       after the call: FREE back in the index, the exclusions gone.
#   tests/gpu/device.sh run CMD...    on the GPU machine (the call's command): unpacks the binaries into
#                                     out/bin, sets KILN_ROOT and NCCL_NVLS_ENABLE=0, and runs CMD, e.g.
#       bash tests/gpu/device.sh run env KT_FILTER=attention out/bin/kiln-ktest attention
#       bash tests/gpu/device.sh run env AB_VARIANTS="base: new:..." bash tests/gpu/ab.sh
#
# With FREE out of the tree, no script may be asked for those fixtures (their rows then read "FAIL
# compile"): give the lists explicitly where the defaults name them: run.sh's RUN_GEN (all four)
# and RUN_FP16 (mixtral4, bloom6), sanitize.sh's KILN_SAN_FIX (mixtral4), tp.sh's TP_GEN.
set -u
cd "$(dirname "$0")/../.." || exit 1
FREE="examples/train/corpus.txt.gz tests/fixtures/bloom6 tests/fixtures/mixtral4 tests/fixtures/qwen3_moe
      tests/fixtures/gemma3_oldstyle"
BINS="kiln kiln-ktest kiln-standalone kilnc"
MARK="kiln device.sh shrink: refuses commits until restore"

case ${1:-} in
  pack)
    stage=$(mktemp -d) || exit 1
    for b in $BINS; do
      [ -x out/bin/$b ] || { echo "device.sh: out/bin/$b is missing: run make first"; rm -rf "$stage"; exit 1; }
      strip -o "$stage/$b" out/bin/$b || { rm -rf "$stage"; exit 1; }
    done
    mkdir -p out/gpu
    XZ_OPT=-9e tar cJf out/gpu/bin.tar.xz -C "$stage" . || { rm -rf "$stage"; exit 1; }
    rm -rf "$stage"
    echo "device.sh: out/gpu/bin.tar.xz, $(du -k out/gpu/bin.tar.xz | cut -f1) KiB ($(git describe --always --dirty))"
    ;;
  shrink)
    [ -s .git/info/exclude ] && grep -q "^tests/fixtures/bloom6$" .git/info/exclude &&
      { echo "device.sh: already shrunk (restore first)"; exit 1; }
    HOOK=$(git rev-parse --git-path hooks)/pre-commit
    [ -e "$HOOK" ] && { echo "device.sh: $HOOK exists; shrink installs its own there"; exit 1; }
    mkdir -p "$(dirname "$HOOK")" && printf '%s\n' '#!/bin/sh' "# $MARK" \
      'echo "the tree is shrunk for a device call: run tests/gpu/device.sh restore first" >&2' \
      'exit 1' > "$HOOK" && chmod +x "$HOOK" || exit 1
    for p in $FREE; do
      echo "$p" >> .git/info/exclude
      git rm -r -q --cached "$p" || exit 1
    done
    echo "device.sh: $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) bytes tracked for the call"
    ;;
  restore)
    # shellcheck disable=SC2086
    git reset -q -- $FREE || exit 1
    HOOK=$(git rev-parse --git-path hooks)/pre-commit
    grep -qxF "# $MARK" "$HOOK" 2>/dev/null && rm -f "$HOOK"
    for p in $FREE; do
      grep -vxF "$p" .git/info/exclude > .git/info/exclude.new; mv .git/info/exclude.new .git/info/exclude
    done
    git status --short
    ;;
  run)
    shift
    [ $# -gt 0 ] || { echo "device.sh: run what?"; exit 2; }
    mkdir -p out/bin && tar xJf out/gpu/bin.tar.xz -C out/bin || exit 1
    export KILN_ROOT=$PWD NCCL_NVLS_ENABLE=0
    mkdir -p "${OUT:-/tmp/kiln-out}"
    "$@"
    ;;
  *)
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
    [ "${1:-}" = -h ] || [ "${1:-}" = --help ]
    ;;
esac
