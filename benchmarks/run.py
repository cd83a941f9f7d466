"""Run every benchmark and write benchmarks/results/summary.{json,md}.

    python -m benchmarks.run [--model DIR] [--only NAME[,NAME]] [--quick] [--threads N]

NAME: stage_a_cost, prompt_cost, latency, latency_fixed_length, ttft, memory, generation,
serve_load.
``--model`` is the trained LLINK folder (default runs/default/stage_b, written by
``bash scripts/main.sh``). Each benchmark also writes its own NAME.{json,md} and runs
on its own as ``python -m benchmarks.NAME`` (latency_fixed_length is
``python -m benchmarks.latency --fixed-length --no-lora-merged``). Every figure is a ratio of two designs
measured side by side in the same process (medians of repeats). ``--quick`` is a
fast smoke run written to benchmarks/results/quick/ instead. With ``--only``, the
summary keeps the other benchmarks' rows from the previous summary. ``generation``
(batched vs one at a time) runs only when named: ``latency`` already measures LLINK at
batch 1 and at batch 32 on the same sentences. ``serve_load`` (100 simultaneous requests
to ``llink serve``; a stand-in backend unless a model is needed by another benchmark
named with it) also runs only when named.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

from benchmarks import (
    common,
    generation,
    latency,
    memory,
    prompt_cost,
    serve_load,
    stage_a_cost,
    ttft,
)
from benchmarks.common import machine_description, model_dir, results_dir, summary_markdown


class Variant:
    """A benchmark module run with fixed settings (e.g. latency with fixed-length answers)."""

    def __init__(self, module: ModuleType, **settings: Any) -> None:
        self.module, self.settings = module, settings

    def run(self, model: str | None, quick: bool = False, **kwargs: Any) -> dict[str, Any]:
        return self.module.run(model, quick, **self.settings, **kwargs)

    def headline(self, res: dict[str, Any]) -> list[dict[str, Any]]:
        return self.module.headline(res)


BENCHMARKS: dict[str, ModuleType | Variant] = {
    "stage_a_cost": stage_a_cost,
    "prompt_cost": prompt_cost,
    "latency": latency,
    "latency_fixed_length": Variant(latency, fixed_length=True, lora_merged=False),
    "ttft": ttft,
    "memory": memory,
    "generation": generation,
    "serve_load": serve_load,
}
DEFAULT_RUN = ("stage_a_cost", "prompt_cost", "latency", "latency_fixed_length", "ttft", "memory")
NEEDS_MODEL = {"prompt_cost", "latency", "latency_fixed_length", "ttft", "generation", "memory"}
NOTES = [
    "Ratios compare two designs timed side by side in one process (medians of repeats); "
    "absolute times depend on the machine and on whatever else runs on it.",
    "Time to first token: batch of one, `generate(..., max_new_tokens=1)`, LLINK including "
    "its encoder pass. See prompt_cost.md for where the time goes. The ttft rows time both "
    "paths as llink serve runs them: the prompt template's KV cached, LLINK's LoRA merged.",
    "End-to-end (latency): answers end at EOS, and the base decoder given raw Khmer usually "
    "runs on to max_new_tokens while LLINK stops after a sentence, so part of that speed-up "
    "is shorter answers; latency_fixed_length forces equal-length answers (compute cost only).",
    "'LoRA merged' rows time the same trained model with its LoRA folded into the decoder "
    "weights (peft merge_and_unload): same answers, fewer operations per decoder pass.",
]


def selected(only: str | None) -> list[str]:
    """Benchmark names to run, in their fixed order; unknown names are an error."""
    if not only:
        return list(DEFAULT_RUN)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(BENCHMARKS)}")
    return [n for n in BENCHMARKS if n in names]


def merge_summary(previous: dict[str, Any] | None, ran: dict[str, dict[str, Any]],
                  rows: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """The new summary: this run's rows, plus rows of benchmarks it did not run."""
    keep_runs = {k: v for k, v in (previous or {}).get("benchmarks", {}).items() if k not in ran}
    kept = [r for r in (previous or {}).get("rows", []) if r.get("source") in keep_runs]
    runs = {**keep_runs, **ran}
    order = [n for n in BENCHMARKS if n in runs]
    all_rows = sorted([*kept, *rows], key=lambda r: order.index(r["source"]))
    return {**fields, "notes": NOTES, "benchmarks": {n: runs[n] for n in order},
            "rows": all_rows}


OPTIONS = {
    "--model": {"help": "trained LLINK folder (default runs/default/stage_b)"},
    "--only": {"help": "comma-separated benchmark names"},
    **common.QUICK_RUN,
    **common.THREADS,
}


def main(argv: list[str] | None = None) -> None:
    args, _ = common.parse(common.parser_of(sys.modules[__name__]), argv)
    names = selected(args.only)
    folder = model_dir(args.model) if NEEDS_MODEL & set(names) else None

    t0 = time.perf_counter()
    command = common.invoked_command() or "python -m benchmarks.run"
    ran: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    for name in names:
        print(f"=== {name} ===", flush=True)
        t = time.perf_counter()
        mod = BENCHMARKS[name]
        kwargs = {"threads": args.threads} if name == "memory" else {}
        res = mod.run(folder, quick=args.quick, **kwargs)
        ran[name] = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                     "minutes": (time.perf_counter() - t) / 60, "quick": args.quick,
                     "command": command}
        rows += [{**r, "source": name} for r in mod.headline(res)]

    out = results_dir(args.quick)
    path = out / "summary.json"
    previous = json.loads(path.read_text()) if args.only and path.is_file() else None
    summary = merge_summary(
        previous, ran, rows,
        machine=machine_description(),
        command=command,
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        minutes=(time.perf_counter() - t0) / 60,
        model=folder,
    )
    path.write_text(json.dumps(summary, indent=2) + "\n")
    md = summary_markdown(summary)
    (out / "summary.md").write_text(md)
    print(md)
    print(f"written: {path} and {out / 'summary.md'}")


if __name__ == "__main__":
    main()
