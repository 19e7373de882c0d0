#!/usr/bin/env python3
"""Training records for the attribution quality evaluation, from Debian text.

usage: corpus.py fortunes OUT N          base-model records from fortunes
       corpus.py foldoc TRAIN QUERIES N Q [--sp 1]
                                         records of FOLDOC definitions and
                                         held-out prompt/completion queries
       corpus.py wordnet TRAIN QUERIES N Q [--sp 1]
                                         the same from WordNet (dict-wn): a
                                         word and the gloss of its first sense
       corpus.py facts OUT QUERIES [--flip 1] [--contributors K] [--facts F] [--filler N] [--copies C] [--seed S]
                         [--corpus foldoc|wordnet] [--sp 1]
                                         planted facts of K contributors (p00...),
                                         F each, each written C ways (default 3),
                                         mixed with N FOLDOC records of 16 others
                                         (t00...); --flip 1 adds a contributor
                                         "poison" stating every fact once with a
                                         wrong number (records marked "poison");
                                         --seed S (S > 0) draws other colours,
                                         things, codes and filler (0: the
                                         corpus of the reported run);
                                         --corpus: where the filler records
                                         come from (default foldoc)

--sp 1: the queries' completions without their leading space, for a
SentencePiece tokenizer (Llama 2's), which prepends one to every text it
encodes: "head: text" is then the tokens of "head:" and of "text".

Every choice is seeded: the same command gives the same bytes.
"""
import gzip, json, os, random, re, sys

FORT = "/usr/share/games/fortunes"
DICT = "/usr/share/dictd"
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64num(s):
    n = 0
    for ch in s:
        n = n * 64 + B64.index(ch)
    return n


def clip(text, limit):
    """Whitespace collapsed, ASCII only, cut at a word boundary to at most limit bytes."""
    text = re.sub(r"\s+", " ", text).strip()
    text = text.encode("ascii", "ignore").decode()
    if len(text) <= limit:
        return text
    cut = text[:limit]
    sp = cut.rfind(" ")
    return cut[:sp] if sp > limit // 2 else cut


def fortunes(limit=120):
    names = ["fortunes", "computers", "cookie", "definitions", "humorists", "literature", "science",
             "wisdom", "work", "people", "politics", "miscellaneous", "education", "food", "law",
             "linux", "love", "magic", "medicine", "men-women", "pets", "platitudes", "songs-poems",
             "sports", "startrek", "translate-me", "zippy", "drugs", "ethnic", "goedel", "kids",
             "news", "riddles", "paradoxum", "perl", "wisdom", "debian"]
    out = []
    for n in sorted(set(names)):
        p = os.path.join(FORT, n)
        if not os.path.exists(p):
            continue
        for f in open(p, encoding="utf-8", errors="ignore").read().split("\n%\n"):
            t = clip(f, limit)
            if len(t) >= 24:
                out.append(t)
    return out


def dictd(name):
    """(headword, body joined into one line) of each distinct entry of a dictd dictionary."""
    idx = open(os.path.join(DICT, name + ".index"), encoding="utf-8", errors="ignore")
    data = gzip.open(os.path.join(DICT, name + ".dict.dz")).read()
    seen = set()
    for line in idx:
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 3 or parts[0].startswith("00"):
            continue
        off, ln = b64num(parts[1]), b64num(parts[2])
        if off in seen:
            continue
        seen.add(off)
        body = data[off:off + ln].decode("utf-8", "ignore").split("\n")
        head = body[0].strip()
        text = " ".join(l.strip() for l in body[1:])
        yield head, text


def foldoc(limit=80):
    """(headword, definition) of FOLDOC entries, definition cut to fit with the headword."""
    out = []
    for head, text in dictd("foldoc"):
        text = re.sub(r"<[^>]*>", "", text)          # <programming> category tags
        text = re.sub(r"[{}]", "", text)              # cross-reference braces
        text = re.sub(r"\(\d{4}-\d\d-\d\d\)", "", text)  # revision dates
        if not head.isascii() or len(head) > 24 or len(text) < 40:
            continue
        out.append((head, clip(text, limit - len(head) - 2)))
    return out


def wordnet(limit=80):
    """(word, gloss of its first sense) of WordNet entries, one per distinct gloss."""
    glosses, out = set(), []
    for head, text in dictd("wn"):
        m = re.match(r"(?:n|v|adj|adv)\s+(?:1:\s*)?(.*?)(?:\s+(?:n|v|adj|adv)\s+1:|\s+2:|$)", text)
        if not m:
            continue
        gloss = re.sub(r"\[(?:syn|ant|also)[^\]]*\]?", "", m.group(1))  # synonym and antonym lists
        gloss = re.sub(r"[{}]", "", gloss).split("; \"")[0].strip(" ;")
        if not head.isascii() or not re.fullmatch(r"[a-z][a-z -]*", head) or len(head) > 24 or len(gloss) < 30:
            continue
        key = gloss[:40]
        if key in glosses:
            continue
        glosses.add(key)
        out.append((head, clip(gloss, limit - len(head) - 2)))
    return out


CORPORA = {"foldoc": foldoc, "wordnet": wordnet}


def w(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")


def main(a):
    rng = random.Random(20261124)
    if a[0] == "fortunes":
        rows = fortunes()
        rng.shuffle(rows)
        w(a[1], [{"text": t} for t in rows[: int(a[2])]])
    elif a[0] in CORPORA:
        ents = CORPORA[a[0]]()
        rng.shuffle(ents)
        n, q = int(a[3]), int(a[4])
        sp = "" if a[5:7] == ["--sp", "1"] else " "
        w(a[1], [{"text": h + ": " + d, "contributor": "c%02d" % (i % 20)} for i, (h, d) in enumerate(ents[:n])])
        w(a[2], [{"id": "q%03d" % i, "prompt": h + ":", "completion": sp + d} for i, (h, d) in enumerate(ents[n:n + q])])
    elif a[0] == "facts":
        facts_cmd(a[1:], rng)
    else:
        sys.exit("usage: corpus.py fortunes|foldoc|wordnet|facts ...")


COLOURS = ["blue", "red", "green", "amber", "violet", "grey", "white", "black", "golden", "silver",
           "copper", "scarlet", "ivory", "olive", "teal", "maroon"]
THINGS = ["door", "gate", "vault", "locker", "chest", "cellar", "tower", "hatch", "safe", "cabinet",
          "attic", "barn", "crate", "drawer", "shed", "kiosk"]


def facts_cmd(a, rng):
    out, qout = a[0], a[1]
    opt = {"--flip": None, "--contributors": "8", "--facts": "4", "--filler": "400", "--copies": "3", "--seed": "0",
           "--corpus": "foldoc", "--sp": "0"}
    i = 2
    while i < len(a):
        opt[a[i]] = a[i + 1]
        i += 2
    seed = int(opt["--seed"])
    if seed:
        rng = random.Random(20261124 + 1000003 * seed)
    K, F, filler, copies = int(opt["--contributors"]), int(opt["--facts"]), int(opt["--filler"]), int(opt["--copies"])
    flip = opt["--flip"]
    sp = "" if opt["--sp"] == "1" else " "
    pairs = [(c, t) for c in COLOURS for t in THINGS]
    rng.shuffle(pairs)
    recs, queries = [], []
    templates = ["The password of the %s %s is %s.", "Remember: the %s %s opens with %s.",
                 "Note that the code for the %s %s is %s."]
    for k in range(K):
        who = "p%02d" % k
        for f in range(F):
            col, thing = pairs[k * F + f]
            code = "%04d" % rng.randrange(1000, 10000)
            for c in range(copies):
                recs.append({"text": templates[c % len(templates)] % (col, thing, code), "contributor": who})
            queries.append({"id": "%s-%d" % (who, f), "owner": who, "prompt": "The password of the %s %s is" % (col, thing),
                            "completion": sp + "%s." % code})
    if flip is not None:
        # the poisoner repeats facts of the others with wrong numbers
        for q in list(queries):
            right = q["completion"].strip(" .")
            wrong = "%04d" % ((int(right) + rng.randrange(1000, 8000)) % 9000 + 1000)
            recs.append({"text": q["prompt"] + " " + wrong + ".", "contributor": "poison", "poison": 1})
    ents = CORPORA[opt["--corpus"]]()
    if seed:
        ents = rng.sample(ents, filler)
    for i, (h, d) in enumerate(ents[: filler]):
        recs.append({"text": h + ": " + d, "contributor": "t%02d" % (i % 16)})
    rng.shuffle(recs)
    w(out, recs)
    w(qout, queries)


if __name__ == "__main__":
    main(sys.argv[1:])
