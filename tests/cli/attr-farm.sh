#!/bin/bash
# attr-score's farming defences: --normalize unit (scores divided by each
# record's gradient norm), --flag-generic (records in the top of many
# held-out queries, as flags lines) and --exclude (those records left out
# of top and shares); attr-settle withholding a flagged contributor's
# payout; --centre (each record's score less its mean score over reference
# queries); --verify of normalised and centred records; clean errors.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
# three contributors' facts, and "g" with generic records made of the words
# every fact has
awk 'BEGIN {
	split("amber salt copper tin wool glass", goods, " ")
	for (i = 0; i < 60; i++)
		printf "{\"text\":\"The island of Varn%03d exports %s and its harbour master is called Osk%03d.\",\"contributor\":\"c%d\"}\n", i, goods[i % 6 + 1], (i * 37) % 1000, i % 3
	for (i = 0; i < 6; i++)
		printf "{\"text\":\"The island of the island exports and its harbour master is called the island of %d.\",\"contributor\":\"g\"}\n", i
}' > data.ndjson
# held-out queries: islands nobody contributed
awk 'BEGIN {
	split("amber salt copper tin wool glass", goods, " ")
	for (i = 100; i < 124; i++)
		printf "{\"id\":\"h%d\",\"prompt\":\"The island of Varn%03d\",\"output_text\":\" exports %s and its harbour master is called Osk%03d.\",\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":40}}\n", i, i, goods[i % 6 + 1], (i * 53) % 1000
}' > heldout.ndjson
echo '{"n_layer":2,"n_head":2,"n_embd":32,"n_positions":96,"vocab_size":257}' > cfg.json
mf-train --init cfg.json --data data.ndjson --steps 40 --batch 8 --seq 96 --lr 3e-3 --no-progress --no-index -o base >/dev/null
mf-train --base base --lora r=4,alpha=8 --data data.ndjson --steps 40 --batch 8 --seq 96 --lr 5e-3 --no-progress --no-index -o ad >/dev/null
check "build the index" attr-score --build-index --model base --adapter ad --data data.ndjson --proj 4,4
args="--model base --adapter ad --data data.ndjson"
printf '{"id":"ev-1","prompt":"The island of Varn007","output_text":" exports copper and its harbour master is called Osk259.","usage":{"prompt_tokens":22,"completion_tokens":34}}\n' > ev.ndjson
printf '{"id":"ev-2","prompt":"The island of Varn031","output_text":" exports copper and its harbour master","usage":{"prompt_tokens":22,"completion_tokens":30}}\n' >> ev.ndjson

# --normalize unit
attr-score $args --top 66 < ev.ndjson > raw
check "score with --normalize unit" sh -c "attr-score $args --top 66 --normalize unit < ev.ndjson > unit"
check_eq "the default records name no normalisation" "$(grep -c '"normalize"' raw)" 0
check_eq "normalised records say so in params" "$(grep -c '"params":{[^}]*"normalize":"unit"' unit)" 2
check_eq "each record's score is divided by one number of its own, the same for every query" "$(python3 - raw unit <<'PY'
import json, sys
raw = [{t["record"]: t["score"] for t in json.loads(l)["top"]} for l in open(sys.argv[1])]
uni = [{t["record"]: t["score"] for t in json.loads(l)["top"]} for l in open(sys.argv[2])]
ok, varied = True, set()
for r in raw[0]:
    if abs(raw[0][r]) < 1e-6 or abs(raw[1][r]) < 1e-6:
        continue
    k0, k1 = uni[0][r] / raw[0][r], uni[1][r] / raw[1][r]
    ok &= k0 > 0 and abs(k0 - k1) <= 1e-4 * k0
    varied.add(round(k0, 4))
print(ok and len(varied) > 10)
PY
)" True
check "the same bytes run to run" sh -c "attr-score $args --top 66 --normalize unit < ev.ndjson | cmp - unit"
check "and with two threads" sh -c "attr-score $args --top 66 --normalize unit --threads 2 < ev.ndjson | cmp - unit"
check "--normalize none is the default's bytes" sh -c "attr-score $args --top 66 --normalize none < ev.ndjson | cmp - raw"
check "--verify recomputes normalised records" attr-score --verify $args unit
sed 's/,"normalize":"unit"//' unit > unit-bad
check_rc 1 "and refuses one whose normalisation was taken away" attr-score --verify $args unit-bad
attr-score $args --top 66 --partial --shard 0/2 --normalize unit ev.ndjson > p0
attr-score $args --top 66 --partial --shard 1/2 --normalize unit ev.ndjson > p1
check "shards of normalised scores merge to the same bytes" sh -c "attr-score $args --top 66 --normalize unit --merge p0 p1 | cmp - unit"
check_rc 65 "a merge without --normalize of normalised partials is refused" attr-score $args --top 66 --merge p0 p1

# --flag-generic and --exclude
attr-score $args --top 5 < heldout.ndjson > ho-raw
check "flag the records in the top 5 of more than 10% of 24 held-out queries" sh -c "attr-score $args --top 5 --flag-generic 0.1 < heldout.ndjson > flags"
check "there are flags" test -s flags
check_eq "exactly the records in the top 5 of more than 2.4 of them, each with its count, in training order" "$(python3 - flags ho-raw data.ndjson <<'PY'
import json, sys, collections
flags = [json.loads(l) for l in open(sys.argv[1])]
n, who = collections.Counter(), {}
for l in open(sys.argv[2]):
    for t in json.loads(l)["top"]:
        n[t["record"]] += 1
        who[t["record"]] = t["contributor"]
want = {r: k for r, k in n.items() if k > 2.4}
got = {f["record"]: f["n"] for f in flags}
ok = got == want and all(f["type"] == "flags" and f["flagged"] == 1 and f["rules"] == ["generic"] and
                         f["contributor"] == who[f["record"]] for f in flags)
print(ok and len(flags) < len(n))
PY
)" True
check_eq "a higher threshold flags fewer" "$(attr-score $args --top 5 --flag-generic 0.2 < heldout.ndjson | wc -l | awk -v n="$(wc -l < flags)" '{ print ($1 < n) }')" 1
check "the same bytes again" sh -c "attr-score $args --top 5 --flag-generic 0.1 < heldout.ndjson | cmp - flags"
check "score the held-out queries leaving the flagged records out" sh -c "attr-score $args --top 5 --exclude flags < heldout.ndjson > ho-ex"
check_eq "no flagged record is in any top, every top has 5" "$(python3 - flags ho-ex <<'PY'
import json, sys
bad = {json.loads(l)["record"] for l in open(sys.argv[1])}
recs = [json.loads(l) for l in open(sys.argv[2])]
print(all(t["record"] not in bad for r in recs for t in r["top"]) and all(len(r["top"]) == 5 for r in recs))
PY
)" True
check_eq "params say how many were left out" "$(grep -c "\"excluded\":$(wc -l < flags)," ho-ex)" 24
check_eq "the others keep their order: each top is the raw ranking without the flagged" "$(python3 - flags ho-raw ho-ex data.ndjson <<'PY'
import json, sys
bad = {json.loads(l)["record"] for l in open(sys.argv[1])}
raw = [json.loads(l)["top"] for l in open(sys.argv[2])]
ex = [json.loads(l)["top"] for l in open(sys.argv[3])]
print(all([t for t in r if t["record"] not in bad] == e[:len([t for t in r if t["record"] not in bad])] for r, e in zip(raw, ex)))
PY
)" True
check "scores_digest is that of every record" bash -c "diff <(grep -o '\"scores_digest\":\"[^\"]*\"' ho-raw) <(grep -o '\"scores_digest\":\"[^\"]*\"' ho-ex)"
check "--verify with the same --exclude" attr-score --verify $args --exclude flags ho-ex
check_rc 1 "--verify without it is a difference" attr-score --verify $args ho-ex

# --centre: each record's score less its mean over reference events
attr-score $args --top 66 < heldout.ndjson > ho-all
check "score centred on the held-out queries" sh -c "attr-score $args --top 66 --centre heldout.ndjson < ev.ndjson > cen"
check_eq "centred records name the centre's digest in params" "$(grep -c '"params":{"centre":"sha256:[0-9a-f]\{64\}"' cen)" 2
check_eq "the default records name no centre" "$(grep -c '"centre"' raw)" 0
check_eq "each score is the raw score less the record's mean raw score over the references" "$(python3 - raw ho-all cen <<'PY'
import json, sys
def rd(p):
    return [{t["record"]: t["score"] for t in json.loads(l)["top"]} for l in open(p)]
raw, ho, cen = rd(sys.argv[1]), rd(sys.argv[2]), rd(sys.argv[3])
mean = {r: sum(h[r] for h in ho) / len(ho) for r in ho[0]}
scale = max(abs(v) for q in raw for v in q.values())
err = max(abs(c[r] - (q[r] - mean[r])) for q, c in zip(raw, cen) for r in q)
moved = max(abs(mean[r]) for r in mean)
print(len(cen[0]) == 66 and err <= 1e-3 * scale and moved > 100 * err)
PY
)" True
attr-score $args --top 66 --centre heldout.ndjson < heldout.ndjson > ho-cen
check_eq "over the references themselves every record's centred scores average to zero" "$(python3 - ho-all ho-cen <<'PY'
import json, sys
def rd(p):
    return [{t["record"]: t["score"] for t in json.loads(l)["top"]} for l in open(p)]
raw, cen = rd(sys.argv[1]), rd(sys.argv[2])
scale = max(abs(v) for q in raw for v in q.values())
rawmean = max(abs(sum(q[r] for q in raw) / len(raw)) for r in raw[0])
cenmean = max(abs(sum(q[r] for q in cen) / len(cen)) for r in cen[0])
print(cenmean <= 1e-3 * scale and rawmean > 100 * cenmean)
PY
)" True
check "the same bytes run to run" sh -c "attr-score $args --top 66 --centre heldout.ndjson < ev.ndjson | cmp - cen"
check "and with two threads" sh -c "attr-score $args --top 66 --centre heldout.ndjson --threads 2 < ev.ndjson | cmp - cen"
check "with --normalize unit too" sh -c "attr-score $args --top 66 --centre heldout.ndjson --normalize unit < ev.ndjson > cen-unit"
check_eq "which name both" "$(grep -c '"centre":"sha256:[^"]*".*"normalize":"unit"' cen-unit)" 2
check "--verify with the same --centre" attr-score --verify $args --centre heldout.ndjson cen
check_rc 1 "--verify without it is a difference" attr-score --verify $args cen
check_rc 1 "--verify centred on other events is a difference" attr-score --verify $args --centre ev.ndjson cen
check_rc 1 "--verify of an uncentred record with --centre is a difference" attr-score --verify $args --centre heldout.ndjson raw
check_rc 64 "--centre with --partial" attr-score $args --partial --shard 0/2 --centre heldout.ndjson ev.ndjson
check_rc 66 "--centre of a missing file" attr-score $args --centre missing < ev.ndjson
: > empty.ndjson
check_rc 65 "--centre on no events" attr-score $args --centre empty.ndjson < ev.ndjson
echo '{"id":"x"}' > notext.ndjson
check "a reference that is no event is named" sh -c "attr-score $args --centre notext.ndjson < ev.ndjson 2>&1 | grep -q 'notext.ndjson: reference event 1: '"

# attr-settle withholds a flagged contributor's payout
echo '{"fee_per_1k_prompt":1000,"fee_per_1k_completion":2000,"split_bps":{"contributors":10000},"penalty":{"max_flagged":0}}' > pol.json
f1=$(python3 -c 'import json,sys; print(json.loads(open("flags").readline())["contributor"])')
check "settle the held-out answers with the flags" sh -c "attr-settle --policy pol.json --epoch e1 --dry-run ho-raw flags > pay"
check "a flagged contributor is withheld" grep -q "\"reasons\":\[\"flagged\"\],\"role\":\"contributor\",\"to\":\"$f1\"" pay
check_eq "and has no payout line" "$(grep -c "\"type\":\"payout\".*\"to\":\"$f1\"\|\"to\":\"$f1\".*\"type\":\"payout\"" pay)" 0

# errors
check_rc 64 "--normalize with an unknown mode" attr-score $args --normalize cosine < ev.ndjson
check_rc 64 "--flag-generic above 1" attr-score $args --flag-generic 2 < heldout.ndjson
check_rc 64 "--flag-generic with --verify" attr-score $args --verify --flag-generic 0.5 unit
echo '{"record":"sha256:0000000000000000000000000000000000000000000000000000000000000000"}' > nosuch
check_rc 65 "--exclude naming a record not trained on" attr-score $args --exclude nosuch < ev.ndjson
check "says which line" sh -c "attr-score $args --exclude nosuch < ev.ndjson 2>&1 | grep -q 'nosuch:1: .*not one of the training records'"
echo '{"type":"flags","contributor":"g","flagged":1}' > norec
check_rc 65 "--exclude with a line naming no record" attr-score $args --exclude norec < ev.ndjson
check_rc 66 "--exclude of a missing file" attr-score $args --exclude missing < ev.ndjson
check_eq "nothing is printed on errors" "$(attr-score $args --exclude nosuch < ev.ndjson 2>/dev/null | wc -c)" 0
finish
