"""Read records (list of dicts) from CSV, JSONL/JSON or Parquet files."""
from __future__ import annotations

import io
import json
import re
import sys
import warnings
from pathlib import Path
from typing import Any

from tuneforge.config import ConfigError
from tuneforge.data.json_file import json_list, json_records, jsonl_records

SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
FIELD_SEP = "\x1f"  # between the texts of one example (a sentence pair) in Task.input_text


def require_file(path: str | Path) -> Path:
    """``path`` as a readable data file: a folder or a missing path is one line that says which."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ConfigError(f"data file {p} is a folder; give a file in it ({', '.join(SUFFIXES)} or CoNLL)")
    if not p.is_file():
        raise ConfigError(f"data file {p} does not exist")
    return p


# first bytes of a compressed file -> (what it is, how to get the file inside)
ARCHIVES = ((b"\x1f\x8b", "gzip-compressed", "gunzip it"), (b"PK\x03\x04", "a zip archive", "unzip it"),
            (b"BZh", "bzip2-compressed", "bunzip2 it"), (b"\xfd7zX", "xz-compressed", "unxz it"))


def not_text(p: Path, exc: Exception) -> ConfigError:
    """The error for a file that does not decode as UTF-8: compressed archives are named as such."""
    with p.open("rb") as f:
        head = f.read(4)
    for magic, kind, fix in ARCHIVES:
        if head.startswith(magic):
            return ConfigError(f"data file {p} is {kind}; {fix} and give the file inside")
    where = ""
    if isinstance(exc, UnicodeDecodeError):  # the reader's offset may be into a chunk: find the byte in the file
        data = p.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as whole:
            line = data.count(b"\n", 0, whole.start) + 1
            where, exc = f", line {line}", ValueError(f"byte 0x{data[whole.start]:02x} is not UTF-8 (another encoding?)")
    return ConfigError(f"data file {p}{where} cannot be read: {str(exc).splitlines()[0]}; save it as UTF-8")


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a data file as dicts. Errors name the file and the fix."""
    p = require_file(path)
    suffix = p.suffix.lower()
    try:
        if suffix in (".csv", ".tsv", ".jsonl", ".json"):
            with p.open("rb") as f:
                head = f.read(4096)
            if head.count(b"\x00") > len(head) // 4:  # UTF-16 without a byte-order mark: every other byte NUL
                raise not_text(p, ValueError("it holds NUL bytes, as UTF-16 text does"))
        if suffix in (".csv", ".tsv"):
            if p.stat().st_size == 0:
                raise ConfigError(f"data file {p} is empty; it needs a header row and at least one example")
            records = _read_csv(p, "\t" if suffix == ".tsv" else _delimiter(p), quoted=suffix != ".tsv")
        elif suffix == ".jsonl" and json_list(p):  # a JSON array saved as .jsonl: read as .json
            records = json_records(p)
        elif suffix == ".jsonl":
            records = jsonl_records(p, p.read_text(encoding="utf-8-sig"))
        elif suffix == ".json":
            records = json_records(p)
        elif suffix == ".parquet":
            import pandas as pd
            records = _decoded(pd.read_parquet(p), p).to_dict("records")
        else:
            raise ConfigError(f"data file {p}: unsupported type '{suffix}'; use one of {', '.join(SUFFIXES)}")
    except ConfigError:
        raise
    except UnicodeDecodeError as exc:
        raise not_text(p, exc) from None
    except Exception as exc:  # pandas, pyarrow, json and OS errors alike (pyarrow's have no common base class)
        raise ConfigError(f"data file {p} cannot be read: {str(exc).splitlines()[0]}") from None
    if not records:
        raise ConfigError(f"data file {p} is empty; it needs at least one example")
    return records


def _decoded(frame: Any, p: Path) -> Any:
    """``frame`` with its binary (bytes) columns as text: a text, never "b'...'"."""
    for column in frame.columns:
        first = frame[column].dropna().head(1).tolist()
        if first and isinstance(first[0], bytes):
            try:
                frame[column] = frame[column].map(lambda v: v.decode("utf-8") if isinstance(v, bytes) else v)
            except UnicodeDecodeError:
                raise ConfigError(f"data file {p}: column '{column}' holds bytes that are not UTF-8 text") from None
    return frame


def _read_csv(p: Path, sep: str, quoted: bool) -> list[dict[str, Any]]:
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
        if not m:
            raise
        raise ConfigError(f"{p}, line {m[2]}: {m[3]} cells where the header has {m[1]}; put a cell that holds "
                          f"the separator {sep!r} in double quotes") from None
    unnamed = [c for c, name in zip(frame.columns, header) if not name.strip() and frame[c].str.strip().eq("").all()]
    names = [name for c, name in zip(frame.columns, header) if c not in unnamed]
    records = frame.drop(columns=unnamed).to_dict("records")
    kept = [r for r in records if [v.lstrip("\ufeff") for v in r.values()] != names]
    if len(kept) < len(records):
        print(f"note: {p}: dropped {len(records) - len(kept)} row(s) that repeat the header row "
              "(files joined together?)", file=sys.stderr)
    filled = [r for r in kept if any(v.strip() for v in r.values())]  # separators only: a blank line to a spreadsheet
    if len(filled) < len(kept):
        print(f"note: {p}: skipped {len(kept) - len(filled)} row(s) with no value in any cell", file=sys.stderr)
    return filled


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


def _delimiter(path: Path) -> str:
    """A CSV file's column separator: a comma, or where the header has none, the first of tab, semicolon
    (spreadsheets in many locales) and bar that it holds."""
    with path.open(encoding="utf-8-sig") as f:
        header = f.readline()
    return "," if "," in header else next((c for c in "\t;|" if c in header), ",")


def as_int(value: Any) -> int | None:
    """An int from an int or a numpy integer (Parquet); None for anything else (bool, float, str)."""
    if isinstance(value, bool) or not (isinstance(value, int) or type(value).__name__.startswith(("int", "uint"))):
        return None
    return int(value)


def structure(value: Any) -> str | None:
    """What a cell that is not a plain value holds ("an object", "a list": JSON objects and lists, Parquet
    arrays); None for a string, number or missing value."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) > 0:  # numpy arrays from Parquet
        return "a list"
    return None


def common_column(row: dict[str, Any], name: str, spellings: tuple[str, ...]) -> str:
    """``name``, or where it is left at its default (``spellings[0]``) and absent from ``row``, the one other
    common spelling of that column that ``row`` holds (several or none: ``name``, whose absence the caller
    reports)."""
    if name != spellings[0] or name in row:
        return name
    present = [c for c in spellings if c in row]
    return present[0] if len(present) == 1 else name


def class_names(path: str | Path, column: str) -> list[str] | None:
    """The names of a column's integer classes as a Hugging Face ``datasets`` Parquet file records them
    (``ClassLabel`` features in the schema metadata, e.g. CoNLL-2003's ``ner_tags``); None when absent."""
    if Path(path).suffix.lower() != ".parquet":
        return None
    try:
        import pyarrow.parquet as pq
        meta = pq.read_schema(Path(path).expanduser()).metadata or {}
        feature = json.loads(meta.get(b"huggingface", b"{}")).get("info", {}).get("features", {}).get(column)
    except Exception:  # unreadable or foreign metadata: no names (read_records reports an unreadable file)
        return None
    while isinstance(feature, (dict, list)):  # Sequence / List features wrap the ClassLabel
        if isinstance(feature, list):
            feature = feature[0] if len(feature) == 1 else None
        elif isinstance(feature.get("names"), list):
            return [str(n) for n in feature["names"]]
        else:
            feature = feature.get("feature")
    return None


def column_names(row: dict[str, Any]) -> str:
    """A row's column names, quoted so that spaces around a name show: ``'text', 'label'``."""
    return ", ".join(repr(str(c)) for c in row)


def require_columns(records: list[dict[str, Any]], columns: list[str], source: str) -> None:
    """Raise ConfigError naming the first missing column and the columns that exist."""
    for col in columns:
        if col not in records[0]:
            raise ConfigError(
                f"{source}: column '{col}' not found; columns are {column_names(records[0])} "
                f"(choose with data.text_column / data.label_column)"
            )


def place(source: str, index: int) -> str:
    """Where a record comes from, as messages name it: ``"<source>, row <n>"`` (``index`` 0-based, n 1-based)."""
    return f"{source}, row {index + 1}"


def source_and_row(where: str) -> tuple[str, int]:
    """``(source, n)`` of a :func:`place` (``(where, 0)`` for another string)."""
    source, _, row = where.rpartition(", row ")
    return (source, int(row)) if source and row.isdigit() else (where, 0)
