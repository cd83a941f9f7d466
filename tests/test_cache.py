import pytest
import torch

from llink.storage.feature_cache import FeatureStore


def _fake_compute(calls):
    def compute(texts):
        calls.append(list(texts))
        return torch.tensor([[float(len(t)), float(sum(map(ord, t)) % 97)] for t in texts])

    return compute


def test_store_computes_once_and_keeps_order(tmp_path):
    calls = []
    store = FeatureStore(tmp_path, "enc", {"model": "m", "prefix": "query: "})
    out = store.get(["bb", "a", "ccc", "a"], _fake_compute(calls), progress=False)
    assert out[:, 0].tolist() == [2.0, 1.0, 3.0, 1.0]
    assert sum(len(c) for c in calls) == 3  # duplicates computed once
    again = FeatureStore(tmp_path, "enc", {"model": "m", "prefix": "query: "})
    out2 = again.get(["ccc", "bb"], _fake_compute(calls), progress=False)
    assert out2[:, 0].tolist() == [3.0, 2.0]
    assert sum(len(c) for c in calls) == 3  # nothing recomputed from disk


@pytest.mark.parametrize("change", [{"model": "other"}, {"prefix": "passage: "}, {"extra": 1}])
def test_any_settings_change_uses_a_new_store(tmp_path, change):
    calls = []
    base = {"model": "m", "prefix": "query: "}
    FeatureStore(tmp_path, "enc", base).get(["x"], _fake_compute(calls), progress=False)
    other = FeatureStore(tmp_path, "enc", {**base, **change})
    assert "x" not in other
    other.get(["x"], _fake_compute(calls), progress=False)
    assert len(calls) == 2


def test_changed_text_is_recomputed(tmp_path):
    calls = []
    store = FeatureStore(tmp_path, "enc", {"model": "m"})
    store.get(["hello"], _fake_compute(calls), progress=False)
    store.get(["hello!"], _fake_compute(calls), progress=False)
    assert calls == [["hello"], ["hello!"]]


def test_interrupted_build_resumes_from_finished_shards(tmp_path):
    texts = [f"text {i:03d}" + "x" * (i % 5) for i in range(10)]
    calls = []
    inner = _fake_compute(calls)

    def crashing(chunk):
        if len(calls) == 2:
            raise KeyboardInterrupt
        return inner(chunk)

    store = FeatureStore(tmp_path, "enc", {"model": "m"})
    with pytest.raises(KeyboardInterrupt):
        store.get(texts, crashing, chunk_size=3, progress=False)
    done = sum(len(c) for c in calls)
    assert done == 6
    resumed = FeatureStore(tmp_path, "enc", {"model": "m"})
    assert len(resumed) == 6
    out = resumed.get(texts, inner, chunk_size=3, progress=False)
    assert sum(len(c) for c in calls) == 10  # only the 4 missing texts were computed
    expected = torch.tensor([[float(len(t)), float(sum(map(ord, t)) % 97)] for t in texts])
    assert torch.equal(out, expected)
    assert not list(resumed.dir.glob("*.tmp"))
