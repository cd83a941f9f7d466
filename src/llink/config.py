"""Configuration: dataclasses for every stage, loaded from a file plus ``key=value`` overrides.

A config file (YAML, TOML or JSON) holds any subset of the sections below; what it
leaves out keeps the defaults, which are the offline default setup. Command-line
overrides use dotted keys: ``stage_a.steps=2000 model.num_slots=4``.
"""

from __future__ import annotations

import dataclasses
import json
import math
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
    slot_source: str = "tokens"
    # encoder layer whose token states the slots read (-1: last). Layer 8 of e5-small carries
    # the words better than the last (lexical recall@20 0.56 vs 0.42 after 400 probe steps)
    token_layer: int = 8
    resampler_layers: int = 2  # cross-attention blocks of the token resampler
    literals: bool = True  # copy the foreign text's numbers and Latin words into the prompt
    # slot_source=tokens: a text takes ceil(slots_per_token x its encoder tokens) of the
    # num_slots slots, at least 1 (0: always all of them)
    slots_per_token: float = 0.0
    cache_dir: str | None = None  # converted offline models; default ~/.cache/llink
    dtype: str = "float32"  # float32 | bfloat16 | float16 for the frozen models


@dataclass
class DataConfig:
    """Where the pairs come from and how they are split."""

    # builtin corpus name, or a .jsonl/.tsv(.gz) path; several corpora (one per language):
    # a list or a comma-separated string, e.g. "builtin:en-km,builtin:en-th"
    pairs: str | list[str] = "builtin:en-km"
    lang: str = "km"
    dev_fraction: float = 0.02
    test_fraction: float = 0.04
    split_salt: str = "llink-split-v1"
    sentence_like_only: bool = True  # train/evaluate on sentence-like pairs
    max_train_pairs: int | None = 8000  # per language (likewise max_dev/test_pairs)
    max_dev_pairs: int = 500
    max_test_pairs: int | None = None
    max_chars: int = 2000  # pairs with a longer side are dropped when read
    # With several languages, each training batch gives language L a share proportional to
    # n_L ** lang_alpha (n_L: its training rows): 0 draws languages uniformly, 1 in
    # proportion to their size (every row equally likely). One language: no effect.
    lang_alpha: float = 0.0
    # Source groups (the part of a pair's `source` before ":", e.g. gettext) left out of
    # train and dev: a leave-one-source-out run (`llink eval holdout`); test keeps them.
    exclude_sources: list[str] = field(default_factory=list)
    # Languages of data.pairs kept out of train and dev entirely (their test split stays):
    # zero-shot through the multilingual encoder, reported beside the trained languages
    zero_shot: list[str] = field(default_factory=list)
    # Monolingual English read through the encoder (llink.data.english): builtin:en-wordnet
    # or a .txt(.gz) file, one sentence per line; used where stage_a.english_fraction > 0
    # and by stage_b.english_examples
    english: str | None = "builtin:en-wordnet"
    max_english: int | None = 8000  # Stage A's pool (Stage B takes its own count)


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
    # over the English tokens (mean). Default: layer 10, mean (see README, Method notes)
    teacher_layer: int = 10
    teacher_pooling: str = "mean"
    # share of each batch drawn from English sentences read through the encoder
    # (data.english): teaches the map outside the training domain (0: the paper; the
    # quick start too, see README "Design comparisons"; configs/offline-long.yaml: 0.3)
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
    # random: each step draws its own batch | epoch: passes over the training examples
    # (every example once per pass; one language)
    sampling: str = "random"
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
    # Lexical alignment (llink.method.losses.lexical_loss): each answer word should be the nearest
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
    contrast: str = "omit"
    usage_weight: float = 0.3
    usage_margin: float = 0.5
    usage_every: int = 1
    mismatch_weight: float = 0.5
    mismatch_margin: float = 1.0
    max_answer_tokens: int = 64
    use_chat_template: bool = True
    # None: the chat template's own system turn (if any); "": an empty one (shorter prompt)
    system_prompt: str | None = ""
    # the answer-language line before the foreign text, not after it: fewer tokens to
    # prefill per request behind a prefix cache (llink.method.inject.instruction_text)
    foreign_last: bool = False
    tasks: list[str] = field(default_factory=lambda: ["translate_to_english"])
    synthetic: str | None = None  # extra instruction examples (JSONL from `llink data synth`)
    # English sentences of data.english added as examples read through the encoder and
    # answered by themselves (LangBridge trains its bridge on English alone): the first N
    # in the hash order Stage A's data.max_english also takes its pool from
    english_examples: int = 0
    eval_every: int = 40
    eval_pairs: int = 64
    save_every: int = 40
    # also keep the model every N steps (stage_b-stepN/, baseline-stepN/), to compare
    # systems at equal steps part-way through a long run; 0: only the final and best
    snapshot_every: int = 0


#: The literal bias (:class:`llink.method.literals.LiteralBias`) of ``llink infer`` and the
#: evaluations (``eval.literal_bias``): chosen on the 51 dev items whose reference has a
#: number, where the default model kept them in 41 (6 without), the best of 0-8.
DEFAULT_LITERAL_BIAS = 4.0


@dataclass
class EvalConfig:
    """What ``llink run`` evaluates after training, and the ``llink eval gen`` defaults."""

    gen_systems: list[str] = field(default_factory=lambda: ["llink", "base"])
    gen_n: int | None = 500  # test items for generation, a hash sample (None: all; 0: skip)
    nll_n: int | None = 256  # test items for the answer NLL, a hash sample (None: all)
    # an out-of-domain pair file the main job also evaluates (retrieval + generation);
    # "auto": the shipped UDHR set of data.lang (src/llink/corpora/eval/udhr-en-LANG.jsonl)
    ood_pairs: str | None = "auto"
    # everyday sentences with key words, translated with --strict and scored right/wrong
    # (llink.eval.accepted); "auto": src/llink/corpora/eval/everyday-en-LANG.jsonl
    everyday_pairs: str | None = "auto"
    # the retrieval table's reference rows beyond the encoder's own: decoder-native states
    # (one decoder pass over every raw test text: the slowest row) and the Latin floor
    retrieval_baselines: bool = True
    max_new_tokens: int = 48
    # > 0: LLINK's generation adds this to the logits of the foreign text's literals
    # (numbers, Latin words) until they are written (llink.method.literals.LiteralBias)
    literal_bias: float = DEFAULT_LITERAL_BIAS
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


#: The largest gate boost inference accepts (``llink infer --gate-boost``, the server's
#: ``llink.gate_boost``): it scales the gated adapter's contribution, 1 = as trained.
MAX_GATE_BOOST = 10.0


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.suffix not in (".yaml", ".yml", ".toml", ".json"):
        raise ConfigError(f"config file {path}: use .yaml, .toml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it ({exc.strerror})") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text) or {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML ({exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML ({_yaml_problem(exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A one-line account of a YAML error: what is wrong and where (line, column)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


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
    if not key.strip():
        raise ConfigError(f"override {text!r}: the key is empty; expected key=value, e.g. "
                          "stage_a.steps=2000")
    if raw.strip().lower() in ("none", "null", "~"):
        value = None
    else:
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"override {text!r}: the value is not valid YAML ({_yaml_problem(exc)}); "
                "close lists and quotes, e.g. stage_a.betas=[0.9,0.98]"
            ) from None
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
    ("stage_b", "sampling"): ("random", "epoch"),
    ("stage_b", "contrast"): ("omit", "detached", "mismatch"),
    ("model", "slot_source"): ("pooled", "tokens", "all_tokens"),
    ("stage_a", "teacher_pooling"): ("foreign_emb", "mean"),
}


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric setting (``None`` is always allowed where the type is
    optional); non-finite numbers are never allowed."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself excluded
    hi_open: bool = False  # hi itself excluded
    integer: bool = False

    def ok(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        lo, hi = _num(self.lo), _num(self.hi)
        if self.lo is not None and self.hi is not None:
            return (f"{kind} in {'(' if self.lo_open else '['}{lo}, {hi}"
                    f"{')' if self.hi_open else ']'}")
        if self.lo is not None:
            return f"{kind} {'>' if self.lo_open else '>='} {lo}"
        if self.hi is not None:
            return f"{kind} {'<' if self.hi_open else '<='} {hi}"
        return f"a finite {kind.split()[-1]}"


def _num(x: float | None) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _count(lo: int = 1) -> Range:
    return Range(lo, integer=True)


_POSITIVE = Range(0.0, lo_open=True)  # a rate, scale or temperature
_NON_NEGATIVE = Range(0.0)  # a weight, decay or margin (0 turns it off)
_FRACTION = Range(0.0, 1.0, hi_open=True)  # a share or a dropout probability

#: Numeric settings and their allowed values, checked by :func:`validate`. Settings
#: absent here (e.g. layer indices, where negatives count from the end) take any value.
RANGES: dict[tuple[str, str], Range] = {
    ("model", "max_foreign_chars"): _count(0),  # 0: no clipping
    ("model", "num_slots"): _count(1),
    ("model", "resampler_layers"): _count(0),
    ("model", "token_layer"): Range(-1, None, integer=True),  # -1: the last layer
    ("model", "slots_per_token"): _NON_NEGATIVE,  # 0: every text takes all the slots
    ("data", "dev_fraction"): _FRACTION,
    ("data", "test_fraction"): _FRACTION,
    ("data", "max_train_pairs"): _count(1),
    ("data", "max_dev_pairs"): _count(1),
    ("data", "max_test_pairs"): _count(1),
    ("data", "max_chars"): _count(1),
    ("data", "lang_alpha"): _NON_NEGATIVE,
    ("data", "max_english"): _count(0),
    ("stage_a", "steps"): _count(1),
    ("stage_a", "batch_size"): _count(1),
    ("stage_a", "grad_accum"): _count(1),
    ("stage_a", "lr"): _POSITIVE,
    ("stage_a", "min_lr"): _NON_NEGATIVE,
    ("stage_a", "warmup_steps"): _count(0),
    ("stage_a", "weight_decay"): _NON_NEGATIVE,
    ("stage_a", "grad_clip"): _POSITIVE,
    ("stage_a", "tau_start"): _POSITIVE,
    ("stage_a", "tau_end"): _POSITIVE,
    ("stage_a", "queue_size"): _count(0),
    ("stage_a", "queue_topk"): _count(0),
    ("stage_a", "mse_weight"): _NON_NEGATIVE,
    ("stage_a", "lognorm_weight"): _NON_NEGATIVE,
    ("stage_a", "dropout"): _FRACTION,
    ("stage_a", "hidden_mult"): _count(1),
    ("stage_a", "english_fraction"): _FRACTION,
    ("stage_a", "whiten_eps"): Range(0.0, 1.0, lo_open=True),
    ("stage_a", "eval_every"): _count(1),
    ("stage_a", "save_every"): _count(1),
    ("stage_a", "encoder_batch_size"): _count(1),
    ("stage_a", "teacher_batch_size"): _count(1),
    ("stage_b", "steps"): _count(1),
    ("stage_b", "micro_batch"): _count(1),
    ("stage_b", "grad_accum"): _count(1),
    ("stage_b", "bridge_warmup_steps"): _count(0),
    ("stage_b", "lr_lora"): _NON_NEGATIVE,
    ("stage_b", "lr_bridge"): _NON_NEGATIVE,
    ("stage_b", "lr_scale"): _NON_NEGATIVE,
    ("stage_b", "lr_bow"): _NON_NEGATIVE,
    ("stage_b", "lr_reader"): _NON_NEGATIVE,
    ("stage_b", "lr_projector"): _NON_NEGATIVE,  # 0 keeps the projector frozen
    ("stage_b", "warmup_frac"): _FRACTION,
    ("stage_b", "weight_decay"): _NON_NEGATIVE,
    ("stage_b", "grad_clip"): _POSITIVE,
    ("stage_b", "lora_r"): _count(0),  # 0: no LoRA
    ("stage_b", "lora_alpha"): _count(1),
    ("stage_b", "lora_dropout"): _FRACTION,
    ("stage_b", "bow_weight"): _NON_NEGATIVE,
    ("stage_b", "lexical_weight"): _NON_NEGATIVE,
    ("stage_b", "lexical_steps"): _count(0),
    ("stage_b", "lexical_batch"): _count(1),
    ("stage_b", "lexical_scale"): _POSITIVE,
    ("stage_b", "direction_weight"): _NON_NEGATIVE,
    ("stage_b", "nce_weight"): _NON_NEGATIVE,
    ("stage_b", "nce_tau"): _POSITIVE,
    ("stage_b", "usage_weight"): _NON_NEGATIVE,
    ("stage_b", "usage_margin"): _NON_NEGATIVE,
    ("stage_b", "usage_every"): _count(1),
    ("stage_b", "mismatch_weight"): _NON_NEGATIVE,
    ("stage_b", "mismatch_margin"): _NON_NEGATIVE,
    ("stage_b", "max_answer_tokens"): _count(1),
    ("stage_b", "english_examples"): _count(0),
    ("stage_b", "eval_every"): _count(1),
    ("stage_b", "eval_pairs"): _count(1),
    ("stage_b", "save_every"): _count(1),
    ("stage_b", "snapshot_every"): _count(0),
    ("eval", "gen_n"): _count(0),  # 0: skip generation
    ("eval", "nll_n"): _count(1),
    ("eval", "max_new_tokens"): _count(1),
    ("eval", "literal_bias"): _NON_NEGATIVE,
    ("eval", "batch_size"): _count(1),
    ("eval", "judge_n"): _count(1),
    ("", "seed"): Range(0, 2**32 - 1, integer=True),
}


def _setting(cfg: Config, section: str, key: str) -> tuple[bool, Any]:
    """(exists, value) of a setting; a missing one is skipped, not an error."""
    owner = getattr(cfg, section, None) if section else cfg
    if owner is None or not hasattr(owner, key):
        return False, None
    return True, getattr(owner, key)


def validate(cfg: Config) -> None:
    """Reject values outside their allowed choices or ranges, naming the key and what is
    allowed."""
    for (section, key), allowed in CHOICES.items():
        exists, value = _setting(cfg, section, key)
        if exists and value not in allowed:
            raise ConfigError(f"{section}.{key}: {value!r} is not one of {', '.join(allowed)}")
    for (section, key), rng in RANGES.items():
        exists, value = _setting(cfg, section, key)
        if exists and value is not None and not rng.ok(value):
            name = f"{section}.{key}" if section else key
            raise ConfigError(f"{name}={value!r} is out of range: use {rng.describe()}")
    d, a, b = cfg.data, cfg.stage_a, cfg.stage_b
    if d.dev_fraction + d.test_fraction >= 1:
        raise ConfigError(
            f"data.dev_fraction + data.test_fraction = {d.dev_fraction + d.test_fraction:g}: "
            "their sum must be below 1 (the rest is the training split)"
        )
    for i, beta in enumerate(a.betas):
        if not _FRACTION.ok(beta):
            raise ConfigError(f"stage_a.betas[{i}]={beta!r} is out of range: use "
                              f"{_FRACTION.describe()}")
    if a.min_lr > a.lr:
        raise ConfigError(f"stage_a.min_lr={a.min_lr:g} exceeds stage_a.lr={a.lr:g}: the "
                          "schedule decays from lr down to min_lr")
    if b.lora_r > 0 and not b.lora_targets:
        raise ConfigError("stage_b.lora_targets is empty while stage_b.lora_r > 0: name the "
                          "modules to adapt (e.g. q_proj,v_proj), or set stage_b.lora_r=0")
    if not b.tasks:
        raise ConfigError("stage_b.tasks is empty: name at least one task, e.g. "
                          "stage_b.tasks=translate_to_english")


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a :class:`Config` saved with :meth:`Config.to_dict` (unknown keys are errors)."""
    cfg = Config()
    _apply(cfg, data, "")
    validate(cfg)
    return cfg
