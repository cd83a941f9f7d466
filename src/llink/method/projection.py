"""The Stage A artifact: a trained projector, its target space, and its folder.

Stage A (:mod:`llink.train.stage_a`) writes it; Stage B and the retrieval evaluations
read it. The folder checks are :mod:`llink.storage.model_folders`'.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llink.method.bridge import Projector
from llink.method.targets import TargetTransform
from llink.storage.checkpoints import CheckpointError, load_state_dict, load_tensors, save_folder
from llink.storage.model_folders import check_reserved_rows, open_artifact, prefixed

STAGE_A_FORMAT = 1


@dataclass
class StageAArtifact:
    """A trained projector and what it needs to be used.

    The projector predicts teacher states mapped through ``targets`` (raw, centred
    or whitened, see :mod:`llink.method.targets`): anything comparing projected vectors
    with teacher states must map the states the same way. ``reserved_rows`` are the
    decoder's reserved-token rows the teacher states were computed with.
    """

    projector: Projector
    targets: TargetTransform
    reserved_rows: torch.Tensor
    meta: dict[str, Any]

    def project(self, enc: torch.Tensor) -> torch.Tensor:
        """Project encoder vectors (eval mode, no gradients) into the target space."""
        self.projector.eval()
        with torch.no_grad():
            dev = next(self.projector.parameters()).device
            return self.projector(enc.to(dev)).float().cpu()



def save_stage_a(folder: str | Path, art: StageAArtifact) -> Path:
    """Write the Stage A artifact folder atomically."""
    tensors = {f"projector.{k}": v for k, v in art.projector.state_dict().items()}
    tensors.update(art.targets.tensors())
    tensors["reserved_rows"] = art.reserved_rows
    meta = {"format": STAGE_A_FORMAT, **art.meta}
    return save_folder(folder, {"stage_a": tensors}, {"stage_a": meta})



def load_stage_a(folder: str | Path, expect: dict[str, Any] | None = None) -> StageAArtifact:
    """Load a Stage A artifact; ``expect`` values (e.g. encoder, decoder) must match."""
    folder, meta = open_artifact(folder, "Stage A artifact", "stage_a", STAGE_A_FORMAT,
                                  "llink train stage-a", expect,
                                  "Use the same models and settings, or retrain Stage A.")
    tensors = load_tensors(folder, "stage_a")
    path = folder / "stage_a.safetensors"
    if "num_slots" in meta:
        check_reserved_rows(tensors, meta, path)
    elif "reserved_rows" not in tensors:
        raise CheckpointError(f"{path} lacks reserved_rows. Copy the folder again, or retrain.")
    proj = Projector(meta["d_enc"], meta["d_dec"], meta["hidden_mult"], meta["dropout"])
    load_state_dict(proj, prefixed(tensors, "projector."), path)
    proj.eval()
    targets = targets_from(meta, tensors, path)
    return StageAArtifact(proj, targets, tensors["reserved_rows"], meta)



def targets_from(
    meta: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path
) -> TargetTransform:
    try:
        return TargetTransform.from_tensors(meta["targets"], tensors, meta)
    except KeyError as exc:
        raise CheckpointError(
            f"{path} lacks the target-transform tensor {exc}: the file does not match its "
            "metadata. Copy the folder again, or retrain."
        ) from None
