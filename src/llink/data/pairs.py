"""Parallel (English, foreign) pairs: the one reader and writer of pair files.

Formats: JSONL (``{"en": ..., "foreign": ...}`` per line, optional ``lang`` and
``source``) and TSV (``english<TAB>foreign``). A ``.gz`` suffix means gzip. Every
line is validated: malformed lines raise :class:`PairFileError` naming the file and
line; pairs that are empty, too long or identical on both sides are dropped and
counted in a :class:`ReadReport`, never silently.
"""

from __future__ import annotations

import gzip
import io
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from llink.storage.fileio import atomic_path

#: Aliases accepted for the two sides in JSONL files.
EN_KEYS = ("en", "english", "tgt", "target")
FOREIGN_KEYS = ("foreign", "src", "source_text", "xx")


#: A printf/Qt/Fluent/shell-style placeholder in UI text.
PLACEHOLDER = re.compile(
    r"%(?:\d+\$)?[-+#0]*\d*(?:\.\d+)?[A-Za-z]\w*"  # printf %s %1$s %.2f %PRODUCTNAME
    r"|%\d+"  # %1 (Qt, LibreOffice)
    r"|%\(\w+\)"  # Python %(name)s
    r"|\{[^{}]*\}"  # {0} {name} { $count }
    r"|\$\(?\{?[A-Za-z_]\w*"  # $var ${var} $(ARG1)
    r"|\$\d"  # $1
    r"|#\d"  # Firefox plural #1
)


def has_placeholder(text: str) -> bool:
    """True when ``text`` has a printf/Qt/Fluent/shell-style placeholder."""
    return PLACEHOLDER.search(text) is not None


def is_sentence_like(en: str) -> bool:
    """At least five English words (tokens with a letter) and no placeholders."""
    words = sum(1 for tok in en.split() if any(ch.isalpha() for ch in tok))
    return words >= 5 and not has_placeholder(en)


@dataclass(frozen=True)
class Pair:
    """One English sentence and its translation in the foreign language."""

    en: str
    foreign: str
    lang: str = ""
    source: str = ""


def source_group(source: str) -> str:
    """The group a pair's ``source`` field reports under: ``gettext:vlc-l10n`` → ``gettext``.

    Evaluations report per group (e.g. ``libreoffice-help``, ``gettext``, ``firefox``);
    pairs without a source are ``unknown``.
    """
    return source.split(":", 1)[0] if source else "unknown"


class PairFileError(ValueError):
    """A pair file has a line that cannot be read as a pair."""

    def __init__(self, path: str | Path, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path = str(path)
        self.line = line


@dataclass
class ReadReport:
    """What happened to the lines of one pair file."""

    path: str
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        drops = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())) or "none"
        return f"{self.path}: kept {self.kept} pairs; dropped: {drops}"


def open_text(path: Path, mode: str) -> IO[str]:
    """Open a UTF-8 text file, gzip-compressed when its name ends in ``.gz``."""
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")  # type: ignore[return-value]
    return open(path, mode, encoding="utf-8")


def _first_key(obj: dict, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in obj), None)


def parse_line(path: Path, lineno: int, line: str, fmt: str) -> Pair:
    """One line of a pair file in format ``fmt`` (``tsv`` or ``jsonl``) as a Pair; a
    malformed line raises :class:`PairFileError` naming file and line."""
    if fmt == "tsv":
        cols = line.split("\t")
        if len(cols) < 2:
            raise PairFileError(path, lineno, "expected 'english<TAB>foreign', found no tab")
        if len(cols) > 2:
            raise PairFileError(
                path, lineno, f"expected 2 tab-separated columns, found {len(cols)}"
            )
        return Pair(en=cols[0], foreign=cols[1])
    return pair_from_object(path, lineno, parse_json_object(path, lineno, line))


def parse_json_object(path: Path, lineno: int, line: str) -> dict[str, Any]:
    """One JSONL line decoded, which must be an object; otherwise :class:`PairFileError`."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise PairFileError(
            path, lineno, f"invalid JSON ({exc.msg} at column {exc.colno})"
        ) from None
    if not isinstance(obj, dict):
        raise PairFileError(path, lineno, f"expected a JSON object, found {type(obj).__name__}")
    return obj


def pair_from_object(path: Path, lineno: int, obj: dict[str, Any]) -> Pair:
    """The Pair of a decoded JSONL line (English and foreign under any accepted key)."""
    en_key, fo_key = _first_key(obj, EN_KEYS), _first_key(obj, FOREIGN_KEYS)
    if en_key is None or fo_key is None:
        missing = "English ('en')" if en_key is None else "foreign ('foreign')"
        raise PairFileError(path, lineno, f"missing the {missing} field; keys: {sorted(obj)}")
    en, fo = obj[en_key], obj[fo_key]
    if not isinstance(en, str) or not isinstance(fo, str):
        raise PairFileError(path, lineno, "the 'en' and 'foreign' fields must be strings")
    lang, source = obj.get("lang", ""), obj.get("source", "")
    return Pair(en=en, foreign=fo, lang=str(lang or ""), source=str(source or ""))


def file_format(path: Path) -> str:
    """``jsonl`` or ``tsv``, from the file name (a ``.gz`` suffix is looked through)."""
    suffixes = [s for s in path.suffixes if s != ".gz"]
    ext = suffixes[-1] if suffixes else ""
    if ext in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if ext in (".tsv", ".txt"):
        return "tsv"
    raise PairFileError(
        path, 0, f"unknown pair file type {ext!r}: use .jsonl or .tsv (optionally .gz)"
    )


def iter_pairs(
    path: str | Path, max_chars: int = 2000, report: ReadReport | None = None
) -> Iterator[Pair]:
    """Yield validated pairs from a JSONL or TSV file (``.gz`` allowed).

    Raises :class:`PairFileError` for a malformed line. Empty pairs, pairs with a
    side longer than ``max_chars`` characters and pairs whose two sides are
    identical are dropped and counted in ``report``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pair file not found: {path}")
    fmt = file_format(path)
    report = report if report is not None else ReadReport(str(path))
    with open_text(path, "r") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            try:
                pair = parse_line(path, lineno, line, fmt)
            except UnicodeDecodeError:
                raise PairFileError(path, lineno, "not valid UTF-8") from None
            en, fo = pair.en.strip(), pair.foreign.strip()
            if not en or not fo:
                report.dropped["empty"] += 1
            elif len(en) > max_chars or len(fo) > max_chars:
                report.dropped["too_long"] += 1
            elif en == fo:
                report.dropped["identical_sides"] += 1
            else:
                report.kept += 1
                yield Pair(en=en, foreign=fo, lang=pair.lang, source=pair.source)


def read_pairs(path: str | Path, max_chars: int = 2000) -> tuple[list[Pair], ReadReport]:
    """Read a whole pair file; return the kept pairs and the report of dropped ones."""
    report = ReadReport(str(path))
    try:
        pairs = list(iter_pairs(path, max_chars=max_chars, report=report))
    except UnicodeDecodeError as exc:  # gzip streams decode in chunks, not per line
        raise PairFileError(path, 0, f"not valid UTF-8 ({exc.reason})") from None
    return pairs, report


def write_pairs(path: str | Path, pairs: Iterable[Pair]) -> int:
    """Write pairs as JSONL (gzipped if the name ends in ``.gz``), atomically.

    Returns the number of pairs written. Empty ``lang``/``source`` fields are omitted.
    """
    path = Path(path)
    n = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        # No file name and mtime=0 in the gzip header: identical content, identical bytes.
        sink: IO[bytes] = raw
        if path.suffix == ".gz":
            sink = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
        with io.TextIOWrapper(sink, encoding="utf-8") as fh:
            for pair in pairs:
                rec = {k: v for k, v in asdict(pair).items() if v or k in ("en", "foreign")}
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
    return n
