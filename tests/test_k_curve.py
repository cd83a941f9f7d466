"""The K-curve table: reads run folders, scores their generations together (nothing trained)."""

from __future__ import annotations

import json

from benchmarks.k_curve import curve_runs, markdown, measure

REFS = ["Open the file 3 times", "Save 2 pages", "Close the window now", "Print 10 copies"]


def _run(root, name, outs, dev=3.5, gap=1.0):
    run = root / name
    (run / "eval" / "gen").mkdir(parents=True)
    (run / "eval" / "gen-numbers").mkdir(parents=True)
    (run / "stage_b.summary.json").write_text(json.dumps(
        {"dev_final": {"nll_injected": dev, "usage_gap": gap}, "train_seconds": 480}))
    (run / "eval" / "nll.json").write_text(json.dumps(
        {"nll_injected": dev + 0.2, "usage_gap": gap, "examples": 256}))
    for pool in ("gen", "gen-numbers"):
        lines = [json.dumps({"index": i, "source": "x", "reference": r, "group": "g",
                             "output": o}) for i, (r, o) in enumerate(zip(REFS, outs, strict=True))]
        (run / "eval" / pool / "llink.jsonl").write_text("\n".join(lines) + "\n")
    return run


def test_k_curve_rows_by_source_and_k_with_numbers_and_p(tmp_path):
    _run(tmp_path, "tokens-k8", ["Open the file 3 times", "Save 2 pages", "Close", "Print 10"])
    _run(tmp_path, "pooled-k16", ["Open it", "Save pages", "Close the window", "Print copies"],
         dev=3.9, gap=0.8)
    _run(tmp_path, "pooled-k2", ["x", "y", "z", "w"], dev=4.1)
    _run(tmp_path, "pooled-k2-s2", ["x", "y", "z", "Print"], dev=4.0)
    (tmp_path / "a-k8").mkdir()  # Stage A folders are not rows
    assert [p.name for p in curve_runs(tmp_path)] == ["pooled-k2", "pooled-k2-s2", "pooled-k16",
                                                      "tokens-k8"]
    res = measure(tmp_path)
    rows = res["runs"]
    assert rows["tokens-k8"]["numbers_kept"] == 3 and rows["pooled-k16"]["numbers_kept"] == 0
    assert rows["pooled-k16"]["slot_tokens"] == 18 and rows["pooled-k16"]["test_gap"] == 0.8
    assert "udhr_gap" not in rows["pooled-k2"]  # not measured: shown as a dash
    assert rows["tokens-k8"]["chrf"] > rows["pooled-k16"]["chrf"] > rows["pooled-k2"]["chrf"]
    assert rows["tokens-k8"]["p_vs_reference"] is None
    assert 0 < rows["pooled-k2"]["p_vs_reference"] <= 0.5
    md = markdown(res).splitlines()
    body = [line for line in md if line.startswith("| pooled") or line.startswith("| tokens")]
    assert [line.split(" | ")[:3] for line in body] == [
        ["| pooled", "2", "default"], ["| pooled", "2", "2"], ["| pooled", "16", "default"],
        ["| tokens", "8", "default"]]
    assert rows["pooled-k2-s2"]["seed"] == 2 and rows["pooled-k2"]["seed"] is None
    assert "3/3" in body[3]  # the third reference has no number
    assert "– / –" in body[0]
