#!/bin/bash
# trail-key: generate, public, sign, verify; the C2SP known-answer vector.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
vk=$(trail-key generate alice)
check "generate writes alice.key and alice.pub" test -f alice.key -a -f alice.pub
check_eq "alice.key is private (0600)" "$(stat -c %a alice.key)" 600
check_eq "generate prints the verifier key" "$vk" "$(cat alice.pub)"
check_eq "public derives the same key" "$(trail-key public alice.key)" "$vk"
check_rc 65 "generate refuses to overwrite" trail-key generate alice
check_rc 64 "a name with + is refused" trail-key generate 'a+b'
trail-key generate bob >/dev/null
printf 'hello\nworld\n' | trail-key sign alice.key > note
check "alice's note verifies with alice.pub" sh -c 'trail-key verify alice.pub < note'
check "and with alice's literal key" sh -c "trail-key verify '$vk' < note"
check_rc 1 "not with bob's key" sh -c 'trail-key verify bob.pub < note'
check_eq "--text prints the signed text" "$(trail-key verify --text alice.pub < note)" "$(printf 'hello\nworld')"
printf 'hello\nworld\n' | trail-key sign alice.key bob.key > note2
check "a note signed twice verifies with either key" sh -c 'trail-key verify bob.pub < note2 && trail-key verify alice.pub < note2'
sed 's/world/w0rld/' note > bad
check_rc 1 "an altered note fails" sh -c 'trail-key verify alice.pub < bad'
check_rc 65 "text without a final newline is refused" sh -c 'printf x | trail-key sign alice.key'
check_rc 66 "a missing key file" trail-key public nope.key
# --- C2SP signed-note conformance (issue 18) and receipts from jq -r (issue 20) --
check_rc 64 "a name with a no-break space is refused" trail-key generate "$(printf 'a\302\240b')"
check_rc 64 "a name with an ideographic space is refused" trail-key generate "$(printf 'a\343\200\200b')"
check_rc 64 "a name that is not UTF-8 is refused" trail-key generate "$(printf 'a\377b')"
check_eq "and no key files were written" "$(ls | grep -c '^a[^l]')" 0
check "a UTF-8 name is fine" trail-key generate "$(printf 'caf\303\251')"
printf 'a\177b\n' | trail-key sign alice.key > del
check "text holding U+007F signs and verifies" sh -c 'trail-key verify alice.pub < del'
{ cat note; echo; } > note-nl
check "a note with one extra trailing newline verifies" sh -c 'trail-key verify alice.pub < note-nl'
{ cat note; echo; echo; } > note-nl2
trail-key verify alice.pub < note-nl2 > /dev/null 2> err
check_eq "two extra newlines: the error names the problem" "$(cat err)" \
	"trail-key: error: malformed note: it ends with blank lines"
# a 3313-byte signature (ML-DSA-65 size) by an unknown key before alice's
long=$(head -c 4420 /dev/zero | tr '\0' A)
{ sed '/^$/q' note; printf '\342\200\224 pq.example/mldsa %s\n' "$long"; sed '1,/^$/d' note; } > note-pq
check "a long unknown-key signature does not stop alice's from verifying" \
	sh -c 'trail-key verify alice.pub < note-pq'
check_rc 1 "and bob's key still does not verify it" sh -c 'trail-key verify bob.pub < note-pq'
vec="$TRAIL_TOP/../shared/testdata/signed-note/vector.json"
if [ -f "$vec" ] && command -v python3 >/dev/null; then
	python3 -c "import json,sys;d=json.load(open(sys.argv[1]));open('pn.key','w').write(d['signer_key']+'\n');open('text','w').write(d['text']);open('want','w').write(d['signed_note']);open('pn.pub','w').write(d['verifier_key']+'\n')" "$vec"
	trail-key sign pn.key < text > got
	check "the signed-note vector reproduces byte for byte" cmp got want
	check "and verifies" sh -c 'trail-key verify pn.pub < want'
fi
finish
