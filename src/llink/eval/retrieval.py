"""Retrieval evaluation: does the foreign sentence's vector find its English teacher state?

Every query ranks the whole pool of English keys by cosine similarity; the correct
key's rank gives R@1/5/10, MRR and mean rank. Ties count half (the expected rank
under random tie-breaking), which matters for sparse scores such as token overlap.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from llink.eval.stats import group_indices

METRIC_NAMES = ("R@1", "R@5", "R@10", "MRR", "mean_rank")
_LATIN = re.compile(r"[A-Za-z][A-Za-z0-9_.+-]*[A-Za-z0-9]|[A-Za-z]")


def ranks_from_scores(scores: torch.Tensor) -> torch.Tensor:
    """Expected rank of the diagonal entry in each row of a square score matrix."""
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"need a square score matrix, got {tuple(scores.shape)}")
    diag = scores.diagonal().unsqueeze(1)
    greater = (scores > diag).sum(1).float()
    equal = (scores == diag).sum(1).float() - 1.0
    return 1.0 + greater + 0.5 * equal


def metrics_from_ranks(ranks: torch.Tensor) -> dict[str, float]:
    """R@1, R@5, R@10, MRR and mean rank from a vector of ranks."""
    return {
        "R@1": float((ranks <= 1).float().mean()),
        "R@5": float((ranks <= 5).float().mean()),
        "R@10": float((ranks <= 10).float().mean()),
        "MRR": float((1.0 / ranks).mean()),
        "mean_rank": float(ranks.mean()),
    }


def cosine_scores(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """All-pairs cosine similarity [Nq, Nk]."""
    return F.normalize(queries.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T


def retrieval_ranks(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Rank of ``keys[i]`` for ``queries[i]`` among all keys, by cosine similarity [N]."""
    if queries.shape[0] != keys.shape[0]:
        raise ValueError("queries and keys must be aligned pairs")
    return ranks_from_scores(cosine_scores(queries, keys))


def retrieval_metrics(queries: torch.Tensor, keys: torch.Tensor) -> dict[str, float]:
    """Retrieval of ``keys[i]`` by ``queries[i]`` among all keys, by cosine similarity."""
    return metrics_from_ranks(retrieval_ranks(queries, keys))


def ranks_within_groups(
    groups: Sequence[str], rank_rows: Callable[[list[int]], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Ranks computed group by group, each query among its own group's pairs (e.g. its
    language: one English sentence is in several languages' pools), put back in the order
    of ``groups``. ``rank_rows(rows)`` gives {system: ranks of those rows}."""
    out: dict[str, torch.Tensor] = {}
    for rows in group_indices(groups).values():
        for name, r in rank_rows(rows).items():
            out.setdefault(name, torch.empty(len(groups)))[torch.tensor(rows)] = r.float()
    return out


def grouped_retrieval_metrics(
    queries: torch.Tensor, keys: torch.Tensor, groups: Sequence[str] | None = None
) -> dict[str, float]:
    """:func:`retrieval_metrics` with each query ranked among the keys of its own group;
    one group or ``groups=None``: the whole pool."""
    if not groups or len(set(groups)) < 2:
        return retrieval_metrics(queries, keys)
    ranks = ranks_within_groups(
        groups, lambda rows: {"": retrieval_ranks(queries[rows], keys[rows])})
    return metrics_from_ranks(ranks[""])


def metrics_by_group(ranks: torch.Tensor, groups: Sequence[str]) -> dict[str, dict[str, float]]:
    """Metrics of the queries of each group (ranked in the whole pool), largest group first."""
    idx: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        idx.setdefault(g, []).append(i)
    ordered = sorted(idx.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    return {g: {**metrics_from_ranks(ranks[rows]), "n": len(rows)} for g, rows in ordered}


def latin_tokens(text: str) -> set[str]:
    """Lower-cased Latin-script tokens (product names, key names, numbers with letters)."""
    return {m.group(0).lower() for m in _LATIN.finditer(text)}


def latin_overlap_scores(foreign: Sequence[str], english: Sequence[str]) -> torch.Tensor:
    """Jaccard overlap of Latin tokens between every foreign and every English text."""
    f_sets = [latin_tokens(t) for t in foreign]
    e_sets = [latin_tokens(t) for t in english]
    vocab = {tok: i for i, tok in enumerate(sorted(set().union(*f_sets, *e_sets)))}
    if not vocab:
        return torch.zeros(len(foreign), len(english))
    fm = torch.zeros(len(foreign), len(vocab))
    em = torch.zeros(len(english), len(vocab))
    for r, s in enumerate(f_sets):
        fm[r, [vocab[t] for t in s]] = 1.0
    for r, s in enumerate(e_sets):
        em[r, [vocab[t] for t in s]] = 1.0
    inter = fm @ em.T
    union = fm.sum(1, keepdim=True) + em.sum(1).unsqueeze(0) - inter
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.zeros_like(inter))


def latin_overlap_ranks(foreign: Sequence[str], english: Sequence[str]) -> torch.Tensor:
    """The trivial floor: ranks when sentences are matched by shared Latin tokens alone."""
    return ranks_from_scores(latin_overlap_scores(foreign, english))


def latin_overlap_metrics(foreign: Sequence[str], english: Sequence[str]) -> dict[str, float]:
    """The trivial floor: match sentences by shared Latin-script tokens alone."""
    return metrics_from_ranks(latin_overlap_ranks(foreign, english))


def centred(x: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
    """Subtract ``mean`` (default: the pool's own mean) from every row."""
    return x - (x.mean(0) if mean is None else mean)


def format_group_table(by_group: dict[str, dict[str, dict[str, float]]], metric: str = "R@1",
                       title: str = "") -> str:
    """One metric per group (rows) and system (columns): ``by_group[group][system]``."""
    systems = list(next(iter(by_group.values()), {}))
    short = [s.split(" (")[0] for s in systems]
    width = max([len(g) for g in by_group] + [6])
    lines = ([title] if title else []) + [
        f"{'source':<{width}}  {'n':>5}  " + "  ".join(f"{s:>16}" for s in short)]
    for g, rows in by_group.items():
        n = int(next(iter(rows.values()))["n"]) if rows else 0
        lines.append(f"{g:<{width}}  {n:>5}  " + "  ".join(
            f"{rows[s][metric]:>16.3f}" for s in systems))
    return "\n".join(lines)


def format_language_table(by_lang: dict[str, dict[str, dict[str, float]]],
                          zero_shot: set[str]) -> str:
    """Per-language R@1: the projector beside the encoder's own on the same pool (and the
    decoder-native row where there is one); zero-shot languages last, marked."""
    first = next(iter(by_lang.values()))
    ours = next(k for k in first if k.startswith("LLINK"))
    enc = next(k for k in first if k.startswith("encoder"))
    native = next((k for k in first if k.startswith("decoder-native")), None)
    head = f"{'language':<12} {'pool':>5} {'LLINK R@1':>10} {'encoder':>8} {'diff':>7}"
    lines = ["R@1 per language (each language's test pairs ranked among themselves)",
             head + (f" {'dec-native':>10}" if native else "")]
    for lang, r in sorted(by_lang.items(), key=lambda kv: (kv[0] in zero_shot, kv[0])):
        name = f"{lang} (0-shot)" if lang in zero_shot else lang
        a, e = r[ours]["R@1"], r[enc]["R@1"]
        line = f"{name:<12} {r[ours]['n']:>5} {a:>10.3f} {e:>8.3f} {a - e:>+7.3f}"
        lines.append(line + (f" {r[native]['R@1']:>10.3f}" if native else ""))
    return "\n".join(lines)


def format_table(rows: dict[str, dict[str, float]], title: str = "") -> str:
    """A plain-text table of retrieval metrics, one row per system."""
    width = max([len(k) for k in rows] + [6])
    head = f"{'system':<{width}}  " + "  ".join(f"{m:>9}" for m in METRIC_NAMES)
    lines = ([title] if title else []) + [head, "-" * len(head)]
    for name, m in rows.items():
        cells = "  ".join(
            f"{m[k]:>9.1f}" if k == "mean_rank" else f"{m[k]:>9.3f}" for k in METRIC_NAMES
        )
        lines.append(f"{name:<{width}}  {cells}")
    return "\n".join(lines)
