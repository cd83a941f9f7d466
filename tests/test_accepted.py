"""Accepted-answer scoring (llink.eval.accepted) and the shipped everyday-sentence set."""

import json
import re
from pathlib import Path

import pytest

from llink.data.pairs import PairFileError, is_sentence_like, read_pairs
from llink.data.splits import resolve_pairs_path
from llink.eval.accepted import accepted_answers, format_accepted, is_accepted, read_accept

EVERYDAY = Path(__file__).resolve().parents[1] / "src/llink/corpora/eval/everyday-en-km.jsonl"


@pytest.mark.parametrize("output, accept, right", [
    ("Hi there!", [["hi", "hello"]], True),
    ("This is a file.", [["hi"]], False),  # whole words only
    ("It is raining.", [["rain*"]], True),  # * lets the last word go on
    ("It is rain.", [["raining"]], False),
    ("Thanks a lot", [["thank*"]], True),
    ("I want to drink.", [["drink*"], ["water"]], False),  # every group is needed
    ("I want to drink water.", [["drink*"], ["water"]], True),
    ("I DON\u2019T UNDERSTAND", [["understand"], ["don't"]], True),  # case, curly apostrophe
    ("I live in Phnom Penh.", [["phnom penh"]], True),  # phrases
    ("Phnom is a word.", [["phnom penh"]], False),
])
def test_is_accepted(output, accept, right):
    assert is_accepted(output, accept) is right


def test_accepted_answers_counts_only_items_with_key_words():
    res = accepted_answers({"a": ["Hello.", "No.", "Rain."], "b": ["Hi", "Yes", "Sun"]},
                           [[["hello", "hi"]], None, [["rain*"]]])
    assert res["n"] == 2
    assert res["systems"]["a"]["right"] == 2 and res["systems"]["a"]["items"] == [0, 2]
    assert res["systems"]["b"]["right"] == 1 and res["systems"]["b"]["fraction"] == 0.5
    lo, hi = res["systems"]["b"]["ci"]
    assert 0 < lo < 0.5 < hi < 1
    assert "1 of 2" in format_accepted(res)
    with pytest.raises(ValueError, match="outputs for"):
        accepted_answers({"a": ["x"]}, [None, None])


@pytest.mark.parametrize("bad", [[], [[]], ["water"], [["*"]], [[1]], "water"])
def test_malformed_accept_names_file_and_line(tmp_path, bad):
    path = tmp_path / "set.jsonl"
    rows = [{"en": "Hello.", "foreign": "សួស្តី។", "accept": [["hello"]]},
            {"en": "Rain.", "foreign": "ភ្លៀង។", "accept": bad}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    with pytest.raises(PairFileError, match=r"set\.jsonl:2: 'accept'"):
        read_accept(path)


def test_files_without_key_words_have_none(tmp_path):
    tsv = tmp_path / "p.tsv"
    tsv.write_text("Hello.\tសួស្តី។\n")
    assert read_accept(tsv) == {}
    js = tmp_path / "p.jsonl"
    js.write_text(json.dumps({"en": " Hello. ", "foreign": "សួស្តី។"}) + "\n")
    assert read_accept(js) == {}


def test_shipped_everyday_set():
    pairs, report = read_pairs(EVERYDAY)
    accept = read_accept(EVERYDAY)
    assert len(pairs) >= 30 and not report.dropped
    khmer = re.compile("[\u1780-\u17ff]")
    for p in pairs:
        groups = accept[(p.en, p.foreign)]  # every sentence has key words
        assert khmer.search(p.foreign) and not re.search("[A-Za-z0-9]", p.foreign)
        assert is_accepted(p.en, groups), p.en  # its own reference is a right answer
    assert EVERYDAY.with_name("everyday-en-km.PROVENANCE.md").is_file()


def test_everyday_set_is_not_in_what_training_reads():
    """No everyday sentence's Khmer is a sentence-like pair of the shipped corpus."""
    everyday = {p.foreign.rstrip("។?!").strip() for p in read_pairs(EVERYDAY)[0]}
    corpus, _ = read_pairs(resolve_pairs_path("builtin:en-km"))
    seen = {p.foreign.rstrip("។?!").strip() for p in corpus if is_sentence_like(p.en)}
    assert not everyday & seen


def test_key_words_follow_the_pair_fields_read_pairs_accepts(tmp_path):
    """Any English/foreign field name read_pairs takes keys the key words the same way."""
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps({"english": " Hello. ", "foreign": "សួស្តី។",
                                "accept": [["hello"]]}, ensure_ascii=False) + "\n"
                    + '{"en": "broken"\n')
    with pytest.raises(PairFileError, match=r"set\.jsonl:2: invalid JSON"):
        read_accept(path)
    path.write_text(path.read_text().splitlines()[0] + "\n")
    (pair,), _ = read_pairs(path)
    assert read_accept(path) == {(pair.en, pair.foreign): [["hello"]]}
