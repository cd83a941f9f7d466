"""The space Stage A's targets live in: raw, centred or whitened teacher states.

The decoder's last-layer states are highly anisotropic (mean pairwise cosine ≈ 0.94
for SmolLM2), so cosine similarity between raw states says little. Centring removes
the common direction; whitening (ZCA with the training set's covariance, eigenvalues
floored at ``eps`` × the largest) also evens out the few directions that still
dominate. Measured on the offline default (8,000 pairs, no queue, 6,000 steps,
1,424-pair test pool), test R@1 / MRR: centred 0.41 / 0.51; whitened with eps 1e-2
0.60 / 0.70, 1e-3 0.65 / 0.73, 1e-4 0.64 / 0.72 (the encoder's own cross-lingual
retrieval: 0.66 / 0.73).

Everything that compares projected vectors with teacher states maps the states
through the same :class:`TargetTransform`, which is saved with the Stage A artifact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KINDS = ("raw", "centred", "whitened")


@dataclass
class TargetTransform:
    """``h ↦ (h − mean) · W``; ``mean`` is zero for raw and ``W`` is the identity unless whitened."""

    kind: str
    mean: torch.Tensor  # [d]
    whitener: torch.Tensor | None = None  # [d, d], symmetric
    #: which teacher states: after ``layer`` decoder blocks (-1: the last), read at
    #: ``<foreign_emb>`` (the paper) or mean-pooled over the English tokens
    layer: int = -1
    pooling: str = "foreign_emb"

    @classmethod
    def fit(cls, kind: str, states: torch.Tensor, eps: float = 1e-3, layer: int = -1,
            pooling: str = "foreign_emb") -> TargetTransform:
        """Estimate the transform from training-set teacher states [N, d]."""
        if kind not in KINDS:
            raise ValueError(f"unknown target space {kind!r}; use one of {', '.join(KINDS)}")
        states = states.double()
        spec = {"layer": layer, "pooling": pooling}
        if kind == "raw":
            return cls(kind, torch.zeros(states.shape[1]), **spec)
        mean = states.mean(0)
        if kind == "centred":
            return cls(kind, mean.float(), **spec)
        x = states - mean
        cov = x.T @ x / max(len(x) - 1, 1)
        evals, evecs = torch.linalg.eigh(cov)
        floor = eps * float(evals.max())
        w = evecs @ torch.diag((evals.clamp_min(0) + floor).rsqrt()) @ evecs.T
        return cls(kind, mean.float(), w.float(), **spec)

    def spec(self) -> dict[str, object]:
        """The teacher states this space is built on (kept in artifact metadata)."""
        return {"teacher_layer": self.layer, "teacher_pooling": self.pooling}

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        out = h.float() - self.mean.to(h.device)
        if self.whitener is not None:
            out = out @ self.whitener.to(h.device)
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        """For saving: the mean, and the whitener if there is one."""
        out = {"target_mean": self.mean}
        if self.whitener is not None:
            out["target_whitener"] = self.whitener
        return out

    @classmethod
    def from_tensors(cls, kind: str, tensors: dict[str, torch.Tensor],
                     meta: dict | None = None) -> TargetTransform:
        """Rebuild from saved tensors and the artifact metadata (its teacher spec)."""
        meta = meta or {}
        return cls(kind, tensors["target_mean"], tensors.get("target_whitener"),
                   meta.get("teacher_layer", -1), meta.get("teacher_pooling", "foreign_emb"))
