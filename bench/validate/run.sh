#!/bin/bash
# Validation benchmarks: near-duplicate recall and false positives on planted
# copies of Debian text, throughput of the full default policy on >= 100 MB,
# a flood of 200,000 near-identical records, and the near-duplicate index's
# size at 1M records. Writes the "Validation" section of bench/RESULTS.md.
#
#   bench/validate/run.sh [WORKDIR]
# With VERDICT_REV=REV, also compares every verdict with REV's build
# (bench/validate/verdict-diff.sh) and reports the count that differ.
# Needs: fortunes, fortunes-min, dict-jargon, dict-foldoc, dict-gcide (apt-get).
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
set -e
top=$(cd "$(dirname "$0")/../.." && pwd)
B=${B:-build}
W=${1:-${TMPDIR:-/tmp}/trail-bench-validate}
PY=/usr/bin/python3
cd "$top"
mkdir -p "$W" "$B/bench"
LIBS="$(pkg-config --libs jansson libarchive libsodium libcurl libmicrohttpd) -ldnnl -lgomp -lopenblas -llapacke -lxxhash -lm -pthread"
for p in nd_bench index_bench; do
	${CC:-cc} -std=c11 -D_GNU_SOURCE -O2 -Ilib -o "$B/bench/$p" bench/validate/$p.c "$B/libtrail.a" $LIBS
done

[ -s "$W/big.ndjson" ] || $PY bench/validate/corpus.py "$W" >/dev/null
"$B/bench/nd_bench" "$W/base.ndjson" "$W/pairs.ndjson" > "$W/nd.json"

# Throughput: CPU seconds (user + sys) of one process, so MB/s per core.
"$B/bin/datanet-validate" --print-policy | $PY -c '
import json, sys
p = json.load(sys.stdin)
for k, v in p["rules"].items():
    if k not in ("utf8", "schema"):
        v["enabled"] = False
json.dump(p, open(sys.argv[1], "w"))' "$W/off.json"
cpu() { # args... ; prints CPU seconds
	local TIMEFORMAT='%U %S'
	{ time "$B/bin/datanet-validate" --no-progress "$@" > "$W/verdicts.ndjson" 2>/dev/null; } 2>&1 | awk '{print $1 + $2}'
}
full=$(cpu "$W/big.ndjson" || true)
tail -1 "$W/verdicts.ndjson" > "$W/summary.json"
off=$(cpu --policy "$W/off.json" "$W/big.ndjson" || true)
bytes=$(wc -c < "$W/big.ndjson")

# A flood: 200,000 short records differing in one number, one approved.
awk -v n=200000 'BEGIN { for (i = 0; i < n; i++) printf "{\"text\":\"the committee met on tuesday to review the harbour plan and agreed that the new pier should open before the summer season begins in the old town, entry %d.\"}\n", i }' > "$W/flood.ndjson"
head -1 "$W/flood.ndjson" | sed 's/entry 0/entry approved/' > "$W/flood-approved.ndjson"
flood=$(cpu --approved "$W/flood-approved.ndjson" "$W/flood.ndjson" 2>/dev/null || true)
"$B/bin/datanet-validate" --no-progress --approved "$W/flood-approved.ndjson" "$W/flood.ndjson" 2>/dev/null | tail -1 > "$W/flood-summary.json" || true
"$B/bench/index_bench" 1000000 > "$W/index.json"
: > "$W/verdict-diff.txt"
if [ -n "${VERDICT_REV:-}" ]; then
	bench/validate/verdict-diff.sh "$VERDICT_REV" "$W" > "$W/verdict-diff.txt" || true
	oldbin="$W/rev-$(git rev-parse --short "$VERDICT_REV")/$B/bin/datanet-validate"
	oldfull=$( { TIMEFORMAT='%U %S'; time "$oldbin" --no-progress "$W/big.ndjson" > /dev/null 2>&1; } 2>&1 | awk '{print $1 + $2}')
	full2=$(cpu "$W/big.ndjson" || true)
	echo "$VERDICT_REV $(git rev-parse --short "$VERDICT_REV") $oldfull $full2" > "$W/verdict-rev.txt"
fi

$PY - "$W" "$bytes" "$full" "$off" "$flood" "$(uname -m)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')" <<'PYEOF'
import json, os, re, sys
w, nbytes, full, off, flood, arch, cpu = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), sys.argv[6], sys.argv[7]
nd = json.load(open(os.path.join(w, "nd.json")))
ix = json.load(open(os.path.join(w, "index.json")))
corpus = json.load(open(os.path.join(w, "corpus.json")))
summ = json.load(open(os.path.join(w, "summary.json")))["summary"]
mb = nbytes / 1e6
L = []
L.append("## Validation\n")
L.append("Reproduce: `make && bench/validate/run.sh` (needs the Debian packages fortunes, "
         "fortunes-min, dict-jargon, dict-foldoc, dict-gcide). Machine: %s, %s; one process, "
         "one thread.\n" % (cpu or "unknown CPU", arch))
src = ", ".join("%s %d" % kv for kv in corpus["by_source"].items())
L.append("### Near duplicates (default: 5-word shingles, 14 bands x 8 rows, score >= 0.7)\n")
L.append("Corpus: %d documents of at least 30 words from Debian text packages (%s). "
         "%d planted copies, each an edited version of a random document (word substitutions, "
         "deletions, insertions, adjacent swaps, a mix, or the document embedded in other text); "
         "the similarity of each pair is the exact Jaccard index of their 5-word-shingle sets, "
         "measured with the library's own shingling.\n" % (corpus["documents"], src, nd["pairs"]))
L.append("*pairwise*: the validator's decision for the pair alone; *in corpus*: the copy "
         "checked against all %d documents, counted when the reported `of` is the original; "
         "*LSH theory*: 1-(1-J^8)^14 at the band's mean J, before the score check.\n" % nd["documents"])
L.append("| Jaccard band | pairs | mean J | pairwise | in corpus | LSH theory | score bias |")
L.append("|---|---:|---:|---:|---:|---:|---:|")
for b in nd["bands"]:
    L.append("| %.2f-%.2f | %d | %.3f | %.3f | %.3f | %.3f | %+.3f |" % (
        b["lo"], b["hi"], b["pairs"], b["mean_jaccard"], b["pairwise_rate"], b["corpus_rate"],
        b["lsh_theory"], b["score_bias"]))
L.append("")
L.append("- Recall for pairs with J >= 0.8: **%.4f** pairwise, %.4f in corpus (%d pairs; target >= 0.95)." % (
    nd["recall_ge_0_8"], nd["recall_ge_0_8_in_corpus"], nd["pairs_ge_0_8"]))
L.append("- False positives for pairs with J <= 0.5: **%.4f** pairwise, %.4f in corpus (%d pairs; target <= 0.01); "
         "matches to some other document with J <= 0.5: %d." % (
    nd["fp_le_0_5"], nd["fp_le_0_5_in_corpus"], nd["pairs_le_0_5"], nd["spurious_matches_le_0_5"]))
L.append("- Score bias: mean (reported score - exact J) over detected pairs of the band.\n")
L.append("### Throughput, full default policy\n")
L.append("`datanet-validate big.ndjson` on %.1f MB (%d records, each 2-6 random documents of the corpus; "
         "%d accepted, %d rejected), CPU time of the one process:\n" % (
    mb, corpus["big_records"], summ["accepted"], summ["rejected"]))
L.append("| policy | CPU s | MB/s per core |")
L.append("|---|---:|---:|")
L.append("| full default policy | %.2f | **%.1f** |" % (full, mb / full))
L.append("| schema only (parse, canonical JSON, SHA-256 id, verdicts) | %.2f | %.1f |" % (off, mb / off))
L.append("")
L.append("Rules cost %.0f%% of the full run; the rest is reading JSON, canonical JSON and the "
         "SHA-256 record id. Target: >= 30 MB/s per core.\n" % (100 * (full - off) / full))
vd = [x for x in open(os.path.join(w, "verdict-diff.txt")).read().split("\n") if x.strip()]
if vd:
    rev, short, oldfull, full2 = open(os.path.join(w, "verdict-rev.txt")).read().split()
    oldfull, full2 = float(oldfull), float(full2)
    revname = rev if rev.startswith(short) else "%s (%s)" % (rev, short)
    L.append("Against %s, before the rules shared one pass over each text (masks of whitespace, "
             "continuation, letter, punctuation and newline bytes; one word and line table for every "
             "quality rule; the phone, IPv4 and token scanners in one pass; vector MinHash kernels), "
             "timed in the same run: %.2f CPU s (%.1f MB/s per core) then, %.2f s (%.1f MB/s) now, "
             "%.2fx. Every verdict line compared by `bench/validate/verdict-diff.sh %s`: %s.\n" % (
        revname, oldfull, mb / oldfull, full2, mb / full2, oldfull / full2, rev, "; ".join(vd)))
fs = json.load(open(os.path.join(w, "flood-summary.json")))["summary"]
L.append("### A flood of near-identical records\n")
L.append("200,000 short records (29 words) differing in one number, one of them approved "
         "(`--approved`): every LSH band key is shared by all of them. A query takes the 32 "
         "earliest records per band key and an exact copy of an approved record is found by "
         "id, so the work per record is bounded: **%.2f CPU s** (%.1f us per record; %d "
         "near duplicates). Before, every band bucket held every record and the run was "
         "quadratic: 20,000 of these records took 71 CPU s.\n" % (
    flood, 1e6 * flood / fs["records"], fs["rules"].get("near-duplicate", 0)))
L.append("### Near-duplicate index at %d records\n" % ix["records"])
L.append("| measure | value |")
L.append("|---|---:|")
L.append("| index bytes per record (its own count, after the final merge) | **%.1f** |" % ix["bytes_per_record"])
L.append("| before the final merge | %.1f |" % ix["bytes_per_record_before_merge"])
L.append("| worst point while growing past 500k records | %.1f |" % ix["bytes_per_record_peak_second_half"])
L.append("| resident memory growth per record | %.1f |" % ix["rss_bytes_per_record"])
L.append("| MinHash per 60-word record, us | %.2f |" % ix["minhash_us"])
L.append("| add, us | %.2f |" % ix["add_us"])
L.append("| query, us | %.2f |" % ix["query_us"])
L.append("| false matches among %d fresh queries | %d |" % (ix["queries"], ix["false_matches"]))
L.append("")
L.append("Layout per record: 32-byte id, 28-byte 2-bit signature, 14 x (8-bit fingerprint + "
         "32-bit ordinal) in sorted arrays, plus 14 directories of 2^16 buckets (3.7 MB in all). "
         "Records added since the last merge (at most 1/32 of the index) sit in a table of keys "
         "per band with each key's records chained in order, 12 bytes per key and 4 per record, "
         "which is what the worst point while growing adds. Target: <= 150 bytes per record.\n")
section = "\n".join(L)
path = os.path.join(os.getcwd(), "bench", "RESULTS.md")
old = open(path).read() if os.path.exists(path) else "# Benchmark results\n\n"
m = re.search(r"^## Validation\n.*?(?=^## |\Z)", old, flags=re.S | re.M)
new = old[:m.start()] + section + "\n" + old[m.end():] if m else old.rstrip("\n") + "\n\n" + section + "\n"
open(path, "w").write(new)
print(section)
PYEOF
