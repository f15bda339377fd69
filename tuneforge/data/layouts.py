"""Causal-LM data layouts: one record -> a checked conversation (or a plain text).

Three layouts (``data.format``; ``auto`` detects from the columns; docs/data-formats.md shows each):

* ``chat``: a ``messages`` or ``conversations`` column (or ``data.text_column``) holding a multi-turn list of
  OpenAI ``{role, content}`` or ShareGPT ``{from, value}`` messages; role spellings are normalised (``SPEAKERS``);
* ``pairs``: prompt -> answer from ``data.text_column``/``data.label_column``, or common column pairs
  (``PAIR_COLUMNS``: ``instruction`` (+ optional ``input``/``context``) / ``output``, ``prompt`` / ``completion``,
  ``question`` / ``answer`` ...); a pair becomes a two-message conversation;
* ``text``: plain text in ``data.text_column`` for continued pre-training (every token trains).
"""
from __future__ import annotations

import json
import sys
from typing import Any

from tuneforge.config import ConfigError, DataConfig
from tuneforge.data.json_file import CHAT_COLUMNS
from tuneforge.data.readers import source_and_row, structure

SPEAKERS = {"system": "system", "developer": "system", "user": "user", "human": "user", "assistant": "assistant",
            "gpt": "assistant", "bot": "assistant", "model": "assistant", "chatgpt": "assistant"}  # spelling -> role
TOOL_ROLES = {"tool", "function", "function_call", "observation", "tool_call", "tool_calls", "ipython"}
# (prompt, answer) column names data sets use, tried in order after data.text_column + data.label_column:
# Alpaca, Dolly, TRL / OpenAI prompt-completion, and other common spellings
PAIR_COLUMNS = (("instruction", "output"), ("instruction", "response"), ("prompt", "completion"),
                ("prompt", "response"), ("question", "answer"), ("query", "response"), ("input", "output"),
                ("text", "output"), ("text", "summary"), ("document", "summary"), ("dialogue", "summary"),
                ("article", "highlights"), ("source", "target"))  # the last ones: summarisation, translation
CONTEXT_COLUMNS = ("input", "context")  # beside an instruction (Alpaca's input, Dolly's context) or a question
WITH_CONTEXT = ("instruction", "question")  # the prompt columns a context column joins (other pairs leave it unread)


def detect_format(keys: set[str], d: DataConfig, source: str) -> str:
    """``data.format``, or for ``auto`` the layout the columns imply (chat > pairs > text)."""
    if d.format != "auto":
        return d.format
    if keys & set(CHAT_COLUMNS) and not (_named(d) and {d.text_column, d.label_column} <= keys):
        return "chat"  # unless the user named prompt and answer columns the row has
    if {d.text_column, d.label_column} <= keys or _known_pair(keys):
        return "pairs"
    if d.text_column in keys:
        return "text"
    prompt = next((q for q, _ in PAIR_COLUMNS if q in keys), None)
    if prompt:  # e.g. an Alpaca row without its output
        answers = " or ".join(f"'{a}'" for q, a in PAIR_COLUMNS if q == prompt)
        raise ConfigError(f"{source}: '{prompt}' without an answer ({answers} is missing)")
    raise ConfigError(
        f"{source}: cannot tell the data layout from columns {', '.join(sorted(keys))}; give a 'messages' or "
        "'conversations' column (chat), prompt/answer columns (instruction/output, prompt/completion, "
        "question/answer ... or data.text_column + data.label_column: pairs), "
        "or data.text_column (plain text), or set data.format")


def one_layout(parts: list[tuple[list[dict[str, Any]], list[str]]], d: DataConfig) -> str:
    """The one layout of the rows of ``parts`` (records, where each is); rows of several: one error naming where
    each layout first appears, in file order."""
    first: dict[str, str] = {}  # layout -> where its first row in the file is ("data.jsonl, row 7")
    for records, where in parts:
        for r, w in zip(records, where):
            fmt = detect_format(set(r), d, w)
            first[fmt] = min(first.get(fmt, w), w, key=source_and_row)  # file order, not the shuffled splits
    if len(first) > 1:
        found = ", ".join(f"{f} (first at {w})" for f, w in sorted(first.items()))
        hint = (f" (the text rows hold '{d.text_column}' without '{d.label_column}': pairs missing their answer?)"
                if set(first) == {"pairs", "text"} else "")
        raise ConfigError(f"the rows mix layouts: {found}{hint}; give one data set one layout (convert those rows)")
    return next(iter(first))


def note_unread(records: list[dict[str, Any]], d: DataConfig, source: str) -> None:
    """A note naming the columns of a file's records that its layout (the first record's) does not read and that
    hold text or lists in some row: columns a user may have expected to train on (a passage, a history). Pairs and
    conversation columns are chosen row by row, so each row's own columns count as read."""
    try:
        fmt = detect_format(set(records[0]), d, "")
        pairs = {_pair_columns(r, d): None for r in records} if fmt == "pairs" else {}
    except ConfigError:  # no layout: each row's error says why
        return
    if fmt == "chat":  # each row's own conversation column ('messages' in one, 'conversations' in another)
        read = list({_chat_column(r, d): None for r in records})
    elif fmt == "pairs":
        read = [c for pair in pairs for c in pair] + (list(CONTEXT_COLUMNS) if {p for p, _ in pairs} &
                                                      set(WITH_CONTEXT) else [])
    else:
        read = [d.text_column]
    other: dict[str, None] = {}  # in order of first appearance
    for record in records:
        other.update((str(k), None) for k, v in record.items() if k not in read + ["system"] and str(k) not in other
                     and (isinstance(v, str) and " " in v.strip() or _is_list(v)))
    reads = (", ".join(f"prompt '{p}' -> answer '{a}'" for p, a in pairs) if fmt == "pairs" else
             f"conversations from {' and '.join(map(repr, read))}" if fmt == "chat" else f"plain text from '{read[0]}'")
    if other:
        print(f"note: {source}: the run reads {reads}; column(s) {', '.join(map(repr, other))} are not read "
              "(docs/data-formats.md lists the layouts)", file=sys.stderr)


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):  # None / NaN from CSV or Parquet
        return ""
    if structure(value):  # never trained on as its repr
        raise ConfigError(f"{structure(value)} ({str(value)[:40]!r}) where text belongs; give the text itself")
    return trimmed(json.dumps(value) if isinstance(value, bool) else str(value))  # JSON's true, not Python's True


def _column_text(record: dict[str, Any], column: str) -> str:
    """``_text`` of a column, its errors naming the column."""
    try:
        return _text(record.get(column))
    except ConfigError as exc:
        raise ConfigError(f"column '{column}': {exc}") from None


def trimmed(text: str) -> str:
    """``text`` without trailing whitespace and leading blank lines: a first line's indentation (code) stays."""
    return text.rstrip().lstrip("\r\n")


def _content(value: Any, j: int) -> str:
    """A message's text: a string, or OpenAI's list of content parts, whose text parts are joined by newlines
    (an image or audio part is refused: a text model cannot train on it)."""
    if isinstance(value, dict):
        raise ConfigError(f"message {j} has an object as its content; give text (or a list of text parts)")
    if isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) > 0:  # numpy arrays from Parquet
        texts = []
        for part in value:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ConfigError(f"message {j} has a content part of type '{kind}'; only text parts "
                                  "({'type': 'text', 'text': ...}) can be trained on")
            texts.append(part["text"])
        return trimmed("\n".join(texts))
    return _text(value)


def _known_pair(keys: set[str]) -> tuple[str, str] | None:
    return next((pair for pair in PAIR_COLUMNS if set(pair) <= keys), None)


def _pair_columns(record: dict[str, Any], d: DataConfig) -> tuple[str, str]:
    if d.text_column in record and d.label_column in record:
        return d.text_column, d.label_column
    pair = _known_pair(set(record))
    if pair is None:
        raise ConfigError(f"pairs need columns data.text_column='{d.text_column}' and data.label_column="
                          f"'{d.label_column}' (or instruction/output, prompt/completion, question/answer ...); "
                          f"the record has {', '.join(map(str, record))}")
    return pair


def _filled(value: Any) -> bool:
    """A field that holds something: not None, not empty (Parquet gives empty arrays for absent lists)."""
    return value is not None and (len(value) > 0 if hasattr(value, "__len__") else bool(value))


def _is_list(value: Any) -> bool:
    return not isinstance(value, (str, bytes, dict)) and hasattr(value, "__iter__")


def _pair(record: dict[str, Any], d: DataConfig) -> list[dict[str, str]]:
    """A prompt -> answer row as a conversation. TRL's conversational prompt-completion rows hold lists of
    messages instead of strings; they are joined and checked like a chat."""
    q_col, a_col = _pair_columns(record, d)
    q, a = record[q_col], record[a_col]
    if _is_list(q) or _is_list(a):
        turns = ((list(q) if _is_list(q) else [{"role": "user", "content": q}])
                 + (list(a) if _is_list(a) else [{"role": "assistant", "content": a}]))
        return _check_messages({"messages": turns}, d)
    prompt, answer = _column_text(record, q_col), _column_text(record, a_col)
    context = next((t for c in CONTEXT_COLUMNS if c != a_col and (t := _column_text(record, c))), "") if (
        q_col in WITH_CONTEXT) else ""
    if q_col == "instruction" and context:
        prompt = f"{prompt}\n\n{context}".strip()
    elif q_col == "question" and context:  # reading comprehension (SQuAD-like): the passage, then the question
        prompt = f"{context}\n\n{prompt}".strip()
    if not prompt:
        raise ConfigError(f"empty prompt in column '{q_col}'; fill it in or remove the row")
    if not answer:
        raise ConfigError(f"empty answer in column '{a_col}'; fill it in or remove the row")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def to_messages(record: dict[str, Any], fmt: str, d: DataConfig, where: str) -> list[dict[str, str]] | str:
    """One record as a checked conversation (``chat``/``pairs``) or a string (``text``). ``where`` names the
    file and row in errors."""
    try:
        if fmt == "text":
            text = _column_text(record, d.text_column)
            if not text:
                raise ConfigError(f"no text in column '{d.text_column}'; "
                                  "fill it in, remove the row or set data.text_column")
            return text
        messages = _pair(record, d) if fmt == "pairs" else _check_messages(record, d)
        # the system prompt: the conversation's own, else the row's 'system' column (LLaMA-Factory), else the config's
        system = ""
        if "system" not in (d.text_column, d.label_column):
            system = _column_text(record, "system")
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if (system or d.system_prompt) and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system or d.system_prompt}] + messages
    return messages


def _field(m: dict[str, Any], keys: tuple[str, str]) -> Any:
    """The first of ``keys`` that ``m`` holds (Parquet structs of mixed layouts hold both, one as None)."""
    return next((m[k] for k in keys if m.get(k) is not None), None)


def _named(d: DataConfig) -> bool:
    """Whether the user named the text or label column (data.text_column / data.label_column not the default)."""
    return d.text_column != DataConfig.text_column or d.label_column != DataConfig.label_column


def _chat_column(record: dict[str, Any], d: DataConfig) -> str:
    """The column holding a row's conversation: data.text_column where the user named one the row has, else
    'messages' or 'conversations', else data.text_column."""
    if d.text_column != DataConfig.text_column and d.text_column in record:
        return d.text_column
    return next((c for c in CHAT_COLUMNS if c in record), d.text_column)


def _check_messages(record: dict[str, Any], d: DataConfig) -> list[dict[str, str]]:
    col = _chat_column(record, d)
    if col not in record:
        raise ConfigError(f"no 'messages' or 'conversations' column (columns: {', '.join(map(str, record))}); a chat "
                          "row holds its conversation there (or in data.text_column)")
    value = record.get(col)
    if isinstance(value, str):  # CSV cells may hold the conversation as JSON
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ConfigError(f"column '{col}' is not a JSON list of {{role, content}} messages") from None
    if value is None or isinstance(value, (str, dict)) or not hasattr(value, "__iter__"):
        raise ConfigError(f"column '{col}' must hold a list of {{role, content}} messages (data.format=chat)")
    messages = []
    for j, m in enumerate(list(value), start=1):
        if not isinstance(m, dict) or not ({"role", "from"} & set(m) and {"content", "value"} & set(m)):
            raise ConfigError(f"message {j} must be an object with 'role' and 'content' (or 'from' and 'value')")
        spelling = _text(_field(m, ("role", "from"))).strip()
        if spelling.lower() in TOOL_ROLES or _filled(m.get("tool_calls")) or _filled(m.get("function_call")):
            what = f"has tool role '{spelling}'" if spelling.lower() in TOOL_ROLES else "makes a tool call"
            raise ConfigError(f"message {j} {what}; tool calls and results cannot be trained on: drop those "
                              "messages or the row")
        role, content = SPEAKERS.get(spelling.lower()), _content(_field(m, ("content", "value")), j)
        if role is None:
            raise ConfigError(f"message {j} has unknown role '{spelling}'; use system, user or assistant "
                              "(also human for user; gpt, bot, model or chatgpt for assistant)")
        if role == "system" and not content:  # ShareGPT dumps often carry an empty system turn: no prompt
            continue
        if not content:
            raise ConfigError(f"message {j} ({role}) is empty; fill it in or drop the message")
        if role == "system" and messages:  # an empty system message before it counted as none
            raise ConfigError(f"message {j}: a system message may only come first")
        weight = 1 if m.get("weight") is None else m["weight"]  # OpenAI's, Axolotl's: 0 keeps a reply untrained
        if weight not in (0, 1) or isinstance(weight, bool):
            raise ConfigError(f"message {j} has weight {weight!r}; a message's weight is 0 (not trained on) or 1")
        messages.append({"role": role, "content": content, **({"weight": 0} if weight == 0 else {})})
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise ConfigError("the conversation has no assistant message to learn from; add one or remove the row")
    if all(m.get("weight") == 0 for m in messages if m["role"] == "assistant"):
        raise ConfigError("every assistant message has weight 0: nothing to learn from; remove the row")
    if "user" not in roles[:roles.index("assistant")]:
        raise ConfigError("the assistant speaks before any user message; start with a user message")
    return messages
