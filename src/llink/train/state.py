"""Resumable training state shared by the stages: sampling, saving and restoring.

A state folder holds every trainable tensor and the optimizer state as
safetensors, plus the step and the settings that must not change on resume.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from llink.checkpoints import (
    check_folder,
    load_json,
    load_tensors,
    optimizer_state_tensors,
    restore_optimizer,
    save_folder,
)

RESUME_FIX = "Start without --resume, or point run_dir to the interrupted run."


def batch_indices(n: int, batch: int, seed: int, step: int, micro: int = 0) -> torch.Tensor:
    """A random batch for (step, micro-step), reproducible without any saved sampler state."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 131 + micro)
    return torch.randperm(n, generator=g)[: min(batch, n)]


def fixed_settings(stage_cfg: Any, may_change: set[str]) -> dict[str, Any]:
    """The settings of a stage that a resumed run must share (JSON-normalised)."""
    items = {k: v for k, v in dataclasses.asdict(stage_cfg).items() if k not in may_change}
    return json.loads(json.dumps(items))


def save_state(
    state_dir: Path,
    parts: dict[str, dict[str, torch.Tensor]],
    opt: torch.optim.Optimizer,
    step: int,
    settings: dict[str, Any],
) -> None:
    """Write ``parts`` (name → state dict), the optimizer and the step, atomically."""
    tensors = {f"{name}.{k}": v for name, sd in parts.items() for k, v in sd.items()}
    opt_tensors, opt_meta = optimizer_state_tensors(opt)
    tensors.update({f"opt.{k}": v for k, v in opt_tensors.items()})
    meta = {"step": step, "optimizer": opt_meta, "config": settings}
    save_folder(state_dir, {"state": tensors}, {"state": meta})


def load_state(
    state_dir: Path, stage: str, settings: dict[str, Any], opt: torch.optim.Optimizer
) -> tuple[int, dict[str, dict[str, torch.Tensor]]]:
    """Restore the optimizer; return the step and the saved parts (name → state dict).

    Raises if the folder is missing or incomplete, or if a fixed setting changed.
    """
    check_folder(state_dir, f"{stage} training state", RESUME_FIX)
    meta = load_json(state_dir, "state")
    saved = meta["config"]
    diffs = [
        f"{k}: saved {saved.get(k)!r}, now {v!r}" for k, v in settings.items() if saved.get(k) != v
    ]
    if diffs:
        raise ValueError(f"cannot resume: {stage} settings changed:\n  " + "\n  ".join(diffs))
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in load_tensors(state_dir, "state").items():
        name, rest = key.split(".", 1)
        parts.setdefault(name, {})[rest] = value
    restore_optimizer(opt, parts.pop("opt", {}), meta["optimizer"])
    return int(meta["step"]), parts
