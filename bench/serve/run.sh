#!/bin/sh
# Serving benchmark (bench/serve/bench_serve.c); prints one JSON line.
# usage: bench/serve/run.sh [ADAPTERS [TOKENS [THREADS]]]   (default 2000 64 2)
# The models go to $SERVE_BENCH_DIR (kept, so a second run skips building them)
# or a temporary directory.
set -e
top=$(cd "$(dirname "$0")/../.." && pwd)
B=${B:-build}
tmp=$(mktemp -d)
dir=${SERVE_BENCH_DIR:-$tmp/models}
trap 'rm -rf "$tmp"' EXIT
${CC:-cc} -O2 -std=c11 -D_GNU_SOURCE -pthread -I"$top/lib" -I/usr/include/x86_64-linux-gnu/openblas-pthread \
	$(pkg-config --cflags jansson) -o "$tmp/bench_serve" "$top/bench/serve/bench_serve.c" "$top/$B/libtrail.a" \
	$(pkg-config --libs jansson libarchive libsodium libcurl libmicrohttpd) -ldnnl -lgomp -lopenblas -llapacke -lxxhash -lm -pthread
"$tmp/bench_serve" "$dir" "${1:-2000}" "${2:-64}" "${3:-2}"
