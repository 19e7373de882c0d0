#!/usr/bin/env python3
"""Figures of the attribution quality evaluation, from what bench/eval/quality.sh wrote.

usage: analyse.py lds DIR | facts DIR | poison DIR      (prints JSON lines)

lds     for each query q and retrained adapter s (a random half S_s of the
        records): the attribution-predicted sum of scores over S_s against
        the negative of the adapter's actual loss on q's answer; Spearman over
        the adapters, then the mean (and standard error) over queries.
facts   for each planted fact the model answered right: does the owner rank
        first? each method: the first contributor by share, and the
        contributor of the top record; span engine: the contributor of the
        first record of the longest span (from the first method's records).
poison  AUC of separating the poisoner's records from all others, by
        self-influence (higher = more suspect) and by negative influence on
        the true answers (-min over queries of the record's score).
"""
import json, math, os, sys

import numpy as np

METHODS = ["influence", "ekfac", "tracin", "graddot", "datainf"]


def ranks(x):
    """Average ranks (ties share the mean rank), along the last axis."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, axis=-1, kind="mergesort")
    r = np.empty_like(x)
    n = x.shape[-1]
    for idx in np.ndindex(x.shape[:-1]):
        o = order[idx]
        v = x[idx][o]
        rr = np.arange(n, dtype=np.float64)
        i = 0
        while i < n:
            j = i
            while j + 1 < n and v[j + 1] == v[i]:
                j += 1
            rr[i:j + 1] = (i + j) / 2.0
            i = j + 1
        r[idx][o] = rr
    return r


def spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    ra -= ra.mean(-1, keepdims=True)
    rb -= rb.mean(-1, keepdims=True)
    den = np.sqrt((ra * ra).sum(-1) * (rb * rb).sum(-1))
    return np.where(den > 0, (ra * rb).sum(-1) / np.where(den > 0, den, 1), 0.0)


def auc(score, label):
    """Probability that a positive outranks a negative (ties count half)."""
    r = ranks(score) + 1
    pos = label.astype(bool)
    npos, nneg = pos.sum(), (~pos).sum()
    return float((r[pos].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def load_cost(d, pre):
    cost = {}
    p = os.path.join(d, pre + ".cost.ndjson")
    if os.path.exists(p):
        for l in open(p):
            c = json.loads(l)
            cost[c["method"]] = c
    b = os.path.join(d, pre + ".build.json")
    return cost, (json.load(open(b)) if os.path.exists(b) else {})


def lds(d):
    recs = open(os.path.join(d, "train.ndjson")).read().splitlines()
    N = len(recs)
    subs = sorted(f[:-5] for f in os.listdir(os.path.join(d, "sub")) if f.endswith(".mask"))
    loss = np.loadtxt(os.path.join(d, "losses.txt"), ndmin=2)  # [S, Q]
    S, Q = loss.shape
    mask = np.zeros((S, N))
    for s, name in enumerate(subs[:S]):
        for l in open(os.path.join(d, "sub", name + ".mask")):
            mask[s, int(l)] = 1
    cost, build = load_cost(d, "full")
    out = {"records": N, "queries": Q, "subsets": S}
    for m in METHODS:
        p = os.path.join(d, "full.%s.f32" % m)
        if not os.path.exists(p):
            continue
        sc = np.fromfile(p, dtype=np.float32).reshape(Q, N).astype(np.float64)
        pred = mask @ sc.T  # [S, Q]
        rho = spearman(pred.T, -loss.T)  # per query
        c = cost.get(m, {})
        out[m] = {"lds": round(float(rho.mean()), 4), "se": round(float(rho.std(ddof=1) / math.sqrt(Q)), 4),
                  "even": round(float(rho[0::2].mean()), 4), "odd": round(float(rho[1::2].mean()), 4),
                  "grad_s_per_query": round(c.get("grad_s", 0) / Q, 5),
                  "score_s_per_query": round(c.get("score_s", 0) / Q, 5)}
    # other index settings (quality.sh sweep): LDS on the even queries (where
    # a setting would be chosen) and on the odd ones (where it is reported)
    sw = os.path.join(d, "sweep")
    if os.path.isdir(sw):
        out["sweep"] = {}
        for f in sorted(os.listdir(sw)):
            if not f.endswith(".f32"):
                continue
            sc = np.fromfile(os.path.join(sw, f), dtype=np.float32).reshape(Q, N).astype(np.float64)
            rho = spearman((mask @ sc.T).T, -loss.T)
            out["sweep"][f[:-4]] = {"lds": round(float(rho.mean()), 4), "even": round(float(rho[0::2].mean()), 4),
                                    "odd": round(float(rho[1::2].mean()), 4)}
    # the spread of the actual losses across subsets, against their mean
    out["loss_spread"] = round(float((loss.std(0) / loss.mean(0)).mean()), 5)
    out["build"] = build
    print(json.dumps(out))


def facts(d):
    owner = {}
    for l in open(os.path.join(d, "facts.ndjson")):
        q = json.loads(l)
        owner[q["id"]] = (q["owner"], q["completion"].strip(" ."))
    right = {}
    for l in open(os.path.join(d, "answers.ndjson")):
        a = json.loads(l)
        code = owner[a["id"]][1]
        right[a["id"]] = a["text"].strip().startswith(code)
    out = {"facts": len(owner), "answered_right": sum(right.values())}
    span_hits = span_n = 0
    extra = sorted(f[5:-7] for f in os.listdir(d) if f.startswith("attr.influence-d") and f.endswith(".ndjson"))
    # the span engine does not depend on the method: its figure comes from
    # the first method's records (influence's where it ran)
    span_from = next((m for m in METHODS if os.path.exists(os.path.join(d, "attr.%s.ndjson" % m))), None)
    for m in METHODS + extra:
        p = os.path.join(d, "attr.%s.ndjson" % m)
        if not os.path.exists(p):
            continue
        hit = top = n = 0
        for l in open(p):
            r = json.loads(l)
            if not right.get(r["event"]):
                continue
            n += 1
            hit += bool(r["contributors"]) and r["contributors"][0]["contributor"] == owner[r["event"]][0]
            top += bool(r["top"]) and r["top"][0]["contributor"] == owner[r["event"]][0]
            if m == span_from:
                spans = sorted(r.get("spans", []), key=lambda s: (-s["len"], s["start"]))
                span_n += 1
                span_hits += bool(spans) and spans[0]["records"][0]["contributor"] == owner[r["event"]][0]
        out[m] = {"share_p_at_1": round(hit / n, 4) if n else None, "top_record_p_at_1": round(top / n, 4) if n else None, "n": n}
    out["span"] = {"precision_at_1": round(span_hits / span_n, 4) if span_n else None, "n": span_n}
    print(json.dumps(out))


def poison(d):
    recs = [json.loads(l) for l in open(os.path.join(d, "train.ndjson"))]
    N = len(recs)
    lab = np.array([1 if r.get("contributor") == "poison" else 0 for r in recs])
    Q = sum(1 for _ in open(os.path.join(d, "truth.ndjson")))
    out = {"records": N, "poisoned": int(lab.sum()), "queries": Q}
    # self-influence is written only when influence is among the methods
    sp = os.path.join(d, "truth.self.f32")
    if os.path.exists(sp):
        si = np.fromfile(sp, dtype=np.float32).astype(np.float64)
        out["self_influence_auc"] = round(auc(si, lab), 4)
    for m in METHODS:
        p = os.path.join(d, "truth.%s.f32" % m)
        if not os.path.exists(p):
            continue
        sc = np.fromfile(p, dtype=np.float32).reshape(Q, N).astype(np.float64)
        out[m] = {"neg_influence_auc": round(auc(-sc.min(0), lab), 4),
                  "neg_sum_auc": round(auc(-sc.sum(0), lab), 4)}
    ans = os.path.join(d, "answers.ndjson")
    if os.path.exists(ans):
        truth = {json.loads(l)["id"]: json.loads(l)["completion"].strip(" .") for l in open(os.path.join(d, "facts.ndjson"))}
        out["answered_right"] = sum(json.loads(l)["text"].strip().startswith(truth[json.loads(l)["id"]]) for l in open(ans))
    print(json.dumps(out))


if __name__ == "__main__":
    {"lds": lds, "facts": facts, "poison": poison}[sys.argv[1]](sys.argv[2])
