#!/bin/bash
# datanet-validate shards: partials of item ranges (2, 3 and 7, uneven) of
# several inputs merged into the verdicts, summary, stderr, penalty flags,
# GitHub annotations and exit status of one pass, byte for byte; near
# duplicates and exact copies whose two records fall in different shards
# found, the earlier one kept; refusals of a missing, duplicated, foreign
# or cut partial.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
fails() { ! "$@"; }
trail-key generate alice >/dev/null 2>&1 || exit 70
# 40 texts of 40+ words; text i's near copy (one word changed) and exact
# copy come later, some in the other file
text() { awk -v i="$1" -v w="$2" 'BEGIN { x = (i + 1) * 40503; s = "Record " i " of the survey:"
	for (k = 0; k < 45; k++) { x = (x * 69069 + 1) % 4294967296; s = s " " (k == 20 && w != "" ? w : "word" int(x / 65536) % 5000) (k % 9 == 8 ? "." : "") }
	print s }'; }
{
	for i in $(seq 0 29); do
		if [ "$i" = 17 ]; then printf '{"text":"%s","contributor":"bob"}\n' "$(text 2 changed)"; continue; fi
		if [ "$i" = 26 ]; then printf '{"text":"%s"}\n' "$(text 5)"; continue; fi
		printf '{"text":"%s"}\n' "$(text "$i")"
		[ "$i" = 8 ] && echo '{"text": bad json'
		[ "$i" = 11 ] && printf '{"text":"caf\xe9 latin-1"}\n'
		[ "$i" = 13 ] && echo '{"text":"mail me at someone@example.org or call +1 415 555 0100 about it"}'
		[ "$i" = 14 ] && echo
	done
} > a.ndjson
{
	printf '{"text":"%s"}\n' "$(text 9 other)"
	printf '{"text":"%s"}\n' "$(text 3)"
	printf '{"text":"%s","contributor":"carol"}\n' "$(text 4)"
	for i in $(seq 40 47); do printf '{"text":"%s"}\n' "$(text "$i")"; done
	printf '{"text":"%s"}\n' "$(text 27 again)"
} > b.ndjson
printf 'A short paragraph.\n\n%s\n\n%s\n' "$(text 60)" "$(text 41 last)" > c.txt
in="a.ndjson b.ndjson c.txt"
datanet-validate --no-progress --flags one.flags --contributor alice.pub $in > one.out 2> one.err
echo $? > one.rc
datanet-validate --no-progress --format github $in > one.gh 2>/dev/null
check_eq "the one pass finds near duplicates" "$(grep -c '"rule":"near-duplicate"' one.out)" 5
check_eq "and exact copies" "$(grep -c '"rule":"duplicate"' one.out)" 2
check_eq "and malformed lines (exit 65)" "$(cat one.rc)" 65
total=$(sed -n '$p' one.out | sed 's/.*"records":\([0-9]*\).*"malformed":\([0-9]*\).*/\1 \2/' | awk '{ print $1 + $2 }')
check_eq "48 items in all" "$total" 48
merged() { # PARTIAL...: the merge's stdout, stderr and exit status against the one pass
	datanet-validate --no-progress --merge --flags m.flags --contributor alice.pub "$@" > m.out 2> m.err
	echo $? > m.rc
	cmp -s m.out one.out && cmp -s m.err one.err && cmp -s m.rc one.rc && cmp -s m.flags one.flags
}
for split in "0:24 24:" "0:9 9:31 31:" "0:1 1:5 5:6 6:19 19:33 33:42 42:"; do
	ns=$(echo $split | wc -w); rm -f part.*; k=0
	for r in $split; do datanet-validate --no-progress --partial --records $r $in > part.$k; k=$((k + 1)); done
	check "$ns partials merge into the one pass: verdicts, summary, stderr, flags, exit status" merged part.*
	check "$ns partials: the same GitHub annotations" \
		sh -c "datanet-validate --no-progress --merge --format github part.* 2>/dev/null | cmp - one.gh"
done
# across shards: text 2 (item 2, a.ndjson:3) and its near copy (item 20, a.ndjson:22); text 9
# (a.ndjson:11) and its near copy (b.ndjson:1); text 3 and its copy (b.ndjson:2)
of() { grep "\"n\":$2,\"file\":\"$1\"" one.out | cut -c12-82; }
check "a near copy in another shard names the earlier record" sh -c "grep '\"n\":22,\"file\":\"a.ndjson\"' one.out | grep -q '\"near-duplicate\",\"of\":\"$(of a.ndjson 3)\"'"
check "so does a near copy in another file" sh -c "grep '\"n\":1,\"file\":\"b.ndjson\"' one.out | grep -q '\"near-duplicate\",\"of\":\"$(of a.ndjson 11)\"'"
check "an exact copy in another shard is the duplicate" sh -c "grep '\"n\":2,\"file\":\"b.ndjson\"' one.out | grep -q '\"duplicate\",\"of\":\"$(of a.ndjson 4)\"'"
check "--shard I/N covers the items" sh -c 'for i in 0 1 2 3; do datanet-validate --no-progress --partial --shard $i/4 '"$in"' > sp.$i || exit 1; done; datanet-validate --no-progress --merge --flags m.flags --contributor alice.pub sp.* 2>/dev/null | cmp - one.out'
# approved records and redaction go where one pass has them
datanet-validate --no-progress --approved b.ndjson a.ndjson c.txt > ap.out 2>/dev/null
for i in 0 1 2; do datanet-validate --no-progress --partial --shard $i/3 a.ndjson c.txt > ap.$i; done
check "--approved at the merge: the one pass's verdicts" \
	sh -c 'datanet-validate --no-progress --merge --approved b.ndjson ap.0 ap.1 ap.2 2>/dev/null | cmp - ap.out'
datanet-validate --no-progress --redact $in > red.out 2>/dev/null
for i in 0 1 2; do datanet-validate --no-progress --redact --partial --shard $i/3 $in > rp.$i; done
check "--redact: the one pass's verdicts" sh -c 'datanet-validate --no-progress --redact --merge rp.* 2>/dev/null | cmp - red.out'
# refusals
check_rc 65 "a missing partial is refused" datanet-validate --merge part.0 part.1 part.3 part.4 part.5 part.6
check_rc 65 "a duplicated partial is refused" datanet-validate --merge part.0 part.0 part.1 part.2 part.3 part.4 part.5 part.6
check_rc 65 "a partial of another policy is refused" datanet-validate --merge --preset code part.*
check_rc 65 "a partial of a redacting policy is refused without --redact" datanet-validate --merge rp.*
datanet-validate --no-progress --partial --records 5:6 a.ndjson b.ndjson > other.2
check_rc 65 "a partial of other inputs is refused" datanet-validate --merge part.0 part.1 other.2 part.3 part.4 part.5 part.6
datanet-validate --no-progress --partial --license MIT --records 1:5 $in > lic.1
check_rc 65 "a partial made with another --license is refused" datanet-validate --merge part.0 lic.1 part.2 part.3 part.4 part.5 part.6
head -n 4 part.3 > cut.3
check_rc 65 "a partial cut short is refused" datanet-validate --merge part.0 part.1 part.2 cut.3 part.4 part.5 part.6
datanet-validate --merge part.0 part.2 part.3 part.4 part.5 part.6 2> gap.err > /dev/null
check_eq "the gap is named" "$(cat gap.err)" "datanet-validate: error: records 1:5 are in no partial"
check_rc 64 "--partial reads files, not standard input" sh -c 'datanet-validate --partial --shard 0/2 - < a.ndjson'
check_rc 64 "--partial needs a range" datanet-validate --partial a.ndjson
check_rc 64 "--output is not for --merge" datanet-validate --merge --output x part.*
check_rc 64 "--license goes to the shards" datanet-validate --merge --license MIT part.*
check_rc 64 "--approved goes to the merge" datanet-validate --partial --shard 0/2 --approved b.ndjson a.ndjson
finish
