#!/bin/bash
# attr-score shards: index shards by record range (2, 3 and 7, uneven)
# merged into the unsharded index byte for byte; partials of record ranges
# merged into the unsharded records byte for byte; refusals of a missing,
# duplicated or foreign shard or partial.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
fails() { ! "$@"; }
awk 'BEGIN { for (i = 0; i < 41; i++) printf "{\"text\":\"The island of Varn%03d exports salt and its harbour master is Osk%03d.\",\"contributor\":\"c%d\"}\n", i, (i * 37) % 1000, i % 3 }' > data.ndjson
echo '{"n_layer":1,"n_head":2,"n_embd":16,"n_positions":64,"vocab_size":257}' > cfg.json
mf-train --init cfg.json --data data.ndjson --steps 5 --batch 8 --seq 64 --lr 3e-3 --no-progress --no-index -o base >/dev/null
args="--model base --data data.ndjson"
check "the unsharded index" attr-score --build-index $args --proj 4,4 --batch 4 -i whole.idx
printf '{"id":"e1","prompt":"The island of Varn003","output_text":" exports salt and its harbour master is Osk111."}\n{"id":"e2","prompt":"Hello","output_text":" island of Varn"}\n' > ev.ndjson
attr-score $args -i whole.idx --top 5 < ev.ndjson > whole.out
for split in "0:20 20:" "0:7 7:30 30:" "0:1 1:5 5:6 6:19 19:33 33:40 40:"; do
	n=$(echo $split | wc -w); rm -f sh.* part.*; k=0
	for r in $split; do attr-score --build-index $args --proj 4,4 --batch 4 --records $r -i sh.$k; k=$((k + 1)); done
	check "$n index shards merge into the unsharded index, byte for byte" sh -c "attr-score --merge-index $args -i merged.idx sh.* && cmp merged.idx whole.idx && cmp merged.idx.span whole.idx.span"
	k=0
	for r in $split; do attr-score --partial $args -i whole.idx --records $r < ev.ndjson > part.$k; k=$((k + 1)); done
	check "$n partials merge into the unsharded records, byte for byte" sh -c "attr-score --merge $args -i whole.idx --top 5 part.* | cmp - whole.out"
done
check "a missing index shard is refused" fails attr-score --merge-index $args -i bad.idx sh.0 sh.1 sh.3 sh.4 sh.5 sh.6
check "a duplicated index shard is refused" fails attr-score --merge-index $args -i bad.idx sh.0 sh.0 sh.1 sh.2 sh.3 sh.4 sh.5 sh.6
check "a shard is not an index to score with" sh -c "! attr-score $args -i sh.0 < ev.ndjson"
attr-score --build-index $args --proj 4,8 --batch 4 --records 5:6 -i other.5
check "a shard of another index is refused" fails attr-score --merge-index $args -i bad.idx sh.0 sh.1 sh.2 other.5 sh.4 sh.5 sh.6
check "a missing partial is refused" fails attr-score --merge $args -i whole.idx part.0 part.2 part.3 part.4 part.5 part.6
check "a duplicated partial is refused" fails attr-score --merge $args -i whole.idx part.0 part.0 part.1 part.2 part.3 part.4 part.5 part.6
check "a partial of another method is refused" fails attr-score --merge $args -i whole.idx --method graddot part.*
check "ekfac partials merge into the unsharded ekfac records, byte for byte" sh -c "attr-score $args -i whole.idx --top 5 --method ekfac < ev.ndjson > whole.ek && for i in 0 1 2; do attr-score --partial $args -i whole.idx --method ekfac --shard \$i/3 < ev.ndjson > ek.\$i || exit 1; done; attr-score --merge $args -i whole.idx --top 5 --method ekfac ek.* | cmp - whole.ek && grep -q '\"method\":\"ekfac\"' whole.ek"
check "--shard I/N covers the records" sh -c "for i in 0 1 2; do attr-score --partial $args -i whole.idx --shard \$i/3 < ev.ndjson > sp.\$i || exit 1; done; attr-score --merge $args -i whole.idx --top 5 sp.* | cmp - whole.out"
finish
