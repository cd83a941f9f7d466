"""The trainers' shared skeleton (llink.train.trainer) on a toy model: saves, resumes, reseeds."""

from __future__ import annotations

import json

import torch

from llink.config import load_config
from llink.train.trainer import BestDev, TrainingRun, step_seed


def _run(tmp_path, **over):
    items = {"run_dir": tmp_path / "run", "stage_a.save_every": 2, "stage_a.eval_every": 3,
             **over}
    cfg = load_config(None, [f"{k}={v}" for k, v in items.items()])
    return cfg, TrainingRun(cfg, "toy", "the toy", cfg.stage_a, {"steps", "save_every"},
                            progress=False)


def _train(tmp_path, steps, resume=False):
    cfg, run = _run(tmp_path, **{"stage_a.steps": steps})
    lin = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    saved = run.begin(opt, resume)
    if saved is not None:
        lin.load_state_dict(saved["lin"])
    seen, draws = [], []
    real = run.checkpoint
    run.checkpoint = lambda step, *a, **k: (seen.append(step), real(step, *a, **k))
    run.start_clock()
    for step in run.steps(steps, opt, lambda: {"lin": lin.state_dict()}, lambda: {"x": 1}):
        draws.append(torch.rand(1))  # the global generator, reseeded for this step
        lin(torch.ones(1, 3)).sum().backward()
        opt.step()
        opt.zero_grad()
        run.record({"step": step + 1, "is_eval": run.is_eval(step + 1, steps)})
    return run, lin, seen, draws


def test_the_loop_saves_every_save_every_steps_and_at_the_end(tmp_path):
    run, _, seen, draws = _train(tmp_path, 5)
    assert seen == [2, 4, 5]
    meta = json.loads((run.state_dir / "state.json").read_text())
    assert meta["step"] == 5 and meta["progress"]["x"] == 1
    assert "train_seconds" in meta["progress"]
    for step, value in enumerate(draws):
        torch.manual_seed(step_seed(run.seed, step))
        assert torch.equal(torch.rand(1), value)
    records = [json.loads(x) for x in run.metrics.path.read_text().splitlines()]
    assert [r["is_eval"] for r in records] == [False, False, True, False, True]


def test_a_resumed_loop_runs_the_rest_and_a_finished_one_saves_nothing(tmp_path, capsys):
    _, full, _, full_draws = _train(tmp_path / "full", 7)
    _train(tmp_path / "cut", 4)
    run, cut, seen, draws = _train(tmp_path / "cut", 7, resume=True)
    assert run.start == 4 and seen == [6, 7]
    assert "resuming the toy from step 4" in capsys.readouterr().out
    assert [torch.equal(a, b) for a, b in zip(draws, full_draws[4:], strict=True)] == [True] * 3
    for a, b in zip(full.parameters(), cut.parameters(), strict=True):
        assert torch.equal(a, b)
    steps = [json.loads(x)["step"] for x in run.metrics.path.read_text().splitlines()]
    assert steps == list(range(1, 8))
    run, _, seen, draws = _train(tmp_path / "cut", 7, resume=True)
    assert seen == [] and draws == []


def test_best_dev_keeps_the_lowest_figure_over_resumes():
    best = BestDev("nll")
    assert best.summary() is None
    assert best.offer({"nll": 2.0}, 3) and not best.offer({"nll": 2.5}, 6)
    assert best.summary() == {"nll": 2.0, "step": 3}
    again = BestDev("nll", best.summary())  # what a resumed run starts from
    assert not again.offer({"nll": 2.0}, 9) and again.offer({"nll": 1.0}, 12)
    assert again.summary() == {"nll": 1.0, "step": 12}


def test_a_signal_saves_the_step_under_way_and_stops_then_resume_finishes(tmp_path, capsys):
    """SIGINT mid-step: the step finishes, the state is saved at it, TrainingStopped ends
    the loop (the old handler back); --resume then ends where an uninterrupted run does."""
    import os
    import signal

    import pytest

    from llink.train.trainer import TrainingStopped

    _, full, _, _ = _train(tmp_path / "full", 6)
    cfg, run = _run(tmp_path / "cut", **{"stage_a.steps": 6, "stage_a.save_every": 100})
    lin = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    run.begin(opt, False)
    handler = signal.getsignal(signal.SIGINT)
    done = []
    with pytest.raises(TrainingStopped, match="after step 3 of 6"):
        for step in run.steps(6, opt, lambda: {"lin": lin.state_dict()}):
            if step == 2:
                os.kill(os.getpid(), signal.SIGINT)  # arrives during the step
            torch.rand(1)
            lin(torch.ones(1, 3)).sum().backward()
            opt.step()
            opt.zero_grad()
            done.append(step)
            run.record({"step": step + 1})
    assert done == [0, 1, 2] and signal.getsignal(signal.SIGINT) is handler
    assert "stops after this step" in capsys.readouterr().err
    assert json.loads((run.state_dir / "state.json").read_text())["step"] == 3
    _, cut, seen, _ = _train(tmp_path / "cut", 6, resume=True)
    assert seen == [4, 6]
    for a, b in zip(full.parameters(), cut.parameters(), strict=True):
        assert torch.equal(a, b)


def test_the_cli_says_where_a_stopped_run_saved_and_how_to_resume(monkeypatch, capsys):
    from llink import cli
    from llink.train.trainer import TrainingStopped

    def stopped(args):
        raise TrainingStopped("Stage B stopped after step 3 of 6; its state is saved in R")

    args = cli.build_parser().parse_args(["train", "stage-b"])
    args.func = stopped  # the command, stopped by a signal after saving
    monkeypatch.setattr(cli, "build_parser",
                        lambda: type("P", (), {"parse_args": lambda self, a: args})())
    assert cli.main(["train", "stage-b"]) == 130
    assert capsys.readouterr().err.strip() == (
        "llink: Stage B stopped after step 3 of 6; its state is saved in R: "
        "rerun with --resume to continue")


def test_a_second_process_cannot_train_the_same_stage_in_the_same_folder(tmp_path):
    """Two processes training one stage in one run folder would overwrite each other's
    state: the second is refused, naming the first; once the first is gone it may run."""
    import subprocess
    import sys

    import pytest

    from llink.train.trainer import RunBusy

    lock = tmp_path / "run" / ".toy.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, pathlib; from llink.train.trainer import hold_run_lock; "
         f"hold_run_lock(pathlib.Path({str(lock)!r}), 'toy'); print('held', flush=True); "
         "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        _, run = _run(tmp_path, **{"stage_a.steps": 3})
        opt = torch.optim.SGD(torch.nn.Linear(3, 1).parameters(), lr=0.1)
        with pytest.raises(RunBusy, match=rf"toy is already training in .*process {holder.pid}"):
            run.begin(opt, resume=False)
        assert not run.state_dir.exists()  # nothing of the other run touched
    finally:
        holder.communicate("")  # the holder exits, and its lock goes with it
    run, _, seen, _ = _train(tmp_path, 3)
    assert seen == [2, 3]
    from llink.train import trainer

    assert run.lock == lock and lock not in trainer._HELD  # let go once the steps are done
    assert not lock.exists()
