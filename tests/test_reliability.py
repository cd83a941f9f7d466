"""Issue 15, on tiny models: every bad input gets a clear one-line error and exit code 2,
every crash leaves a usable state, nothing unsafe is loaded, same-seed runs are identical."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from llink.backbones.offline import ModelUnavailable
from llink.cli import build_parser, main
from llink.config import RANGES, Config, load_config
from llink.method.model import load_llink
from llink.storage.checkpoints import HASH_KEY, CheckpointError, save_folder, stale_temporaries
from llink.train.state import load_state, save_state
from llink.workflows import Session, run_stage_a, run_stage_b

from .conftest import KHMER_ENGLISH
from .test_stage_a import make_pair_file

KM = KHMER_ENGLISH[0][1]
REPO = Path(__file__).resolve().parents[1]


def overrides(root: Path, enc: Path, dec: Path, run: str = "run", **extra) -> list[str]:
    """The tiny setup of tests/test_stage_b.py as KEY=VALUE overrides (CLI and in-process)."""
    items = {
        "model.encoder": enc, "model.decoder": dec, "model.encoder_prefix": "",
        "model.num_slots": 4, "data.pairs": root / "pairs.jsonl",
        "data.sentence_like_only": "false", "data.dev_fraction": 0.2,
        "data.test_fraction": 0.2, "data.max_train_pairs": "none", "stage_a.steps": 10,
        "stage_a.batch_size": 8, "stage_a.warmup_steps": 2, "stage_a.eval_every": 10,
        "stage_a.save_every": 5, "stage_a.queue_size": 32, "stage_a.queue_topk": 8,
        "stage_b.steps": 6, "stage_b.micro_batch": 4, "stage_b.bridge_warmup_steps": 3,
        "stage_b.eval_every": 3, "stage_b.save_every": 2, "stage_b.eval_pairs": 6,
        "stage_b.lora_r": 4, "stage_b.lora_alpha": 4, "stage_b.max_answer_tokens": 24,
        "run_dir": root / run, "features_cache": root / "features", "device": "cpu",
        # the paper's design, as in tests/test_stage_a.py
        "model.slot_source": "pooled", "model.literals": "false", "stage_a.teacher_layer": -1,
        "stage_a.teacher_pooling": "foreign_emb", "stage_b.contrast": "detached",
        "stage_b.system_prompt": "none",
    }
    items.update(extra)
    return [f"{k}={v}" for k, v in items.items()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_encoder_dir, tiny_decoder_dir):
    """One uninterrupted Stage A + Stage B run; tests damage copies of its folders."""
    root = tmp_path_factory.mktemp("reliability")
    make_pair_file(root)
    ov = overrides(root, tiny_encoder_dir, tiny_decoder_dir)
    session = Session(load_config(None, ov), progress=False)
    run_stage_a(session)
    summary = run_stage_b(session)
    return SimpleNamespace(root=root, run=root / "run", session=session, summary=summary,
                           enc=tiny_encoder_dir, dec=tiny_decoder_dir,
                           ov=lambda run="run", **kw: overrides(root, tiny_encoder_dir,
                                                                tiny_decoder_dir, run, **kw))


def cli(capsys, *argv: str) -> tuple[int, str]:
    """Exit code and stderr of ``llink ARGV`` run in-process (argparse errors included)."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse: usage line + error, exit 2
        rc = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def expect_error(capsys, needles: list[str], *argv: str) -> str:
    """Run ``llink ARGV``: exit 2, no traceback, the error is the last stderr line and
    holds every needle. Returns that line."""
    rc, err = cli(capsys, *argv)
    assert rc == 2, err
    line = err.strip().splitlines()[-1]
    assert "error:" in line, err
    for needle in needles:
        assert needle in line, (needle, err)
    return line


def model_copy(trained, tmp_path: Path, name: str = "m", hashes: bool = True) -> Path:
    """A copy of the trained LLINK folder; ``hashes=False`` makes it an older-style folder."""
    folder = tmp_path / name
    shutil.copytree(trained.run / "stage_b", folder)
    if not hashes:
        meta = json.loads((folder / "llink.json").read_text())
        del meta[HASH_KEY]
        (folder / "llink.json").write_text(json.dumps(meta))
    return folder


def infer(capsys, folder: Path, needles: list[str], *extra: str) -> str:
    return expect_error(capsys, needles, "infer", "--model", folder, "--device", "cpu",
                        "--max-new-tokens", "2", *extra, KM)


# --------------------------------------------------------------------------- model folders
def test_hashes_are_recorded_and_a_good_folder_loads(trained, tmp_path):
    meta = json.loads((trained.run / "stage_b" / "llink.json").read_text())
    assert set(meta[HASH_KEY]) == {"bridge.safetensors", "lora/adapter_model.safetensors"}
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in meta[HASH_KEY].values())
    for name in ("stage_a/stage_a.json", "stage_b-state/state.json"):
        assert HASH_KEY in json.loads((trained.run / name).read_text())
    # a folder saved before hashes were recorded still loads (no verification possible)
    old = model_copy(trained, tmp_path, hashes=False)
    assert load_llink(old, encoder=trained.session.encoder).has_lora


def test_llink_json_not_json(trained, tmp_path, capsys):
    folder = model_copy(trained, tmp_path)
    (folder / "llink.json").write_text('{"format": 1, "encoder": ')
    infer(capsys, folder, ["llink.json", "not valid JSON"])


@pytest.mark.parametrize("damage", ["truncated", "random", "one_byte"])
def test_damaged_bridge_is_refused_by_its_hash(trained, tmp_path, capsys, damage):
    folder = model_copy(trained, tmp_path)
    path = folder / "bridge.safetensors"
    data = path.read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "random":
        data = os.urandom(len(data))
    else:
        data = data[:-1] + bytes([data[-1] ^ 1])
    path.write_bytes(data)
    infer(capsys, folder, ["bridge.safetensors", "SHA-256"])


@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_damaged_bridge_without_hashes_is_named(trained, tmp_path, capsys, damage):
    folder = model_copy(trained, tmp_path, hashes=False)
    path = folder / "bridge.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(4096))
    infer(capsys, folder, ["bridge.safetensors", "not a readable safetensors file"])


def _rewrite_bridge(folder: Path, change) -> None:
    path = folder / "bridge.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, str(path))


def test_wrong_tensor_shape_is_named(trained, tmp_path, capsys):
    folder = model_copy(trained, tmp_path, hashes=False)
    key = next(k for k, v in load_file(folder / "bridge.safetensors").items()
               if k.startswith("bridge.") and v.ndim == 2)

    def widen(t):
        t[key] = torch.zeros(t[key].shape[0], t[key].shape[1] + 3)

    _rewrite_bridge(folder, widen)
    line = infer(capsys, folder, ["bridge.safetensors", key.removeprefix("bridge."), "shape"])
    assert "size mismatch" not in line


def test_reserved_rows_for_another_k_are_named(trained, tmp_path, capsys):
    folder = model_copy(trained, tmp_path, hashes=False)

    def more_slots(t):
        t["reserved_rows"] = torch.cat([t["reserved_rows"], t["reserved_rows"][-1:]])

    _rewrite_bridge(folder, more_slots)
    infer(capsys, folder, ["bridge.safetensors", "reserved-token rows", "num_slots 4"])


def test_missing_lora_folder_is_named(trained, tmp_path, capsys):
    folder = model_copy(trained, tmp_path)
    shutil.rmtree(folder / "lora")
    infer(capsys, folder, ["lora/adapter_model.safetensors", "missing", "half-copied"])
    old = model_copy(trained, tmp_path, "old", hashes=False)
    shutil.rmtree(old / "lora")
    infer(capsys, old, [str(old / "lora"), "missing", "LoRA"])


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pkl"])
def test_pickle_files_are_refused_and_never_unpickled(trained, tmp_path, capsys, monkeypatch,
                                                      suffix):
    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    folder = model_copy(trained, tmp_path, hashes=False)
    # peft would read adapter_model.bin when there is no adapter_model.safetensors
    (folder / "lora" / "adapter_model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, folder / "lora" / f"adapter_model{suffix}")
    infer(capsys, folder, [f"adapter_model{suffix}", "pickle"])
    with_hashes = model_copy(trained, tmp_path, "hashed")
    (with_hashes / "lora" / f"extra{suffix}").write_bytes(b"\x80\x04not really a pickle")
    infer(capsys, with_hashes, [f"extra{suffix}", "pickle"])


def test_no_code_path_unpickles():
    """Nothing in the package, its benchmarks or scripts calls torch.load or pickle."""
    pattern = re.compile(r"torch\.load\(|\bimport pickle\b|pickle\.loads?\(|allow_pickle=True"
                         r"|\bimport dill\b|\bjoblib\.load\(")
    found = [f"{p}:{n}" for folder in ("src", "benchmarks", "scripts")
             for p in sorted((REPO / folder).rglob("*.py"))
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if pattern.search(line)]
    assert found == []


def test_tampered_or_half_copied_folder_is_refused(trained, tmp_path, capsys):
    folder = model_copy(trained, tmp_path)
    lora = folder / "lora" / "adapter_model.safetensors"
    tensors = load_file(lora)
    key = next(iter(tensors))
    tensors[key] = tensors[key] + 1.0  # a valid file with other weights
    save_file(tensors, str(lora))
    infer(capsys, folder, ["adapter_model.safetensors", "SHA-256", "llink.json"])
    extra = model_copy(trained, tmp_path, "extra")
    shutil.copy(extra / "bridge.safetensors", extra / "lora" / "more.safetensors")
    infer(capsys, extra, ["more.safetensors", "not recorded"])


def test_stage_a_folder_where_stage_b_is_expected_and_back(trained, capsys):
    infer(capsys, trained.run / "stage_a",
          ["is a Stage A artifact (stage_a.json), not the LLINK model expected here "
           "(llink.json)", "llink train stage-b"])
    expect_error(capsys, ["is an LLINK model (llink.json), not the Stage A artifact expected "
                          "here (stage_a.json)", "llink train stage-a"],
                 "eval", "retrieval", "--quiet", "--no-baselines", "--stage-a",
                 trained.run / "stage_b", *trained.ov())
    infer(capsys, trained.run / "stage_b-state", ["is a training state", "(state.json)"])


def test_unreachable_decoder_says_it_is_not_available_offline(trained, tmp_path, capsys,
                                                              monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no retries
    folder = model_copy(trained, tmp_path)
    meta = json.loads((folder / "llink.json").read_text())
    meta["decoder"] = "nobody-here/no-such-model"
    (folder / "llink.json").write_text(json.dumps(meta))
    infer(capsys, folder, ["nobody-here/no-such-model", "not available offline", "local folder",
                           "llink.json"])
    with pytest.raises(ModelUnavailable, match="model.decoder runs/no/such: no such folder"):
        _ = Session(load_config(None, trained.ov("x", **{"model.decoder": "runs/no/such"})),
                    progress=False).decoder


# --------------------------------------------------------------------------- arguments, inputs
def test_file_argument_binary_or_folder(trained, tmp_path, capsys):
    binary = tmp_path / "in.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81 not text")
    model = trained.run / "stage_b"
    expect_error(capsys, ["--file", "not UTF-8"], "infer", "--model", model, "--file", binary)
    expect_error(capsys, ["--file", "is a folder"], "infer", "--model", model, "--file",
                 tmp_path)
    expect_error(capsys, ["--file", "no such file"], "batch", "--model", model, "--file",
                 tmp_path / "none.txt")


@pytest.mark.parametrize(("extra", "needle"), [
    (["--device", "banana"], "device 'banana' is not a device"),
    (["--device", "cuda:7"], "device 'cuda:7'"),
    (["--task", "ask"], "--task ask needs --question"),
])
def test_device_and_task_errors(trained, capsys, extra, needle):
    expect_error(capsys, [needle], "infer", "--model", trained.run / "stage_b", *extra, KM)


def test_text_that_is_not_utf8(trained, capsys, monkeypatch):
    """Undecodable bytes in argv or stdin reach Python as lone surrogates."""
    import io

    model = trained.run / "stage_b"
    expect_error(capsys, ["text argument 1", "not UTF-8"], "infer", "--model", model, "\udcff")
    expect_error(capsys, ["text argument", "not UTF-8"], "probe", "--model", model, "a\udcfe")
    stdin = io.TextIOWrapper(io.BytesIO(b"\xff\xfe ok\n"), encoding="utf-8",
                             errors="surrogateescape")
    monkeypatch.setattr(sys, "stdin", stdin)
    expect_error(capsys, ["standard input", "not UTF-8"], "infer", "--model", model,
                 "--file", "-")


@pytest.mark.parametrize(("option", "value"), [
    ("--max-new-tokens", "0"), ("--max-new-tokens", "-1"), ("--max-new-tokens", "x"),
    ("--gate-boost", "nan"), ("--gate-boost", "inf"), ("--gate-boost", "-5"),
    ("--gate-boost", "1e9"), ("--gate-boost", "-inf"),
])
def test_infer_argument_bounds(capsys, option, value):
    rc, err = cli(capsys, "infer", "--model", "nowhere", f"{option}={value}", KM)
    assert rc == 2 and option in err and ("out of range" in err or "not" in err), err


def test_gate_boost_bounds_are_the_servers():
    from pydantic import ValidationError

    from llink.inference.api import LLINKFields

    args = build_parser().parse_args(["infer", "--gate-boost", "10", KM])
    assert args.gate_boost == 10.0
    assert LLINKFields(gate_boost=10.0).gate_boost == 10.0
    with pytest.raises(ValidationError):
        LLINKFields(gate_boost=10.5)
    for text in ("0", "2.5"):
        assert build_parser().parse_args(["infer", "--gate-boost", text, KM]).gate_boost \
            == float(text)


def test_other_count_arguments_are_bounded(capsys):
    for argv in (["eval", "gen", "--n", "0"], ["eval", "gen", "--batch-size", "-2"],
                 ["probe", "--top", "0", KM], ["serve", "--model", "m", "--port", "70000"],
                 ["serve", "--model", "m", "--batch-wait-ms", "nan"]):
        rc, err = cli(capsys, *argv)
        assert rc == 2 and "out of range" in err, (argv, err)


@pytest.mark.parametrize("usable", [0, 1])
def test_retrieval_pool_too_small(trained, tmp_path, capsys, usable):
    pairs = tmp_path / "few.jsonl"
    lines = [json.dumps({"en": en, "foreign": km}) for en, km in KHMER_ENGLISH[:usable]]
    lines.append(json.dumps({"en": "same", "foreign": "same"}))  # dropped: identical sides
    pairs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    expect_error(capsys, ["--pairs", str(pairs), "at least 2"], "eval", "retrieval",
                 "--quiet", "--no-baselines", "--pairs", pairs, *trained.ov())


@pytest.mark.parametrize(("override", "needle"), [
    ("stage_a.steps=-1", "stage_a.steps=-1 is out of range: use an integer >= 1"),
    ("stage_b.steps=0", "stage_b.steps"),
    ("stage_a.batch_size=0", "stage_a.batch_size"),
    ("stage_b.micro_batch=-4", "stage_b.micro_batch"),
    ("stage_a.lr=0", "stage_a.lr=0.0 is out of range: use a number > 0"),
    ("stage_b.lr_bridge=-1e-3", "stage_b.lr_bridge"),
    ("stage_a.lr=nan", "stage_a.lr=nan"),
    ("data.dev_fraction=1.5", "data.dev_fraction=1.5 is out of range: use a number in [0, 1)"),
    ("stage_b.warmup_frac=1", "stage_b.warmup_frac"),
    ("stage_b.lora_dropout=-0.1", "stage_b.lora_dropout"),
    ("model.num_slots=0", "model.num_slots=0 is out of range: use an integer >= 1"),
    ("eval.max_new_tokens=0", "eval.max_new_tokens"),
    ("seed=-1", "seed=-1"),
    ("stage_a.betas=[0.9,1.0]", "stage_a.betas[1]"),
    ("stage_a.min_lr=1", "stage_a.min_lr=1 exceeds stage_a.lr"),
])
def test_config_values_out_of_range(capsys, override, needle):
    line = expect_error(capsys, [needle], "config", "show", override)
    assert line.startswith("llink: error:")


def test_fractions_must_leave_training_data(capsys):
    expect_error(capsys, ["data.dev_fraction + data.test_fraction", "below 1"], "config",
                 "show", "data.dev_fraction=0.5", "data.test_fraction=0.5")


def test_every_range_names_a_real_setting_and_defaults_pass():
    cfg = Config()
    for section, key in RANGES:
        owner = getattr(cfg, section) if section else cfg
        assert dataclasses.is_dataclass(owner) and hasattr(owner, key), (section, key)
    load_config(None)
    for name in ("offline.yaml", "paper.yaml"):
        load_config(REPO / "configs" / name)


@pytest.mark.parametrize(("suffix", "text"), [
    (".yaml", "stage_a:\n  steps: [1,\n"),
    (".yaml", "stage_a: {steps: 3\n"),
    (".json", '{"stage_a": {"steps": 3,}}'),
    (".toml", "[stage_a]\nsteps = = 3\n"),
])
def test_malformed_config_files_are_named(tmp_path, capsys, suffix, text):
    path = tmp_path / f"bad{suffix}"
    path.write_text(text, encoding="utf-8")
    kind = {".yaml": "YAML", ".json": "JSON", ".toml": "TOML"}[suffix]
    expect_error(capsys, [str(path), f"not valid {kind}"], "config", "show", "--config", path)


def test_binary_config_file_is_named(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"\xff\xfe\x81")
    expect_error(capsys, [str(path), "not UTF-8"], "config", "show", "--config", path)


@pytest.mark.parametrize("override", ["stage_a.lr=[1,", "stage_b.lora_targets=[q_proj",
                                      "run_dir='unclosed", "stage_a.betas={a: [}"])
def test_malformed_overrides_are_named(capsys, override):
    expect_error(capsys, [f"override {override!r}", "not valid YAML"], "config", "show",
                 override)


def test_resume_with_a_changed_setting(trained, capsys):
    shutil.copytree(trained.run, trained.root / "changed")
    line = expect_error(capsys, ["Stage A settings changed", "lr: saved 0.001, now 0.5",
                                 "without --resume"],
                        "train", "stage-a", "--resume", "--quiet",
                        *trained.ov("changed", **{"stage_a.lr": 0.5}))
    assert line.startswith("llink: error: cannot resume")


def test_run_resume_starts_a_stage_the_stopped_run_never_reached(trained, capsys):
    """`llink run --resume` after a stop between Stage A and Stage B: Stage A resumes (at
    its end: nothing to redo), Stage B starts from step 0 instead of refusing."""
    cut = trained.root / "stopped-after-a"
    shutil.copytree(trained.run, cut)
    for name in ("stage_b", "stage_b-best", "stage_b-state"):
        shutil.rmtree(cut / name)
    for log in cut.glob("stage_b.*"):
        log.unlink()
    rc = main(["run", "--resume", "--quiet", *trained.ov("stopped-after-a", **{
        "eval.gen_n": 2, "eval.nll_n": 2, "eval.report": "false"})])
    out = capsys.readouterr().out
    assert rc == 0, out[-2000:]
    assert "resuming Stage A from step 10" in out
    assert f"Stage B: no saved state in {cut}, so it starts from step 0" in out
    log = (cut / "stage_b.metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in log] == list(range(7))


def test_user_commands_print_no_library_deprecation_warnings(trained, capsys):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        rc, _ = cli(capsys, "infer", "--model", trained.run / "stage_b", "--device", "cpu",
                    "--max-new-tokens", "2", KM)
    assert rc == 0
    deprecations = [str(w.message) for w in seen
                    if issubclass(w.category, FutureWarning | DeprecationWarning)]
    assert deprecations == []


def test_console_entry_gives_one_line_and_exit_2(trained, tmp_path):
    """The real `llink` process: a damaged folder gives one error line, no traceback."""
    folder = model_copy(trained, tmp_path)
    (folder / "llink.json").write_text("{")
    proc = subprocess.run([sys.executable, "-m", "llink", "infer", "--model", str(folder), KM],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "llink.json" in proc.stderr
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr


# --------------------------------------------------------------------------- crash safety
KILLER = r"""
import json, os, signal, sys

mode, argv = sys.argv[1], sys.argv[2:]
if mode == "log":  # die half-way through writing the record of step 5
    import llink.storage.runlog as runlog

    real_log = runlog.MetricsLog.log

    def log(self, record, prefix="", echo=None):
        if record.get("step") == 5:
            line = json.dumps({"time": 1.0, **record})
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(line[: len(line) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return real_log(self, record, prefix, echo)

    runlog.MetricsLog.log = log
else:  # die half-way through writing the second training-state checkpoint (step 4)
    import llink.storage.checkpoints as checkpoints

    real_save, calls = checkpoints.save_file, []

    def save_file(tensors, path, *args, **kwargs):
        real_save(tensors, path, *args, **kwargs)
        if "/.stage_b-state." in path:
            calls.append(path)
            if len(calls) == 2:
                with open(path, "r+b") as fh:
                    fh.truncate(os.path.getsize(path) // 2)
                os.kill(os.getpid(), signal.SIGKILL)

    checkpoints.save_file = save_file
from llink.cli import main

sys.exit(main(argv))
"""


def _killed_run(trained, run: str, mode: str) -> Path:
    """Stage B of a copy of the trained run, in a child process that kills itself -9."""
    run_dir = trained.root / run
    run_dir.mkdir()
    shutil.copytree(trained.run / "stage_a", run_dir / "stage_a")
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, mode, "train", "stage-b", "--quiet", *trained.ov(run)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    return run_dir


def _strict_json(path: Path):
    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def _same_weights(a: Path, b: Path) -> None:
    for name in ("bridge.safetensors", "lora/adapter_model.safetensors"):
        ta, tb = load_file(a / name), load_file(b / name)
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), (name, k, (ta[k] - tb[k]).abs().max())


def _check_whole_run_summary(trained, run_dir: Path) -> None:
    summary = _strict_json(run_dir / "stage_b.summary.json")  # no Infinity, no NaN
    full = trained.summary
    assert summary["dev_start"] == full["dev_start"] and summary["dev_start"]
    assert summary["dev_best"] == full["dev_best"] and summary["dev_best"]["step"] in (3, 6)
    assert summary["train_seconds"] > 0 and summary["steps"] == 6
    records = [json.loads(x) for x in (run_dir / "stage_b.metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "phase" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "phase" not in r] == [0]


def test_kill_during_a_log_write_then_resume(trained, capsys):
    run_dir = _killed_run(trained, "killed-log", "log")
    log = run_dir / "stage_b.metrics.jsonl"
    with pytest.raises(json.JSONDecodeError):
        json.loads(log.read_text().splitlines()[-1])  # the torn line the kill left
    rc = main(["train", "stage-b", "--resume", "--quiet", *trained.ov("killed-log")])
    out = capsys.readouterr().out
    assert rc == 0 and "dropped a torn last line" in out and "stage_b.metrics.jsonl" in out
    _check_whole_run_summary(trained, run_dir)
    _same_weights(trained.run / "stage_b", run_dir / "stage_b")


def test_kill_during_a_checkpoint_write_then_resume(trained, capsys):
    run_dir = _killed_run(trained, "killed-ckpt", "checkpoint")
    stale = stale_temporaries(run_dir / "stage_b-state")
    assert len(stale) == 1  # the half-written copy of the step-4 state
    assert json.loads((run_dir / "stage_b-state" / "state.json").read_text())["step"] == 2
    rc = main(["train", "stage-b", "--resume", "--quiet", *trained.ov("killed-ckpt")])
    out = capsys.readouterr().out
    assert rc == 0 and "removed 1 temporary folder" in out
    assert stale_temporaries(run_dir / "stage_b-state") == []
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]
    _check_whole_run_summary(trained, run_dir)
    _same_weights(trained.run / "stage_b", run_dir / "stage_b")


def test_truncated_training_state_is_named(trained, capsys):
    run_dir = trained.root / "truncated"
    shutil.copytree(trained.run, run_dir)
    state = run_dir / "stage_b-state" / "state.safetensors"
    state.write_bytes(state.read_bytes()[:1000])
    expect_error(capsys, [str(state), "SHA-256", "without --resume"], "train", "stage-b",
                 "--resume", "--quiet", *trained.ov("truncated"))


def test_truncated_state_without_hashes_is_named(tmp_path):
    """A state saved before hashes were recorded: the safetensors error names the file."""
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(lin.parameters())
    lin(torch.ones(1, 3)).sum().backward()
    opt.step()
    save_state(tmp_path / "s", {"lin": lin.state_dict()}, opt, 7, {"a": 1})
    meta_path = tmp_path / "s" / "state.json"
    meta = json.loads(meta_path.read_text())
    del meta[HASH_KEY]
    meta_path.write_text(json.dumps(meta))
    assert load_state(tmp_path / "s", "test", {"a": 1}, opt)[0] == 7
    path = tmp_path / "s" / "state.safetensors"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match=r"state\.safetensors: not a readable safetensors"):
        load_state(tmp_path / "s", "test", {"a": 1}, opt)


def test_stale_temporaries_are_found_but_old_copies_kept(tmp_path):
    save_folder(tmp_path / "ck", {"t": {"x": torch.zeros(2)}}, {"meta": {"a": 1}})
    (tmp_path / ".ck.abcd1234").mkdir()  # left by a killed save
    (tmp_path / ".ck.old").mkdir()  # may be the only complete copy: not a temporary
    (tmp_path / ".ck-state.abcd1234").mkdir()  # another folder's
    assert [p.name for p in stale_temporaries(tmp_path / "ck")] == [".ck.abcd1234"]
    save_folder(tmp_path / "ck", {"t": {"x": torch.ones(2)}}, {"meta": {"a": 2}})
    # the new save replaced ck (and its .old copy) and removed only its own temporary
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ck-state.abcd1234", "ck"]


def test_same_seed_stage_b_runs_are_bit_identical(trained):
    """Rerun Stage B in this process (its global generator is elsewhere by now)."""
    run_dir = trained.root / "again"
    run_dir.mkdir()
    shutil.copytree(trained.run / "stage_a", run_dir / "stage_a")
    torch.manual_seed(12345)  # whatever state the process is in must not matter
    summary = run_stage_b(Session(load_config(None, trained.ov("again")), progress=False))
    _same_weights(trained.run / "stage_b", run_dir / "stage_b")
    assert summary["dev_final"] == trained.summary["dev_final"]
    assert not math.isinf(summary["dev_best"]["nll_injected"])
