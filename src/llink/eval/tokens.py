"""Token budget (the paper's analysis): decoder tokens of the foreign text, of its English
reference, and of the K slots (+ the two ``<foreign>`` markers) that replace it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def count_tokens(tokenizer, texts: Sequence[str]) -> list[int]:
    """Tokens of each text with the decoder's tokenizer, without special tokens."""
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, 90th percentile (linear interpolation) and mean."""
    arr = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(arr)), "p90": float(np.percentile(arr, 90)),
            "mean": float(arr.mean())}


def token_budget(
    tokenizer, foreign: Sequence[str], english: Sequence[str], num_slots: int
) -> dict[str, Any]:
    """Median / p90 decoder tokens: foreign text vs English reference vs K + 2 slot tokens."""
    if len(foreign) != len(english) or not foreign:
        raise ValueError("need the same positive number of foreign and English texts")
    f, e = count_tokens(tokenizer, foreign), count_tokens(tokenizer, english)
    slots = num_slots + 2
    return {
        "n": len(foreign),
        "foreign": summary(f),
        "english": summary(e),
        "slots": slots,
        "ratio_foreign_to_slots": summary([x / slots for x in f]),
        "ratio_foreign_to_english": summary([x / max(y, 1) for x, y in zip(f, e, strict=True)]),
    }
