"""Losses of both stages: InfoNCE with a hard-negative queue, regularisers, usage penalty."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(
    p: torch.Tensor,
    h: torch.Tensor,
    tau: float,
    extra_negatives: torch.Tensor | None = None,
    ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE between rows of ``p`` and ``h`` (row i of each is a positive pair).

    Both are L2-normalised. ``extra_negatives`` [M, D] join the negatives of the
    p→h direction only, as in METHOD.md. ``ids`` [B] names each row's English: rows
    that share it (one sentence in two languages) are not each other's negatives.
    """
    p, h = F.normalize(p, dim=-1), F.normalize(h, dim=-1)
    logits = p @ h.T / tau
    if ids is not None:
        same = ids.unsqueeze(0) == ids.unsqueeze(1)
        same.fill_diagonal_(False)
        if same.any():
            logits = logits.masked_fill(same, float("-inf"))
    labels = torch.arange(p.shape[0], device=p.device)
    logits_ph = logits
    if extra_negatives is not None and extra_negatives.numel():
        neg = F.normalize(extra_negatives.to(p.dtype), dim=-1)
        logits_ph = torch.cat([logits, p @ neg.T / tau], dim=1)
    return 0.5 * (F.cross_entropy(logits_ph, labels) + F.cross_entropy(logits.T, labels))


def direction_mse(p: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """MSE between the L2-normalised vectors (penalises direction, not magnitude)."""
    return F.mse_loss(F.normalize(p, dim=-1), F.normalize(h, dim=-1))


def log_norm_penalty(p: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """mean((log‖p‖ − log‖h‖)²): keeps the predicted magnitude near the target's."""
    lp = p.norm(dim=-1).clamp_min(1e-6).log()
    lh = h.norm(dim=-1).clamp_min(1e-6).log()
    return ((lp - lh) ** 2).mean()


def usage_penalty(
    loss_injected: torch.Tensor, loss_ablated: torch.Tensor, margin: float
) -> torch.Tensor:
    """``relu(L_injected − L_ablated + margin)`` with the ablated loss detached.

    Positive unless injecting the slots lowers the loss by at least ``margin``, so
    minimising it rewards using the slots. (The paper's code has the sign reversed.)
    """
    return F.relu(loss_injected - loss_ablated.detach() + margin)


def lexical_loss(
    slots: torch.Tensor,
    slot_mask: torch.Tensor | None,
    vocab_rows: torch.Tensor,
    targets: torch.Tensor,
    scale: torch.Tensor | float,
) -> torch.Tensor:
    """Do the slots lie near the input embeddings of the answer's content words?

    Each slot k gives a distribution over the vocabulary, ``softmax(scale · cos(slot_k,
    E_v))`` against the decoder's own embedding rows ``vocab_rows`` [V, d]; a text's
    distribution is the mixture over its slots. The loss is the mean negative log
    probability of the content tokens in ``targets`` [B, V] (multi-hot): every word of
    the answer should be the nearest token of some slot. ``slot_mask`` [B, K] marks the
    slots a text has (None: all). No decoder pass is needed.
    """
    logits = F.normalize(slots.float(), dim=-1) @ F.normalize(vocab_rows.float(), dim=-1).T
    logp = (logits * scale).log_softmax(-1)  # [B, K, V]
    if slot_mask is None:
        slot_mask = torch.ones(slots.shape[:2], dtype=torch.bool, device=slots.device)
    logp = logp.masked_fill(~slot_mask.unsqueeze(-1), float("-inf"))
    mix = torch.logsumexp(logp, 1) - slot_mask.sum(1, keepdim=True).float().log()  # [B, V]
    counts = targets.sum(1)
    rows = counts > 0
    if not bool(rows.any()):
        return slots.sum() * 0.0
    per_row = -(mix * targets).sum(1)[rows] / counts[rows]
    return per_row.mean()


def linear_tau(step: int, total_steps: int, start: float, end: float) -> float:
    """Temperature going linearly from ``start`` at step 0 to ``end`` at the last step."""
    if total_steps <= 1:
        return end
    frac = min(max(step / (total_steps - 1), 0.0), 1.0)
    return start + (end - start) * frac


class NegativeQueue:
    """FIFO queue of past (normalised) teacher states for hard negatives.

    METHOD.md stores it in fp16 (the default); on a CPU, float32 is much faster.

    Each entry remembers the id of its example, so the examples of the current batch
    are never used as their own negatives (with a small corpus the queue holds every
    example several times).
    """

    def __init__(
        self, size: int, dim: int, dtype: torch.dtype = torch.float16,
        device: str | torch.device = "cpu",
    ) -> None:
        self.size = size
        self.vectors = torch.zeros(size, dim, dtype=dtype, device=device)
        self.ids = torch.full((size,), -1, dtype=torch.long, device=device)
        self.ptr = 0
        self.filled = 0

    def push(self, h: torch.Tensor, ids: torch.Tensor) -> None:
        """Append a batch, overwriting the oldest entries when full."""
        if self.size == 0:
            return
        h = F.normalize(h.detach().float(), dim=-1).to(self.vectors.device, self.vectors.dtype)
        ids = ids.detach().to(self.ids.device).long()
        if h.shape[0] > self.size:
            h, ids = h[-self.size :], ids[-self.size :]
        n = h.shape[0]
        pos = (self.ptr + torch.arange(n, device=self.ids.device)) % self.size
        self.vectors[pos] = h
        self.ids[pos] = ids
        self.ptr = int((self.ptr + n) % self.size)
        self.filled = min(self.filled + n, self.size)

    def hard_negatives(
        self, p: torch.Tensor, k: int, exclude_ids: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """The ``k`` entries most similar to the batch ``p`` on average (None if empty).

        The mean similarity to the batch equals the similarity to the batch's mean
        direction, so this is one matrix-vector product over the queue.
        """
        if self.filled == 0 or k <= 0:
            return None
        vecs = self.vectors[: self.filled]
        p_mean = F.normalize(p.detach().float(), dim=-1).mean(0).to(vecs.device, vecs.dtype)
        sim = (vecs @ p_mean).float()
        if exclude_ids is not None:
            banned = torch.isin(self.ids[: self.filled], exclude_ids.detach().to(self.ids.device))
            sim = sim.masked_fill(banned, float("-inf"))
        k = min(k, int(torch.isfinite(sim).sum()))
        if k == 0:
            return None
        top = sim.topk(k).indices
        return vecs[top].to(p.device, p.dtype)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "vectors": self.vectors,
            "ids": self.ids,
            "ptr_filled": torch.tensor([self.ptr, self.filled]),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if tuple(state["vectors"].shape) != tuple(self.vectors.shape):
            raise ValueError("negative queue size or dimension differs from the saved one")
        self.vectors.copy_(state["vectors"])
        self.ids.copy_(state["ids"])
        self.ptr, self.filled = (int(x) for x in state["ptr_filled"].tolist())
