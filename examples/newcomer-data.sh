#!/bin/sh
# Data for the newcomer's walk-through (examples/newcomer.sh): a knowledge base
# of trail's own command-line options, taken from the man pages in man/, so it
# is the same on every machine that has the source.
#   alice    the options of lora-serve and attr-report
#   bob      the options of datanet-add, trail-log and trail-key
#   carol    copies some of alice's entries (verbatim and lightly edited)
#            beside a few of her own
#   zed      junk: keyboard mashing and repeated filler
# usage: examples/newcomer-data.sh MANDIR OUTDIR   (writes alice.txt, bob.txt,
#        carol.txt, zed.txt: plain text, one entry per paragraph, and
#        prompts.ndjson). Deterministic: the same files every run.
set -e
man=${1:?usage: newcomer-data.sh MANDIR OUTDIR}
out=${2:?usage: newcomer-data.sh MANDIR OUTDIR}
mkdir -p "$out"

# One entry per option: "PROGRAM option --NAME ARG: description." Markup
# macros are dropped and their arguments kept; punctuation arguments are
# glued back to the word before them.
entries() { # man page
	awk -v prog="$(basename "$1" .1)" '
	function flush() {
		if (head != "" && desc != "") {
			sub(/^ +/, "", desc); sub(/ +$/, "", desc)
			if (desc !~ /[.]$/) desc = desc "."
			printf "%s option %s: %s\n\n", prog, head, desc
		}
		head = ""; desc = ""
	}
	function words(s,   n, w, i, r, t) {
		n = split(s, w, " "); r = ""
		for (i = 1; i <= n; i++) {
			t = w[i]
			if (t ~ /^(Fl|Ar|Pa|Ql|Xr|Em|Cm|Ev|Li|Ns|Sy|Va|Dv|Op|Oo|Oc|Ic|No|Aq|Dq|Sq|Pq|Bq|Brq)$/) {
				if (t == "Fl") flag = 1
				if (t == "Ns") glue = 1
				if (t == "Pq") { r = r " ("; open_p = 1; close_p = 1 }
				continue
			}
			if (flag) { t = "-" t; flag = 0 }
			# punctuation, and words after Ns or an opening parenthesis, join the word before
			if (t ~ /^[.,;:)]+$/ || glue || open_p) r = r t
			else r = r " " t
			glue = 0; open_p = 0
		}
		if (close_p) { r = r ")"; close_p = 0 }
		return r
	}
	/^\.Sh / { inopt = ($0 ~ /^\.Sh OPTIONS/); flush(); next }
	!inopt { next }
	/^\.It / { flush(); head = words(substr($0, 5)); sub(/^ +/, "", head); gsub(/ ,/, ",", head); next }
	/^\.(El|Bl|Pp|Ed|Bd)/ { if ($0 ~ /^\.El/) flush(); next }
	/^\.\\"/ { next }
	/^\./ { desc = desc words(substr($0, 2)); next }
	{ desc = desc " " $0; open_p = 0 }
	END { flush() }' "$1"
}

: > "$out/alice.txt"
for p in lora-serve attr-report; do entries "$man/$p.1" >> "$out/alice.txt"; done
: > "$out/bob.txt"
for p in datanet-add trail-log trail-key; do
	entries "$man/$p.1" >> "$out/bob.txt"
done

# carol: every fifth of alice's entries, every other one lightly edited, and
# three of her own.
awk 'BEGIN { RS = ""; ORS = "\n\n" }
	NR % 5 == 2 { n++; if (n % 2 == 0) { sub(/: /, ": In short: ") } print }' "$out/alice.txt" > "$out/carol.txt"
cat >> "$out/carol.txt" <<'TXT'
Tip: pipe lora-serve's events straight into attr-score; both read and write one JSON object per line.

Tip: keep the ledger's operator key offline and sign settlements with the datanet owner's key.

Tip: trail-log verify checks every entry of the store against its checkpoint in one pass.
TXT

# zed: junk that a careful owner does not want to pay for.
awk 'BEGIN {
	srand(7); split("qwe asd zxc jkl uio fgh vbn rty", k, " ")
	for (i = 1; i <= 12; i++) {
		s = ""; for (j = 0; j < 14; j++) s = s k[int(rand() * 8) + 1] k[int(rand() * 8) + 1] " "
		print s "!!!!"; print ""
	}
	for (i = 1; i <= 6; i++) { print "best best best best best best best best best best best best deal click here now"; print "" }
}' > "$out/zed.txt"

# prompts: the start of some entries (the model should finish them), and two
# that no record explains.
awk 'BEGIN { RS = ""; n = 0 }
	FNR % 4 == 1 { split($0, a, ": "); n++; if (n <= 10) printf "{\"id\":\"q%d\",\"model\":\"manual\",\"prompt\":\"%s:\",\"max_tokens\":40,\"temperature\":0}\n", n, a[1] }
	END {
		print "{\"id\":\"g1\",\"model\":\"manual\",\"prompt\":\"vlorp quandiff smee:\",\"max_tokens\":40,\"temperature\":0}"
		print "{\"id\":\"g2\",\"model\":\"manual\",\"prompt\":\"%%%% 9 9 9 @@\",\"max_tokens\":40,\"temperature\":0}"
	}' "$out/alice.txt" "$out/bob.txt" > "$out/prompts.ndjson"
