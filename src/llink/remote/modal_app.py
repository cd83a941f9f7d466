"""Run llink's stages on a hosted GPU with Modal (``pip install llink[modal]``).

One Modal app per stage, each a thin wrapper over the same library calls the
``llink`` command makes (:mod:`llink.workflows`), with an H100, a volume for run
folders, caches and checkpoints, and a secret holding the Hugging Face token::

    modal secret create hf-token HF_TOKEN=hf_xxx     # once
    modal volume create llink-vol                    # once (or let the app create it)
    modal run -m llink.remote.modal_app::run_stage_a --config configs/paper.yaml
    modal run -m llink.remote.modal_app::run_stage_b --config configs/paper.yaml
    modal run -m llink.remote.modal_app::run_eval --config configs/paper.yaml
    modal volume get llink-vol runs/paper ./runs/paper  # fetch the run folder

``--overrides "stage_a.steps=2000 seed=1"`` adds ``key=value`` overrides and
``--resume`` continues an interrupted run. Paths in the config are taken on the
remote machine, relative ones under the volume (``run_dir: runs/paper`` becomes
``/vol/runs/paper``); the feature cache and converted models live on the volume too.
Names come from the environment when the module is imported (``modal run`` and
``modal deploy`` import it locally): ``LLINK_MODAL_APP`` (prefix of the app names,
default ``llink``), ``LLINK_MODAL_GPU`` (``H100``; ``H100:8`` for eight, which the
jobs then use through ``torchrun``), ``LLINK_MODAL_VOLUME`` (``llink-vol``),
``LLINK_MODAL_SECRET`` (``hf-token``), ``LLINK_MODAL_TIMEOUT_S`` (per-job limit,
default per stage below).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

import modal

VOLUME_PATH = PurePosixPath("/vol")
DEFAULT_TIMEOUTS_S = {"stage-a": 4 * 3600, "stage-b": 12 * 3600, "eval": 2 * 3600}


def settings() -> dict[str, Any]:
    """App prefix, GPU, volume, secret and timeouts, from ``LLINK_MODAL_*`` variables."""
    env = os.environ.get
    timeout = env("LLINK_MODAL_TIMEOUT_S")
    return {
        "app": env("LLINK_MODAL_APP", "llink"),
        "gpu": env("LLINK_MODAL_GPU", "H100"),
        "volume": env("LLINK_MODAL_VOLUME", "llink-vol"),
        "secret": env("LLINK_MODAL_SECRET", "hf-token"),
        "timeouts": {k: int(timeout) if timeout else v for k, v in DEFAULT_TIMEOUTS_S.items()},
    }


def _requirements() -> tuple[list[str], list[str]]:
    """llink's dependencies, and the offline-model packages (installed without theirs)."""
    deps, offline = [], []
    for req in metadata.requires("llink") or []:
        spec, _, marker = req.partition(";")
        if not marker:
            deps.append(spec.strip())
        elif "offline" in marker:
            offline.append(spec.strip())
    return deps, offline


def build_image() -> modal.Image:
    """Debian + llink's dependencies + the local ``llink`` package (with its data files)."""
    deps, offline = _requirements()
    image = modal.Image.debian_slim(python_version="3.11").pip_install(*deps)
    if offline:
        image = image.pip_install(*offline, extra_options="--no-deps")
    return image.env(
        {
            "HF_HOME": str(VOLUME_PATH / "hf"),
            "LLINK_CACHE": str(VOLUME_PATH / "llink-cache"),
            "LLINK_FEATURES": str(VOLUME_PATH / "features"),
            "TOKENIZERS_PARALLELISM": "false",
        }
    ).add_local_python_source("llink", ignore=lambda p: "__pycache__" in p.parts)


SETTINGS = settings()
IMAGE = build_image()
VOLUME = modal.Volume.from_name(SETTINGS["volume"], create_if_missing=True)
SECRET = modal.Secret.from_name(SETTINGS["secret"])


def function_options(stage: str) -> dict[str, Any]:
    """The resources of one stage's remote function."""
    return {
        "image": IMAGE,
        "gpu": SETTINGS["gpu"],
        "volumes": {str(VOLUME_PATH): VOLUME},
        "secrets": [SECRET],
        "timeout": SETTINGS["timeouts"][stage],
    }


def _gpu_count() -> int:
    gpu = SETTINGS["gpu"]
    return int(gpu.split(":")[1]) if ":" in gpu else 1


def run_job(command: str, config_text: str, suffix: str, overrides: list[str],
            resume: bool) -> None:
    """Inside the container: ``llink COMMAND`` on the given config, on every GPU of the box.

    With one GPU the job runs in this process; with several, under ``torchrun``
    (one process per GPU). The volume is committed afterwards.
    """
    name = Path(tempfile.mkdtemp()) / f"config{suffix or '.yaml'}"
    name.write_text(config_text or "{}\n", encoding="utf-8")
    os.chdir(VOLUME_PATH)  # relative paths (run_dir: runs/paper) land on the volume
    args = [*command.split(), "--config", str(name), *overrides]
    if resume:
        args.append("--resume")
    n = _gpu_count()
    try:
        if n == 1:
            from llink.cli import main

            code = main(args)
        else:
            code = subprocess.call([sys.executable, "-m", "torch.distributed.run",
                                    "--standalone", f"--nproc_per_node={n}", "-m", "llink",
                                    *args])
    finally:
        VOLUME.commit()
    if code:
        raise RuntimeError(f"llink {command} failed with exit code {code}")


stage_a_app = modal.App(f"{SETTINGS['app']}-stage-a")
stage_b_app = modal.App(f"{SETTINGS['app']}-stage-b")
eval_app = modal.App(f"{SETTINGS['app']}-eval")


@stage_a_app.function(**function_options("stage-a"))
def stage_a(config_text: str = "", suffix: str = ".yaml", overrides: list[str] | None = None,
            resume: bool = False) -> None:
    """Stage A (feature caches + projector) on the remote GPU: ``llink train stage-a``."""
    run_job("train stage-a", config_text, suffix, overrides or [], resume)


@stage_b_app.function(**function_options("stage-b"))
def stage_b(config_text: str = "", suffix: str = ".yaml", overrides: list[str] | None = None,
            resume: bool = False) -> None:
    """Stage B (bridge + LoRA) on the remote GPU: ``llink train stage-b``."""
    run_job("train stage-b", config_text, suffix, overrides or [], resume)


@eval_app.function(**function_options("eval"))
def evaluate(config_text: str = "", suffix: str = ".yaml", overrides: list[str] | None = None,
             resume: bool = False) -> None:
    """Test NLL of the trained model on the remote GPU: ``llink eval nll``."""
    run_job("eval nll", config_text, suffix, overrides or [], resume=False)


def _local_args(config: str, overrides: str) -> tuple[str, str, list[str]]:
    text = Path(config).read_text(encoding="utf-8") if config else ""
    return text, Path(config).suffix if config else ".yaml", shlex.split(overrides)


@stage_a_app.local_entrypoint()
def run_stage_a(config: str = "", overrides: str = "", resume: bool = False) -> None:
    """``modal run -m llink.remote.modal_app::run_stage_a --config FILE``."""
    stage_a.remote(*_local_args(config, overrides), resume=resume)


@stage_b_app.local_entrypoint()
def run_stage_b(config: str = "", overrides: str = "", resume: bool = False) -> None:
    """``modal run -m llink.remote.modal_app::run_stage_b --config FILE``."""
    stage_b.remote(*_local_args(config, overrides), resume=resume)


@eval_app.local_entrypoint()
def run_eval(config: str = "", overrides: str = "") -> None:
    """``modal run -m llink.remote.modal_app::run_eval --config FILE``."""
    evaluate.remote(*_local_args(config, overrides))
