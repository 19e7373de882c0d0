#!/bin/bash
# make demo's pipeline runs end to end and its ledger verifies.
. "$TRAIL_TOP/tests/tap.sh"
DEMO_OUT="$T/demo" B="${TRAIL_BUILD#$TRAIL_TOP/}" sh "$TRAIL_TOP/examples/demo.sh" > "$T/log" 2>&1
rc=$?
check_eq "the demo exits 0" "$rc" 0
[ $rc -eq 0 ] || tail -20 "$T/log" | sed 's/^/#   /'
check "alice and bob are approved" sh -c "grep -q 'alice    approved' '$T/log' && grep -q 'bob      approved' '$T/log'"
check "dave's copies are rejected as duplicates" grep -q 'dave     rejected: duplicate' "$T/log"
check "mallory's spam and personal data are rejected" sh -c "grep 'mallory  rejected' '$T/log' | grep -q pii-email"
check "a base model and one adapter per datanet are trained" sh -c "test -s '$T/demo/base/model.safetensors' -a -s '$T/demo/adapters/atlas/adapter_model.safetensors' -a -s '$T/demo/adapters/ports/adapter_model.safetensors'"
check_eq "every prompt is answered" "$(grep -c '"finish_reason"' "$T/demo/responses.ndjson" 2>/dev/null)" "$(wc -l < "$T/demo/data/prompts.ndjson")"
check_eq "every answer is attributed" "$(grep -c '"contributors"' "$T/demo/attributions.ndjson" 2>/dev/null)" "$(wc -l < "$T/demo/data/prompts.ndjson")"
check "attributions re-run bit for bit" grep -q 'every attribution re-runs bit for bit' "$T/log"
check "the epoch is settled with paid + retained = fees" sh -c "grep -q '^epoch 1: fees' '$T/log'"
check "the report is written" test -s "$T/demo/report.html"
check "the ledger verifies at the end" sh -c "tail -1 '$T/log' | grep -q '\"ok\":true'"
finish
