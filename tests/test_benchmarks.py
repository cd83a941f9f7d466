"""The benchmark runner's bookkeeping: summary table, merging, names (nothing is timed)."""

from __future__ import annotations

import pytest

from benchmarks.common import evenly_spaced, model_dir, pct, row, summary_markdown
from benchmarks.run import merge_summary, selected


def test_summary_markdown_writes_one_line_per_row_with_targets():
    summary = {
        "machine": "test cpu", "command": "python -m benchmarks.run", "date": "today",
        "minutes": 1.5, "notes": ["side by side"],
        "rows": [
            row("Stage A", "time per step", "10 ms", "5 s", 500.0, 100),
            row("prompt cost", "time to first token", "200 ms", "300 ms", 1.5, 3),
            row("memory", "peak RSS", "900 MiB", "—", None),
        ],
    }
    md = summary_markdown(summary).splitlines()
    assert md[0].startswith("| benchmark | figure | LLINK | baseline | ratio | target |")
    assert md[2] == "| Stage A | time per step | 10 ms | 5 s | 500.00x | ≥ 100x (met) |"
    assert md[3].endswith("| 1.50x | ≥ 3x (missed) |")
    assert md[4] == "| memory | peak RSS | 900 MiB | — | — | — |"
    assert "Machine: test cpu." in md and "- side by side" in md


def test_merge_summary_keeps_rows_of_benchmarks_not_rerun():
    previous = {
        "benchmarks": {"stage_a_cost": {"date": "old"}, "latency": {"date": "old"}},
        "rows": [{"source": "stage_a_cost", "figure": "a"}, {"source": "latency", "figure": "old"}],
    }
    merged = merge_summary(previous, {"latency": {"date": "new"}},
                           [{"source": "latency", "figure": "new"}], machine="m")
    assert [r["figure"] for r in merged["rows"]] == ["a", "new"]
    assert merged["benchmarks"] == {"stage_a_cost": {"date": "old"}, "latency": {"date": "new"}}
    assert merged["machine"] == "m"
    assert merge_summary(None, {"memory": {}}, [])["benchmarks"] == {"memory": {}}


def test_selected_keeps_fixed_order_and_rejects_unknown_names():
    assert selected(None)[0] == "stage_a_cost"
    assert selected("memory,prompt_cost") == ["prompt_cost", "memory"]
    with pytest.raises(SystemExit, match="unknown benchmark"):
        selected("prompt_cost,speed")


def test_model_dir_explains_how_to_get_a_model(tmp_path, monkeypatch):
    monkeypatch.setattr("benchmarks.common.DEFAULT_MODEL", tmp_path / "stage_b")
    with pytest.raises(SystemExit, match="bash scripts/main.sh"):
        model_dir(None)
    with pytest.raises(SystemExit, match="llink.json missing.*llink train stage-b"):
        model_dir(str(tmp_path))
    (tmp_path / "llink.json").write_text("{}")
    assert model_dir(str(tmp_path)) == str(tmp_path)


def test_sampling_helpers():
    assert evenly_spaced(list(range(10)), 5) == [0, 2, 4, 6, 8]
    assert evenly_spaced([1, 2], 5) == [1, 2]
    assert pct([5, 1, 4, 2, 3], 0.5) == 3 and pct([1, 2, 3], 0.9) == 3


def test_summary_markdown_names_each_command_of_a_merged_summary():
    summary = {
        "machine": "m", "command": "python -m benchmarks.run --only memory", "date": "d2",
        "minutes": 1.0, "rows": [],
        "benchmarks": {"latency": {"date": "d1", "command": "python -m benchmarks.run"},
                       "memory": {"date": "d2", "command": "python -m benchmarks.run --only memory"}},
    }
    md = summary_markdown(summary)
    assert "Command: `python -m benchmarks.run` (latency; d1)." in md
    assert "Command: `python -m benchmarks.run --only memory` (memory; d2)." in md
