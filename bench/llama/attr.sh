#!/bin/sh
# Attribution on the SmolLM2-135M shape (random weights, LlamaForCausalLM:
# 30 layers, 576 wide, 9 heads over 3 key/value heads, MLP 1536, vocab
# 49,152, tied), stage by stage through the programs: the base written by
# mf-train --init (one step), a LoRA adapter (r 8 on q_proj and v_proj) fine-
# tuned on N records of 64 tokens (one epoch, batch 8) with its attribution
# index built as it trains (the final-weights pass; also timed with
# --no-index and with the rows captured in training, --index-at last-epoch),
# one answer served by lora-serve with that adapter, and attr-score
# attributing that answer over the N records. Each
# stage's wall, user + sys CPU seconds and peak RSS (/usr/bin/time). The
# tokenizer is bytes (ids below 257 of the 49,152; the shapes and costs are
# those of the real vocabulary). Records: paragraphs of the GPL-3 text.
# usage: bench/llama/attr.sh [N [THREADS]]   (defaults 512, every CPU; B=build)
set -e
top=$(cd "$(dirname "$0")/../.." && pwd)
B=${B:-build}
N=${1:-512} th=${2:-$(nproc)}
PATH=$top/$B/bin:$PATH
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
t() { # LABEL CMD...: run, print "LABEL wall cpu rss"
	l=$1; shift
	/usr/bin/time -f '%e %U %S %M' -o tm "$@"
	awk -v l="$l" '{ printf "%-48s %8.2f s wall %8.2f s cpu %7.0f MB\n", l, $1, $2 + $3, $4 / 1024 }' tm
}
cat > cfg.json <<'J'
{"architectures":["LlamaForCausalLM"],"model_type":"llama","num_hidden_layers":30,"hidden_size":576,
 "intermediate_size":1536,"num_attention_heads":9,"num_key_value_heads":3,"max_position_embeddings":2048,
 "vocab_size":49152,"rms_norm_eps":1e-5,"rope_theta":100000.0,"tie_word_embeddings":true,"hidden_act":"silu"}
J
/usr/bin/python3 - "$N" <<'PY'
import json, re, sys
n = int(sys.argv[1])
text = open("/usr/share/common-licenses/GPL-3").read()
paras = [re.sub(r"\s+", " ", p).strip() for p in text.split("\n\n") if len(p.strip()) > 80]
with open("data.ndjson", "w") as f:
    for i in range(n):
        f.write(json.dumps({"text": "%d: %s" % (i, paras[i % len(paras)][:200]), "contributor": "c%d" % (i % 16)}) + "\n")
PY
echo "N = $N records of 64 tokens, $th threads, load $(cut -d' ' -f1-3 /proc/loadavg), precision default ($(grep -q avx512_bf16 /proc/cpuinfo && echo bf16 || echo fp32))"
t "base written (mf-train --init, 1 step)" sh -c "mf-train --init cfg.json --data data.ndjson -o base --steps 1 \
	--batch 1 --seq 16 --no-index --no-progress --threads $th >/dev/null 2>>log"
lora="--lora r=8,alpha=16,targets=q_proj,v_proj --epochs 1 --batch 8 --seq 64 --no-progress --threads $th"
t "LoRA fine-tune, 1 epoch, index built" sh -c "mf-train --base base --data data.ndjson -o ads/a $lora >/dev/null 2>>log"
t "LoRA fine-tune, 1 epoch, --no-index" sh -c "mf-train --base base --data data.ndjson -o ads/noidx $lora --no-index >/dev/null 2>>log"
t "LoRA fine-tune, 1 epoch, --index-at last-epoch" sh -c "mf-train --base base --data data.ndjson -o ads/cap $lora \
	--index-at last-epoch >/dev/null 2>>log"
cmp ads/cap/adapter_model.safetensors ads/noidx/adapter_model.safetensors || echo "attr.sh: the captured run's weights differ" >&2
rm -rf ads/noidx ads/cap
printf '%s\n' '{"prompt":"7: This License","max_tokens":8,"model":"a","temperature":0}' > req.ndjson
t "lora-serve: one answer of 8 tokens" sh -c "lora-serve --base base --adapters ads --threads $th --events ev.ndjson < req.ndjson > out.ndjson"
t "attr-score: that answer over the $N records" sh -c "attr-score --model base --adapter ads/a --data data.ndjson --threads $th < ev.ndjson > attr.ndjson"
t "attr-score --verify of that record" sh -c "attr-score --verify --model base --adapter ads/a --data data.ndjson --threads $th < attr.ndjson"
echo "index $(du -k ads/a/attribution.idx | cut -f1) KB, span index $(du -k ads/a/attribution.idx.span | cut -f1) KB, adapter $(du -k ads/a/adapter_model.safetensors | cut -f1) KB, base $(du -k base/model.safetensors | cut -f1) KB"
grep -o '"contributors":\[{[^]]*' attr.ndjson | cut -c1-120
