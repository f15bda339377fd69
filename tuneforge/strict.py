"""Strict dataclasses from plain mappings (YAML, dotted overrides): values are checked and coerced against the
type hints, unknown keys are errors that list the valid ones."""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import difflib
import inspect
import io
import math
import os
import re
import textwrap
import tokenize
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A user-facing error in configuration or input data: one line that names the key/file and the fix."""


_SAVED = contextvars.ContextVar("tuneforge_saved_config", default=False)


@contextlib.contextmanager
def saved_config() -> Iterator[None]:
    """Within: a finished run's saved config is being rebuilt (a reloaded run), so :func:`refuse` lets pass the
    options it trained with."""
    token = _SAVED.set(True)
    try:
        yield
    finally:
        _SAVED.reset(token)


def refuse(message: str) -> None:
    """A ConfigError for an option that would do nothing, or not what was meant, in a new run; a saved run trained
    with it before tuneforge refused it still loads as it trained (:func:`saved_config`)."""
    if not _SAVED.get():
        raise ConfigError(message)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong in a YAML text and where: 'line 3, column 2: expected ',' or ']', but got ':' (while parsing
    a flow sequence that starts on line 2)'."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if not problem or mark is None:
        return str(exc).splitlines()[0]
    context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    where = f" that starts on line {start.line + 1}" if start is not None and start.line != mark.line else ""
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" + (f" ({context}{where})" if context else "")


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *defaults': its keys may be set again
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: '{key}' is given twice in one section; "
                                  "keep one (YAML would keep the last silently)")
            seen.add(key)
        return super().construct_mapping(node, deep)


def _check(path: str, value: Any, hint: Any) -> Any:
    """Coerce/check ``value`` against a type hint; raise ConfigError naming ``path`` otherwise."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(path, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if origin is Literal:
        if value not in typing.get_args(hint):
            choices = ", ".join(map(str, typing.get_args(hint)))
            raise ConfigError(f"{path}: {value!r} is not allowed; choose one of {choices}")
        return value
    if origin in (list, tuple):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value] if not isinstance(value, str) else [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return [_check(f"{path}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, path)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]+", value.strip()):  # e.g. items of "0,1"
            return int(value)
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if hint is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None and math.isfinite(number):  # nan/inf would train NaN weights or crash later
            return number
        raise ConfigError(f"{path}: expected a finite number, got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float, os.PathLike)) and not isinstance(value, bool):  # a Path: its text
            return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    return value


def build_dataclass(cls: type, data: dict[str, Any] | None, path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and ill-typed values."""
    data = {} if data is None else data
    if dataclasses.is_dataclass(data):
        data = dataclasses.asdict(data)
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        where = f"{path}." if path else ""
        near = difflib.get_close_matches(str(unknown[0]), sorted(known), n=1)
        guess = f" (did you mean '{where}{near[0]}'?)" if near else ""
        raise ConfigError(
            f"unknown config key '{where}{unknown[0]}'{guess}; "
            f"valid keys under '{path or 'top level'}': {', '.join(sorted(known)) or 'none (it takes no settings)'}"
        )
    kwargs = {k: _check(f"{path}.{k}" if path else k, v, hints[k]) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path or 'config'}: {exc}") from None


def field_hint(cls: type, parts: list[str]) -> Any:
    """The declared type of the dotted key ``parts`` in dataclass ``cls``; None where none is declared (inside a
    ``dict[str, Any]`` such as the method's options, or an unknown key)."""
    hint: Any = cls
    for part in parts:
        hint = typing.get_type_hints(hint).get(part) if dataclasses.is_dataclass(hint) else None
    return hint


def is_text(hint: Any) -> bool:
    """Whether ``hint`` is ``str`` or ``str | None``."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return hint is str or (union and set(typing.get_args(hint)) == {str, type(None)})


def positive(path: str, value: float | int | None) -> None:
    """Raise ConfigError unless ``value`` is None or > 0 and finite."""
    if value is not None and not value > 0:
        raise ConfigError(f"{path} must be positive, got {value}")
    if value is not None and not math.isfinite(value):
        raise ConfigError(f"{path} must be a finite number, got {value}")


def non_negative(path: str, value: float | int | None) -> None:
    """Raise ConfigError unless ``value`` is None or >= 0 and finite (nan/inf would train NaN weights)."""
    if value is not None and not 0 <= value < math.inf:
        raise ConfigError(f"{path} must be >= 0 and finite, got {value}")


def probability(path: str, value: float) -> None:
    """Raise ConfigError unless ``value`` is in [0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{path} must be a probability in [0, 1], got {value}")


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> the comment on its line (plus comment-only lines right below it) in ``cls``'s source
    (none where the source is not installed)."""
    try:
        lines = textwrap.dedent("".join(inspect.getsourcelines(cls)[0])).splitlines(keepends=True)
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO("".join(lines)).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.add(tok.start[0])
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    for i, line in enumerate(lines, start=1):
        name = line.strip().split(":", 1)[0]
        if line.startswith("    ") and not line.startswith("     ") and name in names and i in code_lines:
            parts = [comments[i]] if i in comments else []
            j = i + 1
            while j in comments and j not in code_lines:  # continuation lines: comment only
                parts.append(comments[j])
                j += 1
            out[name] = " ".join(p for p in parts if p)
    return out


def name_key(name: Any) -> str:
    """A name as chosen among fixed names: ``LoRA``, `` lora`` and ``lora`` are the same choice."""
    return str(name).strip().lower()
