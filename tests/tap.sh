# Shell TAP helpers for tests/cli/*.sh (source it).
#   check DESC CMD...      ok if CMD exits 0
#   check_rc RC DESC CMD...ok if CMD exits with RC
#   check_eq DESC GOT WANT
#   skip DESC WHY          a check not run here, and why
#   finish                 prints the plan; exits 1 if anything failed
n=0 failed=0
T=$(mktemp -d "${TMPDIR:-/tmp}/trail-cli.XXXXXX") || exit 70
trap 'rm -rf "$T"' EXIT
export TRAIL_HOME="$T/home"
result() { # status desc
	n=$((n + 1))
	if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed + 1)); fi
}
check() { d=$1; shift; "$@" >/dev/null 2>&1; result $? "$d"; }
check_rc() {
	want=$1 d=$2; shift 2
	"$@" >/dev/null 2>&1; got=$?
	[ "$got" -eq "$want" ]; r=$?
	result $r "$d"
	[ $r -eq 0 ] || echo "#   exit status $got, wanted $want"
}
check_eq() {
	[ "$2" = "$3" ]; r=$?
	result $r "$1"
	[ $r -eq 0 ] || printf '#   got:  %s\n#   want: %s\n' "$2" "$3"
}
skip() { n=$((n + 1)); echo "ok $n - $1 # SKIP $2"; }
finish() { echo "1..$n"; [ "$failed" -eq 0 ]; }
