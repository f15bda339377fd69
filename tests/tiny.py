"""Tiny model folders (random weights + a word-level tokenizer) written to disk, for end-to-end tests."""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import AutoModel, PreTrainedTokenizerFast

from conftest import VOCAB, tiny_config

WORDS = ("good great fine love best fun happy nice bad awful boring hate worst dull sad poor movie film "
         "plot actor story scene the a is was it this that and but not very so too").split()


def word_tokenizer(pad: bool = True, words: list[str] | None = None, specials: list[str] | None = None,
                   template: str | None = None, lowercase: bool = False, eos: str = "[EOS]", unk: str = "[UNK]",
                   pad_token: str = "[PAD]", fill: bool = True) -> PreTrainedTokenizerFast:
    """THE tokenizer builder of the test suite: a whitespace word-level tokenizer over ``specials + words``
    (default: ``[PAD] [UNK] [BOS] [EOS]`` + ``WORDS``), padded with ``w<i>`` entries up to ``VOCAB`` ids when
    ``fill``; optionally lower-casing and with a chat ``template``."""
    specials = specials if specials is not None else ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    vocab = specials + list(words if words is not None else WORDS)
    if fill:
        vocab += [f"w{i}" for i in range(VOCAB - len(vocab))]
    assert len(vocab) <= VOCAB and len(set(vocab)) == len(vocab)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token=unk))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([t for t in specials if t.startswith(("<", "["))])
    kwargs = {"pad_token": pad_token} if pad else {}
    bos = {"bos_token": "[BOS]"} if "[BOS]" in specials else {}
    out = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=unk, eos_token=eos, model_max_length=64,
                                  **bos, **kwargs)
    if template:
        out.chat_template = template
    return out


def save_folder(path: Path, model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast) -> Path:
    """THE model-folder saver of the test suite: ``model`` and ``tokenizer`` as one Hugging Face folder."""
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def model_dir(path: Path, family: str, pad: bool = True, dropout: float | None = None) -> Path:
    """Save a tiny base model of ``family`` and its tokenizer as a Hugging Face folder (``dropout``: BERT's
    dropout probabilities, default the config's 0.1)."""
    torch.manual_seed(0)
    extra = {} if dropout is None else {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    return save_folder(path, AutoModel.from_config(tiny_config(family, **extra)), word_tokenizer(pad))


def reviews_csv(path: Path, n: int) -> Path:
    """``n`` labelled sentiment rows (text, label) written to ``path`` as CSV."""
    import pandas as pd

    pd.DataFrame(sentiment_rows(n)).to_csv(path, index=False)
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
