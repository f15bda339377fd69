"""Read records (list of dicts) from CSV, JSONL/JSON or Parquet files."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tuneforge.config import ConfigError
from tuneforge.data import row_numbers
from tuneforge.data.csv_file import delimiter, read_csv
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
            records = read_csv(p, "\t" if suffix == ".tsv" else delimiter(p), quoted=suffix != ".tsv")
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


def as_int(value: Any) -> int | None:
    """An int from an int or a numpy integer (Parquet); None for anything else (bool, float, str)."""
    if isinstance(value, bool) or not (isinstance(value, int) or type(value).__name__.startswith(("int", "uint"))):
        return None
    return int(value)


def blank(value: Any) -> bool:
    """A missing value: None, NaN (pandas' empty cell) or only whitespace."""
    return value is None or (isinstance(value, float) and value != value) or str(value).strip() == ""


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


def header_hint(path: str | None, records: list[dict[str, Any]]) -> str:
    """For a CSV/TSV file whose header row looks like an example (a name that its own column holds again as a
    value: ``sports`` over a column of topics, as a label repeats), a hint that the file needs a header row; else
    ''. Without one, the first example is taken for the column names and no column is found."""
    if not path or not path.lower().endswith((".csv", ".tsv")) or not records:
        return ""
    names = [str(c) for c in records[0]]
    if not any(n.strip() and any(str(r.get(n, "")).strip() == n.strip() for r in records[:1000]) for n in names):
        return ""
    example = "text<TAB>label" if path.lower().endswith(".tsv") else "text,label"
    return (f"; the file's first row looks like an example, not column names: give the file a header row naming its "
            f"columns (e.g. {example})")


def data_bytes(data: Any) -> int:
    """The size of the files a ``DataConfig`` names (0 for embedded data sets); a Parquet file, which compresses
    300k rows into 5 MB, counts as at least 40 bytes a row (its row count is in its metadata)."""
    names = [data.train_file, data.validation_file, data.test_file] if data.train_file else [data.dataset]
    return sum(max(Path(n).stat().st_size, 40 * _parquet_rows(Path(n))) for n in names if n and Path(n).is_file())


def _parquet_rows(path: Path) -> int:
    """The rows of a Parquet file by its metadata (0 for another file, or one that cannot be read here)."""
    if path.suffix.lower() != ".parquet":
        return 0
    try:
        import pyarrow.parquet as pq
        return pq.ParquetFile(path).metadata.num_rows
    except Exception:  # unreadable: read_records names the problem when the data is read
        return 0


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes: what ``split.json`` records of a data source, to tell a changed one."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def place(source: str, index: int) -> str:
    """Where a record comes from, as messages name it: ``"<source>, row <n>"`` (``index`` 0-based; n 1-based,
    counting the rows the reader skipped: :mod:`tuneforge.data.row_numbers`)."""
    return f"{source}, row {row_numbers.row(source, index)}"


def source_and_row(where: str) -> tuple[str, int]:
    """``(source, n)`` of a :func:`place` (``(where, 0)`` for another string)."""
    source, _, row = where.rpartition(", row ")
    return (source, int(row)) if source and row.isdigit() else (where, 0)
