"""Stage B instruction examples: (task, foreign text, English answer[, question]).

Translation examples come straight from parallel pairs; other task types come from
a synthetic JSONL file (``llink data synth``). Foreign inputs outside 12–256
characters are dropped, as in the paper.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from llink.data.pairs import Pair, PairFileError
from llink.method.inject import TASKS
from llink.storage.fileio import atomic_path

MIN_FOREIGN_CHARS = 12
MAX_FOREIGN_CHARS = 256
#: ``TaskExample.source`` of English sentences read through the encoder in place of a
#: foreign text (``stage_b.english_examples``)
ENGLISH_SOURCE = "english"


@dataclass(frozen=True)
class TaskExample:
    """One instruction example for Stage B."""

    task: str
    foreign: str
    answer: str
    en: str = ""  # the English reference of the foreign text (for the teacher state)
    question: str | None = None
    source: str = ""  # where the pair came from (Pair.source), for per-source reports
    lang: str = ""  # the language of the foreign text (Pair.lang); balances training batches


def foreign_length_ok(text: str) -> bool:
    return MIN_FOREIGN_CHARS <= len(text.strip()) <= MAX_FOREIGN_CHARS


def translation_examples(pairs: Iterable[Pair]) -> tuple[list[TaskExample], Counter[str]]:
    """``translate_to_english`` examples from pairs; returns the examples and drop counts."""
    out, dropped = [], Counter()
    for p in pairs:
        if not foreign_length_ok(p.foreign):
            dropped["foreign_length"] += 1
            continue
        out.append(TaskExample("translate_to_english", p.foreign, p.en, en=p.en,
                               source=p.source, lang=p.lang))
    return out, dropped


def read_task_file(path: str | Path) -> list[TaskExample]:
    """Read a task JSONL (``task``, ``foreign``, ``answer``, optional ``en``, ``question``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file not found: {path}")
    out = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PairFileError(path, lineno, f"invalid JSON ({exc.msg})") from None
            missing = [k for k in ("task", "foreign", "answer") if not isinstance(obj.get(k), str)]
            if missing:
                raise PairFileError(path, lineno, f"missing or non-string field(s): {missing}")
            if obj["task"] not in TASKS:
                raise PairFileError(path, lineno, f"unknown task {obj['task']!r}")
            out.append(TaskExample(obj["task"], obj["foreign"], obj["answer"],
                                   en=obj.get("en", ""), question=obj.get("question"),
                                   source=str(obj.get("source") or ""),
                                   lang=str(obj.get("lang") or "")))
    return out


def write_task_file(path: str | Path, examples: Sequence[TaskExample]) -> int:
    """Write task examples as JSONL, atomically."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for ex in examples:
            rec = {k: v for k, v in asdict(ex).items() if v not in (None, "")}
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return len(examples)
