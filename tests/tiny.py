"""Tiny model folders (random weights + a word-level tokenizer) written to disk, for end-to-end tests."""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModel, PreTrainedTokenizerFast

from conftest import VOCAB, tiny_config

WORDS = ("good great fine love best fun happy nice bad awful boring hate worst dull sad poor movie film "
         "plot actor story scene the a is was it this that and but not very so too").split()


def word_tokenizer(pad: bool = True) -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer over WORDS padded to VOCAB entries."""
    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    vocab = specials + WORDS + [f"w{i}" for i in range(VOCAB - len(specials) - len(WORDS))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    kwargs = {"pad_token": "[PAD]"} if pad else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]",
                                   model_max_length=64, **kwargs)


def model_dir(path: Path, family: str, pad: bool = True, dropout: float | None = None) -> Path:
    """Save a tiny base model of ``family`` and its tokenizer as a Hugging Face folder (``dropout``: BERT's
    dropout probabilities, default the config's 0.1)."""
    torch.manual_seed(0)
    extra = {} if dropout is None else {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    model = AutoModel.from_config(tiny_config(family, **extra))
    model.save_pretrained(path)
    word_tokenizer(pad).save_pretrained(path)
    return path


def sentiment_rows(n: int = 120, seed: int = 0) -> list[dict]:
    """A learnable toy sentiment set: positive rows use positive words, negative rows negative ones."""
    g = torch.Generator().manual_seed(seed)
    pos, neg = WORDS[:8], WORDS[8:16]
    rows = []
    for i in range(n):
        words = pos if i % 2 == 0 else neg
        picks = [words[int(j)] for j in torch.randint(0, len(words), (int(torch.randint(3, 9, (1,), generator=g)),), generator=g)]
        rows.append({"text": "the movie was " + " ".join(picks), "label": "positive" if i % 2 == 0 else "negative"})
    return rows
