"""One optimizer step, the same in every trainer: autocast, loss scaling, gradient sync, clipping.

:class:`StepRunner` holds what depends on the hardware setup
(:class:`~llink.config.ComputeConfig`): bf16/fp16 autocast, the fp16 loss scaler,
TF32, and averaging gradients over processes. Trainers write their loss inside
``runner.autocast()``, call ``runner.backward(loss)`` per micro-batch and
``runner.step(opt, params, clip)`` once per step; gradient accumulation is the
trainer's loop over micro-batches (each draws its own rows, reproducibly, and divides
its loss by the number of micro-batches), with one gradient sync per step.

Why not ``accelerate.Accelerator`` (measured with accelerate 1.15; README "Scaling
out"): it is one state per process, and a second ``Accelerator`` with another
``mixed_precision`` in the same process raises ``ValueError`` ("AcceleratorState has
already been initialized"), while llink runs trainers with different precisions in one
process (the tests, the Python API); its gradient sync needs ``prepare(model)`` (see
:mod:`llink.train.distributed` for why that does not fit); ``save_state`` writes
pickles (``optimizer.bin``, ``random_states_0.pkl``) in place, where llink's states are
safetensors + JSON with SHA-256, written atomically (:mod:`llink.train.state`). Its
autocast and loss scaling are torch's ``autocast`` and ``GradScaler``, which this
module uses directly, so the figures are the same either way. What accelerate's
launcher sets is read: the processes (:mod:`llink.train.distributed`) and its
``--mixed_precision`` flag (:func:`mixed_precision_of`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

import torch

from llink.config import ComputeConfig, ConfigError
from llink.train import distributed as dist

if TYPE_CHECKING:
    from llink.method.model import PromptedDecoder

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


#: What ``accelerate launch --mixed_precision X`` exports to the processes it starts.
LAUNCHER_PRECISION_ENV = "ACCELERATE_MIXED_PRECISION"


def mixed_precision_of(compute: ComputeConfig, environ: Mapping[str, str] = os.environ) -> str:
    """The precision to train in: ``compute.mixed_precision``, or the launcher's
    ``--mixed_precision`` (``accelerate launch``) when the config leaves it at ``no``.

    A launcher precision llink does not train in (fp8), or one that contradicts an
    explicit bf16/fp16 in the config, raises :class:`~llink.config.ConfigError`.
    """
    configured, launched = compute.mixed_precision, environ.get(LAUNCHER_PRECISION_ENV, "no")
    if launched in ("", "no", configured):
        return configured
    if launched not in _AUTOCAST_DTYPES:
        raise ConfigError(f"accelerate launch --mixed_precision {launched}: llink trains in "
                          "no, bf16 or fp16 (compute.mixed_precision)")
    if configured != "no":
        raise ConfigError(f"accelerate launch --mixed_precision {launched} contradicts "
                          f"compute.mixed_precision={configured}: drop one of them")
    return launched


def configure_tf32(enabled: bool) -> None:
    """Allow TF32 matmuls and convolutions on Ampere and newer GPUs (no effect on CPUs)."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute a Hugging Face model's layer activations in backward (less memory, ~30% slower)."""
    kwargs = {"use_reentrant": False}  # works with frozen inputs and LoRA-only gradients
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def apply_decoder_options(model: PromptedDecoder, compute: ComputeConfig) -> None:
    """``compute.gradient_checkpointing`` and ``compute.fsdp`` for a decoder about to train.

    Call after LoRA is added: with FSDP the frozen decoder layers are sharded over the
    processes while the LoRA matrices stay whole on every rank.
    """
    if compute.gradient_checkpointing:
        enable_activation_checkpointing(model.decoder.model)
    if compute.fsdp:
        lora = {p for n, p in model.lm.named_parameters() if "lora_" in n}
        dist.shard_modules(model._backbone().layers, lora)
        if dist.is_main() and dist.is_distributed():
            print(f"FSDP: decoder layers sharded over {dist.world_size()} processes")


class StepRunner:
    """Mixed precision and multi-process gradient averaging around an optimizer."""

    def __init__(self, compute: ComputeConfig, device: torch.device) -> None:
        if compute.mixed_precision not in ("no", *_AUTOCAST_DTYPES):
            raise ValueError(
                f"compute.mixed_precision: {compute.mixed_precision!r}; use no, bf16 or fp16"
            )
        self.device = device
        self.dtype = _AUTOCAST_DTYPES.get(compute.mixed_precision)
        self.scaler = torch.amp.GradScaler(
            device.type, enabled=compute.mixed_precision == "fp16"
        )
        configure_tf32(compute.tf32)

    def autocast(self) -> AbstractContextManager:
        """Autocast to bf16/fp16 for the forward pass and loss (a no-op with ``no``)."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of ``loss`` (scaled when training in fp16)."""
        self.scaler.scale(loss).backward()

    def step(
        self,
        opt: torch.optim.Optimizer,
        params: list[torch.nn.Parameter],
        grad_clip: float,
    ) -> float:
        """Average gradients over processes, unscale, clip, step, zero; return the grad norm."""
        dist.average_gradients(params)
        self.scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        self.scaler.step(opt)
        self.scaler.update()
        opt.zero_grad(set_to_none=True)
        return float(norm)
