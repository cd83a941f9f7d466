"""The direct fine-tuning baseline: LoRA on the decoder, raw foreign text in the prompt.

The comparison the paper makes against LLINK: the same decoder, the same LoRA (rank,
alpha, dropout, target modules and learning rate as Stage B's LoRA), the same
instruction prompt with the foreign text written out instead of slots, the same
examples in the same order, the same number of optimiser steps, micro-batch and
accumulation as Stage B (``cfg.stage_b``). Loss on the answer tokens only. LoRA
trains from the first step (Stage B freezes it for ``bridge_warmup_steps``).

Under N processes (``torchrun``, ``accelerate launch``) each rank runs its slice of
every global micro-batch; the loss is the answer NLL per token of the global
micro-batch and gradients are averaged, so N processes train as one would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict

from llink.backbones.batching import length_groups, length_sorted_batches
from llink.config import Config
from llink.method.inject import IGNORE_INDEX, Example, collate
from llink.method.model import PromptedDecoder, save_baseline
from llink.train import distributed as dist
from llink.train.loop import StepRunner, apply_decoder_options
from llink.train.schedules import warmup_linear
from llink.train.stage_b import RESUMABLE_CHANGES
from llink.train.state import language_groups, step_batch
from llink.train.trainer import BestDev, Parts, TrainingRun

STAGE = "baseline"


@torch.no_grad()
def evaluate_raw_nll(
    model: PromptedDecoder, examples: list[Example], batch_size: int = 8, base: bool = False
) -> float:
    """Answer NLL per token of raw-text examples, with LoRA (or without: ``base=True``).

    Under N processes the batches are dealt out round-robin and the sums added up over
    ranks; every rank runs the same number of passes (collectives stay aligned).
    """
    was_training = model.training
    model.eval()
    pad = int(model.tokenizer.pad_token_id)
    batches = list(length_sorted_batches([len(e.input_ids) for e in examples], batch_size))
    sums = {"total": 0.0, "tokens": 0.0}
    for j, real in dist.dealt_batches(len(batches)):
        b = collate([examples[i] for i in batches[j]], pad)
        nll = model.answer_nll(b["input_ids"], b["attention_mask"], b["labels"], None, base=base)
        if real:
            sums["total"] += float(nll.total.sum())
            sums["tokens"] += float(nll.tokens.sum())
    model.train(was_training)
    sums = dist.sum_floats(sums)
    return sums["total"] / max(sums["tokens"], 1.0)


def _param_groups(model: PromptedDecoder, lr: float) -> list[dict[str, Any]]:
    lora = [p for n, p in model.lm.named_parameters() if "lora_" in n]
    for p in lora:
        p.requires_grad_(True)
    return [{"name": "lora", "params": lora, "lr": lr, "base_lr": lr}]


def _answer_tokens(e: Example) -> int:
    return sum(1 for x in e.labels if x != IGNORE_INDEX)


def _micro_batch_backward(
    model: PromptedDecoder,
    runner: StepRunner,
    train: list[Example],
    global_idx: torch.Tensor,
    grad_accum: int,
) -> float:
    """Backward of this rank's share of a global micro-batch's answer NLL per token.

    Raw foreign text makes prompt lengths vary several-fold, so rather than padding
    every row to the longest, rows of similar length go through together (up to 4
    padded tokens wasted per row); the loss is the same token-weighted mean as for
    one padded batch. The denominator is the global micro-batch's answer-token count
    (every rank knows all rows); each rank's part is scaled by N because gradient
    averaging divides the summed gradient by N. Under N processes every rank runs as
    many passes as the rank with the most groups (FSDP gathers weights in each pass).
    Returns this rank's part of the micro-batch's loss (the parts add up to the loss).
    """
    world = dist.world_size()
    idx = dist.local_slice(global_idx)
    tokens = sum(_answer_tokens(train[int(i)]) for i in global_idx)
    passes = 1
    if world > 1:
        per = len(global_idx) // world
        passes = max(len(length_groups([len(train[int(i)].input_ids) for i in part]))
                     for part in global_idx.split(per))
    examples = [train[int(i)] for i in idx]
    pad = int(model.tokenizer.pad_token_id)
    total = 0.0
    for g in length_groups([len(e.input_ids) for e in examples], min_groups=passes):
        batch = collate([examples[i] for i in g], pad)
        with runner.autocast():
            nll = model.answer_nll(batch["input_ids"], batch["attention_mask"],
                                   batch["labels"], None)
            part = nll.total.sum() / max(tokens, 1)
        runner.backward(part * world / grad_accum)
        total += float(part.detach())
    return total


def train_baseline(
    cfg: Config,
    model: PromptedDecoder,
    train: list[Example],
    dev: list[Example],
    meta: dict[str, Any],
    resume: bool = False,
    progress: bool = True,
    langs: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Train LoRA on raw-text examples; write ``run_dir/baseline`` (final) and ``baseline-best``.

    Logs to ``run_dir/baseline.metrics.jsonl``; checkpoints to ``run_dir/baseline-state``
    every ``stage_b.save_every`` steps, so ``resume=True`` continues an interrupted run.
    Under N processes only the main process writes; ``cfg.compute`` sets mixed
    precision, gradient checkpointing and FSDP as for Stage B.
    """
    b = cfg.stage_b
    run = TrainingRun(cfg, STAGE, "the baseline", b, RESUMABLE_CHANGES,
                      outputs=(f"{STAGE}-best", STAGE), progress=progress)
    if not model.has_lora:
        model.add_lora(b.lora_r, b.lora_alpha, b.lora_dropout, b.lora_targets)
    apply_decoder_options(model, cfg.compute)  # gradient checkpointing, FSDP
    groups = _param_groups(model, b.lr_lora)
    dist.broadcast_(p for g in groups for p in g["params"])  # identical start on every rank
    opt = torch.optim.AdamW(groups, weight_decay=b.weight_decay)
    runner = StepRunner(cfg.compute, model.device)
    saved = run.begin(opt, resume)
    if saved is not None:
        set_peft_model_state_dict(model.lm, saved["lora"])

    def parts() -> Parts:
        return {"lora": get_peft_model_state_dict(model.lm, save_embedding_layers=False)}

    n = len(train)
    groups = language_groups(langs, cfg.data.lang_alpha)
    warmup = int(b.warmup_frac * b.steps)
    best = BestDev("nll", run.earlier.get("dev_best"))
    dev_start: dict[str, float] = run.earlier.get("dev_start", {})
    if run.start == 0:
        dev_start = {"nll": evaluate_raw_nll(model, dev, b.micro_batch),
                     "nll_base_raw": evaluate_raw_nll(model, dev, b.micro_batch, base=True)}
        run.record({"step": 0, **{f"dev_{k}": v for k, v in dev_start.items()}})
    model.train()
    run.start_clock()
    params = opt.param_groups[0]["params"]
    for step in run.steps(b.steps, opt, parts,
                          lambda: {"dev_best": best.summary(), "dev_start": dev_start}):
        lr = warmup_linear(step, warmup, b.steps, b.lr_lora)
        opt.param_groups[0]["lr"] = lr
        loss_sum = 0.0
        for micro in range(b.grad_accum):
            # the same examples per (step, micro-step) as Stage B draws
            idx = step_batch(b.sampling, n, b.micro_batch, cfg.seed, step, micro, b.grad_accum,
                             groups)
            loss_sum += _micro_batch_backward(model, runner, train, idx, b.grad_accum)
        loss = dist.sum_floats({"loss": loss_sum / b.grad_accum})["loss"]
        grad_norm = runner.step(opt, params, b.grad_clip)

        done = step + 1
        record: dict[str, Any] = {"step": done, "loss": loss, "nll": loss, "lr": lr,
                                  "grad_norm": grad_norm}
        is_eval = run.is_eval(done, b.steps)
        if is_eval:
            dev_nll = evaluate_raw_nll(model, dev, b.micro_batch)
            record["dev_nll"] = dev_nll
            if best.offer({"nll": dev_nll}, done):
                dist.on_main(save_baseline, run.run_dir / f"{STAGE}-best", model,
                             {**meta, "step": done, "dev": {"nll": dev_nll}})
        run.record(record, echo=is_eval, loss=f"{loss:.3f}")
        run.snapshot(done, b.steps, lambda d, s: save_baseline(d, model, {**meta, "step": s}))
    final = {"nll": evaluate_raw_nll(model, dev, b.micro_batch),
             "nll_base_raw": evaluate_raw_nll(model, dev, b.micro_batch, base=True)}
    summary = run.summary(b.steps, final, best, dev_start, train_examples=n,
                          dev_examples=len(dev))
    dist.on_main(save_baseline, run.run_dir / STAGE, model,
                 {**meta, "step": b.steps, "dev": final, "stage_b_config": dataclasses.asdict(b)})
    return summary
