"""The skeleton every trainer shares: files, resume, seeding, progress bar, log, checkpoints.

Stage A, Stage B and the baseline differ in their model, batches and loss; around
those they do the same things, held here so that each trainer keeps only its own part::

    run = TrainingRun(cfg, "stage_b", "Stage B", cfg.stage_b, RESUMABLE_CHANGES,
                      outputs=("stage_b-best", "stage_b"), progress=progress)
    ...  # build the model and optimizer (the constructor seeded torch with cfg.seed)
    parts = run.begin(opt, resume)  # the saved tensors to restore, or None
    run.start_clock()
    for step in run.steps(b.steps, opt, parts_fn, progress_fn):
        ...  # one optimizer step; run.record(...) logs it
    # the loop saved the state every ``save_every`` steps and after the last one

Ctrl-C (SIGINT) or SIGTERM during the loop asks for a clean stop: the step under way
finishes, the state is saved at it, and :class:`TrainingStopped` (a ``KeyboardInterrupt``)
ends the run, so ``--resume`` loses nothing; a second signal stops at once.

Files of a run named ``NAME`` in ``run_dir``: ``NAME.metrics.jsonl`` (the log),
``NAME-state`` (the resumable state, :mod:`llink.train.state`), the trainer's own
model folders (``outputs``) and, with ``snapshot_every``, ``NAME-stepN`` (the model
kept at step N, :meth:`TrainingRun.snapshot`). Every rank runs the loop; only the main
process writes.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from llink.config import Config
from llink.storage.checkpoints import CheckpointError
from llink.storage.runlog import MetricsLog
from llink.train import distributed as dist
from llink.train.state import (
    clean_stale_states,
    fixed_settings,
    load_state,
    save_state,
    saved_progress,
)

#: Saved tensors of a trainer: part name (projector, bridge, lora, ...) -> state dict.
Parts = dict[str, dict[str, torch.Tensor]]


class TrainingStopped(KeyboardInterrupt):
    """A training loop stopped on request (SIGINT/SIGTERM) after saving its state."""


class StopRequest:
    """Whether a stop was asked for: set by the first SIGINT/SIGTERM while installed."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None


@contextmanager
def stop_on_signal(what: str) -> Iterator[StopRequest]:
    """Within the block, the first SIGINT or SIGTERM only sets the returned request (and
    says so on stderr); the handlers that were there before come back at once, so a second
    signal acts as usual (Ctrl-C raises KeyboardInterrupt). Outside the main thread,
    where signals cannot be caught, the request is never set."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    names = (signal.SIGINT, signal.SIGTERM)
    before = {s: signal.getsignal(s) for s in names}

    def restore() -> None:
        for s, handler in before.items():
            signal.signal(s, handler)

    def handle(signum: int, _frame: Any) -> None:
        request.signal = signum
        restore()
        print(f"\n{signal.Signals(signum).name}: {what} stops after this step and saves its "
              "state (again to stop now)", file=sys.stderr, flush=True)

    for s in names:
        signal.signal(s, handle)
    try:
        yield request
    finally:
        restore()


def state_dir(run_dir: str | Path, name: str) -> Path:
    """The resumable state folder of the training run ``name`` in ``run_dir``."""
    return Path(run_dir) / f"{name}-state"


def has_saved_state(run_dir: str | Path, name: str) -> bool:
    """Whether ``name`` left a state in ``run_dir`` to resume from (complete or not: a
    damaged one is refused by the resume, with the reason), as a multi-stage command
    decides which stages to resume and which to start."""
    folder = state_dir(run_dir, name)
    return folder.exists() or folder.with_name(f".{folder.name}.old").exists()


class RunBusy(CheckpointError):
    """Another process is training the same stage in the same run folder."""


_HELD: dict[Path, Any] = {}  # run locks this process holds: path -> open file


def hold_run_lock(path: Path, title: str) -> None:
    """Hold an exclusive lock on ``path`` (it records this process's id) until
    :func:`release_run_lock`; raise :class:`RunBusy` when another process holds it. Two
    processes training one stage in one folder would overwrite each other's state and
    interleave their logs. Re-entrant within a process; no locking where ``fcntl`` is
    unavailable (Windows)."""
    if path in _HELD:
        return
    try:
        import fcntl
    except ImportError:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held until released)
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            raise RunBusy(
                f"{title} is already training in {path.parent} (process {holder}): wait for "
                "it, stop it (Ctrl-C or SIGTERM saves its state, then --resume continues it), "
                "or give this run another run_dir") from None
        try:  # the holder before us may have removed the file it locked: lock the new one
            if os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        fh.close()
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    _HELD[path] = fh


def release_run_lock(path: Path) -> None:
    """Let go of a lock taken by :func:`hold_run_lock` and remove its file (nothing if not
    held)."""
    fh = _HELD.pop(path, None)
    if fh is not None:
        path.unlink(missing_ok=True)  # removed while still locked: no one is left waiting on it
        fh.close()  # closing the file releases the lock


def step_seed(seed: int, step: int) -> int:
    """The global generator's seed for ``step``: dropout masks reproducible on resume (and
    different on each rank)."""
    return seed * 7919 + step + 1_000_003 * dist.rank()


@contextmanager
def _releasing_on_error(lock: Path) -> Iterator[None]:
    """Within: an exception (a stop, a failed resume) lets go of ``lock`` on its way out."""
    try:
        yield
    except BaseException:
        release_run_lock(lock)
        raise


class TrainingRun:
    """One stage's training run in ``cfg.run_dir``, fresh or resumed.

    ``name`` names its files, ``title`` its messages ("resuming the baseline from step
    4"); without a leading "the" it names the stage in resume errors, and with a small
    first letter the progress bar and log lines ("baseline | ", "stage B | ").
    ``stage_cfg`` less ``may_change`` are the settings a resumed run must share. The
    constructor seeds torch's global generator with ``cfg.seed``, so the weights the
    trainer creates next start the same in every run with that seed.
    """

    def __init__(
        self,
        cfg: Config,
        name: str,
        title: str,
        stage_cfg: Any,
        may_change: set[str],
        outputs: Sequence[str] = (),
        progress: bool = True,
    ) -> None:
        self.run_dir = Path(cfg.run_dir)
        self.name, self.title = name, title
        self.label = title.removeprefix("the ")  # "Stage B", "baseline"
        self.tag = self.label[:1].lower() + self.label[1:]  # "stage B", "baseline"
        self.state_dir = state_dir(self.run_dir, name)
        self.lock = self.run_dir / f".{name}.lock"
        self.metrics = MetricsLog(self.run_dir / f"{name}.metrics.jsonl")
        self.outputs = [self.run_dir / o for o in outputs]
        self.main = dist.is_main()
        self.progress = progress and self.main
        self.seed = cfg.seed
        self.settings = fixed_settings(stage_cfg, may_change)
        self.eval_every, self.save_every = stage_cfg.eval_every, stage_cfg.save_every
        self.snapshot_every = getattr(stage_cfg, "snapshot_every", 0)
        self.start = 0  # the first step this process runs (the saved step on resume)
        self.earlier: dict[str, Any] = {}  # progress saved before a resume (best, time)
        self.bar: Any = None
        self._t0 = time.time()
        torch.manual_seed(cfg.seed)

    def begin(self, opt: torch.optim.Optimizer, resume: bool) -> Parts | None:
        """Start fresh (drop an old log) or resume: restore ``opt``, return the saved parts.

        Half-written folders of interrupted checkpoint writes (of the state and of
        ``outputs``) are removed first; every rank waits until the main process is done.
        """
        parts = None
        if self.main:  # held until the steps are done (or the process ends)
            hold_run_lock(self.lock, self.label)
        with _releasing_on_error(self.lock):
            if self.main:
                clean_stale_states(self.state_dir, *self.outputs)
            if resume:
                self.start, parts = load_state(self.state_dir, self.label, self.settings, opt)
                self.earlier = saved_progress(self.state_dir)
                if self.main:
                    self.metrics.truncate_after(self.start)
                    print(f"resuming {self.title} from step {self.start} ({self.state_dir})")
            elif self.main and self.metrics.path.exists():
                self.metrics.path.unlink()
        dist.barrier()  # nobody loads the state while the main process may replace it
        return parts

    def start_clock(self) -> None:
        """Training time counts from here (plus the time saved before a resume)."""
        self._t0 = time.time()

    def seconds(self) -> float:
        """Training time of the whole run, over resumes."""
        return round(self.earlier.get("train_seconds", 0.0) + time.time() - self._t0, 1)

    def checkpoint(self, step: int, opt: torch.optim.Optimizer, parts: Parts,
                   progress: dict[str, Any] | None = None) -> None:
        """Save the resumable state at ``step`` (main process), with ``progress`` and the
        training time so far."""
        dist.on_main(save_state, self.state_dir, parts, opt, step, self.settings,
                     progress={**(progress or {}), "train_seconds": self.seconds()})

    def steps(
        self,
        total: int,
        opt: torch.optim.Optimizer,
        parts: Callable[[], Parts],
        progress: Callable[[], dict[str, Any]] = dict,
    ) -> Iterator[int]:
        """Steps ``start .. total-1`` behind a progress bar, torch reseeded for each.

        After every ``save_every``-th step and after the last one the state is saved
        (``parts()`` and ``progress()`` are read then); a run resumed at its end saves
        nothing again. A stop asked for by SIGINT/SIGTERM (:func:`stop_on_signal`) saves
        the state after the step under way and raises :class:`TrainingStopped`.
        """
        self.bar = tqdm(range(self.start, total), desc=self.tag,
                        disable=not self.progress, unit="step", initial=self.start, total=total)
        with stop_on_signal(self.title) as stop, _releasing_on_error(self.lock):
            for step in self.bar:
                torch.manual_seed(step_seed(self.seed, step))
                yield step
                done = step + 1
                # every rank stops at the same step if any was asked to
                stopping = dist.sum_floats({"stop": float(bool(stop))})["stop"] > 0
                if (stopping or done % self.save_every == 0) and done < total:
                    self.checkpoint(done, opt, parts(), progress())
                if stopping and done < total:
                    self.bar.close()
                    raise TrainingStopped(f"{self.title} stopped after step {done} of {total}; "
                                          f"its state is saved in {self.state_dir}")
        self.bar.close()
        if self.start < total:
            self.checkpoint(total, opt, parts(), progress())
        release_run_lock(self.lock)

    def snapshot(self, done: int, total: int, save: Callable[[Path, int], Any]) -> Path | None:
        """Keep the model after ``done`` steps when ``snapshot_every`` divides it:
        ``save(folder, done)`` writes ``run_dir/NAME-stepN`` (main process; the final model
        is ``NAME``). Returns the folder, or None when no snapshot is due."""
        if not self.snapshot_every or done % self.snapshot_every or done >= total:
            return None
        folder = self.run_dir / f"{self.name}-step{done}"
        dist.on_main(save, folder, done)  # atomic, like every model folder (save_folder)
        return folder

    def is_eval(self, done: int, total: int) -> bool:
        """Whether the dev set is evaluated after ``done`` steps (every ``eval_every``, last)."""
        return done % self.eval_every == 0 or done == total

    def summary(self, steps: int, dev_final: dict[str, Any], best: BestDev,
                dev_start: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """What a trainer with dev evaluations returns: dev figures at the end, at the best
        evaluation (None: no dev evaluation ran) and at the start, time, steps, ``extra``."""
        return {"dev_final": dev_final, "dev_best": best.summary(), "dev_start": dev_start,
                "train_seconds": self.seconds(), "steps": steps, **extra}

    def record(self, record: dict[str, Any], echo: bool | None = None, **postfix: str) -> None:
        """Append ``record`` to the log (main process) and show ``postfix`` on the bar."""
        if not self.main:
            return
        self.metrics.log(record, prefix=f"{self.tag} | ", echo=echo)
        if postfix and self.bar is not None:
            self.bar.set_postfix(**postfix)


class BestDev:
    """The lowest dev figure so far (over resumes) and the step it was reached at."""

    def __init__(self, key: str, earlier: dict[str, Any] | None = None) -> None:
        self.key = key
        self.figures: dict[str, Any] = earlier or {key: float("inf")}

    def offer(self, figures: dict[str, Any], step: int) -> bool:
        """Keep ``figures`` if they beat the best; True when they do (save the model then)."""
        if figures[self.key] < self.figures[self.key]:
            self.figures = {**figures, "step": step}
            return True
        return False

    def summary(self) -> dict[str, Any] | None:
        """The best figures with their step; None when no dev evaluation ran."""
        return self.figures if "step" in self.figures else None
