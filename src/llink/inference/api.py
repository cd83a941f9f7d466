"""What a request to ``llink serve`` may say: the OpenAI chat-completions request models
(pydantic), the server's limits (:class:`ServeSettings`), the errors answered in OpenAI's
``{"error": {...}}`` shape, and :class:`ChatJob`, a validated request.

A LLINK request names its foreign text either as a ``<foreign>…</foreign>`` span in the
last user message (any other text of that message becomes a free-form question, task
``ask``) or in the extra field ``"llink": {"foreign", "task", "strict", "gate_boost",
"question"}``. The plain model answers ordinary chats; given foreign text, it gets the
same instruction LLINK would, with the text written out.

Decoding: greedy unless ``temperature`` > 0; then generate samples at that temperature
and ``top_p`` (top-k off). Sampled requests batch with those of the same temperature and
top_p; a request with a ``seed`` runs in a generate call of its own under
``torch.manual_seed(seed)`` (RNG state restored afterwards), so its answer depends only
on the request itself, never on what else was queued. ``seed`` without sampling changes
nothing (greedy decoding draws no random numbers). Other OpenAI parameters are ignored;
``n`` > 1 is refused.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from llink.config import MAX_GATE_BOOST
from llink.method.inject import TASKS, instruction_text

VALID_TASKS = (*TASKS, "ask")
FOREIGN_SPAN = re.compile(r"<foreign>(.*?)</foreign>", re.DOTALL)


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


def bad_request(message: str, code: str, status: int = 400) -> ApiError:
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
        return bad_request(f"the body is not valid JSON: {err.get('ctx', {}).get('error', '')}",
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
        return bad_request(fixed[code], code)
    if err["type"] == "extra_forbidden":
        known = ", ".join(LLINKFields.model_fields)
        return bad_request(f"unknown field {_where(loc)}; known: {known}", code)
    return bad_request(f"{_where(loc)}: {err['msg']}", code)


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
        raise bad_request("messages need at least one message with role 'user'",
                          "missing_user_message")
    foreign, question = _foreign_and_question(last_user, fields)
    max_tokens = req.max_tokens if req.max_tokens is not None else req.max_completion_tokens
    max_tokens = settings.default_max_tokens if max_tokens is None else max_tokens
    if max_tokens > settings.max_tokens:
        raise bad_request(f"max_tokens must be an integer from 1 to {settings.max_tokens}",
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
            raise bad_request(
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
            raise bad_request("unclosed <foreign> span in the last user message", "invalid_foreign")
        return fields.foreign, question
    if len(spans) > 1:
        raise bad_request("the last user message has more than one <foreign> span",
                          "invalid_foreign")
    if fields.foreign is not None:
        raise bad_request(
            "foreign text given twice: in a <foreign> span and in llink.foreign", "invalid_foreign"
        )
    rest = FOREIGN_SPAN.sub(" ", text).strip()
    return spans[0], question or rest or None


def _check_foreign(foreign: str, limit: int) -> None:
    text = foreign.strip()
    if not text:
        raise bad_request("the foreign text is empty or only white space", "empty_foreign")
    if len(text) > limit:
        raise bad_request(
            f"the foreign text has {len(text)} characters; the limit is {limit}",
            "foreign_too_large",
            status=413,
        )


def _task(task: str | None, question: str | None) -> str:
    task = task or ("ask" if question else "translate_to_english")
    if task not in VALID_TASKS:
        raise bad_request(f"unknown task {task!r}; valid tasks: {', '.join(VALID_TASKS)}",
                          "unknown_task")
    if task == "ask" and not question:
        raise bad_request(
            "task 'ask' needs a question (llink.question or text next to the <foreign> span)",
            "missing_question",
        )
    return task


