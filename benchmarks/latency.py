"""End-to-end answers: sentences per second, LLINK vs the base decoder given the raw text.

    python -m benchmarks.latency [--model DIR] [--n 32] [--batch-sizes 1,8,32] [--quick]

The same test sentences go through ``model.generate`` (encoder + slots + decoder) and
``model.generate_base`` (the raw Khmer in the prompt, no LoRA), greedy, the same
``max_new_tokens``, in batches of each size; the two paths alternate within every
repeat and each figure is the median over repeats. Device: a GPU when present, else
the CPU. A third path is the same model with its LoRA merged into the decoder weights
(fewer operations per decoder pass, same answers up to rounding; ``--no-lora-merged``
skips it). Batch size 1 is timed on an evenly spread subset (``--n-single``, default 8).
The paths' answers end at EOS, so they differ in length; ``--fixed-length`` makes every
answer exactly ``max_new_tokens`` long (pure compute cost; results latency_fixed_length.*).
LLINK's batch-1 vs largest-batch rate is the gain from batching (cf. benchmarks.generation).
Results: benchmarks/results/latency.{json,md}.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from benchmarks import common
from benchmarks.common import evenly_spaced, machine_description, model_dir, row, timed
from llink import LLINK
from llink.config import DataConfig
from llink.data.splits import load_splits

TASK = "translate_to_english"
QUICK = {"n": 8, "batch_sizes": (1, 8), "repeats": 1, "max_new_tokens": 8, "n_single": 4,
         "lora_merged": True}
DEFAULT = {"n": 32, "batch_sizes": (1, 8, 32), "repeats": 3, "max_new_tokens": 32,
           "n_single": 8, "lora_merged": True}
OPTIONS = {
    **common.MODEL, **common.THREADS,
    "--n": {"type": int, "help": "test sentences"},
    "--batch-sizes": {"type": lambda s: tuple(int(b) for b in s.split(",")),
                      "metavar": "B,B,...", "help": "batch sizes (default 1,8,32)"},
    "--repeats": {"type": int},
    "--max-new-tokens": {"type": int},
    "--n-single": {"type": int, "help": "sentences timed at batch size 1 (0: all)"},
    "--no-lora-merged": {"dest": "lora_merged", "action": "store_false", "default": None,
                         "help": "skip the path with LoRA merged into the decoder"},
    "--fixed-length": {"action": "store_true", "default": None,
                       "help": "every answer exactly max_new_tokens long (EOS suppressed)"},
    **common.QUICK_RUN,
}


def answer_all(model: LLINK, texts: list[str], batch: int, base: bool, max_new_tokens: int,
               fixed_length: bool = False) -> tuple[float, list[str]]:
    """Seconds to answer every text in batches of ``batch``, and the answers."""
    fn = model.generate_base if base else model.generate
    extra = {"min_new_tokens": max_new_tokens} if fixed_length else {}
    return timed(lambda: [a for i in range(0, len(texts), batch)
                          for a in fn(texts[i : i + batch], TASK, max_new_tokens=max_new_tokens,
                                      **extra)])


def measure(folder: str, n: int, batch_sizes: tuple[int, ...], repeats: int,
            max_new_tokens: int, lora_merged: bool = False, n_single: int | None = None,
            fixed_length: bool = False) -> dict[str, Any]:
    """``n_single``: at batch size 1, time only that many of the sentences (evenly spread)."""
    texts = [p.foreign for p in evenly_spaced(load_splits(DataConfig()).test, n)]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = LLINK.from_pretrained(folder, device=device).eval()
    paths = {"llink": (model, False), "base": (model, True)}
    if lora_merged:
        merged = LLINK.from_pretrained(folder, device=device, merge_lora=True).eval()
        paths["llink_lora_merged"] = (merged, False)
    tok = model.tokenizer
    for m, base in paths.values():  # warm-up
        answer_all(m, texts[:2], 2, base, 4)
    results: dict[str, Any] = {}
    first: dict[str, dict[str, str]] = {}  # path -> text -> answer at the first batch size
    for b in batch_sizes:
        sel = evenly_spaced(texts, n_single) if b == 1 and n_single else texts
        times: dict[str, list[float]] = {p: [] for p in paths}
        answers: dict[str, list[str]] = {}
        for rep in range(repeats):  # alternate the order so drift hits both paths alike
            order = list(paths) if rep % 2 == 0 else list(reversed(paths))
            for path in order:
                m, base = paths[path]
                s, answers[path] = answer_all(m, sel, b, base, max_new_tokens, fixed_length)
                times[path].append(s)
        r: dict[str, Any] = {"sentences": len(sel)}
        for path in paths:
            got = dict(zip(sel, answers[path], strict=True))
            ref = first.setdefault(path, got)
            med = statistics.median(times[path])
            r[f"{path}_s"] = med
            r[f"{path}_sentences_per_s"] = len(sel) / med
            r[f"{path}_answer_tokens_mean"] = statistics.fmean(
                len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers[path])
            r[f"{path}_same_as_first_batch_size"] = [
                sum(got[x] == ref[x] for x in got if x in ref), sum(x in ref for x in got)]
        r["speedup"] = r["base_s"] / r["llink_s"]
        if lora_merged:
            r["speedup_lora_merged"] = r["base_s"] / r["llink_lora_merged_s"]
        r["seconds_all_repeats"] = times
        results[str(b)] = r
    return {
        "machine": machine_description(),
        "model": folder,
        "device": device,
        "sentences": len(texts),
        "max_new_tokens": max_new_tokens,
        "fixed_length": fixed_length,
        "repeats": repeats,
        "batch_sizes": results,
        "examples": [{"foreign": x, "llink": first["llink"][x], "base": first["base"][x]}
                     for x in list(first["llink"])[:3]],
    }


def markdown(res: dict[str, Any]) -> str:
    merged = "speedup_lora_merged" in next(iter(res["batch_sizes"].values()))
    extra = " | LLINK, LoRA merged sentences/s | speed-up, LoRA merged" if merged else ""
    lines = [
        "| batch | sentences | LLINK sentences/s | base, raw text sentences/s | LLINK speed-up "
        f"| answer tokens per sentence (re-tokenised) LLINK / base{extra} |",
        "|---|---|---|---|---|---|" + ("---|---|" if merged else ""),
    ]
    for b, r in res["batch_sizes"].items():
        cells = (f" | {r['llink_lora_merged_sentences_per_s']:.2f} | "
                 f"{r['speedup_lora_merged']:.2f}x") if merged else ""
        lines.append(f"| {b} | {r['sentences']} | {r['llink_sentences_per_s']:.2f} | "
                     f"{r['base_sentences_per_s']:.2f} | {r['speedup']:.2f}x | "
                     f"{r['llink_answer_tokens_mean']:.1f} / {r['base_answer_tokens_mean']:.1f}"
                     f"{cells} |")
    bs = list(res["batch_sizes"])
    same = res["batch_sizes"][bs[-1]]
    gain = same["llink_sentences_per_s"] / res["batch_sizes"][bs[0]]["llink_sentences_per_s"]
    lines += [
        "",
        f"{res['sentences']} test sentences (evenly spread over the test split; at batch 1 "
        f"an evenly spread subset), greedy, max_new_tokens {res['max_new_tokens']}, median of "
        f"{res['repeats']} repeats, both paths on the same sentences, device {res['device']}. "
        + ("Every answer is exactly max_new_tokens long (EOS suppressed). " if res["fixed_length"]
           else "Answers end at EOS or max_new_tokens, so the paths may generate different "
           "numbers of tokens. ")
        + f"Batch {bs[-1]} gave the same answers as batch {bs[0]} for "
        f"{same['llink_same_as_first_batch_size'][0]}/{same['llink_same_as_first_batch_size'][1]}"
        f" shared sentences (LLINK) and {same['base_same_as_first_batch_size'][0]}/"
        f"{same['base_same_as_first_batch_size'][1]} (base); batching made LLINK "
        f"{gain:.1f}x faster per sentence than one at a time.",
        f"Machine: {res['machine']}.",
    ]
    return "\n".join(lines) + "\n"


def headline(res: dict[str, Any]) -> list[dict[str, Any]]:
    n = res["max_new_tokens"]
    how = f"answers of exactly {n} tokens" if res["fixed_length"] else f"max_new_tokens {n}"
    rows = [
        row("end-to-end", f"sentences/s at batch {b}", f"{r['llink_sentences_per_s']:.2f}",
            f"{r['base_sentences_per_s']:.2f} (raw text)", r["speedup"],
            note=f"{how}, {res['device']}")
        for b, r in res["batch_sizes"].items()
    ]
    if res["fixed_length"]:
        return rows
    rows += [
        row("end-to-end", f"sentences/s at batch {b}, LoRA merged",
            f"{r['llink_lora_merged_sentences_per_s']:.2f}",
            f"{r['base_sentences_per_s']:.2f} (raw text)", r["speedup_lora_merged"],
            note="variant, same trained model")
        for b, r in res["batch_sizes"].items() if "speedup_lora_merged" in r
    ]
    bs = list(res["batch_sizes"])
    lo, hi = res["batch_sizes"][bs[0]], res["batch_sizes"][bs[-1]]
    rows.append(row(
        "end-to-end", f"LLINK, batch {bs[-1]} vs batch {bs[0]} (batching)",
        f"{hi['llink_sentences_per_s']:.2f} sentences/s",
        f"{lo['llink_sentences_per_s']:.2f} sentences/s",
        hi["llink_sentences_per_s"] / lo["llink_sentences_per_s"],
        note="same answers {}/{}".format(*hi["llink_same_as_first_batch_size"])))
    return rows


def run(model: str | None = None, quick: bool = False, **overrides: Any) -> dict[str, Any]:
    """Measure with the defaults (or the quick settings), write results, return them."""
    q = common.settings(quick, QUICK, DEFAULT, overrides)
    fixed = q.get("fixed_length", False)
    res = measure(model_dir(model), q["n"], tuple(q["batch_sizes"]), q["repeats"],
                  q["max_new_tokens"], q["lora_merged"], q["n_single"], fixed)
    return common.report("latency_fixed_length" if fixed else "latency", res, markdown, quick)


if __name__ == "__main__":
    common.main(__name__)
