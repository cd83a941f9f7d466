"""Two languages on tiny models: Stage A's batches hold each language's quota
(data.lang_alpha = 0: half each); Stage B and the baseline get each example's language."""

from collections import Counter

import pytest

from llink.data.pairs import Pair, write_pairs
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
