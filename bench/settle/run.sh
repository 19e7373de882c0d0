#!/bin/sh
# Settlement throughput and memory: N generated attribution records (default
# 10 million) over 1,000 contributors, streamed through attr-settle --dry-run.
# usage: bench/settle/run.sh [N]
top=$(cd "$(dirname "$0")/../.." && pwd)
B=${B:-build}
n=${1:-10000000}
cat > /tmp/trail-bench-settle-policy.json <<'J'
{"fee_per_1k_prompt": 100, "fee_per_1k_completion": 300,
 "split_bps": {"platform": 1000, "model": 2000, "stakers": 1000, "contributors": 6000}}
J
gen() {
	awk -v n="$n" 'BEGIN { for (i = 0; i < n; i++) printf "{\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d},\"contributors\":[{\"contributor\":\"c%d\",\"share\":0.6},{\"contributor\":\"c%d\",\"share\":0.4}]}\n", i % 997, i % 89, i % 1000, (i * 7) % 1000 }'
}
t0=$(date +%s.%N)
gen | wc -c > /tmp/trail-bench-settle-bytes
t1=$(date +%s.%N)
gen | /usr/bin/time -f '%M' -o /tmp/trail-bench-settle-rss "$top/$B/bin/attr-settle" --dry-run \
	--policy /tmp/trail-bench-settle-policy.json --epoch bench > /tmp/trail-bench-settle-out
t2=$(date +%s.%N)
awk -v n="$n" -v a="$t0" -v b="$t1" -v c="$t2" -v rss="$(cat /tmp/trail-bench-settle-rss)" \
	-v bytes="$(cat /tmp/trail-bench-settle-bytes)" 'BEGIN {
	gen = b - a; total = c - b; net = total - gen
	printf "{\"records\":%d,\"bytes\":%d,\"seconds_total\":%.2f,\"seconds_generator\":%.2f,\"records_per_s\":%.0f,\"records_per_s_net\":%.0f,\"peak_rss_kb\":%d}\n", n, bytes, total, gen, n / total, n / net, rss }'
tail -1 /tmp/trail-bench-settle-out
