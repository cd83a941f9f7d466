"""What every benchmark shares: the machine line, timing, memory readings, results files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"
#: Where the README's main job writes its model (``bash scripts/main.sh``).
DEFAULT_MODEL = Path("runs/default/stage_b")


def machine_description() -> str:
    """Processor, core count, torch threads and device, for the results' Machine line."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = os.cpu_count()
    gpu = f" ({torch.cuda.get_device_name(0)})" if device == "cuda" else ""
    return f"{cpu}, {cores} cores, {torch.get_num_threads()} torch threads, {device}{gpu}"


def results_dir(quick: bool = False) -> Path:
    """``results/``, or ``results/quick/`` (not kept in git) for smoke runs."""
    folder = RESULTS / "quick" if quick else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    if quick:
        (folder / ".gitignore").write_text("*\n")
    return folder


def write_results(name: str, res: dict[str, Any], markdown: str, quick: bool = False) -> None:
    """Write ``NAME.json`` and ``NAME.md`` into :func:`results_dir`."""
    folder = results_dir(quick)
    (folder / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    (folder / f"{name}.md").write_text(markdown)


def model_dir(path: str | None) -> str:
    """The trained LLINK folder to benchmark: ``path``, or the quick-start run's."""
    folder = Path(path) if path else DEFAULT_MODEL
    if not (folder / "llink.json").is_file():
        hint = ("Train one first with `bash scripts/main.sh` (writes runs/default/stage_b)"
                if path is None else "Pass the stage_b folder written by `llink train stage-b`")
        raise SystemExit(f"no trained LLINK model at {folder}/ (llink.json missing). {hint}, "
                         "or pass --model DIR.")
    return str(folder)


def set_threads(n: int | None) -> None:
    """Use ``n`` CPU threads for torch (None: torch's default)."""
    if n:
        torch.set_num_threads(n)


def pct(xs: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``xs``."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls (synchronising a GPU)."""
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def evenly_spaced(items: list, n: int) -> list:
    """``n`` items spread evenly over ``items`` (all of them if fewer)."""
    if n >= len(items):
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def memory_mb() -> dict[str, float]:
    """This process's resident memory in MiB: now (VmRSS; of it anonymous and file-backed,
    e.g. memory-mapped weights) and its peak so far (VmHWM)."""
    keys = {"VmRSS": "rss_mb", "RssAnon": "anon_mb", "RssFile": "file_mb", "VmHWM": "peak_mb"}
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in keys:
            out[keys[key]] = int(value.split()[0]) / 1024
    return out


# --- the summary: one row per headline figure ------------------------------------------
def row(benchmark: str, figure: str, llink: str, baseline: str, ratio: float | None,
        target: float | None = None, note: str = "") -> dict[str, Any]:
    """A headline figure: LLINK vs the baseline, and ``ratio`` = how many times better LLINK is."""
    return {"benchmark": benchmark, "figure": figure, "llink": llink, "baseline": baseline,
            "ratio": ratio, "target": target,
            "met": None if target is None or ratio is None else ratio >= target, "note": note}


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary table (``summary.md``) from the summary dict (``summary.json``)."""
    lines = [
        "| benchmark | figure | LLINK | baseline | ratio | target |",
        "|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        if r["target"] is None:
            target = "—"
        else:
            target = f"≥ {r['target']:g}x ({'met' if r['met'] else 'missed'})"
        figure = r["figure"] + (f" ({r['note']})" if r.get("note") else "")
        lines.append(f"| {r['benchmark']} | {figure} | {r['llink']} | {r['baseline']} | "
                     f"{ratio} | {target} |")
    lines += ["", f"Machine: {summary['machine']}."]
    runs = summary.get("benchmarks", {})
    commands = list(dict.fromkeys(r["command"] for r in runs.values() if r.get("command")))
    if len(commands) > 1:  # the summary merges runs of ``--only``
        for c in commands:
            names = [n for n, r in runs.items() if r.get("command") == c]
            when = ", ".join(sorted({runs[n]["date"] for n in names}))
            lines.append(f"Command: `{c}` ({', '.join(names)}; {when}).")
    else:
        lines.append(f"Command: `{summary['command']}` ({summary['date']}, "
                     f"{summary['minutes']:.1f} min).")
    if summary.get("notes"):
        lines += ["", *[f"- {n}" for n in summary["notes"]]]
    return "\n".join(lines) + "\n"
