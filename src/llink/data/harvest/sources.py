"""The three Debian sources of parallel text, each: fetch its packages, yield raw pairs."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llink.data.harvest import firefox_l10n, gettext_catalogs, libreoffice_help
from llink.data.harvest.clean import CleanOptions, RawPair
from llink.data.harvest.debian import FetchedPackage, PackageArchive
from llink.data.harvest.languages import LanguageSpec

log = logging.getLogger(__name__)


@dataclass
class SourceResult:
    """What one source produced: raw pairs, the packages read, and notes for the record."""

    pairs: list[RawPair] = field(default_factory=list)
    packages: list[FetchedPackage] = field(default_factory=list)
    licences: dict[str, str] = field(default_factory=dict)  # package → licence
    notes: list[str] = field(default_factory=list)
    problems: int = 0  # files that could not be read

    def note(self, text: str) -> None:
        log.warning(text)
        self.notes.append(text)


def _fetch_all(
    archive: PackageArchive,
    names: list[str],
    dest: Path,
    keep: Callable[[str], bool],
    desc: str,
    result: SourceResult,
) -> dict[str, FetchedPackage] | None:
    """Fetch ``names`` if all exist; otherwise note the missing ones and return None."""
    missing = sorted(set(names) - set(archive.available(names)))
    if missing:
        result.note(f"not in the apt sources: {', '.join(missing)}; source skipped")
        return None
    fetched = {p.name: p for p in archive.fetch(names, dest, keep, desc=desc)}
    for name in sorted(fetched):
        result.packages.append(fetched[name])
        result.licences[name] = fetched[name].licence()
    return fetched


def harvest_libreoffice_help(
    spec: LanguageSpec, archive: PackageArchive, dest: Path
) -> SourceResult:
    """LibreOffice help HTML of ``spec`` aligned with the en-US help."""
    result = SourceResult()
    if not spec.libreoffice:
        result.note(f"no LibreOffice locale known for {spec.code!r}; source skipped")
        return result
    locale = spec.libreoffice
    foreign_pkg = libreoffice_help.package_name(locale)
    english_pkg = libreoffice_help.ENGLISH_PACKAGE
    wanted = re.compile(
        rf"{libreoffice_help.HELP_DIR}/({re.escape(locale)}|{libreoffice_help.ENGLISH_LOCALE})"
        r"/text/.+\.html"
    )
    fetched = _fetch_all(
        archive,
        [english_pkg, foreign_pkg],
        dest,
        lambda path: wanted.fullmatch(path) is not None,
        f"libreoffice-help {spec.code}",
        result,
    )
    if fetched is None:
        return result
    english = libreoffice_help.help_root(fetched[english_pkg].root, libreoffice_help.ENGLISH_LOCALE)
    foreign = libreoffice_help.help_root(fetched[foreign_pkg].root, locale)
    result.pairs = [
        RawPair(en, fo, "libreoffice-help")
        for en, fo in libreoffice_help.align_help(english, foreign)
    ]
    return result


def harvest_gettext(spec: LanguageSpec, archive: PackageArchive, dest: Path) -> SourceResult:
    """Every ``.mo`` catalogue of ``spec`` in the archive (found through Contents indices)."""
    result = SourceResult()
    pattern = gettext_catalogs.catalogue_path_re(spec)
    names = set(archive.packages_with_files(pattern, hint="/LC_MESSAGES/"))
    if spec.libreoffice:
        names.add(f"libreoffice-l10n-{spec.libreoffice.lower()}")
    available = archive.available(names)
    if missing := sorted(names - set(available)):
        result.note(f"listed in Contents but not installable here, skipped: {', '.join(missing)}")
    fetched = archive.fetch(
        sorted(available), dest, lambda p: pattern.search(p) is not None, f"gettext {spec.code}"
    )
    for package in fetched:
        result.packages.append(package)
        catalogues = gettext_catalogs.find_catalogues(package.root, spec)
        result.licences[package.name] = package.licence(gettext_catalogs.source_paths(catalogues))
        for mo in catalogues:
            source = f"gettext:{package.name}"
            try:
                result.pairs.extend(
                    RawPair(en, fo, source) for en, fo in gettext_catalogs.read_catalogue(mo)
                )
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                result.problems += 1
                result.note(f"{package.name}: cannot read {mo.name}: {exc}")
    return result


def harvest_firefox(spec: LanguageSpec, archive: PackageArchive, dest: Path) -> SourceResult:
    """The Firefox ESR language pack of ``spec`` against Firefox's en-US strings."""
    result = SourceResult()
    if not spec.firefox:
        result.note(f"no Firefox locale known for {spec.code!r}; source skipped")
        return result
    foreign_pkg = firefox_l10n.package_name(spec.firefox)
    langpack = firefox_l10n.langpack_path(spec.firefox)
    wanted = {langpack, *firefox_l10n.OMNI_JARS.values()}
    fetched = _fetch_all(
        archive,
        [firefox_l10n.FIREFOX_PACKAGE, foreign_pkg],
        dest,
        wanted.__contains__,
        f"firefox {spec.code}",
        result,
    )
    if fetched is None:
        return result
    english_root = fetched[firefox_l10n.FIREFOX_PACKAGE].root
    jars = {prefix: english_root / path for prefix, path in firefox_l10n.OMNI_JARS.items()}
    pairs = firefox_l10n.align_langpack(fetched[foreign_pkg].root / langpack, jars, spec.firefox)
    result.pairs = [RawPair(en, fo, "firefox") for en, fo in pairs]
    return result


HARVESTERS: dict[str, Callable[[LanguageSpec, PackageArchive, Path], SourceResult]] = {
    "libreoffice-help": harvest_libreoffice_help,
    "gettext": harvest_gettext,
    "firefox": harvest_firefox,
}

CLEAN_OPTIONS: dict[str, CleanOptions] = {
    "libreoffice-help": CleanOptions(),  # the HTML parser already removed tags and entities
    "gettext": CleanOptions(accelerators="_&~", tags=True, entities=True),
    "firefox": CleanOptions(accelerators="&", tags=True),
}
