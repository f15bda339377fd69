"""Bad input through the command line (``tuneforge.cli.main`` in-process): every bad row, file or setting gets exit
status 2 and one line ``tuneforge: error: ...`` naming the file/row/column and the fix, no traceback, and leaves no
run directory or output folder created or changed; nothing is lost or clobbered."""
import json
import shutil

import pandas as pd
import pytest

from .cli_checks import jsonl, main, one_error, snapshot, train_argv
from tiny import sentiment_rows


# ---- 2. every row is checked before anything is created --------------------------------------------------

def test_blank_label_on_a_csv_row_names_file_row_and_column(bert_dir, tmp_path, capsys):
    rows = sentiment_rows(40)
    rows[26]["label"] = " "
    pd.DataFrame(rows).to_csv(tmp_path / "blank.csv", index=False)
    one_error(capsys, train_argv(bert_dir, tmp_path / "blank.csv", tmp_path / "run"),
              "blank.csv, row 27", "column 'label'", "blank", "data.skip_invalid=true")
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_missing_label_on_a_later_jsonl_row(bert_dir, tmp_path, capsys):
    rows = sentiment_rows(40)
    del rows[33]["label"]
    one_error(capsys, train_argv(bert_dir, jsonl(tmp_path / "d.jsonl", rows), tmp_path / "run"),
              "d.jsonl, row 34", "column 'label' is missing")
    assert not (tmp_path / "run").exists()


def test_missing_text_column_on_a_later_row(bert_dir, tmp_path, capsys):
    rows = sentiment_rows(40)
    rows[21] = {"review": rows[21]["text"], "label": rows[21]["label"]}
    one_error(capsys, train_argv(bert_dir, jsonl(tmp_path / "d.jsonl", rows), tmp_path / "run"),
              "d.jsonl, row 22", "column 'text' is missing", "data.text_column")
    assert not (tmp_path / "run").exists()


def test_label_of_a_test_file_unseen_in_training(bert_dir, tmp_path, capsys):
    pd.DataFrame(sentiment_rows(40)).to_csv(tmp_path / "train.csv", index=False)
    test = sentiment_rows(6, seed=7)
    test[2]["label"] = "neutral"
    pd.DataFrame(test).to_csv(tmp_path / "test.csv", index=False)
    argv = train_argv(bert_dir, tmp_path / "train.csv", tmp_path / "run", f"data.train_file={tmp_path / 'train.csv'}",
                       f"data.test_file={tmp_path / 'test.csv'}")
    one_error(capsys, argv, "test.csv, row 3", "label 'neutral'", "column 'label'", "not seen in training")
    assert not (tmp_path / "run").exists()
    assert main(argv + ["data.skip_invalid=true"]) == 0  # or the row is left out and counted
    assert "| invalid rows skipped |  | 1 |" in capsys.readouterr().out
    stored = json.loads((tmp_path / "run" / "split.json").read_text())
    assert stored["skipped_invalid"] == 1 and [1, 2] not in stored["test"] and len(stored["test"]) == 5


def test_empty_texts_warn_with_their_count_and_the_run_trains(bert_dir, tmp_path, capsys):
    rows = sentiment_rows(40)
    rows[5]["text"], rows[11]["text"] = "", "   "
    rows[17]["text"] = None  # JSON null: an empty text too, never the word "None"
    assert main(train_argv(bert_dir, jsonl(tmp_path / "d.jsonl", rows), tmp_path / "run")) == 0
    err = capsys.readouterr().err
    assert "warning: 3 example(s) have an empty text (the first: " in err and "Traceback" not in err
    assert "d.jsonl, row 6); they train as they are" in err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["examples"]["empty_texts"] == 3
    from tuneforge.run import resolve_config
    from tuneforge.tasks.classification import Task
    from tuneforge.models import load_tokenizer
    cfg = resolve_config({"model": {"max_length": 32}})
    enc = Task().encode([rows[17], {"text": "", "label": "positive"}], cfg, load_tokenizer(bert_dir), {"labels":
                        ["negative", "positive"]}, ["row 18", "x"])
    assert enc[0]["input_ids"] == enc[1]["input_ids"] == [3]  # no special tokens added: one end-of-text token


def test_skip_invalid_rows_are_left_out_and_counted(bert_dir, tmp_path, capsys):
    rows = sentiment_rows(40)
    rows[3]["label"] = ""
    del rows[9]["text"]
    rows[30]["label"] = None
    out = tmp_path / "run"
    assert main(train_argv(bert_dir, jsonl(tmp_path / "d.jsonl", rows), out, "data.skip_invalid=true")) == 0
    captured = capsys.readouterr()
    assert "| invalid rows skipped |  | 3 |" in captured.out
    assert "warning: 3 invalid row(s) skipped" in captured.err
    examples = json.loads((out / "metrics.json").read_text())["examples"]
    assert examples["skipped_invalid"] == 3
    assert examples["train"] + examples["validation"] + examples["test"] == 37
    stored = json.loads((out / "split.json").read_text())
    used = {r for k in ("train", "validation", "test") for _, r in stored[k]}
    assert not used & {3, 9, 30} and stored["skipped_invalid"] == 3


def test_non_utf8_yaml_config(bert_dir, tmp_path, capsys):
    (tmp_path / "run.yaml").write_bytes(b"model:\n  name: caf\xe9\n")
    one_error(capsys, ["train", "-c", tmp_path / "run.yaml", "-o", tmp_path / "run"], "run.yaml", "not UTF-8")
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_non_mapping_yaml_config(bert_dir, tmp_path, capsys):
    (tmp_path / "run.yaml").write_text("- lora\n- full\n")
    one_error(capsys, ["train", "-c", tmp_path / "run.yaml", "-o", tmp_path / "run"], "run.yaml",
              "top level must be a mapping")
    assert not (tmp_path / "run").exists()


def test_max_length_beyond_the_model_positions(bert_dir, reviews, tmp_path, capsys):
    one_error(capsys, train_argv(bert_dir, reviews, tmp_path / "run", "model.max_length=100"),
              "model.max_length=100 exceeds the 64 positions", "set model.max_length to 64 or less")
    assert not (tmp_path / "run").exists()
    one_error(capsys, train_argv(bert_dir, reviews, tmp_path / "run", "model.max_length=62",
                                 "method.num_virtual_tokens=3", method="prompt"),
              "model.max_length=62 + 3 virtual tokens exceeds the 64 positions", "set model.max_length to 61 or less")
    assert not (tmp_path / "run").exists()
    one_error(capsys, train_argv(bert_dir, reviews, tmp_path / "run", "model.max_length=62",  # no length would fit
                                 "method.num_virtual_tokens=64", method="prompt"),
              "method.num_virtual_tokens=64 leaves no position for real tokens", "method.num_virtual_tokens=20")
    assert not (tmp_path / "run").exists()


def test_missing_model_path(reviews, tmp_path, capsys):
    one_error(capsys, train_argv(tmp_path / "no-model", reviews, tmp_path / "run"), "no-model")
    assert not (tmp_path / "run").exists()


def test_missing_data_file(bert_dir, tmp_path, capsys):
    one_error(capsys, train_argv(bert_dir, tmp_path / "missing.csv", tmp_path / "run"),
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


def test_resume_of_a_file_and_a_commands_bad_device_say_what_they_are(lora_run, tmp_path, capsys):
    a_file = tmp_path / "config.json"
    a_file.write_text("{}")
    one_error(capsys, ["train", "--resume", a_file], "cannot resume", "it is a file; give the run directory")
    one_error(capsys, ["train", "--resume", ""], "--resume needs the run directory to continue")  # not '.'
    one_error(capsys, ["train", "--resume", "", "--lr", "1e-3"], "--resume continues a run with its own config")
    one_error(capsys, ["train", "--resume", lora_run, "--overwrite"], "--resume continues a run with its own config",
              "start it again without --resume")  # --overwrite was silently ignored
    one_error(capsys, ["predict", lora_run, "a good film", "--device", "bogus"], "--device: unknown device 'bogus'")
    one_error(capsys, ["predict", lora_run, "a good film", "--device", "mps"], "--device: device 'mps' is not "
              "supported; use auto, cpu or cuda")  # torch names it: a traceback on a machine without it


# ---- 4. nothing lost, nothing clobbered --------------------------------------------------------------------

@pytest.mark.parametrize("method, option, message", [
    ("lora", "method.target_modules=[nosuch]", "'nosuch' matches no linear layer"),
    ("freeze", "method.layer_indices=[99]", "method.layer_indices [99] out of range"),
])
def test_a_method_that_does_not_fit_the_model_fails_before_the_run_directory(bert_dir, reviews, tmp_path, capsys,
                                                                            monkeypatch, method, option, message):
    """It failed only after the run directory was made and the untrained model evaluated (on a real model, minutes
    of generation; a kill in between left a folder only --overwrite cleared)."""
    from tuneforge import run
    monkeypatch.setattr(run, "_before", lambda *a, **k: pytest.fail("evaluated before checking the method"))
    monkeypatch.setattr(run, "create_run_dir", lambda *a, **k: pytest.fail("created before checking"))
    one_error(capsys, train_argv(bert_dir, reviews, tmp_path / "run", option, method=method), message)


def test_overwrite_refuses_a_folder_tuneforge_did_not_make(bert_dir, reviews, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    before = snapshot(mine)
    one_error(capsys, train_argv(bert_dir, reviews, mine, "--overwrite"), "not made by tuneforge", "choose another")
    one_error(capsys, train_argv(bert_dir, reviews, mine), "already exists", "--overwrite")
    assert snapshot(mine) == before


def test_overwrite_replaces_a_tuneforge_run(bert_dir, reviews, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_argv(bert_dir, reviews, out)) == 0
    (out / "notes.txt").write_text("old run")
    assert main(train_argv(bert_dir, reviews, out, "train.max_steps=3", "--overwrite")) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 3 and not (out / "notes.txt").exists()


def test_overwrite_refuses_a_run_that_holds_the_new_runs_model_or_data(bert_dir, reviews, tmp_path, capsys,
                                                                      monkeypatch):
    """LoRA on a full run's model written over that run deleted the model it trained from (and a data file kept
    in the folder): the new run could never be loaded."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "full"
    assert main(train_argv(bert_dir, reviews, out, method="full")) == 0
    shutil.copy(reviews, out / "mine.csv")
    one_error(capsys, train_argv(out / "model", reviews, out, "--overwrite"),
              f"model.name={out / 'model'} lies inside {out}, which --overwrite would replace")
    one_error(capsys, train_argv(bert_dir, out / "mine.csv", out, "--overwrite"), "data.dataset=", "lies inside")
    assert main(["evaluate", out]) == 0


def test_resume_refuses_a_folder_train_did_not_make(bert_dir, reviews, tmp_path, capsys):
    """--resume where -c was meant turned a folder of the user's into a run and rewrote its config.yaml."""
    mine = tmp_path / "proj"
    mine.mkdir()
    (mine / "config.yaml").write_text(f"# my notes\nmodel: {{name: {bert_dir}, max_length: 32}}\n"
                                      f"data: {{dataset: {reviews}}}\n")
    before = snapshot(mine)
    one_error(capsys, ["train", "--resume", mine], f"cannot resume {mine}: it is not a run directory that "
              "`tuneforge train` made", f"use -c {mine}/config.yaml")
    assert snapshot(mine) == before


def test_overwrite_keeps_the_old_run_when_the_new_one_fails_before_training(bert_dir, reviews, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_argv(bert_dir, reviews, out)) == 0
    one_error(capsys, train_argv(bert_dir, reviews, out, "--overwrite", "forgetting.replay.data=missing.csv",
                                  "forgetting.replay.ratio=0.5"), "data file missing.csv does not exist")
    assert main(["evaluate", out]) == 0  # the replaced run is back, whole (one_error compared every byte)


def test_merge_of_a_run_that_cannot_merge_leaves_the_output_untouched(bert_dir, reviews, tmp_path, capsys):
    run = tmp_path / "adapter"
    assert main(train_argv(bert_dir, reviews, run, "train.max_steps=1", method="adapter")) == 0
    out = tmp_path / "merged"
    from tuneforge.files import fresh_folder
    fresh_folder(out, False, "merged")  # an earlier merge: tuneforge's own, so --overwrite could replace it
    (out / "config.json").write_text("{}")
    before = snapshot(out)
    one_error(capsys, ["merge", run, out, "--overwrite"], "method 'adapter' cannot be merged",
              "it has no PEFT form either")
    assert snapshot(out) == before


def test_merge_of_a_run_that_cannot_merge_but_exports_points_to_the_peft_export(bert_dir, reviews, tmp_path, capsys):
    run = tmp_path / "prompt"
    assert main(train_argv(bert_dir, reviews, run, "train.max_steps=1", method="prompt")) == 0
    one_error(capsys, ["merge", run, tmp_path / "merged"], "method 'prompt' cannot be merged", "--format peft")
    assert not (tmp_path / "merged").exists()


def test_peft_export_of_a_run_without_a_peft_form_leaves_no_folder(bert_dir, reviews, tmp_path, capsys):
    run = tmp_path / "bitfit"
    assert main(train_argv(bert_dir, reviews, run, "train.max_steps=1", method="bitfit")) == 0
    one_error(capsys, ["export", run, tmp_path / "peft", "--format", "peft"], "method 'bitfit' cannot export to PEFT",
              "tuneforge merge")
    assert not (tmp_path / "peft").exists()


def test_export_or_merge_never_replaces_the_run_it_reads(bert_dir, reviews, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_argv(bert_dir, reviews, run)) == 0
    before = snapshot(run)
    for argv in (["export", run, run, "--overwrite"], ["merge", run, run, "--overwrite"]):
        one_error(capsys, argv, "kind 'run'", "same kind", "choose another path")
    assert snapshot(run) == before
    assert main(["export", run, tmp_path / "out"]) == 0
    assert main(["merge", run, tmp_path / "out", "--overwrite"]) == 0  # a merged model may replace an export
    one_error(capsys, train_argv(bert_dir, reviews, tmp_path / "out", "--overwrite"), "kind 'merged'", "not 'run'")


def test_export_or_merge_never_replaces_the_runs_base_model_or_a_folder_holding_the_run(bert_dir, reviews, tmp_path,
                                                                                       capsys):
    """Train on a merged folder, then merge the new run back into it: --overwrite would replace the base the run
    loads from (its LoRA weights then sit on another model, or on a PEFT adapter)."""
    assert main(train_argv(bert_dir, reviews, tmp_path / "r1")) == 0
    assert main(["merge", tmp_path / "r1", tmp_path / "current"]) == 0
    run = tmp_path / "current-runs" / "r2"
    assert main(train_argv(tmp_path / "current", reviews, run)) == 0
    base = snapshot(tmp_path / "current")
    for argv in (["merge", run, tmp_path / "current", "--overwrite"],
                 ["export", run, tmp_path / "current", "--format", "peft", "--overwrite"]):
        one_error(capsys, argv, "is the run's base model", "write to another folder")
    assert snapshot(tmp_path / "current") == base
    assert main(["merge", run, tmp_path / "current-runs" / "m"]) == 0  # then a merged folder holding a run
    (tmp_path / "current-runs" / "m" / "r").mkdir()
    inner = tmp_path / "current-runs" / "m" / "r" / "run"
    assert main(train_argv(bert_dir, reviews, inner)) == 0
    one_error(capsys, ["merge", inner, tmp_path / "current-runs" / "m", "--overwrite"], "holds the run")


def test_a_run_whose_base_model_changed_since_it_trained_says_so_when_loaded(bert_dir, reviews, tmp_path, capsys):
    """Predict, evaluate, merge and export used the LoRA weights on whatever the base folder held by then."""
    import shutil
    mine = shutil.copytree(bert_dir, tmp_path / "model")
    run = tmp_path / "run"
    assert main(train_argv(mine, reviews, run)) == 0
    capsys.readouterr()
    assert main(["predict", run, "a good film"]) == 0 and "warning" not in capsys.readouterr().err
    weights = mine / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-8] + bytes(reversed(original[-8:])))  # same size, other last weights
    assert main(["predict", run, "a good film"]) == 0
    assert f"warning: the model {run} was trained on ({mine}) changed since" in capsys.readouterr().err
    weights.write_bytes(original)
    assert main(["predict", run, "a good film"]) == 0 and "warning" not in capsys.readouterr().err


def test_compare_refuses_a_folder_of_the_users(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "comparison.md").write_text("my notes")
    before = snapshot(mine)
    one_error(capsys, ["compare", "--methods", "bitfit", "-o", mine, "-q"], "not made by tuneforge")
    assert snapshot(mine) == before


@pytest.mark.parametrize("below", ["run", "deeper/run"])  # the file is the output's parent, or further up
def test_an_output_path_below_a_file_is_one_line_naming_the_file(bert_dir, reviews, tmp_path, capsys, below):
    (tmp_path / "afile").write_text("x")
    one_error(capsys, train_argv(bert_dir, reviews, tmp_path / "afile" / below), "cannot write",
              f"{tmp_path / 'afile'} is a file, where a folder is needed")


def test_a_diverging_run_stops_with_one_line_instead_of_saving_nan_weights(bert_dir, reviews, tmp_path, capsys,
                                                                           monkeypatch):
    from tuneforge.logs import Logger
    closed = []  # the TensorBoard writer's thread outlived a failed run (a notebook or compare --in-process goes on)
    monkeypatch.setattr(Logger, "close", lambda self, close=Logger.close: closed.append(close(self)))
    capsys.readouterr()
    code = main(train_argv(bert_dir, reviews, tmp_path / "run", "train.lr=1e30", "train.log_every=1"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("tuneforge: error: training diverged") and "lower train.lr" in err, err
    assert not (tmp_path / "run" / "trainable.safetensors").exists()
    assert closed == [None]


@pytest.mark.parametrize("split", ["[0.8,0.1,0.1]", "[0.9,0,0.1]"])  # the last step scored (and kept), or not scored
def test_weights_that_the_last_update_overflowed_are_neither_kept_nor_saved(bert_dir, reviews, tmp_path, capsys,
                                                                           split):
    capsys.readouterr()  # the one loss is finite: it was computed before the update that overflowed
    code = main(train_argv(bert_dir, reviews, tmp_path / "run", "train.lr=1e39", "train.max_steps=1",
                           "train.warmup_ratio=0", f"data.split={split}"))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith("tuneforge: error: training diverged: the trained weights are not finite "
                                        "after step 1"), err
    assert not (tmp_path / "run" / "trainable.safetensors").exists()


def test_flag_values_are_taken_literally(bert_dir, reviews, tmp_path):
    (tmp_path / "on.csv").write_text(reviews.read_text().replace("label", "on", 1))
    out = tmp_path / "exp #2: null"
    assert main(train_argv(bert_dir, tmp_path / "on.csv", out, "--label-column", "on")) == 0
    assert (out / "metrics.json").is_file() and not (tmp_path / "exp").exists()


def test_generate_and_chat_refuse_a_classifier_before_anything_else(lora_run, capsys, monkeypatch):
    import io
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    for argv in (["generate", lora_run, "hi"], ["generate", lora_run], ["chat", lora_run]):  # no prompts: before stdin
        one_error(capsys, argv, "is a classification run; generation needs a causal_lm run")


# ---- a damaged or mistaken run directory --------------------------------------------------------------------

def test_a_damaged_weights_file_is_one_line(lora_run, bert_dir, reviews, tmp_path, capsys):
    lora, full = tmp_path / "lora", tmp_path / "full"
    shutil.copytree(lora_run, lora)
    assert main(train_argv(bert_dir, reviews, full, method="full")) == 0
    for run, weights, named in ((lora, lora / "trainable.safetensors", lora / "trainable.safetensors"),
                                (full, full / "model" / "model.safetensors", full / "model")):
        with open(weights, "r+b") as f:
            f.truncate(1000)  # a copy cut short
        for argv in (["evaluate", run], ["predict", run, "a good film"], ["merge", run, tmp_path / "merged"]):
            one_error(capsys, argv, f"{named} is damaged (", "train the run again, or restore the run directory")
    assert not (tmp_path / "merged").exists()


def test_evaluate_on_a_file_with_an_invalid_row_says_to_fix_the_row(lora_run, tmp_path, capsys):
    rows = sentiment_rows(20)
    rows[7]["label"] = ""
    pd.DataFrame(rows).to_csv(tmp_path / "blank.csv", index=False)
    err = one_error(capsys, ["evaluate", lora_run, "--data", tmp_path / "blank.csv"], "blank.csv, row 8",
                    "column 'label') is blank; fix the row or remove it")
    assert "skip_invalid" not in err  # a training setting: evaluate takes no settings


def test_weights_of_another_run_in_the_run_directory_are_one_line(lora_run, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    weights = load_file(run / "trainable.safetensors")
    head = next(n for n in weights if n.startswith("classifier.") and n.endswith("weight"))
    weights[head] = weights[head].repeat(3, 1)  # a head of 3 x the labels: another run's file copied in
    save_file(weights, run / "trainable.safetensors")
    shape = tuple(weights[head].shape)
    one_error(capsys, ["predict", run, "a good film"], f"{run}: saved weights do not fit the model (e.g. {head}: "
              f"{shape} saved, ({shape[0] // 3}, {shape[1]}) in the model)", "mixes files of different runs")
