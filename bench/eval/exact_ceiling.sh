#!/bin/bash
# The ceiling of any additive attribution on the exact audit's benchmark:
# after bench/eval/exact.sh W with DROP=1 (its adapter, queries, the 50
# test halves and their retrains), FIT more retrains on other seeded
# random halves (the same replay, bench/eval/exact_retrain.c), the best
# linear datamodel per query fitted to them by least squares (ridge RIDGE),
# and its Spearman LDS on exact.sh's 50 halves, beside the scores of each
# W/full.*.ndjson there. Sizes from the environment:
#   FIT (400) retrains fitted   JOBS (2) at once   RIDGE (1e-6)
# usage: bench/eval/exact_ceiling.sh W   (prints one JSON line)
set -e
top=$(cd "$(dirname "$0")/../.." && pwd)
W=${1:?usage: exact_ceiling.sh W}
FIT=${FIT:-400} JOBS=${JOBS:-2}
N=$(wc -l < "$W/train.ndjson") S=$(ls "$W/sub-drop" | wc -l)
[ -x "$W/exact_retrain" ] && [ "$S" -gt 0 ] || { echo "exact_ceiling.sh: error: run DROP=1 bench/eval/exact.sh $W first" >&2; exit 64; }
F=$W/fit
mkdir -p "$F"
python3 - "$N" "$F" "$FIT" <<'PY'
import os, random, sys
n, d, k = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for s in range(k):
    rng = random.Random(50000 + s)  # not exact.sh's seeds (1000 + s)
    open(os.path.join(d, "%03d.mask" % s), "w").write("".join("%d\n" % i for i in sorted(rng.sample(range(n), n // 2))))
PY
# JOBS shards of the masks, each its own output folder
for j in $(seq 0 $((JOBS - 1))); do
	ms=$(seq -f "$F/%03g.mask" 0 $((FIT - 1)) | awk -v j=$j -v J=$JOBS 'NR % J == j')
	[ -s "$F/done.$j" ] || { "$W/exact_retrain" "$W/base" "$W/full" "$W/train.ndjson" "$F/out.$j" $ms && echo ok > "$F/done.$j"; } &
done
wait
for j in $(seq 0 $((JOBS - 1))); do [ -s "$F/done.$j" ] || { echo "exact_ceiling.sh: error: retrains failed" >&2; exit 70; }; done
ad=$(for s in $(seq 0 $((FIT - 1))); do j=$((s % JOBS)) k=$((s / JOBS)); printf '%s/out.%d/%02d\n' "$F" $j $k; done)
[ -s "$F/losses.txt" ] || "$W/quality" loss "$W/base" "$W/queries.ndjson" $ad > "$F/losses.txt"
[ -s "$W/losses.drop.txt" ] || "$W/quality" loss "$W/base" "$W/queries.ndjson" $(seq -f "$W/sub-drop/%02g" 0 $((S - 1))) > "$W/losses.drop.txt"
NPY=${PYTHON:-python3}; $NPY -c "import numpy" 2>/dev/null || NPY=/usr/bin/python3
$NPY - "$W" "$N" "$FIT" "$S" "${RIDGE:-1e-6}" <<'PY'
import glob, json, math, os, sys
import numpy as np
W, N, FIT, S, ridge = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
def masks(paths):
    m = np.zeros((len(paths), N))
    for s, p in enumerate(paths):
        for l in open(p):
            m[s, int(l)] = 1
    return m
mf = masks(["%s/fit/%03d.mask" % (W, s) for s in range(FIT)])
mt = masks(["%s/sub/%02d.mask" % (W, s) for s in range(S)])
lf = np.loadtxt(W + "/fit/losses.txt", ndmin=2)   # [FIT, Q]
lt = np.loadtxt(W + "/losses.drop.txt", ndmin=2)   # [S, Q]
def ranks(a):
    return np.argsort(np.argsort(a, -1, kind="stable"), -1, kind="stable").astype(np.float64)
def spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    ra -= ra.mean(-1, keepdims=True); rb -= rb.mean(-1, keepdims=True)
    den = np.sqrt((ra * ra).sum(-1) * (rb * rb).sum(-1))
    return np.where(den > 0, (ra * rb).sum(-1) / np.where(den > 0, den, 1), 0.0)
def lds(theta):  # theta [q, N] of the first q queries, predicted loss = mask @ theta
    rho = spearman((mt @ theta.T).T, lt[:, :len(theta)].T)
    return {"lds": round(float(rho.mean()), 4), "se": round(float(rho.std(ddof=1) / math.sqrt(len(rho))), 4), "queries": len(rho)}
out = {"records": N, "queries": lt.shape[1], "fit": FIT, "test": S}
for k in sorted({50, 100, 200, FIT} & set(range(1, FIT + 1))):
    X = np.hstack([mf[:k], np.ones((k, 1))])
    A = X.T @ X + ridge * k * np.eye(N + 1)
    theta = np.linalg.solve(A, X.T @ lf[:k]).T[:, :N]  # [Q, N]
    out["linear_fit%d" % k] = lds(theta)
# the fitted datamodel's own fit on the test halves (R^2 of the loss differences)
X = np.hstack([mt, np.ones((S, 1))])
Xf = np.hstack([mf, np.ones((FIT, 1))])
th = np.linalg.solve(Xf.T @ Xf + ridge * FIT * np.eye(N + 1), Xf.T @ lf)
res = lt - X @ th
theta_all = th.T[:, :N]
out["linear_r2_test"] = round(float(1 - (res ** 2).sum(0).mean() / ((lt - lt.mean(0)) ** 2).sum(0).mean()), 4)
ids = [r["record"] for r in json.load(open(os.path.join(W, "full", "training.json")))["records"]]
where = {k: i for i, k in enumerate(ids)}
for p in sorted(glob.glob(W + "/full.*.ndjson")):
    recs = [json.loads(l) for l in open(p)]
    if not recs or len(recs) > lt.shape[1]:
        continue
    sc = np.zeros((len(recs), N))
    for q, r in enumerate(recs):
        for t in r["top"]:
            sc[q, where[t["record"]]] = t["score"]
    out[os.path.basename(p)[5:-7]] = lds(-sc)
    if len(recs) < lt.shape[1]:  # the ceiling on the same queries
        out[os.path.basename(p)[5:-7]]["linear_fit%d" % FIT] = lds(theta_all[:len(recs)])["lds"]
print(json.dumps(out))
PY
