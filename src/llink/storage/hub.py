"""Hugging Face hub conventions for LLINK model folders: finding one (a local folder or a
hub id), writing its model card, uploading it. ``LLINK.from_pretrained``,
``save_pretrained`` and ``push_to_hub`` (:mod:`llink.method.model`) are built on these.

The folder is the one :mod:`llink.storage.model_folders` describes and checks (``llink.json``,
``bridge.safetensors``, ``lora/``) plus its model card ``README.md``
(:mod:`llink.reporting.card`); this module only finds, writes and moves such folders.
A local folder is loaded as it is and never touches the network; any other name is a hub
repository id, fetched with :func:`huggingface_hub.snapshot_download` (only the files an
LLINK folder holds, cached by huggingface_hub; ``HF_HUB_OFFLINE=1`` uses the cache only)
and then checked and loaded like a local folder. Pushing uploads a checked folder with
:class:`huggingface_hub.HfApi`.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import HTTPError
from huggingface_hub.utils import HFValidationError, validate_repo_id

from llink import __version__
from llink.storage.checkpoints import CARD_FILE, CheckpointError, load_json
from llink.storage.fileio import write_text_atomic

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


def write_card(out: Path, source: Path | None, run_dir: Path | None) -> None:
    """Write the model card of the LLINK folder ``out`` saved from a model loaded from
    ``source`` (``None``: built in this process); results come from ``run_dir``, else from
    the run folder ``source`` belongs to, else ``source``'s own card if nothing changed."""
    from llink.reporting.card import run_folder_of, write_model_card  # plotting library

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
    from llink.storage.model_folders import check_llink  # torch: the CLI imports HubError alone

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
