"""Slot vectors cached per distinct foreign text, so follow-up requests skip the encoder.

A conversation often asks several questions about one foreign text; its slots (encoder,
projector, bridge) do not depend on the question, only on the text and the gate boost.
:class:`SlotCache` keeps the most recently used ones (a bounded LRU) for the server.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llink.backbones.prefix_cache import LRU
from llink.method.model import LLINK

#: (slot vectors [K, D], how many of them the text's prompt takes)
Entry = tuple[torch.Tensor, int]


class SlotCache:
    """The slots of up to ``max_entries`` foreign texts, keyed by (text, gate boost);
    ``max_entries=0`` keeps none (every request reads its text through the encoder)."""

    def __init__(self, max_entries: int = 256) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be 0 (off) or positive, got {max_entries}")
        self.entries: LRU[tuple[str, float], Entry] | None = (
            LRU(max_entries) if max_entries else None)

    @torch.no_grad()
    def slots(self, model: LLINK, texts: Sequence[str], gate_boost: float = 1.0
              ) -> tuple[torch.Tensor, list[int]]:
        """Slots of ``texts`` [B, K, D] and the slots each text's prompt takes (K, or fewer
        for models whose short texts take fewer); the encoder reads only texts not cached."""
        cached = self.entries
        found = {t: cached.get((t, gate_boost)) if cached is not None else None for t in texts}
        missing = [t for t, e in found.items() if e is None]
        if missing:
            enc, tokens = model.read(missing)
            counts = model.slot_counts(tokens) or [model.num_slots] * len(missing)
            fresh = model.slots(enc, gate_boost, tokens)
            for text, row, k in zip(missing, fresh, counts, strict=True):
                found[text] = (row, k)
                if cached is not None:
                    cached.put((text, gate_boost), (row, k))
        rows = [found[t] for t in texts]
        return torch.stack([s for s, _ in rows]), [k for _, k in rows]

    def clear(self) -> None:
        if self.entries is not None:
            self.entries.clear()

    def stats(self) -> dict[str, int]:
        if self.entries is None:
            return {"entries": 0, "max_entries": 0, "hits": 0, "misses": 0}
        return self.entries.stats()
