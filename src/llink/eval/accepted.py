"""Accepted answers: is a short sentence's translation right?

For short everyday sentences ("I am hungry.") chrF rewards shared letters more than
meaning, so an evaluation pair file may also give each pair an ``accept`` field: a list
of groups, each a list of alternatives. An output is **right** when every group has an
alternative in it. Matching is on the lower-cased output with curly apostrophes made
straight; an alternative is a word or phrase matched whole (``"hi"`` does not match
"this"), and a trailing ``*`` lets the last word go on (``"rain*"`` matches "raining",
``"thank*"`` "thanks"). Example, for "ខ្ញុំចង់ផឹកទឹក។" (I want to drink water)::

    {"en": "I want to drink water.", "foreign": "…", "accept": [["drink*"], ["water"]]}
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llink.data.pairs import (
    PairFileError,
    file_format,
    open_text,
    pair_from_object,
    parse_json_object,
)
from llink.eval.stats import wilson_interval

#: The groups of one pair: every group must have one alternative in the output.
Accept = list[list[str]]


def _pattern(alternative: str) -> re.Pattern[str]:
    stem = alternative.rstrip("*")
    tail = r"[a-z']*" if alternative.endswith("*") else ""
    return re.compile(r"(?<![a-z0-9])" + re.escape(stem) + tail + r"(?![a-z0-9])")


def _normal(text: str) -> str:
    return text.lower().replace("\u2019", "'").replace("\u2018", "'")


def is_accepted(output: str, accept: Accept) -> bool:
    """True when every group of ``accept`` has one alternative in ``output``."""
    text = _normal(output)
    return all(any(_pattern(_normal(alt)).search(text) for alt in group) for group in accept)


def _check(path: Path, lineno: int, value: Any) -> Accept:
    ok = (isinstance(value, list) and value
          and all(isinstance(g, list) and g and all(isinstance(a, str) and a.strip("* ")
                                                    for a in g) for g in value))
    if not ok:
        raise PairFileError(path, lineno, "'accept' must be a non-empty list of non-empty "
                                          "lists of words, e.g. [[\"drink*\"], [\"water\"]]")
    return value


def read_accept(path: str | Path) -> dict[tuple[str, str], Accept]:
    """The ``accept`` groups of a JSONL pair file, keyed by (English, foreign) as
    :func:`~llink.data.pairs.read_pairs` returns them (stripped); pairs without one are
    left out, and so are files of other formats. A malformed line raises
    :class:`~llink.data.pairs.PairFileError` naming file and line."""
    path = Path(path)
    if file_format(path) != "jsonl":
        return {}
    out: dict[tuple[str, str], Accept] = {}
    with open_text(path, "r") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            obj = parse_json_object(path, lineno, line)
            pair = pair_from_object(path, lineno, obj)
            if "accept" in obj:
                out[(pair.en.strip(), pair.foreign.strip())] = _check(path, lineno,
                                                                       obj["accept"])
    return out


def accepted_answers(outputs: dict[str, Sequence[str]],
                     accepts: Sequence[Accept | None]) -> dict[str, Any]:
    """Per system: how many outputs of the items that have ``accept`` groups are right,
    with a 95% Wilson interval, and which items were right."""
    rows = [i for i, a in enumerate(accepts) if a]
    res: dict[str, Any] = {"n": len(rows), "systems": {}}
    for name, outs in outputs.items():
        if len(outs) != len(accepts):
            raise ValueError(f"{name}: {len(outs)} outputs for {len(accepts)} items")
        right = [i for i in rows if is_accepted(outs[i], accepts[i])]  # type: ignore[arg-type]
        res["systems"][name] = {"right": len(right), "fraction": len(right) / len(rows)
                                if rows else None,
                                "ci": wilson_interval(len(right), len(rows)), "items": right}
    return res


def format_accepted(res: dict[str, Any]) -> str:
    """Console lines for an :func:`accepted_answers` result."""
    lines = [f"right answers (every key word present) on {res['n']} items, 95% Wilson interval:"]
    for name, s in res["systems"].items():
        frac = "n/a" if s["fraction"] is None else \
            f"{s['fraction']:.2f} [{s['ci'][0]:.2f}, {s['ci'][1]:.2f}]"
        lines.append(f"  {name:<10} {s['right']:>3} of {res['n']}  {frac}")
    return "\n".join(lines)
