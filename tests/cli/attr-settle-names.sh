#!/bin/bash
# attr-settle: contributors named in the policy and in flags lines by their
# full key, by key file or by short name settle to the same bytes but for
# the policy's and inputs' digests; a short name of two keys and an unknown
# short name are refused, naming what is wrong; plain-named contributors
# keep their old result.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
mkdir keys
for n in alice bob tuner; do trail-key generate --dir keys "$n" >/dev/null; done
A=$(cat keys/alice.pub) B=$(cat keys/bob.pub) U=$(cat keys/tuner.pub)
awk -v a="$A" -v b="$B" 'BEGIN { for (i = 0; i < 40; i++) printf "{\"event\":\"e%d\",\"model\":\"m\",\"adapter\":\"ad\",\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":5},\"contributors\":[{\"contributor\":\"%s\",\"share\":0.7},{\"contributor\":\"%s\",\"share\":0.3}]}\n", i, 10 + i, i % 3 ? a : b, i % 3 ? b : a }' > in.ndjson
policy() { # stakes key, adapter owner, model owner
	cat > "$4" <<J
{"fee_per_1k_prompt": 100000, "fee_per_1k_completion": 50000,
 "split_bps": {"platform": 1000, "model": 2000, "stakers": 1000, "contributors": 6000},
 "stakes": {"$1": 500}, "adapter_owners": {"ad": "$2"}, "model_owner": "$3",
 "model_split": {"base": 5000, "adapter": 5000}, "penalty": {"max_flagged": 0}}
J
}
# the bytes of two results but for their digests
cmp_nodig() { sed 's/"[a-z_]*digest":"[^"]*"//g' "$1" > "$1.n" && sed 's/"[a-z_]*digest":"[^"]*"//g' "$2" > "$2.n" && cmp "$1.n" "$2.n"; }
policy "$A" "$U" "$B" full.json
printf '{"type":"flags","contributor":"%s","flagged":2}\n' "$B" > fl-full.ndjson
attr-settle -n --policy full.json --epoch 1 in.ndjson fl-full.ndjson > full.out
check_eq "full keys: exit 0" "$?" 0
check "bob, flagged, is withheld" grep -qF "\"reasons\":[\"flagged\"],\"role\":\"contributor\",\"to\":\"$B\"" full.out
check "alice is paid as staker, the tuner as adapter owner" sh -c "grep -qF '\"role\":\"stakers\",\"to\":\"$A\"' full.out && grep -qF '\"role\":\"model\",\"to\":\"$U\"' full.out"
policy keys/alice.pub keys/tuner.pub keys/bob.pub files.json
printf '{"type":"flags","contributor":"keys/bob.pub","flagged":2}\n' > fl-file.ndjson
attr-settle -n --policy files.json --epoch 1 in.ndjson fl-file.ndjson > files.out
check "key files: the same payouts, withholdings and slashes as full keys" cmp_nodig full.out files.out
policy alice keys/tuner.pub bob short.json
printf '{"type":"flags","contributor":"bob","flagged":2}\n' > fl-short.ndjson
attr-settle -n --policy short.json --epoch 1 in.ndjson fl-short.ndjson > short.out
check "short names (the tuner by key file): the same as full keys" cmp_nodig full.out short.out
attr-settle -n -f text --policy short.json --epoch 1 in.ndjson fl-short.ndjson > short.txt
check "and as text, bob withheld for flagged" grep -q "bob.*flagged" short.txt
policy alice tuner bob label.json
attr-settle -n --policy label.json --epoch 1 in.ndjson fl-short.ndjson > label.out
check "a role payee's short name that no known key has stays a plain label" grep -qF '"role":"model","to":"tuner","type"' label.out
check "the platform keeps its plain label" grep -q '"role":"platform","to":"platform"' short.out

# two keys named alice
mkdir other && trail-key generate --dir other alice >/dev/null
A2=$(cat other/alice.pub)
printf '{"event":"x","usage":{"prompt_tokens":10,"completion_tokens":0},"contributors":[{"contributor":"%s","share":1}]}\n' "$A2" > in2.ndjson
check_rc 65 "a short name of two keys: 65" sh -c "attr-settle -n --policy short.json --epoch 1 in.ndjson in2.ndjson fl-short.ndjson 2> amb.err"
check "naming both keys" sh -c "grep -q 'alice names two contributors' amb.err && grep -qF '$A' amb.err && grep -qF '$A2' amb.err"
check_rc 0 "the key file tells them apart" attr-settle -n --policy files.json --epoch 1 in.ndjson in2.ndjson fl-file.ndjson
printf '{"type":"flags","contributor":"bobb","flagged":2}\n' > fl-typo.ndjson
check_rc 65 "a flags line for an unknown short name: 65" sh -c "attr-settle -n --policy short.json --epoch 1 in.ndjson fl-typo.ndjson 2> typo.err"
check "saying which name" grep -q "bobb: no contributor key" typo.err
policy carol keys/tuner.pub bob unk.json
check_rc 65 "a stake for an unknown short name: 65" sh -c "attr-settle -n --policy unk.json --epoch 1 in.ndjson 2> unk.err"
check "saying which name" grep -q "carol: no contributor key" unk.err
policy keys/nobody.pub keys/tuner.pub bob nof.json
check_rc 65 "a missing key file: 65" sh -c "attr-settle -n --policy nof.json --epoch 1 in.ndjson 2> nof.err"
check "naming the file" grep -q "nobody.pub" nof.err
check_eq "the same with 1 and 3 reading threads" "$(attr-settle -n -j 3 --policy short.json --epoch 1 in.ndjson fl-short.ndjson | md5sum)" "$(md5sum < short.out)"

# plain names, as before: nothing to resolve
sed "s|$A|alice|g; s|$B|bob|g" in.ndjson > plain.ndjson
attr-settle -n --policy short.json --epoch 1 plain.ndjson fl-short.ndjson > plain.out
check "plain-named contributors are their names" sh -c "grep -q '\"to\":\"alice\"' plain.out && grep -q '\"reasons\":\[\"flagged\"\],\"role\":\"contributor\",\"to\":\"bob\"' plain.out"
finish
