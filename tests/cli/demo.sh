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
check "the ledger verifies at the end" sh -c "tail -1 '$T/log' | grep -q '\"ok\":true'"
finish
