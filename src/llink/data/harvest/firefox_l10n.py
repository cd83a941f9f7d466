"""Firefox: the language pack of ``firefox-esr-l10n-<locale>`` against ``firefox-esr``'s en-US.

The language pack is an ``.xpi`` (zip) of Fluent ``.ftl`` and ``.properties`` files;
the en-US originals sit in the two ``omni.ja`` archives (zip) of ``firefox-esr``:
``omni.ja`` for toolkit files and ``browser/omni.ja`` for browser files, whose
language-pack paths carry a ``browser/`` prefix. Files are matched by path with the
locale folder names replaced, strings by message id (``id`` or ``id.attribute``) or
property key; access and command keys (single letters) are skipped.

Fluent values are flattened to text: term and message references
(``{ -brand-short-name }``, ``{ other-id.title }``) are replaced by their value in the
same language, selectors by their default variant, string literals by their text;
variables (``{ $count }``) stay as placeholders.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

FIREFOX_PACKAGE = "firefox-esr"
FIREFOX_DIR = "usr/lib/firefox-esr"
OMNI_JARS = {"": f"{FIREFOX_DIR}/omni.ja", "browser/": f"{FIREFOX_DIR}/browser/omni.ja"}
ENGLISH_LOCALE = "en-US"

_ENTRY = re.compile(r"^(-?[A-Za-z][\w-]*)[ \t]*=[ \t]*(.*)$")
_ATTRIBUTE = re.compile(r"^[ \t]+\.([A-Za-z][\w-]*)[ \t]*=[ \t]*(.*)$")
_VARIANT = re.compile(r"(\*?)\[[^\]]*\]")
# A term or message reference: -brand-name, -brand-name(case: "x"), other-id, other-id.attr
_REFERENCE = re.compile(r"(-?[A-Za-z][\w-]*(?:\.[A-Za-z][\w-]*)?)\s*(?:\(.*\))?", re.S)
_SHORTCUT_KEY = re.compile(r"(?:access-?key|command-?key|\.key|keycode)$", re.I)


def package_name(locale: str) -> str:
    """Debian package of a Firefox language pack (``gu-IN`` → ``firefox-esr-l10n-gu-in``)."""
    return f"firefox-esr-l10n-{locale.lower()}"


def langpack_path(locale: str) -> str:
    """Path of the language pack inside its package."""
    return f"{FIREFOX_DIR}/browser/extensions/langpack-{locale}@firefox-esr.mozilla.org.xpi"


# -- Fluent ---------------------------------------------------------------------------
def _fluent_entries(text: str) -> Iterator[tuple[str, str]]:
    """Yield (key, raw pattern) for each message/term value and attribute."""
    key: str | None = None
    lines: list[str] = []

    def flush() -> Iterator[tuple[str, str]]:
        if key is not None and "".join(lines).strip():
            yield key, "\n".join(lines).strip()

    message = ""
    for line in text.splitlines():
        entry = _ENTRY.match(line)
        attribute = _ATTRIBUTE.match(line) if message else None
        if entry:
            yield from flush()
            message = entry.group(1)
            key, lines = message, [entry.group(2)]
        elif attribute:
            yield from flush()
            key, lines = f"{message}.{attribute.group(1)}", [attribute.group(2)]
        elif line[:1] in (" ", "\t") or (not line.strip() and key is not None):
            lines.append(line)
        else:  # a comment or anything else at column 0 ends the entry
            yield from flush()
            key, lines, message = None, [], ""
    yield from flush()


def _closing_brace(text: str, start: int) -> int:
    """Index of the ``}`` closing the ``{`` at ``start`` (string literals respected)."""
    depth, i, in_string = 0, start, False
    while i < len(text):
        ch = text[i]
        if in_string:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return len(text)


def _default_variant(body: str) -> str:
    """The text of the ``*[default]`` variant of a select expression's body."""
    marks = list(_VARIANT.finditer(body))
    # Only variant keys at nesting depth 0 count.
    top = [m for m in marks if body[: m.start()].count("{") == body[: m.start()].count("}")]
    for i, m in enumerate(top):
        if m.group(1):
            end = top[i + 1].start() if i + 1 < len(top) else len(body)
            return body[m.end() : end]
    return ""


def flatten_fluent(pattern: str, terms: dict[str, str], depth: int = 0) -> str:
    """Turn a Fluent pattern into text (see the module docstring)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        start = pattern.find("{", i)
        if start < 0:
            out.append(pattern[i:])
            break
        out.append(pattern[i:start])
        end = _closing_brace(pattern, start)
        inner = pattern[start + 1 : end].strip()
        out.append(_placeable(inner, terms, depth))
        i = end + 1
    return "".join(out)


def _placeable(inner: str, terms: dict[str, str], depth: int) -> str:
    selector, arrow, body = inner.partition("->")
    if arrow and "{" not in selector:
        return flatten_fluent(_default_variant(body), terms, depth)
    if inner.startswith('"') and inner.endswith('"'):
        return inner[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    ref = _REFERENCE.fullmatch(inner)
    if ref and depth < 5 and ref.group(1) in terms:
        return flatten_fluent(terms[ref.group(1)], terms, depth + 1)
    return "{ " + inner + " }"


def parse_ftl(text: str, terms: dict[str, str] | None = None) -> dict[str, str]:
    """Map message ids (``id``, ``id.attr``) of a ``.ftl`` file to flattened text.

    ``terms`` (``-name`` → raw pattern, e.g. from :func:`fluent_terms` over all files)
    resolves term references; the file's own terms and messages are used too (for
    ``{ -term }`` and ``{ other-message.attr }``). Terms are not returned.
    """
    entries = dict(_fluent_entries(text))
    known = {**(terms or {}), **entries}
    return {k: flatten_fluent(v, known) for k, v in entries.items() if not k.startswith("-")}


def fluent_terms(texts: list[str]) -> dict[str, str]:
    """Collect term values (``-brand-short-name`` → raw pattern) from many ``.ftl`` files."""
    terms: dict[str, str] = {}
    for text in texts:
        for key, value in _fluent_entries(text):
            if key.startswith("-") and "." not in key:
                terms.setdefault(key, value)
    return terms


# -- .properties ------------------------------------------------------------------------
def _unescape_property(value: str) -> str:
    def sub(m: re.Match[str]) -> str:
        esc = m.group(1)
        if esc.startswith("u"):
            return chr(int(esc[1:], 16))
        return {"n": "\n", "t": "\t", "r": "\r", "f": "\f"}.get(esc, esc)

    return re.sub(r"\\(u[0-9A-Fa-f]{4}|.)", sub, value)


def parse_properties(text: str) -> dict[str, str]:
    """Map keys of a Java-style ``.properties`` file (UTF-8, as Mozilla writes them) to values."""
    result: dict[str, str] = {}
    logical: list[str] = []
    for raw in text.splitlines():
        line = raw.lstrip()
        if not logical and (not line or line[0] in "#!"):
            continue
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2:  # an odd number of backslashes continues the line
            logical.append(line[:-1])
            continue
        logical.append(line)
        entry, logical = "".join(logical), []
        m = re.match(r"((?:\\.|[^=:\s\\])+)\s*[=:\s]\s*(.*)$", entry)
        if m:
            result[_unescape_property(m.group(1))] = _unescape_property(m.group(2))
    return result


# -- pairing ------------------------------------------------------------------------------
def _normalise(path: str, locale: str) -> str:
    """``chrome/km/locale/km/global/x.properties`` → ``chrome/{L}/locale/{L}/global/…``."""
    return "/".join("{L}" if part == locale else part for part in path.split("/"))


def _l10n_files(archive: zipfile.ZipFile, locale: str, prefix: str = "") -> dict[str, str]:
    """Normalised path → decoded text of the .ftl/.properties files of ``locale``."""
    files: dict[str, str] = {}
    for name in sorted(archive.namelist()):
        if name.endswith((".ftl", ".properties")) and locale in name.split("/"):
            text = archive.read(name).decode("utf-8", errors="replace")
            files[_normalise(prefix + name, locale)] = text
    return files


def _parse(path: str, text: str, terms: dict[str, str]) -> dict[str, str]:
    return parse_ftl(text, terms) if path.endswith(".ftl") else parse_properties(text)


def align_langpack(
    langpack: Path, omni_jars: dict[str, Path], locale: str
) -> Iterator[tuple[str, str]]:
    """Yield (English, foreign) strings of a language pack against the en-US ``omni.ja``.

    ``omni_jars`` maps a language-pack path prefix (``""``, ``"browser/"``) to the
    ``omni.ja`` holding the en-US files under that prefix.
    """
    english: dict[str, str] = {}
    for prefix, jar in sorted(omni_jars.items()):
        with zipfile.ZipFile(jar) as archive:
            english.update(_l10n_files(archive, ENGLISH_LOCALE, prefix))
    with zipfile.ZipFile(langpack) as archive:
        foreign = _l10n_files(archive, locale)
    en_terms = fluent_terms([t for p, t in english.items() if p.endswith(".ftl")])
    fo_terms = fluent_terms([t for p, t in foreign.items() if p.endswith(".ftl")])
    for path in sorted(set(english) & set(foreign)):
        en_strings = _parse(path, english[path], en_terms)
        fo_strings = _parse(path, foreign[path], fo_terms)
        for key in sorted(set(en_strings) & set(fo_strings)):
            if not _SHORTCUT_KEY.search(key):  # a key letter, not text
                yield en_strings[key], fo_strings[key]
