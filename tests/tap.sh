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
# hf_ref FILE: the npm packages of tests/reference/hf/package-lock.json,
# installed once into the build directory; sets nm to their node_modules.
# FILE (under nm) tells an installed tree. 1 with the reason in why when
# node, npm or the registry is missing.
hf_ref() {
	lock=$TRAIL_TOP/tests/reference/hf/package-lock.json
	nm=$TRAIL_BUILD/hf-tokenizer-ref-$(sha256sum "$lock" | cut -c1-16)/node_modules
	command -v node >/dev/null && command -v npm >/dev/null ||
		{ why="needs node and npm (apt-get install nodejs npm)"; return 1; }
	[ -s "$nm/$1" ] && return 0
	mkdir -p "$T/npm" && cp "$TRAIL_TOP/tests/reference/hf/package.json" "$lock" "$T/npm/" || exit 1
	(cd "$T/npm" && timeout 300 npm ci --ignore-scripts --no-audit --no-fund --silent >/dev/null 2>&1) ||
		{ why="cannot install tests/reference/hf/package-lock.json from the npm registry"; return 1; }
	rm -rf "${nm%/node_modules}" && mkdir -p "${nm%/node_modules}" && mv "$T/npm/node_modules" "$nm" || exit 1
}
