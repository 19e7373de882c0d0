#!/bin/bash
# examples/ci-validate.sh in a throwaway repository of submissions: exit
# statuses, GitHub annotations on the right file and line, only changed
# files checked, copies of the accepted data caught.
. "$TRAIL_TOP/tests/tap.sh"
CI="$TRAIL_TOP/examples/ci-validate.sh"
D="$TRAIL_TOP/tests/data/validate"
R="$T/repo"
mkdir -p "$R/data" "$R/submissions"
cd "$R" || exit 70
git init -q -b main . && git config user.email ci@example.org && git config user.name ci
sed -n 1p "$D/good.ndjson" > data/accepted.ndjson
printf '{"rules":{"gopher-word-count":{"min":40}}}\n' > policy.json
git add . && git commit -qm "dataset"

check_rc 0 "no changes: exit 0" sh "$CI" HEAD
check_rc 64 "unknown base: exit 64" sh "$CI" no-such-ref

git checkout -q -b good main
sed -n 2p "$D/good.ndjson" > submissions/rivers.ndjson
git add . && git commit -qm "rivers"
check_rc 0 "a good submission passes" sh "$CI" main
out=$(GITHUB_ACTIONS=true sh "$CI" main 2>/dev/null)
check_eq "a clean run prints only the notice" "$(echo "$out" | grep -c '^::error')" 0

git checkout -q -b bad good
{ sed -n 1p "$D/good.ndjson"; sed -n 1p "$D/pii.ndjson"; } > submissions/mixed.ndjson
git add . && git commit -qm "mixed"
check_rc 1 "a copy of accepted data and PII: exit 1" sh "$CI" good
out=$(GITHUB_ACTIONS=true sh "$CI" good 2>/dev/null)
check_eq "annotation for the copy on line 1" \
	"$(echo "$out" | grep -c '^::error file=submissions/mixed.ndjson,line=1,title=duplicate::duplicate: of sha256:')" 1
check_eq "annotations for the PII on line 2" \
	"$(echo "$out" | grep -c '^::error file=submissions/mixed.ndjson,line=2,title=pii-')" 2
check_eq "only the changed file is checked" "$(echo "$out" | grep -c 'rivers.ndjson')" 0
check_eq "the notice counts the records" "$(echo "$out" | tail -1)" \
	"::notice title=datanet-validate::2 records, 0 accepted, 2 rejected, 0 malformed"
check_eq "ndjson verdicts outside GitHub Actions" \
	"$(GITHUB_ACTIONS= sh "$CI" good 2>/dev/null | grep -c '"ok":false')" 2

git checkout -q -b broken good
printf '{"text": oops}\n' > submissions/broken.ndjson
git add . && git commit -qm "broken"
check_rc 65 "a file that is not NDJSON: exit 65" sh "$CI" good
out=$(GITHUB_ACTIONS=true sh "$CI" good 2>/dev/null)
check_eq "malformed line annotated" \
	"$(echo "$out" | grep -c '^::error file=submissions/broken.ndjson,line=1,title=malformed::')" 1

# Plain text submissions, split as datanet-add splits them (issue 20).
git checkout -q -b text good
python3 -c 'import json,sys;[print(json.loads(l)["text"]+"\n") for l in open(sys.argv[1])]' "$D/good.ndjson" > submissions/essays.txt
git add . && git commit -qm "essays"
out=$(GITHUB_ACTIONS=true sh "$CI" good 2>/dev/null); rc=$?
check_eq "a plain text submission is checked: the copy of accepted data is caught" "$rc" 1
check_eq "on the paragraph's first line" \
	"$(echo "$out" | grep -c '^::error file=submissions/essays.txt,line=1,title=duplicate::')" 1
check_eq "its records are those datanet-add would make" "$(echo "$out" | tail -1)" \
	"::notice title=datanet-validate::2 records, 1 accepted, 1 rejected, 0 malformed"
check_eq "PER_FILE=1: the whole file is one record" \
	"$(PER_FILE=1 GITHUB_ACTIONS=true sh "$CI" good 2>/dev/null | tail -1)" \
	"::notice title=datanet-validate::1 records, 1 accepted, 0 rejected, 0 malformed"
git checkout -q good

# Policy from the repository: a 40-word minimum passes, 200 rejects.
git checkout -q good
printf '{"rules":{"gopher-word-count":{"min":200}}}\n' > policy.json
check_rc 1 "the repository's policy applies" sh "$CI" main
git checkout -q policy.json
finish
