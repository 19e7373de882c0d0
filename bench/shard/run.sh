#!/bin/sh
# Shards and their merges at scale (the programs, as a Slurm array runs them):
#   1. attribution: an index of N records (default 1,000,000) built in 8
#      shards, the merge into the whole index, and one query scored against
#      the whole index and as 8 partials plus their merge;
#   2. validation: N records of 45 words checked in one pass and in 4 shards
#      plus their merge;
#   3. settlement: the attribution records of the queries' shape, N lines
#      settled in one pass and in 4 shards plus their merge.
# Each command's wall, user + sys CPU seconds and peak RSS (/usr/bin/time);
# every merged output is compared with the unsharded one (cmp). The index
# shards run J at a time (J=1, the default: one after another); their sum
# is the CPU a cluster spends, their largest the wall time of an array with
# a node per shard.
# usage: bench/shard/run.sh [N [attr] [validate] [settle]]   (default: all three)
# B=build; J=K: K index shards at once; files in a new directory of $TMPDIR,
# removed at the end unless KEEP=1; RESUME=DIR: work in DIR (made if missing,
# always kept) and keep what a killed run there finished: the corpus, the
# model and every index shard whose timing was recorded. UNSHARDED=1: also
# build the whole index in one process (queued first, among the J) and
# compare the merged index and span index with it.
set -e
top=$(cd "$(dirname "$0")/../.." && pwd)
B=${B:-build}
N=${1:-1000000}
J=${J:-1}
case $J in ''|*[!0-9]*|0) echo "run.sh: J must be a positive integer, not '$J'" >&2; exit 64;; esac
[ $# -gt 1 ] && shift && parts=" $* " || parts=" attr validate settle "
PATH=$top/$B/bin:$PATH
if [ -n "${RESUME:-}" ]; then
	mkdir -p "$RESUME"; tmp=$(cd "$RESUME" && pwd); KEEP=1
	[ ! -f "$tmp/N" ] || [ "$(cat "$tmp/N")" = "$N" ] || { echo "run.sh: $tmp holds a run of $(cat "$tmp/N") records, not $N" >&2; exit 64; }
else
	tmp=$(mktemp -d)
fi
trap '[ -n "${KEEP:-}" ] || rm -rf "$tmp"' EXIT; echo "in $tmp"
cd "$tmp"
echo "$N" > N
tf() { # FILE CMD...: run CMD, its "wall user sys rss" into FILE (only when it succeeds)
	f=$1; shift
	/usr/bin/time -f '%e %U %S %M' -o "$f.part" "$@" && mv "$f.part" "$f"
}
show() { # LABEL FILE: print "LABEL wall user+sys rss"
	awk -v l="$1" '{ printf "%-44s %8.2f s wall %8.2f s cpu %7.0f MB\n", l, $1, $2 + $3, $4 / 1024 }' "$2"
}
t() { # LABEL CMD...: run, print its figures (redirect inside CMD, not after t)
	l=$1; shift
	tf tm "$@"; show "$l" tm
}
echo "N = $N records, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"

# 1. attribution
case $parts in *" attr "*)
if [ ! -f base.done ]; then
	awk -v n="$N" 'BEGIN { for (i = 0; i < n; i++) printf "{\"text\":\"The island of Varn%07d exports salt and its master is Osk%03d.\",\"contributor\":\"c%d\"}\n", i, (i * 37) % 1000, i % 1000 }' > data.ndjson
	head -n 2000 data.ndjson > train.ndjson
	echo '{"n_layer":1,"n_head":2,"n_embd":16,"n_positions":96,"vocab_size":257}' > cfg.json
	rm -rf base
	mf-train --init cfg.json --data train.ndjson --steps 20 --batch 8 --seq 96 --lr 3e-3 --no-progress --no-index -o base >/dev/null
	rm -f sh.* tm.sh.*; : > base.done
fi
a="--model base --data data.ndjson"
echo "index shards, $J at a time${UNSHARDED:+, with the unsharded index}"
todo=
for i in ${UNSHARDED:+u} 0 1 2 3 4 5 6 7; do
	if [ -f tm.sh.$i ] && [ -f sh.$i ]; then echo "index shard $i: kept from an earlier run"; else todo="$todo $i"; fi
done
# xargs -P runs J at a time; a job's figures go to tm.sh.I once it is complete
# (job u, with UNSHARDED=1: the whole index in one process, as sh.u)
[ -z "$todo" ] || printf '%s\n' $todo | xargs -P "$J" -I@ sh -c \
	'if [ @ = u ]; then s=; else s="--shard @/8"; fi
	/usr/bin/time -f "%e %U %S %M" -o tm.sh.@.part attr-score --build-index '"$a"' --proj 4,4 --batch 64 $s -i sh.@ && mv tm.sh.@.part tm.sh.@'
for i in 0 1 2 3 4 5 6 7; do show "index shard $i/8" tm.sh.$i; done
awk '{ c = $2 + $3; s += c; if (c > m) m = c; if ($4 > r) r = $4 } END { printf "index shards: %.2f s cpu in all, %.2f s the largest, %.0f MB peak\n", s, m, r / 1024 }' tm.sh.0 tm.sh.1 tm.sh.2 tm.sh.3 tm.sh.4 tm.sh.5 tm.sh.6 tm.sh.7
[ -z "${UNSHARDED:-}" ] || show "the whole index, unsharded" tm.sh.u
t "index merge (8 shards, span index)" attr-score --merge-index $a -i whole.idx sh.0 sh.1 sh.2 sh.3 sh.4 sh.5 sh.6 sh.7
printf '{"id":"q1","prompt":"The island of Varn0000042","output_text":" exports salt and its master is Osk554.","usage":{"prompt_tokens":12,"completion_tokens":9}}\n' > ev.ndjson
: > none.ndjson
t "open the whole index, no query" sh -c "attr-score $a -i whole.idx --top 5 < none.ndjson > /dev/null"
t "one query against the whole index" sh -c "attr-score $a -i whole.idx --top 5 < ev.ndjson > whole.out"
for i in 0 1 2 3 4 5 6 7; do t "one query, partial $i/8" sh -c "attr-score --partial $a -i whole.idx --shard $i/8 < ev.ndjson > part.$i"; done
t "one query, merge of 8 partials" sh -c "attr-score --merge $a -i whole.idx --top 5 part.* > merged.out"
cmp merged.out whole.out && echo "the merged record is the whole index's, byte for byte"
[ -z "${UNSHARDED:-}" ] || { cmp whole.idx sh.u && cmp whole.idx.span sh.u.span && echo "the merged index and span index are the unsharded build's, byte for byte"; }
ls -l whole.idx whole.idx.span sh.0 part.0 | awk '{ printf "%-16s %12d bytes\n", $9, $5 }'
;; esac

# 2. validation
case $parts in *" validate "*)
awk -v n="$N" 'BEGIN { for (i = 0; i < n; i++) { x = (i % 400000 + 1) * 40503; s = "Record " i " of the survey:"
	for (k = 0; k < 45; k++) { x = (x * 69069 + 1) % 4294967296; s = s " word" int(x / 65536) % 5000 (k % 9 == 8 ? "." : "") }
	printf "{\"text\":\"%s\"}\n", s } }' > v.ndjson
echo "validation input: $(wc -c < v.ndjson) bytes"
t "validation, one pass" sh -c 'datanet-validate --no-progress v.ndjson > one.out; [ $? -le 1 ]'
for i in 0 1 2 3; do t "validation, partial $i/4" sh -c "datanet-validate --no-progress --partial --shard $i/4 v.ndjson > vp.$i"; done
t "validation, merge of 4 partials" sh -c 'datanet-validate --no-progress --merge vp.0 vp.1 vp.2 vp.3 > m.out; [ $? -le 1 ]'
cmp m.out one.out && echo "the merged verdicts are the one pass's, byte for byte"
tail -n 1 one.out | cut -c1-160
ls -l vp.0 | awk '{ printf "a validation partial: %d bytes\n", $5 }'
;; esac

# 3. settlement
case $parts in *" settle "*)
awk -v n="$N" 'BEGIN { for (i = 0; i < n; i++) printf "{\"event\":\"e%d\",\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d},\"contributors\":[{\"contributor\":\"c%d\",\"share\":0.7},{\"contributor\":\"c%d\",\"share\":0.3}]}\n", i, 10 + i % 90, 5 + i % 40, i % 1000, (i * 7) % 1000 }' > s.ndjson
echo '{"fee_per_1k_prompt": 137, "fee_per_1k_completion": 311, "split_bps": {"platform": 1000, "model": 2000, "stakers": 1000, "contributors": 6000}}' > pol.json
t "settlement, one pass (1 thread)" sh -c 'attr-settle --dry-run --threads 1 --policy pol.json --epoch E s.ndjson > s1.out'
for i in 0 1 2 3; do t "settlement, partial $i/4" sh -c "attr-settle --partial --shard $i/4 --policy pol.json --epoch E s.ndjson > sp.$i"; done
t "settlement, merge of 4 partials" sh -c 'attr-settle --dry-run --merge --policy pol.json --epoch E sp.0 sp.1 sp.2 sp.3 > s2.out'
cmp s1.out s2.out && echo "the merged settlement is the one pass's, byte for byte"
;; esac
