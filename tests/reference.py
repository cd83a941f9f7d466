"""Hand-written references the tests compare the library with."""

from __future__ import annotations

import torch


def greedy_reference(model, prompts: list[list[int]], slots: torch.Tensor | None = None,
                     max_new_tokens: int = 8, no_repeat_ngram_size: int = 3) -> list[str]:
    """Greedy decoding written out, one prompt at a time: no padding, no cache, the
    reserved tokens suppressed and n-grams of the new tokens never repeated (the rules
    :meth:`PromptedDecoder.generate_from_ids` gives ``generate``)."""
    ids = greedy_reference_ids(model, prompts, slots, max_new_tokens, no_repeat_ngram_size)
    return [model.tokenizer.decode(new, skip_special_tokens=True).strip() for new in ids]


@torch.no_grad()
def greedy_reference_ids(model, prompts: list[list[int]], slots: torch.Tensor | None = None,
                         max_new_tokens: int = 8, no_repeat_ngram_size: int = 3
                         ) -> list[list[int]]:
    """The new token ids of :func:`greedy_reference`, the end token included."""
    tok, n = model.tokenizer, no_repeat_ngram_size
    table = model.lm.get_input_embeddings()
    outs = []
    for r, prompt in enumerate(prompts):
        ids = torch.tensor([prompt], device=model.device)
        embeds = model.embed(ids, None if slots is None else slots[r : r + 1])
        new: list[int] = []
        for _ in range(max_new_tokens):
            logits = model.lm(inputs_embeds=embeds).logits[0, -1].float().clone()
            logits[model.decoder.reserved.ids] = float("-inf")
            if len(new) >= n - 1:
                tail = new[len(new) - (n - 1):]
                for j in range(len(new) - (n - 1)):
                    if new[j : j + n - 1] == tail:
                        logits[new[j + n - 1]] = float("-inf")
            t = int(logits.argmax())
            new.append(t)
            if t == tok.eos_token_id:
                break
            embeds = torch.cat([embeds, table(torch.tensor([[t]], device=model.device))], 1)
        outs.append(new)
    return outs
