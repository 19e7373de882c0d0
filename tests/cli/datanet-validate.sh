#!/bin/bash
# datanet-validate: golden verdicts (tests/data/validate/NAME.out, NAME.exit;
# regenerate with TRAIL_REGEN=1 and review the diff), exit statuses, GitHub
# annotations, redaction, policies, and the man page against the rule table.
. "$TRAIL_TOP/tests/tap.sh"
D="$TRAIL_TOP/tests/data/validate"
cd "$D" || exit 70

golden() { # NAME CMD...: stdout and exit status against NAME.out / NAME.exit
	name=$1
	shift
	"$@" > "$T/$name.out" 2> "$T/$name.err"
	echo $? > "$T/$name.exit"
	if [ "${TRAIL_REGEN:-0}" = 1 ]; then
		cp "$T/$name.out" "$D/$name.out"
		cp "$T/$name.exit" "$D/$name.exit"
	fi
	if cmp -s "$T/$name.out" "$D/$name.out" && cmp -s "$T/$name.exit" "$D/$name.exit"; then
		result 0 "golden $name"
	else
		result 1 "golden $name"
		diff "$D/$name.out" "$T/$name.out" | head -20 | sed 's/^/#   /'
		echo "#   exit $(cat "$T/$name.exit"), wanted $(cat "$D/$name.exit")"
	fi
}

golden good datanet-validate good.ndjson
golden rejected datanet-validate rejected.ndjson
golden malformed datanet-validate malformed.ndjson
golden github datanet-validate --format github rejected.ndjson
golden redact datanet-validate --redact pii.ndjson
golden pii datanet-validate pii.ndjson
golden instruct datanet-validate --schema instruct instruct.ndjson
golden approved datanet-validate --approved approved.ndjson good.ndjson
golden strict datanet-validate --policy strict.json good.ndjson
golden license datanet-validate --policy strict.json --license CC-BY-4.0 good.ndjson

# Exit statuses.
check_rc 0 "all accepted: exit 0" datanet-validate good.ndjson
check_rc 1 "any rejected: exit 1" datanet-validate rejected.ndjson
check_rc 65 "malformed input: exit 65" datanet-validate malformed.ndjson
check_rc 66 "missing input: exit 66" datanet-validate no-such-file.ndjson
check_rc 64 "unknown format: exit 64" datanet-validate --format xml good.ndjson
check_rc 64 "unknown schema: exit 64" datanet-validate --schema image good.ndjson
check_rc 0 "--help" datanet-validate --help
check_rc 65 "a policy with an unknown key is refused" datanet-validate --policy bad-key.json good.ndjson
datanet-validate --policy bad-key.json good.ndjson 2> "$T/err" > /dev/null
check_eq "the error names the key" "$(grep -c "unknown key 'rules.gopher-word-count.mx'" "$T/err")" 1
check_rc 66 "a missing policy file: exit 66" datanet-validate --policy none.json good.ndjson

# Details that golden files show but that deserve a name.
check_eq "stdin works like a file" "$(datanet-validate < good.ndjson | sed 's/"file":"[^"]*"//')" \
	"$(datanet-validate good.ndjson | sed 's/"file":"[^"]*"//')"
check_eq "line numbers count blank lines" \
	"$(datanet-validate rejected.ndjson | sed -n 3p | sed 's/^{"record":"[^"]*","n":\([0-9]*\),.*/\1/')" 4
check_eq "malformed line named on stderr" \
	"$(datanet-validate malformed.ndjson 2>&1 >/dev/null)" \
	"datanet-validate: error: malformed.ndjson:3: invalid json: string or '}' expected near 'bad' (column 4)"
check_eq "one verdict per record then a summary" "$(datanet-validate rejected.ndjson | wc -l | tr -d ' ')" 9
check_eq "a copy in the submission is rule duplicate with of and n" \
	"$(datanet-validate rejected.ndjson | sed -n 3p | grep -c '"reasons":\[{"rule":"duplicate","of":"sha256:[0-9a-f]*","n":1}\]')" 1
check_eq "an edited copy is near-duplicate with of and score" \
	"$(datanet-validate rejected.ndjson | sed -n 5p | grep -c '"rule":"near-duplicate","of":"sha256:[0-9a-f]*","score":0\.[0-9]*,"n":1')" 1
datanet-validate --redact -o "$T/red1.ndjson" pii.ndjson > "$T/v1"
datanet-validate --redact -o "$T/red2.ndjson" pii.ndjson > "$T/v2"
check "redaction is deterministic" cmp "$T/red1.ndjson" "$T/red2.ndjson"
check_eq "redacted records carry placeholders" \
	"$(grep -o '\[[A-Z ]*\]' "$T/red1.ndjson" | sort | tr '\n' ' ')" "[API TOKEN] [EMAIL] [IP] [PHONE] "
check_eq "record ids are digests of the written records" \
	"$(while read -r l; do printf '%s' "$l" | sha256sum | cut -c1-64; done < "$T/red1.ndjson" | tr '\n' ' ')" \
	"$(grep -o '"record":"sha256:[0-9a-f]*' "$T/v1" | cut -c18- | tr '\n' ' ')"
check_eq "--output keeps only accepted records" "$(datanet-validate -o "$T/acc" rejected.ndjson >/dev/null; wc -l < "$T/acc" | tr -d ' ')" 2
printf '{"text":"x"}\n' > "$T/one.ndjson"
chmod 000 "$T/one.ndjson" 2>/dev/null
[ "$(id -u)" = 0 ] || check_rc 66 "unreadable input: exit 66" datanet-validate "$T/one.ndjson"

# A flood of near-identical short records: every LSH band key is shared by
# all of them, and the work per record must stay bounded (it was quadratic).
# 20,000 records here, 200,000 under check-full, each run within a limit.
nflood=20000 limit=60
[ -n "${TRAIL_FULL:-}" ] && nflood=200000 limit=180
awk -v n=$nflood 'BEGIN { for (i = 0; i < n; i++) printf "{\"text\":\"the committee met on tuesday to review the harbour plan and agreed that the new pier should open before the summer season begins in the old town, entry %d.\"}\n", i }' > "$T/flood.ndjson"
head -1 "$T/flood.ndjson" | sed 's/entry 0/entry approved/' > "$T/flood-approved.ndjson"
timeout $limit datanet-validate --no-progress --approved "$T/flood-approved.ndjson" "$T/flood.ndjson" > "$T/flood1.out" 2>/dev/null
check_eq "a flood of $nflood near-identical records is checked within ${limit}s" "$?" 1
timeout $limit datanet-validate --no-progress --approved "$T/flood-approved.ndjson" "$T/flood.ndjson" > "$T/flood2.out" 2>/dev/null
check "and gives the same verdicts on every run" cmp "$T/flood1.out" "$T/flood2.out"
check_eq "every flood record is a near duplicate of an earlier record or the approved one" "$(python3 - "$T/flood1.out" <<'PYEOF'
import json, sys
bad = 0
for line in open(sys.argv[1]):
    v = json.loads(line)
    if "summary" in v:
        continue
    near = [r for r in v["reasons"] if r["rule"] == "near-duplicate"]
    if len(near) != 1 or near[0].get("n", 0) >= v["n"]:
        bad += 1
print(bad)
PYEOF
)" 0


datanet-validate --print-policy > "$T/policy.json"
check "--print-policy prints a policy that parses back" datanet-validate --policy "$T/policy.json" good.ndjson
# --- plain text, split as datanet-add splits it (issue 20) ------------------------
printf 'Alpha paragraph one is here.\nIt goes on.\n\nBeta paragraph two.\r\n \r\n\n\nGamma three\n' > "$T/kb.txt"
trail-key generate -C "$T" textkey >/dev/null 2>&1
datanet-add --bundle-only -o "$T/kb.tar" kb --key "$T/textkey.key" "$T/kb.txt" >/dev/null
ids() { grep -o '"record":"[^"]*"'; }
check_eq "a text file is three records, one per paragraph" \
	"$(datanet-validate --preset short-form "$T/kb.txt" | ids | sort -u | wc -l)" 3
check_eq "a text file gives the records (ids) of the bundle datanet-add makes of it" \
	"$(datanet-validate --preset short-form "$T/kb.txt" | ids)" "$(datanet-validate --preset short-form "$T/kb.tar" | ids)"
check_eq "each verdict gives its paragraph's first line" \
	"$(datanet-validate --preset short-form "$T/kb.txt" | grep -o '"n":[0-9]*' | tr '\n' ' ')" '"n":1 "n":4 "n":8 '
check_eq "text on a pipe too" "$(cat "$T/kb.txt" | datanet-validate --preset short-form | ids)" \
	"$(datanet-validate --preset short-form "$T/kb.txt" | ids)"
datanet-add --bundle-only --per-file -o "$T/kb1.tar" kb --key "$T/textkey.key" "$T/kb.txt" >/dev/null
check_eq "--per-file: one record" "$(datanet-validate --per-file --preset short-form "$T/kb.txt" | ids | wc -l)" 1
check_eq "--per-file: the record datanet-add --per-file makes" \
	"$(datanet-validate --per-file --preset short-form "$T/kb.txt" | ids)" "$(datanet-validate --preset short-form "$T/kb1.tar" | ids)"
printf 'Good paragraph of text.\n\nBad \377 byte here.\n' > "$T/bad.txt"
check_eq "a paragraph that is not UTF-8 gets a utf8 verdict" \
	"$(datanet-validate --preset short-form "$T/bad.txt" | grep -c '"rule":"utf8"')" 1
check_eq "plain text can be the approved records: its copies are caught" \
	"$(datanet-validate --preset short-form --approved "$T/kb.txt" "$T/kb.txt" | grep -c '"rule":"duplicate"')" 3

# --- policy presets (issue 20) --------------------------------------------------
check_eq "--preset web prints the default policy byte for byte" \
	"$(datanet-validate --print-policy --preset web)" "$(cat "$T/policy.json")"
same=0
for f in good rejected pii instruct; do
	sc=; [ $f = instruct ] && sc="--schema instruct"
	# shellcheck disable=SC2086
	cmp -s <(datanet-validate $sc "$f.ndjson" 2>&1) <(datanet-validate $sc --preset web "$f.ndjson" 2>&1) || same=1
done
check_eq "--preset web gives the default verdicts byte for byte" "$same" 0
printf '%s\n' '{"text":"Paris is the capital of France."}' \
	'{"text":"Boiling point of water: 100 degrees Celsius at sea level"}' \
	'{"text":"Q: What is the speed of light?\nA: About 299,792 km per second."}' > "$T/kb.ndjson"
check_rc 1 "the default rejects short knowledge-base records" datanet-validate "$T/kb.ndjson"
check_rc 0 "--preset short-form accepts them" datanet-validate --preset short-form "$T/kb.ndjson"
check_rc 1 "short-form still rejects a repeated phrase" sh -c \
	'echo "{\"text\":\"buy now buy now buy now buy now buy now buy now\"}" | datanet-validate --preset short-form'
check_eq "--print-policy --preset short-form shows its word count" \
	"$(datanet-validate --print-policy --preset short-form | python3 -c 'import json,sys;r=json.load(sys.stdin)["rules"];print(r["gopher-word-count"]["min"],r["c4-sentences"]["enabled"])')" "3 False"
printf '%s\n' '{"text":"int main(void)\n{\n\treturn 0;\n}\n"}' > "$T/code.ndjson"
check_rc 1 "the default rejects a C function" datanet-validate "$T/code.ndjson"
check_rc 0 "--preset code accepts it" datanet-validate --preset code "$T/code.ndjson"
check_rc 1 "--preset code still rejects an API token" sh -c \
	'echo "{\"text\":\"key = \\\"ghp_abcdefghijklmnopqrstuvwxyz0123456789\\\"\"}" | datanet-validate --preset code'
check_eq "a preset turns no quality rule on for instruct" \
	"$(datanet-validate --print-policy --schema instruct --preset short-form | python3 -c 'import json,sys;print(json.load(sys.stdin)["rules"]["gopher-word-count"]["enabled"])')" False
check_rc 64 "an unknown preset is a usage error" datanet-validate --preset nope "$T/kb.ndjson"
check_rc 64 "--policy and --preset together are refused" datanet-validate --policy strict.json --preset web "$T/kb.ndjson"

man="$TRAIL_TOP/man/datanet-validate.1"
missing=$(python3 - "$T/policy.json" "$man" <<'EOF'
import json, re, sys
p = json.load(open(sys.argv[1]))
man = open(sys.argv[2]).read().replace("\\-", "-").replace("\\&", "")
out = []
for rule, params in p["rules"].items():
    if rule not in man:
        out.append(rule)
    for k, v in params.items():
        if k == "enabled":
            continue
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, list):
            v = " ".join(v)
        text = str(v).lower() if isinstance(v, bool) else str(v)
        if not re.search(r"\b%s\b.*%s" % (re.escape(k), re.escape(text)), man):
            out.append("%s.%s=%s" % (rule, k, text))
print(" ".join(out))
EOF
)
check_eq "the man page lists every rule and every default" "$missing" ""
check "the man page passes mandoc -Tlint" sh -c "! command -v mandoc >/dev/null || mandoc -Tlint -Wwarning '$man'"
finish
