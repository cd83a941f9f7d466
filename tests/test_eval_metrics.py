"""Generation metrics, numeric fidelity and token budget on known inputs."""

import json

import pytest

from llink.eval.generation import (
    GenItem,
    generate_outputs,
    input_dependence,
    read_outputs,
    score_systems,
)
from llink.eval.numbers import extract_numbers, normalise_number, numeric_fidelity
from llink.eval.tokens import token_budget

REFS = [
    "Open the file menu.", "Save the document before closing.", "The table has three columns.",
    "Click the OK button.", "Insert a new slide.", "Print the current page.",
    "Select all cells in the sheet.", "I love my family.", "Close the window now.",
    "Choose a printer from the list.", "The chart shows sales by region.",
    "Press Enter to continue.",
] * 3


def test_identical_outputs_score_100_with_a_degenerate_interval():
    res = score_systems({"same": list(REFS)}, REFS, n_samples=200)
    s = res["systems"]["same"]
    assert s["chrf"] == pytest.approx(100.0) and s["bleu"] == pytest.approx(100.0)
    assert s["chrf_ci"] == pytest.approx([100.0, 100.0])
    assert res["paired"] == []
    assert "nc:6" in res["scoring"]["signatures"]["chrf"]


def test_disjoint_characters_score_zero_and_paired_test_separates_systems():
    bad = ["zzzz qqqq"] * len(REFS)
    half = [r if i % 2 else "zzzz" for i, r in enumerate(REFS)]
    res = score_systems({"good": list(REFS), "half": half, "bad": bad}, REFS, n_samples=300)
    sys_ = res["systems"]
    assert sys_["bad"]["chrf"] == pytest.approx(0.0) and sys_["bad"]["bleu"] == pytest.approx(0.0)
    assert sys_["good"]["chrf"] > sys_["half"]["chrf"] > sys_["bad"]["chrf"]
    lo, hi = sys_["half"]["chrf_ci"]
    assert lo < sys_["half"]["chrf"] < hi
    pairs = {(p["a"], p["b"], p["metric"]): p for p in res["paired"]}
    assert set(pairs) == {(a, b, m) for a, b in [("good", "half"), ("good", "bad"),
                                                 ("half", "bad")] for m in ("chrf", "bleu")}
    p = pairs[("good", "half", "chrf")]
    assert p["delta"] == pytest.approx(p["a_score"] - p["b_score"]) and p["delta"] > 0
    assert p["p_value"] < 0.05


def test_input_dependence_tells_a_reading_system_from_a_constant_one():
    refs = REFS[:12]
    generic = "Select the file to save in the current document."
    exact = input_dependence(refs, refs)
    constant = input_dependence([generic] * 12, refs)
    # the perfect system loses most of its chrF against other items' references
    assert exact["chrf"] == pytest.approx(100.0) and exact["margin"] > 60
    assert exact["distinct"] == 1.0 and exact["top_share"] == pytest.approx(1 / 12)
    # the constant one scores the same against any re-pairing: margin 0, one output
    assert constant["chrf"] > 5 and constant["margin"] == pytest.approx(0.0, abs=1e-9)
    assert (constant["distinct"], constant["top_share"], constant["top"]) == (1 / 12, 1.0, generic)
    assert constant["shuffles"] == 5
    assert exact["p_value"] < 0.05 and constant["p_value"] > 0.5
    # scored against references rotated by a seeded offset: never an item's own
    assert input_dependence(refs, refs, seed=1)["chrf_other_references"] < 40
    with pytest.raises(ValueError, match="12 outputs for 11 references"):
        input_dependence(refs, refs[:11])


def test_generation_file_resumes_and_keeps_index_order(tmp_path):
    items = [GenItem(i, "x" * (i % 4 + 1), f"ref {i}") for i in range(10)]
    calls = []

    def gen(sources):
        calls.append(list(sources))
        return [s.upper() for s in sources]

    path = tmp_path / "gen" / "sys.jsonl"
    settings = {"system": "sys", "max_new_tokens": 4}
    out = generate_outputs(path, items, gen, settings, batch_size=3, progress=False)
    assert out == [it.source.upper() for it in items]
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["index"] for r in recs] == list(range(10))
    assert set(recs[0]) >= {"index", "source", "reference", "output"}
    # an interrupted file (two lines lost) is completed without redoing the rest
    path.write_text("".join(x + "\n" for x in path.read_text().splitlines()[:8]))
    calls.clear()
    generate_outputs(path, items, gen, settings, batch_size=3, progress=False)
    assert sorted(s for c in calls for s in c) == sorted([items[8].source, items[9].source])
    assert sorted(read_outputs(path)) == list(range(10))
    calls.clear()
    generate_outputs(path, items, gen, settings, batch_size=3, progress=False)
    assert calls == []  # complete: nothing to do
    generate_outputs(path, items, gen, {**settings, "max_new_tokens": 8}, batch_size=3,
                     progress=False)
    assert sum(len(c) for c in calls) == 10  # other settings: regenerated


@pytest.mark.parametrize(("raw", "norm"), [
    ("1,024", "1024"), ("3,5", "3.5"), ("2.50", "2.5"), ("007", "7"), ("4.0", "4"),
    ("0", "0"), ("192.168.0.1", "192.168.0.1"), ("1,000,000", "1000000"),
])
def test_number_normalisation(raw, norm):
    assert normalise_number(raw) == norm


def test_number_extraction():
    assert extract_numbers("Set 1,024 rows at 30MW, not 1.5 kW") == {"1024", "30", "1.5"}
    assert extract_numbers("ទំព័រ ១២ of ៣") == {"12", "3"}  # Khmer digits
    assert extract_numbers("No numbers here.") == set()


def test_numeric_fidelity_on_handmade_outputs():
    refs = ["Page 12 of 30.", "Use 2.5 cm margins.", "No digits.", "Rows 1,000 to 2,000."]
    outs = {
        "exact": ["page 12 of 30", "2.50 cm", "nothing", "rows 1000 - 2000"],
        "partial": ["page 12", "2.5 cm", "12", "rows 1000"],
        "none": ["", "", "", ""],
    }
    res = numeric_fidelity(refs, outs)
    assert res["n_with_numbers"] == 3 and res["indices"] == [0, 1, 3]
    exact = res["systems"]["exact"]
    assert (exact["fraction"], exact["hits"]) == (1.0, 3)
    # Wilson 95% interval for 3/3
    assert exact["ci"][0] == pytest.approx(0.4385, abs=1e-3) and exact["ci"][1] == 1.0
    assert res["systems"]["partial"]["hits"] == 1
    assert res["systems"]["partial"]["fraction"] == pytest.approx(1 / 3)
    assert res["systems"]["none"]["fraction"] == 0.0


def test_token_budget_on_a_whitespace_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(20)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *words])},
                                    unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]")
    foreign = [" ".join(words[:k]) for k in (4, 6, 8, 10, 12)]
    english = [" ".join(words[:k]) for k in (1, 2, 3, 4, 5)]
    res = token_budget(tok, foreign, english, num_slots=2)
    assert res["n"] == 5 and res["slots"] == 4
    assert res["foreign"]["median"] == 8 and res["foreign"]["p90"] == pytest.approx(11.2)
    assert res["english"]["median"] == 3 and res["english"]["p90"] == pytest.approx(4.6)
    assert res["ratio_foreign_to_slots"]["median"] == pytest.approx(2.0)
    assert res["ratio_foreign_to_slots"]["p90"] == pytest.approx(2.8)
    assert res["ratio_foreign_to_english"]["median"] == pytest.approx(8 / 3)
