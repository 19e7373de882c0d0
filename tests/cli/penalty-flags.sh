#!/bin/bash
# datanet-validate --flags: one attr-settle flags line per rejected record
# (flagged for PII and copies, rejected otherwise), the contributor taken
# from the record or --contributor, read by attr-settle without rewriting.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70

trail-key generate alice >/dev/null 2>&1
A=$(cat alice.pub)
B=bob+00000000+AAAA
cat > in.ndjson <<J
{"text":"The harbour committee met on Tuesday to review the new pier plan for the old town.","contributor":"$B"}
{"text":"The harbour committee met on Tuesday to review the new pier plan for the old town.","contributor":"$B"}
{"text":"write to me at someone@example.com about the plan for the pier and the harbour please"}
{"text":"x"}
J
datanet-validate --no-progress --flags f.ndjson --contributor alice.pub in.ndjson > v.out 2> v.err
check_eq "with --flags, rejected records are the result: exit 0" "$?" 0
check_eq "one flags line per rejected record" "$(wc -l < f.ndjson | tr -d ' ')" 4
check_eq "quality rules count as rejected, with the record's own contributor" "$(sed -n 1p f.ndjson)" \
	"{\"contributor\":\"$B\",\"file\":\"in.ndjson\",\"n\":1,\"record\":\"$(sed -n 1p v.out | sed 's/^{"record":"\([^"]*\)".*/\1/')\",\"rejected\":1,\"rules\":[\"gopher-word-count\",\"c4-sentences\"],\"type\":\"flags\"}"
check "a copy counts as flagged" sh -c "sed -n 2p f.ndjson | grep -q '\"flagged\":1,\"n\":2,.*\"rules\":\[\"duplicate\",'"
check "personal data counts as flagged, the contributor from --contributor's key file" \
	sh -c "sed -n 3p f.ndjson | grep -F '\"contributor\":\"$A\"' | grep -q '\"flagged\":1.*\"pii-email\"'"
check "the others count as rejected" sh -c "sed -n 4p f.ndjson | grep -q '\"rejected\":1'"
datanet-validate --no-progress --flags f2.ndjson --contributor "$A" in.ndjson > /dev/null
check "the same flags again, and a literal key names the same contributor" cmp f.ndjson f2.ndjson
datanet-validate --no-progress --flags f3.ndjson in.ndjson > /dev/null
check_eq "records with no contributor are not flagged" "$(wc -l < f3.ndjson | tr -d ' ')" 2
check_rc 1 "without --flags a rejected record still exits 1" datanet-validate --no-progress in.ndjson
check_rc 64 "--contributor goes with --flags" datanet-validate --contributor alice.pub in.ndjson
check_rc 66 "--contributor naming no key or key file is refused" datanet-validate --flags f4.ndjson --contributor nokey in.ndjson
printf '{"text":"%s"}\n' "$(printf 'The pier opened in the summer. %.0s' $(seq 20))" > ok.ndjson
datanet-validate --no-progress --flags f5.ndjson ok.ndjson > /dev/null
check "no rejected record: an empty flags file" test -f f5.ndjson -a ! -s f5.ndjson

# attr-settle reads the file as written
cat > pol.json <<J
{"fee_per_1k_prompt": 1000, "fee_per_1k_completion": 0,
 "split_bps": {"platform": 0, "model": 0, "stakers": 0, "contributors": 10000},
 "stakes": {"$A": 100}, "penalty": {"max_flagged": 0, "slash_bps": 5000}}
J
printf '{"event":"e1","usage":{"prompt_tokens":1000,"completion_tokens":0},"contributors":[{"contributor":"%s","share":0.5},{"contributor":"carol","share":0.5}]}\n' "$A" > attr.ndjson
attr-settle --dry-run --policy pol.json --epoch x attr.ndjson f.ndjson > s.out 2> s.err
check_eq "attr-settle takes the flags file: exit 0" "$?" 0
check "it counts four flags lines" grep -q '"flags":4' s.out
check "alice (one flagged record, max_flagged 0) is slashed and withheld" \
	sh -c "tail -1 s.out | grep -F '\"slashed\":[{\"amount\":50,\"reasons\":[\"flagged\"],\"stake\":100,\"to\":\"$A\"}]' >/dev/null && ! grep -F '\"to\":\"$A\",\"type\":\"payout\"' s.out >/dev/null"
check "carol is paid" grep -q '"to":"carol","type":"payout"' s.out
finish
