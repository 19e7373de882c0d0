#!/bin/bash
# attr-score --method exact --samples K: the mean derivative over K seeded
# half-runs; the same bytes on every run and thread count, K in the
# records, --verify re-runs it and catches a changed byte, and the run's own
# derivative (no --samples) is unchanged beside it.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
exact_fixture
args="--method exact --model base --adapter ad --data data.ndjson --top 24"
check "score two events over 3 half-runs" sh -c "attr-score $args --samples 3 < ev.ndjson > s3"
check_eq "one record per event" "$(wc -l < s3)" 2
check "the same bytes again" sh -c "attr-score $args --samples 3 < ev.ndjson | cmp - s3"
check "and with one thread" sh -c "attr-score $args --samples 3 --threads 1 < ev.ndjson | cmp - s3"
check "and storing the state every step (the same scores)" sh -c "attr-score $args --samples 3 --every 1 < ev.ndjson > s3e && "'python3 -c "
import json, sys
a = [json.loads(l) for l in open(\"s3\")]; b = [json.loads(l) for l in open(\"s3e\")]
sys.exit(any(x[\"scores_digest\"] != y[\"scores_digest\"] for x, y in zip(a, b)))"'
check_eq "the records say K and what the score is" \
	"$(python3 -c 'import json; r = json.loads(open("s3").readline()); print(r["params"]["exact"]["samples"], r["params"]["exact"]["score"])')" \
	"3 -mean_k dQ/deps at half-run k"
attr-score $args < ev.ndjson > e0
attr-score $args --samples 1 < ev.ndjson > s1
check_eq "the run's own derivative has no samples member" \
	"$(python3 -c 'import json; print("samples" in json.loads(open("e0").readline())["params"]["exact"])')" False
check_eq "one half-run, three and the run itself score differently" \
	"$(python3 -c '
import json
d = [json.loads(open(f).readline())["scores_digest"] for f in ("e0", "s1", "s3")]
print(len(set(d)))')" 3
# the mean over K half-runs: K = 3 from the scores of K = 1 and of the halves 2 and 3 is not checkable from
# outside, but the ranking of the record the answer was copied from is: it helps on average
check_eq "the record the answer was copied from scores above 0" \
	"$(python3 -c '
import json
r = json.loads(open("s3").readline())
src = r["spans"][0]["records"][0]["record"]
print([t["score"] > 0 for t in r["top"] if t["record"] == src])')" "[True]"
check "--verify re-runs the half-runs" attr-score --method exact --verify --model base --adapter ad --data data.ndjson s3
python3 - <<'EOF'
l = open("s3").read()
i = l.index('"score":') + len('"score":0.00')
open("s3b", "w").write(l[:i] + ("3" if l[i] != "3" else "4") + l[i + 1:])
open("s3k", "w").write(l.replace('"samples":3', '"samples":2'))
EOF
check_rc 1 "--verify catches a changed byte of the output" attr-score --method exact --verify --model base --adapter ad --data data.ndjson s3b
check_rc 1 "and a changed number of half-runs" attr-score --method exact --verify --model base --adapter ad --data data.ndjson s3k
sed '3s/copper/Copper/' data.ndjson > data2.ndjson
check_rc 1 "and a changed byte of the training records" attr-score --method exact --verify --model base --adapter ad --data data2.ndjson s3
check_rc 64 "--samples 0 is refused" attr-score $args --samples 0 < ev.ndjson
check_rc 64 "--samples without --method exact" attr-score --model base --adapter ad --data data.ndjson --samples 2 < ev.ndjson
finish
