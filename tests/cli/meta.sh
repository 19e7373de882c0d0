#!/bin/bash
# Every program: -h and --version work, every option of its table is in its
# man page, the man page lints clean, the committed completions are what the
# option table generates, and bash completion offers its subcommands/options.
. "$TRAIL_TOP/tests/tap.sh"
for p in "$TRAIL_BUILD"/bin/*; do
	name=$(basename "$p")
	out=$("$p" -h 2>&1); rc=$?
	check_eq "$name -h exits 0" "$rc" 0
	case "$out" in "usage: $name"*) r=0 ;; *) r=1 ;; esac
	result $r "$name -h starts with its usage line"
	check "$name --version" "$p" --version
	check_rc 64 "$name rejects an unknown option with 64" "$p" --no-such-option
	grep -q "^| \`$name\` |.*(man/$name.1)" "$TRAIL_TOP/README.md"
	result $? "$name is in README's program table"
	man="$TRAIL_TOP/man/$name.1"
	if [ ! -f "$man" ]; then result 1 "$name has a man page"; continue; fi
	missing=""
	sed 's/\\-/-/g' "$man" > "$T/man.txt" # \- is a plain hyphen in roff
	for o in $(printf '%s\n' "$out" | grep -o -- '--[a-z][a-z0-9-]*' | sort -u); do
		grep -q -- "Fl -${o#--}\([^a-z0-9-]\|$\)\|, -${o#--}\([^a-z0-9-]\|$\)" "$T/man.txt" || missing="$missing $o"
	done
	check_eq "$name: every option is documented in its man page" "$missing" ""
	grep -q "^\.Sh EXIT STATUS\|^\.SH \"\?EXIT STATUS" "$man"
	result $? "$name: man page lists the exit statuses"
	if command -v mandoc >/dev/null; then
		check "$name: man page lints clean" mandoc -Tlint -Wwarning "$man"
	fi
	for sh in bash zsh fish; do
		case $sh in bash) f=$name.bash ;; zsh) f=_$name ;; fish) f=$name.fish ;; esac
		"$p" --completion $sh > "$T/comp" 2>/dev/null
		cmp -s "$T/comp" "$TRAIL_TOP/completions/$f"
		result $? "$name: completions/$f is up to date (make completions)"
	done
	command -v zsh >/dev/null && check "$name: the zsh completion parses" zsh -n "$TRAIL_TOP/completions/_$name"
	command -v fish >/dev/null && check "$name: the fish completion parses" fish --no-execute "$TRAIL_TOP/completions/$name.fish"
	# bash completion really completes: options after "-", and subcommands if any
	got=$(bash -c ". '$TRAIL_TOP/completions/$name.bash'; COMP_WORDS=($name --he); COMP_CWORD=1; _${name//-/_}; echo \${COMPREPLY[*]}" 2>&1)
	check_eq "$name: bash completes --he to --help" "$got" "--help"
done
sed -n '/^check:/,/^$/p' "$TRAIL_TOP/Makefile" | grep -q 'echo .*running the test suite (about [0-9]* minutes'
result $? "make check says how long the suite takes before running it"
finish
