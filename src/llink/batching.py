"""Length-sorted batching: group texts of similar length to avoid padding waste."""

from __future__ import annotations

from collections.abc import Iterator, Sequence


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Yield lists of indices, longest first, each of at most ``batch_size`` items.

    Longest-first makes the first batch the largest, so an out-of-memory error shows
    at once rather than at the end of a long pass.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
