"""The PROVENANCE.md written beside a harvested corpus: origin, licences, counts, rebuild."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from llink.data.harvest.sources import SourceResult
from llink.storage.fileio import write_text_atomic

SOURCE_TEXT = {
    "libreoffice-help": (
        "LibreOffice help",
        "HTML help pages of `libreoffice-help-<locale>` aligned with `libreoffice-help-en-us` "
        "by file path and paragraph/heading id. Licence: MPL-2.0 (LibreOffice help content).",
    ),
    "gettext": (
        "gettext catalogues",
        "Compiled `.mo` catalogues of every package whose files include "
        "`…/<lang>/LC_MESSAGES/*.mo` (found through the archive's Contents indices), "
        "plus `libreoffice-l10n-<locale>`. Licence: each package's own, listed below, "
        "from its `copyright` file: in machine-readable files the last paragraph whose "
        "`Files` globs match the catalogue's likely source (`po/<lang>.po`, "
        "`po/<lang>/<domain>.po`), else `Files: *`; free-form files are summarised by "
        "the licences they mention.",
    ),
    "firefox": (
        "Firefox",
        "Fluent `.ftl` and `.properties` files of the `firefox-esr-l10n-<locale>` language "
        "pack aligned with the en-US files in `firefox-esr`'s `omni.ja` by path and key. "
        "Licence: MPL-2.0.",
    ),
}

CLEANING = """\
- Accelerators removed (catalogues: `_ & ~`; Firefox: `&`): `~` before a letter or a
  word-initial digit, a lone `_` or `&` before a letter (`&&` → `&`), bracketed
  mnemonics such as `(_F)`.
- Tags removed (catalogues, Firefox) and HTML entities decoded (catalogues; the help
  HTML is parsed). Help text inside `hidden` spans is skipped except the `default`
  branch of a platform/module switch.
- Deleted from the foreign side: {deleted}.
- Whitespace collapsed to single spaces.
- Dropped: empty sides; translator credits (`translator-credits`, "Your names", …, or a
  translation that adds e-mail addresses); English without letters outside
  placeholders; untranslated
  strings (foreign equal to English, or without a character of the language's script);
  sides over 2,000 characters; duplicates (each English and each foreign string kept
  once, case-insensitively; earlier sources win, then the most frequent translation,
  then alphabetical order).
- Placeholders (`%s`, `%1`, `{{ $n }}`, `$var`, `#1`) are kept; `is_sentence_like()` in
  `llink.data.pairs` selects the pairs with ≥ 5 English words and none of them."""


def provenance_path(corpus: Path) -> Path:
    """``en-km.jsonl.gz`` → ``en-km.PROVENANCE.md`` in the same folder."""
    return corpus.with_name(corpus.name.split(".", 1)[0] + ".PROVENANCE.md")


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def render_provenance(
    corpus: Path,
    lang: str,
    counts: Mapping[str, int],
    results: Mapping[str, SourceResult],
    kept_by_source: Counter[str],
    deleted_chars: str,
    command: str,
    archive: str,
    max_bytes: int | None = None,
) -> str:
    """The Markdown text of the provenance file."""
    lines = [
        f"# {corpus.name}: English–{lang} parallel text from Debian packages",
        "",
        f"{counts['total']:,} pairs, {counts['sentence_like']:,} of them sentence-like. "
        'Gzipped JSONL, one `{"en", "foreign", "lang", "source"}` object per line, sorted by '
        "source, English, foreign. Human translations shipped in Debian packages, read "
        "without installing them (`apt-get download` + `dpkg-deb`), from:",
        "",
        *(f"- {line}" for line in archive.splitlines()),
        "",
        "Rebuild (needs apt access to a Debian archive; a rebuild gives the same file "
        "while the package versions below are current):",
        "",
        f"    {command}",
        "",
    ]
    if max_bytes is not None:
        dropped = counts.get("dropped_for_size", 0)
        lines += [
            f"Size cap: {max_bytes:,} bytes gzipped (`--max-bytes`). "
            + (
                f"{dropped:,} cleaned pairs did not fit and were left out "
                f"({counts.get('dropped_for_size_sentence_like', 0):,} of them sentence-like): "
                "pairs that are not sentence-like first, then sentence-like ones, each in the "
                "order of a SHA-256 of the English (`cap_pairs` in `llink.data.harvest`). The "
                "counts table below is before the cap; the pairs kept per package, after it."
                if dropped
                else "Every cleaned pair fits; none was left out."
            ),
            "",
        ]
    lines += [
        "## Counts",
        "",
    ]
    reasons = sorted({k.split(".", 2)[2] for k in counts if k.count(".") == 2})
    lines += [
        _row(["source", "raw", "kept", *(f"dropped: {r}" for r in reasons)]),
        _row(["---"] * (3 + len(reasons))),
    ]
    for kind in results:
        cells = [counts.get(f"{kind}.{k}", 0) for k in ("raw", "kept")]
        cells += [counts.get(f"{kind}.dropped.{r}", 0) for r in reasons]
        lines.append(_row([kind, *(f"{c:,}" for c in cells)]))
    lines += ["", "## Cleaning", "", CLEANING.format(deleted=deleted_chars), ""]
    for kind, result in results.items():
        title, text = SOURCE_TEXT.get(kind, (kind, ""))
        lines += [f"## {title} (`{kind}`)", "", text, ""]
        lines += [_row(["package", "version", "licence (copyright file)", "pairs kept"])]
        lines += [_row(["---"] * 4)]
        for pkg in result.packages:
            source = f"gettext:{pkg.name}" if kind == "gettext" else kind
            kept = kept_by_source[source] if kind == "gettext" else "—"
            licence = result.licences.get(pkg.name, "")
            lines.append(_row([f"`{pkg.name}`", pkg.version, licence, kept]))
        if result.notes:
            lines += ["", "Notes:", ""] + [f"- {note}" for note in result.notes]
        lines.append("")
    return "\n".join(lines)


def write_provenance(path: Path, text: str) -> None:
    """Write the provenance file atomically."""
    write_text_atomic(path, text)
