#!/usr/bin/env bash
# Quick start, command 1: install everything, then run the main job on the offline
# default (data -> models -> Stage A -> retrieval table). Extra arguments are passed
# to `llink run`, e.g. `bash scripts/main.sh stage_a.steps=2000`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/llink run "$@"
