#!/bin/bash
# The exact audit (attr-score --method exact) on a small FOLDOC subset:
# its cost against training, and the linear datamodeling score against
# retrains on random halves, beside ekfac and graddot on the same adapter.
# Everything fp32 (the audit replays fp32 runs). Sizes from the environment:
#   N (64) Q (20)        FOLDOC records of the fine-tune, held-out queries
#   SUBSETS (50)         retrained adapters, each on a seeded random half
#   BASE_STEPS (300)     the base (2 layers, 64 wide, byte tokenizer) on fortunes
#   EPOCHS (2) LR (3e-3) LORA (r=4,alpha=8)   the adapters, batch 8, seq 80
#   JOBS (2)             retrains at once
#   KEEP (0.5)           the fraction of the records each retrain keeps
#   FIXED_STEPS (0)      1: the retrains take the full run's steps (epochs of the
#                        half), not its epochs (half the steps)
#   DROP (0)             1: the retrains replay the full run's batches with the
#                        other half dropped from them (bench/eval/exact_retrain.c)
#   SAMPLES ("")         also score with --samples K for each K listed ("exact-sK")
# usage: bench/eval/exact.sh [WORKDIR]   (prints one JSON line of figures)
set -e
top=$(cd "$(dirname "$0")/../.." && pwd)
B=${B:-build}
W=${1:-$top/bench/eval/work-exact}
export PATH="$top/$B/bin:$PATH"
N=${N:-64} Q=${Q:-20} SUBSETS=${SUBSETS:-50} BASE_STEPS=${BASE_STEPS:-300}
EPOCHS=${EPOCHS:-2} LR=${LR:-3e-3} LORA=${LORA:-r=4,alpha=8} JOBS=${JOBS:-2} SEQ=80
mkdir -p "$W"
log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
# cpu OUT CMD...: CMD's standard output to OUT (stdin passed on), and prints its user CPU seconds
cpu() { local o=$1; shift; ( TIMEFORMAT=%U; time "$@" > "$o" 2>/dev/null ) 2> "$W/t"; cat "$W/t"; }
Q_BIN=$W/quality
if [ ! -x "$Q_BIN" ] || [ "$top/$B/libtrail.a" -nt "$Q_BIN" ]; then
	${CC:-cc} -O2 -std=c11 -D_GNU_SOURCE -I"$top/lib" $(pkg-config --cflags jansson) \
		-I/usr/include/x86_64-linux-gnu/openblas-pthread \
		-o "$Q_BIN" "$top/bench/eval/quality.c" "$top/$B/libtrail.a" \
		$(pkg-config --libs jansson libarchive libsodium libcurl libmicrohttpd) -ldnnl -lgomp -lopenblas -llapacke -lxxhash -lm -pthread
fi
PY="python3 $top/bench/eval/corpus.py"
NPY=${PYTHON:-python3} # the analysis needs numpy (Debian's python3-numpy)
$NPY -c 'import numpy' 2>/dev/null || NPY=/usr/bin/python3
if [ ! -s "$W/base/model.safetensors" ]; then
	log "base: $BASE_STEPS steps on fortunes"
	$PY fortunes "$W/fortunes.ndjson" 20000
	echo '{"n_layer":2,"n_head":2,"n_embd":64,"n_positions":80,"vocab_size":257}' > "$W/base.json"
	mf-train --init "$W/base.json" --data "$W/fortunes.ndjson" --steps "$BASE_STEPS" --batch 16 --seq $SEQ --lr 3e-3 \
		--precision fp32 --no-index --no-progress -o "$W/base" > /dev/null
fi
$PY foldoc "$W/train.ndjson" "$W/queries.ndjson" "$N" "$Q"
train() { mf-train --base "$W/base" --lora "$LORA" --data "$1" $(if [ -n "$STEPS" ]; then echo --steps "$STEPS"; else echo --epochs "$EPOCHS"; fi) --batch 8 --seq $SEQ --lr "$LR" --seed 1 \
	--precision fp32 --threads 1 --no-progress $3 -o "$2"; }
log "the adapter on $N records"
rm -rf "$W/full"
train_s=$(cpu /dev/null train "$W/train.ndjson" "$W/full" --no-index)
attr-score --build-index --model "$W/base" --adapter "$W/full" --data "$W/train.ndjson" --precision fp32 2>/dev/null
log "scores: exact, ekfac, graddot (--top $N: every record's score)"
args="--model $W/base --adapter $W/full --data $W/train.ndjson --top $N --threads 1"
exact_s=$(cpu "$W/full.exact.ndjson" attr-score $args --method exact < "$W/queries.ndjson")
verify_s=$(cpu /dev/null attr-score --method exact --verify --model "$W/base" --adapter "$W/full" --data "$W/train.ndjson" \
	"$W/full.exact.ndjson")
[ -s "$W/full.exact.ndjson" ] || { echo "exact.sh: error: no exact records" >&2; exit 70; }
samples_s=""
for K in ${SAMPLES:-}; do
	log "scores: exact --samples $K"
	samples_s="$samples_s $K:$(cpu "$W/full.exact-s$K.ndjson" attr-score $args --method exact --samples "$K" < "$W/queries.ndjson")"
done
for m in ekfac graddot; do attr-score $args --method $m --precision fp32 < "$W/queries.ndjson" > "$W/full.$m.ndjson"; done
STEPS=""
KEEP=${KEEP:-0.5} SUFFIX=""
[ "$KEEP" = 0.5 ] || SUFFIX=-keep$KEEP
M=$W/sub$SUFFIX # the masks and subsets (and the retrains of the same epochs)
SUB=$M
if [ "${FIXED_STEPS:-0}" = 1 ]; then
	STEPS=$(sed -n 's/.*"steps":\([0-9]*\).*/\1/p' "$W/full/training.json" | head -1)
	SUB=$W/sub-steps$STEPS${SUFFIX:-}
fi
log "$SUBSETS retrains on random halves${STEPS:+, $STEPS steps each}"
python3 - "$W/train.ndjson" "$M" "$SUBSETS" "$KEEP" <<'PY'
import os, random, sys
lines = open(sys.argv[1]).read().splitlines(True)
os.makedirs(sys.argv[2], exist_ok=True)
for s in range(int(sys.argv[3])):
    rng = random.Random(1000 + s)
    keep = sorted(rng.sample(range(len(lines)), int(len(lines) * float(sys.argv[4]))))
    open(os.path.join(sys.argv[2], "%02d.mask" % s), "w").write("".join("%d\n" % i for i in keep))
    open(os.path.join(sys.argv[2], "%02d.ndjson" % s), "w").write("".join(lines[i] for i in keep))
PY
if [ "${DROP:-0}" = 1 ]; then
	SUB=$W/sub-drop${SUFFIX:-}
	STEPS=drop
	${CC:-cc} -O2 -std=c11 -D_GNU_SOURCE -I"$top/lib" $(pkg-config --cflags jansson) \
		-I/usr/include/x86_64-linux-gnu/openblas-pthread \
		-o "$W/exact_retrain" "$top/bench/eval/exact_retrain.c" "$top/$B/libtrail.a" \
		$(pkg-config --libs jansson libarchive libsodium libcurl libmicrohttpd) -ldnnl -lgomp -lopenblas -llapacke -lxxhash -lm -pthread
	mkdir -p "$SUB"
	# all records kept must give the adapter itself, bit for bit
	seq 0 $((N - 1)) > "$W/all.mask"
	"$W/exact_retrain" "$W/base" "$W/full" "$W/train.ndjson" "$W/check" "$W/all.mask"
	cmp -s "$W/check/00/adapter_model.safetensors" "$W/full/adapter_model.safetensors" ||
		{ echo "exact.sh: error: the replayed retrain is not the adapter" >&2; exit 70; }
	"$W/exact_retrain" "$W/base" "$W/full" "$W/train.ndjson" "$SUB" $(seq -f "$M/%02g.mask" 0 $((SUBSETS - 1)))
fi
export -f train
export W LORA EPOCHS LR SEQ STEPS SUB M
seq -f %02g 0 $((SUBSETS - 1)) | xargs -P "$JOBS" -I{} bash -c \
	'[ -s "$SUB/{}/adapter_model.safetensors" ] || train "$M/{}.ndjson" "$SUB/{}" --no-index > /dev/null'
"$Q_BIN" loss "$W/base" "$W/queries.ndjson" $(seq -f "$SUB/%02g" 0 $((SUBSETS - 1))) > "$W/losses.txt"
$NPY - "$W" "$N" "$SUBSETS" "$train_s" "$exact_s" "$verify_s" "$samples_s" <<'PY'
import json, math, os, sys
import numpy as np
W, N, S = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ids = [r["record"] for r in json.load(open(os.path.join(W, "full", "training.json")))["records"]]
where = {k: i for i, k in enumerate(ids)}
loss = np.loadtxt(os.path.join(W, "losses.txt"), ndmin=2)  # [S, Q]
mask = np.zeros((S, N))
for s in range(S):
    for l in open(os.path.join(os.environ["M"], "%02d.mask" % s)):
        mask[s, int(l)] = 1

def ranks(a):
    return np.argsort(np.argsort(a, -1, kind="stable"), -1, kind="stable").astype(np.float64)

def spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    ra -= ra.mean(-1, keepdims=True); rb -= rb.mean(-1, keepdims=True)
    den = np.sqrt((ra * ra).sum(-1) * (rb * rb).sum(-1))
    return np.where(den > 0, (ra * rb).sum(-1) / np.where(den > 0, den, 1), 0.0)

out = {"retrain_steps": os.environ.get("STEPS") or "epochs", "keep": float(os.environ.get("KEEP", "0.5")), "records": N, "queries": loss.shape[1], "subsets": S, "train_cpu_s": float(sys.argv[4]),
       "exact_cpu_s": float(sys.argv[5]), "verify_cpu_s": float(sys.argv[6])}
samples = [kv.split(":") for kv in sys.argv[7].split()]
for k, t in samples:
    out["exact-s%s_cpu_s" % k] = float(t)
for m in ["exact", "ekfac", "graddot"] + ["exact-s%s" % k for k, _ in samples]:
    recs = [json.loads(l) for l in open(os.path.join(W, "full.%s.ndjson" % m))]
    sc = np.zeros((len(recs), N))
    for q, r in enumerate(recs):
        for t in r["top"]:
            sc[q, where[t["record"]]] = t["score"]
    rho = spearman((mask @ sc.T).T, -loss.T)
    out[m] = {"lds": round(float(rho.mean()), 4), "se": round(float(rho.std(ddof=1) / math.sqrt(len(rho))), 4)}
print(json.dumps(out))
PY
