"""One process trains a run directory at a time (tuneforge.run_lock): a second `train --resume` or `--overwrite`
of a run being trained, or `tuneforge.load` of it, is refused with the process that trains it; a run whose
process ended is not locked."""
import os
import subprocess
import sys

import pandas as pd
import pytest

from lm_helpers import single_thread
from tiny import model_dir, sentiment_rows
from tuneforge import checkpoint, run_lock
from tuneforge.config import ConfigError
from tuneforge.run import load, train


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():
        yield


def test_a_held_lock_names_its_process_and_goes_with_its_file(tmp_path):
    with run_lock.Holding() as lock:
        lock.take(tmp_path)
        assert run_lock.holder(tmp_path) == str(os.getpid())
        with pytest.raises(ConfigError, match=f"being trained now by process {os.getpid()}.*resume it"):
            run_lock.refuse_held(tmp_path, "resume it")
        with run_lock.Holding() as second, pytest.raises(ConfigError, match="being trained now"):
            second.take(tmp_path)
    assert run_lock.holder(tmp_path) is None and not (tmp_path / run_lock.LOCK).exists()
    run_lock.refuse_held(tmp_path, "resume it")


def test_the_lock_of_a_process_that_ended_is_no_lock(tmp_path):
    """A killed run leaves its lock file behind, not its lock: it resumes at once."""
    script = ("import fcntl, os, sys; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX); "
              "f.write(str(os.getpid())); f.flush(); os._exit(9)")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / run_lock.LOCK)], check=False)
    assert (tmp_path / run_lock.LOCK).read_text() and run_lock.holder(tmp_path) is None
    with run_lock.Holding() as lock:
        lock.take(tmp_path)
        assert (tmp_path / run_lock.LOCK).read_text() == str(os.getpid())


def test_a_run_being_trained_is_not_resumed_replaced_or_loaded(tmp_path, monkeypatch):
    """Before, `load` called the run in progress interrupted and `--resume` trained it in a second process: two
    writers interleaved log.jsonl and overwrote each other's checkpoint."""
    pd.DataFrame(sentiment_rows(40)).to_csv(tmp_path / "d.csv", index=False)
    out = tmp_path / "run"
    cfg = {"model": {"name": str(model_dir(tmp_path / "bert", "bert")), "max_length": 32},
           "data": {"dataset": str(tmp_path / "d.csv")}, "method": {"name": "lora", "rank": 2},
           "train": {"max_steps": 2, "batch_size": 8, "precision": "fp32"},
           "eval": {"before": False}, "output_dir": str(out)}
    refused = {}
    crash_point = checkpoint.crash_point

    def meanwhile(name):  # while the run trains (after its validation), what a second process would try
        if name == "after-evaluation" and not refused:
            for what, attempt in (("resume", lambda: train({}, resume=out, progress=False)),
                                  ("overwrite", lambda: train(cfg, overwrite=True, progress=False)),
                                  ("load", lambda: load(out, "cpu"))):
                with pytest.raises(ConfigError) as caught:
                    attempt()
                refused[what] = str(caught.value)
        crash_point(name)

    monkeypatch.setattr(checkpoint, "crash_point", meanwhile)
    result = train(cfg, progress=False)
    pid = f"process {os.getpid()}"
    assert pid in refused["resume"] and "resume it" in refused["resume"]
    assert pid in refused["overwrite"] and "replace it" in refused["overwrite"]
    assert pid in refused["load"] and "load it once that finishes" in refused["load"]
    assert result.metrics["steps"] == 2 and not (out / run_lock.LOCK).exists()
    assert load(out, "cpu").predict(["good movie"])[0]["label"] in (0, 1, "0", "1", "negative", "positive")
