import math

import pytest
import torch
import torch.nn.functional as F

from llink.method.losses import (
    NegativeQueue,
    direction_mse,
    info_nce,
    linear_tau,
    log_norm_penalty,
    usage_penalty,
)


def test_info_nce_matches_hand_computation():
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    h = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    tau = 0.5
    # normalised: p = [[1,0],[0,1]], h = [[1,0],[s,s]] with s = 1/sqrt(2)
    s = 1 / math.sqrt(2)
    sims = [[1.0, s], [0.0, s]]

    def ce(row, target):
        logits = [x / tau for x in row]
        return -logits[target] + math.log(sum(math.exp(x) for x in logits))

    p_to_h = (ce(sims[0], 0) + ce(sims[1], 1)) / 2
    h_to_p = (ce([sims[0][0], sims[1][0]], 0) + ce([sims[0][1], sims[1][1]], 1)) / 2
    expected = 0.5 * (p_to_h + h_to_p)
    assert info_nce(p, h, tau).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_extra_negatives_only_affect_p_to_h():
    torch.manual_seed(0)
    p, h = torch.randn(4, 8), torch.randn(4, 8)
    neg = torch.randn(5, 8)
    base = info_nce(p, h, 0.1)
    with_neg = info_nce(p, h, 0.1, neg)
    assert with_neg > base  # more negatives can only raise the p→h cross-entropy
    pn, hn, nn_ = F.normalize(p, dim=-1), F.normalize(h, dim=-1), F.normalize(neg, dim=-1)
    logits = pn @ hn.T / 0.1
    ph = F.cross_entropy(torch.cat([logits, pn @ nn_.T / 0.1], 1), torch.arange(4))
    hp = F.cross_entropy(logits.T, torch.arange(4))
    assert with_neg.item() == pytest.approx(0.5 * (ph + hp).item(), rel=1e-6)


def test_info_nce_prefers_aligned_pairs():
    h = torch.eye(4)
    assert info_nce(h, h, 0.1) < info_nce(h.flip(0), h, 0.1)


def test_regularisers():
    p = torch.tensor([[2.0, 0.0]])
    h = torch.tensor([[4.0, 0.0]])
    assert direction_mse(p, h).item() == pytest.approx(0.0)
    assert log_norm_penalty(p, h).item() == pytest.approx(math.log(2) ** 2)


def test_usage_penalty_sign_and_detach():
    inj = torch.tensor(2.0, requires_grad=True)
    abl = torch.tensor(3.0, requires_grad=True)
    # injected loss well below ablated: no penalty
    assert usage_penalty(inj, abl, margin=0.5).item() == 0.0
    # injected loss above ablated: penalised by the difference plus margin
    inj2 = torch.tensor(3.2, requires_grad=True)
    pen = usage_penalty(inj2, abl, margin=0.5)
    assert pen.item() == pytest.approx(0.7)
    pen.backward()
    assert inj2.grad.item() == pytest.approx(1.0)  # pushes the injected loss down
    assert abl.grad is None  # ablated loss is detached


def test_linear_tau_schedule():
    assert linear_tau(0, 11, 0.17, 0.08) == pytest.approx(0.17)
    assert linear_tau(10, 11, 0.17, 0.08) == pytest.approx(0.08)
    assert linear_tau(5, 11, 0.17, 0.08) == pytest.approx(0.125)
    assert linear_tau(50, 11, 0.17, 0.08) == pytest.approx(0.08)


def test_queue_is_fifo_and_wraps():
    q = NegativeQueue(size=3, dim=2)
    q.push(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))
    assert q.filled == 2 and q.ptr == 2
    q.push(torch.tensor([[1.0, 1.0], [-1.0, 0.0]]), torch.tensor([2, 3]))
    assert q.filled == 3 and q.ptr == 1
    # oldest entry (id 0) was overwritten by id 3
    assert q.ids.tolist() == [3, 1, 2]
    assert torch.allclose(q.vectors[0].float(), torch.tensor([-1.0, 0.0]))


def test_queue_topk_by_mean_similarity_and_exclusion():
    q = NegativeQueue(size=8, dim=2)
    vecs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.7, 0.7]])
    q.push(vecs, torch.tensor([10, 11, 12, 13]))
    p = torch.tensor([[1.0, 0.1], [1.0, -0.1]])
    top2 = q.hard_negatives(p, 2)
    assert torch.allclose(top2[0], torch.tensor([1.0, 0.0]), atol=1e-3)
    assert torch.allclose(top2[1], F.normalize(torch.tensor([0.7, 0.7]), dim=0), atol=1e-3)
    top_excl = q.hard_negatives(p, 1, exclude_ids=torch.tensor([10]))
    assert torch.allclose(top_excl[0], F.normalize(torch.tensor([0.7, 0.7]), dim=0), atol=1e-3)


def test_queue_state_round_trip():
    q = NegativeQueue(size=4, dim=3)
    q.push(torch.randn(3, 3), torch.arange(3))
    q2 = NegativeQueue(size=4, dim=3)
    q2.load_state_dict(q.state_dict())
    assert q2.ptr == q.ptr and q2.filled == q.filled
    assert torch.equal(q2.vectors, q.vectors) and torch.equal(q2.ids, q.ids)
    with pytest.raises(ValueError):
        NegativeQueue(size=5, dim=3).load_state_dict(q.state_dict())


def test_lexical_loss_is_low_when_a_slot_sits_on_each_answer_word():
    from llink.method.losses import lexical_loss

    torch.manual_seed(0)
    rows = torch.randn(50, 16)
    targets = torch.zeros(2, 50)
    targets[0, [3, 7]] = 1
    targets[1, [11]] = 1
    on_words = torch.stack([rows[[3, 7, 20]], rows[[11, 30, 40]]])  # [2, 3, 16]
    elsewhere = torch.randn(2, 3, 16)
    good = lexical_loss(on_words, None, rows, targets, scale=20.0)
    bad = lexical_loss(elsewhere, None, rows, targets, scale=20.0)
    assert good < 1.5 < bad
    # a masked-out slot does not count, even when it sits on the word
    mask = torch.tensor([[True, False, True], [True, True, True]])
    assert lexical_loss(on_words, mask, rows, targets, 20.0) > good
    # rows without content words are ignored; the loss has gradients
    slots = elsewhere.clone().requires_grad_(True)
    lexical_loss(slots, None, rows, torch.zeros(2, 50), 20.0).backward()
    assert slots.grad is not None and float(slots.grad.abs().sum()) == 0.0


def test_info_nce_rows_sharing_an_english_are_not_negatives():
    """One English sentence in two languages: with ``ids`` its two rows are not pushed
    apart; the loss equals InfoNCE with those off-diagonal logits removed."""
    torch.manual_seed(0)
    p, h = torch.randn(4, 6), torch.randn(4, 6)
    h[1] = h[0]  # rows 0 and 1: the same English
    ids = torch.tensor([7, 7, 8, 9])
    tau = 0.1
    got = info_nce(p, h, tau, ids=ids)
    logits = F.normalize(p, dim=-1) @ F.normalize(h, dim=-1).T / tau
    logits[0, 1] = logits[1, 0] = float("-inf")
    labels = torch.arange(4)
    want = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    assert torch.allclose(got, want)
    assert got < info_nce(p, h, tau)  # without ids the duplicate is a negative
    # unique ids change nothing
    assert torch.allclose(info_nce(p, h, tau, ids=torch.arange(4)), info_nce(p, h, tau))
