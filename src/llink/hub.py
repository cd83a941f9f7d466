"""Hugging Face hub conventions for LLINK model folders: ``from_pretrained``,
``save_pretrained``, ``push_to_hub``.

The folder is the one :mod:`llink.artifacts` writes and checks (``llink.json``,
``bridge.safetensors``, ``lora/``) plus its model card ``README.md``
(:mod:`llink.reporting.card`); this module only finds, writes and moves such folders.
A local folder is loaded as it is and never touches the network; any other name is a hub
repository id, fetched with :func:`huggingface_hub.snapshot_download` (only the files an
LLINK folder holds, cached by huggingface_hub; ``HF_HUB_OFFLINE=1`` uses the cache only)
and then checked and loaded like a local folder. Pushing uploads a checked folder with
:class:`huggingface_hub.HfApi`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import HTTPError
from huggingface_hub.utils import HFValidationError, validate_repo_id

from llink import __version__
from llink.checkpoints import CARD_FILE, CheckpointError, load_json
from llink.fileio import write_text_atomic

# llink.artifacts (and the model code it imports) is imported where it is used: this module
# is imported for HubError alone by the command line's error handling

if TYPE_CHECKING:
    from llink.model import LLINK

#: What :func:`snapshot_download` fetches: the files of an LLINK folder (and never a
#: pickle, which loading would refuse anyway).
FOLDER_PATTERNS = ["*.json", "*.safetensors", "*.md", "COMPLETE"]

#: Errors huggingface_hub raises for an unreachable hub, an unknown or private repository,
#: a missing revision or a missing token (its own errors derive from these; HTTPError is
#: the base error of the HTTP client it uses).
_HUB_ERRORS = (OSError, ValueError, HTTPError)


class HubError(RuntimeError):
    """A model could not be fetched from, or pushed to, the Hugging Face hub."""


def _reason(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def is_local_name(name: str | Path) -> bool:
    """True for a name that means a folder here: one that exists, or one written as a path
    (``/…``, ``./…``, ``~/…``, more than one ``/``, a backslash); a hub id is neither."""
    text = str(name)
    return (Path(text).expanduser().exists() or text.startswith(("/", ".", "~"))
            or text.count("/") > 1 or "\\" in text)


def pretrained_folder(
    name_or_path: str | Path,
    *,
    revision: str | None = None,
    token: str | None = None,
    hub_cache_dir: str | Path | None = None,
    local_files_only: bool = False,
) -> Path:
    """The local folder of an LLINK model: ``name_or_path`` itself when it is local (no
    network), else the snapshot of the hub repository of that id (downloaded once)."""
    if isinstance(name_or_path, Path) or is_local_name(name_or_path):
        return Path(name_or_path).expanduser()
    name = str(name_or_path)
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise HubError(f"{name}: no such folder, and not a hub repository id (owner/name). "
                       "Give the folder `llink train stage-b` wrote, e.g. runs/default/stage_b"
                       ) from None
    try:
        snapshot = snapshot_download(
            name, revision=revision, token=token, cache_dir=hub_cache_dir,
            local_files_only=local_files_only, allow_patterns=FOLDER_PATTERNS,
            library_name="llink", library_version=__version__,
        )
    except _HUB_ERRORS as exc:
        raise HubError(
            f"{name}: no such folder here, and the Hugging Face hub could not provide it "
            f"({_reason(exc)}). Give a local LLINK folder (e.g. runs/default/stage_b), or "
            "fetch the repository once with network access (it is then cached; "
            "HF_HUB_OFFLINE=1 uses the cache only); a private repository needs a token "
            "(`hf auth login` or HF_TOKEN)."
        ) from None
    return Path(snapshot)


def from_pretrained(
    name_or_path: str | Path,
    *,
    revision: str | None = None,
    token: str | None = None,
    hub_cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    **load_kwargs: Any,
) -> LLINK:
    """Load an LLINK model from a local folder or a hub repository id.

    ``revision``, ``token``, ``hub_cache_dir`` and ``local_files_only`` go to
    :func:`huggingface_hub.snapshot_download` (hub ids only); ``load_kwargs`` (``device``,
    ``dtype``, ``cache_dir`` of the frozen models, ``encoder``/``decoder`` to reuse) to
    :func:`llink.artifacts.load_llink`, which checks the folder before building anything.
    """
    from llink.artifacts import load_llink

    folder = pretrained_folder(name_or_path, revision=revision, token=token,
                               hub_cache_dir=hub_cache_dir, local_files_only=local_files_only)
    return load_llink(folder, **load_kwargs)


def save_pretrained(model: LLINK, folder: str | Path, *, run_dir: str | Path | None = None,
                    card: bool = True) -> Path:
    """Write ``model`` as an LLINK folder (:func:`llink.artifacts.save_llink`, with the
    metadata it was loaded or last saved with) and, with ``card``, its model card.

    The card's held-out results come from ``run_dir`` (default: the run folder the model
    was loaded from) and only if measured on these weights; a model loaded from a folder
    outside a run keeps that folder's card when the saved ``llink.json`` is unchanged.
    """
    from llink.artifacts import save_llink

    if model.meta is None:
        raise CheckpointError(
            "this LLINK model carries no llink metadata (the frozen models' names, the "
            "training settings): save_pretrained saves models loaded with "
            "LLINK.from_pretrained or trained by `llink train stage-b`; for one built by hand "
            "use llink.artifacts.save_llink(folder, model, meta)."
        )
    out = save_llink(folder, model, model.meta)
    if card:
        _write_card(model, out, Path(run_dir) if run_dir is not None else None)
    return out


def _write_card(model: LLINK, out: Path, run_dir: Path | None) -> None:
    from llink.reporting.card import run_folder_of, write_model_card  # plotting library

    source = model.source
    if run_dir is None and source is not None:
        run_dir = run_folder_of(source)
    if run_dir is None and source is not None and (source / CARD_FILE).is_file():
        try:
            unchanged = load_json(source, "llink") == load_json(out, "llink")
        except CheckpointError:
            unchanged = False
        if unchanged:  # the same weights and settings: the source's card still holds
            write_text_atomic(out / CARD_FILE, (source / CARD_FILE).read_text(encoding="utf-8"))
            return
    write_model_card(out, run_dir)


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> str:
    """Upload a saved LLINK folder to the hub repository ``repo_id`` (created if needed);
    returns the commit URL. The folder is checked first (complete, weight hashes as
    recorded, no pickles), and gets its model card if it has none."""
    from llink.artifacts import check_llink

    folder, _ = check_llink(folder)
    if not (folder / CARD_FILE).is_file():
        from llink.reporting.card import write_model_card

        write_model_card(folder)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), repo_type="model",
            commit_message=commit_message or f"Upload LLINK model ({folder.name})",
            revision=revision, create_pr=create_pr,
        )
    except _HUB_ERRORS as exc:
        raise HubError(
            f"could not push {folder} to the hub repository {repo_id} ({_reason(exc)}). It "
            "needs network access and a token with write access (`hf auth login`, or "
            "HF_TOKEN)."
        ) from None
    return str(getattr(info, "commit_url", info))


def push_to_hub(model: LLINK, repo_id: str, *, run_dir: str | Path | None = None,
                **push_kwargs: Any) -> str:
    """:func:`save_pretrained` into a temporary folder, then :func:`push_folder` it."""
    with tempfile.TemporaryDirectory(prefix="llink-push-") as tmp:
        folder = save_pretrained(model, Path(tmp) / "model", run_dir=run_dir)
        return push_folder(folder, repo_id, **push_kwargs)
