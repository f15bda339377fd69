"""CSV / TSV rows as written: separators, quoting (stray quotes, multi-line cells, GLUE's unquoted TSVs), rows
longer than the header, repeated headers and empty rows and columns."""
import pandas as pd
import pytest

from tuneforge.config import ConfigError
from tuneforge.data.readers import read_records

ROWS = [{"text": "good film", "label": "pos"}, {"text": "bad film", "label": "neg"}]


def test_a_comma_in_the_header_keeps_commas_as_the_separator(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"good; fine film",pos\n')
    assert read_records(path) == [{"text": "good; fine film", "label": "pos"}]


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


def test_a_quote_that_never_closes_names_its_row(tmp_path):
    path = tmp_path / "d.csv"  # the example numbered as everywhere: a multi-line cell before it is one row
    path.write_text('text,label\n"good\nfilm",pos\nbad film,neg\n"open cell,pos\n')
    with pytest.raises(ConfigError, match=r"d\.csv, row 3: a '\"' opens a cell that never closes; delete the stray"):
        read_records(path)
