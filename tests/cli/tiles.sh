#!/bin/bash
# trail-log tiles and --url: the ledger written as C2SP tlog-tiles, served
# by a static HTTP server on 127.0.0.1 and verified from the URL alone;
# every single-byte change of a served file detected; hostile servers
# refused with the documented exit codes.
. "$TRAIL_TOP/tests/tap.sh"
PY=/usr/bin/python3
HOSTILE="$TRAIL_BUILD/tests/hostile-http"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; rm -rf "$T"' EXIT

trail-log init --origin tiles.example/log >/dev/null
for i in $(seq 1 300); do echo "{\"type\":\"t\",\"n\":$i}"; done | trail-log append --batch >/dev/null
trail-log checkpoint > "$T/cp300"
trail-log tiles "$T/www" > "$T/w1"
check_eq "tiles writes 2 bundles, 3 hash tiles and the checkpoint" \
	"$(sed 's/"dir":"[^"]*"/D/' "$T/w1")" '{D,"kept":0,"size":300,"written":6}'
check_eq "the C2SP layout" "$(cd "$T/www" && find . -type f | sort | tr '\n' ' ')" \
	"./checkpoint ./tile/0/000 ./tile/0/001.p/44 ./tile/1/000.p/1 ./tile/entries/000 ./tile/entries/001.p/44 "
check_eq "a full tile is 256 hashes" "$(wc -c < "$T/www/tile/0/000")" 8192
check_eq "the level-1 hash is the root of the first 256 leaves" \
	"$($PY -c 'import hashlib,sys
h=open(sys.argv[1],"rb").read()
l=[h[i:i+32] for i in range(0,len(h),32)]
while len(l)>1: l=[hashlib.sha256(b"\x01"+l[i]+l[i+1]).digest() for i in range(0,len(l),2)]
print(l[0]==open(sys.argv[2],"rb").read())' "$T/www/tile/0/000" "$T/www/tile/1/000.p/1")" True
check_eq "entry bundles: 2-byte length, the entry; leaf = SHA-256(0 || entry)" \
	"$($PY -c 'import hashlib,sys
b=open(sys.argv[1],"rb").read(); h=open(sys.argv[2],"rb").read(); o=0; ok=True
for i in range(256):
  n=int.from_bytes(b[o:o+2],"big"); e=b[o+2:o+2+n]; o+=2+n
  ok&=hashlib.sha256(b"\x00"+e).digest()==h[32*i:32*i+32]
print(ok and o==len(b))' "$T/www/tile/entries/000" "$T/www/tile/0/000")" True
cmp -s "$T/www/checkpoint" "$T/cp300"
result $? "the served checkpoint is the log's"
touch -d 2000-01-01 "$T/www/tile/0/000"
echo '{"type":"t","n":301}' | trail-log append >/dev/null
trail-log tiles "$T/www" > "$T/w2"
check_eq "a second run keeps the full tiles and replaces the partial ones" \
	"$(sed 's/"dir":"[^"]*"/D/' "$T/w2")" '{D,"kept":2,"size":301,"written":4}'
check_eq "full tiles are never rewritten" "$(date -r "$T/www/tile/0/000" +%Y)" 2000

# --- a static server (Python's http.server) on 127.0.0.1 ------------------------
port_of() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P=$(port_of)
(cd "$T/www" && exec $PY -m http.server --bind 127.0.0.1 "$P" >/dev/null 2>&1) &
pids+=($!)
U="http://127.0.0.1:$P"
for _ in $(seq 50); do curl -sf "$U/checkpoint" >/dev/null 2>&1 && break; sleep 0.1; done
VK="$TRAIL_HOME/keys/operator.pub"
out=$(trail-log --home "$T/none" verify --url "$U" --key "$VK" --origin tiles.example/log)
result $? "verify --url checks the whole log with only the URL and the key"
check_eq "and says its size and root" "$(echo "$out" | sed 's/"fetched":[0-9]*,//; s/"root":"[^"]*"/R/')" \
	'{"ok":true,R,"size":301}'
check_eq "the root is the log's" "$(echo "$out" | sed 's/.*"root":"\([^"]*\)".*/\1/')" \
	"$(sed -n 3p "$T/www/checkpoint")"
check_rc 1 "verify --url under another origin is refused" \
	trail-log --home "$T/none" verify --url "$U" --key "$VK" --origin other.example/log
trail-key generate -C "$T" other >/dev/null 2>&1
check_rc 1 "verify --url under another key is refused" \
	trail-log --home "$T/none" verify --url "$U" --key "$T/other.pub"
trail-log prove 7 > "$T/r7"
check "verify-proof --url: a receipt's entry is in the served log" \
	trail-log --home "$T/none" verify-proof --url "$U" --key "$VK" "$T/r7"
check "verify-proof --url: an earlier checkpoint is consistent with the served one" \
	trail-log --home "$T/none" verify-proof --url "$U" --key "$VK" "$T/cp300"
# a receipt from a fork: a log with the same key and origin but other entries
trail-log --home "$T/fork" init --origin tiles.example/log --key "$TRAIL_HOME/keys/operator.key" >/dev/null
for i in $(seq 1 20); do echo "{\"type\":\"t\",\"n\":$i,\"fork\":1}"; done | trail-log --home "$T/fork" append --batch >/dev/null
trail-log --home "$T/fork" prove 3 > "$T/rfork"
trail-log --home "$T/fork" checkpoint > "$T/cpfork"
check "the forked receipt verifies on its own" trail-log --home "$T/none" verify-proof --key "$VK" "$T/rfork"
check_rc 1 "but not against the served log" \
	trail-log --home "$T/none" verify-proof --url "$U" --key "$VK" "$T/rfork"
check_rc 1 "nor does the fork's checkpoint" \
	trail-log --home "$T/none" verify-proof --url "$U" --key "$VK" "$T/cpfork"
check_rc 64 "--url is only for verify and verify-proof" trail-log show --url "$U"

# --- every single-byte change of a served file is detected -----------------------
# Each byte of each file XORed with 0x01 in turn, on the served copy, and verify
# --url run against it; restored after. Every byte of the checkpoint and the
# level-1 tile; every 37th byte (a prime: it falls at every offset within a
# 32-byte hash) of the level-0 tiles and the bundles, to keep this quick
# (about 30 ms a run); TRAIL_FULL=1: every byte of every file (about 17,000).
stride=37
[ "${TRAIL_FULL:-0}" = 1 ] && stride=1
res=$($PY - "$T/www" "$U" "$VK" "$stride" <<'EOF'
import os, subprocess, sys
www, url, vk, stride = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
files = [("checkpoint", 1), ("tile/1/000.p/1", 1), ("tile/0/001.p/45", stride),
         ("tile/entries/001.p/45", stride), ("tile/0/000", stride), ("tile/entries/000", stride)]
tried = missed = 0
for rel, step in files:
    p = os.path.join(www, rel)
    orig = open(p, "rb").read()
    for i in range(0, len(orig), step):
        b = bytearray(orig); b[i] ^= 1
        open(p, "wb").write(b)
        r = subprocess.run(["trail-log", "--home", "/nonexistent", "verify", "--url", url,
                            "--key", vk], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tried += 1
        if r.returncode != 1:
            missed += 1
            print("# undetected: %s byte %d (exit %d)" % (rel, i, r.returncode), file=sys.stderr)
    open(p, "wb").write(orig)
print(tried, missed)
EOF
)
tried=${res% *}
check_eq "all $tried single-byte changes detected (exit 1)" "${res#* }" 0
check "and the restored copy verifies again" trail-log --home "$T/none" verify --url "$U" --key "$VK"

# --- hostile servers ----------------------------------------------------------------
"$HOSTILE" "$T/www" > "$T/hport" &
pids+=($!)
for _ in $(seq 50); do [ -s "$T/hport" ] && break; sleep 0.1; done
H="http://127.0.0.1:$(cat "$T/hport")"
check "the test server serves the log unchanged under /ok" \
	trail-log --home "$T/none" verify --url "$H/ok" --key "$VK"
hostile() { # want desc path
	trail-log --home "$T/none" verify --url "$H/$3" --key "$VK" --timeout 2 > /dev/null 2> "$T/herr"
	got=$?
	[ "$got" -eq "$1" ] && grep -q '^trail-log: error: ' "$T/herr"
	result $? "$2"
	[ "$got" -eq "$1" ] || echo "#   exit $got, wanted $1: $(cat "$T/herr")"
}
hostile 65 "an oversized answer is cut off at its cap (exit 65)" big
hostile 69 "a connection dropped halfway is refused (exit 69)" trunc
hostile 69 "a redirect loop is refused (exit 69)" loop
hostile 69 "an HTTP error is refused (exit 69)" status
hostile 1 "a tile one byte short is refused (exit 1)" short
start=$(date +%s)
hostile 69 "a server sending a byte a second is abandoned (exit 69)" slow
check "within the timeout" test $(($(date +%s) - start)) -le 4
check_rc 69 "nothing listening (exit 69)" trail-log --home "$T/none" verify --url "http://127.0.0.1:1" --key "$VK"
check_rc 69 "only http and https" trail-log --home "$T/none" verify --url "file://$T/www" --key "$VK"
finish
