"""Resumable training state shared by the stages: sampling, saving and restoring.

A state folder holds every trainable tensor and the optimizer state as
safetensors, plus the step, the settings that must not change on resume and the
run's progress so far (best dev figures, training time), so that a resumed run
reports on the whole run.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from llink.storage.checkpoints import (
    CheckpointError,
    check_folder,
    load_json,
    load_tensors,
    optimizer_state_tensors,
    remove_stale_temporaries,
    restore_optimizer,
    save_folder,
    verify_weights,
)

RESUME_FIX = "Start without --resume, or point run_dir to the interrupted run."
DAMAGED_STATE_FIX = (
    "The training state cannot be used: start again without --resume (training restarts "
    "from step 0), or restore the folder from a copy."
)


class ResumeMismatch(CheckpointError, ValueError):
    """A resumed run's fixed settings differ from those its training state was saved with."""


#: Rows of each language and its share of a batch (see :func:`language_groups`).
Groups = list[tuple[torch.Tensor, float]]


def language_groups(langs: Sequence[str] | None, alpha: float) -> Groups | None:
    """How batches draw languages: language L gets a share ∝ ``n_L ** alpha`` (n_L: its
    rows); rows without a language (English examples, synthetic rows without ``lang``)
    keep their share ``n_none / n`` and the languages split the rest. None (plain uniform
    sampling over rows, as with one language) for fewer than two languages."""
    rows: dict[str, list[int]] = {}
    for i, lang in enumerate(langs or ()):
        rows.setdefault(lang, []).append(i)
    if len([lang for lang in rows if lang]) < 2:
        return None
    rest = 1.0 - len(rows.get("", ())) / len(langs or ())
    total = sum(len(r) ** alpha for lang, r in rows.items() if lang)
    return [(torch.tensor(r), rest * len(r) ** alpha / total if lang else 1.0 - rest)
            for lang, r in rows.items()]


def batch_indices(
    n: int, batch: int, seed: int, step: int, micro: int = 0, groups: Groups | None = None
) -> torch.Tensor:
    """A random batch for (step, micro-step), reproducible without any saved sampler state.

    With ``groups``, group g gives ``batch * share_g`` rows rounded by largest remainder
    (ties broken at random), drawn without replacement within the group."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 131 + micro)
    if groups is None:
        return torch.randperm(n, generator=g)[: min(batch, n)]
    want = [batch * share for _, share in groups]
    quota = [int(w) for w in want]
    tie = torch.randperm(len(groups), generator=g).tolist()
    for i in sorted(range(len(groups)), key=lambda i: (quota[i] - want[i], tie[i]))[
        : batch - sum(quota)
    ]:
        quota[i] += 1
    idx = torch.cat([rows[torch.randperm(len(rows), generator=g)[:k]]
                     for (rows, _), k in zip(groups, quota, strict=True)])
    return idx[torch.randperm(len(idx), generator=g)]


def pass_indices(n: int, batch: int, seed: int, draw: int) -> torch.Tensor:
    """Batch number ``draw`` of passes over ``n`` rows: each pass is its own seeded
    permutation, so every row is seen once per pass; a batch that crosses the end of a
    pass takes the rest from the next one. Stateless like :func:`batch_indices`."""
    start = draw * batch
    out, taken = [], 0
    while taken < batch:
        epoch, offset = divmod(start + taken, n)
        g = torch.Generator().manual_seed(seed * 1_000_003 + 7_919 * epoch + 1)
        rows = torch.randperm(n, generator=g)[offset: offset + batch - taken]
        out.append(rows)
        taken += len(rows)
    return torch.cat(out)


def step_batch(
    sampling: str, n: int, batch: int, seed: int, step: int, micro: int, grad_accum: int,
    groups: Groups | None = None,
) -> torch.Tensor:
    """The rows of (step, micro-step): ``random`` (each draw its own random batch, with
    language ``groups``) or ``epoch`` (passes over the rows, every row once per pass)."""
    if sampling == "epoch":
        if groups is not None:
            raise ValueError("stage_b.sampling=epoch passes over one language's rows; "
                             "with several languages use stage_b.sampling=random")
        return pass_indices(n, batch, seed, step * grad_accum + micro)
    return batch_indices(n, batch, seed, step, micro + 17, groups)


def fixed_settings(stage_cfg: Any, may_change: set[str]) -> dict[str, Any]:
    """The settings of a stage that a resumed run must share (JSON-normalised)."""
    items = {k: v for k, v in dataclasses.asdict(stage_cfg).items() if k not in may_change}
    return json.loads(json.dumps(items))


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (inf, nan) replaced by None: valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_none(v) for v in obj]
    return obj


def clean_stale_states(*folders: Path) -> list[Path]:
    """Remove the temporary folders that interrupted checkpoint writes of ``folders`` left
    behind (``.stage_b-state.xxxxxxxx`` ...); call it at the start of the run owning them."""
    removed = [p for folder in folders for p in remove_stale_temporaries(folder)]
    if removed:
        print(f"removed {len(removed)} temporary folder(s) left by an interrupted checkpoint "
              f"write: {', '.join(p.name for p in removed)}")
    return removed


def save_state(
    state_dir: Path,
    parts: dict[str, dict[str, torch.Tensor]],
    opt: torch.optim.Optimizer,
    step: int,
    settings: dict[str, Any],
    progress: dict[str, Any] | None = None,
) -> None:
    """Write ``parts`` (name → state dict), the optimizer and the step, atomically.

    ``progress`` (JSON) is what a resumed run needs to report on the whole run, e.g. the
    best dev figures so far and the training seconds spent; :func:`saved_progress` reads it.
    """
    tensors = {f"{name}.{k}": v for name, sd in parts.items() for k, v in sd.items()}
    opt_tensors, opt_meta = optimizer_state_tensors(opt)
    tensors.update({f"opt.{k}": v for k, v in opt_tensors.items()})
    meta = {"step": step, "optimizer": opt_meta, "config": settings}
    if progress is not None:
        meta["progress"] = finite_or_none(progress)
    save_folder(state_dir, {"state": tensors}, {"state": meta})


def load_state(
    state_dir: Path, stage: str, settings: dict[str, Any], opt: torch.optim.Optimizer
) -> tuple[int, dict[str, dict[str, torch.Tensor]]]:
    """Restore the optimizer; return the step and the saved parts (name → state dict).

    Raises :class:`CheckpointError` if the folder is missing, incomplete or damaged (a
    weight file that does not match its recorded SHA-256 is named), or if a fixed setting
    changed. (The trainers remove temporary folders of interrupted saves beforehand, on the
    main process: :func:`clean_stale_states`.)
    """
    check_folder(state_dir, f"{stage} training state", RESUME_FIX)
    meta = load_json(state_dir, "state")
    saved = meta.get("config", {})
    diffs = [
        f"{k}: saved {saved.get(k)!r}, now {v!r}" for k, v in settings.items() if saved.get(k) != v
    ]
    if diffs:
        raise ResumeMismatch(
            f"cannot resume from {state_dir}: {stage} settings changed since it was saved "
            f"({'; '.join(diffs)}). Use the interrupted run's settings, or start without "
            "--resume."
        )
    verify_weights(state_dir, meta, "state.json", DAMAGED_STATE_FIX)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in load_tensors(state_dir, "state", DAMAGED_STATE_FIX).items():
        name, rest = key.split(".", 1)
        parts.setdefault(name, {})[rest] = value
    try:
        restore_optimizer(opt, parts.pop("opt", {}), meta["optimizer"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{state_dir / 'state.json'}: the optimizer state does not fit this run ({exc}). "
            + DAMAGED_STATE_FIX
        ) from None
    return int(meta["step"]), parts


def saved_progress(state_dir: Path) -> dict[str, Any]:
    """The ``progress`` saved with the state in ``state_dir`` ({} for older states)."""
    progress = load_json(state_dir, "state").get("progress")
    return progress if isinstance(progress, dict) else {}
