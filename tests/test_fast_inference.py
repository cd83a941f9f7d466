"""Fast inference gives the answers of plain inference: merged LoRA, the prompt template's
KV computed once (prefix cache), slots cached per foreign text in the server.

Tolerance: logits of the fast paths equal the plain ones within 1e-4 (absolute and
relative; float32 on the CPU, where the observed differences are rounding, ~1e-6);
greedy answers are equal.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from llink import LLINK
from llink.backbones.prefix_cache import LRU, PrefixCache, prefixed_batch, shared_length
from llink.cli import build_parser
from llink.inference.api import ChatJob
from llink.inference.backends import LLINKBackend
from llink.method.model import LoRAMergedError, save_llink
from llink.storage.checkpoints import CheckpointError

from .reference import greedy_reference
from .test_stage_b import (  # noqa: F401  (module fixtures: a tiny trained model)
    model,
    model_dir,
    stage_b_probe,
    trained,
)

KM = ["ខ្ញុំស្រឡាញ់គ្រួសាររបស់ខ្ញុំ។", "បើកម៉ឺនុយឯកសារ។", "ចុចប៊ូតុង OK ។",
      "ជ្រើសក្រឡាទាំងអស់នៅក្នុងសន្លឹក។"]
TOL = {"atol": 1e-4, "rtol": 1e-4}


class Recorder(LogitsProcessor):
    """Keeps the scores of every decoding step (after the built-in processors)."""

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.steps.append(scores.detach().clone())
        return scores


def run(fn, *args, **kwargs) -> tuple[list[str], list[torch.Tensor]]:
    """Answers of a generate function and the logits of each of its decoding steps."""
    rec = Recorder()
    out = fn(*args, logits_processor=LogitsProcessorList([rec]), **kwargs)
    return out, rec.steps


def assert_same(a: tuple[list[str], list[torch.Tensor]], b: tuple[list[str], list[torch.Tensor]]
                ) -> None:
    assert a[0] == b[0]
    assert len(a[1]) == len(b[1])
    for x, y in zip(a[1], b[1], strict=True):
        finite = torch.isfinite(x)
        assert torch.equal(finite, torch.isfinite(y))  # the same tokens suppressed
        torch.testing.assert_close(x[finite], y[finite], **TOL)


@pytest.fixture(scope="module")
def merged(model_dir, trained):
    return LLINK.from_pretrained(str(model_dir), encoder=trained[1].encoder, merge_lora=True)


# --------------------------------------------------------------------------- pieces
def test_shared_length_keeps_one_token_of_each_prompt():
    assert shared_length([1, 2, 3], [[1, 2, 3, 4], [1, 2, 5, 6]]) == 2
    assert shared_length([1, 2, 3], [[1, 2, 3, 4], [1, 2, 3, 9, 9]]) == 3
    assert shared_length([1, 2, 3], [[1, 2, 3]]) == 2  # the last token is prefilled anew
    assert shared_length([1, 2], [[7, 1, 2]]) == 0
    assert shared_length([], [[1, 2]]) == 0


def test_prefixed_batch_pads_between_prefix_and_own_tokens():
    ids, mask = prefixed_batch([[1, 2, 3], [1, 2, 4, 5, 6]], 2, pad_id=0)
    assert ids.tolist() == [[1, 2, 0, 0, 3], [1, 2, 4, 5, 6]]
    assert mask.tolist() == [[1, 1, 0, 0, 1], [1, 1, 1, 1, 1]]
    # positions counted from the mask (as generate does) are those of the unpadded prompt
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    assert pos[0, -1] == 2 and pos[1].tolist() == [0, 1, 2, 3, 4]


def test_lru_drops_the_least_recently_used_and_counts():
    lru: LRU[str, int] = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # a is now the most recent
    lru.put("c", 3)
    assert lru.get("b") is None and lru.get("a") == 1 and lru.get("c") == 3
    assert lru.stats() == {"entries": 2, "max_entries": 2, "hits": 3, "misses": 1}


def test_prefix_cache_hands_out_copies():
    cache = PrefixCache(2)
    calls = []

    def compute():
        from transformers import DynamicCache

        calls.append(1)
        kv = DynamicCache()
        kv.update(torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4), 0)
        return kv

    a = cache.copy_for("k", 3, compute)
    a.update(torch.zeros(3, 2, 1, 4), torch.zeros(3, 2, 1, 4), 0)  # generate extends a copy
    b = cache.copy_for("k", 1, compute)
    assert len(calls) == 1
    assert a.get_seq_length() == 4 and b.get_seq_length() == 3
    assert cache.stats()["hits"] == 1


# --------------------------------------------------------------------------- prefix cache
def _both(model: LLINK, fn_name: str, *args, **kwargs):
    """(without, with) the prefix cache: answers and per-step logits; the cache's stats."""
    fn = getattr(model, fn_name)
    model.prefix_cache = None
    plain = run(fn, *args, **kwargs)
    model.use_prefix_cache()
    cached = run(fn, *args, **kwargs)
    again = run(fn, *args, **kwargs)
    stats = model.prefix_cache.stats()
    model.prefix_cache = None
    assert_same(cached, again)
    return plain, cached, stats


@pytest.mark.parametrize("fn_name,kwargs", [
    ("generate", {}),
    ("generate", {"task": "ask", "question": "Who is it?"}),
    ("generate", {"ablate": True}),
    ("generate_base", {}),  # raw text: prompts of different lengths share the template
])
def test_prefix_cache_gives_the_answers_and_logits_of_plain_generation(model, fn_name, kwargs):
    plain, cached, stats = _both(model, fn_name, KM, max_new_tokens=6, **kwargs)
    assert_same(plain, cached)
    assert stats["misses"] == 1 and stats["hits"] == 1  # computed once, then reused


def test_prefix_cache_with_literals_and_one_at_a_time(model, monkeypatch):
    """Literals make slot prompts differ in length after the shared template."""
    monkeypatch.setattr(model, "literals", True)
    assert model.literals_of(KM[2]) == ["OK"]
    plain, cached, _ = _both(model, "generate", KM, max_new_tokens=6)
    assert_same(plain, cached)
    model.use_prefix_cache()
    single = [model.generate([t], max_new_tokens=6)[0] for t in KM]
    model.prefix_cache = None
    assert single == plain[0]


def test_prefix_cache_matches_the_hand_written_reference(model):
    model.use_prefix_cache()
    try:
        got = model.generate_base(KM, max_new_tokens=5)
    finally:
        model.prefix_cache = None
    with model.adapters_disabled():
        prompts = [model.prompt_ids("translate_to_english", foreign_text=t) for t in KM]
        assert got == greedy_reference(model, prompts, max_new_tokens=5)


def test_prefix_cache_keys_the_adapter_state_and_is_cleared_by_training(model):
    plain_base = run(model.generate_base, KM, max_new_tokens=6)
    model.use_prefix_cache()
    try:
        model.generate(KM, max_new_tokens=2)  # the template's KV with LoRA
        assert_same(plain_base, run(model.generate_base, KM, max_new_tokens=6))
        assert model.prefix_cache.stats()["entries"] == 2  # with LoRA and without
        model.train()
        assert model.prefix_cache.stats()["entries"] == 0
    finally:
        model.eval()
        model.prefix_cache = None


# --------------------------------------------------------------------------- merged LoRA
def test_merged_lora_gives_the_answers_and_logits_of_the_adapters(model, merged):
    assert merged.lora_merged and not merged.has_lora and model.has_lora
    assert_same(run(model.generate, KM, max_new_tokens=6), run(merged.generate, KM,
                                                                 max_new_tokens=6))
    # the LoRA is not a no-op on this model, so the comparison above has something to check
    ids = torch.tensor([model.prompt_ids("translate_to_english")])
    slots = model.foreign_slots(KM[:1])
    with torch.no_grad():
        lora = merged.lm(inputs_embeds=merged.embed(ids, slots)).logits
        with model.adapters_disabled():
            base = model.lm(inputs_embeds=model.embed(ids, slots)).logits
    assert (lora - base).abs().max() > 1e-3


def test_merged_model_refuses_the_base_decoder_and_saving(merged, tmp_path):
    with pytest.raises(LoRAMergedError, match="merged"):
        merged.generate_base(KM[:1], max_new_tokens=2)
    with pytest.raises(CheckpointError, match="merged"):
        save_llink(tmp_path / "m", merged, merged.meta)
    merged.generate(KM[:1], ablate=True, max_new_tokens=2)  # slot ablation still works


def test_merged_and_prefix_cached_together(model, merged):
    merged.use_prefix_cache()
    try:
        fast = run(merged.generate, KM, max_new_tokens=6)
    finally:
        merged.prefix_cache = None
    assert_same(run(model.generate, KM, max_new_tokens=6), fast)


def test_infer_runs_merged_and_compare_unmerged_with_the_same_answers(model_dir, capsys,
                                                                       monkeypatch):
    import json

    from llink.cli import main
    from llink.method.model import PromptedDecoder

    merges: list[bool] = []
    real = PromptedDecoder.merge_lora
    monkeypatch.setattr(PromptedDecoder, "merge_lora",
                        lambda self: merges.append(True) or real(self))

    def answers(*extra: str) -> list[str]:
        assert main(["infer", "--model", str(model_dir), "--max-new-tokens", "5", "--json",
                     *extra, *KM]) == 0
        return [json.loads(line)["injected"] for line in capsys.readouterr().out.splitlines()]

    fast = answers()
    assert merges == [True]
    assert answers("--compare") == fast and merges == [True]  # --compare: adapters kept


# --------------------------------------------------------------------------- slot cache
def _job(text: str, question: str | None = None) -> ChatJob:
    return ChatJob((("user", text),), 6, text, "ask" if question else "translate_to_english",
                   question=question)


def _answer(backend: LLINKBackend, jobs: list[ChatJob]) -> list[str]:
    return [c.text for c in backend.generate(jobs, [backend.prepare(j) for j in jobs])]


def test_slot_cache_is_hit_by_follow_up_questions_and_changes_no_answer(merged, monkeypatch):
    backend = LLINKBackend(merged, "tiny", slot_cache_size=2)
    try:
        reads: list[list[str]] = []
        real_read = merged.read
        monkeypatch.setattr(merged, "read", lambda texts: reads.append(list(texts))
                            or real_read(texts))
        first = _answer(backend, [_job(KM[0]), _job(KM[1], "What is it?")])
        follow = _answer(backend, [_job(KM[1], "What is it?"), _job(KM[0], "Who?")])
        assert reads == [KM[:2]]  # the follow-ups did not reach the encoder
        assert backend.slot_cache.stats()["hits"] == 2
        assert follow[0] == first[1]
        assert follow[1] == merged.generate([KM[0]], task="ask", question="Who?",
                                            max_new_tokens=6)[0]
        _answer(backend, [_job(KM[2])])  # a third text: the least recently used goes
        assert reads[-1] == [KM[2]] and backend.slot_cache.stats()["entries"] == 2
        assert backend.describe()["slot_cache"]["entries"] == 2
        assert backend.describe()["lora"] == "merged"
    finally:
        merged.prefix_cache = None


def test_slot_cache_off_reads_every_text_and_gives_the_same_answers(merged, monkeypatch):
    backend = LLINKBackend(merged, "tiny", slot_cache_size=0)  # llink serve --slot-cache 0
    try:
        reads: list[list[str]] = []
        real_read = merged.read
        monkeypatch.setattr(merged, "read", lambda texts: reads.append(list(texts))
                            or real_read(texts))
        first = _answer(backend, [_job(KM[0])])
        again = _answer(backend, [_job(KM[0])])
        assert reads == [[KM[0]], [KM[0]]] and again == first
        assert backend.slot_cache.stats() == {"entries": 0, "max_entries": 0, "hits": 0,
                                              "misses": 0}
    finally:
        merged.prefix_cache = None
    with pytest.raises(ValueError, match="0 \\(off\\) or positive"):
        LLINKBackend(merged, "tiny", slot_cache_size=-1)
    assert build_parser().parse_args(["serve", "--model", "m", "--slot-cache", "0"]).slot_cache == 0



def test_served_answers_carry_the_literal_bias_of_llink_generate(merged):
    texts = [KM[2], KM[0]]  # "... OK ។" has a literal, the other none
    biased = LLINKBackend(merged, "tiny", slot_cache_size=0, literal_bias=50.0)
    plain = LLINKBackend(merged, "tiny", slot_cache_size=0, literal_bias=0.0)
    try:
        got = _answer(biased, [_job(t) for t in texts])
        assert got == merged.generate(texts, max_new_tokens=6, literal_bias=50.0)
        assert "OK" in got[0]
        assert _answer(plain, [_job(t) for t in texts]) == merged.generate(texts,
                                                                         max_new_tokens=6)
    finally:
        merged.prefix_cache = None
    args = build_parser().parse_args(["serve", "--model", "m"])
    assert args.literal_bias == 4.0

# --------------------------------------------------------------------------- benchmark
def test_ttft_benchmark_quick_run(model_dir, tmp_path, monkeypatch):
    """benchmarks.ttft --quick on the tiny model: it runs, writes its files, and its
    untimed checks agree (timings are not asserted)."""
    from benchmarks import ttft

    monkeypatch.setattr("benchmarks.common.RESULTS", tmp_path)
    res = ttft.run(str(model_dir), quick=True)
    assert {p.name for p in (tmp_path / "quick").iterdir()} >= {"ttft.json", "ttft.md"}
    assert res["sample"]["sentences"] == 4 and len(res["ttft_per_sentence"]) == 4
    for name, (agree, n) in res["checks"].items():
        assert agree == n > 0, name
    assert res["prefix_cache"]["llink"]["hits"] > 0 and res["prefix_cache"]["base"]["hits"] > 0
    assert [r["figure"] for r in ttft.headline(res)][1].startswith("sentences/s at batch 2")
    assert "TTFT base ÷ LLINK, both prefix-cached" in (tmp_path / "quick" / "ttft.md").read_text()
