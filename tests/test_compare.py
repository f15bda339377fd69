"""compare: several methods on one task -> runs/<method>, comparison.md/.csv and plots; reuse, resume, failures."""
import csv
import json

import pandas as pd
import pytest
import yaml

import tuneforge.run
from tiny import model_dir, sentiment_rows
from tuneforge.cli import main
from tuneforge import checkpoint
from tuneforge.compare import _method_list, compare
from tuneforge.config import HEAD_LR, ConfigError

METHODS = ["lora", "freeze", "prompt"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    model = model_dir(root / "bert", "bert")
    pd.DataFrame(sentiment_rows(60)).to_csv(root / "d.csv", index=False)
    base = {"model": {"name": str(model), "max_length": 32}, "data": {"dataset": str(root / "d.csv")},
            "train": {"max_steps": 2, "batch_size": 8, "precision": "fp32"}}
    return root, base


@pytest.fixture(scope="module")
def first(setup):
    root, base = setup
    out = root / "cmp"
    return out, compare(METHODS, base, out_dir=out, progress=False, in_process=True)


def test_writes_table_csv_plots_and_one_run_per_method(first):
    out, rows = first
    assert [r["method"] for r in rows] == METHODS and all(r["status"] == "ok" for r in rows)
    assert {"comparison.md", "comparison.csv", "quality_vs_trainable_pct.png", "quality_vs_train_time.png",
            "peak_memory.png"} <= {p.name for p in out.iterdir()}
    md = (out / "comparison.md").read_text()
    assert "accuracy after" in md and "forgetting" in md and all(f"| {m} |" in md for m in METHODS)
    assert not (out / "forgetting.png").exists() and "no forgetting plot" in md  # no run measured forgetting
    with open(out / "comparison.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["method"] for r in table] == METHODS
    for r in table:
        m = json.loads((out / "runs" / r["method"] / "metrics.json").read_text())
        assert m["method"] == r["method"]
        assert float(r["accuracy_after"]) == m["test_after"]["accuracy"]
        assert float(r["accuracy_before"]) == m["test_before"]["accuracy"]
        assert float(r["macro_f1_after"]) == m["test_after"]["macro_f1"]
        assert int(r["trainable_params"]) == m["parameters"]["trainable"]
        assert float(r["trainable_pct"]) == m["parameters"]["trainable_pct"]
        assert float(r["train_seconds"]) == m["train_seconds"]
        assert float(r["tokens_per_second"]) == m["tokens_per_second"]
        assert float(r["peak_memory_mb"]) == m["peak_memory_mb"]
        assert r["forgotten"] == ""
    pct = {r["method"]: float(r["trainable_pct"]) for r in table}
    assert pct["prompt"] < pct["lora"] < 100  # each method kept its own defaults


def test_each_method_uses_its_own_default_lr(first):
    out, _ = first
    import yaml
    lrs = {m: yaml.safe_load((out / "runs" / m / "config.yaml").read_text())["train"]["lr"] for m in METHODS}
    from tuneforge.methods import registry
    assert lrs == {m: registry.train_defaults(m)["lr"] for m in METHODS}


def test_second_call_reuses_finished_runs_and_restarts_or_resumes_the_rest(first, setup, monkeypatch):
    out, rows = first
    root, base = setup
    calls = []

    def spy(cfg, overrides=None, overwrite=False, progress=True, resume=None):
        calls.append((cfg, overwrite, resume))
        raise ConfigError("training should not happen here")

    monkeypatch.setattr(tuneforge.run, "train", spy)
    again = compare(METHODS, base, out_dir=out, progress=False, in_process=True)
    assert calls == []
    assert [{**r, "reused": False} for r in again] == rows and all(r["reused"] for r in again)
    assert "Reused from an earlier call" in (out / "comparison.md").read_text()
    # interrupted runs: prompt left a checkpoint (resume), freeze left nothing usable (restart with overwrite)
    (out / "runs" / "prompt" / "metrics.json").unlink()
    (out / "runs" / "prompt" / "checkpoint.safetensors").write_bytes(b"")
    (out / "runs" / "freeze" / "metrics.json").unlink()
    rows = compare(METHODS, base, out_dir=out, progress=False, in_process=True)
    assert [r["status"] for r in rows] == ["ok", "failed", "failed"]
    assert calls[0][1] is True and calls[0][2] is None and calls[0][0]["method"] == {"name": "freeze"}
    assert calls[1][2] == out / "runs" / "prompt"
    assert rows[1]["error"] == "training should not happen here"


def test_changed_config_is_not_mixed_into_an_old_comparison(first, setup):
    out, _ = first
    _, base = setup
    with pytest.raises(ConfigError, match="another config .*max_steps"):
        compare(["lora"], base, ["train.max_steps=3"], out_dir=out, progress=False, in_process=True)
    with pytest.raises(ConfigError, match=r"another config \(train.lr: 0.0005 -> 0.05\)"):  # not the head rate it sets
        compare(["lora"], base, ["train.lr=0.05"], out_dir=out, progress=False, in_process=True)


def test_a_finished_run_of_data_that_changed_since_is_not_reused(setup, tmp_path):
    """Its row sat beside rows of the new data in one table, with no more than the 'reused' note."""
    _, base = setup
    data = tmp_path / "d.csv"
    pd.DataFrame(sentiment_rows(60)).to_csv(data, index=False)
    cfg = {**base, "data": {"dataset": str(data)}}
    compare(["lora"], cfg, out_dir=tmp_path / "cmp", progress=False, in_process=True)
    pd.DataFrame(sentiment_rows(40, seed=4)).to_csv(data, index=False)
    with pytest.raises(ConfigError, match=rf"runs/lora was trained on {data}, which changed since"):
        compare(["lora", "freeze"], cfg, out_dir=tmp_path / "cmp", progress=False, in_process=True)


def test_a_run_stored_before_the_head_rate_default_is_not_taken_for_a_new_one(first, setup):
    out, _ = first
    _, base = setup
    path = out / "runs" / "lora" / "config.yaml"
    text = path.read_text()
    stored = yaml.safe_load(text)
    assert stored["train"]["lr"] < HEAD_LR <= stored["train"]["head_lr"]  # resolved: the head at its floor
    try:  # as written before train.head_lr had a default: null, the head trained at train.lr
        stored["train"]["head_lr"] = None
        path.write_text(yaml.safe_dump(stored, sort_keys=False))
        assert checkpoint.stored_config(path.parent).train.head_lr == stored["train"]["lr"]
        with pytest.raises(ConfigError, match="another config .*head_lr"):
            compare(["lora"], base, out_dir=out, progress=False, in_process=True)
    finally:
        path.write_text(text)


def test_config_error_is_recorded_and_others_continue(setup, capsys):
    root, base = setup
    out = root / "failing"
    # method options in the base config belong to the method they name: freeze gets 5 layers of a 2-layer model
    cfg = {**base, "method": {"name": "freeze", "num_layers": 5}}
    rows = compare("freeze,prompt", cfg, out_dir=out, progress=False, in_process=True)
    assert [r["status"] for r in rows] == ["failed", "ok"]
    assert "num_layers=5" in rows[0]["error"] and rows[0]["accuracy_after"] is None
    md = (out / "comparison.md").read_text()
    assert "failed: method.num_layers=5" in md
    with open(out / "comparison.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["failed", "ok"]
    config = root / "failing.yaml"  # the command: exit status 1, so scripts see the failure
    config.write_text(yaml.safe_dump(cfg))
    assert main(["compare", "-c", str(config), "--methods", "freeze,prompt", "-o", str(out), "-q", "--in-process"]) == 1
    assert "(1 failed: freeze)" in capsys.readouterr().out


def test_an_interrupted_comparison_says_how_to_continue_in_one_line():
    from tuneforge import interrupts

    assert interrupts.stopped(KeyboardInterrupt(), "compare") == (
        "interrupted; running the same `tuneforge compare` command again skips the finished methods and resumes the "
        "interrupted one from its last checkpoint")
    assert "command again without --overwrite skips the methods it finished" in interrupts.stopped(  # it would
        KeyboardInterrupt(), "compare", overwrite=True)  # retrain the methods this call finished


def test_unknown_method_fails_before_training(tmp_path):
    with pytest.raises(ConfigError, match="unknown method 'lorax'"):
        compare("lora,lorax", out_dir=tmp_path, progress=False)
    assert not (tmp_path / "runs").exists()
    assert _method_list("LoRA, IA3,lora") == ["lora", "ia3"]  # as the papers write them; once each


def test_cli_help_and_subprocess_run(setup, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--help"])
    assert exc.value.code == 0 and "--methods" in capsys.readouterr().out
    root, base = setup
    out = root / "sub"
    assert main(["compare", "--task", "classification", "--methods", "lora", "-o", str(out), "-q",
                 f"model.name={base['model']['name']}", f"data.dataset={base['data']['dataset']}",
                 "model.max_length=32", "train.max_steps=1", "train.batch_size=8", "train.precision=fp32"]) == 0
    printed = capsys.readouterr().out
    assert "| lora |" in printed and str(out) in printed
    m = json.loads((out / "runs" / "lora" / "metrics.json").read_text())
    assert m["steps"] == 1 and (out / "configs" / "lora.yaml").is_file()
    with open(out / "comparison.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "ok" and float(row["peak_memory_mb"]) == m["peak_memory_mb"]


def test_a_failed_training_process_is_explained_in_one_line():
    from tuneforge.compare import failure

    crash = "note: 3 examples were cut\nTraceback (most recent call last):\n  File \"x\", line 1\nRuntimeError: boom\n"
    assert failure(1, crash) == "the training process crashed: RuntimeError: boom"  # not the data note before it
    multi = crash.replace("RuntimeError: boom", "ValueError: shape mismatch\nexpected (2, 4)\nwarning: later")
    assert failure(1, multi) == "the training process crashed: ValueError: shape mismatch"  # its first line
    assert failure(2, "epoch 1\r50%\ntuneforge: error: data.dataset: no such file\n") == "data.dataset: no such file"
    assert failure(-9, "note: 3 examples were cut\n") == "the training process was killed by SIGKILL (out of memory?)"
    assert failure(-15, "") == "the training process was killed by SIGTERM"
    assert failure(3, "") == "the training process exited with code 3"


def test_method_options_go_to_the_methods_that_have_them(setup, tmp_path):
    from tuneforge.compare import _base_config, method_config

    root, base = setup
    shared = _base_config(base, ["method.num_virtual_tokens=3"])  # the base config's method is LoRA
    for name, expected in (("prompt", {"num_virtual_tokens": 3}), ("p-tuning", {"num_virtual_tokens": 3}),
                           ("lora", {})):
        assert method_config(shared, name, tmp_path / name)["method"] == {"name": name, **expected}
    with pytest.raises(ConfigError, match=r"method.num_virtual_tokens is an option of none of the compared methods "
                                          r"\(lora, ia3\)"):
        compare("lora,ia3", base, ["method.num_virtual_tokens=3"], out_dir=tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()


def test_a_training_child_leaves_the_interrupt_message_to_compare(monkeypatch, capsys):
    """Ctrl-C reaches compare's training child too: the child stops without a word and compare says the one line."""
    from tuneforge import interrupts

    assert interrupts.report(KeyboardInterrupt(), "train") == 130
    assert capsys.readouterr().err.startswith("tuneforge: error: interrupted")
    monkeypatch.setenv(interrupts.PARENT_SAYS, "1")
    assert interrupts.report(KeyboardInterrupt(), "train") == 130
    assert capsys.readouterr().err == ""


def test_a_project_folder_with_runs_is_not_taken_for_a_comparison(tmp_path):
    """A folder holding the ``runs/`` that ``train`` writes was taken over as an old comparison (marked as
    tuneforge's), after which ``--overwrite`` emptied it: notes and runs gone."""
    from tuneforge.compare import claim_folder
    from tuneforge.config import ConfigError
    project = tmp_path / "project"
    (project / "runs" / "old-run").mkdir(parents=True)
    (project / "notes.md").write_text("mine")
    with pytest.raises(ConfigError, match="is not empty and was not made by tuneforge"):
        claim_folder(project)
    assert sorted(p.name for p in project.iterdir()) == ["notes.md", "runs"]  # no marker written


def test_a_quiet_comparison_still_prints_each_runs_warnings_and_notes(capfd):
    """``compare -q`` / ``mitigate -q`` dropped every warning of their training processes (-q keeps them)."""
    import sys

    from tuneforge.compare import _stream
    child = ("import sys; w = sys.stderr.write; w('train: 50%|##   | 1/2\\r'); w('warning: the model learned little\\n');"
             "w('evaluating ...\\nnote: data.packing does not apply\\n'); w('warn'); sys.stderr.flush();"
             "w('ing: split across reads\\n')")
    code, tail = _stream([sys.executable, "-c", child], echo=False, label="lora: ")
    assert code == 0 and "evaluating" in tail
    assert capfd.readouterr().err == ("lora: warning: the model learned little\nlora: note: data.packing does not "
                                      "apply\nlora: warning: split across reads\n")
