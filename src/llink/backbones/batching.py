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


def length_groups(lengths: Sequence[int], max_gap: int = 4, min_groups: int = 1) -> list[list[int]]:
    """Indices in groups of similar length, shortest first (for one batch split into passes).

    A group holds consecutive lengths (ascending) at most ``max_gap`` above its shortest
    member, so padding each group to its longest wastes at most ``max_gap`` tokens per row.
    While there are fewer than ``min_groups`` groups the largest is halved (processes that
    must run the same number of passes, e.g. with sharded weights, ask for the largest count).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and lengths[i] - lengths[groups[-1][0]] <= max_gap:
            groups[-1].append(i)
        else:
            groups.append([i])
    if len(groups) < min_groups and min_groups > len(lengths):
        raise ValueError(f"{len(lengths)} items cannot make {min_groups} groups")
    while len(groups) < min_groups:
        k = max(range(len(groups)), key=lambda j: len(groups[j]))
        g = groups[k]
        groups[k : k + 1] = [g[: len(g) // 2], g[len(g) // 2 :]]
    return groups
