"""Two languages on tiny models: Stage A's batches hold each language's quota
(data.lang_alpha = 0: half each); Stage B and the baseline get each example's language."""

from collections import Counter

import pytest
import torch

from llink.data.pairs import Pair, write_pairs
from llink.data.splits import english_key, load_splits
from llink.train.state import batch_indices, language_groups
from llink.workflows import Session, run_baseline, run_stage_a, run_stage_b

from .test_stage_a import KHMER_ENGLISH
from .test_stage_b import _b_cfg


class _Stop(Exception):
    pass


def test_training_batches_are_balanced_over_languages(tmp_path, tiny_encoder_dir,
                                                      tiny_decoder_dir, monkeypatch):
    import llink.train.stage_a as sa
    import llink.workflows as wf

    km = [Pair(f"{en} Item {i}.", f"{fo} {i}", "km")
          for i, (en, fo) in enumerate(KHMER_ENGLISH * 10) if i < 90]
    write_pairs(tmp_path / "en-km.jsonl", km)
    # the other corpus has no lang field: its pairs take "xx" from the file name
    write_pairs(tmp_path / "en-xx.jsonl", [Pair(p.en, f"xx {p.foreign} xx") for p in km[:30]])
    pairs = f"{tmp_path / 'en-km.jsonl'},{tmp_path / 'en-xx.jsonl'}"
    cfg = _b_cfg(tmp_path, tiny_encoder_dir, tiny_decoder_dir, pairs, **{"stage_a.steps": 3})
    session = Session(cfg, progress=False)
    train = session.splits.train
    assert {p.lang for p in train} == {"km", "xx"}
    drawn = []
    real = sa.batch_indices

    def record(n, batch, seed, step, micro=0, groups=None):
        idx = real(n, batch, seed, step, micro, groups)
        drawn.append(idx.tolist())
        return idx

    monkeypatch.setattr(sa, "batch_indices", record)
    run_stage_a(session)
    assert len(drawn) == 3
    for idx in drawn:  # Stage A's rows are the training pairs, in order
        assert Counter(train[i].lang for i in idx) == {"km": 4, "xx": 4}

    seen = {}

    def capture(name):
        def fake(cfg, model, train, dev, meta, langs=None, **kw):
            seen[name] = (len(train.examples) if hasattr(train, "examples") else len(train),
                          langs)
            raise _Stop
        return fake

    monkeypatch.setattr(wf, "train_stage_b", capture("stage_b"))
    monkeypatch.setattr(wf, "train_baseline", capture("baseline"))
    for run in (run_stage_b, run_baseline):
        with pytest.raises(_Stop):
            run(session)
    items = [p for p in train if 12 <= len(p.foreign) <= 256]  # the translation examples
    for name in ("stage_b", "baseline"):
        n, langs = seen[name]
        assert n == len(langs) == len(items) and langs == [p.lang for p in items]
        groups = language_groups(langs, cfg.data.lang_alpha)
        idx = batch_indices(n, 4, 0, 0, 17, groups)
        assert Counter(langs[i] for i in idx.tolist()) == {"km": 2, "xx": 2}


def _three_languages(tmp_path):
    """km and xx share every English sentence (one string, two translations); yy is
    another language kept for zero-shot."""
    km = [Pair(f"{en} Item {i}.", f"{fo} {i}", "km")
          for i, (en, fo) in enumerate(KHMER_ENGLISH * 10) if i < 60]
    write_pairs(tmp_path / "en-km.jsonl", km)
    write_pairs(tmp_path / "en-xx.jsonl", [Pair(p.en, f"xx {p.foreign} xx") for p in km])
    write_pairs(tmp_path / "en-yy.jsonl", [Pair(p.en, f"yy {p.foreign} yy") for p in km[:40]])
    return ",".join(str(tmp_path / f"en-{x}.jsonl") for x in ("km", "xx", "yy"))


def test_zero_shot_languages_are_held_out_of_training_and_reported_per_language(
        tmp_path, tiny_encoder_dir, tiny_decoder_dir, capsys, monkeypatch):
    import json

    from llink.workflows import evaluate_generation, evaluate_nll_on_test, evaluate_retrieval

    pairs = _three_languages(tmp_path)
    cfg = _b_cfg(tmp_path, tiny_encoder_dir, tiny_decoder_dir, pairs,
                 **{"data.zero_shot": "yy", "stage_b.steps": 2, "stage_b.bridge_warmup_steps": 1})
    session = Session(cfg, progress=False)
    s = session.splits
    assert {p.lang for p in s.train} == {p.lang for p in s.dev} == {"km", "xx"}
    assert {p.lang for p in s.test} == {"km", "xx", "yy"}
    assert s.filtered["train"]["zero_shot_language"] > 0
    # one English sentence in two languages: its rows share an id in Stage A's loss
    import llink.train.stage_a as sa

    seen_ids = []
    real = sa.info_nce

    def spy(p, h, tau, negs=None, ids=None):
        seen_ids.append(ids)
        return real(p, h, tau, negs, ids)

    monkeypatch.setattr(sa, "info_nce", spy)
    run_stage_a(session)
    assert seen_ids and all(ids is not None for ids in seen_ids)
    assert any(ids.unique().numel() < ids.numel() for ids in seen_ids)
    feats = sa.StageAFeatures(*(torch.zeros(1),) * 4,
                              train_keys=[english_key(p.en) for p in s.train])
    ids = feats.english_ids().tolist()
    by_en = {}
    for p, i in zip(s.train, ids, strict=True):
        by_en.setdefault(english_key(p.en), set()).add(i)
    assert all(len(v) == 1 for v in by_en.values()) and len(set(ids)) == len(by_en)
    evaluate_retrieval(session)
    ret = json.loads((tmp_path / "run" / "eval" / "retrieval.json").read_text())
    assert ret["ranked_among"] == "each language's pairs" and ret["zero_shot"] == ["yy"]
    assert set(ret["by_lang"]) == {"km", "xx", "yy"}
    n_test = Counter(p.lang for p in s.test)
    for lang, rows in ret["by_lang"].items():
        for metrics in rows.values():
            assert metrics["n"] == n_test[lang]
            # ranked among its own language: never worse than last of that pool
            assert 1.0 <= metrics["mean_rank"] <= n_test[lang]
    out = capsys.readouterr().out
    assert "R@1 per language" in out and "yy (0-shot)" in out

    run_stage_b(session)
    nll = evaluate_nll_on_test(session, limit=None)
    assert set(nll["by_lang"]) == {"km", "xx", "yy"}
    assert sum(r["examples"] for r in nll["by_lang"].values()) == nll["examples"]
    gen = evaluate_generation(session, ["llink"], n=None, max_new_tokens=4, batch_size=8)
    assert set(gen["by_lang"]) == {"km", "xx", "yy"}
    assert sum(r["n"] for r in gen["by_lang"].values()) == gen["n"]
    assert "chrF per language" in capsys.readouterr().out


def test_a_zero_shot_language_must_be_one_of_the_corpora(tmp_path, tiny_encoder_dir,
                                                          tiny_decoder_dir):
    pairs = _three_languages(tmp_path)
    cfg = _b_cfg(tmp_path, tiny_encoder_dir, tiny_decoder_dir, pairs, **{"data.zero_shot": "zz"})
    with pytest.raises(ValueError, match="zero_shot names language"):
        load_splits(cfg.data)
    cfg = _b_cfg(tmp_path, tiny_encoder_dir, tiny_decoder_dir, pairs,
                 **{"data.zero_shot": "km,xx,yy"})
    with pytest.raises(ValueError, match="no language to train on"):
        load_splits(cfg.data)
