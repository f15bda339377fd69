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


def test_a_stored_split_and_a_tagger_name_the_same_rows_as_training(tmp_path, monkeypatch, capsys):
    """A run's split read back by its absolute path named its rows without the skipped ones (the name as configured
    was relative), and a token-classification file's skipped row was named by its index."""
    import json

    from tuneforge.config import load_config
    from tuneforge.data import dataset, row_numbers
    from tuneforge.tasks import get

    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.csv").write_text("text,label\n" + "\n\n".join(f"film {i},{'pos' if i % 2 else 'neg'}"
                                                                 for i in range(12)) + "\n")
    cfg = load_config(None, {"data": {"dataset": "d.csv", "split": [0.5, 0.25, 0.25]}})
    splits = dataset.load_splits(cfg, get("classification"))
    trained = splits.where("test")
    row_numbers._NUMBERS.clear()  # a new process
    restored = dataset.restore(json.loads(json.dumps(splits.manifest())), "test", get("classification"), cfg)[1]
    assert restored == trained and all(int(w.rsplit(" ", 1)[1]) % 2 == 1 for w in trained)  # rows 1, 3, 5, ...
    lines = ['{"tokens": ["Ada", "runs"], "tags": ["B-PER", "O"]}', "", "", '{"tokens": [], "tags": []}',
             '{"tokens": ["Bo"], "tags": ["B-PER"]}', '{"tokens": ["Cy", "x"], "tags": ["B-PER", "O"]}']
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    records, where = dataset.source_records(get("token_classification"), str(tmp_path / "t.jsonl"),
                                            load_config(None, {"model": {"task": "token_classification"}}))
    assert [w.rsplit(" ", 1)[1] for w in where] == ["1", "5", "6"]
    assert "1 row(s) with no tokens skipped (row 4)" in capsys.readouterr().err
