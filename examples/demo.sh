#!/bin/sh
# The trail demo: five contributors, two datanets, validation and approval,
# then (as those programs are built) training, serving, attribution and
# settlement; every step is recorded in the ledger, which verifies at the end.
# Runs from the repository root after `make`; writes demo-out/.
set -e
top=$(cd "$(dirname "$0")/.." && pwd)
B=${B:-build}
PATH="$top/$B/bin:$PATH"
out=${DEMO_OUT:-$top/demo-out}
rm -rf "$out"
mkdir -p "$out"
cd "$out"
export TRAIL_HOME="$out/store"
say() { printf '\n== %s\n' "$*"; }
have() { [ -x "$top/$B/bin/$1" ]; }
field() { sed -n "s/.*\"$1\":\"\\{0,1\\}\\([^\",}]*\\).*/\\1/p" "$2"; }

say "a store with its ledger, an owner and five contributors"
trail-log init --origin demo.trail/log >/dev/null
for who in owner alice bob carol dave mallory; do trail-key generate "$who" >/dev/null; done
for who in alice bob carol dave mallory; do printf '  %-8s %s\n' "$who" "$(cat "$who.pub")"; done
sh "$top/examples/demo-data.sh" data

say "two datanets, each with its owner and validation policy"
datanet-add --create atlas --schema text --owner owner.key --license CC-BY-4.0 \
	--policy "$top/examples/demo-policy.json"
datanet-add --create ports --schema text --owner owner.key --license CC-BY-4.0 \
	--policy "$top/examples/demo-policy.json"

say "contributions: one signed bundle each, recorded in the ledger"
add() { # datanet contributor
	datanet-add "$1" --key "$2.key" "data/$2.ndjson" > "receipt.$2"
	printf '  %-8s -> %-5s entry %s, %s records, %s\n' "$2" "$1" "$(field entry "receipt.$2")" \
		"$(field records "receipt.$2")" "$(field bundle "receipt.$2" | cut -c1-19)..."
}
add atlas alice
add atlas bob
add ports carol
add atlas dave
add atlas mallory

say "validation against each datanet, and the owner's decisions"
decide() { # datanet contributor
	b=$(field bundle "receipt.$2")
	if datanet-validate --no-progress --datanet "$1" --key owner.key --record --approve "$b" > "verdicts.$2" 2>/dev/null; then
		printf '  %-8s approved\n' "$2"
	else
		datanet-validate --no-progress --datanet "$1" --key owner.key --reject "$b" >/dev/null 2>&1
		printf '  %-8s rejected: %s\n' "$2" "$(grep -o '"rule":"[a-z0-9-]*"' "verdicts.$2" | sort | uniq -c |
			sed 's/"rule"://; s/"//g' | awk '{printf "%s%s x%s", (NR > 1 ? ", " : ""), $2, $1}')"
	fi
}
decide atlas alice
decide atlas bob
decide ports carol
decide atlas dave
decide atlas mallory

size=$(trail-log verify | sed 's/.*"size":\([0-9]*\).*/\1/')
say "the exact training sets, as of tree size $size"
datanet-cat "atlas@$size" > atlas.ndjson
datanet-cat "ports@$size" > ports.ndjson
printf '  atlas: %s records, ports: %s records\n' "$(wc -l < atlas.ndjson)" "$(wc -l < ports.ndjson)"

if have mf-train && have lora-serve; then
	. "$top/examples/pipeline.sh"
fi

say "a receipt for alice's contribution that anyone can verify offline"
trail-log prove "$(field entry receipt.alice)" > alice.tlog-proof
trail-log verify-proof --key store/keys/operator.pub alice.tlog-proof

say "the whole ledger verifies"
trail-log verify
