"""How training steps draw their examples: random batches or passes over the data."""

from __future__ import annotations

import pytest
import torch

from llink.train.state import language_groups, pass_indices, step_batch


def test_a_pass_sees_every_example_once_and_crosses_into_the_next_pass():
    n, batch = 50, 8
    draws = [pass_indices(n, batch, seed=3, draw=d) for d in range(13)]  # 104 rows: 2 passes+
    assert all(len(d) == batch for d in draws)
    rows = torch.cat(draws).tolist()
    assert sorted(rows[:n]) == list(range(n))          # first pass: each row once
    assert sorted(rows[n:2 * n]) == list(range(n))     # second pass: each row once again
    assert rows[:n] != rows[n:2 * n]                   # in another order
    # stateless: a resumed run draws the same batch for the same step
    assert pass_indices(n, batch, 3, 6).tolist() == draws[6].tolist()
    assert pass_indices(n, batch, 4, 0).tolist() != draws[0].tolist()


def test_epoch_sampling_counts_micro_steps_and_random_sampling_is_unchanged():
    n = 40
    a = [step_batch("epoch", n, 4, 0, step, micro, 2) for step in range(5) for micro in range(2)]
    assert sorted(torch.cat(a).tolist()) == list(range(n))
    one = step_batch("random", n, 4, 0, step=3, micro=1, grad_accum=2)
    assert one.tolist() == step_batch("random", n, 4, 0, 3, 1, 5).tolist()  # no pass position


def test_epoch_sampling_refuses_language_groups():
    groups = language_groups(["km", "km", "th", "th"], 0.0)
    with pytest.raises(ValueError, match="sampling=random"):
        step_batch("epoch", 4, 2, 0, 0, 0, 1, groups)
