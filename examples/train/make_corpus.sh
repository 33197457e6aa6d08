#!/bin/sh
# Rebuilds examples/train/corpus.txt.gz from Debian's `fortunes` package (run on a Debian or
# Ubuntu machine with access to its package archive; the committed corpus.txt.gz is what
# train.py reads, so this is only needed to check or refresh it).
#
# The corpus is every English fortune file of the package (fortunes-min's three files are a
# subset of it), except ascii-art (pictures, not text) and translate-me (not English), in the
# package's own format: fortunes separated by lines holding a single '%'. Duplicates are kept
# here; train.py drops them. Licence: see examples/README.md and the package's
# /usr/share/doc/fortunes/copyright (copied next to the corpus as corpus.COPYRIGHT).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
apt-get download fortunes >/dev/null
deb=$(ls fortunes_*.deb)
dpkg-deb -x "$deb" root
dir=root/usr/share/games/fortunes
out="$here/corpus.txt"
: >"$out"
for f in $(ls "$dir" | LC_ALL=C sort); do
  case "$f" in
    *.dat | *.u8 | ascii-art | translate-me) continue ;;
  esac
  [ -f "$dir/$f" ] && [ ! -L "$dir/$f" ] || continue
  # make sure every file ends with a separator line
  sed -e '$a\' "$dir/$f" >>"$out"
  tail -n 1 "$dir/$f" | grep -qx '%' || echo '%' >>"$out"
done
gzip -9n -f "$out"
cp root/usr/share/doc/fortunes/copyright "$here/corpus.COPYRIGHT"
echo "wrote $out.gz ($(wc -c <"$out.gz") bytes) from $deb"
