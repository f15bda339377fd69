"""Where each record of a data file stands in it, for messages. Readers skip blank lines (a CSV also its rows of
separators only and rows repeating the header), so a record's index is not its row: a file with two blank lines
before its bad row was named two rows too early. ``row n`` counts every row of the file, skipped ones too (a
CSV's header not: its first row after the header is row 1; a JSONL file's row n is its line n)."""
from __future__ import annotations

_NUMBERS: dict[str, list[int]] = {}  # a file as messages name it -> each record's row (1-based), where rows were skipped


def remember(names: list[str], numbers: list[int]) -> None:
    """The rows of a file's records, under each of the ``names`` the file goes by (as given, resolved)."""
    for name in names:
        if numbers == list(range(1, len(numbers) + 1)):
            _NUMBERS.pop(name, None)  # nothing skipped: index + 1
        else:
            _NUMBERS[name] = numbers


def alias(name: str, known: str, records: int) -> None:
    """``name`` (a data setting as configured) is the file read as ``known``, which gave ``records`` records: a task
    that made more or fewer records of the file's rows has no row numbers to keep."""
    numbers = _NUMBERS.get(known)
    if numbers is not None and len(numbers) == records:
        _NUMBERS[name] = numbers
    else:
        _NUMBERS.pop(name, None)
        _NUMBERS.pop(known, None)


def row(source: str, index: int) -> int:
    """The 1-based row of record ``index`` (0-based) of ``source``."""
    numbers = _NUMBERS.get(source)
    return numbers[index] if numbers is not None and 0 <= index < len(numbers) else index + 1
