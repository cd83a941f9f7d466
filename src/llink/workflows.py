"""End-to-end jobs behind the CLI: each loads what it needs from a :class:`Config`.

The model and training modules know nothing of files or the command line; this
module is where configuration, data, models, caches and artifacts meet.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llink.artifacts import StageAArtifact, load_llink, load_stage_a
from llink.bridge import SlotBridge
from llink.config import Config
from llink.data.pairs import Pair, read_pairs
from llink.data.splits import Splits, load_splits
from llink.data.tasks import TaskExample, read_task_file, translation_examples
from llink.eval.retrieval import (
    centred,
    format_table,
    latin_overlap_metrics,
    retrieval_metrics,
)
from llink.features import (
    decoder_native_vectors,
    encoder_vectors,
    features_root,
    teacher_vectors,
)
from llink.fileio import write_json_atomic
from llink.inject import PromptFormat
from llink.model import LLINK
from llink.models.decoder import FrozenDecoder
from llink.models.encoder import FrozenEncoder
from llink.models.loading import load_decoder, load_encoder, resolve_device
from llink.runlog import write_run_info
from llink.train.stage_a import compute_features, train_stage_a
from llink.train.stage_b import EncodedExamples, evaluate_nll, tokenize_examples, train_stage_b


@dataclass
class Session:
    """A config plus lazily loaded frozen models, shared by the jobs of one command."""

    cfg: Config
    progress: bool = True
    _encoder: FrozenEncoder | None = field(default=None, repr=False)
    _decoder: FrozenDecoder | None = field(default=None, repr=False)
    _splits: Splits | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return resolve_device(self.cfg.device)

    @property
    def encoder(self) -> FrozenEncoder:
        if self._encoder is None:
            t = time.time()
            self._encoder = load_encoder(self.cfg.model, self.device)
            print(f"encoder: {self.cfg.model.encoder} (dim {self._encoder.dim}) "
                  f"loaded in {time.time() - t:.1f}s")
        return self._encoder

    @property
    def decoder(self) -> FrozenDecoder:
        if self._decoder is None:
            t = time.time()
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
    write_run_info(cfg.run_dir, cfg.to_dict())
    feats = compute_features(cfg, session.splits, session.encoder, session.decoder, session.progress)
    meta = {
        **session.model_meta(),
        "encoder_weights": session.encoder.fingerprint,
        "decoder_weights": session.decoder.fingerprint,
    }
    art = train_stage_a(cfg, feats, meta, session.decoder.reserved_rows(), session.device,
                        resume=resume, progress=session.progress)
    dm = art.meta["dev_metrics"]
    print(f"Stage A done: dev R@1 {dm['R@1']:.3f} MRR {dm['MRR']:.3f} "
          f"mean rank {dm['mean_rank']:.1f} -> {Path(cfg.run_dir) / 'stage_a'}")
    return art


def evaluation_pairs(session: Session, pairs_file: str | None) -> list[Pair]:
    """The retrieval pool: a given pair file, or the held-out test split."""
    if pairs_file:
        pairs, report = read_pairs(pairs_file, max_chars=session.cfg.data.max_chars)
        print(report.summary())
        return pairs
    return session.splits.test


def evaluate_retrieval(
    session: Session,
    stage_a_dir: str | Path | None = None,
    pairs_file: str | None = None,
    baselines: bool = True,
) -> dict[str, dict[str, float]]:
    """Retrieval table on the test pool: projector, decoder-native, Latin floor, encoder."""
    cfg = session.cfg
    stage_a_dir = Path(stage_a_dir or Path(cfg.run_dir) / "stage_a")
    art = load_stage_a(stage_a_dir, expect=session.model_meta())
    pairs = evaluation_pairs(session, pairs_file)
    if len(pairs) < 2:
        raise ValueError("the retrieval pool needs at least 2 pairs")
    foreign, english = [p.foreign for p in pairs], [p.en for p in pairs]
    root = features_root(cfg.features_cache)
    enc, dec = session.encoder, session.decoder
    dec.load_reserved_rows(art.reserved_rows)
    a = cfg.stage_a
    teacher = teacher_vectors(dec, english, root, a.teacher_batch_size, session.progress)
    enc_f = encoder_vectors(enc, foreign, root, a.encoder_batch_size, session.progress,
                            desc="encoder (pool)")
    rows = {
        f"LLINK Stage A ({art.targets.kind} targets)": retrieval_metrics(
            art.project(enc_f), art.targets(teacher)
        )
    }
    if baselines:
        native = decoder_native_vectors(dec, foreign, root, cfg.model.max_foreign_chars,
                                        max(1, a.teacher_batch_size // 2), session.progress)
        enc_e = encoder_vectors(enc, english, root, a.encoder_batch_size, session.progress,
                                desc="encoder (English)")
        rows["decoder-native (raw foreign, pool-centred)"] = retrieval_metrics(
            centred(native), centred(teacher)
        )
        rows["Latin-token overlap floor"] = latin_overlap_metrics(foreign, english)
        rows["encoder cross-lingual (reference)"] = retrieval_metrics(enc_f, enc_e)
    out_dir = Path(cfg.run_dir) / "eval"
    write_json_atomic(out_dir / "retrieval.json", {"pool_size": len(pairs), "rows": rows,
                                                   "stage_a": str(stage_a_dir)})
    print(format_table(rows, title=f"Retrieval on {len(pairs)} held-out pairs (pool = all)"))
    print(f"written: {out_dir / 'retrieval.json'}")
    return rows


def run_main(session: Session, resume: bool = False) -> dict[str, Any]:
    """The README's main job: data → models → Stage A → retrieval → Stage B → test NLL."""
    t0 = time.time()
    prepared = prepare(session)
    write_json_atomic(Path(session.cfg.run_dir) / "data.json", {"splits": prepared["splits"]})
    run_stage_a(session, resume=resume)
    rows = evaluate_retrieval(session)
    stage_b = run_stage_b(session, resume=resume)
    nll = evaluate_nll_on_test(session, limit=session.cfg.stage_b.eval_pairs * 2)
    minutes = (time.time() - t0) / 60
    print(f"main job finished in {minutes:.1f} min; run folder: {session.cfg.run_dir}")
    return {"retrieval": rows, "stage_b": stage_b, "test_nll": nll, "minutes": minutes}


def _stage_b_data(
    session: Session, model: LLINK, items: list[TaskExample], with_base: bool = False,
) -> EncodedExamples:
    """Tokenize task examples and attach their cached encoder vectors and teacher states."""
    cfg, root = session.cfg, features_root(session.cfg.features_cache)
    a, b = cfg.stage_a, cfg.stage_b
    enc = encoder_vectors(session.encoder, [it.foreign for it in items], root,
                          a.encoder_batch_size, session.progress, desc="encoder (stage B)")
    teacher = teacher_vectors(session.decoder, [it.en or it.answer for it in items], root,
                              a.teacher_batch_size, session.progress)
    examples = tokenize_examples(model, items, b.max_answer_tokens)
    base = tokenize_examples(model, items, b.max_answer_tokens, raw_foreign=True) if with_base \
        else None
    return EncodedExamples(examples, enc, model.targets(teacher), base)


def stage_b_items(session: Session, split: str) -> list[TaskExample]:
    """Instruction examples of a split: translation from pairs, plus any synthetic file."""
    b = session.cfg.stage_b
    pairs = getattr(session.splits, split)
    items: list[TaskExample] = []
    if "translate_to_english" in b.tasks:
        items, _ = translation_examples(pairs)
    if b.synthetic and split == "train":
        extra = [x for x in read_task_file(b.synthetic) if x.task in b.tasks]
        items += extra
    if not items:
        raise ValueError(f"no Stage B examples for split {split!r} with tasks {b.tasks}")
    return items


def build_llink(session: Session, stage_a: StageAArtifact) -> LLINK:
    """A fresh LLINK model around the Stage A projector (its own decoder copy, for LoRA)."""
    cfg = session.cfg
    decoder = load_decoder(cfg.model, session.device)
    decoder.load_reserved_rows(stage_a.reserved_rows)
    rows = decoder.embedding_rows().detach()
    base_rows = rows[: min(decoder.reserved.ids)] if min(decoder.reserved.ids) > 0 else rows
    target_norm = float(base_rows.float().norm(dim=-1).median())
    bridge = SlotBridge(decoder.hidden_size, cfg.model.num_slots, target_norm)
    fmt = PromptFormat(cfg.stage_b.use_chat_template)
    return LLINK(session.encoder, decoder, stage_a.projector, stage_a.targets, bridge,
                 fmt).to(session.device)


def run_stage_b(session: Session, resume: bool = False) -> dict[str, Any]:
    """Train Stage B on top of ``run_dir/stage_a``; write ``run_dir/stage_b``."""
    cfg = session.cfg
    write_run_info(cfg.run_dir, cfg.to_dict())
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
        "stage_a_dev": stage_a.meta.get("dev_metrics"),
    }
    summary = train_stage_b(cfg, model, train, dev, meta, resume=resume,
                            progress=session.progress)
    f = summary["dev_final"]
    print(f"Stage B done: dev NLL/token injected {f['nll_injected']:.3f}, ablated "
          f"{f['nll_ablated']:.3f} (gap {f['usage_gap']:.3f}), base decoder on raw text "
          f"{f.get('nll_base_raw', float('nan')):.3f} -> {Path(cfg.run_dir) / 'stage_b'}")
    write_json_atomic(Path(cfg.run_dir) / "stage_b.summary.json", summary)
    return summary


def evaluate_nll_on_test(
    session: Session, model_dir: str | Path | None = None, limit: int | None = 200
) -> dict[str, float]:
    """Answer NLL per token on held-out test pairs: injected, ablated, base decoder on raw text."""
    cfg = session.cfg
    model_dir = Path(model_dir or Path(cfg.run_dir) / "stage_b")
    model = load_llink(model_dir, cache_dir=cfg.model.cache_dir, device=session.device,
                       encoder=session.encoder)
    items, _ = translation_examples(session.splits.test)
    items = items[:limit] if limit else items
    data = _stage_b_data(session, model, items, with_base=True)
    m = evaluate_nll(model, data, cfg.stage_b.micro_batch, with_base=True)
    m["examples"] = len(items)
    out = Path(cfg.run_dir) / "eval" / "nll.json"
    write_json_atomic(out, {"model": str(model_dir), **m})
    print(f"test NLL/token on {len(items)} pairs: injected {m['nll_injected']:.3f} | ablated "
          f"{m['nll_ablated']:.3f} | gap {m['usage_gap']:.3f} | base decoder, raw text "
          f"{m['nll_base_raw']:.3f}  ({out})")
    return m
