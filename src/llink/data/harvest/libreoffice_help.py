"""LibreOffice help: align ``libreoffice-help-<lang>`` with ``libreoffice-help-en-us``.

Both packages hold the same generated HTML files under
``usr/share/libreoffice/help/<locale>/text/``. Every translatable paragraph or heading
carries an id (``par_id3149821``, ``hd_id3149686``); a pair is the text of the same id
(and, for the rare id used twice in a file, the same occurrence) in the same file.

Text inside ``hidden`` spans is skipped, except the ``default…`` branch of a platform or
module switch (the one a reader sees on Linux outside a module-specific view): without
it sentences such as "choose Tools - Options" would lose their menu path.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

HELP_DIR = "usr/share/libreoffice/help"
ENGLISH_PACKAGE = "libreoffice-help-en-us"
ENGLISH_LOCALE = "en-US"

_ID = re.compile(r"(?:par|hd)_id\w*")
_VOID = frozenset(
    [
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "param",
        "source",
        "track",
        "wbr",
    ]
)


def package_name(locale: str) -> str:
    """Debian package of the help in a LibreOffice locale (``pt-BR`` → ``libreoffice-help-pt-br``)."""
    return f"libreoffice-help-{locale.lower()}"


def keep_path(locale: str) -> re.Pattern[str]:
    """Matches the help HTML files of ``locale`` inside a package."""
    return re.compile(rf"{HELP_DIR}/{re.escape(locale)}/text/.+\.html")


class _HelpParser(HTMLParser):
    """Collects the visible text of every element with a ``par_id``/``hd_id`` id."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.texts: dict[str, str] = {}
        self._stack: list[tuple[str, bool, bool]] = []  # (tag, captures, hides)
        self._key: str | None = None
        self._parts: list[str] = []
        self._hidden = 0
        self._seen: dict[str, int] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID:
            if tag == "br" and self._key is not None:
                self._parts.append(" ")
            return
        attr = dict(attrs)
        elem_id = attr.get("id") or ""
        hides = "hidden" in attr and not elem_id.startswith("default")
        captures = self._key is None and bool(_ID.fullmatch(elem_id))
        if captures:
            n = self._seen.get(elem_id, 0)
            self._seen[elem_id] = n + 1
            self._key = elem_id if n == 0 else f"{elem_id}#{n}"
            self._parts = []
        self._hidden += hides
        self._stack.append((tag, captures, hides))

    def handle_endtag(self, tag: str) -> None:
        if not any(t == tag for t, _, _ in self._stack):
            return  # a stray end tag
        while self._stack:
            open_tag, captures, hides = self._stack.pop()
            self._hidden -= hides
            if captures and self._key is not None:
                self.texts[self._key] = "".join(self._parts)
                self._key = None
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._key is not None and not self._hidden:
            self._parts.append(data)


def parse_help_file(text: str) -> dict[str, str]:
    """Map each ``par_id``/``hd_id`` of one help HTML file to its visible text."""
    parser = _HelpParser()
    parser.feed(text)
    parser.close()
    return {key: " ".join(val.split()) for key, val in parser.texts.items()}


def help_root(package_root: Path, locale: str) -> Path:
    """The ``text`` folder of the help in ``locale`` inside an unpacked package."""
    return package_root / HELP_DIR / locale / "text"


def align_help(english_text: Path, foreign_text: Path) -> Iterator[tuple[str, str]]:
    """Yield (English, foreign) texts of the same id in the same file, in path order."""
    for en_file in sorted(english_text.rglob("*.html")):
        fo_file = foreign_text / en_file.relative_to(english_text)
        if not fo_file.is_file():
            continue
        english = parse_help_file(en_file.read_text(encoding="utf-8", errors="replace"))
        foreign = parse_help_file(fo_file.read_text(encoding="utf-8", errors="replace"))
        for key, en in english.items():
            if key in foreign:
                yield en, foreign[key]
