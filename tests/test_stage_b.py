"""Stage B on tiny models: learns, keeps base weights frozen, round-trips, resumes, checks."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from llink.method.model import load_llink
from llink.storage.checkpoints import CheckpointError, load_json
from llink.workflows import Session, run_stage_a, run_stage_b

from .conftest import KHMER_ENGLISH
from .reference import greedy_reference
from .test_stage_a import _cfg, make_pair_file, pair_file  # noqa: F401  (fixture re-export)


def _b_cfg(tmp_path, enc, dec, pairs, run="run", **over):
    items = {"stage_b.steps": 6, "stage_b.micro_batch": 4, "stage_b.bridge_warmup_steps": 3,
             "stage_b.eval_every": 3, "stage_b.save_every": 2, "stage_b.eval_pairs": 6,
             "stage_b.lora_r": 4, "stage_b.lora_alpha": 4, "stage_a.steps": 10,
             "stage_b.max_answer_tokens": 24}
    items.update(over)
    return _cfg(tmp_path, enc, dec, pairs, run=run, **items)


#: the shared run: 5 bridge-only steps, then 5 with LoRA at a rate the tiny model learns at
TRAINED = {"stage_b.steps": 10, "stage_b.bridge_warmup_steps": 5, "stage_b.eval_every": 5,
           "stage_b.lr_lora": 5e-3, "stage_b.snapshot_every": 3}


@pytest.fixture(scope="module")
def stage_b_probe():
    """What the shared run leaves in memory: filled by ``trained``."""
    return {}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_encoder_dir, tiny_decoder_dir, stage_b_probe):
    """One Stage A + Stage B run shared by the tests of this module.

    ``stage_b_probe`` keeps the trained model as it is in memory, its dev examples, the
    LoRA weights at the start of every step and the steps whose backward reached LoRA.
    """
    import llink.train.stage_b as sb
    import llink.workflows as wf

    root = tmp_path_factory.mktemp("stage_b")
    cfg = _b_cfg(root, tiny_encoder_dir, tiny_decoder_dir, make_pair_file(root), **TRAINED)
    session = Session(cfg, progress=False)
    run_stage_a(session)
    probe = stage_b_probe
    probe.update(lora_at={}, lora_grad_steps=set(), hooked=set())
    real_train, real_step = wf.train_stage_b, sb._step_loss

    def train(cfg, model, train, dev, meta, **kw):
        probe.update(model=model, dev=dev)
        return real_train(cfg, model, train, dev, meta, **kw)

    def step_loss(model, b, batch, enc, teacher, content, vocab, step, tokens=None):
        lora = {n: p for n, p in model.lm.named_parameters() if "lora_" in n}
        for n, prm in lora.items():  # a hook can only watch a tensor that takes gradients
            if prm.requires_grad and n not in probe["hooked"]:
                probe["hooked"].add(n)
                prm.register_post_accumulate_grad_hook(
                    lambda _p: probe["lora_grad_steps"].add(probe["step"]))
        probe["step"] = step
        probe["lora_at"][step] = {n: prm.detach().clone() for n, prm in lora.items()}
        return real_step(model, b, batch, enc, teacher, content, vocab, step, tokens=tokens)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(wf, "train_stage_b", train)
        mp.setattr(sb, "_step_loss", step_loss)
        summary = run_stage_b(session)
    return cfg, session, summary, root



@pytest.fixture(scope="module")
def model_dir(trained):
    """The folder of the shared run's final model."""
    return trained[3] / "run" / "stage_b"


@pytest.fixture(scope="module")
def model(model_dir, trained):
    """The shared run's model loaded back (adapters kept), with the session's encoder."""
    from llink import LLINK

    return LLINK.from_pretrained(str(model_dir), encoder=trained[1].encoder)

def _records(run):
    return [json.loads(x) for x in (run / "stage_b.metrics.jsonl").read_text().splitlines()]


def test_stage_b_trains_and_writes_artifacts(trained):
    cfg, session, summary, root = trained
    run = root / "run"
    for name in ("stage_b", "stage_b-best"):
        assert (run / name / "COMPLETE").exists()
        assert (run / name / "lora" / "adapter_config.json").exists()
    recs = _records(run)
    phases = [r["phase"] for r in recs if "phase" in r]
    assert phases == ["bridge"] * 5 + ["lora"] * 5
    assert {"nll", "nll_ablated", "nll_mismatched", "bow", "loss"} <= set(recs[-1])
    assert {"nll_injected", "nll_ablated", "usage_gap", "nll_base_raw"} <= set(summary["dev_final"])


def test_snapshots_keep_the_model_of_their_step(trained, stage_b_probe):
    """``snapshot_every=3`` keeps the models after steps 3, 6 and 9 (10 is the final one);
    each loads back with the LoRA weights the run had then."""
    from llink import LLINK

    _, session, _, root = trained
    run = root / "run"
    assert sorted(p.name for p in run.glob("stage_b-step*")) == [
        "stage_b-step3", "stage_b-step6", "stage_b-step9"]
    for step in (6, 9):  # LoRA trains from step 5 on: these differ
        folder = run / f"stage_b-step{step}"
        assert json.loads((folder / "llink.json").read_text())["step"] == step
        kept = LLINK.from_pretrained(str(folder), encoder=session.encoder)
        lora = {n: p for n, p in kept.lm.named_parameters() if "lora_" in n}
        want = stage_b_probe["lora_at"][step]  # the weights at the start of step `step`
        assert lora.keys() == want.keys()
        assert all(torch.equal(lora[n], want[n]) for n in want)
    assert not all(torch.equal(stage_b_probe["lora_at"][6][n], stage_b_probe["lora_at"][9][n])
                   for n in stage_b_probe["lora_at"][9])


def test_stage_b_learns_to_read_the_slots(trained):
    """Dev NLL with the slots falls and ends below the NLL with the slots ablated."""
    _, _, summary, root = trained
    dev = {r["step"]: r for r in _records(root / "run") if "dev_nll_injected" in r}
    assert sorted(dev) == [0, 5, 10]
    inj = {s: r["dev_nll_injected"] for s, r in dev.items()}
    abl = {s: r["dev_nll_ablated"] for s, r in dev.items()}
    # bridge-only warm-up: nothing the ablated pass reads has trained, the slots have
    assert abl[5] == pytest.approx(abl[0], abs=1e-6)
    assert inj[5] < inj[0] - 0.005
    # with LoRA: lower still, and the slots still count
    assert inj[10] < inj[5] - 0.02 and inj[10] < inj[0] - 0.05
    assert inj[10] < abl[10] - 0.01
    final = summary["dev_final"]
    assert final["nll_injected"] == pytest.approx(inj[10], abs=1e-6)
    assert final["usage_gap"] == pytest.approx(abl[10] - inj[10], abs=1e-6)
    assert summary["dev_start"]["nll_injected"] == pytest.approx(inj[0], abs=1e-6)


def test_lora_stays_frozen_during_the_bridge_warmup(trained, stage_b_probe):
    probe = stage_b_probe
    at = probe["lora_at"]
    assert sorted(at) == list(range(10))
    start = at[0]
    assert start and any("lora_B" in n for n in start)
    for step in range(1, 6):  # the weights at the start of step 5: after the 5 warm-up steps
        for n, v in at[step].items():
            assert torch.equal(v, start[n]), (step, n)
    assert probe["lora_grad_steps"] == set(range(5, 10))  # no gradient reached it before
    final = {n: p.detach() for n, p in probe["model"].lm.named_parameters() if "lora_" in n}
    assert any(not torch.equal(final[n], start[n]) for n in start if "lora_B" in n)

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


def test_artifact_round_trip_gives_identical_logits(trained, stage_b_probe):
    """The trained model as it was in memory and its reload compute the same logits."""
    cfg, session, _, root = trained
    mem = stage_b_probe["model"].eval()
    back = load_llink(root / "run" / "stage_b", encoder=session.encoder)
    assert mem.has_lora and back.has_lora
    torch.testing.assert_close(back.decoder.reserved_rows(), mem.decoder.reserved_rows(),
                               rtol=0, atol=0)
    foreign = ["ខ្ញុំស្រឡាញ់គ្រួសាររបស់ខ្ញុំ។", "បើកម៉ឺនុយឯកសារ។"]
    enc = mem.encode(foreign)
    prompt = torch.tensor([mem.prompt_ids("translate_to_english")] * 2)
    assert back.prompt_ids("translate_to_english") == prompt[0].tolist()
    with torch.no_grad():
        slots = mem.slots(enc)
        torch.testing.assert_close(back.slots(enc), slots, rtol=0, atol=0)
        la = mem.lm(inputs_embeds=mem.embed(prompt, slots)).logits
        lb = back.lm(inputs_embeds=back.embed(prompt, back.slots(enc))).logits
        base = back.lm(inputs_embeds=back.embed(prompt, None)).logits
    torch.testing.assert_close(lb, la, rtol=0, atol=0)
    assert not torch.allclose(base, la, atol=1e-4)  # the slots, and what reads them, count
    # and both generate the greedy decoding written out by hand
    outs = back.generate(foreign, max_new_tokens=6)
    assert outs == mem.generate(foreign, max_new_tokens=6)
    assert outs == greedy_reference(back, prompt.tolist(), back.slots(enc), max_new_tokens=6)


def test_mismatched_artifact_is_refused(trained, tmp_path):
    _, session, _, root = trained
    with pytest.raises(CheckpointError) as err:
        load_llink(root / "run" / "stage_b", encoder=session.encoder,
                   expect={"num_slots": 8, "decoder": "meta-llama/Llama-3.2-1B-Instruct"})
    assert "num_slots" in str(err.value) and "Llama-3.2" in str(err.value)
    with pytest.raises(CheckpointError, match="llink train stage-b"):
        load_llink(tmp_path / "nope")


def other_model(src, kind, **config):
    """The Hugging Face model of folder ``src`` with other weights, or, given ``config``
    changes, a freshly initialised model of another shape."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    auto = AutoModel if kind == "encoder" else AutoModelForCausalLM
    if config:
        cfg = AutoConfig.from_pretrained(src)
        for k, v in config.items():
            setattr(cfg, k, v)
        torch.manual_seed(1)
        return auto.from_config(cfg)
    model = auto.from_pretrained(src)
    with torch.no_grad():
        for prm in model.parameters():
            prm.mul_(1.1)
    return model


def other_decoder(src, dst, num_slots=4, **config):
    """A decoder folder like ``src`` (same tokenizer) with other weights or shape, loaded."""
    from llink.backbones.decoder import FrozenDecoder

    shutil.copytree(src, dst, dirs_exist_ok=True)
    other_model(src, "decoder", **config).save_pretrained(dst)
    return FrozenDecoder.from_pretrained(str(dst), num_slots=num_slots)


def refused_keys(err) -> set[str]:
    """The settings a CheckpointError says differ ("key: checkpoint has ..., this run has")."""
    return set(re.findall(r"(\w+): checkpoint has", str(err.value)))


@pytest.mark.parametrize(("case", "keys"), [
    ("encoder weights", {"encoder_weights"}),
    ("encoder dimension", {"d_enc", "encoder_weights"}),
    ("decoder weights", {"decoder_weights"}),
    ("decoder dimension", {"d_dec", "decoder_weights"}),
    ("number of slots", {"num_slots"}),
])
def test_loading_onto_other_frozen_models_is_refused(trained, tiny_encoder_dir, tiny_decoder_dir,
                                                     tmp_path, case, keys):
    from llink.backbones.decoder import FrozenDecoder
    from llink.backbones.encoder import FrozenEncoder

    _, session, _, root = trained
    enc, dec = session.encoder, None
    if case.startswith("encoder"):  # the same tokenizer, other weights or width
        shape = {"hidden_size": 48, "intermediate_size": 96} if "dimension" in case else {}
        enc = FrozenEncoder(other_model(tiny_encoder_dir, "encoder", **shape), enc.tokenizer,
                            name=enc.name)
    elif case == "decoder weights":
        dec = other_decoder(tiny_decoder_dir, tmp_path)
    elif case == "decoder dimension":
        dec = other_decoder(tiny_decoder_dir, tmp_path, hidden_size=32, intermediate_size=64)
    else:
        dec = FrozenDecoder.from_pretrained(str(tiny_decoder_dir), num_slots=8)
    with pytest.raises(CheckpointError, match="differ from those the artifact was trained") as err:
        load_llink(root / "run" / "stage_b", encoder=enc, decoder=dec)
    assert refused_keys(err) == keys
    # the frozen models it was trained with still load it
    if dec is not None:
        dec = FrozenDecoder.from_pretrained(str(tiny_decoder_dir), num_slots=4)
    assert load_llink(root / "run" / "stage_b", encoder=session.encoder, decoder=dec).has_lora


def test_an_artifact_of_another_format_version_is_refused(trained, tmp_path):
    _, session, _, root = trained
    copy = tmp_path / "stage_b"
    shutil.copytree(root / "run" / "stage_b", copy)
    meta = json.loads((copy / "llink.json").read_text())
    (copy / "llink.json").write_text(json.dumps({**meta, "format": meta["format"] + 1}))
    with pytest.raises(CheckpointError, match=f"format {meta['format'] + 1}, need "
                                              f"{meta['format']}"):
        load_llink(copy, encoder=session.encoder)


def test_stage_b_resume_matches_uninterrupted(trained, tiny_encoder_dir, tiny_decoder_dir,
                                              monkeypatch, capsys):
    _, _, _, root = trained
    cfg = _b_cfg(root, tiny_encoder_dir, tiny_decoder_dir, root / "pairs.jsonl", run="cut",
                 **TRAINED)
    session = Session(cfg, progress=False)
    run_stage_a(session)
    import llink.train.stage_b as sb

    real = sb._step_loss
    steps = []

    def crash(*a, **k):
        steps.append(a[7])
        if len(steps) == 5:  # in step 5, after the checkpoint of step 4
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(sb, "_step_loss", crash)
    with pytest.raises(KeyboardInterrupt):
        run_stage_b(session)
    assert load_json(root / "cut" / "stage_b-state", "state")["step"] == 4
    # training reseeds every step, so a restart from 0 would end with the same weights:
    # the resumed run must take the steps after the checkpoint, and those only
    steps.clear()
    monkeypatch.setattr(sb, "_step_loss", lambda *a, **k: (steps.append(a[7]), real(*a, **k))[1])
    capsys.readouterr()
    run_stage_b(Session(cfg, progress=False), resume=True)
    monkeypatch.setattr(sb, "_step_loss", real)
    assert steps == list(range(4, 10))
    assert "resuming Stage B from step 4" in capsys.readouterr().out
    assert [r["step"] for r in _records(root / "cut") if "phase" in r] == list(range(1, 11))
    full = load_llink(root / "run" / "stage_b", encoder=session.encoder)
    cut = load_llink(root / "cut" / "stage_b", encoder=session.encoder)
    for mod_full, mod_cut in ((full.bridge, cut.bridge), (full.lm, cut.lm)):
        sd_full, sd_cut = mod_full.state_dict(), mod_cut.state_dict()
        assert sd_full.keys() == sd_cut.keys()
        for k, v in sd_full.items():
            torch.testing.assert_close(v, sd_cut[k], rtol=0, atol=1e-6, msg=k)


def test_best_checkpoint_holds_the_lowest_dev_nll(trained, tiny_encoder_dir, tiny_decoder_dir,
                                                 tmp_path, monkeypatch):
    """``stage_b-best`` is the model of the evaluation with the lowest dev NLL, not the last.

    The dev NLL reported at steps 1, 3 and 4 is raised by 1 so that step 2 is the best
    whatever the tiny run does; the folder must then hold the step-2 model, whose real
    dev NLL is the one logged at step 2."""
    import llink.train.stage_b as sb
    import llink.workflows as wf

    _, _, _, root = trained
    (tmp_path / "best").mkdir()
    shutil.copytree(root / "run" / "stage_a", tmp_path / "best" / "stage_a")
    cfg = _b_cfg(tmp_path, tiny_encoder_dir, tiny_decoder_dir, root / "pairs.jsonl",
                 run="best", **{"stage_b.steps": 4, "stage_b.bridge_warmup_steps": 2,
                                "stage_b.eval_every": 1, "stage_b.save_every": 100,
                                "stage_b.lr_lora": 5e-3})
    real_eval, real_train = sb.evaluate_nll, wf.train_stage_b
    seen = {"evals": 0}

    def evaluate(model, data, batch_size=8, with_base=False):
        out = real_eval(model, data, batch_size, with_base)
        if not with_base:  # an evaluation inside the training loop
            seen["evals"] += 1
            if seen["evals"] != 2:
                out["nll_injected"] += 1.0
        return out

    def train(cfg, model, train, dev, meta, **kw):
        seen.update(model=model, dev=dev)
        return real_train(cfg, model, train, dev, meta, **kw)

    monkeypatch.setattr(sb, "evaluate_nll", evaluate)
    monkeypatch.setattr(wf, "train_stage_b", train)
    summary = run_stage_b(Session(cfg, progress=False))
    monkeypatch.setattr(sb, "evaluate_nll", real_eval)
    logged = {r["step"]: r["dev_nll_injected"] for r in _records(tmp_path / "best")
              if "phase" in r}
    assert sorted(logged) == [1, 2, 3, 4] and min(logged, key=logged.get) == 2
    assert summary["dev_best"]["step"] == 2
    meta = load_json(tmp_path / "best" / "stage_b-best", "llink")
    assert meta["step"] == 2 and meta["dev"]["nll_injected"] == pytest.approx(logged[2])
    best = load_llink(tmp_path / "best" / "stage_b-best", encoder=seen["model"].encoder)
    again = real_eval(best, seen["dev"], cfg.stage_b.micro_batch)["nll_injected"]
    assert again == pytest.approx(logged[2], abs=1e-5)
    final = real_eval(seen["model"], seen["dev"], cfg.stage_b.micro_batch)["nll_injected"]
    assert final == pytest.approx(logged[4] - 1.0, abs=1e-5)
    assert abs(final - again) > 1e-4  # the folder holds another model than the last one


def test_artifact_keeps_the_system_prompt(trained, tmp_path):
    from dataclasses import replace

    from llink.method.model import save_llink

    _, session, _, root = trained
    model = load_llink(root / "run" / "stage_b", encoder=session.encoder)
    assert model.fmt.system_prompt is None  # the default: the template's own system turn
    meta = load_json(root / "run" / "stage_b", "llink")
    model.fmt = replace(model.fmt, system_prompt="")
    save_llink(tmp_path / "short", model, meta)
    again = load_llink(tmp_path / "short", encoder=session.encoder)
    assert again.fmt.system_prompt == ""
    assert again.prompt_ids("translate_to_english") == model.prompt_ids("translate_to_english")
    # the foreign-last order travels with the artifact too, and only what follows the
    # template is left to prefill per request
    model.fmt = replace(model.fmt, foreign_last=True)
    save_llink(tmp_path / "last", model, meta)
    last = load_llink(tmp_path / "last", encoder=session.encoder)
    assert last.fmt.foreign_last and not again.fmt.foreign_last
    ids = last.prompt_ids("translate_to_english")
    assert ids == model.prompt_ids("translate_to_english")
    tail = len(ids) - len(last.template_ids("translate_to_english"))
    assert tail < len(ids) - len(again.template_ids("translate_to_english"))


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


def test_nll_on_a_pair_file_uses_its_pairs_and_writes_its_own_file(trained, tmp_path):
    """`llink eval nll --pairs FILE`: the NLL gap on an out-of-domain set, beside the test
    split's (its own output file; foreign texts outside 12-256 characters are left out)."""
    from llink.data.pairs import Pair, write_pairs
    from llink.workflows import evaluate_nll_on_test

    cfg, session, _, _ = trained
    pairs = [Pair(en, km) for en, km in KHMER_ENGLISH[:5]] + [Pair("Too short.", "ខ្លី")]
    path = tmp_path / "ood-set.jsonl"
    write_pairs(path, pairs)
    m = evaluate_nll_on_test(session, pairs_file=str(path), limit=None)
    kept = sum(12 <= len(p.foreign) <= 256 for p in pairs)
    assert m["examples"] == kept < len(pairs)
    saved = json.loads((Path(cfg.run_dir) / "eval" / "nll-ood-set.json").read_text())
    assert saved["examples"] == kept and str(path) in saved["items"]


def test_english_read_through_the_encoder_gets_no_literals_line(model, monkeypatch):
    """An English stand-in is all Latin words: a Literals line would spell its answer."""
    from llink.data.tasks import ENGLISH_SOURCE, TaskExample
    from llink.train.stage_b import tokenize_examples

    monkeypatch.setattr(model, "literals", True)
    items = [TaskExample("translate_to_english", "បោះពុម្ព ១០ ច្បាប់", "Print 10 copies."),
             TaskExample("translate_to_english", "Print 10 copies.", "Print 10 copies.",
                         en="Print 10 copies.", source=ENGLISH_SOURCE)]
    khmer, english = (model.tokenizer.decode(ex.input_ids)
                      for ex in tokenize_examples(model, items, 24))
    assert "Literals: 10" in khmer
    assert "Literals" not in english and "Print 10 copies." in english  # only as the answer
    assert english.count("Print 10 copies.") == 1


def test_english_examples_take_their_own_count_of_the_english_pool(tmp_path, tiny_encoder_dir,
                                                                   tiny_decoder_dir):
    """stage_b.english_examples is not capped by data.max_english (Stage A's pool), takes
    the same hash order, and never an English sentence of dev or test."""
    import gzip

    from llink.data.english import read_english
    from llink.data.tasks import ENGLISH_SOURCE
    from llink.workflows import stage_b_items

    pairs = make_pair_file(tmp_path)
    session = Session(_b_cfg(tmp_path, tiny_encoder_dir, tiny_decoder_dir, pairs), progress=False)
    held = [p.en for p in (*session.splits.dev, *session.splits.test)]
    english = tmp_path / "english.txt.gz"
    lines = [f"The river number {i} runs through the old town." for i in range(30)] + held[:3]
    with gzip.open(english, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    cfg = _b_cfg(tmp_path, tiny_encoder_dir, tiny_decoder_dir, pairs,
                 **{"data.english": str(english), "data.max_english": 5,
                    "stage_b.english_examples": 12})
    session = Session(cfg, progress=False)
    got = [x for x in stage_b_items(session, "train") if x.source == ENGLISH_SOURCE]
    assert len(got) == 12 and all(x.foreign == x.answer == x.en for x in got)
    assert not {x.en for x in got} & set(held)
    stage_a_pool = read_english(cfg.data, [*session.splits.dev, *session.splits.test])
    assert len(stage_a_pool) == 5 and [x.en for x in got[:5]] == stage_a_pool
    assert not [x for x in stage_b_items(session, "dev") if x.source == ENGLISH_SOURCE]
