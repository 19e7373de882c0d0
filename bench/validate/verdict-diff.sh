#!/bin/bash
# Verdicts before and after: builds datanet-validate at revision REV (from
# `git archive`, in WORKDIR) and compares every verdict line it prints with
# the working tree's build, over the validation benchmark corpora:
#   big       big.ndjson, the full default policy (the throughput run)
#   approved  big.ndjson against base.ndjson as approved records
#   copies    the planted near copies of pairs.ndjson against base.ndjson
# Prints one line per run and exits 1 if any verdict line differs.
#
#   bench/validate/verdict-diff.sh [REV [WORKDIR]]   (REV default: main)
# Needs the corpora of bench/validate/run.sh (built here when missing).
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
set -e
top=$(cd "$(dirname "$0")/../.." && pwd)
B=${B:-build}
REV=${1:-main}
W=${2:-${TMPDIR:-/tmp}/trail-bench-validate}
PY=/usr/bin/python3
cd "$top"
mkdir -p "$W"
W=$(cd "$W" && pwd)
[ -s "$W/big.ndjson" ] || $PY bench/validate/corpus.py "$W" >/dev/null
[ -s "$W/copies.ndjson" ] || $PY -c '
import json, sys
with open(sys.argv[2], "w") as out:
    for line in open(sys.argv[1]):
        out.write(json.dumps({"text": json.loads(line)["b"]}) + "\n")' "$W/pairs.ndjson" "$W/copies.ndjson"

old="$W/rev-$(git rev-parse --short "$REV")"
if [ ! -x "$old/$B/bin/datanet-validate" ]; then
	rm -rf "$old"
	mkdir -p "$old"
	git archive "$REV" | tar -x -C "$old"
	make -C "$old" -j2 B="$B" "$B/bin/datanet-validate" >/dev/null
fi
make -j2 B="$B" "$B/bin/datanet-validate" >/dev/null

status=0
run() { # NAME ARGS...
	local name=$1
	shift
	"$old/$B/bin/datanet-validate" --no-progress "$@" > "$W/$name.old" 2>/dev/null || true
	"$top/$B/bin/datanet-validate" --no-progress "$@" > "$W/$name.new" 2>/dev/null || true
	local lines diff
	lines=$(wc -l < "$W/$name.new")
	diff=$(diff "$W/$name.old" "$W/$name.new" | grep -c '^>' || true)
	echo "$name: $lines verdict lines, $diff differ"
	[ "$diff" = 0 ] && [ "$lines" -gt 1 ] || status=1
}
cd "$W"
run big big.ndjson
run approved --approved base.ndjson big.ndjson
run copies --approved base.ndjson copies.ndjson
exit $status
