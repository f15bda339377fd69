"""A second embedded classification task: topic of a ChatterBot corpus question (its category file).

Used for the sequential forgetting set-up (train on sentiment, then on topics, measure sentiment again).
Each of the 21 YAML files under ``tuneforge.assets.chatterbot_dir()`` is a category; each entry of its
``conversations:`` list starts with a question. The corpus repeats itself heavily (``tech_support.yml``
holds 10 distinct questions in 1,050 entries; many questions have several answers), so questions are
deduplicated; without that the test split would leak into training.
"""
from __future__ import annotations

import re
from collections import defaultdict
from functools import lru_cache
from typing import Any

import yaml

from tuneforge import assets
from tuneforge.config import ConfigError

MIN_QUESTIONS = 10  # categories with fewer distinct questions are dropped (5 of 21 with the pinned corpus)


def _key(question: str) -> str:
    """Deduplication key: case-folded, single-spaced, without trailing punctuation."""
    return re.sub(r"\s+", " ", question).strip().rstrip("?.! ").casefold()


@lru_cache(maxsize=4)
def _topics(min_questions: int) -> tuple[tuple[str, str], ...]:
    folder = assets.chatterbot_dir()
    by_key: dict[str, dict[str, str]] = defaultdict(dict)  # question key -> {category: first spelling}
    for path in sorted(folder.glob("*.yml")):
        try:  # BaseLoader: every scalar stays a string ("Yes" does not become True)
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.BaseLoader) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        for conv in data.get("conversations") or []:
            if not conv or not isinstance(conv, list) or not isinstance(conv[0], str):
                continue
            question = re.sub(r"\s+", " ", conv[0]).strip()
            if question:
                by_key[_key(question)].setdefault(path.stem, question)
    per_category: dict[str, list[str]] = defaultdict(list)
    for spellings in by_key.values():
        if len(spellings) == 1:  # a question filed under two categories has no single label: dropped
            (category, question), = spellings.items()
            per_category[category].append(question)
    return tuple((q, c) for c in sorted(per_category) if len(per_category[c]) >= min_questions
                 for q in per_category[c])


def chatterbot_topics(min_questions: int = MIN_QUESTIONS) -> list[dict[str, Any]]:
    """Distinct ChatterBot questions labelled by category (file name): records ``{"text", "label"}``.

    Questions are deduplicated ignoring case, spacing and trailing punctuation; a question found in two
    categories (e.g. "Hello") is dropped; categories with fewer than ``min_questions`` distinct questions are
    dropped. With the pinned corpus and the default 10: 718 questions in 16 categories, unbalanced
    (trivia about a third), so report macro-F1 beside accuracy.
    """
    rows = _topics(int(min_questions))
    if not rows:
        raise ConfigError(f"chatterbot topics: no category has {min_questions} distinct questions; lower min_questions")
    return [{"text": q, "label": c} for q, c in rows]
