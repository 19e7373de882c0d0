#!/bin/sh
# A second pipeline, on real public text from Debian packages: three
# datanets (the Jargon File, FOLDOC, fortunes), six contributors and a
# copier; validation, approval, training, serving, attribution, settlement
# and the report. Installs dict-jargon, dict-foldoc and fortunes when
# missing (as root). Runs from the repository root after `make`; writes
# debian-out/ (or $OUT). A few minutes on 2 cores.
set -e
top=$(cd "$(dirname "$0")/.." && pwd)
B=${B:-build}
PATH="$top/$B/bin:$PATH"
out=${OUT:-$top/debian-out}
per=${PER:-120} # records per contributor
rm -rf "$out"
mkdir -p "$out/src"
cd "$out"
export TRAIL_HOME="$out/store"
say() { printf '\n== %s\n' "$*"; }
field() { sed -n "s/.*\"$1\":\"\\{0,1\\}\\([^\",}]*\\).*/\\1/p" "$2"; }
text() { sh "$top/examples/debian-text.sh" "$@"; }

say "text from Debian packages, split among contributors"
text jargon a-l | head -n "$per" > src/esr.ndjson
text jargon m-z | head -n "$per" > src/guy.ndjson
text foldoc a-m | awk 'NR % 40 == 0' | head -n "$per" > src/howe.ndjson
text foldoc n-z | awk 'NR % 40 == 0' | head -n "$per" > src/denis.ndjson
text fortunes computers | head -n "$per" > src/ken.ndjson
text fortunes science | head -n "$per" > src/dmr.ndjson
head -n 20 src/esr.ndjson > src/copycat.ndjson # someone else's entries, verbatim
wc -l src/*.ndjson | sed 's/^/  /'

trail-log init --origin debian.trail/log >/dev/null
for k in owner esr guy howe denis ken dmr copycat; do trail-key generate "$k" >/dev/null; done
pol="$top/examples/debian-policy.json"
for dn in jargon foldoc fortunes; do
	datanet-add --create "$dn" --schema text --owner owner.key --policy "$pol" --license "see /usr/share/doc" >/dev/null
done

say "each contributor submits what passes validation; the owner approves"
contribute() { # datanet contributor
	datanet-validate --no-progress --policy "$pol" --output "src/$2.ok.ndjson" "src/$2.ndjson" >/dev/null || true
	datanet-add "$1" --key "$2.key" "src/$2.ok.ndjson" > "receipt.$2"
	b=$(field bundle "receipt.$2")
	if datanet-validate --no-progress --datanet "$1" --key owner.key --record --approve "$b" > "verdicts.$2" 2>/dev/null; then
		printf '  %-8s -> %-8s %4s records approved\n' "$2" "$1" "$(field records "receipt.$2")"
	else
		datanet-validate --no-progress --datanet "$1" --key owner.key --reject "$b" >/dev/null 2>&1
		printf '  %-8s -> %-8s rejected: %s\n' "$2" "$1" "$(grep -o '"rule":"[a-z0-9-]*"' "verdicts.$2" | sort | uniq -c | sed 's/"rule"://; s/"//g' | awk '{printf "%s%s x%s", (NR > 1 ? ", " : ""), $2, $1}')"
	fi
}
contribute jargon esr
contribute jargon guy
contribute foldoc howe
contribute foldoc denis
contribute fortunes ken
contribute fortunes dmr
contribute jargon copycat

size=$(trail-log verify | sed 's/.*"size":\([0-9]*\).*/\1/')
for dn in jargon foldoc fortunes; do datanet-cat "$dn@$size" > "$dn.ndjson"; done
cat jargon.ndjson foldoc.ndjson fortunes.ndjson > all.ndjson
say "training on $(wc -l < all.ndjson) approved records, as of tree size $size"
mf-train --init "$top/examples/demo-model.json" --data all.ndjson --steps "${STEPS:-200}" --batch 16 --seq 128 \
	--lr 2e-3 --threads 2 --no-progress -o base | sed 's/^/  /'
mkdir -p adapters
for dn in jargon foldoc fortunes; do
	mf-train --base base --lora r=8,alpha=16 --datanet "$dn@$size" --steps "${ADAPTER_STEPS:-40}" --batch 8 \
		--seq 128 --lr 2e-3 --threads 2 --no-progress -o "adapters/$dn" | sed 's/^/  /'
done

say "serving prompts through each datanet's adapter"
{
	for w in hacker: kludge: "cruft:" "magic:"; do printf '{"id":"j-%s","model":"jargon","prompt":"%s ","max_tokens":48,"temperature":0}\n' "${w%:}" "$w"; done
	for w in "compiler:" "kernel:" "network:"; do printf '{"id":"f-%s","model":"foldoc","prompt":"%s ","max_tokens":48,"temperature":0}\n' "${w%:}" "$w"; done
	for w in "The" "A computer"; do printf '{"id":"q-%s","model":"fortunes","prompt":"%s","max_tokens":48,"temperature":0.7,"seed":1}\n' "$(echo "$w" | tr ' ' _)" "$w"; done
} > prompts.ndjson
lora-serve --base base --adapters adapters --events events.ndjson --record < prompts.ndjson > responses.ndjson
sed -n 's/.*"id":"\([^"]*\)","model":"\([a-z]*\)","text":"\([^"]*\)".*/  [\2] \1: \3/p' responses.ndjson | cut -c1-110

say "attribution and settlement"
: > attributions.ndjson
for dn in jargon foldoc fortunes; do
	attr-score --build-index --model base --adapter "adapters/$dn" --datanet "$dn@$size" --threads 2 >/dev/null
	grep "\"adapter\":\"$dn\"" events.ndjson |
		attr-score --model base --adapter "adapters/$dn" --datanet "$dn@$size" --prove --threads 2 >> attributions.ndjson
done
attr-settle --policy "$top/examples/demo-settle-policy.json" --epoch debian-1 --key owner.key --format text < attributions.ndjson
attr-settle --policy "$top/examples/demo-settle-policy.json" --epoch debian-1 --key owner.key < attributions.ndjson > settlement.ndjson
cat responses.ndjson attributions.ndjson settlement.ndjson all.ndjson |
	attr-report --title "trail on Debian's text" --key store/keys/operator.pub -o report.html
say "the ledger verifies"
trail-log verify
