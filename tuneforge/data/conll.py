"""Token-classification data: token/tag lists (CoNLL files and the embedded WNUT-16 set:
:mod:`tuneforge.data.conll_file`) -> one record per sentence ``{"tokens": [str, ...], "tags": [str, ...]}``; tag
schemes and IOB2 normalisation: :mod:`tuneforge.data.tag_scheme`. Errors are one line naming the file and
line/row and the fix."""
from __future__ import annotations

import ast
import json
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from tuneforge.data import row_numbers
from tuneforge.data.readers import as_int, column_names, common_column, place
from tuneforge.data.tag_scheme import PREFIXES, normal_tag, note_scheme
from tuneforge.strict import ConfigError

Record = dict[str, Any]


# --- token and tag lists (JSONL / Parquet) --------------------------------------------------------------------

TOKEN_COLUMNS = ("tokens", "words", "sentence", "text")  # the names data sets use for the words ...
TAG_COLUMNS = ("tags", "ner_tags", "labels", "tag", "ner", "label")  # ... and for their tags
TAG_LIKE = re.compile(r"O|[BIESLUMW][-_]\S+", re.IGNORECASE)  # a value that reads as a tag (O, B-PER, s_loc)


def list_columns(row: Record, tokens: str, tags: str, label: str) -> tuple[str, str]:
    """The tokens and tags columns of rows like ``row``: the configured names (``data.tokens_column`` /
    ``data.tags_column``; ``data.label_column`` (``--label-column``) names the tags when ``tags_column`` is
    left at its default); a name left at its default and absent from the data falls back to the one common
    spelling present (``words``; ``ner_tags``, ``labels`` ...), as Hugging Face exports write them."""
    if tags == TAG_COLUMNS[0] and label != "label":
        return common_column(row, tokens, TOKEN_COLUMNS), label
    return common_column(row, tokens, TOKEN_COLUMNS), common_column(row, tags, TAG_COLUMNS)


def as_list(value: Any, what: str, where: str) -> list:
    """A list from a list, tuple or numpy array (Parquet); ConfigError otherwise."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: '{what}' must be a list, got {type(value).__name__} {str(value)[:40]!r}")
    return list(value)


_LITERAL = re.compile(r"\[\s*(['\"\d-]|\]$)")  # "['EU', 'rejects']", "[3, 0]", "[]" written out; not "[ Music ]"


def _words(value: Any, what: str, where: str) -> list:
    """A list of words or tags: a list (or array), a JSON or Python list literal (a pandas CSV export's cell), or
    one string of them separated by whitespace."""
    if not isinstance(value, str):
        return as_list(value, what, where)
    text = value.strip()
    if not (_LITERAL.match(text) and text.endswith("]")):
        return value.split()
    try:
        return json.loads(text)
    except ValueError:
        pass
    numpy = "," not in text and re.search(r"['\"]\s+['\"]|^\[\s*-?\d+(\s+-?\d+)+\s*\]$", text)  # "['a' 'b']"
    try:
        if not numpy:
            return as_list(ast.literal_eval(text), what, where)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        if not re.match(r"\[\s*['\"]", text):
            return value.split()  # words that happen to start with '[' ("[1] see ref [2]")
    raise ConfigError(f"{where}: '{what}' {text[:40]!r} is not a list JSON or Python can read; write it as a JSON "
                      "list (e.g. [\"EU\", \"rejects\"]) or as words separated by spaces")


def require(records: Sequence[Record], columns: Iterable[str], source: str,
            settings: str = "data.tokens_column / data.tags_column") -> None:
    """Raise ConfigError naming the first missing column, the columns that exist and the ``settings`` choosing."""
    if not records:
        raise ConfigError(f"{source} is empty; it needs at least one example")
    for col in columns:
        if col not in records[0]:
            conll = any(TAG_LIKE.fullmatch(str(c)) for c in records[0])  # a tag as a header
            raise ConfigError(f"{source}: column '{col}' not found; columns are {column_names(records[0])} "
                              + ("(a token and its tag per line: a CoNLL file, to be named .conll)" if conll else
                                 f"(choose with {settings})"))


def read_token_lists(records: Sequence[Record], tokens_column: str = "tokens", tags_column: str = "tags",
                     source: str = "data", tag_names: Sequence[str] | None = None) -> list[Record]:
    """Sentences from rows holding a list of tokens and an equally long list of tags (lists, numpy arrays or
    whitespace-separated strings); integer tags are looked up in ``tag_names``; rows without tokens skipped."""
    require(records, (tokens_column, tags_column), source)
    out: list[Record] = []
    kept: list[int] = []  # the file rows of the sentences in out
    empty: list[int] = []  # rows without tokens (and tags), skipped
    for row_no, row in enumerate(records, start=1):
        where = place(source, row_no - 1)
        for column in (tokens_column, tags_column):
            if column not in row:  # another layout in a later row: one layout per file, the first row's
                raise ConfigError(f"{where}: column '{column}' is missing (columns: {column_names(row)}; the first "
                                  f"row's columns name every row's: '{tokens_column}' + '{tags_column}')")
        tokens = _words(row.get(tokens_column), tokens_column, where)
        tags = _words(row.get(tags_column), tags_column, where)
        if len(tokens) != len(tags) and isinstance(row.get(tokens_column), str):  # "[ 5 ]": words, not a list
            tokens = tokens if len(row[tokens_column].split()) != len(tags) else row[tokens_column].split()
        if len(tokens) != len(tags):
            raise ConfigError(f"{where}: {len(tokens)} tokens but {len(tags)} tags; "
                              f"'{tokens_column}' and '{tags_column}' need one tag per token")
        if tokens:
            out.append({"tokens": [_token(t, where) for t in tokens],
                        "tags": [_tag(t, where, tag_names) for t in tags]})
            _no_blank_entities(out[-1]["tokens"], out[-1]["tags"], where)
            kept.append(row_numbers.row(source, row_no - 1))
        else:
            empty.append(row_numbers.row(source, row_no - 1))  # its row in the file
    if empty and out:
        print(f"note: {source}: {len(empty)} row(s) with no tokens skipped (row {', '.join(map(str, empty[:3]))}"
              f"{' ...' if len(empty) > 3 else ''})", file=sys.stderr)
    if not out:
        raise ConfigError(f"{source}: every row has an empty '{tokens_column}' list; nothing to train on")
    if len(out) > 5 and all(len(r["tokens"]) == 1 for r in out) and any(
            normal_tag(r["tags"][0]).startswith("I-") for r in out):  # an entity continued from the row before
        raise ConfigError(f"{source}: every row holds one word, so each word would train as a sentence of its own; "
                          "for a file with one word per row, write it as a CoNLL file (.conll: one 'token<TAB>tag' "
                          "line per word, a blank line between sentences)")
    row_numbers.remember([source], kept)  # a sentence's row is the file's row it came from
    return note_scheme(out, source)


def _token(value: Any, where: str) -> str:
    if value is None or isinstance(value, (list, dict)):
        raise ConfigError(f"{where}: token {value!r} is not a string; give one string per token")
    return str(value)


def _no_blank_entities(tokens: list[str], tags: list[str], where: str) -> None:
    """ConfigError for an empty (or whitespace) token tagged as part of an entity: no one could find that entity.
    Tagged O it reads as it is (a full-width space in character-level data)."""
    for i, (token, tag) in enumerate(zip(tokens, tags), start=1):
        if not token.strip() and normal_tag(tag) != "O":
            raise ConfigError(f"{where}: token {i} ({token!r}) is empty but tagged {tag}: an entity with no text can "
                              "never be found; remove the empty token and its tag, or tag it O")


def _tag(value: Any, where: str, names: Sequence[str] | None) -> str:
    """A tag name; an integer or a string of digits ("3", as CSV exports write Hugging Face's ids) is an id,
    named by ``names``. Surrounding whitespace is no part of a tag (``"O "`` is ``O``)."""
    if isinstance(value, str):
        value = value.strip()
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value):
        value = int(value)
    if isinstance(value, str) and len(value) == 2 and value[1] in "-_" and value[0].upper() in PREFIXES:
        raise ConfigError(f"{where}: tag {value!r} has no entity type; write the type after it (e.g. B-PER)")
    if isinstance(value, str) and value:
        return value
    if as_int(value) is not None:
        value = as_int(value)
        if names is not None and 0 <= value < len(names):
            return str(names[value])
        raise ConfigError(f"{where}: tag {value} is a number; give tag names (e.g. B-PER"
                          f"{', and O (a letter) outside entities' if value == 0 else ''}), or the names of the "
                          "ids in data.tag_names (e.g. data.tag_names=[O,B-PER,I-PER])"
                          f"{f', which has only {len(names)}' if names is not None else ''}")
    raise ConfigError(f"{where}: tag {value!r} is not a tag name; give one tag such as O or B-PER per token")
