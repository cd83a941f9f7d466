"""Training options of the ``compute`` section: mixed precision, gradient checkpointing."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from llink.config import ComputeConfig
from llink.train.loop import StepRunner
from llink.workflows import Session, run_stage_a, run_stage_b

from .test_stage_a import pair_file  # noqa: F401  (fixture re-export)
from .test_stage_b import _b_cfg


def _train_linear(runner: StepRunner, steps: int = 30) -> list[float]:
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(64, 8)
    y = x @ torch.arange(8.0) / 8
    losses = []
    for _ in range(steps):
        with runner.autocast():
            loss = torch.nn.functional.mse_loss(model(x).squeeze(-1), y)
        runner.backward(loss)
        runner.step(opt, list(model.parameters()), grad_clip=10.0)
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("mode", ["no", "bf16", "fp16"])
def test_step_runner_trains_in_every_precision(mode):
    runner = StepRunner(ComputeConfig(mixed_precision=mode), torch.device("cpu"))
    assert runner.scaler.is_enabled() == (mode == "fp16")
    want = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]
    with runner.autocast():  # the forward pass really runs in that precision
        assert torch.nn.functional.linear(torch.ones(2, 4), torch.ones(3, 4)).dtype == want
    losses = _train_linear(runner)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.2 * losses[0]


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="bf16"):
        StepRunner(ComputeConfig(mixed_precision="fp8"), torch.device("cpu"))


def _stage_b(tmp_path, enc, dec, pairs, run, monkeypatch, **over):
    """A 3-step Stage B run; also returns what its training passes did: decoder MLP calls
    that build a graph (a checkpointed layer runs again in backward) and the dtype of the
    output head's logits."""
    import llink.train.stage_b as sb

    cfg = _b_cfg(tmp_path, enc, dec, pairs, run=run, **{
        "stage_b.steps": 3, "stage_b.bridge_warmup_steps": 1, "stage_b.lora_dropout": 0.0,
        "stage_b.eval_every": 3, "stage_b.save_every": 3, **over})
    session = Session(cfg, progress=False)
    run_stage_a(session)
    seen = {"mlp_calls": 0, "head_dtypes": set(), "hooked": False}

    def counted(forward):
        def run(*a, **k):
            if torch.is_grad_enabled():  # not the no-grad evaluations and contrast passes
                seen["mlp_calls"] += 1
            return forward(*a, **k)
        return run

    def dtype(_module, _inputs, out):
        if torch.is_grad_enabled():
            seen["head_dtypes"].add(out.dtype)

    real = sb._step_loss

    def step_loss(model, *a, **k):
        if not seen["hooked"]:
            seen["hooked"] = True
            for layer in model._backbone().layers:  # (module hooks skip the recomputation)
                layer.mlp.forward = counted(layer.mlp.forward)
            model.lm.get_output_embeddings().register_forward_hook(dtype)
        return real(model, *a, **k)

    monkeypatch.setattr(sb, "_step_loss", step_loss)
    run_stage_b(session)
    monkeypatch.setattr(sb, "_step_loss", real)
    return tmp_path / run, seen


def test_gradient_checkpointing_and_bf16_train_stage_b(tmp_path, tiny_encoder_dir,
                                                       tiny_decoder_dir, pair_file,
                                                       monkeypatch):
    args = (tmp_path, tiny_encoder_dir, tiny_decoder_dir, pair_file)
    plain, plain_seen = _stage_b(*args, "plain", monkeypatch)
    ckpt, ckpt_seen = _stage_b(*args, "ckpt", monkeypatch,
                               **{"compute.gradient_checkpointing": True})
    for name in ("bridge.safetensors", "lora/adapter_model.safetensors"):
        a, b = load_file(plain / "stage_b" / name), load_file(ckpt / "stage_b" / name)
        for k in a:  # recomputing activations changes nothing but memory
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    # ... and it did recompute: every decoder layer ran again in each backward pass
    assert plain_seen["mlp_calls"] >= 3 * 2  # 3 steps, 2 layers
    assert ckpt_seen["mlp_calls"] == 2 * plain_seen["mlp_calls"]
    bf16, bf16_seen = _stage_b(*args, "bf16", monkeypatch,
                               **{"compute.mixed_precision": "bf16"})
    # the training passes ran under bf16 autocast, the others in float32
    assert bf16_seen["head_dtypes"] == {torch.bfloat16}
    assert plain_seen["head_dtypes"] == ckpt_seen["head_dtypes"] == {torch.float32}
    logs = [[json.loads(x) for x in (r / "stage_b.metrics.jsonl").read_text().splitlines()]
            for r in (plain, bf16)]
    first = [next(r for r in log if r.get("step") == 1) for log in logs]
    assert math.isfinite(first[1]["loss"])
    assert first[1]["nll"] == pytest.approx(first[0]["nll"], rel=0.05)  # bf16 rounding only
    assert first[1]["nll"] != first[0]["nll"]  # but rounded: not the float32 figure


@pytest.mark.parametrize(("configured", "launched", "want"), [
    ("no", None, "no"), ("no", "no", "no"), ("no", "bf16", "bf16"), ("no", "fp16", "fp16"),
    ("bf16", "no", "bf16"), ("fp16", "fp16", "fp16"),
])
def test_accelerate_launch_mixed_precision_flag_is_read(configured, launched, want):
    """`accelerate launch --mixed_precision X` (ACCELERATE_MIXED_PRECISION) sets the
    precision when the config leaves it at no; an explicit config value stands."""
    from llink.train.loop import mixed_precision_of

    env = {} if launched is None else {"ACCELERATE_MIXED_PRECISION": launched}
    assert mixed_precision_of(ComputeConfig(mixed_precision=configured), env) == want


@pytest.mark.parametrize(("configured", "launched", "needle"), [
    ("no", "fp8", "fp8"), ("bf16", "fp16", "contradicts"),
])
def test_launcher_precision_llink_cannot_honour_is_refused(configured, launched, needle):
    from llink.config import ConfigError
    from llink.train.loop import mixed_precision_of

    with pytest.raises(ConfigError, match=needle):
        mixed_precision_of(ComputeConfig(mixed_precision=configured),
                           {"ACCELERATE_MIXED_PRECISION": launched})


def test_a_session_trains_in_the_launchers_precision(monkeypatch, capsys):
    from llink.config import load_config

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    session = Session(load_config(None, ["device=cpu"]), progress=False)
    assert session.cfg.compute.mixed_precision == "bf16"  # what run_dir/config.json records
    assert "compute.mixed_precision=bf16 (accelerate launch" in capsys.readouterr().out
