"""Several corpora in data.pairs: languages kept, splits per language and disjoint across
languages, batches balanced over languages, the single-language en-km split unchanged."""

import hashlib
import json
from collections import Counter

import pytest
import torch

from llink.config import DataConfig
from llink.data.pairs import Pair, write_pairs
from llink.data.splits import corpus_specs, english_key, load_splits, spec_language, split_of
from llink.data.tasks import translation_examples
from llink.train.state import batch_indices, language_groups

from .test_harvest import FixtureArchive, trees  # noqa: F401  (fixture re-export)

#: sha256 of the default en-km splits (every pair of train, dev, test in order) computed
#: with the single-corpus code before several corpora were supported (commit 656d3e2).
EN_KM_DEFAULT_SPLITS = "96edebcbc38b61c6412589ce23232498854e6303bef36928945cb5ab29883072"

AA, BB = "ꯀꯁꯂ", "ᎠᎡᎢ"  # two scripts that stand for two languages


def _english(i: int) -> str:
    return f"Sentence number {i} says something about topic {i * 7 % 13}."


@pytest.fixture
def corpora(tmp_path):
    """en-aa.jsonl (with lang fields, 300 pairs) and en-bb.tsv (no lang, 200 pairs) sharing
    their first 150 English sentences."""
    aa = [Pair(_english(i), f"{AA} {i}", "aa", "x:1") for i in range(300)]
    write_pairs(tmp_path / "en-aa.jsonl", aa)
    lines = [f"{_english(i)}\t{BB} {i}" for i in range(150)]
    lines += [f"{_english(1000 + i)}\t{BB} {1000 + i}" for i in range(50)]
    (tmp_path / "en-bb.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path / "en-aa.jsonl", tmp_path / "en-bb.tsv"


def _cfg(pairs, **kw) -> DataConfig:
    base = {"dev_fraction": 0.1, "test_fraction": 0.2, "max_train_pairs": None,
            "max_dev_pairs": 1000}
    return DataConfig(pairs=pairs, **{**base, **kw})


def test_several_corpora_keep_their_language(corpora):
    aa, bb = corpora
    as_text = load_splits(_cfg(f"{aa}, {bb}"))
    as_list = load_splits(_cfg([str(aa), str(bb)]))
    assert as_text.train == as_list.train and as_text.test == as_list.test
    every = [*as_text.train, *as_text.dev, *as_text.test]
    assert Counter(p.lang for p in every) == {"aa": 300, "bb": 200}
    assert all((p.lang == "aa") == p.foreign.startswith(AA) for p in every)
    by_lang = as_text.counts_by_lang()
    assert set(by_lang) == {"aa", "bb"} and sum(by_lang["bb"].values()) == 200
    assert "aa: train" in as_text.summary() and "bb: train" in as_text.summary()
    # each language is selected as it is alone: adding bb changes nothing of aa
    alone = load_splits(_cfg(str(aa)))
    for s in ("train", "dev", "test"):
        assert [p for p in getattr(as_text, s) if p.lang == "aa"] == getattr(alone, s)


def test_corpus_names_and_languages(corpora, tmp_path):
    assert corpus_specs("builtin:en-km, builtin:en-th") == ["builtin:en-km", "builtin:en-th"]
    assert corpus_specs(["builtin:en-km"]) == ["builtin:en-km"]
    with pytest.raises(ValueError, match="twice"):
        corpus_specs("builtin:en-km,builtin:en-km")
    assert spec_language("builtin:en-th") == "th"
    assert spec_language("/x/en-pa-IN.jsonl.gz") == "pa-IN"
    assert spec_language("pairs.tsv") == ""
    nameless = tmp_path / "pairs.tsv"
    nameless.write_text(f"{_english(1)}\t{BB}\n", encoding="utf-8")
    with pytest.raises(ValueError, match="lang"):
        load_splits(_cfg(f"{corpora[0]},{nameless}"))


def test_splits_are_per_language_and_disjoint_across_languages(corpora):
    """Rule: the split of a pair depends on its normalised English only, so an English
    sentence in two languages' corpora is in the same split for both."""
    s = load_splits(_cfg(",".join(map(str, corpora)), sentence_like_only=False))
    keys = {name: {english_key(p.en) for p in getattr(s, name)} for name in ("train", "dev",
                                                                            "test")}
    assert not keys["train"] & keys["dev"] and not keys["train"] & keys["test"]
    assert not keys["dev"] & keys["test"]
    shared = {english_key(_english(i)) for i in range(150)}
    for name, got in keys.items():  # the shared sentences appear in both languages
        langs = Counter(p.lang for p in getattr(s, name) if english_key(p.en) in shared)
        assert langs["aa"] == langs["bb"] == len(got & shared)
    assert {split_of(_english(i), 0.1, 0.2, "llink-split-v1") for i in range(150)} == {
        "train", "dev", "test"}
    # caps and de-duplication are per language: the same English is kept in each language
    capped = load_splits(_cfg(",".join(map(str, corpora)), max_train_pairs=20, max_dev_pairs=3))
    assert capped.counts_by_lang() == {
        "aa": {"train": 20, "dev": 3, "test": len([p for p in s.test if p.lang == "aa"])},
        "bb": {"train": 20, "dev": 3, "test": len([p for p in s.test if p.lang == "bb"])},
    }


def test_en_km_split_unchanged():
    s = load_splits(DataConfig())  # data.pairs = "builtin:en-km"
    h = hashlib.sha256()
    for name in ("train", "dev", "test"):
        for p in getattr(s, name):
            rec = [name, p.en, p.foreign, p.lang, p.source]
            h.update(json.dumps(rec, ensure_ascii=False).encode() + b"\n")
    assert s.counts() == {"train": 8000, "dev": 500, "test": 1425}
    assert h.hexdigest() == EN_KM_DEFAULT_SPLITS


def test_balanced_batches_count_per_language():
    langs = ["aa"] * 300 + ["bb"] * 100 + ["cc"] * 25
    uniform = language_groups(langs, alpha=0.0)
    assert [round(share, 6) for _, share in uniform] == [round(1 / 3, 6)] * 3
    for step in range(60):
        idx = batch_indices(len(langs), 12, seed=0, step=step, groups=uniform)
        assert len(idx) == len(set(idx.tolist())) == 12
        per = Counter(langs[i] for i in idx.tolist())
        assert per == {"aa": 4, "bb": 4, "cc": 4}  # exactly 12 / 3 each, every batch
    # alpha = 1: shares proportional to size; 10 rows: 7.06 / 2.35 / 0.59 by largest
    # remainder: 7, 2, 1 (cc's 0.59 beats bb's 0.35)
    proportional = language_groups(langs, alpha=1.0)
    for step in range(5):
        idx = batch_indices(len(langs), 10, seed=1, step=step, groups=proportional)
        assert Counter(langs[i] for i in idx.tolist()) == {"aa": 7, "bb": 2, "cc": 1}
    # alpha = 0.5: 17.3 : 10 : 5 of 13 rows -> 6.98, 4.03, 2.0 -> 7, 4, 2
    half = language_groups(langs, alpha=0.5)
    idx = batch_indices(len(langs), 13, seed=2, step=0, groups=half)
    assert Counter(langs[i] for i in idx.tolist()) == {"aa": 7, "bb": 4, "cc": 2}


def test_rows_without_language_keep_their_share():
    langs = ["aa"] * 60 + ["bb"] * 20 + [""] * 20  # e.g. Stage B's English examples
    groups = language_groups(langs, alpha=0.0)
    idx = batch_indices(len(langs), 20, seed=0, step=3, groups=groups)
    assert Counter(langs[i] for i in idx.tolist()) == {"aa": 8, "bb": 8, "": 4}


def test_one_language_samples_as_before():
    assert language_groups(["km"] * 50, 0.0) is None
    assert language_groups(["km"] * 50 + [""] * 10, 0.0) is None
    assert language_groups(None, 0.0) is None
    g = torch.Generator().manual_seed(7 * 1_000_003 + 5 * 131 + 2)
    assert torch.equal(batch_indices(50, 8, 7, 5, 2), torch.randperm(50, generator=g)[:8])


def test_translation_examples_carry_the_language():
    items, _ = translation_examples([Pair("Open the file now.", f"{AA} {AA} {AA} {AA}", "aa")])
    assert items[0].lang == "aa"


def test_harvest_size_cap_leaves_out_short_strings_first():
    from llink.data.harvest import _gzip_size, cap_pairs, is_sentence_like

    pairs = [Pair(f"Word {i}", f"{AA} {i}") for i in range(400)]
    pairs += [Pair(_english(i), f"{BB} {i} {AA}") for i in range(400)]
    full = _gzip_size(pairs)
    kept, dropped = cap_pairs(pairs, full)
    assert kept == pairs and dropped == 0
    limit = _gzip_size(pairs[400:]) + 200
    kept, dropped = cap_pairs(pairs, limit)
    assert _gzip_size(kept) <= limit and dropped == len(pairs) - len(kept) > 0
    assert sum(map(is_sentence_like, (p.en for p in kept))) == 400  # all sentences kept
    assert kept == [p for p in pairs if p in set(kept)]  # input order


def test_harvest_commands_pass_the_size_cap(monkeypatch, tmp_path):
    import llink.data.harvest as harvest_pkg
    import llink.data.harvest.__main__ as harvest_main
    from llink.cli import build_parser

    calls = []

    def fake_many(outs, **kwargs):
        calls.append(kwargs["max_bytes"])
        return {lang: {"total": 1, "sentence_like": 1} for lang in outs}

    monkeypatch.setattr(harvest_pkg, "harvest_many", fake_many)
    monkeypatch.setattr(harvest_main, "harvest_many", fake_many)
    argv = ["--lang", "km,th", "--out-dir", str(tmp_path), "--max-bytes", "3000000"]
    args = build_parser().parse_args(["data", "harvest", *argv])
    args.func(args)
    assert harvest_main.main(argv) == 0
    assert calls == [3_000_000, 3_000_000]


def test_harvest_with_a_size_cap_writes_it_in_the_provenance(tmp_path, trees):
    import os

    from llink.data.harvest import harvest
    from llink.data.pairs import read_pairs

    full = harvest("km", tmp_path / "full/en-km.jsonl.gz", archive=FixtureArchive(trees))
    size = os.path.getsize(tmp_path / "full/en-km.jsonl.gz")
    out = tmp_path / "cap/en-km.jsonl.gz"
    counts = harvest("km", out, archive=FixtureArchive(trees), max_bytes=size - 100)
    assert os.path.getsize(out) <= size - 100
    assert counts["total"] == full["total"] - counts["dropped_for_size"] < full["total"]
    assert counts["dropped_for_size_sentence_like"] == full["sentence_like"] - counts[
        "sentence_like"]
    assert len(read_pairs(out)[0]) == counts["total"]
    text = out.with_name("en-km.PROVENANCE.md").read_text()
    assert f"Size cap: {size - 100:,} bytes" in text and "--max-bytes" in text
    assert f"{counts['dropped_for_size']:,} cleaned pairs did not fit" in text


def test_dev_and_test_take_the_languages_in_turn():
    """A language whose capped pool came from a large split has low English hashes and
    would crowd the front of a plain hash order; dev and test interleave the languages,
    each in its own hash order, so the first N items hold them about equally."""
    from llink.data.pairs import Pair
    from llink.data.splits import interleave_languages

    pairs = [Pair(f"km {i}", "x", "km") for i in range(6)] + \
        [Pair(f"th {i}", "y", "th") for i in range(2)]
    out = interleave_languages(pairs)
    assert [p.lang for p in out] == ["km", "th", "km", "th", "km", "km", "km", "km"]
    assert [p.en for p in out if p.lang == "km"] == [f"km {i}" for i in range(6)]
    assert sorted(map(id, out)) == sorted(map(id, pairs))
