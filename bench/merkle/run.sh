#!/bin/sh
# Merkle proof benchmark: builds bench_merkle against $B/libtrail.a, runs it
# and replaces the "## Merkle" section of bench/RESULTS.md.
# Usage: sh bench/merkle/run.sh [LEAVES]   (from the repository root)
set -e
B=${B:-build}
CC=${CC:-cc}
n=${1:-1000000}
out=$B/bench/bench_merkle
mkdir -p "$B/bench"
# shellcheck disable=SC2046
$CC -std=c11 -D_GNU_SOURCE -O2 -Ilib $(pkg-config --cflags jansson libsodium) \
	-o "$out" bench/merkle/bench_merkle.c "$B/libtrail.a" \
	$(pkg-config --libs jansson libarchive libsodium libcurl libmicrohttpd) \
	-ldnnl -lgomp -lopenblas -llapacke -lxxhash -lm -pthread
table=$(mktemp)
trap 'rm -f "$table" "$table.new"' EXIT
{
	echo "## Merkle"
	echo
	echo "\`sh bench/merkle/run.sh $n\` on $(uname -m), $(nproc) cores (shared with other builds), $(date -u +%Y-%m-%d)."
	"$out" "$n"
	echo
	echo "Verification costs about one node hash per proof hash (two per hash on"
	echo "the old-root side of a consistency proof); generation is callback reads"
	echo "plus the node hashes that fold the one ragged subtree on the right edge."
	echo
} >"$table"
cat "$table"
f=bench/RESULTS.md
[ -f "$f" ] || printf '# Benchmark results\n\n' >"$f"
# Keep every other section; put ours where it was, or at the end.
awk -v tf="$table" '
	function emit() { while ((getline l < tf) > 0) print l; done = 1 }
	/^## / { if (skip) skip = 0; if ($0 == "## Merkle") { emit(); skip = 1; next } }
	!skip { print }
	END { if (!done) emit() }
' "$f" >"$table.new"
mv "$table.new" "$f"
