"""Stage B: teach the frozen decoder to read K slots (bridge modules, then LoRA).

The recipe (defaults in :class:`~llink.config.StageBConfig`): for the first
``bridge_warmup_steps`` only the bridge trains, with a strong usage term, so that
reading the slots becomes the cheapest way to lower the loss; then LoRA joins,
with a matched-vs-mismatched term that keeps the slots necessary.

Under N processes each rank runs its slice of every global micro-batch. Every
batch-level quantity of the objective (answer NLL per token, the ablated and
mismatched losses, the in-batch InfoNCE, the mismatched slots) is taken over the
global batch, and gradients are averaged, so N processes train as one would.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from tqdm.auto import tqdm

from llink.config import Config, StageBConfig
from llink.data.tasks import ENGLISH_SOURCE, TaskExample
from llink.method.bridge import BagOfWordsHead
from llink.method.inject import Example, build_example, collate, slot_span
from llink.method.losses import direction_mse, info_nce, lexical_loss, usage_penalty
from llink.method.model import LLINK, AnswerNLL, save_llink
from llink.storage.runlog import MetricsLog
from llink.train import distributed as dist
from llink.train.loop import StepRunner, apply_decoder_options
from llink.train.schedules import warmup_linear
from llink.train.state import batch_indices, language_groups, step_batch
from llink.train.trainer import BestDev, Parts, TrainingRun

RESUMABLE_CHANGES = {"steps", "eval_every", "save_every", "eval_pairs", "snapshot_every"}
STOP_WORDS = frozenset(
    "a an the and or but if of to in on at by for with from as is are was were be been "
    "being it its this that these those there here you your we our they their he she his "
    "her i me my not no do does did done can could will would should may might must shall "
    "have has had than then so such into onto over under up down out about which who whom "
    "what when where why how all any each more most other some only own same too very".split()
)


@dataclass
class EncodedExamples:
    """Tokenized examples and their cached vectors, row-aligned."""

    examples: list[Example]
    enc: torch.Tensor  # encoder vectors of the foreign texts [N, d_enc]
    teacher: torch.Tensor  # teacher states of the English references, in the Stage A target space
    base: list[Example] | None = None  # same answers, raw foreign text in the prompt
    groups: list[str] | None = None  # source group of each example, for per-source reports
    langs: list[str] | None = None  # language of each example, for per-language reports
    tokens: list[torch.Tensor] | None = None  # encoder token states (slot_source=tokens)

    def token_rows(self, rows: Any) -> list[torch.Tensor] | None:
        """Token states of the given rows (a slice or index tensor), or None."""
        if self.tokens is None:
            return None
        if isinstance(rows, slice):
            return self.tokens[rows]
        return [self.tokens[i] for i in rows.tolist()]


def tokenize_examples(
    model: LLINK, items: list[TaskExample], max_answer_tokens: int, raw_foreign: bool = False,
    slot_counts: list[int] | None = None,
) -> list[Example]:
    """Prompt with slots (or with the raw foreign text) + answer, for each item; item i
    takes ``slot_counts[i]`` slots (default: all K)."""
    tok, fmt = model.tokenizer, model.fmt
    out = []
    for i, it in enumerate(items):
        k = slot_counts[i] if slot_counts else model.num_slots
        span = it.foreign if raw_foreign else slot_span(k)
        # English read through the encoder stands in for a foreign text: its words must
        # come from the slots, not from a Literals line that would spell the whole answer
        literals = None if raw_foreign or it.source == ENGLISH_SOURCE \
            else model.literals_of(it.foreign)
        user = fmt.user_text(it.task, span, question=it.question, literals=literals)
        out.append(build_example(tok, fmt, user, it.answer, max_answer_tokens))
    return out


def content_token_mask(tokenizer, vocab_size: int) -> torch.Tensor:
    """True for vocabulary entries that count as content words for the BOW target."""
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    word = re.compile(r"[^\W_]", re.UNICODE)
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    for i in range(min(vocab_size, len(tokenizer))):
        if i in special:  # end of sequence, chat markers, reserved slot tokens
            continue
        piece = tokenizer.decode([i]).strip().lower()
        mask[i] = bool(word.search(piece)) and piece not in STOP_WORDS and len(piece) > 1
    return mask


def bow_targets(labels: torch.Tensor, content: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Multi-hot [B, V] of the content tokens in each row's answer."""
    tgt = torch.zeros(labels.shape[0], vocab_size)
    for r, row in enumerate(labels):
        ids = row[row >= 0]
        ids = ids[content[ids]]
        tgt[r, ids] = 1.0
    return tgt


def ablation_slots(model: LLINK, batch: int) -> torch.Tensor:
    """The placeholder tokens' own rows, shaped as slots: injecting them is the ablation."""
    rows = model.lm.get_input_embeddings().weight[model.slot_ids].detach()
    return rows.unsqueeze(0).expand(batch, -1, -1)


@torch.no_grad()
def evaluate_nll(
    model: LLINK, data: EncodedExamples, batch_size: int = 8, with_base: bool = False
) -> dict[str, Any]:
    """Answer NLL per token with slots, with slots ablated, their gap (and the base decoder).

    With ``data.groups`` the same figures are also given per group under ``by_source``,
    and with ``data.langs`` naming several languages per language under ``by_lang``.
    Under N processes the batches are dealt out round-robin and the sums added up
    over ranks; every rank runs the same number of passes (collectives stay aligned).
    """
    was_training = model.training
    model.eval()
    pad = int(model.tokenizer.pad_token_id)
    use_base = with_base and data.base is not None
    n_rows = len(data.examples)
    by_lang = data.langs is not None and len(set(data.langs)) > 1
    # the report groups of each row: "" (all), "s:<source group>/", "l:<language>/"
    tags = [["", f"s:{g}/"] for g in (data.groups or ["all"] * n_rows)]
    if by_lang:
        for t, lang in zip(tags, data.langs, strict=True):
            t.append(f"l:{lang}/")
    keys = ["injected", "ablated", "tokens", "examples"] + (["base_raw"] if use_base else [])
    # every rank holds every key (collectives need the same keys), zero where it saw none
    sums = {f"{g}{k}": 0.0 for g in {t for ts in tags for t in ts} for k in keys}

    def add(key: str, rows: range, values: torch.Tensor) -> None:
        for r, v in zip(rows, values.tolist(), strict=True):
            for g in tags[r]:
                sums[g + key] += v

    starts = list(range(0, len(data.examples), batch_size))
    for j, real in dist.dealt_batches(len(starts)):
        lo = starts[j]
        rows = range(lo, min(lo + batch_size, len(data.examples)))
        sl = slice(rows.start, rows.stop)
        b = collate(data.examples[sl], pad)
        slots = model.slots(data.enc[sl], tokens=data.token_rows(sl))
        inj = model.answer_nll(b["input_ids"], b["attention_mask"], b["labels"], slots)
        abl = model.answer_nll(b["input_ids"], b["attention_mask"], b["labels"], None)
        base = None
        if use_base:
            bb = collate(data.base[sl], pad)
            base = model.answer_nll(
                bb["input_ids"], bb["attention_mask"], bb["labels"], None, base=True
            )
        if real:
            add("injected", rows, inj.total)
            add("ablated", rows, abl.total)
            add("tokens", rows, inj.tokens)
            add("examples", rows, torch.ones(len(rows)))
            if base is not None:
                add("base_raw", rows, base.total)
    model.train(was_training)
    sums = dist.sum_floats(dict(sorted(sums.items())))  # same key order on every rank

    def figures(g: str) -> dict[str, float]:
        tokens = max(sums[g + "tokens"], 1.0)
        out = {"nll_injected": sums[g + "injected"] / tokens,
               "nll_ablated": sums[g + "ablated"] / tokens}
        out["usage_gap"] = out["nll_ablated"] - out["nll_injected"]
        if use_base:
            out["nll_base_raw"] = sums[g + "base_raw"] / tokens
        out["examples"] = int(sums[g + "examples"])
        return out

    def per(kind: str) -> dict[str, dict[str, float]]:
        names = sorted({k[2:].split("/", 1)[0] for k in sums if k.startswith(kind)},
                       key=lambda g: (-sums[f"{kind}{g}/examples"], g))
        return {g: figures(f"{kind}{g}/") for g in names}

    result: dict[str, Any] = figures("")
    if data.groups:
        result["by_source"] = per("s:")
    if by_lang:
        result["by_lang"] = per("l:")
    return result


def _param_groups(model: LLINK, b: StageBConfig) -> list[dict[str, Any]]:
    groups = [
        {"name": "scale", "params": list(model.bridge.scale.parameters()), "lr": b.lr_scale},
        {
            "name": "bridge",
            "lr": b.lr_bridge,
            "params": [*model.bridge.adapter.parameters(), *model.bridge.expander.parameters()],
        },
    ]
    if model.reader is not None:
        groups.append({"name": "reader", "params": list(model.reader.parameters()),
                       "lr": b.lr_reader})
    if model.bow is not None:
        groups.append({"name": "bow", "params": list(model.bow.parameters()), "lr": b.lr_bow})
    if model.has_lora:
        lora = [p for n, p in model.lm.named_parameters() if "lora_" in n]
        groups.append({"name": "lora", "params": lora, "lr": b.lr_lora})
    if b.lr_projector > 0:
        model.projector.requires_grad_(True)
        groups.append(
            {
                "name": "projector",
                "params": list(model.projector.parameters()),
                "lr": b.lr_projector,
            }
        )
    for g in groups:
        g["base_lr"] = g["lr"]
    return groups


def group_lr(group: dict[str, Any], step: int, b: StageBConfig) -> float:
    """Learning rate of a parameter group at ``step``: warm-up over ``warmup_frac`` of the
    group's own steps, then linear decay to zero at the end of training.

    LoRA joins after ``bridge_warmup_steps``; its schedule starts then (0 before), so
    it gets a full warm-up and decay of its own instead of joining a decay half-way.
    """
    start = b.bridge_warmup_steps if group.get("name") == "lora" else 0
    if step < start:
        return 0.0
    span = b.steps - start
    return warmup_linear(step - start, int(b.warmup_frac * span), span, group["base_lr"])


def _set_lora_trainable(model: LLINK, on: bool) -> None:
    for n, p in model.lm.named_parameters():
        if "lora_" in n:
            p.requires_grad_(on)


def _flat_dev(m: dict[str, Any]) -> dict[str, float]:
    """Dev figures for the log: overall only (per-source figures go to the summary)."""
    return {f"dev_{k}": v for k, v in m.items() if not isinstance(v, dict)}


def train_stage_b(
    cfg: Config,
    model: LLINK,
    train: EncodedExamples,
    dev: EncodedExamples,
    meta: dict[str, Any],
    resume: bool = False,
    progress: bool = True,
    langs: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Train the bridge (and LoRA); write ``run_dir/stage_b`` (final) and ``stage_b-best``."""
    b = cfg.stage_b
    run = TrainingRun(cfg, "stage_b", "Stage B", b, RESUMABLE_CHANGES,
                      outputs=("stage_b-best", "stage_b"), progress=progress)
    device = model.device
    vocab = model.lm.get_output_embeddings().weight.shape[0]
    if b.bow_weight > 0 and model.bow is None:
        model.bow = BagOfWordsHead(model.decoder.hidden_size, vocab).to(device)
    needs_content = b.bow_weight > 0 or b.lexical_weight > 0 or b.lexical_steps > 0
    content = content_token_mask(model.tokenizer, vocab) if needs_content else None
    if not model.has_lora and b.lora_r > 0:
        model.add_lora(b.lora_r, b.lora_alpha, b.lora_dropout, b.lora_targets)
    apply_decoder_options(model, cfg.compute)  # gradient checkpointing, FSDP
    groups = _param_groups(model, b)
    dist.broadcast_(p for g in groups for p in g["params"])  # identical start on every rank
    opt = torch.optim.AdamW(groups, weight_decay=b.weight_decay)
    runner = StepRunner(cfg.compute, device)
    saved = run.begin(opt, resume)
    if saved is not None:
        model.bridge.load_state_dict(saved["bridge"])
        if model.reader is not None:
            model.reader.load_state_dict(saved["reader"])
        if model.bow is not None:
            model.bow.load_state_dict(saved["bow"])
        if model.has_lora:
            set_peft_model_state_dict(model.lm, saved["lora"])
        if b.lr_projector > 0:
            model.projector.load_state_dict(saved["projector"])

    def parts() -> Parts:
        out = {"bridge": model.bridge.state_dict()}
        if model.reader is not None:
            out["reader"] = model.reader.state_dict()
        if model.bow is not None:
            out["bow"] = model.bow.state_dict()
        if model.has_lora:
            out["lora"] = get_peft_model_state_dict(model.lm, save_embedding_layers=False)
        if b.lr_projector > 0:
            out["projector"] = model.projector.state_dict()
        return out

    pad = int(model.tokenizer.pad_token_id)
    n = len(train.examples)
    groups = language_groups(langs, cfg.data.lang_alpha)
    best = BestDev("nll_injected", run.earlier.get("dev_best"))
    base_dev = evaluate_nll(model, dev, b.micro_batch, with_base=True) if run.start == 0 \
        else run.earlier.get("dev_start", {})
    if run.start == 0:
        run.record({"step": 0, **_flat_dev(base_dev)})
    run.start_clock()
    if run.start == 0 and b.lexical_steps > 0 and content is not None:
        model.train()
        lexical_warmup(model, b, train, content, vocab, cfg.seed,
                       run.metrics if run.main else None, run.progress)
        after = evaluate_nll(model, dev, b.micro_batch)
        run.record({"step": 0, "phase": "lexical", **_flat_dev(after)})
    model.train()
    for step in run.steps(b.steps, opt, parts,
                          lambda: {"dev_best": best.summary(), "dev_start": base_dev}):
        lora_on = model.has_lora and step >= b.bridge_warmup_steps
        _set_lora_trainable(model, lora_on)
        for g in opt.param_groups:
            g["lr"] = group_lr(g, step, b)
        stats: dict[str, float] = {}
        for micro in range(b.grad_accum):
            idx = dist.local_slice(step_batch(b.sampling, n, b.micro_batch, cfg.seed, step, micro,
                                              b.grad_accum, groups))
            batch = collate([train.examples[i] for i in idx], pad)
            with runner.autocast():
                loss, terms = _step_loss(
                    model, b, batch, train.enc[idx], train.teacher[idx], content, vocab, step,
                    tokens=train.token_rows(idx),
                )
            runner.backward(loss / b.grad_accum)
            for k, v in terms.items():
                stats[k] = stats.get(k, 0.0) + v / b.grad_accum
        stats = dist.mean_floats(stats)
        trainable = [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
        grad_norm = runner.step(opt, trainable, b.grad_clip)

        done = step + 1
        record: dict[str, Any] = {
            "step": done,
            "phase": "lora" if lora_on else "bridge",
            **stats,
            "grad_norm": float(grad_norm),
            "lr_bridge": opt.param_groups[1]["lr"],
        }
        is_eval = run.is_eval(done, b.steps)
        if is_eval:
            dev_m = evaluate_nll(model, dev, b.micro_batch)
            record.update(_flat_dev(dev_m))
            if best.offer(dev_m, done):
                dist.on_main(save_llink, run.run_dir / "stage_b-best", model,
                             {**meta, "step": done, "dev": dev_m})
        run.record(record, echo=is_eval, loss=f"{stats['loss']:.3f}")
        run.snapshot(done, b.steps, lambda d, s: save_llink(d, model, {**meta, "step": s}))
    final_dev = evaluate_nll(model, dev, b.micro_batch, with_base=True)
    summary = run.summary(b.steps, final_dev, best, base_dev)
    dist.on_main(
        save_llink,
        run.run_dir / "stage_b",
        model,
        {**meta, "step": b.steps, "dev": final_dev, "stage_b_config": dataclasses.asdict(b)},
    )
    return summary


def _lexical_term(
    model: LLINK, b: StageBConfig, slots: torch.Tensor, labels: torch.Tensor,
    content: torch.Tensor, vocab: int, tokens: list[torch.Tensor] | None,
) -> torch.Tensor:
    """:func:`~llink.method.losses.lexical_loss` of the slots against the decoder's own rows."""
    n_base = min(model.decoder.reserved.ids)  # rows of the original vocabulary
    rows = model.lm.get_input_embeddings().weight[:n_base].detach()
    targets = bow_targets(labels, content, vocab)[:, :n_base].to(slots.device)
    counts = model.slot_counts(tokens)
    mask = None
    if counts is not None:
        mask = torch.arange(slots.shape[1], device=slots.device) < torch.tensor(
            counts, device=slots.device).unsqueeze(1)
    return lexical_loss(slots, mask, rows, targets, b.lexical_scale)


def lexical_warmup(
    model: LLINK, b: StageBConfig, train: EncodedExamples, content: torch.Tensor, vocab: int,
    seed: int, log: MetricsLog | None, progress: bool,
) -> None:
    """``b.lexical_steps`` steps on the lexical loss alone: the slots learn to lie near the
    embeddings of the answer's words before any decoder pass (a step costs a fraction of a
    decoder step, so this sees many more examples)."""
    params = [*model.bridge.parameters(), *(model.reader.parameters() if model.reader else [])]
    params = [p for p in params if p.requires_grad]
    base_lr = b.lr_reader if model.reader is not None else b.lr_bridge
    opt = torch.optim.AdamW(params, lr=base_lr, weight_decay=b.weight_decay)
    n, pad = len(train.examples), int(model.tokenizer.pad_token_id)
    warm = max(1, int(b.warmup_frac * b.lexical_steps))
    for step in tqdm(range(b.lexical_steps), desc="stage B (lexical)", disable=not progress,
                     unit="step"):
        for g in opt.param_groups:
            g["lr"] = warmup_linear(step, warm, b.lexical_steps, base_lr)
        idx = batch_indices(n, b.lexical_batch, seed, step, 7)
        labels = collate([train.examples[i] for i in idx.tolist()], pad)["labels"]
        slots = model.slots(train.enc[idx], tokens=train.token_rows(idx))
        loss = _lexical_term(model, b, slots, labels, content, vocab, train.token_rows(idx))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, b.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if log is not None and ((step + 1) % 50 == 0 or step + 1 == b.lexical_steps):
            log.log({"lexical_step": step + 1, "phase": "lexical", "lexical": float(loss.detach())},
                    prefix="stage B | ", echo=False)


def _detached_contrast(
    model: LLINK, b: StageBConfig, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
    slots: torch.Tensor, inj: torch.Tensor, step: int, parts: dict[str, float],
) -> torch.Tensor | float:
    """The paper's usage hinge (and our detached mismatch hinge): the other losses come
    from a no-grad pass, so while a hinge is active its gradient is that of ``inj`` alone:
    it re-weights the answer NLL rather than making the decoder depend on the slots."""
    global_batch = slots.shape[0] * dist.world_size()
    use_usage = b.usage_weight > 0 and step % max(b.usage_every, 1) == 0
    use_mismatch = b.mismatch_weight > 0 and global_batch > 1
    if not (use_usage or use_mismatch):
        return 0.0
    # One no-grad pass over 2B rows: ablated (placeholder rows) and mismatched slots
    # (each example gets the slots of the previous example of the global batch).
    bsz = ids.shape[0]
    with torch.no_grad():
        mismatched = dist.local_slice(dist.gather(slots.detach()).roll(1, dims=0))
        other = torch.cat([ablation_slots(model, bsz), mismatched.to(slots.dtype)])
        both: AnswerNLL = model.answer_nll(
            ids.repeat(2, 1), mask.repeat(2, 1), labels.repeat(2, 1), other
        )
        abl = dist.global_mean(both.total[:bsz].sum(), both.tokens[:bsz].sum())
        mis = dist.global_mean(both.total[bsz:].sum(), both.tokens[bsz:].sum())
    parts.update({"nll_ablated": float(abl), "nll_mismatched": float(mis)})
    extra: torch.Tensor | float = 0.0
    if use_usage:
        extra = extra + b.usage_weight * usage_penalty(inj, abl, b.usage_margin)
    if use_mismatch:
        extra = extra + b.mismatch_weight * F.relu(inj - mis + b.mismatch_margin)
    return extra


def _step_loss(
    model: LLINK,
    b: StageBConfig,
    batch: dict[str, torch.Tensor],
    enc: torch.Tensor,
    teacher: torch.Tensor,
    content: torch.Tensor | None,
    vocab: int,
    step: int,
    tokens: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The Stage B objective for one micro-batch, and its parts for the log.

    ``batch``, ``enc`` and ``teacher`` are this rank's slice of the global micro-batch
    (all of it in a single process); batch-level terms are taken over the global batch.
    """
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    slots = model.slots(enc, tokens=tokens)
    global_batch = slots.shape[0] * dist.world_size()
    nll = model.answer_nll(ids, mask, labels, slots)
    inj = dist.global_mean(nll.total.sum(), nll.tokens.sum())  # per token of the global batch
    loss = inj
    parts = {"nll": float(inj.detach())}
    slot_mean = slots.mean(1)
    t = teacher.to(slot_mean.device)
    if b.direction_weight > 0:
        d = direction_mse(slot_mean, t)
        loss = loss + b.direction_weight * d
    if b.nce_weight > 0 and global_batch > 1:
        nce = info_nce(dist.gather_with_grad(slot_mean), dist.gather(t), b.nce_tau)
        loss = loss + b.nce_weight * nce
    if b.lexical_weight > 0 and content is not None:
        lex = _lexical_term(model, b, slots, labels, content, vocab, tokens)
        loss = loss + b.lexical_weight * lex
        parts["lexical"] = float(lex.detach())
    if b.bow_weight > 0 and model.bow is not None and content is not None:
        bow = F.binary_cross_entropy_with_logits(
            model.bow(slots), bow_targets(labels, content, vocab).to(slots.device)
        )
        loss = loss + b.bow_weight * bow
        parts["bow"] = float(bow.detach())
    if b.contrast == "detached":
        loss = loss + _detached_contrast(model, b, ids, mask, labels, slots, inj, step, parts)
    elif b.contrast == "mismatch" and b.mismatch_weight > 0 and global_batch > 1:
        # Another example's slots (the previous one of the global batch), with gradient:
        # the hinge lowers the loss with the own slots and raises it with the wrong ones
        # until they differ by the margin; past that it is zero, so it cannot blow up.
        mismatched = dist.local_slice(dist.gather_with_grad(slots).roll(1, dims=0))
        mis_nll = model.answer_nll(ids, mask, labels, mismatched)
        mis = dist.global_mean(mis_nll.total.sum(), mis_nll.tokens.sum())
        parts["nll_mismatched"] = float(mis.detach())
        loss = loss + b.mismatch_weight * F.relu(inj - mis + b.mismatch_margin)
    parts["loss"] = float(loss.detach())
    return loss, parts
