"""``llink serve`` driven by the official ``openai`` client over HTTP on 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import openai
import pytest

from llink.inference.api import ChatJob
from llink.inference.backends import Completion, HFBackend, LLINKBackend, Prepared

from .test_serve import FOREIGN, LIMITS, serving, tiny_llink  # noqa: F401 (module fixture)

KEY = "k3y"


@pytest.fixture(scope="module")
def server(tiny_llink):
    with serving(LLINKBackend(tiny_llink, "tiny-llink"), api_key=KEY, batch_wait_ms=5,
                 **LIMITS) as srv:
        yield srv


def client(srv: Any, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{srv.url}/v1", api_key=key, max_retries=0, timeout=60)


def ask(text: str, question: str = "") -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{question} <foreign>{text}</foreign>".strip()}]


def test_models_and_chat_completion(server, tiny_llink):
    c = client(server)
    assert [m.id for m in c.models.list()] == ["tiny-llink"]
    resp = c.chat.completions.create(model="tiny-llink", messages=ask(FOREIGN[0]), max_tokens=8)
    assert resp.object == "chat.completion" and resp.model == "tiny-llink"
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert choice.message.content == tiny_llink.generate([FOREIGN[0]], max_new_tokens=8)[0]
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    # the LLINK options travel in extra_body
    resp = c.chat.completions.create(
        model="tiny-llink", messages=[{"role": "user", "content": ""}], max_tokens=6,
        extra_body={"llink": {"foreign": FOREIGN[1], "task": "title_generation"}})
    want = tiny_llink.generate([FOREIGN[1]], task="title_generation", max_new_tokens=6)[0]
    assert resp.choices[0].message.content == want
    assert resp.model_extra["llink"]["task"] == "title_generation"


def test_streamed_chat_completion(server):
    """The pieces of a streamed answer add up to the answer without streaming; the last
    chunk has the finish reason, the usage chunk (include_usage) the same token counts."""
    c = client(server)
    messages = ask(FOREIGN[2], "What happens?")
    plain = c.chat.completions.create(model="m", messages=messages, max_tokens=12)
    chunks = list(c.chat.completions.create(model="m", messages=messages, max_tokens=12,
                                            stream=True,
                                            stream_options={"include_usage": True}))
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [ch.choices[0].delta.content or "" for ch in chunks if ch.choices]
    assert "".join(pieces) == plain.choices[0].message.content
    assert len([p for p in pieces if p]) > 1
    assert chunks[-2].choices[0].finish_reason == plain.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage


def test_sampling_with_a_seed_repeats(server):
    c = client(server)
    kwargs = {"model": "m", "messages": ask(FOREIGN[3]), "max_tokens": 10,
              "temperature": 1.2, "top_p": 0.95}
    first = c.chat.completions.create(seed=5, **kwargs).choices[0].message.content
    again = c.chat.completions.create(seed=5, **kwargs).choices[0].message.content
    assert first == again


def test_errors(server):
    """Refusals come back as the client's typed errors with the server's code."""
    c = client(server)
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 400 and err.value.code == "missing_foreign"
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="m", messages=ask(FOREIGN[0], "What is <f1>?"),
                                  stream=True)
    assert err.value.code == "reserved_token"
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="m", messages=ask(FOREIGN[0]), temperature=3)
    assert err.value.code == "invalid_temperature"
    with pytest.raises(openai.AuthenticationError) as err:
        client(server, "wrong").chat.completions.create(model="m", messages=ask(FOREIGN[0]))
    assert err.value.code == "invalid_api_key"


class _Stepwise:
    """A stand-in backend that hands the stream its first piece, then waits until the test
    has read that piece from the HTTP stream before it finishes (or fails) the answer."""

    kind, name, needs_foreign = "stand-in", "stepwise", True

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.first_read = threading.Event()

    def describe(self) -> dict[str, Any]:
        return {}

    def prepare(self, job: ChatJob) -> Prepared:
        return Prepared([1, 2, 3])

    def generate(self, jobs: Sequence[ChatJob], prepared: Sequence[Prepared],
                 on_text: Any = None) -> list[Completion]:
        on_text(0, "Hello")
        assert self.first_read.wait(60), "the first piece never reached the client"
        if self.fail:
            raise RuntimeError("mid-stream")
        on_text(0, "Hello wor")
        return [Completion("Hello world", 3, 2, "stop")]


@pytest.mark.parametrize("fail", [False, True])
def test_tokens_stream_while_the_batch_generates(fail):
    """The first piece reaches the client while generate() is still running (it waits for
    the client); an error after it ends the stream with an error event that the client
    raises."""
    backend = _Stepwise(fail)
    with serving(backend, batch_wait_ms=0) as srv:
        stream = client(srv).chat.completions.create(model="m", messages=ask("x"), stream=True)
        pieces = []
        try:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                    backend.first_read.set()
        except openai.APIError as exc:
            assert fail and exc.code == "internal_error"
            assert pieces == ["Hello"]
        else:
            assert not fail and pieces == ["Hello", " wor", "ld"]


def test_plain_hf_model(tiny_decoder_dir):
    backend = HFBackend.load(str(tiny_decoder_dir), device="cpu", served_name="tiny-lm")
    with serving(backend, batch_wait_ms=0, **LIMITS) as srv:
        c = client(srv)
        messages = [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Open the file menu."}]
        plain = c.chat.completions.create(model="tiny-lm", messages=messages, max_tokens=6)
        text = plain.choices[0].message.content
        assert 0 < plain.usage.completion_tokens <= 6
        chunks = c.chat.completions.create(model="tiny-lm", messages=messages, max_tokens=6,
                                           stream=True)
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == text
        sampled = [c.chat.completions.create(model="tiny-lm", messages=messages, max_tokens=6,
                                             temperature=1.0, seed=s).choices[0].message.content
                   for s in (4, 4, 5, 6)]
        assert sampled[0] == sampled[1] and len(set(sampled + [text])) > 1


def test_llink_serve_command(tiny_decoder_dir):
    """``llink serve`` in its own process: it prints its address, answers the client, and
    on SIGTERM stops cleanly (exit 0) once the requests it holds are answered."""
    import os
    import signal
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "llink", "serve", "--hf-model", str(tiny_decoder_dir),
           "--served-name", "tiny-lm", "--port", "0", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = []
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("llink serve:"):
                break
        assert "http://127.0.0.1:" in lines[-1], "".join(lines)
        url = lines[-1].split(" on ")[1].split()[0]
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
        resp = c.chat.completions.create(model="tiny-lm", max_tokens=3,
                                         messages=[{"role": "user", "content": "Hello"}])
        assert resp.model == "tiny-lm" and resp.usage.completion_tokens <= 3
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, "".join(lines) + out
    assert "llink serve: stopped" in out and "Traceback" not in out
