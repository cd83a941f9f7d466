"""The Debian harvester, on small real fixtures cut from Debian packages (no network)."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import pytest

from llink.data.harvest import harvest
from llink.data.harvest.clean import (
    CleanOptions,
    RawPair,
    clean_pairs,
    clean_text,
    is_credits,
    strip_accelerators,
)
from llink.data.harvest.debian import FetchedPackage, PackageInfo, unpack
from llink.data.harvest.firefox_l10n import (
    align_langpack,
    flatten_fluent,
    langpack_path,
    parse_ftl,
    parse_properties,
)
from llink.data.harvest.gettext_catalogs import find_catalogues, read_catalogue
from llink.data.harvest.languages import language
from llink.data.harvest.libreoffice_help import align_help, help_root, parse_help_file
from llink.data.harvest.licences import licence_from_copyright
from llink.data.pairs import is_sentence_like, read_pairs

FIXTURES = Path(__file__).parent / "fixtures" / "debian"
KM = language("km")
ZWSP = "\u200b"
VERSIONS = {  # the packages the fixtures were cut from
    "libreoffice-help-en-us": "4:7.4.7-1+deb12u14",
    "libreoffice-help-km": "4:7.4.7-1+deb12u14",
    "libreoffice-help-dz": "4:7.4.7-1+deb12u14",
    "libreoffice-l10n-km": "4:7.4.7-1+deb12u14",
    "gnome-mines": "1:40.1-1",
    "firefox-esr": "153.8.0esr-1~deb12u1",
    "firefox-esr-l10n-km": "153.8.0esr-1~deb12u1",
    "firefox-esr-l10n-th": "153.8.0esr-1~deb12u1",
}
FIREFOX = "usr/lib/firefox-esr"
SW_MO = "libreoffice-l10n-km/usr/lib/libreoffice/program/resource/km/LC_MESSAGES/sw.mo"
MINES_MO = "gnome-mines/usr/share/locale/km/LC_MESSAGES/gnome-mines.mo"


def _zip_folder(folder: Path, archive: Path) -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Package trees: fixture folders as they are, Firefox files zipped as shipped."""
    root = tmp_path_factory.mktemp("trees")
    for name in VERSIONS:
        if (FIXTURES / name).is_dir():
            shutil.copytree(FIXTURES / name, root / name)
    _zip_folder(FIXTURES / "firefox/omni", root / f"firefox-esr/{FIREFOX}/omni.ja")
    _zip_folder(FIXTURES / "firefox/browser-omni", root / f"firefox-esr/{FIREFOX}/browser/omni.ja")
    for locale in ("km", "th"):
        _zip_folder(
            FIXTURES / f"firefox/langpack-{locale}",
            root / f"firefox-esr-l10n-{locale}" / langpack_path(locale),
        )
    return root


class FixtureArchive:
    """Stands in for apt: each package is a folder of real files; fetch copies them."""

    def __init__(self, trees: Path) -> None:
        self.trees = trees

    def _files(self, name: str) -> Iterator[str]:
        base = self.trees / name
        yield from (f.relative_to(base).as_posix() for f in sorted(base.rglob("*")) if f.is_file())

    def available(self, packages: Iterable[str]) -> dict[str, PackageInfo]:
        return {n: PackageInfo(n, VERSIONS[n]) for n in packages if n in VERSIONS}

    def packages_with_files(self, path_re: re.Pattern[str], hint: str = "") -> list[str]:
        return sorted(n for n in VERSIONS if any(path_re.search(p) for p in self._files(n)))

    def fetch(
        self, packages: Sequence[str], dest: Path, keep: Callable[[str], bool], desc: str = ""
    ) -> Iterator[FetchedPackage]:
        for name in sorted(packages):
            for rel in self._files(name):
                if keep(rel) or rel == f"usr/share/doc/{name}/copyright":
                    (dest / name / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(self.trees / name / rel, dest / name / rel)
            yield FetchedPackage(name, VERSIONS[name], dest / name)

    def describe(self) -> str:
        return "test fixtures"


# -- LibreOffice help ---------------------------------------------------------------------
def test_help_parser_keeps_the_default_switch_branch_and_skips_other_hidden_spans() -> None:
    page = FIXTURES / "libreoffice-help-en-us/usr/share/libreoffice/help/en-US/text"
    texts = parse_help_file((page / "swriter/guide/words_count.html").read_text())
    assert texts["hd_id3149686"] == "Counting Words"
    assert texts["par_id111620090113400"] == (
        "To add a custom character to be considered as the word limit, choose "
        "Tools - Options - LibreOffice Writer - General and add the character into the "
        "Additional separators field."
    )  # the hidden MAC branch "LibreOffice - Preferences" is skipped
    assert all(key.startswith(("par_id", "hd_id")) for key in texts)


def test_help_alignment_pairs_same_ids_in_same_files() -> None:
    english = help_root(FIXTURES / "libreoffice-help-en-us", "en-US")
    khmer = help_root(FIXTURES / "libreoffice-help-km", "km")
    pairs = list(align_help(english, khmer))
    assert ("Copy To", f"ចម្លង{ZWSP}ទៅ") in pairs
    assert ("Counting Words", f"ការ{ZWSP}រាប់{ZWSP}ពាក្យ") in pairs
    assert len(pairs) == 6 + 11  # mm_copyto: 6 ids; words_count: 11 ids
    # Untranslated paragraphs come through here; cleaning drops them.
    english_left = [fo for en, fo in pairs if en == fo]
    assert "Enter the recipients of email copies, separated by a semicolon (;)." in english_left


# -- gettext ------------------------------------------------------------------------------
def test_catalogue_reader_drops_header_and_context_and_takes_singular_plural() -> None:
    sw = dict(read_catalogue(FIXTURES / SW_MO))
    assert "" not in sw
    assert sw["_New Document"] == f"ឯកសារ{ZWSP}ថ្មី"  # msgctxt "envdialog|ok" removed
    assert sw["~Close"] == "បិទ "
    mines = dict(read_catalogue(FIXTURES / MINES_MO))
    assert mines["<b>%d</b> mine"] == "<b>%d</b> mines"  # plural entry, form for n = 1
    assert mines["_Quit"] == "បោះបង់"
    assert len(mines) == 36


def test_catalogue_reader_survives_a_template_plural_header(tmp_path: Path) -> None:
    data = (FIXTURES / MINES_MO).read_bytes()
    assert data.count(b"plural=0;") == 1
    broken = tmp_path / "broken.mo"
    broken.write_bytes(data.replace(b"plural=0;", b"plural=X;"))  # as in ayatana-*.mo
    assert dict(read_catalogue(broken))["_Quit"] == "បោះបង់"


def test_find_catalogues_matches_language_folders_only() -> None:
    found = find_catalogues(FIXTURES / "libreoffice-l10n-km", KM)
    assert [p.name for p in found] == ["sw.mo"]
    assert find_catalogues(FIXTURES / "libreoffice-l10n-km", language("th")) == []


# -- Firefox ------------------------------------------------------------------------------
def test_fluent_flattening() -> None:
    terms = {"-brand-short-name": "Firefox"}
    assert (
        flatten_fluent("What should { -brand-short-name } do?", terms) == "What should Firefox do?"
    )
    select = "{ PLATFORM() ->\n [windows] Options\n *[other] Preferences\n}"
    assert flatten_fluent(select, terms).strip() == "Preferences"
    assert flatten_fluent('Tabs { $count } { "{" }', terms) == "Tabs { $count } {"
    assert flatten_fluent('{ -brand-short-name(case: "gen") } tabs', terms) == "Firefox tabs"
    messages = parse_ftl(
        "title = Profiles\n    .label = Your profiles\nintro = See { title.label }.\n"
    )
    assert messages == {
        "title": "Profiles",
        "title.label": "Your profiles",
        "intro": "See Your profiles.",
    }


def test_ftl_and_properties_parsers_on_real_files() -> None:
    ftl = FIXTURES / "firefox/omni/localization/en-US/toolkit/global/unknownContentType.ftl"
    strings = parse_ftl(ftl.read_text(), {"-brand-short-name": "Firefox"})
    assert strings["unknowncontenttype-action-question"] == "What should Firefox do with this file?"
    assert strings["unknowncontenttype-save-file.label"] == "Save File"
    assert strings["unknowncontenttype-settingschange.value"].strip() == (
        "Settings can be changed in Firefox’s Preferences."
    )
    props = FIXTURES / "firefox/langpack-km/chrome/km/locale/km/global/svg/svg.properties"
    assert parse_properties(props.read_text())["AttributeParseWarning"].startswith("តម្លៃ")
    text = "# comment\na.b = one \\\n    two\nc:\\u00e9\\n\n"
    assert parse_properties(text) == {"a.b": "one two", "c": "é\n"}


def test_langpack_alignment(trees: Path) -> None:
    english = trees / "firefox-esr" / FIREFOX
    pairs = dict(
        align_langpack(
            trees / "firefox-esr-l10n-km" / langpack_path("km"),
            {"": english / "omni.ja", "browser/": english / "browser/omni.ja"},
            "km",
        )
    )
    assert pairs["What should Firefox do with this file?"] == (
        f"តើ Firefox គួរ{ZWSP}ធ្វើ{ZWSP}អ្វី{ZWSP}ជាមួយ{ZWSP}ឯកសារ{ZWSP}នេះ?"
    )
    assert "Unexpected value %2$S parsing %1$S attribute." in pairs  # .properties
    trademark = "Firefox and the Firefox logos are trademarks of the Mozilla Foundation."
    assert pairs[trademark].startswith("Firefox និង")  # browser/omni.ja, browser/ prefix
    assert not any(len(en) == 1 for en in pairs)  # access keys skipped


# -- cleaning -------------------------------------------------------------------------------
def test_zero_width_characters_are_deleted_on_the_foreign_side_only() -> None:
    assert clean_text(f"ការ{ZWSP}រាប់\u200cពាក្យ", CleanOptions(), delete=KM.strip_chars) == (
        "ការរាប់ពាក្យ"
    )
    assert clean_text(f"a{ZWSP}b", CleanOptions()) == f"a{ZWSP}b"
    assert language("th").strip_chars == ZWSP  # ZWNJ is meaningful in other scripts


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("_Quit", "Quit"),
        ("~Close", "Close"),
        ("Ch~aracters", "Characters"),
        ("~1 cm", "1 cm"),
        ("&Revert", "Revert"),
        ("Save && Quit", "Save & Quit"),
        ("ឯកសារ (_F)", "ឯកសារ"),
        ("index.xml~1~", "index.xml~1~"),
        ("_NET_WM_PID and _NET_WM_NAME", "_NET_WM_PID and _NET_WM_NAME"),
        ("Fish & Chips", "Fish & Chips"),
    ],
)
def test_accelerators(raw: str, clean: str) -> None:
    assert strip_accelerators(raw) == clean


def test_tags_entities_and_whitespace() -> None:
    opts = CleanOptions(accelerators="_&~", tags=True, entities=True)
    assert clean_text("<b>%d</b> mine", opts) == "%d mine"
    assert clean_text('Save &amp; <a href="x">Quit</a>\n  now', opts) == "Save & Quit now"
    assert clean_text("&lt;b&gt; is bold", opts) == "<b> is bold"  # escaped text stays
    firefox = CleanOptions(accelerators="&", tags=True)
    assert clean_text("Try escaping it as “&lt;”.", firefox) == "Try escaping it as “&lt;”."


def test_credits() -> None:
    assert is_credits("translator-credits", "Launchpad Contributions: Khoem Sokhem")
    assert is_credits("Your emails", "khoemsokhem@khmeros.info")
    assert is_credits("Translated by", "sutha <sutha@khmeros.info>")
    assert not is_credits("Report bugs to <bugs@x.org>", "រាយការណ៍ <bugs@x.org>")


def test_is_sentence_like() -> None:
    assert is_sentence_like("Enter the extent of the outline levels to be copied.")
    assert not is_sentence_like("Keep Current Game")  # under five words
    assert not is_sentence_like("Failed to open %s for reading today")
    assert not is_sentence_like("Failed to upload photo into %1 right now")
    assert not is_sentence_like("This site would like to install { $addonCount } add-ons")
    assert not is_sentence_like("Set the value of $HOME to the folder")
    assert not is_sentence_like("#1 messages have been truncated to conserve memory")
    assert is_sentence_like("Enable 100% of the features right now")  # a percent sign is not %s


def test_clean_pairs_drops_by_reason_and_dedups_both_sides() -> None:
    raw = [
        RawPair("Close", "បិទ", "libreoffice-help"),
        RawPair("Open", f"បើក{ZWSP}", "gettext:a"),
        RawPair("Open", "បើក", "gettext:b"),  # same pair again: duplicate
        RawPair("Open", "ពើក", "gettext:c"),  # English seen: duplicate
        RawPair("Open file", "បើក", "gettext:d"),  # foreign seen: duplicate
        RawPair("close", "បិទទ្វារ", "gettext:e"),  # English seen (any case): duplicate
        RawPair("translator-credits", "Khoem Sokhem", "gettext:a"),
        RawPair("Mines", "Mines", "gettext:a"),
        RawPair("Board size", "Board size (km)", "gettext:a"),  # no Khmer script
        RawPair("%d%%", "%d%%", "gettext:a"),
        RawPair("<b></b>", "<b></b>", "gettext:a"),
        RawPair("Long", "ក" * 2001, "gettext:a"),
    ]
    opts = {"gettext": CleanOptions(accelerators="_&~", tags=True, entities=True)}
    pairs, counts = clean_pairs(raw, KM, opts, ["libreoffice-help", "gettext"])
    assert [(p.en, p.foreign, p.source) for p in pairs] == [
        ("Open", "បើក", "gettext:a"),
        ("Close", "បិទ", "libreoffice-help"),
    ]
    assert all(p.lang == "km" for p in pairs)
    assert dict(counts["gettext"]) == {
        "raw": 11,
        "kept": 1,
        "dropped.duplicate": 4,
        "dropped.credits": 1,
        "dropped.untranslated": 2,
        "dropped.no_letters": 1,
        "dropped.empty": 1,
        "dropped.too_long": 1,
    }
    assert dict(counts["libreoffice-help"]) == {"raw": 1, "kept": 1}


# -- licences and unpacking ------------------------------------------------------------------
def test_licence_from_copyright_files() -> None:
    colord = (FIXTURES / "copyright/colord-kde").read_text()
    assert licence_from_copyright(colord) == "GPL-2+"
    # Its "Files: po/ca/… po/uk/…" paragraph does not cover the Khmer catalogue.
    assert licence_from_copyright(colord, ["po/km.po", "po/km/colord-kde.po"]) == "GPL-2+"
    assert licence_from_copyright(colord, ["po/uk/colord-kde.po"]) == "LGPL-2.1+3+KDEeV"
    mines = (FIXTURES / "gnome-mines/usr/share/doc/gnome-mines/copyright").read_text()
    assert licence_from_copyright(mines, ["po/km.po"]) == "GPL-3+"
    gedit = (FIXTURES / "copyright/gedit-common").read_text()
    assert licence_from_copyright(gedit) == "free-form copyright file mentioning GPL"


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_unpack_keeps_requested_files_and_the_copyright(tmp_path: Path) -> None:
    build = tmp_path / "gnome-mines"
    shutil.copytree(FIXTURES / "gnome-mines", build)
    (build / "usr/share/games").mkdir(parents=True)
    (build / "usr/share/games/unwanted.txt").write_text("not kept\n")
    (build / "DEBIAN").mkdir()
    (build / "DEBIAN/control").write_text(
        "Package: gnome-mines\nVersion: 1:40.1-1\nArchitecture: all\n"
        "Maintainer: Test <test@example.org>\nDescription: fixture\n"
    )
    deb = tmp_path / "gnome-mines.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(build), str(deb)],
        check=True,
        capture_output=True,
    )
    out = tmp_path / "out"
    link = unpack(deb, out, "gnome-mines", lambda p: p.endswith("/km/LC_MESSAGES/gnome-mines.mo"))
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == [
        "usr/share/doc/gnome-mines/copyright",
        "usr/share/locale/km/LC_MESSAGES/gnome-mines.mo",
    ]
    assert link == ""


# -- the driver --------------------------------------------------------------------------------
def test_harvest_assembles_counts_corpus_and_provenance(trees: Path, tmp_path: Path) -> None:
    out = tmp_path / "corpus/en-km.jsonl.gz"
    counts = harvest("km", out, workdir=tmp_path / "work", archive=FixtureArchive(trees))

    for source in ("libreoffice-help", "gettext", "firefox"):
        dropped = sum(v for k, v in counts.items() if k.startswith(f"{source}.dropped."))
        assert counts[f"{source}.raw"] == counts[f"{source}.kept"] + dropped > 0
    assert counts["libreoffice-help.raw"] == 17
    assert counts["gettext.raw"] == 7 + 36
    assert counts["gettext.packages"] == 2 and counts["firefox.packages"] == 2
    assert counts["gettext.dropped.credits"] == 1
    kept = sum(counts[f"{s}.kept"] for s in ("libreoffice-help", "gettext", "firefox"))
    assert counts["total"] == kept

    pairs, report = read_pairs(out)
    assert len(pairs) == counts["total"] and not report.dropped
    assert sum(is_sentence_like(p.en) for p in pairs) == counts["sentence_like"] > 0
    keys = [(p.source, p.en, p.foreign) for p in pairs]
    assert keys == sorted(keys)
    assert all(ZWSP not in p.foreign and "\u200c" not in p.foreign for p in pairs)
    assert len({p.en.casefold() for p in pairs}) == len(pairs)
    assert len({p.foreign for p in pairs}) == len(pairs)
    sources = {p.source for p in pairs}
    assert sources == {
        "libreoffice-help",
        "firefox",
        "gettext:gnome-mines",
        "gettext:libreoffice-l10n-km",
    }
    with gzip.open(out, "rt", encoding="utf-8") as fh:
        first = json.loads(fh.readline())
    assert set(first) == {"en", "foreign", "lang", "source"}

    provenance = (tmp_path / "corpus/en-km.PROVENANCE.md").read_text()
    assert "| `gnome-mines` | 1:40.1-1 | GPL-3+ |" in provenance
    assert "python -m llink.data.harvest --lang km" in provenance
    assert not list((tmp_path / "work").iterdir())  # the work folder is removed

    again = tmp_path / "again/en-km.jsonl.gz"
    harvest("km", again, archive=FixtureArchive(trees), provenance=False)
    assert again.read_bytes() == out.read_bytes()  # deterministic


def test_harvest_other_language_skips_missing_packages(trees: Path, tmp_path: Path) -> None:
    counts = harvest("lo", tmp_path / "en-lo.jsonl.gz", archive=FixtureArchive(trees))
    assert counts["total"] == 0
    assert counts["libreoffice-help.packages"] == 0 and counts["gettext.packages"] == 0
    notes = (tmp_path / "en-lo.PROVENANCE.md").read_text()
    assert "libreoffice-help-lo" in notes and "firefox-esr-l10n-lo" in notes


def test_harvest_rejects_unknown_sources(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown sources"):
        harvest("km", tmp_path / "x.jsonl.gz", sources=("wikipedia",), archive=None)
