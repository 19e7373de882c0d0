#!/bin/bash
# attr-settle anchored in the ledger: the attributions settled are looked up
# among attr-score's attribution-batch entries by the digest of their bytes;
# the settlement entry names the batches; a batch of another epoch or count,
# --batch naming the wrong entry, and unanchored records under
# --require-batch are refused.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
trail-log init >/dev/null
cat > pol.json <<'J'
{"fee_per_1k_prompt": 100, "fee_per_1k_completion": 300,
 "split_bps": {"platform": 1000, "model": 2000, "stakers": 1000, "contributors": 6000}}
J

# the real chain: attr-score --record, then attr-settle of the very bytes it wrote
awk 'BEGIN { for (i = 0; i < 30; i++) printf "{\"text\":\"The island of Varn%03d exports tin and its harbour master is called Osk%03d.\",\"contributor\":\"c%d\"}\n", i, i * 7, i % 3 }' > data.ndjson
echo '{"n_layer":1,"n_head":2,"n_embd":16,"n_positions":64,"vocab_size":257}' > cfg.json
mf-train --init cfg.json --data data.ndjson --steps 4 --batch 4 --seq 64 --no-progress --no-index -o base >/dev/null
attr-score --build-index --model base --data data.ndjson --proj 4,4 >/dev/null 2>&1
printf '{"id":"ev-%d","prompt":"The island of Varn00%d","output_text":" exports tin","usage":{"prompt_tokens":%d,"completion_tokens":3}}\n' 1 1 5 2 2 6 3 3 7 > ev.ndjson
attr-score --model base --data data.ndjson --top 3 --record --epoch 2026-12 < ev.ndjson > a.ndjson 2> a.err
check "attr-score records a batch of 3" grep -q '^attr-score: 3 records in ledger entry [0-9]*$' a.err
be=$(sed 's/.* entry //' a.err)
attr-settle -v --policy pol.json --epoch 2026-12 a.ndjson > s1 2> s1.err
check_eq "the batch's records are settled: exit 0" "$?" 0
check "-v names the batch" grep -q "^attr-settle: a.ndjson: 3 records, the attribution batch at entry $be\$" s1.err
dg=$(sha256sum < a.ndjson | cut -d' ' -f1)
check "the settlement entry names the batch, entry and digest" sh -c "trail-log show | grep '\"type\":\"settlement\"' | grep -q '\"batches\":\[{\"entry\":$be,\"records_object\":\"sha256:$dg\"}\]'"
check "from standard input too, with --batch and --require-batch" sh -c "attr-settle --dry-run --require-batch --batch $be --policy pol.json --epoch 2026-12 < a.ndjson | cmp - s1"
check "the ledger verifies" trail-log verify

# batches written as attr-score writes them: the object, then the entry
batch() { # file epoch-member records: append an attribution-batch entry for the file's bytes
	d=$(sha256sum < "$1" | cut -d' ' -f1)
	mkdir -p "$TRAIL_HOME/objects/sha256/$(echo "$d" | cut -c1-2)"
	cp "$1" "$TRAIL_HOME/objects/sha256/$(echo "$d" | cut -c1-2)/$(echo "$d" | cut -c3-)"
	printf '{"type":"attribution-batch",%s"records":%d,"records_object":"sha256:%s","indexes":[],"method":"influence"}\n' "$2" "$3" "$d" | trail-log append | sed 's/^{"index":\([0-9]*\),.*/\1/'
}
rec() { awk -v p="$1" -v n="$2" 'BEGIN { for (i = 0; i < n; i++) printf "{\"event\":\"%s%d\",\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":4},\"contributors\":[{\"contributor\":\"c%d\",\"share\":0.5}]}\n", p, i, 10 + i, i % 4 }'; }
rec x 20 > x.ndjson
rec y 10 > y.ndjson
rec z 5 > z.ndjson
bx=$(batch x.ndjson '"epoch":"E1",' 20)
by=$(batch y.ndjson '' 10)
attr-settle --policy pol.json --epoch E1 x.ndjson y.ndjson > /dev/null
check_eq "two inputs, two batches (one without an epoch): exit 0" "$?" 0
check "both named in the settlement entry, in input order" sh -c "trail-log show | grep '\"epoch\":\"E1\"' | grep '\"type\":\"settlement\"' | grep -q '\"batches\":\[{\"entry\":$bx,[^]]*},{\"entry\":$by,'"
check_rc 1 "a batch of another epoch: exit 1" sh -c 'attr-settle --policy pol.json --epoch E2 x.ndjson 2> e2'
check "saying so" grep -q "^attr-settle: error: the attribution batch at entry $bx is of epoch E1, not E2\$" e2
check "and nothing recorded" sh -c '! trail-log show | grep -q "\"epoch\":\"E2\""'
bz=$(batch z.ndjson '"epoch":"E3",' 6)
check_rc 1 "a batch whose count differs: exit 1" sh -c 'attr-settle --policy pol.json --epoch E3 z.ndjson 2> e3'
check "saying so" grep -q "holds 6 records, the input 5" e3
check_rc 1 "--batch naming another batch's entry: exit 1" sh -c "attr-settle --dry-run --batch $by --policy pol.json --epoch E1 x.ndjson 2> e4"
check "saying so" grep -q "^attr-settle: error: entry $by is not the attribution batch of these records" e4
check_rc 1 "--batch past the ledger's end: exit 1" attr-settle --dry-run --batch 99999 --policy pol.json --epoch E1 x.ndjson
rec w 7 > w.ndjson
check_rc 1 "--require-batch: records in no batch are refused" sh -c 'attr-settle --require-batch --policy pol.json --epoch E4 y.ndjson w.ndjson 2> e5'
check "naming the input" grep -q "^attr-settle: error: w.ndjson: its 7 records (sha256:[0-9a-f]*) are in no attribution batch of the ledger\$" e5
check "and nothing recorded" sh -c '! trail-log show | grep -q "\"epoch\":\"E4\""'
echo '{"type":"flags","contributor":"c1","rejected":1}' > flags.ndjson
check_rc 0 "--require-batch: a file of flags lines only needs no batch" sh -c 'attr-settle --require-batch --policy pol.json --epoch E5 y.ndjson flags.ndjson > /dev/null'
attr-settle --policy pol.json --epoch E6 w.ndjson > /dev/null
check_eq "without --require-batch, records in no batch are settled" "$?" 0
check "and the entry has no batches, as before" sh -c "trail-log show | grep '\"epoch\":\"E6\"' | grep -v -q '\"batches\"'"
mkdir -p elsewhere
check_rc 64 "--batch without a store: 64" sh -c 'cd elsewhere && env -u TRAIL_HOME attr-settle --dry-run --batch 1 --policy ../pol.json --epoch E1 ../x.ndjson'
check_rc 64 "more --batch than inputs: 64" attr-settle --dry-run --batch 1 --batch 2 --policy pol.json --epoch E1 x.ndjson
check "the ledger verifies" trail-log verify
finish
