"""Per-language facts the harvester needs: Debian package suffixes, locale folders, script.

Everything else in the harvester is written once for any language; only this table
changes. A language missing from the table gets :func:`language`'s defaults (its code
everywhere, no script check). The locale codes are those of Debian bookworm's package
names (``libreoffice-help-dz``, ``libreoffice-l10n-pa-in``, ``firefox-esr-l10n-ne-np``);
``None`` where the project has no such locale (Firefox: dz, as, or, bo; LibreOffice:
bo, ur); a code whose package bookworm lacks (``firefox-esr-l10n-am``,
``libreoffice-l10n-lo``) is noted as missing in the corpus provenance. Chinese is left
out: its gettext folders ``zh_CN`` and ``zh_TW`` would mix two scripts under one code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class LanguageSpec:
    """How one language is named in Debian's LibreOffice, Firefox and gettext files.

    ``libreoffice`` and ``firefox`` are the locale codes those projects use
    (``"pt-BR"``, ``"gu-IN"``); the Debian package suffix is their lower-case form.
    ``script`` lists the code-point ranges of the language's own script: a translation
    with no character in them is still English (empty: no such check, e.g. Latin
    scripts). ``strip_chars`` are deleted from the foreign side (word-break hints).
    """

    code: str
    libreoffice: str | None = None
    firefox: str | None = None
    script: tuple[tuple[int, int], ...] = ()
    strip_chars: str = "\u200b"

    @property
    def locale_dir_re(self) -> re.Pattern[str]:
        """Matches gettext locale folder names of this language: ``km``, ``km_KH``."""
        return re.compile(rf"{re.escape(self.code)}(?:_[A-Z]{{2}})?")

    def has_script(self, text: str) -> bool:
        """True when ``text`` has a character of this language's script (always, if unset)."""
        if not self.script:
            return True
        return any(lo <= ord(ch) <= hi for ch in text for lo, hi in self.script)


_KHMER = ((0x1780, 0x17FF), (0x19E0, 0x19FF))
_DEVANAGARI = ((0x0900, 0x097F), (0xA8E0, 0xA8FF))
_BENGALI = ((0x0980, 0x09FF),)
_TIBETAN = ((0x0F00, 0x0FFF),)
_ARABIC = ((0x0600, 0x06FF), (0x0750, 0x077F), (0x08A0, 0x08FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF))
_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF))

LANGUAGES: dict[str, LanguageSpec] = {
    spec.code: spec
    for spec in (
        LanguageSpec("km", "km", "km", _KHMER, strip_chars="\u200b\u200c"),
        LanguageSpec("th", "th", "th", ((0x0E00, 0x0E7F),)),
        LanguageSpec("lo", "lo", "lo", ((0x0E80, 0x0EFF),)),
        LanguageSpec("my", "my", "my", ((0x1000, 0x109F), (0xA9E0, 0xA9FF), (0xAA60, 0xAA7F))),
        LanguageSpec("am", "am", "am", ((0x1200, 0x139F), (0x2D80, 0x2DDF), (0xAB00, 0xAB2F))),
        LanguageSpec("ne", "ne", "ne-NP", _DEVANAGARI),
        LanguageSpec("hi", "hi", "hi-IN", _DEVANAGARI),
        LanguageSpec("mr", "mr", "mr", _DEVANAGARI),
        LanguageSpec("si", "si", "si", ((0x0D80, 0x0DFF),)),
        LanguageSpec("ta", "ta", "ta", ((0x0B80, 0x0BFF),)),
        LanguageSpec("te", "te", "te", ((0x0C00, 0x0C7F),)),
        LanguageSpec("kn", "kn", "kn", ((0x0C80, 0x0CFF),)),
        LanguageSpec("ml", "ml", "ml", ((0x0D00, 0x0D7F),)),
        LanguageSpec("bn", "bn", "bn", _BENGALI),
        LanguageSpec("as", "as", None, _BENGALI),
        LanguageSpec("or", "or", None, ((0x0B00, 0x0B7F),)),
        LanguageSpec("gu", "gu", "gu-IN", ((0x0A80, 0x0AFF),)),
        LanguageSpec("pa", "pa-IN", "pa-IN", ((0x0A00, 0x0A7F),)),
        LanguageSpec("ka", "ka", "ka", ((0x10A0, 0x10FF), (0x1C90, 0x1CBF), (0x2D00, 0x2D2F))),
        LanguageSpec("hy", "hy", "hy-AM", ((0x0530, 0x058F),)),
        # Dzongkha: LibreOffice has help and UI in it (libreoffice-help-dz,
        # libreoffice-l10n-dz); Firefox has no Dzongkha language pack.
        LanguageSpec("dz", "dz", None, _TIBETAN),
        LanguageSpec("bo", None, None, _TIBETAN),  # Tibetan: gettext catalogues only
        LanguageSpec("ar", "ar", "ar", _ARABIC),
        LanguageSpec("fa", "fa", "fa", _ARABIC),
        LanguageSpec("ur", None, "ur", _ARABIC),
        LanguageSpec("he", "he", "he", ((0x0590, 0x05FF), (0xFB1D, 0xFB4F))),
        LanguageSpec("el", "el", "el", ((0x0370, 0x03FF), (0x1F00, 0x1FFF))),
        LanguageSpec("ru", "ru", "ru", ((0x0400, 0x052F),)),
        LanguageSpec("ja", "ja", "ja", ((0x3040, 0x30FF), (0x31F0, 0x31FF), *_CJK)),
        LanguageSpec("ko", "ko", "ko", ((0xAC00, 0xD7AF), (0x1100, 0x11FF), (0x3130, 0x318F))),
    )
}


def language(code: str) -> LanguageSpec:
    """The :class:`LanguageSpec` for ``code``; unknown codes get plain defaults."""
    return LANGUAGES.get(code) or LanguageSpec(code, libreoffice=code, firefox=code)
