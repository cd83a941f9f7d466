"""Two CPU processes (gloo) train exactly as one process at the same global batch.

The end-to-end test runs ``llink run`` (cache, Stage A, retrieval, Stage B, test NLL)
once in this process and once under ``torchrun --nproc_per_node 2``, then compares
weights, logs and the feature caches. A smaller test checks the gradient algebra
(gather with gradients + gradient averaging) of the Stage A loss directly.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llink.config import load_config
from llink.method.projection import load_stage_a
from llink.storage.cached_features import encoder_vectors
from llink.workflows import Session, run_main

from .test_stage_a import make_pair_file

TOL = {"rtol": 0, "atol": 1e-5}


def _overrides(root: Path, enc: Path, dec: Path, pairs: Path, name: str,
               features: str | None = None, **extra) -> list[str]:
    items = {
        "model.encoder": enc, "model.decoder": dec, "model.encoder_prefix": "",
        "model.num_slots": 4, "data.pairs": pairs, "data.sentence_like_only": False,
        "data.dev_fraction": 0.2, "data.test_fraction": 0.2, "data.max_train_pairs": None,
        "stage_a.steps": 12, "stage_a.batch_size": 8, "stage_a.warmup_steps": 2,
        "stage_a.eval_every": 6, "stage_a.save_every": 4, "stage_a.queue_size": 32,
        "stage_a.queue_topk": 8, "stage_a.dropout": 0.0,  # dropout masks are per process
        "stage_b.steps": 4, "stage_b.micro_batch": 4, "stage_b.bridge_warmup_steps": 2,
        "stage_b.eval_every": 2, "stage_b.save_every": 2, "stage_b.eval_pairs": 6,
        "stage_b.lora_r": 4, "stage_b.lora_alpha": 4, "stage_b.lora_dropout": 0.0,
        "stage_b.max_answer_tokens": 24, "eval.gen_n": 4, "eval.max_new_tokens": 4,
        "eval.baseline": True,  # `llink run` also trains the direct fine-tuning baseline
        "run_dir": root / name, "features_cache": root / f"features-{features or name}",
        "device": "cpu",
        # the offline default's design (token slots, literals, inner-layer mean targets),
        # at layers the 2-layer tiny models have
        "model.token_layer": 1, "stage_a.teacher_layer": 1, **extra,
    }
    return [f"{k}={v}" for k, v in items.items()]


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LLINK_DEBUG": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "llink", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _assert_same_weights(a_run: Path, b_run: Path) -> None:
    for name in ("stage_a/stage_a.safetensors", "stage_b/bridge.safetensors",
                 "stage_b/lora/adapter_model.safetensors",
                 "baseline/lora/adapter_model.safetensors"):
        a, b = load_file(a_run / name), load_file(b_run / name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], **TOL, msg=f"{name}: {k}")


def _store_vectors(folder: Path) -> dict[str, dict[bytes, torch.Tensor]]:
    """Every cached vector, per store folder name, keyed by text hash."""
    out: dict[str, dict[bytes, torch.Tensor]] = {}
    for store in sorted(p for p in folder.iterdir() if p.is_dir()):
        rows: dict[bytes, torch.Tensor] = {}
        for shard in store.glob("shard-*.safetensors"):
            data = load_file(shard)
            vectors = data["vectors"]
            if "lengths" in data:  # ragged store (token states): one [T_i, D] block per text
                vectors = torch.split(vectors, data["lengths"].tolist())
            for key, vec in zip(data["keys"].numpy(), vectors, strict=True):
                rows[key.tobytes()] = vec
        out[store.name] = rows
    return out


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory, tiny_encoder_dir, tiny_decoder_dir):
    root = tmp_path_factory.mktemp("dist")
    pairs = make_pair_file(root)
    one = load_config(None, _overrides(root, tiny_encoder_dir, tiny_decoder_dir, pairs, "one"))
    run_main(Session(one, progress=False))

    two = _overrides(root, tiny_encoder_dir, tiny_decoder_dir, pairs, "two")
    # a partly built cache: the 2-process run must resume it, not start over
    part = Session(load_config(None, two), progress=False)
    encoder_vectors(part.encoder, [p.foreign for p in part.splits.train[:10]],
                    root / "features-two", progress=False)
    proc = _torchrun(["run", "--quiet", *two])
    return root, proc, (tiny_encoder_dir, tiny_decoder_dir, pairs)


def test_two_processes_train_stage_a_like_one(one_and_two):
    root, *_ = one_and_two
    a = load_stage_a(root / "one" / "stage_a").projector.state_dict()
    b = load_stage_a(root / "two" / "stage_a").projector.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **TOL, msg=k)
    logs = [
        [json.loads(x) for x in (root / r / "stage_a.metrics.jsonl").read_text().splitlines()]
        for r in ("one", "two")
    ]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]]  # written once
    for r1, r2 in zip(*logs, strict=True):
        assert r1["loss"] == pytest.approx(r2["loss"], rel=1e-4)
        if "dev_R@1" in r1:
            assert r1["dev_MRR"] == pytest.approx(r2["dev_MRR"], abs=1e-4)


def test_two_processes_train_stage_b_like_one(one_and_two):
    root, *_ = one_and_two
    for name in ("bridge.safetensors", "lora/adapter_model.safetensors"):
        a = load_file(root / "one" / "stage_b" / name)
        b = load_file(root / "two" / "stage_b" / name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], **TOL, msg=f"{name}: {k}")
    logs = [
        [json.loads(x) for x in (root / r / "stage_b.metrics.jsonl").read_text().splitlines()]
        for r in ("one", "two")
    ]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]]
    for r1, r2 in zip(*logs, strict=True):
        for key in ("nll", "nll_ablated", "nll_mismatched", "loss", "dev_nll_injected"):
            if key in r1:
                assert r1[key] == pytest.approx(r2[key], rel=1e-4), key
    nll = [json.loads((root / r / "eval" / "nll.json").read_text()) for r in ("one", "two")]
    assert nll[0]["nll_injected"] == pytest.approx(nll[1]["nll_injected"], rel=1e-4)


def test_two_processes_train_the_baseline_like_one(one_and_two):
    """`llink train baseline` (run by `llink run` with eval.baseline=true) under 2 processes:
    each rank takes half of every micro-batch, the loss is per token of the global batch."""
    root, *_ = one_and_two
    name = "baseline/lora/adapter_model.safetensors"
    a, b = load_file(root / "one" / name), load_file(root / "two" / name)
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], **TOL, msg=k)
    logs = [
        [json.loads(x) for x in (root / r / "baseline.metrics.jsonl").read_text().splitlines()]
        for r in ("one", "two")
    ]
    assert [r["step"] for r in logs[1]] == [0, 1, 2, 3, 4]  # written once
    for r1, r2 in zip(*logs, strict=True):
        assert r1.keys() == r2.keys()
        for key in ("loss", "grad_norm", "dev_nll", "dev_nll_base_raw"):
            if key in r1:
                assert r1[key] == pytest.approx(r2[key], rel=1e-5), key
    summaries = [json.loads((root / r / "baseline.summary.json").read_text())
                 for r in ("one", "two")]
    assert summaries[0]["dev_final"] == pytest.approx(summaries[1]["dev_final"], rel=1e-5)


def test_two_process_cache_equals_one_process_cache(one_and_two):
    root, *_ = one_and_two
    one, two = _store_vectors(root / "features-one"), _store_vectors(root / "features-two")
    assert one.keys() == two.keys() and len(one) >= 2
    for store, rows in one.items():
        assert rows.keys() == two[store].keys(), store
        for key, vec in rows.items():
            torch.testing.assert_close(vec, two[store][key], rtol=0, atol=1e-5)


def test_resume_under_two_processes_with_fsdp(one_and_two):
    """Both stages and the baseline continue from their saved state under 2 processes, the
    decoder layers sharded with FSDP, exactly as one process continues them."""
    root, _, (enc, dec, pairs) = one_and_two
    for name in ("one", "two"):
        shutil.copytree(root / name, root / f"{name}-more")
    more = {"stage_a.steps": 16, "stage_b.steps": 6}
    one = _overrides(root, enc, dec, pairs, "one-more", features="one", **more)
    run_main(Session(load_config(None, one), progress=False), resume=True)
    two = _overrides(root, enc, dec, pairs, "two-more", features="two", **more,
                     **{"compute.fsdp": True})
    proc = _torchrun(["run", "--resume", *two])
    assert "2 processes (gloo)" in proc.stdout
    assert "resuming Stage A from step 12" in proc.stdout
    assert "resuming Stage B from step 4" in proc.stdout
    assert "resuming the baseline from step 4" in proc.stdout
    assert "FSDP: decoder layers sharded over 2 processes" in proc.stdout
    _assert_same_weights(root / "one-more", root / "two-more")
    for log in ("stage_b", "baseline"):
        steps = [json.loads(x)["step"]
                 for x in (root / "two-more" / f"{log}.metrics.jsonl").read_text().splitlines()]
        assert steps == [0, 1, 2, 3, 4, 5, 6], log


# --- accelerate launch: the same processes as torchrun --------------------------------------
def _launcher_env(root: Path) -> dict[str, str]:
    # HF_HOME: no accelerate config file of this machine is read
    return {**os.environ, "OMP_NUM_THREADS": "1", "LLINK_DEBUG": "1",
            "HF_HOME": str(root / "hf-home"), "HF_HUB_OFFLINE": "1"}


def _accelerate_launch(root: Path, launch: list[str], args: list[str]) -> None:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch, "-m", "llink", *args]
    proc = subprocess.run(cmd, env=_launcher_env(root), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "2 processes (gloo)" in proc.stdout, proc.stdout[-3000:]


def _mpi_like_launch(root: Path, args: list[str]) -> None:
    """Two processes with only what ``accelerate launch --cpu --num_processes 2
    --mpirun_hostfile H`` gives them under Open MPI (``mpirun`` is not installed here):
    ``OMPI_COMM_WORLD_*``, the rendezvous address and ``ACCELERATE_USE_CPU``."""
    env = {k: v for k, v in _launcher_env(root).items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    env.update(OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_LOCAL_SIZE="2",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), ACCELERATE_USE_CPU="True")
    procs = [subprocess.Popen([sys.executable, "-m", "llink", *args],
                              env={**env, "OMPI_COMM_WORLD_RANK": str(r),
                                   "OMPI_COMM_WORLD_LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:] + err[-6000:]
    assert "2 processes (gloo)" in outs[0][0], outs[0][0][-3000:]


def _assert_identical(a: Path, b: Path, names: tuple[str, ...]) -> None:
    for name in names:
        ta, tb = load_file(a / name), load_file(b / name)
        assert ta.keys() == tb.keys() and ta
        for k in ta:
            assert torch.equal(ta[k], tb[k]), (name, k, float((ta[k] - tb[k]).abs().max()))


def _logs_without_time(run: Path, stage: str) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k != "time"}
            for x in (run / f"{stage}.metrics.jsonl").read_text().splitlines()]


def test_accelerate_launch_trains_stage_a_and_b_as_torchrun_does(one_and_two):
    """`accelerate launch --multi_gpu --num_processes 2 -m llink ... device=cpu` (accelerate's
    torchrun launcher; its `--cpu` starts one process unless MPI starts them) trains Stage A
    and Stage B exactly as `torchrun --nproc_per_node 2` did, bit for bit, and so as one
    process does within the two-process tolerance."""
    root, _, (enc, dec, pairs) = one_and_two
    args = _overrides(root, enc, dec, pairs, "acc", features="two")
    launch = ["--multi_gpu", "--num_processes", "2", "--main_process_port", "0",
              "--mixed_precision", "no"]
    _accelerate_launch(root, launch, ["train", "stage-a", "--quiet", *args])
    _accelerate_launch(root, launch, ["train", "stage-b", "--quiet", *args])
    weights = ("stage_a/stage_a.safetensors", "stage_b/bridge.safetensors",
               "stage_b/lora/adapter_model.safetensors")
    _assert_identical(root / "two", root / "acc", weights)
    for stage in ("stage_a", "stage_b"):
        assert _logs_without_time(root / "acc", stage) == _logs_without_time(root / "two", stage)
    a = load_file(root / "one" / "stage_b" / "bridge.safetensors")
    b = load_file(root / "acc" / "stage_b" / "bridge.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], **TOL, msg=k)


def test_mpi_style_launch_trains_stage_a_as_torchrun_does(one_and_two):
    """Processes that know their rank only from MPI variables (what `accelerate launch
    --cpu --num_processes 2 --mpirun_hostfile H` starts) join one group and train Stage A
    exactly as torchrun's processes did."""
    root, _, (enc, dec, pairs) = one_and_two
    args = _overrides(root, enc, dec, pairs, "mpi", features="two")
    _mpi_like_launch(root, ["train", "stage-a", "--quiet", *args])
    _assert_identical(root / "two", root / "mpi", ("stage_a/stage_a.safetensors",))
    assert _logs_without_time(root / "mpi", "stage_a") == \
        _logs_without_time(root / "two", "stage_a")


# --- the gradient algebra on its own -----------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loss_grads_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from llink.method.bridge import Projector
    from llink.method.losses import NegativeQueue, info_nce
    from llink.train import distributed as dist

    assert dist.init_from_env("cpu") and dist.world_size() == world
    torch.manual_seed(0)
    x, h = torch.randn(8, 16), torch.randn(8, 24)
    queue = NegativeQueue(16, 24, torch.float32)
    queue.push(torch.randn(12, 24), torch.arange(100, 112))
    ids = torch.arange(8)
    proj = Projector(16, 24, dropout=0.0)

    def loss_of(p: torch.Tensor) -> torch.Tensor:
        return info_nce(p, h, 0.1, queue.hard_negatives(p, 4, exclude_ids=ids))

    loss_of(proj(x)).backward()  # one process holding the whole batch
    full = [p.grad.clone() for p in proj.parameters()]
    proj.zero_grad()
    p_all = dist.gather_with_grad(proj(dist.local_slice(x)))
    loss_of(p_all).backward()
    dist.average_gradients(proj.parameters())
    err = max(float((a - p.grad).abs().max()) for a, p in zip(full, proj.parameters(),
                                                               strict=True))
    if dist.is_main():
        Path(out).write_text(json.dumps({"max_abs_err": err}))
    dist.shutdown()


def test_gathered_loss_has_the_single_process_gradient(tmp_path):
    out = tmp_path / "grads.json"
    torch.multiprocessing.spawn(_loss_grads_worker, args=(2, _free_port(), str(out)), nprocs=2)
    assert json.loads(out.read_text())["max_abs_err"] < 1e-6
