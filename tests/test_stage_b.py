"""Stage B on tiny models: trains, keeps base weights frozen, round-trips, resumes, checks."""

import json

import pytest
import torch

from llink.artifacts import load_llink
from llink.checkpoints import CheckpointError
from llink.workflows import Session, run_stage_a, run_stage_b

from .test_stage_a import _cfg, make_pair_file, pair_file  # noqa: F401  (fixture re-export)


def _b_cfg(tmp_path, enc, dec, pairs, run="run", **over):
    items = {"stage_b.steps": 6, "stage_b.micro_batch": 4, "stage_b.bridge_warmup_steps": 3,
             "stage_b.eval_every": 3, "stage_b.save_every": 2, "stage_b.eval_pairs": 6,
             "stage_b.lora_r": 4, "stage_b.lora_alpha": 4, "stage_a.steps": 10,
             "stage_b.max_answer_tokens": 24}
    items.update(over)
    return _cfg(tmp_path, enc, dec, pairs, run=run, **items)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_encoder_dir, tiny_decoder_dir):
    """One Stage A + Stage B run shared by the tests of this module."""
    root = tmp_path_factory.mktemp("stage_b")
    cfg = _b_cfg(root, tiny_encoder_dir, tiny_decoder_dir, make_pair_file(root))
    session = Session(cfg, progress=False)
    run_stage_a(session)
    summary = run_stage_b(session)
    return cfg, session, summary, root


def test_stage_b_trains_and_writes_artifacts(trained):
    cfg, session, summary, root = trained
    run = root / "run"
    for name in ("stage_b", "stage_b-best"):
        assert (run / name / "COMPLETE").exists()
        assert (run / name / "lora" / "adapter_config.json").exists()
    recs = [json.loads(x) for x in (run / "stage_b.metrics.jsonl").read_text().splitlines()]
    phases = [r["phase"] for r in recs if "phase" in r]
    assert phases == ["bridge"] * 3 + ["lora"] * 3
    assert {"nll", "nll_ablated", "nll_mismatched", "bow", "loss"} <= set(recs[-1])
    assert {"nll_injected", "nll_ablated", "usage_gap", "nll_base_raw"} <= set(summary["dev_final"])


def test_base_decoder_weights_never_change(trained):
    cfg, session, _, root = trained
    model = load_llink(root / "run" / "stage_b", encoder=session.encoder)
    fresh = Session(cfg, progress=False).decoder.model.state_dict()
    base = model.lm.get_base_model().state_dict()
    for k, v in fresh.items():
        key = k if k in base else k.replace(".weight", ".base_layer.weight")
        if "embed_tokens" in k or "lm_head" in k:
            n = model.decoder.reserved.ids[0]
            torch.testing.assert_close(base[key][:n], v[:n], rtol=0, atol=0)
        else:
            torch.testing.assert_close(base[key], v, rtol=0, atol=0)


def test_artifact_round_trip_gives_identical_logits(trained):
    cfg, session, _, root = trained
    a = load_llink(root / "run" / "stage_b", encoder=session.encoder)
    b = load_llink(root / "run" / "stage_b", encoder=session.encoder)
    assert a.has_lora and b.has_lora
    torch.testing.assert_close(a.decoder.reserved_rows(), b.decoder.reserved_rows(), rtol=0,
                               atol=0)
    foreign = ["ខ្ញុំស្រឡាញ់គ្រួសាររបស់ខ្ញុំ។", "បើកម៉ឺនុយឯកសារ។"]
    enc = a.encode(foreign)
    prompt = torch.tensor([a.prompt_ids("translate_to_english")] * 2)
    with torch.no_grad():
        la = a.lm(inputs_embeds=a.embed(prompt, a.slots(enc))).logits
        lb = b.lm(inputs_embeds=b.embed(prompt, b.slots(enc))).logits
    torch.testing.assert_close(la, lb, rtol=0, atol=0)
    outs = a.generate(foreign, max_new_tokens=5)
    assert len(outs) == 2 and all(isinstance(o, str) for o in outs)


def test_mismatched_artifact_is_refused(trained, tmp_path):
    _, session, _, root = trained
    with pytest.raises(CheckpointError) as err:
        load_llink(root / "run" / "stage_b", encoder=session.encoder,
                   expect={"num_slots": 8, "decoder": "meta-llama/Llama-3.2-1B-Instruct"})
    assert "num_slots" in str(err.value) and "Llama-3.2" in str(err.value)
    with pytest.raises(CheckpointError, match="llink train stage-b"):
        load_llink(tmp_path / "nope")


def test_stage_b_resume_matches_uninterrupted(trained, tiny_encoder_dir, tiny_decoder_dir,
                                              monkeypatch):
    _, _, _, root = trained
    cfg = _b_cfg(root, tiny_encoder_dir, tiny_decoder_dir, root / "pairs.jsonl", run="cut")
    session = Session(cfg, progress=False)
    run_stage_a(session)
    import llink.train.stage_b as sb

    real = sb._step_loss
    calls = {"n": 0}

    def crash(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(sb, "_step_loss", crash)
    with pytest.raises(KeyboardInterrupt):
        run_stage_b(session)
    monkeypatch.setattr(sb, "_step_loss", real)
    run_stage_b(Session(cfg, progress=False), resume=True)
    full = load_llink(root / "run" / "stage_b", encoder=session.encoder)
    cut = load_llink(root / "cut" / "stage_b", encoder=session.encoder)
    for mod_full, mod_cut in ((full.bridge, cut.bridge), (full.lm, cut.lm)):
        sd_full, sd_cut = mod_full.state_dict(), mod_cut.state_dict()
        assert sd_full.keys() == sd_cut.keys()
        for k, v in sd_full.items():
            torch.testing.assert_close(v, sd_cut[k], rtol=0, atol=1e-6, msg=k)


def test_artifact_keeps_the_system_prompt(trained, tmp_path):
    from dataclasses import replace

    from llink.artifacts import save_llink
    from llink.checkpoints import load_json

    _, session, _, root = trained
    model = load_llink(root / "run" / "stage_b", encoder=session.encoder)
    assert model.fmt.system_prompt is None  # the default: the template's own system turn
    meta = load_json(root / "run" / "stage_b", "llink")
    model.fmt = replace(model.fmt, system_prompt="")
    save_llink(tmp_path / "short", model, meta)
    again = load_llink(tmp_path / "short", encoder=session.encoder)
    assert again.fmt.system_prompt == ""
    assert again.prompt_ids("translate_to_english") == model.prompt_ids("translate_to_english")


def test_frozen_projector_gives_the_same_slots_in_train_and_eval_mode(trained):
    _, session, _, root = trained
    model = load_llink(root / "run" / "stage_b", encoder=session.encoder)
    assert model.projector.net[2].p > 0  # the projector has dropout
    enc = model.encode(["ខ្ញុំស្រឡាញ់គ្រួសាររបស់ខ្ញុំ។", "បើកម៉ឺនុយឯកសារ។"])
    model.eval()
    with torch.no_grad():
        ref = model.project(enc)
    model.train()
    assert not model.projector.training and model.bridge.training
    with torch.no_grad():
        for _ in range(3):
            torch.testing.assert_close(model.project(enc), ref, rtol=0, atol=0)


def test_bag_of_words_targets_hold_content_tokens_only(trained):
    from llink.train.stage_b import bow_targets, content_token_mask

    _, session, _, root = trained
    model = load_llink(root / "run" / "stage_b", encoder=session.encoder)
    tok = model.tokenizer
    vocab = model.lm.get_output_embeddings().weight.shape[0]
    content = content_token_mask(tok, vocab)
    special = {*tok.all_special_ids, *model.decoder.reserved.ids}
    assert not any(bool(content[i]) for i in special)
    ids = tok(" Save the document", add_special_tokens=False)["input_ids"]
    labels = torch.tensor([[-100, *ids, tok.eos_token_id, model.slot_ids[0]]])
    hot = bow_targets(labels, content, vocab)[0].nonzero().flatten().tolist()
    assert hot and tok.eos_token_id not in hot and model.slot_ids[0] not in hot
    assert set(hot) <= set(ids)


def test_lora_gets_its_own_warmup_and_decay():
    from llink.config import StageBConfig
    from llink.train.stage_b import group_lr

    b = StageBConfig(steps=200, bridge_warmup_steps=100, warmup_frac=0.1, lr_lora=1e-4)
    lora, bridge = {"name": "lora", "base_lr": 1e-4}, {"name": "bridge", "base_lr": 1e-3}
    assert group_lr(lora, 99, b) == 0.0
    assert group_lr(lora, 100, b) == pytest.approx(1e-4 / 10)  # first step of its warm-up
    assert group_lr(lora, 109, b) == pytest.approx(1e-4)  # full rate after 10 of its 100 steps
    assert group_lr(lora, 199, b) == pytest.approx(1e-4 / 90)
    assert group_lr(bridge, 100, b) < 1e-3 * 0.6  # the bridge is half-way through its decay


def test_synthetic_rows_from_dev_or_test_are_refused(trained, tmp_path, capsys):
    from dataclasses import replace

    from llink.data.tasks import TaskExample, write_task_file
    from llink.workflows import stage_b_items

    cfg, _, _, root = trained
    session = Session(cfg, progress=False)
    test_pair, train_pair = session.splits.test[0], session.splits.train[0]
    rows = [TaskExample("translate_to_english", "ថ្មី " + train_pair.foreign, test_pair.en,
                        en=test_pair.en),
            TaskExample("translate_to_english", test_pair.foreign, "Some other answer."),
            TaskExample("translate_to_english", "ថ្មី " + train_pair.foreign, train_pair.en,
                        en=train_pair.en)]
    path = tmp_path / "synth.jsonl"
    write_task_file(path, rows)
    session.cfg = replace(cfg, stage_b=replace(cfg.stage_b, synthetic=str(path)))
    items = stage_b_items(session, "train")
    assert "refused 2 of 3 synthetic rows" in capsys.readouterr().out
    assert [x.foreign for x in items[-1:]] == ["ថ្មី " + train_pair.foreign]
    assert all(x.en != test_pair.en and x.foreign != test_pair.foreign for x in items)
