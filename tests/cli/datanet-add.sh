#!/bin/bash
# datanet-add and datanet-cat: create, add (files, text, bundles, URLs),
# validate and approve, snapshots that never change, concurrent adds.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
trail-log init --origin datanet.test/log >/dev/null
for k in owner alice bob; do trail-key generate $k >/dev/null; done
printf '{"rules":{"gopher-word-count":{"min":3},"c4-sentences":{"min":1},"gopher-stop-words":{"min":0}}}\n' > policy.json
check "create a datanet" datanet-add --create atlas --schema text --owner owner.key --policy policy.json --license CC-BY-4.0
check_rc 65 "creating it twice is refused" datanet-add --create atlas --schema text --owner owner.key
check_rc 64 "an unknown schema" datanet-add --create x --schema poems --owner owner.key
echo '{"rules":{"gopher-word-count":{"mn":3}}}' > badpolicy.json
check_rc 65 "a policy with an unknown parameter" datanet-add --create y --schema text --owner owner.key --policy badpolicy.json
check_rc 66 "y was not created" datanet-cat y
printf '{"text":"The island of Varnholm exports amber and salt."}\n{"text":"Its capital is Oskelund, a town of stone harbours."}\n' > a.ndjson
datanet-add atlas --key alice.key a.ndjson > ra
check "alice's receipt names the bundle" grep -q '"bundle":"sha256:' ra
check "and the entry and record count" grep -q '"entry":1,.*"records":2' ra
ba=$(sed 's/.*"bundle":"\([^"]*\)".*/\1/' ra)
printf 'First paragraph about tide clocks and the sea.\nStill the first.\n\nSecond paragraph, on the wind loom of 1698.\n' > b.txt
datanet-add atlas --key bob.key b.txt > rb
check_eq "plain text: one record per paragraph" "$(sed 's/.*"records":\([0-9]*\).*/\1/' rb)" 2
bb=$(sed 's/.*"bundle":"\([^"]*\)".*/\1/' rb)
check_rc 65 "a record with a non-string field is refused" sh -c 'echo "{\"text\":\"x\",\"n\":1}" | datanet-add atlas --key bob.key'
check_rc 66 "adding to a missing datanet" sh -c 'datanet-add nowhere --key bob.key a.ndjson'
s0=$(trail-log verify | sed 's/.*"size":\([0-9]*\).*/\1/')
check_rc 65 "a malformed second input writes nothing (all or nothing)" sh -c 'printf "{bad\n" > bad.ndjson; datanet-add atlas --key bob.key a.ndjson bad.ndjson'
check_eq "the ledger did not grow" "$(trail-log verify | sed 's/.*"size":\([0-9]*\).*/\1/')" "$s0"

# bundles built offline are byte-reproducible and can be added as they are
# (a contribution takes the datanet's license unless --license says otherwise)
datanet-add --bundle-only -o x1.tar atlas --key alice.key --license CC-BY-4.0 a.ndjson >/dev/null
(umask 077; TZ=Asia/Tokyo datanet-add --bundle-only -o x2.tar atlas --key alice.key --license CC-BY-4.0 a.ndjson >/dev/null)
check "the same records give the same bundle bytes" cmp x1.tar x2.tar
check_eq "and the digest the store recorded" "sha256:$(sha256sum < x1.tar | cut -d' ' -f1)" "$ba"
check_rc 1 "someone else cannot add alice's bundle" datanet-add atlas --key bob.key x1.tar
datanet-add --bundle-only -o x3.tar.zst --zstd atlas --key alice.key -l CC0-1.0 - < a.ndjson > r3
check_eq "a zstd bundle from standard input" "$(grep -c '"records":2' r3) $(head -c4 x3.tar.zst | od -An -tx1 | tr -d ' ')" "1 28b52ffd"
datanet-add atlas --key alice.key x3.tar.zst > r3s
check_eq "an existing bundle is added as it is" "$(sed 's/.*"bundle":"\([^"]*\)".*/\1/' r3s)" \
	"sha256:$(sha256sum < x3.tar.zst | cut -d' ' -f1)"
check_rc 64 "a bundle with other inputs" datanet-add atlas --key alice.key x1.tar a.ndjson
printf 'One whole file,\n\nwith two paragraphs of text in it.\n' > whole.txt
datanet-add atlas --key bob.key --per-file whole.txt > rw
check "--per-file: one record for the whole file" grep -q '"records":1' rw
printf '{"proof":%s}\n' "$(sed 's/.*"proof":\("[^"]*"\).*/\1/' ra)" |
	/usr/bin/python3 -c 'import json,sys; sys.stdout.write(json.load(sys.stdin)["proof"])' > ra.tlog-proof
check "the receipt's proof verifies offline" trail-log verify-proof --key "$TRAIL_HOME/keys/operator.pub" ra.tlog-proof
sed '3s/^index .*/index 0/' ra.tlog-proof > wrong.tlog-proof
check_rc 1 "and not for another index" trail-log verify-proof --key "$TRAIL_HOME/keys/operator.pub" wrong.tlog-proof

# hostile archives are refused with nothing written
s0=$(trail-log verify | sed 's/.*"size":\([0-9]*\).*/\1/')
o0=$(find "$TRAIL_HOME/objects" -type f | wc -l)
bad=0
for f in "$TRAIL_TOP"/tests/data/bundles/*.tar "$TRAIL_TOP"/tests/data/bundles/*.zst; do
	datanet-add atlas --key alice.key "$f" >/dev/null 2>err
	rc=$?
	{ [ $rc = 65 ] || [ $rc = 64 ]; } && grep -q "$(basename "$f")" err || { bad=$((bad + 1)); echo "# $f: exit $rc"; }
done
check_eq "every hostile archive is refused, naming the file" "$bad" 0
check_eq "the ledger did not grow" "$(trail-log verify | sed 's/.*"size":\([0-9]*\).*/\1/')" "$s0"
check_eq "no object was stored" "$(find "$TRAIL_HOME/objects" -type f | wc -l)" "$o0"

# approval by the owner, then snapshots
check_eq "nothing approved yet" "$(datanet-cat atlas | wc -l)" 0
check_rc 1 "only the owner approves" datanet-validate --datanet atlas --key alice.key --approve "$ba"
check "the owner approves alice's bundle" datanet-validate --datanet atlas --key owner.key --record --approve "$ba"
size1=$(trail-log verify | sed 's/.*"size":\([0-9]*\).*/\1/')
datanet-cat "atlas@$size1" > snap1
check_eq "the snapshot holds alice's records" "$(wc -l < snap1)" 2
check "each record carries record, contributor, bundle, entry" grep -q '"bundle":"sha256:.*"contributor":"alice+.*"entry":1,"record":"sha256:' snap1
check "and the owner approves bob's" datanet-validate --datanet atlas --key owner.key --approve "$bb"
check_eq "now four records" "$(datanet-cat atlas | wc -l)" 4
datanet-cat "atlas@$size1" > snap1b
check "atlas@SIZE gives the same bytes whatever was added later" cmp snap1 snap1b
check "a rejection takes effect" datanet-validate --datanet atlas --key owner.key --reject "$bb"
check_eq "back to two records" "$(datanet-cat atlas | wc -l)" 2

# approving the accepted records of a bundle, naming the rejected (issue 20)
{
	echo '{"text":"The harbour of Oskelund freezes in the long winter."}'
	echo '{"text":"Too short."}'
	echo '{"text":"The amber road ran north along the coast of Varnholm."}'
	echo '{"text":"The harbour of Oskelund freezes in the long winter."}'
} > mixed.ndjson
datanet-add atlas --key bob.key mixed.ndjson > rm
bm=$(sed 's/.*"bundle":"\([^"]*\)".*/\1/' rm)
s0=$(trail-log verify | sed 's/.*"size":\([0-9]*\).*/\1/')
datanet-validate --datanet atlas --key owner.key --approve "$bm" > /dev/null 2> err
check_eq "--approve alone refuses a bundle with rejected records, naming the way out" "$(cat err)" \
	"datanet-validate: error: not approved: 2 record(s) rejected (--accepted-only approves the others)"
check_eq "and appends nothing" "$(trail-log verify | sed 's/.*"size":\([0-9]*\).*/\1/')" "$s0"
check_rc 64 "--accepted-only needs --approve" datanet-validate --datanet atlas --key owner.key --accepted-only "$bm"
check_rc 0 "--approve --accepted-only approves the rest" \
	datanet-validate --datanet atlas --key owner.key --approve --accepted-only "$bm"
check "the approval names the rejected records by position and id" sh -c \
	"trail-log show \$(( $s0 )) | grep -q '\"decision\":\"approve\",\"rejected\":\\[{\"n\":2,\"record\":\"sha256:[0-9a-f]*\"},{\"n\":4,'"
check_eq "the snapshot holds the two accepted records and not the rest" \
	"$(datanet-cat atlas | grep -c "\"bundle\":\"$bm\"") $(datanet-cat atlas | grep -c 'Too short')" "2 0"
check_eq "a copy rejected as a duplicate leaves its first, accepted copy in" \
	"$(datanet-cat atlas | grep -c 'freezes in the long winter')" 1
check "a later full rejection takes the rest out" datanet-validate --datanet atlas --key owner.key --reject "$bm"
check_eq "back to two records again" "$(datanet-cat atlas | wc -l)" 2

# receipts taken out with jq -r end in one more newline; they still verify
if command -v jq >/dev/null; then
	jq -r .proof ra > ra-jq.tlog-proof
	check "a receipt extracted with jq -r verifies" trail-log verify-proof ra-jq.tlog-proof
	check "and so does its checkpoint" sh -c "jq -r .checkpoint ra | trail-key verify '$TRAIL_HOME/keys/operator.pub'"
else
	skip "receipts extracted with jq -r" "no jq"
fi
check_rc 64 "a malformed NAME@SIZE" datanet-cat atlas@x
check_rc 66 "a size beyond the ledger" datanet-cat atlas@100000

# URL sources from a local server on 127.0.0.1
mkdir www && cp a.ndjson www/a.ndjson
/usr/bin/python3 "$TRAIL_TOP/tests/data/bundles/httpd.py" www port >/dev/null 2>&1 &
srv=$!
trap 'kill $srv 2>/dev/null; rm -rf "$T"' EXIT
for i in $(seq 50); do [ -s port ] && break; sleep 0.1; done
url="http://127.0.0.1:$(cat port)"
pin=$(sha256sum < a.ndjson | cut -d' ' -f1)
datanet-add atlas --key bob.key --sha256 "$pin" "$url/a.ndjson" > ru
check "a URL with the right pin is added" grep -q '"records":2' ru
s0=$(trail-log verify | sed 's/.*"size":\([0-9]*\).*/\1/')
check_rc 1 "a pin mismatch is refused" datanet-add atlas --key bob.key --sha256 "${pin%?}0" "$url/a.ndjson"
check_rc 65 "over the size cap" datanet-add atlas --key bob.key --max-bytes 100000 "$url/big"
check_rc 75 "a timeout is a temporary failure" datanet-add atlas --key bob.key --timeout 1 "$url/slow"
check_rc 65 "a redirect loop stops" datanet-add atlas --key bob.key "$url/loop"
check_rc 65 "four redirects are one too many" datanet-add atlas --key bob.key "$url/hop4"
check_rc 65 "--max-bytes caps files too" datanet-add atlas --key bob.key --max-bytes 10 a.ndjson
check_rc 66 "a missing page" datanet-add atlas --key bob.key "$url/nope.ndjson"
check_rc 66 "a refused connection" datanet-add atlas --key bob.key "http://127.0.0.1:1/a.ndjson"
check_eq "none of these wrote anything" "$(trail-log verify | sed 's/.*"size":\([0-9]*\).*/\1/')" "$s0"
datanet-add atlas --key bob.key --sha256 "$pin" "$url/hop3" > rh
check "three redirects are followed" grep -q '"records":2' rh
check "the contribution names the URL and its digest" sh -c "trail-log show | tail -1 | grep -q '\"source\":{\"sha256\":\"sha256:$pin\",\"url\":\"$url/hop3\"}'"
kill $srv 2>/dev/null; wait $srv 2>/dev/null

# two adds at the same time both land
printf '{"text":"Concurrent one, about the river Amsel."}\n' > c1.ndjson
printf '{"text":"Concurrent two, about the river Birke."}\n' > c2.ndjson
datanet-add atlas --key alice.key c1.ndjson > rc1 & p1=$!
datanet-add atlas --key bob.key c2.ndjson > rc2 & p2=$!
wait $p1; r1=$?; wait $p2; r2=$?
check_eq "both concurrent adds succeed" "$r1$r2" 00
check "their entries differ" sh -c '! cmp -s rc1 rc2 && test "$(sed "s/.*\"entry\":\([0-9]*\).*/\1/" rc1)" != "$(sed "s/.*\"entry\":\([0-9]*\).*/\1/" rc2)"'
check "the ledger verifies" trail-log verify

# killed at any moment, an add leaves the store whole: it landed or it did not
/usr/bin/python3 -c '
for i in range(20000):
    print("{\"text\":\"Line %d of a long contribution about the tides of Varnholm.\"}" % i)' > long.ndjson
bad=0
for d in 0.02 0.05 0.1 0.2 0.4; do
	s0=$(trail-log verify | sed 's/.*"size":\([0-9]*\).*/\1/')
	datanet-add atlas --key alice.key long.ndjson > rk 2>/dev/null & pk=$!
	sleep $d; kill -9 $pk 2>/dev/null; wait $pk 2>/dev/null
	s1=$(trail-log verify | sed 's/.*"size":\([0-9]*\).*/\1/') || bad=$((bad + 1))
	[ "$s1" = "$s0" ] || [ "$s1" = $((s0 + 1)) ] || bad=$((bad + 1))
	# the entry counts as landed only if it is whole and its bundle is there
	[ "$s1" = "$s0" ] || trail-log get "$s0" | grep -q '"type":"contribution"' || bad=$((bad + 1))
done
check_eq "five adds killed with SIGKILL leave a ledger that verifies, one entry or none each" "$bad" 0
check "and the next add lands" datanet-add atlas --key bob.key c2.ndjson
finish
