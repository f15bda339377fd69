"""Classification data as users have it: common column spellings and Hugging Face ``ClassLabel`` names."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tuneforge.config import ConfigError, load_config
from tuneforge.data.dataset import prepare
from tuneforge.tasks import get
from tiny import word_tokenizer

TASK = get("classification")


def _parquet(path, table, features):
    meta = {"info": {"features": features}}
    pq.write_table(table.replace_schema_metadata({b"huggingface": json.dumps(meta).encode()}), path)
    return str(path)


def test_integer_labels_of_a_datasets_parquet_file_take_their_class_names(tmp_path):
    features = {"sentence": {"dtype": "string", "_type": "Value"},
                "label": {"names": ["neg", "pos"], "_type": "ClassLabel"}}
    path = _parquet(tmp_path / "d.parquet", pa.table({"sentence": ["good", "bad", "?"], "label": [1, 0, -1]}), features)
    rows = TASK.read_source(path, load_config(None, {}))
    assert [(r["text"], r["label"]) for r in rows] == [("good", "pos"), ("bad", "neg"), ("?", None)]  # -1: none
    with_null = pa.table({"sentence": ["good", "bad", "?"], "label": pa.array([1, 0, None], pa.int64())})
    rows = TASK.read_source(_parquet(tmp_path / "n.parquet", with_null, features), load_config(None, {}))
    assert [r["label"] for r in rows][:2] == ["pos", "neg"]  # a null made pandas read floats: 1.0 is still "pos"


@pytest.mark.parametrize("columns, data, expected", [
    (("sentence", "label"), {}, ("sentence", "label")),
    (("review", "sentiment"), {}, ("review", "sentiment")),
    (("text", "category"), {}, ("text", "category")),
    (("body", "stars"), {"text_column": "body", "label_column": "stars"}, ("body", "stars")),  # named: as given
])
def test_a_default_column_absent_is_found_under_its_common_spelling(tmp_path, capsys, columns, data, expected):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({columns[0]: f"text {i}", columns[1]: i % 2}) + "\n" for i in range(4)))
    cfg = load_config(None, {"data": data})
    rows = TASK.read_source(str(path), cfg)
    assert [(r[cfg.data.text_column], r[cfg.data.label_column]) for r in rows] == \
        [(f"text {i}", i % 2) for i in range(4)]
    notes = capsys.readouterr().err  # a column found under another name is said, never silent
    for kind, column in zip(("text", "label"), columns):
        said = f"has no '{kind}' column: the {kind}s come from '{column}' (data.{kind}_column chooses another)"
        assert (said in notes) == (column != kind and not data)


def test_rows_that_hold_the_configured_columns_keep_them_beside_rows_under_another_spelling(tmp_path):
    path = tmp_path / "d.jsonl"  # two sources concatenated: their rows spell the columns differently
    rows = [{"sentence": "first half", "sentiment": "pos"}, {"text": "second half", "label": "neg"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = TASK.read_source(str(path), load_config(None, {}))
    assert [(r["text"], r["label"]) for r in got] == [("first half", "pos"), ("second half", "neg")]


def test_a_row_missing_a_text_column_found_under_another_spelling_is_named_not_trained_empty(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"review": f"film {i}", "label": i % 2} for i in range(6)] + [{"title": "x", "label": 1}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, {})
    got = TASK.read_source(str(path), cfg)
    assert [r.get("text") for r in got] == [f"film {i}" for i in range(6)] + [None]
    assert TASK.row_problem(got[-1], cfg).startswith(  # the file's own name for the column, as its first row has it
        "column 'review' is missing (columns: title, label (the first row's columns name every row's)")
    path.write_text(json.dumps({"premise": "a", "hypothesis": "b", "label": 1}) + "\n"  # a pair file, likewise
                    + json.dumps({"sentence1": "a", "sentence2": "b", "label": 1}) + "\n")
    got = TASK.read_source(str(path), cfg)
    assert TASK.row_problem(got[-1], cfg).startswith("column 'premise' is missing (columns: sentence1, sentence2")


@pytest.mark.parametrize("first, second", [("sentence1", "sentence2"), ("premise", "hypothesis"),
                                           ("question1", "question2"), ("question", "sentence")])
def test_a_common_text_pair_is_found_and_recorded_as_the_pair_column(tmp_path, first, second):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({first: f"a {i}", second: f"b {i}", "label": i % 2}) + "\n" for i in range(4)))
    cfg = load_config(None, {})
    rows = TASK.read_source(str(path), cfg)
    assert cfg.data.text_pair_column == second  # saved with the run: predict asks for the second texts
    assert [TASK.input_text(r, cfg) for r in rows] == [f"a {i}\x1fb {i}" for i in range(4)]
    again = TASK.read_source(str(path), cfg)  # a second file (validation, test) of the same layout
    assert [TASK.input_text(r, cfg) for r in again] == [f"a {i}\x1fb {i}" for i in range(4)]
    named = load_config(None, {"data": {"text_column": first}})  # a column named by the user: no guessing
    assert TASK.read_source(str(path), named) and named.data.text_pair_column is None
    plain = load_config(None, {})  # a text column present: a single-text run, whatever else the rows hold
    path.write_text(json.dumps({"text": "t", first: "a", second: "b", "label": 0}) + "\n")
    assert TASK.read_source(str(path), plain) and plain.data.text_pair_column is None


def test_two_common_spellings_are_ambiguous_and_the_error_names_the_columns(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("sentence,review,label\n" + "".join(f"a {i},b {i},{i % 2}\n" for i in range(20)))
    cfg = load_config(None, {"data": {"dataset": str(path)}})
    with pytest.raises(ConfigError, match="column 'text' not found; columns are 'sentence', 'review', 'label'"):
        prepare(cfg, TASK, word_tokenizer())


def _files(tmp_path, **rows):
    for name, items in rows.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    return {f"{name}_file": str(tmp_path / f"{name}.jsonl") for name in rows}


def test_a_missing_column_is_named_among_the_files_own_columns(tmp_path):
    """A test file spelling its texts 'review' and its labels 'stars': the error names 'label' (missing) and the
    file's columns, not the 'text' copy made of 'review'."""
    rows = [{"text": f"a {i}", "label": i % 2} for i in range(20)]
    files = _files(tmp_path, train=rows, validation=rows[:4], test=[{"review": "b", "stars": 1}] * 4)
    with pytest.raises(ConfigError, match=r"test\.jsonl: column 'label' not found; columns are 'review', 'stars' "):
        prepare(load_config(None, {"data": files}), TASK, word_tokenizer())


def test_a_later_file_of_a_pair_run_missing_its_second_text_is_named_so(tmp_path):
    pair = [{"premise": f"a {i}", "hypothesis": f"b {i}", "label": i % 2} for i in range(20)]
    files = _files(tmp_path, train=pair, validation=[{"premise": "c", "label": 0}] * 4, test=pair[:4])
    with pytest.raises(ConfigError, match=r"validation\.jsonl: column 'hypothesis' not found; columns are "
                                          r"'premise', 'label' "):
        prepare(load_config(None, {"data": files}), TASK, word_tokenizer())


def test_a_later_file_of_a_pair_run_spelling_another_pair_names_the_runs_first_text(tmp_path):
    """It named 'text', which no file of the run had, and advised data.text_column."""
    pair = [{"sentence1": f"a {i}", "sentence2": f"b {i}", "label": i % 2} for i in range(20)]
    other = [{"premise": "c", "hypothesis": "d", "label": 0}] * 4
    files = _files(tmp_path, train=pair, validation=pair[:4], test=other)
    with pytest.raises(ConfigError, match=r"test\.jsonl: column 'sentence1' not found; columns are 'premise', "
                                          r"'hypothesis', 'label' "):
        prepare(load_config(None, {"data": files}), TASK, word_tokenizer())


def test_a_named_text_column_is_never_guessed_in_a_later_file(tmp_path):
    rows = [{"claim": f"a {i}", "hypothesis": f"b {i}", "label": i % 2} for i in range(20)]
    other = [{"premise": "c", "hypothesis": "d", "label": 0}] * 4
    files = _files(tmp_path, train=rows, validation=other, test=rows[:4])
    cfg = load_config(None, {"data": {**files, "text_column": "claim", "text_pair_column": "hypothesis"}})
    with pytest.raises(ConfigError, match=r"validation\.jsonl: column 'claim' not found; columns are 'premise'"):
        prepare(cfg, TASK, word_tokenizer())


def _prepare(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return prepare(load_config(None, {"data": {"dataset": str(path)}}), TASK, word_tokenizer())


def test_a_list_label_is_refused_as_multi_label(tmp_path):
    rows = [{"text": f"t {i}", "label": ["a", "b"] if i == 3 else "a"} for i in range(20)]
    with pytest.raises(ConfigError, match=r"row 4: the label \(column 'label'\) is a list; .*multi-label"):
        _prepare(tmp_path, rows)


def test_a_list_written_as_text_is_one_class_with_a_note(tmp_path, capsys):
    rows = [{"text": f"t {i}", "label": ["[0, 2]", "[0, 10]", "a"][i % 3]} for i in range(30)]  # bins or lists
    assert _prepare(tmp_path, rows)[1].meta["labels"] == ["[0, 10]", "[0, 2]", "a"]
    assert "labels such as '[0, 10]' look like lists; each is one class of its own" in capsys.readouterr().err


@pytest.mark.parametrize("column, value, message", [
    ("label", {"name": "a"}, r"row 4: the label \(column 'label'\) is an object; .*multi-label"),
    ("text", {"body": "t"}, r"row 4: the text \(column 'text'\) is an object, not a string"),
    ("text", ["t", "u"], r"row 4: the text \(column 'text'\) is a list, not a string"),
])
def test_an_object_or_list_where_a_text_or_label_belongs_is_refused(tmp_path, column, value, message):
    rows = [{"text": f"t {i}", "label": "ab"[i % 2], **({column: value} if i == 3 else {})} for i in range(20)]
    with pytest.raises(ConfigError, match=message):
        _prepare(tmp_path, rows)


def test_the_first_text_of_a_known_pair_chosen_alone_says_the_second_is_unused(tmp_path, capsys):
    rows = [{"premise": f"p {i}", "hypothesis": f"h {i}", "label": "ab"[i % 2]} for i in range(20)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, {"data": {"dataset": str(path), "text_column": "premise"}})
    assert TASK.read_source(str(path), cfg)[0]["premise"] == "p 0" and cfg.data.text_pair_column is None
    assert "also has 'hypothesis'" in capsys.readouterr().err
    paired = load_config(None, {"data": {"dataset": str(path), "text_column": "premise",
                                         "text_pair_column": "hypothesis"}})
    TASK.read_source(str(path), paired)
    assert "also has" not in capsys.readouterr().err


def test_one_label_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"d\.jsonl: column 'label' has a single label \(a\)"):
        _prepare(tmp_path, [{"text": f"t {i}", "label": "a"} for i in range(20)])


def test_a_sample_too_small_for_the_labels_names_data_max_examples(tmp_path):
    """It blamed the data file ('has a single label') or a validation row's label, not the setting."""
    rows = [{"text": f"t {i}", "label": "abc"[i % 3]} for i in range(30)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "v.jsonl").write_text("".join(json.dumps({"text": f"v {i}", "label": "ab"[i]}) + "\n" for i in (0, 1)))
    for data, message in (({"dataset": str(tmp_path / "d.jsonl"), "max_examples": 1}, "has a single label"),
                          ({"train_file": str(tmp_path / "d.jsonl"), "validation_file": str(tmp_path / "v.jsonl"),
                            "max_examples": 1}, "has a single label")):
        with pytest.raises(ConfigError, match=message + r".*\(data\.max_examples=1 trains on a sample of 1 rows"):
            prepare(load_config(None, {"data": data}), TASK, word_tokenizer())


def test_labels_that_are_nearly_all_different_are_refused_as_regression(tmp_path):
    rows = [{"text": f"text {i}", "label": round(0.01 * i, 2)} for i in range(60)]
    with pytest.raises(ConfigError, match="holds 60 different labels in 60 examples; .*regression"):
        _prepare(tmp_path, rows)
    many = [{"text": f"text {i}", "label": f"intent {i % 25}"} for i in range(100)]  # 25 labels, 4 each: fine
    splits, data = _prepare(tmp_path, many, "many.jsonl")
    assert len(data.meta["labels"]) == 25
    few = [{"text": f"text {i}", "label": f"intent {i % 30}"} for i in range(90)]  # 3 each: 1 of each trains
    splits, data = _prepare(tmp_path, few, "few.jsonl")
    assert len(data.meta["labels"]) == 30 and len(data.train) == 30


def test_one_class_however_its_label_is_spelled(tmp_path):
    spellings = [[1, "1", 1.0, " 1", "1.0"], [0, "0 ", 0.0, "0", "0.00"]]  # pandas: a column with a gap is float
    rows = [{"text": f"text {i}", "label": spellings[i % 2][i // 2 % 5]} for i in range(100)]
    _, data = _prepare(tmp_path, rows)
    assert data.meta["labels"] == ["0", "1"]
    for split in (data.train, data.validation, data.test):
        assert {e["labels"] for e in split} <= {0, 1}
    words = [{"text": f"w {i}", "label": [" good", "good", "bad ", "bad"][i % 4]} for i in range(40)]
    assert _prepare(tmp_path, words, "w.jsonl")[1].meta["labels"] == ["bad", "good"]
    ratings = [{"text": f"r {i}", "label": ["1.5", "2.0", "10.", "+3.0"][i % 4]} for i in range(40)]
    assert _prepare(tmp_path, ratings, "r.jsonl")[1].meta["labels"] == ["1.5", "10", "2", "3"]
    odd = [{"text": f"o {i}", "label": ["①", "²", "--1", "٢.0", "01.0"][i % 5]} for i in range(50)]  # not int()'s
    assert _prepare(tmp_path, odd, "o.jsonl")[1].meta["labels"] == sorted(["①", "²", "--1", "٢.0", "01.0"])


def test_a_test_file_whose_rows_all_repeat_training_rows_is_refused(tmp_path):
    rows = "".join(json.dumps({"text": f"t {i}", "label": "ab"[i % 2]}) + "\n" for i in range(20))
    (tmp_path / "train.jsonl").write_text(rows)
    (tmp_path / "test.jsonl").write_text(rows)
    cfg = load_config(None, {"data": {"train_file": str(tmp_path / "train.jsonl"),
                                      "test_file": str(tmp_path / "test.jsonl")}})
    with pytest.raises(ConfigError, match=r"test\.jsonl: every row repeats an example of data\.train_file, so "
                                          "nothing would be left to test on"):
        prepare(cfg, TASK, word_tokenizer())
    other = "".join(json.dumps({"text": f"v {i}", "label": "ab"[i % 2]}) + "\n" for i in range(20))
    (tmp_path / "test.jsonl").write_text(other)  # the same file for validation and test: named as such
    cfg = load_config(None, {"data": {"train_file": str(tmp_path / "train.jsonl"),
                                      "validation_file": str(tmp_path / "test.jsonl"),
                                      "test_file": str(tmp_path / "test.jsonl")}})
    with pytest.raises(ConfigError, match=r"test\.jsonl: every row repeats an example of data\.validation_file, "
                                          "so nothing would be left to test on; give examples that "
                                          r"data\.validation_file does not hold"):
        prepare(cfg, TASK, word_tokenizer())
    (tmp_path / "val.jsonl").write_text(other)  # test rows repeating validation's and training's: both named
    (tmp_path / "test.jsonl").write_text(other + rows[:rows.index("\n") + 1])
    cfg = load_config(None, {"data": {"train_file": str(tmp_path / "train.jsonl"),
                                      "validation_file": str(tmp_path / "val.jsonl"),
                                      "test_file": str(tmp_path / "test.jsonl")}})
    with pytest.raises(ConfigError, match=r"test\.jsonl: every row repeats an example of data\.train_file or "
                                          r"data\.validation_file, so"):
        prepare(cfg, TASK, word_tokenizer())


def test_labels_differing_only_in_case_stay_classes_with_a_note(tmp_path, capsys):
    _, data = _prepare(tmp_path, [{"text": f"t {i}", "label": ["good", "Good", "bad"][i % 3]} for i in range(30)])
    assert data.meta["labels"] == ["Good", "bad", "good"]
    assert "labels 'Good' and 'good' differ only in case" in capsys.readouterr().err
    _prepare(tmp_path, [{"text": f"t {i}", "label": ["good", "bad"][i % 2]} for i in range(30)], "plain.jsonl")
    assert "differ only in case" not in capsys.readouterr().err


def test_rows_skipped_by_the_runs_skip_invalid_are_counted_aloud(tmp_path, capsys):
    from tuneforge.data.dataset import source_records
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": f"t {i}", "label": "" if i in (2, 5) else "ab"[i % 2]}) + "\n"
                            for i in range(10)))
    cfg = load_config(None, {"data": {"dataset": str(path), "skip_invalid": True}})
    records, where = source_records(TASK, str(path), cfg, training=False)
    assert len(records) == 8 and where[2] == f"{path}, row 4"
    assert f"note: {path}: 2 invalid row(s) skipped" in capsys.readouterr().err


def test_a_prediction_line_shows_every_class_of_a_few_and_the_likeliest_of_many():
    task = get("classification")
    few = {"text": "t", "label": "b", "probabilities": {"a": 0.25, "b": 0.75}}
    assert task.describe(few) == "b\ta=0.250  b=0.750\tt"
    many = {"text": "t", "label": "c7", "probabilities": {f"c{i}": i / 28 for i in range(8)}}
    assert task.describe(many) == "c7\tc7=0.250  c6=0.214  c5=0.179  c4=0.143  c3=0.107  (+3 more)\tt"


def test_max_examples_of_a_training_file_keeps_every_class(tmp_path):
    """40 of 200 rows of 20 classes, the validation rows drawn from the same file first: the sample lost classes
    and the run stopped, blaming the file for labels 'never seen in training'."""
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"text": f"text {i}", "label": f"c{i % 20}"}) + "\n" for i in range(200)))
    cfg = load_config(None, {"data": {"train_file": str(path), "max_examples": 40, "split": [0.8, 0.1, 0.1]}})
    splits, data = prepare(cfg, TASK, word_tokenizer())
    assert len(data.train) == 40 and len(data.meta["labels"]) == 20


@torch.no_grad()
def test_the_evaluation_loss_is_the_cross_entropy_of_the_logits_however_confident():
    """The log of softmax probabilities clipped at 1e-12 capped each example's loss at 27.6: a confidently wrong
    model's loss was understated (16.3 for what cross-entropy puts at 22.5)."""
    from conftest import tiny_classifier
    from tuneforge.config import RunConfig
    from tuneforge.tasks import Runtime

    model = tiny_classifier("bert")
    model.classifier.weight.mul_(1e4)  # logits of hundreds
    ids = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]]
    logits = torch.cat([model(input_ids=torch.tensor([i])).logits for i in ids])  # (3, 2), one at a time
    wrong = logits.argmin(-1)  # each example labelled with the class the model rules out
    examples = [{"input_ids": i, "attention_mask": [1] * len(i), "labels": int(y)} for i, y in zip(ids, wrong)]
    rt = Runtime(device=torch.device("cpu"), bf16=False, pad_id=0)
    metrics = TASK.evaluate(model, examples, rt, RunConfig(), {"labels": ["a", "b"]})
    expected = torch.nn.functional.cross_entropy(logits, wrong)
    assert expected > 30  # beyond the old cap
    assert metrics["loss"] == pytest.approx(float(expected), rel=1e-4) and metrics["accuracy"] == 0
