"""``llink serve``: an OpenAI-compatible chat-completions server on FastAPI and uvicorn.

It serves a trained LLINK folder or a plain Hugging Face causal LM (a baseline).
Endpoints: ``GET /health``, ``GET /v1/models`` and ``POST /v1/chat/completions``
(OpenAPI page at ``/docs``). FastAPI parses and validates the requests
(:mod:`llink.inference.api`), limits body sizes and answers errors in OpenAI's
``{"error": {...}}`` shape; uvicorn speaks HTTP. Our own code is the LLINK request rules
(:mod:`~llink.inference.api`), the batcher (:mod:`~llink.inference.batcher`) and the two
backends (:mod:`~llink.inference.backends`); this module holds the HTTP side: the
responses, the app, the server and its start.

Streaming (``stream: true``): server-sent ``chat.completion.chunk`` events ending with
``data: [DONE]``, tokens as they are generated. Errors found before the first token are
ordinary JSON error responses; a later one ends the stream with an error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Future
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llink.inference.api import (
    ApiError,
    ChatJob,
    ChatRequest,
    ServeError,
    ServeSettings,
    chat_job,
    validation_error,
)
from llink.inference.backends import Backend, Completion, HFBackend, LLINKBackend
from llink.inference.batcher import Batcher

log = logging.getLogger(__name__)

JSON_TYPE = "application/json"
ENDPOINTS = "GET /health, GET /v1/models, POST /v1/chat/completions"


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
