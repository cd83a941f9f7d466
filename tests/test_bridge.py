import math

import torch

from llink.method.bridge import (
    BagOfWordsHead,
    ForeignScale,
    GatedAdapter,
    Projector,
    SlotBridge,
    SlotExpander,
)


def test_projector_shapes_and_layernorm_output():
    proj = Projector(12, 20, hidden_mult=4, dropout=0.1).eval()
    assert proj.net[0].out_features == 48
    y = proj(torch.randn(5, 12))
    assert y.shape == (5, 20)
    assert torch.allclose(y.mean(-1), torch.zeros(5), atol=1e-5)


def test_foreign_scale_matches_target_norm():
    scale = ForeignScale(64, target_norm=3.0)
    y = scale(torch.randn(7, 64) * 100)
    assert torch.allclose(y.norm(dim=-1), torch.full((7,), 3.0), rtol=1e-3)


def test_gated_adapter_starts_near_identity_and_boost_keeps_norm():
    torch.manual_seed(0)
    ad = GatedAdapter(16)
    x = torch.randn(3, 16)
    assert ad.gate_value().item() == torch.tanh(torch.tensor(0.5)).item()
    assert (ad(x) - x).abs().max() < 0.05
    boosted = ad(x, boost=4.0)
    assert torch.allclose(boosted.norm(dim=-1), x.norm(dim=-1), rtol=1e-5)
    ad.gate.data.fill_(10.0)
    assert math.isclose(ad.gate_value().item(), 0.7, rel_tol=1e-6)  # clamped


def test_slot_expander_shapes_and_norms():
    ex = SlotExpander(32, num_slots=8, target_norm=2.0)
    slots = ex(torch.randn(4, 32))
    assert slots.shape == (4, 8, 32)
    assert torch.allclose(slots.norm(dim=-1), torch.full((4, 8), 2.0), rtol=1e-2)


def test_slot_bridge_and_bow_head():
    bridge = SlotBridge(24, num_slots=3, target_norm=1.5)
    slots = bridge(torch.randn(2, 24))
    assert slots.shape == (2, 3, 24)
    assert BagOfWordsHead(24, 100)(slots).shape == (2, 100)
