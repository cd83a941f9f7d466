import pytest
import torch
from transformers import AutoTokenizer

from llink.backbones.decoder import add_reserved_tokens, reserved_token_strings
from llink.method.inject import (
    IGNORE_INDEX,
    TASKS,
    PromptFormat,
    UnknownTaskError,
    build_example,
    collate,
    inject_slots,
    instruction_text,
    pad_batch,
    slot_positions,
    slot_span,
)


def test_slot_span_and_instruction():
    assert slot_span(3) == "<foreign><f0><f1><f2></foreign>"
    text = instruction_text("translate_to_english", slot_span(2), strict=True)
    assert text.startswith("Instruction: Translate the foreign text to English.")
    assert "Foreign: <foreign><f0><f1></foreign>" in text
    assert text.endswith("Output ONLY the translation; do not explain or describe.")
    assert "Question: why?" in instruction_text("ask", "x", question="why?")
    with pytest.raises(UnknownTaskError, match="translate_to_english"):
        instruction_text("translate", "x")
    assert len(TASKS) == 8


@pytest.mark.parametrize("strict", [False, True])
def test_foreign_last_moves_only_the_foreign_span_and_its_literals(strict):
    args = ("translate_to_english", slot_span(2), strict, None, ["30 MW"])
    usual, last = instruction_text(*args).split("\n"), instruction_text(*args, True).split("\n")
    assert sorted(usual) == sorted(last)
    assert last[-2:] == ["Foreign: <foreign><f0><f1></foreign>", "Literals: 30 MW"]
    assert usual[1:3] == last[-2:] and usual[0] == last[0]
    assert PromptFormat(foreign_last=True).user_text(*args) == "\n".join(last)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_inject_slots_writes_exactly_the_slot_positions(side, k):
    slot_ids = list(range(100, 100 + k))
    rows = [[1, 2, *slot_ids, 3], [4, *slot_ids, 5, 6, 7, 8], [*slot_ids]]
    ids, mask = pad_batch(rows, pad_id=0, side=side)
    emb = torch.randn(ids.shape[0], ids.shape[1], 6)
    slots = torch.randn(3, k, 6, requires_grad=True)
    out = inject_slots(emb, ids, slot_ids, slots)
    pos, present = slot_positions(ids, slot_ids)
    assert bool(present.all())
    for b in range(3):
        for j in range(k):
            p = int(pos[b, j])
            assert ids[b, p] == slot_ids[j]
            assert torch.equal(out[b, p], slots[b, j].detach())
        others = [t for t in range(ids.shape[1]) if t not in pos[b].tolist()]
        assert torch.equal(out[b, others], emb[b, others])
    out.sum().backward()
    assert torch.equal(slots.grad, torch.ones_like(slots))


def test_inject_rejects_missing_or_repeated_slots():
    ids = torch.tensor([[1, 100, 2], [100, 100, 101]])
    with pytest.raises(ValueError, match="2 times.*exactly once"):
        slot_positions(ids, [100, 101])
    with pytest.raises(ValueError, match="skips a slot"):
        slot_positions(torch.tensor([[1, 101, 2]]), [100, 101])
    with pytest.raises(ValueError, match="no slot placeholder"):
        slot_positions(torch.tensor([[1, 2, 3]]), [100, 101])
    with pytest.raises(ValueError, match="do not fit"):
        inject_slots(torch.zeros(2, 3, 4), ids, [100], torch.zeros(2, 2, 4))


def test_rows_with_fewer_slots_take_their_first_slots_only():
    slot_ids = [100, 101, 102, 103]
    ids, _ = pad_batch([[1, 100, 101, 102, 103, 2], [1, 100, 2], [5, 100, 101, 6]], 0, "left")
    emb = torch.randn(*ids.shape, 5)
    slots = torch.randn(3, 4, 5, requires_grad=True)
    out = inject_slots(emb, ids, slot_ids, slots)
    pos, present = slot_positions(ids, slot_ids)
    assert present.sum(1).tolist() == [4, 1, 2]
    for b in range(3):
        written = pos[b][present[b]].tolist()
        for j, p in enumerate(written):
            assert torch.equal(out[b, p], slots[b, j].detach())
        others = [t for t in range(ids.shape[1]) if t not in written]
        assert torch.equal(out[b, others], emb[b, others])
    out.sum().backward()
    assert torch.equal(slots.grad, present.float().unsqueeze(-1).expand_as(slots))


def test_prompt_format_and_labels_on_tiny_decoder(tiny_decoder_dir):
    from transformers import AutoModelForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_decoder_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_decoder_dir)
    reserved = add_reserved_tokens(tok, model, num_slots=4)
    assert tok.convert_ids_to_tokens(reserved.ids) == reserved_token_strings(4)
    for fmt in (PromptFormat(True), PromptFormat(False)):
        user = instruction_text("translate_to_english", slot_span(4))
        ex = build_example(tok, fmt, user, "I love my family.", max_answer_tokens=64)
        n_prompt = sum(1 for x in ex.labels if x == IGNORE_INDEX)
        answer = tok.decode(ex.input_ids[n_prompt:], skip_special_tokens=True)
        assert answer.strip() == "I love my family."
        assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:]
        assert ex.input_ids[-1] == tok.eos_token_id
        pos, _ = slot_positions(torch.tensor([ex.input_ids]), reserved.slots)
        assert pos[0].tolist() == sorted(pos[0].tolist())  # slots in order, once each
    chat = PromptFormat(True).prompt(tok, "hi")
    assert chat.startswith("<|im_start|>user") and chat.endswith("<|im_start|>assistant\n")
    assert PromptFormat(False).prompt(tok, "hi") == "User: hi\nAssistant:"
    # an explicit system prompt (even empty) replaces the template's own system turn
    assert PromptFormat(True, "").prompt(tok, "hi") == "<|im_start|>system\n<|im_end|>\n" + chat
    assert PromptFormat(True, "Be brief.").prompt(tok, "hi").startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user")
    assert PromptFormat(False, "ignored").prompt(tok, "hi") == "User: hi\nAssistant:"


def test_collate_pads_labels_with_ignore_index():
    from llink.method.inject import Example

    b = collate([Example([1, 2, 3], [-100, 2, 3]), Example([4], [4])], pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert b["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
