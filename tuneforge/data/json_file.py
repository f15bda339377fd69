"""JSON and JSON Lines data files as rows (dicts). An object that names a key twice is refused: ``json`` would
keep the last value and drop the first without a word. So is a string holding half of a UTF-16 surrogate pair
(an escape such as ``"\\ud83d"`` alone, as scraped data cut inside an emoji has): it is not text, and no tokenizer
takes it. Numbers with a fraction or an exponent keep their written form (:class:`WrittenFloat`)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tuneforge.config import ConfigError
from tuneforge.data import row_numbers


class WrittenFloat(float):
    """A JSON number with a fraction or an exponent that prints as written ("4.50", "1e3"), so an answer or a text
    given as a number trains as the file shows it; it computes as the float it is."""

    def __new__(cls, text: str) -> "WrittenFloat":
        number = super().__new__(cls, text)
        number.text = text
        return number

    def __str__(self) -> str:
        return self.text


class DuplicateKey(ConfigError):
    """A JSON object names ``key`` twice."""

    def __init__(self, key: str) -> None:
        super().__init__(f"an object names the key '{key}' twice (only the last value would be read); keep one")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json``'s ``object_pairs_hook``: the object as a dict, or :class:`DuplicateKey`."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return out


CHAT_COLUMNS = ("messages", "conversations")  # one row's conversation: OpenAI / ShareGPT (LLaMA-Factory, Axolotl)
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # how JSON writes a UTF-16 surrogate


def broken_text(value: Any) -> str | None:
    """The first string in ``value`` (nested lists and dicts included) that is not valid Unicode text (a lone
    surrogate: from a JSON escape, or from bytes that are not UTF-8 in a command-line argument); else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value
        return None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return next((bad for bad in map(broken_text, items) if bad is not None), None)


def _text_problem(value: Any) -> str | None:
    """The error for a value holding a string that is not text, else None."""
    bad = broken_text(value)
    return None if bad is None else (f"the text {bad[:40]!r} holds half of a UTF-16 surrogate pair (an emoji or other "
                                     "character cut in two), which is not text; fix or remove that escape")


def json_list(path: Path) -> bool:
    """Whether the file starts with a JSON array (whatever its suffix)."""
    with path.open(encoding="utf-8-sig") as f:
        return f.read(4096).lstrip().startswith("[")


def json_records(path: Path) -> list[Any]:
    """A JSON list of objects, an object holding one list (e.g. {"data": [...]}) or one object (one row, e.g. one
    conversation); JSON Lines saved as .json, as ``datasets``' ``to_json("x.json")`` writes them, is read as JSON
    Lines."""
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        return []  # the caller says the file is empty, as for a .jsonl or .csv file
    try:
        data = json.loads(text, object_pairs_hook=_object, parse_float=WrittenFloat)
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data":  # a first value that ends before the file does: one object per line
            raise
        return jsonl_records(path, text)
    except DuplicateKey as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if isinstance(data, dict) and data and all(isinstance(v, dict) and v and all(k.isascii() and k.isdigit() for k in v)
                                               for v in data.values()):  # {column: {"0": value, "1": value ...}}
        raise ConfigError(f"{path} holds columns of values by index, as pandas' DataFrame.to_json() writes by "
                          "default; write one object per example: to_json(path, orient='records', lines=True)")
    if isinstance(data, dict):  # {"data": [...]} holds the rows; any other object (a conversation) is one row
        key, value = next(iter(data.items())) if len(data) == 1 else (None, None)
        data = value if isinstance(value, list) and key not in CHAT_COLUMNS else [data]
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a JSON list of objects (or use .jsonl, one object per line)")
    escapes = SURROGATE_ESCAPE.search(text) is not None  # none: every string is text; some: may be valid pairs
    for i, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise ConfigError(f"{path}, item {i}: expected a JSON object, got {type(row).__name__}")
        if escapes and (problem := _text_problem(row)):
            raise ConfigError(f"{path}, item {i}: {problem}")
    return data


def jsonl_records(path: Path, text: str) -> list[dict[str, Any]]:
    """One JSON object per line; blank lines are skipped."""
    records, lines = [], []
    for i, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028, U+0085 and the like are
        if not line.strip():  # valid inside a JSON string
            continue
        lines.append(i)
        try:
            row = json.loads(line, object_pairs_hook=_object, parse_float=WrittenFloat)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}, line {i}: not valid JSON ({exc.msg}); "
                              "each line must be one JSON object") from None
        except DuplicateKey as exc:
            raise ConfigError(f"{path}, line {i}: {exc}") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{path}, line {i}: expected a JSON object, got {type(row).__name__}")
        if SURROGATE_ESCAPE.search(line) and (problem := _text_problem(row)):
            raise ConfigError(f"{path}, line {i}: {problem}")
        records.append(row)
    row_numbers.remember([str(path)], lines)  # a record's row is its line
    return records
