"""What every benchmark shares: the machine line and writing results."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"


def machine_description() -> str:
    """Processor architecture, torch threads and device, for the results' Machine line."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return f"{platform.machine()}, {torch.get_num_threads()} torch threads, {device}"


def write_results(name: str, res: dict[str, Any], markdown: str) -> None:
    """Write ``results/NAME.json`` and ``results/NAME.md``."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
