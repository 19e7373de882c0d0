#!/bin/bash
# mf-train --index-at last-epoch: the index's rows captured in each record's
# last training step. The weights are those of a run without the index; the
# bytes do not depend on the thread count; each row is its own record's
# (at weights that hardly move, the scores are the final-weights index's);
# rows no step visited are taken at the final weights; split records; the
# default stays the final-weights pass that attr-score --build-index makes.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
awk 'BEGIN { for (i = 0; i < 30; i++) printf "{\"text\":\"The tide clock number %d rings at %d and the harbour %s.\",\"contributor\":\"c%d\"}\n", i, i % 12, (i % 2 ? "opens" : "closes"), i % 3 }' > a.ndjson
echo '{"n_layer":2,"n_head":2,"n_embd":32,"n_positions":64,"vocab_size":257}' > cfg.json
echo '{"id":"q","prompt":"The tide clock","completion":" number 7 rings"}' > ev.ndjson
p="--no-progress --precision fp32"
mf-train --init cfg.json --data a.ndjson --steps 20 --batch 4 --seq 64 --lr 3e-3 $p --no-index -o base > /dev/null
# 30 records in batches of 4, 2 epochs: 16 steps, the last one reaching into a third epoch
lora="--base base --lora r=4,alpha=8 --data a.ndjson --epochs 2 --batch 4 --seq 64 --lr 3e-3 $p"
check "a LoRA run with --index-at last-epoch" sh -c "mf-train $lora --index-at last-epoch --threads 1 -o c1 > c1.out"
check "every row captured in training, none at the final weights" grep -q '"index_rows":{"captured":30,"final":0}' c1.out
check "writes the index and its span index" test -s c1/attribution.idx -a -s c1/attribution.idx.span
check "training.json says which gradients the index holds" grep -q '"index":{"at":"last-epoch"}' c1/training.json
mf-train $lora --no-index -o n1 > /dev/null
check "the weights are those of a run without the index" cmp c1/adapter_model.safetensors n1/adapter_model.safetensors
mf-train $lora --index-at last-epoch --threads 2 -o c2 > /dev/null
mf-train $lora --index-at last-epoch --threads 4 -o c4 > /dev/null
check "the same index bytes on 1, 2 and 4 threads" sh -c 'cmp c1/attribution.idx c2/attribution.idx && cmp c1/attribution.idx c4/attribution.idx && cmp c1/attribution.idx.span c4/attribution.idx.span'
mf-train $lora -o f1 > /dev/null
check "the default is the final weights: no index member in training.json" sh -c '! grep -q "\"index\":" f1/training.json'
check "and attr-score --build-index rebuilds that index to the same bytes" sh -c 'attr-score --build-index --model base --adapter f1 --data a.ndjson --batch 4 --index f1.idx && cmp f1.idx f1/attribution.idx'
check "the captured index is another one" sh -c '! cmp -s f1/attribution.idx c1/attribution.idx'
check "attr-score scores with the captured index" sh -c 'attr-score --precision fp32 --model base --adapter c1 --data a.ndjson --top 3 < ev.ndjson > s1 && grep -q "\"top\":\[{" s1'
check "and verifies what it scored" sh -c 'attr-score --precision fp32 --verify --model base --adapter c1 --data a.ndjson < s1'
check_rc 64 "--index-at takes final or last-epoch" mf-train $lora --index-at first -o bad

# at weights that hardly move (lr 1e-9), each captured row is its record's gradient at the final weights
# within rounding: the same ranking and scores as the final-weights index, record by record
still="--init cfg.json --data a.ndjson --epochs 2 --batch 4 --seq 64 --lr 1e-9 --warmup 0 $p"
mf-train $still --index-at last-epoch -o sc > /dev/null
mf-train $still -o sf > /dev/null
check "a whole model's weights too are those of the final-weights run" cmp sc/model.safetensors sf/model.safetensors
top="--precision fp32 --method graddot --top 30 --data a.ndjson"
attr-score $top --model sc < ev.ndjson > sc.out
attr-score $top --model sf < ev.ndjson > sf.out
cat > same.py <<'PY'
import json, sys
a, b = (json.loads(open(f).read())["top"] for f in sys.argv[1:3])
assert len(a) == len(b) == 30, (len(a), len(b))
sa, sb = ({r["record"]: r["score"] for r in x} for x in (a, b))
assert sa.keys() == sb.keys()
scale = max(abs(v) for v in sb.values())
bad = [k for k in sa if abs(sa[k] - sb[k]) > 1e-4 * scale]
assert not bad, (len(bad), [(sa[k], sb[k]) for k in bad[:3]])
PY
check "rows land on their own records: scores as at the final weights (30 records)" python3 same.py sc.out sf.out

# fewer steps than an epoch: the rows no step visited come from the final weights
mf-train --base base --lora r=4,alpha=8 --data a.ndjson --steps 5 --batch 4 --seq 64 --lr 3e-3 $p --index-at last-epoch \
	-o short > short.out
check "5 steps of 4 over 30 records: 20 rows captured, 10 at the final weights" grep -q '"index_rows":{"captured":20,"final":10}' short.out
check "which attr-score opens" sh -c 'attr-score --precision fp32 --model base --adapter short --data a.ndjson --top 3 < ev.ndjson | grep -q "\"top\":\[{"'

# records split into windows: a record's row sums its windows', each captured at its own step
awk 'BEGIN { for (i = 0; i < 12; i++) { printf "{\"text\":\"Record %d:", i; for (k = 0; k <= i % 4; k++) printf " the tide clock number %d rings at %d and the harbour opens.", i, k; printf "\"}\n" } }' > long.ndjson
split="--base base --lora r=4,alpha=8 --data long.ndjson --epochs 2 --batch 4 --seq 32 --long split --lr 3e-3 $p"
mf-train $split --index-at last-epoch --threads 1 -o w1 > w1.out 2> w1.err
mf-train $split --index-at last-epoch --threads 2 -o w2 > /dev/null 2>&1
check "split records: every window captured" sh -c 'grep -q "\"index_rows\":{\"captured\":[0-9]*,\"final\":0}" w1.out && grep -q "split into windows" w1.err'
check "more windows than records" sh -c '[ "$(sed "s/.*\"captured\":\([0-9]*\).*/\1/" w1.out)" -gt 12 ]'
check "the same bytes on 1 and 2 threads" cmp w1/attribution.idx w2/attribution.idx
check "which attr-score opens" sh -c 'attr-score --precision fp32 --model base --adapter w1 --data long.ndjson --top 3 < ev.ndjson | grep -q "\"top\":\[{"'
finish
