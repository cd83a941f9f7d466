"""``llink data synth``: prompts, reply checks, resume, both teacher backends, the CLI.

The endpoint backend talks to a real HTTP server on 127.0.0.1 started by the test.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llink.cli import main
from llink.data.pairs import Pair
from llink.data.synth import (
    DROP_REASONS,
    PROMPT_VERSION,
    PROMPTS,
    SYNTH_TASKS,
    EndpointTeacher,
    HFTeacher,
    SynthError,
    build_prompt,
    check_reply,
    parse_qa,
    scan_output,
    synthesize,
)
from llink.data.tasks import read_task_file
from llink.method.inject import TASKS, UnknownTaskError
from llink.remote.chat_client import EndpointError, chat_completions_url

from .conftest import KHMER_ENGLISH

PAIRS = [Pair(en, km) for en, km in KHMER_ENGLISH]


def canned_reply(prompt: str) -> str:
    """A plausible teacher answer for each prompt template, from the English text."""
    en = prompt.rsplit("Text: ", 1)[1]
    if prompt.startswith("Write one question"):
        return f"Question: What does the text say?\nAnswer: {en}"
    if prompt.startswith("Paraphrase"):
        return f"In other words: {en.lower()}"
    if prompt.startswith("Write a short title"):
        return f'Title: "On {en.rstrip(".").lower()}"'
    return f"- {en}"


class CannedTeacher:
    """A teacher that answers from :func:`canned_reply` and counts the prompts it saw."""

    name = "canned:test"

    def __init__(self, reply: Callable[[str], str] = canned_reply) -> None:
        self.reply = reply
        self.prompts: list[str] = []

    def complete(self, prompts: list[str]) -> list[str]:
        self.prompts += prompts
        return [self.reply(p) for p in prompts]


# --------------------------------------------------------------------------- HTTP server
@dataclass
class ServerState:
    url: str
    reply: Callable[[str], str] = canned_reply
    key: str | None = None  # required bearer token, if any
    fail_429: int = 0  # answer this many requests with 429 first
    fail_status: int | None = None  # answer every request with this status
    requests: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(state: ServerState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _send(self, status: int, obj: dict, headers: dict | None = None) -> None:
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.requests.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), **payload}
                )
                throttle = state.fail_429 > 0
                state.fail_429 -= throttle
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": {"message": "no such route"}})
            if state.key and self.headers.get("Authorization") != f"Bearer {state.key}":
                return self._send(401, {"error": {"message": "invalid api key"}})
            if state.fail_status:
                return self._send(state.fail_status, {"error": {"message": "overloaded"}})
            if throttle:
                return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
            content = state.reply(payload["messages"][-1]["content"])
            self._send(200, {"choices": [{"message": {"role": "assistant", "content": content}}]})

    return Handler


@pytest.fixture()
def server() -> Iterator[ServerState]:
    state = ServerState(url="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


# --------------------------------------------------------------------------- prompts, replies
def test_prompts_are_versioned_and_cover_the_synthetic_tasks():
    assert PROMPT_VERSION and set(SYNTH_TASKS) == set(TASKS) - {"translate_to_english"}
    for task, template in PROMPTS.items():
        assert "{en}" in template and "English text" in build_prompt(task, "x")
    assert build_prompt("title_generation", "Open the file menu.").endswith(
        "Text: Open the file menu."
    )
    with pytest.raises(SynthError, match="not written by a teacher"):
        build_prompt("translate_to_english", "x")
    with pytest.raises(UnknownTaskError):
        build_prompt("poetry", "x")


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Question: Who opens it?\nAnswer: The user.", ("Who opens it?", "The user.")),
        ("**Question:** Who?\n**Answer:** Bob", ("Who?", "Bob")),
        ("Q: How many?\nA: Three.\nQuestion: Another?\nAnswer: No.", ("How many?", "Three.")),
        ("Question: What? Answer: That.", ("What?", "That.")),
        ("The user opens it.", None),
        ("Question: Who opens it?", None),
        ("Question: \nAnswer: x", None),
    ],
)
def test_parse_qa(reply, expected):
    assert parse_qa(reply) == expected


def test_check_reply_drop_reasons():
    en = "Save the document before closing."
    prompt = build_prompt("paraphrase_in_english", en)
    assert check_reply("title_generation", ' Title: "Saving documents" ', prompt, en) == (
        "Saving documents",
        None,
    )
    assert check_reply("paraphrase_in_english", "   ", prompt, en) == "empty"
    assert check_reply("title_generation", "Save " * 40, prompt, en) == "too_long"
    assert check_reply("paraphrase_in_english", "រក្សាទុកឯកសារមុនពេលបិទ។", prompt, en) == (
        "not_english"
    )
    assert check_reply("summarize_in_english", "12 345", prompt, en) == "not_english"
    assert check_reply("paraphrase_in_english", prompt, prompt, en) == "echo"
    assert check_reply("paraphrase_in_english", f"Text: {en}", prompt, en) == "echo"
    assert check_reply("paraphrase_in_english", en.upper(), prompt, en) == "echo"
    assert check_reply("title_generation", f'Title: "{en[:-1]}"', prompt, en) == "echo"
    assert check_reply("summarize_in_english", f"Here is the summary:\n{en}", prompt, en) == (
        "echo"
    )
    assert check_reply("summarize_in_english", "Here's a summary:\n\nSave first.", prompt, en) == (
        "Save first.",
        None,
    )
    qa_prompt = build_prompt("qa_about_text", en)
    assert check_reply("qa_about_text", "Save it first.", qa_prompt, en) == "unparsable_qa"
    assert check_reply(
        "qa_about_text", "Question: When?\nAnswer: Before closing.", qa_prompt, en
    ) == ("Before closing.", "When?")
    assert check_reply("qa_about_text", "Question: ចុច?\nAnswer: yes", qa_prompt, en) == (
        "not_english"
    )


def test_each_drop_reason_is_counted(tmp_path):
    replies = {
        "paraphrase_in_english": "",
        "summarize_in_english": "word " * 200,
        "title_generation": "ខ្ញុំស្រឡាញ់គ្រួសារ",
        "executive_summary": "{prompt}",
        "qa_about_text": "just an answer",
    }

    def reply(prompt: str) -> str:
        task = next(t for t in replies if PROMPTS[t].split("{en}")[0] in prompt)
        return replies[task].replace("{prompt}", prompt)

    report = synthesize(
        PAIRS[:2], CannedTeacher(reply), tmp_path / "s.jsonl", list(replies), progress=False
    )
    assert dict(report.dropped) == {r: 2 for r in DROP_REASONS}
    assert sum(report.written.values()) == 0
    assert "dropped: echo 2, empty 2, not_english 2, too_long 2, unparsable_qa 2" in (
        report.summary()
    )


def test_foreign_length_filter(tmp_path):
    pairs = [
        Pair("Eleven chars.", "ក" * 11),
        Pair("Twelve chars.", "ក" * 12),
        Pair("Max chars.", "ក" * 256),
        Pair("Too long.", "ក" * 257),
        Pair("Padded.", "  " + "ក" * 11 + "  "),
    ]
    teacher = CannedTeacher()
    report = synthesize(pairs, teacher, tmp_path / "s.jsonl", ["title_generation"], progress=False)
    assert report.dropped["foreign_length"] == 3 and report.pairs == 2
    assert [r["en"] for r in lines(tmp_path / "s.jsonl")] == ["Twelve chars.", "Max chars."]
    limited = synthesize(
        pairs, CannedTeacher(), tmp_path / "t.jsonl", ["title_generation"], limit=1, progress=False
    )
    assert limited.pairs == 1 and sum(limited.written.values()) == 1


# --------------------------------------------------------------------------- output, resume
def test_output_records_read_back_as_task_examples(tmp_path):
    out = tmp_path / "s.jsonl"
    report = synthesize(PAIRS[:3], CannedTeacher(), out, progress=False)
    assert sum(report.written.values()) == 3 * len(SYNTH_TASKS)
    recs = lines(out)
    first = recs[0]
    assert first["teacher"] == "canned:test" and first["prompt_version"] == PROMPT_VERSION
    assert first["prompt"] == build_prompt(first["task"], first["en"])
    assert first["foreign"] == PAIRS[0].foreign and first["en"] == PAIRS[0].en
    qa = next(r for r in recs if r["task"] == "qa_about_text")
    assert qa["question"] == "What does the text say?" and qa["answer"] == PAIRS[0].en
    assert all("question" not in r for r in recs if r["task"] != "qa_about_text")
    title = next(r for r in recs if r["task"] == "title_generation")
    assert title["answer"] == "On " + PAIRS[0].en.rstrip(".").lower()  # label, quotes gone
    examples = read_task_file(out)  # extra keys are ignored by the Stage B reader
    assert len(examples) == len(recs) and examples[0].en == PAIRS[0].en
    assert next(e for e in examples if e.task == "qa_about_text").question


def test_resume_skips_done_work_and_repairs_a_truncated_line(tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    tasks = ["title_generation", "qa_about_text"]
    synthesize(PAIRS[:3], CannedTeacher(), out, tasks, batch_size=4, progress=False)
    full = out.read_bytes()
    again = CannedTeacher()
    report = synthesize(PAIRS[:3], again, out, tasks, progress=False)
    assert again.prompts == [] and report.already_done == 6 and not report.written
    assert out.read_bytes() == full
    # a crash in the middle of the last line
    out.write_bytes(full[: full.rstrip(b"\n").rfind(b"\n") + 1] + full.splitlines()[-1][:17])
    assert len(scan_output(out).keys) == 5 and out.read_bytes() != full
    out.write_bytes(full[: full.rstrip(b"\n").rfind(b"\n") + 1] + full.splitlines()[-1][:17])
    repair = CannedTeacher()
    report = synthesize(PAIRS[:3], repair, out, tasks, progress=False)
    assert report.repaired_tail and "repaired" in report.summary()
    assert len(repair.prompts) == 1 and sum(report.written.values()) == 1
    assert out.read_bytes() == full
    # more pairs later: only the new ones are asked for
    more = CannedTeacher()
    more.name = "canned:other"
    synthesize(PAIRS[:4], more, out, tasks, progress=False)
    assert len(more.prompts) == 2 and len(lines(out)) == 8
    assert "6 by canned:test / " in capsys.readouterr().err


def test_a_foreign_file_is_not_appended_to(tmp_path):
    out = tmp_path / "s.jsonl"
    out.write_text('{"en": "x"}\n', encoding="utf-8")
    with pytest.raises(SynthError, match="s.jsonl:1"):
        synthesize(PAIRS[:1], CannedTeacher(), out, progress=False)


# --------------------------------------------------------------------------- endpoint teacher
def test_chat_completions_url():
    full = "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/") == full
    assert chat_completions_url("http://h:1") == full
    assert chat_completions_url(full) == full


def test_endpoint_teacher_retries_429_and_sends_the_key(server, monkeypatch):
    monkeypatch.setenv("SYNTH_TEST_KEY", "sekret")
    server.key, server.fail_429 = "sekret", 1
    teacher = EndpointTeacher(
        server.url, "tiny-chat", api_key_env="SYNTH_TEST_KEY", backoff=0.01, timeout=5
    )
    prompts = [build_prompt("title_generation", en) for en, _ in KHMER_ENGLISH[:3]]
    assert teacher.complete(prompts) == [canned_reply(p) for p in prompts]
    assert len(server.requests) == 4  # one 429, then three answers
    req = server.requests[-1]
    assert req["auth"] == "Bearer sekret" and req["model"] == "tiny-chat"
    assert req["temperature"] == 0 and req["messages"][0]["role"] == "user"
    assert teacher.name == "endpoint:tiny-chat"


def test_endpoint_teacher_errors(server, monkeypatch):
    server.key = "right"
    monkeypatch.setenv("SYNTH_TEST_KEY", "wrong")
    bad_key = EndpointTeacher(server.url, "m", api_key_env="SYNTH_TEST_KEY", backoff=0.01)
    with pytest.raises(EndpointError, match=r"HTTP 401 \(not authorised\).*SYNTH_TEST_KEY"):
        bad_key.complete(["hi"])
    assert len(server.requests) == 1  # 401 is not retried
    with pytest.raises(EndpointError, match="not authorised.*--api-key-env"):
        EndpointTeacher(server.url, "m", backoff=0.01).complete(["hi"])
    server.key, server.fail_status = None, 503
    with pytest.raises(EndpointError, match="HTTP 503, gave up after 3 attempts.*overloaded"):
        EndpointTeacher(server.url, "m", retries=2, backoff=0.01).complete(["hi"])
    with pytest.raises(EndpointError, match="404 \\(not found\\)"):
        EndpointTeacher(server.url + "/nope/chat/completions", "m").complete(["hi"])
    monkeypatch.delenv("SYNTH_TEST_KEY")
    with pytest.raises(EndpointError, match="SYNTH_TEST_KEY.*not set"):
        EndpointTeacher(server.url, "m", api_key_env="SYNTH_TEST_KEY")


def test_endpoint_teacher_unreachable():
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    teacher = EndpointTeacher(f"http://127.0.0.1:{port}", "m", retries=1, backoff=0.01)
    with pytest.raises(EndpointError, match=r"cannot reach .*after 2 attempts"):
        teacher.complete(["hi"])


# --------------------------------------------------------------------------- local HF teacher
def test_hf_teacher_batches_with_left_padding(tiny_decoder_dir, tmp_path):
    import torch

    teacher = HFTeacher(str(tiny_decoder_dir), device="cpu", max_new_tokens=6)
    assert teacher.tokenizer.padding_side == "left" and teacher.name.startswith("hf:")
    # the tiny decoder as built answers only newlines (empty replies): give its layers
    # larger weights, so that replies differ with the prompt and the checks below can fail
    torch.manual_seed(0)
    with torch.no_grad():
        for name, prm in teacher.model.named_parameters():
            if "layers" in name and prm.dim() == 2:
                prm.normal_(0, 0.2)
    prompts = [
        build_prompt("title_generation", "Open the file menu."),
        build_prompt("extract_main_points", "Select all cells in the sheet, then print."),
    ]
    batched = teacher.complete(prompts)
    assert [teacher.complete([p])[0] for p in prompts] == batched
    assert batched == [_greedy(teacher, p, 6) for p in prompts]
    assert all(batched) and batched[0] != batched[1]
    report = synthesize(
        PAIRS[:2], teacher, tmp_path / "s.jsonl", ["title_generation"], batch_size=2, progress=False
    )
    assert report.requested == 2
    # each reply either became the row of its pair, or was dropped for its check's reason
    written, dropped = [], Counter()
    for pair in PAIRS[:2]:
        prompt = build_prompt("title_generation", pair.en)
        checked = check_reply("title_generation", _greedy(teacher, prompt, 6), prompt, pair.en)
        if isinstance(checked, str):
            dropped[checked] += 1
        else:
            written.append((pair.foreign, checked[0]))
    rows = read_task_file(tmp_path / "s.jsonl") if (tmp_path / "s.jsonl").exists() else []
    assert [(r.foreign, r.answer) for r in rows] == written
    assert dict(report.written) == ({"title_generation": len(written)} if written else {})
    assert dict(report.dropped) == dict(dropped)


def _greedy(teacher: HFTeacher, prompt: str, max_new_tokens: int) -> str:
    """Greedy decoding written out: the prompt alone, no padding, no cache."""
    import torch

    tok, model = teacher.tokenizer, teacher.model
    ids = tok(teacher._text(prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]
    stop = model.generation_config.eos_token_id
    stop = set(stop if isinstance(stop, list) else [stop])
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            t = int(model(input_ids=ids).logits[0, -1].argmax())
            new.append(t)
            if t in stop:
                break
            ids = torch.cat([ids, torch.tensor([[t]])], 1)
    return tok.decode(new, skip_special_tokens=True).strip()


# --------------------------------------------------------------------------- CLI
def _cli_args(pairs: Path, out: Path, *extra: str) -> list[str]:
    return [
        "data", "synth", f"data.pairs={pairs}", "data.dev_fraction=0.0",
        "data.test_fraction=0.0", "data.sentence_like_only=false",
        "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip


def test_cli_with_an_endpoint(server, tiny_pairs_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SYNTH_TEST_KEY", "sekret")
    server.key = "sekret"
    out = tmp_path / "synth.jsonl"
    args = _cli_args(
        tiny_pairs_file,
        out,
        "--endpoint",
        server.url,
        "--model",
        "tiny-chat",
        "--api-key-env",
        "SYNTH_TEST_KEY",
        "--limit",
        "3",
        "--batch-size",
        "2",
        "--tasks",
        "qa_about_text",
        "title_generation",
    )
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "6 new examples from 3 pairs" in printed and "qa_about_text 3" in printed
    recs = lines(out)
    assert len(recs) == 6 and {r["teacher"] for r in recs} == {"endpoint:tiny-chat"}
    assert main(args) == 0  # resumes: nothing new
    assert "0 new examples" in capsys.readouterr().out and len(lines(out)) == 6
    assert len(read_task_file(out)) == 6

    server.key = "other"
    assert (
        main(
            _cli_args(
                tiny_pairs_file,
                tmp_path / "x.jsonl",
                "--endpoint",
                server.url,
                "--model",
                "m",
                "--api-key-env",
                "SYNTH_TEST_KEY",
            )
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "Traceback" not in err
    assert main(_cli_args(tiny_pairs_file, out, "--model", "m")) == 2  # --model, no --endpoint
    assert "--endpoint" in capsys.readouterr().err
