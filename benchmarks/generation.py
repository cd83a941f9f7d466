"""Batched vs one-at-a-time generation with a trained LLINK model, side by side.

    python -m benchmarks.generation [--model DIR] [--n 32] [--repeats 1] [--quick]

Greedy decoding must give identical outputs both ways; the figure reported is the
ratio of wall times measured in the same process (median over repeats). Results
go to benchmarks/results/generation.{json,md}.
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks import common
from benchmarks.common import machine_description, model_dir, row, timed
from llink import LLINK
from llink.config import DataConfig
from llink.data.splits import load_splits

QUICK = {"n": 8, "max_new_tokens": 8, "repeats": 1}
DEFAULT = {"n": 32, "max_new_tokens": 32, "repeats": 1}
OPTIONS = {
    **common.MODEL, **common.THREADS,
    "--n": {"type": int, "help": "test sentences"},
    "--max-new-tokens": {"type": int},
    "--repeats": {"type": int},
    **common.QUICK_RUN,
}


def measure(folder: str, n: int, max_new_tokens: int, repeats: int) -> dict[str, Any]:
    texts = [p.foreign for p in load_splits(DataConfig()).test[:n]]
    model = LLINK.from_pretrained(folder)
    model.generate(texts[:2], max_new_tokens=4)  # warm-up
    batched_t, single_t = [], []
    for _ in range(repeats):
        t, batched = timed(lambda: model.generate(texts, max_new_tokens=max_new_tokens))
        batched_t.append(t)
        t, single = timed(lambda: [model.generate([x], max_new_tokens=max_new_tokens)[0]
                                   for x in texts])
        single_t.append(t)
    return {
        "machine": machine_description(),
        "sentences": len(texts),
        "max_new_tokens": max_new_tokens,
        "repeats": repeats,
        "batched_seconds": statistics.median(batched_t),
        "one_at_a_time_seconds": statistics.median(single_t),
        "speedup": statistics.median(single_t) / statistics.median(batched_t),
        "identical_outputs": sum(a == b for a, b in zip(batched, single, strict=True)),
    }


def markdown(res: dict[str, Any]) -> str:
    return (
        "| sentences | batched (s) | one at a time (s) | speed-up | identical outputs |\n"
        "|---|---|---|---|---|\n"
        f"| {res['sentences']} | {res['batched_seconds']:.1f} | "
        f"{res['one_at_a_time_seconds']:.1f} | {res['speedup']:.1f}x | "
        f"{res['identical_outputs']}/{res['sentences']} |\n\nMachine: {res['machine']}.\n"
    )


def headline(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [row("generation", f"LLINK, {res['sentences']} sentences in one batch vs one at a "
                "time", f"{res['batched_seconds']:.1f} s", f"{res['one_at_a_time_seconds']:.1f} s",
                res["speedup"],
                note=f"identical outputs {res['identical_outputs']}/{res['sentences']}")]


def run(model: str | None = None, quick: bool = False, **overrides: Any) -> dict[str, Any]:
    """Measure with the defaults (or the quick settings), write results, return them."""
    q = common.settings(quick, QUICK, DEFAULT, overrides)
    res = measure(model_dir(model), q["n"], q["max_new_tokens"], q["repeats"])
    return common.report("generation", res, markdown, quick)


if __name__ == "__main__":
    common.main(__name__)
