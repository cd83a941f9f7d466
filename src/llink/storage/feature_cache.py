"""On-disk cache of vectors that are pure functions of a text (encoder outputs, teacher states).

A :class:`FeatureStore` lives in a folder named by a hash of its *settings* (model
weights fingerprint, prompt, prefix, clipping, dtype, ...), so a change of any of
them can never reuse a stale entry. Inside, vectors are keyed by the SHA-1 of the
text and written in safetensors shards, each one atomically and named by the hash
of the keys it holds: an interrupted build keeps every finished shard and resumes
from there, and several processes can add shards to one store at the same time.

Under N processes (``torchrun``), :meth:`FeatureStore.get` splits the missing texts
into the same chunks a single process would use and deals them out round-robin;
each rank writes its own shards, then every rank reads the union. The result is
the single-process cache, built about N times faster.
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

from llink.storage.fileio import atomic_path, write_text_atomic
from llink.train import distributed as dist

CACHE_FORMAT = 1


def text_key(text: str) -> bytes:
    """The 20-byte key of a text."""
    return hashlib.sha1(text.encode("utf-8")).digest()


def settings_hash(settings: dict[str, Any]) -> str:
    """A stable hash of a JSON-serialisable settings mapping."""
    blob = json.dumps({"format": CACHE_FORMAT, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class FeatureStore:
    """Vectors for texts under one set of settings, computed once and reused.

    ``ragged=True`` stores a variable-length matrix per text (e.g. an encoder's token
    states, [T_i, D]): a shard then holds the rows of all its texts one after the other,
    their lengths, and ``dtype`` (default float16, half the disk of float32).
    """

    def __init__(
        self, root: str | Path, kind: str, settings: dict[str, Any], ragged: bool = False,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.ragged = ragged
        self.dtype = dtype or (torch.float16 if ragged else torch.float32)
        settings = {**settings, **({"ragged": True, "store_dtype": str(self.dtype)}
                                   if ragged else {})}
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
        self._loaded: set[str] = set()
        self.refresh()

    def refresh(self) -> None:
        """Read shards written since the last look (by this or another process)."""
        for path in sorted(self.dir.glob("shard-*.safetensors")):
            if path.name in self._loaded:
                continue
            data = load_file(path)
            keys, vectors = data["keys"], data["vectors"]
            s = len(self._shards)
            self._shards.append(self._rows(vectors, data.get("lengths")))
            self._loaded.add(path.name)
            for row, key in enumerate(keys.numpy()):
                self._index[key.tobytes()] = (s, row)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, text: str) -> bool:
        return text_key(text) in self._index

    def _rows(self, vectors: torch.Tensor, lengths: torch.Tensor | None) -> Any:
        """A shard's rows: the [N, D] matrix, or (ragged) a list of [T_i, D] views."""
        if lengths is None:
            return vectors
        return list(torch.split(vectors, lengths.tolist()))

    def _add_shard(self, texts: Sequence[str], vectors: torch.Tensor | list[torch.Tensor]) -> None:
        raw = [text_key(t) for t in texts]
        keys = torch.tensor([list(k) for k in raw], dtype=torch.uint8)
        tensors = {"keys": keys}
        if self.ragged:
            parts = [v.detach().to("cpu", self.dtype) for v in vectors]
            tensors["lengths"] = torch.tensor([p.shape[0] for p in parts], dtype=torch.int64)
            tensors["vectors"] = torch.cat(parts).contiguous()
        else:
            tensors["vectors"] = vectors.detach().to("cpu", self.dtype).contiguous()
        name = f"shard-{hashlib.sha1(b''.join(raw)).hexdigest()[:16]}.safetensors"
        with atomic_path(self.dir / name) as tmp:
            save_file(tensors, str(tmp))
        s = len(self._shards)
        self._shards.append(self._rows(tensors["vectors"], tensors.get("lengths")))
        self._loaded.add(name)
        for row, t in enumerate(texts):
            self._index[text_key(t)] = (s, row)

    def get(
        self,
        texts: Sequence[str],
        compute: Callable[[list[str]], torch.Tensor],
        chunk_size: int = 256,
        desc: str = "",
        progress: bool = True,
    ) -> Any:
        """Vectors [len(texts), D] for ``texts``, computing only the missing ones (ragged:
        a list of [T_i, D] tensors, and ``compute`` returns such a list).

        Missing texts are sorted by length (similar lengths batch well) and computed
        ``chunk_size`` at a time; each chunk is saved as a shard before the next.
        Under N processes every rank must call this with the same texts: chunk ``j``
        is computed by rank ``j mod N``, and all ranks return the complete result.
        """
        distributed = dist.is_distributed()
        if distributed:
            dist.barrier()  # nobody writes here now: every rank sees the same shards
            self.refresh()
        missing = sorted(
            {t for t in texts if text_key(t) not in self._index}, key=lambda t: (len(t), t)
        )
        if distributed:
            dist.barrier()  # every rank has its list before any rank writes a new shard
        if missing:
            chunks = [missing[i : i + chunk_size] for i in range(0, len(missing), chunk_size)]
            mine = chunks[dist.rank() :: dist.world_size()]
            bar = tqdm(
                total=sum(map(len, mine)),
                desc=desc or self.settings["kind"],
                unit="text",
                disable=not progress or not dist.is_main(),
            )
            for part in mine:
                self._add_shard(part, compute(part))
                bar.update(len(part))
            bar.close()
            if distributed:
                dist.barrier()  # every rank's shards are on disk
                self.refresh()
        rows = [self._index[text_key(t)] for t in texts]
        if self.ragged:
            return [self._shards[s][r] for s, r in rows]
        if not texts:
            return torch.empty(0, 0)
        return torch.stack([self._shards[s][r] for s, r in rows])
