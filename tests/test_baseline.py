"""The direct fine-tuning baseline on tiny models: learns, saves, loads, resumes, refuses."""

import json

import pytest
import torch

from llink.method.inject import collate
from llink.method.model import load_baseline
from llink.storage.checkpoints import CheckpointError
from llink.workflows import Session, run_baseline, stage_b_items

from .reference import greedy_reference
from .test_stage_a import make_pair_file
from .test_stage_b import _b_cfg, other_decoder, refused_keys


def _cfg(root, enc, dec, run="run", **over):
    items = {"stage_b.steps": 12, "stage_b.lr_lora": 5e-3, "stage_b.eval_every": 6,
             "stage_b.save_every": 4, **over}
    return _b_cfg(root, enc, dec, root / "pairs.jsonl", run=run, **items)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_encoder_dir, tiny_decoder_dir):
    root = tmp_path_factory.mktemp("baseline")
    make_pair_file(root)
    cfg = _cfg(root, tiny_encoder_dir, tiny_decoder_dir, **{"stage_b.snapshot_every": 6})
    session = Session(cfg, progress=False)
    summary = run_baseline(session)
    return cfg, session, summary, root


def test_baseline_learns_and_writes_files(trained):
    cfg, _, summary, root = trained
    run = root / "run"
    for name in ("baseline", "baseline-best"):
        assert (run / name / "COMPLETE").exists()
        assert (run / name / "lora" / "adapter_config.json").exists()
    meta = json.loads((run / "baseline" / "baseline.json").read_text())
    assert meta["kind"] == "direct-finetune" and meta["decoder"] == cfg.model.decoder
    assert meta["stage_b_config"]["lora_r"] == cfg.stage_b.lora_r
    recs = [json.loads(x) for x in (run / "baseline.metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 13))
    assert all(r["lr"] > 0 for r in steps[:-1])
    assert [r["step"] for r in recs if "dev_nll" in r] == [0, 6, 12]
    saved = json.loads((run / "baseline.summary.json").read_text())
    assert saved["dev_final"]["nll"] < saved["dev_start"]["nll"] - 0.1
    # LoRA is off for the base decoder: its NLL does not move
    assert saved["dev_final"]["nll_base_raw"] == pytest.approx(saved["dev_start"]["nll_base_raw"])


def test_baseline_loads_back_with_the_same_nll_and_generates(trained):
    cfg, session, summary, root = trained
    model = load_baseline(root / "run" / "baseline")
    assert model.has_lora
    from llink.train.stage_b import tokenize_examples
    items = stage_b_items(session, "dev")[: cfg.stage_b.eval_pairs]
    ex = tokenize_examples(model, items, cfg.stage_b.max_answer_tokens, raw_foreign=True)
    b = collate(ex, int(model.tokenizer.pad_token_id))
    with torch.no_grad():
        nll = model.answer_nll(b["input_ids"], b["attention_mask"], b["labels"]).per_token()
    assert float(nll) == pytest.approx(summary["dev_final"]["nll"], rel=1e-5)
    outs = model.generate_raw([it.foreign for it in items[:3]], max_new_tokens=4)
    prompts = [model.prompt_ids("translate_to_english", foreign_text=it.foreign)
               for it in items[:3]]
    assert outs == greedy_reference(model, prompts, max_new_tokens=4)


def test_baseline_snapshot_is_the_model_of_its_step(trained):
    """``snapshot_every=6`` keeps the model after step 6 (12 is the final one): loaded back,
    its dev NLL is the one the run logged at step 6."""
    cfg, session, _, root = trained
    run = root / "run"
    assert [p.name for p in run.glob("baseline-step*")] == ["baseline-step6"]
    model = load_baseline(run / "baseline-step6")
    assert json.loads((run / "baseline-step6" / "baseline.json").read_text())["step"] == 6
    from llink.train.baseline import evaluate_raw_nll
    from llink.train.stage_b import tokenize_examples

    items = stage_b_items(session, "dev")[: cfg.stage_b.eval_pairs]
    dev = tokenize_examples(model, items, cfg.stage_b.max_answer_tokens, raw_foreign=True)
    recs = [json.loads(x) for x in (run / "baseline.metrics.jsonl").read_text().splitlines()]
    logged = next(r["dev_nll"] for r in recs if r["step"] == 6 and "dev_nll" in r)
    assert evaluate_raw_nll(model, dev, cfg.stage_b.micro_batch) == pytest.approx(logged,
                                                                                  rel=1e-5)


def test_baseline_resume_matches_uninterrupted(trained, tiny_encoder_dir, tiny_decoder_dir,
                                               monkeypatch, capsys):
    _, _, _, root = trained
    cfg = _cfg(root, tiny_encoder_dir, tiny_decoder_dir, run="cut")
    import llink.train.baseline as bl

    real = bl.step_batch
    calls = {"n": 0}

    def crash(*a, **k):
        calls["n"] += 1
        if calls["n"] == 7:  # in step 7, after the checkpoint of step 4
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(bl, "step_batch", crash)
    with pytest.raises(KeyboardInterrupt):
        run_baseline(Session(cfg, progress=False))
    # training reseeds every step, so a restart from 0 would end with the same weights:
    # the resumed run must take steps 4 to 11 (the checkpoint is of step 4), and only those
    steps = []

    def record(sampling, n, batch, seed, step, micro, grad_accum, groups=None):
        steps.append(step)
        return real(sampling, n, batch, seed, step, micro, grad_accum, groups)

    monkeypatch.setattr(bl, "step_batch", record)
    capsys.readouterr()
    run_baseline(Session(cfg, progress=False), resume=True)
    monkeypatch.setattr(bl, "step_batch", real)
    assert steps == list(range(4, 12))
    assert "resuming the baseline from step 4" in capsys.readouterr().out
    full = load_baseline(root / "run" / "baseline").lm.state_dict()
    cut = load_baseline(root / "cut" / "baseline").lm.state_dict()
    lora = [k for k in full if "lora_" in k]
    assert lora
    for k in lora:
        torch.testing.assert_close(full[k], cut[k], rtol=0, atol=1e-6, msg=k)


def test_baseline_refuses_another_decoder(trained, tmp_path):
    _, _, _, root = trained
    with pytest.raises(CheckpointError, match="decoder"):
        load_baseline(root / "run" / "baseline", expect={"decoder": "other/model"})
    with pytest.raises(CheckpointError, match="llink train baseline"):
        load_baseline(tmp_path / "missing")


@pytest.mark.parametrize(("case", "keys"), [
    ("decoder weights", {"decoder_weights"}),
    ("decoder dimension", {"d_dec", "decoder_weights"}),
    ("number of slots", {"num_slots"}),
])
def test_baseline_refuses_other_frozen_decoders(trained, tiny_decoder_dir, tmp_path, case,
                                                keys):
    from llink.backbones.decoder import FrozenDecoder

    _, _, _, root = trained
    if case == "decoder weights":
        dec = other_decoder(tiny_decoder_dir, tmp_path)
    elif case == "decoder dimension":
        dec = other_decoder(tiny_decoder_dir, tmp_path, hidden_size=32, intermediate_size=64)
    else:
        dec = FrozenDecoder.from_pretrained(str(tiny_decoder_dir), num_slots=8)
    with pytest.raises(CheckpointError, match="differs from the one the baseline") as err:
        load_baseline(root / "run" / "baseline", decoder=dec)
    assert refused_keys(err) == keys
    assert load_baseline(root / "run" / "baseline").has_lora  # its own decoder loads it


def test_baseline_of_another_format_version_is_refused(trained, tmp_path):
    import shutil

    _, _, _, root = trained
    copy = tmp_path / "baseline"
    shutil.copytree(root / "run" / "baseline", copy)
    meta = json.loads((copy / "baseline.json").read_text())
    (copy / "baseline.json").write_text(json.dumps({**meta, "format": meta["format"] + 1}))
    with pytest.raises(CheckpointError, match=f"format {meta['format'] + 1}, need "
                                              f"{meta['format']}"):
        load_baseline(copy)
