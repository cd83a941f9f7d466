"""Cheap, deterministic fingerprints of model weights, used to key caches."""

from __future__ import annotations

import hashlib

import torch


def tensor_digest(t: torch.Tensor, stride: int = 1) -> str:
    """SHA-256 of a tensor's shape and (strided) values rounded to bfloat16.

    Rounding makes the same weights loaded in float32 or bfloat16 hash alike.
    """
    flat = t.detach().reshape(-1)[::stride].to(torch.bfloat16).to(torch.float32).cpu()
    h = hashlib.sha256(f"{tuple(t.shape)}|{stride}".encode())
    h.update(flat.numpy().tobytes())
    return h.hexdigest()


def module_fingerprint(module: torch.nn.Module, stride: int = 997) -> str:
    """Hash every parameter's name, shape and a strided sample of its values.

    Samples every ``stride``-th element, so the cost is a fraction of a full hash
    while any retraining, conversion change or re-initialised row shows up.
    """
    h = hashlib.sha256()
    for name, p in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor_digest(p, stride if p.numel() > stride * 8 else 1).encode())
    return h.hexdigest()
