#!/bin/bash
# attr-score's farming defences: --normalize unit (scores divided by each
# record's gradient norm), --flag-generic (records in the top of many
# held-out queries, as flags lines) and --exclude (those records left out
# of top and shares); --flag-low-info (records whose words say what the
# other records say, as flags lines); attr-settle withholding a flagged contributor's
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

# --flag-low-info: records whose words say what the others say. Forty
# varied facts and "g"'s word lists of their frequent words (an index of
# the base alone: the rule reads only the records)
awk 'BEGIN {
	split("amber salt copper tin wool glass silk iron grain honey", goods, " ")
	split("north south east west", side, " ")
	for (i = 0; i < 40; i++) {
		t = sprintf("Varn%03d lies %s of Osk%03d; it exports %s", i, side[i % 4 + 1], (i * 37) % 1000, goods[i % 10 + 1])
		for (j = 0; j < i % 4; j++)
			t = t sprintf(", %s", goods[(i * 7 + j * 3) % 10 + 1])
		printf "{\"text\":\"%s.\",\"contributor\":\"c%d\"}\n", t, i % 3
	}
	for (i = 0; i < 6; i++)
		printf "{\"text\":\"it exports the of lies it exports of the %s %s\",\"contributor\":\"g\"}\n", side[i % 4 + 1], goods[i % 10 + 1]
}' > info.ndjson
attr-score --build-index --model base --data info.ndjson --index info.idx --proj 4,4
iargs="--model base --index info.idx --data info.ndjson"
echo '{"fee_per_1k_prompt":1000,"fee_per_1k_completion":2000,"split_bps":{"contributors":10000},"penalty":{"max_flagged":0}}' > pol0.json
check "flag the records of low information" sh -c "attr-score $iargs --flag-low-info 3 > lowinfo"
check_eq "exactly g's six records, as flags lines in training order" "$(python3 - lowinfo info.ndjson <<'PY'
import json, sys, hashlib
flags = [json.loads(l) for l in open(sys.argv[1])]
recs = [json.loads(l) for l in open(sys.argv[2])]
rid = lambda r: "sha256:" + hashlib.sha256(json.dumps(r, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
want = [rid(r) for r in recs if r["contributor"] == "g"]
print([f["record"] for f in flags] == want and all(f["type"] == "flags" and f["flagged"] == 1 and
      f["rules"] == ["low-info"] and f["contributor"] == "g" and f["z_milli"] < -3000 for f in flags))
PY
)" True
check_eq "each with the robust z-score of the rule's arithmetic" "$(python3 - lowinfo info.ndjson <<'PY'
import json, sys, math, re, collections
recs = [json.loads(l)["text"] for l in open(sys.argv[2])]
ws = [re.findall(r"[a-z0-9]+", t.lower()) for t in recs]
c = collections.Counter(x for w in ws for x in w)
T, V = sum(c.values()), len(c)
s = [sum(-math.log((c[x] - collections.Counter(w)[x] + 1) / (T - len(w) + V)) for x in w) / len(w) for w in ws]
def med(v):
    v = sorted(v)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2
m = med(s)
mad = med([abs(x - m) for x in s])
z = [round(1000 * (x - m) / mad) for x in s[40:]]
got = [json.loads(l)["z_milli"] for l in open(sys.argv[1])]
print(len(got) == len(z) and all(abs(a - b) <= 1 for a, b in zip(got, z)))
PY
)" True
check_eq "a lower bar flags facts too" "$(attr-score $iargs --flag-low-info 1 | grep -vc '"contributor":"g"' | awk '{ print ($1 > 0) }')" 1
check_eq "a high bar flags none" "$(attr-score $iargs --flag-low-info 1000 | wc -c)" 0
check "the same bytes again" sh -c "attr-score $iargs --flag-low-info 3 | cmp - lowinfo"
check "it reads no events" sh -c "attr-score $iargs --flag-low-info 3 < /dev/null | cmp - lowinfo"
check_eq "records of identical information flag none (no spread)" "$(attr-score $args --flag-low-info 0 | wc -c)" 0
printf '{"id":"i1","prompt":"Varn009 lies","output_text":" north of the island; it exports the salt","usage":{"prompt_tokens":12,"completion_tokens":30}}\n' > iev.ndjson
attr-score $iargs --top 46 < iev.ndjson > iev-raw
check "score leaving them out" sh -c "attr-score $iargs --top 40 --exclude lowinfo < iev.ndjson > iev-li"
gtop() { python3 -c 'import json, sys; r = json.loads(open(sys.argv[1]).readline()); print(len(r["top"]), sum(t["contributor"] == "g" for t in r["top"]), sum(c["contributor"] == "g" for c in r["contributors"]))' "$1"; }
check_eq "every record is ranked in the raw scores, g's six with a share" "$(gtop iev-raw)" "46 6 1"
check_eq "none of g's in the top 40 with the flags excluded, nor a share" "$(gtop iev-li)" "40 0 0"
check "attr-settle takes the flags lines" sh -c "attr-settle --policy pol0.json --epoch e0 --dry-run iev-raw lowinfo > ipay"
check "and withholds g's payout under max_flagged 0" grep -q '"reasons":\["flagged"\],"role":"contributor","to":"g"' ipay
check_rc 64 "--flag-low-info with --flag-generic" attr-score $iargs --flag-low-info 3 --flag-generic 0.1 < heldout.ndjson
check_rc 64 "--flag-low-info with --build-index" attr-score $iargs --flag-low-info 3 --build-index
check_rc 64 "--flag-low-info below 0" attr-score $iargs --flag-low-info -1

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
