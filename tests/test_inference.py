"""Inference API and the infer/probe/batch commands, on a tiny trained LLINK model."""

import json

import pytest
import torch

from llink.cli import main
from llink.inference.diagnostics import (
    WARN_UNUSED,
    InputError,
    batch_diversity,
    check_inputs,
    compare,
    lexeme_probe,
)
from llink.method.inject import UnknownTaskError

from .reference import greedy_reference
from .test_stage_b import (  # noqa: F401  (module fixtures: a tiny trained model)
    model,
    model_dir,
    stage_b_probe,
    trained,
)

KM = ["ខ្ញុំស្រឡាញ់គ្រួសាររបស់ខ្ញុំ។", "បើកម៉ឺនុយឯកសារ។", "បញ្ចូលស្លាយថ្មី។"]


def test_batched_generation_equals_one_at_a_time(model):
    batched = model.generate(KM, max_new_tokens=8)
    single = [model.generate([t], max_new_tokens=8)[0] for t in KM]
    assert batched == single
    assert model.generate(KM, max_new_tokens=8) == batched  # deterministic
    base = model.generate_base(KM, max_new_tokens=4)
    with model.adapters_disabled():  # the base decoder: no LoRA, no slots, the raw text
        prompts = [model.prompt_ids("translate_to_english", foreign_text=t) for t in KM]
        assert base == greedy_reference(model, prompts, max_new_tokens=4)
    enc = model.encode(KM)
    prompts = [model.prompt_ids("translate_to_english")] * 3
    with torch.no_grad():
        assert batched == greedy_reference(model, prompts, model.slots(enc), max_new_tokens=8)
    assert model.encode(KM).shape == (3, model.encoder.dim)


def test_compare_reports_unused_slots(model):
    out = compare(model, KM[:2], max_new_tokens=6)
    assert all(c.ablated is not None and c.base is not None for c in out)
    for c in out:
        assert (WARN_UNUSED in c.warnings) == (c.injected == c.ablated)
    # a gate boost of 0 with the same model is still a valid run
    assert len(compare(model, KM[:1], gate_boost=0.0, with_diagnostics=False)) == 1


def test_input_checks():
    with pytest.raises(InputError, match="empty"):
        check_inputs(["  "], 256, "translate_to_english")
    with pytest.raises(UnknownTaskError, match="translate_to_english"):
        check_inputs(["ក"], 256, "translate")
    warnings = check_inputs(["ក" * 300, "Hello there, plain English"], 256,
                            "translate_to_english")
    assert any("first 256" in w for w in warnings)
    assert any("Latin script" in w for w in warnings)


def test_probe_and_batch(model):
    rep = lexeme_probe(model, KM[0], candidates=["family", "love"], top=5)
    assert len(rep["nearest_vocab"]) == 5 and len(rep["next_tokens_injected"]) == 5
    assert {c["word"] for c in rep["candidates"]} == {"family", "love"}
    assert len(rep["slot_norms"]) == model.num_slots
    div = batch_diversity(model, KM)
    with torch.no_grad():  # by hand: the three projected vectors and their three pairs
        proj = model.project(model.encode(KM))
    cos = [float(torch.cosine_similarity(proj[i], proj[j], dim=0))
           for i, j in ((0, 1), (0, 2), (1, 2))]
    assert div["mean_cosine"] == pytest.approx(sum(cos) / 3, abs=1e-5)
    assert div["max_cosine"] == pytest.approx(max(cos), abs=1e-5)
    assert div["norms"] == pytest.approx(proj.norm(dim=-1).tolist(), rel=1e-5)
    mean = sum(cos) / 3
    want = "collapsed" if mean > 0.95 else "some inputs" if max(cos) > 0.98 else "diverse"
    assert div["verdict"].startswith(want)
    same = batch_diversity(model, [KM[0], KM[0]])
    assert same["max_cosine"] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(InputError):
        batch_diversity(model, KM[:1])


def test_cli_commands(model_dir, capsys):
    assert main(["infer", "--model", str(model_dir), "--max-new-tokens", "4", "--json",
                 "--compare", KM[0]]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"text", "injected", "ablated", "base", "warnings"} <= set(rec)
    assert main(["probe", "--model", str(model_dir), "--top", "3", "--candidates", "file",
                 KM[1]]) == 0
    assert "nearest vocab row" in capsys.readouterr().out
    assert main(["batch", "--model", str(model_dir), *KM]) == 0
    assert "pairwise cosine mean" in capsys.readouterr().out


def test_cli_bad_inputs(model_dir, tmp_path, capsys):
    assert main(["infer", "--model", str(model_dir), "   "]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["infer", "--model", str(model_dir), "--task", "poem", KM[0]]) == 2
    assert "valid tasks" in capsys.readouterr().err
    assert main(["infer", "--model", str(tmp_path / "none"), KM[0]]) == 2
    assert "llink train stage-b" in capsys.readouterr().err
    texts = tmp_path / "in.txt"
    texts.write_text(KM[0] + "\n\n" + KM[1] + "\n", encoding="utf-8")
    assert main(["infer", "--model", str(model_dir), "--max-new-tokens", "2", "--file",
                 str(texts)]) == 0
    assert capsys.readouterr().out.count("> ") == 2


def test_gate_boost_changes_slots(model):
    enc = model.encode(KM[:1])
    with torch.no_grad():
        a, b = model.slots(enc, gate_boost=1.0), model.slots(enc, gate_boost=3.0)
    assert not torch.equal(a, b)
