#!/bin/bash
# attr-settle shards: partials of line ranges (2, 3 and 7, uneven) of
# several inputs merged into the settlement of one pass, byte for byte
# (ndjson and text; with clusters, negative scores, poisoning, flags,
# stakes, confidence and adapter owners; in a store, the same entry and
# the same attribution batches found); refusals of a missing, duplicated,
# foreign or cut partial.
. "$TRAIL_TOP/tests/tap.sh"
data=$TRAIL_TOP/tests/data/settle
cd "$T" || exit 70
fails() { ! "$@"; }
cat > pol.json <<'J'
{"fee_per_1k_prompt": 137, "fee_per_1k_completion": 311,
 "split_bps": {"platform": 1003, "model": 1997, "stakers": 1500, "contributors": 5500},
 "model_owners": {"m1": "owner1", "m2": "owner2"},
 "stakes": {"c1": 500, "c2": 100, "c5": 70},
 "penalty": {"max_rejected": 2, "max_poisoning": 1, "min_influence": -3, "slash_bps": 5000}}
J
# 300 + 120 records: shares that do not divide evenly, clusters, negative scores, poisoning reports, flags
awk -v from=0 -v n=300 -f /dev/stdin > a.ndjson <<'A'
BEGIN { for (i = from; i < from + n; i++) {
	printf "{\"event\":\"e%d\",\"model\":\"m%d\",\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d},", i, 1 + i % 2, 17 + i % 91, 3 + i % 37
	printf "\"contributors\":[{\"contributor\":\"c%d\",\"share\":0.%d},{\"contributor\":\"c%d\",\"share\":0.%03d}]", i % 7, 1 + i % 8, (i * 5 + 3) % 11, 1 + i % 997
	if (i % 13 == 0) printf ",\"clusters\":[{\"members\":[\"c%d\",\"c%d\"],\"first\":\"c%d\"}]", i % 7, (i * 5 + 3) % 11, (i * 5 + 3) % 11
	if (i % 17 == 0) printf ",\"top\":[{\"contributor\":\"c%d\",\"score\":-0.%d}]", i % 5, 3 + i % 6
	if (i % 59 == 0) printf ",\"poisoning\":[\"c%d\"]", i % 3
	print "}"
	if (i % 71 == 0) printf "{\"type\":\"flags\",\"contributor\":\"c%d\",\"rejected\":%d}\n", i % 4, 1 + i % 2
	if (i % 97 == 0) print ""
} }
A
sed 's/"e\([0-9]*\)"/"f\1"/' a.ndjson | head -n 120 > b.ndjson
in="a.ndjson b.ndjson"
lines=$(cat $in | wc -l)
attr-settle --dry-run --policy pol.json --epoch E1 $in > one.out 2> one.err
check_eq "the one pass settles" "$?" 0
attr-settle --dry-run --format text --policy pol.json --epoch E1 $in > one.txt
check "someone is slashed and withheld" grep -q '"slashed":\[{' one.out
for split in "0:200 200:" "0:17 17:305 305:" "0:1 1:3 3:150 150:151 151:300 300:301 301:"; do
	ns=$(echo $split | wc -w); rm -f part.*; k=0
	for r in $split; do attr-settle --partial --records $r --policy pol.json --epoch E1 $in > part.$k; k=$((k + 1)); done
	check "$ns partials merge into the one pass's settlement, byte for byte" \
		sh -c 'attr-settle --dry-run --merge --policy pol.json --epoch E1 part.* | cmp - one.out'
	check "$ns partials: the same table" sh -c 'attr-settle --dry-run --merge --format text --policy pol.json --epoch E1 part.* | cmp - one.txt'
done
check "--shard I/N covers the lines" sh -c "for i in 0 1 2 3 4; do attr-settle --partial --shard \$i/5 --policy pol.json --epoch E1 $in > sp.\$i || exit 1; done; attr-settle --dry-run --merge --policy pol.json --epoch E1 sp.* | cmp - one.out"
# the worked examples of attr-settle(1), confidence and adapter owners among them
for ex in . confidence adapter; do
	rm -f ex.*
	e=$(tail -1 "$data/$ex/expected.ndjson" | sed 's/.*"epoch":"\([^"]*\)".*/\1/')
	for i in 0 1; do attr-settle --partial --shard $i/2 --policy "$data/$ex/policy.json" --epoch $e "$data/$ex/input.ndjson" > ex.$i; done
	check "the worked example ($ex) from 2 shards" \
		sh -c "attr-settle --dry-run --merge --policy '$data/$ex/policy.json' --epoch $e ex.0 ex.1 | cmp - '$data/$ex/expected.ndjson'"
done
# contributors named by short name in the policy and a flags line: resolved after the merge, as in one pass
mkdir keys && trail-key generate --dir keys alice >/dev/null && trail-key generate --dir keys bob >/dev/null
A=$(cat keys/alice.pub) Bk=$(cat keys/bob.pub)
awk -v a="$A" -v b="$Bk" 'BEGIN { for (i = 0; i < 40; i++) printf "{\"event\":\"e%d\",\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":5},\"contributors\":[{\"contributor\":\"%s\",\"share\":0.7},{\"contributor\":\"%s\",\"share\":0.3}]}\n", i, 10 + i, i % 3 ? a : b, i % 3 ? b : a }' > kin.ndjson
printf '{"type":"flags","contributor":"bob","flagged":2}\n' >> kin.ndjson
echo '{"fee_per_1k_prompt": 100000, "split_bps": {"platform": 1000, "model": 2000, "stakers": 1000, "contributors": 6000}, "stakes": {"alice": 500}, "penalty": {"max_flagged": 0}}' > kpol.json
attr-settle -n --policy kpol.json --epoch K kin.ndjson > k1.out
for i in 0 1 2; do attr-settle --partial --shard $i/3 --policy kpol.json --epoch K kin.ndjson > kp.$i; done
check "short names: the merge resolves them as one pass does" sh -c 'attr-settle -n --merge --policy kpol.json --epoch K kp.* | cmp - k1.out && grep -qF "\"role\":\"stakers\",\"to\":\"$0\"" k1.out' "$A"
# in a store: the same settlement entry, and an input's attribution batch found by its digest
export TRAIL_HOME="$T/one"; trail-log init >/dev/null
d=$(sha256sum < b.ndjson | cut -d' ' -f1)
mkdir -p "$TRAIL_HOME/objects/sha256/$(echo "$d" | cut -c1-2)"
cp b.ndjson "$TRAIL_HOME/objects/sha256/$(echo "$d" | cut -c1-2)/$(echo "$d" | cut -c3-)"
echo "{\"type\":\"attribution-batch\",\"epoch\":\"E1\",\"records\":$(grep -c '"event"' b.ndjson),\"records_object\":\"sha256:$d\",\"indexes\":[],\"method\":\"influence\"}" | trail-log append >/dev/null
cp -r one two
attr-settle -v --policy pol.json --epoch E1 $in > st1.out 2> st1.err
TRAIL_HOME="$T/two" attr-settle -v --merge --policy pol.json --epoch E1 part.* > st2.out 2> st2.err
check "in a store: the same result" cmp st1.out st2.out
check "and the same messages (the batch found)" sh -c 'cmp st1.err st2.err && grep -q "b.ndjson: 116 records, the attribution batch at entry 0" st2.err'
check_eq "and the same ledger, settlement entry and all" "$(TRAIL_HOME="$T/two" trail-log show)" "$(TRAIL_HOME="$T/one" trail-log show)"
check "which names the batch" sh -c "TRAIL_HOME='$T/two' trail-log show | grep '\"type\":\"settlement\"' | grep -q '\"batches\":\[{\"entry\":0,'"
check_rc 1 "--require-batch: a.ndjson's records are in no batch" env TRAIL_HOME="$T/two" attr-settle --dry-run --require-batch --merge --policy pol.json --epoch E1 part.*
unset TRAIL_HOME
# refusals
check_rc 65 "a missing partial is refused" attr-settle --dry-run --merge --policy pol.json --epoch E1 part.0 part.1 part.3 part.4 part.5 part.6
check_rc 65 "a duplicated partial is refused" attr-settle --dry-run --merge --policy pol.json --epoch E1 part.0 part.0 part.1 part.2 part.3 part.4 part.5 part.6
check_rc 65 "a partial of another epoch is refused" attr-settle --dry-run --merge --policy pol.json --epoch E2 part.*
sed 's/"platform": 1003/"platform": 1002/; s/"model": 1997/"model": 1998/' pol.json > pol2.json
check_rc 65 "a partial of another policy is refused" attr-settle --dry-run --merge --policy pol2.json --epoch E1 part.*
attr-settle --partial --records 3:150 --policy pol.json --epoch E1 a.ndjson a.ndjson > other.2
check_rc 65 "a partial of other inputs is refused" attr-settle --dry-run --merge --policy pol.json --epoch E1 part.0 part.1 other.2 part.3 part.4 part.5 part.6
head -n 3 part.2 > cut.2
check_rc 65 "a partial cut short is refused" attr-settle --dry-run --merge --policy pol.json --epoch E1 part.0 part.1 cut.2 part.3 part.4 part.5 part.6
attr-settle --dry-run --merge --policy pol.json --epoch E1 part.0 part.2 part.3 part.4 part.5 part.6 2> gap.err > /dev/null
check_eq "the gap is named" "$(cat gap.err)" "attr-settle: error: lines 1:3 are in no partial"
check_rc 64 "--partial reads files, not standard input" sh -c 'attr-settle --partial --shard 0/2 --policy pol.json --epoch E1 - < a.ndjson'
check_rc 64 "--partial needs a range" attr-settle --partial --policy pol.json --epoch E1 a.ndjson
check_rc 64 "--partial records nothing" attr-settle --partial --shard 0/2 --key x --policy pol.json --epoch E1 a.ndjson
check_rc 64 "a range past the lines is refused" attr-settle --partial --records "$lines:" --policy pol.json --epoch E1 $in
finish
