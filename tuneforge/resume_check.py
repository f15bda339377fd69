"""Which run this process trains, and what ``train --resume`` must find unchanged.

A resumed run continues with the optimizer state and schedule its checkpoint saved, so it goes on with the
settings it started with: a ``config.yaml`` edited since is refused (:func:`refuse_edited`), not ignored while
the finished run's config.yaml claims the edit. The run this process trains (:func:`current_run`) also lets an
interrupted command say whether and how it can be resumed. Light on imports: the command line reads it while
torch may still be importing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tuneforge.config import ConfigError, load_config

RESUME = "checkpoint.safetensors"  # resumable training state, deleted when the run finishes
WEIGHTS = "trainable.safetensors"  # parameter-efficient runs: only what trained (plus the fresh head)
FULL_DIR = "model"  # runs where every weight trained: a Hugging Face folder (save_pretrained + tokenizer)
STARTED = ".config-started.yaml"  # config.yaml as the run started, for a resume before the first checkpoint

_RUN: list[tuple[Path, str]] = []  # (run directory, its config.yaml as the run started or resumed)


def started(run_dir: Path, config_text: str) -> None:
    """This process trains ``run_dir`` (new or resumed) with the config text ``config_text``."""
    _RUN[:] = [(run_dir, config_text)]


def discarded() -> None:
    """The run directory was removed (training had not started)."""
    _RUN.clear()


def current_run() -> Path | None:
    """The run directory this process created or resumed, where it still exists."""
    return _RUN[0][0] if _RUN and (_RUN[0][0] / "config.yaml").is_file() else None


def started_config(run_dir: Path) -> str | None:
    """``run_dir``'s config.yaml as this process started (or resumed) it, for its checkpoints to keep."""
    return _RUN[0][1] if _RUN and _RUN[0][0] == run_dir else None


def finished(run_dir: Path) -> bool:
    """Whether the run wrote its results and dropped its checkpoint."""
    return (run_dir / "metrics.json").is_file() and not (run_dir / RESUME).is_file()


def refuse_edited(run_dir: Path, then: str | None, now: str) -> None:
    """One line where config.yaml (``now``) differs in a setting from the one the checkpoint was written with
    (``then``; None: checkpoints from before 2026-12-07). Comments, layout, spellings of one value (``5e-3``)
    and defaults written out or left out are not edits."""
    if then is None or _raw(now) is None:
        return  # not a config at all: said when it is loaded
    old, new = _settings(then), _settings(now)
    if old is not None and old == new:
        return
    old, new = _flat(old if old is not None else _raw(then) or {}), _flat(new if new is not None else _raw(now))
    changed = [k for k in sorted(old.keys() | new.keys()) if old.get(k, "(unset)") != new.get(k, "(unset)")]
    if not changed:
        return
    what = (f" ({changed[0]}: {_shown(old.get(changed[0], '(unset)'))} when it started, "
            f"{_shown(new.get(changed[0], '(unset)'))} now{f'; {len(changed) - 1} more' if len(changed) > 1 else ''})")
    raise ConfigError(f"cannot resume {run_dir}: its config.yaml was edited since the run started{what}; a resumed "
                      "run continues with the settings it started with: restore them, or start a new run")


def _settings(text: str) -> dict[str, Any] | None:
    """The config ``text`` holds, every default filled in; None where it does not load (said when loaded)."""
    raw = _raw(text)
    try:
        return load_config(None, raw).to_dict() if raw is not None else None
    except (ConfigError, TypeError, ValueError):
        return None


def _raw(text: str) -> dict[str, Any] | None:
    """The mapping ``text`` holds, or None (not YAML, or not a mapping)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as {'train.lr': 0.001, ...}."""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}


def _shown(value: Any) -> str:
    """A value as YAML writes it (null, a quoted '5e-3' text)."""
    if value == "(unset)":
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


BASE = "base_model.json"  # the fingerprint of the model folder a run started from
SAMPLE = 1 << 20  # bytes read at the start, middle and end of each large file


def model_fingerprint(folder: Path, only: tuple[str, ...] | None = None) -> str:
    """sha256 over the model folder's files (``only``: those under these top-level names): each one's name and
    size, and its bytes (files over 3 MiB: 1 MiB at the start, middle and end, so a multi-GB checkpoint costs
    milliseconds; other weights of the same shapes differ there too)."""
    import hashlib
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and (
            only is None or p.relative_to(folder).parts[0] in only)):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder)}\0{size}\0".encode())
        with open(path, "rb") as f:
            for start in ((0,) if size <= 3 * SAMPLE else (0, size // 2, size - SAMPLE)):
                f.seek(start)
                digest.update(f.read(SAMPLE if size > 3 * SAMPLE else size))
    return digest.hexdigest()


PREVIOUS = "previous_run.json"  # a sequential run: the fingerprint of task 1's run, whose merged model it starts from


def _fingerprint(folder: Path, previous: str | None) -> str:
    """The model ``folder``'s fingerprint, or task 1's run's (``previous``): its config and weights, not its logs,
    metrics or evaluations."""
    if not previous:
        return model_fingerprint(folder)
    return model_fingerprint(Path(previous), ("config.yaml", WEIGHTS, FULL_DIR))


def start_record(folder: Path, previous: str | None) -> tuple[str, dict[str, str]]:
    """(file name, record) of what a run starts from: the model ``folder`` (``base_model.json``), or in the
    sequential set-up task 1's run ``previous`` (``previous_run.json``; ``folder`` is its model merged again)."""
    record = {"path": str(previous or folder), "fingerprint": _fingerprint(folder, previous)}
    return (PREVIOUS if previous else BASE), record


def base_changed(run_dir: Path, folder: Path, previous: str | None = None) -> str | None:
    """The recorded path of what ``run_dir`` started from (:func:`start_record`: the model folder, or with
    ``previous`` task 1's run) where its files differ from it now; None where they are the same, the run holds
    no record (from before it) or task 1's run is gone (loading it says so)."""
    import json
    record = run_dir / (PREVIOUS if previous else BASE)
    if not record.is_file() or (previous and not Path(previous).is_dir()):
        return None
    then = json.loads(record.read_text())
    return None if then.get("fingerprint") == _fingerprint(folder, previous) else str(then.get("path"))


def refuse_changed_base(run_dir: Path, folder: Path, previous: str | None = None) -> None:
    """Refuse to resume ``run_dir`` on a model folder (or task 1's run, ``previous``) whose files changed since the
    run started (a Hub snapshot updated, a folder retrained): its checkpoint's weights trained on the old one
    (:func:`base_changed`)."""
    old = base_changed(run_dir, folder, previous)
    if old is not None:
        what = "task 1's run (forgetting.previous_run)" if previous else "the model it started from"
        raise ConfigError(f"cannot resume {run_dir}: {what} ({old}) changed since the run started (its files "
                          "differ); restore it, or start a new run")
