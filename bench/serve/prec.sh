#!/bin/sh
# Decoding tokens/s by precision (bench/serve/bench_prec.c): fp32, bf16 and
# int8 alternating, one request and 64 requests over 64 adapters, the SmolLM2-135M shape with
# random weights, with the read bandwidth and the one-request bound measured
# in the same run. Prints one JSON line per figure.
# usage: bench/serve/prec.sh [THREADS [STEPS [ROUNDS]]]   (defaults: every CPU, 8, 1)
# The model goes to $SERVE_BENCH_DIR (kept, so a second run skips building it)
# or a temporary directory.
set -e
top=$(cd "$(dirname "$0")/../.." && pwd)
B=${B:-build}
tmp=$(mktemp -d)
dir=${SERVE_BENCH_DIR:-$tmp/models}
trap 'rm -rf "$tmp"' EXIT
${CC:-cc} -O2 -std=c11 -D_GNU_SOURCE -pthread -I"$top/lib" $(pkg-config --cflags jansson) \
	-I/usr/include/x86_64-linux-gnu/openblas-pthread \
	-o "$tmp/bench_prec" "$top/bench/serve/bench_prec.c" "$top/$B/libtrail.a" \
	$(pkg-config --libs jansson libarchive libsodium libcurl libmicrohttpd) -ldnnl -lgomp -lopenblas -llapacke -lxxhash -lm -pthread
"$tmp/bench_prec" "$dir" "${1:-$(nproc)}" "${2:-8}" "${3:-1}"
