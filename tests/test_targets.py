import pytest
import torch

from llink.method.targets import TargetTransform


def _anisotropic(n=2000, d=16):
    torch.manual_seed(0)
    scales = torch.logspace(0, -2, d)
    return torch.randn(n, d) * scales + 5.0  # a large shared offset, uneven variances


def test_raw_is_identity_and_centred_removes_mean():
    h = _anisotropic()
    assert torch.equal(TargetTransform.fit("raw", h)(h), h)
    c = TargetTransform.fit("centred", h)(h)
    assert c.mean(0).abs().max() < 1e-4


def test_whitened_training_states_have_near_identity_covariance():
    h = _anisotropic()
    t = TargetTransform.fit("whitened", h, eps=1e-8)
    w = t(h).double()
    cov = w.T @ w / (len(w) - 1)
    torch.testing.assert_close(cov, torch.eye(16, dtype=torch.float64), atol=2e-3, rtol=0)


def test_eps_floors_small_directions():
    h = _anisotropic()
    w = TargetTransform.fit("whitened", h, eps=1.0)(h)
    var = w.var(0)
    assert var.max() / var.min() > 10  # a large floor leaves the spectrum uneven


def test_round_trip_and_unknown_kind():
    h = _anisotropic()
    t = TargetTransform.fit("whitened", h)
    t2 = TargetTransform.from_tensors("whitened", t.tensors())
    assert torch.equal(t(h), t2(h))
    assert "target_whitener" not in TargetTransform.fit("centred", h).tensors()
    with pytest.raises(ValueError, match="whitened"):
        TargetTransform.fit("pca", h)
