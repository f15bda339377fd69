"""The resumable training state: ONE safetensors file (``checkpoint.safetensors`` in the run directory) holding
the trainable weights, the optimizer state by parameter name, the best state so far, every rank's RNG and the
loop counters; rank 0 writes it atomically, and reads it back to continue a run to the same result."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import safe_open

from tuneforge import distributed, resume_check
from tuneforge.checkpoint import RESUME
from tuneforge.config import ConfigError
from tuneforge.files import crash_point, save_tensors


def model_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameter names of the model inside the training module (which adds ``model.``)."""
    return {n.removeprefix("model."): v for n, v in state.items()}


def has_training_state(run_dir: Path) -> bool:
    """Whether rank 0 sees a checkpoint in ``run_dir`` (the same answer on every rank)."""
    return bool(distributed.broadcast((run_dir / RESUME).is_file() if distributed.current().main else None))


def save_training_state(run_dir: Path, module: nn.Module, optimizer: torch.optim.Optimizer, names: list[str],
                        scheduler: Any, loop: dict[str, Any], device: torch.device) -> None:
    """Everything needed to continue training to the same result, in ONE safetensors file written atomically
    by rank 0: trainable weights, optimizer state (by parameter name), every rank's RNG, loop counters (the best
    weights are a file of their own, named by the counters' ``best_step``: :mod:`tuneforge.best_weights`). Every
    rank calls it (FSDP2 gathers shards; RNG states are gathered)."""
    weights = model_names(distributed.full_state(module, copy=False))  # written as they are: no copy
    opt_state, groups = _optimizer_state(module, optimizer, names)
    rng = distributed.rng_states(device)
    if not distributed.current().main:
        return
    tensors = {f"param.{n}": v for n, v in weights.items()}
    scalars: dict[str, Any] = {}
    for name, state in opt_state.items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"opt.{name}.{key}"] = value
            else:
                scalars[f"{name}.{key}"] = value
    tensors.update({f"rng.{k}": v for k, v in rng.items()})
    meta = {"loop": loop, "param_groups": groups, "opt_scalars": scalars, "world_size": distributed.current().world,
            "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
            "config_yaml": resume_check.started_config(run_dir)}  # resume refuses a config.yaml edited since
    save_tensors(tensors, run_dir / RESUME, {"state": json.dumps(meta, default=float)})
    crash_point("checkpoint-saved")


def _optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, names: list[str]
                     ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Optimizer state keyed by parameter name (unsharded) and the param groups naming their parameters."""
    if distributed.is_fsdp(module):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        sd = get_optimizer_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                                  cpu_offload=True))
        # a full state dict is gathered on rank 0 only: the other ranks get {} (and write nothing)
        state = {k.removeprefix("model."): v for k, v in sd.get("state", {}).items()}
    else:
        sd = optimizer.state_dict()
        state = {names[i].removeprefix("model."): v for i, v in sd["state"].items()}
    groups, start = [], 0
    for group in optimizer.param_groups:
        n = len(group["params"])
        groups.append({**{k: v for k, v in group.items() if k != "params"},
                       "params": [x.removeprefix("model.") for x in names[start:start + n]]})
        start += n
    return state, groups


def load_training_state(run_dir: Path, module: nn.Module, optimizer: torch.optim.Optimizer, names: list[str],
                        scheduler: Any, device: torch.device) -> dict[str, Any]:
    """Restore what :func:`save_training_state` wrote (rank 0 reads the file and shares it); returns the loop
    counters plus ``best_state``: the best weights that checkpoints written before 2026-12-06 held (else None)."""
    d = distributed.current()
    loaded = _read_state(run_dir / RESUME) if d.main else None
    if d.main and loaded[0]["world_size"] != d.world:
        raise ConfigError(f"{run_dir} was trained with {loaded[0]['world_size']} process(es); resume it with the same "
                          f"number (torchrun --nproc_per_node=...), not {d.world}")
    fsdp = distributed.is_fsdp(module)
    if not fsdp:
        loaded = distributed.broadcast(loaded)
    meta, tensors = loaded if loaded is not None else ({}, {})
    meta = distributed.broadcast(meta) if fsdp else meta
    params = {f"model.{k[len('param.'):]}": v for k, v in tensors.items() if k.startswith("param.")}
    distributed.load_full_state(module, params)
    state: dict[str, dict[str, Any]] = {}
    for key, value in [(k[len("opt."):], v) for k, v in tensors.items() if k.startswith("opt.")] + \
            list(meta["opt_scalars"].items()):
        name, _, field = key.rpartition(".")
        state.setdefault(name, {})[field] = value
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        full = {"state": {f"model.{n}": s for n, s in state.items()},
                "param_groups": [{**g, "params": [f"model.{p}" for p in g["params"]]} for g in meta["param_groups"]]}
        set_optimizer_state_dict(module, optimizer, full if d.main else {},
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    else:
        index = {n.removeprefix("model."): i for i, n in enumerate(names)}
        groups = [{**g, "params": [index[p] for p in g["params"]]} for g in meta["param_groups"]]
        optimizer.load_state_dict({"state": {index[n]: s for n, s in state.items()}, "param_groups": groups})
    scheduler.load_state_dict({**scheduler.state_dict(), **meta["scheduler"]})
    rng = distributed.broadcast({k[len("rng."):]: v for k, v in tensors.items() if k.startswith("rng.")} if d.main
                                else None) if fsdp else {k[len("rng."):]: v for k, v in tensors.items()
                                                         if k.startswith("rng.")}
    distributed.set_rng_states(rng, device)
    best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")} or None
    return {**meta["loop"], "best_state": best}


def _read_state(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["state"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.setdefault("world_size", 1)
    return meta, tensors
