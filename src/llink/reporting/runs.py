"""Reading what a run folder holds: training logs per stage and evaluation results.

A run folder (``run_dir``) is written by the training and evaluation commands:
``<stage>.metrics.jsonl`` per training stage, ``<stage>.summary.json``,
``config.json``, ``versions.json``, ``data.json`` and ``eval/*.json``. Every reader
here tolerates a missing file (a stage or evaluation that was not run) and names
the file and line of a malformed one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llink.storage.fileio import read_json_object, read_jsonl

#: Training stages that write ``<stage>.metrics.jsonl``, in report order.
STAGES: tuple[str, ...] = ("stage_a", "stage_b", "baseline")

#: Evaluation result files under ``run_dir/eval``, in report order.
EVALS: tuple[str, ...] = ("retrieval", "nll", "gen", "judge", "tokens", "numbers")


@dataclass
class RunFolder:
    """Everything a report needs from one run folder, loaded once."""

    path: Path
    config: dict[str, Any] | None = None
    versions: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    logs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)
    generations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    def is_empty(self) -> bool:
        return not (self.config or self.logs or self.evals)


def load_run(run_dir: str | Path) -> RunFolder:
    """Load a run folder; raises ``FileNotFoundError`` if it does not exist."""
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {path} does not exist (train with `llink run "
                                f"run_dir={path}` or pass an existing run folder)")
    run = RunFolder(path, *(read_json_object(path / f"{name}.json")
                            for name in ("config", "versions", "data")))
    for stage in STAGES:
        recs = read_jsonl(path / f"{stage}.metrics.jsonl")
        if recs:
            run.logs[stage] = recs
        summary = read_json_object(path / f"{stage}.summary.json")
        if summary:
            run.summaries[stage] = summary
    for name in EVALS:
        obj = read_json_object(path / "eval" / f"{name}.json")
        if obj is not None:
            run.evals[name] = obj
    for f in sorted((path / "eval").glob("nll-*.json")):  # answer NLL on other pair files
        obj = read_json_object(f)
        if obj is not None:
            run.evals[f.stem] = obj
    gen_dir = path / "eval" / "gen"
    if gen_dir.is_dir():
        for f in sorted(gen_dir.glob("*.jsonl")):
            run.generations[f.stem] = read_jsonl(f)
    return run


def series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the records that carry ``key`` (and a step)."""
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, int | float) and "step" in r:
            xs.append(float(r["step"]))
            ys.append(float(v))
    return xs, ys
