"""``llink serve``: an HTTP server with an OpenAI-compatible chat-completions endpoint.

Standard library only. It serves a trained LLINK folder or a plain Hugging Face causal
LM (a baseline). Endpoints: ``GET /health``, ``GET /v1/models`` and
``POST /v1/chat/completions``.

A LLINK request names its foreign text either as a ``<foreign>…</foreign>`` span in the
last user message (any other text of that message becomes a free-form question, task
``ask``) or in the extra field ``"llink": {"foreign", "task", "strict", "gate_boost",
"question"}``. The plain model answers ordinary chats; given foreign text, it gets the
same instruction LLINK would, with the text written out.

HTTP handler threads only parse and validate. One worker thread owns the model: it takes
up to ``max_batch`` queued requests (waiting at most ``batch_wait_ms`` for more), groups
those that can share a decoder batch (same ``gate_boost`` and ``max_tokens``; prompts may
differ) and runs one batched, greedy generate call per group. Each handler waits on the
future of its own request. Sampling parameters (temperature, top_p, ...) are ignored;
streaming and n > 1 are refused.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import re
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from llink.config import MAX_GATE_BOOST, ConfigError
from llink.inject import TASKS, instruction_text

log = logging.getLogger("llink.serve")

VALID_TASKS = (*TASKS, "ask")
FOREIGN_SPAN = re.compile(r"<foreign>(.*?)</foreign>", re.DOTALL)
LLINK_FIELDS = frozenset({"foreign", "task", "strict", "gate_boost", "question"})
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_SMALL_BODY = 1 << 16  # unread bodies up to this size are read before replying (keep-alive)
_DRAIN_LIMIT = 1 << 30  # larger ones are read and discarded after the reply, up to this size
JSON_TYPE = "application/json"


class ServeError(ConfigError):
    """A server setting is unusable (bad limits, missing API key, port in use, ...)."""


class ApiError(Exception):
    """An error answered to the client as ``{"error": {"message", "type", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.kind = status, message, code, kind
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "code": self.code}}


def _bad(message: str, code: str, status: int = 400) -> ApiError:
    return ApiError(status, message, code)


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class ServeSettings:
    """Limits and batching of a server."""

    max_batch: int = 8
    batch_wait_ms: float = 10.0
    max_body_bytes: int = 1 << 20
    max_foreign_chars: int = 4000
    max_tokens: int = 512  # the largest max_tokens a request may ask for
    default_max_tokens: int = 128
    api_key: str | None = None
    request_timeout_s: float = 300.0
    max_pending: int = 256
    read_timeout_s: float = 30.0  # how long a client may take to send its request
    listen_backlog: int = 1024  # connections the kernel queues before the server accepts them

    def __post_init__(self) -> None:
        positive = (
            "max_batch",
            "max_body_bytes",
            "max_foreign_chars",
            "max_tokens",
            "default_max_tokens",
            "request_timeout_s",
            "max_pending",
            "read_timeout_s",
            "listen_backlog",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ServeError(f"{name} must be positive, got {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise ServeError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        if self.default_max_tokens > self.max_tokens:
            raise ServeError(
                f"default_max_tokens {self.default_max_tokens} exceeds max_tokens {self.max_tokens}"
            )


# --------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class ChatJob:
    """A validated chat request: the conversation and, for LLINK, the foreign-text task."""

    messages: tuple[tuple[str, str], ...]  # (role, text)
    max_tokens: int
    foreign: str | None = None
    task: str = "translate_to_english"
    strict: bool = False
    gate_boost: float = 1.0
    question: str | None = None

    @property
    def batch_key(self) -> Hashable:
        """Jobs with equal keys can share one batched generate call."""
        return (self.gate_boost, self.max_tokens)

    def instruction(self) -> str:
        """The LLINK user message with the foreign text written out (plain models)."""
        assert self.foreign is not None
        return instruction_text(self.task, self.foreign, self.strict, self.question)


def parse_chat_request(body: Any, settings: ServeSettings, needs_foreign: bool) -> ChatJob:
    """Validate a chat-completions body; raise :class:`ApiError` with a clear message."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", "invalid_body")
    _check_unsupported(body)
    messages = _messages(body.get("messages"))
    fields = _llink_fields(body.get("llink"))
    last_user = next((text for role, text in reversed(messages) if role == "user"), None)
    if last_user is None:
        raise _bad("messages need at least one message with role 'user'", "missing_user_message")
    foreign, question = _foreign_and_question(last_user, fields)
    max_tokens = _max_tokens(body, settings)
    if foreign is None:
        if needs_foreign:
            raise _bad(
                "no foreign text: put it in <foreign>...</foreign> in the last user "
                "message, or in the field llink.foreign",
                "missing_foreign",
            )
        return ChatJob(tuple(messages), max_tokens)
    _check_foreign(foreign, settings.max_foreign_chars)
    task = _task(fields.get("task"), question)
    strict = fields.get("strict", False)
    if not isinstance(strict, bool):
        raise _bad("llink.strict must be true or false", "invalid_strict")
    return ChatJob(
        tuple(messages),
        max_tokens,
        foreign.strip(),
        task,
        strict,
        _gate_boost(fields.get("gate_boost", 1.0)),
        question,
    )


def _check_unsupported(body: dict[str, Any]) -> None:
    if body.get("stream"):
        raise _bad("stream=true is not supported; send stream=false", "unsupported_stream")
    if body.get("n") not in (None, 1):
        raise _bad("only n=1 is supported", "unsupported_n")


def _messages(value: Any) -> list[tuple[str, str]]:
    if value is None:
        raise _bad(
            "'messages' is required: a non-empty list of {role, content}", "missing_messages"
        )
    if not isinstance(value, list) or not value:
        raise _bad("'messages' must be a non-empty list of {role, content}", "empty_messages")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES:
            raise _bad(
                f"messages[{i}] must be an object with a role among {', '.join(sorted(ROLES))}",
                "invalid_message",
            )
        out.append((msg["role"], _text_content(msg.get("content"), i)))
    return out


def _text_content(content: Any, index: int) -> str:
    """A message's text: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    raise _bad(
        f"messages[{index}].content must be a string or a list of text parts", "invalid_content"
    )


def _llink_fields(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad("'llink' must be an object", "invalid_llink")
    unknown = sorted(set(value) - LLINK_FIELDS)
    if unknown:
        raise _bad(
            f"unknown llink field(s) {', '.join(unknown)}; known: "
            f"{', '.join(sorted(LLINK_FIELDS))}",
            "invalid_llink",
        )
    for key in ("foreign", "task", "question"):
        if value.get(key) is not None and not isinstance(value[key], str):
            raise _bad(f"llink.{key} must be a string", "invalid_llink")
    return value


def _foreign_and_question(text: str, fields: dict[str, Any]) -> tuple[str | None, str | None]:
    """Foreign text and question from a ``<foreign>`` span or the llink fields."""
    spans = FOREIGN_SPAN.findall(text)
    question = fields.get("question") or None
    if not spans:
        if "<foreign>" in text:
            raise _bad("unclosed <foreign> span in the last user message", "invalid_foreign")
        return fields.get("foreign"), question
    if len(spans) > 1:
        raise _bad("the last user message has more than one <foreign> span", "invalid_foreign")
    if fields.get("foreign") is not None:
        raise _bad(
            "foreign text given twice: in a <foreign> span and in llink.foreign", "invalid_foreign"
        )
    rest = FOREIGN_SPAN.sub(" ", text).strip()
    return spans[0], question or rest or None


def _check_foreign(foreign: str, limit: int) -> None:
    text = foreign.strip()
    if not text:
        raise _bad("the foreign text is empty or only white space", "empty_foreign")
    if len(text) > limit:
        raise _bad(
            f"the foreign text has {len(text)} characters; the limit is {limit}",
            "foreign_too_large",
            status=413,
        )


def _task(task: Any, question: str | None) -> str:
    task = task or ("ask" if question else "translate_to_english")
    if task not in VALID_TASKS:
        raise _bad(f"unknown task {task!r}; valid tasks: {', '.join(VALID_TASKS)}", "unknown_task")
    if task == "ask" and not question:
        raise _bad(
            "task 'ask' needs a question (llink.question or text next to the <foreign> span)",
            "missing_question",
        )
    return task


def _gate_boost(value: Any) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0.0 <= value <= MAX_GATE_BOOST:
        raise _bad(
            f"llink.gate_boost must be a number in [0, {MAX_GATE_BOOST:g}]", "invalid_gate_boost"
        )
    return float(value)


def _max_tokens(body: dict[str, Any], settings: ServeSettings) -> int:
    value = body.get("max_tokens", body.get("max_completion_tokens"))
    if value is None:
        return settings.default_max_tokens
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or not 1 <= value <= (settings.max_tokens)
    ):
        raise _bad(
            f"max_tokens must be an integer from 1 to {settings.max_tokens}",
            "max_tokens_out_of_range",
        )
    return value


# --------------------------------------------------------------------------- backends
@dataclass
class Prepared:
    """A job's prompt token ids, ready for a batch, and notes for the client."""

    prompt: list[int]
    warnings: list[str] = field(default_factory=list)


@dataclass
class Completion:
    """One generated answer and its token counts."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    warnings: list[str] = field(default_factory=list)


class Backend(Protocol):
    """A model behind the server. ``prepare`` and ``generate`` run on the worker thread."""

    kind: str
    name: str
    needs_foreign: bool

    def describe(self) -> dict[str, Any]: ...

    def prepare(self, job: ChatJob) -> Prepared: ...

    def generate(
        self, jobs: Sequence[ChatJob], prepared: Sequence[Prepared]
    ) -> list[Completion]: ...


def _check_context(prompt_len: int, max_tokens: int, context: int | None) -> None:
    if context and prompt_len + max_tokens > context:
        raise _bad(
            f"the prompt has {prompt_len} tokens; with max_tokens {max_tokens} it "
            f"exceeds the model's context of {context} tokens",
            "context_length_exceeded",
        )


def _generated(row: list[int], eos_ids: set[int]) -> tuple[int, str]:
    """Tokens generated in a row (up to and including its end token) and the finish reason."""
    stop = next((i for i, t in enumerate(row) if t in eos_ids), None)
    return (len(row), "length") if stop is None else (stop + 1, "stop")


class _LastIds:
    """A stopping criterion that never stops; it keeps the ids generated so far."""

    def __init__(self) -> None:
        self.ids: Any = None

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        self.ids = input_ids
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class LLINKBackend:
    """A trained LLINK model: slots from the foreign text, greedy decoding."""

    kind = "llink"
    needs_foreign = True

    def __init__(self, model: Any, name: str) -> None:
        self.model = model.eval()
        self.name = name

    @classmethod
    def load(
        cls,
        folder: str,
        device: str = "auto",
        cache_dir: str | None = None,
        name: str | None = None,
    ) -> LLINKBackend:
        from llink.artifacts import load_llink
        from llink.models.loading import resolve_device

        model = load_llink(folder, device=resolve_device(device), cache_dir=cache_dir)
        return cls(model, name or Path(folder).resolve().name)

    def describe(self) -> dict[str, Any]:
        m = self.model
        return {
            "encoder": m.encoder.name,
            "decoder": m.decoder.name,
            "num_slots": m.num_slots,
            "device": str(m.device),
            "tasks": list(VALID_TASKS),
        }

    def _prompt(self, job: ChatJob, num_slots: int | None = None) -> list[int]:
        """The prompt :meth:`LLINK.generate` builds: the model's literals of the foreign
        text and, for models whose texts take fewer than K slots, that many slots."""
        m = self.model
        assert job.foreign is not None
        return m.prompt_ids(job.task, job.strict, job.question, num_slots=num_slots,
                            literals=m.literals_of(job.foreign))

    def prepare(self, job: ChatJob) -> Prepared:
        prompt = self._prompt(job)  # K slots: the longest this prompt can be
        config = self.model.decoder.model.config
        _check_context(
            len(prompt), job.max_tokens, getattr(config, "max_position_embeddings", None)
        )
        notes = []
        limit = self.model.encoder.max_chars
        if job.foreign and limit > 0 and len(job.foreign) > limit:
            notes.append(
                f"the foreign text has {len(job.foreign)} characters; the encoder "
                f"reads the first {limit}"
            )
        return Prepared(prompt, notes)

    def generate(self, jobs: Sequence[ChatJob], prepared: Sequence[Prepared]) -> list[Completion]:
        import torch
        from transformers import StoppingCriteriaList

        m, last = self.model, _LastIds()
        prompts = [p.prompt for p in prepared]
        with torch.no_grad():
            enc, tokens = m.read([j.foreign for j in jobs])
            counts = m.slot_counts(tokens)
            if counts is not None:
                prompts = [self._prompt(j, k) for j, k in zip(jobs, counts, strict=True)]
            slots = m.slots(enc, jobs[0].gate_boost, tokens)
            texts = m.generate_from_ids(
                prompts,
                slots,
                max_new_tokens=jobs[0].max_tokens,
                stopping_criteria=StoppingCriteriaList([last]),
            )
        # generating from embeddings, the ids seen by the criterion are the new tokens only
        rows = last.ids.tolist() if last.ids is not None else [[] for _ in jobs]
        eos = {int(m.tokenizer.eos_token_id)}
        out = []
        for text, row, prompt, p in zip(texts, rows, prompts, prepared, strict=True):
            n, reason = _generated(row, eos)
            out.append(Completion(text, len(prompt), n, reason, p.warnings))
        return out


class HFBackend:
    """A plain Hugging Face causal LM with its chat template, greedy decoding."""

    kind = "hf"
    needs_foreign = False

    def __init__(self, model: Any, tokenizer: Any, name: str) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.name = name
        self.templated = bool(getattr(tokenizer, "chat_template", None))
        eos = model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {int(e) for e in [*eos, tokenizer.eos_token_id] if e is not None}

    @classmethod
    def load(
        cls,
        name: str,
        device: str = "auto",
        cache_dir: str | None = None,
        served_name: str | None = None,
    ) -> HFBackend:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from llink.models.loading import resolve_device
        from llink.models.offline import resolve_model

        path = resolve_model(name, Path(cache_dir) if cache_dir else None)
        dev = resolve_device(device)
        dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True)
            model = model.to(dev)
        except OSError as exc:
            raise ServeError(f"cannot load the model {name!r}: {exc}") from exc
        default = Path(name).name if Path(name).is_dir() else name
        return cls(model, tokenizer, served_name or default)

    def describe(self) -> dict[str, Any]:
        return {"device": str(self.model.device), "chat_template": self.templated}

    def render(self, job: ChatJob) -> str:
        """The prompt text: the conversation (last user turn = LLINK instruction if foreign)."""
        messages = [{"role": r, "content": t} for r, t in job.messages]
        if job.foreign is not None:
            last = max(i for i, m in enumerate(messages) if m["role"] == "user")
            messages[last] = {"role": "user", "content": job.instruction()}
        if self.templated:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n".join([*lines, "Assistant:"])

    def prepare(self, job: ChatJob) -> Prepared:
        # a chat template writes its own special tokens
        ids = self.tokenizer(self.render(job), add_special_tokens=not self.templated)
        prompt = list(ids["input_ids"])
        _check_context(
            len(prompt), job.max_tokens, getattr(self.model.config, "max_position_embeddings", None)
        )
        return Prepared(prompt)

    def generate(self, jobs: Sequence[ChatJob], prepared: Sequence[Prepared]) -> list[Completion]:
        import torch

        from llink.inject import pad_batch

        pad = int(self.tokenizer.pad_token_id)
        ids, mask = pad_batch([p.prompt for p in prepared], pad, side="left")
        dev, max_tokens = self.model.device, jobs[0].max_tokens
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids.to(dev),
                attention_mask=mask.to(dev),
                max_new_tokens=max_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad,
            )
        completions = []
        for row, p in zip(out[:, ids.shape[1] :].tolist(), prepared, strict=True):
            n, reason = _generated(row, self.eos_ids)
            text = self.tokenizer.decode(row[:n], skip_special_tokens=True).strip()
            completions.append(Completion(text, len(p.prompt), n, reason))
        return completions


# --------------------------------------------------------------------------- batching
@dataclass
class _Pending:
    job: ChatJob
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
        self.generate_calls = 0  # batched generate calls run so far
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

    def submit(self, job: ChatJob) -> Future:
        """Queue a job; its future gets a :class:`Completion` or an :class:`ApiError`."""
        item = _Pending(job)
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
        ready = [p for p in group if p.future.set_running_or_notify_cancel()]
        prepared = []
        for p in list(ready):
            try:
                prepared.append(self.backend.prepare(p.job))
            except Exception as exc:
                ready.remove(p)
                self._fail([p], exc)
        if not ready:
            return
        try:
            outs = self.backend.generate([p.job for p in ready], prepared)
        except Exception as exc:
            self._fail(ready, exc)
            return
        finally:
            self.generate_calls += 1
        for p, out in zip(ready, outs, strict=True):
            p.future.set_result(out)
        self.completed += len(ready)

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


# --------------------------------------------------------------------------- HTTP
def chat_response(name: str, job: ChatJob, done: Completion) -> dict[str, Any]:
    """The OpenAI ``chat.completion`` object for one answer."""
    resp: dict[str, Any] = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": done.text},
                "finish_reason": done.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens,
        },
    }
    if job.foreign is not None:
        resp["llink"] = {
            "task": job.task,
            "strict": job.strict,
            "gate_boost": job.gate_boost,
            "warnings": done.warnings,
        }
    return resp


class LLINKServer(ThreadingHTTPServer):
    """The HTTP server; ``generate_calls`` counts the batched generate calls run."""

    # Handler threads are joined on close: a daemon thread still freeing tensors while the
    # interpreter exits aborts the process (torch re-takes the GIL in its destructors).
    daemon_threads = False

    def __init__(self, address: tuple[str, int], backend: Backend, settings: ServeSettings) -> None:
        # socketserver's default backlog of 5 makes the kernel drop connections when many
        # clients connect at once (resets under ~50 concurrent requests): the listen queue
        # must hold at least as many connections as the batcher queues requests
        self.request_queue_size = max(settings.listen_backlog, settings.max_pending)
        super().__init__(address, _Handler)
        self.backend = backend
        self.settings = settings
        self.created = int(time.time())
        self.batcher = Batcher(
            backend, settings.max_batch, settings.batch_wait_ms / 1000, settings.max_pending
        )

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def generate_calls(self) -> int:
        return self.batcher.generate_calls

    def close(self) -> None:
        """Finish queued requests, then wait for the handler threads and close the socket."""
        self.batcher.close(timeout=self.settings.request_timeout_s)
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: LLINKServer
    server_version = "llink-serve"
    timeout = 30  # seconds a client may take to send its request (ServeSettings.read_timeout_s)

    def setup(self) -> None:
        self.timeout = self.server.settings.read_timeout_s
        super().setup()

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    # --- dispatch --------------------------------------------------------------------
    def _dispatch(self) -> None:
        self._body_read = False
        try:
            self._route()
        except ApiError as err:
            self._reply(err.status, err.body(), err.headers)
        except Exception:
            log.exception("internal error on %s %s", self.command, self.path)
            err = ApiError(
                500, "internal server error (see the server log)", "internal_error", "server_error"
            )
            self._reply(err.status, err.body())

    def _route(self) -> None:
        routes: dict[str, dict[str, Callable[[], None]]] = {
            "/health": {"GET": self._health},
            "/v1/models": {"GET": self._models},
            "/v1/chat/completions": {"POST": self._chat},
        }
        path = urlsplit(self.path).path.rstrip("/") or "/"
        methods = routes.get(path)
        if methods is None:
            raise ApiError(
                404,
                f"no endpoint {path}; endpoints: GET /health, GET /v1/models, "
                "POST /v1/chat/completions",
                "not_found",
                "not_found_error",
            )
        if self.command not in methods:
            allowed = ", ".join(methods)
            raise ApiError(
                405,
                f"{self.command} is not allowed on {path}; use {allowed}",
                "method_not_allowed",
                headers={"Allow": allowed},
            )
        if path != "/health":
            self._authorize()
        methods[self.command]()

    def _authorize(self) -> None:
        key = self.server.settings.api_key
        if key is None:
            return
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), key.encode()
        ):
            raise ApiError(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                "invalid_api_key",
                "authentication_error",
                headers={"WWW-Authenticate": "Bearer"},
            )

    # --- endpoints -------------------------------------------------------------------
    def _health(self) -> None:
        b, batcher = self.server.backend, self.server.batcher
        self._reply(
            200,
            {
                "status": "ok",
                "kind": b.kind,
                "model": b.name,
                **b.describe(),
                "pending": batcher.pending,
                "generate_calls": batcher.generate_calls,
                "completed": batcher.completed,
            },
        )

    def _models(self) -> None:
        b = self.server.backend
        card = {
            "id": b.name,
            "object": "model",
            "created": self.server.created,
            "owned_by": "llink",
            "kind": b.kind,
        }
        self._reply(200, {"object": "list", "data": [card]})

    def _chat(self) -> None:
        server = self.server
        self._require_json()
        job = parse_chat_request(self._read_json(), server.settings, server.backend.needs_foreign)
        future = server.batcher.submit(job)
        limit = server.settings.request_timeout_s
        try:
            done = future.result(timeout=limit)
        except FutureTimeout:
            future.cancel()  # still queued: the worker drops it instead of generating for nobody
            raise ApiError(
                504, f"no answer within the request timeout of {limit:g} s; retry later",
                "timeout", "server_error",
            ) from None
        self._reply(200, chat_response(server.backend.name, job, done))

    # --- bodies ----------------------------------------------------------------------
    def _content_length(self) -> int | None:
        raw = self.headers.get("Content-Length")
        if raw is None:
            return None
        try:
            n = int(raw)
        except ValueError:
            n = -1
        if n < 0:
            raise _bad(f"invalid Content-Length {raw!r}", "invalid_content_length")
        return n

    def _require_json(self) -> None:
        """Only ``Content-Type: application/json``: a web page cannot send that to another
        origin without a CORS preflight, which this server never grants (no CSRF)."""
        raw = self.headers.get("Content-Type")
        media = (raw or "").split(";", 1)[0].strip().lower()
        if media != JSON_TYPE:
            got = f"Content-Type {raw!r}" if raw else "no Content-Type"
            raise ApiError(
                415,
                f"the request has {got}; send the JSON body with 'Content-Type: {JSON_TYPE}'",
                "unsupported_media_type",
            )

    def _read_json(self) -> Any:
        # a body this server cannot frame stays on the socket: answer, then close (_reply)
        coding = self.headers.get("Transfer-Encoding")
        if coding is not None:
            raise _length_required(
                f"request bodies with Transfer-Encoding {coding!r} (chunked) are not supported; "
                "send the body with a Content-Length header"
            )
        n = self._content_length()
        if n is None:
            raise _length_required("a Content-Length header is required")
        limit = self.server.settings.max_body_bytes
        if n > limit:
            raise _too_large(n, limit)
        data = self._read_body(n)
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _bad(f"the body is not valid JSON: {exc}", "invalid_json") from None
        except RecursionError:
            raise _bad("the body is nested too deeply", "invalid_json") from None

    def _read_body(self, n: int) -> bytes:
        """Exactly ``n`` body bytes, within ``read_timeout_s`` in all; a client that declares
        more than it sends gets a 408 (after the timeout) or a 400 (when it closes)."""
        self._body_read = True
        timeout = self.server.settings.read_timeout_s
        deadline = time.monotonic() + timeout
        data = bytearray()
        try:
            while len(data) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self.connection.settimeout(left)
                chunk = self.rfile.read1(min(n - len(data), 1 << 16))
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            self.close_connection = True
            log.warning("%s %s %s: request body incomplete after %gs (%d of %d bytes); "
                        "answered 408", self.address_string(), self.command, self.path,
                        timeout, len(data), n)
            raise ApiError(
                408,
                f"the request body ended early: Content-Length is {n} bytes, {len(data)} "
                f"arrived within {timeout:g} s",
                "request_timeout",
                headers={"Connection": "close"},
            ) from None
        finally:
            self.connection.settimeout(timeout)
        if len(data) < n:
            self.close_connection = True
            raise _bad(
                f"the request body ended early: Content-Length is {n} bytes, the client sent "
                f"{len(data)}",
                "incomplete_body",
            )
        return bytes(data)

    def _unread_body(self) -> int:
        """Bytes of a request body nobody has read (0 once read or drained)."""
        if self._body_read or self.command in ("GET", "HEAD"):
            return 0
        if self.headers.get("Transfer-Encoding") is not None:
            return 0  # not framed by Content-Length: the connection is closed instead
        try:
            return self._content_length() or 0
        except ApiError:
            return 0

    def _discard(self, n: int) -> bool:
        """Read and drop ``n`` body bytes (at most ``_DRAIN_LIMIT``, within the read timeout);
        True when all of them were read, so that closing the socket does not reset the
        reply the client has not read yet."""
        self._body_read = True
        if n > _DRAIN_LIMIT:
            return False
        deadline = time.monotonic() + self.server.settings.read_timeout_s
        try:
            while n > 0 and time.monotonic() < deadline:
                self.connection.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = self.rfile.read1(min(n, 1 << 16))
                if not chunk:
                    return False
                n -= len(chunk)
        except OSError:
            return False
        return n == 0

    def _reply(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = dict(headers or {})
        if not self._body_read and self.headers.get("Transfer-Encoding") is not None:
            headers["Connection"] = "close"  # an unread chunked body: its bytes are no request
        if headers.get("Connection") == "close":
            self.close_connection = True
        unread = self._unread_body()
        try:
            if 0 < unread <= _SMALL_BODY and not self._discard(unread):
                self.close_connection = True
            large = unread > _SMALL_BODY
            if large:  # answer first, then read and drop the body, then close
                self.close_connection = True
                headers["Connection"] = "close"
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            if large:
                self.wfile.flush()
                self._discard(unread)
        except OSError as exc:  # the client went away
            log.info("could not answer %s %s: %s", self.command, self.path, exc)
            self.close_connection = True


def _length_required(message: str) -> ApiError:
    return ApiError(411, message, "length_required", headers={"Connection": "close"})


def _too_large(n: int, limit: int) -> ApiError:
    return _bad(f"the request body has {n} bytes; the limit is {limit}", "body_too_large",
                status=413)


# --------------------------------------------------------------------------- running
def load_backend(
    model_dir: str | None = None,
    hf_model: str | None = None,
    device: str = "auto",
    cache_dir: str | None = None,
    name: str | None = None,
) -> Backend:
    """The backend for an LLINK folder or a plain Hugging Face causal LM (exactly one)."""
    if (model_dir is None) == (hf_model is None):
        raise ServeError("give exactly one of an LLINK model folder or a Hugging Face model")
    if model_dir is not None:
        return LLINKBackend.load(model_dir, device, cache_dir, name)
    assert hf_model is not None
    return HFBackend.load(hf_model, device, cache_dir, name)


def api_key_from_env(var: str | None) -> str | None:
    """The API key held by environment variable ``var`` (None: no authentication)."""
    if not var:
        return None
    key = os.environ.get(var, "").strip()
    if not key:
        raise ServeError(f"--api-key-env {var}: the environment variable is unset or empty")
    return key


def make_server(
    backend: Backend, settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000
) -> LLINKServer:
    """A bound server (port 0: any free port); call ``serve_forever`` and ``close``."""
    try:
        return LLINKServer((host, port), backend, settings)
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc}") from exc


def run_server(server: LLINKServer) -> None:
    """Serve until Ctrl-C (or SIGTERM), then finish queued requests and stop."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    b = server.backend
    print(
        f"llink serve: {b.kind} model {b.name!r} on {server.url} "
        "(POST /v1/chat/completions; Ctrl-C to stop)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("llink serve: shutting down, finishing queued requests", flush=True)
    finally:
        server.close()
