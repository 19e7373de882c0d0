#!/bin/sh
# Real public text from Debian packages as NDJSON records {"text": ...}.
#   examples/debian-text.sh jargon [FIRST-LAST]   The Jargon File (dict-jargon), entries
#                                                  whose headword starts in [FIRST-LAST]
#   examples/debian-text.sh foldoc [FIRST-LAST]   FOLDOC (dict-foldoc), likewise
#   examples/debian-text.sh fortunes CATEGORY     one fortune file (fortunes, fortunes-min)
# Installs the package when missing and running as root.
set -e
src=${1:?usage: debian-text.sh jargon|foldoc|fortunes ARG}
arg=${2:-}

need() { # package file
	[ -e "$2" ] && return 0
	if [ "$(id -u)" = 0 ]; then
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
	else
		echo "debian-text: $2 missing: apt-get install $1" >&2
		exit 66
	fi
}

# JSON string escaping for awk; newlines travel as \001 until here
esc='function esc(s) { gsub(/\\/, "&&", s); gsub(/"/, "\\\"", s); gsub(/\t/, " ", s); gsub(/\r/, "", s); gsub(/[\002-\010\013\014\016-\037\177]/, " ", s); gsub(/\001/, "\\n", s); return s }'

case $src in
jargon | foldoc)
	f=/usr/share/dictd/$src.dict.dz
	need "dict-$src" "$f"
	range=${arg:-a-z}
	# an entry starts with an unindented headword line; its body is indented
	zcat "$f" | awk -v range="$range" "$esc"'
	function flush() {
		if (head != "" && body != "" && tolower(substr(head, 1, 1)) ~ ("[" range "]"))
			printf "{\"text\":\"%s\"}\n", esc(head ": " body)
		head = ""; body = ""
	}
	/^[^ \t]/ { flush(); head = $0; next }
	/^[ \t]*$/ { if (body != "" && body !~ /\001$/) body = body "\001"; next }
	{ sub(/^[ \t]+/, ""); body = body (body == "" || body ~ /\001$/ ? "" : " ") $0 }
	END { flush() }' | sed 's/\\n"}$/"}/'
	;;
fortunes)
	need fortunes "/usr/share/games/fortunes/${arg:?category}"
	awk "$esc"'
	function flush() { if (t != "") printf "{\"text\":\"%s\"}\n", esc(t); t = "" }
	/^%$/ { flush(); next }
	{ t = t (t == "" ? "" : "\001") $0 }
	END { flush() }' "/usr/share/games/fortunes/$arg"
	;;
*)
	echo "debian-text: unknown source '$src' (jargon, foldoc, fortunes)" >&2
	exit 64
	;;
esac
