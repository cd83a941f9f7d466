"""``llink report``: one self-contained HTML (or Markdown + PNG) report of a run folder.

The report is built as a list of blocks (headings, paragraphs, tables, images,
preformatted text) and then rendered, so HTML and Markdown say the same thing.
Sections whose files are missing say which command produces them.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llink.reporting import plots
from llink.reporting.runs import STAGES, RunFolder, load_run
from llink.storage.fileio import write_text_atomic


@dataclass
class Block:
    """One element of a report: ``kind`` is h1, h2, h3, p, table, img, pre (JSON) or code
    (Python)."""

    kind: str
    text: str = ""
    headers: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    image: Path | None = None


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(x, int | float) for x in v):
        return f"[{_fmt(v[0], digits)}, {_fmt(v[1], digits)}]"
    return str(v)


def _table(headers: list[str], rows: list[list[Any]], digits: int = 3) -> Block:
    return Block("table", headers=tuple(headers),
                 rows=tuple(tuple(_fmt(c, digits) for c in r) for r in rows))


def _missing(what: str, command: str) -> Block:
    return Block("p", f"{what}: not run for this folder (`{command}`).")


def _overview(run: RunFolder) -> list[Block]:
    out = [Block("h2", "Run")]
    cfg = run.config or {}
    model = cfg.get("model", {})
    rows = [
        ["run folder", str(run.path)],
        ["encoder", model.get("encoder")],
        ["decoder", model.get("decoder")],
        ["slots K", model.get("num_slots")],
        ["device", cfg.get("device")],
        ["seed", cfg.get("seed")],
    ]
    v = run.versions or {}
    for key in ("llink", "torch", "transformers", "peft", "python", "git_commit"):
        if v.get(key):
            rows.append([key, v[key]])
    out.append(_table(["", ""], rows))
    if run.data:
        counts = run.data.get("splits", run.data)
        out += [Block("h3", "Data"),
                _table(["split", "pairs"], [[k, c] for k, c in counts.items()
                                             if isinstance(c, int | float)])]
    return out


def _training(run: RunFolder, img_dir: Path) -> list[Block]:
    out = [Block("h2", "Training curves")]
    if not run.logs:
        return out + [_missing("training logs", "llink run")]
    for stage in STAGES:
        recs = run.logs.get(stage)
        if not recs:
            continue
        png = plots.stage_figure(stage, recs, img_dir / f"{stage}.png")
        last = max((r.get("step", 0) for r in recs), default=0)
        summary = run.summaries.get(stage, {})
        secs = summary.get("train_seconds")
        text = f"{stage.replace('_', ' ')}: {last:,} steps logged"
        text += f", {secs / 60:.1f} min of training." if isinstance(secs, int | float) else "."
        out.append(Block("p", text))
        if png:
            out.append(Block("img", stage, image=png))
    return out


def _retrieval(run: RunFolder) -> list[Block]:
    r = run.evals.get("retrieval")
    if not r:
        return [Block("h2", "Retrieval"), _missing("retrieval", "llink eval retrieval")]
    metrics = ["R@1", "R@5", "R@10", "MRR", "mean_rank"]
    rows = [[name, *(m.get(k) for k in metrics)] for name, m in r.get("rows", {}).items()]
    return [Block("h2", f"Retrieval (pool of {r.get('pool_size', '?')} held-out pairs)"),
            _table(["system", *metrics], rows)]


def _nll(run: RunFolder) -> list[Block]:
    n = run.evals.get("nll")
    if not n:
        return [Block("h2", "Answer NLL"), _missing("answer NLL", "llink eval nll")]
    names = ["nll", *sorted(k for k in run.evals if k.startswith("nll-"))]  # test, then others
    keys = ["examples", "nll_injected", "nll_ablated", "usage_gap", "nll_base_raw"]
    rows = [["test" if k == "nll" else k.removeprefix("nll-"),
             *(run.evals[k].get(x) for x in keys)] for k in names]
    return [Block("h2", "Answer NLL per token"),
            _table(["pairs", "n", "slots injected", "slots ablated", "gap",
                    "base decoder, raw text"], rows)]


def _generation(run: RunFolder, img_dir: Path) -> list[Block]:
    g = run.evals.get("gen")
    if not g:
        return [Block("h2", "Generation quality"), _missing("generation", "llink eval gen")]
    out = [Block("h2", f"Generation quality ({g.get('n', '?')} test sentences)")]
    dep = g.get("input_dependence") or {}
    rows = [[name, s.get("chrf"), s.get("chrf_ci"), s.get("bleu"), s.get("bleu_ci"),
             dep.get(name, {}).get("margin"), dep.get(name, {}).get("p_value"),
             dep.get(name, {}).get("top_share")]
            for name, s in g.get("systems", {}).items()]
    out.append(_table(["system", "chrF", "chrF 95% CI", "BLEU", "BLEU 95% CI", "input margin",
                       "margin p", "top share"], rows, digits=2))
    if dep:
        out.append(Block("p", "Input margin: chrF minus chrF of the same outputs scored "
                         "against other items' references (what reading the input adds; 0 "
                         "for an output that ignores it). Top share: how many items got the "
                         "system's most common output."))
    paired = g.get("paired") or []
    if paired:
        out.append(Block("h3", "Paired significance"))
        out.append(_table(["a", "b", "metric", "a score", "b score", "Δ (a − b)", "p-value"],
                          [[p.get("a"), p.get("b"), p.get("metric"), p.get("a_score"),
                            p.get("b_score"), p.get("delta"), p.get("p_value")]
                           for p in paired], digits=3))
    png = plots.scores_figure(g, img_dir / "scores.png")
    if png:
        out.append(Block("img", "chrF and BLEU", image=png))
    return out


def _judge(run: RunFolder, img_dir: Path) -> list[Block]:
    j = run.evals.get("judge")
    if not j:
        return [Block("h2", "LLM judge"), _missing("judge", "llink eval judge")]
    out = [Block("h2", "LLM judge (pairwise, both orders)"),
           Block("p", f"Judge: {j.get('judge', '?')}; prompt {j.get('prompt_version', '?')}. "
                      "A win counts only when both presentation orders agree.")]
    rows = [[c.get("a"), c.get("b"), c.get("n"), c.get("win"), c.get("tie"), c.get("loss"),
             c.get("win_rate"), c.get("win_rate_ci"), c.get("order_agreement")]
            for c in j.get("comparisons", [])]
    out.append(_table(["a", "b", "n", "win", "tie", "loss", "win rate", "95% CI",
                       "orders agree"], rows))
    png = plots.judge_figure(j, img_dir / "judge.png")
    if png:
        out.append(Block("img", "judge", image=png))
    return out


def _tokens_numbers(run: RunFolder) -> list[Block]:
    out: list[Block] = []
    t = run.evals.get("tokens")
    out.append(Block("h2", "Token budget"))
    if t:
        f, e = t.get("foreign", {}), t.get("english", {})
        r = t.get("ratio_foreign_to_slots", {})
        out.append(_table(
            ["", "median", "p90"],
            [["foreign text (decoder tokens)", f.get("median"), f.get("p90")],
             ["English reference (decoder tokens)", e.get("median"), e.get("p90")],
             ["slots (K + 2 markers)", t.get("slots"), t.get("slots")],
             ["foreign ÷ slots", r.get("median"), r.get("p90")]], digits=1))
    else:
        out.append(_missing("token budget", "llink eval tokens"))
    nums = run.evals.get("numbers")
    out.append(Block("h2", "Numeric fidelity"))
    if nums:
        out.append(Block("p", f"{nums.get('n_with_numbers', '?')} references contain numbers; "
                              "fraction of outputs that contain all of them:"))
        out.append(_table(["system", "fraction", "hits"],
                          [[k, v.get("fraction"), v.get("hits")]
                           for k, v in nums.get("systems", {}).items()]))
    else:
        out.append(_missing("numeric fidelity", "llink eval numbers"))
    return out


def _examples(run: RunFolder, count: int) -> list[Block]:
    if not run.generations:
        return []
    systems = list(run.generations)
    by_index: dict[Any, dict[str, Any]] = {}
    for name in systems:
        for rec in run.generations[name]:
            row = by_index.setdefault(rec.get("index"), {"source": rec.get("source"),
                                                         "reference": rec.get("reference")})
            row[name] = rec.get("output")
    rows = [[r.get("source"), r.get("reference"), *(r.get(s) for s in systems)]
            for _, r in sorted(by_index.items(), key=lambda kv: str(kv[0]).zfill(9))[:count]]
    return [Block("h2", "Example generations"),
            _table(["source", "reference", *systems], rows)]


def report_blocks(run: RunFolder, img_dir: Path, examples: int = 12) -> list[Block]:
    """All sections of the report, in order; figures are written into ``img_dir``."""
    blocks = [Block("h1", f"llink run report: {run.name}")]
    blocks += _overview(run)
    blocks += _training(run, img_dir)
    blocks += _retrieval(run)
    blocks += _nll(run)
    blocks += _generation(run, img_dir)
    blocks += _judge(run, img_dir)
    blocks += _tokens_numbers(run)
    blocks += _examples(run, examples)
    if run.config:
        blocks += [Block("h2", "Full configuration"),
                   Block("pre", json.dumps(run.config, indent=2, ensure_ascii=False))]
    return blocks


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;
padding:3px 8px;font-size:13px;vertical-align:top;text-align:left}th{background:#f3f3f3}
img{max-width:100%}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}"""


def render_html(blocks: list[Block]) -> str:
    """A self-contained HTML page: images are embedded as base64 data URIs."""
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
             f"<title>{html.escape(blocks[0].text)}</title><style>{_CSS}</style></head><body>"]
    for b in blocks:
        if b.kind in ("h1", "h2", "h3", "p"):
            parts.append(f"<{b.kind}>{html.escape(b.text)}</{b.kind}>")
        elif b.kind in ("pre", "code"):
            parts.append(f"<pre>{html.escape(b.text)}</pre>")
        elif b.kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.headers)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                           for row in b.rows)
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        elif b.kind == "img" and b.image:
            data = base64.b64encode(b.image.read_bytes()).decode("ascii")
            parts.append(f"<img alt='{html.escape(b.text)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[Block], relative_to: Path) -> str:
    """Markdown with images linked as PNG files relative to the report's folder."""
    lines: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            lines += ["#" * int(b.kind[1]) + " " + b.text, ""]
        elif b.kind == "p":
            lines += [b.text, ""]
        elif b.kind in ("pre", "code"):
            lines += ["```json" if b.kind == "pre" else "```python", b.text, "```", ""]
        elif b.kind == "table":
            lines.append("| " + " | ".join(_md_cell(h) for h in b.headers) + " |")
            lines.append("|" + "---|" * len(b.headers))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            lines.append("")
        elif b.kind == "img" and b.image:
            lines += [f"![{b.text}]({b.image.relative_to(relative_to).as_posix()})", ""]
    return "\n".join(lines)


def write_report(run_dir: str | Path, out: str | Path | None = None, fmt: str = "html",
                 examples: int = 12) -> Path:
    """Write the report of ``run_dir``; returns its path.

    ``fmt="html"`` writes one self-contained file (default ``run_dir/report.html``);
    ``fmt="md"`` writes ``report.md`` with its PNG figures in ``report_files/`` beside it.
    """
    if fmt not in ("html", "md"):
        raise ValueError(f"report format must be html or md, not {fmt!r}")
    run = load_run(run_dir)
    if run.is_empty():
        raise FileNotFoundError(f"{run.path} holds no config, training log or evaluation: "
                                "is it a run folder? (`llink run run_dir=...` makes one)")
    out = Path(out) if out else run.path / f"report.{fmt}"
    img_dir = out.parent / f"{out.stem}_files"
    blocks = report_blocks(run, img_dir, examples)
    if fmt == "html":
        write_text_atomic(out, render_html(blocks))
        for b in blocks:  # figures are embedded; the PNG copies are not needed
            if b.image:
                b.image.unlink(missing_ok=True)
        if img_dir.is_dir() and not any(img_dir.iterdir()):
            img_dir.rmdir()
    else:
        write_text_atomic(out, render_markdown(blocks, out.parent))
    return out
