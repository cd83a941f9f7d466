"""Stage B's objective term by term, each against a computation written out by hand.

Every term is switched on alone (the others at weight 0) on a tiny untrained LLINK
model, and ``_step_loss`` must equal the answer NLL with slots (Hugging Face's own
``labels=`` loss on the injected embeddings) plus that one term. The contrast terms
are also checked for where their gradient goes: ``detached`` re-weights the injected
pass only, ``mismatch`` also pushes the mismatched pass.
"""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from llink.backbones.decoder import FrozenDecoder
from llink.backbones.encoder import FrozenEncoder
from llink.config import StageBConfig
from llink.data.tasks import TaskExample
from llink.method.bridge import BagOfWordsHead, Projector, SlotBridge
from llink.method.inject import IGNORE_INDEX, PromptFormat, collate
from llink.method.model import LLINK
from llink.method.targets import TargetTransform
from llink.train.stage_b import (
    STOP_WORDS,
    _step_loss,
    bow_targets,
    content_token_mask,
    tokenize_examples,
)

from .conftest import KHMER_ENGLISH

#: every term off: the loss is the answer NLL with slots alone
NONE = StageBConfig(direction_weight=0.0, nce_weight=0.0, bow_weight=0.0, lexical_weight=0.0,
                    contrast="omit", usage_weight=0.0, mismatch_weight=0.0)


@pytest.fixture(scope="module")
def setup(tiny_encoder_dir, tiny_decoder_dir):
    torch.manual_seed(0)
    enc = FrozenEncoder.from_pretrained(str(tiny_encoder_dir))
    dec = FrozenDecoder.from_pretrained(str(tiny_decoder_dir), num_slots=2)
    with torch.no_grad():  # sharper outputs: the slots make a visible difference
        dec.model.get_decoder().norm.weight.mul_(10.0)
    d = dec.hidden_size
    vocab = dec.model.get_output_embeddings().weight.shape[0]
    model = LLINK(enc, dec, Projector(enc.dim, d, 2, 0.0), TargetTransform.fit(
        "raw", torch.randn(8, d)), SlotBridge(d, 2, target_norm=1.0), PromptFormat(),
        bow=BagOfWordsHead(d, vocab))
    model.eval()
    items = [TaskExample("translate_to_english", km, en, en=en) for en, km in KHMER_ENGLISH[:4]]
    batch = collate(tokenize_examples(model, items, 24), int(model.tokenizer.pad_token_id))
    vectors = model.encode([it.foreign for it in items])
    teacher = torch.randn(len(items), d)
    content = content_token_mask(model.tokenizer, vocab)
    return model, batch, vectors, teacher, content, vocab


def _run(setup, b, step=0):
    model, batch, vectors, teacher, content, vocab = setup
    return _step_loss(model, b, batch, vectors, teacher, content, vocab, step)


def _nll(model, batch, slots):
    """Hugging Face's loss with ``slots`` written by hand at the placeholder positions."""
    ids = batch["input_ids"]
    embeds = model.lm.get_input_embeddings()(ids).detach().clone()
    for r in range(ids.shape[0]):
        for k, sid in enumerate(model.slot_ids):
            embeds[r, (ids[r] == sid).nonzero().item()] = slots[r, k]
    return model.lm(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                    labels=batch["labels"]).loss


def _grads(model, loss):
    params = [p for p in model.bridge.parameters() if p.requires_grad]
    return [g.clone() for g in torch.autograd.grad(loss, params, retain_graph=True)]


def test_with_every_term_off_the_loss_is_the_answer_nll_with_slots(setup):
    model, batch = setup[0], setup[1]
    loss, parts = _run(setup, NONE)
    ref = _nll(model, batch, model.slots(setup[2]))
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    assert parts["nll"] == pytest.approx(float(ref), rel=1e-5)
    assert set(parts) == {"nll", "loss"}


def test_direction_term_is_the_mse_of_the_unit_slot_mean_and_teacher(setup):
    model, batch, vectors, teacher = setup[:4]
    loss, _ = _run(setup, replace(NONE, direction_weight=0.5))
    slots = model.slots(vectors)
    u, v = slots.mean(1), teacher
    u, v = u / u.norm(dim=-1, keepdim=True), v / v.norm(dim=-1, keepdim=True)
    term = ((u - v) ** 2).mean()
    torch.testing.assert_close(loss, _nll(model, batch, slots) + 0.5 * term, rtol=1e-5,
                               atol=1e-5)
    assert float(term) > 1e-3


def test_infonce_term_pairs_each_slot_mean_with_its_own_teacher(setup):
    model, batch, vectors, teacher = setup[:4]
    loss, _ = _run(setup, replace(NONE, nce_weight=0.3, nce_tau=0.1))
    slots = model.slots(vectors)
    u = F.normalize(slots.mean(1), dim=-1)
    v = F.normalize(teacher, dim=-1)
    logits = u @ v.T / 0.1
    n = logits.shape[0]
    row = -torch.stack([logits[i].log_softmax(0)[i] for i in range(n)]).mean()
    col = -torch.stack([logits[:, i].log_softmax(0)[i] for i in range(n)]).mean()
    torch.testing.assert_close(loss, _nll(model, batch, slots) + 0.3 * 0.5 * (row + col),
                               rtol=1e-5, atol=1e-5)


def test_bag_of_words_term_targets_the_answers_content_tokens(setup):
    model, batch, vectors, teacher, content, vocab = setup
    loss, parts = _run(setup, replace(NONE, bow_weight=0.2))
    tok = model.tokenizer
    targets = torch.zeros(batch["labels"].shape[0], vocab)
    for r, row in enumerate(batch["labels"].tolist()):
        for i in row:
            if i == IGNORE_INDEX or i in tok.all_special_ids or i in model.decoder.reserved.ids:
                continue
            piece = tok.decode([i]).strip().lower()
            if piece in STOP_WORDS or len(piece) < 2 or not any(c.isalnum() for c in piece):
                continue
            targets[r, i] = 1.0
    assert targets.sum() > 4
    torch.testing.assert_close(bow_targets(batch["labels"], content, vocab), targets)
    eos = tok.eos_token_id
    assert all(eos in row for row in batch["labels"].tolist()) and not targets[:, eos].any()
    slots = model.slots(vectors)
    term = F.binary_cross_entropy_with_logits(model.bow(slots), targets)
    assert parts["bow"] == pytest.approx(float(term), rel=1e-5)
    torch.testing.assert_close(loss, _nll(model, batch, slots) + 0.2 * term, rtol=1e-5,
                               atol=1e-5)


def test_lexical_term_scores_answer_words_against_the_nearest_slot(setup):
    model, batch, vectors, teacher, content, vocab = setup
    loss, parts = _run(setup, replace(NONE, lexical_weight=0.4, lexical_scale=5.0))
    slots = model.slots(vectors)
    n_base = min(model.decoder.reserved.ids)
    rows = F.normalize(model.lm.get_input_embeddings().weight[:n_base], dim=-1)
    per_row = []
    for r, labels in enumerate(batch["labels"].tolist()):
        words = sorted({i for i in labels if i >= 0 and bool(content[i]) and i < n_base})
        # each slot's distribution over the vocabulary; a text's is their average
        p = (5.0 * F.normalize(slots[r], dim=-1) @ rows.T).softmax(-1).mean(0)
        per_row.append(-p[words].log().mean())
    term = torch.stack(per_row).mean()
    assert parts["lexical"] == pytest.approx(float(term), rel=1e-4)
    torch.testing.assert_close(loss, _nll(model, batch, slots) + 0.4 * term, rtol=1e-4,
                               atol=1e-4)


def test_usage_term_is_a_hinge_against_the_ablated_slots_with_no_gradient_through_them(setup):
    model, batch, vectors = setup[:3]
    b = replace(NONE, contrast="detached", usage_weight=0.7, usage_margin=50.0)
    loss, parts = _run(setup, b)
    slots = model.slots(vectors)
    inj = _nll(model, batch, slots)
    # ablation: the placeholder tokens keep their own rows, i.e. the plain prompt
    abl = model.lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   labels=batch["labels"]).loss.detach()
    assert parts["nll_ablated"] == pytest.approx(float(abl), rel=1e-5)
    assert abs(float(inj - abl)) > 1e-3
    ref = inj + 0.7 * (inj - abl + 50.0)  # the hinge is active (margin 50)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(_grads(model, loss), _grads(model, 1.7 * inj), strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-7)
    # past the margin the hinge is zero; and it runs every usage_every steps only
    off, _ = _run(setup, replace(b, usage_margin=-50.0))
    torch.testing.assert_close(off, inj, rtol=1e-5, atol=1e-5)
    skipped, _ = _run(setup, replace(b, usage_every=2), step=1)
    torch.testing.assert_close(skipped, inj, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("contrast", ["detached", "mismatch"])
def test_mismatch_term_uses_the_previous_examples_slots(setup, contrast):
    model, batch, vectors = setup[:3]
    b = replace(NONE, contrast=contrast, mismatch_weight=0.6, mismatch_margin=50.0)
    loss, parts = _run(setup, b)
    slots = model.slots(vectors)
    inj = _nll(model, batch, slots)
    mis = _nll(model, batch, torch.cat([slots[-1:], slots[:-1]]))  # row i: slots of row i-1
    assert parts["nll_mismatched"] == pytest.approx(float(mis), rel=1e-5)
    assert abs(float(inj - mis)) > 1e-3
    torch.testing.assert_close(loss, inj + 0.6 * (inj - mis + 50.0), rtol=1e-5, atol=1e-5)
    # detached: the gradient of the injected pass only; mismatch: through both passes
    through = inj + 0.6 * (inj - mis + 50.0)
    detached = inj + 0.6 * (inj - mis.detach() + 50.0)
    want = _grads(model, through if contrast == "mismatch" else detached)
    other = _grads(model, detached if contrast == "mismatch" else through)
    got = _grads(model, loss)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)
    assert any(not torch.allclose(g, o, rtol=1e-3, atol=1e-6)
               for g, o in zip(got, other, strict=True))
    off, _ = _run(setup, replace(b, mismatch_margin=-50.0))
    torch.testing.assert_close(off, inj, rtol=1e-5, atol=1e-5)
