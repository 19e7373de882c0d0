#!/bin/bash
# The shape of lib/: subsystems whose dependencies point one way, no circles.
#  - a file includes only headers of its own subsystem or of one below it;
#  - an object file uses only symbols of its own subsystem or of one below it
#    (read from the objects with nm, so calls through a header count too);
#  - no circle among lib/'s files, neither in #include nor in symbol use;
#  - one public header per subsystem (<name>/<name>.h) and at most one
#    internal one (<name>/<name>_int.h); nothing in lib/ includes trail.h;
#  - object names are unique (libtrail.a keys members by base name);
#  - no file over 1,500 lines unless its top says why it is kept whole.
. "$TRAIL_TOP/tests/tap.sh"
cd "$TRAIL_TOP" || exit 70
# Each subsystem and what it may use, lowest first.
allowed() {
	case $1 in
	core) echo "core" ;;
	ledger) echo "core ledger" ;;
	data) echo "core ledger data" ;;
	model) echo "core model" ;;
	attr) echo "core ledger data model attr" ;;
	serve) echo "core ledger model serve" ;;
	settle) echo "core ledger settle" ;;
	report) echo "core ledger settle report" ;;
	job) echo "core ledger data model attr job" ;;
	*) echo "" ;;
	esac
}
subs=$(cd lib && ls -d */ | tr -d /)
unknown=""
for s in $subs; do [ -n "$(allowed "$s")" ] || unknown="$unknown $s"; done
check_eq "every folder of lib/ is a known subsystem" "$unknown" ""

# file -> included file, as paths under lib/
: > "$T/inc"
for f in lib/*/*.[ch]; do
	grep -o '^#include "[^"]*"' "$f" | sed 's/^#include "\(.*\)"/\1/' | while read -r h; do
		echo "${f#lib/} $h"
	done >> "$T/inc"
done
bad=""
while read -r f h; do
	s=${f%%/*} hs=${h%%/*}
	case " $(allowed "$s") " in *" $hs "*) ;; *) bad="$bad $f:$h" ;; esac
done < "$T/inc"
check_eq "includes point down the subsystem order" "$bad" ""
check_eq "nothing in lib/ includes trail.h" "$(grep -l '#include "trail.h"' lib/*/*.[ch])" ""
extra=""
for h in lib/*/*.h; do
	s=$(basename "$(dirname "$h")") b=$(basename "$h")
	[ "$b" = "$s.h" ] || [ "$b" = "${s}_int.h" ] || extra="$extra ${h#lib/}"
done
check_eq "one public and at most one internal header per subsystem" "$extra" ""

# Circles: repeatedly remove nodes with no outgoing edge; what remains is on a circle.
acyclic() { # edges file ("a b" per line) -> prints the nodes left on circles
	awk '{ if ($1 != $2) { e[$1 " " $2] = 1; out[$1]++; node[$1]; node[$2] } }
	END {
		do {
			changed = 0
			for (n in node) if (!(n in gone) && out[n] == 0) {
				gone[n] = 1; changed = 1
				for (k in e) { split(k, p, " "); if (p[2] == n && !(k in cut)) { cut[k] = 1; out[p[1]]-- } }
			}
		} while (changed)
		for (n in node) if (!(n in gone)) printf "%s ", n
	}' "$1"
}
check_eq "no include circle in lib/" "$(acyclic "$T/inc")" ""

objs=""
for c in lib/*/*.c; do o=$TRAIL_BUILD/${c%.c}.o; [ -f "$o" ] && objs="$objs $o"; done
check_eq "object names are unique" "$(for c in lib/*/*.c; do basename "$c"; done | sort | uniq -d)" ""
if [ -z "$objs" ]; then
	skip "symbol use points down the subsystem order" "no objects in $TRAIL_BUILD/lib"
	skip "no circle of symbol use among lib/'s files" "no objects"
else
	: > "$T/def"; : > "$T/und"
	for o in $objs; do
		r=${o#"$TRAIL_BUILD"/lib/}; r=${r%.o}
		nm --defined-only -g "$o" | awk -v f="$r" '$2 ~ /[TDBRC]/ { print $3, f }' >> "$T/def"
		nm -u "$o" | awk -v f="$r" '{ print f, $2 }' >> "$T/und"
	done
	awk 'NR == FNR { d[$1] = $2; next } ($2 in d) && d[$2] != $1 { print $1, d[$2] }' "$T/def" "$T/und" |
		sort -u > "$T/use"
	bad=""
	while read -r f g; do
		s=${f%%/*} gs=${g%%/*}
		case " $(allowed "$s") " in *" $gs "*) ;; *) bad="$bad $f->$g" ;; esac
	done < "$T/use"
	check_eq "symbol use points down the subsystem order" "$bad" ""
	check_eq "no circle of symbol use among lib/'s files" "$(acyclic "$T/use")" ""
fi

long=""
for f in lib/*/*.[ch]; do
	[ "$(wc -l < "$f")" -le 1500 ] && continue
	head -20 "$f" | grep -q 'Kept whole' || long="$long ${f#lib/}"
done
check_eq "no file over 1,500 lines without its reason" "$long" ""
finish
