#!/bin/sh
# The SmolLM2-135M shape with random weights, trail against PyTorch
# (python3-torch: eager float32, and bfloat16 autocast) in one run, the
# contenders alternating for ROUNDS rounds: LoRA training tokens/s (r 8 on
# q_proj and v_proj, batch 4 x 128); trail's decoding tokens/s for one
# request and for 64 requests over 64 adapters in one batch; peak memory;
# then attribution stage by stage (bench/llama/attr.sh, ATTR=N records,
# default 512, 0 to skip).
# usage: bench/llama/run.sh [THREADS] [ROUNDS] [STEPS]   (defaults: every CPU, 2, 3)
set -e
top=$(cd "$(dirname "$0")/../.." && pwd)
B=${B:-build}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
th=${1:-$(nproc)} rounds=${2:-2} steps=${3:-3}
${CC:-cc} -O2 -std=c11 -D_GNU_SOURCE -I"$top/lib" $(pkg-config --cflags jansson) \
	-I/usr/include/x86_64-linux-gnu/openblas-pthread \
	-o "$tmp/bench_llama" "$top/bench/llama/bench_llama.c" "$top/$B/libtrail.a" \
	$(pkg-config --libs jansson libarchive libsodium libcurl libmicrohttpd) -ldnnl -lgomp -lopenblas -llapacke -lxxhash -lm -pthread
export OPENBLAS_NUM_THREADS=$th OMP_NUM_THREADS=$th
for r in $(seq "$rounds"); do
	"$tmp/bench_llama" "$th" "$steps" 16
	/usr/bin/python3 "$top/bench/llama/torch_llama.py" "$th" "$steps" fp32
	/usr/bin/python3 "$top/bench/llama/torch_llama.py" "$th" "$steps" bf16
done
# attribution, stage by stage (bench/llama/attr.sh), unless ATTR=0
[ "${ATTR:-512}" -eq 0 ] || sh "$top/bench/llama/attr.sh" "${ATTR:-512}" "$th"
