"""Literal pass-through: numbers and Latin-script words of the foreign text, as plain text.

One pooled vector (or K slots) carries the gist of a sentence, not its digits or the
spelling of a product name. With ``model.literals=true`` the prompt repeats them
next to the slots, in the order they occur::

    Foreign: <foreign><f0>…<f7></foreign>
    Literals: 30 MW | LibreOffice Writer

Digits of any script (Khmer ០–៩, Thai, Devanagari, …) become ASCII digits; runs of
Latin letters, digits and the joiners ``. , : / _ + - %`` inside them are one literal
(``F11``, ``3.5``, ``192.168.0.1``, ``file.odt``, ``Ctrl+Shift+F5``); adjacent Latin
words separated by single spaces stay together (``LibreOffice Writer``). Literals are
de-duplicated; at most ``MAX_LITERALS`` are kept.
"""

from __future__ import annotations

import re
import unicodedata

MAX_LITERALS = 12
_TOKEN = r"[A-Za-z0-9](?:[A-Za-z0-9]|[.,:/_+\-%](?=[A-Za-z0-9%]))*%?"
_LITERAL = re.compile(rf"{_TOKEN}(?: {_TOKEN})*")


def ascii_digits(text: str) -> str:
    """Every Unicode decimal digit (Khmer ០–៩, …) as its ASCII digit."""
    return "".join(
        str(unicodedata.decimal(ch)) if ch.isdecimal() and not ch.isascii() else ch
        for ch in text
    )


def extract_literals(text: str, limit: int = MAX_LITERALS) -> list[str]:
    """Numbers and Latin-script words of ``text``, in order, de-duplicated."""
    seen: list[str] = []
    for m in _LITERAL.finditer(ascii_digits(text)):
        lit = m.group(0).strip(" .,:/_+-")
        if lit and lit not in seen:
            seen.append(lit)
        if len(seen) >= limit:
            break
    return seen


def literal_line(literals: list[str]) -> str:
    """The prompt line that carries them (empty when there are none)."""
    return "Literals: " + " | ".join(literals) if literals else ""
