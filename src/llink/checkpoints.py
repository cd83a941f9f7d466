"""Checkpoint folders: safetensors for tensors, JSON for everything else, written atomically.

Nothing here unpickles: a checkpoint can be read safely from any source.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from llink.fileio import write_json_atomic


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match what loads it."""


def save_folder(
    folder: str | Path,
    tensors: Mapping[str, Mapping[str, torch.Tensor]],
    json_files: Mapping[str, Any],
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write a checkpoint folder atomically.

    ``tensors`` maps file stems to tensor dicts (``{"bridge": {...}}`` →
    ``bridge.safetensors``); ``json_files`` maps file stems to JSON objects;
    ``extra(tmp_folder)`` may write more (e.g. a peft adapter folder). The
    folder is built beside its destination and swapped in with renames, so a crash
    leaves either the old or the new checkpoint, never a mix.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for stem, tdict in tensors.items():
            clean = {k: v.detach().cpu().contiguous() for k, v in tdict.items()}
            save_file(clean, str(tmp / f"{stem}.safetensors"))
        for stem, obj in json_files.items():
            write_json_atomic(tmp / f"{stem}.json", obj)
        if extra is not None:
            extra(tmp)
        (tmp / "COMPLETE").write_text("ok\n")
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


def folder_digest(folder: str | Path) -> str:
    """SHA-256 over every file of a folder (relative paths and contents).

    Names the exact artifact an evaluation came from: retraining into the same folder
    changes it, so results cached under the old digest are not reused.
    """
    folder = Path(folder)
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
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
    if not (folder / "COMPLETE").exists():
        raise CheckpointError(f"{folder} is not a complete {what} (no COMPLETE marker). {fix}")
    return folder


def load_tensors(folder: str | Path, stem: str) -> dict[str, torch.Tensor]:
    path = Path(folder) / f"{stem}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    return load_file(str(path))


def load_json(folder: str | Path, stem: str) -> Any:
    path = Path(folder) / f"{stem}.json"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    return json.loads(path.read_text(encoding="utf-8"))


def compare_expected(
    saved: Mapping[str, Any], expected: Mapping[str, Any], where: str, fix: str
) -> None:
    """Raise one error listing every key whose saved value differs from the expected one."""
    diffs = [
        f"  {k}: checkpoint has {saved.get(k)!r}, this run has {v!r}"
        for k, v in expected.items()
        if saved.get(k) != v
    ]
    if diffs:
        raise CheckpointError(f"{where} does not match:\n" + "\n".join(diffs) + f"\n{fix}")


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
