"""A sequential run records task 1's run as it started from it (``previous_run.json``): task 1 retrained since is
refused where the run would be reused (compare, mitigate) or resumed, and said where it is loaded."""
from pathlib import Path

import pandas as pd
import pytest

from tiny import model_dir, sentiment_rows
from tuneforge import resume_check
from tuneforge.compare import compare
from tuneforge.config import ConfigError
from tuneforge.run import load, train


def test_task1_retrained_since_is_not_reused_resumed_or_loaded_in_silence(tmp_path, capsys):
    folder = model_dir(tmp_path / "bert", "bert")
    pd.DataFrame(sentiment_rows(60)).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame(sentiment_rows(60, seed=5)).to_csv(tmp_path / "b.csv", index=False)
    base = {"model": {"name": str(folder), "max_length": 32}, "method": {"name": "full"}}
    task1 = {**base, "data": {"dataset": str(tmp_path / "a.csv")}, "output_dir": str(tmp_path / "task1"),
             "train": {"precision": "fp32", "batch_size": 16, "max_steps": 2, "lr": 1e-3}}
    train(task1, progress=False)
    task2 = {**base, "data": {"dataset": str(tmp_path / "b.csv")}, "forgetting": {"previous_run": str(tmp_path / "task1")},
             "train": {"precision": "fp32", "batch_size": 16, "max_steps": 2, "lr": 1e-3}}
    compare(["lora"], task2, out_dir=tmp_path / "cmp", progress=False, in_process=True)
    run_dir = tmp_path / "cmp" / "runs" / "lora"
    assert (run_dir / resume_check.PREVIOUS).is_file() and not (run_dir / resume_check.BASE).exists()
    compare(["lora"], task2, out_dir=tmp_path / "cmp", progress=False, in_process=True)  # unchanged: reused
    (tmp_path / "task1" / "metrics.json").write_text("{}")  # an evaluation's files are no part of task 1's model
    assert resume_check.base_changed(run_dir, Path(), str(tmp_path / "task1")) is None

    train({**task1, "train": {**task1["train"], "lr": 3e-3}}, overwrite=True, progress=False)  # task 1 retrained
    with pytest.raises(ConfigError, match=rf"runs/lora was trained on {tmp_path / 'task1'}, which changed since"):
        compare(["lora"], task2, out_dir=tmp_path / "cmp", progress=False, in_process=True)
    with pytest.raises(ConfigError, match=r"cannot resume .*: task 1's run \(forgetting.previous_run\) \(.*task1\) "
                                          r"changed since the run started"):
        resume_check.refuse_changed_base(run_dir, Path(), str(tmp_path / "task1"))
    capsys.readouterr()
    load(run_dir)
    assert f"warning: the run {run_dir} was trained on ({tmp_path / 'task1'}) changed since" in capsys.readouterr().err
