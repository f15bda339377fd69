"""Class labels as users write them: one class however a label is spelled (``1``, ``"1"``, ``1.0``, ``" 1"``)."""
from __future__ import annotations

import re
from typing import Any


def label_key(value: Any) -> str:
    """A label as its class name: surrounding spaces stripped, an integral float (or its text) as its integer,
    so that 1, "1", 1.0 (a pandas column with a gap is float), "1.0" (a spreadsheet's) and " 1" are one class."""
    if isinstance(value, float):  # JSON's 0.50 and 0.5 (printed as written) are one class too
        return str(int(value)) if value.is_integer() else repr(float(value))
    text = str(value).strip()
    return str(int(text.split(".")[0])) if re.fullmatch(r"[+-]?(0|[1-9][0-9]*)\.0*", text) else text


def label_names(values: list[Any]) -> list[str]:
    """The classes of ``values`` (by :func:`label_key`), sorted: as numbers when all are integers."""
    names = sorted({label_key(v) for v in values})
    if all(re.fullmatch(r"-?[0-9]+", n) for n in names):  # ASCII digits: int() takes them ("①", "--1" it does not)
        names.sort(key=int)
    return names
