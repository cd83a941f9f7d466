"""Prompt cost at inference: K slots vs the raw foreign text in the decoder's prompt.

    python -m benchmarks.prompt_cost [--model DIR] [--n 1425] [--ttft 40] [--quick]

Tokens: for every test sentence, decoder tokens of the foreign text (raw) vs K + 2
(slots and markers), and of the whole prompt both ways, by sentence-length bucket.
Time to first token (TTFT): the real calls, ``model.generate([text], max_new_tokens=1)``
(encoder pass, bridge, prompt, decoder prefill, first token) vs
``model.generate_base([text], max_new_tokens=1)`` (raw text in the prompt), timed side
by side in one process, median of repeats per sentence. Where the time goes: each step
of both paths timed on its own, and the decoder's prefill time against prompt length
(fitted as fixed + per-token cost). Two variants are timed beside the shipped model:
LoRA merged into the decoder weights (same model, no retraining), and an empty
system prompt (``stage_b.system_prompt=""``; the shipped model was NOT trained with
it, so only its cost is measured here, not its answers).
Results: benchmarks/results/prompt_cost.{json,md}.
"""

from __future__ import annotations

import statistics
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch

from benchmarks import common
from benchmarks.common import (
    evenly_spaced,
    machine_description,
    median_seconds,
    model_dir,
    pct,
    row,
)
from llink import LLINK
from llink.backbones.encoder import mean_pool
from llink.config import DataConfig
from llink.data.splits import load_splits
from llink.method.inject import slot_span

TASK = "translate_to_english"
BUCKETS = ((0, 40), (40, 80), (80, 160), (160, 100_000))  # foreign length in characters
QUICK = {"n": 200, "ttft": 6, "profile": 3, "repeats": 1, "prefill_lengths": (16, 64, 256)}
DEFAULT = {"n": None, "ttft": 40, "profile": 10, "repeats": 3,
           "prefill_lengths": (16, 32, 64, 128, 256, 384)}
SHORT_SYSTEM = ""  # the variant's system prompt: an empty system turn
OPTIONS = {
    **common.MODEL, **common.THREADS,
    "--n": {"type": int, "help": "test sentences for token counts (default: all)"},
    "--ttft": {"type": int, "help": "sentences timed for first token"},
    "--profile": {"type": int, "help": "sentences profiled step by step"},
    "--repeats": {"type": int},
    **common.QUICK_RUN,
}


def bucket_name(lo: int, hi: int) -> str:
    return f"{lo}-{hi if hi < 100_000 else ''}"


def bucket_of(chars: int) -> str:
    return next(bucket_name(lo, hi) for lo, hi in BUCKETS if lo <= chars < hi)


@contextmanager
def system_prompt(model: LLINK, system: str | None):
    """Temporarily give ``model`` another system prompt (a prompt-cost variant)."""
    old = model.fmt
    model.fmt = replace(old, system_prompt=system)
    try:
        yield model
    finally:
        model.fmt = old


def merged_copy(folder: str) -> LLINK:
    """The same trained model with its LoRA merged into the decoder weights."""
    return LLINK.from_pretrained(folder, merge_lora=True).eval()


# --- tokens --------------------------------------------------------------------------
def token_rows(model: LLINK, pairs: list, short: bool) -> tuple[list[dict], int, int]:
    """Per-sentence token counts; also the slot span's and the slot prompt's length."""
    tok = model.tokenizer
    with system_prompt(model, SHORT_SYSTEM if short else model.fmt.system_prompt):
        k_cost = len(tok(slot_span(model.num_slots), add_special_tokens=False)["input_ids"])
        slot_prompt = len(model.prompt_ids(TASK))
        rows = []
        for p in pairs:
            rows.append({
                "chars": len(p.foreign),
                "foreign": len(tok(p.foreign, add_special_tokens=False)["input_ids"]),
                "english": len(tok(p.en, add_special_tokens=False)["input_ids"]),
                "prompt_raw": len(model.prompt_ids(TASK, foreign_text=p.foreign)),
                "prompt_slots": slot_prompt,
            })
    return rows, k_cost, slot_prompt


def token_summary(sel: list[dict], k_cost: int) -> dict[str, float]:
    fr = [r["foreign"] / k_cost for r in sel]
    pr = [r["prompt_raw"] / r["prompt_slots"] for r in sel]
    return {
        "n": len(sel),
        "foreign_tokens_median": statistics.median(r["foreign"] for r in sel),
        "foreign_tokens_p90": pct([r["foreign"] for r in sel], 0.9),
        "english_tokens_median": statistics.median(r["english"] for r in sel),
        "foreign_over_slots_median": statistics.median(fr),
        "foreign_over_slots_p90": pct(fr, 0.9),
        "share_foreign_over_slots_ge_15": sum(x >= 15 for x in fr) / len(fr),
        "prompt_ratio_median": statistics.median(pr),
        "prompt_ratio_p90": pct(pr, 0.9),
        "share_prompt_ratio_ge_3": sum(x >= 3 for x in pr) / len(pr),
    }


def by_bucket(rows: list[dict], k_cost: int) -> dict[str, dict]:
    out = {"all": token_summary(rows, k_cost)}
    for lo, hi in BUCKETS:
        if sel := [r for r in rows if lo <= r["chars"] < hi]:
            out[bucket_name(lo, hi)] = token_summary(sel, k_cost)
    return out


# --- time to first token -------------------------------------------------------------
def ttft_calls(model: LLINK, merged: LLINK) -> dict[str, Any]:
    """The timed first-token calls, by variant name: each takes one foreign text."""
    def llink(m: LLINK, system: str | None):
        def call(text: str) -> str:
            with system_prompt(m, system):
                return m.generate([text], TASK, max_new_tokens=1)[0]
        return call

    def base(system: str | None):
        def call(text: str) -> str:
            with system_prompt(model, system):
                return model.generate_base([text], TASK, max_new_tokens=1)[0]
        return call

    shipped = model.fmt.system_prompt
    return {
        "llink": llink(model, shipped),
        "base": base(shipped),
        "llink_lora_merged": llink(merged, shipped),
        "llink_lora_merged_short_system": llink(merged, SHORT_SYSTEM),
        "base_short_system": base(SHORT_SYSTEM),
    }


def time_first_tokens(model: LLINK, merged: LLINK, texts: list[str], repeats: int
                      ) -> list[dict[str, Any]]:
    calls = ttft_calls(model, merged)
    for call in calls.values():  # warm-up
        call(texts[0])
    out = []
    for text in texts:
        r: dict[str, Any] = {"chars": len(text)}
        for name, call in calls.items():
            r[name] = median_seconds(lambda call=call, text=text: call(text), repeats)
        r["merged_same_first_token"] = calls["llink"](text) == calls["llink_lora_merged"](text)
        out.append(r)
    return out


@torch.no_grad()
def step_times(model: LLINK, text: str, raw: bool, repeats: int) -> dict[str, float]:
    """Seconds of each step towards the first token, each timed on its own (batch of one)."""
    enc = model.encoder
    t: dict[str, float] = {}
    if raw:
        t["prompt tokenisation"] = median_seconds(
            lambda: model.prompt_ids(TASK, foreign_text=text), repeats)
        ids = torch.tensor([model.prompt_ids(TASK, foreign_text=text)], device=model.device)
        slots = None
    else:
        t["prompt tokenisation"] = median_seconds(lambda: model.prompt_ids(TASK), repeats)
        ids = torch.tensor([model.prompt_ids(TASK)], device=model.device)

        def enc_tokens():
            return enc.tokenizer(enc.prepare([text]), padding=True, truncation=True,
                                 max_length=enc.max_length, return_tensors="pt").to(enc.device)

        t["encoder tokenisation"] = median_seconds(enc_tokens, repeats)
        batch = enc_tokens()
        t["encoder pass"] = median_seconds(
            lambda: mean_pool(enc.model(**batch).last_hidden_state, batch["attention_mask"]),
            repeats)
        vec, toks = model.encode([text]), model.encode_tokens([text])
        t["projector + bridge"] = median_seconds(lambda: model.slots(vec, tokens=toks), repeats)
        slots = model.slots(vec, tokens=toks)
    t["embedding + slot injection"] = median_seconds(lambda: model.embed(ids, slots), repeats)
    emb = model.embed(ids, slots)
    mask = torch.ones_like(ids)
    with model.adapters_disabled(raw):
        t["decoder prefill"] = median_seconds(
            lambda: model.lm(inputs_embeds=emb, attention_mask=mask, logits_to_keep=1), repeats)
        logits = model.lm(inputs_embeds=emb, attention_mask=mask, logits_to_keep=1).logits
    t["first-token choice"] = median_seconds(lambda: logits[0, -1].argmax(), repeats)
    return t


@torch.no_grad()
def prefill_fit(model: LLINK, lengths: tuple[int, ...], repeats: int) -> dict[str, Any]:
    """Base decoder prefill time against prompt length, fitted as fixed + per-token cost."""
    g = torch.Generator().manual_seed(0)
    vocab = min(model.decoder.reserved.ids)
    points = []
    with model.adapters_disabled():
        for n in lengths:
            ids = torch.randint(0, vocab, (1, n), generator=g).to(model.device)
            model.lm(input_ids=ids, logits_to_keep=1)
            s = median_seconds(lambda ids=ids: model.lm(input_ids=ids, logits_to_keep=1),
                               repeats)
            points.append({"tokens": n, "seconds": s})
    xs = [p["tokens"] for p in points]
    ys = [p["seconds"] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs)
    return {"points": points, "fixed_s": my - slope * mx, "per_token_s": slope}


def profile(model: LLINK, ttft: list[dict], texts: list[str], repeats: int) -> dict[str, Any]:
    """Median seconds per step for both paths; what generate() adds is the remainder."""
    paths: dict[str, dict[str, float]] = {}
    for raw, name, total_key in ((False, "llink", "llink"), (True, "base", "base")):
        per_text = [step_times(model, x, raw, repeats) for x in texts]
        steps = {k: statistics.median(p[k] for p in per_text) for k in per_text[0]}
        chosen = [r for r in ttft if r["text"] in texts]
        total = statistics.median(r[total_key] for r in chosen)
        steps["generate() set-up and rest"] = max(0.0, total - sum(steps.values()))
        paths[name] = {"steps": steps, "total_s": total}
    return paths


def measure(folder: str, n: int | None, n_ttft: int, n_profile: int, repeats: int,
            prefill_lengths: tuple[int, ...]) -> dict[str, Any]:
    pairs = load_splits(DataConfig()).test[:n]
    model = LLINK.from_pretrained(folder).eval()
    rows, k_cost, slot_prompt = token_rows(model, pairs, short=False)
    short_rows, _, short_prompt = token_rows(model, pairs, short=True)

    sample = evenly_spaced(pairs, n_ttft)
    merged = merged_copy(folder)
    ttft = time_first_tokens(model, merged, [p.foreign for p in sample], repeats)
    for r, p in zip(ttft, sample, strict=True):
        r["text"] = p.foreign
        r["prompt_tokens_raw"] = len(model.prompt_ids(TASK, foreign_text=p.foreign))
    variants = [k for k in ttft[0] if k.startswith(("llink", "base"))]

    def ttft_summary(sel: list[dict]) -> dict[str, float]:
        out: dict[str, float] = {"n": len(sel)}
        for v in variants:
            out[f"{v}_median_s"] = statistics.median(r[v] for r in sel)
        for num, den in (("base", "llink"), ("base", "llink_lora_merged"),
                         ("base_short_system", "llink_lora_merged_short_system")):
            ratios = [r[num] / r[den] for r in sel]
            out[f"{num}/{den}_median"] = statistics.median(ratios)
            out[f"{num}/{den}_p90"] = pct(ratios, 0.9)
        return out

    ttft_buckets = {"all": ttft_summary(ttft)}
    for lo, hi in BUCKETS:
        if sel := [r for r in ttft if lo <= r["chars"] < hi]:
            ttft_buckets[bucket_name(lo, hi)] = ttft_summary(sel)

    texts = [r["text"] for r in evenly_spaced(ttft, n_profile)]
    breakdown = profile(model, ttft, texts, repeats=max(3, repeats))
    fit = prefill_fit(model, prefill_lengths, repeats=max(3, repeats))
    # how long a raw-text prompt must be for the base path to take 3x LLINK's median TTFT
    base_rest = breakdown["base"]["total_s"] - breakdown["base"]["steps"]["decoder prefill"]
    needed = (3 * ttft_buckets["all"]["llink_median_s"] - base_rest - fit["fixed_s"]) \
        / fit["per_token_s"]
    return {
        "machine": machine_description(),
        "model": folder,
        "repeats": repeats,
        "slot_span_tokens": k_cost,
        "slot_prompt_tokens": slot_prompt,
        "slot_prompt_tokens_short_system": short_prompt,
        "tokens": by_bucket(rows, k_cost),
        "tokens_short_system": by_bucket(short_rows, k_cost),
        "ttft": ttft_buckets,
        "ttft_per_sentence": [{k: v for k, v in r.items() if k != "text"} for r in ttft],
        "merged_same_first_token": sum(r["merged_same_first_token"] for r in ttft),
        "profile": {"sentences": len(texts), "paths": breakdown},
        "prefill_fit": fit,
        "ttft_3x_needs_raw_prompt_tokens": needed,
        "share_raw_prompt_at_least_that": sum(r["prompt_raw"] >= needed for r in rows) / len(rows),
    }


def markdown(res: dict[str, Any]) -> str:
    tk, tks, tt = res["tokens"], res["tokens_short_system"], res["ttft"]
    lines = [
        "| foreign text (chars) | n | foreign tokens median / p90 | English tokens median "
        "| foreign ÷ slots median / p90 | whole prompt raw ÷ slots median / p90 "
        "| TTFT base ÷ LLINK median (n) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, b in tk.items():
        t = tt.get(name)
        ttft = f"{t['base/llink_median']:.2f}x ({t['n']})" if t else "—"
        lines.append(
            f"| {name} | {b['n']} | {b['foreign_tokens_median']:.0f} / "
            f"{b['foreign_tokens_p90']:.0f} | {b['english_tokens_median']:.0f} | "
            f"{b['foreign_over_slots_median']:.1f}x / {b['foreign_over_slots_p90']:.1f}x | "
            f"{b['prompt_ratio_median']:.2f}x / {b['prompt_ratio_p90']:.2f}x | {ttft} |")
    a, s = tk["all"], tks["all"]
    lines += [
        "",
        f"Slots cost {res['slot_span_tokens']} decoder tokens (K slots + 2 markers); the whole "
        f"slot prompt is {res['slot_prompt_tokens']} tokens, of which the chat template's "
        f"default system turn is {res['slot_prompt_tokens'] - res['slot_prompt_tokens_short_system']}"
        " more than an empty one. "
        f"{a['share_foreign_over_slots_ge_15']:.0%} of test sentences reach foreign ÷ slots ≥ 15x "
        f"and {a['share_prompt_ratio_ge_3']:.0%} reach whole prompt ≥ 3x.",
        f"With an empty system prompt (`stage_b.system_prompt=\"\"`, {res['slot_prompt_tokens_short_system']}"
        f"-token slot prompt) the whole-prompt ratio would be {s['prompt_ratio_median']:.2f}x median "
        f"/ {s['prompt_ratio_p90']:.2f}x p90 ({s['share_prompt_ratio_ge_3']:.0%} of sentences ≥ 3x).",
        "",
        f"Time to first token, {tt['all']['n']} sentences, median of {res['repeats']} per sentence "
        "(`generate(..., max_new_tokens=1)`, batch of one):",
        "",
        "| variant | LLINK median | base, raw text median | base ÷ LLINK median / p90 |",
        "|---|---|---|---|",
    ]
    al = tt["all"]
    for label, num, den in (
        ("as trained (LoRA as adapters)", "base", "llink"),
        ("LoRA merged into the decoder", "base", "llink_lora_merged"),
        ("LoRA merged + empty system prompt (not trained so)", "base_short_system",
         "llink_lora_merged_short_system"),
    ):
        lines.append(f"| {label} | {al[f'{den}_median_s'] * 1000:.0f} ms | "
                     f"{al[f'{num}_median_s'] * 1000:.0f} ms | {al[f'{num}/{den}_median']:.2f}x / "
                     f"{al[f'{num}/{den}_p90']:.2f}x |")
    p = res["profile"]["paths"]
    steps = list(dict.fromkeys([*p["llink"]["steps"], *p["base"]["steps"]]))
    lines += [
        "",
        f"Where the time to first token goes (median over {res['profile']['sentences']} "
        "sentences, each step timed alone):",
        "",
        "| step | LLINK | base, raw text |",
        "|---|---|---|",
    ]
    for st in steps:
        cells = [f"{p[k]['steps'][st] * 1000:.1f} ms" if st in p[k]["steps"] else "—"
                 for k in ("llink", "base")]
        lines.append(f"| {st} | {cells[0]} | {cells[1]} |")
    lines.append(f"| total (generate, 1 token) | {p['llink']['total_s'] * 1000:.0f} ms | "
                 f"{p['base']['total_s'] * 1000:.0f} ms |")
    f = res["prefill_fit"]
    pts = ", ".join(f"{q['tokens']}: {q['seconds'] * 1000:.0f} ms" for q in f["points"])
    lines += [
        "",
        f"Decoder prefill against prompt length (base decoder, batch of one; {pts}) fits "
        f"{f['fixed_s'] * 1000:.0f} ms + {f['per_token_s'] * 1000:.2f} ms per token: the fixed "
        f"part (reading every weight once, per-layer overhead) equals "
        f"{f['fixed_s'] / f['per_token_s']:.0f} tokens' worth, so a prompt ratio becomes a much "
        "smaller time ratio. By this fit the base path takes 3x LLINK's median time to first "
        f"token only for raw-text prompts of ≥ {res['ttft_3x_needs_raw_prompt_tokens']:.0f} "
        f"tokens: {res['share_raw_prompt_at_least_that']:.0%} of the test sentences.",
        f"Merged LoRA gave the same first token on {res['merged_same_first_token']}"
        f"/{tt['all']['n']} sentences.",
        f"Machine: {res['machine']}.",
    ]
    return "\n".join(lines) + "\n"


def headline(res: dict[str, Any]) -> list[dict[str, Any]]:
    a, t = res["tokens"]["all"], res["ttft"]["all"]
    k = res["slot_span_tokens"]
    return [
        row("prompt cost", "decoder tokens for the foreign text, median", f"{k}",
            f"{a['foreign_tokens_median']:.0f} (raw Khmer)", a["foreign_over_slots_median"], 15),
        row("prompt cost", "whole prompt tokens, median", f"{res['slot_prompt_tokens']}",
            "raw-text prompt", a["prompt_ratio_median"], 3),
        row("prompt cost", "time to first token, median (encoder pass included)",
            f"{t['llink_median_s'] * 1000:.0f} ms", f"{t['base_median_s'] * 1000:.0f} ms",
            t["base/llink_median"], 3),
        row("prompt cost", "time to first token, LoRA merged",
            f"{t['llink_lora_merged_median_s'] * 1000:.0f} ms",
            f"{t['base_median_s'] * 1000:.0f} ms", t["base/llink_lora_merged_median"],
            note="variant, same trained model"),
    ]


def run(model: str | None = None, quick: bool = False, **overrides: Any) -> dict[str, Any]:
    """Measure with the defaults (or the quick settings), write results, return them."""
    q = common.settings(quick, QUICK, DEFAULT, overrides)
    res = measure(model_dir(model), q["n"], q["ttft"], q["profile"], q["repeats"],
                  tuple(q["prefill_lengths"]))
    return common.report("prompt_cost", res, markdown, quick)


if __name__ == "__main__":
    common.main(__name__)
