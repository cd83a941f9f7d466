"""``llink logs``: summarise the JSONL training logs of one or many runs into CSV and plots."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from llink.reporting import plots
from llink.reporting.runs import STAGES, RunFolder, load_run
from llink.storage.fileio import write_text_atomic

#: Per stage: the headline keys compared across runs (last value, and best for dev keys).
HEADLINE: dict[str, list[str]] = {
    "stage_a": ["loss", "tau", "dev_R@1", "dev_MRR", "dev_mean_rank"],
    "stage_b": ["nll", "dev_nll_injected", "dev_nll_ablated", "dev_usage_gap"],
    "baseline": ["loss", "dev_nll"],
}
#: Dev keys where lower is better (all others: higher is better).
_LOWER_BETTER = ("nll", "loss", "rank")


def _last(records: list[dict[str, Any]], key: str) -> float | None:
    for r in reversed(records):
        if isinstance(r.get(key), int | float):
            return float(r[key])
    return None


def _best(records: list[dict[str, Any]], key: str) -> float | None:
    vals = [float(r[key]) for r in records if isinstance(r.get(key), int | float)]
    if not vals:
        return None
    return min(vals) if any(s in key for s in _LOWER_BETTER) else max(vals)


def summary_rows(runs: list[RunFolder]) -> list[dict[str, Any]]:
    """One row per (run, stage): steps, wall time, last value of each headline key, best dev."""
    rows = []
    for run in runs:
        for stage in STAGES:
            recs = run.logs.get(stage)
            if not recs:
                continue
            row: dict[str, Any] = {
                "run": str(run.path),
                "stage": stage,
                "steps": int(max(r.get("step", 0) for r in recs)),
                "minutes": round(float(recs[-1].get("time", 0.0)) / 60, 2),
            }
            for key in HEADLINE.get(stage, []):
                row[f"last_{key}"] = _last(recs, key)
                if key.startswith("dev_"):
                    row[f"best_{key}"] = _best(recs, key)
            rows.append(row)
    return rows


def _csv(rows: list[dict[str, Any]]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _label(runs: list[RunFolder]) -> dict[str, RunFolder]:
    """Short unique labels: folder names, or full paths when names collide."""
    names = [r.path.name for r in runs]
    if len(set(names)) == len(names):
        return dict(zip(names, runs, strict=True))
    return {str(r.path): r for r in runs}


def summarise_logs(run_dirs: list[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Write ``summary.csv``, ``records.csv`` and comparison PNGs into ``out_dir``.

    Returns the summary rows and the written paths. Raises ``FileNotFoundError`` if no
    given folder holds a training log.
    """
    runs = [load_run(d) for d in run_dirs]
    if not any(r.logs for r in runs):
        raise FileNotFoundError("none of the given folders holds a training log "
                                f"(<stage>.metrics.jsonl): {', '.join(map(str, run_dirs))}")
    out = Path(out_dir)
    rows = summary_rows(runs)
    records = [{"run": str(run.path), "stage": stage, **rec}
               for run in runs for stage, recs in run.logs.items() for rec in recs]
    write_text_atomic(out / "summary.csv", _csv(rows))
    write_text_atomic(out / "records.csv", _csv(records))
    labelled = _label(runs)
    figures = []
    for stage in STAGES:
        per_run = {name: r.logs[stage] for name, r in labelled.items() if stage in r.logs}
        if not per_run:
            continue
        for key in HEADLINE.get(stage, []):
            safe = key.replace("@", "at").replace("/", "_")
            png = plots.comparison_figure(per_run, key, f"{stage}: {key}",
                                          out / f"{stage}_{safe}.png")
            if png:
                figures.append(png)
    return {"rows": rows, "summary": out / "summary.csv", "records": out / "records.csv",
            "figures": figures}


def format_summary(rows: list[dict[str, Any]]) -> str:
    """A console table of the summary rows (stage by stage)."""
    lines = []
    for stage in STAGES:
        part = [r for r in rows if r["stage"] == stage]
        if not part:
            continue
        keys = [k for k in part[0] if k not in ("run", "stage")]
        width = max(len(r["run"]) for r in part)
        lines.append(f"{stage}")
        lines.append(f"  {'run':<{width}}  " + "  ".join(f"{k:>14}" for k in keys))
        for r in part:
            vals = []
            for k in keys:
                v = r.get(k)
                vals.append(f"{v:>14.4g}" if isinstance(v, float) else f"{v!s:>14}")
            lines.append(f"  {r['run']:<{width}}  " + "  ".join(vals))
    return "\n".join(lines)
