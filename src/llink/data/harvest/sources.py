"""The three Debian sources of parallel text, each: fetch its packages, yield raw pairs.

Each source serves several languages in one pass: a package is downloaded and
unpacked once, with the files of every requested language, and each language's
strings are read from it (``harvest_*_many``); the single-language functions are that
with one language.
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Callable, Mapping, Sequence
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


def _codes(specs: Sequence[LanguageSpec]) -> str:
    return ",".join(s.code for s in specs)


def _check_unique(specs: Sequence[LanguageSpec]) -> None:
    codes = [s.code for s in specs]
    if len(set(codes)) != len(codes):
        raise ValueError(f"a language is named twice: {', '.join(codes)}")


def packages_by_pattern(
    archive: PackageArchive, patterns: Mapping[str, re.Pattern[str]], hint: str = ""
) -> dict[str, set[str]]:
    """Packages holding a file that matches each pattern (key → names), in one search.

    Uses the archive's ``packages_with_files_by`` when it has one (one pass over the
    Contents indices for all patterns), else one ``packages_with_files`` per pattern.
    """
    many = getattr(archive, "packages_with_files_by", None)
    if many is not None:
        found = many(patterns, hint=hint)
        return {key: set(found.get(key, ())) for key in patterns}
    return {key: set(archive.packages_with_files(p, hint=hint)) for key, p in patterns.items()}


def _paired_source(
    specs: Sequence[LanguageSpec],
    archive: PackageArchive,
    dest: Path,
    *,
    english_pkg: str,
    locale_of: Callable[[LanguageSpec], str | None],
    package_of: Callable[[str], str],
    keep_for: Callable[[list[str]], Callable[[str], bool]],
    project: str,
    kind: str,
) -> tuple[dict[str, SourceResult], dict[str, FetchedPackage], list[LanguageSpec]]:
    """Fetch one English package and each language's package once, for several languages.

    Returns the results (with notes for languages skipped), the fetched packages by
    name, and the languages whose two packages were both fetched (their ``packages``
    and ``licences`` already filled in).
    """
    _check_unique(specs)
    results = {s.code: SourceResult() for s in specs}
    wanted: list[LanguageSpec] = []
    for spec in specs:
        if locale_of(spec):
            wanted.append(spec)
        else:
            results[spec.code].note(f"no {project} locale known for {spec.code!r}; source skipped")
    needs = {s.code: [english_pkg, package_of(locale_of(s) or "")] for s in wanted}
    available = set(archive.available({n for names in needs.values() for n in names}))
    ready: list[LanguageSpec] = []
    for spec in wanted:
        missing = sorted(set(needs[spec.code]) - available)
        if missing:
            results[spec.code].note(f"not in the apt sources: {', '.join(missing)}; source skipped")
        else:
            ready.append(spec)
    if not ready:
        return results, {}, []
    names = sorted({n for s in ready for n in needs[s.code]})
    locales = [locale_of(s) or "" for s in ready]
    fetched = {
        p.name: p
        for p in archive.fetch(names, dest, keep_for(locales), desc=f"{kind} {_codes(ready)}")
    }
    for spec in ready:
        result = results[spec.code]
        for name in sorted(needs[spec.code]):
            result.packages.append(fetched[name])
            result.licences[name] = fetched[name].licence()
    return results, fetched, ready


def harvest_libreoffice_help_many(
    specs: Sequence[LanguageSpec], archive: PackageArchive, dest: Path
) -> dict[str, SourceResult]:
    """LibreOffice help HTML of each language aligned with the en-US help (fetched once)."""
    english_locale = libreoffice_help.ENGLISH_LOCALE

    def keep_for(locales: list[str]) -> Callable[[str], bool]:
        alternatives = "|".join(re.escape(loc) for loc in [*locales, english_locale])
        wanted = re.compile(rf"{libreoffice_help.HELP_DIR}/({alternatives})/text/.+\.html")
        return lambda path: wanted.fullmatch(path) is not None

    results, fetched, ready = _paired_source(
        specs,
        archive,
        dest,
        english_pkg=libreoffice_help.ENGLISH_PACKAGE,
        locale_of=lambda s: s.libreoffice,
        package_of=libreoffice_help.package_name,
        keep_for=keep_for,
        project="LibreOffice",
        kind="libreoffice-help",
    )
    if not ready:
        return results
    english = libreoffice_help.help_root(
        fetched[libreoffice_help.ENGLISH_PACKAGE].root, english_locale
    )
    for spec in ready:
        locale = spec.libreoffice or ""
        foreign_root = fetched[libreoffice_help.package_name(locale)].root
        foreign = libreoffice_help.help_root(foreign_root, locale)
        results[spec.code].pairs = [
            RawPair(en, fo, "libreoffice-help")
            for en, fo in libreoffice_help.align_help(english, foreign)
        ]
    return results


def harvest_gettext_many(
    specs: Sequence[LanguageSpec], archive: PackageArchive, dest: Path
) -> dict[str, SourceResult]:
    """Every ``.mo`` catalogue of each language (found through Contents indices).

    A package carrying several of the languages is downloaded and unpacked once, with
    the catalogues of all of them.
    """
    _check_unique(specs)
    results = {s.code: SourceResult() for s in specs}
    patterns = {s.code: gettext_catalogs.catalogue_path_re(s) for s in specs}
    listed = packages_by_pattern(archive, patterns, hint="/LC_MESSAGES/")
    for spec in specs:
        if spec.libreoffice:
            listed[spec.code].add(f"libreoffice-l10n-{spec.libreoffice.lower()}")
    available = set(archive.available({n for names in listed.values() for n in names}))
    for spec in specs:
        if missing := sorted(listed[spec.code] - available):
            results[spec.code].note(
                f"listed in Contents but not installable here, skipped: {', '.join(missing)}"
            )

    def keep(path: str) -> bool:
        return any(p.search(path) is not None for p in patterns.values())

    fetched = archive.fetch(sorted(available), dest, keep, f"gettext {_codes(specs)}")
    for package in fetched:
        for spec in specs:
            if package.name in listed[spec.code]:
                _read_catalogues(package, spec, results[spec.code])
    return results


def _read_catalogues(package: FetchedPackage, spec: LanguageSpec, result: SourceResult) -> None:
    result.packages.append(package)
    catalogues = gettext_catalogs.find_catalogues(package.root, spec)
    result.licences[package.name] = package.licence(gettext_catalogs.source_paths(catalogues))
    for mo in catalogues:
        source = f"gettext:{package.name}"
        try:
            result.pairs.extend(
                RawPair(en, fo, source) for en, fo in gettext_catalogs.read_catalogue(mo)
            )
        except (OSError, UnicodeDecodeError, ValueError, LookupError, struct.error) as exc:
            result.problems += 1
            result.note(f"{package.name}: cannot read {mo.name}: {exc}")


def harvest_firefox_many(
    specs: Sequence[LanguageSpec], archive: PackageArchive, dest: Path
) -> dict[str, SourceResult]:
    """Each language's Firefox ESR language pack against Firefox's en-US strings."""

    def keep_for(locales: list[str]) -> Callable[[str], bool]:
        wanted = {*map(firefox_l10n.langpack_path, locales), *firefox_l10n.OMNI_JARS.values()}
        return wanted.__contains__

    results, fetched, ready = _paired_source(
        specs,
        archive,
        dest,
        english_pkg=firefox_l10n.FIREFOX_PACKAGE,
        locale_of=lambda s: s.firefox,
        package_of=firefox_l10n.package_name,
        keep_for=keep_for,
        project="Firefox",
        kind="firefox",
    )
    if not ready:
        return results
    english_root = fetched[firefox_l10n.FIREFOX_PACKAGE].root
    jars = {prefix: english_root / path for prefix, path in firefox_l10n.OMNI_JARS.items()}
    for spec in ready:
        locale = spec.firefox or ""
        langpack = fetched[firefox_l10n.package_name(locale)].root / firefox_l10n.langpack_path(
            locale
        )
        results[spec.code].pairs = [
            RawPair(en, fo, "firefox")
            for en, fo in firefox_l10n.align_langpack(langpack, jars, locale)
        ]
    return results


Harvester = Callable[[Sequence[LanguageSpec], PackageArchive, Path], dict[str, SourceResult]]

HARVESTERS: dict[str, Harvester] = {
    "libreoffice-help": harvest_libreoffice_help_many,
    "gettext": harvest_gettext_many,
    "firefox": harvest_firefox_many,
}


def _one(harvester: Harvester) -> Callable[[LanguageSpec, PackageArchive, Path], SourceResult]:
    def run(spec: LanguageSpec, archive: PackageArchive, dest: Path) -> SourceResult:
        return harvester([spec], archive, dest)[spec.code]

    run.__doc__ = f"{harvester.__name__} for one language."
    return run


harvest_libreoffice_help = _one(harvest_libreoffice_help_many)
harvest_gettext = _one(harvest_gettext_many)
harvest_firefox = _one(harvest_firefox_many)

CLEAN_OPTIONS: dict[str, CleanOptions] = {
    "libreoffice-help": CleanOptions(),  # the HTML parser already removed tags and entities
    "gettext": CleanOptions(accelerators="_&~", tags=True, entities=True),
    "firefox": CleanOptions(accelerators="&", tags=True),
}
