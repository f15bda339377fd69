"""checkpoint.stored_config / as_trained: a run directory's config read with the rules it trained under."""
import yaml

from tuneforge import checkpoint
from tuneforge.config import load_config


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
