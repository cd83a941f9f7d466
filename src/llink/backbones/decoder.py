"""The frozen decoder LLM, its reserved tokens and its teacher states."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from llink.backbones.batching import batching_key, fixed_shape_batches
from llink.backbones.encoder import mean_pool
from llink.backbones.fingerprint import (
    code_digest,
    module_fingerprint,
    tensor_digest,
    tokenizer_digest,
)
from llink.backbones.offline import explain_load_errors, resolve_model

FOREIGN_OPEN = "<foreign>"
FOREIGN_CLOSE = "</foreign>"
FOREIGN_EMB = "<foreign_emb>"
#: Where a teacher state is read: at ``<foreign_emb>`` after the text (the paper), or the
#: mean over the text's tokens.
TEACHER_POOLINGS = ("foreign_emb", "mean")


def slot_token(i: int) -> str:
    """The placeholder token of slot ``i``."""
    return f"<f{i}>"


def reserved_token_strings(num_slots: int) -> list[str]:
    """All reserved tokens, in the order their embedding rows are saved."""
    return [FOREIGN_OPEN, FOREIGN_CLOSE, FOREIGN_EMB] + [slot_token(i) for i in range(num_slots)]


@dataclass(frozen=True)
class ReservedTokens:
    """Token ids of the reserved tokens added to the decoder's tokenizer."""

    foreign_open: int
    foreign_close: int
    foreign_emb: int
    slots: tuple[int, ...]

    @property
    def ids(self) -> list[int]:
        """Ids in the order of :func:`reserved_token_strings`."""
        return [self.foreign_open, self.foreign_close, self.foreign_emb, *self.slots]


def add_reserved_tokens(
    tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, num_slots: int, seed: int = 0
) -> ReservedTokens:
    """Add the reserved tokens once, and give new embedding rows a deterministic init.

    New rows are drawn per dimension from the mean and standard deviation of the
    existing rows (a seeded generator), so they look like ordinary tokens. Rows of
    tokens the tokenizer already had are left alone. Trained artifacts overwrite
    them with the saved rows (:meth:`FrozenDecoder.load_reserved_rows`).
    """
    strings = reserved_token_strings(num_slots)
    before = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": strings})
    ids = tokenizer.convert_tokens_to_ids(strings)
    emb = model.get_input_embeddings()
    if len(tokenizer) > emb.weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        emb = model.get_input_embeddings()
    new_ids = [i for i in ids if i >= before]
    if new_ids:
        with torch.no_grad():
            w = emb.weight
            old = w[:before].float()
            gen = torch.Generator().manual_seed(seed)
            noise = torch.randn(len(new_ids), w.shape[1], generator=gen)
            rows = old.mean(0) + old.std(0) * noise
            w[new_ids] = rows.to(w.dtype).to(w.device)
    return ReservedTokens(ids[0], ids[1], ids[2], tuple(ids[3:]))


def _restride_head_input(_module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Forward pre-hook of the output head: give a half-precision CPU input fresh strides.

    Generation feeds the head the prompt's last position, a slice whose batch stride is
    not rows × width. For bfloat16/float16 on the CPU, ``linear`` then does not fold it
    into one matrix product: it runs ``bmm`` and copies the whole transposed head weight
    on every call (pytorch/pytorch#151934; ~200 ms for SmolLM2-135M's head, 25 times the
    product itself). A copy of the small input with contiguous strides takes the fast path
    (``contiguous()`` is not enough: at batch 1 the slice already counts as contiguous);
    float32 and other devices are left alone.
    """
    x = args[0]
    if (isinstance(x, torch.Tensor) and x.dim() == 3 and x.device.type == "cpu"
            and x.dtype in (torch.bfloat16, torch.float16)
            and x.stride(0) != x.shape[1] * x.shape[2]):
        return (x.clone(memory_format=torch.contiguous_format), *args[1:])
    return None


class _StopForward(Exception):
    """Raised by a forward hook to end a pass once the wanted layer has run."""


class FrozenDecoder:
    """A causal LM with LLINK's reserved tokens; its base weights are never trained."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        num_slots: int,
        name: str = "",
        seed: int = 0,
    ) -> None:
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.num_slots = num_slots
        #: Fingerprint of the base weights, taken before reserved tokens or adapters.
        self.fingerprint = module_fingerprint(model)
        self.reserved = add_reserved_tokens(tokenizer, model, num_slots, seed=seed)
        head = model.get_output_embeddings()
        if head is not None:
            head.register_forward_pre_hook(_restride_head_input)
        #: Digest of the tokenizer with the reserved tokens added.
        self.tokenizer_fingerprint = tokenizer_digest(tokenizer)

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        *,
        num_slots: int = 8,
        cache_dir: str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> FrozenDecoder:
        """Load any Hugging Face causal LM id or folder, or an ``offline:`` default."""
        path = resolve_model(name, cache_dir)
        with explain_load_errors(name, "model.decoder"):  # weights from safetensors only
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True)
        model = model.to(device)
        return cls(model, tokenizer, num_slots=num_slots, name=name)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def embedding_rows(self) -> torch.Tensor:
        """The input-embedding matrix (a view, not a copy)."""
        return self.model.get_input_embeddings().weight

    def reserved_rows(self) -> torch.Tensor:
        """A copy of the reserved tokens' embedding rows, in :func:`reserved_token_strings` order."""
        return self.embedding_rows()[self.reserved.ids].detach().float().cpu().clone()

    def load_reserved_rows(self, rows: torch.Tensor) -> None:
        """Restore saved reserved-token rows exactly."""
        ids = self.reserved.ids
        if tuple(rows.shape) != (len(ids), self.hidden_size):
            raise ValueError(
                f"reserved-token rows have shape {tuple(rows.shape)}, this decoder needs "
                f"({len(ids)}, {self.hidden_size}) ({self.num_slots} slots)"
            )
        with torch.no_grad():
            w = self.embedding_rows()
            w[ids] = rows.to(w.dtype).to(w.device)

    def teacher_settings(self, layer: int = -1, pooling: str = "foreign_emb") -> dict[str, Any]:
        """Everything that determines a teacher state for a given English text."""
        emb_row = self.embedding_rows()[self.reserved.foreign_emb]
        return {
            "model": self.name,
            "weights": self.fingerprint,
            "tokenizer": self.tokenizer_fingerprint,
            "code": code_digest(FrozenDecoder.teacher_input_ids, FrozenDecoder.hidden_states,
                                FrozenDecoder.teacher_states, mean_pool),
            "batching": batching_key(),
            # (_run_to_layer is left out of the key: it returns what a full pass would)
            "foreign_emb_row": tensor_digest(emb_row) if pooling == "foreign_emb" else None,
            "suffix": FOREIGN_EMB if pooling == "foreign_emb" else None,
            "special_tokens": True,
            "layer": "last" if layer == -1 else layer,
            "pooling": pooling,
            "dtype": str(self.embedding_rows().dtype),
        }

    def teacher_input_ids(self, text: str, pooling: str = "foreign_emb") -> list[int]:
        """Token ids of ``text`` (no chat template), followed by ``<foreign_emb>`` when the
        teacher state is read there."""
        ids = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        return ids + [self.reserved.foreign_emb] if pooling == "foreign_emb" else ids

    @torch.inference_mode()
    def hidden_states(
        self,
        ids_list: Sequence[list[int]],
        batch_size: int = 32,
        progress: bool = False,
        desc: str = "decoder",
        layer: int = -1,
        pooling: str = "last",
    ) -> torch.Tensor:
        """Hidden state after ``layer`` blocks (-1: the final, normalised one) of each id
        sequence, at its last token (``last``) or averaged over its tokens (``mean``),
        [N, hidden] float32. Batches hold sequences of one length, in a shape set by that
        length (:func:`~llink.backbones.batching.fixed_shape_batches`), so a sequence's
        state does not depend, to the last bit, on what it is batched with."""
        if pooling not in TEACHER_POOLINGS and pooling != "last":
            raise ValueError(f"unknown pooling {pooling!r}")
        out = torch.empty(len(ids_list), self.hidden_size, dtype=torch.float32)
        base = self.model.get_decoder()
        batches = list(fixed_shape_batches([len(x) for x in ids_list], batch_size))
        for idx in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
            input_ids = torch.tensor([ids_list[i] for i in idx], dtype=torch.long)  # one length
            mask = torch.ones_like(input_ids)
            hidden = self._run_to_layer(base, input_ids.to(self.device), mask.to(self.device),
                                        layer)
            if pooling == "mean":
                out[idx] = mean_pool(hidden, mask.to(self.device)).float().cpu()
            else:
                last = mask.sum(1) - 1
                out[idx] = hidden[torch.arange(len(idx)), last.to(self.device)].float().cpu()
        return out

    @staticmethod
    def _run_to_layer(base: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor,
                      layer: int) -> torch.Tensor:
        """Hidden states after ``layer`` blocks (Hugging Face's ``hidden_states[layer]``;
        -1 or the last layer: the final, normalised states). An inner layer stops the
        forward pass there, so layer 10 of 30 costs a third of a full pass."""
        blocks = getattr(base, "layers", None)
        if layer == -1 or blocks is None or not 0 < layer < len(blocks):
            res = base(input_ids=input_ids, attention_mask=mask,
                       output_hidden_states=layer != -1)
            return res.last_hidden_state if layer == -1 else res.hidden_states[layer]
        got: list[torch.Tensor] = []

        def stop(_module, _args, output):
            got.append(output[0] if isinstance(output, tuple) else output)
            raise _StopForward

        handle = blocks[layer - 1].register_forward_hook(stop)
        try:
            base(input_ids=input_ids, attention_mask=mask)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return got[0]

    def teacher_states(
        self, texts: Sequence[str], batch_size: int = 32, progress: bool = False,
        layer: int = -1, pooling: str = "foreign_emb",
    ) -> torch.Tensor:
        """Teacher targets of texts: the state at ``<foreign_emb>`` appended to each (the
        paper), or its states mean-pooled over its tokens; after ``layer`` blocks."""
        ids = [self.teacher_input_ids(t, pooling) for t in texts]
        how = "mean" if pooling == "mean" else "last"
        return self.hidden_states(ids, batch_size, progress, desc="teacher", layer=layer,
                                  pooling=how)
