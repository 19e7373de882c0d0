#!/bin/sh
# A newcomer's own knowledge base, end to end: your data (here, trail's own
# option reference, from man/), checked in CI, approved by its owner, a model
# that memorises it, served, every answer attributed, the epoch settled with
# penalties, and the report. Read it top to bottom; each step is one command.
#
#   sh examples/newcomer.sh            # after make; writes newcomer-out/
#   NEWCOMER_OUT=DIR NEWCOMER_STEPS=N  # elsewhere, or a quicker (worse) model
#
# Training a model that memorises a small knowledge base (the guidance the
# numbers below follow; measured on this example's 76 records, 2 threads):
#  - seq: long enough for your longest record (--seq 256 here; longer ones
#    are split into windows with --long split rather than cut).
#  - steps: a byte-level model needs about 25-30 passes over the data to
#    recite it; one pass is records/batch steps, so 76 records at batch 16
#    need 5 steps a pass and about 600 steps (the default below). Watch the
#    loss mf-train prints: recital starts below about 0.1 nats a byte.
#  - lr: 3e-3 with the default warmup for a small model trained from scratch;
#    2e-3 for a LoRA adapter on top of it. Much higher diverges, much lower
#    needs proportionally more steps.
#  - an adapter (LoRA) per use: the base holds the knowledge, the adapter the
#    owner's fine-tune; both are paid by the settlement policy.
set -e
top=$(cd "$(dirname "$0")/.." && pwd)
B=${B:-build}
PATH="$top/$B/bin:$PATH"
out=${NEWCOMER_OUT:-$top/newcomer-out}
steps=${NEWCOMER_STEPS:-600}
rm -rf "$out"
mkdir -p "$out"
cd "$out"
export TRAIL_HOME="$out/store"
say() { printf '\n== %s\n' "$*"; }
field() { sed -n "s/.*\"$1\":\"\\{0,1\\}\\([^\",}]*\\).*/\\1/p" "$2"; }

say "a store, an owner, a tuner and four contributors"
trail-log init --origin kb.example/log | sed 's/^/  /'
for who in owner tuner alice bob carol zed; do trail-key generate "$who" >/dev/null; done
sh "$top/examples/newcomer-data.sh" "$top/man" data
for who in alice bob carol zed; do
	printf '  %-6s %3s entries  %s\n' "$who" "$(grep -c . "data/$who.txt")" "$(cat "$who.pub")"
done

say "the policy: short records are fine in a knowledge base (preset short-form)"
datanet-validate --preset short-form --print-policy > policy.json
datanet-add --create manual --schema text --owner owner.key --license CC-BY-4.0 --policy policy.json |
	sed 's/^/  /'

say "CI: a pull request adds submissions; the check names what it rejects"
mkdir -p repo && (
	cd repo && git init -q && git config user.email ci@kb.example && git config user.name ci
	mkdir -p data submissions && cp ../policy.json . && cp ../data/alice.txt ../data/bob.txt data/
	git add . && git commit -qm "the accepted knowledge base"
	cp ../data/carol.txt ../data/zed.txt submissions/ && git add . && git commit -qm "two new submissions"
	if sh "$top/examples/ci-validate.sh" HEAD~1 > ../ci.ndjson 2>../ci.log; then
		echo "  ci: every submitted record accepted"
	else
		echo "  ci: failed as it should: $(tail -1 ../ci.ndjson)"
	fi
)

say "contributions, signed and recorded; the owner approves the accepted records"
# --flags writes each rejected record as a penalty flag for attr-settle:
# copies and personal data "flagged", other failures "rejected".
for who in alice bob carol zed; do
	datanet-add manual --key "$who.key" "data/$who.txt" > "receipt.$who"
	datanet-validate --no-progress --datanet manual --key owner.key --record --approve --accepted-only \
		--flags "flags.$who" "$(field bundle "receipt.$who")" > "verdicts.$who"
	printf '  %-6s %s\n' "$who" "$(tail -1 "verdicts.$who" | sed 's/{"summary":{//; s/,"malformed".*//')"
done

size=$(trail-log verify | sed 's/.*"size":\([0-9]*\).*/\1/')
datanet-cat "manual@$size" > manual.ndjson
echo "  the training set: $(wc -l < manual.ndjson) records as of tree size $size"

say "training: a base that memorises the manual, then the tuner's adapter"
echo '{"n_layer":4,"n_head":4,"n_embd":128,"n_positions":256,"vocab_size":257}' > model.json
mf-train --init model.json --datanet "manual@$size" --steps "$steps" --batch 16 --seq 256 --lr 3e-3 \
	--long split --no-progress -o base 2>train.log | sed 's/^/  /'
mkdir -p adapters
mf-train --base base --lora r=8,alpha=16,targets=c_attn,c_proj,c_fc --datanet "manual@$size" \
	--steps "$((steps / 4))" --batch 16 --seq 256 --lr 2e-3 --long split --no-progress -o adapters/manual 2>>train.log |
	sed 's/^/  /'

say "serving: the prompts through the adapter"
lora-serve --base base --adapters adapters --events events.ndjson --record < data/prompts.ndjson > responses.ndjson
sed -n 's/.*"id":"\([a-z0-9]*\)","model":"[^"]*","text":"\([^"]*\)".*/  \1: \2/p' responses.ndjson

say "attribution: which records shaped each answer, recorded as one batch"
attr-score --build-index --model base --adapter adapters/manual --datanet "manual@$size" >/dev/null
attr-score --model base --adapter adapters/manual --datanet "manual@$size" --prove --record --epoch 1 \
	< events.ndjson > attributions.ndjson
sed -n 's/.*"event":"\([a-z0-9-]*\)".*"confidence":{"score":\([0-9.e+-]*\),.*"attributed":\([a-z]*\)}.*/  \1 confidence \2 attributed \3/p' \
	attributions.ndjson

say "settling epoch 1: fees to platform, owner and contributors; copiers and junk penalised"
# More than 2 copied (flagged) or 2 failing (rejected) records withhold a
# contributor's share: one honest near-duplicate is tolerated. The model pool
# is split between the base's owner and the adapter's (the tuner), and
# --require-batch refuses attributions that are not the recorded batch.
# People are named by key file (owner.pub, tuner.pub) or by their short name.
adapter=$(sed -n 's/.*"adapter":"\(sha256:[0-9a-f]*\)".*/\1/p' attributions.ndjson | head -1)
cat > settle-policy.json <<JSON
{
  "fee_per_1k_prompt": 2000,
  "fee_per_1k_completion": 6000,
  "split_bps": {"platform": 1000, "model": 2000, "stakers": 0, "contributors": 7000},
  "platform": "kb-platform",
  "model_owner": "owner.pub",
  "adapter_owners": {"$adapter": "tuner.pub"},
  "model_split": {"base": 7000, "adapter": 3000},
  "penalty": {"max_flagged": 2, "max_rejected": 2}
}
JSON
cat flags.alice flags.bob flags.carol flags.zed > flags.ndjson
attr-settle --policy settle-policy.json --epoch 1 --key owner.key --require-batch --dry-run --format text \
	attributions.ndjson flags.ndjson | sed 's/^/  /'
attr-settle --policy settle-policy.json --epoch 1 --key owner.key --require-batch \
	attributions.ndjson flags.ndjson > settlement.ndjson

say "the report: newcomer-out/report.html"
cat responses.ndjson attributions.ndjson settlement.ndjson manual.ndjson |
	attr-report --title "who wrote the answers about trail's options" --key store/keys/operator.pub -o report.html
echo "  $(wc -c < report.html) bytes"

say "the whole ledger verifies"
trail-log verify
