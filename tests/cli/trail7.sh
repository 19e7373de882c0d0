#!/bin/bash
# The worked example of trail(7) runs as printed: every "$ " line exits 0.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
unset TRAIL_HOME
sed -n '/^\.Sh EXAMPLES/,/^\.Ed/p' "$TRAIL_TOP/man/trail.7" | sed -n 's/^\$ //p' | sed 's/\\e/\\/g' > example.sh
check "trail(7) has an example" test -s example.sh
while IFS= read -r cmd; do
	sh -c "$cmd" >/dev/null 2>"$T/err"
	rc=$?
	result $rc "trail(7): $cmd"
	[ $rc -eq 0 ] || sed 's/^/#   /' "$T/err"
done < example.sh
finish
