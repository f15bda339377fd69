"""Crash safety: a tiny run SIGKILLed at named moments (``$TUNEFORGE_CRASH_AT``, see ``tuneforge.files``) --
before its first checkpoint, while writing a checkpoint, right after one, after an evaluation, while saving the
final weights and metrics, before the checkpoint is removed -- then ``train --resume`` finishes it to the
uninterrupted run's weights, bit for bit, with no leftovers of interrupted writes; a second ``--resume`` says
the run is finished.

The killed runs are forked children of the test process (``cli.main`` after ``os.fork``): the same code as
``python -m tuneforge train`` without a 10-second interpreter start per crash; one crash runs as a real
``python -m tuneforge`` subprocess. The children run with one torch thread (forked OpenMP pools are unsafe
with more).
"""
import json
import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from lm_helpers import single_thread
from tiny import model_dir, sentiment_rows
from tuneforge.cli import main as cli_main
from tuneforge.files import CRASH_ENV, PARTIAL

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

SETTINGS = ["-q", "train.max_steps=6", "train.save_every=2", "train.eval_every=3", "train.batch_size=8",
            "train.precision=fp32", "model.max_length=32", "train.num_threads=1"]
METHODS = {"lora": ["method.rank=2", "train.lr=5e-3"], "full": ["train.lr=1e-3"]}


def main(argv) -> int:
    return cli_main([str(a) for a in argv])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    model = model_dir(root / "model", "bert")
    pd.DataFrame(sentiment_rows(64)).to_csv(root / "data.csv", index=False)
    return root, model, root / "data.csv"


def argv(setup, method: str, out: Path) -> list:
    root, model, data = setup
    return ["train", "--model", model, "--data", data, "--method", method, "-o", out, *SETTINGS, *METHODS[method]]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "trainable.safetensors") if (run / "trainable.safetensors").is_file() \
        else load_file(run / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def straight(setup):
    """The uninterrupted runs, one per method."""
    root = setup[0]
    for method in METHODS:
        assert main(argv(setup, method, root / f"straight-{method}")) == 0
    return {m: root / f"straight-{m}" for m in METHODS}


def killed(args: list, point: str, log: Path) -> int:
    """Run the CLI in a forked child with ``$TUNEFORGE_CRASH_AT=point``; its exit status (-9: SIGKILL)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 70
        try:
            os.environ[CRASH_ENV] = point
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = sys.stderr = open(fd, "w", buffering=1, closefd=False)
            code = main(args)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def check_resumed(run: Path, reference: Path, capsys, split: bool = True) -> None:
    """``--resume`` finishes ``run`` to ``reference``'s weights, bit for bit, leaving nothing half-written."""
    capsys.readouterr()
    assert main(["train", "--resume", run, "-q"]) == 0, capsys.readouterr().err
    a, b = weights(reference), weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not [p for p in run.rglob("*") if p.name.endswith(PARTIAL)]
    assert not (run / "checkpoint.safetensors").exists() and not list(run.glob(".best-*"))
    got, want = (json.loads((r / "metrics.json").read_text()) for r in (run, reference))
    assert got["test_after"] == want["test_after"] and got["steps"] == want["steps"] == 6
    assert got["real_tokens"] == want["real_tokens"]
    assert got["training_loss"] == want["training_loss"]  # a log window cut by the crash is continued, not restarted
    assert (run / "log.jsonl").read_text() == (reference / "log.jsonl").read_text()
    if split:  # see test_a_run_killed_before_its_split_was_stored_gets_it_on_resume
        assert json.loads((run / "split.json").read_text()) == json.loads((reference / "split.json").read_text())
    capsys.readouterr()
    assert main(["train", "--resume", run]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tuneforge: error:") and "the run is finished" in err and len(err.splitlines()) == 1


POINTS = [  # (method, crash point, what the killed run left behind)
    ("lora", "run-dir-created", "config.yaml only: resumed from the start"),
    ("lora", "write:checkpoint.safetensors", "a half-written first checkpoint"),
    ("lora", "checkpoint-saved:2", "the step-4 checkpoint"),
    ("lora", "after-evaluation", "the step-3 evaluation, the step-2 checkpoint"),
    ("lora", "best-kept", "the step-3 best weights, which no checkpoint names yet"),
    ("full", "checkpoint-saved:2", "the step-4 checkpoint naming the step-3 best weights' file"),
    ("lora", "write:trainable.safetensors", "half-written final weights"),
    ("lora", "final-weights-saved", "final weights, no metrics"),
    ("lora", "write:metrics.json", "half-written metrics"),
    ("lora", "before-checkpoint-removed", "a complete run beside its checkpoint"),
    ("full", "checkpoint-saved", "a full fine-tuning checkpoint"),
    ("full", "final-model-written", "a complete model folder not yet moved in place"),
]


@pytest.mark.parametrize("method, point, left", POINTS, ids=[f"{m}-{p}" for m, p, _ in POINTS])
def test_sigkill_then_resume_gives_the_uninterrupted_weights(setup, straight, method, point, left, tmp_path, capsys):
    run = tmp_path / "run"
    status = killed(argv(setup, method, run), point, tmp_path / "child.log")
    assert status == -signal.SIGKILL, (status, (tmp_path / "child.log").read_text()[-2000:])
    assert (run / "config.yaml").is_file()
    assert (run / "metrics.json").exists() == (point == "before-checkpoint-removed"), left
    check_resumed(run, straight[method], capsys, split=point != "run-dir-created")


def test_sigkill_of_a_real_cli_process_then_resume(setup, straight, tmp_path, capsys):
    """The same as a user sees it: ``python -m tuneforge train`` killed while writing its second checkpoint."""
    run = tmp_path / "run"
    env = {**os.environ, CRASH_ENV: "write:checkpoint.safetensors:2", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "tuneforge", *map(str, argv(setup, "lora", run))],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    assert [p.name for p in run.iterdir() if p.name.endswith(PARTIAL)]  # the interrupted write's temp file
    check_resumed(run, straight["lora"], capsys)


def test_a_run_killed_before_its_split_was_stored_gets_it_on_resume(setup, straight, tmp_path, capsys):
    run = tmp_path / "run"
    assert killed(argv(setup, "lora", run), "run-dir-created", tmp_path / "child.log") == -signal.SIGKILL
    assert not (run / "split.json").exists()
    check_resumed(run, straight["lora"], capsys)


def test_resume_refuses_when_the_data_changed_since_the_run_started(setup, tmp_path, capsys):
    root, model, _ = setup
    data = tmp_path / "data.csv"
    pd.DataFrame(sentiment_rows(64)).to_csv(data, index=False)
    run = tmp_path / "run"
    args = ["train", "--model", model, "--data", data, "-o", run, *SETTINGS, *METHODS["lora"]]
    assert killed(args, "checkpoint-saved", tmp_path / "child.log") == -signal.SIGKILL
    pd.DataFrame(sentiment_rows(4, seed=5)).to_csv(data, mode="a", header=False, index=False)
    capsys.readouterr()
    assert main(["train", "--resume", run]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tuneforge: error:") and "data changed since the run started" in err
    assert (run / "checkpoint.safetensors").is_file()  # nothing lost: the run resumes once the data is restored


def test_resume_refuses_when_the_replay_data_changed_since_the_run_started(setup, tmp_path, capsys):
    """The resumed run read forgetting.replay.data afresh: its later steps trained on other rows."""
    root, model, data = setup
    replay = tmp_path / "replay.csv"
    pd.DataFrame(sentiment_rows(32, seed=3)).to_csv(replay, index=False)
    run = tmp_path / "run"
    args = ["train", "--model", model, "--data", data, "-o", run, *SETTINGS, *METHODS["lora"],
            f"forgetting.replay.data={replay}", "forgetting.replay.ratio=0.5"]
    assert killed(args, "checkpoint-saved", tmp_path / "child.log") == -signal.SIGKILL
    pd.DataFrame(sentiment_rows(4, seed=5)).to_csv(replay, mode="a", header=False, index=False)
    capsys.readouterr()
    assert main(["train", "--resume", run]) == 2
    assert "its forgetting.replay.data data changed since the run started" in capsys.readouterr().err


def test_resume_refuses_when_the_base_model_changed_since_the_run_started(setup, tmp_path, capsys):
    """A model folder retrained (or a Hub snapshot updated) between the kill and the resume was continued in
    silence: the checkpoint's LoRA weights went on over other base weights."""
    import shutil
    root, model, _ = setup
    mine = shutil.copytree(model, tmp_path / "model")
    run = tmp_path / "run"
    args = ["train", "--model", mine, "--data", setup[2], "-o", run, *SETTINGS, *METHODS["lora"]]
    assert killed(args, "checkpoint-saved", tmp_path / "child.log") == -signal.SIGKILL
    original = (mine / "model.safetensors").read_bytes()
    weights_file = mine / "model.safetensors"
    weights_file.write_bytes(original[:-8] + bytes(reversed(original[-8:])))  # same size, other last weights
    capsys.readouterr()
    assert main(["train", "--resume", run]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"tuneforge: error: cannot resume {run}: the model it started from ({mine}) changed")
    weights_file.write_bytes(original)  # restored: it resumes
    assert main(["train", "--resume", run, "-q"]) == 0 and (run / "metrics.json").is_file()


def test_resume_refuses_an_edited_config_but_not_a_comment(setup, straight, tmp_path, capsys):
    """An edited train.lr was ignored in silence (optimizer and schedule resume as they were), yet the finished
    run's config.yaml claimed it; an edited method failed on its options ('unknown config key')."""
    run = tmp_path / "run"
    assert killed(argv(setup, "lora", run), "checkpoint-saved", tmp_path / "child.log") == -signal.SIGKILL
    original = (run / "config.yaml").read_text()
    for old, new, named in [("\n  lr: 0.005", "\n  lr: 0.5", "train.lr: 0.005 when it started, 0.5 now"),
                            ("name: lora", "name: bitfit", "method.name: lora when it started, bitfit now")]:
        assert old in original
        (run / "config.yaml").write_text(original.replace(old, new))
        capsys.readouterr()
        assert main(["train", "--resume", run]) == 2
        err = capsys.readouterr().err
        assert f"config.yaml was edited since the run started ({named}); a resumed run continues" in err, err
    same = original.replace("\n  lr: 0.005", "\n  lr: 5e-3").replace("  train_file: null\n", "")
    assert same != original  # PyYAML reads 5e-3 as text; the config reads it as 0.005 and fills train_file in
    (run / "config.yaml").write_text("# my note\n" + same)
    check_resumed(run, straight["lora"], capsys)


def test_a_resume_interrupted_before_it_trains_names_the_run_to_resume(setup, tmp_path, capsys, monkeypatch):
    """Ctrl-C while a resumed run loaded its model said 'nothing was kept', its checkpoint intact."""
    run = tmp_path / "run"
    assert killed(argv(setup, "lora", run), "checkpoint-saved", tmp_path / "child.log") == -signal.SIGKILL

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("tuneforge.run._setup", interrupted)
    capsys.readouterr()
    assert main(["train", "--resume", run]) == 130
    assert capsys.readouterr().err.strip() == (f"tuneforge: error: interrupted; `tuneforge train --resume {run}` "
                                               "continues from the run's last checkpoint")
    assert (run / "checkpoint.safetensors").is_file()


def test_the_resume_check_stores_a_missing_split_and_refuses_a_different_one(tmp_path):
    from tuneforge import checkpoint
    from tuneforge.config import ConfigError

    manifest = {"sources": [{"name": "d.csv", "path": "/d.csv", "fingerprint": "ab", "rows": 3}],
                "train": [[0, 0], [0, 2]], "validation": [], "test": [[0, 1]], "duplicates": 0}
    (tmp_path / ".split.json.x.partial").write_text("{")  # a write the crash cut short
    checkpoint.start_resume(tmp_path, manifest)
    assert json.loads((tmp_path / "split.json").read_text()) == manifest
    assert [p.name for p in tmp_path.iterdir()] == ["split.json"]
    checkpoint.start_resume(tmp_path, manifest)  # the same split: fine
    with pytest.raises(ConfigError, match="data changed since the run started"):
        checkpoint.start_resume(tmp_path, {**manifest, "test": [[0, 2]], "train": [[0, 0], [0, 1]]})
    checkpoint.start_resume(tmp_path, {**manifest, "forgetting": {"forgetting.replay.data": "cd"}})  # stored before
    other = tmp_path / "other"  # replay and reference data are in split.json since 2026-12-07
    other.mkdir()
    replayed = {**manifest, "forgetting": {"forgetting.replay.data": "cd"}}
    checkpoint.start_resume(other, replayed)
    with pytest.raises(ConfigError, match="its forgetting.replay.data data changed since the run started"):
        checkpoint.start_resume(other, {**manifest, "forgetting": {"forgetting.replay.data": "ef"}})
    with pytest.raises(ConfigError, match="its forgetting.reference data changed since the run started"):
        checkpoint.start_resume(other, {**replayed, "forgetting": {**replayed["forgetting"],
                                                                   "forgetting.reference": "chitchat"}})


def test_a_killed_merge_leaves_the_earlier_merged_folder_whole(setup, straight, tmp_path, capsys):
    out = tmp_path / "merged"
    assert main(["merge", straight["lora"], out]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert killed(["merge", straight["lora"], out, "--overwrite"], "folder-built", tmp_path / "child.log") == \
        -signal.SIGKILL
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old folder, whole
    assert [p for p in tmp_path.iterdir() if p.name.endswith(PARTIAL)]  # the new one, never moved in place
    assert main(["merge", straight["lora"], out, "--overwrite"]) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(PARTIAL)]  # the leftover is removed
    assert {p.name for p in out.iterdir()} == set(before)
