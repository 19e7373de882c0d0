#!/bin/sh
# The trail demo: every step leaves a record in the ledger, and the ledger
# verifies at the end. Runs from the repository root after `make`.
# Steps whose programs are not built yet are skipped with a note.
set -e
top=$(cd "$(dirname "$0")/.." && pwd)
B=${B:-build}
PATH="$top/$B/bin:$PATH"
out="$top/demo-out"
rm -rf "$out"
mkdir -p "$out"
cd "$out"
export TRAIL_HOME="$out/store"
say() { printf '\n== %s\n' "$*"; }

say "keys: an operator for the ledger, and contributors"
trail-log init --origin demo.trail/log >/dev/null
for who in alice bob carol; do trail-key generate -C "$out" "$who" >/dev/null; done
cat alice.pub bob.pub carol.pub

say "the ledger records steps; each append returns a receipt"
printf '%s\n' '{"type":"stake","who":"alice","amount":100}' \
	'{"type":"stake","who":"bob","amount":50}' | trail-log append

say "a signed checkpoint of the tree"
trail-log checkpoint | tee checkpoint.txt

say "a receipt for entry 1 that anyone can verify offline"
trail-log prove 1 > entry1.tlog-proof
trail-log verify-proof --key store/keys/operator.pub entry1.tlog-proof

if [ -x "$top/$B/bin/datanet-add" ] && [ -x "$top/$B/bin/mf-train" ]; then
	sh "$top/examples/pipeline.sh"
else
	say "(datanets, training, serving, attribution and settlement join this demo as they land)"
fi

say "the whole ledger verifies"
trail-log verify
