"""``llink serve --engine vllm``: our API and slots in this process, generation by vLLM.

The server (:mod:`llink.inference.serve`, its request rules and batcher) is the same; the
backend differs. For each batch it computes the slots here (encoder → projector → bridge of
an ``llink export`` folder), writes them into each prompt's input embeddings
(:func:`llink.inference.export.embed_prompts`), and hands the embeddings to a vLLM engine
running the export's merged decoder: ``LLM(model=OUT/decoder, enable_prompt_embeds=True)``,
``LLM.generate([{"prompt_embeds": tensor (seq, hidden)}, ...], [SamplingParams, ...])``.

Written against vLLM's documented offline API (``LLM``, ``EmbedsPrompt``, ``SamplingParams``,
``RequestOutput``) from vLLM 0.11, the first release whose V1 engine takes prompt embeddings;
the newest release on PyPI when this was written was 0.33.0. vLLM was neither installed nor
run here (no GPU): the engine and the ``SamplingParams`` class are injected
(:class:`VLLMBackend`), so the CPU tests run everything up to the engine call with a
stand-in engine; ``vllm`` is imported only by :func:`import_vllm`.

Differences from ``llink serve`` with transformers: reserved tokens are kept out of answers
by a logit bias of -100 (transformers: ``suppress_tokens``); vLLM has no
``no_repeat_ngram_size``, so greedy answers can differ where the transformers path blocked a
repeated 3-gram; a streamed answer arrives in one piece when its batch ends (the offline
``LLM`` returns whole answers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import torch

from llink.inference.api import ChatJob, ServeError
from llink.inference.backends import Completion, LLINKBackend, OnText, Prepared
from llink.inference.export import DECODER_DIR, embed_prompts, load_export

INSTALL_HINT = "pip install 'llink[vllm]'"
#: Logit bias that keeps the reserved tokens out of answers (vLLM clamps biases to ±100).
RESERVED_BIAS = -100.0
#: GPU memory vLLM may take; the rest holds this process's encoder and embedding copy.
GPU_MEMORY_UTILIZATION = 0.8


class Engine(Protocol):
    """What the backend needs of a vLLM ``LLM``: ``generate`` of prompt-embedding requests."""

    def generate(self, prompts: list[dict[str, Any]], sampling_params: Any = None, *,
                 use_tqdm: bool = True) -> list[Any]: ...


def import_vllm() -> ModuleType:
    """The ``vllm`` module, or one clear error saying how to get it."""
    try:
        import vllm
    except ImportError:
        raise ServeError(
            f"--engine vllm needs vLLM, which is not installed here: {INSTALL_HINT} on a "
            "machine with a GPU (vLLM runs on GPUs), or serve with the default engine"
        ) from None
    return vllm


class VLLMBackend(LLINKBackend):
    """An exported LLINK model whose decoder runs in a vLLM engine.

    ``model`` is :func:`~llink.inference.export.load_export`'s (encoder, bridge and the
    decoder's embedding matrix are used here); ``engine`` runs the same decoder
    (``engine.generate(requests, sampling_params, use_tqdm=False)`` returning vLLM
    ``RequestOutput``-like objects); ``sampling_params`` builds a request's parameters
    (vLLM's ``SamplingParams``); prompt embeddings are cast to ``embeds_dtype`` (the
    engine's dtype) before they are sent.
    """

    def __init__(self, model: Any, name: str, engine: Engine,
                 sampling_params: Callable[..., Any], embeds_dtype: torch.dtype | None = None,
                 slot_cache_size: int = 256) -> None:
        super().__init__(model, name, slot_cache_size)
        self.engine = engine
        self.sampling_params = sampling_params
        self.embeds_dtype = embeds_dtype
        self._bias = {int(i): RESERVED_BIAS for i in model.decoder.reserved.ids}

    @classmethod
    def load(cls, folder: str, device: str = "auto", cache_dir: str | None = None,
             name: str | None = None, dtype: str = "bfloat16", slot_cache_size: int = 256,
             **engine_kwargs: Any) -> VLLMBackend:
        """The backend of an ``llink export`` folder: the vLLM engine on its ``decoder/``
        (``dtype``, ``engine_kwargs``: vLLM ``LLM`` arguments), the rest on ``device``."""
        from llink.backbones.loading import resolve_device
        from llink.storage.checkpoints import folder_kind

        vllm = import_vllm()  # before any loading: a missing vLLM is found at once
        if folder_kind(folder) == "llink":
            raise ServeError(f"{folder} is an LLINK model folder; the vLLM engine serves its "
                             f"export: llink export {folder} --out OUT, then llink serve "
                             "--engine vllm --model OUT")
        model = load_export(folder, cache_dir=cache_dir, device=resolve_device(device))
        engine = vllm.LLM(model=str(Path(folder) / DECODER_DIR), enable_prompt_embeds=True,
                          dtype=dtype, gpu_memory_utilization=GPU_MEMORY_UTILIZATION,
                          **engine_kwargs)
        return cls(model, name or Path(folder).resolve().name, engine, vllm.SamplingParams,
                   getattr(torch, dtype), slot_cache_size)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "engine": "vllm"}

    def sampling(self, job: ChatJob) -> Any:
        """A job's vLLM sampling parameters: greedy (temperature 0) or its temperature,
        top_p and seed; at most ``max_tokens``; reserved tokens biased out."""
        kwargs: dict[str, Any] = {"max_tokens": job.max_tokens, "logit_bias": dict(self._bias),
                                  "skip_special_tokens": True}
        if job.sampled:
            kwargs.update(temperature=job.temperature, top_p=job.top_p or 1.0, seed=job.seed)
        else:
            kwargs["temperature"] = 0.0
        return self.sampling_params(**kwargs)

    def requests(self, jobs: Sequence[ChatJob], prepared: Sequence[Prepared]
                 ) -> tuple[list[list[int]], list[dict[str, Any]]]:
        """The jobs' prompt ids and their engine requests ``{"prompt_embeds": [T, hidden]}``
        (vLLM's ``EmbedsPrompt``), on the CPU in the engine's dtype."""
        with torch.no_grad():
            prompts, slots = self.prompts_and_slots(jobs, prepared)
            embeds = embed_prompts(self.model, prompts, slots)
        dtype = self.embeds_dtype
        return prompts, [{"prompt_embeds": e.detach().to("cpu", dtype or e.dtype).contiguous()}
                         for e in embeds]

    def generate(self, jobs: Sequence[ChatJob], prepared: Sequence[Prepared],
                 on_text: OnText | None = None) -> list[Completion]:
        prompts, requests = self.requests(jobs, prepared)
        outputs = self.engine.generate(requests, [self.sampling(j) for j in jobs],
                                       use_tqdm=False)
        completions = []
        for i, (out, prompt, p) in enumerate(zip(outputs, prompts, prepared, strict=True)):
            answer = out.outputs[0]
            text = answer.text.strip()
            if on_text is not None and jobs[i].stream:
                on_text(i, text)
            reason = "length" if answer.finish_reason == "length" else "stop"
            completions.append(Completion(text, len(prompt), len(answer.token_ids), reason,
                                          p.warnings))
        return completions
