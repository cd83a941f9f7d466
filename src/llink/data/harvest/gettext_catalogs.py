"""gettext catalogues: compiled ``.mo`` files under ``…/<lang>/LC_MESSAGES/``.

Read with Python's own :class:`gettext.GNUTranslations`, whose ``_catalog`` maps
msgid → msgstr. A context is stored as ``ctx\\x04msgid`` (the context is dropped); a
plural entry as ``(msgid, index)`` for each form, paired here with the form the
catalogue uses for n = 1 (the English msgid is the singular). Untranslated and fuzzy
entries are not in ``.mo`` files. ``libreoffice-l10n-<locale>`` keeps its catalogues
under ``usr/lib/libreoffice/program/resource/<locale>/LC_MESSAGES/``, so it is found the
same way.
"""

from __future__ import annotations

import gettext
import io
import re
from collections.abc import Iterator
from pathlib import Path

from llink.data.harvest.languages import LanguageSpec


def catalogue_path_re(spec: LanguageSpec) -> re.Pattern[str]:
    """Matches package paths of this language's ``.mo`` files (any prefix)."""
    return re.compile(rf"(?:^|/){spec.locale_dir_re.pattern}/LC_MESSAGES/[^/]+\.mo$")


def read_catalogue(path: Path) -> Iterator[tuple[str, str]]:
    """Yield (msgid, msgstr) of one ``.mo`` file, header and contexts removed."""
    data = path.read_bytes()
    try:
        catalogue = gettext.GNUTranslations(io.BytesIO(data))
    except (ValueError, IndexError):
        # A template header left in ("plural=EXPRESSION") or one without "plural=" at
        # all (IndexError in gettext): rename the field, keeping its length so the
        # file's offsets hold, and let gettext use its default plural rule.
        data = data.replace(b"Plural-Forms:", b"Bad-Plural-F:")
        catalogue = gettext.GNUTranslations(io.BytesIO(data))
    singular_form = catalogue.plural(1)
    for key, msgstr in catalogue._catalog.items():  # the parsed msgid → msgstr table
        if isinstance(key, tuple):
            msgid, form = key
            if form != singular_form:
                continue
        else:
            msgid = key
        msgid = msgid.rsplit("\x04", 1)[-1]
        if msgid:
            yield msgid, msgstr


def find_catalogues(package_root: Path, spec: LanguageSpec) -> list[Path]:
    """The language's ``.mo`` files inside an unpacked package, in path order."""
    pattern = catalogue_path_re(spec)
    return sorted(
        p
        for p in package_root.rglob("*.mo")
        if pattern.search(p.relative_to(package_root).as_posix())
    )


def source_paths(catalogues: list[Path]) -> list[str]:
    """Likely paths of these catalogues' ``.po`` sources (``po/km.po``, ``po/km/foo.po``).

    Used to find which paragraph of a machine-readable ``copyright`` file covers them.
    """
    paths: set[str] = set()
    for mo in catalogues:
        locale, domain = mo.parent.parent.name, mo.stem
        paths.update({f"po/{locale}.po", f"po/{locale}/{domain}.po", f"po/{domain}/{locale}.po"})
    return sorted(paths)
