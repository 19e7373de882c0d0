#!/bin/bash
# Attribution farming: an epoch's contributor payout with and without each
# attack, and with and without each defence.
#
# usage: bench/eval/farm.sh [WORKDIR]
#
# A datanet of FARM_H (4) honest contributors h0... and one attacker "a",
# FARM_PER (40) FOLDOC definitions each (bench/eval/corpus.py), an adapter
# trained on it (mf-train, LoRA r 8, 30 epochs at lr 1e-2, on a base of 2
# layers x 128 trained 1,500 steps on fortunes), 16 requests for headwords
# of each contributor's records and 32 for held-out headwords (112),
# answered greedily by lora-serve, attributed by attr-score and
# settled by attr-settle. Scenarios (the attacker's records):
#   none     its 40 honest records (what its honest records earn)
#   reseed   no attack: "none" trained with other seeds (RESEEDS), the
#            measurement's own noise (retraining moves every share)
# Every scenario is trained with each of SEEDS (1 2) and its shares are the
# means over them.
#   simple   those and FARM_GEN (40) generic records: the dictionary's most
#            frequent words and boilerplate, relevant to every query
#   evade    the simple attack made to pass the lowinfo defence: in each
#            generic record frequent words replaced by rare ones of the
#            attacker's shadow data until the rule, run on its shadow data
#            and its records, no longer flags it (with a margin of 1)
#   outlier  the Outlier attack: each record perturbed (letters swapped,
#            doubled, odd symbols), of 6 candidates the one the target model
#            (the adapter of "none", black box: its losses) finds least likely
#   shadow   the Shadow attack: a shadow adapter trained on 160 other FOLDOC
#            entries and the candidates, 48 shadow queries of the dictionary;
#            per record, of 6 candidates (as it is, its tail replaced by a
#            shadow answer, frequent words spliced in, a shadow answer under
#            its headword), the one with the largest expected payout
#            (positive scores in the shadow queries' top 10)
# Defences (DEFENCES, the attr-score / attr-settle options of each):
#   none     the defaults
#   unit     attr-score --normalize unit
#   generic  attr-score --exclude FLAGS, FLAGS the records attr-score
#            --flag-generic GENERIC (0.25) finds in the top 10 of more than
#            GENERIC of 48 held-out queries (FOLDOC definitions no one
#            contributed, W/heldout.ndjson)
#   penalty  those flags lines given to attr-settle, policy max_flagged 0:
#            the payout of a contributor with a flagged record is withheld
#   centre-held   attr-score --centre W/heldout.ndjson: each record's score
#            less its mean score over the 48 held-out queries
#   centre-epoch  attr-score --centre ANSWERS: less its mean over the
#            epoch's own 112 served answers
#   lowinfo  attr-score --exclude LOWFLAGS, LOWFLAGS the records attr-score
#            --flag-low-info LOWINFO (3) finds: words that say LOWINFO median
#            absolute deviations less than the datanet's typical record
#            (the mean surprisal of a record's words under the other
#            records' word frequencies); LOWINFO chosen on honest datanets
#            (farm.py info-validate), not on the attacks
# Each scenario and defence gives W/pay/SCENARIO.DEFENCE.ndjson; the table
# compares every attack with "none" under the same defence.
set -e
top=${FARM_TOP:-$(cd "$(dirname "$0")/../.." && pwd)}
B=${B:-build}
W=${1:-${W:-$top/bench/eval/work/farm}}
export PATH="$top/$B/bin:$PATH"
BASE_STEPS=${BASE_STEPS:-1500}
EPOCHS=${EPOCHS:-30}
LR=${LR:-1e-2}
DEFENCES=${DEFENCES:-none unit generic penalty centre-held centre-epoch}
SCENARIOS=${SCENARIOS:-none reseed simple outlier shadow}
SEEDS=${SEEDS:-1 2}       # each scenario trained with each seed; shares are their means
RESEEDS=${RESEEDS:-3 4}   # "reseed": the honest datanet with other seeds
GENERIC=${GENERIC:-0.25}
LOWINFO=${LOWINFO:-3}
# the options of each defence; flagged: the records --flag-generic flags on the held-out queries
declare -A DOPT=([none]="" [unit]="--normalize unit" [generic]="--exclude FLAGS" [penalty]=""
	[centre-held]="--centre HELDOUT" [centre-epoch]="--centre ANSWERS" [lowinfo]="--exclude LOWFLAGS")
mkdir -p "$W" "$W/pay"
log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
FP="python3 $top/bench/eval/farm.py"
Q_BIN=$W/quality
if [ ! -x "$Q_BIN" ] || [ "$top/bench/eval/quality.c" -nt "$Q_BIN" ] || [ "$top/$B/libtrail.a" -nt "$Q_BIN" ]; then
	${CC:-cc} -O2 -std=c11 -D_GNU_SOURCE -I"$top/lib" $(pkg-config --cflags jansson) \
		-I/usr/include/x86_64-linux-gnu/openblas-pthread \
		-o "$Q_BIN" "$top/bench/eval/quality.c" "$top/$B/libtrail.a" \
		$(pkg-config --libs jansson libarchive libsodium libcurl libmicrohttpd) -ldnnl -lgomp -lopenblas -llapacke -lxxhash -lm -pthread
fi

if [ ! -s "$W/base/model.safetensors" ]; then
	log "base: $BASE_STEPS steps on fortunes"
	python3 "$top/bench/eval/corpus.py" fortunes "$W/fortunes.ndjson" 20000
	echo '{"n_layer":2,"n_head":4,"n_embd":128,"n_positions":128,"vocab_size":257}' > "$W/base.json"
	mf-train --init "$W/base.json" --data "$W/fortunes.ndjson" --steps "$BASE_STEPS" --batch 16 --seq 128 \
		--lr 3e-3 --seed 1 --no-index --no-progress -o "$W/base" > "$W/base.out"
fi
$FP corpus "$W"

# train DATA DIR: the adapter DIR/ad on DATA and its index
train() {
	local data=$1 d=$2
	local stamp="$EPOCHS $LR ${SEED:-1}"
	[ -s "$d/ad/attribution.idx" ] && cmp -s "$data" "$d/train.ndjson" && [ "$(cat "$d/stamp" 2>/dev/null)" = "$stamp" ] && return
	mkdir -p "$d"
	cp "$data" "$d/train.ndjson"
	rm -rf "$d/ad"
	mf-train --base "$W/base" --lora r=8,alpha=16 --data "$d/train.ndjson" --epochs "$EPOCHS" --batch 8 --seq 80 \
		--lr "$LR" --seed "${SEED:-1}" --no-index --no-progress -o "$d/ad" > "$d/train.out"
	attr-score --build-index --model "$W/base" --adapter "$d/ad" --data "$d/train.ndjson"
	echo "$stamp" > "$d/stamp"
}

policy() {
	echo '{"fee_per_1k_prompt":1000000,"fee_per_1k_completion":2000000,"split_bps":{"contributors":10000}}'
}

# scenario NAME DATA: for each seed, train, serve, score with each defence, settle
scenario() {
	local seed
	for seed in ${SEEDS_OF:-$SEEDS}; do
		SEED=$seed scenario1 "$@"
	done
}
scenario1() {
	local s=$1 data=$2 d=$W/$1/$SEED def
	log "$s: training on $(wc -l < "$data") records, seed $SEED"
	train "$data" "$d"
	lora-serve --base "$W/base" --adapters "$d" < "$W/requests.ndjson" > "$d/answers.ndjson"
	policy > "$W/policy.json"
	policy | sed 's/}$/,"penalty":{"max_flagged":0}}/' > "$W/policy-penalty.json"
	attr-score --model "$W/base" --adapter "$d/ad" --data "$d/train.ndjson" --flag-generic "$GENERIC" \
		< "$W/heldout.ndjson" > "$d/flags.ndjson"
	log "$s: $(wc -l < "$d/flags.ndjson") records flagged generic ($(grep -c '"contributor":"a"' "$d/flags.ndjson") the attacker's)"
	attr-score --model "$W/base" --adapter "$d/ad" --data "$d/train.ndjson" --flag-low-info "$LOWINFO" > "$d/lowinfo.ndjson"
	log "$s: $(wc -l < "$d/lowinfo.ndjson") records flagged low-info ($(grep -c '"contributor":"a"' "$d/lowinfo.ndjson") the attacker's)"
	for def in $DEFENCES; do
		local opt=${DOPT[$def]} pol=$W/policy.json extra=""
		opt=${opt//LOWFLAGS/$d/lowinfo.ndjson}
		opt=${opt//FLAGS/$d/flags.ndjson}
		opt=${opt//HELDOUT/$W/heldout.ndjson}
		opt=${opt//ANSWERS/$d/answers.ndjson}
		# with nothing flagged, generic and penalty are the default's records
		if { [ "$def" = generic ] || [ "$def" = penalty ]; } && [ ! -s "$d/flags.ndjson" ] && [ -s "$d/attr.none.ndjson" ]; then
			cp "$d/attr.none.ndjson" "$d/attr.$def.ndjson"
		else
		# penalty: the flags lines go to attr-settle, whose policy withholds a flagged contributor's payout
		[ "$def" = penalty ] && pol=$W/policy-penalty.json extra=$d/flags.ndjson
		attr-score --model "$W/base" --adapter "$d/ad" --data "$d/train.ndjson" $opt \
			< "$d/answers.ndjson" > "$d/attr.$def.ndjson"
		fi
		attr-settle --policy "$pol" --epoch "$s-$def" --dry-run "$d/attr.$def.ndjson" $extra > "$W/pay/$s.$def.$SEED.ndjson"
	done
}

for s in $SCENARIOS; do
	case $s in
	none) scenario none "$W/honest.ndjson" ;;
	reseed) SEEDS_OF=$RESEEDS scenario reseed "$W/honest.ndjson" ;;
	simple)
		$FP simple "$W"
		$FP swap "$W" "$W/simple.ndjson" "$W/simple.train.ndjson"
		scenario simple "$W/simple.train.ndjson" ;;
	evade)
		$FP simple "$W"
		FARM_LOWINFO=$LOWINFO $FP evade "$W"
		$FP swap "$W" "$W/evade.ndjson" "$W/evade.train.ndjson"
		scenario evade "$W/evade.train.ndjson" ;;
	outlier)
		$FP outlier-cands "$W"
		"$Q_BIN" loss "$W/base" "$W/outlier.lossq.ndjson" "$W/none/1/ad" > "$W/outlier.losses"
		$FP outlier-pick "$W" "$W/outlier.losses"
		$FP swap "$W" "$W/outlier.ndjson" "$W/outlier.train.ndjson"
		scenario outlier "$W/outlier.train.ndjson" ;;
	shadow)
		$FP shadow-cands "$W"
		if ! cmp -s "$W/shadow.train.ndjson" "$W/shadow-model/train.ndjson"; then
			log "shadow: the shadow adapter"
			mkdir -p "$W/shadow-model"
			cp "$W/shadow.train.ndjson" "$W/shadow-model/train.ndjson"
			rm -rf "$W/shadow-model/ad"
			mf-train --base "$W/base" --lora r=8,alpha=16 --data "$W/shadow-model/train.ndjson" --epochs "$EPOCHS" \
				--batch 8 --seq 80 --lr "$LR" --seed 2 --no-index --no-progress -o "$W/shadow-model/ad" > "$W/shadow-model/train.out"
			attr-score --build-index --model "$W/base" --adapter "$W/shadow-model/ad" --data "$W/shadow-model/train.ndjson"
		fi
		"$Q_BIN" scores "$W/base" "$W/shadow-model/ad" "$W/shadow-model/train.ndjson" "$W/shadowq.ndjson" ekfac \
			"$W/shadow.scores.f32" "$W/shadow-model/ad/attribution.idx" > /dev/null
		$FP shadow-pick "$W" "$W/shadow.scores.f32"
		$FP swap "$W" "$W/shadow-attack.ndjson" "$W/shadow.atk.ndjson"
		scenario shadow "$W/shadow.atk.ndjson" ;;
	esac
done
atk=""
for s in $SCENARIOS; do [ "$s" = none ] || atk="$atk $s"; done
FARM_DEFENCES="$DEFENCES" $FP table "$W" $atk | tee "$W/table.md"
# what the attribution resolves: own records found, one record's share by kind
for s in $SCENARIOS; do
	FARM_DEFENCES="$DEFENCES" $FP diagnose "$W" "$s" | tee -a "$W/table.md"
done
