#!/bin/bash
# attr-settle: idempotent epochs, changed inputs refused, the lock, and
# SIGKILL at random points always ending with one settlement per epoch.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
trail-log init >/dev/null
cat > pol.json <<'J'
{"fee_per_1k_prompt": 100, "fee_per_1k_completion": 300,
 "split_bps": {"platform": 1000, "model": 2000, "stakers": 1000, "contributors": 6000},
 "stakes": {"alice": 500, "bob": 100}, "penalty": {"max_rejected": 2, "slash_bps": 5000}}
J
awk 'BEGIN { for (i = 0; i < 400; i++) printf "{\"event\":\"e%d\",\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d},\"contributors\":[{\"contributor\":\"c%d\",\"share\":0.75},{\"contributor\":\"c%d\",\"share\":0.25}]}\n", i, 100 + i, 30 + i % 50, i % 7, (i + 3) % 7 }' > attr.ndjson
attr-settle --policy pol.json --epoch 2026-11 < attr.ndjson > r1
rc=$?
check_eq "settle an epoch" "$rc" 0
check "one payout line per payee, then the epoch line" sh -c 'tail -1 r1 | grep -q "\"type\":\"epoch\"" && grep -c "\"type\":\"payout\"" r1 | grep -q "^1[01]$"'
fees=$(tail -1 r1 | sed 's/.*"fees":\([0-9]*\).*/\1/'); paid=$(tail -1 r1 | sed 's/.*"paid":\([0-9]*\).*/\1/'); ret=$(tail -1 r1 | sed 's/.*"retained":\([0-9]*\).*/\1/')
check_eq "paid + retained = fees" "$((paid + ret))" "$fees"
check_eq "the payouts add up to paid" "$(grep '"type":"payout"' r1 | sed 's/.*"amount":\([0-9]*\).*/\1/' | awk '{s += $1} END {print s}')" "$paid"
attr-settle --policy pol.json --epoch 2026-11 < attr.ndjson > r2
check_eq "settling again: exit 0" "$?" 0
check "the same output" cmp r1 r2
check_eq "one settlement entry" "$(trail-log show | grep -c '"type":"settlement"')" 1
shuf attr.ndjson 2>/dev/null > shuffled || sort -r attr.ndjson > shuffled
attr-settle --policy pol.json --epoch 2026-11 < shuffled > r3
check "shuffled inputs are the same inputs" cmp r1 r3
check_rc 1 "different inputs for a settled epoch are refused" sh -c 'head -100 attr.ndjson | attr-settle --policy pol.json --epoch 2026-11'
check_rc 1 "so is a different policy" sh -c "sed 's/6000/5999/; s/1000, \"model\"/1001, \"model\"/' pol.json > pol2.json; attr-settle --policy pol2.json --epoch 2026-11 < attr.ndjson"
check "--dry-run records nothing" sh -c 'attr-settle --dry-run --policy pol.json --epoch dry < attr.ndjson >/dev/null && ! trail-log show | grep -q "\"epoch\":\"dry\""'
check "--format text prints a table" sh -c 'attr-settle --dry-run --format text --policy pol.json --epoch t < attr.ndjson | grep -q "^epoch t: fees"'
check "verify passes" trail-log verify

# the lock: another writer holds the ledger
(flock "$TRAIL_HOME/log/lock" sleep 3) &
sleep 0.5
check_rc 69 "while another run holds the lock: 69" sh -c 'attr-settle --policy pol.json --epoch locked < attr.ndjson'
wait

# crashes at random points, then re-runs: exactly one settlement per epoch
kills=${TRAIL_SETTLE_KILLS:-50}
[ -n "${TRAIL_FULL:-}" ] && kills=500
awk 'BEGIN { for (i = 0; i < 20000; i++) printf "{\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":9},\"contributors\":[{\"contributor\":\"c%d\",\"share\":1}]}\n", i % 900, i % 31 }' > big.ndjson
attr-settle --dry-run --policy pol.json --epoch k < big.ndjson > want
for i in $(seq 1 "$kills"); do
	attr-settle --policy pol.json --epoch k < big.ndjson > /dev/null 2>&1 &
	pid=$!
	sleep "0.0$((RANDOM % 10))"
	kill -9 $pid 2>/dev/null
	wait $pid 2>/dev/null
done
attr-settle --policy pol.json --epoch k < big.ndjson > got
check_eq "after $kills SIGKILLs: exactly one settlement for the epoch" "$(trail-log show | grep -c '"epoch":"k"')" 1
check "and the payouts a clean run computes" cmp want got
check "the ledger verifies" trail-log verify
finish
