"""Synthetic Stage B instruction data written by a teacher LLM (``llink data synth``).

For every parallel pair whose foreign side is 12–256 characters long, and every
requested task type except ``translate_to_english`` (which comes from the pairs
themselves), a teacher LLM is shown the **English reference** and writes the answer.
The example then pairs the *foreign* text with that English answer.

Teachers share one interface, :class:`Teacher`: a local Hugging Face causal LM
(:class:`HFTeacher`) or any OpenAI-compatible chat-completions endpoint
(:class:`EndpointTeacher`, standard library only). Output is JSONL with the
:class:`~llink.data.tasks.TaskExample` fields plus ``teacher``, ``prompt_version`` and
``prompt``; it is appended line by line, so a rerun resumes where a crash left off.
"""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from llink.data.pairs import Pair
from llink.data.tasks import TaskExample, foreign_length_ok
from llink.method.inject import TASKS, UnknownTaskError
from llink.remote.chat_client import ChatEndpoint as EndpointTeacher

#: Bump whenever a template in :data:`PROMPTS` changes; stored with every example.
PROMPT_VERSION = "synth-v1"

_TEXT = "\n\nText: {en}"

#: Teacher prompts per task type; ``{en}`` is the English reference.
PROMPTS: dict[str, str] = {
    "paraphrase_in_english": "Paraphrase the English text below: keep its full meaning but use "
    "different words. Reply with the paraphrase only." + _TEXT,
    "summarize_in_english": "Summarize the English text below in one short sentence. "
    "Reply with the summary only." + _TEXT,
    "qa_about_text": "Write one question that the English text below answers, and its answer. "
    "Use exactly this format and nothing else:\nQuestion: <the question>\nAnswer: <the answer>"
    + _TEXT,
    "extract_key_fields": "List the key fields of the English text below (who, what, where, "
    "when, numbers) as short 'field: value' lines, leaving out fields the text does not "
    "mention. Reply with the list only." + _TEXT,
    "title_generation": "Write a short title (at most 10 words) for the English text below. "
    "Reply with the title only." + _TEXT,
    "executive_summary": "Write a brief executive summary (one to three sentences) of the "
    "English text below. Reply with the summary only." + _TEXT,
    "extract_main_points": "List the main points of the English text below as short bullet "
    "points, one per line starting with '- '. Reply with the list only." + _TEXT,
}
SYNTH_TASKS: tuple[str, ...] = tuple(PROMPTS)

#: Longest accepted answer per task, in characters.
MAX_ANSWER_CHARS: dict[str, int] = {
    "paraphrase_in_english": 600,
    "summarize_in_english": 400,
    "qa_about_text": 400,
    "extract_key_fields": 800,
    "title_generation": 150,
    "executive_summary": 800,
    "extract_main_points": 800,
}
MAX_QUESTION_CHARS = 300
MIN_LATIN_FRACTION = 0.8

DROP_REASONS = ("empty", "too_long", "not_english", "echo", "unparsable_qa")


def _label(words: str) -> str:
    """A line label such as ``Question:``, ``**Q:**`` or ``## Title:``."""
    return rf"[\s*_#>-]*(?:{words})[\s*_]*:[\s*_]*"


_QA = re.compile(
    rf"^{_label('question|q')}(?P<q>.+?)\s+{_label('answer|a')}(?P<a>.+)$",
    re.IGNORECASE | re.DOTALL,
)
_NEXT_QUESTION = re.compile(rf"\n{_label('question|q')}", re.IGNORECASE)
_LABEL = re.compile(
    "^" + _label("paraphrase|summary|title|executive summary|main points|key fields|answer"),
    re.IGNORECASE,
)
_PREAMBLE = re.compile(r"^(?:here is|here's|here are|sure)\b[^\n]*:[ \t]*\n+", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


class SynthError(RuntimeError):
    """A synthetic-data job cannot go on (bad arguments, unreadable output, teacher failure)."""


# --------------------------------------------------------------------------- prompts, replies
def build_prompt(task: str, en: str) -> str:
    """The teacher prompt of ``task`` for the English reference ``en``."""
    if task not in TASKS:
        raise UnknownTaskError(task)
    if task not in PROMPTS:
        raise SynthError(
            f"{task!r} is not written by a teacher; synthetic tasks: {', '.join(SYNTH_TASKS)}"
        )
    return PROMPTS[task].format(en=en)


def _norm(text: str) -> str:
    return _SPACE.sub(" ", text.casefold()).strip()


def _strip_wrapping(text: str) -> str:
    """Trim whitespace, a preamble line (``Here is the title:``), a label such as
    ``Title:`` and enclosing quotes."""
    text = _PREAMBLE.sub("", text.strip(), count=1)
    text = _LABEL.sub("", text, count=1).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def parse_qa(reply: str) -> tuple[str, str] | None:
    """``(question, answer)`` from a ``Question: ...`` / ``Answer: ...`` reply, else None."""
    m = _QA.match(reply.strip())
    if not m:
        return None
    a = _NEXT_QUESTION.split(m["a"])[0]  # only the first of several QA pairs
    q, a = m["q"].strip(" *_"), a.strip(" *_")
    return (q, a) if q and a else None


def latin_fraction(text: str) -> float:
    """Share of the letters of ``text`` that are Latin script (0 when it has no letters)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0
    latin = sum(1 for c in letters if c.isascii() or "LATIN" in unicodedata.name(c, ""))
    return latin / len(letters)


def _echoes(reply: str, prompt: str, en: str) -> bool:
    r = _norm(reply)
    instruction = _norm(prompt.splitlines()[0])
    return instruction in r or _norm(prompt) in r or _norm("Text: " + en) in r


def _text_problem(text: str, limit: int) -> str | None:
    if not text:
        return "empty"
    if len(text) > limit:
        return "too_long"
    if latin_fraction(text) < MIN_LATIN_FRACTION:
        return "not_english"
    return None


def check_reply(task: str, reply: str, prompt: str, en: str) -> tuple[str, str | None] | str:
    """``(answer, question)`` for a usable reply, else the drop reason (:data:`DROP_REASONS`)."""
    reply = (reply or "").strip()
    if not reply:
        return "empty"
    if _echoes(reply, prompt, en):
        return "echo"
    question = None
    if task == "qa_about_text":
        qa = parse_qa(reply)
        if qa is None:
            return "unparsable_qa"
        question, answer = qa
        problem = _text_problem(question, MAX_QUESTION_CHARS)
        if problem:
            return problem
    else:
        answer = _strip_wrapping(reply)
        if _norm(answer).strip(" .") == _norm(en).strip(" ."):  # a verbatim copy
            return "echo"
    return _text_problem(answer, MAX_ANSWER_CHARS[task]) or (answer, question)


# --------------------------------------------------------------------------- teachers
class Teacher(Protocol):
    """Anything that turns user prompts into replies, one reply per prompt, in order."""

    name: str

    def complete(self, prompts: list[str]) -> list[str]: ...


class HFTeacher:
    """A local Hugging Face causal LM: batched greedy decoding with its chat template."""

    def __init__(
        self,
        model: str,
        *,
        cache_dir: str | None = None,
        device: str = "auto",
        max_new_tokens: int = 192,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from llink.backbones.loading import resolve_device
        from llink.backbones.offline import resolve_model

        path = resolve_model(model, Path(cache_dir) if cache_dir else None)
        dev = resolve_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
        self.model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, use_safetensors=True).to(dev).eval()  # never unpickle
        self.max_new_tokens = max_new_tokens
        self.name = f"hf:{model}"

    def _text(self, prompt: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        return f"User: {prompt}\nAssistant:"

    def complete(self, prompts: list[str]) -> list[str]:
        import torch

        if not prompts:
            return []
        templated = bool(getattr(self.tokenizer, "chat_template", None))
        enc = self.tokenizer(
            [self._text(p) for p in prompts],
            return_tensors="pt",
            padding=True,
            add_special_tokens=not templated,  # a chat template writes its own specials
        ).to(self.model.device)
        with torch.inference_mode():
            out = self.model.generate(
                **enc,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        return [s.strip() for s in self.tokenizer.batch_decode(new, skip_special_tokens=True)]


def make_teacher(
    teacher: str | None = None,
    *,
    endpoint: str | None = None,
    model: str | None = None,
    api_key_env: str | None = None,
    cache_dir: str | None = None,
    device: str = "auto",
    timeout: float = 60.0,
    max_new_tokens: int = 192,
) -> Teacher:
    """An :class:`EndpointTeacher` if ``endpoint`` is given, else a local :class:`HFTeacher`."""
    if endpoint:
        if teacher:
            raise SynthError("give either a local teacher (--teacher) or --endpoint, not both")
        return EndpointTeacher(
            endpoint,
            model or "",
            api_key_env=api_key_env,
            timeout=timeout,
            max_tokens=max_new_tokens,
        )
    if model or api_key_env:
        raise SynthError("--model and --api-key-env go with --endpoint URL")
    return HFTeacher(
        teacher or "offline:smollm2-135m-instruct",
        cache_dir=cache_dir,
        device=device,
        max_new_tokens=max_new_tokens,
    )


# --------------------------------------------------------------------------- output file
Key = tuple[str, str, str]  # (task, English reference, foreign text)


def _key(task: str, en: str, foreign: str) -> Key:
    return (task, en, foreign)


@dataclass
class Existing:
    """What an output file already holds."""

    keys: set[Key] = field(default_factory=set)
    versions: Counter[str] = field(default_factory=Counter)
    repaired_tail: bool = False


def scan_output(path: str | Path) -> Existing:
    """Keys already written to ``path``; a truncated last line (a crash) is cut off the file."""
    path, found = Path(path), Existing()
    if not path.is_file():
        return found
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # everything after the last newline is an unfinished write
    for lineno, line in enumerate(data[:end].split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            found.keys.add(_key(obj["task"], obj["en"], obj["foreign"]))
        except (ValueError, KeyError, TypeError):
            raise SynthError(
                f"{path}:{lineno}: not a `llink data synth` record; use another --out file"
            ) from None
        found.versions[f"{obj.get('teacher')} / {obj.get('prompt_version')}"] += 1
    if end < len(data):
        with path.open("r+b") as fh:
            fh.truncate(end)
        found.repaired_tail = True
    return found


def example_record(
    ex: TaskExample, teacher: str, prompt: str, prompt_version: str = PROMPT_VERSION
) -> dict[str, Any]:
    """One output line: the TaskExample fields plus teacher, prompt version and prompt."""
    rec = {k: v for k, v in asdict(ex).items() if k != "question" or v is not None}
    return {**rec, "teacher": teacher, "prompt_version": prompt_version, "prompt": prompt}


# --------------------------------------------------------------------------- the job
@dataclass
class SynthReport:
    """Counts of one ``synthesize`` run."""

    path: str
    pairs: int = 0
    already_done: int = 0
    requested: int = 0
    written: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    repaired_tail: bool = False

    def summary(self) -> str:
        written = ", ".join(f"{k} {v}" for k, v in sorted(self.written.items())) or "none"
        drops = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())) or "none"
        lines = [
            f"{self.path}: {sum(self.written.values())} new examples from {self.pairs} pairs "
            f"({self.requested} teacher requests, {self.already_done} already in the file)",
            f"written: {written}",
            f"dropped: {drops}",
        ]
        if self.repaired_tail:
            lines.append("repaired: dropped a truncated last line left by an interrupted run")
        return "\n".join(lines)


@dataclass(frozen=True)
class Job:
    """One (pair, task) request to the teacher."""

    pair: Pair
    task: str
    prompt: str


def eligible_pairs(pairs: Iterable[Pair], limit: int | None, dropped: Counter[str]) -> list[Pair]:
    """Pairs whose foreign side is 12–256 characters, the first ``limit`` of them."""
    kept = []
    for p in pairs:
        if foreign_length_ok(p.foreign):
            kept.append(p)
        else:
            dropped["foreign_length"] += 1
    return kept[:limit] if limit is not None else kept


def _validate_tasks(tasks: Sequence[str]) -> list[str]:
    for t in tasks:
        build_prompt(t, "")  # raises for unknown or non-synthetic tasks
    return list(dict.fromkeys(tasks))


def synthesize(
    pairs: Iterable[Pair],
    teacher: Teacher,
    out: str | Path,
    tasks: Sequence[str] = SYNTH_TASKS,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> SynthReport:
    """Ask ``teacher`` for every (pair, task) not yet in ``out`` and append the good answers."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise SynthError("batch size must be at least 1")
    tasks = _validate_tasks(tasks)
    out = Path(out)
    report = SynthReport(str(out))
    kept = eligible_pairs(pairs, limit, report.dropped)
    report.pairs = len(kept)
    existing = scan_output(out)
    report.repaired_tail = existing.repaired_tail
    _note_other_versions(out, existing, f"{teacher.name} / {PROMPT_VERSION}")
    jobs = []
    for p in kept:
        for t in tasks:
            if _key(t, p.en, p.foreign) in existing.keys:
                report.already_done += 1
            else:
                jobs.append(Job(p, t, build_prompt(t, p.en)))
    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        out.open("a", encoding="utf-8") as fh,
        tqdm(total=len(jobs), disable=not progress, unit="ex", desc="synth") as bar,
    ):
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start : start + batch_size]
            replies = teacher.complete([j.prompt for j in batch])
            if len(replies) != len(batch):
                raise SynthError(f"teacher gave {len(replies)} replies to {len(batch)} prompts")
            report.requested += len(batch)
            for job, reply in zip(batch, replies, strict=True):
                _emit(fh, job, reply, teacher.name, report)
            bar.update(len(batch))
    return report


def _note_other_versions(out: Path, existing: Existing, current: str) -> None:
    others = {k: v for k, v in existing.versions.items() if k != current}
    if others:
        what = ", ".join(f"{v} by {k}" for k, v in sorted(others.items()))
        print(
            f"note: {out} already holds examples from another teacher / prompt version "
            f"({what}); they are kept and not redone",
            file=sys.stderr,
        )


def _emit(fh, job: Job, reply: str, teacher: str, report: SynthReport) -> None:
    checked = check_reply(job.task, reply, job.prompt, job.pair.en)
    if isinstance(checked, str):
        report.dropped[checked] += 1
        return
    answer, question = checked
    ex = TaskExample(job.task, job.pair.foreign, answer, en=job.pair.en, question=question)
    fh.write(json.dumps(example_record(ex, teacher, job.prompt), ensure_ascii=False) + "\n")
    fh.flush()
    report.written[job.task] += 1
