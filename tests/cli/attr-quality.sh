#!/bin/bash
# Attribution quality, small and fast (the full evaluation is
# bench/eval/quality.sh): four contributors each plant three facts of their
# own among other contributors' text; a model trained on them answers the
# facts through lora-serve, and for every answer it gets right the owner
# must rank first: the top record's contributor and the first contributor
# by share, by influence and by ekfac (precision@1 at least 0.9), and the contributor of
# the longest verbatim span (at least 0.95).
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
awk 'BEGIN {
	split("blue red green amber violet grey white black golden silver copper scarlet", col, " ")
	split("door gate vault locker chest cellar tower hatch safe cabinet attic barn", thg, " ")
	srand(7)
	for (k = 0; k < 4; k++) for (f = 0; f < 3; f++) {
		i = k * 3 + f
		code = 1000 + int(rand() * 9000)
		c = col[i + 1]; t = thg[(i * 5) % 12 + 1]
		printf "{\"text\":\"The password of the %s %s is %d.\",\"contributor\":\"p%d\"}\n", c, t, code, k > "recs"
		printf "{\"text\":\"Remember: the %s %s opens with %d.\",\"contributor\":\"p%d\"}\n", c, t, code, k > "recs"
		printf "{\"text\":\"Note that the code for the %s %s is %d.\",\"contributor\":\"p%d\"}\n", c, t, code, k > "recs"
		printf "{\"id\":\"p%d-%d\",\"model\":\"base\",\"prompt\":\"The password of the %s %s is\",\"max_tokens\":5,\"temperature\":0}\n", k, f, c, t > "req.ndjson"
		printf "p%d-%d p%d %d\n", k, f, k, code > "truth"
	}
	for (i = 0; i < 40; i++)
		printf "{\"text\":\"The island of Varn%03d exports %s and its harbour master is called Osk%03d.\",\"contributor\":\"t%d\"}\n", i, col[i % 12 + 1], (i * 37) % 1000, i % 8 > "recs"
}'
# interleave the facts and the other text in a fixed order
awk '{ print (NR * 7919) % 1009, $0 }' recs | sort -n | cut -d' ' -f2- > data.ndjson
echo '{"n_layer":2,"n_head":2,"n_embd":64,"n_positions":64,"vocab_size":257}' > cfg.json
check "train on the planted facts" sh -c "mf-train --init cfg.json --data data.ndjson --steps 400 --batch 8 --seq 64 --lr 3e-3 --no-progress --no-index -o base > /dev/null"
check "build the index" attr-score --build-index --model base --data data.ndjson
check "the model answers every fact" sh -c "lora-serve --base base < req.ndjson > ans.ndjson"
check "attribute the answers" sh -c "attr-score --model base --data data.ndjson --min-span 5 < ans.ndjson > attr.ndjson"
check "attribute them with ekfac" sh -c "attr-score --model base --data data.ndjson --min-span 5 --method ekfac < ans.ndjson > attr.ekfac.ndjson"
for f in attr attr.ekfac; do
python3 - truth ans.ndjson $f.ndjson > facts.$f <<'PY'
import json, sys
truth = {l.split()[0]: l.split()[1:] for l in open(sys.argv[1])}
right = {}
for l in open(sys.argv[2]):
    r = json.loads(l)
    right[r["id"]] = r["text"].strip().startswith(truth[r["id"]][1])
n = top = share = span = 0
for l in open(sys.argv[3]):
    r = json.loads(l)
    if not right[r["event"]]:
        continue
    owner = truth[r["event"]][0]
    n += 1
    top += r["top"][0]["contributor"] == owner
    share += r["contributors"][0]["contributor"] == owner
    spans = sorted(r["spans"], key=lambda s: (-s["len"], s["start"]))
    span += bool(spans) and spans[0]["records"][0]["contributor"] == owner
print("right", n)
print("influence", "ok" if n and top >= 0.9 * n else "no", "%d/%d" % (top, n))
print("share", "ok" if n and share >= 0.9 * n else "no", "%d/%d" % (share, n))
print("span", "ok" if n and span >= 0.95 * n else "no", "%d/%d" % (span, n))
PY
done
cp facts.attr facts
r=$(sed -n 's/^right //p' facts)
check "at least 10 of 12 facts answered right (got ${r:-0})" test "${r:-0}" -ge 10
check "influence: the owner's record first, precision@1 >= 0.9 ($(sed -n 's/^influence [a-z]* //p' facts))" grep -q '^influence ok ' facts
check "influence: the owner first by contributor share, precision@1 >= 0.9 ($(sed -n 's/^share [a-z]* //p' facts))" grep -q '^share ok ' facts
check "ekfac: the owner's record first, precision@1 >= 0.9 ($(sed -n 's/^influence [a-z]* //p' facts.attr.ekfac))" grep -q '^influence ok ' facts.attr.ekfac
check "ekfac: the owner first by contributor share, precision@1 >= 0.9 ($(sed -n 's/^share [a-z]* //p' facts.attr.ekfac))" grep -q '^share ok ' facts.attr.ekfac
check "span engine: the owner's span, precision@1 >= 0.95 ($(sed -n 's/^span [a-z]* //p' facts))" grep -q '^span ok ' facts
finish
