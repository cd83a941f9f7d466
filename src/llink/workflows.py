"""End-to-end jobs behind the CLI: each loads what it needs from a :class:`Config`.

The model and training modules know nothing of files or the command line; this
module is where configuration, data, models, caches and artifacts meet.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llink.backbones.decoder import FrozenDecoder
from llink.backbones.encoder import FrozenEncoder
from llink.backbones.loading import load_decoder, load_encoder, resolve_device
from llink.config import Config, DataConfig
from llink.data.english import read_english
from llink.data.pairs import Pair, read_pairs, source_group
from llink.data.splits import Splits, corpus_specs, is_held_out, load_splits
from llink.data.tasks import (
    ENGLISH_SOURCE,
    TaskExample,
    foreign_length_ok,
    read_task_file,
    translation_examples,
)
from llink.eval import EvalError
from llink.eval.accepted import Accept, accepted_answers, format_accepted, read_accept
from llink.eval.generation import SYSTEMS as GEN_SYSTEMS
from llink.eval.generation import (
    GenItem,
    format_gen_table,
    format_group_chrf,
    generate_outputs,
    input_dependence,
    read_outputs,
    score_by_group,
    score_systems,
)
from llink.eval.judge import PROMPT_VERSION, PairItem, judge_items, load_prompt, make_judge
from llink.eval.judge import summarise as summarise_judgements
from llink.eval.judge import write_records as write_judge_records
from llink.eval.numbers import extract_numbers, numeric_fidelity
from llink.eval.retrieval import (
    format_group_table,
    format_language_table,
    format_table,
    latin_overlap_ranks,
    metrics_by_group,
    metrics_from_ranks,
    ranks_within_groups,
    retrieval_ranks,
)
from llink.eval.tokens import token_budget
from llink.method.bridge import SlotBridge, build_token_reader
from llink.method.inject import PromptFormat
from llink.method.model import LLINK, PromptedDecoder, load_baseline, load_llink
from llink.method.projection import StageAArtifact, load_stage_a
from llink.storage.cached_features import (
    decoder_native_vectors,
    encoder_token_states,
    encoder_vectors,
    features_root,
    teacher_vectors,
)
from llink.storage.checkpoints import check_folder, folder_digest, load_json
from llink.storage.fileio import read_jsonl, write_json_atomic
from llink.storage.runlog import write_run_info
from llink.train import distributed as dist
from llink.train.baseline import train_baseline
from llink.train.loop import mixed_precision_of
from llink.train.stage_a import compute_features, train_stage_a
from llink.train.stage_b import EncodedExamples, evaluate_nll, tokenize_examples, train_stage_b
from llink.train.trainer import has_saved_state


@dataclass
class Session:
    """A config plus lazily loaded frozen models, shared by the jobs of one command."""

    cfg: Config
    progress: bool = True
    _encoder: FrozenEncoder | None = field(default=None, repr=False)
    _decoder: FrozenDecoder | None = field(default=None, repr=False)
    _splits: Splits | None = field(default=None, repr=False)
    _encoder_mean: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Under `torchrun` / `accelerate launch`: join the process group; only rank 0 shows bars.
        if dist.init_from_env(self.cfg.device) and dist.is_main():
            print(f"{dist.world_size()} processes ({dist.backend_name()}), batches split over them")
        self.progress = self.progress and dist.is_main()
        precision = mixed_precision_of(self.cfg.compute)  # accelerate launch --mixed_precision
        if precision != self.cfg.compute.mixed_precision:
            self.cfg.compute.mixed_precision = precision
            if dist.is_main():
                print(f"compute.mixed_precision={precision} (accelerate launch --mixed_precision)")

    @property
    def device(self) -> torch.device:
        return resolve_device(self.cfg.device)

    @property
    def encoder(self) -> FrozenEncoder:
        if self._encoder is None:
            t = time.time()
            with dist.main_first():  # downloads / offline conversion happen once
                self._encoder = load_encoder(self.cfg.model, self.device)
            print(f"encoder: {self.cfg.model.encoder} (dim {self._encoder.dim}) "
                  f"loaded in {time.time() - t:.1f}s")
        return self._encoder

    @property
    def decoder(self) -> FrozenDecoder:
        if self._decoder is None:
            t = time.time()
            with dist.main_first():
                self._decoder = load_decoder(self.cfg.model, self.device)
            print(f"decoder: {self.cfg.model.decoder} (hidden {self._decoder.hidden_size}) "
                  f"loaded in {time.time() - t:.1f}s")
        return self._decoder

    @property
    def splits(self) -> Splits:
        if self._splits is None:
            self._splits = load_splits(self.cfg.data)
            print(self._splits.summary())
        return self._splits

    def model_meta(self) -> dict[str, Any]:
        """Identity of the frozen models, stored in artifacts and checked on load."""
        m = self.cfg.model
        return {
            "encoder": m.encoder,
            "decoder": m.decoder,
            "encoder_prefix": m.encoder_prefix,
            "max_foreign_chars": m.max_foreign_chars,
            "num_slots": m.num_slots,
        }


def prepare(session: Session) -> dict[str, Any]:
    """Materialise the models and the data splits; report what was prepared."""
    s = session.splits
    enc, dec = session.encoder, session.decoder
    return {
        "splits": s.counts(),
        "encoder_dim": enc.dim,
        "decoder_hidden": dec.hidden_size,
        "reserved_tokens": dec.reserved.ids,
    }


def run_stage_a(session: Session, resume: bool = False) -> StageAArtifact:
    """Cache features, train the projector, write ``run_dir/stage_a``."""
    cfg = session.cfg
    dist.on_main(write_run_info, cfg.run_dir, cfg.to_dict())
    feats = compute_features(cfg, session.splits, session.encoder, session.decoder, session.progress)
    meta = {
        **session.model_meta(),
        "encoder_weights": session.encoder.fingerprint,
        "decoder_weights": session.decoder.fingerprint,
    }
    art = train_stage_a(cfg, feats, meta, session.decoder.reserved_rows(), session.device,
                        resume=resume, progress=session.progress,
                        langs=[p.lang for p in session.splits.train])
    dm = art.meta["dev_metrics"]
    if dist.is_main():
        print(f"Stage A done: dev R@1 {dm['R@1']:.3f} MRR {dm['MRR']:.3f} "
              f"mean rank {dm['mean_rank']:.1f} -> {Path(cfg.run_dir) / 'stage_a'}")
    return art


def pairs_tag(pairs_file: str | None) -> str:
    """What an evaluation of a pair file adds to its output names: ``-udhr-en-km``."""
    return "-" + Path(pairs_file).name.split(".")[0] if pairs_file else ""


def evaluation_pairs(session: Session, pairs_file: str | None) -> list[Pair]:
    """The retrieval pool: a given pair file, or the held-out test split."""
    if pairs_file:
        pairs, report = read_pairs(pairs_file, max_chars=session.cfg.data.max_chars)
        print(report.summary())
        if len(pairs) < 2:
            raise EvalError(f"--pairs {pairs_file}: {len(pairs)} usable pair(s); an evaluation "
                            "pool needs at least 2 (see the counts above for what was dropped)")
        return pairs
    return session.splits.test


def pool_ranks(
    session: Session, art: StageAArtifact, pairs: list[Pair], baselines: bool = True
) -> dict[str, torch.Tensor]:
    """Rank of each pair's English among the pool's, per system: the projector, the
    encoder's own and, with ``baselines``, decoder-native states and the Latin-token floor.

    The decoder-native row maps its states through the same target transform as LLINK's
    row (fitted on training teacher states, never on the pool)."""
    cfg = session.cfg
    if len(pairs) < 2:
        raise EvalError(f"the retrieval pool has {len(pairs)} pair(s); it needs at least 2")
    foreign, english = [p.foreign for p in pairs], [p.en for p in pairs]
    root = features_root(cfg.features_cache)
    enc, dec = session.encoder, session.decoder
    dec.load_reserved_rows(art.reserved_rows)
    a = cfg.stage_a
    spec = {"layer": art.targets.layer, "pooling": art.targets.pooling}
    teacher = teacher_vectors(dec, english, root, a.teacher_batch_size, session.progress, **spec)
    enc_f = encoder_vectors(enc, foreign, root, a.encoder_batch_size, session.progress,
                            desc="encoder (pool)")
    ranks = {f"LLINK Stage A ({art.targets.kind} targets)": retrieval_ranks(
        art.project(enc_f), art.targets(teacher))}
    if baselines:
        native = decoder_native_vectors(dec, foreign, root, cfg.model.max_foreign_chars,
                                        max(1, a.teacher_batch_size // 2), session.progress,
                                        **spec)
        ranks[f"decoder-native (raw foreign, {art.targets.kind} targets)"] = retrieval_ranks(
            art.targets(native), art.targets(teacher))
        ranks["Latin-token overlap floor"] = latin_overlap_ranks(foreign, english)
    enc_e = encoder_vectors(enc, english, root, a.encoder_batch_size, session.progress,
                            desc="encoder (English)")
    ranks[ENCODER_ROW] = retrieval_ranks(enc_f, enc_e)
    mean = training_encoder_mean(session)
    ranks[ENCODER_CENTRED_ROW] = retrieval_ranks(enc_f - mean, enc_e - mean)
    return ranks


ENCODER_ROW = "encoder cross-lingual (reference)"
#: e5's vectors share a large common component (the mean has ~0.9 of a row's norm);
#: removing the training mean makes the encoder's own retrieval a stronger reference
ENCODER_CENTRED_ROW = "encoder cross-lingual, training mean removed (reference)"


def training_encoder_mean(session: Session) -> torch.Tensor:
    """Mean encoder vector of the training split's foreign sentences (cached features;
    computed once per session)."""
    if session._encoder_mean is None:
        a = session.cfg.stage_a
        vecs = encoder_vectors(session.encoder, [p.foreign for p in session.splits.train],
                               features_root(session.cfg.features_cache), a.encoder_batch_size,
                               session.progress, desc="encoder (training mean)")
        session._encoder_mean = vecs.mean(0)
    return session._encoder_mean


def evaluate_retrieval(
    session: Session,
    stage_a_dir: str | Path | None = None,
    pairs_file: str | None = None,
    baselines: bool = True,
) -> dict[str, dict[str, float]]:
    """Retrieval table on the test pool (or every pair of ``pairs_file``): projector,
    decoder-native, Latin floor, encoder. Every query is ranked against the whole pool;
    the figures are given overall and for the queries of each source. Written to
    ``eval/retrieval.json`` (``eval/retrieval-<name>.json`` for a pair file)."""
    cfg = session.cfg
    stage_a_dir = Path(stage_a_dir or Path(cfg.run_dir) / "stage_a")
    art = load_stage_a(stage_a_dir, expect=session.model_meta())
    pairs = evaluation_pairs(session, pairs_file)
    langs = [p.lang for p in pairs]
    several = len(set(langs)) > 1
    if several:  # each query among its own language's pairs
        ranks = ranks_within_groups(
            langs, lambda rows: pool_ranks(session, art, [pairs[i] for i in rows], baselines))
    else:
        ranks = pool_ranks(session, art, pairs, baselines)
    pool = "each language's pairs" if several else "all"
    groups = [source_group(p.source) for p in pairs]
    rows = {name: metrics_from_ranks(r) for name, r in ranks.items()}
    record: dict[str, Any] = {"pool_size": len(pairs), "pool": pairs_file or "test split",
                              "ranked_among": pool, "rows": rows}
    for key, labels in (("by_source", groups), ("by_lang", langs if several else None)):
        if labels is None:
            continue
        per_row = {name: metrics_by_group(r, labels) for name, r in ranks.items()}
        record[key] = {g: {name: per_row[name][g] for name in ranks}
                       for g in per_row[next(iter(ranks))]}
    tag = pairs_tag(pairs_file)
    out = Path(cfg.run_dir) / "eval" / f"retrieval{tag}.json"
    if dist.is_main():
        zero = set(cfg.data.zero_shot)
        if several:
            record["zero_shot"] = sorted(zero & set(langs))
        write_json_atomic(out, {**record, "stage_a": str(stage_a_dir),
                                "stage_a_digest": folder_digest(stage_a_dir)})
        print(format_table(rows, title=f"Retrieval on {len(pairs)} held-out pairs "
                                       f"(pool = {pool})"))
        if len(record["by_source"]) > 1 and not pairs_file:
            print(format_group_table(record["by_source"], "R@1", title="R@1 per source "
                                     f"(queries of the source, ranked among {pool})"))
        if several:
            print(format_language_table(record["by_lang"], zero))
        print(f"written: {out}")
    dist.barrier()
    return rows


def evaluate_holdout(
    session: Session, sources: Sequence[str] | None = None, min_pairs: int = 100,
) -> dict[str, Any]:
    """Leave-one-source-out retrieval: for each source group with at least ``min_pairs``
    test pairs, train Stage A without that source (``run_dir/holdout-<source>``, reused
    if complete) and rank the source's test pairs among themselves, beside the Stage A
    trained on every source (``run_dir/stage_a``) and the encoder's own retrieval on the
    same pool. Written to ``eval/holdout.json``."""
    from dataclasses import replace

    cfg = session.cfg
    test = session.splits.test
    counts: dict[str, int] = {}
    for p in test:
        counts[source_group(p.source)] = counts.get(source_group(p.source), 0) + 1
    names = list(sources) if sources else [g for g, n in sorted(counts.items(),
                                                                key=lambda kv: -kv[1])
                                            if n >= min_pairs]
    unknown = [g for g in names if g not in counts]
    if unknown:
        raise EvalError(f"no test pairs from source(s) {unknown}; sources: {sorted(counts)}")
    in_domain = load_stage_a(Path(cfg.run_dir) / "stage_a", expect=session.model_meta())
    table: dict[str, Any] = {}
    for g in names:
        sub_cfg = replace(cfg, run_dir=str(Path(cfg.run_dir) / f"holdout-{g}"),
                          data=replace(cfg.data, exclude_sources=[*cfg.data.exclude_sources, g]))
        sub = Session(sub_cfg, progress=session.progress, _encoder=session.encoder,
                      _decoder=session.decoder)
        folder = Path(sub_cfg.run_dir) / "stage_a"
        if not (folder / "COMPLETE").exists():
            print(f"holdout {g}: training Stage A without {g} -> {folder}")
            run_stage_a(sub)
        held = load_stage_a(folder, expect=session.model_meta())
        pool = [p for p in test if source_group(p.source) == g]
        out = pool_ranks(sub, held, pool, baselines=False)  # its mean: without the source
        own = pool_ranks(session, in_domain, pool, baselines=False)
        table[g] = {
            "pool_size": len(pool),
            "trained_without": metrics_from_ranks(next(iter(out.values()))),
            "trained_with": metrics_from_ranks(next(iter(own.values()))),
            "encoder": metrics_from_ranks(out[ENCODER_ROW]),
            "encoder_centred": metrics_from_ranks(out[ENCODER_CENTRED_ROW]),
            "train_pairs": held.meta.get("train_pairs"),
        }
    res = {"sources": table, "stage_a": str(Path(cfg.run_dir) / "stage_a")}
    write_json_atomic(Path(cfg.run_dir) / "eval" / "holdout.json", res)
    print("Leave-one-source-out retrieval (R@1 / MRR; each pool ranked among itself)")
    print(f"{'held-out source':<18} {'pool':>5} {'without it':>14} {'with it':>14} "
          f"{'encoder':>14} {'encoder centred':>16}")
    for g, r in table.items():
        cells = [f"{r[k]['R@1']:.3f} / {r[k]['MRR']:.3f}"
                 for k in ("trained_without", "trained_with", "encoder", "encoder_centred")]
        print(f"{g:<18} {r['pool_size']:>5} " + " ".join(f"{c:>14}" for c in cells))
    print(f"written: {Path(cfg.run_dir) / 'eval' / 'holdout.json'}")
    return res


def _resume_stage(cfg: Config, name: str, title: str, resume: bool) -> bool:
    """Under ``llink run --resume``: resume a stage that saved a state, start one that did
    not (the run was stopped before it)."""
    if resume and not has_saved_state(cfg.run_dir, name):
        if dist.is_main():
            print(f"{title}: no saved state in {cfg.run_dir}, so it starts from step 0")
        return False
    return resume


def run_main(session: Session, resume: bool = False) -> dict[str, Any]:
    """The README's main job: data → models → Stage A → retrieval → Stage B → test NLL →
    generation quality (chrF/BLEU vs the base decoder on raw text) → report.

    ``eval.baseline=true`` also trains the direct fine-tuning baseline and adds it to the
    comparison; ``eval.judge=MODEL`` adds the pairwise LLM judge. ``resume`` continues
    each training stage from its saved state and starts those that have none.
    """
    t0 = time.time()
    cfg = session.cfg
    prepared = prepare(session)
    dist.on_main(write_json_atomic, Path(cfg.run_dir) / "data.json",
                 {"splits": prepared["splits"]})
    run_stage_a(session, resume=_resume_stage(cfg, "stage_a", "Stage A", resume))
    rows = evaluate_retrieval(session, baselines=cfg.eval.retrieval_baselines)
    ood = ood_pairs_file(cfg)
    if ood:
        evaluate_retrieval(session, pairs_file=ood, baselines=False)
    stage_b = run_stage_b(session, resume=_resume_stage(cfg, "stage_b", "Stage B", resume))
    nll = evaluate_nll_on_test(session, limit=cfg.eval.nll_n)
    result: dict[str, Any] = {"retrieval": rows, "stage_b": stage_b, "test_nll": nll}
    if ood:  # do the slots still matter out of the training domain?
        result["ood_nll"] = evaluate_nll_on_test(session, limit=cfg.eval.nll_n, pairs_file=ood)
    e = cfg.eval
    if e.baseline:
        result["baseline"] = run_baseline(
            session, resume=_resume_stage(cfg, "baseline", "The baseline", resume))
    result.update(dist.on_main(_main_evaluations, session) or {})
    if dist.is_main():  # the model card again, now with the held-out results
        from llink.reporting.card import write_model_card

        print(f"model card: {write_model_card(Path(cfg.run_dir) / 'stage_b', cfg.run_dir)}")
    minutes = (time.time() - t0) / 60
    print(f"main job finished in {minutes:.1f} min; run folder: {cfg.run_dir}")
    if e.report and dist.is_main():
        from llink.reporting.report import write_report

        print(f"report: {write_report(cfg.run_dir)}")
    if dist.is_main():
        model = Path(cfg.run_dir) / "stage_b"
        print(f"try it: llink infer --model {model} --strict 'ឯកសារ​ត្រូវ​បាន​រក្សាទុក។'  "
              "(--compare: also without the slots; --file F: one text per line)")
    return {**result, "minutes": minutes}


def _shipped_eval_file(spec: str | None, stem: str, lang: str) -> str | None:
    """``spec``, or for ``"auto"`` the shipped ``corpora/eval/STEM-en-LANG.jsonl`` if it
    exists; None when off."""
    if not spec:
        return None
    if spec != "auto":
        return spec
    from importlib import resources

    path = Path(str(resources.files("llink") / "corpora" / "eval" / f"{stem}-en-{lang}.jsonl"))
    return str(path) if path.is_file() else None


def ood_pairs_file(cfg: Config) -> str | None:
    """The out-of-domain evaluation set of the main job (``eval.ood_pairs``), or None."""
    return _shipped_eval_file(cfg.eval.ood_pairs, "udhr", cfg.data.lang)


def everyday_pairs_file(cfg: Config) -> str | None:
    """The everyday-sentence set of the main job (``eval.everyday_pairs``), or None."""
    return _shipped_eval_file(cfg.eval.everyday_pairs, "everyday", cfg.data.lang)


def _main_evaluations(session: Session) -> dict[str, Any]:
    """The evaluations at the end of ``llink run`` (main process only)."""
    e = session.cfg.eval
    out: dict[str, Any] = {"tokens": evaluate_tokens(session)}
    if e.gen_n == 0:
        return out
    systems = list(e.gen_systems)
    if e.baseline and "baseline" not in systems:
        systems.append("baseline")
    out["gen"] = evaluate_generation(session, systems, n=e.gen_n,
                                     max_new_tokens=e.max_new_tokens, batch_size=e.batch_size,
                                     literal_bias=e.literal_bias)
    out["numbers"] = evaluate_numbers(session, systems)
    ood = ood_pairs_file(session.cfg)
    if ood:
        out["gen_ood"] = evaluate_generation(session, ["llink", "base"], pairs_file=ood,
                                             max_new_tokens=e.max_new_tokens,
                                             batch_size=e.batch_size,
                                             literal_bias=e.literal_bias)
    everyday = everyday_pairs_file(session.cfg)
    if everyday:
        out["gen_everyday"] = evaluate_generation(session, ["llink", "base"],
                                                  pairs_file=everyday, strict=True,
                                                  max_new_tokens=e.max_new_tokens,
                                                  batch_size=e.batch_size,
                                                  literal_bias=e.literal_bias)
    if e.judge:
        for other in [s for s in systems if s != "llink"]:
            out[f"judge_llink_vs_{other}"] = evaluate_judge(session, "llink", other,
                                                            judge=e.judge, n=e.judge_n)
    return out


def _stage_b_data(
    session: Session, model: LLINK, items: list[TaskExample], with_base: bool = False,
) -> EncodedExamples:
    """Tokenize task examples and attach their cached encoder vectors and teacher states."""
    cfg, root = session.cfg, features_root(session.cfg.features_cache)
    a, b = cfg.stage_a, cfg.stage_b
    enc = encoder_vectors(session.encoder, [it.foreign for it in items], root,
                          a.encoder_batch_size, session.progress, desc="encoder (stage B)")
    teacher = teacher_vectors(session.decoder, [it.en or it.answer for it in items], root,
                              a.teacher_batch_size, session.progress, model.targets.layer,
                              model.targets.pooling)
    tokens = None
    if model.reader is not None:
        tokens = encoder_token_states(session.encoder, [it.foreign for it in items], root,
                                      model.token_layer, a.encoder_batch_size, session.progress)
    examples = tokenize_examples(model, items, b.max_answer_tokens,
                                 slot_counts=model.slot_counts(tokens))
    base = tokenize_examples(model, items, b.max_answer_tokens, raw_foreign=True) if with_base \
        else None
    return EncodedExamples(examples, enc, model.targets(teacher), base,
                           groups=[source_group(it.source) for it in items], tokens=tokens,
                           langs=[it.lang for it in items])


def stage_b_items(session: Session, split: str) -> list[TaskExample]:
    """Instruction examples of a split: translation from pairs, plus any synthetic file."""
    b = session.cfg.stage_b
    pairs = getattr(session.splits, split)
    items: list[TaskExample] = []
    if "translate_to_english" in b.tasks:
        items, _ = translation_examples(pairs)
    if b.synthetic and split == "train":
        extra = [x for x in read_task_file(b.synthetic) if x.task in b.tasks]
        kept, refused = held_out_free(extra, session.splits, session.cfg.data)
        if refused:
            print(f"Stage B: refused {refused} of {len(extra)} synthetic rows of "
                  f"{b.synthetic} whose English or foreign text belongs to the dev/test split")
        items += kept
    if b.english_examples and split == "train":
        s = session.splits
        every = dataclasses.replace(session.cfg.data, max_english=None)  # own count
        english = read_english(every, [*s.dev, *s.test])[: b.english_examples]
        # English read through the encoder, answered by itself: the decoder learns to read
        # slots of any domain English covers; the foreign languages ride on the encoder
        items += [TaskExample("translate_to_english", t, t, en=t, source=ENGLISH_SOURCE)
                  for t in english if foreign_length_ok(t)]
    if not items:
        raise ValueError(f"no Stage B examples for split {split!r} with tasks {b.tasks}")
    return items


def held_out_free(
    items: list[TaskExample], splits: Splits, data_cfg: DataConfig
) -> tuple[list[TaskExample], int]:
    """Drop task rows that would leak dev/test into training: an English reference that
    hashes into dev or test, or a foreign text of a dev/test pair. Returns (kept, refused)."""
    held_foreign = {p.foreign.strip() for p in (*splits.dev, *splits.test)}

    def leaks(x: TaskExample) -> bool:
        en = x.en or (x.answer if x.task == "translate_to_english" else "")
        return bool(en and is_held_out(en, data_cfg)) or x.foreign.strip() in held_foreign

    kept = [x for x in items if not leaks(x)]
    return kept, len(items) - len(kept)


def prompt_format(cfg: Config) -> PromptFormat:
    """The prompt format Stage B and the baseline train with."""
    b = cfg.stage_b
    return PromptFormat(b.use_chat_template, b.system_prompt, b.foreign_last)


def build_llink(session: Session, stage_a: StageAArtifact) -> LLINK:
    """A fresh LLINK model around the Stage A projector (its own decoder copy, for LoRA)."""
    cfg = session.cfg
    decoder = load_decoder(cfg.model, session.device)
    decoder.load_reserved_rows(stage_a.reserved_rows)
    rows = decoder.embedding_rows().detach()
    base_rows = rows[: min(decoder.reserved.ids)] if min(decoder.reserved.ids) > 0 else rows
    target_norm = float(base_rows.float().norm(dim=-1).median())
    m = cfg.model
    # torch seeds its global generator at random in each process: seed it, so the bridge
    # and reader start from the same weights in every run with this seed
    torch.manual_seed(cfg.seed)
    bridge = SlotBridge(decoder.hidden_size, m.num_slots, target_norm)
    reader = build_token_reader(m.slot_source, session.encoder.dim, decoder.hidden_size,
                                m.num_slots, target_norm, m.resampler_layers)
    fmt = prompt_format(cfg)
    return LLINK(session.encoder, decoder, stage_a.projector, stage_a.targets, bridge,
                 fmt, reader=reader, token_layer=m.token_layer,
                 literals=m.literals, slots_per_token=m.slots_per_token).to(session.device)


def run_stage_b(session: Session, resume: bool = False) -> dict[str, Any]:
    """Train Stage B on top of ``run_dir/stage_a``; write ``run_dir/stage_b``."""
    cfg = session.cfg
    dist.on_main(write_run_info, cfg.run_dir, cfg.to_dict())
    stage_a = load_stage_a(Path(cfg.run_dir) / "stage_a", expect=session.model_meta())
    session.decoder.load_reserved_rows(stage_a.reserved_rows)
    model = build_llink(session, stage_a)
    train_items = stage_b_items(session, "train")
    dev_items = stage_b_items(session, "dev")[: cfg.stage_b.eval_pairs]
    print(f"Stage B: {len(train_items)} training examples, {len(dev_items)} dev examples")
    train = _stage_b_data(session, model, train_items)
    dev = _stage_b_data(session, model, dev_items, with_base=True)
    meta = {
        **session.model_meta(),
        "encoder_weights": session.encoder.fingerprint,
        "decoder_weights": model.decoder.fingerprint,
        "hidden_mult": stage_a.meta["hidden_mult"],
        "dropout": stage_a.meta["dropout"],
        "targets": stage_a.meta["targets"],
        **stage_a.targets.spec(),
        "stage_a_dev": stage_a.meta.get("dev_metrics"),
        # what the model card says of the data when the run folder is not at hand
        "data": {"pairs": corpus_specs(cfg.data.pairs), "lang": cfg.data.lang,
                 "sentence_like_only": cfg.data.sentence_like_only,
                 "splits": session.splits.counts()},
    }
    summary = train_stage_b(cfg, model, train, dev, meta, resume=resume,
                            progress=session.progress, langs=[it.lang for it in train_items])
    f = summary["dev_final"]
    if dist.is_main():
        print(f"Stage B done: dev NLL/token injected {f['nll_injected']:.3f}, ablated "
              f"{f['nll_ablated']:.3f} (gap {f['usage_gap']:.3f}), base decoder on raw text "
              f"{f.get('nll_base_raw', float('nan')):.3f} -> {Path(cfg.run_dir) / 'stage_b'}")
    dist.on_main(write_json_atomic, Path(cfg.run_dir) / "stage_b.summary.json", summary)
    if dist.is_main():
        from llink.reporting.card import write_model_card  # imports the plotting library

        write_model_card(Path(cfg.run_dir) / "stage_b", cfg.run_dir)
    return summary


def evaluate_nll_on_test(
    session: Session, model_dir: str | Path | None = None, limit: int | None = 200,
    pairs_file: str | None = None,
) -> dict[str, float]:
    """Answer NLL per token on held-out test pairs (or the first ``limit`` pairs of
    ``pairs_file``): injected, ablated, base decoder on raw text."""
    cfg = session.cfg
    model_dir = Path(model_dir or Path(cfg.run_dir) / "stage_b")
    model = load_llink(model_dir, cache_dir=cfg.model.cache_dir, device=session.device,
                       encoder=session.encoder)
    if pairs_file:
        items, dropped = translation_examples(evaluation_pairs(session, pairs_file))
        if dropped:
            print(f"{pairs_file}: {sum(dropped.values())} pair(s) outside the foreign-length "
                  f"limits left out ({dict(dropped)})")
        items = items[:limit] if limit else items
        described, tag = f"{len(items)} pairs of {pairs_file}", pairs_tag(pairs_file)
        heading = f"NLL/token on {described}"
    else:
        items, tag = test_items(session, limit), ""
        described = f"{len(items)} test pairs, a deterministic sample spread over the split"
        heading = f"test NLL/token on {len(items)} pairs"
    if not items:
        raise EvalError(f"no pairs to evaluate ({pairs_file or 'test split'})")
    data = _stage_b_data(session, model, items, with_base=True)
    m = evaluate_nll(model, data, cfg.stage_b.micro_batch, with_base=True)
    out = Path(cfg.run_dir) / "eval" / f"nll{tag}.json"
    dist.on_main(write_json_atomic, out, {
        "model": str(model_dir), "model_digest": folder_digest(model_dir),
        "items": described, **m})
    if dist.is_main():
        print(f"{heading}: injected {m['nll_injected']:.3f} | ablated "
              f"{m['nll_ablated']:.3f} | gap {m['usage_gap']:.3f} | base decoder, raw text "
              f"{m['nll_base_raw']:.3f}  ({out})")
        zero = set(cfg.data.zero_shot)
        for g, r in [*m["by_source"].items(),
                     *((f"{x} (zero-shot)" if x in zero else x, r)
                       for x, r in m.get("by_lang", {}).items())]:
            print(f"  {g:<18} {r['examples']:>4} pairs: injected {r['nll_injected']:.3f} | "
                  f"ablated {r['nll_ablated']:.3f} | gap {r['usage_gap']:.3f} | base "
                  f"{r['nll_base_raw']:.3f}")
    return m


# --------------------------------------------------------------------------- baseline + evals
def run_baseline(session: Session, resume: bool = False) -> dict[str, Any]:
    """Train the direct fine-tuning baseline (LoRA, raw foreign text); write ``run_dir/baseline``."""
    cfg = session.cfg
    dist.on_main(write_run_info, cfg.run_dir, cfg.to_dict())
    with dist.main_first():  # its own copy of the decoder: LoRA wraps it in place
        decoder = load_decoder(cfg.model, session.device)
    model = PromptedDecoder(decoder, prompt_format(cfg))
    b = cfg.stage_b
    train_items = stage_b_items(session, "train")
    dev_items = stage_b_items(session, "dev")[: b.eval_pairs]
    if dist.is_main():
        print(f"baseline: {len(train_items)} training examples, {len(dev_items)} dev examples, "
              f"{b.steps} steps of {b.micro_batch} x {b.grad_accum}")
    train = tokenize_examples(model, train_items, b.max_answer_tokens, raw_foreign=True)
    dev = tokenize_examples(model, dev_items, b.max_answer_tokens, raw_foreign=True)
    meta = {**session.model_meta(), "decoder_weights": decoder.fingerprint}
    summary = train_baseline(cfg, model, train, dev, meta, resume=resume,
                             progress=session.progress, langs=[it.lang for it in train_items])
    f = summary["dev_final"]
    if dist.is_main():
        print(f"baseline done: dev NLL/token {f['nll']:.3f} (base decoder "
              f"{f['nll_base_raw']:.3f}) -> {Path(cfg.run_dir) / 'baseline'}")
    dist.on_main(write_json_atomic, Path(cfg.run_dir) / "baseline.summary.json", summary)
    return summary


def test_items(session: Session, n: int | None = None) -> list[TaskExample]:
    """Translation items of the test split, the first ``n`` in the split's hash order: a
    deterministic random sample spread over the whole split, the same for every system."""
    items, _ = translation_examples(session.splits.test)
    return items[:n] if n else items


def gen_items(session: Session, n: int | None = None) -> list[GenItem]:
    """The held-out test items of the generation evaluations (see :func:`test_items`)."""
    return [GenItem(i, it.foreign, it.answer, source_group(it.source), it.lang)
            for i, it in enumerate(test_items(session, n))]


def model_identity(system: str, model_dir: Path, baseline_dir: Path) -> dict[str, Any]:
    """What a system's outputs depend on, by content: the digest of its artifact's files
    (the base decoder: its weights fingerprint and prompt format)."""
    if system == "base":
        meta = load_json(check_folder(model_dir, "LLINK model", "Train one with "
                                      "`llink train stage-b`."), "llink")
        return {"model": "base decoder", "decoder_weights": meta["decoder_weights"],
                **PromptFormat.from_meta(meta).meta()}
    folder = baseline_dir if system == "baseline" else model_dir
    # by content only: a run folder that is moved, copied or linked keeps its outputs
    return {"model_digest": folder_digest(folder)}


def evaluate_generation(
    session: Session,
    systems: Sequence[str] = ("llink", "base", "baseline"),
    n: int | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    model_dir: str | Path | None = None,
    baseline_dir: str | Path | None = None,
    pairs_file: str | None = None,
    numbers_only: bool = False,
    literal_bias: float = 0.0,
    strict: bool = False,
) -> dict[str, Any]:
    """Generate on the test items for each system (resumable), score chrF/BLEU, write gen.json.

    Systems: ``llink`` (slots), ``base`` (the base decoder reading the raw text),
    ``baseline`` (direct fine-tune), ``ablated`` (LLINK with the slots ablated).
    ``pairs_file`` evaluates on every pair of that file instead (e.g. the out-of-domain
    UDHR set), written to ``eval/gen-<name>.json`` and ``eval/gen-<name>/``.
    ``numbers_only`` keeps the test items whose reference has a number (the first ``n`` of
    them in hash order), for numeric fidelity with a useful interval: written to
    ``eval/gen-numbers.json`` (with the fidelity figures) and ``eval/gen-numbers/``.
    ``literal_bias`` > 0: LLINK's generation is nudged to copy each text's literals
    (:class:`~llink.method.literals.LiteralBias`). ``strict`` asks for the translation
    only (``llink infer --strict``). Pairs of ``pairs_file`` with an ``accept`` field are
    also scored right or wrong (:mod:`llink.eval.accepted`).
    """
    cfg = session.cfg
    unknown = [s for s in systems if s not in GEN_SYSTEMS]
    if unknown or not systems:
        raise EvalError(f"unknown system(s) {unknown}; choose from {', '.join(GEN_SYSTEMS)}")
    run_dir = Path(cfg.run_dir)
    model_dir = Path(model_dir or run_dir / "stage_b")
    baseline_dir = Path(baseline_dir or run_dir / "baseline")
    item_accepts: list[Accept | None] = []  # key words of each item, where its file has them
    if pairs_file:
        pairs = evaluation_pairs(session, pairs_file)[: n or None]
        items = [GenItem(i, p.foreign, p.en, source_group(p.source), p.lang)
                 for i, p in enumerate(pairs)]
        tag = pairs_tag(pairs_file)
        described = f"all {len(items)} pairs of {pairs_file}"
        accepts = read_accept(pairs_file)
        item_accepts = [accepts.get((p.en, p.foreign)) for p in pairs]
    elif numbers_only:
        items = [it for it in gen_items(session) if extract_numbers(it.reference)][: n or None]
        tag = "-numbers"
        described = (f"{len(items)} translation test items whose reference has a number "
                     "(in the order of a hash of the English)")
    else:
        items, tag = gen_items(session, n), ""
        described = (f"{len(items)} translation test items, a deterministic sample spread "
                     "over the split (the first N in the order of a hash of the English)")
    loaded: dict[str, Any] = {}

    def llink() -> LLINK:
        if "llink" not in loaded:
            loaded["llink"] = load_llink(model_dir, cache_dir=cfg.model.cache_dir,
                                         device=session.device, encoder=session.encoder)
        return loaded["llink"]

    def baseline() -> PromptedDecoder:
        if "baseline" not in loaded:
            loaded["baseline"] = load_baseline(baseline_dir, cache_dir=cfg.model.cache_dir,
                                               device=session.device)
        return loaded["baseline"]

    task = "translate_to_english"
    makers = {
        "llink": (model_dir, lambda xs: llink().generate(xs, task, strict,
                                                         max_new_tokens=max_new_tokens,
                                                         literal_bias=literal_bias)),
        "base": (model_dir, lambda xs: llink().generate_base(xs, task, strict,
                                                             max_new_tokens=max_new_tokens)),
        "baseline": (baseline_dir, lambda xs: baseline().generate_raw(
            xs, task, strict, max_new_tokens=max_new_tokens)),
        "ablated": (model_dir, lambda xs: llink().generate(xs, task, strict, ablate=True,
                                                           max_new_tokens=max_new_tokens)),
    }
    gen_dir = run_dir / "eval" / f"gen{tag}"
    outputs: dict[str, list[str]] = {}
    for name in systems:
        folder, fn = makers[name]
        settings = {"system": name, **model_identity(name, model_dir, baseline_dir),
                    "task": task, "max_new_tokens": max_new_tokens,
                    "decoding": "greedy, no_repeat_ngram_size 3, batched left-padded",
                    **({"strict": True} if strict else {})}
        if name == "llink" and literal_bias:
            settings["literal_bias"] = literal_bias
        outputs[name] = generate_outputs(gen_dir / f"{name}.jsonl", items, fn, settings,
                                         batch_size=batch_size, progress=session.progress,
                                         desc=f"generate ({name})")
    refs = [it.reference for it in items]
    scores = score_systems(outputs, refs)
    by_source = score_by_group(outputs, refs, [it.group for it in items])
    langs = [it.lang for it in items]
    by_lang = score_by_group(outputs, refs, langs) if len(set(langs)) > 1 else None
    result = {
        "n": len(items),
        "settings": {"split": pairs_file or "test", "items": described,
                     "task": task, "strict": strict, "max_new_tokens": max_new_tokens,
                     "batch_size": batch_size,
                     "literal_bias": literal_bias, "llink_model": str(model_dir),
                     "baseline_model": str(baseline_dir),
                     **scores.pop("scoring")},
        **scores,
        "input_dependence": {name: input_dependence(outs, refs) for name, outs in outputs.items()},
        "by_source": by_source,
        **({"by_lang": by_lang} if by_lang else {}),
    }
    if numbers_only:
        result["numbers"] = numeric_fidelity(refs, outputs, [it.group for it in items])
    if any(item_accepts):
        result["accepted"] = accepted_answers(outputs, item_accepts)
    out = run_dir / "eval" / f"gen{tag}.json"
    write_json_atomic(out, result)
    print(format_gen_table(result))
    if by_lang:
        zero = {x: " (0-shot)" for x in cfg.data.zero_shot}
        print(format_group_chrf(by_lang, "chrF per language (95% bootstrap CI)", "language",
                                zero))
    if numbers_only:
        print_numeric_fidelity(result["numbers"])
    if "accepted" in result:
        print(format_accepted(result["accepted"]))
    print(f"written: {out} and {gen_dir}/<system>.jsonl")
    return result


def read_generations(run_dir: str | Path, systems: Sequence[str] | None = None
                     ) -> tuple[list[int], list[str], dict[str, list[str]], list[str]]:
    """Outputs saved by :func:`evaluate_generation`: the indices every system has, their
    references, each system's outputs, in index order, and each item's source group."""
    gen_dir = Path(run_dir) / "eval" / "gen"
    names = list(systems) if systems else sorted(p.stem for p in gen_dir.glob("*.jsonl"))
    recs = {s: read_outputs(gen_dir / f"{s}.jsonl") for s in names}
    missing = [s for s, r in recs.items() if not r]
    if missing or not names:
        raise EvalError(
            f"no generations for {', '.join(missing) or 'any system'} in {gen_dir}; run "
            f"`llink eval gen --systems {','.join(missing or GEN_SYSTEMS[:3])}` first")
    common = sorted(set.intersection(*(set(r) for r in recs.values())))
    refs = [recs[names[0]][i]["reference"] for i in common]
    groups = [recs[names[0]][i].get("group") or "unknown" for i in common]
    return common, refs, {s: [recs[s][i]["output"] for i in common] for s in names}, groups


def evaluate_judge(
    session: Session,
    a: str = "llink",
    b: str = "base",
    judge: str | None = None,
    judge_url: str | None = None,
    judge_model: str | None = None,
    api_key_env: str | None = None,
    n: int | None = 100,
    batch_size: int = 8,
    prompt_version: str = PROMPT_VERSION,
) -> dict[str, Any]:
    """Pairwise judge of systems ``a`` vs ``b`` on their saved generations (both orders)."""
    run_dir = Path(session.cfg.run_dir)
    indices, refs, outs, _ = read_generations(run_dir, [a, b])
    items = [PairItem(i, r, x, y) for i, r, x, y in zip(indices, refs, outs[a], outs[b],
                                                      strict=True)][:n]
    template = load_prompt(prompt_version)
    j = make_judge(judge, judge_url, judge_model, api_key_env,
                   cache_dir=session.cfg.model.cache_dir, device=session.cfg.device)
    path = run_dir / "eval" / "judge" / f"{a}_vs_{b}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = {"judge": j.name, "prompt_version": prompt_version}
    # items judged before with the same judge, prompt and texts are reused (resumable)
    old = {(r["index"], r["reference"], r["a"], r["b"]): r for r in read_jsonl(path)
           if all(r.get(k) == v for k, v in stamp.items())}
    kept = [old[k] for k in ((it.index, it.reference, it.a, it.b) for it in items) if k in old]
    todo = [it for it in items if (it.index, it.reference, it.a, it.b) not in old]
    if kept:
        print(f"judge: reusing {len(kept)} judged items of {path}")

    def save(new: list[dict[str, Any]]) -> list[dict[str, Any]]:
        merged = sorted([*kept, *({**r, **stamp} for r in new)], key=lambda r: r["index"])
        write_judge_records(path, merged)
        return merged

    records = save(judge_items(todo, j, template, batch_size, session.progress,
                               desc=f"judge {a} vs {b}", on_chunk=save))
    comp = {**summarise_judgements(records, a, b), "judge": j.name,
            "prompt_version": prompt_version, "records": str(path)}
    out = run_dir / "eval" / "judge.json"
    data = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {}
    comps = [c for c in data.get("comparisons", []) if (c["a"], c["b"]) != (a, b)]
    write_json_atomic(out, {"judge": j.name, "prompt_version": prompt_version,
                            "comparisons": [*comps, comp]})
    agree = comp["order_agreement"]
    print(f"judge {j.name}: {a} vs {b} on {comp['n']} items: win {comp['win']} / tie "
          f"{comp['tie']} / loss {comp['loss']} (win rate {comp['win_rate']:.3f}, 95% CI "
          f"{comp['win_rate_ci'][0]:.3f}-{comp['win_rate_ci'][1]:.3f}); the two orders agreed "
          f"on {'n/a' if agree is None else f'{agree:.3f}'} of judged items  ({out})")
    if "soft_a_preferred" in comp:
        print(f"  position-averaged probabilities: {a} preferred on "
              f"{comp['soft_a_preferred']:.3f} of judged items (mean P({a}) "
              f"{comp['soft_mean_p_a']:.3f})")
    return comp


def evaluate_tokens(session: Session, n: int | None = None) -> dict[str, Any]:
    """Decoder tokens of the test foreign texts vs their English references vs K + 2 slots."""
    from transformers import AutoTokenizer

    from llink.backbones.offline import resolve_model

    cfg = session.cfg
    items = gen_items(session, n)
    tok = AutoTokenizer.from_pretrained(resolve_model(cfg.model.decoder, cfg.model.cache_dir))
    def budget(sub: list[GenItem]) -> dict[str, Any]:
        return token_budget(tok, [it.source for it in sub], [it.reference for it in sub],
                            cfg.model.num_slots)

    res = {**budget(items), "decoder": cfg.model.decoder}
    langs = list(dict.fromkeys(it.lang for it in items))
    if len(langs) > 1:  # tokenizer inflation differs by script
        res["by_lang"] = {lang: budget([it for it in items if it.lang == lang])
                          for lang in sorted(langs)}
    out = Path(cfg.run_dir) / "eval" / "tokens.json"
    write_json_atomic(out, res)
    f, e, r = res["foreign"], res["english"], res["ratio_foreign_to_slots"]
    print(f"tokens on {res['n']} test items ({cfg.model.decoder}): foreign median {f['median']:.0f}"
          f" / p90 {f['p90']:.0f}, English {e['median']:.0f} / {e['p90']:.0f}, slots "
          f"{res['slots']}; foreign / slots median {r['median']:.1f}x, p90 {r['p90']:.1f}x ({out})")
    for lang, b in res.get("by_lang", {}).items():
        print(f"  {lang:<4} {b['n']:>4} items: foreign median {b['foreign']['median']:.0f} "
              f"tokens, English {b['english']['median']:.0f}, foreign / slots "
              f"{b['ratio_foreign_to_slots']['median']:.1f}x")
    return res


def evaluate_numbers(session: Session, systems: Sequence[str] | None = None) -> dict[str, Any]:
    """Numeric fidelity of each system's saved generations (see :mod:`llink.eval.numbers`)."""
    run_dir = Path(session.cfg.run_dir)
    indices, refs, outs, groups = read_generations(run_dir, systems)
    res = numeric_fidelity(refs, outs, groups)
    res["indices"] = [indices[i] for i in res["indices"]]
    out = run_dir / "eval" / "numbers.json"
    write_json_atomic(out, res)
    print_numeric_fidelity(res)
    print(f"written: {out}")
    return res


def print_numeric_fidelity(res: dict[str, Any]) -> None:
    """Console lines for a :func:`numeric_fidelity` result: per system, overall and per source."""
    print(f"numeric fidelity on {res['n_with_numbers']} of {res['n']} test items whose "
          "reference has numbers (all its numbers in the output), 95% Wilson interval:")
    for name, s in res["systems"].items():
        frac = "n/a" if s["fraction"] is None else \
            f"{s['fraction']:.3f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]"
        per = ", ".join(f"{g} {r['systems'][name]['hits']}/{r['n_with_numbers']}"
                        for g, r in res["by_source"].items())
        print(f"  {name:<10} {frac} ({s['hits']} hits; {per})")
