"""Read a short licence name from a Debian ``copyright`` file.

Machine-readable files (DEP-5, first field ``Format:``) are read as the format says:
for a path, the *last* ``Files`` paragraph whose globs match it applies. A caller
passes the likely source paths of the translations (``po/km.po``, ``po/km/foo.po``);
the most specific paragraph matching any of them wins, which is ``Files: *`` when no
paragraph names translations. Free-form files cannot be read that way: the licence
families their text mentions are reported, labelled as such.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_MENTIONS = (
    ("LGPL", r"Lesser General Public|Library General Public|\bLGPL"),
    ("GPL", r"(?<!Lesser )(?<!Library )GNU General Public|\bGPL"),
    ("MPL", r"Mozilla Public License|\bMPL\b"),
    ("Apache", r"Apache License"),
    ("Artistic", r"Artistic License"),
    ("BSD", r"\bBSD\b|Redistributions of source code must retain"),
    ("MIT/Expat", r"\bMIT\b|\bExpat\b|Permission is hereby granted, free of charge"),
    ("CC-BY-SA", r"Creative Commons Attribution-Share ?Alike|CC-BY-SA"),
    ("public domain", r"public domain"),
)


def _glob_re(glob: str) -> re.Pattern[str]:
    """A DEP-5 ``Files`` glob: ``*`` matches any characters (``/`` too), ``?`` one."""
    return re.compile(re.escape(glob).replace(r"\*", ".*").replace(r"\?", "."))


def _paragraphs(text: str) -> list[tuple[list[str], str]]:
    """(``Files`` globs, first line of ``License``) of each files paragraph, in order."""
    result = []
    for para in re.split(r"\n[ \t]*\n", text):
        files = re.search(r"^Files:(.*(?:\n[ \t].*)*)", para, re.M)
        lic = re.search(r"^License:[ \t]*(\S.*)$", para, re.M)
        if files and lic:
            result.append((files.group(1).split(), lic.group(1).strip()))
    return result


def licence_from_copyright(text: str, translations: Sequence[str] = ()) -> str:
    """The licence a ``copyright`` file gives to the ``translations`` paths (or to ``*``)."""
    if text.lstrip().startswith("Format:"):
        paragraphs = _paragraphs(text)
        if translations:
            matches = [
                i
                for path in translations
                for i, (globs, _) in enumerate(paragraphs)
                if any(_glob_re(g).fullmatch(path) for g in globs)
            ]
        else:
            matches = [i for i, (globs, _) in enumerate(paragraphs) if "*" in globs]
        if matches:
            return paragraphs[max(matches)][1]
    found = [name for name, pat in _MENTIONS if re.search(pat, text, re.I)]
    return "free-form copyright file mentioning " + (", ".join(found) if found else "no licence")
