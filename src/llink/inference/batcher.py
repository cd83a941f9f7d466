"""The batcher of ``llink serve``: request handlers only validate and queue; one worker
thread owns the model. It takes up to ``max_batch`` queued requests (waiting at most
``batch_wait_ms`` for more), groups those that can share a decoder batch
(:attr:`ChatJob.batch_key`: same ``gate_boost``, ``max_tokens`` and decoding; prompts may
differ) and runs one batched generate call per group. A request that fails its own checks
(too long for the context, reserved tokens in its question) fails alone with a 4xx before
the group runs; if a batched call still fails, its requests are run again one at a time,
so that one bad request cannot take the others down.

A streaming request's deltas (:class:`TextStream`) are the final, stripped answer in
pieces: white space at either end and an incomplete character wait for the next token.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from llink.inference.api import ApiError, ChatJob
from llink.inference.backends import Backend, Prepared

log = logging.getLogger(__name__)


class TextStream:
    """A streaming request's answer as deltas: ``update`` takes the text so far after each
    step, ``finish`` the final answer; the deltas handed to ``emit`` add up to the final
    (stripped) answer. White space at the end and an incomplete character wait."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self.emit = emit
        self.sent = ""

    def update(self, text: str) -> None:
        safe = text.strip()
        while safe.endswith("\ufffd"):  # a multi-byte character cut between tokens
            safe = safe[:-1].rstrip()
        if len(safe) > len(self.sent) and safe.startswith(self.sent):
            self.emit(safe[len(self.sent):])
            self.sent = safe

    def finish(self, final: str) -> None:
        if not final.startswith(self.sent):  # decoding a prefix gave other text: rare
            log.warning("streamed text %r is not a prefix of the answer %r", self.sent, final)
        elif len(final) > len(self.sent):
            self.emit(final[len(self.sent):])
        self.sent = final


@dataclass
class _Pending:
    job: ChatJob
    stream: TextStream | None = None
    future: Future = field(default_factory=Future)


def group_by_key(items: Sequence[Any], key: Callable[[Any], Hashable]) -> list[list[Any]]:
    """Items grouped by ``key``, groups in order of first appearance, order kept within."""
    groups: dict[Hashable, list[Any]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return list(groups.values())


class Batcher:
    """One worker thread running batched generate calls for queued jobs.

    ``hold`` and ``release`` let a test (or an operator) fill the queue while the worker
    takes nothing, so that what one batch holds does not depend on when requests arrive."""

    def __init__(self, backend: Backend, max_batch: int, wait_s: float, max_pending: int) -> None:
        self.backend = backend
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.max_pending = max_pending
        self.generate_calls = 0  # generate calls run so far
        self.completed = 0  # jobs answered so far
        self.submitted = 0  # jobs accepted so far
        self._jobs: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._held = False
        self._thread = threading.Thread(target=self._loop, name="llink-batcher", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Jobs queued and not yet taken into a batch."""
        with self._cond:
            return len(self._jobs)

    def submit(self, job: ChatJob, emit: Callable[[str], None] | None = None) -> Future:
        """Queue a job; its future gets a :class:`Completion` or an :class:`ApiError`.
        With ``emit``, the answer's text also comes in pieces as it is generated."""
        item = _Pending(job, TextStream(emit) if emit is not None else None)
        with self._cond:
            if self._closed:
                raise ApiError(503, "the server is shutting down", "shutting_down", "server_error")
            if len(self._jobs) >= self.max_pending:
                raise ApiError(
                    503, "too many requests are waiting; retry later", "overloaded", "server_error"
                )
            self._jobs.append(item)
            self.submitted += 1
            self._cond.notify_all()
        return item.future

    def hold(self) -> None:
        """The worker starts no batch (takes no queued job) until :meth:`release`."""
        with self._cond:
            self._held = True

    def release(self) -> None:
        """Undo :meth:`hold`: the worker takes the queued jobs, up to ``max_batch`` at once."""
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def wait_pending(self, n: int, timeout: float | None = None) -> bool:
        """Block until at least ``n`` jobs are queued; False if ``timeout`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._jobs) >= n, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Refuse new jobs, finish the queued ones (a hold is lifted), then stop the worker."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._held = False
            self._cond.notify_all()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            batch = self._collect()
            if not batch:
                return  # closed and every queued job taken
            for group in group_by_key(batch, lambda p: p.job.batch_key):
                self._run(group)

    def _collect(self) -> list[_Pending]:
        """Up to ``max_batch`` jobs, waiting at most ``wait_s`` after the first for more
        (no waiting once closing); empty when closed with nothing queued."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or (self._jobs and not self._held))
            if not self._jobs:
                return []
            batch = [self._jobs.popleft()]
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_batch:
                if self._jobs and not self._held:
                    batch.append(self._jobs.popleft())
                    continue
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    break
                self._cond.wait(left)
            return batch

    def _run(self, group: list[_Pending]) -> None:
        items, prepared = [], []
        for p in group:
            if not p.future.set_running_or_notify_cancel():
                continue  # timed out while queued: nobody waits for it
            try:
                prepared.append(self.backend.prepare(p.job))
                items.append(p)
            except Exception as exc:
                self._fail([p], exc)
        if items:
            self._generate(items, prepared)

    def _generate(self, items: list[_Pending], prepared: list[Prepared]) -> None:
        """One generate call for ``items``; if it fails, each item again on its own
        (unless its stream has begun), so that only the cause fails."""
        streams = {i: p.stream for i, p in enumerate(items) if p.stream is not None}

        def on_text(i: int, text: str) -> None:
            streams[i].update(text)

        try:
            outs = self.backend.generate([p.job for p in items], prepared,
                                         on_text if streams else None)
        except Exception as exc:
            self.generate_calls += 1
            if len(items) == 1:
                self._fail(items, exc)
                return
            log.warning("a generate call of %d requests failed (%s); running them one at a "
                        "time", len(items), type(exc).__name__)
            for p, prep in zip(items, prepared, strict=True):
                if p.stream is not None and p.stream.sent:
                    self._fail([p], exc)  # part of its answer is out: it cannot start over
                else:
                    self._generate([p], [prep])
            return
        self.generate_calls += 1
        for p, out in zip(items, outs, strict=True):
            if p.stream is not None:
                p.stream.finish(out.text)
            p.future.set_result(out)
        self.completed += len(items)

    @staticmethod
    def _fail(items: list[_Pending], exc: Exception) -> None:
        if not isinstance(exc, ApiError):
            log.error("generation failed for %d request(s)", len(items), exc_info=exc)
            exc = ApiError(
                500,
                "internal error while generating (see the server log)",
                "internal_error",
                "server_error",
            )
        for p in items:
            p.future.set_exception(exc)


