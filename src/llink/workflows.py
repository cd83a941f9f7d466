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

from llink.artifacts import StageAArtifact, load_stage_a
from llink.config import Config
from llink.data.pairs import Pair, read_pairs
from llink.data.splits import Splits, load_splits
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
from llink.models.decoder import FrozenDecoder
from llink.models.encoder import FrozenEncoder
from llink.models.loading import load_decoder, load_encoder, resolve_device
from llink.runlog import write_run_info
from llink.train.stage_a import compute_features, train_stage_a


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
    print(s.summary())
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
    splits = session.splits
    print(splits.summary())
    feats = compute_features(cfg, splits, session.encoder, session.decoder, session.progress)
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
    variant = "centred" if art.meta.get("center_targets") else "raw"
    rows = {
        f"LLINK Stage A ({variant} targets)": retrieval_metrics(
            art.project(enc_f), teacher - art.target_mean
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
    """The README's main job: data → models → Stage A → retrieval table."""
    t0 = time.time()
    prepare(session)
    run_stage_a(session, resume=resume)
    rows = evaluate_retrieval(session)
    minutes = (time.time() - t0) / 60
    print(f"main job finished in {minutes:.1f} min; run folder: {session.cfg.run_dir}")
    return {"retrieval": rows, "minutes": minutes}
