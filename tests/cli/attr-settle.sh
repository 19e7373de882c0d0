#!/bin/bash
# attr-settle: the worked example of attr-settle(1) byte for byte, idempotent
# epochs, changed inputs or policy refused, the lock, exit statuses, and
# SIGKILL at random points (50 here, 500 under check-full) always ending
# with one settlement per epoch and the payouts of a clean run.
. "$TRAIL_TOP/tests/tap.sh"
data=$TRAIL_TOP/tests/data/settle
cd "$T" || exit 70

# the worked example, without a store
attr-settle --dry-run --policy "$data/policy.json" --epoch 2026-11 "$data/input.ndjson" > ex.out 2> ex.err
check_eq "the worked example: exit 0" "$?" 0
check "the worked example's output, byte for byte" cmp ex.out "$data/expected.ndjson"
check "quiet on success" test ! -s ex.err
attr-settle --dry-run --format text --policy "$data/policy.json" --epoch 2026-11 < "$data/input.ndjson" > ex.txt
check "--format text: the table" cmp ex.txt "$data/expected.txt"

trail-log init >/dev/null
cat > pol.json <<'J'
{"fee_per_1k_prompt": 100, "fee_per_1k_completion": 300,
 "split_bps": {"platform": 1000, "model": 2000, "stakers": 1000, "contributors": 6000},
 "stakes": {"c1": 500, "c2": 100}, "penalty": {"max_rejected": 2, "slash_bps": 5000}}
J
awk 'BEGIN { for (i = 0; i < 400; i++) printf "{\"event\":\"e%d\",\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d},\"contributors\":[{\"contributor\":\"c%d\",\"share\":0.75},{\"contributor\":\"c%d\",\"share\":0.25}]}\n", i, 100 + i, 30 + i % 50, i % 7, (i + 3) % 7 }' > attr.ndjson
echo '{"type":"flags","contributor":"c2","rejected":3}' >> attr.ndjson
attr-settle --policy pol.json --epoch 2026-11 < attr.ndjson > r1 2> e1
check_eq "settle an epoch in the store" "$?" 0
check "quiet" test ! -s e1
check "one payout line per payee, then the epoch line" sh -c 'tail -1 r1 | grep -q "\"type\":\"epoch\"" && test "$(grep -c "\"type\":\"payout\"" r1)" -eq 9'
ep=$(tail -1 r1)
num() { printf '%s\n' "$ep" | sed "s/.*\"$1\":\\([0-9]*\\).*/\\1/"; }
check_eq "paid + retained = fees" "$(($(num paid) + $(num retained)))" "$(num fees)"
check_eq "the payouts add up to paid" "$(grep '"type":"payout"' r1 | sed 's/.*"amount":\([0-9]*\).*/\1/' | awk '{s += $1} END {print s}')" "$(num paid)"
check "c2 (3 rejected records) is withheld and slashed" sh -c 'tail -1 r1 | grep -q "\"slashed\":\[{\"amount\":50,\"reasons\":\[\"rejected\"\],\"stake\":100,\"to\":\"c2\"}\]" && ! grep -q "\"to\":\"c2\",\"type\":\"payout\"" r1'
check_eq "one settlement entry" "$(trail-log show | grep -c '"type":"settlement"')" 1
dg=$(printf '%s' "$ep" | sed 's/.*"digest":"\(sha256:[0-9a-f]*\)".*/\1/')
check "the entry is signed and carries the epoch's digest" sh -c "trail-log show | grep '\"type\":\"settlement\"' | grep '\"sig\":' | grep -q '$dg'"
attr-settle -v --policy pol.json --epoch 2026-11 < attr.ndjson > r2 2> e2
check_eq "settling again: exit 0" "$?" 0
check "the same output" cmp r1 r2
check "-v says it was settled before" grep -q "settled before" e2
check_eq "still one settlement entry" "$(trail-log show | grep -c '"type":"settlement"')" 1
shuf attr.ndjson 2>/dev/null > shuffled || sort -r attr.ndjson > shuffled
attr-settle --policy pol.json --epoch 2026-11 shuffled > r3
check "shuffled inputs are the same inputs" cmp r1 r3
check_rc 1 "different inputs for a settled epoch are refused (exit 1)" sh -c 'head -100 attr.ndjson | attr-settle --policy pol.json --epoch 2026-11'
sed 's/"contributors": 6000/"contributors": 5999/; s/"platform": 1000/"platform": 1001/' pol.json > pol2.json
check_rc 1 "so is a different policy" sh -c 'attr-settle --policy pol2.json --epoch 2026-11 < attr.ndjson'
check "--dry-run records nothing" sh -c 'attr-settle --dry-run --policy pol.json --epoch dry < attr.ndjson >/dev/null && ! trail-log show | grep -q "\"epoch\":\"dry\""'
trail-key generate settler >/dev/null 2>&1
attr-settle --key settler.key --policy pol.json --epoch signed < attr.ndjson > /dev/null
check "--key signs the entry with that key" sh -c "trail-log show | grep '\"epoch\":\"signed\"' | grep -q \"\$(cut -d+ -f1-2 settler.pub)\""
check "the ledger verifies" trail-log verify

# the recorded settlement is found by the entry's own type and its exact epoch
echo '{"type":"note","epoch":"E1","about":{"type":"settlement","epoch":"E1"}}' | trail-log append > /dev/null
check_rc 0 "an entry of another type that names a settlement of the epoch is not one" sh -c 'attr-settle --policy pol.json --epoch E1 < attr.ndjson > /dev/null'
check_eq "and E1 is settled once" "$(trail-log show | grep '"result_object"' | grep -c '"epoch":"E1"')" 1
check_rc 0 "an epoch that is a prefix of a settled one is another epoch" sh -c 'head -100 attr.ndjson | attr-settle --policy pol.json --epoch 2026-1 > /dev/null'
check_rc 0 "so is one that extends it" sh -c 'head -100 attr.ndjson | attr-settle --policy pol.json --epoch 2026-11-b > /dev/null'
sed 's/"event":"e7"/"event":"renamed"/' attr.ndjson > renamed.ndjson
attr-settle --policy pol.json --epoch 2026-11 renamed.ndjson > r4
check "an event id changed is the same inputs (it cannot change the result): the recorded result" cmp r1 r4

# exit statuses and messages
printf '{"event":"a","usage":{"prompt_tokens":1,"completion_tokens":1},"contributors":[]}\n\n{"event":"b","usage":{"prompt_tokens":1}}\n' > bad.ndjson
attr-settle --dry-run --policy pol.json --epoch x < bad.ndjson > /dev/null 2> bad.err
check_eq "a bad record: 65" "$?" 65
check "named with its line" grep -q '^attr-settle: error: <stdin>:3: ' bad.err
check_rc 66 "a missing input: 66" attr-settle --dry-run --policy pol.json --epoch x nosuch.ndjson
check_rc 64 "no --epoch: 64" attr-settle --policy pol.json < attr.ndjson
check_rc 65 "a bad policy: 65" sh -c 'echo "{\"split_bps\":{\"platform\":1}}" > p3.json; attr-settle --dry-run --policy p3.json --epoch x < attr.ndjson'
check_rc 66 "a store named but missing: 66" attr-settle --home "$T/none" --policy pol.json --epoch x attr.ndjson
check "-h prints the usage" sh -c 'attr-settle -h | grep -q -- "--policy FILE --epoch ID"'

# the lock: another writer holds the ledger
(flock "$TRAIL_HOME/log/lock" sleep 3) &
sleep 0.5
check_rc 69 "while another writer holds the ledger: 69" attr-settle --policy pol.json --epoch locked attr.ndjson
wait
check "and nothing was recorded" sh -c '! trail-log show | grep -q "\"epoch\":\"locked\""'

# SIGKILL at random points, then a re-run: one settlement per epoch, the clean payouts
kills=50
[ -n "${TRAIL_FULL:-}" ] && kills=500
RANDOM=7
awk 'BEGIN { for (i = 0; i < 50000; i++) printf "{\"event\":\"e%d\",\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":9},\"contributors\":[{\"contributor\":\"c%d\",\"share\":0.7},{\"contributor\":\"c%d\",\"share\":0.3}]}\n", i, i % 900, i % 31, i % 17 }' > big.ndjson
attr-settle --dry-run --policy pol.json --epoch k < big.ndjson | grep '"type":"payout"' > want

# threads: the input is cut into blocks (several here); sums are added exactly, so the bytes are the same
for j in 1 2 3 7; do attr-settle --dry-run --threads $j --policy pol.json --epoch k < big.ndjson > "j$j"; done
check "1, 2, 3 and 7 threads print the same bytes" sh -c 'cmp j1 j2 && cmp j1 j3 && cmp j1 j7'
awk 'NR == 41234 { sub(/"usage"/, "\"usage\":1,\"u\"") } { print }' big.ndjson | head -c -1 > bigbad.ndjson
for j in 1 2; do attr-settle --dry-run --threads $j --policy pol.json --epoch k bigbad.ndjson > /dev/null 2> "jbad$j"; echo $? >> "jbad$j"; done
check "a bad line deep in the input: the same message and status with 2 threads" cmp jbad1 jbad2
check "naming its line" grep -q 'bigbad.ndjson:41234: ' jbad2
head -c -1 big.ndjson > nonl.ndjson
attr-settle --dry-run --threads 2 --policy pol.json --epoch k nonl.ndjson | grep '"type":"payout"' > jnonl
check "a last line without its newline is read" cmp jnonl want
check_rc 64 "--threads 0: 64" attr-settle --dry-run --threads 0 --policy pol.json --epoch k big.ndjson
# kill points span 1.5 times the slowest of three real runs (the ledger write
# included), so on a loaded machine kills still land on both sides of the commit
ms=1
for t in 1 2 3; do
	t0=$(date +%s%N)
	attr-settle --policy pol.json --epoch "time$t" big.ndjson > /dev/null
	t1=$(( ($(date +%s%N) - t0) / 1000000 ))
	[ "$t1" -gt "$ms" ] && ms=$t1
done
ms=$((3 * ms / 2 + 10))
before=0 after=0 wrong=0
for i in $(seq 1 "$kills"); do
	attr-settle --policy pol.json --epoch "k$i" big.ndjson > /dev/null 2>&1 &
	pid=$!
	d=$(( (RANDOM * 32768 + RANDOM) % ms ))
	sleep "$(printf '%d.%03d' $((d / 1000)) $((d % 1000)))"
	kill -9 $pid 2>/dev/null
	wait $pid 2>/dev/null
	if trail-log show | grep -q "\"epoch\":\"k$i\""; then after=$((after + 1)); else before=$((before + 1)); fi
	attr-settle --policy pol.json --epoch "k$i" big.ndjson > got 2>/dev/null || wrong=$((wrong + 1))
	grep '"type":"payout"' got | cmp -s - want || wrong=$((wrong + 1))
done
echo "# $kills runs killed: $before before the commit, $after after it"
check_eq "$kills re-runs after SIGKILL: all exit 0 with the clean payouts" "$wrong" 0
check_eq "exactly one settlement per epoch" "$(trail-log show | grep -o '"epoch":"k[0-9]*"' | sort | uniq -c | awk '$1 != 1' | wc -l) $(trail-log show | grep -c '"epoch":"k[0-9]*"')" "0 $kills"
check "kills landed both before and after the commit" test "$before" -gt 0 -a "$after" -gt 0
check "the ledger verifies" trail-log verify
finish
