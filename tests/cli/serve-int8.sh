#!/bin/bash
# lora-serve --precision int8: the same token ids on 1, 2 and 4 threads;
# each request alone gets what it gets in a batch of several adapters;
# oneDNN capped to AVX-512 without VNNI and to AVX2 gives the very same
# token ids (the 7-bit inputs make the int32 sums exact everywhere), the
# events labelled by precision and instruction set; greedy answers close
# to fp32's; mf-train and attr-score refuse int8 by name.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
serve_fixture 150 12
export -f key
for t in 1 2 4; do lora-serve --base base --adapters ads --precision int8 --threads $t --events ev$t.ndjson < reqs.ndjson > i$t.ndjson; done
check_eq "int8: 20 responses" "$(key i1.ndjson | wc -l)" 20
check "int8: the same token ids on 1, 2 and 4 threads" bash -c "cmp <(key i1.ndjson) <(key i2.ndjson) && cmp <(key i1.ndjson) <(key i4.ndjson)"
check_eq "int8: every event records the precision" "$(grep -c '"precision":"int8"' ev1.ndjson)" 20
for i in 0 1 2 3 5 6; do sed -n "$((i + 1))p" reqs.ndjson | lora-serve --base base --adapters ads --precision int8 --threads 2; done > alone.ndjson
check "int8: each request alone gets its tokens of the mixed batch" cmp <(key alone.ndjson) <(key i2.ndjson | grep -E '^r(0|1|2|3|5|6) ')

# instruction sets: VNNI (where the CPU has it), AVX-512 without VNNI, AVX2: one set of bits
for isa in AVX512_CORE AVX2; do
	lc=$(echo $isa | tr A-Z a-z)
	for t in 1 4; do ONEDNN_MAX_CPU_ISA=$isa lora-serve --base base --adapters ads --precision int8 --threads $t --events evx$lc$t.ndjson < reqs.ndjson > x$lc$t.ndjson; done
	check_eq "capped to $isa: labelled int8 on $lc" "$(grep -c "\"isa\":\"$lc\".*\"precision\":\"int8\"\|\"precision\":\"int8\".*\"isa\":\"$lc\"" evx$lc"1".ndjson)" 20
	check "capped to $isa: the same token ids as uncapped, on 1 and 4 threads" bash -c "cmp <(key i1.ndjson) <(key x$lc"1".ndjson) && cmp <(key i1.ndjson) <(key x$lc"4".ndjson)"
done
check "capped to AVX-512 without VNNI: int8 sums exact, logits' checks hold" sh -c "ONEDNN_MAX_CPU_ISA=AVX512_CORE '$TRAIL_BUILD/tests/test_infer' > infer.tap && ! grep -q '^not ok' infer.tap && grep -q 'int8 sums on avx512_core = exact' infer.tap"

# close to fp32: the greedy answers of the base, 12 tokens each
for i in $(seq 0 19); do printf '{"id":"g%d","model":"base","prompt":"Harbour %d ","max_tokens":12,"temperature":0}\n' $i $i; done > greedy.ndjson
lora-serve --base base --precision fp32 < greedy.ndjson | sed 's/.*"id":"\(g[0-9]*\)".*"output_tokens":\[\([0-9,]*\)\].*/\1 \2/' | sort > g32
lora-serve --base base --precision int8 < greedy.ndjson | sed 's/.*"id":"\(g[0-9]*\)".*"output_tokens":\[\([0-9,]*\)\].*/\1 \2/' | sort > g8
same=$(join g32 g8 | awk '$2 == $3' | wc -l)
check "int8: at least 15 of 20 greedy answers (12 tokens) are fp32's ($same)" test "$same" -ge 15

check_rc 64 "mf-train --precision int8: usage error" mf-train --init cfg.json --data a.ndjson --steps 1 --precision int8 --no-progress --no-index -o m8
check "mf-train --precision int8: says it is for serving" sh -c "mf-train --init cfg.json --data a.ndjson --steps 1 --precision int8 -o m8 2>&1 | grep -q 'int8 is for serving'"
check_rc 64 "attr-score --precision int8: usage error" attr-score --model base --data a.ndjson --precision int8
check_rc 64 "--precision int4: usage error naming the three" sh -c "lora-serve --base base --precision int4 2>&1 </dev/null | grep -q 'fp32, bf16 or int8' && exit 64"
finish
