"""The models behind ``llink serve``: :class:`LLINKBackend` (a trained LLINK folder,
LoRA merged, prompt-template KV and slots cached) and :class:`HFBackend` (a plain Hugging
Face causal LM with its chat template, template KV cached too). Both turn a batch of
:class:`~llink.inference.api.ChatJob` into one generate call.

Streaming happens inside the batched generate call: a stopping criterion that never stops
sees every row after every decoding step and hands each streaming row its text so far to
the request, whatever else shares the batch (transformers' ``TextIteratorStreamer`` takes
one row only, so it does not fit a batcher).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from llink.inference.api import VALID_TASKS, ChatJob, ServeError, bad_request


@dataclass
class Prepared:
    """A job's prompt token ids, ready for a batch, and notes for the client."""

    prompt: list[int]
    warnings: list[str] = field(default_factory=list)


@dataclass
class Completion:
    """One generated answer and its token counts."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    warnings: list[str] = field(default_factory=list)


#: ``on_text(row, text_so_far)``: a streaming row's answer so far, after each decoding step
OnText = Callable[[int, str], None]


class Backend(Protocol):
    """A model behind the server. ``prepare`` and ``generate`` run on the worker thread;
    ``prepare`` raises :class:`ApiError` for a job that cannot run."""

    kind: str
    name: str
    needs_foreign: bool

    def describe(self) -> dict[str, Any]: ...

    def prepare(self, job: ChatJob) -> Prepared: ...

    def generate(
        self, jobs: Sequence[ChatJob], prepared: Sequence[Prepared], on_text: OnText | None = None
    ) -> list[Completion]: ...


def _check_context(prompt_len: int, max_tokens: int, context: int | None) -> None:
    if context and prompt_len + max_tokens > context:
        raise bad_request(
            f"the prompt has {prompt_len} tokens; with max_tokens {max_tokens} it "
            f"exceeds the model's context of {context} tokens",
            "context_length_exceeded",
        )


def _generated(row: list[int], eos_ids: set[int]) -> tuple[int, str]:
    """Tokens generated in a row (up to and including its end token) and the finish reason."""
    stop = next((i for i, t in enumerate(row) if t in eos_ids), None)
    return (len(row), "length") if stop is None else (stop + 1, "stop")


def decoding_kwargs(job: ChatJob) -> dict[str, Any]:
    """generate() arguments of a job's decoding: greedy, or sampling at its temperature
    and top_p with top-k off (a model's generation config may set a top_k)."""
    if not job.sampled:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": job.temperature, "top_p": job.top_p or 1.0,
            "top_k": 0}


@contextlib.contextmanager
def seeded(seed: int | None, device: Any) -> Iterator[None]:
    """Within: the random number generators seeded with ``seed`` (None: untouched); the
    previous RNG state comes back afterwards."""
    if seed is None:
        yield
        return
    import torch

    on_cpu = device.type == "cpu"
    with torch.random.fork_rng(devices=[] if on_cpu else [device],
                               device_type="cuda" if on_cpu else device.type):
        torch.manual_seed(seed)
        yield


class _Steps:
    """A stopping criterion that never stops. After each decoding step it keeps the ids
    generated so far (``ids``, the prompt left out) and hands each streaming row its text
    so far to ``on_text`` (once more only when the row has a new token)."""

    def __init__(self, start: int, streaming: Sequence[int], text: Callable[[list[int]], str],
                 eos: set[int], on_text: OnText | None) -> None:
        self.start, self.text, self.eos, self.on_text = start, text, eos, on_text
        self.streaming = list(streaming) if on_text is not None else []
        self.ids: Any = None
        self._seen: dict[int, int] = {}

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        self.ids = input_ids[:, self.start:]
        if self.streaming:
            for i, row in zip(self.streaming, self.ids[self.streaming].tolist(), strict=True):
                n, _ = _generated(row, self.eos)
                if self._seen.get(i) != n:
                    self._seen[i] = n
                    self.on_text(i, self.text(row[:n]))  # type: ignore[misc]
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def rows(self, n: int) -> list[list[int]]:
        return self.ids.tolist() if self.ids is not None else [[] for _ in range(n)]


def _streaming(jobs: Sequence[ChatJob]) -> list[int]:
    return [i for i, j in enumerate(jobs) if j.stream]


class LLINKBackend:
    """A trained LLINK model: slots from the foreign text.

    Loaded with its LoRA merged into the decoder (:meth:`load`); the model's prefix cache
    is turned on (the prompt template's KV is computed once per task), and the slots of
    the last ``slot_cache_size`` foreign texts are kept (:class:`SlotCache`), so a
    follow-up question about the same text skips the encoder. ``literal_bias`` > 0 pushes
    each foreign text's literals into its answer (:class:`~llink.method.literals.LiteralBias`)."""

    kind = "llink"
    needs_foreign = True

    def __init__(self, model: Any, name: str, slot_cache_size: int = 256,
                 literal_bias: float = 0.0) -> None:
        from llink.inference.slot_cache import SlotCache

        self.model = model.eval()
        self.name = name
        self.literal_bias = literal_bias
        if model.prefix_cache is None:
            model.use_prefix_cache()
        self.slot_cache = SlotCache(slot_cache_size)
        tok = model.tokenizer
        self._reserved = set(model.decoder.reserved.ids)
        self._reserved_strings = tok.convert_ids_to_tokens(model.decoder.reserved.ids)
        # reserved tokens a prompt holds by itself (its slot span)
        self._span_reserved = self._count_reserved(model.prompt_ids("translate_to_english"))

    @classmethod
    def load(
        cls,
        folder: str,
        device: str = "auto",
        cache_dir: str | None = None,
        name: str | None = None,
        slot_cache_size: int = 256,
        literal_bias: float = 0.0,
    ) -> LLINKBackend:
        from llink.backbones.loading import resolve_device
        from llink.method.model import load_llink

        model = load_llink(folder, device=resolve_device(device), cache_dir=cache_dir,
                           merge_lora=True)
        return cls(model, name or Path(folder).resolve().name, slot_cache_size, literal_bias)

    def describe(self) -> dict[str, Any]:
        m = self.model
        return {
            "encoder": m.encoder.name,
            "decoder": m.decoder.name,
            "num_slots": m.num_slots,
            "device": str(m.device),
            "tasks": list(VALID_TASKS),
            "lora": "merged" if m.lora_merged else ("adapters" if m.has_lora else "none"),
            "prefix_cache": m.prefix_cache.stats() if m.prefix_cache is not None else None,
            "slot_cache": self.slot_cache.stats(),
        }

    def _count_reserved(self, ids: list[int]) -> int:
        return sum(t in self._reserved for t in ids)

    def _prompt(self, job: ChatJob, num_slots: int | None = None) -> list[int]:
        """The prompt :meth:`LLINK.generate` builds: the model's literals of the foreign
        text and, for models whose texts take fewer than K slots, that many slots."""
        m = self.model
        assert job.foreign is not None
        return m.prompt_ids(job.task, job.strict, job.question, num_slots=num_slots,
                            literals=m.literals_of(job.foreign))

    def prepare(self, job: ChatJob) -> Prepared:
        prompt = self._prompt(job)  # K slots: the longest this prompt can be
        if self._count_reserved(prompt) != self._span_reserved:
            found = [s for s in self._reserved_strings if s in (job.question or "")]
            raise bad_request(
                f"the question contains {', '.join(found) or 'reserved tokens'}: the model "
                "reserves these for its slot span; remove them from the question",
                "reserved_token",
            )
        config = self.model.decoder.model.config
        _check_context(
            len(prompt), job.max_tokens, getattr(config, "max_position_embeddings", None)
        )
        notes = []
        limit = self.model.encoder.max_chars
        if job.foreign and limit > 0 and len(job.foreign) > limit:
            notes.append(
                f"the foreign text has {len(job.foreign)} characters; the encoder "
                f"reads the first {limit}"
            )
        return Prepared(prompt, notes)

    def prompts_and_slots(self, jobs: Sequence[ChatJob], prepared: Sequence[Prepared]
                          ) -> tuple[list[list[int]], Any]:
        """The jobs' prompt ids (each job its own task) and their slots [B, K, d_dec] (one
        encoder pass; all jobs share the first one's gate_boost, as a batch does)."""
        m = self.model
        prompts = [p.prompt for p in prepared]
        slots, counts = self.slot_cache.slots(m, [j.foreign for j in jobs], jobs[0].gate_boost)
        if any(k != m.num_slots for k in counts):
            prompts = [self._prompt(j, k) for j, k in zip(jobs, counts, strict=True)]
        return prompts, slots

    def generate(self, jobs: Sequence[ChatJob], prepared: Sequence[Prepared],
                 on_text: OnText | None = None) -> list[Completion]:
        import torch
        from transformers import StoppingCriteriaList

        m, tok = self.model, self.model.tokenizer
        eos = {int(tok.eos_token_id)}
        # generating from embeddings, the ids seen by the criterion are the new tokens only
        steps = _Steps(0, _streaming(jobs), lambda ids: tok.decode(ids, skip_special_tokens=True),
                       eos, on_text)
        first = jobs[0]
        from llink.method.literals import with_literal_bias

        decoding = with_literal_bias(decoding_kwargs(first), tok,
                                     [j.foreign or "" for j in jobs], self.literal_bias)
        with torch.no_grad(), seeded(first.seed, m.device):
            prompts, slots = self.prompts_and_slots(jobs, prepared)
            texts = m.generate_from_ids(
                prompts,
                slots,
                max_new_tokens=first.max_tokens,
                prefix=m.template_ids(first.task, first.strict, first.question),
                stopping_criteria=StoppingCriteriaList([steps]),
                **decoding,
            )
        out = []
        rows = steps.rows(len(jobs))
        for text, row, prompt, p in zip(texts, rows, prompts, prepared, strict=True):
            n, reason = _generated(row, eos)
            out.append(Completion(text, len(prompt), n, reason, p.warnings))
        return out


class HFBackend:
    """A plain Hugging Face causal LM with its chat template.

    Like the LLINK backend it reuses the KV of the template's opening (a default system
    turn and the user turn's header, what every one-turn chat starts with): computed once
    (``prefix_cache_size`` prefixes kept; 0: off), copied into each batch."""

    kind = "hf"
    needs_foreign = False

    def __init__(self, model: Any, tokenizer: Any, name: str, prefix_cache_size: int = 16
                 ) -> None:
        from llink.backbones.prefix_cache import PrefixCache

        self.model = model.eval()
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.name = name
        self.templated = bool(getattr(tokenizer, "chat_template", None))
        eos = model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {int(e) for e in [*eos, tokenizer.eos_token_id] if e is not None}
        self.prefix_cache = PrefixCache(prefix_cache_size) if prefix_cache_size else None
        self.template_head = self._template_head()

    def _template_head(self) -> list[int]:
        """The tokens every one-turn chat's prompt starts with (two chats' common start)."""
        from llink.backbones.prefix_cache import shared_length

        a, b = (self.prepare(ChatJob((("user", text),), 1)).prompt for text in ("A", "Z"))
        return a[: shared_length(a, [b])]

    @classmethod
    def load(
        cls,
        name: str,
        device: str = "auto",
        cache_dir: str | None = None,
        served_name: str | None = None,
    ) -> HFBackend:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from llink.backbones.loading import resolve_device
        from llink.backbones.offline import resolve_model

        path = resolve_model(name, Path(cache_dir) if cache_dir else None)
        dev = resolve_device(device)
        dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True)
            model = model.to(dev)
        except OSError as exc:
            raise ServeError(f"cannot load the model {name!r}: {exc}") from exc
        default = Path(name).name if Path(name).is_dir() else name
        return cls(model, tokenizer, served_name or default)

    def describe(self) -> dict[str, Any]:
        cache = self.prefix_cache.stats() if self.prefix_cache is not None else None
        return {"device": str(self.model.device), "chat_template": self.templated,
                "prefix_cache": cache, "template_head_tokens": len(self.template_head)}

    def render(self, job: ChatJob) -> str:
        """The prompt text: the conversation (last user turn = LLINK instruction if foreign)."""
        messages = [{"role": r, "content": t} for r, t in job.messages]
        if job.foreign is not None:
            last = max(i for i, m in enumerate(messages) if m["role"] == "user")
            messages[last] = {"role": "user", "content": job.instruction()}
        if self.templated:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n".join([*lines, "Assistant:"])

    def prepare(self, job: ChatJob) -> Prepared:
        # a chat template writes its own special tokens
        ids = self.tokenizer(self.render(job), add_special_tokens=not self.templated)
        prompt = list(ids["input_ids"])
        _check_context(
            len(prompt), job.max_tokens, getattr(self.model.config, "max_position_embeddings", None)
        )
        return Prepared(prompt)

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate(self, jobs: Sequence[ChatJob], prepared: Sequence[Prepared],
                 on_text: OnText | None = None) -> list[Completion]:
        import torch
        from transformers import StoppingCriteriaList

        from llink.backbones.prefix_cache import cache_argument, prefill, prefix_cached_batch

        pad = int(self.tokenizer.pad_token_id)
        dev = self.model.device
        embed = self.model.get_input_embeddings()
        ids, mask, kv = prefix_cached_batch(  # the head's KV comes from the cache
            [p.prompt for p in prepared], pad, self.prefix_cache, self.template_head,
            lambda head: prefill(self.model.get_decoder(), embed(head.to(dev))))
        cached: dict[str, Any] = {} if kv is None else {cache_argument(self.model): kv}
        steps = _Steps(ids.shape[1], _streaming(jobs), self._text, self.eos_ids, on_text)
        with torch.no_grad(), seeded(jobs[0].seed, dev):
            out = self.model.generate(
                input_ids=ids.to(dev),
                attention_mask=mask.to(dev),
                **cached,
                max_new_tokens=jobs[0].max_tokens,
                num_beams=1,
                pad_token_id=pad,
                stopping_criteria=StoppingCriteriaList([steps]),
                **decoding_kwargs(jobs[0]),
            )
        completions = []
        for row, p in zip(out[:, ids.shape[1]:].tolist(), prepared, strict=True):
            n, reason = _generated(row, self.eos_ids)
            completions.append(Completion(self._text(row[:n]).strip(), len(p.prompt), n, reason))
        return completions


