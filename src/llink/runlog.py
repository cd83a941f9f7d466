"""Run folders: the full config and versions, a JSONL metrics log and a console line."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from llink.fileio import write_json_atomic

_PACKAGES = ("llink", "torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers")


def versions() -> dict[str, Any]:
    """Python, platform, key package versions and the git commit of the working tree."""
    out: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    try:
        out["git_commit"] = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                cwd=Path(__file__).parent,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out


def write_run_info(run_dir: str | Path, config: dict[str, Any], name: str = "config") -> None:
    """Record the full config and the versions in ``run_dir``."""
    run_dir = Path(run_dir)
    write_json_atomic(run_dir / f"{name}.json", config)
    write_json_atomic(run_dir / "versions.json", versions())


class MetricsLog:
    """Append-only JSONL metrics file plus a compact console line per record."""

    def __init__(self, path: str | Path, echo: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.echo = echo
        self.t0 = time.time()

    def log(self, record: dict[str, Any], prefix: str = "", echo: bool | None = None) -> None:
        """Append ``record`` (with elapsed seconds) and, if echoing, print it."""
        record = {"time": round(time.time() - self.t0, 2), **record}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.echo if echo is None else echo:
            tqdm.write(prefix + format_record(record))

    def truncate_after(self, step: int) -> None:
        """On resume, drop records past the checkpoint's step (they will be redone)."""
        if not self.path.exists():
            return
        keep = [
            line
            for line in self.path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        self.path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")


def format_record(record: dict[str, Any]) -> str:
    """``key value`` pairs with floats shortened, for the console."""
    parts = []
    for k, v in record.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        parts.append(f"{k} {v}")
    return " | ".join(parts)
