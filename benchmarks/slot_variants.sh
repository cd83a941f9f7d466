#!/usr/bin/env bash
# Stage A teacher targets and Stage B slot designs against the offline default, at equal
# data, steps and batch (Stage B: 160 steps x 8 examples, the default's). Each run lives
# in $OUT/<name>/; the tables go to benchmarks/results/slot_variants.{md,json}
# (python -m benchmarks.compare_gen). Every run is scored on the same held-out items:
# the 500-item test sample, the 91 test items whose reference has a number, and the
# 59 UDHR paragraphs (out of domain).
#
#   bash benchmarks/slot_variants.sh                 # trains everything (~2 h on 2 cores)
#   MAIN=runs/quickstart bash benchmarks/slot_variants.sh
#       reuses a main-job run made with `eval.baseline=true` (its Stage A, its LLINK
#       model as the row "default" and its direct fine-tuning baseline)
# Extra arguments are overrides for every run. Finished steps are skipped on a rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/variants}
MAIN=${MAIN:-}
UDHR=src/llink/corpora/eval/udhr-en-km.jsonl
EXTRA=("$@")
log() { echo "[$(date +%H:%M:%S)] $*"; }
llink() { command llink "$@" "${EXTRA[@]}" --quiet; }  # overrides stay contiguous

gens() {  # run folder, systems, [--model DIR]: the three pools
  local dir=$1 systems=$2; shift 2
  llink eval gen --systems "$systems" "$@" run_dir="$dir"
  llink eval gen --systems "$systems" --numbers "$@" run_dir="$dir"
  llink eval gen --systems "$systems" --pairs "$UDHR" "$@" run_dir="$dir"
}
stage_a() {  # name, overrides...: Stage A and its retrieval on the test and UDHR pools
  local name=$1; shift
  if [ ! -f "$OUT/$name/stage_a/stage_a.json" ]; then
    log "Stage A $name"; llink train stage-a run_dir="$OUT/$name" "$@"
  fi
  llink eval retrieval --no-baselines run_dir="$OUT/$name" "$@"
  llink eval retrieval --no-baselines --pairs "$UDHR" run_dir="$OUT/$name" "$@"
}
stage_b() {  # name, overrides...: Stage B on Stage A run $FROM (default a-default), then generation
  local name=$1; shift
  mkdir -p "$OUT/$name"
  [ -d "$OUT/$name/stage_a" ] || cp -r "$OUT/${FROM:-a-default}/stage_a" "$OUT/$name/stage_a"
  if [ ! -f "$OUT/$name/stage_b/llink.json" ]; then
    log "Stage B $name"; llink train stage-b run_dir="$OUT/$name" "$@"
  fi
  log "gen $name"; gens "$OUT/$name" llink "$@"
}

mkdir -p "$OUT"
command llink models prepare
if [ -n "$MAIN" ]; then  # the main job's run: Stage A, LLINK (default) and baseline
  mkdir -p "$OUT/a-default"
  [ -d "$OUT/a-default/stage_a" ] || cp -r "$MAIN/stage_a" "$OUT/a-default/stage_a"
  ln -sfn "$(realpath "$MAIN")" "$OUT/default"
else
  stage_a a-default
  stage_b default
fi
# the direct fine-tuning baseline and the base decoder, on the same items
if [ -z "$MAIN" ] && [ ! -f "$OUT/default/baseline/baseline.json" ]; then
  log "baseline"; llink train baseline run_dir="$OUT/default"
fi
log "gen default, base, baseline"; gens "$OUT/default" llink,base,baseline
stage_a a-default
stage_b pooled model.slot_source=pooled model.literals=false
stage_b pooled-literals model.slot_source=pooled model.literals=true
stage_b tokens-no-literals model.literals=false
stage_a a-paper stage_a.teacher_layer=-1 stage_a.teacher_pooling=foreign_emb
stage_a a-k64 model.num_slots=64  # K sets the reserved rows Stage A trains
FROM=a-k64 stage_b all-tokens model.slot_source=all_tokens model.num_slots=64
stage_b detached-contrast stage_b.contrast=detached
stage_a a-english stage_a.english_fraction=0.3
python -m benchmarks.compare_gen "$OUT" --out benchmarks/results/slot_variants.md
log done
