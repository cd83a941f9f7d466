import pytest
import torch

from llink.eval.retrieval import (
    format_table,
    latin_overlap_metrics,
    latin_tokens,
    metrics_from_ranks,
    ranks_from_scores,
    retrieval_metrics,
)


def test_perfect_and_reversed_retrieval():
    keys = torch.eye(4)
    m = retrieval_metrics(keys * 3, keys)
    assert m == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "MRR": 1.0, "mean_rank": 1.0}
    # query i points at key i-1: one key beats the true one, two tie with it (half each)
    shifted = retrieval_metrics(keys.roll(1, dims=0), keys)
    assert shifted["R@1"] == 0.0 and shifted["mean_rank"] == pytest.approx(3.0)


def test_known_ranks():
    scores = torch.tensor([[0.9, 0.1, 0.2], [0.8, 0.5, 0.1], [0.3, 0.4, 0.2]])
    assert ranks_from_scores(scores).tolist() == [1.0, 2.0, 3.0]
    m = metrics_from_ranks(torch.tensor([1.0, 2.0, 3.0]))
    assert m["R@1"] == pytest.approx(1 / 3)
    assert m["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert m["mean_rank"] == pytest.approx(2.0)


def test_ties_count_half():
    scores = torch.zeros(5, 5)  # all tied: expected rank is the middle
    assert ranks_from_scores(scores).tolist() == [3.0] * 5
    assert metrics_from_ranks(ranks_from_scores(scores))["R@1"] == 0.0


def test_latin_overlap_floor():
    foreign = ["ចុច OK ដើម្បីបិទ", "បើក LibreOffice Writer", "គ្មានអក្សរឡាតាំង"]
    english = ["Click OK to close", "Open LibreOffice Writer", "No Latin letters here"]
    assert latin_tokens(foreign[1]) == {"libreoffice", "writer"}
    m = latin_overlap_metrics(foreign, english)
    # two queries share tokens with their own reference only; the third ties at zero
    assert m["R@1"] == pytest.approx(2 / 3)


def test_format_table():
    text = format_table({"a": {"R@1": 0.5, "R@5": 1, "R@10": 1, "MRR": 0.75, "mean_rank": 1.5}})
    assert "R@1" in text and "0.500" in text and "1.5" in text


def test_grouped_retrieval_ranks_each_query_within_its_own_group():
    """Two languages with the same English keys: pooled together every query ties with
    its twin; ranked within its language each finds its own key first."""
    from llink.eval.retrieval import grouped_retrieval_metrics, retrieval_metrics

    keys = torch.eye(4)
    q = torch.cat([keys, keys]) + 0.01
    k = torch.cat([keys, keys])
    groups = ["km"] * 4 + ["th"] * 4
    assert grouped_retrieval_metrics(q, k, groups)["R@1"] == 1.0
    assert retrieval_metrics(q, k)["R@1"] == 0.0  # a tie with the twin: expected rank 1.5
    assert grouped_retrieval_metrics(q, k, None) == retrieval_metrics(q, k)
