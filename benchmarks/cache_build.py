"""Cache building speed (pairs/s) with 1 process and with N processes.

    python -m benchmarks.cache_build [--pairs 300] [--procs 2] [--threads 2]

Builds the two caches Stage A needs (encoder vectors of the foreign side, teacher
states of the English side) on the real offline models into empty folders, once
in one process with ``--threads`` torch threads and once in ``--procs`` processes
(gloo, the library's sharded build) with ``threads / procs`` threads each, so both
use the same number of cores. Models load before the clock starts. The two caches
are compared vector by vector. Results: benchmarks/results/cache_build.{json,md}.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import common
from benchmarks.common import machine_description


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _build(rank: int, world: int, port: int, pairs: int, threads: int, feat: str,
           out: str) -> None:
    """One process of a cache build; rank 0 writes the timing to ``out``."""
    if world > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    from llink.config import load_config
    from llink.storage.cached_features import encoder_vectors, teacher_vectors
    from llink.train import distributed as dist
    from llink.workflows import Session

    session = Session(load_config(None, ["device=cpu"]), progress=False)
    train = session.splits.train[:pairs]
    enc, dec = session.encoder, session.decoder  # loaded before timing
    a = session.cfg.stage_a
    dist.barrier()
    t0 = time.perf_counter()
    encoder_vectors(enc, [p.foreign for p in train], Path(feat), a.encoder_batch_size, False)
    t1 = time.perf_counter()
    teacher_vectors(dec, [p.en for p in train], Path(feat), a.teacher_batch_size, False)
    dist.barrier()
    t2 = time.perf_counter()
    if dist.is_main():
        Path(out).write_text(json.dumps({"encoder_s": t1 - t0, "teacher_s": t2 - t1,
                                         "total_s": t2 - t0, "pairs": len(train)}))
    dist.shutdown()


def _vectors(folder: Path) -> dict[tuple[str, bytes], torch.Tensor]:
    from safetensors.torch import load_file

    rows = {}
    for shard in folder.glob("*/shard-*.safetensors"):
        data = load_file(shard)
        for key, vec in zip(data["keys"].numpy(), data["vectors"], strict=True):
            rows[(shard.parent.name, key.tobytes())] = vec
    return rows


def run(pairs: int, procs: int, threads: int, root: Path) -> dict:
    """Time a 1-process and a ``procs``-process build; compare the caches."""
    timings = {}
    for world in (1, procs):
        feat, out = root / f"features-{world}", root / f"timing-{world}.json"
        per = max(threads // world, 1)
        torch.multiprocessing.spawn(
            _build, args=(world, _free_port(), pairs, per, str(feat), str(out)), nprocs=world
        )
        timings[world] = {**json.loads(out.read_text()), "threads_per_process": per}
    one, many = _vectors(root / "features-1"), _vectors(root / f"features-{procs}")
    same_keys = one.keys() == many.keys()
    max_diff = max(float((v - many[k]).abs().max()) for k, v in one.items()) if same_keys else None
    return {"timings": timings, "same_keys": same_keys, "max_abs_diff": max_diff}


def markdown(res: dict) -> str:
    procs, n = res["procs"], res["pairs"]
    md = (
        f"# Cache building: 1 process vs {procs} processes\n\n"
        f"Machine: {res['machine']}. {n} training pairs of the built-in corpus, offline models "
        f"(multilingual-e5-small, SmolLM2-135M-Instruct), empty caches; `{res['command']}`.\n\n"
        "| processes × threads | encoder s | teacher s | total s | pairs/s |\n"
        "|---|---|---|---|---|\n"
    )
    for world, t in res["timings"].items():
        md += (f"| {world} × {t['threads_per_process']} | {t['encoder_s']:.1f} | "
               f"{t['teacher_s']:.1f} | {t['total_s']:.1f} | {n / t['total_s']:.1f} |\n")
    return md + (f"\nSpeed-up: {res['speedup']:.2f}×. Same texts cached: {res['same_keys']}; "
                 f"largest difference between the two caches: {res['max_abs_diff']:.2g}.\n")


OPTIONS = {
    "--pairs": {"type": int, "default": 300},
    "--procs": {"type": int, "default": 2},
    "--threads": {"type": int, "default": 2, "help": "torch threads in all"},
}


def main(argv: list[str] | None = None) -> None:
    args = common.parser_of(sys.modules[__name__]).parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="llink-cache-bench-") as tmp:
        res = run(args.pairs, args.procs, args.threads, Path(tmp))
    t1, tn = res["timings"][1], res["timings"][args.procs]
    n = t1["pairs"]
    res.update({
        "machine": machine_description(),
        "pairs": n,
        "pairs_per_s_1": n / t1["total_s"],
        f"pairs_per_s_{args.procs}": n / tn["total_s"],
        "speedup": t1["total_s"] / tn["total_s"],
        "procs": args.procs,
        "command": f"python -m benchmarks.cache_build --pairs {args.pairs} --procs "
                   f"{args.procs} --threads {args.threads}",
    })
    common.report("cache_build", res, markdown)


if __name__ == "__main__":
    main()
