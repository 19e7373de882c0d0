#!/bin/bash
# examples/slurm on a real one-node Slurm cluster (make check-full, as
# root): munged, slurmctld and slurmd started here with their keys, state,
# spool, sockets and logs in the test's directory; run.sh submits index
# building, scoring, settlement and validation as job arrays (3 and 7
# shards) with dependent merge jobs; the results equal the one-machine
# runs byte for byte. Only the daemons started here are stopped, by the
# pids they recorded.
. "$TRAIL_TOP/tests/tap.sh"
cd "$T" || exit 70
if [ -z "${TRAIL_FULL:-}" ]; then skip "Slurm array jobs" "TRAIL_FULL=1 (make check-full) runs them"; finish; exit; fi
for p in munged slurmctld slurmd sbatch squeue sinfo scontrol; do
	command -v $p >/dev/null 2>&1 || PATH=$PATH:/usr/sbin command -v $p >/dev/null 2>&1 || {
		skip "Slurm array jobs" "$p is not installed (Debian: slurm-wlm, munge)"; finish; exit; }
done
if [ "$(id -u)" != 0 ]; then skip "Slurm array jobs" "slurmd runs jobs as root here: run as root"; finish; exit; fi
PATH=$PATH:/usr/sbin
D=$T/slurm
mkdir -p "$D/munge" "$D/state" "$D/spool" "$D/run" "$D/log" && chmod 0700 "$D/munge"
pids= stopped=
stop() { # the daemons started here, by their recorded pids (once); never by name
	[ -n "$stopped" ] && return
	stopped=1
	for f in "$D"/run/slurmd-*.pid "$D/run/slurmctld.pid" "$D/munge/pid"; do
		[ -s "$f" ] && p=$(cat "$f") && kill "$p" 2>/dev/null && pids="$pids $p"
	done
	for _ in $(seq 50); do
		alive=; for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
		[ -z "$alive" ] && break
		sleep 0.2
	done
	for p in $pids; do kill -9 "$p" 2>/dev/null; done
}
trap 'stop; rm -rf "$T"' EXIT

# the one-machine runs
awk 'BEGIN { for (i = 0; i < 41; i++) printf "{\"text\":\"The island of Varn%03d exports salt and its harbour master is Osk%03d.\",\"contributor\":\"c%d\"}\n", i, (i * 37) % 1000, i % 3 }' > data.ndjson
echo '{"n_layer":1,"n_head":2,"n_embd":16,"n_positions":64,"vocab_size":257}' > cfg.json
mf-train --init cfg.json --data data.ndjson --steps 5 --batch 8 --seq 64 --lr 3e-3 --no-progress --no-index -o base >/dev/null
for i in 1 2 3 4 5 6 7 8 9; do
	printf '{"id":"e%d","prompt":"The island of Varn00%d","output_text":" exports salt and its harbour master is Osk%d.","usage":{"prompt_tokens":%d,"completion_tokens":%d}}\n' $i $i $((i * 37)) $((10 + i)) $((3 * i))
done > ev.ndjson
args="--model $T/base --data $T/data.ndjson"
attr-score --build-index $args --proj 4,4 --batch 4 -i whole.idx 2>/dev/null
attr-score $args -i whole.idx --top 5 < ev.ndjson > whole.out
cat > pol.json <<'J'
{"fee_per_1k_prompt": 137, "fee_per_1k_completion": 311,
 "split_bps": {"platform": 1003, "model": 1997, "stakers": 1500, "contributors": 5500},
 "stakes": {"c1": 500}}
J
attr-settle --dry-run --policy pol.json --epoch E1 whole.out > settle.out
text() { awk -v i="$1" -v w="$2" 'BEGIN { x = (i + 1) * 40503; s = "Record " i " of the survey:"
	for (k = 0; k < 45; k++) { x = (x * 69069 + 1) % 4294967296; s = s " " (k == 20 && w != "" ? w : "word" int(x / 65536) % 5000) (k % 9 == 8 ? "." : "") }
	print s }'; }
for i in $(seq 0 11); do printf '{"text":"%s"}\n' "$(text $i)"; done > a.ndjson
{ printf '{"text":"%s"}\n' "$(text 2 changed)"; for i in $(seq 20 27); do printf '{"text":"%s"}\n' "$(text $i)"; done; printf '{"text":"%s"}\n' "$(text 9)"; } > b.ndjson
datanet-validate --no-progress "$T/a.ndjson" "$T/b.ndjson" > verdicts.out 2> verdicts.err
echo $? > verdicts.exit
check_eq "the one pass finds the copies across files" "$(grep -c '"rule":"near-duplicate"\|"rule":"duplicate"' verdicts.out)" 2

# the cluster
dd if=/dev/urandom bs=1 count=1024 of="$D/munge/munge.key" 2>/dev/null && chmod 0400 "$D/munge/munge.key"
munged -f --socket="$D/munge/sock" --key-file="$D/munge/munge.key" --log-file="$D/munge/log" \
	--pid-file="$D/munge/pid" --seed-file="$D/munge/seed"
check "munged starts" test -s "$D/munge/pid"
H=$(hostname -s)
port=$((20000 + $$ % 20000))
cat > "$D/slurm.conf" <<EOF
ClusterName=trail
SlurmctldHost=$H
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$D/munge/sock
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
MinJobAge=3600
ReturnToService=2
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool/%n
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd-%n.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd-%n.log
NodeName=$H CPUs=2 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$D/slurm.conf
slurmctld -c && slurmd -c
for _ in $(seq 100); do [ "$(sinfo -h -o %T 2>/dev/null)" = idle ] && break; sleep 0.2; done
check_eq "slurmctld and slurmd start; the node is idle" "$(sinfo -h -o %T 2>/dev/null)" idle

for ns in 3 7; do
	w=$T/work$ns
	timeout 600 "$TRAIL_TOP/examples/slurm/run.sh" -W -w "$w" -n $ns -m "$T/base" -d "$T/data.ndjson" -a "--proj 4,4 --batch 4" \
		-e "$T/ev.ndjson" -t 5 -p "$T/pol.json" -E E1 -s --dry-run -v "$T/a.ndjson $T/b.ndjson" > "jobs$ns" 2> "run$ns.err"
	check_eq "$ns shards: every job of the chain completes" "$?" 0
	[ -s "run$ns.err" ] && sed 's/^/#   /' "run$ns.err" | head -5
	check_eq "$ns shards: 8 jobs, 4 of them arrays of $ns tasks" "$(wc -l < "jobs$ns" | tr -d ' ') $(ls "$w"/log | wc -l | tr -d ' ')" "8 $((4 * ns + 4))"
	check "$ns shards: the index, byte for byte" sh -c "cmp '$w/attribution.idx' whole.idx && cmp '$w/attribution.idx.span' whole.idx.span"
	check "$ns shards: the attribution records" cmp "$w/attributions.ndjson" whole.out
	check "$ns shards: the settlement" cmp "$w/settlement.ndjson" settle.out
	check "$ns shards: the verdicts, stderr and exit status" sh -c "cmp '$w/verdicts.ndjson' verdicts.out && cmp '$w/verdicts.err' verdicts.err && cmp '$w/verdicts.exit' verdicts.exit"
done
stop
dead=0
for p in $pids; do kill -0 "$p" 2>/dev/null && dead=1; done
check_eq "the daemons started here are stopped" "$dead $(echo $pids | wc -w | tr -d ' ')" "0 3"
finish
