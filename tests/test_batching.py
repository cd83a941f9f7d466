"""Length grouping: rows of similar length pass together; counts can be raised to match;
fixed-shape batches (one shape per length) for batch-independent features."""

import pytest

from llink.backbones.batching import fixed_shape_batches, length_groups, length_sorted_batches


def test_length_groups_keep_similar_lengths_together():
    lengths = [30, 10, 12, 31, 50, 14, 15]
    groups = length_groups(lengths)
    assert groups == [[1, 2, 5], [6], [0, 3], [4]]  # each within 4 tokens of its shortest
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))


def test_length_groups_split_the_largest_until_min_groups():
    lengths = [10, 11, 12, 13, 40]
    assert length_groups(lengths) == [[0, 1, 2, 3], [4]]
    assert length_groups(lengths, min_groups=3) == [[0, 1], [2, 3], [4]]
    assert len(length_groups(lengths, min_groups=5)) == 5
    with pytest.raises(ValueError, match="cannot make 6 groups"):
        length_groups(lengths, min_groups=6)


def test_length_sorted_batches_longest_first():
    assert list(length_sorted_batches([3, 9, 5], 2)) == [[1, 2], [0]]


def test_fixed_shape_batches_one_length_and_a_shape_set_by_it():
    lengths = [5, 40, 5, 7, 5, 40, 200, 5, 5]
    batches = list(fixed_shape_batches(lengths, max_rows=4, tokens=80))
    assert batches == [[6], [1, 5], [3, 3, 3, 3], [0, 2, 4, 7], [8, 8, 8, 8]]
    for b in batches:
        (length,) = {lengths[i] for i in b}  # never two lengths, so never padding
        assert len(b) == max(1, min(4, 80 // length))  # rows: a function of the length
    assert sorted({i for b in batches for i in b}) == list(range(len(lengths)))
    # the same item lands in a batch of the same shape whatever the other items are
    alone = list(fixed_shape_batches([5], max_rows=4, tokens=80))
    assert alone == [[0, 0, 0, 0]]
    with pytest.raises(ValueError):
        list(fixed_shape_batches(lengths, max_rows=0))
