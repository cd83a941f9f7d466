"""Literal pass-through: numbers and Latin-script words of the foreign text, as plain text.

One pooled vector (or K slots) carries the gist of a sentence, not its digits or the
spelling of a product name. With ``model.literals=true`` the prompt repeats them
next to the slots, in the order they occur::

    Foreign: <foreign><f0>…<f7></foreign>
    Literals: 30 MW | LibreOffice Writer

Digits of any script (Khmer ០–៩, Thai, Devanagari, …) become ASCII digits; runs of
Latin letters, digits and the joiners ``. , : / _ + - %`` inside them are one literal
(``F11``, ``3.5``, ``192.168.0.1``, ``file.odt``, ``Ctrl+Shift+F5``); adjacent Latin
words separated by single spaces stay together (``LibreOffice Writer``). Literals are
de-duplicated; at most ``MAX_LITERALS`` are kept.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

MAX_LITERALS = 12
_TOKEN = r"[A-Za-z0-9](?:[A-Za-z0-9]|[.,:/_+\-%](?=[A-Za-z0-9%]))*%?"
_LITERAL = re.compile(rf"{_TOKEN}(?: {_TOKEN})*")


def ascii_digits(text: str) -> str:
    """Every Unicode decimal digit (Khmer ០–៩, …) as its ASCII digit."""
    return "".join(
        str(unicodedata.decimal(ch)) if ch.isdecimal() and not ch.isascii() else ch
        for ch in text
    )


def extract_literals(text: str, limit: int = MAX_LITERALS) -> list[str]:
    """Numbers and Latin-script words of ``text``, in order, de-duplicated."""
    seen: list[str] = []
    for m in _LITERAL.finditer(ascii_digits(text)):
        lit = m.group(0).strip(" .,:/_+-")
        if lit and lit not in seen:
            seen.append(lit)
        if len(seen) >= limit:
            break
    return seen


def literal_line(literals: list[str]) -> str:
    """The prompt line that carries them (empty when there are none)."""
    return "Literals: " + " | ".join(literals) if literals else ""


class LiteralBias(LogitsProcessor):
    """A ``transformers`` logits processor that nudges generation to copy literals.

    Each literal of a row is spelled as token ids (as it tokenizes after a space, and at
    the start of a text). Until the literal appears in the row's output, ``bias`` is added
    to the logit of the token that continues it: the next token of a spelling whose
    beginning the output ends with, else a spelling's first token. So a number is pushed
    one token at a time, in order, and never once it is written.

    ``literals``: one list per batch row; ``start``: how many leading ids of the
    ``input_ids`` generate passes in are prompt, not output (0 when generating from
    ``inputs_embeds``)."""

    def __init__(self, tokenizer, literals: list[list[str]], bias: float, start: int = 0
                 ) -> None:
        self.tokenizer, self.bias, self.start = tokenizer, float(bias), start
        self.rows = [
            [(lit, [tokenizer(text, add_special_tokens=False)["input_ids"]
                    for text in (" " + lit, lit)]) for lit in row]
            for row in literals
        ]

    @staticmethod
    def next_token(out: list[int], spellings: list[list[int]]) -> list[int]:
        """The tokens that continue a literal after output ids ``out``."""
        started = [s[k] for s in spellings for k in range(len(s) - 1, 0, -1)
                   if out[-k:] == s[:k]]
        return started[:1] or sorted({s[0] for s in spellings if s})

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for r, row in enumerate(self.rows):
            if not row:
                continue
            out = input_ids[r, self.start:].tolist()
            text = self.tokenizer.decode(out, skip_special_tokens=True)
            for lit, spellings in row:
                if lit not in text:
                    scores[r, self.next_token(out, spellings)] += self.bias
        return scores


def with_literal_bias(gen_kwargs: dict[str, Any], tokenizer, foreign: Sequence[str],
                      bias: float) -> dict[str, Any]:
    """``generate`` keyword arguments with a :class:`LiteralBias` over each foreign text's
    literals added to their ``logits_processor`` (returned unchanged when ``bias`` is 0)."""
    if not bias:
        return gen_kwargs
    push = LiteralBias(tokenizer, [extract_literals(t) for t in foreign], bias)
    return {**gen_kwargs,
            "logits_processor": LogitsProcessorList([*gen_kwargs.get("logits_processor", []),
                                                     push])}
