"""Deterministic train/dev/test splits by a hash of the English side.

Two pairs whose English differs only in case, spacing or punctuation hash alike,
so no English sentence of dev or test appears in train, even lightly altered.

Within a split, pairs are kept in the order of a second hash of the English, not
in file order (shipped corpora are sorted by source): the first N items of any
split are then a deterministic random sample spread over all of it, the same for
every system and every run, and a larger N is a superset of a smaller one.

Several corpora (``data.pairs="builtin:en-km,builtin:en-th"``): each pair keeps its
language, and de-duplication, the sentence-like filter and the ``max_*_pairs`` caps
apply per language. The split of a pair depends on its English alone, never on its
language, so an English sentence found in two languages' corpora is in the same split
for both: it cannot train one language and test another.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from llink.config import DataConfig
from llink.data.pairs import Pair, ReadReport, is_sentence_like, read_pairs, source_group

_NON_WORD = re.compile(r"\W+")
SPLITS = ("train", "dev", "test")


def english_key(en: str) -> str:
    """The normalised English used for hashing and de-duplication."""
    return _NON_WORD.sub(" ", en.casefold()).strip()


def unit_hash(en: str, salt: str) -> float:
    """A number in [0, 1) determined by the normalised English and the salt."""
    digest = hashlib.sha256(f"{salt}\x00{english_key(en)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(en: str, dev_fraction: float, test_fraction: float, salt: str) -> str:
    """Which split an English sentence belongs to: ``train``, ``dev`` or ``test``."""
    u = unit_hash(en, salt)
    if u < test_fraction:
        return "test"
    if u < test_fraction + dev_fraction:
        return "dev"
    return "train"


def is_held_out(en: str, cfg: DataConfig) -> bool:
    """Whether an English sentence hashes into the dev or test split of ``cfg``."""
    return split_of(en, cfg.dev_fraction, cfg.test_fraction, cfg.split_salt) != "train"


def corpus_specs(pairs: str | list[str]) -> list[str]:
    """``data.pairs`` as a list: ``"builtin:en-km, builtin:en-th"`` → two corpora."""
    specs = [s.strip() for s in pairs.split(",")] if isinstance(pairs, str) else list(pairs)
    specs = [s for s in specs if s]
    if not specs:
        raise ValueError("data.pairs names no corpus")
    if len(set(specs)) != len(specs):
        raise ValueError(f"data.pairs names a corpus twice: {pairs!r}")
    return specs


_CORPUS_LANG = re.compile(r"en-([A-Za-z]{2,3}(?:[-_][A-Za-z0-9]+)?)$")


def spec_language(spec: str) -> str:
    """The language a corpus name implies: ``builtin:en-th`` or ``…/en-th.jsonl.gz`` → th."""
    name = spec.split(":", 1)[1] if spec.startswith("builtin:") else Path(spec).name
    m = _CORPUS_LANG.search(name.split(".", 1)[0])
    return m.group(1) if m else ""


def read_corpora(specs: list[str], max_chars: int) -> tuple[list[Pair], ReadReport]:
    """Read one or several corpora. With several, a pair without a ``lang`` field takes
    the language of its corpus's name (``en-XX``); a corpus that names none is an error.
    One corpus is read as is."""
    if len(specs) == 1:
        return read_pairs(resolve_pairs_path(specs[0]), max_chars=max_chars)
    pairs: list[Pair] = []
    report = ReadReport(",".join(specs))
    for spec in specs:
        got, rep = read_pairs(resolve_pairs_path(spec), max_chars=max_chars)
        report.kept += rep.kept
        report.dropped.update(rep.dropped)
        lang = spec_language(spec)
        if not lang and any(not p.lang for p in got):
            raise ValueError(f"{spec}: pairs without a 'lang' field, and the file name does "
                             "not say the language (name it en-XX.jsonl or add 'lang')")
        pairs += [p if p.lang else Pair(p.en, p.foreign, lang, p.source) for p in got]
    return pairs, report


def resolve_pairs_path(spec: str) -> Path:
    """``builtin:NAME`` names a corpus shipped with llink; anything else is a file path."""
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        ref = resources.files("llink") / "corpora" / f"{name}.jsonl.gz"
        path = Path(str(ref))
        if not path.is_file():
            shipped = sorted(
                p.name.removesuffix(".jsonl.gz")
                for p in Path(str(resources.files("llink") / "corpora")).glob("*.jsonl.gz")
            )
            raise FileNotFoundError(
                f"no built-in corpus {name!r}; shipped: {', '.join(shipped) or 'none'}. "
                f"Build one with `llink data harvest --lang XX` or pass a .jsonl/.tsv path."
            )
        return path
    return Path(spec)


@dataclass
class Splits:
    """The pairs of each split, and what was filtered on the way."""

    train: list[Pair]
    dev: list[Pair]
    test: list[Pair]
    read_report: ReadReport | None = None
    filtered: dict[str, dict[str, int]] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "dev": len(self.dev), "test": len(self.test)}

    def counts_by_lang(self) -> dict[str, dict[str, int]]:
        """Pairs per language in each split: ``{"km": {"train": …, "dev": …, "test": …}}``."""
        per = {s: Counter(p.lang for p in getattr(self, s)) for s in SPLITS}
        langs = sorted({lang for c in per.values() for lang in c})
        return {lang: {s: per[s][lang] for s in SPLITS} for lang in langs}

    def summary(self) -> str:
        parts = [f"{k} {v}" for k, v in self.counts().items()]
        lines = ["pairs: " + ", ".join(parts)]
        by_lang = self.counts_by_lang()
        if len(by_lang) > 1:
            lines += [f"  {lang or '?'}: " + ", ".join(f"{k} {v}" for k, v in c.items())
                      for lang, c in by_lang.items()]
        if self.read_report is not None:
            lines.append(self.read_report.summary())
        for split, reasons in self.filtered.items():
            if reasons:
                lines.append(f"{split}: " + ", ".join(f"{k} {v}" for k, v in reasons.items()))
        return "\n".join(lines)


def split_pairs(
    pairs: list[Pair], dev_fraction: float, test_fraction: float, salt: str
) -> dict[str, list[Pair]]:
    """Assign every pair to a split by the hash of its English; keep input order."""
    out: dict[str, list[Pair]] = {s: [] for s in SPLITS}
    for p in pairs:
        out[split_of(p.en, dev_fraction, test_fraction, salt)].append(p)
    return out


def sample_order(pairs: list[Pair], salt: str) -> list[Pair]:
    """``pairs`` in the order of a hash of their English: the first N are a random sample."""
    return sorted(pairs, key=lambda p: unit_hash(p.en, salt + "/order"))


def interleave_languages(pairs: list[Pair]) -> list[Pair]:
    """Round-robin over the languages (sorted), each in its own order: the first N pairs
    hold every language about equally, whatever the size of its pool. (In plain hash
    order a language whose capped pool came from a large split crowds the front.)"""
    by_lang: dict[str, list[Pair]] = {}
    for p in pairs:
        by_lang.setdefault(p.lang, []).append(p)
    queues = [by_lang[k] for k in sorted(by_lang)]
    return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues
            if i < len(q)]


def _select(
    pairs: list[Pair], sentence_like_only: bool, limit: int | None, salt: str
) -> tuple[list[Pair], dict[str, int]]:
    """De-duplicate on English, optionally keep sentence-like pairs, order by hash, cap."""
    seen: set[str] = set()
    kept: list[Pair] = []
    dropped = {"duplicate_english": 0, "not_sentence_like": 0, "over_limit": 0}
    for p in pairs:
        key = english_key(p.en)
        if key in seen:
            dropped["duplicate_english"] += 1
            continue
        seen.add(key)
        if sentence_like_only and not is_sentence_like(p.en):
            dropped["not_sentence_like"] += 1
            continue
        kept.append(p)
    kept = sample_order(kept, salt)
    if limit is not None and len(kept) > limit:
        dropped["over_limit"] = len(kept) - limit
        kept = kept[:limit]
    return kept, {k: v for k, v in dropped.items() if v}


def load_splits(cfg: DataConfig) -> Splits:
    """Read the configured pair file(s) and return their train/dev/test splits.

    Each language is selected on its own (de-duplication, filter, caps); with several
    languages the training split lists them merged in the order of the English hash,
    dev and test take the languages in turn (:func:`interleave_languages`).
    """
    pairs, report = read_corpora(corpus_specs(cfg.pairs), cfg.max_chars)
    if not pairs:
        raise ValueError(f"{cfg.pairs}: no usable pairs ({report.summary()})")
    raw = split_pairs(pairs, cfg.dev_fraction, cfg.test_fraction, cfg.split_salt)
    limits = {"train": cfg.max_train_pairs, "dev": cfg.max_dev_pairs, "test": cfg.max_test_pairs}
    chosen: dict[str, list[Pair]] = {}
    filtered: dict[str, dict[str, int]] = {}
    langs = list(dict.fromkeys(p.lang for p in pairs))  # in order of first appearance
    unknown = sorted(set(cfg.zero_shot) - set(langs))
    if unknown:
        raise ValueError(f"data.zero_shot names language(s) {unknown} that data.pairs does not "
                         f"hold; its languages: {', '.join(langs)}")
    if cfg.zero_shot and not set(langs) - set(cfg.zero_shot):
        raise ValueError("data.zero_shot leaves no language to train on")
    for s in SPLITS:
        pool = raw[s]
        excluded = 0
        if cfg.exclude_sources and s != "test":
            pool = [p for p in pool if source_group(p.source) not in cfg.exclude_sources]
            excluded = len(raw[s]) - len(pool)
        zero_shot = 0
        if cfg.zero_shot and s != "test":
            kept_pool = [p for p in pool if p.lang not in cfg.zero_shot]
            zero_shot, pool = len(pool) - len(kept_pool), kept_pool
        if len(langs) == 1:
            chosen[s], filtered[s] = _select(pool, cfg.sentence_like_only, limits[s],
                                             cfg.split_salt)
        else:
            chosen[s], dropped = [], Counter()
            for lang in langs:
                kept, why = _select([p for p in pool if p.lang == lang], cfg.sentence_like_only,
                                    limits[s], cfg.split_salt)
                chosen[s] += kept
                dropped.update(why)
            chosen[s] = sample_order(chosen[s], cfg.split_salt)  # stable: ties keep lang order
            if s != "train":  # the first N of dev/test hold every language about equally
                chosen[s] = interleave_languages(chosen[s])
            filtered[s] = dict(dropped)
        if excluded:
            filtered[s] = {"excluded_source": excluded, **filtered[s]}
        if zero_shot:
            filtered[s] = {"zero_shot_language": zero_shot, **filtered[s]}
    return Splits(chosen["train"], chosen["dev"], chosen["test"], report, filtered)
