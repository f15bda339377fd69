"""A bad row is named by its row in the file, counting the rows the reader skipped (blank lines, a CSV's rows of
separators only or repeating the header): two blank lines before it had named it two rows too early."""
from .cli_checks import main, one_error, train_argv


def error(capsys, argv) -> str:
    """The error line of a failed command (after the reader's notes on the rows it skipped)."""
    capsys.readouterr()
    assert main(argv) == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_a_csv_row_after_skipped_rows_is_named_by_its_row_in_the_file(bert_dir, tmp_path, capsys):
    lines = ["text,label", "a fine film,pos", "", "   ", ",", "text,label", "a dull film,neg", "a long film,",
             "a good film,pos"]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    said = error(capsys, train_argv(bert_dir, tmp_path / "d.csv", tmp_path / "run"))
    assert said.startswith(f"tuneforge: error: {tmp_path / 'd.csv'}, row 7: the label (column 'label') is blank")
    (tmp_path / "d.tsv").write_text("\n".join(line.replace(",", "\t") for line in lines) + "\n")
    assert f"{tmp_path / 'd.tsv'}, row 7: " in error(capsys, train_argv(bert_dir, tmp_path / "d.tsv", tmp_path / "run"))
    quoted = ["text,label", '"a film\nover two lines",pos', "", "a long film,", "ok,neg"]  # one row, two lines
    (tmp_path / "q.csv").write_text("\n".join(quoted) + "\n")
    assert f"{tmp_path / 'q.csv'}, row 3: " in error(capsys, train_argv(bert_dir, tmp_path / "q.csv", tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_jsonl_row_is_named_by_its_line_and_a_file_without_gaps_as_before(bert_dir, tmp_path, capsys):
    lines = ['{"text": "a fine film", "label": "pos"}', "", "", '{"text": "a dull film", "label": "neg"}',
             '{"text": "a long film"}']
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    one_error(capsys, train_argv(bert_dir, tmp_path / "d.jsonl", tmp_path / "run"), "d.jsonl, row 5",
              "column 'label' is missing")
    (tmp_path / "d.jsonl").write_text("\n".join(line for line in lines if line) + "\n")  # the same file, no gaps
    one_error(capsys, train_argv(bert_dir, tmp_path / "d.jsonl", tmp_path / "run"), "d.jsonl, row 3")
    assert not (tmp_path / "run").exists()
