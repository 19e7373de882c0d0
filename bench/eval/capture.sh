#!/bin/bash
# The attribution index captured in training (mf-train --index-at last-epoch)
# against the final-weights index, on quality.sh's LDS work directory (run
# `bash bench/eval/quality.sh lds W` first, with the same N, EPOCHS, LR, LORA):
# the full adapter trained again with the index captured (its weights must be
# the full adapter's, byte for byte), the ekfac scores of the 100 queries with
# that index into W/lds/sweep/ekfac-captured.f32, and the LDS of both indexes
# with the standard error of their per-query difference. Then the CPU seconds
# (user + sys) of training with --no-index, the final-weights pass and the
# capture, alternating, ROUNDS (2) times each.
# usage: bench/eval/capture.sh W   (B=build)
set -e
top=$(cd "$(dirname "$0")/../.." && pwd)
B=${B:-build}
W=$1 L=$1/lds
EPOCHS=${EPOCHS:-2} LR=${LR:-3e-3} LORA=${LORA:-r=8,alpha=16} ROUNDS=${ROUNDS:-2}
SEQ=80
export PATH="$top/$B/bin:$PATH"
train="--base $W/base --lora $LORA --data $L/train.ndjson --epochs $EPOCHS --batch 8 --seq $SEQ --lr $LR --seed 1 --no-progress"
echo "load $(cut -d' ' -f1-3 /proc/loadavg), $(wc -l < "$L/train.ndjson") records, $EPOCHS epochs" >&2
rm -rf "$L/cap"
mf-train $train --index-at last-epoch -o "$L/cap" > "$L/cap.out"
cmp "$L/cap/adapter_model.safetensors" "$L/full/adapter_model.safetensors"
mkdir -p "$L/sweep"
"$W/quality" scores "$W/base" "$L/cap" "$L/train.ndjson" "$L/queries.ndjson" ekfac "$L/sweep/ekfac-captured.f32" \
	"$L/cap/attribution.idx" > /dev/null
NPY=${PYTHON:-python3}
$NPY -c 'import numpy' 2>/dev/null || NPY=/usr/bin/python3
$NPY - "$L" "$top/bench/eval" <<'PY'
import json, math, os, sys
import numpy as np
sys.path.insert(0, sys.argv[2])
import analyse
d = sys.argv[1]
N = len(open(os.path.join(d, "train.ndjson")).read().splitlines())
subs = sorted(f[:-5] for f in os.listdir(os.path.join(d, "sub")) if f.endswith(".mask"))
loss = np.loadtxt(os.path.join(d, "losses.txt"), ndmin=2)
S, Q = loss.shape
mask = np.zeros((S, N))
for s, name in enumerate(subs[:S]):
    for l in open(os.path.join(d, "sub", name + ".mask")):
        mask[s, int(l)] = 1
rho = {}
for k, p in (("final", "full.ekfac.f32"), ("captured", "sweep/ekfac-captured.f32")):
    sc = np.fromfile(os.path.join(d, p), dtype=np.float32).reshape(Q, N).astype(np.float64)
    rho[k] = analyse.spearman((mask @ sc.T).T, -loss.T)
diff = rho["captured"] - rho["final"]
out = {k: {"lds": round(float(v.mean()), 4), "se": round(float(v.std(ddof=1) / math.sqrt(Q)), 4),
           "even": round(float(v[0::2].mean()), 4), "odd": round(float(v[1::2].mean()), 4)} for k, v in rho.items()}
out["captured_minus_final"] = {"mean": round(float(diff.mean()), 4), "se": round(float(diff.std(ddof=1) / math.sqrt(Q)), 4)}
out["subsets"], out["queries"], out["records"] = S, Q, N
print(json.dumps(out))
PY
# CPU seconds, alternating
for r in $(seq "$ROUNDS"); do
	for m in no-index final last-epoch; do
		opt="--index-at $m"
		[ $m = no-index ] && opt=--no-index
		rm -rf "$L/t-$m"
		/usr/bin/time -f "%U %S" -o "$L/t.time" mf-train $train $opt --threads 1 -o "$L/t-$m" > /dev/null
		awk -v m=$m -v r=$r -v l="$(cut -d' ' -f1 /proc/loadavg)" '{ printf "{\"round\":%d,\"mode\":\"%s\",\"cpu_s\":%.2f,\"load\":%s}\n", r, m, $1 + $2, l }' "$L/t.time"
	done
done
rm -rf "$L"/t-*
