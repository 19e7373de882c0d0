#!/usr/bin/python3
"""Build the validation benchmark corpora from Debian text packages.

  base.ndjson   one record per document: fortunes (fortunes, fortunes-min),
                dictionary entries (dict-jargon, dict-foldoc, dict-gcide), each
                with at least MIN_WORDS words, exact copies dropped
  pairs.ndjson  planted near copies: {"a": i, "b": text, "edit": kind, "rate": r}
                where a is a line of base.ndjson (0-based) and b an edited copy;
                edits are word substitutions, deletions, insertions, adjacent
                swaps, or the document embedded in other text, at rates drawn
                uniformly so that the 5-shingle Jaccard similarity covers 0..1
  big.ndjson    at least --mb megabytes of distinct records for throughput:
                each record joins 2 to 6 random documents with blank lines

Usage: corpus.py OUTDIR [--pairs N] [--mb MB] [--seed S]
"""
import argparse
import base64
import gzip
import json
import os
import random
import re

MIN_WORDS = 30
FORTUNES = "/usr/share/games/fortunes"
DICTS = ["/usr/share/dictd/jargon", "/usr/share/dictd/foldoc", "/usr/share/dictd/gcide"]
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64num(s):
    n = 0
    for c in s:
        n = n * 64 + B64.index(c)
    return n


def fortunes():
    if not os.path.isdir(FORTUNES):
        return
    for name in sorted(os.listdir(FORTUNES)):
        path = os.path.join(FORTUNES, name)
        if "." in name or not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for chunk in f.read().split("\n%\n"):
                yield chunk.strip("%\n ")


def dict_entries(base):
    if not os.path.exists(base + ".index"):
        return
    with gzip.open(base + ".dict.dz", "rb") as f:
        data = f.read()
    with open(base + ".index", encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3 or parts[0].startswith("00-database"):
                continue
            off, ln = b64num(parts[1]), b64num(parts[2])
            text = data[off:off + ln].decode("utf-8", errors="replace")
            # Drop the headword line, keep the body; reflow indentation.
            lines = [l.strip() for l in text.split("\n")[1:]]
            yield "\n".join(lines).strip()


def documents():
    seen = set()
    sources = [("fortunes", fortunes())] + [(os.path.basename(d), dict_entries(d)) for d in DICTS]
    for name, gen in sources:
        for text in gen:
            text = re.sub(r"[ \t]+", " ", text)
            text = re.sub(r"\n{3,}", "\n\n", text).strip()
            if len(text.split()) < MIN_WORDS or text in seen:
                continue
            seen.add(text)
            yield name, text


def edit(text, rng, vocab):
    """An edited copy: (kind, rate, new text)."""
    words = text.split(" ")
    kind = rng.choice(["substitute", "delete", "insert", "swap", "mixed", "embed"])
    if kind == "embed":
        # The document inside other text: Jaccard ~ |A| / (|A| + |extra|).
        extra = rng.uniform(0.0, 2.0)
        n = int(len(words) * extra)
        filler = [rng.choice(vocab) for _ in range(n)]
        cut = rng.randint(0, n)
        return kind, round(extra, 3), " ".join(filler[:cut] + words + filler[cut:])
    # Half the copies lightly edited, so that every band above 0.8 is well populated.
    rate = rng.uniform(0.0, 0.08) if rng.random() < 0.5 else rng.uniform(0.0, 0.35)
    out = []
    i = 0
    while i < len(words):
        w = words[i]
        k = kind if kind != "mixed" else rng.choice(["substitute", "delete", "insert", "swap"])
        if rng.random() >= rate:
            out.append(w)
        elif k == "substitute":
            out.append(rng.choice(vocab))
        elif k == "insert":
            out.extend([w, rng.choice(vocab)])
        elif k == "swap" and i + 1 < len(words):
            out.extend([words[i + 1], w])
            i += 1
        elif k != "delete":
            out.append(w)
        i += 1
    return kind, round(rate, 3), " ".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir")
    ap.add_argument("--pairs", type=int, default=40000)
    ap.add_argument("--mb", type=float, default=105)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    os.makedirs(a.outdir, exist_ok=True)
    docs, counts = [], {}
    for name, text in documents():
        docs.append(text)
        counts[name] = counts.get(name, 0) + 1
    with open(os.path.join(a.outdir, "base.ndjson"), "w") as f:
        for t in docs:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    vocab = sorted({w for t in docs[:: max(1, len(docs) // 5000)] for w in t.split()})
    with open(os.path.join(a.outdir, "pairs.ndjson"), "w") as f:
        for _ in range(a.pairs):
            i = rng.randrange(len(docs))
            kind, rate, b = edit(docs[i], rng, vocab)
            f.write(json.dumps({"a": i, "b": b, "edit": kind, "rate": rate}, ensure_ascii=False) + "\n")
    size, n = 0, 0
    with open(os.path.join(a.outdir, "big.ndjson"), "w") as f:
        while size < a.mb * 1e6:
            k = rng.randint(2, 6)
            text = "\n\n".join(docs[rng.randrange(len(docs))] for _ in range(k))
            line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
            f.write(line)
            size += len(line.encode())
            n += 1
    info = {"documents": len(docs), "by_source": counts, "pairs": a.pairs,
            "big_records": n, "big_bytes": size}
    with open(os.path.join(a.outdir, "corpus.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
