import json

import pandas as pd
import pytest

from tuneforge.config import ConfigError
from tuneforge.data.readers import read_records

ROWS = [{"text": "good film", "label": "pos"}, {"text": "bad film", "label": "neg"}]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".parquet", ".tsv"])
def test_every_format_reads_the_same_rows(tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    frame = pd.DataFrame(ROWS)
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    elif suffix == ".json":
        path.write_text(json.dumps(ROWS))
    else:
        frame.to_parquet(path)
    assert read_records(path) == ROWS


@pytest.mark.parametrize("name, content, message", [
    ("empty.csv", "", "is empty"),
    ("header.csv", "text,label\n", "is empty"),
    ("empty.jsonl", "\n", "is empty"),
    ("empty.json", " \n", "is empty"),  # json.loads said "Expecting value: line 1 column 1"
    ("broken.jsonl", '{"text": "a"}\n{oops\n', r"broken\.jsonl, line 2: not valid JSON"),
    ("data.xlsx", "x", "unsupported type"),
    ("strings.json", '["a", "b"]', r"strings\.json, item 1: expected a JSON object, got str"),
    ("twice.csv", "text,label,label\na,x,y\n", r"twice\.csv: the header names 'label' more than once"),
    ("ragged.csv", "text,label\na,x\nb, c,y,z\n", r"ragged\.csv, line 3: 4 cells where the header has 2; put a cell"),
])


def test_bad_files_give_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        read_records(path)


def test_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_records(tmp_path / "nope.csv")


@pytest.mark.parametrize("name, content", [
    ("semicolons.csv", "text;label\ngood film;pos\nbad film;neg\n"),  # spreadsheets in many locales
    ("tabs.csv", "text\tlabel\ngood film\tpos\nbad film\tneg\n"),
    ("bars.csv", "text|label\ngood film|pos\nbad film|neg\n"),
    ("bom.csv", "\ufefftext,label\ngood film,pos\nbad film,neg\n"),
    ("bom.jsonl", "\ufeff" + "".join(json.dumps(r) + "\n" for r in ROWS)),  # Notepad's UTF-8
    ("array.jsonl", json.dumps(ROWS)),  # a JSON array saved as .jsonl
])


def test_files_as_spreadsheets_and_editors_save_them_read_as_they_are(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert read_records(path) == ROWS


def test_a_file_not_in_utf8_names_the_fix(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(("text,label\n" + "fine film,pos\n" * 3 + "caf\xe9 film,pos\n").encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin.csv, line 5 cannot be read: byte 0xe9 is not UTF-8 \(another "
                                          r"encoding\?\); save it as UTF-8$"):
        read_records(path)


def test_a_folder_or_a_compressed_file_is_named_as_such(tmp_path):
    import gzip
    import zipfile

    with pytest.raises(ConfigError, match="is a folder; give a file in it"):
        read_records(tmp_path)
    (tmp_path / "d.csv").write_bytes(gzip.compress(b"text,label\ngood film,pos\n"))
    with pytest.raises(ConfigError, match="d.csv is gzip-compressed; gunzip it"):
        read_records(tmp_path / "d.csv")
    with zipfile.ZipFile(tmp_path / "d.jsonl", "w") as archive:
        archive.writestr("d.jsonl", '{"text": "good", "label": "pos"}\n')
    with pytest.raises(ConfigError, match="d.jsonl is a zip archive; unzip it"):
        read_records(tmp_path / "d.jsonl")


@pytest.mark.parametrize("name, encoding", [("d.csv", "utf-16-le"), ("d.jsonl", "utf-16-be"), ("d.tsv", "utf-16")])
def test_a_utf16_file_is_named_as_such(tmp_path, name, encoding):
    path = tmp_path / name
    path.write_bytes(("text,label\ngood film,pos\n" if name != "d.jsonl" else json.dumps(ROWS[0])).encode(encoding))
    with pytest.raises(ConfigError, match=f"{name} cannot be read: it holds NUL bytes, as UTF-16 text does; "
                                          "save it as UTF-8"):
        read_records(path)


def test_one_nul_byte_in_a_utf8_file_is_not_taken_for_utf16(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"text,label\ngood\x00 film,pos\nbad film,neg\n")
    assert [r["label"] for r in read_records(path)] == ["pos", "neg"]


def test_a_parquet_column_of_bytes_reads_as_text(tmp_path):
    import pandas as pd

    path = tmp_path / "d.parquet"
    pd.DataFrame({"text": [b"good film", b"bad film"], "label": ["pos", "neg"]}).to_parquet(path)
    assert read_records(path) == ROWS
    pd.DataFrame({"text": [b"good film", b"caf\xe9"], "label": ["pos", "neg"]}).to_parquet(path)
    with pytest.raises(ConfigError, match=r"d\.parquet: column 'text' holds bytes that are not UTF-8 text"):
        read_records(path)


def test_a_parquet_file_counts_its_rows_toward_the_large_data_line(tmp_path):
    """300k rows are 5 MB of compressed Parquet, under the 5 MiB that prints 'reading, checking and tokenising'."""
    from types import SimpleNamespace

    from tuneforge.data.readers import data_bytes

    rows = pd.DataFrame({"text": ["the same review, again and again"] * 20_000, "label": ["pos"] * 20_000})
    rows.to_parquet(tmp_path / "d.parquet")
    rows.to_csv(tmp_path / "d.csv", index=False)
    parquet = data_bytes(SimpleNamespace(train_file=None, dataset=str(tmp_path / "d.parquet")))
    assert parquet == 40 * 20_000 > 100 * (tmp_path / "d.parquet").stat().st_size  # repeated text: nearly nothing
    assert data_bytes(SimpleNamespace(train_file=None, dataset=str(tmp_path / "d.csv"))) == \
        (tmp_path / "d.csv").stat().st_size
