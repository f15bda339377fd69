"""Trustworthy results, checked through the command line (``tuneforge.cli.main`` in-process): every bad input
gets exit status 2 and one line ``tuneforge: error: ...`` naming the file/row/column and the fix, no traceback,
and leaves no run directory or output folder created or changed; the split is stored with the run;
duplicates never cross splits; replay never draws held-out rows; runs are portable across devices and
``evaluate RUN_DIR`` reproduces the run's own test metrics."""
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lm_helpers import model_folder, single_thread, write_pairs
from tiny import model_dir, sentiment_rows
from tuneforge.cli import main as cli_main


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():  # tiny models: one thread is faster on a shared 2-core machine
        yield


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default run directory (runs/...) would land here


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return model_dir(tmp_path_factory.mktemp("bert"), "bert")


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    pd.DataFrame(sentiment_rows(80)).to_csv(path, index=False)
    return path


TINY = ["-q", "train.max_steps=2", "train.batch_size=16", "model.max_length=32", "method.rank=2",
        "eval.before=false"]


def _train_argv(model, data, out, *extra, method="lora"):
    argv = ["train", "--model", str(model), "--data", str(data), "-o", str(out), "--method", method, *TINY, *extra]
    return [a for a in argv if not (method != "lora" and a == "method.rank=2")]


@pytest.fixture(scope="module")
def lora_run(bert, reviews, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lora"
    assert main(_train_argv(bert, reviews, out)) == 0
    return out


def main(argv) -> int:
    return cli_main([str(a) for a in argv])


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for folders): what "unchanged" compares."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def one_error(capsys, argv, *needles):
    """Run the CLI: exit 2, exactly one stderr line 'tuneforge: error: ...' holding every needle, no traceback."""
    capsys.readouterr()
    before = snapshot(Path.cwd())  # each test's own folder: its inputs, outputs and default runs/ folder
    code = main(argv)
    captured = capsys.readouterr()
    assert snapshot(Path.cwd()) == before, "a failed command created or changed files"
    err = captured.err.strip()
    assert code == 2, (code, captured.err)
    assert "Traceback" not in captured.err + captured.out
    assert len(err.splitlines()) == 1 and err.startswith("tuneforge: error:"), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- 2. every row is checked before anything is created --------------------------------------------------

def test_blank_label_on_a_csv_row_names_file_row_and_column(bert, tmp_path, capsys):
    rows = sentiment_rows(40)
    rows[26]["label"] = " "
    pd.DataFrame(rows).to_csv(tmp_path / "blank.csv", index=False)
    one_error(capsys, _train_argv(bert, tmp_path / "blank.csv", tmp_path / "run"),
              "blank.csv, row 27", "column 'label'", "blank", "data.skip_invalid=true")
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_missing_label_on_a_later_jsonl_row(bert, tmp_path, capsys):
    rows = sentiment_rows(40)
    del rows[33]["label"]
    one_error(capsys, _train_argv(bert, _jsonl(tmp_path / "d.jsonl", rows), tmp_path / "run"),
              "d.jsonl, row 34", "column 'label' is missing")
    assert not (tmp_path / "run").exists()


def test_missing_text_column_on_a_later_row(bert, tmp_path, capsys):
    rows = sentiment_rows(40)
    rows[21] = {"review": rows[21]["text"], "label": rows[21]["label"]}
    one_error(capsys, _train_argv(bert, _jsonl(tmp_path / "d.jsonl", rows), tmp_path / "run"),
              "d.jsonl, row 22", "column 'text' is missing", "data.text_column")
    assert not (tmp_path / "run").exists()


def test_label_of_a_test_file_unseen_in_training(bert, tmp_path, capsys):
    pd.DataFrame(sentiment_rows(40)).to_csv(tmp_path / "train.csv", index=False)
    test = sentiment_rows(6, seed=7)
    test[2]["label"] = "neutral"
    pd.DataFrame(test).to_csv(tmp_path / "test.csv", index=False)
    argv = _train_argv(bert, tmp_path / "train.csv", tmp_path / "run", f"data.train_file={tmp_path / 'train.csv'}",
                       f"data.test_file={tmp_path / 'test.csv'}")
    one_error(capsys, argv, "test.csv, row 3", "label 'neutral'", "column 'label'", "not seen in training")
    assert not (tmp_path / "run").exists()
    assert main(argv + ["data.skip_invalid=true"]) == 0  # or the row is left out and counted
    assert "| invalid rows skipped |  | 1 |" in capsys.readouterr().out
    stored = json.loads((tmp_path / "run" / "split.json").read_text())
    assert stored["skipped_invalid"] == 1 and [1, 2] not in stored["test"] and len(stored["test"]) == 5


def test_empty_texts_warn_with_their_count_and_the_run_trains(bert, tmp_path, capsys):
    rows = sentiment_rows(40)
    rows[5]["text"], rows[11]["text"] = "", "   "
    rows[17]["text"] = None  # JSON null: an empty text too, never the word "None"
    assert main(_train_argv(bert, _jsonl(tmp_path / "d.jsonl", rows), tmp_path / "run")) == 0
    err = capsys.readouterr().err
    assert "warning: 3 example(s) have an empty text" in err and "Traceback" not in err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["examples"]["empty_texts"] == 3
    from tuneforge.run import resolve_config
    from tuneforge.tasks.classification import Task
    from tuneforge.models import load_tokenizer
    cfg = resolve_config({"model": {"max_length": 32}})
    enc = Task().encode([rows[17], {"text": "", "label": "positive"}], cfg, load_tokenizer(bert), {"labels":
                        ["negative", "positive"]}, ["row 18", "x"])
    assert enc[0]["input_ids"] == enc[1]["input_ids"] == [3]  # no special tokens added: one end-of-text token


def test_skip_invalid_rows_are_left_out_and_counted(bert, tmp_path, capsys):
    rows = sentiment_rows(40)
    rows[3]["label"] = ""
    del rows[9]["text"]
    rows[30]["label"] = None
    out = tmp_path / "run"
    assert main(_train_argv(bert, _jsonl(tmp_path / "d.jsonl", rows), out, "data.skip_invalid=true")) == 0
    captured = capsys.readouterr()
    assert "| invalid rows skipped |  | 3 |" in captured.out
    assert "warning: 3 invalid row(s) skipped" in captured.err
    examples = json.loads((out / "metrics.json").read_text())["examples"]
    assert examples["skipped_invalid"] == 3
    assert examples["train"] + examples["validation"] + examples["test"] == 37
    stored = json.loads((out / "split.json").read_text())
    used = {r for k in ("train", "validation", "test") for _, r in stored[k]}
    assert not used & {3, 9, 30} and stored["skipped_invalid"] == 3


def test_non_utf8_yaml_config(bert, tmp_path, capsys):
    (tmp_path / "run.yaml").write_bytes(b"model:\n  name: caf\xe9\n")
    one_error(capsys, ["train", "-c", tmp_path / "run.yaml", "-o", tmp_path / "run"], "run.yaml", "not UTF-8")
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_non_mapping_yaml_config(bert, tmp_path, capsys):
    (tmp_path / "run.yaml").write_text("- lora\n- full\n")
    one_error(capsys, ["train", "-c", tmp_path / "run.yaml", "-o", tmp_path / "run"], "run.yaml",
              "top level must be a mapping")
    assert not (tmp_path / "run").exists()


def test_max_length_beyond_the_model_positions(bert, reviews, tmp_path, capsys):
    one_error(capsys, _train_argv(bert, reviews, tmp_path / "run", "model.max_length=100"),
              "model.max_length=100 exceeds the 64 positions", "set model.max_length to 64 or less")
    assert not (tmp_path / "run").exists()


def test_missing_model_path(reviews, tmp_path, capsys):
    one_error(capsys, _train_argv(tmp_path / "no-model", reviews, tmp_path / "run"), "no-model")
    assert not (tmp_path / "run").exists()


def test_missing_data_file(bert, tmp_path, capsys):
    one_error(capsys, _train_argv(bert, tmp_path / "missing.csv", tmp_path / "run"),
              f"data file {tmp_path / 'missing.csv'} does not exist")
    assert not (tmp_path / "run").exists()


def test_run_directory_of_an_incompatible_run_format(lora_run, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(lora_run, old)
    meta = json.loads((old / "meta.json").read_text())
    (old / "meta.json").write_text(json.dumps({**meta, "run_format": 1}))
    before = snapshot(old)
    for argv in (["evaluate", old], ["predict", old, "a good film"], ["merge", old, tmp_path / "merged"]):
        one_error(capsys, argv, str(old), "run format 1", "retrain the run")
    assert snapshot(old) == before and not (tmp_path / "merged").exists()


# ---- 4. nothing lost, nothing clobbered --------------------------------------------------------------------

def test_overwrite_refuses_a_folder_tuneforge_did_not_make(bert, reviews, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    before = snapshot(mine)
    one_error(capsys, _train_argv(bert, reviews, mine, "--overwrite"), "not made by tuneforge", "choose another")
    one_error(capsys, _train_argv(bert, reviews, mine), "already exists", "--overwrite")
    assert snapshot(mine) == before


def test_overwrite_replaces_a_tuneforge_run(bert, reviews, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train_argv(bert, reviews, out)) == 0
    (out / "notes.txt").write_text("old run")
    assert main(_train_argv(bert, reviews, out, "train.max_steps=3", "--overwrite")) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 3 and not (out / "notes.txt").exists()


def test_overwrite_keeps_the_old_run_when_the_new_one_fails_before_training(bert, reviews, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train_argv(bert, reviews, out)) == 0
    one_error(capsys, _train_argv(bert, reviews, out, "--overwrite", "forgetting.replay.data=missing.csv",
                                  "forgetting.replay.ratio=0.5"), "data file missing.csv does not exist")
    assert main(["evaluate", out]) == 0  # the replaced run is back, whole (one_error compared every byte)


def test_merge_of_a_run_that_cannot_merge_leaves_the_output_untouched(bert, reviews, tmp_path, capsys):
    run = tmp_path / "adapter"
    assert main(_train_argv(bert, reviews, run, "train.max_steps=1", method="adapter")) == 0
    out = tmp_path / "merged"
    from tuneforge.files import fresh_folder
    fresh_folder(out, False, "merged")  # an earlier merge: tuneforge's own, so --overwrite could replace it
    (out / "config.json").write_text("{}")
    before = snapshot(out)
    one_error(capsys, ["merge", run, out, "--overwrite"], "method 'adapter' cannot be merged")
    assert snapshot(out) == before


def test_peft_export_of_a_run_without_a_peft_form_leaves_no_folder(bert, reviews, tmp_path, capsys):
    run = tmp_path / "bitfit"
    assert main(_train_argv(bert, reviews, run, "train.max_steps=1", method="bitfit")) == 0
    one_error(capsys, ["export", run, tmp_path / "peft", "--format", "peft"], "method 'bitfit' cannot export to PEFT",
              "tuneforge merge")
    assert not (tmp_path / "peft").exists()


# ---- 1. the split belongs to the run -----------------------------------------------------------------------

def test_evaluate_refuses_when_the_source_changed_and_uses_data_given(bert, tmp_path, capsys):
    data = tmp_path / "d.csv"
    pd.DataFrame(sentiment_rows(60)).to_csv(data, index=False)
    run = tmp_path / "run"
    assert main(_train_argv(bert, data, run)) == 0
    capsys.readouterr()
    assert main(["evaluate", run]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == len(json.loads((run / "split.json").read_text())["test"])
    pd.DataFrame(sentiment_rows(5, seed=3)).to_csv(data, mode="a", header=False, index=False)
    one_error(capsys, ["evaluate", run], str(data), "changed since training", "--data FILE")
    assert main(["evaluate", run, "--data", data]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 65
    data.rename(tmp_path / "moved.csv")
    one_error(capsys, ["evaluate", run], f"data file {data} does not exist", "--data FILE")


def test_duplicates_never_end_up_in_two_splits(bert, tmp_path, capsys):
    rows = sentiment_rows(60)
    copies = [{"text": "  " + r["text"].replace(" ", "   ") + " ", "label": r["label"]} for r in rows[:20]]
    copies += [{"text": r["text"].replace(" ", "\t"), "label": r["label"]} for r in rows[:10]]
    data = tmp_path / "d.csv"
    pd.DataFrame(rows + copies).to_csv(data, index=False)
    texts = [" ".join(r["text"].split()) for r in rows + copies]
    expected = len(texts) - len(set(texts))
    run = tmp_path / "run"
    assert main(_train_argv(bert, data, run)) == 0
    captured = capsys.readouterr()
    assert f"note: the data holds {expected} duplicate example(s)" in captured.err
    assert f"| duplicate examples (kept in one split) |  | {expected} |" in captured.out
    stored = json.loads((run / "split.json").read_text())
    assert stored["duplicates"] == expected >= 30
    where = {k: {texts[r] for _, r in stored[k]} for k in ("train", "validation", "test")}
    assert not where["train"] & where["validation"] and not where["train"] & where["test"]
    assert not where["validation"] & where["test"]
    assert sum(len(stored[k]) for k in ("train", "validation", "test")) == len(texts)  # every copy kept


def test_replay_of_the_tasks_own_data_never_draws_its_validation_or_test_rows(bert, reviews, tmp_path, monkeypatch):
    from tuneforge.forgetting import pipeline
    from tuneforge.run import Run

    drawn = {}

    def spy(train_examples, pool, ratio, seed=0):
        drawn.update(train=list(train_examples), pool=list(pool))
        return original(train_examples, pool, ratio, seed)

    original = pipeline.mix
    monkeypatch.setattr(pipeline, "mix", spy)
    run = tmp_path / "run"
    assert main(_train_argv(bert, reviews, run, f"forgetting.replay.data={reviews}", "forgetting.replay.ratio=0.5")) == 0
    held = Run(run, "cpu").prepared()
    held = {tuple(e["input_ids"]) for e in held.validation + held.test}
    assert held and drawn["pool"] and len(drawn["pool"]) == 80 - len(held)  # the rest of the file: replayable
    assert not any(tuple(e["input_ids"]) in held for e in drawn["pool"])
    examples = json.loads((run / "metrics.json").read_text())["examples"]
    assert examples["trained_per_epoch"] == 2 * examples["train"]  # ratio 0.5: as many replayed as own examples


def test_stratified_split_keeps_every_class_of_three_and_names_the_smaller_ones(capsys):
    from tuneforge import tasks
    from tuneforge.data.dataset import load_splits
    from tuneforge.run import resolve_config

    words = "good great fine love best fun happy nice bad awful boring hate".split()
    pairs = [f"{a} {b}" for a in words for b in words][:120]
    rows = [{"text": text, "label": "big" if i < 60 else "mid"} for i, text in enumerate(pairs)]
    rows += [{"text": f"three {i}", "label": "three"} for i in range(3)]
    rows += [{"text": f"pair {i}", "label": "pair"} for i in range(2)]
    rows += [{"text": "single", "label": "single"}]
    path = Path("strata.csv")
    pd.DataFrame(rows).to_csv(path, index=False)
    for fractions in ([0.8, 0.1, 0.1], [0.4, 0.3, 0.3]):
        cfg = resolve_config({"data": {"dataset": str(path), "split": fractions}})
        capsys.readouterr()
        splits = load_splits(cfg, tasks.get("classification"))
        err = capsys.readouterr().err
        labels = {k: {r["label"] for r in splits.records[k]} for k in ("train", "validation", "test")}
        assert all({"big", "mid", "three"} <= labels[k] for k in labels), (fractions, labels)
        assert {"pair", "single"} <= labels["train"]  # a class too small for every split is trained on
        assert "warning:" in err and "pair" in err and "single" in err and "three" not in err


# ---- 5. portable runs, metrics reproduced ----------------------------------------------------------------

def test_a_cuda_bf16_run_loads_and_evaluates_on_a_cpu_only_machine(lora_run, tmp_path, capsys):
    import torch

    from tuneforge.run import Run

    if torch.cuda.is_available():
        pytest.skip("checks a CPU-only machine")
    moved = tmp_path / "from-gpu"
    shutil.copytree(lora_run, moved)
    cfg = yaml.safe_load((moved / "config.yaml").read_text())
    cfg["train"].update(device="cuda", precision="bf16")
    (moved / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    run = Run(moved, device="cpu")
    assert run.device.type == "cpu" and run.predict(["the movie was great"])[0]["label"] in ("positive", "negative")
    expected = json.loads((lora_run / "metrics.json").read_text())["test_after"]["accuracy"]
    assert run.evaluate()["accuracy"] == pytest.approx(expected, abs=0.002)
    for device in ("cpu", "auto"):
        capsys.readouterr()
        assert main(["evaluate", str(moved), "--device", device]) == 0
        assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(expected, abs=0.002)
        assert main(["predict", str(moved), "--device", device, "a dull film"]) == 0
    one_error(capsys, ["train", "--resume", moved], "finished")


def test_evaluate_reproduces_the_classification_metrics_of_the_run(bert, reviews, tmp_path, capsys):
    run = tmp_path / "run"  # default precision (auto): the same precision path as training
    assert main(["train", "--model", bert, "--data", reviews, "-o", run, "-q", "train.max_steps=4",
                 "model.max_length=32", "train.lr=5e-3", "eval.before=false"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    got = json.loads(capsys.readouterr().out)
    stored = json.loads((run / "metrics.json").read_text())["test_after"]
    assert got["accuracy"] == stored["accuracy"] and got["n"] == stored["n"]
    assert got["loss"] == pytest.approx(stored["loss"], rel=1e-5)


def test_evaluate_reproduces_the_perplexity_of_a_causal_lm_run(tmp_path, capsys):
    folder = model_folder(tmp_path / "llama", "llama")
    run = tmp_path / "run"
    assert main(["train", "--model", folder, "--task", "causal_lm", "--data", write_pairs(tmp_path / "p.jsonl", 2),
                 "-o", run, "-q", "train.max_steps=3", "train.batch_size=8", "train.lr=1e-2", "model.max_length=32",
                 "method.rank=4", "eval.before=false", "eval.generate_samples=0"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    got = json.loads(capsys.readouterr().out)
    stored = json.loads((run / "metrics.json").read_text())["test_after"]
    assert got["perplexity"] == pytest.approx(stored["perplexity"], rel=0.005)
    assert got["tokens"] == stored["tokens"]


def test_a_split_left_empty_is_named_before_training(tmp_path):
    """Two examples (one per label) at the default 80/10/10 split leave validation and test empty: both are said;
    a data set large enough for every split says nothing of the kind."""
    from tiny import word_tokenizer
    from tuneforge.config import load_config
    from tuneforge.data.dataset import prepare, warnings
    from tuneforge.tasks import get

    def said(n):
        path = _jsonl(tmp_path / f"d{n}.jsonl", sentiment_rows(n))
        cfg = load_config(None, {"data": {"dataset": str(path)}})
        splits, _ = prepare(cfg, get("classification"), word_tokenizer())
        return " ".join(warnings(splits))

    assert "no validation examples" in said(2) and "no test examples: nothing will be evaluated" in said(2)
    assert "no validation" not in said(40) and "no test" not in said(40)
