"""Trained artifacts: what a stage leaves behind, and loading it back with checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llink.bridge import Projector
from llink.checkpoints import (
    check_folder,
    compare_expected,
    load_json,
    load_tensors,
    save_folder,
)

STAGE_A_FORMAT = 1


@dataclass
class StageAArtifact:
    """A trained projector and what it needs to be used.

    ``target_mean`` is the training-set mean teacher state that was subtracted from
    the targets (zeros when targets were not centred): the projector predicts
    *centred* teacher states, and anything comparing with teacher states must
    subtract it too. ``reserved_rows`` are the decoder's reserved-token rows the
    teacher states were computed with.
    """

    projector: Projector
    target_mean: torch.Tensor
    reserved_rows: torch.Tensor
    meta: dict[str, Any]

    def project(self, enc: torch.Tensor) -> torch.Tensor:
        """Project encoder vectors (eval mode, no gradients) into the centred teacher space."""
        self.projector.eval()
        with torch.no_grad():
            dev = next(self.projector.parameters()).device
            return self.projector(enc.to(dev)).float().cpu()


def save_stage_a(folder: str | Path, art: StageAArtifact) -> Path:
    """Write the Stage A artifact folder atomically."""
    tensors = {f"projector.{k}": v for k, v in art.projector.state_dict().items()}
    tensors["target_mean"] = art.target_mean
    tensors["reserved_rows"] = art.reserved_rows
    meta = {"format": STAGE_A_FORMAT, **art.meta}
    return save_folder(folder, {"stage_a": tensors}, {"stage_a": meta})


def load_stage_a(folder: str | Path, expect: dict[str, Any] | None = None) -> StageAArtifact:
    """Load a Stage A artifact; ``expect`` values (e.g. encoder, decoder) must match."""
    fix = "Train one with `llink train stage-a` (or point to the folder it wrote)."
    folder = check_folder(folder, "Stage A artifact", fix)
    meta = load_json(folder, "stage_a")
    if meta.get("format") != STAGE_A_FORMAT:
        raise ValueError(f"{folder}: Stage A format {meta.get('format')}, need {STAGE_A_FORMAT}")
    if expect:
        compare_expected(
            meta,
            expect,
            f"Stage A artifact {folder}",
            "Use the same models and settings, or retrain Stage A.",
        )
    tensors = load_tensors(folder, "stage_a")
    proj = Projector(meta["d_enc"], meta["d_dec"], meta["hidden_mult"], meta["dropout"])
    proj.load_state_dict(
        {k.removeprefix("projector."): v for k, v in tensors.items() if k.startswith("projector.")}
    )
    proj.eval()
    return StageAArtifact(proj, tensors["target_mean"], tensors["reserved_rows"], meta)
