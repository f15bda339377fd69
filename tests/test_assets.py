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


@pytest.mark.parametrize("layout, says", [
    ({"adapter_config.json": '{"base_model_name_or_path": "/models/base"}'},
     "it is a PEFT adapter \\(of /models/base\\)"),
    ({"meta.json": "{}", "config.yaml": ""}, "it is a tuneforge run directory: `tuneforge merge"),
    ({"model.gguf": ""}, "a .gguf file is not read as a model here"),
    ({}, "is it a Hugging Face model folder?")])
def test_a_folder_without_config_json_is_named_for_what_it_is(tmp_path, layout, says):
    for name, text in layout.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=f"has no config.json; {says}"):
        resolve_model(str(tmp_path))
