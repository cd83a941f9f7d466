"""Cheap, deterministic fingerprints of model weights, used to key caches."""

from __future__ import annotations

import hashlib
import inspect
import json
from typing import Any

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


def tokenizer_digest(tokenizer: Any) -> str:
    """SHA-256 of everything that decides a tokenizer's ids: its full serialisation when
    it is a fast tokenizer, else its vocabulary; plus special and added tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        body = backend.to_str()
    else:
        body = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    extra = json.dumps({"special": tokenizer.all_special_tokens,
                        "added": sorted(str(t) for t in tokenizer.get_added_vocab())},
                       ensure_ascii=False)
    return hashlib.sha256((body + extra).encode("utf-8")).hexdigest()


def code_digest(*objects: Any) -> str:
    """SHA-256 of the source code of functions or classes: cached values computed by
    them are keyed by it, so editing that code can never reuse stale values."""
    h = hashlib.sha256()
    for obj in objects:
        h.update(inspect.getsource(obj).encode("utf-8"))
    return h.hexdigest()[:20]
