"""The frozen encoder and decoder wrappers, on tiny models built from configs."""

import pytest
import torch

from llink.backbones.decoder import FrozenDecoder, reserved_token_strings
from llink.backbones.encoder import FrozenEncoder, clip_text, mean_pool

KM = ["ខ្ញុំស្រឡាញ់គ្រួសាររបស់ខ្ញុំ។", "បើកម៉ឺនុយឯកសារ។", "ចុចប៊ូតុង OK ។" * 3]


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert mean_pool(hidden, mask).tolist() == [[2.0, 3.0]]


def test_encoder_clips_prefixes_and_is_deterministic(tiny_encoder_dir):
    enc = FrozenEncoder.from_pretrained(str(tiny_encoder_dir), prefix="query: ", max_chars=10)
    assert enc.prepare(["  " + "ក" * 30 + " "]) == ["query: " + "ក" * 10]
    assert clip_text("abc", 0) == "abc"
    a = enc.encode(KM, batch_size=2)
    b = enc.encode(list(reversed(KM)), batch_size=3).flip(0)
    assert a.shape == (3, 32) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # batching and order don't matter
    assert not any(p.requires_grad for p in enc.model.parameters())
    # texts differing only after the clip give the same vector
    long_a, long_b = "ក" * 10 + "ខ", "ក" * 10 + "គ"
    torch.testing.assert_close(enc.encode([long_a]), enc.encode([long_b]))
    settings = enc.cache_settings()
    assert settings["prefix"] == "query: " and settings["max_chars"] == 10


def test_reserved_tokens_added_once_with_deterministic_rows(tiny_decoder_dir):
    a = FrozenDecoder.from_pretrained(str(tiny_decoder_dir), num_slots=4)
    b = FrozenDecoder.from_pretrained(str(tiny_decoder_dir), num_slots=4)
    toks = a.tokenizer.convert_ids_to_tokens(a.reserved.ids)
    assert toks == reserved_token_strings(4)
    assert len(set(a.reserved.ids)) == 7
    torch.testing.assert_close(a.reserved_rows(), b.reserved_rows(), rtol=0, atol=0)
    ids = a.tokenizer("x <f0><f1> y", add_special_tokens=False)["input_ids"]
    assert a.reserved.slots[0] in ids and a.reserved.slots[1] in ids  # never split
    assert a.fingerprint == b.fingerprint  # base weights, before reserved rows


def test_reserved_rows_round_trip_gives_identical_logits(tiny_decoder_dir):
    a = FrozenDecoder.from_pretrained(str(tiny_decoder_dir), num_slots=4)
    with torch.no_grad():
        a.embedding_rows()[a.reserved.ids] += torch.randn(7, a.hidden_size)  # "trained" rows
    saved = a.reserved_rows()
    b = FrozenDecoder.from_pretrained(str(tiny_decoder_dir), num_slots=4)
    b.load_reserved_rows(saved)
    torch.testing.assert_close(b.reserved_rows(), saved, rtol=0, atol=0)
    ids = torch.tensor([[5, *a.reserved.ids, 6]])
    with torch.no_grad():
        torch.testing.assert_close(a.model(ids).logits, b.model(ids).logits, rtol=0, atol=0)
    try:
        b.load_reserved_rows(saved[:3])
    except ValueError as exc:
        assert "4 slots" in str(exc)
    else:
        raise AssertionError("wrong shape accepted")


def test_teacher_states_read_the_foreign_emb_position(tiny_decoder_dir):
    dec = FrozenDecoder.from_pretrained(str(tiny_decoder_dir), num_slots=2)
    texts = ["Open the file menu.", "I love my family very much indeed."]
    states = dec.teacher_states(texts, batch_size=2)
    for i, t in enumerate(texts):
        ids = torch.tensor([dec.teacher_input_ids(t)])
        assert ids[0, -1] == dec.reserved.foreign_emb
        with torch.no_grad():
            ref = dec.model.get_decoder()(input_ids=ids).last_hidden_state[0, -1]
        torch.testing.assert_close(states[i], ref, rtol=1e-4, atol=1e-5)


def test_fingerprint_is_the_same_in_float32_and_bfloat16(tiny_decoder_dir):
    a = FrozenDecoder.from_pretrained(str(tiny_decoder_dir), num_slots=2)
    b = FrozenDecoder.from_pretrained(str(tiny_decoder_dir), num_slots=2, dtype=torch.bfloat16)
    assert a.fingerprint == b.fingerprint
    from transformers import AutoModelForCausalLM

    from llink.backbones.fingerprint import module_fingerprint

    raw = AutoModelForCausalLM.from_pretrained(tiny_decoder_dir)
    assert module_fingerprint(raw) == a.fingerprint
    with torch.no_grad():
        raw.model.layers[0].mlp.up_proj.weight.mul_(1.1)  # a small change to the weights
    assert module_fingerprint(raw) != a.fingerprint


def test_teacher_states_at_a_layer_mean_pooled(tiny_decoder_dir):
    from llink.backbones.decoder import FrozenDecoder

    dec = FrozenDecoder.from_pretrained(str(tiny_decoder_dir), num_slots=2)
    texts = ["I love my family.", "Open the file menu now please."]
    mean1 = dec.teacher_states(texts, batch_size=2, layer=1, pooling="mean")
    # by hand: layer-1 states of the text alone, averaged over its tokens
    for i, t in enumerate(texts):
        ids = torch.tensor([dec.teacher_input_ids(t, "mean")])
        assert dec.reserved.foreign_emb not in ids.tolist()[0]
        hs = dec.model.get_decoder()(input_ids=ids, output_hidden_states=True).hidden_states[1]
        torch.testing.assert_close(mean1[i], hs[0].mean(0), rtol=1e-4, atol=1e-5)
    last = dec.teacher_states(texts, batch_size=1)
    assert not torch.allclose(last, mean1)
    assert dec.teacher_settings(1, "mean") != dec.teacher_settings()


def test_stopping_at_an_inner_layer_gives_the_full_pass_states(tiny_decoder_dir):
    from llink.backbones.decoder import FrozenDecoder

    dec = FrozenDecoder.from_pretrained(str(tiny_decoder_dir), num_slots=2)
    base = dec.model.get_decoder()
    ids = torch.tensor([dec.teacher_input_ids("Open the file menu now.", "mean")] * 2)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    full = base(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for layer in (1, 2, -1):
        got = dec._run_to_layer(base, ids, mask, layer)
        want = full[layer] if layer != -1 else base(input_ids=ids, attention_mask=mask
                                                    ).last_hidden_state
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_teacher_layer_the_decoder_lacks_is_named(tiny_decoder_dir, tmp_path):
    from llink.config import ConfigError
    from llink.storage.cached_features import teacher_vectors

    dec = FrozenDecoder.from_pretrained(str(tiny_decoder_dir), num_slots=4)
    with pytest.raises(ConfigError, match=r"stage_a.teacher_layer=10, but the decoder .* has 2 "
                       r"layers: use 1..2, or -1 for the last"):
        teacher_vectors(dec, ["Hello."], tmp_path, progress=False, layer=10, pooling="mean")
    assert teacher_vectors(dec, ["Hello."], tmp_path, progress=False, layer=2,
                           pooling="mean").shape == (1, 64)


def test_teacher_state_of_a_text_is_the_same_alone_or_batched(tiny_decoder_dir):
    """Cached features must not depend on what a text was batched with (the cache fills in
    whatever order runs ask): bit for bit, not just close."""
    dec = FrozenDecoder.from_pretrained(str(tiny_decoder_dir), num_slots=2)
    texts = ["Open the file menu.", "Click the OK button now please.", "Insert a slide.",
             "Save the document before closing the window.", "Print."]
    together = dec.teacher_states(texts, batch_size=32, layer=1, pooling="mean")
    for i, text in enumerate(texts):
        alone = dec.teacher_states([text], batch_size=32, layer=1, pooling="mean")
        assert torch.equal(alone[0], together[i])


@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_head_gets_a_refolded_last_position_in_half_precision(tiny_decoder_dir, dtype, rows):
    # Generation feeds the head a last-position slice; in bf16 on the CPU torch would copy
    # the whole transposed head weight per call for it (pytorch#151934), so the decoder
    # hands the head fresh strides instead. float32 inputs pass through untouched.
    dec = FrozenDecoder.from_pretrained(str(tiny_decoder_dir), num_slots=2, dtype=dtype)
    head = dec.model.get_output_embeddings()
    seen: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    hidden = torch.randn(rows, 5, dec.hidden_size).to(dtype)
    last = hidden[:, -1:, :]
    with torch.no_grad():
        out = head(last)
        ref = head(last.reshape(rows, dec.hidden_size)).unsqueeze(1)
    handle.remove()
    if dtype == torch.bfloat16:
        assert seen[0] is not last and seen[0].stride(0) == dec.hidden_size
        assert torch.equal(out, ref)  # the same matrix product as a 2-D input
    else:
        assert seen[0] is last
        torch.testing.assert_close(out, ref)
