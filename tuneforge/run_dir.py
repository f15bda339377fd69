"""A new run directory: made with its marker and ``config.yaml`` (a folder is replaced only with ``--overwrite``
and only where tuneforge made it), the run it replaces set aside until training starts and put back if the new run
fails or is stopped before; never one that holds the new run's own model or data."""
from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import yaml

from tuneforge import resume_check
from tuneforge.config import ConfigError, RunConfig
from tuneforge.files import (atomic_write_text, check_replaceable, clean_siblings, crash_point, fresh_folder,
                             not_current, output_folder, put_back, set_aside)


def check_inputs_outside(path: Path, cfg: RunConfig) -> None:
    """Refuse to replace (``--overwrite``) a run directory that holds the new run's own model or data: the old run
    is removed once training starts, and them with it (a LoRA run on ``runs/x/model`` written over ``runs/x``)."""
    if not (path.exists() and any(path.iterdir())):
        return
    d, f = cfg.data, cfg.forgetting
    inputs = {"model.name": cfg.model.name, "data.dataset": d.dataset, "data.train_file": d.train_file,
              "data.validation_file": d.validation_file, "data.test_file": d.test_file,
              "forgetting.replay.data": f.replay.data, "forgetting.reference": f.reference,
              "forgetting.previous_run": f.previous_run}
    folder = path.resolve()
    for key, value in inputs.items():
        if value and Path(value).expanduser().exists() and folder in Path(value).expanduser().resolve().parents:
            raise ConfigError(f"{key}={value} lies inside {path}, which --overwrite would replace (and it with it); "
                              "write the new run to another folder (-o)")


def run_dir_path(output_dir: str | None, method: str, overwrite: bool = False) -> Path:
    """The run directory to create (``runs/METHOD-TIMESTAMP`` by default). An existing non-empty folder is
    refused unless ``overwrite`` and it is a tuneforge folder. Nothing is created yet."""
    path = output_folder(output_dir) if output_dir else Path("runs") / f"{method}-{datetime.now():%Y%m%d-%H%M%S}"
    check_replaceable(path, overwrite, "run directory", "run")
    if path.exists() and any(path.iterdir()):
        not_current(path, "run directory")  # --overwrite, refused before anything loads
    return path


_REPLACED: dict[Path, tuple[Path | None, bool]] = {}  # run dir -> (the run it replaces, set aside until
# training; whether the folder was there, empty, before)


def create_run_dir(path: Path, overwrite: bool, cfg: RunConfig) -> Path:
    """Make the run directory with its marker and ``config.yaml`` (replacing a tuneforge folder only with
    ``overwrite``). A replaced run is only set aside: it comes back if the new run fails before training
    (:func:`discard_on_error`), and is removed once training starts."""
    check_replaceable(path, overwrite, "run directory", "run")
    clean_siblings(path)  # an earlier replaced run a crash left behind
    existed = path.is_dir() and not any(path.iterdir())  # an empty folder of the user's (-o .): kept on failure
    replaced = set_aside(path) if path.exists() and any(path.iterdir()) else None
    try:
        fresh_folder(path, overwrite, "run", "run directory")
        text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
        atomic_write_text(path / resume_check.STARTED, text)
        atomic_write_text(path / "config.yaml", text)
        resume_check.started(path, text)
        crash_point("run-dir-created")
    except BaseException:  # interrupted here: the replaced run comes back at once
        _remove_new(path, existed)
        if replaced is not None:
            put_back(replaced, path)
        raise
    _REPLACED[path.resolve()] = (replaced, existed)
    return path


def _remove_new(path: Path, existed: bool) -> None:
    """Remove a run directory that never trained; only what it holds where the folder was there before."""
    if not existed:
        shutil.rmtree(path, ignore_errors=True)
        return
    for child in list(path.iterdir()) if path.is_dir() else []:
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


@contextlib.contextmanager
def discard_on_error(path: Path | None) -> Iterator[None]:
    """Remove the new run directory ``path`` if the block fails (a run that never started training), and
    bring back the run it replaced (``--overwrite``); once the block succeeds the replaced run is removed."""
    replaced, existed = _REPLACED.pop(path.resolve(), (None, False)) if path is not None else (None, False)
    try:
        yield
    except BaseException:
        if path is not None:
            _remove_new(path, existed)
            resume_check.discarded()
            if replaced is not None:
                put_back(replaced, path)
        raise
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
