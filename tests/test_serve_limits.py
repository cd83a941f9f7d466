"""``llink serve`` at its limits (issue 15): many simultaneous connections, media types,
CORS, bodies shorter or longer than declared, chunked bodies (uvicorn decodes them since
the move to FastAPI, issue 17). HTTP on 127.0.0.1 only."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from typing import Any

import pytest

from benchmarks.serve_load import StandInBackend, burst, chat_body, load_test, post

from .test_serve import FOREIGN, LIMITS, serving, tiny_llink  # noqa: F401 (module fixture)

CHAT = "/v1/chat/completions"
JSON = "application/json"


@pytest.fixture(scope="module")
def stand_in():
    """A server whose backend answers at once: the HTTP layer on its own."""
    with serving(StandInBackend(batch_ms=1, item_ms=0), batch_wait_ms=5, max_body_bytes=4096,
                 read_timeout_s=1.0) as srv:
        yield srv


def request(srv, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path, body, headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, dict(resp.getheaders()), json.loads(data) if data else None
    finally:
        conn.close()


def ok_body(text: str = FOREIGN[0]) -> bytes:
    return chat_body(text, 4)


# --------------------------------------------------------------------------- media type, CORS
@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x"])
def test_post_needs_json_content_type(stand_in, ctype):
    headers = {"Content-Type": ctype} if ctype else {}
    status, resp_headers, body = request(stand_in, "POST", CHAT, ok_body(), headers)
    assert status == 415 and body["error"]["code"] == "unsupported_media_type"
    assert "application/json" in body["error"]["message"]
    assert "Access-Control-Allow-Origin" not in resp_headers


def test_json_content_type_with_charset_is_accepted(stand_in):
    status, _, body = request(stand_in, "POST", CHAT, ok_body(),
                              {"Content-Type": "Application/JSON; charset=utf-8"})
    assert status == 200 and body["choices"][0]["message"]["content"]


def test_no_cors_grants(stand_in):
    """A web page of another origin gets no CORS grant: the preflight is refused and no
    answer carries Access-Control-Allow-* headers."""
    origin = {"Origin": "https://evil.example"}
    status, headers, _ = request(stand_in, "OPTIONS", CHAT, None, {
        **origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert status == 405
    assert not any(k.lower().startswith("access-control-") for k in headers)
    status, headers, _ = request(stand_in, "POST", CHAT, ok_body(),
                                 {**origin, "Content-Type": "application/json"})
    assert status == 200
    assert not any(k.lower().startswith("access-control-") for k in headers)


# --------------------------------------------------------------------------- bodies
def _raw(srv, head: bytes, body: bytes, close_write: bool = False) -> tuple[bytes, float]:
    """Send raw bytes; return everything the server answers and the seconds it took."""
    sock = socket.create_connection(srv.server_address[:2], timeout=30)
    t = time.monotonic()
    try:
        sock.sendall(head + body)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks), time.monotonic() - t
    finally:
        sock.close()


def _head(length: int) -> bytes:
    return (f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def test_body_shorter_than_declared_gets_408_and_one_log_line(stand_in, caplog):
    caplog.set_level(logging.INFO, logger="llink.inference.serve")
    reply, seconds = _raw(stand_in, _head(100), b'{"messages": [')
    status_line, _, rest = reply.partition(b"\r\n")
    assert b" 408 " in status_line, reply[:200]
    body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "request_timeout" and "100 bytes" in body["error"]["message"]
    assert 0.9 <= seconds < 10  # read_timeout_s=1
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(problems) == 1 and "408" in problems[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)
    assert "Traceback" not in caplog.text


def test_body_cut_by_the_client_is_not_answered_as_a_request(stand_in):
    """A client that closes its side before the declared body is complete has hung up:
    uvicorn drops the request (nothing is generated) and closes the connection."""
    done = stand_in.batcher.submitted
    reply, _ = _raw(stand_in, _head(100), b'{"messages": [', close_write=True)
    assert b" 200 " not in reply and b"Traceback" not in reply
    assert stand_in.batcher.submitted == done


@pytest.mark.parametrize("size", [8_000, 200_000, 9 << 20, 24 << 20])
def test_over_limit_bodies_always_get_413(stand_in, size):
    """Small or huge (above the old 8 MB drain limit), the client reads a 413, no reset."""
    body = b'{"messages": "' + b"x" * (size - 16) + b'"}'
    status, headers, resp = request(stand_in, "POST", CHAT, body,
                                    {"Content-Type": "application/json"})
    assert status == 413 and resp["error"]["code"] == "body_too_large"
    assert str(size) in resp["error"]["message"]


def test_server_still_answers_after_abuse(stand_in):
    assert request(stand_in, "GET", "/health")[0] == 200
    assert post(*stand_in.server_address[:2], ok_body())["status"] == 200


# --------------------------------------------------------------------------- load
def test_listen_backlog_covers_the_queue(stand_in):
    assert stand_in.listen_backlog >= max(100, stand_in.settings.max_pending)
    assert stand_in.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)


def test_100_simultaneous_requests_no_resets_same_answers(tiny_llink):
    """100 connections at once against the tiny LLINK model: every one answered, each
    answer the one the same request gets alone (batched generation changes nothing)."""
    from llink.inference.backends import LLINKBackend

    backend = LLINKBackend(tiny_llink, "tiny-llink")
    with serving(backend, batch_wait_ms=20, max_batch=8, **LIMITS) as srv:
        res = load_test(srv, concurrency=100, rounds=1, max_tokens=4)
    assert (res["resets"], res["errors"], res["different_answers"]) == (0, 0, 0), res["failures"]
    assert res["ok"] == 100 and res["generate_calls"] < 100


def test_burst_helper_reports_resets_as_resets():
    """The load test tells resets from errors: a port nobody listens on refuses."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    results, _ = burst("127.0.0.1", port, [ok_body()] * 2)
    assert all("failure" in r and "Refused" in r["failure"] for r in results)


def test_bounded_load_with_merged_lora_and_caches_gives_the_sequential_answers(
        tiny_llink):
    """A bounded run (8 clients, one request in flight each) against the tiny model served
    as llink serve serves it (prefix cache, slot cache): every answer is the one the same
    request gets alone."""
    from benchmarks.serve_load import bounded_load
    from llink.inference.backends import LLINKBackend

    backend = LLINKBackend(tiny_llink, "tiny-llink")
    texts = FOREIGN * 3
    with serving(backend, batch_wait_ms=20, max_batch=8, **LIMITS) as srv:
        res = bounded_load(srv, texts, clients=8, max_tokens=4)
    assert (res["ok"], res["errors"], res["resets"], res["different_answers"]) == \
        (24, 0, 0, 0), res["failures"]
    assert res["distinct_texts"] == 8 and res["latency_ms"]["p95"] >= res["latency_ms"]["p50"]
    assert backend.slot_cache.stats()["hits"] > 0  # repeated texts skipped the encoder


def test_benchmark_reports_the_bounded_run_and_the_burst():
    from benchmarks.serve_load import headline, markdown, measure

    res = measure(None, concurrency=20, rounds=1, max_tokens=4, old_backlog=0, requests=30,
                  clients=4)
    burst_res, bounded = res["burst"], res["bounded"]
    assert (burst_res["requests"], burst_res["ok"], burst_res["resets"],
            burst_res["errors"]) == (20, 20, 0, 0)
    assert burst_res["listen_backlog"] >= 100 and res["old_backlog"] is None
    assert (bounded["requests"], bounded["ok"], bounded["errors"], bounded["resets"]) == \
        (30, 30, 0, 0)
    assert bounded["clients"] == 4 and set(bounded["latency_ms"]) >= {"p50", "p95"}
    md = markdown(res)
    assert "| 20 | 20 | 0 | 0 | 0 |" in md and "stand-in backend" in md
    assert "## 30 requests, 4 concurrent" in md and "| 30 | 30 | 0 | 0 | 0 |" in md
    assert headline(res)[0]["llink"] == "0"


# --------------------------------------------------------------------------- refusals (issue 19)
def _replies(reply: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """(status line, header block, body) of each HTTP reply in ``reply`` (bodies framed by
    Content-Length, as this server sends its JSON)."""
    out = []
    while reply:
        head, _, rest = reply.partition(b"\r\n\r\n")
        status_line, _, headers = head.partition(b"\r\n")
        length = int(next(line.split(b":", 1)[1] for line in headers.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        out.append((status_line, headers, rest[:length]))
        reply = rest[length:]
    return out


def _status_and_body(reply: bytes) -> tuple[bytes, bytes, dict[str, Any]]:
    """Status line, header block and JSON body of the one HTTP reply in ``reply``."""
    (status_line, headers, body), = _replies(reply)  # nothing after it read as a request
    return status_line, headers, json.loads(body)


@pytest.mark.parametrize(("ctype", "status", "code"), [
    ("application/json", 200, None),
    ("text/plain", 415, "unsupported_media_type"),
])
def test_chunked_body_is_framed_by_its_chunks(stand_in, ctype, status, code):
    """A chunked body is read as one body (uvicorn decodes the chunks): a JSON one is
    answered, another media type refused with a 415; neither the chunks nor the request
    pipelined after them are parsed as anything else: exactly two replies, in order."""
    body = json.dumps({"messages": [{"role": "user",
                                     "content": f"<foreign>{FOREIGN[0]}</foreign>"}]}).encode()
    chunked = (f"{len(body) - 10:x}\r\n".encode() + body[:-10] + b"\r\n"
               + b"a\r\n" + body[-10:] + b"\r\n0\r\n\r\n")
    head = (f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    then = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    reply, _ = _raw(stand_in, head, chunked + then)
    (first, _, data), (second, _, health) = _replies(reply)
    assert f" {status} ".encode() in first and b" 200 " in second
    resp = json.loads(data)
    if code:
        assert resp["error"]["code"] == code
    else:
        assert resp["choices"][0]["message"]["content"]
    assert json.loads(health)["status"] == "ok"


def test_chunked_body_over_the_limit_gets_413(stand_in):
    big = b"x" * 3000
    chunked = b"".join(f"{len(big):x}\r\n".encode() + big + b"\r\n" for _ in range(2))
    head = (f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    reply, _ = _raw(stand_in, head, chunked + b"0\r\n\r\n")
    status_line, _, resp = _status_and_body(reply)
    assert b" 413 " in status_line and resp["error"]["code"] == "body_too_large"
    assert "4096" in resp["error"]["message"]


def test_post_without_content_length_gets_411(stand_in):
    head = (f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "\r\n").encode()
    reply, _ = _raw(stand_in, head, b"")
    status_line, headers, resp = _status_and_body(reply)
    assert b" 411 " in status_line and resp["error"]["code"] == "length_required"
    assert resp["error"]["message"] == "a Content-Length header is required"
    assert b"connection: close" in headers.lower()


def _fast_server(**settings: Any):
    return serving(StandInBackend(batch_ms=0, item_ms=0), batch_wait_ms=0, **settings)


def _in_thread(srv, body: bytes) -> tuple[threading.Thread, list[dict[str, Any]]]:
    out: list[dict[str, Any]] = []
    t = threading.Thread(target=lambda: out.append(post(*srv.server_address[:2], body)))
    t.start()
    return t, out


def test_full_queue_gets_503_overloaded():
    """max_pending requests wait (worker held); the next one is refused at once with a 503,
    and the waiting ones are answered once the worker runs."""
    with _fast_server(max_pending=2, request_timeout_s=10) as srv:  # broken: a 504
        srv.batcher.hold()
        try:
            waiting = [_in_thread(srv, ok_body(t)) for t in FOREIGN[:2]]
            assert srv.batcher.wait_pending(2, timeout=60)
            status, _, resp = request(srv, "POST", CHAT, ok_body(FOREIGN[2]),
                                      {"Content-Type": JSON})
        finally:
            srv.batcher.release()
        for t, _ in waiting:
            t.join(60)
        assert srv.batcher.submitted == 2
    assert status == 503 and resp["error"]["code"] == "overloaded"
    assert resp["error"]["type"] == "server_error" and "retry" in resp["error"]["message"]
    assert [out[0]["status"] for _, out in waiting] == [200, 200]


def test_shutting_down_gets_503():
    """Once the server is closing (batcher closed), a request that still arrives gets a
    503; health checks are still answered."""
    with _fast_server(request_timeout_s=2) as srv:  # broken, a queued request gets a 504
        srv.batcher.close()
        status, _, resp = request(srv, "POST", CHAT, ok_body(), {"Content-Type": JSON})
        assert request(srv, "GET", "/health")[0] == 200
    assert status == 503 and resp["error"]["code"] == "shutting_down"
    assert resp["error"]["type"] == "server_error"


def test_timeout_gets_504_and_the_request_is_dropped():
    """A request not answered within request_timeout_s gets a 504 naming the timeout, and
    the worker drops it rather than generating an answer nobody reads."""
    with _fast_server(request_timeout_s=0.2) as srv:
        srv.batcher.hold()  # the answer cannot come in time, however fast the machine
        try:
            status, _, resp = request(srv, "POST", CHAT, ok_body(), {"Content-Type": JSON})
        finally:
            srv.batcher.release()
        srv.batcher.close()  # lets the worker take the queue, waits for it to finish
        assert (srv.batcher.submitted, srv.batcher.pending) == (1, 0)
        run = (srv.batcher.generate_calls, srv.batcher.completed)
    assert status == 504 and resp["error"]["code"] == "timeout"
    assert resp["error"]["type"] == "server_error" and "0.2 s" in resp["error"]["message"]
    assert run == (0, 0)  # the timed-out request was never generated
