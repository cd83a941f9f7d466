"""What every benchmark shares: its command line, settings, timing, memory readings, results.

A benchmark module ``NAME`` holds ``QUICK`` and ``DEFAULT`` settings, ``OPTIONS`` (its
command line: flag -> ``add_argument`` keywords, the shared ones from :data:`MODEL`,
:data:`THREADS` and :data:`QUICK_RUN`), ``measure`` (the timing), ``markdown`` (its
table), ``headline`` (its rows of the summary) and::

    def run(model=None, quick=False, **overrides):
        q = common.settings(quick, QUICK, DEFAULT, overrides)
        return common.report("NAME", measure(...q...), markdown, quick)

    if __name__ == "__main__":
        common.main(__name__)  # python -m benchmarks.NAME [options]

Options given on the command line override the defaults, or the quick settings with
``--quick``; :mod:`benchmarks.run` calls each module's ``run`` and ``headline``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import torch

T = TypeVar("T")

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


def print_and_write(text: str, data: dict[str, Any], out: str | None) -> None:
    """Print a markdown report; with ``out``, write it there and ``data`` as JSON beside it
    (the quality-table scripts: ``compare_gen``, ``k_curve``)."""
    print(text)
    if out:
        Path(out).write_text(text)
        Path(out).with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")


def model_dir(path: str | None) -> str:
    """The trained LLINK folder to benchmark: ``path``, or the quick-start run's."""
    folder = Path(path) if path else DEFAULT_MODEL
    if not (folder / "llink.json").is_file():
        hint = ("Train one first with `bash scripts/main.sh` (writes runs/default/stage_b)"
                if path is None else "Pass the stage_b folder written by `llink train stage-b`")
        raise SystemExit(f"no trained LLINK model at {folder}/ (llink.json missing). {hint}, "
                         "or pass --model DIR.")
    return str(folder)


#: Option of the benchmarks that read a trained model.
MODEL = {"--model": {"help": "trained LLINK folder"}}
#: Option of the benchmarks that run torch in this process.
THREADS = {"--threads": {"type": int, "help": "torch CPU threads (default: torch's choice)"}}
#: Option of the benchmarks with quick settings.
QUICK_RUN = {"--quick": {"action": "store_true",
                         "help": "a fast smoke run (written to benchmarks/results/quick/)"}}
#: The shared options; the others are a benchmark's own settings (see :func:`parse`).
SHARED_OPTIONS = ("model", "threads", "quick")


def command_line(doc: str, options: dict[str, dict[str, Any]]) -> argparse.ArgumentParser:
    """A parser described by the first line of ``doc``, with ``options`` (flag ->
    ``add_argument`` keywords)."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    for flag, kwargs in options.items():
        ap.add_argument(flag, **kwargs)
    return ap


def parser_of(bench: ModuleType) -> argparse.ArgumentParser:
    """A benchmark module's command line: its docstring's first line and its ``OPTIONS``."""
    return command_line(bench.__doc__ or "", bench.OPTIONS)


def parse(ap: argparse.ArgumentParser, argv: Sequence[str] | None = None
          ) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Parse ``argv``, apply ``--threads``; return the arguments and the benchmark's own
    options that were given (those left out have the default None and are not)."""
    args = ap.parse_args(argv)
    set_threads(getattr(args, "threads", None))
    given = {k: v for k, v in vars(args).items() if k not in SHARED_OPTIONS and v is not None}
    return args, given


def main(module: str, argv: Sequence[str] | None = None) -> None:
    """``python -m benchmarks.NAME``: parse its command line, then
    ``run(model, quick, **options given)`` of the module named ``module`` (``__name__``)."""
    bench = sys.modules[module]
    args, given = parse(parser_of(bench), argv)
    bench.run(getattr(args, "model", None), args.quick, **given)


def settings(quick: bool, quick_settings: dict[str, Any], defaults: dict[str, Any],
             overrides: dict[str, Any]) -> dict[str, Any]:
    """A run's settings: the defaults (the quick settings with ``quick``), then ``overrides``."""
    return {**(quick_settings if quick else defaults), **overrides}


def invoked_command() -> str | None:
    """``python -m benchmarks.NAME ...`` as this process was started (None when it was not
    started as a benchmark, e.g. under pytest)."""
    script = Path(sys.argv[0])
    if script.parent.name != "benchmarks" or script.suffix != ".py":
        return None
    return shlex.join(["python", "-m", f"benchmarks.{script.stem}", *sys.argv[1:]])


def report(name: str, res: dict[str, Any], markdown: Callable[[dict[str, Any]], str],
           quick: bool = False) -> dict[str, Any]:
    """Write ``res`` and its table (``NAME.json``, ``NAME.md``), print the table, return ``res``.

    ``res["command"]`` records the command line that measured it (see :func:`invoked_command`).
    """
    res.setdefault("command", invoked_command())
    md = markdown(res)
    write_results(name, res, md, quick)
    print(md)
    return res


def set_threads(n: int | None) -> None:
    """Use ``n`` CPU threads for torch (None: torch's default)."""
    if n:
        torch.set_num_threads(n)


def pct(xs: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``xs``."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """Wall seconds of ``fn()`` (a GPU synchronised before and after) and its result."""
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t, out


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls (synchronising a GPU)."""
    return statistics.median(timed(fn)[0] for _ in range(repeats))


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
