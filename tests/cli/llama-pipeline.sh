#!/bin/bash
# A Llama-architecture model (grouped-query attention, untied head) through
# the pipeline: trained from a Hugging Face config.json, a LoRA adapter on
# its attention and MLP projections, served with the adapter, attributed
# and re-verified; and a config this implementation does not compute refused.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
cat > cfg.json <<'J'
{"architectures":["LlamaForCausalLM"],"model_type":"llama","num_hidden_layers":2,"hidden_size":32,
 "intermediate_size":64,"num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":64,
 "vocab_size":257,"rms_norm_eps":1e-5,"rope_theta":10000.0,"tie_word_embeddings":false,"hidden_act":"silu"}
J
for i in $(seq 1 24); do printf '{"text":"fact %d: the word %d is w%d","contributor":"c%d"}\n' "$i" "$i" $((i * 7919 % 1000)) $((i % 3)); done > data.ndjson
check "mf-train trains a Llama config from scratch" mf-train --init cfg.json --data data.ndjson -o base --steps 40 --batch 4 --seq 40
check_eq "the saved config is Llama's" "$(grep -o '"architectures":\["[A-Za-z]*"\]' base/config.json)" '"architectures":["LlamaForCausalLM"]'
check "a LoRA adapter on q_proj, v_proj, down_proj" mf-train --base base --data data.ndjson -o ads/a \
	--lora r=4,alpha=8,targets=q_proj,v_proj,down_proj --steps 30 --batch 4 --seq 40
check_eq "adapter_config.json names the Llama modules" \
	"$(grep -o '"target_modules":\[[^]]*\]' ads/a/adapter_config.json)" '"target_modules":["q_proj","v_proj","down_proj"]'
check_rc 64 "GPT-2's c_attn is refused on a Llama base" mf-train --base base --data data.ndjson -o ads/bad --lora targets=c_attn --steps 1
printf '%s\n' '{"prompt":"fact 3: the word 3","max_tokens":6,"model":"a","temperature":0}' \
	'{"prompt":"fact 5: the word","max_tokens":6,"model":"base","temperature":0}' > req.ndjson
check "lora-serve answers with the base and the adapter" sh -c 'lora-serve --base base --adapters ads --events ev.ndjson < req.ndjson > out.ndjson'
check_eq "two answers" "$(grep -c '"output_tokens"' out.ndjson)" 2
lora-serve --base base --adapters ads < req.ndjson > out2.ndjson 2>/dev/null
check "the same answers again" cmp out.ndjson out2.ndjson
grep '"adapter":"a"' ev.ndjson > ev-a.ndjson
check "attr-score attributes the adapter's answer" sh -c 'attr-score --model base --adapter ads/a --data data.ndjson < ev-a.ndjson > attr.ndjson'
check "the attribution ranks records" grep -q '"top":\[{"contributor":"c' attr.ndjson
check "and shares the answer among contributors" grep -q '"contributors":\[{' attr.ndjson
check "attr-score --verify re-runs it bit for bit" sh -c 'attr-score --verify --model base --adapter ads/a --data data.ndjson < attr.ndjson'
sed 's/"silu"/"gelu"/' cfg.json > bad.json
check_rc 65 "a hidden_act other than silu is refused" mf-train --init bad.json --data data.ndjson -o x --steps 1
out=$(mf-train --init bad.json --data data.ndjson -o x --steps 1 2>&1)
case "$out" in *hidden_act*) r=0 ;; *) r=1 ;; esac
result $r "and the message names the field"
finish
