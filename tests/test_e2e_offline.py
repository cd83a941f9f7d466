"""End to end through the CLI on the real offline default models and a slice of the corpus.

Converts the offline models once into the user cache (~20 s the first time), then
runs the whole main job on a small slice: this is the README's quick start, shrunk.
"""

import json
import subprocess
import sys

import pytest

SLICE = [
    "data.max_train_pairs=300", "data.max_dev_pairs=32", "data.max_test_pairs=48",
    "stage_a.steps=300", "stage_a.eval_every=100", "stage_a.warmup_steps=30",
    "stage_a.batch_size=64", "stage_a.queue_size=512", "stage_a.queue_topk=32",
    "stage_b.steps=4", "stage_b.bridge_warmup_steps=2", "stage_b.micro_batch=4",
    "stage_b.eval_every=2", "stage_b.eval_pairs=8", "stage_b.max_answer_tokens=24",
    "eval.gen_n=8", "eval.max_new_tokens=12", "eval.ood_pairs=none",
]


def _llink(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "llink", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=900)


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    run = root / "run"
    proc = _llink("run", "--quiet", f"run_dir={run}", f"features_cache={root / 'features'}",
                  *SLICE)
    return proc, run


@pytest.mark.slow
def test_main_job_runs_and_reports(main_job):
    proc, run = main_job
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "Retrieval on 48 held-out pairs" in out
    assert "Stage B done" in out and "test NLL/token on" in out
    for folder in ("stage_a", "stage_b", "stage_b-best"):
        assert (run / folder / "COMPLETE").exists()
    retrieval = json.loads((run / "eval" / "retrieval.json").read_text())
    rows = retrieval["rows"]
    assert retrieval["pool_size"] == 48
    llink_row = next(v for k, v in rows.items() if k.startswith("LLINK Stage A"))
    native = next(v for k, v in rows.items() if k.startswith("decoder-native"))
    # 300 training pairs already put the projector far above the decoder reading Khmer
    assert llink_row["MRR"] > native["MRR"] + 0.1
    assert llink_row["R@10"] > 0.5
    nll = json.loads((run / "eval" / "nll.json").read_text())
    assert {"nll_injected", "nll_ablated", "nll_base_raw"} <= set(nll)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["stage_a"]["steps"] == 300
    # the main job ends with generation quality against the base decoder, and the report
    gen = json.loads((run / "eval" / "gen.json").read_text())
    assert gen["n"] == 8 and set(gen["systems"]) == {"llink", "base"}
    assert [(p["a"], p["b"]) for p in gen["paired"] if p["metric"] == "chrf"] == [
        ("llink", "base")]
    for name in ("tokens.json", "numbers.json", "gen/llink.jsonl", "gen/base.jsonl"):
        assert (run / "eval" / name).exists(), name
    # and the shipped everyday sentences, asked for the translation only, scored right/wrong
    everyday = json.loads((run / "eval" / "gen-everyday-en-km.json").read_text())
    assert everyday["settings"]["strict"] is True and everyday["accepted"]["n"] == 40
    assert set(everyday["accepted"]["systems"]) == {"llink", "base"}
    assert "right answers (every key word present) on 40 items" in out
    report = (run / "report.html").read_text(encoding="utf-8")
    assert "Generation quality (8 test sentences)" in report
    assert f"report: {run / 'report.html'}" in out
    # the model card, rewritten after the evaluations: real models, shipped corpus licences
    assert f"model card: {run / 'stage_b' / 'README.md'}" in out
    card = (run / "stage_b" / "README.md").read_text(encoding="utf-8")
    assert '- "HuggingFaceTB/SmolLM2-135M-Instruct"' in card and "# LLINK: Khmer (km)" in card
    assert "| LibreOffice help | 17,410 | MPL-2.0 |" in card
    assert "Translation to English, 8 test items" in card
    assert f"| {nll['nll_injected']:.3f} |" in card


def test_cli_reports_user_errors_without_traceback(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"en": "fine", "foreign": "ល្អ"}\n{"en": "broken"\n', encoding="utf-8")
    proc = _llink("data", "split", f"data.pairs={bad}")
    assert proc.returncode == 2
    assert f"{bad}:2: invalid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _llink("eval", "retrieval", f"run_dir={tmp_path / 'nothing'}", "--no-baselines")
    assert proc.returncode == 2 and "llink train stage-a" in proc.stderr
    proc = _llink("config", "show", "stage_a.stepz=3")
    assert proc.returncode == 2 and "unknown setting" in proc.stderr


@pytest.mark.slow
def test_inference_commands_on_the_real_artifact(main_job):
    proc, run = main_job
    assert proc.returncode == 0
    model = str(run / "stage_b")
    km = ["កំហុសបានកើតឡើងពេលបោះពុម្ព។", "មិនអាចតភ្ជាប់ ៖ SSL ត្រូវបានបិទ ។"]
    out = _llink("infer", "--model", model, "--compare", "--json", "--max-new-tokens", "6", *km)
    assert out.returncode == 0, out.stderr[-2000:]
    recs = [json.loads(x) for x in out.stdout.splitlines()]
    assert len(recs) == 2 and all(r["injected"] and r["ablated"] and r["base"] for r in recs)
    out = _llink("probe", "--model", model, "--top", "5", "--candidates", "error,print", km[0])
    assert out.returncode == 0 and "nearest vocab row" in out.stdout
    out = _llink("batch", "--model", model, *km)
    assert out.returncode == 0 and "pairwise cosine mean" in out.stdout
