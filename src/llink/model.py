"""The LLINK model: frozen encoder → projector → slot bridge → frozen decoder (+ LoRA).

:class:`PromptedDecoder` holds the decoder (+ LoRA) and the two computations everything
else needs: the answer NLL of a batch (with slots injected, ablated, with the plain base
decoder, or with raw foreign text) and batched generation. :class:`LLINK` adds the
encoder and the slot bridge. Neither knows anything of files: ``llink.artifacts`` writes and
reads model folders, ``llink.hub`` adds the hub conventions (``from_pretrained``,
``save_pretrained``, ``push_to_hub``) that the methods here hand on to.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from llink.bridge import (
    BagOfWordsHead,
    Projector,
    SlotBridge,
    TokenProjector,
    TokenResampler,
    pad_states,
    slot_source_of,
)
from llink.inject import (
    IGNORE_INDEX,
    PromptFormat,
    inject_slots,
    instruction_text,
    pad_batch,
    slot_span,
)
from llink.literals import extract_literals
from llink.models.decoder import FrozenDecoder
from llink.models.encoder import FrozenEncoder
from llink.targets import TargetTransform


@dataclass
class AnswerNLL:
    """Summed answer NLL and answer-token count per example."""

    total: torch.Tensor  # [B]
    tokens: torch.Tensor  # [B]

    def per_token(self) -> torch.Tensor:
        """Token-weighted mean NLL over the batch (a scalar)."""
        return self.total.sum() / self.tokens.sum().clamp_min(1)

    def per_example(self) -> torch.Tensor:
        """Mean NLL per answer token of each example [B]."""
        return self.total / self.tokens.clamp_min(1)


class PromptedDecoder(nn.Module):
    """A frozen decoder (optionally with LoRA) and the prompt format LLINK uses.

    Holds what every system built on the decoder needs: the answer NLL of a batch and
    batched greedy generation from prompt ids. :class:`LLINK` adds the encoder and the
    slot bridge; the direct fine-tuning baseline uses this class as it is.
    """

    def __init__(self, decoder: FrozenDecoder, fmt: PromptFormat | None = None) -> None:
        super().__init__()
        self.decoder = decoder
        self.fmt = fmt or PromptFormat()
        self.lm: nn.Module = decoder.model

    # --- structure -------------------------------------------------------------------
    @property
    def num_slots(self) -> int:
        return self.decoder.num_slots

    @property
    def slot_ids(self) -> list[int]:
        return list(self.decoder.reserved.slots)

    @property
    def has_lora(self) -> bool:
        return isinstance(self.lm, PeftModel)

    @property
    def tokenizer(self):
        return self.decoder.tokenizer

    @property
    def device(self) -> torch.device:
        return self.decoder.device

    def add_lora(self, r: int, alpha: int, dropout: float, targets: Sequence[str]) -> None:
        """Wrap the decoder with fresh LoRA adapters; base weights stay frozen."""
        cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                         target_modules=list(targets), bias="none", task_type="CAUSAL_LM")
        self.lm = get_peft_model(self.decoder.model, cfg)

    def load_lora(self, folder: str) -> None:
        """Attach saved LoRA adapters (trainable, so training can resume)."""
        self.lm = PeftModel.from_pretrained(self.decoder.model, folder, is_trainable=True)

    def _backbone(self) -> nn.Module:
        base = self.lm.get_base_model() if self.has_lora else self.lm
        return base.get_decoder()

    def adapters_disabled(self, disabled: bool = True):
        """Context in which the decoder runs without its LoRA adapters."""
        return self.lm.disable_adapter() if (disabled and self.has_lora) else nullcontext()

    # --- decoder passes --------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor, slots: torch.Tensor | None) -> torch.Tensor:
        """Input embeddings; with ``slots``, written at the slot positions."""
        emb = self.lm.get_input_embeddings()(input_ids)
        return emb if slots is None else inject_slots(emb, input_ids, self.slot_ids, slots)

    def answer_nll(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        slots: torch.Tensor | None = None,
        base: bool = False,
    ) -> AnswerNLL:
        """NLL of the answer tokens. ``slots=None`` leaves the placeholder rows (ablation);
        ``base=True`` runs without LoRA. Logits are computed at answer positions only."""
        input_ids = input_ids.to(self.device)
        attention_mask = attention_mask.to(self.device)
        labels = labels.to(self.device)
        with self.adapters_disabled(base):
            hidden = self._backbone()(
                inputs_embeds=self.embed(input_ids, slots), attention_mask=attention_mask
            ).last_hidden_state
            target = labels[:, 1:]
            mask = target != IGNORE_INDEX
            logits = self.lm.get_output_embeddings()(hidden[:, :-1][mask])
        nll = F.cross_entropy(logits.float(), target[mask], reduction="none")
        rows = mask.nonzero()[:, 0]
        total = torch.zeros(input_ids.shape[0], device=nll.device).index_add(0, rows, nll)
        return AnswerNLL(total, mask.sum(1).float())

    # --- generation ------------------------------------------------------------------
    def prompt_ids(
        self, task: str, strict: bool = False, question: str | None = None,
        foreign_text: str | None = None, num_slots: int | None = None,
        literals: list[str] | None = None,
    ) -> list[int]:
        """Prompt ids with the slot span (``num_slots`` placeholders, default K) and the
        foreign text's ``literals``, or with ``foreign_text`` written out (base decoder)."""
        span = slot_span(num_slots or self.num_slots) if foreign_text is None else foreign_text
        user = instruction_text(task, span, strict, question, literals)
        return self.fmt.prompt_ids(self.tokenizer, user)

    @torch.no_grad()
    def generate_from_ids(
        self,
        prompts: Sequence[list[int]],
        slots: torch.Tensor | None,
        base: bool = False,
        max_new_tokens: int = 64,
        **gen_kwargs,
    ) -> list[str]:
        """Greedy generation for a batch of prompts (left-padded, one decoder batch)."""
        tok = self.tokenizer
        ids, mask = pad_batch(prompts, int(tok.pad_token_id), side="left")
        ids, mask = ids.to(self.device), mask.to(self.device)
        kwargs = {
            "do_sample": False,
            "num_beams": 1,
            "no_repeat_ngram_size": 3,
            "max_new_tokens": max_new_tokens,
            "pad_token_id": int(tok.pad_token_id),
            "eos_token_id": tok.eos_token_id,
            "suppress_tokens": self.decoder.reserved.ids,
            **gen_kwargs,
        }
        with self.adapters_disabled(base), warnings.catch_warnings():
            # n-gram blocking applies to new tokens only with inputs_embeds: that is intended
            warnings.filterwarnings("ignore", message=".*no_repeat_ngram_size.*")
            out = self.lm.generate(
                inputs_embeds=self.embed(ids, slots), attention_mask=mask, **kwargs
            )
        return [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]

    @torch.no_grad()
    def generate_raw(
        self,
        foreign: Sequence[str],
        task: str = "translate_to_english",
        strict: bool = False,
        question: str | None = None,
        max_new_tokens: int = 64,
        base: bool = False,
        **gen_kwargs,
    ) -> list[str]:
        """Answers with the raw foreign text written into the prompt (no slots);
        ``base=True`` runs without LoRA."""
        self.eval()
        prompts = [self.prompt_ids(task, strict, question, foreign_text=t) for t in foreign]
        return self.generate_from_ids(prompts, None, base=base,
                                      max_new_tokens=max_new_tokens, **gen_kwargs)


class LLINK(PromptedDecoder):
    """Encoder injection: K slot vectors replace the foreign text in the decoder's prompt."""

    def __init__(
        self,
        encoder: FrozenEncoder,
        decoder: FrozenDecoder,
        projector: Projector,
        targets: TargetTransform,
        bridge: SlotBridge,
        fmt: PromptFormat | None = None,
        bow: BagOfWordsHead | None = None,
        reader: TokenResampler | TokenProjector | None = None,
        token_layer: int = -1,
        literals: bool = False,
        slots_per_token: float = 0.0,
    ) -> None:
        super().__init__(decoder, fmt)
        #: slot_source=tokens: a text takes ceil(r · its encoder tokens) of the K slots (0: K)
        self.slots_per_token = slots_per_token
        self.encoder = encoder
        #: copy the foreign text's numbers and Latin words into the prompt (llink.literals)
        self.literals = literals
        self.projector = projector.requires_grad_(False).eval()
        self.targets = targets  # the Stage A target space (for Stage B's regularisers)
        self.bridge = bridge
        self.bow = bow
        #: reads the encoder's token states at ``token_layer`` (None: pooled vectors only)
        self.reader = reader
        self.token_layer = token_layer
        #: the llink.json metadata it was loaded or last saved with (frozen models' names,
        #: training settings); None for a model built by hand
        self.meta: dict[str, Any] | None = None
        #: the folder it was loaded from, if any
        self.source: Path | None = None

    def train(self, mode: bool = True) -> LLINK:
        """Train mode for what trains; a frozen projector stays in eval mode (no dropout),
        so training sees the same slots as inference."""
        super().train(mode)
        if not any(p.requires_grad for p in self.projector.parameters()):
            self.projector.eval()
        return self

    # --- files and the hub (llink.hub; it imports this module, hence the late imports) --
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **kwargs: Any) -> LLINK:
        """Load a trained LLINK model: a local folder (``llink train stage-b`` output; no
        network) or a Hugging Face hub repository id. Keyword arguments: see
        :func:`llink.hub.from_pretrained` (e.g. ``device``, ``revision``)."""
        from llink.hub import from_pretrained

        return from_pretrained(name_or_path, **kwargs)

    def save_pretrained(self, folder: str | Path, *, run_dir: str | Path | None = None,
                        card: bool = True) -> Path:
        """Write this model as an LLINK folder with its model card (``README.md``); see
        :func:`llink.hub.save_pretrained`."""
        from llink.hub import save_pretrained

        return save_pretrained(self, folder, run_dir=run_dir, card=card)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Save this model with its card and upload it to the hub repository ``repo_id``
        (``private``, ``token``, ``commit_message``, ``revision``, ``create_pr``); returns
        the commit URL. See :func:`llink.hub.push_to_hub`."""
        from llink.hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    # --- the bridge ------------------------------------------------------------------
    def project(self, enc: torch.Tensor) -> torch.Tensor:
        """Stage A projection of encoder vectors (into the Stage A target space)."""
        return self.projector(enc.to(self.device))

    @property
    def slot_source(self) -> str:
        """``pooled`` (one encoder vector per text, the paper), ``tokens`` (K slots that
        also read the encoder's token states) or ``all_tokens`` (one slot per token)."""
        return slot_source_of(self.reader)

    def literals_of(self, foreign: str) -> list[str] | None:
        """What the prompt copies from ``foreign`` as text (None unless ``literals``)."""
        return extract_literals(foreign) if self.literals else None

    def slot_counts(self, tokens: list[torch.Tensor] | None) -> list[int] | None:
        """Slots each text takes: K; one per encoder token up to K (``all_tokens``); or,
        with ``slots_per_token`` r > 0, ceil(r · tokens) between 1 and K (``tokens``: short
        texts take fewer slots). None when every text takes K."""
        if tokens is None or self.reader is None:
            return None
        if isinstance(self.reader, TokenProjector):
            return [max(1, min(len(t), self.num_slots)) for t in tokens]
        if self.slots_per_token > 0:
            return [max(1, min(self.num_slots, math.ceil(len(t) * self.slots_per_token)))
                    for t in tokens]
        return None

    def slots(
        self, enc: torch.Tensor, gate_boost: float = 1.0,
        tokens: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """K slot vectors per text, [B, K, d_dec], from the pooled encoder vectors ``enc``
        and, unless ``slot_source=pooled``, the texts' encoder token states (``all_tokens``:
        rows past a text's token count are zero and left out of its prompt)."""
        if self.reader is not None and tokens is None:
            raise ValueError("this model reads the encoder's token states: pass tokens=")
        if isinstance(self.reader, TokenProjector):
            states, mask = pad_states([t[: self.num_slots] for t in tokens], self.device)
            out = self.reader(states, mask)
            return F.pad(out, (0, 0, 0, self.num_slots - out.shape[1]))
        slots = self.bridge(self.project(enc), gate_boost=gate_boost)
        if self.reader is None:
            return slots
        states, mask = pad_states(tokens, self.device)
        return self.reader(slots, states, mask)

    def encode(self, foreign: Sequence[str]) -> torch.Tensor:
        """Frozen-encoder vectors of foreign texts (clipped and prefixed as configured)."""
        return self.encoder.encode(list(foreign)).to(self.device)

    def encode_tokens(self, foreign: Sequence[str]) -> list[torch.Tensor] | None:
        """The encoder token states the slots read (None when ``slot_source=pooled``)."""
        if self.reader is None:
            return None
        return self.encoder.encode_tokens(list(foreign), self.token_layer)

    def read(self, foreign: Sequence[str]) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """One encoder pass: pooled vectors, and the token states the slots read (or None)."""
        layer = None if self.reader is None else self.token_layer
        pooled, tokens = self.encoder.encode_both(list(foreign), layer)
        return pooled.to(self.device), tokens

    def foreign_slots(self, foreign: Sequence[str], gate_boost: float = 1.0) -> torch.Tensor:
        """Foreign texts → their K slots, the whole path: encoder, projector, bridge."""
        enc, tokens = self.read(foreign)
        return self.slots(enc, gate_boost, tokens)

    @torch.no_grad()
    def generate(
        self,
        foreign: Sequence[str],
        task: str = "translate_to_english",
        strict: bool = False,
        gate_boost: float = 1.0,
        question: str | None = None,
        max_new_tokens: int = 64,
        ablate: bool = False,
        **gen_kwargs,
    ) -> list[str]:
        """English answers for foreign texts; ``ablate=True`` leaves the placeholder rows."""
        self.eval()
        enc, tokens = self.read(foreign)
        counts = self.slot_counts(tokens) or [self.num_slots] * len(foreign)
        prompts = [self.prompt_ids(task, strict, question, num_slots=k,
                                   literals=self.literals_of(text))
                   for k, text in zip(counts, foreign, strict=True)]
        slots = None if ablate else self.slots(enc, gate_boost, tokens)
        return self.generate_from_ids(prompts, slots, max_new_tokens=max_new_tokens,
                                      **gen_kwargs)

    @torch.no_grad()
    def generate_base(
        self,
        foreign: Sequence[str],
        task: str = "translate_to_english",
        strict: bool = False,
        question: str | None = None,
        max_new_tokens: int = 64,
        **gen_kwargs,
    ) -> list[str]:
        """The plain base decoder (no LoRA, no slots) given the raw foreign text."""
        return self.generate_raw(foreign, task, strict, question, max_new_tokens, base=True,
                                 **gen_kwargs)
