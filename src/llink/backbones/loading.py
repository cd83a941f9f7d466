"""Build the frozen models of a run from its :class:`~llink.config.ModelConfig`."""

from __future__ import annotations

import torch

from llink.backbones.decoder import FrozenDecoder
from llink.backbones.encoder import FrozenEncoder
from llink.config import ModelConfig
from llink.train import distributed

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU (under N processes: GPU ``LOCAL_RANK``)."""
    return distributed.resolve_device(name)


def resolve_dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(_DTYPES)}")
    return _DTYPES[name]


def load_encoder(cfg: ModelConfig, device: torch.device) -> FrozenEncoder:
    """The frozen encoder named by the config."""
    return FrozenEncoder.from_pretrained(
        cfg.encoder,
        prefix=cfg.encoder_prefix,
        max_chars=cfg.max_foreign_chars,
        cache_dir=cfg.cache_dir,
        device=device,
        dtype=resolve_dtype(cfg.dtype),
    )


def load_decoder(cfg: ModelConfig, device: torch.device) -> FrozenDecoder:
    """The frozen decoder named by the config, with its reserved tokens added."""
    return FrozenDecoder.from_pretrained(
        cfg.decoder,
        num_slots=cfg.num_slots,
        cache_dir=cfg.cache_dir,
        device=device,
        dtype=resolve_dtype(cfg.dtype),
    )
