"""Generation quality: resumable per-system output files, chrF / BLEU with intervals and tests.

Each system's outputs on the test items go to one JSONL file, one line per item
(``index``, ``source``, ``reference``, ``output``), written as batches finish, so an
interrupted run continues where it stopped. Scores are corpus-level sacrebleu chrF and
BLEU; intervals and paired p-values come from sacrebleu's paired bootstrap resampling
(:class:`sacrebleu.significance.PairedTest`, Koehn 2004).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from llink.backbones.batching import length_sorted_batches
from llink.eval.stats import group_indices
from llink.storage.fileio import atomic_path, read_jsonl, write_json_atomic

#: Systems ``llink eval gen`` knows, in report order.
SYSTEMS = ("llink", "base", "baseline", "ablated")
BOOTSTRAP_SAMPLES = 1000


@dataclass(frozen=True)
class GenItem:
    """One test item: its position in the test sample, foreign source, English reference
    and the group it reports under (where the pair came from, e.g. ``gettext``)."""

    index: int
    source: str
    reference: str
    group: str = ""
    lang: str = ""  # the language of the source text


def read_outputs(path: str | Path) -> dict[int, dict[str, Any]]:
    """Records of a system's output file by index (empty if the file does not exist)."""
    return {int(rec["index"]): rec for rec in read_jsonl(path)}


def generate_outputs(
    path: str | Path,
    items: Sequence[GenItem],
    generate: Callable[[list[str]], list[str]],
    settings: dict[str, Any],
    batch_size: int = 32,
    length: Callable[[str], int] = len,
    progress: bool = True,
    desc: str = "generate",
) -> list[str]:
    """Outputs of ``generate`` for every item, kept in ``path`` (JSONL) and reused on rerun.

    Lines already in the file are kept when the side file ``<path>.settings.json``
    matches ``settings`` (which name the model by a content digest of its files) and the line's source and reference match the item; the rest
    are generated in batches of similar ``length`` and appended as each batch finishes.
    When all are there the file is rewritten in index order.
    """
    path = Path(path)
    meta_path = path.with_name(path.stem + ".settings.json")
    old = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else None
    same = old == settings
    if old is not None and not same and path.exists():
        changed = sorted(k for k in {*old, *settings} if old.get(k) != settings.get(k))
        print(f"{path.name}: saved outputs came from other settings or another model "
              f"({', '.join(changed)} changed); discarding them and generating again")
    done = read_outputs(path) if same else {}
    done = {
        i: r for i, r in done.items()
        if i < len(items) and items[i].index == i and r.get("source") == items[i].source
        and r.get("reference") == items[i].reference
    }
    todo = [it for it in items if it.index not in done]
    if todo:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not same:
            write_json_atomic(meta_path, settings)
        _rewrite(path, [done[i] for i in sorted(done)])
        batches = list(length_sorted_batches([length(it.source) for it in todo], batch_size))
        with path.open("a", encoding="utf-8") as fh:
            for idx in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
                chunk = [todo[i] for i in idx]
                outs = generate([it.source for it in chunk])
                for it, out in zip(chunk, outs, strict=True):
                    rec = {"index": it.index, "source": it.source, "reference": it.reference,
                           "group": it.group, "lang": it.lang, "output": out}
                    done[it.index] = rec
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                fh.flush()
    records = [done[it.index] for it in items]
    _rewrite(path, records)
    return [r["output"] for r in records]


def _rewrite(path: Path, records: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def _metrics() -> dict[str, Any]:
    from sacrebleu.metrics import BLEU, CHRF

    return {"bleu": BLEU(), "chrf": CHRF()}


def score_systems(
    outputs: dict[str, list[str]], references: list[str], n_samples: int = BOOTSTRAP_SAMPLES
) -> dict[str, Any]:
    """Corpus chrF and BLEU of each system with 95% bootstrap intervals, and paired tests.

    Every ordered pair (a, b) with a listed before b gets sacrebleu's paired bootstrap
    test (``n_samples`` resamples, seed ``$SACREBLEU_SEED`` or 12345). An interval is
    the bootstrap mean ± half the width of the central 95% of resampled scores, as
    sacrebleu reports it.
    """
    from sacrebleu.significance import PairedTest

    names = list(outputs)
    for name, hyps in outputs.items():
        if len(hyps) != len(references):
            raise ValueError(f"{name}: {len(hyps)} outputs for {len(references)} references")
    systems: dict[str, dict[str, Any]] = {}
    paired: list[dict[str, Any]] = []
    signatures: dict[str, str] = {}
    for i, anchor in enumerate(names):
        named = [(n, outputs[n]) for n in names[i:]]
        sigs, results = PairedTest(named, _metrics(), [references], test_type="bs",
                                   n_samples=n_samples)()
        keys = {_metric_key(k): k for k in results if k != "System"}
        for metric, key in keys.items():
            signatures[metric] = str(sigs[key])
            for pos, res in enumerate(results[key]):
                name = named[pos][0]
                if pos == 0:
                    systems.setdefault(anchor, {})[metric] = float(res.score)
                    systems[anchor][f"{metric}_ci"] = [float(res.mean - res.ci),
                                                       float(res.mean + res.ci)]
                else:
                    a_score = systems[anchor][metric]
                    paired.append({"a": anchor, "b": name, "metric": metric,
                                   "a_score": a_score, "b_score": float(res.score),
                                   "delta": a_score - float(res.score),
                                   "p_value": float(res.p_value)})
    settings = {
        "test": "paired bootstrap resampling (sacrebleu.significance.PairedTest, test_type=bs)",
        "n_samples": n_samples,
        "seed": os.environ.get("SACREBLEU_SEED", "12345"),
        "ci": "95%: bootstrap mean ± half the 2.5-97.5 percentile range",
        "signatures": signatures,
    }
    return {"systems": {n: systems[n] for n in names}, "paired": paired, "scoring": settings}


#: fixed re-pairings of outputs with other items' references in :func:`input_dependence`
SHUFFLES = 5


def input_dependence(
    outputs: Sequence[str], references: Sequence[str], shuffles: int = SHUFFLES, seed: int = 0,
    n_samples: int = BOOTSTRAP_SAMPLES,
) -> dict[str, Any]:
    """How much of a system's chrF comes from reading its input.

    Corpus chrF pays for generic English: one fixed sentence repeated for every item can
    score as much as a system (on the main job's sample, "Select the file to be saved in
    the current document." scores 14.9). So each system is also scored against the
    references of *other* items (``shuffles`` fixed re-pairings, each a rotation by a
    seeded offset, so no output meets its own reference; averaged): ``margin`` = chrF
    against its own references minus that. An input-blind system has margin 0 whatever its
    chrF. ``p_value``: sacrebleu's paired bootstrap test (``n_samples`` resamples) of the
    outputs against the first re-pairing (corpus chrF sums per-item statistics, so scoring
    rotated references equals scoring rotated outputs against the true ones): small when
    the system reads its input. ``distinct`` is the fraction of different outputs,
    ``top_share`` how many items got the most common one (``top``)."""
    import random
    from collections import Counter

    n = len(outputs)
    if n != len(references):
        raise ValueError(f"{n} outputs for {len(references)} references")
    outs, refs = list(outputs), list(references)
    chrf = _metrics()["chrf"]
    own = float(chrf.corpus_score(outs, [refs]).score)
    rng = random.Random(seed)
    # output i meets reference i + k: the outputs rotated by -k against the true references
    rotated = [outs[-k:] + outs[:-k]
               for k in (rng.randrange(1, n) for _ in range(shuffles if n > 1 else 0))]
    others = [float(chrf.corpus_score(r, [refs]).score) for r in rotated]
    p_value = float("nan")
    if rotated and n_samples:
        other = rotated[0]
        if other == outs:  # an input-blind system: nothing to test (sacrebleu says 0.001)
            p_value = 1.0
        else:
            test = score_systems({"own": outs, "other": other}, refs, n_samples)
            p_value = next(r["p_value"] for r in test["paired"] if r["metric"] == "chrf")
    shuffled = sum(others) / len(others) if others else float("nan")
    top, count = Counter(outs).most_common(1)[0] if n else ("", 0)
    return {"chrf": own, "chrf_other_references": shuffled, "margin": own - shuffled,
            "shuffles": len(others), "p_value": p_value,
            "distinct": len(set(outs)) / n if n else 0.0,
            "top_share": count / n if n else 0.0, "top": top}


def score_by_group(
    outputs: dict[str, list[str]], references: list[str], groups: Sequence[str],
    n_samples: int = BOOTSTRAP_SAMPLES,
) -> dict[str, Any]:
    """:func:`score_systems` on the items of each group (e.g. each source of the corpus)."""
    out: dict[str, Any] = {}
    for g, idx in group_indices(groups).items():
        sub = {name: [hyps[i] for i in idx] for name, hyps in outputs.items()}
        res = score_systems(sub, [references[i] for i in idx], n_samples)
        res.pop("scoring")
        out[g] = {"n": len(idx), **res}
    return out


def format_group_chrf(by_group: dict[str, Any], title: str, label: str = "group",
                      marks: dict[str, str] | None = None) -> str:
    """chrF with its 95% interval per group (a source, a language) and system; ``marks``
    are appended to group names (e.g. " (0-shot)")."""
    systems = list(next(iter(by_group.values()))["systems"])
    lines = [title, f"{label:<18} {'n':>5} " + " ".join(f"{s:>22}" for s in systems)]
    for g, r in by_group.items():
        cells = [f"{r['systems'][s]['chrf']:6.2f} {_ci(r['systems'][s]['chrf_ci']):>15}"
                 for s in systems]
        name = f"{g}{(marks or {}).get(g, '')}"
        lines.append(f"{name:<18} {r['n']:>5} " + " ".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)


def _metric_key(name: str) -> str:
    low = name.lower()
    if low.startswith("bleu"):
        return "bleu"
    if low.startswith("chrf"):
        return "chrf"
    raise ValueError(f"unexpected sacrebleu metric {name!r}")


def format_gen_table(result: dict[str, Any]) -> str:
    """A plain-text table of chrF / BLEU with intervals, then the paired tests."""
    lines = [f"Generation quality on {result['n']} test items (corpus level, 95% bootstrap CI)",
             f"{'system':<10} {'chrF':>7} {'chrF CI':>15} {'BLEU':>7} {'BLEU CI':>15}"]
    for name, s in result["systems"].items():
        lines.append(
            f"{name:<10} {s['chrf']:>7.2f} {_ci(s['chrf_ci']):>15} {s['bleu']:>7.2f} "
            f"{_ci(s['bleu_ci']):>15}"
        )
    for p in result["paired"]:
        lines.append(f"  {p['a']} vs {p['b']} {p['metric']}: {p['a_score']:.2f} vs "
                     f"{p['b_score']:.2f} (delta {p['delta']:+.2f}, p = {p['p_value']:.4f})")
    if result.get("input_dependence"):
        lines.append("Input dependence: chrF against other items' references (the same "
                     "outputs, re-paired), margin = own - other; distinct outputs; the most "
                     "common output's share")
        for name, d in result["input_dependence"].items():
            lines.append(f"  {name:<10} other {d['chrf_other_references']:6.2f}  margin "
                         f"{d['margin']:+6.2f} (p = {d['p_value']:.3f})  distinct "
                         f"{d['distinct']:.2f}  top "
                         f"{d['top_share']:.2f} {d['top'][:50]!r}")
    if result.get("by_source"):
        lines.append(format_group_chrf(result["by_source"], "chrF per source (95% CI):",
                                       "source"))
    return "\n".join(lines)


def _ci(ci: Sequence[float]) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]"
