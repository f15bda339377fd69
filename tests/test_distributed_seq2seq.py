"""Seq2seq under torchrun (CPU, gloo, 2 processes, a tiny T5 without dropout): FSDP2 trains as DDP does. The
output-token LM head stops the model's forward before its head, which FSDP2's root hooks cannot take, so sharded
runs keep the full forward (before: a crash in the first training step after the evaluation before training)."""
from __future__ import annotations

import json

import pytest

from lm_helpers import seq2seq_folder, write_sources
from test_distributed import assert_same, torchrun, weights


@pytest.mark.parametrize("method", ["full", "lora"])
def test_fsdp_equals_ddp_on_an_encoder_decoder(method, tmp_path):
    folder = seq2seq_folder(tmp_path / "t5", "t5")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "dropout_rate": 0.0}))  # every split computes alike
    data = write_sources(tmp_path / "pairs.jsonl")
    for kind in ("ddp", "fsdp"):
        out = torchrun(["train", "--model", str(folder), "--task", "seq2seq", "--data", str(data), "--method", method,
                        "-o", str(tmp_path / kind), "-q", "model.max_length=32",
                        "eval.generate_samples=0", "train.max_steps=3", "train.precision=fp32",
                        "train.optimizer=sgd", "train.lr=0.05", "train.batch_size=4", f"train.distributed={kind}"])
        assert out.returncode == 0, out.stderr[-3000:]
    assert_same(weights(tmp_path / "ddp"), weights(tmp_path / "fsdp"))
