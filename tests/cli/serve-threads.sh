#!/bin/bash
# lora-serve and attr-score across thread counts and precisions: the same
# token ids (greedy and sampled) on 1, 2 and 4 threads in fp32 and bf16; in
# bf16 each request alone gets what it gets in a batch of several adapters;
# events record the precision and oneDNN's instruction set; attribution
# records the same bytes on 1, 2 and 4 threads, their precision in their
# params; oneDNN capped to AVX2 still serves bf16 (emulated products, bits
# labelled "isa":"avx2"), the same on every thread count.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
serve_fixture 6 10
export -f key
for p in fp32 bf16; do
	for t in 1 2 4; do lora-serve --base base --adapters ads --precision $p --threads $t --events ev$p$t.ndjson < reqs.ndjson > $p$t.ndjson; done
	check_eq "$p: 20 responses" "$(key $p"1".ndjson | wc -l)" 20
	check "$p: the same token ids on 1, 2 and 4 threads" bash -c "cmp <(key $p"1".ndjson) <(key $p"2".ndjson) && cmp <(key $p"1".ndjson) <(key $p"4".ndjson)"
	check_eq "$p: every event records the precision" "$(grep -c "\"precision\":\"$p\"" ev$p"1".ndjson)" 20
done
check "the events record oneDNN's instruction set" grep -q '"isa":"avx' evbf161.ndjson
for i in 0 1 2 3 5 6; do sed -n "$((i + 1))p" reqs.ndjson | lora-serve --base base --adapters ads --precision bf16 --threads 2; done > alone.ndjson
check "bf16: each request alone gets its tokens of the mixed batch" cmp <(key alone.ndjson) <(key bf162.ndjson | grep -E '^r(0|1|2|3|5|6) ')
isa=$(sed -n '1s/.*"isa":"\([a-z0-9_]*\)".*/\1/p' evbf161.ndjson)
case $isa in *bf16* | *amx*) want=bf16 ;; *) want=fp32 ;; esac
head -1 reqs.ndjson | lora-serve --base base --adapters ads --events evd.ndjson > /dev/null
check "the default precision is $want on $isa" grep -q "\"precision\":\"$want\"" evd.ndjson
check_rc 64 "--precision fp16: usage error" lora-serve --base base --precision fp16

# oneDNN capped to AVX2 (2.6 reads ONEDNN_MAX_CPU_ISA): no bf16 matmul there, the products emulated
for t in 1 2 4; do ONEDNN_MAX_CPU_ISA=AVX2 lora-serve --base base --adapters ads --precision bf16 --threads $t --events evx$t.ndjson < reqs.ndjson > x$t.ndjson; done
check_eq "capped to AVX2: bf16 serves every request" "$(key x1.ndjson | wc -l)" 20
check "capped to AVX2: the same token ids on 1, 2 and 4 threads" bash -c "cmp <(key x1.ndjson) <(key x2.ndjson) && cmp <(key x1.ndjson) <(key x4.ndjson)"
check_eq "capped to AVX2: labelled bf16 on avx2" "$(grep -c '"isa":"avx2".*"precision":"bf16"\|"precision":"bf16".*"isa":"avx2"' evx1.ndjson)" 20
for i in 0 1 2; do sed -n "$((i + 1))p" reqs.ndjson | ONEDNN_MAX_CPU_ISA=AVX2 lora-serve --base base --adapters ads --precision bf16; done > xalone.ndjson
check "capped to AVX2: each request alone gets its tokens of the batch" cmp <(key xalone.ndjson) <(key x1.ndjson | grep -E '^r(0|1|2) ')
head -1 reqs.ndjson | ONEDNN_MAX_CPU_ISA=AVX2 lora-serve --base base --adapters ads --events evxd.ndjson > /dev/null
check "capped to AVX2: the default precision is fp32" grep -q '"precision":"fp32"' evxd.ndjson
check "capped to AVX2: the logits' checks (threads, batch) hold for the emulated products" sh -c "ONEDNN_MAX_CPU_ISA=AVX2 '$TRAIL_BUILD/tests/test_infer' > infer.tap && ! grep -q '^not ok' infer.tap"

# attribution: the same records on 1, 2 and 4 threads in fp32 and bf16, with events of either form
attr-score --build-index --model base --data a.ndjson --proj 4,4 --precision fp32 > /dev/null
grep '"adapter":null' evfp321.ndjson | head -3 > evs.ndjson
grep '"adapter":null' evbf161.ndjson | head -1 >> evs.ndjson
printf '{"id":"old","prompt":"Harbour 3 ","output_text":"opens at 3"}\n' >> evs.ndjson
for p in fp32 bf16; do
	for t in 1 2 4; do attr-score --model base --data a.ndjson --top 3 --precision $p --threads $t < evs.ndjson > at$p$t; done
	check_eq "$p: a record for each event, with and without precision fields" "$(wc -l < at$p"1")" 5
	check "$p: attribution records the same bytes on 1, 2 and 4 threads" sh -c "cmp at$p"1" at$p"2" && cmp at$p"1" at$p"4""
	check "$p: the records' params carry the precision" grep -q "\"precision\":\"$p\"" at$p"1"
	check "$p: --verify at the same precision" attr-score --model base --data a.ndjson --precision $p --verify at$p"1"
done
check_rc 1 "--verify at another precision: a difference, named" sh -c "attr-score --model base --data a.ndjson --precision bf16 --verify atfp321 2> verr; r=\$?; grep -q 'recorded at fp32 precision, recomputed at bf16' verr && exit \$r"
finish
