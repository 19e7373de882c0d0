#!/bin/sh
# Ledger benchmark; prints one JSON line and the Markdown for bench/RESULTS.md.
# usage: bench/ledger/run.sh [ENTRIES]   (default 1,000,000)
set -e
top=$(cd "$(dirname "$0")/../.." && pwd)
B=${B:-build}
n=${1:-1000000}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
${CC:-cc} -O2 -std=c11 -D_GNU_SOURCE -I"$top/lib" $(pkg-config --cflags jansson) \
	-o "$tmp/bench_ledger" "$top/bench/ledger/bench_ledger.c" "$top/$B/libtrail.a" \
	$(pkg-config --libs jansson libsodium) -lm
"$tmp/bench_ledger" "$tmp/home" "$n" | tee "$tmp/out.json"
# The same append through the program, as a pipeline uses it.
seq 1 "$n" | sed 's/.*/{"type":"bench","i":&,"datanet":"bench"}/' > "$tmp/in.ndjson"
"$top/$B/bin/trail-log" --home "$tmp/cli" init >/dev/null
t0=$(date +%s.%N)
"$top/$B/bin/trail-log" --home "$tmp/cli" append --batch < "$tmp/in.ndjson" > /dev/null
t1=$(date +%s.%N)
awk -v n="$n" -v a="$t0" -v b="$t1" 'BEGIN { printf "{\"cli_append_batched_per_s\":%d}\n", n / (b - a) }'
