"""The harvester beyond Khmer: Thai and Dzongkha fixtures, several languages in one pass.

Fixtures are real files cut from Debian bookworm packages (see
``tests/fixtures/debian/LICENSE-NOTICE.md``): gnome-mines' Thai and Dzongkha catalogues,
the Dzongkha LibreOffice help pages, the Thai Firefox language-pack files.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from llink.data.harvest import __main__ as harvest_main
from llink.data.harvest import (
    corpus_path,
    harvest,
    harvest_many,
    output_paths,
    parse_languages,
)
from llink.data.harvest.clean import CleanOptions, clean_text
from llink.data.harvest.debian import FetchedPackage, PackageInfo
from llink.data.harvest.firefox_l10n import align_langpack, langpack_path, package_name
from llink.data.harvest.gettext_catalogs import (
    catalogue_path_re,
    find_catalogues,
    read_catalogue,
)
from llink.data.harvest.languages import language
from llink.data.harvest.libreoffice_help import align_help, help_root
from llink.data.harvest.libreoffice_help import package_name as help_package
from llink.data.harvest.sources import packages_by_pattern
from llink.data.pairs import read_pairs

from .test_harvest import FIREFOX, FIXTURES, MINES_MO, FixtureArchive, trees  # noqa: F401

DZ = language("dz")
TH = language("th")
MINES = "gnome-mines/usr/share/locale/{}/LC_MESSAGES/gnome-mines.mo"
GETTEXT = CleanOptions(accelerators="_&~", tags=True, entities=True)


# -- the language table -----------------------------------------------------------------
def test_dzongkha_spec_uses_debian_names_and_the_tibetan_script() -> None:
    assert DZ.libreoffice == "dz" and DZ.firefox is None  # no Firefox pack in Dzongkha
    assert help_package(DZ.libreoffice) == "libreoffice-help-dz"
    assert DZ.script == ((0x0F00, 0x0FFF),)
    assert DZ.has_script("རྩེདམོ་གསརཔ།")
    assert not DZ.has_script("New Game") and not DZ.has_script("เกมใหม่")
    pattern = catalogue_path_re(DZ)
    assert pattern.search("usr/share/locale/dz/LC_MESSAGES/gnome-mines.mo")
    assert pattern.search("usr/lib/libreoffice/program/resource/dz/LC_MESSAGES/sw.mo")
    assert pattern.search("usr/share/locale/dz_BT/LC_MESSAGES/x.mo")
    assert not pattern.search("usr/share/locale/dzo/LC_MESSAGES/x.mo")
    assert language("bo").script == DZ.script  # Tibetan, the same script


@pytest.mark.parametrize(
    ("code", "libreoffice", "firefox"),
    [("ne", "ne", "ne-NP"), ("hi", "hi", "hi-IN"), ("pa", "pa-IN", "pa-IN"), ("si", "si", "si")],
)
def test_locale_codes_name_real_debian_packages(code: str, libreoffice: str, firefox: str) -> None:
    spec = language(code)
    assert (spec.libreoffice, spec.firefox) == (libreoffice, firefox)
    # bookworm: firefox-esr-l10n-ne-np, libreoffice-l10n-pa-in (lower case in package names)
    assert package_name(firefox) == f"firefox-esr-l10n-{firefox.lower()}"


# -- parsers on Thai and Dzongkha files -----------------------------------------------------
def test_thai_and_dzongkha_catalogues() -> None:
    th = dict(read_catalogue(FIXTURES / MINES.format("th")))
    assert len(th) == 37
    assert th["_New Game"] == "เกมใ_หม่"  # the mnemonic sits inside the Thai word
    assert clean_text(th["_New Game"], GETTEXT) == "เกมใหม่"
    assert th["<b>%d</b> mine"] == "ระเบิด <b>%d</b> ลูก"
    assert clean_text(th["<b>%d</b> mine"], GETTEXT) == "ระเบิด %d ลูก"
    dz = dict(read_catalogue(FIXTURES / MINES.format("dz")))
    assert len(dz) == 26
    assert dz["Mines"] == "མ་ཡིནསི།"
    assert clean_text(dz["_New Game"], GETTEXT) == "རྩེདམོ་གསརཔ།"  # "(_N)" removed
    assert [p.name for p in find_catalogues(FIXTURES / "gnome-mines", DZ)] == ["gnome-mines.mo"]


def test_dzongkha_help_alignment_keeps_ids_and_exposes_untranslated_paragraphs() -> None:
    english = help_root(FIXTURES / "libreoffice-help-en-us", "en-US")
    pairs = list(align_help(english, help_root(FIXTURES / "libreoffice-help-dz", "dz")))
    assert len(pairs) == 6 + 11  # the same ids as the Khmer pages
    assert ("Copy To", "ལུ་འདྲ་བཤུས་རྐྱབས་") in pairs
    assert ("Related Topics", "འབྲེལ་བ་ཡོད་པའི་གནད་དོན།") in pairs
    translated = [(en, fo) for en, fo in pairs if DZ.has_script(fo)]
    assert len(translated) == 7  # the other ten are English left in the Dzongkha help
    select = "If you want to count only some text of your document, select the text."
    assert dict(translated)[select].startswith("ཁྱོད་ཀྱིས་")


def test_thai_langpack_alignment(trees: Path) -> None:
    english = trees / "firefox-esr" / FIREFOX
    pairs = dict(
        align_langpack(
            trees / "firefox-esr-l10n-th" / langpack_path("th"),
            {"": english / "omni.ja", "browser/": english / "browser/omni.ja"},
            "th",
        )
    )
    assert pairs["What should Firefox do with this file?"] == "Firefox ควรจะทำอะไรกับไฟล์นี้?"
    assert pairs[" Settings can be changed in Firefox’s Preferences."].strip() == (
        "การตั้งค่าสามารถเปลี่ยนได้ในค่าปรับแต่งของ Firefox"
    )  # the *[other] variant, the brand term resolved in Thai
    assert pairs["Firefox and the Firefox logos are trademarks of the Mozilla Foundation."] == (
        "Firefox และตราสัญลักษณ์ Firefox เป็นเครื่องหมายการค้าของ Mozilla Foundation"
    )  # browser/omni.ja, browser/ prefix
    assert all(TH.has_script(fo) or en == fo for en, fo in pairs.items() if len(en) > 3)
    assert not any(len(en) == 1 for en in pairs)  # access keys skipped


# -- several languages in one pass -------------------------------------------------------------
class CountingArchive(FixtureArchive):
    """The fixture archive, counting what is fetched and how often Contents is searched."""

    def __init__(self, trees: Path, one_search: bool = True) -> None:
        super().__init__(trees)
        self.fetched: Counter[str] = Counter()
        self.searches = 0
        if one_search:
            self.packages_with_files_by = self._by  # as AptArchive offers

    def packages_with_files(self, path_re: re.Pattern[str], hint: str = "") -> list[str]:
        self.searches += 1
        return super().packages_with_files(path_re, hint)

    def _by(self, patterns: Mapping[str, re.Pattern[str]], hint: str = "") -> dict[str, list]:
        self.searches += 1
        return {k: FixtureArchive.packages_with_files(self, p, hint) for k, p in patterns.items()}

    def available(self, packages: Iterable[str]) -> dict[str, PackageInfo]:
        return super().available(packages)

    def fetch(
        self, packages: Sequence[str], dest: Path, keep: Callable[[str], bool], desc: str = ""
    ) -> Iterator[FetchedPackage]:
        for package in super().fetch(packages, dest, keep, desc):
            self.fetched[package.name] += 1
            yield package


def test_one_pass_fetches_each_package_once_and_writes_each_language(
    trees: Path,
    tmp_path: Path,
) -> None:
    archive = CountingArchive(trees)
    outs = {lang: corpus_path(tmp_path / "many", lang) for lang in ("km", "th", "dz")}
    counts = harvest_many(outs, archive=archive, workdir=tmp_path / "work")

    assert archive.searches == 1  # one Contents search for all three languages
    assert set(archive.fetched.values()) == {1}  # every package downloaded once
    assert sorted(archive.fetched) == [
        "firefox-esr",
        "firefox-esr-l10n-km",
        "firefox-esr-l10n-th",
        "gnome-mines",  # holds km, th and dz: one package, three corpora
        "libreoffice-help-dz",
        "libreoffice-help-en-us",
        "libreoffice-help-km",
        "libreoffice-l10n-km",
    ]
    sources = {}
    for lang, out in outs.items():
        pairs, report = read_pairs(out)
        assert len(pairs) == counts[lang]["total"] > 0 and not report.dropped
        assert {p.lang for p in pairs} == {lang}
        assert all(language(lang).has_script(p.foreign) for p in pairs)
        sources[lang] = {p.source for p in pairs}
    assert sources["th"] == {"firefox", "gettext:gnome-mines"}
    assert sources["dz"] == {"libreoffice-help", "gettext:gnome-mines"}
    assert "gettext:libreoffice-l10n-km" in sources["km"]
    assert counts["th"]["gettext.packages"] == 1 and counts["dz"]["firefox.packages"] == 0
    dz_notes = (tmp_path / "many/en-dz.PROVENANCE.md").read_text()
    assert "no Firefox locale known for 'dz'" in dz_notes
    assert "--lang dz --out " in dz_notes  # its own rebuild command
    assert not list((tmp_path / "work").iterdir())

    # Each corpus and its provenance are what a one-language harvest writes.
    for lang, out in outs.items():
        alone = tmp_path / "alone" / out.name
        assert harvest(lang, alone, archive=FixtureArchive(trees)) == counts[lang]
        assert alone.read_bytes() == out.read_bytes()
        provenance = out.with_name(f"en-{lang}.PROVENANCE.md").read_text()
        provenance_alone = alone.with_name(f"en-{lang}.PROVENANCE.md").read_text()
        assert provenance.replace(str(out), "OUT") == provenance_alone.replace(str(alone), "OUT")


def test_an_archive_without_a_combined_search_is_searched_once_per_language(
    trees: Path,
) -> None:
    archive = CountingArchive(trees, one_search=False)
    patterns = {s.code: catalogue_path_re(s) for s in (language("km"), TH, DZ)}
    found = packages_by_pattern(archive, patterns, hint="/LC_MESSAGES/")
    assert archive.searches == 3
    assert found == {
        "km": {"gnome-mines", "libreoffice-l10n-km"},
        "th": {"gnome-mines"},
        "dz": {"gnome-mines"},
    }


def test_a_catalogue_whose_plural_header_has_no_expression_is_read(tmp_path: Path) -> None:
    data = (FIXTURES / MINES_MO).read_bytes()
    broken = tmp_path / "broken.mo"
    broken.write_bytes(data.replace(b"plural=0;", b"pluraX=0;"))  # gettext: IndexError
    assert dict(read_catalogue(broken))["_Quit"] == "បោះបង់"


# -- command line ------------------------------------------------------------------------------
def test_language_lists_and_output_paths() -> None:
    assert parse_languages("km, th,dz") == ["km", "th", "dz"]
    with pytest.raises(ValueError, match="twice"):
        parse_languages("km,th,km")
    with pytest.raises(ValueError, match="no language"):
        parse_languages(" , ")
    assert output_paths(["km"], Path("x.jsonl.gz"), None) == {"km": Path("x.jsonl.gz")}
    assert output_paths(["km", "th"], None, Path("d")) == {
        "km": Path("d/en-km.jsonl.gz"),
        "th": Path("d/en-th.jsonl.gz"),
    }
    assert output_paths(["th"], None, None) == {"th": Path("en-th.jsonl.gz")}
    with pytest.raises(ValueError, match="--out-dir"):
        output_paths(["km", "th"], Path("x.jsonl.gz"), None)
    with pytest.raises(ValueError, match="not both"):
        output_paths(["km"], Path("x.jsonl.gz"), Path("d"))


def test_module_entry_point_harvests_several_languages_in_one_call(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = []

    def fake_many(outs: dict[str, Path], **kwargs: object) -> dict[str, dict[str, int]]:
        calls.append((dict(outs), kwargs))
        return {lang: {"total": 10, "sentence_like": 4} for lang in outs}

    monkeypatch.setattr(harvest_main, "harvest_many", fake_many)
    argv = ["--lang", "km,th,dz", "--out-dir", str(tmp_path), "--sources", "gettext"]
    assert harvest_main.main(argv) == 0
    ((outs, kwargs),) = calls
    assert outs == {lang: tmp_path / f"en-{lang}.jsonl.gz" for lang in ("km", "th", "dz")}
    assert kwargs["sources"] == ("gettext",)
    assert "dz" in capsys.readouterr().err  # the per-language summary table
    with pytest.raises(SystemExit):
        harvest_main.main(["--lang", "km,th", "--out", str(tmp_path / "x.jsonl.gz")])
    with pytest.raises(SystemExit):
        harvest_main.main(["--lang", "km"])  # neither --out nor --out-dir


def test_cli_rejects_one_output_file_for_several_languages() -> None:
    from llink.cli import build_parser
    from llink.data.harvest import HarvestError  # a user error: "llink: error: ...", exit 2

    args = build_parser().parse_args(["data", "harvest", "--lang", "km,th", "--out", "x.gz"])
    with pytest.raises(HarvestError, match="--out-dir"):
        args.func(args)
