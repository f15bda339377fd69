"""Causal-LM data: records -> conversations -> token ids with label masking, truncation and packing.

Records become conversations in :mod:`tuneforge.data.layouts` (chat, pairs or plain text).
Conversations are rendered with the tokenizer's chat template or a named one (``data.template``), and only
assistant tokens train (prompt tokens get label -100). Each piece of the rendered text is tokenised on its
own (as LLaMA-Factory does), so the prompt tokens seen in training are those :func:`prompt_ids` gives at
generation time: exactly for a first turn, and for later turns wherever the template separates turns with
special tokens (ChatML, Llama 3, Gemma); a SentencePiece template that joins turns with plain text (Mistral
v0.1's ``[/INST]hello</s>``) may tokenise an earlier reply otherwise within the whole history.
Too long: the prompt is cut from the left first (the latest turns are kept); an answer longer than the row
keeps its start. Packed rows (``data.packing``) carry ``position_ids`` that restart at every example, so the
model keeps each example to itself (a block-diagonal causal mask, as in ``batching.collate_packed``) and no
label is predicted across an example boundary. Where a model or method cannot (see ``Task.packing_ok``) the
position ids are dropped and rows are plain concatenations, as with Trainer/TRL packing.
"""
from __future__ import annotations

import json
import sys

from transformers import PreTrainedTokenizerBase

from tuneforge.config import ConfigError
from tuneforge.data.batching import pack_rows
from tuneforge.data.templates import pieces, render, reply_end_id, until_last_reply

IGNORE = -100  # label of tokens that do not train
CHARS_PER_TOKEN = 8  # generous bound of characters per token: turns beyond 8 x max_length chars are dropped

def recent(messages: list[dict[str, str]], budget: int) -> list[dict[str, str]]:
    """Drop turns long before the last reply: keep (the system message and) the latest turns, from a user
    message on, holding at least ``budget`` characters. Truncation would cut the dropped turns anyway; this
    only spares rendering very long conversations (which costs time quadratic in their turns)."""
    start, total = len(messages), 0
    while start > 0 and total <= budget:
        start -= 1
        total += len(messages[start]["content"])
    while start > 0 and messages[start]["role"] != "user":
        start -= 1
    if start == 0 or (start == 1 and messages[0]["role"] == "system"):
        return messages
    return ([messages[0]] if messages[0]["role"] == "system" else []) + messages[start:]


def truncate(ids: list[int], labels: list[int], answer_start: int, max_length: int) -> tuple[list[int], list[int]]:
    """Fit ``max_length``: cut the prompt (everything before the last answer) from the left, keeping at most
    half the row for it when the answer itself is long; then cut the answer from the right. An earlier reply
    whose start the cut removed stays as context but does not train (its tail would, without its question)."""
    if len(ids) <= max_length:
        return ids, labels
    prompt_len, answer_len = answer_start, len(ids) - answer_start
    keep = max(max_length - answer_len, min(prompt_len, max_length // 2))
    lo = answer_start - keep
    hi = lo + max_length
    out = labels[lo:hi]
    k = 0
    while lo > 0 and labels[lo - 1] != IGNORE and lo + k < answer_start and out[k] != IGNORE:
        out[k] = IGNORE  # the cut fell inside an earlier reply
        k += 1
    return ids[lo:hi], out


def note_control_strings(items: list, tokenizer: PreTrainedTokenizerBase, where: list[str]) -> int:
    """One note when texts or messages (``items``) hold the tokenizer's control strings (``<|im_end|>`` ...), which
    encode as those tokens, not as text; returns how many examples do."""
    marks = [t for t in tokenizer.all_special_tokens if len(t) > 1 and not t.isalnum()]
    texts = ([i] if isinstance(i, str) else [m["content"] for m in i] for i in items)
    hits = [(w, s) for t, w in zip(texts, where) for s in marks if any(s in x for x in t)]
    if hits:
        print(f"note: {len({w for w, _ in hits})} example(s) hold the tokenizer's control string(s) "
              f"{', '.join(sorted({s for _, s in hits}))} (first at {hits[0][0]}): they train as those tokens, "
              "not as text; remove them if they are text", file=sys.stderr)
    return len({w for w, _ in hits})


def warn_endless(examples: list[dict[str, list[int]]], tokenizer: PreTrainedTokenizerBase, template: str) -> bool:
    """One warning when no reply of ``examples`` trains a token generation stops at (the tokenizer's EOS, the
    template's reply end): a template that ends replies with plain text teaches answers that never end."""
    stops = {tokenizer.eos_token_id, reply_end_id(tokenizer, template)} - {None}
    if not examples or any(not stops.isdisjoint(e["labels"]) for e in examples):
        return False
    print("warning: no training reply ends with a token that generation stops at (the tokenizer's EOS or the chat "
          "template's end-of-turn mark): the template ends replies with plain text, so generated answers run on to "
          "the token limit; give a data.template that ends each reply with {{ eos_token }}", file=sys.stderr)
    return True


def encode_conversations(conversations: list[list[dict[str, str]]], tokenizer: PreTrainedTokenizerBase,
                         template: str, max_length: int, where: list[str]) -> list[dict[str, list[int]]]:
    """Token ids + labels (-100 outside assistant replies) of each conversation, truncated to ``max_length``
    (``_cut``: the example lost tokens or early turns; ``_context``: earlier replies kept from training, see
    :func:`pieces` and :func:`context_note`)."""
    split, whole, dropped, context = [], [], [], []
    for messages, w in zip(conversations, where):
        whole.append(until_last_reply(messages))
        turns = recent(whole[-1], CHARS_PER_TOKEN * max_length)
        dropped.append(len(turns) < len(whole[-1]))
        split.append(_pieces_of_row(tokenizer, template, turns, w, context))
    flat = [text for parts in split for text, _ in parts]
    tokens = iter(tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else [])
    examples = []
    for parts, kept, w, cut, kept_out in zip(split, whole, where, dropped, context):
        ids, labels, answer_start = _joined(parts, [next(tokens) for _ in parts])
        if cut and len(ids) < max_length:  # the character bound dropped turns that fit (e.g. runs of spaces)
            again: list[int] = []
            parts = _pieces_of_row(tokenizer, template, kept, w, again)
            kept_out = again[0]
            ids, labels, answer_start = _joined(parts, tokenizer([t for t, _ in parts], add_special_tokens=False)[
                "input_ids"])
            cut = False
        cut = cut or len(ids) > max_length
        ids, labels = truncate(ids, labels, answer_start, max_length)
        if all(y == IGNORE for y in labels[1:]):
            raise ConfigError(f"{w}: no answer token is left after truncation to model.max_length={max_length}; "
                              "raise model.max_length or shorten the prompt")
        examples.append({"input_ids": ids, "labels": labels, **({"_cut": True} if cut else {}),
                         **({"_context": kept_out} if kept_out else {})})
    return examples


def context_note(examples: list[dict]) -> str | None:
    """The note on earlier replies kept from training (examples marked ``_context``), or None."""
    rows = [e["_context"] for e in examples if e.get("_context")]
    if not rows:
        return None
    return (f"note: the chat template renders {sum(rows)} earlier repl(ies) in {len(rows)} conversation(s) otherwise "
            "once later turns follow (Qwen3's, for one, gives only the last reply its think block); they stay as "
            "context and do not train, so each reply that trains is rendered as generation continues it; to train "
            "them, give each as the last reply of its own conversation")


def _pieces_of_row(tokenizer: PreTrainedTokenizerBase, template: str, messages: list[dict[str, str]],
                   where: str, context: list[int]) -> list[tuple[str, bool]]:
    """:func:`pieces`, its errors naming the row (``where``); how many replies it kept as context is appended
    to ``context``."""
    try:
        parts, kept_out = pieces(tokenizer, template, messages)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    context.append(kept_out)
    return parts


def _joined(parts: list[tuple[str, bool]], piece_ids: list[list[int]]) -> tuple[list[int], list[int], int]:
    """One conversation's ids and labels from its rendered pieces (text, trains) and their token ids, and where
    its last reply starts."""
    ids, labels, answer_start = [], [], 0
    for (_, trains), piece in zip(parts, piece_ids):
        if trains:
            answer_start = len(ids)
        ids += piece
        labels += piece if trains else [IGNORE] * len(piece)
    return ids, labels, answer_start


def encode_texts(texts: list[str], tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[dict[str, list[int]]]:
    """Plain text (every token trains), EOS-terminated, cut into consecutive rows of ``max_length``."""
    eos = tokenizer.eos_token_id
    examples = []
    for ids in tokenizer(texts, add_special_tokens=True)["input_ids"] if texts else []:
        if eos is not None and (not ids or ids[-1] != eos):
            ids = ids + [eos]
        for s in range(0, len(ids), max_length):
            chunk = ids[s:s + max_length]
            if len(chunk) > 1:  # a lone token has nothing to predict
                examples.append({"input_ids": chunk, "labels": list(chunk)})
    return examples


def pack(examples: list[dict[str, list[int]]], max_length: int) -> list[dict[str, list[int]]]:
    """Whole examples packed into rows of at most ``max_length`` tokens (best-fit-decreasing,
    ``batching.pack_rows``). The first label of every example is -100, so nothing is learned across an
    example boundary; ``position_ids`` restart at 0 for every example, so none attends to another."""
    packed = []
    for row in pack_rows([len(e["input_ids"]) for e in examples], max_length):
        ids, labels, positions = [], [], []
        for i in row:
            ids += examples[i]["input_ids"]
            labels += [IGNORE] + examples[i]["labels"][1:]
            positions += range(len(examples[i]["input_ids"]))
        packed.append({"input_ids": ids, "labels": labels, "position_ids": positions})
    return packed


def split_reference(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    """(prompt messages before the last assistant reply that trains, that reply) for generation-based evaluation
    (a later reply of weight 0 is no reference)."""
    *prompt, reply = until_last_reply(messages)
    return prompt, reply["content"]


def prompt_text(prompt: list[dict[str, str]]) -> str:
    """A conversation's prompt (messages) as one text: what rows asking the same prompt share."""
    return json.dumps(prompt, ensure_ascii=False, sort_keys=True)


def prompt_ids(tokenizer: PreTrainedTokenizerBase, template: str, messages: list[dict[str, str]],
               max_length: int | None) -> list[int]:
    """Token ids of a conversation + the assistant header, cut from the left to ``max_length`` (None: whole)."""
    ids = tokenizer(render(tokenizer, template, messages, True), add_special_tokens=False)["input_ids"]
    return ids[-max_length:] if max_length else ids
