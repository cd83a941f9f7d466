#!/usr/bin/env bash
# Stage A teacher targets and Stage B slot designs compared at equal data, steps and
# batch, on the offline default (2 CPU cores: ~75 min). Writes runs/variants/<name>/ and
# the tables in benchmarks/results/slot_variants.md (python -m benchmarks.compare_gen).
# Usage: bash benchmarks/slot_variants.sh [KEY=VALUE ...]   (extra overrides for every run)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/variants}
UDHR=src/llink/corpora/eval/udhr-en-km.jsonl
# the Stage B settings every variant shares (equal steps, batch, prompt)
B="stage_b.steps=160 stage_b.micro_batch=8 stage_b.system_prompt= stage_b.contrast=omit"
log() { echo "[$(date +%H:%M:%S)] $*"; }
stage_a() {  # name, overrides...
  local name=$1; shift
  if [ ! -f "$OUT/$name/stage_a/stage_a.json" ]; then
    log "Stage A $name"; llink train stage-a --quiet run_dir="$OUT/$name" "$@" "${EXTRA[@]}"
  fi
  llink eval retrieval --quiet --no-baselines run_dir="$OUT/$name" "$@" "${EXTRA[@]}"
  llink eval retrieval --quiet --no-baselines --pairs "$UDHR" run_dir="$OUT/$name" "$@" "${EXTRA[@]}"
}
stage_b() {  # name, stage-a name, overrides...
  local name=$1 from=$2; shift 2
  mkdir -p "$OUT/$name"
  [ -d "$OUT/$name/stage_a" ] || cp -r "$OUT/$from/stage_a" "$OUT/$name/stage_a"
  if [ ! -f "$OUT/$name/stage_b/llink.json" ]; then
    log "Stage B $name"; llink train stage-b --quiet run_dir="$OUT/$name" $B "$@" "${EXTRA[@]}"
  fi
  log "gen $name"
  llink eval gen --quiet --systems llink run_dir="$OUT/$name" $B "$@" "${EXTRA[@]}"
  llink eval gen --quiet --systems llink --pairs "$UDHR" run_dir="$OUT/$name" $B "$@" "${EXTRA[@]}"
  llink eval gen --quiet --systems llink --numbers run_dir="$OUT/$name" $B "$@" "${EXTRA[@]}"
}
EXTRA=("$@")
L10="stage_a.teacher_layer=10 stage_a.teacher_pooling=mean"
llink models prepare
stage_a a-paper
stage_a a-l10 $L10
stage_a a-l10-en $L10 stage_a.english_fraction=0.3
stage_b pooled a-l10 $L10
stage_b tokens a-l10 $L10 model.slot_source=tokens
stage_b tokens-lit a-l10 $L10 model.slot_source=tokens model.literals=true
stage_b pooled-lit a-l10 $L10 model.literals=true
stage_b all-tokens-lit a-l10 $L10 model.slot_source=all_tokens model.num_slots=64 model.literals=true
# the direct fine-tuning baseline and the base decoder, same items
mkdir -p "$OUT/baseline"
if [ ! -f "$OUT/baseline/baseline/baseline.json" ]; then
  log "baseline"; llink train baseline --quiet run_dir="$OUT/baseline" $B "${EXTRA[@]}"
fi
log "gen baseline, base"
llink eval gen --quiet --systems baseline,base --model "$OUT/pooled/stage_b" run_dir="$OUT/baseline" $B "${EXTRA[@]}"
llink eval gen --quiet --systems baseline,base --model "$OUT/pooled/stage_b" --pairs "$UDHR" run_dir="$OUT/baseline" $B "${EXTRA[@]}"
llink eval gen --quiet --systems baseline,base --model "$OUT/pooled/stage_b" --numbers run_dir="$OUT/baseline" $B "${EXTRA[@]}"
python -m benchmarks.compare_gen "$OUT" --out benchmarks/results/slot_variants.md
log done
