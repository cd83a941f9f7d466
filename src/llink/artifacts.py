"""Trained artifacts: what a stage leaves behind, and loading it back with checks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llink.bridge import Projector, SlotBridge, build_token_reader
from llink.checkpoints import (
    HASH_KEY,
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
from llink.inject import PromptFormat
from llink.model import LLINK, PromptedDecoder
from llink.models.decoder import FrozenDecoder, reserved_token_strings
from llink.models.encoder import FrozenEncoder
from llink.models.offline import ModelUnavailable
from llink.targets import TargetTransform

STAGE_A_FORMAT = 1


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


def _open_artifact(
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
    missing = [k for k in _REQUIRED.get(name, ()) if k not in meta]
    if missing:
        raise CheckpointError(f"{folder / f'{name}.json'} lacks {', '.join(missing)}: the "
                              "metadata is damaged. Copy the folder again, or retrain.")
    verify_weights(folder, meta, f"{name}.json")
    if expect:
        compare_expected(meta, expect, f"{what} {folder}", mismatch_fix)
    return folder, meta


_REQUIRED = {
    "stage_a": ("d_enc", "d_dec", "hidden_mult", "dropout", "targets"),
    "llink": ("encoder", "encoder_prefix", "max_foreign_chars", "decoder", "num_slots",
              "d_enc", "d_dec", "hidden_mult", "dropout", "targets", "use_chat_template"),
    "baseline": ("decoder", "num_slots", "use_chat_template"),
}


@contextlib.contextmanager
def _named_by(meta_path: Path) -> Iterator[None]:
    """Say which metadata file named a frozen model that cannot be loaded."""
    try:
        yield
    except ModelUnavailable as exc:
        raise ModelUnavailable(f"{meta_path} names a frozen model that cannot be loaded here: "
                               f"{exc}") from None


def _check_reserved_rows(tensors: dict[str, torch.Tensor], meta: dict[str, Any],
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


def _attach_lora(model: PromptedDecoder, folder: Path, meta_file: str) -> None:
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


def load_stage_a(folder: str | Path, expect: dict[str, Any] | None = None) -> StageAArtifact:
    """Load a Stage A artifact; ``expect`` values (e.g. encoder, decoder) must match."""
    folder, meta = _open_artifact(folder, "Stage A artifact", "stage_a", STAGE_A_FORMAT,
                                  "llink train stage-a", expect,
                                  "Use the same models and settings, or retrain Stage A.")
    tensors = load_tensors(folder, "stage_a")
    path = folder / "stage_a.safetensors"
    if "num_slots" in meta:
        _check_reserved_rows(tensors, meta, path)
    elif "reserved_rows" not in tensors:
        raise CheckpointError(f"{path} lacks reserved_rows. Copy the folder again, or retrain.")
    proj = Projector(meta["d_enc"], meta["d_dec"], meta["hidden_mult"], meta["dropout"])
    load_state_dict(proj, _prefixed(tensors, "projector."), path)
    proj.eval()
    targets = _targets(meta, tensors, path)
    return StageAArtifact(proj, targets, tensors["reserved_rows"], meta)


LLINK_FORMAT = 1


def save_llink(folder: str | Path, model: LLINK, meta: dict[str, Any]) -> Path:
    """Write a complete LLINK model folder: bridge, projector, reserved rows, LoRA, config.

    Layout: ``llink.json`` (models, dimensions, K, prompt format, training config),
    ``bridge.safetensors`` (bridge.*, projector.*, target transform, reserved_rows) and
    ``lora/`` as ``peft`` saves it. The model keeps ``meta`` (``model.meta``), so
    :meth:`LLINK.save_pretrained` can save it again.
    """
    tensors = {f"bridge.{k}": v for k, v in model.bridge.state_dict().items()}
    tensors.update({f"projector.{k}": v for k, v in model.projector.state_dict().items()})
    if model.reader is not None:
        tensors.update({f"reader.{k}": v for k, v in model.reader.state_dict().items()})
    tensors.update(model.targets.tensors())
    tensors["reserved_rows"] = model.decoder.reserved_rows()
    full_meta = {
        "format": LLINK_FORMAT,
        **meta,
        "num_slots": model.num_slots,
        "d_enc": model.encoder.dim,
        "d_dec": model.decoder.hidden_size,
        "use_chat_template": model.fmt.use_chat_template,
        "system_prompt": model.fmt.system_prompt,
        "targets": model.targets.kind,
        **model.targets.spec(),
        "has_lora": model.has_lora,
        "slot_source": model.slot_source,
        "literals": model.literals,
        "slots_per_token": model.slots_per_token,
        "token_layer": model.token_layer,
        "resampler_layers": len(getattr(model.reader, "blocks", ())),
    }

    def write_lora(tmp: Path) -> None:
        if model.has_lora:
            model.lm.save_pretrained(str(tmp / "lora"), save_embedding_layers=False)

    out = save_folder(folder, {"bridge": tensors}, {"llink": full_meta}, extra=write_lora)
    model.meta = dict(meta)
    return out


def check_llink(folder: str | Path) -> tuple[Path, dict[str, Any]]:
    """Check a saved LLINK folder (complete, metadata, weight hashes, no pickles) without
    loading any model; returns the folder and its ``llink.json``."""
    return _open_artifact(folder, "LLINK model", "llink", LLINK_FORMAT, "llink train stage-b",
                          None, "")


def load_llink(
    folder: str | Path,
    *,
    cache_dir: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    expect: dict[str, Any] | None = None,
    encoder: FrozenEncoder | None = None,
    decoder: FrozenDecoder | None = None,
) -> LLINK:
    """Load a saved LLINK model; every mismatch with the frozen models is named in the error.

    ``encoder``/``decoder`` reuse already-loaded frozen models (they must be the ones
    the artifact was trained with; a decoder must not carry adapters yet). ``dtype``
    applies to the frozen models (e.g. ``torch.bfloat16`` on a GPU); the bridge stays
    float32 and slots are cast to the decoder's dtype when injected.
    """
    folder, meta = _open_artifact(folder, "LLINK model", "llink", LLINK_FORMAT,
                                  "llink train stage-b", expect,
                                  "Load it with the models it was trained with, or retrain "
                                  "Stage B.")
    tensors = load_tensors(folder, "bridge")
    path = folder / "bridge.safetensors"
    _check_reserved_rows(tensors, meta, path)
    with _named_by(folder / "llink.json"):
        enc = encoder or FrozenEncoder.from_pretrained(
            meta["encoder"], prefix=meta["encoder_prefix"], max_chars=meta["max_foreign_chars"],
            cache_dir=cache_dir, device=device, dtype=dtype,
        )
        dec = decoder or FrozenDecoder.from_pretrained(
            meta["decoder"], num_slots=meta["num_slots"], cache_dir=cache_dir, device=device,
            dtype=dtype,
        )
    found = {"d_enc": enc.dim, "d_dec": dec.hidden_size, "num_slots": dec.num_slots,
             "encoder_weights": enc.fingerprint, "decoder_weights": dec.fingerprint}
    compare_expected(meta, found, f"LLINK model {folder} vs the loaded encoder/decoder",
                     "The frozen models differ from those the artifact was trained with.")
    dec.load_reserved_rows(tensors["reserved_rows"])
    proj = Projector(meta["d_enc"], meta["d_dec"], meta["hidden_mult"], meta["dropout"])
    load_state_dict(proj, _prefixed(tensors, "projector."), path)
    bridge = SlotBridge(meta["d_dec"], meta["num_slots"], target_norm=1.0)
    load_state_dict(bridge, _prefixed(tensors, "bridge."), path)
    reader = build_token_reader(meta.get("slot_source", "pooled"), meta["d_enc"], meta["d_dec"],
                                meta["num_slots"], layers=meta.get("resampler_layers", 0))
    if reader is not None:
        load_state_dict(reader, _prefixed(tensors, "reader."), path)
    targets = _targets(meta, tensors, path)
    model = LLINK(enc, dec, proj, targets, bridge,
                  PromptFormat(meta["use_chat_template"], meta.get("system_prompt")),
                  reader=reader, token_layer=meta.get("token_layer", -1),
                  literals=meta.get("literals", False),
                  slots_per_token=meta.get("slots_per_token", 0.0))
    if meta.get("has_lora"):
        _attach_lora(model, folder, "llink.json")
    model.meta = {k: v for k, v in meta.items() if k not in ("format", HASH_KEY)}
    model.source = folder
    return model.to(dec.device).eval()


BASELINE_FORMAT = 1


def save_baseline(folder: str | Path, model: PromptedDecoder, meta: dict[str, Any]) -> Path:
    """Write a direct fine-tuning baseline: ``baseline.json`` and the ``lora/`` adapter."""
    full_meta = {
        "format": BASELINE_FORMAT,
        "kind": "direct-finetune",
        **meta,
        "num_slots": model.num_slots,
        "d_dec": model.decoder.hidden_size,
        "use_chat_template": model.fmt.use_chat_template,
        "system_prompt": model.fmt.system_prompt,
    }

    def write_lora(tmp: Path) -> None:
        model.lm.save_pretrained(str(tmp / "lora"), save_embedding_layers=False)

    return save_folder(folder, {}, {"baseline": full_meta}, extra=write_lora)


def load_baseline(
    folder: str | Path,
    *,
    cache_dir: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    expect: dict[str, Any] | None = None,
    decoder: FrozenDecoder | None = None,
) -> PromptedDecoder:
    """Load a baseline written by :func:`save_baseline`: its decoder with the LoRA attached.

    ``decoder`` reuses a loaded decoder without adapters (LoRA is attached to it in place).
    """
    folder, meta = _open_artifact(folder, "direct fine-tuning baseline", "baseline",
                                  BASELINE_FORMAT, "llink train baseline", expect,
                                  "Load it with the decoder it was trained with, or retrain it.")
    with _named_by(folder / "baseline.json"):
        dec = decoder or FrozenDecoder.from_pretrained(
            meta["decoder"], num_slots=meta["num_slots"], cache_dir=cache_dir, device=device,
            dtype=dtype,
        )
    found = {"d_dec": dec.hidden_size, "num_slots": dec.num_slots,
             "decoder_weights": dec.fingerprint}
    compare_expected(meta, found, f"baseline {folder} vs the loaded decoder",
                     "The decoder differs from the one the baseline was trained with.")
    model = PromptedDecoder(dec, PromptFormat(meta["use_chat_template"],
                                              meta.get("system_prompt")))
    _attach_lora(model, folder, "baseline.json")
    return model.to(dec.device).eval()


def _targets(
    meta: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path
) -> TargetTransform:
    try:
        return TargetTransform.from_tensors(meta["targets"], tensors, meta)
    except KeyError as exc:
        raise CheckpointError(
            f"{path} lacks the target-transform tensor {exc}: the file does not match its "
            "metadata. Copy the folder again, or retrain."
        ) from None


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
