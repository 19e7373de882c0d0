#!/bin/bash
# attr-score --method exact: the same bytes on every run and thread count,
# records that say what was replayed, --verify against a changed byte of
# the output, of the records, of the adapter (and of a consistent forgery
# with its own index) and of training.json, and refusals of what it cannot
# replay.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
exact_fixture
args="--method exact --model base --adapter ad --data data.ndjson --top 3"
check "score two events by replaying the run" sh -c "attr-score $args < ev.ndjson > e1"
check_eq "one record per event" "$(wc -l < e1)" 2
check "the same bytes again" sh -c "attr-score $args < ev.ndjson | cmp - e1"
check "and with one thread" sh -c "attr-score $args --threads 1 < ev.ndjson | cmp - e1"
check "and storing the state every step (checkpoints change nothing)" sh -c "attr-score $args --every 1 < ev.ndjson > e-every1 && "'python3 -c "
import json, sys
a = [json.loads(l) for l in open(\"e1\")]; b = [json.loads(l) for l in open(\"e-every1\")]
sys.exit(any(x[\"scores_digest\"] != y[\"scores_digest\"] for x, y in zip(a, b)))"'
check_eq "method exact, with what was replayed" \
	"$(python3 -c 'import json; r = json.loads(open("e1").readline()); print(r["method"], sorted(r["replay"]), r["params"]["exact"]["score"], r["params"]["precision"])')" \
	"exact ['adapter', 'model', 'records_order_digest', 'rows', 'settings', 'steps', 'training', 'training_root'] -dQ/deps fp32"
check_eq "the replayed settings are the run's" "$(python3 -c 'import json; print(json.loads(open("e1").readline())["replay"]["settings"] == json.load(open("ad/training.json"))["settings"])')" True
check_eq "the record the answer was copied from is on top" \
	"$(python3 -c 'import json; r = json.loads(open("e1").readline()); print(r["top"][0]["record"] == r["spans"][0]["records"][0]["record"])')" True
check "--verify re-runs it" attr-score --method exact --verify --model base --adapter ad --data data.ndjson e1
check "and from stdin" sh -c "attr-score --method exact --verify --model base --adapter ad --data data.ndjson < e1"
# one changed byte of the output: a digit of the top score
python3 - <<'EOF'
l = open("e1").read()
i = l.index('"score":') + len('"score":0.00')
open("e2", "w").write(l[:i] + ("3" if l[i] != "3" else "4") + l[i + 1:])
EOF
check_rc 1 "--verify catches a changed byte of the output" attr-score --method exact --verify --model base --adapter ad --data data.ndjson e2
attr-score --method exact --verify --model base --adapter ad --data data.ndjson e2 2> err
check "and names the byte" grep -q "e2:1: byte [0-9]* differs" err
sed '3s/copper/Copper/' data.ndjson > data2.ndjson
check_rc 1 "a changed byte of the training records" attr-score --method exact --verify --model base --adapter ad --data data2.ndjson e1
cp -r ad ad2
python3 -c '
b = bytearray(open("ad2/adapter_model.safetensors", "rb").read()); b[-3] ^= 1
open("ad2/adapter_model.safetensors", "wb").write(b)'
check_rc 1 "a changed byte of the adapter" attr-score --method exact --verify --model base --adapter ad2 --data data.ndjson e1
# a forgery that is consistent with itself: the index rebuilt for the changed weights
attr-score --build-index --model base --adapter ad2 --data data.ndjson >/dev/null 2>&1
attr-score $args --adapter ad2 < ev.ndjson > /dev/null 2> err
check_rc 65 "a changed adapter with its own index does not replay" attr-score $args --adapter ad2 < ev.ndjson
check "and says so" grep -q "does not end at the adapter's weights" err
cp -r ad ad3
sed 's/"lr":0.005/"lr":0.006/' ad/training.json > ad3/training.json
check_rc 1 "a changed byte of training.json" attr-score --method exact --verify --model base --adapter ad3 --data data.ndjson e1
python3 -c '
b = bytearray(open("base/model.safetensors", "rb").read()); b[-5] ^= 1
import os; os.makedirs("base2", exist_ok=True); open("base2/model.safetensors", "wb").write(b)'
cp base/config.json base2/
check_rc 1 "a changed byte of the base model" attr-score --method exact --verify --model base2 --adapter ad --data data.ndjson e1
# refusals
mf-train --base base --lora r=4,alpha=8 --data data.ndjson --steps 4 --batch 4 --seq 48 --precision bf16 --no-progress -o adb >/dev/null 2>&1
if grep -q '"precision":"bf16"' adb/training.json 2>/dev/null; then
	attr-score --method exact --model base --adapter adb --data data.ndjson < ev.ndjson > out 2> err
	check_eq "a bf16 run is refused (unavailable), nothing written" "$?:$(wc -c < out)" "69:0"
	check "and says why" grep -q "replays fp32 runs" err
else
	skip "a bf16 run is refused" "no bf16 training here"
	skip "and says why" "no bf16 training here"
fi
attr-score --method exact --model base --data data.ndjson < ev.ndjson > out 2> err
check_eq "a full-model run is refused" "$?:$(wc -c < out)" "69:0"
check "and says what it replays" grep -q "replays a LoRA fine-tune" err
cp -r ad ad4
python3 -c '
import json; j = json.load(open("ad/training.json")); del j["hyperparameters"]["clip"]
open("ad4/training.json", "w").write(json.dumps(j))'
attr-score $args --adapter ad4 < ev.ndjson > out 2> err
check_eq "training.json without a field is refused" "$?:$(wc -c < out)" "65:0"
check "naming the field" grep -q "hyperparameters.clip is missing" err
check_rc 64 "--precision bf16 with --method exact" attr-score $args --precision bf16 < ev.ndjson
check_rc 64 "--every without --method exact" attr-score --model base --adapter ad --data data.ndjson --every 2 < ev.ndjson
check_rc 64 "--fd-eps out of range" attr-score $args --fd-eps 5 < ev.ndjson
finish
