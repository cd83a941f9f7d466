"""On-disk cache of vectors that are pure functions of a text (encoder outputs, teacher states).

A :class:`FeatureStore` lives in a folder named by a hash of its *settings* (model
weights fingerprint, prompt, prefix, clipping, dtype, ...), so a change of any of
them can never reuse a stale entry. Inside, vectors are keyed by the SHA-1 of the
text and written in safetensors shards, each one atomically: an interrupted build
keeps every finished shard and resumes from there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from llink.fileio import atomic_path, write_text_atomic

CACHE_FORMAT = 1


def text_key(text: str) -> bytes:
    """The 20-byte key of a text."""
    return hashlib.sha1(text.encode("utf-8")).digest()


def settings_hash(settings: dict[str, Any]) -> str:
    """A stable hash of a JSON-serialisable settings mapping."""
    blob = json.dumps({"format": CACHE_FORMAT, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class FeatureStore:
    """Vectors for texts under one set of settings, computed once and reused."""

    def __init__(self, root: str | Path, kind: str, settings: dict[str, Any]) -> None:
        self.settings = {"kind": kind, **settings}
        self.dir = Path(root) / f"{kind}-{settings_hash(self.settings)}"
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "settings.json"
        if not meta.exists():
            write_text_atomic(
                meta, json.dumps(self.settings, indent=2, sort_keys=True, default=str)
            )
        self._index: dict[bytes, tuple[int, int]] = {}
        self._shards: list[torch.Tensor] = []
        self._load_shards()

    def _load_shards(self) -> None:
        for path in sorted(self.dir.glob("shard-*.safetensors")):
            data = load_file(path)
            keys, vectors = data["keys"], data["vectors"]
            s = len(self._shards)
            self._shards.append(vectors)
            for row, key in enumerate(keys.numpy()):
                self._index[key.tobytes()] = (s, row)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, text: str) -> bool:
        return text_key(text) in self._index

    def _add_shard(self, texts: Sequence[str], vectors: torch.Tensor) -> None:
        keys = torch.tensor([list(text_key(t)) for t in texts], dtype=torch.uint8)
        vectors = vectors.detach().float().cpu().contiguous()
        n = len(list(self.dir.glob("shard-*.safetensors")))
        path = self.dir / f"shard-{n:06d}.safetensors"
        with atomic_path(path) as tmp:
            save_file({"keys": keys, "vectors": vectors}, str(tmp))
        s = len(self._shards)
        self._shards.append(vectors)
        for row, t in enumerate(texts):
            self._index[text_key(t)] = (s, row)

    def get(
        self,
        texts: Sequence[str],
        compute: Callable[[list[str]], torch.Tensor],
        chunk_size: int = 1024,
        desc: str = "",
        progress: bool = True,
    ) -> torch.Tensor:
        """Vectors [len(texts), D] for ``texts``, computing only the missing ones.

        Missing texts are sorted by length (similar lengths batch well) and computed
        ``chunk_size`` at a time; each chunk is saved as a shard before the next.
        """
        missing = sorted({t for t in texts if text_key(t) not in self._index}, key=len)
        if missing:
            bar = tqdm(
                total=len(missing),
                desc=desc or self.settings["kind"],
                unit="text",
                disable=not progress,
            )
            for start in range(0, len(missing), chunk_size):
                part = missing[start : start + chunk_size]
                self._add_shard(part, compute(part))
                bar.update(len(part))
            bar.close()
        if not texts:
            return torch.empty(0, 0)
        rows = [self._index[text_key(t)] for t in texts]
        return torch.stack([self._shards[s][r] for s, r in rows])
