"""``llink export`` and ``llink serve --engine vllm`` on tiny trained models.

The export's round trip is checked against plain transformers: ``AutoModelForCausalLM`` on
the exported ``decoder/`` given :func:`prompt_embeddings` must give the LLINK model's logits.
To make that a real test, the trained LoRA and the reserved rows are first pushed far from
their starting values (so a decoder without the merged LoRA, or without the trained rows,
gives other logits). vLLM is not installed here: the vLLM backend runs against a stand-in
engine that records the prompt embeddings it is given and decodes them greedily with the
exported decoder in transformers.
"""

from __future__ import annotations

import json
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llink.cli import main
from llink.inference.api import ServeError, ServeSettings, parse_chat_request
from llink.inference.export import (
    META,
    export_llink,
    load_export,
    prompt_embeddings,
)
from llink.inference.serve import load_backend
from llink.inference.vllm_engine import VLLMBackend
from llink.method.model import LLINK, load_llink
from llink.storage.checkpoints import CheckpointError, load_json
from llink.workflows import Session, run_stage_a, run_stage_b

from .conftest import KHMER_ENGLISH
from .test_serve import CHAT, call, serving, user
from .test_stage_a import make_pair_file
from .test_stage_b import _b_cfg

#: a short text, one with a Latin word (a literal), a long one
TEXTS = [KHMER_ENGLISH[0][1], KHMER_ENGLISH[4][1], " ".join(km for _, km in KHMER_ENGLISH[5:])]
DESIGNS = {
    "pooled": {},  # the paper's design (K pooled slots), no literals
    "tokens": {  # the offline default's design: token slots and literals
        "model.slot_source": "tokens", "model.resampler_layers": 1, "model.token_layer": 1,
        "model.literals": True,
    },
}


# --------------------------------------------------------------------------- fixtures
def _export(root: Path, enc_dir: Path, dec_dir: Path, design: str) -> SimpleNamespace:
    """A tiny Stage A + B run whose LoRA and reserved rows are then moved far (saved as an
    LLINK folder), and its export."""
    cfg = _b_cfg(root, enc_dir, dec_dir, make_pair_file(root),
                 **{"stage_b.steps": 2, "stage_b.bridge_warmup_steps": 1,
                    "stage_b.eval_every": 100, "stage_b.save_every": 100, **DESIGNS[design]})
    session = Session(cfg, progress=False)
    run_stage_a(session)
    run_stage_b(session)
    model = load_llink(root / "run" / "stage_b", encoder=session.encoder)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.lm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        rows = model.decoder.reserved_rows()
        model.decoder.load_reserved_rows(rows + torch.randn(rows.shape, generator=gen))
    model_dir = model.save_pretrained(root / "model", card=False)
    out = root / "export"
    check = export_llink(model_dir, out, texts=TEXTS, encoder=session.encoder)
    return SimpleNamespace(design=design, encoder=session.encoder, model_dir=model_dir, out=out,
                           check=check, llink=load_llink(model_dir, encoder=session.encoder),
                           model=load_export(out, encoder=session.encoder))


@pytest.fixture(scope="module")
def tokens_export(tmp_path_factory, tiny_encoder_dir, tiny_decoder_dir) -> SimpleNamespace:
    """The offline default's design exported: token slots and literals."""
    return _export(tmp_path_factory.mktemp("export-tokens"), tiny_encoder_dir, tiny_decoder_dir,
                   "tokens")


@pytest.fixture(scope="module")
def pooled_export(tmp_path_factory, tiny_encoder_dir, tiny_decoder_dir) -> SimpleNamespace:
    """The paper's design exported: K pooled slots, no literals."""
    return _export(tmp_path_factory.mktemp("export-pooled"), tiny_encoder_dir, tiny_decoder_dir,
                   "pooled")


@pytest.fixture(params=sorted(DESIGNS))
def exported(request) -> SimpleNamespace:
    """Each design's export in turn."""
    return request.getfixturevalue(f"{request.param}_export")


def _hf_decoder(exported: SimpleNamespace) -> tuple[Any, Any]:
    """The exported decoder as plain transformers loads it, and its tokenizer."""
    folder = exported.out / "decoder"
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def _llink_logits(llink: LLINK, text: str, **prompt: Any) -> tuple[list[int], torch.Tensor,
                                                                     torch.Tensor]:
    """Prompt ids, slots and logits of one text as the LLINK model computes them."""
    prompts, slots = llink.prompts_and_slots([text], **prompt)
    with torch.no_grad():
        logits = llink.lm(inputs_embeds=llink.embed(torch.tensor(prompts), slots)).logits[0]
    return prompts[0], slots[0], logits


# --------------------------------------------------------------------------- export
def test_export_folder_holds_a_plain_decoder_and_the_prompt_format(exported):
    out, llink = exported.out, exported.llink
    meta = load_json(out, META)
    hf, tok = _hf_decoder(exported)
    k = llink.num_slots
    assert meta["num_slots"] == k and meta["lora_merged"] is True
    assert meta["slot_tokens"] == [f"<f{i}>" for i in range(k)]
    # the slot ids the JSON names are those of the exported tokenizer and of the model
    assert meta["slot_token_ids"] == tok.convert_tokens_to_ids(meta["slot_tokens"])
    assert meta["slot_token_ids"] == list(llink.decoder.reserved.slots)
    assert meta["reserved_token_ids"] == llink.decoder.reserved.ids
    assert meta["encoder"]["name"] == str(llink.encoder.name)
    assert meta["prompt"]["literals"] is (exported.design == "tokens")
    assert re.findall(r"<f\d+>", meta["prompt"]["example"]) == meta["slot_tokens"]
    assert meta["llink"]["num_slots"] == k and "weights_sha256" in meta
    # the trained (moved) reserved rows are in the plain decoder's embedding matrix
    table = hf.get_input_embeddings().weight
    torch.testing.assert_close(table[meta["reserved_token_ids"]], llink.decoder.reserved_rows(),
                               rtol=0, atol=0)
    assert hf.config.vocab_size == len(tok) == table.shape[0]
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"COMPLETE", "bridge.safetensors", f"{META}.json", "decoder/config.json",
            "decoder/model.safetensors", "decoder/tokenizer.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl", ".pth"))]
    # the check the command ran is recorded with the figure it printed
    assert meta["check"] == exported.check
    assert meta["check"]["passed"] and meta["check"]["same_next_tokens"]
    assert meta["check"]["max_abs_logit_diff"] < 1e-4 < meta["check"]["max_abs_logit"]


@pytest.mark.parametrize("prompt", [{}, {"task": "ask", "question": "Who is it?"}],
                         ids=["translate", "ask"])
def test_plain_transformers_on_the_prompt_embeddings_gives_the_llink_logits(exported, prompt):
    hf, tok = _hf_decoder(exported)
    llink = exported.llink
    embeds = prompt_embeddings(exported.model, TEXTS, **prompt)
    table = hf.get_input_embeddings()
    for text, emb in zip(TEXTS, embeds, strict=True):
        ids, slots, want = _llink_logits(llink, text, **prompt)
        assert emb.shape == (len(ids), hf.config.hidden_size)
        # token rows are the exported embedding rows; the slot rows are the LLINK slots
        at = [i for i, t in enumerate(ids) if t in llink.decoder.reserved.slots]
        plain = [i for i in range(len(ids)) if i not in at]
        with torch.no_grad():
            torch.testing.assert_close(emb[plain], table(torch.tensor(ids))[plain])
        torch.testing.assert_close(emb[at], slots[: len(at)])
        assert not torch.allclose(emb[at], table(torch.tensor(ids))[at])
        with torch.no_grad():
            got = hf(inputs_embeds=emb[None]).logits[0]
            assert float((got - want).abs().max()) < 1e-4
            # the LoRA matters: the decoder without it gives other logits
            with llink.adapters_disabled():
                base = llink.lm(inputs_embeds=emb[None]).logits[0]
        assert float((base - want).abs().max()) > 1e-2
    if exported.design == "tokens":  # the literal line is in the prompt of the text with "OK"
        assert "Literals: OK" in tok.decode(_llink_logits(llink, TEXTS[1], **prompt)[0])


def test_prompt_embeddings_from_the_export_folder_alone(tokens_export):
    got = prompt_embeddings(tokens_export.out, TEXTS[:2])  # loads the folder itself
    want = prompt_embeddings(tokens_export.model, TEXTS[:2])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_the_round_trip_fails_when_the_lora_is_not_merged(tokens_export, tmp_path, monkeypatch):
    exported = tokens_export
    # an export that drops the LoRA instead of merging it
    tuner = type(exported.llink.lm.base_model)  # peft's LoraModel
    monkeypatch.setattr(tuner, "merge_and_unload", lambda self, *a, **k: self.unload())
    out = tmp_path / "broken"
    with pytest.raises(CheckpointError, match="round trip failed"):
        export_llink(exported.model_dir, out, texts=TEXTS[:1], encoder=exported.encoder)
    check = load_json(out, META)["check"]
    assert not check["passed"] and check["max_abs_logit_diff"] > 1e-2


def test_load_export_refuses_a_decoder_of_another_model(tokens_export, tmp_path):
    import shutil

    exported = tokens_export
    out = tmp_path / "copy"
    shutil.copytree(exported.out, out)
    meta = load_json(out, META)
    meta["reserved_token_ids"] = meta["reserved_token_ids"][::-1]
    (out / f"{META}.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(CheckpointError, match="another export"):
        load_export(out, encoder=exported.encoder)
    with pytest.raises(CheckpointError, match="LLINK model folder|not the LLINK export"):
        load_export(exported.model_dir)


def test_llink_export_command(tokens_export, tmp_path, capsys):
    exported = tokens_export
    out = tmp_path / "cli"
    assert main(["export", str(exported.model_dir), "--out", str(out), "--text", TEXTS[0]]) == 0
    printed = capsys.readouterr().out
    check = load_json(out, META)["check"]
    assert check["texts"] == 1 and check["passed"]
    assert f"max abs logit difference {check['max_abs_logit_diff']:.3g}" in printed
    # a folder that holds something else is never replaced
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert main(["export", str(exported.model_dir), "--out", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not an LLINK export" in err
    assert (other / "keep.txt").read_text() == "mine"


# --------------------------------------------------------------------------- vLLM engine
@dataclass
class StandInSamplingParams:
    """The fields of vLLM's ``SamplingParams`` the backend sets."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    logit_bias: dict[int, float] | None = None
    skip_special_tokens: bool = True


class StandInEngine:
    """A vLLM ``LLM`` stand-in: records the requests, decodes greedily with the exported
    decoder in transformers (logit bias applied), answers ``RequestOutput``-like objects."""

    def __init__(self, folder: Path) -> None:
        self.hf = AutoModelForCausalLM.from_pretrained(folder).eval()
        self.tok = AutoTokenizer.from_pretrained(folder)
        self.calls: list[tuple[list[dict[str, Any]], list[Any]]] = []

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True):
        assert use_tqdm is False
        self.calls.append((prompts, sampling_params))
        return [self._one(p["prompt_embeds"], s) for p, s in zip(prompts, sampling_params,
                                                                 strict=True)]

    @torch.no_grad()
    def _one(self, embeds: torch.Tensor, params: StandInSamplingParams) -> Any:
        assert embeds.ndim == 2 and params.temperature == 0.0
        table, eos = self.hf.get_input_embeddings(), self.tok.eos_token_id
        x, new = embeds[None].float(), []
        for _ in range(params.max_tokens):
            logits = self.hf(inputs_embeds=x).logits[0, -1]
            for t, b in (params.logit_bias or {}).items():
                logits[t] += b
            t = int(logits.argmax())
            new.append(t)
            if t == eos:
                break
            x = torch.cat([x, table(torch.tensor([[t]]))], 1)
        text = self.tok.decode(new, skip_special_tokens=params.skip_special_tokens)
        done = "stop" if new[-1] == eos else "length"
        return SimpleNamespace(outputs=[SimpleNamespace(text=text, token_ids=new,
                                                        finish_reason=done)])


def _vllm_backend(exported: SimpleNamespace) -> VLLMBackend:
    """The vLLM backend of an export, its engine a :class:`StandInEngine`."""
    return VLLMBackend(exported.model, "tiny-vllm", StandInEngine(exported.out / "decoder"),
                       StandInSamplingParams, torch.float32)


@pytest.fixture()
def vllm_backend(tokens_export) -> VLLMBackend:
    return _vllm_backend(tokens_export)


def _jobs(backend: VLLMBackend, bodies: list[dict[str, Any]]):
    settings = ServeSettings()
    jobs = [parse_chat_request(b, settings, needs_foreign=True) for b in bodies]
    return jobs, [backend.prepare(j) for j in jobs]


def test_vllm_backend_sends_the_llink_prompt_embeddings_and_answers_like_llink(exported):
    vllm_backend = _vllm_backend(exported)
    llink, engine = exported.llink, vllm_backend.engine
    bodies = [user(f"<foreign>{TEXTS[0]}</foreign>", max_tokens=6),
              user(f"Who is it? <foreign>{TEXTS[1]}</foreign>", max_tokens=6, stream=True),
              user("", llink={"foreign": TEXTS[2], "task": "title_generation"}, max_tokens=6)]
    jobs, prepared = _jobs(vllm_backend, bodies)
    streamed: dict[int, str] = {}
    engine.calls.clear()
    outs = vllm_backend.generate(jobs, prepared, lambda i, text: streamed.update({i: text}))
    assert len(engine.calls) == 1  # one engine call for the batch
    requests, params = engine.calls[0]
    for job, req, par, out in zip(jobs, requests, params, outs, strict=True):
        ids, slots, _ = _llink_logits(llink, job.foreign, task=job.task, question=job.question)
        with torch.no_grad():  # exactly the embeddings the LLINK model builds for this prompt
            want = llink.embed(torch.tensor([ids]), slots[None])[0]
        torch.testing.assert_close(req["prompt_embeds"], want)
        assert par.temperature == 0.0 and par.max_tokens == 6
        assert set(par.logit_bias) == set(llink.decoder.reserved.ids)
        # greedy: the answer llink.generate gives (no n-gram blocking: vLLM has none)
        ref = llink.generate([job.foreign], task=job.task, question=job.question,
                             max_new_tokens=6, no_repeat_ngram_size=0)[0]
        assert out.text == ref and out.prompt_tokens == len(ids)
        assert 1 <= out.completion_tokens <= 6
    assert streamed == {1: outs[1].text}


def test_vllm_backend_passes_sampling_settings(vllm_backend):
    jobs, _ = _jobs(vllm_backend, [user(f"<foreign>{TEXTS[0]}</foreign>", temperature=0.7,
                                        top_p=0.9, seed=5, max_tokens=3)])
    p = vllm_backend.sampling(jobs[0])
    assert (p.temperature, p.top_p, p.seed, p.max_tokens) == (0.7, 0.9, 5, 3)


def test_vllm_backend_behind_the_server(tokens_export, vllm_backend):
    exported = tokens_export
    with serving(vllm_backend, batch_wait_ms=5) as srv:
        status, body, _ = call(srv, "/health")
        assert status == 200 and body["engine"] == "vllm" and body["kind"] == "llink"
        status, body, _ = call(srv, CHAT, user(f"<foreign>{TEXTS[0]}</foreign>", max_tokens=5))
    assert status == 200
    want = exported.llink.generate([TEXTS[0]], max_new_tokens=5, no_repeat_ngram_size=0)[0]
    assert body["choices"][0]["message"]["content"] == want
    assert body["usage"]["prompt_tokens"] == len(vllm_backend.engine.calls[-1][0][0]
                                                 ["prompt_embeds"])


def test_vllm_backend_load_builds_the_engine_on_the_exported_decoder(tokens_export,
                                                                     monkeypatch):
    exported = tokens_export
    built: dict[str, Any] = {}

    def llm(**kwargs):
        built.update(kwargs)
        return StandInEngine(Path(kwargs["model"]))

    fake = types.ModuleType("vllm")
    fake.LLM, fake.SamplingParams = llm, StandInSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", fake)
    backend = load_backend(str(exported.out), device="cpu", engine="vllm", name="v")
    assert isinstance(backend, VLLMBackend) and backend.name == "v"
    assert built["model"] == str(exported.out / "decoder") and built["enable_prompt_embeds"]
    assert backend.embeds_dtype == torch.bfloat16
    with pytest.raises(ServeError, match="llink export"):
        load_backend(str(exported.model_dir), device="cpu", engine="vllm")


def test_serve_engine_vllm_without_vllm_is_one_clear_line(tokens_export, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    out = str(tokens_export.out)
    assert main(["serve", "--engine", "vllm", "--model", out, "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "pip install 'llink[vllm]'" in err and "GPU" in err
