"""Literal pass-through: numbers and Latin-script words copied from the foreign text."""

import pytest

from llink.method.inject import instruction_text, slot_span
from llink.method.literals import ascii_digits, extract_literals, literal_line


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
