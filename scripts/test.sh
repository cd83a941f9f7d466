#!/usr/bin/env bash
# Quick start, command 2: install everything, then run the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# the tiny-model tests must run here: a missing tokenizer package fails them (tests/conftest.py)
export LLINK_REQUIRE_TINY="${LLINK_REQUIRE_TINY:-1}"
.venv/bin/ruff check src tests benchmarks
exec .venv/bin/python -m pytest -q "$@"
