"""Token-classification data from raw text with character-offset entities (JSONL): ``{"text": ..., "entities":
[{"start", "end", "label"}]}`` (or spaCy's and doccano's ``[start, end, label]`` lists) -> one record per text
``{"tokens", "tags", "offsets", "text"}`` with BIO tags over its words (:mod:`tuneforge.data.words`); and back."""
from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from tuneforge.data import row_numbers
from tuneforge.data.conll import Record, as_list, require
from tuneforge.data.readers import as_int, place
from tuneforge.data.words import split_words
from tuneforge.evaluate import get_entities
from tuneforge.strict import ConfigError

KEYS = (("start", "start_offset"), ("end", "end_offset"), ("label", "labels"))  # an entity object's keys


def _span(entity: Any, text_len: int, where: str) -> tuple[int, int, str]:
    """(start, end, label) of one entity (an object, or spaCy's and doccano's [start, end, label]), checked; end
    exclusive."""
    if isinstance(entity, dict):  # doccano writes start_offset / end_offset, Label Studio labels: [one]
        entity = tuple(next((entity[k] for k in keys if k in entity), None) for keys in KEYS)
        if isinstance(entity[2], list) and len(entity[2]) == 1:
            entity = (*entity[:2], entity[2][0])
    if not isinstance(entity, (list, tuple)) or len(entity) != 3 or None in entity:
        raise ConfigError(f"{where}: expected an object with start, end and label (or [start, end, label]), got "
                          f"{str(entity)[:60]}")
    start, end, label = entity
    if as_int(start) is None or as_int(end) is None:
        raise ConfigError(f"{where}: start and end must be integer character offsets, got {start!r}, {end!r}")
    start, end = as_int(start), as_int(end)
    if not 0 <= start < end <= text_len:
        raise ConfigError(f"{where}: span [{start}, {end}) does not fit the text (length {text_len}); offsets "
                          "count characters from 0, end exclusive, start < end")
    if not isinstance(label, str) or not label or label == "O":
        raise ConfigError(f"{where}: label {label!r} is not an entity type name (e.g. PER)")
    if label[:2] in ("B-", "I-"):
        raise ConfigError(f"{where}: label {label!r} is a BIO tag; a character span takes the entity type alone "
                          f"({label[2:]!r}): its words are tagged B-/I- from the span")
    return start, end, label


def span_column(records: Sequence[Record]) -> str | None:
    """The column holding character-offset entities: ``entities``, or doccano's ``label`` / ``labels`` where
    they hold [start, end, label] lists or Label Studio's {start, end, labels} objects (in any row: the first
    ones may have none); None for other layouts (token and tag lists)."""
    if any("entities" in r for r in records):
        return "entities"
    return next((c for c in ("label", "labels") if any(
        isinstance(v := r.get(c), list) and v and all(_is_span(e) for e in v) for r in records)), None)


def _is_span(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 3 or isinstance(value, dict) and "start" in value


def read_spans(records: Sequence[Record], source: str, text_column: str = "text",
               entities_column: str = "entities") -> list[Record]:
    """Sentences from raw text with character-offset entities ``[{"start", "end", "label"}]`` (end exclusive):
    BIO tags over its words (split at whitespace and punctuation: :func:`split_words`), ``B-`` on the first word a
    span overlaps, ``I-`` on the others.
    A span covering part of a word tags the whole word. Each record also keeps ``text`` and every word's
    ``offsets`` (start, end) so predicted tags can be turned back into spans (:func:`tags_to_spans`)."""
    require(records, (text_column,), source, "data.text_column")
    out: list[Record] = []
    widened: list[tuple[str, str]] = []
    kept: list[int] = []  # the file rows of the sentences in out
    empty: list[int] = []  # rows whose text holds no word
    for row_no, row in enumerate(records, start=1):
        where = place(source, row_no - 1)
        text = row.get(text_column)
        if not isinstance(text, str):
            raise ConfigError(f"{where}: '{text_column}' must be a string, got {type(text).__name__}")
        raw = row.get(entities_column)
        entities = [] if raw is None else as_list(raw, entities_column, where)
        spans = sorted(_span(e, len(text), f"{where}, entity {k}") for k, e in enumerate(entities, start=1))
        for a, b in zip(spans, spans[1:]):
            if b[0] < a[1]:
                raise ConfigError(f"{where}: entities [{a[0]}, {a[1]}) {a[2]} and [{b[0]}, {b[1]}) {b[2]} overlap; "
                                  "nested or overlapping entities cannot be BIO-tagged, keep one of them")
        words = split_words(text)
        if words:
            out.append({"tokens": [w for w, _, _ in words], "tags": _span_tags(text, words, spans, where, widened),
                        "offsets": [(s, e) for _, s, e in words], "text": text})
            kept.append(row_numbers.row(source, row_no - 1))
        else:
            empty.append(row_numbers.row(source, row_no - 1))  # its row in the file
    if not out:
        raise ConfigError(f"{source}: every '{text_column}' is empty; nothing to train on")
    if empty:
        print(f"note: {source}: {len(empty)} row(s) with an empty '{text_column}' skipped (row "
              f"{', '.join(map(str, empty[:3]))}{' ...' if len(empty) > 3 else ''})", file=sys.stderr)
    if widened:
        span, word = widened[0]
        print(f"note: {source}: {len(widened)} entity span(s) end inside a word and tag the whole word (e.g. "
              f"{span!r} in {word!r}): words are split at whitespace and punctuation, and predicted entities are "
              "whole words too",
              file=sys.stderr)
    row_numbers.remember([source], kept)  # a sentence's row is the file's row it came from
    return out


def _span_tags(text: str, words: list[tuple[str, int, int]], spans: list[tuple[int, int, str]], where: str,
               widened: list[tuple[str, str]]) -> list[str]:
    """BIO tags of the words of ``text`` from sorted, non-overlapping spans; a span that ends inside a word is
    added to ``widened`` as (its text, the words' text)."""
    tags = ["O"] * len(words)
    owner: list[tuple[int, int, str] | None] = [None] * len(words)
    for span in spans:
        start, end, label = span
        hit = [i for i, (_, ws, we) in enumerate(words) if ws < end and start < we]
        if not hit:
            raise ConfigError(f"{where}: entity [{start}, {end}) {label} covers only whitespace; check its offsets")
        first, last = words[hit[0]][1], words[hit[-1]][2]
        if first < start or end < last:
            widened.append((text[start:end], text[first:last]))
        for i in hit:
            if owner[i] is not None:
                o = owner[i]
                raise ConfigError(f"{where}: entities [{o[0]}, {o[1]}) and [{start}, {end}) fall in the same word "
                                  f"{words[i][0]!r}; words are split at whitespace and at the punctuation around "
                                  "them (not inside them), so one word has one tag")
            owner[i] = span
            tags[i] = ("B-" if i == hit[0] else "I-") + label
    return tags


def tags_to_spans(tags: Sequence[str], offsets: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    """Character-offset entities ``[{"start", "end", "label"}]`` of (predicted) word tags, the inverse of
    :func:`read_spans` for whole words (chunks as in :func:`tuneforge.evaluate.get_entities`)."""
    return [{"start": offsets[s][0], "end": offsets[e][1], "label": t} for t, s, e in get_entities(list(tags))]
