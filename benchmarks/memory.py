"""Peak resident memory (RSS) of Stage A training, Stage B training and inference.

    python -m benchmarks.memory [--model DIR] [--stage-a-steps 300] [--stage-b-steps 4] [--quick]

Each job runs in its own child process (``python -m benchmarks.memory --child JOB``),
which reports its peak resident memory (``VmHWM`` in /proc/self/status) when done, so
the figures do not leak into one another. Jobs, on the offline default configuration:
  models     import torch and load the trained LLINK model (the baseline)
  inference  the same, then answer a batch of 8 test sentences
  stage_a    ``llink train stage-a`` on cached features, a few hundred steps
  stage_b    ``llink train stage-b`` at the default micro-batch, a few steps (LoRA on)
Training writes to a temporary run folder. Results: benchmarks/results/memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import machine_description, memory_mb, model_dir, row

JOBS = ("models", "inference", "stage_a", "stage_b")
MARK = "MEMORY_RESULT "
QUICK = {"stage_a_steps": 20, "stage_b_steps": 2}
DEFAULT = {"stage_a_steps": 300, "stage_b_steps": 4}
OPTIONS = {
    **common.MODEL, **common.THREADS,
    "--stage-a-steps": {"type": int},
    "--stage-b-steps": {"type": int},
    "--child": {"choices": JOBS, "help": argparse.SUPPRESS},
    "--run-dir": {"help": argparse.SUPPRESS},
    "--steps": {"type": int, "help": argparse.SUPPRESS},
    **common.QUICK_RUN,
}


def child(job: str, model: str, run_dir: str, steps: int) -> dict[str, Any]:
    """Run one job in this process; return its memory readings."""
    t = time.perf_counter()
    import torch

    out: dict[str, Any] = {"after_import_torch_mb": memory_mb()["rss_mb"]}
    if job in ("models", "inference"):
        from llink import LLINK
        from llink.config import DataConfig
        from llink.data.splits import load_splits

        llink = LLINK.from_pretrained(model).eval()
        m = memory_mb()
        out.update(after_load_mb=m["rss_mb"], after_load_anon_mb=m["anon_mb"],
                   after_load_file_mb=m["file_mb"])
        if job == "inference":
            texts = [p.foreign for p in load_splits(DataConfig()).test[:8]]
            with torch.no_grad():
                llink.generate(texts, max_new_tokens=32)
    else:
        from llink.config import load_config
        from llink.workflows import Session, run_stage_a, run_stage_b

        stage = job.removeprefix("stage_")
        overrides = [f"run_dir={run_dir}", f"stage_{stage}.steps={steps}"]
        if stage == "b":  # LoRA joins after the first step, as it does after the warm-up
            overrides += [f"stage_b.bridge_warmup_steps={max(1, steps // 2)}",
                          "stage_b.eval_pairs=8"]
        session = Session(load_config(None, overrides), progress=False)
        (run_stage_a if stage == "a" else run_stage_b)(session)
        out["micro_batch"] = session.cfg.stage_b.micro_batch if stage == "b" else \
            session.cfg.stage_a.batch_size
        out["steps"] = steps
    m = memory_mb()
    out.update(peak_mb=m["peak_mb"], end_anon_mb=m["anon_mb"], end_file_mb=m["file_mb"])
    out["seconds"] = time.perf_counter() - t
    return out


def spawn(job: str, model: str, run_dir: str, steps: int, threads: int | None
          ) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.memory", "--child", job, "--model", model,
           "--run-dir", run_dir, "--steps", str(steps)]
    if threads:
        cmd += ["--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    lines = [x for x in done.stdout.splitlines() if x.startswith(MARK)]
    if done.returncode != 0 or not lines:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise RuntimeError(f"memory job {job!r} failed (exit {done.returncode}):\n{tail}")
    return json.loads(lines[-1].removeprefix(MARK))


def measure(folder: str, stage_a_steps: int, stage_b_steps: int, threads: int | None
            ) -> dict[str, Any]:
    jobs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="llink-bench-memory-") as run_dir:
        for job in JOBS:  # stage_b trains on top of the stage_a job's projector
            steps = {"stage_a": stage_a_steps, "stage_b": stage_b_steps}.get(job, 0)
            jobs[job] = spawn(job, folder, run_dir, steps, threads)
            print(f"{job}: peak {jobs[job]['peak_mb']:.0f} MiB "
                  f"({jobs[job]['seconds']:.0f} s)", flush=True)
    return {"machine": machine_description(), "model": folder, "jobs": jobs}


LABELS = {
    "models": "import torch + load the trained model (baseline)",
    "inference": "inference: generate for a batch of 8",
    "stage_a": "Stage A training (cached features)",
    "stage_b": "Stage B training",
}


def markdown(res: dict[str, Any]) -> str:
    jobs = res["jobs"]
    base = jobs["models"]["peak_mb"]
    lines = ["| job | peak RSS | above the baseline | run |", "|---|---|---|---|"]
    for job, r in jobs.items():
        what = {"stage_a": f"{r.get('steps')} steps of batch {r.get('micro_batch')}",
                "stage_b": f"{r.get('steps')} steps of micro-batch {r.get('micro_batch')}",
                }.get(job, "")
        extra = "—" if job == "models" else f"+{r['peak_mb'] - base:.0f} MiB"
        what = what or f"{r['seconds']:.0f} s"
        lines.append(f"| {LABELS[job]} | {r['peak_mb']:.0f} MiB | {extra} | {what} |")
    lines += [
        "",
        f"Each job in its own process (peak = VmHWM). Importing torch alone: "
        f"{jobs['models']['after_import_torch_mb']:.0f} MiB; after loading the model: "
        f"{jobs['models']['after_load_mb']:.0f} MiB, of which "
        f"{jobs['models']['after_load_file_mb']:.0f} MiB file-backed (memory-mapped weights, "
        f"shared with the page cache) and {jobs['models']['after_load_anon_mb']:.0f} MiB "
        "anonymous. Training jobs load the frozen encoder and decoder as the real commands "
        "do; Stage B also holds its own decoder copy with LoRA, the bag-of-words head "
        "(576 x 49,152, trained with AdamW) and the activations of a micro-batch for backward.",
        f"Machine: {res['machine']}.",
    ]
    return "\n".join(lines) + "\n"


def headline(res: dict[str, Any]) -> list[dict[str, Any]]:
    base = res["jobs"]["models"]["peak_mb"]
    return [row("memory", f"peak RSS, {LABELS[j]}", f"{r['peak_mb']:.0f} MiB",
                "—" if j == "models" else f"+{r['peak_mb'] - base:.0f} MiB over the baseline",
                None) for j, r in res["jobs"].items()]


def run(model: str | None = None, quick: bool = False, threads: int | None = None,
        **overrides: Any) -> dict[str, Any]:
    """Measure with the defaults (or the quick settings), write results, return them."""
    q = common.settings(quick, QUICK, DEFAULT, overrides)
    res = measure(model_dir(model), q["stage_a_steps"], q["stage_b_steps"], threads)
    return common.report("memory", res, markdown, quick)


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.memory``, and each job's child process (``--child JOB``)."""
    args, given = common.parse(common.parser_of(sys.modules[__name__]), argv)
    if args.child:  # one job, in the child process that spawn() started
        print(MARK + json.dumps(child(args.child, args.model, args.run_dir, args.steps or 0)))
        return
    run(args.model, args.quick, threads=args.threads, **given)


if __name__ == "__main__":
    main()
