"""Time to first token and batch throughput, slots vs raw text, both paths served fast.

    python -m benchmarks.ttft [--model DIR] [--n 40] [--repeats 3] [--batch 32]
                              [--max-new-tokens 32] [--dtype float32] [--threads N] [--quick]

Both paths are set up the way ``llink serve`` runs LLINK: the prompt template before the
foreign text has its KV computed once and reused (prefix caching), and LLINK's LoRA is
merged into the decoder weights. LLINK: encoder pass, bridge, slots in the prompt. Base:
the same decoder without LoRA (a plain copy, no adapter wrappers) given the raw foreign text
in the same instruction. Both without prefix caching are timed too, for reference, and
LLINK as ``llink serve``'s backend answers a follow-up about a text it has seen (slot cache
hit: no encoder pass).

Time to first token (TTFT): ``generate([text], max_new_tokens=1)``, batch of one, median of
``--repeats`` per sentence, the order of the paths alternating from sentence to sentence,
on ``--n`` sentences spread evenly over the test split (as ``benchmarks.latency`` picks
them). The prefix caches are filled by a warm-up call, as in a running server.
Throughput: sentences/s answering ``--n-batch`` sentences (default: ``--batch``) in
batches of ``--batch``, greedy, up to ``--max-new-tokens``, median of repeats.
Untimed checks on the same sentences: the first token with and without the prefix cache,
merged LoRA vs the adapters, the plain decoder vs the model's own base path; the batch
answers with and without the prefix cache. ``--dtype bfloat16`` loads both paths' frozen
models in bfloat16 (the bridge stays float32).
Results: benchmarks/results/ttft.{json,md}.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch

from benchmarks import common
from benchmarks.common import machine_description, model_dir, row, timed
from llink import LLINK
from llink.backbones.decoder import FrozenDecoder
from llink.backbones.loading import resolve_dtype
from llink.backbones.prefix_cache import PrefixCache
from llink.config import DataConfig
from llink.data.splits import load_splits
from llink.inference.api import ChatJob
from llink.inference.backends import LLINKBackend
from llink.method.model import PromptedDecoder

TASK = "translate_to_english"
TARGETS = {"ttft": 2.5, "throughput": 5.0}
QUICK = {"n": 4, "repeats": 1, "batch": 2, "n_batch": 4, "max_new_tokens": 4,
         "dtype": "float32"}
DEFAULT = {"n": 40, "repeats": 3, "batch": 32, "n_batch": None, "max_new_tokens": 32,
           "dtype": "float32"}
DTYPES = ("float32", "bfloat16")
OPTIONS = {
    **common.MODEL,
    "--n": {"type": int, "help": "test sentences timed for the first token"},
    "--repeats": {"type": int},
    "--batch": {"type": int, "help": "batch size of the throughput figure"},
    "--n-batch": {"type": int,
                  "help": "test sentences for the throughput figure (default: one batch)"},
    "--max-new-tokens": {"type": int, "help": "answer length cap of the throughput figure"},
    "--dtype": {"choices": DTYPES, "help": "the frozen models' dtype, both paths"},
    **common.THREADS,
    **common.QUICK_RUN,
}
#: answers for a batch of texts, given max_new_tokens
Answerer = Callable[[list[str], int], list[str]]


def plain_base_decoder(model: LLINK, dtype: torch.dtype = torch.float32) -> PromptedDecoder:
    """The model's decoder loaded again without LoRA or adapter wrappers (the base
    decoder as one would serve it), with the model's prompt format."""
    meta = model.meta or {}
    dec = FrozenDecoder.from_pretrained(meta["decoder"], num_slots=model.num_slots,
                                        device=model.device, dtype=dtype)
    if meta.get("decoder_weights") and dec.fingerprint != meta["decoder_weights"]:
        raise SystemExit(f"the decoder {meta['decoder']} is not the one the model was "
                         "trained with (weights fingerprint differs)")
    dec.load_reserved_rows(model.decoder.reserved_rows())
    return PromptedDecoder(dec, model.fmt).eval()


def build_paths(folder: str, device: str, dtype: torch.dtype = torch.float32
                ) -> tuple[dict[str, Answerer], dict[str, Any]]:
    """The timed paths by name, and the models behind them. A path with the prefix cache
    and its twin without share one model; each call sets the model's cache."""
    merged = LLINK.from_pretrained(folder, device=device, merge_lora=True, dtype=dtype).eval()
    base = plain_base_decoder(merged, dtype)
    caches = {"llink": PrefixCache(), "base": PrefixCache()}
    merged.prefix_cache = caches["llink"]
    backend = LLINKBackend(merged, "bench")

    def llink(cache: PrefixCache | None) -> Answerer:
        def call(texts: list[str], n: int) -> list[str]:
            merged.prefix_cache = cache
            return merged.generate(texts, TASK, max_new_tokens=n)
        return call

    def raw(cache: PrefixCache | None) -> Answerer:
        def call(texts: list[str], n: int) -> list[str]:
            base.prefix_cache = cache
            return base.generate_raw(texts, TASK, max_new_tokens=n)
        return call

    def served(texts: list[str], n: int) -> list[str]:
        merged.prefix_cache = caches["llink"]
        jobs = [ChatJob((("user", t),), n, t, TASK) for t in texts]
        return [c.text for c in backend.generate(jobs, [backend.prepare(j) for j in jobs])]

    paths = {"llink": llink(caches["llink"]), "base": raw(caches["base"]),
             "llink_no_prefix_cache": llink(None), "base_no_prefix_cache": raw(None),
             "llink_served_slots_cached": served}
    return paths, {"merged": merged, "caches": caches}


def time_first_tokens(paths: dict[str, Answerer], texts: list[str], repeats: int
                      ) -> list[dict[str, Any]]:
    """Per sentence: median seconds of each path's first token (order alternating)."""
    names = list(paths)
    for name in names:  # warm-up: fills the prefix caches
        paths[name](texts[:1], 1)
    out = []
    for i, text in enumerate(texts):
        paths["llink_served_slots_cached"]([text], 1)  # the text seen before: slots cached
        r: dict[str, Any] = {"chars": len(text)}
        for name in names if i % 2 == 0 else reversed(names):
            r[name] = common.median_seconds(lambda f=paths[name], x=text: f([x], 1), repeats)
        out.append(r)
    return out


def throughput(paths: dict[str, Answerer], names: list[str], texts: list[str], batch: int,
               repeats: int, max_new_tokens: int) -> dict[str, Any]:
    """Sentences/s of each path answering ``texts`` in batches of ``batch``, and answers."""
    times: dict[str, list[float]] = {n: [] for n in names}
    answers: dict[str, list[str]] = {}
    for name in names:  # warm-up at this batch size
        paths[name](texts[:batch], 2)
    for rep in range(repeats):
        for name in names if rep % 2 == 0 else reversed(names):
            t, answers[name] = timed(lambda f=paths[name]: [
                a for i in range(0, len(texts), batch)
                for a in f(texts[i:i + batch], max_new_tokens)])
            times[name].append(t)
    return {"seconds": times, "answers": answers,
            "sentences_per_s": {n: len(texts) / statistics.median(times[n]) for n in names}}


def first_token_checks(paths: dict[str, Answerer], merged: LLINK, folder: str, device: str,
                       texts: list[str]) -> dict[str, list[int]]:
    """[agreeing, compared] first tokens: prefix cache on vs off (both paths), merged LoRA
    vs the adapters, the plain decoder vs the model's own base path."""
    unmerged = LLINK.from_pretrained(folder, device=device, encoder=merged.encoder,
                                     dtype=merged.decoder.embedding_rows().dtype).eval()

    def agree(a: Answerer, b: Answerer) -> list[int]:
        return [sum(a([t], 1) == b([t], 1) for t in texts), len(texts)]

    return {
        "llink_prefix_cache_vs_none": agree(paths["llink"], paths["llink_no_prefix_cache"]),
        "base_prefix_cache_vs_none": agree(paths["base"], paths["base_no_prefix_cache"]),
        "llink_merged_vs_adapters": agree(
            paths["llink_no_prefix_cache"],
            lambda ts, n: unmerged.generate(ts, TASK, max_new_tokens=n)),
        "plain_base_vs_generate_base": agree(
            paths["base_no_prefix_cache"],
            lambda ts, n: unmerged.generate_base(ts, TASK, max_new_tokens=n)),
    }


def measure(folder: str, n: int, repeats: int, batch: int, n_batch: int | None,
            max_new_tokens: int, dtype: str = "float32") -> dict[str, Any]:
    test = load_splits(DataConfig()).test
    texts = [p.foreign for p in common.evenly_spaced(test, n)]
    batch_texts = [p.foreign for p in common.evenly_spaced(test, n_batch or batch)]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    paths, models = build_paths(folder, device, resolve_dtype(dtype))
    merged, tok = models["merged"], models["merged"].tokenizer

    per = time_first_tokens(paths, texts, repeats)
    variants = [k for k in per[0] if k != "chars"]
    ttft: dict[str, Any] = {f"{v}_median_s": statistics.median(r[v] for r in per)
                            for v in variants}
    for num, den in (("base", "llink"), ("base_no_prefix_cache", "llink_no_prefix_cache"),
                     ("base", "llink_served_slots_cached"),
                     ("llink_no_prefix_cache", "llink"), ("base_no_prefix_cache", "base")):
        ratios = [r[num] / r[den] for r in per]
        ttft[f"{num}/{den}_median"] = statistics.median(ratios)
        ttft[f"{num}/{den}_p10"] = common.pct(ratios, 0.1)
        ttft[f"{num}/{den}_p90"] = common.pct(ratios, 0.9)

    names = ["llink", "base", "llink_no_prefix_cache", "base_no_prefix_cache"]
    tp = throughput(paths, names, batch_texts, batch, repeats, max_new_tokens)
    rate = tp["sentences_per_s"]
    answers = tp["answers"]
    checks = first_token_checks(paths, merged, folder, device, texts)
    for path in ("llink", "base"):
        same = sum(a == b for a, b in zip(answers[path], answers[f"{path}_no_prefix_cache"],
                                          strict=True))
        checks[f"{path}_batch_answers_prefix_cache_vs_none"] = [same, len(batch_texts)]
    template = merged.template_ids(TASK)
    return {
        "machine": machine_description(),
        "model": folder,
        "device": device,
        "dtype": dtype,
        "sample": {"split": "test", "sentences": len(texts), "test_sentences": len(test),
                   "chars_median": statistics.median(len(t) for t in texts)},
        "repeats": repeats,
        "prompt_tokens": {
            "template": len(template),
            "llink_median": statistics.median(
                len(merged.prompt_ids(TASK, literals=merged.literals_of(t))) for t in texts),
            "base_median": statistics.median(
                len(merged.prompt_ids(TASK, foreign_text=t)) for t in texts),
        },
        "ttft": ttft,
        "ttft_per_sentence": per,
        "throughput": {
            "batch": batch, "sentences": len(batch_texts), "max_new_tokens": max_new_tokens,
            "sentences_per_s": rate,
            "base/llink": rate["llink"] / rate["base"],
            "base_no_prefix_cache/llink_no_prefix_cache":
                rate["llink_no_prefix_cache"] / rate["base_no_prefix_cache"],
            "answer_tokens_mean": {
                k: statistics.fmean(len(tok(a, add_special_tokens=False)["input_ids"])
                                    for a in v) for k, v in answers.items()},
            "seconds_all_repeats": tp["seconds"],
        },
        "checks": checks,
        "prefix_cache": {k: c.stats() for k, c in models["caches"].items()},
        "targets": TARGETS,
        "examples": [{"foreign": t, "llink": a, "base": b} for t, a, b in
                     zip(batch_texts[:3], answers["llink"], answers["base"], strict=False)],
    }


def markdown(res: dict[str, Any]) -> str:
    t, tp, c = res["ttft"], res["throughput"], res["checks"]
    ms = {k.removesuffix("_median_s"): v * 1000 for k, v in t.items() if k.endswith("_median_s")}
    rate = tp["sentences_per_s"]

    def ratio(num: str, den: str) -> str:
        return (f"{t[f'{num}/{den}_median']:.2f}x (p10 {t[f'{num}/{den}_p10']:.2f}x, "
                f"p90 {t[f'{num}/{den}_p90']:.2f}x)")

    def met(x: float, target: float) -> str:
        return f"≥ {target:g}x {'met' if x >= target else 'missed'}"

    def agree(key: str) -> str:
        return "{}/{}".format(*c[key])

    s, p = res["sample"], res["prompt_tokens"]
    lines = [
        "# Time to first token and throughput: slots vs raw text, both served fast",
        "",
        f"{s['sentences']} test sentences spread evenly over the test split ({s['test_sentences']}"
        f" sentences; median {s['chars_median']:.0f} characters), batch of one, "
        f"`generate(..., max_new_tokens=1)`, median of {res['repeats']} per sentence, paths "
        f"alternating; device {res['device']}, frozen models in {res.get('dtype', 'float32')}. "
        "LLINK: LoRA merged, encoder pass included. "
        "Base: the same decoder without LoRA given the raw text. Prompt tokens, median: "
        f"LLINK {p['llink_median']:.0f}, base {p['base_median']:.0f}; the cached template "
        f"before the foreign text is {p['template']} of them.",
        "",
        "| path | prefix cache | TTFT median |",
        "|---|---|---|",
        f"| LLINK (slots) | yes | {ms['llink']:.1f} ms |",
        f"| base decoder, raw text | yes | {ms['base']:.1f} ms |",
        f"| LLINK (slots) | no | {ms['llink_no_prefix_cache']:.1f} ms |",
        f"| base decoder, raw text | no | {ms['base_no_prefix_cache']:.1f} ms |",
        f"| LLINK in llink serve's backend, follow-up about a seen text (slots cached) | yes "
        f"| {ms['llink_served_slots_cached']:.1f} ms |",
        "",
        "| figure (per-sentence ratios: median, p10, p90) | ratio | target |",
        "|---|---|---|",
        f"| TTFT base ÷ LLINK, both prefix-cached | {ratio('base', 'llink')} | "
        f"{met(t['base/llink_median'], res['targets']['ttft'])} |",
        f"| TTFT base ÷ LLINK, neither prefix-cached | "
        f"{ratio('base_no_prefix_cache', 'llink_no_prefix_cache')} | — |",
        f"| TTFT base ÷ LLINK served, slots cached | "
        f"{ratio('base', 'llink_served_slots_cached')} | — |",
        f"| prefix cache gain, LLINK | {ratio('llink_no_prefix_cache', 'llink')} | — |",
        f"| prefix cache gain, base | {ratio('base_no_prefix_cache', 'base')} | — |",
        "",
        f"Throughput: {tp['sentences']} test sentences in batches of {tp['batch']}, greedy, up "
        f"to {tp['max_new_tokens']} new tokens, median of {res['repeats']}; answers end at EOS "
        f"(answer tokens per sentence, re-tokenised: LLINK "
        f"{tp['answer_tokens_mean']['llink']:.1f}, base {tp['answer_tokens_mean']['base']:.1f}).",
        "",
        "| path | prefix cache | sentences/s |",
        "|---|---|---|",
        f"| LLINK (slots) | yes | {rate['llink']:.2f} |",
        f"| base decoder, raw text | yes | {rate['base']:.2f} |",
        f"| LLINK (slots) | no | {rate['llink_no_prefix_cache']:.2f} |",
        f"| base decoder, raw text | no | {rate['base_no_prefix_cache']:.2f} |",
        "",
        f"Sentences/s LLINK ÷ base at batch {tp['batch']}, both prefix-cached: "
        f"{tp['base/llink']:.2f}x ({met(tp['base/llink'], res['targets']['throughput'])}); "
        f"neither: {tp['base_no_prefix_cache/llink_no_prefix_cache']:.2f}x.",
        "",
        "Checks (untimed): same first token with and without the prefix cache: LLINK "
        f"{agree('llink_prefix_cache_vs_none')}, base {agree('base_prefix_cache_vs_none')}; "
        f"merged LoRA vs adapters {agree('llink_merged_vs_adapters')}; the plain decoder vs "
        f"the model's base path {agree('plain_base_vs_generate_base')}. Same batch answers "
        f"with and without the prefix cache: LLINK "
        f"{agree('llink_batch_answers_prefix_cache_vs_none')}, base "
        f"{agree('base_batch_answers_prefix_cache_vs_none')}.",
        f"Machine: {res['machine']}.",
    ]
    if res.get("command"):
        lines.append(f"Command: `{res['command']}`.")
    return "\n".join(lines) + "\n"


def headline(res: dict[str, Any]) -> list[dict[str, Any]]:
    t, tp = res["ttft"], res["throughput"]
    rate = tp["sentences_per_s"]
    return [
        row("ttft", "time to first token, median, batch 1, both prefix-cached "
            "(LLINK: LoRA merged, encoder included)",
            f"{t['llink_median_s'] * 1000:.0f} ms", f"{t['base_median_s'] * 1000:.0f} ms "
            "(raw text)", t["base/llink_median"], TARGETS["ttft"],
            note=f"{res['sample']['sentences']} sentences, {res['device']}"),
        row("ttft", f"sentences/s at batch {tp['batch']}, both prefix-cached",
            f"{rate['llink']:.2f}", f"{rate['base']:.2f} (raw text)", tp["base/llink"],
            TARGETS["throughput"], note=f"up to {tp['max_new_tokens']} new tokens"),
    ]


def run(model: str | None = None, quick: bool = False, **overrides: Any) -> dict[str, Any]:
    """Measure with the defaults (or the quick settings), write results, return them."""
    q = common.settings(quick, QUICK, DEFAULT, overrides)
    res = measure(model_dir(model), q["n"], q["repeats"], q["batch"], q["n_batch"],
                  q["max_new_tokens"], q["dtype"])
    return common.report("ttft", res, markdown, quick)


if __name__ == "__main__":
    common.main(__name__)
