#!/bin/bash
# attr-settle stakes posted in the ledger: `attr-settle --stake N --key K`
# appends a `stake` entry signed by the staker; a policy with "stakes":
# "ledger" pays the stakers pool by each staker's latest stake, records the
# entries it used in the settlement entry, and a re-run after later stakes
# still gives the recorded result; a stake entry with a bad signature is
# refused.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
trail-log init >/dev/null
mkdir k
for n in alice bob carol; do trail-key generate -C k "$n" >/dev/null; done
A=$(cat k/alice.pub) B=$(cat k/bob.pub) C=$(cat k/carol.pub)
cat > pol.json <<'J'
{"fee_per_1k_prompt": 100000, "fee_per_1k_completion": 0,
 "split_bps": {"platform": 0, "model": 0, "stakers": 4000, "contributors": 6000},
 "stakes": "ledger"}
J
awk -v c="$C" 'BEGIN { for (i = 0; i < 10; i++) printf "{\"event\":\"e%d\",\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":0},\"contributors\":[{\"contributor\":\"%s\",\"share\":1}]}\n", i, c }' > in.ndjson
check_eq "a stake posted: its entry printed" "$(attr-settle --stake 3000 --key k/alice.key)" 0
check "the entry is a stake signed by the staker" sh -c "trail-log get 0 | grep -qF '\"amount\":3000' && trail-log get 0 | grep -qF '\"signer\":\"$A\"' && trail-log get 0 | grep -q '\"type\":\"stake\"'"
attr-settle -n --policy pol.json --epoch 1 in.ndjson > one.out
check "one staker takes the stakers pool (4000 of 10000)" grep -qF "{\"amount\":4000,\"role\":\"stakers\",\"to\":\"$A\"" one.out
attr-settle --stake 1000 --key k/bob.key >/dev/null
attr-settle -n --policy pol.json --epoch 1 in.ndjson > two.out
check "two stakers, 3000 and 1000: 3000 and 1000" sh -c "grep -qF '{\"amount\":3000,\"role\":\"stakers\",\"to\":\"$A\"' two.out && grep -qF '{\"amount\":1000,\"role\":\"stakers\",\"to\":\"$B\"' two.out"
check "the stakes are inputs: another inputs digest" sh -c "[ \"\$(grep -o 'inputs_digest\":\"[^\"]*' one.out)\" != \"\$(grep -o 'inputs_digest\":\"[^\"]*' two.out)\" ]"
attr-settle --stake 1000 --key k/alice.key >/dev/null
attr-settle --policy pol.json --epoch 1 in.ndjson > rec.out
check "a staker's latest stake counts: 2000 and 2000" sh -c "grep -qF '{\"amount\":2000,\"role\":\"stakers\",\"to\":\"$A\"' rec.out && grep -qF '{\"amount\":2000,\"role\":\"stakers\",\"to\":\"$B\"' rec.out"
check "the settlement entry names the stake entries it used" sh -c "trail-log get 3 | grep -q '\"stakes\":\[{\"amount\":1000,\"entry\":1,' && trail-log get 3 | grep -q '{\"amount\":1000,\"entry\":2,\"staker\":\"alice+'"
attr-settle --stake 9000 --key k/bob.key >/dev/null
attr-settle --policy pol.json --epoch 1 in.ndjson > again.out
check_eq "a re-run after a later stake: the recorded result" "$?" 0
check "byte for byte" cmp rec.out again.out
attr-settle -n --policy pol.json --epoch 2 in.ndjson > e2.out
check "the next epoch sees the later stake (9000 against 1000)" sh -c "grep -qF '{\"amount\":400,\"role\":\"stakers\",\"to\":\"$A\"' e2.out && grep -qF '{\"amount\":3600,\"role\":\"stakers\",\"to\":\"$B\"' e2.out"
printf '{"type":"stake","amount":5,"signer":"%s","sig":"AAAA"}\n' "$C" > fake.json
trail-log append fake.json >/dev/null
check_rc 1 "a stake entry with a bad signature: 1" sh -c "attr-settle -n --policy pol.json --epoch 3 in.ndjson 2> bad.err"
check "naming the entry" grep -q "stake entry 5: bad signature" bad.err
check_rc 64 "stakes from the ledger without a store: 64" env -u TRAIL_HOME sh -c "cd /; attr-settle -n --policy '$T/pol.json' --epoch 1 '$T/in.ndjson'"
check_rc 64 "--stake without --key: 64" attr-settle --stake 5
check_rc 64 "a negative stake: 64" attr-settle --stake -5 --key k/alice.key
finish
