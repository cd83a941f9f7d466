"""Monolingual English text read through the encoder (``data.english``).

The frozen encoder maps a sentence and its translations close together, so an English
sentence is a valid encoder input: pairs (encoder(English), teacher(English)) teach
Stage A the map in every domain English covers, and the foreign languages inherit it
through the encoder. Files hold one sentence per line (``.txt``, optionally ``.gz``);
``builtin:en-wordnet`` is WordNet's usage examples, shipped with llink.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from llink.config import DataConfig
from llink.data.pairs import Pair, open_text
from llink.data.splits import english_key, sample_order


def resolve_english_path(spec: str) -> Path:
    """``builtin:NAME`` names a file shipped in ``llink/corpora`` (``NAME.txt.gz``)."""
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        path = Path(str(resources.files("llink") / "corpora" / f"{name}.txt.gz"))
        if not path.is_file():
            raise FileNotFoundError(f"no built-in English corpus {name!r} (looked for {path})")
        return path
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"English text file not found: {path}")
    return path


def read_english(cfg: DataConfig, held_out: list[Pair]) -> list[str]:
    """Up to ``cfg.max_english`` sentences of ``cfg.english`` (a hash-ordered sample),
    without any sentence equal (after normalisation) to a dev/test English sentence."""
    if not cfg.english:
        return []
    path = resolve_english_path(cfg.english)
    with open_text(path, "r") as fh:
        lines = [" ".join(line.split()) for line in fh]
    banned = {english_key(p.en) for p in held_out}
    seen: set[str] = set()
    kept = []
    for text in lines:
        key = english_key(text)
        if text and key not in banned and key not in seen:
            seen.add(key)
            kept.append(text)
    ordered = [p.en for p in sample_order([Pair(t, t) for t in kept], cfg.split_salt)]
    return ordered[: cfg.max_english] if cfg.max_english is not None else ordered
