#!/bin/sh
# Settlement throughput and memory: N generated attribution records (default
# 10 million, attr-score's shape, 1,000 contributors).
#   1. the engine alone: trail_settle_line over records generated in memory,
#      only the settlement calls timed;
#   2. the program: bench_settle gen N | attr-settle --dry-run, wall time and
#      peak RSS, beside the generator's own time (gen N > /dev/null).
# usage: bench/settle/run.sh [N]
set -e
top=$(cd "$(dirname "$0")/../.." && pwd)
B=${B:-build}
n=${1:-10000000}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
${CC:-cc} -O2 -std=c11 -D_GNU_SOURCE -I"$top/lib" $(pkg-config --cflags jansson) \
	-o "$tmp/bench_settle" "$top/bench/settle/bench_settle.c" "$top/$B/libtrail.a" \
	$(pkg-config --libs jansson libsodium) -lxxhash -lm
"$tmp/bench_settle" engine "$n"
cat > "$tmp/policy.json" <<'J'
{"fee_per_1k_prompt": 100, "fee_per_1k_completion": 300,
 "split_bps": {"platform": 1000, "model": 2000, "stakers": 1000, "contributors": 6000}}
J
t0=$(date +%s.%N)
"$tmp/bench_settle" gen "$n" > /dev/null
t1=$(date +%s.%N)
"$tmp/bench_settle" gen "$n" | /usr/bin/time -f '%M %U' -o "$tmp/rss" "$top/$B/bin/attr-settle" --dry-run \
	--policy "$tmp/policy.json" --epoch bench > "$tmp/out"
t2=$(date +%s.%N)
read -r rss user < "$tmp/rss"
awk -v n="$n" -v a="$t0" -v b="$t1" -v c="$t2" -v rss="$rss" -v user="$user" 'BEGIN {
	printf "{\"program_records\":%d,\"generator_seconds\":%.2f,\"pipeline_seconds\":%.2f,\"program_user_seconds\":%.2f,\"records_per_s_pipeline\":%.0f,\"records_per_s_program_cpu\":%.0f,\"program_peak_rss_kb\":%d}\n", n, b - a, c - b, user, n / (c - b), n / user, rss }'
tail -1 "$tmp/out" | cut -c1-200
