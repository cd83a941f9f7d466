"""Stage A training cost: cached features vs recomputing them on every step.

    python -m benchmarks.stage_a_cost [--pairs 8000] [--batch 128]

The original design runs the frozen encoder and the frozen decoder (for the teacher
states) on every step; llink computes both once per text and trains the projector on
cached vectors. Both designs feed the projector identical inputs (checked here), so
they reach the same dev retrieval for the same steps; only the cost differs. Steps
are timed side by side in one process (medians). Results:
benchmarks/results/stage_a_cost.{json,md}.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from benchmarks import common
from benchmarks.common import machine_description, row
from llink.config import load_config
from llink.method.bridge import Projector
from llink.method.losses import info_nce, linear_tau
from llink.workflows import Session


def projector_step(proj: Projector, opt: torch.optim.Optimizer, x: torch.Tensor,
                   h: torch.Tensor, tau: float) -> None:
    loss = info_nce(proj(x), h, tau)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


QUICK = {"pairs": 1000, "batch": 128, "steps": 20000, "recompute_steps": 1, "cached_steps": 20}
DEFAULT = {"pairs": 8000, "batch": 128, "steps": 20000, "recompute_steps": 3,
           "cached_steps": 200}
OPTIONS = {
    **common.THREADS,
    "--pairs": {"type": int, "help": "training pairs (cache size)"},
    "--batch": {"type": int},
    "--steps": {"type": int, "help": "a full run's steps"},
    "--recompute-steps": {"type": int},
    "--cached-steps": {"type": int},
    **common.QUICK_RUN,
}


def measure(pairs_n: int, batch_n: int, steps: int, recompute_steps: int, cached_steps: int
            ) -> dict[str, Any]:
    session = Session(load_config(None, [f"data.max_train_pairs={pairs_n}"]), progress=False)
    enc, dec = session.encoder, session.decoder
    train = session.splits.train
    proj = Projector(enc.dim, dec.hidden_size)
    opt = torch.optim.AdamW(proj.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)

    def batch() -> list:
        return [train[i] for i in torch.randperm(len(train), generator=g)[:batch_n]]

    # the original design: both frozen models run inside every step
    recompute, feats = [], None
    for _ in range(recompute_steps):
        pairs = batch()
        t = time.perf_counter()
        # .clone(): the frozen models return inference-mode tensors
        x = enc.encode([p.foreign for p in pairs], batch_size=64).clone()
        h = dec.teacher_states([p.en for p in pairs], batch_size=32).clone()
        projector_step(proj, opt, x, h, 0.1)
        recompute.append(time.perf_counter() - t)
        feats = (pairs, x, h)

    # llink: build the cache once (timed on a sample, extrapolated per text) ...
    sample = train[: min(1024, len(train))]
    t = time.perf_counter()
    cx = enc.encode([p.foreign for p in sample], batch_size=64).clone()
    ch = dec.teacher_states([p.en for p in sample], batch_size=32).clone()
    per_text = (time.perf_counter() - t) / len(sample)
    # ... then train on cached vectors
    cached = []
    for _ in range(cached_steps):
        idx = torch.randperm(len(sample), generator=g)[:batch_n]
        t = time.perf_counter()
        projector_step(proj, opt, cx[idx], ch[idx], linear_tau(0, 2, 0.17, 0.08))
        cached.append(time.perf_counter() - t)

    pairs, x, h = feats
    again_x = enc.encode([p.foreign for p in pairs], batch_size=16)
    again_h = dec.teacher_states([p.en for p in pairs], batch_size=8)
    same_inputs = max(float((again_x - x).abs().max()), float((again_h - h).abs().max()))

    r_step, c_step = statistics.median(recompute), statistics.median(cached)
    build = per_text * pairs_n
    return {
        "machine": machine_description(),
        "batch": batch_n,
        "pairs": pairs_n,
        "recompute_step_s": r_step,
        "cached_step_s": c_step,
        "step_ratio": r_step / c_step,
        "cache_build_s": build,
        "break_even_steps": build / (r_step - c_step),
        "full_run_steps": steps,
        "full_run_recompute_h": r_step * steps / 3600,
        "full_run_cached_h": (build + c_step * steps) / 3600,
        "total_ratio": (r_step * steps) / (build + c_step * steps),
        "max_input_difference_batch_sizes": same_inputs,
    }


def markdown(res: dict[str, Any]) -> str:
    r_step, c_step, build = res["recompute_step_s"], res["cached_step_s"], res["cache_build_s"]
    steps, batch_n, pairs_n = res["full_run_steps"], res["batch"], res["pairs"]
    return (
        "| design | per step | cache build | "
        f"{steps:,} steps of batch {batch_n} |\n|---|---|---|---|\n"
        f"| recompute teacher + encoder every step | {r_step:.2f} s | — | "
        f"{res['full_run_recompute_h']:.1f} h |\n"
        f"| llink: cached vectors | {c_step * 1000:.1f} ms | {build / 60:.1f} min "
        f"({pairs_n:,} pairs) | {res['full_run_cached_h']:.2f} h |\n\n"
        f"Per-step ratio {res['step_ratio']:.0f}x; total time with the cache build "
        f"{res['total_ratio']:.0f}x lower; the cache pays for itself after "
        f"{res['break_even_steps']:.0f} steps. Recomputed and cached inputs agree to "
        f"{res['max_input_difference_batch_sizes']:.1e} (different batch sizes). "
        f"The cached step is the InfoNCE step alone (the real loop adds the negative queue "
        f"and regularisers). Machine: {res['machine']}.\n"
    )


def headline(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        row("Stage A", "time per step", f"{res['cached_step_s'] * 1000:.1f} ms",
            f"{res['recompute_step_s']:.2f} s (recompute)", res["step_ratio"], 100),
        row("Stage A", f"total time, {res['full_run_steps']:,} steps incl. cache build",
            f"{res['full_run_cached_h']:.2f} h", f"{res['full_run_recompute_h']:.1f} h",
            res["total_ratio"], note=f"break-even after {res['break_even_steps']:.0f} steps"),
    ]


def run(model: str | None = None, quick: bool = False, **overrides: Any) -> dict[str, Any]:
    """Measure with the defaults (or the quick settings), write results, return them."""
    q = common.settings(quick, QUICK, DEFAULT, overrides)
    res = measure(q["pairs"], q["batch"], q["steps"], q["recompute_steps"], q["cached_steps"])
    return common.report("stage_a_cost", res, markdown, quick)


if __name__ == "__main__":
    common.main(__name__)
