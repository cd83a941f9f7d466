"""Length-sorted batching: group texts of similar length to avoid padding waste."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from llink.backbones.fingerprint import code_digest


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


#: tokens per batch (rows × length) of :func:`fixed_shape_batches` for cached features
EXACT_TOKENS = 128


def fixed_shape_batches(
    lengths: Sequence[int], max_rows: int, tokens: int = EXACT_TOKENS
) -> Iterator[list[int]]:
    """Yield batches of indices of equal length, longest first, each exactly
    ``rows(length) = clamp(tokens // length, 1, max_rows)`` long: the last batch of a
    length is filled up by repeating its last index.

    A batch's shape is then a function of its length alone, and needs no padding. CPU
    matrix kernels pick their blocking (and so the order of each sum) by shape, not by
    the values, so an item's output is the same to the last bit whatever it is batched
    with, for a given ``max_rows``: a feature cache filled in any order holds the same
    vectors. (Padded batches differ in the last bits: e5's vector of a text alone vs
    among 64 others by ~1e-6.) ``tokens`` keeps short texts in bigger batches.
    """
    if max_rows < 1 or tokens < 1:
        raise ValueError("max_rows and tokens must be >= 1")
    groups: dict[int, list[int]] = {}
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        groups.setdefault(lengths[i], []).append(i)
    for length, group in groups.items():
        rows = max(1, min(max_rows, tokens // max(length, 1)))
        for start in range(0, len(group), rows):
            chunk = group[start : start + rows]
            yield chunk + [chunk[-1]] * (rows - len(chunk))


def batching_key() -> str:
    """What a feature cache key records of :func:`fixed_shape_batches`: its code and the
    shape rule, since a batch's shape sets a feature's last bits."""
    return f"fixed shapes, {EXACT_TOKENS} tokens; {code_digest(fixed_shape_batches)}"


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
