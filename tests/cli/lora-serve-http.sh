#!/bin/bash
# lora-serve --listen: curl and node's fetch as clients, the OpenAI
# completions protocol with and without server-sent events, /v1/models,
# /health, /metrics, JSON errors (404, 400, 405, 413, 429), hostile requests
# (huge bodies, deep nesting, invalid UTF-8, a slowloris connection), a
# load test from a second process with stable memory, and SIGTERM draining
# requests in flight. The load test runs 20 s; 5 minutes under check-full.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
command -v curl >/dev/null && command -v node >/dev/null || { echo "1..0 # SKIP curl and node are needed"; exit 0; }
awk 'BEGIN { for (i = 0; i < 40; i++) printf "{\"text\":\"Harbour %d opens at %d and the ferry leaves for isle %d.\"}\n", i, i % 9, i % 7 }' > a.ndjson
echo '{"n_layer":2,"n_head":2,"n_embd":32,"n_positions":128,"vocab_size":257}' > cfg.json
mf-train --init cfg.json --data a.ndjson --steps 10 --batch 4 --seq 64 --lr 3e-3 --no-progress -o base >/dev/null
mkdir ads
for i in 0 1 2; do
	mf-train --base base --lora r=4,alpha=8 --data a.ndjson --steps 2 --batch 4 --seq 64 --lr 1e-2 --seed $i --no-progress -o ads/a$i >/dev/null
done

# start NAME ARGS...: a server on a free port; sets $port and $pid
start() {
	rm -f "$1.out"
	lora-serve --base base --adapters ads --listen 127.0.0.1:0 "${@:2}" > "$1.out" 2> "$1.err" &
	pid=$!
	for _ in $(seq 100); do grep -q port "$1.out" 2>/dev/null && break; sleep 0.1; done
	port=$(sed -n 's/.*"port":\([0-9]*\).*/\1/p' "$1.out")
}
start srv --events events.ndjson --timeout 2
check "listening, port printed" test -n "$port"
U=http://127.0.0.1:$port

check_eq "/health" "$(curl -s $U/health)" '{"status":"ok"}'
check "/v1/models lists the base and the adapters" sh -c "curl -s $U/v1/models | grep -q '\"id\":\"base\".*\"id\":\"a0\".*\"id\":\"a1\".*\"id\":\"a2\"'"
req='{"model":"a1","prompt":"Harbour 3 ","max_tokens":16,"temperature":0}'
code=$(curl -s -o one.json -w '%{http_code}' $U/v1/completions -H 'Content-Type: application/json' -d "$req")
check_eq "curl: POST /v1/completions 200" "$code" 200
check "an OpenAI completion object with the event" sh -c "grep -q '\"object\":\"text_completion\"' one.json && grep -q '\"choices\":\[{\"finish_reason\":\"length\",\"index\":0' one.json && grep -q '\"adapter\":\"a1\"' one.json"
toks() { sed 's/.*"output_tokens":\(\[[0-9,]*\]\).*/\1/' "$@"; }
echo "{\"id\":\"p\",${req#\{}" | lora-serve --base base --adapters ads > pipe.json
check_eq "model selects the adapter: the same tokens as pipe mode" "$(toks one.json)" "$(toks pipe.json)"
curl -s -N $U/v1/completions -d "${req%\}},\"stream\":true}" > sse.txt
check "server-sent events end with [DONE]" sh -c "tail -2 sse.txt | grep -q '^data: \[DONE\]$' && test \$(grep -c '^data: {' sse.txt) -ge 2"
streamed=$(grep '^data: {' sse.txt | sed 's/.*"text":"\([^"]*\)".*/\1/' | tr -d '\n')
whole=$(sed 's/.*"choices":\[{[^]]*"text":"\([^"]*\)".*/\1/' one.json)
check_eq "the streamed pieces add up to the whole text" "$streamed" "$whole"

# OpenAI's defaults: a request without temperature is sampled at 1, and says so
curl -s $U/v1/completions -d '{"model":"a1","prompt":"Harbour 3 ","max_tokens":4}' > dflt.json
check "no temperature given: the event records temperature 1" grep -q '"sampling":{[^}]*"temperature":1[,}]' dflt.json
check "--help states the default temperature" sh -c "lora-serve -h | grep -q 'temperature 1'"
check "the man page states the default temperature" grep -q 'default 1 as in OpenAI' "$TRAIL_TOP/man/lora-serve.1"
id1=$(sed -n 's/^{"choices":.*"id":"\([^"]*\)".*/\1/p' dflt.json | head -1)
check "an HTTP id carries the start's nonce: cmpl-NONCE-N" sh -c "echo '$id1' | grep -Eq '^cmpl-[0-9a-f]{12}-[0-9]+$'"

# node's fetch, as an OpenAI client would call it
cat > client.mjs <<'EOF'
const [url, stream] = process.argv.slice(2);
const r = await fetch(url + "/v1/completions", {method: "POST", headers: {"Content-Type": "application/json"},
	body: JSON.stringify({model: "a1", prompt: "Harbour 3 ", max_tokens: 16, temperature: 0, stream: stream === "1"})});
if (stream !== "1") { const j = await r.json(); console.log(r.status, j.choices[0].text); }
else {
	let text = "", buf = "", done = false;
	const dec = new TextDecoder();
	for await (const chunk of r.body) {
		buf += dec.decode(chunk, {stream: true});
		let i;
		while ((i = buf.indexOf("\n\n")) >= 0) {
			const ev = buf.slice(0, i); buf = buf.slice(i + 2);
			if (ev === "data: [DONE]") done = true;
			else text += JSON.parse(ev.slice(6)).choices[0].text;
		}
	}
	console.log(r.status, text, done ? "done" : "cut");
}
EOF
check_eq "node fetch: a completion" "$(node client.mjs $U 0)" "200 $whole"
check_eq "node fetch: a stream read event by event" "$(node client.mjs $U 1)" "200 $whole done"

# errors, as JSON
st() { curl -s -o err.json -w '%{http_code}' "$@"; }
check_eq "unknown adapter: 404" "$(st $U/v1/completions -d '{"model":"nope","prompt":"x"}')" 404
check "a JSON error body" grep -q '"error":{"code":404,"message":"unknown model' err.json
check_eq "malformed JSON: 400" "$(st $U/v1/completions -d '{"model":')" 400
check "a JSON error body" grep -q '"error":{"code":400' err.json
check_eq "GET on completions: 405" "$(st $U/v1/completions)" 405
check_eq "no such endpoint: 404" "$(st $U/v2/nothing)" 404

# hostile requests: each a clean error, the server keeps serving
check_eq "oversized prompt: 413" "$(st $U/v1/completions -d "{\"model\":\"a1\",\"prompt\":\"$(head -c 70000 /dev/zero | tr '\0' x)\"}")" 413
check_eq "a prompt beyond the context: 413" "$(st $U/v1/completions -d "{\"model\":\"a1\",\"prompt\":\"$(head -c 500 /dev/zero | tr '\0' x)\"}")" 413
check_eq "huge max_tokens: 400" "$(st $U/v1/completions -d '{"model":"a1","prompt":"x","max_tokens":1000000000}')" 400
check_eq "negative temperature: 400" "$(st $U/v1/completions -d '{"model":"a1","prompt":"x","temperature":-1}')" 400
printf '{"model":"a1","prompt":"\xff\xfe"}' > bad-utf8.json
check_eq "invalid UTF-8: 400" "$(st $U/v1/completions --data-binary @bad-utf8.json)" 400
check_eq "a lone surrogate escape: 400" "$(st $U/v1/completions -d '{"model":"a1","prompt":"\ud800"}')" 400
awk 'BEGIN { printf "{\"model\":\"a1\",\"prompt\":"; for (i = 0; i < 100000; i++) printf "["; for (i = 0; i < 100000; i++) printf "]"; printf "}" }' > deep.json
check_eq "100,000 levels of nesting: 400" "$(st $U/v1/completions --data-binary @deep.json)" 400
head -c 10000000 /dev/zero | tr '\0' ' ' > big.json
check_eq "a 10 MB body: 413" "$(st $U/v1/completions --data-binary @big.json)" 413
check_eq "a 10 MB body sent chunked, no length given: 413" \
	"$(st $U/v1/completions -H 'Transfer-Encoding: chunked' --data-binary @big.json)" 413
# a slowloris: headers trickled, never finished
exec 3<>/dev/tcp/127.0.0.1/$port
printf 'POST /v1/completions HTTP/1.1\r\nHost: x\r\n' >&3
check_eq "while a slowloris connection hangs, requests are served" \
	"$(st $U/v1/completions -d '{"model":"a2","prompt":"x","max_tokens":2}')" 200
t0=$(date +%s)
timeout 10 cat <&3 >/dev/null
check "the slowloris connection is closed after the idle timeout" test $(($(date +%s) - t0)) -le 5
exec 3<&-
check_eq "and the server still serves" "$(st $U/v1/completions -d "$req")" 200

# metrics
curl -s $U/metrics > metrics.txt
check "/metrics: Prometheus text" sh -c "grep -q '^# TYPE lora_serve_requests_total counter' metrics.txt && grep -q '^lora_serve_responses_total{code=\"404\"} [1-9]' metrics.txt && grep -q '^lora_serve_adapter_load_seconds_count [1-9]' metrics.txt"

# a load test from a second process: no errors, memory stable
secs=20
[ -n "$TRAIL_FULL" ] && secs=300
cat > load.mjs <<'EOF'
const [url, secs] = [process.argv[2], +process.argv[3]];
const end = Date.now() + secs * 1000;
let ok = 0, bad = 0, tokens = 0;
async function worker(w) {
	for (let i = 0; Date.now() < end; i++) {
		const stream = (i + w) % 4 === 0;
		try {
			const r = await fetch(url + "/v1/completions", {method: "POST", body: JSON.stringify({
				model: "a" + ((i + w) % 3), prompt: "Harbour " + i, max_tokens: 8 + (i % 8),
				temperature: (i % 2) * 0.8, seed: i, stream})});
			const t = await r.text();
			if (r.status !== 200) { bad++; if (bad < 5) console.error(r.status, t.slice(0, 200)); continue; }
			if (stream) { if (!t.endsWith("data: [DONE]\n\n")) { bad++; continue; } }
			else tokens += JSON.parse(t).usage.completion_tokens;
			ok++;
		} catch (e) { bad++; if (bad < 5) console.error(String(e)); }
	}
}
await Promise.all(Array.from({length: 16}, (_, w) => worker(w)));
console.log(JSON.stringify({ok, bad, tokens}));
EOF
( while kill -0 $pid 2>/dev/null; do sed -n 's/^VmRSS:[^0-9]*\([0-9]*\).*/\1/p' /proc/$pid/status; sleep 1; done ) > rss.txt 2>/dev/null &
mon=$!
node load.mjs $U $secs > load.json 2> load.err
kill $mon 2>/dev/null
check "load test ($secs s, 16 concurrent clients): no errors" grep -q '"bad":0' load.json
check "load test: requests answered" sh -c "grep -q '\"ok\":[1-9]' load.json"
nr=$(wc -l < rss.txt)
first=$(head -n $((nr / 3)) rss.txt | sort -n | tail -1)
last=$(tail -n $((nr / 3)) rss.txt | sort -n | tail -1)
echo "# $(cat load.json); RSS kB: first third max $first, last third max $last"
if [ -n "${TRAIL_SANITIZER:-}" ]; then
	skip "resident memory stable over the load test" "$TRAIL_SANITIZER keeps freed memory in quarantine"
else
	check "resident memory stable over the load test (last third within 10% + 4 MB of the first)" \
		test "$last" -le $((first + first / 10 + 4096))
fi

# SIGTERM: the request in flight is finished, then exit 0
curl -s -o drain.json -w '%{http_code}' $U/v1/completions -d '{"model":"a0","prompt":"Harbour 1","max_tokens":100,"temperature":0,"ignore_eos":true}' > drain.code &
cpid=$!
sleep 0.3
kill -TERM $pid
wait $pid
rc=$?
wait $cpid
check_eq "SIGTERM: exit 0" "$rc" 0
check_eq "the request in flight was answered in full" "$(cat drain.code) $(sed 's/.*"completion_tokens":\([0-9]*\).*/\1/' drain.json)" "200 100"
check "and no new connections after" sh -c "! curl -s -m 2 $U/health"
check "every answered completion left its event in --events" \
	sh -c "test \$(wc -l < events.ndjson) -ge 5 && ! grep -qv '\"output_tokens\":\[' events.ndjson"

# a request waiting longer than the idle timeout for its turn is still answered
echo '{"n_layer":4,"n_head":4,"n_embd":256,"n_positions":256,"vocab_size":257}' > big.json
mf-train --init big.json --data a.ndjson --steps 1 --batch 1 --seq 16 --no-index --no-progress -o big >/dev/null
lora-serve --base big --listen 127.0.0.1:0 --max-batch 1 --timeout 1 > w.out 2> w.err &
pid=$!
for _ in $(seq 100); do grep -q port w.out 2>/dev/null && break; sleep 0.1; done
U=http://127.0.0.1:$(sed -n 's/.*"port":\([0-9]*\).*/\1/p' w.out)
t0=$(date +%s.%N)
for i in $(seq 1 8); do
	curl -s -o w$i.json -w '%{http_code}\n' $U/v1/completions -d '{"model":"base","prompt":"x","max_tokens":120,"ignore_eos":true}' > w$i.code &
done
wait $(jobs -p | grep -v "^$pid$") 2>/dev/null
echo "# 8 requests of 120 tokens one at a time: $(echo "$(date +%s.%N) - $t0" | bc) s, with a 1 s idle timeout"
check_eq "requests queued past the idle timeout are answered" "$(cat w*.code | sort | uniq -c | tr -s ' ')" " 8 200"
kill -TERM $pid
wait $pid
# 429 on a full queue
lora-serve --base big --listen 127.0.0.1:0 --max-batch 1 --max-queue 1 > q.out 2> q.err &
pid=$!
for _ in $(seq 100); do grep -q port q.out 2>/dev/null && break; sleep 0.1; done
U=http://127.0.0.1:$(sed -n 's/.*"port":\([0-9]*\).*/\1/p' q.out)
for i in 1 2 3 4 5 6; do
	curl -s -o q$i.json -w '%{http_code}\n' $U/v1/completions -d '{"model":"base","prompt":"x","max_tokens":120,"ignore_eos":true}' > q$i.code &
done
wait $(jobs -p | grep -v "^$pid$") 2>/dev/null
sleep 0.2
codes=$(cat q*.code | sort | uniq -c | tr -s ' ' | tr '\n' ',')
echo "# statuses: $codes"
check "a full queue answers 429, as JSON" sh -c "grep -l 429 q*.code >/dev/null && grep -q '\"code\":429' \$(grep -l 429 q*.code | sed 's/code/json/' | head -1)"
check "and the admitted ones 200" grep -q 200 q1.code q2.code q3.code q4.code q5.code q6.code
kill -TERM $pid
wait $pid
# ids are unique across restarts: a second server's first id is not the first one's
lora-serve --base base --listen 127.0.0.1:0 > r1.out 2>/dev/null &
p1=$!
for _ in $(seq 100); do grep -q port r1.out 2>/dev/null && break; sleep 0.1; done
curl -s http://127.0.0.1:$(sed -n 's/.*"port":\([0-9]*\).*/\1/p' r1.out)/v1/completions -d '{"model":"base","prompt":"x","max_tokens":1}' > r1.json
kill -TERM $p1; wait $p1
lora-serve --base base --listen 127.0.0.1:0 > r2.out 2>/dev/null &
p2=$!
for _ in $(seq 100); do grep -q port r2.out 2>/dev/null && break; sleep 0.1; done
curl -s http://127.0.0.1:$(sed -n 's/.*"port":\([0-9]*\).*/\1/p' r2.out)/v1/completions -d '{"model":"base","prompt":"x","max_tokens":1}' > r2.json
kill -TERM $p2; wait $p2
i1=$(grep -o '"id":"cmpl-[^"]*"' r1.json | head -1) i2=$(grep -o '"id":"cmpl-[^"]*"' r2.json | head -1)
check "each start's first id ends in -1" sh -c "echo '$i1 $i2' | grep -Eq -- '-1\" .*-1\"$'"
check "and the two differ" test -n "$i1" -a "$i1" != "$i2"
check_rc 69 "a port in use: 69" /usr/bin/python3 -c '
import socket, subprocess, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
sys.exit(subprocess.call(["lora-serve", "--base", "base", "--listen", "127.0.0.1:%d" % s.getsockname()[1]],
	stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))'
check_rc 64 "--listen without a port: 64" lora-serve --base base --listen 127.0.0.1
finish
