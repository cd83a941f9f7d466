"""Everything about processes: joining the launcher's process group, ranks, barriers, gathers.

Joining is :class:`accelerate.PartialState`'s: it reads what ``torchrun`` and
``accelerate launch`` export (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``; multi-GPU, multi-node, FSDP/DeepSpeed configs) and what an MPI launcher
exports (``accelerate launch --cpu --num_processes N --mpirun_hostfile H``:
``OMPI_COMM_WORLD_*``, ``PMI_*``), starts the process group (NCCL on GPUs, Gloo on
CPUs) and gives each process its GPU. Without a launcher, or with one process, nothing
is started and every helper here is the identity: a single-process run behaves exactly
as if this module did not exist.

What stays hand-written, and why (measured with accelerate 1.15, see README "Scaling
out"): the collectives the losses need and accelerate does not offer with gradients
(:func:`gather_with_grad`, :func:`global_mean`), and gradient averaging
(:func:`average_gradients`): ``Accelerator.prepare`` averages gradients through a
DistributedDataParallel wrapper that only syncs the parameters trainable when it was
built, and Stage B's LoRA becomes trainable after the bridge warm-up (a layer unfrozen
after ``prepare`` got different gradients on the two ranks, max difference 1.99, in a
2-process run), besides needing the model's ``forward`` where the trainers call
``slots``/``answer_nll``.

Conventions used by the training stages: batch sizes in the config are *global*;
rank ``r`` of ``N`` takes the ``r``-th of ``N`` equal contiguous slices of each global
batch (:func:`local_slice`); losses are computed on gathered (global) quantities
so every rank holds the same loss, and gradients are averaged over ranks
(:func:`average_gradients`). Files are written by the main process only.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

T = TypeVar("T")

#: Minutes a rank waits at a collective (e.g. while the main process evaluates).
TIMEOUT_ENV = "LLINK_DIST_TIMEOUT_MIN"
#: Where launchers announce the number of processes: torchrun / accelerate launch, then
#: MPI (MPICH / Intel MPI, Open MPI, MVAPICH), in the order accelerate reads them.
WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_world_size() -> int:
    """The world size the launcher announced (1 when not launched by one)."""
    for var in WORLD_SIZE_VARS:
        if os.environ.get(var):
            return int(os.environ[var])
    return 1


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's index on its node (picks its GPU)."""
    if not is_distributed():
        return 0
    from accelerate import PartialState

    return PartialState().local_process_index


def is_main() -> bool:
    """True on the process that writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def backend_for(device: str = "auto") -> str:
    """``nccl`` when this run uses CUDA, else ``gloo``."""
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "nccl" if use_cuda and dist.is_nccl_available() else "gloo"


def backend_name() -> str:
    """The process group's backend (``gloo``, ``nccl``; ``none`` in a single process)."""
    return str(dist.get_backend()) if is_distributed() else "none"


def init_from_env(device: str = "auto") -> bool:
    """Join the process group described by the launcher's environment, once.

    Returns True when running distributed. With CUDA, each process takes the GPU of
    its local rank; with ``device`` cpu (or no GPU) the processes use Gloo. The
    collective timeout is ``$LLINK_DIST_TIMEOUT_MIN`` minutes (default 60), long
    enough for the main process to evaluate or save.
    """
    if is_distributed():
        return True
    world = launched_world_size()
    if world <= 1 or not dist.is_available():
        return False
    if "WORLD_SIZE" in os.environ:  # torchrun-style: the rest must be there too
        missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise RuntimeError(
                f"WORLD_SIZE={world} but {', '.join(missing)} not set: start multi-process "
                "runs with `torchrun` or `accelerate launch`."
            )
    from accelerate import PartialState

    minutes = float(os.environ.get(TIMEOUT_ENV, "60"))
    PartialState(cpu=backend_for(device) == "gloo",
                 timeout=datetime.timedelta(minutes=minutes))
    if not is_distributed():
        raise RuntimeError(
            f"launched as {world} processes, but they could not join one process group "
            "(LOCAL_RANK unset for a GPU run?): start multi-process runs with `torchrun` or "
            "`accelerate launch`."
        )
    return True


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; under N processes, GPU ``LOCAL_RANK``.

    A device name torch does not know, or one this machine lacks, raises
    :class:`~llink.config.ConfigError` naming it.
    """
    from llink.config import ConfigError

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {name!r} is not a device; use auto, cpu, cuda, cuda:N or "
                          "mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: no CUDA GPU is usable here (torch "
                          f"{torch.__version__}); use cpu or auto")
    if device.type == "cuda" and device.index is not None \
            and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r}: this machine has {torch.cuda.device_count()} "
                          "CUDA GPU(s); use cuda:0 ... or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r}: MPS is not available here; use cpu or auto")
    if name == "cuda" and is_distributed():
        return torch.device("cuda", local_rank())
    return device


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Run ``fn`` on the main process only, then let every process continue together.

    Use it for writes (checkpoints, logs, run info) that others read afterwards.
    Returns ``fn``'s result on the main process and None elsewhere.
    """
    out = fn(*args, **kwargs) if is_main() else None
    barrier()
    return out


@contextmanager
def main_first() -> Iterator[None]:
    """Run the block on the main process first, then on the others (e.g. downloads, model
    conversion into a shared cache: done once, then read by everybody)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def local_slice(global_batch: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of a global batch (the whole batch in one process)."""
    n = world_size()
    if n == 1:
        return global_batch
    size = global_batch.shape[0]
    if size % n:
        raise ValueError(
            f"a global batch of {size} does not split evenly over {n} processes: choose a "
            f"batch size divisible by the number of processes"
        )
    per = size // n
    return global_batch[rank() * per : (rank() + 1) * per]


def dealt_batches(n: int) -> Iterator[tuple[int, bool]]:
    """Batches ``0 .. n-1`` dealt out round-robin: this rank's batch of each round and
    whether it is real. A rank left without one in the last round gets batch 0 with
    ``False``: it runs it as a dummy so that every rank makes the same collective calls."""
    world, me = world_size(), rank()
    for first in range(0, n, world):
        j = first + me
        yield (j, True) if j < n else (0, False)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradient of every rank for this rank's rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        r = dist.get_rank()
        return grad[r * ctx.rows : (r + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [b, ...] of every rank in rank order, keeping gradients.

    Every rank must pass the same shape. Combined with :func:`average_gradients`,
    a loss computed identically on every rank from gathered tensors gives exactly
    the gradient of that loss in a single process holding the whole batch.
    """
    return _GatherWithGrad.apply(x) if is_distributed() else x


def global_mean(local_sum: torch.Tensor, local_count: torch.Tensor) -> torch.Tensor:
    """``Σ sums / Σ counts`` over all ranks, differentiable in ``local_sum``.

    E.g. the answer NLL per token of a global batch: normalised by the global
    token count, not a mean of per-rank means.
    """
    total = gather_with_grad(local_sum.reshape(1)).sum()
    return total / all_reduce_sum(local_count.detach().reshape(1)).sum().clamp_min(1)


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` of every rank in rank order (no gradient)."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (a new tensor; ``x`` itself is unchanged)."""
    if not is_distributed():
        return x
    out = x.detach().clone()
    dist.all_reduce(out)
    return out


def sum_floats(values: dict[str, float]) -> dict[str, float]:
    """Sum a dict of floats over ranks (same keys on every rank)."""
    if not is_distributed():
        return values
    keys = sorted(values)
    t = all_reduce_sum(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                                    device=_comm_device()))
    return dict(zip(keys, t.tolist(), strict=True))


def mean_floats(values: dict[str, float]) -> dict[str, float]:
    """Average a dict of floats over ranks (for logging per-rank statistics)."""
    n = world_size()
    return {k: v / n for k, v in sum_floats(values).items()}


@torch.no_grad()
def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Average ``.grad`` over ranks in one flat all-reduce (parameters without grad skipped).

    Parameters sharded by FSDP (DTensors) are reduced by FSDP itself and skipped.
    """
    if not is_distributed():
        return
    grads = [
        p.grad for p in params if p.grad is not None and not _is_dtensor(p)
    ]
    if not grads:
        return
    by_kind: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for g in grads:
        by_kind.setdefault((g.device, g.dtype), []).append(g)
    n = world_size()
    for group in by_kind.values():
        flat = _flatten_dense_tensors(group)
        dist.all_reduce(flat)
        flat.div_(n)
        for g, avg in zip(group, _unflatten_dense_tensors(flat, group), strict=True):
            g.copy_(avg)


def shard_modules(modules: Iterable[torch.nn.Module], replicated: set[torch.nn.Parameter]) -> None:
    """Shard each module's weights over the processes with FSDP2 (``fully_shard``).

    Used for the frozen decoder layers: each rank keeps 1/N of their weights and
    gathers a layer only while it runs. Parameters in ``replicated`` (the small
    trainable LoRA matrices) stay whole on every rank and are averaged like all
    other gradients (:func:`average_gradients`), so optimizers and checkpoints see
    ordinary tensors. No-op in a single process.
    """
    if not is_distributed():
        return
    from torch.distributed.fsdp import fully_shard

    for module in modules:
        keep = {p for p in module.parameters() if p in replicated}
        fully_shard(module, ignored_params=keep or None)


def broadcast_(tensors: Iterable[torch.Tensor]) -> None:
    """Overwrite ``tensors`` on every rank with the main process's values."""
    if not is_distributed():
        return
    for t in tensors:
        dist.broadcast(t.data, src=0)


def _is_dtensor(t: torch.Tensor) -> bool:
    return type(t).__name__ == "DTensor" or type(getattr(t, "data", None)).__name__ == "DTensor"


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shutdown() -> None:
    """Leave the process group (end of a distributed command)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
