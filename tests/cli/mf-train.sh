#!/bin/bash
# mf-train: deterministic bytes, LoRA lowers a second corpus's loss with the
# base untouched, PEFT's adapter layout, SIGINT and --resume to identical
# bytes, merging, clean errors on bad input.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
awk 'BEGIN { for (i = 0; i < 120; i++) printf "{\"text\":\"The tide clock number %d rings at %d and the harbour %s.\",\"contributor\":\"c%d\"}\n", i, i % 12, (i % 2 ? "opens" : "closes"), i % 3 }' > a.ndjson
awk 'BEGIN { for (i = 0; i < 80; i++) printf "{\"prompt\":\"Capital of isle %d? \",\"completion\":\"Port %c%c.\"}\n", i, 65 + i % 26, 97 + (i * 7) % 26 }' > b.ndjson
echo '{"n_layer":2,"n_head":2,"n_embd":32,"n_positions":64,"vocab_size":257}' > cfg.json
# fixed bytes below: float32 products (attr-score rebuilds the index in float32)
args="--data a.ndjson --steps 30 --batch 4 --seq 64 --lr 3e-3 --no-progress --precision fp32"
# the attribution index is built unless --no-index; most runs below skip it
check "train from scratch" mf-train --init cfg.json $args -o m1 --metrics m1.ndjson
check "writes config, weights, tokenizer, manifest and the attribution index" test -s m1/config.json -a -s m1/model.safetensors -a -s m1/tokenizer.json -a -s m1/training.json -a -s m1/attribution.idx
check "which attr-score opens" sh -c 'echo "{\"id\":\"q\",\"prompt\":\"The tide clock\",\"completion\":\" number 7\"}" | attr-score --model m1 --data a.ndjson --top 3 | grep -q "\"records\":\[{"' 
mf-train --init cfg.json $args -o m2 >/dev/null
check "same data, config, seed and threads: identical weights" cmp m1/model.safetensors m2/model.safetensors
check "and an identical manifest" cmp m1/training.json m2/training.json
check "and an identical attribution index" cmp m1/attribution.idx m2/attribution.idx
mf-train --init cfg.json $args --seed 2 --no-index -o m3 >/dev/null
check "another seed gives other weights" sh -c '! cmp -s m1/model.safetensors m3/model.safetensors'
check_eq "one metrics line per step" "$(wc -l < m1.ndjson)" 30
check "metrics carry step, loss, lr, tokens_per_s" grep -q '"step":30,"loss":[0-9.]*,"lr":[0-9.e-]*,"grad_norm":[0-9.e-]*,"tokens_per_s":' m1.ndjson
check "the manifest keeps each record's contributor" grep -q '"contributor":"c2","record":"sha256:' m1/training.json
check "and the training-set root and order digest" grep -q '"records_order_digest":"sha256:.*"training_root":"' m1/training.json
first=$(sed -n 1p m1.ndjson | sed 's/.*"loss":\([0-9.]*\).*/\1/')
last=$(sed -n 30p m1.ndjson | sed 's/.*"loss":\([0-9.]*\).*/\1/')
check "the loss falls ($first -> $last)" awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a * 0.8) }'

sha256sum m1/model.safetensors > base.sum
before=$(mf-train --precision fp32 --eval --base m1 --data b.ndjson --seq 64 | sed 's/.*"loss":\([0-9.]*\).*/\1/')
check "LoRA fine-tune on a second corpus" mf-train --precision fp32 --base m1 --lora r=4,alpha=8,targets=c_attn,c_proj,c_fc \
	--data b.ndjson --steps 40 --batch 4 --seq 64 --lr 5e-3 --no-progress --no-index -o ad
after=$(mf-train --precision fp32 --eval --base m1 --adapter ad --data b.ndjson --seq 64 | sed 's/.*"loss":\([0-9.]*\).*/\1/')
check "lowers that corpus's loss ($before -> $after)" awk -v a="$before" -v b="$after" 'BEGIN { exit !(b < a) }'
check "while the base file stays bit-identical" sha256sum -c --quiet base.sum
check "PEFT config fields" sh -c 'grep -q "\"peft_type\":\"LORA\"" ad/adapter_config.json && grep -q "\"fan_in_fan_out\":true" ad/adapter_config.json && grep -q "\"r\":4" ad/adapter_config.json && grep -q "\"lora_alpha\":8" ad/adapter_config.json'
python3 - ad/adapter_model.safetensors > keys <<'PY'
import json, struct, sys
f = open(sys.argv[1], "rb")
n = struct.unpack("<Q", f.read(8))[0]
h = json.loads(f.read(n))
for k, v in sorted(h.items()):
    if k != "__metadata__":
        print(k, v["dtype"], v["shape"])
PY
check "PEFT tensor names and shapes" grep -q '^base_model.model.transformer.h.1.mlp.c_proj.lora_B.weight F32 \[32, 4\]$' keys
check "lora_A is [r, in]" grep -q '^base_model.model.transformer.h.0.mlp.c_fc.lora_A.weight F32 \[4, 32\]$' keys
check_eq "16 LoRA tensors for 2 layers x 4 modules" "$(wc -l < keys)" 16

# SIGINT: a checkpoint, exit 75; --resume ends with the bytes of a run never interrupted
echo '{"n_layer":2,"n_head":2,"n_embd":64,"n_positions":64,"vocab_size":257}' > big.json
long="--init big.json --data a.ndjson --steps 400 --batch 8 --seq 64 --lr 1e-3 --checkpoint-every 10 --no-progress --no-index"
mf-train $long -o r2 > /dev/null
mf-train $long -o r1 > /dev/null 2> int.err &
pid=$!
i=0
while [ ! -e r1/checkpoint.safetensors ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
kill -INT $pid
wait $pid
check_eq "SIGINT: exit status 75" "$?" 75
check "with a checkpoint and a message naming --resume" sh -c 'test -s r1/checkpoint.safetensors && grep -q -- "--resume" int.err && test ! -e r1/model.safetensors'
check_rc 65 "--resume with other hyper-parameters is refused" mf-train $long --lr 2e-3 --resume -o r1
check "--resume continues" mf-train $long --resume -o r1
check "to the very bytes of the uninterrupted run" sh -c 'cmp r1/model.safetensors r2/model.safetensors && cmp r1/training.json r2/training.json'
check "and removes the checkpoint" test ! -e r1/checkpoint.safetensors
check_rc 66 "--resume with nothing to resume" mf-train $long --resume -o r3

# merge: base + adapter folded gives the adapter's loss
check "--merge" mf-train --merge --base m1 --adapter ad -o merged
merged=$(mf-train --precision fp32 --eval --base merged --data b.ndjson --seq 64 | sed 's/.*"loss":\([0-9.]*\).*/\1/')
check "the merged model has the adapter's loss ($merged vs $after)" awk -v a="$merged" -v b="$after" 'BEGIN { d = a - b; exit !(d < 1e-4 && d > -1e-4) }'

# bad input
head -c 500 m1/model.safetensors > trunc.safetensors
mkdir bad && cp m1/config.json bad/ && cp trunc.safetensors bad/model.safetensors
check_rc 65 "a truncated safetensors file" mf-train --eval --base bad --data a.ndjson
mkdir mism && cp m1/model.safetensors mism/ && echo '{"n_layer":3,"n_head":2,"n_embd":32,"n_positions":64,"vocab_size":257}' > mism/config.json
check_rc 65 "config and weights that disagree" mf-train --eval --base mism --data a.ndjson
: > empty.ndjson
check_rc 65 "an empty dataset" mf-train --init cfg.json --data empty.ndjson --steps 1 -o x
check_rc 65 "records with neither text nor prompt" sh -c 'echo "{\"title\":\"x\"}" > odd.ndjson; mf-train --init cfg.json --data odd.ndjson --steps 1 -o x'
check_rc 64 "--seq beyond n_positions" mf-train --init cfg.json --data a.ndjson --steps 1 --seq 65 -o x
check_rc 64 "missing -o" mf-train --init cfg.json --data a.ndjson --steps 1
check_rc 66 "a missing base" mf-train --eval --base nowhere --data a.ndjson
check_rc 66 "a missing data file" mf-train --init cfg.json --data nothing.ndjson --steps 1 -o x
check_rc 64 "an unknown LoRA target" mf-train --base m1 --lora r=4,targets=q_proj --data b.ndjson --steps 1 -o x
check_rc 65 "a config file that is not JSON" sh -c 'echo "n_layer: 2" > bad.json; mf-train --init bad.json --data a.ndjson --steps 1 -o x'
check_rc 65 "a vocabulary smaller than the tokenizer's" sh -c 'echo "{\"n_layer\":1,\"n_head\":1,\"n_embd\":8,\"n_positions\":8,\"vocab_size\":100}" > v.json; mf-train --init v.json --data a.ndjson --steps 1 -o x'
check_rc 65 "an adapter for another base" sh -c 'mf-train --init big.json --data a.ndjson --steps 1 --seq 8 --no-index -o other >/dev/null && mf-train --eval --base other --adapter ad --data b.ndjson --seq 8'
check_eq "--epochs 2 over 120 records of batch 8: 30 steps" "$(mf-train --init cfg.json --data a.ndjson --epochs 2 --batch 8 --seq 8 --no-index -o ep | sed 's/.*"steps":\([0-9]*\).*/\1/')" 30
check "--no-index writes no index" sh -c 'mf-train --init cfg.json --data a.ndjson --steps 1 --seq 8 --no-index -o ni >/dev/null && test ! -e ni/attribution.idx' 
# records longer than --seq: counted and named, then cut, split into windows or refused
args8="--init cfg.json --data a.ndjson --steps 4 --batch 4 --seq 16 --no-progress --precision fp32"
check "records longer than --seq are cut by default" sh -c "mf-train $args8 -o lt >/dev/null 2>lt.err"
check_eq "with a warning naming the count and --long" "$(cat lt.err)" "mf-train: warning: 120 of 120 records are longer than --seq 16 and were cut; see --long"
check "the count is in training.json" grep -q '"long":{"mode":"truncate","records":120,"rows":120,"seq":16}' lt/training.json
mf-train $args8 --long truncate -o lt2 >/dev/null 2>&1
check "--long truncate is the default: the same weights" cmp lt/model.safetensors lt2/model.safetensors
mf-train --init cfg.json --data a.ndjson --steps 4 --batch 4 --seq 64 --no-progress --no-index -o s64 >/dev/null 2>s64.err
mf-train --init cfg.json --data a.ndjson --steps 4 --batch 4 --seq 64 --no-progress --no-index --long split -o s64s >/dev/null 2>&1
check "no long records: no warning, and split changes nothing" sh -c 'test ! -s s64.err && cmp s64/model.safetensors s64s/model.safetensors'
check "--long split" sh -c "mf-train $args8 --long split -o ls >ls.out 2>ls.err"
check "warns that they were split" grep -q "120 of 120 records are longer than --seq 16 and were split into windows" ls.err
check "more rows than records, the same records" sh -c "grep -q '\"long\":{\"mode\":\"split\",\"records\":120,\"rows\":[0-9]*,\"seq\":16}' ls/training.json && ! grep -q '\"rows\":120,' ls/training.json && grep -q '\"records_count\":120' ls/training.json"
check "the same training root as cutting: windows keep their record's id" sh -c "test \"\$(grep -o '\"training_root\":\"[^\"]*\"' ls/training.json)\" = \"\$(grep -o '\"training_root\":\"[^\"]*\"' lt/training.json)\""
check "the index has one row per record, which attr-score opens" sh -c 'echo "{\"id\":\"q\",\"prompt\":\"The tide clock\",\"completion\":\" number 7\"}" | attr-score --model ls --data a.ndjson --top 3 | grep -q "\"top\":\[{"'
check "attr-score --build-index rebuilds it from training.json's mode to the same bytes" sh -c 'attr-score --build-index --model ls --data a.ndjson --batch 4 --index ls.idx && cmp ls.idx ls/attribution.idx'
check_rc 65 "--long error refuses long records" mf-train $args8 --long error -o le
check "naming the first" sh -c "mf-train $args8 --long error -o le 2>&1 | grep -q 'mf-train: error: a.ndjson: record 1 (sha256:[0-9a-f]*) has [0-9]* tokens, more than --seq 16 takes; see --long'"
check_rc 64 "an unknown --long mode" mf-train $args8 --long wrap -o le
# With a store: a datanet snapshot, the output's files as objects, a model entry
mkdir st && cd st || exit 70
trail-log init --origin mf-train.test/log >/dev/null
for k in owner alice; do trail-key generate $k >/dev/null; done
printf '{"rules":{"gopher-word-count":{"min":3},"c4-sentences":{"min":1},"gopher-stop-words":{"min":0}}}\n' > policy.json
datanet-add --create isles --schema text --owner owner.key --policy policy.json --license CC-BY-4.0 >/dev/null
head -40 ../a.ndjson | sed 's/,"contributor":"c[0-9]"//' > recs.ndjson
bundle=$(datanet-add isles --key alice.key recs.ndjson | sed 's/.*"bundle":"\([^"]*\)".*/\1/')
datanet-validate --datanet isles --key owner.key --record --approve "$bundle" >/dev/null
check "train on a datanet snapshot" mf-train --init ../cfg.json --datanet isles --steps 3 --batch 4 --seq 32 --name tide --no-progress -o sm
check "the manifest names the datanet and each record's contributor key" sh -c 'grep -q "\"datanet\":{\"name\":\"isles\",\"tree_size\":" sm/training.json && grep -q "\"contributor\":\"alice+" sm/training.json'
check "a model entry in the ledger naming the weights" sh -c 'trail-log show | tail -1 | grep -q "\"type\":\"model\"" && trail-log show | tail -1 | grep -q "$(sha256sum sm/model.safetensors | cut -c1-64)"'
check "the ledger verifies, objects included" trail-log verify
cd .. || exit 70

# Under make check-full: real text from Debian (fortunes, then the Jargon File)
if [ -n "${TRAIL_FULL:-}" ] && [ -e /usr/share/games/fortunes/fortunes ] && [ -e /usr/share/dictd/jargon.dict.dz ]; then
	for c in fortunes computers science; do sh "$TRAIL_TOP/examples/debian-text.sh" fortunes $c; done > all.ndjson
	awk 'NR % 10 == 0' all.ndjson > held.ndjson
	awk 'NR % 10 != 0' all.ndjson > train.ndjson
	sh "$TRAIL_TOP/examples/debian-text.sh" jargon a-b > jargon.ndjson
	awk 'NR % 10 == 0' jargon.ndjson > jheld.ndjson
	awk 'NR % 10 != 0' jargon.ndjson > jtrain.ndjson
	echo '{"n_layer":2,"n_head":4,"n_embd":96,"n_positions":128,"vocab_size":257}' > text.json
	check "train from scratch on fortunes" mf-train --init text.json --data train.ndjson --steps 300 --batch 8 --seq 128 \
		--lr 3e-3 --no-progress --no-index -o text
	held=$(mf-train --eval --base text --data held.ndjson --seq 128 | sed 's/.*"loss":\([0-9.]*\).*/\1/')
	check "held-out fortunes loss $held nats/byte < 2.6 (2 layers, 300 steps; bench/RESULTS.md has a longer run)" awk -v a="$held" 'BEGIN { exit !(a < 2.6) }'
	sha256sum text/model.safetensors > text.sum
	jb=$(mf-train --eval --base text --data jheld.ndjson --seq 128 | sed 's/.*"loss":\([0-9.]*\).*/\1/')
	check "LoRA on the Jargon File" mf-train --base text --lora r=8,alpha=16 --data jtrain.ndjson --steps 100 --batch 8 \
		--seq 128 --lr 3e-3 --no-progress --no-index -o jad
	ja=$(mf-train --eval --base text --adapter jad --data jheld.ndjson --seq 128 | sed 's/.*"loss":\([0-9.]*\).*/\1/')
	check "lowers the held-out Jargon loss ($jb -> $ja)" awk -v a="$jb" -v b="$ja" 'BEGIN { exit !(b < a - 0.1) }'
	check "with the base bit-identical" sha256sum -c --quiet text.sum
fi
finish
