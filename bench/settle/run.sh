#!/bin/sh
# Settlement throughput and memory: N generated attribution records (default
# 10 million, attr-score's shape, 1,000 contributors, 689 bytes a record).
#   1. the engine alone: trail_settle_line over records generated in memory,
#      only the settlement calls timed (CPU time of the thread, and wall);
#   2. the program: the records written to a file first (6.9 GB for 10
#      million, in $TMPDIR), then attr-settle --dry-run over it with 1 and
#      with 2 threads: wall, user + sys CPU time and peak RSS of each, and a
#      check that both print the same bytes.
# usage: bench/settle/run.sh [N]
set -e
top=$(cd "$(dirname "$0")/../.." && pwd)
B=${B:-build}
n=${1:-10000000}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
${CC:-cc} -O2 -std=c11 -D_GNU_SOURCE -I"$top/lib" $(pkg-config --cflags jansson) \
	-o "$tmp/bench_settle" "$top/bench/settle/bench_settle.c" "$top/$B/libtrail.a" \
	$(pkg-config --libs jansson libsodium) -lxxhash -lm -pthread
"$tmp/bench_settle" engine "$n"
cat > "$tmp/policy.json" <<'J'
{"fee_per_1k_prompt": 100, "fee_per_1k_completion": 300,
 "split_bps": {"platform": 1000, "model": 2000, "stakers": 1000, "contributors": 6000},
 "stakes": {"contrib-0001": 5000, "contrib-0002": 100},
 "penalty": {"max_poisoning": 0, "min_influence": -1000, "slash_bps": 100}}
J
"$tmp/bench_settle" gen "$n" > "$tmp/in.ndjson"
cat "$tmp/in.ndjson" > /dev/null # from the page cache, as far as it holds it
for j in 1 2; do
	/usr/bin/time -f '%e %U %S %M' -o "$tmp/t$j" "$top/$B/bin/attr-settle" --dry-run --threads "$j" \
		--policy "$tmp/policy.json" --epoch bench "$tmp/in.ndjson" > "$tmp/out$j"
	read -r wall user sys rss < "$tmp/t$j"
	awk -v n="$n" -v j="$j" -v w="$wall" -v u="$user" -v s="$sys" -v rss="$rss" 'BEGIN {
		printf "{\"program_threads\":%d,\"records\":%d,\"wall_s\":%.2f,\"cpu_s\":%.2f,\"records_per_s_wall\":%.0f,\"records_per_s_cpu\":%.0f,\"peak_rss_kb\":%d}\n", j, n, w, u + s, n / w, n / (u + s), rss }'
done
cmp "$tmp/out1" "$tmp/out2" && echo "1 and 2 threads: the same output"
tail -1 "$tmp/out1" | cut -c1-240
