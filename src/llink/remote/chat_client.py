"""A client for OpenAI-compatible chat-completions endpoints, on the standard library.

Used by the synthetic-data teacher (``llink data synth --endpoint``) and the LLM judge
(``llink eval judge --endpoint``): one prompt in, the first choice's text out, greedy,
with retries for overloaded or unreachable servers.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class EndpointError(RuntimeError):
    """A chat-completions endpoint failed, answered something unreadable, or cannot be
    used as configured (no model name, API key variable unset)."""


RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_RETRY_WAIT_S = 60.0


def chat_completions_url(url: str) -> str:
    """The full chat-completions URL from a full URL, a ``.../v1`` base or a server root."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


class ChatEndpoint:
    """An OpenAI-compatible chat-completions endpoint, over ``urllib.request``.

    Retries 429, 5xx and connection failures with exponential backoff (honouring a
    numeric ``Retry-After``); any other HTTP error raises :class:`EndpointError` at once.
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 1.0,
        max_tokens: int = 256,
        workers: int = 4,
    ) -> None:
        if not model:
            raise EndpointError("a chat-completions endpoint needs a model name (--model)")
        self.url = chat_completions_url(url)
        self.model = model
        self.api_key_env = api_key_env
        self.api_key = _api_key(api_key_env) if api_key_env else None
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.max_tokens, self.workers = max_tokens, max(1, workers)
        self.name = f"endpoint:{model}"

    def complete(self, prompts: list[str]) -> list[str]:
        if len(prompts) <= 1 or self.workers == 1:
            return [self._one(p) for p in prompts]
        with ThreadPoolExecutor(min(self.workers, len(prompts))) as pool:
            return list(pool.map(self._one, prompts))

    def _one(self, prompt: str) -> str:
        payload = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        return self._content(self._post(payload))

    def _request(self, payload: dict[str, Any]) -> urllib.request.Request:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(payload).encode("utf-8")
        return urllib.request.Request(self.url, data=data, headers=headers, method="POST")

    def _post(self, payload: dict[str, Any]) -> bytes:
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                with urllib.request.urlopen(self._request(payload), timeout=self.timeout) as r:
                    return r.read()
            except urllib.error.HTTPError as exc:
                detail = _body_excerpt(exc)
                if exc.code not in RETRY_STATUS or last:
                    raise EndpointError(self._http_message(exc.code, detail, attempt + 1)) from None
                wait = _retry_after(exc) or self.backoff * 2**attempt
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if last:
                    reason = getattr(exc, "reason", exc)
                    raise EndpointError(
                        f"cannot reach {self.url}: {reason} (after {attempt + 1} attempts)"
                    ) from None
                wait = self.backoff * 2**attempt
            time.sleep(min(wait, MAX_RETRY_WAIT_S))
        raise AssertionError("unreachable")  # pragma: no cover

    def _http_message(self, code: int, detail: str, attempts: int) -> str:
        head = f"{self.url} answered HTTP {code}"
        if code in (401, 403):
            hint = (
                f"check the API key in ${self.api_key_env}"
                if self.api_key_env
                else "pass --api-key-env VAR naming the variable that holds the API key"
            )
            return f"{head} (not authorised): {hint}. {detail}".strip()
        if code == 404:
            return f"{head} (not found): check the URL and the model name {self.model!r}. {detail}"
        if code in RETRY_STATUS:
            return f"{head}, gave up after {attempts} attempts. {detail}".strip()
        return f"{head}. {detail}".strip()

    def _content(self, body: bytes) -> str:
        try:
            obj = json.loads(body)
            content = obj["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            excerpt = body[:200].decode("utf-8", "replace")
            raise EndpointError(
                f"{self.url}: not a chat-completions response: {excerpt!r}"
            ) from None
        return content if isinstance(content, str) else ""


def _api_key(var: str) -> str:
    key = os.environ.get(var)
    if not key:
        raise EndpointError(f"environment variable {var} (--api-key-env) is not set or empty")
    return key


def _body_excerpt(exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return f"Server said: {text[:300]}" if text else ""


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    value = exc.headers.get("Retry-After") if exc.headers else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
