"""`llink report` and `llink logs` on a run folder with known logs and evaluation files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from llink.cli import main
from llink.reporting.logs import summarise_logs
from llink.reporting.plots import smooth
from llink.reporting.report import write_report
from llink.reporting.runs import load_run
from llink.storage.fileio import JsonFileError, read_jsonl


def _jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def make_run(root: Path, name: str = "run1", r1_scale: float = 1.0) -> Path:
    """A run folder as the training and evaluation commands write it, with known values."""
    run = root / name
    (run / "eval" / "gen").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({
        "model": {"encoder": "enc-x", "decoder": "dec-y", "num_slots": 8},
        "device": "cpu", "seed": 0}))
    (run / "versions.json").write_text(json.dumps({"llink": "0.1.0", "torch": "2.x"}))
    (run / "data.json").write_text(json.dumps({"splits": {"train": 80, "dev": 10, "test": 12}}))
    _jsonl(run / "stage_a.metrics.jsonl", [
        {"time": 1.0 * s, "step": s, "loss": 5.0 - s / 100, "nce": 4.9 - s / 100,
         "tau": 0.17 - s / 10000, "lr": 1e-3}
        | ({"dev_R@1": r1_scale * s / 1000, "dev_MRR": 0.5, "dev_mean_rank": 10 - s / 100}
           if s % 100 == 0 else {})
        for s in range(50, 501, 50)])
    _jsonl(run / "stage_b.metrics.jsonl",
           [{"time": 0.0, "step": 0, "dev_nll_injected": 5.0, "dev_nll_ablated": 5.1,
             "dev_usage_gap": 0.1, "dev_nll_base_raw": 4.8}]
           + [{"time": float(s), "step": s, "nll": 6 - s / 10, "nll_ablated": 6.0,
               "lr_bridge": 1e-3} for s in range(1, 31)]
           + [{"time": 31.0, "step": 30, "dev_nll_injected": 3.9, "dev_nll_ablated": 5.0,
               "dev_usage_gap": 1.1}])
    (run / "stage_b.summary.json").write_text(json.dumps({"train_seconds": 120.0}))
    (run / "eval" / "retrieval.json").write_text(json.dumps({"pool_size": 12, "rows": {
        "LLINK Stage A": {"R@1": 0.5, "R@5": 0.9, "R@10": 1.0, "MRR": 0.7, "mean_rank": 2.0}}}))
    (run / "eval" / "nll.json").write_text(json.dumps({
        "examples": 12, "nll_injected": 4.2, "nll_ablated": 5.5, "usage_gap": 1.3,
        "nll_base_raw": 5.2}))
    (run / "eval" / "nll-udhr-en-km.json").write_text(json.dumps({
        "examples": 7, "nll_injected": 3.25, "nll_ablated": 3.75, "usage_gap": 0.5,
        "nll_base_raw": 3.5}))
    (run / "eval" / "gen.json").write_text(json.dumps({
        "n": 12, "systems": {"llink": {"chrf": 30.5, "chrf_ci": [28.0, 33.0], "bleu": 5.0,
                                       "bleu_ci": [4.0, 6.0]},
                             "base": {"chrf": 12.25, "chrf_ci": [11.0, 13.5], "bleu": 0.5,
                                      "bleu_ci": [0.2, 0.8]}},
        "paired": [{"a": "llink", "b": "base", "metric": "chrf", "a_score": 30.5,
                    "b_score": 12.25, "delta": 18.25, "p_value": 0.001}]}))
    (run / "eval" / "judge.json").write_text(json.dumps({
        "judge": "judge-z", "prompt_version": "judge_v1", "comparisons": [
            {"a": "llink", "b": "base", "n": 10, "win": 6, "tie": 3, "loss": 1,
             "win_rate": 0.6, "win_rate_ci": [0.3, 0.85], "order_agreement": 0.7}]}))
    (run / "eval" / "tokens.json").write_text(json.dumps({
        "n": 12, "foreign": {"median": 110, "p90": 296}, "english": {"median": 12, "p90": 30},
        "slots": 10, "ratio_foreign_to_slots": {"median": 11.0, "p90": 29.6}}))
    (run / "eval" / "numbers.json").write_text(json.dumps({
        "n_with_numbers": 4, "systems": {"llink": {"fraction": 0.25, "hits": 1}}}))
    for system, out in (("llink", "Printing failed."), ("base", "I cannot read this.")):
        _jsonl(run / "eval" / "gen" / f"{system}.jsonl", [
            {"index": i, "source": f"ខ្មែរ {i}", "reference": f"ref <{i}>", "output": out}
            for i in range(3)])
    return run


def test_html_report_holds_every_table_and_plot(tmp_path):
    run = make_run(tmp_path)
    out = write_report(run)
    assert out == run / "report.html"
    text = out.read_text(encoding="utf-8")
    for heading in ("Training curves", "Retrieval (pool of 12", "Answer NLL per token",
                    "Generation quality (12", "Paired significance", "LLM judge",
                    "Token budget", "Numeric fidelity", "Example generations", "Data",
                    "Full configuration"):
        assert heading in text, heading
    # stage A, stage B, chrF/BLEU and judge figures, all embedded
    assert text.count("src='data:image/png;base64,") == 4
    assert "30.50" in text and "[28.00, 33.00]" in text  # chrF with its interval
    assert "ref &lt;1&gt;" in text  # example text is escaped
    assert "judge-z" in text and "0.700" in text
    assert "udhr-en-km" in text and "3.750" in text  # the out-of-domain answer NLL row
    assert not (run / "report_files").exists()  # nothing but the one file


def test_markdown_report_links_png_files(tmp_path):
    run = make_run(tmp_path)
    out = write_report(run, fmt="md")
    text = out.read_text(encoding="utf-8")
    links = [line for line in text.splitlines() if line.startswith("![")]
    assert len(links) == 4
    for line in links:
        rel = line.split("](")[1].rstrip(")")
        png = run / rel
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| llink | 30.50 | [28.00, 33.00] | 5.00 | [4.00, 6.00] |" in text


def test_report_names_missing_evaluations(tmp_path):
    run = make_run(tmp_path)
    for f in ("gen.json", "judge.json", "numbers.json"):
        (run / "eval" / f).unlink()
    text = write_report(run, fmt="md").read_text(encoding="utf-8")
    assert "`llink eval gen`" in text and "`llink eval judge`" in text
    assert "`llink eval numbers`" in text


def test_malformed_log_line_names_file_and_line(tmp_path):
    run = make_run(tmp_path)
    with (run / "stage_b.metrics.jsonl").open("a") as fh:
        fh.write("{not json\n")
    with pytest.raises(JsonFileError, match=r"stage_b\.metrics\.jsonl:33: not valid JSON"):
        load_run(run)
    assert main(["report", str(run)]) == 2


def test_report_of_missing_or_empty_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "is it a run folder" in capsys.readouterr().err


def test_logs_summary_csv_and_plots(tmp_path, capsys):
    a = make_run(tmp_path, "a", r1_scale=1.0)
    b = make_run(tmp_path, "b", r1_scale=0.5)
    (b / "stage_b.metrics.jsonl").unlink()
    res = summarise_logs([a, b], tmp_path / "out")
    rows = list(csv.DictReader((tmp_path / "out" / "summary.csv").open()))
    by = {(Path(r["run"]).name, r["stage"]): r for r in rows}
    assert set(by) == {("a", "stage_a"), ("b", "stage_a"), ("a", "stage_b")}
    assert float(by["a", "stage_a"]["best_dev_R@1"]) == pytest.approx(0.5)
    assert float(by["b", "stage_a"]["best_dev_R@1"]) == pytest.approx(0.25)
    assert float(by["a", "stage_a"]["best_dev_mean_rank"]) == pytest.approx(5.0)  # lower wins
    assert float(by["a", "stage_b"]["last_dev_usage_gap"]) == pytest.approx(1.1)
    assert int(by["a", "stage_b"]["steps"]) == 30
    records = list(csv.DictReader((tmp_path / "out" / "records.csv").open()))
    assert len(records) == 2 * 10 + 32
    names = {p.name for p in res["figures"]}
    assert {"stage_a_loss.png", "stage_a_dev_Rat1.png", "stage_b_nll.png"} <= names
    assert main(["logs", str(a), str(b), "--out", str(tmp_path / "cli")]) == 0
    assert "best_dev_R@1" in capsys.readouterr().out
    assert main(["logs", str(tmp_path / "cli")]) == 2  # holds no training log


def test_smooth_is_centred_and_keeps_length():
    assert smooth([1.0, 2.0, 3.0, 4.0, 5.0], window=3) == [1.5, 2.0, 3.0, 4.0, 4.5]
    flat = smooth([2.0] * 50)
    assert len(flat) == 50 and all(math.isclose(v, 2.0) for v in flat)


def test_read_jsonl_skips_blank_lines(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"step": 1}\n\n{"step": 2}\n')
    assert [r["step"] for r in read_jsonl(p)] == [1, 2]
