"""``llink export``: a trained LLINK model as a plain decoder plus what builds its prompts.

An export folder (safetensors and JSON only, written atomically, weight hashes checked on
load):

- ``decoder/``: the decoder with its LoRA merged, a standard Hugging Face folder
  (``save_pretrained`` of the model and its tokenizer). The reserved tokens ``<foreign>``,
  ``</foreign>``, ``<foreign_emb>``, ``<f0>`` … ``<fK-1>`` are in the tokenizer and their
  trained rows in the embedding matrix, so ``AutoModelForCausalLM.from_pretrained`` loads it
  and any engine that takes input embeddings can run it.
- ``bridge.safetensors``: projector, slot bridge, token reader, Stage A target transform and
  the reserved rows, as in the LLINK folder.
- ``llink_export.json``: what building prompt embeddings needs, for people and programs: the
  encoder (name, prefix, clip, token layer), K, the slot token ids, the reserved token ids,
  the prompt format with an example; ``llink``: the model's ``llink.json`` metadata, which
  rebuilds the bridge; ``check``: the round trip measured when exporting.

The round trip (:func:`round_trip`): for sample texts, the exported decoder given
:func:`prompt_embeddings` must give the logits the LLINK model gives (LoRA unmerged, as
``llink serve`` runs it); the largest absolute difference is printed and recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from llink.backbones.decoder import FrozenDecoder, reserved_token_strings, slot_token
from llink.backbones.encoder import FrozenEncoder
from llink.method.inject import TASKS, pad_batch, slot_span
from llink.method.model import LLINK, assemble_llink
from llink.storage.checkpoints import (
    CheckpointError,
    check_folder,
    compare_expected,
    load_json,
    load_tensors,
    require_kind,
    save_folder,
    verify_weights,
)
from llink.storage.fileio import write_json_atomic
from llink.storage.model_folders import check_reserved_rows, named_by
from llink.storage.runlog import versions

EXPORT_FORMAT = 1
META = "llink_export"
DECODER_DIR = "decoder"
#: Largest absolute logit difference the round trip accepts (float32 on a CPU: merging the
#: LoRA only changes rounding).
TOLERANCE = 1e-3
#: Texts of the round-trip check: short and long, and one with literals (a Latin word and a
#: digit), so every part of the prompt is exercised.
CHECK_TEXTS = (
    "កំហុសបានកើតឡើងពេលបោះពុម្ព។",
    "ចុចប៊ូតុង OK ដើម្បីរក្សាទុកឯកសារ 3 ។",
    "សូមពិនិត្យមើលការកំណត់ម៉ាស៊ីនបោះពុម្ព ហើយព្យាយាមម្តងទៀតនៅពេលក្រោយ។",
    "เปิดไฟล์ใหม่ในหน้าต่างนี้",
)


# --------------------------------------------------------------------------- prompt embeddings
def embed_prompts(model: LLINK, prompts: Sequence[list[int]], slots: torch.Tensor
                  ) -> list[torch.Tensor]:
    """Each prompt's decoder input embeddings, [T_i, hidden], with its slots written at its
    slot tokens' rows (:func:`llink.method.inject.inject_slots`); unpadded, one per prompt."""
    ids, _ = pad_batch(prompts, int(model.tokenizer.pad_token_id), side="right")
    embeds = model.embed(ids.to(model.device), slots)
    return [embeds[i, : len(p)] for i, p in enumerate(prompts)]


@torch.no_grad()
def prompt_embeddings(
    export: LLINK | str | Path,
    foreign: Sequence[str],
    task: str = "translate_to_english",
    strict: bool = False,
    question: str | None = None,
    gate_boost: float = 1.0,
) -> list[torch.Tensor]:
    """The prompt embeddings of foreign texts: per text, a [T_i, hidden] tensor to give the
    exported decoder (``inputs_embeds`` in transformers, ``{"prompt_embeds": ...}`` in vLLM).

    ``export`` is an export folder (loaded on the CPU) or a model from :func:`load_export`.
    The prompt is the one ``LLINK.generate`` builds (task, question, literals, K slots); the
    slots come from the encoder, projector and bridge, written into the prompt's token
    embeddings at the slot tokens' rows.
    """
    model = export if isinstance(export, LLINK) else load_export(export)
    prompts, slots = model.prompts_and_slots(foreign, task, strict, question, gate_boost)
    return embed_prompts(model, prompts, slots)


# --------------------------------------------------------------------------- loading
def open_export(folder: str | Path) -> tuple[Path, dict[str, Any]]:
    """Check an export folder (complete, its kind and format, weight hashes, no pickles);
    returns it and its ``llink_export.json``."""
    fix = "Write one with `llink export MODEL_DIR --out OUT`, or pass the folder it wrote."
    folder = check_folder(folder, "LLINK export", fix)
    require_kind(folder, META, "LLINK export", fix)
    meta = load_json(folder, META)
    if meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{folder}: LLINK export format {meta.get('format')}, need "
                              f"{EXPORT_FORMAT}. {fix}")
    verify_weights(folder, meta, f"{META}.json")
    return folder, meta


def load_export(
    folder: str | Path,
    *,
    cache_dir: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    encoder: FrozenEncoder | None = None,
) -> LLINK:
    """The exported model as an LLINK without LoRA: the encoder it names, its bridge, and
    the merged decoder of ``folder/decoder``. ``encoder`` reuses a loaded one (it must be
    the one the model was trained with)."""
    folder, meta = open_export(folder)
    llink_meta = meta["llink"]
    tensors = load_tensors(folder, "bridge")
    path = folder / "bridge.safetensors"
    check_reserved_rows(tensors, llink_meta, path)
    with named_by(folder / f"{META}.json"):
        enc = encoder or FrozenEncoder.from_pretrained(
            llink_meta["encoder"], prefix=llink_meta["encoder_prefix"],
            max_chars=llink_meta["max_foreign_chars"], cache_dir=cache_dir, device=device,
            dtype=dtype)
    dec = FrozenDecoder.from_pretrained(str(folder / DECODER_DIR),
                                        num_slots=llink_meta["num_slots"], device=device,
                                        dtype=dtype)
    found = {"d_enc": enc.dim, "d_dec": dec.hidden_size, "encoder_weights": enc.fingerprint}
    compare_expected(llink_meta, found, f"LLINK export {folder} vs the loaded encoder/decoder",
                     "The encoder differs from the one the model was trained with.")
    if dec.reserved.ids != meta["reserved_token_ids"]:
        raise CheckpointError(
            f"{folder / DECODER_DIR}: its tokenizer gives the reserved tokens the ids "
            f"{dec.reserved.ids}, {META}.json records {meta['reserved_token_ids']}: the "
            "decoder folder belongs to another export. Export the model again.")
    if not torch.equal(dec.reserved_rows(), tensors["reserved_rows"].float()):
        raise CheckpointError(
            f"{folder / DECODER_DIR}: the reserved tokens' embedding rows differ from the "
            "trained ones in bridge.safetensors: the decoder folder belongs to another model. "
            "Export the model again.")
    model = assemble_llink(llink_meta, tensors, path, enc, dec)
    model.source = folder
    return model.to(dec.device).eval()


# --------------------------------------------------------------------------- exporting
def _export_meta(model: LLINK) -> dict[str, Any]:
    """``llink_export.json`` of a loaded LLINK model (the check is added later)."""
    assert model.meta is not None
    k = model.num_slots
    reserved = model.decoder.reserved
    example = model.fmt.prompt(model.tokenizer,
                               model.fmt.user_text("translate_to_english", slot_span(k)))
    return {
        "format": EXPORT_FORMAT,
        "decoder": DECODER_DIR,
        "base_decoder": model.meta["decoder"],
        "lora_merged": model.has_lora,
        "encoder": {
            "name": model.meta["encoder"],
            "prefix": model.meta["encoder_prefix"],
            "max_chars": model.meta["max_foreign_chars"],
            "token_layer": model.token_layer if model.reader is not None else None,
            "weights": model.meta["encoder_weights"],
        },
        "num_slots": k,
        "slot_tokens": [slot_token(i) for i in range(k)],
        "slot_token_ids": list(reserved.slots),
        "reserved_tokens": reserved_token_strings(k),
        "reserved_token_ids": reserved.ids,
        "prompt": {
            **model.fmt.meta(),
            "slot_source": model.slot_source,
            "literals": model.literals,
            "slots_per_token": model.slots_per_token,
            "instructions": dict(TASKS),
            "example": example,
        },
        # how LLINK.generate decodes (PromptedDecoder.generate_from_ids)
        "generation": {"suppress_token_ids": reserved.ids, "no_repeat_ngram_size": 3},
        "llink": model.meta,
        "versions": versions(),
        "check": None,
    }


def _refuse_target(out: Path, source: Path | None = None) -> None:
    """An export replaces ``out`` whole: only a new folder, an empty one or an earlier export,
    and never one that holds the model folder ``source`` or lies inside it."""
    out = out.resolve()
    if out.exists() and not (out / f"{META}.json").is_file() and (
            not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"--out {out} exists and is not an LLINK export; an export "
                              "replaces its folder whole, so give a new or empty folder")
    source = source.resolve() if source is not None else None
    if source is not None and (out == source or source in out.parents or out in source.parents):
        raise CheckpointError(f"--out {out} overlaps the model folder {source}; choose "
                              "another folder")


def export_llink(
    model_dir: str | Path,
    out: str | Path,
    *,
    texts: Sequence[str] | None = None,
    cache_dir: str | None = None,
    device: str | torch.device = "cpu",
    tolerance: float = TOLERANCE,
    encoder: FrozenEncoder | None = None,
) -> dict[str, Any]:
    """Write ``out`` from the LLINK model ``model_dir`` (folder or hub id), then check the
    round trip on ``texts`` (default :data:`CHECK_TEXTS`); returns the check, also recorded
    in ``llink_export.json``. A difference above ``tolerance`` raises after recording it.
    ``encoder`` reuses a loaded frozen encoder (the one the model was trained with)."""
    out = Path(out)
    _refuse_target(out)  # before loading anything
    model = LLINK.from_pretrained(model_dir, cache_dir=cache_dir, device=device,
                                  encoder=encoder)
    assert model.source is not None
    _refuse_target(out, model.source)
    texts = list(texts or CHECK_TEXTS)
    reference = _llink_logits(model, texts)  # before merging: the model as served
    encoder = model.encoder
    _write_export(model, out)
    del model  # one decoder in memory at a time
    exported = load_export(out, cache_dir=cache_dir, device=device, encoder=encoder)
    check = round_trip(reference, exported, texts, tolerance)
    meta = load_json(out, META)
    write_json_atomic(out / f"{META}.json", {**meta, "check": check})
    if not check["passed"]:
        raise CheckpointError(
            f"{out}: round trip failed: the exported decoder's logits differ from the LLINK "
            f"model's by up to {check['max_abs_logit_diff']:.3g} (tolerance {tolerance:g}); "
            "do not serve this export")
    return check


def _write_export(model: LLINK, out: Path) -> Path:
    """Write the export folder of ``model`` (its LoRA is merged into its decoder in place)."""
    assert model.source is not None
    tensors = load_tensors(model.source, "bridge")
    meta = _export_meta(model)
    lm = model.lm.merge_and_unload() if model.has_lora else model.lm

    def write_decoder(tmp: Path) -> None:
        lm.save_pretrained(str(tmp / DECODER_DIR))
        model.tokenizer.save_pretrained(str(tmp / DECODER_DIR))

    return save_folder(out, {"bridge": tensors}, {META: meta}, extra=write_decoder)


@torch.no_grad()
def _llink_logits(model: LLINK, texts: Sequence[str]) -> list[tuple[list[int], torch.Tensor]]:
    """Prompt ids and decoder logits [T, vocab] of each text, one at a time, as the LLINK
    model computes them (its own embedding and slot writing, its LoRA as loaded)."""
    model.eval()
    out = []
    for text in texts:
        prompts, slots = model.prompts_and_slots([text])
        ids = torch.tensor(prompts, device=model.device)
        logits = model.lm(inputs_embeds=model.embed(ids, slots)).logits[0]
        out.append((prompts[0], logits.float().cpu()))
    return out


@torch.no_grad()
def round_trip(
    reference: Sequence[tuple[list[int], torch.Tensor]],
    exported: LLINK,
    texts: Sequence[str],
    tolerance: float = TOLERANCE,
) -> dict[str, Any]:
    """The exported decoder given :func:`prompt_embeddings` against ``reference`` (each
    text's prompt ids and LLINK logits): largest absolute logit difference, whether every
    position predicts the same next token, and whether that passes ``tolerance``."""
    embeds = prompt_embeddings(exported, texts)
    diff, top, same = 0.0, 0.0, True
    for (ids, want), emb, text in zip(reference, embeds, texts, strict=True):
        got_ids = exported.prompts_and_slots([text])[0][0]
        if got_ids != ids:
            raise CheckpointError(f"the exported tokenizer gives other prompt ids for {text!r}: "
                                  "the decoder folder's tokenizer differs from the model's")
        got = exported.lm(inputs_embeds=emb[None]).logits[0].float().cpu()
        diff = max(diff, float((got - want).abs().max()))
        top = max(top, float(want.abs().max()))
        same = same and bool(torch.equal(got.argmax(-1), want.argmax(-1)))
    return {
        "texts": len(texts),
        "prompt_tokens": [len(ids) for ids, _ in reference],
        "max_abs_logit_diff": diff,
        "max_abs_logit": top,
        "same_next_tokens": same,
        "tolerance": tolerance,
        "passed": diff <= tolerance,
        "dtype": str(next(exported.lm.parameters()).dtype).removeprefix("torch."),
        "device": str(exported.device),
    }
