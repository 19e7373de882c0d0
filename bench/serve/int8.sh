#!/bin/sh
# The accuracy and speed of int8 serving.
#  1. Perplexity on held-out real text (Debian's fortunes, fortunes-min and
#     fortune-mod's files: every tenth fortune held out, the rest trained
#     on) of a byte-level GPT-2 that mf-train trains on it (fp32), served
#     at fp32, bf16 and int8 (bench/serve/bench_ppl.c), with how often
#     int8's and bf16's most likely next byte is fp32's.
#  2. Decode tokens/s, fp32, bf16 and int8 alternating ROUNDS times, one
#     request and 64 requests over 64 adapters (bench/serve/prec.sh).
# usage: bench/serve/int8.sh [THREADS [STEPS [ROUNDS]]]   (defaults: every CPU, 300 training steps, 3)
# Prints JSON lines. The trained model goes to $INT8_BENCH_DIR (kept, so a
# second run skips training) or a temporary directory.
set -e
top=$(cd "$(dirname "$0")/../.." && pwd)
B=${B:-build}
th=${1:-$(nproc)}
steps=${2:-300}
rounds=${3:-3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dir=${INT8_BENCH_DIR:-$tmp/int8}
mkdir -p "$dir"
fdir=/usr/share/games/fortunes
[ -d "$fdir" ] || { echo "int8.sh: no $fdir (Debian: apt-get install fortunes)" >&2; exit 69; }
if [ ! -f "$dir/base/model.safetensors" ]; then
	# fortunes are separated by lines of "%"; one record per fortune, in file order
	for f in "$fdir"/*; do
		case $f in *.dat | *.u8) continue ;; esac
		[ -f "$f" ] && cat "$f" && printf '\n%%\n'
	done | python3 -c '
import json, sys
recs = [r.strip() for r in sys.stdin.read().split("\n%\n")]
recs = [r for r in recs if 20 <= len(r) <= 1000]
with open(sys.argv[1], "w") as tr, open(sys.argv[2], "w") as ho:
    for i, r in enumerate(recs):
        (ho if i % 10 == 9 else tr).write(json.dumps({"text": r}) + "\n")
' "$dir/train.ndjson" "$dir/heldout.ndjson"
	echo '{"n_layer":4,"n_head":4,"n_embd":256,"n_positions":256,"vocab_size":257}' > "$dir/cfg.json"
	"$top/$B/bin/mf-train" --init "$dir/cfg.json" --data "$dir/train.ndjson" --steps "$steps" --batch 16 --seq 256 \
		--lr 2e-3 --precision fp32 --threads "$th" --no-progress --no-index -o "$dir/base" >&2
fi
${CC:-cc} -O2 -std=c11 -D_GNU_SOURCE -pthread -I"$top/lib" $(pkg-config --cflags jansson) \
	-I/usr/include/x86_64-linux-gnu/openblas-pthread \
	-o "$tmp/bench_ppl" "$top/bench/serve/bench_ppl.c" "$top/$B/libtrail.a" \
	$(pkg-config --libs jansson libarchive libsodium libcurl libmicrohttpd) -ldnnl -lgomp -lopenblas -llapacke -lxxhash -lm -pthread
echo "{\"what\":\"data\",\"train_records\":$(wc -l < "$dir/train.ndjson"),\"heldout_records\":$(wc -l < "$dir/heldout.ndjson"),\"train_steps\":$steps}"
"$tmp/bench_ppl" "$dir/base" "$dir/heldout.ndjson" "$th"
[ "${INT8_BENCH_SKIP_DECODE:-0}" = 1 ] || sh "$top/bench/serve/prec.sh" "$th" 8 "$rounds"
