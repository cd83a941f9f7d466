#!/usr/bin/env bash
# What sharing one model among languages costs or gains: the multilingual model
# (configs/multilingual.yaml) beside the Khmer-only main job, on the same held-out items.
#
#   MULTI=runs/multilingual KHMER=runs/quickstart bash benchmarks/multilingual_vs_khmer.sh
#
# MULTI: a finished `llink run --config configs/multilingual.yaml`; KHMER: a finished
# main job (`bash scripts/main.sh`). Writes $OUT/{multi,khmer}/eval/*.json and the tables
# benchmarks/results/multilingual_vs_khmer.md (python -m benchmarks.compare_languages):
#   - retrieval of both Stage A projectors on every language's 200 test pairs (the Khmer
#     projector on the other languages is a zero-shot reference);
#   - on the 200 Khmer test pairs of the multilingual config: Khmer retrieval, the answer
#     NLL with slots injected / ablated, and chrF of both models and the base decoder.
set -euo pipefail
cd "$(dirname "$0")/.."
MULTI=${MULTI:?set MULTI to the multilingual run folder}
KHMER=${KHMER:?set KHMER to the Khmer-only main-job run folder}
OUT=${OUT:-runs/multilingual-vs-khmer}
ML=configs/multilingual.yaml
KM=(data.pairs=builtin:en-km "data.zero_shot=[]")
log() { echo "[$(date +%H:%M:%S)] $*"; }

for who in multi khmer; do
  src=$MULTI; [ $who = khmer ] && src=$KHMER
  log "$who: retrieval on every language's test pairs"
  llink eval retrieval --quiet --config $ML --stage-a "$src/stage_a" --no-baselines \
    run_dir="$OUT/$who"
  log "$who: Khmer NLL and generation on the 200 Khmer test pairs"
  llink eval nll --quiet --config $ML --model "$src/stage_b" --limit 200 "${KM[@]}" \
    run_dir="$OUT/$who-km"
  systems=llink; [ $who = multi ] && systems=llink,base
  llink eval gen --quiet --config $ML --model "$src/stage_b" --systems $systems --n 200 \
    "${KM[@]}" run_dir="$OUT/$who-km"
done
python -m benchmarks.compare_languages "$OUT" --out benchmarks/results/multilingual_vs_khmer.md
