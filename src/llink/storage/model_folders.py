"""Model folders on disk: their checks, and the Stage A artifact.

Every trained folder (Stage A artifact, LLINK model, direct fine-tuning baseline) is a
:mod:`llink.storage.checkpoints` folder: safetensors weights, a JSON file with its format,
settings and weight hashes, no pickles. This module holds what the three share (opening a
folder with its checks, the reserved-token rows, the LoRA adapters, the target transform)
and the Stage A artifact, which is only a projector. Building an LLINK model or a baseline
from its folder, and saving one, belongs to :mod:`llink.method.model` (the owner of the
model classes); this module never imports it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from llink.backbones.decoder import reserved_token_strings
from llink.backbones.offline import ModelUnavailable
from llink.method.bridge import Projector
from llink.method.targets import TargetTransform
from llink.storage.checkpoints import (
    CheckpointError,
    check_folder,
    compare_expected,
    load_json,
    load_state_dict,
    load_tensors,
    require_kind,
    save_folder,
    verify_weights,
)

STAGE_A_FORMAT = 1
LLINK_FORMAT = 1
BASELINE_FORMAT = 1


@dataclass
class StageAArtifact:
    """A trained projector and what it needs to be used.

    The projector predicts teacher states mapped through ``targets`` (raw, centred
    or whitened, see :mod:`llink.targets`): anything comparing projected vectors
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


def open_artifact(
    folder: str | Path, what: str, name: str, fmt: int, train_cmd: str,
    expect: dict[str, Any] | None, mismatch_fix: str,
) -> tuple[Path, dict[str, Any]]:
    """Check an artifact folder and its metadata (kind, format, weight hashes, expected
    settings) before anything is built from it.

    ``what`` names the artifact in errors, ``name`` is its JSON file's stem.
    """
    fix = f"Train one with `{train_cmd}`, or pass the folder it wrote."
    folder = check_folder(folder, what, fix)
    require_kind(folder, name, what, fix)
    meta = load_json(folder, name)
    if meta.get("format") != fmt:
        raise CheckpointError(f"{folder}: {what} format {meta.get('format')}, need {fmt}")
    missing = [k for k in REQUIRED_KEYS.get(name, ()) if k not in meta]
    if missing:
        raise CheckpointError(f"{folder / f'{name}.json'} lacks {', '.join(missing)}: the "
                              "metadata is damaged. Copy the folder again, or retrain.")
    verify_weights(folder, meta, f"{name}.json")
    if expect:
        compare_expected(meta, expect, f"{what} {folder}", mismatch_fix)
    return folder, meta


REQUIRED_KEYS = {
    "stage_a": ("d_enc", "d_dec", "hidden_mult", "dropout", "targets"),
    "llink": ("encoder", "encoder_prefix", "max_foreign_chars", "decoder", "num_slots",
              "d_enc", "d_dec", "hidden_mult", "dropout", "targets", "use_chat_template"),
    "baseline": ("decoder", "num_slots", "use_chat_template"),
}


def check_llink(folder: str | Path) -> tuple[Path, dict[str, Any]]:
    """Check a saved LLINK folder (complete, metadata, weight hashes, no pickles) without
    loading any model; returns the folder and its ``llink.json``."""
    return open_artifact(folder, "LLINK model", "llink", LLINK_FORMAT, "llink train stage-b",
                          None, "")


@contextlib.contextmanager
def named_by(meta_path: Path) -> Iterator[None]:
    """Say which metadata file named a frozen model that cannot be loaded."""
    try:
        yield
    except ModelUnavailable as exc:
        raise ModelUnavailable(f"{meta_path} names a frozen model that cannot be loaded here: "
                               f"{exc}") from None


def check_reserved_rows(tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                         path: Path) -> None:
    """The saved reserved-token rows fit the K and width the metadata names."""
    rows = tensors.get("reserved_rows")
    want = (len(reserved_token_strings(meta["num_slots"])), meta["d_dec"])
    if rows is None or tuple(rows.shape) != want:
        found = "none" if rows is None else f"shape {tuple(rows.shape)}"
        raise CheckpointError(
            f"{path}: reserved-token rows have {found}, but its metadata (num_slots "
            f"{meta['num_slots']}, d_dec {meta['d_dec']}) needs {want}: the weights belong to "
            "another model. Copy the folder again, or retrain."
        )


class LoraHolder(Protocol):
    """What :func:`attach_lora` needs of a model: a way to load a peft adapter folder."""

    def load_lora(self, path: str) -> None: ...


def attach_lora(model: LoraHolder, folder: Path, meta_file: str) -> None:
    """Attach ``folder/lora`` (peft layout, weights from adapter_model.safetensors only)."""
    lora = folder / "lora"
    fix = "Copy the whole folder again, or retrain."
    if not lora.is_dir():
        raise CheckpointError(f"{lora} is missing, but {meta_file} says the model has LoRA "
                              f"adapters. {fix}")
    for needed in ("adapter_config.json", "adapter_model.safetensors"):
        if not (lora / needed).is_file():
            raise CheckpointError(f"{lora / needed} is missing: the LoRA folder is incomplete. "
                                  f"{fix}")
    load_json(lora, "adapter_config")  # a clear error for a damaged config
    try:
        model.load_lora(str(lora))
    except (RuntimeError, ValueError, KeyError, TypeError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{lora}: cannot attach the LoRA adapters ({reason}). "
                              f"{fix}") from None


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


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
