"""Run directories: saved as safetensors, read back; what ``train --resume`` checks before continuing one (the
training state itself: :mod:`tuneforge.training_state`; creating one: :mod:`tuneforge.run_dir`).

A run directory is complete when ``metrics.json`` exists and ``checkpoint.safetensors`` does not; a run
killed at any moment before that is continued by ``train --resume`` (from its checkpoint, or from the start
when it has none yet) to the same result.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from tuneforge import best_weights, distributed, resume_check, run_lock
from tuneforge.config import ConfigError, RunConfig, build_dataclass
from tuneforge.files import (MARKER, atomic_write_text, clean_partial, clean_siblings, crash_point, marker_kind,
                             partial_dir, replace_dir, save_json, save_tensors)
from tuneforge.resume_check import FULL_DIR, RESUME, WEIGHTS  # the run's weights (both) and resumable state

__all__ = ["atomic_write_text", "save_json", "save_tensors", "crash_point", "RUN_FORMAT"]

RUN_FORMAT = 2  # run-directory layout version (meta.json "run_format"); 2 added split.json


def save_run(run_dir: Path, cfg: RunConfig, meta: dict[str, Any], model: nn.Module, tokenizer: Any,
             trainable: dict[str, torch.Tensor]) -> None:
    """Resolved config, meta (labels, task...) and weights. Full runs: a complete HF folder; others: trainable only."""
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    save_json({**meta, "run_format": RUN_FORMAT}, run_dir / "meta.json")
    n_params = sum(1 for _ in model.named_parameters())
    if len(trainable) == n_params:
        model.load_state_dict(trainable, strict=False)
        tmp = partial_dir(run_dir, FULL_DIR)
        model.float().save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        crash_point("final-model-written")
        replace_dir(tmp, run_dir / FULL_DIR)
    else:
        save_tensors(trainable, run_dir / WEIGHTS, {"format": "pt"})
    crash_point("final-weights-saved")


def finish_run(run_dir: Path) -> None:
    """The run is complete: drop its resumable checkpoint (``metrics.json`` was written before)."""
    crash_point("before-checkpoint-removed")
    (run_dir / RESUME).unlink(missing_ok=True)
    (run_dir / resume_check.STARTED).unlink(missing_ok=True)
    best_weights.remove_all(run_dir)
    clean_partial(run_dir)


@dataclass
class RunFiles:
    """What a run directory holds, read back."""
    path: Path
    config: RunConfig
    meta: dict[str, Any]

    @property
    def full_model_dir(self) -> Path | None:
        p = self.path / FULL_DIR
        return p if p.is_dir() else None

    def trainable_weights(self) -> dict[str, torch.Tensor]:
        try:
            return load_file(self.path / WEIGHTS)
        except DAMAGED as exc:
            raise damaged(self.path / WEIGHTS, exc) from None

    def split(self) -> dict[str, Any] | None:
        """The stored split (``split.json``), or None for runs without one."""
        p = self.path / SPLIT
        return json.loads(p.read_text()) if p.is_file() else None


SPLIT = "split.json"  # which source rows went to train / validation / test, with source fingerprints
DAMAGED = (SafetensorError, OSError)  # what reading a truncated or overwritten weights file raises


def damaged(path: Path, exc: Exception) -> ConfigError:
    """The one-line error for a run's weights file (or model folder) ``path`` that cannot be read (``exc``)."""
    return ConfigError(f"{path} is damaged ({_reason(exc)}); train the run again, or restore the run directory "
                       "from a copy")


def _reason(exc: Exception) -> str:
    """The first line of what a failed read said (its type where it said nothing)."""
    return str(exc).split("\n")[0] or type(exc).__name__


def _what_it_is(path: Path) -> str:
    """What a folder that is not a finished run holds, and what to do with it."""
    kind = marker_kind(path)
    if (path / "adapter_config.json").is_file():
        return ("it is a PEFT adapter: load it with peft's PeftModel.from_pretrained on its base model, or give the "
                "run it was exported from")
    if (path / "config.json").is_file() and kind != "run":
        return f"it is a model folder: train on it with `--model {path}`, or give the run it was written from"
    if kind == "run":
        pid = run_lock.holder(path)
        return (f"it is being trained now by process {pid}: load it once that finishes" if pid is not None else
                "an interrupted run continues with `tuneforge train --resume`")
    return "give the folder `tuneforge train` wrote (its last line, 'run directory: ...', names it)"


def read_run(run_dir: str | Path) -> RunFiles:
    """Read config and meta of a finished run; one-line errors for anything missing or incompatible."""
    path = Path(run_dir)
    if path.is_file():
        raise ConfigError(f"{path} is a file, not a run directory; give the folder `tuneforge train` wrote (its last "
                          "line, 'run directory: ...', names it)")
    if not path.is_dir():
        raise ConfigError(f"run directory {path} does not exist")
    missing = [name for name in ("config.yaml", "meta.json", "metrics.json") if not (path / name).is_file()]
    if missing:
        raise ConfigError(f"{path} is not a finished tuneforge run directory ({' and '.join(missing)} missing); "
                          f"{_what_it_is(path)}")
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        raw = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: meta.json or config.yaml is damaged ({str(exc).splitlines()[0]})") from None
    found = meta.get("run_format", 1) if isinstance(meta, dict) else None
    if found != RUN_FORMAT:
        version = meta.get("tuneforge_version", "an older version") if isinstance(meta, dict) else "?"
        raise ConfigError(f"{path} was written by tuneforge {version} (run format {found}); this tuneforge reads "
                          f"run format {RUN_FORMAT}: retrain the run, or use the tuneforge version that wrote it")
    try:
        config = build_dataclass(RunConfig, raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}/config.yaml does not fit this tuneforge version: {exc}") from None
    if not (path / WEIGHTS).is_file() and not (path / FULL_DIR).is_dir():
        raise ConfigError(f"{path} holds no weights ({WEIGHTS} or {FULL_DIR}/); was training finished?")
    return RunFiles(path, as_trained(config, raw), meta)


# ---- resuming an interrupted run ----------------------------------------------------------------------------

def start_resume(run_dir: Path, manifest: dict[str, Any] | None = None) -> None:
    """Before continuing an interrupted run: remove leftovers of the writes the interruption cut short. With
    the resumed run's split (``manifest``, ``Splits.manifest()``): store it where the run was killed before
    its ``split.json`` was written, and refuse (one line) when it differs from the stored one -- a source
    changed since the run started, so continuing would train on other examples than the checkpoint's."""
    clean_partial(run_dir)
    clean_siblings(run_dir)  # a run it replaced (--overwrite), set aside when the run was killed
    if manifest is None:
        return
    path = run_dir / SPLIT
    if not path.is_file():
        save_json(manifest, path, compact=True)
        return
    then, now = json.loads(path.read_text()), json.loads(json.dumps(manifest, default=float))
    replay, stored = now.pop("forgetting", {}), then.pop("forgetting", None)  # None: a run started before it was kept
    changed = [] if stored is None else [k for k in sorted(replay.keys() | stored.keys())
                                         if replay.get(k) != stored.get(k)]
    if then != now or changed:
        what = (f"its {changed[0]} data changed since the run started" if then == now else
                f"its data changed since the run started (the split differs from its {SPLIT})")
        raise ConfigError(f"cannot resume {run_dir}: {what}; restore the data it started with, or start a new run")


def resume_config(run_dir: Path) -> RunConfig:
    """The config of an interrupted run that ``train --resume`` can continue (one-line errors otherwise)."""
    if run_dir.is_file():
        raise ConfigError(f"cannot resume {run_dir}: it is a file; give the run directory that `train` wrote")
    if not run_dir.is_dir():
        raise ConfigError(f"cannot resume {run_dir}: no such run directory")
    if marker_kind(run_dir) != "run":  # a folder of the user's with a config.yaml: it would become a run
        raise ConfigError(f"cannot resume {run_dir}: it is not a run directory that `tuneforge train` made (no "
                          f"{MARKER} marker of a run); to train from a config file there, use -c {run_dir}/config.yaml")
    if (run_dir / "metrics.json").is_file() and not (run_dir / RESUME).is_file():
        raise ConfigError(f"cannot resume {run_dir}: the run is finished (its metrics.json is written)")
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"cannot resume {run_dir}: it holds no config.yaml (not a tuneforge run directory, or "
                          "killed while being created: start it again with --overwrite)")
    started = run_dir / resume_check.STARTED  # before the first checkpoint: the config as the run started
    then = started.read_text(encoding="utf-8") if started.is_file() else None
    if (run_dir / RESUME).is_file():
        try:
            with safe_open(str(run_dir / RESUME), "pt") as f:
                state = json.loads(f.metadata()["state"])
            world = state.get("world_size", 1)
        except (*DAMAGED, KeyError, TypeError, ValueError) as exc:  # cut short, or not a tuneforge checkpoint
            raise ConfigError(f"cannot resume {run_dir}: its {RESUME} is damaged ({_reason(exc)}); start the run again "
                              "with --overwrite") from None
        if world != distributed.current().world:
            raise ConfigError(f"{run_dir} was trained with {world} process(es); resume it with the same number "
                              f"(torchrun --nproc_per_node=...), not {distributed.current().world}")
        then = state.get("config_yaml") or then
    now = (run_dir / "config.yaml").read_text(encoding="utf-8")
    resume_check.refuse_edited(run_dir, then, now)
    cfg = stored_config(run_dir)
    resume_check.started(run_dir, then or now)
    return cfg


def stored_config(run_dir: Path) -> RunConfig:
    """A run directory's config.yaml as it trained (:func:`as_trained`)."""
    from tuneforge.config import load_config

    written = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    return as_trained(load_config(run_dir / "config.yaml"), written)


def task1_model(cfg: RunConfig) -> None:
    """A sequential run starts from task 1's model, so ``model.name`` is the previous run's: left at its default
    it is filled in (config.yaml names the model that trained); another model is refused."""
    folder = Path(cfg.forgetting.previous_run)
    if not (folder / "config.yaml").is_file():
        return  # not a run: said when it is loaded
    theirs = stored_config(folder).model.name
    if cfg.model.name == type(cfg.model)().name:
        cfg.model.name = theirs
    elif cfg.model.name != theirs:
        raise ConfigError(f"model.name={cfg.model.name}, but forgetting.previous_run {folder} was trained from "
                          f"{theirs} and this run starts from its model; leave model.name out")


def as_trained(cfg: RunConfig, written: Any) -> RunConfig:
    """``cfg`` read from a run's config.yaml (``written``: its raw contents) with the rules of the time where a
    key is unset: runs written before 2026-12-02 trained a fresh head at ``train.lr`` (``train.head_lr`` null)
    and left a pre-trained pooler to the method (no ``train.pooler_with_head`` key)."""
    if cfg.train.head_lr is None and cfg.train.lr is not None:
        cfg.train.head_lr = cfg.train.lr
    train = written.get("train") if isinstance(written, dict) else None
    if "pooler_with_head" not in (train if isinstance(train, dict) else {}):
        cfg.train.pooler_with_head = False
    return cfg
