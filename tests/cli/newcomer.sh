#!/bin/bash
# examples/newcomer.sh, the newcomer's walk-through on their own data, runs
# end to end (with a short training run: the steps only change how well the
# model recites, not the flow) and each stage does what it says.
. "$TRAIL_TOP/tests/tap.sh"
o="$T/nc"
NEWCOMER_OUT="$o" NEWCOMER_STEPS=${NEWCOMER_STEPS:-48} B="${TRAIL_BUILD#$TRAIL_TOP/}" \
	sh "$TRAIL_TOP/examples/newcomer.sh" > "$T/log" 2>&1
rc=$?
check_eq "the walk-through exits 0" "$rc" 0
[ $rc -eq 0 ] || tail -20 "$T/log" | sed 's/^/#   /'
check "the data comes from the man pages" grep -q '^lora-serve option --max-batch n: Sequences decoded together' "$o/data/alice.txt"
check "CI fails on the copied and junk submissions, naming the rules" \
	sh -c "grep -q 'ci: failed as it should' '$T/log' && grep -q '\"duplicate\":8' '$o/ci.ndjson'"
check "carol's three verbatim copies of alice are left out of the approved set" \
	grep -q '"rejected":3' "$o/verdicts.carol"
check "the approved training set is the accepted records of the four bundles" \
	test "$(wc -l < "$o/manual.ndjson")" -eq "$(cat "$o"/verdicts.* | sed -n 's/.*"accepted":\([0-9]*\).*/\1/p' | awk '{ n += $1 } END { print n }')"
check "the adapter was trained on the same snapshot as the base" sh -c \
	"test \"\$(sed -n 's/.*\"training_root\":\"\\([^\"]*\\)\".*/\\1/p' '$o/base/training.json')\" = \
	\"\$(sed -n 's/.*\"training_root\":\"\\([^\"]*\\)\".*/\\1/p' '$o/adapters/manual/training.json')\""
check_eq "every prompt is answered" "$(grep -c '"finish_reason"' "$o/responses.ndjson")" "$(wc -l < "$o/data/prompts.ndjson")"
check_eq "every answer is attributed, with a confidence" "$(grep -c '"confidence":{' "$o/attributions.ndjson")" \
	"$(wc -l < "$o/data/prompts.ndjson")"
check "the attributions are one attribution-batch entry of the ledger" \
	sh -c "trail-log --home '$o/store' show | grep -q '\"type\":\"attribution-batch\"'"
check_eq "validation wrote a penalty flag per rejected record" "$(cat "$o/flags.alice" "$o/flags.bob" "$o/flags.carol" "$o/flags.zed" | grep -c '"type":"flags"')" \
	"$(cat "$o"/verdicts.* | sed -n 's/.*"rejected":\([0-9]*\).*/\1/p' | awk '{ n += $1 } END { print n }')"
check "the copier and the junk contributor get nothing, the honest ones are paid" sh -c \
	"grep -q '  contributor  *alice+' '$T/log' && grep -q '  contributor  *bob+' '$T/log' &&
	! grep -q '  contributor  *\(carol\|zed\)+' '$T/log'"
check "the model pool pays the base's owner and the adapter's tuner" sh -c \
	"grep -q '  model  *owner+' '$T/log' && grep -q '  model  *tuner+' '$T/log'"
check "the settlement entry names the attribution batch it checked" \
	sh -c "trail-log --home '$o/store' show | grep '\"type\":\"settlement\"' | grep -q batch"
check "the settlement conserves the fees" grep -q '^  epoch 1: fees [0-9]* = paid' "$T/log"
check "the report is written" test -s "$o/report.html"
check "the ledger verifies at the end" sh -c "tail -1 '$T/log' | grep -q '\"ok\":true'"
finish
