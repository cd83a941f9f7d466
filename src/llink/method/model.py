"""The LLINK model: frozen encoder → projector → slot bridge → frozen decoder (+ LoRA).

:class:`PromptedDecoder` holds the decoder (+ LoRA) and the two computations everything
else needs: the answer NLL of a batch (with slots injected, ablated, with the plain base
decoder, or with raw foreign text) and batched generation. :class:`LLINK` adds the
encoder and the slot bridge. This module is also the one place that builds these models
from their folders and saves them (:func:`load_llink`, :func:`save_llink`, the baseline's
pair, and ``LLINK.from_pretrained`` / ``save_pretrained`` / ``push_to_hub``); the folder
format and its checks are :mod:`llink.storage.model_folders`, finding and uploading folders
on the hub is :mod:`llink.storage.hub`. Neither imports this module.
"""

from __future__ import annotations

import math
import tempfile
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

from llink.backbones.decoder import FrozenDecoder
from llink.backbones.encoder import FrozenEncoder
from llink.backbones.prefix_cache import PrefixCache, cache_argument, prefill, prefix_cached_batch
from llink.method.bridge import (
    BagOfWordsHead,
    Projector,
    SlotBridge,
    TokenProjector,
    TokenResampler,
    build_token_reader,
    pad_states,
    slot_source_of,
)
from llink.method.inject import (
    IGNORE_INDEX,
    PromptFormat,
    inject_slots,
    slot_span,
)
from llink.method.literals import extract_literals, with_literal_bias
from llink.method.projection import targets_from
from llink.method.targets import TargetTransform
from llink.storage import hub
from llink.storage.checkpoints import (
    HASH_KEY,
    CheckpointError,
    compare_expected,
    load_state_dict,
    load_tensors,
    save_folder,
)
from llink.storage.model_folders import (
    BASELINE_FORMAT,
    LLINK_FORMAT,
    attach_lora,
    check_reserved_rows,
    named_by,
    open_artifact,
    prefixed,
)


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


class LoRAMergedError(RuntimeError):
    """The base decoder (without LoRA) was asked of a model whose LoRA is merged."""


class PromptedDecoder(nn.Module):
    """A frozen decoder (optionally with LoRA) and the prompt format LLINK uses.

    Holds what every system built on the decoder needs: the answer NLL of a batch and
    batched greedy generation from prompt ids. :class:`LLINK` adds the encoder and the
    slot bridge; the direct fine-tuning baseline uses this class as it is.

    For serving, :meth:`merge_lora` folds the LoRA into the decoder weights (fewer
    operations per pass; the base decoder is then gone) and :meth:`use_prefix_cache` reuses
    the KV of the prompt template shared by every request of a task.
    """

    def __init__(self, decoder: FrozenDecoder, fmt: PromptFormat | None = None) -> None:
        super().__init__()
        self.decoder = decoder
        self.fmt = fmt or PromptFormat()
        self.lm: nn.Module = decoder.model
        #: True once :meth:`merge_lora` has folded the adapters into the decoder weights
        self.lora_merged = False
        #: KV of prompt templates, reused by generation (None: off; :meth:`use_prefix_cache`)
        self.prefix_cache: PrefixCache | None = None

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
        if disabled and self.lora_merged:
            raise LoRAMergedError(
                "this model's LoRA is merged into the decoder weights, so the base decoder "
                "(without LoRA) is gone: load the model without merge_lora for base-decoder "
                "outputs and ablations (llink infer --compare does)")
        return self.lm.disable_adapter() if (disabled and self.has_lora) else nullcontext()

    def merge_lora(self) -> None:
        """Fold the LoRA adapters into the decoder weights, once (peft ``merge_and_unload``):
        the same answers up to rounding, faster passes. The base decoder is gone afterwards
        (``base=True`` raises :class:`LoRAMergedError`) and the model cannot be saved."""
        if self.has_lora:
            self.lm = self.lm.merge_and_unload()
            self.decoder.model = self.lm
            self.lora_merged = True
            self.clear_prefix_cache()

    # --- prefix caching ----------------------------------------------------------------
    def use_prefix_cache(self, max_entries: int = 16) -> None:
        """Reuse the KV of the prompt template before the foreign text (one entry per task,
        question and adapter state; ``max_entries`` kept). Generation gives the same
        answers up to rounding; only the prompt's own tokens are prefilled."""
        self.prefix_cache = PrefixCache(max_entries)

    def clear_prefix_cache(self) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache.clear()

    def train(self, mode: bool = True) -> PromptedDecoder:
        if mode:
            self.clear_prefix_cache()  # trained weights make cached KV stale
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):  # .to(), .half(), ...: cached KV would not match
        self.clear_prefix_cache()
        return super()._apply(fn, *args, **kwargs)

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
        ``base=True`` is the base decoder: no LoRA, and its own vocabulary only (LLINK's
        reserved tokens, whose rows are trained and, with tied embeddings, also output
        rows, are left out of the softmax). Logits are computed at answer positions only."""
        input_ids = input_ids.to(self.device)
        attention_mask = attention_mask.to(self.device)
        labels = labels.to(self.device)
        with self.adapters_disabled(base):
            hidden = self._backbone()(
                inputs_embeds=self.embed(input_ids, slots), attention_mask=attention_mask
            ).last_hidden_state
            target = labels[:, 1:]
            mask = target != IGNORE_INDEX
            logits = self.lm.get_output_embeddings()(hidden[:, :-1][mask]).float()
        if base:
            reserved = torch.tensor(self.decoder.reserved.ids, device=logits.device)
            logits = logits.index_fill(1, reserved, float("-inf"))
        nll = F.cross_entropy(logits, target[mask], reduction="none")
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
        user = self.fmt.user_text(task, span, strict, question, literals)
        return self.fmt.prompt_ids(self.tokenizer, user)

    def template_ids(self, task: str, strict: bool = False, question: str | None = None
                     ) -> list[int]:
        """The ids every prompt of this task starts with: the template before the foreign
        text (or its slots). What :attr:`prefix_cache` reuses."""
        ids = self.prompt_ids(task, strict, question)
        return ids[: ids.index(self.decoder.reserved.foreign_open)]

    def _template(self, task: str, strict: bool, question: str | None) -> list[int] | None:
        return None if self.prefix_cache is None else self.template_ids(task, strict, question)

    def _batch(self, prompts: Sequence[list[int]], prefix: Sequence[int] | None, base: bool
               ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Ids and mask of a generate batch, and the cached KV of the prefix its prompts
        share with ``prefix`` (as a generate argument; none without a prefix cache)."""
        ids, mask, kv = prefix_cached_batch(
            prompts, int(self.tokenizer.pad_token_id), self.prefix_cache, prefix,
            lambda head: prefill(self._backbone(), self.embed(head.to(self.device), None)),
            key=base)
        cached = {} if kv is None else {cache_argument(self.lm): kv}
        return ids.to(self.device), mask.to(self.device), cached

    @torch.no_grad()
    def generate_from_ids(
        self,
        prompts: Sequence[list[int]],
        slots: torch.Tensor | None,
        base: bool = False,
        max_new_tokens: int = 64,
        prefix: Sequence[int] | None = None,
        **gen_kwargs,
    ) -> list[str]:
        """Greedy generation for a batch of prompts (left-padded, one decoder batch).

        ``prefix``: the template the prompts start with (:meth:`template_ids`); with a
        :attr:`prefix_cache`, the KV of the part every prompt shares is reused, and the
        batch is laid out as [shared prefix][left padding][own tokens]."""
        tok = self.tokenizer
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
            ids, mask, cached = self._batch(prompts, prefix, base)
            # n-gram blocking applies to new tokens only with inputs_embeds: that is intended
            warnings.filterwarnings("ignore", message=".*no_repeat_ngram_size.*")
            out = self.lm.generate(
                inputs_embeds=self.embed(ids, slots), attention_mask=mask, **cached, **kwargs
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
        return self.generate_from_ids(prompts, None, base=base, max_new_tokens=max_new_tokens,
                                      prefix=self._template(task, strict, question),
                                      **gen_kwargs)


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
        #: copy the foreign text's numbers and Latin words into the prompt (llink.method.literals)
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

    # --- files and the hub ------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        revision: str | None = None,
        token: str | None = None,
        hub_cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        **load_kwargs: Any,
    ) -> LLINK:
        """Load a trained LLINK model: a local folder (``llink train stage-b`` output; no
        network) or a Hugging Face hub repository id.

        ``revision``, ``token``, ``hub_cache_dir`` and ``local_files_only`` go to
        :func:`huggingface_hub.snapshot_download` (hub ids only); ``load_kwargs``
        (``device``, ``dtype``, ``cache_dir`` of the frozen models, ``encoder``/``decoder``
        to reuse) to :func:`load_llink`, which checks the folder before building anything.
        """
        folder = hub.pretrained_folder(name_or_path, revision=revision, token=token,
                                       hub_cache_dir=hub_cache_dir,
                                       local_files_only=local_files_only)
        return load_llink(folder, **load_kwargs)

    def save_pretrained(self, folder: str | Path, *, run_dir: str | Path | None = None,
                        card: bool = True) -> Path:
        """Write this model as an LLINK folder (:func:`save_llink`, with the metadata it was
        loaded or last saved with) and, with ``card``, its model card (``README.md``).

        The card's held-out results come from ``run_dir`` (default: the run folder the model
        was loaded from) and only if measured on these weights; a model loaded from a folder
        outside a run keeps that folder's card when the saved ``llink.json`` is unchanged.
        """
        if self.meta is None:
            raise CheckpointError(
                "this LLINK model carries no llink metadata (the frozen models' names, the "
                "training settings): save_pretrained saves models loaded with "
                "LLINK.from_pretrained or trained by `llink train stage-b`; for one built by "
                "hand use llink.method.model.save_llink(folder, model, meta)."
            )
        out = save_llink(folder, self, self.meta)
        if card:
            hub.write_card(out, self.source, Path(run_dir) if run_dir is not None else None)
        return out

    def push_to_hub(self, repo_id: str, *, run_dir: str | Path | None = None,
                    **push_kwargs: Any) -> str:
        """Save this model with its card into a temporary folder and upload it to the hub
        repository ``repo_id`` (``private``, ``token``, ``commit_message``, ``revision``,
        ``create_pr``: see :func:`llink.storage.hub.push_folder`); returns the commit URL."""
        with tempfile.TemporaryDirectory(prefix="llink-push-") as tmp:
            folder = self.save_pretrained(Path(tmp) / "model", run_dir=run_dir)
            return hub.push_folder(folder, repo_id, **push_kwargs)

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
        literal_bias: float = 0.0,
        **gen_kwargs,
    ) -> list[str]:
        """English answers for foreign texts; ``ablate=True`` leaves the placeholder rows.
        ``literal_bias`` > 0 adds that much to the logits of each text's literals
        (numbers, Latin words; :class:`~llink.method.literals.LiteralBias`) until they
        are written."""
        self.eval()
        prompts, slots = self.prompts_and_slots(foreign, task, strict, question, gate_boost)
        return self.generate_from_ids(
            prompts, None if ablate else slots, max_new_tokens=max_new_tokens,
            prefix=self._template(task, strict, question),
            **with_literal_bias(gen_kwargs, self.tokenizer, foreign, literal_bias))

    def prompts_and_slots(
        self,
        foreign: Sequence[str],
        task: str = "translate_to_english",
        strict: bool = False,
        question: str | None = None,
        gate_boost: float = 1.0,
    ) -> tuple[list[list[int]], torch.Tensor]:
        """Each text's prompt ids (its slot span, and its literals if the model copies them)
        and the slots to write into them, [B, K, d_dec]: one encoder pass."""
        enc, tokens = self.read(foreign)
        counts = self.slot_counts(tokens) or [self.num_slots] * len(foreign)
        prompts = [self.prompt_ids(task, strict, question, num_slots=k,
                                   literals=self.literals_of(text))
                   for k, text in zip(counts, foreign, strict=True)]
        return prompts, self.slots(enc, gate_boost, tokens)

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


# --- model folders: building these models from disk and saving them ---------------------


def save_llink(folder: str | Path, model: LLINK, meta: dict[str, Any]) -> Path:
    """Write a complete LLINK model folder: bridge, projector, reserved rows, LoRA, config.

    Layout: ``llink.json`` (models, dimensions, K, prompt format, training config),
    ``bridge.safetensors`` (bridge.*, projector.*, target transform, reserved_rows) and
    ``lora/`` as ``peft`` saves it. The model keeps ``meta`` (``model.meta``), so
    :meth:`LLINK.save_pretrained` can save it again.
    """
    _refuse_merged(model)
    tensors = {f"bridge.{k}": v for k, v in model.bridge.state_dict().items()}
    tensors.update({f"projector.{k}": v for k, v in model.projector.state_dict().items()})
    if model.reader is not None:
        tensors.update({f"reader.{k}": v for k, v in model.reader.state_dict().items()})
    tensors.update(model.targets.tensors())
    tensors["reserved_rows"] = model.decoder.reserved_rows()
    full_meta = {
        "format": LLINK_FORMAT,
        **meta,
        "num_slots": model.num_slots,
        "d_enc": model.encoder.dim,
        "d_dec": model.decoder.hidden_size,
        **model.fmt.meta(),
        "targets": model.targets.kind,
        **model.targets.spec(),
        "has_lora": model.has_lora,
        "slot_source": model.slot_source,
        "literals": model.literals,
        "slots_per_token": model.slots_per_token,
        "token_layer": model.token_layer,
        "resampler_layers": len(getattr(model.reader, "blocks", ())),
    }

    def write_lora(tmp: Path) -> None:
        if model.has_lora:
            model.lm.save_pretrained(str(tmp / "lora"), save_embedding_layers=False)

    out = save_folder(folder, {"bridge": tensors}, {"llink": full_meta}, extra=write_lora)
    model.meta = dict(meta)
    return out


def _refuse_merged(model: PromptedDecoder) -> None:
    if model.lora_merged:
        raise CheckpointError(
            "this model's LoRA is merged into the decoder weights (merge_lora), which a model "
            "folder does not hold: save the model loaded without merge_lora")


def assemble_llink(meta: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path,
                   encoder: FrozenEncoder, decoder: FrozenDecoder) -> LLINK:
    """An LLINK model (no LoRA) around loaded frozen models, its projector, bridge, token
    reader and target transform built from ``llink.json`` metadata ``meta`` and the tensors
    of ``path`` (``bridge.*``, ``projector.*``, ``reader.*``, the target transform)."""
    proj = Projector(meta["d_enc"], meta["d_dec"], meta["hidden_mult"], meta["dropout"])
    load_state_dict(proj, prefixed(tensors, "projector."), path)
    bridge = SlotBridge(meta["d_dec"], meta["num_slots"], target_norm=1.0)
    load_state_dict(bridge, prefixed(tensors, "bridge."), path)
    reader = build_token_reader(meta.get("slot_source", "pooled"), meta["d_enc"], meta["d_dec"],
                                meta["num_slots"], layers=meta.get("resampler_layers", 0))
    if reader is not None:
        load_state_dict(reader, prefixed(tensors, "reader."), path)
    targets = targets_from(meta, tensors, path)
    return LLINK(encoder, decoder, proj, targets, bridge,
                 PromptFormat.from_meta(meta),
                 reader=reader, token_layer=meta.get("token_layer", -1),
                 literals=meta.get("literals", False),
                 slots_per_token=meta.get("slots_per_token", 0.0))


def load_llink(
    folder: str | Path,
    *,
    cache_dir: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    expect: dict[str, Any] | None = None,
    encoder: FrozenEncoder | None = None,
    decoder: FrozenDecoder | None = None,
    merge_lora: bool = False,
) -> LLINK:
    """Load a saved LLINK model; every mismatch with the frozen models is named in the error.

    ``encoder``/``decoder`` reuse already-loaded frozen models (they must be the ones
    the artifact was trained with; a decoder must not carry adapters yet). ``dtype``
    applies to the frozen models (e.g. ``torch.bfloat16`` on a GPU); the bridge stays
    float32 and slots are cast to the decoder's dtype when injected. ``merge_lora`` folds
    the LoRA into the decoder weights (:meth:`PromptedDecoder.merge_lora`: for serving and
    plain inference; not for base-decoder outputs, ablations of the LoRA or saving); it
    changes the weights of a ``decoder`` passed in.
    """
    folder, meta = open_artifact(folder, "LLINK model", "llink", LLINK_FORMAT,
                                  "llink train stage-b", expect,
                                  "Load it with the models it was trained with, or retrain "
                                  "Stage B.")
    tensors = load_tensors(folder, "bridge")
    path = folder / "bridge.safetensors"
    check_reserved_rows(tensors, meta, path)
    with named_by(folder / "llink.json"):
        enc = encoder or FrozenEncoder.from_pretrained(
            meta["encoder"], prefix=meta["encoder_prefix"], max_chars=meta["max_foreign_chars"],
            cache_dir=cache_dir, device=device, dtype=dtype,
        )
        dec = decoder or FrozenDecoder.from_pretrained(
            meta["decoder"], num_slots=meta["num_slots"], cache_dir=cache_dir, device=device,
            dtype=dtype,
        )
    found = {"d_enc": enc.dim, "d_dec": dec.hidden_size, "num_slots": dec.num_slots,
             "encoder_weights": enc.fingerprint, "decoder_weights": dec.fingerprint}
    compare_expected(meta, found, f"LLINK model {folder} vs the loaded encoder/decoder",
                     "The frozen models differ from those the artifact was trained with.")
    dec.load_reserved_rows(tensors["reserved_rows"])
    model = assemble_llink(meta, tensors, path, enc, dec)
    if meta.get("has_lora"):
        attach_lora(model, folder, "llink.json")
        if merge_lora:
            model.merge_lora()
    model.meta = {k: v for k, v in meta.items() if k not in ("format", HASH_KEY)}
    model.source = folder
    return model.to(dec.device).eval()



def save_baseline(folder: str | Path, model: PromptedDecoder, meta: dict[str, Any]) -> Path:
    """Write a direct fine-tuning baseline: ``baseline.json`` and the ``lora/`` adapter."""
    full_meta = {
        "format": BASELINE_FORMAT,
        "kind": "direct-finetune",
        **meta,
        "num_slots": model.num_slots,
        "d_dec": model.decoder.hidden_size,
        **model.fmt.meta(),
    }

    def write_lora(tmp: Path) -> None:
        model.lm.save_pretrained(str(tmp / "lora"), save_embedding_layers=False)

    _refuse_merged(model)
    return save_folder(folder, {}, {"baseline": full_meta}, extra=write_lora)



def load_baseline(
    folder: str | Path,
    *,
    cache_dir: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    expect: dict[str, Any] | None = None,
    decoder: FrozenDecoder | None = None,
) -> PromptedDecoder:
    """Load a baseline written by :func:`save_baseline`: its decoder with the LoRA attached.

    ``decoder`` reuses a loaded decoder without adapters (LoRA is attached to it in place).
    """
    folder, meta = open_artifact(folder, "direct fine-tuning baseline", "baseline",
                                  BASELINE_FORMAT, "llink train baseline", expect,
                                  "Load it with the decoder it was trained with, or retrain it.")
    with named_by(folder / "baseline.json"):
        dec = decoder or FrozenDecoder.from_pretrained(
            meta["decoder"], num_slots=meta["num_slots"], cache_dir=cache_dir, device=device,
            dtype=dtype,
        )
    found = {"d_dec": dec.hidden_size, "num_slots": dec.num_slots,
             "decoder_weights": dec.fingerprint}
    compare_expected(meta, found, f"baseline {folder} vs the loaded decoder",
                     "The decoder differs from the one the baseline was trained with.")
    model = PromptedDecoder(dec, PromptFormat.from_meta(meta))
    attach_lora(model, folder, "baseline.json")
    return model.to(dec.device).eval()
