# The demo's second half, sourced by examples/demo.sh once the store holds
# approved datanets: train a base model on both snapshots and one adapter
# per datanet, serve the prompts, attribute every answer, settle the epoch,
# and write the HTML report. Uses demo.sh's say, field, have, $size, $top.
#
# DEMO_MODEL=DIR takes a Hugging Face model directory instead of the small
# GPT-2 configuration: config.json and a tokenizer (tokenizer.json with
# tokenizer_config.json), with model.safetensors to start from its weights
# or without to train it from scratch on the snapshots. Llama-family models
# get adapters on q_proj, k_proj, v_proj and o_proj, and a model whose
# tokenizer_config.json has a chat template is served chat requests (each
# prompt as the user's message) rendered with it. DEMO_SEQ and
# DEMO_ADAPTER_BATCH size the adapters' training (default 128 and 8).

cat atlas.ndjson ports.ndjson > all.ndjson
targets=c_attn,c_proj,c_fc
if [ -n "${DEMO_MODEL:-}" ] && [ -s "$DEMO_MODEL/model.safetensors" ]; then
	say "the base model: $DEMO_MODEL, as it is"
	mkdir -p base && cp "$DEMO_MODEL"/*.json "$DEMO_MODEL/model.safetensors" base/
elif [ -n "${DEMO_MODEL:-}" ]; then
	say "training $DEMO_MODEL's configuration on both snapshots, as of tree size $size"
	mf-train --init "$DEMO_MODEL/config.json" --tokenizer "$DEMO_MODEL" --data all.ndjson --steps "${DEMO_STEPS:-240}" \
		--batch 16 --seq "${DEMO_SEQ:-128}" --lr 2e-3 --threads 2 --no-progress -o base | sed 's/^/  /'
else
	say "training a small base model on both snapshots, as of tree size $size"
	mf-train --init "$top/examples/demo-model.json" --data all.ndjson --steps "${DEMO_STEPS:-240}" --batch 16 --seq 128 \
		--lr 2e-3 --threads 2 --no-progress -o base | sed 's/^/  /'
fi
grep -Eq '"model_type": *"(llama|qwen2|mistral)"' base/config.json && targets=q_proj,k_proj,v_proj,o_proj

say "one LoRA adapter per datanet, on its exact snapshot"
mkdir -p adapters
for dn in atlas ports; do
	mf-train --base base --lora "r=8,alpha=16,targets=$targets" --datanet "$dn@$size" \
		--steps "${DEMO_ADAPTER_STEPS:-60}" --batch "${DEMO_ADAPTER_BATCH:-8}" --seq "${DEMO_SEQ:-128}" --lr 2e-3 \
		--threads 2 --no-progress -o "adapters/$dn" | sed 's/^/  /'
done

if grep -q '"chat_template"' base/tokenizer_config.json 2>/dev/null; then
	say "serving chat: every prompt as a user's message, rendered with the model's chat template"
	sed 's/"prompt":"\([^"]*\)"/"messages":[{"role":"user","content":"\1"}]/' data/prompts.ndjson > requests.ndjson
else
	say "serving: every prompt through its datanet's adapter, batched together"
	cp data/prompts.ndjson requests.ndjson
fi
lora-serve --base base --adapters adapters --events events.ndjson --record < requests.ndjson > responses.ndjson
sed -n 's/.*"id":"\([a-z0-9]*\)","model":"\([a-z]*\)","text":"\([^"]*\)".*/  [\2] \1: \3/p' responses.ndjson

if have attr-score; then
	say "attribution: which records and contributors shaped each answer"
	: > attributions.ndjson
	for dn in atlas ports; do
		attr-score --build-index --model base --adapter "adapters/$dn" --datanet "$dn@$size" --threads 2 >/dev/null
		grep "\"adapter\":\"$dn\"" events.ndjson |
			attr-score --model base --adapter "adapters/$dn" --datanet "$dn@$size" --prove --threads 2 > "attr.$dn.ndjson"
		cat "attr.$dn.ndjson" >> attributions.ndjson
	done
	# each answer, its top contributors and top record
	while IFS= read -r a; do
		id=$(printf '%s\n' "$a" | sed -n 's/.*"event":"\([a-z0-9]*\)".*/\1/p')
		ans=$(grep "\"id\":\"$id\"" responses.ndjson | sed -n 's/.*"text":"\([^"]*\)".*/\1/p')
		who=$(printf '%s\n' "$a" | sed 's/.*"contributors":\[\([^]]*\)\].*/\1/' |
			sed 's/{"contributor":"\([a-z]*\)+[^"]*","share":\([0-9.e-]*\)}/\1 \2/g' |
			awk -F, '{ for (i = 1; i <= NF && i <= 3; i++) { split($i, p, " "); printf "%s%s %.0f%%", (i > 1 ? ", " : ""), p[1], p[2] * 100 } }')
		best=$(printf '%s\n' "$a" | sed -n 's/.*"top":\[{"contributor":"\([a-z]*\)+[^"]*","record":"sha256:\([0-9a-f]\{12\}\)[^"]*","score":\([0-9.e+-]*\)}.*/\2 by \1/p')
		printf '  %-3s "%s"  <- %s; top record %s\n' "$id" "$ans" "$who" "$best"
	done < attributions.ndjson
	attr-score --verify --model base --adapter adapters/atlas --datanet "atlas@$size" --threads 2 \
		< attr.atlas.ndjson >/dev/null && echo "  every attribution re-runs bit for bit (attr-score --verify)"
fi

if have attr-settle && [ -s attributions.ndjson ]; then
	say "settling epoch 1: fees paid to contributors, in exact integers"
	attr-settle --policy "$top/examples/demo-settle-policy.json" --epoch 1 --key owner.key \
		--format text < attributions.ndjson
	attr-settle --policy "$top/examples/demo-settle-policy.json" --epoch 1 --key owner.key \
		< attributions.ndjson > settlement.ndjson
fi

say "the report: demo-out/report.html"
cat responses.ndjson $( [ -s attributions.ndjson ] && echo attributions.ndjson ) \
	$( [ -s settlement.ndjson ] && echo settlement.ndjson ) atlas.ndjson ports.ndjson |
	attr-report --title "trail demo: who shaped these answers" --key store/keys/operator.pub -o report.html
echo "  $(wc -c < report.html) bytes, self-contained"
