"""Token-classification data: token/tag lists (CoNLL files: :mod:`tuneforge.data.conll_file`) -> one record per sentence
``{"tokens": [str, ...], "tags": [str, ...]}``; tag-scheme detection and BIO (IOB2) normalisation; the embedded
WNUT-16 set. Errors are one line naming the file and line/row and the fix."""
from __future__ import annotations

import ast
import functools
import json
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from tuneforge.data.readers import as_int, column_names, common_column, place
from tuneforge.evaluate import invalid_transitions
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
        else:
            empty.append(row_no)
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
    return _note_scheme(out, source)


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


# --- tag schemes ----------------------------------------------------------------------------------------------

def _sentences(tags: Sequence[str] | Sequence[Sequence[str]]) -> list[Sequence[str]]:
    return [tags] if not tags or isinstance(tags[0], str) else list(tags)


# IOBES/BIOES (S-ingle, E-nd), BILOU (U-nit, L-ast) and BMES/BMEWO (M-iddle, W-hole) prefixes as IOB2's: a chunk's
# first word is B-, the rest I-
PREFIXES = {"B": "B", "I": "I", "S": "B", "U": "B", "E": "I", "L": "I", "M": "I", "W": "B"}
UNTYPED = "SPAN"  # the entity type of tags that are bare prefixes (B, I, O)


@functools.lru_cache(maxsize=4096)  # a file holds a handful of distinct tags, read millions of times
def normal_tag(tag: str) -> str:
    """A tag in IOB2's spelling: ``o`` as ``O``; ``S-X``/``U-X`` as ``B-X``, ``E-X``/``L-X`` as ``I-X``; lower-case
    prefixes and ``B_X`` as ``B-X`` (the type keeps its spelling); a plain label as it is."""
    if tag.upper() == "O":
        return "O"
    if len(tag) > 2 and tag[1] in "-_" and tag[0].upper() in PREFIXES:
        return f"{PREFIXES[tag[0].upper()]}-{tag[2:]}"
    return tag


def _note_scheme(records: list[Record], source: str) -> list[Record]:
    """``records``, where every tag but O is a bare prefix (``B``, ``I``: keyphrases, chunks) with those tags
    given the one entity type :data:`UNTYPED`; prints one note when that happens, one when some tags are read
    in IOB2's spelling (:func:`normal_tag`; one example per prefix spelling: ``S-LOC as B-LOC, E-LOC as I-LOC``)
    and one when entity types differ only in case (``PER``, ``per``: separate types)."""
    _read_suffixes(records, source)
    bare = {t.upper() for r in records for t in r["tags"]} - {"O"}
    if bare and bare <= set(PREFIXES) and bare & {"B", "I"}:
        for r in records:
            r["tags"] = [t if t.upper() == "O" else f"{t.upper()}-{UNTYPED}" for t in r["tags"]]
        print(f"note: {source}: tags {', '.join(sorted(bare))} name no entity type; read as one type, {UNTYPED} "
              f"(B as B-{UNTYPED})", file=sys.stderr)
    _refuse_odd_tags(records, source)
    examples: dict[str, str] = {}
    types: dict[str, set[str]] = {}  # lower case -> spellings
    for tag in dict.fromkeys(t for r in records for t in r["tags"]):  # each distinct tag once, in order
        if normal_tag(tag) != tag:
            examples.setdefault(tag if tag.upper() == "O" else tag[:2], f"{tag} as {normal_tag(tag)}")
        kind = normal_tag(tag)[2:] if _prefixed(tag) else normal_tag(tag)
        types.setdefault(kind.lower(), set()).add(kind)
    if examples:
        print(f"note: {source}: tags read as IOB2 ({', '.join(list(examples.values())[:4])})", file=sys.stderr)
    cased = [sorted(g) for k, g in types.items() if len(g) > 1 and k != "o"]
    if cased:
        print(f"note: {source}: entity types {'; '.join(' and '.join(map(repr, g)) for g in cased[:3])} differ only "
              "in case and are separate types; write them one way if they mean the same", file=sys.stderr)
    return records


_PREFIX_LIKE = re.compile(r"[A-Za-z][-_]\S+")  # X-MOV: a one-letter prefix and a type


_SUFFIXED = re.compile(r"(\S+)[-_]([A-Za-z])")  # PER-B: a type, then a one-letter prefix


def _read_suffixes(records: list[Record], source: str) -> None:
    """Where every tag but O puts its scheme letter last (``PER-B``, ``LOC_I``) and not every one reads as
    prefixed, the tags are rewritten prefix first (``B-PER``) with one note; read as they are, each would be an
    entity type of its own."""
    tags = {t for r in records for t in r["tags"]} - {"O", "o"}
    found = [_SUFFIXED.fullmatch(t) for t in tags]
    if not tags or not all(m and m[2].upper() in PREFIXES for m in found) or all(map(_prefixed, tags)):
        return
    for r in records:
        r["tags"] = [t if t in ("O", "o") else f"{t[-1]}-{t[:-2]}" for t in r["tags"]]
    example = sorted(tags)[0]
    print(f"note: {source}: tags read with the scheme letter last ({example} as {example[-1]}-{example[:-2]})",
          file=sys.stderr)


def _refuse_odd_tags(records: list[Record], source: str) -> None:
    """ConfigError for a tag that does not fit a file of prefixed tags (B-MOV ...), where it would otherwise train as
    an entity type of its own: a prefix no scheme uses (``X-MOV``: a typo, or a scheme tuneforge does not read), a bare
    prefix (``B``), or a label without a prefix other than O (a header line's ``tag``, a placeholder ``_``, ``O,``)."""
    tags = dict.fromkeys(t for r in records for t in r["tags"])
    if not any(_prefixed(t) for t in tags):
        return
    for i, r in enumerate(records, start=1):
        odd = next((t for t in r["tags"] if _PREFIX_LIKE.fullmatch(t) and t[0].upper() not in PREFIXES), None)
        if odd is not None:
            raise ConfigError(f"{source}: sentence {i}: tag {odd!r} has the prefix {odd[:2]!r}, which no tag scheme "
                              f"uses, while other tags have B-/I- prefixes; write it with one of "
                              f"{', '.join(p + '-' for p in PREFIXES)} (B- begins an entity, I- continues it) or O")
        plain = next((t for t in r["tags"] if t.upper() != "O" and not _prefixed(t)), None)
        if plain is not None:
            what = ("names no entity type" if plain.upper() in PREFIXES else
                    "has no B-/I- prefix (a header line, a placeholder such as _, or a typo?)")
            raise ConfigError(f"{source}: sentence {i}: tag {plain!r} {what}, while other tags have prefixes and "
                              f"types ({next(t for t in tags if _prefixed(t))}); write it as O, or as B-<type> "
                              "(begins an entity) / I-<type> (continues it)")


def _prefixed(tag: str) -> bool:
    return normal_tag(tag)[:2] in ("B-", "I-")


def scheme(tags: Sequence[str] | Sequence[Sequence[str]]) -> str:
    """Tag scheme of one sentence or a list of them: ``"plain"`` (no B-/I- prefixes, e.g. PER), ``"IOB2"``
    (prefixed, every chunk starts with B-) or ``"BIO"`` (prefixed, some chunk starts with I-, as in IOB1 or
    loosely written BIO: :func:`to_bio` repairs it)."""
    sentences = _sentences(tags)
    if not any(_prefixed(t) for s in sentences for t in s):
        return "plain"
    return "BIO" if invalid_sentences(sentences) else "IOB2"


def invalid_sentences(tags: Sequence[str] | Sequence[Sequence[str]]) -> int:
    """How many sentences hold an ``I-X`` that does not continue an X chunk (for reporting; accepted)."""
    return sum(invalid_transitions([normal_tag(t) for t in s]) > 0 for s in _sentences(tags))


def unseen_types(names: Sequence[str], records: Sequence[Record], split: str, file: str | None) -> None:
    """One warning naming the entity types of a ``split`` ("test split", "evaluated data") that training (tag
    ``names``) lacks (types are compared by name, so their entities are never found); where the split is a
    ``file`` of its own and none of its types occurs in training (b-per vs B-PER, PER vs PERSON), a ConfigError."""
    known, types = entity_types(names), entity_types(t for r in records for t in to_bio(r["tags"]))
    if types - known:
        line = (f"entity type(s) {', '.join(sorted(types - known))} of the {split} never occur in training "
                f"({', '.join(sorted(known))}); tags are compared by type name, so they are never found")
        if file and not types & known:
            raise ConfigError(f"{file}: {line}; write them as the training file does")
        print(f"warning: {file or 'data'}: {line}", file=sys.stderr)


def entity_types(names: Iterable[str]) -> set[str]:
    """The entity types of IOB2 tag ``names`` (a run's labels): ``{"PER"}`` of ``["O", "B-PER", "I-PER"]``."""
    return {n[2:] for n in names if n != "O"}


def foreign_types(names: Sequence[str], records: Sequence[Record]) -> list[str]:
    """The entity types of ``records`` that tag ``names`` (a run's) lack, sorted: encoded, they are tagged O."""
    return sorted(entity_types(t for r in records for t in to_bio(r["tags"])) - entity_types(names))


def to_bio(tags: Sequence[str]) -> list[str]:
    """IOB2 tags of one sentence: other schemes' spellings as IOB2's (:func:`normal_tag`), an ``I-X`` starting a
    chunk as ``B-X`` (IOB1 repair), a run of one plain label ``X`` as ``B-X I-X ...``; valid IOB2 as it is."""
    out: list[str] = []
    prev = "O"
    for tag in map(normal_tag, tags):
        if tag == "O":
            out.append(tag)
        elif tag.startswith("I-"):
            out.append(tag if prev in ("B-" + tag[2:], tag) else "B-" + tag[2:])
        elif _prefixed(tag):
            out.append(tag)
        else:
            out.append(("I-" if prev == tag else "B-") + tag)
        prev = tag
    return out


# --- the embedded WNUT-16 set ---------------------------------------------------------------------------------
