"""Prompt cost at inference: K slots vs the raw foreign text in the decoder's prompt.

    python -m benchmarks.prompt_cost --model runs/default/stage_b [--n 1425] [--ttft 48]

For every test sentence: decoder tokens of the foreign text (raw) vs K + 2 (slots
and markers), and of the whole prompt both ways. For a sample, time to first token
measured side by side in one process (LLINK: encoder pass + projector + bridge +
prompt forward; base: prompt forward on the raw text), median of repeats.
Results: benchmarks/results/prompt_cost.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import machine_description, write_results
from llink import LLINK
from llink.config import DataConfig
from llink.data.splits import load_splits
from llink.inject import slot_span

BUCKETS = ((0, 40), (40, 80), (80, 160), (160, 100_000))  # foreign length in characters


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]


@torch.no_grad()
def first_token_seconds(model: LLINK, text: str, raw: bool, repeats: int) -> float:
    """Wall time from text to the first generated token's logits (batch of one)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        if raw:
            ids = torch.tensor([model.prompt_ids("translate_to_english", foreign_text=text)])
            with model.adapters_disabled():
                model.lm(input_ids=ids).logits[0, -1].argmax()
        else:
            slots = model.slots(model.encode([text]))
            ids = torch.tensor([model.prompt_ids("translate_to_english")])
            model.lm(inputs_embeds=model.embed(ids, slots)).logits[0, -1].argmax()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="runs/default/stage_b")
    ap.add_argument("--n", type=int, default=None, help="test sentences for token counts")
    ap.add_argument("--ttft", type=int, default=48, help="sentences timed for first token")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    pairs = load_splits(DataConfig()).test[: args.n]
    model = LLINK.from_pretrained(args.model).eval()
    tok = model.tokenizer
    k_cost = len(tok(slot_span(model.num_slots), add_special_tokens=False)["input_ids"])
    slot_prompt = len(model.prompt_ids("translate_to_english"))
    rows = []
    for p in pairs:
        raw_tokens = len(tok(p.foreign, add_special_tokens=False)["input_ids"])
        raw_prompt = len(model.prompt_ids("translate_to_english", foreign_text=p.foreign))
        en_tokens = len(tok(p.en, add_special_tokens=False)["input_ids"])
        rows.append({"chars": len(p.foreign), "foreign": raw_tokens, "english": en_tokens,
                     "prompt_raw": raw_prompt, "prompt_slots": slot_prompt})

    def summary(sel: list[dict]) -> dict:
        fr = [r["foreign"] / k_cost for r in sel]
        pr = [r["prompt_raw"] / r["prompt_slots"] for r in sel]
        return {
            "n": len(sel),
            "foreign_tokens_median": statistics.median(r["foreign"] for r in sel),
            "foreign_tokens_p90": pct([r["foreign"] for r in sel], 0.9),
            "english_tokens_median": statistics.median(r["english"] for r in sel),
            "foreign_over_slots_median": statistics.median(fr),
            "foreign_over_slots_p90": pct(fr, 0.9),
            "prompt_ratio_median": statistics.median(pr),
            "prompt_ratio_p90": pct(pr, 0.9),
        }

    overall = summary(rows)
    buckets = {f"{lo}-{hi if hi < 100_000 else ''}": summary(sel)
               for lo, hi in BUCKETS if (sel := [r for r in rows if lo <= r["chars"] < hi])}

    # time to first token, side by side, on an evenly spaced sample
    step = max(1, len(pairs) // max(args.ttft, 1))
    sample = pairs[::step][: args.ttft]
    first_token_seconds(model, sample[0].foreign, raw=False, repeats=1)  # warm-up
    first_token_seconds(model, sample[0].foreign, raw=True, repeats=1)
    ttft = []
    for p in sample:
        s = first_token_seconds(model, p.foreign, raw=False, repeats=args.repeats)
        r = first_token_seconds(model, p.foreign, raw=True, repeats=args.repeats)
        ttft.append({"chars": len(p.foreign), "slots": s, "raw": r, "ratio": r / s})
    res = {
        "machine": machine_description(),
        "slot_span_tokens": k_cost,
        "slot_prompt_tokens": slot_prompt,
        "overall": overall,
        "by_foreign_chars": buckets,
        "ttft": {
            "n": len(ttft),
            "slots_median_s": statistics.median(t["slots"] for t in ttft),
            "raw_median_s": statistics.median(t["raw"] for t in ttft),
            "ratio_median": statistics.median(t["ratio"] for t in ttft),
            "ratio_p90": pct([t["ratio"] for t in ttft], 0.9),
        },
    }
    lines = [
        "| foreign text (chars) | n | foreign tokens median / p90 | English tokens median "
        "| foreign ÷ slots median / p90 | whole prompt raw ÷ slots median / p90 |",
        "|---|---|---|---|---|---|",
    ]
    for name, b in [("all", overall), *buckets.items()]:
        lines.append(
            f"| {name} | {b['n']} | {b['foreign_tokens_median']:.0f} / "
            f"{b['foreign_tokens_p90']:.0f} | {b['english_tokens_median']:.0f} | "
            f"{b['foreign_over_slots_median']:.1f}x / {b['foreign_over_slots_p90']:.1f}x | "
            f"{b['prompt_ratio_median']:.2f}x / {b['prompt_ratio_p90']:.2f}x |"
        )
    t = res["ttft"]
    lines += [
        "",
        f"Slots cost {k_cost} decoder tokens (K slots + 2 markers); the whole slot prompt "
        f"is {slot_prompt} tokens.",
        f"Time to first token on {t['n']} sentences (median of {args.repeats}): slots "
        f"{t['slots_median_s'] * 1000:.0f} ms (encoder pass included) vs raw text "
        f"{t['raw_median_s'] * 1000:.0f} ms; ratio median {t['ratio_median']:.2f}x, "
        f"p90 {t['ratio_p90']:.2f}x.",
        f"Machine: {res['machine']}.",
    ]
    write_results("prompt_cost", res, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
