"""Prompts with slot placeholders, and writing slot vectors into the decoder's input embeddings.

This module is the single place that knows what a LLINK prompt looks like and
where the slots go. Slot positions are always found from the token ids, never
assumed, so any padding side, template or K works.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from llink.backbones.decoder import FOREIGN_CLOSE, FOREIGN_OPEN, slot_token
from llink.method.literals import literal_line

#: The paper's task types and their instructions.
TASKS: dict[str, str] = {
    "translate_to_english": "Translate the foreign text to English.",
    "paraphrase_in_english": "Paraphrase the foreign text in English.",
    "summarize_in_english": "Summarize the foreign text in English in one sentence.",
    "qa_about_text": "Answer the question about the foreign text.",
    "extract_key_fields": "Extract the key fields (who, what, where, when, numbers) of the "
    "foreign text as a short list in English.",
    "title_generation": "Write a short English title for the foreign text.",
    "executive_summary": "Write a brief executive summary of the foreign text in English.",
    "extract_main_points": "List the main points of the foreign text in English.",
}
STRICT_SUFFIX = "Output ONLY the translation; do not explain or describe."
IGNORE_INDEX = -100


class UnknownTaskError(ValueError):
    """A task name that is not one of :data:`TASKS`."""

    def __init__(self, task: str) -> None:
        super().__init__(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")


def slot_span(num_slots: int) -> str:
    """``<foreign><f0>…<fK-1></foreign>``: what stands in for the foreign text (a text
    may take fewer slots than the model reserves: one per encoder token, say)."""
    return FOREIGN_OPEN + "".join(slot_token(i) for i in range(num_slots)) + FOREIGN_CLOSE


def instruction_text(
    task: str, foreign: str, strict: bool = False, question: str | None = None,
    literals: list[str] | None = None, foreign_last: bool = False,
) -> str:
    """The user message: instruction, the foreign span (slots or raw text), its literals
    (numbers and Latin words copied as text, see :mod:`llink.method.literals`), answer language.

    ``task="ask"`` takes a free-form ``question`` about the foreign text. ``foreign_last``
    puts the answer-language line (and the strict suffix) before the foreign span, so all
    that follows the span is its literals and the chat turn's end: the template a prefix
    cache reuses grows and each request prefills fewer tokens.
    """
    if task == "ask":
        if not question:
            raise ValueError("task 'ask' needs a question")
        head = f"Instruction: Answer the question about the foreign text.\nQuestion: {question}"
    elif task in TASKS:
        head = f"Instruction: {TASKS[task]}"
        if task == "qa_about_text" and question:
            head += f"\nQuestion: {question}"
    else:
        raise UnknownTaskError(task)
    span = [f"Foreign: {foreign}", literal_line(literals or [])]
    ask = ["Answer in English only.", STRICT_SUFFIX if strict else ""]
    lines = [head, *ask, *span] if foreign_last else [head, *span, *ask]
    return "\n".join(line for line in lines if line)


@dataclass(frozen=True)
class PromptFormat:
    """How a user message becomes decoder text: the decoder's chat template, or plain.

    ``system_prompt=None`` keeps whatever system turn the chat template adds by itself
    (SmolLM2's adds a ~20-token default); a string, even ``""``, is sent as the system
    message instead. A model must be used with the format it was trained with.
    """

    use_chat_template: bool = True
    system_prompt: str | None = None
    foreign_last: bool = False  # see instruction_text

    @classmethod
    def from_meta(cls, meta: dict) -> PromptFormat:
        """The format an artifact was trained with (its JSON, see :meth:`meta`)."""
        return cls(meta["use_chat_template"], meta.get("system_prompt"),
                   meta.get("foreign_last", False))

    def meta(self) -> dict:
        """The fields saved in an artifact's JSON (``foreign_last`` only when set, so
        older artifacts and their cached outputs keep their identity)."""
        out = {"use_chat_template": self.use_chat_template, "system_prompt": self.system_prompt}
        return {**out, "foreign_last": True} if self.foreign_last else out

    def user_text(self, task: str, foreign: str, strict: bool = False,
                  question: str | None = None, literals: list[str] | None = None) -> str:
        """:func:`instruction_text` in this format's order."""
        return instruction_text(task, foreign, strict, question, literals, self.foreign_last)

    def prompt(self, tokenizer: PreTrainedTokenizerBase, user: str) -> str:
        if self.use_chat_template and getattr(tokenizer, "chat_template", None):
            system = [] if self.system_prompt is None else [
                {"role": "system", "content": self.system_prompt}]
            return tokenizer.apply_chat_template(
                [*system, {"role": "user", "content": user}], tokenize=False,
                add_generation_prompt=True,
            )
        return f"User: {user}\nAssistant:"

    def prompt_ids(self, tokenizer: PreTrainedTokenizerBase, user: str) -> list[int]:
        text = self.prompt(tokenizer, user)
        templated = self.use_chat_template and getattr(tokenizer, "chat_template", None)
        # A chat template already writes the special tokens it needs (e.g. BOS).
        return list(tokenizer(text, add_special_tokens=not templated)["input_ids"])

    def answer_ids(self, tokenizer: PreTrainedTokenizerBase, answer: str) -> list[int]:
        templated = self.use_chat_template and getattr(tokenizer, "chat_template", None)
        text = answer if templated else " " + answer
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [
            tokenizer.eos_token_id
        ]


@dataclass
class Example:
    """One tokenized training example: prompt + answer ids, loss on the answer only."""

    input_ids: list[int]
    labels: list[int]


def build_example(
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    user: str,
    answer: str,
    max_answer_tokens: int = 128,
) -> Example:
    """Token ids of ``user`` as prompt and ``answer`` as the target (answer clipped)."""
    p = fmt.prompt_ids(tokenizer, user)
    a = fmt.answer_ids(tokenizer, answer)[:max_answer_tokens]
    return Example(p + a, [IGNORE_INDEX] * len(p) + a)


def pad_batch(
    seqs: Sequence[list[int]], pad_id: int, side: str = "right", pad_label: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id lists into a tensor [B, T] and its attention mask, on either side."""
    width = max(len(s) for s in seqs)
    fill = pad_id if pad_label is None else pad_label
    ids = torch.full((len(seqs), width), fill, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        if side == "right":
            ids[r, : len(s)], mask[r, : len(s)] = torch.tensor(s, dtype=torch.long), 1
        else:
            ids[r, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[r, width - len(s) :] = 1
    return ids, mask


def collate(
    examples: Sequence[Example], pad_id: int, side: str = "right"
) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask and labels (ignored at padding) for a batch."""
    ids, mask = pad_batch([e.input_ids for e in examples], pad_id, side)
    labels, _ = pad_batch([e.labels for e in examples], pad_id, side, pad_label=IGNORE_INDEX)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def slot_positions(
    input_ids: torch.Tensor, slot_ids: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where slot k sits in row b, [B, K], and whether row b has it, [B, K].

    A row holds the first k_b placeholders ``<f0>…<f{k_b-1}>`` (k_b ≥ 1), each exactly
    once: a fixed K for pooled and resampled slots, one per encoder token otherwise.
    Anything else raises.
    """
    ids = torch.as_tensor(list(slot_ids), device=input_ids.device)
    hits = input_ids.unsqueeze(-1) == ids  # [B, T, K]
    counts = hits.sum(1)
    present = counts == 1
    problem = None
    if bool((counts > 1).any()):
        row, k = (counts > 1).nonzero()[0].tolist()
        problem = f"row {row} has slot token {slot_ids[k]} {int(counts[row, k])} times"
    elif bool((present[:, 1:] & ~present[:, :-1]).any()):
        row = int((present[:, 1:] & ~present[:, :-1]).any(1).nonzero()[0])
        problem = f"row {row} skips a slot placeholder"
    elif not bool(present[:, 0].all()):
        problem = f"row {int((~present[:, 0]).nonzero()[0])} has no slot placeholder"
    if problem:
        raise ValueError(f"{problem}; every prompt needs the placeholders <f0>…<f(k-1)> "
                         "exactly once each")
    return hits.float().argmax(1), present


def inject_slots(
    embeds: torch.Tensor, input_ids: torch.Tensor, slot_ids: Sequence[int], slots: torch.Tensor
) -> torch.Tensor:
    """Return ``embeds`` [B, T, D] with row b's slot positions replaced by ``slots[b]`` [K, D].

    A row with fewer placeholders than K takes its first slots only. Out of place, so
    gradients reach ``slots``; other positions keep their values.
    """
    if slots.shape[:2] != (input_ids.shape[0], len(slot_ids)):
        raise ValueError(
            f"slots of shape {tuple(slots.shape)} do not fit {input_ids.shape[0]} rows "
            f"x {len(slot_ids)} slots"
        )
    pos, present = slot_positions(input_ids, slot_ids)  # [B, K]
    index = pos.unsqueeze(-1).expand(-1, -1, embeds.shape[-1])
    if bool(present.all()):
        return embeds.scatter(1, index, slots.to(embeds.dtype))
    # absent slots point at position 0 and write back what is there
    keep = embeds.gather(1, index)
    src = torch.where(present.unsqueeze(-1), slots.to(embeds.dtype), keep)
    return embeds.scatter(1, index, src)
