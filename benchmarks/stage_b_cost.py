"""Stage B training cost per step: prompt format, contrast term, precision, slot source.

    python -m benchmarks.stage_b_cost [--micro-batch 8] [--repeats 5]

One Stage B optimizer step (LoRA phase: bridge + LoRA train, the frozen decoder runs
forward and backward) on the same 8 training examples, for each design below, timed
side by side in one process: the designs take turns, and each figure is the median
of ``--repeats`` steps after one warm-up step. The models are built around an
untrained projector: the cost of a step does not depend on the weights. Results:
benchmarks/results/stage_b_cost.{json,md}.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from typing import Any

import torch

from benchmarks import common
from benchmarks.common import machine_description, row
from llink.backbones.loading import load_decoder
from llink.config import Config, load_config
from llink.method.bridge import BagOfWordsHead, Projector
from llink.method.inject import collate
from llink.method.projection import StageAArtifact
from llink.method.targets import TargetTransform
from llink.train.loop import StepRunner
from llink.train.stage_b import _step_loss, content_token_mask
from llink.workflows import Session, _stage_b_data, build_llink, stage_b_items

#: name → config overrides, relative to the first (today's default recipe)
VARIANTS: dict[str, dict[str, Any]] = {
    "default (chat template + system turn, detached contrast, fp32)": {},
    "contrast omitted": {"stage_b.contrast": "omit"},
    "contrast mismatch (gradient through both passes)": {"stage_b.contrast": "mismatch"},
    "empty system turn": {"stage_b.system_prompt": ""},
    "bf16 autocast": {"compute.mixed_precision": "bf16"},
    "empty system turn + contrast omitted": {
        "stage_b.system_prompt": "", "stage_b.contrast": "omit"},
    "slot_source tokens (resampler), empty system turn, contrast omitted": {
        "stage_b.system_prompt": "", "stage_b.contrast": "omit", "model.slot_source": "tokens"},
    "slot_source all_tokens (up to 64), empty system turn, contrast omitted": {
        "stage_b.system_prompt": "", "stage_b.contrast": "omit",
        "model.slot_source": "all_tokens", "model.num_slots": 64},
}


class Trainer:
    """One design: its model, its batch and one optimizer step."""

    def __init__(self, session: Session, cfg: Config, micro_batch: int) -> None:
        enc = session.encoder
        dec = load_decoder(cfg.model, session.device)  # reserved rows for this design's K
        stage_a = StageAArtifact(Projector(enc.dim, dec.hidden_size).eval(),
                                 TargetTransform("raw", torch.zeros(dec.hidden_size)),
                                 dec.reserved_rows(), {})
        del dec
        session.cfg = cfg
        self.cfg, self.b = cfg, cfg.stage_b
        self.model = build_llink(session, stage_a)
        b = self.b
        self.model.add_lora(b.lora_r, b.lora_alpha, b.lora_dropout, b.lora_targets)
        self.vocab = self.model.lm.get_output_embeddings().weight.shape[0]
        self.model.bow = BagOfWordsHead(self.model.decoder.hidden_size, self.vocab)
        self.content = content_token_mask(self.model.tokenizer, self.vocab)
        items = stage_b_items(session, "train")[:micro_batch]
        self.data = _stage_b_data(session, self.model, items)
        self.batch = collate(self.data.examples, int(self.model.tokenizer.pad_token_id))
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=1e-5)
        self.params = params
        self.runner = StepRunner(cfg.compute, self.model.device)
        self.tokens = int(self.batch["attention_mask"].sum())
        self.model.train()

    def step(self) -> None:
        idx = torch.arange(len(self.data.examples))
        with self.runner.autocast():
            loss, _ = _step_loss(self.model, self.b, self.batch, self.data.enc,
                                 self.data.teacher, self.content, self.vocab, step=0,
                                 tokens=self.data.token_rows(idx))
        self.runner.backward(loss)
        self.runner.step(self.opt, self.params, 1.0)


QUICK = {"micro_batch": 8, "repeats": 2, "only": "0,1"}
DEFAULT = {"micro_batch": 8, "repeats": 5, "only": None}
OPTIONS = {
    **common.THREADS,
    "--micro-batch": {"type": int},
    "--repeats": {"type": int},
    "--only": {"help": "comma-separated indices of the designs to run (0 = default)"},
    **common.QUICK_RUN,
}


def measure(micro_batch: int, repeats: int, variants: dict[str, dict[str, Any]]
            ) -> dict[str, Any]:
    base_cfg = load_config(None, [f"stage_b.micro_batch={micro_batch}"])
    session = Session(base_cfg, progress=False)
    trainers = {}
    for name, over in variants.items():
        cfg = load_config(None, [f"stage_b.micro_batch={micro_batch}",
                                 *(f"{k}={v}" for k, v in over.items())])
        cfg = replace(cfg, run_dir=base_cfg.run_dir)
        trainers[name] = Trainer(session, cfg, micro_batch)
        print(f"built: {name} ({trainers[name].tokens} tokens in the batch)", flush=True)
    times: dict[str, list[float]] = {n: [] for n in trainers}
    for t in trainers.values():
        t.step()  # warm-up
    for r in range(repeats):
        order = list(trainers) if r % 2 == 0 else list(reversed(trainers))
        for name in order:
            t0 = time.perf_counter()
            trainers[name].step()
            times[name].append(time.perf_counter() - t0)
            print(f"  {name}: {times[name][-1]:.2f} s", flush=True)
    first = next(iter(trainers))
    med = {n: statistics.median(v) for n, v in times.items()}
    return {
        "machine": machine_description(), "micro_batch": micro_batch, "repeats": repeats,
        "variants": {n: {"median_s": med[n], "times_s": times[n],
                         "tokens_in_batch": trainers[n].tokens,
                         "speedup_vs_default": med[first] / med[n],
                         "overrides": variants[n]} for n in trainers},
    }


def markdown(res: dict[str, Any]) -> str:
    lines = [f"# Stage B step cost (micro-batch {res['micro_batch']}, median of "
             f"{res['repeats']} steps, designs interleaved)", "",
             "| design | tokens in batch | s / step | speed-up vs default |", "|---|---|---|---|"]
    for name, v in res["variants"].items():
        lines.append(f"| {name} | {v['tokens_in_batch']} | {v['median_s']:.2f} | "
                     f"{v['speedup_vs_default']:.2f}x |")
    lines += ["", f"Machine: {res['machine']}.",
              "Command: `python -m benchmarks.stage_b_cost`."]
    return "\n".join(lines) + "\n"


def headline(res: dict[str, Any]) -> list[dict[str, Any]]:
    v = res["variants"]
    names = list(v)
    fast = "empty system turn + contrast omitted"
    return [row("Stage B", "time per step (empty system turn, no contrast pass)",
                f"{v[fast]['median_s']:.2f} s", f"{v[names[0]]['median_s']:.2f} s (default)",
                v[fast]["speedup_vs_default"])]


def run(model: str | None = None, quick: bool = False, **overrides: Any) -> dict[str, Any]:
    """Measure, write results, return them (``quick``: the first two designs, two repeats)."""
    q = common.settings(quick, QUICK, DEFAULT, overrides)
    variants = VARIANTS
    if q["only"]:
        keep = {int(i) for i in str(q["only"]).split(",")}
        variants = {k: v for i, (k, v) in enumerate(VARIANTS.items()) if i in keep}
    res = measure(q["micro_batch"], q["repeats"], variants)
    return common.report("stage_b_cost", res, markdown, quick)


if __name__ == "__main__":
    common.main(__name__)
