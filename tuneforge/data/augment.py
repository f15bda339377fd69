"""EDA-style text augmentation (Wei & Zou 2019, "EDA: Easy Data Augmentation Techniques", arXiv 1901.11196).

Three of EDA's four word operations, each applied per word with its own probability:
random deletion, random swap and random insertion. EDA inserts *synonyms* (WordNet); offline we have no
thesaurus, so an insertion copies a word of the same text (or draws from a given ``vocabulary``).
Words are whitespace-separated tokens (punctuation stays attached); the result is joined by single spaces.
Everything is driven by the ``random.Random`` passed in, so a seed fixes the output.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from tuneforge.strict import ConfigError, probability


def augment(text: str, rng: random.Random, p_delete: float = 0.1, p_swap: float = 0.1, p_insert: float = 0.1,
            vocabulary: Sequence[str] | None = None) -> str:
    """One augmented version of ``text``.

    In order: each word is deleted with probability ``p_delete`` (if every word would go, one randomly
    chosen word is kept, as in EDA: the result is never empty); then each position is swapped with a random
    other position with probability ``p_swap``; then for each word, with probability ``p_insert``, a word
    (from the text itself, or from ``vocabulary``) is inserted at a random position.
    A text without words (empty or whitespace only) is returned unchanged.
    """
    for name, p in (("p_delete", p_delete), ("p_swap", p_swap), ("p_insert", p_insert)):
        probability(name, p)
    words = text.split()
    if not words:
        return text
    kept = [w for w in words if rng.random() >= p_delete]
    if not kept:
        kept = [rng.choice(words)]
    words = kept
    if len(words) > 1:
        for i in range(len(words)):
            if rng.random() < p_swap:
                j = rng.randrange(len(words) - 1)
                j += j >= i  # a position other than i
                words[i], words[j] = words[j], words[i]
    pool = list(vocabulary) if vocabulary else list(words)
    for _ in range(len(words)):
        if rng.random() < p_insert:
            words.insert(rng.randrange(len(words) + 1), rng.choice(pool))
    return " ".join(words)


def augment_records(records: Sequence[dict[str, Any]], text_column: str = "text", copies: int = 1, seed: int = 0,
                    p_delete: float = 0.1, p_swap: float = 0.1, p_insert: float = 0.1,
                    vocabulary: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The records followed each by ``copies`` augmented copies (other columns, e.g. the label, unchanged).

    Apply this to the *training split only* (after splitting), or augmented copies of test texts leak into
    training. Deterministic for a given ``seed``; the input records are not modified.
    """
    if copies < 0:
        raise ConfigError(f"copies must be >= 0, got {copies}")
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for row, record in enumerate(records, start=1):
        if not isinstance(record.get(text_column), str):
            raise ConfigError(f"augmentation, row {row}: column '{text_column}' is missing or not text; "
                              "set the text column that holds the training text")
        out.append(record)
        for _ in range(copies):
            out.append({**record, text_column: augment(record[text_column], rng, p_delete, p_swap, p_insert,
                                                        vocabulary)})
    return out


def augment_train(records: list[dict[str, Any]], cfg: Any, columns: Sequence[str]) -> list[dict[str, Any]]:
    """Apply ``cfg.forgetting.augment`` (a RunConfig) to training records: each record followed by ``copies``
    copies whose ``columns`` (the task's text columns) are augmented; unchanged when ``copies`` is 0. A task
    without text columns to augment (e.g. causal LM: edited answers would be trained on) refuses it."""
    a = cfg.forgetting.augment
    if a.copies == 0:
        return records
    if not columns:
        raise ConfigError(f"forgetting.augment: a {cfg.model.task} run has no text that word-level augmentation may "
                          "change; set forgetting.augment.copies=0 (use replay or regularisation instead)")
    out = augment_records(records, columns[0], a.copies, cfg.data.seed, a.p_delete, a.p_swap, a.p_insert)
    if len(columns) > 1:  # text pairs: the second text is augmented too, with its own random stream
        rng = random.Random(cfg.data.seed + 1)
        for i, record in enumerate(out):
            if i % (a.copies + 1):
                for col in columns[1:]:
                    record[col] = augment(str(record[col]), rng, a.p_delete, a.p_swap, a.p_insert)
    return out
