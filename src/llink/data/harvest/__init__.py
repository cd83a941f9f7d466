"""Harvest English–foreign parallel text from Debian packages, for any language.

Three sources of human translations: LibreOffice help pages, gettext catalogues and
the Firefox language pack (see :mod:`.sources`). Packages are downloaded and unpacked
in a work folder, never installed (:mod:`.debian`); strings are cleaned and
de-duplicated (:mod:`.clean`); the corpus is written as gzipped JSONL with
:func:`llink.data.pairs.write_pairs`, with a ``PROVENANCE.md`` beside it.

    harvest("km", Path("src/llink/corpora/en-km.jsonl.gz"))
    harvest_many({"th": Path("en-th.jsonl.gz"), "dz": Path("en-dz.jsonl.gz")})  # one pass

Only :mod:`.languages` knows language-specific names.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from llink.data.harvest.clean import RawPair, clean_pairs
from llink.data.harvest.debian import AptArchive, HarvestError, PackageArchive
from llink.data.harvest.languages import LanguageSpec, language
from llink.data.harvest.provenance import provenance_path, render_provenance, write_provenance
from llink.data.harvest.sources import CLEAN_OPTIONS, HARVESTERS, SourceResult
from llink.data.pairs import Pair, is_sentence_like, write_pairs

__all__ = [
    "SOURCES",
    "HarvestError",
    "corpus_path",
    "harvest",
    "harvest_many",
    "is_sentence_like",
    "output_paths",
    "parse_languages",
    "summary_table",
]

SOURCES = ("libreoffice-help", "gettext", "firefox")

log = logging.getLogger(__name__)


def rebuild_command(
    lang: str, out: Path, sources: Sequence[str], max_bytes: int | None = None
) -> str:
    """The shell command that rebuilds a corpus with these arguments."""
    cmd = f"python -m llink.data.harvest --lang {lang} --out {out}"
    if tuple(sources) != SOURCES:
        cmd += " --sources " + ",".join(sources)
    if max_bytes is not None:
        cmd += f" --max-bytes {max_bytes}"
    return cmd


def _gzip_size(pairs: Sequence[Pair]) -> int:
    """Bytes of ``pairs`` written by :func:`write_pairs` to a ``.gz`` file (same writer)."""
    buf = io.BytesIO()
    gz = gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0)
    with io.TextIOWrapper(gz, encoding="utf-8") as fh:
        for p in pairs:
            rec = {k: v for k, v in asdict(p).items() if v or k in ("en", "foreign")}
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        fh.flush()
        gz.close()
        return len(buf.getvalue())


def cap_pairs(pairs: list[Pair], max_bytes: int) -> tuple[list[Pair], int]:
    """The most pairs whose gzipped corpus fits in ``max_bytes``; returns (kept, dropped).

    Pairs that are not sentence-like go first, then sentence-like ones; within each,
    in the order of a SHA-256 of the English. Kept pairs stay in their input order.
    """
    if _gzip_size(pairs) <= max_bytes:
        return pairs, 0

    def rank(i: int) -> tuple[bool, bytes]:
        en = pairs[i].en
        return (not is_sentence_like(en), hashlib.sha256(en.encode()).digest())

    order = sorted(range(len(pairs)), key=rank)  # the pairs to keep first

    def first(k: int) -> list[Pair]:
        keep = set(order[:k])
        return [p for i, p in enumerate(pairs) if i in keep]

    lo, hi = 0, len(pairs)  # first(lo) fits, first(hi) does not
    while hi - lo > max(1, len(pairs) // 1000):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _gzip_size(first(mid)) <= max_bytes else (lo, mid)
    kept = first(lo)
    return kept, len(pairs) - len(kept)


def harvest(
    lang: str,
    out: Path,
    sources: Sequence[str] = SOURCES,
    workdir: Path | None = None,
    keep_workdir: bool = False,
    *,
    archive: PackageArchive | None = None,
    provenance: bool = True,
    max_bytes: int | None = None,
) -> dict[str, int]:
    """Build the English–``lang`` corpus at ``out`` from Debian packages; return counts.

    Downloads go to a fresh folder inside ``workdir`` (default: the system temp
    folder), removed afterwards unless ``keep_workdir``. ``archive`` replaces the real
    apt access (tests). Writes ``out`` (sorted, so a rebuild is byte-identical) and,
    if ``provenance``, ``<name>.PROVENANCE.md`` beside it.

    Counts: ``<source>.raw``, ``<source>.kept``, ``<source>.dropped.<reason>``,
    ``<source>.packages`` and ``<source>.unreadable_files`` per source; ``total`` and
    ``sentence_like`` for the corpus; with ``max_bytes``, ``dropped_for_size`` and
    ``dropped_for_size_sentence_like`` (see :func:`cap_pairs`).
    """
    return harvest_many(
        {lang: out},
        sources,
        workdir,
        keep_workdir,
        archive=archive,
        provenance=provenance,
        max_bytes=max_bytes,
    )[lang]


def corpus_path(out_dir: Path, lang: str) -> Path:
    """Where a corpus goes in an output folder: ``DIR/en-<lang>.jsonl.gz``."""
    return Path(out_dir) / f"en-{lang}.jsonl.gz"


def parse_languages(text: str) -> list[str]:
    """``"km,th, hi"`` → ``["km", "th", "hi"]`` (a language named twice is an error)."""
    langs = [code.strip() for code in text.split(",") if code.strip()]
    if not langs:
        raise ValueError("no language given")
    if len(set(langs)) != len(langs):
        raise ValueError(f"a language is named twice in {text!r}")
    return langs


def output_paths(langs: list[str], out: Path | None, out_dir: Path | None) -> dict[str, Path]:
    """Language → corpus path from ``--out`` (one language) or ``--out-dir`` (any number)."""
    if out is not None and out_dir is not None:
        raise ValueError("give --out or --out-dir, not both")
    if out is not None:
        if len(langs) != 1:
            raise ValueError("--out names one corpus file; use --out-dir for several languages")
        return {langs[0]: out}
    folder = out_dir if out_dir is not None else Path(".")
    return {lang: corpus_path(folder, lang) for lang in langs}


def summary_table(counts: dict[str, dict[str, int]]) -> str:
    """A plain-text table: language, total pairs, sentence-like pairs."""
    lines = [f"{'lang':<6}{'total':>10}{'sentence-like':>15}"]
    for lang, c in counts.items():
        lines.append(f"{lang:<6}{c['total']:>10,}{c['sentence_like']:>15,}")
    return "\n".join(lines)


def harvest_many(
    outs: Mapping[str, Path],
    sources: Sequence[str] = SOURCES,
    workdir: Path | None = None,
    keep_workdir: bool = False,
    *,
    archive: PackageArchive | None = None,
    provenance: bool = True,
    max_bytes: int | None = None,
) -> dict[str, dict[str, int]]:
    """Build one corpus per language (``outs``: language → output path) in one pass.

    Each package is downloaded and unpacked once, keeping the files of every language,
    and every language's strings are read from it; each corpus is then cleaned and
    written exactly as :func:`harvest` writes it alone (same file, same provenance), so
    a language's corpus does not depend on which others were harvested with it.
    Returns each language's counts (see :func:`harvest`).
    """
    unknown = [s for s in sources if s not in HARVESTERS]
    if unknown or not sources:
        raise ValueError(f"unknown sources {unknown}; choose from {', '.join(HARVESTERS)}")
    if not outs:
        raise ValueError("no language given")
    specs = [language(code) for code in outs]
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f"llink-harvest-{'-'.join(outs)}-", dir=workdir))
    log.info("harvest work folder: %s", root)
    try:
        apt = archive if archive is not None else AptArchive(root / "apt")
        by_source: dict[str, dict[str, SourceResult]] = {}
        for source in sources:
            by_source[source] = HARVESTERS[source](specs, apt, root / "packages" / source)
        archive_description = apt.describe()
    finally:
        if keep_workdir:
            log.info("kept the work folder %s", root)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return {
        spec.code: _write_corpus(
            spec,
            Path(outs[spec.code]),
            sources,
            {source: by_source[source][spec.code] for source in sources},
            archive_description,
            provenance,
            max_bytes,
        )
        for spec in specs
    }


def _write_corpus(
    spec: LanguageSpec,
    out: Path,
    sources: Sequence[str],
    results: dict[str, SourceResult],
    archive_description: str,
    provenance: bool,
    max_bytes: int | None = None,
) -> dict[str, int]:
    """Clean one language's raw pairs, write its corpus (and provenance); return counts."""
    raw: list[RawPair] = [p for r in results.values() for p in r.pairs]
    pairs, tallies = clean_pairs(raw, spec, CLEAN_OPTIONS, list(sources))
    dropped_for_size = sentence_like_before = 0
    if max_bytes is not None:
        sentence_like_before = sum(is_sentence_like(p.en) for p in pairs)
        pairs, dropped_for_size = cap_pairs(pairs, max_bytes)
    counts: dict[str, int] = {}
    for source in sources:
        tally = tallies.get(source, Counter())
        counts[f"{source}.raw"] = tally["raw"]
        counts[f"{source}.kept"] = tally["kept"]
        for key in sorted(k for k in tally if k.startswith("dropped.")):
            counts[f"{source}.{key}"] = tally[key]
        counts[f"{source}.packages"] = len(results[source].packages)
        counts[f"{source}.unreadable_files"] = results[source].problems
    counts["total"] = write_pairs(out, pairs)
    counts["sentence_like"] = sum(is_sentence_like(p.en) for p in pairs)
    if max_bytes is not None:
        counts["dropped_for_size"] = dropped_for_size
        counts["dropped_for_size_sentence_like"] = sentence_like_before - counts["sentence_like"]
    if provenance:
        text = render_provenance(
            out,
            spec.code,
            counts,
            results,
            Counter(p.source for p in pairs),
            " ".join(f"U+{ord(c):04X}" for c in spec.strip_chars),
            rebuild_command(spec.code, out, sources, max_bytes),
            archive_description,
            max_bytes,
        )
        write_provenance(provenance_path(out), text)
    return counts
