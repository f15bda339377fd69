"""Input -> output pairs for encoder-decoder models (the ``seq2seq`` task): rows -> encoder ids, decoder labels
and the decoder's teacher-forced inputs.

The layouts are the causal LM's pairs (``layouts.py``: ``source``/``target``, ``document``/``summary``,
``instruction``/``output`` ... or ``data.text_column`` + ``data.label_column``) and one-exchange conversations. A
system prompt (``data.system_prompt``, a row's ``system`` column or a leading system message) is written before
the input, as T5's task prefixes are ("summarize: ...")."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import GenerationConfig, PreTrainedTokenizerBase

from tuneforge.config import ConfigError, RunConfig
from tuneforge.data import layouts
from tuneforge.models import pretrained_config


def source_target(record: dict[str, Any], cfg: RunConfig, where: str, fmt: str | None = None) -> tuple[str, str]:
    """The row's input (after its system prompt, if any) and the output to learn; ``fmt``: the layout (default:
    the one its columns imply)."""
    item = layouts.to_messages(record, fmt or layouts.detect_format(set(record), cfg.data, where), cfg.data, where)
    if isinstance(item, str):
        raise ConfigError(f"{where}: a seq2seq row needs an input and an output; this one holds plain text only "
                          "(give input/output columns: source/target, document/summary, instruction/output ..., or "
                          "data.text_column + data.label_column)")
    system = item[0]["content"] if item[0]["role"] == "system" else ""
    turns = [m for m in item if m["role"] != "system"]
    if len(turns) != 2:
        raise ConfigError(f"{where}: seq2seq learns one output per input; this conversation has {len(turns)} "
                          "messages (give one user message and its reply, or train a causal_lm model on it)")
    return with_prefix(system, turns[0]["content"]), turns[1]["content"]


def with_prefix(prefix: str, text: str) -> str:
    """``text`` after a system prompt / task prefix, a space between them unless the prefix ends in one."""
    return text if not prefix else prefix + ("" if prefix[-1].isspace() else " ") + text


# model types whose decoder starts from the output's last token (mBART-cc25's target language code), as their
# Hugging Face ``shift_tokens_right`` does; the others start from ``decoder_start_token_id``
LAST_TOKEN_FIRST = ("mbart", "plbart")


def decoding(path: str | Path, cfg: RunConfig, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """How the model's decoder reads and ends an output: ``decoder_start`` (config.json, else
    generation_config.json; with ``last_first`` (see ``LAST_TOKEN_FIRST``) an output's last token, which training
    starts from), ``eos`` (the tokenizer's, else the model's). Refused: a model that names no start token, or no
    end-of-sequence token (the outputs it learned would never end)."""
    config = pretrained_config(path, cfg.model.trust_remote_code)
    try:
        generation = GenerationConfig.from_pretrained(str(path))
    except OSError:  # no generation_config.json
        generation = None

    def named(key: str) -> Any:
        value = getattr(config, key, None)
        value = value if value is not None else getattr(generation, key, None)
        return value[0] if isinstance(value, list) and value else value

    start, last_first = named("decoder_start_token_id"), config.model_type in LAST_TOKEN_FIRST
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else named("eos_token_id")
    if start is None and not last_first:
        raise ConfigError(f"model: {cfg.model.name} names no decoder_start_token_id (in config.json or "
                          "generation_config.json); its decoder cannot start without it: add it to config.json")
    if eos is None:
        raise ConfigError(f"model: {cfg.model.name} names no end-of-sequence token (the tokenizer's eos_token, the "
                          "config's eos_token_id), so the outputs it learns would never end: set eos_token in "
                          "tokenizer_config.json")
    meta = {"decoder_start": None if start is None else int(start), "eos": int(eos), "last_first": last_first}
    if last_first:  # generation starts where training did: the last token of an output (cc25's language code)
        meta["decoder_start"] = encode_pairs([("x", "x")], tokenizer, 8, {**meta, "decoder_start": 0})[0]["labels"][-1]
    return meta


def encode_pairs(pairs: list[tuple[str, str]], tokenizer: PreTrainedTokenizerBase, max_length: int,
                 meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Encoder ids of each input, decoder labels of its output and the decoder's teacher-forced inputs (the labels
    one place right, behind the start token: see :func:`decoding`), each at most ``max_length`` tokens (cut by
    the tokenizer, which keeps its special tokens; a cut example is marked ``_cut``). An output ends in the
    end-of-sequence token (added where the tokenizer adds none), so the model learns where to stop."""
    if not pairs:
        return []
    sources, targets = (list(t) for t in zip(*pairs))
    src, long = encoder_ids(sources, tokenizer, max_length)
    tgt = tokenizer(text_target=targets)["input_ids"]
    eos = meta["eos"]
    out, long = [], set(long)
    for i, (s, t) in enumerate(zip(src, tgt)):
        own = eos in t  # the tokenizer ends outputs itself (T5, BART; mBART-cc25 follows it with a language code)
        cut = i in long or len(t) + (not own) > max_length
        if own and len(t) > max_length:
            t = tokenizer(text_target=targets[i], truncation=True, max_length=max_length)["input_ids"]
        elif not own:
            t = t[:max_length - 1] + [eos]
        start = t[-1] if meta["last_first"] else meta["decoder_start"]
        out.append({"input_ids": s, "labels": t, "decoder_input_ids": [start] + t[:-1],
                    **({"_cut": True} if cut else {})})
    return out


def encoder_ids(texts: list[str], tokenizer: PreTrainedTokenizerBase, max_length: int
                ) -> tuple[list[list[int]], list[int]]:
    """The encoder's token ids of each input, one longer than ``max_length`` cut by the tokenizer (which keeps its
    special tokens: T5's, BART's ``</s>``), and the indices of those cut."""
    ids = tokenizer(texts)["input_ids"] if texts else []
    long = [i for i, x in enumerate(ids) if len(x) > max_length]
    if long:
        for i, x in zip(long, tokenizer([texts[i] for i in long], truncation=True, max_length=max_length)["input_ids"]):
            ids[i] = x
    return ids, long
