"""Tables comparing the runs of ``benchmarks/slot_variants.sh`` (or any folder of runs).

    python -m benchmarks.compare_gen runs/variants [--out benchmarks/results/slot_variants.md]
        [--constant "A fixed sentence."]   # also score one sentence written for every item

Reads what the runs saved (nothing is recomputed but the scores): Stage A retrieval on
the test pool and the out-of-domain UDHR pool (``eval/retrieval*.json``), Stage B's dev
NLL (``stage_b.summary.json``), and every system's generations on the same held-out
items (``eval/gen*/<system>.jsonl``). Generations of all runs are scored together, so
the paired bootstrap tests compare systems on identical items: each run's ``llink``
outputs are named after the run, the direct fine-tuning baseline and the base decoder
come from the run that holds them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.common import print_and_write
from llink.eval.generation import input_dependence, read_outputs, score_by_group, score_systems
from llink.eval.numbers import numeric_fidelity

#: generation pools: folder under eval/ → title
POOLS = {
    "gen": "held-out test sample (hash order)",
    "gen-udhr-en-km": "out-of-domain UDHR paragraphs",
    "gen-numbers": "held-out test items whose reference has a number",
    "gen-everyday-en-km": "everyday sentences (translated with --strict)",
}


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def retrieval_rows(runs: list[Path]) -> list[str]:
    """Stage A runs: test and UDHR retrieval, per source, encoder reference."""
    groups: list[str] = []
    rows = []
    for run in runs:
        test = _json(run / "eval" / "retrieval.json")
        if not test or not run.name.startswith("a-"):  # Stage A runs are named a-*
            continue
        udhr = _json(run / "eval" / "retrieval-udhr-en-km.json") or {}
        name = next(k for k in test["rows"] if k.startswith("LLINK"))
        enc = next(k for k in test["rows"] if k.startswith("encoder"))
        groups = groups or list(test["by_source"])
        rows.append((run.name, test, udhr, name, enc))
    head = ["Stage A run", "test R@1", "MRR", *(f"{g} R@1" for g in groups), "UDHR R@1",
            "UDHR MRR"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rname, test, udhr, name, _enc in rows:
        u = udhr.get("rows", {}).get(name, {})
        cells = [rname, f"{test['rows'][name]['R@1']:.3f}", f"{test['rows'][name]['MRR']:.3f}",
                 *(f"{test['by_source'][g][name]['R@1']:.3f}" for g in groups),
                 f"{u.get('R@1', float('nan')):.3f}", f"{u.get('MRR', float('nan')):.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if rows:
        _, test, udhr, _, enc = rows[0]
        u = udhr.get("rows", {}).get(enc, {})
        cells = ["encoder's own (reference)", f"{test['rows'][enc]['R@1']:.3f}",
                 f"{test['rows'][enc]['MRR']:.3f}",
                 *(f"{test['by_source'][g][enc]['R@1']:.3f}" for g in groups),
                 f"{u.get('R@1', float('nan')):.3f}", f"{u.get('MRR', float('nan')):.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
        lines.append(f"\nPools: test {test['pool_size']} pairs (per source: queries of the "
                     f"source against the whole pool); UDHR {udhr.get('pool_size', 0)} pairs.")
    return lines


def stage_b_rows(runs: list[Path]) -> list[str]:
    """Stage B runs: dev NLL injected / ablated / gap, training time."""
    lines = ["| Stage B run | dev NLL injected | ablated | gap | base on raw | train min |",
             "|---|---|---|---|---|---|"]
    for run in runs:
        s = _json(run / "stage_b.summary.json")
        if s:
            f = s["dev_final"]
            lines.append(f"| {run.name} | {f['nll_injected']:.3f} | {f['nll_ablated']:.3f} | "
                         f"{f['usage_gap']:.3f} | {f.get('nll_base_raw', float('nan')):.3f} | "
                         f"{s['train_seconds'] / 60:.1f} |")
    s = _json(runs[0].parent / "baseline" / "baseline.summary.json") if runs else None
    if s:
        lines.append(f"\nDirect fine-tuning baseline: {json.dumps(_brief(s))}")
    return lines


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    keep = {k: v for k, v in summary.items() if k in ("dev_final", "train_seconds", "steps")}
    return json.loads(json.dumps(keep, default=str))


def pool_outputs(runs: list[Path], pool: str) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """References, groups and each system's outputs on the items every system has."""
    found: dict[str, dict[int, dict[str, Any]]] = {}
    for run in runs:
        for path in sorted((run / "eval" / pool).glob("*.jsonl")):
            recs = read_outputs(path)
            if recs:
                found[run.name if path.stem == "llink" else path.stem] = recs
    if not found:
        return [], [], {}
    common = sorted(set.intersection(*(set(r) for r in found.values())))
    first = next(iter(found.values()))
    refs = [first[i]["reference"] for i in common]
    for name, recs in found.items():
        if [recs[i]["reference"] for i in common] != refs:
            raise SystemExit(f"{pool}: {name} was scored on other items")
    groups = [first[i].get("group") or "unknown" for i in common]
    return refs, groups, {n: [r[i]["output"] for i in common] for n, r in found.items()}


def gen_rows(runs: list[Path], pool: str, constant: str | None = None
             ) -> tuple[list[str], dict[str, Any]]:
    """chrF / BLEU with intervals, per source chrF, paired p against the baseline and base;
    ``constant``: a row for that one sentence written for every item (a floor)."""
    refs, groups, outs = pool_outputs(runs, pool)
    if not outs:
        return [], {}
    if constant:
        outs["fixed sentence"] = [constant] * len(refs)
    res = score_systems(outs, refs)
    by = score_by_group(outs, refs, groups) if len(set(groups)) > 1 else {}
    p = {(r["a"], r["b"], r["metric"]): r["p_value"] for r in res["paired"]}

    def pval(a: str, b: str) -> str:
        v = p.get((a, b, "chrf"), p.get((b, a, "chrf")))
        return "" if v is None or a == b else f"{v:.3f}"

    dep = {n: input_dependence(o, refs) for n, o in outs.items()}
    head = ["system", "chrF", "95% CI", "BLEU", "margin (p)", "top share",
            *(f"{g} chrF (n={by[g]['n']})" for g in by),
            "p vs default", "p vs baseline", "p vs base"]
    lines = [f"{POOLS.get(pool, pool)}: {len(refs)} items, greedy, 48 new tokens; paired "
             "bootstrap (1,000 resamples)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = sorted(outs, key=lambda n: -res["systems"][n]["chrf"])
    for n in order:
        s = res["systems"][n]
        cells = [n, f"{s['chrf']:.2f}", f"{s['chrf_ci'][0]:.2f}–{s['chrf_ci'][1]:.2f}",
                 f"{s['bleu']:.2f}", f"{dep[n]['margin']:+.2f} (p {dep[n]['p_value']:.3f})",
                 f"{dep[n]['top_share']:.2f}",
                 *(f"{by[g]['systems'][n]['chrf']:.2f}" for g in by),
                 pval(n, "default") if "default" in outs else "",
                 pval(n, "baseline") if "baseline" in outs else "",
                 pval(n, "base") if "base" in outs else ""]
        lines.append("| " + " | ".join(cells) + " |")
    out: dict[str, Any] = {"n": len(refs), **res, "input_dependence": dep, "by_source": by}
    if pool == "gen-numbers":
        num = numeric_fidelity(refs, outs, groups)
        out["numbers"] = num
        lines += ["", "Numbers kept (every number of the reference in the output), 95% Wilson "
                  "interval:", "", "| system | kept | 95% CI |", "|---|---|---|"]
        for n in order:
            s = num["systems"][n]
            lines.append(f"| {n} | {s['hits']}/{num['n_with_numbers']} ({s['fraction']:.2f}) | "
                         f"{s['ci'][0]:.2f}–{s['ci'][1]:.2f} |")
    return lines, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="folder of run folders (e.g. runs/variants)")
    ap.add_argument("--out", help="markdown file to write (and .json beside it)")
    ap.add_argument("--constant", metavar="SENTENCE",
                    help="also score this one sentence written for every item (a floor)")
    args = ap.parse_args()
    runs = sorted(p for p in Path(args.root).iterdir() if p.is_dir())
    md = [f"# Variants in {args.root}", "", "## Stage A retrieval", "", *retrieval_rows(runs),
          "", "## Stage B dev NLL", "", *stage_b_rows(runs)]
    data: dict[str, Any] = {}
    for pool in POOLS:
        lines, res = gen_rows(runs, pool, args.constant)
        if lines:
            md += ["", f"## Generation: {POOLS[pool]}", "", *lines]
            data[pool] = res
    text = "\n".join(md) + "\n"
    print_and_write(text, data, args.out)


if __name__ == "__main__":
    main()
