"""`llink eval gen|tokens|numbers` end to end on tiny models (all four systems)."""

import dataclasses
import json
import shutil
from collections import Counter

import pytest
import torch
from sacrebleu.metrics import BLEU, CHRF

from llink.cli import main
from llink.method.literals import extract_literals
from llink.method.model import load_baseline, load_llink
from llink.workflows import (
    Session,
    evaluate_generation,
    evaluate_numbers,
    gen_items,
    run_baseline,
    run_stage_a,
    run_stage_b,
)

from .test_stage_a import make_pair_file
from .test_stage_b import _b_cfg

OVERRIDES = {"stage_b.steps": 4, "stage_b.bridge_warmup_steps": 2, "stage_b.eval_every": 4,
             "stage_b.save_every": 4}


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_encoder_dir, tiny_decoder_dir):
    root = tmp_path_factory.mktemp("evalgen")
    cfg = _b_cfg(root, tiny_encoder_dir, tiny_decoder_dir, make_pair_file(root), **OVERRIDES)
    session = Session(cfg, progress=False)
    run_stage_a(session)
    run_stage_b(session)
    run_baseline(session)
    return cfg, session, root


def test_gen_writes_outputs_scores_and_paired_tests(run):
    cfg, session, root = run
    systems = ["llink", "base", "baseline", "ablated"]
    res = evaluate_generation(session, systems, n=5, max_new_tokens=8, batch_size=2)
    ev = root / "run" / "eval"
    items = gen_items(session, 5)
    # what each system writes is what its model generates for the items, all at once
    foreign = [it.source for it in items]
    model = load_llink(root / "run" / "stage_b", encoder=session.encoder)
    expected = {"llink": model.generate(foreign, max_new_tokens=8),
                "base": model.generate_base(foreign, max_new_tokens=8),
                "baseline": load_baseline(root / "run" / "baseline").generate_raw(
                    foreign, max_new_tokens=8),
                "ablated": model.generate(foreign, max_new_tokens=8, ablate=True)}
    # (the systems answer differently, so the comparison tells them apart)
    assert expected["llink"] != expected["base"] and expected["llink"] != expected["ablated"]
    outputs = {}
    for name in systems:
        recs = [json.loads(x) for x in (ev / "gen" / f"{name}.jsonl").read_text().splitlines()]
        assert [r["index"] for r in recs] == list(range(5))
        assert [r["source"] for r in recs] == foreign
        outputs[name] = [r["output"] for r in recs]
        assert outputs[name] == expected[name], name
    saved = json.loads((ev / "gen.json").read_text())
    assert saved["n"] == 5 and list(saved["systems"]) == systems
    refs = [[it.reference for it in items]]
    for name, s in saved["systems"].items():  # sacrebleu's corpus scores of those outputs
        assert s["chrf"] == pytest.approx(CHRF().corpus_score(outputs[name], refs).score)
        assert s["bleu"] == pytest.approx(BLEU().corpus_score(outputs[name], refs).score)
        assert len(s["chrf_ci"]) == 2 and len(s["bleu_ci"]) == 2
        assert s["chrf_ci"][0] <= s["chrf_ci"][1] and s["bleu_ci"][0] <= s["bleu_ci"][1]
    assert len(saved["paired"]) == 2 * 6  # every pair of 4 systems, two metrics
    assert {"a", "b", "metric", "a_score", "b_score", "delta", "p_value"} <= set(saved["paired"][0])
    assert [(p["a"], p["b"]) for p in saved["paired"] if p["metric"] == "chrf"] == [
        (a, b) for i, a in enumerate(systems) for b in systems[i + 1:]]
    for p in saved["paired"]:
        scores = saved["systems"]
        assert p["a_score"] == pytest.approx(scores[p["a"]][p["metric"]])
        assert p["b_score"] == pytest.approx(scores[p["b"]][p["metric"]])
        assert p["delta"] == pytest.approx(p["a_score"] - p["b_score"])
    assert res["settings"]["max_new_tokens"] == 8
    for name in systems:  # how much each system's chrF depends on its input
        dep = saved["input_dependence"][name]
        assert dep["chrf"] == pytest.approx(saved["systems"][name]["chrf"])
        assert dep["margin"] == pytest.approx(dep["chrf"] - dep["chrf_other_references"])
    # the ablated prompt is the same for every item, so its output is too
    abl = [json.loads(x)["output"] for x in (ev / "gen" / "ablated.jsonl").read_text().splitlines()]
    assert len(set(abl)) == 1


def test_numbers_and_tokens_commands(run, capsys):
    cfg, session, root = run
    evaluate_generation(session, ["llink", "base"], n=5, max_new_tokens=3, batch_size=2)
    res = evaluate_numbers(session, ["llink", "base"])
    refs = [it.reference for it in gen_items(session, 5)]
    assert res["n"] == 5 and res["n_with_numbers"] == 5  # every tiny reference has "Item i"
    args = [f"{k}={v}" for k, v in {
        "model.encoder": cfg.model.encoder, "model.decoder": cfg.model.decoder,
        "model.num_slots": 4, "data.pairs": cfg.data.pairs, "data.sentence_like_only": False,
        "data.dev_fraction": 0.2, "data.test_fraction": 0.2, "data.max_train_pairs": None,
        "run_dir": cfg.run_dir}.items()]
    assert main(["eval", "tokens", "--quiet", *args]) == 0
    tok = json.loads((root / "run" / "eval" / "tokens.json").read_text())
    assert tok["slots"] == 6 and tok["decoder"] == cfg.model.decoder
    assert tok["n"] == len(gen_items(session)) and tok["english"]["median"] > 0
    assert main(["eval", "numbers", "--quiet", *args]) == 0
    num = json.loads((root / "run" / "eval" / "numbers.json").read_text())
    assert set(num["systems"]) >= {"llink", "base"} and len(refs) == 5
    assert main(["eval", "gen", "--systems", "llink,nope", *args]) == 2
    assert "unknown system" in capsys.readouterr().err


def test_retrained_model_in_the_same_folder_is_generated_again(run, capsys):
    from llink.method.model import load_llink, save_llink
    from llink.storage.checkpoints import load_json

    cfg, session, root = run
    ev = root / "run" / "eval"
    evaluate_generation(session, ["llink", "base"], n=4, max_new_tokens=3, batch_size=2)
    before = json.loads((ev / "gen" / "llink.settings.json").read_text())
    capsys.readouterr()
    evaluate_generation(session, ["llink", "base"], n=4, max_new_tokens=3, batch_size=2)
    assert "discarding" not in capsys.readouterr().out  # same model: outputs are reused
    # "retrain": the same folder now holds other weights
    folder = root / "run" / "stage_b"
    model = load_llink(folder, encoder=session.encoder)
    with torch.no_grad():
        model.bridge.expander.fc2.bias.add_(0.5)
    save_llink(folder, model, load_json(folder, "llink"))
    evaluate_generation(session, ["llink", "base"], n=4, max_new_tokens=3, batch_size=2)
    out = capsys.readouterr().out
    assert "llink.jsonl: saved outputs came from other settings or another model " \
           "(model_digest changed); discarding them" in out
    assert "base.jsonl" not in out  # the base decoder did not change
    after = json.loads((ev / "gen" / "llink.settings.json").read_text())
    assert after["model_digest"] != before["model_digest"]


def test_generation_items_are_a_sample_spread_over_the_split(run):
    cfg, session, root = run
    res = evaluate_generation(session, ["llink"], n=6, max_new_tokens=2, batch_size=3)
    groups = Counter(it.group for it in gen_items(session, 6))
    assert {g: r["n"] for g, r in res["by_source"].items()} == dict(groups)
    out = [json.loads(x)["output"]
           for x in (root / "run" / "eval" / "gen" / "llink.jsonl").read_text().splitlines()]
    for g, r in res["by_source"].items():  # each group scored on its own items only
        idx = [i for i, it in enumerate(gen_items(session, 6)) if it.group == g]
        refs = [[gen_items(session, 6)[i].reference for i in idx]]
        want = CHRF().corpus_score([out[i] for i in idx], refs).score
        assert r["systems"]["llink"]["chrf"] == pytest.approx(want)
    from llink.data.splits import unit_hash

    keys = [unit_hash(it.reference, cfg.data.split_salt + "/order") for it in gen_items(session)]
    assert keys == sorted(keys)  # hash order, not file order


def test_gen_on_a_separate_pair_file_writes_its_own_results(run, tiny_pairs_file):
    cfg, session, root = run
    res = evaluate_generation(session, ["llink"], max_new_tokens=2, batch_size=4,
                              pairs_file=str(tiny_pairs_file))
    ev = root / "run" / "eval"
    assert res["n"] == 8 and res["settings"]["split"] == str(tiny_pairs_file)
    assert (ev / "gen-pairs.json").exists() and (ev / "gen-pairs" / "llink.jsonl").exists()
    assert list(res["by_source"]) == ["test"]  # the tiny file's source field


def test_numbers_subset_keeps_only_references_with_numbers(run, monkeypatch):
    cfg, session, root = run
    import llink.workflows as wf

    real = wf.gen_items(session)
    # every other item loses its number, so the subset must choose
    mixed = [it if i % 2 == 0 else type(it)(it.index, it.source, "No digits here.", it.group)
             for i, it in enumerate(real)]
    monkeypatch.setattr(wf, "gen_items", lambda s, n=None: mixed[:n] if n else mixed)
    res = evaluate_generation(session, ["llink", "base"], n=3, max_new_tokens=2, batch_size=2,
                              numbers_only=True)
    want = [it for it in mixed if it.reference != "No digits here."][:3]
    ev = root / "run" / "eval"
    saved = [json.loads(x) for x in (ev / "gen-numbers" / "llink.jsonl").read_text().splitlines()]
    assert [r["index"] for r in saved] == [it.index for it in want]
    assert res["n"] == 3 and res["numbers"]["n_with_numbers"] == 3
    assert set(res["numbers"]["systems"]) == {"llink", "base"}
    assert (ev / "gen-numbers.json").exists()


def test_saved_outputs_follow_the_model_content_not_its_path(run, tmp_path, capsys):
    cfg, session, root = run
    evaluate_generation(session, ["llink"], n=3, max_new_tokens=2, batch_size=3)
    moved = tmp_path / "moved"
    shutil.copytree(root / "run", moved)  # same model files under another path
    capsys.readouterr()
    evaluate_generation(session, ["llink"], n=3, max_new_tokens=2, batch_size=3,
                        model_dir=moved / "stage_b")
    assert "discarding" not in capsys.readouterr().out


def test_literal_bias_reaches_llinks_generation_and_is_recorded(run, tmp_path):
    cfg, session, root = run
    biased = Session(dataclasses.replace(session.cfg, run_dir=str(tmp_path / "biased")),
                     progress=False)
    biased._encoder, biased._decoder, biased._splits = (session._encoder, session._decoder,
                                                        session._splits)
    model_dir = root / "run" / "stage_b"
    res = evaluate_generation(biased, ["llink"], n=6, max_new_tokens=6, batch_size=2,
                              model_dir=model_dir, literal_bias=50.0)
    assert res["settings"]["literal_bias"] == 50.0
    saved = [json.loads(x) for x in
             (tmp_path / "biased" / "eval" / "gen" / "llink.jsonl").read_text().splitlines()]
    foreign = [it.source for it in gen_items(session, 6)]
    assert any(extract_literals(t) for t in foreign)  # some items have literals to copy
    model = load_llink(model_dir, encoder=session.encoder)
    want = model.generate(foreign, max_new_tokens=6, literal_bias=50.0)
    assert [r["output"] for r in saved] == want
    assert want != model.generate(foreign, max_new_tokens=6)


def test_strict_generation_scores_accepted_answers(run, tmp_path):
    cfg, session, root = run
    from .conftest import KHMER_ENGLISH

    path = tmp_path / "everyday.jsonl"
    rows = [{"en": en, "foreign": km, "accept": [[en.split()[0].lower().strip(".,")]]}
            for en, km in KHMER_ENGLISH[:4]]
    rows[3].pop("accept")  # a pair without key words is generated, not scored
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    res = evaluate_generation(session, ["llink", "base"], max_new_tokens=6, batch_size=4,
                              pairs_file=str(path), strict=True)
    assert res["settings"]["strict"] is True and res["accepted"]["n"] == 3
    model = load_llink(root / "run" / "stage_b", encoder=session.encoder)
    foreign = [r["foreign"] for r in rows]
    want = model.generate(foreign, strict=True, max_new_tokens=6)
    strict_ids, _ = model.prompts_and_slots(foreign, strict=True)
    assert strict_ids != model.prompts_and_slots(foreign)[0]  # strict changes the prompt
    saved = [json.loads(x) for x in
             (root / "run" / "eval" / "gen-everyday" / "llink.jsonl").read_text().splitlines()]
    assert [r["output"] for r in saved] == want
    from llink.eval.accepted import is_accepted

    right = [i for i in range(3) if is_accepted(want[i], rows[i]["accept"])]
    assert res["accepted"]["systems"]["llink"]["items"] == right
