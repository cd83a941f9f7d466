"""Batched vs one-at-a-time generation with a trained LLINK model, side by side.

    python -m benchmarks.generation --model runs/default/stage_b [--n 32] [--repeats 1]

Greedy decoding must give identical outputs both ways; the figure reported is the
ratio of wall times measured in the same process (median over repeats). Results
go to benchmarks/results/generation.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.common import machine_description, write_results
from llink import LLINK
from llink.config import DataConfig
from llink.data.splits import load_splits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="runs/default/stage_b")
    ap.add_argument("--n", type=int, default=32, help="test sentences")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    texts = [p.foreign for p in load_splits(DataConfig()).test[: args.n]]
    model = LLINK.from_pretrained(args.model)
    model.generate(texts[:2], max_new_tokens=4)  # warm-up
    batched_t, single_t = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        batched = model.generate(texts, max_new_tokens=args.max_new_tokens)
        batched_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        single = [model.generate([x], max_new_tokens=args.max_new_tokens)[0] for x in texts]
        single_t.append(time.perf_counter() - t)
    same = sum(a == b for a, b in zip(batched, single, strict=True))
    res = {
        "machine": machine_description(),
        "sentences": len(texts),
        "max_new_tokens": args.max_new_tokens,
        "batched_seconds": statistics.median(batched_t),
        "one_at_a_time_seconds": statistics.median(single_t),
        "speedup": statistics.median(single_t) / statistics.median(batched_t),
        "identical_outputs": same,
    }
    md = (
        "| sentences | batched (s) | one at a time (s) | speed-up | identical outputs |\n"
        "|---|---|---|---|---|\n"
        f"| {res['sentences']} | {res['batched_seconds']:.1f} | "
        f"{res['one_at_a_time_seconds']:.1f} | {res['speedup']:.1f}x | "
        f"{same}/{len(texts)} |\n\nMachine: {res['machine']}.\n"
    )
    write_results("generation", res, md)
    print(md)


if __name__ == "__main__":
    main()
