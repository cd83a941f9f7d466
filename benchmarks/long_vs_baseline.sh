#!/usr/bin/env bash
# The long recipe (configs/offline-long.yaml: Stage A on all 34,354 pairs, Stage B one
# pass of 4,295 steps x 8) against the direct fine-tuning baseline at the same data,
# steps, batch and schedule, then both and the base decoder evaluated on the same 500
# test items with paired tests (the run folder's eval/gen.json). On 2 CPU cores the
# baseline is the long part (~11 s a step alone: it reads ~110 Khmer tokens per example
# where LLINK reads ~10 slots), so the two trainings run side by side, one thread each
# (two single-threaded jobs do ~14% more work than one job on two threads here); when
# LLINK is done, the baseline goes on with every thread.
#
#   bash benchmarks/long_vs_baseline.sh          # start, or continue after any stop
#
# Both keep their models of steps 1,250, 2,500 and 3,750 (stage_b.snapshot_every, in
# $RUN/stage_b-stepN and $RUN/baseline-stepN), for comparisons at equal steps on the way;
# the script evaluates each pair when both trainings are done ($RUN/at-N/eval/gen.json).
# Everything is resumable: Ctrl-C (or SIGTERM to both jobs) saves each training at its
# current step, and rerunning the script continues where they stopped. Extra arguments
# are overrides for every command. Logs: $RUN/long-llink.log, $RUN/long-baseline.log.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-configs/offline-long.yaml}
RUN=${RUN:-runs/offline-long}
EXTRA=("$@")
log() { echo "[$(date +%H:%M:%S)] $*"; }
resume_if() { [ -d "$RUN/$1-state" ] && echo --resume || true; }

mkdir -p "$RUN"
llink models prepare
log "training LLINK and the baseline side by side (logs in $RUN/long-*.log)"
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 llink train baseline --config "$CONFIG" \
  run_dir="$RUN" "${EXTRA[@]}" $(resume_if baseline) >> "$RUN/long-baseline.log" 2>&1 &
baseline=$!
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 llink run --config "$CONFIG" run_dir="$RUN" \
  "${EXTRA[@]}" --resume >> "$RUN/long-llink.log" 2>&1 &
main=$!
# a stop reaches both jobs, which save their state at the step under way
trap 'kill -TERM $baseline $main 2>/dev/null; wait; exit 130' INT TERM
wait $main || { code=$?; log "LLINK stopped (exit $code); stopping the baseline"
  kill -TERM $baseline 2>/dev/null; wait; exit $code; }
# LLINK finishes hours before the baseline: stop the single-threaded baseline (it saves
# its state at the step under way) and continue it on every core
log "LLINK done; the baseline continues on all cores"
kill -TERM $baseline 2>/dev/null || true
wait $baseline || true
llink train baseline --config "$CONFIG" run_dir="$RUN" "${EXTRA[@]}" \
  $(resume_if baseline) >> "$RUN/long-baseline.log" 2>&1 &
baseline=$!
wait $baseline
trap - INT TERM
log "evaluating llink, base and baseline on the same items"
llink run --config "$CONFIG" run_dir="$RUN" eval.baseline=true "${EXTRA[@]}" --resume
log "done: $RUN/eval/gen.json"
# the learning curve at equal steps: each pair of snapshots on the same 500 items (the
# base decoder does not train: its row is the final evaluation's)
for kept in "$RUN"/stage_b-step*; do
  step=${kept##*-step}
  [ -d "$RUN/baseline-step$step" ] || continue
  log "evaluating the models of step $step"
  llink eval gen --config "$CONFIG" run_dir="$RUN/at-$step" --systems llink,baseline \
    --model "$kept" --baseline "$RUN/baseline-step$step" "${EXTRA[@]}"
done
log "done: $RUN/at-*/eval/gen.json"
