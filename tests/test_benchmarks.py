"""The benchmark runner's bookkeeping: summary table, merging, names (nothing is timed)."""

from __future__ import annotations

import re

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


# --- the shared harness: every documented command line parses and reaches run() ---------
#: Command lines the README and the modules' docstrings show (placeholders filled in).
DOCUMENTED = [
    "benchmarks.run",
    "benchmarks.run --only latency",
    "benchmarks.run --quick",
    "benchmarks.run --model runs/quickstart/stage_b",
    "benchmarks.run --model DIR --only stage_a_cost,memory --quick --threads 2",
    "benchmarks.stage_b_cost",
    "benchmarks.stage_b_cost --micro-batch 8 --repeats 5",
    "benchmarks.cache_build --pairs 300 --procs 2 --threads 2",
    "benchmarks.latency --fixed-length --no-lora-merged",
    "benchmarks.latency --model DIR --n 32 --batch-sizes 1,8,32 --quick",
    "benchmarks.generation --model DIR --n 32 --repeats 1 --quick",
    "benchmarks.memory --model DIR --stage-a-steps 300 --stage-b-steps 4 --quick",
    "benchmarks.prompt_cost --model DIR --n 1425 --ttft 40 --quick",
    "benchmarks.serve_load --model DIR --concurrency 100 --rounds 3 --quick",
    "benchmarks.stage_a_cost --pairs 8000 --batch 128",
    "benchmarks.ttft --model runs/variants/default/stage_b",
    "benchmarks.serve_load --model DIR --requests 200 --clients 16 --concurrency 100 --rounds 3",
]
TIMED = ["generation", "latency", "memory", "prompt_cost", "serve_load", "stage_a_cost",
         "stage_b_cost", "ttft"]


def _module(name: str):
    import importlib

    return importlib.import_module(f"benchmarks.{name}")


def _usage(doc: str) -> list[str]:
    """The options of a docstring's ``python -m benchmarks.NAME [--opt VALUE] ...`` lines."""
    lines = doc.split("\n\n")
    line = " ".join(next(p for p in lines if "python -m benchmarks." in p).split())
    line = line.replace(" \\ ", " ")
    line = re.sub(r"\[,\w+\]", "", line)  # NAME[,NAME]: one name
    words = line.replace("[", " ").replace("]", " ").split()[3:]
    return ["2" if w == "N" else w for w in words]


@pytest.mark.parametrize("command", DOCUMENTED)
def test_documented_command_lines_parse(command):
    from benchmarks.common import parser_of

    name, *argv = command.split()
    parser_of(_module(name.split(".")[1])).parse_args(argv)


@pytest.mark.parametrize("name", [*TIMED, "run", "cache_build"])
def test_each_docstring_usage_line_parses(name):
    from benchmarks.common import parser_of

    mod = _module(name)
    assert parser_of(mod).parse_args(_usage(mod.__doc__))


@pytest.mark.parametrize("name", TIMED)
def test_options_given_reach_run_and_the_others_keep_their_settings(name, monkeypatch):
    """``python -m benchmarks.NAME``: the options given, and only those, go to run(); the
    settings that were not given stay the defaults (or the quick ones with --quick)."""
    from benchmarks import common
    from benchmarks.common import parser_of, settings

    mod = _module(name)
    calls = []
    monkeypatch.setattr(mod, "run", lambda model, quick, **kw: calls.append((model, quick, kw)))
    argv = _usage(mod.__doc__)
    if hasattr(mod, "main"):  # a main of its own (memory: its child processes too)
        mod.main(argv)
    else:
        common.main(mod.__name__, argv)
    args = vars(parser_of(mod).parse_args(argv))
    model, quick, given = calls[0]
    given.pop("threads", None)  # memory passes it on to its child processes
    assert model == args.get("model") and quick == args.get("quick", False)
    own = {k: v for k, v in args.items()
           if k not in ("model", "threads", "quick") and v is not None}
    assert given == own and given  # every usage line names at least one own option
    if hasattr(mod, "DEFAULT"):
        merged = settings(True, mod.QUICK, mod.DEFAULT, given)
        assert {k: merged[k] for k in given} == given
        assert {k: v for k, v in merged.items() if k not in given} == \
            {k: v for k, v in mod.QUICK.items() if k not in given}


def test_settings_put_given_options_over_quick_or_default():
    from benchmarks.common import settings

    quick, default = {"n": 8, "repeats": 1}, {"n": 32, "repeats": 3}
    assert settings(False, quick, default, {}) == default
    assert settings(True, quick, default, {"n": 4}) == {"n": 4, "repeats": 1}


def test_report_writes_both_files_and_prints_the_table(tmp_path, monkeypatch, capsys):
    import json

    from benchmarks import common

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    res = common.report("demo", {"x": 1}, lambda r: f"| x | {r['x']} |\n", quick=True)
    assert res == {"x": 1, "command": None}  # not started as python -m benchmarks.demo
    assert json.loads((tmp_path / "quick" / "demo.json").read_text()) == res
    assert (tmp_path / "quick" / "demo.md").read_text() == "| x | 1 |\n"
    assert "| x | 1 |" in capsys.readouterr().out


def test_results_record_the_command_that_measured_them(monkeypatch):
    from benchmarks.common import invoked_command

    monkeypatch.setattr("sys.argv", ["/x/benchmarks/ttft.py", "--n", "4", "--model", "a b"])
    assert invoked_command() == "python -m benchmarks.ttft --n 4 --model 'a b'"
    monkeypatch.setattr("sys.argv", ["/x/bin/pytest", "-q"])
    assert invoked_command() is None


def test_timed_returns_seconds_and_result():
    from benchmarks.common import median_seconds, timed

    seconds, out = timed(lambda: sum(range(1000)))
    assert out == 499500 and seconds >= 0
    assert median_seconds(lambda: None, 3) >= 0
