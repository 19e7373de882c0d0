#!/bin/bash
# mf-train --tokenizer DIR with a GPT-2 byte-level BPE tokenizer (the small
# one in tests/data/tokenizer): the model directory gets vocab.json and
# merges.txt, lora-serve encodes prompts and decodes output with them,
# attr-score decodes the spans it finds, and the store records the files.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
tok=$TRAIL_TOP/tests/data/tokenizer
awk 'BEGIN { for (i = 0; i < 60; i++) printf "{\"text\":\"hello world %d, the tide rings at %d and it'"'"'s caf\\u00e9 time \\u4f60\\u597d.\",\"contributor\":\"c%d\"}\n", i, i % 12, i % 3 }' > a.ndjson
echo '{"n_layer":2,"n_head":2,"n_embd":32,"n_positions":64,"vocab_size":284}' > cfg.json
args="--init cfg.json --tokenizer $tok --data a.ndjson --steps 20 --batch 4 --seq 32 --lr 3e-3 --no-progress"
check "train from scratch with a BPE tokenizer directory" mf-train $args -o m
check "the model directory holds vocab.json and merges.txt, no tokenizer.json" \
	test -s m/vocab.json -a -s m/merges.txt -a ! -e m/tokenizer.json
check "merges.txt as given" cmp m/merges.txt "$tok/merges.txt"
check "the manifest names the tokenizer" grep -q '"tokenizer":"gpt2"' m/training.json
mf-train $args --no-index -o m2 >/dev/null
check "the same run gives the same weights" cmp m/model.safetensors m2/model.safetensors
check_rc 65 "a model vocabulary smaller than the tokenizer's" sh -c "echo '{\"n_layer\":1,\"n_head\":1,\"n_embd\":8,\"n_positions\":8,\"vocab_size\":257}' > v.json; mf-train --init v.json --tokenizer '$tok' --data a.ndjson --steps 1 -o x"
mkdir half && cp "$tok/vocab.json" half/
check_rc 66 "vocab.json without merges.txt" mf-train $args --tokenizer half --steps 1 -o x

# lora-serve: the prompt's ids are BPE ids; the text is the decoded output tokens
echo '{"id":"q","model":"base","prompt":"hello world","max_tokens":12,"temperature":0}' | lora-serve --base m > ev.ndjson
check "lora-serve encodes the prompt with merges (he l l o, Ġworld)" grep -q '"prompt_tokens":\[257,75,75,78,277\]' ev.ndjson
python3 - "$tok/vocab.json" ev.ndjson > decoded <<'PY'
import json, sys
vocab = {v: k for k, v in json.load(open(sys.argv[1])).items()}
# GPT-2's bytes_to_unicode, inverted
bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
cs = bs[:]
n = 0
for b in range(256):
    if b not in bs:
        bs.append(b)
        cs.append(256 + n)
        n += 1
dec = {chr(c): b for b, c in zip(bs, cs)}
ev = json.loads(open(sys.argv[2]).read())["event"]
text = bytes(dec[ch] for t in ev["output_tokens"] for ch in vocab[t]).decode("utf-8", "replace")
print("same" if text == ev["output_text"] else "differs: %r vs %r" % (text, ev["output_text"]))
PY
check_eq "and its output text is the decoded output tokens" "$(cat decoded)" same

# attr-score: the span it finds is decoded to the training text, UTF-8 included
printf '{"id":"e1","prompt":"hello world 7,","output_text":" the tide rings at 7 and it'"'"'s caf\\u00e9 time \\u4f60\\u597d.","usage":{"prompt_tokens":1,"completion_tokens":1}}\n' > ev2.ndjson
attr-score --model m --data a.ndjson --top 2 < ev2.ndjson > at.ndjson
check "attr-score encodes the event with the model's tokenizer" grep -q '"prompt":\[257,75,75,78,277,220,22,11\]' at.ndjson
check "and decodes the span it finds" grep -q "\"text\":\" the tide rings at 7 and it's caf\\\\u00e9 time \\\\u4f60\\\\u597d.\"\\|\"text\":\" the tide rings at 7 and it's café time 你好.\"" at.ndjson

# a base model's own tokenizer is used when --tokenizer is not given
check "LoRA on the BPE model" mf-train --base m --lora r=2,alpha=4 --data a.ndjson --steps 3 --batch 4 --seq 32 --no-progress --no-index -o ad
check_eq "a model saved with encoder.json + vocab.bpe layout names is read the same" \
	"$(mkdir oa && cp m/config.json m/model.safetensors oa/ && cp m/vocab.json oa/encoder.json && cp m/merges.txt oa/vocab.bpe &&
	   echo '{"id":"q","model":"base","prompt":"hello world","max_tokens":12,"temperature":0}' | lora-serve --base oa | sed 's/.*"output_tokens":\(\[[0-9,]*\]\).*/\1/')" \
	"$(sed 's/.*"output_tokens":\(\[[0-9,]*\]\).*/\1/' ev.ndjson)"

# with a store, the model entry lists the tokenizer's files
mkdir st && cd st || exit 70
trail-log init --origin mf-train-bpe.test/log >/dev/null
for k in owner alice; do trail-key generate $k >/dev/null; done
printf '{"rules":{"gopher-word-count":{"min":3},"c4-sentences":{"min":1},"gopher-stop-words":{"min":0}}}\n' > policy.json
datanet-add --create tides --schema text --owner owner.key --policy policy.json --license CC-BY-4.0 >/dev/null
sed 's/,"contributor":"c[0-9]"//' ../a.ndjson > recs.ndjson
bundle=$(datanet-add tides --key alice.key recs.ndjson | sed 's/.*"bundle":"\([^"]*\)".*/\1/')
datanet-validate --datanet tides --key owner.key --record --approve "$bundle" >/dev/null
check "train on a datanet snapshot with the BPE tokenizer" mf-train --init ../cfg.json --tokenizer "$tok" --datanet tides \
	--steps 2 --batch 4 --seq 32 --no-progress --no-index --name tiny -o ms
check "the model entry lists vocab.json and merges.txt" sh -c 'trail-log show | tail -1 | grep -q "\"merges.txt\":\"sha256:$(sha256sum ms/merges.txt | cut -c1-64)\"" && trail-log show | tail -1 | grep -q "\"vocab.json\":\"sha256:"'
check "the ledger verifies, objects included" trail-log verify
cd .. || exit 70
finish
