"""Checkpoint folders: safetensors for tensors, JSON for everything else, written atomically.

Nothing here unpickles: a checkpoint can be read safely from any source. Pickle-format
weight files (``*.bin``, ``*.pt``, ...) in a folder are refused, and the SHA-256 of every
weight file is recorded in the folder's JSON metadata at save time and checked before
anything is built from the folder, so a tampered or half-copied folder is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llink.storage.fileio import write_json_atomic


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match what loads it."""


#: Key of the JSON metadata holding ``{relative path: SHA-256}`` of every weight file.
HASH_KEY = "weights_sha256"
WEIGHT_SUFFIX = ".safetensors"
#: Weight formats read by unpickling (which can run arbitrary code): refused in any folder.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
#: What each metadata file says a folder is, for "expected X, found Y" errors.
KINDS = {
    "llink": "an LLINK model",
    "stage_a": "a Stage A artifact",
    "baseline": "a direct fine-tuning baseline",
    "state": "a training state (for --resume)",
    "llink_export": "an exported LLINK model (merged decoder + slot bridge, `llink export`)",
}


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's contents (hex)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weight_hashes(folder: str | Path) -> dict[str, str]:
    """``{relative path: SHA-256}`` of every ``.safetensors`` file under ``folder``."""
    folder = Path(folder)
    return {
        p.relative_to(folder).as_posix(): file_sha256(p)
        for p in sorted(folder.rglob(f"*{WEIGHT_SUFFIX}"))
        if p.is_file()
    }


def _fsync_tree(folder: Path) -> None:
    """Flush a freshly written folder to disk (files, then the folder entries)."""
    for path in [*sorted(folder.rglob("*"), reverse=True), folder]:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # e.g. directories on Windows
            continue
        try:
            os.fsync(fd)
        except OSError:  # some file systems refuse fsync on directories
            pass
        finally:
            os.close(fd)


def stale_temporaries(folder: str | Path) -> list[Path]:
    """Half-written copies of ``folder`` that an interrupted :func:`save_folder` left beside
    it (``.NAME.xxxxxxxx``); ``.NAME.old`` is not one (it may be the only complete copy)."""
    folder = Path(folder)
    pattern = re.compile(rf"\.{re.escape(folder.name)}\.[a-z0-9_]{{8}}")
    if not folder.parent.is_dir():
        return []
    return sorted(
        p for p in folder.parent.iterdir() if p.is_dir() and pattern.fullmatch(p.name)
    )


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete what :func:`stale_temporaries` finds; return the removed paths.

    Call it only where no other process can be writing ``folder`` at the same time
    (the start of the run that owns it, or just before writing it).
    """
    removed = stale_temporaries(folder)
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def save_folder(
    folder: str | Path,
    tensors: Mapping[str, Mapping[str, torch.Tensor]],
    json_files: Mapping[str, Any],
    extra: Callable[[Path], None] | None = None,
    hash_into: str | None = None,
) -> Path:
    """Write a checkpoint folder atomically.

    ``tensors`` maps file stems to tensor dicts (``{"bridge": {...}}`` →
    ``bridge.safetensors``); ``json_files`` maps file stems to JSON objects;
    ``extra(tmp_folder)`` may write more (e.g. a peft adapter folder). The
    folder is built beside its destination and swapped in with renames, so a crash
    leaves either the old or the new checkpoint, never a mix. The SHA-256 of every
    weight file is recorded under :data:`HASH_KEY` in the first JSON object (or in
    ``hash_into``); :func:`verify_weights` checks them at load. Temporary folders left
    by an earlier interrupted save of the same destination are removed first.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for stem, tdict in tensors.items():
            clean = {k: v.detach().cpu().contiguous() for k, v in tdict.items()}
            save_file(clean, str(tmp / f"{stem}.safetensors"))
        if extra is not None:
            extra(tmp)
        _refuse_pickles(tmp, folder)
        hashes = weight_hashes(tmp)
        hash_into = hash_into or next(iter(json_files), None)
        for stem, obj in json_files.items():
            if stem == hash_into and isinstance(obj, Mapping):
                obj = {**obj, HASH_KEY: hashes}
            write_json_atomic(tmp / f"{stem}.json", obj)
        (tmp / "COMPLETE").write_text("ok\n")
        _fsync_tree(tmp)
        old = folder.with_name(f".{folder.name}.old")
        if folder.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


#: The model card of a model folder (hub convention): a description written from the folder
#: and its run, not part of the model, so :func:`folder_digest` leaves it out.
CARD_FILE = "README.md"


def folder_digest(folder: str | Path) -> str:
    """SHA-256 over every file of a folder (relative paths and contents), except its
    model card (:data:`CARD_FILE`).

    Names the exact artifact an evaluation came from: retraining into the same folder
    changes it, so results cached under the old digest are not reused; (re)writing the
    card does not.
    """
    folder = Path(folder)
    h = hashlib.sha256()
    card = folder / CARD_FILE
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p != card):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def check_folder(folder: str | Path, what: str, fix: str) -> Path:
    """Raise a helpful :class:`CheckpointError` unless ``folder`` is a complete checkpoint."""
    folder = Path(folder)
    if not folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        if old.is_dir() and (old / "COMPLETE").exists():
            os.replace(old, folder)  # a crash between the two renames of save_folder
        else:
            raise CheckpointError(f"no {what} at {folder}. {fix}")
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is a file, not a {what} folder. {fix}")
    if not (folder / "COMPLETE").exists():
        raise CheckpointError(f"{folder} is not a complete {what} (no COMPLETE marker). {fix}")
    return folder


def folder_kind(folder: str | Path) -> str | None:
    """The metadata stem (a key of :data:`KINDS`) of the artifact in ``folder``, if any."""
    return next((k for k in KINDS if (Path(folder) / f"{k}.json").is_file()), None)


def require_kind(folder: str | Path, stem: str, what: str, fix: str) -> None:
    """Raise unless ``folder`` holds ``stem``.json, naming the kind of artifact found."""
    folder = Path(folder)
    if (folder / f"{stem}.json").is_file():
        return
    found = folder_kind(folder)
    if found is not None:
        raise CheckpointError(
            f"{folder} is {KINDS[found]} ({found}.json), not the {what} expected here "
            f"({stem}.json). {fix}"
        )
    raise CheckpointError(f"{folder / f'{stem}.json'} is missing, so {folder} holds no {what}. "
                          f"{fix}")


def _refuse_pickles(folder: Path, name: Path | None = None) -> None:
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if found:
        shown = (name or folder) / found[0].relative_to(folder)
        raise CheckpointError(
            f"{shown}: pickle-format weights are refused (loading a pickle can run arbitrary "
            "code); llink reads weights only from .safetensors files. Delete the file, or "
            "convert it to safetensors and save the model again."
        )


DAMAGED_FIX = "Copy the whole folder again from its source, or retrain."


def verify_weights(
    folder: str | Path, meta: Mapping[str, Any], meta_file: str, fix: str = DAMAGED_FIX
) -> None:
    """Refuse pickle files, and check every weight file against the SHA-256 recorded in the
    metadata ``meta`` (read from ``meta_file``) at save time.

    Folders saved before hashes were recorded (no :data:`HASH_KEY`) are only checked for
    pickle files.
    """
    folder = Path(folder)
    _refuse_pickles(folder)
    recorded = meta.get(HASH_KEY)
    if recorded is None:
        return
    if not isinstance(recorded, Mapping):
        raise CheckpointError(f"{folder / meta_file}: {HASH_KEY} must be a mapping; the "
                              f"metadata is damaged. {fix}")
    for rel, digest in recorded.items():
        path = folder / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise CheckpointError(f"{folder / meta_file}: {HASH_KEY} names {rel!r}, outside "
                                  f"the folder; the metadata is damaged. {fix}")
        if not path.is_file():
            raise CheckpointError(
                f"{path} is missing but recorded in {meta_file}: the folder is incomplete "
                f"(half-copied?). {fix}"
            )
        if file_sha256(path) != digest:
            raise CheckpointError(
                f"{path}: contents differ from the SHA-256 recorded in {meta_file} at save "
                f"time: the file was modified, truncated or damaged. {fix}"
            )
    extra = sorted(set(weight_hashes(folder)) - set(recorded))
    if extra:
        raise CheckpointError(
            f"{folder / extra[0]}: weight file not recorded in {meta_file} (added after the "
            f"folder was saved). Remove it. {fix}"
        )


def load_tensors(
    folder: str | Path, stem: str, fix: str = DAMAGED_FIX
) -> dict[str, torch.Tensor]:
    """Tensors of ``stem``.safetensors; a damaged file raises :class:`CheckpointError`."""
    path = Path(folder) / f"{stem}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({exc}); it is truncated or damaged. "
            f"{fix}"
        ) from None


def load_json(folder: str | Path, stem: str) -> Any:
    """The JSON object of ``stem``.json; malformed JSON raises :class:`CheckpointError`."""
    path = Path(folder) / f"{stem}.json"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); the file is damaged. Copy the "
            "folder again, or retrain."
        ) from None
    except UnicodeDecodeError:
        raise CheckpointError(
            f"{path}: not UTF-8 text; the file is damaged. Copy the folder again, or retrain."
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object; the file is damaged. Copy the "
                              "folder again, or retrain.")
    return obj


def load_state_dict(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor],
                    path: str | Path) -> None:
    """``module.load_state_dict(tensors)``, a missing or mis-shaped tensor named with ``path``."""
    want = module.state_dict()
    missing = sorted(set(want) - set(tensors))
    unexpected = sorted(set(tensors) - set(want))
    if missing or unexpected:
        what = f"lacks {missing[0]!r}" if missing else f"has an unexpected {unexpected[0]!r}"
        raise CheckpointError(
            f"{path} {what} ({len(missing)} missing, {len(unexpected)} unexpected tensors): "
            "it does not match the model its metadata describes. Copy the folder again, or "
            "retrain."
        )
    for k, v in want.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{path}: tensor {k!r} has shape {tuple(tensors[k].shape)}, the model needs "
                f"{tuple(v.shape)}: the file does not match its metadata. Copy the folder "
                "again, or retrain."
            )
    module.load_state_dict(dict(tensors))


def compare_expected(
    saved: Mapping[str, Any], expected: Mapping[str, Any], where: str, fix: str
) -> None:
    """Raise one error (one line) listing every key whose saved value differs from the
    expected one."""
    diffs = [
        f"{k}: checkpoint has {saved.get(k)!r}, this run has {v!r}"
        for k, v in expected.items()
        if saved.get(k) != v
    ]
    if diffs:
        raise CheckpointError(f"{where} does not match ({'; '.join(diffs)}). {fix}")


def optimizer_state_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state into tensors (for safetensors) and JSON-able scalars."""
    state = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in state["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"{idx}.{name}"] = val
            else:
                scalars.setdefault(str(idx), {})[name] = val
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimizer(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    """Inverse of :func:`optimizer_state_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = val
    for idx, sc in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(sc)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
