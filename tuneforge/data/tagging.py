"""Token classification on sub-word tokenizers: word labels -> sub-token labels (the Hugging Face recipe:
first sub-token carries the word's label, the rest and special tokens -100), overlapping windows for sentences
longer than ``max_length``, and stitching per-token predictions of all windows back into one label per word."""
from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from tuneforge.strict import ConfigError

IGNORE = -100  # label of tokens the loss skips
DEFAULT_STRIDE = 32  # data.stride left unset: tokens shared by consecutive windows of a long sentence
_PROBE = ["Hello", "world", ",", "New", "York", "cats"]


def align(word_ids: Sequence[int | None], word_labels: Sequence[int], label_all_subtokens: bool = False,
          b_to_i: Sequence[int] | None = None) -> list[int]:
    """Label per sub-token from a fast tokenizer's ``word_ids()``: a word's first sub-token gets the word's label,
    its other sub-tokens -100 (or, with ``label_all_subtokens``, the label mapped through ``b_to_i`` when given,
    e.g. B-PER -> I-PER), special tokens (word id None) -100."""
    labels, previous = [], None
    for w in word_ids:
        if w is None:
            labels.append(IGNORE)
        elif w != previous:
            labels.append(word_labels[w])
        elif label_all_subtokens:
            labels.append(b_to_i[word_labels[w]] if b_to_i is not None else word_labels[w])
        else:
            labels.append(IGNORE)
        previous = w
    return labels


def needs_word_spaces(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether words must carry a leading space to be tokenised as in running text. Byte-level BPE (GPT-2,
    SmolLM2/Llama-3) marks a word start by a space; with ``is_split_into_words`` transformers 5.24 passes the
    words bare (its ``add_prefix_space=True`` leaves the backend's pre-tokenizer unchanged), so " York" must be
    given to get ``ĠYork`` rather than ``Y ork``. WordPiece (BERT) and SentencePiece-style tokenizers that
    already mark every word are left alone. Decided by comparing with the tokenisation of the joined text."""
    cached = getattr(tokenizer, "_tuneforge_word_spaces", None)
    if cached is None:
        def ids(text: Any, split: bool) -> list[int]:
            return tokenizer(text, is_split_into_words=split, add_special_tokens=False)["input_ids"]

        natural = ids(" ".join(_PROBE), False)
        bare = ids(_PROBE, True)
        spaced = ids(_PROBE[:1] + [" " + w for w in _PROBE[1:]], True)
        cached = bare != natural and spaced == natural
        try:
            object.__setattr__(tokenizer, "_tuneforge_word_spaces", cached)
        except (AttributeError, TypeError):  # pragma: no cover - objects without a __dict__
            pass
    return cached


def _encode(tokenizer: PreTrainedTokenizerBase, words: Sequence[str]) -> tuple[Any, list[int | None]]:
    """Encoding of the whole sentence with special tokens, and its word id per token; a word that yields no token
    (e.g. a zero-width character BERT drops) is replaced by the unknown token so that every word keeps a label."""
    def run(ws: Sequence[str]) -> tuple[Any, list[int | None]]:
        if needs_word_spaces(tokenizer):
            ws = [w if i == 0 else " " + w for i, w in enumerate(ws)]
        enc = tokenizer(list(ws), is_split_into_words=True, add_special_tokens=True, verbose=False,
                        return_special_tokens_mask=not tokenizer.is_fast)
        return enc, (enc.word_ids() if tokenizer.is_fast else _python_word_ids(tokenizer, enc, ws))

    enc, word_ids = run(words)
    missing = set(range(len(words))) - {w for w in word_ids if w is not None}
    if missing:
        stand_in = tokenizer.unk_token or "_"
        enc, word_ids = run([stand_in if i in missing else w for i, w in enumerate(words)])
        still = set(range(len(words))) - {w for w in word_ids if w is not None}
        if still:
            i = min(still)
            raise ConfigError(f"word {i} ({words[i]!r}) yields no token even as {stand_in!r}; remove it from the data")
    return enc, word_ids


def _python_word_ids(tokenizer: PreTrainedTokenizerBase, enc: Any, words: Sequence[str]) -> list[int | None]:
    """``word_ids()`` of a Python (slow) tokenizer's encoding, which lacks them (BERTweet, PhoBERT, ESM, XLM in
    transformers 5.24): such a tokenizer encodes split words one by one and joins the tokens, so word ``i`` owns
    the next ``len(tokenize(words[i]))`` tokens that are not special."""
    counts = [len(tokenizer.tokenize(w)) for w in words]
    content = [i for i, special in enumerate(enc["special_tokens_mask"]) if not special]
    if len(content) != sum(counts):
        raise ConfigError(f"{type(tokenizer).__name__} is a Python tokenizer whose encoding of split words is not "
                          "its words' tokens in turn; token classification needs a fast tokenizer (tokenizer.json)")
    out: list[int | None] = [None] * len(enc["input_ids"])
    owners = (w for w, n in enumerate(counts) for _ in range(n))
    for i, w in zip(content, owners):
        out[i] = w
    return out


def window_spans(word_ids: Sequence[int], budget: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) token ranges of at most ``budget`` tokens covering ``word_ids`` (no special tokens), each
    overlapping the previous by ``stride`` tokens or more where the words allow (a long next word may force
    less), every window reaching past the previous one; windows begin and end between words unless one word
    alone is longer than the budget (then it is cut into budget-sized pieces)."""
    n = len(word_ids)
    bounds = [i for i in range(1, n) if word_ids[i] != word_ids[i - 1]] + [n]  # cut positions between words
    spans, start = [], 0
    while True:
        k = bisect.bisect_right(bounds, start + budget) - 1  # last cut <= start + budget
        end = bounds[k] if k >= 0 and bounds[k] > start else min(start + budget, n)
        spans.append((start, end))
        if end >= n:
            return spans
        start = _next_start(bounds, start, end, budget, stride)


def _next_start(bounds: list[int], start: int, end: int, budget: int, stride: int) -> int:
    """Start of the window after [start, end): a cut leaving room for the next word, overlapping by >= stride
    tokens when possible, else as much as possible; ``end`` when the next word alone fills a window."""
    next_end = bounds[bisect.bisect_right(bounds, end)] if end < bounds[-1] else end
    lo = max(next_end - budget, start + 1)
    candidates = bounds[bisect.bisect_left(bounds, lo):bisect.bisect_right(bounds, end)]
    if not candidates:
        return end
    enough = [c for c in candidates if c <= end - stride]
    return enough[-1] if enough else candidates[0]


def encode_words(tokenizer: PreTrainedTokenizerBase, words: Sequence[str], word_labels: Sequence[int] | None,
                 max_length: int, stride: int | None = 0, label_all_subtokens: bool = False,
                 b_to_i: Sequence[int] | None = None) -> list[dict[str, list]]:
    """Pre-split ``words`` as windows of at most ``max_length`` tokens (special tokens included) that overlap
    by ``stride`` tokens (None: ``DEFAULT_STRIDE``, or under half a window when the window is short); one window
    when the sentence fits. Each window: ``input_ids``, ``token_type_ids``
    (when the tokenizer makes them), ``word_ids`` (sentence-level word index per token, None for special
    tokens) and, when ``word_labels`` are given, ``labels`` (:func:`align`)."""
    if word_labels is not None and len(word_labels) != len(words):
        raise ValueError(f"{len(word_labels)} labels for {len(words)} words")
    if not words:
        return []
    enc, word_ids = _encode(tokenizer, words)
    content = [i for i, w in enumerate(word_ids) if w is not None]
    first, last = content[0], content[-1] + 1  # special tokens before/after the words
    budget = max_length - first - (len(word_ids) - last)
    if budget < 1:
        raise ConfigError(f"max_length {max_length} leaves no room for words beside "
                          f"{len(word_ids) - len(content)} special tokens; raise it")
    if stride is None:
        stride = min(DEFAULT_STRIDE, (budget - 1) // 2)
    if not 0 <= stride < budget:
        raise ConfigError(f"data.stride {stride} must be at least 0 and below model.max_length {max_length} minus "
                          f"{max_length - budget} special tokens ({budget}); lower it (e.g. data.stride={budget // 4}) "
                          "or raise model.max_length")
    labels = align(word_ids, word_labels, label_all_subtokens, b_to_i) if word_labels is not None else None
    columns = {k: enc[k] for k in ("input_ids", "token_type_ids") if k in enc}
    if labels is not None:
        columns["labels"] = labels
    columns["word_ids"] = word_ids
    windows = []
    for start, end in window_spans(word_ids[first:last], budget, stride):
        keep = list(range(first)) + list(range(first + start, first + end)) + list(range(last, len(word_ids)))
        windows.append({k: [v[i] for i in keep] for k, v in columns.items()})
    return windows


def stitch(windows_word_ids: Sequence[Sequence[int | None]], windows_predictions: Sequence[Sequence[int]],
           n_words: int) -> list[int]:
    """One predicted label id per word from per-token predictions of all windows of a sentence: a word's first
    sub-token in the window where it lies farthest from a window edge (most context on its shorter side; ties:
    the earlier window). (A word longer than a whole window is cut; its later windows see only its tail.)"""
    best: list[tuple[int, int] | None] = [None] * n_words  # (context, prediction)
    for word_ids, preds in zip(windows_word_ids, windows_predictions):
        preds = preds.tolist() if hasattr(preds, "tolist") else list(preds)
        if len(preds) < len(word_ids):
            raise ValueError(f"{len(preds)} predictions for a window of {len(word_ids)} tokens")
        content = [(i, w) for i, w in enumerate(word_ids) if w is not None]
        seen: set[int] = set()
        for k, (i, w) in enumerate(content):
            if w in seen:
                continue
            seen.add(w)
            context = min(k, len(content) - 1 - k)
            if best[w] is None or context > best[w][0]:
                best[w] = (context, int(preds[i]))
    missing = [w for w, b in enumerate(best) if b is None]
    if missing:
        raise ValueError(f"word {missing[0]} has no token in any window ({len(missing)} words uncovered)")
    return [b[1] for b in best]
