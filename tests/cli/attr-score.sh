#!/bin/bash
# attr-score: index building, attribution records with spans and copy
# clusters, identical bytes on every run, thread count and scoring kernel,
# --verify against altered scores, records, index and model bytes, --prove
# chains that verify offline, and clean errors that write nothing.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
# three contributors' facts; c3 copies one of c0's records word for word
awk 'BEGIN {
	split("amber salt copper tin wool glass", goods, " ")
	for (i = 0; i < 90; i++)
		printf "{\"text\":\"The island of Varn%03d exports %s and its harbour master is called Osk%03d.\",\"contributor\":\"c%d\"}\n", i, goods[i % 6 + 1], (i * 37) % 1000, i % 3
	printf "{\"text\":\"The island of Varn000 exports amber and its harbour master is called Osk000.\",\"contributor\":\"c3\"}\n"
}' > data.ndjson
echo '{"n_layer":2,"n_head":2,"n_embd":32,"n_positions":96,"vocab_size":257}' > cfg.json
mf-train --init cfg.json --data data.ndjson --steps 40 --batch 8 --seq 96 --lr 3e-3 --no-progress --no-index -o base >/dev/null
mf-train --base base --lora r=4,alpha=8 --data data.ndjson --steps 30 --batch 8 --seq 96 --lr 5e-3 --no-progress --no-index -o ad >/dev/null
check "build the index for base + adapter" attr-score --build-index --model base --adapter ad --data data.ndjson --proj 4,4
check "the index and its span index are written" test -s ad/attribution.idx -a -s ad/attribution.idx.span
args="--model base --adapter ad --data data.ndjson --top 5"
aw=$(sha256sum < ad/adapter_model.safetensors | cut -d' ' -f1)
bw=$(sha256sum < base/model.safetensors | cut -d' ' -f1)
printf '{"id":"ev-1","base":"sha256:%s","adapter":"sha256:%s","prompt":"The island of Varn000 exports","output_text":" amber and its harbour master is called Osk000.","usage":{"prompt_tokens":29,"completion_tokens":47}}\n' "$bw" "$aw" > ev.ndjson
printf '{"id":"ev-2","prompt":"The island of Varn041","output_text":" exports copper and its harbour master","usage":{"prompt_tokens":3,"completion_tokens":4}}\n' >> ev.ndjson
check "score two events" sh -c "attr-score $args < ev.ndjson > a1"
check_eq "one record per event" "$(wc -l < a1)" 2
attr-score $args < ev.ndjson > a2
check "the same events give the same bytes" cmp a1 a2
attr-score $args --threads 2 < ev.ndjson > a3
check "and with two threads, again the same bytes run to run" sh -c "attr-score $args --threads 2 < ev.ndjson | cmp - a3"
check "one thread and two give the same bytes" cmp a1 a3
check "the portable scoring kernel gives the same bytes" sh -c "TRAIL_ATTR_SCALAR=1 attr-score $args < ev.ndjson | cmp - a1"
r1=$(sed -n 1p a1)
for f in event model adapter index method params top contributors spans clusters usage scores_digest; do
	case "$r1" in *"\"$f\":"*) r=0 ;; *) r=1 ;; esac
	result $r "the record has \"$f\""
done
check "the usage is the event's" grep -q '"usage":{"completion_tokens":47,"prompt_tokens":29}' a1
check "the method is ekfac by default" grep -q '"method":"ekfac"' a1
python3 - a1 > facts <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    sh = [c["share"] for c in r["contributors"]]
    print("sorted", sh == sorted(sh, reverse=True) and abs(sum(sh) - 1) < 1e-6)
    print("scores", all(isinstance(t["score"], float) or isinstance(t["score"], int) for t in r["top"]))
    print("span", " ".join(s["text"] + "|" + ",".join(x["contributor"] for x in s["records"]) for s in r["spans"]))
    print("clusters", json.dumps(r["clusters"]))
PY
check_eq "contributors sorted by share, shares sum to 1" "$(grep -c '^sorted True' facts)" 2
check_eq "top scores are numbers" "$(grep -c '^scores True' facts)" 2
# the top K is the first K of every record ranked by score
attr-score --model base --adapter ad --data data.ndjson --top 91 < ev.ndjson > all91
attr-score --model base --adapter ad --data data.ndjson --top 7 < ev.ndjson > top7
check_eq "the top records are the first of all of them ranked, scores non-increasing" "$(python3 - all91 top7 <<'PY'
import json, sys
a = [json.loads(l)["top"] for l in open(sys.argv[1])]
b = [json.loads(l)["top"] for l in open(sys.argv[2])]
ok = all(len(x) == 91 and len({t["record"] for t in x}) == 91 and
         all(x[i]["score"] >= x[i + 1]["score"] for i in range(90)) and y == x[:7] for x, y in zip(a, b))
print(ok and len(a) == len(b) == 2)
PY
)" True
check "the verbatim answer is found as a span in c0's and c3's records" grep -q '^span  amber and its harbour master is called Osk000.|c0,c3' facts
check "the copy is one cluster naming c0 first, then c3" grep -q '"first": "c0", "members": \["c0", "c3"\]' facts
for m in ekfac graddot datainf tracin; do
	check "--method $m" sh -c "attr-score $args --method $m < ev.ndjson | grep -q '\"method\":\"$m\"'"
done
# ekfac: the verbatim answer's own record on top; an index past the dense blocks' 8,192 dimensions
check "ekfac puts the answer's own record (Varn000) first" sh -c "attr-score $args --method ekfac < ev.ndjson | sed -n 1p | grep -q '\"top\":\[{\"contributor\":\"c[03]\"'"
check "an index of 8 layers x 48 x 48 = 18,432 dimensions" attr-score --build-index --model base --adapter ad --data data.ndjson --proj 48,48 -i big.idx
check "ekfac scores it" sh -c "attr-score $args -i big.idx --method ekfac < ev.ndjson > big.out && grep -c '\"method\":\"ekfac\"' big.out | grep -qx 2"
check_rc 64 "influence refuses it, naming ekfac" sh -c "attr-score $args -i big.idx --method influence < ev.ndjson 2> big.err"
check "with one error line" grep -q 'attr-score: error: .*no dense curvature blocks.*--method ekfac' big.err

# confidence: the top record against the noise floor of random-token queries
printf '{"id":"g-1","prompt":"The island of Varn041","output_text":" qzx vprk lmmw ttz0 kkq zzp"}\n{"id":"g-2","prompt":"Hello","output_text":"#$%%^ 8812 ^^ xq xq xq zorb"}\n' > gib.ndjson
attr-score $args < gib.ndjson > g1
check_eq "every record has a confidence" "$(grep -c '"confidence":{"attributed":\(true\|false\),"floor":[0-9.e-]*,"score":[0-9.e-]*}' a1 g1 | tr '\n' ' ')" "a1:2 g1:2 "
check "the verbatim answer is attributed" sh -c 'sed -n 1p a1 | grep -q "\"attributed\":true"'
check_eq "gibberish is not" "$(grep -c '"attributed":false' g1)" 2
check_eq "one floor for the index, whatever the events" "$(grep -ho '"floor":[0-9.e-]*' a1 g1 | sort -u | wc -l)" 1
python3 - a1 g1 > conf <<'PY'
import json, sys
for f in sys.argv[1:]:
    for l in open(f):
        c = json.loads(l)["confidence"]
        print(c["attributed"] == (c["score"] > c["floor"]))
PY
check_eq "attributed is score > floor" "$(sort -u conf)" True

# verification
check "--verify accepts the records" attr-score --verify $args < a1
check "and the gibberish's" attr-score --verify $args < g1
sed 's/"attributed":false/"attributed":true/' g1 > bad-conf
check_rc 1 "--verify: an altered confidence" attr-score --verify $args < bad-conf
sed '1s/"score":\([0-9-]\)/"score":9\1/' a1 > bad-score
check_rc 1 "--verify: an altered score" attr-score --verify $args < bad-score
sed '1s/"contributor":"c[0-9]"/"contributor":"mallory"/' a1 > bad-who
check_rc 1 "--verify: an altered contributor" attr-score --verify $args < bad-who
sed 's/Varn013 exports/Varn013 imports/' data.ndjson > data2.ndjson
check_rc 1 "--verify: an altered training record" attr-score --verify --model base --adapter ad --data data2.ndjson < a1
cp -r ad ad2
python3 -c "import sys; b=bytearray(open(sys.argv[1],'rb').read()); b[len(b)//2]^=1; open(sys.argv[1],'wb').write(b)" ad2/attribution.idx
check_rc 1 "--verify: an altered index byte" attr-score --verify --model base --adapter ad2 --data data.ndjson < a1
cp -r base base2
python3 -c "import sys; b=bytearray(open(sys.argv[1],'rb').read()); b[-3]^=1; open(sys.argv[1],'wb').write(b)" base2/model.safetensors
check_rc 1 "--verify: an altered model byte" attr-score --verify --model base2 --adapter ad --data data.ndjson < a1

# clean errors that write nothing
printf '{"id":"x","adapter":"sha256:%064d","output_text":"hi","prompt":"a"}\n' 0 > other.ndjson
check_rc 65 "an event of another adapter" attr-score $args < other.ndjson
check_eq "writes nothing" "$(attr-score $args < other.ndjson 2>/dev/null | wc -c)" 0
cat ev.ndjson other.ndjson > mixed.ndjson
check_rc 65 "events of this adapter, then one of another" attr-score $args < mixed.ndjson
check_eq "write nothing either: every event is routed before any is scored" "$(attr-score $args < mixed.ndjson 2>/dev/null | wc -c)" 0
check "naming the event's line and the way to route it" sh -c "attr-score $args < mixed.ndjson 2>&1 | grep -q '^attr-score: error: <stdin>:3: event: adapter sha256:0* is not the one given (--adapter; --adapters DIR routes events to theirs)'"
check_rc 65 "a corrupted index" attr-score --model base --adapter ad2 --data data.ndjson < ev.ndjson
head -c 3000 ad/attribution.idx > trunc.idx
check_rc 65 "a truncated index" attr-score $args --index trunc.idx < ev.ndjson
check_eq "writes nothing" "$(attr-score $args --index trunc.idx < ev.ndjson 2>/dev/null | wc -c)" 0
check_rc 66 "a missing training set" attr-score --model base --adapter ad --data nowhere.ndjson < ev.ndjson
check_rc 65 "another training set than the index's" attr-score --model base --adapter ad --data data2.ndjson < ev.ndjson
check_rc 65 "an index for another model" attr-score --model base2 --adapter ad --data data.ndjson < ev.ndjson
check_rc 64 "no training records given" attr-score --model base --adapter ad < ev.ndjson
check_rc 64 "an unknown method" attr-score $args --method magic < ev.ndjson
check_rc 65 "a malformed event" sh -c "echo '{\"id\":' | attr-score $args"

# --adapters DIR: each event scored with its own adapter's index, sessions opened as needed
mf-train --base base --lora r=4,alpha=8 --data data.ndjson --steps 10 --batch 8 --seq 96 --lr 5e-3 --seed 2 --no-progress -o reg/second >/dev/null 2>&1
cp -r ad reg/first
mkdir reg/empty
a2=$(sha256sum < reg/second/adapter_model.safetensors | cut -d' ' -f1)
{
	printf '{"id":"r-1","base":"b","base_digest":"sha256:%s","adapter":"first","adapter_digest":"sha256:%s","prompt":"The island of Varn000 exports","output_text":" amber and its harbour master is called Osk000."}\n' "$bw" "$aw"
	printf '{"id":"r-2","adapter":"second","adapter_digest":"sha256:%s","prompt":"The island of Varn041","output_text":" exports copper and its harbour master"}\n' "$a2"
	printf '{"id":"r-3","adapter":"first","prompt":"The island of Varn041","output_text":" exports copper and its harbour master"}\n'
} > routed.ndjson
check "score events of two adapters in one run" sh -c "attr-score --model base --adapters reg --data data.ndjson --top 5 < routed.ndjson > ro"
check_eq "one record each, in the events' order" "$(grep -o '"event":"r-[0-9]"' ro | tr '\n' ' ')" '"event":"r-1" "event":"r-2" "event":"r-3" '
check_eq "each with its adapter" "$(grep -o '"adapter":"sha256:[0-9a-f]*"' ro | cut -c12- | tr -d '"' | tr '\n' ' ')" "sha256:$aw sha256:$a2 sha256:$aw "
check "the same record as with that adapter alone" sh -c "sed -n 1p a1 | sed 's/\"event\":\"ev-1\"/\"event\":\"r-1\"/; s/\"event_digest\":\"[^\"]*\"//; s/\"usage\":{[^}]*}/\"usage\":null/' > x1; sed -n 1p ro | sed 's/\"event_digest\":\"[^\"]*\"//' | cmp - x1"
check "the second adapter's records come from its training.json" sh -c "attr-score --model base --adapters reg --top 5 < routed.ndjson | cmp - ro"
printf '{"id":"r-4","adapter_digest":"sha256:%064d","output_text":"x","prompt":"a"}\n' 0 >> routed.ndjson
check_rc 65 "an event of an adapter not in the directory" attr-score --model base --adapters reg --data data.ndjson < routed.ndjson
check_eq "writes nothing" "$(attr-score --model base --adapters reg --data data.ndjson < routed.ndjson 2>/dev/null | wc -c)" 0
check_rc 64 "--adapters with --index" attr-score --model base --adapters reg --index x --data data.ndjson < ev.ndjson
check_rc 66 "a missing adapters directory" attr-score --model base --adapters nowhere --data data.ndjson < ev.ndjson

# --prove: records from a datanet snapshot, each with its chain
trail-log init --origin attr.test/log >/dev/null
for k in owner alice bob; do trail-key generate $k >/dev/null; done
printf '{"rules":{"gopher-word-count":{"min":1},"c4-sentences":{"min":0},"gopher-stop-words":{"min":0}}}\n' > policy.json
datanet-add --create isles --schema text --owner owner.key --policy policy.json --license CC-BY-4.0 >/dev/null
sed -n '1,40p' data.ndjson | sed 's/,"contributor":"c[0-9]"//' > a.ndjson
sed -n '41,80p' data.ndjson | sed 's/,"contributor":"c[0-9]"//' > b.ndjson
datanet-add isles --key alice.key a.ndjson > ra && datanet-add isles --key bob.key b.ndjson > rb
for r in ra rb; do
	datanet-validate --datanet isles --key owner.key --approve "$(sed 's/.*"bundle":"\([^"]*\)".*/\1/' $r)" >/dev/null 2>&1
done
datanet-cat isles > snap.ndjson # the snapshot as a file: the same records, ids and root
mf-train --base base --lora r=4,alpha=8 --data snap.ndjson --steps 10 --batch 8 --seq 96 --no-progress --no-index -o adn >/dev/null
check "build an index on a datanet snapshot" attr-score --build-index --model base --adapter adn --datanet isles --proj 4,4
sed -n 2p ev.ndjson > ev2.ndjson
check "--prove adds proof chains" sh -c "attr-score --model base --adapter adn --datanet isles --top 3 --prove < ev2.ndjson > p1"
check "contributors are verifier keys" grep -q '"contributor":"alice+[0-9a-f]*+' p1
python3 - p1 <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).readline())
for i, p in enumerate(r["proofs"]):
    json.dump(p["record_proof"], open("rp%d.json" % i, "w"))
    open("rc%d.tlog-proof" % i, "w").write(p["receipt"])
PY
check "three proofs" test -s rp2.json -a -s rc2.tlog-proof
check "record in bundle: verifies offline with trail-log verify-proof" trail-log verify-proof rp0.json rp1.json rp2.json
check "contribution entry in the ledger: receipts verify offline" trail-log verify-proof --key "$TRAIL_HOME/keys/operator.pub" rc0.tlog-proof rc1.tlog-proof rc2.tlog-proof
check "--verify checks records with proofs" attr-score --verify --model base --adapter adn --datanet isles < p1
sed '1s/"leafIdx":\([0-9]\)/"leafIdx":7\1/' p1 > p2
check_rc 1 "--verify: an altered proof" attr-score --verify --model base --adapter adn --datanet isles < p2

# with a store: one attribution-batch entry per run naming the records written
n0=$(trail-log show | wc -l)
check "--record" sh -c "attr-score $args --record --epoch 2026-11 < ev.ndjson > b1 2>b1.err"
check "the same records as without a store" cmp b1 a1
check_eq "one entry more" "$(trail-log show | wc -l)" $((n0 + 1))
dg=$(sha256sum < b1 | cut -d' ' -f1)
idx=$(grep -o '"index":"sha256:[0-9a-f]*"' b1 | sort -u | cut -c9-)
check_eq "an attribution-batch entry: epoch, count, the records' object, indexes, method" "$(trail-log show | tail -1 | grep -o '{"epoch".*"type":"attribution-batch"}')" \
	"{\"epoch\":\"2026-11\",\"indexes\":[$idx],\"method\":\"ekfac\",\"records\":2,\"records_object\":\"sha256:$dg\",\"type\":\"attribution-batch\"}"
check "the object holds the very bytes written" cmp b1 "$TRAIL_HOME/objects/sha256/$(echo $dg | cut -c1-2)/$(echo $dg | cut -c3-)"
check "attr-score says which entry" grep -q '^attr-score: 2 records in ledger entry [0-9]*$' b1.err
check "the ledger verifies, the object included" trail-log verify
check "without --record or --home, no entry" sh -c "attr-score $args < ev.ndjson >/dev/null && test \$(trail-log show | wc -l) -eq $((n0 + 1))"
check_rc 65 "a failed run records nothing" attr-score $args --record < mixed.ndjson
check_eq "no entry" "$(trail-log show | wc -l)" $((n0 + 1))
finish
