import gzip
import json

import pytest

from llink.config import DataConfig
from llink.data.pairs import Pair, PairFileError, read_pairs, write_pairs
from llink.data.splits import english_key, load_splits, resolve_pairs_path, split_pairs


def test_jsonl_and_tsv_round_trip(tmp_path):
    pairs = [Pair("Open the file.", "បើកឯកសារ។", "km", "x"), Pair("Close it.", "បិទវា។")]
    for name in ("p.jsonl", "p.jsonl.gz"):
        write_pairs(tmp_path / name, pairs)
        assert read_pairs(tmp_path / name)[0] == pairs
    (tmp_path / "p.tsv").write_text("Open the file.\tបើកឯកសារ។\n", encoding="utf-8")
    assert read_pairs(tmp_path / "p.tsv")[0] == [Pair("Open the file.", "បើកឯកសារ។")]


def test_gzip_output_is_reproducible(tmp_path):
    pairs = [Pair("a b", "ក ខ")]
    write_pairs(tmp_path / "a.jsonl.gz", pairs)
    write_pairs(tmp_path / "b.jsonl.gz", pairs)
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ('{"en": "a", "foreign": "ក"}\n{"en": "b", "foreign": \n', 2, "invalid JSON"),
        ('["en", "foreign"]\n', 1, "expected a JSON object"),
        ('{"en": "a"}\n', 1, "missing the foreign"),
        ('{"foreign": "ក"}\n', 1, "missing the English"),
        ('{"en": 3, "foreign": "ក"}\n', 1, "must be strings"),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path, content, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PairFileError, match=message) as err:
        read_pairs(path)
    assert err.value.line == line and str(path) in str(err.value)
    assert f"{path}:{line}:" in str(err.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [("no tab here\n", "found no tab"), ("a\tb\tc\n", "found 3")],
)
def test_malformed_tsv(tmp_path, content, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PairFileError, match=message):
        read_pairs(path)


def test_invalid_utf8_and_unknown_type(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_bytes(b"ok\tfine\n\xff\xfe\tx\n")
    with pytest.raises(PairFileError, match="UTF-8"):
        read_pairs(path)
    csv = tmp_path / "pairs.csv"
    csv.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(PairFileError, match="unknown pair file type"):
        read_pairs(csv)

def test_drops_are_counted_not_silent(tmp_path):
    lines = [
        {"en": "fine sentence", "foreign": "ប្រយោគល្អ"},
        {"en": "  ", "foreign": "ក"},
        {"en": "same", "foreign": "same"},
        {"en": "x" * 50, "foreign": "ក"},
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    pairs, report = read_pairs(path, max_chars=40)
    assert len(pairs) == 1 and report.kept == 1
    assert report.dropped == {"empty": 1, "identical_sides": 1, "too_long": 1}
    assert "identical_sides 1" in report.summary()


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_pairs(tmp_path / "none.jsonl")


def test_split_is_deterministic_and_disjoint_by_normalised_english():
    pairs = [Pair(f"Sentence number {i} is here.", f"ប្រយោគ {i}") for i in range(3000)]
    # near-duplicates differing in case/punctuation must land in the same split
    pairs += [Pair(f"sentence NUMBER {i} is here", f"ប្រយោគ {i}!") for i in range(0, 3000, 7)]
    a = split_pairs(pairs, 0.05, 0.05, "salt")
    b = split_pairs(list(reversed(pairs)), 0.05, 0.05, "salt")
    keys = {s: {english_key(p.en) for p in a[s]} for s in a}
    assert not keys["train"] & keys["dev"] and not keys["train"] & keys["test"]
    assert not keys["dev"] & keys["test"]
    assert {s: set(map(english_key, (p.en for p in b[s]))) for s in b} == keys
    assert 100 < len(a["test"]) < 200 and 100 < len(a["dev"]) < 200


def test_builtin_corpus_splits():
    cfg = DataConfig(max_train_pairs=1000)
    s = load_splits(cfg)
    assert s.counts()["train"] == 1000
    assert s.counts()["test"] >= 1000  # the test pool of the retrieval evaluation
    train = {english_key(p.en) for p in s.train}
    assert not train & {english_key(p.en) for p in s.test}
    bigger = load_splits(DataConfig(max_train_pairs=2000))
    assert set(s.train) <= set(bigger.train)  # caps nest


def test_builtin_unknown_name():
    with pytest.raises(FileNotFoundError, match="en-km"):
        resolve_pairs_path("builtin:en-xx")


def test_shipped_corpus_is_valid_jsonl():
    path = resolve_pairs_path("builtin:en-km")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        first = json.loads(fh.readline())
    assert {"en", "foreign", "lang", "source"} <= set(first)
