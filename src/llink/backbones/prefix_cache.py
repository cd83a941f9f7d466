"""Reusing the KV of a prompt prefix that many requests share (prefix caching).

Every prompt of a task starts with the same template (chat turn, instruction, ``Foreign:``)
before the foreign text or its slots. :class:`PrefixCache` computes the decoder's keys and
values of such a prefix once and hands each generate call a copy, so a request prefills only
its own tokens. Nothing here knows LLINK: it works for any Hugging Face causal LM.

Correct by construction: a cached prefix is used only for the tokens every prompt of the
batch shares with it, token for token and at the same positions (:func:`shared_length`),
and the batch is laid out as ``[prefix][left padding][own tokens]`` (:func:`prefixed_batch`),
so each row sees exactly what it would see unpadded. Outputs equal those without the cache
up to floating-point rounding (the prefix's matrix products have other shapes).
"""

from __future__ import annotations

import copy
import inspect
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

import torch
from torch import nn
from transformers import DynamicCache

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A mapping holding at most ``max_entries`` items, dropping the least recently used;
    counts its hits and misses."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be positive, got {max_entries}")
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: K) -> V | None:
        """The item under ``key`` (now the most recently used), or None (a miss)."""
        if key not in self._items:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    def stats(self) -> dict[str, int]:
        return {"entries": len(self), "max_entries": self.max_entries, "hits": self.hits,
                "misses": self.misses}


def shared_length(prefix: Sequence[int], prompts: Sequence[Sequence[int]]) -> int:
    """How many leading tokens of ``prefix`` every prompt starts with, leaving every prompt
    at least one token of its own (generation needs the last position's logits)."""
    n = min(len(prefix), *(len(p) - 1 for p in prompts))
    for p in prompts:
        n = next((i for i in range(n) if p[i] != prefix[i]), n)
    return max(n, 0)


def prefixed_batch(prompts: Sequence[Sequence[int]], n: int, pad_id: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids [B, T] and attention mask: the shared first ``n`` tokens, then each prompt's own
    tokens left-padded to a common length. Position ids counted from the mask (as
    ``generate`` does) give every row's own tokens the positions they have unpadded."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        own = len(p) - n
        ids[r, :n], mask[r, :n] = torch.tensor(p[:n], dtype=torch.long), 1
        ids[r, width - own:] = torch.tensor(p[n:], dtype=torch.long)
        mask[r, width - own:] = 1
    return ids, mask


def prefix_cached_batch(
    prompts: Sequence[Sequence[int]],
    pad_id: int,
    cache: PrefixCache | None,
    prefix: Sequence[int] | None,
    prefill_head: Callable[[torch.Tensor], DynamicCache],
    key: Hashable = (),
) -> tuple[torch.Tensor, torch.Tensor, DynamicCache | None]:
    """A generate batch: ids [B, T] and mask laid out [shared prefix][left padding][own
    tokens], and a copy of the KV of the part of ``prefix`` every prompt shares (None
    without a cache, a prefix or a shared part: then plain left padding).
    ``prefill_head(ids [1, n])`` computes that KV on a miss; the cache key is ``(key,
    the shared ids)``, so ``key`` names anything else the KV depends on (adapters on/off)."""
    n = shared_length(prefix, prompts) if cache is not None and prefix else 0
    ids, mask = prefixed_batch(prompts, n, pad_id)
    if n == 0 or cache is None:
        return ids, mask, None
    head = ids[:1, :n]
    kv = cache.copy_for((key, tuple(prefix[:n])), len(prompts), lambda: prefill_head(head))
    return ids, mask, kv


def cache_argument(model: nn.Module) -> str:
    """The name under which ``model.forward`` / ``generate`` take a KV cache: ``cache``
    (transformers 5) or ``past_key_values`` (earlier)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(inner.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _new_cache(config: object) -> DynamicCache:
    try:
        return DynamicCache(config=config)  # sliding-window layers where the model has them
    except TypeError:  # older transformers: no config argument
        return DynamicCache()


@torch.no_grad()
def prefill(body: nn.Module, embeds: torch.Tensor) -> DynamicCache:
    """The KV cache of ``embeds`` [1, n, D] run through ``body``, a causal LM's transformer
    without its LM head (no vocabulary logits are computed)."""
    cache = _new_cache(body.config)
    body(inputs_embeds=embeds, use_cache=True, **{cache_argument(body): cache})
    return cache


class PrefixCache:
    """KV caches of prompt prefixes, each computed once (least recently used dropped past
    ``max_entries``) and handed out as fresh copies, so generation never changes them.

    A key must name everything the KV depends on besides the model's weights: the prefix's
    token ids and, for a model with adapters, whether they are on. Clear it whenever the
    weights change (:meth:`clear`).
    """

    def __init__(self, max_entries: int = 16) -> None:
        self.entries: LRU[Hashable, DynamicCache] = LRU(max_entries)

    def copy_for(self, key: Hashable, batch: int, compute: Callable[[], DynamicCache]
                 ) -> DynamicCache:
        """A copy of the cache under ``key`` (``compute()`` on a miss), repeated for a batch
        of ``batch`` rows; generate may extend it."""
        kv = self.entries.get(key)
        if kv is None:
            kv = compute()
            self.entries.put(key, kv)
        out = copy.deepcopy(kv)
        if batch > 1:
            out.batch_repeat_interleave(batch)
        return out

    def clear(self) -> None:
        self.entries.clear()

    def stats(self) -> dict[str, int]:
        return self.entries.stats()
