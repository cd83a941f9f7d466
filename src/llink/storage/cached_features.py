"""The cached vectors of the method: encoder outputs, teacher states, decoder-native states.

Each is a pure function of a text and the frozen models, so it is computed once
and kept in a :class:`~llink.storage.feature_cache.FeatureStore` keyed by everything it depends on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from llink.backbones.decoder import FrozenDecoder
from llink.backbones.encoder import FrozenEncoder, clip_text
from llink.backbones.fingerprint import code_digest
from llink.backbones.offline import default_cache_dir
from llink.storage.feature_cache import FeatureStore


def features_root(configured: str | None = None) -> Path:
    """Where feature stores live: the configured folder, $LLINK_FEATURES, or the user cache."""
    if configured:
        return Path(configured)
    env = os.environ.get("LLINK_FEATURES")
    return Path(env) if env else default_cache_dir() / "features"


def encoder_vectors(
    encoder: FrozenEncoder,
    texts: Sequence[str],
    root: Path,
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "encoder",
) -> torch.Tensor:
    """Mean-pooled encoder vectors of ``texts`` [N, d_enc]."""
    store = FeatureStore(root, "encoder", encoder.cache_settings())
    return store.get(list(texts), lambda xs: encoder.encode(xs, batch_size, exact_lengths=True),
                     desc=desc, progress=progress)


def encoder_token_states(
    encoder: FrozenEncoder,
    texts: Sequence[str],
    root: Path,
    layer: int = -1,
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "encoder tokens",
) -> list[torch.Tensor]:
    """Per-token encoder states of ``texts`` at ``layer``: a [T_i, d_enc] tensor per text,
    stored in float16 (``slot_source=tokens``)."""
    settings = {**encoder.cache_settings(), "pooling": "none (token states)", "layer": layer,
                "code_tokens": code_digest(FrozenEncoder.text_token_span)}
    store = FeatureStore(root, "encoder-tokens", settings, ragged=True)
    return store.get(list(texts), lambda xs: encoder.encode_tokens(xs, layer, batch_size,
                                                                exact_lengths=True),
                     desc=desc, progress=progress)


def check_teacher_layer(decoder: FrozenDecoder, layer: int) -> None:
    """Refuse a teacher layer the decoder does not have, naming the setting."""
    layers = int(getattr(decoder.model.config, "num_hidden_layers", 0) or 0)
    if layers and not (layer == -1 or 1 <= layer <= layers):
        from llink.config import ConfigError

        raise ConfigError(f"stage_a.teacher_layer={layer}, but the decoder {decoder.name} has "
                          f"{layers} layers: use 1..{layers}, or -1 for the last")


def teacher_vectors(
    decoder: FrozenDecoder,
    english: Sequence[str],
    root: Path,
    batch_size: int = 32,
    progress: bool = True,
    layer: int = -1,
    pooling: str = "foreign_emb",
) -> torch.Tensor:
    """Teacher states of English sentences [N, d_dec]: at ``<foreign_emb>`` (METHOD.md) or
    mean-pooled over the sentence's tokens, after ``layer`` decoder blocks."""
    check_teacher_layer(decoder, layer)
    store = FeatureStore(root, "teacher", decoder.teacher_settings(layer, pooling))
    return store.get(
        list(english),
        lambda xs: decoder.teacher_states(xs, batch_size, layer=layer, pooling=pooling),
        desc="teacher",
        progress=progress,
    )


def decoder_native_vectors(
    decoder: FrozenDecoder,
    foreign: Sequence[str],
    root: Path,
    max_chars: int = 256,
    batch_size: int = 16,
    progress: bool = True,
    layer: int = -1,
    pooling: str = "foreign_emb",
) -> torch.Tensor:
    """The baseline: raw foreign text (clipped) through the decoder, read like the teacher."""
    settings = {**decoder.teacher_settings(layer, pooling), "clip_chars": max_chars,
                "input": "raw-foreign"}
    store = FeatureStore(root, "decoder-native", settings)
    clipped = [clip_text(t, max_chars) for t in foreign]
    return store.get(
        clipped,
        lambda xs: decoder.teacher_states(xs, batch_size, layer=layer, pooling=pooling),
        desc="decoder-native",
        progress=progress,
    )
