"""The columns of a classification file: its text (or text pair) and label under the names data sets give them,
where the configured names are left at their defaults (``text``, ``label``) and absent."""
from __future__ import annotations

import sys
from typing import Any

from tuneforge.config import RunConfig
from tuneforge.data.readers import as_int, common_column

Record = dict[str, Any]

TEXT_COLUMNS = ("text", "sentence", "review", "content", "document", "comment", "tweet")  # common spellings of
LABEL_COLUMNS = ("label", "sentiment", "category", "class")  # the columns, used when the default is absent
PAIR_COLUMNS = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question1", "question2"), ("text1", "text2"),
                ("text_a", "text_b"), ("question", "sentence"))  # text pairs as GLUE / SNLI / QQP / QNLI name them


def named(value: Any, names: list[str] | None) -> Any:
    """An integer class id as its name (an id outside ``names``, such as -1, as None); anything else as it is. A
    whole float is an id too: pandas reads a ClassLabel column holding a null as floats (1.0)."""
    whole = type(value).__name__.startswith("float") and float(value).is_integer()  # float, numpy.float64
    i = int(value) if whole and names is not None else as_int(value)
    if names is None or i is None:
        return value
    return names[i] if 0 <= i < len(names) else None


def _pair(row: Record, cfg: RunConfig) -> tuple[str, str] | None:
    """The first common text-pair spelling ``row`` holds, where the text column is left at its default (and the
    pair column unset or that pair's second); else None."""
    found = next((p for p in PAIR_COLUMNS if all(c in row for c in p)), None)
    if cfg.data.text_column != TEXT_COLUMNS[0] or (found and cfg.data.text_pair_column not in (None, found[1])):
        return None
    return found


def find(row: Record, path: str, cfg: RunConfig) -> tuple[str, str]:
    """(text column, label column) of a file whose first row is ``row``: the configured ones, or their one common
    other spelling (``sentence``, ``review`` ...; ``sentiment``, ``category`` ...), or for the text a common text
    pair (``sentence1`` + ``sentence2`` ...: sets ``data.text_pair_column``, saved with the run). A later file of a
    pair run missing the pair's second text reads its first (the missing second is then named by the check); one
    lacking its first too (another pair's spelling) is checked for the run's own first, which the error names."""
    d = cfg.data
    pair = _pair(row, cfg) if d.text_column not in row else None  # before 'sentence' alone (QNLI)
    first = next((a for a, b in PAIR_COLUMNS if b == d.text_pair_column), None)  # a pair run's first text
    text = common_column(row, d.text_column, TEXT_COLUMNS)
    if pair:  # the run becomes a text-pair run; config.yaml records the second column for `predict`
        text, d.text_pair_column = pair
    elif first and text not in row and d.text_column == TEXT_COLUMNS[0]:  # premise + hypothesis missing the second
        text = first  # its first text, as training read it (absent: the check names it, not 'text')
    partner = dict(PAIR_COLUMNS).get(text)
    if d.text_pair_column is None and partner in row:
        print(f"note: {path} also has '{partner}', the usual second text of '{text}'; the run reads '{text}' "
              f"alone (data.text_pair_column={partner} classifies the pair)", file=sys.stderr)
    return text, common_column(row, d.label_column, LABEL_COLUMNS)
