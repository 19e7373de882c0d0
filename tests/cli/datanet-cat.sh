#!/bin/bash
# datanet-cat: golden snapshots from fixed keys and inputs (tests/data/bundles/
# golden/NAME.out; regenerate with TRAIL_REGEN=1 and review the diff). The
# bundles and every snapshot are the same bytes on any machine: the keys are
# committed and nothing else (clock, umask, operator key) reaches them.
. "$TRAIL_TOP/tests/tap.sh"
G="$TRAIL_TOP/tests/data/bundles/golden"
cd "$T" || exit 70

golden() { # NAME FILE: FILE against $G/NAME.out
	[ "${TRAIL_REGEN:-0}" = 1 ] && cp "$2" "$G/$1.out"
	if cmp -s "$2" "$G/$1.out"; then
		result 0 "golden $1"
	else
		result 1 "golden $1"
		diff "$G/$1.out" "$2" | head -5 | sed 's/^/#   /'
	fi
}
size() { trail-log verify | sed 's/.*"size":\([0-9]*\).*/\1/'; }
field() { sed "s/.*\"$1\":\"\{0,1\}\([^\",]*\).*/\1/" "$2"; }

check_rc 66 "no store" datanet-cat atlas
trail-log init --origin datanet-cat.test/log >/dev/null
for k in owner alice bob; do cp "$TRAIL_TOP/tests/data/bundles/keys/$k.key" .; chmod 600 $k.key; done
check_rc 64 "no NAME" datanet-cat
check_rc 66 "no such datanet" datanet-cat atlas

datanet-add --create atlas --schema text --owner owner.key --policy "$G/policy.json" --license CC-BY-4.0 > created
golden create created
datanet-add atlas --key alice.key "$G/alice.ndjson" > ra
datanet-add atlas --key bob.key "$G/bob.txt" > rb
for r in ra rb; do sed 's/,"checkpoint":"[^"]*"//; s/,"proof":"[^"]*"//' $r; done > receipts
golden receipts receipts
ba=$(field bundle ra) bb=$(field bundle rb)
check_eq "atlas@1: the datanet alone, no records" "$(datanet-cat atlas@1 | wc -c)" 0
datanet-cat atlas > empty
check_eq "nothing approved: an empty snapshot" "$(wc -c < empty)" 0

datanet-validate --datanet atlas --key owner.key --approve "$ba" >/dev/null
s1=$(size)
datanet-cat "atlas@$s1" > snap1
golden atlas-approved-alice snap1
datanet-validate --datanet atlas --key owner.key --approve "$bb" >/dev/null
s2=$(size)
datanet-cat "atlas@$s2" > snap2
golden atlas-approved-both snap2
datanet-validate --datanet atlas --key owner.key --reject "$ba" >/dev/null
datanet-cat atlas > snap3
golden atlas-alice-rejected snap3

# later entries change no earlier snapshot
datanet-add --create qa --schema instruct --owner owner.key --policy "$G/policy.json" >/dev/null
datanet-add qa --key alice.key "$G/qa.ndjson" > rq
datanet-validate --datanet qa --key owner.key --approve "$(field bundle rq)" >/dev/null
printf '{"text":"A late addition about the lighthouse of Skarvik, built in 1802 of grey granite."}\n' |
	datanet-add atlas --key bob.key > rl
datanet-validate --datanet atlas --key owner.key --approve "$(field bundle rl)" >/dev/null
datanet-cat "atlas@$s1" > again1
datanet-cat "atlas@$s2" > again2
check "atlas@$s1 gives the same bytes after later entries" cmp snap1 again1
check "atlas@$s2 too" cmp snap2 again2
datanet-cat qa > qa.out
golden qa qa.out
check_eq "the latest atlas adds the late record" "$(datanet-cat atlas | wc -l)" $(($(wc -l < snap3) + 1))
datanet-cat "atlas@$s1" "atlas@$s2" > both
check "several snapshots in one call, in order" sh -c 'cat snap1 snap2 | cmp - both'
check "records keep their extra fields" grep -q '"lang":"en","record":"sha256:.*"source_note":"field notes, 1921"' snap1
check_eq "the record id is the digest of the record's own fields" \
	"$(head -1 snap1 | field record /dev/stdin)" \
	"$(head -1 "$G/alice.ndjson" | /usr/bin/python3 -c 'import hashlib,json,sys; r=json.loads(sys.stdin.read()); print("sha256:"+hashlib.sha256(json.dumps(r,sort_keys=True,separators=(",",":"),ensure_ascii=False).encode()).hexdigest())')"

check_rc 64 "a malformed NAME@SIZE" datanet-cat atlas@x
check_rc 64 "size 0 is no tree" datanet-cat atlas@0
check_rc 66 "a size beyond the ledger" datanet-cat atlas@100000
check_rc 66 "qa did not exist at atlas's first size" datanet-cat "qa@$s1"
check_rc 74 "a failed write to stdout" sh -c "datanet-cat atlas@$s2 > /dev/full"

# a damaged bundle object is refused, not printed
obj="$TRAIL_HOME/objects/sha256/$(echo "${bb#sha256:}" | cut -c1-2)/$(echo "${bb#sha256:}" | cut -c3-)"
chmod u+w "$obj"
printf 'X' | dd of="$obj" bs=1 seek=600 conv=notrunc 2>/dev/null
check_rc 1 "a damaged bundle in the store stops the snapshot" datanet-cat "atlas@$s2"
datanet-cat "atlas@$s2" 2> err >/dev/null
check "the error names the bundle" grep -q "$bb" err
finish
