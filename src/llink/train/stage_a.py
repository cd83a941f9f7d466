"""Stage A: train the projector so encoder(foreign) lands on the decoder's teacher state.

Encoder vectors and teacher states are computed once and cached (``llink.storage.cached_features``),
so a training step touches only the projector: a few milliseconds on a CPU.

Under N processes each rank projects its slice of the global batch; the projected
vectors are gathered (with gradients) so in-batch and queue negatives are those of
the whole global batch, the queue holds the same entries on every rank, and
gradients are averaged: the run equals a single process at the same global batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from llink.backbones.decoder import FrozenDecoder
from llink.backbones.encoder import FrozenEncoder
from llink.config import Config
from llink.data.english import read_english
from llink.data.splits import Splits, english_key
from llink.eval.retrieval import grouped_retrieval_metrics
from llink.method.bridge import Projector
from llink.method.losses import NegativeQueue, direction_mse, info_nce, linear_tau, log_norm_penalty
from llink.method.projection import StageAArtifact, save_stage_a
from llink.method.targets import TargetTransform
from llink.storage.cached_features import encoder_vectors, features_root, teacher_vectors
from llink.train import distributed as dist
from llink.train.loop import StepRunner
from llink.train.schedules import warmup_cosine
from llink.train.state import batch_indices, language_groups
from llink.train.trainer import Parts, TrainingRun

#: Settings that may change between a run and its resumption.
RESUMABLE_CHANGES = {
    "steps",
    "eval_every",
    "save_every",
    "encoder_batch_size",
    "teacher_batch_size",
}


@dataclass
class StageAFeatures:
    """Cached inputs of Stage A: encoder vectors (x) and raw teacher states (h) per split."""

    train_x: torch.Tensor
    train_h: torch.Tensor
    dev_x: torch.Tensor
    dev_h: torch.Tensor
    english_x: torch.Tensor | None = None  # English sentences read through the encoder
    english_h: torch.Tensor | None = None  # and their teacher states
    # the normalised English of each training row (then of each English sentence): rows
    # that share it are one sentence in several languages, never each other's negatives
    train_keys: list[str] | None = None
    dev_langs: list[str] | None = None  # several languages: dev retrieval per language pool

    def english_ids(self) -> torch.Tensor | None:
        """An id per training row (foreign pairs, then English sentences), equal for rows
        with the same normalised English; None without ``train_keys``."""
        if self.train_keys is None:
            return None
        index: dict[str, int] = {}
        return torch.tensor([index.setdefault(k, len(index)) for k in self.train_keys])


def compute_features(
    cfg: Config,
    splits: Splits,
    encoder: FrozenEncoder,
    decoder: FrozenDecoder,
    progress: bool = True,
) -> StageAFeatures:
    """Encoder vectors of the foreign side and teacher states of the English side."""
    root = features_root(cfg.features_cache)
    a = cfg.stage_a
    enc = {
        s: encoder_vectors(
            encoder,
            [p.foreign for p in getattr(splits, s)],
            root,
            a.encoder_batch_size,
            progress,
            desc=f"encoder ({s})",
        )
        for s in ("train", "dev")
    }
    tgt = {
        s: teacher_vectors(decoder, [p.en for p in getattr(splits, s)], root,
                           a.teacher_batch_size, progress, a.teacher_layer, a.teacher_pooling)
        for s in ("train", "dev")
    }
    feats = StageAFeatures(enc["train"], tgt["train"], enc["dev"], tgt["dev"],
                           train_keys=[english_key(p.en) for p in splits.train],
                           dev_langs=[p.lang for p in splits.dev])
    if a.english_fraction > 0:
        english = read_english(cfg.data, [*splits.dev, *splits.test])
        if not english:
            raise ValueError("stage_a.english_fraction > 0 needs English sentences: set "
                             "data.english (e.g. builtin:en-wordnet)")
        feats.english_x = encoder_vectors(encoder, english, root, a.encoder_batch_size,
                                          progress, desc="encoder (English)")
        feats.english_h = teacher_vectors(decoder, english, root, a.teacher_batch_size,
                                          progress, a.teacher_layer, a.teacher_pooling)
        feats.train_keys = [*feats.train_keys, *(english_key(t) for t in english)]
    return feats


def train_stage_a(
    cfg: Config,
    feats: StageAFeatures,
    meta: dict[str, Any],
    reserved_rows: torch.Tensor,
    device: torch.device,
    resume: bool = False,
    progress: bool = True,
    langs: Sequence[str] | None = None,
) -> StageAArtifact:
    """Train the projector on cached features; write ``run_dir/stage_a`` and return it.

    ``meta`` describes the models (names, dimensions, fingerprints) and is stored in
    the artifact. Training state is saved to ``run_dir/stage_a-state`` every
    ``save_every`` steps; ``resume=True`` continues from there. Under N processes
    (``torchrun``) every rank calls this; only the main process writes files. ``langs``
    (the language of each training pair) balances batches over languages
    (``data.lang_alpha``, :func:`language_groups`).
    """
    a = cfg.stage_a
    run = TrainingRun(cfg, "stage_a", "Stage A", a, RESUMABLE_CHANGES, outputs=("stage_a",),
                      progress=progress)

    n_en = 0 if feats.english_x is None else feats.english_x.shape[0]
    all_h = feats.train_h if not n_en else torch.cat([feats.train_h, feats.english_h])
    targets = TargetTransform.fit(a.targets, all_h, a.whiten_eps, a.teacher_layer,
                                  a.teacher_pooling)
    # rows [0, n) are the foreign pairs, [n, n + n_en) the English sentences
    train_x = feats.train_x if not n_en else torch.cat([feats.train_x, feats.english_x])
    train_x, train_h = train_x.to(device), targets(all_h).to(device)
    dev_x, dev_h = feats.dev_x.to(device), targets(feats.dev_h)
    n = feats.train_x.shape[0]
    ids = feats.english_ids()
    if ids is None:
        ids = torch.arange(n + n_en)
    elif ids.shape[0] != n + n_en:
        raise ValueError(f"Stage A features: {ids.shape[0]} English keys for {n + n_en} "
                         "training rows")
    shared_english = int(ids.unique().numel()) < ids.numel()
    ids = ids.to(device)
    groups = language_groups(langs, cfg.data.lang_alpha)
    n_english_rows = round(a.english_fraction * a.batch_size) if n_en else 0
    if n < 2:
        raise ValueError("Stage A needs at least 2 training pairs")

    projector = Projector(train_x.shape[1], train_h.shape[1], a.hidden_mult, a.dropout).to(device)
    dist.broadcast_(projector.parameters())  # identical start on every rank
    runner = StepRunner(cfg.compute, device)
    params = list(projector.parameters())
    opt = torch.optim.AdamW(
        projector.parameters(), lr=a.lr, betas=a.betas, weight_decay=a.weight_decay
    )
    queue_dtype = torch.float16 if device.type == "cuda" else torch.float32
    queue = (
        NegativeQueue(a.queue_size, train_h.shape[1], queue_dtype, device)
        if a.queue_size > 0
        else None
    )
    saved = run.begin(opt, resume)
    if saved is not None:
        projector.load_state_dict(saved["projector"])
        if queue is not None:
            queue.load_state_dict(saved["queue"])

    def parts() -> Parts:
        out = {"projector": projector.state_dict()}
        if queue is not None:
            out["queue"] = queue.state_dict()
        return out

    def evaluate() -> dict[str, float]:
        projector.eval()
        with torch.no_grad():
            m = grouped_retrieval_metrics(projector(dev_x).cpu(), dev_h, feats.dev_langs)
        projector.train()
        return m

    projector.train()
    run.start_clock()
    last_dev: dict[str, float] = {}
    for step in run.steps(a.steps, opt, parts):
        lr = warmup_cosine(step, a.warmup_steps, a.steps, a.lr, a.min_lr)
        for group in opt.param_groups:
            group["lr"] = lr
        tau = linear_tau(step, a.steps, a.tau_start, a.tau_end)
        total = {"loss": 0.0, "nce": 0.0}
        for micro in range(a.grad_accum):
            idx = batch_indices(n, a.batch_size - n_english_rows, cfg.seed, step, micro, groups)
            if n_english_rows:
                idx = torch.cat([idx, n + batch_indices(n_en, n_english_rows, cfg.seed + 1,
                                                        step, micro)])
            idx = idx.to(device)
            with runner.autocast():
                # this rank projects its slice; the loss sees the whole global batch
                p = dist.gather_with_grad(projector(train_x[dist.local_slice(idx)]))
                h = train_h[idx]
                negs = queue.hard_negatives(p, a.queue_topk, exclude_ids=ids[idx]) \
                    if queue else None
                nce = info_nce(p, h, tau, negs, ids[idx] if shared_english else None)
                loss = (
                    nce
                    + a.mse_weight * direction_mse(p, h)
                    + a.lognorm_weight * log_norm_penalty(p, h)
                )
            runner.backward(loss / a.grad_accum)
            if queue is not None:
                queue.push(h, ids[idx])
            total["loss"] += float(loss.detach()) / a.grad_accum
            total["nce"] += float(nce.detach()) / a.grad_accum
        grad_norm = runner.step(opt, params, a.grad_clip)

        done = step + 1
        record: dict[str, Any] = {}
        if run.is_eval(done, a.steps) and run.main:  # retrieval over the dev set: rank 0 only
            last_dev = evaluate()
            record.update({f"dev_{k}": v for k, v in last_dev.items()})
        if done % 50 == 0 or record:
            record = {"step": done, "loss": total["loss"], "nce": total["nce"], "tau": tau,
                      "lr": lr, "grad_norm": float(grad_norm), **record}
            run.record(record, echo="dev_R@1" in record, loss=f"{total['loss']:.3f}",
                       r1=f"{last_dev.get('R@1', 0):.3f}")

    meta = {
        **meta,
        "d_enc": int(train_x.shape[1]),
        "d_dec": int(train_h.shape[1]),
        "hidden_mult": a.hidden_mult,
        "dropout": a.dropout,
        "targets": a.targets,
        **targets.spec(),
        "steps": a.steps,
        "train_pairs": n,
        "english_sentences": n_en,
        "train_seconds": run.seconds(),
        "dev_metrics": last_dev or evaluate(),
        "stage_a_config": dataclasses.asdict(a),
    }
    art = StageAArtifact(projector.cpu().eval(), targets, reserved_rows.cpu(), meta)
    dist.on_main(save_stage_a, run.run_dir / "stage_a", art)
    return art
