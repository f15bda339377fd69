"""Run directories: create (never silently overwrite), save atomically as safetensors, reload, merge."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import yaml
from safetensors.torch import load_file, save_file

from tuneforge.config import ConfigError, RunConfig, build_dataclass

WEIGHTS = "trainable.safetensors"  # parameter-efficient runs: only what trained (plus the fresh head)
FULL_DIR = "model"  # runs where every weight trained: a Hugging Face folder (save_pretrained + tokenizer)


def run_dir_path(output_dir: str | None, method: str, overwrite: bool = False) -> Path:
    """The run directory to create (``runs/METHOD-TIMESTAMP`` by default); refuses an existing non-empty one
    unless ``overwrite``. Nothing is created or removed yet (see ``create_run_dir``)."""
    path = Path(output_dir) if output_dir else Path("runs") / f"{method}-{datetime.now():%Y%m%d-%H%M%S}"
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise ConfigError(f"run directory {path} already exists; choose another output_dir or pass --overwrite")
    return path


def create_run_dir(path: Path, overwrite: bool = False) -> Path:
    """Make the run directory ``path`` (from ``run_dir_path``), replacing an existing one only if ``overwrite``."""
    path = run_dir_path(str(path), "", overwrite)
    if path.exists() and any(path.iterdir()):
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def discard_on_error(path: Path | None) -> Iterator[None]:
    """Remove the new run directory ``path`` if the block fails (a run that never started training)."""
    try:
        yield
    except BaseException:
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
        raise


def prepare_output(out: str | Path, overwrite: bool) -> Path:
    """An export folder that is new or explicitly overwritten."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"output folder {out} already exists; choose another or pass --overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file + rename, so a crash never leaves a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; run files are ordinary readable files
    os.replace(tmp, path)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors file written atomically (contiguous CPU copies)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def save_json(obj: Any, path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=float) + "\n")


def save_run(run_dir: Path, cfg: RunConfig, meta: dict[str, Any], model: nn.Module, tokenizer: Any,
             trainable: dict[str, torch.Tensor]) -> None:
    """Resolved config, meta (labels, task...) and weights. Full runs: a complete HF folder; others: trainable only."""
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    save_json(meta, run_dir / "meta.json")
    n_params = sum(1 for _ in model.named_parameters())
    if len(trainable) == n_params:
        model.load_state_dict(trainable, strict=False)
        tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=".model."))
        model.float().save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, run_dir / FULL_DIR)
    else:
        save_tensors(trainable, run_dir / WEIGHTS, {"format": "pt"})


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
        return load_file(self.path / WEIGHTS)


def read_run(run_dir: str | Path) -> RunFiles:
    """Read config and meta of a finished run; clear errors for anything missing."""
    path = Path(run_dir)
    if not (path / "config.yaml").is_file() or not (path / "meta.json").is_file():
        raise ConfigError(f"{path} is not a tuneforge run directory (config.yaml/meta.json missing); "
                          "was training finished?")
    config = build_dataclass(RunConfig, yaml.safe_load((path / "config.yaml").read_text()))
    meta = json.loads((path / "meta.json").read_text())
    if not (path / WEIGHTS).is_file() and not (path / FULL_DIR).is_dir():
        raise ConfigError(f"{path} holds no weights ({WEIGHTS} or {FULL_DIR}/); was training finished?")
    return RunFiles(path, config, meta)


RESUME = "checkpoint.safetensors"  # resumable training state, deleted when the run finishes


def save_training_state(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: Any, loop: dict[str, Any], best_state: dict[str, torch.Tensor] | None) -> None:
    """Everything needed to continue training to the same result, in ONE safetensors file (tensors +
    JSON metadata), written atomically: trainable weights, optimizer state, best state, RNG, loop counters."""
    tensors = {f"param.{n}": p for n, p in model.named_parameters() if p.requires_grad}
    opt = optimizer.state_dict()
    scalars: dict[str, Any] = {}
    for idx, state in opt["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"opt.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    tensors.update({f"best.{n}": v for n, v in (best_state or {}).items()})
    tensors["rng"] = torch.get_rng_state()
    meta = {"loop": loop, "param_groups": opt["param_groups"], "opt_scalars": scalars,
            "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}}
    save_tensors(tensors, run_dir / RESUME, {"state": json.dumps(meta, default=float)})


def load_training_state(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
                        ) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Restore what :func:`save_training_state` wrote; returns (loop counters, best state)."""
    from safetensors import safe_open

    path = run_dir / RESUME
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["state"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    params = {k[len("param."):]: v for k, v in tensors.items() if k.startswith("param.")}
    model.load_state_dict(params, strict=False)
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["opt_scalars"].items()):
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
        elif not key.startswith(("param.", "best.", "rng")) and "." in key:
            idx, name = key.split(".", 1)
        else:
            continue
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict({**scheduler.state_dict(), **meta["scheduler"]})
    torch.set_rng_state(tensors["rng"])
    best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")} or None
    return meta["loop"], best
