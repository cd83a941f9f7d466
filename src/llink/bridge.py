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
