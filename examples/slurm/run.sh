#!/bin/sh
# Submit trail's sharded chain to Slurm: attribution index shards -> index
# merge -> score partials -> score merge -> settlement partials ->
# settlement merge, and validation partials -> validation merge, each array
# over N shards and each merge held with --dependency=afterok until its
# array has succeeded. Prints "NAME JOBID" per job; with -W waits for all
# and exits 1 if one failed. Every path is taken as seen from the nodes.
#
#   run.sh -w WORK -n N [-W]
#          [-m MODEL -d DATA [-a 'ATTR-SCORE-ARGS'] [-e EVENTS [-t TOP]
#           [-p POLICY -E EPOCH [-s 'ATTR-SETTLE-MERGE-ARGS']]]]
#          [-v 'DATANET-VALIDATE-FILES' [-V 'DATANET-VALIDATE-OPTS']]
#
# -a is given to the index shards (--proj, --batch: how the index is built),
# -t to the score merge, -s to the settlement merge (--dry-run, or --home DIR
# --key KEYFILE to record it); -V to both validation steps (the policy).
# Outputs in WORK: attribution.idx (+ .span), attributions.ndjson,
# settlement.ndjson, verdicts.ndjson (+ .err, .exit); logs in WORK/log.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
n=4 work= model= data= attr= events= top=5 policy= epoch= settle= vfiles= vopts= wait=0
while getopts w:n:m:d:a:e:t:p:E:s:v:V:W o; do
	case $o in
	w) work=$OPTARG ;; n) n=$OPTARG ;; m) model=$OPTARG ;; d) data=$OPTARG ;; a) attr=$OPTARG ;;
	e) events=$OPTARG ;; t) top=$OPTARG ;; p) policy=$OPTARG ;; E) epoch=$OPTARG ;; s) settle=$OPTARG ;;
	v) vfiles=$OPTARG ;; V) vopts=$OPTARG ;; W) wait=1 ;;
	*) sed -n '9,13s/^# \{0,1\}//p' "$0" >&2; exit 64 ;;
	esac
done
if [ -z "$work" ] || [ -z "$model$vfiles" ] || { [ -n "$model" ] && [ -z "$data" ]; } ||
	{ [ -n "$policy" ] && { [ -z "$events" ] || [ -z "$epoch" ]; }; }; then
	sed -n '9,13s/^# \{0,1\}//p' "$0" >&2
	exit 64
fi
mkdir -p "$work/log"
work=$(cd "$work" && pwd)
jobs=
submit() { # NAME AFTER SCRIPT ARGS...: sbatch, holding it until AFTER (a job id, or "") has succeeded
	name=$1 after=$2; shift 2
	j=$(sbatch --parsable --chdir="$work" --output="$work/log/%x-%j.out" --kill-on-invalid-dep=yes \
		${after:+--dependency=afterok:$after} "$@")
	j=${j%%;*}
	echo "$name $j"
	jobs="$jobs $j"
}
array="--array=0-$((n - 1))"
if [ -n "$model" ]; then
	# shellcheck disable=SC2086 # the -a and -t arguments are lists of words
	submit index "" "$array" "$here/index.sbatch" "$work" --model "$model" --data "$data" $attr
	submit index-merge "$j" "$here/index-merge.sbatch" "$work" --model "$model" --data "$data"
	if [ -n "$events" ]; then
		submit score "$j" "$array" "$here/score.sbatch" "$work" "$events" --model "$model" --data "$data"
		# shellcheck disable=SC2086
		submit score-merge "$j" "$here/score-merge.sbatch" "$work" --model "$model" --data "$data" --top "$top"
		if [ -n "$policy" ]; then
			submit settle "$j" "$array" "$here/settle.sbatch" "$work" "$policy" "$epoch"
			# shellcheck disable=SC2086
			submit settle-merge "$j" "$here/settle-merge.sbatch" "$work" "$policy" "$epoch" $settle
		fi
	fi
fi
if [ -n "$vfiles" ]; then
	# shellcheck disable=SC2086
	submit validate "" "$array" "$here/validate.sbatch" "$work" $vopts $vfiles
	# shellcheck disable=SC2086
	submit validate-merge "$j" "$here/validate-merge.sbatch" "$work" $vopts
fi
[ "$wait" = 1 ] || exit 0
# every job leaves the queue: done, failed, or cancelled because what it waited for failed
# shellcheck disable=SC2086
while [ -n "$(squeue -h -o %i -j "$(echo $jobs | tr ' ' ,)" 2>/dev/null)" ]; do sleep 1; done
bad=0
for j in $jobs; do
	s=$(scontrol -o show job "$j" 2>/dev/null | tr ' ' '\n' | sed -n 's/^JobState=//p' | sort -u | tr '\n' ' ')
	case "$s" in "COMPLETED ") ;; *) echo "job $j: ${s:-gone}" >&2; bad=1 ;; esac
done
exit $bad
