"""UDHR evaluation pairs: sections paired by name, paragraph tails merged (no network)."""

from __future__ import annotations

import json
from pathlib import Path

from llink.data.harvest.udhr import UDHR_CODES, align, build, sections

CORPORA = Path(__file__).resolve().parents[1] / "src/llink/corpora"


def _page(header: list[str] | None, articles: list[list[str]]) -> str:
    parts = ["<html><body><h1>T</h1>"]
    if header is not None:
        parts.append("<header><h2>P</h2>" + "".join(f"<p>{p}</p>" for p in header) + "</header>")
    for n, paras in enumerate(articles, start=1):
        items = "".join(f"<li><p>{p}</p></li>" for p in paras)
        parts.append(f'<article data-number="{n}"><h2>A</h2><ol>{items}</ol></article>')
    return "".join(parts) + "</body></html>"


ENGLISH = _page(
    [
        "Whereas one two three four.",
        "Whereas five six seven eight nine ten eleven.",
        "Now, therefore,",
        "Proclaims.",
    ],
    [["Everyone is free."], ["Everyone has rights.", "No distinction shall be made."]],
)


def test_sections_are_named_so_a_missing_preamble_shifts_nothing() -> None:
    english = sections(ENGLISH)
    assert list(english) == ["preamble", "article 1", "article 2"]
    foreign = sections(_page(None, [["ሰው ሁሉ፡ነጻ።"], ["መብት፡አለው።", "ልዩነት፡የለም።"]]))
    assert list(foreign) == ["article 1", "article 2"]
    pairs = align(english, foreign, "am")
    assert [(p.source, p.en) for p in pairs] == [
        ("udhr:article 1.1", "Everyone is free."),
        ("udhr:article 2.1", "Everyone has rights."),
        ("udhr:article 2.2", "No distinction shall be made."),
    ]
    assert pairs[0].foreign == "ሰው ሁሉ ነጻ።"  # the Ethiopic wordspace read as a space
    assert all(p.lang == "am" for p in pairs)


def test_differing_paragraph_counts_merge_the_tail_from_the_first_length_outlier() -> None:
    english = sections(ENGLISH)
    # Paragraph 1 matches; paragraph 2 of the translation is the short "Now, therefore"
    # (a "Whereas" clause merged away): from there on the section is one pair.
    foreign = sections(
        _page(
            ["Whereas uno dos tres cuatro.", "Por tanto,", "Proclama."],
            [["Todos son libres."], ["Todos tienen derechos.", "Sin distinción."]],
        )
    )
    pairs = {p.source: (p.en, p.foreign) for p in align(english, foreign, "es")}
    assert pairs["udhr:preamble.1"] == (
        "Whereas one two three four.",
        "Whereas uno dos tres cuatro.",
    )
    assert pairs["udhr:preamble.2"] == (
        "Whereas five six seven eight nine ten eleven. Now, therefore, Proclaims.",
        "Por tanto, Proclama.",
    )
    assert "udhr:preamble.3" not in pairs
    # Lengths that agree keep the old rule: the leading paragraphs pair up, the last
    # paragraph takes the rest.
    similar = sections(
        _page(
            [
                "Whereas uno dos tres cuatro.",
                "Whereas cinco seis siete ocho nueve diez once.",
                "Por tanto, proclama.",
            ],
            [["Todos son libres."], ["Todos tienen derechos.", "Sin distinción."]],
        )
    )
    pairs = {p.source: p.en for p in align(english, similar, "es")}
    assert pairs["udhr:preamble.2"] == "Whereas five six seven eight nine ten eleven."
    assert pairs["udhr:preamble.3"] == "Now, therefore, Proclaims."


def test_shipped_udhr_files_match_their_languages() -> None:
    shipped = sorted((CORPORA / "eval").glob("udhr-en-*.jsonl"))
    assert shipped
    for path in shipped:
        lang = path.stem.removeprefix("udhr-en-")
        assert lang in UDHR_CODES
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert len(rows) >= 45, path.name
        assert {r["lang"] for r in rows} == {lang}
        assert rows[-1]["source"].startswith("udhr:article 30.")
        assert path.with_name(f"udhr-en-{lang}.PROVENANCE.md").is_file()


def test_build_reads_an_unpacked_package(tmp_path: Path) -> None:
    package = tmp_path / "package"
    (package / "declaration").mkdir(parents=True)
    (package / "declaration/eng.html").write_text(ENGLISH, encoding="utf-8")
    (package / "declaration/khm.html").write_text(
        _page(["ក", "ខ", "គ", "ឃ"], [["ង"], ["ច", "ឆ"]]), encoding="utf-8"
    )
    out = tmp_path / "udhr-en-km.jsonl"
    assert build("km", out, package) == 7
