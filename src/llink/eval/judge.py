"""LLM-as-judge: pairwise preference between two systems' outputs, position bias cancelled.

The judge sees the English reference and two anonymised outputs ("A" and "B") and
answers A, B or tie. Every item is judged twice, once with each system in position A;
a system wins an item only when both orders prefer it, anything else is a tie. How
often the two orders agree is reported: a judge that always picks position A agrees
never and produces only ties. Identical outputs are a tie without asking.

Judges: any local Hugging Face causal LM (:class:`HFJudge`, reads the next-token
probabilities of "A", "B" and "tie" after the chat-formatted prompt, so it always
answers) or an OpenAI-compatible chat endpoint (:class:`EndpointJudge`, parses a short
greedy reply). Prompts are versioned files in ``llink/prompts``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from llink.eval import EvalError
from llink.eval.stats import wilson_interval
from llink.remote.chat_client import ChatEndpoint
from llink.storage.fileio import atomic_path

PROMPT_VERSION = "judge_v1"
LABELS = ("A", "B", "tie")
MAX_OUTPUT_CHARS = 400  # longer outputs are clipped in the judge prompt


def load_prompt(version: str = PROMPT_VERSION) -> str:
    """The judge prompt template ``llink/prompts/<version>.txt``."""
    path = resources.files("llink").joinpath("prompts", f"{version}.txt")
    if not path.is_file():
        raise EvalError(f"no judge prompt {version!r} (looked for {path})")
    return path.read_text(encoding="utf-8")


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_OUTPUT_CHARS else text[:MAX_OUTPUT_CHARS] + " ..."


@dataclass(frozen=True)
class JudgeQuery:
    """One question to the judge: the reference, the texts in positions A and B, the prompt."""

    reference: str
    first: str
    second: str
    prompt: str


def make_query(template: str, reference: str, first: str, second: str) -> JudgeQuery:
    prompt = template.format(reference=_clip(reference), first=_clip(first),
                             second=_clip(second))
    return JudgeQuery(reference, first, second, prompt)


@dataclass(frozen=True)
class Verdict:
    """``choice``: "A", "B" or "tie"; ``raw``: the judge's reply or label probabilities."""

    choice: str
    raw: str
    parsed: bool = True


class Judge(Protocol):
    """Anything that answers judge queries, one verdict per query, in order."""

    name: str

    def judge(self, queries: Sequence[JudgeQuery]) -> list[Verdict]: ...


_VERDICT = re.compile(r"\b(?:(A|B)|([Tt][Ii][Ee]))\b")


def parse_verdict(reply: str) -> Verdict:
    """The first standalone ``A``, ``B`` or ``tie`` in a reply; unparseable replies are ties."""
    m = _VERDICT.search(reply or "")
    if m is None:
        return Verdict("tie", reply, parsed=False)
    return Verdict(m.group(1) or "tie", reply)


class EndpointJudge:
    """An OpenAI-compatible chat-completions endpoint (temperature 0, a few tokens)."""

    def __init__(self, url: str, model: str, api_key_env: str | None = None,
                 timeout: float = 60.0, max_tokens: int = 8) -> None:
        self.client = ChatEndpoint(url, model, api_key_env=api_key_env, timeout=timeout,
                                      max_tokens=max_tokens)
        self.name = f"{self.client.url} ({model})"

    def judge(self, queries: Sequence[JudgeQuery]) -> list[Verdict]:
        return [parse_verdict(r) for r in self.client.complete([q.prompt for q in queries])]


class HFJudge:
    """A local causal LM: the verdict is the most probable of "A", "B", "tie" as first token."""

    def __init__(self, model: str, cache_dir: str | None = None, device: str = "auto",
                 dtype: str = "float32") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from llink.backbones.loading import resolve_device, resolve_dtype
        from llink.backbones.offline import resolve_model

        path = resolve_model(model, Path(cache_dir) if cache_dir else None)
        self.device = resolve_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            path, dtype=resolve_dtype(dtype), use_safetensors=True  # never unpickle
        ).to(self.device).eval()
        self.templated = bool(getattr(self.tokenizer, "chat_template", None))
        firsts = {lab: self._first_tokens(lab) for lab in LABELS}
        # a first token that starts more than one label (e.g. a lone space) tells nothing
        self.label_ids = {
            lab: sorted(ids - set().union(*(o for k, o in firsts.items() if k != lab)))
            for lab, ids in firsts.items()
        }
        if not all(self.label_ids.values()):
            raise EvalError(f"judge {model}: its tokenizer cannot tell A, B and tie apart by "
                            "their first token")
        self.name = model
        self._torch = torch

    def _first_tokens(self, label: str) -> set[int]:
        forms = {label, label.capitalize()}  # "A"/"B" only upper case: "a" is an article
        encoded = [self.tokenizer(v, add_special_tokens=False)["input_ids"]
                   for v in forms | {" " + f for f in forms}]
        whole = {ids[0] for ids in encoded if len(ids) == 1}  # forms that are one token
        return whole or {ids[0] for ids in encoded}

    def _ids(self, prompt: str) -> list[int]:
        if self.templated:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        else:
            text = f"User: {prompt}\nAssistant:"
        return list(self.tokenizer(text, add_special_tokens=not self.templated)["input_ids"])

    def judge(self, queries: Sequence[JudgeQuery]) -> list[Verdict]:
        torch = self._torch
        from llink.method.inject import pad_batch

        if not queries:
            return []
        ids, mask = pad_batch([self._ids(q.prompt) for q in queries],
                              int(self.tokenizer.pad_token_id), side="left")
        pos = (mask.cumsum(1) - 1).clamp_min(0)
        with torch.inference_mode():
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                position_ids=pos.to(self.device)).logits[:, -1].float()
        logp = torch.log_softmax(logits, dim=-1).cpu()
        out = []
        for row in logp:
            scores = {lab: float(torch.logsumexp(row[ids_], 0)) for lab, ids_ in
                      self.label_ids.items()}
            total = math.log(sum(math.exp(s) for s in scores.values()))
            probs = {lab: round(math.exp(s - total), 4) for lab, s in scores.items()}
            out.append(Verdict(max(scores, key=scores.get), json.dumps(probs)))
        return out


def make_judge(model: str | None = None, url: str | None = None, url_model: str | None = None,
               api_key_env: str | None = None, cache_dir: str | None = None,
               device: str = "auto", timeout: float = 60.0) -> Judge:
    """An :class:`EndpointJudge` if ``url`` is given, else an :class:`HFJudge` of ``model``."""
    if url:
        if model:
            raise EvalError("give either a local judge model or a judge URL, not both")
        if not url_model:
            raise EvalError("a judge URL needs the model name to send (--judge-model)")
        return EndpointJudge(url, url_model, api_key_env=api_key_env, timeout=timeout)
    if not model:
        raise EvalError("name a judge: a local model (--judge) or an endpoint (--judge-url)")
    return HFJudge(model, cache_dir=cache_dir, device=device)


# --------------------------------------------------------------------------- comparison
@dataclass(frozen=True)
class PairItem:
    """One test item with both systems' outputs."""

    index: int
    reference: str
    a: str
    b: str


def _winner(choice: str, first: str, second: str) -> str:
    return {"A": first, "B": second}.get(choice, "tie")


def judge_items(
    items: Sequence[PairItem],
    judge: Judge,
    template: str,
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "judge",
    on_chunk: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Judge every item in both orders; one record per item (``winner``: "a", "b" or "tie").

    ``on_chunk(records so far)`` is called after each judge call (e.g. to save progress).
    """
    records: list[dict[str, Any]] = []
    asked = [it for it in items if it.a.strip() != it.b.strip()]
    for it in items:
        if it.a.strip() == it.b.strip():
            records.append({"index": it.index, "reference": it.reference, "a": it.a, "b": it.b,
                            "identical": True, "winner": "tie", "agree": True})
    per_call = max(1, batch_size // 2)
    chunks = [asked[i : i + per_call] for i in range(0, len(asked), per_call)]
    for chunk in tqdm(chunks, desc=desc, disable=not progress, unit="batch"):
        queries = []
        for it in chunk:
            queries.append(make_query(template, it.reference, it.a, it.b))  # a in position A
            queries.append(make_query(template, it.reference, it.b, it.a))  # b in position A
        verdicts = judge.judge(queries)
        for k, it in enumerate(chunk):
            v_ab, v_ba = verdicts[2 * k], verdicts[2 * k + 1]
            w_ab, w_ba = _winner(v_ab.choice, "a", "b"), _winner(v_ba.choice, "b", "a")
            records.append({
                "index": it.index, "reference": it.reference, "a": it.a, "b": it.b,
                "identical": False, "verdict_ab": v_ab.choice, "verdict_ba": v_ba.choice,
                "raw_ab": v_ab.raw, "raw_ba": v_ba.raw,
                "parsed": v_ab.parsed and v_ba.parsed,
                "winner": w_ab if w_ab == w_ba else "tie", "agree": w_ab == w_ba,
            })
        if on_chunk is not None:
            on_chunk(records)
    return sorted(records, key=lambda r: r["index"])


def summarise(records: Sequence[dict[str, Any]], a: str, b: str) -> dict[str, Any]:
    """Win / tie / loss of ``a`` against ``b`` with Wilson 95% intervals, and order agreement."""
    n = len(records)
    win = sum(r["winner"] == "a" for r in records)
    loss = sum(r["winner"] == "b" for r in records)
    tie = n - win - loss
    asked = [r for r in records if not r["identical"]]
    agreed = sum(r["agree"] for r in asked)
    decided = win + loss
    return {**_soft_preference(asked),
        "a": a, "b": b, "n": n, "win": win, "tie": tie, "loss": loss,
        "win_rate": win / n if n else 0.0, "win_rate_ci": wilson_interval(win, n),
        "tie_rate": tie / n if n else 0.0, "loss_rate": loss / n if n else 0.0,
        "loss_rate_ci": wilson_interval(loss, n),
        "decisive_win_rate": win / decided if decided else None,
        "decisive_win_rate_ci": wilson_interval(win, decided) if decided else None,
        "order_agreement": agreed / len(asked) if asked else None,
        "judged": len(asked), "identical": n - len(asked),
        "unparsed": sum(not r.get("parsed", True) for r in asked),
        "position_a_rate": (sum((r["verdict_ab"] == "A") + (r["verdict_ba"] == "A")
                                for r in asked) / (2 * len(asked))) if asked else None,
    }


def _soft_preference(asked: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """For judges that give label probabilities (:class:`HFJudge`): the position-averaged
    preference. ``p_a = (P(A | a first) + P(B | b first)) / 2`` (and ``p_b`` alike); an
    item counts for a when ``p_a > p_b``. A constant position bias cancels in the average."""
    pa, pb = [], []
    for r in asked:
        try:
            ab, ba = json.loads(r["raw_ab"]), json.loads(r["raw_ba"])
            pa.append((ab["A"] + ba["B"]) / 2)
            pb.append((ab["B"] + ba["A"]) / 2)
        except (ValueError, KeyError, TypeError):
            return {}
    if not pa:
        return {}
    k = sum(x > y for x, y in zip(pa, pb, strict=True))
    return {"soft_a_preferred": k / len(pa), "soft_a_preferred_ci": wilson_interval(k, len(pa)),
            "soft_mean_p_a": sum(x / (x + y) for x, y in zip(pa, pb, strict=True)) / len(pa)}


def write_records(path: str | Path, records: Sequence[dict[str, Any]]) -> None:
    """The per-item judge records as JSONL, atomically."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


