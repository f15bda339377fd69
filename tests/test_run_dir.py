"""A run directory and what a run stores: a template file kept as its text, an interrupted run that leaves a
folder of the user's where it was, and one interrupted while replacing a run (--overwrite) that brings it back."""
import json

import pandas as pd
import pytest
import yaml

from lm_helpers import TEMPLATE, model_folder, single_thread, write_pairs
from tiny import model_dir, sentiment_rows
from tuneforge import checkpoint, run as run_module
from tuneforge.run import load, train


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():
        yield


def _classification(tmp_path, out, **train_opts):
    pd.DataFrame(sentiment_rows(40)).to_csv(tmp_path / "d.csv", index=False)
    return {"model": {"name": str(model_dir(tmp_path / "bert", "bert")), "max_length": 32},
            "data": {"dataset": str(tmp_path / "d.csv")}, "method": {"name": "lora", "rank": 2},
            "train": {"max_steps": 2, "batch_size": 8, "precision": "fp32", **train_opts},
            "eval": {"before": True}, "output_dir": str(out)}


def test_a_template_file_is_stored_as_its_text(tmp_path, monkeypatch):
    """config.yaml kept the path as given: the run did not resume or reload from another working directory, and
    an edited file changed the template of a resumed run in silence."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "chat.jinja").write_text(TEMPLATE)
    monkeypatch.chdir(work)
    cfg = {"model": {"name": str(model_folder(tmp_path / "llama")), "task": "causal_lm", "max_length": 32},
           "data": {"dataset": str(write_pairs(tmp_path / "pairs.jsonl")), "template": "chat.jinja"},
           "method": {"name": "lora", "rank": 2}, "train": {"max_steps": 1, "precision": "fp32"},
           "eval": {"before": False, "generate_samples": 0}, "output_dir": str(tmp_path / "run")}
    out = train(cfg, progress=False)
    assert yaml.safe_load((out.run_dir / "config.yaml").read_text())["data"]["template"] == TEMPLATE
    (work / "chat.jinja").write_text("{{ 'another template' }}")
    monkeypatch.chdir(tmp_path)
    assert load(out.run_dir, "cpu").evaluate()["loss"] == pytest.approx(out.metrics["test_after"]["loss"])


def test_an_interrupted_run_leaves_the_empty_folder_it_was_given(tmp_path, monkeypatch):
    """`-o .` in an empty folder, then Ctrl-C while the untrained model was evaluated: the folder (the shell's
    working directory) was removed."""
    out = tmp_path / "mine"
    out.mkdir()
    monkeypatch.setattr(run_module, "_before", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        train(_classification(tmp_path, out), progress=False)
    assert out.is_dir() and not any(out.iterdir())


def test_a_run_replaced_with_overwrite_comes_back_if_stopped_before_split_json(tmp_path, monkeypatch):
    """The old run was set aside, then a Ctrl-C before split.json was written left it hidden, and the next
    --overwrite (or --resume) removed it."""
    out = tmp_path / "run"
    first = train(_classification(tmp_path, out), progress=False)
    kept = json.loads((out / "metrics.json").read_text())
    save = checkpoint.save_json

    def interrupted(obj, path, **kw):
        if path.name == checkpoint.SPLIT:
            raise KeyboardInterrupt()
        return save(obj, path, **kw)

    monkeypatch.setattr(checkpoint, "save_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(_classification(tmp_path, out, lr=1e-3), overwrite=True, progress=False)
    assert json.loads((out / "metrics.json").read_text()) == kept and first.metrics["steps"] == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_config_edited_before_the_first_checkpoint_is_refused_on_resume(tmp_path, monkeypatch, capsys):
    """With no checkpoint yet there was nothing to compare with: a changed seed resumed in silence, beside the
    untrained model's metrics measured under the old one."""
    from tuneforge.cli import main

    out = tmp_path / "run"
    monkeypatch.setattr(run_module, "fit", lambda *a, **k: (_ for _ in ()).throw(SystemExit(130)))
    with pytest.raises(SystemExit):
        train(_classification(tmp_path, out), progress=False)
    monkeypatch.undo()
    assert (out / "config.yaml").is_file() and not (out / checkpoint.RESUME).is_file()
    text = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(text.replace("seed: 42", "seed: 7", 1))
    assert main(["train", "--resume", str(out)]) == 2
    assert "config.yaml was edited since the run started (data.seed: 42 when it started, 7 now)" in \
        capsys.readouterr().err
    (out / "config.yaml").write_text(text)
    assert main(["train", "--resume", str(out), "-q"]) == 0
    assert not (out / ".config-started.yaml").exists() and (out / "metrics.json").is_file()
