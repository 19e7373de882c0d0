#!/bin/bash
# attr-report: one self-contained page; spans linked, input escaped, receipts
# checked offline, clean errors; rendered in headless Chromium when present.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
in="$TRAIL_TOP/tests/data/report/sample.ndjson"
check "renders the sample" attr-report -o page.html "$in"
check "no script, no external resource" sh -c '! grep -qi "<script\|src=\|href=\"http\|@import\|url(" page.html'
check "record text is escaped" grep -q '&lt;script&gt;alert(1)&lt;/script&gt;' page.html
check "the matched span links to its record" grep -q 'class="span"[^>]*href="#r-1111111111111111111111111111111111111111111111111111111111111111"' page.html
check "the record is in the appendix" grep -q 'id="r-1111111111111111111111111111111111111111111111111111111111111111"' page.html
check "contributor bar chart" grep -q '<svg class="bars"' page.html
check "copies credited once" grep -q 'Copies credited once' page.html
check "payout table" grep -q '<td class="num">5280</td>' page.html
check "answer text found through its event" grep -q 'enjoys exploring' page.html
check_eq "stdout and -o give the same page" "$(attr-report "$in" | sha256sum)" "$(sha256sum < page.html)"

# Two lora-serve runs both answered "cmpl-1" (tests/data/report/restart):
# answers are joined to attributions by event digest, never by id; a golden
# page and its warnings (regenerate with TRAIL_REGEN=1 and review the diff)
R="$TRAIL_TOP/tests/data/report/restart"
attr-settle --dry-run --policy "$R/policy.json" --epoch 7 < "$R/attributions.ndjson" > settle.ndjson
attr-report --title restart "$R/responses.ndjson" "$R/attributions.ndjson" "$R/records.ndjson" settle.ndjson \
	> restart.html 2> restart.err
rc=$?
if [ -n "${TRAIL_REGEN:-}" ]; then cp restart.html "$R/page.html"; cp restart.err "$R/stderr.txt"; fi
check_eq "a report with unjoined answers still exits 0" "$rc" 0
check "golden page" cmp restart.html "$R/page.html"
check "golden warnings on standard error" cmp restart.err "$R/stderr.txt"
check "answer 1 has its own event's text" sh -c "sed -n '/<section id=\"a-1\"/,/<\/section>/p' restart.html | grep -q 'opens at dawn</a>' && ! sed -n '/<section id=\"a-1\"/,/<\/section>/p' restart.html | grep -q ferry"
check "an attribution whose digest matches no event shows no other answer's text" sh -c "! sed -n '/<section id=\"a-3\"/,/<\/section>/p' restart.html | grep -q 'ferry\|dawn'"
check "and is flagged in the page" sh -c "sed -n '/<section id=\"a-3\"/,/<\/section>/p' restart.html | grep -q 'class=\"bad\">&#9888; answer 3: no event has the attribution&#39;s event_digest'"
check "and on standard error" grep -q '^attr-report: warning: answer 3: no event has .*ids repeat across server restarts' restart.err
check "each answer names its request id and model" grep -q '<h2>Answer 1 <small>request cmpl-1 &middot; model ports' restart.html
check "record text beside its hash" grep -q '<code>333333333333</code></a> <span class="snip">Harbour 3 opens at dawn and closes at dusk.' restart.html
check "bars after copy crediting: carol's cluster takes dave's share" grep -q 'class="lbl">carol</text>.*class="val">100.0%' restart.html
check "and the shares as scored beside them" grep -q 'Contributor shares as scored' restart.html
check "withheld amounts by contributor with their reasons" grep -q '<tr><td><span class="who" title="mallory[^"]*">mallory</span></td><td>stakers</td><td class="num">330</td><td>poisoning</td></tr>' restart.html
check "slashed amounts with their reasons" grep -q '<td>1000</td><td class="num">500</td><td>poisoning</td>' restart.html
check "the settlement is checked against the attributions" grep -q 'class="ok">settled over exactly these attributions' restart.html
check "the appendix lists only records referred to" sh -c "grep -q 'id=\"r-3333' restart.html && ! grep -q '9999999999\|unrelated record' restart.html"
head -2 "$R/attributions.ndjson" | attr-settle --dry-run --policy "$R/policy.json" --epoch 8 > other.ndjson
attr-report "$R/responses.ndjson" "$R/attributions.ndjson" other.ndjson > other.html 2> other.err
check "a settlement over other attributions is flagged" grep -q '^attr-report: warning: epoch 8: settled over other attributions' other.err

# receipts in the proof chain are checked against the log's key
trail-log init --origin report.test/log >/dev/null
echo '{"type":"contribution","datanet":"jargon"}' | trail-log append >/dev/null
trail-log prove 0 > r.tlog-proof
python3 - "$in" r.tlog-proof > withproof.ndjson <<'PY'
import json, sys
receipt = open(sys.argv[2]).read()
for line in open(sys.argv[1]):
    o = json.loads(line)
    if "contributors" in o:
        o["proofs"] = [{"record": o["top"][0]["record"], "bundle": "sha256:" + "3" * 64,
                        "entry": 0, "receipt": receipt}]
    print(json.dumps(o))
PY
attr-report --key "$TRAIL_HOME/keys/operator.pub" withproof.ndjson > p1.html
check "a good receipt shows as verified" grep -q 'class="ok">ledger entry 0' p1.html
trail-key generate other >/dev/null
attr-report --key other.pub withproof.ndjson > p2.html
check "under another key it shows as failed" grep -q 'class="bad">' p2.html
attr-report withproof.ndjson > p3.html
check "without a key it shows as not checked" grep -q 'not checked' p3.html

echo '{"hello":1}' > odd.ndjson
attr-report odd.ndjson 2> err; rc=$?
check_eq "an unrecognised line is bad data (65)" "$rc" 65
check "the error names file and line" grep -q 'attr-report: error: odd.ndjson:1:' err
check_rc 66 "a missing file" attr-report nope.ndjson
check_rc 65 "malformed JSON" sh -c 'echo "{" | attr-report'

chrome=$(command -v chromium || command -v chromium-browser)
if [ -n "$chrome" ]; then
	flags="--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking --disable-component-update --disable-sync --user-data-dir=$T/chrome"
	timeout 60 "$chrome" $flags --enable-logging=stderr --v=0 --window-size=1100,1400 \
		--screenshot="$T/shot.png" "file://$T/p1.html" > "$T/chrome.log" 2>&1
	check "Chromium renders the page to a screenshot" test -s "$T/shot.png"
	check "no console errors" sh -c "! grep -i 'CONSOLE.*error\|Uncaught' '$T/chrome.log'"
	[ -n "${TRAIL_SCREENSHOT:-}" ] && cp "$T/shot.png" "$TRAIL_SCREENSHOT"
else
	echo "ok $((n += 1)) - Chromium render # SKIP chromium not installed"
fi
# confidence: an answer not attributed shows so, and the epoch what it retained for it
sed '1s/^{/{"confidence":{"score":0.25,"floor":1.5,"attributed":false},/' "$R/attributions.ndjson" > conf.ndjson
sed 's/^{/{"confidence":{"unattributed":"retain"},/' "$R/policy.json" > confpol.json
attr-settle --dry-run --policy confpol.json --epoch 9 conf.ndjson > confset.ndjson
attr-report "$R/responses.ndjson" conf.ndjson "$R/records.ndjson" confset.ndjson > conf.html 2>/dev/null
check "an answer not attributed says so, with its confidence and noise floor" grep -q '&middot; <b>not attributed</b>, confidence 0.25 (noise floor 1.5)' conf.html
check "the epoch shows what low confidence retained" grep -q 'retained for low confidence [1-9][0-9]*, over 1 answer<' conf.html
finish
