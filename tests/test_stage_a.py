"""Stage A on tiny models: training runs, improves retrieval, resumes exactly, checks artifacts."""

import json

import pytest
import torch

from llink.config import load_config
from llink.data.pairs import Pair, write_pairs
from llink.eval.retrieval import retrieval_metrics
from llink.method.bridge import Projector
from llink.method.projection import load_stage_a
from llink.storage.checkpoints import CheckpointError
from llink.train.stage_a import compute_features
from llink.workflows import Session, evaluate_retrieval, run_stage_a

from .conftest import KHMER_ENGLISH


def make_pair_file(folder):
    """80 distinct pairs built from real sentences, for splits with a few items each."""
    pairs = []
    for i in range(80):
        en, km = KHMER_ENGLISH[i % len(KHMER_ENGLISH)]
        pairs.append(Pair(f"{en} Item {i}.", f"{km} {i}", "km"))
    path = folder / "pairs.jsonl"
    write_pairs(path, pairs)
    return path


@pytest.fixture()
def pair_file(tmp_path):
    return make_pair_file(tmp_path)


def _cfg(tmp_path, enc, dec, pairs, run="run", **over):
    items = {
        "model.encoder": str(enc), "model.decoder": str(dec), "model.encoder_prefix": "",
        "model.num_slots": 4, "data.pairs": str(pairs), "data.sentence_like_only": False,
        "data.dev_fraction": 0.2, "data.test_fraction": 0.2, "data.max_train_pairs": None,
        "stage_a.steps": 20, "stage_a.batch_size": 8, "stage_a.warmup_steps": 2,
        "stage_a.eval_every": 10, "stage_a.save_every": 5, "stage_a.queue_size": 32,
        "stage_a.queue_topk": 8, "run_dir": str(tmp_path / run),
        "features_cache": str(tmp_path / "features"), "device": "cpu",
        # the paper's design: what these tests pin down (the offline default's token slots,
        # literals, inner-layer targets and prompt are tested in their own files)
        "model.slot_source": "pooled", "model.literals": False, "stage_a.teacher_layer": -1,
        "stage_a.teacher_pooling": "foreign_emb", "stage_b.contrast": "detached",
        "stage_b.system_prompt": "none",
    }
    items.update(over)
    return load_config(None, [f"{k}={v}" for k, v in items.items()])


def _weights(path):
    return load_stage_a(path).projector.state_dict()


def test_stage_a_trains_logs_and_saves(tmp_path, tiny_encoder_dir, tiny_decoder_dir, pair_file):
    cfg = _cfg(tmp_path, tiny_encoder_dir, tiny_decoder_dir, pair_file, **{"stage_a.steps": 60})
    session = Session(cfg, progress=False)
    art = run_stage_a(session)
    run = tmp_path / "run"
    assert (run / "stage_a" / "COMPLETE").exists()
    assert json.loads((run / "config.json").read_text())["stage_a"]["steps"] == 60
    assert json.loads((run / "versions.json").read_text())["torch"]
    records = [json.loads(x) for x in (run / "stage_a.metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "dev_R@1" in r] == [10, 20, 30, 40, 50, 60]
    assert {"loss", "tau", "lr", "nce"} <= set(records[-1])
    assert records[0]["tau"] > records[-1]["tau"]
    # the projector learns the training pairs: training retrieval far above chance
    feats = compute_features(cfg, session.splits, session.encoder, session.decoder, False)
    n = feats.train_x.shape[0]
    keys = art.targets(feats.train_h)
    train = retrieval_metrics(art.project(feats.train_x), keys)
    chance = {"R@1": 1 / n, "R@5": 5 / n, "mean_rank": (n + 1) / 2}
    assert train["R@1"] > 5 * chance["R@1"] and train["R@5"] > 0.6
    assert train["mean_rank"] < 0.25 * chance["mean_rank"]
    torch.manual_seed(cfg.seed)  # the same projector before training is near chance
    untrained = Projector(feats.train_x.shape[1], keys.shape[1], cfg.stage_a.hidden_mult,
                          cfg.stage_a.dropout).eval()
    with torch.no_grad():
        before = retrieval_metrics(untrained(feats.train_x), keys)
    assert before["mean_rank"] > 0.6 * chance["mean_rank"]
    assert train["MRR"] > before["MRR"] + 0.2
    loaded = load_stage_a(run / "stage_a", expect=session.model_meta())
    assert torch.equal(loaded.targets.mean, art.targets.mean)
    assert torch.equal(loaded.targets.whitener, art.targets.whitener)
    assert art.meta["targets"] == "whitened"
    rows = evaluate_retrieval(session, baselines=True)
    assert set(rows) >= {"Latin-token overlap floor", "encoder cross-lingual (reference)",
                         "encoder cross-lingual, training mean removed (reference)"}
    assert (run / "eval" / "retrieval.json").exists()


def test_resume_continues_the_same_run(tmp_path, tiny_encoder_dir, tiny_decoder_dir, pair_file,
                                       monkeypatch, capsys):
    full = _cfg(tmp_path, tiny_encoder_dir, tiny_decoder_dir, pair_file, run="full")
    run_stage_a(Session(full, progress=False))

    cut = _cfg(tmp_path, tiny_encoder_dir, tiny_decoder_dir, pair_file, run="cut")
    real_clip = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def clip_then_crash(*a, **k):
        calls["n"] += 1
        if calls["n"] == 13:
            raise KeyboardInterrupt
        return real_clip(*a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run_stage_a(Session(cut, progress=False))
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", real_clip)
    assert not (tmp_path / "cut" / "stage_a").exists()
    # training reseeds every step, so a restart from 0 would end with the same weights:
    # count the steps the resumed run takes, and see where its first one starts from
    import llink.train.stage_a as sa

    real_batch = sa.batch_indices
    steps_run = []

    def record_step(n, batch, seed, step, micro=0, groups=None):
        steps_run.append(step)
        return real_batch(n, batch, seed, step, micro, groups)

    monkeypatch.setattr(sa, "batch_indices", record_step)
    run_stage_a(Session(cut, progress=False), resume=True)  # continues from step 10
    monkeypatch.setattr(sa, "batch_indices", real_batch)
    assert steps_run == list(range(10, 20))
    assert "resuming Stage A from step 10" in capsys.readouterr().out

    a, b = _weights(tmp_path / "full" / "stage_a"), _weights(tmp_path / "cut" / "stage_a")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    steps = [json.loads(x)["step"]
             for x in (tmp_path / "cut" / "stage_a.metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len(steps) == len(set(steps))


def test_resume_refuses_changed_settings(tmp_path, tiny_encoder_dir, tiny_decoder_dir, pair_file):
    cfg = _cfg(tmp_path, tiny_encoder_dir, tiny_decoder_dir, pair_file)
    run_stage_a(Session(cfg, progress=False))
    changed = _cfg(tmp_path, tiny_encoder_dir, tiny_decoder_dir, pair_file,
                   **{"stage_a.lr": 0.5, "stage_a.steps": 30})
    with pytest.raises(ValueError, match="lr"):
        run_stage_a(Session(changed, progress=False), resume=True)


def test_resume_without_state_says_how_to_fix(tmp_path, tiny_encoder_dir, tiny_decoder_dir,
                                              pair_file):
    cfg = _cfg(tmp_path, tiny_encoder_dir, tiny_decoder_dir, pair_file, run="nothing")
    with pytest.raises(CheckpointError, match="without --resume"):
        run_stage_a(Session(cfg, progress=False), resume=True)


def test_artifact_mismatch_is_reported(tmp_path, tiny_encoder_dir, tiny_decoder_dir, pair_file):
    cfg = _cfg(tmp_path, tiny_encoder_dir, tiny_decoder_dir, pair_file)
    session = Session(cfg, progress=False)
    run_stage_a(session)
    expect = {**session.model_meta(), "num_slots": 8, "encoder": "xlm-roberta-base"}
    with pytest.raises(CheckpointError) as err:
        load_stage_a(tmp_path / "run" / "stage_a", expect=expect)
    msg = str(err.value)
    assert "num_slots" in msg and "encoder" in msg and "xlm-roberta-base" in msg
    with pytest.raises(CheckpointError, match="llink train stage-a"):
        load_stage_a(tmp_path / "missing")


def test_leave_one_source_out_retrieval(tmp_path, tiny_encoder_dir, tiny_decoder_dir):
    from llink.storage.cached_features import encoder_vectors, features_root, teacher_vectors
    from llink.workflows import evaluate_holdout

    pairs = []
    for i in range(80):
        en, km = KHMER_ENGLISH[i % len(KHMER_ENGLISH)]
        pairs.append(Pair(f"{en} Item {i}.", f"{km} {i}", "km",
                          "gettext:app" if i % 2 else "libreoffice-help"))
    path = tmp_path / "pairs.jsonl"
    write_pairs(path, pairs)
    cfg = _cfg(tmp_path, tiny_encoder_dir, tiny_decoder_dir, path)
    session = Session(cfg, progress=False)
    run_stage_a(session)
    res = evaluate_holdout(session, min_pairs=2)
    got = res["sources"]
    root = features_root(cfg.features_cache)
    in_domain = load_stage_a(tmp_path / "run" / "stage_a")
    assert set(got) == {"gettext", "libreoffice-help"}
    for g, r in got.items():
        assert r["pool_size"] == sum(1 for p in session.splits.test
                                     if (p.source.split(":")[0]) == g)
        assert r["train_pairs"] < len(session.splits.train)  # the source was left out
        # each figure is its projector (or the encoder) ranking this source's test pairs
        pool = [p for p in session.splits.test if p.source.split(":")[0] == g]
        foreign = encoder_vectors(session.encoder, [p.foreign for p in pool], root, progress=False)
        english = encoder_vectors(session.encoder, [p.en for p in pool], root, progress=False)
        teacher = teacher_vectors(session.decoder, [p.en for p in pool], root, progress=False,
                                  layer=in_domain.targets.layer,
                                  pooling=in_domain.targets.pooling)
        held_art = load_stage_a(tmp_path / "run" / f"holdout-{g}" / "stage_a")
        assert held_art.meta["train_pairs"] == r["train_pairs"]
        for k, art in (("trained_without", held_art), ("trained_with", in_domain)):
            want = retrieval_metrics(art.project(foreign), art.targets(teacher))
            assert r[k] == pytest.approx(want, abs=1e-6), (g, k)
        assert r["encoder"] == pytest.approx(retrieval_metrics(foreign, english), abs=1e-6)
        # the centred reference removes the mean of the training split that left g out
        sub_train = [p for p in session.splits.train if p.source.split(":")[0] != g]
        mean = encoder_vectors(session.encoder, [p.foreign for p in sub_train], root,
                               progress=False).mean(0)
        assert r["encoder_centred"] == pytest.approx(
            retrieval_metrics(foreign - mean, english - mean), abs=1e-6)
    held = Session(_cfg(tmp_path, tiny_encoder_dir, tiny_decoder_dir, path,
                        **{"data.exclude_sources": "gettext"}), progress=False)
    assert all(not p.source.startswith("gettext") for p in held.splits.train + held.splits.dev)
    assert any(p.source.startswith("gettext") for p in held.splits.test)


def test_stage_a_mixes_english_read_through_the_encoder(tmp_path, tiny_encoder_dir,
                                                       tiny_decoder_dir, pair_file):
    import gzip

    from llink.data.english import read_english

    english = tmp_path / "en.txt.gz"
    lines = [f"The cat number {i} sleeps on the warm mat." for i in range(30)]
    base = _cfg(tmp_path, tiny_encoder_dir, tiny_decoder_dir, pair_file)
    session = Session(base, progress=False)
    held = session.splits.test[0].en
    with gzip.open(english, "wt", encoding="utf-8") as fh:
        fh.write("\n".join([*lines, held, lines[0]]) + "\n")
    cfg = _cfg(tmp_path, tiny_encoder_dir, tiny_decoder_dir, pair_file,
               **{"data.english": str(english), "data.max_english": 20,
                  "stage_a.english_fraction": 0.25})
    got = read_english(cfg.data, [*session.splits.dev, *session.splits.test])
    assert len(got) == 20 and held not in got and len(set(got)) == 20  # capped, no leaks
    art = run_stage_a(Session(cfg, progress=False))
    assert art.meta["english_sentences"] == 20 and art.meta["train_pairs"] == len(
        session.splits.train)
