"""Matplotlib figures of training curves and evaluation results, written as PNG files.

Every function takes plain data (log records, result dicts), writes one PNG and
returns its path, or ``None`` when there is nothing to draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from llink.reporting.runs import series  # noqa: E402

#: Panels of a stage's training figure: (title, keys drawn in it). Missing keys are skipped.
STAGE_PANELS: dict[str, list[tuple[str, list[str]]]] = {
    "stage_a": [
        ("contrastive loss", ["loss", "nce"]),
        ("temperature τ", ["tau"]),
        ("learning rate", ["lr"]),
        ("dev retrieval", ["dev_R@1", "dev_R@5", "dev_MRR"]),
    ],
    "stage_b": [
        ("train answer NLL (smoothed)", ["nll", "nll_ablated", "nll_mismatched"]),
        ("dev answer NLL", ["dev_nll_injected", "dev_nll_ablated", "dev_nll_base_raw"]),
        ("dev usage gap (ablated − injected)", ["dev_usage_gap"]),
        ("learning rate", ["lr_bridge", "lr_lora", "lr"]),
    ],
    "baseline": [
        ("train answer NLL (smoothed)", ["nll"]),
        ("dev answer NLL", ["dev_nll", "dev_nll_baseline", "dev_nll_base_raw"]),
        ("learning rate", ["lr", "lr_lora"]),
    ],
}

#: Keys whose per-step values are noisy enough to smooth for display.
_SMOOTH = {"loss", "nll", "nll_ablated", "nll_mismatched", "nce"}


def smooth(values: Sequence[float], window: int | None = None) -> list[float]:
    """Centred moving average (no lag); the window defaults to 1/20 of the series."""
    n = len(values)
    w = window or max(1, n // 20)
    half = w // 2
    out = []
    for i in range(n):
        chunk = values[max(0, i - half): min(n, i + half + 1)]
        out.append(sum(chunk) / len(chunk))
    return out


def _finish(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def stage_figure(stage: str, records: list[dict[str, Any]], path: Path) -> Path | None:
    """One figure of a stage's training curves, a panel per :data:`STAGE_PANELS` entry."""
    panels = []
    for title, keys in STAGE_PANELS.get(stage, []):
        lines = [(k, *series(records, k)) for k in keys]
        lines = [(k, xs, ys) for k, xs, ys in lines if xs]
        if lines:
            panels.append((title, lines))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels, strict=True):
        for key, xs, ys in lines:
            if key in _SMOOTH and len(ys) > 20:
                ax.plot(xs, ys, alpha=0.2, linewidth=0.8)
                ax.plot(xs, smooth(ys), label=key, color=ax.lines[-1].get_color())
            else:
                ax.plot(xs, ys, label=key, marker="o" if len(xs) < 15 else None, markersize=3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(lines) > 1 or lines[0][0].startswith("dev_"):
            ax.legend(fontsize=7)
    fig.suptitle(stage.replace("_", " "), fontsize=11)
    return _finish(fig, path)


def scores_figure(gen: dict[str, Any], path: Path) -> Path | None:
    """chrF and BLEU per system with their confidence intervals (from ``eval/gen.json``)."""
    systems = gen.get("systems") or {}
    if not systems:
        return None
    names = list(systems)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), squeeze=False)
    for ax, metric in zip(axes[0], ("chrf", "bleu"), strict=True):
        vals = [float(systems[n].get(metric, 0.0)) for n in names]
        err = [[0.0] * len(names), [0.0] * len(names)]
        for i, n in enumerate(names):
            ci = systems[n].get(f"{metric}_ci")
            if ci and len(ci) == 2:
                err[0][i] = max(0.0, vals[i] - float(ci[0]))
                err[1][i] = max(0.0, float(ci[1]) - vals[i])
        ax.bar(names, vals, yerr=err, capsize=4, color="#4C72B0")
        for i, v in enumerate(vals):  # the value sits above its interval
            ax.text(i, v + err[1][i], f"{v:.1f}", ha="center", va="bottom", fontsize=8)
        ax.set_title(f"{'chrF' if metric == 'chrf' else 'BLEU'} (95% CI), n={gen.get('n', '?')}",
                     fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    return _finish(fig, path)


def judge_figure(judge: dict[str, Any], path: Path) -> Path | None:
    """Win / tie / loss bars per comparison (from ``eval/judge.json``)."""
    comps = judge.get("comparisons") or []
    if not comps:
        return None
    labels = [f"{c['a']} vs {c['b']}" for c in comps]
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.55 * len(comps)))
    left = [0.0] * len(comps)
    for key, colour in (("win", "#55A868"), ("tie", "#CCCCCC"), ("loss", "#C44E52")):
        vals = [c.get(key, 0) / max(1, c.get("n", 1)) for c in comps]
        ax.barh(labels, vals, left=left, color=colour, label=key)
        left = [a + b for a, b in zip(left, vals, strict=True)]
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of items (first system's view)")
    ax.legend(ncol=3, fontsize=8, loc="lower right")
    ax.set_title(f"judge: {judge.get('judge', '?')}", fontsize=10)
    return _finish(fig, path)


def comparison_figure(
    runs: dict[str, list[dict[str, Any]]], key: str, title: str, path: Path
) -> Path | None:
    """One curve per run for ``key`` (the same stage across runs), for ``llink logs``."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    drawn = 0
    for name, records in runs.items():
        xs, ys = series(records, key)
        if not xs:
            continue
        drawn += 1
        if key in _SMOOTH and len(ys) > 20:
            ys = smooth(ys)
        ax.plot(xs, ys, label=name, marker="o" if len(xs) < 15 else None, markersize=3)
    if not drawn:
        plt.close(fig)
        return None
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _finish(fig, path)
