"""checkpoint.stored_config / as_trained: a run directory's config read with the rules it trained under; damaged
weights files; an unfinished run directory."""
import re

import pytest
import torch
import yaml
from safetensors.torch import save_file

from tuneforge import checkpoint
from tuneforge.config import ConfigError, load_config


def _write(path, train):
    path.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None, {"train": train}).to_dict()
    for key in ("head_lr", "pooler_with_head"):
        if key not in train:
            cfg["train"].pop(key)  # a config.yaml written before the key existed
    (path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_a_run_written_before_the_head_and_pooler_rules_reads_as_it_trained(tmp_path):
    old = checkpoint.stored_config(_write(tmp_path / "old", {"lr": 1e-4}))
    assert old.train.head_lr == 1e-4 and old.train.pooler_with_head is False


def test_a_run_written_now_reads_as_written(tmp_path):
    new = checkpoint.stored_config(_write(tmp_path / "new", {"lr": 1e-4, "head_lr": 3e-3, "pooler_with_head": True}))
    assert new.train.head_lr == 3e-3 and new.train.pooler_with_head is True
    off = checkpoint.stored_config(_write(tmp_path / "off", {"lr": 1e-4, "head_lr": 3e-3, "pooler_with_head": False}))
    assert off.train.pooler_with_head is False


@pytest.mark.parametrize("cut", [0, 5, 100, -10])  # empty, shorter than the header length, header or data cut short
def test_a_damaged_weights_file_is_one_line_naming_it(tmp_path, cut):
    path = tmp_path / checkpoint.WEIGHTS
    save_file({"w": torch.ones(4, 4)}, str(path))
    run = checkpoint.RunFiles(tmp_path, load_config(None), {})
    assert run.trainable_weights()["w"].sum() == 16
    with open(path, "r+b") as f:
        f.truncate(cut if cut >= 0 else path.stat().st_size + cut)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))} is damaged \(Error while deserializing header: "
                       r".+\); train the run again, or restore the run directory from a copy$"):
        run.trainable_weights()


def test_resume_from_a_damaged_checkpoint_is_one_line(tmp_path):
    from tuneforge.checkpoint import RESUME, resume_config
    from tuneforge.files import write_marker
    write_marker(tmp_path, "run")
    (tmp_path / "config.yaml").write_text("model: {name: minilm}\n")
    for content in (b"\x00" * 100, b"{not a checkpoint"):
        (tmp_path / RESUME).write_bytes(content)
        with pytest.raises(ConfigError, match=rf"cannot resume {tmp_path}: its {RESUME} is damaged \(.*\); start the "
                                              "run again with --overwrite"):
            resume_config(tmp_path)


def test_an_unfinished_run_names_the_file_it_lacks(tmp_path):
    from tuneforge.files import write_marker
    run = _write(tmp_path / "interrupted", {"lr": 1e-4})  # marker and config.yaml only, as a killed run leaves them
    write_marker(run, "run")
    with pytest.raises(ConfigError, match=r"\(meta\.json and metrics\.json missing\); an interrupted run continues "
                                          r"with `tuneforge train --resume`"):
        checkpoint.read_run(run)
    (run / "meta.json").write_text("{}")  # killed after the final weights and meta.json, before metrics.json:
    with pytest.raises(ConfigError, match=r"\(metrics\.json missing\); an interrupted run"):  # it had loaded
        checkpoint.read_run(run)
    (run / "config.yaml").unlink()
    with pytest.raises(ConfigError, match=r"\(config\.yaml and metrics\.json missing\)"):
        checkpoint.read_run(run)


@pytest.mark.parametrize("holds, says", [("adapter_config.json", "it is a PEFT adapter: load it with peft's "
                                          "PeftModel.from_pretrained"),
                                         ("config.json", "it is a model folder: train on it with `--model "),
                                         (None, "give the folder `tuneforge train` wrote")])
def test_a_folder_that_is_no_run_says_what_it_is(tmp_path, holds, says):
    if holds:  # an export of a run, a merged model
        (tmp_path / holds).write_text("{}")
    with pytest.raises(ConfigError, match=re.escape(says)) as caught:
        checkpoint.read_run(tmp_path)
    assert "--resume" not in str(caught.value)
