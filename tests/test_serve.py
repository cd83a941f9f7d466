"""``llink serve`` over real HTTP on 127.0.0.1, with a tiny trained LLINK and a tiny plain LM."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from llink.inference.api import ChatJob, ServeError, ServeSettings, parse_chat_request
from llink.inference.backends import Backend, HFBackend, LLINKBackend
from llink.inference.batcher import group_by_key
from llink.inference.serve import LLINKServer, api_key_from_env, make_server
from llink.method.model import load_llink
from llink.workflows import Session, run_stage_a, run_stage_b

from .conftest import KHMER_ENGLISH
from .reference import greedy_reference_ids
from .test_stage_a import _cfg, make_pair_file

FOREIGN = [km for _, km in KHMER_ENGLISH]
CHAT = "/v1/chat/completions"
LIMITS = {
    "max_body_bytes": 20_000,
    "max_foreign_chars": 200,
    "max_tokens": 64,
    "default_max_tokens": 8,
}


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_llink(tmp_path_factory, tiny_encoder_dir, tiny_decoder_dir):
    """A few steps of Stage A and B on tiny models, loaded back as an LLINK model."""
    root = tmp_path_factory.mktemp("serve")
    cfg = _cfg(
        root,
        tiny_encoder_dir,
        tiny_decoder_dir,
        make_pair_file(root),
        **{
            "stage_a.steps": 4,
            "stage_a.eval_every": 100,
            "stage_b.steps": 2,
            "stage_b.micro_batch": 4,
            "stage_b.bridge_warmup_steps": 1,
            "stage_b.eval_every": 100,
            "stage_b.save_every": 100,
            "stage_b.eval_pairs": 2,
            "stage_b.lora_r": 4,
            "stage_b.lora_alpha": 4,
            "stage_b.max_answer_tokens": 16,
        },
    )
    session = Session(cfg, progress=False)
    run_stage_a(session)
    run_stage_b(session)
    return load_llink(root / "run" / "stage_b", encoder=session.encoder)


@contextmanager
def serving(backend: Backend, **settings: Any) -> Iterator[LLINKServer]:
    """A server on an ephemeral port, run in a thread."""
    with make_server(backend, ServeSettings(**settings), "127.0.0.1", 0) as server:
        yield server


@pytest.fixture(scope="module")
def llink_backend(tiny_llink) -> LLINKBackend:
    return LLINKBackend(tiny_llink, "tiny-llink")


@pytest.fixture(scope="module")
def server(llink_backend) -> Iterator[LLINKServer]:
    with serving(llink_backend, batch_wait_ms=5, **LIMITS) as srv:
        yield srv


# --------------------------------------------------------------------------- helpers
def call(
    server: LLINKServer,
    path: str,
    body: Any = None,
    method: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], Any]:
    """(status, JSON body, response headers) of one HTTP request."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        server.url + path,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read()), resp.headers
    except urllib.error.HTTPError as err:
        text = err.read().decode()
        assert "Traceback" not in text
        return err.code, json.loads(text), err.headers


def user(content: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], **extra}


def answer(resp: dict[str, Any]) -> str:
    return resp["choices"][0]["message"]["content"]


# --------------------------------------------------------------------------- LLINK
def test_health_and_models(server):
    status, body, _ = call(server, "/health")
    assert status == 200
    assert (body["status"], body["kind"], body["model"]) == ("ok", "llink", "tiny-llink")
    assert "ask" in body["tasks"] and body["num_slots"] == 4
    status, body, _ = call(server, "/v1/models")
    assert status == 200 and body["data"][0]["id"] == "tiny-llink"


def test_translation_request(server, tiny_llink):
    status, body, _ = call(server, CHAT, user(f"<foreign>{FOREIGN[0]}</foreign>", max_tokens=8))
    assert status == 200
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "tiny-llink" and isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 4 and 0 <= usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["llink"]["task"] == "translate_to_english"
    assert answer(body) == tiny_llink.generate([FOREIGN[0]], max_new_tokens=8)[0]


def test_foreign_span_with_question(server, tiny_llink):
    msg = f"Who is mentioned? <foreign>{FOREIGN[0]}</foreign>"
    status, body, _ = call(server, CHAT, user(msg, max_tokens=6))
    assert status == 200 and body["llink"]["task"] == "ask"
    want = tiny_llink.generate(
        [FOREIGN[0]], task="ask", question="Who is mentioned?", max_new_tokens=6
    )
    assert answer(body) == want[0]


def test_dedicated_field(server, tiny_llink):
    fields = {"foreign": FOREIGN[1], "task": "title_generation", "strict": True}
    status, body, _ = call(server, CHAT, user("", llink=fields, max_tokens=6))
    assert status == 200 and body["llink"]["task"] == "title_generation"
    want = tiny_llink.generate([FOREIGN[1]], task="title_generation", strict=True, max_new_tokens=6)
    assert answer(body) == want[0]


def _requests() -> list[dict[str, Any]]:
    reqs = [user(f"<foreign>{t}</foreign>", max_tokens=6) for t in FOREIGN[:4]]
    reqs.append(user(f"What is it? <foreign>{FOREIGN[4]}</foreign>", max_tokens=6))
    reqs.append(
        user("", llink={"foreign": FOREIGN[5], "task": "summarize_in_english"}, max_tokens=6)
    )
    return reqs


def _send_all(srv: LLINKServer, reqs: list[dict[str, Any]], sender: list[Any] | None = None
              ) -> tuple[list[threading.Thread], list[Any]]:
    """Each request from its own thread, to a held worker (``srv.batcher.hold()``): each is
    queued before the next is sent, so the queue holds them in order. The results list
    fills as answers come."""
    results: list[Any] = [None] * len(reqs)

    def post(i: int) -> None:
        results[i] = (sender[i] if sender else call)(srv, CHAT, reqs[i])

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(reqs))]
    queued = srv.batcher.pending
    for i, t in enumerate(threads):
        t.start()
        assert srv.batcher.wait_pending(queued + i + 1, timeout=60), "request never queued"
    return threads, results


def _joined(threads: list[threading.Thread], results: list[Any]) -> list[Any]:
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    return results


def _as_one_batch(srv: LLINKServer, reqs: list[dict[str, Any]],
                  sender: list[Any] | None = None) -> list[Any]:
    """Queue the requests, in order, with the worker held, then let it go: they reach the
    worker together (one generate call per batch key, ``max_batch`` allowing), however
    slowly the machine runs them. No clock involved. ``sender``: a function per request
    (default :func:`call`)."""
    srv.batcher.hold()
    try:
        threads, results = _send_all(srv, reqs, sender)
    finally:
        srv.batcher.release()
    return _joined(threads, results)


def test_concurrent_requests_are_batched(server, llink_backend):
    reqs = _requests()
    sequential = [answer(call(server, CHAT, r)[1]) for r in reqs]
    with serving(llink_backend, batch_wait_ms=0, max_batch=8, **LIMITS) as srv:
        results = _as_one_batch(srv, reqs)
        calls = srv.generate_calls
    assert [status for status, _, _ in results] == [200] * len(reqs)
    assert [answer(body) for _, body, _ in results] == sequential
    assert calls == 1  # six requests, one batch key: one generate call


def test_batches_split_by_key_and_max_batch(llink_backend):
    """Queued in order while the worker is held, 5 requests with max_tokens 6 and 2 with
    max_tokens 4 under max_batch 4 take exactly 3 generate calls: the batch [6, 6, 6, 6],
    then the batch [6, 4, 4] in two groups, [6] and [4, 4]."""
    reqs = [*_requests()[:5], _ok(FOREIGN[5]), _ok(FOREIGN[6])]
    with serving(llink_backend, batch_wait_ms=0, max_batch=4, **LIMITS) as srv:
        results = _as_one_batch(srv, reqs)
        calls, completed = srv.generate_calls, srv.batcher.completed
    assert [status for status, _, _ in results] == [200] * len(reqs)
    assert (calls, completed) == (3, 7)


def test_shutdown_finishes_queued_requests(llink_backend):
    reqs = _requests()[:3]
    with serving(llink_backend, batch_wait_ms=0, **LIMITS) as srv:
        srv.batcher.hold()  # the worker takes nothing: all three wait in the queue
        threads, results = _send_all(srv, reqs)
        assert srv.generate_calls == 0
    # leaving `serving` shut the server down with the three still queued (and the worker
    # held): closing lifts the hold and answers them before the server stops
    assert [status for status, _, _ in _joined(threads, results)] == [200] * len(reqs)
    assert srv.batcher.completed == len(reqs)


def _ok(text: str = FOREIGN[0]) -> dict[str, Any]:
    return user(f"<foreign>{text}</foreign>", max_tokens=4)


BAD_REQUESTS = [
    (b"{not json", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_body"),
    ({}, 400, "missing_messages"),
    ({"messages": []}, 400, "empty_messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, 400, "invalid_message"),
    (user("hello there"), 400, "missing_foreign"),
    (user("<foreign>   \n </foreign>"), 400, "empty_foreign"),
    (user("", llink={"foreign": " \t "}), 400, "empty_foreign"),
    (user(f"<foreign>{FOREIGN[0]}"), 400, "invalid_foreign"),
    (
        user(f"<foreign>{FOREIGN[0]}</foreign>", llink={"foreign": FOREIGN[1]}),
        400,
        "invalid_foreign",
    ),
    (user("", llink={"foreign": FOREIGN[0], "task": "poem"}), 400, "unknown_task"),
    (user("", llink={"foreign": FOREIGN[0], "task": "ask"}), 400, "missing_question"),
    (user("", llink={"foreign": FOREIGN[0], "colour": "red"}), 400, "invalid_llink"),
    (user("", llink={"foreign": FOREIGN[0], "gate_boost": -1}), 400, "invalid_gate_boost"),
    (user("", llink={"foreign": FOREIGN[0], "strict": "yes"}), 400, "invalid_strict"),
    ({**_ok(), "max_tokens": 0}, 400, "max_tokens_out_of_range"),
    ({**_ok(), "max_tokens": 65}, 400, "max_tokens_out_of_range"),
    ({**_ok(), "max_tokens": "8"}, 400, "max_tokens_out_of_range"),
    ({**_ok(), "stream": "yes"}, 400, "invalid_stream"),
    ({**_ok(), "n": 2}, 400, "unsupported_n"),
    ({**_ok(), "temperature": 2.5}, 400, "invalid_temperature"),
    ({**_ok(), "top_p": 0}, 400, "invalid_top_p"),
    ({**_ok(), "seed": 1.5}, 400, "invalid_seed"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "invalid_content"),
    ({"messages": [{"role": "system", "content": "Be brief."}]}, 400, "missing_user_message"),
    (user(f"What is <f0>? <foreign>{FOREIGN[0]}</foreign>"), 400, "reserved_token"),
    (user("", llink={"foreign": FOREIGN[0], "question": "Is </foreign> here?"}), 400,
     "reserved_token"),
    (_ok("ក" * 201), 413, "foreign_too_large"),
    (json.dumps(_ok("x" * 30_000)).encode(), 413, "body_too_large"),
]


@pytest.mark.parametrize(
    ("body", "status", "code"), BAD_REQUESTS, ids=[c for _, _, c in BAD_REQUESTS]
)
def test_bad_requests(server, body, status, code):
    got, resp, _ = call(server, CHAT, body, method="POST")
    assert (got, resp["error"]["code"]) == (status, code)
    assert resp["error"]["type"] == "invalid_request_error" and resp["error"]["message"]
    if code == "unknown_task":
        assert "translate_to_english" in resp["error"]["message"]
        assert "ask" in resp["error"]["message"]
    if code == "invalid_llink":
        assert "colour" in resp["error"]["message"] and "gate_boost" in resp["error"]["message"]
    if code == "reserved_token":
        assert "<f0>" in resp["error"]["message"] or "</foreign>" in resp["error"]["message"]


def test_wrong_path_and_method(server):
    status, body, _ = call(server, "/v1/nope")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body, headers = call(server, CHAT)
    assert status == 405 and headers["Allow"] == "POST"
    assert call(server, "/health", {"x": 1}, method="POST")[0] == 405
    assert call(server, "/v1/models", method="DELETE")[0] == 405


def _usage(body: dict[str, Any]) -> tuple[int, int]:
    u = body["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    return u["prompt_tokens"], u["completion_tokens"]


def _check_exact(body: dict[str, Any], prompt: list[int], new: list[int], tok: Any,
                 eos: set[int] | None = None) -> None:
    """usage, text and finish_reason of an answer are those of ``prompt`` and the reference
    decode ``new`` (the end token, when one came, counts as generated)."""
    assert _usage(body) == (len(prompt), len(new))
    assert answer(body) == tok.decode(new, skip_special_tokens=True).strip()
    stopped = bool(new) and new[-1] in (eos or {tok.eos_token_id})
    assert body["choices"][0]["finish_reason"] == ("stop" if stopped else "length")


def test_usage_counts_are_exact_in_a_batch(server, tiny_llink):
    """One batch of prompts of different lengths (left padding): prompt_tokens is the
    length of the prompt LLINK.generate builds, completion_tokens the tokens of a
    hand-written greedy decode, one prompt at a time."""
    cases = [(FOREIGN[0], None), (FOREIGN[1], "Who is it?"), (FOREIGN[2], "What does it say "
                                                                          "about closing?")]
    reqs = [user(f"{q or ''} <foreign>{t}</foreign>", max_tokens=12) for t, q in cases]
    results = _as_one_batch(server, reqs)
    for (text, question), (status, body, _) in zip(cases, results, strict=True):
        assert status == 200
        prompt = tiny_llink.prompt_ids("ask" if question else "translate_to_english", False,
                                       question, literals=tiny_llink.literals_of(text))
        new = greedy_reference_ids(tiny_llink, [prompt], tiny_llink.foreign_slots([text]),
                                   max_new_tokens=12)[0]
        _check_exact(body, prompt, new, tiny_llink.tokenizer)


def test_served_prompt_is_the_models_prompt_with_literals(server, tiny_llink, monkeypatch):
    """A model that copies literals into its prompt (llink.method.literals) gets the same prompt
    from the server as from LLINK.generate: same answer, prompt_tokens counts the literals."""
    monkeypatch.setattr(tiny_llink, "literals", True)
    text = FOREIGN[4]
    literals = tiny_llink.literals_of(text)
    assert literals == ["OK"]
    status, body, _ = call(server, CHAT, user(f"<foreign>{text}</foreign>", max_tokens=6))
    assert status == 200
    prompt = tiny_llink.prompt_ids("translate_to_english", literals=literals)
    assert len(prompt) > len(tiny_llink.prompt_ids("translate_to_english"))
    assert _usage(body)[0] == len(prompt)
    assert answer(body) == tiny_llink.generate([text], max_new_tokens=6)[0]


def test_context_length_exceeded_is_a_400_for_that_request_only(server, tiny_llink):
    """A question too long for the decoder's context: a 400 naming the prompt's token
    count and the context; the request batched with it is answered as usual."""
    question = " ".join(["Open the file menu and save the document."] * 150)
    prompt = tiny_llink.prompt_ids("ask", False, question)
    context = tiny_llink.decoder.model.config.max_position_embeddings
    assert len(prompt) + 4 > context
    calls = server.generate_calls
    reqs = [user(f"{question} <foreign>{FOREIGN[0]}</foreign>", max_tokens=4), _ok()]
    (status, body, _), (ok_status, ok_body, _) = _as_one_batch(server, reqs)
    assert (status, body["error"]["code"]) == (400, "context_length_exceeded")
    assert body["error"]["type"] == "invalid_request_error"
    message = body["error"]["message"]
    assert f"the prompt has {len(prompt)} tokens" in message
    assert "max_tokens 4" in message and f"context of {context} tokens" in message
    assert ok_status == 200 and answer(ok_body) == tiny_llink.generate([FOREIGN[0]],
                                                                       max_new_tokens=4)[0]
    assert server.generate_calls == calls + 1  # the other request still ran, in one call


def test_a_bad_request_fails_alone_in_its_batch(server, tiny_llink):
    """A question holding a reserved slot string (``<f0>``) gets a 400 naming it; the
    requests queued with it, streamed or not, are answered in one generate call."""
    calls = server.generate_calls
    reqs = [_ok(FOREIGN[1]), user(f"What is <f0>? <foreign>{FOREIGN[0]}</foreign>",
                                  max_tokens=4), _ok(FOREIGN[2])]
    results = _as_one_batch(server, [*reqs, {**_ok(FOREIGN[3]), "stream": True}],
                            sender=[call, call, call, stream_call])
    (s1, b1, _), (bad, err, _), (s2, b2, _), (s3, events, _) = results
    assert (bad, err["error"]["code"]) == (400, "reserved_token") and "<f0>" in str(err)
    assert (s1, s2, s3) == (200, 200, 200)
    want = tiny_llink.generate(FOREIGN[1:4], max_new_tokens=4)
    assert [answer(b1), answer(b2), streamed_text(events)] == want
    assert server.generate_calls == calls + 1


def test_a_failing_batch_is_run_again_one_at_a_time(server, monkeypatch):
    """Should a batched generate call fail anyway, its requests run again one by one:
    only the one that fails alone gets an error, a generic 500."""
    real = server.backend.generate

    def picky(jobs, prepared, on_text=None):
        if any(j.foreign == FOREIGN[5] for j in jobs):
            raise RuntimeError("this one")
        return real(jobs, prepared, on_text)

    monkeypatch.setattr(server.backend, "generate", picky)
    calls = server.generate_calls
    results = _as_one_batch(server, [_ok(FOREIGN[0]), _ok(FOREIGN[5]), _ok(FOREIGN[1])])
    assert [s for s, _, _ in results] == [200, 500, 200]
    assert results[1][1]["error"]["code"] == "internal_error"
    assert server.generate_calls == calls + 4  # the batch, then each request alone


# --------------------------------------------------------------------------- sampling
def _sampled(text: str, seed: int | None, **extra: Any) -> dict[str, Any]:
    return {**user(f"<foreign>{text}</foreign>", max_tokens=10), "temperature": 1.5,
            "top_p": 0.9, **({"seed": seed} if seed is not None else {}), **extra}


def test_seeded_sampling_is_transformers_sampling_under_that_seed(server, tiny_llink):
    """A seeded request's answer is what LLINK.generate samples (do_sample, temperature,
    top_p, top-k off) right after torch.manual_seed(seed); the server's RNG state is
    left as it was."""
    import torch

    state = torch.random.get_rng_state()
    status, body, _ = call(server, CHAT, _sampled(FOREIGN[0], seed=7))
    assert status == 200 and torch.equal(state, torch.random.get_rng_state())
    torch.manual_seed(7)
    want = tiny_llink.generate([FOREIGN[0]], max_new_tokens=10, do_sample=True,
                               temperature=1.5, top_p=0.9, top_k=0)[0]
    assert answer(body) == want
    greedy = tiny_llink.generate([FOREIGN[0]], max_new_tokens=10)[0]
    others = {answer(call(server, CHAT, _sampled(FOREIGN[0], seed=s))[1]) for s in (1, 2, 3)}
    assert len(others | {want, greedy}) > 2  # sampling does change the answers


def test_a_batch_mixing_greedy_and_sampled_requests(server, tiny_llink):
    """Queued together: greedy requests (temperature absent or 0) share one generate call
    and answer as alone; each seeded request runs alone and answers as it does alone;
    unseeded sampled requests of equal temperature and top_p share one call."""
    seeded = _sampled(FOREIGN[2], seed=11)
    alone = answer(call(server, CHAT, seeded)[1])
    reqs = [_ok(FOREIGN[0]), seeded, {**_ok(FOREIGN[1]), "temperature": 0, "seed": 3},
            _sampled(FOREIGN[3], None), _sampled(FOREIGN[4], None), {**seeded, "seed": 12}]
    calls = server.generate_calls
    results = _as_one_batch(server, reqs)
    assert [s for s, _, _ in results] == [200] * len(reqs)
    assert server.generate_calls == calls + 4  # greedy, seed 11, unseeded pair, seed 12
    greedy = tiny_llink.generate(FOREIGN[:2], max_new_tokens=4)
    assert [answer(results[0][1]), answer(results[2][1])] == greedy
    assert answer(results[1][1]) == alone


# --------------------------------------------------------------------------- streaming
def stream_call(server: LLINKServer, path: str, body: dict[str, Any]
                ) -> tuple[int, list[Any], Any]:
    """(status, the server-sent events' data, headers); an error's JSON instead of events."""
    req = urllib.request.Request(server.url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            text = resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), text
    data = [e.removeprefix("data: ") for e in events]
    return 200, [d if d == "[DONE]" else json.loads(d) for d in data], resp.headers


def streamed_text(events: list[Any]) -> str:
    return "".join(e["choices"][0]["delta"].get("content", "") for e in events
                   if isinstance(e, dict) and e.get("choices"))


def test_streamed_answer(server, tiny_llink):
    """stream=true: chat.completion.chunk events (role first, then the text in pieces,
    then the finish reason and llink info, the usage when asked, then [DONE]); the pieces
    add up to the answer the same request gets without streaming."""
    req = user(f"Who? <foreign>{FOREIGN[0]}</foreign>", max_tokens=12)
    plain = call(server, CHAT, req)[1]
    status, events, _ = stream_call(server, CHAT, {**req, "stream": True,
                                                   "stream_options": {"include_usage": True}})
    assert status == 200 and events[-1] == "[DONE]"
    chunks, usage = events[:-2], events[-2]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["model"] == "tiny-llink"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert chunks[-1]["llink"]["task"] == "ask"
    assert streamed_text(events) == answer(plain) and len(chunks) > 3  # several pieces
    assert usage["choices"] == [] and usage["usage"] == plain["usage"]


def test_stream_errors_before_the_first_token_are_plain_errors(server):
    question = " ".join(["Open the file menu and save the document."] * 150)
    req = {**user(f"{question} <foreign>{FOREIGN[0]}</foreign>", max_tokens=4), "stream": True}
    status, body, _ = stream_call(server, CHAT, req)
    assert (status, body["error"]["code"]) == (400, "context_length_exceeded")


def test_text_stream_pieces_add_up_to_the_answer():
    from llink.inference.batcher import TextStream

    pieces: list[str] = []
    stream = TextStream(pieces.append)
    for text in [" ", " Hel", " Hello ", " Hello wor\ufffd", " Hello world", " Hello world. "]:
        stream.update(text)
    stream.finish("Hello world.")
    assert pieces == ["Hel", "lo", " wor", "ld", "."]


def test_internal_error_is_a_generic_500(server, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(server.backend, "generate", boom)
    status, body, _ = call(server, CHAT, _ok())
    assert status == 500 and body["error"]["type"] == "server_error"
    assert "secret" not in json.dumps(body)
    monkeypatch.undo()
    assert call(server, CHAT, _ok())[0] == 200


def test_token_auth(llink_backend):
    with serving(llink_backend, api_key="s3cret", batch_wait_ms=5) as srv:
        status, body, headers = call(srv, CHAT, _ok())
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        assert headers["WWW-Authenticate"] == "Bearer"
        wrong = {"Authorization": "Bearer nope"}
        assert call(srv, CHAT, _ok(), headers=wrong)[0] == 401
        assert call(srv, "/v1/models", headers=wrong)[0] == 401
        right = {"Authorization": "Bearer s3cret"}
        assert call(srv, CHAT, _ok(), headers=right)[0] == 200
        assert call(srv, "/health")[0] == 200  # health checks need no key


# --------------------------------------------------------------------------- plain LM
def test_plain_hf_model(tiny_decoder_dir):
    backend = HFBackend.load(str(tiny_decoder_dir), device="cpu", served_name="tiny-lm")
    with serving(backend, batch_wait_ms=0, **LIMITS) as srv:
        status, body, _ = call(srv, "/health")
        assert status == 200 and (body["kind"], body["model"]) == ("hf", "tiny-lm")
        chat = {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Open the file menu."},
            ],
            "max_tokens": 5,
        }
        status, body, _ = call(srv, CHAT, chat)
        assert status == 200 and isinstance(answer(body), str) and "llink" not in body
        assert 0 < body["usage"]["completion_tokens"] <= 5
        single = answer(body)
        results = _as_one_batch(srv, [chat, chat, _ok(), _ok(FOREIGN[1])])
        assert [s for s, _, _ in results] == [200] * 4
        assert answer(results[0][1]) == answer(results[1][1]) == single
        assert results[2][1]["llink"]["task"] == "translate_to_english"
        assert srv.generate_calls == 1 + 2  # the single chat, then max_tokens 5 and 4


def test_plain_hf_prefix_cache_changes_no_answer(tiny_decoder_dir):
    """The template head's KV comes from the cache: the same greedy answers (and token
    counts) as without it, for chats that share the whole head and one that does not."""
    loaded = HFBackend.load(str(tiny_decoder_dir), device="cpu", served_name="tiny-lm")
    off = HFBackend(loaded.model, loaded.tokenizer, "tiny-lm", prefix_cache_size=0)
    assert loaded.template_head and loaded.template_head == off.template_head
    jobs = [ChatJob((("user", "Open the file menu."),), 8),
            ChatJob((("user", "Save it."),), 8),
            ChatJob((("system", "Be brief."), ("user", "Close the window.")), 8)]

    def run(backend: HFBackend, batch: list[ChatJob]) -> list[tuple[str, int, int]]:
        done = backend.generate(batch, [backend.prepare(j) for j in batch])
        return [(c.text, c.prompt_tokens, c.completion_tokens) for c in done]

    want = [run(off, [j])[0] for j in jobs]
    assert run(loaded, jobs[:2]) == want[:2]  # one batch sharing the head
    assert run(loaded, jobs) == want  # a system turn of its own: a shorter shared prefix
    assert run(loaded, [jobs[1]]) == [want[1]]
    stats = loaded.describe()["prefix_cache"]
    assert stats["hits"] >= 1 and stats["entries"] == 2
    assert off.describe()["prefix_cache"] is None


def test_plain_hf_usage_counts_are_exact(tiny_decoder_dir, monkeypatch):
    """Plain model, two chats of different lengths in one batch: prompt_tokens is what the
    tokenizer's chat template gives for the conversation, completion_tokens the tokens a
    one-prompt greedy generate call makes (end token included), whose text is the answer.
    The untrained model never ends on its own: a second end token (as models with several
    have) taken from the first chat's greedy answer makes that one stop early."""
    import torch

    loaded = HFBackend.load(str(tiny_decoder_dir), device="cpu", served_name="tiny-lm")
    tok, model = loaded.tokenizer, loaded.model
    chats = [[{"role": "user", "content": "Open the file menu."}],
             [{"role": "system", "content": "Be brief and precise."},
              {"role": "user", "content": "Save the document before closing."}]]

    def reference(chat: list[dict[str, str]], eos: set[int]) -> tuple[list[int], list[int]]:
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        prompt = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=10,
                                 do_sample=False, pad_token_id=tok.pad_token_id,
                                 eos_token_id=list(eos))
        new = out[0, len(prompt):].tolist()
        stop = next((i for i, t in enumerate(new) if t in eos), None)
        return prompt, new if stop is None else new[: stop + 1]

    _, free = reference(chats[0], {tok.eos_token_id})
    eos = {tok.eos_token_id, free[2]}
    monkeypatch.setattr(model.generation_config, "eos_token_id", sorted(eos))
    backend = HFBackend(model, tok, "tiny-lm")
    with serving(backend, batch_wait_ms=0, **LIMITS) as srv:
        results = _as_one_batch(srv, [{"messages": c, "max_tokens": 10} for c in chats])
        assert srv.generate_calls == 1
    assert results[0][1]["choices"][0]["finish_reason"] == "stop"
    assert results[0][1]["usage"]["completion_tokens"] <= 3
    for chat, (status, body, _) in zip(chats, results, strict=True):
        assert status == 200
        prompt, new = reference(chat, eos)
        _check_exact(body, prompt, new, tok, eos)

# --------------------------------------------------------------------------- units
def test_parse_and_group():
    settings = ServeSettings(max_tokens=32, default_max_tokens=16)
    job = parse_chat_request(user(f"Why? <foreign> {FOREIGN[0]} </foreign>"), settings, True)
    assert (job.task, job.question, job.foreign, job.max_tokens) == ("ask", "Why?", FOREIGN[0], 16)
    job = parse_chat_request(user("x", llink={"foreign": "a", "gate_boost": 2}), settings, True)
    assert (job.task, job.gate_boost) == ("translate_to_english", 2.0)
    assert parse_chat_request(user("hi"), settings, needs_foreign=False).foreign is None
    groups = group_by_key([("a", 1), ("b", 2), ("c", 1)], key=lambda x: x[1])
    assert groups == [[("a", 1), ("c", 1)], [("b", 2)]]


def test_settings_and_cli(server, monkeypatch):
    from llink.cli import build_parser, cmd_serve

    with pytest.raises(ServeError, match="cannot listen"):
        make_server(server.backend, ServeSettings(), "127.0.0.1", server.server_address[1])
    with pytest.raises(ServeError, match="max_batch"):
        ServeSettings(max_batch=0)
    monkeypatch.delenv("LLINK_TEST_KEY", raising=False)
    with pytest.raises(ServeError, match="LLINK_TEST_KEY"):
        api_key_from_env("LLINK_TEST_KEY")
    monkeypatch.setenv("LLINK_TEST_KEY", "k")
    assert api_key_from_env("LLINK_TEST_KEY") == "k" and api_key_from_env(None) is None
    args = build_parser().parse_args(["serve", "--model", "m", "--port", "0", "--max-batch", "4"])
    assert args.func is cmd_serve and (args.model, args.port, args.max_batch) == ("m", 0, 4)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--model", "m", "--hf-model", "x"])
