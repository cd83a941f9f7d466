"""Literal pass-through: numbers and Latin-script words copied from the foreign text."""

import pytest
import torch
from transformers import LogitsProcessorList

from llink.method.inject import instruction_text, slot_span
from llink.method.literals import LiteralBias, ascii_digits, extract_literals, literal_line


@pytest.mark.parametrize("text, want", [
    ("ចុចប៊ូតុង OK ។", ["OK"]),
    ("ល្បឿន ៣០ MW និង 1.5 kW", ["30 MW", "1.5 kW"]),  # Khmer digits become ASCII
    ("បើក LibreOffice Writer ហើយចុច Ctrl+Shift+F5", ["LibreOffice Writer", "Ctrl+Shift+F5"]),
    ("រក្សាទុក file.odt ១០០% រួចរាល់", ["file.odt 100%"]),  # neighbours stay together
    ("អាសយដ្ឋាន 192.168.0.1, ច្រក ៨០៨០។", ["192.168.0.1", "8080"]),
    ("ខ្ញុំស្រឡាញ់គ្រួសាររបស់ខ្ញុំ។", []),
    ("ថ្ងៃទី ២៥ ខែ ១២ ឆ្នាំ ២០២៤", ["25", "12", "2024"]),
    ("ជ្រើស A, B ឬ A ម្ដងទៀត", ["A", "B"]),  # de-duplicated, in order
])
def test_extract_literals_on_khmer_text(text, want):
    assert extract_literals(text) == want


def test_digits_of_other_scripts_and_the_limit():
    assert ascii_digits("៣០ ๓๐ ३० ٣٠") == "30 30 30 30"
    assert len(extract_literals(" ".join(f"ក {i}" for i in range(40)), limit=5)) == 5


def test_the_prompt_carries_the_literals_between_the_slots_and_the_answer_line():
    user = instruction_text("translate_to_english", slot_span(2), literals=["30 MW", "OK"])
    lines = user.splitlines()
    assert lines[1] == "Foreign: <foreign><f0><f1></foreign>"
    assert lines[2] == "Literals: 30 MW | OK" == literal_line(["30 MW", "OK"])
    assert lines[3] == "Answer in English only."
    # no literals: no line at all
    assert "Literals" not in instruction_text("translate_to_english", slot_span(2), literals=[])


# --------------------------------------------------------------------------- literal bias
def _tokenizer(tiny_decoder_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_decoder_dir))


def test_literal_bias_pushes_the_next_token_of_a_literal_in_order(tiny_decoder_dir):
    tok = _tokenizer(tiny_decoder_dir)
    spell = tok(" 2024", add_special_tokens=False)["input_ids"]
    assert len(spell) > 1  # spelled over several tokens, so order matters
    bias = LiteralBias(tok, [["2024"]], bias=5.0)
    vocab = len(tok)

    def boosted(out: list[int]) -> set[int]:
        scores = bias(torch.tensor([out], dtype=torch.long), torch.zeros(1, vocab))
        return set(scores[0].nonzero().flatten().tolist())

    first = boosted([])
    assert spell[0] in first and spell[-1] not in first  # not started: a first token only
    assert boosted(spell[:1]) == {spell[1]}           # started: only its continuation
    assert boosted(spell[:-1]) == {spell[-1]}
    assert boosted(spell) == set()                     # written: no more push
    assert boosted(tok(" The year 2024.", add_special_tokens=False)["input_ids"]) == set()


def test_literal_bias_is_per_row_and_leaves_rows_without_literals_alone(tiny_decoder_dir):
    tok = _tokenizer(tiny_decoder_dir)
    bias = LiteralBias(tok, [[], ["OK", "F11"]], bias=2.0)
    scores = bias(torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, len(tok)))
    assert scores[0].abs().sum() == 0
    starts = {tok(t, add_special_tokens=False)["input_ids"][0]
              for lit in ("OK", "F11") for t in (" " + lit, lit)}
    assert set(scores[1].nonzero().flatten().tolist()) == starts
    assert torch.all(scores[1][sorted(starts)] == 2.0)


def test_generate_with_literal_bias_copies_a_number_the_slots_do_not_carry(tmp_path,
                                                                          tiny_decoder_dir):
    """A strong bias makes even an untrained decoder write the text's number."""
    from transformers import AutoModelForCausalLM

    tok = _tokenizer(tiny_decoder_dir)
    lm = AutoModelForCausalLM.from_pretrained(str(tiny_decoder_dir)).eval()
    prompt = tok("Translate:", return_tensors="pt")
    lits = [extract_literals("បោះពុម្ព ១០៤ ច្បាប់")]
    assert lits == [["104"]]
    n = prompt["input_ids"].shape[1]
    out = lm.generate(**prompt, max_new_tokens=8, do_sample=False,
                      pad_token_id=tok.pad_token_id or 0,
                      logits_processor=LogitsProcessorList([LiteralBias(tok, lits, 100.0, n)]))
    assert "104" in tok.decode(out[0, n:])
