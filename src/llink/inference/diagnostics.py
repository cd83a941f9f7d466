"""Inference with diagnostics: does the decoder use the slots, and what do they encode?

``compare`` generates with slots injected, with slots ablated and with the plain
base decoder on the raw text, and warns when the slots change nothing.
``lexeme_probe`` shows which vocabulary rows the slots resemble and how they move
next-token logits; ``batch_diversity`` spots collapsed projections.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from llink.method.inject import TASKS, UnknownTaskError
from llink.method.model import LLINK

WARN_UNUSED = "slots unused: the injected output equals the output with the slots ablated"
WARN_AS_BASE = "no change vs base: the injected output equals the base decoder's on the raw text"


class InputError(ValueError):
    """A foreign text that cannot be used as input."""


def check_inputs(texts: Sequence[str], max_chars: int, task: str) -> list[str]:
    """Validate inputs; return warnings (clipping, unexpected script). Raises on empty text."""
    if task != "ask" and task not in TASKS:
        raise UnknownTaskError(task)
    if not texts:
        raise InputError("no foreign text given")
    warnings = []
    for i, t in enumerate(texts):
        if not t or not t.strip():
            raise InputError(f"text {i + 1} is empty or only white space")
        if len(t.strip()) > max_chars:
            warnings.append(f"text {i + 1} has {len(t.strip())} characters; the encoder reads "
                            f"the first {max_chars}")
        letters = [c for c in t if c.isalpha()]
        latin = sum("LATIN" in unicodedata.name(c, "") for c in letters)
        if letters and latin / len(letters) > 0.5:
            warnings.append(f"text {i + 1} is mostly Latin script; the model was trained on "
                            "foreign-script input (running anyway)")
    return warnings


@dataclass
class Comparison:
    """One input's outputs with slots, without slots and from the base decoder."""

    text: str
    injected: str
    ablated: str | None = None
    base: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def compare(
    model: LLINK,
    texts: Sequence[str],
    task: str = "translate_to_english",
    strict: bool = False,
    gate_boost: float = 1.0,
    question: str | None = None,
    max_new_tokens: int = 64,
    with_diagnostics: bool = True,
    literal_bias: float = 0.0,
) -> list[Comparison]:
    """Generate for ``texts`` (one batch each way); add ablated/base outputs and warnings.
    ``literal_bias`` applies to the injected answer only."""
    kw = {"task": task, "strict": strict, "question": question, "max_new_tokens": max_new_tokens}
    injected = model.generate(texts, gate_boost=gate_boost, literal_bias=literal_bias, **kw)
    out = [Comparison(t, o) for t, o in zip(texts, injected, strict=True)]
    if not with_diagnostics:
        return out
    ablated = model.generate(texts, ablate=True, **kw)
    base = model.generate_base(texts, **kw)
    for c, a, b in zip(out, ablated, base, strict=True):
        c.ablated, c.base = a, b
        if c.injected == a:
            c.warnings.append(WARN_UNUSED)
        if c.injected == b:
            c.warnings.append(WARN_AS_BASE)
    return out


@torch.no_grad()
def _next_token_logits(model: LLINK, slots: torch.Tensor | None, task: str) -> torch.Tensor:
    ids = torch.tensor([model.prompt_ids(task)], device=model.device)
    emb = model.embed(ids, slots)
    return model.lm(inputs_embeds=emb).logits[0, -1].float()


def _token_text(model: LLINK, i: int) -> str:
    return model.tokenizer.decode([i])


@torch.no_grad()
def lexeme_probe(
    model: LLINK,
    text: str,
    candidates: Sequence[str] = (),
    top: int = 30,
    task: str = "translate_to_english",
) -> dict[str, Any]:
    """Nearest vocabulary rows to the slot mean, candidate ranks, next-token logit shifts."""
    model.eval()
    slots = model.foreign_slots([text])
    mean = slots[0].mean(0)
    rows = model.lm.get_input_embeddings().weight.float()
    n_vocab = min(rows.shape[0], min(model.decoder.reserved.ids))  # skip reserved rows
    cos = F.cosine_similarity(rows[:n_vocab], mean.unsqueeze(0).float(), dim=-1)
    order = cos.argsort(descending=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(1, n_vocab + 1, device=order.device)
    inj = _next_token_logits(model, slots, task)[:n_vocab]
    abl = _next_token_logits(model, None, task)[:n_vocab]
    cands = []
    for word in candidates:
        ids = model.tokenizer(" " + word.strip(), add_special_tokens=False)["input_ids"]
        if not ids:
            continue
        first = ids[0]
        cands.append({
            "word": word, "token": _token_text(model, first), "token_id": first,
            "vocab_rank": int(rank[first]), "cosine": float(cos[first]),
            "logit_injected": float(inj[first]), "logit_ablated": float(abl[first]),
            "logit_delta": float(inj[first] - abl[first]),
        })

    def top_list(scores: torch.Tensor) -> list[dict[str, Any]]:
        vals, idx = scores.topk(top)
        return [{"token": _token_text(model, int(i)), "id": int(i), "score": float(v)}
                for v, i in zip(vals, idx, strict=True)]

    return {
        "text": text,
        "slot_norms": [float(x) for x in slots[0].norm(dim=-1)],
        "nearest_vocab": top_list(cos),
        "candidates": cands,
        "next_tokens_injected": top_list(F.log_softmax(inj, -1)),
        "next_tokens_ablated": top_list(F.log_softmax(abl, -1)),
    }


@torch.no_grad()
def batch_diversity(model: LLINK, texts: Sequence[str], collapse_at: float = 0.95) -> dict:
    """Pairwise cosine (mean, max) and norms of the projected vectors, with a verdict."""
    if len(texts) < 2:
        raise InputError("give at least two texts to compare")
    model.eval()
    proj = model.project(model.encode(texts)).float()
    unit = F.normalize(proj, dim=-1)
    sim = unit @ unit.T
    off = sim[~torch.eye(len(texts), dtype=torch.bool, device=sim.device)]
    mean_cos, max_cos = float(off.mean()), float(off.max())
    if mean_cos > collapse_at:
        verdict = (f"collapsed: different inputs project to nearly the same direction "
                   f"(mean cosine {mean_cos:.3f}); Stage A did not separate them")
    elif max_cos > 0.98:
        verdict = "some inputs project almost identically; check they really differ"
    else:
        verdict = "diverse: different inputs project to different directions"
    return {
        "texts": list(texts),
        "pairwise_cosine": sim.cpu().tolist(),
        "mean_cosine": mean_cos,
        "max_cosine": max_cos,
        "norms": [float(x) for x in proj.norm(dim=-1)],
        "verdict": verdict,
    }
