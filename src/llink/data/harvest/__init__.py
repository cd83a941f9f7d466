"""Harvest English–foreign parallel text from Debian packages, for any language.

Three sources of human translations: LibreOffice help pages, gettext catalogues and
the Firefox language pack (see :mod:`.sources`). Packages are downloaded and unpacked
in a work folder, never installed (:mod:`.debian`); strings are cleaned and
de-duplicated (:mod:`.clean`); the corpus is written as gzipped JSONL with
:func:`llink.data.pairs.write_pairs`, with a ``PROVENANCE.md`` beside it.

    harvest("km", Path("src/llink/corpora/en-km.jsonl.gz"))

Only :mod:`.languages` knows language-specific names.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from llink.data.harvest.clean import RawPair, clean_pairs, is_sentence_like
from llink.data.harvest.debian import AptArchive, HarvestError, PackageArchive
from llink.data.harvest.languages import language
from llink.data.harvest.provenance import provenance_path, render_provenance, write_provenance
from llink.data.harvest.sources import CLEAN_OPTIONS, HARVESTERS, SourceResult
from llink.data.pairs import write_pairs

__all__ = ["SOURCES", "HarvestError", "harvest", "is_sentence_like"]

SOURCES = ("libreoffice-help", "gettext", "firefox")

log = logging.getLogger(__name__)


def rebuild_command(lang: str, out: Path, sources: Sequence[str]) -> str:
    """The shell command that rebuilds a corpus with these arguments."""
    cmd = f"python -m llink.data.harvest --lang {lang} --out {out}"
    if tuple(sources) != SOURCES:
        cmd += " --sources " + ",".join(sources)
    return cmd


def harvest(
    lang: str,
    out: Path,
    sources: Sequence[str] = SOURCES,
    workdir: Path | None = None,
    keep_workdir: bool = False,
    *,
    archive: PackageArchive | None = None,
    provenance: bool = True,
) -> dict[str, int]:
    """Build the English–``lang`` corpus at ``out`` from Debian packages; return counts.

    Downloads go to a fresh folder inside ``workdir`` (default: the system temp
    folder), removed afterwards unless ``keep_workdir``. ``archive`` replaces the real
    apt access (tests). Writes ``out`` (sorted, so a rebuild is byte-identical) and,
    if ``provenance``, ``<name>.PROVENANCE.md`` beside it.

    Counts: ``<source>.raw``, ``<source>.kept``, ``<source>.dropped.<reason>``,
    ``<source>.packages`` and ``<source>.unreadable_files`` per source; ``total`` and
    ``sentence_like`` for the corpus.
    """
    unknown = [s for s in sources if s not in HARVESTERS]
    if unknown or not sources:
        raise ValueError(f"unknown sources {unknown}; choose from {', '.join(HARVESTERS)}")
    spec = language(lang)
    out = Path(out)
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f"llink-harvest-{lang}-", dir=workdir))
    log.info("harvest work folder: %s", root)
    try:
        apt = archive if archive is not None else AptArchive(root / "apt")
        results: dict[str, SourceResult] = {}
        for source in sources:
            results[source] = HARVESTERS[source](spec, apt, root / "packages" / source)
        raw: list[RawPair] = [p for r in results.values() for p in r.pairs]
        pairs, tallies = clean_pairs(raw, spec, CLEAN_OPTIONS, list(sources))
        archive_description = apt.describe()
    finally:
        if keep_workdir:
            log.info("kept the work folder %s", root)
        else:
            shutil.rmtree(root, ignore_errors=True)

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
    if provenance:
        text = render_provenance(
            out,
            lang,
            counts,
            results,
            Counter(p.source for p in pairs),
            " ".join(f"U+{ord(c):04X}" for c in spec.strip_chars),
            rebuild_command(lang, out, sources),
            archive_description,
        )
        write_provenance(provenance_path(out), text)
    return counts
