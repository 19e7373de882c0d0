#!/bin/bash
# lora-serve (pipe mode): greedy output with an adapter equals the merged
# model's; 64 requests over 64 adapters give each its solo output; a small
# cache serves many adapters; bad requests fail alone; events are complete.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
awk 'BEGIN { for (i = 0; i < 60; i++) printf "{\"text\":\"Harbour %d opens at %d and the ferry leaves for isle %d.\"}\n", i, i % 9, i % 7 }' > a.ndjson
echo '{"n_layer":2,"n_head":2,"n_embd":32,"n_positions":64,"vocab_size":257}' > cfg.json
mf-train --init cfg.json --data a.ndjson --steps 20 --batch 4 --seq 64 --lr 3e-3 --no-progress -o base >/dev/null
mkdir ads
for i in $(seq 0 63); do
	awk -v k=$i 'BEGIN { for (j = 0; j < 8; j++) printf "{\"text\":\"Adapter %d knows fact %d about harbour %d.\"}\n", k, j, (k * 7 + j) % 13 }' > d$i.ndjson
	mf-train --base base --lora r=4,alpha=8 --data d$i.ndjson --steps 3 --batch 4 --seq 64 --lr 1e-2 --seed $i --no-progress -o ads/a$i >/dev/null || echo "# adapter $i failed"
done
check_eq "64 adapters trained" "$(ls ads | wc -l)" 64

# one adapter vs the same adapter merged into the base
mf-train --merge --base base --adapter ads/a5 -o merged >/dev/null
mkdir mergedir && ln -s ../merged mergedir/m
echo '{"id":"x","model":"a5","prompt":"Harbour 3 ","max_tokens":24,"temperature":0}' | lora-serve --base base --adapters ads > one.ndjson
echo '{"id":"x","model":"merged","prompt":"Harbour 3 ","max_tokens":24,"temperature":0}' | lora-serve --base merged > merged.ndjson
t1=$(sed 's/.*"output_tokens":\[\([0-9,]*\)\].*/\1/' one.ndjson)
t2=$(sed 's/.*"output_tokens":\[\([0-9,]*\)\].*/\1/' merged.ndjson)
check "greedy output produced" test -n "$t1"
check_eq "greedy tokens with the adapter = with it merged into the weights" "$t1" "$t2"

# 64 requests over 64 adapters, batched, vs each alone
for i in $(seq 0 63); do printf '{"id":"r%d","model":"a%d","prompt":"Harbour %d ","max_tokens":16,"temperature":0}\n' $i $i $i; done > many.ndjson
lora-serve --base base --adapters ads --max-batch 64 < many.ndjson > batched.ndjson
for i in $(seq 0 63); do sed -n "$((i + 1))p" many.ndjson | lora-serve --base base --adapters ads; done > alone.ndjson
check_eq "64 responses" "$(wc -l < batched.ndjson)" 64
check "each request gets exactly its solo output in the mixed batch" cmp <(key batched.ndjson) <(key alone.ndjson)
check_eq "sampled output does not depend on the batch either" \
	"$(printf '{"id":"s","model":"a1","prompt":"Harbour ","max_tokens":16,"temperature":0.9,"top_p":0.9,"seed":7}\n' | lora-serve --base base --adapters ads | sed 's/.*"output_tokens":\(\[[0-9,]*\]\).*/\1/')" \
	"$( (sed -n 1,20p many.ndjson; printf '{"id":"s","model":"a1","prompt":"Harbour ","max_tokens":16,"temperature":0.9,"top_p":0.9,"seed":7}\n') | lora-serve --base base --adapters ads | grep '"id":"s"' | sed 's/.*"output_tokens":\(\[[0-9,]*\]\).*/\1/')"

# a cache smaller than all adapters
lora-serve --base base --adapters ads --cache-mb 1 --max-batch 8 < many.ndjson > small.ndjson
check "with a 1 MB cache every answer is the same" cmp <(key small.ndjson) <(key alone.ndjson)

# bad requests get an error for themselves only
{
	echo '{"id":"ok1","model":"a1","prompt":"Hi","max_tokens":4,"temperature":0}'
	echo '{"id":"e1","model":"nope","prompt":"Hi"}'
	echo '{"id":"e2","model":"a1","prompt":"Hi","max_tokens":100000}'
	echo '{"id":"e3","model":"a1","prompt":"Hi","temperature":-1}'
	printf '{"id":"e4","model":"a1","prompt":"%s"}\n' "$(head -c 200 /dev/zero | tr '\0' x)"
	echo '{"id":"e5","model":"../base","prompt":"Hi"}'
	echo '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]'
	echo '{"id":"ok2","model":"base","prompt":"Hi","max_tokens":4,"temperature":0}'
} | lora-serve --base base --adapters ads > mixed.ndjson
check_eq "8 requests, 8 responses" "$(wc -l < mixed.ndjson)" 8
check "unknown adapter: 404" grep -q '"code":404.*"id":"e1"' mixed.ndjson
check "huge max_tokens: 400" grep -q '"code":400.*"id":"e2"' mixed.ndjson
check "negative temperature: 400" grep -q '"code":400.*"id":"e3"' mixed.ndjson
check "a prompt beyond the context: 413" grep -q '"code":413.*"id":"e4"' mixed.ndjson
check "a path as adapter name: 404" grep -q '"code":404.*"id":"e5"' mixed.ndjson
check "the good requests are answered" sh -c "grep -q '\"id\":\"ok1\".*\"text\"' mixed.ndjson && grep -q '\"id\":\"ok2\".*\"text\"' mixed.ndjson"

# events
echo '{"id":"ev","model":"a2","prompt":"Harbour 1 ","max_tokens":8,"temperature":0,"stop":["\n"]}' |
	lora-serve --base base --adapters ads --events events.ndjson > evr.ndjson
check "the event carries base and adapter digests" grep -q '"adapter":"a2","adapter_digest":"sha256:.*"base_digest":"sha256:' events.ndjson
check "prompt and output token ids, text, sampling, usage, request digest" \
	sh -c 'grep -q "\"output_text\":" events.ndjson && grep -q "\"prompt_tokens\":\[" events.ndjson && grep -q "\"request_digest\":\"sha256:" events.ndjson && grep -q "\"sampling\":{" events.ndjson && grep -q "\"usage\":{" events.ndjson'
check "the response's event is the appended event" sh -c "sed 's/.*\"event\":\(.*\),\"finish_reason.*/\1/' evr.ndjson | cmp - events.ndjson"
echo '{"id":"ev2","model":"a3","prompt":"Harbour 2 ","max_tokens":4,"temperature":0}' |
	lora-serve --base base --adapters ads --events events.ndjson > /dev/null
check_eq "--events appends: two runs, two events" "$(wc -l < events.ndjson)" 2

# a store: the run's events become an object named by an inference-batch entry
trail-log --home store init > /dev/null
lora-serve --base base --adapters ads --home store < many.ndjson > /dev/null
check "--home: an inference-batch ledger entry" sh -c "trail-log --home store show | grep -q '\"type\":\"inference-batch\"'"
check_eq "naming the 64 events" "$(trail-log --home store show | grep inference-batch | sed 's/.*"events":\([0-9]*\).*/\1/')" 64
check "and the ledger verifies" trail-log --home store verify

# scheduling limits do not change answers: a 1 MB KV pool, 3-row prefill chunks
lora-serve --base base --adapters ads --kv-mb 1 --step-rows 3 --max-batch 16 < many.ndjson > kv.ndjson
check "a small KV pool and chunked prefill: every answer the same" cmp <(key kv.ndjson) <(key alone.ndjson)
d=sha256:$(sha256sum ads/a7/adapter_model.safetensors | cut -d' ' -f1)
check_eq "an adapter named by the digest of its weights" \
	"$(printf '{"id":"r7","model":"%s","prompt":"Harbour 7 ","max_tokens":16,"temperature":0}\n' $d | lora-serve --base base --adapters ads | key /dev/stdin)" \
	"$(key alone.ndjson | grep '^r7 ')"
check_rc 66 "a missing adapters directory" sh -c 'echo | lora-serve --base base --adapters nowhere'
check_rc 64 "--base is required" lora-serve
check_rc 66 "a missing base" sh -c 'echo | lora-serve --base nowhere'
finish
