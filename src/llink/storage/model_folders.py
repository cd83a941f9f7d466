"""Model folders on disk and their checks.

Every trained folder (Stage A artifact, LLINK model, direct fine-tuning baseline) is a
:mod:`llink.storage.checkpoints` folder: safetensors weights, a JSON file with its format,
settings and weight hashes, no pickles. This module holds what the three share: opening a
folder with its checks, the reserved-token rows, the LoRA adapters. Building the models
from their folders and saving them belongs to :mod:`llink.method` (``projection`` for
Stage A, ``model`` for LLINK and the baseline), which this module never imports.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from llink.backbones.decoder import reserved_token_strings
from llink.backbones.offline import ModelUnavailable
from llink.storage.checkpoints import (
    CheckpointError,
    check_folder,
    compare_expected,
    load_json,
    require_kind,
    verify_weights,
)

LLINK_FORMAT = 1
BASELINE_FORMAT = 1


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


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
