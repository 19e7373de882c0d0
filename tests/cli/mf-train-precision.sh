#!/bin/bash
# mf-train --precision and --threads: the same bits on 1, 2 and 4 threads
# in fp32 and in bf16, for GPT-2 and a Llama config (grouped-query
# attention, a last group of heads of its own), full training and LoRA;
# bf16's loss close to fp32's; oneDNN capped to AVX2 still trains, its bits
# labelled by the ISA recorded in training.json.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
awk 'BEGIN { for (i = 0; i < 64; i++) printf "{\"text\":\"The tide clock number %d rings at %d and the harbour %s.\"}\n", i, i % 12, (i % 2 ? "opens" : "closes") }' > a.ndjson
# n_embd 320 and 4 x 80 rows: products of several blocks each way, edge blocks included
echo '{"n_layer":1,"n_head":4,"n_embd":320,"n_positions":80,"vocab_size":257}' > cfg.json
args="--data a.ndjson --steps 3 --batch 4 --seq 80 --lr 1e-3 --no-progress --no-index"
for p in fp32 bf16; do
	for t in 1 2 4; do mf-train --init cfg.json $args --precision $p --threads $t -o $p$t > /dev/null; done
	check "$p: identical weights on 1, 2 and 4 threads" sh -c "cmp $p"1"/model.safetensors $p"2"/model.safetensors && cmp $p"1"/model.safetensors $p"4"/model.safetensors"
	check "$p: recorded in training.json" grep -q "\"precision\":\"$p\"" $p"1"/training.json
done
# a CPU without AVX-512 has no bf16 matmul in oneDNN 2.6: bf16's products run in fp32, the same weights
native() { grep -q '"isa":"avx512' bf161/training.json; }
if native; then
	check "fp32 and bf16 weights differ" sh -c '! cmp -s fp321/model.safetensors bf161/model.safetensors'
else
	skip "fp32 and bf16 weights differ" "no bf16 matmul on this CPU ($(grep -o '"isa":"[a-z0-9_]*"' bf161/training.json))"
fi
same3() { cmp "$1"1/"$2" "$1"2/"$2" && cmp "$1"1/"$2" "$1"4/"$2"; }
for p in fp32 bf16; do
	for t in 1 2 4; do
		mf-train --base fp321 $args --precision $p --threads $t --lora r=4,alpha=8,targets=c_attn,c_proj,c_fc -o lora$p$t > /dev/null
	done
	check "GPT-2 LoRA, $p: identical adapters on 1, 2 and 4 threads" same3 lora$p adapter_model.safetensors
done
# Llama: 5 query heads over 1 key/value head (bf16 attention in groups of 2 and a last of 1), an MLP of 288
cat > llama.json <<'J'
{"architectures":["LlamaForCausalLM"],"model_type":"llama","num_hidden_layers":2,"hidden_size":160,
 "intermediate_size":288,"num_attention_heads":5,"num_key_value_heads":1,"max_position_embeddings":80,
 "vocab_size":257,"rms_norm_eps":1e-5,"rope_theta":10000.0,"tie_word_embeddings":false,"hidden_act":"silu"}
J
for p in fp32 bf16; do
	for t in 1 2 4; do
		mf-train --init llama.json $args --precision $p --threads $t -o llama$p$t > /dev/null
		mf-train --base llama$p"1" $args --precision $p --threads $t --lora r=4,alpha=8,targets=q_proj,v_proj,down_proj \
			-o llora$p$t > /dev/null
	done
	check "Llama, $p: identical weights on 1, 2 and 4 threads" same3 llama$p model.safetensors
	check "Llama LoRA, $p: identical adapters on 1, 2 and 4 threads" same3 llora$p adapter_model.safetensors
done
if native; then
	check "Llama: fp32 and bf16 weights differ" sh -c '! cmp -s llamafp321/model.safetensors llamabf161/model.safetensors'
else
	skip "Llama: fp32 and bf16 weights differ" "no bf16 matmul on this CPU"
fi
check "bf16 records oneDNN's instruction set" grep -q '"isa":"avx' bf161/training.json
loss() { sed 's/.*"loss_curve":\[\([^]]*\)\].*/\1/' "$1"/training.json | tr , '\n' | tail -1; }
lf=$(loss fp321) lb=$(loss bf161)
check "bf16's last loss within 1% of fp32's ($lb vs $lf)" awk -v a="$lb" -v b="$lf" 'BEGIN { d = (a - b) / b; exit !(d < 0.01 && d > -0.01) }'
lf=$(loss llamafp321) lb=$(loss llamabf161)
check "Llama: bf16's last loss within 1% of fp32's ($lb vs $lf)" awk -v a="$lb" -v b="$lf" 'BEGIN { d = (a - b) / b; exit !(d < 0.01 && d > -0.01) }'
mf-train --eval --base bf161 --data a.ndjson --seq 80 --precision bf16 > eval.json 2> eval.err
check "--eval in bf16 gives a loss, and no warning of records cut when none were" sh -c 'grep -q "\"loss\":" eval.json && ! grep -q warning eval.err'
check_rc 64 "--precision fp16: usage error" mf-train --init cfg.json $args --precision fp16 -o bad
# oneDNN's ISA cap (2.6 reads ONEDNN_MAX_CPU_ISA, and DNNL_MAX_CPU_ISA)
ONEDNN_MAX_CPU_ISA=AVX2 mf-train --init cfg.json $args --precision bf16 --threads 2 -o avx2 > /dev/null
ONEDNN_MAX_CPU_ISA=AVX2 mf-train --init cfg.json $args --precision bf16 --threads 1 -o avx2b > /dev/null
check "capped to AVX2: bf16 still trains, the ISA recorded" grep -q '"isa":"avx2"' avx2/training.json
check "capped to AVX2: the same bits on 1 and 2 threads" cmp avx2/model.safetensors avx2b/model.safetensors
# another ISA may give other bits (oneDNN's kernels differ), but then training.json says so
isa() { grep -o '"isa":"[a-z0-9_]*"' "$1"/training.json; }
check "capped to AVX2: the same bits as $(isa bf161), or another ISA recorded" sh -c \
	"cmp -s bf161/model.safetensors avx2b/model.safetensors || [ '$(isa bf161)' != '$(isa avx2b)' ]"
check "capped to AVX2: the default precision is fp32" sh -c 'ONEDNN_MAX_CPU_ISA=AVX2 mf-train --init cfg.json '"$args"' --threads 1 -o avx2d > /dev/null && grep -q "\"precision\":\"fp32\"" avx2d/training.json'
finish
