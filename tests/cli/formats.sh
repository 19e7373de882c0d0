#!/bin/bash
# The canonical JSON vectors printed in trail-formats(5) hold: each input,
# stored as the value of a ledger entry, comes back in the documented form.
. "$TRAIL_TOP/tests/tap.sh"
trail-log init >/dev/null
man="$TRAIL_TOP/man/trail-formats.5"
# the vector block: lines of "INPUT<spaces>OUTPUT" between the first .Bd/.Ed after "Test vectors:"
sed -n '/^Test vectors:/,/^\.Ed/p' "$man" | sed '1,2d;$d' > "$T/vectors"
check "the man page has vectors" test -s "$T/vectors"
while IFS= read -r line; do
	in=$(printf '%s\n' "$line" | sed 's/   *[^ ].*$//')
	want=$(printf '%s\n' "$line" | sed 's/^.*[^ ]   *//')
	# man escapes: \e is a backslash, \(Eu the euro sign, <DEL> the 0x7f byte
	in=$(printf '%s' "$in" | sed 's/\\e/\\/g')
	want=$(printf '%s' "$want" | sed 's/\\e/\\/g; s/\\(Eu/€/g' | sed "s/<DEL>/$(printf '\177')/g")
	printf '{"type":"v","v":%s}\n' "$in" | trail-log append >/dev/null 2>&1
	got=$(trail-log get $(( $(trail-log verify | sed 's/.*"size":\([0-9]*\).*/\1/') - 1 )) | sed 's/^{"type":"v","v":\(.*\)}$/\1/')
	check_eq "canonical form of $in" "$got" "$want"
done < "$T/vectors"
finish
