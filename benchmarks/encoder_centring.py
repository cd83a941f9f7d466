"""Does removing a mean from the encoder's vectors help its own cross-lingual retrieval?

    python -m benchmarks.encoder_centring [KEY=VALUE ...]   # config overrides

Issue 14 asked whether removing each language's mean encoder vector (a known fix for the
language offset of multilingual encoders) would let English read through the encoder
stand in for the foreign language. Measured on the encoder alone, Khmer -> English
retrieval (every query ranked against the whole pool) on the test split and on the
out-of-domain UDHR paragraphs, with: raw vectors; one mean removed from both sides (the
training split's Khmer mean); each language's own mean removed, the English mean taken
from the English side of the same training pairs (a language offset from parallel data)
or from WordNet glosses (general-domain English). Writes
``benchmarks/results/encoder_centring.{md,json}``; features come from the cache.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch

from benchmarks.common import RESULTS
from llink.config import load_config
from llink.data.english import read_english
from llink.data.pairs import read_pairs
from llink.eval.retrieval import retrieval_metrics
from llink.storage.cached_features import encoder_vectors, features_root
from llink.workflows import Session

UDHR = "src/llink/corpora/eval/udhr-en-km.jsonl"


def measure(overrides: list[str]) -> dict[str, Any]:
    cfg = load_config(None, ["data.english=builtin:en-wordnet", *overrides])
    session = Session(cfg, progress=False)
    splits, root = session.splits, features_root(cfg.features_cache)

    def vecs(texts: list[str]) -> torch.Tensor:
        return encoder_vectors(session.encoder, texts, root, cfg.stage_a.encoder_batch_size,
                               progress=False)

    train_km = vecs([p.foreign for p in splits.train])
    km_mean = train_km.mean(0)
    en_mean = vecs([p.en for p in splits.train]).mean(0)
    wordnet = read_english(cfg.data, [*splits.dev, *splits.test])
    wn_mean = vecs(wordnet).mean(0)
    udhr, _ = read_pairs(UDHR, max_chars=cfg.data.max_chars)
    pools = {"test": splits.test, "UDHR": udhr}
    ways = {
        "raw": (0, 0),
        "training Khmer mean removed from both": (km_mean, km_mean),
        "each language's mean (English: same training pairs)": (km_mean, en_mean),
        "each language's mean (English: WordNet)": (km_mean, wn_mean),
    }
    rows: dict[str, dict[str, float]] = {}
    for way, (mk, me) in ways.items():
        rows[way] = {}
        for pool, pairs in pools.items():
            km, en = vecs([p.foreign for p in pairs]), vecs([p.en for p in pairs])
            rows[way][pool] = retrieval_metrics(km - mk, en - me)["R@1"]
    cos = torch.nn.functional.cosine_similarity
    return {
        "rows": rows,
        "pools": {k: len(v) for k, v in pools.items()},
        "train_pairs": len(splits.train), "wordnet_sentences": len(wordnet),
        "mean_norm_over_row_norm": float(km_mean.norm() / train_km.norm(dim=1).mean()),
        "cos_khmer_mean_english_mean": float(cos(km_mean, en_mean, dim=0)),
        "encoder": cfg.model.encoder,
    }


def markdown(res: dict[str, Any]) -> str:
    pools = res["pools"]
    lines = ["# Encoder's own Khmer -> English retrieval (R@1) with means removed", "",
             "| vectors | " + " | ".join(f"{p} ({n})" for p, n in pools.items()) + " |",
             "|---|" + "---|" * len(pools)]
    for way, r in res["rows"].items():
        lines.append(f"| {way} | " + " | ".join(f"{r[p]:.3f}" for p in pools) + " |")
    lines += ["", f"Encoder {res['encoder']}; means from {res['train_pairs']} training pairs "
              f"and {res['wordnet_sentences']} WordNet sentences. The training Khmer mean's "
              f"norm is {res['mean_norm_over_row_norm']:.2f} of a vector's; cosine of the "
              f"Khmer and English means {res['cos_khmer_mean_english_mean']:.3f}.",
              "Command: `python -m benchmarks.encoder_centring`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    res = measure(sys.argv[1:])
    text = markdown(res)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "encoder_centring.md").write_text(text)
    (RESULTS / "encoder_centring.json").write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
