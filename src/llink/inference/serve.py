"""``llink serve``: an OpenAI-compatible chat-completions server on FastAPI and uvicorn.

It serves a trained LLINK folder or a plain Hugging Face causal LM (a baseline).
Endpoints: ``GET /health``, ``GET /v1/models`` and ``POST /v1/chat/completions``
(OpenAPI page at ``/docs``). FastAPI parses and validates the requests (pydantic models
below), limits body sizes and answers errors in OpenAI's ``{"error": {...}}`` shape;
uvicorn speaks HTTP. Our own code is the LLINK request rules, the batcher and the two
backends.

A LLINK request names its foreign text either as a ``<foreign>…</foreign>`` span in the
last user message (any other text of that message becomes a free-form question, task
``ask``) or in the extra field ``"llink": {"foreign", "task", "strict", "gate_boost",
"question"}``. The plain model answers ordinary chats; given foreign text, it gets the
same instruction LLINK would, with the text written out.

Batching: request handlers only validate and queue. One worker thread owns the model: it
takes up to ``max_batch`` queued requests (waiting at most ``batch_wait_ms`` for more),
groups those that can share a decoder batch (:attr:`ChatJob.batch_key`: same
``gate_boost``, ``max_tokens`` and decoding; prompts may differ) and runs one batched
generate call per group. A request that fails its own checks (too long for the context,
reserved tokens in its question) fails alone with a 4xx before the group runs; if a
batched call still fails, its requests are run again one at a time, so that one bad
request cannot take the others down.

Decoding: greedy unless ``temperature`` > 0; then generate samples at that temperature
and ``top_p`` (top-k off). Sampled requests batch with those of the same temperature and
top_p; a request with a ``seed`` runs in a generate call of its own under
``torch.manual_seed(seed)`` (RNG state restored afterwards), so its answer depends only
on the request itself, never on what else was queued. ``seed`` without sampling changes
nothing (greedy decoding draws no random numbers). Other OpenAI parameters are ignored;
``n`` > 1 is refused.

Streaming (``stream: true``): server-sent ``chat.completion.chunk`` events ending with
``data: [DONE]``. Tokens are streamed as they are generated, from inside the batched
generate call: a stopping criterion that never stops sees every row after every decoding
step and hands each streaming row its text so far to the request, whatever else shares
the batch (transformers' ``TextIteratorStreamer`` takes one row only, so it does not fit
a batcher). The deltas are the final, stripped answer in pieces: white space at either end
and an incomplete character wait for the next token. Errors found before the first token
are ordinary JSON error responses; a later one ends the stream with an error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llink.config import MAX_GATE_BOOST
from llink.method.inject import TASKS, instruction_text

log = logging.getLogger("llink.inference.serve")

VALID_TASKS = (*TASKS, "ask")
FOREIGN_SPAN = re.compile(r"<foreign>(.*?)</foreign>", re.DOTALL)
JSON_TYPE = "application/json"
ENDPOINTS = "GET /health, GET /v1/models, POST /v1/chat/completions"


class ServeError(RuntimeError):
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
    request_timeout_s: float = 300.0  # until the answer (streaming: its first token)
    max_pending: int = 256
    read_timeout_s: float = 30.0  # how long a client may take to send its request body
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


# --------------------------------------------------------------------------- request models
class TextPart(BaseModel):
    """A text part of a message's content list (the only kind served)."""

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message; fields other than role and content (name, tool_calls, ...) are ignored."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class LLINKFields(BaseModel):
    """The extra ``llink`` object of a request (LLINK's own options)."""

    model_config = ConfigDict(extra="forbid")

    foreign: str | None = None
    task: str | None = None
    strict: StrictBool = False
    gate_boost: float = Field(1.0, ge=0.0, le=MAX_GATE_BOOST, strict=True, allow_inf_nan=False)
    question: str | None = None


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class ChatRequest(BaseModel):
    """The body of ``POST /v1/chat/completions``; unknown OpenAI parameters are ignored."""

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0, strict=True)
    top_p: float | None = Field(None, gt=0.0, le=1.0, strict=True)
    seed: StrictInt | None = Field(None, ge=-(1 << 63), lt=1 << 64)
    n: Literal[1] | None = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    llink: LLINKFields | None = None


_FIELD_CODES = {
    "llink": "invalid_llink",
    "max_tokens": "max_tokens_out_of_range",
    "max_completion_tokens": "max_tokens_out_of_range",
    "temperature": "invalid_temperature",
    "top_p": "invalid_top_p",
    "seed": "invalid_seed",
    "n": "unsupported_n",
    "stream": "invalid_stream",
    "stream_options": "invalid_stream",
    "model": "invalid_model",
}


def _error_code(loc: tuple[Any, ...], kind: str) -> str:
    if not loc:
        return "invalid_body"
    head = loc[0]
    if head == "messages":
        if len(loc) == 1:
            return "missing_messages" if kind == "missing" else "empty_messages"
        return "invalid_content" if loc[2:3] == ("content",) else "invalid_message"
    if head == "llink" and len(loc) > 1 and loc[1] in ("gate_boost", "strict"):
        return f"invalid_{loc[1]}"
    return _FIELD_CODES.get(str(head), "invalid_request")


def _where(loc: Sequence[Any]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def validation_error(errors: Sequence[Any], prefix: int = 0) -> ApiError:
    """pydantic's (or FastAPI's) first validation error as an :class:`ApiError`: the code
    names the field, the message is pydantic's. ``prefix`` location parts are dropped
    (FastAPI's start with ``"body"``)."""
    err = errors[0]
    if err["type"] == "json_invalid":
        return _bad(f"the body is not valid JSON: {err.get('ctx', {}).get('error', '')}",
                    "invalid_json")
    loc = tuple(err["loc"])[prefix:]
    code = _error_code(loc, err["type"])
    fixed = {
        "invalid_body": "the request body must be a JSON object",
        "missing_messages": "'messages' is required: a non-empty list of {role, content}",
        "empty_messages": "'messages' must be a non-empty list of {role, content}",
        "invalid_content": f"{_where(loc[:3])} must be a string or a list of text parts",
        "unsupported_n": "only n=1 is supported",
    }
    if code in fixed:
        return _bad(fixed[code], code)
    if err["type"] == "extra_forbidden":
        return _bad(f"unknown field {_where(loc)}; known: {', '.join(LLINKFields.model_fields)}",
                    code)
    return _bad(f"{_where(loc)}: {err['msg']}", code)


# --------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class ChatJob:
    """A validated chat request: the conversation, decoding and, for LLINK, the task."""

    messages: tuple[tuple[str, str], ...]  # (role, text)
    max_tokens: int
    foreign: str | None = None
    task: str = "translate_to_english"
    strict: bool = False
    gate_boost: float = 1.0
    question: str | None = None
    temperature: float | None = None  # set (> 0) only when sampling
    top_p: float | None = None
    seed: int | None = None
    stream: bool = False

    @property
    def sampled(self) -> bool:
        return self.temperature is not None

    @property
    def batch_key(self) -> Hashable:
        """Jobs with equal keys can share one batched generate call: same gate_boost,
        max_tokens and decoding. A seeded sampled job's key is its own: it runs alone."""
        decoding = (self.temperature, self.top_p) if self.sampled else None
        alone = id(self) if self.sampled and self.seed is not None else None
        return (self.gate_boost, self.max_tokens, decoding, alone)

    def instruction(self) -> str:
        """The LLINK user message with the foreign text written out (plain models)."""
        assert self.foreign is not None
        return instruction_text(self.task, self.foreign, self.strict, self.question)


def parse_chat_request(body: Any, settings: ServeSettings, needs_foreign: bool) -> ChatJob:
    """Validate a chat-completions body (decoded JSON); raise :class:`ApiError`."""
    try:
        req = ChatRequest.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc.errors(include_url=False)) from None
    return chat_job(req, settings, needs_foreign)


def chat_job(req: ChatRequest, settings: ServeSettings, needs_foreign: bool) -> ChatJob:
    """The job of a validated request: what pydantic cannot check (foreign text, task,
    the server's limits); raise :class:`ApiError` with a clear message."""
    messages = tuple((m.role, m.text) for m in req.messages)
    fields = req.llink or LLINKFields()
    last_user = next((text for role, text in reversed(messages) if role == "user"), None)
    if last_user is None:
        raise _bad("messages need at least one message with role 'user'", "missing_user_message")
    foreign, question = _foreign_and_question(last_user, fields)
    max_tokens = req.max_tokens if req.max_tokens is not None else req.max_completion_tokens
    max_tokens = settings.default_max_tokens if max_tokens is None else max_tokens
    if max_tokens > settings.max_tokens:
        raise _bad(f"max_tokens must be an integer from 1 to {settings.max_tokens}",
                   "max_tokens_out_of_range")
    sampled = bool(req.temperature)  # None or 0: greedy
    decoding = {
        "temperature": req.temperature if sampled else None,
        "top_p": req.top_p if sampled and req.top_p is not None and req.top_p < 1 else None,
        "seed": req.seed if sampled else None,
        "stream": bool(req.stream),
    }
    if foreign is None:
        if needs_foreign:
            raise _bad(
                "no foreign text: put it in <foreign>...</foreign> in the last user "
                "message, or in the field llink.foreign",
                "missing_foreign",
            )
        return ChatJob(messages, max_tokens, **decoding)
    _check_foreign(foreign, settings.max_foreign_chars)
    task = _task(fields.task, question)
    return ChatJob(messages, max_tokens, foreign.strip(), task, fields.strict,
                   fields.gate_boost, question, **decoding)


def _foreign_and_question(text: str, fields: LLINKFields) -> tuple[str | None, str | None]:
    """Foreign text and question from a ``<foreign>`` span or the llink fields."""
    spans = FOREIGN_SPAN.findall(text)
    question = fields.question or None
    if not spans:
        if "<foreign>" in text:
            raise _bad("unclosed <foreign> span in the last user message", "invalid_foreign")
        return fields.foreign, question
    if len(spans) > 1:
        raise _bad("the last user message has more than one <foreign> span", "invalid_foreign")
    if fields.foreign is not None:
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


def _task(task: str | None, question: str | None) -> str:
    task = task or ("ask" if question else "translate_to_english")
    if task not in VALID_TASKS:
        raise _bad(f"unknown task {task!r}; valid tasks: {', '.join(VALID_TASKS)}", "unknown_task")
    if task == "ask" and not question:
        raise _bad(
            "task 'ask' needs a question (llink.question or text next to the <foreign> span)",
            "missing_question",
        )
    return task


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


#: ``on_text(row, text_so_far)``: a streaming row's answer so far, after each decoding step
OnText = Callable[[int, str], None]


class Backend(Protocol):
    """A model behind the server. ``prepare`` and ``generate`` run on the worker thread;
    ``prepare`` raises :class:`ApiError` for a job that cannot run."""

    kind: str
    name: str
    needs_foreign: bool

    def describe(self) -> dict[str, Any]: ...

    def prepare(self, job: ChatJob) -> Prepared: ...

    def generate(
        self, jobs: Sequence[ChatJob], prepared: Sequence[Prepared], on_text: OnText | None = None
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


def decoding_kwargs(job: ChatJob) -> dict[str, Any]:
    """generate() arguments of a job's decoding: greedy, or sampling at its temperature
    and top_p with top-k off (a model's generation config may set a top_k)."""
    if not job.sampled:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": job.temperature, "top_p": job.top_p or 1.0,
            "top_k": 0}


@contextlib.contextmanager
def seeded(seed: int | None, device: Any) -> Iterator[None]:
    """Within: the random number generators seeded with ``seed`` (None: untouched); the
    previous RNG state comes back afterwards."""
    if seed is None:
        yield
        return
    import torch

    on_cpu = device.type == "cpu"
    with torch.random.fork_rng(devices=[] if on_cpu else [device],
                               device_type="cuda" if on_cpu else device.type):
        torch.manual_seed(seed)
        yield


class _Steps:
    """A stopping criterion that never stops. After each decoding step it keeps the ids
    generated so far (``ids``, the prompt left out) and hands each streaming row its text
    so far to ``on_text`` (once more only when the row has a new token)."""

    def __init__(self, start: int, streaming: Sequence[int], text: Callable[[list[int]], str],
                 eos: set[int], on_text: OnText | None) -> None:
        self.start, self.text, self.eos, self.on_text = start, text, eos, on_text
        self.streaming = list(streaming) if on_text is not None else []
        self.ids: Any = None
        self._seen: dict[int, int] = {}

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        self.ids = input_ids[:, self.start:]
        if self.streaming:
            for i, row in zip(self.streaming, self.ids[self.streaming].tolist(), strict=True):
                n, _ = _generated(row, self.eos)
                if self._seen.get(i) != n:
                    self._seen[i] = n
                    self.on_text(i, self.text(row[:n]))  # type: ignore[misc]
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def rows(self, n: int) -> list[list[int]]:
        return self.ids.tolist() if self.ids is not None else [[] for _ in range(n)]


def _streaming(jobs: Sequence[ChatJob]) -> list[int]:
    return [i for i, j in enumerate(jobs) if j.stream]


class LLINKBackend:
    """A trained LLINK model: slots from the foreign text.

    Loaded with its LoRA merged into the decoder (:meth:`load`); the model's prefix cache
    is turned on (the prompt template's KV is computed once per task), and the slots of
    the last ``slot_cache_size`` foreign texts are kept (:class:`SlotCache`), so a
    follow-up question about the same text skips the encoder. ``literal_bias`` > 0 pushes
    each foreign text's literals into its answer (:class:`~llink.method.literals.LiteralBias`)."""

    kind = "llink"
    needs_foreign = True

    def __init__(self, model: Any, name: str, slot_cache_size: int = 256,
                 literal_bias: float = 0.0) -> None:
        from llink.inference.slot_cache import SlotCache

        self.model = model.eval()
        self.name = name
        self.literal_bias = literal_bias
        if model.prefix_cache is None:
            model.use_prefix_cache()
        self.slot_cache = SlotCache(slot_cache_size)
        tok = model.tokenizer
        self._reserved = set(model.decoder.reserved.ids)
        self._reserved_strings = tok.convert_ids_to_tokens(model.decoder.reserved.ids)
        # reserved tokens a prompt holds by itself (its slot span)
        self._span_reserved = self._count_reserved(model.prompt_ids("translate_to_english"))

    @classmethod
    def load(
        cls,
        folder: str,
        device: str = "auto",
        cache_dir: str | None = None,
        name: str | None = None,
        slot_cache_size: int = 256,
        literal_bias: float = 0.0,
    ) -> LLINKBackend:
        from llink.backbones.loading import resolve_device
        from llink.method.model import load_llink

        model = load_llink(folder, device=resolve_device(device), cache_dir=cache_dir,
                           merge_lora=True)
        return cls(model, name or Path(folder).resolve().name, slot_cache_size, literal_bias)

    def describe(self) -> dict[str, Any]:
        m = self.model
        return {
            "encoder": m.encoder.name,
            "decoder": m.decoder.name,
            "num_slots": m.num_slots,
            "device": str(m.device),
            "tasks": list(VALID_TASKS),
            "lora": "merged" if m.lora_merged else ("adapters" if m.has_lora else "none"),
            "prefix_cache": m.prefix_cache.stats() if m.prefix_cache is not None else None,
            "slot_cache": self.slot_cache.stats(),
        }

    def _count_reserved(self, ids: list[int]) -> int:
        return sum(t in self._reserved for t in ids)

    def _prompt(self, job: ChatJob, num_slots: int | None = None) -> list[int]:
        """The prompt :meth:`LLINK.generate` builds: the model's literals of the foreign
        text and, for models whose texts take fewer than K slots, that many slots."""
        m = self.model
        assert job.foreign is not None
        return m.prompt_ids(job.task, job.strict, job.question, num_slots=num_slots,
                            literals=m.literals_of(job.foreign))

    def prepare(self, job: ChatJob) -> Prepared:
        prompt = self._prompt(job)  # K slots: the longest this prompt can be
        if self._count_reserved(prompt) != self._span_reserved:
            found = [s for s in self._reserved_strings if s in (job.question or "")]
            raise _bad(
                f"the question contains {', '.join(found) or 'reserved tokens'}: the model "
                "reserves these for its slot span; remove them from the question",
                "reserved_token",
            )
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

    def prompts_and_slots(self, jobs: Sequence[ChatJob], prepared: Sequence[Prepared]
                          ) -> tuple[list[list[int]], Any]:
        """The jobs' prompt ids (each job its own task) and their slots [B, K, d_dec] (one
        encoder pass; all jobs share the first one's gate_boost, as a batch does)."""
        m = self.model
        prompts = [p.prompt for p in prepared]
        slots, counts = self.slot_cache.slots(m, [j.foreign for j in jobs], jobs[0].gate_boost)
        if any(k != m.num_slots for k in counts):
            prompts = [self._prompt(j, k) for j, k in zip(jobs, counts, strict=True)]
        return prompts, slots

    def generate(self, jobs: Sequence[ChatJob], prepared: Sequence[Prepared],
                 on_text: OnText | None = None) -> list[Completion]:
        import torch
        from transformers import StoppingCriteriaList

        m, tok = self.model, self.model.tokenizer
        eos = {int(tok.eos_token_id)}
        # generating from embeddings, the ids seen by the criterion are the new tokens only
        steps = _Steps(0, _streaming(jobs), lambda ids: tok.decode(ids, skip_special_tokens=True),
                       eos, on_text)
        first = jobs[0]
        from llink.method.literals import with_literal_bias

        decoding = with_literal_bias(decoding_kwargs(first), tok,
                                     [j.foreign or "" for j in jobs], self.literal_bias)
        with torch.no_grad(), seeded(first.seed, m.device):
            prompts, slots = self.prompts_and_slots(jobs, prepared)
            texts = m.generate_from_ids(
                prompts,
                slots,
                max_new_tokens=first.max_tokens,
                prefix=m.template_ids(first.task, first.strict, first.question),
                stopping_criteria=StoppingCriteriaList([steps]),
                **decoding,
            )
        out = []
        rows = steps.rows(len(jobs))
        for text, row, prompt, p in zip(texts, rows, prompts, prepared, strict=True):
            n, reason = _generated(row, eos)
            out.append(Completion(text, len(prompt), n, reason, p.warnings))
        return out


class HFBackend:
    """A plain Hugging Face causal LM with its chat template.

    Like the LLINK backend it reuses the KV of the template's opening (a default system
    turn and the user turn's header, what every one-turn chat starts with): computed once
    (``prefix_cache_size`` prefixes kept; 0: off), copied into each batch."""

    kind = "hf"
    needs_foreign = False

    def __init__(self, model: Any, tokenizer: Any, name: str, prefix_cache_size: int = 16
                 ) -> None:
        from llink.backbones.prefix_cache import PrefixCache

        self.model = model.eval()
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.name = name
        self.templated = bool(getattr(tokenizer, "chat_template", None))
        eos = model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {int(e) for e in [*eos, tokenizer.eos_token_id] if e is not None}
        self.prefix_cache = PrefixCache(prefix_cache_size) if prefix_cache_size else None
        self.template_head = self._template_head()

    def _template_head(self) -> list[int]:
        """The tokens every one-turn chat's prompt starts with (two chats' common start)."""
        from llink.backbones.prefix_cache import shared_length

        a, b = (self.prepare(ChatJob((("user", text),), 1)).prompt for text in ("A", "Z"))
        return a[: shared_length(a, [b])]

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

        from llink.backbones.loading import resolve_device
        from llink.backbones.offline import resolve_model

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
        cache = self.prefix_cache.stats() if self.prefix_cache is not None else None
        return {"device": str(self.model.device), "chat_template": self.templated,
                "prefix_cache": cache, "template_head_tokens": len(self.template_head)}

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

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate(self, jobs: Sequence[ChatJob], prepared: Sequence[Prepared],
                 on_text: OnText | None = None) -> list[Completion]:
        import torch
        from transformers import StoppingCriteriaList

        from llink.backbones.prefix_cache import cache_argument, prefill, prefix_cached_batch

        pad = int(self.tokenizer.pad_token_id)
        dev = self.model.device
        embed = self.model.get_input_embeddings()
        ids, mask, kv = prefix_cached_batch(  # the head's KV comes from the cache
            [p.prompt for p in prepared], pad, self.prefix_cache, self.template_head,
            lambda head: prefill(self.model.get_decoder(), embed(head.to(dev))))
        cached: dict[str, Any] = {} if kv is None else {cache_argument(self.model): kv}
        steps = _Steps(ids.shape[1], _streaming(jobs), self._text, self.eos_ids, on_text)
        with torch.no_grad(), seeded(jobs[0].seed, dev):
            out = self.model.generate(
                input_ids=ids.to(dev),
                attention_mask=mask.to(dev),
                **cached,
                max_new_tokens=jobs[0].max_tokens,
                num_beams=1,
                pad_token_id=pad,
                stopping_criteria=StoppingCriteriaList([steps]),
                **decoding_kwargs(jobs[0]),
            )
        completions = []
        for row, p in zip(out[:, ids.shape[1]:].tolist(), prepared, strict=True):
            n, reason = _generated(row, self.eos_ids)
            completions.append(Completion(self._text(row[:n]).strip(), len(p.prompt), n, reason))
        return completions


# --------------------------------------------------------------------------- batching
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


# --------------------------------------------------------------------------- responses
def _llink_info(job: ChatJob, done: Completion) -> dict[str, Any]:
    return {"task": job.task, "strict": job.strict, "gate_boost": job.gate_boost,
            "warnings": done.warnings}


def _usage(done: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


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
        "usage": _usage(done),
    }
    if job.foreign is not None:
        resp["llink"] = _llink_info(job, done)
    return resp


_END = object()  # the job's future is done: no more deltas


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _chunks(name: str, job: ChatJob, first: Any, queue: asyncio.Queue, future: Future,
                  include_usage: bool) -> AsyncIterator[str]:
    """The server-sent events of a streamed answer: a role chunk, the deltas as they come,
    a chunk with the finish reason (and ``llink`` info), the usage if asked, ``[DONE]``."""
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": name}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    yield _sse(chunk({"role": "assistant", "content": ""}))
    item = first
    while item is not _END:
        yield _sse(chunk({"content": item}))
        item = await queue.get()
    try:
        done: Completion = future.result()
    except ApiError as err:
        yield _sse(err.body())  # OpenAI clients raise this as an APIError
        return
    last = chunk({}, done.finish_reason)
    if job.foreign is not None:
        last["llink"] = _llink_info(job, done)
    yield _sse(last)
    if include_usage:
        yield _sse({**base, "choices": [], "usage": _usage(done)})
    yield "data: [DONE]\n\n"


# --------------------------------------------------------------------------- HTTP
class _Limits:
    """ASGI middleware around the FastAPI app: a declared body over the limit gets a 413 at
    once (uvicorn drops the unread body); a body not complete within ``read_timeout_s``
    gets a 408 and the connection is closed (uvicorn waits for a body as long as the client
    keeps the connection open). Bodies without a declared length are limited by FastAPI's
    ``max_body_size``; FastAPI answers a declared one itself only in plain text."""

    def __init__(self, app: ASGIApp, settings: ServeSettings) -> None:
        self.app, self.limit, self.seconds = app, settings.max_body_bytes, settings.read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"").decode()
        if declared.isdigit() and int(declared) > self.limit:
            err = ApiError(413, f"the request body has {declared} bytes; the limit is "
                           f"{self.limit}", "body_too_large")
            await JSONResponse(err.body(), err.status)(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.seconds
        got, complete = 0, False

        async def receive_in_time() -> Message:
            nonlocal got, complete
            if complete:
                return await receive()  # waiting for a disconnect is not limited
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                log.warning("%s %s: request body incomplete after %gs (%d of %s bytes); "
                            "answered 408", scope["method"], scope["path"], self.seconds, got,
                            declared or "?")
                raise HTTPException(408, f"the request body ended early: Content-Length is "
                                    f"{declared or '?'} bytes, {got} arrived within "
                                    f"{self.seconds:g} s", headers={"Connection": "close"}
                                    ) from None
            got += len(message.get("body", b""))
            complete = message["type"] != "http.request" or not message.get("more_body")
            return message

        await self.app(scope, receive_in_time, send)


_BEARER = HTTPBearer(auto_error=False)


def create_app(server: LLINKServer) -> FastAPI:
    """The FastAPI application of ``server`` (its backend, settings and batcher)."""
    settings, backend, batcher = server.settings, server.backend, server.batcher
    app = FastAPI(title="llink serve", summary="OpenAI-compatible chat completions (LLINK)",
                  max_body_size=settings.max_body_bytes)

    async def authorize(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    ) -> None:
        key = settings.api_key
        if key is None:
            return
        if creds is None or not hmac.compare_digest(creds.credentials.encode(), key.encode()):
            raise ApiError(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                "invalid_api_key",
                "authentication_error",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def json_request(request: Request) -> None:
        """Only ``Content-Type: application/json``: a web page cannot send that to another
        origin without a CORS preflight, which this server never grants (no CSRF)."""
        raw = request.headers.get("content-type")
        if (raw or "").split(";", 1)[0].strip().lower() != JSON_TYPE:
            got = f"Content-Type {raw!r}" if raw else "no Content-Type"
            raise ApiError(
                415,
                f"the request has {got}; send the JSON body with 'Content-Type: {JSON_TYPE}'",
                "unsupported_media_type",
            )
        if "content-length" not in request.headers and "transfer-encoding" not in request.headers:
            raise ApiError(411, "a Content-Length header is required", "length_required",
                           headers={"Connection": "close"})

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await api_error(request, validation_error(exc.errors(), prefix=1))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 404:
            err = ApiError(404, f"no endpoint {request.url.path}; endpoints: {ENDPOINTS}",
                           "not_found", "not_found_error")
        elif exc.status_code == 405:
            err = ApiError(405, f"{request.method} is not allowed on {request.url.path}; use "
                           f"{headers.get('Allow', '')}", "method_not_allowed")
        elif exc.status_code == 413:  # a body of undeclared length (chunked)
            err = ApiError(413, f"the request body is larger than the limit of "
                           f"{settings.max_body_bytes} bytes", "body_too_large")
        elif exc.status_code == 408:
            err = ApiError(408, str(exc.detail), "request_timeout")
        else:
            err = ApiError(exc.status_code, str(exc.detail), "http_error")
        err.headers = headers
        return await api_error(request, err)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        return await api_error(request, ApiError(
            500, "internal server error (see the server log)", "internal_error", "server_error"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "kind": backend.kind, "model": backend.name,
                **backend.describe(), "pending": batcher.pending,
                "generate_calls": batcher.generate_calls, "completed": batcher.completed}

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models() -> dict[str, Any]:
        card = {"id": backend.name, "object": "model", "created": server.created,
                "owned_by": "llink", "kind": backend.kind}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize), Depends(json_request)],
              response_model=None)
    async def chat(req: ChatRequest) -> JSONResponse | StreamingResponse:
        job = chat_job(req, settings, backend.needs_foreign)
        limit = settings.request_timeout_s
        if not job.stream:
            future = batcher.submit(job)
            try:
                done = await asyncio.wait_for(asyncio.wrap_future(future), limit)
            except TimeoutError:
                future.cancel()  # still queued: the worker drops it instead of generating
                raise _timeout(limit) from None
            return JSONResponse(chat_response(backend.name, job, done))
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()

        def emit(item: Any) -> None:  # from the worker thread
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody listens
                loop.call_soon_threadsafe(queue.put_nowait, item)

        future = batcher.submit(job, emit)
        future.add_done_callback(lambda _: emit(_END))
        try:
            first = await asyncio.wait_for(queue.get(), limit)
        except TimeoutError:
            future.cancel()
            raise _timeout(limit) from None
        if first is _END:
            future.result()  # an error before the first token: a plain error response
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(
            _chunks(backend.name, job, first, queue, future, include_usage),
            media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


def _timeout(limit: float) -> ApiError:
    return ApiError(504, f"no answer within the request timeout of {limit:g} s; retry later",
                    "timeout", "server_error")


class LLINKServer:
    """A bound socket, the FastAPI app and its uvicorn server; ``generate_calls`` counts
    the generate calls run. Serve with :meth:`serve_forever` (blocks) or :meth:`start`
    (a background thread); :meth:`close` finishes queued requests and stops."""

    def __init__(self, backend: Backend, settings: ServeSettings, host: str = "127.0.0.1",
                 port: int = 8000, backlog: int | None = None) -> None:
        import uvicorn

        # the listen queue must hold at least as many connections as the batcher queues
        # requests, or the kernel drops connections when many clients connect at once
        self.listen_backlog = backlog or max(settings.listen_backlog, settings.max_pending)
        try:
            self.socket = socket.create_server((host, port), backlog=self.listen_backlog)
        except OSError as exc:
            raise ServeError(f"cannot listen on {host}:{port}: {exc}") from exc
        self.backend = backend
        self.settings = settings
        self.created = int(time.time())
        self.batcher = Batcher(
            backend, settings.max_batch, settings.batch_wait_ms / 1000, settings.max_pending
        )
        self.app = create_app(self)
        # h11 and asyncio: the protocol the tests exercise, whatever else is installed
        config = uvicorn.Config(_Limits(self.app, settings), host=host, port=self.server_address[1], http="h11",
                                loop="asyncio", lifespan="off", log_config=None,
                                backlog=self.listen_backlog)
        self._uvicorn = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def server_address(self) -> tuple[str, int]:
        host, port = self.socket.getsockname()[:2]
        return host, port

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://{host}:{port}"

    @property
    def generate_calls(self) -> int:
        return self.batcher.generate_calls

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown` (or, in the main thread, Ctrl-C / SIGTERM)."""
        self._uvicorn.run(sockets=[self.socket])

    def start(self) -> LLINKServer:
        """Serve from a background thread; return once the server accepts requests."""
        self._thread = threading.Thread(target=self.serve_forever, name="llink-serve",
                                        daemon=True)
        self._thread.start()
        while not self._uvicorn.started and self._thread.is_alive():
            time.sleep(0.01)
        if not self._uvicorn.started:
            raise ServeError("the server did not start (see the log)")
        return self

    def shutdown(self) -> None:
        """Stop accepting connections, answer the queued requests (a hold is lifted), and
        wait for the serving thread started by :meth:`start`."""
        self._uvicorn.should_exit = True
        self.batcher.close(timeout=self.settings.request_timeout_s)
        if self._thread is not None:
            self._thread.join(self.settings.request_timeout_s)

    def close(self) -> None:
        """:meth:`shutdown`, then release the socket."""
        if self._closed:
            return
        self._closed = True
        self.shutdown()
        self.socket.close()

    def __enter__(self) -> LLINKServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- running
#: Engines that run the decoder: transformers in this process, or a vLLM engine
ENGINES = ("transformers", "vllm")


def load_backend(
    model_dir: str | None = None,
    hf_model: str | None = None,
    device: str = "auto",
    cache_dir: str | None = None,
    name: str | None = None,
    engine: str = "transformers",
    slot_cache_size: int = 256,
    literal_bias: float = 0.0,
) -> Backend:
    """The backend for an LLINK folder or a plain Hugging Face causal LM (exactly one);
    ``engine="vllm"`` serves an ``llink export`` folder with a vLLM engine
    (:mod:`llink.inference.vllm_engine`). An LLINK backend keeps the slots of the last
    ``slot_cache_size`` foreign texts (0: none) and decodes with ``literal_bias`` (the
    vLLM engine without it)."""
    if (model_dir is None) == (hf_model is None):
        raise ServeError("give exactly one of an LLINK model folder or a Hugging Face model")
    if engine not in ENGINES:
        raise ServeError(f"unknown engine {engine!r}; engines: {', '.join(ENGINES)}")
    if engine == "vllm":
        from llink.inference.vllm_engine import VLLMBackend, import_vllm

        import_vllm()  # a missing vLLM is the first thing said
        if model_dir is None:
            raise ServeError("--engine vllm serves an LLINK export (--model OUT, from `llink "
                             "export`); serve a plain model with vLLM's own `vllm serve`")
        return VLLMBackend.load(model_dir, device, cache_dir, name,
                                slot_cache_size=slot_cache_size)
    if model_dir is not None:
        return LLINKBackend.load(model_dir, device, cache_dir, name, slot_cache_size,
                                 literal_bias)
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
    backend: Backend, settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000,
    backlog: int | None = None,
) -> LLINKServer:
    """A bound server (port 0: any free port): ``with server:`` serves from a thread;
    :func:`run_server` serves in the foreground."""
    return LLINKServer(backend, settings, host, port, backlog)


def run_server(server: LLINKServer) -> None:
    """Serve until Ctrl-C (or SIGTERM), then finish queued requests and stop."""
    import signal

    if threading.current_thread() is threading.main_thread():
        # uvicorn handles the signal, then raises it again once it has stopped
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
        pass
    finally:
        print("llink serve: stopped", flush=True)
        server.close()
