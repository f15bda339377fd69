"""Model names: a Hub id (owner/name) resolves to its snapshot in the local Hugging Face cache, never downloaded."""
import shutil

import pytest

from tiny import model_dir
from tuneforge.assets import resolve_model
from tuneforge.config import ConfigError


def test_a_hub_id_in_the_local_cache_is_its_snapshot_and_one_not_cached_is_refused(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    repo = hub / "models--acme--tiny-bert"
    snapshot = repo / "snapshots" / "abc123"
    shutil.copytree(model_dir(tmp_path / "bert", "bert"), snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(hub))  # where snapshot_download looks
    assert resolve_model("acme/tiny-bert") == snapshot
    for name in ("acme/other", "not a/hub id"):
        with pytest.raises(ConfigError, match="nor a model in the local Hugging Face cache"):
            resolve_model(name)
