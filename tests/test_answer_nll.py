"""The answer NLL every figure rests on, against Hugging Face's own ``labels=`` loss.

Hugging Face shifts the labels by one and averages the cross-entropy over the tokens
whose label is not -100: :meth:`PromptedDecoder.answer_nll` must give exactly that,
per example and per batch, with right and left padding, with slots injected, and
without the LoRA adapters when asked to.
"""

import pytest
import torch

from llink.backbones.decoder import FrozenDecoder
from llink.method.inject import IGNORE_INDEX, PromptFormat, build_example, collate, slot_span
from llink.method.model import PromptedDecoder

ANSWERS = ["I love my family.", "Open the file menu, then save the document before closing.",
           "OK"]


@pytest.fixture(scope="module")
def decoder(tiny_decoder_dir):
    dec = FrozenDecoder.from_pretrained(str(tiny_decoder_dir), num_slots=2)
    with torch.no_grad():  # sharpen the output so that a token off by one costs a lot
        dec.model.get_decoder().norm.weight.mul_(30.0)
    return PromptedDecoder(dec, PromptFormat())


def _examples(model, with_slots=False):
    out = []
    for i, answer in enumerate(ANSWERS):
        user = f"Translate: {slot_span(2) if with_slots else 'x' * (3 * i + 1)}"
        out.append(build_example(model.tokenizer, model.fmt, user, answer))
    return out


def _hf_loss(model, ids, mask, labels, embeds=None):
    with torch.no_grad():
        if embeds is None:
            return model.lm(input_ids=ids, attention_mask=mask, labels=labels).loss
        return model.lm(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss


@pytest.mark.parametrize("side", ["right", "left"])
def test_answer_nll_is_hugging_faces_labels_loss(decoder, side):
    ex = _examples(decoder)
    b = collate(ex, int(decoder.tokenizer.pad_token_id), side=side)
    assert b["input_ids"].shape[1] > min(len(e.input_ids) for e in ex)  # some rows are padded
    with torch.no_grad():
        nll = decoder.answer_nll(b["input_ids"], b["attention_mask"], b["labels"])
    answer_tokens = [sum(x != IGNORE_INDEX for x in e.labels) for e in ex]
    assert nll.tokens.tolist() == answer_tokens  # every answer token, the closing EOS included
    # the whole batch: the mean over its answer tokens
    ref = _hf_loss(decoder, b["input_ids"], b["attention_mask"], b["labels"])
    torch.testing.assert_close(nll.per_token(), ref, rtol=1e-5, atol=1e-5)
    # each example: the loss of its own unpadded row
    for r, e in enumerate(ex):
        ids, labels = torch.tensor([e.input_ids]), torch.tensor([e.labels])
        one = _hf_loss(decoder, ids, torch.ones_like(ids), labels)
        torch.testing.assert_close(nll.per_example()[r], one, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(nll.total[r], one * answer_tokens[r], rtol=1e-4, atol=1e-4)
    # sharpened, the check can tell: the labels one token late give another loss
    late = torch.full_like(b["labels"], IGNORE_INDEX)
    late[:, 1:] = b["labels"][:, :-1]
    off = _hf_loss(decoder, b["input_ids"], b["attention_mask"], late)
    assert abs(float(off - ref)) > 0.5


def test_answer_nll_with_slots_is_the_loss_of_the_injected_embeddings(decoder):
    ex = _examples(decoder, with_slots=True)
    b = collate(ex, int(decoder.tokenizer.pad_token_id))
    torch.manual_seed(0)
    slots = torch.randn(len(ex), 2, decoder.decoder.hidden_size)
    with torch.no_grad():
        nll = decoder.answer_nll(b["input_ids"], b["attention_mask"], b["labels"], slots)
        ablated = decoder.answer_nll(b["input_ids"], b["attention_mask"], b["labels"])
        embeds = decoder.lm.get_input_embeddings()(b["input_ids"]).clone()
    for r in range(len(ex)):  # the slots written by hand at the placeholder positions
        for k, sid in enumerate(decoder.slot_ids):
            embeds[r, (b["input_ids"][r] == sid).nonzero().item()] = slots[r, k]
    ref = _hf_loss(decoder, b["input_ids"], b["attention_mask"], b["labels"], embeds)
    torch.testing.assert_close(nll.per_token(), ref, rtol=1e-5, atol=1e-5)
    # no slots: the placeholder tokens' own rows, i.e. the plain token ids
    plain = _hf_loss(decoder, b["input_ids"], b["attention_mask"], b["labels"])
    torch.testing.assert_close(ablated.per_token(), plain, rtol=1e-5, atol=1e-5)
    assert abs(float(nll.per_token() - ablated.per_token())) > 1e-3


def _pristine_loss(tiny_decoder_dir, ids, mask, labels):
    """The decoder as shipped: no reserved tokens, no adapters, Hugging Face's loss."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(str(tiny_decoder_dir)).eval()
    with torch.no_grad():
        return lm(input_ids=ids, attention_mask=mask, labels=labels).loss


def test_base_answer_nll_runs_without_the_adapters(tiny_decoder_dir):
    dec = FrozenDecoder.from_pretrained(str(tiny_decoder_dir), num_slots=2)
    model = PromptedDecoder(dec, PromptFormat())
    b = collate(_examples(model), int(model.tokenizer.pad_token_id))
    args = (b["input_ids"], b["attention_mask"], b["labels"])
    with torch.no_grad():
        model.add_lora(4, 4, 0.0, ["q_proj", "v_proj"])
        for n, p in model.lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # adapters that change the output
        model.eval()
        with_lora = model.answer_nll(*args).per_token()
        base = model.answer_nll(*args, base=True).per_token()
    torch.testing.assert_close(base, _pristine_loss(tiny_decoder_dir, *args),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(with_lora, _hf_loss(model, *args), rtol=1e-5, atol=1e-5)
    assert abs(float(with_lora - base)) > 1e-3


def test_base_answer_nll_is_the_shipped_decoders_whatever_k_and_reserved_rows(
        tiny_decoder_dir):
    """The base column must not move with K or with what training did to the reserved
    rows: with tied embeddings those rows are output rows too, and trained ones can take
    probability mass from the answer (a K = 4 and a K = 8 run once gave different "base"
    figures on the same items)."""
    figures = []
    for k in (2, 6):
        dec = FrozenDecoder.from_pretrained(str(tiny_decoder_dir), num_slots=k)
        model = PromptedDecoder(dec, PromptFormat()).eval()
        b = collate(_examples(model), int(model.tokenizer.pad_token_id))
        args = (b["input_ids"], b["attention_mask"], b["labels"])
        with torch.no_grad():
            # rows as training might leave them: large, and aligned with the final states
            hidden = model._backbone()(input_ids=b["input_ids"]).last_hidden_state
            direction = hidden.mean((0, 1))
            rows = dec.embedding_rows()
            rows[list(dec.reserved.ids)] = 5.0 * direction / direction.norm()
            full = _hf_loss(model, *args)  # the reserved rows now take mass: a leak
            figures.append(model.answer_nll(*args, base=True).per_token())
        pristine = _pristine_loss(tiny_decoder_dir, *args)
        assert float(full - pristine) > 1e-3, "the leak this test guards against is not set up"
        torch.testing.assert_close(figures[-1], pristine, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(figures[0], figures[1], rtol=1e-5, atol=1e-5)
