"""Slots that read the encoder's token states: resampler, one slot per token, cache, Stage B."""

import pytest
import torch

from llink.method.bridge import TokenProjector, TokenResampler, build_token_reader, pad_states
from llink.method.model import load_llink
from llink.storage.feature_cache import FeatureStore
from llink.workflows import Session, run_stage_a, run_stage_b

from .test_stage_a import make_pair_file
from .test_stage_b import _b_cfg


def test_resampler_shapes_and_padding_never_changes_the_slots():
    torch.manual_seed(0)
    res = TokenResampler(d_enc=12, d=16, num_slots=3, target_norm=2.0, layers=2, heads=4)
    torch.nn.init.normal_(res.out.weight, std=0.3)  # trained-like: tokens do change the slots
    pooled = torch.nn.functional.normalize(torch.randn(2, 3, 16), dim=-1) * 2.0
    a, b = torch.randn(5, 12), torch.randn(2, 12)
    states, mask = pad_states([a, b])
    assert states.shape == (2, 5, 12) and mask.sum(1).tolist() == [5, 2]
    out = res(pooled, states, mask)
    assert out.shape == (2, 3, 16)
    # more padding, and garbage in the padded rows: same slots
    wide, wmask = pad_states([a, b])
    wide = torch.cat([wide, torch.randn(2, 4, 12) * 100], 1)
    wmask = torch.cat([wmask, torch.zeros(2, 4, dtype=torch.bool)], 1)
    torch.testing.assert_close(res(pooled, wide, wmask), out)
    # alone in its batch: same slots as in a padded batch
    torch.testing.assert_close(res(pooled[1:], *pad_states([b]))[0], out[1])
    # the token states do matter
    assert not torch.allclose(res(pooled, states.flip(0), mask.flip(0)), out)


def test_resampler_starts_as_the_pooled_slots():
    res = TokenResampler(d_enc=8, d=16, num_slots=4, target_norm=3.0)
    pooled = torch.nn.LayerNorm(16, elementwise_affine=False)(torch.randn(2, 4, 16))
    pooled = pooled * (3.0 / 16**0.5)
    out = res(pooled, *pad_states([torch.randn(3, 8), torch.randn(6, 8)]))
    torch.testing.assert_close(out, pooled, rtol=1e-4, atol=1e-4)


def test_token_projector_gives_one_slot_per_token_and_zero_padding():
    proj = TokenProjector(d_enc=8, d=16, target_norm=3.0)
    states, mask = pad_states([torch.randn(4, 8), torch.randn(2, 8)])
    out = proj(states, mask)
    assert out.shape == (2, 4, 16)
    assert torch.all(out[1, 2:] == 0)
    torch.testing.assert_close(out[0].norm(dim=-1), torch.full((4,), 3.0), rtol=1e-3, atol=1e-3)
    assert isinstance(build_token_reader("all_tokens", 8, 16, 32), TokenProjector)
    assert build_token_reader("pooled", 8, 16, 32) is None
    with pytest.raises(ValueError, match="unknown slot source"):
        build_token_reader("words", 8, 16, 32)


def test_token_states_cache_round_trip(tmp_path):
    calls = []

    def compute(texts):
        calls.append(list(texts))
        return [torch.arange(len(t) * 3, dtype=torch.float32).view(len(t), 3) / 7 for t in texts]

    store = FeatureStore(tmp_path, "tok", {"m": 1}, ragged=True)
    out = store.get(["abc", "a", "abcdef", "a"], compute, progress=False)
    assert [tuple(x.shape) for x in out] == [(3, 3), (1, 3), (6, 3), (1, 3)]
    assert all(x.dtype == torch.float16 for x in out)
    again = FeatureStore(tmp_path, "tok", {"m": 1}, ragged=True).get(["abcdef", "abc"], compute,
                                                                    progress=False)
    assert len(calls) == 1  # read back from disk
    ref = compute(["abcdef", "abc"])
    for x, y in zip(again, ref, strict=True):
        torch.testing.assert_close(x.float(), y, rtol=1e-3, atol=1e-3)
    # a ragged store never shares a folder with a fixed-width one of the same settings
    assert FeatureStore(tmp_path, "tok", {"m": 1}).dir != store.dir


@pytest.mark.parametrize("source, per_token", [("tokens", 0.0), ("tokens", 0.5),
                                               ("all_tokens", 0.0)])
def test_stage_b_with_token_slots_trains_and_round_trips(tmp_path, tiny_encoder_dir,
                                                        tiny_decoder_dir, source, per_token):
    slots = 4 if source == "tokens" else 12
    cfg = _b_cfg(tmp_path, tiny_encoder_dir, tiny_decoder_dir, make_pair_file(tmp_path),
                 **{"model.slot_source": source, "model.num_slots": slots, "model.token_layer": 1,
                    "model.slots_per_token": per_token,
                    "model.resampler_layers": 1, "stage_b.steps": 4,
                    "stage_b.bridge_warmup_steps": 2, "stage_b.eval_every": 4})
    session = Session(cfg, progress=False)
    run_stage_a(session)
    summary = run_stage_b(session)
    assert summary["dev_final"]["nll_injected"] > 0
    model = load_llink(tmp_path / "run" / "stage_b", encoder=session.encoder)
    assert model.slot_source == source
    foreign = ["ខ្ញុំស្រឡាញ់គ្រួសាររបស់ខ្ញុំ។", "បើកម៉ឺនុយឯកសារ។ " * 3]
    tokens = model.encode_tokens(foreign)
    counts = model.slot_counts(tokens)
    if source == "all_tokens":
        assert counts == [min(len(t), slots) for t in tokens] and counts[0] < counts[1]
    elif per_token:
        assert counts == [min(slots, -(-len(t) // 2)) for t in tokens] and counts[0] < slots
    else:
        assert counts is None
    s = model.slots(model.encode(foreign), tokens=tokens)
    assert s.shape == (2, slots, model.decoder.hidden_size)
    again = load_llink(tmp_path / "run" / "stage_b", encoder=session.encoder)
    torch.testing.assert_close(again.foreign_slots(foreign), model.foreign_slots(foreign))
    outs = model.generate(foreign, max_new_tokens=3)
    assert len(outs) == 2
    with pytest.raises(ValueError, match="token states"):
        model.slots(model.encode(foreign))
    # served as llink serve serves it (prefix cache, slots cached per text with their
    # counts): the answers of generate, the second time without the encoder
    from llink.inference.api import ChatJob
    from llink.inference.backends import LLINKBackend

    backend = LLINKBackend(again, "tiny")
    jobs = [ChatJob((("user", t),), 3, t) for t in foreign]
    for _ in range(2):
        done = backend.generate(jobs, [backend.prepare(j) for j in jobs])
        assert [c.text for c in done] == outs
    assert backend.slot_cache.stats()["hits"] == 2
    k = counts or [slots, slots]
    assert [c.prompt_tokens for c in done] == [
        len(model.prompt_ids("translate_to_english", num_slots=n)) for n in k]


def test_lexical_warmup_moves_the_slots_towards_the_answer_words(tmp_path, tiny_encoder_dir,
                                                                tiny_decoder_dir):
    from llink.method.projection import load_stage_a
    from llink.train.stage_b import _lexical_term, content_token_mask, lexical_warmup
    from llink.workflows import _stage_b_data, build_llink, stage_b_items

    cfg = _b_cfg(tmp_path, tiny_encoder_dir, tiny_decoder_dir, make_pair_file(tmp_path),
                 **{"model.slot_source": "tokens", "model.resampler_layers": 1, "model.token_layer": 1,
                    "stage_b.lexical_steps": 40, "stage_b.lexical_batch": 16,
                    "stage_b.lr_reader": 3e-3})
    session = Session(cfg, progress=False)
    run_stage_a(session)
    model = build_llink(session, load_stage_a(tmp_path / "run" / "stage_a"))
    data = _stage_b_data(session, model, stage_b_items(session, "train"))
    vocab = model.lm.get_output_embeddings().weight.shape[0]
    content = content_token_mask(model.tokenizer, vocab)
    from llink.method.inject import collate

    labels = collate(data.examples, 0)["labels"]
    idx = torch.arange(len(data.examples))

    def loss() -> float:
        with torch.no_grad():
            slots = model.slots(data.enc, tokens=data.token_rows(idx))
            return float(_lexical_term(model, cfg.stage_b, slots, labels, content, vocab,
                                       data.token_rows(idx)))

    before = loss()
    model.train()
    lexical_warmup(model, cfg.stage_b, data, content, vocab, seed=0, log=None, progress=False)
    assert loss() < 0.9 * before
