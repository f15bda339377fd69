"""CSV and TSV data files as rows (dicts), every cell as the text written. A header naming a column twice, a row
with more cells than the header and a stray '"' that joins rows are errors that say so; rows repeating the header,
unnamed empty columns and rows of separators only are dropped with a note."""
from __future__ import annotations

import io
import re
import sys
import warnings
from pathlib import Path
from typing import Any

from tuneforge.config import ConfigError
from tuneforge.data import row_numbers


def read_csv(p: Path, sep: str, quoted: bool) -> list[dict[str, Any]]:
    """The rows of a CSV/TSV file, every cell as the text written (no number inference: "007", "1e3" and "0.50"
    stay as they are). A TSV is unquoted, as GLUE's and most exports are: a stray '"' is text, not the start of
    a field running over the following rows; one written with CSV quoting is read quoted (see _csv_quoted). A
    header naming a column twice, a row with more cells than the header and a stray '"' that joins rows (see
    _joined_rows) are errors that say so. Rows that repeat the header (files joined together) and columns with
    neither a name nor a value (a spreadsheet's trailing separators) are dropped."""
    import csv

    import pandas as pd  # here: ~60 MiB and half a second that JSONL and CoNLL never need
    quoted = quoted or _csv_quoted(p)
    quoting = csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE
    with p.open(encoding="utf-8-sig", newline="") as f:
        header = next(csv.reader(f, delimiter=sep, quoting=quoting), [])
    twice = sorted({c for c in header if c.strip() and header.count(c) > 1})
    if twice:
        raise ConfigError(f"data file {p}: the header names {', '.join(map(repr, twice))} more than once; "
                          "give every column its own name")
    if quoted:
        _joined_rows(p, sep)
    read = dict(sep=sep, dtype=str, keep_default_na=False, quoting=quoting, encoding="utf-8-sig")
    try:
        frame = pd.read_csv(p, **read)
        if not isinstance(frame.index, pd.RangeIndex):  # rows longer than the header: pandas made an index of them
            _longer_rows(p, sep, quoting, len(header))
            with warnings.catch_warnings():  # "loss of data": only the blank last cells checked above
                warnings.simplefilter("ignore", pd.errors.ParserWarning)
                frame = pd.read_csv(p, index_col=False, **read)
    except pd.errors.ParserError as exc:
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if eof := re.search(r"EOF inside string starting at row (\d+)", str(exc)):
            raise ConfigError(f"{p}, row {eof[1]}: a '\"' opens a cell that never closes; delete the stray '\"' (or "
                              "close the quote)") from None
        if not m:
            raise
        raise ConfigError(f"{p}, line {m[2]}: {m[3]} cells where the header has {m[1]}; put a cell that holds "
                          f"the separator {sep!r} in double quotes") from None
    unnamed = [c for c, name in zip(frame.columns, header) if not name.strip() and frame[c].str.strip().eq("").all()]
    names = [name for c, name in zip(frame.columns, header) if c not in unnamed]
    records = frame.drop(columns=unnamed).to_dict("records")
    numbered = list(zip(records, _rows(p, sep, quoting, len(records))))
    kept = [(r, n) for r, n in numbered if [v.lstrip("\ufeff") for v in r.values()] != names]
    if len(kept) < len(records):
        print(f"note: {p}: dropped {len(records) - len(kept)} row(s) that repeat the header row "
              "(files joined together?)", file=sys.stderr)
    filled = [(r, n) for r, n in kept if any(v.strip() for v in r.values())]  # separators only: a blank line
    if len(filled) < len(kept):
        print(f"note: {p}: skipped {len(kept) - len(filled)} row(s) with no value in any cell", file=sys.stderr)
    row_numbers.remember([str(p)], [n for _, n in filled])
    return [r for r, _ in filled]


def _rows(p: Path, sep: str, quoting: int, records: int) -> list[int]:
    """The row of each of pandas' ``records`` in the file, blank lines counted (pandas skips them); 1, 2, ... where
    the csv module reads another number of rows."""
    import csv
    with p.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=sep, quoting=quoting)
        next(reader, None)  # the header
        rows = [n for n, row in enumerate(reader, start=1) if row and (len(row) > 1 or row[0].strip())]  # as pandas
    return rows if len(rows) == records else list(range(1, records + 1))


def _longer_rows(p: Path, sep: str, quoting: int, width: int) -> None:
    """Refuse the first row with a value beyond the header's ``width`` cells (pandas would shift every column
    by one); rows that only end with a stray separator (spreadsheet exports) pass."""
    import csv
    _no_field_limit()
    with p.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=sep, quoting=quoting)
        next(reader, None)
        for row in reader:
            if any(cell.strip() for cell in row[width:]):
                raise ConfigError(f"{p}, line {reader.line_num}: {len(row)} cells where the header has {width}; "
                                  f"name every column in the header, or put a cell that holds the separator {sep!r} "
                                  "in double quotes")


def _csv_quoted(p: Path) -> bool:
    """Whether a .tsv was written with CSV quoting, as pandas' ``to_csv(sep="\\t")`` and Excel's "Text (Tab
    delimited)" quote a cell holding a '"', a tab or a line break: the file parses as strict CSV, a cell is quoted
    as only a CSV writer quotes (``"a ""b"" c"``, or holding a tab or a line break), and no cell holds both a tab
    and a line break (a row that a stray '"' swallowed). GLUE-style TSVs, whose '"' are text (``he said
    "hi``, ``"quoted" words``), fail one of these and are read as written."""
    import csv
    text = p.read_text(encoding="utf-8-sig")
    if '"' not in text:
        return False
    try:
        _no_field_limit()
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t", strict=True))
    except csv.Error:
        return False
    if len({len(row) for row in rows if row}) > 1:  # quoted reading would merge cells (a GLUE row's stray '"'s)
        return False
    cells = [c for row in rows for c in row]
    if any("\t" in c and re.search(r"[\r\n]", c) for c in cells):
        return False
    return (any(re.search(r"[\t\r\n]", c) for c in cells)
            or any(len(c) > 3 and c[0] == c[-1] == '"' and '""' in c[1:-1] for c in re.split(r"[\t\r\n]", text)))


def _no_field_limit() -> None:
    """Let Python's csv read cells of any size (its default limit, 128 KiB, would fail a long article)."""
    import csv
    csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))


def _joined_rows(p: Path, sep: str) -> None:
    """Refuse a CSV in which a stray '"' joins rows. A '"' opening a cell makes pandas read on to the next '"'
    anywhere in the file, taking the rows between (separators, labels and all) into one text. A cell quoted as
    CSV writers quote it ends with '"' just before a separator or the end of a line, and may hold line breaks; a
    stray '"' runs to wherever the next '"' falls, almost never there: csv's strict mode refuses that cell. Such
    a cell on one line (``"quoted" words``) joins no rows and is read as pandas reads it; one running over lines
    whose inner lines are whole rows (as many separators as the header) is joined rows; otherwise (a multi-line
    cell written by hand, ``"a\nb" ,1``) a warning names it."""
    import csv
    _no_field_limit()
    lines = p.read_text(encoding="utf-8-sig").split("\n")
    columns = lines[0].count(sep)
    with p.open(encoding="utf-8-sig", newline="") as f:
        reader, start = csv.reader(f, delimiter=sep, strict=True), 1
        while True:
            try:
                next(reader)
            except StopIteration:
                return
            except csv.Error:
                end = reader.line_num
                said = f"{p}, line {start}: a '\"' opens a cell that runs to line {end}, joining {end - start + 1} lines"
                if end > start + 1 and any(line.count(sep) >= columns for line in lines[start:end - 1]):
                    raise ConfigError(f"{said} (whole rows) into one example; delete the stray '\"' (or quote the "
                                      "whole cell and double each '\"' in it)") from None
                if end > start:
                    print(f"warning: {said} into one cell; if that '\"' is stray, delete it", file=sys.stderr)
            start = reader.line_num + 1


def delimiter(path: Path) -> str:
    """A CSV file's column separator: a comma, or where the header has none, the first of tab, semicolon
    (spreadsheets in many locales) and bar that it holds."""
    with path.open(encoding="utf-8-sig") as f:
        header = f.readline()
    return "," if "," in header else next((c for c in "\t;|" if c in header), ",")
