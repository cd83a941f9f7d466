"""Length grouping: rows of similar length pass together; counts can be raised to match."""

import pytest

from llink.backbones.batching import length_groups, length_sorted_batches


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
