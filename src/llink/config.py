"""Configuration: dataclasses for every stage, loaded from a file plus ``key=value`` overrides.

A config file (YAML, TOML or JSON) holds any subset of the sections below; what it
leaves out keeps the defaults, which are the offline default setup. Command-line
overrides use dotted keys: ``stage_a.steps=2000 model.num_slots=4``.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class ModelConfig:
    """Which frozen encoder and decoder to use, and how the foreign text reaches them."""

    encoder: str = "offline:multilingual-e5-small"
    decoder: str = "offline:smollm2-135m-instruct"
    encoder_prefix: str = "query: "  # e5 wants "query: "; xlm-roberta wants ""
    max_foreign_chars: int = 256
    num_slots: int = 8
    # Where the slots come from: pooled (one encoder vector per text, the paper) | tokens
    # (K queries also cross-attend over the encoder's token states: they carry the words)
    # | all_tokens (one slot per encoder token, up to num_slots: no compression)
    slot_source: str = "pooled"
    # encoder layer whose token states the slots read (-1: last). Layer 8 of e5-small carries
    # the words better than the last (lexical recall@20 0.56 vs 0.42 after 400 probe steps)
    token_layer: int = 8
    resampler_layers: int = 2  # cross-attention blocks of the token resampler
    literals: bool = False  # copy the foreign text's numbers and Latin words into the prompt
    cache_dir: str | None = None  # converted offline models; default ~/.cache/llink
    dtype: str = "float32"  # float32 | bfloat16 | float16 for the frozen models


@dataclass
class DataConfig:
    """Where the pairs come from and how they are split."""

    pairs: str = "builtin:en-km"  # builtin corpus name, or a .jsonl/.tsv(.gz) path
    lang: str = "km"
    dev_fraction: float = 0.02
    test_fraction: float = 0.04
    split_salt: str = "llink-split-v1"
    sentence_like_only: bool = True  # train/evaluate on sentence-like pairs
    max_train_pairs: int | None = 8000
    max_dev_pairs: int = 500
    max_test_pairs: int | None = None
    max_chars: int = 2000  # pairs with a longer side are dropped when read
    # Source groups (the part of a pair's `source` before ":", e.g. gettext) left out of
    # train and dev: a leave-one-source-out run (`llink eval holdout`); test keeps them.
    exclude_sources: list[str] = field(default_factory=list)
    # Monolingual English read through the encoder (llink.data.english): builtin:en-wordnet
    # or a .txt(.gz) file, one sentence per line; used where stage_a.english_fraction > 0
    english: str | None = "builtin:en-wordnet"
    max_english: int | None = 8000


@dataclass
class StageAConfig:
    """Contrastive alignment of the projector (METHOD.md, Stage A)."""

    steps: int = 6000
    batch_size: int = 128
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 600
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    tau_start: float = 0.17
    tau_end: float = 0.08
    queue_size: int = 32768
    queue_topk: int = 256
    mse_weight: float = 0.05
    lognorm_weight: float = 0.02
    dropout: float = 0.1
    hidden_mult: int = 4
    targets: str = "whitened"  # raw (the paper) | centred | whitened teacher states
    # Which decoder states are the targets: after teacher_layer blocks (-1: the last, the
    # paper), read at <foreign_emb> after the English (foreign_emb, the paper) or mean-pooled
    # over the English tokens (mean)
    teacher_layer: int = -1
    teacher_pooling: str = "foreign_emb"
    # share of each batch drawn from English sentences read through the encoder
    # (data.english): teaches the map outside the training domain
    english_fraction: float = 0.0
    whiten_eps: float = 1e-3  # eigenvalue floor, relative to the largest, for whitening
    eval_every: int = 500
    save_every: int = 1000
    encoder_batch_size: int = 64
    teacher_batch_size: int = 32


@dataclass
class StageBConfig:
    """Slot expansion, adapters and LoRA so the decoder uses the slots (METHOD.md, Stage B).

    Defaults are the recipe measured on the offline default (bridge-only warm-up with
    a strong usage term, then attention-only LoRA plus a matched-vs-mismatched term);
    ``configs/paper.yaml`` holds the paper's recipe.
    """

    steps: int = 160
    micro_batch: int = 8
    grad_accum: int = 1
    bridge_warmup_steps: int = 100  # LoRA frozen for these steps (0: LoRA from the start)
    lr_lora: float = 1e-4
    lr_bridge: float = 1e-3  # adapter + expander
    lr_scale: float = 5e-4
    lr_bow: float = 1e-3
    lr_reader: float = 3e-4  # what reads the encoder's token states (slot_source tokens|all_tokens)
    lr_projector: float = 0.0  # 0 keeps the Stage A projector frozen
    warmup_frac: float = 0.15
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    bow_weight: float = 0.1
    # Lexical alignment (llink.losses.lexical_loss): each answer word should be the nearest
    # decoder embedding row of some slot. A weight in every step, and a warm-up of
    # lexical_steps cheap steps (no decoder pass) before the decoder steps.
    lexical_weight: float = 0.0
    lexical_steps: int = 0
    lexical_batch: int = 32
    lexical_scale: float = 20.0
    direction_weight: float = 0.05
    nce_weight: float = 0.001
    nce_tau: float = 0.07
    # How Stage B makes the decoder depend on the slots (see llink.train.stage_b):
    # omit (no contrast term) | detached (the paper: usage hinge against the ablated loss, gradient of the
    # injected pass only) | mismatch (hinge against another example's slots, with the
    # gradient through both passes, bounded by the margin).
    contrast: str = "detached"
    usage_weight: float = 0.3
    usage_margin: float = 0.5
    usage_every: int = 1
    mismatch_weight: float = 0.5
    mismatch_margin: float = 1.0
    max_answer_tokens: int = 64
    use_chat_template: bool = True
    system_prompt: str | None = None  # None: the chat template's own system turn (if any)
    tasks: list[str] = field(default_factory=lambda: ["translate_to_english"])
    synthetic: str | None = None  # extra instruction examples (JSONL from `llink data synth`)
    eval_every: int = 40
    eval_pairs: int = 64
    save_every: int = 40


@dataclass
class EvalConfig:
    """What ``llink run`` evaluates after training, and the ``llink eval gen`` defaults."""

    gen_systems: list[str] = field(default_factory=lambda: ["llink", "base"])
    gen_n: int | None = 500  # test items for generation, a hash sample (None: all; 0: skip)
    nll_n: int | None = 256  # test items for the answer NLL, a hash sample (None: all)
    max_new_tokens: int = 48
    batch_size: int = 32  # prompts per generate call
    baseline: bool = False  # also train the direct fine-tuning baseline and generate with it
    judge: str | None = None  # judge LM for `llink run` (e.g. offline:qwen2.5-coder-0.5b-instruct)
    judge_n: int = 100
    report: bool = True  # write run_dir/report.html at the end of `llink run`


@dataclass
class ComputeConfig:
    """How training uses the hardware. Processes come from the launcher (``torchrun``,
    ``accelerate launch``); batch sizes stay global and are split over the processes."""

    mixed_precision: str = "no"  # no | bf16 | fp16 autocast for training (fp16 adds loss scaling)
    tf32: bool = True  # TF32 matmuls on Ampere+ GPUs
    gradient_checkpointing: bool = False  # decoder (Stage B, baseline): recompute activations
    fsdp: bool = False  # Stage B, baseline: shard the decoder's layers over the processes (FSDP2)


@dataclass
class Config:
    """The whole run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stage_a: StageAConfig = field(default_factory=StageAConfig)
    stage_b: StageBConfig = field(default_factory=StageBConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    run_dir: str = "runs/default"
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    seed: int = 0
    features_cache: str | None = (
        None  # encoder/teacher vector cache; default ~/.cache/llink/features
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """A config file or override is not valid."""


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        data = yaml.safe_load(text) or {}
    elif path.suffix == ".toml":
        data = tomllib.loads(text)
    elif path.suffix == ".json":
        data = json.loads(text)
    else:
        raise ConfigError(f"config file {path}: use .yaml, .toml or .json")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping")
    return data


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert where it is lossless."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not a valid {tp}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
    if origin is list:
        (arg,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, arg, where) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _apply(obj: Any, data: dict[str, Any], where: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{where}{key}: unknown setting; valid: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{key}: expected a section (mapping)")
            _apply(current, value, f"{where}{key}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], f"{where}{key}"))


def parse_override(text: str) -> dict[str, Any]:
    """Turn ``"a.b=3"`` into ``{"a": {"b": 3}}`` (values parsed as YAML scalars)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. stage_a.steps=2000")
    key, raw = text.split("=", 1)
    if raw.strip().lower() in ("none", "null", "~"):
        value = None
    else:
        value = yaml.safe_load(raw) if raw.strip() else ""
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Build a :class:`Config` from defaults, an optional file and ``key=value`` overrides."""
    cfg = Config()
    if path is not None:
        _apply(cfg, _read_file(Path(path)), "")
    for item in overrides or []:
        _apply(cfg, parse_override(item), "")
    validate(cfg)
    return cfg


CHOICES = {
    ("stage_a", "targets"): ("raw", "centred", "whitened"),
    ("model", "dtype"): ("float32", "bfloat16", "float16"),
    ("compute", "mixed_precision"): ("no", "bf16", "fp16"),
    ("stage_b", "contrast"): ("omit", "detached", "mismatch"),
    ("model", "slot_source"): ("pooled", "tokens", "all_tokens"),
    ("stage_a", "teacher_pooling"): ("foreign_emb", "mean"),
}


def validate(cfg: Config) -> None:
    """Reject values outside their allowed choices, naming the choices."""
    for (section, key), allowed in CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise ConfigError(f"{section}.{key}: {value!r} is not one of {', '.join(allowed)}")


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a :class:`Config` saved with :meth:`Config.to_dict` (unknown keys are errors)."""
    cfg = Config()
    _apply(cfg, data, "")
    validate(cfg)
    return cfg
