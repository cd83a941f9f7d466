"""The pairwise judge: order swapping, verdict parsing, intervals, a real HTTP endpoint,
a local HF judge, and the `llink eval judge` job on saved generations."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llink.cli import main
from llink.config import load_config
from llink.eval.judge import (
    LABELS,
    HFJudge,
    PairItem,
    Verdict,
    judge_items,
    load_prompt,
    make_query,
    parse_verdict,
    summarise,
    wilson_interval,
)
from llink.workflows import Session, evaluate_judge

REFS = [f"Open the file number {i}." for i in range(10)]
GOOD = list(REFS)
BAD = [f"Banana {i} is not a file." for i in range(10)]


class AlwaysFirst:
    """Prefers whatever text is in position A."""

    name = "always-first"

    def __init__(self):
        self.calls = 0

    def judge(self, queries):
        self.calls += len(queries)
        return [Verdict("A", "A") for _ in queries]


class PrefersReference:
    """Prefers the text equal to the reference (tie if neither or both are)."""

    name = "prefers-reference"

    def judge(self, queries):
        out = []
        for q in queries:
            a, b = q.first == q.reference, q.second == q.reference
            out.append(Verdict("A" if a and not b else "B" if b and not a else "tie", ""))
        return out


def _items(a, b):
    return [PairItem(i, r, x, y) for i, (r, x, y) in enumerate(zip(REFS, a, b, strict=True))]


def test_position_biased_judge_gives_only_ties_and_no_agreement():
    judge = AlwaysFirst()
    recs = judge_items(_items(GOOD, BAD), judge, load_prompt(), batch_size=4, progress=False)
    s = summarise(recs, "good", "bad")
    assert (s["win"], s["tie"], s["loss"]) == (0, 10, 0)
    assert s["order_agreement"] == 0.0 and s["position_a_rate"] == 1.0
    assert judge.calls == 20  # every item asked in both orders


def test_judge_that_reads_the_reference_gives_wins_in_both_directions():
    tmpl = load_prompt()
    s = summarise(judge_items(_items(GOOD, BAD), PrefersReference(), tmpl, progress=False),
                  "good", "bad")
    assert (s["win"], s["tie"], s["loss"]) == (10, 0, 0)
    assert s["order_agreement"] == 1.0 and s["win_rate"] == 1.0
    assert s["win_rate_ci"] == pytest.approx(wilson_interval(10, 10))
    s = summarise(judge_items(_items(BAD, GOOD), PrefersReference(), tmpl, progress=False),
                  "bad", "good")
    assert (s["win"], s["loss"]) == (0, 10)


def test_identical_outputs_are_ties_without_asking():
    judge = AlwaysFirst()
    mixed = [g if i < 4 else b for i, (g, b) in enumerate(zip(GOOD, BAD, strict=True))]
    recs = judge_items(_items(GOOD, mixed), judge, load_prompt(), progress=False)
    s = summarise(recs, "a", "b")
    assert s["identical"] == 4 and s["judged"] == 6 and judge.calls == 12
    assert [r["index"] for r in recs] == list(range(10))


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert lo == pytest.approx(0.7225, abs=1e-4) and hi == 1.0
    assert wilson_interval(0, 0) == [0.0, 1.0]


@pytest.mark.parametrize(("reply", "choice", "parsed"), [
    ("A", "A", True), ("B.", "B", True), ("Translation B is better", "B", True),
    ("tie", "tie", True), ("Tie.", "tie", True), ("a tie", "tie", True),
    ("Neither", "tie", False), ("", "tie", False),
])
def test_parse_verdict(reply, choice, parsed):
    v = parse_verdict(reply)
    assert (v.choice, v.parsed) == (choice, parsed)


def test_prompt_file_is_versioned_and_fills_in():
    q = make_query(load_prompt("judge_v1"), "ref text", "first text", "second text")
    assert "ref text" in q.prompt and "first text" in q.prompt and "second text" in q.prompt
    assert q.prompt.index("first text") < q.prompt.index("second text")


class _ChatHandler(BaseHTTPRequestHandler):
    """/v1/chat/completions answering like a judge that reads the reference."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        self.server.requests.append(body)
        ref = prompt.split("Reference: ", 1)[1].split("\n", 1)[0]
        first = prompt.split("Translation A: ", 1)[1].split("\n", 1)[0]
        second = prompt.split("Translation B: ", 1)[1].split("\n", 1)[0]
        reply = ("Translation A." if first == ref else "B" if second == ref else "Tie")
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data.encode())

    def log_message(self, *args):
        pass


@pytest.fixture()
def judge_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatHandler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _write_gen(run, name, outputs):
    gen = run / "eval" / "gen"
    gen.mkdir(parents=True, exist_ok=True)
    with (gen / f"{name}.jsonl").open("w") as fh:
        for i, (r, o) in enumerate(zip(REFS, outputs, strict=True)):
            fh.write(json.dumps({"index": i, "source": f"src {i}", "reference": r,
                                 "output": o}) + "\n")


def test_endpoint_judge_job_writes_records_and_summary(tmp_path, judge_server):
    run = tmp_path / "run"
    _write_gen(run, "llink", [g if i < 7 else b for i, (g, b) in
                              enumerate(zip(GOOD, BAD, strict=True))])
    _write_gen(run, "base", BAD)
    cfg = load_config(None, [f"run_dir={run}", "device=cpu"])
    url = f"http://127.0.0.1:{judge_server.server_address[1]}/v1"
    comp = evaluate_judge(Session(cfg, progress=False), "llink", "base", judge_url=url,
                          judge_model="scripted", n=10)
    assert (comp["win"], comp["tie"], comp["loss"]) == (7, 3, 0)
    assert comp["identical"] == 3 and comp["order_agreement"] == 1.0
    assert len(judge_server.requests) == 14
    assert judge_server.requests[0]["model"] == "scripted"
    saved = json.loads((run / "eval" / "judge.json").read_text())
    assert saved["prompt_version"] == "judge_v1" and url in saved["judge"]
    (c,) = saved["comparisons"]
    assert {"a", "b", "n", "win", "tie", "loss", "win_rate", "win_rate_ci",
            "order_agreement"} <= set(c)
    recs = [json.loads(x) for x in
            (run / "eval" / "judge" / "llink_vs_base.jsonl").read_text().splitlines()]
    assert len(recs) == 10 and recs[0]["verdict_ab"] == "A" and recs[0]["verdict_ba"] == "B"
    # the same comparison again reuses the saved records
    evaluate_judge(Session(cfg, progress=False), "llink", "base", judge_url=url,
                   judge_model="scripted", n=10)
    assert len(judge_server.requests) == 14
    # an interrupted file (items 5-9 lost) is completed: only items 5 and 6 need the judge
    recs_path = run / "eval" / "judge" / "llink_vs_base.jsonl"
    recs_path.write_text("".join(x + "\n" for x in recs_path.read_text().splitlines()[:5]))
    again = evaluate_judge(Session(cfg, progress=False), "llink", "base", judge_url=url,
                           judge_model="scripted", n=10)
    assert len(judge_server.requests) == 18
    assert (again["win"], again["tie"], again["loss"]) == (7, 3, 0)


def test_judge_cli_reports_missing_generations(tmp_path, capsys):
    rc = main(["eval", "judge", "--a", "llink", "--b", "baseline", "--judge-url",
               "http://127.0.0.1:9", "--judge-model", "x", f"run_dir={tmp_path}"])
    assert rc == 2 and "llink eval gen" in capsys.readouterr().err


def test_local_hf_judge_batches_like_single_queries(tiny_decoder_dir):
    judge = HFJudge(str(tiny_decoder_dir), device="cpu")
    tmpl = load_prompt()
    queries = [make_query(tmpl, r, g, b) for r, g, b in zip(REFS[:3], GOOD[:3], BAD[:3],
                                                            strict=True)]
    queries.append(make_query(tmpl, "short", "a much longer candidate text " * 3, "x"))
    batched = judge.judge(queries)
    single = [judge.judge([q])[0] for q in queries]
    for vb, vs in zip(batched, single, strict=True):
        assert vb.choice in LABELS and vb.choice == vs.choice
        pb, ps = json.loads(vb.raw), json.loads(vs.raw)
        assert sum(pb.values()) == pytest.approx(1.0, abs=1e-3)
        for lab in LABELS:
            assert pb[lab] == pytest.approx(ps[lab], abs=2e-3)


def test_soft_preference_cancels_a_constant_position_bias():
    def rec(i, ab, ba):
        return {"index": i, "identical": False, "verdict_ab": "A", "verdict_ba": "A",
                "winner": "tie", "agree": False, "parsed": True,
                "raw_ab": json.dumps({"A": ab, "B": 1 - ab, "tie": 0.0}),
                "raw_ba": json.dumps({"A": ba, "B": 1 - ba, "tie": 0.0})}

    # always position A, but a bit less so when b is first in item 0 (a better) and
    # when a is first in item 1 (b better)
    s = summarise([rec(0, 0.7, 0.6), rec(1, 0.6, 0.7)], "a", "b")
    assert (s["win"], s["tie"]) == (0, 2) and s["order_agreement"] == 0.0
    assert s["soft_a_preferred"] == 0.5
    assert s["soft_mean_p_a"] == pytest.approx((0.55 + 0.45) / 2)
