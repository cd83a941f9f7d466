"""The trainable bridge between the frozen encoder and the frozen decoder.

Stage A trains :class:`Projector`; Stage B adds :class:`ForeignScale`,
:class:`GatedAdapter`, :class:`SlotExpander` (together :class:`SlotBridge`) and the
training-only :class:`BagOfWordsHead`. These modules know nothing of files or text.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Projector(nn.Module):
    """Encoder vector → decoder hidden space: Linear → GELU → Dropout → Linear → LayerNorm."""

    def __init__(self, d_in: int, d_out: int, hidden_mult: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        hidden = hidden_mult * d_in
        self.net = nn.Sequential(
            nn.Linear(d_in, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, d_out),
            nn.LayerNorm(d_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ForeignScale(nn.Module):
    """L2-normalise → LayerNorm (no affine) → × a learned scalar.

    After the parameter-free LayerNorm a vector has norm ≈ √d, so ``scale`` starts
    at ``target_norm / √d``: injected vectors then have the norm of a native token.
    """

    def __init__(self, d: int, target_norm: float = 1.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d, elementwise_affine=False)
        self.scale = nn.Parameter(torch.tensor(target_norm / math.sqrt(d)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(F.normalize(x, dim=-1)) * self.scale


class GatedAdapter(nn.Module):
    """``x + clamp(tanh(g), 0, max_gate) · W2 GELU(W1 LN(x))``, near identity at init."""

    def __init__(
        self, d: int, gate_init: float = 0.5, max_gate: float = 0.7, init_gain: float = 0.02
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.w1 = nn.Linear(d, d)
        self.w2 = nn.Linear(d, d)
        self.gate = nn.Parameter(torch.tensor(gate_init))
        self.max_gate = max_gate
        for lin in (self.w1, self.w2):
            nn.init.xavier_uniform_(lin.weight, gain=init_gain)
            nn.init.zeros_(lin.bias)

    def gate_value(self) -> torch.Tensor:
        return torch.tanh(self.gate).clamp(0.0, self.max_gate)

    def forward(self, x: torch.Tensor, boost: float = 1.0) -> torch.Tensor:
        """Adapt ``x``; ``boost`` ≠ 1 scales the adapter's contribution, keeping ‖x‖."""
        delta = self.gate_value() * self.w2(F.gelu(self.w1(self.norm(x))))
        if boost == 1.0:
            return x + delta
        out = x + boost * delta
        return out * (x.norm(dim=-1, keepdim=True) / out.norm(dim=-1, keepdim=True).clamp_min(1e-6))


class SlotExpander(nn.Module):
    """One vector → K slot vectors: ``LN(x + W2 GELU(W1 x))`` reshaped to K × d.

    The residual ``x`` (our choice; not in the paper) makes every slot start as the
    adapted vector itself instead of as small-gain noise, and the LayerNorm's gain
    starts at ``target_norm / √d`` so slots have a native token's norm.
    """

    def __init__(
        self, d: int, num_slots: int, target_norm: float = 1.0, init_gain: float = 0.02
    ) -> None:
        super().__init__()
        self.num_slots = num_slots
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, num_slots * d)
        self.norm = nn.LayerNorm(d)
        for lin in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(lin.weight, gain=init_gain)
            nn.init.zeros_(lin.bias)
        with torch.no_grad():
            self.norm.weight.fill_(target_norm / math.sqrt(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d = x.shape
        delta = self.fc2(F.gelu(self.fc1(x))).view(b, self.num_slots, d)
        return self.norm(x.unsqueeze(1) + delta)


class SlotBridge(nn.Module):
    """Projected vector → K slots: foreign scale → gated adapter → slot expander."""

    def __init__(self, d: int, num_slots: int, target_norm: float) -> None:
        super().__init__()
        self.scale = ForeignScale(d, target_norm)
        self.adapter = GatedAdapter(d)
        self.expander = SlotExpander(d, num_slots, target_norm)

    def forward(self, projected: torch.Tensor, gate_boost: float = 1.0) -> torch.Tensor:
        return self.expander(self.adapter(self.scale(projected), boost=gate_boost))


def pad_states(states: list[torch.Tensor], device: torch.device | str | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Variable-length token states [T_i, d] → a right-padded [B, T, d] float32 tensor and
    its mask [B, T] (1 = a real token)."""
    width = max(1, *(len(x) for x in states)) if states else 1
    d = states[0].shape[-1] if states else 1
    out = torch.zeros(len(states), width, d)
    mask = torch.zeros(len(states), width, dtype=torch.bool)
    for i, x in enumerate(states):
        out[i, : len(x)] = x.float()
        mask[i, : len(x)] = True
    return out.to(device), mask.to(device)


class ResamplerBlock(nn.Module):
    """Pre-norm cross-attention of the slots over the token states, then a feed-forward."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm_ff = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, q: torch.Tensor, kv: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        q = q + self.attn(self.norm_q(q), kv, kv, key_padding_mask=pad, need_weights=False)[0]
        return q + self.ff(self.norm_ff(q))


class TokenResampler(nn.Module):
    """K slots that read the encoder's token states (``model.slot_source=tokens``).

    Perceiver-resampler style: the queries are the K slots of the pooled path (Stage A's
    vector through :class:`SlotBridge`) plus a learned offset per slot; they cross-attend
    over the token states projected to the decoder's width. The result is added to the
    pooled slots through a zero-initialised output layer, so training starts exactly
    from the Stage A path and the tokens add what one pooled vector cannot carry (the
    words). Padded token positions are masked: they never change the slots.
    """

    def __init__(
        self, d_enc: int, d: int, num_slots: int, target_norm: float = 1.0, layers: int = 2,
        heads: int = 8,
    ) -> None:
        super().__init__()
        self.inp = nn.Sequential(nn.LayerNorm(d_enc), nn.Linear(d_enc, d), nn.LayerNorm(d))
        self.queries = nn.Parameter(torch.randn(num_slots, d) * 0.02)
        self.blocks = nn.ModuleList(ResamplerBlock(d, heads) for _ in range(layers))
        self.out = nn.Linear(d, d)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.norm = nn.LayerNorm(d)
        with torch.no_grad():
            self.norm.weight.fill_(target_norm / math.sqrt(d))
        # slots have the norm of a native token; queries enter attention at unit scale
        self.register_buffer("query_scale", torch.tensor(math.sqrt(d) / target_norm))

    def forward(
        self, pooled_slots: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """``pooled_slots`` [B, K, d], ``tokens`` [B, T, d_enc], ``mask`` [B, T] (1 = real)."""
        kv = self.inp(tokens.to(self.queries.dtype))
        q = pooled_slots * self.query_scale + self.queries
        pad = ~mask.bool()
        for block in self.blocks:
            q = block(q, kv, pad)
        return self.norm(pooled_slots + self.out(q))


class TokenProjector(nn.Module):
    """One slot per encoder token (``model.slot_source=all_tokens``, as LangBridge and
    MindMerger feed the decoder): ``LN(W2 GELU(W1 LN(x)))`` per token state, with a
    native token's norm. No compression: the reference for the K-slot designs."""

    def __init__(self, d_enc: int, d: int, target_norm: float = 1.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d_enc), nn.Linear(d_enc, 2 * d), nn.GELU(),
                                 nn.Linear(2 * d, d))
        self.norm = nn.LayerNorm(d)
        with torch.no_grad():
            self.norm.weight.fill_(target_norm / math.sqrt(d))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T, d_enc] token states → [B, T, d] slots, zero at padded positions."""
        return self.norm(self.net(tokens)) * mask.unsqueeze(-1).to(tokens.dtype)


class BagOfWordsHead(nn.Module):
    """Training-only head: predicts which content tokens the answer holds from the slot mean.

    The bias starts at the log-odds of a token being present (``prior``, a few words
    out of the whole vocabulary), so the BCE starts meaningful instead of at log 2.
    """

    def __init__(self, d: int, vocab_size: int, prior: float = 1e-4) -> None:
        super().__init__()
        self.proj = nn.Linear(d, vocab_size)
        nn.init.constant_(self.proj.bias, math.log(prior / (1 - prior)))

    def forward(self, slots: torch.Tensor) -> torch.Tensor:
        return self.proj(slots.mean(dim=1))


#: What ``model.slot_source`` names, and the module that reads the token states for it.
SLOT_SOURCES = ("pooled", "tokens", "all_tokens")


def build_token_reader(
    slot_source: str, d_enc: int, d: int, num_slots: int, target_norm: float = 1.0,
    layers: int = 2,
) -> TokenResampler | TokenProjector | None:
    """The module that reads the encoder's token states for a slot source (None: pooled)."""
    if slot_source == "pooled":
        return None
    if slot_source == "tokens":
        return TokenResampler(d_enc, d, num_slots, target_norm, layers)
    if slot_source == "all_tokens":
        return TokenProjector(d_enc, d, target_norm)
    raise ValueError(f"unknown slot source {slot_source!r}; use one of {', '.join(SLOT_SOURCES)}")


def slot_source_of(reader: nn.Module | None) -> str:
    """Inverse of :func:`build_token_reader`."""
    if reader is None:
        return "pooled"
    return "tokens" if isinstance(reader, TokenResampler) else "all_tokens"
