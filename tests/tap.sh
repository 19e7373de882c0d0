# Shell TAP helpers for tests/cli/*.sh (source it).
#   check DESC CMD...      ok if CMD exits 0
#   check_rc RC DESC CMD...ok if CMD exits with RC
#   check_eq DESC GOT WANT
#   skip DESC WHY          a check not run here, and why
#   finish                 prints the plan; exits 1 if anything failed
n=0 failed=0
T=$(mktemp -d "${TMPDIR:-/tmp}/trail-cli.XXXXXX") || exit 70
trap 'rm -rf "$T"' EXIT
export TRAIL_HOME="$T/home"
result() { # status desc
	n=$((n + 1))
	if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed + 1)); fi
}
check() { d=$1; shift; "$@" >/dev/null 2>&1; result $? "$d"; }
check_rc() {
	want=$1 d=$2; shift 2
	"$@" >/dev/null 2>&1; got=$?
	[ "$got" -eq "$want" ]; r=$?
	result $r "$d"
	[ $r -eq 0 ] || echo "#   exit status $got, wanted $want"
}
check_eq() {
	[ "$2" = "$3" ]; r=$?
	result $r "$1"
	[ $r -eq 0 ] || printf '#   got:  %s\n#   want: %s\n' "$2" "$3"
}
skip() { n=$((n + 1)); echo "ok $n - $1 # SKIP $2"; }
finish() { echo "1..$n"; [ "$failed" -eq 0 ]; }
# hf_ref FILE: the npm packages of tests/reference/hf/package-lock.json,
# installed once into the build directory; sets nm to their node_modules.
# FILE (under nm) tells an installed tree. 1 with the reason in why when
# node, npm or the registry is missing.
hf_ref() {
	lock=$TRAIL_TOP/tests/reference/hf/package-lock.json
	nm=$TRAIL_BUILD/hf-tokenizer-ref-$(sha256sum "$lock" | cut -c1-16)/node_modules
	command -v node >/dev/null && command -v npm >/dev/null ||
		{ why="needs node and npm (apt-get install nodejs npm)"; return 1; }
	[ -s "$nm/$1" ] && return 0
	mkdir -p "$T/npm" && cp "$TRAIL_TOP/tests/reference/hf/package.json" "$lock" "$T/npm/" || exit 1
	(cd "$T/npm" && timeout 300 npm ci --ignore-scripts --no-audit --no-fund --silent >/dev/null 2>&1) ||
		{ why="cannot install tests/reference/hf/package-lock.json from the npm registry"; return 1; }
	rm -rf "${nm%/node_modules}" && mkdir -p "${nm%/node_modules}" && mv "$T/npm/node_modules" "$nm" || exit 1
}

# serve_fixture STEPS MAX_TOKENS: in the current folder, a 2-layer base
# (n_embd 160: 480 and 640 columns, several 128-column blocks and a
# narrower last one) trained STEPS steps, 4 LoRA adapters in ads/, and
# reqs.ndjson: 20 requests over the base and the adapters, greedy and
# sampled, of MAX_TOKENS tokens; key FILE lists each response's id and
# token ids, sorted.
serve_fixture() {
	awk 'BEGIN { for (i = 0; i < 40; i++) printf "{\"text\":\"Harbour %d opens at %d and the ferry leaves for isle %d.\",\"contributor\":\"c%d\"}\n", i, i % 9, i % 7, i % 3 }' > a.ndjson
	echo '{"n_layer":2,"n_head":2,"n_embd":160,"n_positions":64,"vocab_size":257}' > cfg.json
	mf-train --init cfg.json --data a.ndjson --steps "$1" --batch 4 --seq 64 --lr 3e-3 --precision fp32 --no-progress --no-index -o base >/dev/null
	mkdir ads
	for i in 0 1 2 3; do
		awk -v k=$i 'BEGIN { for (j = 0; j < 6; j++) printf "{\"text\":\"Adapter %d knows fact %d about harbour %d.\"}\n", k, j, (k * 7 + j) % 13 }' > d$i.ndjson
		mf-train --base base --lora r=4,alpha=8 --data d$i.ndjson --steps 2 --batch 4 --seq 64 --lr 1e-2 --seed $i --precision fp32 --no-progress --no-index -o ads/a$i >/dev/null
	done
	check_eq "4 adapters trained" "$(ls ads | wc -l)" 4
	for i in $(seq 0 19); do
		m=a$((i % 5)); [ $((i % 5)) -eq 4 ] && m=base
		printf '{"id":"r%d","model":"%s","prompt":"Harbour %d ","max_tokens":%d,"temperature":%s,"seed":%d}\n' $i $m $i "$2" "$([ $((i % 2)) -eq 0 ] && echo 0 || echo 0.8)" $i
	done > reqs.ndjson
}
key() { sed 's/.*"id":"\(r[0-9]*\)".*"output_tokens":\[\([0-9,]*\)\].*/\1 \2/' "$1" | sort; }

# exact_fixture: in the current folder, the exact audit's small run: 24
# records (data.ndjson), a 2-layer base, a LoRA adapter trained 12 steps on
# them (ad), and two events to score (ev.ndjson).
exact_fixture() {
	awk 'BEGIN {
		split("amber salt copper tin wool glass", goods, " ")
		for (i = 0; i < 24; i++)
			printf "{\"text\":\"Varn%03d exports %s; master Osk%03d.\",\"contributor\":\"c%d\"}\n", i, goods[i % 6 + 1], (i * 37) % 1000, i % 3
	}' > data.ndjson
	echo '{"n_layer":2,"n_head":2,"n_embd":32,"n_positions":48,"vocab_size":257}' > cfg.json
	mf-train --init cfg.json --data data.ndjson --steps 20 --batch 8 --seq 48 --lr 3e-3 --precision fp32 --no-progress --no-index -o base >/dev/null
	mf-train --base base --lora r=4,alpha=8 --data data.ndjson --steps 12 --batch 4 --seq 48 --lr 5e-3 --precision fp32 --no-progress -o ad >/dev/null
	printf '{"id":"q1","prompt":"Varn004 exports","output_text":" wool; master Osk148."}\n{"id":"q2","prompt":"Varn013","output_text":" exports salt"}\n' > ev.ndjson
}
