"""The K curve: quality against the number of slots, pooled vs token slots.

    python -m benchmarks.k_curve runs/kcurve [--out benchmarks/results/k_curve.md]

Reads the run folders ``<source>-k<K>`` that ``benchmarks/k_curve.sh`` trains (nothing
is recomputed but the scores): Stage B's dev NLL, the answer NLL on the test sample and
on the UDHR paragraphs with the slots injected and ablated (``eval/nll*.json``), and the
``llink`` generations on the 500-item test sample and on the test items whose reference
has a number, all scored together so paired bootstrap tests compare identical items.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from benchmarks.common import print_and_write
from benchmarks.compare_gen import pool_outputs
from llink.eval.generation import input_dependence, score_systems
from llink.eval.numbers import numeric_fidelity

RUN_NAME = re.compile(r"^(pooled|tokens|all_tokens)-k(\d+)(?:-s(\d+))?$")
#: the row the others are tested against (the shipped default's design)
REFERENCE = "tokens-k8"


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def curve_runs(root: Path) -> list[Path]:
    """Run folders named ``<source>-k<K>[-s<seed>]``, by source, K, then seed."""
    def key(p: Path) -> tuple[str, int, int]:
        m = RUN_NAME.match(p.name)
        return m[1], int(m[2]), int(m[3] or 0)

    return sorted((p for p in root.iterdir() if p.is_dir() and RUN_NAME.match(p.name)), key=key)


def _pvalues(res: dict[str, Any], metric: str = "chrf") -> dict[str, float]:
    """Paired p of every system against :data:`REFERENCE`."""
    out = {}
    for r in res["paired"]:
        if r["metric"] == metric and REFERENCE in (r["a"], r["b"]):
            other = r["b"] if r["a"] == REFERENCE else r["a"]
            out[other] = r["p_value"]
    return out


def measure(root: Path) -> dict[str, Any]:
    """Every run's figures, keyed by run name."""
    runs = curve_runs(root)
    gen: dict[str, Any] = {}
    refs, _groups, outs = pool_outputs(runs, "gen")
    outs = {n: o for n, o in outs.items() if RUN_NAME.match(n)}  # LLINK runs only
    if outs:
        gen = score_systems(outs, refs)
        gen["n"] = len(refs)
    num: dict[str, Any] = {}
    nrefs, ngroups, nouts = pool_outputs(runs, "gen-numbers")
    nouts = {n: o for n, o in nouts.items() if RUN_NAME.match(n)}
    if nouts:
        num = numeric_fidelity(nrefs, nouts, ngroups)
        num["chrf"] = score_systems(nouts, nrefs)
    p = _pvalues(gen) if gen else {}
    rows = {}
    for run in runs:
        source, k, seed = RUN_NAME.match(run.name).groups()
        summ = _json(run / "stage_b.summary.json")
        test = _json(run / "eval" / "nll.json")
        udhr = _json(run / "eval" / "nll-udhr-en-km.json")
        row: dict[str, Any] = {"source": source, "K": int(k), "slot_tokens": int(k) + 2,
                               "seed": int(seed) if seed else None}
        if summ:
            row["dev_nll"] = summ["dev_final"]["nll_injected"]
            row["dev_gap"] = summ["dev_final"]["usage_gap"]
            row["train_min"] = summ["train_seconds"] / 60
        for key, d in (("test", test), ("udhr", udhr)):
            if d:
                row[f"{key}_nll"], row[f"{key}_gap"] = d["nll_injected"], d["usage_gap"]
                row[f"{key}_n"] = d["examples"]
        if run.name in gen.get("systems", {}):
            s = gen["systems"][run.name]
            dep = input_dependence(outs[run.name], refs)
            row.update(chrf=s["chrf"], chrf_ci=s["chrf_ci"], bleu=s["bleu"],
                       p_vs_reference=p.get(run.name), margin=dep["margin"],
                       margin_p=dep["p_value"], top_share=dep["top_share"],
                       distinct=dep["distinct"])
        if run.name in num.get("systems", {}):
            s = num["systems"][run.name]
            row.update(numbers_kept=s["hits"], numbers_n=num["n_with_numbers"],
                       numbers_ci=s["ci"], numbers_chrf=num["chrf"]["systems"][run.name]["chrf"])
        rows[run.name] = row
    return {"root": str(root), "reference": REFERENCE, "gen_n": gen.get("n"), "runs": rows}


def _f(row: dict[str, Any], key: str, fmt: str = ".3f") -> str:
    return format(row[key], fmt) if row.get(key) is not None else "–"


def markdown(res: dict[str, Any]) -> str:
    """One table: a row per (source, K)."""
    lines = [f"# K curve ({res['root']})", "",
             f"chrF on {res['gen_n']} held-out test items (hash sample), greedy, 48 new tokens; "
             f"p: paired bootstrap against {res['reference']} (1,000 resamples). NLL gap = "
             "ablated − injected answer NLL per token (test: 256 pairs; UDHR: 47 paragraphs).",
             "", "| slots | K | Stage B seed | decoder tokens | dev NLL | test NLL / gap | "
             "UDHR NLL / gap | chrF (95% CI) | p | margin (p) | top share | numbers kept | "
             "chrF, items with numbers | train min |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["runs"].items():
        ci = f" ({r['chrf_ci'][0]:.2f}–{r['chrf_ci'][1]:.2f})" if r.get("chrf_ci") else ""
        kept = (f"{r['numbers_kept']}/{r['numbers_n']}" if r.get("numbers_n") else "–")
        pv = "" if name == res["reference"] else _f(r, "p_vs_reference")
        lines.append(
            f"| {r['source']} | {r['K']} | {r['seed'] or 'default'} | {r['slot_tokens']} | "
            f"{_f(r, 'dev_nll')} | "
            f"{_f(r, 'test_nll')} / {_f(r, 'test_gap')} | {_f(r, 'udhr_nll')} / "
            f"{_f(r, 'udhr_gap')} | {_f(r, 'chrf', '.2f')}{ci} | {pv} | {_f(r, 'margin', '+.2f')} ({_f(r, 'margin_p')}) | "
            f"{_f(r, 'top_share', '.2f')} | {kept} | "
            f"{_f(r, 'numbers_chrf', '.2f')} | {_f(r, 'train_min', '.1f')} |")
    lines += ["", "decoder tokens: the K slots and the two `<foreign>` markers; the literals "
              "line (numbers, Latin words) is the same for every K. margin: chrF minus chrF "
              "of the same outputs against other items' references (what reading the input "
              "adds; 0 for a constant output); top share: the most common output's share.",
              "p compares items (bootstrap over the test sample), not training runs: see the "
              "seed rows for how far one run moves."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="folder of run folders <source>-k<K> (e.g. runs/kcurve)")
    ap.add_argument("--out", help="markdown file to write (and .json beside it)")
    args = ap.parse_args()
    res = measure(Path(args.root))
    text = markdown(res)
    print_and_write(text, res, args.out)


if __name__ == "__main__":
    main()
