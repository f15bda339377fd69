"""torchrun on CPU (gloo, 2 processes, tiny models): gradient accumulation and processes behave exactly like one
bigger batch, FSDP2 equals DDP, a killed 2-process run resumes to the same weights, bad data ends every rank
with one error line, and two "nodes" on one machine equal one launch. Every launch has a timeout, so a hang
fails the test instead of blocking CI."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from lm_helpers import QA, model_folder, write_pairs
from tiny import model_dir, sentiment_rows
from tuneforge.run import train

TIMEOUT = 240  # seconds per launch: a hang fails the test
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    bert = model_dir(root / "bert", "bert", dropout=0.0)  # no dropout: every split of a batch computes the same
    llama = model_folder(root / "llama", "llama")
    pd.DataFrame(sentiment_rows(120)).to_csv(root / "d.csv", index=False)
    return {"root": root, "bert": bert, "llama": llama, "csv": root / "d.csv",
            "pairs": write_pairs(root / "pairs.jsonl")}


def _args(d: dict, task: str, out: Path, method: str = "full", **train_opts) -> list[str]:
    """CLI arguments of a short fp32 run. SGD (momentum 0.9): its weights after a few steps differ exactly as
    much as the gradients do. Adam cannot be compared at 1e-5: it divides by sqrt(v), so on gradients that are
    zero in exact arithmetic (BERT's key biases: softmax ignores them) float rounding noise of ~1e-9 becomes a
    whole step of lr, whichever way the batch was split."""
    model, dataset = (d["bert"], d["csv"]) if task == "classification" else (d["llama"], d["pairs"])
    opts = {"max_steps": 3, "precision": "fp32", "optimizer": "sgd", "lr": 0.05, **train_opts}
    return (["train", "--model", str(model), "--task", task, "--data", str(dataset), "--method", method,
             "-o", str(out), "-q", "model.max_length=32", "data.split=[0.9,0.0,0.1]", "eval.before=false",
             "eval.generate_samples=0"] + [f"train.{k}={v}" for k, v in opts.items()])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TUNEFORGE_DIST_TIMEOUT_MIN": "3", **extra}


def torchrun(args: list[str], nproc: int = 2, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = TORCHRUN + ["--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1", "--master-port",
                      str(_free_port()), "-m", "tuneforge"] + args
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env or _env())


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    full = run_dir / "model" / "model.safetensors"
    return load_file(full if full.is_file() else run_dir / "trainable.safetensors")


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    worst = max((float((a[k] - b[k]).abs().max()), k) for k in a)
    assert worst[0] <= atol, f"largest difference {worst[0]:.2e} in {worst[1]}"


@pytest.mark.parametrize("task", ["classification", "causal_lm"])
def test_accumulation_and_processes_equal_one_bigger_batch(data, task, tmp_path):
    from tuneforge.cli import main

    runs = {}
    for name, (nproc, batch, accum) in {"1x8": (1, 8, 1), "1x4x2": (1, 4, 2), "2x4": (2, 4, 1),
                                        "2x2x2": (2, 2, 2)}.items():
        args = _args(data, task, tmp_path / name, batch_size=batch, grad_accum=accum)
        if nproc == 1:
            assert main(args) == 0
        else:
            out = torchrun(args, nproc)
            assert out.returncode == 0, out.stderr[-3000:]
        runs[name] = weights(tmp_path / name)
    for name in ("1x4x2", "2x4", "2x2x2"):
        assert_same(runs["1x8"], runs[name])
    metrics = json.loads((tmp_path / "2x4" / "metrics.json").read_text())
    single = json.loads((tmp_path / "1x8" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["real_tokens"] == single["real_tokens"]  # all ranks counted
    assert metrics["test_after"]["loss"] == pytest.approx(single["test_after"]["loss"], abs=1e-5)  # same evaluation
    if task == "causal_lm":
        assert metrics["padding_free"] and metrics["real_tokens"] < 3 * 8 * 32  # uneven lengths, packed rows


def test_an_epoch_shorter_than_the_accumulation_window_ends(data, tmp_path):
    rows = sentiment_rows(24)  # 20 training examples: one micro-batch of 32, less than grad_accum
    pd.DataFrame(rows).to_csv(tmp_path / "tiny.csv", index=False)
    cfg = {"model": {"name": str(data["bert"]), "max_length": 32}, "method": {"name": "lora"},
           "data": {"dataset": str(tmp_path / "tiny.csv"), "split": [0.84, 0.0, 0.16]},
           "train": {"epochs": 3, "batch_size": 32, "grad_accum": 2, "precision": "fp32"},
           "output_dir": str(tmp_path / "r")}
    m = train(cfg, progress=False).metrics
    assert m["steps"] == 3  # documented: one (smaller) step per epoch when an epoch is shorter than the window


@pytest.mark.parametrize("method", ["full", "lora"])
def test_fsdp_equals_ddp(data, method, tmp_path):
    for kind in ("ddp", "fsdp"):
        out = torchrun(_args(data, "classification", tmp_path / kind, method, batch_size=4, distributed=kind))
        assert out.returncode == 0, out.stderr[-3000:]
    assert_same(weights(tmp_path / "ddp"), weights(tmp_path / "fsdp"))


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_a_killed_two_process_run_resumes_to_the_same_weights(data, kind, tmp_path):
    args = lambda out: _args(data, "causal_lm", out, "lora", max_steps=6, batch_size=4, save_every=2,  # noqa: E731
                             optimizer="adamw", lr=1e-3, distributed=kind)
    straight = torchrun(args(tmp_path / "straight"))  # FSDP2 gathers its shards into every mid-run checkpoint
    assert straight.returncode == 0, straight.stderr[-3000:]
    crashed = torchrun(args(tmp_path / "crashed"), env=_env(TUNEFORGE_CRASH_AT="checkpoint-saved:2"))
    assert crashed.returncode != 0 and (tmp_path / "crashed" / "checkpoint.safetensors").is_file()
    assert not (tmp_path / "crashed" / "metrics.json").exists()
    if kind == "ddp":
        one = torchrun(["train", "--resume", str(tmp_path / "crashed"), "-q"], nproc=1)
        assert one.returncode != 0 and "trained with 2 process(es); resume it with the same number" in one.stderr
    resumed = torchrun(["train", "--resume", str(tmp_path / "crashed"), "-q"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same(weights(tmp_path / "straight"), weights(tmp_path / "crashed"), atol=0)
    got, want = (json.loads((tmp_path / r / "metrics.json").read_text())["training_loss"]
                 for r in ("crashed", "straight"))
    assert got == pytest.approx(want, rel=1e-12)  # every rank's loss since the last log is carried over


def _blank_label(root: Path) -> tuple[str, Path, list[str]]:
    rows = sentiment_rows(40)
    rows[7]["label"] = ""
    pd.DataFrame(rows).to_csv(root / "bad.csv", index=False)
    return "classification", root / "bad.csv", []


def _one_training_example(root: Path) -> tuple[str, Path, list[str]]:
    rows = [{"instruction": q, "output": a} for q, a in QA[:4]]
    (root / "few.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return "causal_lm", root / "few.jsonl", ["data.split=[0.25,0.0,0.75]"]


def _regularised_under_fsdp(root: Path) -> tuple[str, Path, list[str]]:
    pd.DataFrame(sentiment_rows(40)).to_csv(root / "ok.csv", index=False)
    return "classification", root / "ok.csv", ["train.distributed=fsdp", "forgetting.regularize.kind=l2sp",
                                               "forgetting.regularize.strength=1"]


BAD = {"a blank label": (_blank_label, "bad.csv, row 8: the label (column 'label') is blank"),
       "one training example": (_one_training_example, "1 training examples cannot be shared by 2 processes"),
       "regularisation under FSDP2": (_regularised_under_fsdp, "forgetting.regularize needs whole (unsharded) "
                                                                "weights")}


@pytest.mark.parametrize("case", BAD)
def test_bad_data_ends_every_rank_with_one_error_line(data, case, tmp_path):
    write, message = BAD[case]
    task, path, extra = write(tmp_path)
    args = _args(data, task, tmp_path / "r") + extra
    args[args.index("--data") + 1] = str(path)
    out = torchrun(args)
    errors = [line for line in (out.stdout + out.stderr).splitlines() if "tuneforge: error:" in line]
    assert out.returncode != 0 and len(errors) == 1, out.stderr[-3000:]
    assert message in errors[0]
    assert not (tmp_path / "r").exists()
    notes = [line for line in out.stderr.splitlines() if line.startswith(("note:", "warning:"))]
    assert len(notes) == len(set(notes)), notes  # rank 0 alone prints notes and warnings


def test_two_nodes_on_one_machine_equal_one_launch(data, tmp_path):
    one = torchrun(_args(data, "classification", tmp_path / "one", batch_size=4))
    assert one.returncode == 0, one.stderr[-3000:]
    port = str(_free_port())
    launches = [subprocess.Popen(TORCHRUN + ["--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "1",
                                             "--master-addr", "127.0.0.1", "--master-port", port, "-m", "tuneforge"]
                                 + _args(data, "classification", tmp_path / "two", batch_size=4),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
                for rank in (0, 1)]
    results = [p.communicate(timeout=TIMEOUT) for p in launches]
    assert [p.returncode for p in launches] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    assert_same(weights(tmp_path / "one"), weights(tmp_path / "two"))
