import json

import pandas as pd
import pytest

from tuneforge.config import ConfigError
from tuneforge.data.readers import read_records, require_columns

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


def test_missing_file_and_column(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_records(tmp_path / "nope.csv")
    with pytest.raises(ConfigError, match="column 'review' not found; columns are 'text', 'label'"):
        require_columns(ROWS, ["review"], "d.csv")


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


def test_a_comma_in_the_header_keeps_commas_as_the_separator(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"good; fine film",pos\n')
    assert read_records(path) == [{"text": "good; fine film", "label": "pos"}]


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


def test_csv_cells_stay_as_written(tmp_path):
    """No number inference: zero-padded labels, answers like 0.50 or 1e3 and integers read as the text written."""
    path = tmp_path / "d.csv"
    path.write_text("question,answer,label\nhow much?,0.50,01\nhow many?,1e3,02\nwhich?,007,1\n")
    assert read_records(path) == [{"question": "how much?", "answer": "0.50", "label": "01"},
                                  {"question": "how many?", "answer": "1e3", "label": "02"},
                                  {"question": "which?", "answer": "007", "label": "1"}]


def test_a_tsv_is_unquoted_so_a_stray_quote_joins_no_rows(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text('sentence\tlabel\n" the best film, he said\t1\nslow "and" dull\t0\nfine\t1\n')
    assert read_records(path) == [{"sentence": '" the best film, he said', "label": "1"},
                                  {"sentence": 'slow "and" dull', "label": "0"}, {"sentence": "fine", "label": "1"}]


def test_jsonl_strings_may_hold_line_and_paragraph_separators(tmp_path):
    rows = [{"text": "great film\u2028loved it", "label": "pos"}, {"text": "dull \x85 film\u2029", "label": "neg"}]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert read_records(path) == rows


def test_a_stray_quote_that_joins_rows_is_refused_with_its_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\ngood film,pos\n"great film,pos\nbad film,neg\ndull "and" slow,neg\nfine,pos\n')
    with pytest.raises(ConfigError, match=r"d\.csv, line 3: a '\"' opens a cell that runs to line 5, joining 3 lines "
                                          r"\(whole rows\) into one example; delete the stray '\"'"):
        read_records(path)


def test_hand_written_multi_line_cells_and_long_cells_are_read(tmp_path, capsys):
    """A multi-line cell whose inner lines are not whole rows is read, with a warning when a space follows its
    closing quote (strict CSV refuses that); a cell over Python csv's 128 KiB default limit reads too."""
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"line one,\nline two" ,pos\nfine,neg\n')
    assert [r["label"] for r in read_records(path)] == ["pos", "neg"]
    assert "warning: " in capsys.readouterr().err
    long = "first line\n" + "word " * 60_000
    path.write_text(f'text,label\n"{long}",pos\nfine,neg\n')
    assert [r["label"] for r in read_records(path)] == ["pos", "neg"] and capsys.readouterr().err == ""


def test_a_glue_tsv_row_opening_and_closing_with_quotes_stays_unquoted(tmp_path):
    path = tmp_path / "d.tsv"  # MNLI-style: a premise starting with '"', its hypothesis ending with one
    path.write_text('premise\thypothesis\tlabel\n"Yes, he said\tit was "fine"\tentailment\nok\tfine\tneutral\n')
    assert read_records(path)[0] == {"premise": '"Yes, he said', "hypothesis": 'it was "fine"', "label": "entailment"}


@pytest.mark.parametrize("cell", ['"great film.\nloved it, really, pos"', '"great, ""so"" good,\n\nfilm"',
                                  '"quoted" words'])
def test_quoted_cells_on_several_lines_and_quotes_joining_no_rows_read_as_before(tmp_path, cell):
    path = tmp_path / "d.csv"
    path.write_text(f"text,label\n{cell},pos\nbad film,neg\n")
    expected = "quoted words" if cell.startswith('"quoted"') else cell[1:-1].replace('""', '"')
    assert read_records(path) == [{"text": expected, "label": "pos"}, {"text": "bad film", "label": "neg"}]


def test_rows_repeating_the_header_are_dropped_with_a_note(tmp_path, capsys):
    path = tmp_path / "d.csv"  # two files joined with cat, the second with its byte-order mark
    path.write_text("\ufefftext,label\ngood film,pos\n\ufefftext,label\nbad film,neg\n", encoding="utf-8")
    assert read_records(path) == ROWS
    note = f"note: {path}: dropped 1 row(s) that repeat the header row (files joined together?)\n"
    assert capsys.readouterr().err == note


def test_a_json_file_holding_json_lines_is_read_as_json_lines(tmp_path):
    path = tmp_path / "d.json"  # what datasets' Dataset.to_json("d.json") writes
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert read_records(path) == ROWS
    path.write_text(json.dumps({"data": ROWS}, indent=2))  # an object holding the list still reads as JSON
    assert read_records(path) == ROWS
    path.write_text(json.dumps(ROWS[0]) + "\n{oops\n")
    with pytest.raises(ConfigError, match=r"d\.json, line 2: not valid JSON"):
        read_records(path)


def test_empty_columns_without_a_name_are_dropped(tmp_path):
    path = tmp_path / "d.csv"  # Excel's export of a sheet with formatted empty columns after the data
    path.write_text("text;label;;\ngood film;pos;;\nbad film;neg;;\n")
    assert read_records(path) == ROWS
    path.write_text(",text,label,,\n0,good film,pos,,x\n")  # unnamed columns holding data stay (a pandas index)
    assert read_records(path) == [{"Unnamed: 0": "0", "text": "good film", "label": "pos", "Unnamed: 4": "x"}]


def test_a_tsv_written_with_csv_quoting_is_read_quoted(tmp_path):
    rows = [{"text": 'the film was "really" good', "label": "pos"}, {"text": "bad\nvery bad", "label": "neg"},
            {"text": "dull\tslow", "label": "neg"}, {"text": "fine", "label": "pos"}]
    for some in (rows[:1], rows[1:2], rows[2:], rows):
        path = tmp_path / "d.tsv"
        pd.DataFrame(some).to_csv(path, index=False, sep="\t")
        assert read_records(path) == some


@pytest.mark.parametrize("cells", [['he said "hi', '"quoted" words'], ['"Up"', 'a "b" c'],
                                   ['" the best film, he said', 'slow and dull "']])
def test_a_glue_style_tsv_keeps_its_quotes_as_text(tmp_path, cells):
    path = tmp_path / "d.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"{c}\t1\n" for c in cells))
    assert read_records(path) == [{"sentence": c, "label": "1"} for c in cells]


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


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_rows_longer_than_the_header_are_refused_not_shifted_into_the_wrong_columns(tmp_path, suffix):
    sep = "," if suffix == ".csv" else "\t"
    path = tmp_path / f"d{suffix}"  # pandas would read the first cells as an index: texts become the labels
    path.write_text(f"text{sep}label\ngood film{sep}pos{sep}imdb\nbad film{sep}neg{sep}rt\n")
    with pytest.raises(ConfigError, match=rf"d\{suffix}, line 2: 3 cells where the header has 2; name every column"):
        read_records(path)
    path.write_text(f"text{sep}label\ngood film{sep}pos{sep}\nbad film{sep}neg{sep}\n")  # a stray last separator
    assert read_records(path) == ROWS


def test_rows_of_separators_only_are_skipped_with_a_note(tmp_path, capsys):
    path = tmp_path / "d.csv"  # a spreadsheet's export of formatted but empty rows
    path.write_text("text,label\ngood film,pos\n,\nbad film,neg\n , \n")
    assert read_records(path) == ROWS
    assert capsys.readouterr().err == f"note: {path}: skipped 2 row(s) with no value in any cell\n"


def test_a_parquet_column_of_bytes_reads_as_text(tmp_path):
    import pandas as pd

    path = tmp_path / "d.parquet"
    pd.DataFrame({"text": [b"good film", b"bad film"], "label": ["pos", "neg"]}).to_parquet(path)
    assert read_records(path) == ROWS
    pd.DataFrame({"text": [b"good film", b"caf\xe9"], "label": ["pos", "neg"]}).to_parquet(path)
    with pytest.raises(ConfigError, match=r"d\.parquet: column 'text' holds bytes that are not UTF-8 text"):
        read_records(path)


def test_a_quote_that_never_closes_names_its_row(tmp_path):
    path = tmp_path / "d.csv"  # the example numbered as everywhere: a multi-line cell before it is one row
    path.write_text('text,label\n"good\nfilm",pos\nbad film,neg\n"open cell,pos\n')
    with pytest.raises(ConfigError, match=r"d\.csv, row 3: a '\"' opens a cell that never closes; delete the stray"):
        read_records(path)
