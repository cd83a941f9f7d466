"""The frozen multilingual sentence encoder: clip, prefix, tokenize, mean-pool."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from llink.backbones.batching import batching_key, fixed_shape_batches, length_sorted_batches
from llink.backbones.fingerprint import code_digest, module_fingerprint, tokenizer_digest
from llink.backbones.offline import explain_load_errors, resolve_model
from llink.config import ConfigError


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average ``hidden`` [B, T, D] over the positions where ``mask`` [B, T] is 1."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def clip_text(text: str, max_chars: int) -> str:
    """Trim surrounding white space and keep at most ``max_chars`` characters."""
    text = text.strip()
    return text[:max_chars] if max_chars > 0 else text


class FrozenEncoder:
    """A frozen encoder that turns texts into mean-pooled sentence vectors.

    No gradients flow and the model stays in eval mode. With ``exact_lengths=True`` (what
    the feature cache uses) a text's vector is the same to the last bit whatever it is
    batched with; padded batches (the default, faster for many texts of mixed lengths)
    agree with it up to float rounding.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        name: str = "",
        prefix: str = "",
        max_chars: int = 256,
        max_length: int = 512,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.prefix = prefix
        self.max_chars = max_chars
        self.max_length = min(max_length, getattr(tokenizer, "model_max_length", max_length))

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        *,
        prefix: str = "",
        max_chars: int = 256,
        cache_dir: str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> FrozenEncoder:
        """Load any Hugging Face encoder id or folder, or an ``offline:`` default."""
        path = resolve_model(name, cache_dir)
        with explain_load_errors(name, "model.encoder"):  # weights from safetensors only
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModel.from_pretrained(path, dtype=dtype, use_safetensors=True)
        model = model.to(device)
        return cls(model, tokenizer, name=name, prefix=prefix, max_chars=max_chars)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @cached_property
    def fingerprint(self) -> str:
        return module_fingerprint(self.model)

    @cached_property
    def tokenizer_fingerprint(self) -> str:
        return tokenizer_digest(self.tokenizer)

    def cache_settings(self) -> dict[str, Any]:
        """Everything that determines this encoder's output for a text: weights, tokenizer,
        the code that computes it, prefix, clipping and dtype."""
        return {
            "model": self.name,
            "weights": self.fingerprint,
            "tokenizer": self.tokenizer_fingerprint,
            "code": code_digest(mean_pool, clip_text, FrozenEncoder.prepare,
                                FrozenEncoder.encode_both, FrozenEncoder.batches),
            "batching": batching_key(),
            "prefix": self.prefix,
            "max_chars": self.max_chars,
            "max_length": self.max_length,
            "pooling": "mean",
            "dtype": str(next(self.model.parameters()).dtype),
        }

    def prepare(self, texts: Sequence[str]) -> list[str]:
        """Clip each text to ``max_chars`` characters and add the encoder's prefix."""
        return [self.prefix + clip_text(t, self.max_chars) for t in texts]

    def text_token_span(self, input_ids: Sequence[int]) -> slice:
        """The positions of the text's own tokens: without special tokens and the prefix."""
        specials = set(self.tokenizer.all_special_ids)
        n_prefix = len(self.tokenizer(self.prefix, add_special_tokens=False)["input_ids"]) \
            if self.prefix else 0
        start = 1 if input_ids and input_ids[0] in specials else 0
        stop = len(input_ids) - (1 if input_ids and input_ids[-1] in specials else 0)
        start = min(start + n_prefix, stop)
        return slice(start, stop)

    def batches(self, prepared: Sequence[str], batch_size: int, exact_lengths: bool
                ) -> list[list[int]]:
        """Index batches of prepared texts: of similar lengths, or (``exact_lengths``) of
        one shape per token count (:func:`~llink.backbones.batching.fixed_shape_batches`:
        no text's output depends on its batch mates)."""
        if not exact_lengths:
            return list(length_sorted_batches([len(t) for t in prepared], batch_size))
        ids = self.tokenizer(list(prepared), truncation=True, max_length=self.max_length)
        return list(fixed_shape_batches([len(x) for x in ids["input_ids"]], batch_size))

    @torch.inference_mode()
    def encode_both(
        self, texts: Sequence[str], layer: int | None = -1, batch_size: int = 64,
        progress: bool = False, exact_lengths: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """One encoder pass for both readings of each text: the mean-pooled vector
        [N, dim] (float32, CPU) and, unless ``layer`` is None, the hidden states of the
        text's own tokens at ``layer`` (-1: the last) as a [T_i, dim] tensor per text.
        Special tokens and the prefix are left out of the token states (the pooled vector
        carries the sentence as a whole). ``exact_lengths``: batch only texts of equal
        token counts, so each text's outputs are independent of the others (feature
        caches use it; see :meth:`batches`)."""
        layers = int(getattr(self.model.config, "num_hidden_layers", 0) or 0)
        if layer is not None and layers and not -1 <= layer <= layers:
            raise ConfigError(f"model.token_layer={layer}, but the encoder {self.name or ''} has "
                             f"{layers} layers: use 1..{layers}, or -1 for the last")
        prepared = self.prepare(texts)
        pooled = torch.empty(len(prepared), self.dim, dtype=torch.float32)
        tokens: list[torch.Tensor] = [torch.empty(0)] * len(prepared)
        batches = self.batches(prepared, batch_size, exact_lengths)
        for idx in tqdm(batches, desc="encoder", disable=not progress, unit="batch"):
            enc = self.tokenizer(
                [prepared[i] for i in idx], padding=True, truncation=True,
                max_length=self.max_length, return_tensors="pt",
            ).to(self.device)
            res = self.model(**enc, output_hidden_states=layer not in (None, -1))
            pooled[idx] = mean_pool(res.last_hidden_state, enc["attention_mask"]).float().cpu()
            if layer is None:
                continue
            hidden = res.last_hidden_state if layer == -1 else res.hidden_states[layer]
            for r, i in enumerate(idx):
                real = enc["attention_mask"][r].nonzero().flatten()
                span = self.text_token_span(enc["input_ids"][r][real].tolist())
                keep = real[span] if span.stop > span.start else real  # never empty
                tokens[i] = hidden[r, keep].float().cpu()
        return pooled, (None if layer is None else tokens)

    def encode_tokens(
        self, texts: Sequence[str], layer: int = -1, batch_size: int = 64,
        progress: bool = False, exact_lengths: bool = False,
    ) -> list[torch.Tensor]:
        """Hidden states of each text's own tokens at ``layer`` (see :meth:`encode_both`)."""
        return self.encode_both(texts, layer, batch_size, progress, exact_lengths)[1]

    def encode(
        self, texts: Sequence[str], batch_size: int = 64, progress: bool = False,
        exact_lengths: bool = False,
    ) -> torch.Tensor:
        """Return mean-pooled vectors [N, dim] (float32, on the CPU), in input order
        (``exact_lengths``: see :meth:`encode_both`)."""
        return self.encode_both(texts, None, batch_size, progress, exact_lengths)[0]
