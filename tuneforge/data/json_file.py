"""JSON and JSON Lines data files as rows (dicts). An object that names a key twice is refused: ``json`` would
keep the last value and drop the first without a word."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneforge.config import ConfigError


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


def json_list(path: Path) -> bool:
    """Whether the file starts with a JSON array (whatever its suffix)."""
    with path.open(encoding="utf-8-sig") as f:
        return f.read(4096).lstrip().startswith("[")


def json_records(path: Path) -> list[Any]:
    """A JSON list of objects (or an object holding one list, e.g. {"data": [...]}); JSON Lines saved as .json,
    as ``datasets``' ``to_json("x.json")`` writes them, is read as JSON Lines."""
    text = path.read_text(encoding="utf-8-sig")
    try:
        data = json.loads(text, object_pairs_hook=_object)
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data":  # a first value that ends before the file does: one object per line
            raise
        return jsonl_records(path, text)
    except DuplicateKey as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a JSON list of objects (or use .jsonl, one object per line)")
    for i, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise ConfigError(f"{path}, item {i}: expected a JSON object, got {type(row).__name__}")
    return data


def jsonl_records(path: Path, text: str) -> list[dict[str, Any]]:
    """One JSON object per line; blank lines are skipped."""
    records = []
    for i, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028, U+0085 and the like are
        if not line.strip():  # valid inside a JSON string
            continue
        try:
            row = json.loads(line, object_pairs_hook=_object)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}, line {i}: not valid JSON ({exc.msg}); "
                              "each line must be one JSON object") from None
        except DuplicateKey as exc:
            raise ConfigError(f"{path}, line {i}: {exc}") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{path}, line {i}: expected a JSON object, got {type(row).__name__}")
        records.append(row)
    return records
