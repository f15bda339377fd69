"""Encoder-decoder sequence classifiers (T5, BART, mBART ...) classify from each row's end-of-text token: their
head reads the hidden state at the row's last ``config.eos_token_id`` and requires every row of a batch to hold
as many. So a text that spells the token (``</s>`` in scraped HTML) is read as characters, a tokenizer that does
not append it gets it appended, and a tokenizer that pads with it or names another end token is refused."""
from __future__ import annotations

import sys
from typing import Any

from transformers import PreTrainedTokenizerBase

from tuneforge import assets
from tuneforge.config import ConfigError, RunConfig
from tuneforge.models import pretrained_config


def setup(cfg: RunConfig, tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """The run's ``meta`` entry ``end_token`` where the model's head reads one (checked against the tokenizer)."""
    end = end_token(cfg)
    if end is None:
        return {}
    check_tokenizer(tokenizer, end, cfg)
    return {"end_token": end}


def end_token(cfg: RunConfig) -> int | None:
    """The end-of-text id the model's classification head reads (an encoder-decoder's), else None."""
    config = pretrained_config(assets.resolve_model(cfg.model.name), cfg.model.trust_remote_code)
    if not getattr(config, "is_encoder_decoder", False) or config.eos_token_id is None:
        return None
    return int(config.eos_token_id)


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, end: int, cfg: RunConfig) -> None:
    """Refuse padding with the end token; say once that it will be appended where the tokenizer does not."""
    word = tokenizer.convert_ids_to_tokens(end)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id != end:
        raise ConfigError(f"model: {cfg.model.name} classifies from each row's end-of-text token, id {end} in its "
                          f"config ({word!r} to its tokenizer), but the tokenizer ends texts with "
                          f"{tokenizer.eos_token!r} (id {tokenizer.eos_token_id}); use the model's own tokenizer, or "
                          "set eos_token_id in its config.json")
    if tokenizer.pad_token_id == end:
        raise ConfigError(f"model: {cfg.model.name} classifies from each row's end-of-text token ({word!r}, id {end}), "
                          "and its tokenizer, having no pad token, pads with that token; give the tokenizer a pad "
                          "token (tokenizer_config.json \"pad_token\")")
    if end not in tokenizer("a")["input_ids"]:  # mBART's follow it with a language code
        print(f"note: {cfg.model.name} classifies from each row's end-of-text token ({word!r}, id {end}), which its "
              "tokenizer does not append: tuneforge appends it", file=sys.stderr)


def encode_kwargs(meta: dict[str, Any]) -> dict[str, Any]:
    """Tokenizer options of a run whose head reads the end token: its spelling inside a text is plain text."""
    return {"split_special_tokens": True} if meta.get("end_token") is not None else {}


def end_rows(enc: Any, meta: dict[str, Any], max_length: int) -> set[int]:
    """Append the end token to every row of ``enc`` (a tokenizer's output) that lacks it, keeping rows within
    ``max_length``; returns the rows that lost a token for it."""
    end, cut = meta.get("end_token"), set()
    if end is None:
        return cut
    for i, ids in enumerate(enc["input_ids"]):  # (seq,) per row
        if end not in ids:  # split_special_tokens: no text spells it, so the tokenizer did not append it
            if len(ids) >= max_length:
                cut.add(i)
            enc["input_ids"][i] = ids[:max_length - 1] + [end]
            if "token_type_ids" in enc:
                types = enc["token_type_ids"][i][:max_length - 1]
                enc["token_type_ids"][i] = types + (types[-1:] or [0])
    return cut
