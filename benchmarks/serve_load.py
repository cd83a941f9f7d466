"""Load test of ``llink serve``: many simultaneous chat requests on 127.0.0.1.

    python -m benchmarks.serve_load [--model DIR] [--requests 200] [--clients 16]
                                    [--concurrency 100] [--rounds 3] [--quick]

Bounded run: ``--requests`` chat-completions requests sent by ``--clients`` client threads,
each with one request in flight at a time (a fresh connection per request); p50/p95/p99
latency, errors and resets. With ``--model`` its requests are test sentences spread evenly
over the test split (distinct texts; the server's slot cache is emptied after the
sequential reference pass, so the run pays every encoder pass), else the stand-in texts.
Bursts: each round opens ``concurrency`` connections at once (threads released by one barrier),
each posting one chat-completions request, and counts connection resets, other errors and
answers that differ from the same request sent alone; latency is from connect to the last
byte of the answer. Without ``--model`` the server runs a stand-in backend (a fixed cost
per batched generate call plus a little per request, answers derived from the foreign
text), so the figures are the server's own: listen queue, threads, batching. With
``--model DIR`` it serves that trained LLINK folder. One more burst runs against a server
whose listen backlog is ``--old-backlog`` (default 5, socketserver's default, which
llink serve used before issue 15; 0 skips it), for comparison. Results:
benchmarks/results/serve_load.{json,md}.
"""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from collections.abc import Sequence
from typing import Any

from benchmarks import common
from benchmarks.common import evenly_spaced, machine_description, pct, row
from llink.inference.api import ChatJob, ServeSettings
from llink.inference.backends import Completion, LLINKBackend, OnText, Prepared
from llink.inference.serve import LLINKServer, make_server

QUICK = {"concurrency": 50, "rounds": 1, "max_tokens": 4, "requests": 40, "clients": 8,
         "old_backlog": 5}
DEFAULT = {"concurrency": 100, "rounds": 3, "max_tokens": 8, "requests": 200, "clients": 16,
           "old_backlog": 5}
TEXTS = ["ខ្ញុំស្រឡាញ់គ្រួសាររបស់ខ្ញុំ។", "បើកម៉ឺនុយឯកសារ។", "រក្សាទុកឯកសារមុនពេលបិទ។",
         "តារាងមានជួរឈរបី។", "ចុចប៊ូតុង OK ។", "បញ្ចូលស្លាយថ្មី។", "បោះពុម្ពទំព័របច្ចុប្បន្ន។"]
RESET_ERRORS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError,
                http.client.RemoteDisconnected)
OPTIONS = {
    "--model": {"help": "trained LLINK folder to serve (default: the stand-in backend)"},
    "--requests": {"type": int, "help": "requests of the bounded run (0: skip it)"},
    "--clients": {"type": int, "help": "concurrent clients of the bounded run"},
    "--concurrency": {"type": int, "help": "requests per burst"},
    "--rounds": {"type": int, "help": "bursts (0: skip them)"},
    "--max-tokens": {"type": int},
    "--old-backlog": {"type": int,
                      "help": "also one burst against this listen backlog (default 5; 0: skip)"},
    **common.QUICK_RUN,
}


class StandInBackend:
    """A model stand-in: ``batch_ms`` per generate call plus ``item_ms`` per request;
    the answer is a function of the foreign text and ``max_tokens`` only."""

    kind = "stand-in"
    needs_foreign = True

    def __init__(self, batch_ms: float = 20.0, item_ms: float = 2.0,
                 name: str = "stand-in") -> None:
        self.batch_s, self.item_s, self.name = batch_ms / 1000, item_ms / 1000, name

    def describe(self) -> dict[str, Any]:
        return {"batch_ms": self.batch_s * 1000, "item_ms": self.item_s * 1000}

    def prepare(self, job: ChatJob) -> Prepared:
        return Prepared(list(job.foreign.encode("utf-8")) if job.foreign else [0])

    def generate(self, jobs: Sequence[ChatJob], prepared: Sequence[Prepared],
                 on_text: OnText | None = None) -> list[Completion]:
        time.sleep(self.batch_s + self.item_s * len(jobs))
        return [Completion(f"{j.task}: {j.foreign[::-1][: j.max_tokens]}", len(p.prompt),
                           min(j.max_tokens, len(j.foreign or "")), "length")
                for j, p in zip(jobs, prepared, strict=True)]


def chat_body(text: str, max_tokens: int) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": f"<foreign>{text}</foreign>"}],
                       "max_tokens": max_tokens}).encode("utf-8")


def post(host: str, port: int, body: bytes, timeout: float = 120.0) -> dict[str, Any]:
    """One request on a fresh connection: status, answer, seconds, or what went wrong."""
    t = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", body,
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        out: dict[str, Any] = {"status": resp.status, "seconds": time.perf_counter() - t}
        if resp.status == 200:
            out["answer"] = json.loads(data)["choices"][0]["message"]["content"]
        else:
            out["error"] = data.decode("utf-8", "replace")[:200]
        return out
    except RESET_ERRORS as exc:
        return {"reset": type(exc).__name__, "seconds": time.perf_counter() - t}
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return {"failure": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - t}
    finally:
        conn.close()


def burst(host: str, port: int, bodies: list[bytes]) -> tuple[list[dict[str, Any]], float]:
    """All ``bodies`` at once, one connection each; results in order and the wall time."""
    start = threading.Barrier(len(bodies) + 1)
    results: list[dict[str, Any]] = [{} for _ in bodies]

    def one(i: int) -> None:
        start.wait()
        results[i] = post(host, port, bodies[i])

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(bodies))]
    for th in threads:
        th.start()
    start.wait()
    t = time.perf_counter()
    for th in threads:
        th.join(300)
    return results, time.perf_counter() - t


def latency_ms(seconds: list[float]) -> dict[str, float]:
    lat = seconds or [float("nan")]
    return {"p50": 1000 * pct(lat, 0.5), "p90": 1000 * pct(lat, 0.9),
            "p95": 1000 * pct(lat, 0.95), "p99": 1000 * pct(lat, 0.99),
            "max": 1000 * max(lat), "mean": 1000 * statistics.fmean(lat)}


def tally(bodies: list[bytes], results: list[dict[str, Any]], expected: dict[bytes, Any]
          ) -> tuple[dict[str, int], list[float], list[dict[str, Any]]]:
    """Counts of answered, reset and failed requests, answered latencies, a few failures."""
    counts = {"requests": 0, "ok": 0, "resets": 0, "errors": 0, "different_answers": 0}
    latencies: list[float] = []
    examples: list[dict[str, Any]] = []
    for body, r in zip(bodies, results, strict=True):
        counts["requests"] += 1
        if "reset" in r:
            counts["resets"] += 1
        elif r.get("status") != 200:
            counts["errors"] += 1
        else:
            counts["ok"] += 1
            latencies.append(r["seconds"])
            counts["different_answers"] += r["answer"] != expected[body]
        if ("reset" in r or r.get("status") != 200) and len(examples) < 3:
            examples.append(r)
    return counts, latencies, examples


def sequential_answers(server: LLINKServer, bodies: list[bytes]) -> dict[bytes, Any]:
    """Each distinct request's answer when sent alone (the reference for batched ones)."""
    host, port = server.server_address[:2]
    return {b: post(host, port, b).get("answer") for b in dict.fromkeys(bodies)}


def load_test(server: LLINKServer, concurrency: int, rounds: int, max_tokens: int
              ) -> dict[str, Any]:
    """``rounds`` bursts of ``concurrency`` requests against a running server."""
    host, port = server.server_address[:2]
    bodies = [chat_body(TEXTS[i % len(TEXTS)], max_tokens) for i in range(concurrency)]
    expected = sequential_answers(server, bodies)
    calls0 = server.generate_calls
    all_bodies, all_results, walls = [], [], []
    for _ in range(rounds):
        results, wall = burst(host, port, bodies)
        walls.append(wall)
        all_bodies += bodies
        all_results += results
    counts, latencies, examples = tally(all_bodies, all_results, expected)
    return {
        **counts,
        "concurrency": concurrency,
        "rounds": rounds,
        "generate_calls": server.generate_calls - calls0,
        "latency_ms": latency_ms(latencies),
        "burst_seconds": walls,
        "requests_per_s": concurrency / statistics.median(walls),
        "failures": examples,
    }


def bounded_load(server: LLINKServer, texts: list[str], clients: int, max_tokens: int
                 ) -> dict[str, Any]:
    """One request per text, sent by ``clients`` threads with one request in flight each."""
    host, port = server.server_address[:2]
    bodies = [chat_body(t, max_tokens) for t in texts]
    expected = sequential_answers(server, bodies)
    slot_cache = getattr(server.backend, "slot_cache", None)
    if slot_cache is not None:
        slot_cache.clear()  # the reference pass saw every text: the run must not profit
    calls0 = server.generate_calls
    results: list[dict[str, Any]] = [{} for _ in bodies]
    lock, taken = threading.Lock(), [0]

    def client() -> None:
        while True:
            with lock:
                i = taken[0]
                taken[0] += 1
            if i >= len(bodies):
                return
            results[i] = post(host, port, bodies[i])

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join(600)
    wall = time.perf_counter() - t
    counts, latencies, examples = tally(bodies, results, expected)
    return {
        **counts,
        "clients": clients,
        "distinct_texts": len(set(texts)),
        "generate_calls": server.generate_calls - calls0,
        "latency_ms": latency_ms(latencies),
        "seconds": wall,
        "requests_per_s": len(bodies) / wall,
        "failures": examples,
    }


def _serve_and_test(backend: Any, settings: ServeSettings, concurrency: int, rounds: int,
                    max_tokens: int, backlog: int | None = None) -> dict[str, Any]:
    with make_server(backend, settings, "127.0.0.1", 0, backlog=backlog) as server:
        res = load_test(server, concurrency, rounds, max_tokens)
    return {"listen_backlog": server.listen_backlog, **res}


def bounded_texts(model: str | None, n: int) -> list[str]:
    """The bounded run's texts: test sentences spread evenly (a model), else the stand-in's."""
    if model is None:
        return [TEXTS[i % len(TEXTS)] for i in range(n)]
    from llink.config import DataConfig
    from llink.data.splits import load_splits

    return [p.foreign for p in evenly_spaced(load_splits(DataConfig()).test, n)]


def measure(model: str | None, concurrency: int, rounds: int, max_tokens: int,
            old_backlog: int = 5, requests: int = 0, clients: int = 16) -> dict[str, Any]:
    backend = (LLINKBackend.load(model, device="auto") if model else StandInBackend())
    settings = ServeSettings(max_batch=8, batch_wait_ms=10, max_tokens=max(128, max_tokens))
    bounded = None
    if requests:
        with make_server(backend, settings, "127.0.0.1", 0) as server:
            bounded = bounded_load(server, bounded_texts(model, requests), clients, max_tokens)
    res = (_serve_and_test(backend, settings, concurrency, rounds, max_tokens)
           if rounds else None)
    old = (_serve_and_test(backend, settings, concurrency, 1, max_tokens, old_backlog)
           if old_backlog and rounds else None)
    return {"machine": machine_description(), "backend": backend.kind,
            "model": model, "backend_settings": backend.describe() if not model else None,
            "max_batch": settings.max_batch, "max_tokens": max_tokens,
            "bounded": bounded, "burst": res, "old_backlog": old}


def markdown(res: dict[str, Any]) -> str:
    backend = (f"LLINK model {res['model']}" if res["model"] else
               f"stand-in backend ({res['backend_settings']['batch_ms']:g} ms per generate "
               f"call + {res['backend_settings']['item_ms']:g} ms per request)")
    lines = [f"# llink serve under load on 127.0.0.1: {backend}", "",
             f"Batches of up to {res['max_batch']}, max_tokens {res['max_tokens']}. Latency: "
             "connect to the last byte of the answer, answered requests only; a fresh "
             "connection per request.", ""]
    if b := res.get("bounded"):
        lat = b["latency_ms"]
        lines += [
            f"## {b['requests']} requests, {b['clients']} concurrent",
            "",
            f"{b['clients']} clients, each with one request in flight, "
            f"{b['distinct_texts']} distinct foreign texts"
            + (" (test sentences spread evenly; slot cache emptied before the run)"
               if res["model"] else "") + ".",
            "",
            "| requests | ok | errors | resets | answers ≠ sequential | generate calls | "
            "p50 ms | p95 ms | p99 ms | max ms | requests/s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {b['requests']} | {b['ok']} | {b['errors']} | {b['resets']} | "
            f"{b['different_answers']} | {b['generate_calls']} | {lat['p50']:.0f} | "
            f"{lat['p95']:.0f} | {lat['p99']:.0f} | {lat['max']:.0f} | "
            f"{b['requests_per_s']:.1f} |",
            "",
        ]
    if r := res.get("burst"):
        lines += [
            f"## Bursts of {r['concurrency']} simultaneous requests",
            "",
            f"{r['rounds']} rounds of {r['concurrency']} requests released together.",
            "",
            "| listen backlog | requests | ok | resets | errors | answers ≠ sequential | "
            "generate calls | p50 ms | p95 ms | p99 ms | max ms | requests/s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            _table_row(r),
        ]
        if res.get("old_backlog"):
            lines.append(_table_row(res["old_backlog"], " (before issue 15)"))
        lines.append("")
    lines += [f"Machine: {res['machine']}.", ""]
    return "\n".join(lines)


def _table_row(r: dict[str, Any], note: str = "") -> str:
    lat = r["latency_ms"]
    return (f"| {r['listen_backlog']}{note} | {r['requests']} | {r['ok']} | {r['resets']} | "
            f"{r['errors']} | {r['different_answers']} | {r['generate_calls']} | "
            f"{lat['p50']:.0f} | {lat['p95']:.0f} | {lat['p99']:.0f} | {lat['max']:.0f} | "
            f"{r['requests_per_s']:.1f} |")


def headline(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    if b := res.get("bounded"):
        lat = b["latency_ms"]
        rows.append(row("serve load", f"{b['requests']} requests, {b['clients']} concurrent: "
                        "errors + resets", str(b["errors"] + b["resets"]), "—", None,
                        note=f"p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms"))
    if r := res.get("burst"):
        lat = r["latency_ms"]
        rows.append(row("serve load", f"{r['concurrency']} simultaneous requests: resets + "
                        "errors", str(r["resets"] + r["errors"]), "—", None,
                        note=f"p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms"))
    return rows


def run(model: str | None = None, quick: bool = False, **overrides: Any) -> dict[str, Any]:
    """Measure with the defaults (or the quick settings), write results, return them."""
    q = common.settings(quick, QUICK, DEFAULT, overrides)
    res = measure(model, q["concurrency"], q["rounds"], q["max_tokens"], q["old_backlog"],
                  q["requests"], q["clients"])
    return common.report("serve_load", res, markdown, quick)


if __name__ == "__main__":
    common.main(__name__)
