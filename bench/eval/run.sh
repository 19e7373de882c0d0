#!/bin/sh
# Attribution benchmarks. speed: one query and 64 queries against an index
# of N records x 4,096 fp16 dimensions, next to memory read and copy bandwidth, and
# index rows against training steps.
# quality (QUALITY=1, about an hour on two cores): bench/eval/quality.sh all.
# usage: bench/eval/run.sh [N] [THREADS]   (defaults 100000, 2; THREADS for BLAS and scoring)
set -e
top=$(cd "$(dirname "$0")/../.." && pwd)
B=${B:-build}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
${CC:-cc} -O2 -std=c11 -D_GNU_SOURCE -I"$top/lib" $(pkg-config --cflags jansson) \
	-I/usr/include/x86_64-linux-gnu/openblas-pthread \
	-o "$tmp/speed" "$top/bench/eval/speed.c" "$top/$B/libtrail.a" \
	$(pkg-config --libs jansson libarchive libsodium libcurl libmicrohttpd) -ldnnl -lgomp -lopenblas -llapacke -lxxhash -lm -pthread
"$tmp/speed" "$tmp/attribution.idx" "${1:-100000}" "${2:-2}"
if [ "${QUALITY:-0}" = 1 ]; then
	bash "$top/bench/eval/quality.sh" all
fi
