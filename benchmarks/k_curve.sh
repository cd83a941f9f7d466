#!/usr/bin/env bash
# Quality against the number of slots K, for pooled slots (the paper: one projected
# vector expanded into K) and token slots (K queries over the encoder's token states),
# both with literal pass-through (the default), at equal data, steps and batch (Stage B:
# 160 steps x 8 examples). Each K gets its own Stage A (K sets the reserved rows it
# trains). Every run is scored on the same items: answer NLL on 256 test pairs and on the
# 47 UDHR paragraphs (slots injected vs ablated), chrF on the 500-item test sample and on
# the test items whose reference has a number. Runs live in $OUT/<source>-k<K>/; the table
# goes to $RESULT (default benchmarks/results/k_curve.md, and .json; python -m
# benchmarks.k_curve).
#
#   bash benchmarks/k_curve.sh                      # trains everything (~2.5 h on 2 cores)
#   MAIN=runs/default bash benchmarks/k_curve.sh    # reuses a main-job run as tokens-k8
#   KS="1 8 16" bash benchmarks/k_curve.sh          # a subset of K
#   SEED=2 KS=8 bash benchmarks/k_curve.sh          # Stage B again with another seed
#       (runs <source>-k<K>-s2, on the same Stage A): how far one run can be trusted
# Extra arguments are overrides for every run. Finished steps are skipped on a rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/kcurve}
RESULT=${RESULT:-benchmarks/results/k_curve.md}
MAIN=${MAIN:-}
KS=${KS:-8 1 16 4 2}
SOURCES=${SOURCES:-pooled tokens}
UDHR=src/llink/corpora/eval/udhr-en-km.jsonl
EXTRA=("$@")
log() { echo "[$(date +%H:%M:%S)] $*"; }
llink() { command llink "$@" "${EXTRA[@]}" --quiet; }  # overrides stay contiguous

mkdir -p "$OUT"
command llink models prepare
if [ -n "$MAIN" ]; then  # the main job's run is tokens-k8, its Stage A is a-k8
  mkdir -p "$OUT/a-k8"
  [ -d "$OUT/a-k8/stage_a" ] || cp -r "$MAIN/stage_a" "$OUT/a-k8/stage_a"
  ln -sfn "$(realpath "$MAIN")" "$OUT/tokens-k8"
fi
for k in $KS; do
  if [ ! -f "$OUT/a-k$k/stage_a/stage_a.json" ]; then
    log "Stage A K=$k"; llink train stage-a run_dir="$OUT/a-k$k" model.num_slots="$k"
  fi
  for src in $SOURCES; do
    run="$OUT/$src-k$k${SEED:+-s$SEED}"
    set=(model.num_slots="$k" model.slot_source="$src" run_dir="$run" ${SEED:+seed=$SEED})
    mkdir -p "$run"
    [ -d "$run/stage_a" ] || cp -r "$OUT/a-k$k/stage_a" "$run/stage_a"
    if [ ! -f "$run/stage_b/llink.json" ]; then
      log "Stage B $src K=$k"; llink train stage-b "${set[@]}"
    fi
    log "eval $src K=$k"
    [ -f "$run/eval/nll.json" ] || llink eval nll "${set[@]}"
    [ -f "$run/eval/nll-udhr-en-km.json" ] || llink eval nll --pairs "$UDHR" "${set[@]}"
    llink eval gen --systems llink "${set[@]}"
    llink eval gen --systems llink --numbers "${set[@]}"
  done
done
python -m benchmarks.k_curve "$OUT" --out "$RESULT"
log done
