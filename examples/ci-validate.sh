#!/bin/sh
# Validate the dataset submissions a change adds, for continuous integration.
#
# Repository layout (names configurable below):
#   data/*.ndjson, *.txt   records already accepted into the dataset
#   submissions/*.ndjson   contributions; a pull request adds or edits these:
#   submissions/*.txt      NDJSON, or plain text split as datanet-add splits
#                          it (one record per paragraph; PER_FILE=1: per file)
#   policy.json            the validation policy (optional; defaults otherwise)
#   PRESET=NAME            without policy.json, a built-in preset
#                          (web, short-form, code; see datanet-validate(1))
#
# Usage: examples/ci-validate.sh [BASE]
#   BASE is the commit the change is compared with: default origin/$GITHUB_BASE_REF
#   in a GitHub pull request, else HEAD~1.
# Checks every added or modified submission file in one run, against each
# other and against data/, and exits with datanet-validate's status:
# 0 all records accepted, 1 some rejected, 65 a line of an NDJSON file is
# not JSON.
# Under GitHub Actions it prints ::error annotations on the offending lines.
# A rejected record fails the run: fix or drop it and push again. (In a
# store, the owner can instead approve a bundle's accepted records alone:
# datanet-validate --approve --accepted-only.)
#
# A workflow step:
#   - uses: actions/checkout@v4
#     with: { fetch-depth: 0 }
#   - run: sh examples/ci-validate.sh
set -u
DATA=${DATA:-data}
SUBMISSIONS=${SUBMISSIONS:-submissions}
POLICY=${POLICY:-policy.json}
VALIDATE=${VALIDATE:-datanet-validate}

base=${1:-}
if [ -z "$base" ] && [ -n "${GITHUB_BASE_REF:-}" ]; then
	base=origin/$GITHUB_BASE_REF
fi
base=${base:-HEAD~1}
if ! git rev-parse --verify --quiet "$base^{commit}" >/dev/null; then
	echo "ci-validate: unknown base commit '$base'" >&2
	exit 64
fi

# Changed submission files, NUL-safe enough for file names without newlines.
changed=$(git diff --name-only --diff-filter=AMR "$base"...HEAD -- "$SUBMISSIONS" |
	grep '\.ndjson$\|\.txt$' || true)
if [ -z "$changed" ]; then
	echo "ci-validate: no submission files changed since $base"
	exit 0
fi

set --
if [ -f "$POLICY" ]; then
	set -- "$@" --policy "$POLICY"
elif [ -n "${PRESET:-}" ]; then
	set -- "$@" --preset "$PRESET"
fi
[ "${PER_FILE:-0}" = 1 ] && set -- "$@" --per-file
for f in "$DATA"/*.ndjson "$DATA"/*.txt; do
	[ -f "$f" ] && set -- "$@" --approved "$f"
done
format=ndjson
[ "${GITHUB_ACTIONS:-}" = true ] && format=github
format=${FORMAT:-$format}

echo "ci-validate: checking $(echo "$changed" | wc -l | tr -d ' ') file(s) against $base" >&2
# shellcheck disable=SC2086 # one file name per line
IFS='
'
"$VALIDATE" --no-progress --format "$format" "$@" $changed
