#!/bin/bash
# Witnesses (C2SP tlog-witness, tlog-cosignature) on 127.0.0.1: two witnesses
# cosign the log; verifiers require a quorum; a fork, a rollback and a bad
# consistency proof are refused, visibly to the log's operator; a witness
# killed with -9 keeps its state; a changed cosignature is detected.
. "$TRAIL_TOP/tests/tap.sh"
PY=/usr/bin/python3
pids=()
trap 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; rm -rf "$T"' EXIT
cd "$T" || exit 70

# start_witness NAME KEYFILE STATEDIR: sets $pid and $url
start_witness() {
	trail-log witness --listen 127.0.0.1:0 --key "$2" --log "$LV" --log "other.example/b=$OV" \
		--state "$3" > "$1.out" 2>> "$1.err" &
	pid=$!
	pids+=($pid)
	for _ in $(seq 200); do grep -q '"port"' "$1.out" 2>/dev/null && break; sleep 0.05; done
	url="http://127.0.0.1:$(sed 's/.*"port":\([0-9]*\).*/\1/' "$1.out")"
}

trail-log init --origin log.example/a >/dev/null
LV=$(cat "$TRAIL_HOME/keys/operator.pub")
trail-key generate -C "$T" other >/dev/null
OV=$(cat other.pub)
for i in 1 2 3 4 5; do echo "{\"type\":\"t\",\"n\":$i}"; done | trail-log append --batch >/dev/null

# --- witness keys ------------------------------------------------------------
v1=$(trail-key generate --witness w1.example/w)
check_eq "a witness key's file names hold '_' for '/'" "$(ls w1.example_w.*)" "w1.example_w.key
w1.example_w.pub"
check_eq "its verifier key is a cosigner key, type 0x04" "$(echo "$v1" | cut -d+ -f3 | cut -c1)" "B"
check_eq "public --witness prints it again" "$(trail-key public --witness w1.example_w.key)" "$v1"
check "the key file is an ordinary signer key" sh -c 'trail-key public w1.example_w.key | grep -q "^w1.example/w+[0-9a-f]*+A"'
trail-key generate --witness w2.example/w >/dev/null
mkdir imp && trail-key generate -C imp --witness w2.example/w >/dev/null # same name, another key
W1=w1.example_w.pub W2=w2.example_w.pub W3=imp/w2.example_w.pub

start_witness w1 w1.example_w.key st1; pid1=$pid url1=$url
start_witness w2 w2.example_w.key st2; pid2=$pid url2=$url
start_witness w3 imp/w2.example_w.key st3; url3=$url
check "the witness says where it listens and its cosigner key" grep -q "\"witness\":\"$v1\"" w1.out

# --- two witnesses cosign ----------------------------------------------------
trail-log cosign --witness "$url1=$W1" --witness "$url2=$(cat $W2)" > cosign.out 2> cosign.err
result $? "two witnesses cosign the checkpoint"
check_eq "cosign prints one line per witness" "$(sed 's/"url":"[^"]*",//' cosign.out)" \
'{"ok":true,"old":0,"size":5,"status":200,"witness":"w1.example/w"}
{"ok":true,"old":0,"size":5,"status":200,"witness":"w2.example/w"}'
trail-log checkpoint > cp5
check_eq "the stored checkpoint carries both cosignatures" "$(grep -c '^— w[12].example/w ' cp5)" 2
check "the witness logs what it cosigned" grep -q 'log.example/a: cosigned size 5 (old 0): 200' w1.err
check "a quorum of 2 verifies" trail-log verify-proof --witness "$W1" --witness "$W2" --quorum 2 cp5
check_eq "and says how many cosigned" "$(trail-log verify-proof --witness "$W1" --witness "$W2" cp5)" \
	'{"cosigned":2,"file":"cp5","ok":true}'
check_rc 1 "a quorum of 3 from two witnesses fails" \
	trail-log verify-proof --witness "$W1" --witness "$W2" --quorum 3 cp5
check_rc 1 "a witness that did not cosign does not count" \
	trail-log verify-proof --witness "$W1" --witness "$W3" --quorum 2 cp5
check "trail-key verify takes a cosigner key" sh -c "trail-key verify '$W2' < cp5"
# an implementation apart from trail: Node's Ed25519 and SHA-256
if command -v node >/dev/null; then
	check_eq "Node verifies the cosignature: key id, message and signature" "$(node -e '
const c = require("crypto"), fs = require("fs");
const [vk, note] = [fs.readFileSync(process.argv[1], "utf8").trim(), fs.readFileSync(process.argv[2], "utf8")];
const [name, id, b64] = [vk.slice(0, vk.indexOf("+")), vk.split("+")[1], vk.slice(vk.indexOf("+") + 10)];
const raw = Buffer.from(b64, "base64"), body = note.slice(0, note.indexOf("\n\n") + 1);
const kid = c.createHash("sha256").update(Buffer.concat([Buffer.from(name + "\n"), raw])).digest().slice(0, 4);
const line = note.split("\n").find(l => l.startsWith("— " + name + " "));
const blob = Buffer.from(line.split(" ")[2], "base64"), t = blob.readBigUInt64BE(4);
const pk = c.createPublicKey({key: Buffer.concat([Buffer.from("302a300506032b6570032100", "hex"), raw.slice(1)]), format: "der", type: "spki"});
const msg = Buffer.from("cosignature/v1\ntime " + t + "\n" + body);
console.log(raw[0], kid.toString("hex") === id, blob.slice(0, 4).equals(kid), c.verify(null, msg, pk, blob.slice(12)));
' "$W1" cp5)" "4 true true true"
else
	skip "Node verifies the cosignature" "node is not installed"
fi
check "the cosigned checkpoint is still the log's note" sh -c "trail-key verify '$LV' < cp5"
check_rc 64 "--quorum without --witness is a usage error" trail-log verify-proof --quorum 1 cp5

# a cosignature by another key of the same name (w3) does not count for w2
echo '{"type":"t","n":6}' | trail-log append >/dev/null
trail-log cosign --witness "$url1=$W1" --witness "$url3=$W3" >/dev/null 2>&1
trail-log checkpoint > cp6
check_eq "w1 and the impostor cosigned size 6" "$(grep -c '^— w[12].example/w ' cp6)" 2
check_rc 1 "the impostor's cosignature does not count for w2" \
	trail-log verify-proof --witness "$W1" --witness "$W2" --quorum 2 cp6
trail-log cosign --witness "$url2=$W2" >/dev/null 2>&1
trail-log checkpoint > cp6b
check "w2 catches up from 5 to 6 with a consistency proof" \
	trail-log verify-proof --witness "$W1" --witness "$W2" --quorum 2 cp6b
check_eq "cosignatures already collected are kept" "$(grep -c '^— w[12].example/w ' cp6b)" 3

# a changed byte of a cosignature
sed '/^— w1.example/s/\(.\{40\}\)./\1A/' cp6b > cp6x
cmp -s cp6b cp6x && sed '/^— w1.example/s/\(.\{40\}\)./\1B/' cp6b > cp6x
check_rc 1 "a changed byte in a cosignature is detected" \
	trail-log verify-proof --witness "$W1" --witness "$W2" --quorum 2 cp6x
check_rc 1 "also by trail-key verify" sh -c "trail-key verify '$W1' < cp6x"

# receipts carry the cosigned checkpoint (C2SP tlog-proof)
trail-log prove 2 > r2
check "a receipt for the cosigned checkpoint carries the cosignatures" \
	trail-log verify-proof --witness "$W1" --witness "$W2" --quorum 2 r2
sed 's/^index 2$/index 3/' r2 > r2x
check_rc 1 "and its proof is still checked" trail-log verify-proof --witness "$W1" --witness "$W2" r2x

# --- a fork: the same origin and key, other entries, the same size -------------
F="$T/fork"
trail-log --home "$F" init --origin log.example/a --key "$TRAIL_HOME/keys/operator.key" >/dev/null
for i in 1 2 3 4 5 6; do echo "{\"type\":\"fork\",\"n\":$i}"; done | trail-log --home "$F" append --batch >/dev/null
trail-log --home "$F" cosign --witness "$url1=$W1" --witness "$url2=$W2" > fork.out 2> fork.err
check_eq "a forked log (same size, other root) is refused by both witnesses" "$?" 1
check_eq "the refusal shows each witness's status and body" \
	"$(grep -c 'refused the checkpoint (size 6, old 6): 409 log.example/a: refused: a fork' fork.err)" 2
check "and says so in the end" grep -q 'trail-log: error: 2 of 2 witnesses refused the checkpoint' fork.err
check_eq "the NDJSON says 409 too" "$(grep -c '"ok":false.*"status":409' fork.out)" 2
check "the witness logs the refusal" grep -q '409 log.example/a: refused: a fork' w1.err
check_rc 1 "nothing cosigned is stored for the fork" test -e "$F/log/checkpoint.cosigned"
check_eq "both witnesses keep the forked checkpoint as evidence" "$(ls st1 st2 | grep -c 'refused-')" 2
check "the evidence is the log's signed checkpoint" sh -c "sed '1,/^\$/d' st1/*.refused-* | trail-key verify '$LV'"
echo '{"type":"fork","n":7}' | trail-log --home "$F" append >/dev/null
trail-log --home "$F" cosign --witness "$url1=$W1" >/dev/null 2> fork7.err
check_eq "the fork grown past the witness: its proof fails (422)" \
	"$(grep -c '): 422 .*consistency proof from size 6 to 7 does not verify' fork7.err)" 1

# --- a rollback ---------------------------------------------------------------
R="$T/rollback"
trail-log --home "$R" init --origin log.example/a --key "$TRAIL_HOME/keys/operator.key" >/dev/null
for i in 1 2 3 4; do echo "{\"type\":\"t\",\"n\":$i}"; done | trail-log --home "$R" append --batch >/dev/null
check_rc 1 "a rollback (a prefix of size 4 after 6) is refused" \
	trail-log --home "$R" cosign --witness "$url1=$W1"
trail-log --home "$R" cosign --witness "$url1=$W1" 2> rb.err >/dev/null
check "the witness names its size, then refuses old 6 for size 4" \
	grep -q 'refused the checkpoint (size 4, old 6): 400 log.example/a: old size 6 is larger' rb.err

# --- a bad consistency proof, and the other statuses, straight over HTTP --------
for i in 7 8 9; do echo "{\"type\":\"t\",\"n\":$i}"; done | trail-log append --batch >/dev/null
trail-log consistency 6 9 | $PY -c 'import json,sys; [print(h) for h in json.load(sys.stdin)["proof"]]' > proof
{ echo "old 6"; sed '1s/^./A/;1s/^AA/BA/' proof; echo; trail-log checkpoint; } > bad.req
post() { curl -s -o "$T/post.body" -w '%{http_code} %{content_type}' --data-binary @"$1" "$url1/add-checkpoint"; }
check_eq "a bad consistency proof: 422" "$(post bad.req | cut -d' ' -f1)" 422
{ echo "old 0"; echo; trail-log checkpoint; } > old0.req
check_eq "a stale old size: 409 text/x.tlog.size" "$(post old0.req)" "409 text/x.tlog.size"
check_eq "naming the size last cosigned" "$(cat post.body)" 6
{ echo "old 6"; cat proof; echo; trail-log checkpoint; } > good.req
check_eq "the right proof: 200" "$(post good.req | cut -d' ' -f1)" 200
check "the body is the cosignature line" sh -c "{ trail-log checkpoint; cat '$T/post.body'; } | trail-key verify '$W1'"
printf 'old 0\n\nnowhere.example\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n\342\200\224 nowhere.example AAAAAAA=\n' > unknown.req
check_eq "an unknown origin: 404" "$(post unknown.req | cut -d' ' -f1)" 404
O="$T/other"
trail-log --home "$O" init --origin log.example/a >/dev/null
{ echo "old 0"; echo; trail-log --home "$O" checkpoint; } > forged.req
check_eq "a checkpoint not signed by the log's key: 403" "$(post forged.req | cut -d' ' -f1)" 403
printf 'old x\n\n' > junk.req
check_eq "a malformed request: 400" "$(post junk.req | cut -d' ' -f1)" 400
check_eq "GET is not add-checkpoint: 405" "$(curl -s -o /dev/null -w '%{http_code}' "$url1/add-checkpoint")" 405

# --- durability: kill -9, restart on the same state -----------------------------
kill -9 "$pid1"
wait "$pid1" 2>/dev/null
start_witness w1b w1.example_w.key st1; url1=$url
trail-log --home "$F" cosign --witness "$url1=$W1" > /dev/null 2> fork2.err
check_eq "after kill -9 and a restart the fork is still refused" "$?" 1
check "with the size it had cosigned (9)" grep -q 'old 9): 4' fork2.err
check "and the log itself goes on: size 9 again" trail-log cosign --witness "$url1=$W1"
kill -TERM "$pid2"
wait "$pid2" 2>/dev/null
check "SIGTERM stops a witness cleanly" grep -q 'trail-log: witness: stopped' w2.err

# --- tiles: the served checkpoint is the cosigned one ----------------------------
start_witness w2b w2.example_w.key st2; url2=$url
trail-log cosign --witness "$url1=$W1" --witness "$url2=$W2" >/dev/null 2>&1
trail-log tiles www >/dev/null
check_eq "the tiles' checkpoint carries the cosignatures" "$(grep -c '^— w[12].example/w ' www/checkpoint)" 2
P=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd www && exec $PY -m http.server --bind 127.0.0.1 "$P" >/dev/null 2>&1) &
pids+=($!)
U="http://127.0.0.1:$P"
for _ in $(seq 50); do curl -sf "$U/checkpoint" >/dev/null 2>&1 && break; sleep 0.1; done
out=$(trail-log verify --url "$U" --witness "$W1" --witness "$W2" --quorum 2)
result $? "verify --url with a quorum of 2 verifies the served log"
check_eq "and counts the cosignatures" "$(echo "$out" | sed 's/"fetched":[0-9]*,//; s/"root":"[^"]*"/R/')" \
	'{"cosigned":2,"ok":true,R,"size":9}'
check_rc 1 "verify --url with a quorum of 3 fails" trail-log verify --url "$U" --witness "$W1" --witness "$W2" --quorum 3
finish
