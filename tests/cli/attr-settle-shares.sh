#!/bin/bash
# attr-settle policies that opt in: the contributors' share of low-confidence
# or unattributed answers retained with its reason (confidence), and the
# model pool of an adapter's answers split between base and adapter owners
# (adapter_owners, model_split); both worked examples byte for byte, old
# policies giving the bytes they gave before.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
c=$TRAIL_TOP/tests/data/settle/confidence
a=$TRAIL_TOP/tests/data/settle/adapter
set_policy() { # base policy, jq-less edit: sed expression
	sed "$2" "$1" > pol.json
}

# confidence: the worked example (min 1.5 and unattributed retained)
attr-settle -n --policy "$c/policy.json" --epoch 2026-12 "$c/input.ndjson" > c.out
check "confidence: the worked example, byte for byte" cmp c.out "$c/expected.ndjson"
attr-settle -n -f text --policy "$c/policy.json" --epoch 2026-12 "$c/input.ndjson" > c.txt
check "and as text, the retained reason shown" cmp c.txt "$c/expected.txt"
check "q2 (not attributed) and q3 (score 1 < 1.5) retained: 640 of 1600, 2 records" grep -q '"low_confidence":640,"low_confidence_records":2,' c.out
check "alice is paid for q1 only, bob nothing, carol her half of q4" sh -c 'grep -q "\"amount\":800,\"role\":\"contributor\",\"to\":\"alice\"" c.out && ! grep -q "\"to\":\"bob\"" c.out && grep -q "\"amount\":80,\"role\":\"contributor\",\"to\":\"carol\"" c.out'
check "paid + retained = fees; retained = unattributed + low_confidence" grep -q '"fees":2000,.*"paid":1280,.*"retained":720,.*"unattributed":80,' c.out
set_policy "$c/policy.json" 's/"min": 1.5, //'
attr-settle -n --policy pol.json --epoch 2026-12 "$c/input.ndjson" > u.out
check "unattributed retain alone: only q2 (400), q3 paid to alice and bob" sh -c 'grep -q "\"low_confidence\":400,\"low_confidence_records\":1," u.out && grep -q "\"amount\":920,\"role\":\"contributor\",\"to\":\"alice\"" u.out && grep -q "\"amount\":120,\"role\":\"contributor\",\"to\":\"bob\"" u.out'
set_policy "$c/policy.json" 's/"min": 1.5/"min": 0.5/; s/"retain"/"pay"/'
attr-settle -n --policy pol.json --epoch 2026-12 "$c/input.ndjson" > m.out
check "min 0.5 alone (unattributed paid): q2 only" grep -q '"low_confidence":400,"low_confidence_records":1,' m.out

# an old policy: confidence ignored, the same bytes as for records without it
cat > pol.json <<'J'
{"fee_per_1k_prompt": 1000, "fee_per_1k_completion": 0,
 "split_bps": {"platform": 0, "model": 2000, "stakers": 0, "contributors": 8000}}
J
sed 's/,"confidence":{[^}]*}//' "$c/input.ndjson" > noconf.ndjson
attr-settle -n --policy pol.json --epoch 2026-12 "$c/input.ndjson" > o1.out
check_eq "a policy without confidence: exit 0" "$?" 0
attr-settle -n --policy pol.json --epoch 2026-12 noconf.ndjson > o2.out
check "records with and without confidence settle to the same bytes" cmp o1.out o2.out
check "every answer's contributors paid: alice 920, bob 520, carol 80" sh -c 'grep -q "\"amount\":920,\"role\":\"contributor\",\"to\":\"alice\"" o1.out && grep -q "\"amount\":520,\"role\":\"contributor\",\"to\":\"bob\"" o1.out && grep -q "\"amount\":80,\"role\":\"contributor\",\"to\":\"carol\"" o1.out'
check "and no low_confidence member" sh -c '! grep -q low_confidence o1.out'
set_policy "$c/policy.json" 's/"min": 1.5, //; s/"retain"/"pay"/'
attr-settle -n --policy pol.json --epoch 2026-12 "$c/input.ndjson" > p.out
check "unattributed pay without min is no rule: the old result but for the policy digest" sh -c 'sed "s/\"digest\":\"[^\"]*\"//g; s/\"policy_digest\":\"[^\"]*\"//" p.out > p1; sed "s/\"digest\":\"[^\"]*\"//g; s/\"policy_digest\":\"[^\"]*\"//" o1.out > p2; cmp p1 p2'
awk 'BEGIN { for (i = 0; i < 30000; i++) printf "{\"event\":\"e%d\",\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":3},\"contributors\":[{\"contributor\":\"c%d\",\"share\":0.6}],\"confidence\":{\"score\":%d.%d,\"floor\":1,\"attributed\":%s}}\n", i, i % 700, i % 13, i % 4, i % 10, i % 5 ? "true" : "false" }' > big.ndjson
attr-settle -n -j 1 --policy "$c/policy.json" --epoch k big.ndjson > j1
attr-settle -n -j 3 --policy "$c/policy.json" --epoch k big.ndjson > j3
check "1 and 3 threads: the same bytes" cmp j1 j3
check "a score moved across confidence.min changes the inputs digest" sh -c "sed '2s/\"score\":1.1/\"score\":9.1/' big.ndjson | attr-settle -n --policy '$c/policy.json' --epoch k | tail -1 | grep -v -q \"\$(tail -1 j1 | grep -o 'blake2b:[0-9a-f]*')\""
check_rc 65 "confidence.min not a number: 65" sh -c "echo '{\"split_bps\":{\"platform\":10000},\"confidence\":{\"min\":\"x\"}}' > b.json && attr-settle -n --policy b.json --epoch x < noconf.ndjson"
check_rc 65 "confidence.unattributed neither retain nor pay: 65" sh -c "echo '{\"split_bps\":{\"platform\":10000},\"confidence\":{\"unattributed\":\"maybe\"}}' > b.json && attr-settle -n --policy b.json --epoch x < noconf.ndjson"
echo '{"event":"x","usage":{"prompt_tokens":1,"completion_tokens":1},"contributors":[],"confidence":{"attributed":"yes"}}' > badc.ndjson
check_rc 65 "a malformed confidence under a confidence rule: 65" attr-settle -n --policy "$c/policy.json" --epoch x badc.ndjson
check_rc 0 "and ignored by a policy without one" attr-settle -n --policy pol.json --epoch x badc.ndjson

# adapter owners: the worked example
attr-settle -n --policy "$a/policy.json" --epoch 2026-12 "$a/input.ndjson" > a.out
check "adapters: the worked example, byte for byte" cmp a.out "$a/expected.ndjson"
attr-settle -n -f text --policy "$a/policy.json" --epoch 2026-12 "$a/input.ndjson" > a.txt
check "and as text" cmp a.txt "$a/expected.txt"
check "bella 750, adam 180, model 71: the model pool of 1001 exactly" sh -c 'grep -q "\"amount\":750,\"role\":\"model\",\"to\":\"bella\"" a.out && grep -q "\"amount\":180,\"role\":\"model\",\"to\":\"adam\"" a.out && grep -q "\"amount\":71,\"role\":\"model\",\"to\":\"model\"" a.out'
cat > pol2.json <<'J'
{"fee_per_1k_prompt": 1000, "fee_per_1k_completion": 0,
 "split_bps": {"platform": 0, "model": 5000, "stakers": 0, "contributors": 5000},
 "model_owners": {"base1": "bella"}}
J
sed 's/,"adapter":[^,]*//' "$a/input.ndjson" > noad.ndjson
attr-settle -n --policy pol2.json --epoch 2026-12 "$a/input.ndjson" > ao1
check_eq "a policy without adapter owners: exit 0" "$?" 0
attr-settle -n --policy pol2.json --epoch 2026-12 noad.ndjson > ao2
check "a policy without adapter owners: adapters ignored, the same bytes as records without them" cmp ao1 ao2
check "bella is paid the base model's whole share" grep -q '"amount":900,"role":"model","to":"bella"' ao1
check_rc 65 "adapter_owners without model_split: 65" sh -c "echo '{\"split_bps\":{\"platform\":10000},\"adapter_owners\":{\"a\":\"x\"}}' > b.json && attr-settle -n --policy b.json --epoch x < noad.ndjson"
check_rc 65 "model_split not summing to 10000: 65" sh -c "echo '{\"split_bps\":{\"platform\":10000},\"adapter_owners\":{\"a\":\"x\"},\"model_split\":{\"base\":5000,\"adapter\":4000}}' > b.json && attr-settle -n --policy b.json --epoch x < noad.ndjson"
finish
