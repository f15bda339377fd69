"""Checks of what a caller hands the Python API and the CLI (texts to predict for, paths), with one-line errors:
what a tokenizer or pathlib would otherwise refuse with a traceback, or misread (one string as its characters)."""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tuneforge.data.json_file import broken_text
from tuneforge.strict import ConfigError

EMPTY = "is empty"


def text_problem(text: str) -> str | None:
    """What is wrong with one input text, else None: it is blank, or it is not UTF-8 (bytes of another encoding
    arrive as lone surrogates, which no tokenizer takes)."""
    if not text.strip():
        return EMPTY
    if broken_text(text) is not None:
        return "is not UTF-8 text (bytes of another encoding?); give it as UTF-8"
    return None


def text_list(values: Any, name: str) -> list[str]:
    """``values`` (any iterable of texts) as a list; one string (which would be read a character at a time), an
    item that is not a text, a blank text or one that is not UTF-8 is refused."""
    if isinstance(values, (str, bytes)):
        raise ConfigError(f"{name} must be a list of texts, not one string: {name}=[...]")
    if not isinstance(values, Iterable):
        raise ConfigError(f"{name} must be a list of texts, got {type(values).__name__}")
    values = list(values)
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise ConfigError(f"{name}[{i}] is {type(value).__name__}, not a text")
        if problem := text_problem(value):
            raise ConfigError(f"{name}[{i}] {problem}")
    return values


def prompt_list(values: Any) -> list[Any]:
    """Prompts for generation as a list: each a text (checked as :func:`text_list` checks it) or a list of
    ``{role, content}`` messages whose contents are texts, not all blank, and UTF-8."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ConfigError("generate takes a list of prompts, not one string: run.generate([prompt])"
                          if isinstance(values, (str, bytes)) else
                          f"prompts must be a list of texts or message lists, got {type(values).__name__}")
    values = list(values)
    for i, value in enumerate(values):
        messages = value if isinstance(value, list) else None
        contents = [m.get("content") if isinstance(m, dict) else m for m in messages] if messages is not None \
            else [value]
        if not contents or not all(isinstance(c, str) for c in contents):
            raise ConfigError(f"prompts[{i}] must be a text or a list of {{role, content}} messages with text "
                              "contents")
        problem = EMPTY if not any(c.strip() for c in contents) else next(
            (p for p in map(text_problem, contents) if p not in (None, EMPTY)), None)
        if problem:
            raise ConfigError(f"prompts[{i}] {problem}")
    return values


def path_arg(value: Any, name: str) -> Path:
    """``value`` (a path as text or a path object) as a Path; anything else, or an empty text, is refused."""
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ConfigError(f"{name} must be a folder or file path, got {value!r}"[:200])
    return Path(value)
