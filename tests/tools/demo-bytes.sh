#!/bin/sh
# Compare every byte the demo writes between two trees (two commits, after
# `make` in each): keys, nonces and the clock are fixed, so any difference
# is a difference of the programs.
#   sh tests/tools/demo-bytes.sh OLD-TREE NEW-TREE
# Needs libfaketime (Debian faketime). Exit 0 when demo-out is identical.
set -e
old=$(cd "$1" && pwd) new=$(cd "$2" && pwd)
ft=/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1
[ -f "$ft" ] || { echo "demo-bytes: needs libfaketime (apt-get install faketime)" >&2; exit 69; }
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
cc -shared -fPIC -O1 -o "$w/fixrand.so" "$(dirname "$0")/fixrand.c"
run() {
	(cd "$1" && LD_PRELOAD="$w/fixrand.so $ft" FAKETIME="2026-01-01 00:00:00" FAKETIME_DONT_FAKE_MONOTONIC=1 \
		DEMO_OUT="$2" sh examples/demo.sh > "$2.log" 2>&1)
}
run "$old" "$w/old"
run "$new" "$w/new"
n=$(find "$w/new" -type f | wc -l)
if diff -r "$w/old" "$w/new" > "$w/diff"; then
	echo "demo-bytes: all $n files of demo-out identical"
else
	cat "$w/diff"; exit 1
fi
