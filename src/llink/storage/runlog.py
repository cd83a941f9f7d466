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

from llink.storage.fileio import JsonFileError, write_json_atomic, write_text_atomic

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
        """On resume, drop records past the checkpoint's step (they will be redone).

        A torn last line (what a kill during a write leaves) is dropped with a note; a
        malformed line elsewhere raises :class:`~llink.storage.fileio.JsonFileError` naming it.
        """
        if not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        keep = []
        for no, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                if no == len(lines):
                    print(f"{self.path}:{no}: dropped a torn last line (left by an "
                          "interrupted write)")
                    continue
                raise JsonFileError(
                    f"{self.path}:{no}: not valid JSON ({e.msg}); delete that line, or start "
                    "without --resume"
                ) from None
            if not isinstance(rec, dict):
                raise JsonFileError(f"{self.path}:{no}: expected a JSON object per line; delete "
                                    "that line, or start without --resume")
            if rec.get("step", 0) <= step:
                keep.append(line)
        write_text_atomic(self.path, "".join(k + "\n" for k in keep))


def format_record(record: dict[str, Any]) -> str:
    """``key value`` pairs with floats shortened, for the console."""
    parts = []
    for k, v in record.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        parts.append(f"{k} {v}")
    return " | ".join(parts)
