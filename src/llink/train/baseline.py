"""The direct fine-tuning baseline: LoRA on the decoder, raw foreign text in the prompt.

The comparison the paper makes against LLINK: the same decoder, the same LoRA (rank,
alpha, dropout, target modules and learning rate as Stage B's LoRA), the same
instruction prompt with the foreign text written out instead of slots, the same
examples in the same order, the same number of optimiser steps, micro-batch and
accumulation as Stage B (``cfg.stage_b``). Loss on the answer tokens only. LoRA
trains from the first step (Stage B freezes it for ``bridge_warmup_steps``).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from tqdm.auto import tqdm

from llink.artifacts import save_baseline
from llink.batching import length_sorted_batches
from llink.config import Config
from llink.inject import IGNORE_INDEX, Example, collate
from llink.model import PromptedDecoder
from llink.runlog import MetricsLog
from llink.train.schedules import warmup_linear
from llink.train.stage_b import RESUMABLE_CHANGES
from llink.train.state import batch_indices, fixed_settings, load_state, save_state

STAGE = "baseline"


@torch.no_grad()
def evaluate_raw_nll(
    model: PromptedDecoder, examples: list[Example], batch_size: int = 8, base: bool = False
) -> float:
    """Answer NLL per token of raw-text examples, with LoRA (or without: ``base=True``)."""
    was_training = model.training
    model.eval()
    pad = int(model.tokenizer.pad_token_id)
    total, tokens = 0.0, 0.0
    for idx in length_sorted_batches([len(e.input_ids) for e in examples], batch_size):
        b = collate([examples[i] for i in idx], pad)
        nll = model.answer_nll(b["input_ids"], b["attention_mask"], b["labels"], None, base=base)
        total += float(nll.total.sum())
        tokens += float(nll.tokens.sum())
    model.train(was_training)
    return total / max(tokens, 1.0)


def _param_groups(model: PromptedDecoder, lr: float) -> list[dict[str, Any]]:
    lora = [p for n, p in model.lm.named_parameters() if "lora_" in n]
    for p in lora:
        p.requires_grad_(True)
    return [{"name": "lora", "params": lora, "lr": lr, "base_lr": lr}]


def _micro_batch_backward(
    model: PromptedDecoder, examples: list[Example], pad: int, grad_accum: int
) -> float:
    """Backward of the micro-batch's answer NLL per token (divided by ``grad_accum``).

    Raw foreign text makes prompt lengths vary several-fold, so rather than padding
    every row to the longest, rows of similar length go through together (up to 4
    padded tokens wasted per row); the loss is the same token-weighted mean as for
    one padded batch. Returns the micro-batch's loss.
    """
    tokens = sum(sum(1 for x in e.labels if x != IGNORE_INDEX) for e in examples)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    groups: list[list[int]] = []
    for i in order:
        if groups and len(examples[i].input_ids) - len(examples[groups[-1][0]].input_ids) <= 4:
            groups[-1].append(i)
        else:
            groups.append([i])
    total = 0.0
    for g in groups:
        batch = collate([examples[i] for i in g], pad)
        nll = model.answer_nll(batch["input_ids"], batch["attention_mask"], batch["labels"], None)
        part = nll.total.sum() / max(tokens, 1)
        (part / grad_accum).backward()
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
) -> dict[str, Any]:
    """Train LoRA on raw-text examples; write ``run_dir/baseline`` (final) and ``baseline-best``.

    Logs to ``run_dir/baseline.metrics.jsonl``; checkpoints to ``run_dir/baseline-state``
    every ``stage_b.save_every`` steps, so ``resume=True`` continues an interrupted run.
    """
    b = cfg.stage_b
    run_dir = Path(cfg.run_dir)
    state_dir = run_dir / f"{STAGE}-state"
    log = MetricsLog(run_dir / f"{STAGE}.metrics.jsonl")
    torch.manual_seed(cfg.seed)
    if not model.has_lora:
        model.add_lora(b.lora_r, b.lora_alpha, b.lora_dropout, b.lora_targets)
    opt = torch.optim.AdamW(_param_groups(model, b.lr_lora), weight_decay=b.weight_decay)
    settings = fixed_settings(b, RESUMABLE_CHANGES)
    start = 0
    if resume:
        start, parts = load_state(state_dir, "baseline", settings, opt)
        set_peft_model_state_dict(model.lm, parts["lora"])
        log.truncate_after(start)
        print(f"resuming the baseline from step {start} ({state_dir})")
    elif log.path.exists():
        log.path.unlink()

    def checkpoint(step: int) -> None:
        lora = get_peft_model_state_dict(model.lm, save_embedding_layers=False)
        save_state(state_dir, {"lora": lora}, opt, step, settings)

    pad = int(model.tokenizer.pad_token_id)
    n = len(train)
    warmup = int(b.warmup_frac * b.steps)
    best: dict[str, Any] = {"nll": float("inf")}
    dev_start: dict[str, float] = {}
    if start == 0:
        dev_start = {"nll": evaluate_raw_nll(model, dev, b.micro_batch),
                     "nll_base_raw": evaluate_raw_nll(model, dev, b.micro_batch, base=True)}
        log.log({"step": 0, **{f"dev_{k}": v for k, v in dev_start.items()}},
                prefix="baseline | ")
    model.train()
    t0 = time.time()
    bar = tqdm(range(start, b.steps), desc="baseline", disable=not progress, unit="step",
               initial=start, total=b.steps)
    params = opt.param_groups[0]["params"]
    for step in bar:
        lr = warmup_linear(step, warmup, b.steps, b.lr_lora)
        opt.param_groups[0]["lr"] = lr
        torch.manual_seed(cfg.seed * 7919 + step)
        loss_sum = 0.0
        for micro in range(b.grad_accum):
            # the same examples per (step, micro-step) as Stage B draws
            idx = batch_indices(n, b.micro_batch, cfg.seed, step, micro + 17)
            loss_sum += _micro_batch_backward(model, [train[int(i)] for i in idx], pad,
                                              b.grad_accum)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, b.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

        done = step + 1
        record: dict[str, Any] = {"step": done, "loss": loss_sum, "nll": loss_sum, "lr": lr,
                                  "grad_norm": float(grad_norm)}
        is_eval = done % b.eval_every == 0 or done == b.steps
        if is_eval:
            dev_nll = evaluate_raw_nll(model, dev, b.micro_batch)
            record["dev_nll"] = dev_nll
            if dev_nll < best["nll"]:
                best = {"nll": dev_nll, "step": done}
                save_baseline(run_dir / f"{STAGE}-best", model,
                              {**meta, "step": done, "dev": {"nll": dev_nll}})
        log.log(record, prefix="baseline | ", echo=is_eval)
        bar.set_postfix(loss=f"{loss_sum:.3f}")
        if done % b.save_every == 0 and done < b.steps:
            checkpoint(done)
    bar.close()
    if start < b.steps:
        checkpoint(b.steps)
    final = {"nll": evaluate_raw_nll(model, dev, b.micro_batch),
             "nll_base_raw": evaluate_raw_nll(model, dev, b.micro_batch, base=True)}
    summary = {
        "dev_final": final,
        "dev_best": best,
        "dev_start": dev_start,
        "train_seconds": round(time.time() - t0, 1),
        "steps": b.steps,
        "train_examples": n,
        "dev_examples": len(dev),
    }
    save_baseline(run_dir / STAGE, model,
                  {**meta, "step": b.steps, "dev": final, "stage_b_config": dataclasses.asdict(b)})
    return summary
