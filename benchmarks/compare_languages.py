"""Tables of ``benchmarks/multilingual_vs_khmer.sh``: the multilingual model beside the
Khmer-only one, per language (retrieval) and on the 200 Khmer test pairs (NLL, chrF).

    python -m benchmarks.compare_languages runs/multilingual-vs-khmer \
        --out benchmarks/results/multilingual_vs_khmer.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ENCODER = "encoder cross-lingual (reference)"


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run benchmarks/multilingual_vs_khmer.sh first")
    return json.loads(path.read_text(encoding="utf-8"))


def tables(out_dir: Path) -> str:
    """Markdown: per-language R@1 of both projectors, then the Khmer NLL and chrF rows."""
    ret = {w: _load(out_dir / w / "eval" / "retrieval.json") for w in ("multi", "khmer")}
    ours = next(k for k in ret["multi"]["rows"] if k.startswith("LLINK"))
    zero = set(ret["multi"].get("zero_shot", []))
    lines = ["Stage A R@1 per language, each language's 200 test pairs ranked among "
             "themselves", "",
             "| language | multilingual model | Khmer-only model | encoder's own |",
             "|---|---|---|---|"]
    for lang, r in sorted(ret["multi"]["by_lang"].items(), key=lambda kv: (kv[0] in zero,
                                                                          kv[0])):
        k = ret["khmer"]["by_lang"][lang]
        name = f"{lang} (zero-shot)" if lang in zero else lang
        lines.append(f"| {name} | {r[ours]['R@1']:.3f} | {k[ours]['R@1']:.3f} | "
                     f"{r[ENCODER]['R@1']:.3f} |")
    lines += ["", "Khmer test pairs (the first 200 of the Khmer test split in hash order; "
              "translation items: those of 12-256 characters)", "",
              "| model | items | NLL injected / ablated (gap) | chrF [95% CI] |",
              "|---|---|---|---|"]
    base = None
    for w, label in (("multi", "multilingual"), ("khmer", "Khmer-only")):
        n = _load(out_dir / f"{w}-km" / "eval" / "nll.json")
        g = _load(out_dir / f"{w}-km" / "eval" / "gen.json")
        s = g["systems"]["llink"]
        base = g["systems"].get("base", base)
        lines.append(f"| {label} | {g['n']} | {n['nll_injected']:.3f} / {n['nll_ablated']:.3f} "
                     f"({n['usage_gap']:.3f}) | {s['chrf']:.2f} [{s['chrf_ci'][0]:.2f}, "
                     f"{s['chrf_ci'][1]:.2f}] |")
    if base:
        lines.append(f"| base decoder, raw text | | | {base['chrf']:.2f} "
                     f"[{base['chrf_ci'][0]:.2f}, {base['chrf_ci'][1]:.2f}] |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path, help="the OUT folder of multilingual_vs_khmer.sh")
    ap.add_argument("--out", type=Path, help="write the tables to this Markdown file")
    args = ap.parse_args()
    text = tables(args.out_dir)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"written: {args.out}")


if __name__ == "__main__":
    main()
