#!/usr/bin/env python3
"""Attribution farming: the datanet, the attacks and the payout table of bench/eval/farm.sh.

usage: farm.py corpus W              honest records of H contributors and the attacker "a"
                                     (W/honest.ndjson), the attacker's shadow data
                                     (W/shadow.ndjson), the served requests (W/requests.ndjson)
                                     and the shadow queries (W/shadowq.ndjson)
       farm.py simple W              the generic attack: W/simple.ndjson
       farm.py evade W               the simple attack made to pass attr-score --flag-low-info
                                     (FARM_LOWINFO, 3): in each generic record, frequent words
                                     replaced by rare words of the attacker's shadow data until
                                     its z-score in the attacker's view (its shadow data and its
                                     records) is above -FARM_LOWINFO + 1: W/evade.ndjson
       farm.py outlier-cands W       perturbed candidates of the attacker's records
       farm.py outlier-pick W LOSSES the Outlier attack: per record the candidate the
                                     target model finds least likely: W/outlier.ndjson
       farm.py shadow-cands W        candidates for the Shadow attack
       farm.py shadow-pick W SCORES  per record the candidate with the largest positive
                                     attribution to the shadow queries in the shadow
                                     model: W/shadow-attack.ndjson
       farm.py swap W ATTACK OUT     the datanet with the attacker's records replaced
       farm.py table W SCEN...       the payout table from W/pay/SCENARIO.DEFENCE.ndjson
       farm.py diagnose W SCEN       what the attribution of SCEN resolves (FARM_DEFENCES'):
                                     own records found, one record's share by kind
       farm.py info-validate         the false positives of attr-score --flag-low-info K on
                                     honest datanets: 30 of 200 FOLDOC and 30 of 200 WordNet
                                     definitions, the share of records flagged at each K (the
                                     rule's arithmetic in Python, as lib/attr/attr_info.c has it)

Every choice is seeded: the same command gives the same bytes.
"""
import json, math, os, random, re, struct, sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402

H = int(os.environ.get("FARM_H", "4"))        # honest contributors
PER = int(os.environ.get("FARM_PER", "40"))   # records each (the attacker's honest ones too)
NGEN = int(os.environ.get("FARM_GEN", "40"))  # generic records of the simple attack
NCAND = 6                                     # candidates per record (outlier, shadow)


def w(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")


def rd(path):
    return [json.loads(l) for l in open(path) if l.strip()]


def names():
    return ["h%d" % i for i in range(H)] + ["a"]


def cmd_corpus(W):
    rng = random.Random(20261207)
    ents = corpus.foldoc()
    rng.shuffle(ents)
    recs, reqs = [], []
    k = 0
    for who in names():
        for j in range(PER):
            h, d = ents[k]
            k += 1
            recs.append({"text": h + ": " + d, "contributor": who})
    # training order interleaved, so no contributor is trained last
    recs = [r for _, r in sorted(enumerate(recs), key=lambda x: (x[0] % PER, x[0] // PER))]
    w(os.path.join(W, "honest.ndjson"), recs)
    # served requests: 16 headwords of each contributor's records (users ask what the
    # datanet knows) and 32 held-out headwords of the same dictionary
    n = 0
    for who in names():
        mine = [r for r in recs if r["contributor"] == who][:16]
        for r in mine:
            reqs.append({"id": "r%03d" % n, "prompt": r["text"].split(": ", 1)[0] + ":"})
            n += 1
    held = ents[k:k + 32]
    k += 32
    for h, d in held:
        reqs.append({"id": "r%03d" % n, "prompt": h + ":"})
        n += 1
    for r in reqs:
        r.update({"model": "ad", "max_tokens": 48, "temperature": 0, "stop": ["\n"]})
    w(os.path.join(W, "requests.ndjson"), reqs)
    # the attacker's knowledge of the distribution: other entries of the dictionary
    shadow = ents[k:k + H * PER]
    k += H * PER
    w(os.path.join(W, "shadow.ndjson"), [{"text": h + ": " + d, "contributor": "s"} for h, d in shadow])
    # the operator's held-out queries (for --flag-generic): definitions no one contributed
    ho = ents[k + 24:k + 24 + 48]
    w(os.path.join(W, "heldout.ndjson"), [{"id": "v%03d" % i, "prompt": h + ":", "output_text": " " + d}
                                          for i, (h, d) in enumerate(ho)])
    sq = ents[k:k + 24] + shadow[:24]
    w(os.path.join(W, "shadowq.ndjson"), [{"id": "s%03d" % i, "prompt": h + ":", "completion": " " + d}
                                          for i, (h, d) in enumerate(sq)])


def attacker(W):
    return [r for r in rd(os.path.join(W, "honest.ndjson")) if r["contributor"] == "a"]


def frequent_words(W, n=40):
    c = Counter()
    for r in rd(os.path.join(W, "shadow.ndjson")):
        c.update(re.findall(r"[a-z]+", r["text"].lower()))
    return [x for x, _ in c.most_common(n)]


def cmd_simple(W):
    """Generic records: the dictionary's most frequent words and its boilerplate, on every topic."""
    rng = random.Random(7)
    words = frequent_words(W)
    plate = ["A computer program or language used in a system for data.",
             "The term is used in computing, programming and networks.",
             "See also: computer, program, language, system, software."]
    out = attacker(W)
    for i in range(NGEN):
        if i % 2:
            t = plate[i % 3] + " " + " ".join(rng.sample(words, 6))
        else:
            t = " ".join(rng.sample(words, 14))
        out.append({"text": t[:80], "contributor": "a"})
    w(os.path.join(W, "simple.ndjson"), out)


def cmd_evade(W):
    """The generic records of the simple attack, each with rare words in place of frequent ones
    until the low-information rule (with a margin of 1) no longer flags it in the attacker's view."""
    rng = random.Random(17)
    k = float(os.environ.get("FARM_LOWINFO", "3"))
    recs = rd(os.path.join(W, "simple.ndjson"))
    shadow = [r["text"] for r in rd(os.path.join(W, "shadow.ndjson"))]
    c = Counter(x for t in shadow for x in re.findall(r"[a-z]+", t.lower()))
    rare = sorted(x for x, n in c.items() if n == 1 and len(x) >= 4)
    gen = list(range(PER, len(recs)))
    for i in gen:
        words = recs[i]["text"].split()
        pos = list(range(len(words)))
        rng.shuffle(pos)
        while pos:
            z = info_z(shadow + [r["text"] for r in recs])[len(shadow) + i]
            if z is None or z > -k + 1:
                break
            words[pos.pop()] = rng.choice(rare)
            recs[i] = {"text": " ".join(words)[:80], "contributor": "a"}
    w(os.path.join(W, "evade.ndjson"), recs)


def perturb(text, rng, rate):
    """Character-level noise on the definition: swapped, doubled, odd-case and odd-symbol letters."""
    head, _, body = text.partition(": ")
    ch = list(body)
    for i in range(len(ch)):
        if ch[i].isalpha() and rng.random() < rate:
            op = rng.randrange(4)
            if op == 0:
                ch[i] = ch[i].swapcase()
            elif op == 1:
                ch[i] = rng.choice("qxzjkvQXZJ")
            elif op == 2:
                ch[i] = ch[i] + ch[i]
            else:
                ch[i] = rng.choice("#%&~^|")
    return (head + ": " + "".join(ch))[:80]


def cmd_outlier_cands(W):
    rng = random.Random(11)
    cands, qs = [], []
    for j, r in enumerate(attacker(W)):
        for c in range(NCAND):
            t = perturb(r["text"], rng, 0.06 + 0.04 * c)
            cands.append({"text": t, "contributor": "a", "rec": j})
            h, _, b = t.partition(": ")
            qs.append({"prompt": h + ":", "completion": " " + b})
    w(os.path.join(W, "outlier.cands.ndjson"), cands)
    w(os.path.join(W, "outlier.lossq.ndjson"), qs)


def cmd_outlier_pick(W, losses):
    cands = rd(os.path.join(W, "outlier.cands.ndjson"))
    loss = [float(x) for x in open(losses).read().split()]
    best = {}
    for c, l in zip(cands, loss):
        if c["rec"] not in best or l > best[c["rec"]][0]:
            best[c["rec"]] = (l, c["text"])
    out = [r for r in rd(os.path.join(W, "honest.ndjson")) if r["contributor"] == "a"]
    out = [{"text": best[j][1], "contributor": "a"} for j in range(len(out))]
    w(os.path.join(W, "outlier.ndjson"), out)


def cmd_shadow_cands(W):
    """Each attacker record as it is, and grafted with shadow-query text and frequent words."""
    rng = random.Random(13)
    sq = rd(os.path.join(W, "shadowq.ndjson"))
    words = frequent_words(W)
    cands = []
    for j, r in enumerate(attacker(W)):
        head, _, body = r["text"].partition(": ")
        cands.append({"text": r["text"], "contributor": "a", "rec": j})
        for c in range(NCAND - 1):
            q = rng.choice(sq)
            if c % 3 == 0:    # the definition, its tail replaced by a shadow answer's start
                t = head + ": " + body[:30] + q["completion"][:48]
            elif c % 3 == 1:  # the definition with frequent words spliced in
                bw = body.split()
                for _ in range(4):
                    bw.insert(rng.randrange(len(bw) + 1), rng.choice(words))
                t = head + ": " + " ".join(bw)
            else:             # a shadow answer under the attacker's headword
                t = head + ":" + q["completion"]
            cands.append({"text": t[:80], "contributor": "a", "rec": j})
    w(os.path.join(W, "shadow.cands.ndjson"), cands)
    # the shadow training set: the shadow data with the candidates in the attacker's place
    sh = rd(os.path.join(W, "shadow.ndjson"))
    w(os.path.join(W, "shadow.train.ndjson"), sh + [{"text": c["text"], "contributor": "a"} for c in cands])


def cmd_shadow_pick(W, scores):
    cands = rd(os.path.join(W, "shadow.cands.ndjson"))
    sh = rd(os.path.join(W, "shadow.ndjson"))
    nq = len(rd(os.path.join(W, "shadowq.ndjson")))
    N = len(sh) + len(cands)
    raw = open(scores, "rb").read()
    assert len(raw) == 4 * nq * N, (len(raw), nq, N)
    s = struct.unpack("<%df" % (nq * N), raw)
    # the attacker's expected payout from a record: its positive score where it makes a
    # query's top 10 (the shares attr-score pays), over the shadow queries
    gain = [0.0] * len(cands)
    for q in range(nq):
        row = s[q * N:(q + 1) * N]
        top = sorted(range(N), key=lambda i: -row[i])[:10]
        tot = sum(max(row[i], 0) for i in top) or 1
        for i in top:
            if i >= len(sh) and row[i] > 0:
                gain[i - len(sh)] += row[i] / tot
    best = {}
    for c, g in zip(cands, gain):
        if c["rec"] not in best or g > best[c["rec"]][0]:
            best[c["rec"]] = (g, c["text"])
    w(os.path.join(W, "shadow-attack.ndjson"),
      [{"text": best[j][1], "contributor": "a"} for j in sorted(best)])


def cmd_swap(W, attack, out):
    """The datanet with the attacker's records in their places replaced by the attack's, extras last."""
    atk = rd(attack)
    res, k = [], 0
    for r in rd(os.path.join(W, "honest.ndjson")):
        if r["contributor"] == "a":
            r = atk[k]
            k += 1
        res.append(r)
    w(out, res + atk[k:])


def payouts(W, scen, d):
    """Each contributor's share of the contributor pool (here the whole fees), the mean over seeds:
    what is withheld or left unattributed stays in the pool, so nobody gains by another's penalty."""
    import glob
    files = sorted(glob.glob(os.path.join(W, "pay", "%s.%s.*.ndjson" % (scen, d))))
    assert files, (scen, d)
    share = Counter()
    for path in files:
        p, fees = Counter(), 1
        for l in open(path):
            o = json.loads(l)
            if o.get("type") == "payout" and o["role"] == "contributor":
                p[o["to"]] += o["amount"]
            if o.get("type") == "epoch":
                fees = o["fees"] or 1
        for k, v in p.items():
            share[k] += v / fees / len(files)
    return share, len(files)


def cmd_table(W, defences, attacks):
    rows = []
    res = {}
    for d in defences:
        base, nb = payouts(W, "none", d)
        for a in attacks:
            pa, na = payouts(W, a, d)
            att = pa["a"] / (base["a"] or 1e-12) - 1
            hon = {h: pa[h] / (base[h] or 1e-12) - 1 for h in names() if h != "a"}
            worst = min(hon.values())
            ok = att <= 0.10 and worst >= -0.05
            res["%s/%s" % (a, d)] = {"attacker": att, "worst_honest": worst, "met": ok}
            rows.append("| %s | %s | %.1f%% | %.1f%% | %+.1f%% | %s | %s |" % (
                a, d, 100 * base["a"], 100 * pa["a"], 100 * att,
                " ".join("%s %+.1f%%" % (h, 100 * v) for h, v in sorted(hon.items())), "met" if ok else "not met"))
    print("| attack | defence | attacker's share, honest records only | with the attack | rise | each honest contributor's change | target |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    json.dump(res, open(os.path.join(W, "table.json"), "w"), indent=1, sort_keys=True)


def rec_id(r):
    """A record's id as the index names it: the SHA-256 of its canonical JSON."""
    import hashlib
    t = json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(t.encode()).hexdigest()


def cmd_diagnose(W, scen, defences):
    """What the attribution resolves in scenario scen: of the requests for a contributor's own
    headwords, how many have the record of that headword in their top 10, and the mean share of
    one record (summed over the epoch's events) of the honest contributors, of the attacker's
    records in the honest datanet's places and of its extra records."""
    import glob
    nown = (H + 1) * 16  # the first requests ask for the contributors' own headwords
    ask = {r["id"]: r["prompt"][:-1] for r in rd(os.path.join(W, "requests.ndjson"))[:nown]}
    for d in defences:
        hits, n, earn, count = 0, 0, Counter(), Counter()
        for sd in sorted(glob.glob(os.path.join(W, scen, "*", "attr.%s.ndjson" % d))):
            recs = rd(os.path.join(os.path.dirname(sd), "train.ndjson"))
            cls = {}
            for i, r in enumerate(recs):
                c = "extra" if i >= (H + 1) * PER else ("attacker" if r["contributor"] == "a" else "honest")
                cls[rec_id(r)] = c
                count[c] += 1
            head = {rec_id(r): r["text"].split(": ", 1)[0] for r in recs}
            for a in rd(sd):  # in the answers' order, not the requests'
                if a["event"] in ask:
                    n += 1
                    hits += any(head.get(t["record"]) == ask[a["event"]] for t in a["top"])
                pos = [(t["record"], max(t["score"], 0)) for t in a["top"]]
                tot = sum(v for _, v in pos) or 1
                for rid, v in pos:
                    earn[cls.get(rid, "?")] += v / tot
        print("%s %s: own headword's record in the top 10 of %d of %d requests; share of one record: %s" % (
            scen, d, hits, n, " ".join("%s %.3f" % (c, earn[c] / count[c]) for c in ("honest", "attacker", "extra")
                                        if count[c])))


def info_z(texts):
    """Each text's robust z-score of information: the mean surprisal of its words under the
    other texts' add-one word frequencies, less the median, over the median absolute deviation."""
    ws = [re.findall(rb"[a-z0-9\x80-\xff]+", t.encode().lower()) for t in texts]
    c = Counter(x for w in ws for x in w)
    T, V = sum(c.values()), len(c)
    s = []
    for w in ws:
        own = Counter(w)
        s.append(sum(-math.log((c[x] - own[x] + 1) / (T - len(w) + V)) for x in w) / len(w) if w else None)

    def median(v):
        v = sorted(v)
        return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2
    m = median([x for x in s if x is not None])
    mad = median([abs(x - m) for x in s if x is not None])
    return [(x - m) / mad if x is not None and mad > 0 else None for x in s]


def cmd_info_validate():
    rng = random.Random(20261208)
    ks = (2.5, 3, 3.5, 4, 4.5)
    print("| corpus | datanets x records | " + " | ".join("K %g" % k for k in ks) + " |")
    print("|---|---|" + "---|" * len(ks))
    for name, ents in (("FOLDOC", corpus.foldoc()), ("WordNet", corpus.wordnet())):
        z = []
        for _ in range(30):
            z += [x for x in info_z([h + ": " + d for h, d in rng.sample(ents, 200)]) if x is not None]
        print("| %s | 30 x 200 | %s |" % (name, " | ".join("%.2f%%" % (100 * sum(x < -k for x in z) / len(z)) for k in ks)))


def main(a):
    if a and a[0] == "info-validate":
        return cmd_info_validate()
    W = a[1]
    if a[0] == "corpus":
        cmd_corpus(W)
    elif a[0] == "simple":
        cmd_simple(W)
    elif a[0] == "evade":
        cmd_evade(W)
    elif a[0] == "outlier-cands":
        cmd_outlier_cands(W)
    elif a[0] == "outlier-pick":
        cmd_outlier_pick(W, a[2])
    elif a[0] == "shadow-cands":
        cmd_shadow_cands(W)
    elif a[0] == "shadow-pick":
        cmd_shadow_pick(W, a[2])
    elif a[0] == "swap":
        cmd_swap(W, a[2], a[3])
    elif a[0] == "diagnose":
        cmd_diagnose(W, a[2], os.environ.get("FARM_DEFENCES", "none").split())
    elif a[0] == "table":
        defs = os.environ.get("FARM_DEFENCES", "none").split()
        cmd_table(W, defs, a[2:])
    else:
        sys.exit("usage: farm.py corpus|simple|outlier-cands|outlier-pick|shadow-cands|shadow-pick|swap|table|diagnose W ... | info-validate")


if __name__ == "__main__":
    main(sys.argv[1:])
