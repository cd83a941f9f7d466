"""Numeric fidelity: do a system's outputs keep the numbers of the reference?

Normalisation (applied to references and outputs alike):

1. Every Unicode decimal digit (Khmer ០–៩, Arabic-Indic, full-width, ...) becomes its
   ASCII digit.
2. A number is a maximal run of digits, optionally with groups joined by one ``,`` or
   ``.`` (``1,024``, ``3.5``, ``192.168.0.1``); signs, units and words are ignored, so
   ``-5`` counts as ``5`` and ``30MW`` as ``30``. Spelled-out numbers do not count.
3. A comma followed by exactly three digits is a thousands separator and is dropped
   (``1,024`` → ``1024``); any other comma acts as a decimal point (``3,5`` → ``3.5``).
4. Leading zeros of the integer part and trailing zeros of a fraction are dropped
   (``007`` → ``7``, ``2.50`` → ``2.5``, ``4.0`` → ``4``).

An output is a hit when every distinct number of its reference occurs among the
output's numbers. Only references with at least one number are counted.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from llink.eval.stats import wilson_interval

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def _ascii_digits(text: str) -> str:
    return "".join(
        str(unicodedata.decimal(ch)) if ch.isdecimal() and not ch.isascii() else ch
        for ch in text
    )


def normalise_number(raw: str) -> str:
    """Canonical form of one matched number (rules 3 and 4 of the module docstring)."""
    parts = re.split(r"([.,])", raw)
    out = parts[0]
    for sep, group in zip(parts[1::2], parts[2::2], strict=True):
        if sep == "," and len(group) == 3:
            out += group  # thousands separator
        else:
            out += "." + group
    if out.count(".") == 1:
        whole, frac = out.split(".")
        frac = frac.rstrip("0")
        whole = whole.lstrip("0") or "0"
        return f"{whole}.{frac}" if frac else whole
    if "." not in out:
        return out.lstrip("0") or "0"
    return out  # dotted sequences (versions, addresses) are compared as written


def extract_numbers(text: str) -> set[str]:
    """The distinct normalised numbers in ``text``."""
    return {normalise_number(m) for m in _NUMBER.findall(_ascii_digits(text))}


def numeric_fidelity(
    references: Sequence[str], outputs: dict[str, Sequence[str]],
    groups: Sequence[str] | None = None,
) -> dict[str, Any]:
    """For references with numbers: per system, the fraction of outputs keeping all of them,
    with a 95% Wilson interval; with ``groups``, also per group under ``by_source``."""
    wanted = [(i, extract_numbers(r)) for i, r in enumerate(references)]
    wanted = [(i, nums) for i, nums in wanted if nums]
    for name, outs in outputs.items():
        if len(outs) != len(references):
            raise ValueError(f"{name}: {len(outs)} outputs for {len(references)} references")

    def tally(rows: list[tuple[int, set[str]]]) -> dict[str, dict[str, Any]]:
        out = {}
        for name, outs in outputs.items():
            hits = sum(nums <= extract_numbers(outs[i]) for i, nums in rows)
            out[name] = {"fraction": hits / len(rows) if rows else None, "hits": hits,
                         "ci": wilson_interval(hits, len(rows)) if rows else None}
        return out

    res: dict[str, Any] = {"n": len(references), "n_with_numbers": len(wanted),
                           "systems": tally(wanted), "indices": [i for i, _ in wanted]}
    if groups is not None:
        by: dict[str, list[tuple[int, set[str]]]] = {}
        for i, nums in wanted:
            by.setdefault(groups[i] or "unknown", []).append((i, nums))
        res["by_source"] = {g: {"n_with_numbers": len(rows), "systems": tally(rows)}
                            for g, rows in sorted(by.items(), key=lambda kv: -len(kv[1]))}
    return res
